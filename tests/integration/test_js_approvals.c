/*
 * Integration: pending approvals in a JetStream KV bucket (CAF_CONSUMER=jetstream,
 * CAF_JS_APPROVALS_BUCKET), through real worker processes and a real nats-server with JetStream. The
 * bucket is created (history 1) and holds one entry per pending approval under the result store's key,
 * with the assignment (no payload), the times, the spec, the votes and the end; the delivery is acked
 * once the entry is written and the ApprovalRequest names the shared decision subject; no journal is
 * written. Any worker decides (HTTP on another worker than the one that took the job, NATS on a worker's
 * own subject and on the shared subject, which one worker of the queue group answers), votes of a quorum
 * go through different workers (also at the same moment), a deadline and a cancel end an approval once
 * however many workers race for it, the same assignment delivered twice gives one entry and one request,
 * a list request is answered by one worker with the whole bucket, tenants do not see each other's
 * approvals, an end left by a worker that died before its result is completed by another, a worker
 * killed -9 strands nothing, the approvals outlive every worker (a deadline that passed while none ran is
 * met by the next one started) and APPROVAL_MAX_PENDING counts the bucket. With CAF_JS_CREATE=false a
 * missing bucket stops the worker (exit 1 naming CAF_JS_APPROVALS_BUCKET); another bucket name is used.
 *
 * "Exactly one result": the entry is deleted only after the result went out, so once it is gone a round
 * trip on the collecting client and a results stream that keeps duplicates must both show one result.
 * Each group has its own server. BW_JS_GROUP=<part of a group name> runs only the matching groups;
 * --only=TEST / --skip=TEST as elsewhere.
 */
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <cmocka.h>

#include "approval_replies.h"
#include "harness.h"
#include "http_client.h"
#include "jetstream.h"
#include "testutil.h"

#define JS_MODE "CAF_CONSUMER=jetstream"
#define JS_CREATE "CAF_JS_CREATE=true"
#define BUCKET "caf_approvals"
#define TOKEN "kv-approvals-token-0123456789abcdef"
#define TOKEN_ENV "APPROVAL_TOKEN=" TOKEN
#define BEARER "Authorization: Bearer " TOKEN "\r\n"
#define REQ_SUBJECT "caf.human.request.v1"
#define DECISION_SUBJECT "caf.human.decision.v1"
#define LIST_SUBJECT "caf.human.list.v1"
#define TYPE "human_approval"
#define WAIT_MS 15000

static bw_harness_t H;
static bw_test_js_t J;
/* WORKER_ID of each worker index (the tests set them). */
static const char *worker_ids[BW_H_MAX_WORKERS];

/* ---- fixtures ---------------------------------------------------------------------------------- */

static int teardown(void **state)
{
    (void)state;
    bw_test_js_close(&J);
    return bw_harness_finish(&H, 0);
}

/* The JetStream server, the collecting client (also collecting ApprovalRequests), the helper connection
   and a results stream that keeps duplicates; no worker yet. */
static int start_server(void)
{
    memset(worker_ids, 0, sizeof worker_ids);
    if (bw_harness_start_js_server(&H) != 0 || bw_test_client_collect(H.client, REQ_SUBJECT) != 0)
        return -1;
    if (bw_test_js_connect(&J, H.nats.url) != 0)
        return -1;
    return bw_test_js_add_results_stream(&J, BW_JS_RESULTS_STREAM, BW_JS_RESULT_SUBJECT, 1, 0);
}

/* A worker in JetStream mode with WORKER_ID=id, the approvals token and extra (may be NULL). Its index. */
static int add_worker(const char *id, const char *extra)
{
    char wid[64];
    snprintf(wid, sizeof wid, "WORKER_ID=%s", id);
    const char *const env[] = {JS_MODE, JS_CREATE, TOKEN_ENV, wid, extra, NULL};
    int i = bw_harness_add_worker(&H, env);
    if (i >= 0)
        worker_ids[i] = id;
    return i;
}

/* ---- helpers ----------------------------------------------------------------------------------- */

static const char *str(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s != NULL ? s : "";
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void dump_all(void)
{
    for (int i = 0; i < H.nworkers; i++)
        bw_test_proc_dump_log(&H.workers[i]);
}

static void submit(const char *tenant, const char *id, const char *payload, int deadline_ms)
{
    if (bw_test_js_submit(&J, tenant, id, TYPE, payload, deadline_ms) != 0)
        fail_msg("publishing %s into the stream failed", id);
}

/* A round trip on the collecting client: whatever the server routed to it before has arrived. */
static void client_sync(void)
{
    assert_int_equal(natsConnection_FlushTimeout(bw_test_client_conn(H.client), 5000), NATS_OK);
}

/* The ApprovalRequests of (tenant, id) received so far. */
static int requests_of(const char *tenant, const char *id)
{
    int n = bw_test_client_count(H.client, REQ_SUBJECT), c = 0;
    for (int i = 0; i < n; i++) {
        bw_test_msg_t *m = bw_test_client_get(H.client, REQ_SUBJECT, i);
        if (m != NULL && m->json != NULL && strcmp(str(m->json, "assignment_id"), id) == 0 &&
            strcmp(str(m->json, "tenant_id"), tenant) == 0)
            c++;
        bw_test_msg_destroy(m);
    }
    return c;
}

/* The ApprovalRequest of id (waiting for it); fails when none came. Caller destroys. */
static bw_test_msg_t *request_of(const char *id)
{
    bw_test_msg_t *m = NULL;
    if (bw_test_client_find(H.client, REQ_SUBJECT, id, WAIT_MS, &m) <= 0 || m == NULL || m->json == NULL) {
        dump_all();
        fail_msg("no ApprovalRequest for %s", id);
    }
    return m;
}

/* The entry of (tenant, id), waiting for it (the approval is pending); fails when it never came. */
static json_t *entry(const char *tenant, const char *id)
{
    json_t *e = bw_test_js_kv_wait_json(&J, BUCKET, tenant, id, WAIT_MS);
    if (!json_is_object(e)) {
        dump_all();
        fail_msg("no JSON entry for %s/%s in bucket " BUCKET, tenant, id);
    }
    return e;
}

/* Waits for the ApprovalRequest and the entry of (tenant, id). */
static void pending(const char *tenant, const char *id)
{
    bw_test_msg_destroy(request_of(id));
    json_decref(entry(tenant, id));
}

static void wait_gone(const char *tenant, const char *id)
{
    if (bw_test_js_kv_wait_gone(&J, BUCKET, tenant, id, WAIT_MS) != 0) {
        dump_all();
        fail_msg("the entry of %s/%s is still in bucket " BUCKET, tenant, id);
    }
}

/* Results of (tenant, id) the collecting client received so far. */
static int results_of(const char *tenant, const char *id)
{
    int n = bw_test_client_count(H.client, BW_H_RESULTS), c = 0;
    for (int i = 0; i < n; i++) {
        bw_test_msg_t *m = bw_test_client_get(H.client, BW_H_RESULTS, i);
        if (m != NULL && m->json != NULL && strcmp(str(m->json, "assignment_id"), id) == 0 &&
            strcmp(str(m->json, "tenant_id"), tenant) == 0)
            c++;
        bw_test_msg_destroy(m);
    }
    return c;
}

/* The first result of (tenant, id), waiting for it; fails when none came. Caller decrefs. */
static json_t *result_of(const char *tenant, const char *id)
{
    int64_t end = bw_test_now_ms() + WAIT_MS;
    for (;;) {
        int n = bw_test_client_count(H.client, BW_H_RESULTS);
        for (int i = 0; i < n; i++) {
            bw_test_msg_t *m = bw_test_client_get(H.client, BW_H_RESULTS, i);
            if (m != NULL && m->json != NULL && strcmp(str(m->json, "assignment_id"), id) == 0 &&
                strcmp(str(m->json, "tenant_id"), tenant) == 0) {
                json_t *r = json_incref(m->json);
                bw_test_msg_destroy(m);
                return r;
            }
            bw_test_msg_destroy(m);
        }
        if (bw_test_now_ms() >= end)
            break;
        bw_test_sleep_ms(10);
    }
    dump_all();
    fail_msg("no result for %s/%s within %d ms", tenant, id, WAIT_MS);
    return NULL;
}

/* Once the entry of (tenant, id) is gone, exactly one result of it went out: on the collecting client
   and in the results stream (which keeps duplicates), whose results of id number stream_total (more than
   one when other tenants used the same id; -1: not checked). */
static void exactly_one_result(const char *tenant, const char *id, int stream_total)
{
    wait_gone(tenant, id);
    client_sync();
    int got = results_of(tenant, id);
    if (got != 1)
        fail_msg("%d results of %s/%s went out, want 1", got, tenant, id);
    if (stream_total < 0)
        return;
    int stored = bw_test_js_count_results(&J, BW_JS_RESULTS_STREAM, id);
    if (stored != stream_total)
        fail_msg("the results stream holds %d results of %s, want %d", stored, id, stream_total);
}

static void expect_status(json_t *r, const char *status, const char *code)
{
    if (strcmp(str(r, "status"), status) != 0 || (code != NULL && strcmp(str(r, "error_code"), code) != 0)) {
        char *s = json_dumps(r, JSON_COMPACT);
        fail_msg("expected %s/%s, got %s", status, code ? code : "-", s);
    }
}

/* ---- HTTP -------------------------------------------------------------------------------------- */

typedef struct resp {
    int status;
    char *body;
    json_t *json;
} resp_t;

static void resp_free(resp_t *r)
{
    free(r->body);
    json_decref(r->json);
    memset(r, 0, sizeof *r);
}

static int http_port(int w)
{
    int port = bw_test_worker_http_port(&H.workers[w]);
    if (port <= 0) {
        bw_test_proc_dump_log(&H.workers[w]);
        fail_msg("worker %d has no health port", w);
    }
    return port;
}

/* One request to worker w's health port with the token; never fails the test itself. */
static int http_raw(int w_port, const char *method, const char *path, const char *body, resp_t *r)
{
    memset(r, 0, sizeof *r);
    int rc = bw_test_http_body(w_port, method, path, BEARER "Content-Type: application/json\r\n", body,
                               body != NULL ? strlen(body) : 0, &r->status, &r->body, NULL, NULL);
    if (rc == 0 && r->body != NULL)
        r->json = json_loads(r->body, 0, NULL);
    return rc;
}

static resp_t http(int w, const char *method, const char *path, const char *body)
{
    resp_t r;
    if (http_raw(http_port(w), method, path, body, &r) != 0) {
        bw_test_proc_dump_log(&H.workers[w]);
        fail_msg("%s %s on worker %d: no answer", method, path, w);
    }
    return r;
}

static char *vote_body(const char *decision, const char *approver, const char *comment)
{
    json_t *d = json_pack("{ssss}", "decision", decision, "approver", approver);
    if (comment != NULL)
        json_object_set_new(d, "comment", json_string(comment));
    char *s = json_dumps(d, JSON_COMPACT);
    json_decref(d);
    return s;
}

/* POST /approvals/{id}?tenant_id=tenant on worker w. */
static resp_t http_vote(int w, const char *tenant, const char *id, const char *decision, const char *approver,
                        const char *comment)
{
    char path[256];
    snprintf(path, sizeof path, "/approvals/%s?tenant_id=%s", id, tenant);
    char *body = vote_body(decision, approver, comment);
    resp_t r = http(w, "POST", path, body);
    free(body);
    return r;
}

/* A 200 {"accepted":true,"completed":completed}. */
static void expect_http_accepted(resp_t *r, bool completed)
{
    if (r->status != 200 || r->json == NULL || !json_is_true(json_object_get(r->json, "accepted")) ||
        json_is_true(json_object_get(r->json, "completed")) != completed)
        fail_msg("want 200 accepted%s, got %d %s", completed ? " and completed" : " (not completed)",
                 r->status, r->body ? r->body : "");
    resp_free(r);
}

static void expect_http_refused(resp_t *r, int status, const char *reason)
{
    if (r->status != status || r->json == NULL || !json_is_false(json_object_get(r->json, "accepted")) ||
        strcmp(str(r->json, "reason"), reason) != 0)
        fail_msg("want %d %s, got %d: %s", status, reason, r->status, r->body ? r->body : "");
    resp_free(r);
}

/* Whether GET /approvals[?query] on worker w lists (tenant, id). */
static bool http_lists(int w, const char *query, const char *tenant, const char *id)
{
    char path[128];
    snprintf(path, sizeof path, "/approvals%s", query != NULL ? query : "");
    resp_t r = http(w, "GET", path, NULL);
    assert_int_equal(r.status, 200);
    bool found = false;
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(r.json, "approvals"), i, v)
    {
        if (strcmp(str(v, "assignment_id"), id) == 0 && strcmp(str(v, "tenant_id"), tenant) == 0)
            found = true;
    }
    resp_free(&r);
    return found;
}

/* Polls GET /approvals on worker w until it lists (tenant, id); fails after WAIT_MS. */
static void wait_http_listed(int w, const char *tenant, const char *id)
{
    int64_t end = bw_test_now_ms() + WAIT_MS;
    while (!http_lists(w, NULL, tenant, id)) {
        if (bw_test_now_ms() >= end) {
            bw_test_proc_dump_log(&H.workers[w]);
            fail_msg("worker %d never listed %s/%s on GET /approvals", w, tenant, id);
        }
        bw_test_sleep_ms(20);
    }
}

/* ---- NATS requests ----------------------------------------------------------------------------- */

static char *decision_json(const char *id, const char *tenant, const char *decision, const char *approver)
{
    json_t *d = json_pack("{ssssss}", "assignment_id", id, "decision", decision, "approver", approver);
    if (tenant != NULL)
        json_object_set_new(d, "tenant_id", json_string(tenant));
    char *s = json_dumps(d, JSON_COMPACT);
    json_decref(d);
    return s;
}

/* A decision request on subject; the reply parsed (caller decrefs); fails when none came. */
static json_t *ask(const char *subject, const char *id, const char *tenant, const char *decision,
                   const char *approver)
{
    char *body = decision_json(id, tenant, decision, approver);
    natsMsg *reply = NULL;
    natsStatus s =
        natsConnection_RequestString(&reply, bw_test_client_conn(H.client), subject, body, WAIT_MS);
    free(body);
    if (s != NATS_OK) {
        dump_all();
        fail_msg("no reply to the decision on %s for %s: %s", subject, id, natsStatus_GetText(s));
    }
    json_t *j = json_loadb(natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply), 0, NULL);
    if (!json_is_object(j))
        fail_msg("decision reply is not a JSON object: %.*s", natsMsg_GetDataLength(reply),
                 natsMsg_GetData(reply));
    natsMsg_Destroy(reply);
    return j;
}

/* Worker w's own decision subject ("." and ":" of its id written "_"). */
static void own_subject(int w, char *buf, size_t len)
{
    snprintf(buf, len, DECISION_SUBJECT ".%s", worker_ids[w]);
    for (char *p = buf + strlen(DECISION_SUBJECT) + 1; *p; p++)
        if (*p == '.' || *p == ':')
            *p = '_';
}

/* One list request: the answers arriving on its inbox until one says it is the last part, then a barrier
   (a decision for an unknown id on every live worker's own subject, replied to the same inbox; each
   worker answers in order, so a list answer of it would have come first). *answerers gets the number of
   workers that answered the list; returns the approvals listed as {"<tenant>/<id>": count}. */
static json_t *list_once(const int *live, int nlive, int *answerers)
{
    natsConnection *nc = bw_test_client_conn(H.client);
    natsSubscription *sub = NULL;
    char *inbox = NULL;
    json_t *seen = json_object(), *workers = json_object();
    int barrier_replies = 0;
    bool last = false, barrier = false;
    assert_int_equal(natsInbox_Create(&inbox), NATS_OK);
    assert_int_equal(natsConnection_SubscribeSync(&sub, nc, inbox), NATS_OK);
    assert_int_equal(natsConnection_PublishRequestString(nc, LIST_SUBJECT, inbox, "{}"), NATS_OK);
    int64_t until = bw_test_now_ms() + WAIT_MS;
    while (barrier_replies < nlive && bw_test_now_ms() < until) {
        if (last && !barrier) {
            for (int k = 0; k < nlive; k++) {
                char subject[160];
                own_subject(live[k], subject, sizeof subject);
                char *body = decision_json("kv-no-such-approval", "acme", "Approve", "barrier");
                assert_int_equal(natsConnection_PublishRequestString(nc, subject, inbox, body), NATS_OK);
                free(body);
            }
            barrier = true;
        }
        natsMsg *m = NULL;
        if (natsSubscription_NextMsg(&m, sub, until - bw_test_now_ms()) != NATS_OK)
            break;
        json_t *j = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL), *v;
        if (json_object_get(j, "accepted") != NULL) {
            barrier_replies++;
        } else {
            if (str(j, "worker_id")[0] == '\0')
                fail_msg("a list answer without worker_id: %.*s", natsMsg_GetDataLength(m),
                         natsMsg_GetData(m));
            json_object_set_new(workers, str(j, "worker_id"), json_true());
            if (!json_is_false(json_object_get(j, "last")))
                last = true;
            size_t i;
            json_array_foreach(json_object_get(j, "approvals"), i, v)
            {
                char key[512];
                snprintf(key, sizeof key, "%s/%s", str(v, "tenant_id"), str(v, "assignment_id"));
                json_int_t n = json_integer_value(json_object_get(seen, key));
                json_object_set_new(seen, key, json_integer(n + 1));
            }
        }
        json_decref(j);
        natsMsg_Destroy(m);
    }
    if (!last || barrier_replies < nlive) {
        dump_all();
        fail_msg("list: last part %s, %d of %d barrier replies", last ? "seen" : "never seen",
                 barrier_replies, nlive);
    }
    *answerers = (int)json_object_size(workers);
    json_decref(workers);
    natsSubscription_Destroy(sub);
    natsInbox_Destroy(inbox);
    return seen;
}

/* ---- which worker took a delivery -------------------------------------------------------------- */

static double delivered_of(int w)
{
    return bw_harness_metric_of(&H, w, "beamline_worker_js_delivered_total");
}

/* Worker 0 and 1's delivery counters now. */
static void delivered_now(double before[2])
{
    for (int w = 0; w < 2; w++)
        before[w] = delivered_of(w);
}

/* The one of worker 0 and 1 whose delivery counter moved since before (one delivery expected). */
static int taker(const double before[2])
{
    int64_t end = bw_test_now_ms() + WAIT_MS;
    for (;;) {
        bool moved[2] = {delivered_of(0) > before[0], delivered_of(1) > before[1]};
        if (moved[0] && moved[1])
            fail_msg("both workers counted a delivery of one assignment");
        if (moved[0] || moved[1])
            return moved[0] ? 0 : 1;
        if (bw_test_now_ms() >= end)
            fail_msg("no worker counted the delivery");
        bw_test_sleep_ms(20);
    }
}

/* The consumer has nothing pending or awaiting an ack: every delivery was acked. */
static void wait_idle(void)
{
    bw_test_js_consumer_t c;
    if (bw_test_js_wait_idle(&J, BW_JS_STREAM, BW_JS_DURABLE, WAIT_MS, &c) != 0) {
        dump_all();
        fail_msg("consumer not idle: num_pending %llu, num_ack_pending %lld",
                 (unsigned long long)c.num_pending, (long long)c.num_ack_pending);
    }
}

/* Worker i's exit code (the harness's wait). */
static int wait_exit(int i, int timeout_ms)
{
    return bw_harness_wait_exit(&H, i, timeout_ms);
}

/* ---- two workers (group "pair") ---------------------------------------------------------------- */

static int setup_pair(void **state)
{
    (void)state;
    if (start_server() != 0)
        return -1;
    if (add_worker("kv-a", NULL) != 0 || add_worker("kv-b", NULL) != 1)
        return -1;
    return 0;
}

/* The bucket (history 1) was created; a human_approval delivery writes its entry (assignment without its
   payload, times, spec, no votes, no end) under the result store's key, publishes an ApprovalRequest whose
   decision_subject is the shared subject, and is acked; nothing goes to APPROVAL_DIR. The worker that did
   not take it decides it on its own subject. */
static void test_bucket_entry_and_request(void **state)
{
    (void)state;
    bw_test_js_stream_t st;
    assert_int_equal(bw_test_js_stream(&J, "KV_" BUCKET, &st), 0);
    assert_string_equal(st.subject, "$KV." BUCKET ".>");
    assert_int_equal(st.max_msgs_per_subject, 1);

    double before[2];
    delivered_now(before);
    int64_t t0 = wall_ms();
    submit("acme", "kv-1",
           "{\"prompt\":\"Ship 1.2?\",\"approvers\":[\"alice\",\"bob\"],\"context\":{\"build\":7}}", 60000);
    bw_test_msg_t *m = request_of("kv-1");
    assert_string_equal(str(m->json, "decision_subject"), DECISION_SUBJECT);
    assert_string_equal(str(m->json, "tenant_id"), "acme");
    bw_test_msg_destroy(m);
    int took = taker(before);

    json_t *e = entry("acme", "kv-1"), *a = json_object_get(e, "a"), *spec = json_object_get(e, "spec");
    char *dump = json_dumps(e, JSON_COMPACT);
    if (!json_is_object(a) || !json_is_object(spec))
        fail_msg("entry without \"a\" or \"spec\": %s", dump);
    assert_string_equal(str(a, "assignment_id"), "kv-1");
    assert_string_equal(str(a, "tenant_id"), "acme");
    /* the payload's fields live in "spec" only (the worker keeps an emptied payload in the assignment) */
    char *asg = json_dumps(a, JSON_COMPACT);
    if (strstr(asg, "Ship 1.2?") != NULL || strstr(asg, "\"build\"") != NULL)
        fail_msg("the entry's assignment keeps its payload: %s", dump);
    free(asg);
    json_int_t rcv = json_integer_value(json_object_get(e, "rcv")),
               req = json_integer_value(json_object_get(e, "req")),
               exp = json_integer_value(json_object_get(e, "exp"));
    if (rcv < t0 - 1000 || req < rcv || req > wall_ms() + 1000 || exp < rcv + 59000 || exp > req + 61000)
        fail_msg("entry times rcv %lld req %lld exp %lld (t0 %lld): %s", (long long)rcv, (long long)req,
                 (long long)exp, (long long)t0, dump);
    assert_string_equal(str(spec, "prompt"), "Ship 1.2?");
    json_t *want = json_pack("[ss]", "Approve", "Reject");
    assert_true(json_equal(json_object_get(spec, "options"), want));
    json_decref(want);
    want = json_pack("[ss]", "alice", "bob");
    assert_true(json_equal(json_object_get(spec, "approvers"), want));
    json_decref(want);
    assert_int_equal(json_integer_value(json_object_get(spec, "quorum")), 1);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(spec, "context"), "build")), 7);
    if (!json_is_array(json_object_get(e, "votes")) || json_array_size(json_object_get(e, "votes")) != 0 ||
        !json_is_null(json_object_get(e, "end")))
        fail_msg("a new entry has votes or an end: %s", dump);
    free(dump);
    json_decref(e);

    wait_idle();
    assert_int_equal(bw_test_js_stream_msgs(&J, BW_JS_STREAM), 0);
    client_sync();
    assert_int_equal(results_of("acme", "kv-1"), 0);
    for (int w = 0; w < 2; w++) {
        char journal[400];
        struct stat sb;
        snprintf(journal, sizeof journal, "%s/approvals.jsonl", bw_harness_approval_dir(&H, w));
        if (stat(journal, &sb) == 0 && sb.st_size > 0)
            fail_msg("worker %d wrote its journal %s in JetStream mode", w, journal);
    }

    char subject[160];
    own_subject(1 - took, subject, sizeof subject);
    bw_test_expect_refused(ask(subject, "kv-1", "acme", "Approve", "mallory"), "not_an_approver");
    bw_test_expect_accepted(ask(subject, "kv-1", "acme", "Reject", "bob"), true);
    json_t *r = result_of("acme", "kv-1");
    expect_status(r, "success", NULL);
    assert_string_equal(str(json_object_get(r, "output"), "decision"), "Reject");
    assert_string_equal(str(json_object_get(r, "output"), "approver"), "bob");
    assert_string_equal(str(r, "worker_id"), worker_ids[1 - took]);
    json_decref(r);
    exactly_one_result("acme", "kv-1", 1);
}

/* Taken by one worker, decided over HTTP on the other: accepted and completed, one success result from
   the deciding worker, the entry deleted; a second decision afterwards is refused on either worker. */
static void test_decide_http_on_other_worker(void **state)
{
    (void)state;
    double before[2];
    delivered_now(before);
    submit("acme", "kv-http-1", "{\"prompt\":\"p\"}", 60000);
    pending("acme", "kv-http-1");
    int took = taker(before), other = 1 - took;
    wait_http_listed(other, "acme", "kv-http-1");

    resp_t r = http_vote(other, "acme", "kv-http-1", "Maybe", "alice", NULL);
    expect_http_refused(&r, 400, "not_an_option");
    r = http_vote(other, "acme", "kv-http-1", "Approve", "alice", "looks good");
    expect_http_accepted(&r, true);
    json_t *res = result_of("acme", "kv-http-1"), *out = json_object_get(res, "output");
    expect_status(res, "success", NULL);
    assert_string_equal(str(out, "decision"), "Approve");
    assert_string_equal(str(out, "approver"), "alice");
    assert_string_equal(str(out, "comment"), "looks good");
    assert_string_equal(str(res, "worker_id"), worker_ids[other]);
    json_decref(res);
    exactly_one_result("acme", "kv-http-1", 1);

    for (int w = 0; w < 2; w++) {
        r = http_vote(w, "acme", "kv-http-1", "Reject", "bob", NULL);
        const char *reason = str(r.json, "reason");
        if (!json_is_false(json_object_get(r.json, "accepted")) ||
            !((r.status == 409 && strcmp(reason, "finished") == 0) ||
              (r.status == 404 && strcmp(reason, "unknown") == 0)))
            fail_msg("a decision after the result on worker %d: %d %s", w, r.status, r.body ? r.body : "");
        if (strcmp(reason, "finished") != 0)
            fprintf(stderr, "note: worker %d answers a decided approval %d %s (core mode: 409 finished)\n", w,
                    r.status, reason);
        resp_free(&r);
    }
    client_sync();
    assert_int_equal(results_of("acme", "kv-http-1"), 1);
}

/* Quorum 2 of three approvers, voted through different workers: the first vote is in the entry and not
   completing; the same approver again (on the other worker) is already_voted, a stranger not_an_approver;
   the second approver on the other worker completes it with both votes in the result. */
static void test_quorum_votes_across_workers(void **state)
{
    (void)state;
    submit("acme", "kv-q-1", "{\"prompt\":\"q\",\"approvers\":[\"alice\",\"bob\",\"carol\"],\"quorum\":2}",
           60000);
    pending("acme", "kv-q-1");
    resp_t r = http_vote(0, "acme", "kv-q-1", "Approve", "alice", "first");
    expect_http_accepted(&r, false);
    json_t *e = entry("acme", "kv-q-1"), *votes = json_object_get(e, "votes");
    if (json_array_size(votes) != 1 || strcmp(str(json_array_get(votes, 0), "approver"), "alice") != 0 ||
        strcmp(str(json_array_get(votes, 0), "decision"), "Approve") != 0 ||
        !json_is_integer(json_object_get(json_array_get(votes, 0), "at")) ||
        !json_is_string(json_object_get(json_array_get(votes, 0), "decided_at")) ||
        strcmp(str(json_array_get(votes, 0), "comment"), "first") != 0 ||
        !json_is_null(json_object_get(e, "end"))) {
        char *s = json_dumps(e, JSON_COMPACT);
        fail_msg("an accepted vote is not in the entry: %s", s);
    }
    json_decref(e);

    r = http_vote(1, "acme", "kv-q-1", "Approve", "alice", NULL);
    expect_http_refused(&r, 409, "already_voted");
    r = http_vote(1, "acme", "kv-q-1", "Approve", "mallory", NULL);
    expect_http_refused(&r, 403, "not_an_approver");
    client_sync();
    assert_int_equal(results_of("acme", "kv-q-1"), 0);

    r = http_vote(1, "acme", "kv-q-1", "Approve", "bob", "second");
    expect_http_accepted(&r, true);
    json_t *res = result_of("acme", "kv-q-1"), *out = json_object_get(res, "output");
    expect_status(res, "success", NULL);
    assert_string_equal(str(out, "approver"), "bob");
    votes = json_object_get(out, "votes");
    assert_int_equal(json_array_size(votes), 2);
    assert_string_equal(str(json_array_get(votes, 0), "approver"), "alice");
    assert_string_equal(str(json_array_get(votes, 1), "approver"), "bob");
    json_decref(res);
    exactly_one_result("acme", "kv-q-1", 1);
}

/* Two votes sent at the same moment to the two workers. */
typedef struct vote_thread {
    pthread_barrier_t *go;
    int port;
    char path[128];
    const char *approver;
    resp_t r;
    int rc;
} vote_thread_t;

static void *vote_main(void *arg)
{
    vote_thread_t *v = arg;
    char *body = vote_body("Approve", v->approver, NULL);
    pthread_barrier_wait(v->go);
    v->rc = http_raw(v->port, "POST", v->path, body, &v->r);
    free(body);
    return NULL;
}

/* Quorum 2, two approvers voting at once on different workers (four rounds): both votes are accepted
   (a revision conflict is retried, not refused), exactly one completes, and the one result has both. */
static void test_concurrent_votes(void **state)
{
    (void)state;
    static const char *const approvers[2] = {"alice", "bob"};
    int ports[2] = {http_port(0), http_port(1)};
    for (int round = 0; round < 4; round++) {
        char id[32];
        snprintf(id, sizeof id, "kv-conc-%d", round);
        submit("acme", id, "{\"prompt\":\"both?\",\"quorum\":2}", 60000);
        pending("acme", id);
        wait_http_listed(0, "acme", id);
        wait_http_listed(1, "acme", id);

        pthread_barrier_t go;
        pthread_t t[2];
        vote_thread_t v[2];
        memset(v, 0, sizeof v);
        assert_int_equal(pthread_barrier_init(&go, NULL, 2), 0);
        for (int k = 0; k < 2; k++) {
            v[k].go = &go;
            v[k].port = ports[k];
            v[k].approver = approvers[k];
            snprintf(v[k].path, sizeof v[k].path, "/approvals/%s?tenant_id=acme", id);
            assert_int_equal(pthread_create(&t[k], NULL, vote_main, &v[k]), 0);
        }
        for (int k = 0; k < 2; k++)
            pthread_join(t[k], NULL);
        pthread_barrier_destroy(&go);

        int completed = 0;
        char answers[2][256];
        for (int k = 0; k < 2; k++) {
            snprintf(answers[k], sizeof answers[k], "%d %s", v[k].r.status, v[k].r.body ? v[k].r.body : "");
            bool ok = v[k].rc == 0 && v[k].r.status == 200 &&
                      json_is_true(json_object_get(v[k].r.json, "accepted"));
            completed += ok && json_is_true(json_object_get(v[k].r.json, "completed"));
            if (!ok) {
                resp_free(&v[0].r);
                resp_free(&v[1].r);
                dump_all();
                fail_msg("%s round %d: %s's vote on worker %d was not accepted: %s", id, round, approvers[k],
                         k, answers[k]);
            }
        }
        resp_free(&v[0].r);
        resp_free(&v[1].r);
        if (completed != 1)
            fail_msg("%s: %d votes say completed, want 1 (%s | %s)", id, completed, answers[0], answers[1]);
        json_t *res = result_of("acme", id),
               *votes = json_object_get(json_object_get(res, "output"), "votes");
        expect_status(res, "success", NULL);
        assert_int_equal(json_array_size(votes), 2);
        bool seen[2] = {false, false};
        for (size_t k = 0; k < 2; k++)
            for (int a = 0; a < 2; a++)
                seen[a] |= strcmp(str(json_array_get(votes, k), "approver"), approvers[a]) == 0;
        assert_true(seen[0] && seen[1]);
        json_decref(res);
        exactly_one_result("acme", id, 1);
    }
}

/* Both workers race for the deadline: exactly one timeout result, the entry deleted. */
static void test_timeout_once(void **state)
{
    (void)state;
    submit("acme", "kv-to-1", "{\"prompt\":\"late\",\"timeout_ms\":1500}", 0);
    json_t *e = entry("acme", "kv-to-1");
    json_int_t rcv = json_integer_value(json_object_get(e, "rcv")),
               exp = json_integer_value(json_object_get(e, "exp"));
    if (exp - rcv < 1400 || exp - rcv > 3500)
        fail_msg("timeout_ms 1500 gave exp - rcv = %lld", (long long)(exp - rcv));
    json_decref(e);
    wait_http_listed(0, "acme", "kv-to-1");
    wait_http_listed(1, "acme", "kv-to-1");
    json_t *r = result_of("acme", "kv-to-1");
    expect_status(r, "timeout", "TIMEOUT");
    if (wall_ms() < exp - 50)
        fail_msg("timed out %lld ms before expires_at", (long long)(exp - wall_ms()));
    json_decref(r);
    exactly_one_result("acme", "kv-to-1", 1);
}

/* A cancel reaches both workers: exactly one cancelled result, the entry deleted. */
static void test_cancel_once(void **state)
{
    (void)state;
    submit("acme", "kv-cancel-1", "{\"prompt\":\"stop me\"}", 60000);
    pending("acme", "kv-cancel-1");
    wait_http_listed(0, "acme", "kv-cancel-1");
    wait_http_listed(1, "acme", "kv-cancel-1");
    assert_int_equal(bw_harness_cancel(&H, "kv-cancel-1", "test"), 0);
    json_t *r = result_of("acme", "kv-cancel-1");
    expect_status(r, "cancelled", "CANCELLED");
    json_decref(r);
    exactly_one_result("acme", "kv-cancel-1", 1);
}

/* The same assignment published twice (different Nats-Msg-Id), once after the entry was written and once
   twice back to back: each time one entry (the first write's revision stays), one ApprovalRequest, both
   deliveries acked; decided, one result. */
static void publish_copy(const char *id, const char *msg_id)
{
    const char *const hdrs[] = {"tenant_id", "acme", "version", "1", NULL};
    char *a = bw_test_js_assignment("acme", id, TYPE, "{\"prompt\":\"twice\"}", 60000);
    int rc = bw_test_js_publish(&J, BW_JS_ASSIGN_SUBJECT, a, hdrs, msg_id, NULL);
    free(a);
    assert_int_equal(rc, 0);
}

static bool delivered_at_least(const bw_test_js_consumer_t *c, void *ud)
{
    return c->delivered >= *(uint64_t *)ud && c->num_pending == 0 && c->num_ack_pending == 0;
}

static void wait_delivered(uint64_t n)
{
    bw_test_js_consumer_t c;
    if (bw_test_js_wait_consumer(&J, BW_JS_STREAM, BW_JS_DURABLE, delivered_at_least, &n, WAIT_MS, &c) != 0) {
        dump_all();
        fail_msg("consumer: delivered %llu (want %llu), num_pending %llu, num_ack_pending %lld",
                 (unsigned long long)c.delivered, (unsigned long long)n, (unsigned long long)c.num_pending,
                 (long long)c.num_ack_pending);
    }
}

static void test_duplicate_delivery(void **state)
{
    (void)state;
    bw_test_js_consumer_t c;
    /* a copy after the entry exists */
    assert_int_equal(bw_test_js_consumer(&J, BW_JS_STREAM, BW_JS_DURABLE, &c), 0);
    publish_copy("kv-dup-1", "kv-dup-1-a");
    pending("acme", "kv-dup-1");
    uint64_t rev = bw_test_js_kv_revision(&J, BUCKET, "acme", "kv-dup-1");
    assert_true(rev > 0);
    publish_copy("kv-dup-1", "kv-dup-1-b");
    wait_delivered(c.delivered + 2);
    /* copies back to back, likely taken by both workers at once */
    publish_copy("kv-dup-2", "kv-dup-2-a");
    publish_copy("kv-dup-2", "kv-dup-2-b");
    wait_delivered(c.delivered + 4);
    pending("acme", "kv-dup-2");
    client_sync();
    assert_int_equal(bw_test_js_stream_msgs(&J, BW_JS_STREAM), 0);
    if (bw_test_js_kv_revision(&J, BUCKET, "acme", "kv-dup-1") != rev)
        fail_msg("the second delivery of kv-dup-1 rewrote its entry (revision %llu, then %llu)",
                 (unsigned long long)rev,
                 (unsigned long long)bw_test_js_kv_revision(&J, BUCKET, "acme", "kv-dup-1"));
    for (int k = 1; k <= 2; k++) {
        char id[16];
        snprintf(id, sizeof id, "kv-dup-%d", k);
        int n = requests_of("acme", id);
        if (n != 1)
            fail_msg("%d ApprovalRequests for %s delivered twice, want 1", n, id);
        assert_int_equal(results_of("acme", id), 0);
        bw_test_expect_accepted(ask(DECISION_SUBJECT, id, "acme", "Approve", "alice"), true);
        json_t *r = result_of("acme", id);
        expect_status(r, "success", NULL);
        json_decref(r);
        exactly_one_result("acme", id, 1);
    }
}

/* A list request is answered by one worker (the queue group) with every pending approval of the bucket,
   whichever worker took them, each once; GET /approvals on both workers lists them all; so does the CLI,
   each once. */
static void test_list_one_answer(void **state)
{
    (void)state;
    double before[2];
    int took[2];
    static const char *const ids[2] = {"kv-list-1", "kv-list-2"};
    static const char *const tenants[2] = {"acme", "beta"};
    for (int k = 0; k < 2; k++) {
        delivered_now(before);
        submit(tenants[k], ids[k], "{\"prompt\":\"listed\"}", 60000);
        pending(tenants[k], ids[k]);
        took[k] = taker(before);
    }
    fprintf(stderr, "note: %s taken by worker %d, %s by worker %d\n", ids[0], took[0], ids[1], took[1]);
    static const int live[2] = {0, 1};
    for (int round = 0; round < 4; round++) {
        int answerers = 0;
        json_t *seen = list_once(live, 2, &answerers);
        if (answerers != 1)
            fail_msg("list round %d: %d workers answered, want 1 (the queue group)", round, answerers);
        for (int k = 0; k < 2; k++) {
            char key[64];
            snprintf(key, sizeof key, "%s/%s", tenants[k], ids[k]);
            json_int_t n = json_integer_value(json_object_get(seen, key));
            if (n != 1)
                fail_msg("list round %d: %s listed %lld times, want 1", round, key, (long long)n);
        }
        json_decref(seen);
    }
    for (int w = 0; w < 2; w++)
        for (int k = 0; k < 2; k++)
            if (!http_lists(w, NULL, tenants[k], ids[k]))
                fail_msg("GET /approvals on worker %d does not list %s/%s", w, tenants[k], ids[k]);

    char url[160];
    snprintf(url, sizeof url, "NATS_URL=%s", H.nats.url);
    const char *const env[] = {url, NULL};
    static const char *const args[] = {"approvals", "list", "--json", NULL};
    bw_test_cli_t cli;
    bw_test_cli_run(&cli, args, env, NULL);
    if (cli.rc != 0) {
        bw_test_cli_dump(&cli);
        fail_msg("approvals list --json: exit %d", cli.rc);
    }
    for (int k = 0; k < 2; k++) {
        char needle[64];
        int n = 0;
        snprintf(needle, sizeof needle, "\"%s\"", ids[k]);
        for (const char *p = strstr(cli.out, needle); p != NULL; p = strstr(p + 1, needle))
            n++;
        if (n != 1) {
            bw_test_cli_dump(&cli);
            fail_msg("approvals list --json shows %s %d times, want 1", ids[k], n);
        }
    }
    bw_test_cli_dispose(&cli);

    for (int k = 0; k < 2; k++) {
        assert_int_equal(bw_harness_cancel(&H, ids[k], "listed"), 0);
        json_t *r = result_of(tenants[k], ids[k]);
        expect_status(r, "cancelled", "CANCELLED");
        json_decref(r);
        exactly_one_result(tenants[k], ids[k], 1);
    }
}

/* The same id pending for two tenants: two entries; a third tenant gets unknown (NATS and HTTP, 404) and
   does not see them listed; no tenant is ambiguous; each tenant decides its own only. */
static void test_tenant_isolation(void **state)
{
    (void)state;
    submit("acme", "kv-ten-1", "{\"prompt\":\"acme's\"}", 60000);
    submit("beta", "kv-ten-1", "{\"prompt\":\"beta's\"}", 60000);
    json_t *ea = entry("acme", "kv-ten-1"), *eb = entry("beta", "kv-ten-1");
    assert_string_equal(str(json_object_get(ea, "spec"), "prompt"), "acme's");
    assert_string_equal(str(json_object_get(eb, "spec"), "prompt"), "beta's");
    json_decref(ea);
    json_decref(eb);
    for (int w = 0; w < 2; w++) {
        wait_http_listed(w, "acme", "kv-ten-1");
        wait_http_listed(w, "beta", "kv-ten-1");
    }

    bw_test_expect_refused(ask(DECISION_SUBJECT, "kv-ten-1", "gamma", "Approve", "alice"), "unknown");
    bw_test_expect_refused(ask(DECISION_SUBJECT, "kv-ten-1", NULL, "Approve", "alice"), "ambiguous");
    for (int w = 0; w < 2; w++) {
        char subject[160];
        own_subject(w, subject, sizeof subject);
        bw_test_expect_refused(ask(subject, "kv-ten-1", "gamma", "Approve", "alice"), "unknown");
        resp_t r = http(w, "GET", "/approvals/kv-ten-1?tenant_id=gamma", NULL);
        expect_http_refused(&r, 404, "unknown");
        r = http_vote(w, "gamma", "kv-ten-1", "Approve", "alice", NULL);
        expect_http_refused(&r, 404, "unknown");
        r = http(w, "GET", "/approvals/kv-ten-1?tenant_id=beta", NULL);
        assert_int_equal(r.status, 200);
        assert_string_equal(str(r.json, "tenant_id"), "beta");
        assert_string_equal(str(r.json, "prompt"), "beta's");
        resp_free(&r);
        assert_false(http_lists(w, "?tenant_id=gamma", "acme", "kv-ten-1"));
        assert_false(http_lists(w, "?tenant_id=beta", "acme", "kv-ten-1"));
        assert_true(http_lists(w, "?tenant_id=beta", "beta", "kv-ten-1"));
    }

    bw_test_expect_accepted(ask(DECISION_SUBJECT, "kv-ten-1", "acme", "Approve", "alice"), true);
    json_t *r = result_of("acme", "kv-ten-1");
    expect_status(r, "success", NULL);
    json_decref(r);
    exactly_one_result("acme", "kv-ten-1", 1);
    json_decref(entry("beta", "kv-ten-1")); /* beta's waits on */
    assert_int_equal(results_of("beta", "kv-ten-1"), 0);
    resp_t h = http_vote(1, "beta", "kv-ten-1", "Reject", "bob", NULL);
    expect_http_accepted(&h, true);
    r = result_of("beta", "kv-ten-1");
    assert_string_equal(str(json_object_get(r, "output"), "decision"), "Reject");
    json_decref(r);
    /* not counted in the results stream: the result's Nats-Msg-Id is "result-<id>" without the tenant,
       so acme's and beta's within its 100 ms duplicate window would be one message there */
    exactly_one_result("beta", "kv-ten-1", -1);
    assert_int_equal(results_of("acme", "kv-ten-1"), 1);
}

/* ---- ends left by a worker that died (group "stranded") ------------------------------------------ */

/* The entry of (tenant, id) rewritten (revision-checked) with a vote (approver may be NULL: none) and an
   end {status, by: "kv-dead", at: 13 s ago, reason?}, as a worker that wrote it and died before publishing
   would have left it. */
static void strand(const char *id, const char *approver, const char *status, const char *reason)
{
    json_t *e = entry("acme", id);
    uint64_t rev = bw_test_js_kv_revision(&J, BUCKET, "acme", id);
    assert_true(rev > 0);
    json_int_t at = (json_int_t)(wall_ms() - 13000);
    if (approver != NULL)
        json_array_append_new(json_object_get(e, "votes"),
                              json_pack("{sssssnsssI}", "approver", approver, "decision", "Approve",
                                        "comment", "decided_at", "2026-12-06T00:00:00.000Z", "at", at));
    json_t *end = json_pack("{sssssI}", "status", status, "by", "kv-dead", "at", at);
    if (reason != NULL)
        json_object_set_new(end, "reason", json_string(reason));
    json_object_set_new(e, "end", end);
    char *val = json_dumps(e, JSON_COMPACT);
    json_decref(e);
    assert_int_equal(bw_test_js_kv_update(&J, BUCKET, "acme", id, val, rev), 0);
    free(val);
}

/* Ends written by a worker that died before publishing (the test writes them as such a worker would, 13 s
   in the past): a quorum vote with end success, an end timeout, an end cancelled with a reason. While the
   claim grace (15 s after the end) lasts, a vote is refused "finished"; then one of the two live workers
   completes each with what the end says; one result each, entries deleted, both workers still serving. */
static void test_stranded_ends_completed(void **state)
{
    (void)state;
    static const char *const ids[3] = {"kv-strand-ok", "kv-strand-to", "kv-strand-cx"};
    for (int k = 0; k < 3; k++) {
        submit("acme", ids[k], "{\"prompt\":\"stranded\"}", 60000);
        pending("acme", ids[k]);
        wait_http_listed(0, "acme", ids[k]);
        wait_http_listed(1, "acme", ids[k]);
    }
    int64_t written = bw_test_now_ms();
    strand(ids[0], "alice", "success", NULL);
    strand(ids[1], NULL, "timeout", NULL);
    strand(ids[2], NULL, "cancelled", "operator gone");
    json_t *reply = ask(DECISION_SUBJECT, ids[0], "acme", "Reject", "bob");
    if (bw_test_now_ms() - written < 1800) /* else it may be completed already: nothing to compare */
        bw_test_expect_refused(reply, "finished");
    else
        json_decref(reply);

    json_t *r = result_of("acme", ids[0]), *out = json_object_get(r, "output");
    expect_status(r, "success", NULL);
    assert_string_equal(str(out, "decision"), "Approve");
    assert_string_equal(str(out, "approver"), "alice");
    json_decref(r);
    r = result_of("acme", ids[1]);
    expect_status(r, "timeout", "TIMEOUT");
    json_decref(r);
    r = result_of("acme", ids[2]);
    expect_status(r, "cancelled", "CANCELLED");
    json_decref(r);
    for (int k = 0; k < 3; k++)
        exactly_one_result("acme", ids[k], 1);
    /* both workers still serve, and list none of them */
    for (int w = 0; w < 2; w++)
        for (int k = 0; k < 3; k++)
            assert_false(http_lists(w, NULL, "acme", ids[k]));
}

/* ---- a worker killed -9 (group "kill") --------------------------------------------------------- */

static int setup_server(void **state)
{
    (void)state;
    return start_server();
}

/* Worker A takes two approvals (B is not running yet), B starts and mirrors them, A is killed -9: the
   shared subject is answered (by B) and the decision completes; the other approval's deadline is met
   by B. One result each, entries deleted. */
static void test_killed_worker_strands_nothing(void **state)
{
    (void)state;
    assert_int_equal(add_worker("kv-a", NULL), 0);
    submit("acme", "kv-kill-1", "{\"prompt\":\"decide me\"}", 60000);
    submit("acme", "kv-kill-2", "{\"prompt\":\"let me expire\",\"timeout_ms\":5000}", 0);
    pending("acme", "kv-kill-1");
    pending("acme", "kv-kill-2");
    json_t *e = entry("acme", "kv-kill-2");
    json_int_t exp = json_integer_value(json_object_get(e, "exp"));
    json_decref(e);
    wait_idle();

    assert_int_equal(add_worker("kv-b", NULL), 1);
    wait_http_listed(1, "acme", "kv-kill-1");
    wait_http_listed(1, "acme", "kv-kill-2");
    assert_int_equal(bw_test_proc_signal(&H.workers[0], SIGKILL), 0);
    assert_int_equal(wait_exit(0, 10000), 128 + SIGKILL);
    int64_t killed_at = wall_ms();

    bw_test_expect_accepted(ask(DECISION_SUBJECT, "kv-kill-1", "acme", "Approve", "alice"), true);
    json_t *r = result_of("acme", "kv-kill-1");
    expect_status(r, "success", NULL);
    assert_string_equal(str(r, "worker_id"), "kv-b");
    json_decref(r);
    exactly_one_result("acme", "kv-kill-1", 1);

    r = result_of("acme", "kv-kill-2");
    expect_status(r, "timeout", "TIMEOUT");
    if (killed_at < exp)
        assert_string_equal(str(r, "worker_id"), "kv-b");
    else
        fprintf(stderr,
                "note: kv-a was killed %lld ms after kv-kill-2 expired: who timed it out is not shown\n",
                (long long)(killed_at - exp));
    json_decref(r);
    exactly_one_result("acme", "kv-kill-2", 1);
    wait_idle();
}

/* ---- every worker stopped, one started (group "restart") ---------------------------------------- */

/* A takes three approvals, one of them expiring in 3 s, and stops (SIGTERM, exit 0): they stay in the
   bucket. B (APPROVAL_MAX_PENDING=2), started once that deadline passed with no worker running, answers it
   timeout at once, lists the other two (NATS and HTTP), refuses a new one with TOO_MANY_PENDING_APPROVALS
   (the bucket's count: B took none itself), decides one, and then takes another. */
static void test_restart_keeps_approvals(void **state)
{
    (void)state;
    assert_int_equal(add_worker("kv-a", "APPROVAL_MAX_PENDING=3"), 0);
    submit("acme", "kv-rs-1", "{\"prompt\":\"one\"}", 60000);
    submit("acme", "kv-rs-2", "{\"prompt\":\"two\"}", 60000);
    submit("acme", "kv-rs-exp", "{\"prompt\":\"soon\",\"timeout_ms\":3000}", 0);
    pending("acme", "kv-rs-1");
    pending("acme", "kv-rs-2");
    json_t *e = entry("acme", "kv-rs-exp");
    json_int_t exp = json_integer_value(json_object_get(e, "exp"));
    json_decref(e);
    wait_idle();
    assert_int_equal(bw_test_proc_signal(&H.workers[0], SIGTERM), 0);
    assert_int_equal(wait_exit(0, 20000), 0);
    bool down_at_deadline = wall_ms() < exp;
    json_decref(entry("acme", "kv-rs-1"));
    json_decref(entry("acme", "kv-rs-2"));
    while (down_at_deadline && wall_ms() <= exp) /* the event under test: the deadline passes, no worker up */
        bw_test_sleep_ms(20);

    assert_int_equal(add_worker("kv-b", "APPROVAL_MAX_PENDING=2"), 1);
    json_t *r = result_of("acme", "kv-rs-exp");
    expect_status(r, "timeout", "TIMEOUT");
    if (down_at_deadline)
        assert_string_equal(str(r, "worker_id"), "kv-b");
    else
        fprintf(stderr, "note: kv-a stopped after kv-rs-exp's deadline: not the case under test\n");
    json_decref(r);
    exactly_one_result("acme", "kv-rs-exp", 1);
    wait_http_listed(1, "acme", "kv-rs-1");
    wait_http_listed(1, "acme", "kv-rs-2");
    static const int live[1] = {1};
    int answerers = 0;
    json_t *seen = list_once(live, 1, &answerers);
    assert_int_equal(answerers, 1);
    assert_int_equal(json_integer_value(json_object_get(seen, "acme/kv-rs-1")), 1);
    assert_int_equal(json_integer_value(json_object_get(seen, "acme/kv-rs-2")), 1);
    json_decref(seen);

    submit("acme", "kv-rs-3", "{\"prompt\":\"three\"}", 60000);
    r = result_of("acme", "kv-rs-3");
    expect_status(r, "error", "TOO_MANY_PENDING_APPROVALS");
    json_decref(r);
    wait_idle();
    client_sync();
    assert_int_equal(requests_of("acme", "kv-rs-3"), 0);
    assert_int_equal(bw_test_js_kv_revision(&J, BUCKET, "acme", "kv-rs-3"), 0);

    resp_t h = http_vote(1, "acme", "kv-rs-1", "Approve", "alice", NULL);
    expect_http_accepted(&h, true);
    r = result_of("acme", "kv-rs-1");
    expect_status(r, "success", NULL);
    assert_string_equal(str(r, "worker_id"), "kv-b");
    json_decref(r);
    exactly_one_result("acme", "kv-rs-1", 1);

    submit("acme", "kv-rs-4", "{\"prompt\":\"four\"}", 60000);
    pending("acme", "kv-rs-4");
    client_sync();
    assert_int_equal(results_of("acme", "kv-rs-4"), 0);
    assert_true(http_lists(1, NULL, "acme", "kv-rs-2"));
}

/* ---- start-up (group "startup") ---------------------------------------------------------------- */

/* CAF_JS_CREATE=false with the stream and the results bucket but no approvals bucket: exit 1 naming
   CAF_JS_APPROVALS_BUCKET, nothing created; with the bucket made by hand the same configuration starts
   and writes approvals into it. */
static void test_missing_approvals_bucket_exits_1(void **state)
{
    (void)state;
    static const char *const env[] = {JS_MODE, "WORKER_ID=kv-nocreate", NULL};
    assert_int_equal(bw_test_js_add_assign_stream(&J, BW_JS_STREAM, BW_JS_ASSIGN_SUBJECT, 1), 0);
    assert_int_equal(bw_test_js_add_bucket(&J, BW_JS_BUCKET, 0, 1), 0);
    int i = bw_harness_spawn(&H, env);
    assert_true(i >= 0);
    int code = wait_exit(i, 20000);
    if (code != 1 || bw_test_proc_log_count(&H.workers[i], "CAF_JS_APPROVALS_BUCKET") == 0) {
        bw_test_proc_dump_log(&H.workers[i]);
        fail_msg("want exit 1 naming CAF_JS_APPROVALS_BUCKET, got exit %d", code);
    }
    assert_int_equal(bw_test_js_stream_exists(&J, "KV_" BUCKET), 0);

    assert_int_equal(bw_test_js_add_bucket(&J, BUCKET, 0, 1), 0);
    i = bw_harness_add_worker(&H, env);
    assert_true(i >= 0);
    worker_ids[i] = "kv-nocreate";
    submit("acme", "kv-hand-1", "{\"prompt\":\"p\"}", 60000);
    pending("acme", "kv-hand-1");
    wait_idle();
    assert_int_equal(bw_test_proc_signal(&H.workers[i], SIGTERM), 0); /* the next test's worker alone */
    assert_int_equal(wait_exit(i, 20000), 0);
}

/* CAF_JS_APPROVALS_BUCKET names another bucket: created and used (the only worker running). */
static void test_custom_bucket_name(void **state)
{
    (void)state;
    static const char *const env[] = {JS_MODE, JS_CREATE, "WORKER_ID=kv-custom",
                                      "CAF_JS_APPROVALS_BUCKET=kv_custom_appr", NULL};
    int i = bw_harness_add_worker(&H, env);
    assert_true(i >= 0);
    worker_ids[i] = "kv-custom";
    assert_int_equal(bw_test_js_stream_exists(&J, "KV_kv_custom_appr"), 1);
    submit("acme", "kv-custom-1", "{\"prompt\":\"p\"}", 60000);
    bw_test_msg_destroy(request_of("kv-custom-1"));
    json_t *e = bw_test_js_kv_wait_json(&J, "kv_custom_appr", "acme", "kv-custom-1", WAIT_MS);
    if (e == NULL)
        fail_msg("no entry for kv-custom-1 in bucket kv_custom_appr");
    json_decref(e);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest pair[] = {
        cmocka_unit_test(test_bucket_entry_and_request),
        cmocka_unit_test(test_decide_http_on_other_worker),
        cmocka_unit_test(test_quorum_votes_across_workers),
        cmocka_unit_test(test_concurrent_votes),
        cmocka_unit_test(test_timeout_once),
        cmocka_unit_test(test_cancel_once),
        cmocka_unit_test(test_duplicate_delivery),
        cmocka_unit_test(test_list_one_answer),
        cmocka_unit_test(test_tenant_isolation),
    };
    const struct CMUnitTest stranded[] = {cmocka_unit_test(test_stranded_ends_completed)};
    const struct CMUnitTest kill[] = {cmocka_unit_test(test_killed_worker_strands_nothing)};
    const struct CMUnitTest restart[] = {cmocka_unit_test(test_restart_keeps_approvals)};
    const struct CMUnitTest startup[] = {
        cmocka_unit_test(test_missing_approvals_bucket_exits_1),
        cmocka_unit_test(test_custom_bucket_name),
    };
#define N(a) (sizeof a / sizeof a[0])
    const bw_test_group_t groups[] = {
        {"js_approvals_pair", pair, N(pair), setup_pair, teardown},
        {"js_approvals_stranded", stranded, N(stranded), setup_pair, teardown},
        {"js_approvals_kill", kill, N(kill), setup_server, teardown},
        {"js_approvals_restart", restart, N(restart), setup_server, teardown},
        {"js_approvals_startup", startup, N(startup), setup_server, teardown},
    };
    /* BW_JS_GROUP=<part of a group name> runs only the matching groups (while working on one) */
    int failed = bw_test_run_groups(argc, argv, groups, N(groups), "BW_JS_GROUP");
    nats_CloseAndWait(2000);
    return bw_test_exit_status(failed);
}
