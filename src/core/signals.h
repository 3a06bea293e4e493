/*
 * SIGTERM/SIGINT for the daemon: a real sigaction handler, not a uv_signal watcher, so that a second
 * signal ends the process whatever the loop thread is doing (a loop stuck in a handler never runs a
 * uv_signal callback). The first signal is handed to the loop (a byte on a self-pipe) and starts the
 * graceful shutdown there; the second writes one line to the log's
 * file descriptor and calls _exit(128 + signal) from the handler itself.
 */
#ifndef BW_CORE_SIGNALS_H
#define BW_CORE_SIGNALS_H

#include <stdbool.h>
#include <uv.h>

/* Loop thread, once. first(ud, signum) runs on loop after the first SIGTERM or SIGINT. worker_id and
   json shape the line written on the second one. 0, or -1 when sigaction fails. */
int bw_signals_install(uv_loop_t *loop, void (*first)(void *ud, int signum), void *ud, const char *worker_id,
                       bool json);
/* Closes the loop handle (call before the loop is closed); the handler stays installed. */
void bw_signals_uninstall(void);
/* SIGTERM/SIGINT received so far (any thread). */
int bw_signals_received(void);

#endif
