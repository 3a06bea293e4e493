/*
 * human_approval {prompt, options?, approvers?, quorum?, context?, timeout_ms?, response?}: waits for a
 * person's decision (core/approvals.h holds the pending approvals, their journal and the decisions). This
 * file checks the payload and turns it into the approval's spec; a reference-style automatic `response`
 * decides at once only when APPROVAL_ALLOW_AUTO=true (dry runs, tests), and is ignored otherwise.
 */
#include <stdio.h>
#include <string.h>

#include "core/approvals.h"
#include "core/handler.h"
#include "util/clock.h"

#define MAX_PROMPT_BYTES (64 * 1024)
#define MAX_OPTIONS 20
#define MAX_APPROVERS 100
#define MAX_NAME_BYTES 256

static const char *const default_options[] = {"Approve", "Reject", NULL};

/* A list of 1..max distinct non-empty strings of at most MAX_NAME_BYTES, without U+0000 or control
   characters; NULL with why set otherwise. */
static json_t *name_list(json_t *v, size_t max, char *why, size_t whylen, const char *field)
{
    if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > max) {
        snprintf(why, whylen, "payload.%s must be an array of 1..%zu strings", field, max);
        return NULL;
    }
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e)
    {
        const char *s = json_string_value(e);
        bool bad = s == NULL || *s == '\0' || json_string_length(e) > MAX_NAME_BYTES;
        for (size_t k = 0; !bad && k < json_string_length(e); k++)
            bad = (unsigned char)s[k] < 0x20 || s[k] == 0x7f;
        for (size_t j = 0; !bad && j < i; j++)
            bad = strcmp(json_string_value(json_array_get(v, j)), s) == 0;
        if (bad) {
            snprintf(
                why, whylen,
                "payload.%s[%zu] must be a non-empty string of at most %d bytes without control characters, "
                "unlike the ones before it",
                field, i, MAX_NAME_BYTES);
            return NULL;
        }
    }
    return json_incref(v);
}

/* The approval's spec from the payload, or NULL with why naming the field. */
static json_t *make_spec(json_t *p, char *why, size_t whylen)
{
    json_t *prompt = json_object_get(p, "prompt"), *options, *approvers = NULL, *spec = NULL;
    if (!json_is_string(prompt) || json_string_length(prompt) == 0 ||
        json_string_length(prompt) > MAX_PROMPT_BYTES) {
        snprintf(why, whylen, "payload.prompt must be a non-empty string of at most %d bytes",
                 MAX_PROMPT_BYTES);
        return NULL;
    }
    json_t *ov = json_object_get(p, "options");
    if (ov == NULL || json_is_null(ov)) {
        options = json_array();
        for (int i = 0; default_options[i] != NULL; i++)
            json_array_append_new(options, json_string(default_options[i]));
    } else if ((options = name_list(ov, MAX_OPTIONS, why, whylen, "options")) == NULL)
        return NULL;
    json_t *av = json_object_get(p, "approvers");
    if (av != NULL && !json_is_null(av) &&
        (approvers = name_list(av, MAX_APPROVERS, why, whylen, "approvers")) == NULL)
        goto out;
    json_t *qv = json_object_get(p, "quorum");
    json_int_t qmax = approvers != NULL ? (json_int_t)json_array_size(approvers) : MAX_APPROVERS;
    json_int_t quorum = qv == NULL || json_is_null(qv) ? 1
                        : json_is_integer(qv)          ? json_integer_value(qv)
                                                       : -1;
    if (quorum < 1 || quorum > qmax) {
        snprintf(why, whylen, "payload.quorum must be an integer in 1..%lld (%s)", (long long)qmax,
                 approvers != NULL ? "the number of approvers" : "at most 100 approvers");
        goto out;
    }
    json_t *ctx = json_object_get(p, "context");
    spec =
        json_pack("{s:O, s:O, s:O, s:I, s:O}", "prompt", prompt, "options", options, "approvers",
                  approvers ? approvers : json_null(), "quorum", quorum, "context", ctx ? ctx : json_null());
out:
    json_decref(options);
    json_decref(approvers);
    return spec;
}

/* The reference's automatic decision: "Approve" or {decision, approver?, comment?}. 1 decided, 0 none,
   -1 invalid (why set). */
static int auto_decide(bw_job_t *job, json_t *spec, char *why, size_t whylen)
{
    json_t *resp = json_object_get(job->a.payload, "response");
    if (resp == NULL || json_is_null(resp) || !job->cfg || !job->cfg->approval_allow_auto)
        return 0;
    const char *decision =
        json_is_string(resp) ? json_string_value(resp) : json_string_value(json_object_get(resp, "decision"));
    const char *approver = json_string_value(json_object_get(resp, "approver"));
    const char *comment = json_string_value(json_object_get(resp, "comment"));
    size_t i;
    json_t *o;
    bool listed = false;
    json_array_foreach(json_object_get(spec, "options"), i, o) listed |=
        decision != NULL && strcmp(json_string_value(o), decision) == 0;
    if (!listed) {
        snprintf(why, whylen, "payload.response must name one of payload.options");
        return -1;
    }
    char at[40];
    bw_rfc3339_ms(bw_wall_ms(), at, sizeof at);
    json_t *vote =
        json_pack("{s:s, s:s, s:o, s:s}", "approver", approver ? approver : "auto", "decision", decision,
                  "comment", comment ? json_string(comment) : json_null(), "decided_at", at);
    json_t *out =
        json_pack("{s:O, s:O, s:O, s:O, s:O, s:s, s:[o]}", "prompt", json_object_get(spec, "prompt"),
                  "options", json_object_get(spec, "options"), "decision", json_object_get(vote, "decision"),
                  "approver", json_object_get(vote, "approver"), "comment", json_object_get(vote, "comment"),
                  "decided_at", at, "votes", vote);
    bw_job_succeed(job, out);
    return 1;
}

static void approval_start(bw_job_t *job)
{
    char why[256];
    json_t *spec = make_spec(job->a.payload, why, sizeof why);
    if (spec == NULL) {
        bw_job_fail(job, BW_ST_ERROR, "INVALID_PAYLOAD", "%s", why);
        return;
    }
    int decided = auto_decide(job, spec, why, sizeof why);
    bw_approvals_t *r = bw_approvals_of(job);
    if (decided < 0)
        bw_job_fail(job, BW_ST_ERROR, "INVALID_PAYLOAD", "%s", why);
    else if (decided == 0 && r == NULL)
        bw_job_fail(
            job, BW_ST_ERROR, "APPROVAL_UNAVAILABLE",
            "human_approval needs the worker daemon (its approval journal and NATS): `exec` cannot wait "
            "for a person");
    else if (decided == 0)
        bw_approvals_begin(r, job, spec);
    json_decref(spec);
}

static void approval_dispose(bw_job_t *job)
{
    bw_approvals_job_disposed(job);
}

const bw_handler_t bw_handler_human_approval = {
    .name = "human_approval",
    .start = approval_start,
    .dispose = approval_dispose,
};
