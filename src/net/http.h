/*
 * The health, readiness, state and metrics HTTP server on HEALTH_BIND: a small HTTP/1.1 server of its
 * own on a dedicated thread ("bw-http", epoll). It reads only atomics (obs/metrics.h), so it answers
 * while the loop is saturated with job work, and it bounds what clients can hold: every request's line
 * and headers must arrive within header_timeout_ms, and when max_connections (or an address's cap) is
 * reached the oldest connection still sending its request is closed to admit the new one, so a probe
 * always gets in.
 *
 * It can also serve one application's routes (the approvals API): requests under opts.app_prefix, of
 * any method, with a Content-Length body of at most app_max_body bytes (which must arrive within
 * header_timeout_ms of the end of the head), are handed to opts.app on the server thread, and answered
 * with bw_http_reply then or later from any thread (within app_timeout_ms, else the server answers 503).
 * Requests pipelined behind one wait for its answer.
 */
#ifndef BW_NET_HTTP_H
#define BW_NET_HTTP_H

#include <stddef.h>

#define BW_HTTP_MAX_HEAD_BYTES (32 * 1024) /* request line + headers; beyond: 431 */
#define BW_HTTP_MAX_PER_ADDRESS 16         /* connections from one client address */

typedef struct bw_http bw_http_t;

/* An application's request (the approvals API): everything is borrowed for the duration of the app
   callback; copy what outlives it. */
typedef struct bw_http_request {
    const char *method; /* "GET", "HEAD", "POST", ... (NUL-terminated; at most 15 letters) */
    const char *path;   /* the target up to '?', still percent-encoded (not NUL-terminated; no byte below
                           0x20 nor 0x7f: such targets are answered 400 without calling app) */
    size_t path_len;
    const char *query; /* after '?' (not NUL-terminated), or NULL */
    size_t query_len;
    const char *authorization; /* the Authorization header's value, trimmed (not NUL-terminated), or NULL;
                                  a request with two is answered 400 without calling app */
    size_t authorization_len;
    const char *content_type; /* or NULL (not NUL-terminated) */
    size_t content_type_len;
    const char *body; /* the request body: Content-Length bytes (never NULL; Transfer-Encoding is refused
                         with 411 without calling app, Expect: 100-continue is honoured) */
    size_t body_len;
} bw_http_request_t;

/* The handle of one request's answer. It is answered exactly once, with bw_http_reply, from any
   thread, then or later (the loop thread answers approvals). Answering after the client went away
   (a client that closes or half-closes its side while waiting is taken as gone), after the server
   answered 503 itself (app_timeout_ms) or after bw_http_destroy only frees the handle. */
typedef struct bw_http_reply bw_http_reply_t;

/* Answers: status (100-599, else 500), content type (NULL: no Content-Type header), extra header lines
   ("Name: value\r\n"..., written as given, or NULL) and the body (copied; not sent to a HEAD). The
   server adds only Content-Length, Connection and opts.app_headers. */
void bw_http_reply(bw_http_reply_t *r, unsigned status, const char *content_type, const char *extra_headers,
                   const char *body, size_t len);

/* Server thread. Requests whose path is app_prefix or starts with app_prefix + "/" go here instead of the
   fixed routes, for any method. */
typedef void (*bw_http_app_fn)(void *ud, const bw_http_request_t *rq, bw_http_reply_t *reply);

typedef struct bw_http_opts {
    const char *bind;      /* "host:port" (port 0 = any free port); host may be [v6] */
    const char *worker_id; /* copied */
    int max_connections;   /* HEALTH_MAX_CONNECTIONS */
    int header_timeout_ms; /* HEALTH_HEADER_TIMEOUT_MS (also the bound on an application request's body) */
    /* optional application routes (app NULL: none) */
    const char *app_prefix; /* e.g. "/approvals" (copied) */
    bw_http_app_fn app;     /* called on the server thread */
    void *app_ud;
    size_t app_max_body;     /* larger bodies are answered 413 (then the connection closes) without calling
                                app and without reading them */
    int app_timeout_ms;      /* no answer within this: 503 (0: 30 s) */
    const char *app_headers; /* header lines ("Name: value\r\n"...) added to every answer on app routes:
                                the app's and the server's own (its 400, 411, 413 and 503, JSON
                                {"error","message"}), e.g. security headers (copied; NULL: none, and the
                                server's own then carry Cache-Control: no-store) */
} bw_http_opts_t;

/* Binds and starts serving. NULL with a message in err when the address cannot be used. Caller frees
   with bw_http_destroy. */
bw_http_t *bw_http_create(const bw_http_opts_t *opts, char *err, size_t errlen);
/* The port actually bound. */
int bw_http_port(const bw_http_t *h);
/* Stops the server thread (no request is being answered once it returns) and frees; NULL is a no-op.
   Handles not answered yet stay valid: answering them only frees them. */
void bw_http_destroy(bw_http_t *h);

#endif
