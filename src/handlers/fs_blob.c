/*
 * fs_blob_put {path, bytes | content, if_absent?} -> {path, size, sha256}
 * fs_blob_get {path} -> {path, size, sha256, bytes}
 * fs_blob_stat {path} -> {path, size, sha256, modified}
 * fs_blob_list {prefix?, limit?} -> {entries: [{path, size, modified}], truncated}
 * fs_blob_delete {path} -> {path, deleted}
 *
 * One family of job types on store/blobs.c (which keeps every path beneath the tenant's directory). The
 * payload is checked on the loop; the file work runs on the libuv thread pool and the output is built
 * back on the loop (core/poolwork.h). A job cancelled or out of time while its work runs is answered at once;
 * the work finishes on its own (a put then still lands, whole, or not at all; one still queued is dropped).
 * The store is closed at shutdown only once no work on the pool can use it any more.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/handler.h"
#include "core/poolwork.h"
#include "store/blobs.h"
#include "util/base64.h"
#include "util/clock.h"
#include "util/jsonw.h"
#include "util/xalloc.h"

#define LIST_LIMIT_DEFAULT 1000
#define LIST_LIMIT_MAX 10000
#define RESULT_OVERHEAD 2048 /* the result's own fields around a blob's base64 */
#define SWEEP_AGE_S 600      /* temporary files older than this are leftovers of a crash */

typedef enum { OP_PUT, OP_GET, OP_STAT, OP_LIST, OP_DELETE } op_t;

typedef struct blob_job {
    bw_poolwork_t pw; /* first: the work's completion finds the job's state from it */
    bw_job_t *job;    /* the work never reads it */
    const bw_config_t *cfg;
    op_t op;
    char *tenant, *path; /* path: also the list prefix */
    /* put */
    unsigned char *data;
    size_t len;
    bool if_absent;
    /* get */
    uint64_t max;
    char max_why[200];
    void *got;
    /* list */
    size_t limit;
    json_t *entries;
    bool truncated, deleted;
    int rc;
    bw_blob_info_t info;
    bw_blob_err_t err;
} blob_job_t;

/* The store, opened on first use (on the pool: it may create directories). */
static pthread_mutex_t store_lock = PTHREAD_MUTEX_INITIALIZER;
static bw_blobs_t *store;
static bool swept;

static void close_store(void);
/* The jobs' work on the pool, counted (loop thread) */
static bw_poolgroup_t pool = {.teardown = close_store};

static bw_blobs_t *store_for(const bw_config_t *cfg, bw_blob_err_t *e)
{
    char why[200];
    pthread_mutex_lock(&store_lock);
    if (store == NULL &&
        (store = bw_blobs_open(cfg->fs_base_dir, cfg->fs_tenant_isolation, why, sizeof why)) == NULL) {
        e->code = "FILE_WRITE_ERROR";
        snprintf(e->message, sizeof e->message, "%s", why);
    } else if (!swept) { /* once: what puts cut short by a crash left (old enough not to be a running put's)
                          */
        swept = true;
        bw_blobs_sweep(store, SWEEP_AGE_S);
    }
    bw_blobs_t *s = store;
    pthread_mutex_unlock(&store_lock);
    return s;
}

static void bj_free(blob_job_t *b)
{
    free(b->tenant);
    free(b->path);
    free(b->data);
    free(b->got);
    json_decref(b->entries);
    free(b);
}

static void work(bw_poolwork_t *pw) /* thread pool */
{
    blob_job_t *b = (blob_job_t *)pw;
    bw_blobs_t *s = store_for(b->cfg, &b->err);
    b->rc = -1;
    if (s == NULL)
        return;
    switch (b->op) {
    case OP_PUT:
        b->rc = bw_blob_put(s, b->tenant, b->path, b->data, b->len, b->if_absent, &b->info, &b->err);
        break;
    case OP_GET:
        b->rc = bw_blob_get(s, b->tenant, b->path, b->max, b->max_why, &b->got, &b->info, &b->err);
        break;
    case OP_STAT:
        b->rc = bw_blob_stat(s, b->tenant, b->path, &b->info, &b->err);
        break;
    case OP_LIST:
        b->rc = bw_blob_list(s, b->tenant, b->path, b->limit, &b->entries, &b->truncated, &b->err);
        break;
    case OP_DELETE:
        b->rc = bw_blob_delete(s, b->tenant, b->path, &b->deleted, &b->err);
        break;
    }
}

static void complete(blob_job_t *b)
{
    bw_job_t *job = b->job;
    if (b->rc != 0) {
        bw_job_fail(job, BW_ST_ERROR, b->err.code != NULL ? b->err.code : "FILE_READ_ERROR", "%s",
                    b->err.message);
        return;
    }
    json_t *out;
    char when[40];
    switch (b->op) {
    case OP_PUT:
        out = json_pack("{s:s,s:I,s:s}", "path", b->path, "size", (json_int_t)b->info.size, "sha256",
                        b->info.sha256);
        break;
    case OP_GET: {
        char *enc = bw_base64_encode(b->got, b->info.size);
        out = json_pack("{s:s,s:I,s:s,s:s}", "path", b->path, "size", (json_int_t)b->info.size, "sha256",
                        b->info.sha256, "bytes", enc);
        free(enc);
        break;
    }
    case OP_STAT:
        out = json_pack("{s:s,s:I,s:s,s:s}", "path", b->path, "size", (json_int_t)b->info.size, "sha256",
                        b->info.sha256, "modified", bw_rfc3339_ms(b->info.modified_ms, when, sizeof when));
        break;
    case OP_LIST: { /* as many entries as one NATS message carries, the rest cut (truncated) */
        size_t room = job->output_limit > RESULT_OVERHEAD ? job->output_limit - RESULT_OVERHEAD : SIZE_MAX,
               used = 0;
        json_t *kept = json_array();
        bool cut = b->truncated;
        for (size_t i = 0; i < json_array_size(b->entries); i++) {
            json_t *entry = json_array_get(b->entries, i);
            used += bw_jsonw_size_bounded(entry, SIZE_MAX) + 1;
            if (used > room) {
                cut = true;
                break;
            }
            json_array_append(kept, entry);
        }
        out = json_pack("{s:o,s:b}", "entries", kept, "truncated", cut);
        break;
    }
    default:
        out = json_pack("{s:s,s:b}", "path", b->path, "deleted", b->deleted);
        break;
    }
    bw_job_succeed(job, out);
}

static void after_work(bw_poolwork_t *pw, bool detached)
{
    blob_job_t *b = (blob_job_t *)pw;
    if (detached) /* the job ended meanwhile */
        bj_free(b);
    else
        complete(b);
}

/* ---- payloads ---- */

/* payload.path as a checked path; NULL after failing the job. */
static const char *payload_path(bw_job_t *job)
{
    json_t *p = json_object_get(job->a.payload, "path");
    if (!json_is_string(p) || json_string_length(p) == 0) {
        bw_job_fail(job, BW_ST_ERROR, "MISSING_PATH", "%s needs payload.path: a relative path as a string",
                    job->a.job_type);
        return NULL;
    }
    const char *why = bw_blob_path_refusal(json_string_value(p), json_string_length(p));
    if (why != NULL) {
        bw_job_fail(job, BW_ST_ERROR, "INVALID_PATH", "%s", why);
        return NULL;
    }
    return json_string_value(p);
}

/* The blob of a put, decoded; false after failing the job. */
static bool payload_content(bw_job_t *job, blob_job_t *b)
{
    json_t *bytes = json_object_get(job->a.payload, "bytes"),
           *content = json_object_get(job->a.payload, "content");
    if (json_is_string(bytes)) {
        b->data = bw_base64_decode(json_string_value(bytes), json_string_length(bytes), &b->len);
        if (b->data == NULL) {
            bw_job_fail(job, BW_ST_ERROR, "BASE64_DECODE_ERROR",
                        "payload.bytes is not valid base64 (RFC 4648, padded, no whitespace)");
            return false;
        }
    } else if (json_is_string(content)) {
        b->len = json_string_length(content);
        b->data = bw_malloc(b->len + 1);
        memcpy(b->data, json_string_value(content), b->len);
    } else {
        bw_job_fail(job, BW_ST_ERROR, "MISSING_CONTENT",
                    "fs_blob_put needs payload.bytes (base64) or payload.content (a string)");
        return false;
    }
    if (b->len > (uint64_t)job->cfg->fs_max_blob_bytes) {
        bw_job_fail(job, BW_ST_ERROR, "BLOB_TOO_LARGE", "the blob is %zu bytes; FS_MAX_BLOB_BYTES is %lld",
                    b->len, (long long)job->cfg->fs_max_blob_bytes);
        return false;
    }
    return true;
}

/* The largest blob a get may return: FS_MAX_BLOB_BYTES, and what a result can carry once base64'd. */
static void get_limit(bw_job_t *job, blob_job_t *b)
{
    uint64_t cfg = (uint64_t)job->cfg->fs_max_blob_bytes;
    b->max = cfg;
    snprintf(b->max_why, sizeof b->max_why, "FS_MAX_BLOB_BYTES is %llu", (unsigned long long)cfg);
    size_t overhead = RESULT_OVERHEAD + 2 * strlen(b->path); /* the path, escaped, is in the result too */
    if (job->output_limit > overhead) {
        uint64_t fits = (job->output_limit - overhead) / 4 * 3;
        if (fits < cfg) {
            b->max = fits;
            snprintf(
                b->max_why, sizeof b->max_why,
                "a result carries at most %llu bytes of blob: the NATS server's max_payload is %zu bytes and "
                "base64 adds a third",
                (unsigned long long)fits, job->output_limit);
        }
    }
}

static void start(bw_job_t *job, op_t op)
{
    if (!json_is_object(job->a.payload)) {
        bw_job_fail(job, BW_ST_ERROR, op == OP_LIST ? "INVALID_PAYLOAD" : "MISSING_PATH",
                    "%s needs a payload object", job->a.job_type);
        return;
    }
    blob_job_t *b = bw_calloc(1, sizeof *b);
    b->job = job;
    b->cfg = job->cfg;
    b->op = op;
    b->tenant = bw_strdup(job->a.tenant_id != NULL ? job->a.tenant_id : "");
    if (op == OP_LIST) {
        json_t *prefix = json_object_get(job->a.payload, "prefix"),
               *limit = json_object_get(job->a.payload, "limit");
        if ((prefix != NULL && !json_is_string(prefix)) ||
            (json_is_string(prefix) &&
             memchr(json_string_value(prefix), '\0', json_string_length(prefix)) != NULL)) {
            bw_job_fail(job, BW_ST_ERROR, "INVALID_PATH",
                        "payload.prefix must be a string without NUL bytes");
            bj_free(b);
            return;
        }
        if (limit != NULL && (!json_is_integer(limit) || json_integer_value(limit) < 1 ||
                              json_integer_value(limit) > LIST_LIMIT_MAX)) {
            bw_job_fail(job, BW_ST_ERROR, "INVALID_PAYLOAD", "payload.limit must be an integer in 1..%d",
                        LIST_LIMIT_MAX);
            bj_free(b);
            return;
        }
        b->path = bw_strdup(json_is_string(prefix) ? json_string_value(prefix) : "");
        b->limit = limit != NULL ? (size_t)json_integer_value(limit) : LIST_LIMIT_DEFAULT;
    } else {
        const char *path = payload_path(job);
        if (path == NULL || (op == OP_PUT && !payload_content(job, b))) {
            bj_free(b);
            return;
        }
        b->path = bw_strdup(path);
        b->if_absent = json_is_true(json_object_get(job->a.payload, "if_absent"));
        if (op == OP_GET)
            get_limit(job, b);
    }
    job->hdata = b;
    bw_poolwork_queue(job->loop, &pool, &b->pw, work, after_work);
}

static void put_start(bw_job_t *job)
{
    start(job, OP_PUT);
}
static void get_start(bw_job_t *job)
{
    start(job, OP_GET);
}
static void stat_start(bw_job_t *job)
{
    start(job, OP_STAT);
}
static void list_start(bw_job_t *job)
{
    start(job, OP_LIST);
}
static void delete_start(bw_job_t *job)
{
    start(job, OP_DELETE);
}

/* The work, if still on the pool, finishes on its own and frees what it used. */
static void blob_cancel(bw_job_t *job)
{
    blob_job_t *b = job->hdata;
    if (b != NULL && bw_poolwork_detach(&b->pw))
        job->hdata = NULL;
}

static void blob_dispose(bw_job_t *job)
{
    blob_job_t *b = job->hdata;
    job->hdata = NULL;
    if (b != NULL && !bw_poolwork_detach(&b->pw))
        bj_free(b);
}

/* Loop thread, once no work of the pool group is left (see blob_shutdown). */
static void close_store(void)
{
    pthread_mutex_lock(&store_lock);
    bw_blobs_close(store);
    store = NULL;
    swept = false;
    pthread_mutex_unlock(&store_lock);
}

/* The store closes when the last put, get, ... still on the pool has returned (jobs cancelled by the
   shutdown leave theirs running): closing it under them would hand them a freed store. */
static void blob_shutdown(void)
{
    bw_poolgroup_close(&pool);
}

/* Paths are read with their length (a NUL in one is INVALID_PATH), content as bytes: NULs are fine. */
#define BLOB_HANDLER(sym, type, fn)                                                                          \
    const bw_handler_t sym = {.name = type,                                                                  \
                              .start = fn,                                                                   \
                              .cancel = blob_cancel,                                                         \
                              .dispose = blob_dispose,                                                       \
                              .shutdown = blob_shutdown,                                                     \
                              .accepts_nul = true}

BLOB_HANDLER(bw_handler_fs_blob_put, "fs_blob_put", put_start);
BLOB_HANDLER(bw_handler_fs_blob_get, "fs_blob_get", get_start);
BLOB_HANDLER(bw_handler_fs_blob_stat, "fs_blob_stat", stat_start);
BLOB_HANDLER(bw_handler_fs_blob_list, "fs_blob_list", list_start);
BLOB_HANDLER(bw_handler_fs_blob_delete, "fs_blob_delete", delete_start);
