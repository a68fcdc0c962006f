#!/usr/bin/env python3
"""A relay in front of moto's server that makes its DynamoDB Streams behave
across accounts as AWS does, for kcld's local stack.

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
import http.client
import http.server
import json
import re
import sys
import threading
import urllib.parse
import uuid

DEFAULT_ACCOUNT = "123456789012"
CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")
ARN = re.compile(r"^arn:aws[a-z-]*:dynamodb:([a-z0-9-]+):(\d{12}):table/[^/]+(/stream/.+)?$")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate", "content-length", "host"}


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


STATE = State()


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


def allowed(policy, account, action, arn):
    """AWS's judgement of one resource policy: Deny wins, then Allow."""
    verdict = False
    for statement in as_list(policy.get("Statement") if policy else None):
        if not principal_matches(statement.get("Principal"), account):
            continue
        if not matches(statement.get("Action"), action):
            continue
        if not matches(statement.get("Resource", "*"), arn):
            continue
        if statement.get("Effect") == "Deny":
            return False
        if statement.get("Effect") == "Allow":
            verdict = True
    return verdict


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

    def do_GET(self):
        self.forward(b"", caller_account(self.headers))

    do_HEAD = do_GET
    do_DELETE = do_GET

    def do_PUT(self):
        self.do_POST()

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
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path.startswith("/_relay/rollover"):
            return self.rollover(raw)
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

    def forward(self, raw, account, answer=True, stream_arn=None, request=None):
        url = urllib.parse.urlsplit(self.upstream)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
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
        if not answer:
            return
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
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
