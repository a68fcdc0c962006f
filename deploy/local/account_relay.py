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
    """Policies by resource ARN, and the stream each iterator reads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.policies = {}
        self.revisions = {}
        self.iterators = {}

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

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
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
        self.forward(raw, owner, stream_arn=arn if operation in ("GetShardIterator", "GetRecords") else None)

    def forward(self, raw, account, answer=True, stream_arn=None):
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
            except ValueError:
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
