/*
 * JMESPath's view of JSON values: type names, truthiness, number and string ordering, deep
 * equality, number construction and UTF-8 helpers.
 *
 * Numbers keep jansson's integer/real distinction, but compare by value: 1 == 1.0, and an
 * integer compares exactly against a real even beyond 2^53. Strings are UTF-8, so byte order is
 * code point order. Nothing here allocates except the number constructors. Equality charges the
 * evaluation's budget per value visited (and per 64 bytes of string or key compared): values that
 * share structure would otherwise make it exponential.
 */
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "jmespath_int.h"

const char *jp_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "object";
    case JSON_ARRAY:
        return "array";
    case JSON_STRING:
        return "string";
    case JSON_INTEGER:
    case JSON_REAL:
        return "number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "boolean";
    case JSON_NULL:
        break;
    }
    return "null";
}

bool jp_truthy(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return json_object_size(v) > 0;
    case JSON_ARRAY:
        return json_array_size(v) > 0;
    case JSON_STRING:
        return json_string_length(v) > 0;
    case JSON_FALSE:
    case JSON_NULL:
        return false;
    default:
        return true;
    }
}

/* Compares integer i with real r exactly (no rounding of i to double). */
static int int_real_cmp(json_int_t i, double r)
{
    if (r >= 9223372036854775808.0) /* 2^63: above every int64 */
        return -1;
    if (r < -9223372036854775808.0)
        return 1;
    json_int_t t = (json_int_t)r; /* truncates toward zero, exact in this range */
    if (i != t)
        return i < t ? -1 : 1;
    double frac = r - (double)t;
    return frac > 0 ? -1 : frac < 0 ? 1 : 0;
}

int jp_num_cmp(const json_t *a, const json_t *b)
{
    if (json_is_integer(a) && json_is_integer(b)) {
        json_int_t x = json_integer_value(a), y = json_integer_value(b);
        return x < y ? -1 : x > y;
    }
    if (json_is_integer(a))
        return int_real_cmp(json_integer_value(a), json_real_value(b));
    if (json_is_integer(b))
        return -int_real_cmp(json_integer_value(b), json_real_value(a));
    double x = json_real_value(a), y = json_real_value(b);
    return x < y ? -1 : x > y;
}

int jp_str_cmp(const json_t *a, const json_t *b)
{
    size_t la = json_string_length(a), lb = json_string_length(b);
    int c = memcmp(json_string_value(a), json_string_value(b), la < lb ? la : lb);
    if (c != 0)
        return c < 0 ? -1 : 1;
    return la < lb ? -1 : la > lb;
}

static int equal_at(jp_ctx_t *c, const json_t *a, const json_t *b, int depth);

static int array_equal(jp_ctx_t *c, const json_t *a, const json_t *b, int depth)
{
    size_t n = json_array_size(a);
    if (n != json_array_size(b))
        return 0;
    for (size_t i = 0; i < n; i++) {
        int r = equal_at(c, json_array_get(a, i), json_array_get(b, i), depth + 1);
        if (r != 1)
            return r;
    }
    return 1;
}

static int object_equal(jp_ctx_t *c, const json_t *a, const json_t *b, int depth)
{
    if (json_object_size(a) != json_object_size(b))
        return 0;
    const char *key;
    size_t klen;
    json_t *va;
    json_object_keylen_foreach((json_t *)a, key, klen, va)
    {
        if (!jp_charge(c, jp_bytes_cost(klen))) /* hashing the key */
            return -1;
        json_t *vb = json_object_getn(b, key, klen);
        if (vb == NULL)
            return 0;
        int r = equal_at(c, va, vb, depth + 1);
        if (r != 1)
            return r;
    }
    return 1;
}

static int equal_at(jp_ctx_t *c, const json_t *a, const json_t *b, int depth)
{
    if (!jp_charge(c, 1)) /* even for a == b: two arrays can hold the same values */
        return -1;
    if (a == b)
        return 1;
    if (depth > BW_JMESPATH_MAX_DATA_DEPTH)
        return -1;
    if (json_is_number(a) && json_is_number(b))
        return jp_num_cmp(a, b) == 0;
    if (json_typeof(a) != json_typeof(b))
        return 0;
    switch (json_typeof(a)) {
    case JSON_STRING:
        if (json_string_length(a) != json_string_length(b))
            return 0;
        return jp_charge(c, jp_bytes_cost(json_string_length(a))) ? jp_str_cmp(a, b) == 0 : -1;
    case JSON_ARRAY:
        return array_equal(c, a, b, depth);
    case JSON_OBJECT:
        return object_equal(c, a, b, depth);
    default:
        return 1; /* true, false, null: the type is the value */
    }
}

int jp_equal(jp_ctx_t *c, const json_t *a, const json_t *b)
{
    return equal_at(c, a, b, 0);
}

json_t *jp_real(double d)
{
    if (!isfinite(d))
        return json_null();
    return jp_xjson(json_real(d));
}

json_t *jp_integral(double d)
{
    if (d >= -9223372036854775808.0 && d < 9223372036854775808.0 && d == floor(d))
        return jp_xjson(json_integer((json_int_t)d));
    return jp_real(d);
}

/* ---- to_number ---- */

static size_t skip_digits(const char *s, size_t i, size_t n)
{
    while (i < n && s[i] >= '0' && s[i] <= '9')
        i++;
    return i;
}

/* Length of the JSON number at s (whole string), or 0 when s[0..n) is not exactly one;
 *integral tells whether it has neither fraction nor exponent. */
static size_t json_number_span(const char *s, size_t n, bool *integral)
{
    size_t i = 0, d;
    if (i < n && s[i] == '-')
        i++;
    if (i < n && s[i] == '0')
        i++;
    else if ((d = skip_digits(s, i, n)) > i)
        i = d;
    else
        return 0;
    *integral = true;
    if (i < n && s[i] == '.') {
        if ((d = skip_digits(s, i + 1, n)) == i + 1)
            return 0;
        i = d;
        *integral = false;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-'))
            i++;
        if ((d = skip_digits(s, i, n)) == i)
            return 0;
        i = d;
        *integral = false;
    }
    return i == n ? n : 0;
}

static pthread_once_t c_locale_once = PTHREAD_ONCE_INIT;
static locale_t c_locale;

static void c_locale_init(void)
{
    c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
}

/* strtod in the "C" locale, whatever the process locale is; s is NUL-terminated. */
static double strtod_c(const char *s)
{
    pthread_once(&c_locale_once, c_locale_init);
    if (c_locale == (locale_t)0)
        return strtod(s, NULL);
    return strtod_l(s, NULL, c_locale);
}

static json_t *parse_integer(const char *s, size_t n)
{
    bool neg = s[0] == '-';
    json_int_t v = 0;
    for (size_t i = neg; i < n; i++) {
        int digit = s[i] - '0';
        /* Accumulate negatively so INT64_MIN parses; overflow means "too big for an integer". */
        if (v < (INT64_MIN + digit) / 10)
            return NULL;
        v = v * 10 - digit;
    }
    if (!neg) {
        if (v == INT64_MIN)
            return NULL;
        v = -v;
    }
    return jp_xjson(json_integer(v));
}

json_t *jp_parse_number(const char *s, size_t n, bool *overflow)
{
    bool integral = false;
    *overflow = false;
    if (json_number_span(s, n, &integral) == 0)
        return NULL;
    if (integral) {
        json_t *i = parse_integer(s, n);
        if (i != NULL)
            return i;
    }
    char small[64];
    char *buf = n < sizeof small ? small : jp_xmalloc(n + 1);
    memcpy(buf, s, n);
    buf[n] = '\0';
    double d = strtod_c(buf);
    if (buf != small)
        free(buf);
    *overflow = !isfinite(d);
    return *overflow ? NULL : jp_real(d);
}

/* ---- UTF-8 ---- */

size_t jp_utf8_check(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
        if (c >= 0xC2 && c <= 0xDF)
            len = 2;
        else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            if (c == 0xE0)
                lo = 0xA0; /* overlong */
            else if (c == 0xED)
                hi = 0x9F; /* surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            if (c == 0xF0)
                lo = 0x90;
            else if (c == 0xF4)
                hi = 0x8F; /* above U+10FFFF */
        } else
            return i;
        if (n - i < len || s[i + 1] < lo || s[i + 1] > hi)
            return i;
        for (size_t k = 2; k < len; k++)
            if ((s[i + k] & 0xC0) != 0x80)
                return i;
        i += len;
    }
    return n;
}

size_t jp_utf8_count(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t count = 0;
    for (size_t i = 0; i < n; i++)
        count += (s[i] & 0xC0) != 0x80;
    return count;
}

size_t jp_utf8_charlen(const char *str, size_t n)
{
    unsigned c = (unsigned char)str[0];
    size_t len = c < 0xC0 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    return len < n ? len : n;
}
