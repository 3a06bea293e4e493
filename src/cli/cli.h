/* The sub-commands of the beamline-worker binary other than the daemon. Each returns the exit code. */
#ifndef BW_CLI_CLI_H
#define BW_CLI_CLI_H

#include "core/config.h"

/* `exec`: one job from stdin ({"type","payload"} or a whole assignment), run locally without NATS;
   prints the result JSON. Exit 0 on success, 1 on a non-success result, 2 on unusable input. */
int bw_cli_exec(const bw_config_t *cfg);
/* `submit TYPE [PAYLOAD] | submit -`: publishes an assignment on NATS and prints its result. */
int bw_cli_submit(const bw_config_t *cfg, int argc, char **argv);
/* `dlq list|replay [--reason R] [--since T] [--json|--dry-run]`: the local dead-letter file. */
int bw_cli_dlq(const bw_config_t *cfg, int argc, char **argv);
/* `approvals list|approve|reject|decide`: pending human approvals over NATS; exit codes in its usage. */
int bw_cli_approvals(const bw_config_t *cfg, int argc, char **argv);
/* The daemon (no arguments). Returns BW_EXIT_RESTART when its NATS connection is wedged beyond repair in
   this process (net/bus.c): main then starts the binary afresh in the same process (execv). */
#define BW_EXIT_RESTART 75
int bw_cli_daemon(const bw_config_t *cfg);
/* `js-sandbox`: a script sandbox child (frames on stdin/stdout); started by js/sandbox.c only. */
int bw_cli_sandbox(void);

#endif
