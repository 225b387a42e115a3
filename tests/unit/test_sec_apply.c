/*
 * test_sec_apply.c - request-head rewriting: header templates replace a
 * client-sent header (any case) exactly once; placeholders substituted in
 * X-Api-Key, inside Bearer and inside Basic credentials; out-of-scope
 * placeholders refused with the right secret; passthrough left alone;
 * cleartext rules; TRACE; query/path substitution only when opted in;
 * compressed bodies; body verdicts.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "secrets/sec_int.h"

#define GH_VAL "ghp_SECRET-VALUE-c0ffee-1234-xyz"
#define KEY_VAL "key/VALUE+with spaces&more"
#define BA_VAL "basic-pass-VALUE-77"
#define PT_VAL "plain-VALUE-0987654321"

static struct sec_store *t_s;

static int
t_setup(void **state)
{
    const char *json =
        "{\"secrets\": {"
        "\"gh\": {\"from\": {\"value\": \"" GH_VAL "\"}, \"hosts\": [\"api.github.com\"], "
        "\"header\": {\"name\": \"Authorization\", \"format\": \"Bearer {}\"}, "
        "\"placeholder\": \"PH-GH-000000\"},"
        "\"key\": {\"from\": {\"value\": \"" KEY_VAL "\"}, \"hosts\": [\"*.example.com:443/v1/\"], "
        "\"passthrough\": [\"api.anthropic.com\"], \"in\": [\"header\", \"query\", \"path\"], "
        "\"placeholder\": \"PH-KEY-00000\"},"
        "\"ba\": {\"from\": {\"value\": \"" BA_VAL "\"}, \"hosts\": [\"basic.test\"], "
        "\"placeholder\": \"PH-BA-000000\", \"in\": [\"header\", \"body\"]},"
        "\"pt\": {\"from\": {\"value\": \"" PT_VAL "\"}, \"hosts\": [\"plain.test\"], "
        "\"header\": {\"name\": \"X-Token\", \"format\": \"{}\"}, \"allow_plaintext\": true, "
        "\"placeholder\": \"PH-PT-000000\"}"
        "}}";
    struct al_errs errs;

    (void)state;
    al_errs_init(&errs);
    t_s = sec_load_text("t.json", json, strlen(json), NULL, &errs);
    if (t_s == NULL)
        print_error("%s", errs.text.data);
    assert_non_null(t_s);
    al_errs_free(&errs);
    return 0;
}

static int
t_teardown(void **state)
{
    (void)state;
    sec_store_unref(t_s);
    return 0;
}

struct t_out {
    struct al_dbuf    hdrs, target;
    struct sec_result res;
    int               rc;
};

static void
t_apply(struct t_out *o, const char *host, uint16_t port, int tls, const char *method,
        const char *target, const char *const *hv /* name, value, ..., NULL */)
{
    struct sec_hdr  h[16];
    int             n = 0;
    struct sec_dest d = {host, port, target, strlen(target), tls, 0};

    for (; hv[2 * n] != NULL; n++) {
        h[n].name = hv[2 * n];
        h[n].name_len = strlen(hv[2 * n]);
        h[n].value = hv[2 * n + 1];
        h[n].value_len = strlen(hv[2 * n + 1]);
    }
    al_dbuf_init(&o->hdrs, 65536);
    al_dbuf_init(&o->target, 65536);
    o->rc = sec_apply_head(t_s, &d, method, h, n, target, strlen(target), &o->hdrs, &o->target,
                           &o->res);
}

static void
t_done(struct t_out *o)
{
    sec_dbuf_wipe(&o->hdrs);
    sec_dbuf_wipe(&o->target);
}

static const char *
t_str(const struct al_dbuf *b)
{
    return b->data != NULL ? b->data : "";
}

static void
test_template_replaces(void **state)
{
    struct t_out      o;
    const char *const h1[] = {"Accept", "*/*", "authorization", "Bearer client-own", NULL};
    const char *const h0[] = {"Accept", "*/*", NULL};

    (void)state;
    t_apply(&o, "api.github.com", 443, 1, "GET", "/repos/x", h1);
    assert_int_equal(o.rc, AL_OK);
    assert_string_equal(t_str(&o.hdrs), "Accept: */*\r\nAuthorization: Bearer " GH_VAL "\r\n");
    assert_string_equal(t_str(&o.target), "/repos/x");
    assert_int_equal(o.res.injected, 1);
    assert_int_equal(o.res.redact_mask, 1);
    assert_null(o.res.refusal);
    t_done(&o);
    t_apply(&o, "api.github.com", 443, 1, "GET", "/", h0);
    assert_int_equal(o.rc, AL_OK);
    assert_string_equal(t_str(&o.hdrs), "Accept: */*\r\nAuthorization: Bearer " GH_VAL "\r\n");
    t_done(&o);
    /* other host: nothing added, the client's own header kept */
    t_apply(&o, "api.gitlab.com", 443, 1, "GET", "/", h1);
    assert_int_equal(o.rc, AL_OK);
    assert_string_equal(t_str(&o.hdrs), "Accept: */*\r\nauthorization: Bearer client-own\r\n");
    assert_int_equal(o.res.injected, 0);
    t_done(&o);
}

/* Responses are scrubbed of every secret scoped to the host:port, on any
 * path, even when the request injected nothing: the origin may hold a value
 * from an earlier request and echo it. */
static void
test_redact_mask_host(void **state)
{
    struct t_out      o;
    const char *const h0[] = {"Accept", "*/*", NULL};
    const struct {
        const char *host;
        uint16_t    port;
        const char *path;
        uint64_t    mask;
    } cases[] = {
        {"x.example.com", 443, "/other", 2}, /* "key": *.example.com:443/v1/ */
        {"x.example.com", 443, "/v1/a", 2},
        {"x.example.com", 8443, "/v1/a", 0},
        /* another port: not a secret host */ {"X.Example.COM.", 443, "/", 2},
        {"example.com", 443, "/v1/a", 0},   /* the suffix pattern needs a label */
        {"api.anthropic.com", 443, "/", 0}, /* "key"'s passthrough host */
        {"api.gitlab.com", 443, "/", 0},    /* nobody's */
        {"basic.test", 443, "/", 4},        /* "ba" (also a body secret) */
        {"api.github.com", 8443, "/x", 1},  /* "gh": any port; its template injects */
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        t_apply(&o, cases[i].host, cases[i].port, 1, "GET", cases[i].path, h0);
        assert_int_equal(o.rc, AL_OK);
        if (o.res.redact_mask != cases[i].mask) {
            print_error("%s:%u%s: redact_mask %llu, want %llu\n", cases[i].host,
                        (unsigned)cases[i].port, cases[i].path,
                        (unsigned long long)o.res.redact_mask, (unsigned long long)cases[i].mask);
            fail();
        }
        assert_int_equal(o.res.injected & ~(uint64_t)1, 0);
        t_done(&o);
    }
}

static void
test_placeholder_in_host(void **state)
{
    (void)state;
    assert_int_equal(sec_placeholder_in_host(t_s, "ph-key-00000.evil.test", 22), 1);
    assert_int_equal(sec_placeholder_in_host(t_s, "a.PH-GH-000000", 14), 0);
    assert_int_equal(sec_placeholder_in_host(t_s, "xph-ba-000000x", 14), 2);
    assert_int_equal(sec_placeholder_in_host(t_s, "ph-ba-00000", 11), -1); /* one short */
    assert_int_equal(sec_placeholder_in_host(t_s, "api.github.com", 14), -1);
    assert_int_equal(sec_placeholder_in_host(t_s, "", 0), -1);
    assert_int_equal(sec_placeholder_in_host(NULL, "ph-key-00000", 12), -1);
}

static void
test_placeholder_substitution(void **state)
{
    struct t_out      o;
    const char *const h1[] = {"X-Api-Key", "PH-KEY-00000", "X-Other", "a PH-KEY-00000 b", NULL};
    char              basic[512], expb[512], enc[128];

    (void)state;
    t_apply(&o, "api.example.com", 443, 1, "POST", "/v1/chat", h1);
    assert_int_equal(o.rc, AL_OK);
    assert_string_equal(t_str(&o.hdrs), "X-Api-Key: " KEY_VAL "\r\nX-Other: a " KEY_VAL " b\r\n");
    assert_int_equal(o.res.injected, 2);
    t_done(&o);
    /* inside Bearer toward an in-scope host of a placeholder-only secret */
    {
        const char *const h[] = {"Authorization", "Bearer PH-KEY-00000", NULL};

        t_apply(&o, "x.example.com", 443, 1, "GET", "/v1/", h);
        assert_int_equal(o.rc, AL_OK);
        assert_string_equal(t_str(&o.hdrs), "Authorization: Bearer " KEY_VAL "\r\n");
        t_done(&o);
    }
    /* inside Basic credentials */
    EVP_EncodeBlock((unsigned char *)enc, (const unsigned char *)"user:PH-BA-000000", 17);
    snprintf(basic, sizeof(basic), "Basic %s", enc);
    EVP_EncodeBlock((unsigned char *)enc, (const unsigned char *)"user:" BA_VAL,
                    (int)strlen("user:" BA_VAL));
    snprintf(expb, sizeof(expb), "Authorization: Basic %s\r\n", enc);
    {
        const char *const h[] = {"Authorization", basic, NULL};

        t_apply(&o, "basic.test", 443, 1, "GET", "/", h);
        assert_int_equal(o.rc, AL_OK);
        assert_string_equal(t_str(&o.hdrs), expb);
        assert_int_equal(o.res.injected, 4);
        assert_int_equal(o.res.body_mask, 4);
        t_done(&o);
        /* the same Basic credentials toward another host: refused */
        t_apply(&o, "other.test", 443, 1, "GET", "/", h);
        assert_int_equal(o.rc, AL_DECLINED);
        assert_string_equal(o.res.refusal, SEC_REFUSE_OUT_OF_SCOPE);
        assert_int_equal(o.res.refusal_secret, 2);
        t_done(&o);
    }
}

static void
test_out_of_scope_and_passthrough(void **state)
{
    struct t_out      o;
    const char *const h[] = {"X-Api-Key", "PH-KEY-00000", NULL};
    const char *const hg[] = {"X-Note", "PH-GH-000000", NULL};

    (void)state;
    /* allowed host, wrong path prefix and wrong port */
    t_apply(&o, "api.example.com", 443, 1, "GET", "/v2/x", h);
    assert_int_equal(o.rc, AL_DECLINED);
    assert_string_equal(o.res.refusal, SEC_REFUSE_OUT_OF_SCOPE);
    assert_int_equal(o.res.refusal_secret, 1);
    t_done(&o);
    t_apply(&o, "api.example.com", 8443, 1, "GET", "/v1/x", h);
    assert_int_equal(o.rc, AL_DECLINED);
    assert_int_equal(o.res.refusal_secret, 1);
    t_done(&o);
    t_apply(&o, "evil.test", 443, 1, "GET", "/", hg);
    assert_int_equal(o.rc, AL_DECLINED);
    assert_string_equal(o.res.refusal, SEC_REFUSE_OUT_OF_SCOPE);
    assert_int_equal(o.res.refusal_secret, 0);
    t_done(&o);
    /* in the query or the path toward another host */
    t_apply(&o, "evil.test", 443, 1, "GET", "/x?k=PH-GH-000000", (const char *const[]){NULL});
    assert_int_equal(o.rc, AL_DECLINED);
    assert_int_equal(o.res.refusal_secret, 0);
    t_done(&o);
    /* in a header name */
    t_apply(&o, "evil.test", 443, 1, "GET", "/", (const char *const[]){"PH-KEY-00000", "x", NULL});
    assert_int_equal(o.rc, AL_DECLINED);
    assert_int_equal(o.res.refusal_secret, 1);
    t_done(&o);
    /* passthrough: travels unchanged */
    t_apply(&o, "api.anthropic.com", 443, 1, "POST", "/v1/messages?q=PH-KEY-00000", h);
    assert_int_equal(o.rc, AL_OK);
    assert_string_equal(t_str(&o.hdrs), "X-Api-Key: PH-KEY-00000\r\n");
    assert_string_equal(t_str(&o.target), "/v1/messages?q=PH-KEY-00000");
    assert_int_equal(o.res.injected, 0);
    t_done(&o);
}

static void
test_plaintext(void **state)
{
    struct t_out      o;
    const char *const h0[] = {"Accept", "*/*", NULL};
    const char *const hk[] = {"X-Api-Key", "PH-KEY-00000", NULL};
    const char *const hp[] = {"X-Token", "client", "X-Also", "PH-PT-000000", NULL};

    (void)state;
    /* template not added over cleartext, no refusal without a placeholder */
    t_apply(&o, "api.github.com", 80, 0, "GET", "/", h0);
    assert_int_equal(o.rc, AL_OK);
    assert_string_equal(t_str(&o.hdrs), "Accept: */*\r\n");
    assert_int_equal(o.res.injected, 0);
    t_done(&o);
    /* a placeholder that would apply over cleartext: refused */
    t_apply(&o, "api.example.com", 443, 0, "GET", "/v1/x", hk);
    assert_int_equal(o.rc, AL_DECLINED);
    assert_string_equal(o.res.refusal, SEC_REFUSE_PLAINTEXT);
    assert_int_equal(o.res.refusal_secret, 1);
    t_done(&o);
    /* allow_plaintext: template replaces, placeholder substituted */
    t_apply(&o, "plain.test", 80, 0, "GET", "/", hp);
    assert_int_equal(o.rc, AL_OK);
    assert_string_equal(t_str(&o.hdrs), "X-Also: " PT_VAL "\r\nX-Token: " PT_VAL "\r\n");
    assert_int_equal(o.res.injected, 8);
    t_done(&o);
}

static void
test_trace(void **state)
{
    struct t_out      o;
    const char *const h0[] = {NULL};

    (void)state;
    t_apply(&o, "api.github.com", 443, 1, "TRACE", "/", h0);
    assert_int_equal(o.rc, AL_DECLINED);
    assert_string_equal(o.res.refusal, SEC_REFUSE_TRACE);
    assert_int_equal(o.res.refusal_secret, 0);
    t_done(&o);
    t_apply(&o, "api.github.com", 80, 0, "track", "/", h0);
    assert_int_equal(o.rc, AL_DECLINED);
    assert_string_equal(o.res.refusal, SEC_REFUSE_TRACE);
    t_done(&o);
    t_apply(&o, "example.org", 443, 1, "TRACE", "/", h0);
    assert_int_equal(o.rc, AL_OK);
    t_done(&o);
}

static void
test_query_path(void **state)
{
    struct t_out      o;
    const char *const h0[] = {NULL};

    (void)state;
    /* opted in: substituted, percent-encoded */
    t_apply(&o, "api.example.com", 443, 1, "GET", "/v1/PH-KEY-00000/x?key=PH-KEY-00000&a=b", h0);
    assert_int_equal(o.rc, AL_OK);
    assert_string_equal(t_str(&o.target), "/v1/key%2FVALUE%2Bwith%20spaces%26more/x"
                                          "?key=key%2FVALUE%2Bwith%20spaces%26more&a=b");
    assert_int_equal(o.res.injected, 2);
    t_done(&o);
    /* not opted in (gh: header only): refused, not silently forwarded */
    t_apply(&o, "api.github.com", 443, 1, "GET", "/x?token=PH-GH-000000", h0);
    assert_int_equal(o.rc, AL_DECLINED);
    assert_string_equal(o.res.refusal, SEC_REFUSE_LOCATION);
    assert_int_equal(o.res.refusal_secret, 0);
    t_done(&o);
    /* no placeholder: target copied */
    t_apply(&o, "api.github.com", 443, 1, "GET", "/a?b=c", h0);
    assert_int_equal(o.rc, AL_OK);
    assert_string_equal(t_str(&o.target), "/a?b=c");
    t_done(&o);
}

static void
test_body_rules(void **state)
{
    struct t_out      o;
    const char *const hz[] = {"Content-Encoding", "gzip", NULL};
    const char *const hi[] = {"Content-Encoding", "identity", NULL};
    struct sec_dest   d = {"basic.test", 443, "/", 1, 1, 0};
    struct sec_result res;

    (void)state;
    t_apply(&o, "basic.test", 443, 1, "POST", "/", hz);
    assert_int_equal(o.rc, AL_DECLINED);
    assert_string_equal(o.res.refusal, SEC_REFUSE_COMPRESSED);
    assert_int_equal(o.res.refusal_secret, 2);
    t_done(&o);
    t_apply(&o, "basic.test", 443, 1, "POST", "/", hi);
    assert_int_equal(o.rc, AL_OK);
    assert_int_equal(o.res.body_mask, 4);
    t_done(&o);
    /* no body substitution toward github: gzip is fine */
    t_apply(&o, "api.github.com", 443, 1, "POST", "/", hz);
    assert_int_equal(o.rc, AL_OK);
    t_done(&o);
    /* verdicts on placeholders seen in a body */
    memset(&res, 0, sizeof(res));
    assert_int_equal(sec_body_verdict(t_s, &d, 4, &res), AL_OK);
    assert_int_equal(sec_body_verdict(t_s, &d, 1, &res), AL_DECLINED);
    assert_string_equal(res.refusal, SEC_REFUSE_OUT_OF_SCOPE);
    assert_int_equal(res.refusal_secret, 0);
    d.host = "api.github.com";
    memset(&res, 0, sizeof(res));
    assert_int_equal(sec_body_verdict(t_s, &d, 1, &res), AL_DECLINED);
    assert_string_equal(res.refusal, SEC_REFUSE_LOCATION);
    d.host = "api.anthropic.com";
    memset(&res, 0, sizeof(res));
    assert_int_equal(sec_body_verdict(t_s, &d, 2, &res), AL_OK);
}

static void
test_apply_alloc_failures(void **state)
{
    const char *const h[] = {"Authorization", "Basic dXNlcjpQSC1CQS0wMDAwMDA=", "X-Api-Key",
                             "PH-GH-000000", NULL};

    (void)state;
    for (long n = 1; n < 60; n++) {
        struct t_out o;

        al_mem_fail_after(n);
        t_apply(&o, "api.github.com", 443, 1, "GET", "/?a=PH-GH-000000", h);
        al_mem_fail_after(0);
        assert_true(o.rc == AL_OK || o.rc == AL_ERROR || o.rc == AL_DECLINED);
        t_done(&o);
    }
}

static void
test_rule_inject_list_narrows(void **state)
{
    /* A rule's "inject" list: a secret outside it is out of scope here. */
    struct al_errs    errs;
    static const char text[] =
        "{\"secrets\": {\"a\": {\"from\": {\"value\": \"SECRET-VALUE-aaaa\"}, \"hosts\": "
        "[\"api.test\"], \"header\": {\"name\": \"Authorization\", \"format\": \"Bearer {}\"}},"
        "\"b\": {\"from\": {\"value\": \"SECRET-VALUE-bbbb\"}, \"hosts\": [\"api.test\"], "
        "\"header\": {\"name\": \"X-B\", \"format\": \"{}\"}}}}";
    struct sec_store *s;
    struct sec_dest   d = {"api.test", 443, "/", 1, 1, 0};
    struct sec_result res;
    struct al_dbuf    hb, tb;
    char              dir[] = "/tmp/al_only_XXXXXX";

    (void)state;
    assert_non_null(mkdtemp(dir));
    al_errs_init(&errs);
    s = sec_load_text("s.json", text, strlen(text), dir, &errs);
    assert_non_null(s);
    assert_int_equal(sec_in_scope(s, 0, &d), 1);
    d.only = 1ULL << sec_find(s, "b");
    assert_int_equal(sec_in_scope(s, sec_find(s, "a"), &d), 0);
    assert_int_equal(sec_in_scope(s, sec_find(s, "b"), &d), 1);
    al_dbuf_init(&hb, 65536);
    al_dbuf_init(&tb, 65536);
    memset(&res, 0, sizeof(res));
    assert_int_equal(sec_apply_head(s, &d, "GET", NULL, 0, "/", 1, &hb, &tb, &res), AL_OK);
    assert_non_null(strstr(hb.data, "X-B: SECRET-VALUE-bbbb"));
    assert_null(strstr(hb.data, "SECRET-VALUE-aaaa"));
    assert_int_equal(res.injected, 1ULL << sec_find(s, "b"));
    sec_dbuf_wipe(&hb);
    sec_dbuf_wipe(&tb);
    sec_store_unref(s);
    al_errs_free(&errs);
    {
        char cmd[64];

        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        assert_int_equal(system(cmd), 0);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rule_inject_list_narrows),
        cmocka_unit_test(test_template_replaces),
        cmocka_unit_test(test_redact_mask_host),
        cmocka_unit_test(test_placeholder_in_host),
        cmocka_unit_test(test_placeholder_substitution),
        cmocka_unit_test(test_out_of_scope_and_passthrough),
        cmocka_unit_test(test_plaintext),
        cmocka_unit_test(test_trace),
        cmocka_unit_test(test_query_path),
        cmocka_unit_test(test_body_rules),
        cmocka_unit_test(test_apply_alloc_failures),
    };

    return cmocka_run_group_tests(tests, t_setup, t_teardown);
}
