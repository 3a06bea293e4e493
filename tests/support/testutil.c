/*
 * Helpers shared by the test support modules. The spawn helper matters most: a test that crashes
 * or is killed by the CTest timeout must not leave a nats-server or worker running, so every child
 * asks the kernel for SIGKILL when its parent dies, and it inherits none of the test's sockets
 * (an inherited NATS socket would keep a "closed" test connection alive on the server).
 */
#include "testutil.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <stdbool.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <grp.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

int64_t bw_test_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void bw_test_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Reads everything from fd into a growing buffer; NULL on error. */
static char *read_all(int fd, size_t *len)
{
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);

    while (buf != NULL) {
        if (cap - n < 2048) {
            char *bigger = realloc(buf, cap * 2);
            if (bigger == NULL)
                break;
            buf = bigger;
            cap *= 2;
        }
        ssize_t r = read(fd, buf + n, cap - n - 1);
        if (r == 0) {
            buf[n] = '\0';
            if (len != NULL)
                *len = n;
            return buf;
        }
        if (r < 0 && errno != EINTR)
            break;
        n += r > 0 ? (size_t)r : 0;
    }
    free(buf);
    return NULL;
}

char *bw_test_read_file(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    char *buf = NULL;

    if (fd < 0)
        goto out;
    buf = read_all(fd, len);
out:
    if (fd >= 0)
        close(fd);
    return buf;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

int bw_test_rm_rf(const char *path)
{
    struct stat st;

    if (lstat(path, &st) != 0)
        return errno == ENOENT ? 0 : -1;
    /* FTW_DEPTH visits children before their directory, so each directory is empty when removed. */
    return nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS) == 0 ? 0 : -1;
}

int bw_test_tcp_probe(int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int rc = -1;

    if (fd < 0 || port <= 0 || port > 65535)
        goto out;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 ? 0 : -1;
out:
    if (fd >= 0)
        close(fd);
    return rc;
}

/* Runs in the forked child, so only async-signal-safe calls until execve. */
static void child_exec(pid_t parent, const char *path, char *const argv[], char *const envp[],
                       const int fds[3], const bw_test_spawn_opts_t *opts)
{
    sigset_t none;
    int devnull = open("/dev/null", O_RDWR);
    int src[3];

    if (opts != NULL && opts->new_pgrp && setpgid(0, 0) != 0)
        _exit(127);
    /* Groups before the uid: once the uid is dropped, changing groups is no longer allowed. */
    if (opts != NULL && opts->set_ids &&
        (setgroups(0, NULL) != 0 || setgid(opts->gid) != 0 || setuid(opts->uid) != 0))
        _exit(127);
    /* Armed after setuid, which resets it (credential changes clear the parent-death signal). */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
        _exit(127); /* the parent already died between fork and prctl */
    if (opts != NULL && opts->cwd != NULL && chdir(opts->cwd) != 0)
        _exit(127);
    /* A test run without stdin (CI) can get descriptors 0..2 from pipe() or open(); lift them
       above 2 first so that installing one stdio slot cannot clobber another's source. */
    for (int i = 0; i < 3; i++) {
        src[i] = fds[i] >= 0 ? fds[i] : devnull;
        if (src[i] >= 0 && src[i] < 3)
            src[i] = fcntl(src[i], F_DUPFD, 3);
    }
    for (int i = 0; i < 3; i++) {
        if (src[i] < 0 || dup2(src[i], i) < 0)
            _exit(127);
        fcntl(i, F_SETFD, 0); /* clear FD_CLOEXEC inherited from the source */
    }
    if (close_range(3, ~0U, 0) != 0) {
        for (int fd = 3; fd < 4096; fd++) /* kernels older than 5.9 */
            close(fd);
    }
    /* Ignored signals and the blocked mask survive exec; the child must start clean. */
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    execve(path, argv, envp != NULL ? envp : environ);
    _exit(127);
}

pid_t bw_test_spawn(const char *path, char *const argv[], char *const envp[], const int fds[3])
{
    return bw_test_spawn_ex(path, argv, envp, fds, NULL);
}

pid_t bw_test_spawn_ex(const char *path, char *const argv[], char *const envp[], const int fds[3],
                       const bw_test_spawn_opts_t *opts)
{
    pid_t parent = getpid();
    pid_t pid = fork();

    if (pid == 0)
        child_exec(parent, path, argv, envp, fds, opts);
    /* Both sides set the group, so a kill(-pid) right after fork cannot miss it; EACCES once the
       child has exec'd is harmless (it did it itself). */
    if (pid > 0 && opts != NULL && opts->new_pgrp)
        setpgid(pid, pid);
    return pid < 0 ? -1 : pid;
}

int bw_test_reap(pid_t pid, int *status)
{
    int st = 0;
    pid_t r;

    do {
        r = waitpid(pid, &st, WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r < 0)
        return -1;
    if (r == 0)
        return 0;
    if (status != NULL)
        *status = st;
    return 1;
}

void bw_test_terminate(pid_t pid, int grace_ms)
{
    int64_t deadline = bw_test_now_ms() + grace_ms;

    kill(pid, SIGTERM);
    while (bw_test_now_ms() < deadline) {
        if (bw_test_reap(pid, NULL) != 0)
            return;
        bw_test_sleep_ms(10);
    }
    kill(pid, SIGKILL);
    while (bw_test_reap(pid, NULL) == 0)
        bw_test_sleep_ms(10);
}

int bw_test_exit_code(int status)
{
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return -1;
}

/* /proc/<pid>/stat from field 3 (the state) on, in buf; NULL when it cannot be read. Field 2 (the name)
   may hold spaces and parentheses: the fields resume after the last ')'. */
static const char *stat_fields(int pid, char *buf, size_t len)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return NULL;
    size_t n = fread(buf, 1, len - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *rp = strrchr(buf, ')');
    return rp != NULL && rp[1] == ' ' ? rp + 2 : NULL;
}

int bw_test_proc_stat(int pid, char *state, int *ppid)
{
    char buf[512];
    const char *f = stat_fields(pid, buf, sizeof buf);
    return f != NULL && sscanf(f, "%c %d", state, ppid) == 2 ? 0 : -1;
}

int64_t bw_test_proc_cpu_ms(int pid)
{
    char buf[1024];
    unsigned long long utime = 0, stime = 0;
    const char *f = stat_fields(pid, buf, sizeof buf);
    /* from the state (field 3) on: utime and stime are fields 14 and 15 */
    if (f == NULL || sscanf(f, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
        return -1;
    long hz = sysconf(_SC_CLK_TCK);
    return (int64_t)((utime + stime) * 1000ull / (unsigned long long)(hz > 0 ? hz : 100));
}

/* ---- skips and test selection ------------------------------------------------------------ */

static int skipped, failed_later;

/* Runs at exit (registered once, by the first bw_test_fail_later): ends the process with status 1. */
static void exit_failed(void)
{
    fflush(NULL);
    _exit(1);
}

void bw_test_fail_later(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "[  FAILED  ] ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (the program will exit 1)\n");
    if (failed_later++ == 0)
        atexit(exit_failed);
}

void bw_test_note_skip(const char *test, const char *why)
{
    skipped++;
    fprintf(stderr, "SKIPPED %s: %s\n", test, why);
}

int bw_test_exit_status(int failed)
{
    if (failed != 0)
        return failed;
    if (skipped > 0)
        fprintf(stderr, "%d test(s) skipped: exit 77 (CTest: Skipped)\n", skipped);
    return skipped > 0 ? 77 : 0;
}

void bw_test_select(int argc, char **argv, const char *const *names, size_t n)
{
    for (int i = 1; i < argc; i++) {
        int only = strncmp(argv[i], "--only=", 7) == 0, but = strncmp(argv[i], "--skip=", 7) == 0;
        size_t k = 0;
        while ((only || but) && k < n && strcmp(names[k], argv[i] + 7) != 0)
            k++;
        if (!(only || but) || k == n) {
            fprintf(stderr, "%s: %s: not --only=TEST or --skip=TEST with a test of this program\n", argv[0],
                    argv[i]);
            exit(2);
        }
        if (only)
            cmocka_set_test_filter(argv[i] + 7);
        else
            cmocka_set_skip_filter(argv[i] + 7);
    }
}

int bw_test_run_groups(int argc, char **argv, const bw_test_group_t *groups, size_t n, const char *filter_env)
{
    size_t total = 0, k = 0;
    for (size_t g = 0; g < n; g++)
        total += groups[g].count;
    const char **names = calloc(total + 1, sizeof *names);
    for (size_t g = 0; g < n; g++)
        for (size_t t = 0; t < groups[g].count; t++)
            names[k++] = groups[g].tests[t].name;
    bw_test_select(argc, argv, names, total);
    free(names);
    const char *only = filter_env != NULL ? getenv(filter_env) : NULL;
    int failed = 0;
    for (size_t g = 0; g < n; g++)
        if (only == NULL || strstr(groups[g].name, only) != NULL)
            failed += _cmocka_run_group_tests(groups[g].name, groups[g].tests, groups[g].count,
                                              groups[g].setup, groups[g].teardown);
    return failed;
}

int bw_test_threads_named(const char *name)
{
    DIR *dh = opendir("/proc/self/task");
    struct dirent *e;
    int n = 0;
    if (dh == NULL)
        return -1;
    while ((e = readdir(dh)) != NULL) {
        char comm_path[300], *comm;
        snprintf(comm_path, sizeof comm_path, "/proc/self/task/%s/comm", e->d_name);
        if (e->d_name[0] == '.' || (comm = bw_test_read_file(comm_path, NULL)) == NULL)
            continue;
        n += strcmp(comm, name) == 0;
        free(comm);
    }
    closedir(dh);
    return n;
}

int bw_test_closed_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

int bw_test_children(int parent, int *pids, int max)
{
    int n = 0, ppid;
    char state;
    DIR *d = opendir("/proc");
    struct dirent *e;
    while (d != NULL && (e = readdir(d)) != NULL && n < max) {
        int pid = atoi(e->d_name);
        if (pid > 0 && bw_test_proc_stat(pid, &state, &ppid) == 0 && ppid == parent && state != 'Z')
            pids[n++] = pid;
    }
    if (d != NULL)
        closedir(d);
    return n;
}

/* Whether a sandbox has finished starting (it confines itself in seccomp filter mode only then). */
static bool sandbox_confined(int pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    char *status = bw_test_read_file(path, NULL);
    bool yes = status != NULL && strstr(status, "\nSeccomp:\t2\n") != NULL;
    free(status);
    return yes;
}

int bw_test_busy_sandbox(int worker, int timeout_ms)
{
    int pids[8], seen[8] = {0};
    int64_t base[8], end = bw_test_now_ms() + timeout_ms;
    int nseen = 0;
    while (bw_test_now_ms() < end) {
        int n = bw_test_children(worker, pids, 8);
        for (int i = 0; i < n; i++) {
            int64_t cpu = bw_test_proc_cpu_ms(pids[i]);
            int k = 0;
            while (k < nseen && seen[k] != pids[i])
                k++;
            if (k == nseen && nseen < 8 && sandbox_confined(pids[i])) {
                seen[nseen] = pids[i];
                base[nseen++] = cpu;
            } else if (k < nseen && cpu >= 0 && cpu - base[k] >= 500) {
                return pids[i];
            }
        }
        bw_test_sleep_ms(20);
    }
    fail_msg("no sandbox of worker %d started running a script within %d ms", worker, timeout_ms);
    return -1;
}

int bw_test_log_most_running(const char *log_path, const char *prefix, int *started, int *finished,
                             int *queued)
{
    char *log = bw_test_read_file(log_path, NULL), *save = NULL;
    int running = 0, most = 0, n[3] = {0, 0, 0};
    for (char *line = log != NULL ? strtok_r(log, "\n", &save) : NULL; line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        if (strstr(line, prefix) == NULL)
            continue;
        json_t *j = json_loads(line, 0, NULL);
        const char *msg = json_string_value(json_object_get(j, "msg"));
        const char *id = json_string_value(json_object_get(j, "assignment_id"));
        if (msg != NULL && id != NULL && strncmp(id, prefix, strlen(prefix)) == 0) {
            bool start = strcmp(msg, "job started") == 0, end = strcmp(msg, "job finished") == 0;
            running += start;
            most = running > most ? running : most;
            running -= end;
            n[0] += start;
            n[1] += end;
            n[2] += strcmp(msg, "job queued") == 0;
        }
        json_decref(j);
    }
    free(log);
    if (started != NULL)
        *started = n[0];
    if (finished != NULL)
        *finished = n[1];
    if (queued != NULL)
        *queued = n[2];
    return most;
}
