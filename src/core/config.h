/*
 * Worker configuration, read once from the environment at start-up. Every variable has a default and a
 * validated range; an invalid value is reported naming the variable and the accepted range, and the
 * process exits with code 2 (see main.c). The README's configuration table mirrors the table in config.c.
 */
#ifndef BW_CORE_CONFIG_H
#define BW_CORE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BW_APPROVAL_TOKEN_MIN 16 /* characters */

typedef struct bw_config {
    /* NATS connection */
    char *nats_url;
    char *nats_creds;
    char *nats_nkey;      /* user NKey public key */
    char *nats_nkey_seed; /* path of the file holding the NKey seed */
    char *nats_tls_ca;
    char *nats_tls_cert;
    char *nats_tls_key;
    int64_t nats_reconnect_buf_bytes; /* publishes buffered while disconnected */
    /* identity and capacity */
    char *worker_id;
    int64_t max_concurrency;
    int64_t queue_max;
    int64_t threadpool_size; /* libuv thread pool threads; 0 = derived from max_concurrency */
    /* scheduling (README "Scheduling", core/sched.h) */
    char *type_concurrency;         /* WORKER_TYPE_CONCURRENCY: "type=N,..." (validated) */
    char *tenant_weights;           /* TENANT_WEIGHTS: "tenant=W,..." (validated) */
    int64_t tenant_max_concurrency; /* 0: no cap */
    int64_t tenant_queue_max;       /* WORKER_QUEUE_MAX when unset */
    bool metrics_tenant_labels;
    char *fs_base_dir;
    bool fs_tenant_isolation;  /* a directory per tenant under fs_base_dir */
    int64_t fs_max_blob_bytes; /* largest blob put or got */
    /* subjects */
    char *assign_subject;
    char *queue_group;
    char *result_subject;
    char *heartbeat_subject;
    char *dlq_subject;
    char *ack_subject;
    char *cancel_subject;
    char *approval_request_subject;  /* ApprovalRequests are published here */
    char *approval_decision_subject; /* decisions (requests); the worker also listens on <this>.<worker> */
    char *approval_list_subject;     /* requests for the pending approvals; every worker answers */
    bool envelope;
    bool ack_enabled;
    /* JetStream delivery (CAF_CONSUMER=jetstream): net/busjs.c */
    int64_t js_mode; /* 0 core, 1 jetstream */
    char *js_stream;
    bool js_create; /* create the stream and the results bucket when missing */
    int64_t js_replicas;
    char *js_durable;
    int64_t js_ack_wait_ms;
    int64_t js_max_deliver;
    int64_t js_nak_delay_ms;
    char *js_results_bucket;
    bool js_result_store; /* share finished results through js_results_bucket (read before, write after) */
    char *js_approvals_bucket; /* pending approvals, shared by every worker (instead of APPROVAL_DIR) */
    /* timing */
    int64_t heartbeat_interval_ms;
    int64_t default_job_timeout_ms;
    int64_t shutdown_timeout_ms;
    /* operations */
    char *health_bind;
    char *dlq_path;
    int64_t dlq_max_bytes;
    int64_t dlq_total_max_bytes;
    int64_t dlq_max_age_days; /* 0 = no age limit */
    int64_t dlq_max_rotations;
    int64_t dlq_message_max_bytes; /* originals larger than this keep only their hash and length */
    int64_t result_publish_max_retries;
    int64_t dedup_max_entries;
    int64_t dedup_ttl_ms;
    int64_t dedup_max_bytes;
    /* handlers */
    int64_t jmespath_cache_entries;        /* compiled expressions kept (LRU); 0 = no cache */
    int64_t jmespath_max_expression_bytes; /* longer expressions are refused */
    int64_t script_pool_size;              /* sandbox processes; 0 = one per CPU */
    int64_t script_max_memory_mb;          /* a sandbox past this resident size is killed */
    int64_t script_max_output_bytes;       /* the script's value as JSON */
    int64_t script_max_code_bytes;
    int64_t script_max_logs;         /* console entries kept per job */
    int64_t script_max_log_bytes;    /* console bytes kept per job */
    int64_t http_max_response_bytes; /* default max_response_bytes of http jobs */
    int64_t http_max_redirects;
    int64_t http_max_response_header_bytes; /* all response headers of one hop together */
    char *http_allow_cidrs;                 /* egress policy: net/egress.h */
    char *http_allow_hosts;
    char *http_ca_file;    /* CA bundle for TLS verification; NULL: the system's */
    char *sql_connections; /* "name=postgresql://...;name2=..." (secret: passwords) */
    bool sql_allow_payload_dsn;
    int64_t sql_pool_max; /* connections per connection string */
    int64_t sql_pool_idle_ms;
    int64_t sql_max_rows;         /* default and largest max_rows */
    int64_t sql_max_result_bytes; /* rows held for one job, as JSON */
    /* human approval */
    char *approval_dir; /* the journal of pending approvals */
    int64_t approval_max_pending;
    char *approval_token;     /* bearer token of the HTTP approvals API; NULL: the API is off (404) */
    bool approval_allow_auto; /* honour a payload's "response" (an automatic decision) */
    int64_t log_level;        /* bw_log_level_t */
    int64_t log_buffer_bytes; /* log lines waiting for stdout; beyond it lines are dropped and counted */
    /* health server */
    int64_t health_max_connections;
    int64_t health_header_timeout_ms; /* a request's line and headers must arrive within this */
    bool log_json;
} bw_config_t;

/* Loads every variable from the environment into c (caller disposes with bw_config_dispose, also on
   failure). Returns 0, or -1 with a one-line message naming the variable and its range in err. */
int bw_config_load(bw_config_t *c, char *err, size_t errlen);
void bw_config_dispose(bw_config_t *c);
/* The effective configuration as a JSON object string with secrets redacted; caller frees. */
char *bw_config_to_json(const bw_config_t *c);
/* Parses "100MB", "1GB", "512KiB", "4096" (decimal SI units, binary IEC units); -1 when invalid. */
int64_t bw_parse_size(const char *s);
/* A NATS subject of tokens [A-Za-z0-9_-] separated by single dots, no empty tokens, ≤ 255 bytes. */
bool bw_subject_valid(const char *s);
/* The URL with any user-info replaced by "***" (for logs); caller frees. */
char *bw_redact_url(const char *url);

/* Reads a list "name=N,name=N" (blanks around items ignored; the last '=' of an item splits it, so a name
   may hold '='; a name holds no ','): calls each for every item, N in min..max. -1 with err naming var
   when an item is malformed, out of range, or each refuses it (returning -1 after writing why into err). */
int bw_config_pairs(const char *var, const char *s, int64_t min, int64_t max,
                    int (*each)(void *ud, const char *name, size_t len, int64_t value, char *err, size_t errlen),
                    void *ud, char *err, size_t errlen);

#endif
