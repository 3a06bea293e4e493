/*
 * Integration: net/pgpool.c against a real PostgreSQL (tests/support/pg_server.c: initdb in a temp dir,
 * a free loopback port) on a libuv loop: parameters, reuse, the pool's bound and its queue, cancel
 * (the server-side query really stops), a connection killed by the server, idle reaping, a server
 * restart, a wrong password; requests: pipelined in order on one connection, prepared on their second
 * use and sent again when the session lost the statement or its table changed, withdrawn while queued
 * or while the server runs them (cancelled there, the connection kept), a connection lost under a
 * pipeline, and acquires served in turn with them; COPY with the client ended (FROM STDIN with a
 * failure, TO STDOUT with the connection) rather than spinning; one connection moving between tenants
 * through DISCARD ALL.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "net/pgpool.h"
#include "pg_server.h"
#include "testutil.h"

static bw_test_pg_t PG;
static uv_loop_t loop;

typedef struct ctx {
    bw_pg_conn_t *conn;
    char error[512];
    int acquired, done;
    char value[256]; /* first field of the last result with rows */
    char sqlstate[8];
    int copies; /* COPY results seen */
} ctx_t;

static void on_acquire(void *ud, bw_pg_conn_t *c, const char *error)
{
    ctx_t *x = ud;
    x->acquired++;
    x->conn = c;
    snprintf(x->error, sizeof x->error, "%s", error ? error : "");
}

static void on_result(void *ud, PGresult *res, const char *error)
{
    ctx_t *x = ud;
    if (res == NULL) {
        x->done++;
        if (error != NULL)
            snprintf(x->error, sizeof x->error, "%s", error);
        return;
    }
    x->copies += PQresultStatus(res) == PGRES_COPY_IN || PQresultStatus(res) == PGRES_COPY_OUT;
    if ((PQresultStatus(res) == PGRES_TUPLES_OK || PQresultStatus(res) == PGRES_SINGLE_TUPLE) &&
        PQntuples(res) > 0)
        snprintf(x->value, sizeof x->value, "%s", PQgetvalue(res, 0, 0));
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    if (state != NULL)
        snprintf(x->sqlstate, sizeof x->sqlstate, "%s", state);
}

static bool run_until(const int *counter, int want, int ms)
{
    uint64_t end = uv_now(&loop) + (uint64_t)ms;
    while (*counter < want) {
        uv_run(&loop, UV_RUN_NOWAIT);
        uv_update_time(&loop);
        if (uv_now(&loop) >= end)
            return false;
        uv_sleep(1);
    }
    return true;
}

static void acquire(bw_pg_pool_t *p, ctx_t *x)
{
    bw_pg_acquire(p, NULL, on_acquire, x);
    assert_true(run_until(&x->acquired, 1, 20000));
    if (x->conn == NULL)
        fail_msg("no connection: %s", x->error);
}

/* Runs sql with params on x's connection and waits for it to end. */
static void query(ctx_t *x, const char *sql, int n, const char *const *params)
{
    x->done = x->copies = 0;
    x->value[0] = x->sqlstate[0] = x->error[0] = '\0';
    assert_int_equal(bw_pg_query(x->conn, sql, n, params, on_result, x), 0);
    assert_true(run_until(&x->done, 1, 20000));
}

static int setup(void **state)
{
    if (uv_loop_init(&loop) != 0)
        return -1;
    return bw_test_pg_start(&PG);
}

static int teardown(void **state)
{
    bw_pg_shutdown();
    uv_run(&loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&loop);
    bw_test_pg_stop(&PG);
    return rc == 0 ? 0 : -1;
}

static void test_query_and_reuse(void **state)
{
    bw_pg_pool_t *p = bw_pg_pool(&loop, PG.url, 2, 60000, NULL);
    ctx_t a = {0};
    acquire(p, &a);
    const char *params[] = {"41", "x'); DROP TABLE t; --"};
    query(&a, "SELECT $1::int + 1, $2::text", 2, params);
    assert_string_equal(a.value, "42");
    query(&a, "SELECT pg_backend_pid()", 0, NULL);
    char pid[256];
    snprintf(pid, sizeof pid, "%s", a.value);
    query(&a, "SHOW TimeZone", 0, NULL); /* the session settings pgvalue.c relies on */
    assert_string_equal(a.value, "UTC");
    bw_pg_release(a.conn, false);
    ctx_t b = {0};
    acquire(p, &b);
    query(&b, "SELECT pg_backend_pid()", 0, NULL);
    assert_string_equal(b.value, pid); /* the same connection again */
    query(&b, "SELECT 1/0", 0, NULL);
    assert_string_equal(b.sqlstate, "22012");
    bw_pg_release(b.conn, false); /* an error outside a transaction leaves it clean */
}

static void test_bound_and_queue(void **state)
{
    bw_pg_pool_t *p = bw_pg_pool(&loop, PG.url, 2, 60000, NULL);
    ctx_t x[3] = {{0}};
    for (int i = 0; i < 3; i++)
        bw_pg_acquire(p, NULL, on_acquire, &x[i]);
    run_until(&x[1].acquired, 1, 20000);
    assert_true(run_until(&x[0].acquired, 1, 20000));
    uv_sleep(200);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(x[2].acquired, 0); /* two at most: the third waits */
    bw_pg_release(x[0].conn, false);
    assert_true(run_until(&x[2].acquired, 1, 20000));
    assert_non_null(x[2].conn);
    bw_pg_release(x[1].conn, false);
    bw_pg_release(x[2].conn, false);
    /* a wait can be withdrawn */
    ctx_t y = {0};
    bw_pg_wait_t *w = bw_pg_acquire(p, NULL, on_acquire, &y);
    bw_pg_acquire_cancel(w);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(y.acquired, 0);
}

static void test_cancel_stops_the_query(void **state)
{
    bw_pg_pool_t *p = bw_pg_pool(&loop, PG.url, 2, 60000, NULL);
    ctx_t a = {0};
    acquire(p, &a);
    a.done = 0;
    assert_int_equal(bw_pg_query(a.conn, "SELECT pg_sleep(30)", 0, NULL, on_result, &a), 0);
    run_until(&a.done, 1, 300); /* it runs */
    assert_int_equal(a.done, 0);
    uint64_t t0 = uv_now(&loop);
    bw_pg_cancel(a.conn);
    assert_true(run_until(&a.done, 1, 10000));
    assert_string_equal(a.sqlstate, "57014"); /* query_canceled */
    assert_true(uv_now(&loop) - t0 < 5000);
    /* and the server agrees: nothing of it is left running */
    ctx_t q = {0};
    acquire(p, &q);
    query(&q,
          "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'", 0,
          NULL);
    assert_string_equal(q.value, "0");
    bw_pg_release(q.conn, false);
    bw_pg_release(a.conn, false);
}

static void test_broken_connections_are_replaced(void **state)
{
    bw_pg_pool_t *p = bw_pg_pool(&loop, PG.url, 2, 60000, NULL);
    ctx_t a = {0}, b = {0};
    acquire(p, &a);
    query(&a, "SELECT pg_backend_pid()", 0, NULL);
    char pid[256];
    snprintf(pid, sizeof pid, "%s", a.value);
    bw_pg_release(a.conn, false);
    /* the server ends that idle connection */
    char sql[400];
    snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%s)", pid);
    assert_int_equal(bw_test_pg_exec(&PG, sql), 0);
    uv_sleep(200);
    uv_run(&loop, UV_RUN_NOWAIT);
    acquire(p, &b);
    query(&b, "SELECT pg_backend_pid()", 0, NULL);
    if (strcmp(b.value, pid) == 0 || b.value[0] == '\0')
        fail_msg("the terminated connection was handed out again (%s)", b.error);
    bw_pg_release(b.conn, false);
    /* the server restarts: the next job gets a working connection */
    assert_int_equal(bw_test_pg_restart(&PG), 0);
    ctx_t c = {0};
    for (int attempt = 0; attempt < 3; attempt++) { /* an idle connection may only learn now that it died */
        memset(&c, 0, sizeof c);
        acquire(p, &c);
        query(&c, "SELECT 7", 0, NULL);
        bool ok = strcmp(c.value, "7") == 0;
        bw_pg_release(c.conn, !ok);
        if (ok)
            return;
    }
    fail_msg("no working connection after the restart: %s", c.error);
}

static void test_idle_connections_close(void **state)
{
    bw_pg_pool_t *p = bw_pg_pool(&loop, PG.superuser_url, 3, 200, NULL);
    ctx_t a = {0};
    acquire(p, &a);
    query(&a, "SELECT pg_backend_pid()", 0, NULL);
    char pid[256], sql[400];
    snprintf(pid, sizeof pid, "%s", a.value);
    bw_pg_release(a.conn, false);
    uint64_t end = uv_now(&loop) + 3000;
    while (uv_now(&loop) < end) {
        uv_run(&loop, UV_RUN_NOWAIT);
        uv_sleep(20);
        uv_update_time(&loop);
    }
    /* from another pool: the backend is gone */
    bw_pg_pool_t *q = bw_pg_pool(&loop, PG.url, 1, 60000, NULL);
    ctx_t b = {0};
    acquire(q, &b);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", pid);
    query(&b, sql, 0, NULL);
    assert_string_equal(b.value, "0");
    bw_pg_release(b.conn, false);
}

static void test_bad_credentials(void **state)
{
    char url[600];
    snprintf(url, sizeof url, "postgresql://bw:wrong-secret@127.0.0.1:%d/bwtest", PG.port);
    bw_pg_pool_t *p = bw_pg_pool(&loop, url, 1, 60000, NULL);
    ctx_t a = {0};
    bw_pg_acquire(p, NULL, on_acquire, &a);
    assert_true(run_until(&a.acquired, 1, 20000));
    assert_null(a.conn);
    assert_non_null(strstr(a.error, "password authentication failed"));
    assert_null(strstr(a.error, "wrong-secret"));
}

/* ---- requests ---- */

typedef struct rctx {
    int done, order; /* order: its place among the requests that ended (1-based) */
    char value[64];
    char sqlstate[8];
    char error[512];
    const char *params[1];
    char param[16];
    int copies;
} rctx_t;

static int ended;

static void on_req(void *ud, PGresult *res, const char *error)
{
    rctx_t *x = ud;
    if (res == NULL) {
        x->done++;
        x->order = ++ended;
        if (error != NULL)
            snprintf(x->error, sizeof x->error, "%s", error);
        return;
    }
    x->copies += PQresultStatus(res) == PGRES_COPY_IN || PQresultStatus(res) == PGRES_COPY_OUT;
    if ((PQresultStatus(res) == PGRES_TUPLES_OK || PQresultStatus(res) == PGRES_SINGLE_TUPLE) &&
        PQntuples(res) > 0)
        snprintf(x->value, sizeof x->value, "%s", PQgetisnull(res, 0, 0) ? "NULL" : PQgetvalue(res, 0, 0));
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    if (state != NULL)
        snprintf(x->sqlstate, sizeof x->sqlstate, "%s", state);
}

static bw_pg_req_t *submit(bw_pg_pool_t *p, rctx_t *x, const char *sql, const char *param)
{
    memset(x, 0, sizeof *x);
    int n = 0;
    if (param != NULL) {
        snprintf(x->param, sizeof x->param, "%s", param);
        x->params[0] = x->param;
        n = 1;
    }
    return bw_pg_submit(p, NULL, sql, n, x->params, 30000, on_req, x);
}

/* Submits sql and waits for its end; fails the test on an error. */
static void request(bw_pg_pool_t *p, rctx_t *x, const char *sql, const char *param)
{
    submit(p, x, sql, param);
    assert_true(run_until(&x->done, 1, 20000));
    if (x->error[0] != '\0' || x->sqlstate[0] != '\0')
        fail_msg("%s: %s %s", sql, x->sqlstate, x->error);
}

/* A pool of its own (pools are per connection string): max connections to the same database. */
static bw_pg_pool_t *own_pool(int max, const char *tag)
{
    static char dsn[8][600];
    static int n;
    snprintf(dsn[n % 8], sizeof dsn[0], "%s?connect_timeout=%d", PG.url, 10 + n);
    (void)tag;
    return bw_pg_pool(&loop, dsn[n++ % 8], max, 60000, NULL);
}

static void test_requests_pipelined_in_order(void **state)
{
    bw_pg_pool_t *p = own_pool(1, "pipe");
    enum { N = 60 };
    static rctx_t x[N];
    char v[16];
    ended = 0;
    for (int i = 0; i < N; i++) {
        snprintf(v, sizeof v, "%d", i);
        submit(p, &x[i], "SELECT $1::int * 2", v);
    }
    for (int i = 0; i < N; i++) {
        assert_true(run_until(&x[i].done, 1, 20000));
        snprintf(v, sizeof v, "%d", i * 2);
        assert_string_equal(x[i].value, v);
        assert_string_equal(x[i].error, "");
        assert_int_equal(x[i].order, i + 1); /* one connection: they end in the order sent */
    }
    bw_pg_stats_t st;
    bw_pg_pool_stats(p, &st);
    assert_int_equal(st.open, 1);
    assert_true(st.pipelined > 0); /* some joined a busy connection instead of waiting */
    assert_true(st.prepared >= 1); /* the text came back: prepared once, executed by name since */
    assert_int_equal(st.waiting, 0);
    /* an error in one request fails that one only */
    submit(p, &x[0], "SELECT 1 / $1::int", "0");
    submit(p, &x[1], "SELECT $1::int", "7");
    assert_true(run_until(&x[1].done, 1, 20000));
    assert_int_equal(x[0].done, 1);
    assert_string_equal(x[0].sqlstate, "22012"); /* division_by_zero */
    assert_string_equal(x[1].value, "7");
    assert_string_equal(x[1].sqlstate, "");
}

static void test_prepared_statements_kept_right(void **state)
{
    bw_pg_pool_t *p = own_pool(1, "prep");
    rctx_t x;
    assert_int_equal(bw_test_pg_exec(&PG, "CREATE TABLE shape (a int); INSERT INTO shape VALUES (1)"), 0);
    request(p, &x, "SELECT $1::int + 1", "1");
    request(p, &x, "SELECT $1::int + 1", "2");
    assert_string_equal(x.value, "3");
    /* the session has it prepared (one connection: this request runs in the same session) */
    request(p, &x, "SELECT count(*) FROM pg_prepared_statements WHERE statement = 'SELECT $1::int + 1'",
            NULL);
    assert_string_equal(x.value, "1");
    /* a statement of a job drops every prepared statement: the next use prepares again */
    bw_pg_stats_t before, after;
    bw_pg_pool_stats(p, &before);
    request(p, &x, "DEALLOCATE ALL", NULL);
    request(p, &x, "SELECT $1::int + 1", "41");
    assert_string_equal(x.value, "42");
    bw_pg_pool_stats(p, &after);
    assert_true(after.resent > before.resent);
    /* the table changes shape under a prepared statement: sent again, the new shape comes back */
    request(p, &x, "SELECT * FROM shape", NULL);
    request(p, &x, "SELECT * FROM shape", NULL);
    assert_int_equal(bw_test_pg_exec(&PG, "ALTER TABLE shape ADD COLUMN b int; DELETE FROM shape;"
                                          "INSERT INTO shape VALUES (5, 6)"),
                     0);
    request(p, &x, "SELECT * FROM shape", NULL);
    assert_string_equal(x.value, "5");
    /* a job preparing a name of ours does not break later requests */
    request(p, &x, "DEALLOCATE ALL", NULL);
    request(p, &x, "PREPARE bw_s1 AS SELECT 'theirs'", NULL);
    for (int i = 0; i < 4; i++) {
        request(p, &x, "SELECT $1::text || '!'", "ours");
        assert_string_equal(x.value, "ours!");
    }
}

static void test_withdrawn_requests(void **state)
{
    bw_pg_pool_t *p = own_pool(1, "withdraw");
    rctx_t slow, queued, later;
    ended = 0;
    /* queued behind a statement that has run for a while: withdrawn, never called back */
    submit(p, &slow, "SELECT pg_sleep(0.6)", NULL);
    run_until(&slow.done, 1, 200);
    bw_pg_req_t *q = submit(p, &queued, "SELECT 1", NULL);
    bw_pg_stats_t st;
    bw_pg_pool_stats(p, &st);
    assert_int_equal(st.waiting, 1); /* not pipelined behind a statement past PIPE_HEAD_AGE_MS */
    bw_pg_withdraw(q);
    assert_true(run_until(&slow.done, 1, 20000));
    run_until(&queued.done, 1, 200);
    assert_int_equal(queued.done, 0);
    /* withdrawn while the server runs it: cancelled there; the connection stays */
    bw_pg_req_t *r = submit(p, &slow, "SELECT pg_sleep(30)", NULL);
    run_until(&slow.done, 1, 300);
    bw_pg_withdraw(r);
    submit(p, &later, "SELECT 'after'", NULL);
    assert_true(run_until(&later.done, 1, 10000));
    assert_string_equal(later.value, "after");
    assert_int_equal(slow.done, 0);
    bw_pg_pool_stats(p, &st);
    assert_int_equal(st.open, 1);
    assert_int_equal(st.cancels, 1);
    ctx_t c = {0};
    acquire(bw_pg_pool(&loop, PG.superuser_url, 1, 60000, NULL), &c);
    query(
        &c,
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%' AND state = 'active'",
        0, NULL);
    assert_string_equal(c.value, "0");
    bw_pg_release(c.conn, false);
}

static void test_connection_lost_under_a_pipeline(void **state)
{
    bw_pg_pool_t *p = own_pool(1, "lost");
    rctx_t x[5], after;
    submit(p, &x[0], "SELECT pg_sleep(20)", NULL);
    for (int i = 1; i < 5; i++)
        submit(p, &x[i], "SELECT $1::int", "1");
    run_until(&x[0].done, 1, 500);
    ctx_t c = {0};
    acquire(bw_pg_pool(&loop, PG.superuser_url, 1, 60000, NULL), &c);
    query(&c,
          "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(20)'",
          0, NULL);
    assert_string_equal(c.value, "1");
    bw_pg_release(c.conn, false);
    for (int i = 0; i < 5; i++) { /* every request on it learns, none hangs */
        if (!run_until(&x[i].done, 1, 10000)) {
            bw_pg_stats_t st;
            bw_pg_pool_stats(p, &st);
            for (int k = 0; k < 5; k++)
                print_message("x%d done=%d state=%s error=%s value=%s\n", k, x[k].done, x[k].sqlstate,
                              x[k].error, x[k].value);
            fail_msg("request %d never ended (open %d piped %d waiting %d pipelined %llu)", i, st.open,
                     st.piped, st.waiting, (unsigned long long)st.pipelined);
        }
        assert_true(x[i].error[0] != '\0' || x[i].sqlstate[0] != '\0');
    }
    request(p, &after, "SELECT 'again'", NULL); /* on a new connection */
    assert_string_equal(after.value, "again");
}

static void test_acquires_take_turns_with_requests(void **state)
{
    bw_pg_pool_t *p = own_pool(1, "turns");
    rctx_t before[3], after[2];
    ctx_t a = {0};
    ended = 0;
    for (int i = 0; i < 3; i++)
        submit(p, &before[i], "SELECT pg_sleep(0.05)", NULL);
    bw_pg_acquire(p, NULL, on_acquire, &a);
    for (int i = 0; i < 2; i++)
        submit(p, &after[i], "SELECT 2", NULL);
    assert_true(run_until(&a.acquired, 1, 20000));
    assert_non_null(a.conn);
    for (int i = 0; i < 3; i++) /* those before it are over; those after wait for its release */
        assert_int_equal(before[i].done, 1);
    assert_int_equal(after[0].done + after[1].done, 0);
    query(&a, "SELECT 'mine'", 0, NULL);
    assert_string_equal(a.value, "mine");
    run_until(&after[0].done, 1, 200);
    assert_int_equal(after[0].done, 0);
    bw_pg_release(a.conn, false);
    assert_true(run_until(&after[1].done, 1, 20000));
    assert_string_equal(after[0].value, "2");
}

/* ---- COPY and tenants ---- */

/* COPY with the client ends (no result status spins the loop): COPY FROM STDIN with a failure the
   server reports, the connection usable after it; COPY TO STDOUT with the connection closed; in a
   pipeline, the pipeline's connection. */
static void test_copy_is_refused(void **state)
{
    bw_pg_pool_t *p = own_pool(1, "copy");
    ctx_t a = {0};
    acquire(p, &a);
    query(&a, "CREATE TEMP TABLE t (v int)", 0, NULL);
    query(&a, "COPY t FROM STDIN", 0, NULL);
    assert_int_equal(a.copies, 1);
    assert_string_equal(a.sqlstate, "57014"); /* "COPY from stdin failed: <our reason>" */
    assert_string_equal(a.error, "");
    query(&a, "SELECT count(*) FROM t", 0, NULL);
    assert_string_equal(a.value, "0");
    query(&a, "COPY (SELECT generate_series(1, 100000)) TO STDOUT", 0, NULL);
    assert_int_equal(a.copies, 1);
    assert_non_null(strstr(a.error, "COPY"));
    bw_pg_release(a.conn, false); /* broken: closed */
    bw_pg_stats_t st;
    bw_pg_pool_stats(p, &st);
    assert_int_equal(st.open, 0);
    rctx_t r, y;
    submit(p, &r, "COPY (SELECT 1) TO STDOUT", NULL);
    assert_true(run_until(&r.done, 1, 20000));
    assert_int_equal(r.copies, 1);
    assert_non_null(strstr(r.error, "COPY"));
    request(p, &y, "SELECT 5", NULL);
    assert_string_equal(y.value, "5");
    request(p, &y, "CREATE TEMP TABLE u (v int)", NULL);
    submit(p, &r, "COPY u FROM STDIN", NULL);
    assert_true(run_until(&r.done, 1, 20000));
    assert_int_equal(r.copies, 1);
    request(p, &y, "SELECT 6", NULL);
    assert_string_equal(y.value, "6");
}

static void acquire_as(bw_pg_pool_t *p, ctx_t *x, const char *tenant)
{
    memset(x, 0, sizeof *x);
    bw_pg_acquire(p, tenant, on_acquire, x);
    assert_true(run_until(&x->acquired, 1, 20000));
    if (x->conn == NULL)
        fail_msg("no connection: %s", x->error);
}

/* One connection (max 1) for two tenants: it goes from one to the other through DISCARD ALL, and to the
   same tenant again as it is. */
static void test_tenants_do_not_share_sessions(void **state)
{
    bw_pg_pool_t *p = own_pool(1, "tenants");
    ctx_t a, b;
    bw_pg_stats_t st;
    acquire_as(p, &a, "a");
    query(&a, "SELECT set_config('search_path', 'evil', false)", 0, NULL);
    query(&a, "PREPARE mine AS SELECT 1", 0, NULL);
    query(&a, "SELECT pg_backend_pid()", 0, NULL);
    char pid[256];
    snprintf(pid, sizeof pid, "%s", a.value);
    bw_pg_release(a.conn, false);
    acquire_as(p, &a, "a"); /* the same tenant: as it was */
    query(&a, "SHOW search_path", 0, NULL);
    assert_string_equal(a.value, "evil");
    bw_pg_release(a.conn, false);
    bw_pg_pool_stats(p, &st);
    assert_int_equal(st.resets, 0);
    acquire_as(p, &b, "b");
    query(&b, "SELECT pg_backend_pid()", 0, NULL);
    assert_string_equal(b.value, pid); /* the same connection */
    query(&b, "SELECT current_setting('search_path') || '/' || (SELECT count(*) FROM pg_prepared_statements)",
          0, NULL);
    assert_string_equal(b.value, "\"$user\", public/0");
    bw_pg_release(b.conn, false);
    bw_pg_pool_stats(p, &st);
    assert_int_equal(st.resets, 1);
    /* a request of a's now: reset again, and its statement_timeout set again (SHOW tells) */
    rctx_t r;
    request(p, &r, "SELECT current_setting('search_path') || ' ' || current_setting('statement_timeout')",
            NULL);
    assert_string_equal(r.value, "\"$user\", public 30s");
    bw_pg_pool_stats(p, &st);
    assert_int_equal(st.resets, 2);
}

/* Cancel requests run on threads of their own, BW_PG_CANCELS_MAX at most: to a stopped server (which
   takes the connection and never answers) that many hang, one more is refused at once; once the server
   answers they end and the next is sent again. */
static void test_cancels_are_bounded(void **state)
{
    enum { N = BW_PG_CANCELS_MAX + 1 };
    bw_pg_pool_t *p = own_pool(N, "cancels");
    ctx_t x[N];
    for (int i = 0; i < N; i++)
        acquire_as(p, &x[i], "t");
    bw_test_pg_freeze(&PG);
    for (int i = 0; i < BW_PG_CANCELS_MAX; i++)
        assert_true(bw_pg_cancel(x[i].conn));
    assert_false(bw_pg_cancel(x[N - 1].conn));
    bw_test_pg_thaw(&PG);
    bool sent = false;
    for (uint64_t end = uv_now(&loop) + 20000; !sent && uv_now(&loop) < end; uv_update_time(&loop)) {
        sent = bw_pg_cancel(x[N - 1].conn);
        uv_sleep(20);
    }
    assert_true(sent);
    for (int i = 0; i < N; i++)
        bw_pg_release(x[i].conn, true);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_query_and_reuse),
        cmocka_unit_test(test_bound_and_queue),
        cmocka_unit_test(test_cancel_stops_the_query),
        cmocka_unit_test(test_idle_connections_close),
        cmocka_unit_test(test_bad_credentials),
        cmocka_unit_test(test_broken_connections_are_replaced),
        cmocka_unit_test(test_requests_pipelined_in_order),
        cmocka_unit_test(test_prepared_statements_kept_right),
        cmocka_unit_test(test_withdrawn_requests),
        cmocka_unit_test(test_connection_lost_under_a_pipeline),
        cmocka_unit_test(test_acquires_take_turns_with_requests),
        cmocka_unit_test(test_copy_is_refused),
        cmocka_unit_test(test_tenants_do_not_share_sessions),
        cmocka_unit_test(test_cancels_are_bounded),
    };
    return cmocka_run_group_tests_name("pgpool", tests, setup, teardown);
}
