/*
 * The health, readiness, state and metrics HTTP server on HEALTH_BIND: a small HTTP/1.1 server of its
 * own on a dedicated thread ("bw-http", epoll). It reads only atomics (obs/metrics.h), so it answers
 * while the loop is saturated with job work, and it bounds what clients can hold: every request's line
 * and headers must arrive within header_timeout_ms, and when max_connections (or an address's cap) is
 * reached the oldest connection still sending its headers is closed to admit the new one, so a probe
 * always gets in.
 */
#ifndef BW_NET_HTTP_H
#define BW_NET_HTTP_H

#include <stddef.h>

#define BW_HTTP_MAX_HEAD_BYTES (32 * 1024) /* request line + headers; beyond: 431 */
#define BW_HTTP_MAX_PER_ADDRESS 16         /* connections from one client address */

typedef struct bw_http bw_http_t;

typedef struct bw_http_opts {
    const char *bind;      /* "host:port" (port 0 = any free port); host may be [v6] */
    const char *worker_id; /* copied */
    int max_connections;   /* HEALTH_MAX_CONNECTIONS */
    int header_timeout_ms; /* HEALTH_HEADER_TIMEOUT_MS */
} bw_http_opts_t;

/* Binds and starts serving. NULL with a message in err when the address cannot be used. Caller frees
   with bw_http_destroy. */
bw_http_t *bw_http_create(const bw_http_opts_t *opts, char *err, size_t errlen);
/* The port actually bound. */
int bw_http_port(const bw_http_t *h);
/* Stops the server thread (no request is being answered once it returns) and frees; NULL is a no-op. */
void bw_http_destroy(bw_http_t *h);

#endif
