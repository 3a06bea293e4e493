/*
 * libcurl's multi interface driven by a libuv loop: every transfer of the process shares one multi
 * handle and the loop thread, so a thousand requests in flight need a thousand sockets, not threads.
 * Loop thread only.
 */
#ifndef BW_NET_CURLUV_H
#define BW_NET_CURLUV_H

#include <curl/curl.h>
#include <uv.h>

typedef struct bw_curl bw_curl_t;

/* Called once per added transfer when it is over (the easy handle is already out of the multi handle
   and may be added again or cleaned up). */
typedef void (*bw_curl_done_cb)(CURL *easy, CURLcode rc, void *ud);

bw_curl_t *bw_curl_create(uv_loop_t *loop);
/* Starts a transfer; 0, or -1 when curl refuses the handle. */
int bw_curl_add(bw_curl_t *c, CURL *easy, bw_curl_done_cb cb, void *ud);
/* Stops a transfer now; its callback will not run. */
void bw_curl_remove(bw_curl_t *c, CURL *easy);
/* Transfers in progress. */
int bw_curl_running(const bw_curl_t *c);
/* Stops what is left (no callbacks) and closes the loop handles; the memory goes with their close
   callbacks. NULL is a no-op. */
void bw_curl_destroy(bw_curl_t *c);

#endif
