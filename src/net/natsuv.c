/*
 * nats.c calls attach/read/write/detach with its connection lock held, from the loop thread (socket
 * events, publishes) or from its own threads (reconnect, ping timer). Each call only records the wanted
 * state (socket, READ/WRITE interest, attached or not) under a mutex; the loop thread applies it to its
 * uv_poll handle, at once when the caller is the loop thread, else from a uv_async callback. Applying
 * is idempotent, so the order in which the loop sees the wake-ups does not matter.
 *
 * Writes: when nats.c asks for WRITE interest (it has buffered publishes), the loop does not wait for
 * the socket to poll writable (that costs four epoll_ctl calls and a wake-up per batch): it calls
 * natsConnection_ProcessWriteEvent itself before it next blocks, from an idle callback (publishes made
 * in timer callbacks) or a check callback (publishes made in I/O callbacks), so everything published
 * in one loop iteration leaves in one send(2). Only when the socket takes less than everything does
 * WRITE interest go to the poll handle.
 *
 * Invariant: poll handles only ever change on the loop thread; a new socket (after a reconnect) gets a
 * new poll handle, and the old one is closed first, since the descriptor number may be reused.
 */
#include "net/natsuv.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#include "obs/log.h"
#include "util/xalloc.h"

struct bw_natsuv {
    uv_loop_t *loop;
    uv_thread_t loop_thread;
    uv_async_t wake;
    uv_idle_t write_idle;   /* active while a direct write is due: keeps the poll phase from blocking */
    uv_check_t write_check; /* writes what the I/O callbacks of this iteration published */
    /* loop thread only: what is applied */
    bool write_due;     /* nats.c wants to write and no direct attempt was made yet */
    bool write_blocked; /* a direct attempt left data behind: wait for the socket to poll writable */
    uv_poll_t *poll;
    natsConnection *nc;
    natsSock fd;
    int events;
    bool destroyed;
    /* guarded by mu: what nats.c asked for */
    pthread_mutex_t mu;
    natsConnection *want_nc;
    natsSock want_fd;
    int want_events;
    bool want_attached;
};

static void on_write_idle(uv_idle_t *h);

static void on_poll(uv_poll_t *h, int status, int events)
{
    bw_natsuv_t *a = h->data;
    /* An error is reported to nats.c as a read event: its read fails and it starts reconnecting. */
    if (status < 0 || (events & UV_READABLE))
        natsConnection_ProcessReadEvent(a->nc);
    if (status == 0 && (events & UV_WRITABLE))
        natsConnection_ProcessWriteEvent(a->nc);
}

static void free_poll(uv_handle_t *h)
{
    free(h);
}

static void close_poll(bw_natsuv_t *a)
{
    if (a->poll == NULL)
        return;
    uv_close((uv_handle_t *)a->poll, free_poll);
    a->poll = NULL;
    a->events = 0;
}

/* Loop thread: makes the poll handle match the wanted state. */
static void apply(bw_natsuv_t *a)
{
    pthread_mutex_lock(&a->mu);
    bool attached = a->want_attached && !a->destroyed;
    natsSock fd = a->want_fd;
    int events = a->want_events;
    a->nc = a->want_nc;
    pthread_mutex_unlock(&a->mu);
    if (!(events & UV_WRITABLE)) {
        a->write_due = a->write_blocked = false;
    } else if (!a->write_blocked) {
        /* a new write request: tried directly first (see the top of the file) */
        events &= ~UV_WRITABLE;
        if (attached && !a->write_due) {
            a->write_due = true;
            uv_idle_start(&a->write_idle, on_write_idle);
        }
    }
    if (a->poll != NULL && (!attached || fd != a->fd))
        close_poll(a);
    if (attached && a->poll == NULL) {
        a->poll = bw_calloc(1, sizeof *a->poll);
        int rc = uv_poll_init_socket(a->loop, a->poll, fd);
        if (rc != 0) {
            bw_log(BW_LOG_ERROR, "cannot poll the NATS socket", BW_LS("error", uv_strerror(rc)));
            free(a->poll);
            a->poll = NULL;
            return;
        }
        a->poll->data = a;
        a->fd = fd;
    }
    if (a->poll == NULL || events == a->events)
        return;
    a->events = events;
    if (events != 0)
        uv_poll_start(a->poll, events, on_poll);
    else
        uv_poll_stop(a->poll);
}

/* Loop thread: the direct write (see the top of the file). */
static void write_now(bw_natsuv_t *a)
{
    uv_idle_stop(&a->write_idle);
    if (!a->write_due)
        return;
    a->write_due = false;
    natsConnection_ProcessWriteEvent(a->nc); /* asks to drop WRITE interest once all is sent */
    pthread_mutex_lock(&a->mu);
    bool left = (a->want_events & UV_WRITABLE) != 0;
    pthread_mutex_unlock(&a->mu);
    if (left) {
        a->write_blocked = true;
        apply(a);
    }
}

static void on_write_idle(uv_idle_t *h)
{
    write_now(h->data);
}

static void on_write_check(uv_check_t *h)
{
    write_now(h->data);
}

static void on_wake(uv_async_t *h)
{
    apply(h->data);
}

/* Called with the wanted state updated: applies it now on the loop thread, else wakes the loop. */
static natsStatus changed(bw_natsuv_t *a)
{
    if (uv_thread_equal(&a->loop_thread, &(uv_thread_t){uv_thread_self()})) {
        apply(a);
        return NATS_OK;
    }
    return uv_async_send(&a->wake) == 0 ? NATS_OK : NATS_ERR;
}

static natsStatus cb_attach(void **user, void *loop, natsConnection *nc, natsSock fd)
{
    bw_natsuv_t *a = loop; /* the "loop" given to natsOptions_SetEventLoop is the adapter */
    *user = a;
    pthread_mutex_lock(&a->mu);
    a->want_nc = nc;
    a->want_fd = fd;
    a->want_events = UV_READABLE;
    a->want_attached = true;
    pthread_mutex_unlock(&a->mu);
    return changed(a);
}

static natsStatus set_interest(bw_natsuv_t *a, int bit, bool add)
{
    pthread_mutex_lock(&a->mu);
    if (add)
        a->want_events |= bit;
    else
        a->want_events &= ~bit;
    pthread_mutex_unlock(&a->mu);
    return changed(a);
}

static natsStatus cb_read(void *user, bool add)
{
    return set_interest(user, UV_READABLE, add);
}

static natsStatus cb_write(void *user, bool add)
{
    return set_interest(user, UV_WRITABLE, add);
}

static natsStatus cb_detach(void *user)
{
    bw_natsuv_t *a = user;
    pthread_mutex_lock(&a->mu);
    a->want_attached = false;
    a->want_events = 0;
    pthread_mutex_unlock(&a->mu);
    return changed(a);
}

bw_natsuv_t *bw_natsuv_create(uv_loop_t *loop)
{
    bw_natsuv_t *a = bw_calloc(1, sizeof *a);
    a->loop = loop;
    a->loop_thread = uv_thread_self();
    pthread_mutex_init(&a->mu, NULL);
    uv_async_init(loop, &a->wake, on_wake);
    a->wake.data = a;
    uv_idle_init(loop, &a->write_idle);
    a->write_idle.data = a;
    uv_check_init(loop, &a->write_check);
    a->write_check.data = a;
    uv_check_start(&a->write_check, on_write_check);
    uv_unref((uv_handle_t *)&a->write_check);
    return a;
}

natsStatus bw_natsuv_set_options(bw_natsuv_t *a, natsOptions *opts)
{
    return natsOptions_SetEventLoop(opts, a, cb_attach, cb_read, cb_write, cb_detach);
}

static void free_adapter(uv_handle_t *h)
{
    bw_natsuv_t *a = h->data;
    pthread_mutex_destroy(&a->mu);
    free(a);
}

void bw_natsuv_destroy(bw_natsuv_t *a)
{
    if (a == NULL)
        return;
    a->destroyed = true;
    close_poll(a);
    uv_close((uv_handle_t *)&a->write_idle, NULL);
    uv_close((uv_handle_t *)&a->write_check, NULL);
    uv_close((uv_handle_t *)&a->wake, free_adapter);
}
