#!/usr/bin/env python3
"""A relay in front of moto's server that makes its DynamoDB Streams, S3,
SQS and SNS behave across accounts as AWS does, for kcld's local stack.

moto serves each request in the account named by its `x-moto-account-id`
header. A call by ARN from another account (DescribeStream of the producer's
stream by the consumer) is looked up in the caller's account there, and a
resource policy cannot be put on a stream ARN. This relay:

- serves every call in the account of the ARN its body names (StreamArn,
  ResourceArn, TableName given as an ARN), else in the caller's account (the
  12-digit access key id of its signature, as the other emulators take it);
  a GetRecords is served in the account of the stream its iterator came
  from (iterators are remembered as they are handed out);
- keeps the resource policies of tables and streams (PutResourcePolicy,
  GetResourcePolicy, DeleteResourcePolicy; a table's is also passed on to
  moto) and judges every call that crosses accounts by them as AWS does: an
  explicit Deny wins, else a statement must allow the action (`dynamodb:` +
  the operation) on the resource to a principal of the caller's account,
  else the caller gets AccessDeniedException naming the action and the ARN.
  Identity policies are not simulated: calls within one account pass.

S3, SQS and SNS calls (told apart by the service of the signature's
credential scope) are judged the same way by the policies moto keeps for
them (a bucket's policy, a queue's or a topic's Policy attribute; fetched
from moto in the owner's account and cached until changed), with their
Condition blocks evaluated for the keys a direct call has
(aws:PrincipalAccount, aws:SecureTransport, s3:x-amz-acl; aws:SourceOwner,
aws:SourceArn and the like are absent, so SNS's default topic policy allows
the owner's account only, as on AWS):

- S3 (path style). moto's buckets are global; the relay remembers who
  created each bucket and serves every call on it in its owner's account.
  Another account's call needs the bucket policy to allow its action
  (`s3:PutObject`, plus `s3:PutObjectAcl` when it sets an ACL, for
  PutObject, CreateMultipartUpload, UploadPart and Complete;
  `s3:GetObject`, `s3:DeleteObject`, `s3:ListBucket`,
  `s3:GetBucketLocation`, `s3:AbortMultipartUpload`,
  `s3:ListBucketMultipartUploads`, `s3:GetObjectAcl`, ...) on
  `arn:aws:s3:::bucket` or `arn:aws:s3:::bucket/key`, else 403 AccessDenied
  in S3's XML; a bucket's policy and ownership controls are its owner's
  alone. The relay also keeps who wrote each object with which canned ACL,
  which moto does not: an object another account wrote is that account's
  (unless the bucket's ObjectOwnership is BucketOwnerEnforced, or
  BucketOwnerPreferred and the ACL was bucket-owner-full-control), so the
  bucket owner can read it (GetObject, GetObjectAcl) only if the ACL grants
  it (bucket-owner-full-control, bucket-owner-read) and GetObjectAcl shows
  the writer as Owner with the bucket owner's grant. Canonical user ids are
  made per account (moto has one for all: 75aa57f0...) in ACLs, listings
  and ListBuckets. On a BucketOwnerEnforced bucket a PUT that sets any ACL
  but bucket-owner-full-control is refused with 400
  AccessControlListNotSupported, as AWS does (moto accepts it). New buckets
  have no ownership controls (ACLs on, as in moto; AWS's default since
  2023 is BucketOwnerEnforced): put them to test that case.
- SQS (JSON protocol, and the query protocol's form bodies). A call naming
  a QueueUrl is served in the account in the URL's path, a GetQueueUrl with
  QueueOwnerAWSAccountId in that account. Another account's call needs the
  queue's policy to allow `sqs:` + the operation (SendMessageBatch is
  sqs:SendMessage, and so on) on the queue ARN, else 403 AccessDenied
  (`x-amzn-query-error: AccessDenied;Sender`, which the SDKs read as the
  code); AddPermission, SetQueueAttributes, DeleteQueue, tags and the like
  are the owner's alone, as on AWS.
- SNS (query protocol). A call naming a TopicArn (or TargetArn,
  ResourceArn, SubscriptionArn) is served in that ARN's account; another
  account's call needs the topic's policy to allow `SNS:` + the action
  (PublishBatch is SNS:Publish), else 403 AuthorizationError.

Item writes (PutItem, UpdateItem, DeleteItem, BatchWriteItem,
TransactWriteItems) to one table are passed on one at a time: moto numbers
a table's stream records by the length of its list without a lock, so
concurrent writes got the same sequence number, which AWS never gives.

Anything else (other services, bodies that are not JSON) passes through in
the caller's account.

moto's streams have one shard that never closes. To test what a reader does
when DynamoDB rolls a stream's shard over (every few hours on AWS), a
`POST /_relay/rollover` with `{"StreamArn": ...}` closes the stream's open
shard at its last record and opens a child after it: the relay then shows
DescribeStream the shards it made (parents with their ending sequence
number; the CHILD_SHARDS filter works), positions iterators of each on
moto's one shard, keeps a closed shard's records to its range and ends its
reads (no NextShardIterator) once its last record was read.

    account_relay.py --listen 127.0.0.1:PORT --upstream http://127.0.0.1:MOTO_PORT
"""

import argparse
import fnmatch
import hashlib
import http.client
import http.server
import json
import re
import sys
import threading
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

DEFAULT_ACCOUNT = "123456789012"
CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")
# The signature's credential scope: key id, date, region, service.
SCOPE = re.compile(r"Credential=([^/,\s&]+)/(\d{8})/([a-z0-9-]+)/([a-z0-9.-]+)/aws4_request")
QUEUE_URL = re.compile(r"^(?:https?://[^/]+)?/(\d{12})/([A-Za-z0-9_.-]+)$")
SNS_ARN = re.compile(r"^arn:aws[a-z-]*:sns:([a-z0-9-]+):(\d{12}):([A-Za-z0-9_.-]+)(?::[0-9a-f-]+)?$")
# The one canonical user id moto gives every account (and the one its
# ListBuckets shows).
MOTO_CANONICAL_ID = "75aa57f09aa0c8caeab4f8c24e99d10f8e7faeebf76c078efc7c6caea54ba06a"
MOTO_LISTING_ID = "bcaf1ffd86f41161ca5fb16fd081034f"
S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
BUCKET_OWNER_FULL_CONTROL = "bucket-owner-full-control"
# Query parameters that name an S3 operation (the others only shape it:
# prefix, list-type, max-keys, x-id, ...).
S3_SUBRESOURCES = ("acl", "policy", "uploads", "uploadId", "location", "versions", "versioning",
                   "tagging", "ownershipControls", "cors", "lifecycle", "website", "logging",
                   "notification", "replication", "encryption", "publicAccessBlock", "object-lock",
                   "legal-hold", "retention", "accelerate", "requestPayment", "restore", "select",
                   "delete", "attributes", "policyStatus", "analytics", "metrics", "inventory",
                   "intelligent-tiering")
# Object ACL permissions each object-level read or ACL write needs.
S3_OBJECT_PERMISSION = {"s3:GetObject": "READ", "s3:GetObjectAcl": "READ_ACP", "s3:PutObjectAcl": "WRITE_ACP"}
# SQS batch calls are judged as their single form; the owner-only calls
# cannot be granted to another account.
SQS_ACTIONS = {"SendMessageBatch": "SendMessage", "DeleteMessageBatch": "DeleteMessage",
               "ChangeMessageVisibilityBatch": "ChangeMessageVisibility"}
SQS_OWNER_ONLY = {"AddPermission", "RemovePermission", "SetQueueAttributes", "DeleteQueue", "CreateQueue",
                  "ListQueues", "ListQueueTags", "TagQueue", "UntagQueue", "StartMessageMoveTask",
                  "CancelMessageMoveTask", "ListMessageMoveTasks"}
SQS_POLICY_CHANGES = {"AddPermission", "RemovePermission", "SetQueueAttributes", "DeleteQueue", "CreateQueue"}
# SNS calls a topic policy can grant to another account.
SNS_ACTIONS = {"Publish", "PublishBatch", "Subscribe", "GetTopicAttributes", "SetTopicAttributes",
               "AddPermission", "RemovePermission", "DeleteTopic", "ListSubscriptionsByTopic",
               "ListTagsForResource", "GetDataProtectionPolicy", "PutDataProtectionPolicy"}
SNS_POLICY_CHANGES = {"SetTopicAttributes", "AddPermission", "RemovePermission", "DeleteTopic", "CreateTopic"}
ARN = re.compile(r"^arn:aws[a-z-]*:dynamodb:([a-z0-9-]+):(\d{12}):table/[^/]+(/stream/.+)?$")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate", "content-length", "host", "expect"}


class State:
    """Policies by resource ARN, the stream each iterator reads, and the
    shards made by roll-overs."""

    def __init__(self):
        self.lock = threading.Lock()
        self.policies = {}
        self.revisions = {}
        self.iterators = {}
        # stream ARN -> [{"id", "parent", "start" (after), "end"}], oldest first
        self.shards = {}
        # moto's iterator -> (virtual shard, the sequence number read up to)
        self.positions = {}
        # (account, table) -> the lock its item writes take
        self.table_locks = {}
        # S3: bucket -> owner; (bucket, key) -> (writer, canned ACL, owner);
        # multipart upload id -> (writer, canned ACL, owner).
        self.buckets = {}
        self.objects = {}
        self.uploads = {}
        # What is fetched from moto and kept until a call changes it: bucket
        # policies and ownership by bucket, queue policies by (account,
        # name), topic policies by ARN.
        self.bucket_policies = {}
        self.ownership = {}
        self.queue_policies = {}
        self.topic_policies = {}
        self.generation = 0

    def policy(self, arn):
        with self.lock:
            return self.policies.get(arn)

    def put_policy(self, arn, text):
        with self.lock:
            self.policies[arn] = json.loads(text)
            self.revisions[arn] = uuid.uuid4().hex
            return self.revisions[arn]

    def delete_policy(self, arn):
        with self.lock:
            self.policies.pop(arn, None)
            return self.revisions.pop(arn, None)

    def writes_lock(self, account, table):
        """The lock serialising item writes to one table (any table when a
        call names several: BatchWriteItem, TransactWriteItems)."""
        key = (account, table if isinstance(table, str) else "*")
        with self.lock:
            return self.table_locks.setdefault(key, threading.Lock())

    def remember(self, iterator, stream_arn):
        if iterator:
            with self.lock:
                # Bounded: iterators expire after 15 minutes anyway.
                if len(self.iterators) > 200_000:
                    self.iterators.clear()
                self.iterators[iterator] = stream_arn

    def stream_of(self, iterator):
        with self.lock:
            return self.iterators.get(iterator)

    def cached(self, table, key, fetch):
        """table[key], fetched when missing; a fetch that a change overtook
        is not kept."""
        with self.lock:
            if key in table:
                return table[key]
            generation = self.generation
        value = fetch()
        with self.lock:
            if self.generation == generation:
                table[key] = value
        return value

    def forget(self, table, key):
        with self.lock:
            table.pop(key, None)
            self.generation += 1

    def get(self, table, key):
        with self.lock:
            return table.get(key)

    def put(self, table, key, value):
        with self.lock:
            table[key] = value

    def drop_bucket(self, bucket):
        with self.lock:
            self.buckets.pop(bucket, None)
            self.bucket_policies.pop(bucket, None)
            self.ownership.pop(bucket, None)
            for key in [k for k in self.objects if k[0] == bucket]:
                del self.objects[key]
            self.generation += 1


STATE = State()

# Operations that write items, and so stream records.
WRITES = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}


def seq_key(seq):
    return (len(seq), seq)


def shard_ids(arn, n):
    """Shard ids in DynamoDB's shape, distinct per stream and roll-over."""
    base = int(uuid.uuid5(uuid.NAMESPACE_URL, arn).int % 10**12)
    return f"shardId-{base + n:020d}-{uuid.uuid5(uuid.NAMESPACE_URL, f'{arn}/{n}').hex[:8]}"


def caller_account(headers):
    match = CREDENTIAL.search(headers.get("Authorization", ""))
    if match and re.fullmatch(r"\d{12}", match.group(1)):
        return match.group(1)
    return DEFAULT_ACCOUNT


def resource_arn(body, operation):
    """The ARN the call names, if any."""
    if operation == "GetRecords":
        return STATE.stream_of(body.get("ShardIterator"))
    for key in ("StreamArn", "ResourceArn", "TableName", "TableArn"):
        value = body.get(key)
        if isinstance(value, str) and ARN.match(value):
            return value
    return None


def as_list(value):
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def principal_matches(principal, account):
    if principal == "*":
        return True
    if isinstance(principal, dict):
        for p in as_list(principal.get("AWS")):
            if p == "*" or p == account:
                return True
            # A role, a user or the account root of the caller's account.
            if re.match(r"^arn:aws[a-z-]*:(iam|sts)::" + account + r":", p):
                return True
    return False


def matches(patterns, value):
    return any(fnmatch.fnmatchcase(value.lower(), p.lower()) for p in as_list(patterns))


def condition_holds(condition, context):
    """A statement's Condition for a call whose context keys (lower-case
    names) are `context`: every operator and key must hold. A key the call
    lacks fails all but the negated, Null and ...IfExists tests; operators
    not known here never hold."""
    for operator, tests in (condition or {}).items():
        op = operator.split(":")[-1]
        if_exists = op.endswith("IfExists")
        op = op[:-len("IfExists")] if if_exists else op
        negated = "Not" in op
        op = op.replace("Not", "")
        if op not in ("StringEquals", "StringEqualsIgnoreCase", "StringLike", "ArnEquals", "ArnLike", "Bool", "Null"):
            return False
        for key, expected in (tests or {}).items():
            value = context.get(key.lower())
            expected = [str(e) for e in as_list(expected)]
            if op == "Null":
                if (value is None) != (expected[0].lower() == "true"):
                    return False
                continue
            if value is None:
                if if_exists or negated:
                    continue
                return False
            if op == "StringEquals":
                hit = value in expected
            elif op in ("StringEqualsIgnoreCase", "Bool"):
                hit = value.lower() in [e.lower() for e in expected]
            else:
                hit = any(fnmatch.fnmatchcase(value, e) for e in expected)
            if hit == negated:
                return False
    return True


def verdict(policy, account, action, arn, context=None):
    """AWS's judgement of one resource policy: "Deny" (an explicit Deny
    wins), "Allow", or None when no statement applies. Conditions are
    evaluated only when the call's `context` is given."""
    result = None
    for statement in as_list(policy.get("Statement") if policy else None):
        if not principal_matches(statement.get("Principal"), account):
            continue
        if not matches(statement.get("Action"), action):
            continue
        if not matches(statement.get("Resource", "*"), arn):
            continue
        if context is not None and not condition_holds(statement.get("Condition"), context):
            continue
        if statement.get("Effect") == "Deny":
            return "Deny"
        if statement.get("Effect") == "Allow":
            result = "Allow"
    return result


def allowed(policy, account, action, arn, context=None):
    """AWS's judgement of one resource policy: Deny wins, then Allow."""
    return verdict(policy, account, action, arn, context) == "Allow"


def signature_scope(headers, path):
    """(key id, region, service) of the call's SigV4 credential scope, from
    its Authorization header or a presigned URL's X-Amz-Credential; S3's
    older signature (`AWS key:signature`, presigned AWSAccessKeyId) names
    no region."""
    authorization = headers.get("Authorization", "")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
    match = SCOPE.search(authorization)
    if not match and query.get("X-Amz-Credential"):
        match = SCOPE.search("Credential=" + query["X-Amz-Credential"][0])
    if match:
        return match.group(1), match.group(3), match.group(4)
    if authorization.startswith("AWS "):
        return authorization[4:].split(":")[0], None, "s3"
    if query.get("AWSAccessKeyId"):
        return query["AWSAccessKeyId"][0], None, "s3"
    return None, None, None


def denial(caller, action, resource):
    return (f"User: arn:aws:sts::{caller}:assumed-role/caller is not authorized to perform: {action} "
            f"on resource: {resource} because no resource-based policy allows the {action} action")


def canonical_id(account):
    """An S3 canonical user id per account (moto has one for all)."""
    return hashlib.sha256(f"kcld-relay canonical user {account}".encode()).hexdigest()


def with_canonical_id(data, account):
    """moto's XML with `account`'s canonical id for moto's own."""
    ours = canonical_id(account).encode()
    return data.replace(MOTO_CANONICAL_ID.encode(), ours).replace(MOTO_LISTING_ID.encode(), ours)


def s3_target(path):
    """(bucket, key or None, query) of a path-style S3 request."""
    url = urllib.parse.urlsplit(path)
    bucket, _, key = url.path.lstrip("/").partition("/")
    query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
    return urllib.parse.unquote(bucket), urllib.parse.unquote(key) if key else None, query


def s3_subresource(query):
    return next((q for q in query if q in S3_SUBRESOURCES), None)


def capitalized(word):
    return word[0].upper() + word[1:]


def xml_texts(raw, tag):
    """The texts of every element named `tag` (any namespace) in `raw`."""
    try:
        return [e.text or "" for e in ET.fromstring(raw).iter() if e.tag.split("}")[-1] == tag]
    except ET.ParseError:
        return []


def s3_checks(method, bucket, key, query, headers, raw):
    """What AWS checks for an S3 call: [(action, bucket, key, context)],
    context "owner" (the bucket owner's alone), "bucket" (the bucket policy)
    or "object" (the object's owner and ACL when another account owns it)."""
    sub = s3_subresource(query)
    sets_acl = headers.get("x-amz-acl") is not None or any(k.lower().startswith("x-amz-grant-") for k in headers.keys())
    acl = [("s3:PutObjectAcl", bucket, key, "bucket")] if sets_acl else []
    if key is None:
        if sub in ("policy", "ownershipControls"):
            verb = {"PUT": "Put", "DELETE": "Delete"}.get(method, "Get")
            return [(f"s3:{verb}Bucket{capitalized(sub)}", bucket, None, "owner")]
        if method in ("GET", "HEAD"):
            named = {None: "s3:ListBucket", "uploads": "s3:ListBucketMultipartUploads", "location": "s3:GetBucketLocation",
                     "versions": "s3:ListBucketVersions"}
            return [(named.get(sub) or "s3:GetBucket" + capitalized(sub), bucket, None, "bucket")]
        if method == "PUT":
            return [] if sub is None else [("s3:PutBucket" + capitalized(sub), bucket, None, "bucket")]
        if method == "DELETE":
            return [("s3:DeleteBucket" + (capitalized(sub) if sub else ""), bucket, None, "bucket")]
        if method == "POST" and sub == "delete":
            return [("s3:DeleteObject", bucket, k, "bucket") for k in xml_texts(raw, "Key")]
        return []
    if method in ("GET", "HEAD"):
        named = {"acl": ("s3:GetObjectAcl", "object"), "uploadId": ("s3:ListMultipartUploadParts", "bucket"),
                 "tagging": ("s3:GetObjectTagging", "bucket")}
        action, context = named.get(sub, ("s3:GetObject", "object"))
        return [(action, bucket, key, context)]
    if method == "PUT":
        if sub == "acl":
            return [("s3:PutObjectAcl", bucket, key, "object")]
        if sub == "tagging":
            return [("s3:PutObjectTagging", bucket, key, "bucket")]
        checks = [("s3:PutObject", bucket, key, "bucket")] + ([] if sub else acl)
        source = headers.get("x-amz-copy-source")
        if source:
            source_bucket, _, source_key = urllib.parse.unquote(source.split("?")[0]).lstrip("/").partition("/")
            checks.append(("s3:GetObject", source_bucket, source_key, "object"))
        return checks
    if method == "DELETE":
        named = {"uploadId": "s3:AbortMultipartUpload", "tagging": "s3:DeleteObjectTagging"}
        return [(named.get(sub, "s3:DeleteObject"), bucket, key, "bucket")]
    if method == "POST":
        if sub == "uploads":
            return [("s3:PutObject", bucket, key, "bucket")] + acl
        named = {"restore": "s3:RestoreObject", "select": "s3:GetObject"}
        return [(named.get(sub, "s3:PutObject"), bucket, key, "bucket")]
    return []


def object_owner(record, bucket_owner, ownership):
    """Who owns an object: its bucket's owner when the bucket enforces that
    or the relay never saw it written, else who the write made its owner."""
    if record is None or ownership == "BucketOwnerEnforced":
        return bucket_owner
    return record[2]


def object_grants(record, bucket_owner, ownership):
    """An object's ACL as AWS keeps it: {account or "*": permissions}."""
    holder = object_owner(record, bucket_owner, ownership)
    grants = {holder: {"FULL_CONTROL"}}
    canned = record[1] if record and ownership != "BucketOwnerEnforced" else None
    if canned == BUCKET_OWNER_FULL_CONTROL:
        grants.setdefault(bucket_owner, set()).add("FULL_CONTROL")
    elif canned == "bucket-owner-read":
        grants.setdefault(bucket_owner, set()).add("READ")
    elif canned in ("public-read", "public-read-write", "authenticated-read"):
        grants.setdefault("*", set()).add("READ")
    return grants


def granted(grants, account, permission):
    held = grants.get(account, set()) | grants.get("*", set())
    return "FULL_CONTROL" in held or permission in held


def grant_xml(account, permission):
    return ('<Grant><Grantee xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="CanonicalUser">'
            f"<ID>{canonical_id(account)}</ID></Grantee><Permission>{permission}</Permission></Grant>")


class Unreachable(Exception):
    """moto did not answer a call of the relay's own."""


class Relay(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream = None

    def log_message(self, fmt, *args):
        pass

    def reply(self, status, payload, error_type=None):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", uuid.uuid4().hex)
        if error_type:
            self.send_header("x-amzn-ErrorType", error_type)
        self.end_headers()
        self.wfile.write(data)

    def error(self, status, kind, message):
        self.reply(status, {"__type": "com.amazonaws.dynamodb.v20120810#" + kind, "message": message}, kind)

    def send(self, status, content_type, data, headers=()):
        """An answer of the relay's own (HEAD gets its headers only)."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        request_id = uuid.uuid4().hex
        self.send_header("x-amzn-RequestId", request_id)
        self.send_header("x-amz-request-id", request_id)
        for key, value in headers:
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def body(self):
        """The request's body, by Content-Length or chunked."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def by_service(self, raw):
        """Serves an S3, SQS or SNS call (by its credential scope's service);
        False for anything else."""
        key_id, region, service = signature_scope(self.headers, self.path)
        caller = key_id if key_id and re.fullmatch(r"\d{12}", key_id) else DEFAULT_ACCOUNT
        region = region or "us-east-1"
        handler = {"s3": self.s3, "sqs": self.sqs, "sns": self.sns}.get(service)
        if self.headers.get("X-Amz-Target", "").startswith("AmazonSQS."):
            handler = self.sqs
        if handler is None:
            return False
        try:
            handler(raw, caller, region)
        except Unreachable as e:
            self.send(502, "text/plain", f"relay: upstream unreachable: {e}".encode())
        return True

    def do_GET(self):
        raw = self.body()
        if not self.by_service(raw):
            self.forward(raw, caller_account(self.headers))

    do_HEAD = do_GET
    do_DELETE = do_GET

    def do_PUT(self):
        self.do_POST()

    def moto_raw(self, method, path, account, service, region, body=b"", headers=None):
        """One call of the relay's own to moto, in `account`: (status, body).
        Raises Unreachable when moto cannot be reached."""
        url = urllib.parse.urlsplit(self.upstream)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        sent = {
            "x-moto-account-id": account,
            "Authorization": f"AWS4-HMAC-SHA256 Credential={account}/20260101/{region}/{service}/aws4_request, SignedHeaders=host, Signature=0",
            "Content-Length": str(len(body)),
            **(headers or {}),
        }
        try:
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            return response.status, response.read()
        except OSError as e:
            raise Unreachable(e) from e
        finally:
            conn.close()

    # S3

    def bucket_policy(self, bucket, owner):
        def fetch():
            status, data = self.moto_raw("GET", f"/{urllib.parse.quote(bucket)}?policy", owner, "s3", "us-east-1")
            try:
                return json.loads(data) if status == 200 else None
            except ValueError:
                return None
        return STATE.cached(STATE.bucket_policies, bucket, fetch)

    def bucket_ownership(self, bucket, owner):
        """The bucket's ObjectOwnership (ObjectWriter when it has none)."""
        def fetch():
            status, data = self.moto_raw("GET", f"/{urllib.parse.quote(bucket)}?ownershipControls", owner, "s3", "us-east-1")
            found = xml_texts(data, "ObjectOwnership") if status == 200 else []
            return found[0] if found else "ObjectWriter"
        return STATE.cached(STATE.ownership, bucket, fetch)

    def s3_error(self, status, code, message):
        data = ('<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{code}</Code><Message>{escape(message)}</Message>"
                f"<RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId><HostId>kcld-relay</HostId></Error>").encode()
        self.send(status, "application/xml", data)

    def s3(self, raw, caller, region):
        bucket, key, query = s3_target(self.path)
        sub = s3_subresource(query)
        creating = self.command == "PUT" and key is None and sub is None
        owner = STATE.get(STATE.buckets, bucket) if bucket else None
        if bucket and not creating:
            refusal = self.s3_refusal(caller, bucket, key, query, raw)
            if refusal:
                return self.s3_error(*refusal)
        # A bucket is created in the caller's account, whoever owns the name.
        account = caller if creating or not owner else owner

        def after(status, headers, data):
            return self.s3_after(caller, owner, bucket, key, sub, status, data)
        self.forward(raw, account, keep_host=True, edit=after)

    def s3_refusal(self, caller, bucket, key, query, raw):
        """(status, code, message) when AWS would refuse the call, else None."""
        method = self.command
        context = {"aws:principalaccount": caller, "aws:securetransport": "true"}
        if self.headers.get("x-amz-acl"):
            context["s3:x-amz-acl"] = self.headers["x-amz-acl"]
        for action, b, k, kind in s3_checks(method, bucket, key, query, self.headers, raw):
            owner = STATE.get(STATE.buckets, b)
            if owner is None:
                continue
            arn = f"arn:aws:s3:::{b}" + ("" if k is None else "/" + k)
            denied = (403, "AccessDenied", denial(caller, action, f'"{arn}"'))
            if kind == "owner":
                if caller != owner:
                    return denied
                continue
            record = STATE.get(STATE.objects, (b, k)) if kind == "object" else None
            if record and record[2] != owner:
                ownership = self.bucket_ownership(b, owner)
                if object_owner(record, owner, ownership) != owner:
                    # Another account's object: its ACL decides, after
                    # the bucket policy's explicit Denies.
                    if verdict(self.bucket_policy(b, owner), caller, action, arn, context) == "Deny":
                        return denied
                    if not granted(object_grants(record, owner, ownership), caller, S3_OBJECT_PERMISSION[action]):
                        return (403, "AccessDenied", "Access Denied")
                    continue
            if caller != owner and verdict(self.bucket_policy(b, owner), caller, action, arn, context) != "Allow":
                return denied
        owner = STATE.get(STATE.buckets, bucket)
        sub = s3_subresource(query)
        canned = self.headers.get("x-amz-acl")
        grants = any(h.lower().startswith("x-amz-grant-") for h in self.headers.keys())
        writes_acl = (method == "PUT" and sub in (None, "acl")) or (method == "POST" and sub == "uploads")
        sets_acl = grants or (canned is not None and canned != BUCKET_OWNER_FULL_CONTROL) or (
            method == "PUT" and sub == "acl" and canned is None)
        if owner and key is not None and writes_acl and sets_acl and self.bucket_ownership(bucket, owner) == "BucketOwnerEnforced":
            return (400, "AccessControlListNotSupported", "The bucket does not allow ACLs")
        return None

    def written(self, caller, owner, bucket, canned):
        """What the relay keeps of an object `caller` writes: (writer, canned
        ACL, the owner the write makes)."""
        if caller == owner:
            return (caller, canned, owner)
        ownership = self.bucket_ownership(bucket, owner)
        theirs = ownership == "BucketOwnerEnforced" or (ownership == "BucketOwnerPreferred" and canned == BUCKET_OWNER_FULL_CONTROL)
        return (caller, canned, owner if theirs else caller)

    def s3_after(self, caller, owner, bucket, key, sub, status, data):
        """Keeps what a call changed (before its answer leaves) and gives
        ACLs and listings per-account canonical ids."""
        method, ok = self.command, 200 <= status < 300
        canned = self.headers.get("x-amz-acl")
        if key is None:
            if not bucket:
                return with_canonical_id(data, caller) if ok else data
            if method == "PUT" and sub is None and ok and owner != caller:
                STATE.drop_bucket(bucket)
                STATE.put(STATE.buckets, bucket, caller)
            elif method == "DELETE" and sub is None and ok:
                STATE.drop_bucket(bucket)
            elif sub == "policy" and method in ("PUT", "DELETE") and ok:
                STATE.forget(STATE.bucket_policies, bucket)
            elif sub == "ownershipControls" and method in ("PUT", "DELETE") and ok:
                STATE.forget(STATE.ownership, bucket)
            elif method == "POST" and sub == "delete" and ok:
                for deleted in xml_texts(data, "Key"):
                    STATE.forget(STATE.objects, (bucket, deleted))
            if method == "GET" and ok:
                data = with_canonical_id(data, owner or caller)
            return data
        if not owner or not ok:
            return data
        if method == "PUT" and sub is None:
            STATE.put(STATE.objects, (bucket, key), self.written(caller, owner, bucket, canned))
        elif method == "POST" and sub == "uploads":
            for upload in xml_texts(data, "UploadId"):
                STATE.put(STATE.uploads, upload, self.written(caller, owner, bucket, canned))
        elif method == "POST" and sub == "uploadId" and b"<Error>" not in data:
            upload = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)["uploadId"][0]
            with STATE.lock:
                record = STATE.uploads.pop(upload, None)
            STATE.put(STATE.objects, (bucket, key), record or self.written(caller, owner, bucket, None))
        elif method == "DELETE" and sub == "uploadId":
            with STATE.lock:
                STATE.uploads.pop(urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)["uploadId"][0], None)
        elif method == "DELETE" and sub is None:
            STATE.forget(STATE.objects, (bucket, key))
        elif method == "PUT" and sub == "acl" and canned:
            record = STATE.get(STATE.objects, (bucket, key))
            if record:
                STATE.put(STATE.objects, (bucket, key), (record[0], canned, record[2]))
        elif method == "GET" and sub == "acl":
            data = self.object_acl(owner, bucket, key, data)
        return data

    def object_acl(self, owner, bucket, key, data):
        """GetObjectAcl's answer as AWS gives it: the object's owner (the
        writer, unless the bucket owner owns it) and the grants its canned
        ACL made."""
        record = STATE.get(STATE.objects, (bucket, key))
        ownership = self.bucket_ownership(bucket, owner) if record and record[2] != owner else None
        holder = object_owner(record, owner, ownership)
        data = with_canonical_id(data, holder)
        extra = "".join(grant_xml(account, permission)
                        for account, permissions in object_grants(record, owner, ownership).items()
                        if account not in (holder, "*") for permission in sorted(permissions))
        return data.replace(b"</AccessControlList>", extra.encode() + b"</AccessControlList>")

    # SQS

    def queue_policy(self, account, name, region):
        """(policy or None, queue ARN) of a queue; (None, None) when there is
        no such queue."""
        def fetch():
            request = json.dumps({"QueueUrl": f"http://sqs.{region}.amazonaws.com/{account}/{name}",
                                  "AttributeNames": ["Policy", "QueueArn"]}).encode()
            status, data = self.moto_raw("POST", "/", account, "sqs", region, request, {
                "Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "AmazonSQS.GetQueueAttributes"})
            try:
                attributes = json.loads(data).get("Attributes", {}) if status == 200 else {}
                policy = attributes.get("Policy")
                return (json.loads(policy) if policy else None, attributes.get("QueueArn"))
            except (ValueError, AttributeError):
                return (None, None)
        return STATE.cached(STATE.queue_policies, (account, region, name), fetch)

    def sqs_denied(self, json_protocol, message):
        if json_protocol:
            data = json.dumps({"__type": "com.amazonaws.sqs#AccessDenied", "message": message}).encode()
            return self.send(403, "application/x-amz-json-1.0", data, [("x-amzn-query-error", "AccessDenied;Sender")])
        data = ('<?xml version="1.0"?><ErrorResponse xmlns="http://queue.amazonaws.com/doc/2012-11-05/"><Error>'
                f"<Type>Sender</Type><Code>AccessDenied</Code><Message>{escape(message)}</Message><Detail/></Error>"
                f"<RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>").encode()
        self.send(403, "text/xml", data)

    def sqs(self, raw, caller, region):
        target = self.headers.get("X-Amz-Target", "")
        json_protocol = target.startswith("AmazonSQS.")
        try:
            if json_protocol:
                operation, body = target.split(".", 1)[1], json.loads(raw or b"{}")
            else:
                body = {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode("utf-8", "replace")).items()}
                operation = body.get("Action", "")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return self.forward(raw, caller, keep_host=True)
        match = QUEUE_URL.match(str(body.get("QueueUrl") or "")) or QUEUE_URL.match(urllib.parse.urlsplit(self.path).path)
        account, name = match.groups() if match else (caller, body.get("QueueName"))
        if operation == "GetQueueUrl" and body.get("QueueOwnerAWSAccountId"):
            account = str(body["QueueOwnerAWSAccountId"])
        if account != caller and name:
            action = "sqs:" + SQS_ACTIONS.get(operation, operation)
            policy, arn = self.queue_policy(account, name, region)
            context = {"aws:principalaccount": caller, "aws:securetransport": "true"}
            # A queue moto does not know is left to moto to say so.
            if arn and (operation in SQS_OWNER_ONLY or verdict(policy, caller, action, arn, context) != "Allow"):
                return self.sqs_denied(json_protocol, denial(caller, action.lower(), arn))

        def after(status, headers, data):
            if operation in SQS_POLICY_CHANGES:
                STATE.forget(STATE.queue_policies, (account, region, name))
            return data
        self.forward(raw, account, keep_host=True, edit=after)

    # SNS

    def topic_policy(self, arn, account):
        """(policy or None, whether the topic exists)."""
        region = arn.split(":")[3]

        def fetch():
            request = urllib.parse.urlencode({"Action": "GetTopicAttributes", "Version": "2010-03-31", "TopicArn": arn}).encode()
            status, data = self.moto_raw("POST", "/", account, "sns", region, request,
                                         {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
            if status != 200:
                return (None, False)
            try:
                for entry in ET.fromstring(data).iter():
                    if entry.tag.split("}")[-1] == "entry":
                        fields = {e.tag.split("}")[-1]: e.text for e in entry}
                        if fields.get("key") == "Policy" and fields.get("value"):
                            return (json.loads(fields["value"]), True)
            except (ET.ParseError, ValueError):
                pass
            return (None, True)
        return STATE.cached(STATE.topic_policies, arn, fetch)

    def sns_denied(self, message):
        data = ('<ErrorResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/"><Error><Type>Sender</Type>'
                f"<Code>AuthorizationError</Code><Message>{escape(message)}</Message></Error>"
                f"<RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>").encode()
        self.send(403, "text/xml", data)

    def sns(self, raw, caller, region):
        form = {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode("utf-8", "replace")).items()}
        action = form.get("Action", "")
        named = [form.get(k) for k in ("TopicArn", "TargetArn", "ResourceArn", "SubscriptionArn")]
        arn = next((v for v in named if v and SNS_ARN.match(v)), None)
        if action == "CreateTopic" and form.get("Name"):
            arn = f"arn:aws:sns:{region}:{caller}:{form['Name']}"
        if not arn:
            return self.forward(raw, caller, keep_host=True)
        account = SNS_ARN.match(arn).group(2)
        topic_arn = ":".join(arn.split(":")[:6])
        # Calls on a subscription (Unsubscribe, its attributes) are served
        # where it is, unjudged.
        on_topic = arn != form.get("SubscriptionArn")
        if account != caller and on_topic:
            name = "SNS:" + ("Publish" if action == "PublishBatch" else action)
            policy, exists = self.topic_policy(topic_arn, account)
            context = {"aws:principalaccount": caller, "aws:securetransport": "true"}
            if exists and (action not in SNS_ACTIONS or verdict(policy, caller, name, topic_arn, context) != "Allow"):
                return self.sns_denied(denial(caller, name, topic_arn))

        def after(status, headers, data):
            if action in SNS_POLICY_CHANGES:
                STATE.forget(STATE.topic_policies, topic_arn)
            return data
        self.forward(raw, account, keep_host=True, edit=after)

    # DynamoDB and DynamoDB Streams

    def moto_call(self, arn, target, body):
        """One call to moto, in the account and region of the stream `arn`;
        the answer as JSON."""
        url = urllib.parse.urlsplit(self.upstream)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        region, account = ARN.match(arn).group(1), ARN.match(arn).group(2)
        headers = {
            "Content-Type": "application/x-amz-json-1.0",
            "X-Amz-Target": target,
            "x-moto-account-id": account,
            "Authorization": f"AWS4-HMAC-SHA256 Credential={account}/20260101/{region}/dynamodb/aws4_request, SignedHeaders=host, Signature=0",
        }
        try:
            conn.request("POST", "/", body=json.dumps(body).encode(), headers=headers)
            return json.loads(conn.getresponse().read() or b"{}")
        finally:
            conn.close()

    def rollover(self, raw):
        arn = json.loads(raw or b"{}").get("StreamArn", "")
        match = ARN.match(arn)
        if not match:
            return self.error(400, "ValidationException", "rollover: StreamArn missing")
        account = match.group(2)
        real = self.moto_call(arn, "DynamoDBStreams_20120810.DescribeStream", {"StreamArn": arn})
        real_shard = real["StreamDescription"]["Shards"][0]["ShardId"]
        # The stream's last record: read the one shard to its tip.
        it = self.moto_call(arn, "DynamoDBStreams_20120810.GetShardIterator",
                            {"StreamArn": arn, "ShardId": real_shard, "ShardIteratorType": "TRIM_HORIZON"})["ShardIterator"]
        last = None
        while True:
            out = self.moto_call(arn, "DynamoDBStreams_20120810.GetRecords", {"ShardIterator": it, "Limit": 1000})
            records = out.get("Records", [])
            if records:
                last = records[-1]["dynamodb"]["SequenceNumber"]
            if not records or not out.get("NextShardIterator"):
                break
            it = out["NextShardIterator"]
        with STATE.lock:
            shards = STATE.shards.setdefault(arn, [])
            if not shards:
                # The first shard is moto's own: readers already on it go on.
                shards.append({"id": real_shard, "parent": None, "start": None, "end": None, "real": real_shard})
            open_shard = shards[-1]
            # An empty shard closes where its parent did.
            open_shard["end"] = last or open_shard["start"] or "0"
            child = {"id": shard_ids(arn, len(shards)), "parent": open_shard["id"],
                     "start": open_shard["end"], "end": None, "real": real_shard}
            shards.append(child)
            answer = {"Closed": open_shard["id"], "EndingSequenceNumber": open_shard["end"], "Opened": child["id"]}
        self.reply(200, answer)

    def virtual(self, arn):
        with STATE.lock:
            return [dict(s) for s in STATE.shards.get(arn, [])]

    def do_POST(self):
        raw = self.body()
        if self.path.startswith("/_relay/rollover"):
            return self.rollover(raw)
        if self.by_service(raw):
            return
        caller = caller_account(self.headers)
        target = self.headers.get("X-Amz-Target", "")
        try:
            body = json.loads(raw) if raw and target.startswith("DynamoDB") else None
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return self.forward(raw, caller)
        operation = target.split(".", 1)[-1]
        arn = resource_arn(body, operation)
        owner = ARN.match(arn).group(2) if arn else caller
        if operation in ("PutResourcePolicy", "GetResourcePolicy", "DeleteResourcePolicy") and arn:
            if owner != caller:
                return self.error(400, "AccessDeniedException",
                                  f"User in account {caller} is not authorized to perform: dynamodb:{operation} on resource: {arn}")
            if operation == "PutResourcePolicy":
                revision = STATE.put_policy(arn, body.get("Policy", "{}"))
                if "/stream/" not in arn:
                    self.forward(raw, owner, answer=False)
                return self.reply(200, {"RevisionId": revision})
            if operation == "GetResourcePolicy":
                policy = STATE.policy(arn)
                if policy is None:
                    return self.error(400, "PolicyNotFoundException", f"Resource-based policy not found for the provided ResourceArn: {arn}")
                return self.reply(200, {"Policy": json.dumps(policy), "RevisionId": STATE.revisions.get(arn)})
            revision = STATE.delete_policy(arn)
            if revision is None:
                return self.error(400, "PolicyNotFoundException", f"Resource-based policy not found for the provided ResourceArn: {arn}")
            return self.reply(200, {"RevisionId": revision})
        if arn and owner != caller:
            action = "dynamodb:" + operation
            if not allowed(STATE.policy(arn), caller, action, arn):
                return self.error(400, "AccessDeniedException",
                                  f"User: arn:aws:sts::{caller}:assumed-role/caller is not authorized to perform: {action} on resource: {arn} because no resource-based policy allows the {action} action")
        shards = self.virtual(arn) if arn and "/stream/" in arn else []
        if shards and operation in ("DescribeStream", "GetShardIterator", "GetRecords"):
            return self.rolled(operation, body, owner, arn, shards)
        if operation in WRITES:
            # moto numbers a table's stream records by the length of its
            # list, read and appended without a lock: concurrent writes to
            # one table get the same sequence number. AWS never does that;
            # one write at a time per table here.
            with STATE.writes_lock(owner, body.get("TableName")):
                return self.forward(raw, owner)
        self.forward(raw, owner, stream_arn=arn if operation in ("GetShardIterator", "GetRecords") else None,
                     request=(operation, body))

    def rolled(self, operation, body, owner, arn, shards):
        """A call on a stream whose shard was rolled over (see the module)."""
        by_id = {s["id"]: s for s in shards}
        if operation == "DescribeStream":
            out = self.moto_call(arn, "DynamoDBStreams_20120810.DescribeStream", {"StreamArn": arn})
            listed = shards
            wanted = body.get("ShardFilter") or {}
            if wanted.get("Type") == "CHILD_SHARDS":
                listed = [s for s in shards if s["parent"] == wanted.get("ShardId")]
            after = body.get("ExclusiveStartShardId")
            if after in by_id:
                listed = listed[[s["id"] for s in listed].index(after) + 1:] if after in [s["id"] for s in listed] else listed
            out["StreamDescription"]["Shards"] = [
                {k: v for k, v in {
                    "ShardId": s["id"],
                    "ParentShardId": s["parent"],
                    "SequenceNumberRange": {k2: v2 for k2, v2 in {
                        "StartingSequenceNumber": s["start"] or "0",
                        "EndingSequenceNumber": s["end"],
                    }.items() if v2 is not None},
                }.items() if v is not None}
                for s in listed
            ]
            out["StreamDescription"].pop("LastEvaluatedShardId", None)
            return self.reply(200, out)
        if operation == "GetShardIterator":
            shard = by_id.get(body.get("ShardId"))
            if shard is None:
                return self.error(400, "ResourceNotFoundException", f"Requested resource not found: Shard: {body.get('ShardId')} in Stream: {arn}")
            kind = body.get("ShardIteratorType")
            seq = body.get("SequenceNumber")
            request = {"StreamArn": arn, "ShardId": shard["real"], "ShardIteratorType": kind}
            position = None
            if kind in ("AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER"):
                request["SequenceNumber"] = seq
                position = seq if kind == "AFTER_SEQUENCE_NUMBER" else None
            elif kind == "TRIM_HORIZON" and shard["start"]:
                request = {"StreamArn": arn, "ShardId": shard["real"],
                           "ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": shard["start"]}
                position = shard["start"]
            out = self.moto_call(arn, "DynamoDBStreams_20120810.GetShardIterator", request)
            iterator = out.get("ShardIterator")
            with STATE.lock:
                STATE.positions[iterator] = (arn, shard["id"], position)
            STATE.remember(iterator, arn)
            return self.reply(200, {"ShardIterator": iterator})
        # GetRecords
        iterator = body.get("ShardIterator")
        with STATE.lock:
            known = STATE.positions.get(iterator)
        out = self.moto_call(arn, "DynamoDBStreams_20120810.GetRecords", body)
        if "Records" not in out:
            return self.reply(200, out)
        # An iterator from before the first roll-over reads the first shard.
        _, shard_id, position = known or (arn, None, None)
        shard = by_id.get(shard_id) or shards[0]
        shard_id = shard["id"]
        records = out["Records"]
        if shard["end"] is not None:
            kept = [r for r in records if seq_key(r["dynamodb"]["SequenceNumber"]) <= seq_key(shard["end"])]
            read_to = kept[-1]["dynamodb"]["SequenceNumber"] if kept else position
            done = len(kept) < len(records) or (read_to is not None and seq_key(read_to) >= seq_key(shard["end"]))
            out["Records"] = kept
            if done:
                out.pop("NextShardIterator", None)
        else:
            read_to = records[-1]["dynamodb"]["SequenceNumber"] if records else position
        following = out.get("NextShardIterator")
        if following:
            with STATE.lock:
                STATE.positions[following] = (arn, shard_id, read_to)
            STATE.remember(following, arn)
        return self.reply(200, out)

    def forward(self, raw, account, answer=True, stream_arn=None, request=None, keep_host=False, edit=None):
        """Passes the call to moto in `account` and its answer back; `edit`
        (status, headers, body) may change the body first. keep_host keeps
        the caller's Host (moto writes it into queue URLs)."""
        url = urllib.parse.urlsplit(self.upstream)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if keep_host and self.headers.get("Host"):
            headers["Host"] = self.headers["Host"]
        headers["x-moto-account-id"] = account
        headers["Content-Length"] = str(len(raw))
        try:
            conn.request(self.command, self.path, body=raw, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except OSError as e:
            if answer:
                self.error(500, "InternalServerError", f"relay: upstream unreachable: {e}")
            return
        finally:
            conn.close()
        if stream_arn and response.status == 200:
            try:
                out = json.loads(data)
                STATE.remember(out.get("ShardIterator"), stream_arn)
                STATE.remember(out.get("NextShardIterator"), stream_arn)
                # Where each iterator reads from, should the shard be rolled
                # over later (its reads then end at the shard's end).
                operation, body = request or (None, {})
                with STATE.lock:
                    if operation == "GetShardIterator" and out.get("ShardIterator"):
                        after = body.get("SequenceNumber") if body.get("ShardIteratorType") == "AFTER_SEQUENCE_NUMBER" else None
                        STATE.positions[out["ShardIterator"]] = (stream_arn, None, after)
                    elif operation == "GetRecords" and out.get("NextShardIterator"):
                        before = STATE.positions.get(body.get("ShardIterator"), (stream_arn, None, None))[2]
                        records = out.get("Records") or []
                        last = records[-1]["dynamodb"]["SequenceNumber"] if records else before
                        STATE.positions[out["NextShardIterator"]] = (stream_arn, None, last)
            except (ValueError, KeyError, TypeError):
                pass
        if edit:
            data = edit(response.status, response.getheaders(), data)
        if not answer:
            return
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP:
                self.send_header(key, value)
        # A HEAD's length is the one a GET would have.
        length = response.getheader("Content-Length") if self.command == "HEAD" else None
        self.send_header("Content-Length", length or str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--upstream", required=True, help="moto's server, http://HOST:PORT")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    Relay.upstream = args.upstream
    server = http.server.ThreadingHTTPServer((host, int(port)), Relay)
    server.daemon_threads = True
    print(f"account relay on {args.listen} in front of {args.upstream}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
