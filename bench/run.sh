#!/usr/bin/env bash
# The echo benchmark as the report uses it: for each of the generator's socket-write modes (nats.c's
# buffered flusher, then one write per publish), REPEAT rounds that alternate the baseline responder
# and the worker, each round on a fresh nats-server (bench/run-echo.sh), then a table of medians and
# worker/baseline ratios. Both targets use the same transport: nats.c on a libuv loop, socket writes
# once per loop iteration (RESPONDER_IO=threads measures the responder on nats.c's threads instead).
# Every figure is measured in this one run on this machine.
#
# Knobs: REPEAT (3), DURATION (8), RATE ("2000 5000 10000"), INFLIGHT (64), MODES ("buffered asap"),
# RESPONDER_IO (loop), OUT (a file for the raw JSON lines; default a temp file, kept and printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."

REPEAT=${REPEAT:-3}
export DURATION=${DURATION:-8} RATE=${RATE:-"2000 5000 10000"} INFLIGHT=${INFLIGHT:-64}
MODES=${MODES:-"buffered asap"}
OUT=${OUT:-$(mktemp "${TMPDIR:-/tmp}/bw-bench.XXXXXX.jsonl")}
: >"$OUT"

for mode in $MODES; do
  asap=0
  [ "$mode" = asap ] && asap=1
  for round in $(seq "$REPEAT"); do
    for target in responder worker; do
      echo "bench: $mode writes, round $round/$REPEAT, $target" >&2
      SEND_ASAP=$asap TARGET=$target bench/run-echo.sh 2>/dev/null >>"$OUT"
    done
  done
done
echo "bench: raw figures in $OUT" >&2
python3 bench/summarize.py "$OUT"
