/*
 * The local dead-letter file (PROTOCOL "DeadLetter"): one JSON object per line, appended to DLQ_PATH so
 * that dead letters can be listed and replayed later. Callers on any thread hand lines to a dedicated
 * writer thread ("bw-dlq"), which owns the file: it writes each line with a single write(2), fsyncs
 * once per batch, rotates the live file into path.1 (newest) .. path.N (oldest) and prunes rotations by
 * count, age and total size. A full queue or an unwritable disk costs dead letters (counted and logged
 * at error level) but never blocks or crashes the caller.
 */
#ifndef BW_STORE_DLQ_H
#define BW_STORE_DLQ_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

typedef struct bw_dlq bw_dlq_t;

typedef struct bw_dlq_opts {
    const char *path;        /* the live file, e.g. /tmp/worker-dlq.jsonl */
    int64_t max_bytes;       /* rotate the live file before it would exceed this; <= 0: never rotate */
    int64_t total_max_bytes; /* live + rotations together; <= 0: no limit */
    int64_t max_age_days;    /* rotations older than this (mtime) are deleted; 0 = no age limit */
    int64_t max_rotations;   /* rotations kept: path.1 (newest) .. path.N (oldest) */
    size_t queue_max_bytes;  /* lines waiting for the writer thread beyond this are dropped and counted */
} bw_dlq_opts_t;

typedef struct bw_dlq_stats {
    uint64_t appended;     /* lines accepted by bw_dlq_append */
    uint64_t written;      /* lines written to the file */
    uint64_t write_errors; /* accepted lines lost to an I/O error (open, write, short write) */
    uint64_t dropped;      /* lines refused by bw_dlq_append (queue full, raw newline) */
    uint64_t rotations;    /* live file renamed to path.1 */
    uint64_t pruned;       /* rotation files deleted (beyond max_rotations, too old, over the total) */
} bw_dlq_stats_t;

/* Copies opts (and the path) and starts the writer thread "bw-dlq", which opens the file and prunes old
   rotations before its first line. Never fails because the path is unwritable: that is logged at error
   level and counted on each write, and the file is reopened for every later line until it works.
   Aborts like an allocation failure when no thread can be created. A path that is not a regular file
   (/dev/null, a FIFO) is written as is: no rotation, no fsync, no pruning; a FIFO without a reader
   blocks the writer thread, and so bw_dlq_flush and bw_dlq_destroy, until one appears.
   Caller frees with bw_dlq_destroy. */
bw_dlq_t *bw_dlq_create(const bw_dlq_opts_t *o);

/* Any thread. Queues a copy of line (len bytes, no trailing newline; the writer adds it) and returns 0
   without waiting for I/O. Returns -1, counting the line as dropped and logging at error level (at most
   one log line per second), when the line contains a raw newline or when the lines already waiting would
   exceed queue_max_bytes. A line larger than queue_max_bytes is still accepted into an empty queue. */
int bw_dlq_append(bw_dlq_t *d, const char *line, size_t len);

/* Any thread. Waits until every line appended before the call has been written and fsynced (or has
   failed), and until the start-up pruning is done. */
void bw_dlq_flush(bw_dlq_t *d);

/* Any thread. Copies a consistent snapshot of the counters into *s. */
void bw_dlq_get_stats(bw_dlq_t *d, bw_dlq_stats_t *s);

/* Writes every queued line, stops and joins the writer thread, closes the file and frees d. No other
   call on d may be running or follow. NULL is a no-op. */
void bw_dlq_destroy(bw_dlq_t *d);

/* Called for each entry by bw_dlq_scan. entry is borrowed for the call (incref to keep it); file is the
   file it came from and line_no its 1-based line number there. Return non-zero to stop the scan. */
typedef int (*bw_dlq_visit_fn)(void *ud, json_t *entry, const char *file, long line_no);

/* For `beamline-worker dlq list|replay`; any thread, no writer thread involved (a running writer may
   rotate underneath, so use it on a quiescent directory). Visits every entry oldest first:
   path.<max_rotations> .. path.1, then path; missing files are skipped. Lines that are not a JSON object
   are skipped and counted in *bad (may be NULL). Returns the number of entries visited (including the
   one whose callback stopped the scan), or -1 when neither the file nor any rotation exists. */
long bw_dlq_scan(const char *path, int64_t max_rotations, bw_dlq_visit_fn fn, void *ud, long *bad);

#endif
