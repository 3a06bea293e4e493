/*
 * Small helpers shared by the test support modules: monotonic time, whole-file reads, recursive
 * removal, TCP probes and a fork/exec that ties the child's life to the test process.
 */
#ifndef BW_TEST_TESTUTIL_H
#define BW_TEST_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Milliseconds from CLOCK_MONOTONIC; only differences are meaningful. */
int64_t bw_test_now_ms(void);

/* Sleeps for ms milliseconds (restarting after signals). */
void bw_test_sleep_ms(int ms);

/* Reads a whole file into a malloc'd NUL-terminated buffer (caller frees); *len (may be NULL)
   gets the byte count without the NUL. NULL if the file cannot be read. */
char *bw_test_read_file(const char *path, size_t *len);
/* Replays a worker's debug log (JSON lines) in order for the assignments whose ids start with prefix: +1 at
   "job started", -1 at "job finished". Returns the most running at once; *started, *finished and *queued
   (each may be NULL) get how many started, finished, and were queued on arrival. Ordering, not timing: it
   holds on a loaded machine. */
int bw_test_log_most_running(const char *log_path, const char *prefix, int *started, int *finished,
                             int *queued);

/* Removes path and everything under it, like rm -rf. 0 on success or when it did not exist. */
int bw_test_rm_rf(const char *path);

/* 0 when a TCP connect to 127.0.0.1:port succeeds right now, -1 otherwise. */
int bw_test_tcp_probe(int port);
/* A TCP port on loopback with nothing listening (bound once, then released), or -1. */
int bw_test_closed_port(void);
/* Number of threads of this process named name (their comm), -1 when /proc is unreadable. */
int bw_test_threads_named(const char *name);

/* Forks and execs path with argv and envp (envp NULL = the current environment). The child's
   stdin, stdout and stderr become fds[0..2] (-1 = /dev/null), every other descriptor is closed,
   and it gets SIGKILL when the forking thread dies (PR_SET_PDEATHSIG), so a crashed test never
   leaves servers or workers behind. Returns the child pid, or -1. */
pid_t bw_test_spawn(const char *path, char *const argv[], char *const envp[], const int fds[3]);

/* Extra child set-up for bw_test_spawn_ex; zero-initialise, every field is optional. */
typedef struct bw_test_spawn_opts {
    const char *cwd; /* chdir here before exec (NULL = inherit) */
    int new_pgrp; /* own process group (pgid = pid), so a server and its children can be signalled at once */
    int set_ids;  /* become uid/gid with no supplementary groups (root running postgres as "postgres") */
    uid_t uid;
    gid_t gid;
} bw_test_spawn_opts_t;

/* bw_test_spawn with opts (NULL = exactly bw_test_spawn). PR_SET_PDEATHSIG is armed after the
   identity change, which would otherwise clear it. */
pid_t bw_test_spawn_ex(const char *path, char *const argv[], char *const envp[], const int fds[3],
                       const bw_test_spawn_opts_t *opts);

/* Reaps pid without blocking. Returns 1 and sets *status if it has exited, 0 if still running,
   -1 on error (e.g. not our child). */
int bw_test_reap(pid_t pid, int *status);

/* SIGTERM, then SIGKILL once grace_ms have passed; always reaps pid. */
void bw_test_terminate(pid_t pid, int grace_ms);

/* Converts a waitpid status to an exit code: WEXITSTATUS, or 128 + signal number. */
int bw_test_exit_code(int status);

/* A process's state letter ('R', 'S', 'Z', ...) and parent from /proc/<pid>/stat; -1 when it is gone. */
int bw_test_proc_stat(int pid, char *state, int *ppid);

/* CPU time (user + system, every thread) a process has used so far, in ms, from /proc/<pid>/stat; -1
   when it is gone. A test can see a child start working (its CPU time rises) without sleeping. */
int64_t bw_test_proc_cpu_ms(int pid);

/* The live (not zombie) children of parent, at most max, into pids; returns how many. */
int bw_test_children(int parent, int *pids, int max);
/* A script sandbox of the worker process `worker` that is running a script: confined (seccomp filter mode,
   which a sandbox enters only after its start-up and warm-up job) and its CPU time (every thread) rising by
   500 ms while watched, which an idle sandbox's does not. Its pid; fails the test after timeout_ms. The
   event a test acts on: a fixed sleep after submitting may end before the script started. */
int bw_test_busy_sandbox(int worker, int timeout_ms);

/* ---- skips and test selection (CTest's SKIP_RETURN_CODE is 77 for every test) ------------------ */

/* Records a failure found where cmocka cannot report one, and makes the program exit 1 whatever main
   returns: cmocka 1.1 prints "[  FAILED  ] GROUP TEARDOWN" when a group's teardown fails but does not
   count it, so a worker that did not exit 0 at the harness's stop (a crash, a hang, a sanitizer report)
   would otherwise pass. Prints the message (printf format) on stderr. */
void bw_test_fail_later(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Records that the program skipped a test and prints why on stderr ("SKIPPED <test>: <why>"); call it
   right before cmocka's skip(). */
void bw_test_note_skip(const char *test, const char *why);

/* The exit status for main: the number of failures when any, else 77 when a test was skipped (CTest
   then reports "Skipped", never "Passed"), else 0. */
int bw_test_exit_status(int failed);

/* Applies the command line's test selection: "--only=NAME" runs only the test NAME, "--skip=NAME" runs
   all but it (tests/CMakeLists.txt gives a test that may skip its own CTest entry this way). names
   holds the program's test names (n of them): a NAME that is not one of them, or any other argument,
   exits 2, so that no entry can run zero tests. */
void bw_test_select(int argc, char **argv, const char *const *names, size_t n);

/* A group of tests with its own fixture (a server of its own, say). */
struct CMUnitTest;
typedef struct bw_test_group {
    const char *name;
    const struct CMUnitTest *tests;
    size_t count;
    int (*setup)(void **state);
    int (*teardown)(void **state);
} bw_test_group_t;
/* Runs the groups in order, with bw_test_select over all their tests' names; when the environment
   variable filter_env (may be NULL) is set, only the groups whose name contains its value (while working
   on one). Returns the number of failures (for bw_test_exit_status). */
int bw_test_run_groups(int argc, char **argv, const bw_test_group_t *groups, size_t n,
                       const char *filter_env);

#endif
