#!/usr/bin/env python3
"""Runs one consumer as a whole process and measures it.

    measure.py NAME RECORDS (--stdout | --file PATH) [--table TABLE --successor CMD] -- COMMAND...

Starts COMMAND under /usr/bin/time -v, counts the records it delivers (lines
on its stdout, or lines appended to PATH), and once RECORDS arrived sends it
SIGTERM. Prints one JSON line: CPU seconds (user + system, the process and
every child it waited for, such as MultiLang record processors) and CPU
seconds per 100,000 records; peak RSS of the process alone (time -v) and of
its whole process tree (sampled from /proc every 0.25 s); seconds from start
to the first record and to the last; from SIGTERM to exit; context
switches (voluntary and involuntary, every thread and waited child, from
time -v) per 1,000 records.

With --table and --successor (a shell command that starts a second worker of
the same application), the successor is started once every record arrived,
and the SIGTERM is sent once the successor owns a lease in TABLE (or after
60 s); then "sigterm_to_taken_s" is the time from the SIGTERM until the
successor owns every lease the first worker held, read from the lease table
every 0.1 s (boto3; the consumer account's endpoint and keys from the
environment). The successor is stopped afterwards and not measured.
"""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time


def children(pid):
    """Children of every thread of pid (a child belongs to the thread that
    started it: the KCL and kcld start record processors from worker
    threads)."""
    kids = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(int(k) for k in f.read().split())
        except OSError:
            pass
    return kids


def tree_rss_kib(pid):
    """Resident set of pid and all its descendants, in KiB."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
        stack.extend(children(p))
    return total


def owners(table):
    import boto3

    dynamo = boto3.client("dynamodb", endpoint_url=os.environ["AWS_ENDPOINT_URL_DYNAMODB"],
                          region_name=os.environ.get("AWS_REGION", "us-east-1"))
    out, start = {}, None
    while True:
        page = dynamo.scan(TableName=table, **({"ExclusiveStartKey": start} if start else {}))
        for item in page["Items"]:
            key = item["leaseKey"]["S"]
            if key.startswith("shardId-") and "checkpoint" in item:
                if item["checkpoint"]["S"] != "SHARD_END":
                    out[key] = item.get("leaseOwner", {}).get("S")
        start = page.get("LastEvaluatedKey")
        if not start:
            return out


def main():
    args = sys.argv[1:]
    split = args.index("--")
    opts, command = args[:split], args[split + 1:]
    name, records, mode = opts[0], int(opts[1]), opts[2]
    path = opts[3] if mode == "--file" else None
    table = opts[opts.index("--table") + 1] if "--table" in opts else None
    successor = opts[opts.index("--successor") + 1] if "--successor" in opts else None
    stats = f"/tmp/peer-{name}-{os.getpid()}.time"
    started = time.monotonic()
    log = open(f"/tmp/peer-{name}.log", "w")
    proc = subprocess.Popen(
        ["/usr/bin/time", "-v", "-o", stats] + command,
        stdout=subprocess.PIPE if mode == "--stdout" else log,
        stderr=log,
    )
    count = [0]
    if mode == "--stdout":
        def pump():
            for _ in proc.stdout:
                count[0] += 1
        threading.Thread(target=pump, daemon=True).start()
    peak_tree = [0]
    running = [True]

    def sample():
        while running[0]:
            kids = children(proc.pid)
            if kids:
                peak_tree[0] = max(peak_tree[0], tree_rss_kib(kids[0]))
            time.sleep(0.25)
    threading.Thread(target=sample, daemon=True).start()

    first = last = None
    deadline = started + float(os.environ.get("PEER_TIMEOUT", "3600"))
    while time.monotonic() < deadline and proc.poll() is None:
        if path is not None:
            try:
                with open(path, "rb") as f:
                    count[0] = sum(1 for _ in f)
            except OSError:
                pass
        now = time.monotonic()
        if first is None and count[0] > 0:
            first = now - started
        if count[0] >= records:
            last = now - started
            break
        time.sleep(0.05 if path is None else 0.25)
    target = (children(proc.pid) or [proc.pid])[0]

    second = None
    worker = None
    if successor and table and proc.poll() is None:
        held = owners(table)
        worker = next((o for o in held.values() if o), None)
        second_log = open(f"/tmp/peer-{name}-successor.log", "w")
        second = subprocess.Popen(successor, shell=True, stdout=second_log, stderr=second_log,
                                  start_new_session=True)
        wait_until = time.monotonic() + 60
        while time.monotonic() < wait_until:
            if any(o and o != worker for o in owners(table).values()):
                break
            time.sleep(0.2)

    held_at_term = {k for k, o in owners(table).items() if o == worker} if second else set()
    exited = [None]

    def reap():
        proc.wait()
        exited[0] = time.monotonic()
    term = time.monotonic()
    os.kill(target, signal.SIGTERM)
    threading.Thread(target=reap, daemon=True).start()
    taken = None
    if second:
        until = term + 180
        while time.monotonic() < until:
            now = owners(table)
            if all(now.get(k) not in (None, worker) for k in held_at_term):
                taken = time.monotonic() - term
                break
            time.sleep(0.1)
    until = term + 180
    while exited[0] is None and time.monotonic() < until:
        time.sleep(0.01)
    if exited[0] is None:
        os.kill(target, signal.SIGKILL)
        while exited[0] is None:
            time.sleep(0.01)
    stop = exited[0] - term
    running[0] = False
    if second:
        os.killpg(second.pid, signal.SIGTERM)
        try:
            second.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(second.pid, signal.SIGKILL)
    text = open(stats).read()

    def field(label):
        m = re.search(re.escape(label) + r":\s*([0-9.]+)", text)
        return float(m.group(1)) if m else None

    cpu = (field("User time (seconds)") or 0) + (field("System time (seconds)") or 0)
    delivered = count[0]
    switches = (field("Voluntary context switches") or 0) + (
        field("Involuntary context switches") or 0)
    print(json.dumps({
        "peer": name,
        "records": delivered,
        "cpu_s": round(cpu, 2),
        "cpu_s_per_100k": round(cpu * 100_000 / delivered, 2) if delivered else None,
        "peak_rss_mib": round((field("Maximum resident set size (kbytes)") or 0) / 1024, 1),
        "peak_tree_rss_mib": round(peak_tree[0] / 1024, 1),
        "first_record_s": round(first, 2) if first is not None else None,
        "all_records_s": round(last, 2) if last is not None else None,
        "sigterm_to_exit_s": round(stop, 2),
        "leases_handed_over": len(held_at_term),
        "sigterm_to_taken_s": round(taken, 2) if taken is not None else None,
        "context_switches_per_1k": round(switches * 1000 / delivered, 1) if delivered else None,
    }))
    return 0 if delivered >= records else 1


if __name__ == "__main__":
    sys.exit(main())
