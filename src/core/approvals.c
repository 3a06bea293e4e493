/*
 * The registry of pending approvals (see approvals.h). Loop thread only, but for bw_approvals_http, which
 * queues requests from the HTTP thread under `mu` and wakes the loop.
 *
 * An approval's life: RECORDING (its request record is being journaled: decisions are refused NOT_READY)
 * -> PENDING (journaled, ApprovalRequest published, job parked) -> DONE (job completed: decided, timed
 * out, cancelled; or detached at shutdown). The job's dispose is the one place an approval leaves the
 * maps, so every way a job ends (a decision, its deadline, a cancel, the worker stopping) goes through it.
 * An approval is freed once it is DONE and no journal write it waits for is outstanding (`refs`).
 *
 * Journal records: {"t":"req","a":assignment,"rcv":ms,"req":ms,"exp":ms,"spec":{...}},
 * {"t":"vote","k":[tenant,id],"v":{approver,decision,comment,decided_at,at}}, {"t":"end","k":[tenant,id]}.
 * A vote is answered "accepted" only once it is durable; the job completes when the durable votes for one
 * option reach the quorum, so a restart between the last vote and the result completes it on replay.
 */
#include "core/approvals.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/handler.h"
#include "core/job.h"
#include "obs/log.h"
#include "obs/metrics.h"
#include "store/approval_journal.h"
#include "net/jsproto.h"
#include "store/dedup.h"
#include "util/buf.h"
#include "util/clock.h"
#include "util/hmap.h"
#include "util/list.h"
#include "util/utf8.h"
#include "util/xalloc.h"

#define COMPACT_MIN_LINES 1024 /* compact when the journal has this many lines ... */
#define COMPACT_RATIO 4        /* ... and more than this many per live one */
#define MAX_NAME_BYTES 256     /* approver, decision */
#define MAX_COMMENT_BYTES 4096
#define MAX_BODY_BYTES (64 * 1024)
#define FINISHED_MEMORY 10000 /* decided/ended approvals remembered, so a late decision hears "finished" */
#define KV_SWEEP_MS 200 /* JetStream mode: deadlines, cancels and stranded ends are looked at this often */
#define KV_CLAIM_GRACE_MS                                                                                    \
    15000                /* an end claimed this long ago whose entry is still there: its claimer died */
#define KV_RETRY_MS 1000 /* a claim the bucket did not answer is tried again after this */
#define KV_MAX_TRIES 8   /* writes of one vote that lost the race to another writer */
#define KV_KEY_MAX ((BW_MAX_TENANT_BYTES + 2) / 3 * 4 + (BW_MAX_ID_BYTES + 2) / 3 * 4 + 2)

typedef enum { A_RECORDING = 0, A_PENDING, A_DONE } astate_t;

typedef struct vote {
    char *approver, *decision, *comment;
    int64_t at_ms;
    bool durable;
    char *line; /* its journal record, "{...}\n" (kept for compactions) */
    size_t line_len;
} vote_t;

typedef struct approval {
    bw_list_t same_id; /* ring of approvals with this id (other tenants) */
    bw_approvals_t *r;
    bw_job_t *job;
    char *tenant, *id, *trace_id;
    json_t *spec;   /* {prompt, options, approvers, quorum, context} */
    char *req_line; /* its request record, "{...}\n" (kept for compactions) */
    size_t req_len;
    int quorum;
    int64_t received_ms, requested_ms, expires_ms; /* wall clock */
    vote_t *votes;
    size_t nvotes;
    astate_t state;
    bool in_journal; /* its request record is written: its end is owed */
    int refs;        /* journal writes (bucket operations) outstanding */
    /* JetStream mode: the approval as the bucket holds it (the mirror) */
    char *kvkey;
    uint64_t rev;      /* the entry's revision the mirror holds */
    json_t *asg;       /* the assignment as stored (bw_assignment_to_json, without the payload) */
    json_t *end;       /* {status, by, at, reason?}: a worker claimed the approval's end; NULL: pending */
    char *cancel_why;  /* a cancel not yet claimed */
    bool busy;         /* a claim of this worker is in flight */
    uint64_t retry_at; /* loop time before which a failed claim is not tried again */
} approval_t;

typedef struct http_rq {
    bw_list_t link;
    bw_approvals_op_t op;
    size_t limit;
    char *id, *tenant, *body;
    size_t len;
    bw_http_reply_t *reply;
} http_rq_t;

struct bw_approvals {
    uv_loop_t *loop;
    const bw_config_t *cfg;
    bw_worker_t *worker;
    bw_publish_fn publish;
    void *publish_ud;
    bw_ajournal_t *journal;
    bw_hmap_t *by_key; /* bw_job_key(tenant, id) -> approval */
    bw_hmap_t *by_id;  /* id -> one approval of the ring with that id */
    size_t pending;    /* approvals not DONE */
    char *own_subject;
    bw_hmap_t *finished;  /* bw_job_key(tenant, id) and "\0id" of approvals that ended -> 1 */
    char **finished_ring; /* the keys above, oldest first out (FINISHED_MEMORY entries) */
    size_t *finished_len;
    size_t finished_next;
    uint64_t journal_lines; /* lines in the journal file (since replay or the last compaction) */
    uint64_t live_lines;    /* ... of approvals not DONE */
    bool compacting, closing;
    /* JetStream mode: the bucket (kv.put != NULL), mirrored by key, and the sweep of deadlines */
    bw_akv_ops_t kv;
    bool loaded;
    bw_hmap_t *by_kvkey;
    uv_timer_t sweep;
    int handles;        /* still to close at destroy */
    pthread_mutex_t mu; /* http_q, accepting */
    bw_list_t http_q;
    bool accepting;
    uv_async_t http_async;
};

static const char *const refuse_names[BW_AREFUSE__COUNT] = {
    "accepted", "invalid_request", "not_an_option", "not_an_approver", "unknown",
    "finished", "already_voted",   "ambiguous",     "not_ready",       "store_error"};
static const unsigned refuse_status[BW_AREFUSE__COUNT] = {200, 400, 400, 403, 404, 409, 409, 409, 503, 503};

const char *bw_arefuse_name(bw_arefuse_t r)
{
    return r < BW_AREFUSE__COUNT ? refuse_names[r] : "unknown";
}

unsigned bw_arefuse_http_status(bw_arefuse_t r)
{
    return r < BW_AREFUSE__COUNT ? refuse_status[r] : 500;
}

/* ---- keys and lookup ---- */

static void index_add(bw_approvals_t *r, approval_t *a)
{
    char key[BW_JOB_KEY_MAX];
    bw_hmap_put(r->by_key, key, bw_job_key(key, a->tenant, a->id), a);
    approval_t *first = bw_hmap_get(r->by_id, a->id, strlen(a->id));
    if (first != NULL)
        bw_list_push(&first->same_id, &a->same_id);
    else
        bw_hmap_put(r->by_id, a->id, strlen(a->id), a);
    r->pending++;
    bw_metrics_set(BW_G_APPROVALS_PENDING, (int64_t)r->pending);
}

static void forget_oldest(bw_approvals_t *r)
{
    size_t i = r->finished_next;
    if (r->finished_ring[i] != NULL) {
        bw_hmap_del(r->finished, r->finished_ring[i], r->finished_len[i]);
        free(r->finished_ring[i]);
        r->finished_ring[i] = NULL;
    }
}

static void remember_key(bw_approvals_t *r, const char *key, size_t kl)
{
    if (bw_hmap_get(r->finished, key, kl) != NULL)
        return;
    forget_oldest(r);
    char *k = bw_malloc(kl);
    memcpy(k, key, kl);
    r->finished_ring[r->finished_next] = k;
    r->finished_len[r->finished_next] = kl;
    r->finished_next = (r->finished_next + 1) % FINISHED_MEMORY;
    bw_hmap_put(r->finished, k, kl, (void *)1);
}

/* An approval that ended: decisions for it are refused "finished" (by tenant and id, or by id alone). */
static void remember_finished(bw_approvals_t *r, const approval_t *a)
{
    char key[BW_JOB_KEY_MAX + 1];
    remember_key(r, key, bw_job_key(key, a->tenant, a->id));
    size_t n = strlen(a->id);
    key[0] = '\0'; /* no tenant key starts with a NUL byte: bw_job_key's are length-prefixed */
    memcpy(key + 1, a->id, n);
    remember_key(r, key, n + 1);
}

static bool was_finished(const bw_approvals_t *r, const char *tenant, const char *id)
{
    char key[BW_JOB_KEY_MAX + 1];
    size_t kl;
    if (tenant != NULL)
        kl = bw_job_key(key, tenant, id);
    else {
        kl = strlen(id) + 1;
        key[0] = '\0';
        memcpy(key + 1, id, kl - 1);
    }
    return kl > 0 && bw_hmap_get(r->finished, key, kl) != NULL;
}

static void index_remove(bw_approvals_t *r, approval_t *a)
{
    char key[BW_JOB_KEY_MAX];
    bw_hmap_del(r->by_key, key, bw_job_key(key, a->tenant, a->id));
    if (bw_hmap_get(r->by_id, a->id, strlen(a->id)) == a) {
        if (bw_list_empty(&a->same_id))
            bw_hmap_del(r->by_id, a->id, strlen(a->id));
        else
            bw_hmap_put(r->by_id, a->id, strlen(a->id), bw_list_entry(a->same_id.next, approval_t, same_id));
    }
    bw_list_remove(&a->same_id);
    r->pending--;
    bw_metrics_set(BW_G_APPROVALS_PENDING, (int64_t)r->pending);
}

/* The approval a request names: by tenant and id, or by id alone when exactly one tenant has it. */
static approval_t *lookup(bw_approvals_t *r, const char *tenant, const char *id, bw_arefuse_t *why)
{
    char key[BW_JOB_KEY_MAX];
    if (tenant != NULL) {
        size_t kl = bw_job_key(key, tenant, id);
        approval_t *a = kl > 0 ? bw_hmap_get(r->by_key, key, kl) : NULL;
        *why = a != NULL ? BW_AREFUSE_NONE
               : kl > 0 && (was_finished(r, tenant, id) || bw_worker_has_result(r->worker, tenant, id))
                   ? BW_AREFUSE_FINISHED
                   : BW_AREFUSE_UNKNOWN;
        return a;
    }
    approval_t *a = bw_hmap_get(r->by_id, id, strlen(id));
    if (a == NULL) {
        *why = was_finished(r, NULL, id) ? BW_AREFUSE_FINISHED : BW_AREFUSE_UNKNOWN;
        return NULL;
    }
    if (!bw_list_empty(&a->same_id)) {
        *why = BW_AREFUSE_AMBIGUOUS;
        return NULL;
    }
    *why = BW_AREFUSE_NONE;
    return a;
}

/* ---- approvals ---- */

static void votes_clear(approval_t *a)
{
    for (size_t i = 0; i < a->nvotes; i++) {
        free(a->votes[i].approver);
        free(a->votes[i].decision);
        free(a->votes[i].comment);
        free(a->votes[i].line);
    }
    free(a->votes);
    a->votes = NULL;
    a->nvotes = 0;
}

static void approval_free(approval_t *a)
{
    votes_clear(a);
    free(a->req_line);
    free(a->kvkey);
    json_decref(a->asg);
    json_decref(a->end);
    free(a->cancel_why);
    free(a->tenant);
    free(a->id);
    free(a->trace_id);
    json_decref(a->spec);
    free(a);
}

static void approval_unref(approval_t *a)
{
    if (--a->refs == 0 && a->state == A_DONE)
        approval_free(a);
}

static approval_t *approval_new(bw_approvals_t *r, const char *tenant, const char *id, const char *trace,
                                json_t *spec)
{
    approval_t *a = bw_calloc(1, sizeof *a);
    bw_list_init(&a->same_id);
    a->r = r;
    a->tenant = bw_strdup(tenant);
    a->id = bw_strdup(id);
    a->trace_id = trace ? bw_strdup(trace) : NULL;
    a->spec = json_incref(spec);
    json_t *q = json_object_get(spec, "quorum");
    a->quorum = json_is_integer(q) ? (int)json_integer_value(q) : 1;
    return a;
}

/* A new approval for a running job, its times counted from the job's reception, in the maps. */
static approval_t *approval_of_job(bw_approvals_t *r, bw_job_t *job, json_t *spec)
{
    approval_t *a = approval_new(r, job->a.tenant_id, job->a.assignment_id, job->a.trace_id, spec);
    int64_t now = bw_wall_ms(), waited = (int64_t)((bw_mono_ns() - job->received_ns) / 1000000u);
    a->job = job;
    a->received_ms = now - waited;
    a->requested_ms = now;
    a->expires_ms = a->received_ms + job->a.timeout_ms;
    job->hdata = a;
    index_add(r, a);
    return a;
}

static json_t *key_json(const approval_t *a)
{
    return json_pack("[ss]", a->tenant, a->id);
}

static json_t *rfc3339(int64_t ms)
{
    char buf[40];
    return json_string(bw_rfc3339_ms(ms, buf, sizeof buf));
}

static json_t *vote_json(const vote_t *v)
{
    return json_pack("{s:s, s:s, s:o, s:o}", "approver", v->approver, "decision", v->decision, "comment",
                     v->comment ? json_string(v->comment) : json_null(), "decided_at", rfc3339(v->at_ms));
}

static json_t *votes_json(const approval_t *a)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < a->nvotes; i++)
        if (a->votes[i].durable)
            json_array_append_new(arr, vote_json(&a->votes[i]));
    return arr;
}

/* The view of an approval (the list and the API). */
static json_t *view_json(const bw_approvals_t *r, const approval_t *a, int64_t now_ms)
{
    json_t *v = json_object();
    json_object_set_new(v, "assignment_id", json_string(a->id));
    json_object_set_new(v, "tenant_id", json_string(a->tenant));
    json_object_set_new(v, "trace_id", a->trace_id ? json_string(a->trace_id) : json_null());
    json_object_update(v, a->spec);
    json_object_set_new(v, "requested_at", rfc3339(a->requested_ms));
    json_object_set_new(v, "expires_at", rfc3339(a->expires_ms));
    json_object_set_new(v, "expires_in_ms",
                        json_integer(a->expires_ms > now_ms ? a->expires_ms - now_ms : 0));
    json_object_set_new(v, "votes", votes_json(a));
    json_object_set_new(v, "decision_subject", json_string(r->own_subject));
    json_object_set_new(v, "state", json_string(a->state == A_RECORDING ? "recording" : "pending"));
    return v;
}

/* ---- the journal ---- */

static void maybe_compact(bw_approvals_t *r);

/* A record as its journal line, "{...}\n"; rec is stolen. */
static char *record_line(json_t *rec, size_t *len)
{
    char *s = json_dumps(rec, JSON_COMPACT);
    json_decref(rec);
    size_t n = strlen(s);
    s = bw_realloc(s, n + 2);
    s[n] = '\n';
    s[n + 1] = '\0';
    *len = n + 1;
    return s;
}

/* Appends a line (copied); a (may be NULL) is kept alive until cb ran. */
static void journal_append(bw_approvals_t *r, approval_t *a, const char *line, size_t len, bool sync,
                           bw_ajournal_cb cb, void *ud)
{
    if (a != NULL)
        a->refs++;
    r->journal_lines++;
    bw_ajournal_append_line(r->journal, line, len, sync, cb, ud);
}

static int durable_votes(const approval_t *a)
{
    int n = 0;
    for (size_t i = 0; i < a->nvotes; i++)
        n += a->votes[i].durable;
    return n;
}

static void journal_end(bw_approvals_t *r, approval_t *a)
{
    if (!a->in_journal || r->closing)
        return;
    r->live_lines -= 1 + (uint64_t)durable_votes(a);
    size_t len;
    char *line = record_line(json_pack("{s:s, s:o}", "t", "end", "k", key_json(a)), &len);
    journal_append(r, NULL, line, len, false, NULL, NULL);
    free(line);
    maybe_compact(r);
}

static json_t *request_record(const approval_t *a)
{
    bw_job_t *job = a->job;
    json_t *rec = json_pack("{s:s, s:o, s:I, s:I, s:I, s:O}", "t", "req", "a", bw_assignment_to_json(&job->a),
                            "rcv", (json_int_t)a->received_ms, "req", (json_int_t)a->requested_ms, "exp",
                            (json_int_t)a->expires_ms, "spec", a->spec);
    return rec;
}

static json_t *vote_record(const approval_t *a, const vote_t *v)
{
    json_t *vj = vote_json(v);
    json_object_set_new(vj, "at", json_integer(v->at_ms));
    return json_pack("{s:s, s:o, s:o}", "t", "vote", "k", key_json(a), "v", vj);
}

typedef struct snapshot {
    bw_buf_t lines;
    size_t n;
} snapshot_t;

/* Every approval in the maps has its request record written or queued, and every vote not refused has
   its record written or queued: the compaction, queued after them, must keep them all. Their lines are
   kept, so this is a copy (a journal of 10,000 approvals is a few MB), not a serialisation. */
static void snapshot_one(void *ud, const char *key, void *value)
{
    (void)key;
    snapshot_t *s = ud;
    approval_t *a = value;
    bw_buf_append(&s->lines, a->req_line, a->req_len);
    s->n++;
    for (size_t i = 0; i < a->nvotes; i++) {
        if (a->votes[i].approver[0] != '\0') {
            bw_buf_append(&s->lines, a->votes[i].line, a->votes[i].line_len);
            s->n++;
        }
    }
}

static void on_compacted(void *ud, int err)
{
    bw_approvals_t *r = ud;
    r->compacting = false;
    if (err != 0)
        bw_log(BW_LOG_WARN, "approval journal compaction failed", BW_LS("error", strerror(err)));
}

/* Rewrites the journal with the live records once ended approvals dominate it. */
static void maybe_compact(bw_approvals_t *r)
{
    if (r->compacting || r->closing || r->journal_lines < COMPACT_MIN_LINES ||
        r->journal_lines <= COMPACT_RATIO * r->live_lines)
        return;
    snapshot_t s = {{0}, 0};
    bw_buf_init(&s.lines, (size_t)r->live_lines * 512 + 64);
    bw_hmap_foreach(r->by_key, snapshot_one, &s);
    r->journal_lines = s.n;
    r->compacting = true;
    bw_ajournal_compact_lines(r->journal, s.lines.p, s.lines.len, s.n, on_compacted, r);
}

/* ---- completion ---- */

static int durable_count(const approval_t *a, const char *decision)
{
    int n = 0;
    for (size_t i = 0; i < a->nvotes; i++)
        n += a->votes[i].durable && strcmp(a->votes[i].decision, decision) == 0;
    return n;
}

/* Completes a's job with the decision v reached. */
static void succeed_with(approval_t *a, const vote_t *v)
{
    json_t *out = json_object();
    json_object_set(out, "prompt", json_object_get(a->spec, "prompt"));
    json_object_set(out, "options", json_object_get(a->spec, "options"));
    json_object_set_new(out, "decision", json_string(v->decision));
    json_object_set_new(out, "approver", json_string(v->approver));
    json_object_set_new(out, "comment", v->comment ? json_string(v->comment) : json_null());
    json_object_set_new(out, "decided_at", rfc3339(v->at_ms));
    json_object_set_new(out, "votes", votes_json(a));
    bw_metrics_approval_decided(v->at_ms > a->requested_ms ? (uint64_t)(v->at_ms - a->requested_ms) : 0);
    bw_log(BW_LOG_INFO, "approval decided", BW_LS("assignment_id", a->id), BW_LS("tenant_id", a->tenant),
           BW_LS("decision", v->decision), BW_LS("approver", v->approver));
    bw_job_succeed(a->job, out); /* disposes: the approval leaves the maps, its end is journaled */
}

/* Completes the job when the durable votes for v's option reach the quorum. */
static bool maybe_complete(approval_t *a, const vote_t *v)
{
    if (a->state != A_PENDING || a->job == NULL || durable_count(a, v->decision) < a->quorum)
        return false;
    succeed_with(a, v);
    return true;
}

/* ---- decisions ---- */

typedef void (*answer_fn)(void *ud, bw_arefuse_t why, const char *message, bool completed);

typedef struct vote_wait {
    approval_t *a;
    size_t index; /* of the vote in a->votes */
    answer_fn answer;
    void *ud;
} vote_wait_t;

static void refuse(answer_fn answer, void *ud, bw_arefuse_t why, const char *message)
{
    bw_metrics_approval_decision((int)why);
    answer(ud, why, message, false);
}

static void on_vote_recorded(void *ud, int err)
{
    vote_wait_t *w = ud;
    approval_t *a = w->a;
    vote_t *v = &a->votes[w->index];
    if (err == 0 && a->r->closing) {
        /* durable: the next start counts it (and completes the job if it reached the quorum) */
        bw_metrics_approval_decision(0);
        w->answer(w->ud, BW_AREFUSE_NONE, NULL, false);
    } else if (err != 0) {
        bw_metrics_inc(BW_C_APPROVAL_JOURNAL_ERRORS);
        bw_log(BW_LOG_ERROR, "approval vote could not be journaled", BW_LS("assignment_id", a->id),
               BW_LS("error", strerror(err)));
        /* forgotten, so the approver may try again */
        free(v->approver);
        v->approver = bw_strdup("");
        refuse(w->answer, w->ud, BW_AREFUSE_STORE_ERROR, "the vote could not be written to the journal");
    } else {
        v->durable = true;
        if (a->state == A_DONE) {
            refuse(w->answer, w->ud, BW_AREFUSE_FINISHED,
                   "the assignment finished while the vote was recorded");
        } else {
            a->r->live_lines++;
            bw_metrics_approval_decision(0);
            bool completed = !a->r->closing && maybe_complete(a, v);
            w->answer(w->ud, BW_AREFUSE_NONE, NULL, completed);
        }
    }
    free(w);
    approval_unref(a);
}

static const char *field_str(json_t *o, const char *k, size_t max, bool required, bool *bad)
{
    json_t *v = json_object_get(o, k);
    if (v == NULL || json_is_null(v)) {
        *bad |= required;
        return NULL;
    }
    const char *s = json_string_value(v);
    if (s == NULL || json_string_length(v) > max || strlen(s) != json_string_length(v) ||
        (required && *s == '\0')) {
        *bad = true;
        return NULL;
    }
    return s;
}

static bool listed(json_t *arr, const char *s)
{
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) if (json_is_string(v) && strcmp(json_string_value(v), s) == 0) return true;
    return false;
}

/* Whether approver may vote decision on a now: BW_AREFUSE_NONE, or why not (msg set). */
static bw_arefuse_t check_vote(const approval_t *a, const char *decision, const char *approver,
                               const char **msg)
{
    if (a->state == A_RECORDING) {
        *msg = "the approval is still being recorded: try again";
        return BW_AREFUSE_NOT_READY;
    }
    if (a->state == A_DONE || a->end != NULL) {
        *msg = "the assignment already has its result";
        return BW_AREFUSE_FINISHED;
    }
    if (!listed(json_object_get(a->spec, "options"), decision)) {
        *msg = "the decision is not one of the approval's options";
        return BW_AREFUSE_NOT_AN_OPTION;
    }
    json_t *approvers = json_object_get(a->spec, "approvers");
    if (json_is_array(approvers) && !listed(approvers, approver)) {
        *msg = "this approver is not among the approval's approvers";
        return BW_AREFUSE_NOT_AN_APPROVER;
    }
    for (size_t i = 0; i < a->nvotes; i++) {
        if (strcmp(a->votes[i].approver, approver) == 0) {
            *msg = "this approver already decided";
            return BW_AREFUSE_ALREADY_VOTED;
        }
    }
    return BW_AREFUSE_NONE;
}

static bool kv_vote(bw_approvals_t *r, approval_t *a, const char *approver, const char *decision,
                    const char *comment, answer_fn answer, void *ud);
static void kv_fetch_then_decide(bw_approvals_t *r, json_t *body, const char *id, const char *tenant,
                                 answer_fn answer, void *ud);
static void kv_begin(bw_approvals_t *r, bw_job_t *job, json_t *spec);
static void kv_drop(bw_approvals_t *r, approval_t *a);

/* The one way to decide. body: the request object; id/tenant (may be NULL) come from the HTTP route and
   take precedence. silent_unknown: the request came on the shared subject, where only the holder answers.
   fetched: JetStream mode, the bucket was read for an approval the mirror did not have (yet).
   Returns false when it will not answer (then ud is the caller's to free), true when answer was or will be
   called (once). */
static bool decide(bw_approvals_t *r, json_t *body, const char *id, const char *tenant, bool silent_unknown,
                   bool fetched, answer_fn answer, void *ud)
{
    bool bad = !json_is_object(body);
    const char *bid = bad ? NULL : field_str(body, "assignment_id", BW_MAX_ID_BYTES, id == NULL, &bad);
    const char *btenant = bad ? NULL : field_str(body, "tenant_id", BW_MAX_TENANT_BYTES, false, &bad);
    const char *decision = bad ? NULL : field_str(body, "decision", MAX_NAME_BYTES, true, &bad);
    const char *approver = bad ? NULL : field_str(body, "approver", MAX_NAME_BYTES, true, &bad);
    const char *comment = bad ? NULL : field_str(body, "comment", MAX_COMMENT_BYTES, false, &bad);
    if (bad) {
        if (silent_unknown)
            return false;
        refuse(answer, ud, BW_AREFUSE_INVALID_REQUEST,
               "a decision is a JSON object {assignment_id, tenant_id?, decision, approver, comment?} of "
               "non-empty strings (decision and approver at most 256 bytes, comment at most 4096)");
        return true;
    }
    id = id != NULL ? id : bid;
    tenant = tenant != NULL ? tenant : (btenant != NULL && *btenant ? btenant : NULL);
    if (r->kv.put != NULL && !r->loaded) {
        refuse(answer, ud, BW_AREFUSE_NOT_READY,
               "the worker is still loading the pending approvals: try again");
        return true;
    }
    bw_arefuse_t why;
    approval_t *a = lookup(r, tenant, id, &why);
    if (a == NULL && r->kv.put != NULL && why == BW_AREFUSE_UNKNOWN && tenant != NULL && !fetched) {
        /* written by another worker a moment ago, not yet seen here: the bucket tells */
        kv_fetch_then_decide(r, body, id, tenant, answer, ud);
        return true;
    }
    if (a == NULL) {
        if (silent_unknown && why == BW_AREFUSE_UNKNOWN)
            return false; /* another worker may hold it */
        refuse(answer, ud, why,
               why == BW_AREFUSE_AMBIGUOUS  ? "several tenants have an approval with this id: name tenant_id"
               : why == BW_AREFUSE_FINISHED ? "the assignment already has its result"
                                            : "no pending approval with this id (for this tenant)");
        return true;
    }
    const char *msg = NULL;
    if ((why = check_vote(a, decision, approver, &msg)) != BW_AREFUSE_NONE) {
        refuse(answer, ud, why, msg);
        return true;
    }
    if (r->kv.put != NULL)
        return kv_vote(r, a, approver, decision, comment, answer, ud);
    a->votes = bw_realloc(a->votes, (a->nvotes + 1) * sizeof *a->votes);
    vote_t *v = &a->votes[a->nvotes];
    *v = (vote_t){bw_strdup(approver),
                  bw_strdup(decision),
                  comment ? bw_strdup(comment) : NULL,
                  bw_wall_ms(),
                  false,
                  NULL,
                  0};
    v->line = record_line(vote_record(a, v), &v->line_len);
    vote_wait_t *w = bw_calloc(1, sizeof *w);
    *w = (vote_wait_t){a, a->nvotes, answer, ud};
    a->nvotes++;
    journal_append(r, a, v->line, v->line_len, true, on_vote_recorded, w);
    return true;
}

/* ---- requests from the job ---- */

static void publish_request(bw_approvals_t *r, const approval_t *a)
{
    json_t *m = json_object();
    json_object_set_new(m, "assignment_id", json_string(a->id));
    json_object_set_new(m, "tenant_id", json_string(a->tenant));
    json_object_update(m, a->spec);
    json_object_set_new(m, "requested_at", rfc3339(a->requested_ms));
    json_object_set_new(m, "expires_at", rfc3339(a->expires_ms));
    json_object_set_new(m, "decision_subject", json_string(r->own_subject));
    if (a->trace_id != NULL)
        json_object_set_new(m, "trace_id", json_string(a->trace_id));
    char *s = json_dumps(m, JSON_COMPACT);
    bw_outmsg_t o = {.kind = BW_OUT_APPROVAL,
                     .subject = r->cfg->approval_request_subject,
                     .data = s,
                     .len = strlen(s),
                     .hkeys = {"tenant_id", "version", NULL},
                     .hvals = {a->tenant, "1", NULL}};
    r->publish(r->publish_ud, &o);
    free(s);
    json_decref(m);
}

static void on_request_recorded(void *ud, int err)
{
    approval_t *a = ud;
    bw_approvals_t *r = a->r;
    if (a->state == A_DONE) { /* the job ended (cancel, deadline) while its record was written */
        if (err == 0 && !r->closing) {
            a->in_journal = true;
            r->live_lines++;
            journal_end(r, a);
        }
    } else if (err != 0) {
        bw_metrics_inc(BW_C_APPROVAL_JOURNAL_ERRORS);
        bw_job_fail(a->job, BW_ST_ERROR, "APPROVAL_STORE_ERROR",
                    "the approval could not be written to its journal under APPROVAL_DIR: %s", strerror(err));
    } else {
        a->in_journal = true;
        a->state = A_PENDING;
        r->live_lines++;
        publish_request(r, a);
        bw_log(BW_LOG_INFO, "approval requested", BW_LS("assignment_id", a->id),
               BW_LS("tenant_id", a->tenant), BW_LI("expires_in_ms", a->expires_ms - bw_wall_ms()));
        bw_job_park(a->job);
    }
    approval_unref(a);
}

void bw_approvals_begin(bw_approvals_t *r, bw_job_t *job, json_t *spec)
{
    if (r->pending >= (size_t)r->cfg->approval_max_pending) {
        bw_job_fail(job, BW_ST_ERROR, "TOO_MANY_PENDING_APPROVALS",
                    "%s already holds %zu pending approvals (APPROVAL_MAX_PENDING)",
                    r->kv.put != NULL ? "the approvals bucket" : "this worker", r->pending);
        return;
    }
    if (r->kv.put != NULL) {
        kv_begin(r, job, spec);
        return;
    }
    approval_t *a = approval_of_job(r, job, spec);
    a->req_line = record_line(request_record(a), &a->req_len);
    journal_append(r, a, a->req_line, a->req_len, true, on_request_recorded, a);
}

void bw_approvals_job_disposed(bw_job_t *job)
{
    approval_t *a = job->hdata;
    job->hdata = NULL;
    if (a == NULL)
        return;
    bw_approvals_t *r = a->r;
    a->job = NULL;
    if (r->kv.put != NULL) {
        /* a job ending while its entry is written leaves the mirror (the create's answer deletes the entry);
           one resumed to publish an end is followed by the entry's delete (kv_finish) */
        if (a->state == A_RECORDING && !r->closing)
            kv_drop(r, a);
        return;
    }
    if (a->state != A_DONE) {
        a->state = A_DONE;
        index_remove(r, a);
        if (!r->closing)
            remember_finished(r, a);
        journal_end(r, a);
    }
    a->refs++; /* frees it when nothing waits for it */
    approval_unref(a);
}

bw_approvals_t *bw_approvals_of(const bw_job_t *job)
{
    return job->owner != NULL ? bw_worker_approvals(job->owner) : NULL;
}

/* ---- NATS ---- */

static void publish_reply(bw_approvals_t *r, const char *subject, json_t *body)
{
    char *s = json_dumps(body, JSON_COMPACT);
    bw_outmsg_t o = {.kind = BW_OUT_APPROVAL, .subject = subject, .data = s, .len = strlen(s)};
    r->publish(r->publish_ud, &o);
    free(s);
}

static json_t *answer_json(bw_arefuse_t why, const char *message, bool completed)
{
    if (why == BW_AREFUSE_NONE)
        return json_pack("{s:b, s:b}", "accepted", 1, "completed", completed);
    return json_pack("{s:b, s:s, s:s}", "accepted", 0, "reason", bw_arefuse_name(why), "message", message);
}

typedef struct nats_answer {
    bw_approvals_t *r;
    char *reply;
} nats_answer_t;

static void answer_nats(void *ud, bw_arefuse_t why, const char *message, bool completed)
{
    nats_answer_t *n = ud;
    if (n->reply != NULL) {
        json_t *body = answer_json(why, message, completed);
        publish_reply(n->r, n->reply, body);
        json_decref(body);
    }
    free(n->reply);
    free(n);
}

void bw_approvals_on_decision(bw_approvals_t *r, const char *data, size_t len, const char *reply, bool own)
{
    json_t *body = len <= MAX_BODY_BYTES ? json_loadb(data, len, JSON_REJECT_DUPLICATES, NULL) : NULL;
    nats_answer_t *n = bw_calloc(1, sizeof *n);
    n->r = r;
    n->reply = reply != NULL && *reply ? bw_strdup(reply) : NULL;
    /* JetStream mode: the workers take the shared subject as a queue group, and every one knows every
       approval, so the one that got it answers */
    if (!decide(r, body, NULL, NULL, !own && r->kv.put == NULL, false, answer_nats,
                n)) { /* left to the holder */
        free(n->reply);
        free(n);
    }
    json_decref(body);
}

typedef struct list_ctx {
    const bw_approvals_t *r;
    const char *tenant;
    int64_t now;
    json_t *views;
} list_ctx_t;

static void list_one(void *ud, const char *key, void *value)
{
    (void)key;
    list_ctx_t *c = ud;
    approval_t *a = value;
    if (c->tenant == NULL || strcmp(c->tenant, a->tenant) == 0)
        json_array_append_new(c->views, view_json(c->r, a, c->now));
}

static int by_expiry(const void *x, const void *y)
{
    json_t *a = *(json_t *const *)x, *b = *(json_t *const *)y;
    json_int_t ea = json_integer_value(json_object_get(a, "expires_in_ms"));
    json_int_t eb = json_integer_value(json_object_get(b, "expires_in_ms"));
    if (ea != eb)
        return ea < eb ? -1 : 1;
    return strcmp(json_string_value(json_object_get(a, "assignment_id")),
                  json_string_value(json_object_get(b, "assignment_id")));
}

/* Every pending approval (of tenant, when not NULL), soonest deadline first. */
static json_t *list_views(const bw_approvals_t *r, const char *tenant)
{
    list_ctx_t c = {r, tenant, bw_wall_ms(), json_array()};
    bw_hmap_foreach(r->by_key, list_one, &c);
    size_t n = json_array_size(c.views);
    json_t **v = bw_calloc(n + 1, sizeof *v);
    for (size_t i = 0; i < n; i++)
        v[i] = json_incref(json_array_get(c.views, i));
    qsort(v, n, sizeof *v, by_expiry);
    json_t *sorted = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(sorted, v[i]);
    free(v);
    json_decref(c.views);
    return sorted;
}

/* Answers a list request in as many messages as the server's max_payload needs, each
   {"worker_id","approvals":[...],"part":i,"last":bool,"total":n}. A view too large for a message on
   its own is sent without its context ("context_omitted": true). */
void bw_approvals_on_list(bw_approvals_t *r, const char *data, size_t len, const char *reply)
{
    if (reply == NULL || *reply == '\0')
        return;
    json_t *body = len > 0 && len <= MAX_BODY_BYTES ? json_loadb(data, len, 0, NULL) : NULL;
    const char *tenant = json_string_value(json_object_get(body, "tenant_id"));
    json_t *views = list_views(r, tenant != NULL && *tenant ? tenant : NULL);
    size_t n = json_array_size(views), budget = 512 * 1024, i = 0;
    int part = 0;
    do {
        json_t *chunk = json_array();
        size_t used = 256;
        for (; i < n; i++) {
            json_t *v = json_array_get(views, i);
            size_t vs = json_dumpb(v, NULL, 0, JSON_COMPACT);
            if (vs > budget / 2) {
                json_object_set_new(v, "context", json_null());
                json_object_set_new(v, "context_omitted", json_true());
                vs = json_dumpb(v, NULL, 0, JSON_COMPACT);
            }
            if (json_array_size(chunk) > 0 && used + vs > budget)
                break;
            json_array_append(chunk, v);
            used += vs + 1;
        }
        json_t *m = json_pack("{s:s, s:o, s:i, s:b, s:I}", "worker_id", r->cfg->worker_id, "approvals", chunk,
                              "part", part++, "last", i >= n, "total", (json_int_t)n);
        publish_reply(r, reply, m);
        json_decref(m);
    } while (i < n);
    json_decref(views);
    json_decref(body);
}

char *bw_approvals_own_subject(const bw_config_t *cfg)
{
    char *s = bw_asprintf("%s.%s", cfg->approval_decision_subject, cfg->worker_id);
    /* a worker id may hold '.' and ':', which a subject token may not */
    for (char *p = s + strlen(cfg->approval_decision_subject) + 1; *p; p++)
        if (*p == '.' || *p == ':')
            *p = '_';
    return s;
}

/* ---- HTTP (requests queued by the HTTP thread, answered here) ---- */

static void reply_json(bw_http_reply_t *reply, unsigned status, json_t *body)
{
    char *s = json_dumps(body, JSON_COMPACT);
    bw_http_reply(reply, status, "application/json", NULL, s, strlen(s));
    free(s);
}

static void answer_http(void *ud, bw_arefuse_t why, const char *message, bool completed)
{
    json_t *body = answer_json(why, message, completed);
    reply_json(ud, bw_arefuse_http_status(why), body);
    json_decref(body);
}

static void serve_http(bw_approvals_t *r, http_rq_t *q)
{
    if (q->op == BW_APPROVALS_LIST) {
        json_t *views = list_views(r, q->tenant);
        size_t total = json_array_size(views), limit = q->limit ? q->limit : BW_APPROVALS_LIST_DEFAULT;
        while (json_array_size(views) > limit)
            json_array_remove(views, json_array_size(views) - 1);
        json_t *m = json_pack("{s:s, s:I, s:b, s:o}", "worker_id", r->cfg->worker_id, "total",
                              (json_int_t)total, "truncated", total > limit, "approvals", views);
        reply_json(q->reply, 200, m);
        json_decref(m);
    } else if (q->op == BW_APPROVALS_GET) {
        bw_arefuse_t why;
        approval_t *a = q->id != NULL ? lookup(r, q->tenant, q->id, &why) : NULL;
        json_t *m = a != NULL
                        ? view_json(r, a, bw_wall_ms())
                        : answer_json(q->id ? why : BW_AREFUSE_INVALID_REQUEST,
                                      q->id && why == BW_AREFUSE_AMBIGUOUS
                                          ? "several tenants have an approval with this id: name tenant_id"
                                      : q->id && why == BW_AREFUSE_FINISHED
                                          ? "the assignment already has its result"
                                          : "no pending approval with this id (for this tenant)",
                                      false);
        reply_json(q->reply,
                   a != NULL ? 200 : bw_arefuse_http_status(q->id ? why : BW_AREFUSE_INVALID_REQUEST), m);
        json_decref(m);
    } else {
        json_error_t e;
        json_t *body = json_loadb(q->body ? q->body : "", q->len, JSON_REJECT_DUPLICATES, &e);
        if (!json_is_object(body) || q->id == NULL)
            answer_http(q->reply, BW_AREFUSE_INVALID_REQUEST,
                        "the body must be a JSON object {decision, approver, comment?}", false);
        else
            decide(r, body, q->id, q->tenant, false, false, answer_http, q->reply);
        json_decref(body);
    }
}

static void http_rq_free(http_rq_t *q)
{
    free(q->id);
    free(q->tenant);
    free(q->body);
    free(q);
}

static void on_http_async(uv_async_t *h)
{
    bw_approvals_t *r = h->data;
    bw_list_t todo;
    bw_list_init(&todo);
    pthread_mutex_lock(&r->mu);
    while (!bw_list_empty(&r->http_q))
        bw_list_push(&todo, bw_list_shift(&r->http_q));
    pthread_mutex_unlock(&r->mu);
    while (!bw_list_empty(&todo)) {
        http_rq_t *q = bw_list_entry(bw_list_shift(&todo), http_rq_t, link);
        serve_http(r, q);
        http_rq_free(q);
    }
}

void bw_approvals_http(bw_approvals_t *r, bw_approvals_op_t op, const char *id, const char *tenant,
                       size_t limit, const char *body, size_t len, bw_http_reply_t *reply)
{
    http_rq_t *q = bw_calloc(1, sizeof *q);
    q->op = op;
    q->limit = limit;
    q->id = id ? bw_strdup(id) : NULL;
    q->tenant = tenant && *tenant ? bw_strdup(tenant) : NULL;
    if (body != NULL) { /* may hold NUL bytes: JSON parsing refuses them, by length */
        q->body = bw_malloc(len + 1);
        memcpy(q->body, body, len);
        q->body[len] = '\0';
        q->len = len;
    }
    q->reply = reply;
    pthread_mutex_lock(&r->mu);
    bool ok = r->accepting;
    if (ok) {
        bw_list_push(&r->http_q, &q->link);
        uv_async_send(&r->http_async);
    }
    pthread_mutex_unlock(&r->mu);
    if (!ok) {
        static const char gone[] =
            "{\"accepted\":false,\"reason\":\"not_ready\",\"message\":\"the worker is stopping\"}";
        bw_http_reply(reply, 503, "application/json", NULL, gone, sizeof gone - 1);
        http_rq_free(q);
    }
}

/* ---- replay ---- */

typedef struct replay {
    bw_approvals_t *r;
    bw_hmap_t *live; /* key -> {"req":record,"votes":[v...]} */
    json_t *order;   /* the live entries, by first appearance (keeps restarts deterministic) */
    size_t records;
} replay_t;

static size_t record_key(json_t *rec, char key[BW_JOB_KEY_MAX])
{
    json_t *k = json_object_get(rec, "k");
    const char *tenant = json_string_value(json_array_get(k, 0)),
               *id = json_string_value(json_array_get(k, 1));
    if (json_is_string(json_object_get(rec, "t")) &&
        strcmp(json_string_value(json_object_get(rec, "t")), "req") == 0) {
        json_t *a = json_object_get(rec, "a");
        tenant = json_string_value(json_object_get(a, "tenant_id"));
        id = json_string_value(json_object_get(a, "assignment_id"));
    }
    if (tenant == NULL || id == NULL || strlen(tenant) > BW_MAX_TENANT_BYTES || strlen(id) > BW_MAX_ID_BYTES)
        return 0;
    return bw_job_key(key, tenant, id);
}

static void replay_one(void *ud, json_t *rec)
{
    replay_t *p = ud;
    char key[BW_JOB_KEY_MAX];
    const char *t = json_string_value(json_object_get(rec, "t"));
    size_t kl = record_key(rec, key);
    p->records++;
    if (t == NULL || kl == 0) {
        bw_log(BW_LOG_WARN, "approval journal: record without a kind or key skipped");
        return;
    }
    json_t *e = bw_hmap_get(p->live, key, kl);
    if (strcmp(t, "req") == 0 && e == NULL) {
        e = json_pack("{s:O, s:[]}", "req", rec, "votes");
        bw_hmap_put(p->live, key, kl, e);
        json_array_append_new(p->order, e);
    } else if (strcmp(t, "vote") == 0 && e != NULL && json_is_object(json_object_get(rec, "v"))) {
        json_array_append(json_object_get(e, "votes"), json_object_get(rec, "v"));
    } else if (strcmp(t, "end") == 0 && e != NULL) {
        bw_hmap_del(p->live, key, kl);
        json_object_set_new(e, "ended", json_true());
    }
}

static bool spec_usable(json_t *spec)
{
    json_t *o = json_object_get(spec, "options"), *q = json_object_get(spec, "quorum");
    return json_is_object(spec) && json_is_string(json_object_get(spec, "prompt")) && json_is_array(o) &&
           json_array_size(o) > 0 && json_is_integer(q) && json_integer_value(q) >= 1;
}

/* Makes one journaled approval pending again; returns it, or NULL when the record is unusable. */
static approval_t *resume_one(bw_approvals_t *r, json_t *e)
{
    json_t *req = json_object_get(e, "req"), *spec = json_object_get(req, "spec");
    bw_assignment_t asg;
    if (!spec_usable(spec) || bw_assignment_from_json(json_object_get(req, "a"), &asg) != 0) {
        bw_log(BW_LOG_WARN, "approval journal: unusable approval record skipped");
        return NULL;
    }
    approval_t *a = approval_new(r, asg.tenant_id, asg.assignment_id, asg.trace_id, spec);
    a->received_ms = json_integer_value(json_object_get(req, "rcv"));
    a->requested_ms = json_integer_value(json_object_get(req, "req"));
    a->expires_ms = json_integer_value(json_object_get(req, "exp"));
    a->state = A_PENDING;
    a->in_journal = true;
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(e, "votes"), i, v)
    {
        const char *ap = json_string_value(json_object_get(v, "approver"));
        const char *d = json_string_value(json_object_get(v, "decision"));
        const char *c = json_string_value(json_object_get(v, "comment"));
        if (ap == NULL || d == NULL)
            continue;
        a->votes = bw_realloc(a->votes, (a->nvotes + 1) * sizeof *a->votes);
        vote_t *nv = &a->votes[a->nvotes++];
        *nv = (vote_t){bw_strdup(ap),
                       bw_strdup(d),
                       c ? bw_strdup(c) : NULL,
                       json_integer_value(json_object_get(v, "at")),
                       true,
                       NULL,
                       0};
        nv->line = record_line(vote_record(a, nv), &nv->line_len);
    }
    a->req_line = record_line(json_incref(req), &a->req_len);
    bw_job_t *job = bw_worker_resume(r->worker, &asg, a->received_ms, &bw_handler_human_approval, a);
    bw_assignment_dispose(&asg); /* zeroed when taken */
    if (job == NULL) {
        approval_free(a);
        return NULL;
    }
    a->job = job;
    index_add(r, a);
    r->live_lines += 1 + a->nvotes;
    return a;
}

/* The vote that reached the quorum of its option, or NULL. */
static const vote_t *quorum_vote(const approval_t *a)
{
    for (size_t i = 0; i < a->nvotes; i++) {
        int n = 0;
        for (size_t j = 0; j <= i; j++)
            n += strcmp(a->votes[j].decision, a->votes[i].decision) == 0;
        if (n >= a->quorum)
            return &a->votes[i];
    }
    return NULL;
}

static void replay(bw_approvals_t *r)
{
    replay_t p = {r, bw_hmap_create(), json_array(), 0};
    uint64_t t0 = bw_mono_ns();
    bw_ajournal_replay(r->journal, replay_one, &p);
    r->journal_lines = p.records;
    size_t n = json_array_size(p.order), resumed = 0, decided = 0;
    approval_t **done = bw_calloc(n + 1, sizeof *done);
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(p.order, i);
        if (json_is_true(json_object_get(e, "ended")))
            continue;
        approval_t *a = resume_one(r, e);
        if (a == NULL)
            continue;
        resumed++;
        if (quorum_vote(a) != NULL)
            done[decided++] = a;
    }
    /* decided before the restart, the result not yet out: complete them now */
    for (size_t i = 0; i < decided; i++)
        maybe_complete(done[i], quorum_vote(done[i]));
    free(done);
    bw_hmap_destroy(p.live);
    json_decref(p.order);
    bw_log(BW_LOG_INFO, "approvals reloaded", BW_LI("pending", (long long)r->pending),
           BW_LI("resumed", (long long)resumed), BW_LI("completed", (long long)decided),
           BW_LI("journal_records", (long long)p.records),
           BW_LI("reload_us", (long long)((bw_mono_ns() - t0) / 1000)));
    maybe_compact(r);
}

/* ---- JetStream mode: the approvals bucket ----
 *
 * Every worker mirrors the bucket (bw_approvals_kv_entry, fed by the transport's watch), so any worker can
 * list, decide, time out or cancel any approval. Writes are revision-checked: a vote is written on top of
 * the revision the mirror holds, and when another worker wrote first the entry is read again and the vote
 * checked and written once more. An approval ends by one write that sets "end" ({status, by, at}): the
 * vote reaching the quorum, or a claim of its deadline or of a cancel. Only the worker whose write that was
 * publishes the result (through a job resumed for it), then deletes the entry; the others see the end in
 * their mirror and leave it. An end whose entry is still there KV_CLAIM_GRACE_MS later (its worker died
 * between the claim and the delete) is claimed again by whoever sees it first: at least one result. */

typedef enum { OP_CREATE, OP_VOTE, OP_CLAIM, OP_DELETE, OP_FETCH } kvop_kind_t;

typedef struct kvop {
    bw_approvals_t *r;
    approval_t *a; /* held (refs) until the operation ended; NULL for OP_FETCH */
    kvop_kind_t kind;
    bool rereading; /* a write lost the race: the entry is read again, then the operation goes on */
    int tries;
    char *approver, *decision, *comment; /* OP_VOTE */
    answer_fn answer;                    /* OP_VOTE, OP_FETCH: answered once */
    void *ud;
    json_t *end;  /* OP_VOTE reaching the quorum, OP_CLAIM: the end it writes */
    json_t *body; /* OP_FETCH: the decision, decided again once the bucket answered */
    char *key, *id, *tenant;
} kvop_t;

static void kv_done(void *ud, bw_akv_status_t st, uint64_t rev, const char *val, size_t len);

/* The bucket key of tenant's id: base64url(tenant) "." base64url(id), as the result store's. */
static char *kv_key_of(const char *tenant, const char *id)
{
    char *k = bw_malloc(KV_KEY_MAX);
    size_t o = bw_js_b64url(k, tenant, strnlen(tenant, BW_MAX_TENANT_BYTES));
    k[o++] = '.';
    bw_js_b64url(k + o, id, strnlen(id, BW_MAX_ID_BYTES));
    return k;
}

static kvop_t *kvop_new(bw_approvals_t *r, approval_t *a, kvop_kind_t kind)
{
    kvop_t *op = bw_calloc(1, sizeof *op);
    op->r = r;
    op->a = a;
    op->kind = kind;
    if (a != NULL)
        a->refs++;
    return op;
}

static void kvop_free(kvop_t *op)
{
    free(op->approver);
    free(op->decision);
    free(op->comment);
    free(op->key);
    free(op->id);
    free(op->tenant);
    json_decref(op->end);
    json_decref(op->body);
    if (op->a != NULL)
        approval_unref(op->a);
    free(op);
}

/* The assignment as the entry keeps it: without its payload (the spec holds what the approval needs). */
static json_t *kv_assignment(const bw_assignment_t *asg)
{
    json_t *o = bw_assignment_to_json(asg), *root = json_object_get(o, "root");
    json_t *job = json_object_get(root, "job");
    if (json_is_object(job) && json_object_get(job, "payload") != NULL) {
        json_t *root2 = json_copy(root), *job2 = json_copy(job);
        json_object_set_new(job2, "payload", json_object());
        json_object_set_new(root2, "job", job2);
        json_object_set_new(o, "root", root2);
    }
    return o;
}

static json_t *kv_vote_json(const vote_t *v)
{
    json_t *j = vote_json(v);
    json_object_set_new(j, "at", json_integer(v->at_ms));
    return j;
}

/* a's entry with one more vote (may be NULL) and an end (borrowed, may be NULL), serialised. */
static char *kv_value(const approval_t *a, const vote_t *extra, json_t *end, size_t *len)
{
    json_t *votes = json_array();
    for (size_t i = 0; i < a->nvotes; i++)
        json_array_append_new(votes, kv_vote_json(&a->votes[i]));
    if (extra != NULL)
        json_array_append_new(votes, kv_vote_json(extra));
    json_t *e = json_pack("{s:i, s:O, s:I, s:I, s:I, s:O, s:o}", "v", 1, "a", a->asg, "rcv",
                          (json_int_t)a->received_ms, "req", (json_int_t)a->requested_ms, "exp",
                          (json_int_t)a->expires_ms, "spec", a->spec, "votes", votes);
    json_object_set(e, "end", end != NULL ? end : json_null());
    char *s = json_dumps(e, JSON_COMPACT);
    json_decref(e);
    *len = strlen(s);
    return s;
}

static json_t *kv_end_json(const bw_approvals_t *r, const char *status, const char *reason)
{
    json_t *e = json_pack("{s:s, s:s, s:I}", "status", status, "by", r->cfg->worker_id, "at",
                          (json_int_t)bw_wall_ms());
    if (reason != NULL)
        json_object_set_new(e, "reason", json_string(reason));
    return e;
}

static void vote_add(approval_t *a, const char *approver, const char *decision, const char *comment,
                     int64_t at)
{
    a->votes = bw_realloc(a->votes, (a->nvotes + 1) * sizeof *a->votes);
    a->votes[a->nvotes++] = (vote_t){
        bw_strdup(approver), bw_strdup(decision), comment ? bw_strdup(comment) : NULL, at, true, NULL, 0};
}

/* The approval leaves the mirror (its entry is gone, or its job ended before the entry was written). */
static void kv_drop(bw_approvals_t *r, approval_t *a)
{
    if (a->state == A_DONE)
        return;
    a->state = A_DONE;
    index_remove(r, a);
    bw_hmap_del(r->by_kvkey, a->kvkey, strlen(a->kvkey));
    if (!r->closing)
        remember_finished(r, a);
    a->refs++; /* frees it when no operation holds it */
    approval_unref(a);
}

/* Fills a from a stored entry e (checked by kv_apply). */
static void kv_fill(approval_t *a, json_t *e)
{
    json_t *asg = json_object_get(e, "a"), *spec = json_object_get(e, "spec");
    json_decref(a->asg);
    a->asg = json_incref(asg);
    json_decref(a->spec);
    a->spec = json_incref(spec);
    a->quorum = (int)json_integer_value(json_object_get(spec, "quorum"));
    free(a->trace_id);
    const char *trace = json_string_value(json_object_get(asg, "trace_id"));
    a->trace_id = trace ? bw_strdup(trace) : NULL;
    a->received_ms = json_integer_value(json_object_get(e, "rcv"));
    a->requested_ms = json_integer_value(json_object_get(e, "req"));
    a->expires_ms = json_integer_value(json_object_get(e, "exp"));
}

static const char *vote_field(json_t *v, const char *k, size_t max)
{
    json_t *s = json_object_get(v, k);
    return json_is_string(s) && json_string_length(s) <= max &&
                   strlen(json_string_value(s)) == json_string_length(s)
               ? json_string_value(s)
               : NULL;
}

/* Takes what the bucket holds under key into the mirror: an entry (val) at revision rev, or its absence
   (val NULL: deleted at rev; UINT64_MAX: a read found none). The bucket is shared, not trusted: an entry
   whose key is not its own assignment's, or that lacks what an approval needs, is skipped with a
   warning. Returns the approval, or NULL when the mirror has none for key. */
static approval_t *kv_apply(bw_approvals_t *r, const char *key, uint64_t rev, const char *val, size_t len)
{
    size_t kl = strlen(key);
    approval_t *a = bw_hmap_get(r->by_kvkey, key, kl);
    if (val == NULL) {
        if (a != NULL && a->state == A_PENDING && rev >= a->rev)
            kv_drop(r, a);
        return NULL;
    }
    if (a != NULL && a->rev >= rev)
        return a;
    json_t *e = json_loadb(val, len, 0, NULL), *asg = json_object_get(e, "a"),
           *votes = json_object_get(e, "votes");
    const char *tenant = vote_field(asg, "tenant_id", BW_MAX_TENANT_BYTES);
    const char *id = vote_field(asg, "assignment_id", BW_MAX_ID_BYTES);
    char *own = tenant != NULL && id != NULL && *tenant && *id ? kv_key_of(tenant, id) : NULL;
    if (own == NULL || strcmp(own, key) != 0 || !spec_usable(json_object_get(e, "spec")) ||
        !json_is_array(votes) || !json_is_integer(json_object_get(e, "exp")) ||
        !json_is_object(json_object_get(asg, "root"))) {
        bw_log(BW_LOG_WARN, "approvals bucket: an entry that is not a pending approval skipped",
               BW_LS("key", key));
        free(own);
        json_decref(e);
        return a;
    }
    free(own);
    if (a == NULL) {
        a = approval_new(r, tenant, id, NULL, json_object_get(e, "spec"));
        a->kvkey = bw_strdup(key);
        a->state = A_PENDING;
        kv_fill(a, e);
        index_add(r, a);
        bw_hmap_put(r->by_kvkey, a->kvkey, kl, a);
    } else if (a->state == A_RECORDING) {
        kv_fill(a, e); /* this worker's create is in flight: what the bucket holds is the approval */
    }
    votes_clear(a);
    size_t i;
    json_t *v;
    json_array_foreach(votes, i, v)
    {
        const char *ap = vote_field(v, "approver", MAX_NAME_BYTES),
                   *d = vote_field(v, "decision", MAX_NAME_BYTES);
        if (ap != NULL && d != NULL)
            vote_add(a, ap, d, vote_field(v, "comment", MAX_COMMENT_BYTES),
                     json_integer_value(json_object_get(v, "at")));
    }
    json_t *end = json_object_get(e, "end");
    json_decref(a->end);
    a->end = json_is_object(end) && json_is_string(json_object_get(end, "status")) ? json_incref(end) : NULL;
    if (a->end != NULL) {
        free(a->cancel_why);
        a->cancel_why = NULL;
    }
    a->rev = rev;
    json_decref(e);
    return a;
}

static void kv_delete(bw_approvals_t *r, approval_t *a)
{
    r->kv.del(r->kv.ud, a->kvkey, a->rev, kv_done, kvop_new(r, a, OP_DELETE));
}

/* The parked creation job of a settles its delivery and goes: the approval lives in the bucket. */
static void kv_settle_job(bw_approvals_t *r, bw_job_t *job)
{
    job->hdata = NULL;
    bw_job_park(job); /* the transport acks the delivery */
    bw_worker_detach(r->worker, job);
}

/* This worker's write set a's end: it publishes the result through a job resumed for it, then deletes the
   entry (after the result, on the same connection). */
static void kv_finish(bw_approvals_t *r, approval_t *a)
{
    const char *status = json_string_value(json_object_get(a->end, "status"));
    bw_assignment_t asg;
    if (bw_assignment_from_json(a->asg, &asg) != 0) {
        bw_log(BW_LOG_ERROR,
               "approvals bucket: an approval's assignment cannot be rebuilt: removed without a result",
               BW_LS("assignment_id", a->id));
        kv_delete(r, a);
        return;
    }
    bw_job_t *job = bw_worker_resume(r->worker, &asg, a->received_ms, &bw_handler_human_approval, a);
    bw_assignment_dispose(&asg);
    if (job == NULL) { /* a second delivery of it is being recorded here: the next sweep claims it again */
        bw_log(BW_LOG_WARN, "approval end deferred: the assignment is active on this worker",
               BW_LS("assignment_id", a->id));
        return;
    }
    a->job = job;
    const vote_t *v = quorum_vote(a);
    if (strcmp(status, "success") == 0 && v != NULL) {
        succeed_with(a, v);
    } else if (strcmp(status, "cancelled") == 0) {
        const char *why = json_string_value(json_object_get(a->end, "reason"));
        bw_log(BW_LOG_INFO, "approval cancelled", BW_LS("assignment_id", a->id),
               BW_LS("tenant_id", a->tenant));
        bw_job_abort(job, BW_ST_CANCELLED, "CANCELLED", why ? why : "cancelled by request");
    } else {
        bw_log(BW_LOG_INFO, "approval timed out", BW_LS("assignment_id", a->id),
               BW_LS("tenant_id", a->tenant));
        bw_job_fail(job, BW_ST_TIMEOUT, "TIMEOUT", "job exceeded its deadline of %lld ms",
                    (long long)job->a.timeout_ms);
    }
    kv_delete(r, a); /* the result went out above */
}

static void kv_vote_write(bw_approvals_t *r, kvop_t *op)
{
    approval_t *a = op->a;
    vote_t v = {op->approver, op->decision, op->comment, bw_wall_ms(), true, NULL, 0};
    int n = 1;
    for (size_t i = 0; i < a->nvotes; i++)
        n += strcmp(a->votes[i].decision, op->decision) == 0;
    json_decref(op->end);
    op->end = n >= a->quorum ? kv_end_json(r, "success", NULL) : NULL;
    size_t len;
    char *val = kv_value(a, &v, op->end, &len);
    r->kv.put(r->kv.ud, a->kvkey, val, len, a->rev, kv_done, op);
    free(val);
}

static bool kv_vote(bw_approvals_t *r, approval_t *a, const char *approver, const char *decision,
                    const char *comment, answer_fn answer, void *ud)
{
    kvop_t *op = kvop_new(r, a, OP_VOTE);
    op->approver = bw_strdup(approver);
    op->decision = bw_strdup(decision);
    op->comment = comment ? bw_strdup(comment) : NULL;
    op->answer = answer;
    op->ud = ud;
    kv_vote_write(r, op);
    return true;
}

static void kv_claim(bw_approvals_t *r, approval_t *a, const char *status, const char *reason)
{
    kvop_t *op = kvop_new(r, a, OP_CLAIM);
    op->end = kv_end_json(r, status, reason);
    a->busy = true;
    size_t len;
    char *val = kv_value(a, NULL, op->end, &len);
    r->kv.put(r->kv.ud, a->kvkey, val, len, a->rev, kv_done, op);
    free(val);
}

static void kv_fetch_then_decide(bw_approvals_t *r, json_t *body, const char *id, const char *tenant,
                                 answer_fn answer, void *ud)
{
    kvop_t *op = kvop_new(r, NULL, OP_FETCH);
    op->body = json_incref(body);
    op->id = bw_strdup(id);
    op->tenant = bw_strdup(tenant);
    op->key = kv_key_of(tenant, id);
    op->answer = answer;
    op->ud = ud;
    r->kv.get(r->kv.ud, op->key, kv_done, op);
}

static void kv_reread(bw_approvals_t *r, kvop_t *op)
{
    op->rereading = true;
    r->kv.get(r->kv.ud, op->a->kvkey, kv_done, op);
}

/* The create of this worker's approval a: its job parks (the delivery is acked), then goes. */
static void kv_created(bw_approvals_t *r, kvop_t *op, bw_akv_status_t st, uint64_t rev)
{
    approval_t *a = op->a;
    if (st == BW_AKV_OK && rev > a->rev)
        a->rev = rev;
    if (a->state == A_DONE) { /* its job ended (deadline, cancel) while the entry was written */
        if (st == BW_AKV_OK)
            kv_delete(r, a);
    } else if (st == BW_AKV_OK) {
        a->state = A_PENDING;
        publish_request(r, a);
        bw_log(BW_LOG_INFO, "approval requested", BW_LS("assignment_id", a->id),
               BW_LS("tenant_id", a->tenant), BW_LI("expires_in_ms", a->expires_ms - bw_wall_ms()));
        bw_job_t *job = a->job;
        a->job = NULL;
        kv_settle_job(r, job);
    } else if (st == BW_AKV_CONFLICT) {
        kv_reread(r, op); /* the key exists: a second delivery of the same assignment */
        return;
    } else {
        bw_metrics_inc(BW_C_APPROVAL_JOURNAL_ERRORS);
        bw_job_fail(a->job, BW_ST_ERROR, "APPROVAL_STORE_ERROR",
                    "the approval could not be stored in the bucket CAF_JS_APPROVALS_BUCKET");
    }
    kvop_free(op);
}

/* After a create found the key taken: the approval waits already (this delivery is settled without a
   second request), or it ended (its result went out then). */
static void kv_create_reread(bw_approvals_t *r, kvop_t *op, bw_akv_status_t st)
{
    approval_t *a = op->a;
    if (a->state == A_DONE)
        return;
    if (st == BW_AKV_ERROR) {
        bw_metrics_inc(BW_C_APPROVAL_JOURNAL_ERRORS);
        bw_job_fail(a->job, BW_ST_ERROR, "APPROVAL_STORE_ERROR",
                    "the approval could not be stored in the bucket CAF_JS_APPROVALS_BUCKET");
        return;
    }
    bw_job_t *job = a->job;
    a->job = NULL;
    if (st == BW_AKV_OK) {
        a->state = A_PENDING;
        bw_log(BW_LOG_INFO, "approval already pending in the bucket: delivery settled",
               BW_LS("assignment_id", a->id), BW_LS("tenant_id", a->tenant));
    } else {
        bw_log(BW_LOG_INFO, "approval already ended: delivery settled without a second result",
               BW_LS("assignment_id", a->id), BW_LS("tenant_id", a->tenant));
        kv_drop(r, a);
    }
    kv_settle_job(r, job);
}

static void kv_voted(bw_approvals_t *r, kvop_t *op, bw_akv_status_t st, uint64_t rev)
{
    approval_t *a = op->a;
    if (st == BW_AKV_CONFLICT && ++op->tries < KV_MAX_TRIES) {
        kv_reread(r, op);
        return;
    }
    if (st != BW_AKV_OK) {
        refuse(op->answer, op->ud, BW_AREFUSE_STORE_ERROR,
               st == BW_AKV_CONFLICT ? "the approval kept changing while the vote was written: try again"
                                     : "the vote could not be written to the approvals bucket: try again");
    } else {
        if (a->state == A_PENDING && rev > a->rev) { /* else the watch showed it already */
            vote_add(a, op->approver, op->decision, op->comment, bw_wall_ms());
            a->rev = rev;
            json_decref(a->end);
            a->end = json_incref(op->end);
        }
        bool completed = op->end != NULL && a->state == A_PENDING;
        bw_metrics_approval_decision(0);
        if (completed)
            kv_finish(r, a);
        op->answer(op->ud, BW_AREFUSE_NONE, NULL, completed);
    }
    kvop_free(op);
}

static void kv_done(void *ud, bw_akv_status_t st, uint64_t rev, const char *val, size_t len)
{
    kvop_t *op = ud;
    bw_approvals_t *r = op->r;
    approval_t *a = op->a;
    if (r->closing) {
        if (op->answer != NULL)
            refuse(op->answer, op->ud, BW_AREFUSE_NOT_READY, "the worker is stopping");
        kvop_free(op);
        return;
    }
    if (op->kind == OP_FETCH) {
        if (st == BW_AKV_OK)
            kv_apply(r, op->key, rev, val, len);
        decide(r, op->body, op->id, op->tenant, false, true, op->answer, op->ud);
        kvop_free(op);
        return;
    }
    if (op->rereading) {
        op->rereading = false;
        if (st == BW_AKV_OK || st == BW_AKV_ABSENT)
            kv_apply(r, a->kvkey, st == BW_AKV_OK ? rev : UINT64_MAX, st == BW_AKV_OK ? val : NULL, len);
        if (op->kind == OP_CREATE) {
            kv_create_reread(r, op, st);
        } else if (op->kind == OP_VOTE) {
            const char *msg = NULL;
            bw_arefuse_t why = check_vote(a, op->decision, op->approver, &msg);
            if (why == BW_AREFUSE_NONE) {
                kv_vote_write(r, op);
                return;
            }
            refuse(op->answer, op->ud, why, msg);
        } else {
            a->busy = false; /* OP_CLAIM: the sweep looks at it again */
        }
        kvop_free(op);
        return;
    }
    switch (op->kind) {
    case OP_CREATE:
        kv_created(r, op, st, rev);
        return;
    case OP_VOTE:
        kv_voted(r, op, st, rev);
        return;
    case OP_CLAIM:
        if (st == BW_AKV_CONFLICT) {
            kv_reread(r, op);
            return;
        }
        a->busy = false;
        if (st == BW_AKV_OK && a->state == A_PENDING) {
            if (rev > a->rev) {
                a->rev = rev;
                json_decref(a->end);
                a->end = json_incref(op->end);
            }
            kv_finish(r, a);
        } else if (st == BW_AKV_ERROR) {
            a->retry_at = uv_now(r->loop) + KV_RETRY_MS;
        }
        break;
    case OP_DELETE:
        if (st == BW_AKV_OK)
            kv_drop(r, a);
        else
            bw_log(BW_LOG_WARN,
                   "approvals bucket: an ended approval's entry could not be removed (another worker "
                   "completes it again later)",
                   BW_LS("assignment_id", a->id));
        break;
    case OP_FETCH:
        break;
    }
    kvop_free(op);
}

static void kv_begin(bw_approvals_t *r, bw_job_t *job, json_t *spec)
{
    char *key = kv_key_of(job->a.tenant_id, job->a.assignment_id);
    if (bw_hmap_get(r->by_kvkey, key, strlen(key)) != NULL) {
        /* the same assignment delivered again while its approval waits in the bucket */
        bw_log(BW_LOG_INFO, "approval already pending in the bucket: delivery settled",
               BW_LS("assignment_id", job->a.assignment_id), BW_LS("tenant_id", job->a.tenant_id));
        free(key);
        kv_settle_job(r, job);
        return;
    }
    approval_t *a = approval_of_job(r, job, spec);
    a->kvkey = key;
    a->asg = kv_assignment(&job->a);
    bw_hmap_put(r->by_kvkey, a->kvkey, strlen(a->kvkey), a);
    size_t len;
    char *val = kv_value(a, NULL, NULL, &len);
    r->kv.put(r->kv.ud, a->kvkey, val, len, 0, kv_done, kvop_new(r, a, OP_CREATE));
    free(val);
}

typedef struct sweep_ctx {
    int64_t now;
    uint64_t loop_now;
    approval_t **due;
    size_t n;
} sweep_ctx_t;

static void sweep_one(void *ud, const char *key, void *value)
{
    (void)key;
    sweep_ctx_t *c = ud;
    approval_t *a = value;
    if (a->state != A_PENDING || a->busy || c->loop_now < a->retry_at)
        return;
    bool due = a->end == NULL
                   ? a->cancel_why != NULL || c->now >= a->expires_ms
                   : c->now >= json_integer_value(json_object_get(a->end, "at")) + KV_CLAIM_GRACE_MS;
    if (due) {
        a->refs++;
        c->due[c->n++] = a;
    }
}

/* Deadlines, cancels and ends whose worker died: claimed by a revision-checked write (one worker wins). */
static void on_kv_sweep(uv_timer_t *t)
{
    bw_approvals_t *r = t->data;
    if (!r->loaded || r->closing || r->pending == 0)
        return;
    sweep_ctx_t c = {bw_wall_ms(), uv_now(r->loop), bw_calloc(r->pending, sizeof(approval_t *)), 0};
    bw_hmap_foreach(r->by_key, sweep_one, &c);
    for (size_t i = 0; i < c.n; i++) {
        approval_t *a = c.due[i];
        if (a->state == A_PENDING && !a->busy) {
            if (a->end == NULL) {
                kv_claim(r, a, a->cancel_why ? "cancelled" : "timeout", a->cancel_why);
            } else {
                bw_log(BW_LOG_WARN, "approval ended by a worker that did not complete it: completing it here",
                       BW_LS("assignment_id", a->id), BW_LS("tenant_id", a->tenant),
                       BW_LS("claimed_by", json_string_value(json_object_get(a->end, "by"))));
                /* the same end again, claimed by this worker (kv_end_json copies what it reads) */
                kv_claim(r, a, json_string_value(json_object_get(a->end, "status")),
                         json_string_value(json_object_get(a->end, "reason")));
            }
        }
        approval_unref(a);
    }
    free(c.due);
}

void bw_approvals_kv_entry(bw_approvals_t *r, const char *key, uint64_t rev, const char *val, size_t len)
{
    if (r != NULL && r->kv.put != NULL && !r->closing)
        kv_apply(r, key, rev, val, len);
}

void bw_approvals_kv_loaded(bw_approvals_t *r)
{
    if (r == NULL || r->loaded)
        return;
    r->loaded = true;
    bw_log(BW_LOG_INFO, "approvals loaded from the bucket", BW_LS("bucket", r->cfg->js_approvals_bucket),
           BW_LI("pending", (long long)r->pending));
}

void bw_approvals_cancel(bw_approvals_t *r, const char *tenant, const char *id, const char *why)
{
    if (r == NULL || r->kv.put == NULL || r->closing)
        return;
    approval_t *first = NULL;
    if (tenant != NULL) {
        char key[BW_JOB_KEY_MAX];
        size_t kl = bw_job_key(key, tenant, id);
        first = kl > 0 ? bw_hmap_get(r->by_key, key, kl) : NULL;
    } else {
        first = bw_hmap_get(r->by_id, id, strlen(id));
    }
    if (first == NULL)
        return;
    size_t n = 1;
    for (bw_list_t *l = first->same_id.next; tenant == NULL && l != &first->same_id; l = l->next)
        n++;
    approval_t **all = bw_calloc(n, sizeof *all);
    all[0] = first;
    for (size_t i = 1; i < n; i++)
        all[i] = bw_list_entry(all[i - 1]->same_id.next, approval_t, same_id);
    for (size_t i = 0; i < n; i++)
        all[i]->refs++;
    for (size_t i = 0; i < n; i++) {
        approval_t *a = all[i];
        if (a->state == A_PENDING && a->end == NULL) {
            free(a->cancel_why);
            a->cancel_why = bw_strdup(why);
            if (!a->busy)
                kv_claim(r, a, "cancelled", why);
        }
    }
    for (size_t i = 0; i < n; i++)
        approval_unref(all[i]);
    free(all);
}

/* ---- lifecycle ---- */

bw_approvals_t *bw_approvals_create(const bw_approvals_opts_t *o, char *err, size_t errlen)
{
    static const char *const outcomes[] = {
        "accepted",      "invalid_request", "not_an_option", "not_an_approver", "unknown", "finished",
        "already_voted", "ambiguous",       "not_ready",     "store_error",     NULL};
    bw_ajournal_t *j = NULL;
    if (o->kv == NULL && (j = bw_ajournal_open(o->loop, o->cfg->approval_dir, err, errlen)) == NULL)
        return NULL;
    bw_approvals_t *r = bw_calloc(1, sizeof *r);
    r->loop = o->loop;
    r->cfg = o->cfg;
    r->worker = o->worker;
    r->publish = o->publish;
    r->publish_ud = o->publish_ud;
    r->journal = j;
    r->by_key = bw_hmap_create();
    r->by_id = bw_hmap_create();
    /* JetStream mode: any worker decides, so requests name the shared subject */
    r->own_subject =
        o->kv != NULL ? bw_strdup(o->cfg->approval_decision_subject) : bw_approvals_own_subject(o->cfg);
    r->finished = bw_hmap_create();
    r->finished_ring = bw_calloc(FINISHED_MEMORY, sizeof *r->finished_ring);
    r->finished_len = bw_calloc(FINISHED_MEMORY, sizeof *r->finished_len);
    pthread_mutex_init(&r->mu, NULL);
    bw_list_init(&r->http_q);
    r->accepting = true;
    uv_async_init(o->loop, &r->http_async, on_http_async);
    r->http_async.data = r;
    uv_unref((uv_handle_t *)&r->http_async);
    uv_timer_init(o->loop, &r->sweep);
    r->sweep.data = r;
    uv_unref((uv_handle_t *)&r->sweep);
    bw_metrics_init_approvals(outcomes);
    bw_worker_set_approvals(o->worker, r);
    if (o->kv != NULL) {
        r->kv = *o->kv;
        r->by_kvkey = bw_hmap_create();
        uv_timer_start(&r->sweep, on_kv_sweep, KV_SWEEP_MS, KV_SWEEP_MS);
    } else {
        replay(r);
    }
    return r;
}

static void collect_jobs(void *ud, const char *key, void *value)
{
    (void)key;
    approval_t *a = value;
    bw_job_t ***cursor = ud;
    if (a->job != NULL)
        *(*cursor)++ = a->job;
}

static void on_async_closed(uv_handle_t *h)
{
    bw_approvals_t *r = h->data;
    if (--r->handles > 0)
        return;
    pthread_mutex_destroy(&r->mu);
    free(r);
}

static void free_mirrored(void *ud, const char *key, void *value)
{
    (void)ud;
    (void)key;
    approval_free(value);
}

void bw_approvals_destroy(bw_approvals_t *r)
{
    if (r == NULL)
        return;
    r->closing = true;
    pthread_mutex_lock(&r->mu);
    r->accepting = false;
    pthread_mutex_unlock(&r->mu);
    on_http_async(&r->http_async); /* answers what was queued */
    /* pending approvals stay in the journal: their jobs end here without a result */
    bw_job_t **jobs = bw_calloc(r->pending + 1, sizeof *jobs), **cursor = jobs;
    bw_hmap_foreach(r->by_key, collect_jobs, &cursor);
    for (bw_job_t **j = jobs; j < cursor; j++)
        bw_worker_detach(r->worker, *j);
    free(jobs);
    if (r->kv.put != NULL) {
        r->kv.drop(r->kv.ud);                            /* the bucket operations still owed end now */
        bw_hmap_foreach(r->by_key, free_mirrored, NULL); /* the mirror: the bucket keeps the approvals */
        bw_hmap_destroy(r->by_kvkey);
    }
    bw_ajournal_close(r->journal); /* runs the callbacks still owed */
    bw_worker_set_approvals(r->worker, NULL);
    bw_metrics_set(BW_G_APPROVALS_PENDING, 0);
    bw_hmap_destroy(r->by_key);
    bw_hmap_destroy(r->by_id);
    for (size_t i = 0; i < FINISHED_MEMORY; i++)
        free(r->finished_ring[i]);
    free(r->finished_ring);
    free(r->finished_len);
    bw_hmap_destroy(r->finished);
    free(r->own_subject);
    r->handles = 2;
    uv_close((uv_handle_t *)&r->http_async, on_async_closed);
    uv_close((uv_handle_t *)&r->sweep, on_async_closed);
}
