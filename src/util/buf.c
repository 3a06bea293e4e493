/* Growable buffer; grows geometrically, aborts on OOM through bw_realloc. */
#include "util/buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/xalloc.h"

void bw_buf_init(bw_buf_t *b, size_t cap)
{
    b->cap = cap ? cap : 64;
    b->p = bw_malloc(b->cap);
    b->len = 0;
    b->p[0] = '\0';
}

void bw_buf_dispose(bw_buf_t *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

static void reserve(bw_buf_t *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap)
        return;
    while (b->len + extra + 1 > b->cap)
        b->cap *= 2;
    b->p = bw_realloc(b->p, b->cap);
}

char *bw_buf_reserve(bw_buf_t *b, size_t n)
{
    reserve(b, n);
    return b->p + b->len;
}

void bw_buf_append(bw_buf_t *b, const char *s, size_t n)
{
    reserve(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void bw_buf_puts(bw_buf_t *b, const char *s)
{
    bw_buf_append(b, s, strlen(s));
}

void bw_buf_printf(bw_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n + 1 > b->cap - b->len) {
        reserve(b, (size_t)n);
        va_start(ap, fmt);
        vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
    }
    b->len += (size_t)n;
}
