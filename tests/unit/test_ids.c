/* Unit tests for util/ids.c: UUID v4 generation and the router's id formats. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "util/ids.h"

#define V(fn, s) fn(s, strlen(s))

static void test_uuid_v4_generation(void **state)
{
    char a[37], b[37];
    for (int i = 0; i < 1000; i++) {
        bw_uuid_v4(a);
        assert_true(V(bw_is_uuid_v4, a));
        assert_int_equal(strlen(a), 36);
    }
    bw_uuid_v4(b);
    assert_string_not_equal(a, b);
}

static void test_trace_ids(void **state)
{
    assert_true(V(bw_is_valid_trace_id, "0af7651916cd43dd8448eb211c80319c"));
    assert_true(V(bw_is_valid_trace_id, "0AF7651916CD43DD8448EB211C80319C"));
    assert_true(V(bw_is_valid_trace_id, "9b2f6c1e-4d7a-4c3b-8e21-5f0a7d9c3b12"));
    /* what the router rejects (fixture labels e1..e5, e9) */
    assert_false(V(bw_is_valid_trace_id, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
    assert_false(V(bw_is_valid_trace_id, "0af7651916cd43dd"));
    assert_false(V(bw_is_valid_trace_id, ""));
    assert_false(V(bw_is_valid_trace_id, "e8419331-23f4-a731-47ee-35b7c23a8111")); /* not v4 */
    assert_false(V(bw_is_valid_trace_id, "9b2f6c1e-4d7a-4c3b-7e21-5f0a7d9c3b12")); /* bad variant */
    assert_false(V(bw_is_valid_trace_id, "0af7651916cd43dd8448eb211c80319g"));
    char long_hex[129];
    memset(long_hex, 'a', 128);
    long_hex[128] = 0;
    assert_false(V(bw_is_valid_trace_id, long_hex));
}

static void test_run_ids(void **state)
{
    assert_true(V(bw_is_valid_run_id, "01ARZ3NDEKTSV4RRFFQ69G5FAV"));
    assert_false(V(bw_is_valid_run_id, "01arz3ndektsv4rrffq69g5fav")); /* lower-case ULID: d7 */
    assert_false(V(bw_is_valid_run_id, "81ARZ3NDEKTSV4RRFFQ69G5FAV")); /* overflows 128 bits */
    assert_false(V(bw_is_valid_run_id, "01ARZ3NDEKTSV4RRFFQ69G5FAI")); /* I is not Crockford */
    assert_true(V(bw_is_valid_run_id, "6f1c2a9e-3b4d-4e5f-9a0b-1c2d3e4f5a6b"));
    assert_false(V(bw_is_valid_run_id, "e8419331-23f4-a731-47ee-35b7c23a8111"));
}

static void test_traceparent(void **state)
{
    char out[33];
    assert_true(bw_traceparent_trace_id("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", out));
    assert_string_equal(out, "0af7651916cd43dd8448eb211c80319c");
    assert_false(bw_traceparent_trace_id("00-00000000000000000000000000000000-b7ad6b7169203331-01", out));
    assert_false(bw_traceparent_trace_id("garbage", out));
    assert_false(bw_traceparent_trace_id(NULL, out));
    /* the router's own traceparent header is not valid W3C (hex of hex): rejected */
    assert_false(bw_traceparent_trace_id(
        "00-3662383139386362623334356335386333653163303261623866653061613238-3030-01", out));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uuid_v4_generation),
        cmocka_unit_test(test_trace_ids),
        cmocka_unit_test(test_run_ids),
        cmocka_unit_test(test_traceparent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
