/*
 * A pool of script sandbox processes (`beamline-worker js-sandbox`, see cli/cli_sandbox.c): each runs one
 * request at a time on JavaScriptCore, in its own address space, so a script that crashes the engine or
 * allocates without bound costs one child process, never the worker. The pool starts its children on
 * first use, hands requests to idle children in order (others wait in a FIFO; a child whose current job
 * just started may be given the next one to hold, see sandbox.c), watches each busy child's
 * resident memory, kills a child that passes SCRIPT_MAX_MEMORY_MB or whose request was cancelled, and
 * replaces children that exit. Loop thread only.
 */
#ifndef BW_JS_SANDBOX_H
#define BW_JS_SANDBOX_H

#include <jansson.h>
#include <uv.h>

#include "core/config.h"

typedef struct bw_sandbox_pool bw_sandbox_pool_t;
typedef struct bw_sandbox_req bw_sandbox_req_t;

/* How a request ended. On BW_SANDBOX_OK, response is the child's answer (borrowed for the call);
   otherwise response is NULL and code/message say what happened to the child. */
typedef enum {
    BW_SANDBOX_OK = 0,
    BW_SANDBOX_MEMORY,
    BW_SANDBOX_CRASHED,
    BW_SANDBOX_UNAVAILABLE
} bw_sandbox_outcome_t;
typedef void (*bw_sandbox_cb)(void *ud, bw_sandbox_outcome_t outcome, json_t *response, const char *message);

/* Creates the pool (no process is started yet). exe is the worker binary. Caller destroys. */
bw_sandbox_pool_t *bw_sandbox_pool_create(uv_loop_t *loop, const bw_config_t *cfg, const char *exe);
/* Queues request (stolen; the pool sets its "id") and returns a handle valid until cb ran or the request
   was cancelled. cb runs exactly once, later, on the loop, unless the request is cancelled first. */
bw_sandbox_req_t *bw_sandbox_submit(bw_sandbox_pool_t *p, json_t *request, bw_sandbox_cb cb, void *ud);
/* The longest answer frame a child may send for request: its output (max_output_bytes), its console
   entries (max_logs, max_log_bytes, escaped) and an error, at most 64 MiB. A longer frame is refused on its
   4-byte header, before anything of it is buffered, and the child replaced (the request: SANDBOX_CRASHED). */
uint32_t bw_sandbox_answer_max(const json_t *request);
/* Withdraws a request: a queued one is dropped, a running one is stopped by killing its child (which is
   then replaced; a request it held behind the cancelled one is queued again), one held behind another
   is stopped when it starts. cb will not run. */
void bw_sandbox_cancel(bw_sandbox_req_t *r);
/* Kills every child and closes the pool's handles; queued requests are dropped without callbacks (their
   owners are gone). The memory goes when the loop has run the close callbacks. NULL is a no-op. */
void bw_sandbox_pool_destroy(bw_sandbox_pool_t *p);

#endif
