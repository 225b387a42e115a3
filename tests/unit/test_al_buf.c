/* test_al_buf.c - byte buffers, JSON error locations and small parsers of common/. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/common.h"

static void
test_bufq_roundtrip_across_chunks(void **state)
{
    struct al_bufq q;
    static char    in[3 * AL_BUFQ_CHUNK_BYTES + 123];
    static char    out[sizeof(in)];
    size_t         got = 0;

    (void)state;
    for (size_t i = 0; i < sizeof(in); i++)
        in[i] = (char)(i * 7 + 3);
    al_bufq_init(&q, 4096);
    assert_int_equal(al_bufq_write(&q, in, 100), AL_OK);
    assert_int_equal(al_bufq_write(&q, in + 100, sizeof(in) - 100), AL_OK);
    assert_int_equal(al_bufq_len(&q), sizeof(in));
    assert_true(al_bufq_full(&q));
    while (al_bufq_len(&q) > 0) {
        size_t      n;
        const char *p = al_bufq_peek(&q, &n);

        assert_non_null(p);
        if (n > 5000)
            n = 5000; /* partial consumption, like a short write */
        memcpy(out + got, p, n);
        got += n;
        al_bufq_skip(&q, n);
    }
    assert_int_equal(got, sizeof(in));
    assert_memory_equal(in, out, sizeof(in));
    assert_false(al_bufq_full(&q));
    al_bufq_free(&q);
}

static void
test_bufq_reserve_commit(void **state)
{
    struct al_bufq q;
    size_t         room, n;
    char          *p;

    (void)state;
    al_bufq_init(&q, 10);
    p = al_bufq_reserve(&q, &room);
    assert_non_null(p);
    assert_int_equal(room, AL_BUFQ_CHUNK_BYTES);
    memcpy(p, "hello", 5);
    al_bufq_commit(&q, 5);
    assert_int_equal(al_bufq_len(&q), 5);
    assert_memory_equal(al_bufq_peek(&q, &n), "hello", 5);
    assert_int_equal(n, 5);
    al_bufq_skip(&q, 5);
    assert_null(al_bufq_peek(&q, &n));
    al_bufq_free(&q);
}

static void
test_dbuf_cap(void **state)
{
    struct al_dbuf b;

    (void)state;
    al_dbuf_init(&b, 8);
    assert_int_equal(al_dbuf_adds(&b, "12345"), AL_OK);
    assert_int_equal(al_dbuf_adds(&b, "678"), AL_OK);
    assert_int_equal(al_dbuf_adds(&b, "9"), AL_DECLINED);
    assert_string_equal(b.data, "12345678");
    al_dbuf_free(&b);
}

static void
test_alloc_failure_is_reported(void **state)
{
    struct al_dbuf b;

    (void)state;
    al_dbuf_init(&b, 1024);
    al_mem_fail_after(1);
    assert_int_equal(al_dbuf_adds(&b, "x"), AL_ERROR);
    assert_int_equal(al_dbuf_adds(&b, "x"), AL_OK);
    al_dbuf_free(&b);
}

static void
test_json_locations(void **state)
{
    static const char text[] = "{\n  \"a\": 1,\n  \"rules\": [\n    {\"name\": \"x\"},\n"
                               "    {\"name\": \"y\", \"hosts\": [\"a\", 7]}\n  ]\n}\n";
    struct al_errs    errs;
    struct al_json   *doc;
    unsigned          line, col;

    (void)state;
    al_errs_init(&errs);
    doc = al_json_parse("p.json", text, strlen(text), &errs);
    assert_non_null(doc);
    al_json_locate(doc, "rules[1].hosts[1]", &line, &col);
    assert_int_equal(line, 5);
    assert_int_equal(col, 34);
    al_json_locate(doc, "a", &line, &col);
    assert_int_equal(line, 2);
    assert_int_equal(col, 8);
    al_json_err(&errs, doc, "rules[1].hosts[1]", "expected a string");
    assert_int_equal(errs.count, 1);
    assert_string_equal(errs.text.data, "p.json:5:34: rules[1].hosts[1]: expected a string\n");
    al_json_free(doc);
    al_errs_free(&errs);
}

static void
test_json_syntax_error_location(void **state)
{
    static const char text[] = "{\n  \"a\": 1,\n  \"b\": [1, 2,, 3]\n}\n";
    struct al_errs    errs;

    (void)state;
    al_errs_init(&errs);
    assert_null(al_json_parse("bad.json", text, strlen(text), &errs));
    assert_int_equal(errs.count, 1);
    assert_non_null(strstr(errs.text.data, "bad.json:3:"));
    al_errs_free(&errs);
}

static void
test_durations(void **state)
{
    int64_t s;

    (void)state;
    assert_int_equal(al_parse_duration("90s", &s), AL_OK);
    assert_int_equal(s, 90);
    assert_int_equal(al_parse_duration("15m", &s), AL_OK);
    assert_int_equal(s, 900);
    assert_int_equal(al_parse_duration("2h", &s), AL_OK);
    assert_int_equal(s, 7200);
    assert_int_equal(al_parse_duration("7d", &s), AL_OK);
    assert_int_equal(s, 7 * 86400);
    assert_int_equal(al_parse_duration("", &s), AL_ERROR);
    assert_int_equal(al_parse_duration("-5m", &s), AL_ERROR);
    assert_int_equal(al_parse_duration("5x", &s), AL_ERROR);
    assert_int_equal(al_parse_duration("m", &s), AL_ERROR);
}

static void
test_strlcpy(void **state)
{
    char small[6], big[16];

    (void)state;
    al_strlcpy(big, sizeof(big), "sandbox-1");
    assert_string_equal(big, "sandbox-1");
    al_strlcpy(small, sizeof(small), "sandbox-1");
    assert_string_equal(small, "sandb"); /* truncated, terminated */
    al_strlcpy(small, sizeof(small), "");
    assert_string_equal(small, "");
    al_strlcpy_n(big, sizeof(big), "/v1/models?x", 10);
    assert_string_equal(big, "/v1/models");
    al_strlcpy_n(small, sizeof(small), "/v1/models", 10);
    assert_string_equal(small, "/v1/m");
    al_strlcpy_n(big, sizeof(big), "ab\0cd", 5); /* a NUL ends the copy */
    assert_string_equal(big, "ab");
    al_strlcpy_n(big, sizeof(big), "abc", 0);
    assert_string_equal(big, "");
}

static void
test_path_join(void **state)
{
    char *p;

    (void)state;
    p = al_path_join_dir("/etc/airlock/airlock.json", "policy.json");
    assert_string_equal(p, "/etc/airlock/policy.json");
    al_free(p);
    p = al_path_join_dir("/etc/airlock/airlock.json", "/abs/p.json");
    assert_string_equal(p, "/abs/p.json");
    al_free(p);
    p = al_path_join_dir("airlock.json", "p.json");
    assert_string_equal(p, "p.json");
    al_free(p);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bufq_roundtrip_across_chunks),
        cmocka_unit_test(test_bufq_reserve_commit),
        cmocka_unit_test(test_dbuf_cap),
        cmocka_unit_test(test_strlcpy),
        cmocka_unit_test(test_alloc_failure_is_reported),
        cmocka_unit_test(test_json_locations),
        cmocka_unit_test(test_json_syntax_error_location),
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_path_join),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
