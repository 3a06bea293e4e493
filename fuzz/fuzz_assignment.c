/*
 * Fuzz target: the assignment decoder and the result encoder on arbitrary bytes. The first bytes of
 * the input choose header values so header precedence (tenant, trace id, traceparent) is explored too.
 * Built as a libFuzzer binary with -DBW_FUZZ=ON (clang); the normal build links it with replay.c
 * and replays the committed corpus as a regression test.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned sel = size > 0 ? data[0] : 0;
    bw_headers_t h = {fuzz_header, &sel};
    bw_assignment_t a;
    bw_decode_error_t e;
    bw_decode_status_t st = bw_assignment_decode((const char *)data, size, &h, 60000, &a, &e);
    if (st != BW_DECODE_DEAD) {
        bw_result_t r = {.status = st == BW_DECODE_OK ? BW_ST_SUCCESS : BW_ST_ERROR,
                         .output = a.payload, .error_code = e.code, .error_message = e.message};
        size_t len;
        free(bw_result_encode(&a, &r, "fuzz-worker", sel & 8, &len));
        free(bw_ack_encode(&a, "accepted", NULL, false, &len));
    }
    bw_assignment_dispose(&a);
    bw_inbound_destroy(bw_inbound_cancel((const char *)data, size));
    return 0;
}
