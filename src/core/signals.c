/* See signals.h. Only async-signal-safe calls in the handler: an atomic, poll, write, _exit. The first signal
   reaches the loop through a self-pipe that stays open until the process ends (a uv_poll watches its
   read end), so a signal that arrives while the daemon closes its handles writes into a live pipe. */
#include "core/signals.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static atomic_int received;
static atomic_int first_signum;
static int pipe_fds[2] = {-1, -1};
static uv_poll_t poll_h;
static bool installed;
static void (*first_cb)(void *ud, int signum);
static void *first_ud;
static char line_term[512], line_int[512]; /* formatted before any signal can arrive */

static void on_signal(int signum)
{
    int saved = errno;
    if (atomic_fetch_add(&received, 1) == 0) {
        atomic_store(&first_signum, signum);
        ssize_t w = write(pipe_fds[1], "s", 1); /* non-blocking; one byte is all it takes */
        (void)w;
        errno = saved;
        return;
    }
    /* The line is written only when stdout can take it now: a stalled pipe (a log collector that stopped
       reading) must not hold up the exit. It may land between two lines of the log writer's. */
    const char *line = signum == SIGINT ? line_int : line_term;
    struct pollfd pfd = {.fd = STDOUT_FILENO, .events = POLLOUT};
    if (poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLOUT)) {
        ssize_t rc = write(STDOUT_FILENO, line, strlen(line));
        (void)rc;
    }
    _exit(128 + signum);
}

static void on_readable(uv_poll_t *h, int status, int events)
{
    char buf[16];
    while (read(pipe_fds[0], buf, sizeof buf) > 0)
        ;
    uv_poll_stop(h); /* one shutdown: the second signal never comes through here */
    if (first_cb != NULL)
        first_cb(first_ud, atomic_load(&first_signum));
}

static void format_line(char *out, size_t len, int signum, const char *worker_id, bool json)
{
    if (json)
        snprintf(out, len,
                 "{\"level\":\"warn\",\"msg\":\"second signal: exiting now\",\"worker_id\":\"%s\","
                 "\"signal\":%d,\"exit_code\":%d}\n",
                 worker_id, signum, 128 + signum);
    else
        snprintf(out, len,
                 "level=warn msg=\"second signal: exiting now\" worker_id=%s signal=%d exit_code=%d\n",
                 worker_id, signum, 128 + signum);
}

int bw_signals_install(uv_loop_t *loop, void (*first)(void *ud, int signum), void *ud, const char *worker_id,
                       bool json)
{
    struct sigaction sa;
    first_cb = first;
    first_ud = ud;
    format_line(line_term, sizeof line_term, SIGTERM, worker_id, json);
    format_line(line_int, sizeof line_int, SIGINT, worker_id, json);
    if (pipe2(pipe_fds, O_NONBLOCK | O_CLOEXEC) != 0 || uv_poll_init(loop, &poll_h, pipe_fds[0]) != 0)
        return -1;
    uv_poll_start(&poll_h, UV_READABLE, on_readable);
    uv_unref((uv_handle_t *)&poll_h);
    installed = true;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGINT, &sa, NULL) != 0)
        return -1;
    /* A restart (cli/main.c) execs this image with them blocked: a stop request that came meanwhile is
       pending and is delivered now, to the handler. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_UNBLOCK, &stop, NULL);
    return 0;
}

void bw_signals_uninstall(void)
{
    /* The handler stays: a second signal still ends the process at once; a first one only fills the
       pipe, which nobody reads any more. */
    if (!installed)
        return;
    if (!uv_is_closing((uv_handle_t *)&poll_h))
        uv_close((uv_handle_t *)&poll_h, NULL);
    installed = false;
}

int bw_signals_received(void)
{
    return atomic_load(&received);
}
