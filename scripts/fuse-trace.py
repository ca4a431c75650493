#!/usr/bin/env python3
"""Counts and times the FUSE requests a command causes, from the kernel's own
tracepoints (fuse:fuse_request_send and fuse:fuse_request_end, Linux 6.13+).

    python3 scripts/fuse-trace.py [--per N] -- COMMAND [ARGS...]

Runs COMMAND (e.g. `porta run` of a workload) with both tracepoints on, then prints for
each opcode: how many requests, how many per unit of work (`--per N`: e.g. the number of
files a workload created), and the time from the kernel queueing a request to its reply
(p50, p90, in microseconds: the round trip as the calling process waits for it). Every
FUSE connection of the machine is traced: run it on an otherwise idle FUSE. Needs root.
"""

import argparse
import collections
import os
import re
import subprocess
import sys

TRACING = "/sys/kernel/tracing"
EVENTS = ("fuse/fuse_request_send", "fuse/fuse_request_end")
# "  <task>-<pid> [cpu] flags  ts: fuse_request_send: connection 45 req 8 opcode 1 (FUSE_LOOKUP) len 44"
LINE = re.compile(
    r"\s(\d+\.\d+): fuse_request_(send|end): connection (\d+) req (\d+)"
    r"(?: opcode \d+ \((\w+)\))?(?:.* error (-?\d+))?"
)


def write(path, value):
    with open(os.path.join(TRACING, path), "w") as f:
        f.write(value)


def ensure_tracefs():
    """Mounts tracefs when it is not; returns whether it did (to unmount it after)."""
    mounted = False
    if not os.path.exists(os.path.join(TRACING, "events")):
        subprocess.run(["mount", "-t", "tracefs", "nodev", TRACING], check=True)
        mounted = True
    for e in EVENTS:
        if not os.path.exists(os.path.join(TRACING, "events", e)):
            sys.exit(f"fuse-trace: this kernel has no tracepoint {e}")
    return mounted


def percentile(sorted_values, p):
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, int(round(p / 100.0 * (len(sorted_values) - 1))))
    return sorted_values[i]


def parse(text):
    """Per opcode: the latencies (µs) of the requests whose send and end were both seen."""
    sent = {}
    lat = collections.defaultdict(list)
    unanswered = collections.Counter()
    for line in text.splitlines():
        m = LINE.search(line)
        if not m:
            continue
        ts, kind, conn, req = float(m.group(1)), m.group(2), m.group(3), m.group(4)
        key = (conn, req)
        if kind == "send":
            sent[key] = (ts, m.group(5) or "?")
        elif key in sent:
            t0, op = sent.pop(key)
            lat[op].append((ts - t0) * 1e6)
    for _, op in sent.values():
        unanswered[op] += 1
    return lat, unanswered


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per", type=float, default=0, help="units of work, for per-unit counts")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        ap.error("no command")
    if os.geteuid() != 0:
        sys.exit("fuse-trace: needs root")
    mounted = ensure_tracefs()
    write("buffer_size_kb", "65536")
    write("trace", "")
    for e in EVENTS:
        write(f"events/{e}/enable", "1")
    try:
        rc = subprocess.run(cmd).returncode
    finally:
        for e in EVENTS:
            write(f"events/{e}/enable", "0")
    with open(os.path.join(TRACING, "trace")) as f:
        text = f.read()
    write("trace", "")
    if mounted:
        subprocess.run(["umount", TRACING], check=False)
    lat, unanswered = parse(text)
    total = sum(len(v) for v in lat.values())
    print(f"{'opcode':<22} {'count':>8} {'per unit':>9} {'p50 us':>8} {'p90 us':>8}")
    for op, v in sorted(lat.items(), key=lambda kv: -len(kv[1])):
        v.sort()
        per = f"{len(v) / a.per:.2f}" if a.per else "-"
        print(f"{op:<22} {len(v):>8} {per:>9} {percentile(v, 50):>8.1f} {percentile(v, 90):>8.1f}")
    per = f"{total / a.per:.2f}" if a.per else "-"
    print(f"{'all':<22} {total:>8} {per:>9}")
    for op, n in unanswered.items():
        print(f"(not answered while traced: {n} {op})")
    return rc


if __name__ == "__main__":
    sys.exit(main())
