#!/usr/bin/env bash
# http job throughput and latency against a local HTTP server (DESIGN.md "Bars": 1, 100 and 1,000 in
# flight, with the worker's RSS and thread count), echo in the same run as the reference. Each round
# runs bench/run-echo.sh (closed loop) once per in-flight level for http, then once for echo; the HTTP
# server is bw-http-target (the tests' libuv server, one thread) answering GET /json.
#
# Knobs: REPEAT (3), DURATION (8), LEVELS ("1 100 1000"), OUT (raw JSON lines; default a temp file, kept).
set -euo pipefail
cd "$(dirname "$0")/.."

REPEAT=${REPEAT:-3}
LEVELS=${LEVELS:-"1 100 1000"}
export DURATION=${DURATION:-8} OPEN_LOOP=0
OUT=${OUT:-$(mktemp "${TMPDIR:-/tmp}/bw-http.XXXXXX.jsonl")}
: >"$OUT"
BUILD=${BUILD:-build-release}

cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF >/dev/null
cmake --build "$BUILD" -j"$(nproc 2>/dev/null || echo 2)" --target bw-http-target >/dev/null

tmp=$(mktemp -d "${TMPDIR:-/tmp}/bw-http.XXXXXX")
target_pid=""
cleanup() {
  [ -n "$target_pid" ] && kill "$target_pid" 2>/dev/null && wait "$target_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

"$BUILD/bw-http-target" >"$tmp/port" 2>"$tmp/target.log" &
target_pid=$!
for _ in $(seq 100); do grep -q '^PORT ' "$tmp/port" 2>/dev/null && break; sleep 0.05; done
port=$(awk '/^PORT / { print $2 }' "$tmp/port")
[ -n "$port" ] || { cat "$tmp/target.log" >&2; echo "run-http: the HTTP server did not start" >&2; exit 1; }

# The worker may reach the loopback server; each job is one GET of a small JSON document.
export HTTP_ALLOW_CIDRS=127.0.0.0/8 WORKER_MAX_CONCURRENCY=2000
payload="{\"url\":\"http://127.0.0.1:$port/json\",\"n\":{{seq}}}"
for round in $(seq "$REPEAT"); do
  for n in $LEVELS; do
    echo "bench: round $round/$REPEAT, http, $n in flight" >&2
    INFLIGHT=$n JOB_TYPE=http JOB_PAYLOAD=$payload bench/run-echo.sh 2>/dev/null | sed "s/\"label\":\"http-closed\"/\"label\":\"http-$n\"/" >>"$OUT"
  done
  echo "bench: round $round/$REPEAT, echo, 100 in flight" >&2
  INFLIGHT=100 bench/run-echo.sh 2>/dev/null >>"$OUT"
done
echo "bench: raw figures in $OUT" >&2
python3 - "$OUT" <<'PY'
import json, statistics, sys
from collections import defaultdict
runs = defaultdict(list)
for line in open(sys.argv[1]):
    if line.startswith("{"):
        d = json.loads(line)
        runs[d["label"]].append(d)
def med(rs, f):
    return statistics.median(r[f] for r in rs)
print("| jobs | in flight | n | jobs/s (median) | p50 / p99 ms | worker CPU ms/1k jobs | worker RSS MB | worker threads | statuses |")
print("|---|---|---|---|---|---|---|---|---|")
for label, rs in runs.items():
    st = {}
    for r in rs:
        for k, v in r["statuses"].items():
            st[k] = st.get(k, 0) + v
    print(f"| {label.split('-')[0]} | {rs[0]['inflight']} | {len(rs)} | {med(rs, 'throughput_per_s'):,.0f} | "
          f"{statistics.median(r['latency_ms']['p50'] for r in rs):.2f} / {statistics.median(r['latency_ms']['p99'] for r in rs):.2f} | "
          f"{med(rs, 'worker_cpu_ms_per_1k_jobs'):.1f} | {max(r['worker_rss_mb'] for r in rs):.1f} | "
          f"{max(r['worker_threads'] for r in rs)} | {st} |")
PY
