/*
 * Routes are a table of {path, render}; every render builds its body from atomics. Only GET and HEAD
 * are served (405 otherwise), unknown paths get 404, and libmicrohttpd itself answers malformed
 * requests and oversized headers (431) within the per-connection memory limit below. Connection count
 * and idle time are capped so that slow or abandoned clients cannot pin the thread's resources.
 */
#include "net/http.h"

#include <microhttpd.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "build_info.h"
#include "obs/metrics.h"
#include "util/buf.h"
#include "util/xalloc.h"

#define HTTP_MAX_CONNECTIONS 128
#define HTTP_MAX_PER_IP 16      /* one client cannot take every slot */
#define HTTP_IDLE_TIMEOUT_S 3   /* an idle or slow client frees its slot quickly */
#define HTTP_CONN_MEMORY (32 * 1024) /* request line + headers must fit: else 431 */

struct bw_http {
    struct MHD_Daemon *daemon;
    char *worker_id;
    int port;
};

typedef struct reply {
    unsigned status;
    const char *content_type;
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
    r->status = strcmp(why, "READY") == 0 ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE;
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

static enum MHD_Result send_reply(struct MHD_Connection *c, reply_t *r, const char *allow)
{
    size_t len = r->body.len;
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, r->body.p, MHD_RESPMEM_MUST_FREE);
    r->body.p = NULL;
    if (resp == NULL)
        return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, r->content_type);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (allow != NULL)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
    enum MHD_Result ok = MHD_queue_response(c, r->status, resp);
    MHD_destroy_response(resp);
    return ok;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_size,
                                  void **con_cls)
{
    static int seen;
    const bw_http_t *h = cls;
    bool readable = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    /* libmicrohttpd calls once when the headers are in; answering only on the second call (the
       request is complete) keeps the connection alive. Other methods are answered at once, which
       closes the connection instead of reading a body we do not want. */
    if (readable && *con_cls == NULL) {
        *con_cls = &seen;
        return MHD_YES;
    }
    reply_t r = {.status = MHD_HTTP_OK, .content_type = "text/plain; charset=utf-8"};
    bw_buf_init(&r.body, 256);
    if (!readable) {
        r.status = MHD_HTTP_METHOD_NOT_ALLOWED;
        bw_buf_puts(&r.body, "method not allowed\n");
        return send_reply(c, &r, "GET, HEAD");
    }
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        if (strcmp(url, routes[i].path) == 0) {
            routes[i].render(h, &r);
            return send_reply(c, &r, NULL);
        }
    }
    r.status = MHD_HTTP_NOT_FOUND;
    bw_buf_puts(&r.body, "not found: try /healthz, /readyz, /metrics, /_state, /_build\n");
    return send_reply(c, &r, NULL);
}

/* Resolves "host:port" (host may be [v6]) into storage; 0 or -1. */
static int resolve(const char *bind, struct sockaddr_storage *ss, char *err, size_t errlen)
{
    const char *colon = strrchr(bind, ':');
    char host[256];
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    size_t hl = colon ? (size_t)(colon - bind) : 0;
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
    freeaddrinfo(res);
    return 0;
}

bw_http_t *bw_http_create(const char *bind, const char *worker_id, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    if (resolve(bind, &ss, err, errlen) < 0)
        return NULL;
    bw_http_t *h = bw_calloc(1, sizeof *h);
    h->worker_id = bw_strdup(worker_id);
    unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD | (ss.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0);
    h->daemon = MHD_start_daemon(flags, 0, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                                 MHD_OPTION_CONNECTION_LIMIT, (unsigned)HTTP_MAX_CONNECTIONS,
                                 MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)HTTP_MAX_PER_IP,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)HTTP_IDLE_TIMEOUT_S,
                                 MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)HTTP_CONN_MEMORY, MHD_OPTION_END);
    if (h->daemon == NULL) {
        snprintf(err, errlen, "HEALTH_BIND: cannot listen on %s (address in use or not available)", bind);
        bw_http_destroy(h);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
    h->port = info != NULL ? info->port : 0;
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
    if (h->daemon != NULL)
        MHD_stop_daemon(h->daemon);
    free(h->worker_id);
    free(h);
}
