/*
 * test_sec_stream.c - streaming body substitution and response redaction:
 * every split point of a placeholder across two feeds, every encoded form
 * of a value (case-folded too) split at every boundary, overlapping /
 * adjacent / repeated occurrences, header-value redaction, and redactor throughput on 64 MiB of
 * random data with 10 secrets.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "secrets/sec_int.h"

#define T_VALUE "SECRET-VALUE-c0ffee-1234-xyz"
#define T_V2 "sk/live+Token\"quoted\"\\back=="
#define T_V3 "caf\xc3\xa9-\xf0\x9f\x94\x90-unicode-key"

static struct sec_store *
t_store(void)
{
    const char       *json = "{\"secrets\": {"
                             "\"a\": {\"from\": {\"value\": \"" T_VALUE "\"}, \"hosts\": [\"a.test\"], "
                             "\"placeholder\": \"PH-AAAAAAAA\"},"
                             "\"b\": {\"from\": {\"value\": \"sk/live+Token\\\"quoted\\\"\\\\back==\"}, "
                             "\"hosts\": [\"b.test\"], \"placeholder\": \"PH-BBBBBBBBBBBBBBBB\"},"
                             "\"c\": {\"from\": {\"value\": \"caf\\u00e9-\\ud83d\\udd10-unicode-key\"}, "
                             "\"hosts\": [\"c.test\"], \"placeholder\": \"PH-CCCCCCCCC\"}}}";
    struct al_errs    errs;
    struct sec_store *s;

    al_errs_init(&errs);
    s = sec_load_text("t.json", json, strlen(json), NULL, &errs);
    if (s == NULL)
        print_error("%s", errs.text.data);
    assert_non_null(s);
    al_errs_free(&errs);
    return s;
}

/* Feeds in[0..split) and in[split..n) then finishes; returns a malloc'ed
 * copy. The same with the second piece fed as the last one
 * (sec_stream_feed_last) must give the same bytes. */
static char *
t_run2(struct sec_stream *st, const char *in, size_t n, size_t split)
{
    struct al_dbuf out, out2;
    char          *r;

    al_dbuf_init(&out, (size_t)1 << 24);
    assert_int_equal(sec_stream_feed(st, in, split, &out), AL_OK);
    assert_int_equal(sec_stream_feed(st, in + split, n - split, &out), AL_OK);
    assert_int_equal(sec_stream_finish(st, &out), AL_OK);
    r = strdup(out.data != NULL ? out.data : "");
    al_dbuf_init(&out2, (size_t)1 << 24);
    assert_int_equal(sec_stream_feed(st, in, split, &out2), AL_OK);
    assert_int_equal(sec_stream_feed_last(st, in + split, n - split, &out2), AL_OK);
    assert_string_equal(out2.data != NULL ? out2.data : "", r);
    sec_dbuf_wipe(&out);
    sec_dbuf_wipe(&out2);
    return r;
}

/* Every case (input, expected output) at every split point through st;
 * with bare, the stream must hold no buffer after each finish. */
static void
t_cases(struct sec_stream *st, const char *(*cases)[2], size_t n, int bare)
{
    for (size_t c = 0; c < n; c++) {
        for (size_t split = 0; split <= strlen(cases[c][0]); split++) {
            char *r = t_run2(st, cases[c][0], strlen(cases[c][0]), split);

            if (strcmp(r, cases[c][1]) != 0) {
                print_error("case %zu split %zu: %s\n", c, split, r);
                fail();
            }
            free(r);
            if (bare) { /* between messages the stream holds no buffer */
                assert_null(st->hold);
                assert_null(st->cl);
            }
        }
    }
}

static void
test_body_every_split(void **state)
{
    struct sec_store  *s = t_store();
    struct sec_stream *st;
    char               in[256], exp[256];

    (void)state;
    snprintf(
        in, sizeof(in),
        "{\"k\":\"PH-AAAAAAAA\",\"x\":\"PH-BBBBBBBBBBBBBBBB\",\"y\":\"PH-AAAAAAAAPH-AAAAAAAA\"}");
    snprintf(exp, sizeof(exp), "{\"k\":\"%s\",\"x\":\"PH-BBBBBBBBBBBBBBBB\",\"y\":\"%s%s\"}",
             T_VALUE, T_VALUE, T_VALUE);
    st = sec_body_new(s, 1); /* only secret a */
    assert_non_null(st);
    for (size_t split = 0; split <= strlen(in); split++) {
        char *r = t_run2(st, in, strlen(in), split);

        if (strcmp(r, exp) != 0) {
            print_error("split %zu: %s\n", split, r);
            fail();
        }
        free(r);
    }
    assert_int_equal(sec_stream_seen(st), 3);
    assert_int_equal(sec_stream_replaced(st), 1);
    sec_stream_free(st);
    /* near misses pass through untouched, one byte at a time too */
    st = sec_body_new(s, 7);
    {
        const char    *miss = "PH-AAAAAAA PH-AAAAAAAB PPH-AAAAAAAA-";
        struct al_dbuf out;

        al_dbuf_init(&out, 1 << 20);
        for (size_t i = 0; i < strlen(miss); i++)
            assert_int_equal(sec_stream_feed(st, miss + i, 1, &out), AL_OK);
        assert_int_equal(sec_stream_finish(st, &out), AL_OK);
        assert_string_equal(out.data, "PH-AAAAAAA PH-AAAAAAAB P" T_VALUE "-");
        sec_dbuf_wipe(&out);
    }
    sec_stream_free(st);
    sec_store_unref(s);
}

/* Independent encoders for the expected forms. */
static void
t_b64(const char *v, size_t n, int url, int pad, char *out)
{
    int len = EVP_EncodeBlock((unsigned char *)out, (const unsigned char *)v, (int)n);

    for (int i = 0; url && i < len; i++) {
        if (out[i] == '+')
            out[i] = '-';
        else if (out[i] == '/')
            out[i] = '_';
    }
    while (!pad && len > 0 && out[len - 1] == '=')
        out[--len] = '\0';
}

static void
t_hex(const char *v, size_t n, int pct, int upper, int only_reserved, char *out)
{
    size_t o = 0;

    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];

        if (only_reserved &&
            (strchr("-._~", c) != NULL || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
             (c >= '0' && c <= '9')) &&
            c != 0) {
            out[o++] = (char)c;
            continue;
        }
        if (pct)
            out[o++] = '%';
        o += (size_t)sprintf(out + o, upper ? "%02X" : "%02x", c);
    }
    out[o] = '\0';
}

/* every character as \uXXXX (UTF-16) */
static void
t_json_all(const char *v, int upper, char *out)
{
    const unsigned char *u = (const unsigned char *)v;
    size_t               o = 0;

    for (size_t i = 0; u[i] != 0;) {
        unsigned cp;

        if (u[i] < 0x80) {
            cp = u[i++];
        } else if ((u[i] & 0xe0) == 0xc0) {
            cp = (u[i] & 0x1fu) << 6 | (u[i + 1] & 0x3fu);
            i += 2;
        } else if ((u[i] & 0xf0) == 0xe0) {
            cp = (u[i] & 0x0fu) << 12 | (u[i + 1] & 0x3fu) << 6 | (u[i + 2] & 0x3fu);
            i += 3;
        } else {
            cp = (u[i] & 0x07u) << 18 | (u[i + 1] & 0x3fu) << 12 | (u[i + 2] & 0x3fu) << 6 |
                 (u[i + 3] & 0x3fu);
            i += 4;
        }
        if (cp >= 0x10000) {
            cp -= 0x10000;
            o += (size_t)sprintf(out + o, upper ? "\\u%04X\\u%04X" : "\\u%04x\\u%04x",
                                 0xd800 | (cp >> 10), 0xdc00 | (cp & 0x3ff));
        } else {
            o += (size_t)sprintf(out + o, upper ? "\\u%04X" : "\\u%04x", cp);
        }
    }
    out[o] = '\0';
}

static void
t_check_form(struct sec_store *s, uint64_t mask, const char *form, const char *ph, const char *what)
{
    struct sec_stream *st = sec_redactor_new(s, mask);
    char               in[2048], exp[2048];

    assert_non_null(st);
    snprintf(in, sizeof(in), "<<%s>>", form);
    snprintf(exp, sizeof(exp), "<<%s>>", ph);
    for (size_t split = 0; split <= strlen(in); split++) {
        char *r = t_run2(st, in, strlen(in), split);

        if (strcmp(r, exp) != 0) {
            print_error("%s split %zu: %s -> %s\n", what, split, in, r);
            fail();
        }
        free(r);
    }
    sec_stream_free(st);
}

static void
t_all_forms(struct sec_store *s, int idx, const char *v)
{
    char        f[2048], g[2048];
    size_t      n = strlen(v);
    const char *ph = sec_placeholder(s, idx);
    uint64_t    m = 7;

    t_check_form(s, m, v, ph, "raw");
    t_b64(v, n, 0, 1, f);
    t_check_form(s, m, f, ph, "b64");
    t_b64(v, n, 0, 0, f);
    t_check_form(s, m, f, ph, "b64 nopad");
    t_b64(v, n, 1, 1, f);
    t_check_form(s, m, f, ph, "b64url");
    t_b64(v, n, 1, 0, f);
    t_check_form(s, m, f, ph, "b64url nopad");
    t_hex(v, n, 0, 0, 0, f);
    t_check_form(s, m, f, ph, "hex");
    t_hex(v, n, 0, 1, 0, f);
    t_check_form(s, m, f, ph, "HEX");
    t_hex(v, n, 1, 1, 0, f);
    t_check_form(s, m, f, ph, "pct all");
    t_hex(v, n, 1, 0, 0, f);
    t_check_form(s, m, f, ph, "pct all lower");
    t_hex(v, n, 1, 1, 1, f);
    t_check_form(s, m, f, ph, "pct reserved");
    t_json_all(v, 0, f);
    t_check_form(s, m, f, ph, "json all");
    t_json_all(v, 1, f);
    t_check_form(s, m, f, ph, "json all upper");
    /* case-folded (ASCII letters only; the non-ASCII bytes stay) */
    for (size_t i = 0; i <= n; i++)
        f[i] = (char)(v[i] >= 'A' && v[i] <= 'Z' ? v[i] - 'A' + 'a' : v[i]);
    t_check_form(s, m, f, ph, "lower");
    for (size_t i = 0; i <= n; i++)
        f[i] = (char)(v[i] >= 'a' && v[i] <= 'z' ? v[i] - 'a' + 'A' : v[i]);
    t_check_form(s, m, f, ph, "upper");
    /* minimal JSON escaping (and with \/) */
    {
        size_t o = 0, o2 = 0;

        for (size_t i = 0; i < n; i++) {
            if (v[i] == '"' || v[i] == '\\') {
                f[o++] = '\\';
                g[o2++] = '\\';
            }
            if (v[i] == '/')
                g[o2++] = '\\';
            f[o++] = v[i];
            g[o2++] = v[i];
        }
        f[o] = g[o2] = '\0';
        t_check_form(s, m, f, ph, "json");
        t_check_form(s, m, g, ph, "json slash");
    }
    /* base64 of the value inside a longer text at every alignment: only
     * the characters the value alone determines are replaced */
    for (int k = 1; k <= 2; k++) {
        char   buf[1024], enc[2048];
        size_t first = (8 * (size_t)k + 5) / 6, last = (8 * (size_t)k + 8 * n) / 6;

        memcpy(buf, "user:", 5);
        memcpy(buf + k, v, n);
        memcpy(buf + k + n, "\x01\x02\x03", 3);
        t_b64(buf, (size_t)k + n + 3, 0, 1, enc);
        enc[last] = '\0';
        t_check_form(s, m, enc + first, ph, "b64 inner");
    }
}

static void
test_redact_forms(void **state)
{
    struct sec_store *s = t_store();

    (void)state;
    t_all_forms(s, 0, T_VALUE);
    t_all_forms(s, 1, T_V2);
    t_all_forms(s, 2, T_V3);
    sec_store_unref(s);
}

static void
test_redact_overlaps(void **state)
{
    struct sec_store  *s = t_store();
    struct sec_stream *st = sec_redactor_new(s, 7);
    const char        *cases[][2] = {
               /* twice, adjacent */
        {"x" T_VALUE T_VALUE "y", "xPH-AAAAAAAAPH-AAAAAAAAy"},
        /* twice, apart */
        {T_VALUE " and " T_VALUE, "PH-AAAAAAAA and PH-AAAAAAAA"},
        /* overlapping occurrences (prefix of the value repeated) */
        {"SECRET-VALUE-SECRET-VALUE-c0ffee-1234-xyz", "SECRET-VALUE-PH-AAAAAAAA"},
        /* two secrets adjacent */
        {T_VALUE T_V2, "PH-AAAAAAAAPH-BBBBBBBBBBBBBBBB"},
        /* raw value followed by its own hex */
        {T_VALUE "534543524554", "PH-AAAAAAAA534543524554"},
        /* nothing */
        {"plain text", "plain text"},
        {"", ""},
    };

    (void)state;
    assert_non_null(st);
    t_cases(st, cases, sizeof(cases) / sizeof(cases[0]), 1);
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        /* the same as a header value in one piece (the no-match fast path
         * and the stream behind it must agree) */
        {
            struct al_dbuf out;

            al_dbuf_init(&out, 4096);
            assert_int_equal(sec_redact_value(s, 7, cases[c][0], strlen(cases[c][0]), &out), AL_OK);
            assert_string_equal(out.data != NULL ? out.data : "", cases[c][1]);
            sec_dbuf_wipe(&out);
        }
    }
    /* a mask excludes the others */
    sec_stream_free(st);
    st = sec_redactor_new(s, 2);
    {
        char *r = t_run2(st, T_VALUE "|" T_V2, strlen(T_VALUE "|" T_V2), 5);

        assert_string_equal(r, T_VALUE "|PH-BBBBBBBBBBBBBBBB");
        free(r);
    }
    sec_stream_free(st);
    /* header values */
    {
        struct al_dbuf out;

        al_dbuf_init(&out, 4096);
        assert_int_equal(sec_redact_value(s, 1, "Bearer " T_VALUE, strlen("Bearer " T_VALUE), &out),
                         AL_OK);
        assert_string_equal(out.data, "Bearer PH-AAAAAAAA");
        sec_dbuf_wipe(&out);
    }
    /* the one-pass check over a whole head: any form, any place, masked */
    {
        static const char head[] = "OK\0Server\0nginx\0X-Echo\0Bearer " T_VALUE "\0";
        static const char clean[] = "OK\0Server\0nginx\0X-Echo\0Bearer PH-AAAAAAAA\0";

        assert_int_equal(sec_redact_any(s, 1, head, sizeof(head) - 1), 1);
        assert_int_equal(sec_redact_any(s, 1, head, 20), 0); /* the value lies past byte 20 */
        assert_int_equal(sec_redact_any(s, 2, head, sizeof(head) - 1), 0);
        assert_int_equal(sec_redact_any(s, 0, head, sizeof(head) - 1), 0);
        assert_int_equal(sec_redact_any(s, 7, clean, sizeof(clean) - 1), 0);
        for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++)
            assert_int_equal(sec_redact_any(s, 7, cases[c][0], strlen(cases[c][0])),
                             strcmp(cases[c][0], cases[c][1]) != 0);
    }
    sec_store_unref(s);
}

/* Overlap of two different secrets' values: nothing of either survives. */
static void
test_redact_cross_overlap(void **state)
{
    const char        *json = "{\"secrets\": {"
                              "\"x\": {\"from\": {\"value\": \"aaaa-1111-bbbb\"}, \"hosts\": [\"a.b\"], "
                              "\"placeholder\": \"PH-XXXXXXXX\"},"
                              "\"y\": {\"from\": {\"value\": \"bbbb-2222-cccc\"}, \"hosts\": [\"a.b\"], "
                              "\"placeholder\": \"PH-YYYYYYYY\"}}}";
    struct al_errs     errs;
    struct sec_store  *s;
    struct sec_stream *st;
    const char        *in = "<aaaa-1111-bbbb-2222-cccc>";

    (void)state;
    al_errs_init(&errs);
    s = sec_load_text("t.json", json, strlen(json), NULL, &errs);
    assert_non_null(s);
    st = sec_redactor_new(s, 3);
    for (size_t split = 0; split <= strlen(in); split++) {
        char *r = t_run2(st, in, strlen(in), split);

        assert_string_equal(r, "<PH-XXXXXXXX>");
        free(r);
    }
    sec_stream_free(st);
    sec_store_unref(s);
    al_errs_free(&errs);
}

/*
 * Matches pending at once past the first few (the cluster list starts
 * small and grows): while the text may still become the long value, each
 * occurrence of the short one inside it waits. Five then fail to become the
 * long one (five placeholders), six do (one). The list and the hold-back
 * are freed by finish and made again by the next feed, across every split.
 */
static void
test_redact_many_pending(void **state)
{
#define T_SHORT "xyzw-1234"
#define T_LONG T_SHORT T_SHORT T_SHORT T_SHORT T_SHORT T_SHORT
    const char                                        *json = "{\"secrets\": {"
                                                              "\"s\": {\"from\": {\"value\": \"" T_SHORT "\"}, \"hosts\": [\"a.b\"], "
                                                              "\"placeholder\": \"PH-SSSSSSSS\"},"
                                                              "\"l\": {\"from\": {\"value\": \"" T_LONG "\"}, \"hosts\": [\"a.b\"], "
                                                              "\"placeholder\": \"PH-LLLLLLLL\"}}}";
    const char                                        *cases[][2] = {
                                               {"<" T_SHORT T_SHORT T_SHORT T_SHORT T_SHORT ">",
                                                "<PH-SSSSSSSSPH-SSSSSSSSPH-SSSSSSSSPH-SSSSSSSSPH-SSSSSSSS>"},
                                               {"<" T_LONG ">", "<PH-LLLLLLLL>"},
                                               {"<" T_LONG "-" T_SHORT ">", "<PH-LLLLLLLL-PH-SSSSSSSS>"},
                                               /* the long one again one short later: both occurrences, one cluster */
                                               {"<" T_LONG T_SHORT ">", "<PH-LLLLLLLL>"},
    };
    struct al_errs     errs;
    struct sec_store  *s;
    struct sec_stream *st;

    (void)state;
    al_errs_init(&errs);
    s = sec_load_text("t.json", json, strlen(json), NULL, &errs);
    if (s == NULL)
        print_error("%s", errs.text.data);
    assert_non_null(s);
    st = sec_redactor_new(s, 3);
    assert_non_null(st);
    t_cases(st, cases, sizeof(cases) / sizeof(cases[0]), 1);
    sec_stream_free(st);
    sec_store_unref(s);
    al_errs_free(&errs);
#undef T_SHORT
#undef T_LONG
}

static void
test_redact_throughput(void **state)
{
    char               json[8192];
    size_t             o = 0, total = (size_t)64 << 20, chunk = 16384;
    struct al_errs     errs;
    struct sec_store  *s;
    struct sec_stream *st;
    struct al_dbuf     out;
    unsigned char     *data;
    struct timespec    t0, t1;
    double             secs;
    uint64_t           outlen = 0;

    (void)state;
    o += (size_t)snprintf(json + o, sizeof(json) - o, "{\"secrets\": {");
    for (int i = 0; i < 10; i++) {
        unsigned char r[24];
        char          v[64];

        assert_int_equal(RAND_bytes(r, sizeof(r)), 1);
        EVP_EncodeBlock((unsigned char *)v, r, sizeof(r)); /* 32 chars */
        o += (size_t)snprintf(json + o, sizeof(json) - o,
                              "%s\"s%d\": {\"from\": {\"value\": \"tok_%s\"}, \"hosts\": "
                              "[\"h%d.test\"], \"placeholder\": \"PLACEHOLDER-%02d-xx\"}",
                              i ? "," : "", i, v, i, i);
    }
    o += (size_t)snprintf(json + o, sizeof(json) - o, "}}");
    al_errs_init(&errs);
    s = sec_load_text("perf.json", json, o, NULL, &errs);
    assert_non_null(s);
    data = malloc(total);
    assert_non_null(data);
    assert_int_equal(RAND_bytes(data, (int)total), 1);
    /* plant each secret once, split over a chunk boundary */
    for (int i = 0; i < 10; i++) {
        size_t at = chunk * (size_t)(100 + i * 300) - 7;

        memcpy(data + at, s->secs[i].value, s->secs[i].value_len);
    }
    st = sec_redactor_new(s, 0x3ff);
    assert_non_null(st);
    al_dbuf_init(&out, (size_t)1 << 20);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (size_t off = 0; off < total; off += chunk) {
        assert_int_equal(sec_stream_feed(st, (const char *)data + off, chunk, &out), AL_OK);
        outlen += out.len;
        al_dbuf_reset(&out);
    }
    assert_int_equal(sec_stream_finish(st, &out), AL_OK);
    outlen += out.len;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("redactor: %zu MiB, 10 secrets (%d patterns, %u states): %.3f s, %.0f MB/s\n",
           total >> 20, st->ac->npats, st->ac->nstates, secs, (double)total / secs / 1e6);
    assert_int_equal(sec_stream_replaced(st), 0x3ff);
    /* each value became its placeholder */
    assert_int_equal(outlen, total - 10 * (s->secs[0].value_len - s->secs[0].ph_len));
    /* text made of the patterns' own alphabet: the skip table helps less */
    for (size_t i = 0; i < total; i++)
        data[i] = (unsigned char)"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
            [data[i] & 63];
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (size_t off = 0; off < total; off += chunk) {
        assert_int_equal(sec_stream_feed(st, (const char *)data + off, chunk, &out), AL_OK);
        al_dbuf_reset(&out);
    }
    assert_int_equal(sec_stream_finish(st, &out), AL_OK);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("redactor: %zu MiB of base64-alphabet text: %.3f s, %.0f MB/s\n", total >> 20, secs,
           (double)total / secs / 1e6);
    sec_stream_free(st);
    sec_dbuf_wipe(&out);
    free(data);
    sec_store_unref(s);
    al_errs_free(&errs);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_body_every_split),    cmocka_unit_test(test_redact_forms),
        cmocka_unit_test(test_redact_overlaps),     cmocka_unit_test(test_redact_cross_overlap),
        cmocka_unit_test(test_redact_many_pending), cmocka_unit_test(test_redact_throughput),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
