/*
 * Fuzz target: the assignment decoder and the result encoder on arbitrary bytes. The first bytes of
 * the input choose header values so header precedence (tenant, trace id, traceparent) is explored too.
 * Differential: wherever jansson read an assignment id, the fallback scanner (core/idscan.c, used for JSON
 * jansson refuses) must read the same one from the same text.
 * Built as a libFuzzer binary with -DBW_FUZZ=ON (clang); the normal build links it with replay.c
 * and replays the committed corpus as a regression test.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/idscan.h"
#include "core/protocol.h"
#include "core/worker.h"

static const char *fuzz_header(void *ud, const char *name)
{
    unsigned sel = *(const unsigned *)ud;
    if (strcmp(name, "tenant_id") == 0 && (sel & 1))
        return "fuzz-tenant";
    if (strcmp(name, "trace_id") == 0 && (sel & 2))
        return "0af7651916cd43dd8448eb211c80319c";
    if (strcmp(name, "traceparent") == 0 && (sel & 4))
        return "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    return NULL;
}

static void check_scanner_agrees(const uint8_t *data, size_t size, const bw_assignment_t *a)
{
    bw_idscan_t ids;
    /* jansson did not read it, or read text that is not JSON: it skips raw NUL bytes, which the scanner
       (like RFC 8259) refuses, and a refusal there means a dead letter, the safe side */
    if (a->root == NULL || a->assignment_id == NULL || memchr(data, 0, size) != NULL)
        return;
    if (!bw_idscan((const char *)data, size, &ids) || ids.assignment_id.kind != BW_IDSCAN_STRING ||
        strcmp(ids.assignment_id.s, a->assignment_id) != 0 || ids.enveloped != a->enveloped)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned sel = size > 0 ? data[0] : 0;
    bw_headers_t h = {fuzz_header, &sel};
    bw_assignment_t a;
    bw_decode_error_t e;
    bw_decode_status_t st = bw_assignment_decode((const char *)data, size, &h, 60000, &a, &e);
    check_scanner_agrees(data, size, &a);
    if (st != BW_DECODE_DEAD) {
        bw_result_t r = {.status = st == BW_DECODE_OK ? BW_ST_SUCCESS : BW_ST_ERROR,
                         .output = a.payload, .error_code = e.code, .error_message = e.message};
        size_t len;
        free(bw_result_encode(&a, &r, "fuzz-worker", sel & 8, &len));
        free(bw_ack_encode(&a, "accepted", NULL, false, &len));
    }
    bw_assignment_dispose(&a);
    bw_inbound_destroy(bw_inbound_cancel((const char *)data, size, &h));
    return 0;
}
