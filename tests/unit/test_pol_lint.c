/*
 * test_pol_lint.c - pol_lint: one policy per finding (shadowed by an exact,
 * a wildcard and a "*" rule, ports/methods/paths/sandboxes coverage, an
 * exact duplicate, methods/paths on a rule HTTPS reaches only as an
 * unintercepted CONNECT, an unknown sandbox, inject of an unknown secret and
 * of a secret whose scope misses the rule's hosts; warnings for host "*"
 * and missing ports) and clean policies that find nothing, each with the
 * exit code.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy/pol_int.h"

static const char *const lint_t_sandboxes[] = {"ci", "dev"};

static const char *const  lint_t_gh_hosts[] = {"api.gh.test", "*.ghusercontent.test", NULL};
static const char *const  lint_t_oa_hosts[] = {"api.oa.test:443/v1/", NULL};
static const char *const  lint_t_secret_names[] = {"gh", "oa"};
static const char *const *lint_t_secret_hosts[] = {lint_t_gh_hosts, lint_t_oa_hosts};
/* Pass the secrets: "gh" scoped to api.gh.test and *.ghusercontent.test,
 * "oa" to api.oa.test:443 under /v1/. */
static int lint_t_scopes;

static int
lint_t(const char *rules, char *out, size_t outsz, struct pol_lint_stats *st)
{
    char                 text[4096];
    struct al_errs       errs;
    struct pol_policy   *p;
    struct pol_lint_opts o;
    FILE                *f;
    int                  rc;

    snprintf(text, sizeof(text), "{\"default\": \"deny\", \"rules\": [%s]}", rules);
    al_errs_init(&errs);
    p = pol_load_text("l.json", text, strlen(text), NULL, 0, 0, &errs);
    if (p == NULL)
        fail_msg("load: %s", errs.text.data);
    f = fmemopen(out, outsz, "w");
    assert_non_null(f);
    memset(&o, 0, sizeof(o));
    o.policy_name = "l.json";
    o.known_sandboxes = lint_t_sandboxes;
    o.nknown = 2;
    if (lint_t_scopes) {
        o.secrets_given = 1;
        o.nsecrets = 2;
        o.secret_names = lint_t_secret_names;
        o.secret_hosts = lint_t_secret_hosts;
    }
    o.json = 1;
    o.out = f;
    rc = pol_lint(p, &o, st, &errs);
    fclose(f);
    pol_policy_unref(p);
    al_errs_free(&errs);
    return rc;
}

/* The rule named in a finding with this code, or assert. */
static void
lint_t_expect(const char *out, const char *code, const char *rule, const char *names)
{
    char  want[128];
    char *at;

    snprintf(want, sizeof(want), "\"code\":\"%s\",\"rule\":\"%s\"", code, rule);
    at = strstr(out, want);
    if (at == NULL)
        fail_msg("no %s finding for %s in %s", code, rule, out);
    if (names != NULL && strstr(at, names) == NULL)
        fail_msg("%s finding for %s does not name %s: %s", code, rule, names, out);
}

#define LINT_OUT 8192

static void
test_lint_shadowed(void **state)
{
    char                  out[LINT_OUT];
    struct pol_lint_stats st;

    (void)state;
    /* an exact host under a wildcard, ports/methods/paths all covered */
    assert_int_equal(lint_t("{\"name\": \"wide\", \"hosts\": [\"*.gh.test\"], \"ports\": [443],"
                            " \"intercept\": true},"
                            "{\"name\": \"narrow\", \"hosts\": [\"api.gh.test\"], \"ports\": "
                            "[443], \"methods\": [\"GET\"], \"paths\": [\"/repos/**\"], "
                            "\"intercept\": true}",
                            out, sizeof(out), &st),
                     3);
    lint_t_expect(out, "shadowed", "narrow", "\\\"wide\\\" (rules[0])");
    assert_int_equal(st.errors, 1);
    /* paths: "/a/" + "**" covers "/a/" + "*" + "/b"; sandboxes: [ci, dev] covers [ci] */
    assert_int_equal(lint_t("{\"name\": \"a\", \"hosts\": [\"x.test\"], \"ports\": [80],"
                            " \"paths\": [\"/a/**\"], \"sandboxes\": [\"ci\", \"dev\"]},"
                            "{\"name\": \"b\", \"hosts\": [\"x.test\"], \"ports\": [80],"
                            " \"paths\": [\"/a/*/b\"], \"sandboxes\": [\"ci\"], \"action\": "
                            "\"deny\"}",
                            out, sizeof(out), &st),
                     3);
    lint_t_expect(out, "shadowed", "b", "\\\"a\\\"");
    /* "*" covers everything */
    assert_int_equal(lint_t("{\"name\": \"all\", \"hosts\": [\"*\"], \"ports\": [80]},"
                            "{\"name\": \"one\", \"hosts\": [\"y.test\"], \"ports\": [80]}",
                            out, sizeof(out), &st),
                     3);
    lint_t_expect(out, "shadowed", "one", "\\\"all\\\"");
    /* not covered: another port, a narrower earlier path, a staged rule */
    assert_int_equal(lint_t("{\"name\": \"p\", \"hosts\": [\"x.test\"], \"ports\": [80]},"
                            "{\"name\": \"q\", \"hosts\": [\"x.test\"], \"ports\": [8080]},"
                            "{\"name\": \"r\", \"hosts\": [\"z.test\"], \"ports\": [80],"
                            " \"paths\": [\"/a/*\"]},"
                            "{\"name\": \"s\", \"hosts\": [\"z.test\"], \"ports\": [80],"
                            " \"paths\": [\"/a/**\"]},"
                            "{\"name\": \"t\", \"hosts\": [\"w.test\"], \"ports\": [80],"
                            " \"mode\": \"dry-run\"},"
                            "{\"name\": \"u\", \"hosts\": [\"w.test\"], \"ports\": [80]}",
                            out, sizeof(out), &st),
                     0);
    assert_int_equal(st.errors, 0);
}

static void
test_lint_duplicate(void **state)
{
    char                  out[LINT_OUT];
    struct pol_lint_stats st;

    (void)state;
    assert_int_equal(lint_t("{\"name\": \"one\", \"hosts\": [\"d.test\"], \"ports\": [443]},"
                            "{\"name\": \"two\", \"hosts\": [\"d.test\"], \"ports\": [443]}",
                            out, sizeof(out), &st),
                     3);
    lint_t_expect(out, "duplicate", "two", "\\\"one\\\" (rules[0])");
    assert_int_equal(st.errors, 1);
}

static void
test_lint_tls_unseen(void **state)
{
    char                  out[LINT_OUT];
    struct pol_lint_stats st;

    (void)state;
    /* methods, no intercept, no ports: HTTPS is only a CONNECT to it */
    assert_int_equal(lint_t("{\"name\": \"m\", \"hosts\": [\"m.test\"], \"methods\": [\"GET\"]}",
                            out, sizeof(out), &st),
                     3);
    lint_t_expect(out, "tls_unseen", "m", "CONNECT");
    /* paths on a deny rule at 443 */
    assert_int_equal(lint_t("{\"name\": \"d\", \"hosts\": [\"m.test\"], \"ports\": [443],"
                            " \"paths\": [\"/x/**\"], \"action\": \"deny\"}",
                            out, sizeof(out), &st),
                     3);
    lint_t_expect(out, "tls_unseen", "d", "not denied");
    /* fine: intercepting, port 80 only, or CONNECT listed */
    assert_int_equal(lint_t("{\"name\": \"i\", \"hosts\": [\"m.test\"], \"ports\": [443],"
                            " \"methods\": [\"GET\"], \"intercept\": true},"
                            "{\"name\": \"h\", \"hosts\": [\"n.test\"], \"ports\": [80],"
                            " \"methods\": [\"GET\"]},"
                            "{\"name\": \"c\", \"hosts\": [\"o.test\"], \"ports\": [443],"
                            " \"methods\": [\"CONNECT\"]}",
                            out, sizeof(out), &st),
                     0);
}

static void
test_lint_unknown_sandbox(void **state)
{
    char                  out[LINT_OUT];
    struct pol_lint_stats st;

    (void)state;
    assert_int_equal(lint_t("{\"name\": \"s\", \"hosts\": [\"s.test\"], \"ports\": [443],"
                            " \"sandboxes\": [\"ci\", \"prod\"]}",
                            out, sizeof(out), &st),
                     3);
    lint_t_expect(out, "unknown_sandbox", "s", "\\\"prod\\\"");
    assert_int_equal(st.errors, 1);
}

static void
test_lint_inject(void **state)
{
    char                  out[LINT_OUT];
    struct pol_lint_stats st;

    (void)state;
    lint_t_scopes = 1;
    assert_int_equal(lint_t("{\"name\": \"ok\", \"hosts\": [\"api.gh.test\", "
                            "\"*.ghusercontent.test\"], \"ports\": [443], \"inject\": [\"gh\"]},"
                            "{\"name\": \"oa\", \"hosts\": [\"api.oa.test\"], \"ports\": [443],"
                            " \"inject\": [\"oa\"]}",
                            out, sizeof(out), &st),
                     0);
    assert_int_equal(st.errors, 0);
    assert_int_equal(lint_t("{\"name\": \"wide\", \"hosts\": [\"api.gh.test\", \"*.gh.test\"],"
                            " \"ports\": [443], \"inject\": [\"gh\"]}",
                            out, sizeof(out), &st),
                     3);
    lint_t_expect(out, "inject_out_of_scope", "wide", "*.gh.test");
    assert_int_equal(lint_t("{\"name\": \"port\", \"hosts\": [\"api.oa.test\"], \"ports\": [8443],"
                            " \"inject\": [\"oa\"]}",
                            out, sizeof(out), &st),
                     3);
    lint_t_expect(out, "inject_out_of_scope", "port", "8443");
    assert_int_equal(lint_t("{\"name\": \"gone\", \"hosts\": [\"api.oa.test\"], \"ports\": [443],"
                            " \"inject\": [\"nope\"]}",
                            out, sizeof(out), &st),
                     3);
    lint_t_expect(out, "inject_unknown", "gone", "\\\"nope\\\"");
    lint_t_scopes = 0;
}

static void
test_lint_warnings(void **state)
{
    char                  out[LINT_OUT];
    struct pol_lint_stats st;

    (void)state;
    assert_int_equal(lint_t("{\"name\": \"star\", \"hosts\": [\"*\"], \"ports\": [443]},"
                            "{\"name\": \"noports\", \"hosts\": [\"np.test\"]},"
                            "{\"name\": \"denyall\", \"hosts\": [\"*\"], \"action\": \"deny\"}",
                            out, sizeof(out), &st),
                     0); /* warnings alone: exit 0 */
    lint_t_expect(out, "allow_any_host", "star", NULL);
    lint_t_expect(out, "allow_any_port", "noports", NULL);
    assert_int_equal(st.warnings, 2); /* a deny rule with "*" is fine */
    assert_int_equal(st.errors, 0);
    /* a clean policy: nothing at all */
    assert_int_equal(lint_t("{\"name\": \"gh\", \"hosts\": [\"api.gh.test\"], \"ports\": [443],"
                            " \"methods\": [\"GET\"], \"paths\": [\"/repos/**\"],"
                            " \"intercept\": true, \"inject\": [\"gh\"], \"sandboxes\": [\"ci\"]}",
                            out, sizeof(out), &st),
                     0);
    assert_int_equal(st.errors + st.warnings, 0);
    assert_non_null(strstr(out, "\"findings\":[]"));
}

static void
test_lint_secret_warnings(void **state)
{
    char                  out[LINT_OUT];
    struct pol_lint_stats st;

    (void)state;
    lint_t_scopes = 1;
    /* gh reached (no inject list: every scoped secret may be used), oa
     * reached by name; *.gh.test is wider than gh's api.gh.test */
    assert_int_equal(lint_t("{\"name\": \"ghw\", \"hosts\": [\"*.gh.test\"], \"ports\": [443]},"
                            "{\"name\": \"oa\", \"hosts\": [\"api.oa.test\"], \"ports\": [443],"
                            " \"inject\": [\"oa\"]}",
                            out, sizeof(out), &st),
                     0);
    lint_t_expect(out, "wildcard_wider", "ghw", "api.gh.test");
    assert_null(strstr(out, "secret_unreachable"));
    /* oa: only a rule that injects gh reaches its host; gh: no rule at all */
    assert_int_equal(lint_t("{\"name\": \"oa\", \"hosts\": [\"api.oa.test\"], \"ports\": [443],"
                            " \"inject\": [\"gh\"]}",
                            out, sizeof(out), &st),
                     3); /* gh out of scope there: an error too */
    assert_non_null(strstr(out, "\"code\":\"secret_unreachable\",\"message\":\"secret \\\"gh\\\""));
    assert_non_null(strstr(out, "\"code\":\"secret_unreachable\",\"message\":\"secret \\\"oa\\\""));
    /* exact scopes under exact rules: nothing to say */
    assert_int_equal(lint_t("{\"name\": \"gh\", \"hosts\": [\"api.gh.test\", "
                            "\"*.ghusercontent.test\"], \"ports\": [443], \"inject\": [\"gh\"]},"
                            "{\"name\": \"oa\", \"hosts\": [\"api.oa.test\"], \"ports\": [443]}",
                            out, sizeof(out), &st),
                     0);
    assert_int_equal(st.warnings + st.errors, 0);
    lint_t_scopes = 0;
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lint_shadowed),        cmocka_unit_test(test_lint_duplicate),
        cmocka_unit_test(test_lint_tls_unseen),      cmocka_unit_test(test_lint_unknown_sandbox),
        cmocka_unit_test(test_lint_inject),          cmocka_unit_test(test_lint_warnings),
        cmocka_unit_test(test_lint_secret_warnings),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
