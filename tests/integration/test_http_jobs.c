/*
 * Integration: the http and graphql job types through a real nats-server and the worker binary, against
 * a real HTTP server (tests/support/http_server.c, on loopback) and a real GraphQL server (graphql-js,
 * tests/support/graphql_server.js). The worker allows loopback by HTTP_ALLOW_CIDRS=127.0.0.0/8 (its
 * default policy refuses it): every refusal below is decided before a packet leaves, so the addresses
 * named (169.254.169.254, 10.0.0.1, ...) are never contacted.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "graphql_server.h"
#include "harness.h"
#include "http_server.h"
#include "testutil.h"

static bw_harness_t H;
static bw_test_http_server_t *S;
static bw_test_graphql_server_t G;
static char base[64]; /* http://127.0.0.1:<port> */

/* TLS: a private CA, a server certificate it signed and one it did not, each served by `openssl
   s_server -www` (which answers GET / with a status page) on a free loopback port. */
static char tls_dir[64];
static char ca_env[128];
static pid_t tls_pid[2];
static int tls_port[2];

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

static int start_tls(void)
{
    snprintf(tls_dir, sizeof tls_dir, "/tmp/bw-tls-XXXXXX");
    if (mkdtemp(tls_dir) == NULL)
        return -1;
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "cd %s && K='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes' &&"
             " openssl req -x509 $K -keyout ca.key -out ca.pem -days 2 -subj /CN=bw-test-ca 2>/dev/null &&"
             " openssl req $K -keyout srv.key -out srv.csr -subj /CN=127.0.0.1 2>/dev/null &&"
             " printf 'subjectAltName=IP:127.0.0.1' > san.ext &&"
             " openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2"
             "   -extfile san.ext 2>/dev/null &&"
             " openssl req -x509 $K -keyout self.key -out self.pem -days 2 -subj /CN=127.0.0.1"
             "   -addext subjectAltName=IP:127.0.0.1 2>/dev/null",
             tls_dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "test_http_jobs: cannot make the TLS certificates with openssl\n");
        return -1;
    }
    snprintf(ca_env, sizeof ca_env, "HTTP_CA_FILE=%s/ca.pem", tls_dir);
    static const char *const names[2] = {"srv", "self"};
    for (int i = 0; i < 2; i++) {
        char accept[32], cert[128], key[128];
        tls_port[i] = free_port();
        snprintf(accept, sizeof accept, "127.0.0.1:%d", tls_port[i]);
        snprintf(cert, sizeof cert, "%s/%s.pem", tls_dir, names[i]);
        snprintf(key, sizeof key, "%s/%s.key", tls_dir, names[i]);
        char *argv[] = {(char *)"openssl",
                        (char *)"s_server",
                        (char *)"-accept",
                        accept,
                        (char *)"-cert",
                        cert,
                        (char *)"-key",
                        key,
                        (char *)"-www",
                        (char *)"-quiet",
                        NULL};
        tls_pid[i] = bw_test_spawn("/usr/bin/openssl", argv, NULL, (int[]){-1, -1, -1});
        if (tls_pid[i] <= 0)
            return -1;
    }
    for (int i = 0; i < 2; i++) {
        int64_t end = bw_test_now_ms() + 10000;
        while (bw_test_tcp_probe(tls_port[i]) != 0 && bw_test_now_ms() < end)
            bw_test_sleep_ms(20);
    }
    return 0;
}

static void stop_tls(void)
{
    for (int i = 0; i < 2; i++)
        if (tls_pid[i] > 0)
            bw_test_terminate(tls_pid[i], 2000);
    if (tls_dir[0] != '\0')
        bw_test_rm_rf(tls_dir);
}

static int setup(void **state)
{
    if (start_tls() != 0)
        return -1;
    /* http's own pool (256 by default) is raised to WORKER_MAX_CONCURRENCY: the thousand run at once */
    const char *const env[] = {"HTTP_ALLOW_CIDRS=127.0.0.0/8", "WORKER_MAX_CONCURRENCY=1100",
                               "HTTP_MAX_REDIRECTS=3", ca_env, NULL};
    S = bw_test_http_server_start();
    if (S == NULL)
        return -1;
    snprintf(base, sizeof base, "http://127.0.0.1:%d", bw_test_http_server_port(S));
    if (bw_test_graphql_server_start(&G) != 0)
        return -1;
    return bw_harness_start(&H, env);
}

static int teardown(void **state)
{
    int rc = bw_harness_finish(&H, 0);
    bw_test_graphql_server_stop(&G);
    bw_test_http_server_stop(S);
    stop_tls();
    return rc;
}

/* Runs a job of the type with the payload (a printf format) and returns its result. */
static json_t *run_type(const char *type, const char *id, int deadline_ms, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static json_t *run_type(const char *type, const char *id, int deadline_ms, const char *fmt, ...)
{
    char payload[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(payload, sizeof payload, fmt, ap);
    va_end(ap);
    assert_int_equal(bw_harness_submit(&H, id, type, payload, deadline_ms), 0);
    json_t *r = bw_harness_result(&H, id, deadline_ms + 10000);
    if (r == NULL)
        fail_msg("no result for %s", id);
    return r;
}

#define run(id, ...) run_type("http", id, 15000, __VA_ARGS__)

static const char *str(json_t *r, const char *key)
{
    const char *s = json_string_value(json_object_get(r, key));
    return s != NULL ? s : "";
}

static json_t *out(json_t *r)
{
    return json_object_get(r, "output");
}

static void expect_error(json_t *r, const char *status, const char *code, const char *msg_part)
{
    if (strcmp(str(r, "status"), status) != 0 || strcmp(str(r, "error_code"), code) != 0 ||
        (msg_part != NULL && strstr(str(r, "error_message"), msg_part) == NULL)) {
        char *s = json_dumps(r, JSON_COMPACT);
        fail_msg("want %s/%s with '%s', got %s", status, code, msg_part ? msg_part : "", s);
    }
}

static void test_request_and_response(void **state)
{
    json_t *r = run("h-echo",
                    "{\"method\":\"post\",\"url\":\"%s/echo\",\"query\":{\"a\":\"x y\",\"n\":[1,2]},"
                    "\"headers\":{\"X-One\":\"1\"},\"body\":{\"k\":[1,2]}}",
                    base);
    assert_string_equal(str(r, "status"), "success");
    json_t *o = out(r), *b = json_object_get(o, "body");
    assert_int_equal(json_integer_value(json_object_get(o, "status")), 200);
    assert_int_equal(json_integer_value(json_object_get(o, "attempts")), 1);
    assert_true(json_is_integer(json_object_get(o, "elapsed_ms")));
    assert_string_equal(json_string_value(json_object_get(b, "method")), "POST");
    assert_string_equal(json_string_value(json_object_get(b, "query")), "a=x+y&n=1&n=2");
    assert_string_equal(json_string_value(json_object_get(b, "body")), "{\"k\":[1,2]}");
    json_t *h = json_object_get(b, "headers");
    assert_string_equal(json_string_value(json_object_get(h, "x-one")), "1");
    assert_string_equal(json_string_value(json_object_get(h, "content-type")), "application/json");
    assert_string_equal(json_string_value(json_object_get(h, "x-tenant-id")), "acme");
    const char *tp = json_string_value(json_object_get(h, "traceparent"));
    assert_non_null(tp);
    assert_int_equal(strlen(tp), 55);
    assert_memory_equal(tp, "00-", 3);
    assert_string_equal(json_string_value(json_object_get(json_object_get(o, "headers"), "content-type")),
                        "application/json");
    json_decref(r);
    /* a string body is sent as it is, with the job's own content type */
    r = run(
        "h-text-body",
        "{\"method\":\"PUT\",\"url\":\"%s/echo\",\"body\":\"a=1\",\"headers\":{\"content-type\":\"text/x\"}}",
        base);
    b = json_object_get(out(r), "body");
    assert_string_equal(json_string_value(json_object_get(b, "body")), "a=1");
    assert_string_equal(json_string_value(json_object_get(json_object_get(b, "headers"), "content-type")),
                        "text/x");
    json_decref(r);
}

static void test_bodies(void **state)
{
    json_t *r = run("h-text", "{\"url\":\"%s/text\"}", base);
    assert_string_equal(json_string_value(json_object_get(out(r), "body")), "h\xc3\xa9llo w\xc3\xb6rld");
    json_decref(r);
    r = run("h-binary", "{\"url\":\"%s/bytes/4?binary=1\"}", base);
    assert_null(json_object_get(out(r), "body"));
    assert_string_equal(json_string_value(json_object_get(out(r), "body_base64")), "AAECAw==");
    json_decref(r);
    r = run("h-json", "{\"url\":\"%s/json?v=%%5B1%%2C2%%5D\"}", base);
    assert_int_equal(json_array_size(json_object_get(out(r), "body")), 2);
    json_decref(r);
    /* a NUL inside a JSON string of the body */
    r = run("h-json-nul", "{\"url\":\"%s/json?v=%%7B%%22a%%22%%3A%%22x%%5Cu0000y%%22%%7D\"}", base);
    assert_int_equal(json_string_length(json_object_get(json_object_get(out(r), "body"), "a")), 3);
    json_decref(r);
    /* cut at max_response_bytes, or refused */
    r = run("h-big", "{\"url\":\"%s/bytes/100000\",\"max_response_bytes\":1000}", base);
    assert_string_equal(str(r, "status"), "success");
    assert_int_equal(json_string_length(json_object_get(out(r), "body")), 1000);
    assert_true(json_is_true(json_object_get(out(r), "truncated")));
    json_decref(r);
    r = run("h-big-refused", "{\"url\":\"%s/bytes/100000\",\"max_response_bytes\":1000,\"truncate\":false}",
            base);
    expect_error(r, "error", "RESPONSE_TOO_LARGE", "1000");
    json_decref(r);
    /* repeated headers */
    r = run("h-headers", "{\"url\":\"%s/headers?set=X-A:1&set=X-A:2&set=Set-Cookie:a=1&set=Set-Cookie:b=2\"}",
            base);
    json_t *h = json_object_get(out(r), "headers");
    assert_string_equal(json_string_value(json_object_get(h, "x-a")), "1, 2");
    assert_int_equal(json_array_size(json_object_get(h, "set-cookie")), 2);
    json_decref(r);
}

static void test_status_codes(void **state)
{
    json_t *r = run("h-404", "{\"url\":\"%s/status/404\"}", base);
    assert_string_equal(str(r, "status"), "success");
    assert_int_equal(json_integer_value(json_object_get(out(r), "status")), 404);
    json_decref(r);
    r = run("h-404-fail", "{\"url\":\"%s/status/404\",\"fail_on_status\":true}", base);
    expect_error(r, "error", "HTTP_4XX", "404");
    json_decref(r);
    r = run("h-503-fail",
            "{\"url\":\"%s/status/"
            "503\",\"fail_on_status\":true,\"retry\":{\"max_attempts\":2,\"backoff_ms\":10}}",
            base);
    expect_error(r, "error", "HTTP_5XX", "2 attempts");
    assert_int_equal(json_integer_value(json_object_get(r, "attempts")), 2);
    json_decref(r);
}

static void test_retries(void **state)
{
    /* 5xx, 429 and dropped connections are retried; the attempt count is reported */
    json_t *r = run("h-flaky5",
                    "{\"url\":\"%s/flaky/f5/2/503\",\"retry\":{\"max_attempts\":3,\"backoff_ms\":20}}", base);
    assert_int_equal(json_integer_value(json_object_get(out(r), "status")), 200);
    assert_int_equal(json_integer_value(json_object_get(out(r), "attempts")), 3);
    assert_int_equal(bw_test_http_server_requests(S, "f5"), 3);
    json_decref(r);
    r = run("h-flaky-drop", "{\"url\":\"%s/flaky/fd/1/0\",\"retry\":{\"max_attempts\":2,\"backoff_ms\":20}}",
            base);
    assert_int_equal(json_integer_value(json_object_get(out(r), "status")), 200);
    json_decref(r);
    /* 4xx other than 429 is not */
    r = run("h-flaky4", "{\"url\":\"%s/flaky/f4/1/400\",\"retry\":{\"max_attempts\":3,\"backoff_ms\":20}}",
            base);
    assert_int_equal(json_integer_value(json_object_get(out(r), "status")), 400);
    assert_int_equal(bw_test_http_server_requests(S, "f4"), 1);
    json_decref(r);
    /* Retry-After (seconds) is waited for */
    int64_t t0 = bw_test_now_ms();
    r = run("h-ra",
            "{\"url\":\"%s/flaky/ra/1/429?retry_after=1\",\"retry\":{\"max_attempts\":2,\"backoff_ms\":1}}",
            base);
    assert_int_equal(json_integer_value(json_object_get(out(r), "status")), 200);
    assert_true(bw_test_now_ms() - t0 >= 1000);
    json_decref(r);
    /* ... but not past the deadline: the last answer comes back instead */
    t0 = bw_test_now_ms();
    r = run_type("http", "h-ra-late", 3000,
                 "{\"url\":\"%s/flaky/rl/1/503?retry_after=60\",\"retry\":{\"max_attempts\":3}}", base);
    assert_int_equal(json_integer_value(json_object_get(out(r), "status")), 503);
    assert_int_equal(bw_test_http_server_requests(S, "rl"), 1);
    assert_true(bw_test_now_ms() - t0 < 3000);
    json_decref(r);
    /* POST is not retried once it reached the server... */
    r = run("h-post",
            "{\"method\":\"POST\",\"url\":\"%s/flaky/p1/1/"
            "503\",\"body\":\"x\",\"retry\":{\"max_attempts\":3,\"backoff_ms\":10}}",
            base);
    assert_int_equal(json_integer_value(json_object_get(out(r), "status")), 503);
    assert_int_equal(bw_test_http_server_requests(S, "p1"), 1);
    json_decref(r);
    /* ... unless it says it may be */
    r = run("h-post-key",
            "{\"method\":\"POST\",\"url\":\"%s/flaky/p2/1/"
            "503\",\"body\":\"x\",\"headers\":{\"Idempotency-Key\":\"k1\"},"
            "\"retry\":{\"max_attempts\":3,\"backoff_ms\":10}}",
            base);
    assert_int_equal(json_integer_value(json_object_get(out(r), "status")), 200);
    assert_int_equal(bw_test_http_server_requests(S, "p2"), 2);
    json_decref(r);
    r = run("h-post-ni",
            "{\"method\":\"PATCH\",\"url\":\"%s/flaky/p3/1/"
            "502\",\"body\":\"x\",\"retry\":{\"max_attempts\":3,\"backoff_ms\":10,"
            "\"non_idempotent\":true}}",
            base);
    assert_int_equal(json_integer_value(json_object_get(out(r), "status")), 200);
    json_decref(r);
    /* a POST that never reached a server (connection refused) is retried */
    r = run("h-post-refused", "{\"method\":\"POST\",\"url\":\"http://127.0.0.1:9/"
                              "x\",\"body\":\"x\",\"retry\":{\"max_attempts\":3,\"backoff_ms\":10}}");
    expect_error(r, "error", "HTTP_REQUEST_FAILED", "3 attempts");
    json_decref(r);
}

static void test_time(void **state)
{
    /* timeout_ms cuts one attempt */
    json_t *r =
        run("h-slow", "{\"url\":\"%s/delay/3000\",\"timeout_ms\":200,\"retry\":{\"max_attempts\":1}}", base);
    expect_error(r, "timeout", "TIMEOUT", NULL);
    json_decref(r);
    /* the job's deadline cuts a slow response */
    int64_t t0 = bw_test_now_ms();
    r = run_type("http", "h-deadline", 500, "{\"url\":\"%s/delay/5000\"}", base);
    assert_string_equal(str(r, "status"), "timeout");
    assert_true(bw_test_now_ms() - t0 < 500 + 1500);
    json_decref(r);
    /* cancel during a transfer: the server has sent the head and 10 of 100 bytes of the body (so the
       job runs and its response is arriving) when the cancel goes out; the rest would come 8 s later */
    char payload[256];
    snprintf(payload, sizeof payload, "{\"url\":\"%s/slow-body/8000?key=h-cancel2\"}", base);
    assert_int_equal(bw_harness_submit(&H, "h-cancel2", "http", payload, 20000), 0);
    assert_int_equal(bw_test_http_server_wait(S, "h-cancel2.sent", 1, 10000), 1);
    t0 = bw_test_now_ms();
    assert_int_equal(bw_harness_cancel(&H, "h-cancel2", "test"), 0);
    r = bw_harness_result(&H, "h-cancel2", 7000);
    assert_non_null(r);
    assert_string_equal(str(r, "status"), "cancelled");
    assert_true(bw_test_now_ms() - t0 < 6000);
    json_decref(r);
}

/* ---- hostile responses ---- */

/* The head of /header-bytes/<total>: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" and the blank line. */
#define HEAD_FIXED (17 + 19 + 2)

/* HTTP_MAX_RESPONSE_HEADER_BYTES (64 KiB here) counts every byte of a hop's head: exactly at it is
   fine, one more fails with RESPONSE_HEADERS_TOO_LARGE, which is not retried - as many small headers,
   as one huge one, and as one longer than libcurl itself takes (curl's "Out of memory" before). */
static void test_header_limits(void **state)
{
    json_t *r = run("hl-at-many", "{\"url\":\"%s/header-bytes/65536?n=5000\"}", base);
    assert_string_equal(str(r, "status"), "success");
    json_t *h = json_object_get(out(r), "headers");
    assert_int_equal(json_object_size(h), 5000 + 1);
    assert_non_null(json_object_get(h, "x-f4999"));
    json_decref(r);
    r = run("hl-past-many",
            "{\"url\":\"%s/header-bytes/65537?n=5000&key=hl-past-many\",\"retry\":{\"max_attempts\":3,"
            "\"backoff_ms\":10}}",
            base);
    expect_error(r, "error", "RESPONSE_HEADERS_TOO_LARGE", "65536");
    assert_int_equal(json_integer_value(json_object_get(r, "attempts")), 1);
    assert_int_equal(bw_test_http_server_requests(S, "hl-past-many"), 1);
    json_decref(r);
    r = run("hl-at-one", "{\"url\":\"%s/header-bytes/65536?n=1\"}", base);
    assert_string_equal(str(r, "status"), "success");
    assert_int_equal(json_string_length(json_object_get(json_object_get(out(r), "headers"), "x-f0")),
                     65536 - HEAD_FIXED - 7); /* "x-f0:" and "\r\n" */
    json_decref(r);
    r = run("hl-past-one", "{\"url\":\"%s/header-bytes/65537?n=1\"}", base);
    expect_error(r, "error", "RESPONSE_HEADERS_TOO_LARGE", "65536");
    json_decref(r);
    r = run("hl-curl",
            "{\"url\":\"%s/header-bytes/200000?n=1&key=hl-curl\",\"retry\":{\"max_attempts\":3,"
            "\"backoff_ms\":10}}",
            base);
    expect_error(r, "error", "RESPONSE_HEADERS_TOO_LARGE", "libcurl");
    assert_int_equal(bw_test_http_server_requests(S, "hl-curl"), 1);
    json_decref(r);
    /* a repeated name is joined with ", " */
    r = run("hl-dup", "{\"url\":\"%s/header-bytes/65536?n=5000&name=x-dup\"}", base);
    assert_string_equal(str(r, "status"), "success");
    const char *v = json_string_value(json_object_get(json_object_get(out(r), "headers"), "x-dup"));
    assert_non_null(v);
    int commas = 0;
    for (const char *p = v; (p = strstr(p, ", ")) != NULL; p += 2)
        commas++;
    assert_int_equal(commas, 4999);
    json_decref(r);
}

/* Whether s is n or more bytes of the one character c (of clen bytes) repeated, nothing else. */
static int all_of(const char *s, size_t len, const char *c, size_t clen, size_t n)
{
    if (len < n || len % clen != 0)
        return 0;
    for (size_t i = 0; i < len; i += clen)
        if (memcmp(s + i, c, clen) != 0)
            return 0;
    return 1;
}

/* Runs /fill/<n>?with=<with> and checks a success whose body is text (or base64 when b64) of at least
   min bytes, all the character c, truncated as said. */
static void expect_fill(const char *id, long n, const char *with, int b64, const char *c, size_t min,
                        int truncated)
{
    json_t *r = run(id, "{\"url\":\"%s/fill/%ld?with=%s\"}", base, n, with);
    if (strcmp(str(r, "status"), "success") != 0)
        fail_msg("%s: %s %s", id, str(r, "error_code"), str(r, "error_message"));
    json_t *body = json_object_get(out(r), b64 ? "body_base64" : "body");
    if (!json_is_string(body) ||
        !all_of(json_string_value(body), json_string_length(body), c, strlen(c), min))
        fail_msg("%s: the body is not %zu+ bytes of '%s' (%zu bytes)", id, min, c, json_string_length(body));
    assert_int_equal(json_is_true(json_object_get(out(r), "truncated")), truncated);
    json_decref(r);
}

/* A body's encoded size is what must fit in the result (1 MiB: the test nats-server's max_payload):
   1 MB of bytes that grow when encoded is cut to fit, with truncated: true, and the result arrives. */
static void test_escaped_bodies(void **state)
{
    int dlq_before = bw_test_client_count(H.client, BW_H_DLQ);
    /* base64, 4/3: 0xFF bytes are "////" */
    expect_fill("x-ff", 1000000, "%FF", 1, "/", 1000000, 1);
    expect_fill("x-ff-fits", 699999, "%FF", 1, "/", 699999 / 3 * 4, 0);
    /* string escapes: '"' is 2 bytes, a control character 6 */
    expect_fill("x-quote", 1000000, "%22", 0, "\"", 500000, 1);
    expect_fill("x-ctrl", 1000000, "%01", 0, "\x01", 170000, 1);
    /* multi-byte UTF-8 costs its bytes: 999,999 bytes of euro signs fit whole; 2.1 MB are cut at a
       character boundary (never a broken sequence, which would make the body base64) */
    expect_fill("x-euro-fits", 999999, "%E2%82%AC", 0, "\xe2\x82\xac", 999999, 0);
    expect_fill("x-euro", 2100000, "%E2%82%AC", 0, "\xe2\x82\xac", 1000000, 1);
    /* truncate: false refuses instead */
    json_t *r = run("x-quote-refused", "{\"url\":\"%s/fill/1000000?with=%%22\",\"truncate\":false}", base);
    expect_error(r, "error", "RESPONSE_TOO_LARGE", "result message");
    json_decref(r);
    /* JSON counts as it is written again: 600 KB of 1e5 (written 100000.0) does not fit as JSON,
       so it comes back as the text it is */
    r = run("x-json-grows", "{\"url\":\"%s/fill/600000?with=1e5,&prefix=%%5B&suffix=0%%5D\"}", base);
    assert_string_equal(str(r, "status"), "success");
    assert_int_equal(json_string_length(json_object_get(out(r), "body")), 600003);
    assert_null(json_object_get(out(r), "truncated"));
    json_decref(r);
    assert_int_equal(bw_test_client_count(H.client, BW_H_DLQ), dlq_before);
}

/* GraphQL: a result that would not fit once re-written is RESPONSE_TOO_LARGE (not a RESULT_TOO_LARGE
   after all the work); a long error message is quoted cut at a character boundary. */
static void test_graphql_bounds(void **state)
{
    json_t *r =
        run_type("graphql", "gb-grows", 15000,
                 "{\"url\":\"%s/fill/600000?with=1e5,&prefix=%%7B%%22data%%22%%3A%%5B&suffix=0%%5D%%7D\","
                 "\"query\":\"{ x }\"}",
                 base);
    expect_error(r, "error", "RESPONSE_TOO_LARGE", "GraphQL result");
    json_decref(r);
    r = run_type(
        "graphql", "gb-message", 15000,
        "{\"url\":\"%s/fill/4000?with=%%C3%%A9&prefix=%%7B%%22errors%%22%%3A%%5B%%7B%%22message%%22%%3A%%22"
        "&suffix=%%22%%7D%%5D%%7D\",\"query\":\"{ x }\"}",
        base);
    expect_error(r, "error", "GRAPHQL_ERROR", "\xc3\xa9\xc3\xa9...");
    const char *m = str(r, "error_message");
    assert_true(strlen(m) <= 600);
    assert_null(strstr(m, "\xef\xbf\xbd")); /* no U+FFFD: no character was cut */
    json_decref(r);
}

static void test_egress(void **state)
{
    json_t *r = run("e-meta", "{\"url\":\"http://169.254.169.254/latest/meta-data/\"}");
    expect_error(r, "error", "EGRESS_DENIED", "169.254.169.254");
    json_decref(r);
    r = run("e-private", "{\"url\":\"http://10.0.0.1/\"}");
    expect_error(r, "error", "EGRESS_DENIED", "private");
    json_decref(r);
    r = run("e-v6-mapped", "{\"url\":\"http://[::ffff:169.254.169.254]/\"}");
    expect_error(r, "error", "EGRESS_DENIED", "link-local");
    json_decref(r);
    r = run("e-scheme", "{\"url\":\"file:///etc/passwd\"}");
    expect_error(r, "error", "EGRESS_DENIED", "http and https");
    json_decref(r);
    /* redirects: into a forbidden range, to another scheme, too many */
    r = run("e-redirect", "{\"url\":\"%s/redirect?to=http%%3A%%2F%%2F169.254.169.254%%2F\"}", base);
    expect_error(r, "error", "EGRESS_DENIED", "169.254.169.254");
    json_decref(r);
    r = run("e-redirect-private", "{\"url\":\"%s/redirect?to=http%%3A%%2F%%2F192.168.1.1%%2F\"}", base);
    expect_error(r, "error", "EGRESS_DENIED", "192.168.1.1");
    json_decref(r);
    r = run("e-redirect-scheme", "{\"url\":\"%s/redirect?to=file%%3A%%2F%%2F%%2Fetc%%2Fpasswd\"}", base);
    expect_error(r, "error", "EGRESS_DENIED", "http and https");
    json_decref(r);
    r = run("e-redirects", "{\"url\":\"%s/redirect-chain/5\"}", base);
    expect_error(r, "error", "HTTP_REQUEST_FAILED", "redirect");
    json_decref(r);
    r = run("e-redirects-ok", "{\"url\":\"%s/redirect-chain/2\"}", base);
    assert_true(json_is_true(json_object_get(json_object_get(out(r), "body"), "end")));
    json_decref(r);
    r = run("e-no-follow", "{\"url\":\"%s/redirect-chain/2\",\"follow_redirects\":false}", base);
    assert_int_equal(json_integer_value(json_object_get(out(r), "status")), 302);
    json_decref(r);
}

/* TLS certificates are verified: against HTTP_CA_FILE here; a certificate no trusted CA signed fails. */
static void test_tls(void **state)
{
    json_t *r = run("t-ok", "{\"url\":\"https://127.0.0.1:%d/\"}", tls_port[0]);
    assert_string_equal(str(r, "status"), "success");
    assert_int_equal(json_integer_value(json_object_get(out(r), "status")), 200);
    json_decref(r);
    r = run("t-self", "{\"url\":\"https://127.0.0.1:%d/\",\"retry\":{\"max_attempts\":1}}", tls_port[1]);
    expect_error(r, "error", "HTTP_REQUEST_FAILED", "certificate");
    json_decref(r);
}

static void test_bad_payloads(void **state)
{
    json_t *r = run("b-nourl", "{}");
    expect_error(r, "error", "MISSING_URL", NULL);
    json_decref(r);
    r = run("b-url", "{\"url\":\"http://\"}");
    expect_error(r, "error", "INVALID_URL", NULL);
    json_decref(r);
    r = run("b-method", "{\"url\":\"%s/echo\",\"method\":\"BREW\"}", base);
    expect_error(r, "error", "INVALID_METHOD", NULL);
    json_decref(r);
    r = run("b-header", "{\"url\":\"%s/echo\",\"headers\":{\"X-A\":\"1\\r\\nX-Injected: 1\"}}", base);
    expect_error(r, "error", "INVALID_PAYLOAD", "X-A");
    json_decref(r);
    r = run("b-retry", "{\"url\":\"%s/echo\",\"retry\":{\"max_attempts\":0}}", base);
    expect_error(r, "error", "INVALID_PAYLOAD", "retry");
    json_decref(r);
}

static void test_thousand_in_flight(void **state)
{
    char payload[256];
    /* every request waits at the server until all 1,000 are there: they can only succeed together */
    snprintf(payload, sizeof payload,
             "{\"url\":\"%s/barrier/1000?key=k-barrier\",\"retry\":{\"max_attempts\":1}}", base);
    int64_t t0 = bw_test_now_ms();
    assert_int_equal(bw_harness_submit_many_with(&H, "k", 1000, "http", payload, 30000), 0);
    char id[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(id, sizeof id, "k-%d", i);
        json_t *r = bw_harness_result(&H, id, 30000);
        if (r == NULL || strcmp(str(r, "status"), "success") != 0)
            fail_msg("k-%d: %s", i, r ? str(r, "error_message") : "no result");
        json_decref(r);
    }
    /* all at once: 1,000 connections open together */
    assert_true(bw_test_http_server_max_open(S) >= 1000);
    assert_true(bw_test_now_ms() - t0 < 60000);
}

static void test_graphql(void **state)
{
    json_t *r = run_type(
        "graphql", "g-hello", 15000,
        "{\"url\":\"%s\",\"query\":\"query($n: String) { hello(name: $n) }\",\"variables\":{\"n\":\"bob\"}}",
        G.url);
    assert_string_equal(str(r, "status"), "success");
    assert_string_equal(json_string_value(json_object_get(json_object_get(out(r), "data"), "hello")),
                        "hello bob");
    assert_null(json_object_get(out(r), "errors"));
    json_decref(r);
    r = run_type("graphql", "g-items", 15000, "{\"url\":\"%s\",\"query\":\"{ items(min: 2) { name } }\"}",
                 G.url);
    assert_int_equal(json_array_size(json_object_get(json_object_get(out(r), "data"), "items")), 2);
    json_decref(r);
    /* partial data: a success with its errors */
    r = run_type("graphql", "g-partial", 15000, "{\"url\":\"%s\",\"query\":\"{ hello boom }\"}", G.url);
    assert_string_equal(str(r, "status"), "success");
    assert_int_equal(json_array_size(json_object_get(out(r), "errors")), 1);
    json_decref(r);
    /* errors and no data */
    r = run_type("graphql", "g-syntax", 15000, "{\"url\":\"%s\",\"query\":\"{ hello \"}", G.url);
    expect_error(r, "error", "GRAPHQL_ERROR", "Syntax Error");
    json_decref(r);
    r = run_type("graphql", "g-mutation", 15000,
                 "{\"url\":\"%s\",\"query\":\"mutation { add(a: 2, b: 3) }\",\"operationName\":null}", G.url);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(out(r), "data"), "add")), 5);
    json_decref(r);
    r = run_type("graphql", "g-noquery", 15000, "{\"url\":\"%s\"}", G.url);
    expect_error(r, "error", "MISSING_QUERY", NULL);
    json_decref(r);
    r = run_type("graphql", "g-egress", 15000,
                 "{\"url\":\"http://169.254.169.254/graphql\",\"query\":\"{ hello }\"}");
    expect_error(r, "error", "EGRESS_DENIED", NULL);
    json_decref(r);
}

/* ---- a worker whose header limit is out of the way (16 MiB): collecting is linear ---- */

static int setup_flood(void **state)
{
    static const char *const env[] = {"HTTP_ALLOW_CIDRS=127.0.0.0/8", "HTTP_MAX_RESPONSE_HEADER_BYTES=16MiB",
                                      NULL};
    snprintf(base, sizeof base, "http://127.0.0.1:%d", bw_test_http_server_port(S));
    return bw_harness_start(&H, env);
}

static int teardown_flood(void **state)
{
    return bw_harness_finish(&H, 0);
}

/* One hostile response while a sleep of 50 ms runs beside it: the sleep's result must come on time
   (joining 60,000 repeats of a header used to take ~30 s of the loop, and nothing else ran). */
static void flood_with_sleep(const char *id, const char *query, int want_header_values)
{
    char payload[512], key[64], sleep_id[64];
    snprintf(key, sizeof key, "%s", id);
    snprintf(payload, sizeof payload, "{\"url\":\"%s/header-bytes/%s&key=%s\"}", base, query, key);
    snprintf(sleep_id, sizeof sleep_id, "%s-sleep", id);
    int64_t t0 = bw_test_now_ms();
    assert_int_equal(bw_harness_submit(&H, id, "http", payload, 180000), 0);
    assert_int_equal(bw_test_http_server_wait(S, key, 1, 10000), 1);
    int64_t t1 = bw_test_now_ms();
    assert_int_equal(bw_harness_submit(&H, sleep_id, "sleep", "{\"ms\":50}", 180000), 0);
    /* the waits are long so that a stalled loop is measured, not only detected */
    json_t *s = bw_harness_result(&H, sleep_id, 180000);
    int64_t sleep_ms = bw_test_now_ms() - t1;
    json_t *r = bw_harness_result(&H, id, 180000);
    int64_t flood_ms = bw_test_now_ms() - t0;
    fprintf(stderr,
            "    %s: the response took %lld ms (elapsed_ms %lld), the sleep of 50 ms beside it %lld ms\n", id,
            (long long)flood_ms, (long long)json_integer_value(json_object_get(out(r), "elapsed_ms")),
            (long long)sleep_ms);
    assert_non_null(s);
    assert_non_null(r);
    assert_string_equal(str(s, "status"), "success");
    if (strcmp(str(r, "status"), "success") != 0)
        fail_msg("%s: %s %s", id, str(r, "error_code"), str(r, "error_message"));
    json_t *h = json_object_get(out(r), "headers"), *v = json_object_get(h, "a");
    if (want_header_values > 0) { /* set-cookie: an array */
        v = json_object_get(h, "set-cookie");
        assert_int_equal(json_array_size(v), want_header_values);
    } else {
        /* "a, a, ...": the value bytes the head had room for, and ", " between each two */
        assert_int_equal(json_string_length(v), (300100 - HEAD_FIXED - 60000 * 4) + 2 * (60000 - 1));
    }
    assert_true(sleep_ms < 5000);
    assert_true(flood_ms < 10000);
    json_decref(s);
    json_decref(r);
}

/* A payload with n query pairs or n headers (each "<k><i>": "v"): building the request is linear (it
   used to copy the whole query once per pair, and walk the header list once per header). The sleep
   submitted right after it is admitted only once the loop has built the request. */
static void payload_flood(const char *id, const char *field, int n)
{
    json_t *p = json_pack("{s:s+}", "url", base, "/status/200"), *o = json_object();
    char k[32], sleep_id[64];
    for (int i = 0; i < n; i++) {
        snprintf(k, sizeof k, "%s%d", strcmp(field, "query") == 0 ? "q" : "X-H", i);
        json_object_set_new(o, k, json_string("v"));
    }
    json_object_set_new(p, field, o);
    json_object_set_new(p, "retry", json_pack("{s:i}", "max_attempts", 1));
    char *payload = json_dumps(p, JSON_COMPACT);
    json_decref(p);
    snprintf(sleep_id, sizeof sleep_id, "%s-sleep", id);
    int64_t t0 = bw_test_now_ms();
    assert_int_equal(bw_harness_submit(&H, id, "http", payload, 180000), 0);
    assert_int_equal(bw_harness_submit(&H, sleep_id, "sleep", "{\"ms\":50}", 180000), 0);
    free(payload);
    json_t *s = bw_harness_result(&H, sleep_id, 180000);
    int64_t sleep_ms = bw_test_now_ms() - t0;
    json_t *r = bw_harness_result(&H, id, 180000);
    fprintf(stderr, "    %s: %d %s entries; the sleep of 50 ms submitted after it took %lld ms\n", id, n,
            field, (long long)sleep_ms);
    assert_non_null(s);
    assert_non_null(r);
    /* the test server refuses a head over 64 KiB: 431 is the answer that shows the request went out */
    assert_string_equal(str(r, "status"), "success");
    assert_int_equal(json_integer_value(json_object_get(out(r), "status")), 431);
    assert_true(sleep_ms < 5000);
    json_decref(s);
    json_decref(r);
}

static void test_payload_flood(void **state)
{
    payload_flood("pf-query", "query", 60000);
    payload_flood("pf-headers", "headers", 30000);
}

static void test_header_flood(void **state)
{
    /* 60,000 lines "a:a" (300,100 bytes): one header repeated */
    flood_with_sleep("fl-repeat", "300100?n=60000&name=a", 0);
    /* 20,000 set-cookie lines: an array */
    flood_with_sleep("fl-cookie", "300000?n=20000&name=set-cookie", 20000);
    /* libcurl's own limit on a head (300 KiB in all in 7.88) is named for what it is, and not retried */
    json_t *r = run("fl-curl-total",
                    "{\"url\":\"%s/header-bytes/420000?n=80000&name=a&key=fl-curl-total\",\"retry\":{"
                    "\"max_attempts\":3,\"backoff_ms\":10}}",
                    base);
    expect_error(r, "error", "RESPONSE_HEADERS_TOO_LARGE", "libcurl");
    assert_int_equal(bw_test_http_server_requests(S, "fl-curl-total"), 1);
    json_decref(r);
    /* headers within the limit whose JSON (control characters: 6 bytes each) cannot fit in a result */
    r = run("fl-no-room", "{\"url\":\"%s/header-bytes/300000?n=1000&with=%%01\"}", base);
    expect_error(r, "error", "RESPONSE_HEADERS_TOO_LARGE", "result message");
    json_decref(r);
}

/* ---- a worker that allows loopback by host name only ---- */

static int setup_hosts(void **state)
{
    static const char *const env[] = {"HTTP_ALLOW_HOSTS=localhost", NULL};
    return bw_harness_start(&H, env);
}

static int teardown_hosts(void **state)
{
    return bw_harness_finish(&H, 0);
}

/* HTTP_ALLOW_HOSTS=localhost: the name may reach loopback, the address itself may not, and the check is
   made again on each hop: a redirect from localhost to 127.0.0.1 is refused. */
static void test_allowed_by_host_name(void **state)
{
    int port = bw_test_http_server_port(S);
    json_t *r = run("n-name", "{\"url\":\"http://localhost:%d/json\"}", port);
    assert_string_equal(str(r, "status"), "success");
    json_decref(r);
    r = run("n-ip", "{\"url\":\"http://127.0.0.1:%d/json\"}", port);
    expect_error(r, "error", "EGRESS_DENIED", "loopback");
    json_decref(r);
    r = run("n-hop", "{\"url\":\"http://localhost:%d/redirect?to=http%%3A%%2F%%2F127.0.0.1%%3A%d%%2Fjson\"}",
            port, port);
    expect_error(r, "error", "EGRESS_DENIED", "127.0.0.1");
    json_decref(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_and_response),
        cmocka_unit_test(test_bodies),
        cmocka_unit_test(test_status_codes),
        cmocka_unit_test(test_retries),
        cmocka_unit_test(test_time),
        cmocka_unit_test(test_header_limits),
        cmocka_unit_test(test_escaped_bodies),
        cmocka_unit_test(test_graphql_bounds),
        cmocka_unit_test(test_egress),
        cmocka_unit_test(test_tls),
        cmocka_unit_test(test_bad_payloads),
        cmocka_unit_test(test_graphql),
        cmocka_unit_test(test_thousand_in_flight),
    };
    const struct CMUnitTest flood[] = {
        cmocka_unit_test(test_header_flood),
        cmocka_unit_test(test_payload_flood),
    };
    const struct CMUnitTest by_host[] = {
        cmocka_unit_test(test_allowed_by_host_name),
    };
    int failed = cmocka_run_group_tests_name("http", tests, setup, teardown);
    /* the first group's teardown stopped its servers: a new HTTP server for the others */
    S = bw_test_http_server_start();
    failed += S != NULL ? cmocka_run_group_tests_name("http-flood", flood, setup_flood, teardown_flood) : 1;
    failed += S != NULL ? cmocka_run_group_tests_name("http-hosts", by_host, setup_hosts, teardown_hosts) : 1;
    bw_test_http_server_stop(S);
    return failed;
}
