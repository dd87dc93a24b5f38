#!/usr/bin/env python3
"""Per-task CPU time for dataplane-bench.sh, from /proc/PID/task/TID/schedstat
(first field: ns on CPU). /proc/stat tick accounting is useless on these VMs.

  schedstat.py snapshot FILE          all tasks of the machine -> FILE (JSON)
  schedstat.py diff A B SECONDS KPPS --amtgw PID --injector PID [--exclude PID ...]

diff prints JSON: % of one core over SECONDS for each group:
  amtgw      every thread of the amtgw process (userspace path incl. the
             softirq work its TUN writes trigger in its context)
  ksoftirqd  ksoftirqd/N
  napi       napi/* kernel threads (threaded NAPI of the bench's veths: the
             uplink's receive processing, BPF program, IP input, socket queue)
  injector   the synthetic relay (excluded from the whole path)
  other      every other task (other load on the machine; excluded)
whole_path = amtgw + ksoftirqd + napi, and per 1000 pkt/s delivered.
"""
import json
import os
import sys


def snapshot():
    tasks = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    ns = int(f.read().split()[0])
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    comm = f.read().strip()
            except (OSError, ValueError, IndexError):
                continue
            tasks[tid] = [int(pid), comm, ns]
    return tasks


def main():
    if sys.argv[1] == "snapshot":
        with open(sys.argv[2], "w") as f:
            json.dump(snapshot(), f)
        return
    _, _, a, b, seconds, kpps, *rest = sys.argv
    seconds, kpps = float(seconds), float(kpps)
    opts = {"--amtgw": set(), "--injector": set(), "--exclude": set()}
    key = None
    for r in rest:
        if r in opts:
            key = r
        else:
            opts[key].add(int(r))
    with open(a) as f:
        before = json.load(f)
    with open(b) as f:
        after = json.load(f)
    groups = {"amtgw": 0, "ksoftirqd": 0, "napi": 0, "injector": 0, "other": 0}
    for tid, (pid, comm, ns) in after.items():
        prev = before.get(tid)
        delta = ns - (prev[2] if prev and prev[0] == pid else 0)
        if pid in opts["--amtgw"]:
            g = "amtgw"
        elif pid in opts["--injector"]:
            g = "injector"
        elif pid in opts["--exclude"]:
            continue
        elif comm.startswith("ksoftirqd/"):
            g = "ksoftirqd"
        elif comm.startswith("napi/"):
            g = "napi"
        else:
            g = "other"
        groups[g] += delta
    pct = {k: round(100 * v / 1e9 / seconds, 2) for k, v in groups.items()}
    whole = pct["amtgw"] + pct["ksoftirqd"] + pct["napi"]
    out = {f"{k}_pct": v for k, v in pct.items()}
    out["whole_path_pct"] = round(whole, 2)
    out["whole_path_pct_per_kpps"] = round(whole / kpps, 3) if kpps > 0 else None
    print(json.dumps(out))


if __name__ == "__main__":
    main()
