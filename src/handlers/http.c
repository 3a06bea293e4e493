/*
 * http {method=GET, url, headers, query, body, timeout_ms, max_response_bytes, follow_redirects, retry,
 * fail_on_status, truncate}: one HTTP request (with its retries, net/fetch.h) on the loop, output
 * {status, headers, body | body_base64, truncated?, attempts, elapsed_ms}. The body is JSON when it
 * parses as JSON, a string when it is UTF-8 without NUL bytes, else base64. 4xx/5xx are a success with their
 * status, unless fail_on_status (HTTP_4XX, HTTP_5XX).
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/handler.h"
#include "handlers/httpreq.h"
#include "net/fetch.h"
#include "util/base64.h"
#include "util/xalloc.h"

static const char *const methods[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", NULL};

/* ---- the response ---- */

static void on_fetched(void *ud, bw_fetch_resp_t *resp)
{
    bw_httpreq_state_t *h = ud;
    bw_job_t *job = h->job;
    if (bw_httpreq_failed(job, resp))
        return;
    if (h->fail_on_status && resp->status >= 400) {
        bw_job_fail(job, BW_ST_ERROR, resp->status >= 500 ? "HTTP_5XX" : "HTTP_4XX",
                    "the server answered HTTP %ld (after %d attempt%s)", resp->status, resp->attempts,
                    resp->attempts == 1 ? "" : "s");
        return;
    }
    json_t *out = json_object();
    json_object_set_new(out, "status", json_integer(resp->status));
    json_object_set(out, "headers", resp->headers);
    json_t *body = resp->body.len > 0
                       ? json_loadb(resp->body.p, resp->body.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL)
                       : NULL;
    if (body == NULL && memchr(resp->body.p, '\0', resp->body.len) == NULL)
        body = json_stringn(resp->body.p, resp->body.len); /* NULL unless UTF-8 */
    if (body != NULL) {
        json_object_set_new(out, "body", body);
    } else {
        char *b64 = bw_base64_encode(resp->body.p, resp->body.len);
        json_object_set_new(out, "body_base64", json_string(b64));
        free(b64);
    }
    if (resp->truncated)
        json_object_set_new(out, "truncated", json_true());
    json_object_set_new(out, "attempts", json_integer(resp->attempts));
    json_object_set_new(out, "elapsed_ms", json_integer(resp->elapsed_ms));
    bw_job_succeed(job, out);
}

/* ---- the handler ---- */

static void http_start(bw_job_t *job)
{
    const json_t *p = job->a.payload;
    if (!json_is_object(p)) {
        bw_job_fail(job, BW_ST_ERROR, "INVALID_PAYLOAD", "http needs a payload object with a url");
        return;
    }
    bw_fetch_req_t r = {.method = "GET", .follow_redirects = true, .truncate = true};
    json_t *m = json_object_get(p, "method");
    if (m != NULL) {
        r.method = NULL;
        for (int i = 0; json_is_string(m) && methods[i] != NULL; i++)
            if (strcasecmp(json_string_value(m), methods[i]) == 0)
                r.method = methods[i];
        if (r.method == NULL) {
            bw_job_fail(job, BW_ST_ERROR, "INVALID_METHOD",
                        "payload.method must be one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS");
            return;
        }
    }
    char *url = bw_httpreq_url(job, json_object_get(p, "url"), json_object_get(p, "query"));
    if (url == NULL)
        return;
    bw_httpreq_state_t *h = bw_calloc(1, sizeof *h);
    h->job = job;
    job->hdata = h;
    json_t *tmo = json_object_get(p, "timeout_ms"), *max = json_object_get(p, "max_response_bytes"),
           *body = json_object_get(p, "body");
    char *body_text = NULL;
    struct curl_slist *headers = NULL;
    if ((tmo && (!json_is_integer(tmo) || json_integer_value(tmo) <= 0)) ||
        (max && (!json_is_integer(max) || json_integer_value(max) <= 0))) {
        bw_job_fail(job, BW_ST_ERROR, "INVALID_PAYLOAD",
                    "payload.timeout_ms and payload.max_response_bytes must be positive integers");
        goto out;
    }
    r.url = url;
    r.attempt_timeout_ms = tmo ? json_integer_value(tmo) : 0;
    r.deadline_ms = job->deadline_at_ms;
    r.max_response_bytes = max ? json_integer_value(max) : job->cfg->http_max_response_bytes;
    if (job->output_limit > 0 && r.max_response_bytes > (int64_t)(job->output_limit / 4 * 3))
        r.max_response_bytes = (int64_t)(job->output_limit / 4 * 3); /* base64 of it must fit the result */
    if (!bw_httpreq_bool(job, "follow_redirects", true, &r.follow_redirects) ||
        !bw_httpreq_bool(job, "fail_on_status", false, &h->fail_on_status) ||
        !bw_httpreq_bool(job, "truncate", true, &r.truncate))
        goto out;
    r.idempotent = strcmp(r.method, "POST") != 0 && strcmp(r.method, "PATCH") != 0;
    const json_t *hdrs = json_object_get(p, "headers");
    if (bw_httpreq_has_header(hdrs, "idempotency-key"))
        r.idempotent = true;
    if (!bw_httpreq_retry(job, json_object_get(p, "retry"), &r))
        goto out;
    if (body != NULL && !json_is_null(body)) {
        body_text = json_is_string(body) ? bw_strdup(json_string_value(body))
                                         : json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY);
        r.body = body_text;
        r.body_len = json_is_string(body) ? json_string_length(body) : strlen(body_text);
    }
    if (!bw_httpreq_headers(job, hdrs, body != NULL && !json_is_null(body) && !json_is_string(body),
                            &headers))
        goto out;
    r.headers = headers;
    bw_httpreq_start(h, &r, on_fetched);
out:
    free(body_text);
    free(url);
}

static void http_shutdown(void)
{
    bw_fetch_shutdown();
}

const bw_handler_t bw_handler_http = {
    .name = "http",
    .start = http_start,
    .cancel = bw_httpreq_cancel,
    .dispose = bw_httpreq_dispose,
    .shutdown = http_shutdown,
};
