/* Unit tests for metrics.c: the rendered text is valid Prometheus text format 0.0.4 (every
 * family has one # HELP and one # TYPE line, before its samples, and no family repeats),
 * scalar values and labelled samples come out as counted, zero label slots stay out, and
 * chatgw_build_info carries the (escaped) version. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/metrics.h"

/* The rendered text as a NUL-terminated string; caller frees. */
static char *render(const metrics_t *m, const char *version)
{
    buf_t out;
    buf_init(&out);
    metrics_render(m, version, &out);
    buf_append(&out, "", 1);
    char *text = xstrdup(out.data);
    buf_free(&out);
    return text;
}

/* Whether text holds line as a whole line. */
static int has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)); p++)
        if ((p == text || p[-1] == '\n') && p[n] == '\n') return 1;
    return 0;
}

static void assert_line(const char *text, const char *line)
{
    if (!has_line(text, line)) print_error("missing line: %s\n", line);
    assert_true(has_line(text, line));
}

static metrics_t *metrics_new(void) { return xcalloc(1, sizeof(metrics_t)); }

/* Checks the exposition rules line by line: each sample's family was declared by HELP and
 * TYPE just before its samples; no family is declared twice; every line ends in '\n'. */
static void assert_well_formed(const char *text)
{
    char families[64][96];
    size_t nfam = 0;
    char current[96] = "", type[32] = "";
    int saw_help = 0;
    assert_true(strlen(text) > 0 && text[strlen(text) - 1] == '\n');
    for (const char *line = text; *line;) {
        const char *end = strchr(line, '\n');
        assert_non_null(end);
        char buf[256];
        size_t n = (size_t)(end - line);
        assert_true(n > 0 && n < sizeof buf);
        memcpy(buf, line, n);
        buf[n] = '\0';
        char name[96];
        if (strncmp(buf, "# HELP ", 7) == 0) {
            assert_int_equal(sscanf(buf + 7, "%95s", name), 1);
            for (size_t i = 0; i < nfam; i++) assert_string_not_equal(families[i], name);
            assert_true(nfam < 64);
            strcpy(families[nfam++], name);
            strcpy(current, name);
            saw_help = 1;
        } else if (strncmp(buf, "# TYPE ", 7) == 0) {
            assert_true(saw_help);
            assert_int_equal(sscanf(buf + 7, "%95s %31s", name, type), 2);
            assert_string_equal(name, current);
            assert_true(strcmp(type, "counter") == 0 || strcmp(type, "gauge") == 0 ||
                        strcmp(type, "histogram") == 0);
            saw_help = 0;
        } else {
            size_t len = strcspn(buf, "{ ");
            assert_true(len > 0 && len < sizeof name);
            memcpy(name, buf, len);
            name[len] = '\0';
            /* a histogram's samples are its name plus _bucket, _sum or _count */
            size_t cl = strlen(current);
            if (!strcmp(type, "histogram") && !strncmp(name, current, cl) &&
                (!strcmp(name + cl, "_bucket") || !strcmp(name + cl, "_sum") || !strcmp(name + cl, "_count")))
                name[cl] = '\0';
            assert_string_equal(name, current);
            const char *value = strrchr(buf, ' ');
            assert_non_null(value);
            char *vend;
            strtod(value + 1, &vend);
            assert_true(*vend == '\0' && vend != value + 1);
        }
        line = end + 1;
    }
}

static void test_empty(void **state)
{
    metrics_t *m = metrics_new();
    char *text = render(m, "0.1.0");
    assert_well_formed(text);
    assert_line(text, "# HELP chatgw_connections_open TCP connections open.");
    assert_line(text, "# TYPE chatgw_connections_open gauge");
    assert_line(text, "chatgw_connections_open 0");
    assert_line(text, "# TYPE chatgw_connections_total counter");
    assert_line(text, "chatgw_connections_total 0");
    assert_line(text, "# TYPE chatgw_websockets_open gauge");
    assert_line(text, "# TYPE chatgw_websockets_total counter");
    assert_line(text, "# TYPE chatgw_bytes_in_total counter");
    assert_line(text, "# TYPE chatgw_bytes_out_total counter");
    assert_line(text, "# TYPE chatgw_connections_rejected_total counter");
    assert_line(text, "# TYPE chatgw_header_timeouts_total counter");
    assert_line(text, "# TYPE chatgw_idle_timeouts_total counter");
    assert_line(text, "# TYPE chatgw_slow_consumers_total counter");
    /* labelled families declare themselves even before their first sample */
    assert_line(text, "# TYPE chatgw_http_responses_total counter");
    assert_line(text, "# TYPE chatgw_ws_frames_in_total counter");
    assert_line(text, "# TYPE chatgw_ws_frames_out_total counter");
    assert_line(text, "# TYPE chatgw_ws_close_sent_total counter");
    assert_line(text, "# TYPE chatgw_ws_close_received_total counter");
    /* known label values are present at zero; the rest appear with their first count */
    assert_line(text, "chatgw_http_responses_total{code=\"200\"} 0");
    assert_null(strstr(text, "chatgw_http_responses_total{code=\"400\"}"));
    assert_line(text, "chatgw_ws_frames_in_total{opcode=\"text\"} 0");
    assert_null(strstr(text, "chatgw_ws_frames_in_total{opcode=\"3\"}"));
    assert_line(text, "chatgw_ws_close_sent_total{code=\"1000\"} 0");
    assert_null(strstr(text, "chatgw_ws_close_sent_total{code=\"4000\"}"));
    assert_line(text, "chatgw_rooms 0");
    assert_line(text, "chatgw_messages_dropped_total{reason=\"rate_limited\"} 0");
    assert_line(text, "chatgw_policy_errors_total{hook=\"on_message\",kind=\"budget\"} 0");
    assert_line(text, "chatgw_policy_reloads_total{result=\"failed\"} 0");
    assert_line(text, "# TYPE chatgw_build_info gauge");
    assert_line(text, "chatgw_build_info{version=\"0.1.0\"} 1");
    free(text);
    free(m);
}

static void test_counts(void **state)
{
    metrics_t *m = metrics_new();
    METRIC_ADD(m->conns_open, 3);
    METRIC_ADD(m->conns_total, 10);
    METRIC_SUB(m->conns_open, 1);
    METRIC_INC(m->ws_open);
    METRIC_ADD(m->ws_total, 4);
    METRIC_ADD(m->http_responses[200], 7);
    METRIC_INC(m->http_responses[404]);
    METRIC_ADD(m->frames_in[1], 5);
    METRIC_INC(m->frames_in[9]);
    METRIC_INC(m->frames_in[3]);
    METRIC_ADD(m->frames_out[2], 2);
    METRIC_INC(m->frames_out[10]);
    METRIC_INC(m->frames_out[0]);
    METRIC_INC(m->frames_out[8]);
    METRIC_ADD(m->bytes_in, 12345);
    METRIC_ADD(m->bytes_out, UINT64_C(18446744073709551615));
    METRIC_INC(m->close_sent[1000]);
    METRIC_ADD(m->close_sent[1009], 2);
    METRIC_INC(m->close_received[1001]);
    METRIC_INC(m->close_received[4999]);
    METRIC_INC(m->conns_rejected_limit);
    METRIC_ADD(m->header_timeouts, 2);
    METRIC_ADD(m->idle_timeouts, 3);
    METRIC_ADD(m->slow_consumers, 4);
    METRIC_ADD(m->msgs_dropped[METRICS_DROP_SLOW], 6);
    METRIC_INC(m->msgs_dropped[METRICS_DROP_ROOM_FULL]);
    metrics_latency_observe(m, 500);       /* on a bound: counted in it */
    metrics_latency_observe(m, 501);
    metrics_latency_observe(m, 9000000);   /* past every bound */
    METRIC_INC(m->policy_errors[2][METRICS_POLICY_MEMORY]);
    METRIC_ADD(m->policy_reloads[METRICS_RELOAD_OK], 2);
    METRIC_ADD(m->rooms, 3);

    char *text = render(m, "1.2.3");
    assert_well_formed(text);
    assert_line(text, "chatgw_connections_open 2");
    assert_line(text, "chatgw_connections_total 10");
    assert_line(text, "chatgw_websockets_open 1");
    assert_line(text, "chatgw_websockets_total 4");
    assert_line(text, "chatgw_http_responses_total{code=\"200\"} 7");
    assert_line(text, "chatgw_http_responses_total{code=\"404\"} 1");
    assert_null(strstr(text, "code=\"500\""));
    assert_line(text, "chatgw_ws_frames_in_total{opcode=\"text\"} 5");
    assert_line(text, "chatgw_ws_frames_in_total{opcode=\"ping\"} 1");
    assert_line(text, "chatgw_ws_frames_in_total{opcode=\"3\"} 1");
    assert_line(text, "chatgw_ws_frames_in_total{opcode=\"binary\"} 0");
    assert_line(text, "chatgw_ws_frames_out_total{opcode=\"binary\"} 2");
    assert_line(text, "chatgw_ws_frames_out_total{opcode=\"pong\"} 1");
    assert_line(text, "chatgw_ws_frames_out_total{opcode=\"continuation\"} 1");
    assert_line(text, "chatgw_ws_frames_out_total{opcode=\"close\"} 1");
    assert_line(text, "chatgw_bytes_in_total 12345");
    assert_line(text, "chatgw_bytes_out_total 18446744073709551615");
    assert_line(text, "chatgw_ws_close_sent_total{code=\"1000\"} 1");
    assert_line(text, "chatgw_ws_close_sent_total{code=\"1009\"} 2");
    assert_line(text, "chatgw_ws_close_received_total{code=\"1001\"} 1");
    assert_line(text, "chatgw_ws_close_received_total{code=\"4999\"} 1");
    assert_line(text, "chatgw_connections_rejected_total 1");
    assert_line(text, "chatgw_header_timeouts_total 2");
    assert_line(text, "chatgw_idle_timeouts_total 3");
    assert_line(text, "chatgw_slow_consumers_total 4");
    assert_line(text, "chatgw_messages_dropped_total{reason=\"slow\"} 6");
    assert_line(text, "chatgw_messages_dropped_total{reason=\"room_full\"} 1");
    assert_line(text, "chatgw_message_latency_seconds_bucket{le=\"0.0005\"} 1");
    assert_line(text, "chatgw_message_latency_seconds_bucket{le=\"0.001\"} 2");
    assert_line(text, "chatgw_message_latency_seconds_bucket{le=\"2.5\"} 2");
    assert_line(text, "chatgw_message_latency_seconds_bucket{le=\"+Inf\"} 3");
    assert_line(text, "chatgw_message_latency_seconds_count 3");
    assert_line(text, "chatgw_message_latency_seconds_sum 9.001001");
    assert_line(text, "chatgw_policy_errors_total{hook=\"on_message\",kind=\"memory\"} 1");
    assert_line(text, "chatgw_policy_reloads_total{result=\"ok\"} 2");
    assert_line(text, "chatgw_rooms 3");
    assert_line(text, "chatgw_build_info{version=\"1.2.3\"} 1");
    free(text);
    free(m);
}

static void test_build_info_escaping(void **state)
{
    metrics_t *m = metrics_new();
    char *text = render(m, "1.0 \"dev\"\\x\nnext");
    assert_line(text, "chatgw_build_info{version=\"1.0 \\\"dev\\\"\\\\x\\nnext\"} 1");
    assert_well_formed(text);
    free(text);

    text = render(m, NULL);
    assert_line(text, "chatgw_build_info{version=\"unknown\"} 1");
    free(text);
    free(m);
}

/* metrics_render appends: what was in the buffer stays in front. */
static void test_appends(void **state)
{
    metrics_t *m = metrics_new();
    buf_t out;
    buf_init(&out);
    buf_append_str(&out, "# previous\n");
    metrics_render(m, "x", &out);
    assert_true(out.len > 11 && memcmp(out.data, "# previous\n# HELP ", 18) == 0);
    buf_free(&out);
    free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_counts),
        cmocka_unit_test(test_build_info_escaping),
        cmocka_unit_test(test_appends),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
