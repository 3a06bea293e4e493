/*
 * The worker's scheduler, on the loop thread: takes decoded inbound messages, deduplicates them,
 * admits jobs up to WORKER_MAX_CONCURRENCY with a bounded wait queue beyond it, enforces deadlines,
 * cancels, publishes exactly one result per assignment, sends heartbeats and drains on shutdown.
 * It knows nothing of NATS: every outgoing message goes through the publish callback, so the same
 * scheduler serves the daemon (NATS) and `beamline-worker exec` (stdout).
 */
#ifndef BW_CORE_WORKER_H
#define BW_CORE_WORKER_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "core/config.h"
#include "core/protocol.h"
#include "util/list.h"

#define BW_OUTMSG_MAX_HEADERS 4

/* BW_OUT_APPROVAL: ApprovalRequests and the replies to decision and list requests (sent once, like
   heartbeats: not confirmed, not retried into the DLQ). */
typedef enum {
    BW_OUT_RESULT,
    BW_OUT_ACK,
    BW_OUT_HEARTBEAT,
    BW_OUT_DEAD_LETTER,
    BW_OUT_APPROVAL
} bw_out_kind_t;

/* One outgoing message; everything is borrowed for the duration of the publish call. */
typedef struct bw_outmsg {
    bw_out_kind_t kind;
    const char *subject;
    const char *data;
    size_t len;
    const char *hkeys[BW_OUTMSG_MAX_HEADERS]; /* NULL-terminated when fewer */
    const char *hvals[BW_OUTMSG_MAX_HEADERS];
    /* BW_OUT_RESULT: whose result it is (a JetStream transport settles the deliveries of that job) */
    const char *tenant;
    const char *assignment_id;
    bool replay; /* a remembered result published again (not a new one: nothing to store) */
} bw_outmsg_t;

typedef void (*bw_publish_fn)(void *ud, const bw_outmsg_t *m);

/* Bytes m's headers take in a NATS HPUB ("NATS/1.0\r\n", "name: value\r\n" each, "\r\n"; 0 without
   headers). The server's max_payload counts them together with the payload. */
size_t bw_outmsg_header_bytes(const bw_outmsg_t *m);

typedef enum { BW_IN_ASSIGN = 0, BW_IN_CANCEL } bw_in_kind_t;

/* A message decoded off the loop (on a NATS thread) and handed to the loop. Owned by the worker once
   passed to bw_worker_accept. */
typedef struct bw_inbound {
    bw_list_t link;
    bw_in_kind_t kind;
    uint64_t received_ns;
    /* BW_IN_ASSIGN */
    bw_decode_status_t st;
    bw_decode_error_t err;
    bw_assignment_t a;
    bool dead_letter; /* the original becomes a dead letter (st == BW_DECODE_DEAD or err.dead_reason) */
    char *subject;    /* kept for dead letters */
    char *raw;        /* the original bytes, kept only when dead_letter */
    size_t raw_len;
    json_t *headers; /* name -> string, kept only when dead_letter (the transport fills it in) */
    void *undecoded; /* transport message still to decode on the loop (owned by the transport) */
    /* JetStream: the server's delivery count of this message (0: core NATS, unknown); max_delivered: it
       was delivered more than CAF_JS_MAX_DELIVER times without an answer (the workers that took it
       died), so it is dead-lettered (reason MAX_DELIVER, raw kept) and answered with an error */
    uint64_t deliveries;
    bool max_delivered;
    void *delivery; /* the transport's handle of this delivery (JetStream); NULL in core mode */
    /* BW_IN_CANCEL */
    char *cancel_id;
    char *cancel_tenant; /* the tenant whose job it stops; NULL: every job with that id */
    char *cancel_reason;
} bw_inbound_t;

/* Decodes an assign message into in (any thread); kind and received_ns are the caller's. */
void bw_inbound_decode(bw_inbound_t *in, const char *subject, const char *data, size_t len,
                       const bw_headers_t *h, int64_t default_timeout_ms);
/* Decodes an assign message into a new inbound (any thread). headers may be NULL. */
bw_inbound_t *bw_inbound_assign(const char *subject, const char *data, size_t len, const bw_headers_t *h,
                                json_t *headers_json, int64_t default_timeout_ms);
/* Decodes a cancel request (any thread); the tenant is the payload's tenant_id, else the tenant_id header
   (h may be NULL). NULL when it carries no usable assignment_id or names a tenant no job can have (it is
   then ignored). */
bw_inbound_t *bw_inbound_cancel(const char *data, size_t len, const bw_headers_t *h);
void bw_inbound_destroy(bw_inbound_t *in);

typedef struct bw_worker bw_worker_t;
typedef struct bw_deadletters bw_deadletters_t;

typedef struct bw_worker_opts {
    bw_publish_fn publish;
    void *publish_ud;
    /* Largest message the transport takes (NATS max_payload), 0 = unlimited; may be NULL. */
    size_t (*max_payload)(void *publish_ud);
    bool heartbeats;        /* send WorkerHeartbeats (the daemon does, exec does not) */
    bw_deadletters_t *dead; /* where undecodable messages go (required) */
    /* Optional (JetStream): a job failed through the worker's fault (job->worker_fault: its sandbox
       crashed): true when the transport gave the assignment back for another delivery (then no result
       is published and nothing is remembered); false when it was its last allowed delivery (then the
       assignment is dead-lettered with reason MAX_DELIVER and answered with the job's error). */
    bool (*redeliver)(void *ud, const char *tenant, const char *id);
    /* Optional (JetStream): the job of tenant's id is parked with its state stored durably (a pending
       approval): the transport may settle the assignment's delivery now. */
    void (*parked)(void *ud, const char *tenant, const char *id);
    /* Optional: extra fields for the heartbeat (a JSON object, owned by the caller's return: the worker
       decrefs it), e.g. the JetStream consumer's counters. */
    json_t *(*heartbeat_extra)(void *ud);
} bw_worker_opts_t;

typedef struct bw_worker_stats {
    uint64_t received, duplicates, dead_letters, rejected;
    uint64_t finished[4]; /* by bw_status_t */
    size_t running, queued;
    bool draining;
} bw_worker_stats_t;

/* Loop thread. cfg is borrowed for the worker's lifetime. Caller frees with bw_worker_destroy. */
bw_worker_t *bw_worker_create(uv_loop_t *loop, const bw_config_t *cfg, const bw_worker_opts_t *opts);
/* Loop thread. Takes ownership of in. */
void bw_worker_accept(bw_worker_t *w, bw_inbound_t *in);
/* Loop thread. Marks the worker draining (heartbeats say so from now on, one is sent at once). Jobs
   still arriving are accepted; the caller decides when to stop waiting (see main.c's shutdown). */
void bw_worker_set_draining(bw_worker_t *w);
/* Loop thread. Cancels every queued and running job for real, each with a `cancelled` result. */
void bw_worker_cancel_all(bw_worker_t *w, const char *why);
/* Loop thread. Stops every queued and running job for real WITHOUT a result (JetStream drain: their
   deliveries are given back to the server, another worker runs them). Parked jobs stay. */
void bw_worker_abandon_all(bw_worker_t *w);
/* Loop thread. Remembers a result found elsewhere (the shared result store) in the dedup memory. */
void bw_worker_remember(bw_worker_t *w, const char *tenant, const char *id, const char *trace,
                        const char *result, size_t len);
/* Number of queued + running jobs (parked ones not counted: a drain does not wait for them). */
size_t bw_worker_active(const bw_worker_t *w);
/* How many more jobs could start now: WORKER_MAX_CONCURRENCY less the jobs holding a shared slot and the
   jobs waiting (JetStream mode fetches no more than this; may be negative). */
int64_t bw_worker_room(const bw_worker_t *w);
/* Number of parked jobs (pending approvals). */
size_t bw_worker_parked(const bw_worker_t *w);

struct bw_approvals;
struct bw_job;
struct bw_handler;
/* The registry of pending approvals the worker's human_approval jobs use (NULL: none, as in `exec`). */
void bw_worker_set_approvals(bw_worker_t *w, struct bw_approvals *r);
struct bw_approvals *bw_worker_approvals(const bw_worker_t *w);
/* The active job of tenant and id, or NULL. */
struct bw_job *bw_worker_find(const bw_worker_t *w, const char *tenant, const char *id);
/* Whether the worker still remembers the result of tenant's assignment id (the dedup memory). */
bool bw_worker_has_result(const bw_worker_t *w, const char *tenant, const char *id);
/* Loop thread. A job accepted before a restart (a pending approval from its journal) becomes active
   again, parked in handler h with state hdata; its deadline counts from received_wall_ms (wall clock), so
   one that passed while the worker was down fires on the next loop iteration. Takes a (zeroed on
   success). NULL when that tenant's assignment is already active. */
struct bw_job *bw_worker_resume(bw_worker_t *w, bw_assignment_t *a, int64_t received_wall_ms,
                                const struct bw_handler *h, void *hdata);
/* Loop thread. Ends an active job without a result (bw_job_detach) and releases it. */
void bw_worker_detach(bw_worker_t *w, struct bw_job *job);
/* Loop thread. Publishes a heartbeat now with the given status (NULL = idle/busy from the load). */
void bw_worker_heartbeat(bw_worker_t *w, const char *status);
void bw_worker_get_stats(const bw_worker_t *w, bw_worker_stats_t *s);
/* Loop thread. Aborts anything still active (cancelled results), closes handles; run the loop
   afterwards so the close callbacks free the memory. */
void bw_worker_destroy(bw_worker_t *w);

#endif
