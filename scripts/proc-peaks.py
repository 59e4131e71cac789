#!/usr/bin/env python3
"""Peak memory and CPU of slicenet's processes while a command runs (docs/benchmarks.md).

    scripts/proc-peaks.py --bin-dir target/release -- cargo test -p e2e --test crosscluster

Every 0.2 s it looks at each process whose executable lies in --bin-dir (only this worktree's
binaries, so nobody else's processes are counted) and records, per role (the binary plus its
subcommand, e.g. `slice-operator node-agent`): the largest VmHWM (peak resident set, from
/proc/PID/status), the CPU time used (utime + stime from /proc/PID/stat) and the busiest
one-second window of CPU. It prints one line per role when the command ends and exits with the
command's status.
"""

import argparse
import os
import subprocess
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def role(pid, exe):
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    except OSError:
        return None
    name = os.path.basename(exe)
    sub = argv[1].decode() if len(argv) > 1 and argv[1] and not argv[1].startswith(b"-") else ""
    return f"{name} {sub}".strip()


def sample(bin_dir):
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            exe = os.readlink(f"/proc/{entry}/exe")
        except OSError:
            continue
        if os.path.dirname(exe) != bin_dir:
            continue
        try:
            status = open(f"/proc/{entry}/status").read()
            stat = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        hwm = next((int(l.split()[1]) for l in status.splitlines() if l.startswith("VmHWM:")), 0)
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICK
        r = role(entry, exe)
        if r:
            found[int(entry)] = (r, hwm, cpu)
    return found


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin-dir", required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    bin_dir = os.path.realpath(args.bin_dir)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    child = subprocess.Popen(command)
    # per pid: role, peak kB, last cpu seconds, (time, cpu) one second ago
    pids = {}
    while child.poll() is None:
        now = time.monotonic()
        for pid, (r, hwm, cpu) in sample(bin_dir).items():
            p = pids.setdefault(pid, {"role": r, "hwm": 0, "cpu": 0.0, "window": (now, cpu), "busiest": 0.0})
            p["hwm"] = max(p["hwm"], hwm)
            p["cpu"] = cpu
            t0, c0 = p["window"]
            if now - t0 >= 1.0:
                p["busiest"] = max(p["busiest"], (cpu - c0) / (now - t0))
                p["window"] = (now, cpu)
        time.sleep(0.2)
    roles = {}
    for p in pids.values():
        r = roles.setdefault(p["role"], {"n": 0, "hwm": 0, "cpu": 0.0, "busiest": 0.0})
        r["n"] += 1
        r["hwm"] = max(r["hwm"], p["hwm"])
        r["cpu"] = max(r["cpu"], p["cpu"])
        r["busiest"] = max(r["busiest"], p["busiest"])
    print(f"{'role':32} {'processes':>9} {'peak RSS MiB':>12} {'max CPU s':>9} {'busiest 1 s (cores)':>19}", file=sys.stderr)
    for name, r in sorted(roles.items()):
        print(f"{name:32} {r['n']:>9} {r['hwm'] / 1024:>12.1f} {r['cpu']:>9.2f} {r['busiest']:>19.2f}", file=sys.stderr)
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
