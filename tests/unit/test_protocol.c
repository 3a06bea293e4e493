/*
 * Unit tests for core/protocol.c. The router's own assignments (fixtures) must decode, and every result
 * encoded from them, in every status, must be accepted by the router's intake rules (router_check).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/protocol.h"
#include "router_check.h"

static const char *hdr_from_json(void *ud, const char *name)
{
    return json_string_value(json_object_get(ud, name));
}

static bw_decode_status_t decode_str(const char *s, json_t *headers, bw_assignment_t *a, bw_decode_error_t *e)
{
    bw_headers_t h = {hdr_from_json, headers};
    return bw_assignment_decode(s, strlen(s), headers ? &h : NULL, 60000, a, e);
}

/* Asserts the router accepts the encoded result and that no top-level field is null. */
static void assert_router_accepts(const bw_assignment_t *a, const bw_result_t *r)
{
    size_t len;
    char *s = bw_result_encode(a, r, "worker-test", false, &len);
    json_t *hdr = json_pack("{ssssss}", "tenant_id", a->tenant_id, "version", "1", "Nats-Msg-Id", "result-x");
    if (a->trace_id)
        json_object_set_new(hdr, "trace_id", json_string(a->trace_id));
    bw_router_check_t *rc = bw_router_check_create();
    char code[64];
    int verdict = bw_router_check(rc, "caf.exec.result.v1", hdr, s, len, code, sizeof code);
    if (verdict != 0)
        fail_msg("router rejects %s: %s", code, s);
    json_t *o = json_loads(s, 0, NULL);
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v)
    {
        assert_false(json_is_null(v));
    }
    json_decref(o);
    bw_router_check_destroy(rc);
    json_decref(hdr);
    free(s);
}

static void test_router_assignments_decode_and_answer(void **state)
{
    FILE *f = fopen(BW_FIXTURES_DIR "/router/assignments.jsonl", "r");
    assert_non_null(f);
    char *line = NULL;
    size_t cap = 0;
    int n = 0;
    while (getline(&line, &cap, f) > 0) {
        json_t *rec = json_loads(line, 0, NULL);
        assert_non_null(rec);
        json_t *payload = json_object_get(rec, "payload");
        char *data = json_dumps(payload, JSON_COMPACT);
        bw_assignment_t a;
        bw_decode_error_t e;
        assert_int_equal(decode_str(data, json_object_get(rec, "headers"), &a, &e), BW_DECODE_OK);
        assert_string_equal(a.assignment_id, json_string_value(json_object_get(payload, "assignment_id")));
        assert_string_equal(a.request_id, json_string_value(json_object_get(payload, "request_id")));
        assert_string_equal(a.tenant_id, json_string_value(json_object_get(payload, "tenant_id")));
        /* the payload's correlation.trace_id is the one to trust, never the 128-hex header: where the
           payload has none, no trace_id is emitted at all */
        const char *want =
            json_string_value(json_object_get(json_object_get(payload, "correlation"), "trace_id"));
        if (want != NULL)
            assert_string_equal(a.trace_id, want);
        else
            assert_null(a.trace_id);
        json_t *job = json_object_get(payload, "job");
        assert_string_equal(a.job_type, json_string_value(json_object_get(job, "type")));
        assert_string_equal(a.provider_id, json_string_value(json_object_get(
                                               json_object_get(payload, "executor"), "provider_id")));
        int64_t deadline =
            json_integer_value(json_object_get(json_object_get(payload, "options"), "deadline_ms"));
        json_t *pt = json_object_get(json_object_get(job, "payload"), "timeout_ms");
        int64_t expect = pt && json_integer_value(pt) < deadline ? json_integer_value(pt) : deadline;
        assert_int_equal(a.timeout_ms, expect);
        json_t *out = json_pack("{si}", "n", n);
        bw_result_t ok = {.status = BW_ST_SUCCESS,
                          .output = out,
                          .latency_ms = 3,
                          .timestamp_ms = 1767600000000,
                          .attempts = 1};
        assert_router_accepts(&a, &ok);
        bw_result_t err = {.status = BW_ST_ERROR, .error_code = "UNKNOWN_JOB_TYPE", .error_message = "x"};
        assert_router_accepts(&a, &err);
        bw_result_t to = {.status = BW_ST_TIMEOUT, .error_code = "TIMEOUT", .error_message = "late"};
        assert_router_accepts(&a, &to);
        bw_result_t ca = {.status = BW_ST_CANCELLED, .error_code = "CANCELLED", .error_message = "stop"};
        assert_router_accepts(&a, &ca);
        json_decref(out);
        bw_assignment_dispose(&a);
        free(data);
        json_decref(rec);
        n++;
    }
    free(line);
    fclose(f);
    assert_int_equal(n, 30);
}

static void test_envelope_input_and_output(void **state)
{
    const char *in = "{\"version\":\"v1\",\"kind\":\"exec_assign\",\"data\":{\"version\":\"1.0\","
                     "\"assignment_id\":\"a-1\","
                     "\"tenant_id\":\"t\",\"job\":{\"type\":\"echo\",\"payload\":{\"x\":1}}}}";
    bw_assignment_t a;
    bw_decode_error_t e;
    assert_int_equal(decode_str(in, NULL, &a, &e), BW_DECODE_OK);
    assert_true(a.enveloped);
    assert_string_equal(a.request_id, "a-1");
    assert_int_equal(a.timeout_ms, 60000);
    bw_result_t r = {.status = BW_ST_SUCCESS, .output = json_object_get(a.payload, "x")};
    size_t len;
    char *s = bw_result_encode(&a, &r, "w1", true, &len);
    json_t *o = json_loads(s, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(o, "version")), "v1");
    assert_string_equal(json_string_value(json_object_get(o, "kind")), "exec_result");
    json_t *d = json_object_get(o, "data");
    assert_string_equal(json_string_value(json_object_get(d, "version")), "1");
    assert_string_equal(json_string_value(json_object_get(d, "assignment_id")), "a-1");
    assert_string_equal(json_string_value(json_object_get(d, "provider_id")), "w1");
    assert_int_equal(json_integer_value(json_object_get(d, "output")), 1);
    json_decref(o);
    free(s);
    bw_assignment_dispose(&a);
}

typedef struct bad {
    const char *json;
    bw_decode_status_t st;
    const char *code;
} bad_t;

static void test_bad_input(void **state)
{
    static const bad_t cases[] = {
        {"not json", BW_DECODE_DEAD, "PARSE_ERROR"},
        {"", BW_DECODE_DEAD, "PARSE_ERROR"},
        {"[1,2]", BW_DECODE_DEAD, "DECODE_ERROR"},
        {"{\"tenant_id\":\"t\",\"job\":{\"type\":\"echo\"}}", BW_DECODE_DEAD, "DECODE_ERROR"},
        {"{\"assignment_id\":7,\"tenant_id\":\"t\",\"job\":{\"type\":\"echo\"}}", BW_DECODE_DEAD,
         "DECODE_ERROR"},
        {"{\"assignment_id\":\"\",\"tenant_id\":\"t\"}", BW_DECODE_DEAD, "DECODE_ERROR"},
        {"{\"assignment_id\":\"a\",\"job\":{\"type\":\"echo\"}}", BW_DECODE_DEAD, "DECODE_ERROR"},
        {"{\"assignment_id\":\"a\",\"tenant_id\":\"\",\"job\":{\"type\":\"echo\"}}", BW_DECODE_DEAD,
         "DECODE_ERROR"},
        {"{\"kind\":\"heartbeat\",\"data\":{\"assignment_id\":\"a\"}}", BW_DECODE_DEAD, "DECODE_ERROR"},
        {"{\"assignment_id\":\"a\",\"tenant_id\":\"t\"}", BW_DECODE_INVALID, "INVALID_ASSIGNMENT"},
        {"{\"assignment_id\":\"a\",\"tenant_id\":\"t\",\"job\":{\"type\":\"\"}}", BW_DECODE_INVALID,
         "INVALID_ASSIGNMENT"},
        {"{\"assignment_id\":\"a\",\"tenant_id\":\"t\",\"job\":{\"type\":\"echo\",\"payload\":\"s\"}}",
         BW_DECODE_INVALID, "INVALID_ASSIGNMENT"},
        {"{\"assignment_id\":\"a\",\"tenant_id\":\"t\",\"job\":{\"type\":\"echo\",\"payload_ref\":\"s3://"
         "x\"}}",
         BW_DECODE_INVALID, "PAYLOAD_REF_UNSUPPORTED"},
        {"{\"version\":\"2\",\"assignment_id\":\"a\",\"tenant_id\":\"t\",\"job\":{\"type\":\"echo\"}}",
         BW_DECODE_INVALID, "INVALID_ASSIGNMENT"},
        {"{\"version\":1,\"assignment_id\":\"a\",\"tenant_id\":\"t\",\"job\":{\"type\":\"echo\"}}",
         BW_DECODE_INVALID, "INVALID_ASSIGNMENT"},
        {"{\"assignment_id\":\"a\",\"tenant_id\":\"t\",\"job\":{\"type\":\"echo\"},\"options\":{\"deadline_"
         "ms\":-5}}",
         BW_DECODE_INVALID, "INVALID_ASSIGNMENT"},
        {"{\"assignment_id\":\"a\",\"tenant_id\":\"t\",\"job\":{\"type\":\"echo\"},\"options\":{\"deadline_"
         "ms\":\"5\"}}",
         BW_DECODE_INVALID, "INVALID_ASSIGNMENT"},
        {"{\"assignment_id\":\"a\",\"tenant_id\":\"t\",\"job\":{\"type\":\"echo\"},\"options\":[]}",
         BW_DECODE_INVALID, "INVALID_ASSIGNMENT"},
        {"{\"assignment_id\":\"a\",\"tenant_id\":\"t\",\"job\":{\"type\":\"sleep\",\"payload\":{\"timeout_"
         "ms\":0}}}",
         BW_DECODE_INVALID, "INVALID_ASSIGNMENT"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bw_assignment_t a;
        bw_decode_error_t e = {0};
        bw_decode_status_t st = decode_str(cases[i].json, NULL, &a, &e);
        if (st != cases[i].st || strcmp(e.code, cases[i].code) != 0)
            fail_msg("case %zu (%s): got %d %s (%s)", i, cases[i].json, st, e.code, e.message);
        assert_true(strlen(e.message) > 0);
        if (st == BW_DECODE_INVALID) {
            /* still answerable: the ids the result needs are there */
            assert_non_null(a.assignment_id);
            assert_non_null(a.tenant_id);
            bw_result_t r = {.status = BW_ST_ERROR, .error_code = e.code, .error_message = e.message};
            assert_router_accepts(&a, &r);
        }
        bw_assignment_dispose(&a);
    }
}

/* U+0000 is valid JSON: accepted in job.payload (flagged for the handlers), a dead letter elsewhere (the
   ids would be cut at it), and no flag when the text only looks like one (an escaped backslash). */
static void test_nul_in_strings(void **state)
{
    bw_assignment_t a;
    bw_decode_error_t e;
    assert_int_equal(decode_str("{\"assignment_id\":\"a\",\"tenant_id\":\"t\",\"job\":{\"type\":\"echo\","
                                "\"payload\":{\"s\":[\"x\\u0000y\"]}}}",
                                NULL, &a, &e),
                     BW_DECODE_OK);
    assert_true(a.payload_has_nul);
    json_t *s = json_array_get(json_object_get(a.payload, "s"), 0);
    assert_int_equal(json_string_length(s), 3);
    bw_assignment_dispose(&a);
    assert_int_equal(decode_str("{\"assignment_id\":\"a\",\"tenant_id\":\"t\",\"job\":{\"type\":\"echo\","
                                "\"payload\":{\"s\":\"x\\\\u0000y\"}}}",
                                NULL, &a, &e),
                     BW_DECODE_OK);
    assert_false(a.payload_has_nul);
    bw_assignment_dispose(&a);
    /* in an id or the tenant: unanswerable (a header tenant does not stand in for an unreadable one) */
    json_t *h = json_pack("{ss}", "tenant_id", "header-tenant");
    static const char *const dead[] = {
        "{\"assignment_id\":\"a\\u0000b\",\"tenant_id\":\"t\",\"job\":{\"type\":\"echo\"}}",
        "{\"assignment_id\":\"a\",\"tenant_id\":\"t\\u0000\",\"job\":{\"type\":\"echo\"}}", NULL};
    for (int i = 0; dead[i] != NULL; i++) {
        assert_int_equal(decode_str(dead[i], h, &a, &e), BW_DECODE_DEAD);
        assert_string_equal(e.code, "DECODE_ERROR");
        assert_null(e.dead_reason);
        bw_assignment_dispose(&a);
    }
    json_decref(h);
    /* elsewhere outside job.payload: the ids are readable, so it is answered, and kept as a dead letter */
    static const char *const answered[] = {
        "{\"assignment_id\":\"a\",\"tenant_id\":\"t\",\"job\":{\"type\":\"echo\\u0000x\"}}",
        "{\"assignment_id\":\"a\",\"tenant_id\":\"t\",\"trace_id\":\"\\u0000\",\"job\":{\"type\":\"echo\"}}",
        NULL};
    for (int i = 0; answered[i] != NULL; i++) {
        assert_int_equal(decode_str(answered[i], NULL, &a, &e), BW_DECODE_INVALID);
        assert_string_equal(e.code, "INVALID_ASSIGNMENT");
        assert_string_equal(e.dead_reason, "DECODE_ERROR");
        assert_string_equal(a.assignment_id, "a");
        assert_null(a.trace_id);
        bw_result_t r = {.status = BW_ST_ERROR, .error_code = e.code, .error_message = e.message};
        assert_router_accepts(&a, &r);
        bw_assignment_dispose(&a);
    }
}

/* Text of n '[' then n ']' (caller frees). */
static char *nested(size_t n)
{
    char *s = malloc(2 * n + 1);
    memset(s, '[', n);
    memset(s + n, ']', n);
    s[2 * n] = '\0';
    return s;
}

typedef struct unreadable {
    const char *what, *fmt; /* fmt: the assignment with one %s for the part jansson refuses */
} unreadable_t;

/* JSON that jansson refuses (deeper than 2,048 levels, 1e400, a lone surrogate, U+0000 in a key, an
   integer past 64 bits) whose ids can be read: INVALID_ASSIGNMENT with jansson's reason and position,
   and a dead letter (PARSE_ERROR) of the original; bare and enveloped. */
static void test_unreadable_json_with_ids(void **state)
{
    char *deep = nested(3000);
    const char *parts[][2] = {{"depth", deep},
                              {"1e400", "1e400"},
                              {"surrogate", "\"\\ud800\""},
                              {"nul key", "{\"a\\u0000b\":1}"},
                              {"integer", "123456789012345678901234567890"}};
    const char *forms[] = {
        "{\"version\":\"1\",\"assignment_id\":\"u-1\",\"request_id\":\"r-1\",\"tenant_id\":\"acme\","
        "\"job\":{\"type\":\"echo\",\"payload\":{\"v\":%s}}}",
        "{\"version\":\"v1\",\"kind\":\"exec_assign\",\"data\":{\"assignment_id\":\"u-1\",\"request_id\":"
        "\"r-1\",\"tenant_id\":\"acme\",\"job\":{\"type\":\"echo\",\"payload\":{\"v\":%s}}}}"};
    for (size_t f = 0; f < 2; f++) {
        for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
            size_t cap = strlen(forms[f]) + strlen(parts[i][1]) + 1;
            char *msg = malloc(cap);
            snprintf(msg, cap, forms[f], parts[i][1]);
            bw_assignment_t a;
            bw_decode_error_t e;
            bw_decode_status_t st = decode_str(msg, NULL, &a, &e);
            if (st != BW_DECODE_INVALID)
                fail_msg("%s (form %zu): status %d %s: %s", parts[i][0], f, st, e.code, e.message);
            assert_string_equal(e.code, "INVALID_ASSIGNMENT");
            assert_string_equal(e.dead_reason, "PARSE_ERROR");
            assert_non_null(strstr(e.message, "line 1 column"));
            assert_string_equal(a.assignment_id, "u-1");
            assert_string_equal(a.request_id, "r-1");
            assert_string_equal(a.tenant_id, "acme");
            assert_int_equal(a.enveloped, f == 1);
            assert_null(a.root);
            bw_result_t r = {.status = BW_ST_ERROR, .error_code = e.code, .error_message = e.message};
            assert_router_accepts(&a, &r);
            bw_assignment_dispose(&a);
            free(msg);
        }
    }
    free(deep);
}

typedef struct scan_case {
    const char *json;
    const char *id; /* the id read, or NULL when the message is a dead letter */
    const char *tenant;
} scan_case_t;

/* What the fallback reads, and what it must not: ids nested elsewhere or inside strings, truncated text,
   trailing text, repeated keys (the last one counts, as in jansson), escaped keys, envelopes. */
static void test_unreadable_json_hostile(void **state)
{
    static const scan_case_t cases[] = {
        {"{\"job\":{\"assignment_id\":\"nested\"},\"tenant_id\":\"t\",\"n\":1e400}", NULL, NULL},
        {"{\"note\":\"\\\"assignment_id\\\":\\\"instring\\\"\",\"tenant_id\":\"t\",\"n\":1e400}", NULL, NULL},
        {"[{\"assignment_id\":\"in-array\",\"tenant_id\":\"t\",\"n\":1e400}]", NULL, NULL},
        {"{\"assignment_id\":\"a\",\"tenant_id\":\"t\",\"job\":{\"type\":\"echo\",\"payload\":{\"x\":[1e400",
         NULL, NULL},
        {"{\"assignment_id\":\"a\",\"tenant_id\":\"t\",\"n\":1e400", NULL, NULL},
        {"{\"assignment_id\":\"a\",\"tenant_id\":\"t\",\"n\":1e400} trailing", NULL, NULL},
        {"{\"assignment_id\":\"a\",\"tenant_id\":\"t\",\"n\":1e400,}", NULL, NULL},
        {"{\"assignment_id\":\"a\",\"tenant_id\":\"t\",\"n\":01e400}", NULL, NULL},
        {"{\"assignment_id\":\"a\",\"tenant_id\":\"t\",\"s\":\"raw\ttab\",\"n\":1e400}", NULL, NULL},
        {"{\"assignment_id\":\"a\",\"tenant_id\":\"t\",\"s\":\"\\x\",\"n\":1e400}", NULL, NULL},
        {"{\"assignment_id\":\"a\",\"tenant_id\":\"t\",\"s\":\"\xff\",\"n\":1e400}", NULL, NULL},
        {"{\"assignment_id\":\"a\",\"tenant_id\":\"t\",\"n\":[1e400}", NULL, NULL},
        {"{\"assignment_id\":\"\\ud800\",\"tenant_id\":\"t\",\"n\":1e400}", NULL, NULL},
        {"{\"assignment_id\":\"\",\"tenant_id\":\"t\",\"n\":1e400}", NULL, NULL},
        {"{\"assignment_id\":7,\"tenant_id\":\"t\",\"n\":1e400}", NULL, NULL},
        {"{\"assignment_id\":\"a\",\"tenant_id\":\"\\ud800\",\"n\":1e400}", NULL, NULL},
        {"{\"assignment_id\":\"a\",\"tenant_id\":\"t\\u0000\",\"n\":1e400}", NULL, NULL},
        {"{\"assignment_id\":\"root\",\"tenant_id\":\"t\",\"kind\":\"exec_assign\",\"data\":{\"n\":1e400}}",
         NULL, NULL},
        {"{\"kind\":\"heartbeat\",\"data\":{\"assignment_id\":\"a\",\"tenant_id\":\"t\",\"n\":1e400}}", NULL,
         NULL},
        {"{\"kind\":\"exec_assign\",\"data\":[{\"assignment_id\":\"a\",\"tenant_id\":\"t\",\"n\":1e400}]}",
         NULL, NULL},
        {"{\"assignment_id\":\"first\",\"assignment_id\":\"last\",\"tenant_id\":\"t\",\"n\":1e400}", "last",
         "t"},
        {"{\"assignment_id\":\"kept\",\"tenant_id\":\"t\",\"tenant_id\":7,\"n\":1e400}", "kept", "hdr"},
        {"{\"assignment\\u005fid\":\"escaped-key\",\"tenant_id\":\"t\",\"n\":1e400}", "escaped-key", "t"},
        {"{\"assignment_id\":\"caf\\u00e9-\\ud83d\\ude00\\n\",\"tenant_id\":\"t\",\"n\":1e400}",
         "caf\xc3\xa9-\xf0\x9f\x98\x80\n", "t"},
        {" \r\n{\"n\":1e400,\"assignment_id\":\"last-member\"} \n", "last-member", "hdr"},
        {"{\"kind\":\"exec_assign\",\"data\":{\"assignment_id\":\"one\",\"tenant_id\":\"t\"},\"data\":{"
         "\"assignment_"
         "id\":\"two\",\"n\":1e400}}",
         "two", "hdr"},
        {"{\"kind\":\"exec_assign\",\"data\":{\"job\":{\"assignment_id\":\"deeper\"},\"assignment_id\":"
         "\"env\","
         "\"x\":[{\"tenant_id\":\"no\"}],\"n\":1e400},\"tenant_id\":\"root-level\"}",
         "env", "hdr"},
        {"{\"assignment_id\":\"a\",\"tenant_id\":\"t\",\"deep\":[[[[{\"assignment_id\":\"b\"}]]]],\"n\":-"
         "1e400}",
         "a", "t"},
    };
    json_t *h = json_pack("{ss}", "tenant_id", "hdr");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bw_assignment_t a;
        bw_decode_error_t e;
        bw_decode_status_t st = decode_str(cases[i].json, h, &a, &e);
        if (cases[i].id == NULL) {
            if (st != BW_DECODE_DEAD)
                fail_msg("case %zu (%s): answered as %s", i, cases[i].json, a.assignment_id);
            assert_true(!strcmp(e.code, "PARSE_ERROR") || !strcmp(e.code, "DECODE_ERROR"));
            assert_null(e.dead_reason);
        } else {
            if (st != BW_DECODE_INVALID)
                fail_msg("case %zu (%s): status %d %s %s", i, cases[i].json, st, e.code, e.message);
            assert_string_equal(a.assignment_id, cases[i].id);
            assert_string_equal(a.tenant_id, cases[i].tenant);
            assert_string_equal(e.dead_reason, "PARSE_ERROR");
        }
        bw_assignment_dispose(&a);
    }
    json_decref(h);
    /* jansson takes the last of repeated keys too, so both paths agree */
    bw_assignment_t a;
    bw_decode_error_t e;
    assert_int_equal(decode_str("{\"assignment_id\":\"first\",\"assignment_id\":\"last\",\"tenant_id\":\"t\","
                                "\"job\":{\"type\":\"echo\"}}",
                                NULL, &a, &e),
                     BW_DECODE_OK);
    assert_string_equal(a.assignment_id, "last");
    bw_assignment_dispose(&a);
}

/* Any depth, without recursion; ids longer than 256 bytes are not ids. */
static void test_unreadable_json_limits(void **state)
{
    char *deep = nested(500000), id[300];
    size_t cap = strlen(deep) + 200;
    char *msg = malloc(cap);
    snprintf(msg, cap, "{\"assignment_id\":\"very-deep\",\"tenant_id\":\"t\",\"p\":%s}", deep);
    bw_assignment_t a;
    bw_decode_error_t e;
    assert_int_equal(decode_str(msg, NULL, &a, &e), BW_DECODE_INVALID);
    assert_string_equal(a.assignment_id, "very-deep");
    assert_non_null(strstr(e.message, "depth"));
    bw_assignment_dispose(&a);
    deep[499999] = '}'; /* mismatched close */
    snprintf(msg, cap, "{\"assignment_id\":\"very-deep\",\"tenant_id\":\"t\",\"p\":%s}", deep);
    assert_int_equal(decode_str(msg, NULL, &a, &e), BW_DECODE_DEAD);
    bw_assignment_dispose(&a);
    for (int n = 256; n <= 257; n++) {
        memset(id, 'i', (size_t)n);
        id[n] = '\0';
        snprintf(msg, cap, "{\"assignment_id\":\"%s\",\"tenant_id\":\"%s\",\"n\":1e400}", id, id);
        assert_int_equal(decode_str(msg, NULL, &a, &e), n == 256 ? BW_DECODE_INVALID : BW_DECODE_DEAD);
        if (n == 256) {
            assert_int_equal(strlen(a.assignment_id), 256);
            assert_int_equal(strlen(a.tenant_id), 256);
        }
        bw_assignment_dispose(&a);
    }
    free(msg);
    free(deep);
}

/* An output that shares structure (2^60 leaves in a few hundred bytes of memory) is cut as soon as its
   text passes the limit, instead of being written out. */
static void test_result_encoding_is_bounded(void **state)
{
    bw_assignment_t a;
    bw_decode_error_t e;
    decode_str("{\"assignment_id\":\"a\",\"tenant_id\":\"t\",\"job\":{\"type\":\"echo\"}}", NULL, &a, &e);
    json_t *v = json_string("leaf");
    for (int i = 0; i < 60; i++) {
        json_t *pair = json_array();
        json_array_append(pair, v);
        json_array_append_new(pair, v);
        v = pair;
    }
    bw_result_t r = {.status = BW_ST_SUCCESS, .output = v, .max_bytes = 1 << 20};
    size_t len;
    char *s = bw_result_encode(&a, &r, "w", false, &len);
    assert_true(len > r.max_bytes && len < r.max_bytes + 4096);
    free(s);
    json_decref(v);
    /* at the limit exactly: whole */
    json_t *small = json_pack("{ss}", "k", "v");
    r = (bw_result_t){.status = BW_ST_SUCCESS, .output = small};
    s = bw_result_encode(&a, &r, "w", false, &len);
    free(s);
    r.max_bytes = len;
    char *t = bw_result_encode(&a, &r, "w", false, &len);
    assert_int_equal(len, r.max_bytes);
    json_t *back = json_loads(t, 0, NULL);
    assert_non_null(back);
    json_decref(back);
    free(t);
    json_decref(small);
    bw_assignment_dispose(&a);
}

static void test_tenant_from_header_and_long_tenant(void **state)
{
    bw_assignment_t a;
    bw_decode_error_t e;
    json_t *h = json_pack("{ss}", "tenant_id", "from-header");
    assert_int_equal(decode_str("{\"assignment_id\":\"a\",\"job\":{\"type\":\"echo\"}}", h, &a, &e),
                     BW_DECODE_OK);
    assert_string_equal(a.tenant_id, "from-header");
    bw_assignment_dispose(&a);
    /* the payload wins over the header */
    assert_int_equal(
        decode_str("{\"assignment_id\":\"a\",\"tenant_id\":\"p\",\"job\":{\"type\":\"echo\"}}", h, &a, &e),
        BW_DECODE_OK);
    assert_string_equal(a.tenant_id, "p");
    bw_assignment_dispose(&a);
    json_decref(h);
    char big[400];
    snprintf(big, sizeof big,
             "{\"assignment_id\":\"a\",\"tenant_id\":\"%0257d\",\"job\":{\"type\":\"echo\"}}", 0);
    assert_int_equal(decode_str(big, NULL, &a, &e), BW_DECODE_DEAD);
    bw_assignment_dispose(&a);
}

static void test_trace_precedence(void **state)
{
    const char *base = "{\"assignment_id\":\"a\",\"tenant_id\":\"t\",\"job\":{\"type\":\"echo\"}%s}";
    char buf[512];
    bw_assignment_t a;
    bw_decode_error_t e;
    json_t *h = json_pack("{ssss}", "trace_id", "11111111111111111111111111111111", "traceparent",
                          "00-22222222222222222222222222222222-b7ad6b7169203331-01");
    snprintf(buf, sizeof buf, base,
             ",\"trace_id\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\",\"correlation\":{\"trace_id\":"
             "\"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\"}");
    decode_str(buf, h, &a, &e);
    assert_string_equal(a.trace_id, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
    bw_assignment_dispose(&a);
    snprintf(
        buf, sizeof buf, base,
        ",\"trace_id\":\"not-valid\",\"correlation\":{\"trace_id\":\"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\"}");
    decode_str(buf, h, &a, &e);
    assert_string_equal(a.trace_id, "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb");
    bw_assignment_dispose(&a);
    snprintf(buf, sizeof buf, base, "");
    decode_str(buf, h, &a, &e);
    assert_string_equal(a.trace_id, "11111111111111111111111111111111");
    bw_assignment_dispose(&a);
    json_object_set_new(h, "trace_id", json_string("0123456789abcdef"));
    decode_str(buf, h, &a, &e);
    assert_string_equal(a.trace_id, "22222222222222222222222222222222");
    bw_assignment_dispose(&a);
    json_object_del(h, "traceparent");
    decode_str(buf, h, &a, &e);
    assert_null(a.trace_id); /* nothing valid: no trace_id in the result rather than a rejected one */
    bw_result_t r = {.status = BW_ST_SUCCESS};
    assert_router_accepts(&a, &r);
    bw_assignment_dispose(&a);
    json_decref(h);
}

static void test_run_flow_step(void **state)
{
    bw_assignment_t a;
    bw_decode_error_t e;
    decode_str(
        "{\"assignment_id\":\"a\",\"tenant_id\":\"t\",\"job\":{\"type\":\"echo\"},"
        "\"run_id\":\"01ARZ3NDEKTSV4RRFFQ69G5FAV\",\"flow_id\":\"6f1c2a9e-3b4d-4e5f-9a0b-1c2d3e4f5a6b\","
        "\"step_id\":\"01ARZ3NDEKTSV4RRFFQ69G5FAW\"}",
        NULL, &a, &e);
    assert_string_equal(a.run_id, "01ARZ3NDEKTSV4RRFFQ69G5FAV");
    bw_result_t r = {.status = BW_ST_SUCCESS};
    assert_router_accepts(&a, &r);
    bw_assignment_dispose(&a);
    /* one missing, or one invalid: none are echoed (the router rejects partial sets) */
    decode_str(
        "{\"assignment_id\":\"a\",\"tenant_id\":\"t\",\"job\":{\"type\":\"echo\"},"
        "\"run_id\":\"01ARZ3NDEKTSV4RRFFQ69G5FAV\",\"flow_id\":\"6f1c2a9e-3b4d-4e5f-9a0b-1c2d3e4f5a6b\"}",
        NULL, &a, &e);
    assert_null(a.run_id);
    assert_router_accepts(&a, &r);
    bw_assignment_dispose(&a);
    decode_str(
        "{\"assignment_id\":\"a\",\"tenant_id\":\"t\",\"job\":{\"type\":\"echo\"},"
        "\"run_id\":\"e8419331-23f4-a731-47ee-35b7c23a8111\",\"flow_id\":\"01ARZ3NDEKTSV4RRFFQ69G5FAV\","
        "\"step_id\":\"01ARZ3NDEKTSV4RRFFQ69G5FAW\"}",
        NULL, &a, &e);
    assert_null(a.run_id);
    bw_assignment_dispose(&a);
}

static void test_null_output_is_omitted(void **state)
{
    bw_assignment_t a;
    bw_decode_error_t e;
    decode_str("{\"assignment_id\":\"a\",\"tenant_id\":\"t\",\"job\":{\"type\":\"echo\"}}", NULL, &a, &e);
    json_t *null = json_null();
    bw_result_t r = {.status = BW_ST_SUCCESS, .output = null};
    size_t len;
    char *s = bw_result_encode(&a, &r, "w", false, &len);
    assert_null(strstr(s, "null"));
    assert_null(strstr(s, "\"output\""));
    free(s);
    bw_assignment_dispose(&a);
}

static void test_heartbeat_and_dead_letter(void **state)
{
    bw_heartbeat_t h = {.worker_id = "w",
                        .status = "busy",
                        .load = 0.25,
                        .in_flight = 2,
                        .max_concurrency = 8,
                        .uptime_s = 5,
                        .rss_bytes = 1000,
                        .build = "0.1.0"};
    size_t len;
    char *s = bw_heartbeat_encode(&h, false, &len);
    json_t *o = json_loads(s, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(o, "version")), "1");
    assert_string_equal(json_string_value(json_object_get(o, "status")), "busy");
    assert_int_equal(json_integer_value(json_object_get(o, "jobs_in_flight")), 2);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "resources"), "rss_bytes")), 1000);
    const char *ts = json_string_value(json_object_get(o, "timestamp"));
    assert_true(strlen(ts) == 24 && ts[10] == 'T' && ts[23] == 'Z');
    json_decref(o);
    free(s);
    json_t *hdr = json_pack("{ss}", "tenant_id", "t");
    bw_dead_letter_t d = {.reason = "PARSE_ERROR",
                          .worker_id = "w",
                          .subject = "caf.exec.assign.v1",
                          .data = "not json",
                          .len = 8,
                          .headers = hdr,
                          .error = "bad",
                          .max_message_bytes = 1024};
    s = bw_dead_letter_encode(&d, false, &len);
    o = json_loads(s, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(o, "message")), "not json");
    /* sha256("not json") */
    assert_string_equal(json_string_value(json_object_get(json_object_get(o, "payload_ref"), "sha256")),
                        "7ccfa1fbf3940e6f0c0375d87c0f9235a50514e14cb427bdfaf5077987b26ccf");
    assert_int_equal(strlen(json_string_value(json_object_get(json_object_get(o, "payload_ref"), "sha256"))),
                     64);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "payload_ref"), "len")), 8);
    assert_string_equal(json_string_value(json_object_get(json_object_get(o, "headers"), "tenant_id")), "t");
    json_decref(o);
    free(s);
    d.max_message_bytes = 4;
    s = bw_dead_letter_encode(&d, true, &len);
    o = json_loads(s, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(o, "kind")), "dead_letter");
    assert_null(json_object_get(json_object_get(o, "data"), "message"));
    assert_true(json_is_true(json_object_get(json_object_get(o, "data"), "message_truncated")));
    json_decref(o);
    free(s);
    json_decref(hdr);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_router_assignments_decode_and_answer),
        cmocka_unit_test(test_envelope_input_and_output),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_nul_in_strings),
        cmocka_unit_test(test_unreadable_json_with_ids),
        cmocka_unit_test(test_unreadable_json_hostile),
        cmocka_unit_test(test_unreadable_json_limits),
        cmocka_unit_test(test_result_encoding_is_bounded),
        cmocka_unit_test(test_tenant_from_header_and_long_tenant),
        cmocka_unit_test(test_trace_precedence),
        cmocka_unit_test(test_run_flow_step),
        cmocka_unit_test(test_null_output_is_omitted),
        cmocka_unit_test(test_heartbeat_and_dead_letter),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
