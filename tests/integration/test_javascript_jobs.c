/*
 * Integration: the javascript job type through a real nats-server, the worker binary and its sandbox
 * processes. Every semantic point (args as globals, completion value, promises, JSON conversion, console
 * capture, fresh state per job, no host access) and every limit (time, memory, output and code size,
 * cancel, a sandbox that dies), plus hostile scripts; after each hostile case the worker still answers.
 */
#include <dirent.h>
#include <stdbool.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "http_client.h"
#include "prom_check.h"
#include "testutil.h"

static bw_harness_t H;

/* Under AddressSanitizer a sandbox's resident set carries shadow memory and a quarantine too: one
   starting up or hardening its realm has been seen past 160 MB on a CI machine (a job it held then
   failed with SCRIPT_MEMORY_LIMIT). The limit is still reached by the memory tests either way. */
#if defined(__SANITIZE_ADDRESS__)
#define MEMORY_LIMIT "SCRIPT_MAX_MEMORY_MB=384"
#else
#define MEMORY_LIMIT "SCRIPT_MAX_MEMORY_MB=160"
#endif

static int setup(void **state)
{
    static const char *const env[] = {"SCRIPT_POOL_SIZE=2",
                                      MEMORY_LIMIT,
                                      "SCRIPT_MAX_OUTPUT_BYTES=4KiB",
                                      "SCRIPT_MAX_CODE_BYTES=8KiB",
                                      "SCRIPT_MAX_LOGS=5",
                                      "WORKER_MAX_CONCURRENCY=16",
                                      NULL};
    return bw_harness_start(&H, env);
}

static int teardown(void **state)
{
    return bw_harness_finish(&H, 0);
}

/* Submits a javascript job; extra is spliced into the payload (e.g. ",\"timeout_ms\":300"). */
static void submit(const char *id, const char *code, const char *args_json, const char *extra,
                   int deadline_ms)
{
    json_t *c = json_string(code);
    char *cs = json_dumps(c, JSON_ENCODE_ANY);
    size_t n = strlen(cs) + strlen(args_json) + strlen(extra) + 64;
    char *payload = malloc(n);
    snprintf(payload, n, "{\"code\":%s,\"args\":%s%s}", cs, args_json, extra);
    assert_int_equal(bw_harness_submit(&H, id, "javascript", payload, deadline_ms), 0);
    free(payload);
    free(cs);
    json_decref(c);
}

/* The job's deadline (which bounds a script without timeout_ms) is one a loaded machine cannot reach: the
   tests that are about time set their own. */
static json_t *run(const char *id, const char *code, const char *args_json, const char *extra)
{
    submit(id, code, args_json, extra, 60000);
    json_t *r = bw_harness_result(&H, id, 90000);
    if (r == NULL)
        fail_msg("no result for %s", id);
    return r;
}

static void expect_output(const char *id, const char *code, const char *args, const char *want_json)
{
    json_t *r = run(id, code, args, "");
    json_t *want = json_loads(want_json, JSON_DECODE_ANY, NULL);
    json_t *out = json_object_get(r, "output");
    if (strcmp(json_string_value(json_object_get(r, "status")), "success") != 0 || out == NULL ||
        !json_equal(out, want)) {
        char *got = json_dumps(r, JSON_COMPACT);
        fail_msg("%s: %s gave %s, want %s", id, code, got, want_json);
    }
    json_decref(want);
    json_decref(r);
}

static void expect_fail(const char *id, const char *code, const char *extra, const char *status,
                        const char *ecode, const char *msg_part)
{
    json_t *r = run(id, code, "{}", extra);
    const char *st = json_string_value(json_object_get(r, "status"));
    const char *got = json_string_value(json_object_get(r, "error_code"));
    const char *msg = json_string_value(json_object_get(r, "error_message"));
    if (strcmp(st, status) != 0 || got == NULL || strcmp(got, ecode) != 0 || msg == NULL ||
        (msg_part != NULL && strstr(msg, msg_part) == NULL)) {
        char *s = json_dumps(r, JSON_COMPACT);
        fail_msg("%s: want %s/%s containing '%s', got %s", id, status, ecode, msg_part ? msg_part : "", s);
    }
    json_decref(r);
}

/* Fails unless the time since t0 is in [min_ms, max_ms). */
static void took_between(int64_t t0, int64_t min_ms, int64_t max_ms)
{
    int64_t took = bw_test_now_ms() - t0;
    if (took < min_ms || took >= max_ms)
        fail_msg("took %lld ms, want %lld to %lld", (long long)took, (long long)min_ms, (long long)max_ms);
}

/* A javascript job still answers, and soon (a replacement sandbox may have to start first: seconds on a
   loaded machine). */
static void still_serving(const char *id)
{
    int64_t t0 = bw_test_now_ms();
    expect_output(id, "1 + 1", "{}", "2");
    took_between(t0, 0, 20000);
}

static void test_values(void **state)
{
    expect_output("v-global", "x * 2", "{\"x\":21}", "42");
    expect_output("v-transform", "args.items.map(i => i.p * i.q).reduce((a, b) => a + b, 0)",
                  "{\"items\":[{\"p\":2,\"q\":3},{\"p\":4,\"q\":5}]}", "26");
    expect_output("v-object", "({a: [1, 2.5, 'x', null, true], b: {c: `t${1 + 1}`}})", "{}",
                  "{\"a\":[1,2.5,\"x\",null,true],\"b\":{\"c\":\"t2\"}}");
    expect_output("v-modern",
                  "class P { constructor(n) { this.n = n } get d() { return this.n * 2 } }\n"
                  "const { n, ...rest } = { n: 3, m: 4 }; [new P(n).d, rest]",
                  "{}", "[6,{\"m\":4}]");
    json_t *r = run("v-int", "10 / 2", "{}", "");
    assert_true(json_is_integer(json_object_get(r, "output")));
    json_decref(r);
}

static void test_undefined_has_no_output(void **state)
{
    json_t *r = run("undef", "let x = 1;", "{}", "");
    assert_string_equal(json_string_value(json_object_get(r, "status")), "success");
    assert_null(json_object_get(r, "output"));
    json_decref(r);
}

static void test_promises(void **state)
{
    expect_output("p-then", "Promise.resolve(5).then(v => v + 1)", "{}", "6");
    expect_output("p-async", "(async () => { const v = await Promise.resolve(x); return v * 3 })()",
                  "{\"x\":4}", "12");
    expect_fail("p-reject", "Promise.reject(new Error('nope'))", "", "error", "SCRIPT_ERROR", "nope");
    expect_fail("p-never", "new Promise(() => {})", "", "error", "SCRIPT_ERROR", NULL);
    /* an endless promise chain: stopped by the time limit, or by the memory limit when the allocator
       keeps freed memory (ASan's quarantine does) */
    json_t *r =
        run("p-chain", "function f() { return Promise.resolve().then(f) } f()", "{}", ",\"timeout_ms\":300");
    const char *code = json_string_value(json_object_get(r, "error_code"));
    assert_non_null(code);
    assert_true(strcmp(code, "SCRIPT_TIMEOUT") == 0 || strcmp(code, "SCRIPT_MEMORY_LIMIT") == 0);
    json_decref(r);
}

static void test_not_json(void **state)
{
    expect_fail("nj-fn", "(function () {})", "", "error", "SCRIPT_RESULT_NOT_JSON", NULL);
    expect_fail("nj-sym", "Symbol('s')", "", "error", "SCRIPT_RESULT_NOT_JSON", NULL);
    expect_fail("nj-nan", "({a: 0 / 0})", "", "error", "SCRIPT_RESULT_NOT_JSON", "NaN");
    expect_fail("nj-inf", "1 / 0", "", "error", "SCRIPT_RESULT_NOT_JSON", "Infinity");
    expect_fail("nj-cycle", "const o = {}; o.o = o; o", "", "error", "SCRIPT_RESULT_NOT_JSON", NULL);
}

static void test_console_captured(void **state)
{
    json_t *r =
        run("console", "console.log('hello', {a: 1}); console.warn('careful'); console.error(42); 'done'",
            "{}", "");
    assert_string_equal(json_string_value(json_object_get(r, "output")), "done");
    json_t *logs = json_object_get(r, "logs");
    assert_int_equal(json_array_size(logs), 3);
    assert_string_equal(json_string_value(json_object_get(json_array_get(logs, 1), "level")), "warn");
    assert_non_null(strstr(json_string_value(json_object_get(json_array_get(logs, 0), "message")), "hello"));
    json_decref(r);
    /* bounded: SCRIPT_MAX_LOGS=5 */
    r = run("console-many", "for (let i = 0; i < 1000; i++) console.log(i); 1", "{}", "");
    assert_int_equal(json_array_size(json_object_get(r, "logs")), 5);
    json_decref(r);
    /* logs also come with an error */
    r = run("console-err", "console.log('before'); null.x", "{}", "");
    assert_string_equal(json_string_value(json_object_get(r, "error_code")), "SCRIPT_ERROR");
    assert_int_equal(json_array_size(json_object_get(r, "logs")), 1);
    json_decref(r);
}

static void test_fresh_state_per_job(void **state)
{
    for (int i = 0; i < 4; i++) { /* more jobs than sandboxes, so some run in a process used before */
        char id[32];
        snprintf(id, sizeof id, "pollute-%d", i);
        expect_output(id,
                      "const seen = [typeof leak, typeof ({}).polluted, typeof [].map];\n"
                      "globalThis.leak = 1; Object.prototype.polluted = 1; Array.prototype.map = null;\n"
                      "var declared = 1; seen.join(',')",
                      "{}", "\"undefined,undefined,function\"");
    }
}

static void test_no_host_access(void **state)
{
    expect_output("host",
                  "[typeof require, typeof process, typeof fetch, typeof setTimeout, typeof XMLHttpRequest, "
                  "typeof Deno, typeof Bun].join()",
                  "{}", "\"undefined,undefined,undefined,undefined,undefined,undefined,undefined\"");
    json_t *r = run("host-import", "import('fs')", "{}", "");
    assert_string_not_equal(json_string_value(json_object_get(r, "status")), "success");
    json_decref(r);
}

static void test_errors_name_line_and_column(void **state)
{
    expect_fail("e-syntax", "let x = ;", "", "error", "SCRIPT_ERROR", "line 1");
    expect_fail("e-runtime", "\n\n  null.x", "", "error", "SCRIPT_ERROR", "line 3");
    expect_fail("e-throw", "throw new RangeError('bad range')", "", "error", "SCRIPT_ERROR", "bad range");
    assert_int_equal(bw_harness_submit(&H, "e-nocode", "javascript", "{\"args\":{}}", 60000), 0);
    json_t *r = bw_harness_result(&H, "e-nocode", 60000);
    assert_string_equal(json_string_value(json_object_get(r, "error_code")), "MISSING_CODE");
    json_decref(r);
    char big[9000];
    memset(big, ' ', sizeof big - 2);
    big[sizeof big - 2] = '1';
    big[sizeof big - 1] = '\0';
    expect_fail("e-big", big, "", "error", "CODE_TOO_LARGE", "SCRIPT_MAX_CODE_BYTES");
    expect_fail("e-out", "'x'.repeat(10000)", "", "error", "SCRIPT_OUTPUT_TOO_LARGE", NULL);
}

static void test_time_limit(void **state)
{
    /* stopped once the limit has passed, and within seconds: the margin holds on a loaded machine (the
       engine checks its wall-clock deadline after each slice of CPU time, which takes longer there). The
       lower bound allows 50 ms: the worker's own timers count from its loop's cached time, which can
       be a few ms behind (seen: 291 ms for 300). */
    int64_t t0 = bw_test_now_ms();
    expect_fail("t-loop", "while (true) {}", ",\"timeout_ms\":300", "timeout", "SCRIPT_TIMEOUT", NULL);
    took_between(t0, 300 - 50, 300 + 5000);
    /* no timeout_ms: the job's deadline (options.deadline_ms) bounds the script */
    t0 = bw_test_now_ms();
    submit("t-deadline", "for (;;) {}", "{}", "", 400);
    json_t *r = bw_harness_result(&H, "t-deadline", 20000);
    assert_non_null(r);
    assert_string_equal(json_string_value(json_object_get(r, "status")), "timeout");
    took_between(t0, 400 - 50, 400 + 5000);
    json_decref(r);
    still_serving("t-alive");
}

static void test_memory_limit(void **state)
{
    expect_fail("m-bomb", "const a = []; while (true) a.push(new Array(100000).fill(1.5));",
                ",\"timeout_ms\":50000", "error", "SCRIPT_MEMORY_LIMIT", "SCRIPT_MAX_MEMORY_MB");
    still_serving("m-alive");
    json_t *r = run("m-string", "'x'.repeat(2 ** 30).length", "{}", ",\"timeout_ms\":50000");
    assert_string_equal(json_string_value(json_object_get(r, "status")), "error");
    json_decref(r);
    still_serving("m-alive2");
}

/* Jobs near the memory limit, one after the other on one sandbox: what earlier jobs left (garbage, or
   memory attached to the realm's frozen built-ins through a private field, which no later job can
   reach) is not counted against the next one. Not under AddressSanitizer: its shadow memory and
   quarantine leave too little room under the limit for jobs this size. */
static void test_memory_left_by_earlier_jobs(void **state)
{
#if defined(__SANITIZE_ADDRESS__)
    bw_test_note_skip("test_memory_left_by_earlier_jobs",
                      "no room under the memory limit with AddressSanitizer");
    skip();
#endif
    char id[32];
    expect_output("left-stamp",
                  "class B { constructor(o) { return o; } }"
                  " class S extends B { #kept = new Float64Array(7.5e6).fill(1.5); }"
                  " new S(Math); new S(Object.prototype); 1",
                  "{}", "1");
    for (int i = 0; i < 4; i++) {
        snprintf(id, sizeof id, "left-big-%d", i);
        expect_output(id, "new Float64Array(11e6).fill(2).length", "{}", "11000000");
    }
}

static void test_hostile(void **state)
{
    expect_fail("h-recursion", "function f() { return f() + 1 } f()", "", "error", "SCRIPT_ERROR", NULL);
    still_serving("h-alive");
    /* catastrophic regex backtracking does not look at the engine's time limit: the job's deadline
       ends it by ending the sandbox */
    int64_t t0 = bw_test_now_ms();
    submit("h-regex", "/(a+)+b/.test('a'.repeat(40))", "{}", "", 500);
    json_t *r = bw_harness_result(&H, "h-regex", 20000);
    assert_non_null(r);
    assert_string_equal(json_string_value(json_object_get(r, "status")), "timeout");
    assert_string_equal(json_string_value(json_object_get(r, "error_code")), "SCRIPT_TIMEOUT");
    took_between(t0, 500 - 50, 500 + 5000);
    json_decref(r);
    still_serving("h-alive2");
}

static int busy_sandbox(void)
{
    return bw_test_busy_sandbox(H.workers[0].pid, 30000);
}

static double metric(const char *series)
{
    return bw_harness_metric(&H, series);
}

static void test_sandbox_crash_fails_only_that_job(void **state)
{
    double deaths = metric("beamline_worker_script_sandbox_deaths_total"),
           starts = metric("beamline_worker_script_sandbox_starts_total");
    submit("crash-1", "while (true) {}", "{}", ",\"timeout_ms\":60000", 90000);
    kill(busy_sandbox(), SIGABRT); /* as if the engine aborted while running the script */
    json_t *r = bw_harness_result(&H, "crash-1", 20000);
    assert_non_null(r);
    assert_string_equal(json_string_value(json_object_get(r, "error_code")), "SCRIPT_CRASHED");
    json_decref(r);
    still_serving("crash-alive");
    /* the pool on /metrics: the death counted, a replacement started, the pool full again */
    assert_true(metric("beamline_worker_script_sandbox_deaths_total") >= deaths + 1);
    assert_true(metric("beamline_worker_script_sandbox_starts_total") >= starts + 1);
    assert_true(metric("beamline_worker_script_sandboxes") >= 1 &&
                metric("beamline_worker_script_sandboxes") <= 2);
    assert_true(metric("beamline_worker_script_sandboxes_busy") == 0);
    assert_true(metric("beamline_worker_script_jobs_waiting") == 0);
}

static void test_cancel_stops_the_script(void **state)
{
    double kills = metric("beamline_worker_script_sandbox_stop_kills_total");
    submit("cancel-1", "while (true) {}", "{}", ",\"timeout_ms\":60000", 90000);
    int pid = busy_sandbox(); /* the script is running */
    int64_t t0 = bw_test_now_ms();
    assert_int_equal(bw_harness_cancel(&H, "cancel-1", "test"), 0);
    json_t *r = bw_harness_result(&H, "cancel-1", 20000);
    assert_non_null(r);
    assert_string_equal(json_string_value(json_object_get(r, "status")), "cancelled");
    took_between(t0, 0, 10000); /* stopped, not left running to its 60 s limit */
    json_decref(r);
    /* the sandbox that ran it is gone (killed), not left spinning */
    char st = 0;
    int ppid = 0;
    int64_t end = bw_test_now_ms() + 10000;
    while (bw_test_proc_stat(pid, &st, &ppid) == 0 && st != 'Z' && bw_test_now_ms() < end)
        bw_test_sleep_ms(20);
    assert_true(bw_test_proc_stat(pid, &st, &ppid) != 0 || st == 'Z');
    still_serving("cancel-alive");
    assert_true(metric("beamline_worker_script_sandbox_stop_kills_total") >= kills + 1);
}

static void test_many_concurrent(void **state)
{
    char id[64], payload[160];
    for (int i = 0; i < 200; i++) {
        snprintf(id, sizeof id, "many-%d", i);
        snprintf(payload, sizeof payload, "{\"code\":\"n * n\",\"args\":{\"n\":%d}}", i);
        assert_int_equal(bw_harness_submit(&H, id, "javascript", payload, 60000), 0);
    }
    for (int i = 0; i < 200; i++) {
        snprintf(id, sizeof id, "many-%d", i);
        json_t *r = bw_harness_result(&H, id, 60000);
        assert_non_null(r);
        assert_int_equal(json_integer_value(json_object_get(r, "output")), (json_int_t)i * i);
        json_decref(r);
    }
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_undefined_has_no_output),
        cmocka_unit_test(test_promises),
        cmocka_unit_test(test_not_json),
        cmocka_unit_test(test_console_captured),
        cmocka_unit_test(test_fresh_state_per_job),
        cmocka_unit_test(test_no_host_access),
        cmocka_unit_test(test_errors_name_line_and_column),
        cmocka_unit_test(test_time_limit),
        cmocka_unit_test(test_memory_limit),
        cmocka_unit_test(test_hostile),
        cmocka_unit_test(test_sandbox_crash_fails_only_that_job),
        cmocka_unit_test(test_cancel_stops_the_script),
        cmocka_unit_test(test_many_concurrent),
        /* last: it leaves a sandbox's resident size near the limit (the allocator returns freed memory to
           the system later), where a job allocating tens of MB would be stopped */
        cmocka_unit_test(test_memory_left_by_earlier_jobs),
    };
    const char *names[sizeof tests / sizeof tests[0]];
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++)
        names[i] = tests[i].name;
    bw_test_select(argc, argv, names, sizeof tests / sizeof tests[0]);
    return bw_test_exit_status(cmocka_run_group_tests_name("javascript", tests, setup, teardown));
}
