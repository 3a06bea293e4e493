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
 * new poll handle, and the old one is closed first.
 *
 * The loop polls a dup() of nats.c's socket, never nats.c's own descriptor: nats.c closes its socket
 * first and calls detach afterwards (from whichever thread closed it), so by the time the loop stops
 * polling, the NUMBER nats.c had may already belong to a file another thread opened (the health
 * server's accept, a pool thread's open), and libuv's epoll_ctl(DEL) would act on that file. The dup
 * is taken in attach, while nats.c's descriptor is certainly open, and is closed only in the poll
 * handle's close callback, so the number libuv holds stays ours as long as libuv may use it. The dup
 * keeps the socket's open file description alive after nats.c closed its own descriptor: nothing here
 * reads or writes through it (nats.c does all I/O on its descriptor), an event on a socket that was
 * detached or replaced is not passed on to nats.c but makes the loop apply the detach at once, and
 * every attach (a reconnect's new socket) gets a new dup and a new poll handle.
 */
#include "net/natsuv.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
    struct poll_fd *poll;
    natsConnection *nc;
    uint64_t gen; /* the attach the poll handle belongs to */
    int events;
    bool destroyed;
    /* guarded by mu: what nats.c asked for */
    pthread_mutex_t mu;
    natsConnection *want_nc;
    int want_dup;      /* the newest attach's dup, until the loop hands it to a poll handle; else -1 */
    uint64_t want_gen; /* incremented by every attach */
    int want_events;
    bool want_attached;
};

/* A poll handle and the dup it polls (closed by the handle's close callback). */
typedef struct poll_fd {
    uv_poll_t h;
    int fd;
} poll_fd_t;

static void on_write_idle(uv_idle_t *h);

static void apply(bw_natsuv_t *a);

/* Whether the polled socket is still the one nats.c has attached (loop thread). */
static bool current(bw_natsuv_t *a)
{
    pthread_mutex_lock(&a->mu);
    bool cur = a->want_attached && a->want_gen == a->gen;
    pthread_mutex_unlock(&a->mu);
    return cur;
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    bw_natsuv_t *a = h->data;
    /* nats.c closed or replaced this socket and its detach/attach is not applied yet: the dup keeps
       the socket alive, so its events would repeat; apply now (this closes the handle). */
    if (!current(a)) {
        apply(a);
        return;
    }
    /* An error is reported to nats.c as a read event: its read fails and it starts reconnecting. */
    if (status < 0 || (events & UV_READABLE))
        natsConnection_ProcessReadEvent(a->nc);
    if (status == 0 && (events & UV_WRITABLE))
        natsConnection_ProcessWriteEvent(a->nc);
}

static void free_poll(uv_handle_t *h)
{
    poll_fd_t *p = (poll_fd_t *)h;
    close(p->fd); /* libuv is done with the number only now */
    free(p);
}

static void close_poll(bw_natsuv_t *a)
{
    if (a->poll == NULL)
        return;
    uv_close((uv_handle_t *)&a->poll->h, free_poll);
    a->poll = NULL;
    a->events = 0;
}

/* Loop thread: makes the poll handle match the wanted state. */
static void apply(bw_natsuv_t *a)
{
    pthread_mutex_lock(&a->mu);
    bool attached = a->want_attached && !a->destroyed;
    uint64_t gen = a->want_gen;
    int dup_fd = -1;
    if (attached && (a->poll == NULL || gen != a->gen)) {
        dup_fd = a->want_dup; /* now the new poll handle's (-1: the dup could not be made) */
        a->want_dup = -1;
    }
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
    if (a->poll != NULL && (!attached || gen != a->gen))
        close_poll(a);
    if (attached && a->poll == NULL && dup_fd >= 0) {
        poll_fd_t *p = bw_calloc(1, sizeof *p);
        int rc = uv_poll_init_socket(a->loop, &p->h, dup_fd);
        if (rc != 0) {
            bw_log(BW_LOG_ERROR, "cannot poll the NATS socket", BW_LS("error", uv_strerror(rc)));
            close(dup_fd);
            free(p);
            return;
        }
        p->fd = dup_fd;
        p->h.data = a;
        a->poll = p;
        a->gen = gen;
    }
    if (a->poll == NULL || events == a->events)
        return;
    a->events = events;
    if (events != 0)
        uv_poll_start(&a->poll->h, events, on_poll);
    else
        uv_poll_stop(&a->poll->h);
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
    /* nats.c's descriptor is open here (it holds its connection lock): see the top of the file */
    int d = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (d < 0) {
        bw_log(BW_LOG_ERROR, "cannot duplicate the NATS socket", BW_LS("error", strerror(errno)));
        return NATS_SYS_ERROR;
    }
    pthread_mutex_lock(&a->mu);
    if (a->want_dup >= 0)
        close(a->want_dup); /* an earlier attach's, never polled */
    a->want_dup = d;
    a->want_gen++;
    a->want_nc = nc;
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
    if (a->want_dup >= 0)
        close(a->want_dup); /* attached and detached before the loop polled it */
    a->want_dup = -1;
    pthread_mutex_unlock(&a->mu);
    return changed(a);
}

bw_natsuv_t *bw_natsuv_create(uv_loop_t *loop)
{
    bw_natsuv_t *a = bw_calloc(1, sizeof *a);
    a->loop = loop;
    a->loop_thread = uv_thread_self();
    pthread_mutex_init(&a->mu, NULL);
    a->want_dup = -1;
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
    if (a->want_dup >= 0)
        close(a->want_dup);
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
