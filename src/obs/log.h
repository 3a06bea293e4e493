/*
 * Structured logging: one JSON object per line on stdout (or key=value text with LOG_FORMAT=text).
 * Every line carries ts (RFC 3339, ms), level, msg and worker_id; callers add typed fields. E-mail
 * addresses in the message and in string fields are masked.
 * Thread-safe: each line is formatted on the caller's stack and written with a single write(2).
 */
#ifndef BW_OBS_LOG_H
#define BW_OBS_LOG_H

#include <stdbool.h>
#include <stddef.h>

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
