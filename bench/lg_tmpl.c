/*
 * lg_tmpl: builds the assignment text once, with the places where a job's sequence number goes, and
 * renders it per job with memcpy only. Invariant: holes[] is ascending and within [0, len], so
 * rendering is a walk from one hole to the next.
 */
#include "lg_tmpl.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SEQ_MARK "{{seq}}"

/* A growable byte buffer, used only while building. */
typedef struct sbuf {
    char *p;
    size_t len, cap;
} sbuf_t;

/* Appends n bytes; aborts on out of memory (a benchmark has nothing sensible left to do). */
static void sb_add(sbuf_t *sb, const char *s, size_t n)
{
    if (sb->len + n + 1 > sb->cap) {
        size_t cap = sb->cap ? sb->cap : 256;
        while (cap < sb->len + n + 1)
            cap *= 2;
        char *p = realloc(sb->p, cap);
        if (p == NULL) {
            fprintf(stderr, "bw-loadgen: out of memory\n");
            abort();
        }
        sb->p = p;
        sb->cap = cap;
    }
    memcpy(sb->p + sb->len, s, n);
    sb->len += n;
    sb->p[sb->len] = '\0';
}

static void sb_puts(sbuf_t *sb, const char *s)
{
    sb_add(sb, s, strlen(s));
}

/* Appends `s` as a JSON string literal (quoted and escaped); false when `s` is not UTF-8. */
static bool sb_json_string(sbuf_t *sb, const char *s)
{
    json_t *j = json_string(s);
    char *text = j != NULL ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
    if (text != NULL)
        sb_puts(sb, text);
    free(text);
    json_decref(j);
    return text != NULL;
}

/* Marks the current end of the text as a place for the seq; false when there are too many. */
static bool add_hole(lg_tmpl_t *t, const sbuf_t *sb)
{
    if (t->nholes == LG_TMPL_MAX_HOLES)
        return false;
    t->holes[t->nholes++] = sb->len;
    return true;
}

/* Appends the payload, turning each {{seq}} into a hole. */
static bool add_payload(lg_tmpl_t *t, sbuf_t *sb, const char *payload)
{
    const char *p = payload, *hit;
    while ((hit = strstr(p, SEQ_MARK)) != NULL) {
        sb_add(sb, p, (size_t)(hit - p));
        if (!add_hole(t, sb))
            return false;
        p = hit + strlen(SEQ_MARK);
    }
    sb_puts(sb, p);
    return true;
}

/* Writes the text; false when a string is not UTF-8 or there are too many holes. */
static bool compose(lg_tmpl_t *t, sbuf_t *sb, const lg_tmpl_spec_t *spec)
{
    char num[20];
    if (spec->envelope)
        sb_puts(sb, "{\"version\":\"v1\",\"kind\":\"exec_assign\",\"data\":");
    sb_puts(sb, "{\"version\":\"1\",\"assignment_id\":\"");
    sb_puts(sb, spec->id_prefix);
    bool ok = add_hole(t, sb);
    sb_puts(sb, "\",\"tenant_id\":");
    ok = sb_json_string(sb, spec->tenant) && ok;
    sb_puts(sb, ",\"job\":{\"type\":");
    ok = sb_json_string(sb, spec->type) && ok;
    sb_puts(sb, ",\"payload\":");
    ok = add_payload(t, sb, spec->payload) && ok;
    sb_puts(sb, "},\"options\":{\"deadline_ms\":");
    sb_add(sb, num, lg_fmt_u64((uint64_t)spec->deadline_ms, num));
    sb_puts(sb, spec->envelope ? "}}}" : "}}");
    return ok;
}

/* Checks that the rendering for seq 0 is JSON with a payload object, so typos fail before the run. */
static bool validate(const lg_tmpl_t *t, bool envelope)
{
    char *buf = malloc(lg_tmpl_max_len(t));
    size_t len = buf != NULL ? lg_tmpl_render(t, 0, buf) : 0;
    json_error_t err = {.text = "out of memory"};
    json_t *root = buf != NULL ? json_loadb(buf, len, 0, &err) : NULL;
    json_t *a = envelope ? json_object_get(root, "data") : root;
    bool ok = json_is_object(json_object_get(json_object_get(a, "job"), "payload"));
    if (!ok)
        fprintf(stderr, "bw-loadgen: --payload must be a JSON object (with {{seq}} -> 0)%s%s\n",
                root == NULL ? ": " : "", root == NULL ? err.text : "");
    json_decref(root);
    free(buf);
    return ok;
}

bool lg_tmpl_build(lg_tmpl_t *t, const lg_tmpl_spec_t *spec)
{
    sbuf_t sb = {0};
    bool ok = compose(t, &sb, spec);
    t->text = sb.p;
    t->len = sb.len;
    if (!ok)
        fprintf(stderr, "bw-loadgen: --tenant or --type is not UTF-8, or --payload has over %d {{seq}}\n",
                LG_TMPL_MAX_HOLES - 1);
    return ok && validate(t, spec->envelope);
}

void lg_tmpl_dispose(lg_tmpl_t *t)
{
    free(t->text);
    *t = (lg_tmpl_t){0};
}

size_t lg_tmpl_max_len(const lg_tmpl_t *t)
{
    return t->len + (size_t)t->nholes * 20 + 1;
}

size_t lg_tmpl_render(const lg_tmpl_t *t, uint64_t seq, char *out)
{
    char digits[20];
    size_t nd = lg_fmt_u64(seq, digits), o = 0, prev = 0;
    for (int i = 0; i < t->nholes; i++) {
        memcpy(out + o, t->text + prev, t->holes[i] - prev);
        o += t->holes[i] - prev;
        memcpy(out + o, digits, nd);
        o += nd;
        prev = t->holes[i];
    }
    memcpy(out + o, t->text + prev, t->len - prev);
    return o + t->len - prev;
}

size_t lg_fmt_u64(uint64_t v, char *out)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}
