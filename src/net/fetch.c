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
#include "util/hmap.h"
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
    const char *cut_by; /* what cut the body: "max_response_bytes" or "result" */
    /* the current hop's response headers */
    int64_t max_header_bytes;
    size_t header_bytes; /* of this hop, as received */
    bool in_headers;     /* no blank line yet after the last status line (or the attempt's start) */
    bool interim;        /* the last status line was 1xx: the next one belongs to the same hop */
    enum { HDR_OK, HDR_LIMIT, HDR_NO_ROOM } hdr_fail;
    bw_hmap_t *joined;      /* lower-case name -> bw_buf_t *: a repeated header's value, joined so far */
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

/* The size of s[0..n) as a JSON string literal in a result (quotes included): what util/jsonw.c writes
   for valid UTF-8, which is all a header value can be once jansson accepted it. */
static size_t json_str_size(const char *s, size_t n)
{
    size_t out = 2;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        out += c < 0x20 ? 6 : (c == '"' || c == '\\') ? 2 : 1;
    }
    return out;
}

static void joined_free(void *ud, const char *name, void *value)
{
    bw_buf_t *b = value;
    bw_buf_dispose(b);
    free(b);
}

static void joined_store(void *ud, const char *name, void *value)
{
    bw_fetch_t *f = ud;
    bw_buf_t *b = value;
    /* pieces jansson accepted as UTF-8, joined with ", ": still UTF-8 */
    json_object_set_new(f->resp.headers, name, json_stringn_nocheck(b->p, b->len));
}

static void joined_drop(bw_fetch_t *f)
{
    if (f->joined == NULL)
        return;
    bw_hmap_foreach(f->joined, joined_free, NULL);
    bw_hmap_destroy(f->joined);
    f->joined = NULL;
}

/* Puts the joined values of repeated headers into resp.headers: once, when the transfer is over. */
static void headers_settle(bw_fetch_t *f)
{
    if (f->joined != NULL)
        bw_hmap_foreach(f->joined, joined_store, f);
    joined_drop(f);
}

static void headers_reset(bw_fetch_t *f)
{
    json_object_clear(f->resp.headers);
    joined_drop(f);
    f->resp.headers_json_bytes = 2; /* {} */
}

/* A status line: a new response. Its headers replace those of an interim (1xx) or redirect one before;
   the byte count starts again only for a new hop (a redirect's target), not after a 1xx. */
static void on_status_line(bw_fetch_t *f, const char *p, size_t len)
{
    const char *sp = memchr(p, ' ', len);
    long code = 0;
    if (sp != NULL && (size_t)(p + len - sp) > 3 && isdigit((unsigned char)sp[1]))
        code = (sp[1] - '0') * 100; /* the class is all that matters here */
    if (!f->interim)
        f->header_bytes = 0;
    f->interim = code >= 100 && code < 200;
    f->in_headers = true;
    headers_reset(f);
}

/* One "Name: value" line into resp.headers. Linear in the line: names are looked up in hash tables,
   and a repeated name's value is appended to a buffer of its own (joined_store makes the string at
   the end), never copied again. */
static void collect_header(bw_fetch_t *f, const char *p, size_t len)
{
    size_t end = len;
    const char *colon = memchr(p, ':', len);
    if (colon == NULL || colon == p)
        return;
    while (end > 0 && (p[end - 1] == '\r' || p[end - 1] == '\n' || p[end - 1] == ' ' || p[end - 1] == '\t'))
        end--;
    const char *v = colon + 1;
    while (v < p + end && (*v == ' ' || *v == '\t'))
        v++;
    size_t vlen = (size_t)(p + end - v);
    char name[256];
    size_t nl = (size_t)(colon - p) < sizeof name - 1 ? (size_t)(colon - p) : sizeof name - 1;
    for (size_t i = 0; i < nl; i++) {
        unsigned char c = (unsigned char)p[i];
        if (!isalnum(c) && strchr("!#$%&'*+-.^_`|~", c) == NULL)
            return; /* not an RFC 9110 token: not a header */
        name[i] = (char)tolower(c);
    }
    name[nl] = '\0';
    json_t *value = json_stringn(v, vlen);
    if (value == NULL) /* not UTF-8: kept as Latin-1 would be guesswork; dropped */
        return;
    size_t vsize = json_str_size(v, vlen);
    json_t *old = json_object_get(f->resp.headers, name);
    if (strcmp(name, "set-cookie") == 0) {
        if (old == NULL) {
            json_object_set_new(f->resp.headers, name, old = json_array());
            f->resp.headers_json_bytes += nl + 2 + 1 + 2 + 1; /* "name":[], */
        } else {
            f->resp.headers_json_bytes += 1; /* , */
        }
        json_array_append_new(old, value);
        f->resp.headers_json_bytes += vsize;
    } else if (old != NULL) {
        bw_buf_t *b = f->joined != NULL ? bw_hmap_get(f->joined, name, nl) : NULL;
        if (b == NULL) {
            if (f->joined == NULL)
                f->joined = bw_hmap_create();
            b = bw_malloc(sizeof *b);
            bw_buf_init(b, json_string_length(old) + vlen + 64);
            bw_buf_append(b, json_string_value(old), json_string_length(old));
            bw_hmap_put(f->joined, name, nl, b);
        }
        bw_buf_append(b, ", ", 2);
        bw_buf_append(b, v, vlen);
        f->resp.headers_json_bytes += 2 + vsize - 2; /* ", " and the value without its quotes */
        json_decref(value);
    } else {
        json_object_set_new(f->resp.headers, name, value);
        f->resp.headers_json_bytes += nl + 2 + 1 + vsize + 1; /* "name":"value", */
    }
}

/* Every line curl read of a response head (status line, headers, the blank line; trailers too). */
static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    bw_fetch_t *f = ud;
    size_t len = size * n;
    bool status_line = len >= 5 && memcmp(p, "HTTP/", 5) == 0;
    if (status_line)
        on_status_line(f, p, len);
    f->header_bytes += len;
    if (f->header_bytes > (size_t)f->max_header_bytes) {
        f->hdr_fail = HDR_LIMIT;
        return 0; /* ends the transfer */
    }
    if (status_line)
        return len;
    if (len <= 2 && (len == 0 || p[0] == '\r' || p[0] == '\n')) {
        f->in_headers = false;
        return len;
    }
    collect_header(f, p, len);
    return len;
}

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    bw_fetch_t *f = ud;
    size_t len = size * n, cap = (size_t)f->req.max_response_bytes;
    f->cut_by = "max_response_bytes";
    if (f->req.result_room > 0) {
        /* each byte of the body costs at least one in the result: no more than what is left is kept */
        if (f->resp.headers_json_bytes >= f->req.result_room) {
            f->hdr_fail = HDR_NO_ROOM;
            return 0;
        }
        size_t left = f->req.result_room - f->resp.headers_json_bytes;
        if (left < cap) {
            cap = left;
            f->cut_by = "result";
        }
    }
    size_t room = cap > f->resp.body.len ? cap - f->resp.body.len : 0;
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

/* Whether curl ended the transfer at one of its own limits on a response head: a header line longer
   than CURL_MAX_HTTP_HEADER (100 KiB) is CURLE_OUT_OF_MEMORY up to 7.88 ("Out of memory", as in Debian
   12) and CURLE_TOO_LARGE from 8.6; all the head's lines together past its own total is a
   CURLE_RECV_ERROR whose message names the headers. Either way while a head was being read. */
static bool curl_header_limit(const bw_fetch_t *f, CURLcode rc)
{
    if (!f->in_headers)
        return false;
#if LIBCURL_VERSION_NUM >= 0x080600
    if (rc == CURLE_TOO_LARGE)
        return true;
#endif
    return rc == CURLE_OUT_OF_MEMORY || (rc == CURLE_RECV_ERROR && strstr(f->errbuf, "header") != NULL);
}

/* Fails the request when its response headers were too large; never retried: the same server would
   send the same headers again. */
static bool headers_failed(bw_fetch_t *f, CURLcode rc)
{
    char num[64];
    if (f->hdr_fail == HDR_LIMIT) {
        snprintf(num, sizeof num, "%lld", (long long)f->max_header_bytes);
        fail(f, "RESPONSE_HEADERS_TOO_LARGE",
             "the response headers are larger than HTTP_MAX_RESPONSE_HEADER_BYTES (%s bytes in all)", num);
    } else if (f->hdr_fail == HDR_NO_ROOM || (rc == CURLE_OK && f->req.result_room > 0 &&
                                              f->resp.headers_json_bytes > f->req.result_room)) {
        snprintf(num, sizeof num, "%zu", f->req.result_room);
        fail(f, "RESPONSE_HEADERS_TOO_LARGE",
             "the response headers, as JSON, take more than the %s bytes a result message has for them", num);
    } else if (rc != CURLE_OK && curl_header_limit(f, rc)) {
        fail(f, "RESPONSE_HEADERS_TOO_LARGE", "the response headers are larger than libcurl accepts (%s)",
             f->errbuf[0] ? f->errbuf : curl_easy_strerror(rc));
    } else {
        return false;
    }
    return true;
}

static void on_done(CURL *easy, CURLcode rc, void *ud)
{
    bw_fetch_t *f = ud;
    f->in_transfer = false;
    headers_settle(f);
    if (headers_failed(f, rc))
        return;
    if (rc == CURLE_OK || (rc == CURLE_WRITE_ERROR && f->too_large)) {
        curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &f->resp.status);
        if (f->too_large && !f->req.truncate) {
            char limit[160];
            if (strcmp(f->cut_by, "result") == 0)
                snprintf(limit, sizeof limit, "what fits in a result message (%zu bytes)",
                         f->req.result_room > f->resp.headers_json_bytes
                             ? f->req.result_room - f->resp.headers_json_bytes
                             : 0);
            else
                snprintf(limit, sizeof limit, "max_response_bytes (%lld)",
                         (long long)f->req.max_response_bytes);
            fail(f, "RESPONSE_TOO_LARGE", "the response body is larger than %s", limit);
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
                     rc != CURLE_PEER_FAILED_VERIFICATION && rc != CURLE_SSL_CACERT_BADFILE &&
                     rc != CURLE_OUT_OF_MEMORY;
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
    headers_reset(f);
    f->header_bytes = 0;
    f->interim = false;
    f->in_headers = true;
    f->hdr_fail = HDR_OK;
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
    joined_drop(f);
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
    f->resp.headers_json_bytes = 2;
    f->max_header_bytes = cfg->http_max_response_header_bytes;
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
