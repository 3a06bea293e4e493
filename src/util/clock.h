/* Clocks: monotonic milliseconds for durations and deadlines, wall milliseconds for timestamps. */
#ifndef BW_UTIL_CLOCK_H
#define BW_UTIL_CLOCK_H

#include <stddef.h>
#include <stdint.h>

uint64_t bw_mono_ms(void);
uint64_t bw_mono_ns(void);
/* CPU time of the calling thread, in ns. */
uint64_t bw_thread_cpu_ns(void);
int64_t bw_wall_ms(void);
/* Formats a wall-clock time in ms as RFC 3339 UTC with milliseconds ("2026-01-05T08:00:00.412Z").
   buf must hold at least 32 bytes; returns buf. */
char *bw_rfc3339_ms(int64_t wall_ms, char *buf, size_t len);

#endif
