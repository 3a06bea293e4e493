/*
 * Integration: the jmespath job type through a real nats-server and the worker binary. Values of every
 * JSON type, the error codes (payload, compile, runtime, size), small jobs on the loop and large ones on
 * the thread pool, the compiled-expression cache (on and off), and hostile expressions: results that
 * share structure and would encode to gigabytes, work that exceeds the budget, evaluations cut by the
 * deadline. After each hostile case the worker must still answer at once.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "testutil.h"

static bw_harness_t H;

static int setup(void **state)
{
    static const char *const env[] = {"JMESPATH_MAX_EXPRESSION_BYTES=4KiB", "JMESPATH_CACHE_ENTRIES=4", NULL};
    return bw_harness_start(&H, env);
}

static int setup_nocache(void **state)
{
    static const char *const env[] = {"JMESPATH_CACHE_ENTRIES=0", NULL};
    return bw_harness_start(&H, env);
}

static int teardown(void **state)
{
    return bw_harness_finish(&H, 0);
}

/* Runs one jmespath job; returns the result (caller decrefs). */
static json_t *run(const char *id, const char *expression, const char *data_json, int deadline_ms)
{
    json_t *data = json_loads(data_json, JSON_DECODE_ANY, NULL);
    assert_non_null(data);
    json_t *p = json_pack("{s:s,s:o}", "expression", expression, "data", data);
    char *payload = json_dumps(p, JSON_COMPACT);
    assert_int_equal(bw_harness_submit(&H, id, "jmespath", payload, deadline_ms), 0);
    free(payload);
    json_decref(p);
    json_t *r = bw_harness_result(&H, id, deadline_ms + 10000);
    if (r == NULL)
        fail_msg("no result for %s", id);
    return r;
}

static void expect_output(const char *id, const char *expression, const char *data, const char *want_json)
{
    json_t *r = run(id, expression, data, 5000);
    json_t *want = json_loads(want_json, JSON_DECODE_ANY, NULL);
    json_t *out = json_object_get(r, "output");
    if (out == NULL) /* a null value is sent without an output field (the contract forbids null) */
        out = json_null();
    if (strcmp(json_string_value(json_object_get(r, "status")), "success") != 0 || !json_equal(out, want)) {
        char *got = json_dumps(r, JSON_COMPACT);
        fail_msg("%s: %s gave %s, want %s", id, expression, got, want_json);
    }
    json_decref(want);
    json_decref(r);
}

/* The deadline is long: what these tests check is the error, never the time (a TSan build is 5-15x
   slower, and a loaded machine slower still). */
static void expect_error(const char *id, const char *expression, const char *data, const char *code,
                         const char *msg_part)
{
    json_t *r = run(id, expression, data, 60000);
    const char *got = json_string_value(json_object_get(r, "error_code"));
    const char *msg = json_string_value(json_object_get(r, "error_message"));
    if (got == NULL || strcmp(got, code) != 0 || msg == NULL || strstr(msg, msg_part) == NULL) {
        char *s = json_dumps(r, JSON_COMPACT);
        fail_msg("%s: want %s containing '%s', got %s", id, code, msg_part, s);
    }
    assert_string_equal(json_string_value(json_object_get(r, "status")), "error");
    json_decref(r);
}

/* The worker still answers promptly: an echo round trip within 2 s. */
static void still_serving(const char *id)
{
    int64_t t0 = bw_test_now_ms();
    assert_int_equal(bw_harness_submit(&H, id, "echo", "{\"alive\":true}", 5000), 0);
    json_t *r = bw_harness_result(&H, id, 5000);
    assert_non_null(r);
    assert_string_equal(json_string_value(json_object_get(r, "status")), "success");
    assert_true(bw_test_now_ms() - t0 < 5000); /* answers at all while the hostile job ran, not a speed bar */
    json_decref(r);
}

static void test_values(void **state)
{
    const char *data =
        "{\"items\":[{\"name\":\"widget\",\"price\":12.5,\"n\":3},{\"name\":\"gadget\",\"price\":7,\"n\":2}],"
        "\"city\":\"Zürich\",\"t\":true}";
    expect_output("v-filter", "items[?price > `10`].name", data, "[\"widget\"]");
    expect_output("v-sum", "sum(items[*].n)", data, "5");
    expect_output("v-avg", "avg(items[*].price)", data, "9.75");
    expect_output("v-len", "length(city)", data, "6"); /* code points, not bytes */
    expect_output("v-missing", "nothing.here", data, "null");
    expect_output("v-hash", "{first: items[0].name, count: length(items), t: t}", data,
                  "{\"first\":\"widget\",\"count\":2,\"t\":true}");
    expect_output("v-sort", "sort_by(items, &price)[*].name", data, "[\"gadget\",\"widget\"]");
    expect_output("v-literal", "`{\"a\": [1, 2.5]}`", data, "{\"a\":[1,2.5]}");
    /* integers stay integers */
    json_t *r = run("v-int", "max(items[*].n)", data, 5000);
    assert_true(json_is_integer(json_object_get(r, "output")));
    json_decref(r);
}

static void test_data_absent_is_null(void **state)
{
    assert_int_equal(bw_harness_submit(&H, "nodata", "jmespath", "{\"expression\":\"a || `7`\"}", 5000), 0);
    json_t *r = bw_harness_result(&H, "nodata", 5000);
    assert_non_null(r);
    assert_int_equal(json_integer_value(json_object_get(r, "output")), 7);
    json_decref(r);
}

static void test_errors(void **state)
{
    assert_int_equal(bw_harness_submit(&H, "e-missing", "jmespath", "{\"data\":{}}", 5000), 0);
    json_t *r = bw_harness_result(&H, "e-missing", 5000);
    assert_non_null(r);
    assert_string_equal(json_string_value(json_object_get(r, "error_code")), "MISSING_EXPRESSION");
    json_decref(r);
    expect_error("e-syntax", "foo[?bar", "{}", "JMESPATH_COMPILE_ERROR", "offset");
    expect_error("e-unknown-fn", "nope(@)", "{}", "JMESPATH_RUNTIME_ERROR", "unknown-function");
    expect_error("e-arity", "length(@, @)", "{}", "JMESPATH_RUNTIME_ERROR", "invalid-arity");
    expect_error("e-type", "abs(name)", "{\"name\":\"x\"}", "JMESPATH_RUNTIME_ERROR", "invalid-type");
    expect_error("e-step", "a[::0]", "{\"a\":[1]}", "JMESPATH_RUNTIME_ERROR", "invalid-value");
    char big[5000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    expect_error("e-long", big, "{}", "EXPRESSION_TOO_LARGE", "JMESPATH_MAX_EXPRESSION_BYTES");
    char deep[3000];
    memset(deep, '(', 1000);
    deep[1000] = 'a';
    memset(deep + 1001, ')', 1000);
    deep[2001] = '\0';
    expect_error("e-deep", deep, "{}", "JMESPATH_COMPILE_ERROR", "deeper");
    still_serving("e-alive");
}

/* A payload over 16 KiB is evaluated on the thread pool; same answers. */
static void test_large_data_on_pool(void **state)
{
    json_t *items = json_array();
    for (int i = 0; i < 2000; i++)
        json_array_append_new(items, json_pack("{s:i,s:s}", "id", i, "tag", i % 3 == 0 ? "x" : "y"));
    json_t *data = json_pack("{s:o}", "items", items);
    char *s = json_dumps(data, JSON_COMPACT);
    assert_true(strlen(s) > 16 * 1024);
    json_t *r = run("pool-1", "length(items[?tag == 'x'])", s, 10000);
    assert_string_equal(json_string_value(json_object_get(r, "status")), "success");
    assert_int_equal(json_integer_value(json_object_get(r, "output")), 667);
    json_decref(r);
    free(s);
    json_decref(data);
}

/* More distinct expressions than the cache holds (4), each used several times, interleaved. */
static void test_cache_churn(void **state)
{
    char id[64], expr[64], want[32];
    for (int round = 0; round < 3; round++)
        for (int k = 0; k < 10; k++) {
            snprintf(id, sizeof id, "churn-%d-%d", round, k);
            snprintf(expr, sizeof expr, "a[%d]", k);
            snprintf(want, sizeof want, "%d", k * 10);
            expect_output(id, expr, "{\"a\":[0,10,20,30,40,50,60,70,80,90]}", want);
        }
}

/* {a:@,b:@} nested 40 times shares structure: 2^40 leaves once encoded. */
static void test_shared_structure_is_bounded(void **state)
{
    char expr[1000] = "@";
    for (int i = 0; i < 40; i++)
        strcat(expr, " | {a: @, b: @}");
    int64_t t0 = bw_test_now_ms();
    expect_error("dag-out", expr, "[1,2,3]", "RESULT_TOO_LARGE", "max_payload");
    char expr2[3000];
    snprintf(expr2, sizeof expr2, "%s | to_string(@)", expr);
    expect_error("dag-str", expr2, "[1,2,3]", "JMESPATH_RUNTIME_ERROR", "limit");
    snprintf(expr2, sizeof expr2, "(%s) == (%s)", expr, expr);
    expect_error("dag-eq", expr2, "[1,2,3]", "JMESPATH_RUNTIME_ERROR", "limit");
    assert_true(bw_test_now_ms() - t0 < 90000); /* bounded work, not a deadline, ended each (generous: TSan) */
    still_serving("dag-alive");
}

/* A long evaluation on the pool is cut by the deadline; the worker keeps serving meanwhile. */
static void test_deadline_cuts_evaluation(void **state)
{
    char expr[1100] = "@";
    for (int i = 0; i < 40; i++)
        strcat(expr, " | {a: @, b: @}");
    strcat(expr, " | to_string(@)");
    json_t *items = json_array();
    for (int i = 0; i < 2000; i++)
        json_array_append_new(items, json_integer(i));
    char *data = json_dumps(items, JSON_COMPACT); /* > 16 KiB: straight to the pool */
    json_t *d = json_loads(data, 0, NULL);
    json_t *p = json_pack("{s:s,s:o}", "expression", expr, "data", d);
    char *payload = json_dumps(p, JSON_COMPACT);
    int64_t t0 = bw_test_now_ms();
    assert_int_equal(bw_harness_submit(&H, "cut-1", "jmespath", payload, 150), 0);
    still_serving("cut-alive");
    json_t *r = bw_harness_result(&H, "cut-1", 10000);
    assert_non_null(r);
    const char *status = json_string_value(json_object_get(r, "status"));
    /* either the deadline (150 ms) or the step budget stops it; never a success */
    assert_true(strcmp(status, "timeout") == 0 || strcmp(status, "error") == 0);
    assert_true(bw_test_now_ms() - t0 < 5000);
    json_decref(r);
    free(payload);
    free(data);
    json_decref(p);
    json_decref(items);
}

/* JSON cannot carry Infinity: an overflow is JMESPATH_RUNTIME_ERROR, a literal beyond a double's range a
   compile error; on the loop and on the thread pool alike. The largest double still works. */
static void test_overflow(void **state)
{
    expect_output("ovf-max", "avg(@)", "[1.7976931348623157e308]", "1.7976931348623157e308");
    expect_error("ovf-avg", "avg(@)", "[1e308,1e308]", "JMESPATH_RUNTIME_ERROR", "avg() overflows");
    expect_error("ovf-sum", "sum(@)", "[-1e308,-1e308]", "JMESPATH_RUNTIME_ERROR", "-Infinity");
    expect_error("ovf-num", "to_number('1e400')", "{}", "JMESPATH_RUNTIME_ERROR",
                 "beyond the range of a double");
    expect_error("ovf-lit", "`1e400`", "{}", "JMESPATH_COMPILE_ERROR", "beyond the range of a double");
    expect_error("ovf-lit2", "a == `[1, -1e400]`", "{}", "JMESPATH_COMPILE_ERROR", "beyond the range");
    /* on the pool: 3,000 numbers of 1e305 (> 16 KiB) sum past the largest double */
    json_t *a = json_array();
    for (int i = 0; i < 3000; i++)
        json_array_append_new(a, json_real(1e305));
    char *data = json_dumps(a, JSON_COMPACT);
    assert_true(strlen(data) > 16 * 1024);
    expect_error("ovf-pool", "sum(@)", data, "JMESPATH_RUNTIME_ERROR", "sum() overflows");
    expect_output("ovf-pool-ok", "sum(@[:1000])", data, "9.9999999999999921e307"); /* 1,000 of them fit */
    free(data);
    json_decref(a);
    still_serving("ovf-alive");
}

/* The worker's peak resident size (VmHWM), in KiB. */
static long worker_peak_kib(void)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)H.workers[0].pid);
    FILE *f = fopen(path, "r");
    long kib = -1;
    while (f != NULL && fgets(line, sizeof line, f) != NULL)
        if (sscanf(line, "VmHWM: %ld kB", &kib) == 1)
            break;
    if (f != NULL)
        fclose(f);
    assert_true(kib > 0);
    return kib;
}

/* Values built during an evaluation are bounded by what a result can carry (16 times NATS's max_payload,
   16 MiB here), counted as they are built: a string of 2^30 leaves from shared structure, or 8^7 array slots
   by flattening, stop there (JMESPATH_RUNTIME_ERROR) instead of holding hundreds of MB until the step
   budget runs out. */
static void test_memory_is_bounded(void **state)
{
    char expr[1100] = "@";
    for (int i = 0; i < 30; i++)
        strcat(expr, " | {a: @, b: @}");
    strcat(expr, " | to_string(@)");
    long before = worker_peak_kib();
    expect_error("mem-str", expr, "[1,2,3]", "JMESPATH_RUNTIME_ERROR", "memory budget");
    char flat[400] = "@";
    for (int i = 0; i < 7; i++)
        strcat(flat, " | [@, @, @, @, @, @, @, @] | []");
    expect_error("mem-flat", flat, "[1]", "JMESPATH_RUNTIME_ERROR", "memory budget");
    long grew = worker_peak_kib() - before;
    print_message("peak RSS grew %ld KiB over both\n", grew);
    assert_true(grew < 112 * 1024); /* after: 16 MB plain, 58 MB under ASan; before: 176 MB under ASan */
    /* what stays within the budget works as before */
    expect_output("mem-ok", "length(to_string([@, @, @, @, @, @, @, @]))", "[1,2,3]", "65");
    still_serving("mem-alive");
}

static void test_many_concurrent(void **state)
{
    char id[64];
    for (int i = 0; i < 300; i++) {
        snprintf(id, sizeof id, "many-%d", i);
        char payload[200];
        snprintf(payload, sizeof payload, "{\"expression\":\"%s\",\"data\":{\"x\":%d}}",
                 i % 3 == 0   ? "x"
                 : i % 3 == 1 ? "{v: x}.v"
                              : "[x][0]",
                 i);
        assert_int_equal(bw_harness_submit(&H, id, "jmespath", payload, 10000), 0);
    }
    for (int i = 0; i < 300; i++) {
        snprintf(id, sizeof id, "many-%d", i);
        json_t *r = bw_harness_result(&H, id, 10000);
        assert_non_null(r);
        assert_string_equal(json_string_value(json_object_get(r, "status")), "success");
        assert_int_equal(json_integer_value(json_object_get(r, "output")), i);
        json_decref(r);
    }
}

static void test_no_cache(void **state)
{
    expect_output("nc-1", "a.b", "{\"a\":{\"b\":[1]}}", "[1]");
    expect_output("nc-2", "a.b", "{\"a\":{\"b\":[2]}}", "[2]");
    expect_error("nc-3", "a.", "{}", "JMESPATH_COMPILE_ERROR", "offset");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_data_absent_is_null),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_large_data_on_pool),
        cmocka_unit_test(test_cache_churn),
        cmocka_unit_test(test_shared_structure_is_bounded),
        cmocka_unit_test(test_deadline_cuts_evaluation),
        cmocka_unit_test(test_many_concurrent),
        cmocka_unit_test(test_overflow),
        cmocka_unit_test(test_memory_is_bounded),
    };
    const struct CMUnitTest nocache[] = {
        cmocka_unit_test(test_no_cache),
    };
    int rc = cmocka_run_group_tests_name("jmespath", tests, setup, teardown);
    rc |= cmocka_run_group_tests_name("jmespath without cache", nocache, setup_nocache, teardown);
    return rc;
}
