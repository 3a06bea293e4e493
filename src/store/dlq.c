/*
 * The dead-letter file. Callers queue copies of their lines under d->mu; the writer thread "bw-dlq"
 * swaps the whole queue out, writes each line + '\n' with one write(2) on an
 * O_APPEND descriptor, fsyncs once per batch and only then reports the batch as finished to flushers.
 *
 * Invariants:
 *  - Only the writer thread touches the descriptor and the files (open, rotate, prune); callers touch
 *    only the queue and the counters, both guarded by d->mu. The writer counts into d->delta (its own)
 *    and merges it into d->st under the lock once per batch.
 *  - Every accepted line ends as exactly one of written or write_errors; every refused one as dropped.
 *  - No torn line stays in a regular file: a short write is truncated back to the size before it.
 *  - Memory waiting in the queue is bounded by queue_max_bytes, or one line when that line alone is larger.
 *  - Pruning deletes rotations only, never the live file; rotations are path.1 (newest) .. path.N.
 */
#include "store/dlq.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "obs/log.h"
#include "util/clock.h"
#include "util/list.h"
#include "util/xalloc.h"

#define SHORT_WRITE (-1) /* pseudo-errno: write(2) wrote part of the line */
#define DROP_LOG_INTERVAL_MS 1000

typedef struct item {
    bw_list_t link;
    size_t len; /* bytes in data, including the trailing '\n' */
    char data[];
} item_t;

struct bw_dlq {
    bw_dlq_opts_t o; /* o.path points to path */
    char *path;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t wake; /* the writer: lines queued or stopping */
    pthread_cond_t done; /* flushers: a batch finished */
    /* guarded by mu */
    bw_list_t queue;
    size_t queued_bytes;
    uint64_t accepted, finished; /* lines accepted by append / written or failed by the writer */
    bool started, stopping;
    bw_dlq_stats_t st;
    uint64_t next_drop_log_ms, unlogged_drops;
    /* writer thread only */
    int fd;
    bool regular, dirty; /* dirty: written since the last fsync */
    bw_dlq_stats_t delta;
};

typedef struct rotation {
    int64_t idx, size, mtime; /* size -1: deleted */
} rotation_t;

/* ---- errors ---------------------------------------------------------------------------------------- */

static const char *errtext(int err, char *buf, size_t n)
{
    if (err == SHORT_WRITE)
        return "short write";
    return strerror_r(err, buf, n);
}

static void log_io_error(const char *msg, const char *op, const char *file, int err)
{
    char buf[128];
    bw_log(BW_LOG_ERROR, msg, BW_LS("op", op), BW_LS("path", file),
           BW_LS("error", errtext(err, buf, sizeof buf)), BW_LI("errno", err > 0 ? err : 0));
}

/* ---- file names ------------------------------------------------------------------------------------ */

/* "path.i"; caller frees. */
static char *rotation_name(const char *path, int64_t i)
{
    return bw_asprintf("%s.%lld", path, (long long)i);
}

/* If name is base + "." + a canonical positive decimal, returns that number, else 0. */
static int64_t rotation_index(const char *name, const char *base, size_t base_len)
{
    if (strncmp(name, base, base_len) != 0 || name[base_len] != '.')
        return 0;
    const char *digits = name + base_len + 1;
    if (digits[0] < '1' || digits[0] > '9' || strspn(digits, "0123456789") != strlen(digits) ||
        strlen(digits) > 18)
        return 0;
    return strtoll(digits, NULL, 10);
}

/* ---- pruning (writer thread) ----------------------------------------------------------------------- */

static void add_rotation(rotation_t **v, size_t *n, size_t *cap, const rotation_t *r)
{
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 8;
        *v = bw_realloc(*v, *cap * sizeof **v);
    }
    (*v)[(*n)++] = *r;
}

static int by_index(const void *a, const void *b)
{
    const rotation_t *x = a, *y = b;
    return (x->idx > y->idx) - (x->idx < y->idx);
}

/* Every regular path.<i> in the live file's directory, newest (lowest i) first. Caller frees *out. */
static size_t list_rotations(const char *path, rotation_t **out)
{
    const char *slash = strrchr(path, '/');
    char *dir = slash == NULL ? bw_strdup(".") : bw_strndup(path, slash == path ? 1 : (size_t)(slash - path));
    const char *base = slash == NULL ? path : slash + 1;
    size_t base_len = strlen(base), n = 0, cap = 0;
    DIR *dh = opendir(dir);
    *out = NULL;
    if (dh == NULL)
        goto out;
    struct dirent *e;
    struct stat st;
    while ((e = readdir(dh)) != NULL) {
        rotation_t r = {rotation_index(e->d_name, base, base_len), 0, 0};
        if (r.idx <= 0 || fstatat(dirfd(dh), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
            !S_ISREG(st.st_mode))
            continue;
        r.size = st.st_size;
        r.mtime = st.st_mtime;
        add_rotation(out, &n, &cap, &r);
    }
    closedir(dh);
    if (n > 1)
        qsort(*out, n, sizeof **out, by_index);
out:
    free(dir);
    return n;
}

static void delete_rotation(bw_dlq_t *d, rotation_t *r)
{
    char *name = rotation_name(d->path, r->idx);
    if (unlink(name) == 0) {
        d->delta.pruned++;
        r->size = -1;
    } else if (errno == ENOENT) {
        r->size = -1;
    } else {
        log_io_error("dead-letter rotation not deleted", "unlink", name, errno);
    }
    free(name);
}

/* Deletes the oldest rotations while the live file (live bytes) and the rotations exceed
   total_max_bytes. r is sorted newest first; deleted entries have size -1. */
static void prune_total(bw_dlq_t *d, rotation_t *r, size_t n, int64_t live)
{
    int64_t total = live;
    for (size_t i = 0; i < n; i++)
        total += r[i].size >= 0 ? r[i].size : 0;
    for (size_t i = n; i-- > 0 && total > d->o.total_max_bytes;) {
        int64_t size = r[i].size;
        if (size < 0)
            continue;
        delete_rotation(d, &r[i]);
        if (r[i].size < 0)
            total -= size;
    }
}

/* Deletes rotations beyond max_rotations, then those older than max_age_days, then the oldest ones while
   the live file and the rotations together exceed total_max_bytes. Does nothing when the live path
   exists and is not a regular file. */
static void prune(bw_dlq_t *d)
{
    struct stat live;
    int64_t live_bytes = 0, cutoff = INT64_MIN;
    if (stat(d->path, &live) == 0) {
        if (!S_ISREG(live.st_mode))
            return;
        live_bytes = live.st_size;
    }
    if (d->o.max_age_days > 0)
        cutoff = (int64_t)time(NULL) - d->o.max_age_days * 86400;
    rotation_t *r;
    size_t n = list_rotations(d->path, &r);
    for (size_t i = 0; i < n; i++)
        if (r[i].idx > d->o.max_rotations || r[i].mtime < cutoff)
            delete_rotation(d, &r[i]);
    if (d->o.total_max_bytes > 0)
        prune_total(d, r, n, live_bytes);
    free(r);
}

/* ---- the live file (writer thread) ----------------------------------------------------------------- */

/* Opens (creating) the live file. Returns 0 or an errno. */
static int open_live(bw_dlq_t *d)
{
    struct stat st;
    int fd = open(d->path, O_APPEND | O_CREAT | O_WRONLY | O_CLOEXEC, 0640);
    if (fd < 0)
        return errno;
    if (fstat(fd, &st) != 0) {
        int err = errno;
        close(fd);
        return err;
    }
    d->fd = fd;
    d->regular = S_ISREG(st.st_mode);
    d->dirty = false;
    return 0;
}

/* fsyncs what was written since the last sync (regular files only); a failure is logged, the lines
   stay counted as written. */
static void sync_live(bw_dlq_t *d)
{
    if (d->fd < 0 || !d->dirty || !d->regular)
        return;
    d->dirty = false;
    if (fsync(d->fd) != 0)
        log_io_error("dead-letter file not synced", "fsync", d->path, errno);
}

static void close_live(bw_dlq_t *d)
{
    if (d->fd < 0)
        return;
    sync_live(d);
    close(d->fd);
    d->fd = -1;
}

/* Current size of the live file. When someone deleted it under us (an operator after a replay), the
   file is reopened so that new lines do not vanish into the unlinked inode. Returns 0 or an errno. */
static int live_size(bw_dlq_t *d, int64_t *size)
{
    struct stat st;
    if (fstat(d->fd, &st) != 0)
        return errno;
    if (st.st_nlink == 0) {
        close_live(d);
        int err = open_live(d);
        if (err != 0 || fstat(d->fd, &st) != 0)
            return err != 0 ? err : errno;
    }
    *size = st.st_size;
    return 0;
}

/* Moves path.i one step older: path.N (N = max_rotations) is deleted, any other is renamed to path.(i+1).
   Missing files are gaps and are skipped. */
static void shift_rotation(bw_dlq_t *d, int64_t i)
{
    char *from = rotation_name(d->path, i), *to = NULL;
    if (i >= d->o.max_rotations) {
        if (unlink(from) == 0)
            d->delta.pruned++;
        else if (errno != ENOENT)
            log_io_error("dead-letter rotation not deleted", "unlink", from, errno);
        goto out;
    }
    to = rotation_name(d->path, i + 1);
    if (rename(from, to) != 0 && errno != ENOENT)
        log_io_error("dead-letter rotation not renamed", "rename", from, errno);
out:
    free(to);
    free(from);
}

/* Rotates: shifts path.N .. path.1 one step older, renames path to path.1 and prunes. The caller reopens.
   A failed rename is logged and the live file stays: it then grows past max_bytes rather than losing
   lines. */
static void rotate(bw_dlq_t *d)
{
    close_live(d);
    for (int64_t i = d->o.max_rotations; i >= 1; i--)
        shift_rotation(d, i);
    char *first = rotation_name(d->path, 1);
    if (rename(d->path, first) == 0)
        d->delta.rotations++;
    else
        log_io_error("dead-letter file not rotated", "rename", d->path, errno);
    free(first);
    prune(d);
}

/* Opens the live file when needed and rotates it first when the line would make a non-empty file exceed
   max_bytes. *before gets the size of the file the line goes into. Returns 0 or an errno, *op naming
   the step that failed. */
static int prepare(bw_dlq_t *d, size_t len, int64_t *before, const char **op)
{
    int err;
    *before = 0;
    *op = "open";
    if (d->fd < 0 && (err = open_live(d)) != 0)
        return err;
    if (!d->regular)
        return 0;
    *op = "fstat";
    if ((err = live_size(d, before)) != 0)
        return err;
    if (!d->regular || d->o.max_bytes <= 0 || *before == 0 || *before + (int64_t)len <= d->o.max_bytes)
        return 0;
    rotate(d);
    *op = "open";
    if ((err = open_live(d)) != 0)
        return err;
    *op = "fstat";
    return d->regular ? live_size(d, before) : 0;
}

/* One write(2) of the whole line; a short write into a regular file is truncated back to before.
   Returns 0 or an errno (SHORT_WRITE). */
static int write_once(bw_dlq_t *d, const item_t *it, int64_t before)
{
    ssize_t n;
    do
        n = write(d->fd, it->data, it->len);
    while (n < 0 && errno == EINTR);
    if (n == (ssize_t)it->len) {
        d->dirty = true;
        return 0;
    }
    if (n < 0)
        return errno;
    if (d->regular && ftruncate(d->fd, before) != 0)
        log_io_error("torn dead letter not rolled back", "ftruncate", d->path, errno);
    return SHORT_WRITE;
}

/* Writes one line, or logs and counts why it was lost and closes the file so that the next line
   reopens it (the disk may have been freed, the directory created). */
static void write_line(bw_dlq_t *d, const item_t *it)
{
    int64_t before;
    const char *op;
    int err = prepare(d, it->len, &before, &op);
    if (err == 0 && (op = "write", err = write_once(d, it, before)) == 0) {
        d->delta.written++;
        return;
    }
    d->delta.write_errors++;
    log_io_error("dead letter lost", op, d->path, err);
    close_live(d);
}

/* ---- the writer thread ----------------------------------------------------------------------------- */

static void merge_stats(bw_dlq_stats_t *into, bw_dlq_stats_t *delta)
{
    into->written += delta->written;
    into->write_errors += delta->write_errors;
    into->rotations += delta->rotations;
    into->pruned += delta->pruned;
    memset(delta, 0, sizeof *delta);
}

/* Waits for lines and moves all of them into batch. Returns false when stopping and nothing is left. */
static bool take_batch(bw_dlq_t *d, bw_list_t *batch)
{
    bw_list_init(batch);
    pthread_mutex_lock(&d->mu);
    while (bw_list_empty(&d->queue) && !d->stopping)
        pthread_cond_wait(&d->wake, &d->mu);
    bool got = !bw_list_empty(&d->queue);
    if (got) {
        batch->next = d->queue.next;
        batch->prev = d->queue.prev;
        batch->next->prev = batch;
        batch->prev->next = batch;
        bw_list_init(&d->queue);
        d->queued_bytes = 0;
    }
    pthread_mutex_unlock(&d->mu);
    return got;
}

/* Publishes the writer's progress: counters, n more lines finished (and the start-up work done). */
static void finish(bw_dlq_t *d, uint64_t n)
{
    pthread_mutex_lock(&d->mu);
    merge_stats(&d->st, &d->delta);
    d->finished += n;
    d->started = true;
    pthread_cond_broadcast(&d->done);
    pthread_mutex_unlock(&d->mu);
}

static uint64_t write_batch(bw_dlq_t *d, bw_list_t *batch)
{
    uint64_t n = 0;
    bw_list_t *l;
    while ((l = bw_list_shift(batch)) != NULL) {
        item_t *it = bw_list_entry(l, item_t, link);
        write_line(d, it);
        free(it);
        n++;
    }
    sync_live(d);
    return n;
}

static void *writer_main(void *arg)
{
    bw_dlq_t *d = arg;
    pthread_setname_np(pthread_self(), "bw-dlq");
    int err = open_live(d);
    if (err != 0)
        log_io_error("dead-letter file not writable", "open", d->path, err);
    prune(d);
    finish(d, 0);
    bw_list_t batch;
    while (take_batch(d, &batch))
        finish(d, write_batch(d, &batch));
    close_live(d);
    return NULL;
}

/* ---- public API ------------------------------------------------------------------------------------ */

bw_dlq_t *bw_dlq_create(const bw_dlq_opts_t *o)
{
    bw_dlq_t *d = bw_calloc(1, sizeof *d);
    d->o = *o;
    d->path = bw_strdup(o->path);
    d->o.path = d->path;
    d->fd = -1;
    bw_list_init(&d->queue);
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->wake, NULL);
    pthread_cond_init(&d->done, NULL);
    /* The writer takes no signals (a write to a FIFO without reader then fails with EPIPE instead of
       raising SIGPIPE); blocking them around pthread_create leaves no window. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&d->thread, NULL, writer_main, d);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        bw_log(BW_LOG_ERROR, "cannot start the dead-letter writer thread", BW_LI("errno", rc));
        abort();
    }
    return d;
}

/* Counts a refused line and logs it, at most once per DROP_LOG_INTERVAL_MS. Returns -1. */
static int refuse(bw_dlq_t *d, size_t len, const char *why)
{
    uint64_t now = bw_mono_ms(), total, suppressed = 0;
    bool log_now;
    pthread_mutex_lock(&d->mu);
    total = ++d->st.dropped;
    log_now = now >= d->next_drop_log_ms;
    if (log_now) {
        suppressed = d->unlogged_drops;
        d->unlogged_drops = 0;
        d->next_drop_log_ms = now + DROP_LOG_INTERVAL_MS;
    } else {
        d->unlogged_drops++;
    }
    pthread_mutex_unlock(&d->mu);
    if (log_now)
        bw_log(BW_LOG_ERROR, "dead letter dropped", BW_LS("reason", why), BW_LS("path", d->path),
               BW_LI("len", len), BW_LI("dropped_total", total), BW_LI("unlogged_drops", suppressed));
    return -1;
}

/* Copies the line into the queue when it fits; d->mu held on entry. The copy is made under the lock so
   that nothing is allocated for a line that is then refused (dead letters are rare; the writer only
   takes the lock to swap the queue out). */
static bool enqueue_locked(bw_dlq_t *d, const char *line, size_t len)
{
    if (!bw_list_empty(&d->queue) && d->queued_bytes + len + 1 > d->o.queue_max_bytes)
        return false;
    item_t *it = bw_malloc(sizeof *it + len + 1);
    memcpy(it->data, line, len);
    it->data[len] = '\n';
    it->len = len + 1;
    bw_list_push(&d->queue, &it->link);
    d->queued_bytes += it->len;
    d->accepted++;
    d->st.appended++;
    pthread_cond_signal(&d->wake);
    return true;
}

int bw_dlq_append(bw_dlq_t *d, const char *line, size_t len)
{
    if (memchr(line, '\n', len) != NULL)
        return refuse(d, len, "line contains a newline");
    pthread_mutex_lock(&d->mu);
    bool queued = enqueue_locked(d, line, len);
    pthread_mutex_unlock(&d->mu);
    return queued ? 0 : refuse(d, len, "queue full");
}

void bw_dlq_flush(bw_dlq_t *d)
{
    pthread_mutex_lock(&d->mu);
    uint64_t target = d->accepted;
    while (!d->started || d->finished < target)
        pthread_cond_wait(&d->done, &d->mu);
    pthread_mutex_unlock(&d->mu);
}

void bw_dlq_get_stats(bw_dlq_t *d, bw_dlq_stats_t *s)
{
    pthread_mutex_lock(&d->mu);
    *s = d->st;
    pthread_mutex_unlock(&d->mu);
}

void bw_dlq_destroy(bw_dlq_t *d)
{
    if (d == NULL)
        return;
    pthread_mutex_lock(&d->mu);
    d->stopping = true;
    pthread_cond_signal(&d->wake);
    pthread_mutex_unlock(&d->mu);
    pthread_join(d->thread, NULL); /* the writer drains the queue before it exits */
    pthread_cond_destroy(&d->done);
    pthread_cond_destroy(&d->wake);
    pthread_mutex_destroy(&d->mu);
    free(d->path);
    free(d);
}

/* ---- reading --------------------------------------------------------------------------------------- */

typedef struct scan {
    bw_dlq_visit_fn fn;
    void *ud;
    long visited, bad;
    bool stopped;
} scan_t;

/* Visits the entries of one file. Returns 0, or -1 when the file does not exist. */
static int scan_file(const char *file, scan_t *s)
{
    FILE *f = fopen(file, "re");
    if (f == NULL) {
        int err = errno;
        if (err != ENOENT)
            log_io_error("dead-letter file not readable", "open", file, err);
        return err == ENOENT ? -1 : 0;
    }
    /* only what the file held when opened: letters appended meanwhile (a replayed assignment dead-lettered
       again by a running worker) are not read, or a replay could feed itself */
    struct stat st;
    off_t end = fstat(fileno(f), &st) == 0 ? st.st_size : (off_t)-1;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    for (long line_no = 1;
         !s->stopped && (len = getline(&line, &cap, f)) >= 0 && (end < 0 || ftello(f) <= end); line_no++) {
        json_t *j =
            json_loadb(line, len > 0 && line[len - 1] == '\n' ? (size_t)len - 1 : (size_t)len, 0, NULL);
        if (json_is_object(j)) {
            s->visited++;
            s->stopped = s->fn(s->ud, j, file, line_no) != 0;
        } else {
            s->bad++;
        }
        json_decref(j);
    }
    free(line);
    fclose(f);
    return 0;
}

long bw_dlq_scan(const char *path, int64_t max_rotations, bw_dlq_visit_fn fn, void *ud, long *bad)
{
    scan_t s = {fn, ud, 0, 0, false};
    bool found = false;
    for (int64_t i = max_rotations; i >= 0 && !s.stopped; i--) {
        char *file = i > 0 ? rotation_name(path, i) : bw_strdup(path);
        found |= scan_file(file, &s) == 0;
        free(file);
    }
    if (bad != NULL)
        *bad = s.bad;
    return found ? s.visited : -1;
}
