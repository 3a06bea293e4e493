/*
 * The configuration table: one row per environment variable with its type, default and range. Loading,
 * validation, error messages and the redacted JSON dump are all driven by this one table, so a new
 * variable is one new row (and one README line).
 */
#include "core/config.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/handler.h"
#include "net/egress.h"
#include "obs/log.h"
#include "util/ids.h"
#include "util/xalloc.h"

typedef enum {
    T_STR,
    T_SECRET,
    T_URL,
    T_SUBJECT,
    T_GROUP,
    T_ID,
    T_INT,
    T_SIZE,
    T_BOOL,
    T_ENUM,
    T_HOSTPORT,
    T_NAME /* a JetStream stream, consumer or bucket name */
} kind_t;

typedef struct row {
    const char *name;
    kind_t kind;
    size_t off;
    const char *def; /* NULL: unset by default */
    int64_t min, max;
    const char *const *choices; /* T_ENUM: accepted words; the index is stored */
} row_t;

static const char *const formats[] = {"router", "envelope", NULL};
static const char *const log_levels[] = {"debug", "info", "warn", "error", NULL};
static const char *const log_formats[] = {"text", "json", NULL};
static const char *const consumers[] = {"core", "jetstream", NULL};

#define F(field) offsetof(bw_config_t, field)
#define KiB 1024LL
#define TiB (1024LL * 1024 * 1024 * 1024)

static const row_t rows[] = {
    {"NATS_URL", T_URL, F(nats_url), "nats://localhost:4222", 0, 0, NULL},
    {"NATS_CREDS", T_STR, F(nats_creds), NULL, 0, 0, NULL},
    {"NATS_NKEY", T_STR, F(nats_nkey), NULL, 0, 0, NULL},
    {"NATS_NKEY_SEED", T_STR, F(nats_nkey_seed), NULL, 0, 0, NULL},
    {"NATS_TLS_CA", T_STR, F(nats_tls_ca), NULL, 0, 0, NULL},
    {"NATS_TLS_CERT", T_STR, F(nats_tls_cert), NULL, 0, 0, NULL},
    {"NATS_TLS_KEY", T_STR, F(nats_tls_key), NULL, 0, 0, NULL},
    {"NATS_RECONNECT_BUF_BYTES", T_SIZE, F(nats_reconnect_buf_bytes), "64MiB", KiB, 1024 * 1024 * KiB, NULL},
    {"WORKER_ID", T_ID, F(worker_id), NULL, 1, 128, NULL},
    {"WORKER_MAX_CONCURRENCY", T_INT, F(max_concurrency), "8", 1, 100000, NULL},
    {"WORKER_QUEUE_MAX", T_INT, F(queue_max), "10000", 0, 1000000, NULL},
    {"WORKER_THREADPOOL_SIZE", T_INT, F(threadpool_size), "0", 0, 1024, NULL},
    {"WORKER_TYPE_CONCURRENCY", T_STR, F(type_concurrency), NULL, 0, 0, NULL},
    {"TENANT_WEIGHTS", T_STR, F(tenant_weights), NULL, 0, 0, NULL},
    {"TENANT_MAX_CONCURRENCY", T_INT, F(tenant_max_concurrency), "0", 0, 100000, NULL},
    {"TENANT_QUEUE_MAX", T_INT, F(tenant_queue_max), NULL, 0, 1000000, NULL},
    {"METRICS_TENANT_LABELS", T_BOOL, F(metrics_tenant_labels), "false", 0, 0, NULL},
    {"FS_BASE_DIR", T_STR, F(fs_base_dir), "/tmp/worker-storage", 0, 0, NULL},
    {"FS_TENANT_ISOLATION", T_BOOL, F(fs_tenant_isolation), "true", 0, 0, NULL},
    {"FS_MAX_BLOB_BYTES", T_SIZE, F(fs_max_blob_bytes), "8MiB", 1, 1024 * 1024 * KiB, NULL},
    {"CAF_ASSIGN_SUBJECT", T_SUBJECT, F(assign_subject), "caf.exec.assign.v1", 0, 0, NULL},
    {"CAF_QUEUE_GROUP", T_GROUP, F(queue_group), "caf-workers", 0, 0, NULL},
    {"CAF_RESULT_SUBJECT", T_SUBJECT, F(result_subject), "caf.exec.result.v1", 0, 0, NULL},
    {"CAF_HEARTBEAT_SUBJECT", T_SUBJECT, F(heartbeat_subject), "caf.status.heartbeat.v1", 0, 0, NULL},
    {"CAF_DLQ_SUBJECT", T_SUBJECT, F(dlq_subject), "caf.deadletter.v1", 0, 0, NULL},
    {"CAF_ACK_SUBJECT", T_SUBJECT, F(ack_subject), "caf.exec.assign.v1.ack", 0, 0, NULL},
    {"CAF_CANCEL_SUBJECT", T_SUBJECT, F(cancel_subject), "caf.exec.cancel.v1", 0, 0, NULL},
    {"CAF_APPROVAL_REQUEST_SUBJECT", T_SUBJECT, F(approval_request_subject), "caf.human.request.v1", 0, 0,
     NULL},
    {"CAF_APPROVAL_DECISION_SUBJECT", T_SUBJECT, F(approval_decision_subject), "caf.human.decision.v1", 0, 0,
     NULL},
    {"CAF_APPROVAL_LIST_SUBJECT", T_SUBJECT, F(approval_list_subject), "caf.human.list.v1", 0, 0, NULL},
    {"CAF_CONSUMER", T_ENUM, F(js_mode), "core", 0, 0, consumers},
    {"CAF_JS_STREAM", T_NAME, F(js_stream), "CAF_ASSIGN", 1, 64, NULL},
    {"CAF_JS_CREATE", T_BOOL, F(js_create), "false", 0, 0, NULL},
    {"CAF_JS_REPLICAS", T_INT, F(js_replicas), "1", 1, 5, NULL},
    {"CAF_JS_DURABLE", T_NAME, F(js_durable), "caf-workers", 1, 64, NULL},
    {"CAF_JS_ACK_WAIT_MS", T_INT, F(js_ack_wait_ms), "30000", 1000, 3600000, NULL},
    {"CAF_JS_MAX_DELIVER", T_INT, F(js_max_deliver), "5", 1, 1000, NULL},
    {"CAF_JS_NAK_DELAY_MS", T_INT, F(js_nak_delay_ms), "1000", 0, 3600000, NULL},
    {"CAF_JS_RESULTS_BUCKET", T_NAME, F(js_results_bucket), "caf_results", 1, 64, NULL},
    {"CAF_JS_RESULT_STORE", T_BOOL, F(js_result_store), "true", 0, 0, NULL},
    {"CAF_JS_APPROVALS_BUCKET", T_NAME, F(js_approvals_bucket), "caf_approvals", 1, 64, NULL},
    {"CAF_MESSAGE_FORMAT", T_ENUM, F(envelope), "router", 0, 0, formats},
    {"CAF_ACK_ENABLED", T_BOOL, F(ack_enabled), "false", 0, 0, NULL},
    {"CAF_HEARTBEAT_INTERVAL_MS", T_INT, F(heartbeat_interval_ms), "5000", 100, 600000, NULL},
    {"DEFAULT_JOB_TIMEOUT_MS", T_INT, F(default_job_timeout_ms), "60000", 100, 3600000, NULL},
    {"SHUTDOWN_TIMEOUT_MS", T_INT, F(shutdown_timeout_ms), "30000", 0, 3600000, NULL},
    {"HEALTH_BIND", T_HOSTPORT, F(health_bind), "0.0.0.0:9091", 0, 0, NULL},
    {"DLQ_PATH", T_STR, F(dlq_path), "/tmp/worker-dlq.jsonl", 0, 0, NULL},
    {"DLQ_MAX_BYTES", T_SIZE, F(dlq_max_bytes), "100MB", 4 * KiB, TiB, NULL},
    {"DLQ_TOTAL_MAX_BYTES", T_SIZE, F(dlq_total_max_bytes), "1GB", 4 * KiB, 16 * TiB, NULL},
    {"DLQ_MAX_AGE_DAYS", T_INT, F(dlq_max_age_days), NULL, 1, 3650, NULL},
    {"DLQ_MAX_ROTATIONS", T_INT, F(dlq_max_rotations), "5", 1, 1000, NULL},
    {"DLQ_MESSAGE_MAX_BYTES", T_SIZE, F(dlq_message_max_bytes), "1MiB", 0, 64 * 1024 * KiB, NULL},
    {"RESULT_PUBLISH_MAX_RETRIES", T_INT, F(result_publish_max_retries), "5", 0, 20, NULL},
    {"DEDUP_CACHE_SIZE", T_INT, F(dedup_max_entries), "100000", 0, 10000000, NULL},
    {"DEDUP_TTL_MS", T_INT, F(dedup_ttl_ms), "3600000", 1000, 604800000, NULL},
    {"DEDUP_CACHE_MAX_BYTES", T_SIZE, F(dedup_max_bytes), "64MiB", 0, TiB, NULL},
    {"JMESPATH_CACHE_ENTRIES", T_INT, F(jmespath_cache_entries), "1024", 0, 1000000, NULL},
    {"JMESPATH_MAX_EXPRESSION_BYTES", T_SIZE, F(jmespath_max_expression_bytes), "64KiB", 16, 1024 * KiB,
     NULL},
    {"SCRIPT_POOL_SIZE", T_INT, F(script_pool_size), "0", 0, 64, NULL},
    {"SCRIPT_MAX_MEMORY_MB", T_INT, F(script_max_memory_mb), "256", 32, 65536, NULL},
    {"SCRIPT_MAX_OUTPUT_BYTES", T_SIZE, F(script_max_output_bytes), "1MiB", 16, 64 * 1024 * KiB, NULL},
    {"SCRIPT_MAX_CODE_BYTES", T_SIZE, F(script_max_code_bytes), "256KiB", 16, 16 * 1024 * KiB, NULL},
    {"SCRIPT_MAX_LOGS", T_INT, F(script_max_logs), "100", 0, 100000, NULL},
    {"SCRIPT_MAX_LOG_BYTES", T_SIZE, F(script_max_log_bytes), "64KiB", 0, 16 * 1024 * KiB, NULL},
    {"HTTP_MAX_RESPONSE_BYTES", T_SIZE, F(http_max_response_bytes), "10MiB", 1, 1024 * 1024 * KiB, NULL},
    {"HTTP_MAX_REDIRECTS", T_INT, F(http_max_redirects), "5", 0, 50, NULL},
    {"HTTP_MAX_RESPONSE_HEADER_BYTES", T_SIZE, F(http_max_response_header_bytes), "64KiB", KiB,
     16 * 1024 * KiB, NULL},
    {"HTTP_ALLOW_CIDRS", T_STR, F(http_allow_cidrs), NULL, 0, 0, NULL},
    {"HTTP_ALLOW_HOSTS", T_STR, F(http_allow_hosts), NULL, 0, 0, NULL},
    {"HTTP_CA_FILE", T_STR, F(http_ca_file), NULL, 0, 0, NULL},
    {"SQL_CONNECTIONS", T_SECRET, F(sql_connections), NULL, 0, 0, NULL},
    {"SQL_ALLOW_PAYLOAD_DSN", T_BOOL, F(sql_allow_payload_dsn), "true", 0, 0, NULL},
    {"SQL_POOL_MAX", T_INT, F(sql_pool_max), "5", 1, 1000, NULL},
    {"SQL_POOL_IDLE_MS", T_INT, F(sql_pool_idle_ms), "60000", 100, 86400000, NULL},
    {"SQL_MAX_ROWS", T_INT, F(sql_max_rows), "1000", 1, 10000000, NULL},
    {"SQL_MAX_RESULT_BYTES", T_SIZE, F(sql_max_result_bytes), "16MiB", KiB, 1024 * 1024 * KiB, NULL},
    {"APPROVAL_DIR", T_STR, F(approval_dir), "/tmp/worker-approvals", 0, 0, NULL},
    {"APPROVAL_MAX_PENDING", T_INT, F(approval_max_pending), "10000", 1, 1000000, NULL},
    {"APPROVAL_TOKEN", T_SECRET, F(approval_token), NULL, 0, 0, NULL},
    {"APPROVAL_ALLOW_AUTO", T_BOOL, F(approval_allow_auto), "false", 0, 0, NULL},
    {"LOG_LEVEL", T_ENUM, F(log_level), "info", 0, 0, log_levels},
    {"LOG_FORMAT", T_ENUM, F(log_json), "json", 0, 0, log_formats},
    {"LOG_BUFFER_BYTES", T_SIZE, F(log_buffer_bytes), "4MiB", 64 * KiB, 1024 * 1024 * KiB, NULL},
    {"HEALTH_MAX_CONNECTIONS", T_INT, F(health_max_connections), "128", 4, 100000, NULL},
    {"HEALTH_HEADER_TIMEOUT_MS", T_INT, F(health_header_timeout_ms), "2000", 100, 600000, NULL},
};

#define NROWS (sizeof rows / sizeof rows[0])

int64_t bw_parse_size(const char *s)
{
    static const struct {
        const char *unit;
        int64_t mult;
    } units[] = {{"", 1},
                 {"b", 1},
                 {"kb", 1000},
                 {"mb", 1000000},
                 {"gb", 1000000000},
                 {"tb", 1000000000000LL},
                 {"k", 1000},
                 {"m", 1000000},
                 {"g", 1000000000},
                 {"kib", 1LL << 10},
                 {"mib", 1LL << 20},
                 {"gib", 1LL << 30},
                 {"tib", 1LL << 40}};
    char *end;
    if (s == NULL || !isdigit((unsigned char)*s))
        return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0)
        return -1;
    while (*end == ' ')
        end++;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcasecmp(end, units[i].unit) != 0)
            continue;
        if (v > (unsigned long long)(INT64_MAX / units[i].mult))
            return -1;
        return (int64_t)v * units[i].mult;
    }
    return -1;
}

static bool token_char(char c)
{
    return isalnum((unsigned char)c) || c == '_' || c == '-';
}

bool bw_subject_valid(const char *s)
{
    size_t n = strlen(s), tok = 0;
    if (n == 0 || n > 255)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '.') {
            if (tok == 0)
                return false;
            tok = 0;
        } else if (token_char(s[i])) {
            tok++;
        } else {
            return false;
        }
    }
    return tok > 0;
}

static bool group_valid(const char *s)
{
    for (; *s; s++)
        if (!token_char(*s) && *s != '.')
            return false;
    return true;
}

static bool id_valid(const char *s, int64_t min, int64_t max)
{
    size_t n = strlen(s);
    if ((int64_t)n < min || (int64_t)n > max)
        return false;
    for (; *s; s++)
        if (!token_char(*s) && *s != '.' && *s != ':')
            return false;
    return true;
}

/* JetStream names end up in API subjects ($JS.API.STREAM.INFO.<name>, $KV.<bucket>.): one token. */
static bool name_valid(const char *s, int64_t min, int64_t max)
{
    size_t n = strlen(s);
    if ((int64_t)n < min || (int64_t)n > max)
        return false;
    for (; *s; s++)
        if (!token_char(*s))
            return false;
    return true;
}

static bool url_valid(const char *s)
{
    /* A comma-separated list of nats://, tls://, ws:// or wss:// URLs, or bare host:port entries. */
    char *copy = bw_strdup(s), *save = NULL;
    bool ok = *s != '\0';
    for (char *u = strtok_r(copy, ",", &save); u != NULL && ok; u = strtok_r(NULL, ",", &save)) {
        while (*u == ' ')
            u++;
        const char *sep = strstr(u, "://");
        if (sep != NULL) {
            size_t sl = (size_t)(sep - u);
            ok = (sl == 4 && strncmp(u, "nats", 4) == 0) || (sl == 3 && strncmp(u, "tls", 3) == 0) ||
                 (sl == 2 && strncmp(u, "ws", 2) == 0) || (sl == 3 && strncmp(u, "wss", 3) == 0);
            u += sl + 3;
        }
        ok = ok && *u != '\0' && strpbrk(u, " \t") == NULL;
    }
    free(copy);
    return ok;
}

static bool hostport_valid(const char *s)
{
    if (strcmp(s, "off") == 0)
        return true;
    const char *colon = strrchr(s, ':');
    if (colon == NULL || colon == s)
        return false;
    char *end;
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    return errno == 0 && *end == '\0' && colon[1] != '\0' && port >= 0 && port <= 65535;
}

static int parse_bool(const char *s)
{
    static const char *const yes[] = {"true", "1", "yes", "on"}, *const no[] = {"false", "0", "no", "off"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0)
            return 1;
        if (strcasecmp(s, no[i]) == 0)
            return 0;
    }
    return -1;
}

static int parse_int(const char *s, int64_t *out)
{
    char *end;
    if (*s == '\0')
        return -1;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return -1;
    *out = v;
    return 0;
}

static int enum_index(const char *const *choices, const char *s)
{
    for (int i = 0; choices[i] != NULL; i++)
        if (strcmp(choices[i], s) == 0)
            return i;
    return -1;
}

static void describe_range(const row_t *r, char *buf, size_t len)
{
    switch (r->kind) {
    case T_INT:
        snprintf(buf, len, "an integer in %" PRId64 "..%" PRId64, r->min, r->max);
        break;
    case T_SIZE:
        snprintf(buf, len, "a size in %" PRId64 "..%" PRId64 " bytes (e.g. 4096, 512KiB, 100MB, 1GB)", r->min,
                 r->max);
        break;
    case T_BOOL:
        snprintf(buf, len, "true or false");
        break;
    case T_ENUM: {
        size_t o = (size_t)snprintf(buf, len, "one of");
        for (int i = 0; r->choices[i] != NULL && o < len; i++)
            o += (size_t)snprintf(buf + o, len - o, "%s %s", i ? "," : "", r->choices[i]);
        break;
    }
    case T_SUBJECT:
        snprintf(buf, len, "a NATS subject: tokens of letters, digits, '_' or '-' separated by '.'");
        break;
    case T_GROUP:
        snprintf(buf, len, "empty or letters, digits, '_', '-', '.'");
        break;
    case T_ID:
        snprintf(buf, len, "%" PRId64 "..%" PRId64 " characters of letters, digits, '_', '-', '.', ':'",
                 r->min, r->max);
        break;
    case T_NAME:
        snprintf(buf, len, "%" PRId64 "..%" PRId64 " characters of letters, digits, '_', '-'", r->min,
                 r->max);
        break;
    case T_URL:
        snprintf(buf, len, "nats://host:port (or tls://, ws://, wss://), comma-separated for several");
        break;
    case T_HOSTPORT:
        snprintf(buf, len, "host:port with port 0..65535 (0 = any free port), or off");
        break;
    default:
        snprintf(buf, len, "a non-empty string");
    }
}

/* Validates and stores one value; returns 0 or -1 when it is out of range. */
static int store(bw_config_t *c, const row_t *r, const char *v)
{
    void *field = (char *)c + r->off;
    int64_t n = 0;
    int i;
    switch (r->kind) {
    case T_INT:
        if (parse_int(v, &n) < 0 || n < r->min || n > r->max)
            return -1;
        *(int64_t *)field = n;
        return 0;
    case T_SIZE:
        n = bw_parse_size(v);
        if (n < 0 || n < r->min || n > r->max)
            return -1;
        *(int64_t *)field = n;
        return 0;
    case T_BOOL:
        if ((i = parse_bool(v)) < 0)
            return -1;
        *(bool *)field = i == 1;
        return 0;
    case T_ENUM:
        if ((i = enum_index(r->choices, v)) < 0)
            return -1;
        if (r->off == F(envelope) || r->off == F(log_json))
            *(bool *)field = i == 1;
        else
            *(int64_t *)field = i;
        return 0;
    case T_SUBJECT:
        if (!bw_subject_valid(v))
            return -1;
        break;
    case T_GROUP:
        if (!group_valid(v))
            return -1;
        break;
    case T_ID:
        if (!id_valid(v, r->min, r->max))
            return -1;
        break;
    case T_URL:
        if (!url_valid(v))
            return -1;
        break;
    case T_HOSTPORT:
        if (!hostport_valid(v))
            return -1;
        break;
    case T_NAME:
        if (!name_valid(v, r->min, r->max))
            return -1;
        break;
    default:
        if (*v == '\0')
            return -1;
    }
    free(*(char **)field);
    *(char **)field = bw_strdup(v);
    return 0;
}

static int fail(const row_t *r, const char *v, char *err, size_t errlen)
{
    char range[256];
    describe_range(r, range, sizeof range);
    bool secret = r->kind == T_SECRET || r->kind == T_URL;
    snprintf(err, errlen, "invalid configuration: %s=%s%s%s: expected %s", r->name, secret ? "" : "'",
             secret ? "<redacted>" : v, secret ? "" : "'", range);
    return -1;
}

static void set_worker_id_default(bw_config_t *c)
{
    char uuid[BW_UUID_STRLEN + 1];
    bw_uuid_v4(uuid);
    c->worker_id = bw_asprintf("worker-%s", uuid);
}

/* Run by systemd with StateDirectory= (deploy/systemd/beamline-worker.service), the worker's files default
   to that directory (the first of $STATE_DIRECTORY's colon-separated list) instead of /tmp: the DLQ, the
   blobs and the approval journal. A default for r there (malloc'd), or NULL. */
static char *state_default(const row_t *r)
{
    static const struct {
        size_t off;
        const char *name;
    } in_state[] = {{F(fs_base_dir), "blobs"}, {F(dlq_path), "dlq.jsonl"}, {F(approval_dir), "approvals"}};
    const char *state = getenv("STATE_DIRECTORY");
    if (state == NULL || state[0] != '/')
        return NULL;
    size_t n = strcspn(state, ":");
    for (size_t i = 0; i < sizeof in_state / sizeof in_state[0]; i++)
        if (in_state[i].off == r->off)
            return bw_asprintf("%.*s/%s", (int)n, state, in_state[i].name);
    return NULL;
}

int bw_config_pairs(const char *var, const char *s, int64_t min, int64_t max,
                    int (*each)(void *ud, const char *name, size_t len, int64_t value, char *err,
                                size_t errlen),
                    void *ud, char *err, size_t errlen)
{
    const char *all = s;
    while (s != NULL && *s != '\0') {
        size_t n = strcspn(s, ",");
        const char *b = s, *e = s + n;
        s = *e == ',' ? e + 1 : e;
        while (b < e && isspace((unsigned char)*b))
            b++;
        while (e > b && isspace((unsigned char)e[-1]))
            e--;
        if (b == e)
            continue;
        const char *eq = NULL;
        for (const char *p = b; p < e; p++)
            if (*p == '=')
                eq = p;
        const char *ne = eq;
        while (ne != NULL && ne > b && isspace((unsigned char)ne[-1]))
            ne--;
        char num[32];
        int64_t v = 0;
        size_t vl = eq != NULL ? (size_t)(e - eq - 1) : 0;
        if (vl < sizeof num) {
            memcpy(num, eq != NULL ? eq + 1 : "", vl);
            num[vl] = '\0';
        }
        if (eq == NULL || ne == b || vl >= sizeof num || parse_int(num, &v) < 0 || v < min || v > max) {
            snprintf(err, errlen,
                     "invalid configuration: %s=%s: expected a list of name=N (N in %" PRId64 "..%" PRId64
                     "), comma-separated; '%.*s' is not",
                     var, all, min, max, (int)(e - b > 100 ? 100 : e - b), b);
            return -1;
        }
        char why[200] = "";
        if (each != NULL && each(ud, b, (size_t)(ne - b), v, why, sizeof why) < 0) {
            snprintf(err, errlen, "invalid configuration: %s: %s", var, why);
            return -1;
        }
    }
    return 0;
}

static int known_type(void *ud, const char *name, size_t len, int64_t value, char *err, size_t errlen)
{
    (void)ud;
    (void)value;
    for (const char *const *t = bw_handler_names(); *t != NULL; t++)
        if (strlen(*t) == len && memcmp(*t, name, len) == 0)
            return 0;
    snprintf(err, errlen, "'%.*s' is not a job type (see --help for the job types)",
             (int)(len > 100 ? 100 : len), name);
    return -1;
}

static int tenant_name_ok(void *ud, const char *name, size_t len, int64_t value, char *err, size_t errlen)
{
    (void)ud;
    (void)name;
    (void)value;
    if (len <= 256)
        return 0;
    snprintf(err, errlen, "a tenant id has at most 256 bytes (one has %zu)", len);
    return -1;
}

static int check_scheduling(const bw_config_t *c, char *err, size_t errlen)
{
    if (bw_config_pairs("WORKER_TYPE_CONCURRENCY", c->type_concurrency, 0, 100000, known_type, NULL, err,
                        errlen) < 0)
        return -1;
    return bw_config_pairs("TENANT_WEIGHTS", c->tenant_weights, 1, 1000, tenant_name_ok, NULL, err, errlen);
}

int bw_config_load(bw_config_t *c, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < NROWS; i++) {
        const row_t *r = &rows[i];
        const char *v = getenv(r->name);
        char *state = NULL;
        if (v == NULL || (*v == '\0' && r->kind != T_GROUP))
            v = (state = state_default(r)) != NULL ? state : r->def;
        if (v == NULL)
            continue;
        int rc = store(c, r, v) < 0 ? fail(r, v, err, errlen) : 0;
        free(state);
        if (rc < 0)
            return rc;
    }
    if (c->worker_id == NULL)
        set_worker_id_default(c);
    const char *tqm = getenv("TENANT_QUEUE_MAX");
    if (tqm == NULL || *tqm == '\0')
        c->tenant_queue_max = c->queue_max;
    if (check_scheduling(c, err, errlen) < 0)
        return -1;
    if (c->dlq_total_max_bytes < c->dlq_max_bytes) {
        snprintf(err, errlen,
                 "invalid configuration: DLQ_TOTAL_MAX_BYTES=%" PRId64
                 ": expected at least DLQ_MAX_BYTES (%" PRId64 ")",
                 c->dlq_total_max_bytes, c->dlq_max_bytes);
        return -1;
    }
    if ((c->nats_nkey == NULL) != (c->nats_nkey_seed == NULL)) {
        snprintf(
            err, errlen,
            "invalid configuration: %s: NATS_NKEY (public key) and NATS_NKEY_SEED (seed file) go together",
            c->nats_nkey ? "NATS_NKEY_SEED" : "NATS_NKEY");
        return -1;
    }
    bw_egress_t *egress = bw_egress_create(c->http_allow_cidrs, c->http_allow_hosts, err + 0, errlen);
    if (egress == NULL) {
        char why[300];
        snprintf(why, sizeof why, "%s", err);
        snprintf(err, errlen, "invalid configuration: %s", why);
        return -1;
    }
    bw_egress_destroy(egress);
    if (c->approval_token != NULL && strlen(c->approval_token) < BW_APPROVAL_TOKEN_MIN) {
        snprintf(
            err, errlen,
            "invalid configuration: APPROVAL_TOKEN=<redacted>: expected at least %d characters (a guessable "
            "token protects nothing; e.g. openssl rand -hex 32)",
            BW_APPROVAL_TOKEN_MIN);
        return -1;
    }
    if ((c->nats_tls_cert == NULL) != (c->nats_tls_key == NULL)) {
        snprintf(err, errlen, "invalid configuration: %s: NATS_TLS_CERT and NATS_TLS_KEY go together",
                 c->nats_tls_cert ? "NATS_TLS_KEY" : "NATS_TLS_CERT");
        return -1;
    }
    return 0;
}

void bw_config_dispose(bw_config_t *c)
{
    for (size_t i = 0; i < NROWS; i++) {
        kind_t k = rows[i].kind;
        if (k == T_STR || k == T_SECRET || k == T_URL || k == T_SUBJECT || k == T_GROUP || k == T_ID ||
            k == T_HOSTPORT || k == T_NAME) {
            char **f = (char **)((char *)c + rows[i].off);
            free(*f);
            *f = NULL;
        }
    }
}

char *bw_redact_url(const char *url)
{
    /* Each comma-separated URL loses its user-info (user:password@ or token@). */
    size_t n = strlen(url);
    char *out = bw_malloc(n * 2 + 8), *o = out;
    const char *p = url;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        const char *scheme = strstr(p, "://");
        const char *host = (scheme && scheme < p + len) ? scheme + 3 : p;
        const char *at = memchr(host, '@', len - (size_t)(host - p));
        if (at != NULL) {
            memcpy(o, p, (size_t)(host - p));
            o += host - p;
            memcpy(o, "***", 3);
            o += 3;
            memcpy(o, at, len - (size_t)(at - p));
            o += len - (size_t)(at - p);
        } else {
            memcpy(o, p, len);
            o += len;
        }
        p += len;
        if (*p == ',')
            *o++ = *p++;
    }
    *o = '\0';
    return out;
}

static json_t *row_value(const bw_config_t *c, const row_t *r)
{
    const void *field = (const char *)c + r->off;
    switch (r->kind) {
    case T_INT:
    case T_SIZE:
        if (r->def == NULL && *(const int64_t *)field == 0)
            return NULL;
        return json_integer(*(const int64_t *)field);
    case T_BOOL:
        return json_boolean(*(const bool *)field);
    case T_ENUM:
        if (r->off == F(envelope) || r->off == F(log_json))
            return json_string(r->choices[*(const bool *)field ? 1 : 0]);
        return json_string(r->choices[*(const int64_t *)field]);
    default:
        break;
    }
    const char *s = *(char *const *)field;
    if (s == NULL)
        return NULL;
    if (r->kind == T_SECRET)
        return json_string("[redacted]");
    if (r->kind == T_URL) {
        char *red = bw_redact_url(s);
        json_t *j = json_string(red);
        free(red);
        return j;
    }
    return json_string(s);
}

char *bw_config_to_json(const bw_config_t *c)
{
    json_t *o = json_object();
    for (size_t i = 0; i < NROWS; i++) {
        json_t *v = row_value(c, &rows[i]);
        if (v != NULL)
            json_object_set_new(o, rows[i].name, v);
    }
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(o);
    return s;
}
