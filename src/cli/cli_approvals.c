/*
 * `beamline-worker approvals list|approve|reject|decide`: the pending human approvals of every worker, and
 * decisions on them, over NATS with the daemon's connection options (credentials, TLS). `list` asks every
 * worker on CAF_APPROVAL_LIST_SUBJECT and gathers the replies that arrive within --timeout-ms; a worker
 * answers in parts under max_payload, and one that began answering is waited for while its parts keep
 * coming. A decision is one NATS request, answered only by the worker that holds the approval, so on the
 * shared subject an unknown id gets no reply at all (exit 4, not a refusal).
 * Everything a reply brings (prompts, names, reasons) comes from other parties: on a terminal it is shown
 * as text, control characters escaped, so that no byte from NATS can move the cursor or retitle a window.
 */
#include <jansson.h>
#include <nats/nats.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/clitext.h"
#include "net/bus.h"
#include "util/buf.h"
#include "util/clock.h"
#include "util/jsonw.h"

#define LIST_TIMEOUT_MS 1000
#define DECIDE_TIMEOUT_MS 5000
#define MAX_TIMEOUT_MS 3600000
#define MAX_LIST_EXTRA_MS 60000 /* a worker still sending parts of its answer is waited for this long */
#define CLIENT_NAME "beamline-worker approvals"

typedef struct approvals_args {
    const char *id, *option, *approver, *comment, *tenant, *subject;
    int64_t timeout_ms;
    bool json;
} approvals_args_t;

void bw_cli_approvals_usage(FILE *f)
{
    fprintf(
        f,
        "usage: beamline-worker approvals list [--json] [--tenant T] [--timeout-ms N]\n"
        "       beamline-worker approvals approve ID --approver NAME [OPTIONS]\n"
        "       beamline-worker approvals reject ID --approver NAME [OPTIONS]\n"
        "       beamline-worker approvals decide ID --option O --approver NAME [OPTIONS]\n"
        "OPTIONS: [--comment C] [--tenant T] [--subject S] [--timeout-ms N]\n"
        "list gathers the answers of every worker for N ms (default %d; longer while a worker is still\n"
        "sending the parts of its answer). A decision waits N ms (default %d) for the holder's reply on S\n"
        "(default CAF_APPROVAL_DECISION_SUBJECT). approve decides \"Approve\", reject \"Reject\".\n"
        "A refusal (1) prints its reason on stderr; no reply (4) usually means an unknown id.\n",
        LIST_TIMEOUT_MS, DECIDE_TIMEOUT_MS);
    bw_cli_print_exit_codes(f);
}

static int usage(void)
{
    bw_cli_approvals_usage(stderr);
    return BW_EXIT_USAGE;
}

/* ---- arguments -------------------------------------------------------------------------------- */

/* A NATS subject a request may be published on: dot-separated non-empty tokens, no wildcards or spaces. */
static bool valid_subject(const char *s)
{
    if (*s == '\0' || *s == '.' || s[strlen(s) - 1] == '.' || strstr(s, "..") != NULL)
        return false;
    for (; *s != '\0'; s++)
        if ((unsigned char)*s <= ' ' || *s == '*' || *s == '>' || (unsigned char)*s == 0x7f)
            return false;
    return true;
}

static bool parse_ms(const char *s, int64_t *out)
{
    char *end;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end != '\0' || v < 1 || v > MAX_TIMEOUT_MS)
        return false;
    *out = v;
    return true;
}

/* The option at argv[i] (with its value at argv[i + 1] when it takes one); -1 when unknown, missing its
   value or not allowed for this command (allowed: a string of option letters). */
static int parse_option(int argc, char **argv, int i, approvals_args_t *a, const char *allowed)
{
    static const struct {
        const char *name;
        char letter;
    } opts[] = {{"--json", 'j'},    {"--tenant", 't'},  {"--timeout-ms", 'm'}, {"--approver", 'a'},
                {"--comment", 'c'}, {"--subject", 's'}, {"--option", 'o'}};
    for (size_t k = 0; k < sizeof opts / sizeof opts[0]; k++) {
        if (strcmp(argv[i], opts[k].name) != 0)
            continue;
        if (strchr(allowed, opts[k].letter) == NULL)
            return -1;
        if (opts[k].letter == 'j') {
            a->json = true;
            return i + 1;
        }
        if (i + 1 >= argc)
            return -1;
        const char *v = argv[i + 1];
        switch (opts[k].letter) {
        case 'm':
            return parse_ms(v, &a->timeout_ms) ? i + 2 : -1;
        case 't':
            a->tenant = v;
            break;
        case 'a':
            a->approver = v;
            break;
        case 'c':
            a->comment = v;
            break;
        case 's':
            a->subject = v;
            break;
        default:
            a->option = v;
        }
        return i + 2;
    }
    return -1;
}

/* Options anywhere; at most `positional` (0 or 1) plain argument, the assignment id. */
static int parse_args(int argc, char **argv, approvals_args_t *a, const char *allowed, int positional)
{
    for (int i = 0; i < argc;) {
        if (strncmp(argv[i], "--", 2) != 0) {
            if (positional-- <= 0)
                return -1;
            a->id = argv[i++];
        } else if ((i = parse_option(argc, argv, i, a, allowed)) < 0) {
            return -1;
        }
    }
    return 0;
}

/* ---- list ------------------------------------------------------------------------------------- */

/* What the list replies brought: every view (with its worker's id), per worker how many of its "total"
   arrived and whether its "last" part did (a worker answers in parts under max_payload), and how many
   parts or entries were unreadable. */
typedef struct gathered {
    json_t *all;     /* [view...] */
    json_t *workers; /* worker id -> [received, total, last part seen] */
    long unfinished; /* workers whose last part has not arrived yet */
    long bad;
} gathered_t;

/* Counts one part of worker's answer: received views, the total it announces, whether it is the last. */
static void count_part(gathered_t *g, const char *worker, size_t received, json_t *part)
{
    json_t *w = json_object_get(g->workers, worker), *total = json_object_get(part, "total");
    bool last = !json_is_false(json_object_get(part, "last")); /* a reply in one part may not say */
    if (w == NULL) {
        json_object_set_new(g->workers, worker, w = json_pack("[iib]", 0, -1, 0));
        g->unfinished++;
    }
    json_array_set_new(w, 0, json_integer(json_integer_value(json_array_get(w, 0)) + (json_int_t)received));
    if (json_is_integer(total))
        json_array_set(w, 1, total);
    if (last && !json_is_true(json_array_get(w, 2))) {
        json_array_set_new(w, 2, json_true());
        g->unfinished--;
    }
}

/* Adds the approvals of one reply part (each view with the replying worker's id); skips what is not a
   well-formed reply (anyone may publish on an inbox) and counts it as bad. */
static void add_reply(natsMsg *m, gathered_t *g)
{
    json_t *j = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
    json_t *list = json_object_get(j, "approvals"), *v;
    const char *worker = json_string_value(json_object_get(j, "worker_id"));
    size_t i, received = 0;
    if (!json_is_array(list) || worker == NULL) {
        g->bad++;
        goto out;
    }
    json_array_foreach(list, i, v)
    {
        if (!json_is_object(v) || !json_is_string(json_object_get(v, "assignment_id"))) {
            g->bad++;
            continue;
        }
        json_object_set_new(v, "worker_id", json_string(worker));
        json_array_append(g->all, v);
        received++;
    }
    count_part(g, worker, received, j);
out:
    json_decref(j);
}

/* Says on stderr what did not arrive whole within the time given. */
static void warn_incomplete(const gathered_t *g, int64_t timeout_ms)
{
    const char *worker;
    json_t *w;
    if (g->bad > 0)
        fprintf(stderr, "approvals: %ld unreadable reply part(s) or entries skipped\n", g->bad);
    json_object_foreach(g->workers, worker, w)
    {
        json_int_t got = json_integer_value(json_array_get(w, 0)),
                   total = json_integer_value(json_array_get(w, 1));
        if (json_is_true(json_array_get(w, 2)) && (total < 0 || got >= total))
            continue;
        bw_buf_t b;
        bw_buf_init(&b, 256);
        bw_buf_puts(&b, "approvals: the answer of worker ");
        bw_clitext_put(&b, worker, 128);
        bw_buf_printf(&b, " is incomplete: %lld", (long long)got);
        if (total >= 0)
            bw_buf_printf(&b, " of %lld", (long long)total);
        bw_buf_printf(&b, " pending approvals arrived (its parts stopped for %lld ms: --timeout-ms)",
                      (long long)timeout_ms);
        fprintf(stderr, "%s\n", b.p);
        bw_buf_dispose(&b);
    }
}

/* Until when to wait: timeout_ms for every worker to answer; past that, while a worker that began
   answering still owes parts, timeout_ms after its latest part (at most MAX_LIST_EXTRA_MS more). */
static int64_t gather_until(const gathered_t *g, int64_t start, int64_t last_part, int64_t timeout_ms)
{
    int64_t until = start + timeout_ms, more = last_part + timeout_ms;
    if (g->unfinished > 0 && more > until)
        until = more < start + timeout_ms + MAX_LIST_EXTRA_MS ? more : start + timeout_ms + MAX_LIST_EXTRA_MS;
    return until;
}

/* Publishes the list request and gathers every reply (see gather_until). -1 on a NATS error. */
static int gather(natsConnection *nc, const bw_config_t *cfg, const approvals_args_t *a, gathered_t *g)
{
    natsSubscription *sub = NULL;
    char *inbox = NULL, body[16] = "{}";
    json_t *req = a->tenant ? json_pack("{ss}", "tenant_id", a->tenant) : NULL;
    char *req_s = req ? json_dumps(req, JSON_COMPACT) : NULL;
    int rc = -1;
    int64_t start = (int64_t)bw_mono_ms(), last_part = start, left;
    if (natsInbox_Create(&inbox) != NATS_OK || natsConnection_SubscribeSync(&sub, nc, inbox) != NATS_OK ||
        natsSubscription_SetPendingLimits(sub, -1, -1) != NATS_OK ||
        natsConnection_PublishRequestString(nc, cfg->approval_list_subject, inbox, req_s ? req_s : body) !=
            NATS_OK ||
        natsConnection_Flush(nc) != NATS_OK)
        goto out;
    while ((left = gather_until(g, start, last_part, a->timeout_ms) - (int64_t)bw_mono_ms()) > 0) {
        natsMsg *m = NULL;
        natsStatus s = natsSubscription_NextMsg(&m, sub, left);
        if (s == NATS_TIMEOUT)
            continue; /* the time is re-evaluated: over unless a part extended it meanwhile */
        if (s != NATS_OK)
            goto out;
        last_part = (int64_t)bw_mono_ms();
        if (!natsMsg_IsNoResponders(m)) /* no worker listens: nothing pending anywhere */
            add_reply(m, g);
        natsMsg_Destroy(m);
    }
    rc = 0;
out:
    natsSubscription_Destroy(sub);
    natsInbox_Destroy(inbox);
    free(req_s);
    json_decref(req);
    return rc;
}

static const char *jstr(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

/* By expiry (RFC 3339 UTC with milliseconds sorts as text), then tenant and id for a stable order. */
static int by_expiry(const void *x, const void *y)
{
    json_t *a = *(json_t *const *)x, *b = *(json_t *const *)y;
    int c = strcmp(jstr(a, "expires_at"), jstr(b, "expires_at"));
    if (c == 0)
        c = strcmp(jstr(a, "tenant_id"), jstr(b, "tenant_id"));
    return c != 0 ? c : strcmp(jstr(a, "assignment_id"), jstr(b, "assignment_id"));
}

static void print_json(json_t **v, size_t n)
{
    bw_buf_t line, safe;
    bw_buf_init(&line, 1024);
    bw_buf_init(&safe, 1024);
    for (size_t i = 0; i < n; i++) {
        bool first = true;
        const char *k;
        json_t *x;
        line.len = safe.len = 0;
        bw_buf_puts(&line, "{");
        json_object_foreach(v[i], k, x) bw_jsonw_value(&line, &first, k, x);
        bw_buf_puts(&line, "}");
        bw_clitext_put_json(&safe, line.p, line.len);
        fwrite(safe.p, 1, safe.len, stdout);
        fputc('\n', stdout);
    }
    bw_buf_dispose(&line);
    bw_buf_dispose(&safe);
}

/* "45s", "12m05s", "3h07m", "6d23h", or "expired". */
static void put_time_left(bw_buf_t *b, json_t *view)
{
    json_t *ms = json_object_get(view, "expires_in_ms");
    if (!json_is_integer(ms))
        bw_buf_puts(b, "?");
    else if (json_integer_value(ms) <= 0)
        bw_buf_puts(b, "expired");
    else
        bw_clitext_put_duration(b, (int64_t)(json_integer_value(ms) / 1000));
}

enum { C_ID, C_TENANT, C_PROMPT, C_OPTIONS, C_VOTES, C_LEFT, C_WORKER, C__COUNT };
static const char *const heads[C__COUNT] = {"ID", "TENANT", "PROMPT", "OPTIONS", "VOTES", "LEFT", "WORKER"};
static const size_t caps[C__COUNT] = {40, 20, 40, 30, 7, 8, 30};

typedef struct cell {
    bw_buf_t text;
    size_t width;
} cell_t;

static void fill_row(cell_t *row, json_t *v)
{
    const char *fields[C__COUNT] = {
        [C_ID] = "assignment_id", [C_TENANT] = "tenant_id", [C_PROMPT] = "prompt", [C_WORKER] = "worker_id"};
    for (int c = 0; c < C__COUNT; c++) {
        bw_buf_init(&row[c].text, 64);
        if (fields[c] != NULL)
            row[c].width = bw_clitext_put(&row[c].text, jstr(v, fields[c]), caps[c]);
    }
    bw_buf_t opts;
    bw_buf_init(&opts, 64);
    json_t *o;
    size_t i;
    json_array_foreach(json_object_get(v, "options"), i, o)
        bw_buf_printf(&opts, "%s%s", i ? "|" : "", json_string_value(o) ? json_string_value(o) : "?");
    row[C_OPTIONS].width = bw_clitext_put(&row[C_OPTIONS].text, opts.p, caps[C_OPTIONS]);
    bw_buf_dispose(&opts);
    json_t *q = json_object_get(v, "quorum");
    bw_buf_printf(&row[C_VOTES].text, "%zu/%lld", json_array_size(json_object_get(v, "votes")),
                  json_is_integer(q) ? (long long)json_integer_value(q) : 1LL);
    put_time_left(&row[C_LEFT].text, v);
    row[C_VOTES].width = row[C_VOTES].text.len;
    row[C_LEFT].width = row[C_LEFT].text.len;
}

static void print_row(const cell_t *row, const size_t *widths)
{
    for (int c = 0; c < C__COUNT; c++) {
        fwrite(row[c].text.p, 1, row[c].text.len, stdout);
        if (c + 1 < C__COUNT)
            printf("%*s", (int)(widths[c] - row[c].width + 2), "");
    }
    fputc('\n', stdout);
}

static void print_table(json_t **v, size_t n)
{
    cell_t *rows = calloc(n + 1, sizeof(cell_t) * C__COUNT);
    size_t widths[C__COUNT];
    for (int c = 0; c < C__COUNT; c++) {
        bw_buf_init(&rows[c].text, 16);
        bw_buf_puts(&rows[c].text, heads[c]);
        widths[c] = rows[c].width = strlen(heads[c]);
    }
    for (size_t i = 0; i < n; i++) {
        cell_t *row = rows + (i + 1) * C__COUNT;
        fill_row(row, v[i]);
        for (int c = 0; c < C__COUNT; c++)
            widths[c] = row[c].width > widths[c] ? row[c].width : widths[c];
    }
    for (size_t i = 0; i <= n; i++)
        print_row(rows + i * C__COUNT, widths);
    for (size_t i = 0; i < (n + 1) * C__COUNT; i++)
        bw_buf_dispose(&rows[i].text);
    free(rows);
}

static int list(const bw_config_t *cfg, const approvals_args_t *a)
{
    natsConnection *nc = NULL;
    gathered_t g = {.all = json_array(), .workers = json_object()};
    int rc = BW_EXIT_NATS;
    if (bw_bus_connect_once(&nc, cfg, CLIENT_NAME) < 0 || gather(nc, cfg, a, &g) < 0) {
        fprintf(stderr, "approvals: NATS error: %s\n", nats_GetLastError(NULL));
        goto out;
    }
    size_t n = json_array_size(g.all);
    json_t **v = n ? malloc(n * sizeof *v) : NULL;
    for (size_t i = 0; i < n; i++)
        v[i] = json_array_get(g.all, i);
    if (n > 1)
        qsort(v, n, sizeof *v, by_expiry);
    warn_incomplete(&g, a->timeout_ms);
    if (json_object_size(g.workers) == 0) /* not "nothing pending": nobody said so */
        fprintf(stderr, "approvals: no worker answered within %ld ms (try a longer --timeout-ms)\n",
                (long)a->timeout_ms);
    if (a->json)
        print_json(v, n);
    else if (n == 0)
        printf("no pending approvals\n");
    else
        print_table(v, n);
    fflush(stdout);
    free(v);
    rc = BW_EXIT_OK;
out:
    json_decref(g.all);
    json_decref(g.workers);
    natsConnection_Destroy(nc);
    return rc;
}

/* ---- decisions -------------------------------------------------------------------------------- */

static char *decision_body(const approvals_args_t *a, const char *decision)
{
    json_t *d = json_pack("{ssssss}", "assignment_id", a->id, "decision", decision, "approver", a->approver);
    if (a->tenant != NULL)
        json_object_set_new(d, "tenant_id", json_string(a->tenant));
    if (a->comment != NULL)
        json_object_set_new(d, "comment", json_string(a->comment));
    char *s = json_dumps(d, JSON_COMPACT);
    json_decref(d);
    return s;
}

/* Prints what the holder answered; the exit code. */
static int report_reply(natsMsg *reply)
{
    json_t *j = json_loadb(natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply), 0, NULL);
    json_t *accepted = json_object_get(j, "accepted");
    bw_buf_t b;
    int rc = BW_EXIT_NATS;
    bw_buf_init(&b, 256);
    if (!json_is_boolean(accepted)) {
        bw_buf_puts(&b, "approvals: unreadable reply: ");
        bw_clitext_put(&b, natsMsg_GetData(reply), 200);
        fprintf(stderr, "%s\n", b.p);
    } else if (json_is_true(accepted)) {
        printf("accepted\n%s", json_is_true(json_object_get(j, "completed")) ? "completed\n" : "");
        rc = BW_EXIT_OK;
    } else {
        bw_buf_puts(&b, "approvals: refused: ");
        bw_clitext_put(&b, jstr(j, "reason"), 64);
        bw_buf_puts(&b, ": ");
        bw_clitext_put(&b, jstr(j, "message"), 400);
        fprintf(stderr, "%s\n", b.p);
        rc = BW_EXIT_FAILED;
    }
    bw_buf_dispose(&b);
    json_decref(j);
    return rc;
}

static int decide(const bw_config_t *cfg, const approvals_args_t *a, const char *decision)
{
    natsConnection *nc = NULL;
    natsMsg *reply = NULL;
    const char *subject = a->subject ? a->subject : cfg->approval_decision_subject;
    char *body = decision_body(a, decision);
    int rc = BW_EXIT_NATS;
    if (bw_bus_connect_once(&nc, cfg, CLIENT_NAME) < 0) {
        fprintf(stderr, "approvals: NATS error: %s\n", nats_GetLastError(NULL));
        goto out;
    }
    natsStatus s = natsConnection_Request(&reply, nc, subject, body, (int)strlen(body), a->timeout_ms);
    if (s == NATS_NO_RESPONDERS) {
        fprintf(stderr, "approvals: no worker listens on %s (is any running?)\n", subject);
        rc = BW_EXIT_NO_REPLY;
    } else if (s == NATS_TIMEOUT) {
        bw_buf_t b;
        bw_buf_init(&b, 256);
        bw_clitext_put(&b, a->id, 200);
        fprintf(
            stderr,
            "approvals: no reply within %lld ms on %s: no worker holds a pending approval %s%s%s (unknown,\n"
            "already decided, or its worker is down); see `beamline-worker approvals list`\n",
            (long long)a->timeout_ms, subject, b.p, a->tenant ? " of tenant " : "",
            a->tenant ? a->tenant : "");
        bw_buf_dispose(&b);
        rc = BW_EXIT_NO_REPLY;
    } else if (s != NATS_OK) {
        fprintf(stderr, "approvals: NATS error: %s\n", natsStatus_GetText(s));
    } else {
        rc = report_reply(reply);
    }
out:
    natsMsg_Destroy(reply);
    natsConnection_Destroy(nc);
    free(body);
    return rc;
}

/* The decision a command stands for (NULL: not a decision command). */
static const char *decision_of(const char *cmd, const approvals_args_t *a)
{
    if (!strcmp(cmd, "approve"))
        return "Approve";
    if (!strcmp(cmd, "reject"))
        return "Reject";
    return !strcmp(cmd, "decide") ? a->option : NULL;
}

int bw_cli_approvals(const bw_config_t *cfg, int argc, char **argv)
{
    approvals_args_t a = {0};
    if (argc < 1)
        return usage();
    if (!strcmp(argv[0], "list")) {
        a.timeout_ms = LIST_TIMEOUT_MS;
        if (parse_args(argc - 1, argv + 1, &a, "jtm", 0) < 0)
            return usage();
        return list(cfg, &a);
    }
    a.timeout_ms = DECIDE_TIMEOUT_MS;
    bool decide_cmd = !strcmp(argv[0], "decide");
    if (parse_args(argc - 1, argv + 1, &a, decide_cmd ? "tmacso" : "tmacs", 1) < 0)
        return usage();
    const char *decision = decision_of(argv[0], &a);
    if (decision == NULL || a.id == NULL || *a.id == '\0' || a.approver == NULL || *a.approver == '\0' ||
        *decision == '\0' || (a.subject != NULL && !valid_subject(a.subject)))
        return usage();
    return decide(cfg, &a, decision);
}
