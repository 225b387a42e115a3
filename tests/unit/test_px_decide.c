/*
 * test_px_decide.c - identity and policy (proxy/px_decide.c) on a fake
 * connection (tests/unit/px_fake.h) with a real policy and sandboxes,
 * request heads parsed by the real codec: allowed (rule, normalised path
 * to forward), denied (403 with the rule or the miss), bad paths (400),
 * Proxy-Authorization (407 with the challenge for bad, unknown, doubled
 * or missing credentials; a CIDR-only sandbox can't be claimed from
 * outside), sandboxes by source address, tags (credentials beat the
 * operator's tag, which beats X-Airlock-* headers; headers never
 * forwarded; a bad tag is 400), a placeholder in the host name (403
 * before any lookup).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>

#include "tests/unit/px_fake.h"

#define CI_TOKEN "tok-ci-8d41"

static const char t_policy[] =
    "{\"default\": \"deny\", \"rules\": ["
    "{\"name\": \"pub\", \"hosts\": [\"api.test\"], \"methods\": [\"GET\"], "
    "\"paths\": [\"/pub/**\"], \"action\": \"allow\"},"
    "{\"name\": \"ci-only\", \"hosts\": [\"ci.test\"], \"sandboxes\": [\"ci\"], "
    "\"action\": \"allow\"},"
    "{\"name\": \"block\", \"hosts\": [\"bad.test\"], \"action\": \"deny\"},"
    "{\"name\": \"rest\", \"hosts\": [\"*.open.test\"], \"action\": \"allow\"}"
    "]}";

/* The snapshot's sandboxes: dev by source (127.0.0.0/8), ci by token,
 * lab by 10.9.0.0/16 only. */
static void
t_init(struct pxf *f, int sandboxes)
{
    pxf_init(f, pxf_policy(t_policy), NULL);
    if (sandboxes) {
        unsigned char md[32];
        char          hex[65];

        assert_int_equal(EVP_Digest(CI_TOKEN, strlen(CI_TOKEN), md, NULL, EVP_sha256(), NULL), 1);
        for (int i = 0; i < 32; i++)
            snprintf(hex + 2 * i, 3, "%02x", md[i]);
        pxf_sandbox(f, "dev", "127.0.0.0/8", NULL);
        pxf_sandbox(f, "ci", NULL, hex);
        pxf_sandbox(f, "lab", "10.9.0.0/16", NULL);
    }
}

/* The client's address. */
static void
t_peer(struct pxf *f, const char *ip)
{
    struct sockaddr_in *sin = (struct sockaddr_in *)&f->c->peer;

    assert_int_equal(inet_pton(AF_INET, ip, &sin->sin_addr), 1);
}

/* "Proxy-Authorization: Basic base64(user:pass)\r\n" into buf. */
static const char *
t_auth(char *buf, size_t bufsz, const char *user, const char *pass)
{
    char          up[256];
    unsigned char b64[512];
    int           n = snprintf(up, sizeof(up), "%s:%s", user, pass);

    EVP_EncodeBlock(b64, (const unsigned char *)up, n);
    snprintf(buf, bufsz, "Proxy-Authorization: Basic %s\r\n", b64);
    return buf;
}

/* Parses "METHOD URL HTTP/1.1\r\n" + hdrs + "\r\n" to its head, then decides. */
static int
t_decide(struct pxf *f, const char *method, const char *url, const char *hdrs)
{
    char        req[2048];
    const char *at = req;
    size_t      len = (size_t)snprintf(req, sizeof(req), "%s %s HTTP/1.1\r\n%s\r\n", method, url,
                                  hdrs != NULL ? hdrs : "");

    assert_int_equal(pxf_req_exec(f->c, &at, &len), HPE_PAUSED);
    assert_int_equal(pxf_on_head(f->c), AL_OK);
    return px_decide(f->c);
}

static void
t_expect_refusal(const struct pxf *f, int status, const char *reason, int challenge)
{
    const struct px_refusal *r = &f->c->refusal;

    assert_int_equal(r->status, status);
    assert_non_null(r->reason);
    assert_string_equal(r->reason, reason);
    assert_int_equal(r->deny, status == 403 || status == 407);
    assert_int_equal(r->upstream, 0);
    if (challenge) {
        assert_non_null(r->extra);
        assert_string_equal(r->extra, "Proxy-Authenticate: Basic realm=\"airlock\"\r\n");
    } else {
        assert_null(r->extra);
    }
}

static void
test_allow(void **state)
{
    struct pxf      f;
    struct px_exch *x;

    (void)state;
    t_init(&f, 0);
    assert_int_equal(t_decide(&f, "GET", "http://api.test/pub/a/../b/./c?q=1&r=/../", NULL), AL_OK);
    x = f.c->x;
    assert_int_equal(x->decided, 1);
    assert_int_equal(x->decision.verdict, POL_ALLOW);
    assert_string_equal(x->decision.rule, "pub");
    assert_string_equal(x->decision.reason, "allowed_by_rule");
    assert_string_equal(x->sandbox, ""); /* no sandboxes: anonymous */
    /* What goes upstream is the path the policy saw, plus the query. */
    assert_non_null(x->fwd_path);
    assert_string_equal(x->fwd_path, "/pub/b/c?q=1&r=/../");
    assert_int_equal(x->fwd_path_len, strlen("/pub/b/c?q=1&r=/../"));
    assert_int_equal(pxf_request_head(f.c), AL_OK);
    pxf_expect_q(&f.c->up.out, "GET /pub/b/c?q=1&r=/../ HTTP/1.1\r\nHost: api.test\r\n\r\n");
    pxf_free(&f);
}

static void
test_deny(void **state)
{
    static const struct {
        const char *method, *url, *reason, *rule;
        int         status;
    } cases[] = {
        {"GET", "http://nowhere.test/", "host_not_allowed", "default", 403},
        {"GET", "http://bad.test/", "denied_by_rule", "block", 403},
        {"POST", "http://api.test/pub/x", "method_not_allowed", "default", 403},
        {"GET", "http://api.test/priv", "path_not_allowed", "default", 403},
        /* a path that escapes its rule's prefix */
        {"GET", "http://api.test/pub/../priv", "path_not_allowed", "default", 403},
        {"GET", "http://api.test/pub/%2e%2e/priv", "path_not_allowed", "default", 403},
        {"GET", "http://api.test/pub/a%2Fb", "encoded_slash", "pub", 400},
        /* a sandbox-only rule, anonymously */
        {"GET", "http://ci.test/", "sandbox_not_allowed", "default", 403},
    };

    (void)state;
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        struct pxf f;

        t_init(&f, 0);
        if (t_decide(&f, cases[k].method, cases[k].url, NULL) != AL_DECLINED)
            fail_msg("case %zu allowed", k);
        if (strcmp(f.c->refusal.reason, cases[k].reason) != 0 ||
            f.c->refusal.status != cases[k].status)
            fail_msg("case %zu: %d %s (%s), want %d %s", k, f.c->refusal.status,
                     f.c->refusal.reason, f.c->refusal.detail ? f.c->refusal.detail : "-",
                     cases[k].status, cases[k].reason);
        t_expect_refusal(&f, cases[k].status, cases[k].reason, 0);
        assert_int_equal(f.c->x->decided, 1);
        assert_int_equal(f.c->x->decision.verdict, POL_DENY);
        assert_non_null(f.c->refusal.detail);
        assert_string_equal(f.c->refusal.detail, cases[k].rule);
        pxf_free(&f);
    }
}

/* With sandboxes: who the client is decides the rule. */
static void
test_sandbox_by_token(void **state)
{
    struct pxf f;
    char       a[512];

    (void)state;
    t_init(&f, 1);
    t_peer(&f, "192.0.2.7");
    assert_int_equal(t_decide(&f, "GET", "http://ci.test/x", t_auth(a, sizeof(a), "ci", CI_TOKEN)),
                     AL_OK);
    assert_string_equal(f.c->x->sandbox, "ci");
    assert_string_equal(f.c->x->decision.rule, "ci-only");
    /* Proxy-Authorization never goes upstream. */
    assert_int_equal(pxf_request_head(f.c), AL_OK);
    pxf_expect_q(&f.c->up.out, "GET /x HTTP/1.1\r\nHost: ci.test\r\n\r\n");
    pxf_free(&f);

    /* dev (by its source address) may not use ci's rule. */
    t_init(&f, 1);
    assert_int_equal(t_decide(&f, "GET", "http://ci.test/x", NULL), AL_DECLINED);
    assert_string_equal(f.c->x->sandbox, "dev");
    t_expect_refusal(&f, 403, "sandbox_not_allowed", 0);
    pxf_free(&f);
}

static void
test_bad_credentials(void **state)
{
    static const struct {
        const char *peer, *user, *pass, *reason;
    } cases[] = {
        {"192.0.2.7", "ci", "wrong", "bad_credentials"},
        {"192.0.2.7", "nobody", CI_TOKEN, "unknown_sandbox"},
        {"192.0.2.7", "ci+", CI_TOKEN, "bad_credentials"}, /* an empty tag */
        {"192.0.2.7", "c i", CI_TOKEN, "bad_credentials"},
        /* a CIDR-only sandbox claimed from outside its CIDRs */
        {"192.0.2.7", "lab", "", "bad_credentials"},
        {"127.0.0.1", "lab+tool", "x", "bad_credentials"},
    };

    (void)state;
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        struct pxf f;
        char       a[512];

        t_init(&f, 1);
        t_peer(&f, cases[k].peer);
        if (t_decide(&f, "GET", "http://api.test/pub/",
                     t_auth(a, sizeof(a), cases[k].user, cases[k].pass)) != AL_DECLINED)
            fail_msg("case %zu let through", k);
        t_expect_refusal(&f, 407, cases[k].reason, 1);
        assert_int_equal(f.c->x->decided, 0); /* no policy was consulted */
        pxf_free(&f);
    }
}

static void
test_auth_shapes(void **state)
{
    struct pxf f;
    char       a[512], two[1100];

    (void)state;
    /* Not Basic. */
    t_init(&f, 1);
    assert_int_equal(
        t_decide(&f, "GET", "http://api.test/pub/", "Proxy-Authorization: Bearer x\r\n"),
        AL_DECLINED);
    t_expect_refusal(&f, 407, "bad_credentials", 1);
    pxf_free(&f);

    /* Twice, even if both are right. */
    t_init(&f, 1);
    t_auth(a, sizeof(a), "ci", CI_TOKEN);
    snprintf(two, sizeof(two), "%s%s", a, a);
    assert_int_equal(t_decide(&f, "GET", "http://api.test/pub/", two), AL_DECLINED);
    t_expect_refusal(&f, 407, "bad_credentials", 1);
    assert_string_equal(f.c->refusal.detail, "more than one Proxy-Authorization");
    pxf_free(&f);

    /* None, from an address no sandbox holds, while some sandbox uses
     * tokens: the challenge. */
    t_init(&f, 1);
    t_peer(&f, "192.0.2.7");
    assert_int_equal(t_decide(&f, "GET", "http://api.test/pub/", NULL), AL_DECLINED);
    t_expect_refusal(&f, 407, "auth_required", 1);
    pxf_free(&f);

    /* The same without any token sandbox: 403, nobody to authenticate as. */
    pxf_init(&f, pxf_policy(t_policy), NULL);
    pxf_sandbox(&f, "dev", "127.0.0.0/8", NULL);
    t_peer(&f, "192.0.2.7");
    assert_int_equal(t_decide(&f, "GET", "http://api.test/pub/", NULL), AL_DECLINED);
    t_expect_refusal(&f, 403, "unknown_sandbox", 0);
    pxf_free(&f);

    /* A CIDR-only sandbox from inside: its name (and tags) by Basic. */
    t_init(&f, 1);
    t_peer(&f, "10.9.3.4");
    assert_int_equal(
        t_decide(&f, "GET", "http://api.test/pub/", t_auth(a, sizeof(a), "lab+t1", "")), AL_OK);
    assert_string_equal(f.c->x->sandbox, "lab");
    assert_string_equal(f.c->x->tool_call, "t1");
    pxf_free(&f);
}

/* Tags: Proxy-Authorization first, then the operator's tag for the
 * sandbox, then the X-Airlock-* headers, each only filling what is empty;
 * the headers never go upstream. */
static void
test_tags(void **state)
{
    struct pxf f;
    char       a[512], hdrs[1024];

    (void)state;
    /* Credentials name all three: the headers are ignored. */
    t_init(&f, 1);
    snprintf(hdrs, sizeof(hdrs), "%sX-Airlock-Session: hs\r\nX-Airlock-Tool-Call: ht\r\n",
             t_auth(a, sizeof(a), "ci+s1+t1", CI_TOKEN));
    assert_int_equal(t_decide(&f, "GET", "http://api.test/pub/", hdrs), AL_OK);
    assert_string_equal(f.c->x->sandbox, "ci");
    assert_string_equal(f.c->x->session, "s1");
    assert_string_equal(f.c->x->tool_call, "t1");
    assert_int_equal(pxf_request_head(f.c), AL_OK);
    pxf_expect_q(&f.c->up.out, "GET /pub/ HTTP/1.1\r\nHost: api.test\r\n\r\n");
    pxf_free(&f);

    /* SANDBOX+TOOL_CALL: the session header fills the gap. */
    t_init(&f, 1);
    snprintf(hdrs, sizeof(hdrs), "%sX-Airlock-Session: hs\r\nX-Airlock-Tool-Call: ht\r\n",
             t_auth(a, sizeof(a), "ci+t1", CI_TOKEN));
    assert_int_equal(t_decide(&f, "GET", "http://api.test/pub/", hdrs), AL_OK);
    assert_string_equal(f.c->x->session, "hs");
    assert_string_equal(f.c->x->tool_call, "t1");
    pxf_free(&f);

    /* By source address: the operator's tag beats the header. */
    assert_int_equal(px_tags_set("dev", NULL, "op-tool"), AL_OK);
    t_init(&f, 1);
    assert_int_equal(t_decide(&f, "GET", "http://api.test/pub/",
                              "X-Airlock-Tool-Call: ht\r\nX-Airlock-Session: hs\r\n"),
                     AL_OK);
    assert_string_equal(f.c->x->sandbox, "dev");
    assert_string_equal(f.c->x->tool_call, "op-tool");
    assert_string_equal(f.c->x->session, "hs");
    pxf_free(&f);
    px_tags_free_all();

    /* The last header of a kind counts; a bad one is 400. */
    t_init(&f, 1);
    assert_int_equal(t_decide(&f, "GET", "http://api.test/pub/",
                              "X-Airlock-Session: a\r\nX-Airlock-Session: b\r\n"),
                     AL_OK);
    assert_string_equal(f.c->x->session, "b");
    pxf_free(&f);

    t_init(&f, 1);
    assert_int_equal(t_decide(&f, "GET", "http://api.test/pub/", "X-Airlock-Tool-Call: a b\r\n"),
                     AL_DECLINED);
    t_expect_refusal(&f, 400, "bad_tag", 0);
    assert_string_equal(f.c->refusal.detail, "x-airlock-tool-call");
    pxf_free(&f);
}

/* A placeholder in the destination's name: refused before the policy and
 * any lookup (it would leave in the DNS query). */
static void
test_placeholder_in_host(void **state)
{
    static const char secrets[] = "{\"secrets\": {\"k\": {\"from\": {\"value\": \"v-123456789\"}, "
                                  "\"hosts\": [\"api.test\"], \"placeholder\": \"PH-K-0000000\"}}}";
    struct pxf        f;

    (void)state;
    pxf_init(&f, pxf_policy(t_policy), pxf_secrets(secrets));
    assert_int_equal(t_decide(&f, "GET", "http://ph-k-0000000.open.test/", NULL), AL_DECLINED);
    t_expect_refusal(&f, 403, SEC_REFUSE_OUT_OF_SCOPE, 0);
    assert_string_equal(f.c->refusal.detail, "k");
    assert_string_equal(f.c->x->secret_refused, "k");
    assert_string_equal(f.c->x->decision.rule, "");
    pxf_free(&f);

    pxf_init(&f, pxf_policy(t_policy), pxf_secrets(secrets));
    assert_int_equal(t_decide(&f, "GET", "http://x.open.test/", NULL), AL_OK);
    assert_string_equal(f.c->x->decision.rule, "rest");
    pxf_free(&f);
}

/* CONNECT is decided as a tunnel: the scheme is "connect", no path. */
static void
test_connect(void **state)
{
    struct pxf f;

    (void)state;
    t_init(&f, 0);
    assert_int_equal(t_decide(&f, "CONNECT", "x.open.test:443", NULL), AL_OK);
    assert_int_equal(f.c->x->is_connect, 1);
    assert_string_equal(f.c->x->decision.rule, "rest");
    assert_null(f.c->x->fwd_path);
    pxf_free(&f);

    t_init(&f, 0);
    assert_int_equal(t_decide(&f, "CONNECT", "api.test:443", NULL), AL_DECLINED);
    assert_int_equal(f.c->refusal.status, 403);
    pxf_free(&f);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_allow),
        cmocka_unit_test(test_deny),
        cmocka_unit_test(test_sandbox_by_token),
        cmocka_unit_test(test_bad_credentials),
        cmocka_unit_test(test_auth_shapes),
        cmocka_unit_test(test_tags),
        cmocka_unit_test(test_placeholder_in_host),
        cmocka_unit_test(test_connect),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
