#!/usr/bin/env bash
# Handler throughput against echo, measured in the same run (DESIGN.md "Bars": jmespath jobs ≥ 0.7× the
# echo throughput; javascript ≥ 5,000 jobs/s with the small transform used here). Each round runs bench/run-echo.sh once per job type against a fresh nats-server and
# worker, closed loop with INFLIGHT jobs in flight, alternating the types; then prints the median
# throughput and worker CPU per 1,000 jobs of each type and its ratio to echo.
#
# Knobs: REPEAT (3), DURATION (8), INFLIGHT (64), TYPES ("echo jmespath"), OUT (raw JSON lines; default a
# temp file, kept).
set -euo pipefail
cd "$(dirname "$0")/.."

REPEAT=${REPEAT:-3}
export DURATION=${DURATION:-8} INFLIGHT=${INFLIGHT:-64}
TYPES=${TYPES:-"echo jmespath javascript"}
OUT=${OUT:-$(mktemp "${TMPDIR:-/tmp}/bw-jobtypes.XXXXXX.jsonl")}
: >"$OUT"

# The job each type runs: small payloads of the size of the echo benchmark's (about 100 bytes).
payload_for() {
  case "$1" in
    echo) echo '{"n":{{seq}},"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}' ;;
    jmespath) echo '{"expression":"items[?price > `10`].name","data":{"items":[{"name":"widget","price":12.5},{"name":"gadget","price":7}],"n":{{seq}}}}' ;;
    javascript) echo '{"code":"args.items.map(i => i.p * i.q).reduce((a, b) => a + b, 0)","args":{"items":[{"p":2,"q":3},{"p":4,"q":5}],"n":{{seq}}}}' ;;
    *) echo "run-jobtypes: no payload for type $1" >&2; return 1 ;;
  esac
}

for round in $(seq "$REPEAT"); do
  for type in $TYPES; do
    echo "bench: round $round/$REPEAT, $type" >&2
    OPEN_LOOP=0 TARGET=worker JOB_TYPE=$type JOB_PAYLOAD=$(payload_for "$type") bench/run-echo.sh 2>/dev/null >>"$OUT"
  done
done
echo "bench: raw figures in $OUT" >&2
python3 - "$OUT" <<'EOF'
import json, statistics, sys
from collections import defaultdict
runs = defaultdict(list)
for line in open(sys.argv[1]):
    if line.startswith("{"):
        d = json.loads(line)
        runs[d["label"].replace("-closed", "")].append(d)
def med(t, f):
    return statistics.median(r[f] for r in runs[t])
base = med("echo", "throughput_per_s") if "echo" in runs else float("nan")
print("| job type | n | jobs/s (median) | ratio to echo | worker CPU ms/1k jobs | p50 / p99 ms | statuses |")
print("|---|---|---|---|---|---|---|")
for t in runs:
    st = {}
    for r in runs[t]:
        for k, v in r["statuses"].items():
            st[k] = st.get(k, 0) + v
    print(f"| {t} | {len(runs[t])} | {med(t, 'throughput_per_s'):,.0f} | {med(t, 'throughput_per_s') / base:.2f} | "
          f"{med(t, 'worker_cpu_ms_per_1k_jobs'):.1f} | {statistics.median(r['latency_ms']['p50'] for r in runs[t]):.2f} / "
          f"{statistics.median(r['latency_ms']['p99'] for r in runs[t]):.2f} | {st} |")
EOF
