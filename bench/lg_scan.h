/*
 * lg_scan: pulls the two fields bw-loadgen needs out of an ExecResult without parsing it into a tree,
 * so the generator is never the bottleneck on the receiving side.
 */
#ifndef BW_BENCH_LG_SCAN_H
#define BW_BENCH_LG_SCAN_H

#include <stdbool.h>
#include <stddef.h>

/* Views into the scanned message (borrowed: valid as long as the message). NULL when absent. */
typedef struct lg_result_view {
    const char *id, *status;
    size_t id_len, status_len;
} lg_result_view_t;

/*
 * Finds the top-level "assignment_id" and "status" string values of a result, bare or enveloped
 * (inside the top-level "data" object). Keys nested deeper (a job's output may well have a "status")
 * are ignored. Values are returned raw, escapes included. Returns false when there is no assignment_id.
 * Never reads past p[n - 1]; any input is safe.
 */
bool lg_scan_result(const char *p, size_t n, lg_result_view_t *r);

#endif
