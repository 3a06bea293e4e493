#!/usr/bin/env bash
# Idle footprint and start-up time (DESIGN.md "Bars": idle RSS <= 30 MB, start-up to ready <= 200 ms).
# Starts a private nats-server, then REPEAT times: starts a fresh release worker, polls its /readyz every
# 2 ms from the moment it was exec'd until the answer is 200 (start-up to ready), waits SETTLE seconds
# with no job sent, and reads the worker's VmRSS and thread count from /proc. Prints one JSON line per
# round and a summary line with the medians. Every process it starts is stopped on exit.
#
# Knobs: REPEAT (5), SETTLE (1 s), BUILD (build-release), WORKER_LD_PRELOAD (e.g. to compare allocators).
set -euo pipefail
cd "$(dirname "$0")/.."

REPEAT=${REPEAT:-5}
SETTLE=${SETTLE:-1}
BUILD=${BUILD:-build-release}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/bw-idle.XXXXXX")
nats_pid=""

cleanup() {
  [ -n "$nats_pid" ] && kill -TERM "$nats_pid" 2>/dev/null && wait "$nats_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

{ cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF &&
  cmake --build "$BUILD" -j"$(nproc 2>/dev/null || echo 2)" --target beamline-worker; } >"$tmp/build.log" 2>&1 ||
  { cat "$tmp/build.log" >&2; exit 1; }

/usr/sbin/nats-server -a 127.0.0.1 -p -1 --ports_file_dir "$tmp" >"$tmp/nats.log" 2>&1 &
nats_pid=$!
for _ in $(seq 100); do [ -s "$tmp/nats-server_$nats_pid.ports" ] && break; sleep 0.05; done
NATS_URL=$(grep -o 'nats://[^"]*' "$tmp/nats-server_$nats_pid.ports" | head -n1)
[ -n "$NATS_URL" ] || { cat "$tmp/nats.log" >&2; exit 1; }

# The measuring is done by python3 (stdlib): it starts the worker itself so that the clock starts at the
# exec, and polls /readyz over a fresh connection each time.
NATS_URL=$NATS_URL BIN="$BUILD/beamline-worker" TMP=$tmp REPEAT=$REPEAT SETTLE=$SETTLE python3 - <<'PY'
import json, os, socket, statistics, subprocess, time, urllib.request

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def status(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

rounds = []
for r in range(int(os.environ["REPEAT"])):
    port = free_port()
    env = dict(os.environ, HEALTH_BIND=f"127.0.0.1:{port}", LOG_LEVEL="warn",
               DLQ_PATH=f"{os.environ['TMP']}/dlq-{r}.jsonl", FS_BASE_DIR=f"{os.environ['TMP']}/fs")
    if os.environ.get("WORKER_LD_PRELOAD"):
        env["LD_PRELOAD"] = os.environ["WORKER_LD_PRELOAD"]
    t0 = time.monotonic()
    p = subprocess.Popen([os.environ["BIN"]], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ready = None
    while time.monotonic() - t0 < 10 and p.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    ready = (time.monotonic() - t0) * 1000
                    break
        except Exception:
            pass
        time.sleep(0.002)
    if ready is None:
        p.kill(); raise SystemExit("run-idle: the worker did not become ready within 10 s")
    time.sleep(float(os.environ["SETTLE"]))
    d = {"round": r + 1, "ready_ms": round(ready, 1), "rss_mb": round(status(p.pid, "VmRSS") / 1024, 1),
         "threads": status(p.pid, "Threads")}
    p.terminate(); p.wait(timeout=30)
    rounds.append(d)
    print(json.dumps(d))
print(json.dumps({"label": "idle", "n": len(rounds),
                  "ready_ms_median": statistics.median(x["ready_ms"] for x in rounds),
                  "rss_mb_median": statistics.median(x["rss_mb"] for x in rounds),
                  "threads_median": statistics.median(x["threads"] for x in rounds)}))
PY
