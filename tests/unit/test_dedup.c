/* Unit tests for store/dedup.c (bounded result memory) and util/hmap.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
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
    assert_int_equal(bw_dedup_get(d, "a", 0, &out), -1);
    bw_dedup_entry_t e = {"a", "acme", "0af7651916cd43dd8448eb211c80319c", "{\"r\":1}", 7};
    bw_dedup_put(d, &e, 0);
    assert_int_equal(bw_dedup_get(d, "a", 10, &out), 0);
    assert_string_equal(out.result, "{\"r\":1}");
    assert_int_equal(out.result_len, 7);
    assert_string_equal(out.tenant_id, "acme");
    assert_string_equal(out.trace_id, "0af7651916cd43dd8448eb211c80319c");
    /* replace */
    put(d, "a", "{\"r\":2}", 20);
    assert_int_equal(bw_dedup_count(d), 1);
    assert_int_equal(bw_dedup_get(d, "a", 30, &out), 0);
    assert_string_equal(out.result, "{\"r\":2}");
    bw_dedup_destroy(d);
}

static void test_ttl(void **state)
{
    bw_dedup_t *d = bw_dedup_create(10, 1 << 20, 1000);
    bw_dedup_entry_t out;
    put(d, "a", "x", 0);
    assert_int_equal(bw_dedup_get(d, "a", 999, &out), 0);
    assert_int_equal(bw_dedup_get(d, "a", 1000, &out), -1);
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
    assert_int_equal(bw_dedup_get(d, "id-899", 1000, &out), -1);
    assert_int_equal(bw_dedup_get(d, "id-900", 1000, &out), 0);
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
    assert_int_equal(bw_dedup_get(d, "huge", 21, &out), -1);
    bw_dedup_destroy(d);
    /* disabled */
    d = bw_dedup_create(0, 4096, 1000);
    put(d, "a", "x", 0);
    assert_int_equal(bw_dedup_get(d, "a", 1, &out), -1);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_get),
        cmocka_unit_test(test_ttl),
        cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_hmap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
