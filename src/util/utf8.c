/* See utf8.h. */
#include "util/utf8.h"

#include <stdint.h>

size_t bw_utf8_len(const unsigned char *s, size_t n, bool *partial)
{
    unsigned char c = s[0];
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (partial != NULL)
        *partial = false;
    if (len == 0 || (len == 2 && c < 0xc2) || (len == 4 && c > 0xf4))
        return 0;
    for (size_t i = 1; i < len; i++) {
        if (i == n) {
            if (partial != NULL)
                *partial = true;
            return 0;
        }
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    }
    uint32_t cp = len == 3   ? (uint32_t)(c & 0x0f) << 12 | (uint32_t)(s[1] & 0x3f) << 6 | (s[2] & 0x3fu)
                  : len == 4 ? (uint32_t)(c & 0x07) << 18 | (uint32_t)(s[1] & 0x3f) << 12 |
                                   (uint32_t)(s[2] & 0x3f) << 6 | (s[3] & 0x3fu)
                             : 0x80;
    if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return len;
}
