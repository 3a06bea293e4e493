#!/usr/bin/env bash
# Echo benchmark (DESIGN.md "Bars"): builds the release worker and bw-loadgen, starts a private
# nats-server and one worker, then runs a closed loop (INFLIGHT jobs in flight) and an open loop
# (RATE jobs/s), each for DURATION seconds. Prints one JSON line per run: bw-loadgen's figures plus
# the worker's CPU time per 1000 jobs and its peak RSS (and the same CPU figure for nats-server).
# Every process it starts is stopped again on exit, failure or Ctrl-C.
#
# Knobs: TARGET (worker | responder: the baseline), RESPONDER_IO (loop: nats.c on a libuv loop, the
# worker's own transport, the default; threads: nats.c's reader/delivery/flusher threads), DURATION (10),
# RATE (5000; a list runs each), INFLIGHT (64), SEND_ASAP=1 (one socket write per publish in the
# generator, and in the responder when RESPONDER_IO=threads; the worker and a loop responder write once
# per loop iteration), WORKER_MAX_CONCURRENCY (256), LOG_LEVEL (warn; info logs one line per job),
# LOADGEN_ARGS (extra bw-loadgen options), RESPONDER_ARGS (extra bw-responder options), JOB_TYPE (echo) and
# JOB_PAYLOAD (the generator's default) for other job types (the labels then start with the type),
# OPEN_LOOP=0 to run the closed loop only, WORKER_LD_PRELOAD / WORKER_GLIBC_TUNABLES (the worker's own
# LD_PRELOAD and GLIBC_TUNABLES, e.g. to compare allocators), BUILD (build-release; its cache keeps options
# such as -DBW_JEMALLOC=OFF).
# Exit status: non-zero when a run lost or duplicated a job, or anything failed.
# shellcheck disable=SC2317 # stop_pid and cleanup only run from the EXIT trap
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
TARGET=${TARGET:-worker} # worker, or responder (the baseline)
RATE=${RATE:-5000}
INFLIGHT=${INFLIGHT:-64}
SEND_ASAP=${SEND_ASAP:-0}
RESPONDER_IO=${RESPONDER_IO:-loop}
JOB_TYPE=${JOB_TYPE:-echo}
OPEN_LOOP=${OPEN_LOOP:-1}
export WORKER_MAX_CONCURRENCY=${WORKER_MAX_CONCURRENCY:-256}
BUILD=${BUILD:-build-release}
HZ=$(getconf CLK_TCK)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/bw-bench.XXXXXX")
nats_pid="" worker_pid="" loadgen_pid=""

# Stops one process we started: TERM, then KILL if it is still there after 5 s.
stop_pid() {
  local pid=$1
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  stop_pid "$loadgen_pid"
  stop_pid "$worker_pid"
  stop_pid "$nats_pid"
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

die() {
  echo "run-echo: $*" >&2
  exit 1
}

# CPU time (user + system) of a process so far, in clock ticks. Field 2 (comm) may hold spaces,
# so the fields are counted after its closing parenthesis: utime and stime are fields 14 and 15.
cpu_ticks() {
  local stat f
  stat=$(cat "/proc/$1/stat") || return 1
  read -r -a f <<<"${stat##*) }"
  echo $((f[11] + f[12]))
}

# Peak resident set size of a process, in MB.
rss_mb() {
  awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"
}

# Threads of a process now.
threads() {
  awk '/^Threads:/ { print $2 }' "/proc/$1/status"
}

build() {
  echo "run-echo: building $BUILD" >&2
  { cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF &&
    cmake --build "$BUILD" -j"$(nproc 2>/dev/null || echo 2)" --target beamline-worker bw-loadgen bw-responder; } \
    >"$tmp/build.log" 2>&1 || { cat "$tmp/build.log" >&2; die "build failed"; }
}

# Starts nats-server on a free loopback port and sets NATS_URL from its ports file.
start_nats() {
  /usr/sbin/nats-server -a 127.0.0.1 -p -1 --ports_file_dir "$tmp" >"$tmp/nats.log" 2>&1 &
  nats_pid=$!
  local ports="$tmp/nats-server_$nats_pid.ports"
  for _ in $(seq 100); do [ -s "$ports" ] && break; sleep 0.05; done
  NATS_URL=$(grep -o 'nats://[^"]*' "$ports" 2>/dev/null | head -n1) || true
  [ -n "$NATS_URL" ] || { cat "$tmp/nats.log" >&2; die "nats-server did not start"; }
  export NATS_URL
}

# Starts the worker and waits until it answers. "worker ready" is logged at info level, which
# LOG_LEVEL=warn hides (and info would log every job), so readiness is a real round trip: bw-loadgen
# probes until a result comes back. The log line is still accepted when it shows up.
start_worker() {
  local rc=0
  if [ "$TARGET" = responder ]; then
    local args=()
    [ "$SEND_ASAP" = 1 ] && args+=(--send-asap)
    [ "$RESPONDER_IO" = loop ] && args+=(--event-loop)
    # shellcheck disable=SC2086 # RESPONDER_ARGS is a list of options
    "$BUILD/bw-responder" ${args[@]+"${args[@]}"} ${RESPONDER_ARGS:-} >"$tmp/worker.log" 2>&1 &
  else
    LD_PRELOAD="${WORKER_LD_PRELOAD:-}" GLIBC_TUNABLES="${WORKER_GLIBC_TUNABLES:-${GLIBC_TUNABLES:-}}" LOG_LEVEL="${LOG_LEVEL:-warn}" HEALTH_BIND=127.0.0.1:0 DLQ_PATH="$tmp/dlq.jsonl" FS_BASE_DIR="$tmp/fs" \
      "$BUILD/beamline-worker" >"$tmp/worker.log" 2>&1 &
  fi
  worker_pid=$!
  "$BUILD/bw-loadgen" --wait-ready-ms 10000 --count 1 --warmup 0 --label ready >/dev/null 2>"$tmp/ready.log" &
  loadgen_pid=$!
  while kill -0 "$loadgen_pid" 2>/dev/null && kill -0 "$worker_pid" 2>/dev/null; do sleep 0.05; done
  kill -0 "$worker_pid" 2>/dev/null || { cat "$tmp/worker.log" >&2; die "the worker exited"; }
  wait "$loadgen_pid" || rc=$?
  loadgen_pid=""
  if [ "$rc" != 0 ] && ! grep -q '"worker ready"' "$tmp/worker.log"; then
    cat "$tmp/ready.log" "$tmp/worker.log" >&2
    die "the worker did not become ready"
  fi
}

# CPU ms per 1000 jobs from a tick delta.
per_1k() {
  awk -v t="$1" -v hz="$HZ" -v n="$2" 'BEGIN { printf "%.1f", (n > 0 ? t * 1000 / hz * 1000 / n : 0) }'
}

# Runs bw-loadgen with the given options and prints its JSON line with the worker's figures added.
# Returns bw-loadgen's status (1 when a job was lost or duplicated).
run_load() {
  local w0 n0 w1 n1 line rc=0 jobs args=(--type "$JOB_TYPE")
  [ "$SEND_ASAP" = 1 ] && args+=(--send-asap)
  [ -n "${JOB_PAYLOAD:-}" ] && args+=(--payload "$JOB_PAYLOAD")
  w0=$(cpu_ticks "$worker_pid") n0=$(cpu_ticks "$nats_pid")
  # In the background so that a signal runs the trap at once rather than after the run.
  # shellcheck disable=SC2086 # LOADGEN_ARGS is a list of options
  "$BUILD/bw-loadgen" "${args[@]}" ${LOADGEN_ARGS:-} "$@" >"$tmp/loadgen.out" &
  loadgen_pid=$!
  wait "$loadgen_pid" || rc=$?
  loadgen_pid=""
  line=$(cat "$tmp/loadgen.out")
  kill -0 "$worker_pid" 2>/dev/null || { cat "$tmp/worker.log" >&2; die "the worker died during the run"; }
  w1=$(cpu_ticks "$worker_pid") n1=$(cpu_ticks "$nats_pid")
  [ -n "$line" ] || die "bw-loadgen printed nothing (status $rc)"
  jobs=$(grep -o '"received":[0-9]*' <<<"$line" | cut -d: -f2)
  printf '%s,"target":"%s","target_io":"%s","worker_cpu_ms_per_1k_jobs":%s,"worker_rss_mb":%s,"worker_threads":%s,"nats_cpu_ms_per_1k_jobs":%s}\n' \
    "${line%\}}" "$TARGET" "$([ "$TARGET" = worker ] && echo loop || echo "$RESPONDER_IO")" "$(per_1k $((w1 - w0)) "$jobs")" "$(rss_mb "$worker_pid")" "$(threads "$worker_pid")" "$(per_1k $((n1 - n0)) "$jobs")"
  return "$rc"
}

build
start_nats
start_worker
echo "run-echo: nats $NATS_URL, worker pid $worker_pid (WORKER_MAX_CONCURRENCY=$WORKER_MAX_CONCURRENCY)," \
  "${DURATION}s per run, generator $([ "$SEND_ASAP" = 1 ] && echo asap || echo buffered) writes" >&2

status=0
run_load --mode closed --inflight "$INFLIGHT" --duration "$DURATION" --label "$JOB_TYPE-closed" || status=1
[ "$OPEN_LOOP" = 1 ] || RATE=""
for rate in $RATE; do
  run_load --mode open --rate "$rate" --duration "$DURATION" --label "$JOB_TYPE-open-$rate" || status=1
done
[ -s "$tmp/dlq.jsonl" ] && { echo "run-echo: the worker dead-lettered messages:" >&2; head -n3 "$tmp/dlq.jsonl" >&2; }
exit "$status"
