/*
 * The HTTP approvals API and page on the health port (README, "human_approval"), on the health server's
 * thread: it checks the bearer token (constant time), serves the page, parses the route and hands
 * requests for data to the registry (core/approvals.h), which answers them on the loop.
 *
 *   GET  /approvals/ui                  the page (no token needed: it holds no data; 404 when no token)
 *   GET  /approvals/ui.js, ui.css       its script and style (the page's one <script> and one <style>
 *                                       block, served apart so that the CSP needs no inline code)
 *   GET  /approvals[?tenant_id=T]       pending approvals            (Authorization: Bearer <token>)
 *   GET  /approvals/{id}[?tenant_id=T]  one                          (id percent-decoded)
 *   POST /approvals/{id}[?tenant_id=T]  {decision, approver, comment?, tenant_id?}
 *
 * No APPROVAL_TOKEN: every approvals route answers 404. Missing or wrong token: 401 with
 * WWW-Authenticate: Bearer. Other methods: 405 with Allow. Bodies over BW_APPROVALS_MAX_BODY: 413 (the
 * server). A bad percent-escape (or %00) in the id or tenant_id: 400 {"error":"invalid_request"}. No
 * registry attached: 503 {"error":"unavailable"}. GET routes also answer HEAD.
 * Every answer carries BW_APPROVALS_HEADERS (Cache-Control: no-store, X-Content-Type-Options: nosniff,
 * X-Frame-Options: DENY, Referrer-Policy: no-referrer and a Content-Security-Policy that allows only the
 * page's own script and style): the daemon passes them as bw_http_opts.app_headers, so the server adds
 * them to every answer on the prefix, the registry's included (which therefore passes no extra headers).
 */
#ifndef BW_NET_APPROVALS_HTTP_H
#define BW_NET_APPROVALS_HTTP_H

#include "core/approvals.h"
#include "net/http.h"

#define BW_APPROVALS_PREFIX "/approvals"
#define BW_APPROVALS_MAX_BODY (64 * 1024)
#define BW_APPROVALS_CSP                                                                                     \
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "    \
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
/* For bw_http_opts.app_headers. */
#define BW_APPROVALS_HEADERS                                                                                 \
    "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\n"                \
    "Referrer-Policy: no-referrer\r\nContent-Security-Policy: " BW_APPROVALS_CSP "\r\n"

typedef struct bw_approvals_front bw_approvals_front_t;

/* token: APPROVAL_TOKEN (copied), NULL (or "") when the API is off. Splits the page once. Caller frees
   with bw_approvals_front_destroy. */
bw_approvals_front_t *bw_approvals_front_create(const char *token);
/* The same with another page than the embedded one (html[0..len), copied; the tests' split pages). */
bw_approvals_front_t *bw_approvals_front_create_page(const char *token, const char *html, size_t len);
/* Any thread. Points the API at a registry (NULL: none; requests for data are then answered 503). Once it
   returns, no call into the previous registry is in progress or will start. */
void bw_approvals_front_attach(bw_approvals_front_t *f, bw_approvals_t *r);
/* The bw_http_app_fn for bw_http_opts.app (ud: the front). */
void bw_approvals_front_route(void *front, const bw_http_request_t *rq, bw_http_reply_t *reply);
/* After bw_http_destroy. NULL is a no-op. */
void bw_approvals_front_destroy(bw_approvals_front_t *f);

/* The page (src/net/approvals_ui.html, embedded at build time). */
extern const char bw_approvals_ui_html[];
extern const size_t bw_approvals_ui_html_len;

#endif
