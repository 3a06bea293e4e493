/*
 * Integration: net/pgpool.c against a real PostgreSQL (tests/support/pg_server.c: initdb in a temp dir,
 * a free loopback port) on a libuv loop: parameters, reuse, the pool's bound and its queue, cancel
 * (the server-side query really stops), a connection killed by the server, idle reaping, a server
 * restart, a wrong password.
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
    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) > 0)
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
    bw_pg_acquire(p, on_acquire, x);
    assert_true(run_until(&x->acquired, 1, 20000));
    if (x->conn == NULL)
        fail_msg("no connection: %s", x->error);
}

/* Runs sql with params on x's connection and waits for it to end. */
static void query(ctx_t *x, const char *sql, int n, const char *const *params)
{
    x->done = 0;
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
    bw_pg_pool_t *p = bw_pg_pool(&loop, PG.url, 2, 60000);
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
    bw_pg_pool_t *p = bw_pg_pool(&loop, PG.url, 2, 60000);
    ctx_t x[3] = {{0}};
    for (int i = 0; i < 3; i++)
        bw_pg_acquire(p, on_acquire, &x[i]);
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
    bw_pg_wait_t *w = bw_pg_acquire(p, on_acquire, &y);
    bw_pg_acquire_cancel(w);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(y.acquired, 0);
}

static void test_cancel_stops_the_query(void **state)
{
    bw_pg_pool_t *p = bw_pg_pool(&loop, PG.url, 2, 60000);
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
    bw_pg_pool_t *p = bw_pg_pool(&loop, PG.url, 2, 60000);
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
    bw_pg_pool_t *p = bw_pg_pool(&loop, PG.superuser_url, 3, 200);
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
    bw_pg_pool_t *q = bw_pg_pool(&loop, PG.url, 1, 60000);
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
    bw_pg_pool_t *p = bw_pg_pool(&loop, url, 1, 60000);
    ctx_t a = {0};
    bw_pg_acquire(p, on_acquire, &a);
    assert_true(run_until(&a.acquired, 1, 20000));
    assert_null(a.conn);
    assert_non_null(strstr(a.error, "password authentication failed"));
    assert_null(strstr(a.error, "wrong-secret"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_query_and_reuse),        cmocka_unit_test(test_bound_and_queue),
        cmocka_unit_test(test_cancel_stops_the_query), cmocka_unit_test(test_idle_connections_close),
        cmocka_unit_test(test_bad_credentials),        cmocka_unit_test(test_broken_connections_are_replaced),
    };
    return cmocka_run_group_tests_name("pgpool", tests, setup, teardown);
}
