#!/usr/bin/env python3
"""kcld idle on many shards: CPU, calls and memory once every shard is caught up.

    idle.py KCLD_BINARY STREAM_ARN SHARDS [SECONDS]

Starts kcld on the stream (every shard empty), waits until it holds a lease
on every shard and its reads have backed off, then measures for SECONDS
(default 120): CPU seconds (user + system, /proc), GetRecords calls and
lease table writes per second (kcld's own metrics), and RSS. Prints one JSON
line with CPU per hour and per call.
"""
import json
import os
import re
import subprocess
import sys
import time
import urllib.request

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def status(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def metric(page, name):
    total = 0.0
    for line in page.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def main():
    binary, arn, shards = sys.argv[1], sys.argv[2], int(sys.argv[3])
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 120.0
    env = dict(os.environ)
    env.update({
        "KCLD_APPLICATION_NAME": f"idle-{int(time.time())}",
        "KCLD_STREAM_ARN": arn,
        "KCLD_INITIAL_POSITION": "TRIM_HORIZON",
        "KCLD_OPS__LISTEN": "127.0.0.1:0",
        "KCLD_LOG__FORMAT": "text",
    })
    log = open("/tmp/kcld-idle.log", "w")
    proc = subprocess.Popen([binary, "run"], env=env, stdout=subprocess.DEVNULL, stderr=log)
    addr = None
    deadline = time.time() + 60
    while addr is None and time.time() < deadline:
        time.sleep(0.5)
        m = re.search(r"metrics and health on http://([0-9.]+:[0-9]+)", open("/tmp/kcld-idle.log").read())
        if m:
            addr = m.group(1)
    if addr is None:
        proc.terminate()
        sys.exit("kcld printed no ops address; see /tmp/kcld-idle.log")

    def page():
        return urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()

    # Every shard leased and read at least once; then let the idle back-off settle.
    deadline = time.time() + 600
    while time.time() < deadline:
        p = page()
        if len({l.split('shard="')[1].split('"')[0] for l in p.splitlines()
                if l.startswith("kcld_getrecords_calls_total{") and 'shard="' in l}) >= shards:
            break
        time.sleep(2)
    time.sleep(30)
    p0, c0, t0 = page(), cpu_seconds(proc.pid), time.time()
    time.sleep(seconds)
    p1, c1, t1 = page(), cpu_seconds(proc.pid), time.time()
    rss = status(proc.pid, "VmRSS")
    hwm = status(proc.pid, "VmHWM")
    proc.terminate()
    proc.wait(timeout=60)
    elapsed = t1 - t0
    calls = metric(p1, "kcld_getrecords_calls_total") - metric(p0, "kcld_getrecords_calls_total")
    cpu = c1 - c0
    print(json.dumps({
        "shards": shards,
        "seconds": round(elapsed, 1),
        "cpu_s": round(cpu, 2),
        "cpu_s_per_hour": round(cpu * 3600 / elapsed, 1),
        "cores": round(cpu / elapsed, 4),
        "getrecords_per_s": round(calls / elapsed, 1),
        "getrecords_per_shard_per_s": round(calls / elapsed / shards, 3),
        "cpu_us_per_getrecords": round(cpu * 1e6 / calls, 1) if calls else None,
        "rss_mib": round(rss, 1),
        "peak_rss_mib": round(hwm, 1),
    }))


if __name__ == "__main__":
    main()
