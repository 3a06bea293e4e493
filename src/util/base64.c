/* Table-driven base64; decoding rejects anything outside the alphabet and bad padding. */
#include "util/base64.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include "util/xalloc.h"

static const char enc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *bw_base64_encode(const void *data, size_t n)
{
    const unsigned char *p = data;
    char *out = bw_malloc((n + 2) / 3 * 4 + 1), *o = out;
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        *o++ = enc[v >> 18];
        *o++ = enc[(v >> 12) & 63];
        *o++ = enc[(v >> 6) & 63];
        *o++ = enc[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0);
        *o++ = enc[v >> 18];
        *o++ = enc[(v >> 12) & 63];
        *o++ = i + 1 < n ? enc[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    *o = '\0';
    return out;
}

static int dec(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    return c == '+' ? 62 : c == '/' ? 63 : -1;
}

unsigned char *bw_base64_decode(const char *s, size_t len, size_t *out_len)
{
    if (len % 4 != 0)
        return NULL;
    size_t pad = len >= 1 && s[len - 1] == '=' ? (len >= 2 && s[len - 2] == '=' ? 2 : 1) : 0;
    unsigned char *out = bw_malloc(len / 4 * 3 + 1), *o = out;
    for (size_t i = 0; i < len; i += 4) {
        int v[4];
        for (int k = 0; k < 4; k++) {
            bool last_group = i + 4 == len;
            v[k] = (last_group && k >= 4 - (int)pad) ? 0 : dec(s[i + k]);
            if (v[k] < 0) {
                free(out);
                return NULL;
            }
        }
        uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        *o++ = (unsigned char)(w >> 16);
        *o++ = (unsigned char)(w >> 8);
        *o++ = (unsigned char)w;
    }
    *out_len = (size_t)(o - out) - pad;
    return out;
}
