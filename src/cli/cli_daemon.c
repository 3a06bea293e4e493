/*
 * The daemon: one libuv loop owning the worker, the NATS bus and the signal handlers.
 * Shutdown (first SIGTERM/SIGINT): stop intake (the assign subscription drains), heartbeat `draining`,
 * wait for active jobs up to SHUTDOWN_TIMEOUT_MS, then cancel the rest (each gets a `cancelled`
 * result), flush, heartbeat `stopped`, exit 0. A second signal exits at once
 * (128 + signal), from the signal handler itself, whatever the loop is doing (core/signals.c).
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/approvals.h"
#include "cli/cli.h"
#include "core/deadletter.h"
#include "core/signals.h"
#include "core/worker.h"
#include "net/bus.h"
#include "net/approvals_http.h"
#include "net/http.h"
#include "obs/log.h"
#include "obs/metrics.h"
#include "obs/sdnotify.h"
#include "store/dlq.h"
#include "util/clock.h"

#define SHUTDOWN_POLL_MS 10
#define SYSTEMD_TICK_MS                                                                                      \
    100 /* readiness is looked at this often (and the watchdog fed, at most every third of it) */

typedef struct daemon {
    uv_loop_t *loop;
    const bw_config_t *cfg;
    bw_worker_t *worker;
    bw_bus_t *bus;
    bw_http_t *http;
    bw_approvals_front_t *front; /* the approvals API on the health port */
    bw_approvals_t *approvals;
    bw_dlq_t *dlq;
    bw_deadletters_t *dead;
    uv_timer_t shutdown_poll;
    uv_check_t log_flush;  /* writes the loop's batched log lines once per iteration */
    uv_timer_t systemd;    /* run by systemd (NOTIFY_SOCKET): readiness and watchdog notifications */
    int64_t watchdog_ms;   /* WatchdogSec= (0: none) */
    const char *sd_status; /* the readiness last reported */
    uint64_t shutdown_deadline_ms;
    bool shutting_down, cancelled;
    int exit_code;
} daemon_t;

static void publish_via_bus(void *ud, const bw_outmsg_t *m)
{
    daemon_t *d = ud;
    if (d->bus != NULL)
        bw_bus_publish(d->bus, m);
    else if (m->kind == BW_OUT_RESULT && d->dead != NULL) /* jobs cancelled after the connection closed */
        bw_deadletters_undelivered(d->dead, m, "the NATS connection was already closed");
}

static size_t max_payload_via_bus(void *ud)
{
    daemon_t *d = ud;
    return d->bus != NULL ? bw_bus_max_payload(d->bus) : 0;
}

static bool redeliver_via_bus(void *ud, const char *tenant, const char *id)
{
    daemon_t *d = ud;
    return d->bus != NULL && bw_bus_redeliver(d->bus, tenant, id);
}

static void parked_via_bus(void *ud, const char *tenant, const char *id)
{
    daemon_t *d = ud;
    if (d->bus != NULL)
        bw_bus_parked(d->bus, tenant, id);
}

static json_t *consumer_via_bus(void *ud)
{
    daemon_t *d = ud;
    return bw_bus_consumer_json(d->bus);
}

/* JetStream: what is unfinished goes back to the server for another worker, without a result. */
static void give_back(daemon_t *d)
{
    if (d->bus == NULL || !bw_bus_jetstream(d->bus))
        return;
    bw_bus_give_back_all(d->bus);
    bw_worker_abandon_all(d->worker);
}

static void finished(void *ud, int rc)
{
    daemon_t *d = ud;
    if (rc < 0)
        bw_log(BW_LOG_WARN, "flush at shutdown did not complete");
    bw_log(BW_LOG_INFO, "stopped");
    uv_stop(d->loop);
}

/* Pending approvals stay in their journal; replies still owed go out before the final flush. */
static void stop_approvals(daemon_t *d)
{
    if (d->approvals == NULL)
        return;
    bw_approvals_front_attach(d->front, NULL);
    if (d->bus != NULL)
        bw_bus_set_approvals(d->bus, NULL);
    bw_approvals_destroy(d->approvals);
    d->approvals = NULL;
}

static void finish(daemon_t *d)
{
    uv_timer_stop(&d->shutdown_poll);
    stop_approvals(d);
    bw_worker_heartbeat(d->worker, "stopped");
    if (bw_bus_connected(d->bus))
        bw_bus_flush_async(d->bus, 5000, finished, d);
    else
        finished(d, 0);
}

static void on_shutdown_poll(uv_timer_t *t)
{
    daemon_t *d = t->data;
    /* Without a connection no more assignments can arrive, and the subscription's drain cannot
       complete: then only the jobs still active count. */
    bool intake_done =
        (bw_bus_intake_closed(d->bus) || !bw_bus_connected(d->bus)) && bw_bus_pending_inbound(d->bus) == 0;
    bool past = uv_now(d->loop) >= d->shutdown_deadline_ms;
    if (past) {
        if (!d->cancelled && bw_worker_active(d->worker) > 0)
            bw_log(BW_LOG_WARN,
                   bw_bus_jetstream(d->bus) ? "shutdown timeout: giving remaining jobs back to the server"
                                            : "shutdown timeout: cancelling remaining jobs",
                   BW_LI("active", bw_worker_active(d->worker)));
        d->cancelled = true;
        give_back(d); /* JetStream: no result for these, another worker runs them */
        bw_worker_cancel_all(d->worker, "worker shutting down");
    }
    if ((intake_done || past) && bw_worker_active(d->worker) == 0)
        finish(d);
}

/* Before the bus: a server that refuses the worker (wrong credentials, a certificate it cannot verify)
   would make nats.c give up after its second refusal and the worker exit. Instead the worker stays up and
   not ready with the reason (/readyz), logs it once per change (never the secret: the text is the
   server's or OpenSSL's), and tries again with backoff (100 ms doubling to 2 s), so fixing the server's
   side is enough. -1 when a signal asked it to stop meanwhile. An unreachable server passes: nats.c's
   own reconnects wait for it. */
static int wait_until_admitted(daemon_t *d)
{
    char name[200], why[256], said[256] = "";
    uint64_t delay = 100;
    snprintf(name, sizeof name, "beamline-worker %s", d->cfg->worker_id);
    while (bw_bus_probe(d->cfg, name, why, sizeof why) != 0) {
        bw_metrics_set_connect_error(why);
        if (strcmp(why, said) != 0) {
            char *url = bw_redact_url(d->cfg->nats_url), status[320];
            bw_log(BW_LOG_ERROR, "nats refused the connection: not ready, retrying with backoff",
                   BW_LS("url", url), BW_LS("error", why));
            free(url);
            snprintf(said, sizeof said, "%s", why);
            snprintf(status, sizeof status, "STATUS=NOT_CONNECTED: %s", why); /* systemctl status */
            bw_sd_notify(status);
        }
        if (bw_sd_watchdog_ms() > 0) /* systemd's watchdog runs while the unit is activating too */
            bw_sd_notify("WATCHDOG=1");
        for (uint64_t end = bw_mono_ms() + delay; bw_mono_ms() < end;) {
            if (bw_signals_received() > 0)
                return -1;
            uv_sleep(20);
        }
        delay = delay * 2 > 2000 ? 2000 : delay * 2;
    }
    if (said[0] != '\0') {
        bw_metrics_set_connect_error("");
        bw_log(BW_LOG_INFO, "nats accepted the connection");
    }
    return 0;
}

static void on_connection_lost(void *ud)
{
    daemon_t *d = ud;
    d->exit_code = bw_bus_wedged(d->bus) ? BW_EXIT_RESTART : 1;
    uv_stop(d->loop);
}

/* Loop thread: the first SIGTERM/SIGINT (the second never gets here: see core/signals.c). */
/* systemd's Type=notify and WatchdogSec= (deploy/systemd): READY=1 once /readyz would say READY, STATUS=
   with every change of readiness, WATCHDOG=1 from this loop timer, so a loop that stops turning stops the
   pings and systemd restarts the worker. */
static void on_systemd_tick(uv_timer_t *t)
{
    daemon_t *d = t->data;
    const char *now = bw_metrics_readiness();
    if (d->sd_status == NULL || strcmp(now, d->sd_status) != 0) {
        char msg[96];
        snprintf(msg, sizeof msg, "%sSTATUS=%s",
                 d->sd_status == NULL && strcmp(now, "READY") == 0 ? "READY=1\n" : "", now);
        if (d->sd_status != NULL || strcmp(now, "READY") == 0) {
            bw_sd_notify(msg);
            d->sd_status = now;
        }
    }
    if (d->watchdog_ms > 0)
        bw_sd_notify("WATCHDOG=1");
}

static void start_systemd(daemon_t *d)
{
    if (getenv("NOTIFY_SOCKET") == NULL)
        return;
    d->watchdog_ms = bw_sd_watchdog_ms();
    int64_t every =
        d->watchdog_ms > 0 && d->watchdog_ms / 3 < SYSTEMD_TICK_MS ? d->watchdog_ms / 3 : SYSTEMD_TICK_MS;
    uv_timer_init(d->loop, &d->systemd);
    d->systemd.data = d;
    uv_timer_start(&d->systemd, on_systemd_tick, 0, (uint64_t)(every > 0 ? every : 1));
    uv_unref((uv_handle_t *)&d->systemd);
    bw_log(BW_LOG_INFO, "run by systemd: notifying readiness", BW_LI("watchdog_ms", d->watchdog_ms));
}

static void on_signal(void *ud, int signum)
{
    daemon_t *d = ud;
    if (d->shutting_down)
        return;
    d->shutting_down = true;
    bw_sd_notify("STOPPING=1\nSTATUS=draining");
    bw_log(BW_LOG_INFO, "shutdown requested", BW_LI("signal", signum));
    bw_bus_stop_intake(d->bus);
    bw_worker_set_draining(d->worker);
    d->shutdown_deadline_ms = uv_now(d->loop) + (uint64_t)d->cfg->shutdown_timeout_ms;
    uv_timer_start(&d->shutdown_poll, on_shutdown_poll, 0, SHUTDOWN_POLL_MS);
}

/* The DLQ file's own counters, rendered with the other metrics (HTTP thread; stats are thread-safe). */
static void collect_dlq(void *ud, bw_buf_t *out)
{
    bw_dlq_stats_t st;
    bw_dlq_get_stats(ud, &st);
    bw_buf_printf(out,
                  "# HELP beamline_worker_dlq_file_written_total Dead letters written to DLQ_PATH.\n"
                  "# TYPE beamline_worker_dlq_file_written_total counter\n"
                  "beamline_worker_dlq_file_written_total %llu\n"
                  "# HELP beamline_worker_dlq_file_errors_total Dead letters lost to a file error (disk "
                  "full, unwritable path).\n"
                  "# TYPE beamline_worker_dlq_file_errors_total counter\n"
                  "beamline_worker_dlq_file_errors_total %llu\n"
                  "# HELP beamline_worker_dlq_file_dropped_total Dead letters dropped because the writer "
                  "queue was full.\n"
                  "# TYPE beamline_worker_dlq_file_dropped_total counter\n"
                  "beamline_worker_dlq_file_dropped_total %llu\n"
                  "# HELP beamline_worker_dlq_file_rotations_total Rotations of the DLQ file.\n"
                  "# TYPE beamline_worker_dlq_file_rotations_total counter\n"
                  "beamline_worker_dlq_file_rotations_total %llu\n",
                  (unsigned long long)st.written, (unsigned long long)st.write_errors,
                  (unsigned long long)st.dropped, (unsigned long long)st.rotations);
}

static void start_dlq(daemon_t *d)
{
    bw_dlq_opts_t o = {.path = d->cfg->dlq_path,
                       .max_bytes = d->cfg->dlq_max_bytes,
                       .total_max_bytes = d->cfg->dlq_total_max_bytes,
                       .max_age_days = d->cfg->dlq_max_age_days,
                       .max_rotations = d->cfg->dlq_max_rotations,
                       .queue_max_bytes = 64 * 1024 * 1024};
    d->dlq = bw_dlq_create(&o);
    bw_metrics_set_collector(collect_dlq, d->dlq);
    d->dead = bw_deadletters_create(d->cfg, d->dlq, publish_via_bus, d);
}

/* The health server starts first, so probes answer (NOT_CONNECTED) while NATS is still coming up. */
static int start_http(daemon_t *d)
{
    char err[256];
    if (strcmp(d->cfg->health_bind, "off") == 0)
        return 0;
    d->front = bw_approvals_front_create(d->cfg->approval_token);
    bw_http_opts_t o = {.bind = d->cfg->health_bind,
                        .worker_id = d->cfg->worker_id,
                        .max_connections = (int)d->cfg->health_max_connections,
                        .header_timeout_ms = (int)d->cfg->health_header_timeout_ms,
                        .app_prefix = BW_APPROVALS_PREFIX,
                        .app = bw_approvals_front_route,
                        .app_ud = d->front,
                        .app_max_body = BW_APPROVALS_MAX_BODY,
                        .app_headers = BW_APPROVALS_HEADERS};
    d->http = bw_http_create(&o, err, sizeof err);
    if (d->http == NULL) {
        bw_log(BW_LOG_ERROR, "cannot start the health server", BW_LS("error", err));
        return -1;
    }
    bw_log(BW_LOG_INFO, "health server listening", BW_LS("bind", d->cfg->health_bind),
           BW_LI("port", bw_http_port(d->http)));
    return 0;
}

/* After the bus (results of approvals that timed out while the worker was down go out through it),
   before the loop runs (no decision can arrive before the registry answers it). */
static int start_approvals(daemon_t *d)
{
    char err[512];
    bw_approvals_opts_t o = {.loop = d->loop,
                             .cfg = d->cfg,
                             .worker = d->worker,
                             .publish = publish_via_bus,
                             .publish_ud = d,
                             .kv = bw_bus_approvals_kv(d->bus)}; /* JetStream mode: the bucket */
    d->approvals = bw_approvals_create(&o, err, sizeof err);
    if (d->approvals == NULL) {
        bw_log(BW_LOG_ERROR, "cannot open the approval journal", BW_LS("error", err));
        return -1;
    }
    bw_bus_set_approvals(d->bus, d->approvals);
    bw_approvals_front_attach(d->front, d->approvals);
    return 0;
}

static void on_log_flush(uv_check_t *c)
{
    bw_log_flush();
}

static void close_walk(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

int bw_cli_daemon(const bw_config_t *cfg)
{
    uv_loop_t loop;
    daemon_t d = {.loop = &loop, .cfg = cfg};
    uint64_t t0 = bw_mono_ns();
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN); /* a file over RLIMIT_FSIZE fails its write (EFBIG) like a full disk */
    bw_log_start_writer((size_t)cfg->log_buffer_bytes); /* stdout never blocks the loop; flushed at exit */
    if (start_http(&d) < 0)
        return 1;
    uv_loop_init(&loop);
    /* first thing on the loop: from here on a second signal always ends the process */
    if (bw_signals_install(&loop, on_signal, &d, cfg->worker_id, cfg->log_json) < 0)
        bw_log(BW_LOG_ERROR, "cannot install the signal handlers");
    start_dlq(&d);
    bw_worker_opts_t opts = {.publish = publish_via_bus,
                             .publish_ud = &d,
                             .max_payload = max_payload_via_bus,
                             .heartbeats = true,
                             .dead = d.dead,
                             .redeliver = cfg->js_mode == 1 ? redeliver_via_bus : NULL,
                             .parked = cfg->js_mode == 1 ? parked_via_bus : NULL,
                             .heartbeat_extra = consumer_via_bus};
    d.worker = bw_worker_create(&loop, cfg, &opts);
    if (wait_until_admitted(&d) < 0)
        goto out; /* stopped by a signal before it ever connected: nothing to drain */
    d.bus = bw_bus_create(&loop, cfg, d.worker, d.dead);
    if (d.bus == NULL) {
        d.exit_code = 1;
        goto out;
    }
    bw_bus_on_fatal(d.bus, on_connection_lost, &d);
    if (start_approvals(&d) < 0) {
        d.exit_code = 1;
        goto out_bus;
    }
    bw_log(BW_LOG_INFO, "started", BW_LI("max_concurrency", cfg->max_concurrency),
           BW_LI("startup_us", (long long)((bw_mono_ns() - t0) / 1000)));
    bw_worker_heartbeat(d.worker, NULL);
    start_systemd(&d);
    uv_timer_init(&loop, &d.shutdown_poll);
    d.shutdown_poll.data = &d;
    uv_check_init(&loop, &d.log_flush);
    uv_check_start(&d.log_flush, on_log_flush);
    uv_unref((uv_handle_t *)&d.log_flush);
    bw_log_batch_thread(true);
    uv_run(&loop, UV_RUN_DEFAULT);
    bw_log_batch_thread(false);
out_bus:
    stop_approvals(&d); /* still there when the connection was lost */
    give_back(&d);
    bw_bus_destroy(d.bus);
    d.bus = NULL;
out:
    bw_worker_destroy(d.worker);
    bw_signals_uninstall();
    uv_walk(&loop, close_walk, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    bw_http_destroy(d.http); /* the reader of the collector first, then the DLQ it reads */
    bw_approvals_front_destroy(d.front);
    bw_metrics_set_collector(NULL, NULL);
    bw_deadletters_destroy(d.dead);
    bw_dlq_destroy(d.dlq); /* its thread joined before the loop's descriptors close (no reuse race) */
    uv_loop_close(&loop);
    nats_CloseAndWait(2000);
    return d.exit_code;
}
