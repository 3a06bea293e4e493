/* Digests as the wire shows them. */
#ifndef BW_UTIL_DIGEST_H
#define BW_UTIL_DIGEST_H

#include <stddef.h>

/* The SHA-256 of data[0..len) as 64 lowercase hex digits and a NUL. */
void bw_sha256_hex(const void *data, size_t len, char out[65]);

#endif
