/*
 * bw-loadgen: drives workers over NATS with real ExecAssignments and measures the results that come
 * back (see DESIGN.md "Bars"; bench/run-echo.sh is the usual way to run it).
 *
 * Closed loop keeps exactly --inflight jobs outstanding: each job's first result triggers the next
 * send. Open loop sends at --rate jobs/s on a fixed schedule and measures latency from the *scheduled*
 * send time, so a stalled sender or worker cannot hide queueing (no coordinated omission).
 *
 * Threads: the main thread parses options, sends (the whole open loop, the first closed-loop window),
 * waits, drains and reports. nats.c's delivery thread for the result subscription ("lg-results") runs
 * on_result: it records the result and, in closed loop, publishes the next job. Every send passes a
 * gate (a counter of senders plus a "closed" bit) so the main thread can stop sending and then know
 * that nobody is still inside a send.
 *
 * --js-publish sends every assignment as an asynchronous JetStream publish (a stream must capture the
 * subject): nats.c matches each PubAck on its own reply subscription; a negative PubAck is counted
 * (pub_ack_errors) and its job shows up as lost. Before draining, the run waits (at most --drain-ms) for
 * the PubAcks still outstanding and says so when some never came.
 *
 * Invariants: job `seq` has one slot in fixed-size chunks that never move, so the result thread
 * indexes them without a lock. A sender writes t_sched/t_send before its publish; the main thread
 * reads them only after the gate has closed. The result thread touches only the atomics (hits,
 * t_recv). Results are matched by assignment_id `lg-<runid>-<seq>`; anything else is "foreign".
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <nats/nats.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "lg_scan.h"
#include "lg_tmpl.h"

#define CHUNK_BITS 16
#define CHUNK_SLOTS (1u << CHUNK_BITS)
#define MAX_CHUNKS 4096                   /* 268M jobs per run */
#define PROBE_BASE 1000000000000000000ULL /* seqs at or above this are readiness probes */
#define GATE_CLOSED (UINT64_C(1) << 63)
#define SETTLE_NS (100 * 1000000LL) /* extra wait after the last answer, to catch duplicates */
#define NS_PER_S 1000000000LL
#define NS_PER_MS 1000000LL
#define SLEEP_SLICE_NS (50 * NS_PER_MS) /* longest sleep without looking at g_stop */

#define DEFAULT_PAYLOAD                                                                                      \
    "{\"seq\":{{seq}},\"message\":\"hello from bw-loadgen\",\"data\":\"abcdefghijklmnopqrstuvwxyz0123\","    \
    "\"n\":12345,\"ok\":true}"

typedef enum { ST_SUCCESS, ST_ERROR, ST_TIMEOUT, ST_CANCELLED, ST_OTHER, ST_COUNT } status_t;
static const char *const status_names[ST_COUNT] = {"success", "error", "timeout", "cancelled", "other"};

typedef struct lg_opts {
    const char *url, *subject, *result_subject, *type, *payload, *label, *tenant;
    bool open_loop, envelope, send_asap, js_publish;
    int inflight;
    double rate, duration_s, warmup_s;
    int64_t count; /* 0: send for duration_s */
    int64_t deadline_ms, drain_ms, wait_ready_ms;
} lg_opts_t;

/* One job. See the file comment for who writes which field. */
typedef struct slot {
    int64_t t_sched;        /* ns, latency reference: scheduled (open) or actual (closed) send time */
    int64_t t_send;         /* ns of the publish; 0 when never published */
    _Atomic int64_t t_recv; /* ns of the first result */
    _Atomic uint32_t hits;  /* results seen */
} slot_t;

typedef struct lg {
    lg_opts_t opts;
    lg_tmpl_t tmpl;
    char *main_buf, *cb_buf; /* one render buffer per sending thread */
    char id_prefix[32];      /* "lg-<runid>-" */
    size_t id_prefix_len;
    uint64_t seq_limit;
    natsOptions *nopts;
    natsConnection *nc;
    natsSubscription *sub;
    _Atomic(slot_t *) chunks[MAX_CHUNKS];
    _Atomic uint64_t gate, next_seq, sent, send_errors, answered, dup_results, dup_jobs, foreign;
    _Atomic uint64_t statuses[ST_COUNT];
    _Atomic int64_t async_errors;
    jsCtx *js;                       /* --js-publish */
    _Atomic uint64_t pub_ack_errors; /* --js-publish: negative or missing PubAcks */
    _Atomic bool probe_ok;
    int64_t t_start, t_send_end;
    int64_t cpu_start_ns; /* this process's CPU time when the run started */
} lg_t;

/* Figures computed from the slots once the run is over. */
typedef struct stats {
    uint64_t sent, received, lost, measured_results;
    int64_t *lat, *lag; /* ns; latency of measured jobs, send lag (open loop) */
    size_t nlat, nlag;
    int64_t last_lag;
    int64_t w0, w1; /* measured window */
    bool warmup_dropped;
} stats_t;

static volatile sig_atomic_t g_stop;

/* ---- small utilities ---- */

/* Out-of-memory policy: a benchmark tool has nothing sensible left to do, so it says so and aborts. */
static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (p == NULL) {
        fprintf(stderr, "bw-loadgen: out of memory\n");
        abort();
    }
    return p;
}

/* Monotonic time in ns: every timestamp in this file uses this clock. */
static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

/* CPU time (user + system) used so far by this process, in ns. */
static int64_t cpu_ns(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ((int64_t)ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * NS_PER_S +
           ((int64_t)ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000;
}

/*
 * Sleeps until monotonic time `t` (returns at once when already past); false when asked to stop.
 * Sleeps in slices because a signal usually lands on one of nats.c's threads, not on this one.
 */
static bool sleep_until(int64_t t)
{
    for (int64_t now = now_ns(); !g_stop && now < t; now = now_ns()) {
        int64_t until = t - now > SLEEP_SLICE_NS ? now + SLEEP_SLICE_NS : t;
        struct timespec ts = {.tv_sec = until / NS_PER_S, .tv_nsec = until % NS_PER_S};
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
    }
    return !g_stop;
}

static void on_signal(int sig)
{
    g_stop = 1;
}

/* SIGINT/SIGTERM stop sending and draining early; the figures gathered so far are still reported. */
static void install_signals(void)
{
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

/* ---- options ---- */

static void usage(FILE *f)
{
    fprintf(f, "usage: bw-loadgen [options]\n"
               "  --url URL              NATS server (default $NATS_URL or nats://127.0.0.1:4222)\n"
               "  --subject S            assignment subject (caf.exec.assign.v1)\n"
               "  --result-subject S     result subject (caf.exec.result.v1)\n"
               "  --mode closed|open     closed loop (default) or fixed-rate open loop\n"
               "  --inflight N           closed loop: jobs kept in flight (64)\n"
               "  --rate R               open loop: jobs per second\n"
               "  --duration S           seconds of sending (10)\n"
               "  --count N              send N jobs instead of sending for --duration\n"
               "  --warmup S             seconds excluded from the figures (1)\n"
               "  --type T               job type (echo)\n"
               "  --payload JSON         job payload object; {{seq}} becomes the job's sequence number\n"
               "  --tenant T             tenant_id (bench)\n"
               "  --form bare|envelope   assignment form (bare)\n"
               "  --deadline-ms N        options.deadline_ms (10000)\n"
               "  --drain-ms N           how long to wait for stragglers after sending (3000)\n"
               "  --wait-ready-ms N      first probe until a worker answers, for up to N ms (0: off)\n"
               "  --send-asap            one socket write per publish instead of the buffered flusher\n"
               "  --js-publish           JetStream publishes (asynchronous, every PubAck checked)\n"
               "  --label TEXT           copied into the JSON output\n");
}

/* Parses a number in [min, max]; false (with a message) when `s` is not one. */
static bool parse_num(const char *name, const char *s, double min, double max, double *out)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v >= min && v <= max)) {
        fprintf(stderr, "bw-loadgen: --%s: expected a number in [%g, %g], got '%s'\n", name, min, max, s);
        return false;
    }
    *out = v;
    return true;
}

/* Same as parse_num for integers. */
static bool parse_int(const char *name, const char *s, int64_t min, int64_t max, int64_t *out)
{
    double v;
    if (!parse_num(name, s, (double)min, (double)max, &v))
        return false;
    if (v != floor(v)) {
        fprintf(stderr, "bw-loadgen: --%s: expected an integer, got '%s'\n", name, s);
        return false;
    }
    *out = (int64_t)v;
    return true;
}

/* Picks one of two spellings; false (with a message) for anything else. */
static bool parse_choice(const char *name, const char *s, const char *no, const char *yes, bool *out)
{
    if (strcmp(s, no) != 0 && strcmp(s, yes) != 0) {
        fprintf(stderr, "bw-loadgen: --%s: expected %s or %s, got '%s'\n", name, no, yes, s);
        return false;
    }
    *out = strcmp(s, yes) == 0;
    return true;
}

static const struct option long_opts[] = {
    {"url", required_argument, NULL, 'u'},
    {"subject", required_argument, NULL, 's'},
    {"result-subject", required_argument, NULL, 'r'},
    {"mode", required_argument, NULL, 'm'},
    {"inflight", required_argument, NULL, 'i'},
    {"rate", required_argument, NULL, 'R'},
    {"duration", required_argument, NULL, 'd'},
    {"count", required_argument, NULL, 'c'},
    {"warmup", required_argument, NULL, 'w'},
    {"type", required_argument, NULL, 't'},
    {"payload", required_argument, NULL, 'p'},
    {"tenant", required_argument, NULL, 'T'},
    {"form", required_argument, NULL, 'f'},
    {"deadline-ms", required_argument, NULL, 'D'},
    {"drain-ms", required_argument, NULL, 'x'},
    {"wait-ready-ms", required_argument, NULL, 'W'},
    {"send-asap", no_argument, NULL, 'a'},
    {"js-publish", no_argument, NULL, 'J'},
    {"label", required_argument, NULL, 'l'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* Where a plain string option is stored; NULL for the other options. */
static const char **string_opt(lg_opts_t *o, int c)
{
    switch (c) {
    case 'u':
        return &o->url;
    case 's':
        return &o->subject;
    case 'r':
        return &o->result_subject;
    case 't':
        return &o->type;
    case 'p':
        return &o->payload;
    case 'T':
        return &o->tenant;
    case 'l':
        return &o->label;
    }
    return NULL;
}

/* Applies one option; false when its value is invalid. */
static bool apply_opt(lg_opts_t *o, int c, const char *v)
{
    const char **str = string_opt(o, c);
    int64_t n = 0;
    if (str != NULL) {
        *str = v;
        return true;
    }
    switch (c) {
    case 'a':
        o->send_asap = true;
        return true;
    case 'J':
        o->js_publish = true;
        return true;
    case 'm':
        return parse_choice("mode", v, "closed", "open", &o->open_loop);
    case 'f':
        return parse_choice("form", v, "bare", "envelope", &o->envelope);
    case 'R':
        return parse_num("rate", v, 0.001, 1e8, &o->rate);
    case 'd':
        return parse_num("duration", v, 0.001, 1e6, &o->duration_s);
    case 'w':
        return parse_num("warmup", v, 0, 1e6, &o->warmup_s);
    case 'c':
        return parse_int("count", v, 1, (int64_t)MAX_CHUNKS * CHUNK_SLOTS, &o->count);
    case 'D':
        return parse_int("deadline-ms", v, 1, INT32_MAX, &o->deadline_ms);
    case 'x':
        return parse_int("drain-ms", v, 0, INT32_MAX, &o->drain_ms);
    case 'W':
        return parse_int("wait-ready-ms", v, 0, INT32_MAX, &o->wait_ready_ms);
    case 'i':
        if (!parse_int("inflight", v, 1, 10000000, &n))
            return false;
        o->inflight = (int)n;
        return true;
    }
    return false;
}

/* Fills `o` from the command line; returns 0, 1 for --help, or -1 on a usage error. */
static int parse_opts(int argc, char **argv, lg_opts_t *o)
{
    const char *url = getenv("NATS_URL");
    *o = (lg_opts_t){.url = url != NULL && *url != '\0' ? url : "nats://127.0.0.1:4222",
                     .subject = "caf.exec.assign.v1",
                     .result_subject = "caf.exec.result.v1",
                     .type = "echo",
                     .payload = DEFAULT_PAYLOAD,
                     .label = "",
                     .tenant = "bench",
                     .inflight = 64,
                     .duration_s = 10,
                     .warmup_s = 1,
                     .deadline_ms = 10000,
                     .drain_ms = 3000};
    int c;
    while ((c = getopt_long(argc, argv, "h", long_opts, NULL)) != -1) {
        if (c == 'h')
            return 1;
        if (c == '?' || !apply_opt(o, c, optarg))
            return -1;
    }
    if (optind < argc || (o->open_loop && o->rate <= 0) || *o->type == '\0' || *o->tenant == '\0') {
        fprintf(stderr, "bw-loadgen: %s\n",
                optind < argc        ? "unexpected argument"
                : *o->type == '\0'   ? "--type must not be empty"
                : *o->tenant == '\0' ? "--tenant must not be empty"
                                     : "--mode open needs --rate");
        return -1;
    }
    return 0;
}

/* ---- job slots ---- */

/* The slot of job `seq`, allocating its chunk when `alloc`; NULL when out of range or absent. */
static slot_t *slot_at(lg_t *lg, uint64_t seq, bool alloc)
{
    uint64_t c = seq >> CHUNK_BITS;
    if (c >= MAX_CHUNKS)
        return NULL;
    slot_t *chunk = atomic_load_explicit(&lg->chunks[c], memory_order_acquire);
    if (chunk == NULL && alloc) {
        slot_t *fresh = xcalloc(CHUNK_SLOTS, sizeof(slot_t)), *expected = NULL;
        if (atomic_compare_exchange_strong(&lg->chunks[c], &expected, fresh))
            chunk = fresh;
        else {
            free(fresh); /* another sender won the race */
            chunk = expected;
        }
    }
    return chunk != NULL ? &chunk[seq & (CHUNK_SLOTS - 1)] : NULL;
}

/* ---- sending ---- */

/* Registers a sender; false when sending is over (the gate is closed). */
static bool gate_enter(lg_t *lg)
{
    if (atomic_fetch_add(&lg->gate, 1) & GATE_CLOSED) {
        atomic_fetch_sub(&lg->gate, 1);
        return false;
    }
    return true;
}

static void gate_leave(lg_t *lg)
{
    atomic_fetch_sub_explicit(&lg->gate, 1, memory_order_release);
}

/* Stops all sending and waits until no sender is left inside a send. Main thread. */
static void gate_close(lg_t *lg)
{
    atomic_fetch_or(&lg->gate, GATE_CLOSED);
    while ((atomic_load_explicit(&lg->gate, memory_order_acquire) & ~GATE_CLOSED) != 0)
        sched_yield();
    lg->t_send_end = now_ns();
}

/* Publishes assignment `seq` with the tenant_id and version headers. */
static natsStatus publish_raw(lg_t *lg, char *buf, uint64_t seq, slot_t *slot, int64_t t_sched)
{
    size_t len = lg_tmpl_render(&lg->tmpl, seq, buf);
    natsMsg *m = NULL;
    natsStatus s = natsMsg_Create(&m, lg->opts.subject, NULL, buf, (int)len);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(m, "tenant_id", lg->opts.tenant);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(m, "version", "1");
    if (slot != NULL) {
        slot->t_send = now_ns();
        slot->t_sched = t_sched != 0 ? t_sched : slot->t_send;
    }
    if (s == NATS_OK)
        s = lg->js != NULL ? js_PublishMsgAsync(lg->js, &m, NULL) : natsConnection_PublishMsg(lg->nc, m);
    natsMsg_Destroy(m); /* NULL when js_PublishMsgAsync took it */
    return s;
}

/*
 * Sends the next job: `t_sched` is its scheduled time (open loop) or 0 for "now" (closed loop).
 * False when nothing was sent: the gate is closed, --count is reached, or the publish failed.
 * May run on the main thread and the result thread at once.
 */
static bool send_one(lg_t *lg, char *buf, int64_t t_sched)
{
    if (!gate_enter(lg))
        return false;
    uint64_t seq = atomic_fetch_add(&lg->next_seq, 1);
    slot_t *slot = seq < lg->seq_limit ? slot_at(lg, seq, true) : NULL;
    bool ok = slot != NULL && publish_raw(lg, buf, seq, slot, t_sched) == NATS_OK;
    if (ok)
        atomic_fetch_add(&lg->sent, 1);
    else if (slot != NULL) {
        slot->t_send = 0;
        atomic_fetch_add(&lg->send_errors, 1);
    }
    gate_leave(lg);
    return ok;
}

/* ---- receiving (nats.c delivery thread) ---- */

/* Extracts the seq from "lg-<runid>-<seq>"; false for another run's or a foreign id. */
static bool parse_seq(const lg_t *lg, const lg_result_view_t *r, uint64_t *seq)
{
    size_t pl = lg->id_prefix_len;
    if (r->id_len <= pl || r->id_len > pl + 19 || memcmp(r->id, lg->id_prefix, pl) != 0)
        return false;
    uint64_t v = 0;
    for (size_t i = pl; i < r->id_len; i++) {
        if (r->id[i] < '0' || r->id[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(r->id[i] - '0');
    }
    *seq = v;
    return true;
}

static status_t status_of(const lg_result_view_t *r)
{
    for (int s = 0; s < ST_OTHER; s++)
        if (r->status != NULL && r->status_len == strlen(status_names[s]) &&
            memcmp(r->status, status_names[s], r->status_len) == 0)
            return (status_t)s;
    return ST_OTHER;
}

/* Counts a result for job `seq`; true when it is the job's first one. */
static bool record_result(lg_t *lg, uint64_t seq, const lg_result_view_t *r, int64_t now)
{
    if (seq >= PROBE_BASE) {
        atomic_store(&lg->probe_ok, true);
        return false;
    }
    slot_t *slot = seq < atomic_load(&lg->next_seq) ? slot_at(lg, seq, false) : NULL;
    if (slot == NULL) {
        atomic_fetch_add(&lg->foreign, 1);
        return false;
    }
    uint32_t before = atomic_fetch_add(&slot->hits, 1);
    if (before != 0) {
        atomic_fetch_add(&lg->dup_results, 1);
        if (before == 1)
            atomic_fetch_add(&lg->dup_jobs, 1);
        return false;
    }
    atomic_store_explicit(&slot->t_recv, now, memory_order_relaxed);
    atomic_fetch_add(&lg->statuses[status_of(r)], 1);
    atomic_fetch_add_explicit(&lg->answered, 1, memory_order_release);
    return true;
}

/* Subscription callback: records the result and, in closed loop, sends the job that replaces it. */
static void on_result(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    static _Thread_local bool named;
    lg_t *lg = closure;
    int64_t now = now_ns();
    lg_result_view_t r;
    uint64_t seq = 0;
    bool first = false;
    if (!named) {
        pthread_setname_np(pthread_self(), "lg-results");
        named = true;
    }
    if (lg_scan_result(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), &r) &&
        parse_seq(lg, &r, &seq))
        first = record_result(lg, seq, &r, now);
    else
        atomic_fetch_add(&lg->foreign, 1);
    natsMsg_Destroy(msg);
    if (first && !lg->opts.open_loop)
        send_one(lg, lg->cb_buf, 0);
}

/* Async errors (slow consumer, ...) are shown, the first few of them: they usually explain losses. */
static void on_async_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
    lg_t *lg = closure;
    if (atomic_fetch_add(&lg->async_errors, 1) < 5)
        fprintf(stderr, "bw-loadgen: async error: %s\n", natsStatus_GetText(err));
}

/* --js-publish: a PubAck that said no (e.g. no stream holds the subject). Runs on a nats.c thread. */
static void on_pub_ack_error(jsCtx *js, jsPubAckErr *pae, void *closure)
{
    lg_t *lg = closure;
    if (atomic_fetch_add(&lg->pub_ack_errors, 1) < 5)
        fprintf(stderr, "bw-loadgen: publish not acknowledged: %s\n",
                pae->ErrText != NULL ? pae->ErrText : natsStatus_GetText(pae->Err));
}

/* --js-publish: the JetStream context. No stall: the closed loop bounds what is outstanding, and an
   open loop must not be slowed down by its own publishes. */
static natsStatus connect_js(lg_t *lg)
{
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = 1000000;
    jo.PublishAsync.ErrHandler = on_pub_ack_error;
    jo.PublishAsync.ErrHandlerClosure = lg;
    return natsConnection_JetStream(&lg->js, lg->nc, &jo);
}

/* --js-publish: waits (at most --drain-ms) for the PubAcks still outstanding. */
static void wait_pub_acks(lg_t *lg)
{
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = lg->opts.drain_ms > 0 ? lg->opts.drain_ms : 1;
    if (js_PublishAsyncComplete(lg->js, &po) != NATS_OK)
        fprintf(stderr, "bw-loadgen: PubAcks still outstanding after %lld ms\n", (long long)po.MaxWait);
}

/* ---- setup and teardown ---- */

/* A fresh random run id, so results from earlier runs on the same subject are never matched. */
static void make_run_id(lg_t *lg)
{
    uint32_t r = 0;
    if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
        r = (uint32_t)now_ns() ^ ((uint32_t)getpid() << 16);
    lg->id_prefix_len = (size_t)snprintf(lg->id_prefix, sizeof lg->id_prefix, "lg-%08x-", r);
}

/* Connects and subscribes to results; the flush makes sure the server has the subscription. */
static int connect_nats(lg_t *lg)
{
    natsStatus s = natsOptions_Create(&lg->nopts);
    if (s == NATS_OK)
        s = natsOptions_SetURL(lg->nopts, lg->opts.url);
    if (s == NATS_OK)
        s = natsOptions_SetName(lg->nopts, "bw-loadgen");
    if (s == NATS_OK)
        s = natsOptions_SetSendAsap(lg->nopts, lg->opts.send_asap);
    if (s == NATS_OK)
        s = natsOptions_SetErrorHandler(lg->nopts, on_async_error, lg);
    if (s == NATS_OK)
        s = natsConnection_Connect(&lg->nc, lg->nopts);
    if (s == NATS_OK)
        s = natsConnection_Subscribe(&lg->sub, lg->nc, lg->opts.result_subject, on_result, lg);
    if (s == NATS_OK)
        s = natsSubscription_SetPendingLimits(lg->sub, -1, -1); /* never drop: a drop looks like a loss */
    if (s == NATS_OK)
        s = natsConnection_FlushTimeout(lg->nc, 5000);
    if (s == NATS_OK && lg->opts.js_publish)
        s = connect_js(lg);
    if (s != NATS_OK)
        fprintf(stderr, "bw-loadgen: %s: %s\n", lg->opts.url, natsStatus_GetText(s));
    return s == NATS_OK ? 0 : -1;
}

/* Everything before the run: template, buffers, connection. */
static int setup(lg_t *lg)
{
    make_run_id(lg);
    lg_tmpl_spec_t spec = {.envelope = lg->opts.envelope,
                           .id_prefix = lg->id_prefix,
                           .tenant = lg->opts.tenant,
                           .type = lg->opts.type,
                           .payload = lg->opts.payload,
                           .deadline_ms = lg->opts.deadline_ms};
    if (!lg_tmpl_build(&lg->tmpl, &spec))
        return -1;
    lg->main_buf = xcalloc(1, lg_tmpl_max_len(&lg->tmpl));
    lg->cb_buf = xcalloc(1, lg_tmpl_max_len(&lg->tmpl));
    lg->seq_limit = lg->opts.count > 0 ? (uint64_t)lg->opts.count : (uint64_t)MAX_CHUNKS * CHUNK_SLOTS;
    return connect_nats(lg);
}

/* Releases everything; safe on a partly set up lg. */
static void teardown(lg_t *lg)
{
    jsCtx_Destroy(lg->js);
    natsSubscription_Destroy(lg->sub);
    natsConnection_Destroy(lg->nc);
    natsOptions_Destroy(lg->nopts);
    /* Only once nats.c's threads are gone can no callback touch a slot or a buffer any more;
       if they linger, leave the memory to the process exit. */
    if (nats_CloseAndWait(2000) != NATS_OK)
        return;
    for (int c = 0; c < MAX_CHUNKS; c++)
        free(atomic_load(&lg->chunks[c]));
    lg_tmpl_dispose(&lg->tmpl);
    free(lg->main_buf);
    free(lg->cb_buf);
    free(lg);
}

/* ---- the run ---- */

/* Publishes probes every 100 ms until one result comes back: proves the whole path works. */
static bool wait_ready(lg_t *lg)
{
    int64_t deadline = now_ns() + lg->opts.wait_ready_ms * NS_PER_MS;
    for (uint64_t n = 0; !g_stop && now_ns() < deadline; n++) {
        publish_raw(lg, lg->main_buf, PROBE_BASE + n, NULL, 0);
        natsConnection_Flush(lg->nc);
        for (int i = 0; i < 100 && !atomic_load(&lg->probe_ok); i++)
            usleep(1000);
        if (atomic_load(&lg->probe_ok))
            return true;
    }
    fprintf(stderr, "bw-loadgen: no worker answered within %lld ms\n", (long long)lg->opts.wait_ready_ms);
    return false;
}

/* Closed loop with --count: waits until all were sent, or until results stop coming (lost jobs). */
static void wait_count_sent(lg_t *lg)
{
    uint64_t last = atomic_load(&lg->answered);
    int64_t stalled_since = now_ns();
    while (!g_stop && atomic_load(&lg->sent) + atomic_load(&lg->send_errors) < lg->seq_limit) {
        usleep(1000);
        uint64_t a = atomic_load(&lg->answered);
        if (a != last)
            last = a, stalled_since = now_ns();
        else if (now_ns() - stalled_since > lg->opts.drain_ms * NS_PER_MS)
            break;
    }
}

/* Closed loop: fills the window, then the result thread keeps it full until time (or count) is up. */
static void run_closed(lg_t *lg)
{
    lg->t_start = now_ns();
    for (int i = 0; i < lg->opts.inflight && !g_stop; i++)
        if (!send_one(lg, lg->main_buf, 0))
            break;
    if (lg->opts.count > 0)
        wait_count_sent(lg);
    else
        sleep_until(lg->t_start + (int64_t)(lg->opts.duration_s * NS_PER_S));
    gate_close(lg);
}

/* Open loop: job i is due at start + i/rate; a late sender catches up at once, never skips. */
static void run_open(lg_t *lg)
{
    double period_ns = NS_PER_S / lg->opts.rate;
    prctl(PR_SET_TIMERSLACK, 1UL); /* default 50 us slack would be a visible share of 200 us gaps */
    lg->t_start = now_ns() + NS_PER_MS;
    int64_t end = lg->opts.count > 0 ? INT64_MAX : lg->t_start + (int64_t)(lg->opts.duration_s * NS_PER_S);
    for (uint64_t i = 0;; i++) {
        int64_t t = lg->t_start + (int64_t)((double)i * period_ns);
        if (t >= end || !sleep_until(t) || !send_one(lg, lg->main_buf, t))
            break;
    }
    gate_close(lg);
}

/* Waits for the outstanding results (at most --drain-ms), then a little more to catch duplicates. */
static void drain(lg_t *lg)
{
    int64_t deadline = now_ns() + lg->opts.drain_ms * NS_PER_MS;
    while (!g_stop && atomic_load_explicit(&lg->answered, memory_order_acquire) < atomic_load(&lg->sent) &&
           now_ns() < deadline)
        usleep(1000);
    int64_t settle = lg->opts.drain_ms * NS_PER_MS < SETTLE_NS ? lg->opts.drain_ms * NS_PER_MS : SETTLE_NS;
    sleep_until(now_ns() + settle);
    /* Draining the subscription delivers what nats.c already holds, then the counters stop moving.
       When interrupted, the server may be gone too (Ctrl-C reaches it), so do not wait for it. */
    if (g_stop)
        natsSubscription_Unsubscribe(lg->sub);
    else if (natsSubscription_Drain(lg->sub) == NATS_OK)
        natsSubscription_WaitForDrainCompletion(lg->sub, 2000);
}

/* ---- figures ---- */

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile `q` (0..1] of the sorted samples, in ms; 0 without samples. */
static double pct_ms(const int64_t *v, size_t n, double q)
{
    if (n == 0)
        return 0;
    size_t rank = (size_t)ceil(q * (double)n - 1e-9); /* so that 0.9 * 10 is rank 9, not 10 */
    return (double)v[rank == 0 ? 0 : rank - 1] / NS_PER_MS;
}

/* The measured window: after warmup, up to the end of sending (the whole run if warmup eats it). */
static void measured_window(const lg_t *lg, stats_t *st)
{
    st->w0 = lg->t_start + (int64_t)(lg->opts.warmup_s * NS_PER_S);
    st->w1 = lg->t_send_end;
    if (st->w1 - st->w0 < NS_PER_MS) {
        st->warmup_dropped = lg->opts.warmup_s > 0;
        st->w0 = lg->t_start;
    }
}

/* Adds one sent job to the figures. */
static void account_slot(const lg_t *lg, const slot_t *s, stats_t *st)
{
    uint32_t hits = atomic_load(&s->hits);
    int64_t t_recv = atomic_load(&s->t_recv);
    st->sent++;
    st->received += hits > 0;
    st->lost += hits == 0;
    st->last_lag = s->t_send - s->t_sched;
    if (hits > 0 && t_recv >= st->w0 && t_recv < st->w1)
        st->measured_results++;
    if (s->t_sched < st->w0 || s->t_sched >= st->w1)
        return;
    if (hits > 0)
        st->lat[st->nlat++] = t_recv - s->t_sched;
    if (lg->opts.open_loop)
        st->lag[st->nlag++] = st->last_lag;
}

/* Walks every slot once (the gate is closed and the subscription drained) and sorts the samples. */
static void compute_stats(lg_t *lg, stats_t *st)
{
    uint64_t n = atomic_load(&lg->next_seq);
    n = n < lg->seq_limit ? n : lg->seq_limit;
    measured_window(lg, st);
    st->lat = xcalloc(n + 1, sizeof(int64_t));
    st->lag = xcalloc(n + 1, sizeof(int64_t));
    for (uint64_t seq = 0; seq < n; seq++) {
        const slot_t *s = slot_at(lg, seq, false);
        if (s != NULL && s->t_send != 0)
            account_slot(lg, s, st);
    }
    qsort(st->lat, st->nlat, sizeof(int64_t), cmp_i64);
    qsort(st->lag, st->nlag, sizeof(int64_t), cmp_i64);
}

/* A real rounded to 3 decimals (µs when in ms), so the JSON stays short. */
static json_t *real3(double v)
{
    return json_real(round(v * 1000) / 1000);
}

static json_t *latency_json(const stats_t *st)
{
    return json_pack("{s:o,s:o,s:o,s:o,s:o}", "p50", real3(pct_ms(st->lat, st->nlat, 0.50)), "p90",
                     real3(pct_ms(st->lat, st->nlat, 0.90)), "p99", real3(pct_ms(st->lat, st->nlat, 0.99)),
                     "p999", real3(pct_ms(st->lat, st->nlat, 0.999)), "max",
                     real3(pct_ms(st->lat, st->nlat, 1.0)));
}

/* Status counts; success is always present, the others only when seen. */
static json_t *statuses_json(const lg_t *lg)
{
    json_t *o = json_object();
    for (int s = 0; s < ST_COUNT; s++) {
        uint64_t n = atomic_load(&lg->statuses[s]);
        if (n > 0 || s == ST_SUCCESS)
            json_object_set_new(o, status_names[s], json_integer((json_int_t)n));
    }
    return o;
}

/* Open-loop extras: how the sender kept to its schedule. */
static void add_open_loop(json_t *o, const lg_t *lg, const stats_t *st, double window_s)
{
    json_object_set_new(o, "send_rate_per_s", real3((double)st->nlag / window_s));
    json_object_set_new(o, "send_lag_ms",
                        json_pack("{s:o,s:o,s:o}", "p50", real3(pct_ms(st->lag, st->nlag, 0.5)), "p99",
                                  real3(pct_ms(st->lag, st->nlag, 0.99)), "max",
                                  real3(pct_ms(st->lag, st->nlag, 1.0))));
    json_object_set_new(o, "behind_schedule_at_end_ms", real3((double)st->last_lag / NS_PER_MS));
}

/* The one-line JSON report. */
static json_t *report_json(const lg_t *lg, const stats_t *st)
{
    double window_s = (double)(st->w1 - st->w0) / NS_PER_S;
    json_t *o = json_pack(
        "{s:s,s:s,s:s,s:s}", "label", lg->opts.label, "mode", lg->opts.open_loop ? "open" : "closed", "form",
        lg->opts.envelope ? "envelope" : "bare", "write_mode", lg->opts.send_asap ? "asap" : "buffered");
    if (o == NULL) /* a --label that is not UTF-8 */
        o = json_object();
    if (lg->opts.open_loop)
        json_object_set_new(o, "rate", real3(lg->opts.rate));
    else
        json_object_set_new(o, "inflight", json_integer(lg->opts.inflight));
    json_object_set_new(o, "sent", json_integer((json_int_t)st->sent));
    json_object_set_new(o, "received", json_integer((json_int_t)st->received));
    json_object_set_new(o, "lost", json_integer((json_int_t)st->lost));
    json_object_set_new(o, "duplicated", json_integer((json_int_t)atomic_load(&lg->dup_jobs)));
    json_object_set_new(o, "duplicate_results", json_integer((json_int_t)atomic_load(&lg->dup_results)));
    json_object_set_new(o, "foreign", json_integer((json_int_t)atomic_load(&lg->foreign)));
    json_object_set_new(o, "send_errors", json_integer((json_int_t)atomic_load(&lg->send_errors)));
    json_object_set_new(o, "publish", json_string(lg->opts.js_publish ? "jetstream" : "core"));
    if (lg->opts.js_publish)
        json_object_set_new(o, "pub_ack_errors", json_integer((json_int_t)atomic_load(&lg->pub_ack_errors)));
    json_object_set_new(o, "statuses", statuses_json(lg));
    json_object_set_new(o, "throughput_per_s",
                        real3(window_s > 0 ? (double)st->measured_results / window_s : 0));
    json_object_set_new(o, "latency_ms", latency_json(st));
    json_object_set_new(o, "duration_s", real3(window_s));
    json_object_set_new(o, "warmup_s", real3(st->warmup_dropped ? 0 : lg->opts.warmup_s));
    json_object_set_new(o, "message_bytes",
                        json_integer((json_int_t)lg_tmpl_render(&lg->tmpl, 0, lg->main_buf)));
    if (lg->opts.open_loop)
        add_open_loop(o, lg, st, window_s);
    /* Whole run, warmup and drain included: shows whether the generator itself was the bottleneck. */
    double cpu_ms = (double)(cpu_ns() - lg->cpu_start_ns) / NS_PER_MS;
    json_object_set_new(o, "loadgen_cpu_ms_per_1k_jobs",
                        real3(st->received ? cpu_ms * 1000 / (double)st->received : 0));
    if (g_stop) /* stopped early by a signal: the jobs still in flight count as lost */
        json_object_set_new(o, "interrupted", json_true());
    json_object_set_new(o, "run_id", json_stringn(lg->id_prefix + 3, lg->id_prefix_len - 4));
    return o;
}

/* The same figures for a human, on stderr. */
static void report_human(const lg_t *lg, const stats_t *st, json_t *o)
{
    json_t *lat = json_object_get(o, "latency_ms");
    fprintf(stderr,
            "bw-loadgen %s%s%s %s loop, %s writes, %s form: sent %llu, received %llu, lost %llu, "
            "duplicated %llu\n",
            *lg->opts.label ? "[" : "", lg->opts.label, *lg->opts.label ? "]" : "",
            lg->opts.open_loop ? "open" : "closed", lg->opts.send_asap ? "asap" : "buffered",
            lg->opts.envelope ? "envelope" : "bare", (unsigned long long)st->sent,
            (unsigned long long)st->received, (unsigned long long)st->lost,
            (unsigned long long)atomic_load(&lg->dup_jobs));
    fprintf(
        stderr,
        "  throughput %.1f jobs/s over %.2f s%s; latency ms p50 %.3f p90 %.3f p99 %.3f p99.9 %.3f max %.3f\n",
        json_real_value(json_object_get(o, "throughput_per_s")),
        json_real_value(json_object_get(o, "duration_s")),
        st->warmup_dropped ? " (run shorter than --warmup: warmup included)" : "",
        json_real_value(json_object_get(lat, "p50")), json_real_value(json_object_get(lat, "p90")),
        json_real_value(json_object_get(lat, "p99")), json_real_value(json_object_get(lat, "p999")),
        json_real_value(json_object_get(lat, "max")));
    if (lg->opts.open_loop && st->last_lag > NS_PER_MS)
        fprintf(stderr, "  the sender fell behind schedule: %.1f ms late at the end (max lag %.1f ms)\n",
                (double)st->last_lag / NS_PER_MS, pct_ms(st->lag, st->nlag, 1.0));
}

/* Prints both reports; the exit status is 1 when a job was lost or answered twice. */
static int report(lg_t *lg)
{
    stats_t st = {0};
    compute_stats(lg, &st);
    json_t *o = report_json(lg, &st);
    char *line = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(12));
    printf("%s\n", line != NULL ? line : "{}");
    fflush(stdout);
    report_human(lg, &st, o);
    int rc = st.lost > 0 || atomic_load(&lg->dup_jobs) > 0 || st.sent == 0 ? 1 : 0;
    free(line);
    json_decref(o);
    free(st.lat);
    free(st.lag);
    return rc;
}

int main(int argc, char **argv)
{
    lg_t *lg = xcalloc(1, sizeof *lg);
    int rc = 2, p = parse_opts(argc, argv, &lg->opts);
    if (p != 0) {
        usage(p > 0 ? stdout : stderr);
        rc = p > 0 ? 0 : 2;
        goto out;
    }
    install_signals();
    if (setup(lg) < 0 || (lg->opts.wait_ready_ms > 0 && !wait_ready(lg)))
        goto out;
    lg->cpu_start_ns = cpu_ns();
    if (lg->opts.open_loop)
        run_open(lg);
    else
        run_closed(lg);
    if (lg->js != NULL)
        wait_pub_acks(lg);
    drain(lg);
    rc = report(lg);
out:
    teardown(lg);
    return rc;
}
