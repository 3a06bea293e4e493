/* Terminal-safe text for the CLI (see clitext.h). */
#include "cli/clitext.h"

#include <stdbool.h>
#include <string.h>

#include "util/utf8.h"

/* The code point of the valid UTF-8 sequence s of len bytes. */
static unsigned decode(const unsigned char *s, size_t len)
{
    static const unsigned char lead_mask[] = {0, 0x7f, 0x1f, 0x0f, 0x07};
    unsigned cp = s[0] & lead_mask[len];
    for (size_t i = 1; i < len; i++)
        cp = (cp << 6) | (s[i] & 0x3f);
    return cp;
}

/* Characters a terminal acts on rather than shows: C0, DEL, C1 (U+009B is a CSI on many terminals),
   the line separators and the bidirectional controls that reorder what follows them on screen. */
static bool unsafe(unsigned cp)
{
    return cp < 0x20 || (cp >= 0x7f && cp < 0xa0) || cp == 0x061c || cp == 0x200e || cp == 0x200f ||
           (cp >= 0x2028 && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069);
}

/* Appends the escape of an unsafe character (or of a byte that is not UTF-8, when cp > 0x10ffff holds
   the byte plus 0x110000); returns its length. */
static size_t put_escape(bw_buf_t *b, unsigned cp)
{
    size_t before = b->len;
    if (cp == '\n' || cp == '\t' || cp == '\r')
        bw_buf_printf(b, "\\%c", cp == '\n' ? 'n' : cp == '\t' ? 't' : 'r');
    else if (cp < 0x80)
        bw_buf_printf(b, "\\x%02x", cp);
    else if (cp > 0x10ffff)
        bw_buf_printf(b, "\\x%02x", cp - 0x110000);
    else
        bw_buf_printf(b, "\\u%04x", cp);
    return b->len - before;
}

size_t bw_clitext_put(bw_buf_t *b, const char *str, size_t max)
{
    const unsigned char *s = (const unsigned char *)(str ? str : ""), *end = s + strlen((const char *)s);
    size_t shown = 0, cut_len = b->len, cut_shown = 0;
    while (s < end && shown <= max) {
        size_t len = bw_utf8_len(s, (size_t)(end - s), NULL);
        unsigned cp = len > 0 ? decode(s, len) : 0x110000u + *s;
        if (len == 0 || unsafe(cp))
            shown += put_escape(b, cp);
        else if (cp == '\\')
            bw_buf_puts(b, "\\\\"), shown += 2; /* so that every escape reads back unambiguously */
        else
            bw_buf_append(b, (const char *)s, len), shown++;
        s += len > 0 ? len : 1;
        if (shown + 3 <= max)
            cut_len = b->len, cut_shown = shown;
    }
    if (shown <= max && s == end)
        return shown;
    b->len = cut_len; /* too long: back to the last point that leaves room for the dots */
    b->p[b->len] = '\0';
    bw_buf_puts(b, "...");
    return cut_shown + 3;
}

void bw_clitext_put_json(bw_buf_t *b, const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str, *end = s + n;
    while (s < end) {
        size_t len = bw_utf8_len(s, (size_t)(end - s), NULL);
        unsigned cp = len > 0 ? decode(s, len) : 0xfffd;
        if (len == 0 || unsafe(cp))
            bw_buf_printf(b, "\\u%04x", cp);
        else
            bw_buf_append(b, (const char *)s, len);
        s += len > 0 ? len : 1;
    }
}

void bw_clitext_put_duration(bw_buf_t *b, int64_t s)
{
    long long v = s < 0 ? 0 : (long long)s;
    if (v < 60)
        bw_buf_printf(b, "%llds", v);
    else if (v < 3600)
        bw_buf_printf(b, "%lldm%02llds", v / 60, v % 60);
    else if (v < 86400)
        bw_buf_printf(b, "%lldh%02lldm", v / 3600, v % 3600 / 60);
    else
        bw_buf_printf(b, "%lldd%02lldh", v / 86400, v % 86400 / 3600);
}
