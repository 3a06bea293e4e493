/*
 * Scheduler invariants (loop thread only):
 *  - every assignment with an assignment_id and a tenant gets exactly one result, published from
 *    on_done; messages without them become dead letters;
 *  - a job is identified by its tenant and its assignment id (PROTOCOL.md, Tenancy): `active` holds every
 *    queued or running job by bw_job_key(tenant, id), which makes in-flight duplicates and cancels O(1),
 *    and finished results live in the dedup memory under the same key, so the same id from another
 *    tenant is another job. `by_id` reaches the ring of active jobs sharing an id (job->same_id) for
 *    cancels that name no tenant;
 *  - the scheduler (core/sched.h) decides which job runs: admit() starts a job at once when the
 *    scheduler says it may, else it waits there; pump() is the only place that starts waiting jobs and is
 *    guarded against re-entry, so a chain of jobs that complete synchronously never recurses;
 *  - a job's sched item is WAITING while queued, RUNNING while it holds a slot (started, not parked), NONE
 *    otherwise: on_job_done and bw_worker_detach give back whichever it holds.
 */
#include "core/worker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "build_info.h"
#include "core/approvals.h"
#include "core/deadletter.h"
#include "core/handler.h"
#include "core/job.h"
#include "core/sched.h"
#include "obs/log.h"
#include "obs/metrics.h"
#include "store/dedup.h"
#include "util/clock.h"
#include "util/buf.h"
#include "util/hmap.h"
#include "util/xalloc.h"

struct bw_worker {
    uv_loop_t *loop;
    const bw_config_t *cfg;
    bw_worker_opts_t opts;
    bw_hmap_t *active; /* bw_job_key(tenant, assignment id) -> job */
    bw_hmap_t *by_id;  /* assignment id -> one job of the ring of active jobs with that id */
    bw_sched_t *sched;
    int ntypes;                          /* registered job types (the scheduler's type index) */
    int metric_type[BW_SCHED_MAX_TYPES]; /* the metrics' index of each */
    size_t parked;                       /* active jobs that gave their slot back (pending approvals) */
    int open_handles;                    /* the two timers, until both are closed */
    uv_timer_t tenant_metrics;           /* METRICS_TENANT_LABELS: refreshes the per-tenant series */
    struct bw_approvals *approvals;
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
    in->dead_letter = in->st == BW_DECODE_DEAD || in->err.dead_reason != NULL;
    if (in->dead_letter) {
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
    if (in->dead_letter)
        in->headers = json_incref(headers_json);
    return in;
}

/* A cancel's tenant, by an assignment's rules: the payload's tenant_id when a non-empty string, else the
   tenant_id header, else none (NULL). */
static const char *cancel_tenant(json_t *root, const bw_headers_t *h)
{
    const char *t = json_string_value(json_object_get(root, "tenant_id"));
    if ((t == NULL || *t == '\0') && h != NULL && h->get != NULL)
        t = h->get(h->ud, "tenant_id");
    return t != NULL && *t != '\0' ? t : NULL;
}

bw_inbound_t *bw_inbound_cancel(const char *data, size_t len, const bw_headers_t *h)
{
    json_t *root = json_loadb(data, len, 0, NULL); /* no JSON_ALLOW_NUL: no string here holds U+0000 */
    const char *id = json_string_value(json_object_get(root, "assignment_id"));
    const char *reason = json_string_value(json_object_get(root, "reason"));
    const char *tenant = cancel_tenant(root, h);
    bw_inbound_t *in = NULL;
    /* ids and tenants longer than an assignment's can be cannot name a job */
    if (id != NULL && *id != '\0' && strlen(id) <= BW_MAX_ID_BYTES &&
        (tenant == NULL || strlen(tenant) <= BW_MAX_TENANT_BYTES)) {
        in = bw_calloc(1, sizeof *in);
        in->kind = BW_IN_CANCEL;
        in->received_ns = bw_mono_ns();
        in->cancel_id = bw_strdup(id);
        in->cancel_tenant = tenant ? bw_strdup(tenant) : NULL;
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
    free(in->cancel_tenant);
    free(in->cancel_reason);
    free(in);
}

/* ---- publishing ---- */

size_t bw_outmsg_header_bytes(const bw_outmsg_t *m)
{
    size_t n = 0;
    bool any = false;
    /* what nats.c writes (natsMsgHeader_encode) for the headers bus.c sets: those with a value */
    for (int i = 0; i < BW_OUTMSG_MAX_HEADERS && m->hkeys[i] != NULL; i++) {
        if (m->hvals[i] == NULL)
            continue;
        n += strlen(m->hkeys[i]) + 2 + strlen(m->hvals[i]) + 2; /* "name: value\r\n" */
        any = true;
    }
    return any ? n + strlen("NATS/1.0\r\n") + 2 : 0;
}

/* A result message without its body: the contract's headers (tenant_id, version, Nats-Msg-Id, trace_id
   when known). The one place they are chosen, so that the size check counts what is sent. */
typedef struct result_msg {
    bw_outmsg_t m;
    char msgid[BW_MAX_ID_BYTES + 16];
} result_msg_t;

static void result_msg_init(const bw_worker_t *w, result_msg_t *r, const char *tenant, const char *trace,
                            const char *assignment_id)
{
    snprintf(r->msgid, sizeof r->msgid, "result-%s", assignment_id);
    r->m = (bw_outmsg_t){.kind = BW_OUT_RESULT,
                         .subject = w->cfg->result_subject,
                         .hkeys = {"tenant_id", "version", "Nats-Msg-Id", trace ? "trace_id" : NULL},
                         .hvals = {tenant, "1", r->msgid, trace},
                         .tenant = tenant,
                         .assignment_id = assignment_id};
}

static void publish_result_bytes(bw_worker_t *w, const char *tenant, const char *trace,
                                 const char *assignment_id, const char *data, size_t len)
{
    result_msg_t r;
    result_msg_init(w, &r, tenant, trace, assignment_id);
    r.m.data = data;
    r.m.len = len;
    w->opts.publish(w->opts.publish_ud, &r.m);
}

/* The largest result body for a's result message that the transport takes: the server's max_payload less
   the message's headers (the server counts both); *max (may be NULL) gets max_payload. SIZE_MAX when there
   is no limit. */
static size_t result_body_limit(const bw_worker_t *w, const bw_assignment_t *a, size_t *maxp)
{
    size_t max = w->opts.max_payload ? w->opts.max_payload(w->opts.publish_ud) : 0;
    if (maxp != NULL)
        *maxp = max;
    if (max == 0)
        return SIZE_MAX;
    result_msg_t r;
    result_msg_init(w, &r, a->tenant_id, a->trace_id, a->assignment_id);
    size_t hdr = bw_outmsg_header_bytes(&r.m);
    return max > hdr ? max - hdr : 0;
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

/* An assignment delivered CAF_JS_MAX_DELIVER times without a result: kept for replay. data is the
   original message (or the assignment re-encoded when the worker no longer has it). */
static void publish_max_deliver(bw_worker_t *w, const bw_assignment_t *a, const char *subject,
                                const char *data, size_t len, json_t *headers, const char *error)
{
    char *own = NULL;
    if (data == NULL && a->root != NULL) {
        own = json_dumps(a->root, JSON_COMPACT | JSON_ENCODE_ANY);
        data = own;
        len = own ? strlen(own) : 0;
    }
    bw_dead_letter_t d = {.reason = "MAX_DELIVER",
                          .subject = subject ? subject : w->cfg->assign_subject,
                          .data = data ? data : "",
                          .len = len,
                          .headers = headers,
                          .assignment_id = a->assignment_id,
                          .trace_id = a->trace_id,
                          .error = error};
    w->stats.dead_letters++;
    bw_metrics_inc(BW_C_JS_MAX_DELIVER);
    bw_deadletters_send(w->opts.dead, &d);
    free(own);
}

static void publish_dead_letter(bw_worker_t *w, bw_inbound_t *in)
{
    bw_dead_letter_t d = {.reason = in->err.dead_reason ? in->err.dead_reason : in->err.code,
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

/* ---- the active jobs ---- */

/* Enters a job in `active` and in the ring of its id. Decoded assignments have ids and tenants of at most
   256 bytes, so their key is never empty. */
static void track(bw_worker_t *w, bw_job_t *job)
{
    char key[BW_JOB_KEY_MAX];
    const char *id = job->a.assignment_id;
    bw_hmap_put(w->active, key, bw_job_key(key, job->a.tenant_id, id), job);
    bw_job_t *first = bw_hmap_get(w->by_id, id, strlen(id));
    if (first != NULL)
        bw_list_push(&first->same_id, &job->same_id);
    else
        bw_hmap_put(w->by_id, id, strlen(id), job);
}

static void untrack(bw_worker_t *w, bw_job_t *job)
{
    char key[BW_JOB_KEY_MAX];
    const char *id = job->a.assignment_id;
    bw_hmap_del(w->active, key, bw_job_key(key, job->a.tenant_id, id));
    if (bw_hmap_get(w->by_id, id, strlen(id)) == job) {
        if (bw_list_empty(&job->same_id))
            bw_hmap_del(w->by_id, id, strlen(id));
        else
            bw_hmap_put(w->by_id, id, strlen(id), bw_list_entry(job->same_id.next, bw_job_t, same_id));
    }
    bw_list_remove(&job->same_id);
}

static bw_job_t *find_active(const bw_worker_t *w, const char *tenant, const char *id)
{
    char key[BW_JOB_KEY_MAX];
    size_t kl = bw_job_key(key, tenant, id);
    return kl > 0 ? bw_hmap_get(w->active, key, kl) : NULL;
}

/* ---- job completion ---- */

static void update_gauges(const bw_worker_t *w)
{
    bw_sched_stats_t st;
    bw_sched_stats(w->sched, &st);
    bw_metrics_set(BW_G_IN_FLIGHT, (int64_t)st.running);
    bw_metrics_set(BW_G_QUEUED, (int64_t)st.waiting);
    bw_metrics_set(BW_G_TENANTS_WAITING, (int64_t)st.tenants_waiting);
    bw_metrics_set(BW_G_SHARED_RUNNING, (int64_t)st.shared_running);
    for (int k = 0; k < w->ntypes; k++)
        bw_metrics_set_type_jobs(w->metric_type[k], (int64_t)st.waiting_by_type[k],
                                 (int64_t)st.running_by_type[k]);
}

static void pump(bw_worker_t *w);

/* The slot or the place in a wait queue the job holds, given back (nothing when it holds neither). */
static void give_back_place(bw_worker_t *w, bw_job_t *job)
{
    if (job->sched.state == BW_SCHED_RUNNING)
        bw_sched_end(w->sched, &job->sched);
    else
        bw_sched_remove(w->sched, &job->sched);
}

static void log_finished(const bw_job_t *job, int64_t latency_ms)
{
    bw_log_level_t lvl = job->status == BW_ST_SUCCESS ? BW_LOG_INFO : BW_LOG_WARN;
    bw_log(lvl, "job finished", BW_LS("assignment_id", job->a.assignment_id),
           BW_LS("trace_id", job->a.trace_id), BW_LS("tenant_id", job->a.tenant_id),
           BW_LS("job_type", job->a.job_type), BW_LS("status", bw_status_name(job->status)),
           BW_LI("latency_ms", latency_ms), BW_LS("error_code", job->error_code),
           BW_LS("error_message", job->error_message));
}

/* Encodes the job's result; one too large for the transport (body and headers together) becomes a
   RESULT_TOO_LARGE error. The encoding stops soon after the limit, so an oversized output costs no more
   than the limit to find out. */
static char *encode_result(bw_worker_t *w, bw_job_t *job, int64_t latency_ms, size_t *len)
{
    size_t max, limit = result_body_limit(w, &job->a, &max);
    bw_result_t r = {.status = job->status,
                     .output = job->output,
                     .logs = job->logs,
                     .error_code = job->error_code,
                     .error_message = job->error_message,
                     .latency_ms = latency_ms,
                     .timestamp_ms = bw_wall_ms(),
                     .attempts = job->attempts,
                     .max_bytes = limit == SIZE_MAX ? 0 : limit};
    char *s = bw_result_encode(&job->a, &r, w->cfg->worker_id, w->cfg->envelope, len);
    if (*len <= limit)
        return s;
    char msg[200];
    snprintf(msg, sizeof msg,
             "the result and its %zu bytes of NATS headers are more than the NATS server's max_payload of "
             "%zu bytes",
             max - limit, max);
    free(s);
    json_decref(job->output);
    job->output = NULL;
    free(job->error_code);
    free(job->error_message);
    job->status = BW_ST_ERROR;
    job->error_code = bw_strdup("RESULT_TOO_LARGE");
    job->error_message = bw_strdup(msg);
    r = (bw_result_t){.status = BW_ST_ERROR,
                      .max_bytes = r.max_bytes,
                      .error_code = job->error_code,
                      .error_message = msg,
                      .latency_ms = latency_ms,
                      .timestamp_ms = r.timestamp_ms,
                      .attempts = job->attempts};
    return bw_result_encode(&job->a, &r, w->cfg->worker_id, w->cfg->envelope, len);
}

/* A job that failed through the worker's fault, given back to the transport for another delivery (its
   slot is freed, nothing is published or remembered): true when the transport took it. */
static bool given_back(bw_worker_t *w, bw_job_t *job)
{
    if (!job->worker_fault || w->opts.redeliver == NULL)
        return false;
    if (!w->opts.redeliver(w->opts.publish_ud, job->a.tenant_id, job->a.assignment_id)) {
        char why[1200];
        snprintf(why, sizeof why, "%s: %s (delivered CAF_JS_MAX_DELIVER times)", job->error_code,
                 job->error_message ? job->error_message : "");
        publish_max_deliver(w, &job->a, NULL, NULL, 0, NULL, why);
        return false;
    }
    bw_log(BW_LOG_WARN, "job failed through the worker's fault: given back for another delivery",
           BW_LS("assignment_id", job->a.assignment_id), BW_LS("tenant_id", job->a.tenant_id),
           BW_LS("error_code", job->error_code));
    return true;
}

static void on_job_done(bw_job_t *job)
{
    bw_worker_t *w = job->owner;
    int64_t latency_ms = (int64_t)((bw_mono_ns() - job->received_ns) / 1000000u);
    untrack(w, job);
    if (job->parked)
        w->parked--;
    else
        give_back_place(w, job);
    if (given_back(w, job)) {
        bw_job_release(job);
        pump(w);
        update_gauges(w);
        return;
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

static void on_job_parked(bw_job_t *job)
{
    bw_worker_t *w = job->owner;
    bw_sched_end(w->sched, &job->sched);
    w->parked++;
    if (w->opts.parked != NULL)
        w->opts.parked(w->opts.publish_ud, job->a.tenant_id, job->a.assignment_id);
    pump(w);
    update_gauges(w);
}

static void start_job(bw_job_t *job)
{
    bw_log(BW_LOG_DEBUG, "job started", BW_LS("assignment_id", job->a.assignment_id),
           BW_LS("job_type", job->a.job_type), BW_LS("tenant_id", job->a.tenant_id));
    bw_job_start(job, bw_handler_at(job->sched.type)); /* the type's index, found once at admission */
}

static void pump(bw_worker_t *w)
{
    if (w->pumping)
        return;
    w->pumping = true;
    bw_sched_item_t *it;
    while ((it = bw_sched_next(w->sched)) != NULL)
        start_job(bw_list_entry(it, bw_job_t, sched));
    w->pumping = false;
    update_gauges(w);
}

/* ---- intake ---- */

/* A duplicate is the same assignment id from the same tenant: the same id from another tenant is
   another job. */
static bool republish_duplicate(bw_worker_t *w, const bw_assignment_t *a)
{
    bw_dedup_entry_t e;
    if (find_active(w, a->tenant_id, a->assignment_id) != NULL) {
        bw_log(BW_LOG_DEBUG, "duplicate of an in-flight assignment ignored",
               BW_LS("assignment_id", a->assignment_id), BW_LS("tenant_id", a->tenant_id));
        return true;
    }
    if (bw_dedup_get(w->dedup, a->tenant_id, a->assignment_id, (int64_t)uv_now(w->loop), &e) == 0) {
        bw_log(BW_LOG_INFO, "duplicate of a finished assignment: result republished",
               BW_LS("assignment_id", a->assignment_id), BW_LS("tenant_id", a->tenant_id));
        result_msg_t r;
        result_msg_init(w, &r, e.tenant_id, e.trace_id, e.assignment_id);
        r.m.data = e.result;
        r.m.len = e.result_len;
        r.m.replay = true;
        w->opts.publish(w->opts.publish_ud, &r.m);
        return true;
    }
    return false;
}

/* Answers a job that will not run with an error result (and a rejected/error ack). */
static void answer_job(bw_worker_t *w, bw_job_t *job, const char *code, const char *fmt, const char *arg)
{
    track(w, job);
    publish_ack(w, &job->a, strcmp(code, "QUEUE_FULL") == 0 ? "rejected" : "error", code);
    w->stats.rejected++;
    bw_job_fail(job, BW_ST_ERROR, code, fmt, arg);
}

static void answer_now(bw_worker_t *w, bw_inbound_t *in, const char *code, const char *fmt, const char *arg)
{
    answer_job(w, bw_job_create(w->loop, &in->a, in->received_ns, on_job_done, w), code, fmt, arg);
}

static bw_job_t *new_job(bw_worker_t *w, bw_assignment_t *a, uint64_t received_ns)
{
    bw_job_t *job = bw_job_create(w->loop, a, received_ns, on_job_done, w);
    job->cfg = w->cfg;
    job->on_park = on_job_parked;
    size_t limit = result_body_limit(w, &job->a, NULL);
    job->output_limit = limit == SIZE_MAX ? 0 : (limit > 0 ? limit : 1);
    return job;
}

static void admit(bw_worker_t *w, bw_inbound_t *in)
{
    int type = bw_handler_index(in->a.job_type);
    if (type < 0) {
        answer_now(w, in, "UNKNOWN_JOB_TYPE", "unknown job type '%s'", in->a.job_type);
        return;
    }
    bw_job_t *job = new_job(w, &in->a, in->received_ns);
    const char *tenant = job->a.tenant_id;
    bw_sched_admit_t r = bw_sched_admit(w->sched, &job->sched, tenant, strlen(tenant), type);
    if (r == BW_SCHED_FULL_TENANT || r == BW_SCHED_FULL_GLOBAL) {
        bool own = r == BW_SCHED_FULL_TENANT;
        bw_metrics_inc(own ? BW_C_REFUSED_TENANT_QUEUE : BW_C_REFUSED_QUEUE);
        answer_job(w, job, "QUEUE_FULL", "%s",
                   own ? "the tenant's wait queue is full (TENANT_QUEUE_MAX)"
                       : "the worker's wait queue is full (WORKER_QUEUE_MAX)");
        return;
    }
    track(w, job);
    publish_ack(w, &job->a, "accepted", NULL);
    bw_job_arm_deadline(job);
    bw_log(BW_LOG_DEBUG, r == BW_SCHED_WAIT ? "job queued" : "job accepted",
           BW_LS("assignment_id", job->a.assignment_id), BW_LS("job_type", job->a.job_type),
           BW_LS("tenant_id", tenant));
    if (r == BW_SCHED_START)
        start_job(job);
    update_gauges(w);
}

/* Aborts the n jobs of jobs[] with one reason; nothing queued starts until all are done. */
static void abort_jobs(bw_worker_t *w, bw_job_t **jobs, size_t n, const char *why)
{
    bool was_pumping = w->pumping;
    w->pumping = true;
    for (size_t i = 0; i < n; i++)
        bw_job_abort(jobs[i], BW_ST_CANCELLED, "CANCELLED", why);
    w->pumping = was_pumping;
}

/* A cancel that names a tenant stops that tenant's job only; one that names none stops every active job
   with the id, whatever its tenant (the router's cancels carry none: who may cancel is decided by who may
   publish on the cancel subject). */
static void cancel(bw_worker_t *w, bw_inbound_t *in)
{
    const char *why = in->cancel_reason ? in->cancel_reason : "cancelled by request";
    bw_job_t *one = in->cancel_tenant ? find_active(w, in->cancel_tenant, in->cancel_id)
                                      : bw_hmap_get(w->by_id, in->cancel_id, strlen(in->cancel_id));
    if (one == NULL && w->approvals != NULL) /* JetStream mode: a pending approval in the bucket */
        bw_approvals_cancel(w->approvals, in->cancel_tenant, in->cancel_id, why);
    if (one == NULL) {
        bw_log(BW_LOG_DEBUG, "cancel for an assignment without a job here",
               BW_LS("assignment_id", in->cancel_id), BW_LS("tenant_id", in->cancel_tenant));
        return;
    }
    size_t n = 1;
    for (bw_list_t *l = one->same_id.next; in->cancel_tenant == NULL && l != &one->same_id; l = l->next)
        n++;
    bw_job_t **jobs = bw_calloc(n, sizeof *jobs);
    jobs[0] = one;
    for (size_t i = 1; i < n; i++)
        jobs[i] = bw_list_entry(jobs[i - 1]->same_id.next, bw_job_t, same_id);
    abort_jobs(w, jobs, n, why);
    free(jobs);
    pump(w);
}

/* An answerable assignment: a duplicate, an invalid one answered at once, or a job admitted. */
static void take_assignment(bw_worker_t *w, bw_inbound_t *in)
{
    w->stats.received++;
    bw_metrics_job_received(bw_metrics_type(in->a.job_type));
    if (republish_duplicate(w, &in->a)) {
        w->stats.duplicates++;
        bw_metrics_inc(BW_C_DUPLICATES);
    } else if (in->max_delivered) {
        char why[160];
        snprintf(why, sizeof why, "delivered %llu times without a result (CAF_JS_MAX_DELIVER)",
                 (unsigned long long)in->deliveries);
        publish_max_deliver(w, &in->a, in->subject, in->raw, in->raw_len, in->headers, why);
        answer_now(w, in, "MAX_DELIVER", "%s", why);
    } else if (in->st == BW_DECODE_INVALID)
        answer_now(w, in, in->err.code, "%s", in->err.message);
    else
        admit(w, in);
}

void bw_worker_accept(bw_worker_t *w, bw_inbound_t *in)
{
    if (in->kind == BW_IN_CANCEL) {
        cancel(w, in);
    } else {
        /* the original of a message the worker could not read whole is kept, answered or not */
        if (in->dead_letter)
            publish_dead_letter(w, in);
        if (in->st != BW_DECODE_DEAD)
            take_assignment(w, in);
    }
    bw_inbound_destroy(in);
}

/* ---- heartbeats ---- */

void bw_worker_heartbeat(bw_worker_t *w, const char *status)
{
    size_t len;
    bw_sched_stats_t st;
    bw_sched_stats(w->sched, &st);
    bw_heartbeat_t h = {.worker_id = w->cfg->worker_id,
                        .status = status ? status : (st.running > 0 ? "busy" : "idle"),
                        .load = (double)st.shared_running / (double)w->cfg->max_concurrency,
                        .in_flight = (int64_t)st.running,
                        .queued = (int64_t)st.waiting,
                        .max_concurrency = w->cfg->max_concurrency,
                        .uptime_s = (int64_t)((bw_mono_ns() - w->start_ns) / 1000000000u),
                        .rss_bytes = bw_metrics_rss_bytes(),
                        .build = BW_VERSION "+" BW_GIT_COMMIT};
    if (status == NULL && w->draining)
        h.status = "draining";
    json_t *extra = w->opts.heartbeat_extra ? w->opts.heartbeat_extra(w->opts.publish_ud) : NULL;
    h.consumer = extra;
    char *s = bw_heartbeat_encode(&h, w->cfg->envelope, &len);
    json_decref(extra);
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

/* Collects the active jobs that hold or wait for a slot: parked ones (pending approvals) are not stopped
   by a drain, they stay in their journal for the next start. */
static void collect_job(void *ud, const char *key, void *value)
{
    (void)key;
    bw_job_t ***cursor = ud, *job = value;
    if (job->parked)
        return;
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
    abort_jobs(w, jobs, (size_t)(cursor - jobs), why); /* nothing queued may start while we cancel */
    free(jobs);
}

void bw_worker_set_draining(bw_worker_t *w)
{
    if (w->draining)
        return;
    w->draining = true;
    bw_metrics_set(BW_G_DRAINING, 1);
    bw_log(BW_LOG_INFO, "draining", BW_LI("running", bw_worker_active(w) - bw_sched_waiting(w->sched)),
           BW_LI("queued", bw_sched_waiting(w->sched)), BW_LI("timeout_ms", w->cfg->shutdown_timeout_ms));
    if (w->opts.heartbeats)
        bw_worker_heartbeat(w, "draining");
}

void bw_worker_abandon_all(bw_worker_t *w)
{
    size_t n = bw_hmap_size(w->active);
    if (n == 0)
        return;
    bw_job_t **jobs = bw_calloc(n, sizeof *jobs), **cursor = jobs;
    bw_hmap_foreach(w->active, collect_job, &cursor); /* not the parked ones */
    bool was_pumping = w->pumping;
    w->pumping = true; /* nothing queued may start meanwhile */
    for (bw_job_t **j = jobs; j < cursor; j++) {
        bw_job_t *job = *j;
        if (job->state == BW_JOB_RUNNING && job->handler->cancel != NULL)
            job->handler->cancel(job); /* stopped for real: the next delivery runs it elsewhere */
        bw_log(BW_LOG_INFO, "job abandoned: given back to the server",
               BW_LS("assignment_id", job->a.assignment_id), BW_LS("tenant_id", job->a.tenant_id));
        bw_worker_detach(w, job);
    }
    w->pumping = was_pumping;
    free(jobs);
    update_gauges(w);
}

void bw_worker_remember(bw_worker_t *w, const char *tenant, const char *id, const char *trace,
                        const char *result, size_t len)
{
    bw_dedup_entry_t e = {id, tenant, trace, result, len};
    bw_dedup_put(w->dedup, &e, (int64_t)uv_now(w->loop));
}

size_t bw_worker_active(const bw_worker_t *w)
{
    return bw_hmap_size(w->active) - w->parked;
}

int64_t bw_worker_room(const bw_worker_t *w)
{
    return w->cfg->max_concurrency - (int64_t)bw_sched_shared_running(w->sched) -
           (int64_t)bw_sched_waiting(w->sched);
}

size_t bw_worker_parked(const bw_worker_t *w)
{
    return w->parked;
}

void bw_worker_set_approvals(bw_worker_t *w, struct bw_approvals *r)
{
    w->approvals = r;
}

struct bw_approvals *bw_worker_approvals(const bw_worker_t *w)
{
    return w->approvals;
}

bw_job_t *bw_worker_find(const bw_worker_t *w, const char *tenant, const char *id)
{
    return find_active(w, tenant, id);
}

bool bw_worker_has_result(const bw_worker_t *w, const char *tenant, const char *id)
{
    bw_dedup_entry_t e;
    return bw_dedup_get(w->dedup, tenant, id, (int64_t)uv_now(w->loop), &e) == 0;
}

bw_job_t *bw_worker_resume(bw_worker_t *w, bw_assignment_t *a, int64_t received_wall_ms,
                           const bw_handler_t *h, void *hdata)
{
    if (find_active(w, a->tenant_id, a->assignment_id) != NULL)
        return NULL;
    /* the monotonic clock of this boot: a reception before it is taken as its start */
    int64_t ago_ms = bw_wall_ms() - received_wall_ms;
    uint64_t now = bw_mono_ns(), ago_ns = ago_ms > 0 ? (uint64_t)ago_ms * 1000000u : 0;
    bw_job_t *job = new_job(w, a, ago_ns < now ? now - ago_ns : 0);
    track(w, job);
    w->parked++;
    int64_t left = job->a.timeout_ms - (ago_ms > 0 ? ago_ms : 0);
    bw_job_resume(job, h, hdata, left);
    return job;
}

void bw_worker_detach(bw_worker_t *w, bw_job_t *job)
{
    if (job->state == BW_JOB_DONE)
        return;
    untrack(w, job);
    if (job->parked)
        w->parked--;
    else
        give_back_place(w, job);
    bw_job_detach(job);
    bw_job_release(job);
    update_gauges(w);
}

/* ---- the scheduler ---- */

static int set_weight(void *ud, const char *name, size_t len, int64_t value, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    bw_sched_set_weight(ud, name, len, (int)value);
    return 0;
}

typedef struct type_caps {
    int cap[BW_SCHED_MAX_TYPES];
} type_caps_t;

static int set_type_cap(void *ud, const char *name, size_t len, int64_t value, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    char type[64];
    snprintf(type, sizeof type, "%.*s", (int)(len < sizeof type ? len : sizeof type - 1), name);
    int k = bw_handler_index(type);
    if (k >= 0 && k < BW_SCHED_MAX_TYPES)
        ((type_caps_t *)ud)->cap[k] = (int)value;
    return 0;
}

/* The scheduler from the configuration (validated at load): each type's cap is its handler's default
   (for a type that waits on the outside world, at least WORKER_MAX_CONCURRENCY) unless
   WORKER_TYPE_CONCURRENCY names it; the types that wait on the outside world run beside the shared slots
   when they have one. The last type index stands for types without a handler (never admitted). */
static void create_sched(bw_worker_t *w)
{
    const bw_config_t *cfg = w->cfg;
    const char *const *names = bw_handler_names();
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    type_caps_t caps;
    bool own[BW_SCHED_MAX_TYPES] = {false};
    w->ntypes = bw_handler_count() < BW_SCHED_MAX_TYPES ? bw_handler_count() : BW_SCHED_MAX_TYPES - 1;
    for (int k = 0; k < w->ntypes; k++) {
        const bw_handler_t *h = bw_handler_find(names[k]);
        caps.cap[k] = h->concurrency == BW_CONCURRENCY_CPUS ? (int)(cpus > 0 ? cpus : 1) : h->concurrency;
        if (h->waits && caps.cap[k] > 0 && caps.cap[k] < cfg->max_concurrency) /* never fewer than before */
            caps.cap[k] = (int)cfg->max_concurrency;
        own[k] = h->waits;
        w->metric_type[k] = bw_metrics_type(names[k]);
    }
    bw_config_pairs("WORKER_TYPE_CONCURRENCY", cfg->type_concurrency, 0, 100000, set_type_cap, &caps, NULL,
                    0);
    bw_sched_opts_t o = {.shared_slots = (int)cfg->max_concurrency,
                         .ntypes = w->ntypes + 1,
                         .type_cap = caps.cap,
                         .own_pool = own,
                         .tenant_max_running = (int)cfg->tenant_max_concurrency,
                         .queue_max = (size_t)cfg->queue_max,
                         .tenant_queue_max = (size_t)cfg->tenant_queue_max};
    caps.cap[w->ntypes] = 0;
    w->sched = bw_sched_create(&o);
    bw_config_pairs("TENANT_WEIGHTS", cfg->tenant_weights, 1, 1000, set_weight, w->sched, NULL, 0);
    for (int k = 0; k < w->ntypes; k++)
        bw_log(BW_LOG_DEBUG, "job type concurrency", BW_LS("job_type", names[k]), BW_LI("cap", caps.cap[k]),
               BW_LS("slots", caps.cap[k] > 0 && own[k] ? "own" : "shared"));
}

/* METRICS_TENANT_LABELS: the per-tenant series, rendered here (the loop owns the scheduler) and handed
   to the metrics for the HTTP thread. */
static void tenant_series(void *ud, const char *tenant, size_t len, size_t waiting, size_t running)
{
    bw_buf_t *b[2] = {((bw_buf_t **)ud)[0], ((bw_buf_t **)ud)[1]};
    char label[256 * 2 + 1];
    size_t n = 0;
    for (size_t i = 0; i < len && n + 2 < sizeof label; i++) {
        char c = tenant[i];
        if (c == '\\' || c == '"' || c == '\n') {
            label[n++] = '\\';
            c = c == '\n' ? 'n' : c;
        }
        label[n++] = c;
    }
    label[n] = '\0';
    bw_buf_printf(b[0], "beamline_worker_tenant_jobs_waiting{tenant=\"%s\"} %zu\n", label, waiting);
    bw_buf_printf(b[1], "beamline_worker_tenant_jobs_running{tenant=\"%s\"} %zu\n", label, running);
}

static void on_tenant_metrics(uv_timer_t *t)
{
    bw_worker_t *w = t->data;
    bw_buf_t waiting, running;
    bw_buf_init(&waiting, 4096);
    bw_buf_init(&running, 4096);
    bw_buf_t *b[2] = {&waiting, &running};
    bw_buf_puts(&waiting, "# HELP beamline_worker_tenant_jobs_waiting Jobs waiting, per tenant "
                          "(METRICS_TENANT_LABELS).\n# TYPE beamline_worker_tenant_jobs_waiting gauge\n");
    bw_buf_puts(&running, "# HELP beamline_worker_tenant_jobs_running Jobs running, per tenant "
                          "(METRICS_TENANT_LABELS).\n# TYPE beamline_worker_tenant_jobs_running gauge\n");
    bw_sched_foreach_tenant(w->sched, tenant_series, b);
    bw_buf_append(&waiting, running.p, running.len);
    bw_metrics_set_tenant_text(waiting.p, waiting.len);
    bw_buf_dispose(&waiting);
    bw_buf_dispose(&running);
}

/* ---- lifecycle ---- */

bw_worker_t *bw_worker_create(uv_loop_t *loop, const bw_config_t *cfg, const bw_worker_opts_t *opts)
{
    bw_worker_t *w = bw_calloc(1, sizeof *w);
    w->loop = loop;
    w->cfg = cfg;
    w->opts = *opts;
    w->active = bw_hmap_create();
    w->by_id = bw_hmap_create();
    create_sched(w);
    /* dead letters are sized against the same transport as results */
    bw_deadletters_set_max_payload(opts->dead, opts->max_payload, opts->publish_ud);
    w->dedup =
        bw_dedup_create((size_t)cfg->dedup_max_entries, (size_t)cfg->dedup_max_bytes, cfg->dedup_ttl_ms);
    w->start_ns = bw_mono_ns();
    bw_metrics_set(BW_G_MAX_CONCURRENCY, cfg->max_concurrency);
    uv_timer_init(loop, &w->heartbeat);
    w->heartbeat.data = w;
    w->open_handles = 2;
    uv_timer_init(loop, &w->tenant_metrics);
    w->tenant_metrics.data = w;
    if (cfg->metrics_tenant_labels) {
        uv_timer_start(&w->tenant_metrics, on_tenant_metrics, 0, 1000);
        uv_unref((uv_handle_t *)&w->tenant_metrics);
    }
    if (opts->heartbeats)
        uv_timer_start(&w->heartbeat, on_heartbeat, (uint64_t)cfg->heartbeat_interval_ms,
                       (uint64_t)cfg->heartbeat_interval_ms);
    return w;
}

void bw_worker_get_stats(const bw_worker_t *w, bw_worker_stats_t *s)
{
    *s = w->stats;
    bw_sched_stats_t st;
    bw_sched_stats(w->sched, &st);
    s->queued = st.waiting;
    s->running = st.running;
    s->draining = w->draining;
}

static void on_worker_closed(uv_handle_t *h)
{
    bw_worker_t *w = h->data;
    if (--w->open_handles > 0)
        return;
    bw_hmap_destroy(w->active);
    bw_hmap_destroy(w->by_id);
    bw_dedup_destroy(w->dedup);
    bw_sched_destroy(w->sched);
    free(w);
}

static void collect_parked(void *ud, const char *key, void *value)
{
    (void)key;
    bw_job_t ***cursor = ud, *job = value;
    if (job->parked)
        *(*cursor)++ = job;
}

static void detach_parked(bw_worker_t *w)
{
    if (w->parked == 0)
        return;
    bw_job_t **jobs = bw_calloc(w->parked, sizeof *jobs), **cursor = jobs;
    bw_hmap_foreach(w->active, collect_parked, &cursor);
    for (bw_job_t **j = jobs; j < cursor; j++)
        bw_worker_detach(w, *j);
    free(jobs);
}

void bw_worker_destroy(bw_worker_t *w)
{
    if (w == NULL)
        return;
    w->pumping = true;
    bw_worker_cancel_all(w, "worker shutting down");
    detach_parked(w); /* normally none: the approvals registry detached its own before */
    bw_handlers_shutdown();
    if (w->cfg->metrics_tenant_labels)
        bw_metrics_set_tenant_text(NULL, 0);
    uv_close((uv_handle_t *)&w->tenant_metrics, on_worker_closed);
    uv_close((uv_handle_t *)&w->heartbeat, on_worker_closed);
}
