/* Unit tests for util/jsonw.c (the hot-path JSON writer) and util/base64.c. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "util/base64.h"
#include "util/jsonw.h"

static char *str_json(const char *s, size_t n)
{
    bw_buf_t b;
    bw_buf_init(&b, 4);
    bw_jsonw_string(&b, s, n);
    return b.p;
}

static void test_escaping(void **state)
{
    static const char in[] = "a\"b\\c\n\t\x01 é 😀";
    char *out = str_json(in, sizeof in - 1);
    json_t *j = json_loads(out, JSON_DECODE_ANY, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(j), in);
    assert_non_null(strstr(out, "\\u0001"));
    json_decref(j);
    free(out);
}

static void test_invalid_utf8_replaced(void **state)
{
    static const char *const bad[] = {"\xff",         "\xc0\xaf",         "\xe0\x80\x80",
                                      "\xed\xa0\x80", "\xf4\x90\x80\x80", "abc\xe2\x82"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *out = str_json(bad[i], strlen(bad[i]));
        json_t *j = json_loads(out, JSON_DECODE_ANY, NULL); /* jansson rejects invalid UTF-8 */
        if (j == NULL)
            fail_msg("case %zu produced invalid JSON: %s", i, out);
        assert_non_null(strstr(json_string_value(j), "\xef\xbf\xbd"));
        json_decref(j);
        free(out);
    }
    char *nul = str_json("a\0b", 3);
    assert_string_equal(nul, "\"a\\u0000b\"");
    free(nul);
}

static void test_members_and_large_value(void **state)
{
    bw_buf_t b;
    bool first = true;
    bw_buf_init(&b, 8);
    json_t *big = json_object();
    char key[16];
    for (int i = 0; i < 500; i++) {
        snprintf(key, sizeof key, "k%d", i);
        json_object_set_new(big, key, json_string("some value"));
    }
    bw_buf_append(&b, "{", 1);
    bw_jsonw_str(&b, &first, "a", "x");
    bw_jsonw_str(&b, &first, "skipped", NULL);
    bw_jsonw_int(&b, &first, "n", -42);
    bw_jsonw_raw(&b, &first, "cost", "0.0");
    bw_jsonw_value(&b, &first, "big", big);
    json_t *s = json_string("scalar");
    bw_jsonw_value(&b, &first, "s", s);
    bw_buf_append(&b, "}", 1);
    json_t *j = json_loads(b.p, 0, NULL);
    assert_non_null(j);
    assert_int_equal(json_integer_value(json_object_get(j, "n")), -42);
    assert_null(json_object_get(j, "skipped"));
    assert_int_equal(json_object_size(json_object_get(j, "big")), 500);
    assert_string_equal(json_string_value(json_object_get(j, "s")), "scalar");
    assert_true(json_is_real(json_object_get(j, "cost")));
    json_decref(j);
    json_decref(big);
    json_decref(s);
    bw_buf_dispose(&b);
}

/* Reals in their shortest exact form; every kind of value written as jansson would parse it back. */
static void test_values_and_reals(void **state)
{
    static const struct {
        double d;
        const char *want;
    } cases[] = {
        {0.1, "0.1"},
        {0.1 + 0.2, "0.30000000000000004"},
        {1.0 / 3, "0.3333333333333333"},
        {5.0, "5.0"},
        {-0.0, "-0.0"},
        {1e300, "1e+300"},
        {1.5e-7, "1.5e-07"},
        {9007199254740993.0, "9007199254740992.0"},
        {123456.789, "123456.789"},
    };
    char out[40];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bw_jsonw_format_double(cases[i].d, out);
        assert_string_equal(out, cases[i].want);
    }
    /* any finite double reads back exactly, and no longer than 17 significant digits */
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < 200000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        double d;
        memcpy(&d, &x, sizeof d);
        if (!isfinite(d))
            continue;
        size_t n = bw_jsonw_format_double(d, out);
        assert_true(n == strlen(out) && n < 32);
        assert_true(strtod(out, NULL) == d);
    }
    /* a whole value: nested, keys in order, reals, round trip through jansson */
    json_t *v = json_pack("{s:[i,f,f,b,n,s],s:{s:f}}", "a", 7, 0.1, 2.0, 1, "x\"y", "o", "k", -2.5);
    bw_buf_t b;
    bool first = true;
    bw_buf_init(&b, 4);
    bw_buf_append(&b, "{", 1);
    bw_jsonw_value(&b, &first, "v", v);
    bw_buf_append(&b, "}", 1);
    assert_string_equal(b.p, "{\"v\":{\"a\":[7,0.1,2.0,true,null,\"x\\\"y\"],\"o\":{\"k\":-2.5}}}");
    json_t *back = json_loads(b.p, 0, NULL);
    assert_non_null(back);
    assert_true(json_equal(json_object_get(back, "v"), v));
    json_decref(back);
    json_decref(v);
    bw_buf_dispose(&b);
}

/* Indented for people, strings and numbers as they are (structural characters inside strings too). */
static void test_pretty(void **state)
{
    static const char in[] =
        "{\"a\":[1,0.1,{}],\"s\":\"x,y:{\\\"z\\\"}[]\\\\\",\"e\":[ ],\"o\":{\"k\":null}}";
    bw_buf_t b;
    bw_buf_init(&b, 4);
    bw_jsonw_pretty(&b, in, sizeof in - 1);
    assert_string_equal(b.p,
                        "{\n  \"a\": [\n    1,\n    0.1,\n    {}\n  ],\n  \"s\": \"x,y:{\\\"z\\\"}[]\\\\\",\n"
                        "  \"e\": [],\n  \"o\": {\n    \"k\": null\n  }\n}");
    json_t *a = json_loads(in, 0, NULL), *c = json_loads(b.p, 0, NULL);
    assert_true(a != NULL && c != NULL && json_equal(a, c));
    json_decref(a);
    json_decref(c);
    bw_buf_dispose(&b);
}

/* The size bound is never below the real encoding, and stops early on values that share structure. */
static void test_size_bounded(void **state)
{
    const char *docs[] = {
        "{}",        "[]", "null", "\"a\\\"b\\u0001\"", "{\"k\":[1,-22,3.5,true,false,null,\"\u00e9\"]}",
        "[[[[[]]]]]"};
    for (size_t i = 0; i < sizeof docs / sizeof docs[0]; i++) {
        json_t *v = json_loads(docs[i], JSON_DECODE_ANY, NULL);
        assert_non_null(v);
        char *enc = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        size_t n = bw_jsonw_size_bounded(v, 1 << 20);
        assert_true(n >= strlen(enc) && n <= 4 * strlen(enc) + 24);
        assert_int_equal(bw_jsonw_size_bounded(v, strlen(enc) / 2), strlen(enc) / 2 >= n ? n : SIZE_MAX);
        free(enc);
        json_decref(v);
    }
    /* {a: x, b: x} nested 60 times: 2^60 leaves once written out */
    json_t *v = json_integer(1);
    for (int i = 0; i < 60; i++) {
        json_t *o = json_object();
        json_object_set(o, "a", v);
        json_object_set_new(o, "b", v);
        v = o;
    }
    assert_int_equal(bw_jsonw_size_bounded(v, 1 << 20), SIZE_MAX);
    json_decref(v);
}

static void test_base64(void **state)
{
    static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const enc[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    for (int i = 0; i < 7; i++) {
        char *e = bw_base64_encode(plain[i], strlen(plain[i]));
        assert_string_equal(e, enc[i]);
        size_t n = 0;
        unsigned char *d = bw_base64_decode(e, strlen(e), &n);
        assert_non_null(d);
        assert_int_equal(n, strlen(plain[i]));
        assert_memory_equal(d, plain[i], n);
        free(d);
        free(e);
    }
    size_t n;
    assert_null(bw_base64_decode("Zm9", 3, &n));
    assert_null(bw_base64_decode("Zm9v!A==", 8, &n));
    assert_null(bw_base64_decode("Z===", 4, &n));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_invalid_utf8_replaced),
        cmocka_unit_test(test_members_and_large_value),
        cmocka_unit_test(test_values_and_reals),
        cmocka_unit_test(test_pretty),
        cmocka_unit_test(test_base64),
        cmocka_unit_test(test_size_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
