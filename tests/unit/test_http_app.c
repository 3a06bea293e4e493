/*
 * The health server's application routes (net/http.h): requests under the prefix with Content-Length
 * bodies, answered at once or later from other threads, on real sockets on 127.0.0.1. The test app
 * answers /app/hold only when the test says so: its handles queue up, and the test (or an answering
 * thread woken by their arrival) answers them, so every "later" is driven by an event, not a sleep.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
/* cmocka after the headers it needs */
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "http_client.h"
#include "net/http.h"
#include "obs/metrics.h"
#include "testutil.h"

#define MAX_HELD 512
#define WAIT_MS 5000

/* ---- the test application ------------------------------------------------------------------ */

static struct app {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bw_http_reply_t *held[MAX_HELD]; /* /app/hold handles not answered yet, oldest first */
    int nheld, calls, sync_calls;
} A = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static void app_reset(void)
{
    pthread_mutex_lock(&A.mu);
    assert_int_equal(A.nheld, 0);
    A.calls = A.sync_calls = 0;
    pthread_mutex_unlock(&A.mu);
}

static bool is_path(const bw_http_request_t *rq, const char *p)
{
    return rq->path_len == strlen(p) && memcmp(rq->path, p, rq->path_len) == 0;
}

/* Everything the request carried, then its body: "M=... P=... Q=... A=... T=... L=n\n<body>". */
static void echo(const bw_http_request_t *rq, bw_http_reply_t *reply)
{
    size_t cap = 512 + rq->body_len + rq->path_len + rq->query_len + rq->authorization_len;
    char *out = malloc(cap);
    int n = snprintf(out, cap, "M=%s P=%.*s Q=%.*s A=%.*s T=%.*s L=%zu\n", rq->method, (int)rq->path_len,
                     rq->path, (int)rq->query_len, rq->query ? rq->query : "", (int)rq->authorization_len,
                     rq->authorization ? rq->authorization : "", (int)rq->content_type_len,
                     rq->content_type ? rq->content_type : "", rq->body_len);
    memcpy(out + n, rq->body, rq->body_len);
    bw_http_reply(reply, 200, "text/x-echo", "X-Test: sync\r\n", out, (size_t)n + rq->body_len);
    free(out);
}

static void test_app(void *ud, const bw_http_request_t *rq, bw_http_reply_t *reply)
{
    (void)ud;
    pthread_mutex_lock(&A.mu);
    A.calls++;
    if (is_path(rq, "/app/hold")) {
        assert_true(A.nheld < MAX_HELD);
        A.held[A.nheld++] = reply;
        pthread_cond_broadcast(&A.cv);
        pthread_mutex_unlock(&A.mu);
        return;
    }
    A.sync_calls++;
    pthread_mutex_unlock(&A.mu);
    echo(rq, reply);
}

/* Waits until n handles are held (5 s); A.mu held on entry. The number held. */
static int wait_held_locked(int n)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += WAIT_MS / 1000;
    while (A.nheld < n)
        if (pthread_cond_timedwait(&A.cv, &A.mu, &ts) == ETIMEDOUT)
            break;
    return A.nheld;
}

/* Waits until n handles are held (5 s). */
static void wait_held(int n)
{
    pthread_mutex_lock(&A.mu);
    int got = wait_held_locked(n);
    pthread_mutex_unlock(&A.mu);
    if (got < n)
        fail_msg("the app holds %d requests, want %d", got, n);
}

/* The oldest held handle, waiting up to 5 s for one; NULL when none came. Any thread. */
static bw_http_reply_t *try_take_held(void)
{
    bw_http_reply_t *r = NULL;
    pthread_mutex_lock(&A.mu);
    if (wait_held_locked(1) >= 1) {
        r = A.held[0];
        memmove(A.held, A.held + 1, (size_t)--A.nheld * sizeof A.held[0]);
    }
    pthread_mutex_unlock(&A.mu);
    return r;
}

/* The test's thread only (it fails the test). */
static bw_http_reply_t *take_held(void)
{
    bw_http_reply_t *r = try_take_held();
    if (r == NULL)
        fail_msg("no request held by the app within 5 s");
    return r;
}

static void answer_async(bw_http_reply_t *r)
{
    bw_http_reply(r, 202, "application/json", "X-Async: yes\r\n", "{\"async\":true}", 14);
}

/* ---- the server ---------------------------------------------------------------------------- */

static bw_http_t *start_server(int max_conns, int header_ms, size_t max_body, int app_timeout_ms)
{
    char err[256] = "";
    bw_http_opts_t o = {.bind = "127.0.0.1:0",
                        .worker_id = "w",
                        .max_connections = max_conns,
                        .header_timeout_ms = header_ms,
                        .app_prefix = "/app",
                        .app = test_app,
                        .app_max_body = max_body,
                        .app_timeout_ms = app_timeout_ms,
                        .app_headers = "X-App: 1\r\n"};
    bw_http_t *h = bw_http_create(&o, err, sizeof err);
    if (h == NULL)
        fail_msg("bw_http_create: %s", err);
    app_reset();
    return h;
}

static void wait_connections(int64_t n)
{
    int64_t end = bw_test_now_ms() + WAIT_MS;
    while (bw_metrics_get(BW_G_HEALTH_CONNECTIONS) != n && bw_test_now_ms() < end)
        bw_test_sleep_ms(2);
    assert_int_equal(bw_metrics_get(BW_G_HEALTH_CONNECTIONS), n);
}

/* A counter's value from /metrics. */
static double metric(int port, const char *name)
{
    int status = 0;
    char *body = NULL;
    double v = -1;
    assert_int_equal(bw_test_http(port, "GET", "/metrics", NULL, &status, &body, NULL), 0);
    assert_int_equal(status, 200);
    char key[128];
    snprintf(key, sizeof key, "\n%s ", name);
    const char *p = strstr(body, key);
    if (p != NULL)
        v = strtod(p + strlen(key), NULL);
    free(body);
    assert_true(v >= 0);
    return v;
}

/* ---- a raw client that reads responses one by one (pipelining) ---------------------------- */

typedef struct client {
    int fd;
    char *buf;
    size_t len, cap;
} client_t;

typedef struct resp {
    int status;
    char *headers; /* status line and headers */
    char *body;
    size_t body_len;
} resp_t;

static void resp_free(resp_t *r)
{
    free(r->headers);
    free(r->body);
    memset(r, 0, sizeof *r);
}

/* A blocking socket from src (NULL: any) to the server, every read bounded by 5 s. */
static int client_open(client_t *c, const char *src, int port)
{
    struct timeval tv = {.tv_sec = WAIT_MS / 1000};
    memset(c, 0, sizeof *c);
    c->fd = bw_test_http_connect_from(src, port, WAIT_MS);
    if (c->fd < 0)
        return -1;
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) & ~O_NONBLOCK);
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return 0;
}

static void client_close(client_t *c)
{
    if (c->fd >= 0)
        close(c->fd);
    free(c->buf);
    memset(c, 0, sizeof *c);
    c->fd = -1;
}

/* Closes with a reset instead of a FIN. */
static void client_reset(client_t *c)
{
    struct linger l = {.l_onoff = 1, .l_linger = 0};
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    client_close(c);
}

static void client_send(client_t *c, const void *p, size_t n)
{
    const char *s = p;
    while (n > 0) {
        ssize_t w = send(c->fd, s, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            fail_msg("send: %s", strerror(errno));
        s += w;
        n -= (size_t)w;
    }
}

static void client_sends(client_t *c, const char *s)
{
    client_send(c, s, strlen(s));
}

/* Reads more; 0 on EOF or reset, -1 on the 5 s timeout. */
static int client_fill(client_t *c)
{
    if (c->cap - c->len < 65536) {
        c->cap = c->cap ? c->cap * 2 : 131072;
        c->buf = realloc(c->buf, c->cap + 1);
    }
    ssize_t r;
    while ((r = recv(c->fd, c->buf + c->len, c->cap - c->len, 0)) < 0 && errno == EINTR)
        ;
    if (r > 0) {
        c->len += (size_t)r;
        return (int)r;
    }
    if (r == 0 || errno == ECONNRESET)
        return 0;
    return -1;
}

/* The next response (head: no body expected). 0, or -1 on EOF or timeout before it was whole. */
static int client_read(client_t *c, resp_t *r, bool head)
{
    memset(r, 0, sizeof *r);
    for (;;) {
        char *e = c->len > 0 ? memmem(c->buf, c->len, "\r\n\r\n", 4) : NULL;
        if (e != NULL) {
            size_t hl = (size_t)(e + 4 - c->buf), bl = 0;
            char *hdrs = strndup(c->buf, hl);
            char *cl = bw_test_http_header(hdrs, "Content-Length");
            if (cl != NULL && !head)
                bl = strtoul(cl, NULL, 10);
            free(cl);
            if (c->len >= hl + bl) {
                r->headers = hdrs;
                r->status = atoi(hdrs + 9);
                r->body = malloc(bl + 1);
                memcpy(r->body, c->buf + hl, bl);
                r->body[bl] = '\0';
                r->body_len = bl;
                memmove(c->buf, c->buf + hl + bl, c->len - hl - bl);
                c->len -= hl + bl;
                return 0;
            }
            free(hdrs);
        }
        if (client_fill(c) <= 0)
            return -1;
    }
}

/* Whether the server closes the connection within ms (whatever it sends first is dropped). */
static bool client_sees_close(client_t *c, int ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int64_t end = bw_test_now_ms() + ms;
    while (bw_test_now_ms() < end) {
        int r = client_fill(c);
        if (r == 0)
            return true;
        if (r < 0)
            return false;
        c->len = 0;
    }
    return false;
}

static void expect_header(const resp_t *r, const char *name, const char *want)
{
    char *v = bw_test_http_header(r->headers, name);
    if (v == NULL || strcmp(v, want) != 0)
        fail_msg("header %s: got %s, want %s\n%s", name, v ? v : "(none)", want, r->headers);
    free(v);
}

static void expect_no_header(const resp_t *r, const char *name)
{
    char *v = bw_test_http_header(r->headers, name);
    if (v != NULL)
        fail_msg("unexpected header %s: %s", name, v);
}

/* One request on a fresh connection, its response read. */
static void roundtrip(int port, const char *req, size_t len, resp_t *r)
{
    client_t c;
    assert_int_equal(client_open(&c, NULL, port), 0);
    client_send(&c, req, len);
    if (client_read(&c, r, false) != 0)
        fail_msg("no response to %.60s", req);
    client_close(&c);
}

/* ---- answers at once ------------------------------------------------------------------------ */

static void test_sync_answers(void **state)
{
    (void)state;
    bw_http_t *h = start_server(32, 2000, 1024, 0);
    int port = bw_http_port(h);
    resp_t r;
    static const char post[] =
        "POST /app/sync?tenant_id=t%201 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer  abc \r\n"
        "Content-Type: application/json\r\nContent-Length: 5\r\n\r\nhello";
    roundtrip(port, post, sizeof post - 1, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body,
                        "M=POST P=/app/sync Q=tenant_id=t%201 A=Bearer  abc T=application/json L=5\nhello");
    expect_header(&r, "Content-Type", "text/x-echo");
    expect_header(&r, "X-Test", "sync");
    expect_header(&r, "X-App", "1");
    expect_no_header(&r, "Cache-Control"); /* the app's answer carries exactly its headers */
    resp_free(&r);

    /* the prefix itself, below it, any method; HEAD gets the length and no body */
    static const char bare[] = "DELETE /app HTTP/1.1\r\nHost: x\r\n\r\n";
    roundtrip(port, bare, sizeof bare - 1, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "M=DELETE P=/app Q= A= T= L=0\n");
    resp_free(&r);
    client_t c;
    assert_int_equal(client_open(&c, NULL, port), 0);
    client_sends(&c, "HEAD /app/ HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_int_equal(client_read(&c, &r, true), 0);
    assert_int_equal(r.status, 200);
    expect_header(&r, "Content-Length", "28");
    resp_free(&r);
    assert_int_equal(client_read(&c, &r, false), 0); /* no body came between: the next answer is whole */
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "OK\n");
    resp_free(&r);
    client_close(&c);

    /* not the prefix: the fixed routes, unchanged */
    static const char other[] = "GET /apps HTTP/1.1\r\nHost: x\r\n\r\n";
    roundtrip(port, other, sizeof other - 1, &r);
    assert_int_equal(r.status, 404);
    resp_free(&r);
    static const char post_fixed[] = "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx";
    roundtrip(port, post_fixed, sizeof post_fixed - 1, &r);
    assert_int_equal(r.status, 405);
    resp_free(&r);
    assert_int_equal(A.calls, 3);
    bw_http_destroy(h);
}

/* ---- answers from another thread ------------------------------------------------------------ */

typedef struct answerer {
    pthread_t t;
    int n;
    int sync_calls_seen; /* sync calls the app had when the first held request was answered */
    int missing;         /* requests that never came */
} answerer_t;

/* Answers n held requests as they arrive (woken by their arrival). */
static void *answer_thread(void *arg)
{
    answerer_t *a = arg;
    for (int i = 0; i < a->n; i++) {
        bw_http_reply_t *r = try_take_held();
        if (r == NULL) {
            a->missing = a->n - i; /* the test thread reports it */
            return NULL;
        }
        if (i == 0) {
            pthread_mutex_lock(&A.mu);
            a->sync_calls_seen = A.sync_calls;
            pthread_mutex_unlock(&A.mu);
        }
        answer_async(r);
    }
    return NULL;
}

/* An answer from another thread, later; the request pipelined behind it waits for it, and the
   connection stays usable. */
static void test_async_answer_from_thread(void **state)
{
    (void)state;
    bw_http_t *h = start_server(32, 2000, 1024, 0);
    answerer_t a = {.n = 1};
    client_t c;
    resp_t r;
    assert_int_equal(pthread_create(&a.t, NULL, answer_thread, &a), 0);
    assert_int_equal(client_open(&c, NULL, bw_http_port(h)), 0);
    client_sends(&c, "POST /app/hold HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                     "GET /app/sync?n=2 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_int_equal(client_read(&c, &r, false), 0);
    assert_int_equal(r.status, 202);
    assert_string_equal(r.body, "{\"async\":true}");
    expect_header(&r, "Content-Type", "application/json");
    expect_header(&r, "X-Async", "yes");
    expect_header(&r, "X-App", "1");
    resp_free(&r);
    assert_int_equal(client_read(&c, &r, false), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "M=GET P=/app/sync Q=n=2 A= T= L=0\n");
    resp_free(&r);
    pthread_join(a.t, NULL);
    assert_int_equal(a.missing, 0);
    assert_int_equal(a.sync_calls_seen, 0); /* the pipelined request was not handed over before */
    /* kept alive after an asynchronous answer */
    client_sends(&c, "GET /app/sync HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_int_equal(client_read(&c, &r, false), 0);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    client_close(&c);
    bw_http_destroy(h);
}

/* Many connections, each with pipelined held requests, answered by four threads at once. */
static void test_many_async_answers(void **state)
{
    (void)state;
    enum { CONNS = 8, PER = 25, THREADS = 4 };
    bw_http_t *h = start_server(64, 5000, 1024, 0);
    answerer_t a[THREADS] = {0};
    client_t c[CONNS];
    resp_t r;
    for (int i = 0; i < THREADS; i++) {
        a[i].n = CONNS * PER / THREADS;
        assert_int_equal(pthread_create(&a[i].t, NULL, answer_thread, &a[i]), 0);
    }
    for (int i = 0; i < CONNS; i++) {
        assert_int_equal(client_open(&c[i], NULL, bw_http_port(h)), 0);
        for (int j = 0; j < PER; j++)
            client_sends(&c[i], "POST /app/hold HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi");
    }
    for (int i = 0; i < CONNS; i++) {
        for (int j = 0; j < PER; j++) {
            if (client_read(&c[i], &r, false) != 0)
                fail_msg("connection %d: answer %d missing", i, j);
            assert_int_equal(r.status, 202);
            resp_free(&r);
        }
        client_close(&c[i]);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(a[i].t, NULL);
        assert_int_equal(a[i].missing, 0);
    }
    bw_http_destroy(h);
}

/* ---- bodies -------------------------------------------------------------------------------- */

static char *post_of(const char *path, size_t body_len, size_t *len, const char *extra)
{
    char head[256];
    int hl = snprintf(head, sizeof head, "POST %s HTTP/1.1\r\nHost: x\r\n%sContent-Length: %zu\r\n\r\n", path,
                      extra ? extra : "", body_len);
    char *p = malloc((size_t)hl + body_len);
    memcpy(p, head, (size_t)hl);
    memset(p + hl, 'b', body_len);
    *len = (size_t)hl + body_len;
    return p;
}

static void test_body_limit(void **state)
{
    (void)state;
    bw_http_t *h = start_server(32, 2000, 1024, 0);
    int port = bw_http_port(h);
    size_t len;
    resp_t r;
    char *at = post_of("/app/sync", 1024, &len, NULL);
    roundtrip(port, at, len, &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, " L=1024\nbbbb"));
    assert_int_equal(r.body_len, strlen("M=POST P=/app/sync Q= A= T= L=1024\n") + 1024);
    resp_free(&r);
    free(at);

    char *past = post_of("/app/sync", 1025, &len, NULL);
    roundtrip(port, past, len, &r);
    assert_int_equal(r.status, 413);
    expect_header(&r, "Content-Type", "application/json");
    expect_header(&r, "Connection", "close");
    expect_header(&r, "X-App", "1");
    assert_string_equal(r.body, "{\"error\":\"too_large\",\"message\":\"request body over 1024 bytes\"}\n");
    resp_free(&r);
    free(past);

    /* refused from the head alone: a 100 MB body is neither waited for nor read, the connection closes */
    client_t c;
    assert_int_equal(client_open(&c, NULL, port), 0);
    client_sends(&c, "POST /app/sync HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n");
    assert_int_equal(client_read(&c, &r, false), 0);
    assert_int_equal(r.status, 413);
    resp_free(&r);
    assert_true(client_sees_close(&c, WAIT_MS));
    client_close(&c);
    assert_int_equal(A.calls, 1);
    bw_http_destroy(h);
}

static void test_chunked_refused(void **state)
{
    (void)state;
    bw_http_t *h = start_server(32, 2000, 1024, 0);
    static const char req[] = "POST /app/sync HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                              "5\r\nhello\r\n0\r\n\r\n";
    resp_t r;
    roundtrip(bw_http_port(h), req, sizeof req - 1, &r);
    assert_int_equal(r.status, 411);
    expect_header(&r, "Connection", "close");
    assert_non_null(strstr(r.body, "\"error\":\"length_required\""));
    resp_free(&r);
    assert_int_equal(A.calls, 0);
    bw_http_destroy(h);
}

/* Requests the app must not see: 400, app not called. */
static void test_malformed_app_requests(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "POST /app/sync HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
        "POST /app/sync HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        "POST /app/sync HTTP/1.1\r\nContent-Length: 1234567890123456789\r\n\r\n",
        "GET /app/sync HTTP/1.1\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n",
        "GET /app/a\001b HTTP/1.1\r\n\r\n",
        "GET /app/a\rb HTTP/1.1\r\n\r\n",
    };
    bw_http_t *h = start_server(32, 2000, 1024, 0);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        resp_t r;
        roundtrip(bw_http_port(h), bad[i], strlen(bad[i]), &r);
        if (r.status != 400)
            fail_msg("request %zu: status %d, want 400", i, r.status);
        assert_non_null(strstr(r.body, "\"error\":\"invalid_request\""));
        resp_free(&r);
    }
    assert_int_equal(A.calls, 0);
    /* methods: 15 letters at most */
    static const char m15[] = "ABCDEFGHIJKLMNO /app/sync HTTP/1.1\r\n\r\n";
    resp_t r;
    roundtrip(bw_http_port(h), m15, sizeof m15 - 1, &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "M=ABCDEFGHIJKLMNO "));
    resp_free(&r);
    static const char m16[] = "ABCDEFGHIJKLMNOP /app/sync HTTP/1.1\r\n\r\n";
    roundtrip(bw_http_port(h), m16, sizeof m16 - 1, &r);
    assert_int_equal(r.status, 400);
    resp_free(&r);
    bw_http_destroy(h);
}

/* Expect: 100-continue (curl sends it for larger bodies): the interim answer, then the body. */
static void test_expect_continue(void **state)
{
    (void)state;
    bw_http_t *h = start_server(32, 2000, 1024, 0);
    client_t c;
    resp_t r;
    assert_int_equal(client_open(&c, NULL, bw_http_port(h)), 0);
    client_sends(&c,
                 "POST /app/sync HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
    assert_int_equal(client_read(&c, &r, false), 0);
    assert_int_equal(r.status, 100);
    resp_free(&r);
    client_sends(&c, "body");
    assert_int_equal(client_read(&c, &r, false), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "L=4\nbody"));
    resp_free(&r);
    client_close(&c);
    bw_http_destroy(h);
}

/* A body trickling in, or never completed, is bounded by the header timeout from the end of the head;
   the app never sees it. */
static void test_slow_body_bounded(void **state)
{
    (void)state;
    bw_http_t *h = start_server(32, 300, 1024, 0);
    int port = bw_http_port(h);
    double t0 = metric(port, "beamline_worker_health_header_timeouts_total");
    client_t c;
    assert_int_equal(client_open(&c, NULL, port), 0);
    int64_t start = bw_test_now_ms();
    client_sends(&c, "POST /app/sync HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789");
    assert_true(client_sees_close(&c, WAIT_MS));
    int64_t took = bw_test_now_ms() - start;
    print_message("incomplete body closed after %lld ms (bound 300 ms)\n", (long long)took);
    assert_true(took >= 250 && took < WAIT_MS);
    client_close(&c);

    /* one byte every 20 ms: still closed by the bound, not kept open by the trickle */
    assert_int_equal(client_open(&c, NULL, port), 0);
    start = bw_test_now_ms();
    client_sends(&c, "POST /app/sync HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n");
    bool closed = false;
    while (!closed && bw_test_now_ms() - start < WAIT_MS) {
        if (send(c.fd, "x", 1, MSG_NOSIGNAL) != 1)
            break;
        closed = client_sees_close(&c, 20);
    }
    took = bw_test_now_ms() - start;
    print_message("trickled body closed after %lld ms\n", (long long)took);
    assert_true(took < 2000);
    client_close(&c);
    assert_true(metric(port, "beamline_worker_health_header_timeouts_total") >= t0 + 2);
    assert_int_equal(A.calls, 0);
    bw_http_destroy(h);
}

/* ---- handles outliving their connection or the server --------------------------------------- */

static void test_client_gone(void **state)
{
    (void)state;
    bw_http_t *h = start_server(32, 2000, 1024, 0);
    int port = bw_http_port(h);
    client_t c1, c2;
    resp_t r;
    assert_int_equal(client_open(&c1, NULL, port), 0);
    assert_int_equal(client_open(&c2, NULL, port), 0);
    client_sends(&c1, "GET /app/hold HTTP/1.1\r\nHost: x\r\n\r\n");
    wait_held(1);
    client_sends(&c2, "GET /app/hold HTTP/1.1\r\nHost: x\r\n\r\n");
    wait_held(2);
    wait_connections(2);
    client_close(&c1); /* a FIN */
    client_reset(&c2); /* a reset */
    wait_connections(0);
    bw_http_reply_t *h1 = take_held(), *h2 = take_held();
    answer_async(h1); /* only frees (ASan: no leak, no use after free) */
    answer_async(h2);
    /* the server is fine */
    static const char req[] = "GET /app/sync HTTP/1.1\r\nHost: x\r\n\r\n";
    roundtrip(port, req, sizeof req - 1, &r);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    bw_http_destroy(h);
}

/* No answer within app_timeout_ms: the server answers 503 itself, the connection goes on, and the
   late answer only frees its handle. */
static void test_app_timeout(void **state)
{
    (void)state;
    bw_http_t *h = start_server(32, 2000, 1024, 300);
    client_t c;
    resp_t r;
    assert_int_equal(client_open(&c, NULL, bw_http_port(h)), 0);
    int64_t start = bw_test_now_ms();
    client_sends(&c, "GET /app/hold HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_int_equal(client_read(&c, &r, false), 0);
    int64_t took = bw_test_now_ms() - start;
    assert_int_equal(r.status, 503);
    expect_header(&r, "X-App", "1");
    assert_string_equal(r.body, "{\"error\":\"timeout\",\"message\":\"no answer within 300 ms\"}\n");
    assert_true(took >= 250 && took < WAIT_MS);
    resp_free(&r);
    client_sends(&c, "GET /app/sync HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_int_equal(client_read(&c, &r, false), 0);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    answer_async(take_held());
    client_close(&c);
    bw_http_destroy(h);
}

typedef struct late {
    pthread_t t;
    bw_http_reply_t *r[3];
} late_t;

static void *answer_given(void *arg)
{
    late_t *l = arg;
    for (int i = 0; i < 3; i++)
        answer_async(l->r[i]);
    return NULL;
}

/* bw_http_destroy with answers outstanding: the handles stay valid and answering them frees them,
   before, during (another thread) or after the destroy. */
static void test_destroy_with_answers_outstanding(void **state)
{
    (void)state;
    for (int round = 0; round < 2; round++) {
        bw_http_t *h = start_server(32, 2000, 1024, 0);
        client_t c[3];
        late_t l;
        for (int i = 0; i < 3; i++) {
            assert_int_equal(client_open(&c[i], NULL, bw_http_port(h)), 0);
            client_sends(&c[i], "GET /app/hold HTTP/1.1\r\nHost: x\r\n\r\n");
            l.r[i] = take_held();
        }
        if (round == 0) {
            bw_http_destroy(h);
            answer_given(&l);
        } else { /* racing the destroy */
            assert_int_equal(pthread_create(&l.t, NULL, answer_given, &l), 0);
            bw_http_destroy(h);
            pthread_join(l.t, NULL);
        }
        for (int i = 0; i < 3; i++) {
            assert_true(client_sees_close(&c[i], WAIT_MS));
            client_close(&c[i]);
        }
    }
}

/* ---- probes while application requests wait -------------------------------------------------- */

static void hold_from(client_t *c, int n, int port)
{
    char src[32];
    for (int i = 0; i < n; i++) {
        snprintf(src, sizeof src, "127.0.0.%d", 10 + i / 10);
        assert_int_equal(client_open(&c[i], src, port), 0);
        client_sends(&c[i], "GET /app/hold HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    wait_held(n);
}

static void probe_ok(int port, const char *src, const char *path)
{
    int status = 0;
    char *body = NULL;
    int64_t t0 = bw_test_now_ms();
    assert_int_equal(bw_test_http_from(src, WAIT_MS, port, "GET", path, &status, &body), 0);
    assert_int_equal(status, 200);
    print_message("%s while 50 app requests wait: %lld ms\n", path, (long long)(bw_test_now_ms() - t0));
    free(body);
}

static void test_probes_while_app_requests_wait(void **state)
{
    (void)state;
    enum { N = 50 };
    client_t c[N];
    resp_t r;
    /* room to spare: probes and scrapes answer, nothing is closed */
    bw_http_t *h = start_server(128, 2000, 1024, 0);
    int port = bw_http_port(h);
    hold_from(c, N, port);
    probe_ok(port, "127.0.0.30", "/healthz");
    probe_ok(port, "127.0.0.30", "/metrics");
    for (int i = 0; i < N; i++)
        answer_async(take_held());
    for (int i = 0; i < N; i++) {
        assert_int_equal(client_read(&c[i], &r, false), 0);
        assert_int_equal(r.status, 202);
        resp_free(&r);
        client_close(&c[i]);
    }
    bw_http_destroy(h);

    /* full, with one connection still sending its head: a probe closes that one, not a waiting one;
       full of waiting ones only, the next probe closes the oldest of them, whose late answer only
       frees its handle */
    h = start_server(N, 2000, 1024, 0);
    port = bw_http_port(h);
    double ev0 = metric(port, "beamline_worker_health_evictions_total");
    wait_connections(0);
    hold_from(c, N - 1, port);
    client_t slow;
    assert_int_equal(client_open(&slow, "127.0.0.40", port), 0);
    client_sends(&slow, "GET /app/sync HTTP/1.1\r\n");
    wait_connections(N);
    probe_ok(port, "127.0.0.31", "/healthz");
    assert_true(client_sees_close(&slow, WAIT_MS));
    client_close(&slow);
    wait_connections(N - 1); /* the probe's own connection gone too */
    assert_int_equal(client_open(&c[N - 1], "127.0.0.41", port), 0);
    client_sends(&c[N - 1], "GET /app/hold HTTP/1.1\r\nHost: x\r\n\r\n");
    wait_held(N);
    probe_ok(port, "127.0.0.32", "/healthz");
    for (int i = 0; i < N; i++)
        answer_async(take_held());
    assert_true(client_sees_close(&c[0], WAIT_MS));
    client_close(&c[0]);
    for (int i = 1; i < N; i++) {
        if (client_read(&c[i], &r, false) != 0)
            fail_msg("connection %d lost its answer", i);
        assert_int_equal(r.status, 202);
        resp_free(&r);
        client_close(&c[i]);
    }
    assert_int_equal(metric(port, "beamline_worker_health_evictions_total"), ev0 + 2);
    bw_http_destroy(h);
}

int main(void)
{
    static const char *const types[] = {NULL};
    bw_metrics_init(types);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sync_answers),
        cmocka_unit_test(test_async_answer_from_thread),
        cmocka_unit_test(test_many_async_answers),
        cmocka_unit_test(test_body_limit),
        cmocka_unit_test(test_chunked_refused),
        cmocka_unit_test(test_malformed_app_requests),
        cmocka_unit_test(test_expect_continue),
        cmocka_unit_test(test_slow_body_bounded),
        cmocka_unit_test(test_client_gone),
        cmocka_unit_test(test_app_timeout),
        cmocka_unit_test(test_destroy_with_answers_outstanding),
        cmocka_unit_test(test_probes_while_app_requests_wait),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
