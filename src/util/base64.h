/* Standard base64 (RFC 4648, with padding). */
#ifndef BW_UTIL_BASE64_H
#define BW_UTIL_BASE64_H

#include <stddef.h>

/* Encodes n bytes; returns a NUL-terminated malloc'd string (caller frees). */
char *bw_base64_encode(const void *data, size_t n);
/* Decodes; returns malloc'd bytes with *out_len set, or NULL when s is not valid base64 (whitespace is
   not allowed; padding is required). Caller frees. */
unsigned char *bw_base64_decode(const char *s, size_t len, size_t *out_len);

#endif
