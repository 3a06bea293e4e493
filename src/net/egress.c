/* The egress policy (see egress.h). Addresses are compared as 16-byte IPv6 values: IPv4 addresses are
   held in their mapped form (::ffff:a.b.c.d), so one table and one prefix test serve both families. */
#include "net/egress.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util/xalloc.h"

typedef struct prefix {
    uint8_t a[16];
    int bits; /* over the 16-byte form: an IPv4 /n is 96 + n */
} prefix_t;

struct bw_egress {
    prefix_t *cidrs;
    size_t ncidrs;
    char **hosts; /* lower case; "*.x" matches any name ending in ".x" */
    size_t nhosts;
};

typedef struct range {
    const char *text;
    const char *why;
} range_t;

/* Never allowed, whatever the lists say. */
static const range_t refused[] = {
    {"169.254.0.0/16", "a link-local address (cloud metadata services live there)"},
    {"fe80::/10", "a link-local address"},
    {"fd00:ec2::254/128", "a cloud metadata address"},
    {"100.100.100.200/32", "a cloud metadata address"},
    {"168.63.129.16/32", "a cloud metadata address"},
    {"0.0.0.0/8", "an unspecified address"},
    {"::/128", "an unspecified address"},
    {"224.0.0.0/4", "a multicast address"},
    {"ff00::/8", "a multicast address"},
    {"240.0.0.0/4", "a reserved or broadcast address"},
};

/* Allowed only through HTTP_ALLOW_CIDRS or HTTP_ALLOW_HOSTS. */
static const range_t guarded[] = {
    {"127.0.0.0/8", "a loopback address"},
    {"::1/128", "a loopback address"},
    {"10.0.0.0/8", "a private address"},
    {"172.16.0.0/12", "a private address"},
    {"192.168.0.0/16", "a private address"},
    {"fc00::/7", "a private (unique local) address"},
    {"100.64.0.0/10", "a shared (carrier-grade NAT) address"},
};

static const uint8_t mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* "a.b.c.d/n" or "x::y/n" (the length defaults to the whole address). 0 or -1. */
static int parse_prefix(const char *text, size_t len, prefix_t *p)
{
    char buf[64];
    if (len == 0 || len >= sizeof buf)
        return -1;
    memcpy(buf, text, len);
    buf[len] = '\0';
    char *slash = strchr(buf, '/');
    long bits = -1;
    if (slash != NULL) {
        char *end;
        *slash = '\0';
        if (!isdigit((unsigned char)slash[1]))
            return -1;
        bits = strtol(slash + 1, &end, 10);
        if (*end != '\0')
            return -1;
    }
    struct in_addr v4;
    struct in6_addr v6;
    if (inet_pton(AF_INET, buf, &v4) == 1) {
        if (bits > 32)
            return -1;
        memcpy(p->a, mapped_prefix, 12);
        memcpy(p->a + 12, &v4, 4);
        p->bits = 96 + (int)(bits < 0 ? 32 : bits);
    } else if (inet_pton(AF_INET6, buf, &v6) == 1) {
        if (bits > 128)
            return -1;
        memcpy(p->a, &v6, 16);
        p->bits = (int)(bits < 0 ? 128 : bits);
    } else {
        return -1;
    }
    return 0;
}

static bool in_prefix(const uint8_t a[16], const prefix_t *p)
{
    int full = p->bits / 8, rest = p->bits % 8;
    if (memcmp(a, p->a, (size_t)full) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a[full] & mask) == (p->a[full] & mask);
}

static const char *in_ranges(const uint8_t a[16], const range_t *r, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        prefix_t p;
        if (parse_prefix(r[i].text, strlen(r[i].text), &p) == 0 && in_prefix(a, &p))
            return r[i].why;
    }
    return NULL;
}

/* The address in 16-byte form; IPv6 forms that embed an IPv4 address are turned into it. */
static bool address_of(const struct sockaddr *sa, uint8_t a[16])
{
    if (sa->sa_family == AF_INET) {
        memcpy(a, mapped_prefix, 12);
        memcpy(a + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return true;
    }
    if (sa->sa_family != AF_INET6)
        return false;
    const uint8_t *b = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    static const uint8_t nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
    memcpy(a, b, 16);
    if (memcmp(b, nat64, 12) == 0) {
        memcpy(a, mapped_prefix, 12);
        memcpy(a + 12, b + 12, 4);
    } else if (b[0] == 0x20 && b[1] == 0x02) { /* 6to4: 2002:AABB:CCDD::/48 */
        memcpy(a, mapped_prefix, 12);
        memcpy(a + 12, b + 2, 4);
    }
    return true;
}

static bool host_allowed(const bw_egress_t *e, const char *host)
{
    if (host == NULL || *host == '\0')
        return false;
    size_t hl = strlen(host);
    if (host[hl - 1] == '.') /* a fully qualified name's final dot */
        hl--;
    for (size_t i = 0; i < e->nhosts; i++) {
        const char *h = e->hosts[i];
        size_t n = strlen(h);
        if (h[0] == '*') { /* "*.x": names ending in ".x", not "x" itself */
            if (hl > n - 1 && strncasecmp(host + hl - (n - 1), h + 1, n - 1) == 0)
                return true;
        } else if (hl == n && strncasecmp(host, h, n) == 0) {
            return true;
        }
    }
    return false;
}

const char *bw_egress_check(const bw_egress_t *e, const struct sockaddr *addr, const char *host)
{
    uint8_t a[16];
    if (!address_of(addr, a))
        return "not an IP address";
    const char *why = in_ranges(a, refused, sizeof refused / sizeof refused[0]);
    if (why != NULL)
        return why;
    why = in_ranges(a, guarded, sizeof guarded / sizeof guarded[0]);
    if (why == NULL)
        return NULL;
    for (size_t i = 0; e != NULL && i < e->ncidrs; i++)
        if (in_prefix(a, &e->cidrs[i]))
            return NULL;
    if (e != NULL && host_allowed(e, host))
        return NULL;
    return why;
}

typedef int (*entry_fn)(bw_egress_t *e, const char *s, size_t n);

/* Calls fn for each entry of a comma- or space-separated list; at the first it refuses, copies that
   entry into bad and returns -1. */
static int each_entry(const char *list, entry_fn fn, bw_egress_t *e, char *bad, size_t badlen)
{
    for (const char *p = list; p != NULL && *p != '\0';) {
        while (*p == ',' || isspace((unsigned char)*p))
            p++;
        size_t n = 0;
        while (p[n] != '\0' && p[n] != ',' && !isspace((unsigned char)p[n]))
            n++;
        if (n > 0 && fn(e, p, n) != 0) {
            snprintf(bad, badlen, "%.*s", (int)(n < 80 ? n : 80), p);
            return -1;
        }
        p += n;
    }
    return 0;
}

static int add_cidr(bw_egress_t *e, const char *s, size_t n)
{
    prefix_t p;
    if (parse_prefix(s, n, &p) != 0)
        return -1;
    e->cidrs = bw_realloc(e->cidrs, (e->ncidrs + 1) * sizeof *e->cidrs);
    e->cidrs[e->ncidrs++] = p;
    return 0;
}

/* A host name, or "*." and one. */
static int add_host(bw_egress_t *e, const char *s, size_t n)
{
    size_t from = (n > 2 && s[0] == '*' && s[1] == '.') ? 2 : 0;
    if (n > 253 || n == from)
        return -1;
    for (size_t i = from; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '-' || s[i] == '.' || s[i] == '_'))
            return -1;
    char *h = bw_malloc(n + 1);
    for (size_t i = 0; i < n; i++)
        h[i] = (char)tolower((unsigned char)s[i]);
    h[n] = '\0';
    e->hosts = bw_realloc(e->hosts, (e->nhosts + 1) * sizeof *e->hosts);
    e->hosts[e->nhosts++] = h;
    return 0;
}

bw_egress_t *bw_egress_create(const char *allow_cidrs, const char *allow_hosts, char *err, size_t errlen)
{
    char bad[96];
    bw_egress_t *e = bw_calloc(1, sizeof *e);
    if (each_entry(allow_cidrs, add_cidr, e, bad, sizeof bad) != 0) {
        snprintf(err, errlen, "HTTP_ALLOW_CIDRS: '%s' is not an address or a CIDR (a.b.c.d/n, x::y/n)", bad);
        bw_egress_destroy(e);
        return NULL;
    }
    if (each_entry(allow_hosts, add_host, e, bad, sizeof bad) != 0) {
        snprintf(err, errlen, "HTTP_ALLOW_HOSTS: '%s' is not a host name or *.name", bad);
        bw_egress_destroy(e);
        return NULL;
    }
    return e;
}

void bw_egress_destroy(bw_egress_t *e)
{
    if (e == NULL)
        return;
    for (size_t i = 0; i < e->nhosts; i++)
        free(e->hosts[i]);
    free(e->hosts);
    free(e->cidrs);
    free(e);
}
