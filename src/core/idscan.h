/*
 * The fallback reader of an assignment's identity, for JSON text that jansson refuses although it is JSON
 * by the grammar (RFC 8259): nesting deeper than jansson's 2,048 levels, numbers out of the range of a
 * double or a 64-bit integer (1e400), lone surrogates ("\ud800"), U+0000 in a key. Such an assignment
 * cannot run, but when its assignment id and tenant can be read it can still be answered
 * (INVALID_ASSIGNMENT) instead of only being dead-lettered.
 *
 * The scanner is a complete JSON tokenizer: it validates the whole text, tracks depth with an explicit
 * stack (no recursion: any depth), reads strings with their escapes, and picks the members that identify
 * an assignment exactly where bw_assignment_decode looks for them: at the top level of the bare object, or
 * of the "data" object of an envelope. A member nested elsewhere, or text inside a string that looks like
 * one, never counts. A key that appears twice counts with its last value, as in jansson. Linear time,
 * memory one bit per level of nesting.
 */
#ifndef BW_CORE_IDSCAN_H
#define BW_CORE_IDSCAN_H

#include <stdbool.h>
#include <stddef.h>

#define BW_IDSCAN_MAX 256 /* longest id kept (the decoder's bound for ids and tenants) */

typedef enum {
    BW_IDSCAN_ABSENT = 0, /* no such member */
    BW_IDSCAN_OTHER,      /* present, not a string */
    BW_IDSCAN_UNREADABLE, /* a string holding U+0000 or a lone surrogate, or longer than BW_IDSCAN_MAX */
    BW_IDSCAN_STRING,     /* a string, decoded into s (UTF-8, NUL-terminated) */
} bw_idscan_kind_t;

typedef struct bw_idscan_str {
    bw_idscan_kind_t kind;
    size_t len;
    char s[BW_IDSCAN_MAX + 1];
} bw_idscan_str_t;

typedef struct bw_idscan {
    bool enveloped; /* the ids come from the "data" object of {"kind":"exec_assign","data":{…}} */
    bw_idscan_str_t assignment_id, request_id, tenant_id;
} bw_idscan_t;

/* Scans data[0..len). Returns true when the text is JSON by the grammar and its root is an assignment
   object (bare, or an envelope of kind "exec_assign" whose data is an object), with *out filled in; false
   otherwise (a syntax error, a truncated text, another root). */
bool bw_idscan(const char *data, size_t len, bw_idscan_t *out);

#endif
