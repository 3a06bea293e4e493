/* Unit tests for net/egress.c: which addresses the http job types may connect to. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <netinet/in.h>

#include "net/egress.h"

/* The verdict for an address given as text (IPv4 or IPv6). */
static const char *check(const bw_egress_t *e, const char *ip, const char *host)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, ip, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
    } else {
        assert_int_equal(inet_pton(AF_INET6, ip, &v6->sin6_addr), 1);
        v6->sin6_family = AF_INET6;
    }
    return bw_egress_check(e, (struct sockaddr *)&ss, host);
}

static void allowed(const bw_egress_t *e, const char *ip, const char *host)
{
    const char *why = check(e, ip, host);
    if (why != NULL)
        fail_msg("%s (host %s) refused: %s", ip, host ? host : "-", why);
}

static void refused(const bw_egress_t *e, const char *ip, const char *host, const char *why_part)
{
    const char *why = check(e, ip, host);
    if (why == NULL)
        fail_msg("%s (host %s) allowed", ip, host ? host : "-");
    if (strstr(why, why_part) == NULL)
        fail_msg("%s refused as '%s', want '%s'", ip, why, why_part);
}

static void test_default_policy(void **state)
{
    char err[200];
    bw_egress_t *e = bw_egress_create(NULL, "", err, sizeof err);
    assert_non_null(e);
    allowed(e, "93.184.216.34", "example.org");
    allowed(e, "2606:2800:220:1:248:1893:25c8:1946", "example.org");
    allowed(e, "172.32.0.1", NULL);
    allowed(e, "11.0.0.1", NULL);
    refused(e, "169.254.169.254", NULL, "link-local");
    refused(e, "169.254.1.1", NULL, "link-local");
    refused(e, "fe80::1", NULL, "link-local");
    refused(e, "fd00:ec2::254", NULL, "metadata");
    refused(e, "100.100.100.200", NULL, "metadata");
    refused(e, "168.63.129.16", NULL, "metadata");
    refused(e, "127.0.0.1", "localhost", "loopback");
    refused(e, "127.255.0.9", NULL, "loopback");
    refused(e, "::1", NULL, "loopback");
    refused(e, "10.1.2.3", NULL, "private");
    refused(e, "172.16.0.1", NULL, "private");
    refused(e, "172.31.255.255", NULL, "private");
    refused(e, "192.168.1.1", NULL, "private");
    refused(e, "fd12:3456::1", NULL, "private");
    refused(e, "100.64.0.1", NULL, "shared");
    refused(e, "0.0.0.0", NULL, "unspecified");
    refused(e, "::", NULL, "unspecified");
    refused(e, "224.0.0.1", NULL, "multicast");
    refused(e, "ff02::1", NULL, "multicast");
    refused(e, "255.255.255.255", NULL, "broadcast");
    /* IPv6 forms of IPv4 addresses are judged by the IPv4 address */
    refused(e, "::ffff:127.0.0.1", NULL, "loopback");
    refused(e, "::ffff:169.254.169.254", NULL, "link-local");
    refused(e, "64:ff9b::a9fe:a9fe", NULL, "link-local");
    refused(e, "2002:a9fe:a9fe::1", NULL, "link-local");
    refused(e, "2002:0a00:0001::1", NULL, "private");
    allowed(e, "::ffff:93.184.216.34", NULL);
    bw_egress_destroy(e);
}

static void test_allow_lists(void **state)
{
    char err[200];
    bw_egress_t *e = bw_egress_create("127.0.0.0/8, 10.20.0.0/16 ::1  fd00::/8", "db.internal,*.svc.local",
                                      err, sizeof err);
    assert_non_null(e);
    allowed(e, "127.0.0.1", NULL);
    allowed(e, "::ffff:127.0.0.1", NULL);
    allowed(e, "::1", NULL);
    allowed(e, "10.20.3.4", NULL);
    refused(e, "10.21.0.1", NULL, "private");
    allowed(e, "fd00:1::1", NULL);
    refused(e, "fc00::1", NULL, "private");
    /* host names may resolve to guarded ranges, never to refused ones */
    allowed(e, "192.168.1.9", "db.internal");
    allowed(e, "192.168.1.9", "DB.Internal.");
    refused(e, "192.168.1.9", "db.internal.evil.com", "private");
    refused(e, "192.168.1.9", "xdb.internal", "private");
    allowed(e, "172.16.0.5", "api.svc.local");
    allowed(e, "172.16.0.5", "a.b.svc.local");
    refused(e, "172.16.0.5", "svc.local", "private");
    refused(e, "169.254.169.254", "db.internal", "link-local");
    bw_egress_destroy(e);
    /* an allowed CIDR that covers a refused range does not open it */
    e = bw_egress_create("0.0.0.0/0 ::/0", NULL, err, sizeof err);
    assert_non_null(e);
    allowed(e, "10.0.0.1", NULL);
    refused(e, "169.254.169.254", NULL, "link-local");
    refused(e, "fe80::1", NULL, "link-local");
    bw_egress_destroy(e);
}

static void test_bad_lists(void **state)
{
    static const char *const cidrs[] = {"10.0.0.0/33", "10.0.0/8", "x", "::1/129", "10.0.0.0/", "1.2.3.4/8a"};
    static const char *const hosts[] = {"bad host!", "*.", "a/b", "*"};
    char err[200];
    for (size_t i = 0; i < sizeof cidrs / sizeof cidrs[0]; i++) {
        err[0] = '\0';
        assert_null(bw_egress_create(cidrs[i], NULL, err, sizeof err));
        if (strstr(err, "HTTP_ALLOW_CIDRS") == NULL)
            fail_msg("'%s': %s", cidrs[i], err);
    }
    for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++) {
        err[0] = '\0';
        assert_null(bw_egress_create(NULL, hosts[i], err, sizeof err));
        if (strstr(err, "HTTP_ALLOW_HOSTS") == NULL)
            fail_msg("'%s': %s", hosts[i], err);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_policy),
        cmocka_unit_test(test_allow_lists),
        cmocka_unit_test(test_bad_lists),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
