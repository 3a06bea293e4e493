#!/usr/bin/env bash
# The scheduler's CPU cost per job (issue 18): builds bw-sched-bench (Release) and runs it. For 1, 100 and
# 10,000 tenants with 100,000 jobs waiting (all echo, then a mix of the 13 job types with their default
# caps), it measures admit + next + end per job in the steady state on core/sched.c and on the FIFO of
# commit 76fc78e, in the same process, alternating, best of REPEAT rounds; one JSON line per case.
# In-process, no NATS: nothing to start or stop.
#
# Knobs: BUILD (build-release; its cache keeps options), TENANTS ("1 100 10000"), WAITING (100000),
# ITERS (200000 steady-state jobs per round), REPEAT (5), SLOTS (8, WORKER_MAX_CONCURRENCY), MIX (both:
# echo and mix; or echo, or mix), CPU (pin to this CPU with taskset; default: not pinned).
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${BUILD:-build-release}
TENANTS=${TENANTS:-"1 100 10000"}
WAITING=${WAITING:-100000} ITERS=${ITERS:-200000} REPEAT=${REPEAT:-5} SLOTS=${SLOTS:-8} MIX=${MIX:-both}

log=$(mktemp "${TMPDIR:-/tmp}/bw-sched-build.XXXXXX")
trap 'rm -f "$log"' EXIT
echo "run-sched: building $BUILD" >&2
{ cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF &&
  cmake --build "$BUILD" -j"$(nproc 2>/dev/null || echo 2)" --target bw-sched-bench; } >"$log" 2>&1 ||
  { cat "$log" >&2; echo "run-sched: build failed" >&2; exit 1; }

pin=()
[ -n "${CPU:-}" ] && pin=(taskset -c "$CPU")
echo "run-sched: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+dirty')," \
  "tenants: $TENANTS, $WAITING waiting, $ITERS jobs x $REPEAT rounds, $SLOTS shared slots" >&2
exec ${pin[@]+"${pin[@]}"} "$BUILD/bw-sched-bench" --tenants "$TENANTS" --waiting "$WAITING" --iters "$ITERS" \
  --repeat "$REPEAT" --slots "$SLOTS" --mix "$MIX"
