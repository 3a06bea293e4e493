/*
 * A job: one accepted assignment on its way to exactly one result. All functions here run on the loop
 * thread. Handlers see a job through this API only: they read the payload, keep private state, and
 * finish it with bw_job_succeed or bw_job_fail. The first completion wins; later ones (a handler that
 * finishes just after the deadline fired, say) are ignored, so a job can never produce two results.
 */
#ifndef BW_CORE_JOB_H
#define BW_CORE_JOB_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "core/config.h"
#include "core/protocol.h"
#include "core/sched.h"
#include "util/list.h"

typedef struct bw_job bw_job_t;

/* A job type's implementation: one file in src/handlers, one line in handler.c's table. */
typedef struct bw_handler {
    const char *name;
    /* Starts the work; must not block the loop. May complete the job before returning. */
    void (*start)(bw_job_t *job);
    /* Stops the work for real (timer stopped, transfer removed, query cancelled). After it returns the
       handler must not complete the job. Optional for handlers that always complete inside start. */
    void (*cancel)(bw_job_t *job);
    /* Releases the handler's private state; called exactly once after the job finished, if started. */
    void (*dispose)(bw_job_t *job);
    /* Optional: releases what the handler keeps across jobs (caches, process pools); loop thread, once,
       when the worker is destroyed. */
    void (*shutdown)(void);
    /* Optional: the error_code of a running job stopped by its deadline (default "TIMEOUT"). */
    const char *timeout_code;
    /* Whether its payload may hold strings with U+0000 (the handler reads them with their length);
       otherwise such a job fails with INVALID_PAYLOAD before start. */
    bool accepts_nul;
    /* Its default in WORKER_TYPE_CONCURRENCY: 0 no cap of its own, > 0 that many at once,
       BW_CONCURRENCY_CPUS the online CPU count (for the types that keep a CPU busy). */
    int concurrency;
    /* It spends its time waiting on the outside world (a timer, a remote server): with a cap of its own
       it runs beside WORKER_MAX_CONCURRENCY's shared slots instead of taking one. */
    bool waits;
} bw_handler_t;

#define BW_CONCURRENCY_CPUS (-1)

typedef enum { BW_JOB_QUEUED = 0, BW_JOB_RUNNING, BW_JOB_DONE } bw_job_state_t;

typedef void (*bw_job_done_cb)(bw_job_t *job);

struct bw_job {
    bw_sched_item_t sched; /* the worker's scheduler: waiting or running */
    bw_list_t same_id;     /* worker's ring of active jobs with this assignment id (of every tenant) */
    bw_assignment_t a;
    const bw_handler_t *handler; /* NULL for jobs rejected before start */
    void *hdata;                 /* handler-private state */
    uv_loop_t *loop;
    const bw_config_t *cfg; /* the worker's configuration (handlers read their limits here) */
    size_t output_limit;    /* largest result body the transport takes: max_payload less the result's
                               NATS headers, in bytes (0: no limit) */
    uv_timer_t deadline;
    bw_job_state_t state;
    bool started;         /* handler->start was called */
    bool parked;          /* waits for the outside world without holding a slot (bw_job_park) */
    uint64_t received_ns; /* monotonic, when the message reached the worker */
    uint64_t started_ns;
    int64_t deadline_at_ms; /* loop time (uv_now) of the deadline */
    /* the outcome */
    bw_status_t status;
    json_t *output;
    json_t *logs; /* optional array sent as the result's "logs" (console output of a script); owned */
    char *error_code;
    char *error_message;
    int attempts;
    bool worker_fault;      /* the failure is the worker's, not the job's (its sandbox crashed): with
                               JetStream the assignment is delivered again, up to CAF_JS_MAX_DELIVER */
    bw_job_done_cb on_done; /* the worker's completion hook */
    bw_job_done_cb on_park; /* the worker's hook when the job gives its slot back (may be NULL) */
    void *owner;            /* the worker */
};

/* Creates a queued job owning the decoded assignment (moved from a, which is zeroed). The deadline
   counts from received_ns. Caller releases with bw_job_release after on_done ran. */
bw_job_t *bw_job_create(uv_loop_t *loop, bw_assignment_t *a, uint64_t received_ns, bw_job_done_cb on_done,
                        void *owner);
/* Arms the deadline timer (the effective timeout, counted from reception). */
void bw_job_arm_deadline(bw_job_t *job);
/* Starts the handler (state QUEUED -> RUNNING). */
void bw_job_start(bw_job_t *job, const bw_handler_t *h);
/* Completes with success; output is stolen (may be NULL). Ignored unless the job is running. */
void bw_job_succeed(bw_job_t *job, json_t *output);
/* Completes with a non-success status and a stable error code. Ignored once done. */
void bw_job_fail(bw_job_t *job, bw_status_t status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Stops a queued or running job now (handler cancelled for real) with the given status and code. */
void bw_job_abort(bw_job_t *job, bw_status_t status, const char *code, const char *message);
/* Handler, running job: the job now waits for a person (or another outside event) and gives its
   concurrency slot back; it stays active (deadline, cancel, duplicates) until it completes. Once. */
void bw_job_park(bw_job_t *job);
/* A job accepted before a restart, running again parked in handler h with its state hdata: the deadline
   fires in left_ms (0: on the next loop iteration). The caller tracks it. */
void bw_job_resume(bw_job_t *job, const bw_handler_t *h, void *hdata, int64_t left_ms);
/* Ends a job without a result (the worker is stopping and the job's state is kept elsewhere, e.g. a
   pending approval in its journal): the deadline stops and the handler state is disposed; on_done is not
   called. The caller untracks and releases it. */
void bw_job_detach(bw_job_t *job);
/* Milliseconds left before the deadline (0 when passed). */
int64_t bw_job_remaining_ms(const bw_job_t *job);
/* Frees the job once its timer handle is closed (asynchronously). */
void bw_job_release(bw_job_t *job);

#endif
