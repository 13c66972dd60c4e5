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

/* Per-IP limit keys: IPv6 by prefix, IPv4 whole however it is written. */
static void test_limit_key(void **state)
{
    (void)state;
    char k[CIDR_KEY_MAX];
    cidr_limit_key("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 64, k, sizeof k);
    assert_string_equal(k, "2001:db8:1:2::/64");
    char k2[sizeof k];
    cidr_limit_key("2001:0db8:0001:0002::1", 64, k2, sizeof k2);
    assert_string_equal(k, k2);   /* two addresses of one /64, written differently: one key */
    cidr_limit_key("2001:db8:1:3::1", 64, k2, sizeof k2);
    assert_string_not_equal(k, k2);
    cidr_limit_key("2001:db8:1:2ff::1", 56, k, sizeof k);
    assert_string_equal(k, "2001:db8:1:200::/56");
    cidr_limit_key("2001:db8:1:2ff::1", 57, k, sizeof k);
    assert_string_equal(k, "2001:db8:1:280::/57");
    cidr_limit_key("2001:db8::1", 128, k, sizeof k);
    assert_string_equal(k, "2001:db8::1");
    cidr_limit_key("::1", 64, k, sizeof k);
    assert_string_equal(k, "::/64");
    cidr_limit_key("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 127, k, sizeof k);
    assert_string_equal(k, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/127");
    cidr_limit_key("203.0.113.7", 64, k, sizeof k);
    assert_string_equal(k, "203.0.113.7");
    cidr_limit_key("::ffff:203.0.113.7", 64, k, sizeof k);
    assert_string_equal(k, "203.0.113.7");
    cidr_limit_key("?", 64, k, sizeof k);
    assert_string_equal(k, "?");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_match),
        cmocka_unit_test(test_forwarded),
        cmocka_unit_test(test_limit_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
