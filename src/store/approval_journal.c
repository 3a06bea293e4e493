/*
 * The approval journal: JSON lines appended by the thread "bw-approvals", completions delivered to the
 * loop through a uv_async_t in append order.
 *
 * Invariants:
 *  - The loop thread serialises records into operations (an append: one line; a compaction: every line
 *    of the new file) and queues them under j->mu; the thread swaps the whole queue out and handles it
 *    in order: each run of appends is one write(2) and at most one fdatasync(2), a compaction replaces
 *    the file between two runs. Finished operations go to j->done, again in order, and the loop runs
 *    their callbacks.
 *  - Operations refused at the call (a line too long, not an object) are queued too, already failed, so
 *    that callbacks never run inside append and always in append order.
 *  - j->size is the size of the whole lines in the file. Bytes beyond it (a partial write, a torn tail
 *    left by a power loss) are cut off before anything else is written: a new line never continues a
 *    torn one. After open, only the thread touches j->fd, j->size, j->lines and j->cut_needed (replay
 *    sets j->lines before the first append; the queue's mutex orders the two).
 *  - Every operation ends exactly once: written (err 0) or failed (an errno), counted in the stats.
 */
#include "store/approval_journal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "obs/log.h"
#include "util/list.h"
#include "util/xalloc.h"

#define BW_AJOURNAL_TMP BW_AJOURNAL_FILE ".tmp"
#define READ_CHUNK (64 * 1024)
#define KEEP_BUF_MAX (1024 * 1024) /* a larger assembly buffer is freed after its batch */

typedef enum { OP_APPEND, OP_COMPACT } op_kind_t;

typedef struct op {
    bw_list_t link;
    op_kind_t kind;
    bool sync;
    int err;         /* set at the call when refused; else by the thread */
    uint64_t nlines; /* lines in data */
    size_t len;
    char *data; /* the line(s), each ending in '\n' */
    bw_ajournal_cb cb;
    void *ud;
} op_t;

struct bw_ajournal {
    uv_loop_t *loop;
    char *dir, *path, *tmp_path;
    int fd, lock_fd;
    uv_async_t *async; /* allocated apart: it outlives the journal until its close callback */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    /* guarded by mu */
    bw_list_t queue, done;
    bool stopping;
    bw_ajournal_stats_t st;
    /* the thread's (see the invariants) */
    off_t size;
    uint64_t lines;
    bool cut_needed;
    char *buf;
    size_t buf_cap;
    bw_ajournal_stats_t delta; /* appends, syncs, errors, compactions since the last publish */
};

/* ---- errors and files ------------------------------------------------------------------------------ */

static void log_io_error(const char *msg, const char *op, const char *file, int err)
{
    char buf[128];
    bw_log(BW_LOG_ERROR, msg, BW_LS("op", op), BW_LS("path", file),
           BW_LS("error", strerror_r(err, buf, sizeof buf)), BW_LI("errno", err));
}

/* "APPROVAL_DIR <dir>: cannot <what> <path>: <strerror>" into err. */
static void set_err(char *err, size_t errlen, const char *dir, const char *what, const char *path, int e)
{
    char buf[128];
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "APPROVAL_DIR %s: cannot %s %s: %s", dir, what, path,
                 strerror_r(e, buf, sizeof buf));
}

/* 0 or an errno. */
static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    int rc = fsync(fd) == 0 ? 0 : errno;
    close(fd);
    return rc;
}

/* mkdir -p with mode 0700 for every directory it creates. 0 or an errno; *failed names the path. */
static int mkdir_p(const char *dir, char **failed)
{
    char *p = bw_strdup(dir);
    int rc = 0;
    if (p[0] == '\0') {
        *failed = p;
        return ENOENT;
    }
    for (char *s = p + 1;; s++) {
        if (*s != '/' && *s != '\0')
            continue;
        char c = *s;
        *s = '\0';
        if (mkdir(p, 0700) != 0 && errno != EEXIST) {
            rc = errno;
            *failed = p;
            return rc;
        }
        *s = c;
        if (c == '\0')
            break;
    }
    struct stat st;
    if (stat(p, &st) != 0)
        rc = errno;
    else if (!S_ISDIR(st.st_mode))
        rc = ENOTDIR;
    if (rc != 0) {
        *failed = p;
        return rc;
    }
    free(p);
    return 0;
}

/* Writes all of data, continuing after partial writes. 0 or an errno; *written gets the bytes written. */
static int write_all(int fd, const char *data, size_t len, size_t *written)
{
    *written = 0;
    while (*written < len) {
        ssize_t n = write(fd, data + *written, len - *written);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno;
        if (n == 0)
            return EIO;
        *written += (size_t)n;
    }
    return 0;
}

/* ---- opening --------------------------------------------------------------------------------------- */

/* Takes the exclusive lock and writes our pid into the lock file. -1 with err set when it cannot. */
static int take_lock(bw_ajournal_t *j, char *err, size_t errlen, bool *created)
{
    char *lock_path = bw_asprintf("%s/%s", j->dir, BW_AJOURNAL_LOCK), pid[32];
    int rc = -1;
    j->lock_fd = open(lock_path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    *created = j->lock_fd >= 0;
    if (j->lock_fd < 0 && errno == EEXIST)
        j->lock_fd = open(lock_path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (j->lock_fd < 0) {
        set_err(err, errlen, j->dir, "open", lock_path, errno);
        goto out;
    }
    /* flock belongs to the open file description: a second open in this very process conflicts too */
    if (flock(j->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        ssize_t n = e == EWOULDBLOCK ? pread(j->lock_fd, pid, sizeof pid - 1, 0) : -1;
        long holder = n > 0 ? (pid[n] = '\0', strtol(pid, NULL, 10)) : 0;
        if (e == EWOULDBLOCK && holder > 0)
            snprintf(err, errlen, "APPROVAL_DIR %s is in use by another worker (pid %ld)", j->dir, holder);
        else if (e == EWOULDBLOCK)
            snprintf(err, errlen, "APPROVAL_DIR %s is in use by another worker", j->dir);
        else
            set_err(err, errlen, j->dir, "lock", lock_path, e);
        goto out;
    }
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(j->lock_fd, 0) != 0 || pwrite(j->lock_fd, pid, (size_t)n, 0) != n) {
        set_err(err, errlen, j->dir, "write", lock_path, errno != 0 ? errno : EIO);
        goto out;
    }
    rc = 0;
out:
    free(lock_path);
    return rc;
}

/* Size of the file's whole lines: the offset after its last '\n' (0 when it has none). -1 on error. */
static off_t whole_lines_size(const char *path, off_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    char buf[4096];
    off_t end = size, found = -1;
    if (fd < 0)
        return -1;
    while (end > 0 && found < 0) {
        size_t n = end < (off_t)sizeof buf ? (size_t)end : sizeof buf;
        if (pread(fd, buf, n, end - (off_t)n) != (ssize_t)n)
            break;
        char *nl = memrchr(buf, '\n', n);
        if (nl != NULL)
            found = end - (off_t)n + (nl - buf) + 1;
        end -= (off_t)n;
    }
    close(fd);
    return found >= 0 ? found : end == 0 ? 0 : -1;
}

/* Opens (creating, 0600) the journal file for appending and finds where its whole lines end. */
static int open_file(bw_ajournal_t *j, char *err, size_t errlen, bool *created)
{
    struct stat st;
    int flags = O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW;
    j->fd = open(j->path, flags | O_CREAT | O_EXCL, 0600);
    *created = j->fd >= 0;
    if (j->fd < 0 && errno == EEXIST)
        j->fd = open(j->path, flags);
    if (j->fd < 0 || fstat(j->fd, &st) != 0) {
        set_err(err, errlen, j->dir, "open", j->path, errno);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        set_err(err, errlen, j->dir, "use", j->path, EINVAL);
        return -1;
    }
    j->size = whole_lines_size(j->path, st.st_size);
    if (j->size < 0) {
        set_err(err, errlen, j->dir, "read", j->path, errno != 0 ? errno : EIO);
        return -1;
    }
    j->cut_needed = j->size != st.st_size; /* a torn tail: replay reports it, the first write cuts it */
    j->st.bytes = (uint64_t)j->size;
    return 0;
}

/* ---- the thread ------------------------------------------------------------------------------------ */

/* Cuts the file back to its whole lines when it holds more. 0 or an errno (then nothing may be written). */
static int cut_back(bw_ajournal_t *j)
{
    if (!j->cut_needed)
        return 0;
    if (ftruncate(j->fd, j->size) != 0) {
        int e = errno;
        log_io_error("approval journal not cut back to its last whole line", "ftruncate", j->path, e);
        return e;
    }
    j->cut_needed = false;
    return 0;
}

/* Copies the lines of the run's live operations into j->buf; returns their length, *sync whether any
   asked for durability. */
static size_t assemble(bw_ajournal_t *j, bw_list_t *run, bool *sync)
{
    size_t total = 0;
    *sync = false;
    for (bw_list_t *l = run->next; l != run; l = l->next) {
        op_t *op = bw_list_entry(l, op_t, link);
        if (op->err != 0)
            continue;
        if (total + op->len > j->buf_cap) {
            j->buf_cap = (total + op->len) * 2;
            j->buf = bw_realloc(j->buf, j->buf_cap);
        }
        memcpy(j->buf + total, op->data, op->len);
        total += op->len;
        *sync |= op->sync;
    }
    return total;
}

/* Bytes of the run's lines that were written whole, given that written bytes made it. */
static size_t whole_prefix(bw_list_t *run, size_t written)
{
    size_t end = 0;
    for (bw_list_t *l = run->next; l != run; l = l->next) {
        op_t *op = bw_list_entry(l, op_t, link);
        if (op->err != 0)
            continue;
        if (end + op->len > written)
            break;
        end += op->len;
    }
    return end;
}

/* Marks the run's operations: the lines within good bytes succeeded, the others failed with err. */
static void settle(bw_ajournal_t *j, bw_list_t *run, size_t good, int err)
{
    size_t end = 0;
    for (bw_list_t *l = run->next; l != run; l = l->next) {
        op_t *op = bw_list_entry(l, op_t, link);
        if (op->err == 0 && end + op->len <= good) {
            end += op->len;
            j->delta.appends++;
            j->lines++;
        } else {
            op->err = op->err != 0 ? op->err : err;
            j->delta.errors++;
        }
    }
}

/* One group commit: one write of every line of the run, one fdatasync when any asked for it. A line
   that did not make it whole is cut off again, and it and the lines after it fail. */
static void commit(bw_ajournal_t *j, bw_list_t *run)
{
    bool sync;
    size_t total = assemble(j, run, &sync), written = 0, good = 0;
    off_t base = j->size;
    int err = total > 0 ? cut_back(j) : 0;
    if (total > 0 && err == 0) {
        err = write_all(j->fd, j->buf, total, &written);
        good = err == 0 ? total : whole_prefix(run, written);
        if (err != 0)
            log_io_error("approval journal append failed", "write", j->path, err);
        j->size = base + (off_t)good;
        if (written > good) {
            j->cut_needed = true;
            cut_back(j); /* when it fails, the next write tries again first */
        }
    }
    if (good > 0 && sync) {
        if (fdatasync(j->fd) == 0) {
            j->delta.syncs++;
        } else {
            /* what reached the disk is unknown: the whole run fails and its lines are cut off */
            err = errno;
            log_io_error("approval journal not synced", "fdatasync", j->path, err);
            j->size = base;
            j->cut_needed = true;
            cut_back(j);
            good = 0;
        }
    }
    settle(j, run, good, err != 0 ? err : EIO);
    if (j->buf_cap > KEEP_BUF_MAX) {
        free(j->buf);
        j->buf = NULL;
        j->buf_cap = 0;
    }
}

/* Writes the new file beside the journal, makes it durable and renames it over the journal. The old
   file stays in use when any step before the rename fails. */
static void compact(bw_ajournal_t *j, op_t *op)
{
    size_t written;
    const char *step = "open";
    int err = 0,
        fd = open(j->tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0 || (step = "write", err = write_all(fd, op->data, op->len, &written)) != 0 ||
        (step = "fdatasync", fdatasync(fd)) != 0 || (step = "rename", rename(j->tmp_path, j->path)) != 0) {
        err = err != 0 ? err : errno;
        log_io_error("approval journal not compacted", step, j->tmp_path, err);
        if (fd >= 0)
            close(fd);
        unlink(j->tmp_path);
        op->err = err;
        j->delta.errors++;
        return;
    }
    /* the path names the new file now: appends must go there, whatever the directory's fsync says */
    close(j->fd);
    j->fd = fd;
    j->size = (off_t)op->len;
    j->lines = op->nlines;
    j->cut_needed = false;
    j->delta.compactions++;
    if ((err = fsync_dir(j->dir)) != 0) {
        log_io_error("approval journal directory not synced after compaction", "fsync", j->dir, err);
        op->err = err;
    }
}

/* Moves every node of from to the tail of to, in O(1). */
static void move_all(bw_list_t *to, bw_list_t *from)
{
    if (bw_list_empty(from))
        return;
    from->next->prev = to->prev;
    to->prev->next = from->next;
    from->prev->next = to;
    to->prev = from->prev;
    bw_list_init(from);
}

/* Waits for operations and moves all of them into batch. false when stopping and nothing is left. */
static bool take_batch(bw_ajournal_t *j, bw_list_t *batch)
{
    bw_list_init(batch);
    pthread_mutex_lock(&j->mu);
    while (bw_list_empty(&j->queue) && !j->stopping)
        pthread_cond_wait(&j->wake, &j->mu);
    move_all(batch, &j->queue);
    pthread_mutex_unlock(&j->mu);
    return !bw_list_empty(batch);
}

/* Hands the finished operations to the loop, in order, with the counters. */
static void publish(bw_ajournal_t *j, bw_list_t *finished)
{
    pthread_mutex_lock(&j->mu);
    move_all(&j->done, finished);
    j->st.appends += j->delta.appends;
    j->st.syncs += j->delta.syncs;
    j->st.errors += j->delta.errors;
    j->st.compactions += j->delta.compactions;
    j->st.bytes = (uint64_t)j->size;
    j->st.lines = j->lines;
    memset(&j->delta, 0, sizeof j->delta);
    pthread_mutex_unlock(&j->mu);
    uv_async_send(j->async);
}

/* Handles a batch in queue order: runs of appends are group commits, a compaction stands alone. */
static void handle_batch(bw_ajournal_t *j, bw_list_t *batch, bw_list_t *finished)
{
    bw_list_t run, *l;
    while (!bw_list_empty(batch)) {
        bw_list_init(&run);
        while (!bw_list_empty(batch) && bw_list_entry(batch->next, op_t, link)->kind == OP_APPEND)
            bw_list_push(&run, bw_list_shift(batch));
        commit(j, &run);
        while ((l = bw_list_shift(&run)) != NULL)
            bw_list_push(finished, l);
        if ((l = bw_list_shift(batch)) == NULL)
            break;
        op_t *op = bw_list_entry(l, op_t, link);
        if (op->err == 0)
            compact(j, op);
        else
            j->delta.errors++;
        bw_list_push(finished, l);
    }
}

static void *thread_main(void *arg)
{
    bw_ajournal_t *j = arg;
    pthread_setname_np(pthread_self(), "bw-approvals");
    bw_list_t batch, finished;
    bw_list_init(&finished);
    while (take_batch(j, &batch)) {
        handle_batch(j, &batch, &finished);
        publish(j, &finished);
    }
    return NULL;
}

/* ---- completions (loop thread) --------------------------------------------------------------------- */

static void run_done(bw_ajournal_t *j)
{
    bw_list_t done, *l;
    bw_list_init(&done);
    pthread_mutex_lock(&j->mu);
    move_all(&done, &j->done);
    pthread_mutex_unlock(&j->mu);
    while ((l = bw_list_shift(&done)) != NULL) {
        op_t *op = bw_list_entry(l, op_t, link);
        if (op->cb != NULL)
            op->cb(op->ud, op->err);
        free(op->data);
        free(op);
    }
}

static void on_async(uv_async_t *a)
{
    run_done(a->data);
}

static void free_handle(uv_handle_t *h)
{
    free(h);
}

/* ---- public API ------------------------------------------------------------------------------------ */

static void destroy(bw_ajournal_t *j)
{
    if (j->fd >= 0)
        close(j->fd);
    if (j->lock_fd >= 0)
        close(j->lock_fd); /* releases the flock */
    pthread_cond_destroy(&j->wake);
    pthread_mutex_destroy(&j->mu);
    free(j->buf);
    free(j->tmp_path);
    free(j->path);
    free(j->dir);
    free(j);
}

/* Starts the thread with every signal blocked: a SIGXFSZ raised by a write past RLIMIT_FSIZE stays
   pending instead of killing the process, and the write fails with EFBIG. */
static int start_thread(bw_ajournal_t *j)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&j->thread, NULL, thread_main, j);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

bw_ajournal_t *bw_ajournal_open(uv_loop_t *loop, const char *dir, char *err, size_t errlen)
{
    bw_ajournal_t *j = bw_calloc(1, sizeof *j);
    char *failed = NULL;
    bool lock_created = false, file_created = false;
    int e;
    j->loop = loop;
    j->dir = bw_strdup(dir);
    j->path = bw_asprintf("%s/%s", dir, BW_AJOURNAL_FILE);
    j->tmp_path = bw_asprintf("%s/%s", dir, BW_AJOURNAL_TMP);
    j->fd = j->lock_fd = -1;
    bw_list_init(&j->queue);
    bw_list_init(&j->done);
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->wake, NULL);
    if ((e = mkdir_p(dir, &failed)) != 0) {
        set_err(err, errlen, dir, "create directory", failed, e);
        free(failed);
        goto fail;
    }
    if (take_lock(j, err, errlen, &lock_created) != 0 || open_file(j, err, errlen, &file_created) != 0)
        goto fail;
    unlink(j->tmp_path); /* left by a compaction that did not finish */
    if ((lock_created || file_created) && (e = fsync_dir(dir)) != 0) {
        set_err(err, errlen, dir, "sync directory", dir, e);
        goto fail;
    }
    j->async = bw_calloc(1, sizeof *j->async);
    uv_async_init(loop, j->async, on_async);
    j->async->data = j;
    if ((e = start_thread(j)) != 0) {
        set_err(err, errlen, dir, "start the journal thread for", j->path, e);
        uv_close((uv_handle_t *)j->async, free_handle);
        goto fail;
    }
    return j;
fail:
    destroy(j);
    return NULL;
}

/* ---- replay ---------------------------------------------------------------------------------------- */

typedef struct reader {
    bw_ajournal_t *j;
    void (*cb)(void *ud, json_t *record);
    void *ud;
    char *line;
    size_t len, cap;
    bool too_long;
    uint64_t line_no, records, skipped, whole;
} reader_t;

static void skip_line(reader_t *r, const char *why)
{
    r->skipped++;
    bw_log(BW_LOG_WARN, "approval journal line skipped", BW_LS("path", r->j->path), BW_LI("line", r->line_no),
           BW_LS("reason", why));
}

/* One line is complete (terminated: it ended in '\n', else it is the file's unterminated tail). */
static void end_line(reader_t *r, bool terminated)
{
    r->line_no++;
    r->whole += terminated;
    if (r->too_long) {
        skip_line(r, "longer than BW_AJOURNAL_MAX_LINE");
    } else if (!terminated) {
        skip_line(r, "torn last line (no newline at the end)");
    } else {
        json_t *rec = json_loadb(r->line, r->len, 0, NULL);
        if (json_is_object(rec)) {
            r->records++;
            r->cb(r->ud, rec);
        } else {
            skip_line(r, "not a JSON object");
        }
        json_decref(rec);
    }
    r->len = 0;
    r->too_long = false;
}

/* Adds n bytes to the current line; a line past the limit is only marked, never held whole. */
static void add_bytes(reader_t *r, const char *p, size_t n)
{
    if (r->too_long)
        return;
    if (r->len + n > BW_AJOURNAL_MAX_LINE) {
        r->too_long = true;
        r->len = 0;
        return;
    }
    if (r->len + n > r->cap) {
        r->cap = r->len + n < 4096 ? 4096 : (r->len + n) * 2;
        r->cap = r->cap > BW_AJOURNAL_MAX_LINE ? BW_AJOURNAL_MAX_LINE : r->cap;
        r->line = bw_realloc(r->line, r->cap);
    }
    memcpy(r->line + r->len, p, n);
    r->len += n;
}

/* Splits one chunk of the file into lines. */
static void feed(reader_t *r, const char *p, size_t n)
{
    const char *end = p + n, *nl;
    while (p < end && (nl = memchr(p, '\n', (size_t)(end - p))) != NULL) {
        add_bytes(r, p, (size_t)(nl - p));
        end_line(r, true);
        p = nl + 1;
    }
    add_bytes(r, p, (size_t)(end - p));
}

size_t bw_ajournal_replay(bw_ajournal_t *j, void (*cb)(void *ud, json_t *record), void *ud)
{
    reader_t r = {.j = j, .cb = cb, .ud = ud};
    char *chunk = bw_malloc(READ_CHUNK);
    int fd = open(j->path, O_RDONLY | O_CLOEXEC);
    ssize_t n = 0;
    if (fd < 0) {
        log_io_error("approval journal not readable", "open", j->path, errno);
        goto out;
    }
    while ((n = read(fd, chunk, READ_CHUNK)) > 0 || (n < 0 && errno == EINTR))
        if (n > 0)
            feed(&r, chunk, (size_t)n);
    if (n < 0)
        log_io_error("approval journal not read to its end", "read", j->path, errno);
    else if (r.len > 0 || r.too_long)
        end_line(&r, false);
    close(fd);
out:
    pthread_mutex_lock(&j->mu);
    j->lines = r.whole;
    j->st.lines = r.whole;
    j->st.skipped += r.skipped;
    pthread_mutex_unlock(&j->mu);
    free(r.line);
    free(chunk);
    return (size_t)r.records;
}

/* ---- appends and compaction ------------------------------------------------------------------------ */

/* Adds the record as one line with its '\n' to *data (*len bytes used of *cap); 0, E2BIG (too long) or EINVAL
   (not an object, or not serialisable). The size is known before anything is allocated. */
static int serialise(json_t *record, char **data, size_t *len, size_t *cap)
{
    if (!json_is_object(record))
        return EINVAL;
    size_t n = json_dumpb(record, NULL, 0, JSON_COMPACT);
    if (n == 0)
        return EINVAL;
    if (n > BW_AJOURNAL_MAX_LINE)
        return E2BIG;
    if (*len + n + 1 > *cap) {
        *cap = *len == 0 ? n + 1 : (*len + n + 1) * 2; /* exact for one line, doubling for many */
        *data = bw_realloc(*data, *cap);
    }
    if (json_dumpb(record, *data + *len, n, JSON_COMPACT) != n)
        return EINVAL;
    (*data)[*len + n] = '\n';
    *len += n + 1;
    return 0;
}

static void enqueue(bw_ajournal_t *j, op_t *op)
{
    pthread_mutex_lock(&j->mu);
    bw_list_push(&j->queue, &op->link);
    pthread_cond_signal(&j->wake);
    pthread_mutex_unlock(&j->mu);
}

static op_t *new_op(op_kind_t kind, bool sync, bw_ajournal_cb cb, void *ud)
{
    op_t *op = bw_calloc(1, sizeof *op);
    op->kind = kind;
    op->sync = sync;
    op->cb = cb;
    op->ud = ud;
    return op;
}

void bw_ajournal_append(bw_ajournal_t *j, json_t *record, bool sync, bw_ajournal_cb cb, void *ud)
{
    op_t *op = new_op(OP_APPEND, sync, cb, ud);
    size_t cap = 0;
    op->err = serialise(record, &op->data, &op->len, &cap);
    op->nlines = 1;
    enqueue(j, op);
}

void bw_ajournal_append_line(bw_ajournal_t *j, const char *line, size_t len, bool sync, bw_ajournal_cb cb,
                             void *ud)
{
    op_t *op = new_op(OP_APPEND, sync, cb, ud);
    if (len == 0 || line[len - 1] != '\n' || memchr(line, '\n', len - 1) != NULL)
        op->err = EINVAL;
    else if (len - 1 > BW_AJOURNAL_MAX_LINE)
        op->err = E2BIG;
    else {
        op->data = bw_malloc(len);
        memcpy(op->data, line, len);
        op->len = len;
    }
    op->nlines = 1;
    enqueue(j, op);
}

void bw_ajournal_compact(bw_ajournal_t *j, json_t *records, bw_ajournal_cb cb, void *ud)
{
    op_t *op = new_op(OP_COMPACT, true, cb, ud);
    size_t i, cap = 0;
    json_t *rec;
    if (!json_is_array(records))
        op->err = EINVAL;
    json_array_foreach(records, i, rec)
    {
        if (op->err == 0)
            op->err = serialise(rec, &op->data, &op->len, &cap);
    }
    op->nlines = json_array_size(records);
    enqueue(j, op);
}

void bw_ajournal_compact_lines(bw_ajournal_t *j, char *lines, size_t len, size_t nlines, bw_ajournal_cb cb,
                               void *ud)
{
    op_t *op = new_op(OP_COMPACT, true, cb, ud);
    op->data = lines;
    op->len = len;
    op->nlines = nlines;
    enqueue(j, op);
}

void bw_ajournal_get_stats(bw_ajournal_t *j, bw_ajournal_stats_t *st)
{
    pthread_mutex_lock(&j->mu);
    *st = j->st;
    pthread_mutex_unlock(&j->mu);
}

void bw_ajournal_close(bw_ajournal_t *j)
{
    if (j == NULL)
        return;
    pthread_mutex_lock(&j->mu);
    j->stopping = true;
    pthread_cond_signal(&j->wake);
    pthread_mutex_unlock(&j->mu);
    pthread_join(j->thread, NULL); /* the thread handles everything queued before it exits */
    run_done(j);
    j->async->data = NULL;
    uv_close((uv_handle_t *)j->async, free_handle);
    destroy(j);
}
