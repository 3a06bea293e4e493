/*
 * A validating JSON tokenizer with an explicit stack (see idscan.h). It keeps only what identifies an
 * assignment: the root's "assignment_id", "request_id", "tenant_id", "kind" and "data" members, and the
 * first three inside the root's "data" object. Everything else is validated and skipped.
 */
#include "core/idscan.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/utf8.h"
#include "util/xalloc.h"

typedef enum { F_NONE = -1, F_ASSIGNMENT = 0, F_REQUEST, F_TENANT, F_KIND, F_DATA } field_t;

typedef enum { S_VALUE, S_VALUE_OR_CLOSE, S_KEY_OR_CLOSE, S_KEY, S_COLON, S_COMMA_OR_CLOSE, S_END } state_t;

typedef struct scan {
    const unsigned char *p, *end;
    unsigned char *stack; /* one bit per open container: 1 = object, 0 = array */
    size_t cap, depth;
    bool in_data; /* the container open at depth 2 is the root's "data" object */
    bool has_data, data_is_object;
    bw_idscan_str_t root[4]; /* F_ASSIGNMENT, F_REQUEST, F_TENANT, F_KIND */
    bw_idscan_str_t data[3];
} scan_t;

static const char *const names[] = {"assignment_id", "request_id", "tenant_id", "kind", "data"};

/* ---- the container stack ---- */

static void push(scan_t *s, bool object)
{
    if (s->depth / 8 >= s->cap) {
        s->cap = s->cap ? s->cap * 2 : 64;
        s->stack = bw_realloc(s->stack, s->cap);
    }
    if (object)
        s->stack[s->depth / 8] |= (unsigned char)(1u << (s->depth % 8));
    else
        s->stack[s->depth / 8] &= (unsigned char)~(1u << (s->depth % 8));
    s->depth++;
}

static bool top_is_object(const scan_t *s)
{
    size_t i = s->depth - 1;
    return (s->stack[i / 8] >> (i % 8)) & 1u;
}

/* ---- strings ---- */

static int hex4(const unsigned char *p, const unsigned char *end)
{
    int v = 0;
    if (end - p < 4)
        return -1;
    for (int i = 0; i < 4; i++) {
        unsigned char c = p[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Where a decoded string goes: up to cap bytes are kept; anything that makes it unusable as an id (too
   long, U+0000, a lone surrogate) is remembered in `unreadable`. */
typedef struct sink {
    char *dst;
    size_t cap, len;
    bool unreadable;
} sink_t;

static void put(sink_t *k, const void *b, size_t n)
{
    if (n == 0)
        return;
    if (k->len + n > k->cap) {
        k->unreadable = true;
        k->len = k->cap + 1; /* stays "too long" */
        return;
    }
    memcpy(k->dst + k->len, b, n);
    k->len += n;
}

static void put_cp(sink_t *k, uint32_t cp)
{
    unsigned char u[4];
    if (cp < 0x80) {
        u[0] = (unsigned char)cp;
        put(k, u, 1);
    } else if (cp < 0x800) {
        u[0] = (unsigned char)(0xc0 | cp >> 6);
        u[1] = (unsigned char)(0x80 | (cp & 0x3f));
        put(k, u, 2);
    } else if (cp < 0x10000) {
        u[0] = (unsigned char)(0xe0 | cp >> 12);
        u[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        u[2] = (unsigned char)(0x80 | (cp & 0x3f));
        put(k, u, 3);
    } else {
        u[0] = (unsigned char)(0xf0 | cp >> 18);
        u[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
        u[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        u[3] = (unsigned char)(0x80 | (cp & 0x3f));
        put(k, u, 4);
    }
}

/* A \u escape at s->p (after the backslash and 'u'); false on a syntax error. */
static bool read_unicode(scan_t *s, sink_t *k)
{
    int hi = hex4(s->p, s->end);
    if (hi < 0)
        return false;
    s->p += 4;
    if (hi >= 0xd800 && hi <= 0xdbff && s->end - s->p >= 6 && s->p[0] == '\\' && s->p[1] == 'u') {
        int lo = hex4(s->p + 2, s->end);
        if (lo >= 0xdc00 && lo <= 0xdfff) {
            s->p += 6;
            put_cp(k, 0x10000u + ((uint32_t)(hi - 0xd800) << 10) + (uint32_t)(lo - 0xdc00));
            return true;
        }
    }
    if ((hi >= 0xd800 && hi <= 0xdfff) || hi == 0)
        k->unreadable = true; /* valid JSON, but no UTF-8 (or C string) holds it */
    else
        put_cp(k, (uint32_t)hi);
    return true;
}

static bool read_escape(scan_t *s, sink_t *k)
{
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    if (s->p == s->end)
        return false;
    unsigned char c = *s->p++;
    if (c == 'u')
        return read_unicode(s, k);
    const char *hit = c != '\0' ? strchr(from, c) : NULL;
    if (hit == NULL)
        return false;
    put(k, &to[hit - from], 1);
    return true;
}

/* The string at s->p (its opening quote); false on a syntax error (an unterminated string, a raw control
   character, a bad escape, bytes that are not UTF-8). */
static bool read_string(scan_t *s, sink_t *k)
{
    s->p++;
    while (s->p < s->end) {
        const unsigned char *run = s->p;
        while (s->p < s->end && *s->p >= 0x20 && *s->p < 0x80 && *s->p != '"' && *s->p != '\\')
            s->p++;
        put(k, run, (size_t)(s->p - run));
        if (s->p == s->end)
            return false;
        unsigned char c = *s->p;
        if (c == '"') {
            s->p++;
            return true;
        }
        if (c < 0x20)
            return false;
        if (c == '\\') {
            s->p++;
            if (!read_escape(s, k))
                return false;
            continue;
        }
        size_t n = bw_utf8_len(s->p, (size_t)(s->end - s->p), NULL);
        if (n == 0)
            return false;
        put(k, s->p, n);
        s->p += n;
    }
    return false;
}

/* ---- numbers and literals ---- */

static size_t digits(scan_t *s)
{
    const unsigned char *start = s->p;
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
        s->p++;
    return (size_t)(s->p - start);
}

/* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? of any magnitude */
static bool read_number(scan_t *s)
{
    if (*s->p == '-')
        s->p++;
    if (s->p < s->end && *s->p == '0')
        s->p++;
    else if (digits(s) == 0)
        return false;
    if (s->p < s->end && *s->p == '.') {
        s->p++;
        if (digits(s) == 0)
            return false;
    }
    if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
        s->p++;
        if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
            s->p++;
        if (digits(s) == 0)
            return false;
    }
    return true;
}

static bool read_literal(scan_t *s)
{
    static const char *const lits[] = {"true", "false", "null"};
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(lits[i]);
        if ((size_t)(s->end - s->p) >= n && memcmp(s->p, lits[i], n) == 0) {
            s->p += n;
            return true;
        }
    }
    return false;
}

/* ---- members ---- */

/* The slot a value of member f is recorded in, or NULL when nothing is recorded for it. */
static bw_idscan_str_t *slot(scan_t *s, field_t f)
{
    if (f == F_NONE || f == F_DATA)
        return NULL;
    if (s->depth == 1)
        return &s->root[f];
    return f == F_KIND ? NULL : &s->data[f];
}

/* Which recorded member a key at the current depth is (F_NONE for any other). */
static field_t member(const scan_t *s, const sink_t *key)
{
    bool at_root = s->depth == 1, in_data = s->depth == 2 && s->in_data;
    if (key->unreadable || (!at_root && !in_data))
        return F_NONE;
    for (int f = F_ASSIGNMENT; f <= F_DATA; f++) {
        if ((f >= F_KIND && !at_root) || strlen(names[f]) != key->len)
            continue;
        if (memcmp(names[f], key->dst, key->len) == 0)
            return (field_t)f;
    }
    return F_NONE;
}

static bool read_key(scan_t *s, field_t *f)
{
    char buf[16];
    sink_t key = {buf, sizeof buf, 0, false};
    if (!read_string(s, &key))
        return false;
    *f = member(s, &key);
    if (*f == F_DATA) { /* a repeated "data": only the last one counts, as in jansson */
        s->has_data = true;
        s->data_is_object = false;
        memset(s->data, 0, sizeof s->data);
    }
    return true;
}

/* A value starting at s->p for member f (F_NONE outside the recorded members). */
static bool read_value(scan_t *s, field_t f, state_t *st)
{
    bw_idscan_str_t *out = slot(s, f);
    unsigned char c = *s->p;
    if (out != NULL)
        out->kind = BW_IDSCAN_OTHER;
    if (c == '{' || c == '[') {
        s->p++;
        push(s, c == '{');
        if (f == F_DATA && c == '{' && s->depth == 2)
            s->in_data = s->data_is_object = true;
        *st = c == '{' ? S_KEY_OR_CLOSE : S_VALUE_OR_CLOSE;
        return true;
    }
    *st = s->depth == 0 ? S_END : S_COMMA_OR_CLOSE;
    if (c == '"') {
        sink_t k = {out ? out->s : NULL, out ? BW_IDSCAN_MAX : 0, 0, false};
        if (!read_string(s, &k))
            return false;
        if (out != NULL) {
            out->kind = k.unreadable ? BW_IDSCAN_UNREADABLE : BW_IDSCAN_STRING;
            out->len = k.unreadable ? 0 : k.len;
            out->s[out->len] = '\0';
        }
        return true;
    }
    if (c == '-' || (c >= '0' && c <= '9'))
        return read_number(s);
    return read_literal(s);
}

static bool close_container(scan_t *s, unsigned char c, state_t *st)
{
    if (s->depth == 0 || top_is_object(s) != (c == '}'))
        return false;
    s->p++;
    if (--s->depth == 1)
        s->in_data = false;
    *st = s->depth == 0 ? S_END : S_COMMA_OR_CLOSE;
    return true;
}

static void skip_ws(scan_t *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

/* One step of the grammar at the non-space byte c; false on a syntax error. */
static bool step(scan_t *s, unsigned char c, state_t *st, field_t *f)
{
    switch (*st) {
    case S_VALUE_OR_CLOSE:
        if (c == ']')
            return close_container(s, c, st);
        /* fall through */
    case S_VALUE: {
        field_t mine = *f;
        *f = F_NONE;
        return read_value(s, mine, st);
    }
    case S_KEY_OR_CLOSE:
        if (c == '}')
            return close_container(s, c, st);
        /* fall through */
    case S_KEY:
        if (c != '"' || !read_key(s, f))
            return false;
        *st = S_COLON;
        return true;
    case S_COLON:
        if (c != ':')
            return false;
        s->p++;
        *st = S_VALUE;
        return true;
    case S_COMMA_OR_CLOSE:
        if (c == '}' || c == ']')
            return close_container(s, c, st);
        if (c != ',')
            return false;
        s->p++;
        *st = top_is_object(s) ? S_KEY : S_VALUE;
        return true;
    default: /* S_END: something after the root value */
        return false;
    }
}

static bool scan_all(scan_t *s)
{
    state_t st = S_VALUE;
    field_t f = F_NONE;
    skip_ws(s);
    if (s->p == s->end || *s->p != '{')
        return false; /* only an object can be an assignment */
    for (;;) {
        skip_ws(s);
        if (s->p == s->end)
            return st == S_END;
        if (!step(s, *s->p, &st, &f))
            return false;
    }
}

bool bw_idscan(const char *data, size_t len, bw_idscan_t *out)
{
    scan_t s;
    memset(&s, 0, sizeof s);
    memset(out, 0, sizeof *out);
    s.p = (const unsigned char *)data;
    s.end = s.p + len;
    bool ok = scan_all(&s);
    free(s.stack);
    if (!ok)
        return false;
    const bw_idscan_str_t *kind = &s.root[F_KIND];
    /* bw_assignment_decode's unwrap(): an envelope when there is a string "kind" or any "data" */
    if (kind->kind == BW_IDSCAN_STRING || s.has_data) {
        if (kind->kind != BW_IDSCAN_STRING || strcmp(kind->s, "exec_assign") != 0 || !s.data_is_object)
            return false;
        out->enveloped = true;
        out->assignment_id = s.data[F_ASSIGNMENT];
        out->request_id = s.data[F_REQUEST];
        out->tenant_id = s.data[F_TENANT];
        return true;
    }
    out->assignment_id = s.root[F_ASSIGNMENT];
    out->request_id = s.root[F_REQUEST];
    out->tenant_id = s.root[F_TENANT];
    return true;
}
