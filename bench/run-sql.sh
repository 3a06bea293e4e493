#!/usr/bin/env bash
# sql point-select jobs through the worker against pgbench -S on the same PostgreSQL with the same
# number of connections, measured in the same run (DESIGN.md "Bars": >= 0.7x). A private cluster is made
# with initdb in a temp dir (as the postgres user when run as root) and filled by pgbench -i -s 1; each
# round runs pgbench -S with the simple protocol and again with -M prepared (the worker prepares its
# statements, so -M prepared is the like-for-like baseline), CONNECTIONS clients, DURATION s each, then
# bench/run-echo.sh with sql jobs (the worker with SQL_POOL_MAX=CONNECTIONS, INFLIGHT jobs in flight).
#
# Knobs: REPEAT (3), DURATION (8), CONNECTIONS (5), INFLIGHT (64), OUT (raw JSON lines, kept).
set -euo pipefail
cd "$(dirname "$0")/.."

REPEAT=${REPEAT:-3}
CONNECTIONS=${CONNECTIONS:-5}
export DURATION=${DURATION:-8} INFLIGHT=${INFLIGHT:-64} OPEN_LOOP=0
OUT=${OUT:-$(mktemp "${TMPDIR:-/tmp}/bw-sql.XXXXXX.jsonl")}
: >"$OUT"
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
[ -x "$BIN/initdb" ] || { echo "run-sql: no PostgreSQL server binaries (install postgresql)" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/bw-sqlpg.XXXXXX")
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
  chown postgres "$tmp"
  as_pg=(runuser -u postgres --)
fi
cleanup() {
  pkill -INT -f "postgres -D $tmp/data" 2>/dev/null || true
  sleep 1
  pkill -KILL -f "postgres -D $tmp/data" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${as_pg[@]}" "$BIN/initdb" -D "$tmp/data" -U postgres --auth=trust -E UTF8 --no-sync >"$tmp/initdb.log" 2>&1 </dev/null
("${as_pg[@]}" "$BIN/postgres" -D "$tmp/data" -p "$port" -k "$tmp" -c listen_addresses=127.0.0.1 -c fsync=off \
  -c synchronous_commit=off -c full_page_writes=off >"$tmp/pg.log" 2>&1 </dev/null &)
for _ in $(seq 300); do "$BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres </dev/null && break; sleep 0.1; done
"$BIN/createdb" -h 127.0.0.1 -p "$port" -U postgres bench </dev/null
"$BIN/pgbench" -i -q -s 1 -h 127.0.0.1 -p "$port" -U postgres bench >"$tmp/pgbench-init.log" 2>&1 </dev/null

export SQL_CONNECTIONS="main=postgresql://postgres@127.0.0.1:$port/bench" SQL_POOL_MAX=$CONNECTIONS
payload='{"connection":"main","query":"SELECT abalance FROM pgbench_accounts WHERE aid = $1","args":[{{seq}}]}'
for round in $(seq "$REPEAT"); do
  echo "bench: round $round/$REPEAT, pgbench -S" >&2
  "$BIN/pgbench" -S -n -c "$CONNECTIONS" -j 1 -T "$DURATION" -h 127.0.0.1 -p "$port" -U postgres bench \
    >"$tmp/pgbench.out" 2>&1 </dev/null
  tps=$(awk '/^tps = / { print $3; exit }' "$tmp/pgbench.out")
  echo "{\"label\":\"pgbench-S\",\"throughput_per_s\":$tps}" >>"$OUT"
  echo "bench: round $round/$REPEAT, pgbench -S -M prepared" >&2
  "$BIN/pgbench" -S -M prepared -n -c "$CONNECTIONS" -j 1 -T "$DURATION" -h 127.0.0.1 -p "$port" -U postgres \
    bench >"$tmp/pgbench.out" 2>&1 </dev/null
  tps=$(awk '/^tps = / { print $3; exit }' "$tmp/pgbench.out")
  echo "{\"label\":\"pgbench-S-prepared\",\"throughput_per_s\":$tps}" >>"$OUT"
  echo "bench: round $round/$REPEAT, sql jobs" >&2
  JOB_TYPE=sql JOB_PAYLOAD=$payload bench/run-echo.sh 2>/dev/null </dev/null >>"$OUT"
done
echo "bench: raw figures in $OUT" >&2
python3 - "$OUT" "$CONNECTIONS" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    if line.startswith("{"):
        d = json.loads(line)
        runs.setdefault(d["label"], []).append(d)
pg = statistics.median(r["throughput_per_s"] for r in runs["pgbench-S"])
pgp = statistics.median(r["throughput_per_s"] for r in runs["pgbench-S-prepared"])
sql = runs["sql-closed"]
w = statistics.median(r["throughput_per_s"] for r in sql)
print("| what | connections | n | per second (median) | ratio to -S | ratio to -S -M prepared | p50 / p99 ms | worker CPU ms/1k jobs |")
print("|---|---|---|---|---|---|---|---|")
print(f"| pgbench -S | {sys.argv[2]} | {len(runs['pgbench-S'])} | {pg:,.0f} | 1.00 | {pg / pgp:.2f} | | |")
print(f"| pgbench -S -M prepared | {sys.argv[2]} | {len(runs['pgbench-S-prepared'])} | {pgp:,.0f} | {pgp / pg:.2f} | 1.00 | | |")
print(f"| sql jobs through the worker | {sys.argv[2]} | {len(sql)} | {w:,.0f} | {w / pg:.2f} | {w / pgp:.2f} | "
      f"{statistics.median(r['latency_ms']['p50'] for r in sql):.2f} / "
      f"{statistics.median(r['latency_ms']['p99'] for r in sql):.2f} | "
      f"{statistics.median(r['worker_cpu_ms_per_1k_jobs'] for r in sql):.1f} |")
PY
