/*
 * `beamline-worker submit`: publishes assignments to CAF_ASSIGN_SUBJECT and waits for their results on
 * CAF_RESULT_SUBJECT (either format), so a newcomer can see a job run through a real NATS, and an operator
 * can check a deployment under load.
 *
 * One job (TYPE [PAYLOAD], `-`, or a file holding one job) prints its result as published. Several
 * (--count N, or a file holding several jobs) is the load check: at most C assignments are outstanding at
 * a time, each with its own id (RUN-INDEX, so a result maps back to its send time without a lookup); it
 * ends with one summary: throughput and latency percentiles over the jobs that were answered. Latency is
 * measured here, from publish to result, so it includes both NATS hops and the worker's queue.
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <nats/nats.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/clitext.h"
#include "net/bus.h"
#include "util/buf.h"
#include "util/clock.h"
#include "util/ids.h"
#include "util/jsonw.h"
#include "util/xalloc.h"

#define MAX_COUNT 10000000
#define MAX_CONCURRENCY 100000
#define MAX_WAIT_MS 86400000
#define RESULT_GRACE_MS 2000 /* beyond the job's own deadline: the trip back and a busy worker's queue */

typedef struct submit_args {
    const char *type, *payload, *tenant, *file;
    int64_t wait_ms, count, concurrency; /* count 0: not given */
    bool json;
} submit_args_t;

/* The load check's bookkeeping: one slot per job, in publish order. */
enum { J_UNSENT, J_OUT, J_OK, J_FAILED, J_MISSING };
typedef struct load {
    int64_t total, sent, done, oldest; /* oldest: first slot that may still be out */
    uint64_t *start_ns;
    double *latency_ms; /* answered jobs only, in arrival order */
    unsigned char *state;
    int64_t answered, ok, failed, missing;
    json_t *errors; /* error_code -> count */
    char run[BW_UUID_STRLEN + 1];
} load_t;

void bw_cli_submit_usage(FILE *f)
{
    fprintf(
        f,
        "usage: beamline-worker submit [OPTIONS] TYPE [PAYLOAD_JSON]\n"
        "       beamline-worker submit [OPTIONS] -          (jobs on stdin)\n"
        "       beamline-worker submit [OPTIONS] --file F   (jobs in file F)\n"
        "OPTIONS: [--tenant T] [--wait-ms N] [--count N] [--concurrency C] [--json]\n"
        "Publishes on CAF_ASSIGN_SUBJECT and waits up to N ms (default 30000, also the job's deadline)\n"
        "plus %d ms for each result on CAF_RESULT_SUBJECT. A job in stdin or F is a whole assignment\n"
        "(bare or in the router's envelope) or {\"type\":T,\"payload\":{...}[,\"timeout_ms\":N]}; F may\n"
        "hold several, one after the other (JSON lines).\n"
        "One job: prints its result as published; 1 when it is not a success.\n"
        "Several (--count N, or several jobs in F, used in turn N times): a load check with at most C\n"
        "(default 1) jobs outstanding, each with a fresh assignment id; prints throughput and latency\n"
        "percentiles (--json: one JSON object); 1 when a result is not a success, 4 when one is missing.\n",
        RESULT_GRACE_MS);
    bw_cli_print_exit_codes(f);
}

static int usage(void)
{
    bw_cli_submit_usage(stderr);
    return BW_EXIT_USAGE;
}

/* ---- arguments -------------------------------------------------------------------------------- */

static bool parse_int(const char *s, int64_t min, int64_t max, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end != '\0' || errno != 0 || v < min || v > max)
        return false;
    *out = v;
    return true;
}

/* Options anywhere; the first other argument is TYPE (or "-"), the second PAYLOAD_JSON. */
static int parse_args(int argc, char **argv, submit_args_t *a)
{
    *a = (submit_args_t){.tenant = "default", .wait_ms = 30000, .concurrency = 1};
    int positional = 0;
    for (int i = 0; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool ok = true;
        if (strncmp(o, "--", 2) != 0) {
            if (positional == 0)
                a->type = o;
            else if (positional == 1)
                a->payload = o;
            else
                return -1;
            positional++;
            continue;
        }
        if (!strcmp(o, "--json")) {
            a->json = true;
            continue;
        }
        if (v == NULL)
            return -1;
        if (!strcmp(o, "--tenant"))
            a->tenant = v;
        else if (!strcmp(o, "--file"))
            a->file = v;
        else if (!strcmp(o, "--wait-ms"))
            ok = parse_int(v, 1, MAX_WAIT_MS, &a->wait_ms);
        else if (!strcmp(o, "--count"))
            ok = parse_int(v, 1, MAX_COUNT, &a->count);
        else if (!strcmp(o, "--concurrency"))
            ok = parse_int(v, 1, MAX_CONCURRENCY, &a->concurrency);
        else
            ok = false;
        if (!ok)
            return -1;
        i++;
    }
    /* Exactly one source of jobs: TYPE [PAYLOAD], "-", or --file. */
    if ((a->type == NULL) == (a->file == NULL))
        return -1;
    if (a->type != NULL && strcmp(a->type, "-") == 0) {
        if (a->payload != NULL)
            return -1;
        a->type = NULL;
        a->file = "-";
    }
    return 0;
}

/* ---- assignments ------------------------------------------------------------------------------ */

static json_t *unwrap(json_t *j)
{
    json_t *d = json_object_get(j, "data");
    return json_is_object(d) ? d : j;
}

/* An assignment for TYPE with payload (borrowed), the tenant of the command line and a fresh id. */
static json_t *new_assignment(const submit_args_t *a, json_t *type, json_t *payload, int64_t deadline_ms)
{
    char id[BW_UUID_STRLEN + 1], trace[BW_UUID_STRLEN + 1];
    bw_uuid_v4(id);
    bw_uuid_v4(trace);
    return json_pack("{sssssssss{sOsO}s{sI}}", "version", "1", "assignment_id", id, "tenant_id", a->tenant,
                     "trace_id", trace, "job", "type", type, "payload", payload, "options", "deadline_ms",
                     (json_int_t)deadline_ms);
}

/* One document of a job file: a whole assignment as it is, or the short {"type","payload"} form made
   into one. NULL (reported) when it is neither. */
static json_t *job_of(const submit_args_t *a, json_t *doc, size_t n)
{
    json_t *t = json_object_get(doc, "timeout_ms"), *p = json_object_get(doc, "payload");
    if (!json_is_object(doc)) {
        fprintf(stderr, "submit: job %zu is not a JSON object\n", n);
        return NULL;
    }
    if (json_object_get(doc, "job") != NULL || json_object_get(doc, "data") != NULL ||
        json_object_get(doc, "assignment_id") != NULL)
        return json_incref(doc);
    if (!json_is_string(json_object_get(doc, "type")) || (p != NULL && !json_is_object(p)) ||
        (t != NULL && (!json_is_integer(t) || json_integer_value(t) <= 0))) {
        fprintf(stderr,
                "submit: job %zu: want a whole assignment or {\"type\":T,\"payload\":{...}"
                "[,\"timeout_ms\":N]}\n",
                n);
        return NULL;
    }
    json_t *empty = json_object();
    json_t *j = new_assignment(a, json_object_get(doc, "type"), p ? p : empty,
                               t ? (int64_t)json_integer_value(t) : a->wait_ms);
    json_decref(empty);
    return j;
}

/* The jobs of --file (or stdin for "-"), in order, as an array (caller decrefs); NULL when unusable. */
static json_t *read_jobs(const submit_args_t *a)
{
    FILE *f = strcmp(a->file, "-") == 0 ? stdin : fopen(a->file, "r");
    json_t *jobs = json_array(), *doc;
    json_error_t err;
    if (f == NULL) {
        fprintf(stderr, "submit: cannot open %s: %s\n", a->file, strerror(errno));
        goto fail;
    }
    while ((doc = json_loadf(f, JSON_DISABLE_EOF_CHECK, &err)) != NULL) {
        json_t *j = job_of(a, doc, json_array_size(jobs) + 1);
        json_decref(doc);
        if (j == NULL)
            goto fail;
        json_array_append_new(jobs, j);
    }
    /* jansson reports the end of the input as an error too: anything but blanks left is a real one. */
    int c;
    while ((c = fgetc(f)) == ' ' || c == '\n' || c == '\t' || c == '\r')
        ;
    if (c != EOF || json_array_size(jobs) == 0) {
        fprintf(stderr, "submit: %s: %s\n", strcmp(a->file, "-") ? a->file : "stdin",
                json_array_size(jobs) == 0 && c == EOF ? "no job" : err.text);
        goto fail;
    }
    if (f != stdin)
        fclose(f);
    return jobs;
fail:
    if (f != NULL && f != stdin)
        fclose(f);
    json_decref(jobs);
    return NULL;
}

/* The jobs to submit, from TYPE [PAYLOAD] or from the file (caller decrefs); NULL when unusable. */
static json_t *jobs_of(const submit_args_t *a)
{
    if (a->file != NULL)
        return read_jobs(a);
    json_error_t err;
    json_t *payload = json_loads(a->payload ? a->payload : "{}", 0, &err), *type = json_string(a->type);
    json_t *jobs = NULL;
    if (!json_is_object(payload))
        fprintf(stderr, "submit: PAYLOAD_JSON must be a JSON object\n");
    else if (type == NULL)
        fprintf(stderr, "submit: TYPE must be UTF-8\n");
    else
        jobs = json_pack("[o]", new_assignment(a, type, payload, a->wait_ms));
    json_decref(type);
    json_decref(payload);
    return jobs;
}

/* ---- NATS ------------------------------------------------------------------------------------- */

static int publish(natsConnection *nc, const bw_config_t *cfg, json_t *a, bool flush)
{
    const char *tenant = json_string_value(json_object_get(unwrap(a), "tenant_id"));
    char *data = json_dumps(a, JSON_COMPACT);
    natsMsg *msg = NULL;
    natsStatus s = natsMsg_Create(&msg, cfg->assign_subject, NULL, data, (int)strlen(data));
    if (s == NATS_OK && tenant != NULL)
        s = natsMsgHeader_Set(msg, "tenant_id", tenant);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(msg, "version", "1");
    if (s == NATS_OK)
        s = natsConnection_PublishMsg(nc, msg);
    if (s == NATS_OK && flush)
        s = natsConnection_FlushTimeout(nc, 5000);
    natsMsg_Destroy(msg);
    free(data);
    return s == NATS_OK ? 0 : -1;
}

/* The next result's assignment id and status (borrowed from *doc, which the caller decrefs). NATS_OK,
   NATS_TIMEOUT when none came within timeout_ms, or another error. */
static natsStatus next_result(natsSubscription *sub, int64_t timeout_ms, natsMsg **msg, json_t **doc)
{
    natsStatus s = natsSubscription_NextMsg(msg, sub, timeout_ms < 1 ? 1 : timeout_ms);
    if (s == NATS_OK)
        *doc = json_loadb(natsMsg_GetData(*msg), (size_t)natsMsg_GetDataLength(*msg), 0, NULL);
    return s;
}

static const char *field(json_t *doc, const char *key)
{
    return json_string_value(json_object_get(unwrap(doc), key));
}

static bool is_success(json_t *doc)
{
    const char *status = field(doc, "status");
    return status != NULL && strcmp(status, "success") == 0;
}

/* ---- one job ---------------------------------------------------------------------------------- */

/* Waits for the result of id and prints it as published (jansson would write 0.1 as
   0.10000000000000001). The exit code. */
static int await_one(natsSubscription *sub, const char *id, int64_t wait_ms)
{
    int64_t end = (int64_t)bw_mono_ms() + wait_ms;
    for (int64_t left = wait_ms; left > 0; left = end - (int64_t)bw_mono_ms()) {
        natsMsg *msg = NULL;
        json_t *doc = NULL;
        natsStatus s = next_result(sub, left, &msg, &doc);
        if (s == NATS_TIMEOUT)
            break;
        if (s != NATS_OK) {
            fprintf(stderr, "submit: NATS error: %s\n", natsStatus_GetText(s));
            return BW_EXIT_NATS;
        }
        const char *got = field(doc, "assignment_id");
        if (got != NULL && strcmp(got, id) == 0) {
            bw_buf_t pretty;
            bw_buf_init(&pretty, (size_t)natsMsg_GetDataLength(msg) * 2 + 64);
            bw_jsonw_pretty(&pretty, natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg));
            fwrite(pretty.p, 1, pretty.len, stdout);
            fputc('\n', stdout);
            bw_buf_dispose(&pretty);
            int rc = is_success(doc) ? BW_EXIT_OK : BW_EXIT_FAILED;
            json_decref(doc);
            natsMsg_Destroy(msg);
            return rc;
        }
        json_decref(doc);
        natsMsg_Destroy(msg);
    }
    bw_buf_t b;
    bw_buf_init(&b, 128);
    bw_clitext_put(&b, id, 200);
    fprintf(stderr, "submit: no result for %s within %lld ms\n", b.p, (long long)wait_ms);
    bw_buf_dispose(&b);
    return BW_EXIT_NO_REPLY;
}

static int submit_one(natsConnection *nc, natsSubscription *sub, const bw_config_t *cfg,
                      const submit_args_t *a, json_t *job)
{
    const char *id = field(job, "assignment_id");
    if (id == NULL) {
        fprintf(stderr, "submit: the assignment has no assignment_id\n");
        return BW_EXIT_USAGE;
    }
    if (publish(nc, cfg, job, true) < 0) {
        fprintf(stderr, "submit: NATS error: %s\n", nats_GetLastError(NULL));
        return BW_EXIT_NATS;
    }
    return await_one(sub, id, a->wait_ms + RESULT_GRACE_MS);
}

/* ---- the load check --------------------------------------------------------------------------- */

/* Sends job i (template i modulo the jobs given) under the id RUN-i. */
static int send_job(natsConnection *nc, const bw_config_t *cfg, json_t *jobs, load_t *l)
{
    json_t *job = json_deep_copy(json_array_get(jobs, (size_t)(l->sent % (int64_t)json_array_size(jobs))));
    char id[BW_UUID_STRLEN + 32];
    snprintf(id, sizeof id, "%s-%lld", l->run, (long long)l->sent);
    json_object_set_new(unwrap(job), "assignment_id", json_string(id));
    json_object_del(unwrap(job), "request_id");
    l->start_ns[l->sent] = bw_mono_ns();
    int rc = publish(nc, cfg, job, false);
    json_decref(job);
    l->state[l->sent++] = J_OUT;
    return rc;
}

/* The slot a result of this run belongs to, or -1 (another run's, or not one of ours). */
static int64_t slot_of(const load_t *l, const char *id)
{
    size_t n = strlen(l->run);
    if (id == NULL || strncmp(id, l->run, n) != 0 || id[n] != '-')
        return -1;
    char *end;
    long long i = strtoll(id + n + 1, &end, 10);
    return *end == '\0' && i >= 0 && i < l->sent ? (int64_t)i : -1;
}

static void record(load_t *l, json_t *doc)
{
    int64_t i = slot_of(l, field(doc, "assignment_id"));
    if (i < 0 || l->state[i] != J_OUT) /* not ours, or a duplicate */
        return;
    l->latency_ms[l->answered++] = (double)(bw_mono_ns() - l->start_ns[i]) / 1e6;
    l->done++;
    if (is_success(doc)) {
        l->state[i] = J_OK, l->ok++;
        return;
    }
    l->state[i] = J_FAILED, l->failed++;
    const char *code = field(doc, "error_code");
    code = code ? code : field(doc, "status") ? field(doc, "status") : "?";
    json_t *n = json_object_get(l->errors, code);
    json_object_set_new(l->errors, code, json_integer(json_integer_value(n) + 1));
}

/* Gives up on the jobs out longer than limit_ms, oldest first; returns the ms until the next would. */
static int64_t expire(load_t *l, int64_t limit_ms)
{
    uint64_t now = bw_mono_ns();
    for (; l->oldest < l->sent; l->oldest++) {
        if (l->state[l->oldest] != J_OUT)
            continue;
        int64_t age_ms = (int64_t)((now - l->start_ns[l->oldest]) / 1000000u);
        if (age_ms < limit_ms)
            return limit_ms - age_ms;
        l->state[l->oldest] = J_MISSING, l->missing++, l->done++;
    }
    return limit_ms;
}

static int by_value(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

/* Nearest-rank percentile of the sorted v[0..n). */
static double pct(const double *v, int64_t n, double q)
{
    int64_t rank = (int64_t)ceil(q * (double)n);
    return n == 0 ? 0 : v[rank < 1 ? 0 : rank - 1];
}

static void print_summary(const load_t *l, const submit_args_t *a, double elapsed_s)
{
    double *v = l->latency_ms;
    int64_t n = l->answered;
    double sum = 0, rate = elapsed_s > 0 ? (double)n / elapsed_s : 0;
    qsort(v, (size_t)n, sizeof *v, by_value);
    for (int64_t i = 0; i < n; i++)
        sum += v[i];
    json_t *s = json_pack("{sIsIsIsIsIsfsfs{sfsfsfsfsfsf}sO}", "submitted", (json_int_t)l->sent,
                          "concurrency", (json_int_t)a->concurrency, "success", (json_int_t)l->ok, "failed",
                          (json_int_t)l->failed, "no_result", (json_int_t)l->missing, "elapsed_s", elapsed_s,
                          "throughput_per_s", rate, "latency_ms", "min", n ? v[0] : 0.0, "mean",
                          n ? sum / (double)n : 0.0, "p50", pct(v, n, 0.50), "p90", pct(v, n, 0.90), "p99",
                          pct(v, n, 0.99), "max", n ? v[n - 1] : 0.0, "errors", l->errors);
    bw_buf_t b;
    bw_buf_init(&b, 512);
    if (a->json) {
        char *text = json_dumps(s, JSON_COMPACT | JSON_REAL_PRECISION(6));
        bw_clitext_put_json(&b, text, strlen(text));
        free(text);
    } else {
        bw_buf_printf(
            &b,
            "%lld jobs, concurrency %lld: %lld success, %lld failed, %lld without result in %.2f s\n"
            "throughput %.1f jobs/s\n"
            "latency ms  min %.2f  mean %.2f  p50 %.2f  p90 %.2f  p99 %.2f  max %.2f",
            (long long)l->sent, (long long)a->concurrency, (long long)l->ok, (long long)l->failed,
            (long long)l->missing, elapsed_s, rate, n ? v[0] : 0.0, n ? sum / (double)n : 0.0,
            pct(v, n, 0.50), pct(v, n, 0.90), pct(v, n, 0.99), n ? v[n - 1] : 0.0);
        const char *code;
        json_t *c;
        json_object_foreach(l->errors, code, c)
        {
            bw_buf_puts(&b, "\nerror ");
            bw_clitext_put(&b, code, 64);
            bw_buf_printf(&b, ": %lld", (long long)json_integer_value(c));
        }
    }
    printf("%s\n", b.p);
    bw_buf_dispose(&b);
    json_decref(s);
}

static int run_load(natsConnection *nc, natsSubscription *sub, const bw_config_t *cfg, const submit_args_t *a,
                    json_t *jobs, int64_t total)
{
    load_t l = {.total = total, .errors = json_object()};
    int64_t limit_ms = a->wait_ms + RESULT_GRACE_MS;
    int rc = BW_EXIT_NATS;
    l.start_ns = bw_calloc((size_t)total, sizeof *l.start_ns);
    l.latency_ms = bw_calloc((size_t)total, sizeof *l.latency_ms);
    l.state = bw_calloc((size_t)total, 1);
    bw_uuid_v4(l.run);
    uint64_t t0 = bw_mono_ns();
    while (l.done < total) {
        while (l.sent < total && l.sent - l.done < a->concurrency)
            if (send_job(nc, cfg, jobs, &l) < 0) {
                fprintf(stderr, "submit: NATS error: %s\n", nats_GetLastError(NULL));
                goto out;
            }
        natsMsg *msg = NULL;
        json_t *doc = NULL;
        natsStatus s = next_result(sub, expire(&l, limit_ms), &msg, &doc);
        if (s != NATS_OK && s != NATS_TIMEOUT) {
            fprintf(stderr, "submit: NATS error: %s\n", natsStatus_GetText(s));
            goto out;
        }
        if (s == NATS_OK)
            record(&l, doc);
        json_decref(doc);
        natsMsg_Destroy(msg);
        expire(&l, limit_ms);
    }
    print_summary(&l, a, (double)(bw_mono_ns() - t0) / 1e9);
    rc = l.missing > 0 ? BW_EXIT_NO_REPLY : l.failed > 0 ? BW_EXIT_FAILED : BW_EXIT_OK;
out:
    free(l.start_ns);
    free(l.latency_ms);
    free(l.state);
    json_decref(l.errors);
    return rc;
}

int bw_cli_submit(const bw_config_t *cfg, int argc, char **argv)
{
    submit_args_t args;
    natsConnection *nc = NULL;
    natsSubscription *sub = NULL;
    json_t *jobs = NULL;
    int rc = BW_EXIT_NATS;
    if (parse_args(argc, argv, &args) < 0)
        return usage();
    if ((jobs = jobs_of(&args)) == NULL)
        return BW_EXIT_USAGE;
    int64_t total = args.count > 0 ? args.count : (int64_t)json_array_size(jobs);
    if (bw_bus_connect_once(&nc, cfg, "beamline-worker submit") < 0 ||
        natsConnection_SubscribeSync(&sub, nc, cfg->result_subject) != NATS_OK ||
        natsSubscription_SetPendingLimits(sub, -1, -1) != NATS_OK || natsConnection_Flush(nc) != NATS_OK) {
        fprintf(stderr, "submit: NATS error: %s\n", nats_GetLastError(NULL));
        goto out;
    }
    if (args.count == 0 && total == 1)
        rc = submit_one(nc, sub, cfg, &args, json_array_get(jobs, 0));
    else
        rc = run_load(nc, sub, cfg, &args, jobs, total);
    fflush(stdout);
out:
    json_decref(jobs);
    natsSubscription_Destroy(sub);
    natsConnection_Destroy(nc);
    return rc;
}
