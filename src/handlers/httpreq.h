/* The payload fields the http and graphql job types share (see httpreq.c). */
#ifndef BW_HANDLERS_HTTPREQ_H
#define BW_HANDLERS_HTTPREQ_H

#include <curl/curl.h>
#include <jansson.h>
#include <stdbool.h>

#include "core/job.h"
#include "net/fetch.h"

/* Whether the headers object has one with this name (any case). */
bool bw_httpreq_has_header(const json_t *headers, const char *name);
/* The header lines: the payload's (validated: no header injection), Content-Type: application/json
   when json_body and none is given, traceparent from the assignment's trace id and X-Tenant-Id. */
bool bw_httpreq_headers(bw_job_t *job, const json_t *headers, bool json_body, struct curl_slist **out);
/* payload.url (http or https only: else EGRESS_DENIED) with payload.query appended; malloc'd. */
char *bw_httpreq_url(bw_job_t *job, const json_t *url, const json_t *query);
/* payload.retry, else the assignment's options.retry, else 3 attempts; sets r->idempotent when
   retry.non_idempotent is true. */
bool bw_httpreq_retry(bw_job_t *job, const json_t *retry, bw_fetch_req_t *r);
/* payload.<name> as a boolean, def when absent. */
bool bw_httpreq_bool(bw_job_t *job, const char *name, bool def, bool *out);

/* Bytes of a result message the job's output may take (0: no limit): the transport's largest message
   less what the rest of the result needs; see httpreq.c. */
size_t bw_httpreq_result_room(const bw_job_t *job);

/* The size of v as the result writes it (util/jsonw.h: compact), or SIZE_MAX as soon as it passes limit. */
size_t bw_httpreq_json_size(const json_t *v, size_t limit);
/* The size of s[0..n) (valid UTF-8) as a JSON string in the result, quotes included. */
size_t bw_httpreq_string_size(const char *s, size_t n);

/* What both job types keep while their request runs (job->hdata). */
typedef struct bw_httpreq_state {
    bw_job_t *job;
    bw_fetch_t *fetch;
    bool fail_on_status; /* http only */
    bool truncate;       /* http only: a body that does not fit is cut rather than an error */
} bw_httpreq_state_t;

/* Starts the request of st->job (r's headers are stolen); fails the job when it cannot start. */
void bw_httpreq_start(bw_httpreq_state_t *st, const bw_fetch_req_t *r, bw_fetch_done_cb cb);
/* Records the attempts; when the request failed, fails the job with its code (TIMEOUT as a timeout)
   and returns true. */
bool bw_httpreq_failed(bw_job_t *job, const bw_fetch_resp_t *resp);
/* The handlers' cancel and dispose. */
void bw_httpreq_cancel(bw_job_t *job);
void bw_httpreq_dispose(bw_job_t *job);

#endif
