/*
 * Spawns the beamline-worker binary (BW_WORKER_BIN) for integration tests, either in the
 * background with its output captured to a log file that tests poll ("worker ready"), or
 * synchronously for one-shot CLI runs (--version, config checks, replay).
 */
#ifndef BW_TEST_PROC_H
#define BW_TEST_PROC_H

#include <sys/types.h>

/* Caller-owned; bw_test_proc_start fills every field. */
typedef struct bw_test_proc {
    pid_t pid;
    char log_path[512]; /* stdout + stderr of the worker */
    int exited;         /* set once the process has been reaped */
    int status;         /* raw waitpid status, valid when exited */
} bw_test_proc_t;

/* Spawns BW_WORKER_BIN with argv {bin, args...} (args NULL-terminated; NULL = no args) and the
   current environment plus env ("K=V" strings, NULL-terminated, may be NULL; they override
   variables of the same name). Output goes to a fresh temp file (p->log_path). The child is
   SIGKILLed if the spawning thread dies. 0 on success. */
int bw_test_proc_start(bw_test_proc_t *p, const char *const *args, const char *const *env);

/* Waits (polling every 10 ms) until the captured output contains needle. 0 if found; -1 on
   timeout, or as soon as the process has exited without printing it. */
int bw_test_proc_wait_log(bw_test_proc_t *p, const char *needle, int timeout_ms);

/* Number of non-overlapping occurrences of needle in the captured output so far. */
int bw_test_proc_log_count(bw_test_proc_t *p, const char *needle);

/* Sends sig unless the process has already been reaped. 0 on success. */
int bw_test_proc_signal(bw_test_proc_t *p, int sig);

/* Waits up to timeout_ms for exit. 0 and *exit_code (WEXITSTATUS, or 128 + signal; may be NULL)
   when it exited, -1 on timeout. */
int bw_test_proc_wait(bw_test_proc_t *p, int timeout_ms, int *exit_code);

/* SIGKILLs and reaps the process if still running, then removes the log file unless the
   environment has BW_TEST_KEEP_LOGS. Call bw_test_proc_dump_log first when the test failed.
   Safe to call twice. */
void bw_test_proc_stop(bw_test_proc_t *p);

/* Writes the captured output to stderr, framed with the log path. */
void bw_test_proc_dump_log(bw_test_proc_t *p);

/* Runs BW_WORKER_BIN synchronously with args/env as above, writing stdin_data (may be NULL = empty
   stdin) to its stdin. Its stdout goes to a malloc'd NUL-terminated *out and its stderr to *err
   (caller frees both; either pointer may be NULL to discard). Killed after 30 s. Returns the exit
   code (WEXITSTATUS, or 128 + signal), or -1 if it could not be spawned. */
int bw_test_run(const char *const *args, const char *const *env, const char *stdin_data, char **out,
                char **err);

/* One CLI run for a test: bw_test_cli_run runs the binary to completion (bw_test_run) and fails the test
   when it cannot be spawned or its stderr holds a sanitizer report (a leak report can hide behind an
   expected non-zero exit). Its output buffers are remembered until bw_test_cli_dispose, so a failed
   assertion (a longjmp out of the test) leaks nothing: use bw_test_cli_free_live as the test's teardown. */
typedef struct bw_test_cli {
    int rc;
    char *out, *err;
    long long ms;
} bw_test_cli_t;

void bw_test_cli_run(bw_test_cli_t *r, const char *const *args, const char *const *env,
                     const char *stdin_data);
void bw_test_cli_dispose(bw_test_cli_t *r);
void bw_test_cli_dump(const bw_test_cli_t *r);
int bw_test_cli_free_live(void **state);

#endif
