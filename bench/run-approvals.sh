#!/usr/bin/env bash
# human_approval (issue 15): what N pending approvals cost, and how fast they are recorded, listed, reloaded
# and decided, against two request/reply baselines measured in the same run on the same nats-server.
# Builds the release worker and bw-approvals-bench, starts a private nats-server, then REPEAT rounds, each
# with a fresh worker on a fresh APPROVAL_DIR (under the temp dir, on /tmp's file system):
#  1. the worker's idle RSS (SETTLE s after /readyz), then N `human_approval` assignments published at
#     once: seconds until all N ApprovalRequests arrived (approvals recorded per second), the RSS with N
#     pending (SETTLE s later) and the journal's size;
#  2. `beamline-worker approvals list --json` (its default 1 s gathering window, and --timeout-ms 100),
#     skipped when the CLI fails; GET /approvals?limit=100000 (all of them) over HTTP with APPROVAL_TOKEN (curl, 3 times);
#  3. a restart on the same APPROVAL_DIR: SIGTERM, wait for the exit, start again (LOG_LEVEL=info, for the
#     "approvals reloaded" line's reload_us), exec to /readyz 200; then once more with LOG_LEVEL=warn;
#  4. the N decisions with W requests outstanding (bw-approvals-bench --decide): decisions/s, reply
#     p50/p99, every reply accepted and N success results;
#  5. the baselines, same window: (a) a bare request/reply responder (the floor), (b) the same responder
#     appending each decision to a file and fdatasync'ing it before it replies (one sync per decision).
#     The three decide runs rotate their order from round to round.
# Prints one JSON line per figure and round, then a summary line with medians (ratios: median of the
# per-round ratios). Every process it starts is stopped on exit, failure or Ctrl-C.
#
# Knobs: N (10000), W (256), REPEAT (3), SETTLE (1 s), BUILD (build-release),
# WORKER_MAX_CONCURRENCY (256, as bench/run-echo.sh), DECISION_SUBJECT (caf.human.decision.v1).
# shellcheck disable=SC2317 # stop_pid and cleanup only run from the EXIT trap
set -euo pipefail
cd "$(dirname "$0")/.."

export N=${N:-10000} W=${W:-256} REPEAT=${REPEAT:-3} SETTLE=${SETTLE:-1}
export WORKER_MAX_CONCURRENCY=${WORKER_MAX_CONCURRENCY:-256}
export DECISION_SUBJECT=${DECISION_SUBJECT:-caf.human.decision.v1}
BUILD=${BUILD:-build-release}
tmp=$(mktemp -d /tmp/bw-approvals.XXXXXX)
nats_pid="" py_pid=""

# Stops one process we started: TERM, then KILL if it is still there after 5 s.
stop_pid() {
  local pid=$1
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# The orchestrator stops its own children; pids it wrote down are stopped here too in case it was killed.
cleanup() {
  stop_pid "$py_pid"
  if [ -f "$tmp/pids" ]; then
    while read -r pid; do
      [ -d "/proc/$pid" ] && [ "$(awk '/^State:/ { print $2 }' "/proc/$pid/status" 2>/dev/null)" != Z ] &&
        stop_pid "$pid"
    done <"$tmp/pids"
  fi
  stop_pid "$nats_pid"
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

die() {
  echo "run-approvals: $*" >&2
  exit 1
}

echo "run-approvals: building $BUILD" >&2
{ cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF &&
  cmake --build "$BUILD" -j"$(nproc 2>/dev/null || echo 2)" --target beamline-worker bw-approvals-bench; } \
  >"$tmp/build.log" 2>&1 || { cat "$tmp/build.log" >&2; die "build failed"; }

/usr/sbin/nats-server -a 127.0.0.1 -p -1 --ports_file_dir "$tmp" >"$tmp/nats.log" 2>&1 &
nats_pid=$!
for _ in $(seq 100); do [ -s "$tmp/nats-server_$nats_pid.ports" ] && break; sleep 0.05; done
NATS_URL=$(grep -o 'nats://[^"]*' "$tmp/nats-server_$nats_pid.ports" 2>/dev/null | head -n1) || true
[ -n "$NATS_URL" ] || { cat "$tmp/nats.log" >&2; die "nats-server did not start"; }
echo "run-approvals: nats $NATS_URL, N=$N W=$W REPEAT=$REPEAT, temp dir $tmp" >&2

# The orchestration is python3 (stdlib): it starts each worker itself so that the clock starts at the exec,
# and polls /readyz every 2 ms (as bench/run-idle.sh). In the background, so that a signal runs the trap.
NATS_URL=$NATS_URL BUILD=$BUILD TMP=$tmp python3 - <<'PY' &
import json, os, re, signal, socket, statistics, subprocess, sys, time, urllib.request

E = os.environ
N, W, REPEAT, SETTLE = int(E["N"]), int(E["W"]), int(E["REPEAT"]), float(E["SETTLE"])
TMP, BIN, BENCH = E["TMP"], f"{E['BUILD']}/beamline-worker", f"{E['BUILD']}/bw-approvals-bench"
TOKEN = "bench-approval-token-0123456789"
RUN_ID = f"{os.getpid():x}{int(time.time()) % 100000:x}"
live = []  # processes to stop on the way out

def on_term(sig, frame):
    raise SystemExit(143)
signal.signal(signal.SIGTERM, on_term)

def emit(d):
    print(json.dumps(d), flush=True)

def started(p):
    live.append(p)
    with open(f"{TMP}/pids", "a") as f:
        f.write(f"{p.pid}\n")
    return p

def stop(p):
    """SIGTERM and wait for the exit; the time it took, in ms."""
    t0 = time.monotonic()
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill(); p.wait()
    if p in live:
        live.remove(p)
    return (time.monotonic() - t0) * 1000

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close(); return port

def status(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

def start_worker(adir, log, level):
    """Starts a worker; (process, port, ms from the exec to /readyz 200)."""
    port = free_port()
    env = dict(E, APPROVAL_DIR=adir, APPROVAL_MAX_PENDING="200000", APPROVAL_TOKEN=TOKEN,
               HEALTH_BIND=f"127.0.0.1:{port}", LOG_LEVEL=level, WORKER_ID="bw-approvals-bench",
               DLQ_PATH=f"{TMP}/dlq.jsonl", FS_BASE_DIR=f"{TMP}/fs")
    out = open(log, "w")
    t0 = time.monotonic()
    p = started(subprocess.Popen([BIN], env=env, stdout=out, stderr=subprocess.STDOUT))
    out.close()
    while time.monotonic() - t0 < 30 and p.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return p, port, (time.monotonic() - t0) * 1000
        except Exception:
            pass
        time.sleep(0.002)
    raise SystemExit(f"run-approvals: the worker did not become ready (log {open(log).read()[-2000:]})")

def bench(*args):
    r = subprocess.run([BENCH, *args], capture_output=True, text=True, timeout=120)
    if r.returncode != 0 or not r.stdout.strip():
        sys.stderr.write(r.stderr)
        raise SystemExit(f"run-approvals: bw-approvals-bench {' '.join(args)} failed: {r.stdout.strip()}")
    return json.loads(r.stdout.strip().splitlines()[-1])

def start_responder(*args):
    p = started(subprocess.Popen([BENCH, "--responder", *args], stdout=subprocess.PIPE, text=True))
    line = p.stdout.readline()  # it says "ready" once subscribed
    if '"ready"' not in line:
        raise SystemExit(f"run-approvals: the responder did not start: {line}")
    return p

def reload_line(log):
    """The worker's "approvals reloaded" log line (info), waited for up to 5 s."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < 5:
        for line in open(log):
            if '"approvals reloaded"' in line:
                return json.loads(line)
        time.sleep(0.01)
    raise SystemExit("run-approvals: no 'approvals reloaded' line in the worker's log")

def cli_list(*extra):
    t0 = time.monotonic()
    r = subprocess.run([BIN, "approvals", "list", "--json", *extra], capture_output=True, text=True,
                       timeout=60, env=dict(E, LOG_LEVEL="warn"))
    ms = (time.monotonic() - t0) * 1000
    return r, ms, r.stdout.count('"assignment_id"')

def http_list(port):
    r = subprocess.run(["curl", "-sS", "-o", f"{TMP}/list.json", "-w", "%{http_code} %{time_total} %{size_download}",
                        "-H", f"Authorization: Bearer {TOKEN}", f"http://127.0.0.1:{port}/approvals?limit=100000"],
                       capture_output=True, text=True, timeout=60)
    code, secs, size = r.stdout.split()
    total = json.load(open(f"{TMP}/list.json")).get("total") if code == "200" else None
    return int(code), float(secs) * 1000, int(size), total

def du(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)

def decide(label, subject, results, prefix):
    return bench("--decide", "--n", str(N), "--window", str(W), "--prefix", prefix, "--subject", subject,
                 "--expect-results", "1" if results else "0", "--label", label)

def one_round(r):
    rd = f"{TMP}/r{r}"; os.makedirs(rd)
    adir, prefix, fig = f"{rd}/approvals", f"ab{r}-{RUN_ID}-", {"round": r}
    w, port, fig["ready_empty_ms"] = start_worker(adir, f"{rd}/worker-1.log", "warn")
    time.sleep(SETTLE)
    fig["rss_idle_kb"] = status(w.pid, "VmRSS")
    rec = bench("--submit", "--n", str(N), "--prefix", prefix, "--label", f"round {r}")
    emit(dict(rec, round=r))
    fig["record_per_s"], fig["record_s"] = rec["per_s"], rec["seconds"]
    time.sleep(SETTLE)
    fig["rss_pending_kb"], fig["hwm_pending_kb"] = status(w.pid, "VmRSS"), status(w.pid, "VmHWM")
    fig["bytes_per_approval"] = round((fig["rss_pending_kb"] - fig["rss_idle_kb"]) * 1024 / N)
    fig["journal_bytes"] = du(adir)
    emit({"figure": "memory", "round": r, "n": N, **{k: fig[k] for k in
          ("rss_idle_kb", "rss_pending_kb", "hwm_pending_kb", "bytes_per_approval", "journal_bytes")}})

    res, ms, count = cli_list()
    if res.returncode != 0:
        emit({"figure": "cli_list", "round": r, "skipped": True, "status": res.returncode,
              "stderr": res.stderr.strip()[-300:]})
    else:
        res100, ms100, count100 = cli_list("--timeout-ms", "100")
        fig["cli_list_ms"], fig["cli_list_t100_ms"] = ms, ms100
        emit({"figure": "cli_list", "round": r, "ms": round(ms, 1), "listed": count, "stdout_bytes": len(res.stdout),
              "ms_timeout_100": round(ms100, 1), "listed_timeout_100": count100, "status_timeout_100": res100.returncode,
              "stderr_timeout_100": res100.stderr.strip()[-200:]})
    https = [http_list(port) for _ in range(3)]
    fig["http_list_ms"] = statistics.median(h[1] for h in https)
    emit({"figure": "http_list", "round": r, "status": https[0][0], "ms": [round(h[1], 1) for h in https],
          "bytes": https[0][2], "total": https[0][3]})

    fig["stop_ms"] = stop(w)
    w, port, fig["ready_reload_ms"] = start_worker(adir, f"{rd}/worker-2.log", "info")
    rl = reload_line(f"{rd}/worker-2.log")
    fig["reload_us"] = rl.get("reload_us")
    fig["rss_reloaded_kb"] = status(w.pid, "VmRSS")
    stop(w)
    w, port, fig["ready_reload_warn_ms"] = start_worker(adir, f"{rd}/worker-3.log", "warn")
    emit({"figure": "restart", "round": r, "stop_ms": round(fig["stop_ms"], 1),
          "ready_ms": round(fig["ready_reload_ms"], 1), "ready_ms_log_warn": round(fig["ready_reload_warn_ms"], 1),
          "ready_ms_empty_journal": round(fig["ready_empty_ms"], 1), "reload_us": fig["reload_us"],
          "reloaded_pending": rl.get("pending"), "journal_records": rl.get("journal_records"),
          "rss_reloaded_kb": fig["rss_reloaded_kb"]})

    floor = start_responder("--subject", f"bench.floor.{RUN_ID}")
    naive = start_responder("--subject", f"bench.fsync.{RUN_ID}", "--fsync", f"{rd}/decisions.jsonl")
    runs = [("worker", E["DECISION_SUBJECT"], True), ("floor", f"bench.floor.{RUN_ID}", False),
            ("fsync_each", f"bench.fsync.{RUN_ID}", False)]
    k = (r - 1) % len(runs)
    for label, subject, results in runs[k:] + runs[:k]:
        d = decide(label, subject, results, prefix)
        emit(dict(d, round=r))
        fig[f"{label}_per_s"], fig[f"{label}_p50_ms"], fig[f"{label}_p99_ms"] = d["per_s"], d["p50_ms"], d["p99_ms"]
    fig["ratio_floor"] = fig["worker_per_s"] / fig["floor_per_s"]
    fig["ratio_fsync_each"] = fig["worker_per_s"] / fig["fsync_each_per_s"]
    stop(floor); stop(naive); stop(w)
    return fig

try:
    rounds = [one_round(r) for r in range(1, REPEAT + 1)]
    med = lambda k: (round(statistics.median(x[k] for x in rounds), 3)
                     if all(x.get(k) is not None for x in rounds) else None)
    keys = ["record_per_s", "record_s", "rss_idle_kb", "rss_pending_kb", "bytes_per_approval", "journal_bytes",
            "cli_list_ms", "cli_list_t100_ms", "http_list_ms", "stop_ms", "ready_empty_ms", "ready_reload_ms",
            "ready_reload_warn_ms", "reload_us", "worker_per_s", "worker_p50_ms", "worker_p99_ms", "floor_per_s",
            "floor_p50_ms", "floor_p99_ms", "fsync_each_per_s", "fsync_each_p50_ms", "fsync_each_p99_ms",
            "ratio_floor", "ratio_fsync_each"]
    emit({"label": "approvals", "n": N, "window": W, "rounds": len(rounds), **{f"{k}_median": med(k) for k in keys}})
finally:
    for p in list(live):
        stop(p)
PY
py_pid=$!
status=0
wait "$py_pid" || status=$?
py_pid=""
exit "$status"
