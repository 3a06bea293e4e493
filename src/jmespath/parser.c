/*
 * JMESPath parser: Pratt (top-down operator precedence) with the binding powers of the reference
 * implementation (jmespath.py), so that precedence quirks such as `!a.b` meaning `(!a).b` match.
 *
 * Invariants that keep hostile expressions cheap and the evaluator's stack bounded:
 * - every recursive descent goes through parse_expr, which counts nesting against
 *   BW_JMESPATH_MAX_NESTING;
 * - left-associative chains (a.b.c, a[0][1], a | b | c, a || b, a && b) become one n-ary node
 *   instead of a left-deep tree, and every node records its height, which is also capped, so the
 *   tree walked by the evaluator is never deeper than the limit;
 * - unknown functions and wrong arity are recorded and reported only once the whole expression
 *   has parsed, so that a syntax error anywhere wins, as in the reference implementation.
 */
#include <stdio.h>
#include <string.h>

#include "jmespath_int.h"

typedef struct {
    jp_lexer_t lx;
    jp_token_t cur, next; /* two tokens of lookahead */
    bw_jmespath_expr_t *e;
    bw_jmespath_error_t *err;
    int status;
    unsigned depth;
    bw_jmespath_error_t deferred; /* first function-resolution error, reported after the parse */
} parser_t;

/* Binding powers; tokens below PROJECTION_STOP end the right-hand side of a projection. */
static const unsigned char bp_table[T_COUNT] = {
    [T_PIPE] = 1, [T_OR] = 2,   [T_AND] = 3,     [T_EQ] = 5,        [T_NE] = 5,      [T_LT] = 5,
    [T_LE] = 5,   [T_GT] = 5,   [T_GE] = 5,      [T_FLATTEN] = 9,   [T_STAR] = 20,   [T_FILTER] = 21,
    [T_DOT] = 40, [T_NOT] = 45, [T_LBRACE] = 50, [T_LBRACKET] = 55, [T_LPAREN] = 60,
};
#define PROJECTION_STOP 10

static jp_node_t *parse_expr(parser_t *p, unsigned bp);

/* ---- errors ---- */

static jp_node_t *fail(parser_t *p, bw_jmespath_status_t st, size_t off, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static jp_node_t *fail(parser_t *p, bw_jmespath_status_t st, size_t off, const char *fmt, ...)
{
    if (p->status == 0) {
        va_list ap;
        va_start(ap, fmt);
        p->status = jp_set_verror(p->err, st, off, fmt, ap);
        va_end(ap);
    }
    return NULL;
}

static jp_node_t *unexpected(parser_t *p, const jp_token_t *t, const char *context)
{
    char what[64];
    jp_token_describe(&p->lx, t, what, sizeof what);
    return fail(p, BW_JMESPATH_ESYNTAX, t->off, "unexpected %s%s", what, context);
}

static jp_node_t *expected(parser_t *p, const char *want)
{
    char what[64];
    jp_token_describe(&p->lx, &p->cur, what, sizeof what);
    return fail(p, BW_JMESPATH_ESYNTAX, p->cur.off, "expected %s but found %s", want, what);
}

/* ---- tokens ---- */

static int advance(parser_t *p)
{
    p->cur = p->next;
    if (p->status == 0 && jp_lex(&p->lx, &p->next, p->err) != 0)
        p->status = BW_JMESPATH_ESYNTAX;
    return p->status;
}

/* Consumes a token of the given type or fails. 0 or -1. */
static int expect(parser_t *p, jp_tok_type_t type)
{
    if (p->cur.type != type) {
        expected(p, jp_token_name(type));
        return -1;
    }
    return advance(p) == 0 ? 0 : -1;
}

/* ---- nodes ---- */

static jp_node_t *node(parser_t *p, jp_kind_t kind, size_t off, size_t cap)
{
    jp_node_t *n = jp_arena_alloc(&p->e->arena, sizeof *n);
    memset(n, 0, sizeof *n);
    n->kind = (uint8_t)kind;
    n->height = 1;
    n->offset = off;
    n->cap = cap;
    n->kids = cap ? jp_arena_alloc(&p->e->arena, cap * sizeof *n->kids) : NULL;
    return n;
}

/* Appends kid to n, growing the arena array by doubling; enforces the height limit. */
static int add_kid(parser_t *p, jp_node_t *n, jp_node_t *kid)
{
    if (kid == NULL)
        return -1;
    if (n->nkids == n->cap) {
        size_t cap = n->cap ? n->cap * 2 : 4;
        jp_node_t **kids = jp_arena_alloc(&p->e->arena, cap * sizeof *kids);
        if (n->nkids > 0)
            memcpy(kids, n->kids, n->nkids * sizeof *kids);
        n->kids = kids;
        n->cap = cap;
    }
    n->kids[n->nkids++] = kid;
    if (kid->height >= n->height)
        n->height = (uint16_t)(kid->height + 1);
    if (n->height > BW_JMESPATH_MAX_NESTING) {
        fail(p, BW_JMESPATH_ELIMIT, n->offset, "expression nests deeper than %d levels",
             BW_JMESPATH_MAX_NESTING);
        return -1;
    }
    return 0;
}

static jp_node_t *node1(parser_t *p, jp_kind_t kind, size_t off, jp_node_t *a)
{
    jp_node_t *n = node(p, kind, off, 1);
    return add_kid(p, n, a) == 0 ? n : NULL;
}

static jp_node_t *node2(parser_t *p, jp_kind_t kind, size_t off, jp_node_t *a, jp_node_t *b)
{
    jp_node_t *n = node(p, kind, off, 2);
    return add_kid(p, n, a) == 0 && add_kid(p, n, b) == 0 ? n : NULL;
}

static jp_node_t *current(parser_t *p, size_t off)
{
    return node(p, N_CURRENT, off, 0);
}

/* Associative operators and chains: extends left (or wraps it) and splices right's kids when
   right is the same kind, so a long chain stays one flat node. */
static jp_node_t *nary(parser_t *p, jp_kind_t kind, jp_node_t *left, jp_node_t *right)
{
    if (left == NULL || right == NULL)
        return NULL;
    jp_node_t *n = left;
    if (left->kind != kind && (n = node1(p, kind, left->offset, left)) == NULL)
        return NULL;
    if (right->kind != kind)
        return add_kid(p, n, right) == 0 ? n : NULL;
    for (size_t i = 0; i < right->nkids; i++)
        if (add_kid(p, n, right->kids[i]) != 0)
            return NULL;
    return n;
}

/* ---- projections, index and slice ---- */

/* What follows a projection: applied to each projected element (identity when nothing does). */
static jp_node_t *dot_rhs(parser_t *p, unsigned bp);

static jp_node_t *projection_rhs(parser_t *p, unsigned bp)
{
    jp_tok_type_t type = p->cur.type;
    if (bp_table[type] < PROJECTION_STOP)
        return current(p, p->cur.off);
    if (type == T_LBRACKET || type == T_FILTER)
        return parse_expr(p, bp);
    if (type == T_DOT)
        return advance(p) == 0 ? dot_rhs(p, bp) : NULL;
    return unexpected(p, &p->cur, " after a projection");
}

static jp_node_t *project(parser_t *p, jp_kind_t kind, size_t off, jp_node_t *left, unsigned bp)
{
    if (left == NULL)
        return NULL;
    return node2(p, kind, off, left, projection_rhs(p, bp));
}

static jp_node_t *parse_slice(parser_t *p, size_t off)
{
    jp_node_t *n = node(p, N_SLICE, off, 0);
    size_t part = 0, step_off = 0;
    while (p->cur.type != T_RBRACKET) {
        if (p->cur.type == T_COLON && part < 2) {
            part++;
        } else if (p->cur.type == T_NUMBER && !n->u.slice.has[part]) {
            n->u.slice.v[part] = p->cur.num;
            n->u.slice.has[part] = true;
            step_off = p->cur.off;
        } else
            return expected(p, part == 2 && p->cur.type == T_COLON ? "']' (a slice has at most two ':')"
                                                                   : "a number, ':' or ']' in the slice");
        if (advance(p) != 0)
            return NULL;
    }
    if (expect(p, T_RBRACKET) != 0)
        return NULL;
    if (n->u.slice.has[2] && n->u.slice.v[2] == 0)
        return fail(p, BW_JMESPATH_EINVALID_VALUE, step_off, "slice step cannot be 0");
    return n;
}

/* At a number or ':' just after '[': an index node or a slice node, ']' consumed. */
static jp_node_t *parse_index(parser_t *p, size_t off)
{
    if (p->cur.type == T_COLON || p->next.type == T_COLON)
        return parse_slice(p, off);
    jp_node_t *n = node(p, N_INDEX, off, 0);
    n->u.index = p->cur.num;
    if (advance(p) != 0 || expect(p, T_RBRACKET) != 0)
        return NULL;
    return n;
}

/* left[...]: an index joins left's chain; a slice or [*] starts a projection. */
static jp_node_t *led_lbracket(parser_t *p, const jp_token_t *t, jp_node_t *left)
{
    if (p->cur.type == T_NUMBER || p->cur.type == T_COLON) {
        jp_node_t *ix = parse_index(p, t->off);
        if (ix == NULL || ix->kind == N_INDEX)
            return nary(p, N_CHAIN, left, ix);
        return project(p, N_PROJECT, t->off, nary(p, N_CHAIN, left, ix), bp_table[T_STAR]);
    }
    if (p->cur.type != T_STAR)
        return expected(p, "a number, ':' or '*' after '['");
    if (advance(p) != 0 || expect(p, T_RBRACKET) != 0)
        return NULL;
    return project(p, N_PROJECT, t->off, left, bp_table[T_STAR]);
}

static jp_node_t *led_filter(parser_t *p, const jp_token_t *t, jp_node_t *left)
{
    jp_node_t *cond = parse_expr(p, 0);
    if (cond == NULL || expect(p, T_RBRACKET) != 0)
        return NULL;
    jp_node_t *n = node2(p, N_FILTER, t->off, left, projection_rhs(p, bp_table[T_FILTER]));
    return n != NULL && add_kid(p, n, cond) == 0 ? n : NULL;
}

/* ---- multi-select and function calls ---- */

static jp_node_t *parse_list(parser_t *p, size_t off)
{
    jp_node_t *n = node(p, N_LIST, off, 4);
    for (;;) {
        if (add_kid(p, n, parse_expr(p, 0)) != 0)
            return NULL;
        if (p->cur.type == T_RBRACKET)
            break;
        if (expect(p, T_COMMA) != 0)
            return NULL;
    }
    return expect(p, T_RBRACKET) == 0 ? n : NULL;
}

static jp_node_t *parse_hash(parser_t *p, size_t off)
{
    jp_node_t *n = node(p, N_HASH, off, 4);
    size_t kcap = 0;
    for (;;) {
        if (p->cur.type != T_IDENT && p->cur.type != T_QIDENT)
            return expected(p, "an identifier as multi-select key");
        jp_str_t key = p->cur.str;
        if (advance(p) != 0 || expect(p, T_COLON) != 0 || add_kid(p, n, parse_expr(p, 0)) != 0)
            return NULL;
        if (n->nkids > kcap) { /* keys grow with the kids, one per kid */
            jp_str_t *keys = jp_arena_alloc(&p->e->arena, n->cap * sizeof *keys);
            if (kcap > 0)
                memcpy(keys, n->u.keys, (n->nkids - 1) * sizeof *keys);
            n->u.keys = keys;
            kcap = n->cap;
        }
        n->u.keys[n->nkids - 1] = key;
        if (p->cur.type == T_RBRACE)
            break;
        if (p->cur.type != T_COMMA)
            return expected(p, "',' or '}'");
        if (advance(p) != 0)
            return NULL;
    }
    return advance(p) == 0 ? n : NULL;
}

/* Resolves the function and checks the argument count; a failure is deferred (see top). */
static void resolve_call(parser_t *p, jp_node_t *n, const jp_str_t *name)
{
    const jp_func_t *fn = jp_func_lookup(name->s, name->len);
    n->u.fn = fn;
    if (p->deferred.status != BW_JMESPATH_OK)
        return;
    if (fn == NULL) {
        jp_set_error(&p->deferred, BW_JMESPATH_EUNKNOWN_FUNCTION, n->offset, "unknown function %s()",
                     name->s);
        return;
    }
    if (fn->variadic ? n->nkids >= fn->nparams : n->nkids == fn->nparams)
        return;
    jp_set_error(&p->deferred, BW_JMESPATH_EINVALID_ARITY, n->offset,
                 "%s() takes %s%u argument%s but %zu %s given", fn->name, fn->variadic ? "at least " : "",
                 fn->nparams, fn->nparams == 1 ? "" : "s", n->nkids, n->nkids == 1 ? "was" : "were");
}

/* name(args): t is the name, the current token is '('. */
static jp_node_t *parse_call(parser_t *p, const jp_token_t *t)
{
    jp_node_t *n = node(p, N_CALL, t->off, 2);
    if (advance(p) != 0)
        return NULL;
    while (p->cur.type != T_RPAREN) {
        if (add_kid(p, n, parse_expr(p, 0)) != 0)
            return NULL;
        if (p->cur.type == T_RPAREN)
            break;
        if (p->cur.type != T_COMMA)
            return expected(p, "',' or ')'");
        if (advance(p) != 0)
            return NULL;
    }
    if (advance(p) != 0)
        return NULL;
    resolve_call(p, n, &t->str);
    return n;
}

/* ---- nud and led ---- */

static jp_node_t *nud_lbracket(parser_t *p, const jp_token_t *t)
{
    if (p->cur.type == T_NUMBER || p->cur.type == T_COLON) {
        jp_node_t *ix = parse_index(p, t->off);
        if (ix == NULL || ix->kind == N_INDEX)
            return ix;
        return project(p, N_PROJECT, t->off, ix, bp_table[T_STAR]);
    }
    if (p->cur.type == T_STAR && p->next.type == T_RBRACKET) {
        if (advance(p) != 0 || advance(p) != 0)
            return NULL;
        return project(p, N_PROJECT, t->off, current(p, t->off), bp_table[T_STAR]);
    }
    return parse_list(p, t->off);
}

static jp_node_t *nud_paren(parser_t *p)
{
    jp_node_t *inner = parse_expr(p, 0);
    return inner != NULL && expect(p, T_RPAREN) == 0 ? inner : NULL;
}

static jp_node_t *nud(parser_t *p, const jp_token_t *t)
{
    jp_node_t *n;
    switch (t->type) {
    case T_LITERAL:
        n = node(p, N_LITERAL, t->off, 0);
        n->u.lit = t->lit;
        return n;
    case T_IDENT:
    case T_QIDENT:
        if (p->cur.type == T_LPAREN)
            return t->type == T_IDENT
                       ? parse_call(p, t)
                       : fail(p, BW_JMESPATH_ESYNTAX, t->off, "a function name cannot be quoted");
        n = node(p, N_FIELD, t->off, 0);
        n->u.name = t->str;
        return n;
    case T_AT:
        return current(p, t->off);
    case T_STAR:
        return project(p, N_VALUES, t->off, current(p, t->off), bp_table[T_STAR]);
    case T_FLATTEN:
        return project(p, N_PROJECT, t->off, node1(p, N_FLATTEN, t->off, current(p, t->off)),
                       bp_table[T_FLATTEN]);
    case T_FILTER:
        return led_filter(p, t, current(p, t->off));
    case T_LBRACKET:
        return nud_lbracket(p, t);
    case T_LBRACE:
        return parse_hash(p, t->off);
    case T_LPAREN:
        return nud_paren(p);
    case T_NOT:
        return node1(p, N_NOT, t->off, parse_expr(p, bp_table[T_NOT]));
    case T_EXPREF:
        return node1(p, N_EXPREF, t->off, parse_expr(p, 0));
    case T_EOF:
        return fail(p, BW_JMESPATH_ESYNTAX, t->off, "unexpected end of expression");
    default:
        return unexpected(p, t, "");
    }
}

static jp_node_t *dot_rhs(parser_t *p, unsigned bp)
{
    jp_token_t t = p->cur;
    switch (t.type) {
    case T_IDENT:
    case T_QIDENT:
    case T_STAR:
        return parse_expr(p, bp);
    case T_LBRACKET:
        return advance(p) == 0 ? parse_list(p, t.off) : NULL;
    case T_LBRACE:
        return advance(p) == 0 ? parse_hash(p, t.off) : NULL;
    default:
        return expected(p, "an identifier, '*', '[' or '{' after '.'");
    }
}

static jp_node_t *led_dot(parser_t *p, const jp_token_t *t, jp_node_t *left)
{
    if (p->cur.type == T_STAR) {
        if (advance(p) != 0)
            return NULL;
        return project(p, N_VALUES, t->off, left, bp_table[T_DOT]);
    }
    return nary(p, N_CHAIN, left, dot_rhs(p, bp_table[T_DOT]));
}

static jp_node_t *led_compare(parser_t *p, const jp_token_t *t, jp_node_t *left)
{
    static const jp_cmp_t ops[T_COUNT] = {
        [T_EQ] = CMP_EQ, [T_NE] = CMP_NE, [T_LT] = CMP_LT, [T_LE] = CMP_LE, [T_GT] = CMP_GT, [T_GE] = CMP_GE};
    jp_node_t *n = node2(p, N_CMP, t->off, left, parse_expr(p, bp_table[t->type]));
    if (n != NULL)
        n->u.op = ops[t->type];
    return n;
}

static jp_node_t *led(parser_t *p, const jp_token_t *t, jp_node_t *left)
{
    switch (t->type) {
    case T_DOT:
        return led_dot(p, t, left);
    case T_PIPE:
        return nary(p, N_PIPE, left, parse_expr(p, bp_table[T_PIPE]));
    case T_OR:
        return nary(p, N_OR, left, parse_expr(p, bp_table[T_OR]));
    case T_AND:
        return nary(p, N_AND, left, parse_expr(p, bp_table[T_AND]));
    case T_EQ:
    case T_NE:
    case T_LT:
    case T_LE:
    case T_GT:
    case T_GE:
        return led_compare(p, t, left);
    case T_FLATTEN:
        return project(p, N_PROJECT, t->off, node1(p, N_FLATTEN, t->off, left), bp_table[T_FLATTEN]);
    case T_FILTER:
        return led_filter(p, t, left);
    case T_LBRACKET:
        return led_lbracket(p, t, left);
    case T_LPAREN:
        return unexpected(p, t, "; only a plain identifier can be called as a function");
    default:
        return unexpected(p, t, "");
    }
}

static jp_node_t *parse_expr(parser_t *p, unsigned bp)
{
    if (++p->depth > BW_JMESPATH_MAX_NESTING) {
        p->depth--;
        return fail(p, BW_JMESPATH_ELIMIT, p->cur.off, "expression nests deeper than %d levels",
                    BW_JMESPATH_MAX_NESTING);
    }
    jp_token_t t = p->cur;
    jp_node_t *left = advance(p) == 0 ? nud(p, &t) : NULL;
    while (left != NULL && bp < bp_table[p->cur.type]) {
        t = p->cur;
        left = advance(p) == 0 ? led(p, &t, left) : NULL;
    }
    p->depth--;
    return left;
}

int jp_parse(bw_jmespath_expr_t *e, const char *src, size_t len, bw_jmespath_error_t *err)
{
    parser_t p = {.lx = {.src = src, .len = len, .e = e}, .e = e, .err = err};
    p.deferred.status = BW_JMESPATH_OK;
    if (jp_lex(&p.lx, &p.next, err) != 0 || advance(&p) != 0)
        return BW_JMESPATH_ESYNTAX;
    if (p.cur.type == T_EOF)
        return jp_set_error(err, BW_JMESPATH_ESYNTAX, p.cur.off, "empty expression");
    jp_node_t *root = parse_expr(&p, 0);
    if (root != NULL && p.cur.type != T_EOF)
        root = unexpected(&p, &p.cur, " after a complete expression");
    if (root == NULL)
        return p.status;
    if (p.deferred.status != BW_JMESPATH_OK) {
        if (err != NULL)
            *err = p.deferred;
        return p.deferred.status;
    }
    e->root = root;
    return 0;
}
