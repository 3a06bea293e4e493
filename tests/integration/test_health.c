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
#include <math.h>
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

#include "harness.h"
#include "http_client.h"
#include "prom_check.h"
#include "testutil.h"

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
    if (bw_harness_start(&H, env) != 0)
        return -1;
    port = bw_test_worker_http_port(&H.workers[0]);
    if (port <= 0) {
        bw_test_proc_dump_log(&H.workers[0]);
        return -1;
    }
    return 0;
}

static int setup_main(void **state)
{
    static const char *const env[] = {"WORKER_MAX_CONCURRENCY=2", "WORKER_ID=health-main", NULL};
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
    static const char *const env[] = {"WORKER_ID=health-busy", "WORKER_MAX_CONCURRENCY=1",
                                      "WORKER_QUEUE_MAX=5000", "SHUTDOWN_TIMEOUT_MS=100", NULL};
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
    };
    const struct CMUnitTest nats_loss[] = {cmocka_unit_test(test_readiness_on_nats_loss)};
    const struct CMUnitTest drain[] = {cmocka_unit_test(test_readiness_on_drain)};
    const struct CMUnitTest saturated[] = {cmocka_unit_test(test_answers_while_saturated)};
    int rc = cmocka_run_group_tests_name("health offline", offline, NULL, NULL);
    rc |= cmocka_run_group_tests_name("health endpoints", main_tests, setup_main, teardown);
    rc |= cmocka_run_group_tests_name("health nats loss", nats_loss, setup_plain, teardown);
    rc |= cmocka_run_group_tests_name("health drain", drain, setup_drain, teardown);
    rc |= cmocka_run_group_tests_name("health saturated", saturated, setup_saturated, teardown);
    nats_CloseAndWait(2000);
    return rc;
}
