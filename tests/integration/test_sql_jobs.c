/*
 * Integration: the sql job type through a real nats-server and the worker binary against a real
 * PostgreSQL (tests/support/pg_server.c): every type of the mapping, parameters (injection attempts
 * included), transactions and rollback, read-only, max_rows, named and payload connections, errors,
 * a pg_sleep cut by the deadline and by cancel (the server-side query really stops), wrong passwords;
 * the pool's limit (jobs wait for a connection, or time out waiting), a burst of pipelined requests, a
 * server restart and a server that is down, and the mapping of every type from real table columns.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <libpq-fe.h>

#include "harness.h"
#include "pg_server.h"
#include "testutil.h"

static bw_harness_t H;
static bw_test_pg_t PG;
static char conn_env[1600], passfile[64], passfile_env[96];

static int setup(void **state)
{
    if (bw_test_pg_start(&PG) != 0)
        return -1;
    if (bw_test_pg_exec(
            &PG,
            "CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, price numeric);"
            "INSERT INTO items (name, price) VALUES ('apple', 0.5), ('bread', 2.25), ('cheese', 7);") != 0)
        return -1;
    /* named connections by host name (resolved off the loop), with several hosts of which the first
       refuses, and without a password (the worker's password file has it) */
    snprintf(conn_env, sizeof conn_env,
             "SQL_CONNECTIONS=main=%s;other=postgresql://bw:wrong@127.0.0.1:%d/bwtest;"
             "byname=postgresql://bw:bwpass@localhost:%d/bwtest;"
             "multi=host=127.0.0.1,localhost port=1,%d dbname=bwtest user=bw password=bwpass;"
             "nopass=postgresql://bw@127.0.0.1:%d/bwtest",
             PG.url, PG.port, PG.port, PG.port, PG.port);
    snprintf(passfile, sizeof passfile, "/tmp/bw-pgpass.XXXXXX");
    int fd = mkstemp(passfile);
    if (fd < 0)
        return -1;
    dprintf(fd, "127.0.0.1:%d:bwtest:bw:%s\n", PG.port, BW_TEST_PG_PASSWORD);
    close(fd); /* mkstemp made it 0600, which libpq insists on */
    snprintf(passfile_env, sizeof passfile_env, "PGPASSFILE=%s", passfile);
    /* More job slots than the default 8, so that the pool (3 connections) is what makes jobs wait and a
       burst of requests can pipeline deep rather than queue in the worker. */
    const char *const env[] = {conn_env, passfile_env, "SQL_POOL_MAX=3", "WORKER_MAX_CONCURRENCY=64", NULL};
    return bw_harness_start(&H, env);
}

static int teardown(void **state)
{
    unlink(passfile);
    int rc = bw_harness_finish(&H, 0);
    bw_test_pg_stop(&PG);
    return rc;
}

static json_t *run_sql(const char *id, int deadline_ms, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static json_t *run_sql(const char *id, int deadline_ms, const char *fmt, ...)
{
    char payload[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(payload, sizeof payload, fmt, ap);
    va_end(ap);
    assert_int_equal(bw_harness_submit(&H, id, "sql", payload, deadline_ms), 0);
    json_t *r = bw_harness_result(&H, id, deadline_ms + 10000);
    if (r == NULL)
        fail_msg("no result for %s", id);
    return r;
}

#define run(id, ...) run_sql(id, 15000, __VA_ARGS__)

static const char *str(json_t *r, const char *key)
{
    const char *s = json_string_value(json_object_get(r, key));
    return s != NULL ? s : "";
}

static void expect_error(json_t *r, const char *status, const char *code, const char *part)
{
    if (strcmp(str(r, "status"), status) != 0 || strcmp(str(r, "error_code"), code) != 0 ||
        (part != NULL && strstr(str(r, "error_message"), part) == NULL)) {
        char *s = json_dumps(r, JSON_COMPACT);
        fail_msg("want %s/%s with '%s', got %s", status, code, part ? part : "", s);
    }
}

/* The output's row i as compact JSON, compared with want. */
static void row_is(json_t *r, size_t i, const char *want)
{
    json_t *row = json_array_get(json_object_get(json_object_get(r, "output"), "rows"), i);
    char *got = json_dumps(row, JSON_COMPACT | JSON_ENCODE_ANY);
    if (got == NULL || strcmp(got, want) != 0) {
        char *all = json_dumps(r, JSON_COMPACT);
        fail_msg("row %zu %s, want %s (%s)", i, got ? got : "(none)", want, all);
    }
    free(got);
}

/* The output's first row as compact JSON, compared with want. */
static void first_row_is(json_t *r, const char *want)
{
    row_is(r, 0, want);
}

static void expect_success(json_t *r)
{
    if (strcmp(str(r, "status"), "success") != 0) {
        char *s = json_dumps(r, JSON_COMPACT);
        fail_msg("want success, got %s", s);
    }
}

static void test_types(void **state)
{
    json_t *r = run(
        "t-types",
        "{\"connection\":\"main\",\"query\":\"SELECT 1::int2 AS a, 2::int4 AS b, 9007199254740993::int8 AS "
        "big, "
        "42::int8 AS small, 1.5::float8 AS f, 'NaN'::float8 AS nan, 12345678901234567890.5::numeric AS n, "
        "true AS t, 'x'::text AS s, '{\\\"k\\\":[1]}'::jsonb AS j, '2024-01-02 03:04:05.5+00'::timestamptz "
        "AS tz, "
        "'2024-01-02 03:04:05'::timestamp AS ts, '2024-02-29'::date AS d, '\\\\x0102'::bytea AS bin, "
        "ARRAY[1,NULL,3] AS arr, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u, NULL::text AS z, "
        "'1 day'::interval AS iv\"}");
    assert_string_equal(str(r, "status"), "success");
    first_row_is(
        r, "{\"a\":1,\"b\":2,\"big\":\"9007199254740993\",\"small\":42,\"f\":1.5,\"nan\":\"NaN\","
           "\"n\":\"12345678901234567890.5\",\"t\":true,\"s\":\"x\",\"j\":{\"k\":[1]},"
           "\"tz\":\"2024-01-02T03:04:05.5Z\",\"ts\":\"2024-01-02T03:04:05\",\"d\":\"2024-02-29\","
           "\"bin\":\"AQI=\",\"arr\":[1,null,3],\"u\":\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\",\"z\":null,"
           "\"iv\":\"P1D\"}");
    json_t *cols = json_object_get(json_object_get(r, "output"), "columns");
    assert_string_equal(json_string_value(json_object_get(json_array_get(cols, 2), "type")), "int8");
    assert_string_equal(json_string_value(json_object_get(json_array_get(cols, 10), "type")), "timestamptz");
    json_decref(r);
}

static void test_parameters(void **state)
{
    json_t *r = run("p-bind", "{\"connection\":\"main\",\"query\":\"SELECT name FROM items WHERE name = $1\","
                              "\"args\":[\"apple' OR '1'='1\"]}");
    assert_int_equal(json_array_size(json_object_get(json_object_get(r, "output"), "rows")), 0);
    json_decref(r);
    r = run("p-types",
            "{\"connection\":\"main\",\"query\":\"SELECT $1::int + 1 AS a, $2::text AS b, $3::bool AS c, "
            "$4::jsonb AS d, $5::text IS NULL AS e\",\"args\":[41,\"x\",true,{\"k\":[1,2]},null]}");
    first_row_is(r, "{\"a\":42,\"b\":\"x\",\"c\":true,\"d\":{\"k\":[1,2]},\"e\":true}");
    json_decref(r);
    /* the table is still there, and a statement cannot be smuggled through a parameter */
    r = run("p-inject", "{\"connection\":\"main\",\"query\":\"SELECT $1::text AS v\",\"args\":[\"1; DROP "
                        "TABLE items; --\"]}");
    first_row_is(r, "{\"v\":\"1; DROP TABLE items; --\"}");
    json_decref(r);
    r = run("p-count", "{\"connection\":\"main\",\"query\":\"SELECT count(*) AS n FROM items\"}");
    first_row_is(r, "{\"n\":3}");
    json_decref(r);
}

static void test_writes_and_transactions(void **state)
{
    json_t *r =
        run("w-insert", "{\"connection\":\"main\",\"query\":\"INSERT INTO items (name) VALUES ($1), ($2)\","
                        "\"args\":[\"d\",\"e\"]}");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(r, "output"), "rows_affected")), 2);
    json_decref(r);
    r = run("w-update",
            "{\"connection\":\"main\",\"query\":\"UPDATE items SET price = 1 WHERE name IN ('d','e')\"}");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(r, "output"), "rows_affected")), 2);
    json_decref(r);
    /* statements: one transaction; an error rolls all of it back */
    r = run("w-tx-fail",
            "{\"connection\":\"main\",\"statements\":[{\"query\":\"DELETE FROM items WHERE name = 'd'\"},"
            "{\"query\":\"SELECT 1/0\"}]}");
    expect_error(r, "error", "DB_QUERY_ERROR", "22012");
    json_decref(r);
    r = run("w-check",
            "{\"connection\":\"main\",\"query\":\"SELECT count(*) AS n FROM items WHERE name = 'd'\"}");
    first_row_is(r, "{\"n\":1}");
    json_decref(r);
    r = run("w-tx", "{\"connection\":\"main\",\"statements\":[{\"query\":\"DELETE FROM items WHERE name = "
                    "$1\",\"args\":[\"d\"]},"
                    "{\"query\":\"SELECT count(*) AS n FROM items\"}]}");
    assert_string_equal(str(r, "status"), "success");
    first_row_is(r, "{\"n\":4}");
    assert_int_equal(json_array_size(json_object_get(json_object_get(r, "output"), "results")), 2);
    json_decref(r);
    /* read-only */
    r = run("w-ro", "{\"connection\":\"main\",\"read_only\":true,\"query\":\"DELETE FROM items\"}");
    expect_error(r, "error", "DB_QUERY_ERROR", "25006");
    json_decref(r);
    /* max_rows */
    r = run("w-max",
            "{\"connection\":\"main\",\"query\":\"SELECT generate_series(1, 10) AS i\",\"max_rows\":3}");
    assert_int_equal(json_array_size(json_object_get(json_object_get(r, "output"), "rows")), 3);
    assert_true(json_is_true(json_object_get(json_object_get(r, "output"), "truncated")));
    json_decref(r);
}

static void test_errors(void **state)
{
    json_t *r = run("e-noquery", "{\"connection\":\"main\"}");
    expect_error(r, "error", "MISSING_QUERY", NULL);
    json_decref(r);
    r = run("e-unknown", "{\"connection\":\"nope\",\"query\":\"SELECT 1\"}");
    expect_error(r, "error", "UNKNOWN_CONNECTION", "nope");
    json_decref(r);
    r = run("e-syntax", "{\"connection\":\"main\",\"query\":\"SELEC 1\"}");
    expect_error(r, "error", "DB_QUERY_ERROR", "42601");
    json_decref(r);
    r = run("e-password", "{\"connection\":\"other\",\"query\":\"SELECT 1\"}");
    expect_error(r, "error", "DB_CONNECTION_ERROR", "password authentication failed");
    assert_null(strstr(str(r, "error_message"), "wrong"));
    json_decref(r);
    r = run("e-dsn",
            "{\"connection_string\":\"postgresql://bw:bwpass@127.0.0.1:1/bwtest\",\"query\":\"SELECT 1\"}");
    expect_error(r, "error", "DB_CONNECTION_ERROR", NULL);
    json_decref(r);
    r = run("e-payload-dsn", "{\"connection_string\":\"%s\",\"query\":\"SELECT 5 AS v\"}", PG.url);
    first_row_is(r, "{\"v\":5}");
    json_decref(r);
}

static void test_time(void **state)
{
    /* the deadline: the server stops the statement (statement_timeout) */
    int64_t t0 = bw_test_now_ms();
    json_t *r = run_sql("s-deadline", 1000, "{\"connection\":\"main\",\"query\":\"SELECT pg_sleep(20)\"}");
    assert_string_equal(str(r, "status"), "timeout");
    assert_true(bw_test_now_ms() - t0 < 1000 + 3000);
    json_decref(r);
    /* cancel: the server-side query stops */
    assert_int_equal(bw_harness_submit(&H, "s-cancel", "sql",
                                       "{\"connection\":\"main\",\"query\":\"SELECT pg_sleep(25)\"}", 60000),
                     0);
    bw_test_sleep_ms(500);
    assert_int_equal(bw_harness_cancel(&H, "s-cancel", "test"), 0);
    r = bw_harness_result(&H, "s-cancel", 10000);
    assert_non_null(r);
    assert_string_equal(str(r, "status"), "cancelled");
    json_decref(r);
    bw_test_sleep_ms(300);
    r = run("s-check", "{\"connection\":\"main\",\"query\":\"SELECT count(*) AS n FROM pg_stat_activity "
                       "WHERE query LIKE 'SELECT pg_sleep%%' AND state = 'active'\"}");
    first_row_is(r, "{\"n\":0}");
    json_decref(r);
}

/* ---- the pool: its limit, waits that time out, pipelined requests ---- */

/* How many connections the worker has to the cluster, as the server sees them (the pool names its
   connections "beamline-worker"), over the test's own superuser connection; -1 when the query fails. */
static int worker_backends(PGconn *su)
{
    PGresult *res =
        PQexec(su, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'beamline-worker'");
    int n = PQresultStatus(res) == PGRES_TUPLES_OK ? atoi(PQgetvalue(res, 0, 0)) : -1;
    if (n < 0)
        fprintf(stderr, "pg_stat_activity: %s", PQerrorMessage(su));
    PQclear(res);
    return n;
}

/* How many of the jobs "<prefix>-0" ... "<prefix>-<n-1>" have a result so far. */
static int results_in(const char *prefix, int n)
{
    int done = 0;
    for (int i = 0; i < n; i++) {
        char id[64];
        snprintf(id, sizeof id, "%s-%d", prefix, i);
        done += bw_harness_result_count(&H, id) > 0;
    }
    return done;
}

/* The successful result of "<prefix>-<i>" (waiting up to wait_ms); fails the test otherwise. */
static json_t *success_of(const char *prefix, int i, int wait_ms)
{
    char id[64];
    snprintf(id, sizeof id, "%s-%d", prefix, i);
    json_t *r = bw_harness_result(&H, id, wait_ms);
    if (r == NULL)
        fail_msg("no result for %s", id);
    expect_success(r);
    return r;
}

static void test_pool_exhaustion(void **state)
{
    PGconn *su = PQconnectdb(PG.superuser_url);
    if (PQstatus(su) != CONNECTION_OK)
        fail_msg("superuser connection: %s", PQerrorMessage(su));

    /* Eight transactions (each takes a connection of its own) for three connections: five wait for
       one rather than fail, and the server never sees more than three of the worker's connections. */
    int64_t t0 = bw_test_now_ms();
    assert_int_equal(
        bw_harness_submit_many_with(
            &H, "x-tx", 8, "sql",
            "{\"connection\":\"main\",\"statements\":[{\"query\":\"SELECT pg_sleep(0.4) AS slept\"}]}",
            15000),
        0);
    int most = 0;
    while (results_in("x-tx", 8) < 8 && bw_test_now_ms() - t0 < 30000) {
        int n = worker_backends(su);
        assert_true(n >= 0);
        if (n > 3)
            fail_msg("the server sees %d connections of the worker, SQL_POOL_MAX is 3", n);
        if (n > most)
            most = n;
        bw_test_sleep_ms(50);
    }
    int64_t took = bw_test_now_ms() - t0;
    for (int i = 0; i < 8; i++)
        json_decref(success_of("x-tx", i, 1000));
    /* The pool used all of its connections (they stay open while idle) and no more: eight sleeps of
       0.4 s three at a time take three rounds at least. */
    assert_int_equal(most, 3);
    assert_true(took >= 1200);

    /* Three long transactions hold every connection; a transaction and a single statement that need
       one meet their deadline while they wait: a timeout, long before the connections come free. */
    assert_int_equal(
        bw_harness_submit_many_with(
            &H, "x-long", 3, "sql",
            "{\"connection\":\"main\",\"statements\":[{\"query\":\"SELECT pg_sleep(3) AS slept\"}]}", 15000),
        0);
    bw_test_sleep_ms(300); /* the long ones are received first, and waits are served in order anyway */
    assert_int_equal(bw_harness_submit(&H, "x-wait-tx", "sql",
                                       "{\"connection\":\"main\",\"statements\":[{\"query\":\"SELECT 1\"}]}",
                                       600),
                     0);
    assert_int_equal(
        bw_harness_submit(&H, "x-wait-req", "sql", "{\"connection\":\"main\",\"query\":\"SELECT 1\"}", 600),
        0);
    json_t *r = bw_harness_result(&H, "x-wait-tx", 10000);
    assert_non_null(r);
    expect_error(r, "timeout", "TIMEOUT", NULL);
    json_decref(r);
    r = bw_harness_result(&H, "x-wait-req", 10000);
    assert_non_null(r);
    expect_error(r, "timeout", "TIMEOUT", NULL);
    json_decref(r);
    assert_int_equal(results_in("x-long", 3), 0);
    for (int i = 0; i < 3; i++)
        json_decref(success_of("x-long", i, 15000));

    /* A burst of point queries at once: with 64 job slots for 3 connections, most of them go pipelined
       behind others (and prepared on a connection's second use); each gets its own answer. */
    enum { BURST = 200 };
    static const char *const hdrs[] = {"tenant_id", "acme", "version", "1", NULL};
    natsConnection *nc = bw_test_client_conn(H.client);
    for (int i = 0; i < BURST; i++) {
        char id[64], payload[128];
        snprintf(id, sizeof id, "x-pt-%d", i);
        snprintf(payload, sizeof payload,
                 "{\"connection\":\"main\",\"query\":\"SELECT $1::int AS n\",\"args\":[%d]}", i);
        char *a = bw_harness_assignment(id, "sql", payload, 30000);
        natsMsg *m = NULL;
        assert_int_equal(natsMsg_Create(&m, BW_H_ASSIGN, NULL, a, (int)strlen(a)), NATS_OK);
        for (int k = 0; hdrs[k] != NULL; k += 2)
            assert_int_equal(natsMsgHeader_Set(m, hdrs[k], hdrs[k + 1]), NATS_OK);
        assert_int_equal(natsConnection_PublishMsg(nc, m), NATS_OK);
        natsMsg_Destroy(m);
        free(a);
    }
    assert_int_equal(natsConnection_FlushTimeout(nc, 10000), NATS_OK);
    for (int i = 0; i < BURST; i++) {
        r = success_of("x-pt", i, 40000);
        json_t *out = json_object_get(r, "output");
        json_t *n = json_object_get(json_array_get(json_object_get(out, "rows"), 0), "n");
        if (!json_is_integer(n) || json_integer_value(n) != i ||
            json_array_size(json_object_get(out, "rows")) != 1) {
            char *s = json_dumps(r, JSON_COMPACT);
            fail_msg("x-pt-%d: want n = %d, got %s", i, i, s);
        }
        assert_string_equal(
            json_string_value(json_object_get(json_array_get(json_object_get(out, "columns"), 0), "type")),
            "int4");
        json_decref(r);
    }
    int n = worker_backends(su);
    assert_true(n >= 0 && n <= 3);
    /* /metrics tells the same story: the connections of every pool (the one for connection strings
       that came with earlier jobs too), statements pipelined and prepared, nothing left waiting */
    PGresult *res = PQexec(su, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE "
                               "'beamline-worker%'");
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    double all = atof(PQgetvalue(res, 0, 0));
    PQclear(res);
    PQfinish(su);
    assert_true(bw_harness_metric(&H, "beamline_worker_sql_connections") == all);
    assert_true(bw_harness_metric(&H, "beamline_worker_sql_pipelined_total") > 0);
    assert_true(bw_harness_metric(&H, "beamline_worker_sql_prepared_total") > 0);
    assert_true(bw_harness_metric(&H, "beamline_worker_sql_jobs_waiting") == 0);
}

/* ---- the server goes away ---- */

/* Runs `SELECT $1::int AS n` with n = k as a single statement (a request the pool may pipeline) or in a
   transaction (a connection of its own); returns the result. */
static json_t *run_n(const char *id, int k, bool tx)
{
    return tx ? run(id,
                    "{\"connection\":\"main\",\"statements\":[{\"query\":\"SELECT $1::int AS n\","
                    "\"args\":[%d]}]}",
                    k)
              : run(id, "{\"connection\":\"main\",\"query\":\"SELECT $1::int AS n\",\"args\":[%d]}", k);
}

static void expect_n(json_t *r, int k)
{
    char want[32];
    expect_success(r);
    snprintf(want, sizeof want, "{\"n\":%d}", k);
    first_row_is(r, want);
}

/* Ten jobs in a row, single statements and transactions in turn, all of which must succeed. */
static void ten_in_a_row(const char *prefix)
{
    for (int i = 0; i < 10; i++) {
        char id[64];
        snprintf(id, sizeof id, "%s-%d", prefix, i);
        json_t *r = run_n(id, 100 + i, i % 2 == 1);
        expect_n(r, 100 + i);
        json_decref(r);
    }
}

static void test_server_restart(void **state)
{
    /* The pool holds three connections (three transactions at once), and a statement prepared on some
       (the same text twice or more), before the server restarts under them. */
    assert_int_equal(
        bw_harness_submit_many_with(
            &H, "r-fill", 3, "sql",
            "{\"connection\":\"main\",\"statements\":[{\"query\":\"SELECT pg_sleep(0.2) AS slept\"}]}",
            15000),
        0);
    for (int i = 0; i < 3; i++)
        json_decref(success_of("r-fill", i, 15000));
    for (int i = 0; i < 4; i++) {
        char id[64];
        snprintf(id, sizeof id, "r-before-%d", i);
        json_t *r = run_n(id, i, false);
        expect_n(r, i);
        json_decref(r);
    }

    assert_int_equal(bw_test_pg_restart(&PG), 0);
    /* The jobs that meet a connection broken by the restart fail with DB_CONNECTION_ERROR; from the
       third job on at the latest, fresh connections serve every job. */
    bool ok = false;
    for (int i = 0; i < 3 && !ok; i++) {
        char id[64];
        snprintf(id, sizeof id, "r-after-%d", i);
        json_t *r = run_n(id, i, i % 2 == 1);
        ok = strcmp(str(r, "status"), "success") == 0;
        if (ok)
            expect_n(r, i);
        else
            expect_error(r, "error", "DB_CONNECTION_ERROR", NULL);
        json_decref(r);
    }
    assert_true(ok);
    ten_in_a_row("r-steady");

    /* The server is down: jobs fail at once with DB_CONNECTION_ERROR (no wait for the deadline), and the
       message names no password. */
    bw_test_pg_halt(&PG);
    for (int i = 0; i < 4; i++) {
        char id[64];
        snprintf(id, sizeof id, "r-down-%d", i);
        json_t *r = run_n(id, i, i % 2 == 1);
        expect_error(r, "error", "DB_CONNECTION_ERROR", NULL);
        assert_null(strstr(str(r, "error_message"), BW_TEST_PG_PASSWORD));
        assert_null(strstr(str(r, "error_message"), BW_TEST_PG_SUPERUSER_PASSWORD));
        json_decref(r);
    }
    /* Back up: the pool had no connection left (every attempt while it was down failed), so the very
       next jobs succeed. */
    assert_int_equal(bw_test_pg_resume(&PG), 0);
    ten_in_a_row("r-resumed");
}

/* Jobs running when the server restarts lose their connection: DB_CONNECTION_ERROR (README: "the
   connection broke"), whether the statement ran as a request or in a transaction of its own, rather than
   the server's goodbye (57P01, sent before it closes every session) as a query error. */
static void test_server_restart_under_jobs(void **state)
{
    const char *const ids[] = {"rr-req", "rr-tx"};
    assert_int_equal(bw_harness_submit(&H, ids[0], "sql",
                                       "{\"connection\":\"main\",\"query\":\"SELECT pg_sleep(10)\"}", 15000),
                     0);
    assert_int_equal(
        bw_harness_submit(&H, ids[1], "sql",
                          "{\"connection\":\"main\",\"statements\":[{\"query\":\"SELECT pg_sleep(10)\"}]}",
                          15000),
        0);
    bw_test_sleep_ms(500); /* both statements run on the server */
    assert_int_equal(bw_test_pg_restart(&PG), 0);
    for (int i = 0; i < 2; i++) {
        json_t *r = bw_harness_result(&H, ids[i], 20000);
        if (r == NULL)
            fail_msg("no result for %s", ids[i]);
        expect_error(r, "error", "DB_CONNECTION_ERROR", NULL);
        json_decref(r);
    }
    /* Whatever they were told, the next jobs run on fresh connections. */
    ten_in_a_row("rr-after");
}

/* ---- types, from the columns of a real table ---- */

static void test_types_from_table_columns(void **state)
{
    assert_int_equal(
        bw_test_pg_exec(
            &PG,
            "CREATE TYPE pair AS (a int, b text);"
            "CREATE TABLE typed (id int PRIMARY KEY, i2 smallint, i4 integer, i8 bigint, num numeric, f4 "
            "real,"
            " f8 double precision, b boolean, t text, vc varchar(10), ch char(3), j json, jb jsonb,"
            " ts timestamp, tz timestamptz, d date, tm time, u uuid, bin bytea, ia integer[], ta text[],"
            " p pair, iv interval);"
            "INSERT INTO typed VALUES"
            " (1, -32768, 2147483647, 9007199254740992, 12345678901234567890.123456789, 0.25, -2.5, true,"
            "  'h\xc3\xa9llo \"q\"', 'abc', 'ab', '{\"b\": [1, 2.5, null], \"a\": \"x\"}',"
            "  '{\"bb\": 1, \"a\": [true, {}]}', '2024-01-02 03:04:05.123456', '2024-06-30 23:59:59.5+02',"
            "  '2024-02-29', '23:59:59.999', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x000102ff',"
            "  '{1,NULL,3}', '{a,\"b c\",NULL,\"NULL\"}', ROW(1, 'x y'), '1 year 2 months 3 days 04:05:06'),"
            " (2, 0, -1, 9007199254740993, 'NaN', 'NaN', 'Infinity', false, '', '', 'xyz', '[]', '\"s\"',"
            "  'infinity', '2024-01-02 03:04:05-05:30', '2000-01-01', '00:00:00', "
            "  '00000000-0000-0000-0000-000000000000', '', '{}', '{}', ROW(NULL, NULL), '-1 day'),"
            " (3, 1, 1, -9223372036854775808, '-0.000001', '-Infinity', '-Infinity', NULL, NULL, NULL, NULL,"
            "  'null', '12345678901234567890', '-infinity', 'infinity', 'infinity', NULL, NULL, NULL,"
            "  '{{1,2},{3,4}}', '{\"\\\\\\\\\"}', NULL, NULL),"
            " (4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,"
            "  NULL, NULL, NULL, NULL, NULL, NULL, NULL);"),
        0);
    json_t *r = run("ty-table", "{\"connection\":\"main\",\"query\":\"SELECT * FROM typed ORDER BY id\"}");
    expect_success(r);
    json_t *out = json_object_get(r, "output");
    assert_int_equal(json_array_size(json_object_get(out, "rows")), 4);
    assert_int_equal(json_integer_value(json_object_get(out, "rows_affected")), 4);
    /* Integers within 2^53 stay numbers (2^53 itself too), numeric and larger int8 are strings; floats
       that are no numbers are strings; char(3) keeps its padding; json keeps its key order, jsonb its
       own (shorter keys first); timestamps are ISO 8601, timestamptz in UTC; bytea is base64; arrays
       are JSON arrays; a composite is its text; intervals are ISO 8601 durations (IntervalStyle). */
    row_is(r, 0,
           "{\"id\":1,\"i2\":-32768,\"i4\":2147483647,\"i8\":9007199254740992,"
           "\"num\":\"12345678901234567890.123456789\",\"f4\":0.25,\"f8\":-2.5,\"b\":true,"
           "\"t\":\"h\xc3\xa9llo \\\"q\\\"\",\"vc\":\"abc\",\"ch\":\"ab "
           "\",\"j\":{\"b\":[1,2.5,null],\"a\":\"x\"},"
           "\"jb\":{\"a\":[true,{}],\"bb\":1},\"ts\":\"2024-01-02T03:04:05.123456\","
           "\"tz\":\"2024-06-30T21:59:59.5Z\",\"d\":\"2024-02-29\",\"tm\":\"23:59:59.999\","
           "\"u\":\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\",\"bin\":\"AAEC/w==\",\"ia\":[1,null,3],"
           "\"ta\":[\"a\",\"b c\",null,\"NULL\"],\"p\":\"(1,\\\"x y\\\")\",\"iv\":\"P1Y2M3DT4H5M6S\"}");
    row_is(r, 1,
           "{\"id\":2,\"i2\":0,\"i4\":-1,\"i8\":\"9007199254740993\",\"num\":\"NaN\",\"f4\":\"NaN\","
           "\"f8\":\"Infinity\",\"b\":false,\"t\":\"\",\"vc\":\"\",\"ch\":\"xyz\",\"j\":[],\"jb\":\"s\","
           "\"ts\":\"infinity\",\"tz\":\"2024-01-02T08:34:05Z\",\"d\":\"2000-01-01\",\"tm\":\"00:00:00\","
           "\"u\":\"00000000-0000-0000-0000-000000000000\",\"bin\":\"\",\"ia\":[],\"ta\":[],\"p\":\"(,)\","
           "\"iv\":\"P-1D\"}");
    row_is(
        r, 2,
        "{\"id\":3,\"i2\":1,\"i4\":1,\"i8\":\"-9223372036854775808\",\"num\":\"-0.000001\","
        "\"f4\":\"-Infinity\",\"f8\":\"-Infinity\",\"b\":null,\"t\":null,\"vc\":null,\"ch\":null,"
        "\"j\":null,\"jb\":1.2345678901234567e19,\"ts\":\"-infinity\",\"tz\":\"infinity\","
        "\"d\":\"infinity\",\"tm\":null,\"u\":null,\"bin\":null,\"ia\":[[1,2],[3,4]],\"ta\":[\"\\\\\\\\\"],"
        "\"p\":null,\"iv\":null}");
    row_is(r, 3,
           "{\"id\":4,\"i2\":null,\"i4\":null,\"i8\":null,\"num\":null,\"f4\":null,\"f8\":null,\"b\":null,"
           "\"t\":null,\"vc\":null,\"ch\":null,\"j\":null,\"jb\":null,\"ts\":null,\"tz\":null,\"d\":null,"
           "\"tm\":null,\"u\":null,\"bin\":null,\"ia\":null,\"ta\":null,\"p\":null,\"iv\":null}");

    /* The type names: PostgreSQL's own (arrays with their leading underscore); a type the mapping does
       not know, like the composite, by its oid. */
    char pair_type[32];
    PGconn *su = PQconnectdb(PG.superuser_url);
    PGresult *res = PQexec(su, "SELECT 'pair'::regtype::oid");
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    snprintf(pair_type, sizeof pair_type, "oid:%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    PQfinish(su);
    const char *const want[][2] = {
        {"id", "int4"},   {"i2", "int2"},   {"i4", "int4"},     {"i8", "int8"},      {"num", "numeric"},
        {"f4", "float4"}, {"f8", "float8"}, {"b", "bool"},      {"t", "text"},       {"vc", "varchar"},
        {"ch", "bpchar"}, {"j", "json"},    {"jb", "jsonb"},    {"ts", "timestamp"}, {"tz", "timestamptz"},
        {"d", "date"},    {"tm", "time"},   {"u", "uuid"},      {"bin", "bytea"},    {"ia", "_int4"},
        {"ta", "_text"},  {"p", pair_type}, {"iv", "interval"},
    };
    json_t *cols = json_object_get(out, "columns");
    assert_int_equal(json_array_size(cols), sizeof want / sizeof want[0]);
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        json_t *c = json_array_get(cols, i);
        if (strcmp(str(c, "name"), want[i][0]) != 0 || strcmp(str(c, "type"), want[i][1]) != 0)
            fail_msg("column %zu: %s %s, want %s %s", i, str(c, "name"), str(c, "type"), want[i][0],
                     want[i][1]);
    }
    json_decref(r);
}

/* Connection strings: host names resolved off the loop (several hosts, the first refusing), the
   worker's password file for named connections only, and what a job's own string may not do. */
static void test_connection_strings(void **state)
{
    json_t *r = run("c-byname", "{\"connection\":\"byname\",\"query\":\"SELECT 'named' AS v\"}");
    first_row_is(r, "{\"v\":\"named\"}");
    json_decref(r);
    r = run("c-multi", "{\"connection\":\"multi\",\"query\":\"SELECT 'second host' AS v\"}");
    first_row_is(r, "{\"v\":\"second host\"}");
    json_decref(r);
    r = run("c-nopass", "{\"connection\":\"nopass\",\"query\":\"SELECT 'from the password file' AS v\"}");
    first_row_is(r, "{\"v\":\"from the password file\"}");
    json_decref(r);
    /* the same string from a job: the worker's password file is not for it */
    r = run("c-job-nopass",
            "{\"connection_string\":\"postgresql://bw@127.0.0.1:%d/bwtest\",\"query\":\"SELECT 1\"}",
            PG.port);
    expect_error(r, "error", "DB_CONNECTION_ERROR", NULL);
    json_decref(r);
    /* a job's string with a host name, resolved and allowed */
    r = run("c-job-name",
            "{\"connection_string\":\"postgresql://bw:bwpass@localhost:%d/bwtest\","
            "\"query\":\"SELECT 'job' AS v\"}",
            PG.port);
    first_row_is(r, "{\"v\":\"job\"}");
    json_decref(r);
    /* what a job's string may not do: read files of the worker's host, use its sockets, reach metadata */
    static const char *const refused[][2] = {
        {"host=127.0.0.1 dbname=bwtest sslkey=/etc/shadow", "'sslkey' is not allowed"},
        {"host=127.0.0.1 dbname=bwtest passfile=/root/.pgpass", "'passfile' is not allowed"},
        {"host=127.0.0.1 dbname=bwtest service=prod", "'service' is not allowed"},
        {"host=/var/run/postgresql dbname=bwtest", "Unix-domain sockets"},
        {"postgresql://%2Ftmp/bwtest", "Unix-domain sockets"},
        {"dbname=bwtest user=bw", "Unix-domain sockets"},
        {"host=127.0.0.1, dbname=bwtest", "Unix-domain sockets"},
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        char id[32];
        snprintf(id, sizeof id, "c-refused-%zu", i);
        r = run(id, "{\"connection_string\":\"%s\",\"query\":\"SELECT 1\"}", refused[i][0]);
        expect_error(r, "error", "INVALID_PAYLOAD", refused[i][1]);
        json_decref(r);
    }
    r = run("c-metadata",
            "{\"connection_string\":\"host=169.254.169.254 dbname=x user=x\",\"query\":\"SELECT 1\"}");
    expect_error(r, "error", "DB_CONNECTION_ERROR", "egress policy");
    json_decref(r);
    r = run("c-metadata-addr", "{\"connection_string\":\"host=db hostaddr=169.254.169.254 dbname=x user=x\","
                               "\"query\":\"SELECT 1\"}");
    expect_error(r, "error", "DB_CONNECTION_ERROR", "egress policy");
    json_decref(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_types),
        cmocka_unit_test(test_parameters),
        cmocka_unit_test(test_writes_and_transactions),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_time),
        cmocka_unit_test(test_pool_exhaustion),
        cmocka_unit_test(test_server_restart),
        cmocka_unit_test(test_server_restart_under_jobs),
        cmocka_unit_test(test_types_from_table_columns),
        /* last: its pools' connections would count in test_pool_exhaustion's census */
        cmocka_unit_test(test_connection_strings),
    };
    return cmocka_run_group_tests_name("sql", tests, setup, teardown);
}
