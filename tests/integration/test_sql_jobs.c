/*
 * Integration: the sql job type through a real nats-server and the worker binary against a real
 * PostgreSQL (tests/support/pg_server.c): every type of the mapping, parameters (injection attempts
 * included), transactions and rollback, read-only, max_rows, named and payload connections, errors,
 * a pg_sleep cut by the deadline and by cancel (the server-side query really stops), wrong passwords;
 * the pool's limit (jobs wait for a connection, or time out waiting), a burst of pipelined requests, a
 * server restart and a server that is down, and the mapping of every type from real table columns;
 * COPY refused (through NATS and exec) while other jobs go on, max_rows / SQL_MAX_ROWS /
 * SQL_MAX_RESULT_BYTES at and past their limits, the worker's memory with 3,000,000 rows for 10, column
 * names made unique in linear time, tenants that share no session state on a shared connection, a
 * port that never answers (connect_timeout) and a stopped server whose cancel requests hang off the
 * thread pool. Synchronisation on what the server shows (pg_stat_activity), never on sleeps.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <libpq-fe.h>

#include "harness.h"
#include "pg_server.h"
#include "testutil.h"

static bw_harness_t H;
static bw_test_pg_t PG;
static char conn_env[2400], passfile[64], passfile_env[96];
static int hole_fd = -1, hole_port; /* a port that accepts connections (the kernel does) and never answers */

/* A listening socket that never accepts: connections to it complete, and nothing ever answers. */
static int open_hole(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    hole_fd = socket(AF_INET, SOCK_STREAM, 0);
    if (hole_fd < 0 || bind(hole_fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(hole_fd, 8) != 0 ||
        getsockname(hole_fd, (struct sockaddr *)&a, &len) != 0)
        return -1;
    hole_port = ntohs(a.sin_port);
    return 0;
}

static int setup(void **state)
{
    if (bw_test_pg_start(&PG) != 0)
        return -1;
    if (bw_test_pg_exec(
            &PG, "CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, price numeric);"
                 "INSERT INTO items (name, price) VALUES ('apple', 0.5), ('bread', 2.25), ('cheese', 7);"
                 "CREATE ROLE bw_other NOLOGIN; GRANT bw_other TO bw;") != 0 ||
        open_hole() != 0)
        return -1;
    /* named connections by host name (resolved off the loop), with several hosts of which the first
       refuses, and without a password (the worker's password file has it) */
    snprintf(conn_env, sizeof conn_env,
             "SQL_CONNECTIONS=main=%s;other=postgresql://bw:wrong@127.0.0.1:%d/bwtest;"
             "byname=postgresql://bw:bwpass@localhost:%d/bwtest;"
             "multi=host=127.0.0.1,localhost port=1,%d dbname=bwtest user=bw password=bwpass;"
             "nopass=postgresql://bw@127.0.0.1:%d/bwtest;"
             "iso=host=127.0.0.1 port=%d dbname=bwtest user=bw password=bwpass;"
             "hole=host=127.0.0.1 port=%d dbname=bwtest user=bw password=bwpass connect_timeout=2",
             PG.url, PG.port, PG.port, PG.port, PG.port, PG.port, hole_port);
    snprintf(passfile, sizeof passfile, "/tmp/bw-pgpass.XXXXXX");
    int fd = mkstemp(passfile);
    if (fd < 0)
        return -1;
    dprintf(fd, "127.0.0.1:%d:bwtest:bw:%s\n", PG.port, BW_TEST_PG_PASSWORD);
    close(fd); /* mkstemp made it 0600, which libpq insists on */
    snprintf(passfile_env, sizeof passfile_env, "PGPASSFILE=%s", passfile);
    /* More job slots than the default 8, so that the pool (3 connections) is what makes jobs wait and a
       burst of requests can pipeline deep rather than queue in the worker. */
#ifdef __SANITIZE_ADDRESS__
    /* ASan keeps freed memory in quarantine (256 MB by default): a small one, so that the worker's RSS
       tells what it holds (test_large_result_memory) */
    static char asan[1024];
    const char *opts = getenv("ASAN_OPTIONS");
    snprintf(asan, sizeof asan, "ASAN_OPTIONS=%s%squarantine_size_mb=16", opts ? opts : "",
             opts && *opts ? ":" : "");
#define ASAN_ENV asan,
#else
#define ASAN_ENV
#endif
    /* SQL_MAX_RESULT_BYTES small enough for results that fit a NATS message; a thread pool of 2, which
       two cancel requests to a stopped server would fill if they ran on it. */
    const char *const env[] = {conn_env,
                               passfile_env,
                               "SQL_POOL_MAX=3",
                               "WORKER_MAX_CONCURRENCY=64",
                               "SQL_MAX_RESULT_BYTES=65536",
                               "WORKER_THREADPOOL_SIZE=2",
                               "UV_THREADPOOL_SIZE=2",
                               ASAN_ENV NULL};
    return bw_harness_start(&H, env);
}

static int teardown(void **state)
{
    unlink(passfile);
    if (hole_fd >= 0)
        close(hole_fd);
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

/* The first field of what sql returns as an integer, over a fresh superuser connection; -1 when the
   query fails. */
static long pg_value(const char *sql)
{
    PGconn *su = PQconnectdb(PG.superuser_url);
    PGresult *res = PQexec(su, sql);
    long n = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) > 0 ? atol(PQgetvalue(res, 0, 0)) : -1;
    if (n < 0)
        fprintf(stderr, "%s: %s", sql, PQerrorMessage(su));
    PQclear(res);
    PQfinish(su);
    return n;
}

/* Waits up to ms until sql returns want (what the server sees is the event tests wait for). */
static bool pg_wait(const char *sql, long want, int ms)
{
    int64_t end = bw_test_now_ms() + ms;
    do {
        if (pg_value(sql) == want)
            return true;
        bw_test_sleep_ms(20);
    } while (bw_test_now_ms() < end);
    return false;
}

#define ACTIVE "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND "

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
    if (!pg_wait(ACTIVE "query = 'SELECT pg_sleep(25)'", 1, 15000)) { /* it runs on the server */
        json_t *early = bw_harness_result(&H, "s-cancel", 0);
        char *dump = early != NULL ? json_dumps(early, JSON_COMPACT) : NULL, why[600];
        snprintf(why, sizeof why, "%s", dump != NULL ? dump : "no result");
        free(dump);
        json_decref(early);
        fail_msg("s-cancel never ran on the server (%s)", why);
    }
    assert_int_equal(bw_harness_cancel(&H, "s-cancel", "test"), 0);
    r = bw_harness_result(&H, "s-cancel", 10000);
    assert_non_null(r);
    assert_string_equal(str(r, "status"), "cancelled");
    json_decref(r);
    assert_true(pg_wait(ACTIVE "query = 'SELECT pg_sleep(25)'", 0, 10000));
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
    /* the long ones hold the connections (and waits are served in order anyway) */
    assert_true(pg_wait(ACTIVE "query = 'SELECT pg_sleep(3) AS slept'", 3, 15000));
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
    assert_true(pg_wait(ACTIVE "query = 'SELECT pg_sleep(10)'", 2, 15000)); /* both run on the server */
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

/* ---- COPY: refused, and the worker goes on ---- */

static void test_copy_refused(void **state)
{
    static const char *const copies[] = {
        "COPY items TO STDOUT",
        "COPY (SELECT generate_series(1, 1000000)) TO STDOUT",
        "/* a /* nested */ comment */ copy items from stdin",
        "-- a comment\n  Copy items (name) FROM STDIN WITH (FORMAT csv)",
    };
    for (size_t i = 0; i < sizeof copies / sizeof copies[0]; i++) {
        char id[32], payload[512];
        json_t *q = json_string(copies[i]);
        char *qs = json_dumps(q, JSON_ENCODE_ANY);
        snprintf(id, sizeof id, "copy-%zu", i);
        snprintf(payload, sizeof payload, "{\"connection\":\"main\",\"query\":%s}", qs);
        json_t *r = run(id, "%s", payload);
        expect_error(r, "error", "SQL_COPY_UNSUPPORTED", "COPY");
        json_decref(r);
        free(qs);
        json_decref(q);
    }
    /* among a transaction's statements: the job is refused before any of them runs */
    json_t *r =
        run("copy-tx", "{\"connection\":\"main\",\"statements\":[{\"query\":\"INSERT INTO items (name) "
                       "VALUES ('copy-tx')\"},{\"query\":\"COPY items FROM STDIN\"}]}");
    expect_error(r, "error", "SQL_COPY_UNSUPPORTED", NULL);
    json_decref(r);
    /* a table named like the keywords is no COPY with the client */
    assert_int_equal(bw_test_pg_exec(&PG, "CREATE TABLE stdin_log (v int); INSERT INTO stdin_log VALUES (1)"),
                     0);
    r = run("copy-not", "{\"connection\":\"main\",\"query\":\"SELECT v AS copy FROM stdin_log\"}");
    first_row_is(r, "{\"copy\":1}");
    json_decref(r);
    /* the worker answers other jobs at once: a sleep, and sql on the same pool */
    int64_t t0 = bw_test_now_ms();
    assert_int_equal(bw_harness_submit(&H, "copy-after-sleep", "sleep", "{\"ms\":50}", 10000), 0);
    r = run("copy-after-sql",
            "{\"connection\":\"main\",\"query\":\"SELECT count(*) AS n FROM items WHERE name = "
            "'copy-tx'\"}");
    first_row_is(r, "{\"n\":0}");
    json_decref(r);
    r = bw_harness_result(&H, "copy-after-sleep", 10000);
    assert_non_null(r);
    expect_success(r);
    json_decref(r);
    assert_true(bw_test_now_ms() - t0 < 5000);
}

/* exec runs the same handler: it answers (and exits) rather than spinning */
static void test_copy_refused_by_exec(void **state)
{
    static const char *const args[] = {"exec", NULL};
    char input[256];
    snprintf(input, sizeof input,
             "{\"type\":\"sql\",\"payload\":{\"connection\":\"main\",\"query\":\"COPY items TO STDOUT\"}}");
    const char *const env[] = {conn_env, NULL};
    char *out = NULL, *err = NULL;
    int64_t t0 = bw_test_now_ms();
    int rc = bw_test_run(args, env, input, &out, &err);
    if (rc != 1 || out == NULL || strstr(out, "SQL_COPY_UNSUPPORTED") == NULL)
        fail_msg("exec: rc %d, stdout %s, stderr %s", rc, out ? out : "", err ? err : "");
    assert_true(bw_test_now_ms() - t0 < 20000);
    free(out);
    free(err);
}

/* ---- bounds: max_rows, SQL_MAX_ROWS, SQL_MAX_RESULT_BYTES, memory ---- */

static json_t *out_of(json_t *r)
{
    return json_object_get(r, "output");
}

static void expect_rows(json_t *r, size_t n, const char *truncated)
{
    expect_success(r);
    json_t *o = out_of(r);
    if (json_array_size(json_object_get(o, "rows")) != n ||
        json_is_true(json_object_get(o, "truncated")) != (truncated != NULL) ||
        (truncated != NULL && strcmp(str(o, "truncated_reason"), truncated) != 0)) {
        char *s = json_dumps(o, JSON_COMPACT);
        fail_msg("want %zu rows, truncated by %s; got %.400s", n, truncated ? truncated : "nothing", s);
    }
}

static void test_result_bounds(void **state)
{
    /* max_rows: at the limit, past it */
    json_t *r =
        run("b-rows-at",
            "{\"connection\":\"main\",\"query\":\"SELECT generate_series(1, 5) AS i\",\"max_rows\":5}");
    expect_rows(r, 5, NULL);
    assert_int_equal(json_integer_value(json_object_get(out_of(r), "rows_affected")), 5);
    json_decref(r);
    r = run("b-rows-past",
            "{\"connection\":\"main\",\"query\":\"SELECT generate_series(1, 5) AS i\",\"max_rows\":4}");
    expect_rows(r, 4, "max_rows");
    assert_int_equal(json_integer_value(json_object_get(out_of(r), "rows_affected")), 5);
    json_decref(r);
    /* a payload's max_rows: SQL_MAX_ROWS (1000) at most */
    r = run("b-max-at", "{\"connection\":\"main\",\"query\":\"SELECT 1 AS i\",\"max_rows\":1000}");
    expect_rows(r, 1, NULL);
    json_decref(r);
    r = run("b-max-past", "{\"connection\":\"main\",\"query\":\"SELECT 1 AS i\",\"max_rows\":1001}");
    expect_error(r, "error", "INVALID_PAYLOAD", "SQL_MAX_ROWS");
    json_decref(r);
    /* SQL_MAX_RESULT_BYTES (65536 here): rows of 1,024 bytes each as JSON ({"v":"x...x"}), 64 fit */
    r = run("b-bytes-at", "{\"connection\":\"main\",\"query\":\"SELECT repeat('x', 1016) AS v FROM "
                          "generate_series(1, 64)\"}");
    expect_rows(r, 64, NULL);
    json_decref(r);
    r = run("b-bytes-past", "{\"connection\":\"main\",\"query\":\"SELECT repeat('x', 1016) AS v FROM "
                            "generate_series(1, 65)\"}");
    expect_rows(r, 64, "max_result_bytes");
    json_decref(r);
    /* the bound is the job's: statements share it */
    r = run("b-bytes-tx",
            "{\"connection\":\"main\",\"statements\":[{\"query\":\"SELECT repeat('x', 1016) AS v "
            "FROM generate_series(1, 60)\"},{\"query\":\"SELECT repeat('y', 1016) AS v FROM "
            "generate_series(1, 10)\"}]}");
    expect_rows(r, 4, "max_result_bytes");
    json_t *first = json_array_get(json_object_get(out_of(r), "results"), 0);
    assert_int_equal(json_array_size(json_object_get(first, "rows")), 60);
    assert_null(json_object_get(first, "truncated"));
    json_decref(r);
}


/* Column names made unique in linear time: 1,600 columns of one name (the loop once compared each with
   every earlier one for every suffix tried: about n^3/3 string comparisons, seconds of the loop). */
static void test_many_columns_of_one_name(void **state)
{
    enum { N = 1600 };
    char *payload = malloc(N * 12 + 128), *p = payload;
    p += sprintf(p, "{\"connection\":\"main\",\"query\":\"SELECT ");
    for (int i = 0; i < N; i++)
        p += sprintf(p, "%s%d AS a", i ? ", " : "", i);
    sprintf(p, "\"}");
    int64_t t0 = bw_test_now_ms();
    assert_int_equal(bw_harness_submit(&H, "cols", "sql", payload, 30000), 0);
    free(payload);
    json_t *r = bw_harness_result(&H, "cols", 40000);
    int64_t took = bw_test_now_ms() - t0;
    assert_non_null(r);
    expect_success(r);
    json_t *cols = json_object_get(out_of(r), "columns");
    assert_int_equal(json_array_size(cols), N);
    assert_string_equal(str(json_array_get(cols, 0), "name"), "a");
    assert_string_equal(str(json_array_get(cols, 1), "name"), "a_2");
    assert_string_equal(str(json_array_get(cols, N - 1), "name"), "a_1600");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(json_object_get(out_of(r), "rows"), 0),
                                                        "a_1600")),
                     N - 1);
    json_decref(r);
    fprintf(stderr, "sql: 1,600 columns named alike: %lld ms\n", (long long)took);
    assert_true(took < 1000);
}

/* A figure from /proc/<pid>/status, in kB (-1 when absent). */
static long proc_kb(pid_t pid, const char *field)
{
    char path[64], line[256];
    long v = -1;
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    while (f != NULL && fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, field, strlen(field)) == 0 && line[strlen(field)] == ':')
            v = atol(line + strlen(field) + 1);
    if (f != NULL)
        fclose(f);
    return v;
}

static void test_large_result_memory(void **state)
{
#ifdef __SANITIZE_ADDRESS__
    const long bound_kb = 150 * 1024; /* ASan's shadow memory, its 16 MB quarantine (see setup) */
#else
    const long bound_kb = 100 * 1024;
#endif
    pid_t pid = H.workers[0].pid;
    long before = proc_kb(pid, "VmRSS");
    assert_true(before > 0);
    /* 3,000,000 rows for max_rows 10: read one at a time and dropped past the tenth; the statement runs
       to its end (it might write), so rows_affected counts them all */
    json_t *r = run_sql("big-rows", 120000,
                        "{\"connection\":\"main\",\"query\":\"SELECT i, 'row ' || i AS label FROM "
                        "generate_series(1, 3000000) AS i\",\"max_rows\":10}");
    expect_rows(r, 10, "max_rows");
    assert_int_equal(json_integer_value(json_object_get(out_of(r), "rows_affected")), 3000000);
    json_decref(r);
    long peak = proc_kb(pid, "VmHWM");
    fprintf(stderr, "sql: 3,000,000 rows with max_rows 10: RSS %ld kB before, peak %ld kB (+%ld kB)\n",
            before, peak, peak - before);
    assert_true(peak - before < bound_kb);
    /* read-only: nothing can be lost, so the statement is stopped at the limit (its connection closed) */
    int64_t t0 = bw_test_now_ms();
    r = run_sql("big-rows-ro", 120000,
                "{\"connection\":\"main\",\"read_only\":true,\"query\":\"SELECT generate_series(1, "
                "50000000) AS i\",\"max_rows\":10}");
    expect_rows(r, 10, "max_rows");
    json_decref(r);
    int64_t took = bw_test_now_ms() - t0;
    fprintf(stderr, "sql: 50,000,000 rows read-only with max_rows 10: %lld ms\n", (long long)took);
    assert_true(took < 10000); /* all of them take a minute or so */
    assert_true(
        pg_wait(ACTIVE "query LIKE '%generate_series(1, 50000000)%' AND pid <> pg_backend_pid()", 0, 15000));
    peak = proc_kb(pid, "VmHWM");
    assert_true(peak - before < bound_kb);
}

/* ---- tenants: no session state crosses them on a shared connection ---- */

/* Publishes an assignment of tenant (payload and header). */
static void submit_as(const char *tenant, const char *id, const char *payload, int deadline_ms)
{
    char *a = bw_harness_assignment(id, "sql", payload, deadline_ms);
    json_t *j = json_loads(a, 0, NULL);
    json_object_set_new(j, "tenant_id", json_string(tenant));
    char *s = json_dumps(j, JSON_COMPACT);
    const char *const hdrs[] = {"tenant_id", tenant, "version", "1", NULL};
    assert_int_equal(bw_harness_publish_raw(&H, s, hdrs), 0);
    free(s);
    json_decref(j);
    free(a);
}

static json_t *run_as(const char *tenant, const char *id, const char *payload)
{
    submit_as(tenant, id, payload, 15000);
    json_t *r = bw_harness_result(&H, id, 30000);
    if (r == NULL)
        fail_msg("no result for %s", id);
    return r;
}

/* What a session shows of its state, as one row. */
#define SESSION_CHECK                                                                                        \
    "SELECT current_setting('search_path') AS sp, current_setting('application_name') AS app, "              \
    "to_regclass('a_secret') IS NULL AS no_temp, (SELECT count(*) FROM pg_prepared_statements WHERE name = " \
    "'a_stmt') AS prepared, (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = "           \
    "pg_backend_pid()) AS locks, current_user AS usr, pg_backend_pid() AS pid"

static const char *const CLEAN_SESSION = "{\"sp\":\"\\\"$user\\\", public\",\"app\":\"beamline-worker\","
                                         "\"no_temp\":true,\"prepared\":0,\"locks\":0,\"usr\":\"bw\"}";

/* The row without its pid (compared with CLEAN_SESSION); the pid in *pid. */
static void session_of(json_t *r, int statement, long *pid)
{
    expect_success(r);
    json_t *o = out_of(r);
    if (statement >= 0)
        o = json_array_get(json_object_get(o, "results"), (size_t)statement);
    json_t *row = json_copy(json_array_get(json_object_get(o, "rows"), 0));
    *pid = (long)json_integer_value(json_object_get(row, "pid"));
    json_object_del(row, "pid");
    char *got = json_dumps(row, JSON_COMPACT);
    if (strcmp(got, CLEAN_SESSION) != 0)
        fail_msg("another tenant's session state: %s", got);
    free(got);
    json_decref(row);
}

static void test_tenant_session_isolation(void **state)
{
    /* Tenant A leaves state behind on every connection of the pool (SQL_POOL_MAX=3): three of its
       transactions at once, held together by a lock of the test's until all three run. */
    PGconn *su = PQconnectdb(PG.superuser_url);
    assert_int_equal(PQstatus(su), CONNECTION_OK);
    PQclear(PQexec(su, "SELECT pg_advisory_lock(1)"));
    static const char *const dirty = "{\"connection\":\"iso\",\"statements\":["
                                     "{\"query\":\"SELECT set_config('search_path', 'evil_schema', false)\"},"
                                     "{\"query\":\"SET application_name = 'tenant-a'\"},"
                                     "{\"query\":\"CREATE TEMP TABLE a_secret (v text)\"},"
                                     "{\"query\":\"PREPARE a_stmt AS SELECT 1\"},"
                                     "{\"query\":\"SELECT pg_advisory_lock_shared(1)\"},"
                                     "{\"query\":\"SET ROLE bw_other\"},"
                                     "{\"query\":\"SELECT pg_backend_pid() AS pid\"}]}";
    for (int i = 0; i < 3; i++) {
        char id[32];
        snprintf(id, sizeof id, "ten-a-%d", i);
        submit_as("tenant-a", id, dirty, 30000);
    }
    assert_true(pg_wait("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tenant-a' AND "
                        "wait_event_type = 'Lock'",
                        3, 20000));
    PQclear(PQexec(su, "SELECT pg_advisory_unlock(1)"));
    PQfinish(su);
    long a_pids[3];
    for (int i = 0; i < 3; i++) {
        char id[32];
        snprintf(id, sizeof id, "ten-a-%d", i);
        json_t *r = bw_harness_result(&H, id, 30000);
        assert_non_null(r);
        expect_success(r);
        a_pids[i] = (long)json_integer_value(
            json_object_get(json_array_get(json_object_get(out_of(r), "rows"), 0), "pid"));
        json_decref(r);
    }
    assert_true(a_pids[0] != a_pids[1] && a_pids[1] != a_pids[2] && a_pids[0] != a_pids[2]);

    /* Tenant B, a single statement (a request): the pool is at its bound, every connection is A's; one
       is reset for B, which sees none of A's state. */
    long pid_b, pid_c;
    double resets = bw_harness_metric(&H, "beamline_worker_sql_tenant_resets_total");
    json_t *r = run_as("tenant-b", "ten-b-1", "{\"connection\":\"iso\",\"query\":\"" SESSION_CHECK "\"}");
    session_of(r, -1, &pid_b);
    json_decref(r);
    assert_true(pid_b == a_pids[0] || pid_b == a_pids[1] || pid_b == a_pids[2]); /* A's connection */
    /* Tenant C, a transaction (a connection of its own): the same */
    r = run_as("tenant-c", "ten-c-1",
               "{\"connection\":\"iso\",\"statements\":[{\"query\":\"" SESSION_CHECK "\"}]}");
    session_of(r, 0, &pid_c);
    json_decref(r);
    assert_true(pid_c != pid_b && (pid_c == a_pids[0] || pid_c == a_pids[1] || pid_c == a_pids[2]));
    assert_true(bw_harness_metric(&H, "beamline_worker_sql_tenant_resets_total") - resets == 2);
    /* A's own next job finds its session as it left it: a connection stays with its tenant unreset */
    r = run_as("tenant-a", "ten-a-again",
               "{\"connection\":\"iso\",\"query\":\"SELECT "
               "current_setting('search_path') AS sp\"}");
    first_row_is(r, "{\"sp\":\"evil_schema\"}");
    json_decref(r);

    /* The same tenant's jobs keep their connection's prepared statements: twelve runs of one text are
       prepared once (on the second), and never again (a reset between them would forget it). */
    double before = bw_harness_metric(&H, "beamline_worker_sql_prepared_total");
    for (int i = 0; i < 12; i++) {
        char id[32];
        snprintf(id, sizeof id, "ten-a-prep-%d", i);
        r = run_as("tenant-a", id,
                   "{\"connection\":\"iso\",\"query\":\"SELECT $1::int + 0 AS n\",\"args\":[7]}");
        first_row_is(r, "{\"n\":7}");
        json_decref(r);
    }
    assert_true(bw_harness_metric(&H, "beamline_worker_sql_prepared_total") - before == 1);
    assert_true(bw_harness_metric(&H, "beamline_worker_sql_tenant_resets_total") - resets == 2);
    /* B again, on its connection: still clean */
    r = run_as("tenant-b", "ten-b-2", "{\"connection\":\"iso\",\"query\":\"" SESSION_CHECK "\"}");
    long pid_b2;
    session_of(r, -1, &pid_b2);
    json_decref(r);
}

/* ---- a database that does not answer ---- */

static void test_unanswering_database(void **state)
{
    /* A port that accepts connections and never answers: the attempt fails at connect_timeout (2 s),
       not at the job's deadline (20 s) */
    int64_t t0 = bw_test_now_ms();
    json_t *r = run_sql("hole-1", 20000, "{\"connection\":\"hole\",\"query\":\"SELECT 1\"}");
    expect_error(r, "error", "DB_CONNECTION_ERROR", "connect_timeout");
    json_decref(r);
    assert_true(bw_test_now_ms() - t0 < 15000);

    /* The server stops (SIGSTOP: its kernel still takes connections and data) under the pool's three
       open connections. Three transactions are sent and never answered; each job ends at its deadline,
       and the cancel request sent for each hangs, on a thread of its own: the libuv pool (two threads
       here) still serves the jobs that use it (fs_blob's file work). */
    PGconn *su = PQconnectdb(PG.superuser_url);
    assert_int_equal(PQstatus(su), CONNECTION_OK);
    PQclear(PQexec(su, "SELECT pg_advisory_lock(2)"));
    assert_int_equal(
        bw_harness_submit_many_with(&H, "frz-fill", 3, "sql",
                                    "{\"connection\":\"main\",\"statements\":[{\"query\":\"SELECT "
                                    "pg_advisory_xact_lock_shared(2)\"}]}",
                                    30000),
        0);
    assert_true(
        pg_wait("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'beamline-worker' AND "
                "wait_event_type = 'Lock'",
                3, 20000));
    PQclear(PQexec(su, "SELECT pg_advisory_unlock(2)"));
    PQfinish(su);
    for (int i = 0; i < 3; i++)
        json_decref(success_of("frz-fill", i, 20000));
    bw_test_pg_freeze(&PG);
    assert_int_equal(
        bw_harness_submit_many_with(&H, "frz", 3, "sql",
                                    "{\"connection\":\"main\",\"statements\":[{\"query\":\"SELECT "
                                    "1\"}]}",
                                    1000),
        0);
    for (int i = 0; i < 3; i++) {
        char id[32];
        snprintf(id, sizeof id, "frz-%d", i);
        r = bw_harness_result(&H, id, 10000);
        if (r == NULL) {
            bw_test_pg_thaw(&PG);
            fail_msg("no result for %s", id);
        }
        expect_error(r, "timeout", "TIMEOUT", NULL);
        json_decref(r);
    }
    t0 = bw_test_now_ms();
    for (int i = 0; i < 4; i++) {
        char id[32];
        char payload[128];
        snprintf(id, sizeof id, "frz-blob-%d", i);
        snprintf(payload, sizeof payload, "{\"path\":\"frozen/%d.txt\",\"content\":\"x\"}", i);
        assert_int_equal(bw_harness_submit(&H, id, "fs_blob_put", payload, 5000), 0);
    }
    bool answered = true;
    for (int i = 0; i < 4 && answered; i++) {
        char id[32];
        snprintf(id, sizeof id, "frz-blob-%d", i);
        r = bw_harness_result(&H, id, 8000);
        answered = r != NULL && strcmp(str(r, "status"), "success") == 0;
        json_decref(r);
    }
    int64_t took = bw_test_now_ms() - t0;
    bw_test_pg_thaw(&PG);
    if (!answered || took > 5000)
        fail_msg("fs_blob jobs while cancel requests hang: answered %d, in %lld ms", answered,
                 (long long)took);

    /* Thawed: the connections answer again (a late cancel may still hit a statement: a few tries) */
    bool ok = false;
    for (int i = 0; i < 20 && !ok; i++) {
        char id[32];
        snprintf(id, sizeof id, "thaw-%d", i);
        r = run(id, "{\"connection\":\"main\",\"query\":\"SELECT 1 AS one\"}");
        ok = strcmp(str(r, "status"), "success") == 0;
        json_decref(r);
    }
    assert_true(ok);
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
        cmocka_unit_test(test_copy_refused),
        cmocka_unit_test(test_copy_refused_by_exec),
        cmocka_unit_test(test_result_bounds),
        cmocka_unit_test(test_many_columns_of_one_name),
        cmocka_unit_test(test_large_result_memory),
        cmocka_unit_test(test_tenant_session_isolation),
        cmocka_unit_test(test_unanswering_database),
        /* last: its pools' connections would count in test_pool_exhaustion's census */
        cmocka_unit_test(test_connection_strings),
    };
    return cmocka_run_group_tests_name("sql", tests, setup, teardown);
}
