/*
 * Integration: the sql job type through a real nats-server and the worker binary against a real
 * PostgreSQL (tests/support/pg_server.c): every type of the mapping, parameters (injection attempts
 * included), transactions and rollback, read-only, max_rows, named and payload connections, errors,
 * a pg_sleep cut by the deadline and by cancel (the server-side query really stops), wrong passwords.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "pg_server.h"
#include "testutil.h"

static bw_harness_t H;
static bw_test_pg_t PG;
static char conn_env[1200];

static int setup(void **state)
{
    if (bw_test_pg_start(&PG) != 0)
        return -1;
    if (bw_test_pg_exec(
            &PG,
            "CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, price numeric);"
            "INSERT INTO items (name, price) VALUES ('apple', 0.5), ('bread', 2.25), ('cheese', 7);") != 0)
        return -1;
    snprintf(conn_env, sizeof conn_env,
             "SQL_CONNECTIONS=main=%s;other=postgresql://bw:wrong@127.0.0.1:%d/bwtest", PG.url, PG.port);
    const char *const env[] = {conn_env, "SQL_POOL_MAX=3", NULL};
    return bw_harness_start(&H, env);
}

static int teardown(void **state)
{
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

/* The output's first row as compact JSON, compared with want. */
static void first_row_is(json_t *r, const char *want)
{
    json_t *row = json_array_get(json_object_get(json_object_get(r, "output"), "rows"), 0);
    char *got = json_dumps(row, JSON_COMPACT | JSON_ENCODE_ANY);
    if (got == NULL || strcmp(got, want) != 0) {
        char *all = json_dumps(r, JSON_COMPACT);
        fail_msg("first row %s, want %s (%s)", got ? got : "(none)", want, all);
    }
    free(got);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_types),
        cmocka_unit_test(test_parameters),
        cmocka_unit_test(test_writes_and_transactions),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_time),
    };
    return cmocka_run_group_tests_name("sql", tests, setup, teardown);
}
