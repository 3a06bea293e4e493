#!/usr/bin/env bash
# Quick start: installs missing packages, builds the worker, and runs it against $NATS_URL
# (default nats://localhost:4222). When nothing answers there, it starts a local nats-server in a
# temporary directory. Once the worker is ready it submits one echo job and prints the result, then
# keeps the worker running in the foreground until Ctrl-C (which drains it gracefully).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF >/dev/null
cmake --build build-release -j"$(nproc 2>/dev/null || echo 2)" >/dev/null
BIN=build-release/beamline-worker

export NATS_URL="${NATS_URL:-nats://localhost:4222}"
first=${NATS_URL%%,*}; hostport=${first#*://}; hostport=${hostport##*@}
host=${hostport%:*}; port=${hostport##*:}; [ "$port" = "$host" ] && port=4222

tmp=$(mktemp -d)
nats_pid=""; worker_pid=""
cleanup() {
  [ -n "$worker_pid" ] && kill -TERM "$worker_pid" 2>/dev/null && wait "$worker_pid" 2>/dev/null || true
  [ -n "$nats_pid" ] && kill "$nats_pid" 2>/dev/null && wait "$nats_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! timeout 1 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null; then
  echo "run: no NATS at $NATS_URL: starting a local nats-server on 127.0.0.1:$port" >&2
  /usr/sbin/nats-server -a 127.0.0.1 -p "$port" >"$tmp/nats.log" 2>&1 &
  nats_pid=$!
  for _ in $(seq 50); do timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null && break; sleep 0.1; done
  export NATS_URL="nats://127.0.0.1:$port"
fi

"$BIN" > >(tee "$tmp/worker.log") 2>&1 &
worker_pid=$!
for _ in $(seq 100); do grep -q '"worker ready"' "$tmp/worker.log" 2>/dev/null && break; sleep 0.1; done

echo "run: submitting an echo job through $NATS_URL" >&2
"$BIN" submit echo '{"message":"hello from beamline-worker"}' || true
echo "run: the worker keeps running; press Ctrl-C to drain and stop it" >&2
wait "$worker_pid" || true
worker_pid=""
