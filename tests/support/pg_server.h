/*
 * A private PostgreSQL cluster for tests: initdb in a fresh temp dir, a postmaster on a free
 * 127.0.0.1 port (plus a Unix socket in the temp dir), stopped and deleted afterwards. The
 * binaries come from $BW_TEST_PG_BIN (a bin dir), else the newest /usr/lib/postgresql/<v>/bin
 * (Debian layout), else `pg_config --bindir`. Run as root, initdb and postgres run as the
 * "postgres" system user (they refuse root); otherwise as the current user.
 *
 * Authentication: Unix socket trust (nothing in the tests uses it); TCP scram-sha-256 for every
 * role, the superuser "postgres" included (password "pgpass", set by initdb --pwfile).
 * The database "bwtest" is owned by the LOGIN role "bw" (password "bwpass"), and tables,
 * sequences and functions the superuser creates in its public schema are granted to bw by
 * default privileges, so setup SQL run with bw_test_pg_exec is usable through url as is.
 */
#ifndef BW_TEST_PG_SERVER_H
#define BW_TEST_PG_SERVER_H

#include <sys/types.h>

#define BW_TEST_PG_USER "bw"
#define BW_TEST_PG_PASSWORD "bwpass"
#define BW_TEST_PG_DB "bwtest"
#define BW_TEST_PG_SUPERUSER_PASSWORD "pgpass"

/* Caller-owned (embed it or put it on the stack; zero-initialise before the first start). */
typedef struct bw_test_pg {
    pid_t pid;               /* the postmaster (in a process group of its own), 0 when stopped */
    int port;                /* 127.0.0.1 port, kept across restarts */
    char dir[256];           /* the temp dir: data/ inside, the Unix socket, postgres.log; "" when none */
    char url[512];           /* "postgresql://bw:bwpass@127.0.0.1:<port>/bwtest" */
    char superuser_url[512]; /* "postgresql://postgres:pgpass@127.0.0.1:<port>/bwtest" */
} bw_test_pg_t;

/* initdb, start on a free port (retried up to 5 times if another process takes it first), wait
   until it accepts connections (30 s at most), create bw and bwtest. 0 ok; -1 with the reason
   (and the server's log) on stderr, and nothing left running or on disk. */
int bw_test_pg_start(bw_test_pg_t *pg);

/* Fast shutdown (SIGINT; immediate, then SIGKILL for it and its children if it hangs) and a new
   postmaster on the same port and data, ready when it returns; for "the server restarted" tests.
   0 ok, -1 on failure (the dir is kept for bw_test_pg_stop). */
int bw_test_pg_restart(bw_test_pg_t *pg);

/* The two halves of bw_test_pg_restart, for tests that need the server down for a while:
   halt stops the postmaster (fast) and keeps dir and port; resume starts it again on that port
   and waits until it is ready (0 ok, -1 on failure). */
void bw_test_pg_halt(bw_test_pg_t *pg);
int bw_test_pg_resume(bw_test_pg_t *pg);

/* A server that does not answer: SIGSTOP to the postmaster and every backend (its process group); the
   kernel still accepts connections on its port and acknowledges what is sent. thaw: SIGCONT. */
void bw_test_pg_freeze(bw_test_pg_t *pg);
void bw_test_pg_thaw(bw_test_pg_t *pg);

/* Immediate shutdown (SIGQUIT; SIGKILL for it and its children after 10 s) and removal of
   dir (kept when BW_TEST_KEEP_LOGS is set). Safe twice and on a cluster that never started. */
void bw_test_pg_stop(bw_test_pg_t *pg);

/* Runs sql (several statements allowed, one implicit transaction) as the superuser in bwtest
   over a fresh libpq connection. 0 ok; -1 after printing the error on stderr. */
int bw_test_pg_exec(const bw_test_pg_t *pg, const char *sql);

#endif
