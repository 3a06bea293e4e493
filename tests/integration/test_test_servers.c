/*
 * Self-test of the servers the http and graphql job types' integration tests run against
 * (tests/support/http_server.c, graphql_server.c): every route of the scriptable HTTP server
 * over real loopback sockets, its counters, keep-alive and pipelining, malformed and abandoned
 * requests, a thousand concurrent connections and a stop with connections open; then the
 * GraphQL server's answers (data, variables, partial data with errors, syntax errors, a
 * mutation, bad bodies).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "graphql_server.h"
#include "http_client.h"
#include "http_server.h"
#include "testutil.h"

#define CONNS 1000
#define CONNS_DEADLINE_MS 10000
#define MiB (1024 * 1024)

static bw_test_http_server_t *S;
static int port;
static bw_test_graphql_server_t G;

typedef struct resp {
    int status;
    char *body, *headers;
    size_t len;
} resp_t;

/* ---- fixtures ------------------------------------------------------------------------------ */

static int setup_http(void **state)
{
    S = bw_test_http_server_start();
    port = S != NULL ? bw_test_http_server_port(S) : -1;
    return S != NULL && port > 0 ? 0 : -1;
}

static int teardown_http(void **state)
{
    bw_test_http_server_stop(S);
    S = NULL;
    return 0;
}

static int setup_graphql(void **state)
{
    return bw_test_graphql_server_start(&G);
}

static int teardown_graphql(void **state)
{
    bw_test_graphql_server_stop(&G);
    return 0;
}

/* ---- helpers ------------------------------------------------------------------------------- */

/* A request to the test server that must get a response carrying Date. */
static resp_t call(int to_port, const char *method, const char *path, const char *extra, const void *body,
                   size_t blen)
{
    resp_t r = {0};

    if (bw_test_http_body(to_port, method, path, extra, body, blen, &r.status, &r.body, &r.len, &r.headers) !=
        0)
        fail_msg("%s %s: no parsable response", method, path);
    char *date = bw_test_http_header(r.headers, "Date");
    if (date == NULL || strlen(date) != 29 || strcmp(date + 25, " GMT") != 0)
        fail_msg("%s %s: no proper Date header: %s", method, path, r.headers);
    free(date);
    return r;
}

static resp_t get(const char *path)
{
    return call(port, "GET", path, NULL, NULL, 0);
}

static void resp_free(resp_t *r)
{
    free(r->body);
    free(r->headers);
    memset(r, 0, sizeof *r);
}

static void expect_header(const resp_t *r, const char *name, const char *want)
{
    char *v = bw_test_http_header(r->headers, name);

    if (want == NULL && v != NULL)
        fail_msg("unexpected %s: %s", name, v);
    if (want != NULL && (v == NULL || strcmp(v, want) != 0))
        fail_msg("%s: %s, want %s", name, v != NULL ? v : "(none)", want);
    free(v);
}

/* GET path: want_status and exactly want_body. */
static void expect_get(const char *path, int want_status, const char *want_body)
{
    resp_t r = get(path);

    if (r.status != want_status || strcmp(r.body, want_body) != 0)
        fail_msg("GET %s: %d %s, want %d %s", path, r.status, r.body, want_status, want_body);
    resp_free(&r);
}

static json_t *body_json(const resp_t *r)
{
    json_error_t err;
    json_t *j = json_loadb(r->body, r->len, 0, &err);

    if (!json_is_object(j))
        fail_msg("not a JSON object (%s): %s", err.text, r->body);
    return j;
}

static const char *jstr(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

/* A blocking connection to the test server with 5 s send and receive timeouts. */
static int dial(int to_port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)to_port)};
    struct timeval tv = {.tv_sec = 5};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return fd;
}

static void send_str(int fd, const char *s)
{
    assert_int_equal(send(fd, s, strlen(s), MSG_NOSIGNAL), (ssize_t)strlen(s));
}

/* Reads until needle has arrived; the text so far (caller frees), or a failure on EOF/timeout. */
static char *read_until(int fd, const char *needle)
{
    size_t len = 0, cap = 4096;
    char *buf = malloc(cap);

    buf[0] = '\0';
    while (strstr(buf, needle) == NULL) {
        ssize_t r = recv(fd, buf + len, cap - len - 1, 0);
        if (r <= 0)
            fail_msg("connection ended before \"%s\" arrived; got: %s", needle, buf);
        len += (size_t)r;
        buf[len] = '\0';
        if (cap - len < 1024)
            buf = realloc(buf, cap *= 2);
    }
    return buf;
}

/* Sends raw bytes, and wants a response starting with want_prefix and the connection closed. */
static void expect_raw(const char *request, size_t len, const char *want_prefix)
{
    char *resp = NULL;
    int n = bw_test_http_raw(port, request, len, &resp);

    if (n < 0)
        fail_msg("no response and no close for %.60s", request);
    if (strncmp(resp, want_prefix, strlen(want_prefix)) != 0)
        fail_msg("for %.60s: got %.200s, want %s", request, resp, want_prefix);
    free(resp);
}

static int count_of(const char *hay, const char *needle)
{
    int n = 0;

    for (const char *p = strstr(hay, needle); p != NULL; p = strstr(p + 1, needle))
        n++;
    return n;
}

/* ---- routes -------------------------------------------------------------------------------- */

static void test_echo(void **state)
{
    resp_t r =
        call(port, "GET", "/echo?a=1&b=x%20y", "X-Custom: Value\r\nX-Twice: 1\r\nx-twice: 2\r\n", NULL, 0);
    json_t *j = body_json(&r), *h = json_object_get(j, "headers");
    assert_int_equal(r.status, 200);
    expect_header(&r, "Content-Type", "application/json");
    assert_string_equal(jstr(j, "method"), "GET");
    assert_string_equal(jstr(j, "path"), "/echo");
    assert_string_equal(jstr(j, "query"), "a=1&b=x%20y");
    assert_string_equal(jstr(h, "x-custom"), "Value");
    assert_string_equal(jstr(h, "x-twice"), "1, 2");
    assert_string_equal(jstr(h, "user-agent"), "bw-test");
    assert_string_equal(jstr(j, "body"), "");
    assert_null(json_object_get(j, "body_base64"));
    json_decref(j);
    resp_free(&r);

    static const char text[] = "{\"k\":\"h\xc3\xa9llo\"}";
    r = call(port, "POST", "/echo", "Content-Type: application/json\r\n", text, sizeof text - 1);
    j = body_json(&r);
    assert_string_equal(jstr(j, "method"), "POST");
    assert_string_equal(jstr(j, "body"), text);
    assert_string_equal(jstr(json_object_get(j, "headers"), "content-type"), "application/json");
    assert_string_equal(jstr(json_object_get(j, "headers"), "content-length"), "14");
    json_decref(j);
    resp_free(&r);

    /* not UTF-8: body null, the bytes in base64 */
    r = call(port, "PUT", "/echo", NULL, "\xff\x00\x01\x02", 4);
    j = body_json(&r);
    assert_string_equal(jstr(j, "method"), "PUT");
    assert_true(json_is_null(json_object_get(j, "body")));
    assert_string_equal(jstr(j, "body_base64"), "/wABAg==");
    json_decref(j);
    resp_free(&r);

    /* HEAD: the headers of the GET, no body */
    r = call(port, "HEAD", "/echo", NULL, NULL, 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.len, 0);
    char *cl = bw_test_http_header(r.headers, "Content-Length");
    assert_non_null(cl);
    assert_true(atoi(cl) > 20);
    free(cl);
    resp_free(&r);
}

static void test_status(void **state)
{
    resp_t r = get("/status/503?retry_after=120");
    assert_int_equal(r.status, 503);
    assert_string_equal(r.body, "{\"status\":503}");
    expect_header(&r, "Retry-After", "120");
    resp_free(&r);

    r = get("/status/429?retry_after=Wed%2C%2021%20Oct%202015%2007%3A28%3A00%20GMT");
    assert_int_equal(r.status, 429);
    expect_header(&r, "Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT");
    resp_free(&r);

    r = get("/status/500");
    assert_string_equal(r.body, "{\"status\":500}");
    expect_header(&r, "Retry-After", NULL);
    resp_free(&r);

    /* 204: neither body nor Content-Length */
    r = get("/status/204");
    assert_int_equal(r.status, 204);
    assert_int_equal(r.len, 0);
    expect_header(&r, "Content-Length", NULL);
    resp_free(&r);

    expect_get("/status/201", 201, "{\"status\":201}");
    r = get("/status/99");
    assert_int_equal(r.status, 400);
    resp_free(&r);
    r = get("/status/abc");
    assert_int_equal(r.status, 400);
    resp_free(&r);
    r = get("/status/503?retry_after=a%0D%0AX-Evil:%201");
    assert_int_equal(r.status, 400);
    resp_free(&r);
}

static void test_delay(void **state)
{
    int64_t t0 = bw_test_now_ms();
    expect_get("/delay/150", 200, "{\"delayed\":150}");
    int64_t took = bw_test_now_ms() - t0;
    if (took < 140 || took > 3000)
        fail_msg("/delay/150 took %lld ms", (long long)took);
    expect_get("/delay/0", 200, "{\"delayed\":0}");
    resp_t r = get("/delay/60001");
    assert_int_equal(r.status, 400);
    resp_free(&r);

    /* A pipelined request waits for the delayed one and is answered after it, in order. */
    int fd = dial(port);
    send_str(fd,
             "GET /delay/100 HTTP/1.1\r\nHost: t\r\n\r\nGET /count/after-delay HTTP/1.1\r\nHost: t\r\n\r\n");
    char *got = read_until(fd, "{\"count\":1}");
    char *delayed = strstr(got, "{\"delayed\":100}");
    assert_non_null(delayed);
    assert_true(delayed < strstr(got, "{\"count\":1}"));
    free(got);
    close(fd);

    /* A client that leaves during the delay: the server stops the timer with the connection (ASan
       would see a timer firing on a freed connection) and goes on serving. */
    long before = bw_test_http_server_total(S);
    fd = dial(port);
    send_str(fd, "GET /delay/300 HTTP/1.1\r\nHost: t\r\n\r\n");
    while (bw_test_http_server_total(S) == before)
        bw_test_sleep_ms(5);
    close(fd);
    bw_test_sleep_ms(400);
    expect_get("/count/after-abandoned-delay", 200, "{\"count\":1}");
}

static void test_redirect(void **state)
{
    resp_t r = get("/redirect?to=%2Fecho%3Fx%3D1&code=307");
    assert_int_equal(r.status, 307);
    expect_header(&r, "Location", "/echo?x=1");
    expect_header(&r, "Content-Length", "0");
    assert_int_equal(r.len, 0);
    resp_free(&r);

    r = get("/redirect?to=http%3A%2F%2F127.0.0.1%3A1%2Fx%3Fy%3D%2520");
    assert_int_equal(r.status, 302);
    expect_header(&r, "Location", "http://127.0.0.1:1/x?y=%20");
    resp_free(&r);

    static const int codes[] = {301, 302, 303, 307, 308};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        char path[64];
        snprintf(path, sizeof path, "/redirect?to=/text&code=%d", codes[i]);
        r = get(path);
        assert_int_equal(r.status, codes[i]);
        expect_header(&r, "Location", "/text");
        resp_free(&r);
    }
    r = get("/redirect?to=/text&code=305");
    assert_int_equal(r.status, 400);
    resp_free(&r);
    r = get("/redirect?code=302");
    assert_int_equal(r.status, 400);
    resp_free(&r);
}

static void test_redirect_chain(void **state)
{
    char *path = strdup("/redirect-chain/3");
    int hops = 0;

    for (;;) {
        resp_t r = get(path);
        free(path);
        if (r.status != 302) {
            assert_int_equal(r.status, 200);
            assert_string_equal(r.body, "{\"end\":true}");
            resp_free(&r);
            break;
        }
        path = bw_test_http_header(r.headers, "Location");
        assert_non_null(path);
        assert_true(++hops <= 3);
        resp_free(&r);
    }
    assert_int_equal(hops, 3);
}

static void test_bytes(void **state)
{
    resp_t r = get("/bytes/1000");
    assert_int_equal(r.status, 200);
    expect_header(&r, "Content-Type", "text/plain; charset=utf-8");
    assert_int_equal(r.len, 1000);
    assert_int_equal(strspn(r.body, "a"), 1000);
    resp_free(&r);

    expect_get("/bytes/0", 200, "");

    /* binary, past one 64 KiB chunk, then the 64 MiB maximum */
    static const long sizes[] = {70000, 64L * MiB};
    for (size_t k = 0; k < 2; k++) {
        char path[64];
        snprintf(path, sizeof path, "/bytes/%ld?binary=1", sizes[k]);
        r = get(path);
        assert_int_equal(r.status, 200);
        expect_header(&r, "Content-Type", "application/octet-stream");
        assert_int_equal(r.len, sizes[k]);
        for (size_t i = 0; i < r.len; i++)
            if ((unsigned char)r.body[i] != (i & 255))
                fail_msg("%s: byte %zu is %d", path, i, (unsigned char)r.body[i]);
        resp_free(&r);
    }

    r = get("/bytes/67108865");
    assert_int_equal(r.status, 400);
    resp_free(&r);

    r = call(port, "HEAD", "/bytes/5000", NULL, NULL, 0);
    expect_header(&r, "Content-Length", "5000");
    assert_int_equal(r.len, 0);
    resp_free(&r);
}

static void test_text_and_json(void **state)
{
    resp_t r = get("/text");
    assert_int_equal(r.status, 200);
    expect_header(&r, "Content-Type", "text/plain; charset=utf-8");
    assert_string_equal(r.body, "h\xc3\xa9llo w\xc3\xb6rld");
    resp_free(&r);

    r = get("/json");
    expect_header(&r, "Content-Type", "application/json");
    assert_string_equal(r.body, "{\"ok\":true}");
    resp_free(&r);

    expect_get("/json?v=%7B%22a%22%3A%5B1%2C2%5D%2C%22s%22%3A%22x+y%22%7D", 200,
               "{\"a\":[1,2],\"s\":\"x+y\"}");
    /* verbatim, also when it is not JSON (for the job type's parse-error path) */
    expect_get("/json?v=not%20json", 200, "not json");
}

static void test_drop(void **state)
{
    int status = 0;
    char *body = NULL, *raw = NULL;

    assert_int_equal(bw_test_http(port, "GET", "/drop", NULL, &status, &body, NULL), -1);
    assert_null(body);
    static const char req[] = "GET /drop HTTP/1.1\r\nHost: t\r\n\r\n";
    assert_int_equal(bw_test_http_raw(port, req, sizeof req - 1, &raw), 0);
    free(raw);

    resp_t r = get("/drop-after-headers");
    assert_int_equal(r.status, 200);
    expect_header(&r, "Content-Length", "100");
    assert_int_equal(r.len, 3);
    assert_string_equal(r.body, "abc");
    resp_free(&r);
}

static void test_flaky(void **state)
{
    for (int i = 1; i <= 2; i++) {
        resp_t r = get("/flaky/f1/2/503?retry_after=1");
        assert_int_equal(r.status, 503);
        assert_string_equal(r.body, "{\"status\":503}");
        expect_header(&r, "Retry-After", "1");
        resp_free(&r);
        assert_int_equal(bw_test_http_server_requests(S, "f1"), i);
    }
    expect_get("/flaky/f1/2/503?retry_after=1", 200, "{\"key\":\"f1\",\"attempt\":3}");
    expect_get("/flaky/f1/2/503", 200, "{\"key\":\"f1\",\"attempt\":4}");
    assert_int_equal(bw_test_http_server_requests(S, "f1"), 4);

    /* code 0: the connection is dropped instead */
    int status = 0;
    char *body = NULL;
    assert_int_equal(bw_test_http(port, "GET", "/flaky/f0/1/0", NULL, &status, &body, NULL), -1);
    expect_get("/flaky/f0/1/0", 200, "{\"key\":\"f0\",\"attempt\":2}");

    /* keys are decoded; n = 0 never fails */
    expect_get("/flaky/a%20b/0/500", 200, "{\"key\":\"a b\",\"attempt\":1}");
    assert_int_equal(bw_test_http_server_requests(S, "a b"), 1);

    /* bad requests are refused without counting */
    static const char *const bad[] = {"/flaky/x/1/150", "/flaky/x/1", "/flaky/x/1/500/9", "/flaky//1/500",
                                      "/flaky/x/1/500?retry_after=%0A"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        resp_t r = get(bad[i]);
        if (r.status != 400)
            fail_msg("GET %s: %d, want 400", bad[i], r.status);
        resp_free(&r);
    }
    assert_int_equal(bw_test_http_server_requests(S, "x"), 0);
}

static void test_count(void **state)
{
    expect_get("/count/c1", 200, "{\"count\":1}");
    expect_get("/count/c1", 200, "{\"count\":2}");
    resp_t r = call(port, "POST", "/count/c1", NULL, "x", 1);
    assert_string_equal(r.body, "{\"count\":3}");
    resp_free(&r);
    assert_int_equal(bw_test_http_server_requests(S, "c1"), 3);
    assert_int_equal(bw_test_http_server_requests(S, "never-used"), 0);
}

static void test_headers(void **state)
{
    resp_t r = get("/headers?set=X-One:1&set=Set-Cookie:a%3D1&set=Set-Cookie:%20b%3D2%3B%20Path%3D%2F");
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{}");
    expect_header(&r, "X-One", "1");
    assert_non_null(strstr(r.headers, "\r\nSet-Cookie: a=1\r\n"));
    assert_non_null(strstr(r.headers, "\r\nSet-Cookie: b=2; Path=/\r\n"));
    resp_free(&r);

    static const char *const bad[] = {"/headers?set=Bad%20Name:1", "/headers?set=X:a%0D%0Ab",
                                      "/headers?set=nocolon"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        r = get(bad[i]);
        if (r.status != 400)
            fail_msg("GET %s: %d, want 400", bad[i], r.status);
        resp_free(&r);
    }
}

static void test_stream(void **state)
{
    static const char req[] = "GET /stream/3 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    char *raw = NULL;

    assert_true(bw_test_http_raw(port, req, sizeof req - 1, &raw) > 0);
    char *body = strstr(raw, "\r\n\r\n");
    assert_non_null(body);
    *body = '\0';
    assert_non_null(strstr(raw, "\r\nTransfer-Encoding: chunked\r\n"));
    assert_null(strstr(raw, "Content-Length"));
    assert_string_equal(body + 4, "1\r\n[\r\n1\r\n0\r\n2\r\n,1\r\n2\r\n,2\r\n1\r\n]\r\n0\r\n\r\n");
    free(raw);
}

static void test_not_found(void **state)
{
    static const char *const paths[] = {"/", "/nope", "/echo/x", "/status", "/textual"};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        resp_t r = call(port, i % 2 ? "DELETE" : "GET", paths[i], NULL, NULL, 0);
        if (r.status != 404 || strcmp(r.body, "{\"error\":\"not found\"}") != 0)
            fail_msg("%s: %d %s", paths[i], r.status, r.body);
        resp_free(&r);
    }
}

/* ---- connections --------------------------------------------------------------------------- */

static void test_keep_alive(void **state)
{
    /* three pipelined requests on one connection; the last one closes it */
    static const char req[] = "GET /count/ka HTTP/1.1\r\nHost: t\r\n\r\n"
                              "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nxy"
                              "GET /count/ka HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    char *raw = NULL;
    assert_true(bw_test_http_raw(port, req, sizeof req - 1, &raw) > 0);
    assert_int_equal(count_of(raw, "HTTP/1.1 200 OK\r\n"), 3);
    assert_int_equal(count_of(raw, "Connection: close\r\n"), 1);
    assert_non_null(strstr(raw, "\"body\":\"xy\""));
    assert_non_null(strstr(raw, "{\"count\":2}"));
    free(raw);

    /* HTTP/1.0 closes after one response unless asked to keep alive */
    static const char old[] = "GET /count/ka10 HTTP/1.0\r\n\r\n";
    assert_true(bw_test_http_raw(port, old, sizeof old - 1, &raw) > 0);
    assert_int_equal(count_of(raw, "HTTP/1.1 200 OK\r\n"), 1);
    free(raw);

    /* one connection, several requests answered one by one */
    int fd = dial(port);
    for (int i = 1; i <= 3; i++) {
        char want[32];
        send_str(fd, "GET /count/ka-seq HTTP/1.1\r\nHost: t\r\n\r\n");
        snprintf(want, sizeof want, "{\"count\":%d}", i);
        free(read_until(fd, want));
    }
    close(fd);

    /* Expect: 100-continue gets the interim response before the body is sent */
    fd = dial(port);
    send_str(fd, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    char *got = read_until(fd, "\r\n\r\n");
    assert_string_equal(got, "HTTP/1.1 100 Continue\r\n\r\n");
    free(got);
    send_str(fd, "hello");
    got = read_until(fd, "\"body\":\"hello\"");
    assert_int_equal(strncmp(got, "HTTP/1.1 200 OK\r\n", 17), 0);
    free(got);
    close(fd);
}

static void test_malformed(void **state)
{
    static const struct {
        const char *request, *want;
    } cases[] = {
        {"GARBAGE\r\n\r\n", "HTTP/1.1 400 "},
        {"GET /echo HTTP/2.0\r\n\r\n", "HTTP/1.1 400 "},
        {"GET echo HTTP/1.1\r\n\r\n", "HTTP/1.1 400 "},
        {"GET /a b HTTP/1.1\r\n\r\n", "HTTP/1.1 400 "},
        {"GET /echo HTTP/1.1\r\nBad Header: 1\r\n\r\n", "HTTP/1.1 400 "},
        {"GET /echo HTTP/1.1\r\nNoColon\r\n\r\n", "HTTP/1.1 400 "},
        {"GET /echo HTTP/1.1\r\n folded: 1\r\n\r\n", "HTTP/1.1 400 "},
        {"GET /echo HTTP/1.1\r\nContent-Length: abc\r\n\r\n", "HTTP/1.1 400 "},
        {"GET /echo HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", "HTTP/1.1 400 "},
        {"GET /echo%zz HTTP/1.1\r\n\r\n", "HTTP/1.1 400 "},
        {"GET /echo?a=%4 HTTP/1.1\r\n\r\n", "HTTP/1.1 400 "},
        {"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "HTTP/1.1 411 "},
        {"POST /echo HTTP/1.1\r\nContent-Length: 16777217\r\n\r\n", "HTTP/1.1 413 "},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_raw(cases[i].request, strlen(cases[i].request), cases[i].want);

    /* a 70 KiB header block: 431 */
    size_t big = 70 * 1024;
    char *req = malloc(big + 64);
    int n = snprintf(req, 64, "GET /echo HTTP/1.1\r\nX-Big: ");
    memset(req + n, 'a', big);
    memcpy(req + n + big, "\r\n\r\n", 5);
    expect_raw(req, strlen(req), "HTTP/1.1 431 ");
    free(req);

    /* an oversized body the client goes on sending: the 413 still gets through */
    size_t blen = 2 * MiB;
    req = malloc(blen + 128);
    n = snprintf(req, 128, "POST /echo HTTP/1.1\r\nContent-Length: 20000000\r\n\r\n");
    memset(req + n, 'b', blen);
    expect_raw(req, (size_t)n + blen, "HTTP/1.1 413 ");
    free(req);

    /* the largest body allowed is accepted */
    char *body = malloc(16 * MiB);
    memset(body, 'c', 16 * MiB);
    resp_t r = call(port, "POST", "/count/big-body", NULL, body, 16 * MiB);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    free(body);

    expect_get("/count/after-malformed", 200, "{\"count\":1}");
}

static void test_abandoned(void **state)
{
    static const char *const partial[] = {
        "",
        "GET /ec",
        "GET /echo HTTP/1.1\r\nHost: t\r\n",
        "POST /echo HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc",
        "GET /bytes/20000000 HTTP/1.1\r\n\r\n", /* leaves while the server writes */
    };
    for (int reset = 0; reset <= 1; reset++) {
        for (size_t i = 0; i < sizeof partial / sizeof partial[0]; i++) {
            int fd = dial(port);
            if (partial[i][0] != '\0')
                send_str(fd, partial[i]);
            if (reset) { /* RST instead of FIN */
                struct linger lg = {.l_onoff = 1, .l_linger = 0};
                setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            }
            bw_test_sleep_ms(20);
            close(fd);
        }
    }
    bw_test_sleep_ms(100);
    expect_get("/count/after-abandoned", 200, "{\"count\":1}");
}

static void test_counters(void **state)
{
    long before = bw_test_http_server_total(S);
    expect_get("/text", 200, "h\xc3\xa9llo w\xc3\xb6rld");
    expect_get("/nope", 404, "{\"error\":\"not found\"}");
    int status = 0;
    bw_test_http(port, "GET", "/drop", NULL, &status, NULL, NULL);
    assert_int_equal(bw_test_http_server_total(S), before + 3);
    assert_true(bw_test_http_server_max_open(S) >= 1);
}

/* A thousand connections at once, each asking for /delay/200 and kept open until all are
   answered: the single loop thread must hold them all concurrently. */
static void test_thousand_connections(void **state)
{
    static const char req[] = "GET /delay/200 HTTP/1.1\r\nHost: t\r\n\r\n";
    static const char want[] = "\r\n\r\n{\"delayed\":200}";
    struct pollfd *pfd = calloc(CONNS, sizeof *pfd);
    size_t *sent = calloc(CONNS, sizeof *sent), *got = calloc(CONNS, sizeof *got);
    char(*in)[512] = calloc(CONNS, sizeof *in);
    int answered = 0;
    int64_t t0 = bw_test_now_ms(), deadline = t0 + CONNS_DEADLINE_MS;

    for (int i = 0; i < CONNS; i++) {
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        pfd[i].fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        assert_true(pfd[i].fd >= 0);
        if (connect(pfd[i].fd, (struct sockaddr *)&sa, sizeof sa) != 0 && errno != EINPROGRESS)
            fail_msg("connection %d: connect: %s", i, strerror(errno));
        pfd[i].events = POLLOUT | POLLIN;
    }
    while (answered < CONNS && bw_test_now_ms() < deadline) {
        if (poll(pfd, CONNS, 100) < 0 && errno != EINTR)
            fail_msg("poll: %s", strerror(errno));
        for (int i = 0; i < CONNS; i++) {
            if (pfd[i].revents & (POLLERR | POLLHUP))
                fail_msg("connection %d failed after %zu bytes: %.*s", i, got[i], (int)got[i], in[i]);
            if ((pfd[i].revents & POLLOUT) && sent[i] < sizeof req - 1) {
                ssize_t w = send(pfd[i].fd, req + sent[i], sizeof req - 1 - sent[i], MSG_NOSIGNAL);
                if (w < 0 && errno != EAGAIN)
                    fail_msg("connection %d: send: %s", i, strerror(errno));
                sent[i] += w > 0 ? (size_t)w : 0;
                if (sent[i] == sizeof req - 1)
                    pfd[i].events = POLLIN;
            }
            if (pfd[i].revents & POLLIN) {
                ssize_t r = recv(pfd[i].fd, in[i] + got[i], sizeof in[i] - 1 - got[i], 0);
                if (r <= 0)
                    fail_msg("connection %d: closed or failed after %zu bytes", i, got[i]);
                got[i] += (size_t)r;
                in[i][got[i]] = '\0';
                if (strstr(in[i], want) != NULL) {
                    assert_int_equal(strncmp(in[i], "HTTP/1.1 200 OK\r\n", 17), 0);
                    pfd[i].events = 0;
                    answered++;
                }
            }
        }
    }
    int64_t took = bw_test_now_ms() - t0;
    int max_open = bw_test_http_server_max_open(S);
    for (int i = 0; i < CONNS; i++)
        close(pfd[i].fd);
    free(in);
    free(got);
    free(sent);
    free(pfd);
    print_message("%d of %d connections answered in %lld ms, server peak %d open\n", answered, CONNS,
                  (long long)took, max_open);
    assert_int_equal(answered, CONNS);
    assert_true(max_open >= CONNS);
}

/* stop() with connections open (one inside a /delay) returns promptly and closes them. */
/* /header-bytes/<total>: the whole head (status line to blank line) is exactly total bytes, spread over n
   lines; too small a total or a bad name is a 400. */
static void test_header_bytes(void **state)
{
    static const struct {
        const char *path;
        long total, lines;
    } cases[] = {{"/header-bytes/1000?n=1", 1000, 1},
                 {"/header-bytes/65536?n=5000", 65536, 5000},
                 {"/header-bytes/4096?n=10&name=x-dup", 4096, 10}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        char req[256];
        snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", cases[k].path);
        int fd = dial(port);
        send_str(fd, req);
        char *resp = read_until(fd, "\r\n\r\n{}");
        close(fd);
        char *end = strstr(resp, "\r\n\r\n");
        assert_int_equal(end + 4 - resp, cases[k].total);
        int filler = strstr(cases[k].path, "name=") != NULL ? count_of(resp, "\r\nx-dup:") : count_of(resp, "\r\nx-f");
        assert_int_equal(filler, cases[k].lines);
        free(resp);
    }
    resp_t r = get("/header-bytes/10?n=5");
    assert_int_equal(r.status, 400);
    resp_free(&r);
    r = get("/header-bytes/1000?n=1&name=bad%20name");
    assert_int_equal(r.status, 400);
    resp_free(&r);
}

/* /fill/<n>: n bytes of the repeated sequence between prefix and suffix. */
static void test_fill(void **state)
{
    resp_t r = get("/fill/7?with=ab&prefix=%5B&suffix=%5D");
    assert_int_equal(r.status, 200);
    expect_header(&r, "Content-Type", "application/octet-stream");
    assert_int_equal(r.len, 9);
    assert_memory_equal(r.body, "[abababa]", 9);
    resp_free(&r);
    r = get("/fill/100000?with=%FF");
    assert_int_equal(r.len, 100000);
    for (size_t i = 0; i < r.len; i++)
        if ((unsigned char)r.body[i] != 0xff)
            fail_msg("byte %zu is %d", i, (unsigned char)r.body[i]);
    resp_free(&r);
    r = get("/fill/3");
    assert_int_equal(r.len, 3);
    assert_memory_equal(r.body, "aaa", 3);
    resp_free(&r);
    r = get("/fill/x");
    assert_int_equal(r.status, 400);
    resp_free(&r);
}

/* /slow-body/<ms> with ?key=: the first 10 bytes come at once ("<key>.sent" counts them), the other 90
   only after ms. */
static void test_slow_body_and_keys(void **state)
{
    int fd = dial(port);
    send_str(fd, "GET /slow-body/60000?key=sb HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_int_equal(bw_test_http_server_wait(S, "sb.sent", 1, 5000), 1);
    assert_int_equal(bw_test_http_server_requests(S, "sb"), 1);
    char *resp = read_until(fd, "\r\n\r\n0123456789");
    /* the rest is a minute away: nothing more arrives now */
    struct pollfd p = {.fd = fd, .events = POLLIN};
    assert_int_equal(poll(&p, 1, 200), 0);
    free(resp);
    close(fd);

    /* with a short delay the rest follows: the whole body of 100 bytes */
    char want[101];
    memcpy(want, "0123456789", 10);
    memset(want + 10, 'z', 90);
    want[100] = '\0';
    fd = dial(port);
    send_str(fd, "GET /slow-body/10 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    resp = read_until(fd, want);
    assert_non_null(strstr(resp, "Content-Length: 100\r\n"));
    assert_string_equal(strstr(resp, "\r\n\r\n") + 4, want);
    free(resp);
    close(fd);
}

/* /barrier/<n>?key=: nobody is answered before the n-th request with that key has arrived. */
static void test_barrier(void **state)
{
    int fds[3];
    for (int i = 0; i < 2; i++) {
        fds[i] = dial(port);
        send_str(fds[i], "GET /barrier/3?key=bar HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    assert_int_equal(bw_test_http_server_wait(S, "bar", 2, 5000), 2);
    struct pollfd p = {.fd = fds[0], .events = POLLIN};
    assert_int_equal(poll(&p, 1, 200), 0); /* held */
    fds[2] = dial(port);
    send_str(fds[2], "GET /barrier/3?key=bar HTTP/1.1\r\nHost: t\r\n\r\n");
    for (int i = 0; i < 3; i++) {
        char *resp = read_until(fds[i], "{\"released\":3}");
        assert_int_equal(strncmp(resp, "HTTP/1.1 200", 12), 0);
        free(resp);
        close(fds[i]);
    }
    resp_t r = get("/barrier/3");
    assert_int_equal(r.status, 400);
    resp_free(&r);
}

static void test_stop_with_open_connections(void **state)
{
    bw_test_http_server_t *s = bw_test_http_server_start();
    assert_non_null(s);
    int p = bw_test_http_server_port(s), idle = dial(p), waiting = dial(p);
    char c;

    send_str(waiting, "GET /delay/10000 HTTP/1.1\r\nHost: t\r\n\r\n");
    while (bw_test_http_server_total(s) < 1)
        bw_test_sleep_ms(5);
    int64_t t0 = bw_test_now_ms();
    bw_test_http_server_stop(s);
    assert_true(bw_test_now_ms() - t0 < 1000);
    assert_int_equal(recv(idle, &c, 1, 0), 0);
    assert_int_equal(recv(waiting, &c, 1, 0), 0);
    close(idle);
    close(waiting);
    assert_int_equal(bw_test_tcp_probe(p), -1);
}

/* ---- graphql ------------------------------------------------------------------------------- */

/* POSTs body to /graphql, wants want_status and a JSON object back (caller decrefs). */
static json_t *gql(const char *body, int want_status)
{
    resp_t r = call(G.port, "POST", "/graphql", "Content-Type: application/json\r\n", body, strlen(body));
    json_error_t err;
    json_t *j = json_loadb(r.body, r.len, 0, &err);

    if (r.status != want_status || !json_is_object(j))
        fail_msg("POST %s: %d %s, want %d and a JSON object", body, r.status, r.body, want_status);
    resp_free(&r);
    return j;
}

static void test_graphql_hello(void **state)
{
    assert_int_equal(strncmp(G.url, "http://127.0.0.1:", 17), 0);
    json_t *j = gql("{\"query\":\"{ hello }\"}", 200);
    assert_string_equal(jstr(json_object_get(j, "data"), "hello"), "hello world");
    assert_null(json_object_get(j, "errors"));
    json_decref(j);

    j = gql("{\"query\":\"query($n: String) { hello(name: $n) }\",\"variables\":{\"n\":\"bob\"}}", 200);
    assert_string_equal(jstr(json_object_get(j, "data"), "hello"), "hello bob");
    json_decref(j);
}

static void test_graphql_items(void **state)
{
    json_t *j = gql("{\"query\":\"query Cheap($min: Float) { items(min: $min) { id name price } } "
                    "query Other { hello }\",\"variables\":{\"min\":1.5},\"operationName\":\"Cheap\"}",
                    200);
    json_t *items = json_object_get(json_object_get(j, "data"), "items");
    assert_int_equal(json_array_size(items), 2);
    assert_string_equal(jstr(json_array_get(items, 0), "id"), "2");
    assert_string_equal(jstr(json_array_get(items, 1), "name"), "cheese");
    assert_true(json_real_value(json_object_get(json_array_get(items, 0), "price")) == 2.25);
    json_decref(j);

    j = gql("{\"query\":\"{ items { id } }\"}", 200);
    assert_int_equal(json_array_size(json_object_get(json_object_get(j, "data"), "items")), 3);
    json_decref(j);
}

static void test_graphql_partial_data(void **state)
{
    json_t *j = gql("{\"query\":\"{ hello boom }\"}", 200);
    json_t *data = json_object_get(j, "data"), *err = json_array_get(json_object_get(j, "errors"), 0);
    assert_string_equal(jstr(data, "hello"), "hello world");
    assert_true(json_is_null(json_object_get(data, "boom")));
    assert_string_equal(jstr(err, "message"), "boom failed");
    assert_string_equal(json_string_value(json_array_get(json_object_get(err, "path"), 0)), "boom");
    json_decref(j);
}

static void test_graphql_errors(void **state)
{
    json_t *j = gql("{\"query\":\"{ hello \"}", 200);
    const char *msg = jstr(json_array_get(json_object_get(j, "errors"), 0), "message");
    assert_non_null(msg);
    assert_int_equal(strncmp(msg, "Syntax Error", 12), 0);
    assert_null(json_object_get(j, "data"));
    json_decref(j);

    j = gql("{\"query\":\"{ nosuchfield }\"}", 200);
    assert_non_null(json_array_get(json_object_get(j, "errors"), 0));
    json_decref(j);

    static const char *const bad[] = {"not json", "[]", "{\"variables\":{}}",
                                      "{\"query\":\"{ hello }\",\"variables\":[1]}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        j = gql(bad[i], 400);
        assert_non_null(jstr(json_array_get(json_object_get(j, "errors"), 0), "message"));
        json_decref(j);
    }

    resp_t r = call(G.port, "GET", "/health", NULL, NULL, 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "ok");
    resp_free(&r);
    r = call(G.port, "GET", "/graphql", NULL, NULL, 0);
    assert_int_equal(r.status, 405);
    resp_free(&r);
}

static void test_graphql_mutation_and_slow(void **state)
{
    json_t *j = gql("{\"query\":\"mutation { add(a: 2, b: 40) }\"}", 200);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "data"), "add")), 42);
    json_decref(j);

    int64_t t0 = bw_test_now_ms();
    j = gql("{\"query\":\"{ slow(ms: 100) }\"}", 200);
    assert_true(bw_test_now_ms() - t0 >= 90);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "data"), "slow")), 100);
    json_decref(j);
}

int main(void)
{
    const struct CMUnitTest http[] = {
        cmocka_unit_test(test_echo),           cmocka_unit_test(test_status),
        cmocka_unit_test(test_delay),          cmocka_unit_test(test_redirect),
        cmocka_unit_test(test_redirect_chain), cmocka_unit_test(test_bytes),
        cmocka_unit_test(test_text_and_json),  cmocka_unit_test(test_drop),
        cmocka_unit_test(test_flaky),          cmocka_unit_test(test_count),
        cmocka_unit_test(test_headers),        cmocka_unit_test(test_stream),
        cmocka_unit_test(test_not_found),      cmocka_unit_test(test_keep_alive),
        cmocka_unit_test(test_malformed),      cmocka_unit_test(test_abandoned),
        cmocka_unit_test(test_counters),       cmocka_unit_test(test_thousand_connections),
        cmocka_unit_test(test_header_bytes),   cmocka_unit_test(test_fill),
        cmocka_unit_test(test_slow_body_and_keys), cmocka_unit_test(test_barrier),
    };
    const struct CMUnitTest lifecycle[] = {cmocka_unit_test(test_stop_with_open_connections)};
    const struct CMUnitTest graphql[] = {
        cmocka_unit_test(test_graphql_hello),
        cmocka_unit_test(test_graphql_items),
        cmocka_unit_test(test_graphql_partial_data),
        cmocka_unit_test(test_graphql_errors),
        cmocka_unit_test(test_graphql_mutation_and_slow),
    };
    int rc = cmocka_run_group_tests_name("http test server", http, setup_http, teardown_http);
    rc |= cmocka_run_group_tests_name("http test server lifecycle", lifecycle, NULL, NULL);
    rc |= cmocka_run_group_tests_name("graphql test server", graphql, setup_graphql, teardown_graphql);
    return rc;
}
