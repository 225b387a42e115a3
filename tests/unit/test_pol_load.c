/*
 * test_pol_load.c - policy.json validation: host pattern table, exact
 * file:line:col + JSON path messages, every error reported in one pass,
 * type errors, warnings (shadowed rules, unknown sandboxes), loading from a
 * file, refcounting, allocation failures.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "policy/pol_int.h"

struct pol_t_host {
    const char           *in;
    int                   ok;
    enum pol_hostpat_kind kind;
    const char           *norm;
};

static void
test_host_patterns(void **state)
{
    static const struct pol_t_host v[] = {
        {"api.github.com", 1, POL_HP_EXACT, "api.github.com"},
        {"API.GitHub.COM.", 1, POL_HP_EXACT, "api.github.com"},
        {"*.githubusercontent.com", 1, POL_HP_SUFFIX, "githubusercontent.com"},
        {"*.Example.COM.", 1, POL_HP_SUFFIX, "example.com"},
        {"*.co.uk", 1, POL_HP_SUFFIX, "co.uk"},
        {"*", 1, POL_HP_ANY, "*"},
        {"localhost", 1, POL_HP_EXACT, "localhost"},
        {"a_b.example.com", 1, POL_HP_EXACT, "a_b.example.com"},
        {"\xf0\x9f\x94\x90.example.com", 1, POL_HP_EXACT, "xn--jv8h.example.com"},
        {"B\xc3\xbc"
         "cher.de",
         1, POL_HP_EXACT, "xn--bcher-kva.de"},
        {"*.b\xc3\xbc"
         "cher.de",
         1, POL_HP_SUFFIX, "xn--bcher-kva.de"},
        {"xn--bcher-kva.de", 1, POL_HP_EXACT, "xn--bcher-kva.de"},
        {"127.0.0.1", 1, POL_HP_EXACT, "127.0.0.1"},
        {"127.1", 1, POL_HP_EXACT, "127.0.0.1"},
        {"2130706433", 1, POL_HP_EXACT, "127.0.0.1"},
        {"0x7f.1", 1, POL_HP_EXACT, "127.0.0.1"},
        {"[::1]", 1, POL_HP_EXACT, "::1"},
        {"2001:DB8:0::1", 1, POL_HP_EXACT, "2001:db8::1"},
        {"[::ffff:169.254.169.254]", 1, POL_HP_EXACT, "::ffff:169.254.169.254"},
        {"", 0, 0, NULL},
        {"*.com", 0, 0, NULL},
        {"*.com.", 0, 0, NULL},
        {"*.", 0, 0, NULL},
        {"*.*.example.com", 0, 0, NULL},
        {"**.example.com", 0, 0, NULL},
        {"a.*.example.com", 0, 0, NULL},
        {"*foo.example.com", 0, 0, NULL},
        {"foo*.example.com", 0, 0, NULL},
        {"example.*", 0, 0, NULL},
        {"a..example.com", 0, 0, NULL},
        {".example.com", 0, 0, NULL},
        {"example.com..", 0, 0, NULL},
        {"-a.example.com", 0, 0, NULL},
        {"a-.example.com", 0, 0, NULL},
        {"exa mple.com", 0, 0, NULL},
        {"ex@mple.com", 0, 0, NULL},
        {"xn--zz.example.com", 0, 0, NULL},
        {"host.123", 0, 0, NULL},
        {"*.1.2.3", 0, 0, NULL},
        {"*.127.0.0.1", 0, 0, NULL},
        {"example.com:8080", 0, 0, NULL},
        {"[::1", 0, 0, NULL},
        {"fe80::1%eth0", 0, 0, NULL},
        {"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.com", 0, 0, NULL},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        struct pol_hostpat hp;
        const char        *why = NULL;
        int                rc = pol_hostpat_parse(v[i].in, &hp, &why);

        if ((rc == AL_OK) != v[i].ok)
            fail_msg("\"%s\": rc %d (%s)", v[i].in, rc, why ? why : "");
        if (rc == AL_OK) {
            if (hp.kind != v[i].kind || strcmp(hp.name, v[i].norm) != 0)
                fail_msg("\"%s\": kind %d name %s", v[i].in, hp.kind, hp.name);
            al_free(hp.name);
        } else {
            assert_non_null(why);
        }
    }
    {
        /* 254-byte name */
        char               big[300];
        struct pol_hostpat hp;
        const char        *why = NULL;

        memset(big, 0, sizeof(big));
        for (int i = 0; i < 4; i++)
            memcpy(big + i * 63,
                   i ? ".aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                     : "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                   63);
        strcat(big, ".com");
        assert_int_equal(pol_hostpat_parse(big, &hp, &why), AL_ERROR);
    }
}

static struct pol_policy *
pol_t_load(const char *text, struct al_errs *errs)
{
    return pol_load_text("p.json", text, strlen(text), NULL, 0, 0, errs);
}

static void
pol_t_has(const struct al_errs *e, const char *needle)
{
    if (e->text.data == NULL || strstr(e->text.data, needle) == NULL) {
        fprintf(stderr, "%s", e->text.data ? e->text.data : "(none)\n");
        fail_msg("missing \"%s\"", needle);
    }
}

static void
test_errors_file_line_col_all_reported(void **state)
{
    static const char text[] =
        "{\n"
        "  \"mode\": \"enforce\",\n"
        "  \"rules\": [\n"
        "    {\"name\": \"a\", \"hosts\": [\"*.com\"]},\n"
        "    {\"name\": \"b\", \"hosts\": [\"ok.example.com\"], \"bogus\": 1},\n"
        "    {\"name\": \"a\", \"hosts\": [\"x*y.example.com\"], \"ports\": [0]}\n"
        "  ]\n"
        "}\n";
    struct al_errs     errs;
    struct pol_policy *p;

    (void)state;
    al_errs_init(&errs);
    p = pol_t_load(text, &errs);
    assert_null(p);
    pol_t_has(&errs, "p.json:4:29: rules[0].hosts[0]: invalid host pattern \"*.com\": wildcard "
                     "over a top-level domain");
    pol_t_has(&errs, "p.json:5:48: rules[1].bogus: unknown key \"bogus\"");
    pol_t_has(&errs, "p.json:6:14: rules[2].name: duplicate rule name \"a\" (first at rules[0])");
    pol_t_has(&errs, "p.json:6:29: rules[2].hosts[0]: invalid host pattern \"x*y.example.com\"");
    pol_t_has(&errs, "p.json:6:59: rules[2].ports[0]: expected a port number 1..65535");
    assert_int_equal(errs.count, 5);
    al_errs_free(&errs);
}

static void
test_errors_types_and_values(void **state)
{
    static const char text[] =
        "{\"mode\": \"audit\", \"default\": true, \"allow_addresses\": [\"10.0.0.1/8\", 7],\n"
        " \"extra\": 1,\n"
        " \"rules\": [\n"
        "  {\"hosts\": [\"a.example.com\"]},\n"
        "  {\"name\": \"x\"},\n"
        "  {\"name\": \"y\", \"hosts\": \"a.example.com\", \"ports\": [80, 70000, \"443\", 1.5],\n"
        "   \"methods\": [\"get\", \"GET\", \"\"], \"paths\": [\"repos\", \"/a/**b\", "
        "\"/a/../b\",\n"
        "   \"/q?x=1\", \"/%2e\"], \"sandboxes\": [\"ok\", \"bad name\"], \"cidrs\": [\"nope\"],\n"
        "   \"action\": \"permit\", \"mode\": 1, \"intercept\": \"yes\", \"inject\": [3],\n"
        "   \"allow_encoded_slash\": 0},\n"
        "  {\"name\": \"default\", \"hosts\": [\"*\"], \"ports\": []},\n"
        "  {\"name\": \"z\", \"hosts\": [\"*\"], \"action\": \"deny\", \"inject\": [\"tok\"]},\n"
        "  \"str\"\n"
        " ]}\n";
    struct al_errs errs;

    (void)state;
    al_errs_init(&errs);
    assert_null(pol_t_load(text, &errs));
    pol_t_has(&errs, "p.json:1:10: mode: expected \"enforce\" or \"dry-run\", got \"audit\"");
    pol_t_has(&errs, "p.json:1:30: default: expected a string");
    pol_t_has(&errs, "allow_addresses[0]: invalid CIDR \"10.0.0.1/8\"");
    pol_t_has(&errs, "allow_addresses[1]: expected a string");
    pol_t_has(&errs, "p.json:2:2: extra: unknown key \"extra\"");
    pol_t_has(&errs, "p.json:4:3: rules[0]: missing \"name\"");
    pol_t_has(&errs, "p.json:5:3: rules[1]: missing \"hosts\"");
    pol_t_has(&errs, "rules[2].hosts: expected an array");
    pol_t_has(&errs, "rules[2].ports[1]: expected a port number");
    pol_t_has(&errs, "rules[2].ports[2]: expected a port number");
    pol_t_has(&errs, "rules[2].ports[3]: expected a port number");
    pol_t_has(&errs, "rules[2].methods[0]: invalid method");
    pol_t_has(&errs, "rules[2].methods[2]: invalid method");
    pol_t_has(&errs, "rules[2].paths[0]: invalid path pattern \"repos\"");
    pol_t_has(&errs, "rules[2].paths[1]: invalid path pattern \"/a/**b\"");
    pol_t_has(&errs, "rules[2].paths[2]: invalid path pattern \"/a/../b\"");
    pol_t_has(&errs, "rules[2].paths[3]: invalid path pattern \"/q?x=1\"");
    pol_t_has(&errs, "rules[2].paths[4]: invalid path pattern \"/%2e\"");
    pol_t_has(&errs, "rules[2].sandboxes[1]: invalid sandbox name \"bad name\"");
    pol_t_has(&errs, "rules[2].cidrs[0]: invalid CIDR \"nope\"");
    pol_t_has(&errs, "rules[2].action: expected \"allow\" or \"deny\", got \"permit\"");
    pol_t_has(&errs, "rules[2].mode: expected a string");
    pol_t_has(&errs, "rules[2].intercept: expected true or false");
    pol_t_has(&errs, "rules[2].inject[0]: expected a string");
    pol_t_has(&errs, "rules[2].allow_encoded_slash: expected true or false");
    pol_t_has(&errs, "rules[3].name: \"default\" is reserved");
    pol_t_has(&errs, "rules[3].ports: empty list");
    pol_t_has(&errs, "rules[4].inject: a deny rule cannot inject secrets");
    pol_t_has(&errs, "rules[5]: expected an object");
    assert_int_equal(errs.count, 29);
    al_errs_free(&errs);

    al_errs_init(&errs);
    assert_null(pol_t_load("[1]", &errs));
    pol_t_has(&errs, "p.json:1:1: (top): expected a JSON object");
    al_errs_free(&errs);
    al_errs_init(&errs);
    assert_null(pol_t_load("{\"rules\": {}}", &errs));
    pol_t_has(&errs, "rules: expected an array");
    al_errs_free(&errs);
    al_errs_init(&errs);
    assert_null(pol_t_load("{\"rules\": [}", &errs));
    pol_t_has(&errs, "p.json:1:12: invalid JSON");
    al_errs_free(&errs);
}

static void
test_warnings(void **state)
{
    static const char text[] =
        "{\"rules\": [\n"
        " {\"name\": \"all-example\", \"hosts\": [\"*.example.com\"]},\n"
        " {\"name\": \"api\", \"hosts\": [\"api.example.com\", \"x.y.example.com\"],\n"
        "  \"ports\": [443]},\n"
        " {\"name\": \"gets\", \"hosts\": [\"*\"], \"methods\": [\"GET\"]},\n"
        " {\"name\": \"foo\", \"hosts\": [\"foo.test\"], \"methods\": [\"GET\", \"POST\"]},\n"
        " {\"name\": \"foo-get\", \"hosts\": [\"foo.test\"], \"methods\": [\"GET\"],\n"
        "  \"sandboxes\": [\"ci\", \"ghost\"]},\n"
        " {\"name\": \"tree\", \"hosts\": [\"t.test\"], \"paths\": [\"/a/**\"]},\n"
        " {\"name\": \"leaf\", \"hosts\": [\"t.test\"], \"paths\": [\"/a/b/*\", \"/a\"]},\n"
        " {\"name\": \"other\", \"hosts\": [\"t.test\"], \"paths\": [\"/b\"]},\n"
        " {\"name\": \"staged\", \"hosts\": [\"s.test\"], \"mode\": \"dry-run\"},\n"
        " {\"name\": \"after-staged\", \"hosts\": [\"s.test\"]},\n"
        " {\"name\": \"deep\", \"hosts\": [\"*.a.example.com\"]}\n"
        "]}\n";
    static const char *const known[] = {"ci", "dev"};
    struct al_errs           errs;
    struct pol_policy       *p;

    (void)state;
    al_errs_init(&errs);
    p = pol_load_text("w.json", text, strlen(text), known, 2, 0, &errs);
    assert_non_null(p);
    assert_int_equal(errs.count, 0);
    pol_t_has(&errs, "warning: w.json:3:2: rules[1]: rule \"api\" is never reached: earlier rule "
                     "\"all-example\" (rules[0])");
    pol_t_has(&errs, "warning: w.json:7:2: rules[4]: rule \"foo-get\" is never reached: earlier "
                     "rule \"gets\" (rules[2])");
    pol_t_has(&errs, "warning: w.json:8:23: rules[4].sandboxes[1]: sandbox \"ghost\" is not "
                     "defined");
    pol_t_has(&errs, "rules[6]: rule \"leaf\" is never reached: earlier rule \"tree\"");
    pol_t_has(&errs, "rules[10]: rule \"deep\" is never reached: earlier rule \"all-example\"");
    assert_null(strstr(errs.text.data, "\"other\" is never"));
    assert_null(strstr(errs.text.data, "\"after-staged\" is never"));
    assert_null(strstr(errs.text.data, "\"foo\" is never"));
    assert_int_equal(errs.warnings, 5);
    assert_int_equal(pol_policy_rule_count(p), 11);
    assert_string_equal(pol_policy_rule_name(p, 3), "foo");
    assert_null(pol_policy_rule_name(p, 11));
    pol_policy_unref(p);
    al_errs_free(&errs);
}

static void
test_load_file_ref_and_accessors(void **state)
{
    static const char text[] =
        "{\"mode\": \"enforce\", \"default\": \"allow\",\n"
        " \"rules\": [{\"name\": \"gh\", \"hosts\": [\"api.github.com\"], \"intercept\": true,\n"
        "            \"inject\": [\"github_token\", \"other\"]}]}\n";
    char               path[] = "/tmp/pol_test_XXXXXX";
    int                fd = mkstemp(path);
    struct al_errs     errs;
    struct pol_policy *p, *q;
    const char *const *names = NULL;

    (void)state;
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, sizeof(text) - 1), (ssize_t)(sizeof(text) - 1));
    close(fd);
    al_errs_init(&errs);
    p = pol_load(path, NULL, 0, 1, &errs);
    assert_non_null(p);
    assert_true(pol_policy_dry_run(p)); /* forced */
    assert_true(pol_policy_default_allow(p));
    assert_int_equal(pol_policy_rule_inject(p, 0, &names), 2);
    assert_string_equal(names[1], "other");
    q = pol_policy_ref(p);
    assert_ptr_equal(p, q);
    pol_policy_unref(p);
    pol_policy_unref(q); /* last reference frees (ASan checks) */
    pol_policy_unref(NULL);
    unlink(path);
    assert_null(pol_load(path, NULL, 0, 0, &errs));
    pol_t_has(&errs, "cannot open");
    al_errs_free(&errs);
}

static void
test_alloc_failures(void **state)
{
    static const char text[] =
        "{\"allow_addresses\": [\"10.0.0.0/8\"], \"rules\": [\n"
        " {\"name\": \"a\", \"hosts\": [\"a.example.com\", \"*.b.example.com\", \"*\"],\n"
        "  \"ports\": [443], \"methods\": [\"GET\"], \"paths\": [\"/x/**\"],\n"
        "  \"sandboxes\": [\"ci\"], \"cidrs\": [\"127.0.0.1/32\"], \"inject\": [\"t\"]},\n"
        " {\"name\": \"b\", \"hosts\": [\"a.example.com\"]}]}\n";

    (void)state;
    for (long n = 1; n < 200; n++) {
        struct al_errs     errs;
        struct pol_policy *p;

        al_errs_init(&errs);
        al_mem_fail_after(n);
        p = pol_t_load(text, &errs);
        al_mem_fail_after(0);
        if (p != NULL) {
            pol_policy_unref(p);
            al_errs_free(&errs);
            return; /* every earlier failure point was survived */
        }
        al_errs_free(&errs);
    }
    fail_msg("policy never loaded");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_host_patterns),
        cmocka_unit_test(test_errors_file_line_col_all_reported),
        cmocka_unit_test(test_errors_types_and_values),
        cmocka_unit_test(test_warnings),
        cmocka_unit_test(test_load_file_ref_and_accessors),
        cmocka_unit_test(test_alloc_failures),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
