/*
 * `beamline-worker dlq list|replay`: reads DLQ_PATH and its rotations (oldest first) and either lists the
 * dead letters or republishes them: stored results go back to the subject they failed on, stored
 * assignments are resubmitted to the assign subject they came from, with their original headers.
 * Replay does not remove entries: receivers deduplicate (the router by assignment id, the worker by
 * its result memory), so replaying twice is harmless.
 */
#include <jansson.h>
#include <nats/nats.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cli.h"
#include "net/bus.h"
#include "store/dlq.h"
#include "util/base64.h"
#include "util/clock.h"
#include "util/xalloc.h"

typedef struct dlq_args {
    const char *reason;
    int64_t since_ms; /* 0 = everything */
    bool json, dry_run;
} dlq_args_t;

typedef struct replay_ctx {
    const dlq_args_t *args;
    natsConnection *nc;
    long matched, replayed, results, assignments, skipped, failed;
} replay_ctx_t;

void bw_cli_dlq_usage(FILE *f)
{
    fprintf(f, "usage: beamline-worker dlq list [--reason R] [--since T] [--json]\n"
               "       beamline-worker dlq replay [--reason R] [--since T] [--dry-run]\n"
               "The dead letters in DLQ_PATH (and its rotations), oldest first. replay republishes each\n"
               "original on its subject and prints a JSON summary; 1 when one could not be republished.\n"
               "T: an RFC 3339 time (2026-11-26T10:00:00Z) or an age (90s, 15m, 2h, 7d)\n");
    bw_cli_print_exit_codes(f);
}

static int usage(void)
{
    bw_cli_dlq_usage(stderr);
    return BW_EXIT_USAGE;
}

/* "2026-11-26T10:00:00[.mmm]Z" -> ms since the epoch, or -1. */
static int64_t parse_rfc3339(const char *s)
{
    struct tm tm = {0};
    int ms = 0;
    const char *rest = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (rest == NULL)
        return -1;
    if (*rest == '.') {
        char *end;
        ms = (int)strtol(rest + 1, &end, 10);
        rest = end;
    }
    if (strcmp(rest, "Z") != 0 && strcmp(rest, "+00:00") != 0)
        return -1;
    return (int64_t)timegm(&tm) * 1000 + ms;
}

/* An RFC 3339 time or an age like 15m; -1 when neither. */
static int64_t parse_since(const char *s)
{
    char *end;
    long n = strtol(s, &end, 10);
    static const struct {
        char unit;
        int64_t ms;
    } units[] = {{'s', 1000}, {'m', 60000}, {'h', 3600000}, {'d', 86400000}};
    for (size_t i = 0; end != s && n >= 0 && end[0] != '\0' && end[1] == '\0' && i < 4; i++)
        if (end[0] == units[i].unit)
            return bw_wall_ms() - n * units[i].ms;
    return parse_rfc3339(s);
}

static int parse_args(int argc, char **argv, dlq_args_t *a)
{
    *a = (dlq_args_t){0};
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--json"))
            a->json = true;
        else if (!strcmp(argv[i], "--dry-run"))
            a->dry_run = true;
        else if (!strcmp(argv[i], "--reason") && i + 1 < argc)
            a->reason = argv[++i];
        else if (!strcmp(argv[i], "--since") && i + 1 < argc) {
            if ((a->since_ms = parse_since(argv[++i])) < 0)
                return -1;
        } else
            return -1;
    }
    return 0;
}

static const char *jstr(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static bool matches(const dlq_args_t *a, json_t *e)
{
    const char *reason = jstr(e, "reason"), *ts = jstr(e, "ts");
    if (a->reason != NULL && (reason == NULL || strcmp(reason, a->reason) != 0))
        return false;
    return a->since_ms == 0 || (ts != NULL && parse_rfc3339(ts) >= a->since_ms);
}

static int list_one(void *ud, json_t *e, const char *file, long line_no)
{
    replay_ctx_t *x = ud;
    if (!matches(x->args, e))
        return 0;
    x->matched++;
    if (x->args->json) {
        char *s = json_dumps(e, JSON_COMPACT | JSON_PRESERVE_ORDER);
        printf("%s\n", s);
        free(s);
        return 0;
    }
    json_t *ref = json_object_get(e, "payload_ref");
    const char *id = jstr(e, "assignment_id");
    printf("%s  %-13s  %-36s  %-24s  %6lld B  %s%s\n", jstr(e, "ts") ? jstr(e, "ts") : "-",
           jstr(e, "reason") ? jstr(e, "reason") : "-", id ? id : "-",
           jstr(ref, "subject") ? jstr(ref, "subject") : "-",
           (long long)json_integer_value(json_object_get(ref, "len")),
           jstr(e, "error") ? jstr(e, "error") : "",
           json_object_get(e, "message_format") ? "" : "  [original not stored]");
    return 0;
}

/* The original bytes of an entry (malloc'd), or NULL when it was not stored. */
static char *original_bytes(json_t *e, size_t *len)
{
    const char *format = jstr(e, "message_format");
    json_t *msg = json_object_get(e, "message");
    if (format == NULL)
        return NULL;
    if (!strcmp(format, "json") && msg != NULL) {
        char *s = json_dumps(msg, JSON_COMPACT | JSON_PRESERVE_ORDER);
        *len = strlen(s);
        return s;
    }
    if (!strcmp(format, "text") && json_is_string(msg)) {
        *len = json_string_length(msg);
        return bw_strndup(json_string_value(msg), *len);
    }
    const char *b64 = jstr(e, "message_base64");
    if (!strcmp(format, "base64") && b64 != NULL)
        return (char *)bw_base64_decode(b64, strlen(b64), len);
    return NULL;
}

static natsStatus publish_entry(natsConnection *nc, const char *subject, json_t *headers, const char *data,
                                size_t len)
{
    natsMsg *msg = NULL;
    const char *k;
    json_t *v;
    natsStatus s = natsMsg_Create(&msg, subject, NULL, data, (int)len);
    json_object_foreach(headers, k, v)
    {
        if (s == NATS_OK && json_is_string(v))
            s = natsMsgHeader_Set(msg, k, json_string_value(v));
    }
    if (s == NATS_OK)
        s = natsConnection_PublishMsg(nc, msg);
    natsMsg_Destroy(msg);
    return s;
}

static int replay_one(void *ud, json_t *e, const char *file, long line_no)
{
    replay_ctx_t *x = ud;
    size_t len = 0;
    if (!matches(x->args, e))
        return 0;
    x->matched++;
    const char *subject = jstr(json_object_get(e, "payload_ref"), "subject");
    char *data = original_bytes(e, &len);
    if (data == NULL || subject == NULL || *subject == '\0') {
        x->skipped++;
        fprintf(stderr, "dlq replay: %s:%ld: skipped (%s)\n", file, line_no,
                data == NULL ? "the original was not stored" : "no subject");
        free(data);
        return 0;
    }
    bool is_result = jstr(e, "reason") && !strcmp(jstr(e, "reason"), "PUBLISH_ERROR");
    natsStatus s =
        x->args->dry_run ? NATS_OK : publish_entry(x->nc, subject, json_object_get(e, "headers"), data, len);
    free(data);
    if (s != NATS_OK) {
        x->failed++;
        fprintf(stderr, "dlq replay: %s:%ld: publish failed: %s\n", file, line_no, natsStatus_GetText(s));
        return 0;
    }
    x->replayed++;
    *(is_result ? &x->results : &x->assignments) += 1;
    return 0;
}

static int scan(const bw_config_t *cfg, bw_dlq_visit_fn fn, replay_ctx_t *x)
{
    long bad = 0;
    long n = bw_dlq_scan(cfg->dlq_path, cfg->dlq_max_rotations, fn, x, &bad);
    if (n < 0) {
        fprintf(stderr, "dlq: no dead-letter file at %s (DLQ_PATH)\n", cfg->dlq_path);
        return -1;
    }
    if (bad > 0)
        fprintf(stderr, "dlq: %ld unreadable line(s) skipped\n", bad);
    return 0;
}

static int replay(const bw_config_t *cfg, const dlq_args_t *a)
{
    replay_ctx_t x = {.args = a};
    if (!a->dry_run && bw_bus_connect_once(&x.nc, cfg, "beamline-worker dlq replay") < 0) {
        fprintf(stderr, "dlq replay: NATS error: %s\n", nats_GetLastError(NULL));
        return BW_EXIT_NATS;
    }
    int rc = scan(cfg, replay_one, &x);
    if (x.nc != NULL && natsConnection_FlushTimeout(x.nc, 5000) != NATS_OK)
        x.failed += x.replayed, x.replayed = 0;
    natsConnection_Destroy(x.nc);
    printf("{\"matched\":%ld,\"replayed\":%ld,\"results\":%ld,\"assignments\":%ld,\"skipped\":%ld,\"failed\":"
           "%ld,"
           "\"dry_run\":%s}\n",
           x.matched, x.replayed, x.results, x.assignments, x.skipped, x.failed,
           a->dry_run ? "true" : "false");
    return rc < 0 || x.failed > 0 ? BW_EXIT_FAILED : BW_EXIT_OK;
}

int bw_cli_dlq(const bw_config_t *cfg, int argc, char **argv)
{
    dlq_args_t a;
    if (argc < 1 || parse_args(argc - 1, argv + 1, &a) < 0)
        return usage();
    if (!strcmp(argv[0], "replay"))
        return replay(cfg, &a);
    if (strcmp(argv[0], "list") != 0)
        return usage();
    replay_ctx_t x = {.args = &a};
    if (scan(cfg, list_one, &x) < 0)
        return BW_EXIT_FAILED;
    if (!a.json)
        printf("%ld dead letter(s)\n", x.matched);
    return BW_EXIT_OK;
}
