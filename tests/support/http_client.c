/*
 * The test HTTP client; see http_client.h. One non-blocking socket driven by poll(): the request is
 * written while the response is read, so a server that answers (and closes) before it has read an
 * oversized request is still heard, and every wait is bounded by one overall deadline.
 * Transfer-Encoding: chunked is not decoded (the worker's server always sends Content-Length).
 */
#include "http_client.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "testutil.h"

#define PORT_LOG_WAIT_MS 5000

typedef struct rbuf {
    char *p;
    size_t len, cap;
} rbuf_t;

/* Says whether the bytes received so far form a complete response; ud is the request's context. */
typedef int (*complete_fn)(const rbuf_t *in, void *ud);

/* A non-blocking TCP connection from src (NULL: any local address) to 127.0.0.1:port, established
   before deadline; -1 on failure. */
static int connect_from(const char *src, int port, int64_t deadline)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    struct sockaddr_in local = {.sin_family = AF_INET};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int err = 0;
    socklen_t elen = sizeof err;

    if (fd < 0 || port <= 0 || port > 65535)
        goto fail;
    if (src != NULL && (inet_pton(AF_INET, src, &local.sin_addr) != 1 ||
                        bind(fd, (struct sockaddr *)&local, sizeof local) != 0))
        goto fail;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
        return fd;
    if (errno != EINPROGRESS)
        goto fail;
    struct pollfd pfd = {.fd = fd, .events = POLLOUT};
    int64_t left = deadline - bw_test_now_ms();
    if (left <= 0 || poll(&pfd, 1, (int)left) != 1)
        goto fail;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0 || err != 0)
        goto fail;
    return fd;
fail:
    if (fd >= 0)
        close(fd);
    return -1;
}

static int connect_local(int port, int64_t deadline)
{
    return connect_from(NULL, port, deadline);
}

int bw_test_http_connect_from(const char *src, int port, int timeout_ms)
{
    return connect_from(src, port, bw_test_now_ms() + timeout_ms);
}

static int rbuf_read(rbuf_t *b, int fd)
{
    if (b->cap - b->len < 4096) {
        size_t cap = b->cap ? b->cap * 2 : 16384;
        char *p = realloc(b->p, cap);
        if (p == NULL)
            return -1;
        b->p = p;
        b->cap = cap;
    }
    ssize_t r = recv(fd, b->p + b->len, b->cap - b->len - 1, 0);
    if (r > 0)
        b->len += (size_t)r;
    return r < 0 ? -1 : (int)r;
}

/* Writes out[0..len) while reading into in, until the server closes the connection (or resets it)
   or done() says the response is complete. 0 then, -1 on the deadline or a local error. */
static int exchange(int fd, const char *out, size_t len, rbuf_t *in, complete_fn done, void *ud,
                    int64_t deadline)
{
    size_t sent = 0;

    for (;;) {
        int64_t left = deadline - bw_test_now_ms();
        struct pollfd pfd = {.fd = fd, .events = POLLIN | (sent < len ? POLLOUT : 0)};
        if (left <= 0)
            return -1;
        int n = poll(&pfd, 1, (int)left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            continue;
        if (sent < len && (pfd.revents & POLLOUT)) {
            ssize_t w = send(fd, out + sent, len - sent, MSG_NOSIGNAL);
            if (w > 0)
                sent += (size_t)w;
            else if (errno == EPIPE || errno == ECONNRESET)
                sent = len; /* the server gave up on the request: its answer may still be readable */
            else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                return -1;
        }
        if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
            int r = rbuf_read(in, fd);
            if (r == 0 || (r < 0 && (errno == ECONNRESET || errno == EPIPE)))
                return 0;
            if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                return -1;
            if (r > 0 && done != NULL && done(in, ud))
                return 0;
        }
    }
}

/* Offset just past the blank line ending the header block, or 0 when it has not arrived. */
static size_t header_end(const char *p, size_t len)
{
    for (size_t i = 0; i + 3 < len; i++)
        if (memcmp(p + i, "\r\n\r\n", 4) == 0)
            return i + 4;
    return 0;
}

char *bw_test_http_header(const char *headers, const char *name)
{
    size_t nlen = strlen(name);
    const char *line = headers != NULL ? strstr(headers, "\r\n") : NULL;

    while (line != NULL && line[2] != '\0' && line[2] != '\r') {
        line += 2;
        const char *eol = strstr(line, "\r\n");
        if (eol == NULL)
            eol = line + strlen(line);
        if ((size_t)(eol - line) > nlen && strncasecmp(line, name, nlen) == 0 && line[nlen] == ':') {
            const char *v = line + nlen + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            const char *e = eol;
            while (e > v && (e[-1] == ' ' || e[-1] == '\t'))
                e--;
            return strndup(v, (size_t)(e - v));
        }
        line = eol;
    }
    return NULL;
}

typedef struct req_ctx {
    int is_head;
} req_ctx_t;

/* Complete once the headers and Content-Length bytes of body are in. A HEAD response is read to
   EOF instead, so a body the server should not have sent is noticed by the caller. */
static int response_complete(const rbuf_t *in, void *ud)
{
    const req_ctx_t *ctx = ud;
    in->p[in->len] = '\0';
    size_t he = header_end(in->p, in->len);
    if (he == 0 || ctx->is_head)
        return 0;
    char *hdrs = strndup(in->p, he);
    char *cl = bw_test_http_header(hdrs, "Content-Length");
    int complete = cl != NULL && in->len - he >= strtoull(cl, NULL, 10);
    free(cl);
    free(hdrs);
    return complete;
}

/* Splits a complete response into status, body and headers. 0 or -1 when it is not HTTP/1.x. */
static int parse_response(rbuf_t *in, int is_head, int *status, char **body, size_t *body_len, char **headers)
{
    int code = 0;
    in->p[in->len] = '\0';
    size_t he = header_end(in->p, in->len);
    if (he == 0 || sscanf(in->p, "HTTP/1.%*1[01] %3d", &code) != 1 || code < 100 || code > 599)
        return -1;
    char *hdrs = strndup(in->p, he);
    char *cl = bw_test_http_header(hdrs, "Content-Length");
    size_t blen = in->len - he;
    if (cl != NULL && !is_head && strtoull(cl, NULL, 10) < blen)
        blen = strtoull(cl, NULL, 10);
    free(cl);
    *status = code;
    if (body != NULL && (*body = malloc(blen + 1)) != NULL) {
        memcpy(*body, in->p + he, blen);
        (*body)[blen] = '\0';
    }
    if (body_len != NULL)
        *body_len = blen;
    if (headers != NULL)
        *headers = hdrs;
    else
        free(hdrs);
    return 0;
}

int bw_test_http(int port, const char *method, const char *path, const char *extra_headers, int *status,
                 char **body, char **headers)
{
    return bw_test_http_body(port, method, path, extra_headers, NULL, 0, status, body, NULL, headers);
}

static int http_full(const char *src, int timeout_ms, int port, const char *method, const char *path,
                     const char *extra_headers, const void *req_body, size_t req_len, int *status,
                     char **body, size_t *body_len, char **headers);

int bw_test_http_body(int port, const char *method, const char *path, const char *extra_headers,
                      const void *req_body, size_t req_len, int *status, char **body, size_t *body_len,
                      char **headers)
{
    return http_full(NULL, BW_TEST_HTTP_TIMEOUT_MS, port, method, path, extra_headers, req_body, req_len,
                     status, body, body_len, headers);
}

int bw_test_http_from(const char *src, int timeout_ms, int port, const char *method, const char *path,
                      int *status, char **body)
{
    return http_full(src, timeout_ms, port, method, path, NULL, NULL, 0, status, body, NULL, NULL);
}

static int http_full(const char *src, int timeout_ms, int port, const char *method, const char *path,
                     const char *extra_headers, const void *req_body, size_t req_len, int *status,
                     char **body, size_t *body_len, char **headers)
{
    int64_t deadline = bw_test_now_ms() + timeout_ms;
    req_ctx_t ctx = {.is_head = strcmp(method, "HEAD") == 0};
    rbuf_t in = {0};
    char *req = NULL;
    int fd = -1, rc = -1;
    size_t len;

    *status = 0;
    if (body != NULL)
        *body = NULL;
    if (body_len != NULL)
        *body_len = 0;
    if (headers != NULL)
        *headers = NULL;
    FILE *f = open_memstream(&req, &len);
    if (f == NULL)
        goto out;
    fprintf(f, "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: bw-test\r\nConnection: close\r\n", method,
            path, port);
    if (req_body != NULL)
        fprintf(f, "Content-Length: %zu\r\n", req_len);
    fprintf(f, "%s\r\n", extra_headers != NULL ? extra_headers : "");
    if (req_body != NULL)
        fwrite(req_body, 1, req_len, f);
    fclose(f);
    if ((fd = connect_from(src, port, deadline)) < 0)
        goto out;
    if (exchange(fd, req, len, &in, response_complete, &ctx, deadline) != 0 || in.len == 0)
        goto out;
    rc = parse_response(&in, ctx.is_head, status, body, body_len, headers);
out:
    if (fd >= 0)
        close(fd);
    free(in.p);
    free(req);
    return rc;
}

int bw_test_http_raw(int port, const char *request_bytes, size_t len, char **response)
{
    int64_t deadline = bw_test_now_ms() + BW_TEST_HTTP_TIMEOUT_MS;
    rbuf_t in = {0};
    int fd = connect_local(port, deadline), rc = -1;

    *response = NULL;
    if (fd < 0)
        return -1;
    if (exchange(fd, request_bytes, len, &in, NULL, NULL, deadline) == 0) {
        *response = in.p != NULL ? in.p : strdup("");
        if (in.p != NULL)
            in.p[in.len] = '\0';
        in.p = NULL;
        rc = (int)in.len;
    }
    close(fd);
    free(in.p);
    return rc;
}

/* The number after "port": (JSON) or port= (text format) on the line holding at. */
static int port_on_line(const char *log, const char *at)
{
    const char *bol = at, *eol = strchr(at, '\n');
    while (bol > log && bol[-1] != '\n')
        bol--;
    size_t n = eol != NULL ? (size_t)(eol - bol) : strlen(bol);
    char *line = strndup(bol, n);
    const char *p = strstr(line, "\"port\":");
    p = p != NULL ? p + 7 : (p = strstr(line, " port=")) != NULL ? p + 6 : NULL;
    long port = p != NULL ? strtol(p, NULL, 10) : -1;
    free(line);
    return port > 0 && port <= 65535 ? (int)port : -1;
}

int bw_test_worker_http_port(bw_test_proc_t *p)
{
    if (bw_test_proc_wait_log(p, "health server listening", PORT_LOG_WAIT_MS) != 0)
        return -1;
    char *log = bw_test_read_file(p->log_path, NULL);
    /* the last one: a worker that restarted itself (a wedged NATS connection) listens anew */
    const char *at = log != NULL ? strstr(log, "health server listening") : NULL;
    for (const char *next = at; next != NULL; next = strstr(next + 1, "health server listening"))
        at = next;
    int port = at != NULL ? port_on_line(log, at) : -1;
    free(log);
    return port;
}

void bw_test_http_expect_header(const char *headers, const char *name, const char *want)
{
    char *v = bw_test_http_header(headers, name);
    if (v == NULL || strcmp(v, want) != 0)
        fail_msg("header %s: got %s, want %s", name, v ? v : "(none)", want);
    free(v);
}
