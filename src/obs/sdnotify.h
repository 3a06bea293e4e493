/*
 * systemd's service notification protocol (sd_notify(3)), spoken directly: one datagram per state to the
 * AF_UNIX socket named by $NOTIFY_SOCKET (a path, or "@name" in the abstract namespace). No libsystemd:
 * the protocol is one sendto(2), and the worker must not depend on systemd to run elsewhere.
 * Used by the daemon for Type=notify (READY=1 once /readyz would say READY, STOPPING=1 on drain, STATUS=)
 * and WatchdogSec= (WATCHDOG=1 from a loop timer, so a stuck loop stops the pings and systemd restarts it).
 */
#ifndef BW_OBS_SDNOTIFY_H
#define BW_OBS_SDNOTIFY_H

#include <stdint.h>

/* Any thread. Sends state ("READY=1", "WATCHDOG=1", "STATUS=...", several separated by '\n'). 1 sent, 0 not
   run by systemd (no NOTIFY_SOCKET), -1 failed (errno set). */
int bw_sd_notify(const char *state);
/* The interval within which systemd expects WATCHDOG=1, in ms: $WATCHDOG_USEC / 1000 when $WATCHDOG_PID is
   unset or this process; 0 when there is no watchdog (or the values are not numbers). */
int64_t bw_sd_watchdog_ms(void);

#endif
