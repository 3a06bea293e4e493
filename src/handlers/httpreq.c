/*
 * What the http and graphql job types read from a payload the same way: the URL and its query, request
 * headers (with traceparent and the tenant added), retries, booleans. Each function fails the job with
 * a specific error_code and returns false/NULL when the payload is not valid.
 */
#include "handlers/httpreq.h"

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util/buf.h"
#include "util/jsonw.h"
#include "util/xalloc.h"

#define DEFAULT_ATTEMPTS 3
#define DEFAULT_BACKOFF_MS 200
#define DEFAULT_MAX_BACKOFF_MS 10000
#define MAX_ATTEMPTS 10

/* A header name is an RFC 9110 token; a value has no control characters (no header injection). */
static bool header_ok(const char *name, const char *value)
{
    if (*name == '\0')
        return false;
    for (const char *p = name; *p; p++)
        if (!(isalnum((unsigned char)*p) || strchr("!#$%&'*+-.^_`|~", *p) != NULL))
            return false;
    for (const unsigned char *p = (const unsigned char *)value; *p; p++)
        if ((*p < 0x20 && *p != '\t') || *p == 0x7f)
            return false;
    return true;
}

/* A scalar as text for a header or query value: strings as they are, numbers and booleans as JSON. */
static char *scalar_text(const json_t *v)
{
    if (json_is_string(v))
        return bw_strdup(json_string_value(v));
    if (json_is_number(v) || json_is_boolean(v))
        return json_dumps(v, JSON_ENCODE_ANY);
    return NULL;
}

bool bw_httpreq_has_header(const json_t *headers, const char *name)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)headers, k, v)
    {
        if (strcasecmp(k, name) == 0)
            return true;
    }
    return false;
}

/* curl_slist_append walks to the end of the list it is given: handed the last node instead, it
   appends in constant time, so a payload with many headers costs linear time, not quadratic. */
typedef struct slist {
    struct curl_slist *head, *tail;
} slist_t;

static void slist_add(slist_t *l, const char *line)
{
    struct curl_slist *n = curl_slist_append(l->tail, line);
    if (n == NULL)
        return;
    if (l->head == NULL)
        l->head = n;
    l->tail = l->tail != NULL ? l->tail->next : n;
}

/* The request's header lines; NULL (job failed) when one is invalid. */
bool bw_httpreq_headers(bw_job_t *job, const json_t *headers, bool json_body, struct curl_slist **out)
{
    const char *k;
    json_t *v;
    slist_t l = {NULL, NULL};
    if (headers != NULL && !json_is_object(headers)) {
        bw_job_fail(job, BW_ST_ERROR, "INVALID_PAYLOAD", "payload.headers must be an object of name: value");
        return false;
    }
    json_object_foreach((json_t *)headers, k, v)
    {
        char *text = scalar_text(v);
        if (text == NULL || !header_ok(k, text)) {
            bw_job_fail(
                job, BW_ST_ERROR, "INVALID_PAYLOAD",
                "payload.headers: '%.80s' is not a valid header (a token name, a value without control "
                "characters)",
                k);
            free(text);
            curl_slist_free_all(l.head);
            return false;
        }
        char *line = *text != '\0' ? bw_asprintf("%s: %s", k, text) : bw_asprintf("%s;", k);
        slist_add(&l, line);
        free(line);
        free(text);
    }
    if (json_body && !bw_httpreq_has_header(headers, "content-type"))
        slist_add(&l, "Content-Type: application/json");
    const bw_assignment_t *a = &job->a;
    if (a->trace_id != NULL && !bw_httpreq_has_header(headers, "traceparent")) {
        char hex[33], *line;
        size_t n = 0;
        for (const char *p = a->trace_id; *p && n < 32; p++)
            if (isxdigit((unsigned char)*p))
                hex[n++] = (char)tolower((unsigned char)*p);
        hex[n] = '\0';
        if (n == 32) {
            line =
                bw_asprintf("traceparent: 00-%s-%08lx%08lx-01", hex, (unsigned long)random() & 0xffffffffUL,
                            ((unsigned long)random() & 0xffffffffUL) | 1UL);
            slist_add(&l, line);
            free(line);
        }
    }
    if (a->tenant_id != NULL && !bw_httpreq_has_header(headers, "x-tenant-id") &&
        header_ok("X-Tenant-Id", a->tenant_id)) {
        char *line = bw_asprintf("X-Tenant-Id: %s", a->tenant_id);
        slist_add(&l, line);
        free(line);
    }
    /* curl would send "Expect: 100-continue" for larger bodies and wait for an answer to it */
    slist_add(&l, "Expect:");
    *out = l.head;
    return true;
}

/* Appends s %-encoded as a query name or value: unreserved characters as they are, space as '+', the
   rest %XX (what curl's CURLU_URLENCODE does for a query). */
static void query_encode(bw_buf_t *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (isalnum(*p) || *p == '-' || *p == '.' || *p == '_' || *p == '~') {
            bw_buf_append(b, (const char *)p, 1);
        } else if (*p == ' ') {
            bw_buf_append(b, "+", 1);
        } else {
            char esc[3] = {'%', hex[*p >> 4], hex[*p & 15]};
            bw_buf_append(b, esc, 3);
        }
    }
}

/* The URL with payload.query appended; NULL (job failed) when invalid. The pairs are encoded into one
   buffer and set once: curl's CURLU_APPENDQUERY copies the whole query for every pair added, which
   for a payload of many pairs is quadratic work on the loop. */
char *bw_httpreq_url(bw_job_t *job, const json_t *url, const json_t *query)
{
    if (url == NULL || (json_is_string(url) && json_string_length(url) == 0)) {
        bw_job_fail(job, BW_ST_ERROR, "MISSING_URL", "payload.url is required");
        return NULL;
    }
    if (!json_is_string(url)) {
        bw_job_fail(job, BW_ST_ERROR, "INVALID_URL", "payload.url must be a string");
        return NULL;
    }
    CURLU *u = curl_url();
    char *scheme = NULL, *out = NULL;
    CURLUcode rc = curl_url_set(u, CURLUPART_URL, json_string_value(url), 0);
    if (rc != CURLUE_OK) {
        bw_job_fail(job, BW_ST_ERROR, "INVALID_URL", "payload.url: %s", curl_url_strerror(rc));
        goto out;
    }
    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
    if (scheme == NULL || (strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0)) {
        bw_job_fail(job, BW_ST_ERROR, "EGRESS_DENIED",
                    "refused by the egress policy: only http and https URLs, not %s",
                    scheme ? scheme : "this one");
        goto out;
    }
    if (query != NULL && !json_is_object(query)) {
        bw_job_fail(job, BW_ST_ERROR, "INVALID_PAYLOAD", "payload.query must be an object of name: value");
        goto out;
    }
    const char *k;
    json_t *v;
    char *have = NULL;
    bw_buf_t q;
    bw_buf_init(&q, 256);
    if (curl_url_get(u, CURLUPART_QUERY, &have, 0) == CURLUE_OK && have != NULL)
        bw_buf_puts(&q, have);
    curl_free(have);
    bool added = false;
    json_object_foreach((json_t *)query, k, v)
    {
        size_t n = json_is_array(v) ? json_array_size(v) : 1;
        for (size_t i = 0; i < n; i++) {
            char *text = scalar_text(json_is_array(v) ? json_array_get(v, i) : v);
            if (text == NULL) {
                bw_job_fail(job, BW_ST_ERROR, "INVALID_PAYLOAD",
                            "payload.query.%.80s: values are strings, numbers, booleans or arrays of them",
                            k);
                bw_buf_dispose(&q);
                goto out;
            }
            if (q.len > 0)
                bw_buf_append(&q, "&", 1);
            query_encode(&q, k);
            bw_buf_append(&q, "=", 1);
            query_encode(&q, text);
            free(text);
            added = true;
        }
    }
    if (added)
        curl_url_set(u, CURLUPART_QUERY, q.p, 0);
    bw_buf_dispose(&q);
    char *full = NULL;
    if (curl_url_get(u, CURLUPART_URL, &full, 0) == CURLUE_OK) {
        out = bw_strdup(full);
        curl_free(full);
    } else {
        bw_job_fail(job, BW_ST_ERROR, "INVALID_URL", "payload.url cannot be completed with payload.query");
    }
out:
    curl_free(scheme);
    curl_url_cleanup(u);
    return out;
}

/* payload.retry, else the assignment's options.retry, else 3 attempts. False (job failed) when invalid. */
bool bw_httpreq_retry(bw_job_t *job, const json_t *retry, bw_fetch_req_t *r)
{
    r->max_attempts = job->a.retry_max_attempts > 0 ? (int)job->a.retry_max_attempts : DEFAULT_ATTEMPTS;
    r->backoff_ms = job->a.retry_backoff_ms > 0 ? job->a.retry_backoff_ms : DEFAULT_BACKOFF_MS;
    r->max_backoff_ms = DEFAULT_MAX_BACKOFF_MS;
    if (r->max_attempts > MAX_ATTEMPTS)
        r->max_attempts = MAX_ATTEMPTS;
    if (retry == NULL)
        return true;
    json_t *ma = json_object_get(retry, "max_attempts"), *b = json_object_get(retry, "backoff_ms"),
           *mb = json_object_get(retry, "max_backoff_ms"), *ni = json_object_get(retry, "non_idempotent");
    if (!json_is_object(retry) ||
        (ma &&
         (!json_is_integer(ma) || json_integer_value(ma) < 1 || json_integer_value(ma) > MAX_ATTEMPTS)) ||
        (b && (!json_is_integer(b) || json_integer_value(b) < 0 || json_integer_value(b) > 600000)) ||
        (mb && (!json_is_integer(mb) || json_integer_value(mb) < 0 || json_integer_value(mb) > 600000)) ||
        (ni && !json_is_boolean(ni))) {
        bw_job_fail(job, BW_ST_ERROR, "INVALID_PAYLOAD",
                    "payload.retry: {max_attempts: 1..10, backoff_ms: 0..600000, max_backoff_ms: 0..600000, "
                    "non_idempotent: boolean}");
        return false;
    }
    if (ma)
        r->max_attempts = (int)json_integer_value(ma);
    if (b)
        r->backoff_ms = json_integer_value(b);
    if (mb)
        r->max_backoff_ms = json_integer_value(mb);
    if (r->max_backoff_ms < r->backoff_ms)
        r->max_backoff_ms = r->backoff_ms;
    if (json_is_true(ni))
        r->idempotent = true;
    return true;
}

bool bw_httpreq_bool(bw_job_t *job, const char *name, bool def, bool *out)
{
    json_t *v = json_object_get(job->a.payload, name);
    if (v != NULL && !json_is_boolean(v)) {
        bw_job_fail(job, BW_ST_ERROR, "INVALID_PAYLOAD", "payload.%s must be a boolean", name);
        return false;
    }
    *out = v != NULL ? json_is_true(v) : def;
    return true;
}

/* What a result message holds besides the output: the result's own fields (status, timestamps, ...)
   and the output's small ones (status, attempts, elapsed_ms, truncated), the NATS headers' names and
   framing, and room for the worker's own bookkeeping: a fixed allowance. */
#define RESULT_FIXED_OVERHEAD 4096

static size_t id_bytes(const char *s)
{
    return s != NULL ? strlen(s) : 0;
}

size_t bw_httpreq_result_room(const bw_job_t *job)
{
    if (job->output_limit == 0)
        return 0;
    /* The assignment's ids appear once in the result, escaped (at most 6 bytes per byte), and again
       raw in the NATS headers: 8 bytes per byte covers both. */
    const bw_assignment_t *a = &job->a;
    size_t ids = id_bytes(a->assignment_id) + id_bytes(a->request_id) + id_bytes(a->tenant_id) +
                 id_bytes(a->job_type) * 2 + id_bytes(a->provider_id) + id_bytes(a->trace_id) +
                 id_bytes(a->run_id) + id_bytes(a->flow_id) + id_bytes(a->step_id) +
                 (job->cfg != NULL ? id_bytes(job->cfg->worker_id) * 2 : 0);
    size_t overhead = RESULT_FIXED_OVERHEAD + 8 * ids;
    return job->output_limit > overhead + 64 ? job->output_limit - overhead : 64;
}

size_t bw_httpreq_string_size(const char *s, size_t n)
{
    size_t out = 2;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        out += c < 0x20 ? 6 : (c == '"' || c == '\\') ? 2 : 1;
    }
    return out;
}

typedef struct sizer {
    size_t total, limit;
    bool exact_reals; /* else a real counts as the longest one can be written */
} sizer_t;

static bool size_add(sizer_t *z, size_t n)
{
    z->total += n;
    return z->total <= z->limit;
}

/* jansson nests parsed values at most 2048 deep: the recursion is bounded. */
static bool size_of(sizer_t *z, const json_t *v)
{
    char num[40];
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        if (!size_add(z, 1 + (json_object_size(v) == 0)))
            return false;
        for (void *it = json_object_iter((json_t *)v); it != NULL;
             it = json_object_iter_next((json_t *)v, it))
            if (!size_add(z, bw_httpreq_string_size(json_object_iter_key(it), json_object_iter_key_len(it)) +
                                 2) ||
                !size_of(z, json_object_iter_value(it)))
                return false;
        return true;
    }
    case JSON_ARRAY:
        if (!size_add(z, 1 + (json_array_size(v) == 0)))
            return false;
        for (size_t i = 0; i < json_array_size(v); i++)
            if (!size_add(z, 1) || !size_of(z, json_array_get(v, i)))
                return false;
        return true;
    case JSON_STRING:
        return size_add(z, bw_httpreq_string_size(json_string_value(v), json_string_length(v)));
    case JSON_INTEGER:
        return size_add(z, (size_t)snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v)));
    case JSON_REAL:
        return size_add(z, z->exact_reals ? bw_jsonw_format_double(json_real_value(v), num) : 24);
    case JSON_FALSE:
        return size_add(z, 5);
    default:
        return size_add(z, 4);
    }
}

size_t bw_httpreq_json_size(const json_t *v, size_t limit)
{
    /* Formatting a real exactly costs a few conversions: only when the quick bound does not fit. */
    sizer_t z = {0, limit, false};
    if (size_of(&z, v))
        return z.total;
    z = (sizer_t){0, limit, true};
    return size_of(&z, v) ? z.total : SIZE_MAX;
}

void bw_httpreq_start(bw_httpreq_state_t *st, const bw_fetch_req_t *r, bw_fetch_done_cb cb)
{
    char msg[256];
    st->fetch = bw_fetch_start(st->job->loop, st->job->cfg, r, cb, st, msg, sizeof msg);
    if (st->fetch == NULL)
        bw_job_fail(st->job, BW_ST_ERROR, "HTTP_REQUEST_FAILED", "%s", msg);
}

bool bw_httpreq_failed(bw_job_t *job, const bw_fetch_resp_t *resp)
{
    job->attempts = resp->attempts;
    if (resp->error_code == NULL)
        return false;
    bool timeout = strcmp(resp->error_code, "TIMEOUT") == 0;
    bw_job_fail(job, timeout ? BW_ST_TIMEOUT : BW_ST_ERROR, resp->error_code, "%s (after %d attempt%s)",
                resp->message, resp->attempts, resp->attempts == 1 ? "" : "s");
    return true;
}

void bw_httpreq_cancel(bw_job_t *job)
{
    bw_httpreq_state_t *st = job->hdata;
    if (st != NULL && st->fetch != NULL) {
        bw_fetch_cancel(st->fetch);
        st->fetch = NULL;
    }
}

void bw_httpreq_dispose(bw_job_t *job)
{
    bw_httpreq_cancel(job);
    free(job->hdata);
    job->hdata = NULL;
}
