/*
 * Line formatting for the structured log. A line is built in a stack buffer that spills to the heap
 * for long values (each string value is cut at BW_LOG_FIELD_MAX bytes), then handed over whole, so
 * lines never interleave. The loop thread batches its lines and hands them over once per loop
 * iteration; with the writer thread started (the daemon), handing over is a copy into a bounded queue
 * under a mutex, and only that thread writes to stdout.
 */
#include "obs/log.h"

#include <ctype.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util/clock.h"
#include "util/xalloc.h"

static bw_log_level_t g_level = BW_LOG_INFO;
static bool g_json = true;
static char g_worker_id[160] = "";
static _Atomic int g_fd = STDOUT_FILENO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

typedef struct line {
    char *p;
    size_t len, cap;
    char stack[2048];
} line_t;

static void put(line_t *l, const char *s, size_t n)
{
    if (l->len + n > l->cap) {
        size_t cap = (l->len + n) * 2;
        if (l->p == l->stack) {
            l->p = bw_malloc(cap);
            memcpy(l->p, l->stack, l->len);
        } else {
            l->p = bw_realloc(l->p, cap);
        }
        l->cap = cap;
    }
    memcpy(l->p + l->len, s, n);
    l->len += n;
}

static void puts_(line_t *l, const char *s)
{
    put(l, s, strlen(s));
}

static bool local_char(char c)
{
    return isalnum((unsigned char)c) || strchr("._%+-", c) != NULL;
}

static bool domain_char(char c)
{
    return isalnum((unsigned char)c) || c == '.' || c == '-';
}

/* Appends s[0..n) with each e-mail address reduced to its first character and its domain. Linear:
   each stretch between two '@' is scanned once backwards and once forwards. */
static void put_masked(line_t *l, const char *s, size_t n, void (*put_text)(line_t *, const char *, size_t))
{
    const char *at, *done = s, *lim = s + n;
    while ((at = memchr(done, '@', (size_t)(lim - done))) != NULL) {
        const char *start = at, *end = at + 1;
        while (start > done && local_char(start[-1]))
            start--;
        while (end < lim && domain_char(*end))
            end++;
        const char *dot = memchr(at + 1, '.', (size_t)(end - at - 1));
        if (start == at || dot == NULL || dot == at + 1 || end[-1] == '.') {
            put_text(l, done, (size_t)(at + 1 - done));
            done = at + 1;
            continue;
        }
        put_text(l, done, (size_t)(start + 1 - done));
        put_text(l, "***", 3);
        put_text(l, at, (size_t)(end - at));
        done = end;
    }
    put_text(l, done, (size_t)(lim - done));
}

static bool needs_escape(unsigned char c)
{
    return c < 0x20 || c == '"' || c == '\\';
}

/* JSON-escapes n bytes; runs of plain characters are copied in one piece. */
static void put_escaped_n(line_t *l, const char *s, size_t n)
{
    const char *end = s + n;
    while (s < end) {
        const char *run = s;
        while (s < end && !needs_escape((unsigned char)*s))
            s++;
        if (s > run)
            put(l, run, (size_t)(s - run));
        if (s == end)
            break;
        unsigned char c = (unsigned char)*s++;
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            put(l, esc, 2);
        } else if (c == '\n') {
            put(l, "\\n", 2);
        } else {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            put(l, esc, 6);
        }
    }
}

static bool address_char(char c)
{
    return local_char(c) || c == '@';
}

/* Where a value longer than BW_LOG_FIELD_MAX is cut: never inside a UTF-8 sequence, and never inside
   something that could be an e-mail address (a cut "alice@exam" would no longer be recognised and
   masked), unless that run is longer than any address can be. */
static size_t cut_point(const char *s)
{
    size_t cut = BW_LOG_FIELD_MAX, floor = cut - 512;
    while (cut > floor && address_char(s[cut - 1]) && address_char(s[cut]))
        cut--;
    if (cut == floor)
        cut = BW_LOG_FIELD_MAX;
    while (cut > 0 && ((unsigned char)s[cut] & 0xC0) == 0x80)
        cut--;
    return cut;
}

/* JSON-escapes s, masking e-mail addresses (the scan only starts when there is an '@'). Input is read
   only up to BW_LOG_FIELD_MAX bytes: a megabyte error message costs what 8 KiB costs. */
static void put_escaped(line_t *l, const char *s)
{
    size_t n = strnlen(s, BW_LOG_FIELD_MAX + 1);
    bool cut = n > BW_LOG_FIELD_MAX;
    if (cut)
        n = cut_point(s);
    if (memchr(s, '@', n) != NULL)
        put_masked(l, s, n, put_escaped_n);
    else
        put_escaped_n(l, s, n);
    if (cut)
        put(l, BW_LOG_TRUNCATED, sizeof BW_LOG_TRUNCATED - 1);
}

char *bw_log_mask_emails(const char *s)
{
    line_t l = {.len = 0, .cap = sizeof l.stack};
    l.p = l.stack;
    put_masked(&l, s, strlen(s), put);
    char *out = bw_strndup(l.p, l.len);
    if (l.p != l.stack)
        free(l.p);
    return out;
}

void bw_log_setup(bw_log_level_t level, bool json, const char *worker_id)
{
    g_level = level;
    g_json = json;
    snprintf(g_worker_id, sizeof g_worker_id, "%s", worker_id ? worker_id : "");
}

void bw_log_set_fd(int fd)
{
    g_fd = fd;
}

bool bw_log_enabled(bw_log_level_t level)
{
    return level >= g_level;
}

int bw_log_level_parse(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(s, level_names[i]) == 0)
            return i;
    return -1;
}

static void put_field_json(line_t *l, const bw_log_field_t *f)
{
    char num[32];
    if (f->kind == BW_LF_STR && f->str == NULL)
        return;
    puts_(l, ",\"");
    put_escaped(l, f->key);
    puts_(l, "\":");
    if (f->kind == BW_LF_INT) {
        snprintf(num, sizeof num, "%lld", f->num);
        puts_(l, num);
    } else if (f->kind == BW_LF_RAW) {
        puts_(l, f->str);
    } else {
        puts_(l, "\"");
        put_escaped(l, f->str);
        puts_(l, "\"");
    }
}

static void put_field_text(line_t *l, const bw_log_field_t *f)
{
    char num[32];
    if (f->kind == BW_LF_STR && f->str == NULL)
        return;
    puts_(l, " ");
    puts_(l, f->key);
    puts_(l, "=");
    if (f->kind == BW_LF_INT) {
        snprintf(num, sizeof num, "%lld", f->num);
        puts_(l, num);
    } else {
        put_escaped(l, f->str);
    }
}

/* Lines of a batching thread (the loop) wait here until bw_log_flush; other threads write at once. */
static __thread bool t_batching;
static __thread line_t *t_batch;
static __thread int64_t t_ts_sec = -1;
static __thread char t_ts_prefix[24]; /* "2026-01-05T08:00:00" of t_ts_sec */

/* RFC 3339 with ms; the date part is formatted once per second per thread. */
static void timestamp(char out[32])
{
    int64_t ms = bw_wall_ms();
    if (ms / 1000 != t_ts_sec) {
        char full[40];
        t_ts_sec = ms / 1000;
        bw_rfc3339_ms(t_ts_sec * 1000, full, sizeof full);
        memcpy(t_ts_prefix, full, 19);
        t_ts_prefix[19] = '\0';
    }
    snprintf(out, 32, "%s.%03dZ", t_ts_prefix, (int)(ms % 1000));
}

/* ---- the writer thread ----
 * Once started, every line goes into one bounded queue (a list of chunks, so memory follows the
 * backlog, not the bound) and only the thread "bw-log" writes to the descriptor. A caller never waits
 * for the descriptor: a line that does not fit is dropped and counted. The descriptor is left as the
 * process got it (blocking or not, shared with a parent); the writer copes with both. */

#define CHUNK_BYTES (64 * 1024)

typedef struct chunk {
    struct chunk *next;
    size_t len, cap;
    char data[];
} chunk_t;

static struct {
    pthread_mutex_t mu;
    pthread_cond_t wake;    /* the writer: lines arrived, or stop */
    pthread_cond_t drained; /* bw_log_stop_writer: the queue is empty or the writer gave up */
    chunk_t *head, *tail, *spare;
    size_t queued, limit; /* bytes queued or being written; the bound */
    bool running;         /* lines go to the queue */
    bool stopping;        /* the writer exits once the queue is empty */
    bool writer_waiting;
    bool writer_done;
    bool abandoned; /* the flush at stop timed out: later lines are dropped, not written */
    pthread_t thread;
} Q = {.mu = PTHREAD_MUTEX_INITIALIZER};

static atomic_uint_fast64_t g_dropped;

static size_t count_lines(const char *p, size_t len)
{
    size_t n = 0;
    for (const char *e = p + len; (p = memchr(p, '\n', (size_t)(e - p))) != NULL; p++)
        n++;
    return n;
}

static void count_dropped(const char *p, size_t len)
{
    atomic_fetch_add_explicit(&g_dropped, count_lines(p, len), memory_order_relaxed);
}

/* Writes all of p[0..len) to fd: EINTR retried, partial writes continued, EAGAIN (a non-blocking
   descriptor) waited out with poll. A different error, or the stop having given up, loses the rest:
   those lines are counted as dropped. Called without the lock (the writer, or direct mode). */
static void write_all(int fd, const char *p, size_t len)
{
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, p + off, len - off);
        if (w > 0) {
            off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            if (poll(&pfd, 1, 100) >= 0 || errno == EINTR) {
                pthread_mutex_lock(&Q.mu);
                bool give_up = Q.abandoned;
                pthread_mutex_unlock(&Q.mu);
                if (!give_up)
                    continue;
            }
        }
        count_dropped(p + off, len - off);
        return;
    }
}

static void *writer_main(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "bw-log");
    pthread_mutex_lock(&Q.mu);
    for (;;) {
        while (Q.head == NULL && !Q.stopping) {
            Q.writer_waiting = true;
            pthread_cond_wait(&Q.wake, &Q.mu);
            Q.writer_waiting = false;
        }
        if (Q.head == NULL)
            break;
        chunk_t *list = Q.head;
        Q.head = Q.tail = NULL;
        while (list != NULL) {
            chunk_t *c = list;
            list = c->next;
            int fd = g_fd;
            pthread_mutex_unlock(&Q.mu);
            write_all(fd, c->data, c->len);
            pthread_mutex_lock(&Q.mu);
            Q.queued -= c->len;
            if (Q.spare == NULL && c->cap == CHUNK_BYTES) {
                c->len = 0;
                c->next = NULL;
                Q.spare = c;
            } else {
                free(c);
            }
        }
        if (Q.head == NULL)
            pthread_cond_broadcast(&Q.drained);
    }
    Q.writer_done = true;
    Q.running = false; /* under the same lock as the last look at the queue: no line is left behind */
    pthread_cond_broadcast(&Q.drained);
    pthread_mutex_unlock(&Q.mu);
    return NULL;
}

/* Appends whole lines to the queue under the lock; 0, or -1 when they do not fit. */
static int queue_put(const char *p, size_t len)
{
    if (len > Q.limit - Q.queued)
        return -1;
    chunk_t *t = Q.tail;
    if (t == NULL || t->cap - t->len < len) {
        if (Q.spare != NULL && len <= CHUNK_BYTES) {
            t = Q.spare;
            Q.spare = NULL;
        } else {
            size_t cap = len > CHUNK_BYTES ? len : CHUNK_BYTES;
            t = bw_malloc(sizeof *t + cap);
            t->cap = cap;
            t->len = 0;
            t->next = NULL;
        }
        if (Q.tail != NULL)
            Q.tail->next = t;
        else
            Q.head = t;
        Q.tail = t;
    }
    memcpy(t->data + t->len, p, len);
    t->len += len;
    Q.queued += len;
    return 0;
}

/* Hands lines (one or more, each ending in '\n') to the writer, or writes them when it does not run.
   Never waits for the descriptor: what does not fit is dropped and counted, line by line. */
static void deliver(const char *p, size_t len)
{
    pthread_mutex_lock(&Q.mu);
    if (!Q.running) {
        bool abandoned = Q.abandoned;
        pthread_mutex_unlock(&Q.mu);
        if (abandoned)
            count_dropped(p, len);
        else
            write_all(g_fd, p, len);
        return;
    }
    if (queue_put(p, len) != 0) {
        /* Not all of it fits: keep the lines that do, in order, and drop from the first that does not. */
        const char *e = p + len, *nl;
        while (p < e && (nl = memchr(p, '\n', (size_t)(e - p))) != NULL && queue_put(p, (size_t)(nl + 1 - p)) == 0)
            p = nl + 1;
        count_dropped(p, (size_t)(e - p));
    }
    if (Q.writer_waiting && Q.head != NULL)
        pthread_cond_signal(&Q.wake);
    pthread_mutex_unlock(&Q.mu);
}

static void stop_at_exit(void)
{
    bw_log_flush();
    bw_log_stop_writer(BW_LOG_EXIT_FLUSH_MS);
}

int bw_log_start_writer(size_t max_bytes)
{
    static bool registered;
    int rc = 0;
    pthread_condattr_t ca;
    pthread_mutex_lock(&Q.mu);
    if (Q.running)
        goto out;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&Q.wake, NULL);
    pthread_cond_init(&Q.drained, &ca);
    pthread_condattr_destroy(&ca);
    Q.limit = max_bytes;
    Q.stopping = Q.writer_done = Q.abandoned = false;
    if (pthread_create(&Q.thread, NULL, writer_main, NULL) != 0) {
        rc = -1;
        goto out;
    }
    Q.running = true;
    if (!registered)
        atexit(stop_at_exit);
    registered = true;
out:
    pthread_mutex_unlock(&Q.mu);
    return rc;
}

int bw_log_stop_writer(int timeout_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&Q.mu);
    if (!Q.running) {
        pthread_mutex_unlock(&Q.mu);
        return 0;
    }
    Q.stopping = true; /* lines logged meanwhile are still queued, and written before the writer exits */
    pthread_cond_signal(&Q.wake);
    int rc = 0;
    while (!Q.writer_done && rc == 0)
        rc = pthread_cond_timedwait(&Q.drained, &Q.mu, &until);
    if (!Q.writer_done) {
        /* The descriptor does not take the lines (a stalled pipe): give up on them. The writer may be
           blocked in write(2) for good, so it is left to the process's exit, with its queue. */
        Q.abandoned = true;
        Q.running = false;
        pthread_mutex_unlock(&Q.mu);
        return -1;
    }
    pthread_mutex_unlock(&Q.mu);
    pthread_join(Q.thread, NULL);
    pthread_mutex_lock(&Q.mu);
    free(Q.spare);
    Q.spare = NULL;
    pthread_mutex_unlock(&Q.mu);
    return 0;
}

uint64_t bw_log_dropped(void)
{
    return atomic_load_explicit(&g_dropped, memory_order_relaxed);
}

size_t bw_log_queued_bytes(void)
{
    pthread_mutex_lock(&Q.mu);
    size_t n = Q.queued;
    pthread_mutex_unlock(&Q.mu);
    return n;
}

void bw_log_batch_thread(bool on)
{
    if (!on)
        bw_log_flush();
    t_batching = on;
}

void bw_log_flush(void)
{
    if (t_batch == NULL || t_batch->len == 0)
        return;
    deliver(t_batch->p, t_batch->len);
    t_batch->len = 0;
}

/* Queues a finished line on the batching thread, or delivers it now. */
static void emit(const line_t *l)
{
    if (!t_batching) {
        deliver(l->p, l->len);
        return;
    }
    if (t_batch == NULL) {
        t_batch = bw_calloc(1, sizeof *t_batch);
        t_batch->p = t_batch->stack;
        t_batch->cap = sizeof t_batch->stack;
    }
    put(t_batch, l->p, l->len);
    if (t_batch->len >= 64 * 1024)
        bw_log_flush();
}

void bw_log_fields(bw_log_level_t level, const char *msg, const bw_log_field_t *fields, size_t n)
{
    line_t l = {.len = 0, .cap = sizeof l.stack};
    char ts[32];
    l.p = l.stack;
    timestamp(ts);
    if (g_json) {
        puts_(&l, "{\"ts\":\"");
        puts_(&l, ts);
        puts_(&l, "\",\"level\":\"");
        puts_(&l, level_names[level]);
        puts_(&l, "\",\"msg\":\"");
        put_escaped(&l, msg);
        puts_(&l, "\",\"worker_id\":\"");
        put_escaped(&l, g_worker_id);
        puts_(&l, "\"");
        for (size_t i = 0; i < n; i++)
            put_field_json(&l, &fields[i]);
        puts_(&l, "}\n");
    } else {
        puts_(&l, ts);
        puts_(&l, " ");
        puts_(&l, level_names[level]);
        puts_(&l, " ");
        put_escaped(&l, msg);
        for (size_t i = 0; i < n; i++)
            put_field_text(&l, &fields[i]);
        puts_(&l, "\n");
    }
    emit(&l);
    if (l.p != l.stack)
        free(l.p);
}
