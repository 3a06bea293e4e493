/* The exposition checker; see prom_check.h. */
#include "prom_check.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the Prometheus text exposition, format 0.0.4 ----------------------------------------- */

#define MAX_FAMILIES 256
#define MAX_LABELS 16

typedef struct family {
    char name[128];
    char type[16];
    int help, typed, started, closed;
} family_t;

typedef struct hseries { /* one histogram series: the family plus its labels without le */
    char key[512];
    double last_le, last_bucket, inf_bucket, count;
    int nbuckets, has_inf, has_count, has_sum;
} hseries_t;

typedef struct sample {
    char name[128];
    int nlabels;
    char lname[MAX_LABELS][64];
    char lvalue[MAX_LABELS][256];
    double value;
} sample_t;

typedef struct expo {
    family_t fam[MAX_FAMILIES];
    int nfam, cur;
    hseries_t *hs;
    int nhs;
    char **seen; /* "name{labels}" of every sample, for duplicates */
    int nseen;
    char why[600];
} expo_t;

static int bad(expo_t *e, int lineno, const char *line, const char *what)
{
    snprintf(e->why, sizeof e->why, "line %d: %s: \"%.300s\"", lineno, what, line);
    return -1;
}

/* Length of the name at p: [a-zA-Z_:][a-zA-Z0-9_:]* for metrics, no ':' for labels. */
static size_t name_len(const char *p, int metric)
{
    size_t n = 0;
    while (p[n] != '\0' && (isalpha((unsigned char)p[n]) || p[n] == '_' || (metric && p[n] == ':') ||
                            (n > 0 && isdigit((unsigned char)p[n]))))
        n++;
    return n;
}

/* A sample value: a Go ParseFloat-style decimal, or +Inf, -Inf, NaN. */
static int parse_value(const char *s, double *v)
{
    const char *p = s;
    if (strcmp(s, "+Inf") == 0 || strcmp(s, "-Inf") == 0 || strcmp(s, "NaN") == 0) {
        *v = strcmp(s, "NaN") == 0 ? NAN : s[0] == '+' ? INFINITY : -INFINITY;
        return 0;
    }
    if (*p == '-' || *p == '+')
        p++;
    size_t digits = strspn(p, "0123456789");
    p += digits;
    if (*p == '.') {
        size_t frac = strspn(p + 1, "0123456789");
        digits += frac;
        p += 1 + frac;
    }
    if (digits == 0)
        return -1;
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '-' || *p == '+')
            p++;
        size_t ed = strspn(p, "0123456789");
        if (ed == 0)
            return -1;
        p += ed;
    }
    if (*p != '\0')
        return -1;
    *v = strtod(s, NULL);
    return 0;
}

/* Parses {a="x",b="y"} at *pp into s; escapes in values are \\, \" and \n only. */
static const char *parse_labels(const char *p, sample_t *s)
{
    p++; /* '{' */
    while (*p != '}') {
        size_t n = name_len(p, 0);
        if (n == 0 || n >= sizeof s->lname[0] || s->nlabels == MAX_LABELS || p[n] != '=' || p[n + 1] != '"')
            return NULL;
        if (n >= 2 && p[0] == '_' && p[1] == '_')
            return NULL; /* reserved */
        snprintf(s->lname[s->nlabels], sizeof s->lname[0], "%.*s", (int)n, p);
        for (int i = 0; i < s->nlabels; i++)
            if (strcmp(s->lname[i], s->lname[s->nlabels]) == 0)
                return NULL;
        p += n + 2;
        size_t o = 0;
        for (; *p != '"'; p++) {
            if (*p == '\0' || o + 2 >= sizeof s->lvalue[0])
                return NULL;
            if (*p == '\\') {
                p++;
                if (*p != '\\' && *p != '"' && *p != 'n')
                    return NULL;
                s->lvalue[s->nlabels][o++] = *p == 'n' ? '\n' : *p;
            } else {
                s->lvalue[s->nlabels][o++] = *p;
            }
        }
        s->lvalue[s->nlabels++][o] = '\0';
        p++; /* closing quote */
        if (*p == ',' && p[1] != '}')
            p++;
        else if (*p != '}')
            return NULL;
    }
    return p + 1;
}

/* name[{labels}] value[ timestamp], single spaces, nothing else. */
static int parse_sample(const char *line, sample_t *s)
{
    char val[64];
    memset(s, 0, sizeof *s);
    size_t n = name_len(line, 1);
    if (n == 0 || n >= sizeof s->name)
        return -1;
    snprintf(s->name, sizeof s->name, "%.*s", (int)n, line);
    const char *p = line + n;
    if (*p == '{' && (p = parse_labels(p, s)) == NULL)
        return -1;
    if (*p != ' ')
        return -1;
    p++;
    size_t vl = strcspn(p, " ");
    if (vl == 0 || vl >= sizeof val)
        return -1;
    snprintf(val, sizeof val, "%.*s", (int)vl, p);
    if (parse_value(val, &s->value) != 0)
        return -1;
    p += vl;
    if (*p == ' ') { /* optional timestamp: an integer */
        p++;
        if (*p == '-')
            p++;
        size_t d = strspn(p, "0123456789");
        if (d == 0 || p[d] != '\0')
            return -1;
    } else if (*p != '\0') {
        return -1;
    }
    return 0;
}

static family_t *find_family(expo_t *e, const char *name)
{
    for (int i = 0; i < e->nfam; i++)
        if (strcmp(e->fam[i].name, name) == 0)
            return &e->fam[i];
    return NULL;
}

static family_t *add_family(expo_t *e, const char *name)
{
    family_t *f = find_family(e, name);
    if (f != NULL || e->nfam == MAX_FAMILIES)
        return f;
    f = &e->fam[e->nfam++];
    snprintf(f->name, sizeof f->name, "%s", name);
    return f;
}

/* Makes f the current family; the previous one is closed (a family's lines are contiguous). */
static int enter_family(expo_t *e, family_t *f)
{
    int idx = (int)(f - e->fam);
    if (e->cur == idx)
        return 0;
    if (f->closed)
        return -1;
    if (e->cur >= 0)
        e->fam[e->cur].closed = 1;
    e->cur = idx;
    return 0;
}

static int parse_comment(expo_t *e, int lineno, const char *line)
{
    int is_help = strncmp(line, "# HELP ", 7) == 0, is_type = strncmp(line, "# TYPE ", 7) == 0;
    if (!is_help && !is_type)
        return bad(e, lineno, line, "a comment other than # HELP or # TYPE");
    const char *p = line + 7;
    size_t n = name_len(p, 1);
    if (n == 0 || n >= sizeof e->fam[0].name || (p[n] != ' ' && !(is_help && p[n] == '\0')))
        return bad(e, lineno, line, "bad metric name in comment");
    char name[128];
    snprintf(name, sizeof name, "%.*s", (int)n, p);
    family_t *f = add_family(e, name);
    if (f == NULL)
        return bad(e, lineno, line, "too many families");
    if (f->started || enter_family(e, f) != 0)
        return bad(e, lineno, line, "HELP/TYPE after the family's samples or not contiguous with them");
    const char *rest = p[n] == ' ' ? p + n + 1 : p + n;
    if (is_help) {
        if (f->help++)
            return bad(e, lineno, line, "second HELP for the family");
        for (const char *q = rest; *q; q++)
            if (*q == '\\' && (q[1] != '\\' && q[1] != 'n'))
                return bad(e, lineno, line, "bad escape in HELP text");
            else if (*q == '\\')
                q++;
        return 0;
    }
    static const char *const types[] = {"counter", "gauge", "histogram", "summary", "untyped", NULL};
    int ok = 0;
    for (int i = 0; types[i] != NULL; i++)
        ok |= strcmp(rest, types[i]) == 0;
    if (!ok)
        return bad(e, lineno, line, "unknown TYPE");
    if (f->typed++)
        return bad(e, lineno, line, "second TYPE for the family");
    snprintf(f->type, sizeof f->type, "%s", rest);
    return 0;
}

/* The family a sample belongs to (histogram/summary suffixes fold into their base) and which
   suffix it carries: 0 none, 1 _bucket, 2 _sum, 3 _count. */
static family_t *family_of(expo_t *e, const char *name, int *suffix)
{
    static const char *const sfx[] = {"_bucket", "_sum", "_count"};
    size_t len = strlen(name);
    *suffix = 0;
    for (int i = 0; i < 3; i++) {
        size_t sl = strlen(sfx[i]);
        if (len <= sl || strcmp(name + len - sl, sfx[i]) != 0)
            continue;
        char base[128];
        snprintf(base, sizeof base, "%.*s", (int)(len - sl), name);
        family_t *f = find_family(e, base);
        if (f != NULL && (strcmp(f->type, "histogram") == 0 || (i > 0 && strcmp(f->type, "summary") == 0))) {
            *suffix = i + 1;
            return f;
        }
    }
    return find_family(e, name);
}

static hseries_t *hseries(expo_t *e, const family_t *f, const sample_t *s)
{
    char key[512];
    int o = snprintf(key, sizeof key, "%s{", f->name);
    for (int i = 0; i < s->nlabels && o < (int)sizeof key; i++)
        if (strcmp(s->lname[i], "le") != 0)
            o += snprintf(key + o, sizeof key - (size_t)o, "%s=%s,", s->lname[i], s->lvalue[i]);
    for (int i = 0; i < e->nhs; i++)
        if (strcmp(e->hs[i].key, key) == 0)
            return &e->hs[i];
    e->hs = realloc(e->hs, (size_t)(e->nhs + 1) * sizeof *e->hs);
    hseries_t *h = &e->hs[e->nhs++];
    memset(h, 0, sizeof *h);
    snprintf(h->key, sizeof h->key, "%s", key);
    h->last_le = -INFINITY;
    return h;
}

static int histogram_sample(expo_t *e, int lineno, const char *line, const family_t *f, const sample_t *s,
                            int suffix)
{
    double le = NAN;
    for (int i = 0; i < s->nlabels; i++)
        if (strcmp(s->lname[i], "le") == 0 && parse_value(s->lvalue[i], &le) != 0)
            return bad(e, lineno, line, "le is not a number");
    if (suffix == 0)
        return bad(e, lineno, line, "histogram sample without _bucket/_sum/_count");
    if ((suffix == 1) == !!isnan(le))
        return bad(e, lineno, line, "le on a non-bucket sample or missing on a bucket");
    hseries_t *h = hseries(e, f, s);
    if (suffix == 2) {
        h->has_sum++;
        return 0;
    }
    if (s->value < 0 || s->value != floor(s->value))
        return bad(e, lineno, line, "bucket/count not a non-negative integer");
    if (suffix == 3) {
        h->has_count++;
        h->count = s->value;
        return 0;
    }
    if (h->has_inf || le <= h->last_le)
        return bad(e, lineno, line, "buckets not in increasing le order (or after +Inf)");
    if (h->nbuckets > 0 && s->value < h->last_bucket)
        return bad(e, lineno, line, "buckets not cumulative");
    h->nbuckets++;
    h->last_le = le;
    h->last_bucket = s->value;
    if (isinf(le) && le > 0) {
        h->has_inf = 1;
        h->inf_bucket = s->value;
    }
    return 0;
}

static int sample_line(expo_t *e, int lineno, const char *line)
{
    sample_t s;
    int suffix;
    if (parse_sample(line, &s) != 0)
        return bad(e, lineno, line, "not a valid sample line");
    family_t *f = family_of(e, s.name, &suffix);
    if (f == NULL || !f->typed)
        return bad(e, lineno, line, "sample without a TYPE line before it");
    if (enter_family(e, f) != 0)
        return bad(e, lineno, line, "the family's lines are not contiguous");
    f->started = 1;
    size_t id_len = strcspn(line, " ");
    for (int i = 0; i < e->nseen; i++)
        if (strlen(e->seen[i]) == id_len && strncmp(e->seen[i], line, id_len) == 0)
            return bad(e, lineno, line, "duplicate sample");
    e->seen = realloc(e->seen, (size_t)(e->nseen + 1) * sizeof *e->seen);
    e->seen[e->nseen++] = strndup(line, id_len);
    if (strcmp(f->type, "histogram") == 0)
        return histogram_sample(e, lineno, line, f, &s, suffix);
    if (strcmp(f->type, "counter") == 0 && !(s.value >= 0 && isfinite(s.value)))
        return bad(e, lineno, line, "counter value negative or not finite");
    return 0;
}

static int check_histograms(expo_t *e)
{
    for (int i = 0; i < e->nhs; i++) {
        const hseries_t *h = &e->hs[i];
        if (!h->has_inf || h->has_count != 1 || h->has_sum != 1 || h->count != h->inf_bucket) {
            snprintf(e->why, sizeof e->why,
                     "histogram %s: +Inf bucket %s, %d _count, %d _sum, count %.0f vs +Inf %.0f", h->key,
                     h->has_inf ? "present" : "missing", h->has_count, h->has_sum, h->count, h->inf_bucket);
            return -1;
        }
    }
    return 0;
}

/* 0 when text is a valid exposition; else -1 with the reason in why. */
int bw_prom_check(const char *text, char *why, size_t whylen)
{
    expo_t *e = calloc(1, sizeof *e);
    size_t len = strlen(text);
    int rc = 0, lineno = 0;
    e->cur = -1;
    if (len == 0 || text[len - 1] != '\n') {
        rc = -1;
        snprintf(e->why, sizeof e->why, "empty, or the last line is not terminated by \\n");
    }
    for (const char *p = text; rc == 0 && *p != '\0';) {
        const char *eol = strchr(p, '\n');
        char *line = strndup(p, (size_t)(eol - p));
        lineno++;
        if (line[0] == '\0')
            rc = bad(e, lineno, line, "empty line");
        else if (line[0] == '#')
            rc = parse_comment(e, lineno, line);
        else
            rc = sample_line(e, lineno, line);
        free(line);
        p = eol + 1;
    }
    if (rc == 0)
        rc = check_histograms(e);
    snprintf(why, whylen, "%s", e->why);
    for (int i = 0; i < e->nseen; i++)
        free(e->seen[i]);
    free(e->seen);
    free(e->hs);
    free(e);
    return rc;
}

/* The value of the sample whose "name{labels}" is exactly series, or NAN when absent. */
double bw_prom_value(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; p != NULL && *p != '\0';) {
        if (strncmp(p, series, n) == 0 && p[n] == ' ')
            return strtod(p + n + 1, NULL);
        p = strchr(p, '\n');
        p = p != NULL ? p + 1 : NULL;
    }
    return NAN;
}

