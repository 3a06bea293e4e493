/*
 * Unit tests for store/dlq.c (the local dead-letter file): the append/flush/scan round trip, rotation,
 * the three pruning limits, oversized lines, a full queue, I/O errors and recovery, short-write
 * rollback, non-regular paths and concurrent appenders. Each test gets its own mkdtemp directory.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "obs/log.h"
#include "store/dlq.h"
#include "testutil.h"

#define BIG (1LL << 40)

typedef struct fx {
    char dir[64];
    char path[128];
} fx_t;

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/bw-dlq-test-XXXXXX");
    if (mkdtemp(f->dir) == NULL)
        return -1;
    snprintf(f->path, sizeof f->path, "%s/dlq.jsonl", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    int rc = bw_test_rm_rf(f->dir);
    free(f);
    return rc;
}

static bw_dlq_opts_t opts(const char *path, int64_t max_bytes, int64_t total, int64_t rotations)
{
    return (bw_dlq_opts_t){.path = path,
                           .max_bytes = max_bytes,
                           .total_max_bytes = total,
                           .max_age_days = 0,
                           .max_rotations = rotations,
                           .queue_max_bytes = 1 << 20};
}

/* A JSON object line {"i":i,"p":"xx…"} of exactly len bytes (len >= 16), without the newline. */
static size_t make_line(char *buf, size_t cap, int i, size_t len)
{
    int head = snprintf(buf, cap, "{\"i\":%d,\"p\":\"", i);
    assert_true(len >= (size_t)head + 2 && len < cap);
    memset(buf + head, 'x', len - (size_t)head - 2);
    memcpy(buf + len - 2, "\"}", 3);
    return len;
}

static void append_n(bw_dlq_t *d, int from, int count, size_t len)
{
    char buf[8192];
    for (int i = from; i < from + count; i++)
        assert_int_equal(bw_dlq_append(d, buf, make_line(buf, sizeof buf, i, len)), 0);
}

static long long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

static long long rot_size(const char *path, int i)
{
    char name[160];
    snprintf(name, sizeof name, "%s.%d", path, i);
    return file_size(name);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static bw_dlq_stats_t stats(bw_dlq_t *d)
{
    bw_dlq_stats_t s;
    bw_dlq_get_stats(d, &s);
    return s;
}

/* Scan collector: the "i" of every entry in visiting order, plus where it came from. */
typedef struct seen {
    int n, stop_after;
    int i[8192];
    long line_no[8192];
    char file[8192][8];
    const char *path;
} seen_t;

static int collect(void *ud, json_t *entry, const char *file, long line_no)
{
    seen_t *s = ud;
    size_t plen = strlen(s->path);
    assert_true(s->n < 8192);
    assert_true(json_is_object(entry));
    assert_memory_equal(file, s->path, plen);
    s->i[s->n] = (int)json_integer_value(json_object_get(entry, "i"));
    s->line_no[s->n] = line_no;
    snprintf(s->file[s->n], sizeof s->file[0], "%s", file[plen] ? file + plen + 1 : "live");
    s->n++;
    return s->stop_after > 0 && s->n >= s->stop_after;
}

static seen_t *scan(const char *path, int64_t rotations, long expect_visited, long expect_bad)
{
    seen_t *s = calloc(1, sizeof *s);
    long bad = -1;
    s->path = path;
    assert_int_equal(bw_dlq_scan(path, rotations, collect, s, &bad), expect_visited);
    assert_int_equal(bad, expect_bad);
    return s;
}

static void assert_sequence(const seen_t *s, int first)
{
    for (int k = 0; k < s->n; k++)
        assert_int_equal(s->i[k], first + k);
}


static void test_round_trip(void **state)
{
    fx_t *f = *state;
    bw_dlq_opts_t o = opts(f->path, BIG, BIG, 5);
    assert_int_equal(bw_dlq_scan(f->path, 5, collect, NULL, NULL), -1); /* nothing yet */
    bw_dlq_t *d = bw_dlq_create(&o);
    append_n(d, 0, 100, 60);
    bw_dlq_flush(d);
    assert_int_equal(bw_test_threads_named("bw-dlq\n"), 1);
    bw_dlq_stats_t s = stats(d);
    assert_int_equal(s.appended, 100);
    assert_int_equal(s.written, 100);
    assert_int_equal(s.write_errors + s.dropped + s.rotations + s.pruned, 0);
    assert_int_equal(file_size(f->path), 100 * 61);
    struct stat st;
    assert_int_equal(stat(f->path, &st), 0);
    mode_t mask = umask(0);
    umask(mask);
    assert_int_equal(st.st_mode & 0777, 0640 & ~mask);
    seen_t *seen = scan(f->path, 5, 100, 0);
    assert_sequence(seen, 0);
    assert_int_equal(seen->line_no[0], 1);
    assert_int_equal(seen->line_no[99], 100);
    assert_string_equal(seen->file[99], "live");
    /* the bytes are exactly the lines, each followed by one newline */
    char *text = bw_test_read_file(f->path, NULL), buf[128];
    size_t len = make_line(buf, sizeof buf, 42, 60);
    assert_memory_equal(text + 42 * 61, buf, len);
    assert_int_equal(text[42 * 61 + 60], '\n');
    free(text);
    free(seen);
    /* a second instance appends to the existing file */
    bw_dlq_destroy(d);
    d = bw_dlq_create(&o);
    append_n(d, 100, 1, 60);
    bw_dlq_destroy(d); /* destroy flushes */
    seen = scan(f->path, 5, 101, 0);
    assert_sequence(seen, 0);
    free(seen);
    /* joined; the kernel may list a joined thread for a moment longer */
    for (int i = 0; i < 100 && bw_test_threads_named("bw-dlq\n") != 0; i++)
        bw_test_sleep_ms(10);
    assert_int_equal(bw_test_threads_named("bw-dlq\n"), 0);
    bw_dlq_destroy(NULL);
}

static void test_rotation(void **state)
{
    fx_t *f = *state;
    bw_dlq_opts_t o = opts(f->path, 1000, BIG, 5);
    bw_dlq_t *d = bw_dlq_create(&o);
    append_n(d, 0, 25, 99); /* 100 bytes a line: exactly ten fill a file */
    bw_dlq_flush(d);
    assert_int_equal(rot_size(f->path, 2), 1000);
    assert_int_equal(rot_size(f->path, 1), 1000);
    assert_int_equal(file_size(f->path), 500);
    assert_int_equal(rot_size(f->path, 3), -1);
    bw_dlq_stats_t s = stats(d);
    assert_int_equal(s.rotations, 2);
    assert_int_equal(s.written, 25);
    assert_int_equal(s.pruned, 0);
    bw_dlq_destroy(d);
    seen_t *seen = scan(f->path, 5, 25, 0);
    assert_sequence(seen, 0);
    assert_string_equal(seen->file[0], "2");
    assert_int_equal(seen->line_no[0], 1);
    assert_string_equal(seen->file[10], "1");
    assert_string_equal(seen->file[20], "live");
    assert_int_equal(seen->line_no[24], 5);
    free(seen);
    /* the callback stops the scan */
    seen = calloc(1, sizeof *seen);
    seen->path = f->path;
    seen->stop_after = 3;
    assert_int_equal(bw_dlq_scan(f->path, 5, collect, seen, NULL), 3);
    free(seen);
}

static void test_max_rotations(void **state)
{
    fx_t *f = *state;
    char stale[160];
    snprintf(stale, sizeof stale, "%s.7", f->path); /* left over from a larger DLQ_MAX_ROTATIONS */
    write_file(stale, "{\"i\":-1}\n");
    bw_dlq_opts_t o = opts(f->path, 1000, BIG, 2);
    bw_dlq_t *d = bw_dlq_create(&o);
    bw_dlq_flush(d); /* waits for the start-up pruning */
    assert_int_equal(file_size(stale), -1);
    assert_int_equal(stats(d).pruned, 1);
    append_n(d, 0, 50, 99); /* rotations after lines 10, 20, 30 and 40 */
    bw_dlq_flush(d);
    bw_dlq_stats_t s = stats(d);
    assert_int_equal(s.rotations, 4);
    assert_int_equal(s.pruned, 3); /* the stale one and the two oldest */
    assert_int_equal(rot_size(f->path, 1), 1000);
    assert_int_equal(rot_size(f->path, 2), 1000);
    assert_int_equal(rot_size(f->path, 3), -1);
    assert_int_equal(file_size(f->path), 1000);
    bw_dlq_destroy(d);
    seen_t *seen = scan(f->path, 10, 30, 0);
    assert_sequence(seen, 20);
    free(seen);
}

static void test_total_max_bytes(void **state)
{
    fx_t *f = *state;
    bw_dlq_opts_t o = opts(f->path, 1000, 2500, 10);
    bw_dlq_t *d = bw_dlq_create(&o);
    append_n(d, 0, 35, 99); /* the third rotation makes 3000 bytes: the oldest rotation goes */
    bw_dlq_flush(d);
    bw_dlq_stats_t s = stats(d);
    assert_int_equal(s.rotations, 3);
    assert_int_equal(s.pruned, 1);
    assert_int_equal(rot_size(f->path, 1), 1000);
    assert_int_equal(rot_size(f->path, 2), 1000);
    assert_int_equal(rot_size(f->path, 3), -1);
    assert_int_equal(file_size(f->path), 500);
    bw_dlq_destroy(d);
    seen_t *seen = scan(f->path, 10, 25, 0);
    assert_sequence(seen, 10);
    free(seen);
    /* a live file alone over the cap: every rotation goes, the live file stays */
    char big[4096];
    make_line(big, sizeof big, 0, 3000);
    strcat(big, "\n");
    write_file(f->path, big);
    d = bw_dlq_create(&o);
    bw_dlq_flush(d);
    assert_int_equal(stats(d).pruned, 2);
    assert_int_equal(rot_size(f->path, 1), -1);
    assert_int_equal(rot_size(f->path, 2), -1);
    assert_int_equal(file_size(f->path), 3001);
    bw_dlq_destroy(d);
}

static void age_rotation(const char *path, int i, int days)
{
    char name[160];
    snprintf(name, sizeof name, "%s.%d", path, i);
    struct timeval now, tv[2];
    gettimeofday(&now, NULL);
    tv[0] = tv[1] = (struct timeval){now.tv_sec - days * 86400L, 0};
    assert_int_equal(utimes(name, tv), 0);
}

static void test_max_age_days(void **state)
{
    fx_t *f = *state;
    char name[160];
    for (int i = 1; i <= 2; i++) {
        snprintf(name, sizeof name, "%s.%d", f->path, i);
        write_file(name, "{\"i\":1}\n");
    }
    age_rotation(f->path, 2, 3);
    bw_dlq_opts_t o = opts(f->path, BIG, BIG, 5);
    o.max_age_days = 5;
    bw_dlq_t *d = bw_dlq_create(&o);
    bw_dlq_flush(d);
    assert_int_equal(stats(d).pruned, 0);
    assert_int_equal(rot_size(f->path, 2), 8);
    bw_dlq_destroy(d);
    o.max_age_days = 2;
    d = bw_dlq_create(&o);
    bw_dlq_flush(d);
    assert_int_equal(stats(d).pruned, 1);
    assert_int_equal(rot_size(f->path, 2), -1);
    assert_int_equal(rot_size(f->path, 1), 8); /* fresh: kept */
    bw_dlq_destroy(d);
    /* no age limit */
    age_rotation(f->path, 1, 400);
    o.max_age_days = 0;
    d = bw_dlq_create(&o);
    bw_dlq_flush(d);
    assert_int_equal(rot_size(f->path, 1), 8);
    bw_dlq_destroy(d);
}

static void test_line_bigger_than_max_bytes(void **state)
{
    fx_t *f = *state;
    bw_dlq_opts_t o = opts(f->path, 1000, BIG, 5);
    o.queue_max_bytes = 100; /* also: a line larger than the queue goes into an empty queue */
    bw_dlq_t *d = bw_dlq_create(&o);
    append_n(d, 0, 1, 4999); /* first line, empty file: no rotation */
    bw_dlq_flush(d);
    assert_int_equal(file_size(f->path), 5000);
    assert_int_equal(stats(d).rotations, 0);
    append_n(d, 1, 1, 99);
    bw_dlq_flush(d);
    append_n(d, 2, 1, 99);
    bw_dlq_flush(d);
    append_n(d, 3, 1, 4999); /* rotates the 100-byte file away, then gets a fresh file */
    bw_dlq_flush(d);
    append_n(d, 4, 1, 99);
    bw_dlq_flush(d);
    assert_int_equal(rot_size(f->path, 3), 5000);
    assert_int_equal(rot_size(f->path, 2), 200);
    assert_int_equal(rot_size(f->path, 1), 5000);
    assert_int_equal(file_size(f->path), 100);
    bw_dlq_stats_t s = stats(d);
    assert_int_equal(s.rotations, 3);
    assert_int_equal(s.written, 5);
    assert_int_equal(s.dropped, 0);
    bw_dlq_destroy(d);
    seen_t *seen = scan(f->path, 5, 5, 0);
    assert_sequence(seen, 0);
    free(seen);
}

/* The writer blocks opening a FIFO that has no reader yet, so the queue fills deterministically. */
static void test_queue_full(void **state)
{
    fx_t *f = *state;
    char fifo[160];
    snprintf(fifo, sizeof fifo, "%s/fifo", f->dir);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    bw_dlq_opts_t o = opts(fifo, 1000, 1000, 1);
    o.queue_max_bytes = 1000;
    bw_dlq_t *d = bw_dlq_create(&o);
    char buf[128], logname[160];
    int attempts = 200, refused = 0;
    snprintf(logname, sizeof logname, "%s/log", f->dir);
    int logfd = open(logname, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    bw_log_set_fd(logfd);
    for (int i = 0; i < attempts; i++)
        refused += bw_dlq_append(d, buf, make_line(buf, sizeof buf, i, 99)) != 0;
    bw_log_set_fd(STDOUT_FILENO);
    close(logfd);
    char *log = bw_test_read_file(logname, NULL), *p = log;
    int log_lines = 0;
    while ((p = strstr(p, "\"dead letter dropped\"")) != NULL && ++log_lines)
        p++;
    assert_int_equal(log_lines, 1); /* 190 drops within a second: one log line */
    assert_non_null(strstr(log, "\"reason\":\"queue full\""));
    free(log);
    bw_dlq_stats_t s = stats(d);
    assert_int_equal(s.appended, 10); /* 10 lines of 100 bytes fill the queue */
    assert_int_equal(s.dropped, 190);
    assert_int_equal(refused, 190);
    assert_int_equal(s.appended + s.dropped, attempts);
    int rd = open(fifo, O_RDONLY | O_NONBLOCK | O_CLOEXEC); /* releases the writer */
    assert_true(rd >= 0);
    bw_dlq_flush(d);
    s = stats(d);
    assert_int_equal(s.written, 10);
    assert_int_equal(s.write_errors + s.rotations + s.pruned, 0);
    char got[4096];
    ssize_t n = read(rd, got, sizeof got);
    assert_int_equal(n, 1000);
    make_line(buf, sizeof buf, 9, 99);
    assert_memory_equal(got + 900, buf, 99);
    bw_dlq_destroy(d);
    close(rd);
}

static void test_unwritable_path(void **state)
{
    fx_t *f = *state;
    char path[200], file[160];
    /* the parent is a regular file: ENOTDIR, even for root */
    snprintf(file, sizeof file, "%s/afile", f->dir);
    write_file(file, "x");
    snprintf(path, sizeof path, "%s/dlq.jsonl", file);
    bw_dlq_opts_t o = opts(path, 1000, BIG, 3);
    bw_dlq_t *d = bw_dlq_create(&o);
    append_n(d, 0, 3, 50);
    bw_dlq_flush(d);
    bw_dlq_stats_t s = stats(d);
    assert_int_equal(s.appended, 3);
    assert_int_equal(s.write_errors, 3);
    assert_int_equal(s.written, 0);
    bw_dlq_destroy(d);
    /* a missing directory: lines fail until it is created, then the file is opened */
    snprintf(path, sizeof path, "%s/later/dlq.jsonl", f->dir);
    o.path = path;
    d = bw_dlq_create(&o);
    append_n(d, 0, 2, 50);
    bw_dlq_flush(d);
    assert_int_equal(stats(d).write_errors, 2);
    snprintf(file, sizeof file, "%s/later", f->dir);
    assert_int_equal(mkdir(file, 0750), 0);
    append_n(d, 2, 2, 50);
    bw_dlq_flush(d);
    s = stats(d);
    assert_int_equal(s.write_errors, 2);
    assert_int_equal(s.written, 2);
    bw_dlq_destroy(d);
    seen_t *seen = scan(path, 3, 2, 0);
    assert_sequence(seen, 2);
    free(seen);
}

/* Someone deletes the live file (after a replay): the next line recreates it. */
static void test_live_file_deleted(void **state)
{
    fx_t *f = *state;
    bw_dlq_opts_t o = opts(f->path, 1000, BIG, 3);
    bw_dlq_t *d = bw_dlq_create(&o);
    append_n(d, 0, 2, 50);
    bw_dlq_flush(d);
    assert_int_equal(unlink(f->path), 0);
    append_n(d, 2, 1, 50);
    bw_dlq_flush(d);
    assert_int_equal(file_size(f->path), 51);
    assert_int_equal(stats(d).written, 3);
    bw_dlq_destroy(d);
}

/* RLIMIT_FSIZE makes write(2) stop short at the limit: the partial line must be rolled back. */
static void test_short_write_rolled_back(void **state)
{
    fx_t *f = *state;
    struct rlimit old, lim;
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    bw_dlq_opts_t o = opts(f->path, BIG, BIG, 3);
    bw_dlq_t *d = bw_dlq_create(&o);
    bw_dlq_flush(d); /* the file exists */
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = 1050;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    append_n(d, 0, 12, 99); /* ten fit, the eleventh stops after 50 bytes, the twelfth too */
    bw_dlq_flush(d);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, old_handler);
    bw_dlq_stats_t s = stats(d);
    assert_int_equal(s.written, 10);
    assert_int_equal(s.write_errors, 2);
    assert_int_equal(file_size(f->path), 1000);
    append_n(d, 12, 1, 99); /* and the file works again */
    bw_dlq_destroy(d);
    seen_t *seen = scan(f->path, 3, 11, 0);
    assert_int_equal(seen->i[9], 9);
    assert_int_equal(seen->i[10], 12);
    free(seen);
}

static void test_dev_null(void **state)
{
    bw_dlq_opts_t o = opts("/dev/null", 100, 100, 1);
    bw_dlq_t *d = bw_dlq_create(&o);
    append_n(d, 0, 50, 99);
    bw_dlq_flush(d);
    bw_dlq_stats_t s = stats(d);
    assert_int_equal(s.written, 50);
    assert_int_equal(s.write_errors + s.rotations + s.pruned + s.dropped, 0);
    bw_dlq_destroy(d);
    struct stat st;
    assert_int_equal(stat("/dev/null", &st), 0);
    assert_true(S_ISCHR(st.st_mode));
    assert_int_equal(file_size("/dev/null.1"), -1);
}

static void test_scan_skips_bad_lines(void **state)
{
    fx_t *f = *state;
    char name[160];
    write_file(f->path, "{\"i\":10}\n"
                        "not json\n"
                        "[1,2]\n"
                        "\n"
                        "{\"i\":11}\n"
                        "{\"i\":99} trailing\n"
                        "{\"i\":12}");            /* the last line lacks its newline */
    snprintf(name, sizeof name, "%s.2", f->path); /* .1 is missing: a gap */
    write_file(name, "{\"i\":9}\n\"str\"\n");
    seen_t *seen = scan(f->path, 3, 4, 5);
    assert_sequence(seen, 9);
    assert_string_equal(seen->file[0], "2");
    assert_int_equal(seen->line_no[1], 1);
    assert_int_equal(seen->line_no[2], 5);
    assert_int_equal(seen->line_no[3], 7);
    free(seen);
    seen = calloc(1, sizeof *seen);
    seen->path = f->path;
    assert_int_equal(bw_dlq_scan(f->path, 3, collect, seen, NULL), 4); /* bad may be NULL */
    free(seen);
    /* only a rotation exists */
    assert_int_equal(unlink(f->path), 0);
    seen = scan(f->path, 3, 1, 1);
    free(seen);
}

/* A visit that appends to the file it scans (a replay whose letters a running worker dead-letters again)
   does not see what it appended. */
static int append_while_visiting(void *ud, json_t *e, const char *file, long line_no)
{
    FILE *f = fopen(file, "a");
    assert_non_null(f);
    fputs("{\"i\":100}\n", f);
    fclose(f);
    (*(int *)ud)++;
    return 0;
}

static void test_scan_stops_at_the_size_it_found(void **state)
{
    fx_t *f = *state;
    write_file(f->path, "{\"i\":1}\n{\"i\":2}\n");
    int visits = 0;
    assert_int_equal(bw_dlq_scan(f->path, 0, append_while_visiting, &visits, NULL), 2);
    assert_int_equal(visits, 2);
    visits = 0; /* the next scan sees the four lines the file now has */
    assert_int_equal(bw_dlq_scan(f->path, 0, append_while_visiting, &visits, NULL), 4);
}

static void test_newline_rejected(void **state)
{
    fx_t *f = *state;
    bw_dlq_opts_t o = opts(f->path, BIG, BIG, 3);
    bw_dlq_t *d = bw_dlq_create(&o);
    const char bad[] = "{\"a\":\n1}";
    assert_int_equal(bw_dlq_append(d, bad, sizeof bad - 1), -1);
    assert_int_equal(bw_dlq_append(d, "{\"a\":1}\n", 8), -1); /* a trailing one too */
    assert_int_equal(bw_dlq_append(d, "{\"a\":1}", 7), 0);
    bw_dlq_flush(d);
    bw_dlq_stats_t s = stats(d);
    assert_int_equal(s.dropped, 2);
    assert_int_equal(s.appended, 1);
    assert_int_equal(s.written, 1);
    bw_dlq_destroy(d);
    char *text = bw_test_read_file(f->path, NULL);
    assert_string_equal(text, "{\"a\":1}\n");
    free(text);
}

typedef struct appender {
    bw_dlq_t *d;
    int t;
} appender_t;

static void *append_thread(void *arg)
{
    appender_t *a = arg;
    char buf[512], pad[301];
    memset(pad, 'x', 300);
    pad[300] = '\0';
    for (int i = 0; i < 1000; i++) {
        int len = snprintf(buf, sizeof buf, "{\"t\":%d,\"n\":%d,\"p\":\"%.*s\"}", a->t, i,
                           (i * 7 + a->t) % 300, pad);
        assert_int_equal(bw_dlq_append(a->d, buf, (size_t)len), 0);
        if (i % 250 == 0) {
            bw_dlq_stats_t s;
            bw_dlq_get_stats(a->d, &s);
            bw_dlq_flush(a->d);
        }
    }
    return NULL;
}

typedef struct order {
    int next[4];
    long total;
} order_t;

static int check_order(void *ud, json_t *entry, const char *file, long line_no)
{
    order_t *o = ud;
    int t = (int)json_integer_value(json_object_get(entry, "t"));
    int n = (int)json_integer_value(json_object_get(entry, "n"));
    assert_true(t >= 0 && t < 4);
    assert_int_equal(n, o->next[t]); /* each thread's lines stay in its order */
    o->next[t]++;
    o->total++;
    return 0;
}

static void test_concurrent_appends(void **state)
{
    fx_t *f = *state;
    bw_dlq_opts_t o = opts(f->path, 64 * 1024, BIG, 100); /* rotations happen under load too */
    o.queue_max_bytes = 16u << 20;
    bw_dlq_t *d = bw_dlq_create(&o);
    pthread_t th[4];
    appender_t a[4];
    for (int t = 0; t < 4; t++) {
        a[t] = (appender_t){d, t};
        assert_int_equal(pthread_create(&th[t], NULL, append_thread, &a[t]), 0);
    }
    for (int t = 0; t < 4; t++)
        pthread_join(th[t], NULL);
    bw_dlq_flush(d);
    bw_dlq_stats_t s = stats(d);
    assert_int_equal(s.appended, 4000);
    assert_int_equal(s.written, 4000);
    assert_int_equal(s.dropped + s.write_errors + s.pruned, 0);
    assert_true(s.rotations > 0);
    bw_dlq_destroy(d);
    order_t ord = {{0}, 0};
    long bad = -1;
    assert_int_equal(bw_dlq_scan(f->path, 100, check_order, &ord, &bad), 4000);
    assert_int_equal(bad, 0);
    for (int t = 0; t < 4; t++)
        assert_int_equal(ord.next[t], 1000);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_round_trip),
        T(test_rotation),
        T(test_max_rotations),
        T(test_total_max_bytes),
        T(test_max_age_days),
        T(test_line_bigger_than_max_bytes),
        T(test_queue_full),
        T(test_unwritable_path),
        T(test_live_file_deleted),
        T(test_short_write_rolled_back),
        T(test_dev_null),
        T(test_scan_skips_bad_lines),
        T(test_scan_stops_at_the_size_it_found),
        T(test_newline_rejected),
        T(test_concurrent_appends),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
