/*
 * One HTTP request of a job, with its retries, on the process's curl multi handle (net/curluv.h) and
 * under the egress policy (net/egress.h): what the http and graphql job types share. Loop thread only.
 *
 * Bounds: the response headers of one hop (interim 1xx responses included) at most
 * cfg->http_max_response_header_bytes in all, counted as they arrive (status line and line ends
 * included), else RESPONSE_HEADERS_TOO_LARGE, never retried; libcurl's own header limits end the same
 * way. The body at most max_response_bytes (and what fits in result_room). Collecting headers costs
 * time linear in their bytes, repeated names included.
 *
 * Retries: on transport errors, 5xx and 429, up to max_attempts in all, after an exponential backoff
 * with jitter or the server's Retry-After (seconds or an HTTP date), never past the deadline. A request
 * that is not idempotent is retried only when it never reached the server.
 */
#ifndef BW_NET_FETCH_H
#define BW_NET_FETCH_H

#include <curl/curl.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "core/config.h"
#include "util/buf.h"

typedef struct bw_fetch bw_fetch_t;

typedef struct bw_fetch_req {
    const char *method;         /* upper case */
    const char *url;            /* absolute http(s) URL, query included */
    struct curl_slist *headers; /* "Name: value" lines; stolen */
    const char *body;           /* NULL: none; copied */
    size_t body_len;
    int64_t attempt_timeout_ms; /* one attempt at most (0: until the deadline) */
    int64_t deadline_ms;        /* loop time (uv_now) by which everything must be over */
    int64_t max_response_bytes;
    /* Room in the result message for the output's headers and body (as encoded JSON), 0: no limit. The
       body is then also cut at this minus the headers' encoded size: every byte costs at least one in
       the result, so more is never worth holding. */
    size_t result_room;
    bool truncate; /* a longer body is cut (truncated) rather than an error */
    bool follow_redirects;
    int max_attempts; /* >= 1 */
    int64_t backoff_ms, max_backoff_ms;
    bool idempotent; /* may be retried after it reached the server */
} bw_fetch_req_t;

typedef struct bw_fetch_resp {
    const char *error_code; /* NULL: a response came (any status); else EGRESS_DENIED, HTTP_REQUEST_FAILED,
                               TIMEOUT, RESPONSE_TOO_LARGE, RESPONSE_HEADERS_TOO_LARGE */
    char message[512];
    long status;
    json_t *headers; /* lower-case name -> string (repeated ones joined with ", "; set-cookie: array) */
    size_t headers_json_bytes; /* an upper bound of `headers` encoded as compact JSON */
    bw_buf_t body;
    bool truncated;
    int attempts;
    int64_t elapsed_ms;
} bw_fetch_resp_t;

/* Called once, unless the fetch is cancelled first; resp is borrowed for the call. */
typedef void (*bw_fetch_done_cb)(void *ud, bw_fetch_resp_t *resp);

/* Starts a request. Returns NULL with resp-style error in *code/msg when it cannot start (bad URL). */
bw_fetch_t *bw_fetch_start(uv_loop_t *loop, const bw_config_t *cfg, const bw_fetch_req_t *req,
                           bw_fetch_done_cb cb, void *ud, char *msg, size_t msglen);
/* Stops the request (transfer removed, retry timer stopped); cb will not run. Frees the fetch. */
void bw_fetch_cancel(bw_fetch_t *f);
/* Releases what the process keeps (the multi handle); at shutdown, after every fetch ended. */
void bw_fetch_shutdown(void);

/* Retry-After's value as a delay in ms from now (wall time now_s for dates); -1 when unusable. */
int64_t bw_fetch_retry_after_ms(const char *value, int64_t now_s);

#endif
