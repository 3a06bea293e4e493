/* Unit tests for cli/cli_sandbox.c: the js-sandbox child driven through a socketpair on its fds 0 and 1
   (forked from this process, as the pool would start it), frame by frame. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "util/clock.h"

typedef struct child {
    pid_t pid;
    int fd;
} child_t;

static child_t start_child(const char *max_rss_mb)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    int stray = open("/dev/null", O_RDONLY); /* inherited without CLOEXEC: the child must close it */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(sv[1], 0);
        dup2(sv[1], 1);
        if (max_rss_mb != NULL)
            setenv("BW_SANDBOX_MAX_RSS_MB", max_rss_mb, 1);
        else
            unsetenv("BW_SANDBOX_MAX_RSS_MB");
        _exit(bw_cli_sandbox());
    }
    close(stray);
    close(sv[1]);
    return (child_t){pid, sv[0]};
}

static void put_le32(unsigned char *p, uint32_t n)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(n >> (8 * i));
}

static void write_all(int fd, const void *p, size_t n)
{
    const char *s = p;
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        assert_true(w > 0);
        s += w;
        n -= (size_t)w;
    }
}

static void send_text(child_t *c, const char *json, size_t n)
{
    unsigned char h[4];
    put_le32(h, (uint32_t)n);
    write_all(c->fd, h, 4);
    write_all(c->fd, json, n);
}

static void send_json(child_t *c, json_t *req)
{
    char *text = json_dumps(req, JSON_COMPACT);
    send_text(c, text, strlen(text));
    free(text);
    json_decref(req);
}

static void send_job(child_t *c, int id, const char *code, int timeout_ms)
{
    send_json(c, json_pack("{s:i,s:s,s:{s:[{s:i,s:i},{s:i,s:i}]},s:i,s:i,s:i,s:i}", "id", id, "code", code,
                           "args", "items", "p", 2, "q", 3, "p", 4, "q", 5, "timeout_ms", timeout_ms,
                           "max_output_bytes", 1 << 20, "max_logs", 10, "max_log_bytes", 4096));
}

/* Reads exactly n bytes, each read within 60 s (a bound for a loaded machine); false on EOF. */
static bool read_all(int fd, void *p, size_t n)
{
    char *s = p;
    while (n > 0) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, 60000) != 1)
            fail_msg("no answer from the sandbox within 60 s");
        ssize_t r = read(fd, s, n);
        if (r <= 0)
            return false;
        s += r;
        n -= (size_t)r;
    }
    return true;
}

/* The next answer frame, or NULL on EOF. */
static json_t *read_answer(child_t *c)
{
    unsigned char h[4];
    if (!read_all(c->fd, h, 4))
        return NULL;
    uint32_t n = (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 24;
    char *body = malloc(n);
    assert_true(read_all(c->fd, body, n));
    json_t *resp = json_loadb(body, n, JSON_ALLOW_NUL, NULL);
    free(body);
    assert_non_null(resp);
    return resp;
}

/* Waits up to 30 s for the child to exit; returns its exit status (or 128 + signal). */
static int wait_exit(child_t *c)
{
    int st = 0;
    for (int i = 0; i < 3000; i++) {
        pid_t r = waitpid(c->pid, &st, WNOHANG);
        if (r == c->pid) {
            close(c->fd);
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    kill(c->pid, SIGKILL);
    waitpid(c->pid, &st, 0);
    fail_msg("the sandbox did not exit");
    return -1;
}

static void stop_child(child_t *c)
{
    shutdown(c->fd, SHUT_WR);
    assert_int_equal(wait_exit(c), 0);
}

static void test_frames_round_trip(void **state)
{
    child_t c = start_child(NULL);
    send_job(&c, 1, "args.items.map(i => i.p * i.q).reduce((a, b) => a + b, 0)", 30000);
    json_t *r = read_answer(&c);
    assert_int_equal(json_integer_value(json_object_get(r, "id")), 1);
    assert_true(json_is_true(json_object_get(r, "ok")));
    assert_int_equal(json_integer_value(json_object_get(r, "output")), 26);
    json_decref(r);

    /* pipelined requests are answered one by one, in order */
    send_job(&c, 2, "console.warn('w'); ({s: 'é\\u0000'})", 30000);
    send_job(&c, 3, "null.x", 30000);
    send_text(&c, "{not json", 9);
    send_job(&c, 4, "Promise.resolve(globalThis.leak = 1)", 30000);
    send_job(&c, 5, "typeof leak", 30000);
    /* JavaScriptCore's own console (reached by a computed name) must not write into the frames */
    send_job(&c, 6, "const k = 'con' + 'sole'; globalThis[k].log('x'); globalThis[k].error('y'); 6", 30000);
    r = read_answer(&c);
    assert_int_equal(json_integer_value(json_object_get(r, "id")), 2);
    assert_string_equal(json_string_value(json_object_get(json_object_get(r, "output"), "s")), "é");
    assert_int_equal(json_string_length(json_object_get(json_object_get(r, "output"), "s")), 3);
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(json_object_get(r, "logs"), 0), "level")), "warn");
    json_decref(r);
    r = read_answer(&c);
    assert_int_equal(json_integer_value(json_object_get(r, "id")), 3);
    assert_string_equal(json_string_value(json_object_get(r, "code")), "SCRIPT_ERROR");
    json_decref(r);
    r = read_answer(&c);
    assert_true(json_is_null(json_object_get(r, "id")));
    assert_string_equal(json_string_value(json_object_get(r, "code")), "INVALID_ARGS");
    json_decref(r);
    r = read_answer(&c);
    assert_int_equal(json_integer_value(json_object_get(r, "output")), 1);
    json_decref(r);
    r = read_answer(&c);
    assert_string_equal(json_string_value(json_object_get(r, "output")), "undefined");
    json_decref(r);
    r = read_answer(&c);
    assert_int_equal(json_integer_value(json_object_get(r, "id")), 6);
    assert_int_equal(json_integer_value(json_object_get(r, "output")), 6);
    json_decref(r);
    stop_child(&c); /* EOF: exit 0 */
}

/* A field of /proc/<pid>/status (or of one of its threads' status files). */
static char *status_field(const char *path, const char *field)
{
    char line[256];
    char *val = NULL;
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    while (val == NULL && fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, field, strlen(field)) == 0 && line[strlen(field)] == ':')
            val = strndup(line + strlen(field) + 1 + strspn(line + strlen(field) + 1, " \t"),
                          strcspn(line + strlen(field) + 1 + strspn(line + strlen(field) + 1, " \t"), "\n"));
    fclose(f);
    assert_non_null(val);
    return val;
}

static void expect_status(const char *path, const char *field, const char *want)
{
    char *v = status_field(path, field);
    if (strcmp(v, want) != 0)
        fail_msg("%s %s is %s, want %s", path, field, v, want);
    free(v);
}

static void test_confinement(void **state)
{
    char path[128], link[256];
    child_t c = start_child(NULL);
    send_job(&c, 1,
             "let s = 0; for (let i = 0; i < 3e6; i++) s += i; [].concat(new Array(1e5).fill({a: s})).length",
             30000); /* the JIT and the GC start their threads */
    json_t *r = read_answer(&c);
    assert_true(json_is_true(json_object_get(r, "ok")));
    json_decref(r);

    snprintf(path, sizeof path, "/proc/%d/status", (int)c.pid);
    expect_status(path, "Seccomp", "2"); /* filter mode */
    expect_status(path, "NoNewPrivs", "1");
    snprintf(path, sizeof path, "/proc/%d/task", (int)c.pid);
    int threads = 0;
    DIR *d = opendir(path);
    assert_non_null(d);
    for (struct dirent *e; (e = readdir(d)) != NULL;) { /* every thread carries the filter (TSYNC) */
        char tpath[512];
        if (e->d_name[0] == '.')
            continue;
        snprintf(tpath, sizeof tpath, "%s/%s/status", path, e->d_name);
        expect_status(tpath, "Seccomp", "2");
        threads++;
    }
    closedir(d);
    assert_true(threads >= 2);

    /* no inherited descriptor survives: only the frames' socket, stderr and JavaScriptCore's own */
    for (int fd = 3; fd < 64; fd++) {
        snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)c.pid, fd);
        ssize_t n = readlink(path, link, sizeof link - 1);
        if (n <= 0)
            continue;
        link[n] = '\0';
        if (strcmp(link, "/dev/null") == 0 || strncmp(link, "socket:", 7) == 0)
            fail_msg("the sandbox kept fd %d (%s)", fd, link);
    }
    snprintf(path, sizeof path, "/proc/%d/limits", (int)c.pid);
    FILE *f = fopen(path, "r");
    char line[256];
    long nofile = -1;
    while (fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, "Max open files", 14) == 0)
            nofile = atol(line + 26);
    fclose(f);
    assert_true(nofile > 3 && nofile <= 32);
    stop_child(&c);
}

static void test_time_limit_through_the_child(void **state)
{
    child_t c = start_child(NULL);
    send_job(&c, 0, "0", 30000); /* the child is ready (its start-up, realm included, is not the job's) */
    json_t *r = read_answer(&c);
    json_decref(r);
    uint64_t t0 = bw_mono_ms();
    send_job(&c, 1, "while (true) {}", 200);
    r = read_answer(&c);
    uint64_t took = bw_mono_ms() - t0;
    assert_string_equal(json_string_value(json_object_get(r, "code")), "SCRIPT_TIMEOUT");
    /* the engine's answer, not the backstop's (the child goes on below); bounds that hold on a loaded
       machine: the limit is wall-clock time, and the stop comes late by a slice of CPU time at most */
    assert_null(strstr(json_string_value(json_object_get(r, "message")), "replaced"));
    if (took < 200 || took >= 5000)
        fail_msg("while(true) with timeout_ms 200 answered after %llu ms", (unsigned long long)took);
    json_decref(r);
    send_job(&c, 2, "function f() { return Promise.resolve().then(f) } f()", 200);
    r = read_answer(&c);
    assert_string_equal(json_string_value(json_object_get(r, "code")), "SCRIPT_TIMEOUT");
    json_decref(r);
    send_job(&c, 3, "1 + 1", 30000); /* the child goes on */
    r = read_answer(&c);
    assert_int_equal(json_integer_value(json_object_get(r, "output")), 2);
    json_decref(r);
    stop_child(&c);
}

static void test_backstop_answers_and_exits(void **state)
{
    /* a catastrophic regular expression runs in native code that does not heed the time limit */
    child_t c = start_child(NULL);
    send_job(&c, 0, "0", 30000); /* the child is ready */
    json_t *r = read_answer(&c);
    json_decref(r);
    uint64_t t0 = bw_mono_ms();
    send_job(&c, 9, "/(a+)+b/.test('a'.repeat(40))", 20);
    r = read_answer(&c);
    uint64_t took = bw_mono_ms() - t0;
    assert_int_equal(json_integer_value(json_object_get(r, "id")), 9);
    assert_string_equal(json_string_value(json_object_get(r, "code")), "SCRIPT_TIMEOUT");
    assert_non_null(strstr(json_string_value(json_object_get(r, "message")), "replaced"));
    json_decref(r);
    /* the alarm is wall-clock time: timeout_ms + BACKSTOP_GRACE_MS (250), late only by scheduling */
    if (took < 20 + 250 || took >= 5000)
        fail_msg("the backstop answered after %llu ms", (unsigned long long)took);
    assert_int_equal(wait_exit(&c), 5);
}

static void test_oversize_frame_exits_3(void **state)
{
    child_t c = start_child(NULL);
    unsigned char h[4];
    put_le32(h, 64u * 1024 * 1024 + 1);
    write_all(c.fd, h, 4);
    assert_null(read_answer(&c));
    assert_int_equal(wait_exit(&c), 3);

    c = start_child(NULL); /* EOF in the middle of a frame ends the child too */
    put_le32(h, 100);
    write_all(c.fd, h, 4);
    write_all(c.fd, "{\"id\"", 5);
    stop_child(&c);
}

static void test_rss_self_limit_exits_4(void **state)
{
    child_t c = start_child("64");
    send_job(&c, 1, "1", 30000); /* a small job stays under the limit */
    json_t *r = read_answer(&c);
    assert_true(json_is_true(json_object_get(r, "ok")));
    json_decref(r);
    send_job(&c, 2, "const a = []; for (let i = 0; i < 25; i++) a.push(new Array(1e6).fill(i)); a.length",
             50000);
    r = read_answer(&c); /* answered first, then the child leaves */
    assert_int_equal(json_integer_value(json_object_get(r, "id")), 2);
    assert_int_equal(json_integer_value(json_object_get(r, "output")), 25);
    json_decref(r);
    assert_int_equal(wait_exit(&c), 4);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_frames_round_trip),
        cmocka_unit_test(test_confinement),
        cmocka_unit_test(test_time_limit_through_the_child),
        cmocka_unit_test(test_backstop_answers_and_exits),
        cmocka_unit_test(test_oversize_frame_exits_3),
        cmocka_unit_test(test_rss_self_limit_exits_4),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
