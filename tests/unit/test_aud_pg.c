/*
 * test_aud_pg.c - the pure parts of the fleet sink: connection strings with
 * their password masked (URI user info, URI ?password=, key=value, quoted
 * values, cut buffers), libpq messages scrubbed, conninfo checks whose
 * errors never carry the password, the COPY text line of a row (escapes,
 * invalid UTF-8, inet + port, jsonb secrets, NULL client, pending, µs
 * timestamps), day numbers of partitions, and the PostgreSQL dialect of the
 * read side's WHERE clause ($n parameters, never a value in the SQL).
 * No database: the shipper itself runs against a real PostgreSQL in
 * tests/integration/test_fleet.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "audit/aud_pg.h"

static void
mask_is(const char *in, const char *want)
{
    char out[256];

    aud_pg_mask(in, out, sizeof(out));
    if (strcmp(out, want) != 0)
        fail_msg("mask(%s) = %s, want %s", in, out, want);
}

static void
test_mask(void **state)
{
    char out[8];

    (void)state;
    mask_is("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db");
    mask_is("postgres://u:p%40ss:x@h/db?sslmode=verify-full",
            "postgres://u:***@h/db?sslmode=verify-full");
    mask_is("postgresql://u@h/db?password=pw&sslmode=require",
            "postgresql://u@h/db?password=***&sslmode=require");
    mask_is("postgresql://u@h/db?sslmode=require&password=pw",
            "postgresql://u@h/db?sslmode=require&password=***");
    mask_is("postgresql://h/db", "postgresql://h/db");
    mask_is("postgresql://u:pw@h", "postgresql://u:***@h");
    mask_is("host=h password=pw user=u", "host=h password=*** user=u");
    mask_is("host=h password = 'p w\\'x' dbname=d", "host=h password = *** dbname=d");
    mask_is("password=pw", "password=***");
    mask_is("host=h passwordx=1", "host=h passwordx=1");
    mask_is("", "");
    aud_pg_mask("postgresql://user:secretpw@host/db", out, sizeof(out));
    assert_int_equal(strlen(out), sizeof(out) - 1); /* cut, terminated */
    assert_null(strstr(out, "secret"));
}

static void
test_scrub(void **state)
{
    char a[] = "auth failed: pw=hunter2 (hunter2)\n";
    char b[] = "x ab y ab\n\n";
    char c[] = "nothing here \r\n";

    (void)state;
    assert_string_equal(aud_pg_scrub(a, "hunter2"), "auth failed: pw=*** (***)");
    assert_string_equal(aud_pg_scrub(b, "ab"), "x ** y **");
    assert_string_equal(aud_pg_scrub(c, NULL), "nothing here");
    assert_null(aud_pg_scrub(NULL, "x"));
}

static void
test_check(void **state)
{
    struct al_errs errs;
    char           desc[128];

    (void)state;
    al_errs_init(&errs);
    assert_int_equal(
        aud_pg_check("postgresql://audit:S3cr3t@db.example:6432/fleet", desc, sizeof(desc), &errs),
        AL_OK);
    assert_string_equal(desc, "audit@db.example:6432/fleet");
    assert_int_equal(
        aud_pg_check("host=10.0.0.5 user=a password=S3cr3t dbname=x", desc, sizeof(desc), &errs),
        AL_OK);
    assert_string_equal(desc, "a@10.0.0.5:5432/x");
    assert_int_equal(errs.count, 0);
    assert_int_equal(aud_pg_check("postgresql://u:S3cr3t@[::1/db", desc, sizeof(desc), &errs),
                     AL_ERROR);
    assert_int_equal(aud_pg_check("host=h password=S3cr3t bogus", desc, sizeof(desc), &errs),
                     AL_ERROR);
    assert_int_equal(aud_pg_check("host=h password='S3cr3t", desc, sizeof(desc), &errs), AL_ERROR);
    assert_int_equal(aud_pg_check("", desc, sizeof(desc), &errs), AL_ERROR);
    assert_int_equal(errs.count, 4);
    assert_non_null(strstr(errs.text.data, "audit.sink.postgres: invalid connection string"));
    assert_null(strstr(errs.text.data, "S3cr3t"));
    al_errs_free(&errs);
    assert_true(aud_pg_is_uri("postgresql://x"));
    assert_true(aud_pg_is_uri("postgres://x"));
    assert_false(aud_pg_is_uri("var/audit.db"));
    assert_false(aud_pg_is_uri("postgresql:/x"));
}

static void
copy_is(const struct aud_record *r, const char *want)
{
    struct al_dbuf b;

    al_dbuf_init(&b, 1 << 20);
    assert_int_equal(aud_pg_copy_row(&b, "rep-1", r), AL_OK);
    if (strcmp(b.data, want) != 0)
        fail_msg("copy line\n got: %s\nwant: %s", b.data, want);
    al_dbuf_free(&b);
}

static void
test_copy_row(void **state)
{
    struct aud_record r;

    (void)state;
    memset(&r, 0, sizeof(r));
    r.row_id = 7;
    r.ts_us = 1714564800123456LL; /* 2024-05-01T12:00:00.123456Z */
    r.duration_us = 42;
    r.conn_id = 9;
    strcpy(r.sandbox, "sb");
    strcpy(r.client, "10.0.0.1:443");
    strcpy(r.method, "GET");
    strcpy(r.scheme, "http");
    strcpy(r.host, "h.test");
    r.port = 80;
    strcpy(r.path, "/a\tb\\c\nd\re");
    strcpy(r.decision, "allow");
    strcpy(r.secrets, "api,db \"x\"");
    r.status = 200;
    r.bytes_up = 1;
    r.bytes_down = 2;
    strcpy(r.sni, "s.test");
    copy_is(&r,
            "rep-1\t7\t2024-05-01 12:00:00.123456+00\t42\t9\tsb\t\t\t10.0.0.1\t443\t\tGET\t"
            "http\th.test\t80\t/a\\tb\\\\c\\nd\\re\t\t\tallow\t\t\t[\"api\",\"db \\\\\"x\\\\\"\"]"
            "\t200\t1\t2\t\tf\ts.test\t\t\n");
    /* IPv6 client, invalid UTF-8 kept as text, no secrets, pending, before 1970 */
    memset(&r, 0, sizeof(r));
    r.row_id = 1;
    r.ts_us = -1;
    strcpy(r.client, "[::1]:5555");
    strcpy(r.path, "/\xff\xc3\xa9\xe2\x82");
    r.pending = 1;
    copy_is(&r, "rep-1\t1\t1969-12-31 23:59:59.999999+00\t0\t0\t\t\t\t::1\t5555\t\t\t\t\t0\t"
                "/\\\\xFF\xc3\xa9\\\\xE2\\\\x82\t\t\t\t\t\t[]\t0\t0\t0\t\tt\t\t\t\n");
    /* a five-digit year (a broken clock): still a valid timestamp */
    memset(&r, 0, sizeof(r));
    r.ts_us = 253402300800000001LL; /* 10000-01-01T00:00:00.000001Z */
    {
        struct al_dbuf b;

        al_dbuf_init(&b, 1 << 20);
        assert_int_equal(aud_pg_copy_row(&b, "i", &r), AL_OK);
        assert_non_null(strstr(b.data, "\t10000-01-01 00:00:00.000001+00\t"));
        al_dbuf_free(&b);
    }
    /* a client that is not an address: NULL inet, port 0 */
    memset(&r, 0, sizeof(r));
    strcpy(r.client, "unix:socket");
    strcpy(r.secrets, ",a,,b,");
    {
        struct al_dbuf b;

        al_dbuf_init(&b, 1 << 20);
        assert_int_equal(aud_pg_copy_row(&b, "i", &r), AL_OK);
        assert_non_null(strstr(b.data, "\t\\N\t0\t"));
        assert_non_null(strstr(b.data, "\t[\"a\",\"b\"]\t"));
        al_dbuf_free(&b);
    }
}

static void
test_day(void **state)
{
    (void)state;
    assert_int_equal(aud_pg_day(0), 0);
    assert_int_equal(aud_pg_day(86400LL * 1000000 - 1), 0);
    assert_int_equal(aud_pg_day(86400LL * 1000000), 1);
    assert_int_equal(aud_pg_day(-1), -1);
    assert_int_equal(aud_pg_day(1714564800123456LL), 19844); /* 2024-05-01 */
}

static void
test_where(void **state)
{
    struct aud_filter    f;
    struct aud_pg_params p;
    struct al_dbuf       sql;

    (void)state;
    memset(&f, 0, sizeof(f));
    al_dbuf_init(&sql, 1 << 16);
    assert_int_equal(aud_pg_where(&sql, &p, &f), AL_OK);
    assert_int_equal(p.n, 0);
    assert_true(sql.data == NULL || sql.len == 0);
    f.since_us = 1000;
    f.until_us = 2000;
    f.instance = "rep'1";
    f.sandbox = "sb";
    f.tool_call = "";
    f.host = "*.Ex_am%ple";
    f.decision = "deny";
    f.secret = "api";
    f.status_lo = 500;
    f.status_hi = 599;
    f.after_id = 77;
    assert_int_equal(aud_pg_where(&sql, &p, &f), AL_OK);
    assert_string_equal(sql.data,
                        " WHERE ts >= 'epoch'::timestamptz + $1::bigint * interval '1 microsecond'"
                        " AND ts < 'epoch'::timestamptz + $2::bigint * interval '1 microsecond'"
                        " AND instance = $3 AND sandbox = $4 AND sandbox <> '' AND tool_call = $5"
                        " AND host LIKE $6 ESCAPE '\\' AND decision = $7 AND decision <> 'allow'"
                        " AND (secrets ? $8 OR error = reason || ': ' || $8)"
                        " AND status >= $9::int AND status <= $10::int");
    assert_int_equal(p.n, 10); /* after_id: PostgreSQL follows by marks, not ids */
    assert_string_equal(p.v[0], "1000");
    assert_string_equal(p.v[1], "2000");
    assert_string_equal(p.v[2], "rep'1");
    assert_string_equal(p.v[4], "");
    assert_string_equal(p.v[5], "%.ex\\_am\\%ple");
    assert_string_equal(p.v[7], "api");
    assert_string_equal(p.v[8], "500");
    assert_string_equal(p.v[9], "599");
    /* an exact host is lower-cased and compared with = */
    memset(&f, 0, sizeof(f));
    f.host = "API.Test";
    al_dbuf_reset(&sql);
    assert_int_equal(aud_pg_where(&sql, &p, &f), AL_OK);
    assert_string_equal(sql.data, " WHERE host = $1");
    assert_string_equal(p.v[0], "api.test");
    al_dbuf_free(&sql);
}

/* The completion statement: every column but the key taken from the
 * completed row, only over a row still pending, never ahead of the mark. */
static void
test_complete_sql(void **state)
{
    struct al_dbuf b;
    char           cols[1024], *save = NULL;
    int            n = 0;

    (void)state;
    al_dbuf_init(&b, 1 << 16);
    assert_int_equal(aud_pg_complete_sql(&b), AL_OK);
    assert_non_null(strstr(b.data, "INSERT INTO requests (instance, id, ts, "));
    assert_non_null(strstr(b.data, "FROM " AUD_PG_DONE_TABLE " d WHERE d.id <= (SELECT "));
    assert_non_null(strstr(b.data, " ON CONFLICT (instance, id, ts) DO UPDATE SET duration_us = "
                                   "excluded.duration_us, conn_id = excluded.conn_id, "));
    assert_non_null(strstr(b.data, ", pending = excluded.pending, sni = excluded.sni, addr = "
                                   "excluded.addr, detail = excluded.detail WHERE "
                                   "requests.pending"));
    assert_null(strstr(b.data, "instance = excluded"));
    assert_null(strstr(b.data, " id = excluded"));
    assert_null(strstr(b.data, " ts = excluded"));
    snprintf(cols, sizeof(cols), "%s", aud_pg_copy_cols);
    for (char *c = strtok_r(cols, ", ", &save); c != NULL; c = strtok_r(NULL, ", ", &save)) {
        char want[64];

        if (strcmp(c, "instance") == 0 || strcmp(c, "id") == 0 || strcmp(c, "ts") == 0)
            continue;
        snprintf(want, sizeof(want), " %s = excluded.%s", c, c);
        assert_non_null(strstr(b.data, want));
        n++;
    }
    assert_int_equal(n, 27);
    al_dbuf_free(&b);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mask),         cmocka_unit_test(test_scrub),
        cmocka_unit_test(test_check),        cmocka_unit_test(test_copy_row),
        cmocka_unit_test(test_day),          cmocka_unit_test(test_where),
        cmocka_unit_test(test_complete_sql),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
