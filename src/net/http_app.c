/*
 * The health server's application routes (net/http.h): request bodies, the hand-off to the
 * application and back, and the wait in between. See net/http.c's top comment for the lists.
 *
 * Each application request gets a reply handle. The handles and the queue of answered ones live in a
 * "hub" with its own mutex and reference count (the server holds one reference, every live handle
 * another), so a handle outlives its connection and the server. Answering queues the handle and wakes
 * the server thread (an eventfd), which writes the answer. Closing a connection (the client went away,
 * eviction, bw_http_destroy) detaches its handle under the mutex: answering a detached handle only
 * frees it.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "net/http_int.h"
#include "util/xalloc.h"

/* ---- answer handles ------------------------------------------------------------------------ */

hub_t *bw_httpapp_hub_create(void)
{
    hub_t *hub = bw_calloc(1, sizeof *hub);
    pthread_mutex_init(&hub->mu, NULL);
    hub->refs = 1;
    hub->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return hub;
}

void bw_httpapp_hub_unref(hub_t *hub)
{
    pthread_mutex_lock(&hub->mu);
    bool last = --hub->refs == 0;
    pthread_mutex_unlock(&hub->mu);
    if (!last)
        return;
    if (hub->wake_fd >= 0)
        close(hub->wake_fd);
    pthread_mutex_destroy(&hub->mu);
    free(hub);
}

static void reply_free(bw_http_reply_t *r)
{
    hub_t *hub = r->hub;
    free(r->content_type);
    free(r->extra);
    free(r->body);
    free(r);
    bw_httpapp_hub_unref(hub);
}

/* hub->mu held on entry. */
static void done_unlink(hub_t *hub, bw_http_reply_t *r)
{
    if (r->prev != NULL)
        r->prev->next = r->next;
    else
        hub->done = r->next;
    if (r->next != NULL)
        r->next->prev = r->prev;
    else
        hub->done_tail = r->prev;
    r->prev = r->next = NULL;
}

/* A handle for the request c is about to hand to the application. */
static bw_http_reply_t *reply_attach(bw_http_t *h, conn_t *c)
{
    bw_http_reply_t *r = bw_calloc(1, sizeof *r);
    r->hub = h->hub;
    r->conn = c;
    pthread_mutex_lock(&h->hub->mu);
    h->hub->refs++;
    pthread_mutex_unlock(&h->hub->mu);
    c->reply = r;
    return r;
}

/* Takes c's handle back if it was answered (the caller writes the answer and frees it); NULL while
   the answer is still to come. */
static bw_http_reply_t *reply_take(bw_http_t *h, conn_t *c)
{
    bw_http_reply_t *r = c->reply;
    if (r == NULL)
        return NULL;
    pthread_mutex_lock(&h->hub->mu);
    bool answered = r->answered;
    if (answered) {
        done_unlink(h->hub, r);
        c->reply = NULL;
    }
    pthread_mutex_unlock(&h->hub->mu);
    return answered ? r : NULL;
}

/* c is closing: its handle, answered or not, no longer reaches it. An answered one is freed here; an
   unanswered one is freed by whoever answers it. */
void bw_httpapp_detach(bw_http_t *h, conn_t *c)
{
    bw_http_reply_t *r = c->reply;
    if (r == NULL)
        return;
    c->reply = NULL;
    pthread_mutex_lock(&h->hub->mu);
    bool answered = r->answered;
    if (answered)
        done_unlink(h->hub, r);
    else
        r->conn = NULL;
    pthread_mutex_unlock(&h->hub->mu);
    if (answered)
        reply_free(r);
}

static char *dup_or_null(const char *s)
{
    return s != NULL ? bw_strdup(s) : NULL;
}

void bw_http_reply(bw_http_reply_t *r, unsigned status, const char *content_type, const char *extra_headers,
                   const char *body, size_t len)
{
    hub_t *hub = r->hub;
    r->status = status >= 100 && status <= 599 ? status : 500;
    r->content_type = dup_or_null(content_type);
    r->extra = dup_or_null(extra_headers);
    r->body = bw_malloc(len + 1);
    if (len > 0)
        memcpy(r->body, body, len);
    r->len = len;
    pthread_mutex_lock(&hub->mu);
    bool detached = r->conn == NULL;
    if (!detached) {
        r->answered = true;
        r->prev = hub->done_tail;
        if (hub->done_tail != NULL)
            hub->done_tail->next = r;
        else
            hub->done = r;
        hub->done_tail = r;
        uint64_t one = 1;
        while (write(hub->wake_fd, &one, sizeof one) < 0 && errno == EINTR)
            ;
    }
    pthread_mutex_unlock(&hub->mu);
    if (detached)
        reply_free(r);
}

/* Queues the application's answer r on c (its content type, opts.app_headers and its own header
   lines) and frees r. */
static void answer_app(bw_http_t *h, conn_t *c, bw_http_reply_t *r)
{
    bw_buf_t *o = &c->out;
    bw_http_put_head(c, r->status, r->content_type, r->len, c->keep_alive_10);
    if (h->app_headers != NULL)
        bw_buf_puts(o, h->app_headers);
    if (r->extra != NULL)
        bw_buf_puts(o, r->extra);
    bw_buf_puts(o, "\r\n");
    if (!c->head_method)
        bw_buf_append(o, r->body, r->len);
    reply_free(r);
    bw_http_list_enter(h, c, L_WRITING);
}

/* The server's own answer on an application route (a refused request, no answer in time): JSON
   {"error":code,"message":text}, with opts.app_headers (or Cache-Control: no-store without them). */
static void answer_app_error(bw_http_t *h, conn_t *c, unsigned status, const char *code, const char *text,
                             bool close)
{
    bw_buf_t *o = &c->out;
    char body[256];
    int n = snprintf(body, sizeof body, "{\"error\":\"%s\",\"message\":\"%s\"}\n", code, text);
    c->close_after |= close;
    bw_http_put_head(c, status, "application/json", (size_t)n, c->keep_alive_10);
    bw_buf_puts(o, h->app_headers != NULL ? h->app_headers : "Cache-Control: no-store\r\n");
    bw_buf_puts(o, "\r\n");
    if (!c->head_method)
        bw_buf_append(o, body, (size_t)n);
    bw_http_list_enter(h, c, L_WRITING);
}

/* ---- application requests ------------------------------------------------------------------ */

/* Whether the path (the target up to '?') is the application's prefix or below it. */
bool bw_httpapp_is_app_path(const bw_http_t *h, const char *path, size_t plen)
{
    size_t n = h->app_prefix_len;
    return h->app != NULL && plen >= n && memcmp(path, h->app_prefix, n) == 0 &&
           (plen == n || path[n] == '/');
}

/* A target the application can be handed: no control bytes (a bare CR, a NUL, a tab). */
static bool target_ok(const char *t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)t[i] < 0x20 || t[i] == 0x7f)
            return false;
    return true;
}

/* The interim answer a client sending Expect: 100-continue waits for before its body. It is tiny and
   goes out before anything else on the connection, so it is written at once; a socket that does not
   take it whole is closed. */
static void send_continue(bw_http_t *h, conn_t *c)
{
    static const char msg[] = "HTTP/1.1 100 Continue\r\n\r\n";
    ssize_t w;
    while ((w = send(c->fd, msg, sizeof msg - 1, MSG_NOSIGNAL)) < 0 && errno == EINTR)
        ;
    if (w != (ssize_t)(sizeof msg - 1))
        bw_http_conn_close(h, c);
}

/* An application request's head is in: refuses what the application must not be handed, else waits
   for the body, with a deadline of its own. */
void bw_httpapp_head(bw_http_t *h, conn_t *c, const request_t *rq, bool keep)
{
    char text[96];
    c->head_method = rq->method_len == 4 && memcmp(rq->method, "HEAD", 4) == 0;
    c->keep_alive_10 = keep && rq->minor == 0;
    c->close_after = !keep || c->eof;
    size_t len = rq->content_length == SIZE_MAX ? 0 : rq->content_length;
    if (rq->chunked) {
        answer_app_error(h, c, 411, "length_required", "send the body with a Content-Length", true);
    } else if (rq->cl_bad || rq->auth_count > 1 || rq->method_len > MAX_METHOD ||
               !target_ok(rq->target, rq->target_len)) {
        answer_app_error(h, c, 400, "invalid_request", "malformed request", true);
    } else if (len > h->app_max_body) {
        snprintf(text, sizeof text, "request body over %zu bytes", h->app_max_body);
        answer_app_error(h, c, 413, "too_large", text, true);
    } else {
        c->in_body = true;
        c->body_len = len;
        if (len > 0 && c->in_len < c->head_len + len) {
            bw_http_list_enter(h, c, L_READING); /* the body's own deadline, from now */
            if (rq->expect_continue && rq->minor == 1)
                send_continue(h, c);
        }
    }
}

/* The request in c->in is whole: hands it to the application, and queues its answer when it gave
   one at once; otherwise c waits for it. */
void bw_httpapp_call(bw_http_t *h, conn_t *c)
{
    request_t rq;
    char method[MAX_METHOD + 1];
    bw_http_parse_head(c->in, c->head_len, &rq); /* it parsed before */
    memcpy(method, rq.method, rq.method_len);
    method[rq.method_len] = '\0';
    const char *q = memchr(rq.target, '?', rq.target_len);
    bw_http_request_t req = {.method = method,
                             .path = rq.target,
                             .path_len = q != NULL ? (size_t)(q - rq.target) : rq.target_len,
                             .query = q != NULL ? q + 1 : NULL,
                             .query_len = q != NULL ? rq.target_len - (size_t)(q + 1 - rq.target) : 0,
                             .authorization = rq.auth,
                             .authorization_len = rq.auth_len,
                             .content_type = rq.ctype,
                             .content_type_len = rq.ctype_len,
                             .body = c->in + c->head_len,
                             .body_len = c->body_len};
    c->in_body = false;
    h->app(h->app_ud, &req, reply_attach(h, c));
    bw_http_reply_t *r = reply_take(h, c);
    if (r != NULL) {
        answer_app(h, c, r);
        return;
    }
    bw_http_list_enter(h, c, L_WAITING);
    if (c->eof) /* the client already went away: nobody will read the answer */
        bw_http_conn_close(h, c);
    else if (c->in_len >= bw_http_read_limit(c))
        bw_http_set_interest(h, c, 0);
}

/* A connection waiting for the application's answer: keeps what the client pipelines behind the
   request (up to one head), and closes when the client goes away (EOF, like nginx's client abort, or
   an error), which detaches the handle. */
void bw_httpapp_on_waiting(bw_http_t *h, conn_t *c, uint32_t events)
{
    if (events & (EPOLLERR | EPOLLHUP)) {
        bw_http_conn_close(h, c);
        return;
    }
    bw_http_on_readable(h, c);
    if (c->fd < 0)
        return;
    if (c->eof)
        bw_http_conn_close(h, c);
    else if (c->in_len >= bw_http_read_limit(c))
        bw_http_set_interest(h, c, 0);
}

/* The answers other threads gave, one at a time: each goes to its connection, which then moves on. */
void bw_httpapp_on_wake(bw_http_t *h)
{
    uint64_t n;
    while (read(h->hub->wake_fd, &n, sizeof n) < 0 && errno == EINTR)
        ;
    for (;;) {
        pthread_mutex_lock(&h->hub->mu);
        bw_http_reply_t *r = h->hub->done;
        conn_t *c = r != NULL ? r->conn : NULL;
        if (r != NULL) {
            done_unlink(h->hub, r);
            c->reply = NULL;
        }
        pthread_mutex_unlock(&h->hub->mu);
        if (r == NULL)
            return;
        answer_app(h, c, r);
        bw_http_drive(h, c);
    }
}

/* No answer within app_timeout_ms: the server answers 503 itself (one that just came is used). */
void bw_httpapp_expired(bw_http_t *h, conn_t *c)
{
    char text[96];
    bw_http_reply_t *r = reply_take(h, c);
    if (r != NULL) {
        answer_app(h, c, r);
    } else {
        bw_httpapp_detach(h, c);
        snprintf(text, sizeof text, "no answer within %d ms", h->app_timeout_ms);
        answer_app_error(h, c, 503, "timeout", text, false);
    }
    bw_http_drive(h, c);
}
