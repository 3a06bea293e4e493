/*
 * UTF-8 validation as jansson and util/jsonw.c judge it: no overlong forms, no surrogates, nothing past
 * U+10FFFF. One function, used wherever a byte string must be cut or checked at character boundaries.
 */
#ifndef BW_UTIL_UTF8_H
#define BW_UTIL_UTF8_H

#include <stdbool.h>
#include <stddef.h>

/* Length (1..4) of the valid UTF-8 sequence at s, of which n bytes are readable (n >= 1); 0 when the bytes
   there are not valid UTF-8. When partial is not NULL, *partial says whether they are the valid beginning
   of a sequence that n cuts short (0 is returned then too). */
size_t bw_utf8_len(const unsigned char *s, size_t n, bool *partial);

#endif
