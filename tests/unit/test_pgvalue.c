/* Unit tests for net/pgvalue.c: PostgreSQL's text values to JSON, losslessly. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "net/pgvalue.h"

/* The value of text for type oid, as compact JSON, compared with want. */
static void is(bw_pg_oid_t oid, const char *text, const char *want)
{
    json_t *v = bw_pg_value(oid, text, strlen(text));
    char *got = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (strcmp(got, want) != 0)
        fail_msg("oid %u '%s': got %s, want %s", oid, text, got, want);
    free(got);
    json_decref(v);
}

static void test_numbers(void **state)
{
    is(16, "t", "true");
    is(16, "f", "false");
    is(21, "-32768", "-32768");
    is(23, "2147483647", "2147483647");
    is(26, "4294967295", "4294967295");
    is(20, "9007199254740992", "9007199254740992");
    is(20, "-9007199254740992", "-9007199254740992");
    is(20, "9007199254740993", "\"9007199254740993\"");
    is(20, "-9223372036854775808", "\"-9223372036854775808\"");
    is(701, "1.5", "1.5");
    is(701, "-2.5e3", "-2500.0");
    is(700, "0.25", "0.25");
    is(700, "NaN", "\"NaN\"");
    is(701, "Infinity", "\"Infinity\"");
    is(701, "-Infinity", "\"-Infinity\"");
    is(1700, "12345678901234567890.123456789", "\"12345678901234567890.123456789\"");
    is(1700, "NaN", "\"NaN\"");
}

static void test_text_and_json(void **state)
{
    is(25, "h\xc3\xa9llo", "\"h\xc3\xa9llo\"");
    is(1043, "", "\"\"");
    is(1042, "ab  ", "\"ab  \"");
    is(2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\"");
    is(114, "{\"a\": [1, 2.5, null]}", "{\"a\":[1,2.5,null]}");
    is(3802, "[1, \"x\"]", "[1,\"x\"]");
    is(3802, "{\"big\": 12345678901234567890}", "{\"big\":1.2345678901234567e19}");
    is(3802, "\"s\"", "\"s\"");
    is(114, "not json", "\"not json\"");
}

static void test_times(void **state)
{
    is(1114, "2024-01-02 03:04:05", "\"2024-01-02T03:04:05\"");
    is(1114, "2024-01-02 03:04:05.123456", "\"2024-01-02T03:04:05.123456\"");
    is(1184, "2024-01-02 03:04:05.5+00", "\"2024-01-02T03:04:05.5Z\"");
    is(1184, "2024-01-02 03:04:05+05:30", "\"2024-01-02T03:04:05+05:30\"");
    is(1184, "2024-01-02 03:04:05-03", "\"2024-01-02T03:04:05-03:00\"");
    is(1114, "infinity", "\"infinity\"");
    is(1184, "0044-03-15 12:00:00+00 BC", "\"0044-03-15 12:00:00+00 BC\"");
    is(1082, "2024-02-29", "\"2024-02-29\"");
    is(1083, "23:59:59.999", "\"23:59:59.999\"");
    is(1186, "P1Y2M3DT4H5M6S", "\"P1Y2M3DT4H5M6S\"");
}

static void test_bytea(void **state)
{
    is(17, "\\x", "\"\"");
    is(17, "\\x000102ff", "\"AAEC/w==\"");
    is(17, "\\x0", "\"\\\\x0\""); /* odd length: not hex, kept */
}

static void test_arrays(void **state)
{
    is(1007, "{1,2,3}", "[1,2,3]");
    is(1007, "{}", "[]");
    is(1007, "{{1,2},{3,NULL}}", "[[1,2],[3,null]]");
    is(1009, "{a,\"b c\",\"NULL\",NULL,\"q\\\"uote\",\"back\\\\slash\"}",
       "[\"a\",\"b c\",\"NULL\",null,\"q\\\"uote\",\"back\\\\slash\"]");
    is(1016, "{1,9007199254740993}", "[1,\"9007199254740993\"]");
    is(1000, "{t,f}", "[true,false]");
    is(1185, "{\"2024-01-02 03:04:05+00\"}", "[\"2024-01-02T03:04:05Z\"]");
    is(3807, "{\"{\\\"a\\\": 1}\",\"[2]\"}", "[{\"a\":1},[2]]");
    is(1001, "{\"\\\\x01ff\"}", "[\"Af8=\"]");
    is(1007, "[0:1]={5,6}", "[5,6]");
    is(1007, "{1,2", "\"{1,2\""); /* broken: kept as text */
}

static void test_names(void **state)
{
    assert_string_equal(bw_pg_type_name(23), "int4");
    assert_string_equal(bw_pg_type_name(1009), "_text");
    assert_string_equal(bw_pg_type_name(1184), "timestamptz");
    assert_null(bw_pg_type_name(99999));
    /* unknown types keep their text */
    is(99999, "(1,x)", "\"(1,x)\"");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_numbers), cmocka_unit_test(test_text_and_json), cmocka_unit_test(test_times),
        cmocka_unit_test(test_bytea),   cmocka_unit_test(test_arrays),        cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
