/*
 * The approvals API front (net/approvals_http.c) on a real health server on 127.0.0.1: the token, the
 * routes, the page split into its parts, the security headers, the limits. The registry behind it is
 * the one thing replaced here (a recording bw_approvals_http, below): the real one is exercised through
 * the worker binary by tests/integration/test_approvals_http.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
/* cmocka after the headers it needs */
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_client.h"
#include "net/approvals_http.h"
#include "net/http.h"
#include "obs/metrics.h"
#include "testutil.h"

#define TOKEN "0123456789abcdef-token"

/* ---- a recording registry ------------------------------------------------------------------ */

static struct calls {
    pthread_mutex_t mu;
    int n;
    bw_approvals_t *registry;
    bw_approvals_op_t op;
    char id[256], tenant[256];
    bool has_id, has_tenant;
    size_t body_len;
    atomic_bool detached; /* set once attach(NULL) returned: no call may come after */
    atomic_int late_calls;
    size_t limit;
} C = {.mu = PTHREAD_MUTEX_INITIALIZER};

static int registry_a, registry_b; /* their addresses stand for two registries */

/* The registry answers on the loop in the worker; here at once, with what it was given. Weak: the
   worker's own (core/approvals.c) is not linked into this program. */
__attribute__((weak)) void bw_approvals_http(bw_approvals_t *r, bw_approvals_op_t op, const char *id,
                                             const char *tenant, size_t limit, const char *body, size_t len,
                                             bw_http_reply_t *reply)
{
    char out[128];
    (void)body;
    if (atomic_load(&C.detached))
        atomic_fetch_add(&C.late_calls, 1);
    pthread_mutex_lock(&C.mu);
    C.n++;
    C.registry = r;
    C.op = op;
    C.has_id = id != NULL;
    C.has_tenant = tenant != NULL;
    snprintf(C.id, sizeof C.id, "%s", id ? id : "");
    snprintf(C.tenant, sizeof C.tenant, "%s", tenant ? tenant : "");
    C.body_len = len;
    C.limit = limit;
    pthread_mutex_unlock(&C.mu);
    int n = snprintf(out, sizeof out, "{\"op\":%d}", (int)op);
    bw_http_reply(reply, 200, "application/json", NULL, out, (size_t)n);
}

static int calls(void)
{
    pthread_mutex_lock(&C.mu);
    int n = C.n;
    pthread_mutex_unlock(&C.mu);
    return n;
}

/* ---- the server ---------------------------------------------------------------------------- */

typedef struct srv {
    bw_approvals_front_t *front;
    bw_http_t *http;
    int port;
} srv_t;

static void srv_start_front(srv_t *s, bw_approvals_front_t *f, bool attach)
{
    char err[256] = "";
    bw_http_opts_t o = {.bind = "127.0.0.1:0",
                        .worker_id = "w",
                        .max_connections = 64,
                        .header_timeout_ms = 2000,
                        .app_prefix = BW_APPROVALS_PREFIX,
                        .app = bw_approvals_front_route,
                        .app_ud = f,
                        .app_max_body = BW_APPROVALS_MAX_BODY,
                        .app_headers = BW_APPROVALS_HEADERS};
    s->front = f;
    if (attach)
        bw_approvals_front_attach(f, (bw_approvals_t *)&registry_a);
    s->http = bw_http_create(&o, err, sizeof err);
    if (s->http == NULL)
        fail_msg("bw_http_create: %s", err);
    s->port = bw_http_port(s->http);
}

static void srv_start(srv_t *s, const char *token, bool attach)
{
    srv_start_front(s, bw_approvals_front_create(token), attach);
}

static void srv_stop(srv_t *s)
{
    bw_http_destroy(s->http);
    bw_approvals_front_destroy(s->front);
}

typedef struct resp {
    int status;
    char *body, *headers;
    size_t body_len;
} resp_t;

static void resp_free(resp_t *r)
{
    free(r->body);
    free(r->headers);
}

static resp_t req(const srv_t *s, const char *method, const char *path, const char *auth, const char *body,
                  size_t len)
{
    resp_t r = {0};
    char hdr[512] = "";
    if (auth != NULL)
        snprintf(hdr, sizeof hdr, "Authorization: %s\r\n", auth);
    if (bw_test_http_body(s->port, method, path, hdr, body, len, &r.status, &r.body, &r.body_len,
                          &r.headers) != 0)
        fail_msg("%s %s: no answer", method, path);
    return r;
}

/* Every approvals answer carries the security headers, once each. */
static void expect_security_headers(const resp_t *r)
{
    bw_test_http_expect_header(r->headers, "Cache-Control", "no-store");
    bw_test_http_expect_header(r->headers, "X-Content-Type-Options", "nosniff");
    bw_test_http_expect_header(r->headers, "X-Frame-Options", "DENY");
    bw_test_http_expect_header(r->headers, "Referrer-Policy", "no-referrer");
    bw_test_http_expect_header(r->headers, "Content-Security-Policy", BW_APPROVALS_CSP);
    const char *p = strstr(r->headers, "Cache-Control");
    assert_non_null(p);
    assert_null(strstr(p + 1, "Cache-Control"));
}

static void expect_status(const srv_t *s, const char *method, const char *path, const char *auth, int status,
                          const char *error)
{
    resp_t r = req(s, method, path, auth, NULL, 0);
    if (r.status != status)
        fail_msg("%s %s (auth %s): %d, want %d: %s", method, path, auth ? auth : "none", r.status, status,
                 r.body);
    expect_security_headers(&r);
    if (error != NULL) {
        char want[64];
        snprintf(want, sizeof want, "\"error\":\"%s\"", error);
        if (strstr(r.body, want) == NULL)
            fail_msg("%s %s: body %s, want %s", method, path, r.body, want);
        bw_test_http_expect_header(r.headers, "Content-Type", "application/json");
    }
    resp_free(&r);
}

/* ---- tests --------------------------------------------------------------------------------- */

static void test_no_token_is_404_everywhere(void **state)
{
    (void)state;
    static const char *const paths[] = {"/approvals",        "/approvals/ui", "/approvals/ui.js",
                                        "/approvals/ui.css", "/approvals/x",  "/approvals/%zz",
                                        "/approvals/a/b"};
    for (int empty = 0; empty < 2; empty++) {
        srv_t s;
        srv_start(&s, empty ? "" : NULL, true);
        int n0 = calls();
        for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
            expect_status(&s, "GET", paths[i], NULL, 404, "not_found");
            expect_status(&s, "GET", paths[i], "Bearer " TOKEN, 404, "not_found");
            expect_status(&s, "POST", paths[i], "Bearer " TOKEN, 404, "not_found");
        }
        assert_int_equal(calls(), n0);
        srv_stop(&s);
    }
}

static void test_tokens(void **state)
{
    (void)state;
    static const char *const refused[] = {
        "Bearer 0123456789abcdef-tokeN", /* same length, the last byte differs */
        "Bearer 0123456789abcdef-toke",  /* a prefix */
        "Bearer 0123456789abcdef-token2",
        "Bearer ",
        "Bearer",
        "Basic " TOKEN, /* another scheme */
        "Bearer" TOKEN,
        TOKEN,
        "Bearer x " TOKEN,
    };
    static const char *const accepted[] = {"Bearer " TOKEN, "bearer " TOKEN, "BEARER   " TOKEN};
    srv_t s;
    srv_start(&s, TOKEN, true);
    int n0 = calls();
    resp_t r = req(&s, "GET", "/approvals", NULL, NULL, 0);
    assert_int_equal(r.status, 401);
    bw_test_http_expect_header(r.headers, "WWW-Authenticate", "Bearer");
    expect_security_headers(&r);
    resp_free(&r);
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        r = req(&s, "GET", "/approvals/x", refused[i], NULL, 0);
        if (r.status != 401)
            fail_msg("Authorization: %s -> %d, want 401", refused[i], r.status);
        bw_test_http_expect_header(r.headers, "WWW-Authenticate", "Bearer error=\"invalid_token\"");
        assert_non_null(strstr(r.body, "\"error\":\"unauthorized\""));
        resp_free(&r);
    }
    assert_int_equal(calls(), n0);
    for (size_t i = 0; i < sizeof accepted / sizeof accepted[0]; i++)
        expect_status(&s, "GET", "/approvals", accepted[i], 200, NULL);
    assert_int_equal(calls(), n0 + 3);
    assert_ptr_equal(C.registry, &registry_a);
    srv_stop(&s);
}

/* The routes reach the registry with the operation, the decoded id and tenant, and the body. */
static void test_routes(void **state)
{
    (void)state;
    srv_t s;
    srv_start(&s, TOKEN, true);
    const char *a = "Bearer " TOKEN;
    expect_status(&s, "GET", "/approvals", a, 200, NULL);
    assert_int_equal(C.op, BW_APPROVALS_LIST);
    assert_false(C.has_id);
    assert_false(C.has_tenant);
    expect_status(&s, "GET", "/approvals?tenant_id=t%201&x=y", a, 200, NULL);
    assert_int_equal(C.op, BW_APPROVALS_LIST);
    assert_string_equal(C.tenant, "t 1");
    expect_status(&s, "GET", "/approvals?tenant_id=a+b", a, 200, NULL);
    assert_string_equal(C.tenant, "a b");
    expect_status(&s, "GET", "/approvals?tenant_id=", a, 200, NULL);
    assert_false(C.has_tenant);
    assert_int_equal(C.limit, 0); /* the registry's default */
    expect_status(&s, "GET", "/approvals?limit=1", a, 200, NULL);
    assert_int_equal(C.limit, 1);
    expect_status(&s, "GET", "/approvals?tenant_id=x&limit=100000", a, 200, NULL); /* at the limit */
    assert_int_equal(C.limit, 100000);
    expect_status(&s, "HEAD", "/approvals/job%2F1%20%C3%A9", a, 200, NULL);
    assert_int_equal(C.op, BW_APPROVALS_GET);
    assert_string_equal(C.id, "job/1 \xc3\xa9");
    assert_false(C.has_tenant);
    resp_t r = req(&s, "POST", "/approvals/j1?tenant_id=acme", a, "{\"decision\":\"Approve\"}", 22);
    assert_int_equal(r.status, 200);
    expect_security_headers(&r); /* the registry's answer too */
    resp_free(&r);
    assert_int_equal(C.op, BW_APPROVALS_DECIDE);
    assert_string_equal(C.id, "j1");
    assert_string_equal(C.tenant, "acme");
    assert_int_equal(C.body_len, 22);
    /* not routes */
    expect_status(&s, "GET", "/approvals/", a, 404, "not_found");
    expect_status(&s, "GET", "/approvals/a/b", a, 404, "not_found");
    expect_status(&s, "GET", "/approvals/ui/x", a, 404, "not_found");
    srv_stop(&s);
}

static void test_bad_escapes(void **state)
{
    (void)state;
    static const char *const bad[] = {"/approvals/%zz",
                                      "/approvals/a%2",
                                      "/approvals/a%",
                                      "/approvals/a%00b",
                                      "/approvals?tenant_id=%G1",
                                      "/approvals/x?tenant_id=%00",
                                      "/approvals?tenant_id=a&tenant_id=b",
                                      "/approvals?limit=100001", /* one past the limit */
                                      "/approvals?limit=0",
                                      "/approvals?limit=",
                                      "/approvals?limit=-1",
                                      "/approvals?limit=1x",
                                      "/approvals?limit=99999999999999999999",
                                      "/approvals?limit=1&limit=2"};
    srv_t s;
    srv_start(&s, TOKEN, true);
    int n0 = calls();
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_status(&s, "GET", bad[i], "Bearer " TOKEN, 400, "invalid_request");
    expect_status(&s, "POST", "/approvals/%zz", "Bearer " TOKEN, 400, "invalid_request");
    assert_int_equal(calls(), n0);
    srv_stop(&s);
}

static void test_methods(void **state)
{
    (void)state;
    srv_t s;
    srv_start(&s, TOKEN, true);
    const char *a = "Bearer " TOKEN;
    resp_t r = req(&s, "POST", "/approvals", a, "{}", 2);
    assert_int_equal(r.status, 405);
    bw_test_http_expect_header(r.headers, "Allow", "GET, HEAD");
    expect_security_headers(&r);
    resp_free(&r);
    r = req(&s, "DELETE", "/approvals/x", a, NULL, 0);
    assert_int_equal(r.status, 405);
    bw_test_http_expect_header(r.headers, "Allow", "GET, HEAD, POST");
    resp_free(&r);
    r = req(&s, "PUT", "/approvals/ui", NULL, "x", 1);
    assert_int_equal(r.status, 405);
    bw_test_http_expect_header(r.headers, "Allow", "GET, HEAD");
    resp_free(&r);
    expect_status(&s, "POST", "/approvals/ui.js", NULL, 405, "method_not_allowed");
    srv_stop(&s);
}

static void test_body_limit(void **state)
{
    (void)state;
    srv_t s;
    srv_start(&s, TOKEN, true);
    char *big = malloc(BW_APPROVALS_MAX_BODY + 1);
    memset(big, ' ', BW_APPROVALS_MAX_BODY + 1);
    resp_t r = req(&s, "POST", "/approvals/x", "Bearer " TOKEN, big, BW_APPROVALS_MAX_BODY);
    assert_int_equal(r.status, 200);
    assert_int_equal(C.body_len, BW_APPROVALS_MAX_BODY);
    resp_free(&r);
    int n0 = calls();
    r = req(&s, "POST", "/approvals/x", "Bearer " TOKEN, big, BW_APPROVALS_MAX_BODY + 1);
    assert_int_equal(r.status, 413);
    expect_security_headers(&r);
    assert_non_null(strstr(r.body, "\"error\":\"too_large\""));
    resp_free(&r);
    assert_int_equal(calls(), n0);
    free(big);
    srv_stop(&s);
}

static void test_not_attached(void **state)
{
    (void)state;
    srv_t s;
    srv_start(&s, TOKEN, false);
    const char *a = "Bearer " TOKEN;
    expect_status(&s, "GET", "/approvals", a, 503, "unavailable");
    expect_status(&s, "POST", "/approvals/x", a, 503, "unavailable");
    expect_status(&s, "GET", "/approvals/ui", NULL, 200, NULL); /* the page needs no registry */
    bw_approvals_front_attach(s.front, (bw_approvals_t *)&registry_b);
    expect_status(&s, "GET", "/approvals", a, 200, NULL);
    assert_ptr_equal(C.registry, &registry_b);
    bw_approvals_front_attach(s.front, NULL);
    expect_status(&s, "GET", "/approvals", a, 503, "unavailable");
    srv_stop(&s);
}

/* Whether the served page has an inline script or style (any <script> without src, any <style>). */
static bool has_inline_code(const char *page)
{
    for (const char *p = page; (p = strstr(p, "<script")) != NULL; p++) {
        const char *gt = strchr(p, '>');
        if (gt == NULL || memmem(p, (size_t)(gt - p), "src=", 4) == NULL ||
            strncmp(gt + 1, "</script>", 9) != 0)
            return true;
    }
    return strstr(page, "<style") != NULL;
}

static void expect_part(const srv_t *s, const char *path, const char *type, const char *want)
{
    resp_t r = req(s, "GET", path, NULL, NULL, 0);
    assert_int_equal(r.status, 200);
    bw_test_http_expect_header(r.headers, "Content-Type", type);
    expect_security_headers(&r);
    if (want != NULL)
        assert_string_equal(r.body, want);
    resp_free(&r);
}

/* The page is served without the token, split so that no inline code is left; its parts are served
   at ui.js and ui.css. */
static void test_page_split(void **state)
{
    (void)state;
    static const char page[] = "<!doctype html><html><head><title>t</title><style>\nbody{color:red}\n</style>"
                               "</head><body><p>x</p><script>\nconst a = 1 < 2;\n</script></body></html>";
    static const char want[] = "<!doctype html><html><head><title>t</title>"
                               "<link rel=\"stylesheet\" href=\"/approvals/ui.css\"></head><body><p>x</p>"
                               "<script src=\"/approvals/ui.js\"></script></body></html>";
    srv_t s;
    srv_start_front(&s, bw_approvals_front_create_page(TOKEN, page, sizeof page - 1), true);
    expect_part(&s, "/approvals/ui", "text/html; charset=utf-8", want);
    expect_part(&s, "/approvals/ui.js", "text/javascript; charset=utf-8", "\nconst a = 1 < 2;\n");
    expect_part(&s, "/approvals/ui.css", "text/css; charset=utf-8", "\nbody{color:red}\n");
    resp_t r = req(&s, "HEAD", "/approvals/ui", NULL, NULL, 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "");
    resp_free(&r);
    srv_stop(&s);

    /* script first, with attributes; no style */
    static const char page2[] = "<body><script type=\"module\">go()</script><p>y</p></body>";
    srv_start_front(&s, bw_approvals_front_create_page(TOKEN, page2, sizeof page2 - 1), true);
    expect_part(&s, "/approvals/ui", "text/html; charset=utf-8",
                "<body><script src=\"/approvals/ui.js\"></script><p>y</p></body>");
    expect_part(&s, "/approvals/ui.js", "text/javascript; charset=utf-8", "go()");
    expect_part(&s, "/approvals/ui.css", "text/css; charset=utf-8", "");
    srv_stop(&s);

    /* the embedded page, whatever it holds now: no inline code is served */
    srv_start(&s, TOKEN, true);
    r = req(&s, "GET", "/approvals/ui", NULL, NULL, 0);
    assert_int_equal(r.status, 200);
    bw_test_http_expect_header(r.headers, "Content-Type", "text/html; charset=utf-8");
    expect_security_headers(&r);
    assert_true(r.body_len > 0);
    assert_false(has_inline_code(r.body));
    resp_free(&r);
    expect_part(&s, "/approvals/ui.js", "text/javascript; charset=utf-8", NULL);
    expect_part(&s, "/approvals/ui.css", "text/css; charset=utf-8", NULL);
    srv_stop(&s);
}

typedef struct flood {
    int port;
    atomic_bool stop;
    atomic_int sent;
} flood_t;

static void *flood_thread(void *arg)
{
    flood_t *f = arg;
    while (!atomic_load(&f->stop)) {
        int status = 0;
        char *body = NULL;
        if (bw_test_http(f->port, "GET", "/approvals", "Authorization: Bearer " TOKEN "\r\n", &status, &body,
                         NULL) == 0)
            atomic_fetch_add(&f->sent, 1);
        free(body);
    }
    return NULL;
}

/* attach is race-free: once attach(NULL) returns, no call into the registry starts or is running. */
static void test_attach_races_requests(void **state)
{
    (void)state;
    srv_t s;
    flood_t f = {0};
    pthread_t t[2];
    srv_start(&s, TOKEN, true);
    f.port = s.port;
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, flood_thread, &f), 0);
    int n0 = calls();
    int64_t end = bw_test_now_ms() + 5000;
    for (int i = 0; calls() < n0 + 20 && bw_test_now_ms() < end; i++)
        bw_approvals_front_attach(s.front,
                                  i % 2 ? (bw_approvals_t *)&registry_a : (bw_approvals_t *)&registry_b);
    bw_approvals_front_attach(s.front, NULL);
    atomic_store(&C.detached, true);
    /* requests keep coming (ten more answered): none may reach a registry */
    int sent = atomic_load(&f.sent);
    end = bw_test_now_ms() + 5000;
    while (atomic_load(&f.sent) < sent + 10 && bw_test_now_ms() < end)
        bw_test_sleep_ms(1);
    atomic_store(&f.stop, true);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    print_message("%d requests, %d reached a registry\n", atomic_load(&f.sent), calls() - n0);
    assert_true(atomic_load(&f.sent) >= sent + 10);
    assert_true(calls() >= n0 + 20);
    assert_int_equal(atomic_load(&C.late_calls), 0);
    atomic_store(&C.detached, false);
    srv_stop(&s);
}

int main(void)
{
    static const char *const types[] = {NULL};
    bw_metrics_init(types);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_token_is_404_everywhere),
        cmocka_unit_test(test_tokens),
        cmocka_unit_test(test_routes),
        cmocka_unit_test(test_bad_escapes),
        cmocka_unit_test(test_methods),
        cmocka_unit_test(test_body_limit),
        cmocka_unit_test(test_not_attached),
        cmocka_unit_test(test_page_split),
        cmocka_unit_test(test_attach_races_requests),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
