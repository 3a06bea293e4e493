/*
 * lg_scan: one forward pass over a result, tracking only the nesting depth and string boundaries,
 * that stops as soon as both wanted fields are found. The worker writes assignment_id and status
 * near the start, so a result is usually done after a hundred bytes and never allocates.
 * Invariant: every index handed around is <= n, and bytes are read only below n.
 */
#include "lg_scan.h"

#include <string.h>

static size_t skip_ws(const char *p, size_t n, size_t i)
{
    while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r'))
        i++;
    return i;
}

/* Returns the index just past the string that opens at p[i] == '"' (n when unterminated). */
static size_t skip_string(const char *p, size_t n, size_t i)
{
    for (i++; i < n; i++) {
        if (p[i] == '\\')
            i++;
        else if (p[i] == '"')
            return i + 1;
    }
    return n;
}

static bool key_is(const char *k, size_t klen, const char *name)
{
    return klen == strlen(name) && memcmp(k, name, klen) == 0;
}

/* Stores the string value that opens at p[v] in *val; returns where scanning resumes. */
static size_t take_string(const char *p, size_t n, size_t v, const char **val, size_t *len)
{
    size_t end = skip_string(p, n, v);
    if (end < v + 2 || p[end - 1] != '"')
        return n; /* unterminated: nothing more to find */
    if (*val == NULL) {
        *val = p + v + 1;
        *len = end - v - 2;
    }
    return end;
}

/*
 * Handles the string that opens at p[i] in an object we read. When it is one of our keys with a
 * string value, stores the value; a top-level "data" key with an object value sets *enter_data.
 * Returns where scanning resumes.
 */
static size_t on_string(const char *p, size_t n, size_t i, bool top, lg_result_view_t *r, bool *enter_data)
{
    size_t end = skip_string(p, n, i), v = skip_ws(p, n, end);
    if (v >= n || p[v] != ':' || end < i + 2)
        return end; /* a value, not a key */
    const char *k = p + i + 1;
    size_t klen = end - i - 2;
    v = skip_ws(p, n, v + 1);
    bool is_string = v < n && p[v] == '"';
    if (is_string && key_is(k, klen, "assignment_id"))
        return take_string(p, n, v, &r->id, &r->id_len);
    if (is_string && key_is(k, klen, "status"))
        return take_string(p, n, v, &r->status, &r->status_len);
    if (top && v < n && p[v] == '{' && key_is(k, klen, "data"))
        *enter_data = true;
    return v;
}

bool lg_scan_result(const char *p, size_t n, lg_result_view_t *r)
{
    int depth = 0;
    bool in_data = false, enter_data = false;
    *r = (lg_result_view_t){0};
    for (size_t i = 0; i < n && (r->id == NULL || r->status == NULL);) {
        char c = p[i];
        if (c == '"') {
            bool ours = depth == 1 || (depth == 2 && in_data);
            i = ours ? on_string(p, n, i, depth == 1, r, &enter_data) : skip_string(p, n, i);
            continue;
        }
        if (c == '{' || c == '[') {
            depth++;
            in_data = in_data || enter_data; /* enter_data is only ever set right before its '{' */
            enter_data = false;
        } else if (c == '}' || c == ']') {
            in_data = in_data && depth != 2;
            depth--;
        }
        i++;
    }
    return r->id != NULL;
}
