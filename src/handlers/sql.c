/*
 * sql {connection | connection_string, query, args, statements, read_only, max_rows, timeout_ms}: SQL on
 * PostgreSQL through the pools of net/pgpool.h, values converted by net/pgvalue.h. Output {rows,
 * columns: [{name, type}], rows_affected, truncated?, truncated_reason?}; with `statements`, those of
 * the last statement and `results` with each one's.
 *
 * Each job is a list of steps on one connection: `SET statement_timeout` to the time left rounded up
 * to the second (skipped when the session has that value already: most jobs then take one round trip;
 * the job's own deadline cancels the query in any case), BEGIN [READ ONLY] when the job has statements
 * or is read-only, the job's statements with their args bound as parameters ($1...), COMMIT; an error
 * sends ROLLBACK and fails the job. Cancel and deadline: PQcancel, and the connection is discarded
 * rather than returned. A job of one statement without a transaction of its own is a request instead
 * (bw_pg_submit), which the pool may pipeline with others' (of the same tenant) and cancels itself.
 *
 * Rows arrive one at a time and are converted as they come; past max_rows or the job's
 * SQL_MAX_RESULT_BYTES they are dropped (the statement runs on to its end, since it may write; a
 * read-only job's last statement is stopped instead, its connection closed). COPY with the client is
 * refused before it runs.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/handler.h"
#include "net/pgpool.h"
#include "net/pgvalue.h"
#include "util/xalloc.h"

#define MAX_PARAMS 1000
#define MAX_MESSAGE 2048 /* bytes of a server's error message kept (the server sends any size) */

typedef struct step {
    char *sql;          /* NULL: skipped */
    const json_t *args; /* borrowed from the payload; NULL for our own statements */
    bool user;
    int64_t timeout_ms; /* a SET statement_timeout step: the value it sets */
} step_t;

typedef struct sql_job {
    bw_job_t *job;
    bw_pg_wait_t *wait;
    bw_pg_conn_t *conn;
    bw_pg_req_t *req; /* a single statement outside a transaction: a request the pool may pipeline */
    step_t *steps;
    size_t nsteps, next;
    bool tx, rolling_back, read_only;
    bool cut;                    /* stopped at a bound before its statement ended: the connection goes */
    int64_t max_rows, max_bytes; /* per statement; rows of the whole job, as compact JSON */
    int64_t bytes;               /* rows kept so far */
    json_t *results;             /* one output per user statement */
    /* the output being built for the running statement, row by row */
    json_t *current, *rows;
    char **names; /* its columns' unique names */
    int nf;
    int64_t seen;          /* rows received */
    const char *truncated; /* why rows were dropped (max_rows, max_result_bytes), or NULL */
    char **params;
    int nparams;
    /* the first error: kept until ROLLBACK is through */
    const char *error_code;
    char *error_message;
} sql_job_t;

/* ---- configuration: SQL_CONNECTIONS ---- */

/* The DSN of a named connection in SQL_CONNECTIONS ("name=dsn;name2=dsn2"), malloc'd, or NULL. */
static char *named_dsn(const char *list, const char *name)
{
    size_t nl = strlen(name);
    for (const char *p = list; p != NULL && *p != '\0';) {
        while (*p == ';' || *p == ' ' || *p == '\n')
            p++;
        const char *end = strchr(p, ';');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        if (len > nl && strncmp(p, name, nl) == 0 && p[nl] == '=')
            return bw_strndup(p + nl + 1, len - nl - 1);
        p += len;
    }
    return NULL;
}

/* The policy for connection strings that come with jobs: every address but those never allowed
   (link-local and metadata addresses, ...: see net/egress.h); databases live on private networks. */
static bw_egress_t *job_dsn_policy;

static const bw_egress_t *job_policy(void)
{
    char err[128];
    if (job_dsn_policy == NULL)
        job_dsn_policy = bw_egress_create("0.0.0.0/0,::/0", NULL, err, sizeof err);
    return job_dsn_policy;
}

/* ---- parameters ---- */

static void free_params(sql_job_t *s)
{
    for (int i = 0; i < s->nparams; i++)
        free(s->params[i]);
    free(s->params);
    s->params = NULL;
    s->nparams = 0;
}

/* JSON args as text parameters: null is NULL, strings as they are, anything else as its JSON text (so
   arrays and objects bind to json/jsonb). */
static bool make_params(sql_job_t *s, const json_t *args)
{
    free_params(s);
    size_t n = json_array_size(args);
    s->params = bw_calloc(n + 1, sizeof *s->params);
    for (size_t i = 0; i < n; i++) {
        json_t *a = json_array_get(args, i);
        if (json_is_null(a))
            continue;
        s->params[i] = json_is_string(a) ? bw_strndup(json_string_value(a), json_string_length(a))
                                         : json_dumps(a, JSON_COMPACT | JSON_ENCODE_ANY);
    }
    s->nparams = (int)n;
    return true;
}

/* ---- results, row by row ---- */

/* Column names, made unique ("a", "a_2") so that rows can be objects; linear in the number of columns
   (a set of the names taken, and for each name the next suffix to try). */
static json_t *columns_of(const PGresult *res, char ***names)
{
    int n = PQnfields(res);
    json_t *cols = json_array(), *taken = json_object(), *next = json_object();
    *names = bw_calloc((size_t)n + 1, sizeof **names);
    for (int i = 0; i < n; i++) {
        const char *name = PQfname(res, i);
        char *unique = bw_strdup(name);
        if (json_object_get(taken, unique) != NULL) {
            json_int_t k = json_integer_value(json_object_get(next, name));
            if (k < 2)
                k = 2;
            do {
                free(unique);
                unique = bw_asprintf("%s_%lld", name, (long long)k++);
            } while (json_object_get(taken, unique) != NULL);
            json_object_set_new(next, name, json_integer(k));
        }
        json_object_set_new(taken, unique, json_true());
        (*names)[i] = unique;
        const char *type = bw_pg_type_name(PQftype(res, i));
        char oid[32];
        if (type == NULL) {
            snprintf(oid, sizeof oid, "oid:%u", PQftype(res, i));
            type = oid;
        }
        json_array_append_new(cols, json_pack("{s:s,s:s}", "name", unique, "type", type));
    }
    json_decref(taken);
    json_decref(next);
    return cols;
}

static void drop_output(sql_job_t *s)
{
    for (int f = 0; f < s->nf; f++)
        free(s->names[f]);
    free(s->names);
    s->names = NULL;
    s->nf = 0;
    json_decref(s->current);
    s->current = NULL;
    s->rows = NULL;
    s->seen = 0;
    s->truncated = NULL;
}

/* The output of the running statement, begun with its first result (its columns). */
static void begin_output(sql_job_t *s, const PGresult *res)
{
    if (s->current != NULL)
        return;
    s->current = json_object();
    s->rows = json_array();
    json_object_set_new(s->current, "columns",
                        PQresultStatus(res) == PGRES_COMMAND_OK || PQnfields(res) == 0
                            ? json_array()
                            : columns_of(res, &s->names));
    s->nf = s->names != NULL ? PQnfields(res) : 0;
    json_object_set_new(s->current, "rows", s->rows);
}

/* Row r of res, kept while the statement's rows stay within max_rows and the job's within
   max_result_bytes (each row counted as its compact JSON); past either, rows are read and dropped. */
static void add_row(sql_job_t *s, const PGresult *res, int r)
{
    s->seen++;
    if (s->truncated != NULL)
        return;
    if (s->seen > s->max_rows) {
        s->truncated = "max_rows";
        return;
    }
    json_t *row = json_object();
    for (int f = 0; f < s->nf; f++)
        json_object_set_new(row, s->names[f],
                            PQgetisnull(res, r, f) ? json_null()
                                                   : bw_pg_value(PQftype(res, f), PQgetvalue(res, r, f),
                                                                 (size_t)PQgetlength(res, r, f)));
    int64_t size = (int64_t)json_dumpb(row, NULL, 0, JSON_COMPACT);
    if (s->bytes + size > s->max_bytes) {
        s->truncated = "max_result_bytes";
        json_decref(row);
        return;
    }
    s->bytes += size;
    json_array_append_new(s->rows, row);
}

/* The statement's last result: its output is complete. */
static void end_output(sql_job_t *s, const PGresult *res)
{
    begin_output(s, res);
    for (int r = 0; r < PQntuples(res); r++) /* rows not sent one by one (single-row mode refused) */
        add_row(s, res, r);
    const char *affected = PQcmdTuples((PGresult *)res);
    json_object_set_new(s->current, "rows_affected", json_integer(*affected ? atoll(affected) : s->seen));
}

/* The statement's output, for results: what the job keeps. */
static void keep_output(sql_job_t *s)
{
    if (s->current == NULL)
        return;
    if (json_object_get(s->current, "rows_affected") == NULL) /* stopped early: the rows read */
        json_object_set_new(s->current, "rows_affected", json_integer(s->seen));
    if (s->truncated != NULL) {
        json_object_set_new(s->current, "truncated", json_true());
        json_object_set_new(s->current, "truncated_reason", json_string(s->truncated));
    }
    json_array_append(s->results, s->current);
    drop_output(s);
}

/* Whether sql is COPY to or from the client (COPY ... FROM STDIN, COPY ... TO STDOUT): its first word,
   after blanks and comments, is COPY and it names STDIN or STDOUT. Such a statement is a top-level one
   only (not in a function, not prepared), so its text tells. */
static bool client_copy(const char *sql)
{
    const char *p = sql;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == '\f' || *p == '\v')
            p++;
        if (p[0] == '-' && p[1] == '-') {
            p += strcspn(p, "\n");
        } else if (p[0] == '/' && p[1] == '*') { /* they nest */
            int depth = 0;
            do {
                if (p[0] == '/' && p[1] == '*')
                    depth++, p += 2;
                else if (p[0] == '*' && p[1] == '/')
                    depth--, p += 2;
                else
                    p++;
            } while (depth > 0 && *p != '\0');
        } else {
            break;
        }
    }
    if (strncasecmp(p, "copy", 4) != 0 || isalnum((unsigned char)p[4]) || p[4] == '_' || p[4] == '$')
        return false;
    for (const char *w = p + 4; *w != '\0'; w++) {
        bool start = !isalnum((unsigned char)w[-1]) && w[-1] != '_' && w[-1] != '$';
        size_t n = strncasecmp(w, "stdin", 5) == 0 ? 5 : strncasecmp(w, "stdout", 6) == 0 ? 6 : 0;
        if (start && n > 0 && !isalnum((unsigned char)w[n]) && w[n] != '_' && w[n] != '$')
            return true;
    }
    return false;
}

/* ---- steps ---- */

static void run_next(sql_job_t *s);

static void finish(sql_job_t *s)
{
    bw_job_t *job = s->job;
    bw_pg_conn_t *c = s->conn;
    s->conn = NULL;
    if (c != NULL) /* the pool checks that it is clean (not in a transaction, nothing running) */
        bw_pg_release(c,
                      s->cut || (s->error_code != NULL && strcmp(s->error_code, "DB_CONNECTION_ERROR") == 0));
    if (s->error_code != NULL) {
        bool timeout = strcmp(s->error_code, "TIMEOUT") == 0;
        bw_job_fail(job, timeout ? BW_ST_TIMEOUT : BW_ST_ERROR, s->error_code, "%s", s->error_message);
        return;
    }
    size_t n = json_array_size(s->results);
    json_t *last = json_array_get(s->results, n - 1), *out;
    if (n > 1 || s->tx) { /* the last statement's output (a shallow copy: rows are shared) and all */
        out = json_copy(last);
        json_object_set(out, "results", s->results);
    } else {
        out = json_incref(last);
    }
    bw_job_succeed(job, out);
}

static void fail(sql_job_t *s, const char *code, char *message)
{
    if (s->error_code == NULL) {
        s->error_code = code;
        s->error_message = message;
    } else {
        free(message);
    }
}

/* A server error as the job's error. */
static void fail_with(sql_job_t *s, const PGresult *res)
{
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    int len = MAX_MESSAGE;
    if (msg == NULL)
        msg = PQresultErrorMessage(res);
    if (state != NULL && strcmp(state, "57014") == 0 && strstr(msg, "statement timeout"))
        fail(s, "TIMEOUT", bw_asprintf("the statement ran past the job's time: %.*s", len, msg));
    else if (state != NULL && (strncmp(state, "08", 2) == 0 || strncmp(state, "57P0", 4) == 0))
        /* connection exceptions, and the server shutting down or terminating the session */
        fail(s, "DB_CONNECTION_ERROR",
             bw_asprintf("the connection to the database failed: %s: %.*s", state, len, msg));
    else
        fail(s, "DB_QUERY_ERROR", bw_asprintf("%s: %.*s", state ? state : "?????", len, msg));
}

/* One result of the running step (rows one at a time), or (res NULL) its end. */
static void on_result(void *ud, PGresult *res, const char *error)
{
    sql_job_t *s = ud;
    if (res == NULL) /* a request's last callback */
        s->req = NULL;
    if (res == NULL) { /* the step is over */
        if (error != NULL) {
            fail(s, "DB_CONNECTION_ERROR", bw_asprintf("the connection to the database failed: %s", error));
            s->rolling_back = false;
            finish(s);
            return;
        }
        keep_output(s);
        if (s->error_code != NULL && s->tx && !s->rolling_back) {
            s->rolling_back = true;
            if (bw_pg_query(s->conn, "ROLLBACK", 0, NULL, on_result, s) == 0)
                return;
        }
        if (s->error_code != NULL || s->next == s->nsteps)
            finish(s);
        else
            run_next(s);
        return;
    }
    if (s->rolling_back)
        return;
    ExecStatusType st = PQresultStatus(res);
    bool user = s->next > 0 && s->steps[s->next - 1].user;
    switch (st) {
    case PGRES_COPY_IN:
    case PGRES_COPY_OUT:
    case PGRES_COPY_BOTH: /* the pool ends the copy (or the connection) */
        fail(s, "SQL_COPY_UNSUPPORTED",
             bw_strdup(
                 "COPY to or from the client (STDIN, STDOUT) is not supported: select the rows instead"));
        drop_output(s);
        return;
    case PGRES_PIPELINE_ABORTED:
        fail(s, "DB_QUERY_ERROR",
             bw_strdup("the statement was not run: an earlier one of its pipeline failed"));
        drop_output(s);
        return;
    case PGRES_FATAL_ERROR:
    case PGRES_NONFATAL_ERROR:
    case PGRES_BAD_RESPONSE:
        fail_with(s, res);
        drop_output(s);
        return;
    case PGRES_SINGLE_TUPLE:
        if (!user)
            return;
        begin_output(s, res);
        add_row(s, res, 0);
        /* read-only and its last statement: nothing is lost by stopping it here (the connection closes:
           the server stops at its next write); otherwise the statement runs to its end, its rows
           dropped, so that a write is not cut short */
        if (s->truncated != NULL && s->read_only && s->conn != NULL && s->next + 1 == s->nsteps) {
            s->cut = true;
            keep_output(s);
            finish(s);
        }
        return;
    default: /* TUPLES_OK, COMMAND_OK, EMPTY_QUERY: the statement's end */
        if (user)
            end_output(s, res);
        return;
    }
}

static void run_next(sql_job_t *s)
{
    while (s->next < s->nsteps && s->steps[s->next].sql == NULL && s->steps[s->next].timeout_ms == 0)
        s->next++;
    step_t *st = &s->steps[s->next++];
    if (st->timeout_ms > 0) /* recorded now: a failed SET fails the job and discards nothing else */
        bw_pg_conn_set_timeout(s->conn, st->timeout_ms);
    if (st->args != NULL)
        make_params(s, st->args);
    else
        free_params(s);
    if (bw_pg_query(s->conn, st->sql, s->nparams, (const char *const *)s->params, on_result, s) != 0) {
        fail(s, "DB_CONNECTION_ERROR", bw_strdup("the connection to the database failed"));
        finish(s);
    }
}

/* The statement_timeout for the job: its time left rounded up to the second, so that a session keeps one
   value for a while (the job's own deadline cancels the statement in any case). */
static int64_t statement_timeout(const sql_job_t *s)
{
    int64_t left = bw_job_remaining_ms(s->job), timeout = (left + 999) / 1000 * 1000;
    return timeout < 1000 ? 1000 : timeout;
}

static void on_acquire(void *ud, bw_pg_conn_t *c, const char *error)
{
    sql_job_t *s = ud;
    s->wait = NULL;
    if (c == NULL) {
        fail(s, "DB_CONNECTION_ERROR", bw_asprintf("cannot connect to the database: %s", error));
        finish(s);
        return;
    }
    s->conn = c;
    int64_t timeout = statement_timeout(s);
    if (bw_pg_conn_timeout(c) != timeout) { /* the first step */
        s->steps[0].sql = bw_asprintf("SET statement_timeout = %lld", (long long)timeout);
        s->steps[0].timeout_ms = timeout;
    }
    run_next(s);
}

/* ---- the handler ---- */

static void add_step(sql_job_t *s, char *sql, const json_t *args, bool user)
{
    s->steps = bw_realloc(s->steps, (s->nsteps + 1) * sizeof *s->steps);
    s->steps[s->nsteps++] = (step_t){.sql = sql, .args = args, .user = user};
}

/* A statement object {query, args} (or the payload itself); false after failing the job. */
static bool check_statement(bw_job_t *job, const json_t *q, const json_t *args)
{
    if (!json_is_string(q) || json_string_length(q) == 0) {
        bw_job_fail(job, BW_ST_ERROR, "MISSING_QUERY",
                    "sql needs payload.query (or payload.statements[].query)");
        return false;
    }
    if (client_copy(json_string_value(q))) {
        bw_job_fail(job, BW_ST_ERROR, "SQL_COPY_UNSUPPORTED",
                    "COPY to or from the client (STDIN, STDOUT) is not supported: select the rows instead");
        return false;
    }
    if (args != NULL && (!json_is_array(args) || json_array_size(args) > MAX_PARAMS)) {
        bw_job_fail(job, BW_ST_ERROR, "INVALID_PAYLOAD", "args must be an array of at most %d values",
                    MAX_PARAMS);
        return false;
    }
    return true;
}

static void sql_start(bw_job_t *job)
{
    const json_t *p = job->a.payload;
    const bw_config_t *cfg = job->cfg;
    json_t *name = json_object_get(p, "connection"), *dsn = json_object_get(p, "connection_string"),
           *stmts = json_object_get(p, "statements"), *ro = json_object_get(p, "read_only"),
           *max = json_object_get(p, "max_rows");
    if (!json_is_object(p)) {
        bw_job_fail(job, BW_ST_ERROR, "MISSING_QUERY", "sql needs a payload object with a query");
        return;
    }
    if (stmts != NULL && (!json_is_array(stmts) || json_array_size(stmts) == 0)) {
        bw_job_fail(job, BW_ST_ERROR, "INVALID_PAYLOAD", "payload.statements must be a non-empty array");
        return;
    }
    if (stmts == NULL && !check_statement(job, json_object_get(p, "query"), json_object_get(p, "args")))
        return;
    for (size_t i = 0; i < json_array_size(stmts); i++) {
        json_t *st = json_array_get(stmts, i);
        if (!check_statement(job, json_object_get(st, "query"), json_object_get(st, "args")))
            return;
    }
    if ((ro != NULL && !json_is_boolean(ro)) ||
        (max != NULL && (!json_is_integer(max) || json_integer_value(max) < 0))) {
        bw_job_fail(job, BW_ST_ERROR, "INVALID_PAYLOAD",
                    "read_only is a boolean, max_rows a non-negative integer");
        return;
    }
    if (max != NULL && json_integer_value(max) > cfg->sql_max_rows) {
        bw_job_fail(job, BW_ST_ERROR, "INVALID_PAYLOAD", "max_rows may not exceed %lld (SQL_MAX_ROWS)",
                    (long long)cfg->sql_max_rows);
        return;
    }
    char *conn;
    const bw_egress_t *policy = NULL;
    if (json_is_string(name)) {
        conn = named_dsn(cfg->sql_connections, json_string_value(name));
        if (conn == NULL) {
            bw_job_fail(job, BW_ST_ERROR, "UNKNOWN_CONNECTION",
                        "no connection named '%.100s' in SQL_CONNECTIONS", json_string_value(name));
            return;
        }
    } else if (json_is_string(dsn)) {
        if (!cfg->sql_allow_payload_dsn) {
            bw_job_fail(job, BW_ST_ERROR, "PAYLOAD_DSN_DISABLED",
                        "connection strings in the payload are disabled (SQL_ALLOW_PAYLOAD_DSN=false): name "
                        "a connection");
            return;
        }
        char why[200];
        if (bw_pg_job_dsn_refusal(json_string_value(dsn), why, sizeof why) != NULL) {
            bw_job_fail(job, BW_ST_ERROR, "INVALID_PAYLOAD", "connection_string: %s", why);
            return;
        }
        conn = bw_strdup(json_string_value(dsn));
        policy = job_policy();
    } else {
        bw_job_fail(job, BW_ST_ERROR, "UNKNOWN_CONNECTION",
                    "sql needs payload.connection (a name) or connection_string");
        return;
    }
    sql_job_t *s = bw_calloc(1, sizeof *s);
    s->job = job;
    job->hdata = s;
    s->results = json_array();
    s->max_rows = max != NULL ? json_integer_value(max) : cfg->sql_max_rows;
    s->max_bytes = cfg->sql_max_result_bytes;
    s->read_only = json_is_true(ro);
    s->tx = stmts != NULL || s->read_only;
    add_step(s, NULL, NULL, false); /* SET statement_timeout, when needed: outside any transaction */
    if (s->tx)
        add_step(s, bw_strdup(json_is_true(ro) ? "BEGIN READ ONLY" : "BEGIN"), NULL, false);
    if (stmts == NULL)
        add_step(s, bw_strdup(json_string_value(json_object_get(p, "query"))), json_object_get(p, "args"),
                 true);
    for (size_t i = 0; i < json_array_size(stmts); i++) {
        json_t *st = json_array_get(stmts, i);
        add_step(s, bw_strdup(json_string_value(json_object_get(st, "query"))), json_object_get(st, "args"),
                 true);
    }
    if (s->tx)
        add_step(s, bw_strdup("COMMIT"), NULL, false);
    bw_pg_pool_t *pool = bw_pg_pool(job->loop, conn, (int)cfg->sql_pool_max, cfg->sql_pool_idle_ms, policy);
    free(conn);
    if (s->tx) {
        s->wait = bw_pg_acquire(pool, job->a.tenant_id, on_acquire, s);
        return;
    }
    step_t *st = &s->steps[1]; /* one statement in its own transaction: the pool sets the timeout */
    make_params(s, st->args);
    s->next = s->nsteps;
    s->req = bw_pg_submit(pool, job->a.tenant_id, st->sql, s->nparams, (const char *const *)s->params,
                          statement_timeout(s), on_result, s);
}

static void sql_cancel(bw_job_t *job)
{
    sql_job_t *s = job->hdata;
    if (s == NULL)
        return;
    if (s->wait != NULL) {
        bw_pg_acquire_cancel(s->wait);
        s->wait = NULL;
    }
    if (s->req != NULL) { /* the pool cancels it on the server if it runs on */
        bw_pg_withdraw(s->req);
        s->req = NULL;
    }
    if (s->conn != NULL) { /* stop the server-side work, and do not reuse the connection */
        bw_pg_cancel(s->conn);
        bw_pg_release(s->conn, true);
        s->conn = NULL;
    }
}

static void sql_dispose(bw_job_t *job)
{
    sql_job_t *s = job->hdata;
    if (s == NULL)
        return;
    sql_cancel(job);
    for (size_t i = 0; i < s->nsteps; i++)
        free(s->steps[i].sql);
    free(s->steps);
    free_params(s);
    json_decref(s->results);
    drop_output(s);
    free(s->error_message);
    free(s);
    job->hdata = NULL;
}

static void sql_shutdown(void)
{
    bw_pg_shutdown();
    bw_egress_destroy(job_dsn_policy); /* the pools that used it are gone */
    job_dsn_policy = NULL;
}

const bw_handler_t bw_handler_sql = {
    .name = "sql",
    .start = sql_start,
    .cancel = sql_cancel,
    .dispose = sql_dispose,
    .shutdown = sql_shutdown,
    .concurrency = 64, /* beyond the pools' connections (SQL_POOL_MAX) they wait inside the handler */
    .waits = true,
};
