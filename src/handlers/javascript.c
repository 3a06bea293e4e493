/*
 * javascript {code, args, timeout_ms?}: the script's completion value as JSON, run by JavaScriptCore in a
 * sandbox process (js/sandbox.c: a pool of `beamline-worker js-sandbox` children; the engine and its
 * semantics are in js/jsengine.c). This file validates the payload, turns the job into a sandbox
 * request (the script's own time limit ends a little before the job's deadline, so a runaway script
 * reports SCRIPT_TIMEOUT itself), and maps the answer onto the result: the value as output, console
 * output as the result's "logs", failures as SCRIPT_* codes.
 *
 * The pool is created on the first javascript job (an idle worker starts no engine) and lives until the
 * worker is destroyed. Loop thread only.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/handler.h"
#include "js/sandbox.h"
#include "util/xalloc.h"

#define DEADLINE_MARGIN_MS 20 /* the script stops this much before the job's deadline */

static bw_sandbox_pool_t *pool;

typedef struct js_job {
    bw_job_t *job;
    bw_sandbox_req_t *req; /* NULL once answered */
} js_job_t;

static bw_sandbox_pool_t *pool_for(bw_job_t *job)
{
    char exe[4096];
    size_t n = sizeof exe;
    if (pool == NULL) {
        if (uv_exepath(exe, &n) != 0)
            return NULL;
        pool = bw_sandbox_pool_create(job->loop, job->cfg, exe);
    }
    return pool;
}

/* "ReferenceError: Can't find variable: y (line 1, column 5)"; syntax errors have no column. */
static void fail_script(bw_job_t *job, json_t *resp)
{
    const char *code = json_string_value(json_object_get(resp, "code"));
    const char *msg = json_string_value(json_object_get(resp, "message"));
    json_t *line = json_object_get(resp, "line"), *col = json_object_get(resp, "column");
    bw_status_t st = code != NULL && strcmp(code, "SCRIPT_TIMEOUT") == 0 ? BW_ST_TIMEOUT : BW_ST_ERROR;
    char where[64] = "";
    if (json_is_integer(line) && json_is_integer(col))
        snprintf(where, sizeof where, " (line %lld, column %lld)", (long long)json_integer_value(line),
                 (long long)json_integer_value(col));
    else if (json_is_integer(line))
        snprintf(where, sizeof where, " (line %lld)", (long long)json_integer_value(line));
    bw_job_fail(job, st, code ? code : "SCRIPT_ERROR", "%s%s", msg ? msg : "script failed", where);
}

static void on_answer(void *ud, bw_sandbox_outcome_t o, json_t *resp, const char *message)
{
    js_job_t *js = ud;
    bw_job_t *job = js->job;
    js->req = NULL;
    if (o == BW_SANDBOX_MEMORY) {
        bw_job_fail(job, BW_ST_ERROR, "SCRIPT_MEMORY_LIMIT", "%s", message);
        return;
    }
    if (o != BW_SANDBOX_OK) {
        job->worker_fault = true; /* not the script's doing: another delivery may succeed */
        bw_job_fail(job, BW_ST_ERROR, o == BW_SANDBOX_CRASHED ? "SCRIPT_CRASHED" : "SANDBOX_UNAVAILABLE",
                    "%s", message);
        return;
    }
    json_t *logs = json_object_get(resp, "logs");
    if (json_array_size(logs) > 0)
        job->logs = json_incref(logs);
    if (!json_is_true(json_object_get(resp, "ok"))) {
        fail_script(job, resp);
        return;
    }
    json_t *out = json_object_get(resp, "output");
    bw_job_succeed(job, out != NULL ? json_incref(out) : NULL);
}

/* The request for the child, or NULL after failing the job. */
static json_t *build_request(bw_job_t *job)
{
    const bw_config_t *c = job->cfg;
    json_t *p = job->a.payload;
    json_t *code = json_object_get(p, "code"), *args = json_object_get(p, "args"),
           *tmo = json_object_get(p, "timeout_ms");
    if (!json_is_string(code)) {
        bw_job_fail(job, BW_ST_ERROR, "MISSING_CODE",
                    "javascript needs payload.code: the script as a string");
        return NULL;
    }
    if (json_string_length(code) > (size_t)c->script_max_code_bytes) {
        bw_job_fail(job, BW_ST_ERROR, "CODE_TOO_LARGE",
                    "the script is %zu bytes, more than SCRIPT_MAX_CODE_BYTES (%lld)",
                    json_string_length(code), (long long)c->script_max_code_bytes);
        return NULL;
    }
    if (tmo != NULL && (!json_is_integer(tmo) || json_integer_value(tmo) <= 0)) {
        bw_job_fail(job, BW_ST_ERROR, "INVALID_PAYLOAD", "payload.timeout_ms must be a positive integer");
        return NULL;
    }
    int64_t left = bw_job_remaining_ms(job) - DEADLINE_MARGIN_MS;
    int64_t limit = tmo != NULL && json_integer_value(tmo) < left ? json_integer_value(tmo) : left;
    return json_pack("{s:O,s:o,s:I,s:I,s:I,s:I}", "code", code, "args",
                     args != NULL ? json_incref(args) : json_object(), "timeout_ms",
                     (json_int_t)(limit > 1 ? limit : 1), "max_output_bytes",
                     (json_int_t)c->script_max_output_bytes, "max_logs", (json_int_t)c->script_max_logs,
                     "max_log_bytes", (json_int_t)c->script_max_log_bytes);
}

static void javascript_start(bw_job_t *job)
{
    if (!json_is_object(job->a.payload)) {
        bw_job_fail(job, BW_ST_ERROR, "MISSING_CODE",
                    "javascript needs payload.code: the script as a string");
        return;
    }
    json_t *req = build_request(job);
    if (req == NULL)
        return;
    bw_sandbox_pool_t *p = pool_for(job);
    if (p == NULL) {
        json_decref(req);
        bw_job_fail(job, BW_ST_ERROR, "SANDBOX_UNAVAILABLE",
                    "cannot locate the worker binary to start sandboxes");
        return;
    }
    js_job_t *js = bw_calloc(1, sizeof *js);
    js->job = job;
    job->hdata = js;
    js->req = bw_sandbox_submit(p, req, on_answer, js);
}

static void javascript_cancel(bw_job_t *job)
{
    js_job_t *js = job->hdata;
    if (js != NULL && js->req != NULL) {
        bw_sandbox_cancel(js->req);
        js->req = NULL;
    }
}

static void javascript_dispose(bw_job_t *job)
{
    javascript_cancel(job);
    free(job->hdata);
    job->hdata = NULL;
}

static void javascript_shutdown(void)
{
    bw_sandbox_pool_destroy(pool);
    pool = NULL;
}

const bw_handler_t bw_handler_javascript = {
    .name = "javascript",
    .start = javascript_start,
    .cancel = javascript_cancel,
    .dispose = javascript_dispose,
    .shutdown = javascript_shutdown,
    .timeout_code = "SCRIPT_TIMEOUT",
    .concurrency = BW_CONCURRENCY_CPUS,
};
