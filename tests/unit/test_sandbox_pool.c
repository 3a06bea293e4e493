/* Unit tests for js/sandbox.c: the pool of real js-sandbox children (the worker binary) on a libuv
   loop, one child, so that a second request is held by the child behind the first (pipelining): what
   happens to the held request when the first is cancelled, killed over memory or crashes, when the held
   one itself is cancelled, and that nothing is held behind jobs known to be long. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>
#include <signal.h>
#include <unistd.h>
#include <uv.h>

#include "core/config.h"
#include "js/sandbox.h"
#include "obs/metrics.h"
#include "testutil.h"
#include "util/clock.h"

static uv_loop_t loop;
static bw_config_t cfg;
static bw_sandbox_pool_t *pool;

typedef struct outcome {
    int calls;
    bw_sandbox_outcome_t how;
    char output[256];
} outcome_t;

static void on_done(void *ud, bw_sandbox_outcome_t how, json_t *resp, const char *message)
{
    outcome_t *o = ud;
    o->calls++;
    o->how = how;
    if (resp != NULL) {
        char *text = json_dumps(json_object_get(resp, "output"), JSON_ENCODE_ANY);
        snprintf(o->output, sizeof o->output, "%s", text != NULL ? text : "(none)");
        free(text);
    } else {
        snprintf(o->output, sizeof o->output, "%s", message != NULL ? message : "");
    }
}

static bw_sandbox_req_t *submit(const char *code, outcome_t *o)
{
    json_t *req = json_pack("{s:s,s:{},s:i,s:i,s:i,s:i}", "code", code, "args", "timeout_ms", 10000,
                            "max_output_bytes", 4096, "max_logs", 5, "max_log_bytes", 4096);
    return bw_sandbox_submit(pool, req, on_done, o);
}

/* Runs the loop until *calls reaches want (or ms pass); returns whether it did. */
static bool run_until(const int *calls, int want, int ms)
{
    uint64_t end = bw_mono_ms() + (uint64_t)ms;
    while (*calls < want && bw_mono_ms() < end)
        uv_run(&loop, UV_RUN_NOWAIT), uv_sleep(1);
    return *calls >= want;
}

static int setup(void **state)
{
    static const char *const types[] = {"javascript", NULL};
    bw_metrics_init(types);
    uv_loop_init(&loop);
    cfg.script_pool_size = 1;
    cfg.script_max_memory_mb = 300;
    return 0;
}

static int teardown(void **state)
{
    uv_run(&loop, UV_RUN_DEFAULT);
    return uv_loop_close(&loop) == 0 ? 0 : -1;
}

static int pool_up(void **state)
{
    pool = bw_sandbox_pool_create(&loop, &cfg, BW_WORKER_BIN);
    /* the first job starts the child; small ones, one at a time, teach the pool that jobs are short
       (its pace: a second request is held only behind jobs known to be short) */
    for (int i = 0; i < 30; i++) {
        outcome_t o = {0};
        submit("1", &o);
        assert_true(run_until(&o.calls, 1, 20000));
        assert_int_equal(o.how, BW_SANDBOX_OK);
    }
    return 0;
}

static int pool_down(void **state)
{
    bw_sandbox_pool_destroy(pool);
    pool = NULL;
    uv_run(&loop, UV_RUN_DEFAULT);
    return 0;
}

/* Submits a, then b at once: the one child runs a and holds b (the pool's queue is empty). A loaded
   machine may pause this process between the two for longer than the pool waits behind a job that
   started (PIPELINE_WAIT_MS), and b is then queued instead: both are withdrawn and the pair tried again. */
static void submit_pair(const char *a_code, outcome_t *a, bw_sandbox_req_t **ra, const char *b_code,
                        outcome_t *b, bw_sandbox_req_t **rb)
{
    for (int attempt = 0; attempt < 20; attempt++) {
        *ra = submit(a_code, a);
        *rb = submit(b_code, b);
        if (bw_metrics_get(BW_G_SANDBOX_QUEUE) == 0) {
            assert_int_equal(bw_metrics_get(BW_G_SANDBOXES_BUSY), 1); /* b is in the child's pipe */
            return;
        }
        bw_sandbox_cancel(*rb);
        bw_sandbox_cancel(*ra); /* kills the child */
        uint64_t end = bw_mono_ms() + 10000;
        while (bw_metrics_get(BW_G_SANDBOXES) > 0 && bw_mono_ms() < end)
            uv_run(&loop, UV_RUN_NOWAIT), uv_sleep(1);
    }
    fail_msg("the second request was never held by the child");
}

static void test_many_in_order(void **state)
{
    outcome_t o[40] = {0};
    char code[32];
    for (int i = 0; i < 40; i++) {
        snprintf(code, sizeof code, "%d * 2", i);
        submit(code, &o[i]);
    }
    assert_true(run_until(&o[39].calls, 1, 20000));
    for (int i = 0; i < 40; i++) {
        assert_int_equal(o[i].calls, 1);
        assert_int_equal(o[i].how, BW_SANDBOX_OK);
        assert_int_equal(atoi(o[i].output), i * 2);
    }
}

static pid_t child_pid(void);

/* Runs the loop until the live child has used 300 ms more CPU time than when called: it is running a
   script (the event to act on; a fixed wait may end before it started on a loaded machine). Returns the
   child's pid. */
static pid_t run_until_child_busy(void)
{
    pid_t pid = child_pid();
    assert_true(pid > 0);
    int64_t base = bw_test_proc_cpu_ms(pid), cpu = base;
    uint64_t end = bw_mono_ms() + 30000;
    while (cpu >= 0 && cpu - base < 300 && bw_mono_ms() < end) {
        uv_run(&loop, UV_RUN_NOWAIT), uv_sleep(5);
        cpu = bw_test_proc_cpu_ms(pid);
    }
    if (cpu < 0 || cpu - base < 300)
        fail_msg("the child did not start running the script");
    return pid;
}

static void test_cancel_running_requeues_held(void **state)
{
    outcome_t a = {0}, b = {0};
    bw_sandbox_req_t *ra, *rb;
    submit_pair("while (true) {}", &a, &ra, "'b'", &b, &rb);
    run_until_child_busy();
    assert_int_equal(b.calls, 0); /* it waits behind the endless loop */
    bw_sandbox_cancel(ra);
    assert_true(run_until(&b.calls, 1, 20000));
    assert_int_equal(b.how, BW_SANDBOX_OK); /* run again by a new child, not failed with the old one */
    assert_string_equal(b.output, "\"b\"");
    assert_int_equal(a.calls, 0);
}

static void test_cancel_held_while_waiting(void **state)
{
    outcome_t a = {0}, b = {0}, c = {0};
    bw_sandbox_req_t *ra, *rb;
    submit_pair("const t = Date.now(); while (Date.now() - t < 300) {} 'a'", &a, &ra, "while (true) {}", &b,
                &rb);
    bw_sandbox_cancel(rb);
    assert_true(run_until(&a.calls, 1, 20000));
    assert_int_equal(a.how, BW_SANDBOX_OK);
    assert_string_equal(a.output, "\"a\"");
    /* the endless loop nobody wants is stopped when it starts: the pool answers the next job */
    submit("'c'", &c);
    assert_true(run_until(&c.calls, 1, 20000));
    assert_int_equal(c.how, BW_SANDBOX_OK);
    assert_string_equal(c.output, "\"c\"");
    assert_int_equal(b.calls, 0);
}

static void test_memory_kill_requeues_held(void **state)
{
    outcome_t a = {0}, b = {0};
    bw_sandbox_req_t *ra, *rb;
    submit_pair("const k = []; for (;;) k.push(new Array(1e6).fill(1.5));", &a, &ra, "'b'", &b, &rb);
    assert_true(run_until(&b.calls, 1, 30000));
    assert_true(run_until(&a.calls, 1, 30000));
    assert_int_equal(a.how, BW_SANDBOX_MEMORY);
    assert_int_equal(b.how, BW_SANDBOX_OK);
    assert_string_equal(b.output, "\"b\"");
}

/* The pid of the live child (children of destroyed pools may linger as zombies: libuv does not reap a
   process whose handle was closed first). */
static pid_t child_pid(void)
{
    char path[64], buf[512] = "", state;
    int ppid;
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int)getpid(), (int)getpid());
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    for (char *tok = strtok(buf, " \n"); tok != NULL; tok = strtok(NULL, " \n"))
        if (bw_test_proc_stat(atoi(tok), &state, &ppid) == 0 && state != 'Z')
            return (pid_t)atoi(tok);
    return 0;
}

static void test_crash_fails_only_the_running_one(void **state)
{
    outcome_t a = {0}, b = {0};
    bw_sandbox_req_t *ra, *rb;
    submit_pair("while (true) {}", &a, &ra, "'b'", &b, &rb);
    kill(run_until_child_busy(), SIGABRT);
    assert_true(run_until(&b.calls, 1, 20000));
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.how, BW_SANDBOX_CRASHED);
    assert_int_equal(b.how, BW_SANDBOX_OK);
    assert_string_equal(b.output, "\"b\"");
}

/* Once jobs are known to be long, a request is not held behind one: it waits in the pool's queue, free
   to go to whichever child is free first. */
static void test_no_holding_behind_long_jobs(void **state)
{
    static const char *const slow = "const t = Date.now(); while (Date.now() - t < 100) {} 'slow'";
    for (int i = 0; i < 3; i++) {
        outcome_t o = {0};
        submit(slow, &o);
        assert_true(run_until(&o.calls, 1, 20000));
        assert_int_equal(o.how, BW_SANDBOX_OK);
    }
    outcome_t a = {0}, b = {0};
    submit(slow, &a);
    submit("'b'", &b);
    assert_int_equal(bw_metrics_get(BW_G_SANDBOX_QUEUE), 1); /* b waits in the pool, not in the child */
    assert_true(run_until(&b.calls, 1, 20000));
    assert_int_equal(a.calls, 1);
    assert_string_equal(b.output, "\"b\"");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_many_in_order, pool_up, pool_down),
        cmocka_unit_test_setup_teardown(test_cancel_running_requeues_held, pool_up, pool_down),
        cmocka_unit_test_setup_teardown(test_cancel_held_while_waiting, pool_up, pool_down),
        cmocka_unit_test_setup_teardown(test_memory_kill_requeues_held, pool_up, pool_down),
        cmocka_unit_test_setup_teardown(test_crash_fails_only_the_running_one, pool_up, pool_down),
        cmocka_unit_test_setup_teardown(test_no_holding_behind_long_jobs, pool_up, pool_down),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
