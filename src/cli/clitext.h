/*
 * Text the sub-commands show on a terminal. Strings that come from NATS (worker ids, prompts, error
 * messages) are written by other programs: a control sequence in one must reach the screen as visible
 * text, never as an action (cursor moves, title changes, reordered text). Every table cell and JSON
 * line the CLI prints from a message goes through these functions.
 */
#ifndef BW_CLI_CLITEXT_H
#define BW_CLI_CLITEXT_H

#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

/* Appends str for a terminal: unsafe characters (C0, DEL, C1, line separators, bidirectional controls)
   and bytes that are not UTF-8 escaped, backslashes doubled, at most max display characters (a longer
   text is cut and ends with "..."). NULL is shown as "". Returns the display width written. */
size_t bw_clitext_put(bw_buf_t *b, const char *str, size_t max);

/* Appends JSON text of n bytes (as util/jsonw.c or jansson write it: C0 already escaped) with the other
   unsafe characters, which can only occur inside its strings, written as \u escapes: the same JSON
   value, safe on a terminal. */
void bw_clitext_put_json(bw_buf_t *b, const char *str, size_t n);

/* Appends a duration of s seconds in two units at most: "45s", "12m05s", "3h07m", "6d23h". */
void bw_clitext_put_duration(bw_buf_t *b, int64_t s);

#endif
