/*
 * Allocation with the server's out-of-memory policy decided once (as h2o and redis do): on failure the
 * process logs one line to stderr and aborts. Sizes that come from input are checked against configured
 * limits before they reach these functions.
 */
#ifndef BW_UTIL_XALLOC_H
#define BW_UTIL_XALLOC_H

#include <stddef.h>

void *bw_malloc(size_t n);
void *bw_calloc(size_t count, size_t n);
void *bw_realloc(void *p, size_t n);
char *bw_strdup(const char *s);
char *bw_strndup(const char *s, size_t n);
/* malloc'd printf; caller frees. */
char *bw_asprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
