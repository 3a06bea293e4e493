/*
 * Decoding and encoding of the wire messages. Decoding follows PROTOCOL.md's table row by row; the
 * checks that make a message unanswerable (no JSON, no assignment_id, no usable tenant) come first,
 * because an error result the router would reject is worse than a dead letter that can be replayed.
 */
#include "core/protocol.h"

#include <stdio.h>
#include <string.h>

#include "core/idscan.h"
#include "util/base64.h"
#include "util/digest.h"
#include "util/clock.h"
#include "util/ids.h"
#include "util/jsonw.h"
#include "util/xalloc.h"

static const char *const status_names[] = {"success", "error", "timeout", "cancelled"};

const char *bw_status_name(bw_status_t s)
{
    return status_names[s];
}

/* A string member, or NULL when absent, not a string, or holding U+0000 (which a C string would cut:
   "a\u0000b" must not read as "a"). */
static const char *jstr(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    const char *s = json_string_value(v);
    return s != NULL && strlen(s) == json_string_length(v) ? s : NULL;
}

static const char *hget(const bw_headers_t *h, const char *name)
{
    return (h != NULL && h->get != NULL) ? h->get(h->ud, name) : NULL;
}

static bw_decode_status_t fail(bw_decode_error_t *e, bw_decode_status_t st, const char *code, const char *msg)
{
    e->code = code;
    snprintf(e->message, sizeof e->message, "%s", msg);
    return st;
}

static bool version_ok(json_t *v)
{
    const char *s = json_string_value(v);
    return v == NULL || (s != NULL && (!strcmp(s, "1") || !strcmp(s, "1.0") || !strcmp(s, "v1")));
}

/* Unwraps {"version":"v1","kind":"exec_assign","data":{…}}; returns the bare object or NULL. */
static json_t *unwrap(json_t *root, bool *enveloped)
{
    json_t *data = json_object_get(root, "data");
    const char *kind = jstr(root, "kind");
    *enveloped = false;
    if (kind == NULL && data == NULL)
        return root;
    if (kind == NULL || strcmp(kind, "exec_assign") != 0 || !json_is_object(data))
        return NULL;
    *enveloped = true;
    return data;
}

static void pick_trace(bw_assignment_t *a, json_t *o, const bw_headers_t *h)
{
    char tp[33];
    const char *cands[4] = {jstr(o, "trace_id"), jstr(json_object_get(o, "correlation"), "trace_id"),
                            hget(h, "trace_id"), NULL};
    if (bw_traceparent_trace_id(hget(h, "traceparent"), tp))
        cands[3] = tp;
    for (int i = 0; i < 4; i++) {
        if (cands[i] != NULL && bw_is_valid_trace_id(cands[i], strlen(cands[i]))) {
            a->trace_id = bw_strdup(cands[i]);
            return;
        }
    }
}

static void pick_run_ids(bw_assignment_t *a, json_t *o)
{
    const char *r = jstr(o, "run_id"), *f = jstr(o, "flow_id"), *s = jstr(o, "step_id");
    if (r && f && s && bw_is_valid_run_id(r, strlen(r)) && bw_is_valid_run_id(f, strlen(f)) &&
        bw_is_valid_run_id(s, strlen(s))) {
        a->run_id = bw_strdup(r);
        a->flow_id = bw_strdup(f);
        a->step_id = bw_strdup(s);
    }
}

/* A positive integral millisecond budget; 0 when absent, -1 when present but invalid. */
static int64_t budget(json_t *v)
{
    if (v == NULL || json_is_null(v))
        return 0;
    if (json_is_integer(v) && json_integer_value(v) > 0 && json_integer_value(v) <= 7 * 86400000LL)
        return json_integer_value(v);
    if (json_is_real(v) && json_real_value(v) >= 1 && json_real_value(v) <= 7 * 86400000.0)
        return (int64_t)json_real_value(v);
    return -1;
}

static bw_decode_status_t decode_timeout(bw_assignment_t *a, json_t *options, int64_t def,
                                         bw_decode_error_t *e)
{
    int64_t d = budget(json_object_get(options, "deadline_ms"));
    int64_t t = json_is_object(a->payload) ? budget(json_object_get(a->payload, "timeout_ms")) : 0;
    if (d < 0)
        return fail(e, BW_DECODE_INVALID, "INVALID_ASSIGNMENT",
                    "options.deadline_ms must be a positive number of milliseconds");
    if (t < 0)
        return fail(e, BW_DECODE_INVALID, "INVALID_ASSIGNMENT",
                    "job.payload.timeout_ms must be a positive number of milliseconds");
    a->timeout_ms = (d && t) ? (d < t ? d : t) : (d ? d : (t ? t : def));
    return BW_DECODE_OK;
}

static void decode_retry(bw_assignment_t *a, json_t *options)
{
    json_t *retry = json_object_get(options, "retry");
    json_t *m = json_object_get(retry, "max_attempts"), *b = json_object_get(retry, "backoff_ms");
    if (json_is_integer(m) && json_integer_value(m) > 0 && json_integer_value(m) <= 100)
        a->retry_max_attempts = json_integer_value(m);
    if (json_is_integer(b) && json_integer_value(b) >= 0 && json_integer_value(b) <= 3600000)
        a->retry_backoff_ms = json_integer_value(b);
}

/* The checks that leave no way to answer: the message becomes a dead letter. */
static bw_decode_status_t decode_identity(bw_assignment_t *a, json_t *o, const bw_headers_t *h,
                                          bw_decode_error_t *e)
{
    const char *id = jstr(o, "assignment_id");
    if (id == NULL || *id == '\0' || strlen(id) > BW_MAX_ID_BYTES)
        return fail(e, BW_DECODE_DEAD, "DECODE_ERROR",
                    "assignment_id must be a non-empty string of at most 256 bytes");
    a->assignment_id = bw_strdup(id);
    const char *rid = jstr(o, "request_id");
    a->request_id = bw_strdup(rid != NULL && *rid && strlen(rid) <= BW_MAX_ID_BYTES ? rid : id);
    const char *tenant = jstr(o, "tenant_id");
    if (tenant == NULL && json_is_string(json_object_get(o, "tenant_id")))
        return fail(e, BW_DECODE_DEAD, "DECODE_ERROR", "tenant_id contains U+0000 (NUL)");
    if (tenant == NULL || *tenant == '\0')
        tenant = hget(h, "tenant_id");
    if (tenant == NULL || *tenant == '\0' || strlen(tenant) > BW_MAX_TENANT_BYTES)
        return fail(e, BW_DECODE_DEAD, "DECODE_ERROR", "tenant_id (payload or header) must be 1..256 bytes");
    a->tenant_id = bw_strdup(tenant);
    return BW_DECODE_OK;
}

static bw_decode_status_t decode_job(bw_assignment_t *a, json_t *o, bw_decode_error_t *e)
{
    json_t *job = json_object_get(o, "job");
    const char *type = jstr(job, "type");
    if (!json_is_object(job) || type == NULL || *type == '\0' || strlen(type) > 64)
        return fail(e, BW_DECODE_INVALID, "INVALID_ASSIGNMENT",
                    "job.type must be a non-empty string of at most 64 bytes");
    a->job_type = bw_strdup(type);
    if (json_object_get(job, "payload_ref") != NULL)
        return fail(e, BW_DECODE_INVALID, "PAYLOAD_REF_UNSUPPORTED",
                    "job.payload_ref is not supported by this worker: send the payload inline");
    json_t *payload = json_object_get(job, "payload");
    if (payload != NULL && !json_is_null(payload) && !json_is_object(payload))
        return fail(e, BW_DECODE_INVALID, "INVALID_ASSIGNMENT", "job.payload must be a JSON object");
    a->payload = json_is_object(payload) ? payload : NULL;
    return BW_DECODE_OK;
}

/* Whether a string (or a key) somewhere in v, outside the value skip, contains U+0000. */
static bool has_nul(const json_t *v, const json_t *skip)
{
    if (v == skip)
        return false;
    if (json_is_string(v))
        return memchr(json_string_value(v), '\0', json_string_length(v)) != NULL;
    if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++)
            if (has_nul(json_array_get(v, i), skip))
                return true;
        return false;
    }
    for (void *it = json_object_iter((json_t *)v); it != NULL; it = json_object_iter_next((json_t *)v, it))
        if (strlen(json_object_iter_key(it)) != json_object_iter_key_len(it) ||
            has_nul(json_object_iter_value(it), skip))
            return true;
    return false;
}

/* The identity of a message jansson refused, read by the fallback scanner: BW_DECODE_INVALID (answer
   with INVALID_ASSIGNMENT and dead-letter the original) when the text is JSON and its assignment id and
   tenant can be read, the same rules as decode_identity's; else BW_DECODE_DEAD / PARSE_ERROR. */
static bw_decode_status_t decode_unreadable(bw_assignment_t *a, const char *data, size_t len,
                                            const bw_headers_t *h, const json_error_t *jerr,
                                            bw_decode_error_t *e)
{
    bw_idscan_t ids;
    snprintf(e->message, sizeof e->message, "invalid JSON at line %d column %d (byte %d): %s", jerr->line,
             jerr->column, jerr->position, jerr->text);
    e->code = "PARSE_ERROR";
    if (!bw_idscan(data, len, &ids) || ids.assignment_id.kind != BW_IDSCAN_STRING ||
        ids.assignment_id.len == 0 || ids.tenant_id.kind == BW_IDSCAN_UNREADABLE)
        return BW_DECODE_DEAD;
    const char *tenant = ids.tenant_id.kind == BW_IDSCAN_STRING && ids.tenant_id.len > 0
                             ? ids.tenant_id.s
                             : hget(h, "tenant_id");
    if (tenant == NULL || *tenant == '\0' || strlen(tenant) > BW_MAX_TENANT_BYTES)
        return BW_DECODE_DEAD;
    a->assignment_id = bw_strdup(ids.assignment_id.s);
    a->request_id =
        bw_strdup(ids.request_id.kind == BW_IDSCAN_STRING && ids.request_id.len > 0 ? ids.request_id.s
                                                                                    : ids.assignment_id.s);
    a->tenant_id = bw_strdup(tenant);
    a->enveloped = ids.enveloped;
    pick_trace(a, NULL, h);
    e->dead_reason = "PARSE_ERROR";
    e->code = "INVALID_ASSIGNMENT";
    snprintf(e->message, sizeof e->message,
             "the assignment is JSON the worker cannot read (line %d column %d, byte %d): %s", jerr->line,
             jerr->column, jerr->position, jerr->text);
    return BW_DECODE_INVALID;
}

bw_decode_status_t bw_assignment_decode(const char *data, size_t len, const bw_headers_t *hdr,
                                        int64_t default_timeout_ms, bw_assignment_t *a, bw_decode_error_t *e)
{
    json_error_t jerr;
    bw_decode_status_t st;
    memset(a, 0, sizeof *a);
    e->code = NULL;
    e->message[0] = '\0';
    e->dead_reason = NULL;
    a->timeout_ms = default_timeout_ms;
    a->msg_bytes = len;
    /* U+0000 is valid JSON, but most of the worker reads strings as C strings: it is parsed only when
       the text has one, and then accepted in job.payload alone (handlers that do not declare they take
       it fail the job with INVALID_PAYLOAD) */
    bool nul = memmem(data, len, "\\u0000", 6) != NULL;
    json_t *root = json_loadb(data, len, nul ? JSON_ALLOW_NUL : 0, &jerr);
    if (root == NULL)
        return decode_unreadable(a, data, len, hdr, &jerr, e);
    json_t *o = json_is_object(root) ? unwrap(root, &a->enveloped) : NULL;
    if (o == NULL) {
        json_decref(root);
        return fail(e, BW_DECODE_DEAD, "DECODE_ERROR",
                    "expected an ExecAssignment object or a {version,kind:exec_assign,data} envelope");
    }
    a->root = json_incref(o);
    json_decref(root);
    json_t *payload = json_object_get(json_object_get(o, "job"), "payload");
    bool stray_nul = nul && has_nul(o, payload);
    if (nul && !stray_nul)
        a->payload_has_nul = has_nul(payload, NULL);
    if ((st = decode_identity(a, o, hdr, e)) != BW_DECODE_OK)
        return st;
    const char *pid = jstr(json_object_get(o, "executor"), "provider_id");
    if (pid != NULL && *pid && strlen(pid) <= BW_MAX_ID_BYTES)
        a->provider_id = bw_strdup(pid);
    pick_trace(a, o, hdr);
    pick_run_ids(a, o);
    if (stray_nul) { /* answerable (the ids are clean), but not runnable: kept as a dead letter too */
        e->dead_reason = "DECODE_ERROR";
        return fail(e, BW_DECODE_INVALID, "INVALID_ASSIGNMENT",
                    "a string outside job.payload contains U+0000 (NUL)");
    }
    if (!version_ok(json_object_get(o, "version")))
        return fail(e, BW_DECODE_INVALID, "INVALID_ASSIGNMENT",
                    "unsupported version: expected \"1\", \"1.0\" or \"v1\"");
    if ((st = decode_job(a, o, e)) != BW_DECODE_OK)
        return st;
    json_t *options = json_object_get(o, "options");
    if (options != NULL && !json_is_null(options) && !json_is_object(options))
        return fail(e, BW_DECODE_INVALID, "INVALID_ASSIGNMENT", "options must be a JSON object");
    decode_retry(a, options);
    return decode_timeout(a, options, default_timeout_ms, e);
}

void bw_assignment_dispose(bw_assignment_t *a)
{
    if (a == NULL)
        return;
    free(a->assignment_id);
    free(a->request_id);
    free(a->tenant_id);
    free(a->job_type);
    free(a->provider_id);
    free(a->trace_id);
    free(a->run_id);
    free(a->flow_id);
    free(a->step_id);
    json_decref(a->root);
    memset(a, 0, sizeof *a);
}

static void set_str(json_t *o, const char *k, const char *v)
{
    if (v != NULL)
        json_object_set_new(o, k, json_string(v));
}

json_t *bw_assignment_to_json(const bw_assignment_t *a)
{
    json_t *o = json_object();
    set_str(o, "assignment_id", a->assignment_id);
    set_str(o, "request_id", a->request_id);
    set_str(o, "tenant_id", a->tenant_id);
    set_str(o, "job_type", a->job_type);
    set_str(o, "provider_id", a->provider_id);
    set_str(o, "trace_id", a->trace_id);
    set_str(o, "run_id", a->run_id);
    set_str(o, "flow_id", a->flow_id);
    set_str(o, "step_id", a->step_id);
    if (a->root != NULL)
        json_object_set(o, "root", a->root);
    json_object_set_new(o, "timeout_ms", json_integer(a->timeout_ms));
    json_object_set_new(o, "msg_bytes", json_integer((json_int_t)a->msg_bytes));
    json_object_set_new(o, "enveloped", json_boolean(a->enveloped));
    return o;
}

static char *get_str(json_t *o, const char *k, bool required, bool *ok)
{
    json_t *v = json_object_get(o, k);
    if (json_is_string(v) && json_string_length(v) <= BW_MAX_ID_BYTES &&
        strlen(json_string_value(v)) == json_string_length(v))
        return bw_strdup(json_string_value(v));
    if (required || (v != NULL && !json_is_null(v)))
        *ok = false;
    return NULL;
}

int bw_assignment_from_json(json_t *o, bw_assignment_t *a)
{
    bool ok = json_is_object(o);
    memset(a, 0, sizeof *a);
    if (!ok)
        return -1;
    a->assignment_id = get_str(o, "assignment_id", true, &ok);
    a->request_id = get_str(o, "request_id", false, &ok);
    a->tenant_id = get_str(o, "tenant_id", true, &ok);
    a->job_type = get_str(o, "job_type", true, &ok);
    a->provider_id = get_str(o, "provider_id", false, &ok);
    a->trace_id = get_str(o, "trace_id", false, &ok);
    a->run_id = get_str(o, "run_id", false, &ok);
    a->flow_id = get_str(o, "flow_id", false, &ok);
    a->step_id = get_str(o, "step_id", false, &ok);
    if ((a->run_id == NULL) != (a->step_id == NULL) || (a->run_id == NULL) != (a->flow_id == NULL))
        ok = false;
    json_t *root = json_object_get(o, "root");
    if (!json_is_object(root))
        ok = false;
    else {
        a->root = json_incref(root);
        json_t *job = json_object_get(root, "job");
        json_t *payload = json_is_object(job) ? json_object_get(job, "payload") : NULL;
        a->payload = json_is_object(payload) ? payload : NULL;
    }
    json_t *t = json_object_get(o, "timeout_ms");
    ok = ok && json_is_integer(t) && json_integer_value(t) > 0;
    a->timeout_ms = ok ? json_integer_value(t) : 0;
    json_t *mb = json_object_get(o, "msg_bytes");
    a->msg_bytes = json_is_integer(mb) && json_integer_value(mb) > 0 ? (size_t)json_integer_value(mb) : 0;
    a->enveloped = json_is_true(json_object_get(o, "enveloped"));
    if (!ok) {
        bw_assignment_dispose(a);
        return -1;
    }
    return 0;
}

/* Serialises o (stolen), wrapped in {version:v1,kind,data} when envelope. */
static char *finish(json_t *o, const char *kind, bool envelope, size_t *len)
{
    if (envelope) {
        json_t *env = json_object();
        json_object_set_new(env, "version", json_string("v1"));
        json_object_set_new(env, "kind", json_string(kind));
        json_object_set_new(env, "data", o);
        o = env;
    }
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (s == NULL)
        abort(); /* only on allocation failure: the OOM policy */
    if (len != NULL)
        *len = strlen(s);
    return s;
}

char *bw_result_encode(const bw_assignment_t *a, const bw_result_t *r, const char *worker_id, bool envelope,
                       size_t *len)
{
    /* Written directly (no jansson object per result): this runs once per job. Field order and the
       no-null rule are those of the router format. */
    bw_buf_t b;
    bool first = true;
    bw_buf_init(&b, 512);
    if (envelope)
        bw_buf_puts(&b, "{\"version\":\"v1\",\"kind\":\"exec_result\",\"data\":");
    bw_buf_append(&b, "{", 1);
    bw_jsonw_str(&b, &first, "version", "1");
    bw_jsonw_str(&b, &first, "assignment_id", a->assignment_id);
    bw_jsonw_str(&b, &first, "request_id", a->request_id ? a->request_id : a->assignment_id);
    bw_jsonw_str(&b, &first, "tenant_id", a->tenant_id);
    bw_jsonw_str(&b, &first, "status", bw_status_name(r->status));
    bw_jsonw_str(&b, &first, "provider_id", a->provider_id ? a->provider_id : worker_id);
    bw_jsonw_str(&b, &first, "worker_id", worker_id);
    if (a->job_type != NULL) {
        bw_buf_puts(&b, ",\"job\":{\"type\":");
        bw_jsonw_string(&b, a->job_type, strlen(a->job_type));
        bw_buf_append(&b, "}", 1);
        bw_jsonw_str(&b, &first, "job_type", a->job_type);
    }
    size_t limit = r->max_bytes > 0 ? r->max_bytes : SIZE_MAX;
    if (r->output != NULL && !json_is_null(r->output) &&
        !bw_jsonw_value_bounded(&b, &first, "output", r->output, limit))
        goto out;
    if (json_array_size(r->logs) > 0 && !bw_jsonw_value_bounded(&b, &first, "logs", r->logs, limit))
        goto out;
    if (r->status != BW_ST_SUCCESS) {
        bw_jsonw_str(&b, &first, "error_code", r->error_code ? r->error_code : "INTERNAL_ERROR");
        bw_jsonw_str(&b, &first, "error_message", r->error_message ? r->error_message : "");
    }
    bw_jsonw_int(&b, &first, "latency_ms", r->latency_ms);
    bw_jsonw_raw(&b, &first, "cost", "0.0");
    bw_jsonw_int(&b, &first, "timestamp", r->timestamp_ms);
    bw_jsonw_int(&b, &first, "attempts", r->attempts > 0 ? r->attempts : 1);
    bw_jsonw_str(&b, &first, "trace_id", a->trace_id);
    if (a->run_id != NULL) {
        bw_jsonw_str(&b, &first, "run_id", a->run_id);
        bw_jsonw_str(&b, &first, "flow_id", a->flow_id);
        bw_jsonw_str(&b, &first, "step_id", a->step_id);
    }
    bw_buf_puts(&b, envelope ? "}}" : "}");
out:
    if (len != NULL)
        *len = b.len;
    return b.p;
}

char *bw_ack_encode(const bw_assignment_t *a, const char *status, const char *message, bool envelope,
                    size_t *len)
{
    json_t *o = json_object();
    set_str(o, "version", "1");
    set_str(o, "assignment_id", a->assignment_id);
    set_str(o, "request_id", a->request_id ? a->request_id : a->assignment_id);
    set_str(o, "tenant_id", a->tenant_id);
    set_str(o, "status", status);
    set_str(o, "message", message);
    json_object_set_new(o, "acknowledged_at", json_integer(bw_wall_ms()));
    set_str(o, "trace_id", a->trace_id);
    return finish(o, "exec_assign_ack", envelope, len);
}

char *bw_heartbeat_encode(const bw_heartbeat_t *h, bool envelope, size_t *len)
{
    char ts[40];
    json_t *o = json_object();
    set_str(o, "version", "1");
    set_str(o, "worker_id", h->worker_id);
    set_str(o, "timestamp", bw_rfc3339_ms(bw_wall_ms(), ts, sizeof ts));
    set_str(o, "status", h->status);
    json_object_set_new(o, "load", json_real(h->load));
    json_object_set_new(o, "jobs_in_flight", json_integer(h->in_flight));
    json_object_set_new(o, "jobs_queued", json_integer(h->queued));
    json_object_set_new(o, "max_concurrency", json_integer(h->max_concurrency));
    json_object_set_new(o, "uptime_s", json_integer(h->uptime_s));
    set_str(o, "build", h->build);
    json_object_set_new(o, "resources", json_pack("{sI}", "rss_bytes", (json_int_t)h->rss_bytes));
    if (h->consumer != NULL)
        json_object_set(o, "consumer", h->consumer);
    return finish(o, "heartbeat", envelope, len);
}

/* The stored original, exactly enough to replay it: a JSON object or array as JSON ("json"), other
   UTF-8 text as a string ("text"), anything else as base64 ("base64"); beyond the cap only the
   payload_ref (length and hash) remains. */
static void attach_message(json_t *o, const char *data, size_t len, size_t cap)
{
    if (len > cap) {
        json_object_set_new(o, "message_truncated", json_true());
        return;
    }
    json_t *j = json_loadb(data, len, 0, NULL);
    const char *format = "json";
    if (j == NULL) {
        j = json_stringn(data, len); /* NULL when not valid UTF-8 */
        format = "text";
    }
    if (j != NULL) {
        json_object_set_new(o, "message", j);
    } else {
        char *b64 = bw_base64_encode(data, len);
        json_object_set_new(o, "message_base64", json_string(b64));
        free(b64);
        format = "base64";
    }
    json_object_set_new(o, "message_format", json_string(format));
}

char *bw_dead_letter_encode(const bw_dead_letter_t *d, bool envelope, size_t *len)
{
    char ts[40], sha[65];
    json_t *o = json_object();
    set_str(o, "reason", d->reason);
    set_str(o, "ts", bw_rfc3339_ms(bw_wall_ms(), ts, sizeof ts));
    set_str(o, "worker_id", d->worker_id);
    bw_sha256_hex(d->data, d->len, sha);
    json_object_set_new(o, "payload_ref",
                        json_pack("{sssIss}", "subject", d->subject ? d->subject : "", "len",
                                  (json_int_t)d->len, "sha256", sha));
    set_str(o, "assignment_id", d->assignment_id);
    set_str(o, "trace_id", d->trace_id);
    set_str(o, "error", d->error);
    attach_message(o, d->data, d->len, d->max_message_bytes);
    if (d->headers != NULL)
        json_object_set(o, "headers", d->headers);
    return finish(o, "dead_letter", envelope, len);
}
