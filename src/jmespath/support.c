/*
 * Small building blocks of the JMESPath library: aborting allocators, the bump arena that holds a
 * compiled expression, a growable byte buffer and error formatting.
 *
 * The library is self-contained on purpose (libc and jansson only), so it carries its own copies
 * of these instead of using the worker's util/ helpers. Out of memory aborts with a message.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jmespath_int.h"

static void oom(size_t n)
{
    fprintf(stderr, "jmespath: out of memory allocating %zu bytes\n", n);
    abort();
}

void *jp_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL)
        oom(n);
    return p;
}

void *jp_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (q == NULL)
        oom(n);
    return q;
}

json_t *jp_xjson(json_t *v)
{
    if (v == NULL)
        oom(0);
    return v;
}

/* ---- arena ---- */

struct jp_chunk {
    jp_chunk_t *next;
    size_t used, size;
    max_align_t data[]; /* aligned storage */
};

#define ARENA_MIN_CHUNK 1024

void *jp_arena_alloc(jp_arena_t *a, size_t n)
{
    const size_t align = sizeof(max_align_t);
    n = (n + align - 1) / align * align;
    jp_chunk_t *c = a->head;
    if (c == NULL || c->size - c->used < n) {
        /* Chunks double with the arena so a big expression needs few of them. */
        size_t size = a->bytes < ARENA_MIN_CHUNK ? ARENA_MIN_CHUNK : a->bytes;
        if (size < n)
            size = n;
        c = jp_xmalloc(sizeof *c + size);
        c->used = 0;
        c->size = size;
        c->next = a->head;
        a->head = c;
        a->bytes += sizeof *c + size;
    }
    void *p = (char *)c->data + c->used;
    c->used += n;
    return p;
}

void jp_arena_free(jp_arena_t *a)
{
    jp_chunk_t *c = a->head;
    while (c != NULL) {
        jp_chunk_t *next = c->next;
        free(c);
        c = next;
    }
    a->head = NULL;
    a->bytes = 0;
}

/* ---- byte buffer ---- */

void jp_buf_append(jp_buf_t *b, const void *s, size_t n)
{
    if (b->cap - b->len <= n) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap - b->len <= n)
            cap *= 2;
        b->p = jp_xrealloc(b->p, cap);
        b->cap = cap;
    }
    if (n > 0)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void jp_buf_putc(jp_buf_t *b, char c)
{
    jp_buf_append(b, &c, 1);
}

/* ---- errors ---- */

int jp_set_verror(bw_jmespath_error_t *err, bw_jmespath_status_t status, size_t offset, const char *fmt,
                  va_list ap)
{
    if (err == NULL)
        return (int)status;
    err->status = status;
    err->offset = offset;
    int n = 0;
    if (offset != SIZE_MAX)
        n = snprintf(err->message, sizeof err->message, "at offset %zu: ", offset);
    if (n < 0)
        n = 0;
    if ((size_t)n < sizeof err->message)
        vsnprintf(err->message + n, sizeof err->message - (size_t)n, fmt, ap);
    return (int)status;
}

int jp_set_error(bw_jmespath_error_t *err, bw_jmespath_status_t status, size_t offset, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = jp_set_verror(err, status, offset, fmt, ap);
    va_end(ap);
    return rc;
}
