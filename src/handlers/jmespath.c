/*
 * jmespath {expression, data}: the value of the expression over data (JSON null when nothing matches),
 * with src/jmespath as the engine.
 *
 * Compiled expressions live in an LRU cache shared by all jobs (JMESPATH_CACHE_ENTRIES, loop thread
 * only); an entry is reference-counted, so one evicted while a job still evaluates it stays alive until
 * that job is done. Small jobs (an assignment of at most INLINE_MAX_BYTES) are evaluated on the loop:
 * that takes microseconds, less than a hand-off to another thread costs, and an evaluation that needs
 * more than INLINE_MAX_STEPS starts again on the pool. Larger jobs go straight to libuv's thread pool; a
 * deadline or cancel stops them through the engine's cancel flag, and a job that ends while its evaluation
 * still runs leaves the cleanup to the evaluation's completion (the job's memory is never touched from the
 * pool: the evaluation holds its own references to data and expression). Every evaluation has the engine's
 * step budget and a memory budget (what it builds, counted as it builds it: MEMORY_PER_RESULT_BYTE times the
 * largest result), and a result is measured (with an early stop) before it is accepted, so a value that
 * shares structure cannot turn into an exponentially large message. Pool work is counted (core/poolwork.h):
 * the cache is dropped at shutdown once no evaluation is left on the pool.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core/handler.h"
#include "core/poolwork.h"
#include "jmespath/jmespath.h"
#include "util/hmap.h"
#include "util/jsonw.h"
#include "util/list.h"
#include "util/xalloc.h"

#define INLINE_MAX_BYTES (16 * 1024)
#define INLINE_MAX_STEPS                                                                                     \
    20000 /* 0.3-2 ms of work (15-90 ns a step): past it, the evaluation moves to the pool */
#define OUTPUT_LIMIT_DEFAULT (64u * 1024 * 1024) /* when the transport states no limit */
#define MEMORY_PER_RESULT_BYTE 16
#define MEMORY_MIN (16u * 1024 * 1024)

/* ---- the compiled-expression cache (loop thread) ---- */

typedef struct centry {
    bw_list_t lru; /* least recently used at the head */
    char *key;
    size_t klen;
    bw_jmespath_expr_t *expr;
    int refs; /* one for the cache while cached, one per job using it */
    bool cached;
} centry_t;

static struct {
    bw_hmap_t *map;
    bw_list_t lru;
    size_t n;
} cache;

static void centry_release(centry_t *ce)
{
    if (ce == NULL || --ce->refs > 0)
        return;
    bw_jmespath_destroy(ce->expr);
    free(ce->key);
    free(ce);
}

static void cache_evict_to(size_t max)
{
    while (cache.n > max && !bw_list_empty(&cache.lru)) {
        centry_t *old = bw_list_entry(bw_list_shift(&cache.lru), centry_t, lru);
        bw_hmap_del(cache.map, old->key, old->klen);
        old->cached = false;
        cache.n--;
        centry_release(old);
    }
}

static void cache_insert(centry_t *ce, size_t max)
{
    if (cache.map == NULL) {
        cache.map = bw_hmap_create();
        bw_list_init(&cache.lru);
    }
    cache_evict_to(max - 1);
    bw_hmap_put(cache.map, ce->key, ce->klen, ce);
    bw_list_push(&cache.lru, &ce->lru);
    ce->cached = true;
    ce->refs++;
    cache.n++;
}

/* The compiled form of expr[0..len) with a reference for the caller, or NULL with err filled. */
static centry_t *cache_acquire(const char *expr, size_t len, size_t max, bw_jmespath_error_t *err)
{
    centry_t *ce = cache.map != NULL ? bw_hmap_get(cache.map, expr, len) : NULL;
    if (ce != NULL) {
        bw_list_remove(&ce->lru);
        bw_list_push(&cache.lru, &ce->lru);
        ce->refs++;
        return ce;
    }
    bw_jmespath_expr_t *e = NULL;
    if (bw_jmespath_compile(expr, len, &e, err) != 0)
        return NULL;
    ce = bw_calloc(1, sizeof *ce);
    ce->key = bw_strndup(expr, len);
    ce->klen = len;
    ce->expr = e;
    ce->refs = 1;
    bw_list_init(&ce->lru);
    if (max > 0)
        cache_insert(ce, max);
    return ce;
}

/* ---- jobs ---- */

typedef struct jp_job {
    bw_poolwork_t pw; /* first: the completion finds the job's state from it */
    bw_job_t *job;
    centry_t *ce;
    json_t *data;   /* own reference */
    json_t *result; /* own reference, on success */
    bw_jmespath_error_t err;
    int rc;
    _Atomic int cancel;
    uint64_t max_bytes; /* the evaluation's memory budget */
} jp_job_t;

static void cache_clear(void);
/* The evaluations on the pool, counted (loop thread): the cache is dropped once none is left */
static bw_poolgroup_t pool = {.teardown = cache_clear};

static void jp_free(jp_job_t *jp)
{
    centry_release(jp->ce);
    json_decref(jp->data);
    json_decref(jp->result);
    free(jp);
}

/* "syntax error at offset 4: ..." — the engine's message starts with the position. */
static void fail_with(bw_job_t *job, const char *code, const bw_jmespath_error_t *err)
{
    bw_job_fail(job, BW_ST_ERROR, code, "%s error %s", bw_jmespath_status_name(err->status), err->message);
}

static const char *error_code(bw_jmespath_status_t st, bool compiling)
{
    if (st == BW_JMESPATH_ESYNTAX || (compiling && st == BW_JMESPATH_ELIMIT))
        return "JMESPATH_COMPILE_ERROR";
    return "JMESPATH_RUNTIME_ERROR";
}

static void complete(jp_job_t *jp)
{
    bw_job_t *job = jp->job;
    if (jp->rc != 0) {
        fail_with(job, error_code(jp->err.status, false), &jp->err);
        return;
    }
    size_t limit = job->output_limit ? job->output_limit : OUTPUT_LIMIT_DEFAULT;
    if (bw_jsonw_size_bounded(jp->result, limit) == SIZE_MAX) {
        bw_job_fail(job, BW_ST_ERROR, "RESULT_TOO_LARGE",
                    "the expression's value encodes to more than %zu bytes (the NATS server's max_payload)",
                    limit);
        return;
    }
    json_t *out = jp->result;
    jp->result = NULL;
    bw_job_succeed(job, out);
}

/* max_steps 0: the engine's default budget. The memory budget follows what a result may carry: an
   evaluation builds at most MEMORY_PER_RESULT_BYTE times the largest result in new values (counted as they
   are built), so no expression holds hundreds of MB before its result is found too large. */
static void evaluate(jp_job_t *jp, uint64_t max_steps)
{
    bw_jmespath_eval_opts_t o = {.max_steps = max_steps, .cancel = &jp->cancel, .max_bytes = jp->max_bytes};
    jp->rc = bw_jmespath_eval_opts(jp->ce->expr, jp->data, &o, &jp->result, &jp->err);
}

static void work(bw_poolwork_t *pw) /* thread pool */
{
    evaluate((jp_job_t *)pw, 0);
}

static void after_work(bw_poolwork_t *pw, bool detached)
{
    jp_job_t *jp = (jp_job_t *)pw;
    if (detached) /* the job ended meanwhile: only the cleanup is left */
        jp_free(jp);
    else
        complete(jp);
}

/* Reads the payload; NULL after failing the job. */
static const char *payload_expression(bw_job_t *job, size_t *len)
{
    json_t *p = job->a.payload;
    json_t *e = json_object_get(p, "expression");
    if (!json_is_object(p) || !json_is_string(e)) {
        bw_job_fail(job, BW_ST_ERROR, "MISSING_EXPRESSION",
                    "jmespath needs payload.expression: a JMESPath expression as a string");
        return NULL;
    }
    *len = json_string_length(e);
    if (*len > (size_t)job->cfg->jmespath_max_expression_bytes) {
        bw_job_fail(job, BW_ST_ERROR, "EXPRESSION_TOO_LARGE",
                    "the expression is %zu bytes, more than JMESPATH_MAX_EXPRESSION_BYTES (%lld)", *len,
                    (long long)job->cfg->jmespath_max_expression_bytes);
        return NULL;
    }
    return json_string_value(e);
}

static void jmespath_start(bw_job_t *job)
{
    size_t len = 0;
    bw_jmespath_error_t err;
    const char *expr = payload_expression(job, &len);
    if (expr == NULL)
        return;
    centry_t *ce = cache_acquire(expr, len, (size_t)job->cfg->jmespath_cache_entries, &err);
    if (ce == NULL) {
        fail_with(job, error_code(err.status, true), &err);
        return;
    }
    jp_job_t *jp = bw_calloc(1, sizeof *jp);
    jp->job = job;
    jp->ce = ce;
    jp->data = json_incref(json_object_get(job->a.payload, "data"));
    uint64_t limit = job->output_limit ? job->output_limit : OUTPUT_LIMIT_DEFAULT;
    jp->max_bytes = MEMORY_PER_RESULT_BYTE * limit > MEMORY_MIN ? MEMORY_PER_RESULT_BYTE * limit : MEMORY_MIN;
    job->hdata = jp;
    if (job->a.msg_bytes <= INLINE_MAX_BYTES) {
        evaluate(jp, INLINE_MAX_STEPS);
        if (jp->rc != BW_JMESPATH_ELIMIT) {
            complete(jp);
            return;
        }
        jp->rc = 0; /* more work than the loop may spend: again on the pool, with the full budget */
    }
    bw_poolwork_queue(job->loop, &pool, &jp->pw, work, after_work);
}

/* The evaluation, if still on the pool, is told to stop and will clean up after itself. */
static void jmespath_cancel(bw_job_t *job)
{
    jp_job_t *jp = job->hdata;
    if (jp == NULL || !bw_poolwork_busy(&jp->pw))
        return;
    atomic_store(&jp->cancel, 1);
    bw_poolwork_detach(&jp->pw);
    job->hdata = NULL;
}

static void jmespath_dispose(bw_job_t *job)
{
    jp_job_t *jp = job->hdata;
    job->hdata = NULL;
    if (jp != NULL && !bw_poolwork_detach(&jp->pw))
        jp_free(jp);
}

/* Drops the cached expressions; loop thread, once no evaluation is on the pool (jmespath_shutdown). */
static void cache_clear(void)
{
    if (cache.map == NULL)
        return;
    cache_evict_to(0);
    bw_hmap_destroy(cache.map);
    cache.map = NULL;
}

/* An evaluation still on the pool (its job cancelled by the shutdown) holds a reference to its cache
   entry, which its completion releases on the loop: the cache goes once the last one has returned. */
static void jmespath_shutdown(void)
{
    bw_poolgroup_close(&pool);
}

const bw_handler_t bw_handler_jmespath = {
    .name = "jmespath",
    .start = jmespath_start,
    .cancel = jmespath_cancel,
    .dispose = jmespath_dispose,
    .shutdown = jmespath_shutdown,
    .concurrency = BW_CONCURRENCY_CPUS,
};
