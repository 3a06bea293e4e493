/*
 * A scriptable HTTP/1.1 server for the http job type's integration tests. It runs on its own
 * thread and uv loop inside the test process, listens on 127.0.0.1 on a free port, and answers
 * by route, so a test can ask for any status, delay, redirect, body size or failure it needs:
 *
 *   /echo                        200 JSON {method, path, query, headers, body | body_base64}
 *   /status/<code>[?retry_after=v]   that status, {"status":<code>}, Retry-After: v
 *   /delay/<ms>                  200 {"delayed":<ms>} after ms milliseconds (a timer; max 60 s)
 *   /redirect?to=<url>[&code=c]  c (301, 302 default, 303, 307, 308) with Location: <url>
 *   /redirect-chain/<n>          302 to /redirect-chain/<n-1>; 200 {"end":true} at 0
 *   /bytes/<n>[?binary=1]        n bytes (max 64 MiB): 'a's, or 0..255 repeating with binary=1
 *   /text                        200 text/plain "héllo wörld"
 *   /json[?v=<json>]             200 application/json with v verbatim (default {"ok":true})
 *   /drop                        closes without answering
 *   /drop-after-headers          promises 100 bytes of body, sends 3, closes
 *   /flaky/<key>/<n>/<code>      <code> (0: drop) for the key's first n requests (with
 *                                ?retry_after=v as above), then 200 {"key":<key>,"attempt":<i>}
 *   /count/<key>                 200 {"count":<i>}
 *   /headers?set=<name>:<value>  200 {} with each such header added (repeats allowed)
 *   /stream/<n>                  200 Transfer-Encoding: chunked, the JSON array [0..n-1] sent one
 *                                element per chunk (the only response without Content-Length)
 *   /header-bytes/<total>?n=<count>[&name=<name>][&with=<byte>]
 *                                200 {} whose head (status line, header lines, blank line) is exactly
 *                                total bytes, filled by count lines "<name>:aaa..." (default name
 *                                x-f<i>, distinct; values of the byte `with`, default 'a') - many small
 *                                headers, one huge one, or repeats
 *   /fill/<n>?with=<bytes>[&prefix=<bytes>&suffix=<bytes>]
 *                                n bytes repeating the %-decoded bytes (%FF, %22, %01, %E2%82%AC...),
 *                                between the prefix and the suffix
 *   /slow-body/<ms>              200, Content-Length 100: 10 bytes at once, the other 90 after ms
 *   /barrier/<n>?key=<k>         held until n requests with the key have arrived, then all answered
 *                                200 {"released":<n>} (requests that must be in flight together)
 *   anything else                404 {"error":"not found"}
 *
 * Any route takes ?key=<k>: the request counts under "<k>" as soon as its head is parsed, and under
 * "<k>.sent" once the first bytes of its response were written (see bw_test_http_server_wait).
 *
 * Query values and path segments are %XX-decoded ('+' stays a plus). Any method works on every
 * route; HEAD gets the headers only. Every response carries Date. Connections are kept alive
 * (HTTP/1.1 default) unless the client sends Connection: close, and requests may be pipelined.
 * Expect: 100-continue is honoured. A malformed request gets 400 (411 for Transfer-Encoding,
 * 431 for a header block over 64 KiB, 413 for a body over 16 MiB) and the connection is closed.
 */
#ifndef BW_TEST_HTTP_SERVER_H
#define BW_TEST_HTTP_SERVER_H

typedef struct bw_test_http_server bw_test_http_server_t;

/* Raises the RLIMIT_NOFILE soft limit to at least 4096 (up to the hard limit), binds
   127.0.0.1:0 and starts the server thread. NULL on failure. */
bw_test_http_server_t *bw_test_http_server_start(void);

/* The port the server listens on. */
int bw_test_http_server_port(const bw_test_http_server_t *s);

/* Closes the listener and every connection, joins the thread and frees s. NULL is a no-op. */
void bw_test_http_server_stop(bw_test_http_server_t *s);

/* The counters below may be read from any thread while the server runs. */

/* Requests seen so far for key by /flaky and /count (one counter per key, shared by both
   routes, kept for the server's lifetime); 0 for a key never seen. */
long bw_test_http_server_requests(const bw_test_http_server_t *s, const char *key);

/* Waits up to timeout_ms until the key's count (as above, or a ?key=) reaches n; returns the count. */
long bw_test_http_server_wait(const bw_test_http_server_t *s, const char *key, long n, int timeout_ms);

/* Every request whose head parsed, whatever the route or answer. */
long bw_test_http_server_total(const bw_test_http_server_t *s);

/* The most connections that were open at once. */
int bw_test_http_server_max_open(const bw_test_http_server_t *s);

#endif
