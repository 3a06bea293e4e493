/*
 * A tiny raw-socket HTTP/1.1 client for the health-server tests. It talks to 127.0.0.1 only (from any
 * local address: the loopback /8 is all local, so clients can stand for distinct addresses), sends
 * one request per connection (Connection: close) and reads the response with a 5 s overall
 * deadline, so a hung server fails the test instead of hanging it. The raw variant sends arbitrary
 * bytes, for malformed and oversized requests.
 */
#ifndef BW_TEST_HTTP_CLIENT_H
#define BW_TEST_HTTP_CLIENT_H

#include <stddef.h>

#include "proc.h"

#define BW_TEST_HTTP_TIMEOUT_MS 5000

/* Sends "<method> <path> HTTP/1.1" with Host and Connection: close plus extra_headers (raw
   "K: V\r\n" lines, may be NULL) to 127.0.0.1:port and reads the response: up to Content-Length
   bytes of body when the header gives one (and the method is not HEAD), else to EOF. *status gets
   the status code; *body (may be NULL) a malloc'd NUL-terminated body and *headers (may be NULL)
   the malloc'd raw header block (status line included, up to the blank line); the caller frees
   both. On failure they are set to NULL. Returns 0 on a parsed response, -1 otherwise. */
int bw_test_http(int port, const char *method, const char *path, const char *extra_headers, int *status,
                 char **body, char **headers);

/* bw_test_http with a request body and a binary-safe response: req_body (req_len bytes) is sent
   with its Content-Length unless it is NULL, and *body_len (may be NULL) gets the length of *body,
   which may hold NULs. */
int bw_test_http_body(int port, const char *method, const char *path, const char *extra_headers,
                      const void *req_body, size_t req_len, int *status, char **body, size_t *body_len,
                      char **headers);

/* bw_test_http from the local address src ("127.0.0.x", NULL = any) with a deadline of timeout_ms and
   no extra headers. */
int bw_test_http_from(const char *src, int timeout_ms, int port, const char *method, const char *path,
                      int *status, char **body);

/* A connected non-blocking TCP socket from src (NULL = any) to 127.0.0.1:port, or -1 within
   timeout_ms. The caller closes it. */
int bw_test_http_connect_from(const char *src, int port, int timeout_ms);

/* Sends len raw bytes to 127.0.0.1:port while reading, then reads until the server closes the
   connection (or resets it). *response gets whatever arrived, malloc'd and NUL-terminated (possibly
   empty; caller frees). Returns the number of bytes received, or -1 when the connection could not
   be made or the server neither answered nor closed within the deadline. */
int bw_test_http_raw(int port, const char *request_bytes, size_t len, char **response);

/* The value of header name (case-insensitive) in a raw header block, malloc'd without surrounding
   whitespace (caller frees), or NULL when absent. */
char *bw_test_http_header(const char *headers, const char *name);
/* Fails the test unless headers has name with exactly the value want. */
void bw_test_http_expect_header(const char *headers, const char *name, const char *want);

/* The health server's port, parsed from the worker's last "health server listening" log line (waiting
   up to 5 s for it); -1 when the line never appears or carries no port. */
int bw_test_worker_http_port(bw_test_proc_t *p);

#endif
