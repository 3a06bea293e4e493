/*
 * Integration: tenants are a security boundary, and every answerable assignment gets an answer, through
 * a real nats-server and the real worker binary.
 *  - the same assignment id from two tenants is two jobs (remembered results, in-flight duplicates), also
 *    when a plain concatenation of tenant and id would be the same string;
 *  - a cancel that names a tenant (payload or header) stops that tenant's job only; one that names none
 *    stops every job with the id;
 *  - results at the size edge: a result and its NATS headers must fit max_payload together; every echo
 *    around the edge gets exactly one result (success or RESULT_TOO_LARGE), never a dead letter, on a
 *    server with a 64 KiB max_payload and at the default 1 MiB;
 *  - JSON that jansson refuses but whose ids can be read is answered (INVALID_ASSIGNMENT) and dead-lettered;
 *  - the README's NATS permission block works: the worker runs under it, a scheduler may cancel, a client
 *    allowed only to submit may not.
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

static int setup(void **state)
{
    static const char *const env[] = {"CAF_ACK_ENABLED=true", NULL};
    return bw_harness_start(&H, env);
}

static int teardown(void **state)
{
    return bw_harness_finish(&H, 0);
}

/* ---- helpers ---- */

/* An assignment of tenant (in the payload and the tenant_id header), published on the assign subject. */
static void submit_as(const char *tenant, const char *id, const char *type, const char *payload,
                      int deadline_ms)
{
    char *s = bw_harness_tenant_assignment(tenant, id, type, payload, deadline_ms);
    assert_non_null(s);
    const char *const hdrs[] = {"tenant_id", tenant, "version", "1", NULL};
    assert_int_equal(bw_test_client_publish(H.client, BW_H_ASSIGN, s, hdrs), 0);
    free(s);
}

/* A cancel request: payload {"assignment_id","reason"[,"tenant_id"]} and an optional tenant_id header. */
static void cancel_as(const char *id, const char *payload_tenant, const char *header_tenant)
{
    json_t *c = json_pack("{ssss}", "assignment_id", id, "reason", "test cancel");
    if (payload_tenant != NULL)
        json_object_set_new(c, "tenant_id", json_string(payload_tenant));
    char *s = json_dumps(c, JSON_COMPACT);
    const char *const hdrs[] = {"tenant_id", header_tenant, NULL};
    assert_int_equal(bw_test_client_publish(H.client, BW_H_CANCEL, s, header_tenant ? hdrs : NULL), 0);
    free(s);
    json_decref(c);
}

/* Messages on subject so far whose assignment_id (and tenant_id, unless NULL) match; the i-th match (0-based)
   is copied to *nth when nth is not NULL (NULL when there are fewer). */
static int count_msgs(const char *subject, const char *tenant, const char *id, int i, bw_test_msg_t **nth)
{
    int n = bw_test_client_count(H.client, subject), found = 0;
    if (nth != NULL)
        *nth = NULL;
    for (int k = 0; k < n; k++) {
        bw_test_msg_t *m = bw_test_client_get(H.client, subject, k);
        json_t *j = m != NULL ? m->json : NULL;
        if (json_is_object(json_object_get(j, "data")) && json_object_get(j, "kind"))
            j = json_object_get(j, "data");
        const char *got = json_string_value(json_object_get(j, "assignment_id"));
        const char *t = json_string_value(json_object_get(j, "tenant_id"));
        if (got != NULL && strcmp(got, id) == 0 &&
            (tenant == NULL || (t != NULL && strcmp(t, tenant) == 0))) {
            if (nth != NULL && found == i) {
                *nth = m;
                m = NULL;
            }
            found++;
        }
        bw_test_msg_destroy(m);
    }
    return found;
}

/* Waits (up to wait_ms) until at least n matching messages arrived; returns how many there are. */
static int wait_msgs(const char *subject, const char *tenant, const char *id, int n, int wait_ms)
{
    int64_t until = bw_test_now_ms() + wait_ms;
    int got;
    while ((got = count_msgs(subject, tenant, id, 0, NULL)) < n && bw_test_now_ms() < until)
        bw_test_sleep_ms(10);
    return got;
}

/* The i-th result of (tenant, id), waiting up to wait_ms for it; NULL when none came. Caller destroys. */
static bw_test_msg_t *result_of(const char *tenant, const char *id, int i, int wait_ms)
{
    bw_test_msg_t *m = NULL;
    if (wait_msgs(BW_H_RESULTS, tenant, id, i + 1, wait_ms) > i)
        count_msgs(BW_H_RESULTS, tenant, id, i, &m);
    return m;
}

static const char *field(const bw_test_msg_t *m, const char *key)
{
    return json_string_value(json_object_get(m->json, key));
}

/* Waits for the "accepted" ack of (tenant, id): the job is admitted (running or queued). */
static void wait_accepted(const char *tenant, const char *id)
{
    assert_int_equal(wait_msgs(BW_H_ACK, tenant, id, 1, 10000), 1);
}

/* ---- duplicates ---- */

/* Tenant B sends the id tenant A used: B's job runs and B gets B's output, never A's; A's duplicate still
   gets A's remembered result byte for byte (and B's gets B's). */
static void test_same_id_other_tenant_is_another_job(void **state)
{
    submit_as("tenant-a", "shared-1", "echo", "{\"secret\":\"a-secret-4711\"}", 5000);
    bw_test_msg_t *a1 = result_of("tenant-a", "shared-1", 0, 10000);
    assert_non_null(a1);
    assert_non_null(strstr(a1->data, "a-secret-4711"));
    submit_as("tenant-b", "shared-1", "echo", "{\"mine\":\"b-data\"}", 5000);
    bw_test_msg_t *b1 = result_of("tenant-b", "shared-1", 0, 10000);
    assert_non_null(b1);
    assert_string_equal(field(b1, "status"), "success");
    assert_null(strstr(b1->data, "a-secret-4711"));
    assert_string_equal(json_string_value(json_object_get(json_object_get(b1->json, "output"), "mine")),
                        "b-data");
    assert_string_equal(json_string_value(json_object_get(b1->headers, "tenant_id")), "tenant-b");
    submit_as("tenant-a", "shared-1", "echo", "{\"other\":1}", 5000);
    submit_as("tenant-b", "shared-1", "echo", "{\"other\":2}", 5000);
    bw_test_msg_t *a2 = result_of("tenant-a", "shared-1", 1, 10000),
                  *b2 = result_of("tenant-b", "shared-1", 1, 10000);
    assert_non_null(a2);
    assert_non_null(b2);
    assert_int_equal(a2->len, a1->len);
    assert_memory_equal(a2->data, a1->data, (size_t)a1->len);
    assert_int_equal(b2->len, b1->len);
    assert_memory_equal(b2->data, b1->data, (size_t)b1->len);
    bw_test_msg_destroy(a1);
    bw_test_msg_destroy(a2);
    bw_test_msg_destroy(b1);
    bw_test_msg_destroy(b2);
}

/* A's job with id X still running does not make B's X a duplicate; A's own duplicate is ignored. */
static void test_in_flight_duplicate_does_not_block_other_tenant(void **state)
{
    submit_as("tenant-a", "flying-1", "sleep", "{\"ms\":60000}", 120000);
    wait_accepted("tenant-a", "flying-1");
    submit_as("tenant-a", "flying-1", "echo", "{\"dup\":true}", 5000); /* ignored: in flight */
    submit_as("tenant-b", "flying-1", "echo", "{\"b\":true}", 5000);
    bw_test_msg_t *b = result_of("tenant-b", "flying-1", 0, 10000);
    assert_non_null(b);
    assert_string_equal(field(b, "status"), "success");
    bw_test_msg_destroy(b);
    /* A's duplicate was taken before B's assignment (one subscription, in order): nothing for A yet */
    assert_int_equal(count_msgs(BW_H_RESULTS, "tenant-a", "flying-1", 0, NULL), 0);
    cancel_as("flying-1", "tenant-a", NULL);
    bw_test_msg_t *a = result_of("tenant-a", "flying-1", 0, 10000);
    assert_non_null(a);
    assert_string_equal(field(a, "status"), "cancelled");
    bw_test_msg_destroy(a);
    assert_int_equal(count_msgs(BW_H_RESULTS, NULL, "flying-1", 0, NULL), 2);
}

/* Keys built by plain concatenation would collide: "a" + "bX" and "ab" + "X" ("ten" + "ant-1" and "tenant"
   + "-1"). Each is its own job, first run and then remembered. */
static void test_concatenations_do_not_collide(void **state)
{
    static const char *const pairs[][3] = {
        {"a", "bX", "{\"who\":\"a/bX\"}"},           {"ab", "X", "{\"who\":\"ab/X\"}"},
        {"ten", "ant-1", "{\"who\":\"ten/ant-1\"}"}, {"tenant", "-1", "{\"who\":\"tenant/-1\"}"},
        {"1:a", "b", "{\"who\":\"1:a/b\"}"},         {"3", ":1:ab", "{\"who\":\"3/:1:ab\"}"}};
    for (int round = 0; round < 2; round++) {
        for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++)
            submit_as(pairs[i][0], pairs[i][1], "echo", pairs[i][2], 5000);
        for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
            bw_test_msg_t *m = result_of(pairs[i][0], pairs[i][1], round, 10000);
            if (m == NULL)
                fail_msg("no result %d for tenant %s id %s", round, pairs[i][0], pairs[i][1]);
            json_t *want = json_loads(pairs[i][2], 0, NULL);
            assert_true(json_equal(json_object_get(m->json, "output"), want));
            json_decref(want);
            bw_test_msg_destroy(m);
        }
    }
}

/* ---- cancels ---- */

/* Cancels naming another tenant, in the payload or the header, leave A's job running to success. A
   sentinel job cancelled by its own tenant afterwards proves the wrong cancels were taken first (one
   subscription, one publisher: in order). */
static void test_cancel_of_other_tenant_leaves_job_running(void **state)
{
    submit_as("tenant-a", "victim-1", "sleep", "{\"ms\":6000}", 60000);
    submit_as("tenant-a", "sentinel-1", "sleep", "{\"ms\":60000}", 120000);
    wait_accepted("tenant-a", "victim-1");
    wait_accepted("tenant-a", "sentinel-1");
    int64_t t0 = bw_test_now_ms();
    cancel_as("victim-1", "tenant-b", NULL);
    cancel_as("victim-1", NULL, "tenant-b");
    cancel_as("victim-1", "tenant-b", "tenant-a"); /* the payload's tenant wins over the header's */
    cancel_as("sentinel-1", "tenant-a", NULL);
    bw_test_msg_t *s = result_of("tenant-a", "sentinel-1", 0, 10000);
    assert_non_null(s);
    assert_string_equal(field(s, "status"), "cancelled");
    bw_test_msg_destroy(s);
    if (bw_test_now_ms() - t0 >= 5000)
        skip(); /* the machine was too slow to tell: the victim may have finished on its own */
    assert_int_equal(count_msgs(BW_H_RESULTS, NULL, "victim-1", 0, NULL), 0);
    bw_test_msg_t *v = result_of("tenant-a", "victim-1", 0, 20000);
    assert_non_null(v);
    assert_string_equal(field(v, "status"), "success");
    bw_test_msg_destroy(v);
}

/* Cancels naming the job's own tenant (payload, or header) stop it. */
static void test_cancel_of_own_tenant_stops_job(void **state)
{
    submit_as("tenant-a", "own-1", "sleep", "{\"ms\":60000}", 120000);
    submit_as("tenant-a", "own-2", "sleep", "{\"ms\":60000}", 120000);
    submit_as("tenant-b", "own-2", "sleep", "{\"ms\":60000}", 120000);
    wait_accepted("tenant-a", "own-1");
    wait_accepted("tenant-a", "own-2");
    wait_accepted("tenant-b", "own-2");
    cancel_as("own-1", "tenant-a", NULL);
    cancel_as("own-2", NULL, "tenant-a");
    for (int i = 1; i <= 2; i++) {
        char id[16];
        snprintf(id, sizeof id, "own-%d", i);
        bw_test_msg_t *m = result_of("tenant-a", id, 0, 10000);
        assert_non_null(m);
        assert_string_equal(field(m, "status"), "cancelled");
        assert_string_equal(field(m, "error_code"), "CANCELLED");
        assert_string_equal(field(m, "error_message"), "test cancel");
        bw_test_msg_destroy(m);
    }
    /* B's own-2 still runs: stop it with its own tenant, and it is the only other result */
    assert_int_equal(count_msgs(BW_H_RESULTS, "tenant-b", "own-2", 0, NULL), 0);
    cancel_as("own-2", "tenant-b", NULL);
    bw_test_msg_t *b = result_of("tenant-b", "own-2", 0, 10000);
    assert_non_null(b);
    assert_string_equal(field(b, "status"), "cancelled");
    bw_test_msg_destroy(b);
}

/* A cancel naming no tenant (the router's) stops every job with the id, whatever its tenant. */
static void test_cancel_without_tenant_stops_every_job_with_the_id(void **state)
{
    submit_as("tenant-a", "anyone-1", "sleep", "{\"ms\":60000}", 120000);
    submit_as("tenant-b", "anyone-1", "sleep", "{\"ms\":60000}", 120000);
    wait_accepted("tenant-a", "anyone-1");
    wait_accepted("tenant-b", "anyone-1");
    cancel_as("anyone-1", NULL, NULL);
    const char *tenants[] = {"tenant-a", "tenant-b"};
    for (int i = 0; i < 2; i++) {
        bw_test_msg_t *m = result_of(tenants[i], "anyone-1", 0, 10000);
        assert_non_null(m);
        assert_string_equal(field(m, "status"), "cancelled");
        bw_test_msg_destroy(m);
    }
}

/* ---- JSON that jansson refuses ---- */

static char *format(const char *fmt, const char *arg)
{
    size_t cap = strlen(fmt) + strlen(arg) + 1;
    char *s = malloc(cap);
    snprintf(s, cap, fmt, arg);
    return s;
}

/* Deeper than 2,048 levels, 1e400, a lone surrogate, U+0000 in a key: an INVALID_ASSIGNMENT result with
   jansson's reason, and the original as a PARSE_ERROR dead letter; bare and enveloped. */
static void test_unreadable_json_is_answered_and_dead_lettered(void **state)
{
    char deep[6001];
    memset(deep, '[', 3000);
    memset(deep + 3000, ']', 3000);
    deep[6000] = '\0';
    const char *parts[][2] = {
        {"deep", deep}, {"huge", "1e400"}, {"surrogate", "\"\\ud800\""}, {"nulkey", "{\"a\\u0000b\":1}"}};
    static const char *const forms[] = {
        "{\"version\":\"1\",\"assignment_id\":\"%%s\",\"tenant_id\":\"acme\",\"job\":{\"type\":\"echo\","
        "\"payload\":{\"v\":%s}}}",
        "{\"version\":\"v1\",\"kind\":\"exec_assign\",\"data\":{\"assignment_id\":\"%%s\",\"job\":{\"type\":"
        "\"echo\","
        "\"payload\":{\"v\":%s}}}}"};
    static const char *const hdrs[] = {"tenant_id", "acme", NULL};
    for (int f = 0; f < 2; f++) {
        for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
            char id[64];
            snprintf(id, sizeof id, "unreadable-%s-%d", parts[i][0], f);
            char *tmpl = format(forms[f], parts[i][1]), *msg = format(tmpl, id);
            assert_int_equal(bw_harness_publish_raw(&H, msg, hdrs), 0);
            bw_test_msg_t *r = result_of("acme", id, 0, 10000);
            if (r == NULL)
                fail_msg("no result for %s", id);
            assert_string_equal(field(r, "status"), "error");
            assert_string_equal(field(r, "error_code"), "INVALID_ASSIGNMENT");
            assert_non_null(strstr(field(r, "error_message"), "cannot read"));
            bw_test_msg_destroy(r);
            assert_int_equal(wait_msgs(BW_H_DLQ, NULL, id, 1, 10000), 1);
            bw_test_msg_t *d = NULL;
            count_msgs(BW_H_DLQ, NULL, id, 0, &d);
            assert_string_equal(field(d, "reason"), "PARSE_ERROR");
            assert_string_equal(field(d, "message"), msg); /* kept as text, byte for byte, for replay */
            assert_string_equal(
                json_string_value(json_object_get(json_object_get(d->json, "headers"), "tenant_id")), "acme");
            bw_test_msg_destroy(d);
            free(tmpl);
            free(msg);
        }
    }
}

/* ---- the size edge ---- */

/* Bytes the message's headers took in the HPUB: "NATS/1.0\r\n", "name: value\r\n" each, "\r\n". */
static size_t header_bytes(const bw_test_msg_t *m)
{
    const char *k;
    json_t *v;
    size_t n = 0;
    json_object_foreach(m->headers, k, v) n += strlen(k) + 2 + strlen(json_string_value(v)) + 2;
    return n > 0 ? n + 10 + 2 : 0;
}

/* The would-be result's size on the wire with a one-digit latency_ms: what a success at this payload takes
   at least. Measured on a success and moved by the payload's length (ids of one length). */
typedef struct edge {
    size_t max;         /* the server's max_payload */
    int probe_len;      /* blob length of the measured success */
    size_t probe_floor; /* its size on the wire with a one-digit latency_ms */
    size_t id_len;      /* every id of the edge has this length, so that sizes move with the blob only */
} edge_t;

static size_t floor_at(const edge_t *e, int len)
{
    return e->probe_floor + (size_t)(len - e->probe_len);
}

static void submit_blob(const char *id, int len)
{
    char *payload = malloc((size_t)len + 32);
    int n = snprintf(payload, (size_t)len + 32, "{\"blob\":\"");
    memset(payload + n, 'x', (size_t)len);
    strcpy(payload + n + len, "\"}");
    submit_as("acme", id, "echo", payload, 20000);
    free(payload);
}

static void measure(edge_t *e, const char *id, int len)
{
    submit_blob(id, len);
    bw_test_msg_t *m = result_of("acme", id, 0, 20000);
    assert_non_null(m);
    assert_string_equal(field(m, "status"), "success");
    char lat[32];
    int digits = snprintf(lat, sizeof lat, "%lld",
                          (long long)json_integer_value(json_object_get(m->json, "latency_ms")));
    e->probe_len = len;
    e->id_len = strlen(id);
    e->probe_floor = (size_t)m->len + header_bytes(m) - (size_t)(digits - 1);
    bw_test_msg_destroy(m);
}

/* Checks the one result of an echo of len bytes: a success fits max_payload with its headers; a refusal is
   RESULT_TOO_LARGE and happens only when even a one-digit latency would not fit; a success is required
   while there is room for a latency of up to five digits. Never a dead letter. */
static void check_edge_result(const edge_t *e, const char *id, int len)
{
    bw_test_msg_t *m = result_of("acme", id, 0, 20000);
    if (m == NULL)
        fail_msg("no result for %s (blob %d bytes, at least %zu on the wire, max_payload %zu)", id, len,
                 floor_at(e, len), e->max);
    assert_int_equal(strlen(id), e->id_len);
    size_t wire = (size_t)m->len + header_bytes(m), floor = floor_at(e, len);
    if (strcmp(field(m, "status"), "success") == 0) {
        if (wire > e->max)
            fail_msg("%s: %zu bytes on the wire, max_payload %zu", id, wire, e->max);
    } else {
        assert_string_equal(field(m, "error_code"), "RESULT_TOO_LARGE");
        if (floor <= e->max - 4)
            fail_msg("%s refused at %zu bytes (max_payload %zu)", id, floor, e->max);
        assert_true(wire <= e->max);
    }
    if (floor > e->max)
        assert_string_equal(field(m, "status"), "error");
    bw_test_msg_destroy(m);
    assert_int_equal(count_msgs(BW_H_RESULTS, NULL, id, 0, NULL), 1);
    /* acks arrive on a subscription of their own: not necessarily before the result */
    assert_int_equal(wait_msgs(BW_H_ACK, NULL, id, 1, 10000), 1);
}

/* The blob length whose would-be result takes max_payload exactly (with a one-digit latency). */
static int edge_len(const edge_t *e)
{
    return e->probe_len + (int)(e->max - e->probe_floor);
}

/* The edge ±1 around the computed boundary (ids "<prefix>-1", "<prefix>+0", "<prefix>+1"); the last one
   must be refused. */
static void check_exact_edge(const edge_t *e, const char *prefix)
{
    char id[64];
    int at = edge_len(e);
    for (int d = -1; d <= 1; d++) {
        snprintf(id, sizeof id, "%s%+d", prefix, d);
        submit_blob(id, at + d);
    }
    for (int d = -1; d <= 1; d++) {
        snprintf(id, sizeof id, "%s%+d", prefix, d);
        check_edge_result(e, id, at + d);
    }
}

/* At the default 1 MiB: the computed edge ±1. */
static void test_default_max_payload_edge(void **state)
{
    edge_t e = {.max = 1024 * 1024};
    measure(&e, "edge1m-probe", 1024 * 1024 - 4000);
    check_exact_edge(&e, "edge1m-edg");
    for (int d = -1; d <= 1; d++) {
        char id[64];
        snprintf(id, sizeof id, "edge1m-edg%+d", d);
        assert_int_equal(count_msgs(BW_H_DLQ, NULL, id, 0, NULL), 0);
    }
}

/* A server with max_payload 64 KiB. */
static const char small_conf[] = "max_payload: 65536\n";

static int setup_small(void **state)
{
    static const char *const env[] = {"CAF_ACK_ENABLED=true", NULL};
    memset(&H, 0, sizeof H);
    H.nats.conf = small_conf;
    if (bw_test_nats_start(&H.nats) != 0 || (H.client = bw_test_client_create(H.nats.url)) == NULL)
        return -1;
    static const char *const subjects[] = {BW_H_RESULTS, BW_H_HEARTBEAT, BW_H_DLQ, BW_H_ACK, NULL};
    for (int i = 0; subjects[i] != NULL; i++)
        if (bw_test_client_collect(H.client, subjects[i]) != 0)
            return -1;
    return bw_harness_add_worker(&H, env) < 0 ? -1 : 0;
}

/* Every 8 bytes from 1,200 under the edge to 64 past it (as long as the assignment itself fits), then the
   edge ±1: exactly one result each, success when it fits, RESULT_TOO_LARGE otherwise, no dead letter. */
static void test_size_sweep_small_max_payload(void **state)
{
    edge_t e = {.max = 65536};
    measure(&e, "sweep-probe", 60000);
    int from = edge_len(&e) - 1200, to = edge_len(&e) + 64, n = 0;
    char id[64];
    for (int len = from; len <= to; len += 8, n++) {
        snprintf(id, sizeof id, "sweep-%05d", len);
        submit_blob(id, len);
    }
    int ok = 0, refused = 0;
    for (int len = from; len <= to; len += 8) {
        snprintf(id, sizeof id, "sweep-%05d", len);
        check_edge_result(&e, id, len);
        bw_test_msg_t *m = result_of("acme", id, 0, 0);
        strcmp(field(m, "status"), "success") == 0 ? ok++ : refused++;
        bw_test_msg_destroy(m);
    }
    assert_true(ok > 100 && refused >= 5);
    check_exact_edge(&e, "sweep-edg");
    /* nothing became a dead letter (the results that failed to publish did, before) */
    assert_int_equal(bw_test_client_count(H.client, BW_H_DLQ), 0);
}

/* A dead letter whose original nearly fills max_payload does not fit on the DLQ subject with its envelope
   of fields: it is published without the original (payload_ref kept) instead of being refused. */
static void test_dead_letter_of_large_original(void **state)
{
    const int sizes[] = {1000, 65000, 65536};
    for (int i = 0; i < 3; i++) {
        char *g = malloc((size_t)sizes[i] + 1);
        memset(g, 'x', (size_t)sizes[i]);
        g[0] = '{';
        g[sizes[i]] = '\0';
        int before = bw_test_client_count(H.client, BW_H_DLQ);
        assert_int_equal(bw_harness_publish_raw(&H, g, NULL), 0);
        assert_int_equal(bw_test_client_wait_count(H.client, BW_H_DLQ, before + 1, 10000), before + 1);
        bw_test_msg_t *d = bw_test_client_get(H.client, BW_H_DLQ, before);
        json_t *ref = json_object_get(d->json, "payload_ref");
        assert_int_equal(json_integer_value(json_object_get(ref, "len")), sizes[i]);
        assert_string_equal(field(d, "reason"), "PARSE_ERROR");
        if (i == 0 || field(d, "message") != NULL) /* the original whole, when the letter fits with it */
            assert_string_equal(field(d, "message"), g);
        else
            assert_true(json_is_true(json_object_get(d->json, "message_truncated")));
        if (i == 2) /* an original of max_payload bytes cannot fit with the letter's fields */
            assert_null(field(d, "message"));
        assert_true((size_t)d->len <= 65536);
        bw_test_msg_destroy(d);
        free(g);
    }
}

/* ---- the README's permission block ---- */

/* As in the README (Security): the scheduler submits and cancels, the worker answers; a client allowed
   only to submit cannot cancel. */
static const char permissions_conf[] =
    "authorization {\n"
    "  users = [\n"
    "    {user: scheduler, password: sched-pw, permissions: {\n"
    "      publish: [\"caf.exec.assign.v1\", \"caf.exec.cancel.v1\"]\n"
    "      subscribe: [\"caf.exec.result.v1\", \"caf.exec.assign.v1.ack\", \"caf.status.heartbeat.v1\",\n"
    "                  \"caf.deadletter.v1\", \"caf.human.request.v1\"]\n"
    "    }}\n"
    "    {user: worker, password: worker-pw, permissions: {\n"
    "      publish: [\"caf.exec.result.v1\", \"caf.exec.assign.v1.ack\", \"caf.status.heartbeat.v1\",\n"
    "                \"caf.deadletter.v1\", \"caf.human.request.v1\"]\n"
    "      subscribe: [\"caf.exec.assign.v1\", \"caf.exec.cancel.v1\", \"caf.human.decision.v1\",\n"
    "                  \"caf.human.decision.v1.*\", \"caf.human.list.v1\"]\n"
    "      allow_responses: true\n"
    "    }}\n"
    "    {user: submitter, password: subm-pw, permissions: {\n"
    "      publish: [\"caf.exec.assign.v1\"]\n"
    "      subscribe: {deny: \">\"}\n"
    "    }}\n"
    "  ]\n"
    "}\n";

static bw_test_client_t *submitter;

static int setup_permissions(void **state)
{
    char url[128], worker_url[160];
    memset(&H, 0, sizeof H);
    H.nats.conf = permissions_conf;
    if (bw_test_nats_start(&H.nats) != 0)
        return -1;
    snprintf(url, sizeof url, "nats://scheduler:sched-pw@127.0.0.1:%d", H.nats.port);
    if ((H.client = bw_test_client_create(url)) == NULL)
        return -1;
    static const char *const subjects[] = {BW_H_RESULTS, BW_H_HEARTBEAT, BW_H_DLQ, BW_H_ACK, NULL};
    for (int i = 0; subjects[i] != NULL; i++)
        if (bw_test_client_collect(H.client, subjects[i]) != 0)
            return -1;
    snprintf(url, sizeof url, "nats://submitter:subm-pw@127.0.0.1:%d", H.nats.port);
    if ((submitter = bw_test_client_create(url)) == NULL)
        return -1;
    snprintf(worker_url, sizeof worker_url, "NATS_URL=nats://worker:worker-pw@127.0.0.1:%d", H.nats.port);
    const char *const env[] = {worker_url, "CAF_ACK_ENABLED=true", NULL};
    return bw_harness_add_worker(&H, env) < 0 ? -1 : 0;
}

static int teardown_permissions(void **state)
{
    bw_test_client_destroy(submitter);
    submitter = NULL;
    return bw_harness_finish(&H, 0);
}

static void test_permission_block(void **state)
{
    /* the worker publishes results, acks, heartbeats and dead letters under it */
    submit_as("acme", "perm-echo", "echo", "{\"ok\":true}", 5000);
    bw_test_msg_t *r = result_of("acme", "perm-echo", 0, 10000);
    assert_non_null(r);
    assert_string_equal(field(r, "status"), "success");
    bw_test_msg_destroy(r);
    assert_int_equal(wait_msgs(BW_H_ACK, "acme", "perm-echo", 1, 5000), 1);
    assert_true(bw_test_client_wait_count(H.client, BW_H_HEARTBEAT, 2, 5000) >= 2);
    assert_int_equal(bw_harness_publish_raw(&H, "{\"assignment_id\":\"perm-dead\"", NULL), 0);
    assert_true(bw_test_client_wait_count(H.client, BW_H_DLQ, 1, 5000) >= 1);
    /* a client that may only submit cannot cancel: its cancel is refused by the server */
    submit_as("acme", "perm-victim", "sleep", "{\"ms\":5000}", 60000);
    submit_as("acme", "perm-sentinel", "sleep", "{\"ms\":60000}", 120000);
    wait_accepted("acme", "perm-victim");
    wait_accepted("acme", "perm-sentinel");
    int64_t t0 = bw_test_now_ms();
    assert_int_equal(
        bw_test_client_publish(submitter, BW_H_CANCEL, "{\"assignment_id\":\"perm-victim\"}", NULL), 0);
    /* the submitter's cancel was handled by the server (flushed) before the scheduler's */
    cancel_as("perm-sentinel", NULL, NULL);
    r = result_of("acme", "perm-sentinel", 0, 10000);
    assert_non_null(r);
    assert_string_equal(field(r, "status"), "cancelled");
    bw_test_msg_destroy(r);
    if (bw_test_now_ms() - t0 < 4000)
        assert_int_equal(count_msgs(BW_H_RESULTS, NULL, "perm-victim", 0, NULL), 0);
    r = result_of("acme", "perm-victim", 0, 20000);
    assert_non_null(r);
    assert_string_equal(field(r, "status"), "success");
    bw_test_msg_destroy(r);
    /* and the worker was refused nothing */
    char *log = bw_test_read_file(H.workers[0].log_path, NULL);
    assert_non_null(log);
    assert_null(strstr(log, "permission violation"));
    assert_null(strstr(log, "subscribe failed"));
    free(log);
    assert_true(bw_harness_metric(&H, "beamline_worker_nats_permission_errors_total") == 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_id_other_tenant_is_another_job),
        cmocka_unit_test(test_in_flight_duplicate_does_not_block_other_tenant),
        cmocka_unit_test(test_concatenations_do_not_collide),
        cmocka_unit_test(test_cancel_of_other_tenant_leaves_job_running),
        cmocka_unit_test(test_cancel_of_own_tenant_stops_job),
        cmocka_unit_test(test_cancel_without_tenant_stops_every_job_with_the_id),
        cmocka_unit_test(test_unreadable_json_is_answered_and_dead_lettered),
        cmocka_unit_test(test_default_max_payload_edge),
    };
    int rc = cmocka_run_group_tests(tests, setup, teardown);
    const struct CMUnitTest small_tests[] = {cmocka_unit_test(test_size_sweep_small_max_payload),
                                             cmocka_unit_test(test_dead_letter_of_large_original)};
    rc |= cmocka_run_group_tests_name("max_payload 64 KiB", small_tests, setup_small, teardown);
    const struct CMUnitTest perm_tests[] = {cmocka_unit_test(test_permission_block)};
    rc |= cmocka_run_group_tests_name("permissions", perm_tests, setup_permissions, teardown_permissions);
    nats_CloseAndWait(2000);
    return rc;
}
