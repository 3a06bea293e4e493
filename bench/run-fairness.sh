#!/usr/bin/env bash
# A small tenant's latency under another tenant's flood (issue 18), the worker before fair scheduling (OLD,
# commit 76fc78e: one FIFO) against the worker with it (NEW), in the same run. Per round and target: a
# private nats-server and one worker with WORKER_MAX_CONCURRENCY=$SLOTS and WORKER_TYPE_CONCURRENCY=sleep=0
# (NEW: sleeps take the shared slots like echo; OLD ignores the variable and did that anyway); tenant
# "flood" publishes FLOOD `sleep {"ms":FLOOD_MS}` jobs at once, then tenant "small" publishes SMALL echo
# jobs (all at once; SMALL_MODE=serial: one after the other's result; SMALL_AFTER=admitted: only once the
# worker has acknowledged every flood job, CAF_ACK_ENABLED=true, so that the worker's intake of the flood
# is not in the small tenant's latency). A stdlib-only Python client speaks the NATS text protocol
# (CONNECT/SUB/PUB/MSG/HMSG/PING/PONG) and times each job from its publish to its result. One JSON line per
# run: the small tenant's echo latency (p50, max), the flood's total time (first publish to last result),
# how many flood jobs were still unanswered when the last echo was answered, the statuses, and the worker's
# exit status on SIGTERM afterwards. Rounds alternate the order of the targets. Every process it starts is
# stopped on exit.
#
# Knobs: OLD_BIN (/tmp/bw-old/build-release/beamline-worker), NEW_BIN (build-release/beamline-worker,
# relative to the repository), REPEAT (2), SLOTS (8), FLOOD (4000), FLOOD_MS (10), SMALL (20),
# SMALL_MODE (burst | serial), SMALL_AFTER (published | admitted), DEADLINE_MS (120000, every job's
# options.deadline_ms), TARGETS ("old new").
# Exit status: non-zero when a job went unanswered or a run failed.
# shellcheck disable=SC2317 # stop_pid and cleanup only run from the EXIT trap
set -euo pipefail
cd "$(dirname "$0")/.."

OLD_BIN=${OLD_BIN:-/tmp/bw-old/build-release/beamline-worker}
NEW_BIN=${NEW_BIN:-build-release/beamline-worker}
REPEAT=${REPEAT:-2} SLOTS=${SLOTS:-8} FLOOD=${FLOOD:-4000} FLOOD_MS=${FLOOD_MS:-10} SMALL=${SMALL:-20}
SMALL_MODE=${SMALL_MODE:-burst} SMALL_AFTER=${SMALL_AFTER:-published} DEADLINE_MS=${DEADLINE_MS:-120000}
TARGETS=${TARGETS:-"old new"}
export FLOOD FLOOD_MS SMALL SMALL_MODE SMALL_AFTER DEADLINE_MS
acks=false
[ "$SMALL_AFTER" = admitted ] && acks=true

tmp=$(mktemp -d "${TMPDIR:-/tmp}/bw-fair.XXXXXX")
nats_pid="" worker_pid="" client_pid=""

stop_pid() {
  local pid=$1
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  stop_pid "$client_pid"
  stop_pid "$worker_pid"
  stop_pid "$nats_pid"
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

die() {
  echo "run-fairness: $*" >&2
  exit 1
}

for b in "$OLD_BIN" "$NEW_BIN"; do [ -x "$b" ] || die "no worker binary at $b (OLD_BIN / NEW_BIN)"; done

# The client: publishes the flood and the small tenant's jobs, collects the results, prints one JSON line.
cat >"$tmp/fair.py" <<'PY'
import json, os, socket, statistics, sys, threading, time

host, port = os.environ["NATS_URL"].split("://", 1)[1].rsplit(":", 1)
FLOOD, FLOOD_MS, SMALL = int(os.environ["FLOOD"]), int(os.environ["FLOOD_MS"]), int(os.environ["SMALL"])
SERIAL, DEADLINE = os.environ["SMALL_MODE"] == "serial", int(os.environ["DEADLINE_MS"])
AFTER_ADMITTED = os.environ["SMALL_AFTER"] == "admitted"
ASSIGN, RESULTS, ACKS = "caf.exec.assign.v1", "caf.exec.result.v1", "caf.exec.assign.v1.ack"
run = "%x" % (time.time_ns() & 0xFFFFFFFFFF)


class Nats:
    """The NATS text protocol, just enough: one publisher (any thread) and one reader thread."""

    def __init__(self, on_msg):
        self.sock = socket.create_connection((host, int(port)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rf = self.sock.makefile("rb")
        self.lock, self.on_msg, self.pongs = threading.Lock(), on_msg, threading.Semaphore(0)
        if not self.rf.readline().startswith(b"INFO "):
            sys.exit("fair.py: no INFO from nats-server")
        self.send(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"protocol":1,"name":"bw-fair"}\r\n')
        threading.Thread(target=self.read, daemon=True).start()

    def send(self, data):
        with self.lock:
            self.sock.sendall(data)

    def flush(self):
        """A round trip: everything sent before it has reached the server."""
        self.send(b"PING\r\n")
        if not self.pongs.acquire(timeout=10):
            sys.exit("fair.py: no PONG")

    def read(self):
        rf = self.rf
        while True:
            line = rf.readline()
            if not line:
                os._exit(3)
            now = time.monotonic()
            if line.startswith(b"MSG ") or line.startswith(b"HMSG "):
                f = line.split()
                total = int(f[-1])
                body = rf.read(total + 2)[:total]
                if f[0] == b"HMSG":
                    body = body[int(f[-2]):]
                self.on_msg(int(f[2]), body, now)
            elif line.startswith(b"PING"):
                self.send(b"PONG\r\n")
            elif line.startswith(b"PONG"):
                self.pongs.release()
            elif line.startswith(b"-ERR"):
                sys.stderr.write("fair.py: nats-server: %s" % line.decode(errors="replace"))
                os._exit(3)


def assignment(aid, tenant, jtype, payload):
    body = json.dumps({"version": "1", "assignment_id": aid, "request_id": aid, "tenant_id": tenant,
                       "job": {"type": jtype, "payload": payload}, "options": {"deadline_ms": DEADLINE}},
                      separators=(",", ":")).encode()
    return b"PUB %s %d\r\n%s\r\n" % (ASSIGN.encode(), len(body), body)


done, statuses, acked, cv = {}, {}, {}, threading.Condition()


def on_result(sid, body, now):
    r = json.loads(body)
    if sid == 2:
        with cv:
            acked[r.get("assignment_id", "")] = now
            cv.notify_all()
        return
    with cv:
        aid = r.get("assignment_id", "")
        if aid not in done:
            done[aid] = now
            statuses[r.get("status", "?")] = statuses.get(r.get("status", "?"), 0) + 1
        cv.notify_all()


def wait_for(ids, timeout, d=done):
    end = time.monotonic() + timeout
    with cv:
        while not all(i in d for i in ids):
            left = end - time.monotonic()
            if left <= 0 or not cv.wait(left):
                return False
    return True


nc = Nats(on_result)
nc.send(b"SUB %s 1\r\n" % RESULTS.encode())
if AFTER_ADMITTED:
    nc.send(b"SUB %s 2\r\n" % ACKS.encode())
nc.flush()
for k in range(100):  # the worker is ready when a probe comes back
    probe = "%s-probe-%d" % (run, k)
    nc.send(assignment(probe, "probe", "echo", {"k": k}))
    if wait_for([probe], 0.2):
        break
else:
    sys.exit("fair.py: the worker never answered")
with cv:
    done.clear()
    statuses.clear()
    acked.clear()

flood = ["%s-f-%d" % (run, i) for i in range(FLOOD)]
small = ["%s-s-%d" % (run, i) for i in range(SMALL)]
sent = {}
t0 = time.monotonic()
nc.send(b"".join(assignment(a, "flood", "sleep", {"ms": FLOOD_MS}) for a in flood))
t_flood_sent = time.monotonic()
if AFTER_ADMITTED and not wait_for(flood, 60, acked):
    sys.exit("fair.py: the flood was not acknowledged within 60 s")
t_admitted = time.monotonic()
if SERIAL:
    for a in small:
        sent[a] = time.monotonic()
        nc.send(assignment(a, "small", "echo", {"seq": a}))
        wait_for([a], DEADLINE / 1000)
else:
    buf = b"".join(assignment(a, "small", "echo", {"seq": a}) for a in small)
    t = time.monotonic()
    nc.send(buf)
    for a in small:
        sent[a] = t
ok = wait_for(flood + small, DEADLINE / 1000 + 10)
with cv:
    lat = sorted((done[a] - sent[a]) * 1000 for a in small if a in done)
    last_small = max((done[a] for a in small if a in done), default=float("nan"))
    flood_done = [done[a] for a in flood if a in done]
    missing = FLOOD + SMALL - len(flood_done) - len(lat)
    print(json.dumps({
        "flood": FLOOD, "flood_ms": FLOOD_MS, "small": SMALL, "small_mode": "serial" if SERIAL else "burst",
        "small_p50_ms": round(statistics.median(lat), 1) if lat else None,
        "small_max_ms": round(lat[-1], 1) if lat else None,
        "small_min_ms": round(lat[0], 1) if lat else None,
        "flood_total_s": round(max(flood_done) - t0, 3) if flood_done else None,
        "flood_publish_ms": round((t_flood_sent - t0) * 1000, 1),
        "small_after": "admitted" if AFTER_ADMITTED else "published",
        "flood_admitted_ms": round((t_admitted - t0) * 1000, 1) if AFTER_ADMITTED else None,
        "flood_unanswered_at_last_small": sum(1 for t in flood_done if t > last_small) + FLOOD - len(flood_done),
        "statuses": statuses, "missing": missing}, separators=(",", ":")))
    sys.exit(0 if ok and missing == 0 else 1)
PY

start_nats() {
  /usr/sbin/nats-server -a 127.0.0.1 -p -1 --ports_file_dir "$tmp" >"$tmp/nats.log" 2>&1 &
  nats_pid=$!
  local ports="$tmp/nats-server_$nats_pid.ports"
  for _ in $(seq 100); do [ -s "$ports" ] && break; sleep 0.05; done
  NATS_URL=$(grep -o 'nats://[^"]*' "$ports" 2>/dev/null | head -n1) || true
  [ -n "$NATS_URL" ] || { cat "$tmp/nats.log" >&2; die "nats-server did not start"; }
  export NATS_URL
}

# One run: a fresh nats-server and worker, the client, the JSON line with the target added.
run_one() {
  local target=$1 bin=$2 round=$3 line rc=0
  start_nats
  CAF_ACK_ENABLED=$acks WORKER_MAX_CONCURRENCY=$SLOTS WORKER_TYPE_CONCURRENCY=sleep=0 LOG_LEVEL=warn HEALTH_BIND=127.0.0.1:0 \
    DLQ_PATH="$tmp/dlq.jsonl" FS_BASE_DIR="$tmp/fs" "$bin" >"$tmp/worker.log" 2>&1 &
  worker_pid=$!
  python3 "$tmp/fair.py" >"$tmp/client.out" &
  client_pid=$!
  wait "$client_pid" || rc=$?
  client_pid=""
  kill -0 "$worker_pid" 2>/dev/null || { cat "$tmp/worker.log" >&2; die "the $target worker exited"; }
  line=$(cat "$tmp/client.out")
  [ -n "$line" ] || { tail -n 20 "$tmp/worker.log" >&2; die "the client printed nothing (status $rc)"; }
  local wrc=0
  kill -TERM "$worker_pid"
  wait "$worker_pid" || wrc=$?
  worker_pid=""
  [ "$wrc" = 0 ] || { echo "run-fairness: the $target worker exited with status $wrc on SIGTERM:" >&2; tail -n 3 "$tmp/worker.log" >&2; rc=1; }
  printf '%s,"target":"%s","round":%d,"slots":%d,"worker_exit":%d,"bin":"%s"}\n' "${line%\}}" "$target" "$round" "$SLOTS" "$wrc" "$bin"
  stop_pid "$nats_pid"
  nats_pid=""
  return "$rc"
}

echo "run-fairness: OLD $OLD_BIN, NEW $NEW_BIN; $SLOTS slots, $FLOOD x sleep ${FLOOD_MS} ms (tenant flood)," \
  "then $SMALL echo (tenant small, $SMALL_MODE, after the flood was $SMALL_AFTER); $REPEAT rounds" >&2
status=0
for round in $(seq "$REPEAT"); do
  order=$TARGETS
  [ $((round % 2)) = 0 ] && order=$(echo "$TARGETS" | awk '{ for (i = NF; i > 0; i--) printf "%s ", $i }')
  for target in $order; do
    bin=$NEW_BIN
    [ "$target" = old ] && bin=$OLD_BIN
    run_one "$target" "$bin" "$round" || status=1
  done
done
exit "$status"
