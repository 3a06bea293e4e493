/*
 * beamline-worker: one binary. Without arguments it runs the daemon; the sub-commands are tools around
 * it. Configuration comes from the environment; an invalid value exits with code 2 naming the variable.
 */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "build_info.h"
#include "cli/cli.h"
#include "core/config.h"
#include "core/handler.h"
#include "core/signals.h"
#include "obs/log.h"
#include "obs/metrics.h"

/* `CMD --help` or `CMD -h` anywhere among the arguments (or `help CMD`): answered before the
   configuration is read, so that help works whatever the environment holds. */
static bool wants_help(int argc, char **argv)
{
    if (!strcmp(argv[1], "help"))
        return argc > 2;
    for (int i = 2; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
            return true;
    return false;
}

/* libuv sizes its thread pool from UV_THREADPOOL_SIZE when the pool is first used, so it is set before
   the daemon or exec creates anything. WORKER_THREADPOOL_SIZE when given, else one thread per job slot
   between 4 (libuv's default) and 64: every job can hold one pool thread (an fsync, a DNS lookup, a
   JMESPath evaluation, a PQcancel) without starving the others. The worker's own NATS round trips do
   not use the pool (net/bus.c's bw-nats-rt thread). */
static void size_threadpool(const bw_config_t *cfg)
{
    int64_t n = cfg->threadpool_size;
    char v[24];
    if (n <= 0)
        n = cfg->max_concurrency < 4 ? 4 : cfg->max_concurrency > 64 ? 64 : cfg->max_concurrency;
    snprintf(v, sizeof v, "%lld", (long long)n);
    setenv("UV_THREADPOOL_SIZE", v, 1);
}

/* The daemon stopped because its NATS connection cannot recover in this process (see BW_EXIT_RESTART):
   everything is closed and flushed, so the same binary starts again in this process (same PID, so a
   supervisor sees no exit), with the same arguments and environment. A stop request (SIGTERM, SIGINT)
   is never lost in between: one that came during the shutdown ends the process instead (exit 0, it
   had stopped); one that comes later stays pending, blocked across execv, until the new image has its
   handlers (bw_signals_install unblocks them), which then drains as for any stop. Returns the exit code
   when it does not restart. */
static int restart(char **argv)
{
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    sigprocmask(SIG_BLOCK, &stop, NULL);
    if (bw_signals_received() > 0) {
        bw_log(BW_LOG_INFO, "not restarting: a stop was requested meanwhile");
        bw_log_stop_writer(2000);
        return BW_EXIT_OK;
    }
    bw_log_stop_writer(2000);
    execv("/proc/self/exe", argv);
    fprintf(stderr, "beamline-worker: cannot restart itself: %s\n", strerror(errno));
    return BW_EXIT_RESTART;
}

int main(int argc, char **argv)
{
    const char *cmd = argc > 1 ? argv[1] : "";
    bw_config_t cfg;
    char err[512];
    int rc = BW_EXIT_USAGE;
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "version")) {
        printf("beamline-worker %s (commit %s)\n", BW_VERSION, BW_GIT_COMMIT);
        return 0;
    }
    if (argc > 1 && wants_help(argc, argv)) {
        const char *which = !strcmp(cmd, "help") ? argv[2] : cmd;
        if (bw_cli_command_usage(which, stdout) == 0)
            return BW_EXIT_OK;
        fprintf(stderr, "beamline-worker: unknown command '%s' (try --help)\n", which);
        return BW_EXIT_USAGE;
    }
    if (!strcmp(cmd, "js-sandbox")) /* a script sandbox child of the worker (cli/cli_sandbox.c) */
        return bw_cli_sandbox();
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        bw_cli_usage(stdout);
        return BW_EXIT_OK;
    }
    if (bw_config_load(&cfg, err, sizeof err) < 0) {
        fprintf(stderr, "beamline-worker: %s\n", err);
        goto out;
    }
    bw_log_setup((bw_log_level_t)cfg.log_level, cfg.log_json, cfg.worker_id);
    bw_metrics_init(bw_handler_names());
    if (argc > 1 && strcmp(cmd, "run") != 0)
        bw_log_set_fd(2);
    if (!strcmp(cmd, "check-config")) {
        char *json = bw_config_to_json(&cfg);
        printf("%s\n", json);
        free(json);
        rc = 0;
    } else if (!strcmp(cmd, "exec")) {
        size_threadpool(&cfg);
        rc = bw_cli_exec(&cfg);
    } else if (!strcmp(cmd, "dlq")) {
        rc = bw_cli_dlq(&cfg, argc - 2, argv + 2);
    } else if (!strcmp(cmd, "approvals")) {
        rc = bw_cli_approvals(&cfg, argc - 2, argv + 2);
    } else if (!strcmp(cmd, "submit")) {
        rc = bw_cli_submit(&cfg, argc - 2, argv + 2);
    } else if (!strcmp(cmd, "watch")) {
        rc = bw_cli_watch(&cfg, argc - 2, argv + 2);
    } else if (argc == 1 || !strcmp(cmd, "run")) {
        size_threadpool(&cfg);
        rc = bw_cli_daemon(&cfg);
        if (rc == BW_EXIT_RESTART)
            rc = restart(argv);
    } else {
        fprintf(stderr, "beamline-worker: unknown command '%s' (try --help)\n", cmd);
    }
out:
    bw_config_dispose(&cfg);
    return rc;
}
