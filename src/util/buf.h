/* A growable byte buffer for building output (nats.c's natsBuffer habit): append, never sprintf into
   fixed arrays. The storage is always NUL-terminated for convenience. */
#ifndef BW_UTIL_BUF_H
#define BW_UTIL_BUF_H

#include <stddef.h>

typedef struct bw_buf {
    char *p;
    size_t len, cap;
} bw_buf_t;

/* Caller owns the storage: bw_buf_init, then bw_buf_dispose (or take p and free it). */
void bw_buf_init(bw_buf_t *b, size_t cap);
void bw_buf_dispose(bw_buf_t *b);
void bw_buf_append(bw_buf_t *b, const char *s, size_t n);
/* Room for n more bytes (and the NUL) at p + len, returned; the caller writes there, then adds to len
   (and writes the NUL if it relies on it). */
char *bw_buf_reserve(bw_buf_t *b, size_t n);
void bw_buf_puts(bw_buf_t *b, const char *s);
void bw_buf_printf(bw_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
