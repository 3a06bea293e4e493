/*
 * Identifier formats of the wire contract: UUID v4 generation, and the validators that decide which
 * trace and run/flow/step ids the router accepts (PROTOCOL.md, ExecResult).
 */
#ifndef BW_UTIL_IDS_H
#define BW_UTIL_IDS_H

#include <stdbool.h>
#include <stddef.h>

#define BW_UUID_STRLEN 36

/* Writes a random UUID v4 in lower-case canonical form into out[37]. */
void bw_uuid_v4(char out[BW_UUID_STRLEN + 1]);
/* 32 hexadecimal characters, either case. */
bool bw_is_hex32(const char *s, size_t len);
/* Canonical 8-4-4-4-12 UUID whose version nibble is 4 and variant is RFC 4122 (8, 9, a, b). */
bool bw_is_uuid_v4(const char *s, size_t len);
/* 26-character upper-case Crockford base32 ULID whose first character is 0..7. */
bool bw_is_ulid_upper(const char *s, size_t len);
/* A trace id the router accepts: 32 hex or UUID v4. */
bool bw_is_valid_trace_id(const char *s, size_t len);
/* A run/flow/step id the router accepts: UUID v4 or upper-case ULID. */
bool bw_is_valid_run_id(const char *s, size_t len);
/* Extracts the 32-hex trace-id field of a W3C traceparent ("00-<32 hex>-<16 hex>-<2 hex>") into out[33].
   Returns false when the header is not a valid traceparent (all-zero trace ids are invalid too). */
bool bw_traceparent_trace_id(const char *tp, char out[33]);

#endif
