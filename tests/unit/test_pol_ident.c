/*
 * test_pol_ident.c - sandbox identity helpers: Proxy-Authorization Basic
 * parsing (strict base64), SANDBOX[+SESSION]+TOOL_CALL splitting, tag
 * validation, token check against a SHA-256 digest, source CIDR matching
 * (IPv4-mapped peers on dual-stack listeners).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "policy/pol_int.h"

static int
pol_t_basic(const char *v, char *user, char *pass)
{
    return pol_ident_parse_basic(v, strlen(v), user, 64, pass, 64);
}

static void
test_parse_basic(void **state)
{
    char user[64], pass[64], tiny[4];

    (void)state;
    /* "ci+call-1:s3cret" */
    assert_int_equal(pol_t_basic("Basic Y2krY2FsbC0xOnMzY3JldA==", user, pass), AL_OK);
    assert_string_equal(user, "ci+call-1");
    assert_string_equal(pass, "s3cret");
    assert_int_equal(pol_t_basic("  bAsIc \t Y2krY2FsbC0xOnMzY3JldA==  ", user, pass), AL_OK);
    /* "dev:" - empty password; "dev:a:b" - password keeps colons */
    assert_int_equal(pol_t_basic("Basic ZGV2Og==", user, pass), AL_OK);
    assert_string_equal(pass, "");
    assert_int_equal(pol_t_basic("Basic ZGV2OmE6Yg==", user, pass), AL_OK);
    assert_string_equal(user, "dev");
    assert_string_equal(pass, "a:b");
    assert_int_equal(pol_t_basic("Bearer abc", user, pass), AL_DECLINED);
    assert_int_equal(pol_t_basic("Basicabc", user, pass), AL_DECLINED);
    assert_int_equal(pol_t_basic("", user, pass), AL_DECLINED);
    assert_int_equal(pol_t_basic("Basic ", user, pass), AL_ERROR);
    assert_int_equal(pol_t_basic("Basic ZGV2", user, pass), AL_ERROR);      /* "dev": no ':' */
    assert_int_equal(pol_t_basic("Basic ZGV2Og", user, pass), AL_ERROR);    /* no padding */
    assert_int_equal(pol_t_basic("Basic ZGV2Og=a", user, pass), AL_ERROR);  /* junk after = */
    assert_int_equal(pol_t_basic("Basic ZGV2Oh==", user, pass), AL_ERROR);  /* loose bits */
    assert_int_equal(pol_t_basic("Basic ZG V2Og==", user, pass), AL_ERROR); /* inner space */
    assert_int_equal(pol_t_basic("Basic ZGV2Og==ZGV2Og==", user, pass), AL_ERROR);
    assert_int_equal(pol_t_basic("Basic ZGV2OgA=", user, pass), AL_ERROR); /* "dev:\0" */
    assert_int_equal(
        pol_ident_parse_basic("Basic ZGV2OmFiY2RlZg==", 22, tiny, sizeof(tiny), pass, sizeof(pass)),
        AL_OK);
    assert_int_equal(
        pol_ident_parse_basic("Basic ZGV2OmFiY2RlZg==", 22, user, sizeof(user), tiny, sizeof(tiny)),
        AL_ERROR); /* password "abcdef" does not fit */
}

static void
test_split_user(void **state)
{
    struct pol_ident id;
    char             big[200];

    (void)state;
    assert_int_equal(pol_ident_split_user("ci", &id), AL_OK);
    assert_string_equal(id.sandbox, "ci");
    assert_string_equal(id.session, "");
    assert_string_equal(id.tool_call, "");
    assert_int_equal(pol_ident_split_user("ci+toolu_01A.b:c-d", &id), AL_OK);
    assert_string_equal(id.sandbox, "ci");
    assert_string_equal(id.tool_call, "toolu_01A.b:c-d");
    assert_string_equal(id.session, "");
    assert_int_equal(pol_ident_split_user("dev+sess-9+toolu_7", &id), AL_OK);
    assert_string_equal(id.sandbox, "dev");
    assert_string_equal(id.session, "sess-9");
    assert_string_equal(id.tool_call, "toolu_7");
    assert_int_equal(pol_ident_split_user("", &id), AL_ERROR);
    assert_int_equal(pol_ident_split_user("+x", &id), AL_ERROR);
    assert_int_equal(pol_ident_split_user("ci+", &id), AL_ERROR);
    assert_int_equal(pol_ident_split_user("ci++x", &id), AL_ERROR);
    assert_int_equal(pol_ident_split_user("a+b+c+d", &id), AL_ERROR);
    assert_int_equal(pol_ident_split_user("c i", &id), AL_ERROR);
    assert_int_equal(pol_ident_split_user("ci+t/1", &id), AL_ERROR);
    assert_int_equal(pol_ident_split_user("ci+t\"1", &id), AL_ERROR);
    memset(big, 'a', 64);
    big[64] = '\0';
    assert_int_equal(pol_ident_split_user(big, &id), AL_ERROR); /* sandbox > 63 */
    big[63] = '\0';
    assert_int_equal(pol_ident_split_user(big, &id), AL_OK);
    memcpy(big, "s+", 2);
    memset(big + 2, 'b', 129);
    big[131] = '\0';
    assert_int_equal(pol_ident_split_user(big, &id), AL_ERROR); /* tool call > 128 */
    big[130] = '\0';
    assert_int_equal(pol_ident_split_user(big, &id), AL_OK);
    assert_true(pol_ident_tag_valid("toolu_01", 8, POL_TAG_MAX_BYTES));
    assert_false(pol_ident_tag_valid("toolu 01", 8, POL_TAG_MAX_BYTES));
    assert_false(pol_ident_tag_valid("", 0, POL_TAG_MAX_BYTES));
    assert_false(pol_ident_tag_valid("abc", 3, 2));
}

static void
test_token(void **state)
{
    /* digests as `printf %s TOKEN | sha256sum` prints them */
    static const char empty[] = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    static const char other[] = "0fa2e1fa3b3cbd5e1f0a8d3ee4b0c4e2e38c16c1b1ed12bb4e0c2e3e4d1e8b2c";
    char              real[65];

    (void)state;
    assert_true(pol_ident_token_ok("", 0, empty));
    assert_false(pol_ident_token_ok("x", 1, empty));
    /* sha256("abc") */
    strcpy(real, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_true(pol_ident_token_ok("abc", 3, real));
    real[0] = 'B';
    real[1] = 'A';
    assert_true(pol_ident_token_ok("abc", 3, real)); /* either case */
    assert_false(pol_ident_token_ok("abd", 3, real));
    assert_false(pol_ident_token_ok("ab", 2, real));
    assert_false(pol_ident_token_ok("abc", 3, other));
    assert_false(pol_ident_token_ok("abc", 3, "ba7816bf"));
    assert_false(pol_ident_token_ok("abc", 3, NULL));
    real[5] = 'z';
    assert_false(pol_ident_token_ok("abc", 3, real));
}

static void
test_source_match(void **state)
{
    struct pol_cidr     c[2];
    struct sockaddr_in  a4;
    struct sockaddr_in6 a6;

    (void)state;
    assert_int_equal(pol_cidr_parse("10.8.0.0/16", &c[0]), AL_OK);
    assert_int_equal(pol_cidr_parse("fd10::/64", &c[1]), AL_OK);
    memset(&a4, 0, sizeof(a4));
    a4.sin_family = AF_INET;
    inet_pton(AF_INET, "10.8.3.4", &a4.sin_addr);
    assert_true(pol_ident_source_match(c, 2, (struct sockaddr *)&a4));
    inet_pton(AF_INET, "10.9.3.4", &a4.sin_addr);
    assert_false(pol_ident_source_match(c, 2, (struct sockaddr *)&a4));
    memset(&a6, 0, sizeof(a6));
    a6.sin6_family = AF_INET6;
    inet_pton(AF_INET6, "::ffff:10.8.3.4", &a6.sin6_addr); /* dual-stack listener */
    assert_true(pol_ident_source_match(c, 2, (struct sockaddr *)&a6));
    inet_pton(AF_INET6, "fd10::5", &a6.sin6_addr);
    assert_true(pol_ident_source_match(c, 2, (struct sockaddr *)&a6));
    inet_pton(AF_INET6, "fd11::5", &a6.sin6_addr);
    assert_false(pol_ident_source_match(c, 2, (struct sockaddr *)&a6));
    assert_false(pol_ident_source_match(c, 0, (struct sockaddr *)&a6));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_basic),
        cmocka_unit_test(test_split_user),
        cmocka_unit_test(test_token),
        cmocka_unit_test(test_source_match),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
