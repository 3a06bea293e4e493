/*
 * Fuzz target: the project's hand-written text scanners on arbitrary bytes, each with an oracle:
 * - bw_jsonw_string: the output must be a JSON string jansson accepts, and equal to the input when the
 *   input is valid UTF-8 without NUL;
 * - bw_log_mask_emails: never longer than the input plus 3 bytes per '@', no crash;
 * - base64: decode(encode(x)) == x, and decoding arbitrary text never crashes;
 * - bw_parse_size, bw_traceparent_trace_id, the id validators: no crash, sane results.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/config.h"
#include "obs/log.h"
#include "util/base64.h"
#include "util/ids.h"
#include "util/jsonw.h"

static void check_jsonw(const char *s, size_t n)
{
    bw_buf_t b;
    bw_buf_init(&b, 16);
    bw_jsonw_string(&b, s, n);
    json_t *j = json_loadb(b.p, b.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    if (j == NULL || !json_is_string(j))
        abort();
    json_t *orig = json_stringn(s, n); /* NULL unless valid UTF-8 */
    if (orig != NULL && !json_equal(orig, j))
        abort();
    json_decref(orig);
    json_decref(j);
    bw_buf_dispose(&b);
}

static void check_mask(const char *s, size_t n)
{
    char *z = strndup(s, n);
    size_t ats = 0;
    for (const char *p = z; *p; p++)
        ats += *p == '@';
    char *m = bw_log_mask_emails(z);
    if (strlen(m) > strlen(z) + 3 * ats)
        abort();
    free(m);
    free(z);
}

static void check_base64(const char *s, size_t n)
{
    size_t out_len = 0;
    char *e = bw_base64_encode(s, n);
    unsigned char *d = bw_base64_decode(e, strlen(e), &out_len);
    if (d == NULL || out_len != n || memcmp(d, s, n) != 0)
        abort();
    free(d);
    free(e);
    free(bw_base64_decode(s, n, &out_len));
}

static void check_scalars(const char *s, size_t n)
{
    char *z = strndup(s, n), tp[33];
    int64_t v = bw_parse_size(z);
    if (v < -1)
        abort();
    if (bw_traceparent_trace_id(z, tp) && !bw_is_hex32(tp, 32))
        abort();
    (void)bw_is_valid_trace_id(z, strlen(z));
    (void)bw_is_valid_run_id(z, strlen(z));
    (void)bw_subject_valid(z);
    free(z);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    check_jsonw(s, size);
    check_mask(s, size);
    check_base64(s, size);
    check_scalars(s, size);
    return 0;
}
