/* Unit tests for obs/log.c: JSON line format, levels, text format, e-mail masking, the cap on long
   values, and the writer thread's bounded queue (at its limit and one byte past it, and the bounded
   flush at stop). */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "obs/log.h"

/* Runs one bw_log call with output captured through a pipe; returns what was written (malloc'd). */
#define CAPTURE(out, stmt)                                       \
    do {                                                         \
        int fds[2];                                              \
        assert_int_equal(pipe(fds), 0);                          \
        bw_log_set_fd(fds[1]);                                   \
        stmt;                                                    \
        close(fds[1]);                                           \
        static char buf[65536];                                  \
        ssize_t n = 0, r;                                        \
        while ((r = read(fds[0], buf + n, sizeof buf - 1 - n)) > 0) \
            n += r;                                              \
        close(fds[0]);                                           \
        buf[n] = 0;                                              \
        out = strdup(buf);                                       \
        bw_log_set_fd(1);                                        \
    } while (0)

static void test_json_line(void **state)
{
    char *out;
    bw_log_setup(BW_LOG_INFO, true, "worker-1");
    CAPTURE(out, bw_log(BW_LOG_INFO, "job \"finished\"", BW_LS("assignment_id", "a-1"), BW_LI("latency_ms", 42),
                        BW_LS("absent", NULL), BW_LRAW("raw", "{\"x\":1}")));
    assert_ptr_equal(strchr(out, '\n'), out + strlen(out) - 1); /* exactly one line */
    json_t *j = json_loads(out, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "level")), "info");
    assert_string_equal(json_string_value(json_object_get(j, "msg")), "job \"finished\"");
    assert_string_equal(json_string_value(json_object_get(j, "worker_id")), "worker-1");
    assert_string_equal(json_string_value(json_object_get(j, "assignment_id")), "a-1");
    assert_int_equal(json_integer_value(json_object_get(j, "latency_ms")), 42);
    assert_null(json_object_get(j, "absent"));
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "raw"), "x")), 1);
    const char *ts = json_string_value(json_object_get(j, "ts"));
    assert_int_equal(strlen(ts), 24); /* 2026-01-05T08:00:00.412Z */
    assert_true(ts[4] == '-' && ts[10] == 'T' && ts[19] == '.' && ts[23] == 'Z');
    json_decref(j);
    free(out);
}

static void test_levels(void **state)
{
    char *out;
    bw_log_setup(BW_LOG_WARN, true, "w");
    CAPTURE(out, bw_log(BW_LOG_INFO, "hidden"));
    assert_string_equal(out, "");
    free(out);
    CAPTURE(out, bw_log(BW_LOG_ERROR, "shown"));
    assert_non_null(strstr(out, "\"level\":\"error\""));
    free(out);
    assert_int_equal(bw_log_level_parse("debug"), BW_LOG_DEBUG);
    assert_int_equal(bw_log_level_parse("warn"), BW_LOG_WARN);
    assert_int_equal(bw_log_level_parse("verbose"), -1);
}

static void test_text_format(void **state)
{
    char *out;
    bw_log_setup(BW_LOG_DEBUG, false, "w");
    CAPTURE(out, bw_log(BW_LOG_DEBUG, "job queued", BW_LS("assignment_id", "a-2"), BW_LI("n", 7)));
    assert_non_null(strstr(out, " debug job queued assignment_id=a-2 n=7\n"));
    free(out);
}

static void test_control_characters_escaped(void **state)
{
    char *out;
    bw_log_setup(BW_LOG_INFO, true, "w");
    CAPTURE(out, bw_log(BW_LOG_INFO, "multi\nline\ttab\x01", BW_LS("k", "a\\b")));
    assert_int_equal(strchr(out, '\n'), out + strlen(out) - 1); /* still one line */
    json_t *j = json_loads(out, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(j, "msg")), "multi\nline\ttab\x01");
    assert_string_equal(json_string_value(json_object_get(j, "k")), "a\\b");
    json_decref(j);
    free(out);
}

static void test_email_masking(void **state)
{
    static const char *const cases[][2] = {
        {"contact alice@example.com now", "contact a***@example.com now"},
        {"a.b+tag@mail.example.org,bob@x.io", "a***@mail.example.org,b***@x.io"},
        {"no address here", "no address here"},
        {"user@localhost", "user@localhost"}, /* no dot in the domain: not an address */
        {"@example.com", "@example.com"},
        {"trailing@", "trailing@"},
        {"x@y.", "x@y."},
        {"two@@example.com", "two@@example.com"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *m = bw_log_mask_emails(cases[i][0]);
        if (strcmp(m, cases[i][1]) != 0)
            fail_msg("mask(%s) = %s, want %s", cases[i][0], m, cases[i][1]);
        free(m);
    }
    char *out;
    bw_log_setup(BW_LOG_INFO, true, "w");
    CAPTURE(out, bw_log(BW_LOG_INFO, "mail to carol@example.com failed", BW_LS("error_message", "dave@corp.example rejected")));
    assert_null(strstr(out, "carol@"));
    assert_null(strstr(out, "dave@"));
    assert_non_null(strstr(out, "c***@example.com"));
    assert_non_null(strstr(out, "d***@corp.example"));
    free(out);
}


static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A 1 MB value costs what a 4 KiB one costs: cut at BW_LOG_FIELD_MAX, marked, still one valid line;
   an address the cut would split is left out whole rather than shown unmasked. */
static void test_long_values_are_cut(void **state)
{
    size_t big = 1024 * 1024;
    char *v = malloc(big + 1);
    memset(v, 'e', big);
    v[big] = '\0';
    /* "alice@example.com" straddles the cut */
    memcpy(v + BW_LOG_FIELD_MAX - 8, " alice@example.com ", 19);
    char *out;
    bw_log_setup(BW_LOG_INFO, true, "w");
    CAPTURE(out, bw_log(BW_LOG_INFO, v, BW_LS("error_message", v), BW_LS("assignment_id", "a-1")));
    size_t len = strlen(out);
    assert_true(len < 3 * BW_LOG_FIELD_MAX);
    assert_null(strstr(out, "alice"));
    assert_null(strstr(out, "lice@"));
    json_t *j = json_loads(out, 0, NULL);
    assert_non_null(j);
    const char *em = json_string_value(json_object_get(j, "error_message"));
    const char *msg = json_string_value(json_object_get(j, "msg"));
    assert_true(strlen(em) <= BW_LOG_FIELD_MAX + strlen(BW_LOG_TRUNCATED));
    assert_string_equal(em + strlen(em) - strlen(BW_LOG_TRUNCATED), BW_LOG_TRUNCATED);
    assert_string_equal(msg, em);
    assert_string_equal(json_string_value(json_object_get(j, "assignment_id")), "a-1");
    json_decref(j);
    free(out);
    /* at the cap exactly: kept whole, no mark; one past: cut */
    v[BW_LOG_FIELD_MAX] = '\0';
    memset(v, 'f', BW_LOG_FIELD_MAX);
    CAPTURE(out, bw_log(BW_LOG_INFO, "x", BW_LS("k", v)));
    j = json_loads(out, 0, NULL);
    assert_int_equal(strlen(json_string_value(json_object_get(j, "k"))), BW_LOG_FIELD_MAX);
    json_decref(j);
    free(out);
    v[BW_LOG_FIELD_MAX] = 'f';
    v[BW_LOG_FIELD_MAX + 1] = '\0';
    CAPTURE(out, bw_log(BW_LOG_INFO, "x", BW_LS("k", v)));
    j = json_loads(out, 0, NULL);
    assert_int_equal(strlen(json_string_value(json_object_get(j, "k"))), BW_LOG_FIELD_MAX + strlen(BW_LOG_TRUNCATED));
    json_decref(j);
    free(out);
    free(v);
}

/* Masking is linear: a megabyte of what an address scanner could rescan ('@' runs, dotted local
   parts, long domains) takes milliseconds, not the minutes a quadratic scan would. */
static void test_masking_is_linear(void **state)
{
    static const char *const units[] = {"a@", "a.b.c.d.", "x@y.z", "@@..", "a@b", NULL};
    size_t big = 1024 * 1024;
    char *s = malloc(big + 1);
    for (int u = 0; units[u] != NULL; u++) {
        size_t ul = strlen(units[u]);
        for (size_t i = 0; i < big; i++)
            s[i] = units[u][i % ul];
        s[big] = '\0';
        double t0 = now_s();
        char *m = bw_log_mask_emails(s);
        double dt = now_s() - t0;
        free(m);
        print_message("mask 1 MB of \"%s\": %.1f ms\n", units[u], dt * 1000);
        if (dt > 2.0)
            fail_msg("masking 1 MB of \"%s\" took %.1f s", units[u], dt);
    }
    free(s);
}

/* ---- the writer thread ---- */

#define LIMIT (64 * 1024)

static size_t overhead; /* length of a line from fill(0) */

static void fill(size_t k)
{
    static char v[BW_LOG_FIELD_MAX + 1];
    memset(v, 'x', k);
    v[k] = '\0';
    bw_log(BW_LOG_INFO, "fill", BW_LS("f", v));
}

/* A line of exactly len bytes with the message "B" (len >= overhead). */
static void log_b(size_t len)
{
    static char v[BW_LOG_FIELD_MAX + 1];
    size_t k = len - (overhead - 3); /* "B" is 3 bytes shorter than "fill" */
    memset(v, '.', k);
    v[k] = '\0';
    bw_log(BW_LOG_INFO, "B", BW_LS("f", v));
}

/* Fills the pipe's write end (non-blocking) until it takes no more; returns the bytes written. */
static size_t stuff_pipe(int fd)
{
    char junk[4096];
    size_t n = 0;
    memset(junk, '#', sizeof junk);
    for (;;) {
        ssize_t w = write(fd, junk, sizeof junk);
        if (w > 0) {
            n += (size_t)w;
            continue;
        }
        break;
    }
    while (write(fd, junk, 1) == 1)
        n++;
    assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
    return n;
}

/* Queues lines totalling exactly r bytes (r >= 2 * overhead). */
static void queue_exactly(size_t r)
{
    size_t step = overhead + 3000;
    while (r > 2 * step) {
        fill(3000);
        r -= step;
    }
    size_t k1 = r / 2 - overhead;
    fill(k1);
    fill(r - (overhead + k1) - overhead);
}

/* Reads want bytes from fd within 10 s; returns them NUL-terminated. */
static char *read_n(int fd, size_t want)
{
    char *buf = malloc(want + 1);
    size_t got = 0;
    double until = now_s() + 10;
    while (got < want && now_s() < until) {
        ssize_t r = read(fd, buf + got, want - got);
        if (r > 0)
            got += (size_t)r;
        else
            usleep(1000);
    }
    assert_int_equal(got, want);
    buf[got] = '\0';
    return buf;
}

/* Every line of p is a JSON object with msg "fill" (or last_msg for the last); returns their number. */
static int check_lines(const char *p, const char *last_msg)
{
    int n = 0;
    const char *last = NULL;
    for (const char *nl; *p != '\0'; p = nl + 1) {
        nl = strchr(p, '\n');
        assert_non_null(nl);
        char *line = strndup(p, (size_t)(nl - p));
        json_t *j = json_loads(line, 0, NULL);
        if (j == NULL)
            fail_msg("torn or invalid line: %.100s", line);
        last = json_string_value(json_object_get(j, "msg"));
        if (strcmp(last, "fill") != 0 && strcmp(last, last_msg) != 0)
            fail_msg("unexpected line %s", line);
        json_decref(j);
        free(line);
        n++;
    }
    return n;
}

static int wait_queue_empty(void)
{
    double until = now_s() + 10;
    while (bw_log_queued_bytes() != 0 && now_s() < until)
        usleep(1000);
    return bw_log_queued_bytes() == 0 ? 0 : -1;
}

/* The queue takes lines up to LOG_BUFFER_BYTES exactly, and drops (and counts) what would pass it by a
   single byte; stdout stalls (a full pipe) without any logger waiting; the kept lines come out whole
   and in order once the pipe is read. */
static void test_writer_queue_limit(void **state)
{
    int fds[2];
    char *out;
    bw_log_setup(BW_LOG_INFO, true, "w");
    CAPTURE(out, fill(0));
    overhead = strlen(out);
    free(out);

    assert_int_equal(pipe(fds), 0);
    assert_int_equal(fcntl(fds[1], F_SETFL, O_NONBLOCK), 0); /* the writer also copes with EAGAIN */
    size_t stuffed = stuff_pipe(fds[1]);
    bw_log_set_fd(fds[1]);
    assert_int_equal(bw_log_start_writer(LIMIT), 0);
    uint64_t dropped0 = bw_log_dropped();

    /* at the limit: the last line fills the queue to LIMIT exactly and is kept */
    size_t x = overhead + 200;
    queue_exactly(LIMIT - x);
    assert_int_equal(bw_log_queued_bytes(), LIMIT - x);
    double t0 = now_s();
    log_b(x);
    assert_true(now_s() - t0 < 1.0); /* nobody waits for the stalled pipe */
    assert_int_equal(bw_log_queued_bytes(), LIMIT);
    assert_int_equal(bw_log_dropped(), dropped0);
    /* past it: the smallest line is dropped and counted */
    fill(0);
    assert_int_equal(bw_log_dropped(), dropped0 + 1);
    assert_int_equal(bw_log_queued_bytes(), LIMIT);

    char *junk = read_n(fds[0], stuffed);
    free(junk);
    char *lines = read_n(fds[0], LIMIT);
    int n = check_lines(lines, "B");
    assert_true(n > 2);
    assert_non_null(strstr(lines, "\"msg\":\"B\""));
    free(lines);
    assert_int_equal(wait_queue_empty(), 0);

    /* one byte past: the same line does not fit when one more byte is queued */
    stuffed = stuff_pipe(fds[1]);
    queue_exactly(LIMIT - x + 1);
    log_b(x);
    assert_int_equal(bw_log_dropped(), dropped0 + 2);
    assert_int_equal(bw_log_queued_bytes(), LIMIT - x + 1);
    junk = read_n(fds[0], stuffed);
    free(junk);
    lines = read_n(fds[0], LIMIT - x + 1);
    check_lines(lines, "none");
    assert_null(strstr(lines, "\"msg\":\"B\""));
    free(lines);
    assert_int_equal(wait_queue_empty(), 0);

    /* a clean stop: everything written, later lines written directly */
    assert_int_equal(bw_log_stop_writer(1000), 0);
    CAPTURE(out, bw_log(BW_LOG_INFO, "after"));
    assert_non_null(strstr(out, "\"msg\":\"after\""));
    free(out);
    close(fds[0]);
    close(fds[1]);
    bw_log_set_fd(1);
}

/* Several threads logging at once through the writer: every line whole, none lost (the queue is
   large enough), none interleaved. */
#define THREADS 4
#define PER_THREAD 2000

static void *log_many(void *arg)
{
    for (int i = 0; i < PER_THREAD; i++)
        bw_log(BW_LOG_INFO, "fill", BW_LI("thread", (long)(intptr_t)arg), BW_LI("i", i),
               BW_LS("pad", "some padding so that lines cross pipe-buffer boundaries"));
    return NULL;
}

static void test_writer_threads_no_torn_lines(void **state)
{
    int fds[2];
    pthread_t t[THREADS];
    assert_int_equal(pipe(fds), 0);
    bw_log_setup(BW_LOG_INFO, true, "w");
    bw_log_set_fd(fds[1]);
    uint64_t dropped0 = bw_log_dropped();
    assert_int_equal(bw_log_start_writer(16 * 1024 * 1024), 0);
    for (long i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, log_many, (void *)(intptr_t)i), 0);
    /* read while they write: the 64 KiB pipe fills many times over */
    size_t cap = 8 * 1024 * 1024, got = 0;
    char *buf = malloc(cap);
    int lines = 0;
    double until = now_s() + 20;
    while (lines < THREADS * PER_THREAD && now_s() < until) {
        ssize_t r = read(fds[0], buf + got, cap - got - 1);
        assert_true(r > 0);
        for (ssize_t i = 0; i < r; i++)
            lines += buf[got + i] == '\n';
        got += (size_t)r;
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    buf[got] = '\0';
    assert_int_equal(lines, THREADS * PER_THREAD);
    assert_int_equal(check_lines(buf, "none"), THREADS * PER_THREAD);
    assert_int_equal(bw_log_dropped(), dropped0);
    free(buf);
    assert_int_equal(bw_log_stop_writer(1000), 0);
    close(fds[0]);
    close(fds[1]);
    bw_log_set_fd(1);
}

/* A stop against a stdout that takes nothing returns after its bound, not never; the lines still
   queued are given up and later ones are dropped and counted (the process is exiting). Last: it
   leaves the logger abandoned. */
static void test_writer_stop_is_bounded(void **state)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    assert_int_equal(fcntl(fds[1], F_SETFL, O_NONBLOCK), 0);
    stuff_pipe(fds[1]);
    assert_int_equal(fcntl(fds[1], F_SETFL, 0), 0); /* blocking: the writer sits in write(2) */
    bw_log_setup(BW_LOG_INFO, true, "w");
    bw_log_set_fd(fds[1]);
    assert_int_equal(bw_log_start_writer(LIMIT), 0);
    for (int i = 0; i < 1000; i++) /* ~190 KB: more than the pipe and the queue hold */
        fill(100);
    double t0 = now_s();
    assert_int_equal(bw_log_stop_writer(300), -1);
    double dt = now_s() - t0;
    print_message("stop against a stalled pipe returned after %.0f ms\n", dt * 1000);
    assert_true(dt >= 0.25 && dt < 3.0);
    uint64_t d = bw_log_dropped();
    fill(0);
    assert_int_equal(bw_log_dropped(), d + 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_line),
        cmocka_unit_test(test_levels),
        cmocka_unit_test(test_text_format),
        cmocka_unit_test(test_control_characters_escaped),
        cmocka_unit_test(test_email_masking),
        cmocka_unit_test(test_long_values_are_cut),
        cmocka_unit_test(test_masking_is_linear),
        cmocka_unit_test(test_writer_queue_limit),
        cmocka_unit_test(test_writer_threads_no_torn_lines),
        cmocka_unit_test(test_writer_stop_is_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
