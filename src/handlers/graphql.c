/*
 * graphql {url, query, variables, operationName, headers, timeout_ms, max_response_bytes, retry}: a POST
 * of {query, variables, operationName} as JSON, with the http job type's retries and egress policy
 * (net/fetch.h); output the response's {data, errors, extensions} (those present). Errors with no data
 * fail the job with GRAPHQL_ERROR and the first message; partial data is a success with its errors.
 * Queries are retried like idempotent requests, mutations only when they never reached the server
 * (or with an Idempotency-Key header, or retry.non_idempotent).
 */
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/handler.h"
#include "handlers/httpreq.h"
#include "net/fetch.h"
#include "util/xalloc.h"

/* Whether the document's first operation is a mutation (comments and whitespace skipped). */
static bool is_mutation(const char *q)
{
    for (;;) {
        while (isspace((unsigned char)*q) || *q == ',' || *q == '\xef' || *q == '\xbb' || *q == '\xbf')
            q++;
        if (*q != '#')
            break;
        while (*q != '\0' && *q != '\n')
            q++;
    }
    return strncmp(q, "mutation", 8) == 0 && !isalnum((unsigned char)q[8]) && q[8] != '_';
}

/* An error message is quoted in the job's error_message: at most MESSAGE_MAX bytes of it, cut at a
   character boundary (the string is UTF-8: jansson checked it), and never past a NUL. */
#define MESSAGE_MAX 512

static size_t message_cut(const char *msg, size_t len)
{
    size_t n = strnlen(msg, len < MESSAGE_MAX ? len : MESSAGE_MAX);
    if (n < len && n == MESSAGE_MAX)
        while (n > 0 && ((unsigned char)msg[n] & 0xc0) == 0x80) /* msg[n] continues a character */
            n--;
    return n;
}

static void on_fetched(void *ud, bw_fetch_resp_t *resp)
{
    bw_httpreq_state_t *g = ud;
    bw_job_t *job = g->job;
    if (bw_httpreq_failed(job, resp))
        return;
    json_t *r = resp->body.len > 0 ? json_loadb(resp->body.p, resp->body.len, 0, NULL) : NULL;
    json_t *data = json_object_get(r, "data"), *errors = json_object_get(r, "errors");
    if (r == NULL || (data == NULL && errors == NULL)) {
        if (resp->status >= 400)
            bw_job_fail(job, BW_ST_ERROR, resp->status >= 500 ? "HTTP_5XX" : "HTTP_4XX",
                        "the server answered HTTP %ld without a GraphQL result", resp->status);
        else
            bw_job_fail(job, BW_ST_ERROR, "GRAPHQL_ERROR",
                        "the server answered HTTP %ld with something that is not a GraphQL result%s",
                        resp->status, resp->truncated ? " (cut at max_response_bytes)" : "");
        json_decref(r);
        return;
    }
    if (data == NULL || json_is_null(data)) {
        json_t *first = json_array_get(errors, 0);
        const char *msg = json_string_value(json_object_get(first, "message"));
        size_t len =
            msg != NULL ? message_cut(msg, json_string_length(json_object_get(first, "message"))) : 0;
        bw_job_fail(job, BW_ST_ERROR, "GRAPHQL_ERROR", "%.*s%s%s", (int)len,
                    msg != NULL ? msg : "the result has errors and no data",
                    msg != NULL && msg[len] != '\0' ? "..." : "",
                    json_array_size(errors) > 1 ? " (and more errors)" : "");
        json_decref(r);
        return;
    }
    json_t *out = json_object();
    json_object_set(out, "data", data);
    if (errors != NULL)
        json_object_set(out, "errors", errors);
    if (json_object_get(r, "extensions") != NULL)
        json_object_set(out, "extensions", json_object_get(r, "extensions"));
    json_decref(r);
    /* re-written, the result can be longer than the body was (numbers, escapes) */
    size_t room = bw_httpreq_result_room(job);
    if (room > 0 && bw_httpreq_json_size(out, room) == SIZE_MAX) {
        json_decref(out);
        bw_job_fail(job, BW_ST_ERROR, "RESPONSE_TOO_LARGE",
                    "the GraphQL result, encoded for the result message, is larger than the %zu bytes it has "
                    "for it",
                    room);
        return;
    }
    bw_job_succeed(job, out);
}

static void graphql_start(bw_job_t *job)
{
    const json_t *p = job->a.payload;
    json_t *query = json_object_get(p, "query"), *vars = json_object_get(p, "variables"),
           *op = json_object_get(p, "operationName"), *tmo = json_object_get(p, "timeout_ms"),
           *max = json_object_get(p, "max_response_bytes");
    if (!json_is_object(p) || !json_is_string(query) || json_string_length(query) == 0) {
        bw_job_fail(job, BW_ST_ERROR, "MISSING_QUERY", "graphql needs payload.query: the GraphQL document");
        return;
    }
    if ((vars != NULL && !json_is_object(vars) && !json_is_null(vars)) ||
        (op != NULL && !json_is_string(op) && !json_is_null(op)) ||
        (tmo && (!json_is_integer(tmo) || json_integer_value(tmo) <= 0)) ||
        (max && (!json_is_integer(max) || json_integer_value(max) <= 0))) {
        bw_job_fail(job, BW_ST_ERROR, "INVALID_PAYLOAD",
                    "graphql: variables is an object, operationName a string, timeout_ms and "
                    "max_response_bytes positive integers");
        return;
    }
    char *url = bw_httpreq_url(job, json_object_get(p, "url"), NULL);
    if (url == NULL)
        return;
    bw_httpreq_state_t *g = bw_calloc(1, sizeof *g);
    g->job = job;
    job->hdata = g;
    bw_fetch_req_t r = {.method = "POST", .url = url, .follow_redirects = true, .truncate = false};
    r.attempt_timeout_ms = tmo ? json_integer_value(tmo) : 0;
    r.deadline_ms = job->deadline_at_ms;
    r.max_response_bytes = max ? json_integer_value(max) : job->cfg->http_max_response_bytes;
    size_t room = bw_httpreq_result_room(job); /* a longer body cannot fit, even re-written */
    if (room > 0 && r.max_response_bytes > (int64_t)room)
        r.max_response_bytes = (int64_t)room;
    const json_t *hdrs = json_object_get(p, "headers");
    r.idempotent = !is_mutation(json_string_value(query)) || bw_httpreq_has_header(hdrs, "idempotency-key");
    struct curl_slist *headers = NULL;
    char *body = NULL;
    if (!bw_httpreq_retry(job, json_object_get(p, "retry"), &r) ||
        !bw_httpreq_headers(job, hdrs, true, &headers))
        goto out;
    headers = curl_slist_append(headers, "Accept: application/graphql-response+json, application/json");
    json_t *req = json_pack("{s:O}", "query", query);
    if (vars != NULL && !json_is_null(vars))
        json_object_set(req, "variables", vars);
    if (op != NULL && !json_is_null(op))
        json_object_set(req, "operationName", op);
    body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    r.body = body;
    r.body_len = strlen(body);
    r.headers = headers;
    bw_httpreq_start(g, &r, on_fetched);
out:
    free(body);
    free(url);
}

const bw_handler_t bw_handler_graphql = {
    .name = "graphql",
    .start = graphql_start,
    .cancel = bw_httpreq_cancel,
    .dispose = bw_httpreq_dispose,
    .concurrency = 256,
    .waits = true,
};
