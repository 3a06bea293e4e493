/*
 * Unit tests for store/approval_journal.c on real files in a mkdtemp directory: the append/replay round
 * trip, callbacks after the write, group commit, torn, corrupt and over-long lines at replay, the
 * directory lock, compaction (and its failure), EFBIG rolled back, close with appends pending, and a
 * measurement of 10,000 durable appends (printed, not asserted).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "obs/log.h"
#include "store/approval_journal.h"
#include "testutil.h"

#define MAXN 10100
#define WAIT_MS 30000 /* what takes milliseconds; generous for a busy 2-core machine and sanitizers */

typedef struct tally tally_t;

typedef struct ticket {
    tally_t *t;
    int idx;
} ticket_t;

struct tally {
    int n, next;
    bool out_of_order;
    int err[MAXN];
    ticket_t tk[MAXN];
    const char *check_path; /* when set: each callback looks for its line in this file */
    int found;
};

typedef struct fx {
    char root[64];
    char dir[128]; /* APPROVAL_DIR: created by the journal */
    char path[192];
    uv_loop_t loop;
    tally_t *t;
} fx_t;

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof *f);
    snprintf(f->root, sizeof f->root, "/tmp/bw-ajournal-test-XXXXXX");
    if (mkdtemp(f->root) == NULL)
        return -1;
    snprintf(f->dir, sizeof f->dir, "%s/a/approvals", f->root);
    snprintf(f->path, sizeof f->path, "%s/%s", f->dir, BW_AJOURNAL_FILE);
    uv_loop_init(&f->loop);
    f->t = calloc(1, sizeof *f->t);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    uv_run(&f->loop, UV_RUN_NOWAIT); /* closed journals free their async handle */
    int rc = uv_loop_close(&f->loop) == 0 ? 0 : -1;
    rc |= bw_test_rm_rf(f->root);
    free(f->t);
    free(f);
    return rc;
}

static bw_ajournal_t *open_j(fx_t *f)
{
    char err[512] = "";
    bw_ajournal_t *j = bw_ajournal_open(&f->loop, f->dir, err, sizeof err);
    if (j == NULL)
        fail_msg("open: %s", err);
    return j;
}

/* {"i":i,"p":"xx…"} with pad x's. Caller decrefs. */
static json_t *rec(int i, size_t pad)
{
    char *p = malloc(pad + 1);
    memset(p, 'x', pad);
    p[pad] = '\0';
    json_t *r = json_pack("{s:i,s:s}", "i", i, "p", p);
    free(p);
    return r;
}

static void on_done(void *ud, int err)
{
    ticket_t *k = ud;
    tally_t *t = k->t;
    if (k->idx != t->next)
        t->out_of_order = true;
    t->next = k->idx + 1;
    t->err[k->idx] = err;
    t->n++;
    if (t->check_path != NULL && err == 0) {
        char needle[32], *text = bw_test_read_file(t->check_path, NULL);
        snprintf(needle, sizeof needle, "{\"i\":%d,", k->idx);
        t->found += text != NULL && strstr(text, needle) != NULL;
        free(text);
    }
}

static void append_rec(bw_ajournal_t *j, tally_t *t, int idx, json_t *r, bool sync)
{
    t->tk[idx] = (ticket_t){t, idx};
    bw_ajournal_append(j, r, sync, on_done, &t->tk[idx]);
    json_decref(r);
}

static void append_range(bw_ajournal_t *j, tally_t *t, int from, int to, size_t pad, bool sync)
{
    for (int i = from; i < to; i++)
        append_rec(j, t, i, rec(i, pad), sync);
}

static void on_tick(uv_timer_t *h)
{
    (void)h;
}

/* Runs the loop until *counter reaches target; fails after WAIT_MS. */
static void run_until(uv_loop_t *loop, const int *counter, int target)
{
    uv_timer_t tick;
    uv_timer_init(loop, &tick);
    uv_timer_start(&tick, on_tick, 50, 50);
    int64_t deadline = bw_test_now_ms() + WAIT_MS;
    while (*counter < target && bw_test_now_ms() < deadline)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    assert_int_equal(*counter, target);
}

static void assert_all_ok(const tally_t *t, int from, int to)
{
    assert_false(t->out_of_order);
    for (int i = from; i < to; i++)
        if (t->err[i] != 0)
            fail_msg("append %d: %s", i, strerror(t->err[i]));
}

static bw_ajournal_stats_t stats(bw_ajournal_t *j)
{
    bw_ajournal_stats_t s;
    bw_ajournal_get_stats(j, &s);
    return s;
}

/* Replay collector: the "i" of every record, in order. */
typedef struct seen {
    int n;
    int i[MAXN];
} seen_t;

static void collect(void *ud, json_t *record)
{
    seen_t *s = ud;
    assert_true(s->n < MAXN);
    s->i[s->n++] = (int)json_integer_value(json_object_get(record, "i"));
}

/* Opens the directory again, replays it and closes; returns the records (caller frees), *skipped the
   lines skipped. */
static seen_t *replay_dir(fx_t *f, uint64_t *skipped)
{
    seen_t *s = calloc(1, sizeof *s);
    bw_ajournal_t *j = open_j(f);
    size_t n = bw_ajournal_replay(j, collect, s);
    assert_int_equal(n, s->n);
    if (skipped != NULL)
        *skipped = stats(j).skipped;
    bw_ajournal_close(j);
    return s;
}

static long long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

static void write_file(const char *path, const char *text, const char *mode)
{
    FILE *fp = fopen(path, mode);
    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
}

/* Makes the journal directory (through a journal) so that a test can write the file by hand. */
static void make_dir(fx_t *f)
{
    bw_ajournal_close(open_j(f));
}

/* Log capture: warnings go to a file in the test directory. */
static int capture_logs(fx_t *f, char *name, size_t n)
{
    snprintf(name, n, "%s/log", f->root);
    int fd = open(name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    bw_log_set_fd(fd);
    return fd;
}

static char *end_capture(int fd, const char *name)
{
    bw_log_set_fd(STDOUT_FILENO);
    close(fd);
    return bw_test_read_file(name, NULL);
}

static int count_substr(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p++)
        n++;
    return n;
}


/* ---- tests ----------------------------------------------------------------------------------------- */

static void test_round_trip(void **state)
{
    fx_t *f = *state;
    tally_t *t = f->t;
    bw_ajournal_t *j = open_j(f);
    /* the directory (parents too) is 0700, the file 0600, the lock file holds our pid */
    struct stat st;
    assert_int_equal(stat(f->dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    char lock[256], pid[32], *text;
    snprintf(lock, sizeof lock, "%s/%s", f->dir, BW_AJOURNAL_LOCK);
    snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    assert_non_null(text = bw_test_read_file(lock, NULL));
    assert_string_equal(text, pid);
    free(text);
    seen_t none = {0};
    assert_int_equal(bw_ajournal_replay(j, collect, &none), 0);
    for (int i = 0; i < 2000; i++)
        append_rec(j, t, i, rec(i, (size_t)(i % 300)), i % 100 == 99);
    run_until(&f->loop, &t->n, 2000);
    assert_all_ok(t, 0, 2000);
    assert_int_equal(bw_test_threads_named("bw-approvals\n"), 1); /* named by now: it wrote */
    bw_ajournal_stats_t s = stats(j);
    assert_int_equal(s.appends, 2000);
    assert_int_equal(s.lines, 2000);
    assert_int_equal(s.errors + s.compactions + s.skipped, 0);
    assert_int_equal(s.bytes, file_size(f->path));
    bw_ajournal_close(j);
    uint64_t skipped = 1;
    seen_t *seen = replay_dir(f, &skipped);
    assert_int_equal(seen->n, 2000);
    assert_int_equal(skipped, 0);
    for (int i = 0; i < 2000; i++)
        assert_int_equal(seen->i[i], i);
    free(seen);
    /* the lines are compact JSON, one per line */
    text = bw_test_read_file(f->path, NULL);
    assert_memory_equal(text, "{\"i\":0,\"p\":\"\"}\n{\"i\":1,\"p\":\"x\"}\n", 31);
    free(text);
    /* a later instance appends after what is there */
    j = open_j(f);
    memset(t, 0, sizeof *t);
    append_range(j, t, 0, 1, 10, true);
    run_until(&f->loop, &t->n, 1);
    bw_ajournal_close(j);
    seen = replay_dir(f, NULL);
    assert_int_equal(seen->n, 2001);
    free(seen);
}

/* A callback runs once its line is in the file: sync or not, the callback can read it. */
static void test_callback_after_write(void **state)
{
    fx_t *f = *state;
    tally_t *t = f->t;
    bw_ajournal_t *j = open_j(f);
    t->check_path = f->path;
    for (int i = 0; i < 40; i++)
        append_rec(j, t, i, rec(i, 100), i % 2 == 0);
    run_until(&f->loop, &t->n, 40);
    assert_all_ok(t, 0, 40);
    assert_int_equal(t->found, 40);
    bw_ajournal_close(j);
}

/* 1,000 durable appends queued at once share few fdatasyncs. */
static void test_group_commit(void **state)
{
    fx_t *f = *state;
    tally_t *t = f->t;
    bw_ajournal_t *j = open_j(f);
    append_range(j, t, 0, 1000, 200, true);
    run_until(&f->loop, &t->n, 1000);
    assert_all_ok(t, 0, 1000);
    bw_ajournal_stats_t s = stats(j);
    printf("group commit: 1000 durable appends, %llu fdatasync calls\n", (unsigned long long)s.syncs);
    assert_int_equal(s.appends, 1000);
    assert_true(s.syncs >= 1);
    assert_true(s.syncs <= 100);
    /* appends that did not ask for durability cost no fdatasync */
    append_range(j, t, 1000, 1100, 10, false);
    run_until(&f->loop, &t->n, 1100);
    assert_int_equal(stats(j).syncs, s.syncs);
    bw_ajournal_close(j);
}

/* A power loss left half a line at the end: skipped with a warning naming its line, cut off before the
   next write; an unterminated tail that happens to parse is torn too and never comes back. */
static void test_torn_last_line(void **state)
{
    fx_t *f = *state;
    tally_t *t = f->t;
    char logname[160];
    make_dir(f);
    write_file(f->path, "{\"i\":0}\n{\"i\":1}\n{\"i\":2}\n{\"i\":3,\"p\":\"xx", "w");
    int fd = capture_logs(f, logname, sizeof logname);
    bw_ajournal_t *j = open_j(f);
    seen_t *seen = calloc(1, sizeof *seen);
    assert_int_equal(bw_ajournal_replay(j, collect, seen), 3);
    char *log = end_capture(fd, logname);
    assert_int_equal(count_substr(log, "\"approval journal line skipped\""), 1);
    assert_non_null(strstr(log, "\"line\":4"));
    assert_non_null(strstr(log, "torn last line"));
    free(log);
    assert_int_equal(stats(j).skipped, 1);
    assert_int_equal(stats(j).lines, 3);
    t->next = 4; /* the tickets here are numbered after the records */
    append_range(j, t, 4, 5, 0, true);
    run_until(&f->loop, &t->n, 1);
    assert_all_ok(t, 4, 5);
    bw_ajournal_close(j);
    char *text = bw_test_read_file(f->path, NULL);
    assert_string_equal(text, "{\"i\":0}\n{\"i\":1}\n{\"i\":2}\n{\"i\":4,\"p\":\"\"}\n");
    free(text);
    /* a complete object without its newline is still a torn line */
    write_file(f->path, "{\"i\":9}", "a");
    uint64_t skipped = 0;
    free(seen);
    seen = replay_dir(f, &skipped);
    assert_int_equal(seen->n, 4);
    assert_int_equal(skipped, 1);
    j = open_j(f);
    append_range(j, t, 5, 6, 0, false);
    run_until(&f->loop, &t->n, 2);
    bw_ajournal_close(j);
    free(seen);
    seen = replay_dir(f, &skipped);
    assert_int_equal(seen->n, 5);
    assert_int_equal(skipped, 0);
    int want[] = {0, 1, 2, 4, 5};
    for (int i = 0; i < 5; i++)
        assert_int_equal(seen->i[i], want[i]);
    free(seen);
}

static void test_corrupt_lines_skipped(void **state)
{
    fx_t *f = *state;
    char logname[160];
    make_dir(f);
    write_file(f->path, "{\"i\":0}\ngarbage{\n{\"i\":1}\n[1,2]\n\n\"str\"\n{\"i\":2}\n", "w");
    int fd = capture_logs(f, logname, sizeof logname);
    uint64_t skipped = 0;
    seen_t *seen = replay_dir(f, &skipped);
    char *log = end_capture(fd, logname);
    assert_int_equal(seen->n, 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(seen->i[i], i);
    assert_int_equal(skipped, 4);
    assert_int_equal(count_substr(log, "\"approval journal line skipped\""), 4);
    assert_non_null(strstr(log, "\"line\":2,"));
    assert_non_null(strstr(log, "\"line\":4,"));
    assert_non_null(strstr(log, "\"line\":5,"));
    assert_non_null(strstr(log, "\"line\":6,"));
    free(log);
    free(seen);
}

/* A line far past the limit is skipped without being held (peak RSS stays well below its size). */
static void test_overlong_line_not_held(void **state)
{
    fx_t *f = *state;
    const size_t mib = 1 << 20, huge_mib = 96;
    make_dir(f);
    write_file(f->path, "{\"i\":0}\n{\"i\":1,\"p\":\"", "w");
    char *chunk = malloc(mib);
    memset(chunk, 'x', mib);
    FILE *fp = fopen(f->path, "a");
    for (size_t k = 0; k < huge_mib; k++)
        assert_int_equal(fwrite(chunk, 1, mib, fp), mib);
    fputs("\"}\n{\"i\":2}\n", fp);
    fclose(fp);
    free(chunk);
    struct rusage before, after;
    getrusage(RUSAGE_SELF, &before);
    uint64_t skipped = 0;
    seen_t *seen = replay_dir(f, &skipped);
    getrusage(RUSAGE_SELF, &after);
    printf("replay of a %zu MiB line: peak RSS %ld -> %ld KiB\n", huge_mib, before.ru_maxrss,
           after.ru_maxrss);
    assert_int_equal(seen->n, 2);
    assert_int_equal(seen->i[0], 0);
    assert_int_equal(seen->i[1], 2);
    assert_int_equal(skipped, 1);
    assert_true(after.ru_maxrss - before.ru_maxrss < (long)(huge_mib / 2 * 1024));
    free(seen);
}

/* {"p":"xx…"} serialised to exactly len bytes. */
static json_t *rec_of_len(size_t len)
{
    char *p = malloc(len);
    memset(p, 'x', len - 8);
    p[len - 8] = '\0';
    json_t *r = json_pack("{s:s}", "p", p);
    free(p);
    return r;
}

/* Lines of exactly BW_AJOURNAL_MAX_LINE bytes are appended and replayed; one byte more is refused by
   append (E2BIG) and skipped by replay. A record that is not an object is refused (EINVAL). Callbacks
   stay in order. */
static void test_line_limit(void **state)
{
    fx_t *f = *state;
    tally_t *t = f->t;
    bw_ajournal_t *j = open_j(f);
    append_rec(j, t, 0, rec(0, 0), false);
    append_rec(j, t, 1, rec_of_len(BW_AJOURNAL_MAX_LINE), true);
    append_rec(j, t, 2, rec_of_len(BW_AJOURNAL_MAX_LINE + 1), true);
    append_rec(j, t, 3, json_pack("[i]", 3), true);
    append_rec(j, t, 4, rec(4, 0), true);
    run_until(&f->loop, &t->n, 5);
    assert_false(t->out_of_order);
    assert_int_equal(t->err[0], 0);
    assert_int_equal(t->err[1], 0);
    assert_int_equal(t->err[2], E2BIG);
    assert_int_equal(t->err[3], EINVAL);
    assert_int_equal(t->err[4], 0);
    bw_ajournal_stats_t s = stats(j);
    assert_int_equal(s.appends, 3);
    assert_int_equal(s.errors, 2);
    bw_ajournal_close(j);
    assert_int_equal(file_size(f->path), 15 + BW_AJOURNAL_MAX_LINE + 1 + 15);
    /* a line one byte over, written by hand, is skipped at replay */
    json_t *over = rec_of_len(BW_AJOURNAL_MAX_LINE + 1);
    char *line = json_dumps(over, JSON_COMPACT);
    json_decref(over);
    assert_int_equal(strlen(line), BW_AJOURNAL_MAX_LINE + 1);
    write_file(f->path, line, "a");
    write_file(f->path, "\n{\"i\":5}\n", "a");
    free(line);
    uint64_t skipped = 0;
    seen_t *seen = replay_dir(f, &skipped);
    assert_int_equal(seen->n, 4); /* 0, the one at the limit, 4, 5 */
    assert_int_equal(seen->i[0], 0);
    assert_int_equal(seen->i[2], 4);
    assert_int_equal(seen->i[3], 5);
    assert_int_equal(skipped, 1);
    free(seen);
}

static void test_lock(void **state)
{
    fx_t *f = *state;
    char err[1024], want[1024];
    bw_ajournal_t *a = open_j(f);
    /* a second opener in this very process has its own open file description: refused */
    assert_null(bw_ajournal_open(&f->loop, f->dir, err, sizeof err));
    snprintf(want, sizeof want, "APPROVAL_DIR %s is in use by another worker (pid %ld)", f->dir,
             (long)getpid());
    assert_string_equal(err, want);
    /* the refused opener changed nothing */
    tally_t *t = f->t;
    append_range(a, t, 0, 1, 5, true);
    run_until(&f->loop, &t->n, 1);
    assert_all_ok(t, 0, 1);
    bw_ajournal_close(a);
    bw_ajournal_t *b = open_j(f);
    bw_ajournal_close(b);
    /* a directory that cannot be made: the message names APPROVAL_DIR, the path and the error */
    char file[256], dir[300];
    snprintf(file, sizeof file, "%s/afile", f->root);
    write_file(file, "x", "w");
    snprintf(dir, sizeof dir, "%s/sub", file);
    assert_null(bw_ajournal_open(&f->loop, dir, err, sizeof err));
    snprintf(want, sizeof want, "APPROVAL_DIR %s: cannot create directory %s: %s", dir, dir,
             strerror(ENOTDIR));
    assert_string_equal(err, want);
    assert_null(bw_ajournal_open(&f->loop, "", err, sizeof err));
    assert_string_equal(err, "APPROVAL_DIR : cannot create directory : No such file or directory");
    bw_ajournal_close(NULL);
}

static void check_order(const tally_t *t, int from, int to)
{
    for (int i = from; i < to; i++)
        assert_int_equal(t->err[i], 0);
}

/* Appends queued before a compaction complete first; the file then holds exactly the records given;
   appends after it land in the new file. */
static void test_compaction(void **state)
{
    fx_t *f = *state;
    tally_t *t = f->t;
    bw_ajournal_t *j = open_j(f);
    append_range(j, t, 0, 100, 50, true);
    json_t *live = json_array();
    for (int i = 0; i < 100; i += 2)
        json_array_append_new(live, json_pack("{s:i}", "i", i));
    t->tk[100] = (ticket_t){t, 100};
    bw_ajournal_compact(j, live, on_done, &t->tk[100]);
    json_decref(live);
    append_range(j, t, 101, 111, 0, true);
    run_until(&f->loop, &t->n, 111);
    assert_false(t->out_of_order);
    check_order(t, 0, 111);
    bw_ajournal_stats_t s = stats(j);
    assert_int_equal(s.compactions, 1);
    assert_int_equal(s.lines, 60);
    assert_int_equal(s.bytes, file_size(f->path));
    bw_ajournal_close(j);
    char tmp[256];
    snprintf(tmp, sizeof tmp, "%s/%s.tmp", f->dir, BW_AJOURNAL_FILE);
    assert_int_equal(file_size(tmp), -1);
    uint64_t skipped = 1;
    seen_t *seen = replay_dir(f, &skipped);
    assert_int_equal(seen->n, 60);
    assert_int_equal(skipped, 0);
    for (int k = 0; k < 50; k++)
        assert_int_equal(seen->i[k], 2 * k);
    for (int k = 0; k < 10; k++)
        assert_int_equal(seen->i[50 + k], 101 + k);
    free(seen);
    /* compacting to nothing leaves an empty file */
    j = open_j(f);
    memset(t, 0, sizeof *t);
    live = json_array();
    t->tk[0] = (ticket_t){t, 0};
    bw_ajournal_compact(j, live, on_done, &t->tk[0]);
    json_decref(live);
    run_until(&f->loop, &t->n, 1);
    assert_int_equal(t->err[0], 0);
    assert_int_equal(file_size(f->path), 0);
    bw_ajournal_close(j);
}

/* A compaction that fails keeps the old file, removes the tmp file and reports the errno. */
static void test_compaction_failure(void **state)
{
    fx_t *f = *state;
    tally_t *t = f->t;
    struct rlimit old, lim;
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    bw_ajournal_t *j = open_j(f);
    append_range(j, t, 0, 10, 10, true);
    run_until(&f->loop, &t->n, 10);
    char *before = bw_test_read_file(f->path, NULL);
    json_t *live = json_array();
    for (int i = 0; i < 40; i++)
        json_array_append_new(live, rec(i, 10));
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = 500; /* the new file (40 lines of 25 bytes) does not fit */
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    t->tk[10] = (ticket_t){t, 10};
    bw_ajournal_compact(j, live, on_done, &t->tk[10]);
    run_until(&f->loop, &t->n, 11);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, old_handler);
    json_decref(live);
    assert_int_equal(t->err[10], EFBIG);
    char tmp[256], *after = bw_test_read_file(f->path, NULL);
    snprintf(tmp, sizeof tmp, "%s/%s.tmp", f->dir, BW_AJOURNAL_FILE);
    assert_int_equal(file_size(tmp), -1);
    assert_string_equal(after, before);
    free(before);
    free(after);
    assert_int_equal(stats(j).compactions, 0);
    /* the old file stays in use */
    append_range(j, t, 11, 12, 0, true);
    run_until(&f->loop, &t->n, 12);
    assert_int_equal(t->err[11], 0);
    bw_ajournal_close(j);
    seen_t *seen = replay_dir(f, NULL);
    assert_int_equal(seen->n, 11);
    assert_int_equal(seen->i[10], 11);
    free(seen);
}

/* RLIMIT_FSIZE stops a write part-way (EFBIG): the line is cut off, the append fails, later ones work. */
static void test_efbig_rolled_back(void **state)
{
    fx_t *f = *state;
    tally_t *t = f->t;
    struct rlimit old, lim;
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    bw_ajournal_t *j = open_j(f);
    append_range(j, t, 0, 10, 85, true); /* 10 lines of 100 bytes */
    run_until(&f->loop, &t->n, 10);
    assert_all_ok(t, 0, 10);
    assert_int_equal(file_size(f->path), 1000);
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = 1050; /* the next line stops after 50 bytes */
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    append_range(j, t, 10, 11, 85, true);
    run_until(&f->loop, &t->n, 11);
    assert_int_equal(t->err[10], EFBIG);
    assert_int_equal(file_size(f->path), 1000); /* no torn line */
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, old_handler);
    append_range(j, t, 11, 12, 85, true);
    run_until(&f->loop, &t->n, 12);
    assert_int_equal(t->err[11], 0);
    bw_ajournal_stats_t s = stats(j);
    assert_int_equal(s.appends, 11);
    assert_int_equal(s.errors, 1);
    assert_int_equal(s.bytes, 1101);
    assert_false(t->out_of_order);
    bw_ajournal_close(j);
    uint64_t skipped = 1;
    seen_t *seen = replay_dir(f, &skipped);
    assert_int_equal(seen->n, 11);
    assert_int_equal(skipped, 0);
    for (int i = 0; i < 10; i++)
        assert_int_equal(seen->i[i], i);
    assert_int_equal(seen->i[10], 11);
    free(seen);
}

/* Part of a group commit fits: the whole lines before the limit succeed, the rest fail, none is torn. */
static void test_efbig_within_a_batch(void **state)
{
    fx_t *f = *state;
    tally_t *t = f->t;
    struct rlimit old, lim;
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    bw_ajournal_t *j = open_j(f);
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = 350;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    append_range(j, t, 0, 5, 85, true); /* one batch or several: 3 whole lines of 100 bytes fit */
    run_until(&f->loop, &t->n, 5);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, old_handler);
    assert_false(t->out_of_order);
    assert_all_ok(t, 0, 3);
    assert_int_equal(t->err[3], EFBIG);
    assert_int_equal(t->err[4], EFBIG);
    assert_int_equal(file_size(f->path), 300);
    bw_ajournal_close(j);
    seen_t *seen = replay_dir(f, NULL);
    assert_int_equal(seen->n, 3);
    free(seen);
}

/* The thread blocks every signal: with SIGXFSZ at its default action (end the process), a write past
   RLIMIT_FSIZE only fails its append. */
static void test_efbig_with_default_sigxfsz(void **state)
{
    fx_t *f = *state;
    tally_t *t = f->t;
    struct rlimit old, lim;
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_DFL);
    bw_ajournal_t *j = open_j(f);
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = 50;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    append_range(j, t, 0, 1, 85, true);
    run_until(&f->loop, &t->n, 1);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, old_handler);
    assert_int_equal(t->err[0], EFBIG);
    assert_int_equal(file_size(f->path), 0);
    bw_ajournal_close(j);
}

/* close writes what is queued and runs every callback before it returns, without the loop. */
static void test_close_runs_pending_callbacks(void **state)
{
    fx_t *f = *state;
    tally_t *t = f->t;
    bw_ajournal_t *j = open_j(f);
    append_range(j, t, 0, 500, 20, false);
    append_range(j, t, 500, 600, 20, true);
    bw_ajournal_close(j);
    assert_int_equal(t->n, 600);
    assert_all_ok(t, 0, 600);
    seen_t *seen = replay_dir(f, NULL);
    assert_int_equal(seen->n, 600);
    free(seen);
    /* nothing ever appended */
    bw_ajournal_close(open_j(f));
    assert_int_equal(bw_test_threads_named("bw-approvals\n"), 0);
}

/* For the report: 10,000 durable appends of ~500-byte records, all queued at once, then 1,000 one after
   the other (each waits for its fdatasync). Printed, not asserted. */
static void test_measure(void **state)
{
    fx_t *f = *state;
    tally_t *t = f->t;
    bw_ajournal_t *j = open_j(f);
    int64_t t0 = bw_test_now_ms();
    append_range(j, t, 0, 10000, 485, true);
    run_until(&f->loop, &t->n, 10000);
    int64_t burst_ms = bw_test_now_ms() - t0;
    assert_all_ok(t, 0, 10000);
    bw_ajournal_stats_t s = stats(j);
    printf("measure: 10000 durable appends of %llu bytes queued at once: %lld ms, %llu fdatasync\n",
           (unsigned long long)(s.bytes / 10000), (long long)burst_ms, (unsigned long long)s.syncs);
    memset(t, 0, sizeof *t);
    t0 = bw_test_now_ms();
    for (int i = 0; i < 1000; i++) {
        append_rec(j, t, i, rec(i, 485), true);
        run_until(&f->loop, &t->n, i + 1);
    }
    int64_t serial_ms = bw_test_now_ms() - t0;
    printf("measure: 1000 durable appends one at a time: %lld ms (%.2f ms each), %llu fdatasync\n",
           (long long)serial_ms, serial_ms / 1000.0, (unsigned long long)(stats(j).syncs - s.syncs));
    bw_ajournal_close(j);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_round_trip),
        T(test_callback_after_write),
        T(test_group_commit),
        T(test_torn_last_line),
        T(test_corrupt_lines_skipped),
        T(test_overlong_line_not_held),
        T(test_line_limit),
        T(test_lock),
        T(test_compaction),
        T(test_compaction_failure),
        T(test_efbig_rolled_back),
        T(test_efbig_within_a_batch),
        T(test_efbig_with_default_sigxfsz),
        T(test_close_runs_pending_callbacks),
        T(test_measure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
