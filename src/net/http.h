/*
 * The health, readiness, state and metrics HTTP server on HEALTH_BIND (libmicrohttpd, its own thread).
 * It reads only atomics (obs/metrics.h), so it answers while the loop is saturated with job work.
 */
#ifndef BW_NET_HTTP_H
#define BW_NET_HTTP_H

#include <stddef.h>

typedef struct bw_http bw_http_t;

/* Binds "host:port" (port 0 = any free port) and starts serving. worker_id is copied. NULL with a
   message in err when the address cannot be used. Caller frees with bw_http_destroy. */
bw_http_t *bw_http_create(const char *bind, const char *worker_id, char *err, size_t errlen);
/* The port actually bound. */
int bw_http_port(const bw_http_t *h);
/* Stops the server thread and frees; NULL is a no-op. */
void bw_http_destroy(bw_http_t *h);

#endif
