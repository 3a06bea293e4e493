#!/usr/bin/env bash
# JetStream benchmark (issue 16 "Performance"): in one run, on one fresh nats-server with JetStream (store
# in a temp dir), REPEAT rounds of these targets answering echo jobs:
#   js-responder  bench/js_responder.c, the baseline: durable pull consumer on the assign stream, fetch in
#                 batches, publish the result, ack; nothing else
#   js-worker     beamline-worker with CAF_CONSUMER=jetstream (CAF_JS_CREATE=true)
#   js-worker-nostore  the same with CAF_JS_RESULT_STORE=false (no shared result store): what the store costs
#   core-worker   beamline-worker in core mode (queue-group subscription)
# The order of the targets rotates from round to round. Each target is started fresh per round and proven
# ready by a round trip (bw-loadgen probes), then bw-loadgen runs a closed loop of COUNT jobs at each
# INFLIGHT. Every line of OUT is bw-loadgen's JSON plus the target's and nats-server's CPU time per job
# (utime+stime from /proc/<pid>/stat, before and after the loadgen run) and the messages into and out of
# nats-server per job (its /varz), then a table of medians and the ratios js-worker/js-responder and
# js-worker/core-worker (ratios of the medians, then round by round).
#
# The generator is the same for all: core NATS publishes. In the JetStream rounds they land on the
# stream's subject, and the server stores each one before any consumer sees it; the core rounds use
# another subject (CORE_SUBJECT) that no stream captures, so the core worker is measured without
# JetStream storing its assignments. A closed loop with more jobs in flight than the worker's concurrency
# (INFLIGHT 512 against WORKER_MAX_CONCURRENCY 256) keeps a standing backlog in the stream, which is what
# pre-filling the stream would measure, without counting the consumer's start-up and with the same
# generator as the core run. JS_PUBLISH=1 makes the JetStream rounds publish with JetStream publishes
# (asynchronous, every PubAck checked) as a scheduler that must know its assignment is stored would:
# same consumers, more work for the generator and the server.
#
# Knobs: REPEAT (3), COUNT (50000 jobs per run), INFLIGHT ("64 512"), WARMUP (0.5 s, excluded from the
# throughput), TARGETS ("js-responder js-worker js-worker-nostore core-worker"), JS_PUBLISH (0),
# WORKER_MAX_CONCURRENCY (256), LOG_LEVEL (warn), RESPONDER_ARGS (extra bw-js-responder options), BUILD
# (build-release), WORKER_BIN (a worker binary to measure instead of $BUILD/beamline-worker), OUT (raw
# JSON lines; default a temp file, kept and printed at the end). Every process it starts is stopped on exit, failure or Ctrl-C.
# Exit status: non-zero when a run lost or duplicated a job, or anything failed.
# shellcheck disable=SC2317 # stop_pid and cleanup only run from the EXIT trap
set -euo pipefail
cd "$(dirname "$0")/.."

REPEAT=${REPEAT:-3}
COUNT=${COUNT:-50000}
INFLIGHT=${INFLIGHT:-"64 512"}
WARMUP=${WARMUP:-0.5}
TARGETS=${TARGETS:-"js-responder js-worker js-worker-nostore core-worker"}
JS_PUBLISH=${JS_PUBLISH:-0}
CORE_SUBJECT=${CORE_SUBJECT:-bench.core.assign.v1}
export WORKER_MAX_CONCURRENCY=${WORKER_MAX_CONCURRENCY:-256}
BUILD=${BUILD:-build-release}
WORKER_BIN=${WORKER_BIN:-}
OUT=${OUT:-$(mktemp "${TMPDIR:-/tmp}/bw-jetstream.XXXXXX.jsonl")}
HZ=$(getconf CLK_TCK)
: >"$OUT"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/bw-bench-js.XXXXXX")
nats_pid="" target_pid="" loadgen_pid=""

# Stops one process we started: TERM, then KILL if it is still there after 10 s (a draining worker).
stop_pid() {
  local pid=$1
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  stop_pid "$loadgen_pid"
  stop_pid "$target_pid"
  stop_pid "$nats_pid"
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

die() {
  echo "run-jetstream: $*" >&2
  exit 1
}

# CPU time (user + system) of a process so far, in clock ticks: fields 14 and 15 of /proc/<pid>/stat,
# counted after the closing parenthesis of field 2 (comm), which may hold spaces.
cpu_ticks() {
  local stat f
  stat=$(cat "/proc/$1/stat") || return 1
  read -r -a f <<<"${stat##*) }"
  echo $((f[11] + f[12]))
}

rss_mb() {
  awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"
}

# CPU µs per job from a tick delta.
per_job_us() {
  awk -v t="$1" -v hz="$HZ" -v n="$2" 'BEGIN { printf "%.1f", (n > 0 ? t * 1000000 / hz / n : 0) }'
}

build() {
  local targets=(bw-loadgen bw-js-responder)
  [ -n "$WORKER_BIN" ] || targets+=(beamline-worker)
  echo "run-jetstream: building $BUILD (${targets[*]})" >&2
  { cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF &&
    cmake --build "$BUILD" -j"$(nproc 2>/dev/null || echo 2)" --target "${targets[@]}"; } \
    >"$tmp/build.log" 2>&1 || { cat "$tmp/build.log" >&2; die "build failed"; }
  WORKER_BIN=${WORKER_BIN:-$BUILD/beamline-worker}
}

# One nats-server with JetStream on a free loopback port, its store in the temp dir; sets NATS_URL.
start_nats() {
  /usr/sbin/nats-server -a 127.0.0.1 -p -1 -m -1 -js -sd "$tmp/js" --ports_file_dir "$tmp" >"$tmp/nats.log" 2>&1 &
  nats_pid=$!
  local ports="$tmp/nats-server_$nats_pid.ports"
  for _ in $(seq 100); do [ -s "$ports" ] && break; sleep 0.05; done
  NATS_URL=$(grep -o 'nats://[^"]*' "$ports" 2>/dev/null | head -n1) || true
  [ -n "$NATS_URL" ] || { cat "$tmp/nats.log" >&2; die "nats-server did not start"; }
  export NATS_URL
  MONITOR=$(grep -o '"monitoring":\["[^"]*' "$ports" | sed 's/.*\["//')
}

# Messages into and out of nats-server so far (its /varz): "in out".
server_msgs() {
  curl -sf "$MONITOR/varz" | python3 -c 'import json, sys; d = json.load(sys.stdin); print(d["in_msgs"], d["out_msgs"])'
}

# Messages per job from a count delta.
per_job() {
  awk -v d="$1" -v n="$2" 'BEGIN { printf "%.2f", (n > 0 ? d / n : 0) }'
}

# The assignment subject a target listens on.
subject_of() {
  [ "$1" = core-worker ] && echo "$CORE_SUBJECT" || echo caf.exec.assign.v1
}

# bw-loadgen options for a target: its subject, and JetStream publishes when asked for.
loadgen_args() {
  echo "--subject $(subject_of "$1")"
  [ "$JS_PUBLISH" = 1 ] && [ "$1" != core-worker ] && echo --js-publish
  return 0
}

# Starts one target and waits until a probe job comes back (the worker logs "worker ready" at info,
# which LOG_LEVEL=warn hides, and the responder has no readiness signal of its own).
start_target() {
  local t=$1 rc=0
  case "$t" in
  js-responder)
    # shellcheck disable=SC2086 # RESPONDER_ARGS is a list of options
    "$BUILD/bw-js-responder" ${RESPONDER_ARGS:-} >"$tmp/target.log" 2>&1 &
    ;;
  js-worker | js-worker-nostore | core-worker)
    local mode=jetstream store=true subject
    subject=$(subject_of "$t")
    [ "$t" = core-worker ] && mode=core
    [ "$t" = js-worker-nostore ] && store=false
    CAF_CONSUMER=$mode CAF_JS_CREATE=true CAF_JS_RESULT_STORE=$store CAF_ASSIGN_SUBJECT=$subject LOG_LEVEL="${LOG_LEVEL:-warn}" \
      HEALTH_BIND=127.0.0.1:0 DLQ_PATH="$tmp/dlq.jsonl" FS_BASE_DIR="$tmp/fs" APPROVAL_DIR="$tmp/approvals" \
      "$WORKER_BIN" >"$tmp/target.log" 2>&1 &
    ;;
  *) die "unknown target $t" ;;
  esac
  target_pid=$!
  # shellcheck disable=SC2046 # loadgen_args prints options
  "$BUILD/bw-loadgen" $(loadgen_args "$t") --wait-ready-ms 15000 --count 1 --warmup 0 --label ready \
    >/dev/null 2>"$tmp/ready.log" &
  loadgen_pid=$!
  while kill -0 "$loadgen_pid" 2>/dev/null && kill -0 "$target_pid" 2>/dev/null; do sleep 0.05; done
  kill -0 "$target_pid" 2>/dev/null || { cat "$tmp/target.log" >&2; die "$t exited"; }
  wait "$loadgen_pid" || rc=$?
  loadgen_pid=""
  [ "$rc" = 0 ] || { cat "$tmp/ready.log" "$tmp/target.log" >&2; die "$t did not answer"; }
}

# One closed-loop run against the running target; prints bw-loadgen's JSON line with the CPU figures.
run_load() {
  local t=$1 round=$2 inflight=$3 t0 n0 t1 n1 line rc=0 jobs m0 m1
  read -r -a m0 <<<"$(server_msgs)"
  t0=$(cpu_ticks "$target_pid") n0=$(cpu_ticks "$nats_pid")
  # shellcheck disable=SC2046 # loadgen_args prints options
  "$BUILD/bw-loadgen" $(loadgen_args "$t") --mode closed --inflight "$inflight" --count "$COUNT" \
    --warmup "$WARMUP" --label "$t" >"$tmp/loadgen.out" 2>"$tmp/loadgen.err" &
  loadgen_pid=$!
  wait "$loadgen_pid" || rc=$?
  loadgen_pid=""
  kill -0 "$target_pid" 2>/dev/null || { cat "$tmp/target.log" >&2; die "$t died during the run"; }
  t1=$(cpu_ticks "$target_pid") n1=$(cpu_ticks "$nats_pid")
  read -r -a m1 <<<"$(server_msgs)"
  line=$(cat "$tmp/loadgen.out")
  [ -n "$line" ] || { cat "$tmp/loadgen.err" >&2; die "bw-loadgen printed nothing (status $rc)"; }
  [ "$rc" = 0 ] || cat "$tmp/loadgen.err" >&2
  jobs=$(grep -o '"received":[0-9]*' <<<"$line" | cut -d: -f2)
  printf '%s,"target":"%s","round":%s,"target_cpu_us_per_job":%s,"nats_cpu_us_per_job":%s,"nats_msgs_in_per_job":%s,"nats_msgs_out_per_job":%s,"target_rss_mb":%s}\n' \
    "${line%\}}" "$t" "$round" "$(per_job_us $((t1 - t0)) "$jobs")" "$(per_job_us $((n1 - n0)) "$jobs")" \
    "$(per_job $((m1[0] - m0[0])) "$jobs")" "$(per_job $((m1[1] - m0[1])) "$jobs")" "$(rss_mb "$target_pid")"
  return "$rc"
}

summarize() {
  python3 - "$OUT" <<'EOF'
import json, statistics, sys
from collections import defaultdict
runs = defaultdict(list)
for line in open(sys.argv[1]):
    if line.startswith("{"):
        d = json.loads(line)
        runs[(d["inflight"], d["target"])].append(d)
med = lambda rs, f: statistics.median(f(r) for r in rs) if rs else float("nan")
print("| in flight | target | n | jobs/s | target CPU µs/job | nats-server CPU µs/job | together µs/job | server msgs in / out per job | p50 / p99 ms |")
print("|---|---|---|---|---|---|---|---|---|")
ORDER = ["js-responder", "js-worker", "js-worker-nostore", "core-worker"]
for (inflight, t) in sorted(runs, key=lambda k: (k[0], ORDER.index(k[1]))):
    rs = runs[(inflight, t)]
    bad = sum(r["lost"] + r["duplicated"] for r in rs)
    print(f"| {inflight} | {t} | {len(rs)} | {med(rs, lambda r: r['throughput_per_s']):,.0f} | "
          f"{med(rs, lambda r: r['target_cpu_us_per_job']):.1f} | {med(rs, lambda r: r['nats_cpu_us_per_job']):.1f} | "
          f"{med(rs, lambda r: r['target_cpu_us_per_job'] + r['nats_cpu_us_per_job']):.1f} | "
          f"{med(rs, lambda r: r['nats_msgs_in_per_job']):.2f} / {med(rs, lambda r: r['nats_msgs_out_per_job']):.2f} | "
          f"{med(rs, lambda r: r['latency_ms']['p50']):.2f} / {med(rs, lambda r: r['latency_ms']['p99']):.2f} |"
          + ("" if bad == 0 else f" LOST/DUP {bad}"))
print()
for inflight in sorted({k[0] for k in runs}):
    tp = {t: med(runs.get((inflight, t), []), lambda r: r["throughput_per_s"]) for t in ORDER}
    ratio = lambda a, b: f"{tp[a] / tp[b]:.2f}" if tp[b] > 0 else "n/a"
    print(f"in flight {inflight}: js-worker / js-responder = {ratio('js-worker', 'js-responder')} (bar 0.8), "
          f"js-worker / core-worker = {ratio('js-worker', 'core-worker')} (bar 0.5); "
          f"js-responder / core-worker = {ratio('js-responder', 'core-worker')} (JetStream's own cost)")
    if (inflight, "js-worker-nostore") in runs:
        print(f"  without the result store: js-worker-nostore / js-responder = {ratio('js-worker-nostore', 'js-responder')}, "
              f"/ core-worker = {ratio('js-worker-nostore', 'core-worker')}")
    # the same ratios round by round (the three targets of a round ran one after the other)
    by_round = defaultdict(dict)
    for (i, t), rs in runs.items():
        for r in rs:
            if i == inflight:
                by_round[r["round"]][t] = r["throughput_per_s"]
    for a, b in (("js-worker", "js-responder"), ("js-worker", "core-worker"), ("js-responder", "core-worker"),
                 ("js-worker-nostore", "js-responder")):
        per = [v[a] / v[b] for _, v in sorted(by_round.items()) if a in v and v.get(b)]
        if per:
            print(f"  {a} / {b} per round: {' '.join(f'{x:.2f}' for x in per)} (median {statistics.median(per):.2f})")
EOF
}

build
start_nats
echo "run-jetstream: nats $NATS_URL (JetStream store $tmp/js), $COUNT jobs per run, in flight: $INFLIGHT," \
  "WORKER_MAX_CONCURRENCY=$WORKER_MAX_CONCURRENCY, $([ "$JS_PUBLISH" = 1 ] && echo "JetStream" || echo "core") publishes" >&2
read -r -a order <<<"$TARGETS"
status=0
for round in $(seq "$REPEAT"); do
  for i in "${!order[@]}"; do
    t=${order[$(((i + round - 1) % ${#order[@]}))]}
    echo "run-jetstream: round $round/$REPEAT, $t" >&2
    start_target "$t"
    for inflight in $INFLIGHT; do
      run_load "$t" "$round" "$inflight" >>"$OUT" || status=1
    done
    stop_pid "$target_pid"
    target_pid=""
  done
done
[ -s "$tmp/dlq.jsonl" ] && { echo "run-jetstream: the worker dead-lettered messages:" >&2; head -n3 "$tmp/dlq.jsonl" >&2; }
echo "run-jetstream: raw figures in $OUT" >&2
summarize
exit "$status"
