/*
 * Self-test of the private PostgreSQL cluster the sql job type's tests run against
 * (tests/support/pg_server.c): it starts, the bw role logs in over TCP with its password and a
 * wrong one is refused, setup SQL runs as the superuser and its tables are usable by bw, a
 * restart keeps port and data (a connection from before it is broken, a new one works), a halt
 * refuses connections until resume, stop leaves no process (postmaster, backends, auxiliaries)
 * and no dir behind, and a cluster whose test process is SIGKILLed goes away too.
 */
#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <libpq-fe.h>
#include <pwd.h>

#include "pg_server.h"
#include "testutil.h"

#define GONE_DEADLINE_MS 10000

static bw_test_pg_t PG;

/* ---- helpers ------------------------------------------------------------------------------- */

/* The first value of the first row of sql on a fresh connection to url, malloc'd; NULL on any
   failure (printed). */
static char *query_value(const char *url, const char *sql)
{
    PGconn *conn = PQconnectdb(url);
    PGresult *res = NULL;
    char *value = NULL;

    if (PQstatus(conn) != CONNECTION_OK) {
        fprintf(stderr, "connect: %s", PQerrorMessage(conn));
        goto out;
    }
    res = PQexec(conn, sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) < 1) {
        fprintf(stderr, "%s: %s", sql, PQresultErrorMessage(res));
        goto out;
    }
    value = strdup(PQgetvalue(res, 0, 0));
out:
    PQclear(res);
    PQfinish(conn);
    return value;
}

static void assert_query(const char *url, const char *sql, const char *expected)
{
    char *value = query_value(url, sql);

    assert_non_null(value);
    assert_string_equal(value, expected);
    free(value);
}

#define MAX_KIDS 64

/* The pids of pid's children (the postmaster's backends and auxiliary processes). */
static int children_of(pid_t pid, pid_t *kids, int max)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    int n = 0;

    assert_non_null(d);
    while (n < max && (e = readdir(d)) != NULL) {
        char state;
        int ppid, child = atoi(e->d_name);
        if (child > 0 && bw_test_proc_stat(child, &state, &ppid) == 0 && ppid == pid)
            kids[n++] = child;
    }
    closedir(d);
    return n;
}

/* 1 while pid runs (a zombie does not: it only waits for a reaper). */
static int alive(pid_t pid)
{
    char state;
    int ppid;

    return bw_test_proc_stat(pid, &state, &ppid) == 0 && state != 'Z';
}

/* Waits until none of pids runs; 0, or -1 after GONE_DEADLINE_MS. */
static int wait_all_gone(const pid_t *pids, int n)
{
    int64_t deadline = bw_test_now_ms() + GONE_DEADLINE_MS;

    for (int i = 0; i < n; i++) {
        while (alive(pids[i])) {
            if (bw_test_now_ms() > deadline) {
                fprintf(stderr, "process %d still running\n", (int)pids[i]);
                return -1;
            }
            bw_test_sleep_ms(20);
        }
    }
    return 0;
}

/* ---- fixture ------------------------------------------------------------------------------- */

static int setup(void **state)
{
    int64_t t0 = bw_test_now_ms();

    if (bw_test_pg_start(&PG) != 0)
        return -1;
    print_message("cluster ready in %d ms (port %d, %s)\n", (int)(bw_test_now_ms() - t0), PG.port, PG.dir);
    return 0;
}

static int teardown(void **state)
{
    bw_test_pg_stop(&PG);
    return 0;
}

/* ---- tests --------------------------------------------------------------------------------- */

static void test_running(void **state)
{
    char path[512], expected[512];
    struct stat st;

    assert_true(PG.pid > 0);
    assert_int_equal(getpgid(PG.pid), PG.pid); /* its own process group */
    snprintf(expected, sizeof expected, "postgresql://bw:bwpass@127.0.0.1:%d/bwtest", PG.port);
    assert_string_equal(PG.url, expected);
    assert_int_equal(bw_test_tcp_probe(PG.port), 0);
    snprintf(path, sizeof path, "%s/.s.PGSQL.%d", PG.dir, PG.port);
    assert_int_equal(stat(path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(stat(PG.dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    if (geteuid() == 0) { /* run as the postgres user, which owns the dir */
        struct passwd *pw = getpwnam("postgres");
        assert_non_null(pw);
        assert_int_equal(st.st_uid, pw->pw_uid);
        snprintf(path, sizeof path, "/proc/%d", (int)PG.pid);
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_uid, pw->pw_uid);
    }
}

static void test_connect_as_bw(void **state)
{
    assert_query(PG.url, "SELECT current_user || ' ' || current_database() || ' ' || 6 * 7", "bw bwtest 42");
    assert_query(PG.url, "SELECT rolsuper::text FROM pg_roles WHERE rolname = current_user", "false");
    assert_query(PG.url, "SHOW server_encoding", "UTF8");
    assert_query(PG.superuser_url, "SELECT current_user || ' ' || current_database()", "postgres bwtest");
}

static void test_wrong_password_refused(void **state)
{
    char url[512];
    PGconn *conn;

    snprintf(url, sizeof url, "postgresql://bw:wrong@127.0.0.1:%d/bwtest", PG.port);
    conn = PQconnectdb(url);
    assert_int_equal(PQstatus(conn), CONNECTION_BAD);
    assert_non_null(strstr(PQerrorMessage(conn), "password authentication failed for user \"bw\""));
    PQfinish(conn);
    /* The superuser too needs its password over TCP. */
    snprintf(url, sizeof url, "postgresql://postgres:wrong@127.0.0.1:%d/bwtest", PG.port);
    conn = PQconnectdb(url);
    assert_int_equal(PQstatus(conn), CONNECTION_BAD);
    PQfinish(conn);
}

static void test_exec(void **state)
{
    assert_int_equal(bw_test_pg_exec(&PG, "DROP TABLE IF EXISTS items;"
                                          "CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL);"
                                          "INSERT INTO items (name) VALUES ('a'), ('b');"),
                     0);
    /* Made by the superuser, usable by bw (default privileges; the serial's sequence too). */
    assert_query(PG.url, "SELECT string_agg(name, ',' ORDER BY id) FROM items", "a,b");
    assert_query(PG.url, "INSERT INTO items (name) VALUES ('c') RETURNING id::text", "3");
    /* A failing statement fails the call and rolls back the whole string. */
    assert_int_equal(bw_test_pg_exec(&PG, "INSERT INTO items (name) VALUES ('d'); SELECT * FROM missing"),
                     -1);
    assert_int_equal(bw_test_pg_exec(&PG, "this is not sql"), -1);
    assert_query(PG.url, "SELECT count(*)::text FROM items", "3");
}

static void test_restart(void **state)
{
    PGconn *before = PQconnectdb(PG.url);
    pid_t old_pid = PG.pid;
    int old_port = PG.port;
    int64_t t0;
    PGresult *res;

    assert_int_equal(PQstatus(before), CONNECTION_OK);
    t0 = bw_test_now_ms();
    assert_int_equal(bw_test_pg_restart(&PG), 0);
    print_message("restart took %d ms\n", (int)(bw_test_now_ms() - t0));
    assert_true(PG.pid > 0);
    assert_int_not_equal(PG.pid, old_pid);
    assert_int_equal(PG.port, old_port);
    /* The connection from before is gone; a new one finds the data. */
    res = PQexec(before, "SELECT 1");
    assert_int_not_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    PQclear(res);
    PQfinish(before);
    assert_query(PG.url, "SELECT count(*)::text FROM items", "3");
}

static void test_halt_resume(void **state)
{
    PGconn *conn;

    bw_test_pg_halt(&PG);
    assert_int_equal(PG.pid, 0);
    conn = PQconnectdb(PG.url);
    assert_int_equal(PQstatus(conn), CONNECTION_BAD);
    PQfinish(conn);
    assert_int_equal(bw_test_pg_exec(&PG, "SELECT 1"), -1);
    assert_int_equal(bw_test_pg_resume(&PG), 0);
    assert_query(PG.url, "SELECT count(*)::text FROM items", "3");
}

static void test_stop(void **state)
{
    char dir[sizeof PG.dir];
    pid_t pid = PG.pid, kids[MAX_KIDS];
    PGconn *conn = PQconnectdb(PG.url); /* a backend to be ended too */
    struct stat st;
    int nkids;

    assert_int_equal(PQstatus(conn), CONNECTION_OK);
    nkids = children_of(pid, kids, MAX_KIDS);
    assert_true(nkids >= 5); /* checkpointer, background writer, walwriter, ..., our backend */
    snprintf(dir, sizeof dir, "%s", PG.dir);
    bw_test_pg_stop(&PG);
    assert_int_equal(PG.pid, 0);
    assert_string_equal(PG.dir, "");
    assert_int_equal(stat(dir, &st), -1);
    assert_int_equal(errno, ENOENT);
    assert_int_equal(kill(pid, 0), -1); /* reaped */
    assert_int_equal(errno, ESRCH);
    assert_int_equal(wait_all_gone(kids, nkids), 0);
    assert_int_not_equal(bw_test_tcp_probe(PG.port), 0);
    PQfinish(conn);
    bw_test_pg_stop(&PG); /* twice is fine */
    assert_int_equal(bw_test_pg_restart(&PG), -1);
}

/* A test process killed outright (crash, CTest timeout) takes its cluster with it. */
static void test_dies_with_test_process(void **state)
{
    int fds[2];
    bw_test_pg_t child_pg;
    pid_t child;
    int status;

    assert_int_equal(pipe(fds), 0);
    child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        close(fds[0]);
        if (bw_test_pg_start(&child_pg) != 0)
            _exit(1);
        if (write(fds[1], &child_pg, sizeof child_pg) != (ssize_t)sizeof child_pg)
            _exit(1);
        for (;;)
            pause();
    }
    close(fds[1]);
    ssize_t n = read(fds[0], &child_pg, sizeof child_pg);
    close(fds[0]);
    if (n != (ssize_t)sizeof child_pg) {
        kill(child, SIGKILL);
        waitpid(child, &status, 0);
        fail_msg("the child could not start its cluster");
    }
    /* A connected backend, and the postmaster's children, before the test process dies. */
    PGconn *conn = PQconnectdb(child_pg.url);
    assert_int_equal(PQstatus(conn), CONNECTION_OK);
    pid_t kids[MAX_KIDS + 1];
    int nkids = children_of(child_pg.pid, kids, MAX_KIDS);
    assert_true(nkids >= 5);
    kids[nkids++] = child_pg.pid;
    kill(child, SIGKILL);
    assert_int_equal(waitpid(child, &status, 0), child);
    assert_int_equal(wait_all_gone(kids, nkids), 0);
    assert_int_not_equal(bw_test_tcp_probe(child_pg.port), 0);
    PGresult *res = PQexec(conn, "SELECT 1");
    assert_int_not_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    PQclear(res);
    PQfinish(conn);
    assert_int_equal(bw_test_rm_rf(child_pg.dir), 0); /* nobody else removes it */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_running),
        cmocka_unit_test(test_connect_as_bw),
        cmocka_unit_test(test_wrong_password_refused),
        cmocka_unit_test(test_exec),
        cmocka_unit_test(test_restart),
        cmocka_unit_test(test_halt_resume),
        cmocka_unit_test(test_stop),
        cmocka_unit_test(test_dies_with_test_process),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
