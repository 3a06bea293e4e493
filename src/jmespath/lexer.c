/*
 * JMESPath tokenizer, one token at a time on demand (the parser keeps two of lookahead).
 *
 * The source is a (pointer, length) pair that is never read past its length, and it has already
 * been checked to be valid UTF-8. Decoded names live in the expression's arena; literal values
 * are handed to the expression as soon as they exist, so an error later in the parse leaks
 * nothing. Every step is linear in the token length.
 */
#include <stdio.h>
#include <string.h>

#include "jmespath_int.h"

static const char *const token_names[T_COUNT] = {
    [T_EOF] = "end of expression",
    [T_IDENT] = "identifier",
    [T_QIDENT] = "quoted identifier",
    [T_NUMBER] = "number",
    [T_LITERAL] = "literal",
    [T_DOT] = "'.'",
    [T_STAR] = "'*'",
    [T_FLATTEN] = "'[]'",
    [T_FILTER] = "'[?'",
    [T_LBRACKET] = "'['",
    [T_RBRACKET] = "']'",
    [T_LBRACE] = "'{'",
    [T_RBRACE] = "'}'",
    [T_LPAREN] = "'('",
    [T_RPAREN] = "')'",
    [T_COMMA] = "','",
    [T_COLON] = "':'",
    [T_PIPE] = "'|'",
    [T_OR] = "'||'",
    [T_AND] = "'&&'",
    [T_NOT] = "'!'",
    [T_EQ] = "'=='",
    [T_NE] = "'!='",
    [T_LT] = "'<'",
    [T_LE] = "'<='",
    [T_GT] = "'>'",
    [T_GE] = "'>='",
    [T_AT] = "'@'",
    [T_EXPREF] = "'&'",
};

const char *jp_token_name(jp_tok_type_t type)
{
    return type < T_COUNT ? token_names[type] : "token";
}

void jp_token_describe(const jp_lexer_t *lx, const jp_token_t *t, char *out, size_t outsz)
{
    if (t->type == T_EOF) {
        snprintf(out, outsz, "end of expression");
        return;
    }
    /* Quote the source text, cut at a character boundary so the message stays valid UTF-8. */
    const size_t max = 32;
    size_t n = t->end - t->off;
    bool cut = n > max;
    if (cut) {
        n = max;
        while (n > 0 && ((unsigned char)lx->src[t->off + n] & 0xC0) == 0x80)
            n--;
    }
    snprintf(out, outsz, "'%.*s%s'", (int)n, lx->src + t->off, cut ? "..." : "");
}

static int lex_error(bw_jmespath_error_t *err, size_t off, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int lex_error(bw_jmespath_error_t *err, size_t off, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = jp_set_verror(err, BW_JMESPATH_ESYNTAX, off, fmt, ap);
    va_end(ap);
    return rc;
}

static bool is_ident_start(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool is_ident_char(char c)
{
    return is_ident_start(c) || (c >= '0' && c <= '9');
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static char peek(const jp_lexer_t *lx, size_t k)
{
    return lx->pos + k < lx->len ? lx->src[lx->pos + k] : '\0';
}

/* Finds the closing delimiter of a quoted token starting at lx->pos (the opening delimiter).
   A backslash always takes the next byte with it. Returns the closing offset or SIZE_MAX. */
static size_t find_close(const jp_lexer_t *lx, char delim)
{
    for (size_t i = lx->pos + 1; i < lx->len; i++) {
        if (lx->src[i] == '\\')
            i++;
        else if (lx->src[i] == delim)
            return i;
    }
    return SIZE_MAX;
}

/* Copies s[0..n) dropping the backslash of every "\<delim>" pair; other escapes stay verbatim
   (the rule for raw strings and backtick literals). Returns the new length. */
static size_t unescape_delim(char *out, const char *s, size_t n, char delim)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\\' && i + 1 < n) {
            if (s[i + 1] != delim)
                out[k++] = '\\';
            out[k++] = s[++i];
        } else
            out[k++] = s[i];
    }
    return k;
}

static int hex4(const char *s, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0)
            return -1;
        v = v * 16 + (unsigned)d;
    }
    *out = v;
    return 0;
}

static size_t put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12);
        o[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18);
    o[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Decodes the \u escape at s[i] ('\\' at s[i], 'u' at s[i+1]) including a following low
   surrogate. Returns the bytes consumed (6 or 12) and the code point, or 0 when invalid. */
static size_t decode_u(const char *s, size_t i, size_t n, unsigned *cp)
{
    unsigned hi, lo;
    if (n - i < 6 || hex4(s + i + 2, &hi) < 0)
        return 0;
    if (hi >= 0xDC00 && hi <= 0xDFFF)
        return 0;
    if (hi < 0xD800 || hi > 0xDBFF) {
        *cp = hi;
        return 6;
    }
    if (n - i < 12 || s[i + 6] != '\\' || s[i + 7] != 'u' || hex4(s + i + 8, &lo) < 0 || lo < 0xDC00 ||
        lo > 0xDFFF)
        return 0;
    *cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
    return 12;
}

static char simple_escape(char c)
{
    switch (c) {
    case '"':
    case '\\':
    case '/':
        return c;
    case 'b':
        return '\b';
    case 'f':
        return '\f';
    case 'n':
        return '\n';
    case 'r':
        return '\r';
    case 't':
        return '\t';
    default:
        return 0;
    }
}

/* Decodes the body of a quoted identifier (JSON string rules) into out. Returns the decoded
   length, or SIZE_MAX with *bad set to the offending offset within s. */
static size_t decode_json_string(char *out, const char *s, size_t n, size_t *bad)
{
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20) {
            *bad = i;
            return SIZE_MAX;
        }
        if (c != '\\') {
            out[k++] = (char)c;
            i++;
            continue;
        }
        char e = i + 1 < n ? simple_escape(s[i + 1]) : 0;
        if (e != 0) {
            out[k++] = e;
            i += 2;
            continue;
        }
        unsigned cp;
        size_t used = i + 1 < n && s[i + 1] == 'u' ? decode_u(s, i, n, &cp) : 0;
        if (used == 0) {
            *bad = i;
            return SIZE_MAX;
        }
        k += put_utf8(out + k, cp);
        i += used;
    }
    return k;
}

static int lex_quoted_ident(jp_lexer_t *lx, jp_token_t *t, bw_jmespath_error_t *err)
{
    size_t close = find_close(lx, '"');
    if (close == SIZE_MAX)
        return lex_error(err, t->off, "unterminated quoted identifier");
    const char *body = lx->src + t->off + 1;
    size_t n = close - t->off - 1, bad = 0;
    char *out = jp_arena_alloc(&lx->e->arena, n + 1); /* decoding never grows the text */
    size_t len = decode_json_string(out, body, n, &bad);
    if (len == SIZE_MAX) {
        const char *what = (unsigned char)body[bad] < 0x20
                               ? "unescaped control character in quoted identifier"
                               : "invalid escape in quoted identifier";
        return lex_error(err, t->off + 1 + bad, "%s", what);
    }
    out[len] = '\0';
    t->type = T_QIDENT;
    t->str = (jp_str_t){out, len};
    t->end = close + 1;
    return 0;
}

static int lex_raw_string(jp_lexer_t *lx, jp_token_t *t, bw_jmespath_error_t *err)
{
    size_t close = find_close(lx, '\'');
    if (close == SIZE_MAX)
        return lex_error(err, t->off, "unterminated raw string literal");
    size_t n = close - t->off - 1;
    char *tmp = jp_xmalloc(n + 1);
    size_t len = unescape_delim(tmp, lx->src + t->off + 1, n, '\'');
    t->lit = jp_xjson(json_stringn_nocheck(tmp, len)); /* the source is valid UTF-8 */
    free(tmp);
    jp_expr_own(lx->e, t->lit, len);
    t->type = T_LITERAL;
    t->end = close + 1;
    return 0;
}

/* Legacy literal rule (JEP-12 deprecation, as the reference implementation): text that is not
   JSON is taken as a string, after dropping leading whitespace. */
static json_t *legacy_string_literal(const char *s, size_t n)
{
    while (n > 0 && (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')) {
        s++;
        n--;
    }
    char *q = jp_xmalloc(n + 2);
    q[0] = '"';
    memcpy(q + 1, s, n);
    q[n + 1] = '"';
    json_t *v = json_loadb(q, n + 2, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    free(q);
    return v;
}

/* The literal's JSON value; NULL with jerr filled when it holds a number beyond the range of a double
   (`1e400`): JSON that cannot be represented is an error, not the legacy string "1e400". */
static json_t *parse_literal_json(const char *s, size_t n, json_error_t *jerr)
{
    const size_t flags = JSON_DECODE_ANY | JSON_ALLOW_NUL;
    json_t *v = json_loadb(s, n, flags, jerr);
    if (v == NULL && json_error_code(jerr) == json_error_numeric_overflow)
        v = json_loadb(s, n, flags | JSON_DECODE_INT_AS_REAL, jerr); /* big integers become reals */
    if (v == NULL && json_error_code(jerr) == json_error_numeric_overflow)
        return NULL;
    if (v == NULL)
        v = legacy_string_literal(s, n);
    return v;
}

static int lex_literal(jp_lexer_t *lx, jp_token_t *t, bw_jmespath_error_t *err)
{
    size_t close = find_close(lx, '`');
    if (close == SIZE_MAX)
        return lex_error(err, t->off, "unterminated literal");
    size_t n = close - t->off - 1;
    char *tmp = jp_xmalloc(n + 1);
    size_t len = unescape_delim(tmp, lx->src + t->off + 1, n, '`');
    json_error_t jerr;
    json_t *v = parse_literal_json(tmp, len, &jerr);
    free(tmp);
    if (v == NULL)
        return lex_error(err, t->off, "invalid JSON literal: %s%s",
                         json_error_code(&jerr) == json_error_numeric_overflow
                             ? "a number beyond the range of a double, which JSON cannot carry: "
                             : "",
                         jerr.text);
    jp_expr_own(lx->e, v, len);
    t->type = T_LITERAL;
    t->lit = v;
    t->end = close + 1;
    return 0;
}

static int lex_number(jp_lexer_t *lx, jp_token_t *t, bw_jmespath_error_t *err)
{
    size_t i = lx->pos;
    bool neg = lx->src[i] == '-';
    if (neg)
        i++;
    if (i >= lx->len || lx->src[i] < '0' || lx->src[i] > '9')
        return lex_error(err, t->off, "'-' must be followed by digits");
    int64_t v = 0;
    for (; i < lx->len && lx->src[i] >= '0' && lx->src[i] <= '9'; i++) {
        int d = lx->src[i] - '0';
        /* Saturate: any index beyond the int64 range behaves like the range's end. */
        if (v > (INT64_MAX - d) / 10)
            v = INT64_MAX;
        else
            v = v * 10 + d;
    }
    t->type = T_NUMBER;
    t->num = neg ? -v : v;
    t->end = i;
    return 0;
}

static void lex_ident(jp_lexer_t *lx, jp_token_t *t)
{
    size_t i = lx->pos + 1;
    while (i < lx->len && is_ident_char(lx->src[i]))
        i++;
    size_t n = i - lx->pos;
    char *s = jp_arena_alloc(&lx->e->arena, n + 1);
    memcpy(s, lx->src + lx->pos, n);
    s[n] = '\0';
    t->type = T_IDENT;
    t->str = (jp_str_t){s, n};
    t->end = i;
}

/* One- and two-character operators: c alone is `one`, c followed by `second` is `two`. */
static const struct {
    char c, second;
    jp_tok_type_t one, two;
} operators[] = {
    {'.', 0, T_DOT, T_EOF},
    {'*', 0, T_STAR, T_EOF},
    {',', 0, T_COMMA, T_EOF},
    {':', 0, T_COLON, T_EOF},
    {'@', 0, T_AT, T_EOF},
    {']', 0, T_RBRACKET, T_EOF},
    {'{', 0, T_LBRACE, T_EOF},
    {'}', 0, T_RBRACE, T_EOF},
    {'(', 0, T_LPAREN, T_EOF},
    {')', 0, T_RPAREN, T_EOF},
    {'[', ']', T_LBRACKET, T_FLATTEN},
    {'[', '?', T_LBRACKET, T_FILTER},
    {'&', '&', T_EXPREF, T_AND},
    {'|', '|', T_PIPE, T_OR},
    {'!', '=', T_NOT, T_NE},
    {'<', '=', T_LT, T_LE},
    {'>', '=', T_GT, T_GE},
};

/* Scans an operator at lx->pos. Returns false when the character starts none. */
static bool lex_operator(jp_lexer_t *lx, jp_token_t *t)
{
    char c = peek(lx, 0), d = peek(lx, 1);
    bool found = false;
    for (size_t i = 0; i < sizeof operators / sizeof operators[0]; i++) {
        if (operators[i].c != c)
            continue;
        if (operators[i].second != 0 && operators[i].second == d) {
            t->type = operators[i].two;
            t->end = lx->pos + 2;
            return true;
        }
        t->type = operators[i].one;
        t->end = lx->pos + 1;
        found = true;
    }
    return found;
}

static int lex_unexpected(jp_lexer_t *lx, jp_token_t *t, bw_jmespath_error_t *err)
{
    char c = lx->src[lx->pos];
    if (c == '=')
        return lex_error(err, t->off, "unexpected '='; did you mean '=='?");
    size_t n = jp_utf8_charlen(lx->src + lx->pos, lx->len - lx->pos);
    char shown[16];
    if ((unsigned char)c < 0x20 || c == 0x7F)
        snprintf(shown, sizeof shown, "\\x%02x", (unsigned char)c);
    else
        snprintf(shown, sizeof shown, "%.*s", (int)n, lx->src + lx->pos);
    return lex_error(err, t->off, "unexpected character '%s'", shown);
}

int jp_lex(jp_lexer_t *lx, jp_token_t *t, bw_jmespath_error_t *err)
{
    while (lx->pos < lx->len && is_space(lx->src[lx->pos]))
        lx->pos++;
    memset(t, 0, sizeof *t);
    t->off = lx->pos;
    int rc = 0;
    if (lx->pos >= lx->len) {
        t->type = T_EOF;
        t->end = lx->pos;
        return 0;
    }
    char c = lx->src[lx->pos];
    if (is_ident_start(c))
        lex_ident(lx, t);
    else if (c == '-' || (c >= '0' && c <= '9'))
        rc = lex_number(lx, t, err);
    else if (c == '"')
        rc = lex_quoted_ident(lx, t, err);
    else if (c == '\'')
        rc = lex_raw_string(lx, t, err);
    else if (c == '`')
        rc = lex_literal(lx, t, err);
    else if (c == '=' && peek(lx, 1) == '=') {
        t->type = T_EQ;
        t->end = lx->pos + 2;
    } else if (!lex_operator(lx, t))
        rc = lex_unexpected(lx, t, err);
    if (rc == 0)
        lx->pos = t->end;
    return rc;
}
