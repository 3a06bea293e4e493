/*
 * Integration: the approvals HTTP API (net/approvals_http.c in front of core/approvals.c) of a real
 * worker on a real nats-server, spoken to over sockets on its health port: no token configured, a
 * missing, wrong or right token, bad JSON, an unknown id, the body limit, the pending list, a decision
 * whose result arrives on NATS, a second decision and one that is not an option. Waits poll the API
 * with generous deadlines; no fixed sleep is an assertion.
 */
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "http_client.h"
#include "testutil.h"

#define TOKEN "it-is-a-test-token-0123456789abcdef"
#define BEARER "Authorization: Bearer " TOKEN "\r\n"
#define WAIT_MS 10000
#define MAX_BODY (64 * 1024)
#define REQ_SUBJECT "caf.human.request.v1"

static bw_harness_t H;
static int port;

static int start_with(const char *const *env)
{
    port = bw_harness_start_http(&H, env);
    return port > 0 ? 0 : -1;
}

static int setup_no_token(void **state)
{
    (void)state;
    static const char *const env[] = {"WORKER_ID=approvals-http-off", NULL};
    return start_with(env);
}

static int setup_token(void **state)
{
    (void)state;
    static const char *const env[] = {"WORKER_ID=approvals-http", "APPROVAL_TOKEN=" TOKEN, NULL};
    if (start_with(env) != 0)
        return -1;
    return bw_test_client_collect(H.client, REQ_SUBJECT); /* published once the approval is recorded */
}

static int teardown(void **state)
{
    (void)state;
    return bw_harness_finish(&H, 0);
}

/* ---- requests ------------------------------------------------------------------------------ */

typedef struct resp {
    int status;
    char *body, *headers;
    json_t *json; /* the body parsed, when it is JSON */
} resp_t;

static void resp_free(resp_t *r)
{
    free(r->body);
    free(r->headers);
    json_decref(r->json);
    memset(r, 0, sizeof *r);
}

static resp_t call(const char *method, const char *path, const char *headers, const char *body, size_t len)
{
    resp_t r = {0};
    if (bw_test_http_body(port, method, path, headers, body, len, &r.status, &r.body, NULL, &r.headers) !=
        0) {
        bw_test_proc_dump_log(&H.workers[0]);
        fail_msg("%s %s: no answer", method, path);
    }
    r.json = json_loads(r.body, 0, NULL);
    return r;
}

static resp_t post(const char *path, const char *json)
{
    return call("POST", path, BEARER "Content-Type: application/json\r\n", json, strlen(json));
}

static const char *str(const json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s != NULL ? s : "";
}

/* The security headers of every approvals answer, the registry's included. */
static void expect_security_headers(const resp_t *r)
{
    bw_test_http_expect_header(r->headers, "Cache-Control", "no-store");
    bw_test_http_expect_header(r->headers, "X-Content-Type-Options", "nosniff");
    bw_test_http_expect_header(r->headers, "X-Frame-Options", "DENY");
    bw_test_http_expect_header(r->headers, "Referrer-Policy", "no-referrer");
    char *csp = bw_test_http_header(r->headers, "Content-Security-Policy");
    assert_non_null(csp);
    assert_non_null(strstr(csp, "script-src 'self';"));
    assert_null(strstr(csp, "unsafe-inline"));
    free(csp);
}

/* A refusal from the registry: status and {"accepted":false,"reason":reason}. */
static void expect_refused(resp_t *r, int status, const char *reason)
{
    if (r->status != status || r->json == NULL || !json_is_false(json_object_get(r->json, "accepted")) ||
        strcmp(str(r->json, "reason"), reason) != 0)
        fail_msg("want %d %s, got %d: %s", status, reason, r->status, r->body);
    bw_test_http_expect_header(r->headers, "Content-Type", "application/json");
    expect_security_headers(r);
    resp_free(r);
}

/* ---- no token configured -------------------------------------------------------------------- */

static void test_no_token_configured(void **state)
{
    (void)state;
    static const char *const paths[] = {"/approvals", "/approvals/ui", "/approvals/ui.js", "/approvals/x"};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        resp_t r = call("GET", paths[i], BEARER, NULL, 0);
        if (r.status != 404)
            fail_msg("GET %s without APPROVAL_TOKEN: %d, want 404", paths[i], r.status);
        expect_security_headers(&r);
        resp_free(&r);
    }
    resp_t r = post("/approvals/x", "{\"decision\":\"Approve\",\"approver\":\"a\"}");
    assert_int_equal(r.status, 404);
    resp_free(&r);
    r = call("GET", "/healthz", NULL, NULL, 0); /* the probes as before */
    assert_int_equal(r.status, 200);
    resp_free(&r);
}

/* ---- with a token ---------------------------------------------------------------------------- */

static void test_tokens(void **state)
{
    (void)state;
    static const char *const wrong[] = {
        "Authorization: Bearer it-is-a-test-token-0123456789abcdeF\r\n", /* the last byte differs */
        "Authorization: Bearer nope\r\n",
        "Authorization: Basic " TOKEN "\r\n",
    };
    resp_t r = call("GET", "/approvals", NULL, NULL, 0);
    assert_int_equal(r.status, 401);
    bw_test_http_expect_header(r.headers, "WWW-Authenticate", "Bearer");
    expect_security_headers(&r);
    resp_free(&r);
    for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++) {
        r = call("GET", "/approvals", wrong[i], NULL, 0);
        if (r.status != 401)
            fail_msg("%s -> %d, want 401", wrong[i], r.status);
        resp_free(&r);
    }
    r = call("GET", "/approvals", BEARER, NULL, 0);
    assert_int_equal(r.status, 200);
    expect_security_headers(&r);
    assert_non_null(r.json);
    assert_string_equal(str(r.json, "worker_id"), "approvals-http");
    assert_true(json_is_array(json_object_get(r.json, "approvals")));
    resp_free(&r);
    /* the page needs no token */
    r = call("GET", "/approvals/ui", NULL, NULL, 0);
    assert_int_equal(r.status, 200);
    bw_test_http_expect_header(r.headers, "Content-Type", "text/html; charset=utf-8");
    expect_security_headers(&r);
    resp_free(&r);
}

static void test_bad_requests(void **state)
{
    (void)state;
    resp_t r = post("/approvals/nobody", "{\"decision\":");
    expect_refused(&r, 400, "invalid_request");
    r = post("/approvals/nobody", "[1,2]");
    expect_refused(&r, 400, "invalid_request");
    r = post("/approvals/nobody", "{\"decision\":\"Approve\",\"approver\":\"alice\"}");
    expect_refused(&r, 404, "unknown");
    r = call("GET", "/approvals/nobody", BEARER, NULL, 0);
    expect_refused(&r, 404, "unknown");
    r = call("GET", "/approvals/bad%zz", BEARER, NULL, 0);
    assert_int_equal(r.status, 400);
    assert_string_equal(str(r.json, "error"), "invalid_request");
    resp_free(&r);
}

/* 64 KiB reaches the registry (an unknown id: 404); one byte more is refused by the server (413). */
static void test_body_limit(void **state)
{
    (void)state;
    static const char obj[] = "{\"decision\":\"Approve\",\"approver\":\"alice\"}";
    char *big = malloc(MAX_BODY + 2);
    memset(big, ' ', MAX_BODY + 1);
    memcpy(big, obj, sizeof obj - 1);
    big[MAX_BODY + 1] = '\0';
    resp_t r = call("POST", "/approvals/nobody", BEARER, big, MAX_BODY);
    expect_refused(&r, 404, "unknown");
    r = call("POST", "/approvals/nobody", BEARER, big, MAX_BODY + 1);
    assert_int_equal(r.status, 413);
    assert_string_equal(str(r.json, "error"), "too_large");
    expect_security_headers(&r);
    resp_free(&r);
    free(big);
}

/* The approval's view in the list (polling until it is there), or NULL. Caller decrefs. */
static json_t *wait_listed(const char *id)
{
    int64_t end = bw_test_now_ms() + WAIT_MS;
    do {
        resp_t r = call("GET", "/approvals", BEARER, NULL, 0);
        assert_int_equal(r.status, 200);
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(r.json, "approvals"), i, v)
        {
            if (strcmp(str(v, "assignment_id"), id) == 0) {
                json_incref(v);
                resp_free(&r);
                return v;
            }
        }
        resp_free(&r);
        bw_test_sleep_ms(20);
    } while (bw_test_now_ms() < end);
    return NULL;
}

static void test_decide_over_http(void **state)
{
    (void)state;
    assert_int_equal(bw_harness_submit(&H, "http-appr-1", "human_approval", "{\"prompt\":\"p\"}", 60000), 0);
    assert_int_equal(bw_test_client_find(H.client, REQ_SUBJECT, "http-appr-1", WAIT_MS, NULL), 1);
    json_t *v = wait_listed("http-appr-1");
    if (v == NULL) {
        bw_test_proc_dump_log(&H.workers[0]);
        fail_msg("http-appr-1 never listed");
    }
    assert_string_equal(str(v, "prompt"), "p");
    assert_string_equal(str(v, "tenant_id"), "acme");
    assert_int_equal(json_array_size(json_object_get(v, "options")), 2);
    json_decref(v);

    /* one, by id and tenant; another tenant does not see it */
    resp_t r = call("GET", "/approvals/http-appr-1?tenant_id=acme", BEARER, NULL, 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(str(r.json, "assignment_id"), "http-appr-1");
    expect_security_headers(&r);
    resp_free(&r);
    r = call("GET", "/approvals/http-appr-1?tenant_id=other", BEARER, NULL, 0);
    expect_refused(&r, 404, "unknown");

    r = post("/approvals/http-appr-1", "{\"decision\":\"Maybe\",\"approver\":\"alice\"}");
    expect_refused(&r, 400, "not_an_option");
    assert_int_equal(bw_harness_result_count(&H, "http-appr-1"), 0);

    r = post("/approvals/http-appr-1?tenant_id=acme",
             "{\"decision\":\"Approve\",\"approver\":\"alice\",\"comment\":\"looks good\"}");
    if (r.status != 200 || !json_is_true(json_object_get(r.json, "accepted")))
        fail_msg("decision: %d %s", r.status, r.body);
    expect_security_headers(&r);
    resp_free(&r);

    json_t *res = bw_harness_result(&H, "http-appr-1", WAIT_MS);
    assert_non_null(res);
    assert_string_equal(str(res, "status"), "success");
    json_t *out = json_object_get(res, "output");
    assert_string_equal(str(out, "decision"), "Approve");
    assert_string_equal(str(out, "approver"), "alice");
    assert_string_equal(str(out, "comment"), "looks good");
    json_decref(res);

    r = post("/approvals/http-appr-1", "{\"decision\":\"Reject\",\"approver\":\"bob\"}");
    expect_refused(&r, 409, "finished");
    assert_int_equal(bw_harness_result_count(&H, "http-appr-1"), 1);
}

/* The list answers the soonest to expire first, at most ?limit= of them (default 500), with the total. */
static void test_list_limit(void **state)
{
    (void)state;
    assert_int_equal(
        bw_harness_submit(&H, "lim-late", "human_approval", "{\"prompt\":\"p\",\"timeout_ms\":90000}", 0), 0);
    assert_int_equal(
        bw_harness_submit(&H, "lim-soon", "human_approval", "{\"prompt\":\"p\",\"timeout_ms\":60000}", 0), 0);
    assert_int_equal(bw_test_client_find(H.client, REQ_SUBJECT, "lim-late", WAIT_MS, NULL), 1);
    assert_int_equal(bw_test_client_find(H.client, REQ_SUBJECT, "lim-soon", WAIT_MS, NULL), 1);
    resp_t r = call("GET", "/approvals?limit=1", BEARER, NULL, 0);
    assert_int_equal(r.status, 200);
    json_t *list = json_object_get(r.json, "approvals");
    assert_int_equal(json_array_size(list), 1);
    assert_string_equal(str(json_array_get(list, 0), "assignment_id"), "lim-soon");
    assert_true(json_integer_value(json_object_get(r.json, "total")) >= 2);
    assert_true(json_is_true(json_object_get(r.json, "truncated")));
    resp_free(&r);
    r = call("GET", "/approvals", BEARER, NULL, 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(json_array_size(json_object_get(r.json, "approvals")),
                     (size_t)json_integer_value(json_object_get(r.json, "total")));
    assert_true(json_is_false(json_object_get(r.json, "truncated")));
    resp_free(&r);
    r = call("GET", "/approvals?limit=0", BEARER, NULL, 0);
    assert_int_equal(r.status, 400);
    resp_free(&r);
}

int main(void)
{
    const struct CMUnitTest off[] = {cmocka_unit_test(test_no_token_configured)};
    const struct CMUnitTest on[] = {
        cmocka_unit_test(test_tokens),     cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_body_limit), cmocka_unit_test(test_decide_over_http),
        cmocka_unit_test(test_list_limit),
    };
    int rc = cmocka_run_group_tests_name("approvals http: no token", off, setup_no_token, teardown);
    rc |= cmocka_run_group_tests_name("approvals http", on, setup_token, teardown);
    nats_CloseAndWait(2000);
    return bw_test_exit_status(rc);
}
