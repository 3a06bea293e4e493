/*
 * A small HTTP/1.1 server for a handful of fixed GET routes and, optionally, one application's routes
 * (opts.app_prefix: the approvals API), on one thread with epoll (level-triggered, non-blocking
 * sockets). libmicrohttpd could not give the guarantee the probes need: it has an idle timeout but no
 * deadline for a request's headers, so a client dribbling one header line a second is never idle, and a
 * full server refuses new connections instead of closing a slow one.
 *
 * Every connection is in exactly one of four lists, each in the order its wait began, and each wait
 * has one fixed bound, so the list's head is both the next to expire and the oldest:
 *   - reading: waiting for a request's line and headers (from accept, or from the previous answer on a
 *     kept-alive connection) — HEALTH_HEADER_TIMEOUT_MS; then, for an application request with a
 *     body, for its Content-Length bytes — HEALTH_HEADER_TIMEOUT_MS again, from the end of the head;
 *   - waiting: an application request handed to the app, whose answer (bw_http_reply, from any
 *     thread) has not come yet — opts.app_timeout_ms, then the server answers 503 itself;
 *   - writing: an answer the client has not taken yet — WRITE_TIMEOUT_MS;
 *   - lingering: answered with Connection: close, our side shut down, the client's leftover request
 *     bytes read and discarded so that closing does not reset the answer away — LINGER_MS.
 * Admission never fails for lack of room: at HEALTH_MAX_CONNECTIONS (or at an address's cap) the
 * oldest reading connection (of that address) is closed for the new one; a waiting one only when
 * nothing else is left. Closed connections are freed at the end of the epoll round, so a later event
 * of the same round never finds freed memory.
 *
 * The application routes (bodies, answer handles, waiting) are in net/http_app.c.
 */
#include "net/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "build_info.h"
#include "net/http_int.h"
#include "obs/metrics.h"
#include "util/buf.h"
#include "util/clock.h"
#include "util/xalloc.h"

#define WRITE_TIMEOUT_MS 10000 /* a client must take an answer (at most a few hundred KB) within this */
#define LINGER_MS 1000
#define LINGER_MAX_BYTES (256 * 1024) /* leftover request bytes read and discarded before closing */
#define ACCEPTS_PER_ROUND 64
#define EVENTS_PER_ROUND 64
#define ACCEPT_PAUSE_MS 100  /* out of descriptors with nothing to close: try again after this */
#define APP_TIMEOUT_MS 30000 /* default bound on an application's answer */

/* ---- lists and the address table ----------------------------------------------------------- */

static const uint64_t list_timeout[L__COUNT] = {0, WRITE_TIMEOUT_MS, LINGER_MS, 0};

static void list_remove(bw_http_t *h, conn_t *c)
{
    if (c->list == L_NONE)
        return;
    list_t *l = &h->lists[c->list];
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        l->head = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    else
        l->tail = c->prev;
    c->prev = c->next = NULL;
    c->list = L_NONE;
}

/* Moves c to the tail of list which (its wait begins now). */
void bw_http_list_enter(bw_http_t *h, conn_t *c, int which)
{
    list_remove(h, c);
    list_t *l = &h->lists[which];
    c->list = which;
    c->since_ms = bw_mono_ms();
    c->order = h->next_order++;
    c->prev = l->tail;
    if (l->tail != NULL)
        l->tail->next = c;
    else
        l->head = c;
    l->tail = c;
}

static uint64_t deadline_of(const bw_http_t *h, const conn_t *c)
{
    uint64_t t = c->list == L_READING   ? (uint64_t)h->header_timeout_ms
                 : c->list == L_WAITING ? (uint64_t)h->app_timeout_ms
                                        : list_timeout[c->list];
    return c->since_ms + t;
}

/* FNV-1a over the address with a per-process seed: clients do not choose their bucket. */
static uint32_t addr_hash(const bw_http_t *h, const addr_key_t *k)
{
    uint32_t x = 2166136261u ^ h->seed;
    for (size_t i = 0; i < sizeof k->bytes; i++)
        x = (x ^ k->bytes[i]) * 16777619u;
    return x ^ (uint32_t)k->family;
}

static bool same_addr(const addr_key_t *a, const addr_key_t *b)
{
    return a->family == b->family && memcmp(a->bytes, b->bytes, sizeof a->bytes) == 0;
}

static void addr_key_of(const struct sockaddr_storage *ss, addr_key_t *k)
{
    memset(k, 0, sizeof *k);
    k->family = ss->ss_family;
    if (ss->ss_family == AF_INET)
        memcpy(k->bytes, &((const struct sockaddr_in *)ss)->sin_addr, 4);
    else if (ss->ss_family == AF_INET6)
        memcpy(k->bytes, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
}

static void bucket_add(bw_http_t *h, conn_t *c)
{
    conn_t **b = &h->buckets[c->hash & (h->nbuckets - 1)];
    c->bucket_next = *b;
    *b = c;
}

static void bucket_remove(bw_http_t *h, conn_t *c)
{
    for (conn_t **p = &h->buckets[c->hash & (h->nbuckets - 1)]; *p != NULL; p = &(*p)->bucket_next)
        if (*p == c) {
            *p = c->bucket_next;
            return;
        }
}

/* Connections from the address, and the oldest of them still reading its headers (or NULL). */
static int address_count(bw_http_t *h, const addr_key_t *k, uint32_t hash, conn_t **oldest_reading)
{
    int n = 0;
    *oldest_reading = NULL;
    for (conn_t *c = h->buckets[hash & (h->nbuckets - 1)]; c != NULL; c = c->bucket_next) {
        if (!same_addr(&c->addr, k))
            continue;
        n++;
        if (c->list == L_READING && (*oldest_reading == NULL || c->order < (*oldest_reading)->order))
            *oldest_reading = c;
    }
    return n;
}

/* ---- connection life ----------------------------------------------------------------------- */

void bw_http_conn_close(bw_http_t *h, conn_t *c)
{
    if (c->fd < 0)
        return;
    epoll_ctl(h->epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    bw_httpapp_detach(h, c);
    list_remove(h, c);
    bucket_remove(h, c);
    h->nconns--;
    bw_metrics_set(BW_G_HEALTH_CONNECTIONS, h->nconns);
    c->next = h->dead;
    h->dead = c;
}

static void free_dead(bw_http_t *h)
{
    while (h->dead != NULL) {
        conn_t *c = h->dead;
        h->dead = c->next;
        free(c->in);
        bw_buf_dispose(&c->out);
        free(c);
    }
}

void bw_http_set_interest(bw_http_t *h, conn_t *c, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (c->events == events)
        return;
    c->events = events;
    epoll_ctl(h->epoll_fd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* The connection to close for a new one when the server is full: the oldest still sending its
   request, else one being closed, else a client not taking its answer, and only then the oldest
   waiting for the application (its answer is then dropped). */
static conn_t *victim(bw_http_t *h)
{
    static const int order[] = {L_READING, L_LINGERING, L_WRITING, L_WAITING};
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
        if (h->lists[order[i]].head != NULL)
            return h->lists[order[i]].head;
    return NULL;
}

static void evict(bw_http_t *h, conn_t *c)
{
    bw_metrics_inc(BW_C_HEALTH_EVICTIONS);
    bw_http_conn_close(h, c);
}

/* Takes a new connection, closing another to make room when needed. */
static void admit(bw_http_t *h, int fd, const struct sockaddr_storage *ss)
{
    addr_key_t k;
    conn_t *oldest;
    addr_key_of(ss, &k);
    uint32_t hash = addr_hash(h, &k);
    if (address_count(h, &k, hash, &oldest) >= h->per_address) {
        if (oldest == NULL) { /* every one of them is being answered: this one waits its turn */
            close(fd);
            return;
        }
        evict(h, oldest);
    }
    if (h->nconns >= h->max_conns && victim(h) != NULL)
        evict(h, victim(h));
    conn_t *c = bw_calloc(1, sizeof *c);
    c->fd = fd;
    c->list = L_NONE;
    c->addr = k;
    c->hash = hash;
    c->events = EPOLLIN | EPOLLRDHUP;
    bw_buf_init(&c->out, 0);
    struct epoll_event ev = {.events = c->events, .data.ptr = c};
    if (epoll_ctl(h->epoll_fd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        close(fd);
        bw_buf_dispose(&c->out);
        free(c);
        return;
    }
    bucket_add(h, c);
    bw_http_list_enter(h, c, L_READING);
    h->nconns++;
    bw_metrics_set(BW_G_HEALTH_CONNECTIONS, h->nconns);
}

static void pause_accepting(bw_http_t *h)
{
    struct epoll_event ev = {.events = 0, .data.ptr = &h->listen_fd};
    epoll_ctl(h->epoll_fd, EPOLL_CTL_MOD, h->listen_fd, &ev);
    h->accept_paused_until = bw_mono_ms() + ACCEPT_PAUSE_MS;
}

static void accept_some(bw_http_t *h)
{
    for (int i = 0; i < ACCEPTS_PER_ROUND; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(h->listen_fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            admit(h, fd, &ss);
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if ((errno == EMFILE || errno == ENFILE) && h->nconns > 0) {
            evict(h, victim(h)); /* frees a descriptor for the waiting client */
            continue;
        }
        if (errno == EMFILE || errno == ENFILE)
            pause_accepting(h);
        return;
    }
}

/* ---- answers ------------------------------------------------------------------------------- */

typedef struct reply {
    unsigned status;
    const char *content_type;
    const char *allow;
    bw_buf_t body;
} reply_t;

typedef void (*render_fn)(const bw_http_t *h, reply_t *r);

static void r_alive(const bw_http_t *h, reply_t *r)
{
    bw_buf_puts(&r->body, "OK\n");
}

static void r_ready(const bw_http_t *h, reply_t *r)
{
    const char *why = bw_metrics_readiness();
    char refused[256];
    r->status = strcmp(why, "READY") == 0 ? 200 : 503;
    bw_metrics_connect_error(refused, sizeof refused);
    if (strcmp(why, "NOT_CONNECTED") == 0 && refused[0] != '\0')
        bw_buf_printf(&r->body, "%s: %s\n", why, refused);
    else
        bw_buf_printf(&r->body, "%s\n", why);
}

static void r_build(const bw_http_t *h, reply_t *r)
{
    r->content_type = "application/json";
    bw_buf_printf(&r->body, "{\"name\":\"beamline-worker\",\"version\":\"%s\",\"commit\":\"%s\"}\n",
                  BW_VERSION, BW_GIT_COMMIT);
}

static void r_state(const bw_http_t *h, reply_t *r)
{
    r->content_type = "application/json";
    bw_metrics_state_json(&r->body, h->worker_id);
    bw_buf_puts(&r->body, "\n");
}

static void r_metrics(const bw_http_t *h, reply_t *r)
{
    r->content_type = "text/plain; version=0.0.4; charset=utf-8";
    bw_metrics_render(&r->body);
}

static const struct route {
    const char *path;
    render_fn render;
} routes[] = {
    {"/_health", r_alive}, {"/healthz", r_alive}, {"/readyz", r_ready},
    {"/_build", r_build},  {"/_state", r_state},  {"/metrics", r_metrics},
};

static const struct status_text {
    unsigned status;
    const char *text;
} reasons[] = {
    {200, "OK"},
    {201, "Created"},
    {202, "Accepted"},
    {204, "No Content"},
    {400, "Bad Request"},
    {401, "Unauthorized"},
    {403, "Forbidden"},
    {404, "Not Found"},
    {405, "Method Not Allowed"},
    {409, "Conflict"},
    {411, "Length Required"},
    {413, "Content Too Large"},
    {415, "Unsupported Media Type"},
    {422, "Unprocessable Content"},
    {429, "Too Many Requests"},
    {431, "Request Header Fields Too Large"},
    {500, "Internal Server Error"},
    {501, "Not Implemented"},
    {503, "Service Unavailable"},
    {504, "Gateway Timeout"},
};

static const char *reason(unsigned status)
{
    for (size_t i = 0; i < sizeof reasons / sizeof reasons[0]; i++)
        if (reasons[i].status == status)
            return reasons[i].text;
    return "Error";
}

/* Starts c's answer: the status line and the headers every answer has (no blank line yet). */
void bw_http_put_head(conn_t *c, unsigned status, const char *content_type, size_t len, bool keep_alive_10)
{
    bw_buf_t *o = &c->out;
    o->len = 0;
    c->out_off = 0;
    bw_buf_printf(o, "HTTP/1.1 %u %s\r\n", status, reason(status));
    if (content_type != NULL)
        bw_buf_printf(o, "Content-Type: %s\r\n", content_type);
    bw_buf_printf(o, "Content-Length: %zu\r\n", len);
    if (c->close_after)
        bw_buf_puts(o, "Connection: close\r\n");
    else if (keep_alive_10)
        bw_buf_puts(o, "Connection: keep-alive\r\n");
}

/* Queues the answer r on c; bw_http_drive() sends it. */
static void answer(bw_http_t *h, conn_t *c, reply_t *r, bool head, bool keep_alive_10)
{
    bw_buf_t *o = &c->out;
    bw_http_put_head(c, r->status, r->content_type, r->body.len, keep_alive_10);
    bw_buf_puts(o, "Cache-Control: no-store\r\n");
    if (r->allow != NULL)
        bw_buf_printf(o, "Allow: %s\r\n", r->allow);
    bw_buf_puts(o, "\r\n");
    if (!head)
        bw_buf_append(o, r->body.p, r->body.len);
    bw_buf_dispose(&r->body);
    bw_http_list_enter(h, c, L_WRITING);
}

static void answer_error(bw_http_t *h, conn_t *c, unsigned status, const char *text)
{
    reply_t r = {.status = status, .content_type = "text/plain; charset=utf-8"};
    bw_buf_init(&r.body, 64);
    bw_buf_puts(&r.body, text);
    if (status == 405)
        r.allow = "GET, HEAD";
    c->close_after = true;
    answer(h, c, &r, false, false);
}

/* ---- requests ------------------------------------------------------------------------------ */

/* The value of a header line "Name: value" when its name is name, trimmed; NULL otherwise. */
static const char *header_value(const char *line, size_t len, const char *name, size_t *vlen)
{
    size_t n = strlen(name);
    if (len <= n || line[n] != ':' || strncasecmp(line, name, n) != 0)
        return NULL;
    const char *v = line + n + 1, *e = line + len;
    while (v < e && (*v == ' ' || *v == '\t'))
        v++;
    while (e > v && (e[-1] == ' ' || e[-1] == '\t'))
        e--;
    *vlen = (size_t)(e - v);
    return v;
}

static bool has_token(const char *v, size_t n, const char *token)
{
    size_t tl = strlen(token);
    for (size_t i = 0; i + tl <= n; i++)
        if (strncasecmp(v + i, token, tl) == 0 && (i == 0 || v[i - 1] == ',' || v[i - 1] == ' ') &&
            (i + tl == n || v[i + tl] == ',' || v[i + tl] == ' '))
            return true;
    return false;
}

/* Parses the request line; false when it is not "METHOD SP /target SP HTTP/1.x". */
static bool parse_request_line(const char *p, size_t len, request_t *rq)
{
    const char *sp1 = memchr(p, ' ', len);
    if (sp1 == NULL || sp1 == p)
        return false;
    const char *t = sp1 + 1, *e = p + len;
    const char *sp2 = memchr(t, ' ', (size_t)(e - t));
    if (sp2 == NULL || sp2 == t || *t != '/' || e - sp2 != 9 || memcmp(sp2 + 1, "HTTP/1.", 7) != 0 ||
        (sp2[8] != '0' && sp2[8] != '1'))
        return false;
    for (const char *m = p; m < sp1; m++)
        if (*m < 'A' || *m > 'Z')
            return false;
    rq->method = p;
    rq->method_len = (size_t)(sp1 - p);
    rq->target = t;
    rq->target_len = (size_t)(sp2 - t);
    rq->minor = sp2[8] - '0';
    return true;
}

/* A Content-Length value: 1 to 18 digits. */
static bool parse_length(const char *v, size_t n, size_t *out)
{
    size_t x = 0;
    if (n == 0 || n > 18)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return false;
        x = x * 10 + (size_t)(v[i] - '0');
    }
    *out = x;
    return true;
}

/* The headers only application requests use. */
static void app_header(const char *line, size_t n, request_t *rq)
{
    const char *v;
    size_t vl;
    if ((v = header_value(line, n, "Authorization", &vl)) != NULL) {
        rq->auth = v;
        rq->auth_len = vl;
        rq->auth_count++;
    } else if ((v = header_value(line, n, "Content-Type", &vl)) != NULL) {
        rq->ctype = v;
        rq->ctype_len = vl;
    } else if ((v = header_value(line, n, "Expect", &vl)) != NULL) {
        rq->expect_continue = vl == 12 && strncasecmp(v, "100-continue", 12) == 0;
    }
}

/* Parses the head p[0..len) (ending in its blank line); false when malformed. */
bool bw_http_parse_head(const char *p, size_t len, request_t *rq)
{
    const char *e = p + len, *eol = memchr(p, '\n', len);
    size_t ll = (size_t)(eol - p);
    memset(rq, 0, sizeof *rq);
    rq->content_length = SIZE_MAX; /* none given yet */
    if (!parse_request_line(p, ll > 0 && p[ll - 1] == '\r' ? ll - 1 : ll, rq))
        return false;
    for (const char *line = eol + 1; line < e; line = eol + 1) {
        eol = memchr(line, '\n', (size_t)(e - line));
        size_t n = (size_t)(eol - line), vl;
        if (n > 0 && line[n - 1] == '\r')
            n--;
        if (n == 0)
            break;
        if (line[0] == ' ' || line[0] == '\t' || memchr(line, ':', n) == NULL)
            return false; /* folded or nameless header lines are refused (RFC 9112 5.2) */
        const char *v;
        if ((v = header_value(line, n, "Connection", &vl)) != NULL) {
            rq->conn_close |= has_token(v, vl, "close");
            rq->conn_keep |= has_token(v, vl, "keep-alive");
        } else if ((v = header_value(line, n, "Content-Length", &vl)) != NULL) {
            rq->has_body |= !(vl == 1 && v[0] == '0');
            rq->cl_bad |= rq->content_length != SIZE_MAX || !parse_length(v, vl, &rq->content_length);
        } else if (header_value(line, n, "Transfer-Encoding", &vl) != NULL) {
            rq->has_body = rq->chunked = true;
        } else {
            app_header(line, n, rq);
        }
    }
    return true;
}

/* Length of the head (through its blank line) in c->in, or 0 while incomplete. The scan resumes where
   it stopped, so a head arriving a byte at a time costs its length, not its length squared. */
static size_t head_length(conn_t *c)
{
    size_t i = c->scanned > 3 ? c->scanned - 3 : 0;
    for (; i < c->in_len; i++) {
        if (c->in[i] != '\n')
            continue;
        if (i >= 1 && c->in[i - 1] == '\n')
            return i + 1;
        if (i >= 2 && c->in[i - 1] == '\r' && c->in[i - 2] == '\n')
            return i + 1;
    }
    c->scanned = c->in_len;
    return 0;
}

/* How far c->in may fill now: the head, the body being read, or (waiting for an answer) one more
   head pipelined behind the request. */
size_t bw_http_read_limit(const conn_t *c)
{
    if (c->list == L_WAITING)
        return c->head_len + c->body_len + BW_HTTP_MAX_HEAD_BYTES;
    if (c->in_body)
        return c->head_len + c->body_len;
    return BW_HTTP_MAX_HEAD_BYTES;
}

/* ---- fixed routes ---------------------------------------------------------------------------- */

static void dispatch(bw_http_t *h, conn_t *c, const request_t *rq)
{
    const char *q = memchr(rq->target, '?', rq->target_len); /* the query does not select the route */
    size_t plen = q != NULL ? (size_t)(q - rq->target) : rq->target_len;
    bool keep = rq->minor == 1 ? !rq->conn_close : rq->conn_keep && !rq->conn_close;
    if (bw_httpapp_is_app_path(h, rq->target, plen)) {
        bw_httpapp_head(h, c, rq, keep);
        return;
    }
    bool get = rq->method_len == 3 && memcmp(rq->method, "GET", 3) == 0;
    bool head = rq->method_len == 4 && memcmp(rq->method, "HEAD", 4) == 0;
    if (!get && !head) {
        answer_error(h, c, 405, "method not allowed\n");
        return;
    }
    c->close_after = !keep || rq->has_body || c->eof; /* bodies are not read: close instead */
    reply_t r = {.status = 200, .content_type = "text/plain; charset=utf-8"};
    bw_buf_init(&r.body, 256);
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        if (strlen(routes[i].path) == plen && memcmp(rq->target, routes[i].path, plen) == 0) {
            routes[i].render(h, &r);
            answer(h, c, &r, head, keep && rq->minor == 0);
            return;
        }
    }
    r.status = 404;
    bw_buf_puts(&r.body, "not found: try /healthz, /readyz, /metrics, /_state, /_build\n");
    answer(h, c, &r, head, keep && rq->minor == 0);
}

/* Answers the request in c->in once its head (and an application request's body) is complete; closes
   on a bad or oversized one. */
static void process(bw_http_t *h, conn_t *c)
{
    if (c->in_body) {
        if (c->in_len >= c->head_len + c->body_len)
            bw_httpapp_call(h, c);
        else if (c->eof)
            bw_http_conn_close(h, c);
        return;
    }
    size_t hl = head_length(c);
    if (hl == 0 || hl > BW_HTTP_MAX_HEAD_BYTES) {
        if (hl > BW_HTTP_MAX_HEAD_BYTES || c->in_len >= BW_HTTP_MAX_HEAD_BYTES)
            answer_error(h, c, 431, "request line and headers over 32 KiB\n");
        else if (c->eof)
            bw_http_conn_close(h, c);
        return;
    }
    request_t rq;
    c->head_len = hl;
    if (!bw_http_parse_head(c->in, hl, &rq)) {
        answer_error(h, c, 400, "bad request\n");
        return;
    }
    dispatch(h, c, &rq);
    if (c->fd >= 0 && c->in_body)
        process(h, c); /* the body may be here already */
}

/* Reads what is there (up to bw_http_read_limit). */
void bw_http_on_readable(bw_http_t *h, conn_t *c)
{
    size_t limit = bw_http_read_limit(c);
    while (c->in_len < limit && !c->eof) {
        if (c->in_cap - c->in_len < 1024 && c->in_cap < limit) {
            c->in_cap = c->in_cap ? c->in_cap * 2 : 2048;
            if (c->in_cap > limit)
                c->in_cap = limit;
            c->in = bw_realloc(c->in, c->in_cap);
        }
        size_t room = (c->in_cap < limit ? c->in_cap : limit) - c->in_len;
        ssize_t r = recv(c->fd, c->in + c->in_len, room, 0);
        if (r > 0) {
            c->in_len += (size_t)r;
            continue;
        }
        if (r == 0) {
            c->eof = true;
            break;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            bw_http_conn_close(h, c);
            return;
        }
        break;
    }
}

/* Reads and drops the client's leftovers until it closes, then closes. */
static void on_lingering(bw_http_t *h, conn_t *c)
{
    char sink[4096];
    for (;;) {
        ssize_t r = recv(c->fd, sink, sizeof sink, 0);
        if (r > 0 && (c->discarded += (size_t)r) < LINGER_MAX_BYTES)
            continue;
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        bw_http_conn_close(h, c);
        return;
    }
}

/* Sends what the socket takes; true once the whole answer is out. */
static bool send_out(bw_http_t *h, conn_t *c)
{
    while (c->out_off < c->out.len) {
        ssize_t w = send(c->fd, c->out.p + c->out_off, c->out.len - c->out_off, MSG_NOSIGNAL);
        if (w > 0) {
            c->out_off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            bw_http_set_interest(h, c, EPOLLOUT); /* the rest when the client takes it */
        else
            bw_http_conn_close(h, c);
        return false;
    }
    return true;
}

/* Moves c along as far as it can go now: answer a complete request, send it, then either linger
   (Connection: close) or take the next request, which may already be here (pipelined). A loop, not
   recursion, however many requests are queued up. */
void bw_http_drive(bw_http_t *h, conn_t *c)
{
    while (c->fd >= 0) {
        if (c->list == L_READING) {
            process(h, c);
            if (c->fd < 0 || c->list != L_WRITING)
                return;
        }
        if (c->list != L_WRITING || !send_out(h, c))
            return;
        c->requests++;
        if (c->close_after) {
            shutdown(c->fd, SHUT_WR);
            bw_http_list_enter(h, c, L_LINGERING);
            bw_http_set_interest(h, c, EPOLLIN | EPOLLRDHUP);
            on_lingering(h, c);
            return;
        }
        /* Kept alive: the next request has its own header deadline, from now. */
        size_t used = c->head_len + c->body_len;
        memmove(c->in, c->in + used, c->in_len - used);
        c->in_len -= used;
        c->head_len = c->body_len = c->scanned = 0;
        c->out.len = c->out_off = 0;
        bw_http_list_enter(h, c, L_READING);
        bw_http_set_interest(h, c, EPOLLIN | EPOLLRDHUP);
        if (c->in_len == 0)
            return;
    }
}

static void on_event(bw_http_t *h, conn_t *c, uint32_t events)
{
    if (c->fd < 0)
        return; /* closed earlier in this round */
    if (c->list == L_LINGERING) {
        on_lingering(h, c);
        return;
    }
    if (c->list == L_WAITING) {
        bw_httpapp_on_waiting(h, c, events);
        return;
    }
    if (c->list == L_WRITING && (events & (EPOLLERR | EPOLLHUP))) {
        bw_http_conn_close(h, c);
        return;
    }
    if (c->list == L_READING)
        bw_http_on_readable(h, c);
    if (c->fd >= 0)
        bw_http_drive(h, c);
}

/* Closes every connection past its deadline. */
static void expire(bw_http_t *h, uint64_t now)
{
    for (int l = 0; l < L__COUNT; l++) {
        conn_t *c;
        while ((c = h->lists[l].head) != NULL && deadline_of(h, c) <= now) {
            if (l == L_WAITING) {
                bw_httpapp_expired(h, c);
                continue;
            }
            /* An idle kept-alive connection is not a slow client; one that sent part of a head is. */
            if (l == L_READING && (c->requests == 0 || c->in_len > 0))
                bw_metrics_inc(BW_C_HEALTH_HEADER_TIMEOUTS);
            bw_http_conn_close(h, c);
        }
    }
}

/* Milliseconds until the next deadline (-1: none). */
static int next_timeout(const bw_http_t *h, uint64_t now)
{
    uint64_t next = UINT64_MAX;
    for (int l = 0; l < L__COUNT; l++)
        if (h->lists[l].head != NULL && deadline_of(h, h->lists[l].head) < next)
            next = deadline_of(h, h->lists[l].head);
    if (h->accept_paused_until != 0 && h->accept_paused_until < next)
        next = h->accept_paused_until;
    if (next == UINT64_MAX)
        return -1;
    return next <= now ? 0 : (int)(next - now > 60000 ? 60000 : next - now);
}

static void resume_accepting(bw_http_t *h, uint64_t now)
{
    if (h->accept_paused_until == 0 || now < h->accept_paused_until)
        return;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &h->listen_fd};
    epoll_ctl(h->epoll_fd, EPOLL_CTL_MOD, h->listen_fd, &ev);
    h->accept_paused_until = 0;
}

static void *serve(void *arg)
{
    bw_http_t *h = arg;
    struct epoll_event evs[EVENTS_PER_ROUND];
    bool stop = false;
    pthread_setname_np(pthread_self(), "bw-http");
    while (!stop) {
        int n = epoll_wait(h->epoll_fd, evs, EVENTS_PER_ROUND, next_timeout(h, bw_mono_ms()));
        for (int i = 0; i < n; i++) {
            void *tag = evs[i].data.ptr;
            if (tag == &h->stop_fd)
                stop = true;
            else if (tag == &h->listen_fd)
                accept_some(h);
            else if (tag == h->hub)
                bw_httpapp_on_wake(h);
            else
                on_event(h, tag, evs[i].events);
        }
        uint64_t now = bw_mono_ms();
        expire(h, now);
        resume_accepting(h, now);
        free_dead(h);
    }
    for (int l = 0; l < L__COUNT; l++)
        while (h->lists[l].head != NULL)
            bw_http_conn_close(h, h->lists[l].head);
    free_dead(h);
    return NULL;
}

/* ---- start and stop ------------------------------------------------------------------------ */

/* Resolves "host:port" (host may be [v6]) into storage; 0 or -1. */
static int resolve(const char *bind, struct sockaddr_storage *ss, socklen_t *sl, char *err, size_t errlen)
{
    const char *colon = strrchr(bind, ':');
    char host[256];
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    size_t hl = colon ? (size_t)(colon - bind) : 0;
    if (colon == NULL) {
        snprintf(err, errlen, "HEALTH_BIND: '%s' is not host:port", bind);
        return -1;
    }
    if (bind[0] == '[' && hl >= 2 && bind[hl - 1] == ']') {
        bind++;
        hl -= 2;
    }
    snprintf(host, sizeof host, "%.*s", (int)hl, bind);
    int rc = getaddrinfo(host, colon + 1, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "HEALTH_BIND: cannot resolve '%s': %s", host, gai_strerror(rc));
        return -1;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *sl = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static int listen_on(bw_http_t *h, const struct sockaddr_storage *ss, socklen_t sl)
{
    int one = 1;
    h->listen_fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (h->listen_fd < 0)
        return -1;
    setsockopt(h->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(h->listen_fd, (const struct sockaddr *)ss, sl) != 0 || listen(h->listen_fd, 511) != 0)
        return -1;
    struct sockaddr_storage got;
    socklen_t gl = sizeof got;
    if (getsockname(h->listen_fd, (struct sockaddr *)&got, &gl) != 0)
        return -1;
    h->port = ntohs(got.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&got)->sin6_port
                                              : ((struct sockaddr_in *)&got)->sin_port);
    return 0;
}

static int start_thread(bw_http_t *h)
{
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = &h->listen_fd};
    struct epoll_event sev = {.events = EPOLLIN, .data.ptr = &h->stop_fd};
    struct epoll_event wev = {.events = EPOLLIN, .data.ptr = h->hub};
    h->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    h->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (h->epoll_fd < 0 || h->stop_fd < 0 || h->hub->wake_fd < 0 ||
        epoll_ctl(h->epoll_fd, EPOLL_CTL_ADD, h->listen_fd, &lev) != 0 ||
        epoll_ctl(h->epoll_fd, EPOLL_CTL_ADD, h->stop_fd, &sev) != 0 ||
        epoll_ctl(h->epoll_fd, EPOLL_CTL_ADD, h->hub->wake_fd, &wev) != 0)
        return -1;
    if (pthread_create(&h->thread, NULL, serve, h) != 0)
        return -1;
    h->started = true;
    return 0;
}

bw_http_t *bw_http_create(const bw_http_opts_t *o, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sl = 0;
    if (resolve(o->bind, &ss, &sl, err, errlen) < 0)
        return NULL;
    bw_http_t *h = bw_calloc(1, sizeof *h);
    h->listen_fd = h->epoll_fd = h->stop_fd = -1;
    h->worker_id = bw_strdup(o->worker_id);
    h->max_conns = o->max_connections > 0 ? o->max_connections : 128;
    h->per_address = h->max_conns < BW_HTTP_MAX_PER_ADDRESS ? h->max_conns : BW_HTTP_MAX_PER_ADDRESS;
    h->header_timeout_ms = o->header_timeout_ms > 0 ? o->header_timeout_ms : 2000;
    h->hub = bw_httpapp_hub_create();
    if (o->app != NULL && o->app_prefix != NULL) {
        h->app = o->app;
        h->app_ud = o->app_ud;
        h->app_prefix = bw_strdup(o->app_prefix);
        h->app_prefix_len = strlen(o->app_prefix);
        h->app_headers = o->app_headers != NULL ? bw_strdup(o->app_headers) : NULL;
        h->app_max_body = o->app_max_body;
        h->app_timeout_ms = o->app_timeout_ms > 0 ? o->app_timeout_ms : APP_TIMEOUT_MS;
    }
    for (h->nbuckets = 64; h->nbuckets < (uint32_t)h->max_conns; h->nbuckets *= 2)
        ;
    h->buckets = bw_calloc(h->nbuckets, sizeof *h->buckets);
    h->seed = (uint32_t)bw_mono_ns() ^ (uint32_t)getpid() * 2654435761u;
    if (listen_on(h, &ss, sl) != 0) {
        snprintf(err, errlen, "HEALTH_BIND: cannot listen on %s: %s", o->bind, strerror(errno));
        bw_http_destroy(h);
        return NULL;
    }
    if (start_thread(h) != 0) {
        snprintf(err, errlen, "health server: cannot start: %s", strerror(errno));
        bw_http_destroy(h);
        return NULL;
    }
    return h;
}

int bw_http_port(const bw_http_t *h)
{
    return h->port;
}

void bw_http_destroy(bw_http_t *h)
{
    if (h == NULL)
        return;
    if (h->started) {
        uint64_t one = 1;
        while (write(h->stop_fd, &one, sizeof one) < 0 && errno == EINTR)
            ;
        pthread_join(h->thread, NULL);
    }
    if (h->listen_fd >= 0)
        close(h->listen_fd);
    if (h->epoll_fd >= 0)
        close(h->epoll_fd);
    if (h->stop_fd >= 0)
        close(h->stop_fd);
    bw_metrics_set(BW_G_HEALTH_CONNECTIONS, 0);
    if (h->hub != NULL)
        bw_httpapp_hub_unref(h->hub); /* answers still to come only free their handles */
    free(h->app_prefix);
    free(h->app_headers);
    free(h->buckets);
    free(h->worker_id);
    free(h);
}
