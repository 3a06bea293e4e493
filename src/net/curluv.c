/*
 * curl multi on libuv (see curluv.h): curl says which sockets to watch (CURLMOPT_SOCKETFUNCTION, one
 * uv_poll each) and when to wake it (CURLMOPT_TIMERFUNCTION, one uv_timer); the loop reports readiness
 * with curl_multi_socket_action, and finished transfers are collected after each call.
 *
 * Invariants: a watched socket has exactly one poll handle (sock_t), attached to it with
 * curl_multi_assign and closed when curl says CURL_POLL_REMOVE or when the multi handle goes; a
 * transfer's callback and user pointer ride on the easy handle (CURLOPT_PRIVATE).
 */
#include "net/curluv.h"

#include <stdlib.h>

#include "util/list.h"
#include "util/xalloc.h"

typedef struct transfer {
    bw_curl_done_cb cb;
    void *ud;
} transfer_t;

typedef struct sock {
    uv_poll_t poll;
    curl_socket_t fd;
    bw_curl_t *c;
    bw_list_t link; /* c->socks */
} sock_t;

struct bw_curl {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;
    bw_list_t socks;
    int running;
    int open_handles; /* the timer and the polls still closing */
    bool destroyed;
};

static void maybe_free(bw_curl_t *c)
{
    if (c->destroyed && c->open_handles == 0)
        free(c);
}

static void on_handle_closed(uv_handle_t *h)
{
    bw_curl_t *c = ((sock_t *)h->data)->c;
    free(h->data);
    c->open_handles--;
    maybe_free(c);
}

static void close_sock(sock_t *s)
{
    bw_list_remove(&s->link);
    uv_poll_stop(&s->poll);
    uv_close((uv_handle_t *)&s->poll, on_handle_closed);
}

/* Hands every finished transfer to its owner. */
static void collect(bw_curl_t *c)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(c->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        CURL *easy = m->easy_handle;
        CURLcode rc = m->data.result;
        transfer_t *t = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&t);
        curl_multi_remove_handle(c->multi, easy);
        curl_easy_setopt(easy, CURLOPT_PRIVATE, NULL);
        if (t != NULL) {
            transfer_t done = *t;
            free(t);
            done.cb(easy, rc, done.ud);
        }
    }
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    sock_t *s = p->data;
    bw_curl_t *c = s->c;
    int flags = 0;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    else {
        if (events & UV_READABLE)
            flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE)
            flags |= CURL_CSELECT_OUT;
    }
    curl_multi_socket_action(c->multi, s->fd, flags, &c->running);
    collect(c);
}

static void on_timer(uv_timer_t *t)
{
    bw_curl_t *c = t->data;
    curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &c->running);
    collect(c);
}

static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    bw_curl_t *c = userp;
    sock_t *s = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (s != NULL) {
            curl_multi_assign(c->multi, fd, NULL);
            close_sock(s);
        }
        return 0;
    }
    if (s == NULL) {
        s = bw_calloc(1, sizeof *s);
        s->fd = fd;
        s->c = c;
        if (uv_poll_init_socket(c->loop, &s->poll, fd) != 0) {
            free(s);
            return -1;
        }
        s->poll.data = s;
        c->open_handles++;
        bw_list_push(&c->socks, &s->link);
        curl_multi_assign(c->multi, fd, s);
    }
    int events = (what & CURL_POLL_IN ? UV_READABLE : 0) | (what & CURL_POLL_OUT ? UV_WRITABLE : 0);
    uv_poll_start(&s->poll, events, on_poll);
    return 0;
}

/* curl must not be called back from here: a zero timeout becomes the next loop iteration. */
static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    bw_curl_t *c = userp;
    if (timeout_ms < 0)
        uv_timer_stop(&c->timer);
    else
        uv_timer_start(&c->timer, on_timer, (uint64_t)timeout_ms, 0);
    return 0;
}

bw_curl_t *bw_curl_create(uv_loop_t *loop)
{
    bw_curl_t *c = bw_calloc(1, sizeof *c);
    c->loop = loop;
    c->multi = curl_multi_init();
    if (c->multi == NULL) {
        free(c);
        return NULL;
    }
    bw_list_init(&c->socks);
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    c->open_handles = 1;
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    return c;
}

int bw_curl_add(bw_curl_t *c, CURL *easy, bw_curl_done_cb cb, void *ud)
{
    transfer_t *t = bw_calloc(1, sizeof *t);
    t->cb = cb;
    t->ud = ud;
    curl_easy_setopt(easy, CURLOPT_PRIVATE, t);
    if (curl_multi_add_handle(c->multi, easy) != CURLM_OK) {
        curl_easy_setopt(easy, CURLOPT_PRIVATE, NULL);
        free(t);
        return -1;
    }
    return 0;
}

void bw_curl_remove(bw_curl_t *c, CURL *easy)
{
    transfer_t *t = NULL;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&t);
    if (t == NULL)
        return; /* not in the multi handle */
    curl_multi_remove_handle(c->multi, easy);
    curl_easy_setopt(easy, CURLOPT_PRIVATE, NULL);
    free(t);
}

int bw_curl_running(const bw_curl_t *c)
{
    return c->running;
}

static void on_timer_closed(uv_handle_t *h)
{
    bw_curl_t *c = h->data;
    c->open_handles--;
    maybe_free(c);
}

void bw_curl_destroy(bw_curl_t *c)
{
    if (c == NULL)
        return;
    c->destroyed = true;
    curl_multi_cleanup(c->multi); /* the owners removed their transfers already */
    while (!bw_list_empty(&c->socks))
        close_sock(bw_list_entry(c->socks.next, sock_t, link));
    uv_close((uv_handle_t *)&c->timer, on_timer_closed);
}
