#!/usr/bin/env bash
# The 10,000-concurrent-sleeps scenario (DESIGN.md "Bars"): one worker with WORKER_MAX_CONCURRENCY=10000
# gets JOBS `sleep {ms}` assignments at once (bw-loadgen closed loop with that many in flight) on a private
# nats-server. Prints bw-loadgen's JSON line plus the worker's peak RSS and CPU; the bar is every job
# done within 1.5 s of the first send (max latency) and RSS <= 150 MB. Cleans up on exit.
# Knobs: JOBS (10000), SLEEP_MS (1000), REPEAT (3).
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-10000} SLEEP_MS=${SLEEP_MS:-1000} REPEAT=${REPEAT:-3}
BUILD=build-release
tmp=$(mktemp -d "${TMPDIR:-/tmp}/bw-sleep.XXXXXX")
nats_pid="" worker_pid=""
cleanup() {
  for p in $worker_pid $nats_pid; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF >/dev/null
cmake --build "$BUILD" -j2 --target beamline-worker bw-loadgen >/dev/null
for round in $(seq "$REPEAT"); do
  /usr/sbin/nats-server -a 127.0.0.1 -p -1 --ports_file_dir "$tmp" >"$tmp/nats.log" 2>&1 &
  nats_pid=$!
  for _ in $(seq 100); do [ -s "$tmp/nats-server_$nats_pid.ports" ] && break; sleep 0.05; done
  NATS_URL=$(grep -o 'nats://[^"]*' "$tmp/nats-server_$nats_pid.ports" | head -n1)
  export NATS_URL
  WORKER_MAX_CONCURRENCY=$JOBS LOG_LEVEL=warn HEALTH_BIND=off DLQ_PATH="$tmp/dlq.jsonl" \
    "$BUILD/beamline-worker" >"$tmp/worker.log" 2>&1 &
  worker_pid=$!
  "$BUILD/bw-loadgen" --wait-ready-ms 10000 --count 1 --warmup 0 >/dev/null 2>&1
  line=$("$BUILD/bw-loadgen" --mode closed --inflight "$JOBS" --count "$JOBS" --warmup 0 --type sleep \
    --payload "{\"ms\":$SLEEP_MS}" --deadline-ms 60000 --label "sleep-$JOBS-x-${SLEEP_MS}ms" 2>/dev/null)
  rss=$(awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$worker_pid/status")
  cpu=$(awk '{ print $14 + $15 }' "/proc/$worker_pid/stat")
  printf '%s,"round":%d,"worker_rss_mb":%s,"worker_cpu_ticks":%s}\n' "${line%\}}" "$round" "$rss" "$cpu"
  kill -TERM "$worker_pid" "$nats_pid"
  wait "$worker_pid" "$nats_pid" 2>/dev/null || true
  worker_pid="" nats_pid=""
done
