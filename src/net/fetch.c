/*
 * One request with retries (see fetch.h). The easy handle is made once and added to the multi handle
 * again for each attempt; between attempts a loop timer waits out the backoff. The egress policy sits in
 * CURLOPT_OPENSOCKETFUNCTION: curl asks us for every socket it is about to connect, after DNS and on
 * every redirect hop, with the address itself, and a refused one never gets a socket. Proxies from the
 * environment are ignored (the checked address must be the one connected), and only http and https are
 * spoken, also on redirects.
 */
#include "net/fetch.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>

#include "net/curluv.h"
#include "net/egress.h"
#include "util/xalloc.h"

struct bw_fetch {
    uv_loop_t *loop;
    CURL *easy;
    bw_fetch_req_t req; /* url and body point at the copies below */
    char *url, *body;
    struct curl_slist *headers;
    bw_fetch_resp_t resp;
    bw_fetch_done_cb cb;
    void *ud;
    uv_timer_t retry; /* between attempts */
    bool in_transfer, too_large;
    const char *egress_why; /* why the policy refused the last socket of this attempt */
    char egress_addr[INET6_ADDRSTRLEN + 8];
    uint64_t started_ms;
    char errbuf[CURL_ERROR_SIZE];
};

static bw_curl_t *multi;
static bw_egress_t *egress;

/* Easy handles of finished requests, reset and kept for the next ones: a handle carries buffers of
   16-64 KiB, whose malloc and free per request (and the heap consolidation such frees start) cost
   more than the request itself at a few thousand a second. */
#define SPARE_HANDLES 64
static CURL *spare[SPARE_HANDLES];
static int nspare;

static CURL *handle_get(void)
{
    return nspare > 0 ? spare[--nspare] : curl_easy_init();
}

static void handle_put(CURL *e)
{
    if (nspare < SPARE_HANDLES && multi != NULL) {
        curl_easy_reset(e);
        spare[nspare++] = e;
    } else {
        curl_easy_cleanup(e);
    }
}

/* ---- per attempt: headers, body, sockets ---- */

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    bw_fetch_t *f = ud;
    size_t len = size * n, end = len;
    if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) { /* a new response: an interim or redirect one before */
        json_object_clear(f->resp.headers);
        return len;
    }
    char *colon = memchr(p, ':', len);
    if (colon == NULL || colon == p)
        return len;
    while (end > 0 && (p[end - 1] == '\r' || p[end - 1] == '\n' || p[end - 1] == ' ' || p[end - 1] == '\t'))
        end--;
    const char *v = colon + 1;
    while (v < p + end && (*v == ' ' || *v == '\t'))
        v++;
    char name[256];
    size_t nl = (size_t)(colon - p) < sizeof name - 1 ? (size_t)(colon - p) : sizeof name - 1;
    for (size_t i = 0; i < nl; i++)
        name[i] = (char)tolower((unsigned char)p[i]);
    name[nl] = '\0';
    json_t *value = json_stringn(v, (size_t)(p + end - v));
    if (value == NULL) /* not UTF-8: kept as Latin-1 would be guesswork; dropped */
        return len;
    json_t *old = json_object_get(f->resp.headers, name);
    if (strcmp(name, "set-cookie") == 0) {
        if (old == NULL)
            json_object_set_new(f->resp.headers, name, old = json_array());
        json_array_append_new(old, value);
    } else if (old != NULL) {
        char *joined = bw_asprintf("%s, %s", json_string_value(old), json_string_value(value));
        json_object_set_new(f->resp.headers, name, json_string(joined));
        free(joined);
        json_decref(value);
    } else {
        json_object_set_new(f->resp.headers, name, value);
    }
    return len;
}

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    bw_fetch_t *f = ud;
    size_t len = size * n, room = (size_t)f->req.max_response_bytes - f->resp.body.len;
    if (len <= room) {
        bw_buf_append(&f->resp.body, p, len);
        return len;
    }
    bw_buf_append(&f->resp.body, p, room);
    f->too_large = true;
    return 0; /* ends the transfer: the rest is not wanted */
}

/* The host of the URL being requested now (the current hop), lower-cased into out. */
static void current_host(bw_fetch_t *f, char *out, size_t len)
{
    char *url = NULL, *host = NULL;
    out[0] = '\0';
    curl_easy_getinfo(f->easy, CURLINFO_EFFECTIVE_URL, &url);
    CURLU *u = curl_url();
    if (url != NULL && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK) {
        snprintf(out, len, "%s", host);
        curl_free(host);
    }
    curl_url_cleanup(u);
}

static curl_socket_t open_socket(void *ud, curlsocktype purpose, struct curl_sockaddr *a)
{
    bw_fetch_t *f = ud;
    char host[256];
    current_host(f, host, sizeof host);
    const char *why = bw_egress_check(egress, &a->addr, host);
    if (why != NULL) {
        char ip[INET6_ADDRSTRLEN] = "?";
        if (a->family == AF_INET)
            inet_ntop(AF_INET, &((struct sockaddr_in *)&a->addr)->sin_addr, ip, sizeof ip);
        else if (a->family == AF_INET6)
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&a->addr)->sin6_addr, ip, sizeof ip);
        f->egress_why = why;
        snprintf(f->egress_addr, sizeof f->egress_addr, "%s", ip);
        return CURL_SOCKET_BAD;
    }
    return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

/* ---- attempts ---- */

static void attempt(bw_fetch_t *f);

static void finish(bw_fetch_t *f)
{
    f->resp.elapsed_ms = (int64_t)(uv_now(f->loop) - f->started_ms);
    bw_fetch_done_cb cb = f->cb;
    f->cb = NULL;
    cb(f->ud, &f->resp);
}

static void fail(bw_fetch_t *f, const char *code, const char *fmt, const char *arg)
{
    f->resp.error_code = code;
    snprintf(f->resp.message, sizeof f->resp.message, fmt, arg);
    finish(f);
}

static void on_retry_timer(uv_timer_t *t)
{
    attempt(t->data);
}

/* The wait before attempt number `next` (2, 3, ...): backoff_ms doubled each time up to max_backoff_ms,
   half of it fixed and half random ("equal jitter"). */
static int64_t backoff(const bw_fetch_t *f, int next)
{
    int64_t d = f->req.backoff_ms;
    for (int i = 2; i < next && d < f->req.max_backoff_ms; i++)
        d *= 2;
    if (d > f->req.max_backoff_ms)
        d = f->req.max_backoff_ms;
    return d / 2 + (d > 1 ? (int64_t)(random() % (d / 2 + 1)) : 0);
}

/* Schedules the next attempt when one is left and it can start before the deadline. */
static bool retry_later(bw_fetch_t *f, int64_t delay_ms)
{
    if (f->resp.attempts >= f->req.max_attempts)
        return false;
    if (delay_ms < 0)
        delay_ms = backoff(f, f->resp.attempts + 1);
    if ((int64_t)uv_now(f->loop) + delay_ms >= f->req.deadline_ms)
        return false;
    uv_timer_start(&f->retry, on_retry_timer, (uint64_t)delay_ms, 0);
    return true;
}

static void on_done(CURL *easy, CURLcode rc, void *ud)
{
    bw_fetch_t *f = ud;
    f->in_transfer = false;
    if (rc == CURLE_OK || (rc == CURLE_WRITE_ERROR && f->too_large)) {
        curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &f->resp.status);
        if (f->too_large && !f->req.truncate) {
            char limit[32];
            snprintf(limit, sizeof limit, "%lld", (long long)f->req.max_response_bytes);
            fail(f, "RESPONSE_TOO_LARGE", "the response body is larger than max_response_bytes (%s)", limit);
            return;
        }
        f->resp.truncated = f->too_large;
        if ((f->resp.status >= 500 || f->resp.status == 429) && f->req.idempotent) {
            json_t *ra = json_object_get(f->resp.headers, "retry-after");
            int64_t delay =
                json_is_string(ra) ? bw_fetch_retry_after_ms(json_string_value(ra), (int64_t)time(NULL)) : -1;
            if (retry_later(f, delay))
                return;
        }
        finish(f);
        return;
    }
    if (f->egress_why != NULL) {
        snprintf(f->resp.message, sizeof f->resp.message, "refused by the egress policy: %s is %s",
                 f->egress_addr, f->egress_why);
        f->resp.error_code = "EGRESS_DENIED";
        finish(f);
        return;
    }
    if (rc == CURLE_UNSUPPORTED_PROTOCOL) {
        fail(f, "EGRESS_DENIED", "refused by the egress policy: only http and https URLs (%s)", f->errbuf);
        return;
    }
    curl_off_t sent = 0;
    curl_easy_getinfo(easy, CURLINFO_REQUEST_SIZE, &sent);
    bool retryable = rc != CURLE_TOO_MANY_REDIRECTS && rc != CURLE_URL_MALFORMAT &&
                     rc != CURLE_PEER_FAILED_VERIFICATION && rc != CURLE_SSL_CACERT_BADFILE;
    if (retryable && (f->req.idempotent || sent == 0) && retry_later(f, -1))
        return;
    if (rc == CURLE_OPERATION_TIMEDOUT)
        fail(f, "TIMEOUT", "the request timed out: %s", f->errbuf[0] ? f->errbuf : curl_easy_strerror(rc));
    else
        fail(f, "HTTP_REQUEST_FAILED", "%s", f->errbuf[0] ? f->errbuf : curl_easy_strerror(rc));
}

static void attempt(bw_fetch_t *f)
{
    int64_t left = f->req.deadline_ms - (int64_t)uv_now(f->loop);
    if (f->req.attempt_timeout_ms > 0 && f->req.attempt_timeout_ms < left)
        left = f->req.attempt_timeout_ms;
    if (left <= 0) {
        fail(f, "TIMEOUT", "%s", "no time was left for the request");
        return;
    }
    f->resp.attempts++;
    f->resp.status = 0;
    f->resp.body.len = 0;
    json_object_clear(f->resp.headers);
    f->too_large = false;
    f->egress_why = NULL;
    f->errbuf[0] = '\0';
    curl_easy_setopt(f->easy, CURLOPT_TIMEOUT_MS, (long)left);
    if (bw_curl_add(multi, f->easy, on_done, f) != 0) {
        fail(f, "HTTP_REQUEST_FAILED", "%s", "curl refused the transfer");
        return;
    }
    f->in_transfer = true;
}

/* ---- the request ---- */

static bool ensure_process_state(uv_loop_t *loop, const bw_config_t *cfg, char *msg, size_t msglen)
{
    if (multi != NULL)
        return true;
    srandom((unsigned)uv_hrtime() ^ (unsigned)getpid());
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        snprintf(msg, msglen, "libcurl could not be initialised");
        return false;
    }
    egress = bw_egress_create(cfg->http_allow_cidrs, cfg->http_allow_hosts, msg, msglen);
    multi = egress != NULL ? bw_curl_create(loop) : NULL;
    if (multi == NULL) {
        bw_egress_destroy(egress);
        egress = NULL;
        curl_global_cleanup();
        return false;
    }
    return true;
}

static void on_retry_closed(uv_handle_t *h)
{
    bw_fetch_t *f = h->data;
    bw_buf_dispose(&f->resp.body);
    json_decref(f->resp.headers);
    free(f);
}

bw_fetch_t *bw_fetch_start(uv_loop_t *loop, const bw_config_t *cfg, const bw_fetch_req_t *req,
                           bw_fetch_done_cb cb, void *ud, char *msg, size_t msglen)
{
    if (!ensure_process_state(loop, cfg, msg, msglen)) {
        curl_slist_free_all(req->headers);
        return NULL;
    }
    bw_fetch_t *f = bw_calloc(1, sizeof *f);
    f->loop = loop;
    f->req = *req;
    f->url = bw_strdup(req->url);
    f->headers = req->headers;
    f->req.url = f->url;
    f->cb = cb;
    f->ud = ud;
    f->started_ms = uv_now(loop);
    f->resp.headers = json_object();
    bw_buf_init(&f->resp.body, 4096);
    uv_timer_init(loop, &f->retry);
    f->retry.data = f;
    CURL *e = f->easy = handle_get();
    if (e == NULL) {
        snprintf(msg, msglen, "libcurl could not make a request");
        bw_fetch_cancel(f);
        return NULL;
    }
    curl_easy_setopt(e, CURLOPT_URL, f->url);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, req->follow_redirects ? 1L : 0L);
    curl_easy_setopt(e, CURLOPT_MAXREDIRS, (long)cfg->http_max_redirects);
    curl_easy_setopt(e, CURLOPT_PROXY, ""); /* never a proxy from the environment: see the top */
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(e, CURLOPT_USERAGENT, "beamline-worker");
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    if (cfg->http_ca_file != NULL)
        curl_easy_setopt(e, CURLOPT_CAINFO, cfg->http_ca_file);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_socket);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, f);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, f);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, f);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, f->errbuf);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, f->headers);
    if (strcmp(req->method, "HEAD") == 0)
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    else if (strcmp(req->method, "GET") != 0 || req->body != NULL)
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req->method);
    if (req->body != NULL) {
        f->body = bw_malloc(req->body_len + 1);
        memcpy(f->body, req->body, req->body_len);
        f->req.body = f->body;
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, f->body);
    }
    attempt(f);
    return f;
}

void bw_fetch_cancel(bw_fetch_t *f)
{
    if (f->in_transfer)
        bw_curl_remove(multi, f->easy);
    uv_timer_stop(&f->retry);
    if (f->easy != NULL)
        handle_put(f->easy);
    curl_slist_free_all(f->headers);
    free(f->url);
    free(f->body);
    uv_close((uv_handle_t *)&f->retry, on_retry_closed);
}

void bw_fetch_shutdown(void)
{
    if (multi == NULL)
        return;
    while (nspare > 0)
        curl_easy_cleanup(spare[--nspare]);
    bw_curl_destroy(multi);
    multi = NULL;
    bw_egress_destroy(egress);
    egress = NULL;
    curl_global_cleanup();
}

int64_t bw_fetch_retry_after_ms(const char *value, int64_t now_s)
{
    const char *p = value;
    while (*p == ' ')
        p++;
    if (isdigit((unsigned char)*p)) {
        char *end;
        long long s = strtoll(p, &end, 10);
        while (*end == ' ')
            end++;
        return *end == '\0' && s >= 0 && s < 86400 * 365 ? s * 1000 : -1;
    }
    time_t when = curl_getdate(p, NULL);
    if (when == (time_t)-1)
        return -1;
    return when <= now_s ? 0 : ((int64_t)when - now_s) * 1000;
}
