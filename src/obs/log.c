/*
 * Line formatting for the structured log. A line is built in a stack buffer that spills to the heap
 * for long messages, then written whole, so concurrent writers never interleave within a line. The
 * loop thread batches its lines and writes them once per loop iteration (one write(2) for many jobs).
 */
#include "obs/log.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/clock.h"
#include "util/xalloc.h"

static bw_log_level_t g_level = BW_LOG_INFO;
static bool g_json = true;
static char g_worker_id[160] = "";
static int g_fd = STDOUT_FILENO;

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

/* Appends s with each e-mail address reduced to its first character and its domain. */
static void put_masked(line_t *l, const char *s, void (*put_text)(line_t *, const char *, size_t))
{
    const char *at, *done = s;
    while ((at = strchr(done, '@')) != NULL) {
        const char *start = at, *end = at + 1;
        while (start > done && local_char(start[-1]))
            start--;
        while (domain_char(*end))
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
    put_text(l, done, strlen(done));
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

/* JSON-escapes s, masking e-mail addresses (the scan only starts when there is an '@'). */
static void put_escaped(line_t *l, const char *s)
{
    if (strchr(s, '@') != NULL)
        put_masked(l, s, put_escaped_n);
    else
        put_escaped_n(l, s, strlen(s));
}

char *bw_log_mask_emails(const char *s)
{
    line_t l = {.len = 0, .cap = sizeof l.stack};
    l.p = l.stack;
    put_masked(&l, s, put);
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

static void write_all(const char *p, size_t len)
{
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(g_fd, p + off, len - off);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
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
    write_all(t_batch->p, t_batch->len);
    t_batch->len = 0;
}

/* Queues a finished line on the batching thread, or writes it now. */
static void emit(const line_t *l)
{
    if (!t_batching) {
        write_all(l->p, l->len);
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
