/*
 * Structured logging: one JSON object per line on stdout (or key=value text with LOG_FORMAT=text).
 * Every line carries ts (RFC 3339, ms), level, msg and worker_id; callers add typed fields. E-mail
 * addresses in the message and in string fields are masked.
 * Thread-safe: each line is formatted on the caller's stack and handed over whole. Without the writer
 * thread a line is written at once (the CLI tools, the tests); with it (bw_log_start_writer, the
 * daemon) lines wait in a bounded queue and no caller ever waits for stdout.
 * Every string value (and the message) is cut at BW_LOG_FIELD_MAX bytes, ending in BW_LOG_TRUNCATED.
 */
#ifndef BW_OBS_LOG_H
#define BW_OBS_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BW_LOG_FIELD_MAX 4096
#define BW_LOG_TRUNCATED "...(truncated)"
#define BW_LOG_EXIT_FLUSH_MS 1000 /* at exit, queued lines get this long to be written */

typedef enum { BW_LOG_DEBUG = 0, BW_LOG_INFO, BW_LOG_WARN, BW_LOG_ERROR } bw_log_level_t;

typedef enum { BW_LF_STR, BW_LF_INT, BW_LF_RAW } bw_log_kind_t;

typedef struct bw_log_field {
    const char *key;
    const char *str; /* BW_LF_STR (NULL fields are skipped) or BW_LF_RAW (pre-encoded JSON) */
    long long num;   /* BW_LF_INT */
    bw_log_kind_t kind;
} bw_log_field_t;

#define BW_LS(k, v) ((bw_log_field_t){(k), (v), 0, BW_LF_STR})
#define BW_LI(k, v) ((bw_log_field_t){(k), NULL, (long long)(v), BW_LF_INT})
#define BW_LRAW(k, v) ((bw_log_field_t){(k), (v), 0, BW_LF_RAW})

/* Sets the threshold, the format and the worker id stamped on every line (copied). Call once at start-up. */
void bw_log_setup(bw_log_level_t level, bool json, const char *worker_id);
/* From now on, lines logged by the calling thread are buffered (up to 64 KiB) until bw_log_flush
   on that thread; off flushes. The daemon's loop thread batches and flushes once per iteration. */
void bw_log_batch_thread(bool on);
/* Writes the calling thread's buffered lines. */
void bw_log_flush(void);
/* Sends log lines to fd instead of stdout (the CLI tools keep stdout for their output). */
void bw_log_set_fd(int fd);
bool bw_log_enabled(bw_log_level_t level);
/* Starts the writer thread ("bw-log"): from now on lines are queued, up to max_bytes waiting, and
   written by it (EINTR retried, partial writes continued, EAGAIN polled). A line that does not fit is
   dropped and counted (bw_log_dropped). At exit the queue gets BW_LOG_EXIT_FLUSH_MS to be written.
   0, or -1 when the thread cannot start (lines are then written directly). */
int bw_log_start_writer(size_t max_bytes);
/* Waits up to timeout_ms for the queue to be written, then stops the writer; later lines are written
   directly. -1 when the time ran out: the rest is abandoned and later lines are dropped (the process
   is exiting and its stdout does not take them). No-op without a writer. */
int bw_log_stop_writer(int timeout_ms);
/* Lines dropped so far: queue full, stdout failing, or abandoned at exit. */
uint64_t bw_log_dropped(void);
/* Bytes queued or being written now. */
size_t bw_log_queued_bytes(void);
/* Writes one line with the given fields. */
void bw_log_fields(bw_log_level_t level, const char *msg, const bw_log_field_t *fields, size_t n);
/* s with every e-mail address masked ("alice@example.com" -> "a***@example.com"), as every log line
   does it to its message and string fields; caller frees. */
char *bw_log_mask_emails(const char *s);
/* Parses "debug|info|warn|error"; returns -1 when unknown. */
int bw_log_level_parse(const char *s);

#define bw_log(level, msg, ...)                                                              \
    do {                                                                                     \
        if (bw_log_enabled(level)) {                                                         \
            const bw_log_field_t bw__f[] = {{NULL, NULL, 0, BW_LF_STR}, ##__VA_ARGS__};      \
            bw_log_fields((level), (msg), bw__f + 1, sizeof bw__f / sizeof bw__f[0] - 1);    \
        }                                                                                    \
    } while (0)

#endif
