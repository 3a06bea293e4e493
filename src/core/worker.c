/*
 * Scheduler invariants (loop thread only):
 *  - every assignment with an assignment_id and a tenant gets exactly one result, published from
 *    on_done; messages without them become dead letters;
 *  - `active` holds every queued or running job by assignment_id, which makes in-flight duplicates
 *    and cancels O(1); finished results live in the dedup memory;
 *  - at most max_concurrency jobs are RUNNING; pump() is the only place that starts queued jobs and is
 *    guarded against re-entry, so a chain of jobs that complete synchronously never recurses.
 */
#include "core/worker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "build_info.h"
#include "core/deadletter.h"
#include "core/handler.h"
#include "core/job.h"
#include "obs/log.h"
#include "obs/metrics.h"
#include "store/dedup.h"
#include "util/clock.h"
#include "util/hmap.h"
#include "util/xalloc.h"

struct bw_worker {
    uv_loop_t *loop;
    const bw_config_t *cfg;
    bw_worker_opts_t opts;
    bw_hmap_t *active;
    bw_list_t waitq;
    size_t running, queued;
    bw_dedup_t *dedup;
    uv_timer_t heartbeat;
    uint64_t start_ns;
    bool pumping, draining;
    bw_worker_stats_t stats;
};

/* ---- inbound construction (any thread) ---- */

void bw_inbound_decode(bw_inbound_t *in, const char *subject, const char *data, size_t len,
                       const bw_headers_t *h, int64_t default_timeout_ms)
{
    in->kind = BW_IN_ASSIGN;
    in->st = bw_assignment_decode(data, len, h, default_timeout_ms, &in->a, &in->err);
    if (in->st == BW_DECODE_DEAD) {
        in->subject = bw_strdup(subject ? subject : "");
        in->raw = bw_strndup(data, len);
        in->raw_len = len;
    }
}

bw_inbound_t *bw_inbound_assign(const char *subject, const char *data, size_t len, const bw_headers_t *h,
                                json_t *headers_json, int64_t default_timeout_ms)
{
    bw_inbound_t *in = bw_calloc(1, sizeof *in);
    in->received_ns = bw_mono_ns();
    bw_inbound_decode(in, subject, data, len, h, default_timeout_ms);
    if (in->st == BW_DECODE_DEAD)
        in->headers = json_incref(headers_json);
    return in;
}

bw_inbound_t *bw_inbound_cancel(const char *data, size_t len)
{
    json_t *root = json_loadb(data, len, 0, NULL);
    const char *id = json_string_value(json_object_get(root, "assignment_id"));
    const char *reason = json_string_value(json_object_get(root, "reason"));
    bw_inbound_t *in = NULL;
    if (id != NULL && *id != '\0') {
        in = bw_calloc(1, sizeof *in);
        in->kind = BW_IN_CANCEL;
        in->received_ns = bw_mono_ns();
        in->cancel_id = bw_strdup(id);
        in->cancel_reason = reason ? bw_strndup(reason, strnlen(reason, 512)) : NULL;
    }
    json_decref(root);
    return in;
}

void bw_inbound_destroy(bw_inbound_t *in)
{
    if (in == NULL)
        return;
    bw_assignment_dispose(&in->a);
    free(in->subject);
    free(in->raw);
    json_decref(in->headers);
    free(in->cancel_id);
    free(in->cancel_reason);
    free(in);
}

/* ---- publishing ---- */

static void publish_result_bytes(bw_worker_t *w, const char *tenant, const char *trace,
                                 const char *assignment_id, const char *data, size_t len)
{
    char msgid[BW_MAX_ID_BYTES + 16];
    snprintf(msgid, sizeof msgid, "result-%s", assignment_id);
    bw_outmsg_t m = {.kind = BW_OUT_RESULT,
                     .subject = w->cfg->result_subject,
                     .data = data,
                     .len = len,
                     .hkeys = {"tenant_id", "version", "Nats-Msg-Id", trace ? "trace_id" : NULL},
                     .hvals = {tenant, "1", msgid, trace}};
    w->opts.publish(w->opts.publish_ud, &m);
}

static void publish_ack(bw_worker_t *w, const bw_assignment_t *a, const char *status, const char *why)
{
    if (!w->cfg->ack_enabled)
        return;
    size_t len;
    /* Acks are consumed by the router only, which takes the bare form. */
    char *s = bw_ack_encode(a, status, why, false, &len);
    bw_outmsg_t m = {.kind = BW_OUT_ACK,
                     .subject = w->cfg->ack_subject,
                     .data = s,
                     .len = len,
                     .hkeys = {"tenant_id", "version", NULL},
                     .hvals = {a->tenant_id, "1", NULL}};
    w->opts.publish(w->opts.publish_ud, &m);
    free(s);
}

static void publish_dead_letter(bw_worker_t *w, bw_inbound_t *in)
{
    bw_dead_letter_t d = {.reason = in->err.code,
                          .subject = in->subject,
                          .data = in->raw,
                          .len = in->raw_len,
                          .headers = in->headers,
                          .assignment_id = in->a.assignment_id,
                          .trace_id = in->a.trace_id,
                          .error = in->err.message};
    w->stats.dead_letters++;
    bw_deadletters_send(w->opts.dead, &d);
}

/* ---- job completion ---- */

static void update_gauges(const bw_worker_t *w)
{
    bw_metrics_set(BW_G_IN_FLIGHT, (int64_t)w->running);
    bw_metrics_set(BW_G_QUEUED, (int64_t)w->queued);
}

static void pump(bw_worker_t *w);

static void log_finished(const bw_job_t *job, int64_t latency_ms)
{
    bw_log_level_t lvl = job->status == BW_ST_SUCCESS ? BW_LOG_INFO : BW_LOG_WARN;
    bw_log(lvl, "job finished", BW_LS("assignment_id", job->a.assignment_id),
           BW_LS("trace_id", job->a.trace_id), BW_LS("tenant_id", job->a.tenant_id),
           BW_LS("job_type", job->a.job_type), BW_LS("status", bw_status_name(job->status)),
           BW_LI("latency_ms", latency_ms), BW_LS("error_code", job->error_code),
           BW_LS("error_message", job->error_message));
}

/* Encodes the job's result; one too large for the transport becomes a RESULT_TOO_LARGE error. */
static char *encode_result(bw_worker_t *w, bw_job_t *job, int64_t latency_ms, size_t *len)
{
    bw_result_t r = {.status = job->status,
                     .output = job->output,
                     .logs = job->logs,
                     .error_code = job->error_code,
                     .error_message = job->error_message,
                     .latency_ms = latency_ms,
                     .timestamp_ms = bw_wall_ms(),
                     .attempts = job->attempts};
    char *s = bw_result_encode(&job->a, &r, w->cfg->worker_id, w->cfg->envelope, len);
    size_t max = w->opts.max_payload ? w->opts.max_payload(w->opts.publish_ud) : 0;
    if (max == 0 || *len <= max)
        return s;
    char msg[160];
    snprintf(msg, sizeof msg, "the result is %zu bytes, more than the NATS server's max_payload of %zu bytes",
             *len, max);
    free(s);
    json_decref(job->output);
    job->output = NULL;
    free(job->error_code);
    free(job->error_message);
    job->status = BW_ST_ERROR;
    job->error_code = bw_strdup("RESULT_TOO_LARGE");
    job->error_message = bw_strdup(msg);
    r = (bw_result_t){.status = BW_ST_ERROR,
                      .error_code = job->error_code,
                      .error_message = msg,
                      .latency_ms = latency_ms,
                      .timestamp_ms = r.timestamp_ms,
                      .attempts = job->attempts};
    return bw_result_encode(&job->a, &r, w->cfg->worker_id, w->cfg->envelope, len);
}

static void on_job_done(bw_job_t *job)
{
    bw_worker_t *w = job->owner;
    int64_t latency_ms = (int64_t)((bw_mono_ns() - job->received_ns) / 1000000u);
    bw_hmap_del(w->active, job->a.assignment_id, strlen(job->a.assignment_id));
    if (job->started)
        w->running--;
    else if (!bw_list_empty(&job->link)) {
        bw_list_remove(&job->link);
        w->queued--;
    }
    size_t len;
    char *s = encode_result(w, job, latency_ms, &len);
    publish_result_bytes(w, job->a.tenant_id, job->a.trace_id, job->a.assignment_id, s, len);
    bw_dedup_entry_t e = {job->a.assignment_id, job->a.tenant_id, job->a.trace_id, s, len};
    bw_dedup_put(w->dedup, &e, (int64_t)uv_now(w->loop));
    free(s);
    w->stats.finished[job->status]++;
    bw_metrics_job_finished(bw_metrics_type(job->a.job_type), (int)job->status,
                            (bw_mono_ns() - job->received_ns) / 1000u);
    log_finished(job, latency_ms);
    bw_job_release(job);
    pump(w);
    update_gauges(w);
}

static void pump(bw_worker_t *w)
{
    if (w->pumping)
        return;
    w->pumping = true;
    while (w->running < (size_t)w->cfg->max_concurrency && !bw_list_empty(&w->waitq)) {
        bw_job_t *job = bw_list_entry(bw_list_shift(&w->waitq), bw_job_t, link);
        w->queued--;
        w->running++;
        bw_log(BW_LOG_DEBUG, "job started", BW_LS("assignment_id", job->a.assignment_id),
               BW_LS("job_type", job->a.job_type));
        bw_job_start(job, bw_handler_find(job->a.job_type));
    }
    w->pumping = false;
    update_gauges(w);
}

/* ---- intake ---- */

static bool republish_duplicate(bw_worker_t *w, const bw_assignment_t *a)
{
    bw_dedup_entry_t e;
    if (bw_hmap_get(w->active, a->assignment_id, strlen(a->assignment_id)) != NULL) {
        bw_log(BW_LOG_DEBUG, "duplicate of an in-flight assignment ignored",
               BW_LS("assignment_id", a->assignment_id));
        return true;
    }
    if (bw_dedup_get(w->dedup, a->assignment_id, (int64_t)uv_now(w->loop), &e) == 0) {
        bw_log(BW_LOG_INFO, "duplicate of a finished assignment: result republished",
               BW_LS("assignment_id", a->assignment_id));
        publish_result_bytes(w, e.tenant_id, e.trace_id, e.assignment_id, e.result, e.result_len);
        return true;
    }
    return false;
}

/* Answers an assignment that will not run with an error result (and a rejected/error ack). */
static void answer_now(bw_worker_t *w, bw_inbound_t *in, const char *code, const char *fmt, const char *arg)
{
    bw_job_t *job = bw_job_create(w->loop, &in->a, in->received_ns, on_job_done, w);
    bw_hmap_put(w->active, job->a.assignment_id, strlen(job->a.assignment_id), job);
    publish_ack(w, &job->a, strcmp(code, "QUEUE_FULL") == 0 ? "rejected" : "error", code);
    w->stats.rejected++;
    bw_job_fail(job, BW_ST_ERROR, code, fmt, arg);
}

static void admit(bw_worker_t *w, bw_inbound_t *in)
{
    const bw_handler_t *h = bw_handler_find(in->a.job_type);
    if (h == NULL) {
        answer_now(w, in, "UNKNOWN_JOB_TYPE", "unknown job type '%s'", in->a.job_type);
        return;
    }
    bool must_wait = w->running >= (size_t)w->cfg->max_concurrency;
    if (must_wait && w->queued >= (size_t)w->cfg->queue_max) {
        answer_now(w, in, "QUEUE_FULL", "%s", "the worker's wait queue is full (WORKER_QUEUE_MAX)");
        return;
    }
    bw_job_t *job = bw_job_create(w->loop, &in->a, in->received_ns, on_job_done, w);
    job->cfg = w->cfg;
    job->output_limit = w->opts.max_payload ? w->opts.max_payload(w->opts.publish_ud) : 0;
    bw_hmap_put(w->active, job->a.assignment_id, strlen(job->a.assignment_id), job);
    publish_ack(w, &job->a, "accepted", NULL);
    bw_job_arm_deadline(job);
    bw_list_push(&w->waitq, &job->link);
    w->queued++;
    bw_log(BW_LOG_DEBUG, must_wait ? "job queued" : "job accepted",
           BW_LS("assignment_id", job->a.assignment_id), BW_LS("job_type", job->a.job_type));
    pump(w);
}

static void cancel(bw_worker_t *w, bw_inbound_t *in)
{
    bw_job_t *job = bw_hmap_get(w->active, in->cancel_id, strlen(in->cancel_id));
    if (job == NULL) {
        bw_log(BW_LOG_DEBUG, "cancel for an unknown assignment ignored",
               BW_LS("assignment_id", in->cancel_id));
        return;
    }
    bw_job_abort(job, BW_ST_CANCELLED, "CANCELLED",
                 in->cancel_reason ? in->cancel_reason : "cancelled by request");
}

void bw_worker_accept(bw_worker_t *w, bw_inbound_t *in)
{
    if (in->kind == BW_IN_CANCEL) {
        cancel(w, in);
    } else if (in->st == BW_DECODE_DEAD) {
        publish_dead_letter(w, in);
    } else {
        w->stats.received++;
        bw_metrics_job_received(bw_metrics_type(in->a.job_type));
        if (republish_duplicate(w, &in->a)) {
            w->stats.duplicates++;
            bw_metrics_inc(BW_C_DUPLICATES);
        } else if (in->st == BW_DECODE_INVALID)
            answer_now(w, in, in->err.code, "%s", in->err.message);
        else
            admit(w, in);
    }
    bw_inbound_destroy(in);
}

/* ---- heartbeats ---- */

void bw_worker_heartbeat(bw_worker_t *w, const char *status)
{
    size_t len;
    bw_heartbeat_t h = {.worker_id = w->cfg->worker_id,
                        .status = status ? status : (w->running > 0 ? "busy" : "idle"),
                        .load = (double)w->running / (double)w->cfg->max_concurrency,
                        .in_flight = (int64_t)w->running,
                        .queued = (int64_t)w->queued,
                        .max_concurrency = w->cfg->max_concurrency,
                        .uptime_s = (int64_t)((bw_mono_ns() - w->start_ns) / 1000000000u),
                        .rss_bytes = bw_metrics_rss_bytes(),
                        .build = BW_VERSION "+" BW_GIT_COMMIT};
    if (status == NULL && w->draining)
        h.status = "draining";
    char *s = bw_heartbeat_encode(&h, w->cfg->envelope, &len);
    bw_metrics_inc(BW_C_HEARTBEATS);
    bw_outmsg_t m = {.kind = BW_OUT_HEARTBEAT, .subject = w->cfg->heartbeat_subject, .data = s, .len = len};
    w->opts.publish(w->opts.publish_ud, &m);
    free(s);
}

static void on_heartbeat(uv_timer_t *t)
{
    bw_worker_heartbeat(t->data, NULL);
}

/* ---- drain ---- */

static void collect_job(void *ud, const char *key, void *value)
{
    (void)key;
    bw_job_t ***cursor = ud;
    **cursor = value;
    (*cursor)++;
}

void bw_worker_cancel_all(bw_worker_t *w, const char *why)
{
    size_t n = bw_hmap_size(w->active);
    if (n == 0)
        return;
    bw_job_t **jobs = bw_calloc(n, sizeof *jobs), **cursor = jobs;
    bw_hmap_foreach(w->active, collect_job, &cursor);
    bool was_pumping = w->pumping;
    w->pumping = true; /* nothing queued may start while we cancel */
    for (size_t i = 0; i < n; i++)
        bw_job_abort(jobs[i], BW_ST_CANCELLED, "CANCELLED", why);
    w->pumping = was_pumping;
    free(jobs);
}

void bw_worker_set_draining(bw_worker_t *w)
{
    if (w->draining)
        return;
    w->draining = true;
    bw_metrics_set(BW_G_DRAINING, 1);
    bw_log(BW_LOG_INFO, "draining", BW_LI("running", w->running), BW_LI("queued", w->queued),
           BW_LI("timeout_ms", w->cfg->shutdown_timeout_ms));
    if (w->opts.heartbeats)
        bw_worker_heartbeat(w, "draining");
}

size_t bw_worker_active(const bw_worker_t *w)
{
    return bw_hmap_size(w->active);
}

/* ---- lifecycle ---- */

bw_worker_t *bw_worker_create(uv_loop_t *loop, const bw_config_t *cfg, const bw_worker_opts_t *opts)
{
    bw_worker_t *w = bw_calloc(1, sizeof *w);
    w->loop = loop;
    w->cfg = cfg;
    w->opts = *opts;
    w->active = bw_hmap_create();
    bw_list_init(&w->waitq);
    w->dedup =
        bw_dedup_create((size_t)cfg->dedup_max_entries, (size_t)cfg->dedup_max_bytes, cfg->dedup_ttl_ms);
    w->start_ns = bw_mono_ns();
    bw_metrics_set(BW_G_MAX_CONCURRENCY, cfg->max_concurrency);
    uv_timer_init(loop, &w->heartbeat);
    w->heartbeat.data = w;
    if (opts->heartbeats)
        uv_timer_start(&w->heartbeat, on_heartbeat, (uint64_t)cfg->heartbeat_interval_ms,
                       (uint64_t)cfg->heartbeat_interval_ms);
    return w;
}

void bw_worker_get_stats(const bw_worker_t *w, bw_worker_stats_t *s)
{
    *s = w->stats;
    s->running = w->running;
    s->queued = w->queued;
    s->draining = w->draining;
}

static void on_worker_closed(uv_handle_t *h)
{
    bw_worker_t *w = h->data;
    bw_hmap_destroy(w->active);
    bw_dedup_destroy(w->dedup);
    free(w);
}

void bw_worker_destroy(bw_worker_t *w)
{
    if (w == NULL)
        return;
    w->pumping = true;
    bw_worker_cancel_all(w, "worker shutting down");
    bw_handlers_shutdown();
    uv_close((uv_handle_t *)&w->heartbeat, on_worker_closed);
}
