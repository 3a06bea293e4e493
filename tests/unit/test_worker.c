/*
 * Unit tests for core/worker.c and core/job.c on a private libuv loop with a capturing publish sink:
 * one result per assignment, admission order, synchronous completions that must not recurse, expiry
 * in the queue, cancel_all, the dead-letter / invalid paths, tenants (the same id from two tenants is two
 * jobs, for duplicates and cancels) and the result size counted with the message's headers.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/config.h"
#include "core/deadletter.h"
#include "core/worker.h"
#include "obs/log.h"
#include "util/clock.h"

typedef struct sink {
    int results, dead, acks, heartbeats;
    int by_status[4];
    char order[256]; /* assignment ids in result order, comma-separated */
    json_t *last;
    char *last_raw;             /* the last result's bytes */
    size_t last_len, last_wire; /* its length, and with its headers */
    json_t *last_dead;
} sink_t;

static void on_publish(void *ud, const bw_outmsg_t *m)
{
    sink_t *s = ud;
    static const char *const names[] = {"success", "error", "timeout", "cancelled"};
    if (m->kind == BW_OUT_DEAD_LETTER) {
        s->dead++;
        json_decref(s->last_dead);
        s->last_dead = json_loadb(m->data, m->len, 0, NULL);
    }
    if (m->kind == BW_OUT_ACK)
        s->acks++;
    if (m->kind == BW_OUT_HEARTBEAT)
        s->heartbeats++;
    if (m->kind != BW_OUT_RESULT)
        return;
    s->results++;
    json_decref(s->last);
    s->last = json_loadb(m->data, m->len, 0, NULL);
    free(s->last_raw);
    s->last_raw = strndup(m->data, m->len);
    s->last_len = m->len;
    s->last_wire = m->len + bw_outmsg_header_bytes(m);
    const char *id = json_string_value(json_object_get(s->last, "assignment_id"));
    if (strlen(s->order) + strlen(id) + 2 < sizeof s->order)
        strcat(strcat(s->order, id), ",");
    const char *st = json_string_value(json_object_get(s->last, "status"));
    for (int i = 0; i < 4; i++)
        if (strcmp(st, names[i]) == 0)
            s->by_status[i]++;
}

typedef struct fixture {
    uv_loop_t loop;
    bw_config_t cfg;
    bw_worker_t *w;
    bw_deadletters_t *dead;
    sink_t sink;
    size_t max_payload; /* what the "transport" takes, 0 = no limit */
} fixture_t;

static size_t fixture_max_payload(void *ud)
{
    return ((fixture_t *)((char *)ud - offsetof(fixture_t, sink)))->max_payload;
}

static fixture_t *fixture_create_max(const char *max, const char *queue, size_t max_payload)
{
    fixture_t *f = calloc(1, sizeof *f);
    char err[256];
    setenv("WORKER_MAX_CONCURRENCY", max, 1);
    setenv("WORKER_QUEUE_MAX", queue, 1);
    setenv("WORKER_TYPE_CONCURRENCY", "sleep=0", 1); /* the sleeps below hold the shared slots */
    setenv("LOG_LEVEL", "error", 1);
    assert_int_equal(bw_config_load(&f->cfg, err, sizeof err), 0);
    bw_log_setup(BW_LOG_ERROR, true, "unit");
    uv_loop_init(&f->loop);
    f->dead = bw_deadletters_create(&f->cfg, NULL, on_publish, &f->sink);
    f->max_payload = max_payload;
    bw_worker_opts_t o = {.publish = on_publish,
                          .publish_ud = &f->sink,
                          .max_payload = fixture_max_payload,
                          .heartbeats = false,
                          .dead = f->dead};
    f->w = bw_worker_create(&f->loop, &f->cfg, &o);
    return f;
}

static fixture_t *fixture_create(const char *max, const char *queue)
{
    return fixture_create_max(max, queue, 0);
}

static void fixture_destroy(fixture_t *f)
{
    bw_worker_destroy(f->w);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    bw_deadletters_destroy(f->dead);
    bw_config_dispose(&f->cfg);
    json_decref(f->sink.last);
    json_decref(f->sink.last_dead);
    free(f->sink.last_raw);
    free(f);
}

static void submit_as(fixture_t *f, const char *tenant, const char *id, const char *type, const char *payload,
                      int deadline)
{
    size_t cap = strlen(payload) + 512;
    char *buf = malloc(cap);
    snprintf(buf, cap,
             "{\"assignment_id\":\"%s\",\"tenant_id\":\"%s\",\"job\":{\"type\":\"%s\",\"payload\":%s},"
             "\"options\":{\"deadline_ms\":%d}}",
             id, tenant, type, payload, deadline);
    bw_worker_accept(f->w, bw_inbound_assign("s", buf, strlen(buf), NULL, NULL, 60000));
    free(buf);
}

static void submit(fixture_t *f, const char *id, const char *type, const char *payload, int deadline)
{
    submit_as(f, "t", id, type, payload, deadline);
}

static const char *hdr_from_json(void *ud, const char *name)
{
    return json_string_value(json_object_get(ud, name));
}

/* A cancel request as the bus hands it over: its payload, and its tenant_id header when header != NULL. */
static void cancel_req(fixture_t *f, const char *payload, const char *header)
{
    json_t *h = json_pack("{ss*}", "tenant_id", header);
    bw_headers_t hd = {hdr_from_json, h};
    bw_inbound_t *in = bw_inbound_cancel(payload, strlen(payload), &hd);
    assert_non_null(in);
    bw_worker_accept(f->w, in);
    json_decref(h);
}

static void test_many_synchronous_jobs_do_not_recurse(void **state)
{
    /* 20000 echo jobs queued behind one slot, all completing inside start(): with a recursive pump this
       would need 20000 nested frames. */
    fixture_t *f = fixture_create("1", "100000");
    char id[32];
    submit(f, "blocker", "sleep", "{\"ms\":20}", 10000);
    for (int i = 0; i < 20000; i++) {
        snprintf(id, sizeof id, "e%d", i);
        submit(f, id, "echo", "{}", 10000);
    }
    assert_int_equal(f->sink.results, 0);
    assert_int_equal(bw_worker_active(f->w), 20001);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(f->sink.results, 20001);
    assert_int_equal(f->sink.by_status[0], 20001);
    assert_int_equal(bw_worker_active(f->w), 0);
    fixture_destroy(f);
}

static void test_fifo_and_limit(void **state)
{
    fixture_t *f = fixture_create("2", "10");
    submit(f, "a", "sleep", "{\"ms\":30}", 10000);
    submit(f, "b", "sleep", "{\"ms\":30}", 10000);
    submit(f, "c", "echo", "{\"n\":3}", 10000);
    bw_worker_stats_t st;
    bw_worker_get_stats(f->w, &st);
    assert_int_equal(st.running, 2);
    assert_int_equal(st.queued, 1);
    uv_run(&f->loop, UV_RUN_ONCE);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(f->sink.results, 3);
    /* c waited for a's slot and then completed at once, before b's timer callback ran */
    assert_string_equal(f->sink.order, "a,c,b,");
    fixture_destroy(f);
}

static void test_queue_full_and_expiry(void **state)
{
    fixture_t *f = fixture_create("1", "1");
    submit(f, "run", "sleep", "{\"ms\":200}", 10000);
    submit(f, "wait", "sleep", "{\"ms\":1}", 50);
    submit(f, "over", "echo", "{}", 10000);
    assert_int_equal(f->sink.results, 1);
    assert_string_equal(json_string_value(json_object_get(f->sink.last, "error_code")), "QUEUE_FULL");
    uint64_t t0 = bw_mono_ms();
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(f->sink.results, 3);
    assert_int_equal(f->sink.by_status[2], 1); /* "wait" expired in the queue */
    assert_int_equal(f->sink.by_status[0], 1);
    assert_true(bw_mono_ms() - t0 >= 190);
    fixture_destroy(f);
}

static void test_cancel_all_and_duplicates(void **state)
{
    fixture_t *f = fixture_create("2", "10");
    submit(f, "x1", "sleep", "{\"ms\":100000}", 200000);
    submit(f, "x2", "sleep", "{\"ms\":100000}", 200000);
    submit(f, "x3", "sleep", "{\"ms\":100000}", 200000);
    submit(f, "x1", "sleep", "{\"ms\":1}", 200000); /* in-flight duplicate: ignored */
    assert_int_equal(bw_worker_active(f->w), 3);
    bw_worker_cancel_all(f->w, "bye");
    assert_int_equal(f->sink.results, 3);
    assert_int_equal(f->sink.by_status[3], 3);
    assert_int_equal(bw_worker_active(f->w), 0);
    submit(f, "x2", "echo", "{}", 1000); /* finished duplicate: republished, not rerun */
    assert_int_equal(f->sink.results, 4);
    assert_string_equal(json_string_value(json_object_get(f->sink.last, "status")), "cancelled");
    bw_worker_stats_t st;
    bw_worker_get_stats(f->w, &st);
    assert_int_equal(st.duplicates, 2);
    fixture_destroy(f);
}

static void test_dead_and_invalid(void **state)
{
    fixture_t *f = fixture_create("2", "10");
    const char *junk = "{nope";
    bw_worker_accept(f->w, bw_inbound_assign("s", junk, strlen(junk), NULL, NULL, 60000));
    assert_int_equal(f->sink.dead, 1);
    assert_int_equal(f->sink.results, 0);
    const char *invalid = "{\"assignment_id\":\"i\",\"tenant_id\":\"t\",\"job\":{}}";
    bw_worker_accept(f->w, bw_inbound_assign("s", invalid, strlen(invalid), NULL, NULL, 60000));
    assert_int_equal(f->sink.results, 1);
    assert_string_equal(json_string_value(json_object_get(f->sink.last, "error_code")), "INVALID_ASSIGNMENT");
    /* cancel requests without an id are dropped at decode */
    assert_null(bw_inbound_cancel("{}", 2, NULL));
    assert_null(bw_inbound_cancel("[", 1, NULL));
    fixture_destroy(f);
}

/* The same assignment id from two tenants is two jobs: each runs and gets its own result; a duplicate of
   one tenant's finished job gets that tenant's remembered result, byte for byte; an in-flight job of one
   tenant does not hold back the other's. */
static void test_tenants_are_separate_jobs(void **state)
{
    fixture_t *f = fixture_create("4", "10");
    submit_as(f, "A", "X", "echo", "{\"secret\":\"A-only\"}", 10000);
    assert_int_equal(f->sink.results, 1);
    char *a_first = strdup(f->sink.last_raw);
    submit_as(f, "B", "X", "echo", "{\"mine\":\"B\"}", 10000);
    assert_int_equal(f->sink.results, 2);
    assert_string_equal(json_string_value(json_object_get(json_object_get(f->sink.last, "output"), "mine")),
                        "B");
    assert_null(strstr(f->sink.last_raw, "A-only"));
    submit_as(f, "A", "X", "echo", "{\"other\":1}", 10000); /* A's duplicate: remembered */
    assert_int_equal(f->sink.results, 3);
    assert_string_equal(f->sink.last_raw, a_first);
    /* concatenations that would collide: tenant "a" + id "bX", tenant "ab" + id "X" */
    submit_as(f, "a", "bX", "echo", "{\"who\":\"a\"}", 10000);
    submit_as(f, "ab", "X", "echo", "{\"who\":\"ab\"}", 10000);
    assert_int_equal(f->sink.results, 5);
    assert_string_equal(json_string_value(json_object_get(json_object_get(f->sink.last, "output"), "who")),
                        "ab");
    /* in flight: A's sleep with id Y does not make B's Y a duplicate */
    submit_as(f, "A", "Y", "sleep", "{\"ms\":100000}", 200000);
    submit_as(f, "B", "Y", "echo", "{\"b\":true}", 10000);
    assert_int_equal(f->sink.results, 6);
    assert_string_equal(json_string_value(json_object_get(f->sink.last, "tenant_id")), "B");
    submit_as(f, "A", "Y", "echo", "{}", 10000); /* A's in-flight duplicate: ignored */
    assert_int_equal(f->sink.results, 6);
    assert_int_equal(bw_worker_active(f->w), 1);
    bw_worker_stats_t st;
    bw_worker_get_stats(f->w, &st);
    assert_int_equal(st.duplicates, 2);
    free(a_first);
    fixture_destroy(f);
}

/* A cancel naming a tenant (payload, else header) stops that tenant's job only; one naming none stops every
   job with the id. */
static void test_cancel_by_tenant(void **state)
{
    fixture_t *f = fixture_create("8", "10");
    submit_as(f, "A", "C", "sleep", "{\"ms\":100000}", 200000);
    submit_as(f, "B", "C", "sleep", "{\"ms\":100000}", 200000);
    submit_as(f, "A", "D", "sleep", "{\"ms\":100000}", 200000);
    cancel_req(f, "{\"assignment_id\":\"C\",\"tenant_id\":\"Z\"}", NULL);
    cancel_req(f, "{\"assignment_id\":\"C\"}", "Z");
    cancel_req(f, "{\"assignment_id\":\"D\",\"tenant_id\":\"B\"}", NULL);
    cancel_req(f, "{\"assignment_id\":\"D\"}", "B");
    cancel_req(f, "{\"assignment_id\":\"D\",\"tenant_id\":\"B\"}", "A"); /* the payload wins */
    assert_int_equal(f->sink.results, 0);
    assert_int_equal(bw_worker_active(f->w), 3);
    cancel_req(f, "{\"assignment_id\":\"D\"}", "A");
    assert_int_equal(f->sink.results, 1);
    assert_string_equal(json_string_value(json_object_get(f->sink.last, "assignment_id")), "D");
    assert_string_equal(json_string_value(json_object_get(f->sink.last, "status")), "cancelled");
    cancel_req(f, "{\"assignment_id\":\"C\",\"tenant_id\":\"B\",\"reason\":\"b only\"}", NULL);
    assert_int_equal(f->sink.results, 2);
    assert_string_equal(json_string_value(json_object_get(f->sink.last, "tenant_id")), "B");
    assert_string_equal(json_string_value(json_object_get(f->sink.last, "error_message")), "b only");
    submit_as(f, "B", "C", "sleep", "{\"ms\":100000}", 200000); /* B's id again: remembered, not run */
    submit_as(f, "C1", "C", "sleep", "{\"ms\":100000}", 200000);
    submit_as(f, "C2", "C", "sleep", "{\"ms\":100000}", 200000);
    assert_int_equal(f->sink.results, 3);
    assert_int_equal(bw_worker_active(f->w), 3);
    cancel_req(f, "{\"assignment_id\":\"C\"}", NULL); /* no tenant: A's, C1's and C2's */
    assert_int_equal(f->sink.results, 6);
    assert_int_equal(f->sink.by_status[3], 6);
    assert_int_equal(bw_worker_active(f->w), 0);
    /* tenants and ids no assignment can have are refused at decode */
    char big[400];
    snprintf(big, sizeof big, "{\"assignment_id\":\"C\",\"tenant_id\":\"%0257d\"}", 0);
    assert_null(bw_inbound_cancel(big, strlen(big), NULL));
    snprintf(big, sizeof big, "{\"assignment_id\":\"%0257d\"}", 0);
    assert_null(bw_inbound_cancel(big, strlen(big), NULL));
    fixture_destroy(f);
}

/* The result and its headers must fit max_payload together: every echo gets exactly one result, which fits,
   a success while it can and RESULT_TOO_LARGE after; handlers are told the room left for the body. */
static void test_result_size_counts_headers(void **state)
{
    const size_t max = 4096;
    fixture_t *f = fixture_create_max("4", "10", max);
    bw_outmsg_t m = {.hkeys = {"tenant_id", "version", "Nats-Msg-Id", NULL},
                     .hvals = {"acme", "1", "result-x"}};
    /* NATS/1.0\r\n tenant_id: acme\r\n version: 1\r\n Nats-Msg-Id: result-x\r\n \r\n */
    assert_int_equal(bw_outmsg_header_bytes(&m), 10 + 17 + 12 + 23 + 2);
    bw_outmsg_t none = {0};
    assert_int_equal(bw_outmsg_header_bytes(&none), 0);
    char *payload = malloc(max + 64), id[32];
    int successes = 0, too_large = 0, last_fit = -1, first_over = -1;
    size_t fit_floor = 0; /* the last success's wire size with a one-digit latency_ms */
    for (int n = 3600; n < 4100; n++) {
        snprintf(payload, max + 64, "{\"b\":\"%0*d\"}", n, 0);
        snprintf(id, sizeof id, "size-%d", n);
        int before = f->sink.results;
        submit_as(f, "acme", id, "echo", payload, 10000);
        assert_int_equal(f->sink.results, before + 1);
        if (f->sink.last_wire > max)
            fail_msg("payload %d: %zu bytes on the wire, max_payload %zu", n, f->sink.last_wire, max);
        const char *st = json_string_value(json_object_get(f->sink.last, "status"));
        char lat[32];
        int digits = snprintf(lat, sizeof lat, "%lld",
                              (long long)json_integer_value(json_object_get(f->sink.last, "latency_ms")));
        if (strcmp(st, "success") == 0) {
            successes++;
            last_fit = n;
            fit_floor = f->sink.last_wire - (size_t)(digits - 1);
        } else {
            assert_string_equal(json_string_value(json_object_get(f->sink.last, "error_code")),
                                "RESULT_TOO_LARGE");
            assert_non_null(
                strstr(json_string_value(json_object_get(f->sink.last, "error_message")), "max_payload"));
            too_large++;
            first_over = first_over < 0 ? n : first_over;
            /* refused only when even a one-digit latency would not have fitted */
            assert_true(last_fit < 0 || fit_floor + (size_t)(n - last_fit) > max);
        }
    }
    assert_true(successes > 0 && too_large > 0);
    assert_true(last_fit >= first_over - 1 && last_fit <= first_over + 3);
    assert_true(fit_floor >= max - 1); /* the edge is where the bytes run out, not before */
    free(payload);
    assert_int_equal(f->sink.dead, 0);
    fixture_destroy(f);
}

/* Valid JSON that jansson refuses, with readable ids: an INVALID_ASSIGNMENT result and a dead letter. */
static void test_unreadable_json_is_answered_and_dead_lettered(void **state)
{
    fixture_t *f = fixture_create("2", "10");
    const char *msg = "{\"assignment_id\":\"big-number\",\"tenant_id\":\"t\",\"job\":{\"type\":\"echo\","
                      "\"payload\":{\"n\":1e400}}}";
    bw_worker_accept(f->w, bw_inbound_assign("s", msg, strlen(msg), NULL, NULL, 60000));
    assert_int_equal(f->sink.results, 1);
    assert_int_equal(f->sink.dead, 1);
    assert_string_equal(json_string_value(json_object_get(f->sink.last, "error_code")), "INVALID_ASSIGNMENT");
    assert_string_equal(json_string_value(json_object_get(f->sink.last, "assignment_id")), "big-number");
    assert_string_equal(json_string_value(json_object_get(f->sink.last_dead, "reason")), "PARSE_ERROR");
    assert_string_equal(json_string_value(json_object_get(f->sink.last_dead, "assignment_id")), "big-number");
    /* its duplicate: the remembered answer, and the original kept again */
    bw_worker_accept(f->w, bw_inbound_assign("s", msg, strlen(msg), NULL, NULL, 60000));
    assert_int_equal(f->sink.results, 2);
    assert_int_equal(f->sink.dead, 2);
    fixture_destroy(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_many_synchronous_jobs_do_not_recurse),
        cmocka_unit_test(test_fifo_and_limit),
        cmocka_unit_test(test_queue_full_and_expiry),
        cmocka_unit_test(test_cancel_all_and_duplicates),
        cmocka_unit_test(test_dead_and_invalid),
        cmocka_unit_test(test_tenants_are_separate_jobs),
        cmocka_unit_test(test_cancel_by_tenant),
        cmocka_unit_test(test_result_size_counts_headers),
        cmocka_unit_test(test_unreadable_json_is_answered_and_dead_lettered),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
