/*
 * Integration: the health and metrics HTTP server (src/net/http.c, src/obs/metrics.c) of a real
 * worker on a real nats-server, spoken to over raw sockets (tests/support/http_client.c).
 * Every endpoint and its format (the Prometheus text exposition is validated strictly, and the
 * validator itself is shown to reject bad text); metrics moving as jobs run; readiness flipping
 * on NATS loss and on drain while liveness stays up; bad requests; answers while the loop holds a
 * long queue; and a start-up failure when HEALTH_BIND is taken. Waits poll with generous
 * deadlines; no fixed sleep is an assertion.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "http_client.h"
#include "prom_check.h"
#include "testutil.h"
#include "util/buf.h"

#define POLL_MS 20
#define ECHOES 20
#define SATURATE_JOBS 2000
#define SATURATE_SLEEP_MS 2000
#define SATURATE_MAX_MS 500

static bw_harness_t H;
static int port; /* the first worker's health server */

/* ---- fixture ------------------------------------------------------------------------------- */

static int start_with(const char *const *env)
{
    port = bw_harness_start_http(&H, env);
    return port > 0 ? 0 : -1;
}

static int setup_main(void **state)
{
    static const char *const env[] = {"WORKER_MAX_CONCURRENCY=2", "WORKER_TYPE_CONCURRENCY=sleep=0",
                                      "WORKER_ID=health-main", NULL};
    return start_with(env);
}

static int setup_plain(void **state)
{
    static const char *const env[] = {"WORKER_ID=health-nats", NULL};
    return start_with(env);
}

static int setup_drain(void **state)
{
    static const char *const env[] = {"WORKER_ID=health-drain", "SHUTDOWN_TIMEOUT_MS=5000", NULL};
    return start_with(env);
}

/* One slot and room for every job: the loop holds a queue of ~2000. A short shutdown timeout, so
   the teardown cancels them at once instead of waiting. */
static int setup_saturated(void **state)
{
    static const char *const env[] = {"WORKER_ID=health-busy",           "WORKER_MAX_CONCURRENCY=1",
                                      "WORKER_TYPE_CONCURRENCY=sleep=0", "WORKER_QUEUE_MAX=5000",
                                      "SHUTDOWN_TIMEOUT_MS=100",         NULL};
    return start_with(env);
}

static int teardown(void **state)
{
    return bw_harness_finish(&H, 0);
}

static void fail_with_log(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    for (int i = 0; i < H.nworkers; i++)
        bw_test_proc_dump_log(&H.workers[i]);
    fail_msg("%s", msg);
}

/* ---- HTTP helpers -------------------------------------------------------------------------- */

/* GET path, asserting the status; returns the body (caller frees). */
static char *get(const char *path, int want_status)
{
    int status = 0;
    char *body = NULL;
    if (bw_test_http(port, "GET", path, NULL, &status, &body, NULL) != 0)
        fail_with_log("GET %s: no parsable response", path);
    if (status != want_status)
        fail_with_log("GET %s: status %d, want %d; body: %s", path, status, want_status, body);
    return body;
}

static json_t *get_json(const char *path)
{
    json_error_t err;
    char *body = get(path, 200);
    json_t *j = json_loads(body, 0, &err);
    if (!json_is_object(j))
        fail_msg("GET %s: not a JSON object (%s): %s", path, err.text, body);
    free(body);
    return j;
}

/* Polls GET path until it answers want_status with a body starting with want_body; 0 then, -1 on
   timeout. */
static int poll_http(const char *path, int want_status, const char *want_body, int timeout_ms)
{
    int64_t deadline = bw_test_now_ms() + timeout_ms;
    do {
        int status = 0;
        char *body = NULL;
        int ok = bw_test_http(port, "GET", path, NULL, &status, &body, NULL) == 0 && status == want_status &&
                 strncmp(body, want_body, strlen(want_body)) == 0;
        free(body);
        if (ok)
            return 0;
        bw_test_sleep_ms(POLL_MS);
    } while (bw_test_now_ms() < deadline);
    return -1;
}

static const char *jstr(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static json_int_t jint(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    if (!json_is_integer(v))
        fail_msg("\"%s\" is not an integer", k);
    return json_integer_value(v);
}

static double must_metric(const char *text, const char *series)
{
    double v = bw_prom_value(text, series);
    if (isnan(v))
        fail_msg("metric %s is missing", series);
    return v;
}

/* GET /metrics: 200, the 0.0.4 content type, a valid exposition. Caller frees. */
static char *scrape(void)
{
    int status = 0;
    char *body = NULL, *hdrs = NULL, why[600];
    if (bw_test_http(port, "GET", "/metrics", NULL, &status, &body, &hdrs) != 0 || status != 200)
        fail_with_log("GET /metrics: status %d", status);
    char *ct = bw_test_http_header(hdrs, "Content-Type");
    if (ct == NULL || strncmp(ct, "text/plain; version=0.0.4", 25) != 0)
        fail_msg("GET /metrics: Content-Type %s", ct ? ct : "(none)");
    if (bw_prom_check(body, why, sizeof why) != 0)
        fail_msg("GET /metrics: invalid exposition: %s", why);
    free(ct);
    free(hdrs);
    return body;
}

/* Polls /metrics until series >= want; returns the last value seen. */
static double wait_metric_at_least(const char *series, double want, int timeout_ms)
{
    int64_t deadline = bw_test_now_ms() + timeout_ms;
    double v;
    for (;;) {
        char *m = scrape();
        v = must_metric(m, series);
        free(m);
        if (v >= want || bw_test_now_ms() >= deadline)
            return v;
        bw_test_sleep_ms(POLL_MS);
    }
}

/* ---- the validator itself ------------------------------------------------------------------ */

static void test_exposition_validator(void **state)
{
    static const char *const good =
        "# HELP a_total Things.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"\\\\\\n\"} "
        "3\na_total{x=\"2\"} 0\n"
        "# TYPE g gauge\ng -1.5e3\n"
        "# HELP h Durations.\n# TYPE h histogram\n"
        "h_bucket{t=\"a\",le=\"0.5\"} 1\nh_bucket{t=\"a\",le=\"1\"} 2\nh_bucket{t=\"a\",le=\"+Inf\"} 3\n"
        "h_sum{t=\"a\"} 4.25\nh_count{t=\"a\"} 3\n";
    static const char *const bads[] = {
        "a 1\n",                                           /* no TYPE */
        "# TYPE a counter\na 1",                           /* unterminated */
        "# TYPE a counter\n\na 1\n",                       /* empty line */
        "# TYPE a counter\na -1\n",                        /* negative counter */
        "# TYPE a gauge\na 0x10\n",                        /* not a decimal */
        "# TYPE a gauge\na  1\n",                          /* two spaces */
        "# TYPE a gauge\na 1 \n",                          /* trailing space */
        "# TYPE a gauge\na{x=1} 1\n",                      /* unquoted label */
        "# TYPE a gauge\na{1x=\"1\"} 1\n",                 /* bad label name */
        "# TYPE a gauge\na{x=\"\\t\"} 1\n",                /* bad escape */
        "# TYPE a gauge\na{x=\"1\",x=\"2\"} 1\n",          /* repeated label */
        "# TYPE a gauge\na{x=\"1\"} 1\na{x=\"1\"} 2\n",    /* duplicate */
        "# TYPE a-b gauge\na-b 1\n",                       /* bad name */
        "# TYPE a gauge\n# TYPE a gauge\na 1\n",           /* two TYPEs */
        "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na 2\n", /* not contiguous */
        "# TYPE a gauge\na 1\n# HELP a late\n",            /* HELP after samples */
        "# TYPE a gauge\n# random comment\na 1\n",         /* other comment */
        "# TYPE a thing\na 1\n",                           /* unknown type */
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",    /* no +Inf */
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n", /* count != +Inf */
        "# TYPE h histogram\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\n"
        "h_sum 1\nh_count 1\n",                                     /* le order */
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n", /* no _sum */
        "# TYPE h histogram\nh 1\n",                                /* bare sample */
        NULL,
    };
    char why[600];
    if (bw_prom_check(good, why, sizeof why) != 0)
        fail_msg("the good text was rejected: %s", why);
    for (int i = 0; bads[i] != NULL; i++)
        if (bw_prom_check(bads[i], why, sizeof why) == 0)
            fail_msg("bad text #%d was accepted: %s", i, bads[i]);
}

/* ---- every endpoint ------------------------------------------------------------------------ */

static void check_json_type(const char *path, const char *want)
{
    int status = 0;
    char *hdrs = NULL, *body = NULL;
    assert_int_equal(bw_test_http(port, "GET", path, NULL, &status, &body, &hdrs), 0);
    char *ct = bw_test_http_header(hdrs, "Content-Type");
    if (ct == NULL || strncmp(ct, want, strlen(want)) != 0)
        fail_msg("GET %s: Content-Type %s, want %s", path, ct ? ct : "(none)", want);
    free(ct);
    free(hdrs);
    free(body);
}

static void check_state_shape(json_t *s)
{
    assert_true(json_is_boolean(json_object_get(s, "ready")));
    assert_non_null(jstr(s, "readiness"));
    assert_true(json_is_boolean(json_object_get(s, "draining")));
    assert_true(json_is_number(json_object_get(s, "load")));
    assert_true(jint(s, "jobs_in_flight") >= 0);
    assert_true(jint(s, "jobs_queued") >= 0);
    assert_true(jint(s, "max_concurrency") >= 1);
    json_t *nats = json_object_get(s, "nats");
    assert_true(json_is_object(nats));
    assert_true(json_is_boolean(json_object_get(nats, "connected")));
    json_t *jobs = json_object_get(s, "jobs");
    static const char *const types[] = {"echo", "sleep", "other", NULL};
    static const char *const keys[] = {"received", "success", "error", "timeout", "cancelled", NULL};
    for (int t = 0; types[t] != NULL; t++) {
        json_t *jt = json_object_get(jobs, types[t]);
        if (!json_is_object(jt))
            fail_msg("/_state has no jobs.%s", types[t]);
        for (int k = 0; keys[k] != NULL; k++)
            assert_true(jint(jt, keys[k]) >= 0);
    }
}

static void test_endpoints(void **state)
{
    static const char *const alive[] = {"/_health", "/healthz", NULL};
    for (int i = 0; alive[i] != NULL; i++) {
        char *b = get(alive[i], 200);
        assert_string_equal(b, "OK\n");
        free(b);
    }
    if (poll_http("/readyz", 200, "READY", 5000) != 0)
        fail_with_log("/readyz never said READY");
    char *b = get("/readyz", 200);
    assert_string_equal(b, "READY\n");
    free(b);

    json_t *build = get_json("/_build");
    assert_true(jstr(build, "version") != NULL && *jstr(build, "version") != '\0');
    assert_true(jstr(build, "commit") != NULL && *jstr(build, "commit") != '\0');
    json_decref(build);
    check_json_type("/_build", "application/json");

    json_t *s = get_json("/_state");
    check_state_shape(s);
    assert_true(json_is_true(json_object_get(s, "ready")));
    assert_string_equal(jstr(s, "readiness"), "READY");
    assert_true(json_is_false(json_object_get(s, "draining")));
    assert_int_equal(jint(s, "max_concurrency"), 2);
    assert_string_equal(jstr(s, "worker_id"), "health-main");
    assert_true(json_is_true(json_object_get(json_object_get(s, "nats"), "connected")));
    json_decref(s);
    check_json_type("/_state", "application/json");

    char *m = scrape();
    assert_int_equal((int)must_metric(m, "beamline_worker_ready"), 1);
    assert_int_equal((int)must_metric(m, "beamline_worker_nats_connected"), 1);
    assert_int_equal((int)must_metric(m, "beamline_worker_max_concurrency"), 2);
    assert_int_equal((int)must_metric(m, "beamline_worker_draining"), 0);
    free(m);
}

/* ---- metrics moving as jobs run ------------------------------------------------------------ */

static json_t *must_result(const char *id, int wait_ms)
{
    json_t *r = bw_harness_result(&H, id, wait_ms);
    if (r == NULL)
        fail_with_log("no result for %s within %d ms", id, wait_ms);
    return r;
}

static void expect_status(const char *id, const char *status)
{
    json_t *r = must_result(id, 10000);
    if (strcmp(jstr(r, "status"), status) != 0)
        fail_msg("%s: status %s, want %s", id, jstr(r, "status"), status);
    json_decref(r);
}

/* Polls /_state until pred holds for it; fails after timeout_ms. */
static void wait_state(int (*pred)(json_t *s), const char *what, int timeout_ms)
{
    int64_t deadline = bw_test_now_ms() + timeout_ms;
    for (;;) {
        json_t *s = get_json("/_state");
        int ok = pred(s);
        json_decref(s);
        if (ok)
            return;
        if (bw_test_now_ms() >= deadline)
            fail_with_log("/_state never showed %s", what);
        bw_test_sleep_ms(POLL_MS);
    }
}

static int one_running(json_t *s)
{
    return jint(s, "jobs_in_flight") == 1;
}

static int both_slots_and_queue(json_t *s)
{
    return jint(s, "jobs_in_flight") == 2 && jint(s, "jobs_queued") >= 1 &&
           json_number_value(json_object_get(s, "load")) == 1.0;
}

static int idle(json_t *s)
{
    return jint(s, "jobs_in_flight") == 0 && jint(s, "jobs_queued") == 0;
}

/* The difference of one series between two scrapes. */
static double delta(const char *before, const char *after, const char *series)
{
    return must_metric(after, series) - must_metric(before, series);
}

#define JT(type, status) "beamline_worker_jobs_total{job_type=\"" type "\",status=\"" status "\"}"
#define RECEIVED(type) "beamline_worker_jobs_received_total{job_type=\"" type "\"}"
#define DURATIONS(type) "beamline_worker_job_duration_seconds_count{job_type=\"" type "\"}"
#define DLQ_PARSE "beamline_worker_dlq_entries_total{reason=\"PARSE_ERROR\"}"

/* Four 1.5 s sleeps on two slots: /metrics shows both gauges non-zero while they run, and zero
   once they are done. */
static void run_queued_sleeps(void)
{
    char id[32];
    for (int i = 0; i < 4; i++) {
        snprintf(id, sizeof id, "m-sleep-%d", i);
        assert_int_equal(bw_harness_submit(&H, id, "sleep", "{\"ms\":1500}", 30000), 0);
    }
    wait_state(both_slots_and_queue, "2 in flight, a queue and load 1.0", 5000);
    char *m = scrape();
    double running = must_metric(m, "beamline_worker_jobs_in_flight");
    double queued = must_metric(m, "beamline_worker_jobs_queued");
    free(m);
    if (!(running > 0 && queued > 0))
        fail_msg("/metrics shows %g in flight and %g queued while 4 sleeps run on 2 slots", running, queued);
    for (int i = 0; i < 4; i++) {
        snprintf(id, sizeof id, "m-sleep-%d", i);
        expect_status(id, "success");
    }
    wait_state(idle, "no job in flight or queued", 5000);
    m = scrape();
    assert_int_equal((int)must_metric(m, "beamline_worker_jobs_in_flight"), 0);
    assert_int_equal((int)must_metric(m, "beamline_worker_jobs_queued"), 0);
    free(m);
}

/* Echoes, an unknown type, a timeout, a cancel and four queued sleeps, each waited for. */
static void run_job_mix(void)
{
    char id[32];
    assert_int_equal(bw_harness_submit_many(&H, "m-echo", ECHOES, "echo"), 0);
    for (int i = 0; i < ECHOES; i++) {
        snprintf(id, sizeof id, "m-echo-%d", i);
        expect_status(id, "success");
    }
    assert_int_equal(bw_harness_submit(&H, "m-unknown", "no-such-type", "{}", 10000), 0);
    expect_status("m-unknown", "error");
    assert_int_equal(bw_harness_submit(&H, "m-timeout", "sleep", "{\"ms\":5000}", 300), 0);
    expect_status("m-timeout", "timeout");
    assert_int_equal(bw_harness_submit(&H, "m-cancel", "sleep", "{\"ms\":30000}", 60000), 0);
    wait_state(one_running, "the job to cancel running", 5000);
    assert_int_equal(bw_harness_cancel(&H, "m-cancel", "test"), 0);
    expect_status("m-cancel", "cancelled");
    wait_state(idle, "no job in flight or queued", 5000);
    run_queued_sleeps();
}

static void check_job_counters(const char *before, const char *after)
{
    assert_int_equal((int)delta(before, after, RECEIVED("echo")), ECHOES);
    assert_int_equal((int)delta(before, after, JT("echo", "success")), ECHOES);
    assert_int_equal((int)delta(before, after, JT("echo", "error")), 0);
    assert_int_equal((int)delta(before, after, RECEIVED("other")), 1);
    assert_int_equal((int)delta(before, after, JT("other", "error")), 1);
    assert_int_equal((int)delta(before, after, RECEIVED("sleep")), 6);
    assert_int_equal((int)delta(before, after, JT("sleep", "timeout")), 1);
    assert_int_equal((int)delta(before, after, JT("sleep", "cancelled")), 1);
    assert_int_equal((int)delta(before, after, JT("sleep", "success")), 4);
    assert_int_equal((int)delta(before, after, DURATIONS("echo")), ECHOES);
    assert_int_equal((int)delta(before, after, DURATIONS("sleep")), 6);
    assert_int_equal((int)delta(before, after, DURATIONS("other")), 1);
    assert_true(must_metric(after, "beamline_worker_job_duration_seconds_sum{job_type=\"sleep\"}") >= 6.0);
}

/* /_state counts the same jobs as /metrics. */
static void check_state_agrees(json_t *state0, const char *after)
{
    json_t *state1 = get_json("/_state");
    json_t *e0 = json_object_get(json_object_get(state0, "jobs"), "echo");
    json_t *e1 = json_object_get(json_object_get(state1, "jobs"), "echo");
    assert_int_equal(jint(e1, "received") - jint(e0, "received"), ECHOES);
    assert_int_equal(jint(e1, "success") - jint(e0, "success"), ECHOES);
    json_t *s1 = json_object_get(json_object_get(state1, "jobs"), "sleep");
    assert_int_equal(jint(s1, "received"), (json_int_t)must_metric(after, RECEIVED("sleep")));
    assert_int_equal(jint(s1, "cancelled"), (json_int_t)must_metric(after, JT("sleep", "cancelled")));
    json_decref(state1);
}

/* Heartbeats keep counting; garbage on the assign subject is exactly one PARSE_ERROR dead letter. */
static void check_heartbeats_and_dead_letters(const char *after)
{
    double hb = must_metric(after, "beamline_worker_heartbeats_sent_total");
    if (wait_metric_at_least("beamline_worker_heartbeats_sent_total", hb + 1, 5000) < hb + 1)
        fail_with_log("heartbeats_sent_total did not grow");
    double dlq = must_metric(after, DLQ_PARSE);
    int dl_msgs = bw_test_client_count(H.client, BW_H_DLQ);
    assert_int_equal(bw_harness_publish_raw(&H, "this is { not json", NULL), 0);
    if (bw_test_client_wait_count(H.client, BW_H_DLQ, dl_msgs + 1, 5000) < dl_msgs + 1)
        fail_with_log("no dead letter published for garbage");
    double dlq2 = wait_metric_at_least(DLQ_PARSE, dlq + 1, 5000);
    char *last = scrape();
    double now = must_metric(last, DLQ_PARSE);
    free(last);
    if (dlq2 != dlq + 1 || now != dlq + 1)
        fail_with_log("dlq_entries_total{reason=\"PARSE_ERROR\"} went from %g to %g, want +1", dlq, now);
}

static void check_process_and_build(void)
{
    char *m = scrape(), series[256];
    assert_true(must_metric(m, "process_resident_memory_bytes") > 0);
    assert_true(must_metric(m, "process_open_fds") > 0);
    json_t *build = get_json("/_build");
    snprintf(series, sizeof series, "beamline_worker_build_info{version=\"%s\",commit=\"%s\"}",
             jstr(build, "version"), jstr(build, "commit"));
    assert_int_equal((int)must_metric(m, series), 1);
    json_decref(build);
    free(m);
}

static void test_metrics_move_with_jobs(void **state)
{
    char *before = scrape();
    json_t *state0 = get_json("/_state");
    run_job_mix();
    char *after = scrape();
    check_job_counters(before, after);
    check_state_agrees(state0, after);
    check_heartbeats_and_dead_letters(after);
    check_process_and_build();
    json_decref(state0);
    free(before);
    free(after);
}

/* ---- bad requests -------------------------------------------------------------------------- */

static void still_answers(const char *after_what)
{
    int status = 0;
    char *body = NULL;
    if (bw_test_http(port, "GET", "/healthz", NULL, &status, &body, NULL) != 0 || status != 200)
        fail_with_log("the server did not answer /healthz after %s (status %d)", after_what, status);
    free(body);
}

static void expect_status_of(const char *method, const char *path, int want, char **headers)
{
    int status = 0;
    char *body = NULL;
    if (bw_test_http(port, method, path, NULL, &status, &body, headers) != 0)
        fail_with_log("%s %s: no parsable response", method, path);
    if (status != want)
        fail_msg("%s %s: status %d, want %d", method, path, status, want);
    free(body);
}

/* Sends a request whose line and headers (through the blank line) are exactly len bytes. */
static void expect_head_of(size_t len, const char *want)
{
    static const char pre[] = "GET /healthz HTTP/1.1\r\nConnection: close\r\nX-Pad: ", post[] = "\r\n\r\n";
    char *req = malloc(len + 1), *resp = NULL;
    size_t pad = len - (sizeof pre - 1) - (sizeof post - 1);
    memcpy(req, pre, sizeof pre - 1);
    memset(req + sizeof pre - 1, 'p', pad);
    memcpy(req + sizeof pre - 1 + pad, post, sizeof post);
    assert_int_equal(strlen(req), len);
    int n = bw_test_http_raw(port, req, len, &resp);
    free(req);
    if (n <= 0 || strncmp(resp, want, strlen(want)) != 0)
        fail_with_log("a %zu-byte request head got %.40s, want %s", len, n > 0 ? resp : "(nothing)", want);
    free(resp);
}

static void test_bad_requests(void **state)
{
    char *hdrs = NULL, *body = NULL;
    int status = 0;

    expect_status_of("GET", "/no-such-path", 404, NULL);
    expect_status_of("GET", "/metrics/extra", 404, NULL);
    expect_status_of("POST", "/metrics", 405, &hdrs);
    char *allow = bw_test_http_header(hdrs, "Allow");
    if (allow == NULL || strstr(allow, "GET") == NULL)
        fail_msg("405 without an Allow header naming GET (Allow: %s)", allow ? allow : "(none)");
    free(allow);
    free(hdrs);
    expect_status_of("DELETE", "/healthz", 405, NULL);

    /* HEAD: the status and headers, no body (the client reads to EOF to see one) */
    assert_int_equal(bw_test_http(port, "HEAD", "/healthz", NULL, &status, &body, NULL), 0);
    assert_int_equal(status, 200);
    assert_string_equal(body, "");
    free(body);

    /* 100 KB of header: refused with 4xx (431 expected), and the server is fine afterwards */
    size_t big = 100 * 1024;
    char *extra = malloc(big + 16);
    memcpy(extra, "X-Big: ", 7);
    memset(extra + 7, 'a', big);
    memcpy(extra + 7 + big, "\r\n", 3);
    int rc = bw_test_http(port, "GET", "/healthz", extra, &status, &body, NULL);
    free(extra);
    if (rc != 0)
        fail_with_log("a 100 KB header got no HTTP response");
    print_message("100 KB header -> %d\n", status);
    if (status < 400 || status > 499)
        fail_msg("a 100 KB header got status %d, want 4xx (431)", status);
    if (status != 431)
        print_error("note: a 100 KB header got %d, not 431\n", status);
    free(body);
    still_answers("a 100 KB header");
    expect_head_of(32 * 1024, "HTTP/1.1 200");     /* at the limit: answered */
    expect_head_of(32 * 1024 + 1, "HTTP/1.1 431"); /* one byte past it */

    /* a garbage request line: 400 or the connection closed, then business as usual */
    char *resp = NULL;
    static const char garbage[] = "BLAH\r\n\r\n";
    int n = bw_test_http_raw(port, garbage, sizeof garbage - 1, &resp);
    if (n < 0)
        fail_with_log("a garbage request line neither got an answer nor a close within 5 s");
    if (n > 0 && strncmp(resp, "HTTP/1.1 400", 12) != 0 && strncmp(resp, "HTTP/1.0 400", 12) != 0)
        fail_msg("a garbage request line got: %.80s", resp);
    print_message("garbage request line -> %s\n", n > 0 ? "400" : "closed");
    free(resp);
    still_answers("a garbage request line");
}

static int count_of(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p++)
        n++;
    return n;
}

/* Scrapers and probes keep their connection: two pipelined requests, two answers on one socket. */
static void test_keep_alive(void **state)
{
    static const char two[] = "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
                              "GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    char *resp = NULL;
    assert_true(bw_test_http_raw(port, two, sizeof two - 1, &resp) > 0);
    assert_int_equal(count_of(resp, "HTTP/1.1 200"), 2);
    assert_non_null(strstr(resp, "READY"));
    free(resp);
}

/* ---- readiness on NATS loss ---------------------------------------------------------------- */

static void test_readiness_on_nats_loss(void **state)
{
    int nats_port = H.nats.port, status = 0;
    char *body = NULL;
    if (poll_http("/readyz", 200, "READY", 5000) != 0)
        fail_with_log("/readyz never said READY");
    bw_test_nats_stop(&H.nats, 1);
    if (poll_http("/readyz", 503, "NOT_CONNECTED\n", 5000) != 0)
        fail_with_log("/readyz did not turn 503 NOT_CONNECTED within 5 s of losing NATS");
    assert_int_equal(bw_test_http(port, "GET", "/healthz", NULL, &status, &body, NULL), 0);
    assert_int_equal(status, 200);
    free(body);
    char *m = scrape();
    assert_int_equal((int)must_metric(m, "beamline_worker_nats_connected"), 0);
    assert_int_equal((int)must_metric(m, "beamline_worker_ready"), 0);
    free(m);
    json_t *s = get_json("/_state");
    assert_true(json_is_false(json_object_get(s, "ready")));
    assert_string_equal(jstr(s, "readiness"), "NOT_CONNECTED");
    assert_true(json_is_false(json_object_get(json_object_get(s, "nats"), "connected")));
    json_decref(s);

    assert_int_equal(bw_test_nats_start_on(&H.nats, nats_port), 0);
    if (poll_http("/readyz", 200, "READY\n", 10000) != 0)
        fail_with_log("/readyz did not turn 200 READY within 10 s of the server's restart");
    m = scrape();
    assert_true(must_metric(m, "beamline_worker_nats_reconnects_total") >= 1);
    assert_true(must_metric(m, "beamline_worker_nats_disconnects_total") >= 1);
    assert_int_equal((int)must_metric(m, "beamline_worker_nats_connected"), 1);
    free(m);
}

/* ---- readiness on drain -------------------------------------------------------------------- */

static void test_readiness_on_drain(void **state)
{
    int status = 0, code = -1;
    char *body = NULL;
    if (poll_http("/readyz", 200, "READY", 5000) != 0)
        fail_with_log("/readyz never said READY");
    assert_int_equal(bw_harness_submit(&H, "drain-sleep", "sleep", "{\"ms\":3000}", 30000), 0);
    wait_state(one_running, "the sleep running", 5000);
    assert_int_equal(bw_test_proc_signal(&H.workers[0], SIGTERM), 0);
    if (poll_http("/readyz", 503, "DRAINING\n", 5000) != 0)
        fail_with_log("/readyz did not turn 503 DRAINING after SIGTERM");
    json_t *s = get_json("/_state");
    assert_true(json_is_true(json_object_get(s, "draining")));
    assert_true(json_is_false(json_object_get(s, "ready")));
    assert_string_equal(jstr(s, "readiness"), "DRAINING");
    assert_int_equal(jint(s, "jobs_in_flight"), 1); /* still draining: the sleep runs on */
    json_decref(s);
    assert_int_equal(bw_test_http(port, "GET", "/healthz", NULL, &status, &body, NULL), 0);
    assert_int_equal(status, 200);
    free(body);
    char *m = scrape();
    assert_int_equal((int)must_metric(m, "beamline_worker_draining"), 1);
    assert_int_equal((int)must_metric(m, "beamline_worker_ready"), 0);
    free(m);
    expect_status("drain-sleep", "success");
    if (bw_test_proc_wait(&H.workers[0], 15000, &code) != 0)
        fail_with_log("the worker did not exit after draining");
    if (code != 0)
        fail_with_log("the worker exited %d after draining, want 0", code);
    H.exit_checked[0] = 1;
}

/* ---- answers while saturated ----------------------------------------------------------------- */

/* n sleeps of ms each, published back to back with one flush. */
static void submit_sleeps(const char *prefix, int n, int ms)
{
    char payload[32];
    snprintf(payload, sizeof payload, "{\"ms\":%d}", ms);
    assert_int_equal(bw_harness_submit_many_with(&H, prefix, n, "sleep", payload, 3600000), 0);
}

typedef struct timing {
    int64_t max_us;
    int n;
    double max_queued;
} timing_t;

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* One timed GET /metrics and one timed GET /readyz. */
static void timed_pair(timing_t *t)
{
    int status = 0;
    char *body = NULL;
    int64_t t0 = now_us();
    int rc = bw_test_http(port, "GET", "/metrics", NULL, &status, &body, NULL);
    int64_t dt = now_us() - t0;
    if (rc != 0 || status != 200)
        fail_with_log("GET /metrics while saturated: rc %d, status %d", rc, status);
    double q = bw_prom_value(body, "beamline_worker_jobs_queued");
    t->max_queued = q > t->max_queued ? q : t->max_queued;
    free(body);
    t->max_us = dt > t->max_us ? dt : t->max_us;
    t0 = now_us();
    rc = bw_test_http(port, "GET", "/readyz", NULL, &status, &body, NULL);
    dt = now_us() - t0;
    if (rc != 0 || status != 200 || strcmp(body, "READY\n") != 0)
        fail_with_log("GET /readyz while saturated: rc %d, status %d", rc, status);
    free(body);
    t->max_us = dt > t->max_us ? dt : t->max_us;
    t->n++;
}

static void test_answers_while_saturated(void **state)
{
    timing_t t = {0};
    submit_sleeps("busy", SATURATE_JOBS, SATURATE_SLEEP_MS);
    /* Ten pairs while the loop takes the burst in, then ten more while it holds the queue. */
    for (int i = 0; i < 10; i++) {
        timed_pair(&t);
        bw_test_sleep_ms(POLL_MS);
    }
    int64_t deadline = bw_test_now_ms() + 15000;
    while (t.max_queued < SATURATE_JOBS / 2 && bw_test_now_ms() < deadline) {
        timed_pair(&t);
        bw_test_sleep_ms(POLL_MS);
    }
    if (t.max_queued < SATURATE_JOBS / 2)
        fail_with_log("the queue never reached %d (max seen %g)", SATURATE_JOBS / 2, t.max_queued);
    for (int i = 0; i < 10; i++) {
        timed_pair(&t);
        bw_test_sleep_ms(POLL_MS);
    }
    print_message("%d request pairs, queue up to %g, slowest answer %.1f ms\n", t.n, t.max_queued,
                  (double)t.max_us / 1000.0);
    if (t.max_us > SATURATE_MAX_MS * 1000)
        fail_msg("slowest answer took %.1f ms while saturated (limit %d ms)", (double)t.max_us / 1000.0,
                 SATURATE_MAX_MS);
}

/* ---- item 5: job types from input never become label values ----------------------------------- */

static int count_series(const char *text, const char *prefix)
{
    int n = 0;
    for (const char *p = text; (p = strstr(p, prefix)) != NULL; p++)
        if (p == text || p[-1] == '\n')
            n++;
    return n;
}

/* 500 distinct unknown job types (the router's input, an attacker's choice) add no series: they are
   all counted under job_type="other". */
#define UNKNOWN_TYPES 500

static void test_unknown_types_share_one_label(void **state)
{
    char id[48], type[64];
    char *before = scrape();
    int series0 = count_series(before, "beamline_worker_jobs_received_total{");
    double other0 = must_metric(before, RECEIVED("other"));
    for (int i = 0; i < UNKNOWN_TYPES; i++) {
        snprintf(id, sizeof id, "u-type-%d", i);
        snprintf(type, sizeof type, "attacker-type-%d-%0*d", i, 40, i); /* 64 bytes at most: decodable */
        assert_int_equal(bw_harness_submit(&H, id, type, "{}", 10000), 0);
    }
    for (int i = 0; i < UNKNOWN_TYPES; i++) {
        snprintf(id, sizeof id, "u-type-%d", i);
        json_t *r = must_result(id, 20000);
        const char *code = jstr(r, "error_code");
        if (code == NULL || strcmp(code, "UNKNOWN_JOB_TYPE") != 0)
            fail_msg("%s: error code %s, want UNKNOWN_JOB_TYPE", id, code ? code : "(none)");
        json_decref(r);
    }
    char *after = scrape();
    assert_int_equal(count_series(after, "beamline_worker_jobs_received_total{"), series0);
    assert_null(strstr(after, "attacker-type"));
    assert_int_equal((int)(must_metric(after, RECEIVED("other")) - other0), UNKNOWN_TYPES);
    free(before);
    free(after);
}

/* ---- item 7b: slow clients cannot starve the probes ------------------------------------------- */

#define SLOW_CLIENTS 300
#define SLOW_ADDRESSES 20 /* 127.0.0.2 .. 127.0.0.21, 15 connections each: under the cap of 16 */
#define PROBE_ADDRESS "127.0.0.22"
#define PROBE_MAX_MS 2000
#define PROBE_GIVE_UP_MS 30000 /* long enough to measure the old server's starvation */
#define STORM_MAX_ROUNDS 12

typedef struct slow {
    int fd;
    char src[16];
    int64_t opened_ms;
} slow_t;

static int send_all(int fd, const char *s)
{
    size_t len = strlen(s), off = 0;
    int64_t deadline = bw_test_now_ms() + 2000;
    while (off < len && bw_test_now_ms() < deadline) {
        ssize_t w = send(fd, s + off, len - off, MSG_NOSIGNAL);
        if (w > 0)
            off += (size_t)w;
        else if (w < 0 && errno != EAGAIN && errno != EINTR)
            return -1;
    }
    return off == len ? 0 : -1;
}

/* A slow client: connects from src and sends only a request line. -1 when it cannot connect. */
static int slow_open(slow_t *c, const char *src)
{
    snprintf(c->src, sizeof c->src, "%s", src);
    c->fd = bw_test_http_connect_from(src, port, 5000);
    c->opened_ms = bw_test_now_ms();
    if (c->fd < 0)
        return -1;
    if (send_all(c->fd, "GET /healthz HTTP/1.1\r\n") != 0) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    return 0;
}

/* 1 when the server has closed the connection (EOF or reset), 0 while it is open. */
static int slow_closed(slow_t *c)
{
    char b[256];
    if (c->fd < 0)
        return 1;
    ssize_t r = recv(c->fd, b, sizeof b, MSG_DONTWAIT);
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
        return 1;
    return 0; /* r > 0 would be an answer to an incomplete request: not expected, and not a close */
}

/* One more header line; -1 when the server has closed the connection. */
static int slow_dribble(slow_t *c, int n)
{
    char line[64];
    snprintf(line, sizeof line, "X-Slow-%d: %d\r\n", n, n);
    if (slow_closed(c))
        return -1;
    return send_all(c->fd, line);
}

static void slow_close(slow_t *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

typedef struct storm {
    slow_t c[SLOW_CLIENTS];
    pthread_t thread;
    atomic_int started; /* every client opened and dribbled once */
    atomic_int stop;
    atomic_int reopened;
} storm_t;

static void storm_src(int i, char *src, size_t len)
{
    snprintf(src, len, "127.0.0.%d", 2 + i % SLOW_ADDRESSES);
}

/* The attacker: 300 connections sending one header line a second each, reconnecting whatever the
   server closes; bounded in rounds. */
static void *storm_main(void *arg)
{
    storm_t *st = arg;
    char src[16];
    for (int i = 0; i < SLOW_CLIENTS; i++) {
        storm_src(i, src, sizeof src);
        slow_open(&st->c[i], src);
    }
    for (int round = 0; round < STORM_MAX_ROUNDS && !atomic_load(&st->stop); round++) {
        int64_t next = bw_test_now_ms() + 1000;
        for (int i = 0; i < SLOW_CLIENTS; i++) {
            if (slow_dribble(&st->c[i], round) == 0)
                continue;
            slow_close(&st->c[i]);
            storm_src(i, src, sizeof src);
            slow_open(&st->c[i], src);
            atomic_fetch_add(&st->reopened, 1);
        }
        atomic_store(&st->started, 1);
        while (bw_test_now_ms() < next && !atomic_load(&st->stop))
            bw_test_sleep_ms(20);
    }
    atomic_store(&st->started, 1);
    for (int i = 0; i < SLOW_CLIENTS; i++)
        slow_close(&st->c[i]);
    return NULL;
}

/* Time until path answers 200 from src, retrying what fails (as a prober does), up to give_up_ms. */
static int64_t probe_ms(const char *src, const char *path, int give_up_ms)
{
    int64_t t0 = bw_test_now_ms(), deadline = t0 + give_up_ms;
    while (bw_test_now_ms() < deadline) {
        int status = 0;
        char *body = NULL;
        int left = (int)(deadline - bw_test_now_ms());
        int rc = bw_test_http_from(src, left > 0 ? left : 1, port, "GET", path, &status, &body);
        free(body);
        if (rc == 0 && status == 200)
            return bw_test_now_ms() - t0;
        bw_test_sleep_ms(10);
    }
    return -1;
}

static double metric_from(const char *src, const char *series)
{
    int status = 0;
    char *body = NULL;
    if (bw_test_http_from(src, 5000, port, "GET", "/metrics", &status, &body) != 0 || status != 200)
        fail_with_log("GET /metrics from %s: status %d", src, status);
    double v = must_metric(body, series);
    free(body);
    return v;
}

#define EVICTIONS "beamline_worker_health_evictions_total"
#define HEADER_TIMEOUTS "beamline_worker_health_header_timeouts_total"
#define HEALTH_CONNS "beamline_worker_health_connections"

static void test_slow_clients_cannot_starve_probes(void **state)
{
    storm_t *st = calloc(1, sizeof *st);
    int64_t worst = 0;
    int probes = 0;
    double ev0 = metric_from(PROBE_ADDRESS, EVICTIONS);
    assert_int_equal(pthread_create(&st->thread, NULL, storm_main, st), 0);
    int64_t deadline = bw_test_now_ms() + 30000;
    while (!atomic_load(&st->started) && bw_test_now_ms() < deadline)
        bw_test_sleep_ms(20);
    /* Probes for 4 s, across two header timeouts of the storm's connections. */
    int64_t end = bw_test_now_ms() + 4000;
    while (bw_test_now_ms() < end) {
        int64_t a = probe_ms(PROBE_ADDRESS, "/healthz", PROBE_GIVE_UP_MS);
        int64_t b = probe_ms(PROBE_ADDRESS, "/readyz", PROBE_GIVE_UP_MS);
        probes += 2;
        if (a < 0 || b < 0)
            worst = PROBE_GIVE_UP_MS;
        worst = a > worst ? a : worst;
        worst = b > worst ? b : worst;
        if (worst > PROBE_MAX_MS)
            break;
        bw_test_sleep_ms(100);
    }
    double conns = metric_from(PROBE_ADDRESS, HEALTH_CONNS);
    double ev = metric_from(PROBE_ADDRESS, EVICTIONS) - ev0;
    atomic_store(&st->stop, 1);
    pthread_join(st->thread, NULL);
    print_message("%d slow clients from %d addresses (%d reconnects): %d probes, slowest %lld ms; "
                  "%g connections held, %g evictions\n",
                  SLOW_CLIENTS, SLOW_ADDRESSES, atomic_load(&st->reopened), probes, (long long)worst, conns,
                  ev);
    free(st);
    if (worst > PROBE_MAX_MS)
        fail_with_log("a probe took %lld ms while slow clients held connections (limit %d ms)",
                      (long long)worst, PROBE_MAX_MS);
    assert_true(conns <= 128);
    assert_true(ev > 0); /* 300 > 128: room was made by closing slow ones */
}

/* A client dribbling its headers is closed once HEALTH_HEADER_TIMEOUT_MS (2 s) have passed since it
   connected, not before; one that completes them within the time is answered. */
static void test_header_timeout(void **state)
{
    slow_t slow, ok;
    double t0 = metric_from(PROBE_ADDRESS, HEADER_TIMEOUTS);
    assert_int_equal(slow_open(&slow, "127.0.0.40"), 0);
    assert_int_equal(slow_open(&ok, "127.0.0.41"), 0);
    int64_t closed_after = -1, start = slow.opened_ms;
    int ok_status = 0, n = 0;
    char resp[512];
    while (bw_test_now_ms() - start < 8000 && closed_after < 0) {
        if (slow_dribble(&slow, n++) != 0)
            closed_after = bw_test_now_ms() - start;
        int64_t el = bw_test_now_ms() - ok.opened_ms;
        if (ok.fd >= 0 && el >= 1000 && ok_status == 0) {
            ok_status = -1;
            if (send_all(ok.fd, "Host: a\r\n\r\n") == 0) { /* complete within the 2 s */
                struct pollfd pfd = {.fd = ok.fd, .events = POLLIN};
                if (poll(&pfd, 1, 3000) == 1) {
                    ssize_t r = recv(ok.fd, resp, sizeof resp - 1, 0);
                    resp[r > 0 ? r : 0] = '\0';
                    if (r > 12 && strncmp(resp, "HTTP/1.1 200", 12) == 0)
                        ok_status = 200;
                }
            }
        }
        bw_test_sleep_ms(100);
    }
    slow_close(&slow);
    slow_close(&ok);
    print_message("a dribbling client was closed after %lld ms (HEALTH_HEADER_TIMEOUT_MS=2000)\n",
                  (long long)closed_after);
    if (closed_after < 0)
        fail_with_log("a client dribbling its headers was still connected after 8 s");
    if (closed_after < 1900)
        fail_msg("a dribbling client was closed after %lld ms, before the 2000 ms timeout",
                 (long long)closed_after);
    if (ok_status != 200)
        fail_with_log("a client completing its headers after 1 s got no 200 (%d)", ok_status);
    assert_true(metric_from(PROBE_ADDRESS, HEADER_TIMEOUTS) >= t0 + 1);
}

/* Keep-alive still works for a fast client: two requests on one connection with a pause between. */
static void test_keep_alive_with_pause(void **state)
{
    static const char req1[] = "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n";
    static const char req2[] = "GET /readyz HTTP/1.1\r\nHost: a\r\n\r\n";
    int fd = bw_test_http_connect_from("127.0.0.42", port, 5000);
    char buf[1024];
    assert_true(fd >= 0);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(send_all(fd, i == 0 ? req1 : req2), 0);
        size_t got = 0;
        int64_t deadline = bw_test_now_ms() + 5000;
        while (bw_test_now_ms() < deadline && (got < 12 || strstr(buf, "\r\n\r\n") == NULL ||
                                               strstr(buf, i == 0 ? "OK\n" : "READY\n") == NULL)) {
            struct pollfd pfd = {.fd = fd, .events = POLLIN};
            if (poll(&pfd, 1, 100) != 1)
                continue;
            ssize_t r = recv(fd, buf + got, sizeof buf - 1 - got, 0);
            if (r <= 0)
                fail_msg("request %d: the kept-alive connection was closed", i + 1);
            got += (size_t)r;
            buf[got] = '\0';
        }
        if (strncmp(buf, "HTTP/1.1 200", 12) != 0 || strstr(buf, "Connection: close") != NULL)
            fail_msg("request %d on a kept-alive connection: %.200s", i + 1, buf);
        memset(buf, 0, sizeof buf);
        bw_test_sleep_ms(500); /* a pause well within the header timeout */
    }
    close(fd);
}

/* With HEALTH_MAX_CONNECTIONS=20 (and a long header timeout, so nothing expires meanwhile): an
   address holds 16 connections at most, the 17th closes that address's oldest; the server holds 20,
   the 21st closes the oldest of all. Exactly one is closed each time: at the limit nobody is. */
static int setup_cap(void **state)
{
    static const char *const env[] = {"WORKER_ID=health-cap", "HEALTH_MAX_CONNECTIONS=20",
                                      "HEALTH_HEADER_TIMEOUT_MS=60000", NULL};
    return start_with(env);
}

static void wait_connections(double want)
{
    int64_t deadline = bw_test_now_ms() + 5000;
    double v;
    while ((v = metric_from("127.0.0.60", HEALTH_CONNS)) != want && bw_test_now_ms() < deadline)
        bw_test_sleep_ms(POLL_MS);
    if (v != want)
        fail_with_log("the health server holds %g connections, want %g", v, want);
}

/* 0 when exactly c[victim] of c[0..n) has been closed (waiting up to 5 s for it). */
static void expect_only_closed(slow_t *c, int n, int victim, const char *what)
{
    int64_t deadline = bw_test_now_ms() + 5000;
    while (!slow_closed(&c[victim]) && bw_test_now_ms() < deadline)
        bw_test_sleep_ms(POLL_MS);
    for (int i = 0; i < n; i++)
        if (slow_closed(&c[i]) != (i == victim))
            fail_with_log("%s: connection %d is %s", what, i, i == victim ? "still open" : "closed");
}

static void test_connection_caps(void **state)
{
    slow_t c[20];
    int status = 0;
    char *body = NULL;
    wait_connections(1); /* only the scrape itself */
    double ev0 = metric_from("127.0.0.60", EVICTIONS);
    /* per address: 16 held, the 17th (a probe) closes the oldest of them */
    for (int i = 0; i < 16; i++)
        assert_int_equal(slow_open(&c[i], "127.0.0.50"), 0);
    assert_int_equal(bw_test_http_from("127.0.0.50", 5000, port, "GET", "/healthz", &status, &body), 0);
    assert_int_equal(status, 200);
    free(body);
    expect_only_closed(c, 16, 0, "per-address cap");
    assert_int_equal(metric_from("127.0.0.60", EVICTIONS), ev0 + 1);
    for (int i = 0; i < 16; i++)
        slow_close(&c[i]);
    wait_connections(1);
    /* the whole server: 20 held, the 21st (a probe) closes the oldest */
    for (int i = 0; i < 20; i++)
        assert_int_equal(slow_open(&c[i], i < 10 ? "127.0.0.52" : "127.0.0.53"), 0);
    assert_int_equal(bw_test_http_from("127.0.0.54", 5000, port, "GET", "/readyz", &status, &body), 0);
    assert_int_equal(status, 200);
    free(body);
    expect_only_closed(c, 20, 0, "connection cap");
    for (int i = 0; i < 20; i++)
        slow_close(&c[i]);
    assert_true(metric_from("127.0.0.60", EVICTIONS) >= ev0 + 2);
}

/* ---- item 7: a stalled stdout never blocks the loop --------------------------------------------- */

#define STALL_BATCH 200
#define STALL_MAX_ROUNDS 20

typedef struct piped {
    pid_t pid;
    int out; /* the read end of the worker's stdout */
    char err_path[64];
    char approval_env[96]; /* APPROVAL_DIR=<err_path>.approvals: never the shared default of /tmp */
    int port;
    bw_buf_t pending; /* bytes read but not yet a whole line */
} piped_t;

static char **env_with(const char *const *extra)
{
    extern char **environ;
    size_t n = 0, m = 0, k = 0;
    while (environ[n] != NULL)
        n++;
    while (extra[k] != NULL)
        k++;
    char **e = calloc(n + k + 1, sizeof *e);
    for (size_t i = 0; i < n; i++) {
        size_t nl = strcspn(environ[i], "=");
        bool overridden = false;
        for (size_t j = 0; j < k && !overridden; j++)
            overridden = strncmp(extra[j], environ[i], nl + 1) == 0;
        if (!overridden)
            e[m++] = environ[i];
    }
    for (size_t j = 0; j < k; j++)
        e[m++] = (char *)extra[j];
    return e;
}

/* Reads what the pipe has within wait_ms; appends it to p->pending. */
static void pipe_read(piped_t *p, int wait_ms)
{
    struct pollfd pfd = {.fd = p->out, .events = POLLIN};
    char buf[65536];
    while (poll(&pfd, 1, wait_ms) == 1) {
        ssize_t r = read(p->out, buf, sizeof buf);
        if (r <= 0)
            return;
        bw_buf_append(&p->pending, buf, (size_t)r);
        wait_ms = 0;
    }
}

/* Takes the whole lines out of p->pending, checking each is a JSON object; returns how many of them
   contain needle (NULL: none counted). */
static int take_lines(piped_t *p, const char *needle, int *lines)
{
    int hits = 0;
    char *start = p->pending.p, *nl;
    while (start < p->pending.p + p->pending.len &&
           (nl = memchr(start, '\n', (size_t)(p->pending.p + p->pending.len - start))) != NULL) {
        json_error_t err;
        json_t *j = json_loadb(start, (size_t)(nl - start), 0, &err);
        if (!json_is_object(j))
            fail_msg("a torn or invalid log line (%s): %.*s", err.text,
                     (int)(nl - start > 200 ? 200 : nl - start), start);
        json_decref(j);
        if (needle != NULL && memmem(start, (size_t)(nl - start), needle, strlen(needle)) != NULL)
            hits++;
        (*lines)++;
        start = nl + 1;
    }
    size_t rest = (size_t)(p->pending.p + p->pending.len - start);
    memmove(p->pending.p, start, rest);
    p->pending.len = rest;
    return hits;
}

static int piped_start(piped_t *p)
{
    char url[160];
    int pfd[2];
    snprintf(url, sizeof url, "NATS_URL=%s", H.nats.url);
    memset(p, 0, sizeof *p);
    bw_buf_init(&p->pending, 65536);
    if (pipe2(pfd, O_CLOEXEC) != 0)
        return -1;
    snprintf(p->err_path, sizeof p->err_path, "/tmp/bw-logstall-XXXXXX");
    int errfd = mkstemp(p->err_path);
    snprintf(p->approval_env, sizeof p->approval_env, "APPROVAL_DIR=%s.approvals", p->err_path);
    const char *const extra[] = {url,
                                 "HEALTH_BIND=127.0.0.1:0",
                                 "DLQ_PATH=/dev/null",
                                 p->approval_env,
                                 "LOG_LEVEL=debug",
                                 "LOG_BUFFER_BYTES=64KiB",
                                 "WORKER_ID=log-stall",
                                 "CAF_HEARTBEAT_INTERVAL_MS=200",
                                 "WORKER_MAX_CONCURRENCY=16",
                                 "SHUTDOWN_TIMEOUT_MS=2000",
                                 NULL};
    char *argv[] = {(char *)BW_WORKER_BIN, NULL};
    char **envp = env_with(extra);
    int fds[3] = {-1, pfd[1], errfd};
    p->pid = bw_test_spawn(BW_WORKER_BIN, argv, envp, fds);
    free(envp);
    close(pfd[1]);
    close(errfd);
    p->out = pfd[0];
    if (p->pid <= 0)
        return -1;
    /* read until ready, taking the health port from its line */
    int64_t deadline = bw_test_now_ms() + 10000;
    while (bw_test_now_ms() < deadline && strstr(p->pending.p, "\"worker ready\"") == NULL)
        pipe_read(p, 100);
    bool ready = strstr(p->pending.p, "\"worker ready\"") != NULL;
    const char *at = strstr(p->pending.p, "\"health server listening\"");
    const char *pp = at != NULL ? strstr(at, "\"port\":") : NULL;
    p->port = pp != NULL ? atoi(pp + 7) : -1;
    int lines = 0;
    take_lines(p, NULL, &lines);
    return p->port > 0 && ready ? 0 : -1;
}

static void piped_dump(piped_t *p)
{
    char *err = bw_test_read_file(p->err_path, NULL);
    fprintf(stderr, "----- stderr of the piped worker -----\n%s\n", err ? err : "");
    free(err);
}

/* Submits n echoes and waits for every result; returns the slowest wait in ms, or -1. */
static int64_t echo_round(const char *prefix, int n)
{
    char id[64];
    int64_t t0 = bw_test_now_ms();
    assert_int_equal(bw_harness_submit_many(&H, prefix, n, "echo"), 0);
    for (int i = 0; i < n; i++) {
        snprintf(id, sizeof id, "%s-%d", prefix, i);
        json_t *r = bw_harness_result(&H, id, 10000);
        if (r == NULL)
            return -1;
        json_decref(r);
    }
    return bw_test_now_ms() - t0;
}

static void test_stalled_stdout(void **state)
{
    piped_t p;
    int code = -1, lines = 0;
    char prefix[32];
    /* The harness's own worker would share the assignments: it goes first. */
    assert_int_equal(bw_test_proc_signal(&H.workers[0], SIGTERM), 0);
    assert_int_equal(bw_test_proc_wait(&H.workers[0], 20000, &code), 0);
    assert_int_equal(code, 0);
    H.exit_checked[0] = 1;
    if (piped_start(&p) != 0) {
        piped_dump(&p);
        fail_msg("the worker with a piped stdout did not get ready");
    }
    int saved_port = port;
    port = p.port;
    /* Nobody reads the pipe now: 64 KiB of pipe and 64 KiB of LOG_BUFFER_BYTES fill up, and jobs
       (each logs four debug/info lines) must still be answered. */
    double dropped = 0;
    int64_t slowest = 0;
    int rounds = 0;
    while (dropped == 0 && rounds < STALL_MAX_ROUNDS) {
        snprintf(prefix, sizeof prefix, "stall-%d", rounds++);
        int64_t t = echo_round(prefix, STALL_BATCH);
        if (t < 0) {
            piped_dump(&p);
            fail_msg("round %d: echoes unanswered within 10 s while stdout is not read", rounds);
        }
        slowest = t > slowest ? t : slowest;
        char *m = scrape();
        dropped = must_metric(m, "beamline_worker_log_lines_dropped_total");
        free(m);
    }
    print_message("stdout stalled: %d rounds of %d echoes answered (slowest round %lld ms), %g log lines "
                  "dropped\n",
                  rounds, STALL_BATCH, (long long)slowest, dropped);
    if (dropped <= 0) {
        piped_dump(&p);
        fail_msg("no log line dropped after %d rounds with stdout not read", rounds);
    }
    /* Reading again: what comes out is whole lines, and new jobs' lines arrive. */
    pipe_read(&p, 100);
    take_lines(&p, NULL, &lines);
    assert_true(echo_round("after", 50) >= 0);
    int seen = 0;
    int64_t deadline = bw_test_now_ms() + 10000;
    while (seen < 50 && bw_test_now_ms() < deadline) {
        pipe_read(&p, 100);
        seen += take_lines(
            &p, "\"msg\":\"job finished\",\"worker_id\":\"log-stall\",\"assignment_id\":\"after-", &lines);
    }
    print_message("after reading resumed: %d whole lines, %d of 50 new jobs' lines seen\n", lines, seen);
    assert_int_equal(seen, 50);
    /* Stalled again at exit: the flush is bounded, the worker exits 0 promptly. */
    for (int i = 0; i < 3; i++) {
        snprintf(prefix, sizeof prefix, "exit-%d", i);
        assert_true(echo_round(prefix, STALL_BATCH) >= 0);
    }
    int64_t t0 = bw_test_now_ms();
    kill(p.pid, SIGTERM);
    int st = 0, reaped = 0;
    while (!reaped && bw_test_now_ms() - t0 < 15000) {
        reaped = bw_test_reap(p.pid, &st) == 1;
        if (!reaped)
            bw_test_sleep_ms(10);
    }
    int64_t exit_ms = bw_test_now_ms() - t0;
    print_message("SIGTERM with stdout stalled: exited after %lld ms\n", (long long)exit_ms);
    if (!reaped) {
        kill(p.pid, SIGKILL);
        bw_test_terminate(p.pid, 0);
        piped_dump(&p);
        fail_msg("the worker did not exit within 15 s of SIGTERM with its stdout stalled");
    }
    if (bw_test_exit_code(st) != 0) {
        piped_dump(&p);
        fail_msg("exit code %d", bw_test_exit_code(st));
    }
    assert_true(exit_ms < 5000);
    close(p.out);
    unlink(p.err_path);
    bw_test_rm_rf(p.approval_env + strlen("APPROVAL_DIR="));
    bw_buf_dispose(&p.pending);
    port = saved_port;
}

/* ---- item 11: scrapes while the worker shuts down --------------------------------------------- */

#define SHUTDOWN_ROUNDS 5

typedef struct hammer {
    int port;
    atomic_int stop;
    atomic_int ok;
} hammer_t;

static void *hammer_main(void *arg)
{
    hammer_t *hm = arg;
    int64_t deadline = bw_test_now_ms() + 30000;
    while (!atomic_load(&hm->stop) && bw_test_now_ms() < deadline) {
        int status = 0;
        char *body = NULL;
        if (bw_test_http_from(NULL, 2000, hm->port, "GET", "/metrics", &status, &body) == 0 && status == 200)
            atomic_fetch_add(&hm->ok, 1);
        free(body);
    }
    return NULL;
}

/* Each round: a worker, two threads scraping /metrics as fast as they can, SIGTERM; the worker must
   exit 0 (under the sanitizers a race or a use of the freed DLQ is a report and a non-zero exit). */
static void test_scrapes_during_shutdown(void **state)
{
    for (int round = 0; round < SHUTDOWN_ROUNDS; round++) {
        char wid[32];
        snprintf(wid, sizeof wid, "WORKER_ID=scrape-stop-%d", round);
        const char *const env[] = {wid, NULL};
        int i = bw_harness_add_worker(&H, env);
        assert_true(i >= 0);
        hammer_t hm = {.port = bw_test_worker_http_port(&H.workers[i])};
        assert_true(hm.port > 0);
        pthread_t t[2];
        for (int k = 0; k < 2; k++)
            assert_int_equal(pthread_create(&t[k], NULL, hammer_main, &hm), 0);
        int64_t deadline = bw_test_now_ms() + 10000;
        while (atomic_load(&hm.ok) < 20 && bw_test_now_ms() < deadline)
            bw_test_sleep_ms(5);
        int code = -1;
        assert_int_equal(bw_test_proc_signal(&H.workers[i], SIGTERM), 0);
        int waited = bw_test_proc_wait(&H.workers[i], 20000, &code);
        atomic_store(&hm.stop, 1);
        for (int k = 0; k < 2; k++)
            pthread_join(t[k], NULL);
        if (waited != 0 || code != 0)
            fail_with_log("round %d: the worker %s (exit code %d) after SIGTERM under scrapes", round,
                          waited ? "did not exit" : "exited badly", code);
        H.exit_checked[i] = 1;
        print_message("round %d: %d scrapes, exit 0\n", round, atomic_load(&hm.ok));
        /* reuse the slot: the harness holds 4 workers at most */
        bw_test_proc_stop(&H.workers[i]);
        H.nworkers--;
        H.exit_checked[i] = 0;
    }
}

/* ---- start-up with HEALTH_BIND taken ------------------------------------------------------- */

static void test_port_in_use(void **state)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t sl = sizeof sa;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), code = -1;
    bw_test_proc_t p;
    char bind_env[64];

    assert_true(fd >= 0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(fd, 1), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    snprintf(bind_env, sizeof bind_env, "HEALTH_BIND=127.0.0.1:%d", ntohs(sa.sin_port));
    const char *const env[] = {bind_env, "NATS_URL=nats://127.0.0.1:1", "DLQ_PATH=/dev/null",
                               "WORKER_ID=health-taken", NULL};
    assert_int_equal(bw_test_proc_start(&p, NULL, env), 0);
    int waited = bw_test_proc_wait(&p, 10000, &code);
    char *log = bw_test_read_file(p.log_path, NULL);
    if (waited != 0 || code != 1 || log == NULL || strstr(log, "cannot start the health server") == NULL ||
        strstr(log, "HEALTH_BIND") == NULL) {
        bw_test_proc_dump_log(&p);
        bw_test_proc_stop(&p);
        close(fd);
        fail_msg("with HEALTH_BIND taken: %s, exit code %d", waited ? "still running" : "exited", code);
    }
    free(log);
    bw_test_proc_stop(&p);
    close(fd);
}

int main(void)
{
    const struct CMUnitTest offline[] = {cmocka_unit_test(test_exposition_validator),
                                         cmocka_unit_test(test_port_in_use)};
    const struct CMUnitTest main_tests[] = {
        cmocka_unit_test(test_endpoints),
        cmocka_unit_test(test_metrics_move_with_jobs),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_keep_alive),
        cmocka_unit_test(test_unknown_types_share_one_label),
        cmocka_unit_test(test_slow_clients_cannot_starve_probes),
        cmocka_unit_test(test_header_timeout),
        cmocka_unit_test(test_keep_alive_with_pause),
    };
    const struct CMUnitTest cap[] = {cmocka_unit_test(test_connection_caps)};
    const struct CMUnitTest stall[] = {cmocka_unit_test(test_stalled_stdout)};
    const struct CMUnitTest scrape_stop[] = {cmocka_unit_test(test_scrapes_during_shutdown)};
    const struct CMUnitTest nats_loss[] = {cmocka_unit_test(test_readiness_on_nats_loss)};
    const struct CMUnitTest drain[] = {cmocka_unit_test(test_readiness_on_drain)};
    const struct CMUnitTest saturated[] = {cmocka_unit_test(test_answers_while_saturated)};
    int rc = cmocka_run_group_tests_name("health offline", offline, NULL, NULL);
    rc |= cmocka_run_group_tests_name("health endpoints", main_tests, setup_main, teardown);
    rc |= cmocka_run_group_tests_name("health nats loss", nats_loss, setup_plain, teardown);
    rc |= cmocka_run_group_tests_name("health drain", drain, setup_drain, teardown);
    rc |= cmocka_run_group_tests_name("health saturated", saturated, setup_saturated, teardown);
    rc |= cmocka_run_group_tests_name("health connection caps", cap, setup_cap, teardown);
    rc |= cmocka_run_group_tests_name("log: stalled stdout", stall, setup_plain, teardown);
    rc |= cmocka_run_group_tests_name("scrapes during shutdown", scrape_stop, setup_plain, teardown);
    nats_CloseAndWait(2000);
    return rc;
}
