/*
 * Integration: graceful drain. On SIGTERM the worker stops taking assignments (another worker of the
 * queue group takes them), lets running and queued jobs finish within SHUTDOWN_TIMEOUT_MS, cancels the
 * rest with results, announces draining/stopped heartbeats and exits 0; results the server confirmed are
 * not dead-lettered. A second signal exits at once (128 + signal). A result that finished while NATS was
 * down is in the DLQ file as a PUBLISH_ERROR dead letter after the stop, and `dlq replay` delivers it.
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
    const char *const env[] = {"WORKER_MAX_CONCURRENCY=4", "WORKER_TYPE_CONCURRENCY=sleep=0",
                               "LOG_LEVEL=debug", buf, NULL};
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
        int hit =
            strcmp(str(m->json, "worker_id"), worker_id) == 0 && strcmp(str(m->json, "status"), status) == 0;
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

/* The dead letters of worker idx with the given reason (a JSON array; caller decrefs). */
static json_t *dead_letters(int idx, const char *reason)
{
    json_t *all = bw_harness_dead_letters(&H, idx), *out = json_array(), *v;
    size_t i;
    json_array_foreach(all, i, v) if (strcmp(str(v, "reason"), reason) == 0) json_array_append(out, v);
    json_decref(all);
    return out;
}

static void expect_no_dead_letters(int idx)
{
    json_t *all = bw_harness_dead_letters(&H, idx);
    if (json_array_size(all) > 0) {
        char *s = json_dumps(json_array_get(all, 0), JSON_COMPACT);
        fail_msg("worker %d dead-lettered %zu message(s), first: %.300s", idx, json_array_size(all), s);
    }
    json_decref(all);
}

static int setup_drain(void **state)
{
    return start_with("10000");
}

static void test_drain_finishes_in_flight_and_queued(void **state)
{
    static const char *const env[] = {"WORKER_MAX_CONCURRENCY=4", "WORKER_TYPE_CONCURRENCY=sleep=0", NULL};
    char *wid = worker_id_of(0);
    /* 4 running + 4 queued on worker 0 alone, then a second worker joins the group */
    int64_t t_submit = bw_test_now_ms();
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
    /* two waves of 700 ms from the submission (the first wave runs while worker 1 starts) */
    assert_true(bw_test_now_ms() - t_submit >= 1400 && took < 8000);
    expect_statuses("drain", 8, "success");
    expect_statuses("after", 20, "success");
    int d = heartbeat_index(wid, "draining", 0);
    assert_true(d >= 0);
    assert_true(heartbeat_index(wid, "stopped", d + 1) > d);
    free(wid);
    /* every result was confirmed by the server before the stop: no duplicate in the DLQ */
    expect_no_dead_letters(0);
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
    expect_no_dead_letters(0);
}

static int setup_second_signal(void **state)
{
    return start_with("60000");
}

static void second_signal(int first, int second)
{
    submit_n("stuck", 1, "sleep", "{\"ms\":30000}");
    wait_admitted(&H.workers[0], "stuck", 1);
    assert_int_equal(bw_test_proc_signal(&H.workers[0], first), 0);
    assert_int_equal(bw_test_proc_wait_log(&H.workers[0], "\"draining\"", 3000), 0);
    int64_t t0 = bw_test_now_ms();
    assert_int_equal(bw_test_proc_signal(&H.workers[0], second), 0);
    int code = -1;
    assert_int_equal(bw_test_proc_wait(&H.workers[0], 5000, &code), 0);
    H.exit_checked[0] = 1;
    /* at once: well before the 30 s sleep or the 60 s drain (slack for sanitizer builds) */
    assert_true(bw_test_now_ms() - t0 < 3000);
    assert_int_equal(code, 128 + second);
    /* the handler's own line (written from the signal handler, not through the loop's logger) */
    assert_true(bw_test_proc_log_count(&H.workers[0], "second signal: exiting now") >= 1);
}

static void test_second_signal_exits_at_once(void **state)
{
    second_signal(SIGTERM, SIGINT);
}

static void test_second_sigterm_exits_143(void **state)
{
    second_signal(SIGTERM, SIGTERM);
}

static int setup_disconnected(void **state)
{
    return start_with("2000");
}

/* Runs `beamline-worker dlq ARGS` against this test's server and worker 0's DLQ file; exit code. */
static int dlq_cli(const char *const *args, char **out)
{
    return bw_harness_cli(&H, bw_harness_dlq_path(&H, 0), args, out);
}

static void test_shutdown_while_nats_is_down(void **state)
{
    /* The subscription cannot drain without a server: the drain must still end. The job finishes during
       the outage: its publish only reaches nats.c's reconnect buffer, which the close discards, so the
       server never confirmed it and the result must be in the DLQ file, whole, for `dlq replay`. */
    submit_n("offline", 1, "sleep", "{\"ms\":300}");
    wait_admitted(&H.workers[0], "offline", 1);
    int port = H.nats.port;
    bw_test_nats_stop(&H.nats, 1);
    assert_int_equal(bw_test_proc_wait_log(&H.workers[0], "nats disconnected", 5000), 0);
    /* the job ends during the outage (the worker logs its result's completion) */
    assert_int_equal(bw_test_proc_wait_log(&H.workers[0], "\"job finished\"", 5000), 0);
    int64_t t0 = bw_test_now_ms();
    assert_int_equal(bw_test_proc_signal(&H.workers[0], SIGTERM), 0);
    int code = -1;
    assert_int_equal(bw_test_proc_wait(&H.workers[0], 15000, &code), 0);
    assert_int_equal(code, 0);
    assert_true(bw_test_now_ms() - t0 < 10000);

    json_t *dl = dead_letters(0, "PUBLISH_ERROR");
    assert_int_equal(json_array_size(dl), 1);
    json_t *letter = json_array_get(dl, 0);
    assert_string_equal(str(letter, "assignment_id"), "offline-0");
    assert_string_equal(str(json_object_get(letter, "payload_ref"), "subject"), BW_H_RESULTS);
    json_t *result = json_object_get(letter, "message"); /* the full result, as JSON */
    assert_true(json_is_object(result));
    assert_string_equal(str(result, "assignment_id"), "offline-0");
    assert_string_equal(str(result, "status"), "success");
    assert_string_equal(str(json_object_get(letter, "headers"), "Nats-Msg-Id"), "result-offline-0");
    assert_string_equal(str(json_object_get(letter, "headers"), "tenant_id"), "acme");
    char *stored = json_dumps(result, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(dl);

    /* the server comes back: replay delivers exactly that result, once */
    assert_int_equal(bw_test_nats_start_on(&H.nats, port), 0);
    natsConnection *nc = bw_test_client_conn(H.client);
    int64_t end = bw_test_now_ms() + 10000;
    while (natsConnection_Status(nc) != NATS_CONN_STATUS_CONNECTED && bw_test_now_ms() < end)
        bw_test_sleep_ms(10);
    assert_int_equal(natsConnection_FlushTimeout(nc, 5000), NATS_OK); /* its subscriptions are back */
    assert_int_equal(bw_harness_result_count(&H, "offline-0"), 0);
    char *out = NULL;
    const char *const replay[] = {"dlq", "replay", "--reason", "PUBLISH_ERROR", NULL};
    assert_int_equal(dlq_cli(replay, &out), 0);
    assert_non_null(strstr(out, "\"failed\":0"));
    free(out);
    json_t *r = bw_harness_result(&H, "offline-0", 5000); /* router rules and headers checked */
    assert_non_null(r);
    char *got = json_dumps(r, JSON_COMPACT | JSON_SORT_KEYS);
    assert_string_equal(got, stored);
    assert_int_equal(bw_harness_result_count(&H, "offline-0"), 1);
    free(got);
    free(stored);
    json_decref(r);
}

/* Results the server confirmed are not dead-lettered, also when the stop comes right after them. */
static void test_confirmed_results_not_dead_lettered(void **state)
{
    assert_int_equal(bw_harness_submit_many(&H, "burst", 200, "echo"), 0);
    assert_true(bw_test_client_wait_count(H.client, BW_H_RESULTS, 200, 10000) >= 200);
    assert_int_equal(bw_test_proc_signal(&H.workers[0], SIGTERM), 0);
    int code = -1;
    assert_int_equal(bw_test_proc_wait(&H.workers[0], 10000, &code), 0);
    assert_int_equal(code, 0);
    expect_no_dead_letters(0);
}

int main(void)
{
    int rc = 0;
    const struct CMUnitTest drain[] = {cmocka_unit_test(test_drain_finishes_in_flight_and_queued)};
    const struct CMUnitTest timeout[] = {cmocka_unit_test(test_timeout_cancels_the_rest)};
    const struct CMUnitTest twice[] = {
        cmocka_unit_test_setup_teardown(test_second_signal_exits_at_once, setup_second_signal, teardown),
        cmocka_unit_test_setup_teardown(test_second_sigterm_exits_143, setup_second_signal, teardown)};
    rc |= cmocka_run_group_tests_name("drain", drain, setup_drain, teardown);
    rc |= cmocka_run_group_tests_name("shutdown timeout", timeout, setup_timeout, teardown);
    rc |= cmocka_run_group_tests_name("second signal", twice, NULL, NULL);
    const struct CMUnitTest offline[] = {cmocka_unit_test(test_shutdown_while_nats_is_down)};
    rc |= cmocka_run_group_tests_name("nats down", offline, setup_disconnected, teardown);
    const struct CMUnitTest confirmed[] = {cmocka_unit_test(test_confirmed_results_not_dead_lettered)};
    rc |= cmocka_run_group_tests_name("confirmed", confirmed, setup_disconnected, teardown);
    nats_CloseAndWait(2000);
    return rc;
}
