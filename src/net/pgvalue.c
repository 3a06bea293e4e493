/* PostgreSQL text values to JSON (see pgvalue.h). */
#include "net/pgvalue.h"

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util/base64.h"
#include "util/buf.h"
#include "util/xalloc.h"

typedef enum {
    K_OTHER = 0,
    K_BOOL,
    K_INT,
    K_INT8,
    K_FLOAT,
    K_NUMERIC,
    K_TEXT,
    K_JSON,
    K_TIMESTAMP,
    K_TIMESTAMPTZ,
    K_BYTEA,
    K_ARRAY
} kind_t;

typedef struct type {
    bw_pg_oid_t oid;
    const char *name;
    kind_t kind;
    bw_pg_oid_t elem; /* arrays */
} type_t;

static const type_t types[] = {
    {16, "bool", K_BOOL, 0},
    {17, "bytea", K_BYTEA, 0},
    {18, "char", K_TEXT, 0},
    {19, "name", K_TEXT, 0},
    {20, "int8", K_INT8, 0},
    {21, "int2", K_INT, 0},
    {23, "int4", K_INT, 0},
    {25, "text", K_TEXT, 0},
    {26, "oid", K_INT, 0},
    {114, "json", K_JSON, 0},
    {142, "xml", K_TEXT, 0},
    {650, "cidr", K_OTHER, 0},
    {700, "float4", K_FLOAT, 0},
    {701, "float8", K_FLOAT, 0},
    {829, "macaddr", K_OTHER, 0},
    {869, "inet", K_OTHER, 0},
    {1042, "bpchar", K_TEXT, 0},
    {1043, "varchar", K_TEXT, 0},
    {1082, "date", K_OTHER, 0},
    {1083, "time", K_OTHER, 0},
    {1114, "timestamp", K_TIMESTAMP, 0},
    {1184, "timestamptz", K_TIMESTAMPTZ, 0},
    {1186, "interval", K_OTHER, 0},
    {1266, "timetz", K_OTHER, 0},
    {1700, "numeric", K_NUMERIC, 0},
    {2950, "uuid", K_TEXT, 0},
    {3802, "jsonb", K_JSON, 0},
    {199, "_json", K_ARRAY, 114},
    {1000, "_bool", K_ARRAY, 16},
    {1001, "_bytea", K_ARRAY, 17},
    {1002, "_char", K_ARRAY, 18},
    {1003, "_name", K_ARRAY, 19},
    {1005, "_int2", K_ARRAY, 21},
    {1007, "_int4", K_ARRAY, 23},
    {1009, "_text", K_ARRAY, 25},
    {1014, "_bpchar", K_ARRAY, 1042},
    {1015, "_varchar", K_ARRAY, 1043},
    {1016, "_int8", K_ARRAY, 20},
    {1021, "_float4", K_ARRAY, 700},
    {1022, "_float8", K_ARRAY, 701},
    {1028, "_oid", K_ARRAY, 26},
    {1115, "_timestamp", K_ARRAY, 1114},
    {1182, "_date", K_ARRAY, 1082},
    {1183, "_time", K_ARRAY, 1083},
    {1185, "_timestamptz", K_ARRAY, 1184},
    {1187, "_interval", K_ARRAY, 1186},
    {1231, "_numeric", K_ARRAY, 1700},
    {2951, "_uuid", K_ARRAY, 2950},
    {3807, "_jsonb", K_ARRAY, 3802},
};

static const type_t *find(bw_pg_oid_t oid)
{
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (types[i].oid == oid)
            return &types[i];
    return NULL;
}

const char *bw_pg_type_name(bw_pg_oid_t oid)
{
    const type_t *t = find(oid);
    return t != NULL ? t->name : NULL;
}

#define MAX_SAFE_INTEGER 9007199254740992LL /* 2^53 */

static json_t *text_value(const char *s, size_t n)
{
    json_t *v = json_stringn(s, n);
    return v != NULL ? v : json_string("\xef\xbf\xbd"); /* not UTF-8: the database's encoding is not */
}

static json_t *int_value(const char *s, size_t n, bool limit_53)
{
    char buf[32], *end;
    if (n == 0 || n >= sizeof buf)
        return text_value(s, n);
    memcpy(buf, s, n);
    buf[n] = '\0';
    errno = 0;
    long long v = strtoll(buf, &end, 10);
    if (errno != 0 || *end != '\0' || (limit_53 && (v > MAX_SAFE_INTEGER || v < -MAX_SAFE_INTEGER)))
        return text_value(s, n);
    return json_integer(v);
}

static json_t *float_value(const char *s, size_t n)
{
    char buf[64], *end;
    if (n == 0 || n >= sizeof buf)
        return text_value(s, n);
    memcpy(buf, s, n);
    buf[n] = '\0';
    if (strcmp(buf, "NaN") == 0 || strcmp(buf, "Infinity") == 0 || strcmp(buf, "-Infinity") == 0)
        return json_string(buf);
    double d = strtod(buf, &end);
    return *end == '\0' ? json_real(d) : text_value(s, n);
}

/* "2024-01-02 03:04:05.123" -> "2024-01-02T03:04:05.123"; with zone: "+00" -> "Z", "+05" -> "+05:00".
   Values it does not recognise (infinity, BC dates) stay as they are. */
static json_t *timestamp_value(const char *s, size_t n, bool zone)
{
    if (n < 19 || s[10] != ' ' || !isdigit((unsigned char)s[0]) || memmem(s, n, " BC", 3) != NULL)
        return text_value(s, n);
    bw_buf_t b;
    bw_buf_init(&b, n + 8);
    bw_buf_append(&b, s, 10);
    bw_buf_append(&b, "T", 1);
    size_t body = n;
    if (zone) { /* the zone starts at the last '+' or '-' after the time */
        while (body > 19 && s[body - 1] != '+' && s[body - 1] != '-')
            body--;
        body = body > 19 ? body - 1 : n;
    }
    bw_buf_append(&b, s + 11, body - 11);
    if (zone && body < n) {
        const char *z = s + body;
        size_t zl = n - body;
        if (zl == 3 && strncmp(z + 1, "00", 2) == 0)
            bw_buf_append(&b, "Z", 1);
        else {
            bw_buf_append(&b, z, zl);
            if (zl == 3)
                bw_buf_append(&b, ":00", 3);
        }
    }
    json_t *v = text_value(b.p, b.len);
    bw_buf_dispose(&b);
    return v;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* bytea in hex format ("\x0102ff") as base64; the escape format is kept as text. */
static json_t *bytea_value(const char *s, size_t n)
{
    if (n < 2 || s[0] != '\\' || s[1] != 'x' || (n - 2) % 2 != 0)
        return text_value(s, n);
    size_t len = (n - 2) / 2;
    unsigned char *bytes = bw_malloc(len + 1);
    for (size_t i = 0; i < len; i++) {
        int hi = hexval(s[2 + 2 * i]), lo = hexval(s[3 + 2 * i]);
        if (hi < 0 || lo < 0) {
            free(bytes);
            return text_value(s, n);
        }
        bytes[i] = (unsigned char)(hi << 4 | lo);
    }
    char *b64 = bw_base64_encode(bytes, len);
    json_t *v = json_string(b64);
    free(b64);
    free(bytes);
    return v;
}

static json_t *scalar(const type_t *t, const char *s, size_t n)
{
    switch (t != NULL ? t->kind : K_OTHER) {
    case K_BOOL:
        return n == 1 && (s[0] == 't' || s[0] == 'f') ? json_boolean(s[0] == 't') : text_value(s, n);
    case K_INT:
        return int_value(s, n, false);
    case K_INT8:
        return int_value(s, n, true);
    case K_FLOAT:
        return float_value(s, n);
    case K_JSON: {
        json_t *v = json_loadb(s, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        if (v == NULL) /* an integer beyond int64 somewhere: the structure matters more than its digits */
            v = json_loadb(s, n, JSON_DECODE_ANY | JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, NULL);
        return v != NULL ? v : text_value(s, n);
    }
    case K_TIMESTAMP:
        return timestamp_value(s, n, false);
    case K_TIMESTAMPTZ:
        return timestamp_value(s, n, true);
    case K_BYTEA:
        return bytea_value(s, n);
    default:
        return text_value(s, n);
    }
}

/* ---- arrays: {a,b,"c d",NULL,{nested}} ---- */

typedef struct parser {
    const char *p, *end;
    const type_t *elem;
    bool ok;
} parser_t;

static void skip_space(parser_t *ps)
{
    while (ps->p < ps->end && isspace((unsigned char)*ps->p))
        ps->p++;
}

static json_t *parse_array(parser_t *ps, int depth);

static json_t *parse_element(parser_t *ps, int depth)
{
    skip_space(ps);
    if (ps->p < ps->end && *ps->p == '{')
        return parse_array(ps, depth + 1);
    bw_buf_t b;
    bw_buf_init(&b, 32);
    bool quoted = ps->p < ps->end && *ps->p == '"';
    if (quoted) {
        ps->p++;
        while (ps->p < ps->end && *ps->p != '"') {
            if (*ps->p == '\\' && ps->p + 1 < ps->end)
                ps->p++;
            bw_buf_append(&b, ps->p++, 1);
        }
        if (ps->p >= ps->end)
            ps->ok = false;
        else
            ps->p++;
    } else {
        while (ps->p < ps->end && *ps->p != ',' && *ps->p != '}')
            bw_buf_append(&b, ps->p++, 1);
        while (b.len > 0 && isspace((unsigned char)b.p[b.len - 1]))
            b.len--;
    }
    json_t *v = !quoted && b.len == 4 && strncasecmp(b.p, "NULL", 4) == 0 ? json_null()
                                                                          : scalar(ps->elem, b.p, b.len);
    bw_buf_dispose(&b);
    return v;
}

static json_t *parse_array(parser_t *ps, int depth)
{
    json_t *a = json_array();
    if (depth > 6 || ps->p >= ps->end || *ps->p != '{') {
        ps->ok = false;
        return a;
    }
    ps->p++;
    skip_space(ps);
    if (ps->p < ps->end && *ps->p == '}') {
        ps->p++;
        return a;
    }
    while (ps->ok) {
        json_array_append_new(a, parse_element(ps, depth));
        skip_space(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == '}') {
            ps->p++;
            break;
        }
        ps->ok = false;
    }
    return a;
}

json_t *bw_pg_value(bw_pg_oid_t oid, const char *text, size_t len)
{
    const type_t *t = find(oid);
    if (t == NULL || t->kind != K_ARRAY)
        return scalar(t, text, len);
    parser_t ps = {.p = text, .end = text + len, .elem = find(t->elem), .ok = true};
    if (ps.p < ps.end && *ps.p == '[') { /* explicit bounds, "[0:1]={...}": the elements are what count */
        const char *eq = memchr(ps.p, '=', len);
        ps.p = eq != NULL ? eq + 1 : ps.end;
    }
    json_t *a = parse_array(&ps, 1);
    skip_space(&ps);
    if (!ps.ok || ps.p != ps.end) {
        json_decref(a);
        return text_value(text, len);
    }
    return a;
}
