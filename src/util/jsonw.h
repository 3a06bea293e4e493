/*
 * A minimal JSON writer into a bw_buf_t, for the hot encoders (results): no intermediate objects.
 * Strings are escaped and always valid UTF-8 on output (invalid bytes become U+FFFD).
 */
#ifndef BW_UTIL_JSONW_H
#define BW_UTIL_JSONW_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

/* Writes s (n bytes) as a JSON string literal. */
void bw_jsonw_string(bw_buf_t *b, const char *s, size_t n);
/* Object members: `first` tracks the comma; a NULL string value writes nothing. */
void bw_jsonw_str(bw_buf_t *b, bool *first, const char *key, const char *val);
void bw_jsonw_int(bw_buf_t *b, bool *first, const char *key, int64_t val);
/* A raw, already-encoded JSON value (e.g. "0.0"). */
void bw_jsonw_raw(bw_buf_t *b, bool *first, const char *key, const char *json);
/* A jansson value, compact, keys in insertion order, reals in their shortest exact form. */
void bw_jsonw_value(bw_buf_t *b, bool *first, const char *key, const json_t *v);
/* The same, but writing stops soon after the buffer passes limit bytes (checked before each value): returns
   false then, and the buffer holds a cut text. Bounds the work on a value that shares structure. */
bool bw_jsonw_value_bounded(bw_buf_t *b, bool *first, const char *key, const json_t *v, size_t limit);
/* The shortest text that reads back as d, spelled like Python's repr (0.1, 5.0, 1e+21, 1.5e-07: always
   a real when read back; jansson writes 0.1 as 0.10000000000000001), NUL-terminated; returns its length.
   d must be finite. Results and JMESPath's to_string() both use it. */
size_t bw_jsonw_format_double(double d, char out[40]);
/* JSON text indented by two spaces per level, its numbers and strings as they are (for people: the
   CLI's output). The text is trusted to be valid JSON. */
void bw_jsonw_pretty(bw_buf_t *b, const char *json, size_t len);
/* An upper bound of v's compact encoding in bytes, or SIZE_MAX as soon as it passes limit (or v nests
   deeper than 2048). Stops early, so a value that shares structure (a DAG whose encoding would be
   exponentially large) costs at most O(limit) to check. */
size_t bw_jsonw_size_bounded(const json_t *v, size_t limit);

#endif
