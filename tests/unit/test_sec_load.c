/*
 * test_sec_load.c - secrets.json loading: every error with file:line:col and
 * JSON path in one pass, secret names but never values in messages or on
 * stderr, placeholder derivation (stable per key file, fixed length),
 * uniqueness and substring rules, scope matching, `secrets env` output.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "secrets/sec_int.h"

#define T_VALUE "SECRET-VALUE-c0ffee-1234-xyz"

static char t_dir[256];

static void
t_write(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int
t_setup(void **state)
{
    (void)state;
    snprintf(t_dir, sizeof(t_dir), "/tmp/test_sec_load.XXXXXX");
    assert_non_null(mkdtemp(t_dir));
    setenv("T_SEC_ENV", T_VALUE, 1);
    unsetenv("T_SEC_MISSING");
    return 0;
}

static int
t_teardown(void **state)
{
    char cmd[512];

    (void)state;
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", t_dir);
    assert_int_equal(system(cmd), 0);
    return 0;
}

/* Loads `json` from a file, capturing stderr into *err_out (caller frees). */
static struct sec_store *
t_load(const char *json, const char *key_dir, struct al_errs *errs, char **err_out)
{
    char              path[512], epath[512];
    int               saved, fd;
    struct sec_store *s;
    FILE             *f;
    long              n;

    snprintf(path, sizeof(path), "%s/secrets.json", t_dir);
    snprintf(epath, sizeof(epath), "%s/stderr.txt", t_dir);
    t_write(path, json);
    fflush(stderr);
    saved = dup(2);
    fd = open(epath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    dup2(fd, 2);
    close(fd);
    al_errs_init(errs);
    s = sec_load(path, key_dir, errs);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    f = fopen(epath, "r");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    *err_out = calloc(1, (size_t)n + 1);
    assert_int_equal(fread(*err_out, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    return s;
}

static void
t_no_value(const struct al_errs *errs, const char *captured)
{
    if (errs->text.data != NULL)
        assert_null(strstr(errs->text.data, T_VALUE));
    assert_null(strstr(captured, T_VALUE));
    assert_null(strstr(captured, "c0ffee"));
}

static void
t_has(const struct al_errs *errs, const char *needle)
{
    if (errs->text.data == NULL || strstr(errs->text.data, needle) == NULL) {
        print_error("missing \"%s\" in:\n%s\n", needle,
                    errs->text.data ? errs->text.data : "(none)");
        fail();
    }
}

static void
test_load_ok(void **state)
{
    char              vpath[512], json[2048], *cap = NULL, out[1024];
    struct al_errs    errs;
    struct sec_store *s;
    FILE             *f;
    size_t            n;

    (void)state;
    snprintf(vpath, sizeof(vpath), "%s/value.txt", t_dir);
    t_write(vpath, "file-secret-value-42\n");
    snprintf(
        json, sizeof(json),
        "{\"secrets\": {\n"
        "  \"github_token\": {\"from\": {\"env\": \"T_SEC_ENV\"},\n"
        "     \"hosts\": [\"api.github.com\", \"*.githubusercontent.com\"],\n"
        "     \"header\": {\"name\": \"Authorization\", \"format\": \"Bearer {}\"}},\n"
        "  \"openai\": {\"from\": {\"file\": \"%s\"}, \"hosts\": [\"api.openai.com:443/v1/\"],\n"
        "     \"passthrough\": [\"api.anthropic.com\"], \"env\": \"OPENAI_API_KEY\",\n"
        "     \"in\": [\"header\", \"query\", \"body\"]},\n"
        "  \"inline\": {\"from\": {\"value\": \"inline-value-0123456789\"},\n"
        "     \"hosts\": [\"[::1]:8443\", \"127.1\"], \"placeholder\": \"my-explicit-ph-1\",\n"
        "     \"allow_plaintext\": true}\n"
        "}}\n",
        vpath);
    s = t_load(json, t_dir, &errs, &cap);
    assert_non_null(s);
    assert_int_equal(errs.count, 0);
    t_no_value(&errs, cap);
    assert_int_equal(sec_count(s), 3);
    assert_string_equal(sec_name(s, 0), "github_token");
    assert_string_equal(sec_env_name(s, 0), "GITHUB_TOKEN");
    assert_string_equal(sec_env_name(s, 1), "OPENAI_API_KEY");
    assert_string_equal(sec_env_name(s, 2), "INLINE");
    assert_int_equal(strlen(sec_placeholder(s, 0)), 38);
    assert_int_equal(strncmp(sec_placeholder(s, 0), "al_ph_", 6), 0);
    assert_int_equal(strspn(sec_placeholder(s, 0) + 6, "0123456789abcdef"), 32);
    assert_int_equal(strlen(sec_placeholder(s, 1)), 38);
    assert_string_equal(sec_placeholder(s, 2), "my-explicit-ph-1");
    assert_string_equal(s->secs[0].value, T_VALUE);
    assert_string_equal(s->secs[1].value, "file-secret-value-42"); /* newline trimmed */
    assert_int_equal(s->secs[1].in, SEC_IN_HEADER | SEC_IN_QUERY | SEC_IN_BODY);
    assert_int_equal(s->secs[0].in, SEC_IN_HEADER);
    assert_int_equal(sec_find(s, "openai"), 1);
    assert_int_equal(sec_find(s, "nope"), -1);
    /* key file created 0600 */
    {
        char        kp[512];
        struct stat st;

        snprintf(kp, sizeof(kp), "%s/placeholder.key", t_dir);
        assert_int_equal(stat(kp, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0600);
        assert_int_equal(st.st_size, 32);
    }
    /* secrets env: sorted by env name */
    f = tmpfile();
    assert_non_null(f);
    assert_int_equal(sec_print_env(s, f), AL_OK);
    rewind(f);
    n = fread(out, 1, sizeof(out) - 1, f);
    out[n] = '\0';
    fclose(f);
    {
        char exp[1024];

        snprintf(exp, sizeof(exp), "GITHUB_TOKEN=%s\nINLINE=my-explicit-ph-1\nOPENAI_API_KEY=%s\n",
                 sec_placeholder(s, 0), sec_placeholder(s, 1));
        assert_string_equal(out, exp);
    }
    assert_null(strstr(out, T_VALUE));
    sec_store_unref(sec_store_ref(s));
    sec_store_unref(s);
    al_errs_free(&errs);
    free(cap);
}

static void
test_load_errors(void **state)
{
    /* line numbers below are the 1-based lines of this text */
    const char *json =
        "{\"secrets\": {\n"                                                             /* 1 */
        "  \"a\": {\"from\": {\"value\": \"" T_VALUE "\"},\n"                           /* 2 */
        "         \"hosts\": [\"a..b\"],\n"                                             /* 3 */
        "         \"colour\": 1,\n"                                                     /* 4 */
        "         \"header\": {\"name\": \"Authorization\", \"format\": \"Bearer\"},\n" /* 5 */
        "         \"in\": [\"header\", \"nope\"]},\n"                                   /* 6 */
        "  \"b\": {\"from\": {\"env\": \"T_SEC_MISSING\"},\n"                           /* 7 */
        "         \"hosts\": [\"ok.example.com\", \"*.com\", \"x.com:99999\"]},\n"      /* 8 */
        "  \"c\": {\"from\": {\"env\": \"T_SEC_ENV\"}, \"hosts\": []}\n"                /* 9 */
        "}, \"extra\": true}\n";
    struct al_errs    errs;
    struct sec_store *s;
    char             *cap = NULL;

    (void)state;
    s = t_load(json, t_dir, &errs, &cap);
    assert_null(s);
    t_no_value(&errs, cap);
    t_has(&errs, ":3:20: secrets.a.hosts[0]: empty label in host name");
    t_has(&errs, ":4:10: secrets.a.colour: unknown key \"colour\"");
    t_has(&errs, ":5:56: secrets.a.header.format: must contain \"{}\"");
    t_has(&errs, ":6:27: secrets.a.in[1]: expected one of");
    t_has(&errs, ":7:25: secrets.b.from.env: secret \"b\": environment variable T_SEC_MISSING "
                 "is not set");
    t_has(&errs, ":8:38: secrets.b.hosts[1]: wildcard over a top-level domain");
    t_has(&errs, ":8:47: secrets.b.hosts[2]: bad port");
    t_has(&errs, ":9:48: secrets.c.hosts: expected a non-empty array");
    t_has(&errs, ":10:4: extra: unknown key \"extra\"");
    assert_int_equal(errs.count, 9);
    al_errs_free(&errs);
    free(cap);
}

static void
test_value_errors(void **state)
{
    char              json[2048], *cap = NULL, vpath[512];
    struct al_errs    errs;
    struct sec_store *s;

    (void)state;
    snprintf(vpath, sizeof(vpath), "%s/short.txt", t_dir);
    t_write(vpath, "\n");
    snprintf(
        json, sizeof(json),
        "{\"secrets\": {\n"
        "  \"unreadable\": {\"from\": {\"file\": \"%s/does-not-exist\"}, \"hosts\": [\"a.b\"]},\n"
        "  \"empty\": {\"from\": {\"file\": \"%s\"}, \"hosts\": [\"a.b\"]},\n"
        "  \"short\": {\"from\": {\"value\": \"abc\"}, \"hosts\": [\"a.b\"]},\n"
        "  \"crlf\": {\"from\": {\"value\": \"" T_VALUE "\\r\\nX: y\"}, \"hosts\": [\"a.b\"]},\n"
        "  \"two\": {\"from\": {\"env\": \"T_SEC_ENV\", \"value\": \"x\"}, \"hosts\": [\"a.b\"]},\n"
        "  \"bad ph\": {\"from\": {\"env\": \"T_SEC_ENV\"}, \"hosts\": [\"a.b\"], \"placeholder\": "
        "\"a b\"}\n"
        "}}\n",
        t_dir, vpath);
    s = t_load(json, t_dir, &errs, &cap);
    assert_null(s);
    t_no_value(&errs, cap);
    t_has(&errs, "secrets.unreadable.from.file: secret \"unreadable\": cannot read");
    t_has(&errs, "No such file or directory");
    t_has(&errs, "secrets.empty.from.file: secret \"empty\": the value is empty");
    t_has(&errs, "secrets.short.from.value: secret \"short\": the value is shorter than 8");
    t_has(&errs, "secrets.crlf.from.value: secret \"crlf\": the value contains control");
    t_has(&errs, "secrets.two.from: expected exactly one of");
    t_has(&errs, "secret names are 1..64 characters");
    t_has(&errs, "placeholder: expected \"auto\" or 8..256");
    al_errs_free(&errs);
    free(cap);
}

static void
test_placeholder_stability(void **state)
{
    const char       *json = "{\"secrets\": {\"one\": {\"from\": {\"env\": \"T_SEC_ENV\"}, "
                             "\"hosts\": [\"a.example.com\"]},"
                             "\"two\": {\"from\": {\"value\": \"another-secret-value\"}, "
                             "\"hosts\": [\"a.example.com\"]}}}";
    struct al_errs    errs;
    struct sec_store *s1, *s2, *s3;
    char             *cap = NULL, other[512];

    (void)state;
    s1 = t_load(json, t_dir, &errs, &cap);
    assert_non_null(s1);
    al_errs_free(&errs);
    free(cap);
    s2 = t_load(json, t_dir, &errs, &cap);
    assert_non_null(s2);
    al_errs_free(&errs);
    free(cap);
    assert_string_equal(sec_placeholder(s1, 0), sec_placeholder(s2, 0));
    assert_string_equal(sec_placeholder(s1, 1), sec_placeholder(s2, 1));
    assert_string_not_equal(sec_placeholder(s1, 0), sec_placeholder(s1, 1));
    /* another key -> other placeholders */
    snprintf(other, sizeof(other), "%s/other", t_dir);
    assert_int_equal(mkdir(other, 0700), 0);
    s3 = t_load(json, other, &errs, &cap);
    assert_non_null(s3);
    assert_string_not_equal(sec_placeholder(s1, 0), sec_placeholder(s3, 0));
    al_errs_free(&errs);
    free(cap);
    /* no key dir: auto placeholders are an error, explicit ones fine */
    s3 = (sec_store_unref(s3), t_load(json, NULL, &errs, &cap));
    assert_null(s3);
    t_has(&errs, "secrets.one.placeholder: an \"auto\" placeholder needs ca.dir");
    t_has(&errs, "secrets.two.placeholder: an \"auto\" placeholder needs ca.dir");
    t_no_value(&errs, cap);
    al_errs_free(&errs);
    free(cap);
    /* a broken key file */
    {
        char kp[1024];

        snprintf(kp, sizeof(kp), "%s/placeholder.key", other);
        t_write(kp, "short");
        s3 = t_load(json, other, &errs, &cap);
        assert_null(s3);
        t_has(&errs, "must hold exactly 32 bytes");
        al_errs_free(&errs);
        free(cap);
    }
    sec_store_unref(s1);
    sec_store_unref(s2);
}

static void
test_uniqueness(void **state)
{
    struct al_errs    errs;
    struct sec_store *s;
    char             *cap = NULL;

    (void)state;
    s = t_load("{\"secrets\": {"
               "\"a\": {\"from\": {\"value\": \"value-aaaaaaaa\"}, \"hosts\": [\"x.y\"], "
               "\"placeholder\": \"PLACEHOLDER-1\"},"
               "\"b\": {\"from\": {\"value\": \"value-bbbbbbbb\"}, \"hosts\": [\"x.y\"], "
               "\"placeholder\": \"PLACEHOLDER-1\"}}}",
               NULL, &errs, &cap);
    assert_null(s);
    t_has(&errs, "secrets.a.placeholder: same placeholder as secret \"b\"");
    al_errs_free(&errs);
    free(cap);
    s = t_load("{\"secrets\": {"
               "\"a\": {\"from\": {\"value\": \"value-aaaaaaaa\"}, \"hosts\": [\"x.y\"], "
               "\"placeholder\": \"PLACEHOLDER-1\"},"
               "\"b\": {\"from\": {\"value\": \"value-bbbbbbbb\"}, \"hosts\": [\"x.y\"], "
               "\"placeholder\": \"PLACEHOLDER-12\"}}}",
               NULL, &errs, &cap);
    assert_null(s);
    t_has(&errs, "contains or is contained in the placeholder of secret \"b\"");
    al_errs_free(&errs);
    free(cap);
    /* placeholder inside a value, value inside a placeholder */
    s = t_load("{\"secrets\": {"
               "\"a\": {\"from\": {\"value\": \"xx-PLACEHOLDER-B-xx\"}, \"hosts\": [\"x.y\"], "
               "\"placeholder\": \"PLACEHOLDER-A\"},"
               "\"b\": {\"from\": {\"value\": \"HOLDER-A\"}, \"hosts\": [\"x.y\"], "
               "\"placeholder\": \"PLACEHOLDER-B\"}}}",
               NULL, &errs, &cap);
    assert_null(s);
    t_has(&errs, "secrets.a.placeholder: the placeholder and the value of secret \"b\" contain "
                 "one another");
    t_has(&errs, "secrets.b.placeholder: the placeholder and the value of secret \"a\" contain "
                 "one another");
    al_errs_free(&errs);
    free(cap);
}

static void
test_scope_match(void **state)
{
    struct al_errs    errs;
    struct sec_store *s;
    char             *cap = NULL;
    struct {
        const char *host;
        uint16_t    port;
        const char *path;
        int         a, b, c;
    } v[] = {
        {"api.github.com", 443, "/", 1, 0, 0},
        {"API.GitHub.com", 443, "/", 1, 0, 0},
        {"api.github.com.", 8443, "/", 1, 0, 0},
        {"xapi.github.com", 443, "/", 0, 0, 0},
        {"raw.githubusercontent.com", 443, "/x", 1, 0, 0},
        {"githubusercontent.com", 443, "/x", 0, 0, 0},
        {"api.openai.com", 443, "/v1/chat", 0, 1, 0},
        {"api.openai.com", 443, "/v1/", 0, 1, 0},
        {"api.openai.com", 443, "/v1", 0, 0, 0},
        {"api.openai.com", 443, "/v10/x", 0, 0, 0},
        {"api.openai.com", 443, "/v2/x", 0, 0, 0},
        {"api.openai.com", 8443, "/v1/x", 0, 0, 0},
        {"api.openai.com", 443, "/v1/../admin", 0, 0, 0},
        {"api.openai.com", 443, "/v1/%2e%2e/admin", 0, 0, 0},
        {"api.openai.com", 443, "/v1/a?x=/../", 0, 1, 0},
        {"api.mistral.ai", 443, "/v2", 0, 0, 1},
        {"api.mistral.ai", 443, "/v2/x", 0, 0, 1},
        {"api.mistral.ai", 443, "/v2x", 0, 0, 0},
        {"::1", 8443, "/", 0, 0, 1},
        {"::1", 443, "/", 0, 0, 0},
        {"127.0.0.1", 1, "/", 0, 0, 1},
    };

    (void)state;
    s = t_load("{\"secrets\": {"
               "\"a\": {\"from\": {\"value\": \"value-aaaaaaaa\"}, \"hosts\": [\"api.github.com\", "
               "\"*.githubusercontent.com\"], \"placeholder\": \"PLACEHOLDER-A\"},"
               "\"b\": {\"from\": {\"value\": \"value-bbbbbbbb\"}, \"hosts\": "
               "[\"API.openai.com:443/v1/\"], \"placeholder\": \"PLACEHOLDER-B\"},"
               "\"c\": {\"from\": {\"value\": \"value-cccccccc\"}, \"hosts\": "
               "[\"api.mistral.ai/v2\", \"[::1]:8443\", \"2130706433\"], "
               "\"placeholder\": \"PLACEHOLDER-C\"}}}",
               NULL, &errs, &cap);
    assert_non_null(s);
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        struct sec_dest d = {v[i].host, v[i].port, v[i].path, strlen(v[i].path), 1, 0};

        if (sec_in_scope(s, 0, &d) != v[i].a || sec_in_scope(s, 1, &d) != v[i].b ||
            sec_in_scope(s, 2, &d) != v[i].c) {
            print_error("case %zu: %s:%u%s\n", i, v[i].host, v[i].port, v[i].path);
            fail();
        }
    }
    assert_true(sec_any_scope_host(s, "api.openai.com", 443));
    assert_false(sec_any_scope_host(s, "api.openai.com", 80));
    assert_true(sec_any_scope_host(s, "x.githubusercontent.com", 80));
    assert_false(sec_any_scope_host(s, "example.org", 443));
    sec_store_unref(s);
    al_errs_free(&errs);
    free(cap);
    /* scope syntax */
    {
        static const char *bad[] = {
            "",          "a..b",      "*.com",        "*.*.x.com", "x.*.com",
            "a.b:0",     "a.b:65536", "a.b:x",        "[::1",      "[::1]x",
            "*.1.2.3.4", "a b.com",   "h\xc3\xbc.de", "a.b/x y",   "a.123"};
        static const char *good[] = {"*", "*.a.b", "a.b:1", "a.b/p", "[::1]:443/p/", "1.2.3.4:80"};

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
            struct sec_scope sc;
            const char      *why = NULL;

            if (sec_scope_parse(bad[i], &sc, &why) == AL_OK) {
                print_error("accepted bad scope %s\n", bad[i]);
                fail();
            }
            assert_non_null(why);
        }
        for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
            struct sec_scope sc;
            const char      *why = NULL;

            assert_int_equal(sec_scope_parse(good[i], &sc, &why), AL_OK);
            sec_scope_clear(&sc);
        }
    }
}

static void
test_alloc_failures(void **state)
{
    const char *json = "{\"secrets\": {\"one\": {\"from\": {\"env\": \"T_SEC_ENV\"}, "
                       "\"hosts\": [\"a.example.com\", \"b.example.com:1/x\"], "
                       "\"header\": {\"name\": \"X-K\", \"format\": \"k {} k\"}}}}";

    (void)state;
    for (long n = 1; n < 200; n++) {
        struct al_errs    errs;
        struct sec_store *s;

        al_errs_init(&errs);
        al_mem_fail_after(n);
        s = sec_load_text("mem.json", json, strlen(json), t_dir, &errs);
        al_mem_fail_after(0);
        if (errs.text.data != NULL)
            assert_null(strstr(errs.text.data, T_VALUE));
        sec_store_unref(s);
        al_errs_free(&errs);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_load_ok, t_setup, t_teardown),
        cmocka_unit_test_setup_teardown(test_load_errors, t_setup, t_teardown),
        cmocka_unit_test_setup_teardown(test_value_errors, t_setup, t_teardown),
        cmocka_unit_test_setup_teardown(test_placeholder_stability, t_setup, t_teardown),
        cmocka_unit_test_setup_teardown(test_uniqueness, t_setup, t_teardown),
        cmocka_unit_test_setup_teardown(test_scope_match, t_setup, t_teardown),
        cmocka_unit_test_setup_teardown(test_alloc_failures, t_setup, t_teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
