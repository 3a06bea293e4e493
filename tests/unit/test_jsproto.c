/* Unit tests for net/jsproto.c: the result store's key encoding, ack subjects, subject wildcards. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "net/jsproto.h"

static void test_b64url(void **state)
{
    char out[64];
    /* RFC 4648 test vectors, url alphabet, no padding */
    static const struct {
        const char *in, *out;
    } v[] = {{"", ""},
             {"f", "Zg"},
             {"fo", "Zm8"},
             {"foo", "Zm9v"},
             {"foob", "Zm9vYg"},
             {"fooba", "Zm9vYmE"},
             {"foobar", "Zm9vYmFy"},
             {"\xfb\xff", "-_8"},
             {"a.b c*>", "YS5iIGMqPg"}};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        size_t n = bw_js_b64url(out, v[i].in, strlen(v[i].in));
        assert_string_equal(out, v[i].out);
        assert_int_equal(n, strlen(v[i].out));
    }
    /* every output byte is allowed in a KV key and in one subject token */
    char all[256], enc[400];
    for (int i = 0; i < 256; i++)
        all[i] = (char)i;
    size_t n = bw_js_b64url(enc, all, sizeof all);
    assert_int_equal(n, (256 * 4 + 2) / 3);
    for (size_t i = 0; i < n; i++)
        assert_non_null(strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", enc[i]));
}

static void test_ack_subjects(void **state)
{
    uint64_t count = 0;
    int64_t pending = -1;
    assert_int_equal(
        bw_js_parse_ack("$JS.ACK.CAF_ASSIGN.caf-workers.3.41.57.1796516457289868764.12", &count, &pending),
        0);
    assert_int_equal(count, 3);
    assert_int_equal(pending, 12);
    /* the form with a domain and an account hash (and a trailing token) */
    assert_int_equal(
        bw_js_parse_ack("$JS.ACK.hub.ACCHASH.S.C.7.1.2.1796516457289868764.0.tok", &count, &pending), 0);
    assert_int_equal(count, 7);
    assert_int_equal(pending, 0);
    /* not ack subjects: status replies, inboxes, short or hostile ones */
    assert_int_equal(bw_js_parse_ack("_INBOX.abc.p.1", &count, &pending), -1);
    assert_int_equal(bw_js_parse_ack("$JS.ACK.S.C.1", &count, &pending), -1);
    assert_int_equal(bw_js_parse_ack("$JS.ACK.S.C.0.1.1.1.0", &count, &pending), -1); /* delivered 0 */
    assert_int_equal(bw_js_parse_ack("$JS.ACK.a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s", &count, &pending), -1);
    assert_int_equal(bw_js_parse_ack("", &count, &pending), -1);
}

static void test_subject_covers(void **state)
{
    assert_true(bw_js_subject_covers("caf.exec.assign.v1", "caf.exec.assign.v1"));
    assert_true(bw_js_subject_covers("caf.exec.*.v1", "caf.exec.assign.v1"));
    assert_true(bw_js_subject_covers("caf.>", "caf.exec.assign.v1"));
    assert_true(bw_js_subject_covers(">", "caf"));
    assert_false(bw_js_subject_covers("caf.exec.assign", "caf.exec.assign.v1"));
    assert_false(bw_js_subject_covers("caf.exec.assign.v1.ack", "caf.exec.assign.v1"));
    assert_false(bw_js_subject_covers("caf.*", "caf.exec.assign"));
    assert_false(bw_js_subject_covers("caf.>", "caf"));
    assert_false(bw_js_subject_covers("caf.exec.assign.v2", "caf.exec.assign.v1"));
    assert_false(bw_js_subject_covers("caf.exec.assignx.v1", "caf.exec.assign.v1"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64url),
        cmocka_unit_test(test_ack_subjects),
        cmocka_unit_test(test_subject_covers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
