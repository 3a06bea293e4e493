/*
 * Integration: fair scheduling (issue 18) through a real nats-server and the real worker binary, one worker
 * (and environment) per test.
 *  - a tenant flooding 4,000 short sleeps does not starve another tenant's 20 echo jobs: they finish within
 *    a few job-times, not behind the backlog; every flood job still gets exactly one result;
 *  - TENANT_WEIGHTS acme=3,beta=1 gives 3:1 completions while both are backlogged (within 15%);
 *  - TENANT_MAX_CONCURRENCY bounds one tenant's running jobs while another tenant's job runs;
 *  - TENANT_QUEUE_MAX refuses only the tenant whose wait queue is full, WORKER_QUEUE_MAX everyone, each
 *    counted under its own cause;
 *  - WORKER_TYPE_CONCURRENCY: sleeps at their cap wait without holding up echo jobs, and a sleep pool runs
 *    beside the shared slots;
 *  - a deadline passing while a job waits (behind the tenant cap, a type cap, full shared slots) answers
 *    `timeout` and the job never starts;
 *  - per-tenant series on /metrics only with METRICS_TENANT_LABELS=true;
 *  - invalid scheduling variables stop the worker at start-up, naming the variable.
 * Every assertion waits on an event (a result, a log line, a metric reaching a value) or counts results in
 * their arrival order, never on elapsed time, so the tests hold on a loaded machine.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "http_client.h"
#include "prom_check.h"
#include "testutil.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

#define LONG_SLEEP "{\"ms\":30000}" /* outlasts every test: cancelled at its end */
#define LONG_DEADLINE 120000
#define FAR_DEADLINE 600000 /* for jobs that must never time out, even under ThreadSanitizer */
#define STALL_MS 30000      /* a wait for many results fails when none arrives for this long */

#define SERIES(name, label, value) "beamline_worker_" name "{" label "=\"" value "\"}"
#define WAITING(type) SERIES("jobs_waiting", "job_type", type)
#define RUNNING(type) SERIES("jobs_running", "job_type", type)
#define REFUSED(cause) SERIES("admissions_refused_total", "cause", cause)
#define TENANTS_WAITING "beamline_worker_tenants_waiting"

static bw_harness_t H;
static int http_port; /* the worker's health server, read once from its log */

/* ---- set-up ---- */

/* Results in their arrival order (assignment id, tenant, status), pulled from the harness's client. */
typedef struct arrival {
    char *id, *tenant, *status;
} arrival_t;

static arrival_t *arrivals;
static int narrivals, caparrivals;

static void forget_arrivals(void)
{
    for (int i = 0; i < narrivals; i++) {
        free(arrivals[i].id);
        free(arrivals[i].tenant);
        free(arrivals[i].status);
    }
    free(arrivals);
    arrivals = NULL;
    narrivals = caparrivals = 0;
}

static int start(const char *const *env)
{
    forget_arrivals();
    if (bw_harness_start(&H, env) != 0)
        return -1;
    http_port = bw_test_worker_http_port(&H.workers[0]);
    return http_port > 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    forget_arrivals();
    return bw_harness_finish(&H, 0);
}

static int setup_flood(void **state)
{
    static const char *const env[] = {"WORKER_MAX_CONCURRENCY=8", "WORKER_TYPE_CONCURRENCY=sleep=0", NULL};
    return start(env);
}

static int setup_weights(void **state)
{
    static const char *const env[] = {"TENANT_WEIGHTS=acme=3,beta=1", "WORKER_MAX_CONCURRENCY=2",
                                      "WORKER_TYPE_CONCURRENCY=sleep=0", "LOG_LEVEL=debug", NULL};
    return start(env);
}

static int setup_tenant_cap(void **state)
{
    static const char *const env[] = {"TENANT_MAX_CONCURRENCY=2", "WORKER_MAX_CONCURRENCY=8",
                                      "WORKER_TYPE_CONCURRENCY=sleep=0", "LOG_LEVEL=debug", NULL};
    return start(env);
}

static int setup_tenant_queue(void **state)
{
    static const char *const env[] = {"TENANT_QUEUE_MAX=3",       "WORKER_QUEUE_MAX=6",
                                      "WORKER_MAX_CONCURRENCY=1", "WORKER_TYPE_CONCURRENCY=sleep=0",
                                      "LOG_LEVEL=debug",          NULL};
    return start(env);
}

static int setup_type_cap(void **state)
{
    static const char *const env[] = {"WORKER_TYPE_CONCURRENCY=sleep=2", "WORKER_MAX_CONCURRENCY=1",
                                      "LOG_LEVEL=debug", NULL};
    return start(env);
}

static int setup_deadline_tenant_cap(void **state)
{
    static const char *const env[] = {"TENANT_MAX_CONCURRENCY=1", "WORKER_MAX_CONCURRENCY=8",
                                      "WORKER_TYPE_CONCURRENCY=sleep=0", "LOG_LEVEL=debug", NULL};
    return start(env);
}

static int setup_deadline_type_cap(void **state)
{
    static const char *const env[] = {"WORKER_TYPE_CONCURRENCY=sleep=1", "WORKER_MAX_CONCURRENCY=8",
                                      "LOG_LEVEL=debug", NULL};
    return start(env);
}

static int setup_deadline_shared(void **state)
{
    static const char *const env[] = {"WORKER_MAX_CONCURRENCY=1", "WORKER_TYPE_CONCURRENCY=sleep=0",
                                      "LOG_LEVEL=debug", NULL};
    return start(env);
}

static int setup_tenant_labels(void **state)
{
    static const char *const env[] = {"METRICS_TENANT_LABELS=true", "WORKER_MAX_CONCURRENCY=1",
                                      "WORKER_TYPE_CONCURRENCY=sleep=0", "LOG_LEVEL=debug", NULL};
    return start(env);
}

/* ---- submitting ---- */

/* Publishes an assignment of tenant (payload and tenant_id header) without flushing: flush_all sends a
   batch at once. */
static void publish_as(const char *tenant, const char *id, const char *type, const char *payload,
                       int deadline_ms)
{
    char *s = bw_harness_tenant_assignment(tenant, id, type, payload, deadline_ms);
    assert_non_null(s);
    natsMsg *m = NULL;
    natsStatus st = natsMsg_Create(&m, BW_H_ASSIGN, NULL, s, (int)strlen(s));
    if (st == NATS_OK)
        st = natsMsgHeader_Set(m, "tenant_id", tenant);
    if (st == NATS_OK)
        st = natsMsgHeader_Set(m, "version", "1");
    if (st == NATS_OK)
        st = natsConnection_PublishMsg(bw_test_client_conn(H.client), m);
    natsMsg_Destroy(m);
    free(s);
    assert_int_equal(st, NATS_OK);
}

static void flush_all(void)
{
    assert_int_equal(natsConnection_FlushTimeout(bw_test_client_conn(H.client), 10000), NATS_OK);
}

static void submit_as(const char *tenant, const char *id, const char *type, const char *payload,
                      int deadline_ms)
{
    publish_as(tenant, id, type, payload, deadline_ms);
    flush_all();
}

/* A cancel naming no tenant (the router's): stops every job with the id. */
static void cancel(const char *id)
{
    assert_int_equal(bw_harness_cancel(&H, id, "test over"), 0);
}

/* ---- results in arrival order ---- */

static char *dup_field(json_t *j, const char *key)
{
    const char *s = json_string_value(json_object_get(j, key));
    return strdup(s != NULL ? s : "");
}

/* Appends the results that arrived since the last call; returns how many there are in all. */
static int pull(void)
{
    bw_test_msg_t *m;
    while ((m = bw_test_client_get(H.client, BW_H_RESULTS, narrivals)) != NULL) {
        if (narrivals == caparrivals) {
            caparrivals = caparrivals ? caparrivals * 2 : 1024;
            arrivals = realloc(arrivals, (size_t)caparrivals * sizeof *arrivals);
            assert_non_null(arrivals);
        }
        arrival_t *a = &arrivals[narrivals++];
        a->id = dup_field(m->json, "assignment_id");
        a->tenant = dup_field(m->json, "tenant_id");
        a->status = dup_field(m->json, "status");
        bw_test_msg_destroy(m);
    }
    return narrivals;
}

static int has_prefix(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Results so far whose assignment id starts with prefix. */
static int count_prefix(const char *prefix)
{
    int n = 0;
    pull();
    for (int i = 0; i < narrivals; i++)
        n += has_prefix(arrivals[i].id, prefix);
    return n;
}

/* Results so far for exactly id. */
static int count_id(const char *id)
{
    int n = 0;
    pull();
    for (int i = 0; i < narrivals; i++)
        n += strcmp(arrivals[i].id, id) == 0;
    return n;
}

/* Waits until n results with the id prefix arrived; fails when no result at all arrives for STALL_MS. */
static void await_prefix(const char *prefix, int n)
{
    int64_t last = bw_test_now_ms();
    int seen = pull(), got;
    while ((got = count_prefix(prefix)) < n) {
        bw_test_client_wait_count(H.client, BW_H_RESULTS, narrivals + 1, 200);
        if (pull() > seen) {
            seen = narrivals;
            last = bw_test_now_ms();
        } else if (bw_test_now_ms() - last > STALL_MS) {
            fail_msg("%d of %d results for %s*, none for %d ms", got, n, prefix, STALL_MS);
        }
    }
}

/* The result of id (waiting up to wait_ms), checked with the router's rules; caller decrefs. */
static json_t *must_result(const char *id, int wait_ms)
{
    json_t *r = bw_harness_result(&H, id, wait_ms);
    if (r == NULL)
        fail_msg("no result for %s within %d ms", id, wait_ms);
    return r;
}

static const char *str(json_t *r, const char *key)
{
    const char *s = json_string_value(json_object_get(r, key));
    return s != NULL ? s : "";
}

/* The result of id has this status (and error_code unless NULL). */
static void expect_result(const char *id, const char *status, const char *code)
{
    json_t *r = must_result(id, 20000);
    if (strcmp(str(r, "status"), status) != 0 || (code != NULL && strcmp(str(r, "error_code"), code) != 0))
        fail_msg("%s: status %s (%s: %s), expected %s %s", id, str(r, "status"), str(r, "error_code"),
                 str(r, "error_message"), status, code ? code : "");
    json_decref(r);
}

/* ---- the worker's debug log ---- */

/* Lines of the worker's log with "msg" msg whose assignment id is id, or starts with id when prefix. */
static int log_count_match(const char *msg, const char *id, int prefix)
{
    char *log = bw_test_read_file(H.workers[0].log_path, NULL), *save = NULL;
    int n = 0;
    for (char *line = log != NULL ? strtok_r(log, "\n", &save) : NULL; line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        if (strstr(line, id) == NULL || strstr(line, msg) == NULL)
            continue;
        json_t *j = json_loads(line, 0, NULL);
        const char *got = json_string_value(json_object_get(j, "assignment_id"));
        n += got != NULL && strcmp(str(j, "msg"), msg) == 0 &&
             (prefix ? has_prefix(got, id) : strcmp(got, id) == 0);
        json_decref(j);
    }
    free(log);
    return n;
}

static int log_count(const char *msg, const char *id)
{
    return log_count_match(msg, id, 0);
}

/* Waits until n "msg" lines for ids with the prefix are in the log. */
static void await_log_prefix(const char *msg, const char *prefix, int n, int timeout_ms)
{
    int64_t end = bw_test_now_ms() + timeout_ms;
    int got;
    while ((got = log_count_match(msg, prefix, 1)) < n) {
        if (bw_test_now_ms() > end) {
            bw_test_proc_dump_log(&H.workers[0]);
            fail_msg("%d \"%s\" lines for %s* in the worker's log, expected %d", got, msg, prefix, n);
        }
        bw_test_sleep_ms(10);
    }
}

/* The worker took id in: it runs or waits (not refused). */
static void await_admitted(const char *id)
{
    int64_t end = bw_test_now_ms() + 10000;
    while (log_count("job queued", id) + log_count("job accepted", id) == 0) {
        if (bw_test_now_ms() > end) {
            bw_test_proc_dump_log(&H.workers[0]);
            fail_msg("the worker never admitted %s", id);
        }
        bw_test_sleep_ms(10);
    }
}

static int most_running_at_once(const char *prefix, int *started)
{
    return bw_test_log_most_running(H.workers[0].log_path, prefix, started, NULL, NULL);
}

/* ---- /metrics ---- */

/* The worker's /metrics page, checked against the exposition format; caller frees. */
static char *metrics_page(void)
{
    int status = 0;
    char *body = NULL, why[300];
    assert_int_equal(bw_test_http(http_port, "GET", "/metrics", NULL, &status, &body, NULL), 0);
    assert_int_equal(status, 200);
    if (bw_prom_check(body, why, sizeof why) != 0)
        fail_msg("invalid /metrics: %s", why);
    return body;
}

/* Prints the page's scheduling samples (waiting, running, refused, per tenant) to stderr. */
static void dump_scheduling_series(const char *page)
{
    static const char *const keys[] = {"_waiting", "_running", "refused", "tenant"};
    fprintf(stderr, "/metrics, scheduling samples:\n");
    for (const char *line = page; *line != '\0';) {
        size_t len = strcspn(line, "\n");
        for (size_t k = 0; line[0] != '#' && k < N(keys); k++) {
            const char *hit = strstr(line, keys[k]);
            if (hit != NULL && hit < line + len) {
                fprintf(stderr, "  %.*s\n", (int)len, line);
                break;
            }
        }
        line += len + (line[len] == '\n');
    }
}

typedef struct want {
    const char *series;
    double value; /* NAN: the series must be absent */
} want_t;

static int holds(const char *page, const want_t *w)
{
    double v = bw_prom_value(page, w->series);
    return isnan(w->value) ? isnan(v) : v == w->value;
}

/* Polls /metrics until one page shows every wanted value; fails naming what differed after timeout_ms
   (the worker refreshes some series only every second). */
static void await_metrics(const want_t *w, size_t n, int timeout_ms)
{
    int64_t end = bw_test_now_ms() + timeout_ms;
    for (;;) {
        char *page = metrics_page();
        size_t ok = 0;
        while (ok < n && holds(page, &w[ok]))
            ok++;
        if (ok == n) {
            free(page);
            return;
        }
        if (bw_test_now_ms() > end) {
            double v = bw_prom_value(page, w[ok].series);
            dump_scheduling_series(page);
            free(page);
            fail_msg("%s is %g, expected %g", w[ok].series, v, w[ok].value);
        }
        free(page);
        bw_test_sleep_ms(20);
    }
}

/* ---- 1. a flood does not starve a small tenant ---- */

#define FLOOD_N 4000
#define SMALL_N 20

static void test_flood_does_not_starve_small_tenant(void **state)
{
    /* The flood's first 8 sleeps are long (gates) and hold the 8 slots while the worker takes in the other
       4,000 and the 20 echos, so that the backlog does not depend on how fast this machine reads them;
       cancelling the gates opens the race. First come first served would run the 4,000 first. */
    char id[32];
    for (int i = 0; i < 8; i++) {
        snprintf(id, sizeof id, "gate-%d", i);
        publish_as("flood", id, "sleep", LONG_SLEEP, LONG_DEADLINE);
    }
    for (int i = 0; i < FLOOD_N; i++) {
        snprintf(id, sizeof id, "flood-%d", i);
        publish_as("flood", id, "sleep", "{\"ms\":10}", FAR_DEADLINE);
    }
    flush_all();
    const want_t flood_in[] = {{WAITING("sleep"), FLOOD_N}, {RUNNING("sleep"), 8}};
    await_metrics(flood_in, N(flood_in), 120000);
    double waiting = FLOOD_N;
    int before = pull();
    int64_t t0 = bw_test_now_ms();
    for (int i = 0; i < SMALL_N; i++) {
        char payload[32];
        snprintf(id, sizeof id, "small-%d", i);
        snprintf(payload, sizeof payload, "{\"i\":%d}", i);
        publish_as("small", id, "echo", payload, FAR_DEADLINE);
    }
    flush_all();
    const want_t small_in[] = {{WAITING("echo"), SMALL_N}, {TENANTS_WAITING, 2}};
    await_metrics(small_in, N(small_in), 60000);
    for (int i = 0; i < 8; i++) {
        snprintf(id, sizeof id, "gate-%d", i);
        cancel(id);
    }
    await_prefix("small-", SMALL_N);
    long long took = (long long)(bw_test_now_ms() - t0);
    int last = -1;
    for (int i = before; i < narrivals; i++)
        if (has_prefix(arrivals[i].id, "small-"))
            last = i;
    int flood_between = 0;
    for (int i = before; i < last; i++)
        flood_between += has_prefix(arrivals[i].id, "flood-");
    printf("FAIRNESS small-tenant: last echo after %d flood results, %lld ms (%.0f were waiting)\n",
           flood_between, took, waiting);
    /* one flood start per echo start, and a margin; first come first served: 4,000 */
    assert_true(flood_between <= 8 + SMALL_N + 40);

    /* every flood job answered exactly once, successfully; a last echo is the barrier for stragglers */
    await_prefix("flood-", FLOOD_N);
    submit_as("small", "small-barrier", "echo", "{}", FAR_DEADLINE);
    expect_result("small-barrier", "success", NULL);
    pull();
    unsigned char *seen = calloc(FLOOD_N, 1);
    int small = 0, gates = 0, other = 0;
    for (int i = 0; i < narrivals; i++) {
        const arrival_t *a = &arrivals[i];
        if (has_prefix(a->id, "flood-")) {
            int k = atoi(a->id + 6);
            assert_true(k >= 0 && k < FLOOD_N);
            if (seen[k]++ != 0)
                fail_msg("a second result for %s", a->id);
            if (strcmp(a->status, "success") != 0 || strcmp(a->tenant, "flood") != 0)
                fail_msg("%s: status %s, tenant %s", a->id, a->status, a->tenant);
        } else if (has_prefix(a->id, "small-")) {
            small++;
            assert_string_equal(a->status, "success");
            assert_string_equal(a->tenant, "small");
        } else if (has_prefix(a->id, "gate-")) {
            gates++;
            assert_string_equal(a->status, "cancelled");
        } else {
            other++;
        }
    }
    free(seen);
    assert_int_equal(small, SMALL_N + 1);
    assert_int_equal(gates, 8);
    assert_int_equal(other, 0);
    assert_int_equal(narrivals, FLOOD_N + SMALL_N + 1 + 8);
}

/* ---- 2. weights ---- */

#define WEIGHTS_N 600

static void test_weights_share_completions(void **state)
{
    /* Two long sleeps of a third tenant hold both slots while every job is taken in, so that both tenants
       are backlogged from the first start on; cancelling them opens the race. */
    submit_as("gate", "gate-0", "sleep", LONG_SLEEP, LONG_DEADLINE);
    submit_as("gate", "gate-1", "sleep", LONG_SLEEP, LONG_DEADLINE);
    await_log_prefix("job started", "gate-", 2, 10000);
    char id[32];
    for (int i = 0; i < WEIGHTS_N; i++) {
        snprintf(id, sizeof id, "acme-%d", i);
        publish_as("acme", id, "sleep", "{\"ms\":3}", FAR_DEADLINE);
        snprintf(id, sizeof id, "beta-%d", i);
        publish_as("beta", id, "sleep", "{\"ms\":3}", FAR_DEADLINE);
    }
    flush_all();
    const want_t all_in[] = {{WAITING("sleep"), 2 * WEIGHTS_N}, {RUNNING("sleep"), 2}, {TENANTS_WAITING, 2}};
    await_metrics(all_in, N(all_in), 60000);
    cancel("gate-0");
    cancel("gate-1");
    await_prefix("acme-", WEIGHTS_N);
    await_prefix("beta-", WEIGHTS_N);
    pull();
    /* completions in arrival order up to acme's last one, and in the first 400 */
    int acme = 0, beta = 0, beta_before_last_acme = 0, first_acme = 0, first_beta = 0;
    for (int i = 0; i < narrivals; i++) {
        const arrival_t *a = &arrivals[i];
        int is_acme = has_prefix(a->id, "acme-"), is_beta = has_prefix(a->id, "beta-");
        if (!is_acme && !is_beta)
            continue;
        assert_string_equal(a->status, "success");
        if (acme + beta < 400) {
            first_acme += is_acme;
            first_beta += is_beta;
        }
        acme += is_acme;
        beta += is_beta;
        if (is_acme)
            beta_before_last_acme = beta;
    }
    assert_int_equal(acme, WEIGHTS_N);
    assert_int_equal(beta, WEIGHTS_N);
    double ratio = beta_before_last_acme ? (double)WEIGHTS_N / beta_before_last_acme : INFINITY;
    printf("FAIRNESS weights: acme %d beta %d ratio %.2f (first 400: acme %d beta %d)\n", WEIGHTS_N,
           beta_before_last_acme, ratio, first_acme, first_beta);
    assert_true(ratio >= 3.0 * 0.85 && ratio <= 3.0 * 1.15);
    expect_result("gate-0", "cancelled", "CANCELLED");
    expect_result("gate-1", "cancelled", "CANCELLED");
}

/* ---- 3. TENANT_MAX_CONCURRENCY ---- */

static void test_tenant_cap(void **state)
{
    char id[32];
    for (int i = 0; i < 6; i++) {
        snprintf(id, sizeof id, "capA-%d", i);
        submit_as("A", id, "sleep", LONG_SLEEP, LONG_DEADLINE);
    }
    await_admitted("capA-5");
    await_log_prefix("job started", "capA-", 2, 10000);
    const want_t capped[] = {{RUNNING("sleep"), 2}, {WAITING("sleep"), 4}, {TENANTS_WAITING, 1}};
    await_metrics(capped, N(capped), 10000);
    /* B's echo runs on one of the six free shared slots while A's four wait */
    submit_as("B", "capB-0", "echo", "{\"b\":1}", LONG_DEADLINE);
    expect_result("capB-0", "success", NULL);
    assert_int_equal(count_prefix("capA-"), 0);
    int started = 0;
    assert_int_equal(most_running_at_once("capA-", &started), 2);
    assert_int_equal(started, 2);
    await_metrics(capped, N(capped), 10000);
    /* without METRICS_TENANT_LABELS no series names a tenant, though a tenant has work waiting */
    char *page = metrics_page();
    if (strstr(page, "tenant=") != NULL)
        fail_msg("a tenant label without METRICS_TENANT_LABELS: %s", strstr(page, "tenant="));
    assert_null(strstr(page, "beamline_worker_tenant_jobs_"));
    free(page);
    for (int i = 0; i < 6; i++) {
        snprintf(id, sizeof id, "capA-%d", i);
        cancel(id);
    }
    for (int i = 0; i < 6; i++) {
        snprintf(id, sizeof id, "capA-%d", i);
        expect_result(id, "cancelled", "CANCELLED");
    }
}

/* ---- 4. TENANT_QUEUE_MAX and WORKER_QUEUE_MAX ---- */

/* The result of id is a QUEUE_FULL refusal whose message names the variable. */
static void expect_queue_full(const char *id, const char *variable)
{
    json_t *r = must_result(id, 20000);
    assert_string_equal(str(r, "status"), "error");
    assert_string_equal(str(r, "error_code"), "QUEUE_FULL");
    if (strstr(str(r, "error_message"), variable) == NULL)
        fail_msg("%s: \"%s\" does not name %s", id, str(r, "error_message"), variable);
    json_decref(r);
}

static void test_tenant_queue(void **state)
{
    /* A: one running (the only shared slot), three waiting: its tenant queue is full */
    char id[32];
    for (int i = 0; i < 4; i++) {
        snprintf(id, sizeof id, "qA-%d", i);
        submit_as("A", id, "sleep", LONG_SLEEP, LONG_DEADLINE);
    }
    await_admitted("qA-3");
    submit_as("A", "qA-4", "sleep", LONG_SLEEP, LONG_DEADLINE);
    expect_queue_full("qA-4", "TENANT_QUEUE_MAX");
    /* B is still taken in, and C and E up to WORKER_QUEUE_MAX (6) waiting */
    submit_as("B", "qB-0", "echo", "{}", LONG_DEADLINE);
    await_admitted("qB-0");
    submit_as("C", "qC-0", "echo", "{}", LONG_DEADLINE);
    submit_as("E", "qE-0", "echo", "{}", LONG_DEADLINE);
    await_admitted("qE-0");
    const want_t one[] = {{REFUSED("queue_full_tenant"), 1},
                          {REFUSED("queue_full_global"), 0},
                          {RUNNING("sleep"), 1},
                          {WAITING("sleep"), 3},
                          {WAITING("echo"), 3},
                          {TENANTS_WAITING, 4}};
    await_metrics(one, N(one), 10000);
    /* D, with nothing waiting, meets the worker's queue; A meets its own first */
    submit_as("D", "qD-0", "echo", "{}", LONG_DEADLINE);
    expect_queue_full("qD-0", "WORKER_QUEUE_MAX");
    submit_as("A", "qA-5", "sleep", LONG_SLEEP, LONG_DEADLINE);
    expect_queue_full("qA-5", "TENANT_QUEUE_MAX");
    const want_t two[] = {{REFUSED("queue_full_tenant"), 2},
                          {REFUSED("queue_full_global"), 1},
                          {WAITING("sleep"), 3},
                          {WAITING("echo"), 3}};
    await_metrics(two, N(two), 10000);
    for (int i = 0; i < 3; i++)
        assert_int_equal(count_id(i == 0 ? "qB-0" : i == 1 ? "qC-0" : "qE-0"), 0);
    /* the slot frees: the other tenants' echos run before A's next sleep (A has had a start, they have
       not; with one more echo of C, A's next sleep would tie with it and go first as the older job) */
    cancel("qA-0");
    expect_result("qA-0", "cancelled", "CANCELLED");
    expect_result("qB-0", "success", NULL);
    expect_result("qC-0", "success", NULL);
    expect_result("qE-0", "success", NULL);
    await_log_prefix("job started", "qA-1", 1, 10000);
    for (int i = 1; i < 4; i++) {
        snprintf(id, sizeof id, "qA-%d", i);
        cancel(id);
    }
    for (int i = 1; i < 4; i++) {
        snprintf(id, sizeof id, "qA-%d", i);
        expect_result(id, "cancelled", "CANCELLED");
    }
    assert_int_equal(log_count("job started", "qA-4") + log_count("job started", "qA-5"), 0);
}

/* ---- 5. WORKER_TYPE_CONCURRENCY ---- */

static void test_type_cap(void **state)
{
    char id[32];
    for (int i = 0; i < 4; i++) {
        snprintf(id, sizeof id, "tA-sleep-%d", i);
        submit_as("A", id, "sleep", LONG_SLEEP, LONG_DEADLINE);
    }
    await_admitted("tA-sleep-3");
    /* two sleeps run at once with one shared slot: their pool is beside it */
    await_log_prefix("job started", "tA-sleep-", 2, 10000);
    const want_t capped[] = {{RUNNING("sleep"), 2}, {WAITING("sleep"), 2}};
    await_metrics(capped, N(capped), 10000);
    /* echos of the same tenant and of another pass the waiting sleeps, on the shared slot */
    submit_as("A", "tA-echo", "echo", "{\"a\":1}", LONG_DEADLINE);
    submit_as("B", "tB-echo", "echo", "{\"b\":1}", LONG_DEADLINE);
    expect_result("tA-echo", "success", NULL);
    expect_result("tB-echo", "success", NULL);
    assert_int_equal(count_prefix("tA-sleep-"), 0);
    int started = 0;
    assert_int_equal(most_running_at_once("tA-sleep-", &started), 2);
    assert_int_equal(started, 2);
    const want_t after[] = {
        {RUNNING("sleep"), 2}, {WAITING("sleep"), 2}, {RUNNING("echo"), 0}, {WAITING("echo"), 0}};
    await_metrics(after, N(after), 10000);
    for (int i = 0; i < 4; i++) {
        snprintf(id, sizeof id, "tA-sleep-%d", i);
        cancel(id);
    }
    for (int i = 0; i < 4; i++) {
        snprintf(id, sizeof id, "tA-sleep-%d", i);
        expect_result(id, "cancelled", "CANCELLED");
    }
}

/* ---- 6. deadlines of waiting jobs ---- */

/* run_id (tenant A, a long sleep) holds what wait_id (tenant wait_tenant, wait_type) needs; wait_id's
   300 ms deadline passes while it waits: it is answered `timeout`, counted from its reception, while
   run_id still runs, and it never starts. */
static void deadline_while_waiting(const char *run_id, const char *wait_id, const char *wait_tenant,
                                   const char *wait_type, const char *const *metrics_series)
{
    submit_as("A", run_id, "sleep", LONG_SLEEP, LONG_DEADLINE);
    await_log_prefix("job started", run_id, 1, 10000);
    int64_t t0 = bw_test_now_ms();
    submit_as(wait_tenant, wait_id, wait_type, "{\"ms\":10}", 300);
    json_t *r = must_result(wait_id, 20000);
    int64_t took = bw_test_now_ms() - t0;
    assert_string_equal(str(r, "status"), "timeout");
    assert_string_equal(str(r, "error_code"), "TIMEOUT");
    json_decref(r);
    assert_true(took >= 300 - 50); /* 50 ms: the worker's timers count from its loop time */
    assert_int_equal(count_id(run_id), 0);
    /* it did wait, and left the queue */
    assert_true(log_count("job queued", wait_id) == 1);
    const want_t drained[] = {{metrics_series[0], 1}, {metrics_series[1], 0}};
    await_metrics(drained, N(drained), 10000);
    cancel(run_id);
    expect_result(run_id, "cancelled", "CANCELLED");
    /* the cancel's result was published after anything the expired job could have caused */
    assert_int_equal(log_count("job started", wait_id), 0);
    assert_int_equal(count_id(wait_id), 1);
}

/* (a) behind the tenant cap (shared slots free) */
static void test_deadline_behind_tenant_cap(void **state)
{
    static const char *const series[] = {RUNNING("sleep"), WAITING("sleep")};
    deadline_while_waiting("dA-run", "dA-wait", "A", "sleep", series);
}

/* (b) behind a type cap (another tenant, shared slots free) */
static void test_deadline_behind_type_cap(void **state)
{
    static const char *const series[] = {RUNNING("sleep"), WAITING("sleep")};
    deadline_while_waiting("dT-run", "dT-wait", "B", "sleep", series);
}

/* (c) behind full shared slots (another tenant, another type) */
static void test_deadline_behind_shared_slots(void **state)
{
    static const char *const series[] = {RUNNING("sleep"), WAITING("echo")};
    deadline_while_waiting("dS-run", "dS-wait", "B", "echo", series);
}

/* ---- 7. METRICS_TENANT_LABELS ---- */

#define WEIRD_TENANT "we\"ird\\x"
#define WEIRD_LABEL "we\\\"ird\\\\x" /* escaped per the text format */

static void test_tenant_labels(void **state)
{
    char id[32];
    for (int i = 0; i < 3; i++) {
        snprintf(id, sizeof id, "mA-%d", i);
        submit_as("acme", id, "sleep", LONG_SLEEP, LONG_DEADLINE);
    }
    submit_as(WEIRD_TENANT, "mW-0", "echo", "{}", LONG_DEADLINE);
    await_admitted("mW-0");
    const want_t labelled[] = {{SERIES("tenant_jobs_waiting", "tenant", "acme"), 2},
                               {SERIES("tenant_jobs_running", "tenant", "acme"), 1},
                               {SERIES("tenant_jobs_waiting", "tenant", WEIRD_LABEL), 1},
                               {TENANTS_WAITING, 2}};
    await_metrics(labelled, N(labelled), 10000);
    for (int i = 0; i < 3; i++) {
        snprintf(id, sizeof id, "mA-%d", i);
        cancel(id);
    }
    for (int i = 0; i < 3; i++) {
        snprintf(id, sizeof id, "mA-%d", i);
        expect_result(id, "cancelled", "CANCELLED");
    }
    expect_result("mW-0", "success", NULL);
    /* nothing waits any more: the series say so (zero or gone) within the refresh */
    int64_t end = bw_test_now_ms() + 10000;
    for (;;) {
        char *page = metrics_page();
        double a = bw_prom_value(page, SERIES("tenant_jobs_waiting", "tenant", "acme"));
        double w = bw_prom_value(page, SERIES("tenant_jobs_waiting", "tenant", WEIRD_LABEL));
        free(page);
        if ((isnan(a) || a == 0) && (isnan(w) || w == 0))
            break;
        if (bw_test_now_ms() > end)
            fail_msg("tenant series still show waiting jobs: acme %g, weird %g", a, w);
        bw_test_sleep_ms(50);
    }
}

/* ---- 8. invalid configuration ---- */

/* assignment stops the worker with exit code 2 and an error naming name (and hint, unless NULL): the
   configuration check, one-shot exec, and a real start. */
static void check_invalid(const char *assignment, const char *name, const char *hint)
{
    static const char *const check_args[] = {"check-config", NULL}, *const exec_args[] = {"exec", NULL};
    static const char *const *const cmds[] = {check_args, exec_args};
    const char *const env[] = {assignment, NULL};
    bw_test_cli_t r;
    for (size_t i = 0; i < N(cmds); i++) {
        bw_test_cli_run(&r, cmds[i], env, "{\"type\":\"echo\"}");
        int bad = r.rc != 2 || strstr(r.err, name) == NULL || (hint != NULL && strstr(r.err, hint) == NULL);
        if (bad) {
            fprintf(stderr, "%s with %s:\n", cmds[i][0], assignment);
            bw_test_cli_dump(&r);
        }
        assert_int_equal(r.rc, 2);
        assert_string_equal(r.out, "");
        assert_non_null(strstr(r.err, name));
        if (hint != NULL)
            assert_non_null(strstr(r.err, hint));
        bw_test_cli_dispose(&r);
    }
    /* the worker itself: it exits 2 before reaching for NATS (nothing listens on the port: a worker
       that took the value would retry there until killed) */
    char url[64];
    int port = bw_test_closed_port(), code = -1;
    assert_true(port > 0);
    snprintf(url, sizeof url, "NATS_URL=nats://127.0.0.1:%d", port);
    const char *const run_env[] = {assignment, url, "HEALTH_BIND=127.0.0.1:0", NULL};
    bw_test_proc_t p;
    assert_int_equal(bw_test_proc_start(&p, NULL, run_env), 0);
    int exited = bw_test_proc_wait(&p, 15000, &code) == 0;
    int named = bw_test_proc_log_count(&p, name) > 0;
    if (!exited || code != 2 || !named)
        bw_test_proc_dump_log(&p);
    bw_test_proc_stop(&p);
    if (!exited)
        fail_msg("the worker started with %s", assignment);
    assert_int_equal(code, 2);
    assert_true(named);
}

static void test_invalid_configuration(void **state)
{
    check_invalid("TENANT_WEIGHTS=acme=0", "TENANT_WEIGHTS", "1..1000");
    check_invalid("TENANT_WEIGHTS=acme", "TENANT_WEIGHTS", NULL);
    check_invalid("WORKER_TYPE_CONCURRENCY=nosuchtype=3", "WORKER_TYPE_CONCURRENCY", "nosuchtype");
    check_invalid("WORKER_TYPE_CONCURRENCY=sleep=-1", "WORKER_TYPE_CONCURRENCY", "0..100000");
    check_invalid("TENANT_MAX_CONCURRENCY=-1", "TENANT_MAX_CONCURRENCY", "0..100000");
    check_invalid("TENANT_QUEUE_MAX=-1", "TENANT_QUEUE_MAX", "0..1000000");
    check_invalid("METRICS_TENANT_LABELS=maybe", "METRICS_TENANT_LABELS", NULL);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest flood[] = {
        cmocka_unit_test_setup_teardown(test_flood_does_not_starve_small_tenant, setup_flood, teardown)};
    const struct CMUnitTest weights[] = {
        cmocka_unit_test_setup_teardown(test_weights_share_completions, setup_weights, teardown)};
    const struct CMUnitTest caps[] = {
        cmocka_unit_test_setup_teardown(test_tenant_cap, setup_tenant_cap, teardown),
        cmocka_unit_test_setup_teardown(test_tenant_queue, setup_tenant_queue, teardown),
        cmocka_unit_test_setup_teardown(test_type_cap, setup_type_cap, teardown),
    };
    const struct CMUnitTest deadlines[] = {
        cmocka_unit_test_setup_teardown(test_deadline_behind_tenant_cap, setup_deadline_tenant_cap, teardown),
        cmocka_unit_test_setup_teardown(test_deadline_behind_type_cap, setup_deadline_type_cap, teardown),
        cmocka_unit_test_setup_teardown(test_deadline_behind_shared_slots, setup_deadline_shared, teardown),
    };
    const struct CMUnitTest labels[] = {
        cmocka_unit_test_setup_teardown(test_tenant_labels, setup_tenant_labels, teardown)};
    const struct CMUnitTest config[] = {
        cmocka_unit_test_teardown(test_invalid_configuration, bw_test_cli_free_live)};
    const bw_test_group_t groups[] = {
        {"fairness_flood", flood, N(flood), NULL, NULL},
        {"fairness_weights", weights, N(weights), NULL, NULL},
        {"fairness_caps", caps, N(caps), NULL, NULL},
        {"fairness_deadlines", deadlines, N(deadlines), NULL, NULL},
        {"fairness_tenant_labels", labels, N(labels), NULL, NULL},
        {"fairness_config", config, N(config), NULL, NULL},
    };
    /* BW_FAIRNESS_GROUP=<part of a group name> runs only the matching groups (while working on one) */
    int failed = bw_test_run_groups(argc, argv, groups, N(groups), "BW_FAIRNESS_GROUP");
    nats_CloseAndWait(2000);
    return bw_test_exit_status(failed);
}
