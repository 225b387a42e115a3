/* test_px_config.c - config loading: defaults, paths, every error with its location. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include "proxy/px.h"

static char t_dir[64];

static int
t_setup(void **state)
{
    (void)state;
    snprintf(t_dir, sizeof(t_dir), "/tmp/al_cfg_XXXXXX");
    return mkdtemp(t_dir) != NULL ? 0 : -1;
}

static int
t_teardown(void **state)
{
    char cmd[128];

    (void)state;
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", t_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static const char *
t_write(const char *name, const char *text)
{
    static char path[256];
    FILE       *f;

    snprintf(path, sizeof(path), "%s/%s", t_dir, name);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static void
test_minimal_defaults_and_paths(void **state)
{
    struct al_errs  errs;
    struct px_conf *c;
    char            want[256];

    (void)state;
    al_errs_init(&errs);
    c = px_conf_load(t_write("a.json", "{\"policy\": \"p.json\", \"workers\": 3}"), &errs);
    assert_non_null(c);
    assert_int_equal(errs.count, 0);
    assert_int_equal(c->nlisten, 1);
    assert_string_equal(c->listen[0].text, "127.0.0.1:3128");
    assert_int_equal(c->workers, 3);
    snprintf(want, sizeof(want), "%s/p.json", t_dir);
    assert_string_equal(c->policy_path, want);
    assert_int_equal(c->limits.header_bytes, PX_DEFAULT_HEADER_BYTES);
    assert_int_equal(c->limits.connect_timeout_s, PX_DEFAULT_CONNECT_TIMEOUT_S);
    px_conf_unref(c);
    al_errs_free(&errs);
}

static void
test_full_config(void **state)
{
    struct al_errs  errs;
    struct px_conf *c;

    (void)state;
    al_errs_init(&errs);
    c = px_conf_load(t_write("b.json",
                             "{\"listen\": [{\"addr\": \"[::1]:8080\", \"mode\": \"forward\"},\n"
                             "  {\"addr\": \"127.0.0.2:3128\"}],\n"
                             " \"admin\": \"127.0.0.1:9180\", \"policy\": \"/etc/p.json\",\n"
                             " \"audit\": {\"db\": \"../var/a.db\", \"durability\": \"strict\"},\n"
                             " \"resolve\": {\"API.Test.\": \"127.0.0.1\"},\n"
                             " \"dns\": {\"servers\": [\"127.0.0.1:5353\"], \"timeout_ms\": 500},\n"
                             " \"limits\": {\"header_bytes\": 4096, \"idle_timeout_s\": 5},\n"
                             " \"log_level\": \"debug\"}"),
                     &errs);
    if (c == NULL)
        fail_msg("%s", errs.text.data);
    assert_int_equal(c->nlisten, 2);
    assert_int_equal(c->listen[0].addr.ss_family, AF_INET6);
    assert_true(c->has_admin);
    assert_string_equal(c->policy_path, "/etc/p.json");
    assert_true(c->audit_strict);
    assert_int_equal(c->noverrides, 1);
    assert_string_equal(c->overrides[0].name, "api.test");
    assert_int_equal(c->ndns_servers, 1);
    assert_int_equal(c->dns_timeout_ms, 500);
    assert_int_equal(c->limits.header_bytes, 4096);
    assert_int_equal(c->limits.idle_timeout_s, 5);
    assert_int_equal(c->log_level, AL_LOG_DEBUG);
    px_conf_unref(c);
    al_errs_free(&errs);
}

static void
test_every_error_reported_with_location(void **state)
{
    struct al_errs  errs;
    struct px_conf *c;
    const char     *path;

    (void)state;
    al_errs_init(&errs);
    path = t_write("c.json", "{\n"
                             "  \"policy\": \"p.json\",\n"
                             "  \"workers\": \"two\",\n"
                             "  \"listn\": [],\n"
                             "  \"listen\": [{\"addr\": \"localhost:80\"}],\n"
                             "  \"limits\": {\"header_bytes\": 12, \"bogus\": 1},\n"
                             "  \"resolve\": {\"a.test\": \"not-an-ip\"}\n"
                             "}\n");
    c = px_conf_load(path, &errs);
    assert_null(c);
    assert_int_equal(errs.count, 6);
    assert_non_null(strstr(errs.text.data, ":3:14: workers: expected an integer"));
    assert_non_null(strstr(errs.text.data, ":4:3: listn: unknown key \"listn\""));
    assert_non_null(strstr(errs.text.data, ":5:23: listen[0].addr: expected \"ip:port\""));
    assert_non_null(strstr(errs.text.data, ":6:30: limits.header_bytes: expected an integer in"));
    assert_non_null(strstr(errs.text.data, ":6:34: limits.bogus: unknown key"));
    assert_non_null(strstr(errs.text.data, ":7:14: resolve.a.test:"));
    al_errs_free(&errs);
}

static void
test_missing_policy_and_bad_json(void **state)
{
    struct al_errs errs;

    (void)state;
    al_errs_init(&errs);
    assert_null(px_conf_load(t_write("d.json", "{}"), &errs));
    assert_non_null(strstr(errs.text.data, "missing \"policy\""));
    al_errs_free(&errs);
    al_errs_init(&errs);
    assert_null(px_conf_load(t_write("e.json", "{\n \"policy\": \"p\",\n \"x\": }\n"), &errs));
    assert_non_null(strstr(errs.text.data, "e.json:3:"));
    assert_non_null(strstr(errs.text.data, "invalid JSON"));
    al_errs_free(&errs);
    al_errs_init(&errs);
    assert_null(px_conf_load("/nonexistent/airlock.json", &errs));
    assert_non_null(strstr(errs.text.data, "cannot open"));
    al_errs_free(&errs);
}

static void
test_sandboxes_and_admin(void **state)
{
    struct al_errs  errs;
    struct px_conf *c;
    const char     *tok = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08";

    (void)state;
    al_errs_init(&errs);
    c = px_conf_load(
        t_write("s.json", "{\"policy\": \"p.json\",\n"
                          " \"admin\": {\"addr\": \"127.0.0.1:9180\", \"token_sha256\": "
                          "\"9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08\"},\n"
                          " \"sandboxes\": [{\"name\": \"ci\", \"token_sha256\": "
                          "\"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"},\n"
                          "  {\"name\": \"dev\", \"cidrs\": [\"10.8.0.0/24\"]}]}"),
        &errs);
    if (c == NULL)
        fail_msg("%s", errs.text.data);
    assert_int_equal(c->nsandboxes, 2);
    assert_true(c->any_token);
    assert_non_null(px_conf_sandbox(c, "dev"));
    assert_null(px_conf_sandbox(c, "nope"));
    assert_int_equal(px_conf_sandbox(c, "dev")->ncidrs, 1);
    assert_string_equal(c->admin_token_sha256, px_conf_sandbox(c, "ci")->token_sha256);
    assert_int_equal(strlen(c->admin_token_sha256), strlen(tok));
    px_conf_unref(c);
    al_errs_free(&errs);

    al_errs_init(&errs);
    c = px_conf_load(t_write("s2.json", "{\"policy\": \"p.json\",\n"
                                        " \"sandboxes\": [{\"name\": \"a b\", \"cidrs\": []},\n"
                                        "  {\"name\": \"x\", \"token_sha256\": \"abc\"},\n"
                                        "  {\"name\": \"y\"},\n"
                                        "  {\"name\": \"z\", \"cidrs\": [\"10.0.0.1/8\"]}]}"),
                     &errs);
    assert_null(c);
    assert_int_equal(errs.count, 4);
    assert_non_null(strstr(errs.text.data, ":2:25: sandboxes[0].name: sandbox names"));
    assert_non_null(strstr(errs.text.data, ":3:33: sandboxes[1].token_sha256: expected 64 hex"));
    assert_non_null(strstr(errs.text.data, ":4:3: sandboxes[2]: needs \"cidrs\""));
    assert_non_null(strstr(errs.text.data, "sandboxes[3].cidrs[0]: expected a CIDR"));
    al_errs_free(&errs);
}

/* Issue #20: an admin listener anyone can reach needs a token; loopback may
 * go without one. */
static void
test_admin_needs_token_off_loopback(void **state)
{
    static const char *const bad[] = {"\"0.0.0.0:9180\"", "\"[::]:9180\"", "\"10.1.2.3:9180\"",
                                      "{\"addr\": \"0.0.0.0:9180\"}"};
    static const char *const good[] = {
        "\"127.0.0.1:9180\"", "\"127.0.0.2:9180\"", "\"[::1]:9180\"",
        "{\"addr\": \"0.0.0.0:9180\", \"token_sha256\": "
        "\"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"}"};
    struct al_errs  errs;
    struct px_conf *c;
    char            text[512];

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(text, sizeof(text), "{\"policy\": \"p.json\",\n \"admin\": %s}", bad[i]);
        al_errs_init(&errs);
        c = px_conf_load(t_write("adm.json", text), &errs);
        if (c != NULL)
            fail_msg("admin %s without a token was accepted", bad[i]);
        assert_int_equal(errs.count, 1);
        assert_non_null(strstr(errs.text.data, "not a loopback address, needs a token"));
        assert_non_null(strstr(errs.text.data, ":2:"));
        al_errs_free(&errs);
    }
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        snprintf(text, sizeof(text), "{\"policy\": \"p.json\",\n \"admin\": %s}", good[i]);
        al_errs_init(&errs);
        c = px_conf_load(t_write("adm.json", text), &errs);
        if (c == NULL)
            fail_msg("admin %s refused: %s", good[i], errs.text.data);
        assert_true(c->has_admin);
        px_conf_unref(c);
        al_errs_free(&errs);
    }
}

static void
test_embedded_default(void **state)
{
    struct al_errs  errs;
    struct px_conf *c;

    (void)state;
    al_errs_init(&errs);
    c = px_conf_load(NULL, &errs);
    assert_non_null(c);
    assert_string_equal(c->listen[0].text, "127.0.0.1:3128");
    assert_true(c->has_admin);
    px_conf_unref(c);
    al_errs_free(&errs);
}

/* "user": a name this system knows (looked up at load), an error with its
 * location otherwise; a reload that changes it is restart-only. */
static void
test_user_key(void **state)
{
    struct al_errs  errs;
    struct px_conf *a, *b;
    uid_t           uid = 1;
    gid_t           gid = 1;
    char            fixed[128];

    (void)state;
    al_errs_init(&errs);
    a = px_conf_load(t_write("u1.json", "{\"policy\": \"p.json\", \"user\": \"root\"}"), &errs);
    if (a == NULL)
        fail_msg("%s", errs.text.data);
    assert_string_equal(a->user, "root");
    assert_int_equal(px_conf_user_lookup("root", &uid, &gid), AL_OK);
    assert_int_equal(uid, 0);
    assert_int_equal(gid, 0);
    assert_int_equal(px_conf_user_lookup("no-such-user-al-test", NULL, NULL), AL_ERROR);
    b = px_conf_load(t_write("u2.json", "{\"policy\": \"p.json\"}"), &errs);
    assert_non_null(b);
    assert_null(b->user);
    assert_int_equal(px_conf_restart_only(a, b, fixed, sizeof(fixed)), 1);
    assert_string_equal(fixed, "user");
    px_conf_unref(b);
    px_conf_unref(a);
    al_errs_free(&errs);

    al_errs_init(&errs);
    assert_null(px_conf_load(t_write("u3.json", "{\"policy\": \"p.json\",\n"
                                                " \"user\": \"no-such-user-al-test\"}"),
                             &errs));
    assert_non_null(strstr(errs.text.data, ":2:10: user: no such user \"no-such-user-al-test\""));
    al_errs_free(&errs);
    al_errs_init(&errs);
    assert_null(px_conf_load(t_write("u4.json", "{\"policy\": \"p.json\", \"user\": 0}"), &errs));
    assert_non_null(strstr(errs.text.data, "user: expected a string"));
    al_errs_free(&errs);
}

/* Audit rows and logs name peers as ip:port; IPv4 is formatted by hand. */
static void
test_sockaddr_str(void **state)
{
    struct sockaddr_in  sin;
    struct sockaddr_in6 sin6;
    char                out[64], small[8];
    static const struct {
        const char *ip;
        uint16_t    port;
        const char *want;
    } cases[] = {{"127.0.0.1", 3128, "127.0.0.1:3128"},
                 {"0.0.0.0", 0, "0.0.0.0:0"},
                 {"255.255.255.255", 65535, "255.255.255.255:65535"}};

    (void)state;
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        sin.sin_port = htons(cases[i].port);
        assert_int_equal(inet_pton(AF_INET, cases[i].ip, &sin.sin_addr), 1);
        px_sockaddr_str((struct sockaddr *)&sin, out, sizeof(out));
        assert_string_equal(out, cases[i].want);
    }
    sin.sin_port = htons(80);
    inet_pton(AF_INET, "10.20.3.40", &sin.sin_addr);
    px_sockaddr_str((struct sockaddr *)&sin, small, sizeof(small));
    assert_string_equal(small, "10.20.3"); /* truncated, still terminated */
    memset(&sin6, 0, sizeof(sin6));
    sin6.sin6_family = AF_INET6;
    sin6.sin6_port = htons(443);
    inet_pton(AF_INET6, "::1", &sin6.sin6_addr);
    px_sockaddr_str((struct sockaddr *)&sin6, out, sizeof(out));
    assert_string_equal(out, "[::1]:443");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_minimal_defaults_and_paths),
        cmocka_unit_test(test_full_config),
        cmocka_unit_test(test_every_error_reported_with_location),
        cmocka_unit_test(test_missing_policy_and_bad_json),
        cmocka_unit_test(test_sandboxes_and_admin),
        cmocka_unit_test(test_admin_needs_token_off_loopback),
        cmocka_unit_test(test_embedded_default),
        cmocka_unit_test(test_user_key),
        cmocka_unit_test(test_sockaddr_str),
    };

    return cmocka_run_group_tests(tests, t_setup, t_teardown);
}
