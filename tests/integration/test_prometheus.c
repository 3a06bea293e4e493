/*
 * Integration: the worker's metrics, the Grafana dashboard (deploy/grafana/beamline-worker.json) and the
 * alert rules (deploy/prometheus/alerts.yml) against a real Prometheus (tests/support/prometheus.c)
 * scraping a real worker every second, on a real nats-server.
 *
 * Once Prometheus has scraped the idle worker, the test runs echo jobs, a sleep job that fails (its
 * payload is invalid) and one message that is not JSON (a PARSE_ERROR dead letter), then, through
 * Prometheus' HTTP API:
 * - the series and their labels arrived, with the values the worker's own /metrics shows;
 * - every PromQL expression of every dashboard panel (Grafana's variables replaced by this worker's job
 *   and instance) parses and returns data, and the panels about the traffic the test made show it
 *   (non-zero rates for echo and sleep, the error, the dead letter, a finite latency), and the
 *   dashboard's variable queries find this worker;
 * - the rule group of alerts.yml is loaded whole and every rule evaluates without error; the alerts of
 *   a sick worker stay inactive for this healthy one, and the dead-letter alert goes pending for the
 *   letter the test made, with its reason and instance labels;
 * - a stopped worker (SIGSTOP) fails its scrapes and BeamlineWorkerDown goes pending for it.
 * Waits poll Prometheus until what is expected is there, with generous deadlines; no sleep is an
 * assertion. Without Prometheus (Debian package prometheus) the program skips, except under CI.
 */
#include <curl/curl.h>
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "prometheus.h"
#include "testutil.h"

#define ECHOES 8
#define WAIT_MS 20000 /* for a value to show up in Prometheus: scrapes are 1 s apart, CI is slow */
#define POLL_MS 100
#define JOB "beamline-worker"
#define ALERTS_PATH BW_TEST_SUPPORT_DIR "/../../deploy/prometheus/alerts.yml"
#define DASHBOARD_PATH BW_TEST_SUPPORT_DIR "/../../deploy/grafana/beamline-worker.json"

static bw_harness_t H;
static bw_test_prom_t P;
static int port;          /* the worker's health server */
static char instance[64]; /* its target label in Prometheus: 127.0.0.1:<port> */

/* ---- helpers ------------------------------------------------------------------------------------- */

static void fail_with_logs(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail_with_logs(const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    bw_test_prom_dump_log(&P);
    for (int i = 0; i < H.nworkers; i++)
        bw_test_proc_dump_log(&H.workers[i]);
    fail_msg("%s", msg);
}

/* The value of the single sample promql returns, or NAN when it returns none; fails on an error answer
   or on more than one sample. */
static double query_one(const char *promql)
{
    json_t *a = bw_test_prom_query(&P, promql);
    json_t *v = bw_test_prom_vector(a);
    if (v == NULL) {
        char *s = a != NULL ? json_dumps(a, 0) : NULL;
        fail_with_logs("query %s: no vector answer: %s", promql, s != NULL ? s : "(no answer)");
    }
    if (json_array_size(v) > 1)
        fail_with_logs("query %s: %zu samples, want at most one", promql, json_array_size(v));
    double d = json_array_size(v) == 1 ? bw_test_prom_sample_value(json_array_get(v, 0)) : NAN;
    json_decref(a);
    return d;
}

/* Polls until promql's single sample equals want; fails with the last value after WAIT_MS. */
static void wait_value(const char *promql, double want)
{
    int64_t deadline = bw_test_now_ms() + WAIT_MS;
    double got;
    while ((got = query_one(promql)) != want) {
        if (bw_test_now_ms() > deadline)
            fail_with_logs("query %s: %g after %d ms, want %g", promql, got, WAIT_MS, want);
        bw_test_sleep_ms(POLL_MS);
    }
}

/* The label's value in a sample's metric, or NULL. */
static const char *label(json_t *sample, const char *name)
{
    return json_string_value(json_object_get(json_object_get(sample, "metric"), name));
}

/* The number of "- alert:" rules in alerts.yml, read from the file the test loads into Prometheus. */
static int alerts_in_file(void)
{
    char *text = bw_test_read_file(ALERTS_PATH, NULL);
    int n = 0;
    assert_non_null(text);
    for (const char *s = text; (s = strstr(s, "- alert: ")) != NULL; s++)
        n++;
    free(text);
    return n;
}

/* ---- fixture ------------------------------------------------------------------------------------- */

static int wait_result(const char *id, const char *want_status)
{
    json_t *r = bw_harness_result(&H, id, 10000);
    const char *status = json_string_value(json_object_get(r, "status"));
    int ok = status != NULL && strcmp(status, want_status) == 0;
    if (!ok)
        fprintf(stderr, "job %s: status %s, want %s\n", id, status != NULL ? status : "(no result)",
                want_status);
    json_decref(r);
    return ok ? 0 : -1;
}

/* Echo jobs, one sleep job with an invalid payload (status error), one message that is not JSON (a
   PARSE_ERROR dead letter): each waited for at the worker, so Prometheus' next scrape sees them all. */
static int make_traffic(void)
{
    char id[32];
    for (int i = 0; i < ECHOES; i++) {
        snprintf(id, sizeof id, "prom-echo-%d", i);
        if (bw_harness_submit(&H, id, "echo", "{\"n\":1}", 10000) != 0 || wait_result(id, "success") != 0)
            return -1;
    }
    if (bw_harness_submit(&H, "prom-bad-sleep", "sleep", "{\"ms\":\"soon\"}", 10000) != 0 ||
        wait_result("prom-bad-sleep", "error") != 0)
        return -1;
    if (bw_harness_publish_raw(&H, "{not json", NULL) != 0)
        return -1;
    int64_t deadline = bw_test_now_ms() + 10000;
    while (bw_harness_metric(&H, "beamline_worker_dlq_entries_total{reason=\"PARSE_ERROR\"}") != 1) {
        if (bw_test_now_ms() > deadline) {
            fprintf(stderr, "the worker did not count the PARSE_ERROR dead letter\n");
            return -1;
        }
        bw_test_sleep_ms(POLL_MS);
    }
    return 0;
}

static int setup(void **state)
{
    static const char *const env[] = {"WORKER_ID=prom-test", "WORKER_MAX_CONCURRENCY=3", NULL};
    char rules[4096], config[8192];

    port = bw_harness_start_http(&H, env);
    if (port <= 0)
        return -1;
    snprintf(instance, sizeof instance, "127.0.0.1:%d", port);
    if (realpath(ALERTS_PATH, rules) == NULL) {
        fprintf(stderr, "%s: not found\n", ALERTS_PATH);
        return -1;
    }
    /* The job name the rules expect (alerts.yml's header); 1 s scrapes and evaluations, so that the
       test waits seconds, not minutes. */
    snprintf(config, sizeof config,
             "global:\n"
             "  scrape_interval: 1s\n"
             "  scrape_timeout: 1s\n"
             "  evaluation_interval: 1s\n"
             "rule_files:\n"
             "  - %s\n"
             "scrape_configs:\n"
             "  - job_name: " JOB "\n"
             "    static_configs:\n"
             "      - targets: ['%s']\n",
             rules, instance);
    if (bw_test_prom_start(&P, config) != 0)
        return -1;
    /* The idle worker scraped once, before the traffic: the counters' rise is then between two samples,
       which rate() and increase() need to see it. */
    char up[128];
    snprintf(up, sizeof up, "up{job=\"" JOB "\",instance=\"%s\"}", instance);
    int64_t deadline = bw_test_now_ms() + WAIT_MS;
    for (;;) {
        json_t *a = bw_test_prom_query(&P, up);
        json_t *v = bw_test_prom_vector(a);
        double d = json_array_size(v) == 1 ? bw_test_prom_sample_value(json_array_get(v, 0)) : NAN;
        json_decref(a);
        if (d == 1)
            break;
        if (bw_test_now_ms() > deadline) {
            fprintf(stderr, "Prometheus never scraped the worker at %s\n", instance);
            bw_test_prom_dump_log(&P);
            return -1;
        }
        bw_test_sleep_ms(POLL_MS);
    }
    return make_traffic();
}

static int teardown(void **state)
{
    if (H.nworkers > 0)
        bw_test_proc_signal(&H.workers[0], SIGCONT); /* in case the stop test failed with it stopped */
    bw_test_prom_stop(&P);
    return bw_harness_finish(&H, 0);
}

/* ---- the series ---------------------------------------------------------------------------------- */

/* Each series the traffic moved reaches Prometheus with the worker's value and the target's labels. */
static void test_series_and_labels_arrive(void **state)
{
    static const char *const series[] = {
        "beamline_worker_jobs_total{job_type=\"echo\",status=\"success\"}",
        "beamline_worker_jobs_received_total{job_type=\"echo\"}",
        "beamline_worker_job_duration_seconds_count{job_type=\"echo\"}",
        "beamline_worker_job_duration_seconds_bucket{job_type=\"echo\",le=\"+Inf\"}",
        "beamline_worker_jobs_total{job_type=\"sleep\",status=\"error\"}",
        "beamline_worker_dlq_entries_total{reason=\"PARSE_ERROR\"}",
        "beamline_worker_max_concurrency",
        "beamline_worker_ready",
        "beamline_worker_nats_connected",
    };
    char q[512];
    for (size_t i = 0; i < sizeof series / sizeof series[0]; i++) {
        /* What the worker says now; the traffic is over, so it no longer moves. */
        double want = bw_harness_metric(&H, series[i]);
        if (isnan(want))
            fail_with_logs("%s: not on the worker's /metrics", series[i]);
        const char *brace = strchr(series[i], '{');
        if (brace != NULL)
            snprintf(q, sizeof q, "%.*s{job=\"" JOB "\",instance=\"%s\",%s", (int)(brace - series[i]),
                     series[i], instance, brace + 1);
        else
            snprintf(q, sizeof q, "%s{job=\"" JOB "\",instance=\"%s\"}", series[i], instance);
        wait_value(q, want);
    }
    /* What the traffic was, as Prometheus sees it: not only equal to /metrics, but right. */
    snprintf(q, sizeof q, "sum(beamline_worker_jobs_total{instance=\"%s\",job_type=\"echo\"})", instance);
    assert_true(query_one(q) == ECHOES);
    snprintf(q, sizeof q, "beamline_worker_max_concurrency{instance=\"%s\"}", instance);
    assert_true(query_one(q) == 3);

    /* The labels: every job type series carries job, instance, job_type and status, and the build info
       the version the worker reports. */
    json_t *a = bw_test_prom_query(&P, "beamline_worker_jobs_total");
    json_t *v = bw_test_prom_vector(a);
    assert_non_null(v);
    assert_true(json_array_size(v) > 0);
    size_t i;
    json_t *s;
    json_array_foreach(v, i, s)
    {
        assert_string_equal(label(s, "job"), JOB);
        assert_string_equal(label(s, "instance"), instance);
        assert_non_null(label(s, "job_type"));
        assert_non_null(label(s, "status"));
    }
    json_decref(a);
    char *ver = NULL;
    const char *const args[] = {"--version", NULL};
    assert_int_equal(bw_test_run(args, NULL, NULL, &ver, NULL), 0);
    a = bw_test_prom_query(&P, "beamline_worker_build_info");
    v = bw_test_prom_vector(a);
    assert_int_equal(json_array_size(v), 1);
    const char *version = label(json_array_get(v, 0), "version");
    assert_non_null(version);
    assert_non_null(label(json_array_get(v, 0), "commit"));
    if (strstr(ver, version) == NULL)
        fail_msg("build_info version %s is not in --version's %s", version, ver);
    free(ver);
    json_decref(a);
}

/* ---- the dashboard ------------------------------------------------------------------------------- */

/* What the panels about the test's traffic must show: in panel `title`, target `ref`, a sample whose
   label `name` (NULL = any sample) is `value` (NULL = any value), with a value that is finite, non-zero, or
   exactly 1. */
typedef enum { FINITE, POSITIVE, ONE } want_t;
static const char *const want_names[] = {"finite", "positive", "1"};
typedef struct expect {
    const char *title, *ref, *name, *value;
    want_t want;
    int seen;
} expect_t;

static expect_t expects[] = {
    {"Throughput by job type", "A", "job_type", "echo", POSITIVE, 0},
    {"Throughput by job type", "A", "job_type", "sleep", POSITIVE, 0},
    {"Errors by job type", "A", "job_type", "sleep", POSITIVE, 0},
    {"Error ratio by job type", "A", "job_type", "sleep", ONE, 0},
    {"Error ratio by job type", "A", "job_type", "echo", FINITE, 0},
    {"Latency percentiles", "A", "job_type", "echo", POSITIVE, 0},
    {"Latency percentiles", "B", "job_type", "echo", POSITIVE, 0},
    {"Latency percentiles", "C", "job_type", "echo", POSITIVE, 0},
    {"Mean latency", "A", "job_type", "echo", POSITIVE, 0},
    {"Assignments received and duplicates", "A", "job_type", "echo", POSITIVE, 0},
    {"In flight and queue", "C", NULL, NULL, POSITIVE, 0},
    {"Ready and draining", "A", NULL, NULL, ONE, 0},
    {"Load", "A", NULL, NULL, FINITE, 0},
    {"Dead letters by reason", "A", "reason", "PARSE_ERROR", POSITIVE, 0},
    {"DLQ file", "A", NULL, NULL, POSITIVE, 0},
    {"NATS connection", "A", NULL, NULL, ONE, 0},
    {"Heartbeats", "A", NULL, NULL, POSITIVE, 0},
    {"Resident memory", "A", NULL, NULL, POSITIVE, 0},
    {"CPU", "A", NULL, NULL, POSITIVE, 0},
    {"Workers", "A", "version", NULL, POSITIVE, 0},
};
#define NEXPECTS (sizeof expects / sizeof expects[0])

/* Replaces every occurrence of from in *s by to (reallocating *s). */
static void replace_all(char **s, const char *from, const char *to)
{
    char *at;
    size_t flen = strlen(from), tlen = strlen(to);
    while ((at = strstr(*s, from)) != NULL) {
        size_t off = (size_t)(at - *s), len = strlen(*s);
        char *n = malloc(len - flen + tlen + 1);
        assert_non_null(n);
        memcpy(n, *s, off);
        memcpy(n + off, to, tlen);
        memcpy(n + off + tlen, at + flen, len - off - flen + 1);
        free(*s);
        *s = n;
    }
}

/* The expression Grafana would send for this worker: its variables replaced by this job and instance
   (as a regular expression, as Grafana does for a multi-value variable: the dots match themselves),
   and $__rate_interval by a window that holds every sample this Prometheus has. */
static char *grafana_expand(const char *expr)
{
    char *s = strdup(expr);
    assert_non_null(s);
    replace_all(&s, "$__rate_interval", "1m");
    replace_all(&s, "$__interval", "15s");
    replace_all(&s, "$job", JOB);
    replace_all(&s, "$instance", instance);
    if (strchr(s, '$') != NULL)
        fail_msg("dashboard expression %s uses a variable the test does not know", expr);
    return s;
}

static int value_ok(double d, want_t want)
{
    switch (want) {
    case FINITE:
        return isfinite(d);
    case POSITIVE:
        return isfinite(d) && d > 0;
    case ONE:
        return d == 1;
    }
    return 0;
}

/* Checks the expectations for one panel target against its answer: 0 when each has a sample that
   shows it (marking them seen), else -1 with the reason in why. */
static int check_expects(const char *title, const char *ref, json_t *result, char *why, size_t whylen)
{
    for (size_t e = 0; e < NEXPECTS; e++) {
        expect_t *x = &expects[e];
        if (strcmp(x->title, title) != 0 || strcmp(x->ref, ref) != 0)
            continue;
        size_t i;
        json_t *s;
        int found = 0;
        json_array_foreach(result, i, s)
        {
            const char *v = x->name != NULL ? label(s, x->name) : "";
            if (v != NULL && (x->value == NULL || strcmp(v, x->value) == 0) &&
                value_ok(bw_test_prom_sample_value(s), x->want))
                found = 1;
        }
        if (!found) {
            char *d = json_dumps(result, 0);
            snprintf(why, whylen, "no sample with %s=%s and a %s value in %s",
                     x->name != NULL ? x->name : "(any)", x->value != NULL ? x->value : "(any)",
                     want_names[x->want], d);
            free(d);
            return -1;
        }
    }
    for (size_t e = 0; e < NEXPECTS; e++)
        if (strcmp(expects[e].title, title) == 0 && strcmp(expects[e].ref, ref) == 0)
            expects[e].seen = 1;
    return 0;
}

/* Runs one target: the expression must parse and return data, and what the test's traffic must show.
   Polls a while for both, since a rate needs two samples of each series, and a counter moved by a
   thread of the worker (the DLQ file writer) may rise one scrape after the others. */
static void run_target(const char *title, json_t *target, int *ntargets)
{
    const char *expr = json_string_value(json_object_get(target, "expr"));
    const char *ref = json_string_value(json_object_get(target, "refId"));
    if (expr == NULL || ref == NULL)
        fail_msg("panel \"%s\": a target without expr or refId", title);
    char *q = grafana_expand(expr);
    int64_t deadline = bw_test_now_ms() + WAIT_MS;
    char why[4096] = "returns no data";
    for (;;) {
        json_t *a = bw_test_prom_query(&P, q);
        const char *status = json_string_value(json_object_get(a, "status"));
        if (status == NULL || strcmp(status, "success") != 0) {
            char *d = a != NULL ? json_dumps(a, 0) : NULL;
            fail_with_logs("panel \"%s\" %s: %s does not run: %s", title, ref, q,
                           d != NULL ? d : "(no answer)");
        }
        json_t *v = bw_test_prom_vector(a);
        if (v == NULL)
            fail_with_logs("panel \"%s\" %s: %s is not an instant vector", title, ref, q);
        if (json_array_size(v) == 0)
            snprintf(why, sizeof why, "returns no data");
        else if (check_expects(title, ref, v, why, sizeof why) == 0) {
            json_decref(a);
            break;
        }
        json_decref(a);
        if (bw_test_now_ms() > deadline)
            fail_with_logs("panel \"%s\" %s: %s: %s", title, ref, q, why);
        bw_test_sleep_ms(POLL_MS);
    }
    free(q);
    (*ntargets)++;
}

/* Every target of every panel, rows' own panels included (a collapsed row holds its panels). */
static void run_panels(json_t *panels, int *npanels, int *ntargets)
{
    size_t i;
    json_t *p;
    json_array_foreach(panels, i, p)
    {
        const char *title = json_string_value(json_object_get(p, "title"));
        const char *type = json_string_value(json_object_get(p, "type"));
        assert_non_null(title);
        assert_non_null(type);
        if (strcmp(type, "row") == 0) {
            run_panels(json_object_get(p, "panels"), npanels, ntargets);
            continue;
        }
        json_t *targets = json_object_get(p, "targets");
        if (json_array_size(targets) == 0)
            fail_msg("panel \"%s\" has no query", title);
        const char *uid = json_string_value(json_object_get(json_object_get(p, "datasource"), "uid"));
        if (uid == NULL || strcmp(uid, "${DS_PROMETHEUS}") != 0)
            fail_msg("panel \"%s\": datasource is not the ${DS_PROMETHEUS} input", title);
        size_t k;
        json_t *t;
        json_array_foreach(targets, k, t) run_target(title, t, ntargets);
        (*npanels)++;
    }
}

/* The dashboard's variables (label_values(selector, label)) find this worker's job and instance. */
static void check_variables(json_t *dash)
{
    json_t *list = json_object_get(json_object_get(dash, "templating"), "list");
    size_t i;
    json_t *var;
    assert_true(json_array_size(list) >= 2);
    json_array_foreach(list, i, var)
    {
        const char *name = json_string_value(json_object_get(var, "name"));
        const char *def = json_string_value(json_object_get(var, "definition"));
        assert_non_null(name);
        assert_non_null(def);
        const char *want = strcmp(name, "job") == 0 ? JOB : strcmp(name, "instance") == 0 ? instance : NULL;
        if (want == NULL)
            fail_msg("dashboard variable %s: the test knows only job and instance", name);
        const char *comma = strrchr(def, ',');
        if (strncmp(def, "label_values(", 13) != 0 || comma == NULL)
            fail_msg("dashboard variable %s: %s is not label_values(selector, label)", name, def);
        char sel[512], lab[64];
        snprintf(sel, sizeof sel, "%.*s", (int)(comma - def - 13), def + 13);
        snprintf(lab, sizeof lab, "%s", comma + 1 + strspn(comma + 1, " "));
        lab[strcspn(lab, ") ")] = '\0';
        char *q = grafana_expand(sel);
        json_t *a = bw_test_prom_query(&P, q);
        json_t *v = bw_test_prom_vector(a);
        int found = 0;
        size_t k;
        json_t *s;
        json_array_foreach(v, k, s) found |= label(s, lab) != NULL && strcmp(label(s, lab), want) == 0;
        if (!found)
            fail_with_logs("dashboard variable %s (%s): %s has no %s=%s", name, def, q, lab, want);
        json_decref(a);
        free(q);
    }
}

static void test_dashboard_queries(void **state)
{
    json_error_t err;
    json_t *dash = json_load_file(DASHBOARD_PATH, 0, &err);
    if (dash == NULL)
        fail_msg("%s: %s (line %d)", DASHBOARD_PATH, err.text, err.line);
    assert_int_equal(json_integer_value(json_object_get(dash, "schemaVersion")), 36);
    const char *input =
        json_string_value(json_object_get(json_array_get(json_object_get(dash, "__inputs"), 0), "name"));
    assert_non_null(input);
    assert_string_equal(input, "DS_PROMETHEUS");

    int npanels = 0, ntargets = 0;
    run_panels(json_object_get(dash, "panels"), &npanels, &ntargets);
    fprintf(stderr, "dashboard: %d panels, %d queries, all ran and returned data\n", npanels, ntargets);
    assert_true(npanels >= 8);
    /* An expectation whose panel was renamed or removed would otherwise check nothing. */
    for (size_t e = 0; e < NEXPECTS; e++)
        if (!expects[e].seen)
            fail_msg("no panel \"%s\" with a target %s: the dashboard changed, update the test",
                     expects[e].title, expects[e].ref);
    check_variables(dash);
    json_decref(dash);
}

/* ---- the rules ----------------------------------------------------------------------------------- */

/* The rule named name in group (borrowed), or NULL. */
static json_t *find_rule(json_t *group, const char *name)
{
    size_t i;
    json_t *r;
    json_array_foreach(json_object_get(group, "rules"), i, r)
    {
        const char *n = json_string_value(json_object_get(r, "name"));
        if (n != NULL && strcmp(n, name) == 0)
            return r;
    }
    return NULL;
}

/* The beamline-worker group from /api/v1/rules once every rule in it has been evaluated at least once
   (answer is the whole response, to decref), or fails after WAIT_MS. */
static json_t *evaluated_group(json_t **answer)
{
    int64_t deadline = bw_test_now_ms() + WAIT_MS;
    for (;;) {
        json_t *a = bw_test_prom_get(&P, "/api/v1/rules", NULL);
        json_t *groups = json_object_get(json_object_get(a, "data"), "groups");
        json_t *g, *found = NULL;
        size_t i;
        json_array_foreach(groups, i, g)
        {
            const char *name = json_string_value(json_object_get(g, "name"));
            if (name != NULL && strcmp(name, "beamline-worker") == 0)
                found = g;
        }
        int all = found != NULL && json_array_size(json_object_get(found, "rules")) > 0;
        json_t *r;
        json_array_foreach(json_object_get(found, "rules"), i, r)
        {
            const char *last = json_string_value(json_object_get(r, "lastEvaluation"));
            all &= last != NULL && strncmp(last, "0001-", 5) != 0;
        }
        if (all) {
            *answer = a;
            return found;
        }
        json_decref(a);
        if (bw_test_now_ms() > deadline)
            fail_with_logs("/api/v1/rules: group beamline-worker not loaded or not evaluated in %d ms",
                           WAIT_MS);
        bw_test_sleep_ms(POLL_MS);
    }
}

static void test_rules_load_and_evaluate(void **state)
{
    json_t *answer;
    json_t *group = evaluated_group(&answer);
    json_t *rules = json_object_get(group, "rules");
    assert_int_equal((int)json_array_size(rules), alerts_in_file());
    size_t i;
    json_t *r;
    json_array_foreach(rules, i, r)
    {
        const char *name = json_string_value(json_object_get(r, "name"));
        const char *health = json_string_value(json_object_get(r, "health"));
        const char *error = json_string_value(json_object_get(r, "lastError"));
        if (health == NULL || strcmp(health, "ok") != 0 || (error != NULL && *error != '\0'))
            fail_with_logs("rule %s: health %s, error %s", name, health, error);
        assert_string_equal(json_string_value(json_object_get(r, "type")), "alerting");
    }
    /* A healthy, scraped, connected, ready worker: the alerts about a sick one are quiet. */
    static const char *const quiet[] = {"BeamlineWorkerDown",           "BeamlineWorkerAbsent",
                                        "BeamlineWorkerNoHeartbeat",    "BeamlineWorkerNotReady",
                                        "BeamlineWorkerQueueSaturated", "BeamlineWorkerSandboxDeaths",
                                        "BeamlineWorkerDeadLettersLost"};
    for (size_t q = 0; q < sizeof quiet / sizeof quiet[0]; q++) {
        json_t *rule = find_rule(group, quiet[q]);
        if (rule == NULL)
            fail_msg("rule %s is not loaded", quiet[q]);
        const char *st = json_string_value(json_object_get(rule, "state"));
        if (st == NULL || strcmp(st, "inactive") != 0)
            fail_with_logs("rule %s is %s for a healthy worker", quiet[q], st);
    }
    json_decref(answer);
}

/* Polls until rule name is pending with one alert; returns that alert's labels (borrowed from *answer,
   which the caller decrefs). */
static json_t *wait_pending(const char *name, json_t **answer)
{
    int64_t deadline = bw_test_now_ms() + WAIT_MS;
    for (;;) {
        json_t *rule = find_rule(evaluated_group(answer), name);
        if (rule == NULL)
            fail_msg("rule %s is not loaded", name);
        json_t *alerts = json_object_get(rule, "alerts");
        const char *st = json_string_value(json_object_get(rule, "state"));
        if (st != NULL && strcmp(st, "pending") == 0 && json_array_size(alerts) > 0) {
            if (json_array_size(alerts) != 1)
                fail_with_logs("rule %s: %zu alerts, want 1", name, json_array_size(alerts));
            return json_object_get(json_array_get(alerts, 0), "labels");
        }
        if (bw_test_now_ms() > deadline)
            fail_with_logs("rule %s: state %s after %d ms, want pending", name, st, WAIT_MS);
        json_decref(*answer);
        bw_test_sleep_ms(POLL_MS);
    }
}

/* The dead letter the test made turns BeamlineWorkerDeadLetters pending (for: 5m keeps it from firing)
   with the labels an operator reads: this instance and the reason. The rule's expression thus matches
   the worker's real series, not only promtool's synthetic ones. */
static void test_dead_letter_alert_pending(void **state)
{
    json_t *answer;
    json_t *labels = wait_pending("BeamlineWorkerDeadLetters", &answer);
    assert_string_equal(json_string_value(json_object_get(labels, "reason")), "PARSE_ERROR");
    assert_string_equal(json_string_value(json_object_get(labels, "instance")), instance);
    assert_string_equal(json_string_value(json_object_get(labels, "severity")), "warning");
    json_decref(answer);
}

/* A stopped worker (SIGSTOP: its health thread stops answering too) fails its scrapes: up turns 0 and
   BeamlineWorkerDown goes pending for this instance, which shows the rule's job name and labels match
   the scrape configuration alerts.yml documents. The worker continues afterwards (the teardown also
   continues it, should this test fail) and is scraped again. */
static void test_down_alert_pending_when_worker_stops(void **state)
{
    char up[128];
    json_t *answer;
    snprintf(up, sizeof up, "up{job=\"" JOB "\",instance=\"%s\"}", instance);
    assert_int_equal(bw_test_proc_signal(&H.workers[0], SIGSTOP), 0);
    json_t *labels = wait_pending("BeamlineWorkerDown", &answer);
    assert_string_equal(json_string_value(json_object_get(labels, "instance")), instance);
    assert_string_equal(json_string_value(json_object_get(labels, "severity")), "critical");
    json_decref(answer);
    assert_true(query_one(up) == 0);
    assert_int_equal(bw_test_proc_signal(&H.workers[0], SIGCONT), 0);
    wait_value(up, 1);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_series_and_labels_arrive),
        cmocka_unit_test(test_dashboard_queries),
        cmocka_unit_test(test_rules_load_and_evaluate),
        cmocka_unit_test(test_dead_letter_alert_pending),
        cmocka_unit_test(test_down_alert_pending_when_worker_stops),
    };
    const char *names[sizeof tests / sizeof tests[0]];
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++)
        names[i] = tests[i].name;
    bw_test_select(argc, argv, names, sizeof tests / sizeof tests[0]);

    if (!bw_test_prom_available()) {
        const char *ci = getenv("CI");
        if (ci != NULL && *ci != '\0' && strcmp(ci, "false") != 0 && strcmp(ci, "0") != 0) {
            fprintf(stderr,
                    "test_prometheus: %s is missing, and CI=%s: failing (scripts/install-deps.sh "
                    "installs the prometheus package)\n",
                    BW_TEST_PROMETHEUS_BIN, ci);
            return 1;
        }
        fprintf(stderr, "SKIPPED test_prometheus: %s is missing (Debian package prometheus)\n",
                BW_TEST_PROMETHEUS_BIN);
        return 77;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int failed = cmocka_run_group_tests_name("prometheus", tests, setup, teardown);
    curl_global_cleanup();
    return bw_test_exit_status(failed);
}
