/*
 * Integration: several workers on one assign subject. In the (default) queue group every assignment
 * runs on exactly one worker and the load is shared; with CAF_QUEUE_GROUP empty each worker
 * subscribes on its own, so every assignment runs on every worker (the knob, documented by a test).
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

#define BURST 300
#define FANOUT 20
#define SETTLE_MS 300

static bw_harness_t H;

static int setup_grouped(void **state)
{
    static const char *const a[] = {"WORKER_ID=qg-worker-a", NULL}, *const b[] = {"WORKER_ID=qg-worker-b", NULL};
    return bw_harness_start(&H, a) == 0 && bw_harness_add_worker(&H, b) == 1 ? 0 : -1;
}

static int setup_plain(void **state)
{
    static const char *const a[] = {"WORKER_ID=plain-worker-a", "CAF_QUEUE_GROUP=", NULL},
                             *const b[] = {"WORKER_ID=plain-worker-b", "CAF_QUEUE_GROUP=", NULL};
    return bw_harness_start(&H, a) == 0 && bw_harness_add_worker(&H, b) == 1 ? 0 : -1;
}

static int teardown(void **state)
{
    return bw_harness_finish(&H, 0);
}

/* Per-assignment result counts and per-worker counts, from every result received so far. */
typedef struct tally {
    int per_id[BURST];
    int other;            /* results that do not belong to this burst */
    char workers[2][64];  /* worker ids in order of first appearance */
    int per_worker[2];
    int mismatched;       /* output.i differs from the id's index */
} tally_t;

static void count_results(const char *prefix, int n, tally_t *t)
{
    size_t plen = strlen(prefix);
    memset(t, 0, sizeof *t);
    int total = bw_test_client_count(H.client, BW_H_RESULTS);
    for (int k = 0; k < total; k++) {
        bw_test_msg_t *m = bw_test_client_get(H.client, BW_H_RESULTS, k);
        const char *id = json_string_value(json_object_get(m->json, "assignment_id"));
        const char *wid = json_string_value(json_object_get(m->json, "worker_id"));
        int i = -1;
        if (id != NULL && strncmp(id, prefix, plen) == 0 && id[plen] == '-')
            i = atoi(id + plen + 1);
        if (i < 0 || i >= n || wid == NULL) {
            t->other++;
            bw_test_msg_destroy(m);
            continue;
        }
        t->per_id[i]++;
        if (json_integer_value(json_object_get(json_object_get(m->json, "output"), "i")) != i ||
            strcmp(json_string_value(json_object_get(m->json, "status")), "success") != 0)
            t->mismatched++;
        int w = 0;
        while (w < 2 && t->workers[w][0] != '\0' && strcmp(t->workers[w], wid) != 0)
            w++;
        if (w == 2) {
            t->other++; /* a third worker id: impossible with two workers */
        } else {
            if (t->workers[w][0] == '\0')
                snprintf(t->workers[w], sizeof t->workers[w], "%s", wid);
            t->per_worker[w]++;
        }
        bw_test_msg_destroy(m);
    }
}

static void test_each_assignment_runs_once(void **state)
{
    int64_t t0 = bw_test_now_ms();
    assert_int_equal(bw_harness_submit_many(&H, "qg", BURST, "echo"), 0);
    int got = bw_test_client_wait_count(H.client, BW_H_RESULTS, BURST, 30000);
    int64_t t1 = bw_test_now_ms();
    /* Let any duplicate that would follow arrive before judging. */
    bw_test_sleep_ms(SETTLE_MS);
    tally_t t;
    count_results("qg", BURST, &t);
    print_message("%d results in %lld ms; %s ran %d, %s ran %d\n", got, (long long)(t1 - t0), t.workers[0],
                  t.per_worker[0], t.workers[1], t.per_worker[1]);
    int missing = 0, dup = 0;
    for (int i = 0; i < BURST; i++) {
        if (t.per_id[i] == 0 && missing++ < 5)
            print_error("no result for qg-%d\n", i);
        if (t.per_id[i] > 1 && dup++ < 5)
            print_error("%d results for qg-%d\n", t.per_id[i], i);
    }
    assert_int_equal(missing, 0);
    assert_int_equal(dup, 0);
    assert_int_equal(t.other, 0);
    assert_int_equal(t.mismatched, 0);
    assert_int_equal(bw_test_client_count(H.client, BW_H_RESULTS), BURST);
    /* Both members of the group did work (a 300-message burst all to one member has probability
       2^-299 with the server's random queue-group choice). */
    assert_true(t.per_worker[0] > 0);
    assert_true(t.per_worker[1] > 0);
    assert_int_equal(t.per_worker[0] + t.per_worker[1], BURST);
    assert_true(strncmp(t.workers[0], "qg-worker-", 10) == 0);
    assert_true(strncmp(t.workers[1], "qg-worker-", 10) == 0);
}

static void test_empty_group_runs_everywhere(void **state)
{
    assert_int_equal(bw_harness_submit_many(&H, "fan", FANOUT, "echo"), 0);
    int got = bw_test_client_wait_count(H.client, BW_H_RESULTS, 2 * FANOUT, 30000);
    bw_test_sleep_ms(SETTLE_MS);
    tally_t t;
    count_results("fan", FANOUT, &t);
    assert_int_equal(got, 2 * FANOUT);
    assert_int_equal(bw_test_client_count(H.client, BW_H_RESULTS), 2 * FANOUT);
    for (int i = 0; i < FANOUT; i++)
        if (t.per_id[i] != 2)
            fail_msg("%d results for fan-%d, expected one from each worker", t.per_id[i], i);
    assert_int_equal(t.other, 0);
    assert_int_equal(t.mismatched, 0);
    assert_int_equal(t.per_worker[0], FANOUT);
    assert_int_equal(t.per_worker[1], FANOUT);
    assert_true(strncmp(t.workers[0], "plain-worker-", 13) == 0);
    assert_true(strncmp(t.workers[1], "plain-worker-", 13) == 0);
}

int main(void)
{
    const struct CMUnitTest grouped[] = {cmocka_unit_test(test_each_assignment_runs_once)};
    const struct CMUnitTest plain[] = {cmocka_unit_test(test_empty_group_runs_everywhere)};
    int rc = cmocka_run_group_tests_name("queue group", grouped, setup_grouped, teardown);
    rc |= cmocka_run_group_tests_name("no queue group", plain, setup_plain, teardown);
    nats_CloseAndWait(2000);
    return rc;
}
