/* test_ops_log_metrics.c - operations (issue 19): log escaping and formats
 * (common/al_log.c), latency histograms and request counters
 * (proxy/px_metrics.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/common.h"
#include "proxy/px.h"
#include "proxy/px_exch.h"

static void
esc(enum al_log_format f, const char *in, size_t len, char *out, size_t cap)
{
    size_t pos = 0;

    al_log_escape(f, out, cap, &pos, in, len);
    assert_true(pos < cap);
    out[pos] = '\0';
}

#define ESC(f, lit, cap) esc((f), (lit), sizeof(lit) - 1, out, (cap))

static void
test_escape_text(void **state)
{
    char out[256];

    (void)state;
    ESC(AL_LOG_TEXT, "a\nb\tc\rd", sizeof(out));
    assert_string_equal(out, "a\\nb\\tc\\rd");
    ESC(AL_LOG_TEXT, "\x1b[31m\x7f", sizeof(out));
    assert_string_equal(out, "\\x1b[31m\\x7f");
    ESC(AL_LOG_TEXT, "nul\0x", sizeof(out));
    assert_string_equal(out, "nul\\x00x");
    /* valid UTF-8 stays, a C1 control and invalid bytes are shown as values */
    ESC(AL_LOG_TEXT, "caf\xc3\xa9 \xc2\x9b \xff\xc3", sizeof(out));
    assert_string_equal(out, "caf\xc3\xa9 \\x9b \\xff\\xc3");
    /* no '?' ever replaces a byte */
    ESC(AL_LOG_TEXT, "\x01\x02", sizeof(out));
    assert_null(strchr(out, '?'));
}

static void
test_escape_json(void **state)
{
    char out[256];

    (void)state;
    ESC(AL_LOG_JSON, "q\"b\\s\n\x1b\x7f", sizeof(out));
    assert_string_equal(out, "q\\\"b\\\\s\\n\\u001b\\u007f");
    ESC(AL_LOG_JSON, "\xe2\x82\xac\xed\xa0\x80", sizeof(out)); /* euro, a surrogate */
    assert_string_equal(out, "\xe2\x82\xac\\u00ed\\u00a0\\u0080");
    ESC(AL_LOG_JSON, "\xc0\xaf", sizeof(out)); /* overlong '/' */
    assert_string_equal(out, "\\u00c0\\u00af");
}

static void
test_escape_never_splits(void **state)
{
    char out[8];

    (void)state;
    /* 5 bytes of room: "ab" and no half of "\\u001b" */
    ESC(AL_LOG_JSON, "ab\x1b", 6);
    assert_string_equal(out, "ab");
    ESC(AL_LOG_TEXT, "a\xe2\x82\xac", 4); /* no half of the euro sign */
    assert_string_equal(out, "a");
}

/* Runs fn with stderr going to a temporary file; returns what it wrote. */
static char *
capture(void (*fn)(void))
{
    char  path[] = "/tmp/al-log-test-XXXXXX";
    int   fd = mkstemp(path);
    int   saved = dup(STDERR_FILENO);
    FILE *f;
    long  n;
    char *buf;

    assert_true(fd >= 0 && saved >= 0);
    unlink(path);
    dup2(fd, STDERR_FILENO);
    fn();
    dup2(saved, STDERR_FILENO);
    close(saved);
    f = fdopen(fd, "r");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    rewind(f);
    buf = calloc(1, (size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    return buf;
}

static void
log_some(void)
{
    struct al_log_field f[] = {
        {"host", "a.test", 0},
        {"path", "/x y\n\"z\"", 0},
        {"status", NULL, 403},
        {"empty", "", 0},
    };

    al_log(AL_LOG_INFO, "two\nlines %s", "and\x1b esc");
    al_log(AL_LOG_DEBUG, "not shown");
    al_log_fields(AL_LOG_WARN, "access", f, 4);
}

static void
test_log_text_lines(void **state)
{
    char *out;

    (void)state;
    al_log_set_level(AL_LOG_INFO);
    al_log_set_format(AL_LOG_TEXT);
    out = capture(log_some);
    assert_non_null(strstr(out, " info  two\\nlines and\\x1b esc\n"));
    assert_null(strstr(out, "not shown"));
    assert_non_null(
        strstr(out, " warn  access host=a.test path=\"/x y\\n\\\"z\\\"\" status=403 empty=\"\"\n"));
    /* two events, two lines */
    assert_int_equal(strchr(strchr(out, '\n') + 1, '\n')[1], '\0');
    free(out);
}

static void
test_log_json_lines(void **state)
{
    char       *out, *second;
    const char *p;

    (void)state;
    al_log_set_level(AL_LOG_INFO);
    al_log_set_format(AL_LOG_JSON);
    out = capture(log_some);
    al_log_set_format(AL_LOG_TEXT);
    assert_true(strncmp(out, "{\"time\":\"", 9) == 0);
    p = strstr(out, "\",\"level\":\"info\",\"message\":\"two\\nlines and\\u001b esc\","
                    "\"fields\":{}}\n");
    assert_non_null(p);
    second = strchr(out, '\n') + 1;
    assert_non_null(strstr(second, "\"level\":\"warn\",\"message\":\"access\",\"fields\":"
                                   "{\"host\":\"a.test\",\"path\":\"/x y\\n\\\"z\\\"\","
                                   "\"status\":403,\"empty\":\"\"}}\n"));
    for (const char *c = out; *c != '\0'; c++)
        assert_true((unsigned char)*c >= 0x20 || *c == '\n');
    free(out);
}

static void
log_long(void)
{
    static char         big[20000];
    struct al_log_field f[] = {{"v", big, 0}, {"n", NULL, 1}};

    memset(big, '\x01', sizeof(big) - 1);
    al_log_fields(AL_LOG_INFO, "big", f, 2);
    al_log(AL_LOG_INFO, "%s", big);
}

static void
test_log_json_long_lines_stay_json(void **state)
{
    char *out, *nl;

    (void)state;
    al_log_set_level(AL_LOG_INFO);
    al_log_set_format(AL_LOG_JSON);
    out = capture(log_long);
    al_log_set_format(AL_LOG_TEXT);
    nl = strchr(out, '\n');
    assert_non_null(nl);
    assert_true(nl - out <= AL_LOG_LINE_MAX);
    assert_true(strncmp(nl - 2, "}}", 2) == 0);
    nl = strchr(nl + 1, '\n');
    assert_non_null(nl);
    assert_true(strncmp(nl - 2, "}}", 2) == 0);
    assert_int_equal(nl[1], '\0');
    free(out);
}

static void
test_log_format_parse(void **state)
{
    enum al_log_format f = AL_LOG_TEXT;

    (void)state;
    assert_int_equal(al_log_format_parse("json", &f), AL_OK);
    assert_int_equal(f, AL_LOG_JSON);
    assert_int_equal(al_log_format_parse("text", &f), AL_OK);
    assert_int_equal(f, AL_LOG_TEXT);
    assert_int_equal(al_log_format_parse("xml", &f), AL_ERROR);
}

/* ---- metrics ------------------------------------------------------------- */

static char *
render(void)
{
    struct al_dbuf b;

    const char *why = NULL;
    char        detail[256];

    al_dbuf_init(&b, 4 << 20);
    /* what GET /metrics does: the admin API's readiness, shown */
    px_metrics_render(&b, px_admin_ready(&why, detail, sizeof(detail)) == AL_OK);
    return b.data;
}

static void
test_histogram_buckets(void **state)
{
    struct px_hist h;
    char          *out;

    (void)state;
    memset(&h, 0, sizeof(h));
    px_hist_observe(&h, 0);        /* le 0.0005 */
    px_hist_observe(&h, 500);      /* le 0.0005 (bounds are inclusive) */
    px_hist_observe(&h, 501);      /* le 0.001 */
    px_hist_observe(&h, 7000000);  /* le 10 */
    px_hist_observe(&h, 99000000); /* +Inf */
    px_hist_observe(&h, -5);       /* clamped to 0 */
    assert_int_equal(h.b[0], 3);
    assert_int_equal(h.b[1], 1);
    assert_int_equal(h.b[13], 1);
    assert_int_equal(h.b[PX_HIST_NB], 1);
    assert_int_equal(h.sum_us, 500 + 501 + 7000000 + 99000000);

    px_metrics.h_connect = h;
    out = render();
    assert_non_null(strstr(out, "# TYPE airlock_upstream_connect_duration_seconds histogram\n"));
    assert_non_null(
        strstr(out, "airlock_upstream_connect_duration_seconds_bucket{le=\"0.0005\"} 3\n"));
    assert_non_null(
        strstr(out, "airlock_upstream_connect_duration_seconds_bucket{le=\"0.001\"} 4\n"));
    assert_non_null(strstr(out, "airlock_upstream_connect_duration_seconds_bucket{le=\"10\"} 5\n"));
    assert_non_null(strstr(out, "airlock_upstream_connect_duration_seconds_bucket{le=\"60\"} 5\n"));
    assert_non_null(
        strstr(out, "airlock_upstream_connect_duration_seconds_bucket{le=\"+Inf\"} 6\n"));
    assert_non_null(strstr(out, "airlock_upstream_connect_duration_seconds_count 6\n"));
    assert_non_null(strstr(out, "airlock_upstream_connect_duration_seconds_sum 106.001001\n"));
    free(out);
    memset(&px_metrics.h_connect, 0, sizeof(px_metrics.h_connect));
}

static void
test_phase_hook(void **state)
{
    double now = ev_time();

    (void)state;
    memset(&px_metrics.h_dns, 0, sizeof(px_metrics.h_dns));
    memset(&px_metrics.h_tls, 0, sizeof(px_metrics.h_tls));
    px_metrics_phase(PX_ST_RESOLVE, PX_ST_CONNECT, now - 0.002, now);
    px_metrics_phase(PX_ST_RESOLVE, PX_ST_FLUSH_CLOSE, now - 1, now); /* a failure: not observed */
    px_metrics_phase(PX_ST_TLS_UP, PX_ST_EXCHANGE, now, now);
    px_metrics_phase(PX_ST_TLS_CLIENT, PX_ST_READ_HEAD, now - 0.0001, now);
    px_metrics_phase(PX_ST_EXCHANGE, PX_ST_READ_HEAD, now - 1, now); /* not a timed phase */
    assert_int_equal(px_metrics.h_dns.b[0] + px_metrics.h_dns.b[1], 0);
    assert_int_equal(px_metrics.h_dns.b[2], 1); /* 2 ms: le 0.0025 */
    assert_int_equal(px_metrics.h_tls[1].b[0], 1);
    assert_int_equal(px_metrics.h_tls[0].b[0], 1);
}

static void
test_request_counters(void **state)
{
    char name[32], *out;

    (void)state;
    px_metrics_request(1, "host_not_allowed", "default", 403, 100);
    px_metrics_request(1, "host_not_allowed", "default", 403, 100);
    px_metrics_request(0, "allowed_by_rule", "gh \"quoted\\", 200, 100);
    px_metrics_request(3, "evil.example.com/secret?x", NULL, 502, 100); /* not a known code */
    /* rule names beyond the cap count under "other" */
    for (int i = 0; i < PX_METRICS_MAX_RULES + 5; i++) {
        snprintf(name, sizeof(name), "r%d", i);
        px_metrics_request(0, "allowed_by_rule", name, 200, -1);
    }
    out = render();
    assert_non_null(strstr(out, "airlock_requests_total{decision=\"deny\",reason=\"host_not_allowed"
                                "\",class=\"4xx\"} 2\n"));
    assert_non_null(strstr(
        out, "airlock_requests_total{decision=\"error\",reason=\"other\",class=\"5xx\"} 1\n"));
    assert_null(strstr(out, "evil"));
    assert_non_null(
        strstr(out, "airlock_rule_requests_total{rule=\"default\",decision=\"deny\"} 2\n"));
    assert_non_null(strstr(out, "airlock_rule_requests_total{rule=\"gh \\\"quoted\\\\\","
                                "decision=\"allow\"} 1\n"));
    assert_non_null(
        strstr(out, "airlock_rule_requests_total{rule=\"other\",decision=\"allow\"} 7\n"));
    assert_non_null(strstr(out, "# HELP airlock_requests_total "));
    assert_non_null(strstr(out, "airlock_build_info{version=\""));
    /* the durations of 4 requests; -1 is not observed */
    assert_int_equal(px_metrics.h_request.b[0], 4);
    free(out);
}

static void
test_every_family_has_help(void **state)
{
    char *out = render(), *p;

    (void)state;
    for (p = strstr(out, "# TYPE "); p != NULL; p = strstr(p + 1, "# TYPE ")) {
        char name[128], help[140];

        assert_int_equal(sscanf(p, "# TYPE %127s", name), 1);
        snprintf(help, sizeof(help), "# HELP %s ", name);
        assert_non_null(strstr(out, help));
    }
    free(out);
}

static void
test_readiness(void **state)
{
    static struct px_worker w[2];
    const char             *reason = NULL;
    char                    detail[256], *out;

    (void)state;
    px_admin_set_workers(w, 2);
    assert_int_equal(px_admin_ready(&reason, detail, sizeof(detail)), AL_OK);
    atomic_store(&w[1].accept_paused, 1);
    assert_int_equal(px_admin_ready(&reason, detail, sizeof(detail)), AL_DECLINED);
    assert_string_equal(reason, "listener_paused");
    assert_non_null(strstr(detail, "worker 1"));
    px_admin_set_draining(1); /* draining comes first */
    assert_int_equal(px_admin_ready(&reason, detail, sizeof(detail)), AL_DECLINED);
    assert_string_equal(reason, "draining");
    out = render();
    assert_non_null(strstr(out, "\nairlock_ready 0\n"));
    free(out);
    px_admin_set_draining(0);
    atomic_store(&w[1].accept_paused, 0);
    assert_int_equal(px_admin_ready(&reason, detail, sizeof(detail)), AL_OK);
    out = render();
    assert_non_null(strstr(out, "\nairlock_ready 1\n"));
    free(out);
    px_admin_set_workers(NULL, 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escape_text),
        cmocka_unit_test(test_escape_json),
        cmocka_unit_test(test_escape_never_splits),
        cmocka_unit_test(test_log_text_lines),
        cmocka_unit_test(test_log_json_lines),
        cmocka_unit_test(test_log_json_long_lines_stay_json),
        cmocka_unit_test(test_log_format_parse),
        cmocka_unit_test(test_histogram_buckets),
        cmocka_unit_test(test_phase_hook),
        cmocka_unit_test(test_request_counters),
        cmocka_unit_test(test_every_family_has_help),
        cmocka_unit_test(test_readiness),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
