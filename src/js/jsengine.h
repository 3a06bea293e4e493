/*
 * The JavaScript engine behind the `javascript` job type: runs one script in a hardened JavaScriptCore
 * realm (js/jsrealm.c: frozen built-ins, the job's globals removed afterwards) and produces the
 * sandbox wire response (semantics at the top of jsengine.c; the
 * js-sandbox process around it is cli/cli_sandbox.c). Pure engine: no event loop, no worker state,
 * unit-testable in process. An engine is used by one thread at a time; a sandbox child owns exactly one.
 *
 * Request: {"id", "code", "args"?, "timeout_ms"?, "max_output_bytes"?, "max_logs"?, "max_log_bytes"?}.
 * Response: {"id", "ok":true, "output"?, "logs", "logs_truncated", "elapsed_us", "cpu_us"} or {"id",
 * "ok":false, "code", "message", "line"?, "column"?, "logs", "logs_truncated", "elapsed_us", "cpu_us"}
 * (cpu_us: the engine thread's CPU time for the job). Numbers in the request
 * are read as JavaScript numbers: an id must stay below 2^53 to come back exact. Response strings may
 * contain U+0000 (\u0000): parse them with jansson's JSON_ALLOW_NUL.
 */
#ifndef BW_JS_JSENGINE_H
#define BW_JS_JSENGINE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

typedef struct bw_jsengine bw_jsengine_t;

/* Defaults for request fields that are absent (the pool always sends them all). */
#define BW_JSENGINE_DEFAULT_TIMEOUT_MS 5000
#define BW_JSENGINE_DEFAULT_MAX_OUTPUT (1024 * 1024)
#define BW_JSENGINE_DEFAULT_MAX_LOGS 100
#define BW_JSENGINE_DEFAULT_MAX_LOG_BYTES (64 * 1024)
/* Error messages (script errors, rejections) are cut to this many bytes. */
#define BW_JSENGINE_MESSAGE_MAX 4096

/* Jobs run in one realm before it is replaced by a new one (its creation costs ~10 ms): bounds what a
   long-lived realm accumulates (code caches, heap fragmentation). */
#define BW_JSENGINE_REALM_JOBS 10000

/* Creates an engine: one JavaScriptCore context group (one VM) and its first hardened realm.
   Returns NULL (after one line on stderr) when JavaScriptCore lacks an entry point the engine needs.
   Sets JSC_* options in the environment the first time (JavaScriptCore reads them once per process).
   Caller frees with bw_jsengine_destroy. */
bw_jsengine_t *bw_jsengine_create(void);

/* Called by bw_jsengine_run_frame once the request is parsed and valid, just before the script runs,
   with the request's id as JSON text (borrowed for the call) and its time limit. */
typedef void (*bw_jsengine_start_cb)(void *ud, const char *id, size_t id_len, int64_t timeout_ms);

/* Runs one request given as JSON text (len bytes) and appends the response's JSON text to out. This
   is the sandbox child's path: no intermediate JSON tree on the way in or out. `start` may be NULL.
   A realm the job may have left something in (see bw_jsrealm_clean), or that ran its
   BW_JSENGINE_REALM_JOBS jobs, is replaced by bw_jsengine_prepare, here before the next job unless
   the caller did it earlier. */
void bw_jsengine_run_frame(bw_jsengine_t *e, const char *req, size_t len, bw_buf_t *out,
                           bw_jsengine_start_cb start, void *ud);

/* bw_jsengine_run_frame for a jansson request (borrowed); returns the response object (new reference,
   never NULL). */
json_t *bw_jsengine_run(bw_jsengine_t *e, const json_t *request);

/* Replaces a spent realm ahead of time, so that a request does not wait for it; a no-op when the
   realm is fit. Call it while idle, after answering. */
void bw_jsengine_prepare(bw_jsengine_t *e);

/* Gives up the current realm: the next job runs in a new one (after bw_jsengine_prepare). */
void bw_jsengine_retire_realm(bw_jsengine_t *e);

/* A full garbage collection now (after giving up a realm because the process grew). */
void bw_jsengine_collect(bw_jsengine_t *e);

/* Realms created so far (the first included). */
uint64_t bw_jsengine_realms(const bw_jsengine_t *e);

/* Releases the engine and its contexts; NULL is a no-op. */
void bw_jsengine_destroy(bw_jsengine_t *e);

#endif
