/*
 * PostgreSQL values (the text format libpq returns, with the session's DateStyle=ISO and TimeZone=UTC)
 * to JSON, without losing anything:
 *
 *   bool                     true / false
 *   int2, int4, oid          number
 *   int8                     number within ±2^53, else a string of the exact digits
 *   float4, float8           number; NaN and ±Infinity as the strings "NaN", "Infinity", "-Infinity"
 *   numeric                  string (exact digits; NaN as "NaN")
 *   text, varchar, bpchar,   string
 *   name, char, uuid
 *   json, jsonb              the JSON value itself (integers beyond int64 in it become reals)
 *   timestamp                "2024-01-02T03:04:05.123456" (ISO 8601, no zone)
 *   timestamptz              "2024-01-02T03:04:05.123456Z" (RFC 3339, UTC)
 *   date, time               "2024-01-02", "03:04:05.123"
 *   bytea                    base64 of the bytes
 *   arrays of the above      JSON arrays (nested for more dimensions; NULL elements as null)
 *   anything else            its text form (interval, inet, enum, composite, ranges, ...)
 *
 * Pure functions: no connection, no libpq calls; unit-tested on text inputs.
 */
#ifndef BW_NET_PGVALUE_H
#define BW_NET_PGVALUE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

typedef unsigned int bw_pg_oid_t;

/* The JSON value of a non-NULL field: text of len bytes as libpq returns it in text format for a
   column of type oid. Never NULL (a text that does not parse as its type is kept as a string). */
json_t *bw_pg_value(bw_pg_oid_t oid, const char *text, size_t len);

/* The type's name ("int4", "_text" for arrays, "timestamptz", ...), or NULL when not a built-in this
   module knows (the caller may name it "oid:<n>"). */
const char *bw_pg_type_name(bw_pg_oid_t oid);

#endif
