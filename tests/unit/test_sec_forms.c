/*
 * test_sec_forms.c - redaction of the case-folded and MIME line-wrapped
 * base64 forms of a secret (issue #14).
 *
 * With AL_SEC_FORMS_BENCH=1 in the environment it also prints measurements
 * (automaton size and build time for 5 secrets of 40 bytes and 1 of 200,
 * redactor throughput on random, base64-alphabet, wrapped-base64 text and
 * base64 wrapped with JSON "\\n" escapes).
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

static double
t_now(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* A store of n secrets of len bytes (random, from the base64url alphabet
 * behind a "sk-live-" prefix), placeholders "PLACEHOLDER-<i>-xx". */
static struct sec_store *
t_store_n(int n, size_t len)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    char             *json = malloc(4096 + (size_t)n * (len + 128));
    size_t            o = 0;
    struct al_errs    errs;
    struct sec_store *s;

    assert_non_null(json);
    o += (size_t)sprintf(json + o, "{\"secrets\": {");
    for (int i = 0; i < n; i++) {
        unsigned char r[512];

        assert_true(len <= sizeof(r) && len > 8);
        assert_int_equal(RAND_bytes(r, (int)len), 1);
        o += (size_t)sprintf(json + o, "%s\"s%d\": {\"from\": {\"value\": \"sk-live-", i ? "," : "",
                             i);
        for (size_t j = 8; j < len; j++)
            json[o++] = abc[r[j] & 63];
        o += (size_t)sprintf(
            json + o, "\"}, \"hosts\": [\"h%d.test\"], \"placeholder\": \"PLACEHOLDER-%02d-xx\"}",
            i, i);
    }
    o += (size_t)sprintf(json + o, "}}");
    al_errs_init(&errs);
    s = sec_load_text("bench.json", json, o, NULL, &errs);
    if (s == NULL)
        print_error("%s", errs.text.data);
    assert_non_null(s);
    al_errs_free(&errs);
    free(json);
    return s;
}

/* Standard base64 of v at alignment k inside a longer text (k zero bytes
 * before it), mode 0: padded, 1: unpadded, 2: only the characters v alone
 * determines (independent of secrets/: OpenSSL's encoder). */
static size_t
t_b64_form(const char *v, size_t n, int k, int mode, char *out)
{
    unsigned char buf[1024];
    char          enc[2048];
    size_t        first = 0, last, len;

    memset(buf, 0, 3);
    memcpy(buf + k, v, n);
    len = (size_t)EVP_EncodeBlock((unsigned char *)enc, buf, (int)n + k);
    if (mode == 1)
        while (len > 0 && enc[len - 1] == '=')
            len--;
    last = len;
    if (mode == 2) {
        first = (8 * (size_t)k + 5) / 6;
        last = (8 * (size_t)k + 8 * n) / 6;
    }
    memcpy(out, enc + first, last - first);
    out[last - first] = '\0';
    return last - first;
}

/* The wrapped variants of form f (length L): EOL at p, p+W, ... < L. */
static size_t
t_wrap(const char *f, size_t L, size_t p, size_t w, const char *eol, char *out)
{
    size_t o = 0, next = p;

    for (size_t i = 0; i < L; i++) {
        if (i == next) {
            memcpy(out + o, eol, strlen(eol));
            o += strlen(eol);
            next += w;
        }
        out[o++] = f[i];
    }
    out[o] = '\0';
    return o;
}

static int
t_strcmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* What adding every wrapped form to the one automaton would cost: trie
 * nodes counted exactly (sorted patterns, sum of length minus the common
 * prefix with the previous one); with `build`, the real DFA is built. */
static void
t_bench_naive(const char *what, struct sec_store *s, int build)
{
    static const size_t ws[] = {60, 64, 76};
    static const char  *eols[] = {"\n", "\r\n"};
    char              **v = NULL;
    size_t              nv = 0, capv = 0, nodes = 0;

    for (int i = 0; i < s->n; i++) {
        for (int f = 0; f < 5; f++) {
            char   form[2048], w[4096];
            size_t L = t_b64_form(s->secs[i].value, s->secs[i].value_len, f < 2 ? 0 : f - 2,
                                  f < 2 ? f : 2, form);

            for (size_t wi = 0; wi < 3; wi++)
                for (size_t p = 1; p < L; p++)
                    for (int e = 0; e < 2; e++) {
                        if (nv == capv) {
                            capv = capv ? capv * 2 : 4096;
                            v = realloc(v, capv * sizeof(*v));
                            assert_non_null(v);
                        }
                        t_wrap(form, L, p, ws[wi], eols[e], w);
                        v[nv++] = strdup(w);
                    }
        }
    }
    qsort(v, nv, sizeof(*v), t_strcmp);
    {
        size_t u = 0;

        for (size_t i = 0; i < nv; i++) {
            size_t lcp = 0;

            if (u > 0 && strcmp(v[u - 1], v[i]) == 0) {
                free(v[i]);
                continue;
            }
            while (u > 0 && v[u - 1][lcp] != '\0' && v[u - 1][lcp] == v[i][lcp])
                lcp++;
            nodes += strlen(v[i]) - lcp;
            v[u++] = v[i];
        }
        nv = u;
    }
    printf("%s naive: %zu distinct wrapped forms, %zu more trie states (x ~70 classes x 4 B = "
           "%.1f MiB of table)\n",
           what, nv, nodes, (double)nodes * 70 * 4 / (1 << 20));
    if (build) {
        struct al_dbuf    buf;
        struct sec_ac_in *ins = NULL;
        int               nins = 0, cap = 0;
        struct sec_ac    *ac;
        double            t0, t1;

        al_dbuf_init(&buf, (size_t)1 << 30);
        for (int i = 0; i < s->n; i++)
            assert_int_equal(
                sec_forms_add(s->secs[i].value, s->secs[i].value_len, i, &buf, &ins, &nins, &cap),
                AL_OK);
        ins = realloc(ins, ((size_t)nins + nv) * sizeof(*ins));
        assert_non_null(ins);
        for (int k = 0; k < nins; k++)
            ins[k].p = buf.data + (uintptr_t)ins[k].p;
        for (size_t k = 0; k < nv; k++) {
            memset(&ins[nins], 0, sizeof(ins[nins]));
            ins[nins].p = v[k];
            ins[nins].len = (uint32_t)strlen(v[k]);
            ins[nins].secret = 0;
            nins++;
        }
        t0 = t_now();
        ac = sec_ac_build(ins, nins);
        t1 = t_now();
        assert_non_null(ac);
        printf("%s naive built: %d patterns, %u states, %u classes, %zu KiB, build %.1f ms\n", what,
               ac->npats, ac->nstates, ac->ncls, ac->map_len >> 10, (t1 - t0) * 1e3);
        sec_ac_free(ac);
        sec_dbuf_wipe(&buf);
        free(ins);
    }
    for (size_t i = 0; i < nv; i++)
        free(v[i]);
    free(v);
}

static void
t_bench_one(const char *what, int n, size_t len)
{
    struct sec_store  *s = t_store_n(n, len);
    struct sec_stream *st;
    double             t0, t1;
    size_t             total = (size_t)64 << 20, chunk = 16384;
    unsigned char     *data;
    struct al_dbuf     out;
    uint64_t           mask = n >= 64 ? ~(uint64_t)0 : ((uint64_t)1 << n) - 1;

    if (getenv("AL_SEC_FORMS_BENCH_MIB") != NULL) /* e.g. 4 under callgrind */
        total = (size_t)atoi(getenv("AL_SEC_FORMS_BENCH_MIB")) << 20;
    data = malloc(total);
    assert_non_null(data);
    if (getenv("AL_SEC_FORMS_NAIVE") != NULL)
        t_bench_naive(what, s, n * len <= 256);
    t0 = t_now();
    st = sec_redactor_new(s, mask); /* builds the automaton (and caches it) */
    t1 = t_now();
    assert_non_null(st);
    printf("%s: %d patterns, %u states, %u classes, %zu KiB, max_len %u, build %.2f ms\n", what,
           st->ac->npats, st->ac->nstates, st->ac->ncls, st->ac->map_len >> 10, st->ac->max_len,
           (t1 - t0) * 1e3);
    al_dbuf_init(&out, (size_t)1 << 20);
    for (int kind = 0; kind < 4; kind++) {
        static const char b64[] =
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        static const char *names[] = {"random", "base64 alphabet", "base64 wrapped at 76 (CRLF)",
                                      "base64 wrapped at 60 (JSON \\n)"};

        if (getenv("AL_SEC_FORMS_BENCH_KIND") != NULL && /* one kind only (callgrind) */
            atoi(getenv("AL_SEC_FORMS_BENCH_KIND")) != kind)
            continue;
        assert_int_equal(RAND_bytes(data, (int)total), 1);
        if (kind == 1) {
            for (size_t i = 0; i < total; i++)
                data[i] = (unsigned char)b64[data[i] & 63];
        } else if (kind == 2) {
            for (size_t i = 0; i < total; i++)
                data[i] = (unsigned char)b64[data[i] & 63];
            for (size_t i = 76; i + 1 < total; i += 78) {
                data[i] = '\r';
                data[i + 1] = '\n';
            }
        } else if (kind == 3) { /* GitHub's contents API */
            for (size_t i = 0; i < total; i++)
                data[i] = (unsigned char)b64[data[i] & 63];
            for (size_t i = 60; i + 1 < total; i += 62) {
                data[i] = '\\';
                data[i + 1] = 'n';
            }
        }
        t0 = t_now();
        for (size_t off = 0; off < total; off += chunk) {
            assert_int_equal(sec_stream_feed(st, (const char *)data + off, chunk, &out), AL_OK);
            al_dbuf_reset(&out);
        }
        assert_int_equal(sec_stream_finish(st, &out), AL_OK);
        al_dbuf_reset(&out);
        t1 = t_now();
        printf("%s: redactor on %zu MiB %s: %.0f MB/s\n", what, total >> 20, names[kind],
               (double)total / (t1 - t0) / 1e6);
    }
    sec_stream_free(st);
    sec_dbuf_wipe(&out);
    free(data);
    sec_store_unref(s);
}

/* ---- functional tests ---------------------------------------------------- */

#define T_V40 "sk-live-TESTSECRET-0123456789abcdefXYZ/+"
#define T_V200                                                                                     \
    "sk-live-TESTSECRET-long-"                                                                     \
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-0123456789abcdefghijklmnopqr"  \
    "stuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-0123456789abcdefghijklmnopqrstuvwxyz+/=_.~!*END"
#define T_VLOW "lower-only-secret-abc123"

static struct sec_store *
t_store(void)
{
    const char       *json = "{\"secrets\": {"
                             "\"a\": {\"from\": {\"value\": \"" T_V40 "\"}, \"hosts\": [\"a.test\"], "
                             "\"placeholder\": \"PH-AAAAAAAA\"},"
                             "\"b\": {\"from\": {\"value\": \"" T_V200 "\"}, \"hosts\": [\"b.test\"], "
                             "\"placeholder\": \"PH-BBBBBBBBBBBB\"},"
                             "\"c\": {\"from\": {\"value\": \"" T_VLOW "\"}, \"hosts\": [\"c.test\"], "
                             "\"placeholder\": \"PH-CCCCCCCCC\"}}}";
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

/* A store of one secret, placeholder PH-XXXXXXXX. */
static struct sec_store *
t_store1(const char *v)
{
    char              json[1024];
    struct al_errs    errs;
    struct sec_store *s;

    snprintf(json, sizeof(json),
             "{\"secrets\": {\"x\": {\"from\": {\"value\": \"%s\"}, \"hosts\": [\"x.test\"], "
             "\"placeholder\": \"PH-XXXXXXXX\"}}}",
             v);
    al_errs_init(&errs);
    s = sec_load_text("t.json", json, strlen(json), NULL, &errs);
    if (s == NULL)
        print_error("%s", errs.text.data);
    assert_non_null(s);
    al_errs_free(&errs);
    return s;
}

/* Runs in through st in pieces: split == 0: one piece, 1: byte by byte,
 * else two pieces cut at split - 2. Returns a malloc'ed copy. */
static char *
t_run(struct sec_stream *st, const char *in, size_t n, size_t split)
{
    struct al_dbuf out;
    char          *r;

    al_dbuf_init(&out, (size_t)1 << 24);
    if (split == 1) {
        for (size_t i = 0; i < n; i++)
            assert_int_equal(sec_stream_feed(st, in + i, 1, &out), AL_OK);
    } else {
        size_t cut = split == 0 ? n : split - 2;

        assert_int_equal(sec_stream_feed(st, in, cut, &out), AL_OK);
        assert_int_equal(sec_stream_feed(st, in + cut, n - cut, &out), AL_OK);
    }
    assert_int_equal(sec_stream_finish(st, &out), AL_OK);
    r = strdup(out.data != NULL ? out.data : "");
    sec_dbuf_wipe(&out);
    return r;
}

/* in becomes exp through the stream (one piece, byte by byte, and cut at
 * every point when `every`, else at a few), and through the head path. */
static void
t_expect(struct sec_store *s, struct sec_stream *st, uint64_t mask, const char *in, const char *exp,
         int every, const char *what)
{
    size_t n = strlen(in);

    for (size_t split = 0; split <= n + 2; split++) {
        char *r;

        if (!every && split > 1 && split != n / 2 + 2 && split != n / 3 + 2 && split != n - 1)
            continue;
        r = t_run(st, in, n, split);
        if (strcmp(r, exp) != 0) {
            print_error("%s (split %zu):\n in: %s\nout: %s\nexp: %s\n", what, split, in, r, exp);
            fail();
        }
        free(r);
    }
    {
        struct al_dbuf out;

        al_dbuf_init(&out, (size_t)1 << 24);
        assert_int_equal(sec_redact_value(s, mask, in, n, &out), AL_OK);
        if (strcmp(out.data != NULL ? out.data : "", exp) != 0) {
            print_error("%s (sec_redact_value):\n in: %s\nout: %s\n", what, in, out.data);
            fail();
        }
        sec_dbuf_wipe(&out);
        assert_int_equal(sec_redact_any(s, mask, in, n), strcmp(in, exp) != 0);
    }
}

static void
t_case(char *dst, const char *v, int upper)
{
    size_t i = 0;

    for (; v[i] != '\0'; i++) {
        char c = v[i];

        if (upper && c >= 'a' && c <= 'z')
            c = (char)(c - 'a' + 'A');
        else if (!upper && c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        dst[i] = c;
    }
    dst[i] = '\0';
}

static void
test_case_folded(void **state)
{
    struct sec_store  *s = t_store();
    struct sec_stream *st = sec_redactor_new(s, 7);
    const char        *vals[] = {T_V40, T_V200, T_VLOW};
    char               in[2048], exp[1024], f[512], g[512];

    (void)state;
    assert_non_null(st);
    for (int i = 0; i < 3; i++) {
        for (int up = 0; up < 2; up++) {
            t_case(f, vals[i], up);
            snprintf(in, sizeof(in), "{\"error\": \"bad token %s\"}", f);
            snprintf(exp, sizeof(exp), "{\"error\": \"bad token %s\"}", sec_placeholder(s, i));
            t_expect(s, st, 7, in, exp, 1, up ? "upper" : "lower");
            /* twice, adjacent, the other case too */
            t_case(g, vals[i], !up);
            snprintf(in, sizeof(in), "%s%s|%s", f, f, g);
            snprintf(exp, sizeof(exp), "%s%s|%s", sec_placeholder(s, i), sec_placeholder(s, i),
                     sec_placeholder(s, i));
            t_expect(s, st, 7, in, exp, 0, "case twice");
        }
        /* near misses: mixed case, one letter changed */
        t_case(f, vals[i], 0);
        f[9] = (char)(f[9] == 'e' ? 'f' : 'e');
        t_expect(s, st, 7, f, f, 0, "lower near miss");
        t_case(f, vals[i], 1);
        f[strlen(f) - 4] = '#';
        t_expect(s, st, 7, f, f, 0, "upper near miss");
    }
    t_case(f, T_V40, 0);
    f[0] = 'S'; /* "Sk-live-..." */
    t_expect(s, st, 7, f, f, 0, "mixed case");
    /* another secret's mask leaves it alone */
    sec_stream_free(st);
    st = sec_redactor_new(s, 2);
    t_case(f, T_V40, 1);
    t_expect(s, st, 2, f, f, 0, "masked out");
    sec_stream_free(st);
    sec_store_unref(s);
}

/* No form is added twice; an all-lower-case value has no lower-cased form
 * of its own, but its upper-cased one. */
static void
test_forms_dedup(void **state)
{
    struct al_dbuf    buf;
    struct sec_ac_in *ins = NULL;
    int               nins = 0, cap = 0, nup = 0, nwrap = 0;
    char              up[64];

    (void)state;
    al_dbuf_init(&buf, (size_t)1 << 24);
    assert_int_equal(sec_forms_add(T_VLOW, strlen(T_VLOW), 0, &buf, &ins, &nins, &cap), AL_OK);
    t_case(up, T_VLOW, 1);
    for (int i = 0; i < nins; i++) {
        const char *a = buf.data + (uintptr_t)ins[i].p;

        for (int j = 0; j < i; j++)
            assert_false(ins[i].len == ins[j].len &&
                         memcmp(a, buf.data + (uintptr_t)ins[j].p, ins[i].len) == 0);
        if (ins[i].len == strlen(up) && memcmp(a, up, ins[i].len) == 0)
            nup++;
        nwrap += ins[i].wrap != 0;
    }
    assert_int_equal(nup, 1);
    /* std base64: padded, unpadded, inner at 3 alignments; for 24 bytes the
     * first two and the inner one at alignment 0 are the same text */
    assert_int_equal(nwrap, 3);
    sec_dbuf_wipe(&buf);
    free(ins);
}

static const size_t t_widths[] = {60, 64, 76};
static const char  *t_eols[] = {"\n", "\r\n"};
/* and the JSON string escapes of those (GitHub's contents API) */
static const char *t_jeols[] = {"\\n", "\\r\\n"};
static const char *t_alleols[] = {"\n", "\r\n", "\\n", "\\r\\n"};

/* Every wrapped variant of every standard base64 form of secret idx. */
static void
t_wrapped_all(struct sec_store *s, int idx, int every)
{
    const char        *v = s->secs[idx].value, *ph = sec_placeholder(s, idx);
    size_t             n = s->secs[idx].value_len;
    struct sec_stream *st = sec_redactor_new(s, 7);
    int                cases = 0;

    assert_non_null(st);
    for (int f = 0; f < 5; f++) {
        char   form[1024], w[2048], in[2100], exp[128];
        size_t L = t_b64_form(v, n, f < 2 ? 0 : f - 2, f < 2 ? f : 2, form);

        snprintf(exp, sizeof(exp), "<%s>", ph);
        for (size_t wi = 0; wi < 3; wi++) {
            for (size_t p = 1; p < L; p++) {
                /* widths collapse when only one break fits */
                if (wi > 0 && p + t_widths[0] >= L)
                    continue;
                for (int e = 0; e < 2; e++) {
                    t_wrap(form, L, p, t_widths[wi], t_eols[e], w);
                    snprintf(in, sizeof(in), "<%s>", w);
                    t_expect(s, st, 7, in, exp, every && (p % 7 == 1 || p + 2 >= L), "wrapped");
                    cases++;
                }
            }
        }
    }
    print_message("secret %d: %d wrapped variants\n", idx, cases);
    sec_stream_free(st);
}

static void
test_wrapped_b64(void **state)
{
    struct sec_store *s = t_store();

    (void)state;
    t_wrapped_all(s, 0, 1);
    t_wrapped_all(s, 1, 0);
    t_wrapped_all(s, 2, 1);
    sec_store_unref(s);
}

/* Wrapped, but not as a MIME encoder wraps (or not the value): left alone. */
static void
test_wrapped_near_miss(void **state)
{
    struct sec_store  *s = t_store();
    struct sec_stream *st = sec_redactor_new(s, 7);
    char               form[1024], w[2048], x[2100];
    size_t             L;

    (void)state;
    assert_non_null(st);
    /* 40 bytes: a break in the middle is fine ... */
    L = t_b64_form(T_V40, strlen(T_V40), 0, 1, form);
    t_wrap(form, L, 20, 60, "\n", w);
    snprintf(x, sizeof(x), "<PH-AAAAAAAA>");
    {
        char in[2100];

        snprintf(in, sizeof(in), "<%s>", w);
        t_expect(s, st, 7, in, x, 0, "control");
    }
    /* ... but not two, a lone CR, CR CR LF, a space, a changed character */
    {
        static const char *bad[] = {"\n\n", "\r", "\r\r\n", " ", "\n\r\n", "\r\n\r\n", "\t"};

        for (size_t b = 0; b < sizeof(bad) / sizeof(bad[0]); b++) {
            t_wrap(form, L, 20, 60, bad[b], w);
            t_expect(s, st, 7, w, w, 1, "bad break");
        }
        t_wrap(form, L, 20, 60, "\r\n", w);
        w[30] = (char)(w[30] == 'A' ? 'B' : 'A');
        t_expect(s, st, 7, w, w, 1, "changed character");
        /* two breaks 20 apart */
        memcpy(x, form, 20);
        memcpy(x + 20, "\n", 1);
        memcpy(x + 21, form + 20, 20);
        memcpy(x + 41, "\n", 1);
        memcpy(x + 42, form + 40, L - 40);
        x[42 + L - 40] = '\0';
        t_expect(s, st, 7, x, x, 1, "breaks 20 apart");
    }
    /* 200 bytes: widths other than 60/64/76, uneven lines, LF and CRLF
     * mixed, one break with too long a line after it */
    L = t_b64_form(T_V200, strlen(T_V200), 0, 1, form);
    {
        t_wrap(form, L, 10, 50, "\n", w);
        t_expect(s, st, 7, w, w, 1, "width 50");
        t_wrap(form, L, 10, 72, "\r\n", w);
        t_expect(s, st, 7, w, w, 0, "width 72");
        t_wrap(form, L, 10, 77, "\n", w);
        t_expect(s, st, 7, w, w, 0, "width 77");
        /* 60 then 64 */
        t_wrap(form, L, 10, 60, "\n", w); /* breaks at 10, 70, 130, 190, 250 */
        {
            char  *q = strchr(strchr(strchr(w, '\n') + 1, '\n') + 1, '\n'); /* the 3rd */
            size_t at = (size_t)(q - w);

            memmove(w + at, w + at + 1, strlen(w + at + 1) + 1); /* drop it */
            memmove(w + at + 5, w + at + 4, strlen(w + at + 4) + 1);
            w[at + 4] = '\n'; /* 4 characters later */
            t_expect(s, st, 7, w, w, 0, "uneven lines");
        }
        t_wrap(form, L, 10, 60, "\n", w);
        {
            char *q = strchr(strchr(w, '\n') + 1, '\n'); /* the 2nd becomes CRLF */

            memmove(q + 1, q, strlen(q) + 1);
            *q = '\r';
            t_expect(s, st, 7, w, w, 0, "LF and CRLF");
        }
        /* one break only, too early for any width */
        memcpy(x, form, 10);
        x[10] = '\n';
        memcpy(x + 11, form + 10, L - 10);
        x[L + 1] = '\0';
        t_expect(s, st, 7, x, x, 1, "one early break");
        /* the last line too long for the width */
        /* (its first L - 1 characters are the form at alignment 0: 77 there) */
        memcpy(x, form, L - 78);
        x[L - 78] = '\n';
        memcpy(x + L - 77, form + L - 78, 78);
        x[L + 1] = '\0';
        t_expect(s, st, 7, x, x, 1, "last line 78");
        t_wrap(form, L, L - 76, 76, "\n", w);
        snprintf(x, sizeof(x), "<%s>", w);
        t_expect(s, st, 7, x, "<PH-BBBBBBBBBBBB>", 1, "last line 76");
    }
    sec_stream_free(st);
    sec_store_unref(s);
}

/* A long base64 document (MIME-wrapped) holding the value at every byte
 * alignment, fed in random pieces: no form of the value survives. */
static void
test_wrapped_document(void **state)
{
    struct sec_store *s = t_store();

    (void)state;
    for (int idx = 0; idx < 2; idx++) {
        const char *v = s->secs[idx].value, *ph = sec_placeholder(s, idx);
        size_t      n = s->secs[idx].value_len;

        for (size_t at = 100; at < 103 + 76; at++) {
            size_t             wi = at % 3, dlen = 600, elen, o = 0;
            const char        *eol = t_alleols[at / 3 % 4];
            unsigned char      doc[700];
            char              *enc = malloc(2000), *wr = malloc(2600), *r;
            struct sec_stream *st = sec_redactor_new(s, 7);

            assert_non_null(st);
            assert_int_equal(RAND_bytes(doc, (int)dlen), 1);
            memcpy(doc + at, v, n);
            elen = (size_t)EVP_EncodeBlock((unsigned char *)enc, doc, (int)dlen);
            for (size_t i = 0; i < elen; i++) {
                if (i > 0 && i % t_widths[wi] == 0) {
                    memcpy(wr + o, eol, strlen(eol));
                    o += strlen(eol);
                }
                wr[o++] = enc[i];
            }
            wr[o] = '\0';
            {
                struct al_dbuf out;
                size_t         off = 0;
                char           flat[2600], inner[1024];
                size_t         fo = 0;

                al_dbuf_init(&out, (size_t)1 << 24);
                while (off < o) {
                    unsigned char k;
                    size_t        piece;

                    assert_int_equal(RAND_bytes(&k, 1), 1);
                    piece = 1 + k % 97;
                    if (piece > o - off)
                        piece = o - off;
                    assert_int_equal(sec_stream_feed(st, wr + off, piece, &out), AL_OK);
                    off += piece;
                }
                assert_int_equal(sec_stream_finish(st, &out), AL_OK);
                r = out.data;
                if (strstr(r, ph) == NULL) {
                    print_error("secret %d at %zu, width %zu: no placeholder in\n%s\n", idx, at,
                                t_widths[wi], r);
                    fail();
                }
                for (size_t i = 0; r[i] != '\0'; i++) {
                    if (r[i] == '\\' && (r[i + 1] == 'n' || r[i + 1] == 'r'))
                        i++;
                    else if (r[i] != '\r' && r[i] != '\n')
                        flat[fo++] = r[i];
                }
                flat[fo] = '\0';
                for (int k = 0; k < 3; k++) {
                    t_b64_form(v, n, k, 2, inner);
                    assert_null(strstr(flat, inner));
                }
                sec_dbuf_wipe(&out);
            }
            sec_stream_free(st);
            free(enc);
            free(wr);
        }
    }
    sec_store_unref(s);
}

/* f with every '/' escaped as "\/" (PHP's json_encode). */
static size_t
t_slashes(const char *f, char *out)
{
    size_t o = 0;

    for (; *f != '\0'; f++) {
        if (*f == '/')
            out[o++] = '\\';
        out[o++] = *f;
    }
    out[o] = '\0';
    return o;
}

/* Every standard base64 form of secret idx wrapped with the JSON escapes
 * "\n" / "\r\n" inside a JSON string, at every width and alignment (and
 * with '/' escaped too): one placeholder. */
static void
t_json_wrapped_all(struct sec_store *s, int idx, int every, int *nslash)
{
    const char        *v = s->secs[idx].value, *ph = sec_placeholder(s, idx);
    size_t             n = s->secs[idx].value_len;
    struct sec_stream *st = sec_redactor_new(s, 7);
    int                cases = 0;

    assert_non_null(st);
    for (int f = 0; f < 5; f++) {
        char   form[1024], w[2400], w2[2800], in[2900], exp[128];
        size_t L = t_b64_form(v, n, f < 2 ? 0 : f - 2, f < 2 ? f : 2, form);

        snprintf(exp, sizeof(exp), "{\"content\": \"%s\"}", ph);
        for (size_t wi = 0; wi < 3; wi++) {
            for (size_t p = 1; p < L; p++) {
                if (wi > 0 && p + t_widths[0] >= L)
                    continue;
                for (int e = 0; e < 2; e++) {
                    t_wrap(form, L, p, t_widths[wi], t_jeols[e], w);
                    snprintf(in, sizeof(in), "{\"content\": \"%s\"}", w);
                    t_expect(s, st, 7, in, exp, every && (p % 7 == 1 || p + 2 >= L),
                             "json-wrapped");
                    cases++;
                    if (strchr(form, '/') != NULL && (p % 5 == 0 || p == 1)) {
                        t_slashes(w, w2);
                        snprintf(in, sizeof(in), "{\"content\": \"%s\"}", w2);
                        t_expect(s, st, 7, in, exp, every && p == 1, "json-wrapped \\/");
                        (*nslash)++;
                    }
                }
            }
        }
        if (strchr(form, '/') != NULL) { /* "\/" alone, not wrapped */
            t_slashes(form, w2);
            snprintf(in, sizeof(in), "{\"content\": \"%s\"}", w2);
            t_expect(s, st, 7, in, exp, 1, "\\/ only");
            (*nslash)++;
        }
    }
    print_message("secret %d: %d JSON-wrapped variants\n", idx, cases);
    sec_stream_free(st);
}

static void
test_json_wrapped_b64(void **state)
{
    struct sec_store *s = t_store();
    int               nslash = 0;

    (void)state;
    t_json_wrapped_all(s, 0, 1, &nslash);
    t_json_wrapped_all(s, 1, 0, &nslash);
    t_json_wrapped_all(s, 2, 1, &nslash);
    sec_store_unref(s);
    /* '?' (0x3f) ends a base64 group with '/' */
    s = t_store1("sk?live?TEST?????0123456789??abcdef???");
    t_json_wrapped_all(s, 0, 1, &nslash);
    assert_true(nslash > 0); /* some form holds a '/' */
    sec_store_unref(s);
}

/* JSON-escaped, but not as an encoder wraps (or no escape): left alone. */
static void
test_json_wrapped_near_miss(void **state)
{
    struct sec_store  *s = t_store();
    struct sec_stream *st = sec_redactor_new(s, 7);
    char               form[1024], w[2400], x[2600];
    size_t             L;

    (void)state;
    assert_non_null(st);
    L = t_b64_form(T_V40, strlen(T_V40), 0, 1, form);
    t_wrap(form, L, 20, 60, "\\n", w);
    snprintf(x, sizeof(x), "\"%s\"", w);
    t_expect(s, st, 7, x, "\"PH-AAAAAAAA\"", 1, "json control");
    {
        /* two escapes, a lone "\r", "\r" "\r\n", an escaped backslash
         * then n ("\\n" is a backslash and an n), real and escaped breaks
         * mixed, "\t", "\u000a" */
        static const char *bad[] = {"\\n\\n",  "\\r", "\\r\\r\\n", "\\\\n", "\\n\n", "\n\\n", "\\t",
                                    "\\u000a", "\\",  "\\r\\n\\n", "\\/",   "\\n\\/"};

        for (size_t b = 0; b < sizeof(bad) / sizeof(bad[0]); b++) {
            t_wrap(form, L, 20, 60, bad[b], w);
            t_expect(s, st, 7, w, w, 1, "bad escape");
        }
        t_wrap(form, L, 20, 60, "\\r\\n", w);
        w[30] = (char)(w[30] == 'A' ? 'B' : 'A');
        t_expect(s, st, 7, w, w, 1, "json changed character");
        /* two escapes 20 apart */
        memcpy(x, form, 20);
        memcpy(x + 20, "\\n", 2);
        memcpy(x + 22, form + 20, 20);
        memcpy(x + 42, "\\n", 2);
        memcpy(x + 44, form + 40, L - 40);
        x[44 + L - 40] = '\0';
        t_expect(s, st, 7, x, x, 1, "escapes 20 apart");
    }
    L = t_b64_form(T_V200, strlen(T_V200), 0, 1, form);
    {
        t_wrap(form, L, 10, 50, "\\n", w);
        t_expect(s, st, 7, w, w, 1, "json width 50");
        t_wrap(form, L, 10, 72, "\\r\\n", w);
        t_expect(s, st, 7, w, w, 0, "json width 72");
        /* "\n" then "\r\n" */
        t_wrap(form, L, 10, 60, "\\n", w);
        {
            char *q = strstr(strstr(w, "\\n") + 2, "\\n"); /* the 2nd becomes "\r\n" */

            memmove(q + 2, q, strlen(q) + 1);
            memcpy(q, "\\r", 2);
            t_expect(s, st, 7, w, w, 0, "\\n and \\r\\n");
        }
        /* escapes where real breaks would be, one real among them */
        t_wrap(form, L, 10, 60, "\\n", w);
        {
            char *q = strstr(strstr(w, "\\n") + 2, "\\n");

            memmove(q, q + 1, strlen(q + 1) + 1);
            *q = '\n';
            t_expect(s, st, 7, w, w, 0, "real and escaped");
        }
        /* one escape only, too early for any width */
        memcpy(x, form, 10);
        memcpy(x + 10, "\\n", 2);
        memcpy(x + 12, form + 10, L - 10);
        x[L + 2] = '\0';
        t_expect(s, st, 7, x, x, 1, "one early escape");
        /* the last line too long */
        memcpy(x, form, L - 78);
        memcpy(x + L - 78, "\\n", 2);
        memcpy(x + L - 76, form + L - 78, 78);
        x[L + 2] = '\0';
        t_expect(s, st, 7, x, x, 1, "json last line 78");
    }
    sec_stream_free(st);
    sec_store_unref(s);
}

/* Values beginning with n or r right after a literal backslash (a Windows
 * path, an escaped backslash in JSON) are redacted as they are; so are
 * their wrapped forms, and base64 forms beginning with n after a break. */
static void
test_json_escape_pitfall(void **state)
{
    const char        *json = "{\"secrets\": {"
                              "\"n\": {\"from\": {\"value\": \"nSECRET-0123456789-abcdef\"}, "
                              "\"hosts\": [\"n.test\"], \"placeholder\": \"PH-NNNNNNNN\"},"
                              "\"r\": {\"from\": {\"value\": \"rSECRET-9876543210-fedcba\"}, "
                              "\"hosts\": [\"r.test\"], \"placeholder\": \"PH-RRRRRRRR\"}}}";
    struct al_errs     errs;
    struct sec_store  *s;
    struct sec_stream *st;
    char               in[4096], exp[4096], form[1024], w[2400];

    (void)state;
    al_errs_init(&errs);
    s = sec_load_text("t.json", json, strlen(json), NULL, &errs);
    assert_non_null(s);
    al_errs_free(&errs);
    st = sec_redactor_new(s, 3);
    assert_non_null(st);
    for (int i = 0; i < 2; i++) {
        const char        *v = s->secs[i].value, *ph = sec_placeholder(s, i);
        static const char *pre[] = {"C:\\",     "\\\\",    "x\\",         "\\n\\",
                                    "\\r\\n\\", "ab\\r\\", "QUJD\\\\\\n", "\\"};

        for (size_t k = 0; k < sizeof(pre) / sizeof(pre[0]); k++) {
            snprintf(in, sizeof(in), "\"%s%s\"", pre[k], v);
            snprintf(exp, sizeof(exp), "\"%s%s\"", pre[k], ph);
            t_expect(s, st, 3, in, exp, 1, "value after a backslash");
            /* right after a wrapped form of the other one */
            t_b64_form(s->secs[!i].value, s->secs[!i].value_len, 0, 0, form);
            t_wrap(form, strlen(form), 7, 60, "\\n", w);
            snprintf(in, sizeof(in), "\"%s%s%s\"", w, pre[k], v);
            snprintf(exp, sizeof(exp), "\"%s%s%s\"", sec_placeholder(s, !i), pre[k], ph);
            t_expect(s, st, 3, in, exp, 0, "value after a wrapped one");
        }
        /* an escaped break right before the value: "\n" then n... */
        snprintf(in, sizeof(in), "\"abc\\n%s\\r\\n%s\"", v, v);
        snprintf(exp, sizeof(exp), "\"abc\\n%s\\r\\n%s\"", ph, ph);
        t_expect(s, st, 3, in, exp, 1, "value after an escape");
    }
    sec_stream_free(st);
    sec_store_unref(s);
}

/* Base64 forms beginning with n or r, wrapped after their first character
 * (the escape's n next to the form's own n). */
static void
test_json_wrapped_first_n(void **state)
{
    struct sec_store  *s = NULL;
    struct sec_stream *st;
    int                found = 0;

    (void)state;
    /* inner base64 at alignment 2 begins with the first byte's low 6
     * bits: 'g' gives 'n', 'k' gives 'r' */
    for (int tries = 0; tries < 2; tries++) {
        static const char *vals[] = {"g-secret-n-first-0123", "k-secret-r-first-0123"};
        char               form[256], w[512], in[700];

        s = t_store1(vals[tries]);
        st = sec_redactor_new(s, 1);
        assert_non_null(st);
        for (int f = 0; f < 5; f++) {
            size_t L = t_b64_form(s->secs[0].value, s->secs[0].value_len, f < 2 ? 0 : f - 2,
                                  f < 2 ? f : 2, form);

            if (form[0] != 'n' && form[0] != 'r')
                continue;
            found++;
            for (int e = 0; e < 2; e++) {
                for (size_t p = 1; p < 3; p++) {
                    t_wrap(form, L, p, 60, t_jeols[e], w);
                    snprintf(in, sizeof(in), "\"%s\"", w);
                    t_expect(s, st, 1, in, "\"PH-XXXXXXXX\"", 1, "first n/r");
                    snprintf(in, sizeof(in), "\"\\\\%s\"", w); /* after "\\" */
                    t_expect(s, st, 1, in, "\"\\\\PH-XXXXXXXX\"", 1, "first n/r after \\\\");
                }
            }
        }
        sec_stream_free(st);
        sec_store_unref(s);
    }
    assert_true(found > 0);
}

static void
test_forms_bench(void **state)
{
    (void)state;
    if (getenv("AL_SEC_FORMS_BENCH") == NULL)
        skip();
    t_bench_one("5 x 40 B", 5, 40);
    t_bench_one("1 x 200 B", 1, 200);
    t_bench_one("10 x 36 B", 10, 36);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_case_folded),
        cmocka_unit_test(test_forms_dedup),
        cmocka_unit_test(test_wrapped_b64),
        cmocka_unit_test(test_wrapped_near_miss),
        cmocka_unit_test(test_wrapped_document),
        cmocka_unit_test(test_json_wrapped_b64),
        cmocka_unit_test(test_json_wrapped_near_miss),
        cmocka_unit_test(test_json_escape_pitfall),
        cmocka_unit_test(test_json_wrapped_first_n),
        cmocka_unit_test(test_forms_bench),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
