/*
 * `beamline-worker exec`: the daemon's scheduler and handlers on a private loop, fed one job from stdin,
 * publishing into stdout instead of NATS. Any job type the daemon runs, exec runs the same way.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "core/deadletter.h"
#include "core/worker.h"
#include "util/jsonw.h"
#include "util/clock.h"
#include "util/ids.h"
#include "util/xalloc.h"

#define EXEC_MAX_INPUT (64 * 1024 * 1024)

typedef struct exec_ctx {
    uv_loop_t *loop;
    int exit_code;
    bool done;
} exec_ctx_t;

static char *read_stdin(size_t *len)
{
    size_t cap = 65536, n = 0;
    char *buf = bw_malloc(cap);
    for (;;) {
        if (n == cap) {
            if (cap >= EXEC_MAX_INPUT) {
                free(buf);
                return NULL;
            }
            cap *= 2;
            buf = bw_realloc(buf, cap);
        }
        size_t r = fread(buf + n, 1, cap - n, stdin);
        if (r == 0)
            break;
        n += r;
    }
    *len = n;
    return buf;
}

static void on_publish(void *ud, const bw_outmsg_t *m)
{
    exec_ctx_t *x = ud;
    if (m->kind != BW_OUT_RESULT)
        return;
    json_t *r = json_loadb(m->data, m->len, 0, NULL);
    json_t *inner = json_object_get(r, "data") ? json_object_get(r, "data") : r;
    const char *status = json_string_value(json_object_get(inner, "status"));
    x->exit_code = (status != NULL && strcmp(status, "success") == 0) ? 0 : 1;
    bw_buf_t pretty; /* the bytes as published (jansson would write 0.1 as 0.10000000000000001) */
    bw_buf_init(&pretty, m->len * 2 + 64);
    bw_jsonw_pretty(&pretty, m->data, m->len);
    fwrite(pretty.p, 1, pretty.len, stdout);
    bw_buf_dispose(&pretty);
    fputc('\n', stdout);
    fflush(stdout);
    json_decref(r);
    x->done = true;
    uv_stop(x->loop);
}

/* A bare {"type","payload"[,"timeout_ms"]} job becomes a full assignment with a fresh id and tenant
   "local" (caller frees *out). Returns 1 when converted, 0 when the input is not of that form (it is then
   taken as an assignment as it is), -1 when it is but its timeout_ms is unusable (reported on stderr). */
static int as_assignment(const char *data, size_t len, char **out)
{
    json_t *j = json_loadb(data, len, JSON_ALLOW_NUL, NULL), *t = json_object_get(j, "timeout_ms");
    int rc = 0;
    *out = NULL;
    if (!json_is_object(j) || !json_object_get(j, "type") || json_object_get(j, "job") ||
        json_object_get(j, "assignment_id"))
        goto out;
    rc = -1;
    if (t != NULL && (!json_is_integer(t) || json_integer_value(t) <= 0)) {
        fprintf(stderr, "exec: timeout_ms must be a positive integer number of milliseconds\n");
        goto out;
    }
    char id[BW_UUID_STRLEN + 1];
    bw_uuid_v4(id);
    json_t *a =
        json_pack("{sssssss{sOsO*}}", "version", "1", "assignment_id", id, "tenant_id", "local", "job",
                  "type", json_object_get(j, "type"), "payload", json_object_get(j, "payload"));
    if (t != NULL)
        json_object_set_new(a, "options", json_pack("{sO}", "deadline_ms", t));
    *out = json_dumps(a, JSON_COMPACT);
    json_decref(a);
    rc = 1;
out:
    json_decref(j);
    return rc;
}

void bw_cli_exec_usage(FILE *f)
{
    fprintf(f, "usage: beamline-worker exec < JOB_JSON\n"
               "Runs one job locally, without NATS, and prints its result (pretty JSON) on stdout; logs go\n"
               "to stderr. JOB_JSON is {\"type\":T,\"payload\":{...}[,\"timeout_ms\":N]} or a whole\n"
               "assignment (bare or in the router's envelope). 1: the result is not a success; 2: the\n"
               "input is not a usable job.\n");
    bw_cli_print_exit_codes(f);
}

int bw_cli_exec(const bw_config_t *cfg)
{
    size_t len = 0;
    char *assignment = NULL, *data = read_stdin(&len);
    if (data == NULL) {
        fprintf(stderr, "exec: input larger than %d bytes\n", EXEC_MAX_INPUT);
        return BW_EXIT_USAGE;
    }
    int form = as_assignment(data, len, &assignment);
    if (form < 0) {
        free(data);
        return BW_EXIT_USAGE;
    }
    bw_inbound_t *in = bw_inbound_assign("stdin", form ? assignment : data, form ? strlen(assignment) : len,
                                         NULL, NULL, cfg->default_job_timeout_ms);
    free(assignment);
    free(data);
    if (in->st == BW_DECODE_DEAD) {
        fprintf(stderr, "exec: %s: %s\n", in->err.code, in->err.message);
        bw_inbound_destroy(in);
        return BW_EXIT_USAGE;
    }
    uv_loop_t loop;
    uv_loop_init(&loop);
    exec_ctx_t x = {.loop = &loop, .exit_code = 1};
    bw_deadletters_t *dead = bw_deadletters_create(cfg, NULL, on_publish, &x);
    bw_worker_opts_t opts = {.publish = on_publish, .publish_ud = &x, .heartbeats = false, .dead = dead};
    bw_worker_t *w = bw_worker_create(&loop, cfg, &opts);
    bw_worker_accept(w, in);
    /* Always run: a job that finished inside accept already called uv_stop, and this run is what
       clears the stop flag so that the runs below really close the handles. */
    uv_run(&loop, UV_RUN_DEFAULT);
    bw_worker_destroy(w);
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0)
        fprintf(stderr, "exec: event loop still had open handles at exit\n");
    bw_deadletters_destroy(dead);
    return x.exit_code;
}
