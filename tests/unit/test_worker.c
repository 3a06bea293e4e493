/*
 * Unit tests for core/worker.c and core/job.c on a private libuv loop with a capturing publish sink:
 * one result per assignment, admission order, synchronous completions that must not recurse, expiry
 * in the queue, cancel_all, and the dead-letter / invalid paths.
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
} sink_t;

static void on_publish(void *ud, const bw_outmsg_t *m)
{
    sink_t *s = ud;
    static const char *const names[] = {"success", "error", "timeout", "cancelled"};
    if (m->kind == BW_OUT_DEAD_LETTER)
        s->dead++;
    if (m->kind == BW_OUT_ACK)
        s->acks++;
    if (m->kind == BW_OUT_HEARTBEAT)
        s->heartbeats++;
    if (m->kind != BW_OUT_RESULT)
        return;
    s->results++;
    json_decref(s->last);
    s->last = json_loadb(m->data, m->len, 0, NULL);
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
} fixture_t;

static fixture_t *fixture_create(const char *max, const char *queue)
{
    fixture_t *f = calloc(1, sizeof *f);
    char err[256];
    setenv("WORKER_MAX_CONCURRENCY", max, 1);
    setenv("WORKER_QUEUE_MAX", queue, 1);
    setenv("LOG_LEVEL", "error", 1);
    assert_int_equal(bw_config_load(&f->cfg, err, sizeof err), 0);
    bw_log_setup(BW_LOG_ERROR, true, "unit");
    uv_loop_init(&f->loop);
    f->dead = bw_deadletters_create(&f->cfg, NULL, on_publish, &f->sink);
    bw_worker_opts_t o = {.publish = on_publish, .publish_ud = &f->sink, .heartbeats = false, .dead = f->dead};
    f->w = bw_worker_create(&f->loop, &f->cfg, &o);
    return f;
}

static void fixture_destroy(fixture_t *f)
{
    bw_worker_destroy(f->w);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    bw_deadletters_destroy(f->dead);
    bw_config_dispose(&f->cfg);
    json_decref(f->sink.last);
    free(f);
}

static void submit(fixture_t *f, const char *id, const char *type, const char *payload, int deadline)
{
    char buf[512];
    snprintf(buf, sizeof buf,
             "{\"assignment_id\":\"%s\",\"tenant_id\":\"t\",\"job\":{\"type\":\"%s\",\"payload\":%s},"
             "\"options\":{\"deadline_ms\":%d}}",
             id, type, payload, deadline);
    bw_worker_accept(f->w, bw_inbound_assign("s", buf, strlen(buf), NULL, NULL, 60000));
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
    assert_null(bw_inbound_cancel("{}", 2));
    assert_null(bw_inbound_cancel("[", 1));
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
