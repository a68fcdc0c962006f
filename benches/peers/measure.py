#!/usr/bin/env python3
"""Runs one consumer as a whole process and measures it.

    measure.py NAME RECORDS (--stdout | --file PATH) -- COMMAND...

Starts COMMAND under /usr/bin/time -v, counts the records it delivers
(lines on its stdout, or lines appended to PATH), and once RECORDS arrived
sends it SIGTERM. Prints one JSON line: CPU seconds (user + system) and CPU
seconds per 100,000 records, peak RSS, seconds from start to the first record
and to the last, and from SIGTERM to exit.
"""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time


def child_of(pid):
    """The process /usr/bin/time started (its only child)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = f.read().split()
        return int(kids[0]) if kids else None
    except OSError:
        return None


def main():
    args = sys.argv[1:]
    name, records = args[0], int(args[1])
    mode = args[2]
    path = args[3] if mode == "--file" else None
    command = args[args.index("--") + 1:]
    stats = f"/tmp/peer-{name}-{os.getpid()}.time"
    started = time.monotonic()
    proc = subprocess.Popen(
        ["/usr/bin/time", "-v", "-o", stats] + command,
        stdout=subprocess.PIPE if mode == "--stdout" else subprocess.DEVNULL,
        stderr=open(f"/tmp/peer-{name}.log", "w"),
    )
    count = [0]
    if mode == "--stdout":
        def pump():
            for _ in proc.stdout:
                count[0] += 1
        threading.Thread(target=pump, daemon=True).start()
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
    target = child_of(proc.pid) or proc.pid
    term = time.monotonic()
    os.kill(target, signal.SIGTERM)
    try:
        proc.wait(timeout=180)
    except subprocess.TimeoutExpired:
        os.kill(target, signal.SIGKILL)
        proc.wait()
    stop = time.monotonic() - term
    text = open(stats).read()

    def field(label):
        m = re.search(re.escape(label) + r":\s*([0-9.]+)", text)
        return float(m.group(1)) if m else None

    cpu = (field("User time (seconds)") or 0) + (field("System time (seconds)") or 0)
    delivered = count[0]
    print(json.dumps({
        "peer": name,
        "records": delivered,
        "cpu_s": round(cpu, 2),
        "cpu_s_per_100k": round(cpu * 100_000 / delivered, 2) if delivered else None,
        "peak_rss_mib": round((field("Maximum resident set size (kbytes)") or 0) / 1024, 1),
        "first_record_s": round(first, 2) if first is not None else None,
        "all_records_s": round(last, 2) if last is not None else None,
        "sigterm_to_exit_s": round(stop, 2),
    }))
    return 0 if delivered >= records else 1


if __name__ == "__main__":
    sys.exit(main())
