/* The sub-commands of the beamline-worker binary. Each returns the exit code. */
#ifndef BW_CLI_CLI_H
#define BW_CLI_CLI_H

#include <stdio.h>

#include "core/config.h"

/* The exit codes of every sub-command: one table, the same in `--help`, README.md and beamline-worker(1).
   A script can tell "it ran and said no" (1) from "it could not ask" (3) and "nobody answered" (4). */
#define BW_CLI_EXIT_CODES(X)                                                                                 \
    X(BW_EXIT_OK, 0, "success")                                                                              \
    X(BW_EXIT_FAILED, 1,                                                                                     \
      "done, but the outcome is a failure: a job result other than success, a "                              \
      "decision refused, dead letters not republished")                                                      \
    X(BW_EXIT_USAGE, 2, "usage error, invalid configuration or unusable input")                              \
    X(BW_EXIT_NATS, 3, "NATS unreachable or a NATS error")                                                   \
    X(BW_EXIT_NO_REPLY, 4, "no answer in time: no result, no reply to a decision, no heartbeat")
#define BW_CLI_EXIT_ENUM(name, code, text) name = code,
enum { BW_CLI_EXIT_CODES(BW_CLI_EXIT_ENUM) };
#undef BW_CLI_EXIT_ENUM

/* Prints the exit-code table (as in `--help`) to f. */
void bw_cli_print_exit_codes(FILE *f);
/* The top-level help (commands, job types, exit codes), printed to f. */
void bw_cli_usage(FILE *f);
/* The usage of command cmd ("run", "exec", "submit", ...) printed to f; -1 when there is no such command. */
int bw_cli_command_usage(const char *cmd, FILE *f);

/* `exec`: one job from stdin ({"type","payload"} or a whole assignment), run locally without NATS;
   prints the result JSON. */
int bw_cli_exec(const bw_config_t *cfg);
/* `submit`: publishes assignments on NATS and prints the result, or a load summary with --count. */
int bw_cli_submit(const bw_config_t *cfg, int argc, char **argv);
/* `watch`: follows heartbeats (and results, dead letters) on NATS as a table or JSON lines. */
int bw_cli_watch(const bw_config_t *cfg, int argc, char **argv);
/* `dlq list|replay [--reason R] [--since T] [--json|--dry-run]`: the local dead-letter file. */
int bw_cli_dlq(const bw_config_t *cfg, int argc, char **argv);
/* `approvals list|approve|reject|decide`: pending human approvals over NATS. */
int bw_cli_approvals(const bw_config_t *cfg, int argc, char **argv);

/* The usage of each sub-command, printed to f: stdout for `CMD --help` (exit 0), stderr on a usage
   error (exit 2). They need no configuration, so `--help` works whatever the environment holds. */
void bw_cli_exec_usage(FILE *f);
void bw_cli_submit_usage(FILE *f);
void bw_cli_watch_usage(FILE *f);
void bw_cli_dlq_usage(FILE *f);
void bw_cli_approvals_usage(FILE *f);

/* The daemon (no arguments). Returns BW_EXIT_RESTART when its NATS connection is wedged beyond repair in
   this process (net/bus.c): main then starts the binary afresh in the same process (execv). */
#define BW_EXIT_RESTART 75
int bw_cli_daemon(const bw_config_t *cfg);
/* `js-sandbox`: a script sandbox child (frames on stdin/stdout); started by js/sandbox.c only. */
int bw_cli_sandbox(void);

#endif
