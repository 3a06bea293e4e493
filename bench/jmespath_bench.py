#!/usr/bin/python3
"""Per-case timing of Python's reference JMESPath implementation (Debian's python3-jmespath), the
baseline bench/run-jmespath.sh compares bw-jmespath-bench (bench/jmespath_bench.c) against.

Same cases, method and output as the C side: for each case of benchmarks.json (every suite file
with --all), skipping cases that expect an error, the best of REPS repetitions, each long enough
(MIN_REP_NS), of
- eval: jmespath.compile(expr).search(data), the parsed expression reused;
- full: jmespath.search(expr, data) with the parser's cache emptied first (Parser.purge()), so
  every call parses (the purge, a dict.clear(), is counted in Python's time).
One JSON object per line: {"file", "case", "expression", "bench", "ns_per_op_eval", "ns_per_op_full"}.

Usage: jmespath_bench.py [--all] [suite_dir]
"""
import json
import pathlib
import sys
import time

import jmespath
from jmespath.parser import Parser

REPS = 5
MIN_REP_NS = 50_000_000
EXPR_SHOWN = 80


def rep_ns(op, iters):
    t0 = time.perf_counter_ns()
    for _ in range(iters):
        op()
    return time.perf_counter_ns() - t0


def best_ns_per_op(op):
    iters = 1
    while (ns := rep_ns(op, iters)) < MIN_REP_NS:
        iters *= 2
    best = ns / iters
    for _ in range(REPS):
        best = min(best, rep_ns(op, iters) / iters)
    return best


def full_op(expr, data):
    def op():
        Parser.purge()
        jmespath.search(expr, data)
    return op


def bench_file(path):
    index = 0
    for group in json.loads(path.read_text(encoding="utf-8")):
        data = group.get("given")
        for case in group["cases"]:
            if "error" not in case:
                expr = case["expression"]
                compiled = jmespath.compile(expr)
                line = {
                    "file": path.name,
                    "case": index,
                    "expression": expr[:EXPR_SHOWN],
                    "bench": case.get("bench"),
                    "ns_per_op_eval": round(best_ns_per_op(lambda: compiled.search(data)), 1),
                    "ns_per_op_full": round(best_ns_per_op(full_op(expr, data)), 1),
                }
                print(json.dumps(line, ensure_ascii=False, separators=(",", ":")), flush=True)
            index += 1


def main():
    args = sys.argv[1:]
    all_files = "--all" in args
    rest = [a for a in args if a != "--all"]
    suite = pathlib.Path(rest[0]) if rest else pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/jmespath"
    for path in sorted(suite.glob("*.json")) if all_files else [suite / "benchmarks.json"]:
        bench_file(path)


if __name__ == "__main__":
    main()
