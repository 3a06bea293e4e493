/*
 * Compact JSON text for to_string(): no whitespace, object keys in insertion order, reals in the
 * shortest form that reads back to the same double, spelled like Python's repr (the reference
 * implementation): 1.0, 0.1, 1e+21, 1e-07 (util/jsonw.c's bw_jsonw_format_double, which the results
 * use too; jansson's own writer prints 0.1 as 0.10000000000000001).
 *
 * Strings keep their UTF-8; only '"', '\\' and control characters are escaped. Recursion is
 * bounded by BW_JMESPATH_MAX_DATA_DEPTH, and every value and every 16 bytes of string written is
 * charged to the evaluation's budget first: a value that shares structure can print as far more
 * text than it occupies.
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jmespath_int.h"
#include "util/jsonw.h"

/* Appends s[0..n) as a JSON string; false when the budget ran out first. */
static bool dump_string(jp_ctx_t *c, jp_buf_t *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    if (!jp_charge_out(c, n + 2))
        return false;
    size_t start = b->len;
    jp_buf_putc(b, '"');
    size_t run = 0; /* start of the pending unescaped run */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        jp_buf_append(b, s + run, i - run);
        run = i + 1;
        char esc[6] = {'\\', 0, 0, 0, 0, 0};
        size_t len = 2;
        switch (c) {
        case '"':
        case '\\':
            esc[1] = (char)c;
            break;
        case '\b':
            esc[1] = 'b';
            break;
        case '\f':
            esc[1] = 'f';
            break;
        case '\n':
            esc[1] = 'n';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        case '\t':
            esc[1] = 't';
            break;
        default:
            memcpy(esc + 1, "u00", 3);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            len = 6;
        }
        jp_buf_append(b, esc, len);
    }
    jp_buf_append(b, s + run, n - run);
    jp_buf_putc(b, '"');
    return jp_mem(c, b->len - start - n - 2); /* the escapes, once known: at most 5 bytes a byte */
}

static int dump_at(jp_ctx_t *c, jp_buf_t *b, const json_t *v, int depth);

/* Decimal text of i (no NUL); returns its length. Several times faster than snprintf. */
static size_t format_int(json_int_t i, char out[24])
{
    char rev[24];
    size_t n = 0, k = 0;
    uint64_t u = i < 0 ? 0 - (uint64_t)i : (uint64_t)i;
    do {
        rev[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    if (i < 0)
        out[k++] = '-';
    while (n > 0)
        out[k++] = rev[--n];
    return k;
}

/* Extra steps for printing a real: up to three snprintf/strtod round trips, about as long as
   REAL_COST steps of anything else. */
#define REAL_COST 32

static int dump_array(jp_ctx_t *c, jp_buf_t *b, const json_t *v, int depth)
{
    jp_buf_putc(b, '[');
    for (size_t i = 0, end = json_array_size(v); i < end; i++) {
        if (i > 0)
            jp_buf_putc(b, ',');
        if (dump_at(c, b, json_array_get(v, i), depth + 1) < 0)
            return -1;
    }
    jp_buf_putc(b, ']');
    return 0;
}

static int dump_object(jp_ctx_t *c, jp_buf_t *b, const json_t *v, int depth)
{
    const char *key;
    size_t klen;
    json_t *val;
    bool first = true;
    jp_buf_putc(b, '{');
    json_object_keylen_foreach((json_t *)v, key, klen, val)
    {
        if (!first)
            jp_buf_putc(b, ',');
        first = false;
        if (!dump_string(c, b, key, klen))
            return -1;
        jp_buf_putc(b, ':');
        if (dump_at(c, b, val, depth + 1) < 0)
            return -1;
    }
    jp_buf_putc(b, '}');
    return 0;
}

/* Appends the n bytes at s, charged to the memory budget first. */
static int put(jp_ctx_t *c, jp_buf_t *b, const char *s, size_t n)
{
    if (!jp_mem(c, n))
        return -1;
    jp_buf_append(b, s, n);
    return 0;
}

static int dump_at(jp_ctx_t *c, jp_buf_t *b, const json_t *v, int depth)
{
    char num[40];
    /* 2 bytes of the memory budget for the separator and brackets around a value */
    if (depth > BW_JMESPATH_MAX_DATA_DEPTH || !jp_charge(c, 1) || !jp_mem(c, 2))
        return -1;
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return dump_object(c, b, v, depth);
    case JSON_ARRAY:
        return dump_array(c, b, v, depth);
    case JSON_STRING:
        return dump_string(c, b, json_string_value(v), json_string_length(v)) ? 0 : -1;
    case JSON_INTEGER:
        return put(c, b, num, format_int(json_integer_value(v), num));
    case JSON_REAL:
        if (!jp_charge(c, REAL_COST))
            return -1;
        return put(c, b, num, bw_jsonw_format_double(json_real_value(v), num));
    case JSON_TRUE:
        return put(c, b, "true", 4);
    case JSON_FALSE:
        return put(c, b, "false", 5);
    case JSON_NULL:
        break;
    }
    return put(c, b, "null", 4);
}

int jp_dump(jp_ctx_t *c, jp_buf_t *b, const json_t *v)
{
    return dump_at(c, b, v, 0);
}
