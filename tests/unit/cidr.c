/* cidr: list matching across IPv4, IPv6 and mapped addresses, and X-Forwarded-For parsing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "base/err.h"
#include "net/cidr.h"

static void test_match(void **state)
{
    (void)state;
    assert_true(cidr_list_match("10.0.0.0/8", "10.1.2.3"));
    assert_false(cidr_list_match("10.0.0.0/8", "11.0.0.1"));
    assert_true(cidr_list_match("192.168.1.0/24, 127.0.0.1", "127.0.0.1"));
    assert_false(cidr_list_match("127.0.0.1", "127.0.0.2"));
    assert_true(cidr_list_match("172.16.0.0/12", "172.31.255.255"));
    assert_false(cidr_list_match("172.16.0.0/12", "172.32.0.0"));
    assert_true(cidr_list_match("fd00::/8", "fd12:3456::1"));
    assert_false(cidr_list_match("fd00::/8", "fe80::1"));
    assert_true(cidr_list_match("::1", "::1"));
    assert_true(cidr_list_match("10.0.0.0/8", "::ffff:10.9.8.7"));
    assert_true(cidr_list_match("0.0.0.0/0", "8.8.8.8"));
    assert_false(cidr_list_match("0.0.0.0/0", "2001:db8::1"));
    assert_false(cidr_list_match("10.0.0.0/33", "10.0.0.1"));
    assert_false(cidr_list_match("garbage", "10.0.0.1"));
    assert_false(cidr_list_match("10.0.0.0/8", "not-an-ip"));
    assert_false(cidr_list_match("", "10.0.0.1"));
    assert_false(cidr_list_match(NULL, "10.0.0.1"));
}

static void test_forwarded(void **state)
{
    (void)state;
    char ip[64];
    assert_int_equal(cidr_forwarded_client("203.0.113.9", "10.0.0.0/8", ip, sizeof ip), 0);
    assert_string_equal(ip, "203.0.113.9");
    /* rightmost untrusted: a client cannot spoof by prepending */
    assert_int_equal(cidr_forwarded_client("1.1.1.1, 203.0.113.9, 10.0.0.5", "10.0.0.0/8", ip, sizeof ip), 0);
    assert_string_equal(ip, "203.0.113.9");
    assert_int_equal(cidr_forwarded_client(" 2001:db8::7 ", "10.0.0.0/8", ip, sizeof ip), 0);
    assert_string_equal(ip, "2001:db8::7");
    assert_int_equal(cidr_forwarded_client("10.0.0.1, 10.0.0.2", "10.0.0.0/8", ip, sizeof ip), GW_ENOTFOUND);
    assert_int_equal(cidr_forwarded_client("bogus", "10.0.0.0/8", ip, sizeof ip), GW_EINVAL);
    assert_int_equal(cidr_forwarded_client("", "10.0.0.0/8", ip, sizeof ip), GW_ENOTFOUND);
    assert_int_equal(cidr_forwarded_client("1.2.3.4,,", "10.0.0.0/8", ip, sizeof ip), GW_EINVAL);
    assert_int_equal(cidr_forwarded_client(NULL, "10.0.0.0/8", ip, sizeof ip), GW_ENOTFOUND);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_match),
        cmocka_unit_test(test_forwarded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
