/*
 * Runs the worker binary under test. Background runs write stdout and stderr into one temp file
 * that tests poll: the worker logs JSON lines, and tests wait for "worker ready" before they
 * publish. Synchronous runs pump stdin/stdout/stderr through pipes with poll() so a chatty child
 * can never deadlock against a full pipe. Children never outlive the test (see bw_test_spawn).
 */
#include "proc.h"

#include "testutil.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef BW_WORKER_BIN
#error "BW_WORKER_BIN must be defined to the absolute path of the beamline-worker binary"
#endif

#define POLL_MS 10
#define RUN_TIMEOUT_MS 30000

extern char **environ;

/* ---- argv / envp ------------------------------------------------------------------------- */

static size_t count_strings(const char *const *v)
{
    size_t n = 0;

    while (v != NULL && v[n] != NULL)
        n++;
    return n;
}

/* {BW_WORKER_BIN, args..., NULL}; the array is malloc'd, the strings are borrowed. */
static char **build_argv(const char *const *args)
{
    size_t n = count_strings(args);
    char **argv = calloc(n + 2, sizeof(*argv));

    if (argv == NULL)
        return NULL;
    argv[0] = (char *)BW_WORKER_BIN;
    for (size_t i = 0; i < n; i++)
        argv[i + 1] = (char *)args[i];
    return argv;
}

/* True when env overrides the variable of entry ("K=V"): same K. */
static int overridden(const char *entry, const char *const *env)
{
    size_t klen = strcspn(entry, "=");

    for (size_t i = 0; env != NULL && env[i] != NULL; i++) {
        if (strncmp(env[i], entry, klen) == 0 && (env[i][klen] == '=' || env[i][klen] == '\0'))
            return 1;
    }
    return 0;
}

/* The current environment minus the overridden names, then env; strings are borrowed. */
static char **build_env(const char *const *env)
{
    size_t n_cur = count_strings((const char *const *)environ), n = 0;
    char **envp = calloc(n_cur + count_strings(env) + 1, sizeof(*envp));

    if (envp == NULL)
        return NULL;
    for (size_t i = 0; i < n_cur; i++) {
        if (!overridden(environ[i], env))
            envp[n++] = environ[i];
    }
    for (size_t i = 0; env != NULL && env[i] != NULL; i++)
        envp[n++] = (char *)env[i];
    return envp;
}

/* Spawns the worker with the given stdio descriptors; -1 on failure. */
static pid_t spawn_worker(const char *const *args, const char *const *env, const int fds[3])
{
    char **argv = build_argv(args);
    char **envp = build_env(env);
    pid_t pid = -1;

    if (argv == NULL || envp == NULL)
        goto out;
    pid = bw_test_spawn(BW_WORKER_BIN, argv, envp, fds);
out:
    free(envp);
    free(argv);
    return pid;
}

/* ---- background process ------------------------------------------------------------------ */

int bw_test_proc_start(bw_test_proc_t *p, const char *const *args, const char *const *env)
{
    int fds[3] = {-1, -1, -1};

    memset(p, 0, sizeof(*p));
    snprintf(p->log_path, sizeof(p->log_path), "/tmp/bw-worker-XXXXXX.log");
    fds[1] = fds[2] = mkostemps(p->log_path, 4, O_CLOEXEC);
    if (fds[1] < 0) {
        p->log_path[0] = '\0';
        return -1;
    }
    p->pid = spawn_worker(args, env, fds);
    close(fds[1]);
    if (p->pid > 0)
        return 0;
    p->pid = 0;
    unlink(p->log_path);
    p->log_path[0] = '\0';
    return -1;
}

/* Records the exit status once the child is gone; returns 1 when it has exited. */
static int poll_exit(bw_test_proc_t *p)
{
    if (!p->exited && p->pid > 0 && bw_test_reap(p->pid, &p->status) != 0)
        p->exited = 1;
    return p->exited || p->pid <= 0;
}

static int count_in(const char *hay, size_t hay_len, const char *needle)
{
    size_t nlen = strlen(needle);
    int n = 0;

    if (hay == NULL || nlen == 0)
        return 0;
    for (const char *at = hay; (at = memmem(at, hay_len - (size_t)(at - hay), needle, nlen)) != NULL;
         at += nlen)
        n++;
    return n;
}

int bw_test_proc_log_count(bw_test_proc_t *p, const char *needle)
{
    size_t len = 0;
    char *log = p->log_path[0] != '\0' ? bw_test_read_file(p->log_path, &len) : NULL;
    int n = count_in(log, len, needle);

    free(log);
    return n;
}

int bw_test_proc_wait_log(bw_test_proc_t *p, const char *needle, int timeout_ms)
{
    int64_t deadline = bw_test_now_ms() + timeout_ms;

    for (;;) {
        /* Check for exit before reading, so output written just before exiting is still seen. */
        int gone = poll_exit(p);
        if (bw_test_proc_log_count(p, needle) > 0)
            return 0;
        if (gone || bw_test_now_ms() >= deadline)
            return -1;
        bw_test_sleep_ms(POLL_MS);
    }
}

int bw_test_proc_signal(bw_test_proc_t *p, int sig)
{
    if (poll_exit(p))
        return -1;
    return kill(p->pid, sig) == 0 ? 0 : -1;
}

int bw_test_proc_wait(bw_test_proc_t *p, int timeout_ms, int *exit_code)
{
    int64_t deadline = bw_test_now_ms() + timeout_ms;

    while (!poll_exit(p)) {
        if (bw_test_now_ms() >= deadline)
            return -1;
        bw_test_sleep_ms(POLL_MS);
    }
    if (!p->exited)
        return -1; /* never started */
    if (exit_code != NULL)
        *exit_code = bw_test_exit_code(p->status);
    return 0;
}

void bw_test_proc_stop(bw_test_proc_t *p)
{
    if (!poll_exit(p)) {
        kill(p->pid, SIGKILL);
        while (!poll_exit(p))
            bw_test_sleep_ms(1);
    }
    if (p->log_path[0] != '\0' && getenv("BW_TEST_KEEP_LOGS") == NULL) {
        unlink(p->log_path);
        p->log_path[0] = '\0';
    }
}

void bw_test_proc_dump_log(bw_test_proc_t *p)
{
    size_t len = 0;
    char *log = p->log_path[0] != '\0' ? bw_test_read_file(p->log_path, &len) : NULL;

    fprintf(stderr, "----- worker log %s -----\n", p->log_path[0] != '\0' ? p->log_path : "(none)");
    if (log != NULL)
        fwrite(log, 1, len, stderr);
    fprintf(stderr, "----- end of worker log -----\n");
    free(log);
}

/* ---- synchronous run --------------------------------------------------------------------- */

typedef struct outbuf {
    char *data;
    size_t len, cap;
} outbuf_t;

typedef struct run_io {
    int fd[3];      /* parent ends: stdin (write), stdout, stderr (read); -1 once closed */
    const char *in; /* stdin data still to be written */
    size_t in_len;
    outbuf_t out[2]; /* stdout, stderr */
} run_io_t;

static int outbuf_append(outbuf_t *b, const char *p, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *data = realloc(b->data, cap);
        if (data == NULL)
            return -1;
        b->data = data;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

/* Writes as much stdin as the pipe takes; closes it when done or when the child stopped reading. */
static void feed_stdin(run_io_t *io)
{
    ssize_t w = write(io->fd[0], io->in, io->in_len);

    if (w > 0) {
        io->in += w;
        io->in_len -= (size_t)w;
    }
    if (io->in_len == 0 || (w < 0 && errno != EAGAIN && errno != EINTR))
        close_fd(&io->fd[0]);
}

/* Drains one output pipe into its buffer; closes it at EOF. */
static void drain(run_io_t *io, int which)
{
    char chunk[8192];
    ssize_t r = read(io->fd[which], chunk, sizeof(chunk));

    if (r > 0) {
        if (outbuf_append(&io->out[which - 1], chunk, (size_t)r) != 0)
            close_fd(&io->fd[which]); /* out of memory: stop collecting this stream */
        return;
    }
    if (r == 0 || (errno != EAGAIN && errno != EINTR))
        close_fd(&io->fd[which]);
}

/* Pumps the pipes until the child closed stdout and stderr. 0, or -1 at the deadline. */
static int pump(run_io_t *io, int64_t deadline)
{
    while (io->fd[1] >= 0 || io->fd[2] >= 0) {
        struct pollfd pfd[3];
        int64_t left = deadline - bw_test_now_ms();
        if (left <= 0)
            return -1;
        for (int i = 0; i < 3; i++)
            pfd[i] = (struct pollfd){.fd = io->fd[i], .events = i == 0 ? POLLOUT : POLLIN};
        if (poll(pfd, 3, (int)(left < 100 ? left : 100)) < 0 && errno != EINTR)
            return -1;
        if (io->fd[0] >= 0 && (pfd[0].revents & (POLLOUT | POLLERR | POLLHUP)))
            feed_stdin(io);
        for (int i = 1; i < 3; i++) {
            if (io->fd[i] >= 0 && (pfd[i].revents & (POLLIN | POLLERR | POLLHUP)))
                drain(io, i);
        }
    }
    return 0;
}

/* Pipes for the child's stdio: child ends in child[], parent ends in io->fd[]. */
static int make_pipes(run_io_t *io, int child[3])
{
    for (int i = 0; i < 3; i++) {
        int p[2];
        if (pipe2(p, O_CLOEXEC) != 0)
            return -1;
        child[i] = i == 0 ? p[0] : p[1];
        io->fd[i] = i == 0 ? p[1] : p[0];
    }
    /* Non-blocking stdin so a child that does not read cannot stall the pump. */
    return fcntl(io->fd[0], F_SETFL, O_NONBLOCK);
}

/* Pumps with SIGPIPE blocked on this thread (a child that exits early must not kill the test),
   then discards a SIGPIPE that became pending and restores the mask. */
static int pump_guarded(run_io_t *io, int64_t deadline)
{
    sigset_t pipe_set, old;
    struct timespec zero = {0, 0};
    int rc;

    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    rc = pump(io, deadline);
    while (sigtimedwait(&pipe_set, NULL, &zero) > 0) {
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

/* Gives the collected bytes to *dst (or NULL when the run failed); frees them otherwise. */
static void hand_out(outbuf_t *b, char **dst, int ok)
{
    if (dst != NULL) {
        *dst = !ok ? NULL : b->data != NULL ? b->data : strdup("");
        if (ok)
            b->data = NULL;
    }
    free(b->data);
}

/* Reaps pid, killing it once the deadline has passed (a child can close its output and still
   hang). Returns its exit code. */
static int finish(pid_t pid, int64_t deadline)
{
    int status = 0;

    while (bw_test_reap(pid, &status) == 0) {
        if (bw_test_now_ms() >= deadline) {
            kill(pid, SIGKILL);
            while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
            }
            break;
        }
        bw_test_sleep_ms(POLL_MS);
    }
    return bw_test_exit_code(status);
}

int bw_test_run(const char *const *args, const char *const *env, const char *stdin_data, char **out,
                char **err)
{
    run_io_t io = {.fd = {-1, -1, -1},
                   .in = stdin_data ? stdin_data : "",
                   .in_len = stdin_data ? strlen(stdin_data) : 0};
    int child[3] = {-1, -1, -1};
    int64_t deadline = bw_test_now_ms() + RUN_TIMEOUT_MS;
    pid_t pid = -1;
    int rc = -1;

    if (make_pipes(&io, child) != 0)
        goto out;
    pid = spawn_worker(args, env, child);
    for (int i = 0; i < 3; i++)
        close_fd(&child[i]);
    if (pid <= 0)
        goto out;
    if (io.in_len == 0)
        close_fd(&io.fd[0]);
    pump_guarded(&io, deadline);
    rc = finish(pid, deadline);
out:
    for (int i = 0; i < 3; i++) {
        close_fd(&child[i]);
        close_fd(&io.fd[i]);
    }
    hand_out(&io.out[0], out, rc >= 0);
    hand_out(&io.out[1], err, rc >= 0);
    return rc;
}

/* ---- CLI runs ---- */

#define CLI_MAX_LIVE 16
static char *cli_live[CLI_MAX_LIVE];

static void cli_remember(char *p)
{
    for (int i = 0; p != NULL && i < CLI_MAX_LIVE; i++)
        if (cli_live[i] == NULL) {
            cli_live[i] = p;
            return;
        }
}

static void cli_forget(char *p)
{
    for (int i = 0; p != NULL && i < CLI_MAX_LIVE; i++)
        if (cli_live[i] == p)
            cli_live[i] = NULL;
}

void bw_test_cli_dump(const bw_test_cli_t *r)
{
    fprintf(stderr, "exit %d after %lld ms\n--- stdout ---\n%s--- stderr ---\n%s--------------\n", r->rc,
            r->ms, r->out ? r->out : "(null)", r->err ? r->err : "(null)");
}

void bw_test_cli_run(bw_test_cli_t *r, const char *const *args, const char *const *env,
                     const char *stdin_data)
{
    int64_t t0 = bw_test_now_ms();
    r->out = r->err = NULL;
    r->rc = bw_test_run(args, env, stdin_data, &r->out, &r->err);
    r->ms = (long long)(bw_test_now_ms() - t0);
    if (r->rc < 0)
        fail_msg("could not run %s", BW_WORKER_BIN);
    cli_remember(r->out);
    cli_remember(r->err);
    if (strstr(r->err, "Sanitizer") != NULL || strstr(r->err, "runtime error:") != NULL) {
        bw_test_cli_dump(r);
        fail_msg("sanitizer report from '%s'", args[0]);
    }
}

void bw_test_cli_dispose(bw_test_cli_t *r)
{
    cli_forget(r->out);
    cli_forget(r->err);
    free(r->out);
    free(r->err);
    r->out = r->err = NULL;
}

int bw_test_cli_free_live(void **state)
{
    (void)state;
    for (int i = 0; i < CLI_MAX_LIVE; i++) {
        free(cli_live[i]);
        cli_live[i] = NULL;
    }
    return 0;
}
