/* Unit tests for store/dedup.c (bounded result memory keyed by tenant and assignment id) and util/hmap.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "store/dedup.h"
#include "util/hmap.h"

static void put(bw_dedup_t *d, const char *id, const char *result, int64_t now)
{
    bw_dedup_entry_t e = {id, "acme", NULL, result, strlen(result)};
    bw_dedup_put(d, &e, now);
}

static void test_put_get(void **state)
{
    bw_dedup_t *d = bw_dedup_create(10, 1 << 20, 1000);
    bw_dedup_entry_t out;
    assert_int_equal(bw_dedup_get(d, "acme", "a", 0, &out), -1);
    bw_dedup_entry_t e = {"a", "acme", "0af7651916cd43dd8448eb211c80319c", "{\"r\":1}", 7};
    bw_dedup_put(d, &e, 0);
    assert_int_equal(bw_dedup_get(d, "acme", "a", 10, &out), 0);
    assert_string_equal(out.result, "{\"r\":1}");
    assert_int_equal(out.result_len, 7);
    assert_string_equal(out.tenant_id, "acme");
    assert_string_equal(out.trace_id, "0af7651916cd43dd8448eb211c80319c");
    /* replace */
    put(d, "a", "{\"r\":2}", 20);
    assert_int_equal(bw_dedup_count(d), 1);
    assert_int_equal(bw_dedup_get(d, "acme", "a", 30, &out), 0);
    assert_string_equal(out.result, "{\"r\":2}");
    bw_dedup_destroy(d);
}

/* The same assignment id from two tenants is two entries; neither sees the other's result, including
   when a plain concatenation of tenant and id would be the same string. */
static void test_tenants(void **state)
{
    bw_dedup_t *d = bw_dedup_create(10, 1 << 20, 1000);
    bw_dedup_entry_t out;
    bw_dedup_entry_t a = {"X", "tenant-a", NULL, "{\"secret\":\"A\"}", 14};
    bw_dedup_put(d, &a, 0);
    assert_int_equal(bw_dedup_get(d, "tenant-b", "X", 1, &out), -1);
    bw_dedup_entry_t b = {"X", "tenant-b", NULL, "{\"mine\":\"B\"}", 12};
    bw_dedup_put(d, &b, 1);
    assert_int_equal(bw_dedup_count(d), 2);
    assert_int_equal(bw_dedup_get(d, "tenant-a", "X", 2, &out), 0);
    assert_string_equal(out.result, "{\"secret\":\"A\"}");
    assert_int_equal(bw_dedup_get(d, "tenant-b", "X", 2, &out), 0);
    assert_string_equal(out.result, "{\"mine\":\"B\"}");
    assert_string_equal(out.tenant_id, "tenant-b");
    /* "a" + "bX" and "ab" + "X" */
    bw_dedup_entry_t c1 = {"bX", "a", NULL, "one", 3}, c2 = {"X", "ab", NULL, "two", 3};
    bw_dedup_put(d, &c1, 3);
    assert_int_equal(bw_dedup_get(d, "ab", "X", 4, &out), -1);
    bw_dedup_put(d, &c2, 4);
    assert_int_equal(bw_dedup_get(d, "a", "bX", 5, &out), 0);
    assert_string_equal(out.result, "one");
    assert_int_equal(bw_dedup_get(d, "ab", "X", 5, &out), 0);
    assert_string_equal(out.result, "two");
    /* a tenant made of digits and a colon cannot pass for another length prefix */
    bw_dedup_entry_t c3 = {"X", "2:ab", NULL, "three", 5};
    bw_dedup_put(d, &c3, 6);
    assert_int_equal(bw_dedup_get(d, "ab", "X", 7, &out), 0);
    assert_string_equal(out.result, "two");
    assert_int_equal(bw_dedup_count(d), 5);
    bw_dedup_destroy(d);
}

static void test_job_key(void **state)
{
    char k1[BW_JOB_KEY_MAX], k2[BW_JOB_KEY_MAX], big[300];
    size_t n1 = bw_job_key(k1, "a", "bX"), n2 = bw_job_key(k2, "ab", "X");
    assert_true(n1 > 0 && n2 > 0);
    assert_false(n1 == n2 && memcmp(k1, k2, n1) == 0);
    n1 = bw_job_key(k1, "1:a", "b"); /* "3:1:ab" */
    n2 = bw_job_key(k2, "1", ":ab"); /* "1:1:ab" */
    assert_false(n1 == n2 && memcmp(k1, k2, n1) == 0);
    /* the limits: 256 bytes each fit (the largest key), 257 do not */
    memset(big, 'x', 256);
    big[256] = '\0';
    n1 = bw_job_key(k1, big, big);
    assert_int_equal(n1, 4 + 256 + 256);
    big[256] = 'x';
    big[257] = '\0';
    assert_int_equal(bw_job_key(k1, big, "id"), 0);
    assert_int_equal(bw_job_key(k1, "t", big), 0);
    bw_dedup_t *d = bw_dedup_create(10, 1 << 20, 1000);
    bw_dedup_entry_t e = {big, "t", NULL, "r", 1}, out;
    bw_dedup_put(d, &e, 0);
    assert_int_equal(bw_dedup_count(d), 0);
    assert_int_equal(bw_dedup_get(d, "t", big, 1, &out), -1);
    bw_dedup_destroy(d);
}

static void test_ttl(void **state)
{
    bw_dedup_t *d = bw_dedup_create(10, 1 << 20, 1000);
    bw_dedup_entry_t out;
    put(d, "a", "x", 0);
    assert_int_equal(bw_dedup_get(d, "acme", "a", 999, &out), 0);
    assert_int_equal(bw_dedup_get(d, "acme", "a", 1000, &out), -1);
    assert_int_equal(bw_dedup_count(d), 0);
    /* expired entries are also evicted when new ones arrive */
    put(d, "b", "x", 0);
    put(d, "c", "x", 5000);
    assert_int_equal(bw_dedup_count(d), 1);
    bw_dedup_destroy(d);
}

static void test_bounds(void **state)
{
    bw_dedup_t *d = bw_dedup_create(100, 1 << 20, 1000000);
    char id[32];
    bw_dedup_entry_t out;
    for (int i = 0; i < 1000; i++) {
        snprintf(id, sizeof id, "id-%d", i);
        put(d, id, "result", i);
    }
    assert_int_equal(bw_dedup_count(d), 100);
    assert_int_equal(bw_dedup_get(d, "acme", "id-899", 1000, &out), -1);
    assert_int_equal(bw_dedup_get(d, "acme", "id-900", 1000, &out), 0);
    bw_dedup_destroy(d);
    /* a byte budget: big results push out old ones; one larger than the budget is not stored */
    d = bw_dedup_create(1000, 4096, 1000000);
    char big[1500];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof id, "big-%d", i);
        put(d, id, big, i);
    }
    assert_true(bw_dedup_bytes(d) <= 4096);
    assert_true(bw_dedup_count(d) >= 1 && bw_dedup_count(d) <= 3);
    char huge[5000];
    memset(huge, 'y', sizeof huge - 1);
    huge[sizeof huge - 1] = 0;
    put(d, "huge", huge, 20);
    assert_int_equal(bw_dedup_get(d, "acme", "huge", 21, &out), -1);
    bw_dedup_destroy(d);
    /* disabled */
    d = bw_dedup_create(0, 4096, 1000);
    put(d, "a", "x", 0);
    assert_int_equal(bw_dedup_get(d, "acme", "a", 1, &out), -1);
    bw_dedup_destroy(d);
}

static void count_cb(void *ud, const char *key, void *value)
{
    (*(int *)ud)++;
    assert_ptr_equal(value, (void *)(long)key[0]);
}

static void test_hmap(void **state)
{
    bw_hmap_t *m = bw_hmap_create();
    char key[32];
    for (long i = 0; i < 5000; i++) {
        snprintf(key, sizeof key, "%ld", i);
        assert_null(bw_hmap_put(m, key, strlen(key), (void *)(long)key[0]));
    }
    assert_int_equal(bw_hmap_size(m), 5000);
    int n = 0;
    bw_hmap_foreach(m, count_cb, &n);
    assert_int_equal(n, 5000);
    assert_ptr_equal(bw_hmap_get(m, "4999", 4), (void *)(long)'4');
    assert_null(bw_hmap_get(m, "5000", 4));
    assert_null(bw_hmap_get(m, "49999", 5)); /* the length is part of the key */
    assert_non_null(bw_hmap_get(m, "49999", 4));
    for (long i = 0; i < 5000; i += 2) {
        snprintf(key, sizeof key, "%ld", i);
        assert_non_null(bw_hmap_del(m, key, strlen(key)));
    }
    assert_int_equal(bw_hmap_size(m), 2500);
    assert_null(bw_hmap_del(m, "0", 1));
    assert_non_null(bw_hmap_get(m, "1", 1));
    bw_hmap_destroy(m);
}

static uint64_t fnv1a(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* Hash flooding: 2,000 ids chosen so that an unkeyed FNV-1a (the map's hash before) puts them all in one
   bucket of the 2,048 the map has at that size; each lookup would walk them all. A keyed hash spreads them.
 */
static void test_hmap_colliding_keys(void **state)
{
    bw_hmap_t *m = bw_hmap_create();
    char key[32];
    int found = 0;
    for (long i = 0; found < 2000; i++) {
        int n = snprintf(key, sizeof key, "job-%ld", i);
        if ((fnv1a(key, (size_t)n) & 2047) != 0)
            continue;
        assert_null(bw_hmap_put(m, key, (size_t)n, (void *)1));
        found++;
    }
    assert_int_equal(bw_hmap_size(m), 2000);
    size_t longest = bw_hmap_longest_chain(m);
    if (longest > 32)
        fail_msg("%zu of 2000 chosen keys share one bucket", longest);
    bw_hmap_destroy(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_get),
        cmocka_unit_test(test_tenants),
        cmocka_unit_test(test_job_key),
        cmocka_unit_test(test_ttl),
        cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_hmap),
        cmocka_unit_test(test_hmap_colliding_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
