/* sentry: the codec without I/O. DSNs good and bad (and what the endpoint and auth header
 * become), the event of a report (fingerprint, tags, Lua frames oldest first), the envelope's
 * three lines with an exact item length, report_where, and crash records parsed or refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "app/crash.h"
#include "base/err.h"
#include "base/report.h"
#include "net/sentry.h"

static void test_dsn(void **state)
{
    (void)state;
    sentry_dsn_t d;
    char err[256];
    assert_int_equal(sentry_dsn_parse("https://abc@o1.ingest.sentry.io/123", &d, err, sizeof err), 0);
    assert_string_equal(d.url, "https://o1.ingest.sentry.io/api/123/envelope/");
    assert_string_equal(d.public_dsn, "https://abc@o1.ingest.sentry.io/123");
    assert_non_null(strstr(d.auth, "sentry_version=7"));
    assert_non_null(strstr(d.auth, "sentry_key=abc"));
    assert_null(strstr(d.auth, "sentry_secret"));

    assert_int_equal(sentry_dsn_parse("http://k:s@127.0.0.1:9000/glitch/tip/7", &d, err, sizeof err), 0);
    assert_string_equal(d.url, "http://127.0.0.1:9000/glitch/tip/api/7/envelope/");
    assert_string_equal(d.public_dsn, "http://k@127.0.0.1:9000/glitch/tip/7");
    assert_non_null(strstr(d.auth, "sentry_secret=s"));

    const char *bad[] = {"", "ftp://k@h/1", "https://h/1", "https://k@h", "https://k@h/", "https://@h/1",
                         "https://k@/1", "https://k@h/1?x=1", "https://k@h/1 ", "https://k@h/\"1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        assert_int_equal(sentry_dsn_parse(bad[i], &d, err, sizeof err), GW_EINVAL);
        assert_true(err[0]);
    }
}

static void test_where(void **state)
{
    (void)state;
    char w[64];
    assert_int_equal(report_where("policy.lua:12: boom", w, sizeof w), 0);
    assert_string_equal(w, "policy.lua:12");
    assert_int_equal(report_where("x\nstack traceback:\n\t[C]: in ?\n\trooms.lua:7: in function 'f'", w, sizeof w), 0);
    assert_string_equal(w, "rooms.lua:7");
    assert_int_equal(report_where("a.lua: no line", w, sizeof w), GW_ENOTFOUND);
    assert_int_equal(report_where(NULL, w, sizeof w), GW_ENOTFOUND);
    char tiny[5];
    assert_int_equal(report_where("policy.lua:12: x", tiny, sizeof tiny), 0);
    assert_string_equal(tiny, "poli");
}

static void test_event_and_envelope(void **state)
{
    (void)state;
    report_t r = {.kind = "policy_error", .level = "error", .message = "policy.lua:3: boom", .hook = "on_message",
                  .where = "policy.lua:3",
                  .traceback = "stack traceback:\n\t[C]: in function 'error'\n\tpolicy.lua:3: in function 'explode'\n"
                               "\tpolicy.lua:9: in function <policy.lua:7>",
                  .policy_version = "0123456789abcdef0123", .worker = 2};
    json_t *ev = sentry_event_of(&r, 2, 4);
    assert_non_null(ev);
    json_t *fp = json_object_get(ev, "fingerprint");
    assert_string_equal(json_string_value(json_array_get(fp, 0)), "policy_error");
    assert_string_equal(json_string_value(json_array_get(fp, 1)), "on_message");
    assert_string_equal(json_string_value(json_array_get(fp, 2)), "policy.lua:3");
    json_t *tags = json_object_get(ev, "tags");
    assert_string_equal(json_string_value(json_object_get(tags, "policy_version")), "0123456789ab");
    assert_string_equal(json_string_value(json_object_get(tags, "worker")), "2");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(ev, "extra"), "suppressed_since_last")), 4);
    json_t *frames = json_object_get(json_object_get(json_array_get(json_object_get(json_object_get(ev, "exception"),
                                                                                     "values"), 0), "stacktrace"), "frames");
    assert_int_equal(json_array_size(frames), 3);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(frames, 0), "lineno")), 9);   /* oldest first */
    assert_int_equal(json_integer_value(json_object_get(json_array_get(frames, 1), "lineno")), 3);
    assert_string_equal(json_string_value(json_object_get(json_array_get(frames, 1), "function")), "function 'explode'");
    assert_string_equal(json_string_value(json_object_get(json_array_get(frames, 2), "filename")), "[C]");

    json_object_set_new(ev, "event_id", json_string("00112233445566778899aabbccddeeff"));
    size_t len;
    char *env = sentry_envelope("https://k@h/1", ev, &len);
    assert_non_null(env);
    assert_int_equal(strlen(env), len);
    char *l1 = env, *l2 = strchr(l1, '\n') + 1, *l3 = strchr(l2, '\n') + 1;
    json_t *h = json_loadb(l1, (size_t)(l2 - l1 - 1), 0, NULL), *ih = json_loadb(l2, (size_t)(l3 - l2 - 1), 0, NULL);
    assert_non_null(h);
    assert_non_null(ih);
    assert_string_equal(json_string_value(json_object_get(h, "event_id")), "00112233445566778899aabbccddeeff");
    assert_string_equal(json_string_value(json_object_get(h, "dsn")), "https://k@h/1");
    assert_string_equal(json_string_value(json_object_get(ih, "type")), "event");
    size_t plen = (size_t)json_integer_value(json_object_get(ih, "length"));
    assert_int_equal(plen + 1, len - (size_t)(l3 - env));   /* the payload, then one newline */
    json_t *back = json_loadb(l3, plen, 0, NULL);
    assert_non_null(back);
    assert_true(json_equal(back, ev));
    json_decref(back);
    json_decref(h);
    json_decref(ih);
    free(env);
    json_decref(ev);

    /* no traceback with a Lua frame: no stacktrace; not UTF-8: no event */
    report_t plain = {.kind = "bus_error", .message = "redis link down"};
    ev = sentry_event_of(&plain, -1, 0);
    assert_null(json_object_get(json_array_get(json_object_get(json_object_get(ev, "exception"), "values"), 0),
                                "stacktrace"));
    assert_null(json_object_get(json_object_get(ev, "tags"), "worker"));
    json_decref(ev);
    report_t bad = {.kind = "x", .message = "\xff\xfe"};
    assert_null(sentry_event_of(&bad, 0, 0));
}

static void test_crash_record(void **state)
{
    (void)state;
    const char *rec = "chatgw-crash 1\nsignal 11 SIGSEGV\ncode 0\ntime 1795000000\nversion 9.9.9\npolicy abcdef0123456789\n"
                      "pid 7\nthread worker-1\nbacktrace\n./chatgw(crash_on_signal+0x10) [0x1000]\n"
                      "/lib/libc.so.6(+0x3bfd0) [0x2000]\n./chatgw(hub_room_send+0x2a) [0x3000]\n./chatgw(main+0x5) [0x4000]\n";
    json_t *ev = crash_record_event(rec, strlen(rec));
    assert_non_null(ev);
    assert_string_equal(json_string_value(json_object_get(ev, "level")), "fatal");
    assert_string_equal(json_string_value(json_object_get(ev, "release")), "chatgw@9.9.9");
    assert_int_equal(json_integer_value(json_object_get(ev, "timestamp")), 1795000000);
    json_t *tags = json_object_get(ev, "tags");
    assert_string_equal(json_string_value(json_object_get(tags, "signal")), "SIGSEGV");
    assert_string_equal(json_string_value(json_object_get(tags, "thread")), "worker-1");
    assert_string_equal(json_string_value(json_object_get(tags, "policy_version")), "abcdef012345");
    json_t *fp = json_object_get(ev, "fingerprint");
    assert_string_equal(json_string_value(json_array_get(fp, 2)), "hub_room_send");   /* the handler skipped */
    json_t *exc = json_array_get(json_object_get(json_object_get(ev, "exception"), "values"), 0);
    json_t *frames = json_object_get(json_object_get(exc, "stacktrace"), "frames");
    assert_int_equal(json_array_size(frames), 4);
    assert_string_equal(json_string_value(json_object_get(json_array_get(frames, 0), "function")), "main");
    assert_string_equal(json_string_value(json_object_get(json_array_get(frames, 0), "instruction_addr")), "0x4000");
    json_decref(ev);

    const char *bad[] = {"", "chatgw-crash 2\nsignal 11 SIGSEGV\ntime 1\n", "chatgw-crash 1\ntime 5\n",
                         "chatgw-crash 1\nsignal 6 SIGABRT\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) assert_null(crash_record_event(bad[i], strlen(bad[i])));
    const char nul[] = "chatgw-crash 1\nsignal 6 SIGABRT\ntime 5\0\n";
    assert_null(crash_record_event(nul, sizeof nul - 1));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dsn),
        cmocka_unit_test(test_where),
        cmocka_unit_test(test_event_and_envelope),
        cmocka_unit_test(test_crash_record),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
