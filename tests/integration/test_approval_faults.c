/*
 * Integration: what the approval journal keeps when things go wrong, through a real nats-server and the
 * real worker binary.
 *  - a full disk (RLIMIT_FSIZE set on the running worker, so its writes fail with EFBIG exactly as on a
 *    full file system): a new approval is answered APPROVAL_STORE_ERROR, a vote is refused store_error,
 *    the journal holds no torn line, and once there is room again both work;
 *  - kill -9 with approvals pending and votes cast: the next worker on the same APPROVAL_DIR has them all,
 *    a decision completes one, and one decided before the kill (quorum reached, result maybe not out) is
 *    answered at start;
 *  - one worker per APPROVAL_DIR: a second one stops at start naming the directory;
 *  - compaction: after many approvals ended, the journal is rewritten to the pending ones, and a restart
 *    still finds exactly those;
 *  - `exec` has no journal: human_approval fails APPROVAL_UNAVAILABLE, unless an allowed automatic response
 *    decides it.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "harness.h"
#include "testutil.h"

#define REQUESTS "caf.human.request.v1"
#define DECIDE "caf.human.decision.v1"

static bw_harness_t H;

static int setup(void **state)
{
    if (bw_harness_start(&H, NULL) != 0)
        return -1;
    return bw_test_client_collect(H.client, REQUESTS);
}

static int teardown(void **state)
{
    return bw_harness_finish(&H, 0);
}

/* ---- helpers ---- */

static char *journal_path(int worker)
{
    char *p = NULL;
    assert_true(asprintf(&p, "%s/approvals.jsonl", bw_harness_approval_dir(&H, worker)) > 0);
    return p;
}

static off_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? st.st_size : -1;
}

/* Lines of the journal of worker; fails the test on a line that is not whole JSON (a torn line). */
static int journal_lines(int worker)
{
    char *path = journal_path(worker);
    char *text = bw_test_read_file(path, NULL);
    int n = 0;
    for (char *line = text, *nl; line != NULL && *line != '\0'; line = nl + 1) {
        nl = strchr(line, '\n');
        assert_non_null(nl); /* the worker never leaves a line without its end */
        json_t *j = json_loadb(line, (size_t)(nl - line), 0, NULL);
        if (!json_is_object(j))
            fail_msg("journal line %d is not a JSON object: %.120s", n + 1, line);
        json_decref(j);
        n++;
    }
    free(text);
    free(path);
    return n;
}

/* Sets RLIMIT_FSIZE of worker's process: its writes past `bytes` fail with EFBIG (the worker ignores
   SIGXFSZ). RLIM_INFINITY lifts it. */
static void limit_file_size(int worker, rlim_t bytes)
{
    struct rlimit rl = {bytes, RLIM_INFINITY};
    assert_int_equal(prlimit(H.workers[worker].pid, RLIMIT_FSIZE, &rl, NULL), 0);
}

static void submit_approval(const char *id, const char *extra)
{
    char payload[512];
    snprintf(payload, sizeof payload, "{\"prompt\":\"Go %s?\",\"timeout_ms\":600000%s%s}", id,
             extra ? "," : "", extra ? extra : "");
    assert_int_equal(bw_harness_submit(&H, id, "human_approval", payload, 0), 0);
}

/* Waits until the ApprovalRequest of id was published. */
static void wait_requested(const char *id)
{
    assert_true(bw_test_client_find(H.client, REQUESTS, id, 10000, NULL) >= 1);
}

/* A decision as a NATS request on subject; returns the reply (caller decrefs) or NULL without one. */
static json_t *decide_on(const char *subject, const char *id, const char *decision, const char *approver)
{
    json_t *d = json_pack("{ssssssss}", "assignment_id", id, "tenant_id", "acme", "decision", decision,
                          "approver", approver);
    char *s = json_dumps(d, JSON_COMPACT);
    natsMsg *reply = NULL;
    natsStatus st = natsConnection_RequestString(&reply, bw_test_client_conn(H.client), subject, s, 5000);
    json_t *r = st == NATS_OK
                    ? json_loadb(natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply), 0, NULL)
                    : NULL;
    natsMsg_Destroy(reply);
    free(s);
    json_decref(d);
    return r;
}

static json_t *decide(const char *id, const char *decision, const char *approver)
{
    return decide_on(DECIDE, id, decision, approver);
}

static void assert_reply(json_t *r, bool accepted, const char *reason)
{
    assert_non_null(r);
    assert_int_equal(json_is_true(json_object_get(r, "accepted")), accepted);
    if (reason != NULL)
        assert_string_equal(json_string_value(json_object_get(r, "reason")), reason);
    json_decref(r);
}

/* Stops worker i (SIGKILL when kill9, else SIGTERM and a clean exit) and starts a new one on its
   APPROVAL_DIR; returns the new index. */
static int restart(int i, bool kill9)
{
    char dir[400];
    snprintf(dir, sizeof dir, "APPROVAL_DIR=%s", bw_harness_approval_dir(&H, i));
    int code = -1;
    assert_int_equal(bw_test_proc_signal(&H.workers[i], kill9 ? SIGKILL : SIGTERM), 0);
    assert_int_equal(bw_test_proc_wait(&H.workers[i], 20000, &code), 0);
    assert_int_equal(code, kill9 ? 128 + SIGKILL : 0);
    H.exit_checked[i] = 1;
    const char *const env[] = {dir, NULL};
    int j = bw_harness_add_worker(&H, env);
    assert_true(j > i);
    return j;
}

/* ---- tests ---- */

static void test_full_disk_refuses_new_approvals_and_votes_then_recovers(void **state)
{
    submit_approval("fd-pending", NULL);
    wait_requested("fd-pending");
    char *path = journal_path(0);
    off_t size = file_size(path);
    assert_true(size > 0);
    limit_file_size(0, (rlim_t)size); /* not one more byte */

    submit_approval("fd-new", NULL);
    json_t *r = bw_harness_result(&H, "fd-new", 10000);
    assert_non_null(r);
    assert_string_equal(json_string_value(json_object_get(r, "status")), "error");
    assert_string_equal(json_string_value(json_object_get(r, "error_code")), "APPROVAL_STORE_ERROR");
    json_decref(r);
    assert_reply(decide("fd-pending", "Approve", "alice"), false, "store_error");
    assert_int_equal(file_size(path), size); /* what did not fit was cut off again */
    assert_int_equal(journal_lines(0), 1);
    assert_true(bw_harness_metric(&H, "beamline_worker_approval_journal_errors_total") >= 2);
    assert_true(bw_harness_metric(&H, "beamline_worker_approval_decisions_total{outcome=\"store_error\"}") >=
                1);

    limit_file_size(0, RLIM_INFINITY);
    assert_reply(decide("fd-pending", "Approve", "alice"), true, NULL); /* the refused vote was forgotten */
    r = bw_harness_result(&H, "fd-pending", 10000);
    assert_non_null(r);
    assert_string_equal(json_string_value(json_object_get(r, "status")), "success");
    json_decref(r);
    submit_approval("fd-after", NULL);
    wait_requested("fd-after");
    assert_reply(decide("fd-after", "Reject", "bob"), true, NULL);
    r = bw_harness_result(&H, "fd-after", 10000);
    assert_non_null(r);
    assert_string_equal(json_string_value(json_object_get(json_object_get(r, "output"), "decision")),
                        "Reject");
    json_decref(r);
    free(path);
}

static void test_kill9_keeps_pending_approvals_and_votes(void **state)
{
    submit_approval("k9-a", "\"quorum\":2");
    submit_approval("k9-b", NULL);
    submit_approval("k9-c", "\"quorum\":2");
    wait_requested("k9-a");
    wait_requested("k9-b");
    wait_requested("k9-c");
    assert_reply(decide("k9-a", "Approve", "alice"), true, NULL); /* one vote of two */
    int j = restart(0, true);
    /* the vote survived: a second approver completes it */
    json_t *r = decide("k9-a", "Approve", "bob");
    assert_non_null(r);
    assert_true(json_is_true(json_object_get(r, "accepted")));
    assert_true(json_is_true(json_object_get(r, "completed")));
    json_decref(r);
    r = bw_harness_result(&H, "k9-a", 10000);
    assert_non_null(r);
    json_t *votes = json_object_get(json_object_get(r, "output"), "votes");
    assert_int_equal(json_array_size(votes), 2);
    json_decref(r);
    /* the others still wait, on the new worker's own subject too */
    char own[300];
    snprintf(own, sizeof own, "%s.%s", DECIDE, "none"); /* an id no worker has: nobody answers */
    assert_null(decide_on(own, "k9-b", "Approve", "x"));
    assert_reply(decide("k9-b", "Reject", "carol"), true, NULL);
    r = bw_harness_result(&H, "k9-b", 10000);
    assert_non_null(r);
    json_decref(r);
    /* a journal line torn by a crash is skipped at the next start, and nothing else is lost */
    char *path = NULL;
    assert_true(asprintf(&path, "%s/approvals.jsonl", bw_harness_approval_dir(&H, j)) > 0);
    FILE *f = fopen(path, "a");
    assert_non_null(f);
    fputs("{\"t\":\"vote\",\"k\":[\"acme\",\"k9-c\"],\"v\":{\"appro", f);
    fclose(f);
    free(path);
    int k = restart(j, true);
    assert_int_equal(bw_test_proc_wait_log(&H.workers[k], "torn", 5000) == 0 ||
                         bw_test_proc_wait_log(&H.workers[k], "skipped", 5000) == 0,
                     1);
    assert_reply(decide("k9-c", "Approve", "alice"), true, NULL);
    assert_reply(decide("k9-c", "Approve", "bob"), true, NULL);
    r = bw_harness_result(&H, "k9-c", 10000);
    assert_non_null(r);
    assert_string_equal(json_string_value(json_object_get(r, "status")), "success");
    json_decref(r);
}

static void test_one_worker_per_directory(void **state)
{
    char dir[400];
    snprintf(dir, sizeof dir, "APPROVAL_DIR=%s", bw_harness_approval_dir(&H, 0));
    const char *const env[] = {dir, NULL};
    int i = bw_harness_spawn(&H, env);
    assert_true(i > 0);
    int code = -1;
    assert_int_equal(bw_test_proc_wait(&H.workers[i], 20000, &code), 0);
    H.exit_checked[i] = 1;
    assert_int_equal(code, 1);
    assert_int_equal(bw_test_proc_wait_log(&H.workers[i], "APPROVAL_DIR", 1000), 0);
    assert_int_equal(bw_test_proc_wait_log(&H.workers[i], "in use", 1000), 0);
    /* the first one is unharmed */
    submit_approval("dir-1", NULL);
    wait_requested("dir-1");
    assert_reply(decide("dir-1", "Approve", "alice"), true, NULL);
}

static void test_compaction_keeps_the_pending_ones(void **state)
{
    enum { N = 1300 };
    assert_int_equal(bw_harness_submit_many_with(&H, "cp", N, "human_approval",
                                                 "{\"prompt\":\"p\",\"timeout_ms\":600000}", 0),
                     0);
    submit_approval("cp-keep", NULL);
    wait_requested("cp-keep");
    for (int64_t end = bw_test_now_ms() + 30000;
         bw_test_now_ms() < end && bw_test_client_count(H.client, REQUESTS) < N + 1; bw_test_sleep_ms(10)) {
    }
    int before = journal_lines(0);
    assert_true(before >= N + 1);
    for (int i = 0; i < N; i++) {
        char id[32];
        snprintf(id, sizeof id, "cp-%d", i);
        assert_int_equal(bw_harness_cancel(&H, id, "done with it"), 0);
    }
    for (int i = 0; i < N; i++) {
        char id[32];
        snprintf(id, sizeof id, "cp-%d", i);
        json_t *r = bw_harness_result(&H, id, 20000);
        assert_non_null(r);
        json_decref(r);
    }
    /* ended approvals dominate: the journal was rewritten to the live one (and what ended since) */
    int after = journal_lines(0);
    assert_true(after < before);
    int j = restart(0, false);
    (void)j;
    assert_reply(decide("cp-keep", "Approve", "alice"), true, NULL);
    json_t *r = bw_harness_result(&H, "cp-keep", 10000);
    assert_non_null(r);
    json_decref(r);
    /* an ended one is unknown to the new worker: on the shared subject nobody answers */
    assert_null(decide("cp-1", "Approve", "alice"));
}

static void test_exec_has_no_journal(void **state)
{
    static const char job[] =
        "{\"type\":\"human_approval\",\"payload\":{\"prompt\":\"p\",\"response\":\"Approve\"}}";
    const char *const args[] = {"exec", NULL};
    char *out = NULL;
    int code = bw_test_run(args, NULL, job, &out, NULL);
    assert_int_equal(code, 1);
    assert_non_null(strstr(out, "APPROVAL_UNAVAILABLE"));
    free(out);
    const char *const env[] = {"APPROVAL_ALLOW_AUTO=true", NULL};
    code = bw_test_run(args, env, job, &out, NULL);
    assert_int_equal(code, 0);
    json_t *r = json_loads(out, 0, NULL);
    json_t *o = json_object_get(r, "output");
    assert_string_equal(json_string_value(json_object_get(o, "decision")), "Approve");
    assert_string_equal(json_string_value(json_object_get(o, "approver")), "auto");
    json_decref(r);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_full_disk_refuses_new_approvals_and_votes_then_recovers, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_kill9_keeps_pending_approvals_and_votes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_one_worker_per_directory, setup, teardown),
        cmocka_unit_test_setup_teardown(test_compaction_keeps_the_pending_ones, setup, teardown),
        cmocka_unit_test(test_exec_has_no_journal),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    nats_CloseAndWait(2000);
    return bw_test_exit_status(rc);
}
