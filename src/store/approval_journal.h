/*
 * The journal of pending human approvals: one append-only file of JSON lines under APPROVAL_DIR, written
 * by its own thread ("bw-approvals") so that the loop never waits for the disk. Appends are group
 * committed: every line queued while the thread was writing goes out in one write(2) and, when any of
 * them asked for it, one fdatasync(2); each append's callback runs on the loop once its line (and every
 * line before it) is written, or durable when it asked for durability. A line that did not make it
 * whole (ENOSPC, EFBIG, EIO) is cut off again (ftruncate to the last good size), so the file never holds
 * a torn line the worker wrote itself; a torn last line left by a power loss is skipped at replay with a
 * warning, never fatal.
 *
 * The file's contents are the caller's records (JSON objects); the journal knows nothing of approvals.
 * Compaction is the caller's decision too: it hands over the live records and the journal replaces the
 * file atomically (new file, fsync, rename, fsync of the directory) between two appends, so every append
 * queued before the compaction is reflected in the records it was given, and every append after it lands
 * in the new file.
 *
 * One worker per directory: the journal takes an exclusive flock on APPROVAL_DIR/approvals.lock, and a
 * second worker on the same directory fails to open it, naming the directory.
 */
#ifndef BW_STORE_APPROVAL_JOURNAL_H
#define BW_STORE_APPROVAL_JOURNAL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define BW_AJOURNAL_FILE "approvals.jsonl"
#define BW_AJOURNAL_LOCK "approvals.lock"
#define BW_AJOURNAL_MAX_LINE (8 * 1024 * 1024) /* longer lines are refused by append, skipped by replay */

typedef struct bw_ajournal bw_ajournal_t;

/* Loop thread, once the line is written (err 0) or failed (err an errno value: ENOSPC, EFBIG, EIO, ...;
   E2BIG for a line over BW_AJOURNAL_MAX_LINE; EINVAL for a record that is not a JSON object). Callbacks
   run in the order of the appends and compactions they belong to, never inside append or compact. A
   failed line is not in the file (it was cut off again); later appends may succeed. */
typedef void (*bw_ajournal_cb)(void *ud, int err);

typedef struct bw_ajournal_stats {
    uint64_t appends;     /* lines written */
    uint64_t syncs;       /* fdatasync calls (group commits) */
    uint64_t errors;      /* appends that failed */
    uint64_t compactions; /* files replaced */
    uint64_t bytes;       /* size of the current file */
    uint64_t lines;       /* whole lines in the current file (counted by replay, then kept up to date) */
    uint64_t skipped;     /* lines skipped at replay (torn or not a JSON object) */
} bw_ajournal_stats_t;

/* Loop thread. Creates dir (0700, parents too) when missing, takes the lock, opens (creates, 0600) the
   journal file and starts the thread. NULL with a one-line message naming the directory in err when it
   cannot (not writable, locked by another process: "APPROVAL_DIR /x is in use by another worker (pid N)"
   when the lock holder's pid is known); other messages name the path and the error:
   "APPROVAL_DIR /x: cannot open /x/approvals.jsonl: Permission denied". The lock file holds our pid.
   The directory is fsync'd when the file or the lock file was created. A leftover approvals.jsonl.tmp
   (a compaction cut short) is deleted. The journal's uv_async_t keeps the loop alive until close. */
bw_ajournal_t *bw_ajournal_open(uv_loop_t *loop, const char *dir, char *err, size_t errlen);

/* Loop thread, before the first append: calls cb(ud, record) for every line of the file that is a JSON
   object, in file order (record borrowed for the call). Lines that are not (torn, corrupt, too long) are
   skipped and counted, with one warning log each naming the line number; a line is never held in memory
   beyond BW_AJOURNAL_MAX_LINE. An unterminated last line (torn) is skipped even when it parses, and is cut
   off the file before the first later write, so that no new line continues it. Returns the number of
   records given to cb. */
size_t bw_ajournal_replay(bw_ajournal_t *j, void (*cb)(void *ud, json_t *record), void *ud);

/* Loop thread. Queues one record (serialised compact, one line; the object is only read during the call).
   sync: the callback waits for fdatasync. cb may be NULL. */
void bw_ajournal_append(bw_ajournal_t *j, json_t *record, bool sync, bw_ajournal_cb cb, void *ud);

/* The same with the record already serialised: line is one JSON object and its '\n' (len bytes, copied);
   EINVAL when it is not one line. */
void bw_ajournal_append_line(bw_ajournal_t *j, const char *line, size_t len, bool sync, bw_ajournal_cb cb,
                             void *ud);

/* Loop thread. Replaces the file by one holding exactly records (a JSON array of objects, read during
   the call), durably, after every append queued before. cb (may be NULL) says how it went; on failure
   the old file stays in use and nothing is lost (the tmp file is removed). The one failure after the
   rename, the directory's fsync, is reported too, but the new file is then in use. E2BIG/EINVAL when a
   record is too long or not an object (nothing done). */
void bw_ajournal_compact(bw_ajournal_t *j, json_t *records, bw_ajournal_cb cb, void *ud);

/* The same with the records already serialised: lines holds nlines whole lines ("{...}\n" each, as
   bw_ajournal_append writes them) and is taken (freed by the journal). For a caller that keeps its
   records' lines, so that compacting costs the loop a copy instead of serialising every record again. */
void bw_ajournal_compact_lines(bw_ajournal_t *j, char *lines, size_t len, size_t nlines, bw_ajournal_cb cb,
                               void *ud);

/* Any thread. */
void bw_ajournal_get_stats(bw_ajournal_t *j, bw_ajournal_stats_t *st);

/* Loop thread, not from inside one of the journal's callbacks. Writes what is still queued, runs the
   callbacks not yet run (on the calling thread, in order, before it returns), stops the thread, releases
   the lock and frees. The async handle is closed with uv_close: the loop must run once more to free it
   (as for any handle). NULL is a no-op. */
void bw_ajournal_close(bw_ajournal_t *j);

#endif
