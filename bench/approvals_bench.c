/*
 * bw-approvals-bench: the NATS side of bench/run-approvals.sh (docs/benchmarks.md, "human_approval").
 * It talks to the worker only over the wire (nats.c and jansson, no project code). Three modes:
 *
 *  --submit     publishes --n `human_approval` assignments at once (ids <prefix><seq>, headers tenant_id
 *               and version, as bw-loadgen sends them) and times them until every ApprovalRequest arrived
 *               on --request-subject: the rate at which the worker records approvals durably.
 *  --decide     decides --n approvals over NATS request/reply with --window requests outstanding: one
 *               wildcard inbox subscription, each request replied to on <inbox>.<seq> so that a reply finds
 *               its send time; reports decisions/s, reply latency p50/p99, how many replies said
 *               "accepted":true and, with --expect-results, how many `success` results came back.
 *  --responder  the baselines: answers every request on --subject with {"accepted":true} at once or, with
 *               --fsync FILE, after appending it to FILE and fdatasync'ing (one sync per decision, the
 *               naive durable design). Runs until SIGTERM/SIGINT.
 *
 * Threads: the main thread sends (the whole submit, the first decide window) and waits; nats.c's delivery
 * threads run the callbacks, which touch only atomics and the per-seq slots. A reply callback sends the
 * request that replaces it, so the window stays full. One JSON line on stdout per run; exit status 1 when
 * anything was missing, duplicated or refused.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <nats/nats.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define NS_PER_MS 1000000LL
#define NS_PER_S 1000000000LL
#define MAX_N 10000000
#define REPLY_BODY "{\"accepted\":true}"

typedef enum { MODE_NONE, MODE_SUBMIT, MODE_DECIDE, MODE_RESPONDER } bench_mode_t;

typedef struct opts {
    bench_mode_t mode;
    const char *url, *prefix, *tenant, *label, *fsync_path;
    const char *assign_subject, *request_subject, *result_subject, *subject;
    long n, window, expect_results, timeout_ms, prompt_timeout_ms;
    bool send_asap;
} opts_t;

/* Per-seq state. t_send is written before the publish, read by the reply thread after the reply. */
typedef struct slot {
    _Atomic int64_t t_send, t_reply;
    _Atomic uint8_t replies, results, requests;
} slot_t;

typedef struct bench {
    opts_t o;
    natsConnection *nc;
    slot_t *slots;
    char *inbox; /* decide: replies come on <inbox>.<seq> */
    size_t prefix_len;
    _Atomic long next, replies, accepted, refused, results, success, requests, dups, foreign, send_errors;
    _Atomic int64_t t_last_reply, t_last_result, t_last_request;
} bench_t;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * NS_PER_MS};
    nanosleep(&ts, NULL);
}

/* A benchmark tool has nothing sensible left to do without memory: it says so and aborts. */
static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (p == NULL) {
        fprintf(stderr, "bw-approvals-bench: out of memory\n");
        abort();
    }
    return p;
}

/* ---- options ---- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bw-approvals-bench --submit|--decide|--responder [options]\n"
            "  --url URL               NATS server (default $NATS_URL or nats://127.0.0.1:4222)\n"
            "  --n N                   approvals to submit or decide (10000)\n"
            "  --prefix P              assignment ids are <P><seq> (ab-)\n"
            "  --tenant T              tenant_id (bench)\n"
            "  --subject S             decide: where decisions go; responder: what it answers\n"
            "                          (caf.human.decision.v1)\n"
            "  --window W              decide: requests outstanding (256)\n"
            "  --expect-results 0|1    decide: wait for a success result per approval (1)\n"
            "  --fsync FILE            responder: append each request to FILE and fdatasync before replying\n"
            "  --assign-subject S      submit: (caf.exec.assign.v1)\n"
            "  --request-subject S     submit: ApprovalRequests (caf.human.request.v1)\n"
            "  --result-subject S      (caf.exec.result.v1)\n"
            "  --approval-timeout-ms N submit: payload.timeout_ms (3600000)\n"
            "  --timeout-ms N          give up waiting after N ms (60000)\n"
            "  --send-asap             one socket write per publish instead of nats.c's flusher\n"
            "  --label TEXT            copied into the JSON output\n");
}

static bool parse_long(const char *name, const char *s, long min, long max, long *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max) {
        fprintf(stderr, "bw-approvals-bench: --%s: expected an integer in [%ld, %ld], got '%s'\n", name, min,
                max, s);
        return false;
    }
    *out = v;
    return true;
}

/* The prefix goes into JSON and subjects as it is, so it is kept to characters that need no escaping. */
static bool prefix_ok(const char *p)
{
    if (*p == '\0' || strlen(p) > 64)
        return false;
    for (; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-' ||
              *p == '_'))
            return false;
    return true;
}

static bool parse_opts(int argc, char **argv, opts_t *o)
{
    static const struct option lo[] = {{"submit", no_argument, NULL, 'S'},
                                       {"decide", no_argument, NULL, 'D'},
                                       {"responder", no_argument, NULL, 'R'},
                                       {"url", required_argument, NULL, 'u'},
                                       {"n", required_argument, NULL, 'n'},
                                       {"prefix", required_argument, NULL, 'p'},
                                       {"tenant", required_argument, NULL, 'T'},
                                       {"subject", required_argument, NULL, 's'},
                                       {"window", required_argument, NULL, 'w'},
                                       {"expect-results", required_argument, NULL, 'e'},
                                       {"fsync", required_argument, NULL, 'f'},
                                       {"assign-subject", required_argument, NULL, 'a'},
                                       {"request-subject", required_argument, NULL, 'q'},
                                       {"result-subject", required_argument, NULL, 'r'},
                                       {"approval-timeout-ms", required_argument, NULL, 'P'},
                                       {"timeout-ms", required_argument, NULL, 't'},
                                       {"send-asap", no_argument, NULL, 'A'},
                                       {"label", required_argument, NULL, 'l'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
    const char *env = getenv("NATS_URL");
    *o = (opts_t){.url = env != NULL && *env ? env : "nats://127.0.0.1:4222",
                  .prefix = "ab-",
                  .tenant = "bench",
                  .label = "",
                  .assign_subject = "caf.exec.assign.v1",
                  .request_subject = "caf.human.request.v1",
                  .result_subject = "caf.exec.result.v1",
                  .subject = "caf.human.decision.v1",
                  .n = 10000,
                  .window = 256,
                  .expect_results = 1,
                  .timeout_ms = 60000,
                  .prompt_timeout_ms = 3600000};
    int c;
    bool ok = true;
    while (ok && (c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'S':
            o->mode = MODE_SUBMIT;
            break;
        case 'D':
            o->mode = MODE_DECIDE;
            break;
        case 'R':
            o->mode = MODE_RESPONDER;
            break;
        case 'u':
            o->url = optarg;
            break;
        case 'n':
            ok = parse_long("n", optarg, 1, MAX_N, &o->n);
            break;
        case 'p':
            o->prefix = optarg;
            break;
        case 'T':
            o->tenant = optarg;
            break;
        case 's':
            o->subject = optarg;
            break;
        case 'w':
            ok = parse_long("window", optarg, 1, 1000000, &o->window);
            break;
        case 'e':
            ok = parse_long("expect-results", optarg, 0, 1, &o->expect_results);
            break;
        case 'f':
            o->fsync_path = optarg;
            break;
        case 'a':
            o->assign_subject = optarg;
            break;
        case 'q':
            o->request_subject = optarg;
            break;
        case 'r':
            o->result_subject = optarg;
            break;
        case 'P':
            ok = parse_long("approval-timeout-ms", optarg, 1, 604800000, &o->prompt_timeout_ms);
            break;
        case 't':
            ok = parse_long("timeout-ms", optarg, 1, 3600000, &o->timeout_ms);
            break;
        case 'A':
            o->send_asap = true;
            break;
        case 'l':
            o->label = optarg;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            ok = false;
        }
    }
    if (ok && (optind < argc || o->mode == MODE_NONE)) {
        fprintf(stderr, "bw-approvals-bench: give one of --submit, --decide, --responder\n");
        ok = false;
    }
    if (ok && !prefix_ok(o->prefix)) {
        fprintf(stderr, "bw-approvals-bench: --prefix: 1..64 of A-Za-z0-9_-\n");
        ok = false;
    }
    if (ok && (!prefix_ok(o->tenant) || strchr(o->label, '"') != NULL || strchr(o->label, '\\') != NULL)) {
        fprintf(stderr, "bw-approvals-bench: --tenant: 1..64 of A-Za-z0-9_-; --label: no quotes\n");
        ok = false;
    }
    if (!ok)
        usage(stderr);
    return ok;
}

/* ---- connection ---- */

static natsStatus bench_connect(bench_t *b)
{
    natsOptions *no = NULL;
    natsStatus s = natsOptions_Create(&no);
    if (s == NATS_OK)
        s = natsOptions_SetURL(no, b->o.url);
    if (s == NATS_OK)
        s = natsOptions_SetName(no, "bw-approvals-bench");
    if (s == NATS_OK)
        s = natsOptions_SetSendAsap(no, b->o.send_asap);
    if (s == NATS_OK)
        s = natsConnection_Connect(&b->nc, no);
    natsOptions_Destroy(no);
    if (s != NATS_OK)
        fprintf(stderr, "bw-approvals-bench: cannot connect to %s: %s\n", b->o.url, natsStatus_GetText(s));
    return s;
}

/* Subscribes with no pending limit: a message dropped as a slow consumer would look like a loss. */
static natsStatus subscribe(bench_t *b, natsSubscription **sub, const char *subject, natsMsgHandler cb)
{
    natsStatus s = natsConnection_Subscribe(sub, b->nc, subject, cb, b);
    if (s == NATS_OK)
        s = natsSubscription_SetPendingLimits(*sub, -1, -1);
    if (s != NATS_OK)
        fprintf(stderr, "bw-approvals-bench: subscribe %s: %s\n", subject, natsStatus_GetText(s));
    return s;
}

/* ---- receiving (delivery threads) ---- */

/* The seq of "<prefix><seq>", or -1 for an id of another run. */
static long seq_of(const bench_t *b, const char *id, size_t len)
{
    size_t pl = b->prefix_len;
    if (id == NULL || len <= pl || len > pl + 9 || memcmp(id, b->o.prefix, pl) != 0)
        return -1;
    long v = 0;
    for (size_t i = pl; i < len; i++) {
        if (id[i] < '0' || id[i] > '9')
            return -1;
        v = v * 10 + (id[i] - '0');
    }
    return v < b->o.n ? v : -1;
}

/* The seq named by a message's "assignment_id" (and the parsed message, which the caller frees). */
static long seq_of_msg(const bench_t *b, natsMsg *msg, json_t **out)
{
    json_t *j = json_loadb(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), 0, NULL);
    json_t *id = json_object_get(j, "assignment_id");
    *out = j;
    return json_is_string(id) ? seq_of(b, json_string_value(id), json_string_length(id)) : -1;
}

/* Marks a slot's counter; true when this was its first message (others are duplicates). */
static bool first_of(bench_t *b, _Atomic uint8_t *counter)
{
    if (atomic_fetch_add(counter, 1) == 0)
        return true;
    atomic_fetch_add(&b->dups, 1);
    return false;
}

static void on_request(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    bench_t *b = closure;
    json_t *j = NULL;
    long seq = seq_of_msg(b, msg, &j);
    if (seq < 0)
        atomic_fetch_add(&b->foreign, 1);
    else if (first_of(b, &b->slots[seq].requests)) {
        atomic_store(&b->t_last_request, now_ns());
        atomic_fetch_add(&b->requests, 1);
    }
    json_decref(j);
    natsMsg_Destroy(msg);
}

static void on_result(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    bench_t *b = closure;
    json_t *j = NULL;
    long seq = seq_of_msg(b, msg, &j);
    if (seq >= 0 && first_of(b, &b->slots[seq].results)) {
        const char *st = json_string_value(json_object_get(j, "status"));
        if (st != NULL && strcmp(st, "success") == 0)
            atomic_fetch_add(&b->success, 1);
        atomic_store(&b->t_last_result, now_ns());
        atomic_fetch_add(&b->results, 1);
    }
    json_decref(j);
    natsMsg_Destroy(msg);
}

/* ---- decide ---- */

static void send_decision(bench_t *b, long seq)
{
    char subj[256], body[512];
    snprintf(subj, sizeof subj, "%s.%ld", b->inbox, seq);
    int len = snprintf(body, sizeof body,
                       "{\"assignment_id\":\"%s%ld\",\"tenant_id\":\"%s\",\"decision\":\"Approve\","
                       "\"approver\":\"bench\"}",
                       b->o.prefix, seq, b->o.tenant);
    atomic_store(&b->slots[seq].t_send, now_ns());
    if (natsConnection_PublishRequest(b->nc, b->o.subject, subj, body, len) != NATS_OK)
        atomic_fetch_add(&b->send_errors, 1);
}

/* Sends the next decision, if any is left: keeps `window` outstanding. Any thread. */
static void send_next(bench_t *b)
{
    long seq = atomic_fetch_add(&b->next, 1);
    if (seq < b->o.n)
        send_decision(b, seq);
}

static void on_reply(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    bench_t *b = closure;
    int64_t now = now_ns();
    const char *subj = natsMsg_GetSubject(msg), *dot = strrchr(subj, '.');
    char *end = NULL;
    long seq = dot != NULL ? strtol(dot + 1, &end, 10) : -1;
    if (dot == NULL || end == dot + 1 || *end != '\0' || seq < 0 || seq >= b->o.n) {
        atomic_fetch_add(&b->foreign, 1);
    } else if (first_of(b, &b->slots[seq].replies)) {
        json_t *j = json_loadb(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), 0, NULL);
        atomic_fetch_add(json_is_true(json_object_get(j, "accepted")) ? &b->accepted : &b->refused, 1);
        if (!json_is_true(json_object_get(j, "accepted")) && atomic_load(&b->refused) <= 3)
            fprintf(stderr, "bw-approvals-bench: refused: %.*s\n", natsMsg_GetDataLength(msg),
                    natsMsg_GetData(msg));
        json_decref(j);
        atomic_store(&b->slots[seq].t_reply, now);
        atomic_store(&b->t_last_reply, now);
        atomic_fetch_add(&b->replies, 1);
        send_next(b);
    }
    natsMsg_Destroy(msg);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted v, in ms. */
static double pct_ms(const int64_t *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    size_t i = (size_t)(p * (double)n + 0.999999);
    return (double)v[(i == 0 ? 1 : i) - 1] / 1e6;
}

/* Waits until done(b) or the timeout; true when done. */
static bool wait_for(bench_t *b, bool (*done)(bench_t *), int64_t t0)
{
    while (!done(b)) {
        if (now_ns() - t0 > b->o.timeout_ms * NS_PER_MS)
            return false;
        sleep_ms(1);
    }
    return true;
}

static bool decide_done(bench_t *b)
{
    return atomic_load(&b->replies) >= b->o.n && (!b->o.expect_results || atomic_load(&b->results) >= b->o.n);
}

static int run_decide(bench_t *b)
{
    natsSubscription *rsub = NULL, *isub = NULL;
    char wild[256];
    int rc = 1;
    if (natsInbox_Create(&b->inbox) != NATS_OK)
        return 1;
    snprintf(wild, sizeof wild, "%s.*", b->inbox);
    if (subscribe(b, &isub, wild, on_reply) != NATS_OK ||
        (b->o.expect_results && subscribe(b, &rsub, b->o.result_subject, on_result) != NATS_OK) ||
        natsConnection_FlushTimeout(b->nc, 5000) != NATS_OK)
        goto out;
    int64_t t0 = now_ns();
    for (long i = 0; i < b->o.window && i < b->o.n; i++)
        send_next(b);
    bool done = wait_for(b, decide_done, t0);
    /* a late duplicate reply or result would show here */
    sleep_ms(100);
    size_t n = 0;
    long max_seq = -1, over_50ms = 0; /* where a stall sits, and how many replies it delayed */
    int64_t *lat = xcalloc((size_t)b->o.n, sizeof *lat);
    for (long i = 0; i < b->o.n; i++) {
        if (atomic_load(&b->slots[i].t_reply) == 0)
            continue;
        lat[n] = atomic_load(&b->slots[i].t_reply) - atomic_load(&b->slots[i].t_send);
        over_50ms += lat[n] > 50 * NS_PER_MS;
        if (max_seq < 0 ||
            lat[n] > atomic_load(&b->slots[max_seq].t_reply) - atomic_load(&b->slots[max_seq].t_send))
            max_seq = i;
        n++;
    }
    qsort(lat, n, sizeof *lat, cmp_i64);
    double secs = (double)(atomic_load(&b->t_last_reply) - t0) / 1e9;
    double rsecs = b->o.expect_results ? (double)(atomic_load(&b->t_last_result) - t0) / 1e9 : 0;
    printf("{\"figure\":\"decide\",\"label\":\"%s\",\"n\":%ld,\"window\":%ld,\"seconds\":%.3f,\"per_s\":%.0f,"
           "\"p50_ms\":%.2f,\"p99_ms\":%.2f,\"max_ms\":%.2f,\"max_seq\":%ld,\"over_50ms\":%ld,\"replies\":%"
           "ld,\"accepted\":%ld,\"refused\":%ld,"
           "\"results\":%ld,\"results_success\":%ld,\"results_seconds\":%.3f,\"duplicates\":%ld,"
           "\"foreign\":%ld,\"send_errors\":%ld,\"complete\":%s}\n",
           b->o.label, b->o.n, b->o.window, secs, secs > 0 ? (double)atomic_load(&b->replies) / secs : 0,
           pct_ms(lat, n, 0.50), pct_ms(lat, n, 0.99), n ? (double)lat[n - 1] / 1e6 : 0, max_seq, over_50ms,
           atomic_load(&b->replies), atomic_load(&b->accepted), atomic_load(&b->refused),
           atomic_load(&b->results), atomic_load(&b->success), rsecs, atomic_load(&b->dups),
           atomic_load(&b->foreign), atomic_load(&b->send_errors), done ? "true" : "false");
    free(lat);
    bool all_ok = atomic_load(&b->accepted) == b->o.n && atomic_load(&b->dups) == 0 &&
                  (!b->o.expect_results || atomic_load(&b->success) == b->o.n);
    rc = done && all_ok ? 0 : 1;
out:
    natsSubscription_Destroy(isub);
    natsSubscription_Destroy(rsub);
    return rc;
}

/* ---- submit ---- */

static natsStatus publish_assignment(bench_t *b, long seq)
{
    char body[512];
    int len =
        snprintf(body, sizeof body,
                 "{\"version\":\"1\",\"assignment_id\":\"%s%ld\",\"tenant_id\":\"%s\",\"job\":{\"type\":"
                 "\"human_approval\",\"payload\":{\"prompt\":\"bench approval %ld\",\"timeout_ms\":%ld}}}",
                 b->o.prefix, seq, b->o.tenant, seq, b->o.prompt_timeout_ms);
    natsMsg *m = NULL;
    natsStatus s = natsMsg_Create(&m, b->o.assign_subject, NULL, body, len);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(m, "tenant_id", b->o.tenant);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(m, "version", "1");
    if (s == NATS_OK)
        s = natsConnection_PublishMsg(b->nc, m);
    natsMsg_Destroy(m);
    return s;
}

static bool submit_done(bench_t *b)
{
    return atomic_load(&b->requests) + atomic_load(&b->results) >= b->o.n;
}

static int run_submit(bench_t *b)
{
    natsSubscription *qsub = NULL, *rsub = NULL;
    int rc = 1;
    /* results during submit are failures (TOO_MANY_PENDING_APPROVALS, INVALID_PAYLOAD...) */
    if (subscribe(b, &qsub, b->o.request_subject, on_request) != NATS_OK ||
        subscribe(b, &rsub, b->o.result_subject, on_result) != NATS_OK ||
        natsConnection_FlushTimeout(b->nc, 5000) != NATS_OK)
        goto out;
    int64_t t0 = now_ns();
    for (long i = 0; i < b->o.n; i++)
        if (publish_assignment(b, i) != NATS_OK)
            atomic_fetch_add(&b->send_errors, 1);
    natsConnection_FlushTimeout(b->nc, 10000);
    int64_t t_sent = now_ns();
    bool done = wait_for(b, submit_done, t0);
    sleep_ms(100);
    double secs = (double)(atomic_load(&b->t_last_request) - t0) / 1e9;
    printf("{\"figure\":\"record\",\"label\":\"%s\",\"n\":%ld,\"seconds\":%.3f,\"per_s\":%.0f,\"publish_s\":%"
           ".3f,"
           "\"requests\":%ld,\"results\":%ld,\"duplicates\":%ld,\"send_errors\":%ld,\"complete\":%s}\n",
           b->o.label, b->o.n, secs, secs > 0 ? (double)atomic_load(&b->requests) / secs : 0,
           (double)(t_sent - t0) / 1e9, atomic_load(&b->requests), atomic_load(&b->results),
           atomic_load(&b->dups), atomic_load(&b->send_errors), done ? "true" : "false");
    rc = done && atomic_load(&b->requests) == b->o.n && atomic_load(&b->results) == 0 ? 0 : 1;
out:
    natsSubscription_Destroy(qsub);
    natsSubscription_Destroy(rsub);
    return rc;
}

/* ---- responder ---- */

static int g_fd = -1;

/* One delivery thread per subscription: requests are answered one after the other, each synced first. */
static void on_decision(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    const char *reply = natsMsg_GetReply(msg);
    if (g_fd >= 0) {
        struct iovec iov[2] = {{(void *)natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg)},
                               {(char[]){"\n"}, 1}};
        if (writev(g_fd, iov, 2) < 0 || fdatasync(g_fd) != 0) {
            fprintf(stderr, "bw-approvals-bench: %s: %s\n", "write/fdatasync", strerror(errno));
            reply = NULL; /* a vote that is not durable is not accepted */
        }
    }
    if (reply != NULL)
        natsConnection_Publish(nc, reply, REPLY_BODY, (int)strlen(REPLY_BODY));
    natsMsg_Destroy(msg);
}

static int run_responder(bench_t *b)
{
    natsSubscription *sub = NULL;
    sigset_t set;
    int sig = 0;
    if (b->o.fsync_path != NULL) {
        g_fd = open(b->o.fsync_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (g_fd < 0) {
            fprintf(stderr, "bw-approvals-bench: %s: %s\n", b->o.fsync_path, strerror(errno));
            return 1;
        }
    }
    if (subscribe(b, &sub, b->o.subject, on_decision) != NATS_OK ||
        natsConnection_FlushTimeout(b->nc, 5000) != NATS_OK)
        return 1;
    printf("{\"responder\":\"ready\",\"subject\":\"%s\",\"fsync\":%s}\n", b->o.subject,
           b->o.fsync_path != NULL ? "true" : "false");
    fflush(stdout);
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigwait(&set, &sig);
    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
    if (g_fd >= 0)
        close(g_fd);
    return 0;
}

int main(int argc, char **argv)
{
    static bench_t b;
    sigset_t set;
    int rc = 1;
    if (!parse_opts(argc, argv, &b.o))
        return 2;
    /* blocked before nats.c starts its threads, so that only the responder's sigwait receives them */
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    if (b.o.mode == MODE_RESPONDER)
        pthread_sigmask(SIG_BLOCK, &set, NULL);
    b.prefix_len = strlen(b.o.prefix);
    if (b.o.mode != MODE_RESPONDER)
        b.slots = xcalloc((size_t)b.o.n, sizeof *b.slots);
    if (nats_Open(-1) != NATS_OK || bench_connect(&b) != NATS_OK)
        goto out;
    rc = b.o.mode == MODE_SUBMIT   ? run_submit(&b)
         : b.o.mode == MODE_DECIDE ? run_decide(&b)
                                   : run_responder(&b);
out:
    natsConnection_Close(b.nc);
    natsConnection_Destroy(b.nc);
    natsInbox_Destroy(b.inbox);
    free(b.slots);
    nats_CloseAndWait(2000);
    return rc;
}
