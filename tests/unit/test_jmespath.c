/*
 * Unit tests for src/jmespath beyond the compliance suite: error kinds, offsets and messages,
 * nesting limits on expressions and data, 1 MB expressions, invalid UTF-8, integer/real
 * preservation, to_string formatting, expressions that are not NUL-terminated, a two-thread
 * smoke test of one compiled expression, and the work budget: exponential results, big
 * projections, cancellation from another thread, and the margin of the default budget.
 */
#include <dirent.h>
#include <pthread.h>
#include <stdatomic.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <jansson.h>

#include "jmespath/jmespath.h"
#include "jmespath/jmespath_test.h"

/* Compiles expr (exact length, in a heap buffer of exactly that size so ASan sees over-reads)
   and evaluates it against data; returns the status, *out the result (caller decrefs). */
static int run_n(const char *expr, size_t len, json_t *data, json_t **out, bw_jmespath_error_t *err)
{
    char *copy = malloc(len ? len : 1);
    memcpy(copy, expr, len);
    bw_jmespath_expr_t *e = NULL;
    *out = NULL;
    int rc = bw_jmespath_compile(copy, len, &e, err);
    free(copy); /* the compiled expression must not point into the caller's text */
    if (rc == 0)
        rc = bw_jmespath_eval(e, data, out, err);
    bw_jmespath_destroy(e);
    return rc;
}

static int run(const char *expr, const char *data_json, json_t **out, bw_jmespath_error_t *err)
{
    json_t *data = data_json ? json_loads(data_json, JSON_DECODE_ANY, NULL) : NULL;
    int rc = run_n(expr, strlen(expr), data, out, err);
    json_decref(data);
    return rc;
}

/* Asserts that expr against data gives the JSON text want (compared with JMESPath equality). */
static void check(const char *expr, const char *data_json, const char *want)
{
    bw_jmespath_error_t err;
    json_t *got = NULL, *w = json_loads(want, JSON_DECODE_ANY, NULL);
    int rc = run(expr, data_json, &got, &err);
    if (rc != 0)
        fail_msg("%s: error %s: %s", expr, bw_jmespath_status_name(rc), err.message);
    if (!bw_jmespath_test_equal(got, w)) {
        char *g = json_dumps(got, JSON_ENCODE_ANY | JSON_COMPACT);
        fail_msg("%s: got %s, want %s", expr, g, want);
    }
    json_decref(got);
    json_decref(w);
}

/* Asserts that expr fails with status st at offset off, with a message containing part. */
static void check_error(const char *expr, const char *data_json, int st, size_t off, const char *part)
{
    bw_jmespath_error_t err;
    json_t *got = NULL;
    int rc = run(expr, data_json, &got, &err);
    if (rc != st)
        fail_msg("%s: status %s, want %s (%s)", expr, bw_jmespath_status_name(rc),
                 bw_jmespath_status_name(st), err.message);
    assert_null(got);
    assert_int_equal(err.status, st);
    if (err.offset != off)
        fail_msg("%s: offset %zu, want %zu (%s)", expr, err.offset, off, err.message);
    char prefix[40];
    snprintf(prefix, sizeof prefix, "at offset %zu: ", off);
    assert_memory_equal(err.message, prefix, strlen(prefix));
    if (part != NULL && strstr(err.message, part) == NULL)
        fail_msg("%s: message '%s' lacks '%s'", expr, err.message, part);
}

static void test_error_offsets_and_messages(void **state)
{
    check_error("foo[0", NULL, BW_JMESPATH_ESYNTAX, 5, "expected ']' but found end of expression");
    check_error("foo[?a == `1` foo]", NULL, BW_JMESPATH_ESYNTAX, 14, "expected ']' but found 'foo'");
    check_error("foo.", NULL, BW_JMESPATH_ESYNTAX, 4, "end of expression");
    check_error("foo.1", NULL, BW_JMESPATH_ESYNTAX, 4, "'1'");
    check_error("a = b", NULL, BW_JMESPATH_ESYNTAX, 2, "'=='");
    check_error("a ~ b", NULL, BW_JMESPATH_ESYNTAX, 2, "'~'");
    check_error("'abc", NULL, BW_JMESPATH_ESYNTAX, 0, "unterminated");
    check_error("`\"a`", NULL, BW_JMESPATH_ESYNTAX, 0, "invalid JSON literal");
    check_error("a b", NULL, BW_JMESPATH_ESYNTAX, 2, "'b'");
    check_error("", NULL, BW_JMESPATH_ESYNTAX, 0, "empty");
    check_error("\"to_string\"(@)", NULL, BW_JMESPATH_ESYNTAX, 0, "quoted");
    check_error("\"a\\qb\"", NULL, BW_JMESPATH_ESYNTAX, 2, "escape");
    check_error("foo[1:2:0]", NULL, BW_JMESPATH_EINVALID_VALUE, 8, "step");
    check_error("a.nope(@)", NULL, BW_JMESPATH_EUNKNOWN_FUNCTION, 2, "nope");
    check_error("abs(@, @)", NULL, BW_JMESPATH_EINVALID_ARITY, 0, "abs() takes 1 argument but 2 were given");
    check_error("merge()", NULL, BW_JMESPATH_EINVALID_ARITY, 0, "at least 1");
    check_error("a || abs(b)", "{\"b\": \"x\"}", BW_JMESPATH_EINVALID_TYPE, 5,
                "abs() expects argument 1 to be a number, got string");
    check_error("sort(@)", "[1, \"a\"]", BW_JMESPATH_EINVALID_TYPE, 0, "array containing string");
    check_error("sort_by(@, &a)", "[{\"a\": 1}, {\"a\": \"x\"}]", BW_JMESPATH_EINVALID_TYPE, 0, "sort_by()");
    check_error("map(&a, @) | &b", "[]", BW_JMESPATH_EINVALID_TYPE, 13, "expression reference");
    /* A syntax error anywhere wins over a function problem found earlier. */
    check_error("nope(@) ]", NULL, BW_JMESPATH_ESYNTAX, 8, NULL);
    assert_string_equal(bw_jmespath_status_name(BW_JMESPATH_ELIMIT), "limit");
    assert_string_equal(bw_jmespath_status_name(BW_JMESPATH_EINVALID_ARITY), "invalid-arity");
    assert_string_equal(bw_jmespath_status_name(BW_JMESPATH_ECANCELLED), "cancelled");
    assert_string_equal(bw_jmespath_status_name((bw_jmespath_status_t)99), "unknown");
}

static char *repeat(const char *head, const char *unit, size_t n, const char *tail)
{
    size_t hl = strlen(head), ul = strlen(unit), tl = strlen(tail);
    char *s = malloc(hl + ul * n + tl + 1);
    memcpy(s, head, hl);
    for (size_t i = 0; i < n; i++)
        memcpy(s + hl + i * ul, unit, ul);
    memcpy(s + hl + ul * n, tail, tl + 1);
    return s;
}

/* "(((...a...)))" with depth parentheses. */
static char *parens(size_t depth)
{
    char *s = malloc(2 * depth + 2);
    memset(s, '(', depth);
    s[depth] = 'a';
    memset(s + depth + 1, ')', depth);
    s[2 * depth + 1] = '\0';
    return s;
}

static int compile_status(const char *s, bw_jmespath_error_t *err)
{
    bw_jmespath_expr_t *e = NULL;
    int rc = bw_jmespath_compile(s, strlen(s), &e, err);
    bw_jmespath_destroy(e);
    return rc;
}

static void test_expression_depth_limits(void **state)
{
    bw_jmespath_error_t err;
    char *ok = parens(BW_JMESPATH_MAX_NESTING - 1);
    assert_int_equal(compile_status(ok, &err), 0);
    free(ok);
    char *deep = parens(BW_JMESPATH_MAX_NESTING);
    assert_int_equal(compile_status(deep, &err), BW_JMESPATH_ELIMIT);
    assert_non_null(strstr(err.message, "nests deeper than 256"));
    free(deep);
    static const char *const units[] = {"(", "[", "!", "{a:", "& ", "foo(", "a[*].", "-"};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        char *s = repeat("", units[i], 100000, "a");
        int rc = compile_status(s, &err);
        /* "-" alone is a lexer error; everything else runs into the nesting limit. */
        assert_int_equal(rc, i == 7 ? BW_JMESPATH_ESYNTAX : BW_JMESPATH_ELIMIT);
        free(s);
    }
    /* Left-deep trees built without recursion are capped by the node height. */
    static const char *const chains[] = {"[]", " == a", "[*][]", " < a"};
    for (size_t i = 0; i < sizeof chains / sizeof chains[0]; i++) {
        char *s = repeat("a", chains[i], 5000, "");
        assert_int_equal(compile_status(s, &err), BW_JMESPATH_ELIMIT);
        free(s);
    }
}

/* A chain of depth nested one-element arrays, built and freed without recursion. */
static json_t *deep_array(size_t depth)
{
    json_t *v = json_integer(1);
    for (size_t i = 0; i < depth; i++) {
        json_t *a = json_array();
        json_array_append_new(a, v);
        v = a;
    }
    return v;
}

static void free_deep(json_t *v)
{
    while (json_is_array(v) && json_array_size(v) == 1 && v->refcount == 1) {
        json_t *child = json_incref(json_array_get(v, 0));
        json_array_clear(v);
        json_decref(v);
        v = child;
    }
    json_decref(v);
}

static void test_deep_data(void **state)
{
    json_t *data = json_array();
    json_array_append_new(data, deep_array(5000));
    json_array_append_new(data, deep_array(5000));
    bw_jmespath_error_t err;
    json_t *r = NULL;
    assert_int_equal(run_n("[0] == [1]", 10, data, &r, &err), BW_JMESPATH_ELIMIT);
    assert_non_null(strstr(err.message, "deeper than 2048"));
    assert_int_equal(run_n("to_string(@)", 12, data, &r, &err), BW_JMESPATH_ELIMIT);
    assert_int_equal(run_n("contains([1], [0])", 18, data, &r, &err), BW_JMESPATH_ELIMIT);
    /* The same value compares by identity without walking it. */
    assert_int_equal(run_n("[0] == [0]", 10, data, &r, &err), 0);
    assert_true(json_is_true(r));
    json_decref(r);
    /* Flatten, projections and length do not recurse into the data. */
    assert_int_equal(run_n("length([][][][][])", 18, data, &r, &err), 0);
    assert_int_equal(json_integer_value(r), 2);
    json_decref(r);
    /* jansson frees recursively; take the two chains out and free them level by level. */
    json_t *a = json_incref(json_array_get(data, 0)), *b = json_incref(json_array_get(data, 1));
    json_decref(data);
    free_deep(a);
    free_deep(b);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Compiles and evaluates a ~1 MB expression. Linear work takes well under a second; the 30 s guard only
   catches a quadratic blow-up (hours at this size), never a slow shared machine. */
static int big(const char *head, const char *unit, const char *tail, json_t *data, json_t **r)
{
    size_t n = (1u << 20) / strlen(unit);
    char *s = repeat(head, unit, n, tail);
    bw_jmespath_error_t err;
    double t0 = now_s();
    int rc = run_n(s, strlen(s), data, r, &err);
    double dt = now_s() - t0;
    if (dt > 30.0)
        fail_msg("%.20s...: %.2f s, looks quadratic", s, dt);
    free(s);
    return rc;
}

static void test_one_megabyte_expressions(void **state)
{
    json_t *data = json_loads("{\"a\": {\"a\": 1}}", 0, NULL), *r = NULL;
    assert_int_equal(big("a", ".a", "", data, &r), 0);
    json_decref(r);
    assert_int_equal(big("a", " | a", "", data, &r), 0);
    json_decref(r);
    assert_int_equal(big("a", " || a", "", data, &r), 0);
    json_decref(r);
    assert_int_equal(big("x", " && a", "", data, &r), 0);
    assert_true(json_is_null(r));
    assert_int_equal(big("[a", ", a", "]", data, &r), 0);
    assert_int_equal(json_array_size(r), (1u << 20) / 3 + 1);
    json_decref(r);
    assert_int_equal(big("{a: a", ", a: a", "}", data, &r), 0);
    json_decref(r);
    assert_int_equal(big("a", "[0]", "", data, &r), 0);
    json_decref(r);
    assert_int_equal(big("'", "x", "'", data, &r), 0);
    assert_int_equal(json_string_length(r), 1u << 20);
    json_decref(r);
    assert_int_equal(big("`\"", "y", "\"`", data, &r), 0);
    json_decref(r);
    assert_int_equal(big("not_null(a", ", a", ")", data, &r), 0);
    json_decref(r);
    assert_int_equal(big("a", "[*].a", "", data, &r), BW_JMESPATH_ELIMIT);
    assert_int_equal(big("", "(", "", data, &r), BW_JMESPATH_ELIMIT);
    json_decref(data);
}

static void test_invalid_utf8(void **state)
{
    static const struct {
        const char *s;
        size_t off;
    } bad[] = {
        {"\xff", 0},       {"foo.\"\xc3\"", 5},         {"'\xe2\x82'", 1}, {"`\"\xed\xa0\x80\"`", 2},
        {"a.\xc0\xaf", 2}, {"\"\xf4\x90\x80\x80\"", 1}, {"ab\xe2\x82", 2},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        bw_jmespath_error_t err;
        json_t *r = NULL;
        assert_int_equal(run_n(bad[i].s, strlen(bad[i].s), NULL, &r, &err), BW_JMESPATH_ESYNTAX);
        assert_int_equal(err.offset, bad[i].off);
        assert_non_null(strstr(err.message, "UTF-8"));
    }
    /* Escapes that cannot be UTF-8: lone surrogates; raw control characters. */
    check_error("\"\\ud800\"", NULL, BW_JMESPATH_ESYNTAX, 1, "escape");
    check_error("\"\\udc00x\"", NULL, BW_JMESPATH_ESYNTAX, 1, "escape");
    check_error("\"\\ud800\\u0041\"", NULL, BW_JMESPATH_ESYNTAX, 1, "escape");
    check_error("\"a\tb\"", NULL, BW_JMESPATH_ESYNTAX, 2, "control");
    /* Valid non-ASCII text in every string form. */
    check("\"\\ud83d\\ude00\"", "{\"\xf0\x9f\x98\x80\": 1}", "1");
    check("length('\xf0\x9f\x98\x80\xc3\xa9')", NULL, "2");
    check("reverse('a\xc3\xa9\xf0\x9f\x98\x80')", NULL,
          "\"\xf0\x9f\x98\x80\xc3\xa9"
          "a\"");
    check("`\"\xe2\x9c\x93\"`", NULL, "\"\xe2\x9c\x93\"");
    /* Field names with NUL work too (jansson keys carry their length). */
    json_t *data = json_object(), *r = NULL;
    json_object_setn_new(data, "a\0b", 3, json_integer(7));
    bw_jmespath_error_t err;
    assert_int_equal(run_n("\"a\\u0000b\"", 10, data, &r, &err), 0);
    assert_int_equal(json_integer_value(r), 7);
    json_decref(r);
    json_decref(data);
}

static void expect_type(const char *expr, const char *data, bool integer, double value)
{
    bw_jmespath_error_t err;
    json_t *r = NULL;
    if (run(expr, data, &r, &err) != 0)
        fail_msg("%s: %s", expr, err.message);
    if (integer ? !json_is_integer(r) : !json_is_real(r))
        fail_msg("%s: want %s", expr, integer ? "integer" : "real");
    assert_true(json_number_value(r) == value);
    json_decref(r);
}

static void test_integer_real_preservation(void **state)
{
    expect_type("sum(`[1, 2]`)", NULL, true, 3);
    expect_type("sum(`[1, 2.5]`)", NULL, false, 3.5);
    expect_type("sum(`[]`)", NULL, true, 0);
    expect_type("sum(`[9223372036854775807, 1]`)", NULL, false, 9223372036854775808.0);
    expect_type("avg(`[1, 2]`)", NULL, false, 1.5);
    expect_type("abs(`-1`)", NULL, true, 1);
    expect_type("abs(`-1.5`)", NULL, false, 1.5);
    expect_type("ceil(`1.2`)", NULL, true, 2);
    expect_type("floor(`-1.2`)", NULL, true, -2);
    expect_type("floor(`1e300`)", NULL, false, 1e300);
    expect_type("to_number('4')", NULL, true, 4);
    expect_type("to_number('-0')", NULL, true, 0);
    expect_type("to_number('4.0')", NULL, false, 4);
    expect_type("to_number('1e3')", NULL, false, 1000);
    expect_type("to_number('99999999999999999999')", NULL, false, 1e20);
    expect_type("max(`[1, 2.5, 2]`)", NULL, false, 2.5);
    expect_type("min(`[1, 0.5, 2]`)", NULL, false, 0.5);
    expect_type("length('abc')", NULL, true, 3);
    expect_type("`123456789012345678901234567890`", NULL, false, 123456789012345678901234567890.0);
    check("to_number(' 4')", NULL, "null");
    check("to_number('0x10')", NULL, "null");
    check_error("to_number('1e999')", NULL, BW_JMESPATH_EINVALID_VALUE, 0, "beyond the range"); /* was null */
    check("to_number('.5')", NULL, "null");
    check("`1` == `1.0`", NULL, "true");
    check("a == b", "{\"a\": {\"x\": [1, 2.0]}, \"b\": {\"x\": [1.0, 2]}}", "true");
    check("`{\"a\": 1, \"b\": 2}` == `{\"b\": 2, \"a\": 1}`", NULL, "true");
    check("`[1, 2]` == `[2, 1]`", NULL, "false");
    check("`9007199254740993` > `9007199254740992.0`", NULL, "true");
    check("'a' < 'b'", NULL, "null");
    check("`true` == `1`", NULL, "false");
    check("sort(`[3, 1.5, 2, -1]`)", NULL, "[-1, 1.5, 2, 3]");
    check("sort(`[\"b\", \"\xc3\xa9\", \"a\", \"B\"]`)", NULL, "[\"B\", \"a\", \"b\", \"\xc3\xa9\"]");
    check("sort_by(@, &k)[].n", "[{\"k\":2,\"n\":1},{\"k\":1,\"n\":2},{\"k\":2,\"n\":3},{\"k\":1,\"n\":4}]",
          "[2,4,1,3]");
    check("max_by(@, &k).n", "[{\"k\":2,\"n\":1},{\"k\":1,\"n\":2},{\"k\":2,\"n\":3}]", "1");
}

static void test_to_string_format(void **state)
{
    check("to_string(`[1, 2.5, {\"a\": \"x\\n\"}, null, true]`)", NULL,
          "\"[1,2.5,{\\\"a\\\":\\\"x\\\\n\\\"},null,true]\"");
    static const struct {
        const char *lit, *want;
    } reals[] = {{"0.1", "0.1"},
                 {"1.0", "1.0"},
                 {"1e21", "1e+21"},
                 {"1e16", "1e+16"},
                 {"1e15", "1000000000000000.0"},
                 {"0.0001", "0.0001"},
                 {"0.00001", "1e-05"},
                 {"-0.0", "-0.0"},
                 {"123.456", "123.456"},
                 {"1.5e-7", "1.5e-07"},
                 {"1.7976931348623157e308", "1.7976931348623157e+308"}};
    for (size_t i = 0; i < sizeof reals / sizeof reals[0]; i++) {
        char expr[80], want[80];
        snprintf(expr, sizeof expr, "to_string(`%s`)", reals[i].lit);
        snprintf(want, sizeof want, "\"%s\"", reals[i].want);
        check(expr, NULL, want);
    }
}

static void test_not_nul_terminated(void **state)
{
    static const char buf[] = "foo.bar###garbage that must not be read";
    json_t *data = json_loads("{\"foo\": {\"bar\": 42}}", 0, NULL), *r = NULL;
    bw_jmespath_error_t err;
    assert_int_equal(run_n(buf, 7, data, &r, &err), 0);
    assert_int_equal(json_integer_value(r), 42);
    json_decref(r);
    /* Every prefix of a rich expression, each from an exact-size heap buffer. */
    static const char rich[] = "foo[?a == `\"x\\`\"` && b != 'y\\''].\"q\\u00e9\"[1:-1:2] | {k: length(@)}";
    for (size_t n = 0; n <= sizeof rich - 1; n++) {
        if (run_n(rich, n, data, &r, &err) == 0)
            json_decref(r);
    }
    json_decref(data);
}

static void test_literals_and_strings(void **state)
{
    check("`foo`", NULL, "\"foo\""); /* legacy unquoted literal */
    check("`  [1]  `", NULL, "[1]");
    check("'it\\'s'", NULL, "\"it's\"");
    check("'a\\\\b'", NULL, "\"a\\\\\\\\b\""); /* \\ stays two backslashes in raw strings */
    check("`\"a\\`b\"`", NULL, "\"a`b\"");
    check("foo[?name == 'b'].id", "{\"foo\":[{\"name\":\"a\",\"id\":1},{\"name\":\"b\",\"id\":2}]}", "[2]");
    check("join('', reverse(['a', 'b']))", "{}", "\"ba\"");
    check("contains('abc', '')", NULL, "true");
    check("contains('abc', `1`)", NULL, "false");
    check("merge(`{\"a\": 1, \"b\": 2}`, `{\"a\": 3}`)", NULL, "{\"a\": 3, \"b\": 2}");
    check("keys(@)", "{\"z\": 1, \"a\": 2}", "[\"z\", \"a\"]");
    check("values(@)", "{\"z\": 1, \"a\": 2}", "[1, 2]");
    check("not_null(a, b, `3`)", "{}", "3");
    check("map(&a, @)", "[{\"a\": 1}, {}]", "[1, null]");
    check("[*].a", "[{\"a\": 1}, {}]", "[1]");
    check("@[::-2]", "[1, 2, 3, 4, 5]", "[5, 3, 1]");
    check("@[-9223372036854775808:99999999999999999999999]", "[1, 2]", "[1, 2]");
    check("@[::9223372036854775807]", "[1, 2]", "[1]");
}

/* JSON cannot carry Infinity or NaN: arithmetic that overflows a double is an error (not a silent null),
   a literal beyond a double's range does not compile (it is not the legacy string "1e400"), and a
   string beyond it is no number to to_number. The largest finite values still work. */
static void test_overflow_is_an_error(void **state)
{
    check("avg(@)", "[1.7976931348623157e308]", "1.7976931348623157e308"); /* DBL_MAX: the limit */
    check("sum(@)", "[1.7976931348623157e308, 0.0]", "1.7976931348623157e308");
    check("sum(@)", "[1e308, -1e308, 1e308]", "1e308");
    check("avg(@)", "[1e308, -1e308]", "0.0");
    check_error("avg(@)", "[1e308, 1e308]", BW_JMESPATH_EINVALID_VALUE, 0, "avg() overflows");
    check_error("avg(@)", "[1e308, 1e308]", BW_JMESPATH_EINVALID_VALUE, 0, "Infinity");
    check_error("sum(@)", "[1e308, 1e308]", BW_JMESPATH_EINVALID_VALUE, 0, "sum() overflows");
    check_error("sum(@)", "[-1e308, -1e308]", BW_JMESPATH_EINVALID_VALUE, 0, "-Infinity");
    check_error("a | sum(@)", "{\"a\": [1.7976931348623157e308, 1e292]}", BW_JMESPATH_EINVALID_VALUE, 4,
                "sum() overflows");
    /* integers: exact until they overflow int64, then a double, which holds them */
    check("sum(@)", "[9223372036854775807, 1]", "9223372036854775808.0");
    /* literals */
    check("`1.7976931348623157e308`", NULL, "1.7976931348623157e308");
    check("`1e-400`", NULL, "0.0"); /* underflow rounds to zero, as every JSON parser does */
    check_error("`1e400`", NULL, BW_JMESPATH_ESYNTAX, 0, "beyond the range of a double");
    check_error("`-1e400`", NULL, BW_JMESPATH_ESYNTAX, 0, "beyond the range of a double");
    check_error("a == `[1, 1e400]`", NULL, BW_JMESPATH_ESYNTAX, 5, "beyond the range of a double");
    check("`\"1e400\"`", NULL, "\"1e400\""); /* a JSON string is a string */
    /* to_number */
    check("to_number('1.7976931348623157e308')", NULL, "1.7976931348623157e308");
    check_error("to_number('1e400')", NULL, BW_JMESPATH_EINVALID_VALUE, 0, "beyond the range of a double");
    check_error("to_number(@)", "\"-1e400\"", BW_JMESPATH_EINVALID_VALUE, 0, "to_number()");
    check("to_number('1e-400')", NULL, "0.0");
    check("to_number('1e')", NULL, "null"); /* not a number at all: null, as the specification says */
}

static void test_null_is_not_short_circuited(void **state)
{
    /* Per the specification, a.b evaluates b even when a is null: functions see the null. */
    check_error("missing.length(@)", "{}", BW_JMESPATH_EINVALID_TYPE, 8, "length()");
    check("missing.not_null(@, 'x')", "{}", "\"x\"");
    check("missing.[a, b]", "{}", "null");
}

struct worker {
    const bw_jmespath_expr_t *e;
    json_t *data;
    int failures;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    json_t *want = json_loads("[\"b\", \"c\"]", 0, NULL);
    for (int i = 0; i < 10000; i++) {
        json_t *r = NULL;
        bw_jmespath_error_t err;
        if (bw_jmespath_eval(w->e, w->data, &r, &err) != 0 || !bw_jmespath_test_equal(r, want))
            w->failures++;
        json_decref(r);
    }
    json_decref(want);
    return NULL;
}

/* Each thread gets its own copy of the data: jansson's inline json_incref reads the reference
   count without an atomic load, which ThreadSanitizer reports when threads share values. What
   is under test is the one compiled expression shared by both threads. */
static void test_threads_share_one_expression(void **state)
{
    static const char expr[] = "sort_by(people[?age > `20`], &age)[].{n: name, s: to_string(age)} | [*].n";
    json_t *data = json_loads("{\"people\": [{\"name\": \"a\", \"age\": 20}, {\"name\": \"c\", \"age\": 40},"
                              " {\"name\": \"b\", \"age\": 30}]}",
                              0, NULL);
    bw_jmespath_expr_t *e = NULL;
    assert_int_equal(bw_jmespath_compile(expr, sizeof expr - 1, &e, NULL), 0);
    assert_true(bw_jmespath_expr_size(e) > 0);
    struct worker w[2] = {{e, json_deep_copy(data), 0}, {e, json_deep_copy(data), 0}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(w[0].failures + w[1].failures, 0);
    json_decref(w[0].data);
    json_decref(w[1].data);
    bw_jmespath_destroy(e);
    bw_jmespath_destroy(NULL);
    json_decref(data);
}

/* ---- the work budget ---- */

/* "{a:@,b:@} | {a:@,b:@} | ..." n times: a few steps to build, 2^n leaves once expanded. */
static char *dag(size_t n)
{
    return repeat("{a:@,b:@}", " | {a:@,b:@}", n - 1, "");
}

/* Compiles s, evaluates it with max_steps (0: default) and returns the status; *dt the time. */
static int run_budget(const char *s, json_t *data, uint64_t max_steps, bw_jmespath_error_t *err, double *dt)
{
    bw_jmespath_expr_t *e = NULL;
    json_t *r = NULL;
    bw_jmespath_eval_opts_t o = {.max_steps = max_steps, .max_bytes = UINT64_MAX}; /* steps alone */
    int rc = bw_jmespath_compile(s, strlen(s), &e, err);
    if (rc != 0)
        fail_msg("%s: %s", s, err->message);
    double t0 = now_s();
    rc = bw_jmespath_eval_opts(e, data, &o, &r, err);
    *dt = now_s() - t0;
    json_decref(r);
    bw_jmespath_destroy(e);
    return rc;
}

static void test_budget_exponential_results(void **state)
{
    char *d = dag(30), s[4096];
    static const char *const fmts[] = {
        "%s | to_string(@)",
        "[%s, %s] | [0] == [1]",
        "[%s, %s] | [0] != [1]",
        "contains([%s], %s)",
        "length(%s | to_string(@))",
        "[%s | to_string(@), 'x'] | sort(@)",
        "join(',', [%s | to_string(@)])",
        "[%s | to_string(@)] | sort_by(@, &@)",
        "max([%s | to_string(@)])",
        "[[%s, %s]] | [?[0] == [1]]",
        "[%s, %s] | map(&to_string(@), @)",
        /* 2^30 elements by doubling and flattening, then sorted; %.0s skips the arguments. */
        "[@, @] | [] | [@, @] | [] | [@, @] | [] | [@, @] | [] | [@, @] | [] | [@, @] | [] | [@, @] | [] | "
        "[@, @] | [] | [@, @] | [] | [@, @] | [] | [@, @] | [] | [@, @] | [] | [@, @] | [] | [@, @] | [] | "
        "[@, @] | [] | [@, @] | [] | [@, @] | [] | [@, @] | [] | [@, @] | [] | [@, @] | [] | [@, @] | [] | "
        "[@, @] | [] | [@, @] | [] | [@, @] | [] | [@, @] | [] | [@, @] | [] | [@, @] | [] | [@, @] | [] | "
        "[@, @] | [] | [@, @] | [] | sort(@)%.0s%.0s",
    };
    json_t *data = json_loads("[1]", 0, NULL);
    for (size_t i = 0; i < sizeof fmts / sizeof fmts[0]; i++) {
        bw_jmespath_error_t err;
        double dt;
        snprintf(s, sizeof s, fmts[i], d, d);
        int rc = run_budget(s, data, 5000000, &err, &dt);
        if (rc != BW_JMESPATH_ELIMIT)
            fail_msg("%.60s: %s, want limit", fmts[i], bw_jmespath_status_name(rc));
        assert_string_equal(err.message, "evaluation exceeded its budget of 5000000 steps");
        assert_true(err.offset == SIZE_MAX);
        printf("%.40s...: limit after %.2f s\n", fmts[i], dt); /* measured, not asserted (shared machines) */
    }
    /* The default budget stops them too, in about a second without sanitizers. */
    bw_jmespath_error_t err;
    double dt;
    char want[80];
    snprintf(s, sizeof s, "%s | to_string(@)", d);
    assert_int_equal(run_budget(s, data, 0, &err, &dt), BW_JMESPATH_ELIMIT);
    snprintf(want, sizeof want, "evaluation exceeded its budget of %llu steps",
             (unsigned long long)BW_JMESPATH_DEFAULT_MAX_STEPS);
    assert_string_equal(err.message, want);
    printf("default budget, exponential to_string: limit after %.2f s\n", dt);
    free(d);
    json_decref(data);
}

/* Two distinct arrays holding the very same values, compared a million times: the identity of
   the elements must not make the comparison free (before the fix, this did not end within 20 s). */
/* Evaluates s against data (JSON text) with a memory budget of max_bytes (and no step budget to speak of). */
static int run_mem(const char *s, const char *data_json, uint64_t max_bytes, bw_jmespath_error_t *err,
                   size_t *out_len)
{
    bw_jmespath_expr_t *e = NULL;
    json_t *r = NULL, *data = json_loads(data_json, JSON_DECODE_ANY, NULL);
    bw_jmespath_eval_opts_t o = {.max_steps = UINT64_MAX / 2, .max_bytes = max_bytes};
    assert_int_equal(bw_jmespath_compile(s, strlen(s), &e, err), 0);
    int rc = bw_jmespath_eval_opts(e, data, &o, &r, err);
    if (out_len != NULL && r != NULL) {
        char *text = json_dumps(r, JSON_ENCODE_ANY | JSON_COMPACT);
        *out_len = json_is_string(r) ? json_string_length(r) : strlen(text);
        free(text);
    }
    json_decref(r);
    json_decref(data);
    bw_jmespath_destroy(e);
    return rc;
}

/* The memory budget counts the values an evaluation builds as it builds them: for each expression the
   smallest budget that lets it finish (found by bisection) is at least what the result holds and a small
   multiple of it at most; one byte less fails with "exceeded its memory budget", before the value is
   held. Shared structure does not get past it: the 2^30-leaf to_string stops at the budget. */
static void test_memory_budget(void **state)
{
    char data[8192] = "[";
    for (int i = 0; i < 1000; i++)
        snprintf(data + strlen(data), sizeof data - strlen(data), "%s%d", i ? "," : "", i);
    strcat(data, "]");
    static const struct {
        const char *expr;
        unsigned ratio; /* the smallest budget is at most this times the result's size (+ 256) */
    } cases[] = {
        {"to_string(@)", 3},                /* bytes of string, separators, digits */
        {"join(',', [*].to_string(@))", 8}, /* strings, and the array of 1,000 that join reads */
        {"[*].[@, @]", 16},                 /* slots of new arrays: 16 bytes each, "[1,1]," is 6 */
        {"[*].{a: @}", 16},                 /* members of new objects */
        {"sort(@)", 16},
        {"[@, @, @, @] | []", 16},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        bw_jmespath_error_t err;
        size_t len = 0;
        uint64_t lo = 0, hi = 1u << 30; /* lo fails, hi passes */
        assert_int_equal(run_mem(cases[i].expr, data, hi, &err, &len), 0);
        while (hi - lo > 1) {
            uint64_t mid = lo + (hi - lo) / 2;
            if (run_mem(cases[i].expr, data, mid, &err, NULL) == 0)
                hi = mid;
            else
                lo = mid;
        }
        assert_int_equal(run_mem(cases[i].expr, data, hi, &err, NULL), 0); /* at the limit */
        assert_int_equal(run_mem(cases[i].expr, data, hi - 1, &err, NULL), BW_JMESPATH_ELIMIT); /* past it */
        char want[96];
        snprintf(want, sizeof want, "evaluation exceeded its memory budget of %llu bytes",
                 (unsigned long long)(hi - 1));
        assert_string_equal(err.message, want);
        if (hi < len / 2 || hi > cases[i].ratio * len + 256)
            fail_msg("%s: smallest budget %llu for a result of %zu bytes", cases[i].expr,
                     (unsigned long long)hi, len);
        printf("%-28s result %6zu bytes, smallest memory budget %7llu\n", cases[i].expr, len,
               (unsigned long long)hi);
    }
    /* shared structure: 2^30 leaves, stopped at 1 MiB of string in well under the step budget */
    char *d = dag(30), s[1024];
    snprintf(s, sizeof s, "%s | to_string(@)", d);
    free(d);
    bw_jmespath_error_t err;
    assert_int_equal(run_mem(s, "[1]", 1 << 20, &err, NULL), BW_JMESPATH_ELIMIT);
    assert_string_equal(err.message, "evaluation exceeded its memory budget of 1048576 bytes");
}

static void test_budget_identical_elements(void **state)
{
    json_t *data = json_array();
    for (int i = 0; i < 100000; i++)
        json_array_append_new(data, json_integer(i));
    char *doubling = repeat("[@, @[:]] | [@]", " | [@, @] | []", 20, " | length([?[0] == [1]])");
    bw_jmespath_error_t err;
    double dt;
    assert_int_equal(run_budget(doubling, data, 5000000, &err, &dt), BW_JMESPATH_ELIMIT);
    printf("identical elements: limit after %.2f s\n", dt); /* the budget bounds it; time is reported */
    free(doubling);
    json_decref(data);
}

static void test_budget_stops_projection(void **state)
{
    json_t *data = json_array();
    for (int i = 0; i < 100000; i++)
        json_array_append_new(data, json_pack("{si}", "a", i));
    bw_jmespath_expr_t *e = NULL;
    bw_jmespath_error_t err;
    json_t *r = NULL;
    uint64_t steps = 0;
    assert_int_equal(bw_jmespath_compile("[*].a", 5, &e, NULL), 0);
    bw_jmespath_eval_opts_t o = {.max_steps = 1000};
    assert_int_equal(bw_jmespath_eval_opts(e, data, &o, &r, &err), BW_JMESPATH_ELIMIT);
    assert_null(r);
    assert_string_equal(err.message, "evaluation exceeded its budget of 1000 steps");
    assert_int_equal(bw_jmespath_test_eval_steps(e, data, &o, &r, &steps), BW_JMESPATH_ELIMIT);
    assert_true(steps <= 1000);
    /* Enough budget: one step per element and a few for the nodes. */
    o.max_steps = 200000;
    assert_int_equal(bw_jmespath_test_eval_steps(e, data, &o, &r, &steps), 0);
    assert_int_equal(json_array_size(r), 100000);
    assert_true(steps >= 100000 && steps < 100010);
    json_decref(r);
    bw_jmespath_destroy(e);
    json_decref(data);
}

struct canceller {
    _Atomic int *flag;
    double set_at;
};

static void *cancel_main(void *arg)
{
    struct canceller *k = arg;
    struct timespec ts = {0, 100 * 1000 * 1000};
    nanosleep(&ts, NULL);
    k->set_at = now_s();
    atomic_store(k->flag, 1);
    return NULL;
}

static void test_cancel_from_another_thread(void **state)
{
    char *d = dag(40), s[2048];
    snprintf(s, sizeof s, "[%s, %s] | [0] == [1]", d, d);
    free(d);
    _Atomic int flag = 0;
    bw_jmespath_eval_opts_t o = {.max_steps = UINT64_MAX, .cancel = &flag};
    bw_jmespath_expr_t *e = NULL;
    bw_jmespath_error_t err;
    json_t *r = NULL;
    assert_int_equal(bw_jmespath_compile(s, strlen(s), &e, NULL), 0);
    struct canceller k = {&flag, 0};
    pthread_t t;
    json_t *one = json_integer(1);
    assert_int_equal(pthread_create(&t, NULL, cancel_main, &k), 0);
    assert_int_equal(bw_jmespath_eval_opts(e, one, &o, &r, &err), BW_JMESPATH_ECANCELLED);
    double late = now_s() - k.set_at;
    pthread_join(t, NULL);
    assert_null(r);
    assert_string_equal(err.message, "evaluation cancelled");
    if (late > 0.1)
        fail_msg("stopped %.3f s after the flag was set", late);
    /* A flag already set stops the evaluation before it starts; a clear flag changes nothing. */
    assert_int_equal(bw_jmespath_eval_opts(e, one, &o, &r, &err), BW_JMESPATH_ECANCELLED);
    json_decref(one);
    bw_jmespath_destroy(e);
    flag = 0;
    assert_int_equal(bw_jmespath_compile("length(@)", 9, &e, NULL), 0);
    json_t *data = json_loads("[1, 2]", 0, NULL);
    assert_int_equal(bw_jmespath_eval_opts(e, data, &o, &r, &err), 0);
    assert_int_equal(json_integer_value(r), 2);
    json_decref(r);
    json_decref(data);
    bw_jmespath_destroy(e);
}

/* Largest number of steps any case of one suite file needs; fails on limit or cancelled. */
static uint64_t suite_file_steps(const char *path)
{
    json_t *groups = json_load_file(path, 0, NULL), *group, *c;
    size_t gi, ci;
    uint64_t most = 0;
    assert_non_null(groups);
    json_array_foreach(groups, gi, group)
    {
        json_array_foreach(json_object_get(group, "cases"), ci, c)
        {
            const json_t *x = json_object_get(c, "expression");
            bw_jmespath_expr_t *e = NULL;
            json_t *r = NULL;
            uint64_t steps = 0;
            if (bw_jmespath_compile(json_string_value(x), json_string_length(x), &e, NULL) != 0)
                continue;
            int rc = bw_jmespath_test_eval_steps(e, json_object_get(group, "given"), NULL, &r, &steps);
            if (rc == BW_JMESPATH_ELIMIT || rc == BW_JMESPATH_ECANCELLED)
                fail_msg("%s: %s: %s", path, json_string_value(x), bw_jmespath_status_name(rc));
            most = steps > most ? steps : most;
            json_decref(r);
            bw_jmespath_destroy(e);
        }
    }
    json_decref(groups);
    return most;
}

/* The default budget is three orders of magnitude above what any compliance case needs. */
static void test_default_budget_margin(void **state)
{
    DIR *d = opendir(BW_FIXTURES_DIR "/jmespath");
    struct dirent *de;
    uint64_t most = 0;
    size_t files = 0;
    assert_non_null(d);
    while ((de = readdir(d)) != NULL) {
        size_t n = strlen(de->d_name);
        if (n < 5 || strcmp(de->d_name + n - 5, ".json") != 0)
            continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", BW_FIXTURES_DIR "/jmespath", de->d_name);
        uint64_t m = suite_file_steps(path);
        most = m > most ? m : most;
        files++;
    }
    closedir(d);
    printf("compliance suite: at most %llu steps per case (%zu files)\n", (unsigned long long)most, files);
    assert_true(files > 0);
    assert_true(most < BW_JMESPATH_DEFAULT_MAX_STEPS / 1000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_error_offsets_and_messages),
        cmocka_unit_test(test_expression_depth_limits),
        cmocka_unit_test(test_deep_data),
        cmocka_unit_test(test_one_megabyte_expressions),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_integer_real_preservation),
        cmocka_unit_test(test_to_string_format),
        cmocka_unit_test(test_not_nul_terminated),
        cmocka_unit_test(test_literals_and_strings),
        cmocka_unit_test(test_overflow_is_an_error),
        cmocka_unit_test(test_null_is_not_short_circuited),
        cmocka_unit_test(test_threads_share_one_expression),
        cmocka_unit_test(test_budget_exponential_results),
        cmocka_unit_test(test_budget_identical_elements),
        cmocka_unit_test(test_memory_budget),
        cmocka_unit_test(test_budget_stops_projection),
        cmocka_unit_test(test_cancel_from_another_thread),
        cmocka_unit_test(test_default_budget_margin),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
