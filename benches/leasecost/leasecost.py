#!/usr/bin/env python3
"""What a fleet's lease table costs, and how fast it takes over a dead worker.

    leasecost.py PEER STREAM_ARN[,STREAM_ARN...] SHARDS WORKERS SECONDS

PEER is kcld, kcl2 or kcl3 (the Java KCL through the interop jars:
$LOCALAWS_KCL2_JAR, $LOCALAWS_KCL3_JAR; $KCLD is kcld's binary). WORKERS
workers of one new application read the (idle) stream through a counting
relay in front of the DynamoDB endpoint. Once every lease is owned and the
fleet is balanced, the relay's counts are reset and SECONDS are measured.
Then one worker is killed with SIGKILL and the time until the others own
all of its leases is taken from the lease table every 0.1 s.

The relay prices each call as DynamoDB does: a read unit per 4 KB of items
read (the total of a Scan or Query page; one item for GetItem), half for an
eventually consistent read; a write unit per 1 KB of the item written. Item
sizes follow DynamoDB's rules (attribute names and values; a number is about
one byte per two digits plus one). Every table the application uses counts
(KCL 3.x keeps worker metrics and a coordinator table beside the leases).

Several stream ARNs (kcld only) make one application of all of them
(`[[streams]]` in a configuration file); SHARDS is then the shards of all.

Prints one JSON line: calls per operation, read and write units per
shard-hour, their cost in read-unit equivalents (a write unit costs five
read units on demand), the workers' CPU per shard-hour while settled, and
the takeover time.
"""
import http.client
import http.server
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse

import boto3


def value_size(v):
    (kind, x), = v.items()
    if kind == "S":
        return len(x.encode())
    if kind == "B":
        return len(x) * 3 // 4
    if kind == "N":
        digits = x.lstrip("-").replace(".", "").strip("0") or "0"
        return (len(digits) + 1) // 2 + 1
    if kind == "SS":
        return sum(len(s.encode()) for s in x)
    if kind == "NS":
        return sum(value_size({"N": n}) for n in x)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "L":
        return 3 + sum(1 + value_size(e) for e in x)
    if kind == "M":
        return 3 + sum(len(k.encode()) + 1 + value_size(e) for k, e in x.items())
    return 0


def item_size(item):
    return sum(len(k.encode()) + value_size(v) for k, v in item.items())


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.calls, self.read_units, self.write_units = {}, 0.0, 0.0

    def add(self, op, consistent, request, response):
        reads = writes = 0.0
        scale = 1.0 if consistent else 0.5
        if op in ("Scan", "Query"):
            size = sum(item_size(i) for i in response.get("Items", []))
            reads = max(1, math.ceil(size / 4096)) * scale
        elif op == "GetItem":
            size = item_size(response.get("Item", {}))
            reads = max(1, math.ceil(size / 4096)) * scale
        elif op == "BatchGetItem":
            for items in response.get("Responses", {}).values():
                reads += sum(max(1, math.ceil(item_size(i) / 4096)) * scale for i in items)
        elif op in ("PutItem", "UpdateItem", "DeleteItem"):
            # The larger of the item before and after; lease items are
            # well under 1 KB, so one unit (the attributes of a put count).
            size = item_size(request.get("Item", {}))
            writes = max(1, math.ceil(size / 1024))
        key = op + (" (consistent)" if consistent and op in ("Scan", "Query", "GetItem") else "")
        with self.lock:
            self.calls[key] = self.calls.get(key, 0) + 1
            self.read_units += reads
            self.write_units += writes


def relay(upstream, tally):
    target = urllib.parse.urlparse(upstream)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            headers["Host"] = target.netloc
            conn.request("POST", self.path, body, headers)
            resp = conn.getresponse()
            data = resp.read()
            op = self.headers.get("X-Amz-Target", "").split(".")[-1]
            if resp.status == 200:
                try:
                    request = json.loads(body or b"{}")
                    tally.add(op, bool(request.get("ConsistentRead")), request, json.loads(data or b"{}"))
                except ValueError:
                    pass
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            conn.close()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def owners(dynamo, table):
    """Lease key -> owner (None when unowned), open shards only."""
    out, start = {}, None
    while True:
        try:
            page = dynamo.scan(TableName=table, ConsistentRead=True,
                               **({"ExclusiveStartKey": start} if start else {}))
        except dynamo.exceptions.ResourceNotFoundException:
            return {}
        for item in page["Items"]:
            key = item["leaseKey"]["S"]
            if "checkpoint" in item and item["checkpoint"]["S"] != "SHARD_END":
                out[key] = item.get("leaseOwner", {}).get("S")
        start = page.get("LastEvaluatedKey")
        if not start:
            return out


def cpu_seconds(pids):
    """User and system CPU of these processes so far, from /proc."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def start_worker(peer, arn, app, worker, relay_url, logs):
    env = dict(os.environ, AWS_ENDPOINT_URL_DYNAMODB=relay_url)
    log = open(os.path.join(logs, f"{app}-{worker}.log"), "w")
    if peer == "kcld":
        env.update(KCLD_APPLICATION_NAME=app, KCLD_WORKER_ID=worker,
                   KCLD_INITIAL_POSITION="LATEST", KCLD_OPS__LISTEN="127.0.0.1:0")
        arns = arn.split(",")
        if len(arns) == 1:
            env.update(KCLD_STREAM_ARN=arn)
        else:
            config = os.path.join(logs, f"{app}.toml")
            with open(config, "w") as f:
                f.write("".join(f'[[streams]]\narn = "{a}"\n\n' for a in arns))
            env.update(KCLD_CONFIG=config)
        cmd = [os.environ["KCLD"], "run"]
    else:
        jar = os.environ["LOCALAWS_KCL2_JAR" if peer == "kcl2" else "LOCALAWS_KCL3_JAR"]
        # The KCL's own defaults, where the interop app sets test values.
        env.update(STREAM_ARN=arn, APPLICATION_NAME=app, WORKER_ID=worker,
                   OUTPUT=os.path.join(logs, f"{app}-{worker}.jsonl"), INITIAL_POSITION="LATEST",
                   SHARD_SYNC_MS="60000", IDLE_BETWEEN_READS_MS="1000")
        cmd = ["java", "-Xmx256m", "-jar", jar]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=log)


def main():
    peer, arn, shards, workers, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    upstream = os.environ["AWS_ENDPOINT_URL_DYNAMODB"]
    dynamo = boto3.client("dynamodb", endpoint_url=upstream, region_name=os.environ.get("AWS_REGION", "us-east-1"))
    tally = Tally()
    relay_url = relay(upstream, tally)
    app = f"leasecost-{peer}-{int(time.time() * 1000)}"
    logs = os.environ.get("LOGS", "/tmp")
    names = [f"w{i}" for i in range(workers)]
    # The first worker creates the tables alone (two KCL 3.x workers that
    # start together can both fail to create its migration state).
    procs = {names[0]: start_worker(peer, arn, app, names[0], relay_url, logs)}
    time.sleep(10)
    procs.update({name: start_worker(peer, arn, app, name, relay_url, logs) for name in names[1:]})
    try:
        # Settled: every lease owned, every worker holding some, and no
        # owner changed for 20 s (KCL 3.x balances by load, so idle shards
        # need not split evenly).
        deadline = time.time() + 600
        last, stable_since = None, time.time()
        while True:
            if time.time() > deadline:
                raise SystemExit(f"{peer}: the fleet did not settle within 600 s (logs in {logs})")
            for name, p in procs.items():
                if p.poll() is not None:
                    raise SystemExit(f"{peer}: worker {name} exited with {p.returncode} (logs in {logs})")
            leases = owners(dynamo, app)
            if leases != last:
                last, stable_since = leases, time.time()
            held = {n: sum(1 for o in leases.values() if o == n) for n in names}
            if (len(leases) == shards and all(leases.values()) and min(held.values()) > 0
                    and time.time() - stable_since >= 20):
                break
            time.sleep(1)
        distribution = sorted(held.values())
        pids = [p.pid for p in procs.values()]
        tally.reset()
        cpu_before = cpu_seconds(pids)
        time.sleep(seconds)
        with tally.lock:
            calls, reads, writes = dict(tally.calls), tally.read_units, tally.write_units
        cpu = cpu_seconds(pids) - cpu_before
        # Takeover: kill one worker and time until nothing is left to it.
        victim = names[0]
        procs[victim].send_signal(signal.SIGKILL)
        killed = time.time()
        procs[victim].wait()
        takeover = None
        while time.time() - killed < 180:
            leases = owners(dynamo, app)
            if leases and all(o and o != victim for o in leases.values()):
                takeover = time.time() - killed
                break
            time.sleep(0.1)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
    shard_hours = shards * seconds / 3600
    print(json.dumps({
        "peer": peer,
        "shards": shards,
        "workers": workers,
        "seconds": seconds,
        "leases_per_worker": distribution,
        "calls": dict(sorted(calls.items())),
        "read_units_per_shard_hour": round(reads / shard_hours, 1),
        "write_units_per_shard_hour": round(writes / shard_hours, 1),
        "cost_read_unit_equivalents_per_shard_hour": round((reads + 5 * writes) / shard_hours, 1),
        "streams": len(arn.split(",")),
        "cpu_seconds_per_shard_hour": round(cpu / shard_hours, 2),
        "takeover_after_kill_9_s": None if takeover is None else round(takeover, 1),
    }))


if __name__ == "__main__":
    main()
