/*
 * The sandbox pool (see sandbox.h). Wire format to a child: frames of a 4-byte little-endian length and
 * that many bytes of JSON, requests on the child's stdin, answers on its stdout, in order, matched by
 * "id". A child runs one script at a time, but may hold more requests in its pipe (up to PIPELINE): a
 * child that answers and finds the next request waiting does not go to sleep and wake up again for it,
 * which on this kind of machine costs more CPU than a small script (see docs/benchmarks.md). A request
 * goes to a busy child only when no child is idle, the child's current job started less than
 * PIPELINE_WAIT_MS ago, and the jobs it holds would end within PIPELINE_WAIT_MS at the pool's recent
 * pace (a moving average of the engine's CPU time per job): a job rarely waits long behind another.
 *
 * Invariants:
 *   - a child is IDLE (nothing sent), BUSY (1..PIPELINE requests written, their answers not yet read;
 *     the first is the one running) or gone; a request is QUEUED (in p->queue), SENT (r->sb set) or
 *     finished (freed). A SENT request that is cancelled stays in its child's list without callback
 *     (abandoned): if it is running, or when it starts, the child is killed;
 *   - a child that dies fails only the request it was running (the first, when it still has an owner);
 *     the others never started, or may be run again (scripts have no effects outside their sandbox),
 *     and go back to the front of the queue;
 *   - a child leaves its slot only in on_child_exit; its three handles (process, stdin, stdout) are closed
 *     there and its memory goes with the last close callback, so no callback can see freed memory;
 *   - a request's callback runs at most once, and never after bw_sandbox_cancel;
 *   - children get a clean environment (no credential the worker holds can reach a script) and die with
 *     the worker (PR_SET_PDEATHSIG, set by the child).
 */
#include "js/sandbox.h"

#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "js/jsengine.h"
#include "obs/log.h"
#include "obs/metrics.h"
#include "util/buf.h"
#include "util/clock.h"
#include "util/list.h"
#include "util/proc.h"
#include "util/xalloc.h"

#define FRAME_MAX (64u * 1024 * 1024) /* whatever the limits say */
/* An answer's size beyond its request's limits (bw_sandbox_answer_max): a log entry's own fields, and the
   error fields (a message of at most BW_JSENGINE_MESSAGE_MAX bytes, which escaping can make six times as
   long; code, line, column, times). */
#define LOG_ENTRY_OVERHEAD 48
#define ANSWER_OVERHEAD (6 * BW_JSENGINE_MESSAGE_MAX + 1024)
#define WATCH_MS 20 /* how often a busy child's resident memory is read */
#define PIPELINE 4  /* requests sent to one child at most */
#define PIPELINE_WAIT_MS 2

typedef struct sandbox sandbox_t;

struct bw_sandbox_req {
    bw_list_t link; /* p->queue while queued */
    bw_sandbox_pool_t *pool;
    sandbox_t *sb; /* while sent */
    json_t *request;
    uint64_t id;
    uint32_t answer_max; /* the longest answer frame its limits allow */
    bw_sandbox_cb cb;
    void *ud;
};

struct sandbox {
    bw_sandbox_pool_t *pool;
    int slot;
    uv_process_t proc;
    uv_pipe_t in, out; /* the child's stdin (we write), its stdout (we read) */
    int open_handles;
    bw_buf_t rbuf;
    bw_sandbox_req_t *reqs[PIPELINE]; /* sent, in order: reqs[0] runs */
    int nreqs;
    uint64_t head_ns; /* when reqs[0] started (was sent to an idle child, or the one before was answered) */
    bool killed_memory, killed_cancel, exited, eof, concluded;
    int64_t exit_status;
    int exit_signal;
    uint64_t served;
};

struct bw_sandbox_pool {
    uv_loop_t *loop;
    const bw_config_t *cfg;
    char *exe;
    char env_rss[64];
    sandbox_t **slots;
    int size;
    bw_list_t queue;
    size_t queued, busy; /* requests in p->queue; children BUSY */
    uv_timer_t watch;
    uint64_t next_id;
    bool destroyed;
    int open_handles; /* the pool's own (the timer) plus children still closing */
    int alive;        /* children started and not concluded */
    uint64_t pace_ns; /* moving average of the CPU time a job takes in a child (its answer's cpu_us):
                         unlike wall time, not inflated by a loaded machine */
};

typedef struct wreq {
    uv_write_t w;
    unsigned char hdr[4];
    char *body;
} wreq_t;

static void dispatch(bw_sandbox_pool_t *p);

/* ---- freeing ---- */

static void maybe_free_pool(bw_sandbox_pool_t *p)
{
    if (p->destroyed && p->open_handles == 0) {
        free(p->slots);
        free(p->exe);
        free(p);
    }
}

static void on_sb_handle_closed(uv_handle_t *h)
{
    sandbox_t *sb = h->data;
    if (--sb->open_handles > 0)
        return;
    bw_sandbox_pool_t *p = sb->pool;
    bw_buf_dispose(&sb->rbuf);
    free(sb);
    p->open_handles--;
    maybe_free_pool(p);
}

static void req_free(bw_sandbox_req_t *r)
{
    json_decref(r->request);
    free(r);
}

/* Runs r's callback (once) and frees it. */
static void finish(bw_sandbox_req_t *r, bw_sandbox_outcome_t o, json_t *resp, const char *msg)
{
    bw_sandbox_cb cb = r->cb;
    void *ud = r->ud;
    r->sb = NULL;
    req_free(r);
    if (cb != NULL)
        cb(ud, o, resp, msg);
}

/* ---- children ---- */

static void close_child(sandbox_t *sb)
{
    uv_close((uv_handle_t *)&sb->proc, on_sb_handle_closed);
    uv_close((uv_handle_t *)&sb->in, on_sb_handle_closed);
    uv_close((uv_handle_t *)&sb->out, on_sb_handle_closed);
}

/* Puts a request that was sent but may not have run back at the front of the queue. */
static void requeue_front(bw_sandbox_pool_t *p, bw_sandbox_req_t *r)
{
    r->sb = NULL;
    r->link.next = p->queue.next;
    r->link.prev = &p->queue;
    p->queue.next->prev = &r->link;
    p->queue.next = &r->link;
    p->queued++;
}

/* Both the exit and the end of its output have been seen: the child leaves its slot. The request it
   was running (if it still has an owner) fails with what happened to the child, unless the child ended
   between jobs on its own (4: over its memory after answering; 5: answered a runaway script's timeout
   itself) or was killed to stop a cancelled one; the others go back to the queue. */
static void conclude(sandbox_t *sb)
{
    bw_sandbox_pool_t *p = sb->pool;
    char msg[160];
    int64_t status = sb->exit_status;
    int term_signal = sb->exit_signal;
    bool between_jobs = term_signal == 0 && (status == 4 || status == 5);
    sb->concluded = true;
    p->slots[sb->slot] = NULL;
    p->alive--;
    if (sb->nreqs > 0)
        p->busy--;
    bw_sandbox_req_t *failed = NULL;
    bool idle = sb->nreqs == 0;
    for (int i = sb->nreqs - 1; i >= 0; i--) { /* backwards: the queue keeps their order */
        bw_sandbox_req_t *r = sb->reqs[i];
        if (r->cb == NULL)
            finish(r, BW_SANDBOX_CRASHED, NULL, NULL); /* abandoned: only freed */
        else if (i > 0 || between_jobs || sb->killed_cancel)
            requeue_front(p, r);
        else
            failed = r; /* it was running */
    }
    sb->nreqs = 0;
    if (failed != NULL && sb->killed_memory) {
        bw_metrics_inc(BW_C_SANDBOX_MEMORY_KILLS);
        snprintf(msg, sizeof msg, "the script used more than SCRIPT_MAX_MEMORY_MB (%lld MB)",
                 (long long)p->cfg->script_max_memory_mb);
        finish(failed, BW_SANDBOX_MEMORY, NULL, msg);
    } else if (failed != NULL) {
        bw_metrics_inc(BW_C_SANDBOX_DEATHS);
        snprintf(msg, sizeof msg, "the script's sandbox process died (%s %d)",
                 term_signal ? "signal" : "status", term_signal ? term_signal : (int)status);
        bw_log(BW_LOG_WARN, "script sandbox died during a job", BW_LI("signal", term_signal),
               BW_LI("status", status));
        finish(failed, BW_SANDBOX_CRASHED, NULL, msg);
    } else if (idle && !sb->killed_cancel && !p->destroyed && status != 0 && !between_jobs) {
        bw_log(BW_LOG_WARN, "idle script sandbox exited", BW_LI("signal", term_signal),
               BW_LI("status", status));
    }
    close_child(sb);
    if (!p->destroyed)
        dispatch(p);
}

/* The exit may be reported before the child's last answer is read (a child that answers and then
   exits on purpose): the verdict waits for the end of its output, unless we killed it ourselves. */
static void on_child_exit(uv_process_t *proc, int64_t status, int term_signal)
{
    sandbox_t *sb = proc->data;
    sb->exited = true;
    sb->exit_status = status;
    sb->exit_signal = term_signal;
    if (sb->eof || sb->killed_memory || sb->killed_cancel)
        conclude(sb);
}

/* Reads go straight into the frame buffer (a 64 KiB block per read, freed right after, would make
   malloc consolidate its heap on every answer). */
#define READ_ROOM 4096

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    sandbox_t *sb = h->data;
    buf->base = bw_buf_reserve(&sb->rbuf, READ_ROOM);
    buf->len = sb->rbuf.cap - sb->rbuf.len - 1;
}

static uint32_t le32(const char *s)
{
    const unsigned char *u = (const unsigned char *)s;
    return (uint32_t)u[0] | (uint32_t)u[1] << 8 | (uint32_t)u[2] << 16 | (uint32_t)u[3] << 24;
}

/* Kills a child to stop the request it runs, which nobody wants any more. */
static void kill_to_stop(sandbox_t *sb)
{
    if (sb->killed_cancel)
        return;
    sb->killed_cancel = true;
    bw_metrics_inc(BW_C_SANDBOX_STOP_KILLS);
    uv_process_kill(&sb->proc, SIGKILL);
}

/* One answer from the child: completes its first request; the next one, if any, is running now. */
static void on_frame(sandbox_t *sb, const char *data, size_t len)
{
    bw_sandbox_pool_t *p = sb->pool;
    json_t *resp = json_loadb(data, len, JSON_ALLOW_NUL, NULL);
    bw_sandbox_req_t *r = sb->nreqs > 0 ? sb->reqs[0] : NULL;
    uint64_t id = (uint64_t)json_integer_value(json_object_get(resp, "id"));
    if (r == NULL || resp == NULL || id != r->id) {
        bw_log(BW_LOG_ERROR, "script sandbox answered out of turn: replacing it");
        json_decref(resp);
        uv_process_kill(&sb->proc, SIGKILL);
        return;
    }
    uint64_t now = bw_mono_ns(),
             took_ns = (uint64_t)json_integer_value(json_object_get(resp, "cpu_us")) * 1000;
    p->pace_ns = p->pace_ns - p->pace_ns / 8 + took_ns / 8;
    memmove(sb->reqs, sb->reqs + 1, (size_t)(sb->nreqs - 1) * sizeof sb->reqs[0]);
    if (--sb->nreqs == 0)
        p->busy--;
    else if (sb->reqs[0]->cb == NULL)
        kill_to_stop(sb); /* the next one was cancelled while it waited */
    sb->head_ns = now;
    sb->served++;
    finish(r, BW_SANDBOX_OK, resp, NULL);
    json_decref(resp);
}

static void parse_frames(sandbox_t *sb)
{
    size_t off = 0;
    while (!sb->concluded && sb->rbuf.len - off >= 4) {
        uint32_t n = le32(sb->rbuf.p + off);
        /* checked on the header, before the frame's bytes are read: a child (compromised, say) that
           announces more than the running request's limits allow is not buffered, it is replaced */
        uint32_t max = sb->nreqs > 0 ? sb->reqs[0]->answer_max : ANSWER_OVERHEAD;
        if (n > max) {
            bw_log(BW_LOG_ERROR,
                   "script sandbox sent a frame longer than its request's limits allow: replacing it",
                   BW_LI("frame_bytes", (long long)n), BW_LI("limit_bytes", (long long)max));
            uv_process_kill(&sb->proc, SIGKILL);
            off = sb->rbuf.len;
            break;
        }
        if (sb->rbuf.len - off - 4 < n)
            break;
        on_frame(sb, sb->rbuf.p + off + 4, n);
        off += 4 + (size_t)n;
    }
    memmove(sb->rbuf.p, sb->rbuf.p + off, sb->rbuf.len - off);
    sb->rbuf.len -= off;
    if (sb->rbuf.cap > 1024 * 1024 && sb->rbuf.len < READ_ROOM) { /* after a huge answer */
        bw_buf_t small;
        bw_buf_init(&small, 2 * READ_ROOM);
        bw_buf_append(&small, sb->rbuf.p, sb->rbuf.len);
        bw_buf_dispose(&sb->rbuf);
        sb->rbuf = small;
    }
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    sandbox_t *sb = s->data;
    if (n > 0) {
        sb->rbuf.len += (size_t)n;
        parse_frames(sb);
    }
    if (n < 0 && !sb->concluded) { /* EOF or error: the child is gone or going */
        uv_read_stop(s);
        sb->eof = true;
        if (sb->exited)
            conclude(sb);
        return;
    }
    if (!sb->concluded && !sb->exited && sb->nreqs < PIPELINE)
        dispatch(sb->pool);
}

/* Starts a child in slot i; NULL (logged) when it cannot be started. */
static sandbox_t *spawn(bw_sandbox_pool_t *p, int i)
{
    sandbox_t *sb = bw_calloc(1, sizeof *sb);
    char *args[] = {p->exe, (char *)"js-sandbox", NULL};
#if defined(__SANITIZE_ADDRESS__)
    /* A sanitizer build's children: AddressSanitizer keeps up to 256 MB of freed memory in quarantine by
       default, which would count against SCRIPT_MAX_MEMORY_MB; leaks are JavaScriptCore's (the worker's
       own runs check ours). */
    char *env[] = {p->env_rss, (char *)"ASAN_OPTIONS=quarantine_size_mb=16:detect_leaks=0", NULL};
#elif defined(__SANITIZE_THREAD__)
    /* ThreadSanitizer cannot see JavaScriptCore's own synchronisation (it is not instrumented) and reports
       races inside it; printing one runs a symbolizer, which the seccomp filter answers with SIGSYS. The
       child's own code is one thread and a signal handler; the worker's runs check ours. */
    char *env[] = {p->env_rss, (char *)"TSAN_OPTIONS=report_bugs=0", NULL};
#else
    char *env[] = {p->env_rss, NULL};
#endif
    uv_stdio_container_t io[3] = {
        {.flags = UV_CREATE_PIPE | UV_READABLE_PIPE, .data.stream = (uv_stream_t *)&sb->in},
        {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&sb->out},
        {.flags = UV_INHERIT_FD, .data.fd = 2},
    };
    uv_process_options_t o = {
        .exit_cb = on_child_exit, .file = p->exe, .args = args, .env = env, .stdio_count = 3, .stdio = io};
    sb->pool = p;
    sb->slot = i;
    bw_buf_init(&sb->rbuf, 4096);
    uv_pipe_init(p->loop, &sb->in, 0);
    uv_pipe_init(p->loop, &sb->out, 0);
    sb->proc.data = sb->in.data = sb->out.data = sb;
    sb->open_handles = 3;
    p->open_handles++;
    int rc = uv_spawn(p->loop, &sb->proc, &o);
    if (rc != 0) {
        bw_log(BW_LOG_ERROR, "cannot start a script sandbox", BW_LS("error", uv_strerror(rc)));
        sb->exited = true;
        close_child(sb); /* uv_spawn initialised the process handle even on failure */
        return NULL;
    }
    uv_read_start((uv_stream_t *)&sb->out, on_alloc, on_read);
    bw_metrics_inc(BW_C_SANDBOX_STARTS);
    p->alive++;
    p->slots[i] = sb;
    return sb;
}

/* ---- requests ---- */

static void on_written(uv_write_t *w, int status)
{
    wreq_t *wr = (wreq_t *)w;
    free(wr->body);
    free(wr);
}

static void send_request(sandbox_t *sb, bw_sandbox_req_t *r)
{
    wreq_t *wr = bw_calloc(1, sizeof *wr);
    size_t n;
    json_object_set_new(r->request, "id", json_integer((json_int_t)r->id));
    wr->body = json_dumps(r->request, JSON_COMPACT);
    n = strlen(wr->body);
    for (int i = 0; i < 4; i++)
        wr->hdr[i] = (unsigned char)(n >> (8 * i));
    uv_buf_t bufs[2] = {uv_buf_init((char *)wr->hdr, 4), uv_buf_init(wr->body, (unsigned)n)};
    if (sb->nreqs == 0) {
        sb->pool->busy++;
        sb->head_ns = bw_mono_ns();
    }
    sb->reqs[sb->nreqs++] = r;
    r->sb = sb;
    if (uv_write(&wr->w, (uv_stream_t *)&sb->in, bufs, 2, on_written) != 0) {
        free(wr->body);
        free(wr);
        uv_process_kill(&sb->proc, SIGKILL); /* completes the request as a crash */
    }
}

static void on_watch(uv_timer_t *t);

/* Where the next request goes: an idle child, else a new one in an empty slot, else the busy child with
   the youngest running job, if the request would start there within PIPELINE_WAIT_MS (see the top),
   else nowhere for now. */
static sandbox_t *free_child(bw_sandbox_pool_t *p)
{
    sandbox_t *young = NULL;
    uint64_t now = bw_mono_ns();
    for (int i = 0; i < p->size; i++) {
        sandbox_t *sb = p->slots[i];
        if (sb != NULL && !sb->exited && !sb->killed_cancel && !sb->killed_memory && sb->nreqs == 0)
            return sb;
    }
    for (int i = 0; i < p->size; i++)
        if (p->slots[i] == NULL)
            return spawn(p, i);
    for (int i = 0; i < p->size; i++) {
        sandbox_t *sb = p->slots[i];
        if (sb != NULL && !sb->exited && !sb->killed_cancel && !sb->killed_memory && sb->nreqs < PIPELINE &&
            now - sb->head_ns < PIPELINE_WAIT_MS * 1000000ull &&
            (uint64_t)sb->nreqs * p->pace_ns < PIPELINE_WAIT_MS * 1000000ull &&
            (young == NULL || sb->head_ns > young->head_ns))
            young = sb;
    }
    return young;
}

/* The pool's gauges on /metrics (one pool per process). */
static void publish_gauges(const bw_sandbox_pool_t *p)
{
    bw_metrics_set(BW_G_SANDBOXES, p->alive);
    bw_metrics_set(BW_G_SANDBOXES_BUSY, (int64_t)p->busy);
    bw_metrics_set(BW_G_SANDBOX_QUEUE, (int64_t)p->queued);
}

static void dispatch(bw_sandbox_pool_t *p)
{
    while (!bw_list_empty(&p->queue)) {
        sandbox_t *sb = free_child(p);
        if (sb == NULL) {
            bool any = false;
            for (int i = 0; i < p->size; i++)
                any |= p->slots[i] != NULL;
            if (!any) { /* nothing runs and nothing can start: fail the oldest rather than wait for ever */
                bw_sandbox_req_t *r = bw_list_entry(bw_list_shift(&p->queue), bw_sandbox_req_t, link);
                p->queued--;
                finish(r, BW_SANDBOX_UNAVAILABLE, NULL, "no script sandbox process could be started");
                continue;
            }
            break;
        }
        bw_sandbox_req_t *r = bw_list_entry(bw_list_shift(&p->queue), bw_sandbox_req_t, link);
        p->queued--;
        send_request(sb, r);
    }
    if (p->busy > 0 && !uv_is_active((uv_handle_t *)&p->watch))
        uv_timer_start(&p->watch, on_watch, WATCH_MS, WATCH_MS);
    publish_gauges(p);
}

/* Resident set of a child in bytes (0 once it is gone). */
static uint64_t rss_bytes(uv_pid_t pid)
{
    int64_t virt, rss;
    bw_proc_memory(pid, &virt, &rss);
    return (uint64_t)rss;
}

static void on_watch(uv_timer_t *t)
{
    bw_sandbox_pool_t *p = t->data;
    uint64_t limit = (uint64_t)p->cfg->script_max_memory_mb * 1024 * 1024;
    if (p->busy == 0) {
        uv_timer_stop(t);
        return;
    }
    for (int i = 0; i < p->size; i++) {
        sandbox_t *sb = p->slots[i];
        if (sb == NULL || sb->exited || sb->nreqs == 0 || sb->killed_memory)
            continue;
        if (rss_bytes(sb->proc.pid) > limit) {
            sb->killed_memory = true;
            uv_process_kill(&sb->proc, SIGKILL);
        }
    }
}

/* A limit of the request, or the child's default for it when the request names none. */
static uint64_t limit_of(const json_t *request, const char *name, uint64_t dflt)
{
    json_t *v = json_object_get(request, name);
    return json_is_integer(v) && json_integer_value(v) >= 0 ? (uint64_t)json_integer_value(v) : dflt;
}

uint32_t bw_sandbox_answer_max(const json_t *request)
{
    uint64_t out = limit_of(request, "max_output_bytes", BW_JSENGINE_DEFAULT_MAX_OUTPUT),
             logs = limit_of(request, "max_logs", BW_JSENGINE_DEFAULT_MAX_LOGS),
             log_bytes = limit_of(request, "max_log_bytes", BW_JSENGINE_DEFAULT_MAX_LOG_BYTES);
    if (out > FRAME_MAX || logs > FRAME_MAX || log_bytes > FRAME_MAX) /* and no overflow below */
        return FRAME_MAX;
    /* the output twice: the child's repair of what jansson rejects (integers beyond int64 written as
       reals) may lengthen it a little; log messages are counted unescaped, and escaping is at most 6x */
    uint64_t n = 2 * out + 6 * log_bytes + LOG_ENTRY_OVERHEAD * logs + ANSWER_OVERHEAD;
    return n < FRAME_MAX ? (uint32_t)n : FRAME_MAX;
}

bw_sandbox_req_t *bw_sandbox_submit(bw_sandbox_pool_t *p, json_t *request, bw_sandbox_cb cb, void *ud)
{
    bw_sandbox_req_t *r = bw_calloc(1, sizeof *r);
    r->pool = p;
    r->request = request;
    r->answer_max = bw_sandbox_answer_max(request);
    r->id = ++p->next_id;
    r->cb = cb;
    r->ud = ud;
    bw_list_push(&p->queue, &r->link);
    p->queued++;
    dispatch(p);
    return r;
}

void bw_sandbox_cancel(bw_sandbox_req_t *r)
{
    bw_sandbox_pool_t *p = r->pool;
    if (r->sb == NULL) {
        bw_list_remove(&r->link);
        p->queued--;
        req_free(r);
        publish_gauges(p);
        return;
    }
    /* Sent: the child is running it, or will when its current job ends. The only sure way to stop a
       running script at once is to end the process; one that waits is killed when it starts (or its
       answer, should it come first, dropped). */
    sandbox_t *sb = r->sb;
    r->cb = NULL;
    if (sb->reqs[0] == r)
        kill_to_stop(sb);
}

/* ---- the pool ---- */

bw_sandbox_pool_t *bw_sandbox_pool_create(uv_loop_t *loop, const bw_config_t *cfg, const char *exe)
{
    bw_sandbox_pool_t *p = bw_calloc(1, sizeof *p);
    p->loop = loop;
    p->cfg = cfg;
    p->exe = bw_strdup(exe);
    p->size = (int)cfg->script_pool_size;
    if (p->size <= 0) {
        uv_cpu_info_t *ci = NULL;
        int n = 0;
        p->size = uv_cpu_info(&ci, &n) == 0 && n > 0 ? n : 2;
        uv_free_cpu_info(ci, n);
    }
    p->slots = bw_calloc((size_t)p->size, sizeof *p->slots);
    snprintf(p->env_rss, sizeof p->env_rss, "BW_SANDBOX_MAX_RSS_MB=%lld",
             (long long)cfg->script_max_memory_mb);
    bw_list_init(&p->queue);
    uv_timer_init(loop, &p->watch);
    p->watch.data = p;
    p->open_handles = 1;
    p->pace_ns = PIPELINE_WAIT_MS * 1000000ull / 2; /* a second request at most, until jobs show their pace */
    return p;
}

static void on_watch_closed(uv_handle_t *h)
{
    bw_sandbox_pool_t *p = h->data;
    p->open_handles--;
    maybe_free_pool(p);
}

void bw_sandbox_pool_destroy(bw_sandbox_pool_t *p)
{
    if (p == NULL)
        return;
    p->destroyed = true;
    bw_list_t *l;
    while ((l = bw_list_shift(&p->queue)) != NULL)
        req_free(bw_list_entry(l, bw_sandbox_req_t, link));
    p->queued = 0;
    bw_metrics_set(BW_G_SANDBOXES, 0);
    bw_metrics_set(BW_G_SANDBOXES_BUSY, 0);
    bw_metrics_set(BW_G_SANDBOX_QUEUE, 0);
    for (int i = 0; i < p->size; i++) {
        sandbox_t *sb = p->slots[i];
        if (sb == NULL)
            continue;
        for (int k = 0; k < sb->nreqs; k++)
            req_free(sb->reqs[k]); /* their owners are gone: no callback */
        sb->nreqs = 0;
        /* Closed now rather than in on_child_exit, so that whoever closes the loop's remaining handles
           after us cannot close these without our callbacks; the kernel reaps the child with us. */
        uv_process_kill(&sb->proc, SIGKILL);
        sb->exited = sb->concluded = true;
        p->slots[i] = NULL;
        close_child(sb);
    }
    uv_close((uv_handle_t *)&p->watch, on_watch_closed);
}
