/*
 * The egress policy of the http and graphql job types: which addresses a job may connect to. It is
 * applied to the address a connection is actually made to (after DNS, on every redirect hop), so neither
 * DNS rebinding nor a redirect can get around it.
 *
 *  - Always refused: link-local addresses (169.254.0.0/16, fe80::/10), where cloud metadata services
 *    live, and the metadata addresses outside that range (fd00:ec2::254, 100.100.100.200, 168.63.129.16);
 *    unspecified, multicast, broadcast and reserved addresses.
 *  - Refused unless allowed: loopback (127.0.0.0/8, ::1), private (10/8, 172.16/12, 192.168/16, fc00::/7)
 *    and shared (100.64/10) ranges. HTTP_ALLOW_CIDRS lists CIDRs whose addresses are allowed;
 *    HTTP_ALLOW_HOSTS lists host names ("api.internal", or "*.internal" for any name below it) that may
 *    resolve to such addresses.
 *  - Everything else is allowed.
 * IPv6 forms that carry an IPv4 address (mapped ::ffff:a.b.c.d, NAT64 64:ff9b::/96, 6to4 2002::/16) are
 * judged by that IPv4 address.
 */
#ifndef BW_NET_EGRESS_H
#define BW_NET_EGRESS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

typedef struct bw_egress bw_egress_t;

/* Parses the two lists (comma or space separated; NULL or "" for none). Returns NULL with a message
   naming the bad entry in err. */
bw_egress_t *bw_egress_create(const char *allow_cidrs, const char *allow_hosts, char *err, size_t errlen);
void bw_egress_destroy(bw_egress_t *e);

/* NULL when a connection to addr, for the URL host `host` (may be NULL), is allowed; otherwise why not
   (a static string such as "a link-local address"). */
const char *bw_egress_check(const bw_egress_t *e, const struct sockaddr *addr, const char *host);

#endif
