/*
 * Private to net/http.c and net/http_app.c: the server's state, and the functions the fixed-route
 * core (http.c: lists, connections, parsing, the epoll loop) and the application routes (http_app.c:
 * bodies, answer handles, waiting) call in each other. Server thread unless a field says otherwise.
 */
#ifndef BW_NET_HTTP_INT_H
#define BW_NET_HTTP_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "net/http.h"
#include "util/buf.h"

#define MAX_METHOD 15 /* longer methods are not handed to the application */

enum { L_NONE = -1, L_READING = 0, L_WRITING, L_LINGERING, L_WAITING, L__COUNT };

typedef struct hub hub_t;

typedef struct addr_key {
    uint8_t bytes[16];
    int family;
} addr_key_t;

typedef struct conn {
    int fd;
    int list;
    uint64_t since_ms;        /* when the current wait began */
    uint64_t order;           /* ... as a sequence number: ties in since_ms are common */
    struct conn *prev, *next; /* in lists[list] */
    struct conn *bucket_next; /* same address bucket */
    addr_key_t addr;
    uint32_t hash;
    char *in; /* request bytes received */
    size_t in_len, in_cap, scanned;
    size_t head_len;        /* the request being answered: its line and headers, consumed after */
    size_t body_len;        /* ... its body (application requests), consumed after the head */
    bool in_body;           /* reading: the head is in, the body (body_len bytes) is coming */
    bool head_method;       /* the application request is a HEAD: its answer has no body */
    bool keep_alive_10;     /* ... came as HTTP/1.0 with Connection: keep-alive */
    bw_http_reply_t *reply; /* waiting: the application's answer handle (hub mutex) */
    bw_buf_t out;
    size_t out_off;
    unsigned requests; /* answered on this connection */
    uint32_t events;   /* the epoll interest set now */
    size_t discarded;  /* lingering: bytes read and dropped */
    bool close_after, eof;
} conn_t;

typedef struct list {
    conn_t *head, *tail;
} list_t;

/* The hand-off of answers from other threads (see the top comment). */
struct hub {
    pthread_mutex_t mu;
    int refs;                          /* the server's and every live handle's */
    int wake_fd;                       /* eventfd: written when a handle is answered */
    bw_http_reply_t *done, *done_tail; /* answered, not yet written by the server thread */
};

struct bw_http_reply {
    hub_t *hub;
    conn_t *conn;                 /* hub->mu: the connection waiting for this answer, NULL once detached */
    bool answered;                /* hub->mu: in hub->done (until the server takes it) */
    bw_http_reply_t *prev, *next; /* in hub->done */
    unsigned status;              /* the answer, written before it is queued and read after it is taken */
    char *content_type, *extra;
    char *body;
    size_t len;
};

struct bw_http {
    int listen_fd, epoll_fd, stop_fd;
    int port;
    int max_conns, per_address, header_timeout_ms;
    int app_timeout_ms;
    char *app_prefix, *app_headers;
    size_t app_prefix_len, app_max_body;
    bw_http_app_fn app;
    void *app_ud;
    hub_t *hub;
    char *worker_id;
    pthread_t thread;
    bool started;
    list_t lists[L__COUNT];
    int nconns;
    conn_t **buckets;
    uint32_t nbuckets, seed;
    conn_t *dead; /* closed this round, freed at its end (linked through next) */
    uint64_t next_order;
    uint64_t accept_paused_until;
};

typedef struct request {
    const char *method, *target;
    size_t method_len, target_len;
    int minor;                  /* HTTP/1.<minor> */
    bool conn_close, conn_keep; /* Connection: close / keep-alive */
    bool has_body;
    /* what application requests need */
    size_t content_length;
    bool cl_bad;          /* Content-Length not a number, or given twice */
    bool chunked;         /* any Transfer-Encoding */
    bool expect_continue; /* Expect: 100-continue */
    const char *auth, *ctype;
    size_t auth_len, ctype_len;
    int auth_count;
} request_t;

/* ---- http.c ---- */

/* Moves c to the tail of list which (its wait begins now). */
void bw_http_list_enter(bw_http_t *h, conn_t *c, int which);
/* Closes c (freed at the end of the epoll round); detaches its answer handle. */
void bw_http_conn_close(bw_http_t *h, conn_t *c);
void bw_http_set_interest(bw_http_t *h, conn_t *c, uint32_t events);
/* Starts c's answer in c->out: the status line and the headers every answer has (no blank line yet). */
void bw_http_put_head(conn_t *c, unsigned status, const char *content_type, size_t len, bool keep_alive_10);
/* Parses the head p[0..len) (ending in its blank line); false when malformed. */
bool bw_http_parse_head(const char *p, size_t len, request_t *rq);
/* Reads what is there (up to bw_http_read_limit). */
void bw_http_on_readable(bw_http_t *h, conn_t *c);
/* How far c->in may fill now. */
size_t bw_http_read_limit(const conn_t *c);
/* Moves c along as far as it can go now (answer, send, next request). */
void bw_http_drive(bw_http_t *h, conn_t *c);

/* ---- http_app.c ---- */

/* The hand-off of answers: one reference (the server's), with its eventfd. */
hub_t *bw_httpapp_hub_create(void);
void bw_httpapp_hub_unref(hub_t *hub);
/* c is closing: its handle no longer reaches it (freed here when answered, else by its answer). */
void bw_httpapp_detach(bw_http_t *h, conn_t *c);
/* Whether the path (the target up to '?') is the application's prefix or below it. */
bool bw_httpapp_is_app_path(const bw_http_t *h, const char *path, size_t plen);
/* An application request's head is in: refuses it, or waits for its body (c->in_body). */
void bw_httpapp_head(bw_http_t *h, conn_t *c, const request_t *rq, bool keep);
/* The request (head and body) is whole in c->in: hands it to the application. */
void bw_httpapp_call(bw_http_t *h, conn_t *c);
/* Events on a connection waiting for its answer. */
void bw_httpapp_on_waiting(bw_http_t *h, conn_t *c, uint32_t events);
/* The hub's eventfd fired: writes the answers other threads gave. */
void bw_httpapp_on_wake(bw_http_t *h);
/* c waited app_timeout_ms: answers 503 (or the answer that just came). */
void bw_httpapp_expired(bw_http_t *h, conn_t *c);

#endif
