/* JSON writer: escaping with a UTF-8 validator, plain runs copied in bulk. */
#include "util/jsonw.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/utf8.h"

void bw_jsonw_string(bw_buf_t *b, const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str, *end = s + n;
    bw_buf_append(b, "\"", 1);
    while (s < end) {
        const unsigned char *run = s;
        while (s < end && *s >= 0x20 && *s < 0x80 && *s != '"' && *s != '\\')
            s++;
        bw_buf_append(b, (const char *)run, (size_t)(s - run));
        if (s == end)
            break;
        char esc[8];
        size_t len;
        if (*s == '"' || *s == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*s++;
            bw_buf_append(b, esc, 2);
        } else if (*s < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", *s++);
            bw_buf_append(b, esc, 6);
        } else if ((len = bw_utf8_len(s, (size_t)(end - s), NULL)) > 0) {
            bw_buf_append(b, (const char *)s, len);
            s += len;
        } else {
            bw_buf_append(b, "\xef\xbf\xbd", 3); /* U+FFFD for a byte that is not UTF-8 */
            s++;
        }
    }
    bw_buf_append(b, "\"", 1);
}

static void key(bw_buf_t *b, bool *first, const char *k)
{
    if (!*first)
        bw_buf_append(b, ",", 1);
    *first = false;
    bw_jsonw_string(b, k, strlen(k));
    bw_buf_append(b, ":", 1);
}

void bw_jsonw_str(bw_buf_t *b, bool *first, const char *k, const char *val)
{
    if (val == NULL)
        return;
    key(b, first, k);
    bw_jsonw_string(b, val, strlen(val));
}

void bw_jsonw_int(bw_buf_t *b, bool *first, const char *k, int64_t val)
{
    key(b, first, k);
    bw_buf_printf(b, "%lld", (long long)val);
}

void bw_jsonw_raw(bw_buf_t *b, bool *first, const char *k, const char *json)
{
    key(b, first, k);
    bw_buf_puts(b, json);
}

/* "%.*e" rendering of d with the fewest significant digits that strtod reads back as d (same
   locale both ways). For normal doubles, if any n <= 15 digits round-trip, the correctly rounded
   15-digit form is those n digits padded with zeros, which split_exp strips; so 15, 16 and 17
   are the only precisions worth trying. Subnormals have less precision and try them all. */
static void shortest_exp(double d, char *out, size_t outsz)
{
    for (int prec = fabs(d) < DBL_MIN ? 0 : 14; prec < 16; prec++) {
        snprintf(out, outsz, "%.*e", prec, d);
        if (strtod(out, NULL) == d)
            return;
    }
    snprintf(out, outsz, "%.16e", d);
}

/* Splits "-d.ddde+XX" into its significant digits (trailing zeros dropped) and exponent. The
   radix character is skipped whatever the locale made it. */
static size_t split_exp(const char *s, char digits[24], int *exp)
{
    size_t n = 0;
    const char *p = s;
    for (; *p != '\0' && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9' && n < 23)
            digits[n++] = *p;
    while (n > 1 && digits[n - 1] == '0')
        n--;
    digits[n] = '\0';
    *exp = *p == 'e' ? atoi(p + 1) : 0;
    return n;
}

/* Positional notation: digits d[0..n) with the point after exp + 1 digits. */
static size_t put_fixed(char *o, const char *d, size_t n, int exp)
{
    size_t k = 0;
    if (exp < 0) {
        o[k++] = '0';
        o[k++] = '.';
        for (int z = -1; z > exp; z--)
            o[k++] = '0';
        memcpy(o + k, d, n);
        return k + n;
    }
    size_t ipart = (size_t)exp + 1;
    for (size_t i = 0; i < ipart; i++)
        o[k++] = i < n ? d[i] : '0';
    o[k++] = '.';
    if (n > ipart) {
        memcpy(o + k, d + ipart, n - ipart);
        k += n - ipart;
    } else
        o[k++] = '0';
    return k;
}

size_t bw_jsonw_format_double(double d, char out[40])
{
    char tmp[40], digits[24];
    int exp;
    shortest_exp(d, tmp, sizeof tmp);
    size_t n = split_exp(tmp, digits, &exp);
    size_t k = 0;
    if (tmp[0] == '-')
        out[k++] = '-';
    if (exp >= -4 && exp < 16) { /* where Python's repr switches to exponents */
        k += put_fixed(out + k, digits, n, exp);
        out[k] = '\0';
        return k;
    }
    out[k++] = digits[0];
    if (n > 1) {
        out[k++] = '.';
        memcpy(out + k, digits + 1, n - 1);
        k += n - 1;
    }
    k += (size_t)snprintf(out + k, 40 - k, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    return k;
}

/* Values nest at most this deep (jansson's parser stops at 2048); deeper ones are written as null. */
#define MAX_DEPTH 4096

/* limit: writing stops once the buffer holds more than this many bytes (SIZE_MAX: never). Checked before
   every value, so the work done is bounded by the limit plus one scalar, however often a shared value
   (a DAG) would repeat in the text. The text is then cut and only good for its length. */
static void write_value(bw_buf_t *b, const json_t *v, int depth, size_t limit)
{
    char num[40];
    if (b->len > limit)
        return;
    if (depth > MAX_DEPTH) {
        bw_buf_append(b, "null", 4);
        return;
    }
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        bool first = true;
        bw_buf_append(b, "{", 1);
        for (void *it = json_object_iter((json_t *)v); it != NULL && b->len <= limit;
             it = json_object_iter_next((json_t *)v, it)) {
            if (!first)
                bw_buf_append(b, ",", 1);
            first = false;
            bw_jsonw_string(b, json_object_iter_key(it), json_object_iter_key_len(it));
            bw_buf_append(b, ":", 1);
            write_value(b, json_object_iter_value(it), depth + 1, limit);
        }
        bw_buf_append(b, "}", 1);
        return;
    }
    case JSON_ARRAY:
        bw_buf_append(b, "[", 1);
        for (size_t i = 0; i < json_array_size(v) && b->len <= limit; i++) {
            if (i > 0)
                bw_buf_append(b, ",", 1);
            write_value(b, json_array_get(v, i), depth + 1, limit);
        }
        bw_buf_append(b, "]", 1);
        return;
    case JSON_STRING:
        bw_jsonw_string(b, json_string_value(v), json_string_length(v));
        return;
    case JSON_INTEGER:
        bw_buf_append(b, num,
                      (size_t)snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v)));
        return;
    case JSON_REAL:
        bw_buf_append(b, num, bw_jsonw_format_double(json_real_value(v), num));
        return;
    case JSON_TRUE:
        bw_buf_append(b, "true", 4);
        return;
    case JSON_FALSE:
        bw_buf_append(b, "false", 5);
        return;
    default:
        bw_buf_append(b, "null", 4);
        return;
    }
}

void bw_jsonw_value(bw_buf_t *b, bool *first, const char *k, const json_t *v)
{
    key(b, first, k);
    write_value(b, v, 0, SIZE_MAX);
}

bool bw_jsonw_value_bounded(bw_buf_t *b, bool *first, const char *k, const json_t *v, size_t limit)
{
    key(b, first, k);
    write_value(b, v, 0, limit);
    return b->len <= limit;
}

static void newline(bw_buf_t *b, int level)
{
    bw_buf_append(b, "\n", 1);
    for (int i = 0; i < level; i++)
        bw_buf_append(b, "  ", 2);
}

void bw_jsonw_pretty(bw_buf_t *b, const char *json, size_t len)
{
    int level = 0;
    for (size_t i = 0; i < len; i++) {
        char c = json[i];
        if (c == '"') { /* a string, escapes and all, as it is */
            size_t j = i + 1;
            while (j < len && json[j] != '"')
                j += json[j] == '\\' ? 2 : 1;
            j = j < len ? j + 1 : len;
            bw_buf_append(b, json + i, j - i);
            i = j - 1;
        } else if (c == '{' || c == '[') {
            size_t j = i + 1;
            while (j < len && (json[j] == ' ' || json[j] == '\n' || json[j] == '\t' || json[j] == '\r'))
                j++;
            bw_buf_append(b, &c, 1);
            if (j < len && (json[j] == '}' || json[j] == ']')) { /* empty: {} or [] */
                bw_buf_append(b, json + j, 1);
                i = j;
            } else {
                newline(b, ++level);
            }
        } else if (c == '}' || c == ']') {
            newline(b, --level);
            bw_buf_append(b, &c, 1);
        } else if (c == ',') {
            bw_buf_append(b, ",", 1);
            newline(b, level);
        } else if (c == ':') {
            bw_buf_append(b, ": ", 2);
        } else if (c != ' ' && c != '\n' && c != '\t' && c != '\r') {
            bw_buf_append(b, &c, 1);
        }
    }
}

/* ---- bounded size ---- */

typedef struct sizer {
    size_t total, limit;
} sizer_t;

/* Upper bound of the escaped size of a string literal (quotes included). */
static size_t string_size(const char *s, size_t n)
{
    size_t out = 2;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        out += c < 0x20 ? 6 : (c == '"' || c == '\\') ? 2 : c >= 0x80 ? 3 : 1;
    }
    return out;
}

static bool add(sizer_t *z, size_t n)
{
    z->total += n;
    return z->total <= z->limit;
}

static bool size_of(sizer_t *z, const json_t *v, int depth)
{
    char num[40];
    if (depth > 2048)
        return false;
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *k;
        json_t *m;
        if (!add(z, 2))
            return false;
        json_object_foreach((json_t *)v, k, m)
        {
            if (!add(z, string_size(k, strlen(k)) + 2) || !size_of(z, m, depth + 1))
                return false;
        }
        return true;
    }
    case JSON_ARRAY:
        if (!add(z, 2))
            return false;
        for (size_t i = 0; i < json_array_size(v); i++)
            if (!add(z, 1) || !size_of(z, json_array_get(v, i), depth + 1))
                return false;
        return true;
    case JSON_STRING:
        return add(z, string_size(json_string_value(v), json_string_length(v)));
    case JSON_INTEGER:
        return add(z, (size_t)snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v)));
    case JSON_REAL:
        return add(z, 24);
    default:
        return add(z, 5);
    }
}

size_t bw_jsonw_size_bounded(const json_t *v, size_t limit)
{
    sizer_t z = {0, limit};
    return size_of(&z, v, 0) ? z.total : SIZE_MAX;
}
