/*
 * Integration: admission and job control through NATS. The concurrency limit and the bounded wait
 * queue, deadlines (options.deadline_ms, payload.timeout_ms, expiry while queued), cancellation of
 * running and queued jobs, and duplicate assignment ids (in flight: ignored; finished: the remembered
 * result is republished).
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

static int setup_two_slots(void **state)
{
    static const char *const env[] = {"WORKER_MAX_CONCURRENCY=2", "WORKER_TYPE_CONCURRENCY=sleep=0",
                                      "WORKER_QUEUE_MAX=100", "LOG_LEVEL=debug", NULL};
    return bw_harness_start(&H, env);
}

static int setup_tiny_queue(void **state)
{
    static const char *const env[] = {"WORKER_MAX_CONCURRENCY=1", "WORKER_TYPE_CONCURRENCY=sleep=0",
                                      "WORKER_QUEUE_MAX=1", "CAF_ACK_ENABLED=true", NULL};
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

static json_t *must_result(const char *id, int wait_ms)
{
    json_t *r = bw_harness_result(&H, id, wait_ms);
    if (r == NULL)
        fail_msg("no result for %s within %d ms", id, wait_ms);
    return r;
}

/* Waits until the worker's debug log mentions the assignment (it was accepted or queued). */
static void wait_admitted(const char *id)
{
    char needle[128];
    snprintf(needle, sizeof needle, "\"assignment_id\":\"%s\"", id);
    if (bw_test_proc_wait_log(&H.workers[0], needle, 5000) != 0)
        fail_msg("worker never admitted %s", id);
}

static int most_running_at_once(const char *prefix, int *finished, int *queued)
{
    return bw_test_log_most_running(H.workers[0].log_path, prefix, NULL, finished, queued);
}

static void test_concurrency_limit(void **state)
{
    char id[32];
    int hb_before = bw_test_client_count(H.client, BW_H_HEARTBEAT);
    for (int i = 0; i < 6; i++) {
        snprintf(id, sizeof id, "conc-%d", i);
        assert_int_equal(bw_harness_submit(&H, id, "sleep", "{\"ms\":400}", 60000), 0);
    }
    for (int i = 0; i < 6; i++) {
        snprintf(id, sizeof id, "conc-%d", i);
        json_t *r = must_result(id, 30000);
        assert_string_equal(str(r, "status"), "success");
        json_decref(r);
    }
    /* two at a time, in the order of the worker's own log (its "job finished" line follows the result) */
    int most = 0, finished = 0, queued = 0;
    int64_t end = bw_test_now_ms() + 10000;
    while ((most = most_running_at_once("conc-", &finished, &queued)), finished < 6 && bw_test_now_ms() < end)
        bw_test_sleep_ms(20);
    assert_int_equal(finished, 6);
    assert_int_equal(most, 2);
    assert_true(queued >= 1); /* six sent at once: some waited for a slot */
    /* heartbeats never report more than two running, and did see the queue */
    int hb_after = bw_test_client_count(H.client, BW_H_HEARTBEAT), saw_queue = 0;
    for (int i = hb_before; i < hb_after; i++) {
        bw_test_msg_t *m = bw_test_client_get(H.client, BW_H_HEARTBEAT, i);
        assert_true(json_integer_value(json_object_get(m->json, "jobs_in_flight")) <= 2);
        saw_queue |= json_integer_value(json_object_get(m->json, "jobs_queued")) > 0;
        bw_test_msg_destroy(m);
    }
    assert_true(saw_queue);
}

static void test_deadline_stops_the_job(void **state)
{
    /* a minute's sleep, a 300 ms deadline: stopped after the deadline and long before the sleep's end
       (the bound leaves a loaded machine seconds of slack) */
    int64_t t0 = bw_test_now_ms();
    assert_int_equal(bw_harness_submit(&H, "deadline-1", "sleep", "{\"ms\":60000}", 300), 0);
    json_t *r = must_result("deadline-1", 20000);
    int64_t took = bw_test_now_ms() - t0;
    assert_string_equal(str(r, "status"), "timeout");
    assert_string_equal(str(r, "error_code"), "TIMEOUT");
    assert_true(took >= 300 - 50 && took < 10000); /* 50 ms: the worker's timers count from loop time */
    json_decref(r);
    /* payload.timeout_ms is the tighter budget here: stopped long before the 30 s deadline */
    t0 = bw_test_now_ms();
    assert_int_equal(bw_harness_submit(&H, "deadline-2", "sleep", "{\"ms\":60000,\"timeout_ms\":250}", 30000),
                     0);
    r = must_result("deadline-2", 20000);
    took = bw_test_now_ms() - t0;
    assert_string_equal(str(r, "status"), "timeout");
    assert_true(took >= 250 - 50 && took < 10000);
    json_decref(r);
    /* the slot is free again: a normal job runs */
    assert_int_equal(bw_harness_submit(&H, "deadline-3", "sleep", "{\"ms\":10}", 5000), 0);
    r = must_result("deadline-3", 5000);
    assert_string_equal(str(r, "status"), "success");
    json_decref(r);
}

static void test_deadline_expires_in_queue(void **state)
{
    assert_int_equal(bw_harness_submit(&H, "busy-1", "sleep", "{\"ms\":3000}", 20000), 0);
    assert_int_equal(bw_harness_submit(&H, "busy-2", "sleep", "{\"ms\":3000}", 20000), 0);
    wait_admitted("busy-2");
    assert_int_equal(bw_harness_submit(&H, "queued-expiry", "sleep", "{\"ms\":10}", 300), 0);
    json_t *r = must_result("queued-expiry", 20000);
    assert_string_equal(str(r, "status"), "timeout");
    /* answered while both slots were still busy: neither busy job had a result yet */
    assert_int_equal(bw_harness_result_count(&H, "busy-1"), 0);
    assert_int_equal(bw_harness_result_count(&H, "busy-2"), 0);
    json_decref(r);
    for (int i = 1; i <= 2; i++) {
        char id[16];
        snprintf(id, sizeof id, "busy-%d", i);
        r = must_result(id, 20000);
        assert_string_equal(str(r, "status"), "success");
        json_decref(r);
    }
}

static void test_cancel_running_and_queued(void **state)
{
    assert_int_equal(bw_harness_submit(&H, "cancel-run-1", "sleep", "{\"ms\":60000}", 90000), 0);
    assert_int_equal(bw_harness_submit(&H, "cancel-run-2", "sleep", "{\"ms\":3000}", 90000), 0);
    assert_int_equal(bw_harness_submit(&H, "cancel-queued", "sleep", "{\"ms\":10}", 90000), 0);
    wait_admitted("cancel-queued");
    int64_t t0 = bw_test_now_ms();
    assert_int_equal(bw_harness_cancel(&H, "cancel-queued", "operator changed plans"), 0);
    json_t *r = must_result("cancel-queued", 20000);
    assert_string_equal(str(r, "status"), "cancelled");
    assert_string_equal(str(r, "error_code"), "CANCELLED");
    assert_string_equal(str(r, "error_message"), "operator changed plans");
    json_decref(r);
    /* still queued when cancelled: both slots were busy (neither running job had finished) */
    assert_int_equal(bw_harness_result_count(&H, "cancel-run-2"), 0);
    assert_int_equal(bw_harness_cancel(&H, "cancel-run-1", "stop it"), 0);
    r = must_result("cancel-run-1", 20000);
    assert_string_equal(str(r, "status"), "cancelled");
    assert_true(bw_test_now_ms() - t0 < 10000); /* stopped, not left to sleep its minute */
    json_decref(r);
    /* the other running job is untouched; cancelling unknown or finished ids changes nothing */
    assert_int_equal(bw_harness_cancel(&H, "no-such-assignment", "x"), 0);
    r = must_result("cancel-run-2", 20000);
    assert_string_equal(str(r, "status"), "success");
    json_decref(r);
    assert_int_equal(bw_harness_cancel(&H, "cancel-run-2", "too late"), 0);
    /* barrier: cancels are handled in order, so once a later cancel has been answered these two have
       been handled, and anything they caused was published before that answer */
    assert_int_equal(bw_harness_submit(&H, "cancel-barrier", "sleep", "{\"ms\":60000}", 90000), 0);
    wait_admitted("cancel-barrier");
    assert_int_equal(bw_harness_cancel(&H, "cancel-barrier", "barrier"), 0);
    r = must_result("cancel-barrier", 20000);
    assert_string_equal(str(r, "status"), "cancelled");
    json_decref(r);
    assert_int_equal(bw_harness_result_count(&H, "cancel-run-2"), 1);
    assert_int_equal(bw_harness_result_count(&H, "no-such-assignment"), 0);
}

static void test_duplicates(void **state)
{
    /* in flight: the duplicate is ignored, the job runs once */
    assert_int_equal(bw_harness_submit(&H, "dup-running", "sleep", "{\"ms\":2000}", 30000), 0);
    wait_admitted("dup-running");
    assert_int_equal(bw_harness_submit(&H, "dup-running", "sleep", "{\"ms\":2000}", 30000), 0);
    json_t *r = must_result("dup-running", 20000);
    json_decref(r);
    /* barrier: assignments are handled in order, so once a later one is answered the duplicate has
       been handled, and a second result for it would have been published before */
    assert_int_equal(bw_harness_submit(&H, "dup-barrier", "echo", "{}", 30000), 0);
    json_decref(must_result("dup-barrier", 20000));
    assert_int_equal(bw_harness_result_count(&H, "dup-running"), 1);
    /* finished: the remembered result is republished byte for byte */
    assert_int_equal(bw_harness_submit(&H, "dup-done", "echo", "{\"v\":1}", 5000), 0);
    r = must_result("dup-done", 5000);
    json_decref(r);
    assert_int_equal(bw_harness_submit(&H, "dup-done", "echo", "{\"v\":2}", 5000), 0);
    for (int64_t end = bw_test_now_ms() + 20000;
         bw_harness_result_count(&H, "dup-done") < 2 && bw_test_now_ms() < end;)
        bw_test_sleep_ms(20);
    assert_int_equal(bw_harness_result_count(&H, "dup-done"), 2);
    int n = bw_test_client_count(H.client, BW_H_RESULTS);
    bw_test_msg_t *first = NULL, *second = NULL;
    for (int i = 0; i < n; i++) {
        bw_test_msg_t *m = bw_test_client_get(H.client, BW_H_RESULTS, i);
        if (strcmp(str(m->json, "assignment_id"), "dup-done") != 0) {
            bw_test_msg_destroy(m);
            continue;
        }
        if (first == NULL)
            first = m;
        else
            second = m;
    }
    assert_non_null(second);
    assert_string_equal(first->data, second->data);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(second->json, "output"), "v")), 1);
    bw_test_msg_destroy(first);
    bw_test_msg_destroy(second);
}

static void test_queue_full(void **state)
{
    /* the three arrive back to back; full-run's 3 s are the slack for a loaded machine to read them */
    assert_int_equal(bw_harness_submit(&H, "full-run", "sleep", "{\"ms\":3000}", 30000), 0);
    assert_int_equal(bw_harness_submit(&H, "full-wait", "sleep", "{\"ms\":10}", 30000), 0);
    assert_int_equal(bw_harness_submit(&H, "full-over", "sleep", "{\"ms\":10}", 30000), 0);
    json_t *r = must_result("full-over", 20000);
    assert_string_equal(str(r, "status"), "error");
    assert_string_equal(str(r, "error_code"), "QUEUE_FULL");
    json_decref(r);
    bw_test_msg_t *ack = NULL;
    assert_int_equal(bw_test_client_find(H.client, BW_H_ACK, "full-over", 20000, &ack), 1);
    assert_string_equal(str(ack->json, "status"), "rejected");
    bw_test_msg_destroy(ack);
    for (int i = 0; i < 2; i++) {
        r = must_result(i ? "full-wait" : "full-run", 20000);
        assert_string_equal(str(r, "status"), "success");
        json_decref(r);
    }
}

int main(void)
{
    const struct CMUnitTest two_slots[] = {
        cmocka_unit_test(test_concurrency_limit),
        cmocka_unit_test(test_deadline_stops_the_job),
        cmocka_unit_test(test_deadline_expires_in_queue),
        cmocka_unit_test(test_cancel_running_and_queued),
        cmocka_unit_test(test_duplicates),
    };
    const struct CMUnitTest tiny_queue[] = {cmocka_unit_test(test_queue_full)};
    int rc = cmocka_run_group_tests_name("two slots", two_slots, setup_two_slots, teardown);
    rc |= cmocka_run_group_tests_name("tiny queue", tiny_queue, setup_tiny_queue, teardown);
    nats_CloseAndWait(2000);
    return rc;
}
