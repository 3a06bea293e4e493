/*
 * The metric values and their Prometheus rendering. Counters only grow; gauges are set by their one
 * owner (the loop for job gauges, nats.c callbacks for connection gauges). Histogram buckets are
 * cumulative at render time, not at update time, so an update is two atomic adds.
 */
#include "obs/metrics.h"

#include <dirent.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "build_info.h"
#include "obs/log.h"
#include "util/clock.h"
#include "util/proc.h"
#include "util/xalloc.h"

#define MAX_TYPES 32
#define NSTATUS 4
#define NBUCKETS 17

static const double bucket_le[NBUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                           0.5,    1,     2.5,    5,     10,   30,    60,   300};
static const char *const status_names[NSTATUS] = {"success", "error", "timeout", "cancelled"};
static const char *const dl_reasons[] = {"PARSE_ERROR", "DECODE_ERROR", "PUBLISH_ERROR", "MAX_DELIVER",
                                         "OTHER"};
#define NREASONS (sizeof dl_reasons / sizeof dl_reasons[0])

#define MAX_OUTCOMES 16
#define NABUCKETS 12
/* time to decision: a person takes seconds to days */
static const double abucket_le[NABUCKETS] = {1,    10,    30,    60,    300,    900,
                                             3600, 14400, 43200, 86400, 259200, 604800};

typedef struct histo {
    atomic_uint_fast64_t bucket[NBUCKETS + 1]; /* non-cumulative; the last is +Inf */
    atomic_uint_fast64_t sum_us;
} histo_t;

static struct {
    const char *types[MAX_TYPES];
    int ntypes; /* the last slot is "other" */
    atomic_uint_fast64_t received[MAX_TYPES];
    atomic_uint_fast64_t finished[MAX_TYPES][NSTATUS];
    histo_t duration[MAX_TYPES];
    atomic_int_fast64_t waiting[MAX_TYPES], running[MAX_TYPES];
    atomic_uint_fast64_t counters[BW_C__COUNT];
    atomic_int_fast64_t gauges[BW_G__COUNT];
    atomic_uint_fast64_t dead_letters[NREASONS];
    const char *outcomes[MAX_OUTCOMES];
    int noutcomes;
    atomic_uint_fast64_t decisions[MAX_OUTCOMES];
    atomic_uint_fast64_t decided[NABUCKETS + 1];
    atomic_uint_fast64_t decided_sum_ms;
    /* Set by the loop, called by the HTTP thread: both only under collector_mu, so a collector being
       removed is never called half-updated nor after bw_metrics_set_collector returned. */
    pthread_mutex_t collector_mu;
    bw_metrics_collector_fn collector;
    void *collector_ud;
    char *tenant_text; /* METRICS_TENANT_LABELS: the per-tenant series, under collector_mu */
    size_t tenant_len;
    int64_t start_wall_ms;
} M = {.collector_mu = PTHREAD_MUTEX_INITIALIZER};

void bw_metrics_init(const char *const *job_types)
{
    M.ntypes = 0;
    for (int i = 0; job_types[i] != NULL && M.ntypes < MAX_TYPES - 1; i++)
        M.types[M.ntypes++] = job_types[i];
    M.types[M.ntypes++] = "other";
    M.start_wall_ms = bw_wall_ms();
}

int bw_metrics_type(const char *job_type)
{
    for (int i = 0; job_type != NULL && i < M.ntypes - 1; i++)
        if (strcmp(M.types[i], job_type) == 0)
            return i;
    return M.ntypes > 0 ? M.ntypes - 1 : 0;
}

void bw_metrics_job_received(int type)
{
    atomic_fetch_add_explicit(&M.received[type], 1, memory_order_relaxed);
}

void bw_metrics_job_finished(int type, int status, uint64_t duration_us)
{
    int b = 0;
    double secs = (double)duration_us / 1e6;
    while (b < NBUCKETS && secs > bucket_le[b])
        b++;
    atomic_fetch_add_explicit(&M.finished[type][status], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&M.duration[type].bucket[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&M.duration[type].sum_us, duration_us, memory_order_relaxed);
}

void bw_metrics_inc(bw_counter_t c)
{
    atomic_fetch_add_explicit(&M.counters[c], 1, memory_order_relaxed);
}

void bw_metrics_add(bw_counter_t c, uint64_t n)
{
    atomic_fetch_add_explicit(&M.counters[c], n, memory_order_relaxed);
}

void bw_metrics_set(bw_gauge_t g, int64_t v)
{
    atomic_store_explicit(&M.gauges[g], v, memory_order_relaxed);
}

int64_t bw_metrics_get(bw_gauge_t g)
{
    return atomic_load_explicit(&M.gauges[g], memory_order_relaxed);
}

void bw_metrics_dead_letter(const char *reason)
{
    size_t i = 0;
    while (i < NREASONS - 1 && (reason == NULL || strcmp(dl_reasons[i], reason) != 0))
        i++;
    atomic_fetch_add_explicit(&M.dead_letters[i], 1, memory_order_relaxed);
}

void bw_metrics_init_approvals(const char *const *outcomes)
{
    M.noutcomes = 0;
    for (int i = 0; outcomes[i] != NULL && M.noutcomes < MAX_OUTCOMES; i++)
        M.outcomes[M.noutcomes++] = outcomes[i];
}

void bw_metrics_approval_decision(int outcome)
{
    if (outcome >= 0 && outcome < M.noutcomes)
        atomic_fetch_add_explicit(&M.decisions[outcome], 1, memory_order_relaxed);
}

void bw_metrics_approval_decided(uint64_t ms)
{
    int b = 0;
    while (b < NABUCKETS && (double)ms / 1000.0 > abucket_le[b])
        b++;
    atomic_fetch_add_explicit(&M.decided[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&M.decided_sum_ms, ms, memory_order_relaxed);
}

static uint64_t ld(atomic_uint_fast64_t *v);
static void header(bw_buf_t *o, const char *name, const char *type, const char *help);

static void render_approvals(bw_buf_t *o)
{
    header(o, "beamline_worker_approval_decisions_total", "counter",
           "Decisions on human approvals, by outcome: accepted, or why they were refused.");
    for (int i = 0; i < M.noutcomes; i++)
        bw_buf_printf(o, "beamline_worker_approval_decisions_total{outcome=\"%s\"} %llu\n", M.outcomes[i],
                      (unsigned long long)ld(&M.decisions[i]));
    header(o, "beamline_worker_approval_decision_seconds", "histogram",
           "Time from a human approval's request to its decision (quorum reached).");
    uint64_t cum = 0;
    for (int b = 0; b <= NABUCKETS; b++) {
        cum += ld(&M.decided[b]);
        if (b < NABUCKETS)
            bw_buf_printf(o, "beamline_worker_approval_decision_seconds_bucket{le=\"%g\"} %llu\n",
                          abucket_le[b], (unsigned long long)cum);
        else
            bw_buf_printf(o, "beamline_worker_approval_decision_seconds_bucket{le=\"+Inf\"} %llu\n",
                          (unsigned long long)cum);
    }
    bw_buf_printf(o, "beamline_worker_approval_decision_seconds_sum %.3f\n",
                  (double)ld(&M.decided_sum_ms) / 1000.0);
    bw_buf_printf(o, "beamline_worker_approval_decision_seconds_count %llu\n", (unsigned long long)cum);
}

void bw_metrics_set_type_jobs(int type, int64_t waiting, int64_t running)
{
    if (type < 0 || type >= MAX_TYPES)
        return;
    atomic_store_explicit(&M.waiting[type], waiting, memory_order_relaxed);
    atomic_store_explicit(&M.running[type], running, memory_order_relaxed);
}

void bw_metrics_set_tenant_text(const char *text, size_t len)
{
    char *copy = text != NULL ? bw_strndup(text, len) : NULL;
    pthread_mutex_lock(&M.collector_mu);
    char *old = M.tenant_text;
    M.tenant_text = copy;
    M.tenant_len = copy != NULL ? len : 0;
    pthread_mutex_unlock(&M.collector_mu);
    free(old);
}

void bw_metrics_set_collector(bw_metrics_collector_fn fn, void *ud)
{
    pthread_mutex_lock(&M.collector_mu);
    M.collector_ud = ud;
    M.collector = fn;
    pthread_mutex_unlock(&M.collector_mu);
}

static pthread_mutex_t connect_error_mu = PTHREAD_MUTEX_INITIALIZER;
static char connect_error[256];

void bw_metrics_set_connect_error(const char *why)
{
    pthread_mutex_lock(&connect_error_mu);
    snprintf(connect_error, sizeof connect_error, "%s", why);
    pthread_mutex_unlock(&connect_error_mu);
}

void bw_metrics_connect_error(char *out, size_t len)
{
    pthread_mutex_lock(&connect_error_mu);
    snprintf(out, len, "%s", connect_error);
    pthread_mutex_unlock(&connect_error_mu);
}

const char *bw_metrics_readiness(void)
{
    if (bw_metrics_get(BW_G_DRAINING))
        return "DRAINING";
    if (!bw_metrics_get(BW_G_NATS_CONNECTED))
        return "NOT_CONNECTED";
    if (!bw_metrics_get(BW_G_SUBSCRIBED))
        return "NOT_SUBSCRIBED";
    if ((int64_t)bw_mono_ms() < bw_metrics_get(BW_G_PUBLISH_DENIED_UNTIL_MS))
        return "PUBLISH_PERMISSION_DENIED";
    return "READY";
}

/* ---- rendering ---- */

static uint64_t ld(atomic_uint_fast64_t *v)
{
    return atomic_load_explicit(v, memory_order_relaxed);
}

static void header(bw_buf_t *o, const char *name, const char *type, const char *help)
{
    bw_buf_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void render_jobs(bw_buf_t *o)
{
    header(o, "beamline_worker_jobs_received_total", "counter", "Assignments received, by job type.");
    for (int t = 0; t < M.ntypes; t++)
        bw_buf_printf(o, "beamline_worker_jobs_received_total{job_type=\"%s\"} %llu\n", M.types[t],
                      (unsigned long long)ld(&M.received[t]));
    header(o, "beamline_worker_jobs_total", "counter",
           "Jobs finished (one result each), by job type and status.");
    for (int t = 0; t < M.ntypes; t++)
        for (int s = 0; s < NSTATUS; s++)
            bw_buf_printf(o, "beamline_worker_jobs_total{job_type=\"%s\",status=\"%s\"} %llu\n", M.types[t],
                          status_names[s], (unsigned long long)ld(&M.finished[t][s]));
    header(o, "beamline_worker_jobs_waiting", "gauge", "Jobs waiting for a slot, by job type.");
    for (int t = 0; t < M.ntypes; t++)
        bw_buf_printf(o, "beamline_worker_jobs_waiting{job_type=\"%s\"} %lld\n", M.types[t],
                      (long long)atomic_load_explicit(&M.waiting[t], memory_order_relaxed));
    header(o, "beamline_worker_jobs_running", "gauge", "Jobs holding a slot, by job type.");
    for (int t = 0; t < M.ntypes; t++)
        bw_buf_printf(o, "beamline_worker_jobs_running{job_type=\"%s\"} %lld\n", M.types[t],
                      (long long)atomic_load_explicit(&M.running[t], memory_order_relaxed));
    header(o, "beamline_worker_admissions_refused_total", "counter",
           "Assignments refused with QUEUE_FULL, by cause: WORKER_QUEUE_MAX (queue_full_global) or the "
           "tenant's TENANT_QUEUE_MAX (queue_full_tenant).");
    bw_buf_printf(o, "beamline_worker_admissions_refused_total{cause=\"queue_full_global\"} %llu\n",
                  (unsigned long long)ld(&M.counters[BW_C_REFUSED_QUEUE]));
    bw_buf_printf(o, "beamline_worker_admissions_refused_total{cause=\"queue_full_tenant\"} %llu\n",
                  (unsigned long long)ld(&M.counters[BW_C_REFUSED_TENANT_QUEUE]));
}

static void render_histograms(bw_buf_t *o)
{
    header(o, "beamline_worker_job_duration_seconds", "histogram",
           "Time from reception to result, by job type.");
    for (int t = 0; t < M.ntypes; t++) {
        uint64_t cum = 0;
        for (int b = 0; b <= NBUCKETS; b++) {
            cum += ld(&M.duration[t].bucket[b]);
            if (b < NBUCKETS)
                bw_buf_printf(o,
                              "beamline_worker_job_duration_seconds_bucket{job_type=\"%s\",le=\"%g\"} %llu\n",
                              M.types[t], bucket_le[b], (unsigned long long)cum);
            else
                bw_buf_printf(
                    o, "beamline_worker_job_duration_seconds_bucket{job_type=\"%s\",le=\"+Inf\"} %llu\n",
                    M.types[t], (unsigned long long)cum);
        }
        bw_buf_printf(o, "beamline_worker_job_duration_seconds_sum{job_type=\"%s\"} %.6f\n", M.types[t],
                      (double)ld(&M.duration[t].sum_us) / 1e6);
        bw_buf_printf(o, "beamline_worker_job_duration_seconds_count{job_type=\"%s\"} %llu\n", M.types[t],
                      (unsigned long long)cum);
    }
}

typedef struct simple {
    const char *name, *type, *help;
    int is_gauge, index;
} simple_t;

static const simple_t simples[] = {
    {"beamline_worker_jobs_in_flight", "gauge", "Jobs running now.", 1, BW_G_IN_FLIGHT},
    {"beamline_worker_jobs_queued", "gauge", "Assignments waiting for a slot.", 1, BW_G_QUEUED},
    {"beamline_worker_tenants_waiting", "gauge", "Tenants with at least one job waiting for a slot.", 1,
     BW_G_TENANTS_WAITING},
    {"beamline_worker_max_concurrency", "gauge", "WORKER_MAX_CONCURRENCY.", 1, BW_G_MAX_CONCURRENCY},
    {"beamline_worker_ready", "gauge", "1 when connected, subscribed and not draining.", 1, -1},
    {"beamline_worker_draining", "gauge", "1 while shutting down.", 1, BW_G_DRAINING},
    {"beamline_worker_duplicates_total", "counter",
     "Duplicate assignments (ignored or answered from memory).", 0, BW_C_DUPLICATES},
    {"beamline_worker_nats_connected", "gauge", "1 while connected to NATS.", 1, BW_G_NATS_CONNECTED},
    {"beamline_worker_nats_reconnects_total", "counter", "Reconnections to NATS.", 0, BW_C_NATS_RECONNECTS},
    {"beamline_worker_nats_disconnects_total", "counter", "Connection losses.", 0, BW_C_NATS_DISCONNECTS},
    {"beamline_worker_nats_slow_consumer_events_total", "counter",
     "Slow-consumer events reported by the client.", 0, BW_C_SLOW_CONSUMER_EVENTS},
    {"beamline_worker_nats_dropped_messages_total", "counter",
     "Assignments the client dropped as a slow consumer.", 1, BW_G_DROPPED},
    {"beamline_worker_result_publish_retries_total", "counter", "Retried result publishes.", 0,
     BW_C_PUBLISH_RETRIES},
    {"beamline_worker_result_publish_failures_total", "counter",
     "Results that could not be published after all retries (dead-lettered).", 0, BW_C_PUBLISH_FAILURES},
    {"beamline_worker_heartbeats_sent_total", "counter", "Heartbeats published.", 0, BW_C_HEARTBEATS},
    {"beamline_worker_nats_permission_errors_total", "counter",
     "Publishes or subscriptions the server refused (permissions).", 0, BW_C_PERMISSION_ERRORS},
    {"beamline_worker_script_sandboxes", "gauge", "Script sandbox processes alive.", 1, BW_G_SANDBOXES},
    {"beamline_worker_script_sandboxes_busy", "gauge", "Script sandboxes running a job.", 1,
     BW_G_SANDBOXES_BUSY},
    {"beamline_worker_script_jobs_waiting", "gauge", "Script jobs waiting for a free sandbox.", 1,
     BW_G_SANDBOX_QUEUE},
    {"beamline_worker_script_sandbox_starts_total", "counter", "Script sandbox processes started.", 0,
     BW_C_SANDBOX_STARTS},
    {"beamline_worker_script_sandbox_deaths_total", "counter",
     "Script sandboxes that died during a job (the job failed with SCRIPT_CRASHED).", 0, BW_C_SANDBOX_DEATHS},
    {"beamline_worker_script_sandbox_memory_kills_total", "counter",
     "Script sandboxes killed over SCRIPT_MAX_MEMORY_MB.", 0, BW_C_SANDBOX_MEMORY_KILLS},
    {"beamline_worker_script_sandbox_stop_kills_total", "counter",
     "Script sandboxes killed to stop a cancelled or overdue job.", 0, BW_C_SANDBOX_STOP_KILLS},
    {"beamline_worker_sql_connections", "gauge", "PostgreSQL connections open, all pools.", 1,
     BW_G_SQL_CONNECTIONS},
    {"beamline_worker_sql_jobs_waiting", "gauge", "sql jobs waiting for a connection, all pools.", 1,
     BW_G_SQL_WAITING},
    {"beamline_worker_sql_connect_failures_total", "counter", "PostgreSQL connection attempts that failed.",
     0, BW_C_SQL_CONNECT_FAILURES},
    {"beamline_worker_sql_pipelined_total", "counter",
     "sql statements sent on a connection busy with others (pipeline mode).", 0, BW_C_SQL_PIPELINED},
    {"beamline_worker_sql_prepared_total", "counter", "sql statements prepared on a connection.", 0,
     BW_C_SQL_PREPARED},
    {"beamline_worker_sql_resent_total", "counter",
     "sql statements sent again (hit by a cancel meant for another, or their prepared statement lost).", 0,
     BW_C_SQL_RESENT},
    {"beamline_worker_sql_tenant_resets_total", "counter",
     "PostgreSQL connections reset (DISCARD ALL) to serve another tenant than the one before.", 0,
     BW_C_SQL_TENANT_RESETS},
    {"beamline_worker_sql_cancels_total", "counter",
     "Cancel requests sent for statements of cancelled or overdue sql jobs.", 0, BW_C_SQL_CANCELS},
    {"beamline_worker_approvals_pending", "gauge", "Human approvals waiting for a decision.", 1,
     BW_G_APPROVALS_PENDING},
    {"beamline_worker_approval_journal_errors_total", "counter",
     "Approval journal writes that failed (disk full, I/O error); the job or vote was refused.", 0,
     BW_C_APPROVAL_JOURNAL_ERRORS},
    {"beamline_worker_js_delivered_total", "counter", "JetStream assignment deliveries received.", 0,
     BW_C_JS_DELIVERED},
    {"beamline_worker_js_redelivered_total", "counter",
     "JetStream deliveries that were redeliveries (delivery count above 1).", 0, BW_C_JS_REDELIVERED},
    {"beamline_worker_js_acks_total", "counter", "JetStream deliveries acknowledged after their result.", 0,
     BW_C_JS_ACKS},
    {"beamline_worker_js_naks_total", "counter",
     "JetStream deliveries given back (drain, result not published, worker fault).", 0, BW_C_JS_NAKS},
    {"beamline_worker_js_terms_total", "counter",
     "JetStream deliveries terminated because they can never succeed (dead-lettered).", 0, BW_C_JS_TERMS},
    {"beamline_worker_js_in_progress_total", "counter", "JetStream in-progress acknowledgements sent.", 0,
     BW_C_JS_IN_PROGRESS},
    {"beamline_worker_js_max_deliver_total", "counter",
     "Assignments dead-lettered at CAF_JS_MAX_DELIVER deliveries.", 0, BW_C_JS_MAX_DELIVER},
    {"beamline_worker_js_pull_requests_total", "counter", "JetStream pull requests sent.", 0, BW_C_JS_PULLS},
    {"beamline_worker_js_result_store_hits_total", "counter",
     "Assignments answered with a result from the shared result store (not run again).", 0,
     BW_C_JS_STORE_HITS},
    {"beamline_worker_js_result_store_errors_total", "counter",
     "Result store reads or writes that failed or timed out.", 0, BW_C_JS_STORE_ERRORS},
    {"beamline_worker_js_ack_pending", "gauge", "JetStream deliveries this worker holds unacknowledged.", 1,
     BW_G_JS_ACK_PENDING},
    {"beamline_worker_js_consumer_pending", "gauge",
     "Messages of the consumer not yet delivered to any worker (as of the last delivery).", 1,
     BW_G_JS_PENDING},
    {"beamline_worker_js_pull_outstanding", "gauge",
     "Messages asked for in open pull requests and not yet received.", 1, BW_G_JS_PULL_OUTSTANDING},
    {"beamline_worker_health_connections", "gauge", "Connections the health server holds.", 1,
     BW_G_HEALTH_CONNECTIONS},
    {"beamline_worker_health_header_timeouts_total", "counter",
     "Health connections closed because a request's headers were not in within HEALTH_HEADER_TIMEOUT_MS.", 0,
     BW_C_HEALTH_HEADER_TIMEOUTS},
    {"beamline_worker_health_evictions_total", "counter",
     "Health connections closed to admit a new one (HEALTH_MAX_CONNECTIONS or the per-address cap reached).",
     0, BW_C_HEALTH_EVICTIONS},
};

static void render_simples(bw_buf_t *o)
{
    for (size_t i = 0; i < sizeof simples / sizeof simples[0]; i++) {
        const simple_t *s = &simples[i];
        long long v;
        if (s->index < 0)
            v = strcmp(bw_metrics_readiness(), "READY") == 0;
        else if (s->is_gauge)
            v = (long long)bw_metrics_get((bw_gauge_t)s->index);
        else
            v = (long long)ld(&M.counters[s->index]);
        header(o, s->name, s->type, s->help);
        bw_buf_printf(o, "%s %lld\n", s->name, v);
    }
    header(o, "beamline_worker_log_lines_dropped_total", "counter",
           "Log lines dropped: LOG_BUFFER_BYTES full (stdout not keeping up) or stdout failing.");
    bw_buf_printf(o, "beamline_worker_log_lines_dropped_total %llu\n", (unsigned long long)bw_log_dropped());
    header(o, "beamline_worker_dlq_entries_total", "counter", "Dead letters, by reason.");
    for (size_t r = 0; r < NREASONS; r++)
        bw_buf_printf(o, "beamline_worker_dlq_entries_total{reason=\"%s\"} %llu\n", dl_reasons[r],
                      (unsigned long long)ld(&M.dead_letters[r]));
}

/* The directory is opened with open(2) + fdopendir rather than opendir: ThreadSanitizer sees the new
   descriptor then, instead of taking a number libuv closed with a raw syscall for that old descriptor
   (a false race between this thread's closedir and the loop's last use of the number). */
static long count_fds(void)
{
    long n = 0;
    int fd = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (d == NULL) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    while (readdir(d) != NULL)
        n++;
    closedir(d);
    return n - 3; /* ".", ".." and the directory's own fd */
}

int64_t bw_metrics_rss_bytes(void)
{
    int64_t virt, rss;
    bw_proc_memory(0, &virt, &rss);
    return rss;
}

static void render_process(bw_buf_t *o)
{
    struct rusage ru;
    struct rlimit rl;
    int64_t virt, rss;
    bw_proc_memory(0, &virt, &rss);
    getrusage(RUSAGE_SELF, &ru);
    getrlimit(RLIMIT_NOFILE, &rl);
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
                 ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) / 1e6;
    header(o, "process_cpu_seconds_total", "counter", "User and system CPU time.");
    bw_buf_printf(o, "process_cpu_seconds_total %.3f\n", cpu);
    header(o, "process_resident_memory_bytes", "gauge", "Resident set size.");
    bw_buf_printf(o, "process_resident_memory_bytes %lld\n", (long long)rss);
    header(o, "process_virtual_memory_bytes", "gauge", "Virtual memory size.");
    bw_buf_printf(o, "process_virtual_memory_bytes %lld\n", (long long)virt);
    header(o, "process_open_fds", "gauge", "Open file descriptors.");
    bw_buf_printf(o, "process_open_fds %ld\n", count_fds());
    header(o, "process_max_fds", "gauge", "RLIMIT_NOFILE.");
    bw_buf_printf(o, "process_max_fds %llu\n", (unsigned long long)rl.rlim_cur);
    header(o, "process_start_time_seconds", "gauge", "Start time since the epoch.");
    bw_buf_printf(o, "process_start_time_seconds %.3f\n", (double)M.start_wall_ms / 1000.0);
    header(o, "beamline_worker_build_info", "gauge", "Version and commit of this build.");
    bw_buf_printf(o, "beamline_worker_build_info{version=\"%s\",commit=\"%s\"} 1\n", BW_VERSION,
                  BW_GIT_COMMIT);
}

void bw_metrics_render(bw_buf_t *out)
{
    render_jobs(out);
    render_histograms(out);
    render_simples(out);
    render_approvals(out);
    pthread_mutex_lock(&M.collector_mu);
    if (M.collector != NULL)
        M.collector(M.collector_ud, out);
    if (M.tenant_text != NULL)
        bw_buf_append(out, M.tenant_text, M.tenant_len);
    pthread_mutex_unlock(&M.collector_mu);
    render_process(out);
}

static json_t *per_type_json(void)
{
    json_t *o = json_object();
    for (int t = 0; t < M.ntypes; t++) {
        json_t *st = json_object();
        json_object_set_new(st, "received", json_integer((json_int_t)ld(&M.received[t])));
        for (int s = 0; s < NSTATUS; s++)
            json_object_set_new(st, status_names[s], json_integer((json_int_t)ld(&M.finished[t][s])));
        json_object_set_new(o, M.types[t], st);
    }
    return o;
}

void bw_metrics_state_json(bw_buf_t *out, const char *worker_id)
{
    int64_t running = bw_metrics_get(BW_G_IN_FLIGHT), max = bw_metrics_get(BW_G_MAX_CONCURRENCY);
    const char *readiness = bw_metrics_readiness();
    json_t *o = json_pack(
        "{sssbsssbsfsIsIsIsIs{sbsbsIsIsI}so}", "worker_id", worker_id, "ready",
        strcmp(readiness, "READY") == 0, "readiness", readiness, "draining",
        bw_metrics_get(BW_G_DRAINING) != 0, "load",
        max > 0 ? (double)bw_metrics_get(BW_G_SHARED_RUNNING) / (double)max : 0.0, "jobs_in_flight",
        (json_int_t)running, "jobs_queued", (json_int_t)bw_metrics_get(BW_G_QUEUED), "max_concurrency",
        (json_int_t)max, "uptime_s", (json_int_t)((bw_wall_ms() - M.start_wall_ms) / 1000), "nats",
        "connected", bw_metrics_get(BW_G_NATS_CONNECTED) != 0, "subscribed",
        bw_metrics_get(BW_G_SUBSCRIBED) != 0, "reconnects", (json_int_t)ld(&M.counters[BW_C_NATS_RECONNECTS]),
        "slow_consumer_events", (json_int_t)ld(&M.counters[BW_C_SLOW_CONSUMER_EVENTS]), "dropped",
        (json_int_t)bw_metrics_get(BW_G_DROPPED), "jobs", per_type_json());
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    bw_buf_puts(out, s);
    free(s);
    json_decref(o);
}
