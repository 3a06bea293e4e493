/*
 * Unit: the daemon's SIGTERM/SIGINT handling (core/signals.c) in a child process. The first signal
 * reaches the loop (its callback runs there); the second ends the process with 128 + signal from the
 * handler itself even while the loop thread is busy and never returns to the loop: a uv_signal watcher
 * would only run once the loop polls again, which a spinning thread never does.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/signals.h"
#include "testutil.h"

static int report_fd = -1;

static void noop_timer(uv_timer_t *t)
{
}

static void first_stops_loop(void *ud, int signum)
{
    char c = (char)signum;
    ssize_t w = write(report_fd, &c, 1);
    (void)w;
    uv_stop(ud);
}

/* Child: the first signal runs the callback on the loop, which stops it; exit 0. */
static void child_loop(int fd)
{
    uv_loop_t loop;
    report_fd = fd;
    uv_loop_init(&loop);
    if (bw_signals_install(&loop, first_stops_loop, &loop, "unit", true) != 0)
        _exit(3);
    ssize_t w = write(fd, "r", 1); /* ready */
    (void)w;
    uv_timer_t keepalive;
    uv_timer_init(&loop, &keepalive);
    uv_timer_start(&keepalive, noop_timer, 60000, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    _exit(0);
}

/* Child: the loop thread spins and never polls again; only the handler can end the process. */
static void child_spin(int fd)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    if (bw_signals_install(&loop, first_stops_loop, &loop, "unit", true) != 0)
        _exit(3);
    ssize_t w = write(fd, "r", 1);
    (void)w;
    int seen = 0;
    for (;;) { /* the stuck handler: reports each signal it sees counted, never runs the loop */
        int n = bw_signals_received();
        if (n != seen) {
            seen = n;
            w = write(fd, "1", 1);
        }
    }
}

static pid_t spawn(void (*child)(int), int *rd)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        child(p[1]);
    }
    close(p[1]);
    *rd = p[0];
    return pid;
}

/* Reads one byte within timeout_ms; -1 on timeout or EOF. */
static int read_byte(int fd, int timeout_ms)
{
    int64_t end = bw_test_now_ms() + timeout_ms;
    char c;
    while (bw_test_now_ms() < end) {
        struct timeval tv = {0, 20000};
        fd_set set;
        FD_ZERO(&set);
        FD_SET(fd, &set);
        if (select(fd + 1, &set, NULL, NULL, &tv) > 0)
            return read(fd, &c, 1) == 1 ? (unsigned char)c : -1;
    }
    return -1;
}

static int wait_exit(pid_t pid, int timeout_ms)
{
    int64_t end = bw_test_now_ms() + timeout_ms;
    int st = 0;
    while (bw_test_now_ms() < end) {
        if (waitpid(pid, &st, WNOHANG) == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 1000 + WTERMSIG(st);
        bw_test_sleep_ms(5);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    return -1;
}

static void test_first_signal_reaches_the_loop(void **state)
{
    int rd;
    pid_t pid = spawn(child_loop, &rd);
    assert_int_equal(read_byte(rd, 5000), 'r');
    assert_int_equal(kill(pid, SIGTERM), 0);
    assert_int_equal(read_byte(rd, 5000), SIGTERM); /* the callback ran, with the signal number */
    assert_int_equal(wait_exit(pid, 5000), 0);      /* a graceful exit, not the default death */
    close(rd);
}

static void second_signal_while_spinning(int sig, int want)
{
    int rd;
    pid_t pid = spawn(child_spin, &rd);
    assert_int_equal(read_byte(rd, 5000), 'r');
    assert_int_equal(kill(pid, SIGTERM), 0);
    assert_int_equal(read_byte(rd, 5000), '1'); /* the first was counted; the process lives on */
    assert_int_equal(waitpid(pid, NULL, WNOHANG), 0);
    int64_t t0 = bw_test_now_ms();
    assert_int_equal(kill(pid, sig), 0);
    assert_int_equal(wait_exit(pid, 5000), want);
    print_message("second signal: exit %d after %lld ms\n", want, (long long)(bw_test_now_ms() - t0));
    close(rd);
}

static void test_second_sigterm_exits_while_the_loop_spins(void **state)
{
    second_signal_while_spinning(SIGTERM, 128 + SIGTERM);
}

static void test_sigint_after_sigterm_exits_130(void **state)
{
    second_signal_while_spinning(SIGINT, 128 + SIGINT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_first_signal_reaches_the_loop),
        cmocka_unit_test(test_second_sigterm_exits_while_the_loop_spins),
        cmocka_unit_test(test_sigint_after_sigterm_exits_130),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
