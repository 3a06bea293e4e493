/*
 * Executable spec of the Beamline router's result/ack intake (router commit e0f88a0, as captured
 * in tests/fixtures/router/result-verdicts.jsonl). A message runs through a fixed sequence of
 * steps; the first step that objects decides the reject code. The labels in the comments are the
 * fixture lines that pin each rule down.
 *
 * Two facts about the router explain most of the odd-looking verdicts:
 *  - It decodes JSON with Erlang's jsx, where `null` is the atom null, not "absent". Presence
 *    checks therefore treat a null field as present, and a later step that needs a string then
 *    either fails validation or crashes. Crashes are caught and reported as
 *    INTERNAL_VALIDATION_ERROR.
 *  - Ids are recorded ("check_and_mark") after the field checks but *before* the tenant check and
 *    before usage/circuit-breaker processing. A message rejected for its tenant or by a crash
 *    after that point is still remembered, and its redelivery is a DUPLICATE (c7b, c8b), while one
 *    rejected earlier is not (f5b, f5c).
 */
#include "router_check.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct bw_router_check {
    pthread_mutex_t mu;
    json_t *seen_results; /* compact JSON of the result dedup key -> true */
    json_t *seen_acks;    /* same for acks: the router keeps them under another key type */
};

typedef enum { KIND_RESULT, KIND_ACK } msg_kind_t;

typedef struct check_ctx {
    bw_router_check_t *rc;
    msg_kind_t kind;
    const char *subject;
    json_t *headers; /* borrowed; may be NULL */
    const char *payload;
    size_t len;
    json_t *msg; /* decoded payload, owned; set by step_schema */
} check_ctx_t;

/* A step returns NULL to let the message through, or its reject code. */
typedef const char *(*check_fn)(check_ctx_t *cx);

/* ---- string predicates (all length-aware: JSON strings may contain NUL) -------------------- */

static int is_hex(char ch)
{
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

/* 8-4-4-4-12 hex, any case, version nibble 4, variant 8/9/a/b (d4, e6 pass; d6, e5 do not). */
static int is_uuid_v4(const char *s, size_t n)
{
    if (n != 36 || s[14] != '4' || strchr("89abAB", s[19]) == NULL || s[19] == '\0')
        return 0;
    for (size_t i = 0; i < n; i++) {
        int dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? s[i] != '-' : !is_hex(s[i]))
            return 0;
    }
    return 1;
}

/* 26 upper-case Crockford base32 characters (no I, L, O, U). Lower case is refused (d7). */
static int is_ulid(const char *s, size_t n)
{
    static const char alphabet[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

    if (n != 26)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\0' || strchr(alphabet, s[i]) == NULL)
            return 0;
    }
    return 1;
}

/* A W3C trace id: exactly 32 hex characters, any case (a1, e7 pass; e1, e2, e3, e4 do not). */
static int is_hex32(const char *s, size_t n)
{
    if (n != 32)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (!is_hex(s[i]))
            return 0;
    }
    return 1;
}

/* v is a JSON string equal to lit. */
static int str_eq(const json_t *v, const char *lit)
{
    size_t n = strlen(lit);

    return json_is_string(v) && json_string_length(v) == n && memcmp(json_string_value(v), lit, n) == 0;
}

static int str_in(const json_t *v, const char *const *set)
{
    for (size_t i = 0; set[i] != NULL; i++) {
        if (str_eq(v, set[i]))
            return 1;
    }
    return 0;
}

/* The header value, or NULL when the header is absent (an empty value is present). */
static json_t *header(const check_ctx_t *cx, const char *name)
{
    return cx->headers != NULL ? json_object_get(cx->headers, name) : NULL;
}

/* ---- step: schema ------------------------------------------------------------------------ */

/* The payload must decode to a JSON object (f11 not JSON, f12 an array). */
static const char *step_schema(check_ctx_t *cx)
{
    /* JSON_ALLOW_NUL: jsx accepts \u0000 inside strings, so a NUL must not fail the schema. */
    cx->msg = json_loadb(cx->payload, cx->len, JSON_ALLOW_NUL, NULL);
    return json_is_object(cx->msg) ? NULL : "SCHEMA_VALIDATION_FAILED";
}

/* ---- step: version ----------------------------------------------------------------------- */

/* The version in a subject: digits of the first ".v<digits>." (the dots on both sides matter:
   "caf.exec.assign.v1.ack" gives "1", "caf.exec.result.v1" gives nothing). Returns 1 when it is
   exactly "1". */
static int subject_version_is_1(const char *subject)
{
    for (const char *p = strstr(subject, ".v"); p != NULL; p = strstr(p + 1, ".v")) {
        size_t digits = strspn(p + 2, "0123456789");
        if (digits > 0 && p[2 + digits] == '.')
            return digits == 1 && p[2] == '1';
    }
    return 0;
}

/* The version in force is the header's if there is one, else the payload's (null included),
   else the subject's; only the string "1" is supported.
     f7 header 1 beats payload "1.0"; f8 header "1.0" beats payload "1"; b2 header 1 lets a Rust
     envelope through to the next step; b1/b3/g8 "v1"/"1.0"; f6 missing, and the result subject
     has no ".v1."; g5 an ack without version gets "1" from its subject.
   On failure the router formats the *payload* version into its error message as a binary, which
   crashes for a non-string: c11 null, f5 number -> INTERNAL_VALIDATION_ERROR. */
static const char *step_version(check_ctx_t *cx)
{
    json_t *from_payload = json_object_get(cx->msg, "version");
    json_t *from_header = header(cx, "version");
    int ok;

    if (from_header != NULL)
        ok = str_eq(from_header, "1");
    else if (from_payload != NULL)
        ok = str_eq(from_payload, "1");
    else
        ok = subject_version_is_1(cx->subject);
    if (ok)
        return NULL;
    return from_payload != NULL && !json_is_string(from_payload) ? "INTERNAL_VALIDATION_ERROR"
                                                                  : "VERSION_UNSUPPORTED";
}

/* ---- step: correlation fields (payload only; headers play no part here) ------------------ */

/* tenant_id must be present and not "" (f9 header only, f10 empty, g4 ack without it, b2 the
   envelope has none at top level). A null passes here: jsx's null is neither absent nor "" (c8). */
static int tenant_field_ok(const json_t *msg)
{
    json_t *t = json_object_get(msg, "tenant_id");

    return t != NULL && !(json_is_string(t) && json_string_length(t) == 0);
}

/* run_id, flow_id and step_id come all together or not at all, null counting as present
   (d1 run only, d2 no step, d3 no run, b4 run only, c3 run_id null). */
static int run_ids_all_or_none(const json_t *msg)
{
    int n = (json_object_get(msg, "run_id") != NULL) + (json_object_get(msg, "flow_id") != NULL) +
            (json_object_get(msg, "step_id") != NULL);

    return n == 0 || n == 3;
}

/* When present, each is a string holding a UUID v4 or a ULID (d4, d5 pass; d6, d7, c1 do not). */
static int run_id_format_ok(const json_t *v)
{
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);

    return v == NULL || (s != NULL && (is_uuid_v4(s, n) || is_ulid(s, n)));
}

/* When present, trace_id is a string of 32 hex or a UUID v4 (e1-e9, c2 null). */
static int trace_id_ok(const json_t *v)
{
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);

    return v == NULL || (s != NULL && (is_hex32(s, n) || is_uuid_v4(s, n)));
}

/* When present, idempotency_key is a string of 1..256 bytes (c12 null, f15 "", f16 257 bytes). */
static int idempotency_key_ok(const json_t *v)
{
    return v == NULL || (json_is_string(v) && json_string_length(v) >= 1 && json_string_length(v) <= 256);
}

static const char *step_correlation(check_ctx_t *cx)
{
    const json_t *m = cx->msg;
    int ok = tenant_field_ok(m) && run_ids_all_or_none(m) &&
             run_id_format_ok(json_object_get(m, "run_id")) &&
             run_id_format_ok(json_object_get(m, "flow_id")) &&
             run_id_format_ok(json_object_get(m, "step_id")) &&
             trace_id_ok(json_object_get(m, "trace_id")) &&
             idempotency_key_ok(json_object_get(m, "idempotency_key"));

    return ok ? NULL : "CORRELATION_FIELDS_INVALID";
}

/* ---- step: message-specific required fields ---------------------------------------------- */

/* A result needs assignment_id or request_id (a6 request_id alone is fine; f4 neither), and a
   status spelled exactly success/error/timeout/cancelled (f3 missing; c10 null, f2 "canceled",
   f17 "Success"). */
static const char *step_result_fields(check_ctx_t *cx)
{
    static const char *const statuses[] = {"success", "error", "timeout", "cancelled", NULL};
    json_t *status = json_object_get(cx->msg, "status");

    if (json_object_get(cx->msg, "assignment_id") == NULL && json_object_get(cx->msg, "request_id") == NULL)
        return "MISSING_CORRELATION_ID";
    if (status == NULL)
        return "MISSING_STATUS";
    return str_in(status, statuses) ? NULL : "INVALID_STATUS";
}

/* An ack needs assignment_id (g7) and a status of accepted/rejected/error (g3 "ok"; g6 rejected). */
static const char *step_ack_fields(check_ctx_t *cx)
{
    static const char *const statuses[] = {"accepted", "rejected", "error", NULL};
    json_t *status = json_object_get(cx->msg, "status");

    if (json_object_get(cx->msg, "assignment_id") == NULL)
        return "MISSING_ASSIGNMENT_ID";
    if (status == NULL)
        return "MISSING_STATUS";
    return str_in(status, statuses) ? NULL : "INVALID_STATUS";
}

/* ---- step: duplicates -------------------------------------------------------------------- */

/* The id a message is remembered under: a result's assignment_id, else its request_id (any JSON
   value, null included: c9); an ack's assignment_id. */
static json_t *dedup_key(const check_ctx_t *cx)
{
    json_t *aid = json_object_get(cx->msg, "assignment_id");

    return aid != NULL || cx->kind == KIND_ACK ? aid : json_object_get(cx->msg, "request_id");
}

/* Results and acks are tracked separately (f1 duplicates a2; g2 duplicates g1; c7b, c8b). The key
   is compared as JSON, so "85" and 85 stay distinct. rc->mu held. */
static const char *step_duplicate(check_ctx_t *cx)
{
    json_t *seen = cx->kind == KIND_ACK ? cx->rc->seen_acks : cx->rc->seen_results;
    char *key = json_dumps(dedup_key(cx), JSON_ENCODE_ANY | JSON_COMPACT | JSON_SORT_KEYS);
    const char *verdict = NULL;

    if (key == NULL)
        return "INTERNAL_VALIDATION_ERROR"; /* out of memory: never reached in practice */
    if (json_object_get(seen, key) != NULL)
        verdict = "DUPLICATE";
    else
        json_object_set_new(seen, key, json_true());
    free(key);
    return verdict;
}

/* ---- step: tenant ------------------------------------------------------------------------ */

/* The tenant in force is the tenant_id header if present (even ""), else the payload's; it must
   be a non-empty string. f14 header "globex" over payload "acme" is fine (no allow-list); f21
   header "" fails although the payload is fine; c8 payload null fails here, after being recorded. */
static const char *step_tenant(check_ctx_t *cx)
{
    json_t *h = header(cx, "tenant_id");
    json_t *t = h != NULL ? h : json_object_get(cx->msg, "tenant_id");

    return json_is_string(t) && json_string_length(t) > 0 ? NULL : "TENANT_VALIDATION_FAILED";
}

/* ---- step: crashes while processing an accepted message ---------------------------------- */

/* The fixture was produced without a transport message id, so the router falls back to the
   payload's msg_id and crashes when that is not a string (no fixture line; from the same code
   path as the others). */
static int msg_id_crashes(const json_t *msg)
{
    json_t *v = json_object_get(msg, "msg_id");

    return v != NULL && !json_is_string(v);
}

/* Processing a result builds "usage-" ++ <dedup key> as a binary (c9 null, f18 numeric
   assignment_id crash) and hands provider_id to the circuit breaker, which only takes a string
   or absence (c7 null, f19 number). Both happen after the id was recorded (c7b). */
static const char *step_result_crash(check_ctx_t *cx)
{
    json_t *provider = json_object_get(cx->msg, "provider_id");

    if (!json_is_string(dedup_key(cx)) || (provider != NULL && !json_is_string(provider)) ||
        msg_id_crashes(cx->msg))
        return "INTERNAL_VALIDATION_ERROR";
    return NULL;
}

static const char *step_ack_crash(check_ctx_t *cx)
{
    return msg_id_crashes(cx->msg) ? "INTERNAL_VALIDATION_ERROR" : NULL;
}

/* ---- the pipelines ----------------------------------------------------------------------- */

/* The order is the router's: intake validation (schema, version, correlation), then the
   consumer's own field checks, then the id is recorded, then the tenant, then processing. */
static const check_fn result_steps[] = {
    step_schema,        /* SCHEMA_VALIDATION_FAILED */
    step_version,       /* VERSION_UNSUPPORTED, INTERNAL_VALIDATION_ERROR */
    step_correlation,   /* CORRELATION_FIELDS_INVALID */
    step_result_fields, /* MISSING_CORRELATION_ID, MISSING_STATUS, INVALID_STATUS */
    step_duplicate,     /* DUPLICATE */
    step_tenant,        /* TENANT_VALIDATION_FAILED */
    step_result_crash,  /* INTERNAL_VALIDATION_ERROR */
};

static const check_fn ack_steps[] = {
    step_schema,
    step_version,
    step_correlation,
    step_ack_fields, /* MISSING_ASSIGNMENT_ID, MISSING_STATUS, INVALID_STATUS */
    step_duplicate,
    step_tenant,
    step_ack_crash, /* INTERNAL_VALIDATION_ERROR */
};

/* The router consumes exactly these two subjects; anything else never reaches it (f22). */
static int pick_pipeline(const char *subject, msg_kind_t *kind, const check_fn **steps, size_t *n)
{
    if (strcmp(subject, BW_ROUTER_RESULT_SUBJECT) == 0) {
        *kind = KIND_RESULT;
        *steps = result_steps;
        *n = sizeof(result_steps) / sizeof(result_steps[0]);
        return 0;
    }
    if (strcmp(subject, BW_ROUTER_ACK_SUBJECT) == 0) {
        *kind = KIND_ACK;
        *steps = ack_steps;
        *n = sizeof(ack_steps) / sizeof(ack_steps[0]);
        return 0;
    }
    return -1;
}

/* ---- public API -------------------------------------------------------------------------- */

bw_router_check_t *bw_router_check_create(void)
{
    bw_router_check_t *rc = calloc(1, sizeof(*rc));

    if (rc == NULL)
        return NULL;
    rc->seen_results = json_object();
    rc->seen_acks = json_object();
    if (rc->seen_results == NULL || rc->seen_acks == NULL || pthread_mutex_init(&rc->mu, NULL) != 0) {
        json_decref(rc->seen_results);
        json_decref(rc->seen_acks);
        free(rc);
        return NULL;
    }
    return rc;
}

void bw_router_check_destroy(bw_router_check_t *rc)
{
    if (rc == NULL)
        return;
    json_decref(rc->seen_results);
    json_decref(rc->seen_acks);
    pthread_mutex_destroy(&rc->mu);
    free(rc);
}

int bw_router_check(bw_router_check_t *rc, const char *subject, json_t *headers, const char *payload,
                    size_t len, char *code, size_t codelen)
{
    check_ctx_t cx = {.rc = rc, .subject = subject, .headers = headers, .payload = payload, .len = len};
    const check_fn *steps = NULL;
    const char *verdict = NULL;
    size_t n = 0;

    if (pick_pipeline(subject, &cx.kind, &steps, &n) != 0)
        verdict = "NOT_SUBSCRIBED";
    pthread_mutex_lock(&rc->mu);
    for (size_t i = 0; i < n && verdict == NULL; i++)
        verdict = steps[i](&cx);
    pthread_mutex_unlock(&rc->mu);
    json_decref(cx.msg);
    if (codelen > 0)
        snprintf(code, codelen, "%s", verdict != NULL ? verdict : "OK");
    return verdict != NULL;
}
