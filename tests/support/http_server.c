/*
 * The scriptable test HTTP server; see http_server.h. One uv loop on one thread serves every
 * connection, so a thousand concurrent clients cost a thousand sockets and nothing else. Each
 * connection buffers its input and parses one request head at a time: pipelined requests wait
 * their turn and a /delay holds the line. A connection that has to close is shut down first and
 * drained for a moment before the close, so that a client still sending (an oversized body) reads
 * the error response instead of a reset.
 */
#include "http_server.h"

#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <time.h>
#include <uv.h>

#define HEADERS_MAX (64 * 1024)
#define BODY_MAX (16L * 1024 * 1024)
#define BYTES_MAX (64L * 1024 * 1024)
#define DELAY_MAX_MS 60000
#define CHAIN_MAX 1000
#define STREAM_MAX 100000
#define FLAKY_MAX 1000000
#define KEY_MAX 128
#define LINGER_MS 1000
#define BACKLOG 4096
#define NOFILE_WANT 4096
#define CHUNKED (-1LL)
#define CHUNK 65536 /* a multiple of 256: consecutive pattern chunks continue the 0..255 cycle */

typedef struct key_count {
    struct key_count *next;
    long count;
    char key[];
} key_count_t;

typedef struct conn conn_t;

struct bw_test_http_server {
    uv_loop_t loop;
    uv_tcp_t listener;
    uv_async_t wake; /* stop() -> the loop thread */
    uv_thread_t thread;
    int port;
    conn_t *conns;  /* every connection not yet closing, for stop() */
    conn_t *parked; /* connections waiting at a /barrier, linked by park_next */
    atomic_long total;
    atomic_int open, max_open;
    pthread_mutex_t keys_mu;  /* the loop adds and bumps keys while tests read them */
    pthread_cond_t keys_cond; /* signalled on every bump, for bw_test_http_server_wait */
    key_count_t *keys;
    char letters[CHUNK]; /* /bytes bodies are written straight from these two */
    unsigned char pattern[CHUNK];
};

typedef struct header {
    char *name; /* lowercased */
    char *value;
} header_t;

/* A parsed request head. The strings are copies; the body stays in the connection's buffer. */
typedef struct request {
    char method[32];
    char *path, *query; /* still %-encoded; query is NULL without a '?' */
    header_t *headers;
    size_t nheaders;
    size_t head_len, body_len;
    int close, expect_continue, continue_sent;
} request_t;

struct conn {
    uv_tcp_t tcp;
    uv_timer_t timer; /* the /delay wait, later the lingering close */
    uv_shutdown_t shutdown;
    bw_test_http_server_t *s;
    conn_t *prev, *next;
    char *buf;
    size_t len, cap, scanned; /* scanned: bytes already searched for the end of the head */
    request_t req;
    int have_req;    /* req holds a parsed head whose body may still be arriving */
    int head_only;   /* the request being answered is a HEAD */
    int close_after; /* ... and its response is the connection's last */
    int delaying;    /* a /delay timer runs; later requests wait for it */
    int finishing;   /* the last response is queued: input from now on is discarded */
    int reading, closing, handles_open;
    long delay_ms;
    char *sent_key; /* "<key>.sent", bumped once the current request's first write went out */
    char *park_key; /* /barrier: the key it waits on (NULL: not parked) */
    conn_t *park_next;
    char *rest; /* /slow-body: what the timer sends */
    size_t rest_len;
};

typedef struct wreq {
    uv_write_t req;
    char *head, *owned;
    char *sent_key; /* bumped when this write completed */
    int then_close;
} wreq_t;

static long bump_key(bw_test_http_server_t *s, const char *key);

/* ---- connection lifetime ------------------------------------------------------------------- */

static void request_free(request_t *r)
{
    for (size_t i = 0; i < r->nheaders; i++) {
        free(r->headers[i].name);
        free(r->headers[i].value);
    }
    free(r->headers);
    free(r->path);
    free(r->query);
    memset(r, 0, sizeof *r);
}

static void on_conn_closed(uv_handle_t *h)
{
    conn_t *c = h->data;

    if (--c->handles_open > 0)
        return;
    request_free(&c->req);
    free(c->sent_key);
    free(c->park_key);
    free(c->rest);
    free(c->buf);
    free(c);
}

/* Closes both handles; c is freed once both are closed. Safe to call repeatedly. */
static void conn_close(conn_t *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    if (c->park_key != NULL)
        for (conn_t **pp = &c->s->parked; *pp != NULL; pp = &(*pp)->park_next)
            if (*pp == c) {
                *pp = c->park_next;
                break;
            }
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        c->s->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    atomic_fetch_sub(&c->s->open, 1);
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_closed);
}

static void on_linger_done(uv_timer_t *t)
{
    conn_close(t->data);
}

/* The FIN is out: keep reading (and discarding) until the client closes or the linger ends. */
static void on_shutdown(uv_shutdown_t *req, int status)
{
    conn_t *c = req->data;

    if (status < 0 || c->closing) {
        conn_close(c);
        return;
    }
    uv_timer_start(&c->timer, on_linger_done, LINGER_MS, 0);
}

static void on_written(uv_write_t *req, int status)
{
    wreq_t *w = (wreq_t *)req;
    conn_t *c = req->data;
    int then_close = w->then_close;

    if (status == 0 && w->sent_key != NULL)
        bump_key(c->s, w->sent_key);
    free(w->sent_key);
    free(w->head);
    free(w->owned);
    free(w);
    if (status < 0)
        conn_close(c);
    else if (then_close && !c->closing && uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, on_shutdown) != 0)
        conn_close(c);
}

/* Writes head and then the nbody buffers (which must outlive the write unless they are owned,
   which is freed after it). head and owned are taken over even on failure. */
static void queue(conn_t *c, char *head, char *owned, const uv_buf_t *body, unsigned nbody, int then_close)
{
    uv_buf_t small[8], *bufs = nbody < 8 ? small : malloc((nbody + 1) * sizeof *bufs);
    wreq_t *w = calloc(1, sizeof *w);

    if (c->closing || head == NULL || bufs == NULL || w == NULL)
        goto fail;
    bufs[0] = uv_buf_init(head, (unsigned)strlen(head));
    for (unsigned i = 0; i < nbody; i++)
        bufs[i + 1] = body[i];
    *w = (wreq_t){.head = head, .owned = owned, .sent_key = c->sent_key, .then_close = then_close};
    c->sent_key = NULL;
    w->req.data = c;
    if (then_close)
        c->finishing = 1;
    /* uv_write copies the buffer array, not the bytes it points to */
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, bufs, nbody + 1, on_written) != 0)
        goto fail;
    if (bufs != small)
        free(bufs);
    return;
fail:
    if (bufs != small)
        free(bufs);
    free(w);
    free(head);
    free(owned);
    conn_close(c);
}

/* ---- responses ----------------------------------------------------------------------------- */

static const char *reason(int status)
{
    static const struct {
        int code;
        const char *text;
    } reasons[] = {
        {100, "Continue"},
        {200, "OK"},
        {201, "Created"},
        {202, "Accepted"},
        {204, "No Content"},
        {301, "Moved Permanently"},
        {302, "Found"},
        {303, "See Other"},
        {304, "Not Modified"},
        {307, "Temporary Redirect"},
        {308, "Permanent Redirect"},
        {400, "Bad Request"},
        {401, "Unauthorized"},
        {403, "Forbidden"},
        {404, "Not Found"},
        {405, "Method Not Allowed"},
        {408, "Request Timeout"},
        {409, "Conflict"},
        {410, "Gone"},
        {411, "Length Required"},
        {413, "Content Too Large"},
        {422, "Unprocessable Content"},
        {429, "Too Many Requests"},
        {431, "Request Header Fields Too Large"},
        {500, "Internal Server Error"},
        {501, "Not Implemented"},
        {502, "Bad Gateway"},
        {503, "Service Unavailable"},
        {504, "Gateway Timeout"},
    };
    for (size_t i = 0; i < sizeof reasons / sizeof reasons[0]; i++)
        if (reasons[i].code == status)
            return reasons[i].text;
    return "Unknown";
}

static int bodiless(int status)
{
    return status == 204 || status == 304;
}

/* The status line and headers up to the blank line; length CHUNKED for Transfer-Encoding. */
static char *build_head(const conn_t *c, int status, const char *ctype, const char *extra, long long length)
{
    char date[64], *head = NULL;
    size_t n;
    time_t now = time(NULL);
    struct tm tm;
    FILE *f = open_memstream(&head, &n);

    if (f == NULL)
        return NULL;
    gmtime_r(&now, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    fprintf(f, "HTTP/1.1 %d %s\r\nDate: %s\r\n", status, reason(status), date);
    if (length == CHUNKED)
        fputs("Transfer-Encoding: chunked\r\n", f);
    else if (!bodiless(status))
        fprintf(f, "Content-Length: %lld\r\n", length);
    if (ctype != NULL)
        fprintf(f, "Content-Type: %s\r\n", ctype);
    fprintf(f, "%s%s\r\n", extra != NULL ? extra : "", c->close_after ? "Connection: close\r\n" : "");
    if (fclose(f) != 0) {
        free(head);
        return NULL;
    }
    return head;
}

/* Answers the current request with a body of length bytes in nbody buffers (owned, may be NULL,
   is freed after the write). HEAD and bodiless statuses send the headers only. */
static void reply_bufs(conn_t *c, int status, const char *ctype, const char *extra, char *owned,
                       const uv_buf_t *body, unsigned nbody, long long length)
{
    char *head = build_head(c, status, ctype, extra, length);

    if (c->head_only || bodiless(status))
        nbody = 0;
    queue(c, head, owned, body, nbody, c->close_after);
}

static void reply(conn_t *c, int status, const char *ctype, const char *extra, const char *body, size_t len)
{
    char *copy = malloc(len + 1);
    uv_buf_t b;

    if (copy == NULL) {
        conn_close(c);
        return;
    }
    memcpy(copy, body, len);
    b = uv_buf_init(copy, (unsigned)len);
    reply_bufs(c, status, ctype, extra, copy, &b, 1, (long long)len);
}

/* Answers with j as compact JSON; takes the reference. */
static void reply_json(conn_t *c, int status, const char *extra, json_t *j)
{
    char *text = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;

    json_decref(j);
    if (text == NULL) {
        conn_close(c);
        return;
    }
    reply(c, status, "application/json", extra, text, strlen(text));
    free(text);
}

static void reply_error(conn_t *c, int status, const char *message)
{
    reply_json(c, status, NULL, json_pack("{s:s}", "error", message));
}

/* A malformed request: the error, then the connection closes. */
static void reject(conn_t *c, int status)
{
    c->head_only = 0;
    c->close_after = 1;
    reply_error(c, status, reason(status));
}

/* ---- parsing helpers ----------------------------------------------------------------------- */

static int is_tchar(int ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

/* Length of the RFC 9110 token at p (stopping at end). */
static size_t token_len(const char *p, const char *end)
{
    const char *q = p;

    while (q < end && is_tchar((unsigned char)*q))
        q++;
    return (size_t)(q - p);
}

/* A header value we may send: no control characters but tab. */
static int header_safe(const char *v, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (((unsigned char)v[i] < 0x20 && v[i] != '\t') || v[i] == 0x7f)
            return 0;
    return 1;
}

static int hex_val(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    ch |= 0x20;
    return ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

/* Decodes the %XX escapes of src[0..n) into a malloc'd NUL-terminated string; *len (may be NULL)
   gets its length, which counts any decoded NULs. NULL on a bad escape. */
static char *pct_decode(const char *src, size_t n, size_t *len)
{
    char *out = malloc(n + 1);
    size_t o = 0;

    for (size_t i = 0; out != NULL && i < n; i++) {
        if (src[i] != '%') {
            out[o++] = src[i];
            continue;
        }
        int hi = i + 2 < n ? hex_val((unsigned char)src[i + 1]) : -1;
        int lo = hi >= 0 ? hex_val((unsigned char)src[i + 2]) : -1;
        if (lo < 0) {
            free(out);
            return NULL;
        }
        out[o++] = (char)(hi * 16 + lo);
        i += 2;
    }
    if (out != NULL)
        out[o] = '\0';
    if (len != NULL)
        *len = o;
    return out;
}

/* The decoded value of the nth (from 0) name=value pair of the query, malloc'd; NULL when there
   is none. A pair without '=' has the value "". */
static char *query_value(const request_t *r, const char *name, int nth, size_t *len)
{
    size_t nlen = strlen(name);

    for (const char *p = r->query; p != NULL && *p != '\0';) {
        size_t plen = strcspn(p, "&");
        const char *eq = memchr(p, '=', plen);
        size_t klen = eq != NULL ? (size_t)(eq - p) : plen;
        if (klen == nlen && memcmp(p, name, nlen) == 0 && nth-- == 0)
            return eq != NULL ? pct_decode(eq + 1, plen - klen - 1, len) : pct_decode("", 0, len);
        p += plen + (p[plen] == '&');
    }
    return NULL;
}

/* A decimal number of digits only, at most max. 0 and *out, or -1. */
static int parse_num(const char *s, long max, long *out)
{
    long v = 0;

    if (*s == '\0')
        return -1;
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9' || (v = v * 10 + (*s - '0')) > max)
            return -1;
    }
    *out = v;
    return 0;
}

/* A /flaky or /count key: a decoded path segment, non-empty, without NULs, at most KEY_MAX. */
static char *decode_key(const char *seg, size_t n)
{
    size_t len;
    char *key = pct_decode(seg, n, &len);

    if (key != NULL && (len == 0 || len > KEY_MAX || strlen(key) != len)) {
        free(key);
        return NULL;
    }
    return key;
}

/* The "Retry-After: <v>\r\n" line for ?retry_after=, in extra (sized 1 KiB): 0 when absent or
   added, -1 when the value cannot be a header value. */
static int retry_after(const request_t *r, char *extra, size_t size)
{
    size_t len;
    char *v = query_value(r, "retry_after", 0, &len);
    int rc = 0;

    extra[0] = '\0';
    if (v != NULL && (!header_safe(v, len) || len > size - 32))
        rc = -1;
    else if (v != NULL)
        snprintf(extra, size, "Retry-After: %s\r\n", v);
    free(v);
    return rc;
}

/* ---- key counters -------------------------------------------------------------------------- */

static long bump_key(bw_test_http_server_t *s, const char *key)
{
    key_count_t *k;
    long n = 0;

    pthread_mutex_lock(&s->keys_mu);
    for (k = s->keys; k != NULL && strcmp(k->key, key) != 0; k = k->next) {
    }
    if (k == NULL && (k = calloc(1, sizeof *k + strlen(key) + 1)) != NULL) {
        strcpy(k->key, key);
        k->next = s->keys;
        s->keys = k;
    }
    if (k != NULL)
        n = ++k->count;
    pthread_cond_broadcast(&s->keys_cond);
    pthread_mutex_unlock(&s->keys_mu);
    return n;
}

/* ---- routes -------------------------------------------------------------------------------- */

/* Standard base64 of in[0..n), malloc'd and NUL-terminated. */
static char *base64(const unsigned char *in, size_t n)
{
    static const char digits[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc((n + 2) / 3 * 4 + 1), *o = out;

    for (size_t i = 0; out != NULL && i < n; i += 3) {
        unsigned v =
            (unsigned)in[i] << 16 | (unsigned)(i + 1 < n ? in[i + 1] : 0) << 8 | (i + 2 < n ? in[i + 2] : 0);
        *o++ = digits[v >> 18 & 63];
        *o++ = digits[v >> 12 & 63];
        *o++ = i + 1 < n ? digits[v >> 6 & 63] : '=';
        *o++ = i + 2 < n ? digits[v & 63] : '=';
    }
    if (out != NULL)
        *o = '\0';
    return out;
}

static void route_echo(conn_t *c, const char *rest)
{
    const request_t *r = &c->req;
    const char *body = c->buf + r->head_len;
    json_t *headers = json_object(), *o = json_object();

    for (size_t i = 0; i < r->nheaders; i++) {
        const char *name = r->headers[i].name, *value = r->headers[i].value;
        const char *prev = json_string_value(json_object_get(headers, name));
        char *joined = NULL;
        /* repeated headers fold into one comma-separated value, as HTTP allows */
        if (prev != NULL && asprintf(&joined, "%s, %s", prev, value) < 0)
            joined = NULL;
        json_object_set_new(headers, name, json_string(joined != NULL ? joined : value));
        free(joined);
    }
    json_object_set_new(o, "method", json_string(r->method));
    json_object_set_new(o, "path", json_string(r->path));
    json_object_set_new(o, "query", json_string(r->query != NULL ? r->query : ""));
    json_object_set_new(o, "headers", headers);
    json_t *text = json_stringn(body, r->body_len); /* NULL when the body is not valid UTF-8 */
    if (text != NULL) {
        json_object_set_new(o, "body", text);
    } else {
        char *enc = base64((const unsigned char *)body, r->body_len);
        json_object_set_new(o, "body", json_null());
        json_object_set_new(o, "body_base64", json_string(enc != NULL ? enc : ""));
        free(enc);
    }
    reply_json(c, 200, NULL, o);
}

static void route_status(conn_t *c, const char *rest)
{
    char extra[1024];
    long code;

    if (parse_num(rest, 599, &code) != 0 || code < 200)
        reply_error(c, 400, "status must be 200..599");
    else if (retry_after(&c->req, extra, sizeof extra) != 0)
        reply_error(c, 400, "bad retry_after");
    else
        reply_json(c, (int)code, extra, json_pack("{s:i}", "status", (int)code));
}

static void on_delay_done(uv_timer_t *t);

static void route_delay(conn_t *c, const char *rest)
{
    if (parse_num(rest, DELAY_MAX_MS, &c->delay_ms) != 0) {
        reply_error(c, 400, "delay must be 0..60000 ms");
        return;
    }
    c->delaying = 1;
    uv_timer_start(&c->timer, on_delay_done, (uint64_t)c->delay_ms, 0);
}

static void route_redirect(conn_t *c, const char *rest)
{
    size_t len;
    char *to = query_value(&c->req, "to", 0, &len), *code_s = query_value(&c->req, "code", 0, NULL);
    char *extra = NULL;
    long code = 302;

    if (code_s != NULL &&
        (parse_num(code_s, 308, &code) != 0 || code < 301 || code > 308 || (code > 303 && code < 307)))
        reply_error(c, 400, "code must be 301, 302, 303, 307 or 308");
    else if (to == NULL || !header_safe(to, len) || asprintf(&extra, "Location: %s\r\n", to) < 0)
        reply_error(c, 400, "bad or missing to");
    else
        reply(c, (int)code, NULL, extra, "", 0);
    free(extra);
    free(code_s);
    free(to);
}

static void route_redirect_chain(conn_t *c, const char *rest)
{
    char extra[64];
    long n;

    if (parse_num(rest, CHAIN_MAX, &n) != 0) {
        reply_error(c, 400, "n must be 0..1000");
    } else if (n == 0) {
        reply_json(c, 200, NULL, json_pack("{s:b}", "end", 1));
    } else {
        snprintf(extra, sizeof extra, "Location: /redirect-chain/%ld\r\n", n - 1);
        reply(c, 302, NULL, extra, "", 0);
    }
}

static void route_bytes(conn_t *c, const char *rest)
{
    char *bin = query_value(&c->req, "binary", 0, NULL);
    int binary = bin != NULL && strcmp(bin, "1") == 0;
    const char *src = binary ? (const char *)c->s->pattern : c->s->letters;
    uv_buf_t *bufs = NULL;
    long n;

    free(bin);
    if (parse_num(rest, BYTES_MAX, &n) != 0) {
        reply_error(c, 400, "n must be 0..67108864");
        return;
    }
    unsigned nbufs = (unsigned)((n + CHUNK - 1) / CHUNK);
    if (nbufs > 0 && (bufs = malloc(nbufs * sizeof *bufs)) == NULL) {
        conn_close(c);
        return;
    }
    for (unsigned i = 0; i < nbufs; i++)
        bufs[i] =
            uv_buf_init((char *)src, (unsigned)(n - (long)i * CHUNK < CHUNK ? n - (long)i * CHUNK : CHUNK));
    reply_bufs(c, 200, binary ? "application/octet-stream" : "text/plain; charset=utf-8", NULL, NULL, bufs,
               nbufs, n);
    free(bufs);
}

static void route_text(conn_t *c, const char *rest)
{
    static const char text[] = "h\xc3\xa9llo w\xc3\xb6rld";

    reply(c, 200, "text/plain; charset=utf-8", NULL, text, sizeof text - 1);
}

static void route_json(conn_t *c, const char *rest)
{
    size_t len;
    char *v = query_value(&c->req, "v", 0, &len);

    if (v != NULL)
        reply(c, 200, "application/json", NULL, v, len);
    else
        reply(c, 200, "application/json", NULL, "{\"ok\":true}", 11);
    free(v);
}

static void route_drop(conn_t *c, const char *rest)
{
    conn_close(c);
}

static void route_drop_after_headers(conn_t *c, const char *rest)
{
    char *head = build_head(c, 200, "text/plain; charset=utf-8", NULL, 100);
    char *partial = head != NULL ? realloc(head, strlen(head) + 4) : NULL;

    if (partial == NULL) {
        free(head);
        conn_close(c);
        return;
    }
    strcat(partial, "abc");
    queue(c, partial, NULL, NULL, 0, 1);
}

static void route_flaky(conn_t *c, const char *rest)
{
    char extra[1024], *key = NULL, *n_s = NULL, *code_s = NULL;
    const char *slash1 = strchr(rest, '/'), *slash2 = slash1 != NULL ? strchr(slash1 + 1, '/') : NULL;
    long n, code;

    if (slash2 != NULL && strchr(slash2 + 1, '/') == NULL) {
        key = decode_key(rest, (size_t)(slash1 - rest));
        n_s = strndup(slash1 + 1, (size_t)(slash2 - slash1 - 1));
        code_s = strdup(slash2 + 1);
    }
    if (key == NULL || n_s == NULL || code_s == NULL || parse_num(n_s, FLAKY_MAX, &n) != 0 ||
        parse_num(code_s, 599, &code) != 0 || (code != 0 && code < 200)) {
        reply_error(c, 400, "want /flaky/<key>/<n>/<code 0 or 200..599>");
    } else if (retry_after(&c->req, extra, sizeof extra) != 0) {
        reply_error(c, 400, "bad retry_after");
    } else {
        long attempt = bump_key(c->s, key);
        if (attempt > n)
            reply_json(c, 200, NULL, json_pack("{s:s, s:I}", "key", key, "attempt", (json_int_t)attempt));
        else if (code == 0)
            conn_close(c);
        else
            reply_json(c, (int)code, extra, json_pack("{s:i}", "status", (int)code));
    }
    free(code_s);
    free(n_s);
    free(key);
}

static void route_count(conn_t *c, const char *rest)
{
    char *key = decode_key(rest, strlen(rest));

    if (key == NULL)
        reply_error(c, 400, "bad key");
    else
        reply_json(c, 200, NULL, json_pack("{s:I}", "count", (json_int_t)bump_key(c->s, key)));
    free(key);
}

static void route_headers(conn_t *c, const char *rest)
{
    char *extra = NULL, *set;
    size_t n, len;
    FILE *f = open_memstream(&extra, &n);
    int ok = f != NULL;

    for (int i = 0; ok && (set = query_value(&c->req, "set", i, &len)) != NULL; i++) {
        size_t nlen = token_len(set, set + len);
        const char *v = set + nlen + (nlen < len);
        while (*v == ' ' || *v == '\t')
            v++;
        ok = nlen > 0 && set[nlen] == ':' && header_safe(v, len - (size_t)(v - set));
        if (ok)
            fprintf(f, "%.*s: %s\r\n", (int)nlen, set, v);
        free(set);
    }
    if (f != NULL && fclose(f) != 0)
        ok = 0;
    if (ok)
        reply(c, 200, "application/json", extra, "{}", 2);
    else
        reply_error(c, 400, "want set=<name>:<value>");
    free(extra);
}

static void route_stream(conn_t *c, const char *rest)
{
    char *body = NULL, elem[32];
    size_t len;
    long n;
    FILE *f;

    if (parse_num(rest, STREAM_MAX, &n) != 0) {
        reply_error(c, 400, "n must be 0..100000");
        return;
    }
    if ((f = open_memstream(&body, &len)) == NULL) {
        conn_close(c);
        return;
    }
    fputs("1\r\n[\r\n", f);
    for (long i = 0; i < n; i++) {
        int elen = snprintf(elem, sizeof elem, "%s%ld", i > 0 ? "," : "", i);
        fprintf(f, "%x\r\n%s\r\n", elen, elem);
    }
    fputs("1\r\n]\r\n0\r\n\r\n", f);
    if (fclose(f) != 0) {
        free(body);
        conn_close(c);
        return;
    }
    uv_buf_t b = uv_buf_init(body, (unsigned)len);
    reply_bufs(c, 200, "application/json", NULL, body, &b, 1, CHUNKED);
}

/* /header-bytes/<total>?n=<count>[&name=<name>][&with=<byte>]: a response head (status line, every
   header line and the blank line: all that a client's header callback sees) of exactly total bytes,
   made up to that by count filler lines "<name>:<aaa>" (name default x-f<i>, a distinct one per line;
   the value's byte default 'a', any but CR, LF and NUL) whose values share the bytes left; the body
   is {}. */
static void route_header_bytes(conn_t *c, const char *rest)
{
    char *n_s = query_value(&c->req, "n", 0, NULL), *name = query_value(&c->req, "name", 0, NULL);
    size_t wlen = 0;
    char *with = query_value(&c->req, "with", 0, &wlen);
    char fill = with != NULL && wlen == 1 ? with[0] : 'a';
    const char *conn_line = c->close_after ? "Connection: close\r\n" : "";
    char fixed[256];
    long total, count = 1;
    int flen = snprintf(fixed, sizeof fixed, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n%s", conn_line);
    size_t names = 0, nlen = name != NULL ? strlen(name) : 0;

    if (parse_num(rest, 64L * 1024 * 1024, &total) != 0 ||
        (n_s != NULL && parse_num(n_s, 10000000, &count) != 0) || count < 1 ||
        (name != NULL && (nlen == 0 || token_len(name, name + nlen) != nlen)) ||
        (with != NULL && (wlen != 1 || fill == '\r' || fill == '\n' || fill == '\0'))) {
        reply_error(c, 400, "want /header-bytes/<total>?n=<count>&name=<token>");
        goto out;
    }
    for (long i = 0; i < count; i++) /* each line: name ':' value "\r\n" */
        names += (name != NULL ? nlen : (size_t)snprintf(NULL, 0, "x-f%ld", i)) + 3;
    long values = total - flen - 2 - (long)names;
    if (values < count) {
        reply_error(c, 400, "total too small for n lines");
        goto out;
    }
    char *head = malloc((size_t)total + 1), *o = head;
    if (head == NULL) {
        conn_close(c);
        goto out;
    }
    o += sprintf(o, "%s", fixed);
    for (long i = 0; i < count; i++) {
        long v = values / count + (i < values % count);
        o += name != NULL ? sprintf(o, "%s:", name) : sprintf(o, "x-f%ld:", i);
        memset(o, fill, (size_t)v);
        o += v;
        o += sprintf(o, "\r\n");
    }
    o += sprintf(o, "\r\n");
    if (o - head != total)
        abort(); /* the arithmetic above is the route's contract */
    static char body[] = "{}";
    uv_buf_t b = uv_buf_init(body, c->head_only ? 0 : 2);
    queue(c, head, NULL, &b, 1, c->close_after);
out:
    free(n_s);
    free(name);
    free(with);
}

/* /fill/<n>?with=<bytes>[&prefix=<bytes>&suffix=<bytes>]: n bytes repeating the %-decoded sequence
   (default "a") between the prefix and the suffix, as application/octet-stream. */
static void route_fill(conn_t *c, const char *rest)
{
    size_t wlen = 1, plen = 0, slen = 0;
    char *with = query_value(&c->req, "with", 0, &wlen), *prefix = query_value(&c->req, "prefix", 0, &plen),
         *suffix = query_value(&c->req, "suffix", 0, &slen), *body = NULL;
    long n;

    if (with == NULL && (with = strdup("a")) != NULL)
        wlen = 1;
    if (with == NULL || wlen == 0 || parse_num(rest, BYTES_MAX, &n) != 0) {
        reply_error(c, 400, "want /fill/<n>?with=<bytes>");
        goto out;
    }
    size_t total = plen + (size_t)n + slen;
    if ((body = malloc(total + 1)) == NULL) {
        conn_close(c);
        goto out;
    }
    if (plen > 0)
        memcpy(body, prefix, plen);
    for (long i = 0; i < n; i++)
        body[plen + (size_t)i] = with[(size_t)i % wlen];
    if (slen > 0)
        memcpy(body + plen + n, suffix, slen);
    uv_buf_t b = uv_buf_init(body, (unsigned)total);
    reply_bufs(c, 200, "application/octet-stream", NULL, body, &b, 1, (long long)total);
out:
    free(with);
    free(prefix);
    free(suffix);
}

static void on_slow_rest(uv_timer_t *t);

/* /slow-body/<ms>: 200 with Content-Length 100, 10 bytes at once, the other 90 after ms. */
static void route_slow_body(conn_t *c, const char *rest)
{
    static char first[] = "0123456789";
    long ms;

    if (parse_num(rest, DELAY_MAX_MS, &ms) != 0) {
        reply_error(c, 400, "delay must be 0..60000 ms");
        return;
    }
    uv_buf_t b = uv_buf_init(first, 10);
    if (c->head_only) {
        reply_bufs(c, 200, "text/plain; charset=utf-8", NULL, NULL, &b, 1, 100);
        return;
    }
    /* the connection stays open for the rest even when the request asked to close it after the answer:
       on_slow_rest closes it then */
    queue(c, build_head(c, 200, "text/plain; charset=utf-8", NULL, 100), NULL, &b, 1, 0);
    if (c->closing)
        return;
    c->rest = calloc(1, 91); /* NUL-terminated: queue() sends it as a head */
    if (c->rest == NULL) {
        conn_close(c);
        return;
    }
    memset(c->rest, 'z', 90);
    c->rest_len = 90;
    c->delaying = 1; /* pipelined requests wait for the rest */
    uv_timer_start(&c->timer, on_slow_rest, (uint64_t)ms, 0);
}

static void process(conn_t *c);

static void on_slow_rest(uv_timer_t *t)
{
    conn_t *c = t->data;
    uv_buf_t b = uv_buf_init(c->rest, (unsigned)c->rest_len);

    c->delaying = 0;
    c->rest = NULL;
    /* the head was sent; the rest goes out as a "head" of its own, which queue() frees */
    queue(c, b.base, NULL, NULL, 0, c->close_after);
    process(c);
}

/* /barrier/<n>?key=<k>: held until n requests with that key have arrived (the key counts them), then
   all are answered {"released":<n>} at once. */
static void route_barrier(conn_t *c, const char *rest)
{
    char *key = query_value(&c->req, "key", 0, NULL);
    long n;

    if (key == NULL || parse_num(rest, FLAKY_MAX, &n) != 0) {
        reply_error(c, 400, "want /barrier/<n>?key=<k>");
        free(key);
        return;
    }
    if (bw_test_http_server_requests(c->s, key) < n) {
        c->park_key = key;
        c->park_next = c->s->parked;
        c->s->parked = c;
        c->delaying = 1; /* pipelined requests wait behind it */
        return;
    }
    conn_t *go = NULL;
    for (conn_t **pp = &c->s->parked; *pp != NULL;) {
        conn_t *p = *pp;
        if (strcmp(p->park_key, key) == 0) {
            *pp = p->park_next;
            p->park_next = go;
            go = p;
        } else {
            pp = &p->park_next;
        }
    }
    reply_json(c, 200, NULL, json_pack("{s:I}", "released", (json_int_t)n));
    while (go != NULL) {
        conn_t *p = go;
        go = p->park_next;
        free(p->park_key);
        p->park_key = NULL;
        p->delaying = 0;
        reply_json(p, 200, NULL, json_pack("{s:I}", "released", (json_int_t)n));
        process(p);
    }
    free(key);
}

static const struct route {
    const char *path;
    int prefix; /* path is a prefix; the rest of the request path is the route's argument */
    void (*fn)(conn_t *c, const char *rest);
} routes[] = {
    {"/echo", 0, route_echo},
    {"/status/", 1, route_status},
    {"/delay/", 1, route_delay},
    {"/redirect", 0, route_redirect},
    {"/redirect-chain/", 1, route_redirect_chain},
    {"/bytes/", 1, route_bytes},
    {"/text", 0, route_text},
    {"/json", 0, route_json},
    {"/drop", 0, route_drop},
    {"/drop-after-headers", 0, route_drop_after_headers},
    {"/flaky/", 1, route_flaky},
    {"/count/", 1, route_count},
    {"/headers", 0, route_headers},
    {"/stream/", 1, route_stream},
    {"/header-bytes/", 1, route_header_bytes},
    {"/fill/", 1, route_fill},
    {"/slow-body/", 1, route_slow_body},
    {"/barrier/", 1, route_barrier},
};

static void dispatch(conn_t *c)
{
    const char *path = c->req.path;

    char *key = query_value(&c->req, "key", 0, NULL);

    c->head_only = strcmp(c->req.method, "HEAD") == 0;
    c->close_after = c->req.close;
    atomic_fetch_add(&c->s->total, 1);
    free(c->sent_key);
    c->sent_key = NULL;
    if (key != NULL) { /* ?key=<k> on any route: "<k>" counts the request, "<k>.sent" its first write */
        bump_key(c->s, key);
        if (asprintf(&c->sent_key, "%s.sent", key) < 0)
            c->sent_key = NULL;
        free(key);
    }
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        size_t plen = strlen(routes[i].path);
        if (routes[i].prefix ? strncmp(path, routes[i].path, plen) == 0 : strcmp(path, routes[i].path) == 0) {
            routes[i].fn(c, path + plen);
            return;
        }
    }
    reply_error(c, 404, "not found");
}

/* ---- request parsing ----------------------------------------------------------------------- */

/* Reads the head in buf[0..end) (end is just past the blank line) into c->req. 0, or the
   status to reject the request with. */
static int parse_head(conn_t *c, size_t end)
{
    request_t *r = &c->req;
    const char *p = c->buf, *eoh = c->buf + end - 2, *eol = memmem(p, end, "\r\n", 2);
    int minor, has_close = 0, has_keep_alive = 0;
    long long length = -1;
    size_t mlen = token_len(p, eol);

    if (mlen == 0 || mlen >= sizeof r->method || p[mlen] != ' ')
        return 400;
    memcpy(r->method, p, mlen);
    const char *target = p + mlen + 1, *sp = memchr(target, ' ', (size_t)(eol - target));
    if (sp == NULL || *target != '/' || eol - sp != 9 || memcmp(sp + 1, "HTTP/1.", 7) != 0 ||
        (sp[8] != '0' && sp[8] != '1'))
        return 400;
    minor = sp[8] - '0';
    for (const char *q = target; q < sp; q++)
        if ((unsigned char)*q <= 0x20 || (unsigned char)*q >= 0x7f)
            return 400;
    const char *qm = memchr(target, '?', (size_t)(sp - target));
    r->path = strndup(target, (size_t)((qm != NULL ? qm : sp) - target));
    r->query = qm != NULL ? strndup(qm + 1, (size_t)(sp - qm - 1)) : NULL;
    char *check = r->path != NULL ? pct_decode(r->path, strlen(r->path), NULL) : NULL;
    int escapes_ok = check != NULL;
    free(check);
    /* every escape of the query must decode too, so routes can treat a NULL value as "absent" */
    check = r->query != NULL ? pct_decode(r->query, strlen(r->query), NULL) : NULL;
    escapes_ok = escapes_ok && (r->query == NULL || check != NULL);
    free(check);
    if (!escapes_ok)
        return 400;

    for (const char *line = eol + 2; line < eoh; line = eol + 2) {
        eol = memmem(line, (size_t)(eoh + 2 - line), "\r\n", 2);
        size_t nlen = token_len(line, eol);
        const char *v = line + nlen + 1, *ve = eol;
        if (nlen == 0 || line[nlen] != ':')
            return 400;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        if (!header_safe(v, (size_t)(ve - v)))
            return 400;
        header_t *grown = realloc(r->headers, (r->nheaders + 1) * sizeof *grown);
        if (grown == NULL)
            return 400;
        r->headers = grown;
        header_t *h = &r->headers[r->nheaders++];
        h->name = strndup(line, nlen);
        h->value = strndup(v, (size_t)(ve - v));
        if (h->name == NULL || h->value == NULL)
            return 400;
        for (char *q = h->name; *q != '\0'; q++)
            *q = (char)(*q >= 'A' && *q <= 'Z' ? *q + 32 : *q);

        if (strcmp(h->name, "content-length") == 0) {
            size_t digits = strspn(h->value, "0123456789");
            if (digits == 0 || h->value[digits] != '\0')
                return 400;
            long long cl = digits > 9 ? BODY_MAX + 1 : atoll(h->value);
            if (length >= 0 && cl != length)
                return 400;
            length = cl;
        } else if (strcmp(h->name, "transfer-encoding") == 0) {
            return 411;
        } else if (strcmp(h->name, "connection") == 0) {
            for (const char *t = h->value; *t != '\0';) {
                size_t tlen = strcspn(t, ",");
                const char *te = t + tlen;
                while (t < te && (*t == ' ' || *t == '\t'))
                    t++;
                while (te > t && (te[-1] == ' ' || te[-1] == '\t'))
                    te--;
                has_close |= te - t == 5 && strncasecmp(t, "close", 5) == 0;
                has_keep_alive |= te - t == 10 && strncasecmp(t, "keep-alive", 10) == 0;
                t += tlen + (t[tlen] == ',');
            }
        } else if (strcmp(h->name, "expect") == 0) {
            r->expect_continue = minor == 1 && strcasecmp(h->value, "100-continue") == 0;
        }
    }
    if (length > BODY_MAX)
        return 413;
    r->head_len = end;
    r->body_len = length > 0 ? (size_t)length : 0;
    r->close = has_close || (minor == 0 && !has_keep_alive);
    return 0;
}

/* Makes room for need bytes of input. */
static int reserve(conn_t *c, size_t need)
{
    size_t cap = c->cap > 0 ? c->cap : 8192;

    while (cap < need)
        cap *= 2;
    if (cap == c->cap)
        return 0;
    char *p = realloc(c->buf, cap);
    if (p == NULL)
        return -1;
    c->buf = p;
    c->cap = cap;
    return 0;
}

/* Drops the first n bytes of input (one request) and the request parsed from them. */
static void consume(conn_t *c, size_t n)
{
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
    c->scanned = 0;
    c->have_req = 0;
    request_free(&c->req);
    if (c->len == 0 && c->cap > 1024 * 1024) { /* do not keep a big body's buffer around */
        free(c->buf);
        c->buf = NULL;
        c->cap = 0;
    }
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf);

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    conn_t *c = h->data;

    if (c->cap - c->len < 4096 && reserve(c, c->len + 4096) != 0) {
        *buf = uv_buf_init(NULL, 0); /* on_read gets UV_ENOBUFS and closes */
        return;
    }
    *buf = uv_buf_init(c->buf + c->len, (unsigned)(c->cap - c->len));
}

/* Answers every complete request in the buffer, in order, until one has to wait (/delay) or
   ends the connection. */
static void process(conn_t *c)
{
    while (!c->closing && !c->finishing && !c->delaying) {
        request_t *r = &c->req;
        if (!c->have_req) {
            if (c->len >= 2 && memcmp(c->buf, "\r\n", 2) == 0) { /* stray CRLF between requests */
                consume(c, 2);
                continue;
            }
            size_t from = c->scanned > 3 ? c->scanned - 3 : 0;
            size_t upto = c->len < HEADERS_MAX + 4 ? c->len : HEADERS_MAX + 4;
            const char *blank = upto > from ? memmem(c->buf + from, upto - from, "\r\n\r\n", 4) : NULL;
            c->scanned = upto;
            if (blank == NULL) {
                if (c->len > HEADERS_MAX)
                    reject(c, 431);
                break;
            }
            size_t end = (size_t)(blank - c->buf) + 4;
            int status = end - 2 > HEADERS_MAX ? 431 : parse_head(c, end);
            if (status != 0) {
                reject(c, status);
                break;
            }
            c->have_req = 1;
            if (reserve(c, r->head_len + r->body_len + 1) != 0) {
                conn_close(c);
                break;
            }
        }
        if (c->len - r->head_len < r->body_len) {
            if (r->expect_continue && !r->continue_sent) {
                r->continue_sent = 1;
                queue(c, strdup("HTTP/1.1 100 Continue\r\n\r\n"), NULL, NULL, 0, 0);
            }
            break;
        }
        dispatch(c);
        consume(c, r->head_len + r->body_len);
    }
    /* While a /delay holds the line, pipelined input piles up: stop reading once it gets big. */
    int want = !c->delaying || c->len <= HEADERS_MAX + BODY_MAX;
    if (!c->closing && want != c->reading) {
        if (want)
            uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
        else
            uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = want;
    }
}

static void on_delay_done(uv_timer_t *t)
{
    conn_t *c = t->data;

    c->delaying = 0;
    reply_json(c, 200, NULL, json_pack("{s:I}", "delayed", (json_int_t)c->delay_ms));
    process(c);
}

/* EOF or an error closes the connection, also during a /delay (the timer goes with it). */
static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    conn_t *c = st->data;

    if (n < 0) {
        conn_close(c);
        return;
    }
    if (c->finishing) {
        c->len = 0; /* draining before the close */
        return;
    }
    c->len += (size_t)n;
    if (n > 0)
        process(c);
}

/* ---- server -------------------------------------------------------------------------------- */

static void on_connection(uv_stream_t *listener, int status)
{
    bw_test_http_server_t *s = listener->data;
    conn_t *c = status == 0 ? calloc(1, sizeof *c) : NULL;

    if (c == NULL)
        return;
    c->s = s;
    c->tcp.data = c->timer.data = c->shutdown.data = c;
    uv_tcp_init(&s->loop, &c->tcp);
    uv_timer_init(&s->loop, &c->timer);
    c->handles_open = 2;
    c->next = s->conns;
    if (s->conns != NULL)
        s->conns->prev = c;
    s->conns = c;
    int now = atomic_fetch_add(&s->open, 1) + 1, peak = atomic_load(&s->max_open);
    while (now > peak && !atomic_compare_exchange_weak(&s->max_open, &peak, now)) {
    }
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0 ||
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
        conn_close(c);
        return;
    }
    c->reading = 1;
    uv_tcp_nodelay(&c->tcp, 1);
}

static void on_wake(uv_async_t *a)
{
    bw_test_http_server_t *s = a->data;

    uv_close((uv_handle_t *)&s->listener, NULL);
    uv_close((uv_handle_t *)&s->wake, NULL);
    while (s->conns != NULL)
        conn_close(s->conns);
}

static void run(void *arg)
{
    bw_test_http_server_t *s = arg;

    uv_run(&s->loop, UV_RUN_DEFAULT);
}

/* A thousand client sockets plus a thousand server ones do not fit the usual 1024. */
static void raise_nofile(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= NOFILE_WANT)
        return;
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
}

bw_test_http_server_t *bw_test_http_server_start(void)
{
    struct sockaddr_in sa;
    struct sockaddr_storage name;
    int namelen = sizeof name, rc;
    sigset_t all, old;
    bw_test_http_server_t *s = calloc(1, sizeof *s);

    raise_nofile();
    if (s == NULL)
        return NULL;
    memset(s->letters, 'a', sizeof s->letters);
    for (size_t i = 0; i < sizeof s->pattern; i++)
        s->pattern[i] = (unsigned char)i;
    pthread_mutex_init(&s->keys_mu, NULL);
    pthread_cond_init(&s->keys_cond, NULL);
    if (uv_loop_init(&s->loop) != 0) {
        pthread_cond_destroy(&s->keys_cond);
        pthread_mutex_destroy(&s->keys_mu);
        free(s);
        return NULL;
    }
    uv_tcp_init(&s->loop, &s->listener);
    uv_async_init(&s->loop, &s->wake, on_wake);
    s->listener.data = s->wake.data = s;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    if (uv_tcp_bind(&s->listener, (const struct sockaddr *)&sa, 0) != 0 ||
        uv_listen((uv_stream_t *)&s->listener, BACKLOG, on_connection) != 0 ||
        uv_tcp_getsockname(&s->listener, (struct sockaddr *)&name, &namelen) != 0)
        goto fail;
    s->port = ntohs(((struct sockaddr_in *)&name)->sin_port);
    /* The thread starts with every signal blocked: a write to a client that left raises SIGPIPE
       on the writing thread, where it now stays pending (the write fails with EPIPE), and the
       test's own signals keep going to the test's threads. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = uv_thread_create(&s->thread, run, s);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0)
        goto fail;
    return s;
fail:
    uv_close((uv_handle_t *)&s->listener, NULL);
    uv_close((uv_handle_t *)&s->wake, NULL);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    uv_loop_close(&s->loop);
    pthread_cond_destroy(&s->keys_cond);
    pthread_mutex_destroy(&s->keys_mu);
    free(s);
    return NULL;
}

int bw_test_http_server_port(const bw_test_http_server_t *s)
{
    return s->port;
}

void bw_test_http_server_stop(bw_test_http_server_t *s)
{
    if (s == NULL)
        return;
    uv_async_send(&s->wake);
    uv_thread_join(&s->thread);
    uv_loop_close(&s->loop);
    while (s->keys != NULL) {
        key_count_t *next = s->keys->next;
        free(s->keys);
        s->keys = next;
    }
    pthread_cond_destroy(&s->keys_cond);
    pthread_mutex_destroy(&s->keys_mu);
    free(s);
}

long bw_test_http_server_requests(const bw_test_http_server_t *s, const char *key)
{
    bw_test_http_server_t *m = (bw_test_http_server_t *)s; /* the lock is not part of the value */
    long n = 0;

    pthread_mutex_lock(&m->keys_mu);
    for (const key_count_t *k = m->keys; k != NULL; k = k->next)
        if (strcmp(k->key, key) == 0)
            n = k->count;
    pthread_mutex_unlock(&m->keys_mu);
    return n;
}

long bw_test_http_server_wait(const bw_test_http_server_t *s, const char *key, long n, int timeout_ms)
{
    bw_test_http_server_t *m = (bw_test_http_server_t *)s;
    struct timespec until;
    long count = 0;

    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&m->keys_mu);
    for (;;) {
        count = 0;
        for (const key_count_t *k = m->keys; k != NULL; k = k->next)
            if (strcmp(k->key, key) == 0)
                count = k->count;
        if (count >= n || pthread_cond_timedwait(&m->keys_cond, &m->keys_mu, &until) != 0)
            break;
    }
    pthread_mutex_unlock(&m->keys_mu);
    return count;
}

long bw_test_http_server_total(const bw_test_http_server_t *s)
{
    return atomic_load(&s->total);
}

int bw_test_http_server_max_open(const bw_test_http_server_t *s)
{
    return atomic_load(&s->max_open);
}
