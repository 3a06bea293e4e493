/*
 * Pure helpers of the JetStream consumer (net/busjs.c), kept apart so unit tests reach them.
 */
#include "net/jsproto.h"

#include <stdlib.h>
#include <string.h>

size_t bw_js_b64url(char *out, const char *s, size_t n)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const unsigned char *p = (const unsigned char *)s;
    size_t o = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        out[o++] = a[p[i] >> 2];
        out[o++] = a[((p[i] & 3) << 4) | (p[i + 1] >> 4)];
        out[o++] = a[((p[i + 1] & 15) << 2) | (p[i + 2] >> 6)];
        out[o++] = a[p[i + 2] & 63];
    }
    if (n - i == 1) {
        out[o++] = a[p[i] >> 2];
        out[o++] = a[(p[i] & 3) << 4];
    } else if (n - i == 2) {
        out[o++] = a[p[i] >> 2];
        out[o++] = a[((p[i] & 3) << 4) | (p[i + 1] >> 4)];
        out[o++] = a[(p[i + 1] & 15) << 2];
    }
    out[o] = '\0';
    return o;
}

/* The delivery count and the consumer's pending count from an ack subject:
   $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending> (9 tokens), or with a domain and
   account hash after $JS.ACK (12 tokens). -1 when it is not one. */
int bw_js_parse_ack(const char *s, uint64_t *count, int64_t *pending)
{
    const char *tok[16];
    int n = 0;
    if (strncmp(s, "$JS.ACK.", 8) != 0)
        return -1;
    tok[n++] = s;
    for (const char *p = s; *p != '\0' && n < 16; p++)
        if (*p == '.')
            tok[n++] = p + 1;
    int at = n == 9 ? 4 : n >= 11 ? 6 : -1;
    if (at < 0)
        return -1;
    *count = strtoull(tok[at], NULL, 10);
    *pending = strtoll(tok[at + 4], NULL, 10);
    return *count > 0 ? 0 : -1;
}

bool bw_js_subject_covers(const char *pattern, const char *subject)
{
    /* NATS wildcards: '*' one token, '>' the rest */
    while (*pattern != '\0' && *subject != '\0') {
        if (pattern[0] == '>' && pattern[1] == '\0')
            return true;
        if (pattern[0] == '*' && (pattern[1] == '.' || pattern[1] == '\0')) {
            subject += strcspn(subject, ".");
            pattern++;
        } else {
            size_t pl = strcspn(pattern, "."), sl = strcspn(subject, ".");
            if (pl != sl || strncmp(pattern, subject, pl) != 0)
                return false;
            pattern += pl;
            subject += sl;
        }
        if (*pattern != *subject)
            return false;
        if (*pattern == '.') {
            pattern++;
            subject++;
        }
    }
    return *pattern == '\0' && *subject == '\0';
}
