/*
 * Integration: graceful drain. On SIGTERM the worker stops taking assignments (another worker of the
 * queue group takes them), lets running and queued jobs finish within SHUTDOWN_TIMEOUT_MS, cancels the
 * rest with results, announces draining/stopped heartbeats and exits 0. A second signal exits at once.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "testutil.h"

static bw_harness_t H;

static int start_with(const char *timeout)
{
    static char buf[64];
    snprintf(buf, sizeof buf, "SHUTDOWN_TIMEOUT_MS=%s", timeout);
    const char *const env[] = {"WORKER_MAX_CONCURRENCY=4", "LOG_LEVEL=debug", buf, NULL};
    return bw_harness_start(&H, env);
}

static int teardown(void **state)
{
    return bw_harness_finish(&H, 0);
}

static const char *str(json_t *r, const char *k)
{
    return json_string_value(json_object_get(r, k));
}

static void submit_n(const char *prefix, int n, const char *type, const char *payload)
{
    char id[64];
    for (int i = 0; i < n; i++) {
        snprintf(id, sizeof id, "%s-%d", prefix, i);
        assert_int_equal(bw_harness_submit(&H, id, type, payload, 60000), 0);
    }
}

static void wait_admitted(bw_test_proc_t *p, const char *prefix, int n)
{
    char needle[128];
    for (int i = 0; i < n; i++) {
        snprintf(needle, sizeof needle, "\"assignment_id\":\"%s-%d\"", prefix, i);
        if (bw_test_proc_wait_log(p, needle, 5000) != 0)
            fail_msg("worker never admitted %s", needle);
    }
}

static void expect_statuses(const char *prefix, int n, const char *status)
{
    char id[64];
    for (int i = 0; i < n; i++) {
        snprintf(id, sizeof id, "%s-%d", prefix, i);
        json_t *r = bw_harness_result(&H, id, 10000);
        if (r == NULL)
            fail_msg("lost: no result for %s", id);
        if (strcmp(str(r, "status"), status) != 0)
            fail_msg("%s: status %s, want %s", id, str(r, "status"), status);
        assert_int_equal(bw_harness_result_count(&H, id), 1);
        json_decref(r);
    }
}

/* Index of the first heartbeat from worker_id with the given status at or after `from`, or -1. */
static int heartbeat_index(const char *worker_id, const char *status, int from)
{
    int n = bw_test_client_count(H.client, BW_H_HEARTBEAT);
    for (int i = from; i < n; i++) {
        bw_test_msg_t *m = bw_test_client_get(H.client, BW_H_HEARTBEAT, i);
        int hit = strcmp(str(m->json, "worker_id"), worker_id) == 0 && strcmp(str(m->json, "status"), status) == 0;
        bw_test_msg_destroy(m);
        if (hit)
            return i;
    }
    return -1;
}

static char *worker_id_of(int idx)
{
    /* every log line carries worker_id; read it from the "worker ready" line */
    char *log = bw_test_read_file(H.workers[idx].log_path, NULL);
    char *p = strstr(log, "\"worker_id\":\"");
    assert_non_null(p);
    p += 13;
    char *id = strndup(p, strcspn(p, "\""));
    free(log);
    return id;
}

static int setup_drain(void **state)
{
    return start_with("10000");
}

static void test_drain_finishes_in_flight_and_queued(void **state)
{
    static const char *const env[] = {"WORKER_MAX_CONCURRENCY=4", NULL};
    char *wid = worker_id_of(0);
    /* 4 running + 4 queued on worker 0 alone, then a second worker joins the group */
    submit_n("drain", 8, "sleep", "{\"ms\":700}");
    wait_admitted(&H.workers[0], "drain", 8);
    assert_int_equal(bw_harness_add_worker(&H, env), 1);
    int64_t t0 = bw_test_now_ms();
    assert_int_equal(bw_test_proc_signal(&H.workers[0], SIGTERM), 0);
    /* while worker 0 drains, new assignments go to worker 1: none lost */
    assert_int_equal(bw_test_proc_wait_log(&H.workers[0], "\"draining\"", 3000), 0);
    submit_n("after", 20, "echo", "{}");
    int code = -1;
    assert_int_equal(bw_test_proc_wait(&H.workers[0], 10000, &code), 0);
    assert_int_equal(code, 0);
    int64_t took = bw_test_now_ms() - t0;
    print_message("drain took %lld ms\n", (long long)took);
    assert_true(took >= 1000 && took < 8000); /* two waves of 700 ms */
    expect_statuses("drain", 8, "success");
    expect_statuses("after", 20, "success");
    int d = heartbeat_index(wid, "draining", 0);
    assert_true(d >= 0);
    assert_true(heartbeat_index(wid, "stopped", d + 1) > d);
    free(wid);
}

static int setup_timeout(void **state)
{
    return start_with("300");
}

static void test_timeout_cancels_the_rest(void **state)
{
    submit_n("slow", 6, "sleep", "{\"ms\":30000}");
    wait_admitted(&H.workers[0], "slow", 6);
    int64_t t0 = bw_test_now_ms();
    assert_int_equal(bw_test_proc_signal(&H.workers[0], SIGTERM), 0);
    int code = -1;
    assert_int_equal(bw_test_proc_wait(&H.workers[0], 5000, &code), 0);
    assert_int_equal(code, 0);
    assert_true(bw_test_now_ms() - t0 < 3000);
    expect_statuses("slow", 6, "cancelled");
}

static int setup_second_signal(void **state)
{
    return start_with("60000");
}

static void test_second_signal_exits_at_once(void **state)
{
    submit_n("stuck", 1, "sleep", "{\"ms\":30000}");
    wait_admitted(&H.workers[0], "stuck", 1);
    assert_int_equal(bw_test_proc_signal(&H.workers[0], SIGTERM), 0);
    assert_int_equal(bw_test_proc_wait_log(&H.workers[0], "\"draining\"", 3000), 0);
    int64_t t0 = bw_test_now_ms();
    assert_int_equal(bw_test_proc_signal(&H.workers[0], SIGINT), 0);
    int code = -1;
    assert_int_equal(bw_test_proc_wait(&H.workers[0], 3000, &code), 0);
    H.exit_checked[0] = 1;
    /* at once: well before the 30 s sleep or the 60 s drain (2 s of slack for sanitizer builds) */
    assert_true(bw_test_now_ms() - t0 < 2000);
    assert_int_equal(code, 128 + SIGINT);
    H.exit_checked[0] = 1;
}

static int setup_disconnected(void **state)
{
    return start_with("2000");
}

static void test_shutdown_while_nats_is_down(void **state)
{
    /* the subscription cannot drain without a server: the drain must still end, and the job that
       finishes meanwhile must not hang the exit (its result goes to the DLQ when it cannot be sent) */
    submit_n("offline", 1, "sleep", "{\"ms\":300}");
    wait_admitted(&H.workers[0], "offline", 1);
    bw_test_nats_stop(&H.nats, 0);
    assert_int_equal(bw_test_proc_wait_log(&H.workers[0], "nats disconnected", 5000), 0);
    int64_t t0 = bw_test_now_ms();
    assert_int_equal(bw_test_proc_signal(&H.workers[0], SIGTERM), 0);
    int code = -1;
    assert_int_equal(bw_test_proc_wait(&H.workers[0], 15000, &code), 0);
    assert_int_equal(code, 0);
    assert_true(bw_test_now_ms() - t0 < 10000);
}

int main(void)
{
    int rc = 0;
    const struct CMUnitTest drain[] = {cmocka_unit_test(test_drain_finishes_in_flight_and_queued)};
    const struct CMUnitTest timeout[] = {cmocka_unit_test(test_timeout_cancels_the_rest)};
    const struct CMUnitTest twice[] = {cmocka_unit_test(test_second_signal_exits_at_once)};
    rc |= cmocka_run_group_tests_name("drain", drain, setup_drain, teardown);
    rc |= cmocka_run_group_tests_name("shutdown timeout", timeout, setup_timeout, teardown);
    rc |= cmocka_run_group_tests_name("second signal", twice, setup_second_signal, teardown);
    const struct CMUnitTest offline[] = {cmocka_unit_test(test_shutdown_while_nats_is_down)};
    rc |= cmocka_run_group_tests_name("nats down", offline, setup_disconnected, teardown);
    nats_CloseAndWait(2000);
    return rc;
}
