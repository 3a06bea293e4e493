/*
 * `beamline-worker watch`: follows the workers' heartbeats on CAF_HEARTBEAT_SUBJECT (and, when asked, the
 * results and dead letters) and shows them three ways: a table redrawn in place on a terminal (with the
 * latest results and dead letters below it), plain lines when stdout is a pipe (one per message, for grep
 * and logs), or JSON lines (--json). --once waits one heartbeat interval, prints the table and exits.
 *
 * NATS delivers on its own threads (one per subscription); the callbacks only queue the message and
 * signal, and everything else (the table, the screen) belongs to the main thread, which also wakes every
 * second to age the "last seen" column. Everything shown comes from other programs: cells and JSON lines
 * go through cli/clitext.h, so no byte from NATS can act on the terminal.
 */
#include <jansson.h>
#include <nats/nats.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/clitext.h"
#include "net/bus.h"
#include "util/buf.h"
#include "util/clock.h"
#include "util/jsonw.h"
#include "util/xalloc.h"

#define MAX_WORKERS 10000  /* rows kept; heartbeats of further workers are counted, not shown */
#define RECENT_EVENTS 10   /* results and dead letters kept under the live table */
#define REDRAW_MS 1000     /* the live table's "last seen" ages this often at least */
#define SILENT_INTERVALS 3 /* a worker not heard for this many intervals shows as "silent" */

enum kind { K_HEARTBEAT, K_RESULT, K_DEAD_LETTER, K__COUNT };
static const char *const kind_names[K__COUNT] = {"heartbeat", "result", "dead_letter"};

typedef struct watch_args {
    bool results, dlq, once, json;
    int64_t interval_ms;
} watch_args_t;

typedef struct event {
    struct event *next;
    enum kind kind;
    natsMsg *msg;
} event_t;

typedef struct worker_row {
    char *id;
    json_t *hb;        /* the last heartbeat (unwrapped) */
    uint64_t seen_ms;  /* monotonic */
    int64_t seen_wall; /* ms since the epoch */
} worker_row_t;

typedef struct watch watch_t;
typedef struct sub_ctx {
    watch_t *w;
    enum kind kind;
} sub_ctx_t;

struct watch {
    const watch_args_t *args;
    natsConnection *nc;
    bool tty, lost; /* lost: the connection closed (no reconnects, as for every tool) */
    /* queue: filled by NATS' threads, emptied by the main thread */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    event_t *head, **tail;
    int open_subs; /* subscriptions whose handler may still run */
    /* main thread only */
    sub_ctx_t ctx[K__COUNT];
    worker_row_t *rows;
    size_t nrows, dropped;
    bw_buf_t recent[RECENT_EVENTS];
    size_t nrecent;
    long unreadable;
};

static volatile sig_atomic_t stop_requested;

void bw_cli_watch_usage(FILE *f)
{
    fprintf(
        f,
        "usage: beamline-worker watch [--results] [--dlq] [--once] [--json] [--interval-ms N]\n"
        "Follows the heartbeats on CAF_HEARTBEAT_SUBJECT: one row per worker (id, status, load, jobs in\n"
        "flight / concurrency, queue, uptime, last seen). On a terminal the table is redrawn in place\n"
        "(Ctrl-C ends it); piped, every heartbeat is one plain line. --results and --dlq also follow\n"
        "CAF_RESULT_SUBJECT and CAF_DLQ_SUBJECT. --json: JSON lines, one per message\n"
        "({\"event\":\"worker\"|\"result\"|\"dead_letter\",...}). --once: listens for one heartbeat "
        "interval\n"
        "(N ms, default CAF_HEARTBEAT_INTERVAL_MS, plus a fifth for the trip), prints the table (or one\n"
        "JSON line per worker) and exits; 4 when no worker was heard. A worker not heard for %d intervals\n"
        "shows as \"silent\". Text from NATS is shown with its control characters escaped.\n",
        SILENT_INTERVALS);
    bw_cli_print_exit_codes(f);
}

static int usage(void)
{
    bw_cli_watch_usage(stderr);
    return BW_EXIT_USAGE;
}

static int parse_args(int argc, char **argv, watch_args_t *a, const bw_config_t *cfg)
{
    *a = (watch_args_t){.interval_ms = cfg->heartbeat_interval_ms};
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--results"))
            a->results = true;
        else if (!strcmp(argv[i], "--dlq"))
            a->dlq = true;
        else if (!strcmp(argv[i], "--once"))
            a->once = true;
        else if (!strcmp(argv[i], "--json"))
            a->json = true;
        else if (!strcmp(argv[i], "--interval-ms") && i + 1 < argc) {
            char *end;
            long long v = strtoll(argv[++i], &end, 10);
            if (*argv[i] == '\0' || *end != '\0' || v < 1 || v > 3600000)
                return -1;
            a->interval_ms = v;
        } else
            return -1;
    }
    return 0;
}

/* ---- the queue (NATS threads -> main thread) -------------------------------------------------- */

static void on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    sub_ctx_t *c = closure;
    event_t *e = bw_calloc(1, sizeof *e);
    e->kind = c->kind;
    e->msg = msg;
    pthread_mutex_lock(&c->w->lock);
    *c->w->tail = e;
    c->w->tail = &e->next;
    pthread_cond_signal(&c->w->cond);
    pthread_mutex_unlock(&c->w->lock);
}

/* Called by nats.c once a closed subscription's handler has returned for the last time. */
static void on_sub_complete(void *closure)
{
    sub_ctx_t *c = closure;
    pthread_mutex_lock(&c->w->lock);
    c->w->open_subs--;
    pthread_cond_signal(&c->w->cond);
    pthread_mutex_unlock(&c->w->lock);
}

/* The queued events (caller frees each), waiting for the first until deadline_ms (monotonic) but at
   most 200 ms: the caller also watches a flag a signal sets and the connection's state. */
static event_t *take_events(watch_t *w, uint64_t deadline_ms)
{
    uint64_t now = bw_mono_ms(), wait_ms = deadline_ms > now ? deadline_ms - now : 0;
    pthread_mutex_lock(&w->lock);
    if (w->head == NULL && wait_ms > 0) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts); /* the condition variable's clock (bw_cli_watch) */
        wait_ms = wait_ms > 200 ? 200 : wait_ms;
        ts.tv_sec += (time_t)(wait_ms / 1000);
        ts.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L)
            ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&w->cond, &w->lock, &ts);
    }
    event_t *e = w->head;
    w->head = NULL;
    w->tail = &w->head;
    pthread_mutex_unlock(&w->lock);
    return e;
}

/* ---- the table -------------------------------------------------------------------------------- */

static const char *jstr(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static long long jint(json_t *o, const char *k)
{
    return (long long)json_integer_value(json_object_get(o, k));
}

static json_t *unwrap(json_t *j)
{
    json_t *d = json_object_get(j, "data");
    return json_is_object(d) ? d : j;
}

/* The row of this heartbeat's worker (added when new); NULL beyond MAX_WORKERS. */
static worker_row_t *row_of(watch_t *w, const char *id)
{
    for (size_t i = 0; i < w->nrows; i++)
        if (strcmp(w->rows[i].id, id) == 0)
            return &w->rows[i];
    if (w->nrows == MAX_WORKERS) {
        w->dropped++;
        return NULL;
    }
    w->rows = bw_realloc(w->rows, (w->nrows + 1) * sizeof *w->rows);
    w->rows[w->nrows] = (worker_row_t){.id = bw_strdup(id)};
    return &w->rows[w->nrows++];
}

static int by_id(const void *x, const void *y)
{
    return strcmp(((const worker_row_t *)x)->id, ((const worker_row_t *)y)->id);
}

static bool silent(const watch_t *w, const worker_row_t *r, uint64_t now)
{
    return now - r->seen_ms > (uint64_t)(SILENT_INTERVALS * w->args->interval_ms) &&
           strcmp(jstr(r->hb, "status"), "stopped") != 0;
}

enum { C_ID, C_STATUS, C_LOAD, C_FLIGHT, C_QUEUE, C_UPTIME, C_SEEN, C_BUILD, C__COUNT };
static const char *const heads[C__COUNT] = {"WORKER", "STATUS", "LOAD",      "IN FLIGHT",
                                            "QUEUE",  "UPTIME", "LAST SEEN", "BUILD"};
static const size_t caps[C__COUNT] = {48, 24, 6, 13, 8, 8, 10, 32};

typedef struct cell {
    bw_buf_t text;
    size_t width;
} cell_t;

/* The cells of worker r, each with its display width (escaped text may hold multi-byte characters). */
static void fill_row(const watch_t *w, cell_t *row, const worker_row_t *r, uint64_t now)
{
    for (int c = 0; c < C__COUNT; c++)
        bw_buf_init(&row[c].text, 32);
    row[C_ID].width = bw_clitext_put(&row[C_ID].text, r->id, caps[C_ID]);
    row[C_STATUS].width = bw_clitext_put(
        &row[C_STATUS].text, silent(w, r, now) ? "silent" : jstr(r->hb, "status"), caps[C_STATUS]);
    bw_buf_printf(&row[C_LOAD].text, "%.0f%%", json_number_value(json_object_get(r->hb, "load")) * 100.0);
    bw_buf_printf(&row[C_FLIGHT].text, "%lld/%lld", jint(r->hb, "jobs_in_flight"),
                  jint(r->hb, "max_concurrency"));
    bw_buf_printf(&row[C_QUEUE].text, "%lld", jint(r->hb, "jobs_queued"));
    bw_clitext_put_duration(&row[C_UPTIME].text, jint(r->hb, "uptime_s"));
    uint64_t age = now - r->seen_ms;
    bw_buf_printf(&row[C_SEEN].text, "%llu.%llus ago", (unsigned long long)(age / 1000),
                  (unsigned long long)(age % 1000 / 100));
    row[C_BUILD].width = bw_clitext_put(&row[C_BUILD].text, jstr(r->hb, "build"), caps[C_BUILD]);
    for (int c = C_LOAD; c <= C_SEEN; c++)
        row[c].width = row[c].text.len; /* ASCII */
}

/* Appends the table (header and one line per worker, by id) to out, each line ending with eol. */
static void put_table(watch_t *w, bw_buf_t *out, const char *eol)
{
    uint64_t now = bw_mono_ms();
    size_t n = w->nrows, widths[C__COUNT];
    cell_t *cells = bw_calloc((n + 1) * C__COUNT, sizeof *cells);
    if (n > 1)
        qsort(w->rows, n, sizeof *w->rows, by_id);
    for (int c = 0; c < C__COUNT; c++) {
        bw_buf_init(&cells[c].text, 16);
        bw_buf_puts(&cells[c].text, heads[c]);
        widths[c] = cells[c].width = strlen(heads[c]);
    }
    for (size_t i = 0; i < n; i++) {
        cell_t *row = cells + (i + 1) * C__COUNT;
        fill_row(w, row, &w->rows[i], now);
        for (int c = 0; c < C__COUNT; c++)
            widths[c] = row[c].width > widths[c] ? row[c].width : widths[c];
    }
    for (size_t i = 0; i <= n; i++) {
        for (int c = 0; c < C__COUNT; c++) {
            cell_t *cell = &cells[i * C__COUNT + c];
            bw_buf_append(out, cell->text.p, cell->text.len);
            if (c + 1 < C__COUNT)
                bw_buf_printf(out, "%*s", (int)(widths[c] - cell->width + 2), "");
            bw_buf_dispose(&cell->text);
        }
        bw_buf_puts(out, eol);
    }
    free(cells);
}

/* ---- one line per message --------------------------------------------------------------------- */

/* The JSON line of a worker row: the heartbeat's fields and when it was heard. */
static json_t *row_json(const watch_t *w, const worker_row_t *r)
{
    char ts[40];
    json_t *o = json_pack("{ss}", "event", "worker");
    const char *k;
    json_t *v;
    json_object_foreach(r->hb, k, v) if (strcmp(k, "version") != 0) json_object_set(o, k, v);
    json_object_set_new(o, "last_seen", json_string(bw_rfc3339_ms(r->seen_wall, ts, sizeof ts)));
    json_object_set_new(o, "last_seen_ms_ago", json_integer((json_int_t)(bw_mono_ms() - r->seen_ms)));
    if (silent(w, r, bw_mono_ms()))
        json_object_set_new(o, "silent", json_true());
    return o;
}

/* A result or dead letter as a JSON line: its kind, subject and the message itself (unwrapped). */
static json_t *event_json(enum kind kind, json_t *doc)
{
    json_t *o = json_pack("{ss}", "event", kind_names[kind]);
    const char *k;
    json_t *v;
    json_object_foreach(unwrap(doc), k, v) json_object_set(o, k, v);
    return o;
}

static void print_json_line(json_t *o)
{
    bw_buf_t b;
    char *text = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6));
    bw_buf_init(&b, strlen(text) + 16);
    bw_clitext_put_json(&b, text, strlen(text));
    printf("%s\n", b.p);
    fflush(stdout);
    free(text);
    bw_buf_dispose(&b);
}

/* One plain line for a result or dead letter (also kept under the live table). */
static void put_event_line(bw_buf_t *b, enum kind kind, json_t *doc)
{
    json_t *d = unwrap(doc);
    if (kind == K_RESULT) {
        bw_buf_puts(b, "result  ");
        bw_clitext_put(b, jstr(d, "assignment_id"), 40);
        bw_buf_puts(b, "  ");
        bw_clitext_put(b, jstr(d, "status"), 16);
        bw_buf_puts(b, "  ");
        bw_clitext_put(b, jstr(d, "job_type"), 24);
        bw_buf_puts(b, "  ");
        bw_clitext_put(b, jstr(d, "worker_id"), 48);
        bw_buf_printf(b, "  %lldms", jint(d, "latency_ms"));
        if (*jstr(d, "error_code") != '\0') {
            bw_buf_puts(b, "  ");
            bw_clitext_put(b, jstr(d, "error_code"), 40);
        }
        return;
    }
    bw_buf_puts(b, "dead letter  ");
    bw_clitext_put(b, jstr(d, "reason"), 32);
    bw_buf_puts(b, "  ");
    bw_clitext_put(b, *jstr(d, "assignment_id") ? jstr(d, "assignment_id") : "-", 40);
    bw_buf_puts(b, "  ");
    bw_clitext_put(b, jstr(d, "worker_id"), 48);
    bw_buf_puts(b, "  ");
    bw_clitext_put(b, jstr(d, "error"), 80);
}

/* Appends the time a plain line starts with (when it was received). */
static void put_now(bw_buf_t *b)
{
    char ts[40];
    bw_buf_puts(b, bw_rfc3339_ms(bw_wall_ms(), ts, sizeof ts));
    bw_buf_puts(b, "  ");
}

/* A single worker's line when piped: when, then the table's columns (but "last seen": now) unpadded. */
static void print_plain_row(watch_t *w, const worker_row_t *r)
{
    cell_t row[C__COUNT];
    bw_buf_t b;
    bw_buf_init(&b, 256);
    fill_row(w, row, r, bw_mono_ms());
    put_now(&b);
    bw_buf_puts(&b, "worker");
    for (int c = 0; c < C__COUNT; c++) {
        if (c != C_SEEN) {
            bw_buf_puts(&b, "  ");
            bw_buf_append(&b, row[c].text.p, row[c].text.len);
        }
        bw_buf_dispose(&row[c].text);
    }
    printf("%s\n", b.p);
    fflush(stdout);
    bw_buf_dispose(&b);
}

/* ---- the screen ------------------------------------------------------------------------------- */

static void redraw(watch_t *w)
{
    bw_buf_t out;
    char ts[40];
    bw_buf_init(&out, 4096);
    bw_buf_puts(&out, "\033[H"); /* home; every line clears its rest, then everything below */
    bw_buf_printf(&out, "beamline-worker watch  %zu worker(s)  %s\033[K\n", w->nrows,
                  bw_rfc3339_ms(bw_wall_ms(), ts, sizeof ts));
    if (w->dropped > 0)
        bw_buf_printf(&out, "(%zu heartbeat(s) of further workers not shown)\033[K\n", w->dropped);
    bw_buf_puts(&out, "\033[K\n");
    put_table(w, &out, "\033[K\n");
    if (w->nrecent > 0)
        bw_buf_puts(&out, "\033[K\n");
    for (size_t i = 0; i < w->nrecent; i++) {
        bw_buf_append(&out, w->recent[i].p, w->recent[i].len);
        bw_buf_puts(&out, "\033[K\n");
    }
    bw_buf_puts(&out, "\033[J");
    fwrite(out.p, 1, out.len, stdout);
    fflush(stdout);
    bw_buf_dispose(&out);
}

static void remember(watch_t *w, enum kind kind, json_t *doc)
{
    if (w->nrecent == RECENT_EVENTS) { /* oldest out */
        bw_buf_dispose(&w->recent[0]);
        memmove(w->recent, w->recent + 1, (RECENT_EVENTS - 1) * sizeof *w->recent);
        w->nrecent--;
    }
    bw_buf_t *b = &w->recent[w->nrecent++];
    bw_buf_init(b, 128);
    put_event_line(b, kind, doc);
}

/* ---- events ----------------------------------------------------------------------------------- */

static void on_heartbeat(watch_t *w, json_t *doc)
{
    json_t *hb = unwrap(doc);
    const char *id = json_string_value(json_object_get(hb, "worker_id"));
    worker_row_t *r = id != NULL ? row_of(w, id) : NULL;
    if (id == NULL)
        w->unreadable++;
    if (r == NULL)
        return;
    json_decref(r->hb);
    r->hb = json_incref(hb);
    r->seen_ms = bw_mono_ms();
    r->seen_wall = bw_wall_ms();
    if (w->args->once || w->tty)
        return; /* shown in the table */
    if (w->args->json) {
        json_t *o = row_json(w, r);
        print_json_line(o);
        json_decref(o);
    } else {
        print_plain_row(w, r);
    }
}

static void on_event(watch_t *w, const event_t *e)
{
    json_t *doc = json_loadb(natsMsg_GetData(e->msg), (size_t)natsMsg_GetDataLength(e->msg), 0, NULL);
    if (!json_is_object(doc)) {
        w->unreadable++;
    } else if (e->kind == K_HEARTBEAT) {
        on_heartbeat(w, doc);
    } else if (w->args->json) {
        json_t *o = event_json(e->kind, doc);
        print_json_line(o);
        json_decref(o);
    } else if (w->tty && !w->args->once) {
        remember(w, e->kind, doc);
    } else {
        bw_buf_t b;
        bw_buf_init(&b, 256);
        put_now(&b);
        put_event_line(&b, e->kind, doc);
        printf("%s\n", b.p);
        fflush(stdout);
        bw_buf_dispose(&b);
    }
    json_decref(doc);
}

/* Handles the events until deadline_ms (monotonic) or a signal; redraws a live table on the way. */
static void follow(watch_t *w, uint64_t deadline_ms)
{
    bool live = w->tty && !w->args->json && !w->args->once;
    uint64_t next_draw = 0;
    while (!stop_requested && bw_mono_ms() < deadline_ms) {
        if (natsConnection_IsClosed(w->nc)) { /* checked on every wake-up, at least every 200 ms */
            w->lost = true;
            break;
        }
        if (live && bw_mono_ms() >= next_draw) {
            redraw(w);
            next_draw = bw_mono_ms() + REDRAW_MS;
        }
        uint64_t until = live && next_draw < deadline_ms ? next_draw : deadline_ms;
        event_t *e = take_events(w, until);
        bool changed = e != NULL;
        while (e != NULL) {
            event_t *next = e->next;
            on_event(w, e);
            natsMsg_Destroy(e->msg);
            free(e);
            e = next;
        }
        if (live && changed)
            next_draw = 0;
    }
}

static void print_once(watch_t *w)
{
    if (w->args->json) {
        if (w->nrows > 1)
            qsort(w->rows, w->nrows, sizeof *w->rows, by_id);
        for (size_t i = 0; i < w->nrows; i++) {
            json_t *o = row_json(w, &w->rows[i]);
            print_json_line(o);
            json_decref(o);
        }
        return;
    }
    bw_buf_t out;
    bw_buf_init(&out, 1024);
    if (w->nrows > 0)
        put_table(w, &out, "\n");
    fwrite(out.p, 1, out.len, stdout);
    fflush(stdout);
    bw_buf_dispose(&out);
}

/* ---- set-up ----------------------------------------------------------------------------------- */

static void on_signal(int sig)
{
    stop_requested = 1;
}

static int subscribe(watch_t *w, natsConnection *nc, natsSubscription **subs, enum kind kind,
                     const char *subject)
{
    w->ctx[kind] = (sub_ctx_t){.w = w, .kind = kind};
    if (natsConnection_Subscribe(&subs[kind], nc, subject, on_msg, &w->ctx[kind]) != NATS_OK ||
        natsSubscription_SetPendingLimits(subs[kind], -1, -1) != NATS_OK ||
        natsSubscription_SetOnCompleteCB(subs[kind], on_sub_complete, &w->ctx[kind]) != NATS_OK)
        return -1;
    /* The completion callback runs once the handler is done for good: on unsubscribe, or when the
       connection closes. Nothing can call it before the subscription is closed, so counting here is safe. */
    pthread_mutex_lock(&w->lock);
    w->open_subs++;
    pthread_mutex_unlock(&w->lock);
    return 0;
}

/* Closes the subscriptions and waits until no handler can run any more, then frees what is queued. */
static void unsubscribe(watch_t *w, natsSubscription **subs)
{
    for (int k = 0; k < K__COUNT; k++)
        if (subs[k] != NULL)
            natsSubscription_Unsubscribe(subs[k]);
    pthread_mutex_lock(&w->lock);
    while (w->open_subs > 0)
        pthread_cond_wait(&w->cond, &w->lock);
    pthread_mutex_unlock(&w->lock);
    for (int k = 0; k < K__COUNT; k++)
        natsSubscription_Destroy(subs[k]);
    for (event_t *e = w->head, *next; e != NULL; e = next) {
        next = e->next;
        natsMsg_Destroy(e->msg);
        free(e);
    }
}

int bw_cli_watch(const bw_config_t *cfg, int argc, char **argv)
{
    watch_args_t args;
    natsConnection *nc = NULL;
    natsSubscription *subs[K__COUNT] = {0};
    watch_t w = {.args = &args};
    int rc = BW_EXIT_NATS;
    if (parse_args(argc, argv, &args, cfg) < 0)
        return usage();
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* a wall-clock step must not stretch a wait */
    pthread_mutex_init(&w.lock, NULL);
    pthread_cond_init(&w.cond, &ca);
    pthread_condattr_destroy(&ca);
    w.tail = &w.head;
    w.tty = isatty(STDOUT_FILENO) == 1;
    if (bw_bus_connect_once(&nc, cfg, "beamline-worker watch") < 0 || (w.nc = nc) == NULL ||
        subscribe(&w, nc, subs, K_HEARTBEAT, cfg->heartbeat_subject) < 0 ||
        (args.results && subscribe(&w, nc, subs, K_RESULT, cfg->result_subject) < 0) ||
        (args.dlq && subscribe(&w, nc, subs, K_DEAD_LETTER, cfg->dlq_subject) < 0) ||
        natsConnection_Flush(nc) != NATS_OK) {
        fprintf(stderr, "watch: NATS error: %s\n", nats_GetLastError(NULL));
        goto out;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    bool screen = w.tty && !args.json && !args.once;
    if (screen)
        fputs("\033[?1049h\033[?25l", stdout); /* the terminal's alternate screen, cursor hidden */
    else if (!args.json && !args.once && !w.tty)
        printf("# TIME  worker  ID  STATUS  LOAD  IN_FLIGHT/MAX  QUEUE  UPTIME  BUILD\n%s%s",
               args.results
                   ? "# TIME  result  ASSIGNMENT_ID  STATUS  JOB_TYPE  WORKER  LATENCY  [ERROR_CODE]\n"
                   : "",
               args.dlq ? "# TIME  dead letter  REASON  ASSIGNMENT_ID  WORKER  ERROR\n" : "");
    fflush(stdout);
    follow(&w, args.once ? bw_mono_ms() + (uint64_t)(args.interval_ms + args.interval_ms / 5) : UINT64_MAX);
    if (screen)
        fputs("\033[?25h\033[?1049l", stdout);
    if (args.once)
        print_once(&w);
    if (w.unreadable > 0)
        fprintf(stderr, "watch: %ld unreadable message(s) ignored\n", w.unreadable);
    rc = w.lost ? BW_EXIT_NATS : args.once && w.nrows == 0 ? BW_EXIT_NO_REPLY : BW_EXIT_OK;
    if (w.lost)
        fprintf(stderr, "watch: NATS connection lost\n");
    else if (rc == BW_EXIT_NO_REPLY)
        fprintf(stderr, "watch: no heartbeat on %s within %lld ms\n", cfg->heartbeat_subject,
                (long long)(args.interval_ms + args.interval_ms / 5));
out:
    unsubscribe(&w, subs);
    natsConnection_Destroy(nc);
    for (size_t i = 0; i < w.nrows; i++) {
        free(w.rows[i].id);
        json_decref(w.rows[i].hb);
    }
    free(w.rows);
    for (size_t i = 0; i < w.nrecent; i++)
        bw_buf_dispose(&w.recent[i]);
    pthread_cond_destroy(&w.cond);
    pthread_mutex_destroy(&w.lock);
    fflush(stdout);
    return rc;
}
