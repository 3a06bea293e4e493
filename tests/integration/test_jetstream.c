/*
 * Integration: the worker's JetStream mode (CAF_CONSUMER=jetstream) through the real binary and a real
 * nats-server with JetStream. Start-up creates (or requires: exit 1 naming the variable; a bad name exits 2)
 * the stream, the durable pull consumer and the results bucket, and /readyz says NOT_SUBSCRIBED until they
 * are confirmed; a job in the stream is answered and acked only once its result is stored (a results stream
 * refusing it gets NAKs); in-progress acks keep a job longer than the ack wait from being redelivered; a
 * busy worker leaves messages in the server; poison is termed and dead-lettered once; a duplicate runs
 * once; a parked approval is acked; MAX_DELIVER (a sandbox that crashes every time, deliveries never
 * answered) ends in exactly one dead letter and one error result; the shared result store answers a
 * re-sent assignment with its stored result byte for byte after every worker restarted; a results stream
 * holds one result per assignment; a drain NAKs what it could not finish so another worker runs it at
 * once; heartbeats show the consumer.
 *
 * Each group has its own server (its store in the server's temp dir), so consumer counts start at zero.
 * BW_JS_GROUP=<part of a group name> runs only the matching groups; --only=TEST / --skip=TEST as elsewhere.
 */
#include <dirent.h>
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "http_client.h"
#include "jetstream.h"
#include "testutil.h"

static bw_harness_t H;
static bw_test_js_t J;

#define JS_MODE "CAF_CONSUMER=jetstream"
#define JS_CREATE "CAF_JS_CREATE=true"

/* ---- helpers ---------------------------------------------------------------------------------- */

static int teardown(void **state)
{
    (void)state;
    bw_test_js_close(&J);
    return bw_harness_finish(&H, 0);
}

/* The JetStream server, the collecting client and the helper connection, no worker. */
static int start_server(void)
{
    if (bw_harness_start_js_server(&H) != 0)
        return -1;
    return bw_test_js_connect(&J, H.nats.url);
}

/* A worker counter on worker i's /metrics; fails the test when the series is absent. */
static double metric_of(int i, const char *name)
{
    double v = bw_harness_metric_of(&H, i, name);
    if (isnan(v))
        fail_msg("worker %d has no %s on /metrics", i, name);
    return v;
}

static double metric(const char *name)
{
    return metric_of(0, name);
}

/* Polls worker i's series until it is >= want; returns the last value. */
static double wait_metric(int i, const char *name, double want, int timeout_ms)
{
    int64_t end = bw_test_now_ms() + timeout_ms;
    double v;
    while ((v = metric_of(i, name)) < want && bw_test_now_ms() < end)
        bw_test_sleep_ms(20);
    return v;
}

static void submit(const char *tenant, const char *id, const char *type, const char *payload, int deadline_ms)
{
    if (bw_test_js_submit(&J, tenant, id, type, payload, deadline_ms) != 0)
        fail_msg("publishing %s into the stream failed", id);
}

/* The bare result of id (first one), waiting up to wait_ms; fails when none came. */
static json_t *result(const char *id, int wait_ms)
{
    json_t *r = bw_harness_result(&H, id, wait_ms);
    if (r == NULL) {
        bw_test_js_consumer_t c;
        for (int i = 0; i < H.nworkers; i++)
            bw_test_proc_dump_log(&H.workers[i]);
        if (bw_test_js_consumer(&J, BW_JS_STREAM, BW_JS_DURABLE, &c) == 0)
            fprintf(
                stderr,
                "consumer: num_pending %llu, num_ack_pending %lld, num_redelivered %lld, num_waiting %lld, "
                "delivered %llu, ack_floor %llu\n",
                (unsigned long long)c.num_pending, (long long)c.num_ack_pending, (long long)c.num_redelivered,
                (long long)c.num_waiting, (unsigned long long)c.delivered, (unsigned long long)c.ack_floor);
        fail_msg("no result for %s within %d ms", id, wait_ms);
    }
    return r;
}

static const char *str(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s != NULL ? s : "";
}

/* The raw body of the nth (0-based) result of (tenant, id) received so far, malloc'd; NULL when fewer. */
static char *result_body(const char *tenant, const char *id, int nth)
{
    int n = bw_test_client_count(H.client, BW_H_RESULTS);
    for (int i = 0; i < n; i++) {
        bw_test_msg_t *m = bw_test_client_get(H.client, BW_H_RESULTS, i);
        if (m != NULL && m->json != NULL && strcmp(str(m->json, "assignment_id"), id) == 0 &&
            strcmp(str(m->json, "tenant_id"), tenant) == 0 && nth-- == 0) {
            char *b = strdup(m->data);
            bw_test_msg_destroy(m);
            return b;
        }
        bw_test_msg_destroy(m);
    }
    return NULL;
}

/* Waits until the client has at least n results for id; returns the count reached. */
static int wait_result_count(const char *id, int n, int timeout_ms)
{
    int64_t end = bw_test_now_ms() + timeout_ms;
    int c;
    while ((c = bw_harness_result_count(&H, id)) < n && bw_test_now_ms() < end)
        bw_test_sleep_ms(10);
    return c;
}

/* A round trip to the server on the collecting client: whatever was published before has arrived. */
static void client_sync(void)
{
    assert_int_equal(natsConnection_FlushTimeout(bw_test_client_conn(H.client), 5000), NATS_OK);
}

/* Worker i's dead letters with this reason (and assignment id, when id is not NULL). */
static int dead_letters(int i, const char *reason, const char *id)
{
    json_t *all = bw_harness_dead_letters(&H, i), *v;
    size_t k;
    int n = 0;
    json_array_foreach(all, k, v)
    {
        if (strcmp(str(v, "reason"), reason) == 0 && (id == NULL || strcmp(str(v, "assignment_id"), id) == 0))
            n++;
    }
    json_decref(all);
    return n;
}

static int wait_dead_letters(int i, const char *reason, const char *id, int n, int timeout_ms)
{
    int64_t end = bw_test_now_ms() + timeout_ms;
    int c;
    while ((c = dead_letters(i, reason, id)) < n && bw_test_now_ms() < end)
        bw_test_sleep_ms(20);
    return c;
}

/* Dead letters on the DLQ subject with this reason (and id). */
static int dlq_subject_count(const char *reason, const char *id)
{
    int n = bw_test_client_count(H.client, BW_H_DLQ), c = 0;
    for (int i = 0; i < n; i++) {
        bw_test_msg_t *m = bw_test_client_get(H.client, BW_H_DLQ, i);
        if (m != NULL && m->json != NULL && strcmp(str(m->json, "reason"), reason) == 0 &&
            (id == NULL || strcmp(str(m->json, "assignment_id"), id) == 0))
            c++;
        bw_test_msg_destroy(m);
    }
    return c;
}

static bw_test_js_consumer_t consumer(void)
{
    bw_test_js_consumer_t c;
    if (bw_test_js_consumer(&J, BW_JS_STREAM, BW_JS_DURABLE, &c) != 0)
        fail_msg("consumer %s of %s cannot be read", BW_JS_DURABLE, BW_JS_STREAM);
    return c;
}

static void wait_idle(int timeout_ms)
{
    bw_test_js_consumer_t c;
    if (bw_test_js_wait_idle(&J, BW_JS_STREAM, BW_JS_DURABLE, timeout_ms, &c) != 0)
        fail_msg("consumer not idle within %d ms: num_pending %llu, num_ack_pending %lld", timeout_ms,
                 (unsigned long long)c.num_pending, (long long)c.num_ack_pending);
}

static bool ack_pending_is(const bw_test_js_consumer_t *c, void *ud)
{
    return c->num_ack_pending == *(int64_t *)ud;
}

static void wait_ack_pending(int64_t n, int timeout_ms)
{
    bw_test_js_consumer_t c;
    if (bw_test_js_wait_consumer(&J, BW_JS_STREAM, BW_JS_DURABLE, ack_pending_is, &n, timeout_ms, &c) != 0)
        fail_msg("num_ack_pending never reached %lld (last %lld)", (long long)n,
                 (long long)c.num_ack_pending);
}

/* Worker i's exit code (the harness's wait). */
static int wait_exit(int i, int timeout_ms)
{
    return bw_harness_wait_exit(&H, i, timeout_ms);
}

/* ---- one worker, a results stream (group "one") ------------------------------------------------ */

/* Every assignment this group submitted: the results stream must hold exactly one result of each. */
static const char *const one_ids[] = {"start-1",    "ip-1",       "bp-long-0",  "bp-long-1",  "bp-short-0",
                                      "bp-short-1", "bp-short-2", "bp-short-3", "bp-short-4", "bp-short-5",
                                      "bp-short-6", "bp-short-7", "bp-short-8", "bp-short-9", "after-poison",
                                      "dup-1",      "after-del",  NULL};

static int setup_one(void **state)
{
    (void)state;
    static const char *const env[] = {JS_MODE,
                                      JS_CREATE,
                                      "CAF_JS_ACK_WAIT_MS=1000",
                                      "WORKER_MAX_CONCURRENCY=2",
                                      "WORKER_TYPE_CONCURRENCY=sleep=0",
                                      "DEDUP_TTL_MS=600000",
                                      NULL};
    if (start_server() != 0)
        return -1;
    /* before the worker starts: it looks for a stream capturing the result subject at start-up */
    if (bw_test_js_add_results_stream(&J, BW_JS_RESULTS_STREAM, BW_JS_RESULT_SUBJECT, 1, 0) != 0)
        return -1;
    return bw_harness_add_worker(&H, env) < 0 ? -1 : 0;
}

/* CAF_JS_CREATE=true made the stream, the consumer and the bucket; a job in the stream is answered and
   its delivery acked (the work queue is empty again). */
static void test_startup_creates_and_answers(void **state)
{
    (void)state;
    bw_test_js_stream_t st;
    assert_int_equal(bw_test_js_stream(&J, BW_JS_STREAM, &st), 0);
    assert_string_equal(st.subject, BW_JS_ASSIGN_SUBJECT);
    assert_int_equal(st.retention, js_WorkQueuePolicy);
    assert_int_equal(st.storage, js_FileStorage);
    assert_int_equal(st.replicas, 1);
    /* the bucket: history 1, entries live DEDUP_TTL_MS */
    assert_int_equal(bw_test_js_stream(&J, "KV_" BW_JS_BUCKET, &st), 0);
    assert_int_equal(st.max_msgs_per_subject, 1);
    assert_int_equal(st.max_age_ms, 600000);
    assert_int_equal(st.storage, js_FileStorage);
    bw_test_js_consumer_t c = consumer();
    assert_string_equal(c.filter, BW_JS_ASSIGN_SUBJECT);
    assert_int_equal(c.ack_wait_ms, 1000);
    assert_int_equal(c.max_deliver, -1); /* the worker enforces CAF_JS_MAX_DELIVER itself */

    submit("acme", "start-1", "echo", "{\"hello\":\"stream\"}", 10000);
    json_t *r = result("start-1", 10000);
    assert_string_equal(str(r, "status"), "success");
    assert_string_equal(str(json_object_get(r, "output"), "hello"), "stream");
    json_decref(r);
    wait_idle(10000);
    int64_t end = bw_test_now_ms() + 10000, left;
    while ((left = bw_test_js_stream_msgs(&J, BW_JS_STREAM)) != 0 && bw_test_now_ms() < end)
        bw_test_sleep_ms(10);
    assert_int_equal(left, 0); /* work queue: the acked assignment is gone from the stream */
    c = consumer();
    assert_int_equal(c.num_redelivered, 0);
    assert_true(metric("beamline_worker_js_acks_total") >= 1);
    assert_true(metric("beamline_worker_js_delivered_total") >= 1);
}

/* /readyz says READY; heartbeats carry the consumer. */
static void test_readyz_and_heartbeats(void **state)
{
    (void)state;
    int port = bw_test_worker_http_port(&H.workers[0]), status = 0;
    char *body = NULL;
    assert_true(port > 0);
    assert_int_equal(bw_test_http(port, "GET", "/readyz", NULL, &status, &body, NULL), 0);
    assert_int_equal(status, 200);
    assert_non_null(strstr(body, "READY"));
    free(body);

    int before = bw_test_client_count(H.client, BW_H_HEARTBEAT);
    assert_true(bw_test_client_wait_count(H.client, BW_H_HEARTBEAT, before + 1, 5000) >= before + 1);
    bw_test_msg_t *m = bw_test_client_get(H.client, BW_H_HEARTBEAT, before);
    assert_non_null(m);
    json_t *cons = json_object_get(m->json, "consumer");
    if (!json_is_object(cons))
        fail_msg("heartbeat without a consumer object: %s", m->data);
    assert_string_equal(str(cons, "mode"), "jetstream");
    assert_string_equal(str(cons, "stream"), BW_JS_STREAM);
    assert_string_equal(str(cons, "durable"), BW_JS_DURABLE);
    static const char *const counts[] = {"ack_pending", "pending", "delivered", "redelivered",
                                         "acks",        "naks",    "terms",     NULL};
    for (int i = 0; counts[i] != NULL; i++)
        if (!json_is_integer(json_object_get(cons, counts[i])))
            fail_msg("heartbeat consumer.%s is not an integer: %s", counts[i], m->data);
    assert_true(json_integer_value(json_object_get(cons, "acks")) >= 1); /* start-1 */
    assert_true(json_integer_value(json_object_get(cons, "delivered")) >= 1);
    bw_test_msg_destroy(m);
}

/* A job three times as long as the ack wait: in-progress acks keep it from being redelivered. */
static void test_in_progress_keeps_long_job(void **state)
{
    (void)state;
    double redelivered = metric("beamline_worker_js_redelivered_total");
    double wpi = metric("beamline_worker_js_in_progress_total");
    uint64_t delivered = consumer().delivered;
    submit("acme", "ip-1", "sleep", "{\"ms\":3500}", 60000);
    json_t *r = result("ip-1", 30000);
    assert_string_equal(str(r, "status"), "success");
    json_decref(r);
    wait_idle(10000);
    client_sync();
    assert_int_equal(bw_harness_result_count(&H, "ip-1"), 1);
    assert_true(metric("beamline_worker_js_redelivered_total") == redelivered);
    assert_true(metric("beamline_worker_js_in_progress_total") >= wpi + 2);
    bw_test_js_consumer_t c = consumer();
    assert_int_equal(c.delivered, delivered + 1); /* delivered once: the server never redelivered it */
    assert_int_equal(c.num_redelivered, 0);
}

/* WORKER_MAX_CONCURRENCY=2 with two long jobs running: ten more stay in the server, none queued inside. */
static void test_backpressure(void **state)
{
    (void)state;
    char id[32];
    for (int i = 0; i < 2; i++) {
        snprintf(id, sizeof id, "bp-long-%d", i);
        submit("acme", id, "sleep", "{\"ms\":4000}", 60000);
    }
    wait_ack_pending(2, 10000);
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof id, "bp-short-%d", i);
        submit("acme", id, "echo", "{}", 60000);
    }
    /* while the long ones run: the ten wait in the server, the worker holds no more than it runs */
    int samples = 0;
    while (bw_harness_result_count(&H, "bp-long-0") == 0 && bw_harness_result_count(&H, "bp-long-1") == 0) {
        bw_test_js_consumer_t c = consumer();
        double queued = metric("beamline_worker_jobs_queued");
        if (bw_harness_result_count(&H, "bp-long-0") != 0 || bw_harness_result_count(&H, "bp-long-1") != 0)
            break; /* the sample may straddle the end of the long jobs */
        if (c.num_pending < 8 || queued != 0)
            fail_msg("busy worker took more: num_pending %llu, num_ack_pending %lld, jobs_queued %g",
                     (unsigned long long)c.num_pending, (long long)c.num_ack_pending, queued);
        samples++;
        bw_test_sleep_ms(50);
    }
    assert_true(samples >= 3);
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof id, "bp-short-%d", i);
        json_decref(result(id, 30000));
    }
    for (int i = 0; i < 2; i++) {
        snprintf(id, sizeof id, "bp-long-%d", i);
        json_decref(result(id, 30000));
    }
    wait_idle(10000);
}

/* Not JSON in the stream: one PARSE_ERROR dead letter (file and subject), termed, never redelivered. */
static void test_poison_termed_once(void **state)
{
    (void)state;
    static const char *const hdrs[] = {"tenant_id", "acme", "version", "1", NULL};
    double terms = metric("beamline_worker_js_terms_total");
    int letters = dead_letters(0, "PARSE_ERROR", NULL), on_subject = dlq_subject_count("PARSE_ERROR", NULL);
    uint64_t delivered = consumer().delivered;
    assert_int_equal(bw_test_js_publish(&J, BW_JS_ASSIGN_SUBJECT, "{poison, not json", hdrs, NULL, NULL), 0);
    assert_int_equal(wait_dead_letters(0, "PARSE_ERROR", NULL, letters + 1, 10000), letters + 1);
    assert_true(wait_metric(0, "beamline_worker_js_terms_total", terms + 1, 10000) == terms + 1);
    /* JSON without an assignment id: DECODE_ERROR, termed as well */
    int decode = dead_letters(0, "DECODE_ERROR", NULL);
    assert_int_equal(bw_test_js_publish(&J, BW_JS_ASSIGN_SUBJECT,
                                        "{\"tenant_id\":\"acme\",\"job\":{\"type\":\"echo\"}}", hdrs, NULL,
                                        NULL),
                     0);
    assert_int_equal(wait_dead_letters(0, "DECODE_ERROR", NULL, decode + 1, 10000), decode + 1);
    assert_true(wait_metric(0, "beamline_worker_js_terms_total", terms + 2, 10000) == terms + 2);
    int64_t termed_at = bw_test_now_ms();
    wait_idle(10000);
    /* the worker still serves; then, past twice the ack wait (1 s), nothing came back */
    submit("acme", "after-poison", "echo", "{}", 10000);
    json_decref(result("after-poison", 10000));
    while (bw_test_now_ms() - termed_at < 2500)
        bw_test_sleep_ms(50);
    wait_idle(10000);
    client_sync();
    bw_test_js_consumer_t c = consumer();
    assert_int_equal(c.delivered, delivered + 3); /* each poison once, after-poison once */
    assert_int_equal(c.num_redelivered, 0);
    assert_int_equal(c.num_ack_pending, 0);
    assert_int_equal(dead_letters(0, "PARSE_ERROR", NULL), letters + 1);
    assert_int_equal(dead_letters(0, "DECODE_ERROR", NULL), decode + 1);
    assert_int_equal(dlq_subject_count("PARSE_ERROR", NULL), on_subject + 1);
    assert_true(metric("beamline_worker_js_terms_total") == terms + 2);
    json_t *all = bw_harness_dead_letters(&H, 0), *v;
    size_t k;
    int found = 0;
    json_array_foreach(all, k, v) found += strcmp(str(v, "message"), "{poison, not json") == 0;
    assert_int_equal(found, 1);
    json_decref(all);
}

/* The same assignment twice in the stream while it runs: it runs once, one result answers both
   deliveries, both are acked. */
static void test_duplicate_delivery_runs_once(void **state)
{
    (void)state;
    double dups = metric("beamline_worker_duplicates_total");
    submit("acme", "dup-1", "sleep", "{\"ms\":1500}", 60000);
    wait_ack_pending(1, 10000);
    submit("acme", "dup-1", "sleep", "{\"ms\":1500}", 60000);
    json_t *r = result("dup-1", 20000);
    assert_string_equal(str(r, "status"), "success");
    json_decref(r);
    wait_idle(10000);
    client_sync();
    assert_int_equal(bw_harness_result_count(&H, "dup-1"), 1);
    assert_true(metric("beamline_worker_duplicates_total") >= dups + 1);
    assert_int_equal(bw_test_js_stream_msgs(&J, BW_JS_STREAM), 0);
}

/* The consumer deleted under a running worker: its pull request is refused (409 Consumer Deleted), it pauses
   pulling instead of spinning, creates the consumer again and answers the next job. */
static void test_consumer_deleted_recreated(void **state)
{
    (void)state;
    int created = bw_test_proc_log_count(&H.workers[0], "JetStream consumer created");
    jsErrCode jerr = 0;
    natsStatus st = js_DeleteConsumer(J.js, BW_JS_STREAM, BW_JS_DURABLE, NULL, &jerr);
    if (st != NATS_OK)
        fail_msg("deleting the consumer: %s (JetStream error %d)", nats_GetLastError(NULL), (int)jerr);
    int64_t end = bw_test_now_ms() + 15000;
    while (bw_test_proc_log_count(&H.workers[0], "JetStream consumer created") < created + 1 &&
           bw_test_now_ms() < end)
        bw_test_sleep_ms(20);
    assert_int_equal(bw_test_proc_log_count(&H.workers[0], "JetStream consumer created"), created + 1);
    assert_int_equal(bw_test_proc_log_count(&H.workers[0], "pulling pauses"), 1);
    submit("acme", "after-del", "echo", "{}", 10000);
    json_t *r = result("after-del", 10000);
    assert_string_equal(str(r, "status"), "success");
    json_decref(r);
    bw_test_js_consumer_t c = consumer();
    assert_int_equal(c.max_deliver, -1);
    assert_int_equal(c.ack_wait_ms, 1000);
}

/* A human_approval job parks; its delivery is acked once the approval is stored (not held until the
   decision, which may take days), and no result goes out. */
static void test_parked_approval_acked(void **state)
{
    (void)state;
    double acks = metric("beamline_worker_js_acks_total");
    submit("acme", "appr-1", "human_approval", "{\"prompt\":\"ship it?\"}", 0);
    assert_true(wait_metric(0, "beamline_worker_approvals_pending", 1, 10000) == 1);
    wait_idle(10000);
    assert_true(metric("beamline_worker_js_acks_total") == acks + 1);
    client_sync();
    assert_int_equal(bw_harness_result_count(&H, "appr-1"), 0);
    assert_int_equal(bw_test_js_stream_msgs(&J, BW_JS_STREAM), 0);
}

/* A stream capturing the result subject (duplicate window 100 ms: duplicates would be kept) holds exactly
   one result per assignment of this group, each with its Nats-Msg-Id. */
static int check_msg_id(natsMsg *m, void *ud)
{
    int *bad = ud;
    const char *msgid = NULL;
    json_t *j = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
    char want[300];
    snprintf(want, sizeof want, "result-%s", str(j, "assignment_id"));
    const char *trace = NULL;
    if (natsMsgHeader_Get(m, "Nats-Msg-Id", &msgid) != NATS_OK || msgid == NULL || strcmp(msgid, want) != 0 ||
        natsMsgHeader_Get(m, "trace_id", &trace) != NATS_OK || trace == NULL ||
        strcmp(trace, "0af7651916cd43dd8448eb211c80319c") != 0) {
        fprintf(stderr, "stored result without its headers: %.*s\n", natsMsg_GetDataLength(m),
                natsMsg_GetData(m));
        (*bad)++;
    }
    json_decref(j);
    return 0;
}

static void test_results_stream_one_per_assignment(void **state)
{
    (void)state;
    int n = 0, bad = 0;
    for (; one_ids[n] != NULL; n++) {
        int c = bw_test_js_count_results(&J, BW_JS_RESULTS_STREAM, one_ids[n]);
        if (c != 1)
            fail_msg("results stream holds %d results of %s, want 1", c, one_ids[n]);
    }
    assert_int_equal(bw_test_js_stream_msgs(&J, BW_JS_RESULTS_STREAM), n);
    assert_int_equal(bw_test_js_for_each(&J, BW_JS_RESULTS_STREAM, check_msg_id, &bad), n);
    assert_int_equal(bad, 0);
}

/* ---- ack after the result is out (group "ackafter") --------------------------------------------- */

/* A results stream that takes one message and refuses the next (Discard New): the PubAck of the second
   result is an error. */
static int setup_ackafter(void **state)
{
    (void)state;
    static const char *const env[] = {JS_MODE, JS_CREATE, "CAF_JS_NAK_DELAY_MS=300", NULL};
    jsStreamConfig cfg;
    jsStreamInfo *si = NULL;
    const char *subjects[] = {BW_JS_RESULT_SUBJECT};
    if (start_server() != 0)
        return -1;
    jsStreamConfig_Init(&cfg);
    cfg.Name = BW_JS_RESULTS_STREAM;
    cfg.Subjects = subjects;
    cfg.SubjectsLen = 1;
    cfg.Storage = js_FileStorage;
    cfg.MaxMsgs = 1;
    cfg.Discard = js_DiscardNew;
    cfg.Duplicates = 100 * 1000000;
    if (js_AddStream(&si, J.js, &cfg, NULL, NULL) != NATS_OK)
        return -1;
    jsStreamInfo_Destroy(si);
    return bw_harness_add_worker(&H, env) < 0 ? -1 : 0;
}

/* While the results stream refuses the result, the assignment is not acked (NAKed, still in the work
   queue, delivered again); once the stream takes it, the assignment is acked and gone. */
static void test_ack_only_after_result_stored(void **state)
{
    (void)state;
    submit("acme", "fill-1", "echo", "{}", 10000);
    json_decref(result("fill-1", 10000));
    wait_idle(10000);
    assert_int_equal(bw_test_js_stream_msgs(&J, BW_JS_RESULTS_STREAM), 1);
    double acks = metric("beamline_worker_js_acks_total");

    submit("acme", "held-1", "echo", "{}", 60000);
    if (wait_metric(0, "beamline_worker_js_naks_total", 2, 20000) < 2) {
        bw_test_proc_dump_log(&H.workers[0]);
        fail_msg("a result the results stream refused was not NAKed (twice) within 20 s");
    }
    assert_true(metric("beamline_worker_js_acks_total") == acks);
    assert_int_equal(bw_test_js_stream_msgs(&J, BW_JS_STREAM), 1); /* still in the work queue */
    assert_true(consumer().delivered >= 3);                        /* fill-1, held-1 and its redelivery */
    assert_int_equal(dead_letters(0, "MAX_DELIVER", NULL), 0);

    assert_int_equal(js_PurgeStream(J.js, BW_JS_RESULTS_STREAM, NULL, NULL), NATS_OK);
    wait_idle(20000);
    assert_true(wait_metric(0, "beamline_worker_js_acks_total", acks + 1, 10000) >= acks + 1);
    assert_int_equal(bw_test_js_stream_msgs(&J, BW_JS_STREAM), 0);
    assert_int_equal(bw_test_js_count_results(&J, BW_JS_RESULTS_STREAM, "held-1"), 1);
}

/* ---- start-up failures (group "startup") ----------------------------------------------------- */

static int setup_server(void **state)
{
    (void)state;
    return start_server();
}

/* No stream and CAF_JS_CREATE=false: exit 1, the log names the variable and the stream; nothing created. */
static void test_missing_stream_exits_1(void **state)
{
    (void)state;
    static const char *const env[] = {JS_MODE, NULL};
    int i = bw_harness_spawn(&H, env);
    assert_true(i >= 0);
    int code = wait_exit(i, 20000);
    if (code != 1 || bw_test_proc_log_count(&H.workers[i], "CAF_JS_STREAM") == 0 ||
        bw_test_proc_log_count(&H.workers[i], BW_JS_STREAM) == 0) {
        bw_test_proc_dump_log(&H.workers[i]);
        fail_msg("want exit 1 naming CAF_JS_STREAM and " BW_JS_STREAM ", got exit %d", code);
    }
    assert_int_equal(bw_test_js_stream_exists(&J, BW_JS_STREAM), 0);
    assert_int_equal(bw_test_js_stream_exists(&J, "KV_" BW_JS_BUCKET), 0);
}

/* The stream exists but the bucket does not: exit 1 naming CAF_JS_RESULTS_BUCKET; with the bucket made
   by hand the same configuration starts. */
static void test_missing_bucket_exits_1(void **state)
{
    (void)state;
    static const char *const env[] = {JS_MODE, NULL};
    assert_int_equal(bw_test_js_add_assign_stream(&J, BW_JS_STREAM, BW_JS_ASSIGN_SUBJECT, 1), 0);
    int i = bw_harness_spawn(&H, env);
    assert_true(i >= 0);
    int code = wait_exit(i, 20000);
    if (code != 1 || bw_test_proc_log_count(&H.workers[i], "CAF_JS_RESULTS_BUCKET") == 0) {
        bw_test_proc_dump_log(&H.workers[i]);
        fail_msg("want exit 1 naming CAF_JS_RESULTS_BUCKET, got exit %d", code);
    }
    assert_int_equal(bw_test_js_add_bucket(&J, BW_JS_BUCKET, 0, 1), 0);
    assert_int_equal(bw_test_js_add_bucket(&J, "caf_approvals", 0, 1), 0); /* CAF_JS_APPROVALS_BUCKET */
    i = bw_harness_add_worker(&H, env);
    assert_true(i >= 0);
    submit("acme", "made-by-hand", "echo", "{}", 10000);
    json_decref(result("made-by-hand", 10000));
}

/* CAF_JS_RESULT_STORE=false: no bucket is needed, made or read; jobs are answered and acked all the same. */
static void test_result_store_off(void **state)
{
    (void)state;
    static const char *const env[] = {JS_MODE, "CAF_JS_RESULT_STORE=false",
                                      "CAF_JS_RESULTS_BUCKET=never_made", NULL};
    assert_int_equal(bw_test_js_add_assign_stream(&J, BW_JS_STREAM, BW_JS_ASSIGN_SUBJECT, 1), 0);
    assert_int_equal(bw_test_js_add_bucket(&J, "caf_approvals", 0, 1), 0); /* approvals: always a bucket */
    assert_true(bw_harness_add_worker(&H, env) >= 0);
    assert_int_equal(bw_test_proc_log_count(&H.workers[0], "\"result_store\":\"off\""), 1);
    submit("acme", "no-store-1", "echo", "{}", 10000);
    json_decref(result("no-store-1", 10000));
    wait_idle(10000);
    assert_int_equal(bw_test_js_stream_exists(&J, "KV_never_made"), 0);
    assert_true(metric("beamline_worker_js_acks_total") == 1);
    assert_true(metric("beamline_worker_js_result_store_hits_total") == 0);
    assert_true(metric("beamline_worker_js_result_store_errors_total") == 0);
}

/* A stream name that is not 1..64 of [A-Za-z0-9_-]: invalid configuration, exit 2 naming the variable. */
static void test_invalid_stream_name_exits_2(void **state)
{
    (void)state;
    static const char *const env[] = {JS_MODE, JS_CREATE, "CAF_JS_STREAM=a.b", NULL};
    int i = bw_harness_spawn(&H, env);
    assert_true(i >= 0);
    int code = wait_exit(i, 20000);
    if (code != 2 || bw_test_proc_log_count(&H.workers[i], "CAF_JS_STREAM") == 0) {
        bw_test_proc_dump_log(&H.workers[i]);
        fail_msg("want exit 2 naming CAF_JS_STREAM, got exit %d", code);
    }
}

/* ---- readiness (group "readiness") ------------------------------------------------------------- */

/* /readyz's status and body on worker i. */
static int readyz(int i, char *body_out, size_t len)
{
    int port = bw_test_worker_http_port(&H.workers[i]), status = 0;
    char *body = NULL;
    assert_true(port > 0);
    assert_int_equal(bw_test_http(port, "GET", "/readyz", NULL, &status, &body, NULL), 0);
    snprintf(body_out, len, "%s", body != NULL ? body : "");
    free(body);
    return status;
}

/* Restarts the harness's server on its port and store, with or without JetStream. */
static void restart_server(int jetstream)
{
    int port = H.nats.port;
    bw_test_nats_stop(&H.nats, 1);
    H.nats.jetstream = jetstream;
    assert_int_equal(bw_test_nats_start_on(&H.nats, port), 0);
    /* the collecting client is back (its subscriptions with it) before anything is published */
    natsConnection *nc = bw_test_client_conn(H.client);
    int64_t end = bw_test_now_ms() + 10000;
    while (natsConnection_Status(nc) != NATS_CONN_STATUS_CONNECTED && bw_test_now_ms() < end)
        bw_test_sleep_ms(10);
    client_sync();
}

/* Connected, but JetStream does not answer (a server without it): not ready (NOT_SUBSCRIBED), set-up
   retried; once the server has JetStream the worker sets up, says READY and serves. */
static void test_not_ready_until_set_up(void **state)
{
    (void)state;
    static const char *const env[] = {JS_MODE, JS_CREATE, NULL};
    char body[256];
    restart_server(0);
    int i = bw_harness_spawn(&H, env);
    assert_int_equal(i, 0);
    if (bw_test_proc_wait_log(&H.workers[i], "JetStream set-up failed: retrying", 15000) != 0) {
        bw_test_proc_dump_log(&H.workers[i]);
        fail_msg("no set-up retry logged against a server without JetStream");
    }
    assert_int_equal(readyz(i, body, sizeof body), 503);
    assert_non_null(strstr(body, "NOT_SUBSCRIBED"));
    assert_int_equal(bw_test_proc_log_count(&H.workers[i], "\"worker ready\""), 0);

    restart_server(1);
    if (bw_test_proc_wait_log(&H.workers[i], "\"worker ready\"", 20000) != 0) {
        bw_test_proc_dump_log(&H.workers[i]);
        fail_msg("the worker did not set up once the server had JetStream");
    }
    assert_int_equal(readyz(i, body, sizeof body), 200);
    assert_non_null(strstr(body, "READY"));
    assert_int_equal(bw_test_js_wait_ready(&J, 10000), 0);
    submit("acme", "late-1", "echo", "{}", 10000);
    json_decref(result("late-1", 10000));
}

/* ---- MAX_DELIVER by a worker fault (group "crash") ----------------------------------------------- */

static int setup_crash(void **state)
{
    (void)state;
    static const char *const env[] = {
        JS_MODE,
        JS_CREATE,
        "CAF_JS_MAX_DELIVER=2",
        "CAF_JS_NAK_DELAY_MS=300",
        "SCRIPT_POOL_SIZE=1",
#if defined(__SANITIZE_ADDRESS__)
        "SCRIPT_MAX_MEMORY_MB=384",
#endif
        NULL
    };
    if (start_server() != 0)
        return -1;
    return bw_harness_add_worker(&H, env) < 0 ? -1 : 0;
}

/* The sandbox of worker w running a script. */
static int busy_sandbox(int w)
{
    return bw_test_busy_sandbox(H.workers[w].pid, 30000);
}

/* A script whose sandbox dies every time: the first crash is NAKed without a result, the second (the
   delivery count reaching CAF_JS_MAX_DELIVER=2) gives one SCRIPT_CRASHED result and one MAX_DELIVER dead
   letter holding the assignment. */
static void test_max_deliver_by_crash(void **state)
{
    (void)state;
    static const char payload[] = "{\"code\":\"while (true) {}\",\"args\":{},\"timeout_ms\":60000}";
    submit("acme", "crash-1", "javascript", payload, 90000);
    assert_int_equal(kill(busy_sandbox(0), SIGKILL), 0);
    assert_true(wait_metric(0, "beamline_worker_js_naks_total", 1, 20000) == 1);
    client_sync();
    assert_int_equal(bw_harness_result_count(&H, "crash-1"), 0);
    assert_int_equal(dead_letters(0, "MAX_DELIVER", NULL), 0);

    assert_int_equal(kill(busy_sandbox(0), SIGKILL), 0); /* the redelivery, on the replacement sandbox */
    json_t *r = result("crash-1", 20000);
    assert_string_equal(str(r, "status"), "error");
    assert_string_equal(str(r, "error_code"), "SCRIPT_CRASHED");
    json_decref(r);
    assert_int_equal(wait_dead_letters(0, "MAX_DELIVER", "crash-1", 1, 10000), 1);
    wait_idle(10000);
    client_sync();
    assert_int_equal(bw_harness_result_count(&H, "crash-1"), 1);
    assert_int_equal(dead_letters(0, "MAX_DELIVER", NULL), 1);
    assert_int_equal(dlq_subject_count("MAX_DELIVER", "crash-1"), 1);
    assert_true(metric("beamline_worker_js_naks_total") == 1);
    assert_true(metric("beamline_worker_js_max_deliver_total") == 1);
    json_t *all = bw_harness_dead_letters(&H, 0);
    char *letter = json_dumps(json_array_get(all, 0), JSON_COMPACT);
    json_decref(all);
    if (strstr(letter, "\"crash-1\"") == NULL || strstr(letter, "while (true)") == NULL)
        fail_msg("the MAX_DELIVER dead letter does not hold the assignment: %s", letter);
    free(letter);
}

/* ---- MAX_DELIVER by deliveries never answered (group "unanswered") ------------------------------ */

/* A worker takes a long job and is killed -9; the redelivery (count 2) reaches a worker whose
   CAF_JS_MAX_DELIVER is 1: not run, one MAX_DELIVER dead letter and one MAX_DELIVER error result. */
static void test_max_deliver_unanswered(void **state)
{
    (void)state;
    static const char *const first[] = {JS_MODE, JS_CREATE, "CAF_JS_ACK_WAIT_MS=1000", NULL};
    static const char *const second[] = {JS_MODE, JS_CREATE, "CAF_JS_ACK_WAIT_MS=1000",
                                         "CAF_JS_MAX_DELIVER=1", NULL};
    assert_int_equal(bw_harness_add_worker(&H, first), 0);
    submit("acme", "orphan-1", "sleep", "{\"ms\":60000}", 120000);
    wait_ack_pending(1, 10000);
    assert_true(wait_metric(0, "beamline_worker_jobs_in_flight", 1, 10000) == 1);
    assert_int_equal(bw_test_proc_signal(&H.workers[0], SIGKILL), 0);
    assert_int_equal(wait_exit(0, 10000), 128 + SIGKILL);

    assert_int_equal(bw_harness_add_worker(&H, second), 1);
    json_t *r = result("orphan-1", 20000);
    assert_string_equal(str(r, "status"), "error");
    assert_string_equal(str(r, "error_code"), "MAX_DELIVER");
    json_decref(r);
    assert_int_equal(wait_dead_letters(1, "MAX_DELIVER", "orphan-1", 1, 10000), 1);
    wait_idle(10000);
    client_sync();
    assert_int_equal(bw_harness_result_count(&H, "orphan-1"), 1);
    assert_int_equal(dead_letters(1, "MAX_DELIVER", NULL), 1);
    assert_int_equal(dlq_subject_count("MAX_DELIVER", "orphan-1"), 1);
    assert_true(metric_of(1, "beamline_worker_js_max_deliver_total") == 1);
    assert_true(metric_of(1, "beamline_worker_js_redelivered_total") == 1);
}

/* ---- the shared result store (group "store") --------------------------------------------------- */

static const char *const store_env[] = {JS_MODE, JS_CREATE, NULL};

static double store_hits(int from, int to)
{
    double sum = 0;
    for (int i = from; i <= to; i++)
        sum += metric_of(i, "beamline_worker_js_result_store_hits_total");
    return sum;
}

/* An assignment finished, then both workers restarted (empty memory): sent again, it is answered with the
   stored result byte for byte and not run; the same id from another tenant runs. */
static void test_result_store_survives_restart(void **state)
{
    (void)state;
    char key[256];
    assert_int_equal(bw_harness_add_worker(&H, store_env), 0);
    assert_int_equal(bw_harness_add_worker(&H, store_env), 1);
    submit("acme", "kv-1", "sleep", "{\"ms\":20}", 10000);
    json_decref(result("kv-1", 10000));
    char *first = result_body("acme", "kv-1", 0);
    assert_non_null(first);
    wait_idle(10000);

    /* the entry, under the documented key, is the result body exactly, with the trace id */
    assert_string_equal(bw_test_js_result_key("acme", "kv-1", key, sizeof key), "YWNtZQ.a3YtMQ");
    char *trace = NULL;
    char *stored = bw_test_js_kv_result(&J, BW_JS_BUCKET, "acme", "kv-1", NULL, &trace);
    if (stored == NULL)
        fail_msg("no entry %s in bucket " BW_JS_BUCKET, key);
    assert_string_equal(stored, first);
    assert_non_null(trace);
    assert_string_equal(trace, "0af7651916cd43dd8448eb211c80319c");
    free(stored);
    free(trace);

    for (int i = 0; i < 2; i++) {
        assert_int_equal(bw_test_proc_signal(&H.workers[i], SIGTERM), 0);
        assert_int_equal(wait_exit(i, 20000), 0);
    }
    assert_int_equal(bw_harness_add_worker(&H, store_env), 2);
    assert_int_equal(bw_harness_add_worker(&H, store_env), 3);

    submit("acme", "kv-1", "sleep", "{\"ms\":20}", 10000);
    assert_int_equal(wait_result_count("kv-1", 2, 10000), 2);
    char *again = result_body("acme", "kv-1", 1);
    assert_string_equal(again, first); /* same timestamp, same latency: the stored bytes */
    wait_idle(10000);
    assert_true(store_hits(2, 3) == 1);
    for (int i = 2; i <= 3; i++) {
        double ran =
            bw_harness_metric_of(&H, i, "beamline_worker_jobs_total{job_type=\"sleep\",status=\"success\"}");
        assert_true(isnan(ran) || ran == 0);
    }

    /* the same assignment id from another tenant is another assignment */
    submit("other", "kv-1", "sleep", "{\"ms\":20}", 10000);
    assert_int_equal(wait_result_count("kv-1", 3, 10000), 3);
    char *other = result_body("other", "kv-1", 0);
    assert_non_null(other);
    assert_string_not_equal(other, first);
    json_t *o = json_loads(other, 0, NULL);
    assert_string_equal(str(o, "status"), "success");
    json_decref(o);
    wait_idle(10000);
    assert_true(store_hits(2, 3) == 1);
    char *stored_other = bw_test_js_kv_result(&J, BW_JS_BUCKET, "other", "kv-1", NULL, NULL);
    assert_non_null(stored_other);
    assert_string_equal(stored_other, other);
    free(stored_other);

    /* the store is the server's: restarted on its store (same port), the entries are still there */
    bw_test_nats_stop(&H.nats, 1);
    assert_int_equal(bw_test_nats_start_on(&H.nats, H.nats.port), 0);
    assert_int_equal(bw_test_js_wait_ready(&J, 10000), 0);
    stored = bw_test_js_kv_result(&J, BW_JS_BUCKET, "acme", "kv-1", NULL, NULL);
    assert_non_null(stored);
    assert_string_equal(stored, first);
    free(stored);
    free(other);
    free(again);
    free(first);
}

/* A tenant and an id at their 256-byte limits, full of what a subject token may not hold ('.', '*', '>',
   ' ', '/'), make a valid bucket key: the result is stored under it, and a worker that never saw the
   assignment answers a second delivery from the store. */
static void test_result_store_ids_at_limit(void **state)
{
    (void)state;
    char tenant[257], id[257];
    for (int i = 0; i < 256; i++) {
        tenant[i] = ".*> /t"[i % 6];
        id[i] = "i>*. /"[i % 6];
    }
    tenant[255] = 't'; /* a NATS header value loses its trailing blanks: no tenant can end in one */
    id[255] = 'i';
    tenant[256] = id[256] = '\0';
    int w = bw_harness_add_worker(&H, store_env);
    assert_true(w >= 0);
    submit(tenant, id, "echo", "{\"limit\":true}", 10000);
    json_decref(result(id, 10000));
    char *first = result_body(tenant, id, 0);
    assert_non_null(first);
    wait_idle(10000);
    char *stored = bw_test_js_kv_result(&J, BW_JS_BUCKET, tenant, id, NULL, NULL);
    if (stored == NULL)
        fail_msg("no entry for the 256-byte tenant and id in bucket " BW_JS_BUCKET);
    assert_string_equal(stored, first);
    free(stored);

    assert_int_equal(bw_test_proc_signal(&H.workers[w], SIGTERM), 0);
    assert_int_equal(wait_exit(w, 20000), 0);
    int w2 = bw_harness_add_worker(&H, store_env);
    assert_true(w2 >= 0);
    submit(tenant, id, "echo", "{\"limit\":true}", 10000);
    assert_int_equal(wait_result_count(id, 2, 10000), 2);
    char *again = result_body(tenant, id, 1);
    assert_non_null(again);
    assert_string_equal(again, first);
    assert_true(store_hits(w2, w2) == 1);
    free(again);
    free(first);
}

/* ---- drain (group "drain") --------------------------------------------------------------------- */

/* SIGTERM with two long jobs running and SHUTDOWN_TIMEOUT_MS=500: the worker exits 0 at once without a
   result for them; they are NAKed, so a second worker runs them long before the 60 s ack wait. */
/* A type with a pool of its own (sleep=3 beside WORKER_MAX_CONCURRENCY=2): the worker pulls while its
   shared slots are free, runs three sleeps in their pool, and stops pulling once the jobs waiting fill its
   room: 3 running + 2 waiting held, the other 5 (and an echo behind them) stay in the stream until the
   sleeps end. README "Scheduling": fetch only what can start soon. */
static void test_pull_room_with_own_pool(void **state)
{
    (void)state;
    static const char *const env[] = {JS_MODE,
                                      JS_CREATE,
                                      "CAF_JS_ACK_WAIT_MS=60000",
                                      "WORKER_MAX_CONCURRENCY=2",
                                      "WORKER_TYPE_CONCURRENCY=sleep=3",
                                      NULL};
    assert_int_equal(bw_harness_add_worker(&H, env), 0);
    char id[32];
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof id, "pool-%d", i);
        submit("acme", id, "sleep", "{\"ms\":3000}", 60000);
    }
    submit("beta", "pool-echo", "echo", "{}", 60000);
    wait_ack_pending(5, 10000);
    assert_true(wait_metric(0, "beamline_worker_jobs_waiting{job_type=\"sleep\"}", 2, 10000) == 2);
    assert_int_equal(metric("beamline_worker_jobs_running{job_type=\"sleep\"}"), 3);
    int samples = 0;
    while (bw_harness_result_count(&H, "pool-0") == 0) {
        bw_test_js_consumer_t c = consumer();
        if (bw_harness_result_count(&H, "pool-0") != 0)
            break; /* the sample may straddle the end of the first sleeps */
        if (c.num_ack_pending != 5 || c.num_pending != 6)
            fail_msg("the worker holds %lld deliveries (want 3 running + 2 waiting), %llu left in the stream",
                     (long long)c.num_ack_pending, (unsigned long long)c.num_pending);
        samples++;
        bw_test_sleep_ms(50);
    }
    assert_true(samples >= 3);
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof id, "pool-%d", i);
        json_t *r = result(id, 30000);
        assert_string_equal(str(r, "status"), "success");
        json_decref(r);
    }
    json_decref(result("pool-echo", 30000));
    wait_idle(10000);
}

/* The remedy README "Scheduling" gives for one tenant's backlog ahead of another's in the stream: a subject
   per tenant under the assign subject, one stream capturing them all, and a worker group per tenant class
   on a consumer filtered to its subject (CAF_ASSIGN_SUBJECT, CAF_JS_DURABLE). beta's jobs, published after
   acme's backlog, are answered while that backlog is still in the stream. */
static void publish_on(const char *subject, const char *tenant, const char *id, const char *type,
                       const char *payload)
{
    const char *const hdrs[] = {"tenant_id", tenant, "version", "1", NULL};
    char *a = bw_test_js_assignment(tenant, id, type, payload, 120000);
    int rc = bw_test_js_publish(&J, subject, a, hdrs, NULL, NULL);
    free(a);
    if (rc != 0)
        fail_msg("publishing %s on %s failed", id, subject);
}

static void test_consumer_per_tenant_class(void **state)
{
    (void)state;
    assert_int_equal(bw_test_js_add_assign_stream(&J, BW_JS_STREAM, BW_JS_ASSIGN_SUBJECT ".>", 1), 0);
    static const char *const acme_env[] = {JS_MODE,
                                           JS_CREATE,
                                           "CAF_ASSIGN_SUBJECT=" BW_JS_ASSIGN_SUBJECT ".acme",
                                           "CAF_JS_DURABLE=workers-acme",
                                           "WORKER_MAX_CONCURRENCY=1",
                                           "WORKER_TYPE_CONCURRENCY=sleep=0",
                                           NULL};
    static const char *const beta_env[] = {JS_MODE,
                                           JS_CREATE,
                                           "CAF_ASSIGN_SUBJECT=" BW_JS_ASSIGN_SUBJECT ".beta",
                                           "CAF_JS_DURABLE=workers-beta",
                                           "WORKER_MAX_CONCURRENCY=1",
                                           NULL};
    assert_int_equal(bw_harness_add_worker(&H, acme_env), 0);
    assert_int_equal(bw_harness_add_worker(&H, beta_env), 1);
    bw_test_js_consumer_t c;
    assert_int_equal(bw_test_js_consumer(&J, BW_JS_STREAM, "workers-acme", &c), 0);
    assert_string_equal(c.filter, BW_JS_ASSIGN_SUBJECT ".acme");
    enum { BACKLOG = 200 };
    char id[32];
    for (int i = 0; i < BACKLOG; i++) {
        snprintf(id, sizeof id, "class-acme-%d", i);
        publish_on(BW_JS_ASSIGN_SUBJECT ".acme", "acme", id, "sleep", "{\"ms\":20}");
    }
    for (int i = 0; i < 3; i++) {
        snprintf(id, sizeof id, "class-beta-%d", i);
        publish_on(BW_JS_ASSIGN_SUBJECT ".beta", "beta", id, "echo", "{}");
    }
    for (int i = 0; i < 3; i++) {
        snprintf(id, sizeof id, "class-beta-%d", i);
        json_t *r = result(id, 30000);
        assert_string_equal(str(r, "status"), "success");
        json_decref(r);
    }
    /* one slot, 20 ms a job: acme's backlog takes 4 s; beta did not wait for it */
    assert_int_equal(bw_test_js_consumer(&J, BW_JS_STREAM, "workers-acme", &c), 0);
    if (c.num_pending == 0)
        fail_msg("acme's backlog of %d was gone before beta's 3 echos were answered", BACKLOG);
    for (int i = 0; i < BACKLOG; i++) {
        snprintf(id, sizeof id, "class-acme-%d", i);
        json_decref(result(id, 60000));
    }
    client_sync();
    assert_int_equal(bw_harness_result_count(&H, "class-acme-0"), 1);
    assert_int_equal(bw_harness_result_count(&H, "class-beta-0"), 1);
    assert_int_equal(bw_test_js_wait_idle(&J, BW_JS_STREAM, "workers-acme", 10000, &c), 0);
    assert_int_equal(bw_test_js_wait_idle(&J, BW_JS_STREAM, "workers-beta", 10000, &c), 0);
    assert_int_equal(bw_test_js_stream_msgs(&J, BW_JS_STREAM), 0); /* a work queue: every one acked */
}

static void test_drain_naks_unfinished(void **state)
{
    (void)state;
    static const char *const env[] = {JS_MODE, JS_CREATE, "CAF_JS_ACK_WAIT_MS=60000",
                                      "SHUTDOWN_TIMEOUT_MS=500", NULL};
    assert_int_equal(bw_harness_add_worker(&H, env), 0);
    submit("acme", "drain-0", "sleep", "{\"ms\":5000}", 60000);
    submit("acme", "drain-1", "sleep", "{\"ms\":5000}", 60000);
    wait_ack_pending(2, 10000);
    assert_true(wait_metric(0, "beamline_worker_jobs_in_flight", 2, 10000) == 2);

    int64_t t0 = bw_test_now_ms();
    assert_int_equal(bw_test_proc_signal(&H.workers[0], SIGTERM), 0);
    assert_int_equal(wait_exit(0, 10000), 0);
    int64_t stop_ms = bw_test_now_ms() - t0;
    assert_true(stop_ms < 4500); /* 500 ms of drain, not the 5 s the jobs would take */
    client_sync();
    assert_int_equal(bw_harness_result_count(&H, "drain-0"), 0);
    assert_int_equal(bw_harness_result_count(&H, "drain-1"), 0);
    /* its NAKs (its /metrics is gone with it): the give-back is logged with the number of deliveries */
    if (bw_test_proc_log_count(&H.workers[0], "\"unfinished assignments given back to the server\"") != 1 ||
        bw_test_proc_log_count(&H.workers[0], "\"deliveries\":2") != 1) {
        bw_test_proc_dump_log(&H.workers[0]);
        fail_msg("the drained worker did not log giving back its 2 deliveries");
    }

    int64_t t1 = bw_test_now_ms();
    assert_int_equal(bw_harness_add_worker(&H, env), 1);
    for (int i = 0; i < 2; i++) {
        char id[16];
        snprintf(id, sizeof id, "drain-%d", i);
        json_t *r = result(id, 30000);
        assert_string_equal(str(r, "status"), "success");
        json_decref(r);
    }
    assert_true(bw_test_now_ms() - t1 < 30000); /* well before the 60 s ack wait */
    wait_idle(10000);
    client_sync();
    assert_int_equal(bw_harness_result_count(&H, "drain-0"), 1);
    assert_int_equal(bw_harness_result_count(&H, "drain-1"), 1);
    double redelivered = metric_of(1, "beamline_worker_js_redelivered_total"),
           naks = metric_of(1, "beamline_worker_js_naks_total");
    if (redelivered != 2 || naks != 0)
        fail_msg("the second worker counted %g redeliveries (want 2) and %g NAKs (want 0)", redelivered,
                 naks);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest one[] = {
        cmocka_unit_test(test_startup_creates_and_answers),
        cmocka_unit_test(test_readyz_and_heartbeats),
        cmocka_unit_test(test_in_progress_keeps_long_job),
        cmocka_unit_test(test_backpressure),
        cmocka_unit_test(test_poison_termed_once),
        cmocka_unit_test(test_duplicate_delivery_runs_once),
        cmocka_unit_test(test_parked_approval_acked),
        cmocka_unit_test(test_consumer_deleted_recreated),
        cmocka_unit_test(test_results_stream_one_per_assignment),
    };
    const struct CMUnitTest ackafter[] = {cmocka_unit_test(test_ack_only_after_result_stored)};
    const struct CMUnitTest startup[] = {
        cmocka_unit_test(test_invalid_stream_name_exits_2),
        cmocka_unit_test(test_missing_stream_exits_1),
        cmocka_unit_test(test_missing_bucket_exits_1),
    };
    const struct CMUnitTest readiness[] = {cmocka_unit_test(test_not_ready_until_set_up)};
    const struct CMUnitTest crash[] = {cmocka_unit_test(test_max_deliver_by_crash)};
    const struct CMUnitTest unanswered[] = {cmocka_unit_test(test_max_deliver_unanswered)};
    const struct CMUnitTest store[] = {cmocka_unit_test(test_result_store_survives_restart)};
    const struct CMUnitTest limits[] = {cmocka_unit_test(test_result_store_ids_at_limit)};
    const struct CMUnitTest drain[] = {cmocka_unit_test(test_drain_naks_unfinished)};
    const struct CMUnitTest nostore[] = {cmocka_unit_test(test_result_store_off)};
    const struct CMUnitTest pool[] = {cmocka_unit_test(test_pull_room_with_own_pool)};
    const struct CMUnitTest classes[] = {cmocka_unit_test(test_consumer_per_tenant_class)};
#define N(a) (sizeof a / sizeof a[0])
    const bw_test_group_t groups[] = {
        {"jetstream_one_worker", one, N(one), setup_one, teardown},
        {"jetstream_ack_after_result", ackafter, N(ackafter), setup_ackafter, teardown},
        {"jetstream_startup", startup, N(startup), setup_server, teardown},
        {"jetstream_readiness", readiness, N(readiness), setup_server, teardown},
    /* not under ThreadSanitizer, like every javascript test (tests/CMakeLists.txt): JavaScriptCore is not
       instrumented, and the sandbox's crash path trips a report on a reused descriptor number */
#if !defined(__SANITIZE_THREAD__)
        {"jetstream_crash", crash, N(crash), setup_crash, teardown},
#endif
        {"jetstream_unanswered", unanswered, N(unanswered), setup_server, teardown},
        {"jetstream_store", store, N(store), setup_server, teardown},
        {"jetstream_store_limits", limits, N(limits), setup_server, teardown},
        {"jetstream_drain", drain, N(drain), setup_server, teardown},
        {"jetstream_no_result_store", nostore, N(nostore), setup_server, teardown},
        {"jetstream_own_pool", pool, N(pool), setup_server, teardown},
        {"jetstream_tenant_classes", classes, N(classes), setup_server, teardown},
    };
#if defined(__SANITIZE_THREAD__)
    fprintf(stderr, "note: group jetstream_crash (javascript sandboxes) not run under ThreadSanitizer\n");
    (void)setup_crash;
    (void)crash;
#endif
    /* BW_JS_GROUP=<part of a group name> runs only the matching groups (while working on one) */
    int failed = bw_test_run_groups(argc, argv, groups, N(groups), "BW_JS_GROUP");
    return bw_test_exit_status(failed);
}
