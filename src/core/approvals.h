/*
 * Pending human approvals (PROTOCOL.md, Human approval): the registry of `human_approval` jobs waiting for
 * a person, on the loop thread. A job records its approval in the journal (store/approval_journal.h)
 * durably, then publishes the ApprovalRequest and gives its concurrency slot back (bw_job_park); it stays
 * an active job of the worker, so its deadline, cancels and duplicate assignments work as for any job.
 * Decisions arrive as NATS requests (bus) or through the HTTP API (net/approvals_http.h); both end in
 * one function that checks them, journals the vote durably, answers, and completes the job once the
 * quorum is reached. At start the journal is replayed: approvals whose deadline passed while the worker
 * was down are answered `timeout`, the others wait again. A drain leaves pending approvals in the journal.
 *
 * Wire forms (README, "human_approval"):
 *  - decision request {assignment_id, tenant_id?, decision, approver, comment?}; reply {"accepted":true,
 *    "completed":bool} or {"accepted":false,"reason":R,"message":M} with R one of the BW_AREFUSE_* names;
 *  - list request {tenant_id?} (or empty); reply {"worker_id":W,"approvals":[view...]};
 *  - view {assignment_id, tenant_id, trace_id, prompt, options, approvers, quorum, context, requested_at,
 *    expires_at, expires_in_ms, votes:[{approver,decision,comment,decided_at}], decision_subject}.
 */
#ifndef BW_CORE_APPROVALS_H
#define BW_CORE_APPROVALS_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "core/config.h"
#include "core/job.h"
#include "core/protocol.h"
#include "core/worker.h"
#include "net/http.h"

typedef struct bw_approvals bw_approvals_t;

/* Why a decision was refused: the reply's "reason", and the HTTP status the API answers with. */
typedef enum {
    BW_AREFUSE_NONE = 0,
    BW_AREFUSE_INVALID_REQUEST, /* 400: not JSON, a field missing or of the wrong type */
    BW_AREFUSE_NOT_AN_OPTION,   /* 400: the decision is not one of the options */
    BW_AREFUSE_NOT_AN_APPROVER, /* 403: approvers was given and does not name this approver */
    BW_AREFUSE_UNKNOWN,         /* 404: no such pending approval (for this tenant) */
    BW_AREFUSE_FINISHED,        /* 409: the assignment already has its result */
    BW_AREFUSE_ALREADY_VOTED,   /* 409: this approver already decided */
    BW_AREFUSE_AMBIGUOUS,       /* 409: no tenant_id, and several tenants have an approval with this id */
    BW_AREFUSE_NOT_READY,       /* 503: the approval is still being recorded */
    BW_AREFUSE_STORE_ERROR,     /* 503: the vote could not be journaled */
    BW_AREFUSE__COUNT
} bw_arefuse_t;

const char *bw_arefuse_name(bw_arefuse_t r); /* "invalid_request", "not_an_option", ... */
unsigned bw_arefuse_http_status(bw_arefuse_t r);

/* JetStream mode (README, "Pending approvals in JetStream mode"): the approvals live in a KV bucket that
   every worker mirrors, not in a journal. The transport (net/busjs.c) serves the bucket on the loop
   thread: keys are "base64url(tenant).base64url(id)", values the approval's JSON. */
typedef enum {
    BW_AKV_OK = 0,   /* written (rev: its revision), or read (val, len, rev) */
    BW_AKV_CONFLICT, /* a write whose expected revision was not the key's last one */
    BW_AKV_ABSENT,   /* a read of a key never written, deleted or purged */
    BW_AKV_ERROR     /* no answer in time, or an error (also every callback owed when the store goes) */
} bw_akv_status_t;
typedef void (*bw_akv_cb)(void *ud, bw_akv_status_t st, uint64_t rev, const char *val, size_t len);
typedef struct bw_akv_ops {
    void *ud;
    /* Writes val under key when the key's last revision is expect (0: only when it was never written). */
    void (*put)(void *ud, const char *key, const char *val, size_t len, uint64_t expect, bw_akv_cb cb,
                void *cbud);
    /* Deletes key when its last revision is expect. */
    void (*del)(void *ud, const char *key, uint64_t expect, bw_akv_cb cb, void *cbud);
    /* Reads key's last value. */
    void (*get)(void *ud, const char *key, bw_akv_cb cb, void *cbud);
    /* Runs every callback still owed now, with BW_AKV_ERROR (the registry is going). */
    void (*drop)(void *ud);
} bw_akv_ops_t;

typedef struct bw_approvals_opts {
    uv_loop_t *loop;
    const bw_config_t *cfg;
    bw_worker_t *worker;
    /* ApprovalRequests and replies go out here (kind BW_OUT_APPROVAL) */
    bw_publish_fn publish;
    void *publish_ud;
    /* JetStream mode: the bucket (copied); NULL: the journal under APPROVAL_DIR */
    const bw_akv_ops_t *kv;
} bw_approvals_opts_t;

/* Loop thread. Opens and replays the journal (cfg->approval_dir), resuming every pending approval as a
   parked job of the worker. NULL with a message naming APPROVAL_DIR in err when the journal cannot be
   used. The `human_approval` handler finds the registry through bw_approvals_of(job). */
bw_approvals_t *bw_approvals_create(const bw_approvals_opts_t *o, char *err, size_t errlen);
/* Loop thread, before the worker is destroyed: pending approvals stay in the journal. NULL: no-op. */
void bw_approvals_destroy(bw_approvals_t *r);

/* The registry the worker serves approvals with (NULL when it has none: `exec`). */
bw_approvals_t *bw_approvals_of(const bw_job_t *job);
/* The handler, for a running job whose payload it validated: spec is {prompt, options, approvers (array
   or null), quorum, context} (read during the call). Records the approval durably, then publishes the
   ApprovalRequest and parks the job; or fails it with TOO_MANY_PENDING_APPROVALS or
   APPROVAL_STORE_ERROR. */
void bw_approvals_begin(bw_approvals_t *r, bw_job_t *job, json_t *spec);
/* The handler's dispose: the approval leaves the registry (its end journaled unless the worker stops). */
void bw_approvals_job_disposed(bw_job_t *job);

/* Loop thread: a NATS decision request, list request (reply may be NULL: nothing is answered). own: it
   came on this worker's own decision subject (answer even when the approval is unknown). */
void bw_approvals_on_decision(bw_approvals_t *r, const char *data, size_t len, const char *reply, bool own);
void bw_approvals_on_list(bw_approvals_t *r, const char *data, size_t len, const char *reply);

/* Loop thread, JetStream mode: the bucket's watcher saw key written (val, len) or deleted (val NULL) at
   revision rev; bw_approvals_kv_loaded once it delivered what the bucket held when the watch began.
   Until then decisions are answered not_ready. */
void bw_approvals_kv_entry(bw_approvals_t *r, const char *key, uint64_t rev, const char *val, size_t len);
void bw_approvals_kv_loaded(bw_approvals_t *r);
/* Loop thread: a cancel for an assignment the worker has no job for (tenant NULL: any tenant). In
   JetStream mode a pending approval in the bucket is cancelled (one worker wins, its result goes out). */
void bw_approvals_cancel(bw_approvals_t *r, const char *tenant, const char *id, const char *why);

/* This worker's own decision subject, <CAF_APPROVAL_DECISION_SUBJECT>.<worker id as a subject token>.
   Caller frees. */
char *bw_approvals_own_subject(const bw_config_t *cfg);

/* Any thread (the HTTP server's): one request of the approvals API, answered on the loop with
   bw_http_reply. id and tenant may be NULL (LIST; tenant NULL = any); limit: LIST answers the `limit`
   soonest to expire (0: BW_APPROVALS_LIST_DEFAULT) and says how many there are; body is the POST body.
   Everything is copied. When the registry is gone (shutdown) the request is answered 503. */
#define BW_APPROVALS_LIST_DEFAULT 500 /* a page polling every 2 s must not cost the loop a 4 MB answer */
#define BW_APPROVALS_LIST_MAX 100000
typedef enum { BW_APPROVALS_LIST = 0, BW_APPROVALS_GET, BW_APPROVALS_DECIDE } bw_approvals_op_t;
void bw_approvals_http(bw_approvals_t *r, bw_approvals_op_t op, const char *id, const char *tenant,
                       size_t limit, const char *body, size_t len, bw_http_reply_t *reply);

#endif
