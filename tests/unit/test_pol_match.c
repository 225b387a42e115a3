/*
 * test_pol_match.c - pol_decide: exact/suffix/star hosts, ports, methods,
 * sandboxes, path globs ('*', '**'), path normalisation (dot segments, %2e,
 * %2F), CONNECT handling, first-match order, default allow/deny, dry-run at
 * both levels, explanations; plus a micro benchmark: pol_decide over 10,000
 * exact-host rules must cost about what it costs over 100.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "policy/pol_int.h"

static struct pol_policy *
pol_t_load(const char *text, int dry)
{
    struct al_errs     errs;
    struct pol_policy *p;

    al_errs_init(&errs);
    p = pol_load_text("m.json", text, strlen(text), NULL, 0, dry, &errs);
    if (p == NULL)
        fail_msg("load: %s", errs.text.data);
    al_errs_free(&errs);
    return p;
}

/* Decides "METHOD host:port path" for sandbox sb (NULL ok). */
static void
pol_t_dec(const struct pol_policy *p, const char *sb, const char *method, const char *host,
          uint16_t port, const char *path, struct pol_decision *d)
{
    struct pol_request rq;

    memset(&rq, 0, sizeof(rq));
    rq.sandbox = sb;
    rq.method = method;
    rq.scheme = strcmp(method, "CONNECT") == 0 ? "connect" : port == 443 ? "https" : "http";
    rq.host = host;
    rq.host_is_ip = strspn(host, "0123456789.:abcdef") == strlen(host) && strchr(host, '.') == NULL
                        ? strchr(host, ':') != NULL
                        : strspn(host, "0123456789.") == strlen(host);
    rq.port = port;
    rq.path = path;
    rq.path_len = path ? strlen(path) : 0;
    rq.want_explain = 1;
    pol_decide(p, &rq, d);
}

static void
pol_t_expect(const struct pol_decision *d, enum pol_verdict v, const char *rule, const char *reason)
{
    if (d->verdict != v || strcmp(d->rule, rule) != 0 || strcmp(d->reason, reason) != 0)
        fail_msg("got %s/%s/%s want %s/%s/%s (%s)", pol_verdict_name(d->verdict), d->rule,
                 d->reason, pol_verdict_name(v), rule, reason, d->explain);
}

static const char pol_t_policy[] =
    "{\"rules\": [\n"
    " {\"name\": \"github\", \"hosts\": [\"api.github.com\", \"*.githubusercontent.com\"],\n"
    "  \"ports\": [443], \"methods\": [\"GET\", \"POST\"], \"paths\": [\"/repos/**\"],\n"
    "  \"sandboxes\": [\"ci\", \"dev\"], \"action\": \"allow\", \"intercept\": true,\n"
    "  \"inject\": [\"github_token\"]},\n"
    " {\"name\": \"pypi\", \"hosts\": [\"pypi.org\", \"files.pythonhosted.org\"]},\n"
    " {\"name\": \"stage-block-uploads\", \"hosts\": [\"*\"], \"methods\": [\"PUT\"],\n"
    "  \"action\": \"deny\", \"mode\": \"dry-run\"},\n"
    " {\"name\": \"deny-evil\", \"hosts\": [\"*.evil.example\"], \"action\": \"deny\"},\n"
    " {\"name\": \"wild\", \"hosts\": [\"*.example.org\"], \"methods\": [\"GET\"],\n"
    "  \"paths\": [\"/a/*/c\", \"/files/*.txt\", \"/\"]},\n"
    " {\"name\": \"slash\", \"hosts\": [\"enc.example.net\"], \"paths\": [\"/x/**\"],\n"
    "  \"allow_encoded_slash\": true},\n"
    " {\"name\": \"tunnel-only\", \"hosts\": [\"ssh.example.net\"], \"ports\": [22],\n"
    "  \"methods\": [\"CONNECT\"]},\n"
    " {\"name\": \"opaque-paths\", \"hosts\": [\"opaque.example.net\"], \"paths\": [\"/v1/**\"]},\n"
    " {\"name\": \"ip\", \"hosts\": [\"127.0.0.1\", \"[::1]\"], \"cidrs\": [\"127.0.0.1/32\"]}\n"
    "]}\n";

static void
test_hosts_ports_methods_sandboxes(void **state)
{
    struct pol_policy  *p = pol_t_load(pol_t_policy, 0);
    struct pol_decision d;

    (void)state;
    pol_t_dec(p, "ci", "GET", "api.github.com", 443, "/repos/a/b?x=1", &d);
    pol_t_expect(&d, POL_ALLOW, "github", "allowed_by_rule");
    assert_true(d.intercept);
    assert_int_equal(d.ninject, 1);
    assert_string_equal(d.inject[0], "github_token");
    assert_non_null(d.rule_ref);
    assert_null(d.staged_rule);
    /* suffix: one or more labels, never the bare domain */
    pol_t_dec(p, "dev", "POST", "raw.githubusercontent.com", 443, "/repos/x", &d);
    pol_t_expect(&d, POL_ALLOW, "github", "allowed_by_rule");
    pol_t_dec(p, "dev", "GET", "a.b.c.githubusercontent.com", 443, "/repos", &d);
    pol_t_expect(&d, POL_ALLOW, "github", "allowed_by_rule");
    pol_t_dec(p, "dev", "GET", "githubusercontent.com", 443, "/repos/x", &d);
    pol_t_expect(&d, POL_DENY, "default", "host_not_allowed");
    pol_t_dec(p, "dev", "GET", "evilgithubusercontent.com", 443, "/repos/x", &d);
    pol_t_expect(&d, POL_DENY, "default", "host_not_allowed");
    pol_t_dec(p, "dev", "GET", "api.github.com.evil.test", 443, "/repos/x", &d);
    pol_t_expect(&d, POL_DENY, "default", "host_not_allowed");
    /* each dimension's own reason */
    pol_t_dec(p, "ci", "GET", "api.github.com", 80, "/repos/a", &d);
    pol_t_expect(&d, POL_DENY, "default", "port_not_allowed");
    pol_t_dec(p, "ci", "DELETE", "api.github.com", 443, "/repos/a", &d);
    pol_t_expect(&d, POL_DENY, "default", "method_not_allowed");
    pol_t_dec(p, "ci", "GET", "api.github.com", 443, "/user", &d);
    pol_t_expect(&d, POL_DENY, "default", "path_not_allowed");
    pol_t_dec(p, "other", "GET", "api.github.com", 443, "/repos/a", &d);
    pol_t_expect(&d, POL_DENY, "default", "sandbox_not_allowed");
    pol_t_dec(p, NULL, "GET", "api.github.com", 443, "/repos/a", &d);
    pol_t_expect(&d, POL_DENY, "default", "sandbox_not_allowed");
    assert_int_equal(d.ninject, 0);
    assert_false(d.intercept);
    assert_non_null(strstr(d.explain, "github: sandbox_not_allowed"));
    /* rules without limits: any port, method, path, sandbox */
    pol_t_dec(p, NULL, "DELETE", "pypi.org", 8443, "/anything/at/all", &d);
    pol_t_expect(&d, POL_ALLOW, "pypi", "allowed_by_rule");
    pol_t_dec(p, NULL, "GET", "x.evil.example", 443, "/", &d);
    pol_t_expect(&d, POL_DENY, "deny-evil", "denied_by_rule");
    /* IP literal hosts: exact only, never via wildcards */
    pol_t_dec(p, NULL, "GET", "127.0.0.1", 80, "/", &d);
    pol_t_expect(&d, POL_ALLOW, "ip", "allowed_by_rule");
    pol_t_dec(p, NULL, "GET", "::1", 80, "/", &d);
    pol_t_expect(&d, POL_ALLOW, "ip", "allowed_by_rule");
    pol_t_dec(p, NULL, "GET", "127.0.0.2", 80, "/", &d);
    pol_t_expect(&d, POL_DENY, "default", "host_not_allowed");
    pol_policy_unref(p);
}

static void
test_paths_and_normalisation(void **state)
{
    struct pol_policy  *p = pol_t_load(pol_t_policy, 0);
    struct pol_decision d;

    (void)state;
    pol_t_dec(p, NULL, "GET", "www.example.org", 80, "/a/b/c", &d);
    pol_t_expect(&d, POL_ALLOW, "wild", "allowed_by_rule");
    pol_t_dec(p, NULL, "GET", "www.example.org", 80, "/a//c", &d); /* '*' matches empty */
    pol_t_expect(&d, POL_ALLOW, "wild", "allowed_by_rule");
    pol_t_dec(p, NULL, "GET", "www.example.org", 80, "/a/b/d/c", &d); /* '*' stays in segment */
    pol_t_expect(&d, POL_DENY, "default", "path_not_allowed");
    pol_t_dec(p, NULL, "GET", "www.example.org", 80, "/files/notes.txt", &d);
    pol_t_expect(&d, POL_ALLOW, "wild", "allowed_by_rule");
    pol_t_dec(p, NULL, "GET", "www.example.org", 80, "/files/sub/notes.txt", &d);
    pol_t_expect(&d, POL_DENY, "default", "path_not_allowed");
    pol_t_dec(p, NULL, "GET", "www.example.org", 80, "/files/notes.txt.exe", &d);
    pol_t_expect(&d, POL_DENY, "default", "path_not_allowed");
    pol_t_dec(p, NULL, "GET", "www.example.org", 80, "/?q=/a/b/c", &d); /* query ignored */
    pol_t_expect(&d, POL_ALLOW, "wild", "allowed_by_rule");
    /* dot segments and %2e resolve before matching */
    pol_t_dec(p, NULL, "GET", "www.example.org", 80, "/a/b/../b/c", &d);
    pol_t_expect(&d, POL_ALLOW, "wild", "allowed_by_rule");
    pol_t_dec(p, NULL, "GET", "www.example.org", 80, "/files/../a/x/c", &d);
    pol_t_expect(&d, POL_ALLOW, "wild", "allowed_by_rule");
    pol_t_dec(p, NULL, "GET", "www.example.org", 80, "/files/%2e%2E/a/x/./c", &d);
    pol_t_expect(&d, POL_ALLOW, "wild", "allowed_by_rule");
    pol_t_dec(p, "ci", "GET", "api.github.com", 443, "/repos/../user", &d);
    pol_t_expect(&d, POL_DENY, "default", "path_not_allowed");
    pol_t_dec(p, "ci", "GET", "api.github.com", 443, "/repos/%2e%2e/user", &d);
    pol_t_expect(&d, POL_DENY, "default", "path_not_allowed");
    pol_t_dec(p, "ci", "GET", "api.github.com", 443, "/x/../repos/ok", &d);
    pol_t_expect(&d, POL_ALLOW, "github", "allowed_by_rule");
    /* '**' spans segments and matches zero of them */
    pol_t_dec(p, "ci", "GET", "api.github.com", 443, "/repos", &d);
    pol_t_expect(&d, POL_ALLOW, "github", "allowed_by_rule");
    pol_t_dec(p, "ci", "GET", "api.github.com", 443, "/repos/", &d);
    pol_t_expect(&d, POL_ALLOW, "github", "allowed_by_rule");
    pol_t_dec(p, "ci", "GET", "api.github.com", 443, "/reposx", &d);
    pol_t_expect(&d, POL_DENY, "default", "path_not_allowed");
    /* encoded slash: hard deny unless the deciding rule opts in */
    pol_t_dec(p, NULL, "GET", "www.example.org", 80, "/a/b%2Fc/c", &d);
    pol_t_expect(&d, POL_DENY, "wild", "encoded_slash");
    pol_t_dec(p, NULL, "GET", "www.example.org", 80, "/a/b%5cc/c", &d);
    pol_t_expect(&d, POL_DENY, "wild", "encoded_slash");
    pol_t_dec(p, NULL, "GET", "enc.example.net", 80, "/x/a%2fb", &d);
    pol_t_expect(&d, POL_ALLOW, "slash", "allowed_by_rule");
    /* malformed paths */
    pol_t_dec(p, NULL, "GET", "pypi.org", 80, "/a/%zz", &d);
    pol_t_expect(&d, POL_DENY, "default", "bad_path");
    pol_t_dec(p, NULL, "GET", "pypi.org", 80, "/a/%00", &d);
    pol_t_expect(&d, POL_DENY, "default", "bad_path");
    pol_t_dec(p, NULL, "GET", "pypi.org", 80, "relative", &d);
    pol_t_expect(&d, POL_DENY, "default", "bad_path");
    pol_t_dec(p, NULL, "GET", "pypi.org", 80, "/a\\..\\b", &d);
    pol_t_expect(&d, POL_DENY, "default", "bad_path");
    pol_policy_unref(p);
}

static void
pol_t_norm(const char *in, int rc, const char *want, int enc)
{
    char   out[256];
    size_t n = 0;
    int    e = -1;
    int    got = pol_path_normalize(in, strlen(in), out, sizeof(out), &n, &e);

    if (got != rc)
        fail_msg("%s: rc %d", in, got);
    if (rc == AL_OK && (strcmp(out, want) != 0 || n != strlen(want) || e != enc))
        fail_msg("%s: got %s enc %d", in, out, e);
}

static void
test_path_normalize(void **state)
{
    char   small[4];
    size_t n;
    int    e;

    (void)state;
    pol_t_norm("/", AL_OK, "/", 0);
    pol_t_norm("/a/b/../c", AL_OK, "/a/c", 0);
    pol_t_norm("/a/./b/.", AL_OK, "/a/b/", 0);
    pol_t_norm("/a/b/..", AL_OK, "/a/", 0);
    pol_t_norm("/..", AL_OK, "/", 0);
    pol_t_norm("/../../etc/passwd", AL_OK, "/etc/passwd", 0);
    pol_t_norm("/%2e%2e/%2E%2e/etc", AL_OK, "/etc", 0);
    pol_t_norm("/a/.%2e/b", AL_OK, "/b", 0);
    pol_t_norm("/a/%2e/b", AL_OK, "/a/b", 0);
    pol_t_norm("//evil", AL_OK, "//evil", 0); /* nothing else collapses */
    pol_t_norm("/a//b/", AL_OK, "/a//b/", 0);
    pol_t_norm("/%41%2F", AL_OK, "/%41%2F", 1); /* other escapes stay */
    pol_t_norm("/a%5Cb", AL_OK, "/a%5Cb", 1);
    pol_t_norm("/a?b/../c", AL_OK, "/a", 0);
    pol_t_norm("/a/..?x", AL_OK, "/", 0);
    pol_t_norm("/...", AL_OK, "/...", 0);
    pol_t_norm("/..a/b", AL_OK, "/..a/b", 0);
    pol_t_norm("", AL_ERROR, NULL, 0);
    pol_t_norm("?x", AL_ERROR, NULL, 0);
    pol_t_norm("a/b", AL_ERROR, NULL, 0);
    pol_t_norm("/a%2", AL_ERROR, NULL, 0);
    pol_t_norm("/a%", AL_ERROR, NULL, 0);
    pol_t_norm("/a%g0", AL_ERROR, NULL, 0);
    pol_t_norm("/a%00", AL_ERROR, NULL, 0);
    pol_t_norm("/a b", AL_ERROR, NULL, 0);
    pol_t_norm("/a\tb", AL_ERROR, NULL, 0);
    pol_t_norm("/a#b", AL_ERROR, NULL, 0);
    pol_t_norm("/a\\b", AL_ERROR, NULL, 0);
    assert_int_equal(pol_path_normalize("/abcd", 5, small, sizeof(small), &n, &e), AL_ERROR);
}

static void
test_connect(void **state)
{
    struct pol_policy  *p = pol_t_load(pol_t_policy, 0);
    struct pol_decision d;

    (void)state;
    /* method/path limits are checked on the intercepted inner requests */
    pol_t_dec(p, "ci", "CONNECT", "api.github.com", 443, NULL, &d);
    pol_t_expect(&d, POL_ALLOW, "github", "allowed_by_rule");
    assert_true(d.intercept);
    pol_t_dec(p, "ci", "CONNECT", "api.github.com", 22, NULL, &d);
    pol_t_expect(&d, POL_DENY, "default", "port_not_allowed");
    /* an opaque tunnel cannot honour path limits */
    pol_t_dec(p, NULL, "CONNECT", "opaque.example.net", 443, NULL, &d);
    pol_t_expect(&d, POL_DENY, "default", "path_not_allowed");
    pol_t_dec(p, NULL, "GET", "opaque.example.net", 80, "/v1/x", &d);
    pol_t_expect(&d, POL_ALLOW, "opaque-paths", "allowed_by_rule");
    /* methods: ["CONNECT"] */
    pol_t_dec(p, NULL, "CONNECT", "ssh.example.net", 22, NULL, &d);
    pol_t_expect(&d, POL_ALLOW, "tunnel-only", "allowed_by_rule");
    pol_t_dec(p, NULL, "GET", "ssh.example.net", 22, "/", &d);
    pol_t_expect(&d, POL_DENY, "default", "method_not_allowed");
    /* a deny rule limited to a method does not deny a whole tunnel */
    pol_t_dec(p, NULL, "CONNECT", "pypi.org", 443, NULL, &d);
    pol_t_expect(&d, POL_ALLOW, "pypi", "allowed_by_rule");
    assert_null(d.staged_rule);
    pol_policy_unref(p);
}

static void
test_first_match_and_default(void **state)
{
    struct pol_policy *p = pol_t_load(
        "{\"rules\": [{\"name\": \"no-a\", \"hosts\": [\"a.example.com\"], \"action\": \"deny\"},\n"
        "  {\"name\": \"all\", \"hosts\": [\"*.example.com\"]},\n"
        "  {\"name\": \"later\", \"hosts\": [\"b.example.com\"], \"action\": \"deny\"}]}",
        0);
    struct pol_policy *q =
        pol_t_load("{\"default\": \"allow\", \"rules\": [\n"
                   "  {\"name\": \"all\", \"hosts\": [\"*.example.com\"], \"intercept\": true},\n"
                   "  {\"name\": \"no-a\", \"hosts\": [\"a.example.com\"], \"action\": \"deny\"},\n"
                   "  {\"name\": \"no-x\", \"hosts\": [\"x.test\"], \"action\": \"deny\"}]}",
                   0);
    struct pol_decision d;

    (void)state;
    pol_t_dec(p, NULL, "GET", "a.example.com", 443, "/", &d);
    pol_t_expect(&d, POL_DENY, "no-a", "denied_by_rule");
    pol_t_dec(p, NULL, "GET", "b.example.com", 443, "/", &d);
    pol_t_expect(&d, POL_ALLOW, "all", "allowed_by_rule");
    pol_t_dec(p, NULL, "GET", "c.test", 443, "/", &d);
    pol_t_expect(&d, POL_DENY, "default", "host_not_allowed");
    pol_t_dec(q, NULL, "GET", "a.example.com", 443, "/", &d);
    pol_t_expect(&d, POL_ALLOW, "all", "allowed_by_rule");
    assert_true(d.intercept);
    pol_t_dec(q, NULL, "GET", "x.test", 443, "/", &d);
    pol_t_expect(&d, POL_DENY, "no-x", "denied_by_rule");
    pol_t_dec(q, NULL, "GET", "elsewhere.test", 443, "/", &d);
    pol_t_expect(&d, POL_ALLOW, "default", "default_allow");
    assert_null(d.rule_ref);
    assert_false(d.intercept);
    pol_t_dec(q, NULL, "GET", "elsewhere.test", 443, "/a%2Fb", &d);
    pol_t_expect(&d, POL_DENY, "default", "encoded_slash");
    pol_policy_unref(p);
    pol_policy_unref(q);
}

static void
test_dry_run(void **state)
{
    static const char staged[] =
        "{\"rules\": [\n"
        " {\"name\": \"stage-deny\", \"hosts\": [\"*\"], \"methods\": [\"PUT\"],\n"
        "  \"action\": \"deny\", \"mode\": \"dry-run\"},\n"
        " {\"name\": \"stage-allow\", \"hosts\": [\"new.test\"], \"mode\": \"dry-run\"},\n"
        " {\"name\": \"ok\", \"hosts\": [\"ok.test\"], \"intercept\": true, \"inject\": [\"t\"]},\n"
        " {\"name\": \"bad\", \"hosts\": [\"bad.test\"], \"action\": \"deny\"}]}";
    struct pol_policy  *p = pol_t_load(staged, 0);
    struct pol_policy  *top = pol_t_load("{\"mode\": \"dry-run\", \"rules\": [\n"
                                          " {\"name\": \"bad\", \"hosts\": [\"bad.test\"], "
                                          "\"action\": \"deny\"}]}",
                                         0);
    struct pol_policy  *forced = pol_t_load(staged, 1);
    struct pol_decision d;

    (void)state;
    /* a staged deny rule: recorded would_deny, evaluation goes on */
    pol_t_dec(p, NULL, "PUT", "ok.test", 443, "/x", &d);
    pol_t_expect(&d, POL_WOULD_DENY, "ok", "allowed_by_rule");
    assert_string_equal(d.staged_rule, "stage-deny");
    assert_true(d.intercept);
    assert_int_equal(d.ninject, 1);
    pol_t_dec(p, NULL, "GET", "ok.test", 443, "/x", &d);
    pol_t_expect(&d, POL_ALLOW, "ok", "allowed_by_rule");
    assert_null(d.staged_rule);
    pol_t_dec(p, NULL, "PUT", "bad.test", 443, "/x", &d);
    pol_t_expect(&d, POL_DENY, "bad", "denied_by_rule");
    assert_string_equal(d.staged_rule, "stage-deny");
    /* a staged allow rule changes nothing, but is recorded */
    pol_t_dec(p, NULL, "GET", "new.test", 443, "/", &d);
    pol_t_expect(&d, POL_DENY, "default", "host_not_allowed");
    assert_string_equal(d.staged_rule, "stage-allow");
    /* top level: every policy deny is a would_deny */
    pol_t_dec(top, NULL, "GET", "bad.test", 443, "/", &d);
    pol_t_expect(&d, POL_WOULD_DENY, "bad", "denied_by_rule");
    assert_int_equal(d.ninject, 0);
    pol_t_dec(top, NULL, "GET", "unknown.test", 443, "/", &d);
    pol_t_expect(&d, POL_WOULD_DENY, "default", "host_not_allowed");
    /* ...never bad_path nor encoded_slash */
    pol_t_dec(top, NULL, "GET", "unknown.test", 443, "/%zz", &d);
    pol_t_expect(&d, POL_DENY, "default", "bad_path");
    pol_t_dec(forced, NULL, "GET", "ok.test", 443, "/a%2fb", &d);
    pol_t_expect(&d, POL_DENY, "ok", "encoded_slash");
    /* force_dry_run acts as top-level dry-run */
    pol_t_dec(forced, NULL, "GET", "bad.test", 443, "/", &d);
    pol_t_expect(&d, POL_WOULD_DENY, "bad", "denied_by_rule");
    pol_policy_unref(p);
    pol_policy_unref(top);
    pol_policy_unref(forced);
}

static void
test_scratch_and_explain(void **state)
{
    struct pol_policy  *p = pol_t_load(pol_t_policy, 0);
    struct pol_decision d;
    struct pol_request  rq;
    char               *longpath = malloc(20000), *scratch = malloc(20001);

    (void)state;
    memset(longpath, 'a', 20000);
    memcpy(longpath, "/repos/", 7);
    memset(&rq, 0, sizeof(rq));
    rq.sandbox = "ci";
    rq.scheme = "https";
    rq.host = "api.github.com";
    rq.port = 443;
    rq.method = "GET";
    rq.path = longpath;
    rq.path_len = 20000;
    pol_decide(p, &rq, &d); /* longer than the stack buffer */
    pol_t_expect(&d, POL_DENY, "default", "bad_path");
    assert_string_equal(d.explain, ""); /* not requested */
    rq.scratch = scratch;
    rq.scratch_len = 20001;
    pol_decide(p, &rq, &d);
    pol_t_expect(&d, POL_ALLOW, "github", "allowed_by_rule");
    rq.want_explain = 1;
    rq.port = 8443;
    pol_decide(p, &rq, &d);
    assert_string_equal(d.explain,
                        "github: port_not_allowed; stage-block-uploads: method_not_allowed; "
                        "-> deny by default (port_not_allowed)");
    free(longpath);
    free(scratch);
    pol_policy_unref(p);
}

/* ---- micro benchmark ------------------------------------------------------- */

static double
pol_t_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static struct pol_policy *
pol_t_big(int n, double *load_ms)
{
    struct al_dbuf     b;
    struct al_errs     errs;
    struct pol_policy *p;
    double             t0;

    al_dbuf_init(&b, 64u << 20);
    al_dbuf_adds(&b, "{\"rules\": [\n");
    for (int i = 0; i < n; i++) {
        if (i % 10 == 9)
            al_dbuf_addf(&b, "{\"name\": \"w%d\", \"hosts\": [\"*.w%d.example.com\"]},\n", i, i);
        else
            al_dbuf_addf(&b,
                         "{\"name\": \"r%d\", \"hosts\": [\"h%d.example.com\"], "
                         "\"ports\": [443], \"methods\": [\"GET\"], \"paths\": [\"/v%d/**\"]},\n",
                         i, i, i);
    }
    al_dbuf_adds(&b, "{\"name\": \"last\", \"hosts\": [\"*\"], \"action\": \"deny\"}]}\n");
    al_errs_init(&errs);
    t0 = pol_t_now();
    p = pol_load_text("big.json", b.data, b.len, NULL, 0, 0, &errs);
    *load_ms = (pol_t_now() - t0) / 1e6;
    if (p == NULL)
        fail_msg("%s", errs.text.data);
    al_errs_free(&errs);
    al_dbuf_free(&b);
    return p;
}

static double
pol_t_bench(const struct pol_policy *p, int n, int iters)
{
    char                hosts[64][64], paths[64][32];
    struct pol_request  rq;
    struct pol_decision d;
    double              t0;
    int                 allowed = 0;

    for (int i = 0; i < 64; i++) {
        int r = (i * 7919) % n;

        if (r % 10 == 9)
            snprintf(hosts[i], sizeof(hosts[i]), "a.b.w%d.example.com", r);
        else
            snprintf(hosts[i], sizeof(hosts[i]), "h%d.example.com", r);
        snprintf(paths[i], sizeof(paths[i]), "/v%d/x/y", r);
    }
    memset(&rq, 0, sizeof(rq));
    rq.scheme = "https";
    rq.port = 443;
    rq.method = "GET";
    t0 = pol_t_now();
    for (int i = 0; i < iters; i++) {
        rq.host = hosts[i & 63];
        rq.path = paths[i & 63];
        rq.path_len = strlen(rq.path);
        pol_decide(p, &rq, &d);
        allowed += d.verdict == POL_ALLOW;
    }
    assert_int_equal(allowed, iters);
    return (pol_t_now() - t0) / iters;
}

static void
test_bench_decide_scales(void **state)
{
    double             l_small, l_big, ns_small, ns_big;
    struct pol_policy *small = pol_t_big(100, &l_small);
    struct pol_policy *big = pol_t_big(10000, &l_big);

    (void)state;
    ns_small = pol_t_bench(small, 100, 200000);
    ns_big = pol_t_bench(big, 10000, 200000);
    printf("[ BENCH    ] pol_decide: %.0f ns/decision with 101 rules, %.0f ns/decision with "
           "10,001 rules (90%% exact, 10%% wildcard, path globs); load+compile %.1f ms / %.1f ms\n",
           ns_small, ns_big, l_small, l_big);
    /* O(1)-ish: 100x the rules may not cost anywhere near 100x */
    assert_true(ns_big < ns_small * 4 + 200);
    pol_policy_unref(small);
    pol_policy_unref(big);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hosts_ports_methods_sandboxes),
        cmocka_unit_test(test_paths_and_normalisation),
        cmocka_unit_test(test_path_normalize),
        cmocka_unit_test(test_connect),
        cmocka_unit_test(test_first_match_and_default),
        cmocka_unit_test(test_dry_run),
        cmocka_unit_test(test_scratch_and_explain),
        cmocka_unit_test(test_bench_decide_scales),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
