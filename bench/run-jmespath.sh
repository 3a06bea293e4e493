#!/usr/bin/env bash
# JMESPath micro-benchmark against Python's reference implementation (the bar: every case of the
# compliance suite's benchmarks.json at least 10x faster than Debian's python3-jmespath, for
# evaluation with a cached compiled expression and for compile+evaluate, measured in the same run).
#
# Builds bw-jmespath-bench in build-release (shared with the other benchmarks: only this target is
# built), runs it and bench/jmespath_bench.py on the same cases, prints one Markdown table row per
# case plus the min and median ratios, and exits 1 when any ratio is below MIN_RATIO.
# This VM's speed drifts by tens of percent from one second to the next, so the two sides run
# ROUNDS times, alternately, pinned to one CPU, and each side keeps its best figure per case.
#
# Usage: bench/run-jmespath.sh [--all]     (--all: every suite file, not just benchmarks.json)
# Env:   BUILD_DIR (default build-release), MIN_RATIO (default 10), ROUNDS (default 2),
#        PYTHON (default /usr/bin/python3)
set -euo pipefail

cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build-release}
MIN_RATIO=${MIN_RATIO:-10}
ROUNDS=${ROUNDS:-2}
PYTHON=${PYTHON:-/usr/bin/python3} # Debian's interpreter, which sees python3-jmespath

if ! "$PYTHON" -c 'import jmespath' 2>/dev/null; then
    # The reference implementation comes from Debian, like everything else (PyPI is not used).
    echo "run-jmespath.sh: installing python3-jmespath" >&2
    sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y python3-jmespath >/dev/null ||
        { echo "run-jmespath.sh: cannot install python3-jmespath" >&2; exit 2; }
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF >"$tmp/cmake.log" 2>&1 ||
    { cat "$tmp/cmake.log" >&2; exit 1; }
cmake --build "$BUILD_DIR" --target bw-jmespath-bench -j2 >"$tmp/build.log" 2>&1 ||
    { cat "$tmp/build.log" >&2; exit 1; }

pin=()
if command -v taskset >/dev/null; then
    pin=(taskset -c "$(($(nproc) - 1))")
fi
for ((round = 0; round < ROUNDS; round++)); do
    ${pin[@]+"${pin[@]}"} "$BUILD_DIR/bw-jmespath-bench" "$@" >>"$tmp/c.jsonl"
    ${pin[@]+"${pin[@]}"} "$PYTHON" bench/jmespath_bench.py "$@" >>"$tmp/py.jsonl"
done

"$PYTHON" - "$tmp/c.jsonl" "$tmp/py.jsonl" "$MIN_RATIO" <<'PY'
import json
import statistics
import sys

def load(path):
    """Per case, the best figures over the rounds."""
    best = {}
    for r in map(json.loads, open(path, encoding="utf-8")):
        key = (r["file"], r["case"])
        if key in best:
            for k in ("ns_per_op_eval", "ns_per_op_full"):
                best[key][k] = min(best[key][k], r[k])
        else:
            best[key] = r
    return best

c, py, bar = load(sys.argv[1]), load(sys.argv[2]), float(sys.argv[3])
if set(c) != set(py):
    sys.exit(f"run-jmespath.sh: the two sides measured different cases: {sorted(set(c) ^ set(py))}")

def cell(expr):
    return "`" + expr.replace("|", "\\|").replace("`", "'") + "`"

print("| file | # | expression | kind | C eval ns | Py eval ns | eval ratio | C full ns | Py full ns | full ratio |")
print("|---|---|---|---|---:|---:|---:|---:|---:|---:|")
ratios = {"eval": [], "full": []}
worst = []
for key in sorted(c):
    a, b = c[key], py[key]
    row = []
    for kind in ("eval", "full"):
        ca, pb = a[f"ns_per_op_{kind}"], b[f"ns_per_op_{kind}"]
        ratio = pb / ca
        ratios[kind].append(ratio)
        worst.append((ratio, kind, key, a["expression"]))
        row += [f"{ca:.0f}", f"{pb:.0f}", f"{ratio:.1f}x"]
    print(f"| {key[0]} | {key[1]} | {cell(a['expression'])} | {a.get('bench') or ''} | " + " | ".join(row) + " |")
print()
for kind in ("eval", "full"):
    r = ratios[kind]
    print(f"{kind}: min ratio {min(r):.1f}x, median {statistics.median(r):.1f}x over {len(r)} cases")
worst.sort()
print("slowest relative to Python: " + "; ".join(f"{k} {f}#{i} {r:.1f}x" for r, k, (f, i), _ in worst[:3]))
below = [w for w in worst if w[0] < bar]
if below:
    for r, kind, (f, i), expr in below:
        print(f"BELOW {bar:g}x: {kind} {f}#{i} {expr}: {r:.1f}x", file=sys.stderr)
    sys.exit(1)
PY
