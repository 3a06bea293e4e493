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

/* Removes path and everything under it, like rm -rf. 0 on success or when it did not exist. */
int bw_test_rm_rf(const char *path);

/* 0 when a TCP connect to 127.0.0.1:port succeeds right now, -1 otherwise. */
int bw_test_tcp_probe(int port);

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

#endif
