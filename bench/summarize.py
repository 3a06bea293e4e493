#!/usr/bin/env python3
"""Medians of bench/run-echo.sh JSON lines per (generator write mode, scenario, target), and the worker's
figures as ratios to the baseline responder measured in the same run. Prints a Markdown table."""
import json
import statistics
import sys
from collections import defaultdict


def main(path):
    runs = defaultdict(list)
    for line in open(path):
        line = line.strip()
        if line.startswith("{"):
            d = json.loads(line)
            runs[(d["write_mode"], d["label"], d["target"])].append(d)

    def med(key, field, sub=None):
        vals = [(r[field][sub] if sub else r[field]) for r in runs.get(key, [])]
        return statistics.median(vals) if vals else float("nan")

    print("| generator writes | scenario | n | baseline jobs/s | worker jobs/s | ratio | baseline CPU ms/1k | worker CPU ms/1k | ratio | baseline p50/p99 ms | worker p50/p99 ms | worker RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    scenarios = sorted({(m, l) for (m, l, _) in runs}, key=lambda x: (x[0], x[1]))
    for mode, label in scenarios:
        b, w = (mode, label, "responder"), (mode, label, "worker")
        bt, wt = med(b, "throughput_per_s"), med(w, "throughput_per_s")
        bc, wc = med(b, "worker_cpu_ms_per_1k_jobs"), med(w, "worker_cpu_ms_per_1k_jobs")
        lost = sum(r["lost"] + r["duplicated"] for k in (b, w) for r in runs.get(k, []))
        io = next((r.get("target_io", "?") for r in runs.get(b, [])), "?")
        print(f"| {mode} (baseline io: {io}) | {label} | {len(runs.get(w, []))} | {bt:,.0f} | {wt:,.0f} | {wt / bt:.2f} | {bc:.1f} | {wc:.1f} | "
              f"{wc / bc:.2f} | {med(b, 'latency_ms', 'p50'):.2f} / {med(b, 'latency_ms', 'p99'):.2f} | "
              f"{med(w, 'latency_ms', 'p50'):.2f} / {med(w, 'latency_ms', 'p99'):.2f} | {med(w, 'worker_rss_mb'):.1f} |"
              + ("" if lost == 0 else f" LOST/DUP {lost}"))


if __name__ == "__main__":
    main(sys.argv[1])
