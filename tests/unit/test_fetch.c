/* Unit tests for net/fetch.c's pure parts: Retry-After values. (Requests themselves are tested through
   the worker against real servers: tests/integration/test_http_jobs.c.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "net/fetch.h"

static void test_retry_after(void **state)
{
    /* Sun, 06 Nov 1994 08:49:37 GMT is 784111777 */
    const int64_t now = 784111777;
    assert_int_equal(bw_fetch_retry_after_ms("0", now), 0);
    assert_int_equal(bw_fetch_retry_after_ms("3", now), 3000);
    assert_int_equal(bw_fetch_retry_after_ms(" 120 ", now), 120000);
    assert_int_equal(bw_fetch_retry_after_ms("Sun, 06 Nov 1994 08:49:47 GMT", now), 10000);
    assert_int_equal(bw_fetch_retry_after_ms("Sunday, 06-Nov-94 08:49:40 GMT", now), 3000);
    assert_int_equal(bw_fetch_retry_after_ms("Sun Nov  6 08:49:39 1994", now), 2000);
    assert_int_equal(bw_fetch_retry_after_ms("Sun, 06 Nov 1994 08:00:00 GMT", now), 0); /* past: now */
    assert_int_equal(bw_fetch_retry_after_ms("-1", now), -1);
    assert_int_equal(bw_fetch_retry_after_ms("1.5", now), -1);
    assert_int_equal(bw_fetch_retry_after_ms("soon", now), -1);
    assert_int_equal(bw_fetch_retry_after_ms("", now), -1);
    assert_int_equal(bw_fetch_retry_after_ms("99999999999", now), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_retry_after),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
