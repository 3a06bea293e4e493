/*
 * The approvals API front (approvals_http.h), on the health server's thread. It holds no approval data:
 * it refuses what it can on its own (no token configured, a missing or wrong token, a method or a
 * percent-escape it does not take) and hands the rest to the registry, which answers on the loop.
 *
 * The token is compared as SHA-256 digests with CRYPTO_memcmp, so neither the position of the first
 * differing byte nor the presented token's length shows in the time taken. The page is embedded as
 * one HTML file with one <style> and one <script> block; it is split once, at create, into the page
 * (the blocks replaced by references to /approvals/ui.css and /approvals/ui.js) and the two blocks'
 * contents, so the Content-Security-Policy can forbid every inline script and style.
 */
#include "net/approvals_http.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util/buf.h"
#include "util/xalloc.h"

#define JSON "application/json"

typedef struct part {
    char *p;
    size_t len;
} part_t;

struct bw_approvals_front {
    bool enabled;
    unsigned char digest[EVP_MAX_MD_SIZE]; /* SHA-256 of the token */
    pthread_mutex_t mu;                    /* guards registry, and is held across a call into it */
    bw_approvals_t *registry;
    part_t page, js, css;
};

/* ---- the page ------------------------------------------------------------------------------ */

/* Finds the block <tag ...>content</tag> in html[0..len): [*start, *end) is the whole block, content
   [*cstart, *cend). false when there is none. */
static bool find_block(const char *html, size_t len, const char *tag, size_t *start, size_t *end,
                       size_t *cstart, size_t *cend)
{
    char open[16], close[16];
    size_t ol = (size_t)snprintf(open, sizeof open, "<%s", tag),
           cl = (size_t)snprintf(close, sizeof close, "</%s>", tag);
    for (size_t i = 0; i + ol < len; i++) {
        if (strncasecmp(html + i, open, ol) != 0 || (html[i + ol] != '>' && html[i + ol] != ' '))
            continue;
        const char *gt = memchr(html + i, '>', len - i);
        if (gt == NULL)
            return false;
        size_t c0 = (size_t)(gt + 1 - html);
        for (size_t j = c0; j + cl <= len; j++)
            if (strncasecmp(html + j, close, cl) == 0) {
                *start = i;
                *cstart = c0;
                *cend = j;
                *end = j + cl;
                return true;
            }
        return false;
    }
    return false;
}

static part_t part_of(const char *p, size_t len)
{
    part_t x = {bw_malloc(len + 1), len};
    memcpy(x.p, p, len);
    x.p[len] = '\0';
    return x;
}

typedef struct cut {
    bool on;
    size_t from, to; /* the block */
    const char *with;
    size_t with_len;
} cut_t;

/* Splits the embedded page into f->page, f->css and f->js (either block may be missing: empty). */
static void split_page(bw_approvals_front_t *f, const char *html, size_t len)
{
    static const char link[] = "<link rel=\"stylesheet\" href=\"/approvals/ui.css\">";
    static const char script[] = "<script src=\"/approvals/ui.js\"></script>";
    size_t s0 = 0, s1 = 0, sc0 = 0, sc1 = 0, j0 = 0, j1 = 0, jc0 = 0, jc1 = 0;
    bool has_style = find_block(html, len, "style", &s0, &s1, &sc0, &sc1);
    bool has_script = find_block(html, len, "script", &j0, &j1, &jc0, &jc1);
    f->css = part_of(has_style ? html + sc0 : "", has_style ? sc1 - sc0 : 0);
    f->js = part_of(has_script ? html + jc0 : "", has_script ? jc1 - jc0 : 0);
    /* the two replacements, in the order they appear in the page */
    cut_t cut[2] = {{has_style, s0, s1, link, sizeof link - 1},
                    {has_script, j0, j1, script, sizeof script - 1}};
    if (cut[0].on && cut[1].on && cut[1].from < cut[0].from) {
        cut_t t = cut[0];
        cut[0] = cut[1];
        cut[1] = t;
    }
    if (cut[0].on && cut[1].on && cut[1].from < cut[0].to)
        cut[1].on = false; /* a <script> inside the <style> (or the reverse) is its content */
    bw_buf_t b;
    size_t at = 0;
    bw_buf_init(&b, len + 128);
    for (int i = 0; i < 2; i++) {
        if (!cut[i].on)
            continue;
        bw_buf_append(&b, html + at, cut[i].from - at);
        bw_buf_append(&b, cut[i].with, cut[i].with_len);
        at = cut[i].to;
    }
    bw_buf_append(&b, html + at, len - at);
    f->page.p = b.p;
    f->page.len = b.len;
}

/* ---- life ---------------------------------------------------------------------------------- */

static void sha256(const void *p, size_t n, unsigned char out[EVP_MAX_MD_SIZE])
{
    unsigned int len = 0;
    EVP_Digest(p, n, out, &len, EVP_sha256(), NULL);
}

bw_approvals_front_t *bw_approvals_front_create_page(const char *token, const char *html, size_t len)
{
    bw_approvals_front_t *f = bw_calloc(1, sizeof *f);
    f->enabled = token != NULL && token[0] != '\0';
    if (f->enabled)
        sha256(token, strlen(token), f->digest);
    pthread_mutex_init(&f->mu, NULL);
    split_page(f, html, len);
    return f;
}

bw_approvals_front_t *bw_approvals_front_create(const char *token)
{
    return bw_approvals_front_create_page(token, bw_approvals_ui_html, bw_approvals_ui_html_len);
}

void bw_approvals_front_attach(bw_approvals_front_t *f, bw_approvals_t *r)
{
    pthread_mutex_lock(&f->mu);
    f->registry = r;
    pthread_mutex_unlock(&f->mu);
}

void bw_approvals_front_destroy(bw_approvals_front_t *f)
{
    if (f == NULL)
        return;
    pthread_mutex_destroy(&f->mu);
    free(f->page.p);
    free(f->js.p);
    free(f->css.p);
    free(f);
}

/* ---- requests ------------------------------------------------------------------------------ */

static void reply_error(bw_http_reply_t *reply, unsigned status, const char *extra, const char *code,
                        const char *message)
{
    char body[256];
    int n = snprintf(body, sizeof body, "{\"error\":\"%s\",\"message\":\"%s\"}\n", code, message);
    bw_http_reply(reply, status, JSON, extra, body, (size_t)n);
}

static bool is_method(const bw_http_request_t *rq, const char *m)
{
    return strcmp(rq->method, m) == 0;
}

/* Whether the Authorization value is "Bearer <the token>" (the scheme in any case). */
static bool authorized(const bw_approvals_front_t *f, const char *v, size_t n)
{
    unsigned char got[EVP_MAX_MD_SIZE];
    if (v == NULL || n < 7 || strncasecmp(v, "Bearer", 6) != 0 || (v[6] != ' ' && v[6] != '\t'))
        return false;
    size_t i = 7;
    while (i < n && (v[i] == ' ' || v[i] == '\t'))
        i++;
    if (i == n)
        return false;
    sha256(v + i, n - i, got);
    return CRYPTO_memcmp(got, f->digest, 32) == 0;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decodes p[0..n) ('+' is a space when plus), NUL-terminated, caller frees; NULL on a bad
   escape or a NUL. */
static char *decode(const char *p, size_t n, bool plus)
{
    char *out = bw_malloc(n + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int hi, lo;
        if (p[i] == '%') {
            if (i + 2 >= n)
                goto bad;
            if ((hi = hex_digit(p[i + 1])) < 0 || (lo = hex_digit(p[i + 2])) < 0 || (hi | lo) == 0)
                goto bad;
            out[o++] = (char)(hi << 4 | lo);
            i += 2;
        } else if (p[i] == '\0') {
            goto bad;
        } else {
            out[o++] = plus && p[i] == '+' ? ' ' : p[i];
        }
    }
    out[o] = '\0';
    return out;
bad:
    free(out);
    return NULL;
}

/* The query's tenant_id, decoded, in *tenant (NULL when absent or empty). false when it is malformed
   or given twice. */
static bool tenant_of(const bw_http_request_t *rq, char **tenant)
{
    const char *q = rq->query, *e = rq->query + rq->query_len;
    *tenant = NULL;
    while (q != NULL && q < e) {
        const char *amp = memchr(q, '&', (size_t)(e - q));
        const char *end = amp != NULL ? amp : e;
        if ((size_t)(end - q) >= 10 && memcmp(q, "tenant_id=", 10) == 0) {
            char *t = decode(q + 10, (size_t)(end - q - 10), true);
            if (t == NULL || *tenant != NULL) {
                free(t);
                free(*tenant);
                *tenant = NULL;
                return false;
            }
            *tenant = t;
        }
        q = end + 1;
    }
    if (*tenant != NULL && (*tenant)[0] == '\0') {
        free(*tenant);
        *tenant = NULL;
    }
    return true;
}

/* The query's limit= in *limit (0 when absent): false unless 1..BW_APPROVALS_LIST_MAX in decimal digits,
   once. */
static bool limit_of(const bw_http_request_t *rq, size_t *limit)
{
    const char *q = rq->query, *e = rq->query + rq->query_len;
    bool seen = false;
    *limit = 0;
    while (q != NULL && q < e) {
        const char *amp = memchr(q, '&', (size_t)(e - q));
        const char *end = amp != NULL ? amp : e;
        if ((size_t)(end - q) >= 6 && memcmp(q, "limit=", 6) == 0) {
            size_t v = 0, digits = 0;
            for (const char *d = q + 6; d < end; d++, digits++) {
                if (*d < '0' || *d > '9' || digits >= 7)
                    return false;
                v = v * 10 + (size_t)(*d - '0');
            }
            if (seen || v < 1 || v > BW_APPROVALS_LIST_MAX)
                return false;
            seen = true;
            *limit = v;
        }
        q = end + 1;
    }
    return true;
}

/* Hands a data request to the registry (503 without one). */
static void to_registry(bw_approvals_front_t *f, bw_approvals_op_t op, const char *id, const char *tenant,
                        size_t limit, const bw_http_request_t *rq, bw_http_reply_t *reply)
{
    pthread_mutex_lock(&f->mu);
    bw_approvals_t *r = f->registry;
    if (r != NULL)
        bw_approvals_http(r, op, id, tenant, limit, op == BW_APPROVALS_DECIDE ? rq->body : NULL,
                          op == BW_APPROVALS_DECIDE ? rq->body_len : 0, reply);
    pthread_mutex_unlock(&f->mu);
    if (r == NULL)
        reply_error(reply, 503, NULL, "unavailable", "approvals are not available (starting or stopping)");
}

/* /approvals and /approvals/{id} (rest: the raw path after the prefix). */
static void route_data(bw_approvals_front_t *f, const bw_http_request_t *rq, const char *rest, size_t n,
                       bw_http_reply_t *reply)
{
    bool list = n == 0, get = is_method(rq, "GET") || is_method(rq, "HEAD");
    char *id = NULL, *tenant = NULL;
    if (!authorized(f, rq->authorization, rq->authorization_len)) {
        reply_error(reply, 401,
                    rq->authorization != NULL ? "WWW-Authenticate: Bearer error=\"invalid_token\"\r\n"
                                              : "WWW-Authenticate: Bearer\r\n",
                    "unauthorized", "send Authorization: Bearer <APPROVAL_TOKEN>");
        return;
    }
    if (!get && (list || !is_method(rq, "POST"))) {
        reply_error(reply, 405, list ? "Allow: GET, HEAD\r\n" : "Allow: GET, HEAD, POST\r\n",
                    "method_not_allowed", "method not allowed");
        return;
    }
    size_t limit = 0;
    if ((!list && (id = decode(rest + 1, n - 1, false)) == NULL) || !tenant_of(rq, &tenant)) {
        reply_error(reply, 400, NULL, "invalid_request", "bad percent-escape in the id or tenant_id");
        goto out;
    }
    if (!limit_of(rq, &limit)) {
        reply_error(reply, 400, NULL, "invalid_request", "limit must be an integer in 1..100000, given once");
        goto out;
    }
    to_registry(f,
                list  ? BW_APPROVALS_LIST
                : get ? BW_APPROVALS_GET
                      : BW_APPROVALS_DECIDE,
                id, tenant, limit, rq, reply);
out:
    free(id);
    free(tenant);
}

/* A part of the page: GET or HEAD only. */
static void serve_part(const bw_http_request_t *rq, const part_t *p, const char *type, bw_http_reply_t *reply)
{
    if (!is_method(rq, "GET") && !is_method(rq, "HEAD"))
        reply_error(reply, 405, "Allow: GET, HEAD\r\n", "method_not_allowed", "method not allowed");
    else
        bw_http_reply(reply, 200, type, NULL, p->p, p->len);
}

static bool rest_is(const char *rest, size_t n, const char *s)
{
    return strlen(s) == n && memcmp(rest, s, n) == 0;
}

void bw_approvals_front_route(void *front, const bw_http_request_t *rq, bw_http_reply_t *reply)
{
    bw_approvals_front_t *f = front;
    size_t pl = strlen(BW_APPROVALS_PREFIX);
    const char *rest = rq->path + pl;
    size_t n = rq->path_len - pl;
    if (!f->enabled || rq->path_len < pl || memcmp(rq->path, BW_APPROVALS_PREFIX, pl) != 0)
        reply_error(reply, 404, NULL, "not_found", "no such route");
    else if (rest_is(rest, n, "/ui"))
        serve_part(rq, &f->page, "text/html; charset=utf-8", reply);
    else if (rest_is(rest, n, "/ui.js"))
        serve_part(rq, &f->js, "text/javascript; charset=utf-8", reply);
    else if (rest_is(rest, n, "/ui.css"))
        serve_part(rq, &f->css, "text/css; charset=utf-8", reply);
    else if (n == 0 || (n > 1 && rest[0] == '/' && memchr(rest + 1, '/', n - 1) == NULL))
        route_data(f, rq, rest, n, reply);
    else
        reply_error(reply, 404, NULL, "not_found", "no such route");
}
