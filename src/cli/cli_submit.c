/*
 * `beamline-worker submit`: publishes one assignment to CAF_ASSIGN_SUBJECT and waits for its result on
 * CAF_RESULT_SUBJECT (either format), so a newcomer can see a job run through a real NATS.
 */
#include <jansson.h>
#include <nats/nats.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "net/bus.h"
#include "util/clock.h"
#include "util/ids.h"
#include "util/jsonw.h"
#include "util/xalloc.h"

typedef struct submit_args {
    const char *type, *payload, *tenant;
    int64_t wait_ms;
    bool from_stdin;
} submit_args_t;

static int usage(void)
{
    fprintf(stderr, "usage: beamline-worker submit [--tenant T] [--wait-ms N] TYPE [PAYLOAD_JSON]\n"
                    "       beamline-worker submit [--wait-ms N] -      (a whole assignment on stdin)\n");
    return 2;
}

static int parse_args(int argc, char **argv, submit_args_t *a)
{
    *a = (submit_args_t){.tenant = "default", .wait_ms = 30000};
    int i = 0;
    for (; i < argc && strncmp(argv[i], "--", 2) == 0; i += 2) {
        if (i + 1 >= argc)
            return -1;
        if (strcmp(argv[i], "--tenant") == 0)
            a->tenant = argv[i + 1];
        else if (strcmp(argv[i], "--wait-ms") == 0)
            a->wait_ms = atoll(argv[i + 1]);
        else
            return -1;
    }
    if (i >= argc || a->wait_ms <= 0)
        return -1;
    a->from_stdin = strcmp(argv[i], "-") == 0;
    a->type = argv[i];
    a->payload = i + 1 < argc ? argv[i + 1] : "{}";
    return 0;
}

static json_t *build_assignment(const submit_args_t *a)
{
    json_error_t err;
    if (a->from_stdin) {
        json_t *j = json_loadf(stdin, 0, &err);
        if (j == NULL)
            fprintf(stderr, "submit: stdin is not JSON: %s\n", err.text);
        return j;
    }
    json_t *payload = json_loads(a->payload, 0, &err);
    if (!json_is_object(payload)) {
        fprintf(stderr, "submit: PAYLOAD_JSON must be a JSON object\n");
        json_decref(payload);
        return NULL;
    }
    char id[BW_UUID_STRLEN + 1], trace[BW_UUID_STRLEN + 1];
    bw_uuid_v4(id);
    bw_uuid_v4(trace);
    return json_pack("{sssssssss{ssso}s{sI}}", "version", "1", "assignment_id", id, "tenant_id", a->tenant,
                     "trace_id", trace, "job", "type", a->type, "payload", payload, "options", "deadline_ms",
                     (json_int_t)a->wait_ms);
}

static json_t *unwrap(json_t *j)
{
    json_t *d = json_object_get(j, "data");
    return json_is_object(d) ? d : j;
}

/* Waits for the result whose assignment_id matches; returns it (caller decrefs) or NULL. */
/* The result for id (parsed), and its bytes in raw (malloc'd). */
static json_t *await_result(natsSubscription *sub, const char *id, int64_t wait_ms, char **raw,
                            size_t *rawlen)
{
    int64_t end = (int64_t)bw_mono_ms() + wait_ms;
    for (int64_t left = wait_ms; left > 0; left = end - (int64_t)bw_mono_ms()) {
        natsMsg *msg = NULL;
        if (natsSubscription_NextMsg(&msg, sub, left) != NATS_OK)
            return NULL;
        size_t n = (size_t)natsMsg_GetDataLength(msg);
        json_t *j = json_loadb(natsMsg_GetData(msg), n, 0, NULL);
        const char *got = json_string_value(json_object_get(unwrap(j), "assignment_id"));
        if (got != NULL && strcmp(got, id) == 0) {
            *raw = bw_strndup(natsMsg_GetData(msg), n);
            *rawlen = n;
            natsMsg_Destroy(msg);
            return j;
        }
        natsMsg_Destroy(msg);
        json_decref(j);
    }
    return NULL;
}

static int publish(natsConnection *nc, const bw_config_t *cfg, json_t *a)
{
    json_t *bare = unwrap(a);
    const char *tenant = json_string_value(json_object_get(bare, "tenant_id"));
    char *data = json_dumps(a, JSON_COMPACT);
    natsMsg *msg = NULL;
    natsStatus s = natsMsg_Create(&msg, cfg->assign_subject, NULL, data, (int)strlen(data));
    if (s == NATS_OK && tenant != NULL)
        s = natsMsgHeader_Set(msg, "tenant_id", tenant);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(msg, "version", "1");
    if (s == NATS_OK)
        s = natsConnection_PublishMsg(nc, msg);
    if (s == NATS_OK)
        s = natsConnection_FlushTimeout(nc, 5000);
    natsMsg_Destroy(msg);
    free(data);
    return s == NATS_OK ? 0 : -1;
}

int bw_cli_submit(const bw_config_t *cfg, int argc, char **argv)
{
    submit_args_t args;
    natsConnection *nc = NULL;
    natsSubscription *sub = NULL;
    json_t *a = NULL, *result = NULL;
    char *raw = NULL;
    size_t rawlen = 0;
    int rc = 3;
    if (parse_args(argc, argv, &args) < 0)
        return usage();
    if ((a = build_assignment(&args)) == NULL)
        return 2;
    const char *id = json_string_value(json_object_get(unwrap(a), "assignment_id"));
    if (id == NULL) {
        fprintf(stderr, "submit: the assignment has no assignment_id\n");
        rc = 2;
        goto out;
    }
    if (bw_bus_connect_once(&nc, cfg, "beamline-worker submit") < 0 ||
        natsConnection_SubscribeSync(&sub, nc, cfg->result_subject) != NATS_OK ||
        natsConnection_Flush(nc) != NATS_OK || publish(nc, cfg, a) < 0) {
        fprintf(stderr, "submit: NATS error: %s\n", nats_GetLastError(NULL));
        goto out;
    }
    if ((result = await_result(sub, id, args.wait_ms + 2000, &raw, &rawlen)) == NULL) {
        fprintf(stderr, "submit: no result for %s within %lld ms\n", id, (long long)args.wait_ms + 2000);
        goto out;
    }
    bw_buf_t pretty; /* the bytes as published (jansson would write 0.1 as 0.10000000000000001) */
    bw_buf_init(&pretty, rawlen * 2 + 64);
    bw_jsonw_pretty(&pretty, raw, rawlen);
    fwrite(pretty.p, 1, pretty.len, stdout);
    bw_buf_dispose(&pretty);
    fputc('\n', stdout);
    const char *status = json_string_value(json_object_get(unwrap(result), "status"));
    rc = (status != NULL && strcmp(status, "success") == 0) ? 0 : 1;
out:
    free(raw);
    json_decref(result);
    json_decref(a);
    natsSubscription_Destroy(sub);
    natsConnection_Destroy(nc);
    return rc;
}
