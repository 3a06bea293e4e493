/*
 * Pure helpers of the JetStream consumer (net/busjs.c): the result store's key encoding, ack subjects,
 * subject wildcards. No I/O, any thread.
 */
#ifndef BW_NET_JSPROTO_H
#define BW_NET_JSPROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* base64url without padding of s[0..n) into out (room for 4 * ceil(n / 3) + 1 bytes); returns the length.
   KV keys allow [-/_=.a-zA-Z0-9] only, and tenants and assignment ids may hold any byte. */
size_t bw_js_b64url(char *out, const char *s, size_t n);
/* The delivery count and the consumer's pending count from a JetStream ack subject: 0, or -1 when it is
   not one (a status message has none). */
int bw_js_parse_ack(const char *s, uint64_t *count, int64_t *pending);
/* Whether the stream subject pattern (with NATS wildcards: '*' one token, '>' the rest) covers subject. */
bool bw_js_subject_covers(const char *pattern, const char *subject);

#endif
