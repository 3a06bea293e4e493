/*
 * Integration: `human_approval` jobs decided over NATS, through a real nats-server and the real worker
 * binary. The ApprovalRequest and its fields; decisions (approve, reject, an option not offered, a wrong
 * approver, a second decision, a second vote, another tenant's decision, quorum 2 of 3) answered on the
 * worker's own decision subject; timeout and cancel; invalid payloads; 10,000 pending at once (RSS and the
 * time to list them); APPROVAL_MAX_PENDING at and past the limit; the concurrency slot given back; two
 * workers with exactly one reply from the holder; restarts (decide after, the deadline passed while down,
 * a torn journal line); APPROVAL_ALLOW_AUTO; and the `approvals` sub-command (list, approve, reject,
 * decide, exit codes 0-4, hostile prompts shown as text).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "approval_replies.h"
#include "harness.h"
#include "testutil.h"

#define REQ_SUBJECT "caf.human.request.v1"
#define DECISION_SUBJECT "caf.human.decision.v1"
#define LIST_SUBJECT "caf.human.list.v1"
#define PENDING_GAUGE "beamline_worker_approvals_pending"
#define TYPE "human_approval"
#define DEADLINE_MS 120000

static bw_harness_t H;

/* ---- fixtures ---------------------------------------------------------------------------------- */

/* A harness whose client also collects the ApprovalRequests. */
static int start(const char *const *env)
{
    if (bw_harness_start(&H, env) != 0)
        return -1;
    return bw_test_client_collect(H.client, REQ_SUBJECT);
}

static int setup(void **state)
{
    return start(NULL);
}

static int teardown(void **state)
{
    return bw_harness_finish(&H, 0);
}

/* ---- helpers ----------------------------------------------------------------------------------- */

static const char *str(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* "2026-12-05T21:00:00.123Z" -> ms since the epoch; -1 when it is not that form. */
static int64_t rfc3339_ms(const char *s)
{
    struct tm tm = {0};
    const char *rest = s ? strptime(s, "%Y-%m-%dT%H:%M:%S", &tm) : NULL;
    int ms = 0;
    if (rest == NULL)
        return -1;
    if (*rest == '.') {
        char *end;
        ms = (int)strtol(rest + 1, &end, 10);
        rest = end;
    }
    return strcmp(rest, "Z") == 0 ? (int64_t)timegm(&tm) * 1000 + ms : -1;
}

static void submit(const char *id, const char *payload)
{
    assert_int_equal(bw_harness_submit(&H, id, TYPE, payload, DEADLINE_MS), 0);
}

/* The ApprovalRequest of id (waiting up to 10 s); fails the test when none came. Caller destroys. */
static bw_test_msg_t *request_of(const char *id)
{
    bw_test_msg_t *m = NULL;
    if (bw_test_client_find(H.client, REQ_SUBJECT, id, 10000, &m) <= 0 || m == NULL || m->json == NULL)
        fail_msg("no ApprovalRequest for %s", id);
    return m;
}

/* Waits for id's ApprovalRequest: the approval is pending. Returns its decision_subject (caller frees). */
static char *pending(const char *id)
{
    bw_test_msg_t *m = request_of(id);
    const char *s = str(m->json, "decision_subject");
    assert_non_null(s);
    char *copy = strdup(s);
    bw_test_msg_destroy(m);
    return copy;
}

/* A decision request {assignment_id, tenant_id?, decision, approver, comment?} on subject; the reply
   parsed (caller decrefs), or NULL when none came within wait_ms. */
static json_t *ask(const char *subject, const char *id, const char *tenant, const char *decision,
                   const char *approver, const char *comment, int wait_ms)
{
    json_t *d = json_pack("{ssssss}", "assignment_id", id, "decision", decision, "approver", approver);
    if (tenant != NULL)
        json_object_set_new(d, "tenant_id", json_string(tenant));
    if (comment != NULL)
        json_object_set_new(d, "comment", json_string(comment));
    char *body = json_dumps(d, JSON_COMPACT);
    natsMsg *reply = NULL;
    json_t *j = NULL;
    natsStatus s =
        natsConnection_RequestString(&reply, bw_test_client_conn(H.client), subject, body, wait_ms);
    if (s == NATS_OK) {
        j = json_loadb(natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply), 0, NULL);
        if (!json_is_object(j))
            fail_msg("decision reply is not a JSON object: %.*s", natsMsg_GetDataLength(reply),
                     natsMsg_GetData(reply));
    }
    natsMsg_Destroy(reply);
    free(body);
    json_decref(d);
    return j;
}

/* A decision of tenant acme on the holder's own subject (which always answers). */
static json_t *decide(const char *id, const char *decision, const char *approver, const char *comment)
{
    char *subject = pending(id);
    json_t *r = ask(subject, id, "acme", decision, approver, comment, 10000);
    free(subject);
    if (r == NULL)
        fail_msg("no reply to the decision on %s", id);
    return r;
}

/* The bare result of id (waiting up to wait_ms); fails the test when none came. Caller decrefs. */
static json_t *result_of(const char *id, int wait_ms)
{
    json_t *r = bw_harness_result(&H, id, wait_ms);
    if (r == NULL)
        fail_msg("no result for %s", id);
    return r;
}

static json_t *output_of(json_t *result)
{
    assert_string_equal(str(result, "status"), "success");
    json_t *o = json_object_get(result, "output");
    assert_true(json_is_object(o));
    return o;
}

static void expect_error(const char *id, const char *status, const char *code)
{
    json_t *r = result_of(id, 10000);
    if (strcmp(str(r, "status"), status) != 0 || str(r, "error_code") == NULL ||
        strcmp(str(r, "error_code"), code) != 0) {
        char *s = json_dumps(r, JSON_COMPACT);
        fail_msg("%s: expected %s/%s, got %s", id, status, code, s);
    }
    json_decref(r);
}

/* The approvals every worker reports on the list subject (one request, replies gathered until every
   one of nworkers answered); {"<tenant>/<id>": view} (caller decrefs). */
static json_t *list_all(int nworkers)
{
    natsConnection *nc = bw_test_client_conn(H.client);
    natsSubscription *sub = NULL;
    char *inbox = NULL;
    json_t *seen = json_object(), *workers = json_object();
    assert_int_equal(natsInbox_Create(&inbox), NATS_OK);
    assert_int_equal(natsConnection_SubscribeSync(&sub, nc, inbox), NATS_OK);
    assert_int_equal(natsConnection_PublishRequestString(nc, LIST_SUBJECT, inbox, "{}"), NATS_OK);
    int64_t until = bw_test_now_ms() + 10000;
    while ((int)json_object_size(workers) < nworkers && bw_test_now_ms() < until) {
        natsMsg *m = NULL;
        if (natsSubscription_NextMsg(&m, sub, until - bw_test_now_ms()) != NATS_OK)
            break;
        json_t *j = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL), *v;
        size_t i;
        assert_non_null(str(j, "worker_id"));
        if (!json_is_false(json_object_get(j, "last"))) /* a worker answers in parts under max_payload */
            json_object_set_new(workers, str(j, "worker_id"), json_true());
        json_array_foreach(json_object_get(j, "approvals"), i, v)
        {
            char key[512];
            snprintf(key, sizeof key, "%s/%s", str(v, "tenant_id"), str(v, "assignment_id"));
            json_object_set(seen, key, v);
        }
        json_decref(j);
        natsMsg_Destroy(m);
    }
    assert_int_equal((int)json_object_size(workers), nworkers);
    natsSubscription_Destroy(sub);
    natsInbox_Destroy(inbox);
    json_decref(workers);
    return seen;
}

/* Publishes body on subject with a reply inbox of its own; waits for the first decision reply (when
   want_one), then uses a list request on the same inbox as a barrier: once all nworkers answered it, a
   decision reply of any of them would have come before (each answers in order). Returns the decision
   replies counted. */
static int decision_replies(const char *subject, const char *body, bool want_one, int nworkers)
{
    natsConnection *nc = bw_test_client_conn(H.client);
    natsSubscription *sub = NULL;
    char *inbox = NULL;
    int decisions = 0;
    bool barrier = false;
    json_t *workers = json_object();
    assert_int_equal(natsInbox_Create(&inbox), NATS_OK);
    assert_int_equal(natsConnection_SubscribeSync(&sub, nc, inbox), NATS_OK);
    assert_int_equal(natsConnection_PublishRequestString(nc, subject, inbox, body), NATS_OK);
    assert_int_equal(natsConnection_Flush(nc), NATS_OK);
    int64_t until = bw_test_now_ms() + 10000;
    while ((int)json_object_size(workers) < nworkers && bw_test_now_ms() < until) {
        if (!barrier && (!want_one || decisions > 0)) {
            assert_int_equal(natsConnection_PublishRequestString(nc, LIST_SUBJECT, inbox, "{}"), NATS_OK);
            barrier = true;
        }
        natsMsg *m = NULL;
        if (natsSubscription_NextMsg(&m, sub, until - bw_test_now_ms()) != NATS_OK)
            break;
        json_t *j = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
        if (json_object_get(j, "accepted") != NULL)
            decisions++;
        else if (str(j, "worker_id") != NULL)
            json_object_set_new(workers, str(j, "worker_id"), json_true());
        json_decref(j);
        natsMsg_Destroy(m);
    }
    if (want_one && decisions == 0)
        fail_msg("no reply to the decision on %s", subject);
    assert_int_equal((int)json_object_size(workers), nworkers);
    json_decref(workers);
    natsSubscription_Destroy(sub);
    natsInbox_Destroy(inbox);
    return decisions;
}

/* ---- the job and its decisions ----------------------------------------------------------------- */

/* The ApprovalRequest carries everything a person needs and where to answer; a decision on that subject
   is accepted and completes the job with the person's decision, comment and vote. */
static void test_approve(void **state)
{
    int64_t t0 = wall_ms();
    submit("appr-1", "{\"prompt\":\"Deploy v2 to prod?\",\"context\":{\"build\":42,\"by\":\"ci\"}}");
    bw_test_msg_t *m = request_of("appr-1");
    json_t *q = m->json;
    assert_string_equal(str(q, "assignment_id"), "appr-1");
    assert_string_equal(str(q, "tenant_id"), "acme");
    assert_string_equal(str(q, "prompt"), "Deploy v2 to prod?");
    json_t *want_opts = json_pack("[ss]", "Approve", "Reject");
    assert_true(json_equal(json_object_get(q, "options"), want_opts));
    json_t *approvers = json_object_get(q, "approvers");
    assert_true(approvers != NULL && (json_is_null(approvers) || json_array_size(approvers) == 0));
    assert_int_equal(json_integer_value(json_object_get(q, "quorum")), 1);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(q, "context"), "build")), 42);
    int64_t exp = rfc3339_ms(str(q, "expires_at"));
    assert_true(exp >= t0 + DEADLINE_MS - 1000 && exp <= wall_ms() + DEADLINE_MS + 1000);
    assert_true(strncmp(str(q, "decision_subject"), DECISION_SUBJECT ".", strlen(DECISION_SUBJECT) + 1) == 0);
    assert_string_equal(str(m->headers, "tenant_id"), "acme");
    assert_string_equal(str(m->headers, "version"), "1");
    bw_test_msg_destroy(m);
    json_decref(want_opts);
    assert_int_equal(bw_harness_result_count(&H, "appr-1"), 0);

    bw_test_expect_accepted(decide("appr-1", "Approve", "alice", "looks good"), true);
    json_t *r = result_of("appr-1", 10000), *o = output_of(r);
    assert_string_equal(str(o, "prompt"), "Deploy v2 to prod?");
    assert_string_equal(str(o, "decision"), "Approve");
    assert_string_equal(str(o, "approver"), "alice");
    assert_string_equal(str(o, "comment"), "looks good");
    int64_t at = rfc3339_ms(str(o, "decided_at"));
    assert_true(at >= t0 - 1000 && at <= wall_ms() + 1000);
    json_t *votes = json_object_get(o, "votes");
    assert_int_equal(json_array_size(votes), 1);
    json_t *v = json_array_get(votes, 0);
    assert_string_equal(str(v, "approver"), "alice");
    assert_string_equal(str(v, "decision"), "Approve");
    assert_string_equal(str(v, "comment"), "looks good");
    assert_string_equal(str(v, "decided_at"), str(o, "decided_at"));
    json_decref(r);
}

/* "Reject" is a person's decision like any other: a success whose decision says so. */
static void test_reject(void **state)
{
    submit("rej-1", "{\"prompt\":\"Drop the table?\"}");
    bw_test_expect_accepted(decide("rej-1", "Reject", "bob", NULL), true);
    json_t *r = result_of("rej-1", 10000), *o = output_of(r);
    assert_string_equal(str(o, "decision"), "Reject");
    assert_string_equal(str(o, "approver"), "bob");
    json_decref(r);
}

/* A decision that is not one of the options is refused and changes nothing: one offered later completes. */
static void test_option_not_offered(void **state)
{
    submit("opt-1", "{\"prompt\":\"Which way?\",\"options\":[\"Ship\",\"Hold\"]}");
    bw_test_expect_refused(decide("opt-1", "Approve", "alice", NULL), "not_an_option");
    bw_test_expect_refused(decide("opt-1", "ship", "alice", NULL),
                           "not_an_option"); /* exact, case included */
    json_t *l = list_all(1), *v = json_object_get(l, "acme/opt-1");
    assert_non_null(v); /* still pending, no vote recorded */
    assert_int_equal(json_array_size(json_object_get(v, "votes")), 0);
    json_decref(l);
    assert_int_equal(bw_harness_result_count(&H, "opt-1"), 0);
    bw_test_expect_accepted(decide("opt-1", "Ship", "alice", NULL), true);
    json_t *r = result_of("opt-1", 10000);
    assert_string_equal(str(output_of(r), "decision"), "Ship");
    assert_int_equal(json_array_size(json_object_get(output_of(r), "votes")), 1);
    json_decref(r);
}

/* With approvers given, only they may decide. */
static void test_wrong_approver(void **state)
{
    submit("who-1", "{\"prompt\":\"p\",\"approvers\":[\"alice\",\"bob\"]}");
    bw_test_msg_t *m = request_of("who-1");
    assert_int_equal(json_array_size(json_object_get(m->json, "approvers")), 2);
    bw_test_msg_destroy(m);
    bw_test_expect_refused(decide("who-1", "Approve", "mallory", NULL), "not_an_approver");
    bw_test_expect_refused(decide("who-1", "Approve", "Alice", NULL), "not_an_approver");
    assert_int_equal(bw_harness_result_count(&H, "who-1"), 0);
    bw_test_expect_accepted(decide("who-1", "Approve", "bob", NULL), true);
    json_t *r = result_of("who-1", 10000);
    assert_string_equal(str(output_of(r), "approver"), "bob");
    json_decref(r);
}

/* Once the job has its result, a further decision is refused (finished), and there is one result. */
static void test_second_decision_after_completion(void **state)
{
    submit("twice-1", "{\"prompt\":\"p\"}");
    char *subject = pending("twice-1");
    bw_test_expect_accepted(decide("twice-1", "Approve", "alice", NULL), true);
    json_t *r = result_of("twice-1", 10000);
    json_decref(r);
    json_t *again = ask(subject, "twice-1", "acme", "Reject", "bob", NULL, 10000);
    assert_non_null(again);
    bw_test_expect_refused(again, "finished");
    free(subject);
    assert_int_equal(bw_harness_result_count(&H, "twice-1"), 1);
}

/* Under a quorum the same approver cannot vote twice (for the same option or another). */
static void test_second_vote_same_approver(void **state)
{
    submit("vote-1", "{\"prompt\":\"p\",\"approvers\":[\"alice\",\"bob\",\"carol\"],\"quorum\":2}");
    bw_test_expect_accepted(decide("vote-1", "Approve", "alice", NULL), false);
    bw_test_expect_refused(decide("vote-1", "Approve", "alice", NULL), "already_voted");
    bw_test_expect_refused(decide("vote-1", "Reject", "alice", NULL), "already_voted");
    json_t *l = list_all(1);
    assert_int_equal(json_array_size(json_object_get(json_object_get(l, "acme/vote-1"), "votes")), 1);
    json_decref(l);
    assert_int_equal(bw_harness_result_count(&H, "vote-1"), 0);
    assert_int_equal(bw_harness_cancel(&H, "vote-1", "test done"), 0);
    expect_error("vote-1", "cancelled", "CANCELLED");
}

/* No decision before payload.timeout_ms: timeout/TIMEOUT, not earlier; a late decision is refused. */
static void test_timeout(void **state)
{
    int64_t t0 = bw_test_now_ms();
    submit("late-1", "{\"prompt\":\"p\",\"timeout_ms\":1500}");
    char *subject = pending("late-1");
    expect_error("late-1", "timeout", "TIMEOUT");
    assert_true(bw_test_now_ms() - t0 >= 1400);
    json_t *late = ask(subject, "late-1", "acme", "Approve", "alice", NULL, 10000);
    assert_non_null(late);
    assert_true(json_is_false(json_object_get(late, "accepted")));
    json_decref(late);
    free(subject);
    assert_int_equal(bw_harness_result_count(&H, "late-1"), 1);
}

/* A cancel ends a pending approval: cancelled/CANCELLED, and it can no longer be decided. */
static void test_cancel(void **state)
{
    submit("cxl-1", "{\"prompt\":\"p\"}");
    char *subject = pending("cxl-1");
    assert_int_equal(bw_harness_cancel(&H, "cxl-1", "no longer needed"), 0);
    expect_error("cxl-1", "cancelled", "CANCELLED");
    json_t *late = ask(subject, "cxl-1", "acme", "Approve", "alice", NULL, 10000);
    assert_non_null(late);
    assert_true(json_is_false(json_object_get(late, "accepted")));
    json_decref(late);
    free(subject);
    assert_int_equal(bw_harness_result_count(&H, "cxl-1"), 1);
}

/* Quorum 2 of 3: the first vote is accepted without completing; a second distinct approver choosing the
   same option completes it, with both votes in the output. */
static void test_quorum_two_of_three(void **state)
{
    submit("quo-1", "{\"prompt\":\"p\",\"approvers\":[\"alice\",\"bob\",\"carol\"],\"quorum\":2}");
    bw_test_msg_t *m = request_of("quo-1");
    assert_int_equal(json_integer_value(json_object_get(m->json, "quorum")), 2);
    bw_test_msg_destroy(m);
    bw_test_expect_accepted(decide("quo-1", "Approve", "alice", "first"), false);
    assert_int_equal(bw_harness_result_count(&H, "quo-1"), 0);
    bw_test_expect_accepted(decide("quo-1", "Approve", "carol", "second"), true);
    json_t *r = result_of("quo-1", 10000), *o = output_of(r), *votes = json_object_get(o, "votes");
    assert_string_equal(str(o, "decision"), "Approve");
    assert_int_equal(json_array_size(votes), 2);
    assert_string_equal(str(json_array_get(votes, 0), "approver"), "alice");
    assert_string_equal(str(json_array_get(votes, 0), "comment"), "first");
    assert_string_equal(str(json_array_get(votes, 1), "approver"), "carol");
    assert_string_equal(str(json_array_get(votes, 1), "decision"), "Approve");
    json_decref(r);
}

/* Quorum 2 of 3 with split votes: one Approve and one Reject complete nothing; the third vote does. */
static void test_quorum_split_votes(void **state)
{
    submit("quo-2", "{\"prompt\":\"p\",\"approvers\":[\"alice\",\"bob\",\"carol\"],\"quorum\":2}");
    bw_test_expect_accepted(decide("quo-2", "Approve", "alice", NULL), false);
    bw_test_expect_accepted(decide("quo-2", "Reject", "bob", NULL), false);
    assert_int_equal(bw_harness_result_count(&H, "quo-2"), 0);
    bw_test_expect_accepted(decide("quo-2", "Reject", "carol", NULL), true);
    json_t *r = result_of("quo-2", 10000), *o = output_of(r);
    assert_string_equal(str(o, "decision"), "Reject");
    assert_int_equal(json_array_size(json_object_get(o, "votes")), 3);
    json_decref(r);
}

/* Another tenant cannot decide acme's approval: unknown (as if it did not exist), and nothing changes. */
static void test_other_tenant(void **state)
{
    submit("ten-1", "{\"prompt\":\"p\"}");
    char *subject = pending("ten-1");
    json_t *r = ask(subject, "ten-1", "other", "Approve", "eve", NULL, 10000);
    assert_non_null(r);
    bw_test_expect_refused(r, "unknown");
    json_t *l = list_all(1);
    assert_int_equal(json_array_size(json_object_get(json_object_get(l, "acme/ten-1"), "votes")), 0);
    json_decref(l);
    assert_int_equal(bw_harness_result_count(&H, "ten-1"), 0);
    free(subject);
    bw_test_expect_accepted(decide("ten-1", "Approve", "alice", NULL), true);
    r = result_of("ten-1", 10000);
    assert_string_equal(str(output_of(r), "approver"), "alice");
    json_decref(r);
}

/* A decision on the shared subject for an id nobody holds gets no reply; on a worker's own subject it is
   answered unknown. */
static void test_unknown_id(void **state)
{
    submit("known-1", "{\"prompt\":\"p\"}");
    char *subject = pending("known-1");
    json_t *r = ask(subject, "never-submitted", "acme", "Approve", "alice", NULL, 10000);
    assert_non_null(r);
    bw_test_expect_refused(r, "unknown");
    assert_int_equal(decision_replies(DECISION_SUBJECT,
                                      "{\"assignment_id\":\"never-submitted\",\"tenant_id\":\"acme\","
                                      "\"decision\":\"Approve\",\"approver\":\"alice\"}",
                                      false, 1),
                     0);
    free(subject);
    assert_int_equal(bw_harness_cancel(&H, "known-1", "test done"), 0);
    expect_error("known-1", "cancelled", "CANCELLED");
}

/* Decision requests that are not one: answered invalid_request on the own subject, never a crash. */
static void test_malformed_decisions(void **state)
{
    static const char *const bodies[] = {
        "",
        "not json",
        "[]",
        "{}",
        "{\"assignment_id\":\"mal-1\"}",
        "{\"assignment_id\":\"mal-1\",\"tenant_id\":\"acme\",\"decision\":\"Approve\"}",
        "{\"assignment_id\":\"mal-1\",\"tenant_id\":\"acme\",\"decision\":7,\"approver\":\"a\"}",
        "{\"assignment_id\":5,\"tenant_id\":\"acme\",\"decision\":\"Approve\",\"approver\":\"a\"}",
        NULL};
    submit("mal-1", "{\"prompt\":\"p\"}");
    char *subject = pending("mal-1");
    for (int i = 0; bodies[i] != NULL; i++) {
        natsMsg *reply = NULL;
        assert_int_equal(
            natsConnection_RequestString(&reply, bw_test_client_conn(H.client), subject, bodies[i], 10000),
            NATS_OK);
        json_t *j = json_loadb(natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply), 0, NULL);
        natsMsg_Destroy(reply);
        if (j == NULL)
            fail_msg("reply to %s is not JSON", bodies[i]);
        bw_test_expect_refused(j, "invalid_request");
    }
    free(subject);
    bw_test_expect_accepted(decide("mal-1", "Approve", "alice", NULL), true);
    json_decref(result_of("mal-1", 10000));
}

/* ---- payloads ---------------------------------------------------------------------------------- */

/* A payload built with printf (caller frees). */
static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static char *fmt(const char *f, ...)
{
    char *s = NULL;
    va_list ap;
    va_start(ap, f);
    assert_true(vasprintf(&s, f, ap) >= 0);
    va_end(ap);
    return s;
}

/* n copies of c (caller frees). */
static char *repeat(char c, size_t n)
{
    char *s = malloc(n + 1);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

/* A JSON array of n strings "<prefix><i>" (caller frees). */
static char *names_json(const char *prefix, int n)
{
    size_t cap = 16 + (size_t)n * (strlen(prefix) + 16), len = 1;
    char *s = malloc(cap);
    s[0] = '[';
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(s + len, cap - len, "%s\"%s%d\"", i ? "," : "", prefix, i);
    snprintf(s + len, cap - len, "]");
    return s;
}

/* Submits payload as id and expects INVALID_PAYLOAD naming field, with no ApprovalRequest. */
static void expect_invalid(const char *id, const char *payload, const char *field)
{
    submit(id, payload);
    json_t *r = result_of(id, 10000);
    const char *msg = str(r, "error_message");
    if (strcmp(str(r, "status"), "error") != 0 || strcmp(str(r, "error_code"), "INVALID_PAYLOAD") != 0 ||
        msg == NULL || strstr(msg, field) == NULL) {
        char *s = json_dumps(r, JSON_COMPACT);
        fail_msg("payload %.200s: expected INVALID_PAYLOAD naming %s, got %s", payload, field, s);
    }
    json_decref(r);
    assert_int_equal(bw_test_client_find(H.client, REQ_SUBJECT, id, 0, NULL), 0);
}

/* Every invalid payload is INVALID_PAYLOAD naming the field. */
static void test_invalid_payloads(void **state)
{
    const char *const cases[][2] = {
        {"{}", "prompt"},
        {"{\"prompt\":5}", "prompt"},
        {"{\"prompt\":\"\"}", "prompt"},
        {"{\"prompt\":\"p\",\"options\":[1,2]}", "options"},
        {"{\"prompt\":\"p\",\"options\":[\"a\",\"a\"]}", "options"},
        {"{\"prompt\":\"p\",\"options\":[\"a\",\"\"]}", "options"},
        {"{\"prompt\":\"p\",\"options\":[\"a\\u001bb\"]}", "options"},
        {"{\"prompt\":\"p\",\"options\":[]}", "options"},
        {"{\"prompt\":\"p\",\"options\":\"Approve\"}", "options"},
        {"{\"prompt\":\"p\",\"approvers\":[\"a\"],\"quorum\":2}", "quorum"},
        {"{\"prompt\":\"p\",\"quorum\":1.5}", "quorum"},
        {"{\"prompt\":\"p\",\"quorum\":\"2\"}", "quorum"},
        {"{\"prompt\":\"p\",\"quorum\":0}", "quorum"},
        {"{\"prompt\":\"p\",\"approvers\":[1]}", "approvers"},
        {"{\"prompt\":\"p\",\"approvers\":[\"a\",\"a\"]}", "approvers"},
        {"{\"prompt\":\"p\",\"approvers\":\"alice\"}", "approvers"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char id[32];
        snprintf(id, sizeof id, "inval-%zu", i);
        expect_invalid(id, cases[i][0], cases[i][1]);
    }
}

/* Each limit at its edge (accepted: the ApprovalRequest goes out) and one past it (INVALID_PAYLOAD):
   prompt 64 KiB, 20 options, names of 256 bytes, 100 approvers, quorum 100. */
static void test_payload_limits(void **state)
{
    char *big = repeat('p', 65536), *bigger = repeat('p', 65537), *name = repeat('n', 256),
         *longer = repeat('n', 257), *opts20 = names_json("o", 20), *opts21 = names_json("o", 21),
         *appr100 = names_json("a", 100), *appr101 = names_json("a", 101);
    struct {
        char *payload;
        const char *field;
    } past[] = {
        {fmt("{\"prompt\":\"%s\"}", bigger), "prompt"},
        {fmt("{\"prompt\":\"p\",\"options\":%s}", opts21), "options"},
        {fmt("{\"prompt\":\"p\",\"options\":[\"%s\"]}", longer), "options"},
        {fmt("{\"prompt\":\"p\",\"approvers\":[\"%s\"]}", longer), "approvers"},
        {fmt("{\"prompt\":\"p\",\"approvers\":%s}", appr101), "approvers"},
        {fmt("{\"prompt\":\"p\",\"quorum\":101}"), "quorum"},
    };
    char *at[] = {
        fmt("{\"prompt\":\"%s\"}", big),
        fmt("{\"prompt\":\"p\",\"options\":%s}", opts20),
        fmt("{\"prompt\":\"p\",\"options\":[\"%s\"],\"approvers\":[\"%s\"]}", name, name),
        fmt("{\"prompt\":\"p\",\"approvers\":%s,\"quorum\":100}", appr100),
        fmt("{\"prompt\":\"p\",\"quorum\":100}"),
    };
    char id[32];
    for (size_t i = 0; i < sizeof past / sizeof past[0]; i++) {
        snprintf(id, sizeof id, "past-%zu", i);
        expect_invalid(id, past[i].payload, past[i].field);
        free(past[i].payload);
    }
    for (size_t i = 0; i < sizeof at / sizeof at[0]; i++) {
        snprintf(id, sizeof id, "at-%zu", i);
        submit(id, at[i]);
        free(at[i]);
        bw_test_msg_t *m = request_of(id);
        if (i == 0)
            assert_int_equal(strlen(str(m->json, "prompt")), 65536);
        if (i == 1)
            assert_int_equal(json_array_size(json_object_get(m->json, "options")), 20);
        if (i == 3)
            assert_int_equal(json_array_size(json_object_get(m->json, "approvers")), 100);
        bw_test_msg_destroy(m);
    }
    bw_test_expect_accepted(decide("at-1", "o19", "alice", NULL), true);
    json_t *r = result_of("at-1", 10000);
    assert_string_equal(str(output_of(r), "decision"), "o19");
    json_decref(r);
    bw_test_expect_accepted(decide("at-2", name, name, NULL), true);
    json_decref(result_of("at-2", 10000));
    const char *const rest[] = {"at-0", "at-3", "at-4"};
    for (int i = 0; i < 3; i++)
        assert_int_equal(bw_harness_cancel(&H, rest[i], "x"), 0);
    for (int i = 0; i < 3; i++)
        expect_error(rest[i], "cancelled", "CANCELLED");
    free(big), free(bigger), free(name), free(longer), free(opts20), free(opts21), free(appr100),
        free(appr101);
}

/* A quorum that can no longer be reached (2 of 2, split) still ends at the deadline, not before. */
static void test_quorum_unreachable_ends_at_deadline(void **state)
{
    int64_t t0 = bw_test_now_ms();
    submit("quo-dead", "{\"prompt\":\"p\",\"approvers\":[\"a\",\"b\"],\"quorum\":2,\"timeout_ms\":1500}");
    bw_test_expect_accepted(decide("quo-dead", "Approve", "a", NULL), false);
    bw_test_expect_accepted(decide("quo-dead", "Reject", "b", NULL), false);
    expect_error("quo-dead", "timeout", "TIMEOUT");
    assert_true(bw_test_now_ms() - t0 >= 1400);
}

/* Without APPROVAL_ALLOW_AUTO the reference's "response" is ignored: the job waits for a person. */
static void test_auto_response_ignored_by_default(void **state)
{
    submit("auto-off", "{\"prompt\":\"p\",\"response\":\"Approve\"}");
    char *subject = pending("auto-off");
    free(subject);
    assert_int_equal(bw_harness_result_count(&H, "auto-off"), 0);
    bw_test_expect_accepted(decide("auto-off", "Reject", "alice", NULL), true);
    json_t *r = result_of("auto-off", 10000), *o = output_of(r);
    assert_string_equal(str(o, "decision"), "Reject");
    assert_string_equal(str(o, "approver"), "alice");
    json_decref(r);
}

/* ---- the CLI ------------------------------------------------------------------------------------- */

/* Runs `beamline-worker approvals ARGS...` against url (NULL: the harness's server). */
static void cli_at(bw_test_cli_t *r, const char *url, const char *const *args)
{
    char env_url[160];
    snprintf(env_url, sizeof env_url, "NATS_URL=%s", url ? url : H.nats.url);
    const char *const env[] = {env_url, NULL};
    bw_test_cli_run(r, args, env, NULL);
}

static void cli(bw_test_cli_t *r, const char *const *args)
{
    cli_at(r, NULL, args);
}

static void expect_rc(bw_test_cli_t *r, int rc)
{
    if (r->rc != rc) {
        bw_test_cli_dump(r);
        fail_msg("expected exit %d, got %d", rc, r->rc);
    }
}

/* The line of out that contains needle (malloc'd), or NULL. */
static char *line_with(const char *out, const char *needle)
{
    const char *p = strstr(out, needle);
    if (p == NULL)
        return NULL;
    const char *start = p, *end = strchr(p, '\n');
    while (start > out && start[-1] != '\n')
        start--;
    return strndup(start, end ? (size_t)(end - start) : strlen(start));
}

/* No byte a terminal would act on: C0 but newline, DEL, C1 (UTF-8 C2 80..9F), RLO/LRE... (E2 80 AA-AE). */
static void assert_terminal_safe(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p < 0x20 && *p != '\n') || *p == 0x7f || (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f) ||
            (p[0] == 0xe2 && p[1] == 0x80 && p[2] >= 0xa8 && p[2] <= 0xae))
            fail_msg("unsafe byte 0x%02x at offset %td of the CLI output", *p, (const char *)p - s);
    }
}

#define HOSTILE_PROMPT                                                                                       \
    "Ship\\u001b]0;pwned\\u0007\\u001b[2J \\u009b31m \\u202eevil\\u007f and a long tail that the table "     \
    "cuts off"

/* The table: one row per approval (id, tenant, the prompt cut to 40 characters with control characters
   escaped, options, votes/quorum, time left, worker), sorted by expiry; nothing a terminal acts on. */
static void test_cli_list_table(void **state)
{
    submit("cli-late", "{\"prompt\":\"later\",\"timeout_ms\":100000}");
    submit("cli-hostile", "{\"prompt\":\"" HOSTILE_PROMPT "\",\"options\":[\"Go\",\"No\\u009bGo\"]}");
    submit("cli-early", "{\"prompt\":\"sooner\",\"timeout_ms\":50000}");
    free(pending("cli-late"));
    free(pending("cli-hostile"));
    free(pending("cli-early"));
    static const char *const args[] = {"approvals", "list", NULL};
    bw_test_cli_t r;
    cli(&r, args);
    expect_rc(&r, 0);
    assert_terminal_safe(r.out);
    assert_non_null(strstr(r.out, "PROMPT"));
    char *row = line_with(r.out, "cli-hostile");
    assert_non_null(row);
    assert_non_null(strstr(row, "acme"));
    assert_non_null(strstr(row, "Ship\\x1b]0;pwned\\x07\\x1b[2J"));
    assert_non_null(strstr(row, "..."));
    assert_null(strstr(row, "table cuts off"));
    assert_non_null(strstr(row, "Go|No\\u009bGo"));
    assert_non_null(strstr(row, "0/1"));
    free(row);
    row = line_with(r.out, "cli-early");
    assert_non_null(row);
    assert_non_null(strstr(row, "sooner"));
    assert_non_null(strstr(row, "Approve|Reject"));
    free(row);
    /* sorted by expiry: 50 s, 100 s, then the 120 s deadline */
    const char *early = strstr(r.out, "cli-early"), *late = strstr(r.out, "cli-late"),
               *hostile = strstr(r.out, "cli-hostile");
    assert_true(early < late && late < hostile);
    bw_test_cli_dispose(&r);
    static const char *const ids[] = {"cli-late", "cli-hostile", "cli-early"};
    for (int i = 0; i < 3; i++)
        assert_int_equal(bw_harness_cancel(&H, ids[i], "x"), 0);
    for (int i = 0; i < 3; i++)
        expect_error(ids[i], "cancelled", "CANCELLED");
}

/* --json: one object per line (the view plus worker_id), the prompt intact as JSON, terminal-safe. */
static void test_cli_list_json(void **state)
{
    submit("cli-json", "{\"prompt\":\"" HOSTILE_PROMPT "\",\"context\":{\"x\":0.1}}");
    free(pending("cli-json"));
    static const char *const args[] = {"approvals", "list", "--json", NULL};
    bw_test_cli_t r;
    cli(&r, args);
    expect_rc(&r, 0);
    assert_terminal_safe(r.out);
    char *line = line_with(r.out, "\"cli-json\"");
    assert_non_null(line);
    assert_non_null(strstr(line, "\"x\":0.1}")); /* numbers as sent */
    json_t *v = json_loads(line, 0, NULL);
    assert_non_null(v);
    json_t *want = json_loads("\"" HOSTILE_PROMPT "\"", JSON_DECODE_ANY, NULL);
    assert_string_equal(str(v, "prompt"), json_string_value(want));
    assert_string_equal(str(v, "tenant_id"), "acme");
    assert_non_null(str(v, "worker_id"));
    assert_non_null(str(v, "expires_at"));
    assert_true(json_is_array(json_object_get(v, "votes")));
    json_decref(want);
    json_decref(v);
    free(line);
    /* every line is one JSON object */
    for (char *p = r.out, *nl; *p; p = nl + 1) {
        nl = strchr(p, '\n');
        assert_non_null(nl);
        json_t *j = json_loadb(p, (size_t)(nl - p), 0, NULL);
        assert_true(json_is_object(j));
        json_decref(j);
    }
    bw_test_cli_dispose(&r);
    assert_int_equal(bw_harness_cancel(&H, "cli-json", "x"), 0);
    expect_error("cli-json", "cancelled", "CANCELLED");
}

/* Nothing pending (for a tenant with none): says so, exit 0; --json prints nothing. */
static void test_cli_list_empty(void **state)
{
    static const char *const args[] = {"approvals", "list", "--tenant", "nobody-here", NULL},
                             *const json_args[] = {"approvals", "list",        "--json",
                                                   "--tenant",  "nobody-here", NULL};
    submit("cli-other", "{\"prompt\":\"p\"}");
    free(pending("cli-other"));
    bw_test_cli_t r;
    cli(&r, args);
    expect_rc(&r, 0);
    assert_string_equal(r.out, "no pending approvals\n");
    bw_test_cli_dispose(&r);
    cli(&r, json_args);
    expect_rc(&r, 0);
    assert_string_equal(r.out, "");
    bw_test_cli_dispose(&r);
    assert_int_equal(bw_harness_cancel(&H, "cli-other", "x"), 0);
    expect_error("cli-other", "cancelled", "CANCELLED");
}

/* approve / reject / decide: exit 0 and "accepted" (+ "completed"), and the result says who and why. */
static void test_cli_decisions(void **state)
{
    submit("cli-a", "{\"prompt\":\"p\"}");
    submit("cli-r", "{\"prompt\":\"p\"}");
    submit("cli-d",
           "{\"prompt\":\"p\",\"options\":[\"Ship\",\"Hold\"],\"approvers\":[\"x\",\"y\"],\"quorum\":2}");
    free(pending("cli-a"));
    free(pending("cli-r"));
    free(pending("cli-d"));
    const char *const approve[] = {"approvals", "approve",   "cli-a", "--approver",
                                   "alice",     "--comment", "ok",    NULL},
                      *const reject[] = {"approvals", "reject",     "--tenant", "acme",
                                         "cli-r",     "--approver", "bob",      NULL},
                      *const decide1[] = {"approvals", "decide",     "cli-d", "--option",
                                          "Hold",      "--approver", "x",     NULL},
                      *const decide2[] = {"approvals", "decide",     "cli-d", "--option",
                                          "Hold",      "--approver", "y",     NULL};
    bw_test_cli_t r;
    cli(&r, approve);
    expect_rc(&r, 0);
    assert_string_equal(r.out, "accepted\ncompleted\n");
    bw_test_cli_dispose(&r);
    json_t *res = result_of("cli-a", 10000), *o = output_of(res);
    assert_string_equal(str(o, "decision"), "Approve");
    assert_string_equal(str(o, "approver"), "alice");
    assert_string_equal(str(o, "comment"), "ok");
    json_decref(res);
    cli(&r, reject);
    expect_rc(&r, 0);
    bw_test_cli_dispose(&r);
    res = result_of("cli-r", 10000);
    assert_string_equal(str(output_of(res), "decision"), "Reject");
    json_decref(res);
    cli(&r, decide1);
    expect_rc(&r, 0);
    assert_string_equal(r.out, "accepted\n"); /* 1 of 2 */
    bw_test_cli_dispose(&r);
    cli(&r, decide2);
    expect_rc(&r, 0);
    assert_string_equal(r.out, "accepted\ncompleted\n");
    bw_test_cli_dispose(&r);
    res = result_of("cli-d", 10000);
    assert_string_equal(str(output_of(res), "decision"), "Hold");
    json_decref(res);
}

/* Refused: exit 1 with the reason and message on stderr. */
static void test_cli_refused(void **state)
{
    submit("cli-ref", "{\"prompt\":\"p\",\"options\":[\"Ship\",\"Hold\"]}");
    free(pending("cli-ref"));
    const char *const bad_option[] = {"approvals", "decide",     "cli-ref", "--option",
                                      "Nuke",      "--approver", "a",       NULL},
                      *const approve[] = {"approvals", "approve", "cli-ref", "--approver", "a", NULL};
    bw_test_cli_t r;
    cli(&r, bad_option);
    expect_rc(&r, 1);
    assert_string_equal(r.out, "");
    assert_non_null(strstr(r.err, "not_an_option"));
    bw_test_cli_dispose(&r);
    cli(&r, approve); /* "Approve" is not an option here either */
    expect_rc(&r, 1);
    assert_non_null(strstr(r.err, "not_an_option"));
    bw_test_cli_dispose(&r);
    assert_int_equal(bw_harness_result_count(&H, "cli-ref"), 0);
    assert_int_equal(bw_harness_cancel(&H, "cli-ref", "x"), 0);
    expect_error("cli-ref", "cancelled", "CANCELLED");
}

/* No holder answers an unknown id on the shared subject: exit 4 after the timeout, pointing at `list`; on
   a worker's own subject (--subject) it is refused unknown: exit 1. */
static void test_cli_no_reply(void **state)
{
    submit("cli-own", "{\"prompt\":\"p\"}");
    char *own = pending("cli-own");
    const char *const unknown[] = {"approvals", "approve",      "no-such-id", "--approver",
                                   "a",         "--timeout-ms", "1000",       NULL},
                      *const via_own[] = {"approvals", "approve",   "no-such-id", "--approver",
                                          "a",         "--subject", own,          NULL},
                      *const nobody[] = {
                          "approvals",          "approve",      "x",     "--approver", "a", "--subject",
                          "caf.nobody.listens", "--timeout-ms", "30000", NULL};
    bw_test_cli_t r;
    cli(&r, unknown);
    expect_rc(&r, 4);
    assert_non_null(strstr(r.err, "approvals list"));
    assert_true(r.ms >= 1000 && r.ms < 10000);
    bw_test_cli_dispose(&r);
    cli(&r, via_own);
    expect_rc(&r, 1);
    assert_non_null(strstr(r.err, "unknown"));
    bw_test_cli_dispose(&r);
    cli(&r, nobody); /* no subscriber at all: the server says so at once */
    expect_rc(&r, 4);
    assert_non_null(strstr(r.err, "no worker listens"));
    assert_true(r.ms < 5000);
    bw_test_cli_dispose(&r);
    free(own);
    assert_int_equal(bw_harness_cancel(&H, "cli-own", "x"), 0);
    expect_error("cli-own", "cancelled", "CANCELLED");
}

/* Usage errors: exit 2, the usage (with the exit codes) on stderr, nothing sent. */
static void test_cli_usage(void **state)
{
    static const char *const c0[] = {"approvals", NULL}, *const c1[] = {"approvals", "approve", "x", NULL},
                             *const c2[] = {"approvals", "approve", "--approver", "a", NULL},
                             *const c3[] = {"approvals", "decide", "x", "--approver", "a", NULL},
                             *const c4[] = {"approvals", "approve",  "x", "--approver",
                                            "a",         "--option", "O", NULL},
                             *const c5[] = {"approvals", "approve",      "x", "--approver",
                                            "a",         "--timeout-ms", "0", NULL},
                             *const c6[] = {"approvals", "list", "x", NULL},
                             *const c7[] = {"approvals", "list", "--approver", "a", NULL},
                             *const c8[] = {"approvals", "frobnicate", "x", "--approver", "a", NULL},
                             *const c9[] = {"approvals", "approve", "x", "y", "--approver", "a", NULL},
                             *const c10[] = {"approvals", "approve",   "x",    "--approver",
                                             "a",         "--subject", "a..b", NULL},
                             *const c11[] = {"approvals", "approve", "x", "--approver", "", NULL},
                             *const c12[] = {"approvals", "list", "--timeout-ms", "ten", NULL},
                             *const c13[] = {"approvals", "approve", "x", "--approver", NULL};
    static const char *const *const cases[] = {c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bw_test_cli_t r;
        cli(&r, cases[i]);
        expect_rc(&r, 2);
        assert_string_equal(r.out, "");
        assert_non_null(strstr(r.err, "usage"));
        assert_non_null(strstr(r.err, "exit codes"));
        bw_test_cli_dispose(&r);
    }
}

/* NATS unreachable: exit 3 at once (no retries), for list and decisions. */
static void test_cli_nats_unreachable(void **state)
{
    static const char *const list[] = {"approvals", "list", NULL}, *const approve[] = {
                                                                       "approvals",  "approve", "x",
                                                                       "--approver", "a",       NULL};
    char url[64];
    int port = bw_test_closed_port();
    assert_true(port > 0);
    snprintf(url, sizeof url, "nats://127.0.0.1:%d", port);
    bw_test_cli_t r;
    cli_at(&r, url, list);
    expect_rc(&r, 3);
    assert_non_null(strstr(r.err, "NATS"));
    assert_true(r.ms < 5000);
    bw_test_cli_dispose(&r);
    cli_at(&r, url, approve);
    expect_rc(&r, 3);
    assert_non_null(strstr(r.err, "NATS"));
    bw_test_cli_dispose(&r);
}

/* ---- APPROVAL_ALLOW_AUTO=true ------------------------------------------------------------------- */

static int setup_auto(void **state)
{
    static const char *const env[] = {"APPROVAL_ALLOW_AUTO=true", NULL};
    return start(env);
}

static void test_auto_response_allowed(void **state)
{
    int64_t t0 = bw_test_now_ms();
    submit("auto-on", "{\"prompt\":\"p\",\"response\":\"Approve\"}");
    json_t *r = result_of("auto-on", 10000), *o = output_of(r);
    assert_string_equal(str(o, "decision"), "Approve");
    assert_string_equal(str(o, "approver"), "auto");
    assert_true(bw_test_now_ms() - t0 < 5000);
    json_decref(r);
    submit("auto-obj", "{\"prompt\":\"p\",\"response\":{\"decision\":\"Reject\",\"approver\":\"bot\","
                       "\"comment\":\"dry run\"}}");
    r = result_of("auto-obj", 10000), o = output_of(r);
    assert_string_equal(str(o, "decision"), "Reject");
    assert_string_equal(str(o, "approver"), "bot");
    assert_string_equal(str(o, "comment"), "dry run");
    json_decref(r);
    expect_invalid("auto-bad", "{\"prompt\":\"p\",\"response\":\"Maybe\"}", "response");
    /* without a response it still waits for a person */
    submit("auto-none", "{\"prompt\":\"p\"}");
    bw_test_expect_accepted(decide("auto-none", "Reject", "alice", NULL), true);
    r = result_of("auto-none", 10000);
    assert_string_equal(str(output_of(r), "decision"), "Reject");
    json_decref(r);
}

/* ---- limits: APPROVAL_MAX_PENDING=3, WORKER_MAX_CONCURRENCY=1 ----------------------------------- */

static int setup_limits(void **state)
{
    static const char *const env[] = {"APPROVAL_MAX_PENDING=3", "WORKER_MAX_CONCURRENCY=1", NULL};
    return start(env);
}

/* Three pending (the limit) are fine; a fourth is TOO_MANY_PENDING_APPROVALS; a decision frees a place. */
static void test_max_pending_at_and_past_limit(void **state)
{
    char id[16];
    for (int i = 0; i < 3; i++) {
        snprintf(id, sizeof id, "lim-%d", i);
        submit(id, "{\"prompt\":\"p\"}");
        free(pending(id));
    }
    assert_int_equal((int)bw_harness_metric(&H, PENDING_GAUGE), 3);
    submit("lim-3", "{\"prompt\":\"p\"}");
    expect_error("lim-3", "error", "TOO_MANY_PENDING_APPROVALS");
    assert_int_equal(bw_test_client_find(H.client, REQ_SUBJECT, "lim-3", 0, NULL), 0);
    bw_test_expect_accepted(decide("lim-0", "Approve", "alice", NULL), true);
    json_decref(result_of("lim-0", 10000));
    submit("lim-4", "{\"prompt\":\"p\"}");
    free(pending("lim-4"));
    const char *const rest[] = {"lim-1", "lim-2", "lim-4"};
    for (int i = 0; i < 3; i++)
        assert_int_equal(bw_harness_cancel(&H, rest[i], "x"), 0);
    for (int i = 0; i < 3; i++)
        expect_error(rest[i], "cancelled", "CANCELLED");
}

/* A pending approval gives its concurrency slot back: with one slot, an echo runs while it waits. */
static void test_concurrency_slot_released(void **state)
{
    submit("slot-appr", "{\"prompt\":\"p\"}");
    free(pending("slot-appr"));
    submit("slot-appr-2", "{\"prompt\":\"p\"}");
    free(pending("slot-appr-2"));
    assert_int_equal(bw_harness_submit(&H, "slot-echo", "echo", "{\"v\":1}", 10000), 0);
    json_t *r = result_of("slot-echo", 10000);
    assert_string_equal(str(r, "status"), "success");
    json_decref(r);
    assert_int_equal(bw_harness_result_count(&H, "slot-appr"), 0);
    bw_test_expect_accepted(decide("slot-appr", "Approve", "alice", NULL), true);
    bw_test_expect_accepted(decide("slot-appr-2", "Approve", "alice", NULL), true);
    json_decref(result_of("slot-appr", 10000));
    json_decref(result_of("slot-appr-2", 10000));
}

/* ---- two workers --------------------------------------------------------------------------------- */

static int setup_two(void **state)
{
    if (start(NULL) != 0)
        return -1;
    return bw_harness_add_worker(&H, NULL) < 0 ? -1 : 0;
}

/* A decision on the shared subject reaches whichever worker holds the approval, and exactly one reply
   comes back; an unknown id gets none. */
static void test_two_workers_one_reply(void **state)
{
    char id[32], body[256];
    json_t *holders = json_object();
    for (int i = 0; i < 6; i++) {
        snprintf(id, sizeof id, "two-%d", i);
        submit(id, "{\"prompt\":\"p\"}");
    }
    for (int i = 0; i < 6; i++) {
        snprintf(id, sizeof id, "two-%d", i);
        char *holder = pending(id);
        json_object_set_new(holders, holder, json_true());
        free(holder);
        snprintf(
            body, sizeof body,
            "{\"assignment_id\":\"%s\",\"tenant_id\":\"acme\",\"decision\":\"Approve\",\"approver\":\"a\"}",
            id);
        assert_int_equal(decision_replies(DECISION_SUBJECT, body, true, 2), 1);
        json_t *r = result_of(id, 10000);
        assert_string_equal(str(output_of(r), "decision"), "Approve");
        json_decref(r);
    }
    fprintf(stderr, "two workers: the 6 approvals were held by %zu worker(s)\n", json_object_size(holders));
    snprintf(body, sizeof body,
             "{\"assignment_id\":\"two-unknown\",\"tenant_id\":\"acme\",\"decision\":\"Approve\","
             "\"approver\":\"a\"}");
    assert_int_equal(decision_replies(DECISION_SUBJECT, body, false, 2), 0);
    json_decref(holders);
}

/* ---- restarts (a journal directory that outlives the worker) ----------------------------------- */

static char journal_dir[64];
static char journal_env[128];

static int setup_restart(void **state)
{
    snprintf(journal_dir, sizeof journal_dir, "/tmp/bw-test-approvals-XXXXXX");
    if (mkdtemp(journal_dir) == NULL)
        return -1;
    snprintf(journal_env, sizeof journal_env, "APPROVAL_DIR=%s", journal_dir);
    const char *const env[] = {journal_env, NULL};
    return start(env);
}

static int teardown_restart(void **state)
{
    int rc = bw_harness_finish(&H, 0);
    bw_test_rm_rf(journal_dir);
    return rc;
}

/* Stops the running worker i with SIGTERM (it must exit 0), then starts another on the same journal and
   waits until it is ready; returns its index. */
static int restart(int i)
{
    int code = -1;
    assert_int_equal(bw_test_proc_signal(&H.workers[i], SIGTERM), 0);
    assert_int_equal(bw_test_proc_wait(&H.workers[i], 20000, &code), 0);
    assert_int_equal(code, 0);
    const char *const env[] = {journal_env, NULL};
    int next = bw_harness_add_worker(&H, env);
    assert_true(next > i);
    return next;
}

/* A pending approval survives a restart: decided on the shared subject afterwards, its result arrives. */
static void test_restart_then_decide(void **state)
{
    submit("rs-1", "{\"prompt\":\"survive?\",\"approvers\":[\"alice\",\"bob\"],\"quorum\":2}");
    bw_test_expect_accepted(decide("rs-1", "Approve", "alice", "before"), false);
    int w = restart(0);
    json_t *l = list_all(1), *v = json_object_get(l, "acme/rs-1");
    assert_non_null(v);
    assert_string_equal(str(v, "prompt"), "survive?");
    assert_int_equal(json_array_size(json_object_get(v, "votes")), 1); /* the vote before the restart too */
    json_decref(l);
    json_t *reply = ask(DECISION_SUBJECT, "rs-1", "acme", "Approve", "bob", "after", 10000);
    if (reply == NULL) {
        bw_test_proc_dump_log(&H.workers[w]);
        fail_msg("no reply from the restarted worker");
    }
    bw_test_expect_accepted(reply, true);
    json_t *r = result_of("rs-1", 10000), *o = output_of(r);
    assert_string_equal(str(o, "decision"), "Approve");
    assert_int_equal(json_array_size(json_object_get(o, "votes")), 2);
    assert_string_equal(str(json_array_get(json_object_get(o, "votes"), 0), "comment"), "before");
    json_decref(r);
    assert_int_equal(bw_harness_result_count(&H, "rs-1"), 1);
}

/* The deadline passed while no worker ran: the next one answers timeout promptly at start. */
static void test_restart_after_deadline(void **state)
{
    /* 5 s: a stop takes well under a second, even under ThreadSanitizer on a busy machine */
    submit("rs-late", "{\"prompt\":\"p\",\"timeout_ms\":5000}");
    bw_test_msg_t *m = request_of("rs-late");
    int64_t expires = rfc3339_ms(str(m->json, "expires_at"));
    bw_test_msg_destroy(m);
    assert_true(expires > 0);
    int code = -1;
    assert_int_equal(bw_test_proc_signal(&H.workers[0], SIGTERM), 0);
    assert_int_equal(bw_test_proc_wait(&H.workers[0], 20000, &code), 0);
    assert_int_equal(code, 0);
    if (bw_harness_result_count(&H, "rs-late") > 0) {
        if (wall_ms() < expires)
            fail_msg("a timeout result before the deadline");
        bw_test_note_skip("test_restart_after_deadline", "the worker's stop took past the 5 s deadline");
        skip(); /* the machine was too slow to tell: the first worker answered before it stopped */
    }
    /* the behaviour under test is the clock passing the deadline while nothing runs */
    int64_t wait = expires + 100 - wall_ms();
    if (wait > 0)
        bw_test_sleep_ms((int)wait);
    const char *const env[] = {journal_env, NULL};
    int64_t t0 = bw_test_now_ms();
    assert_true(bw_harness_add_worker(&H, env) > 0);
    expect_error("rs-late", "timeout", "TIMEOUT");
    assert_true(bw_test_now_ms() - t0 < 10000);
    assert_int_equal(bw_harness_result_count(&H, "rs-late"), 1);
}

/* A torn last line (a power loss mid-append) is skipped with a warning; the other approvals stay. */
static void test_torn_journal_line(void **state)
{
    submit("torn-a", "{\"prompt\":\"a\"}");
    submit("torn-b", "{\"prompt\":\"b\"}");
    free(pending("torn-a"));
    free(pending("torn-b"));
    int code = -1;
    assert_int_equal(bw_test_proc_signal(&H.workers[0], SIGTERM), 0);
    assert_int_equal(bw_test_proc_wait(&H.workers[0], 20000, &code), 0);
    assert_int_equal(code, 0);
    char path[160];
    snprintf(path, sizeof path, "%s/approvals.jsonl", journal_dir);
    FILE *f = fopen(path, "a");
    assert_non_null(f);
    fputs("{\"t\":\"req\",\"a\":{\"assignment_id\":\"torn-c\",\"tenant_id\":\"ac", f);
    fclose(f);
    const char *const env[] = {journal_env, NULL};
    int w = bw_harness_add_worker(&H, env);
    assert_true(w > 0);
    char *log = bw_test_read_file(H.workers[w].log_path, NULL);
    assert_non_null(log);
    if (strstr(log, "approval journal line skipped") == NULL) {
        bw_test_proc_dump_log(&H.workers[w]);
        fail_msg("no warning about the torn line");
    }
    free(log);
    json_t *l = list_all(1);
    assert_non_null(json_object_get(l, "acme/torn-a"));
    assert_non_null(json_object_get(l, "acme/torn-b"));
    json_decref(l);
    const char *const ids[] = {"torn-a", "torn-b"};
    for (int i = 0; i < 2; i++) {
        json_t *reply = ask(DECISION_SUBJECT, ids[i], "acme", "Approve", "alice", NULL, 10000);
        assert_non_null(reply);
        bw_test_expect_accepted(reply, true);
        json_decref(result_of(ids[i], 10000));
    }
    /* and the journal takes new approvals after the torn line */
    submit("torn-d", "{\"prompt\":\"d\"}");
    bw_test_expect_accepted(decide("torn-d", "Approve", "alice", NULL), true);
    json_decref(result_of("torn-d", 10000));
}

/* ---- 10,000 pending at once --------------------------------------------------------------------- */

#define MANY 10000
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define RSS_BOUND_MIB 1024     /* shadow memory and quarantine: the sanitizers multiply what a worker holds */
#define LIST_WINDOW_MS "10000" /* the CLI's wait for the first answers: the sanitizers slow the worker */
#else
#define RSS_BOUND_MIB 200
#define LIST_WINDOW_MS "3000"
#endif

static long rss_kib(int pid)
{
    char path[64], line[256];
    long kib = -1;
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    while (f != NULL && fgets(line, sizeof line, f) != NULL)
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
            break;
    if (f != NULL)
        fclose(f);
    return kib;
}

/* The time from a list request to the last part of the (one) worker's answer; *count gets the approvals
   listed, *parts the messages. */
static int64_t worker_list_ms(int *count, int *parts)
{
    natsConnection *nc = bw_test_client_conn(H.client);
    natsSubscription *sub = NULL;
    char *inbox = NULL;
    bool last = false;
    assert_int_equal(natsInbox_Create(&inbox), NATS_OK);
    assert_int_equal(natsConnection_SubscribeSync(&sub, nc, inbox), NATS_OK);
    assert_int_equal(natsSubscription_SetPendingLimits(sub, -1, -1), NATS_OK);
    int64_t t0 = bw_test_now_ms(), until = t0 + 60000;
    assert_int_equal(natsConnection_PublishRequestString(nc, LIST_SUBJECT, inbox, "{}"), NATS_OK);
    while (!last && bw_test_now_ms() < until) {
        natsMsg *m = NULL;
        if (natsSubscription_NextMsg(&m, sub, until - bw_test_now_ms()) != NATS_OK)
            break;
        json_t *j = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
        assert_true((size_t)natsMsg_GetDataLength(m) <= 1024 * 1024); /* the server's max_payload */
        *count += (int)json_array_size(json_object_get(j, "approvals"));
        (*parts)++;
        last = !json_is_false(json_object_get(j, "last"));
        json_decref(j);
        natsMsg_Destroy(m);
    }
    int64_t ms = bw_test_now_ms() - t0;
    assert_true(last);
    natsSubscription_Destroy(sub);
    natsInbox_Destroy(inbox);
    return ms;
}

/* 10,000 approvals (APPROVAL_MAX_PENDING's default: at the limit) wait at once; one more is refused. The
   worker's RSS and the time `approvals list --json` takes are printed; only loose bounds are asserted. */
static void test_ten_thousand_pending(void **state)
{
    long before = rss_kib(H.workers[0].pid);
    int64_t t0 = bw_test_now_ms();
    assert_int_equal(
        bw_harness_submit_many_with(&H, "many", MANY, TYPE, "{\"prompt\":\"Ship build 4711?\"}", 600000), 0);
    double n = 0;
    while (!((n = bw_harness_metric(&H, PENDING_GAUGE)) >= MANY) && bw_test_now_ms() - t0 < 150000)
        bw_test_sleep_ms(200);
    int64_t pending_ms = bw_test_now_ms() - t0;
    assert_int_equal((int)n, MANY);
    long rss = rss_kib(H.workers[0].pid);
    int listed = 0, parts = 0;
    int64_t answer_ms = worker_list_ms(&listed, &parts);
    static const char *const args[] = {"approvals", "list", "--json", "--timeout-ms", LIST_WINDOW_MS, NULL};
    bw_test_cli_t r;
    cli(&r, args);
    expect_rc(&r, 0);
    int lines = 0;
    for (const char *p = r.out; (p = strchr(p, '\n')) != NULL; p++)
        lines++;
    fprintf(
        stderr,
        "10000 pending: %lld ms to get there; worker RSS %ld KiB before, %ld KiB with them (%.1f MiB); the "
        "worker's list answer: %d approvals in %d parts within %lld ms; `approvals list --json "
        "--timeout-ms %s`: %lld ms, %d lines, %zu bytes\n",
        (long long)pending_ms, before, rss, rss / 1024.0, listed, parts, (long long)answer_ms, LIST_WINDOW_MS,
        (long long)r.ms, lines, strlen(r.out));
    if (lines != MANY)
        bw_test_cli_dump(&r);
    assert_int_equal(listed, MANY);
    assert_int_equal(lines, MANY);
    assert_null(strstr(r.err, "incomplete"));
    assert_true(rss > 0 && rss < RSS_BOUND_MIB * 1024);
    assert_true(answer_ms < 20000 && r.ms < 20000 + atoi(LIST_WINDOW_MS));
    bw_test_cli_dispose(&r);
    submit("many-past", "{\"prompt\":\"p\"}");
    expect_error("many-past", "error", "TOO_MANY_PENDING_APPROVALS");
}

int main(void)
{
    const struct CMUnitTest nats[] = {
        cmocka_unit_test(test_approve),
        cmocka_unit_test(test_reject),
        cmocka_unit_test(test_option_not_offered),
        cmocka_unit_test(test_wrong_approver),
        cmocka_unit_test(test_second_decision_after_completion),
        cmocka_unit_test(test_second_vote_same_approver),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_quorum_two_of_three),
        cmocka_unit_test(test_quorum_split_votes),
        cmocka_unit_test(test_other_tenant),
        cmocka_unit_test(test_unknown_id),
        cmocka_unit_test(test_malformed_decisions),
        cmocka_unit_test(test_invalid_payloads),
        cmocka_unit_test(test_payload_limits),
        cmocka_unit_test(test_quorum_unreachable_ends_at_deadline),
        cmocka_unit_test(test_auto_response_ignored_by_default),
        cmocka_unit_test_teardown(test_cli_list_table, bw_test_cli_free_live),
        cmocka_unit_test_teardown(test_cli_list_json, bw_test_cli_free_live),
        cmocka_unit_test_teardown(test_cli_list_empty, bw_test_cli_free_live),
        cmocka_unit_test_teardown(test_cli_decisions, bw_test_cli_free_live),
        cmocka_unit_test_teardown(test_cli_refused, bw_test_cli_free_live),
        cmocka_unit_test_teardown(test_cli_no_reply, bw_test_cli_free_live),
        cmocka_unit_test_teardown(test_cli_usage, bw_test_cli_free_live),
        cmocka_unit_test_teardown(test_cli_nats_unreachable, bw_test_cli_free_live),
    };
    const struct CMUnitTest autos[] = {cmocka_unit_test(test_auto_response_allowed)};
    const struct CMUnitTest limits[] = {cmocka_unit_test(test_max_pending_at_and_past_limit),
                                        cmocka_unit_test(test_concurrency_slot_released)};
    const struct CMUnitTest two[] = {cmocka_unit_test(test_two_workers_one_reply)};
    const struct CMUnitTest restarts[] = {
        cmocka_unit_test_setup_teardown(test_restart_then_decide, setup_restart, teardown_restart),
        cmocka_unit_test_setup_teardown(test_restart_after_deadline, setup_restart, teardown_restart),
        cmocka_unit_test_setup_teardown(test_torn_journal_line, setup_restart, teardown_restart),
    };
    const struct CMUnitTest many[] = {
        cmocka_unit_test_teardown(test_ten_thousand_pending, bw_test_cli_free_live)};
    int rc = cmocka_run_group_tests_name("nats", nats, setup, teardown);
    rc |= cmocka_run_group_tests_name("allow auto", autos, setup_auto, teardown);
    rc |= cmocka_run_group_tests_name("limits", limits, setup_limits, teardown);
    rc |= cmocka_run_group_tests_name("two workers", two, setup_two, teardown);
    rc |= cmocka_run_group_tests_name("restarts", restarts, NULL, NULL);
    rc |= cmocka_run_group_tests_name("ten thousand", many, setup, teardown);
    nats_CloseAndWait(2000);
    return bw_test_exit_status(rc);
}
