/*
 * test_aud_cli.c - `airlock audit` CLI and the read side: time parsing,
 * flag validation (exit 2 naming the flag and value), hostile filter values
 * as bound parameters, host globs, output escaping, csv quoting, json/jsonl
 * validity, table width, stats, tail; the batched read side (same rows and
 * order as one SELECT, no read transaction open while a callback runs).
 * Temp dirs are removed at the end.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "audit/aud_int.h"

/* 2024-05-01T12:00:00Z */
#define AUD_T_NOW_US (1714564800LL * 1000000)

struct aud_t_env {
    char dir[64];
    char db[128];
};

static int
aud_t_rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static struct aud_record *
aud_t_rec(int64_t ts, const char *sandbox, const char *tool, const char *host, const char *path,
          const char *decision, int status, const char *secrets)
{
    struct aud_record *r = aud_record_new();

    assert_non_null(r);
    r->ts_us = ts;
    r->duration_us = 1500;
    snprintf(r->sandbox, sizeof(r->sandbox), "%s", sandbox);
    snprintf(r->tool_call, sizeof(r->tool_call), "%s", tool);
    snprintf(r->method, sizeof(r->method), "GET");
    snprintf(r->scheme, sizeof(r->scheme), "https");
    snprintf(r->host, sizeof(r->host), "%s", host);
    r->port = 443;
    snprintf(r->path, sizeof(r->path), "%s", path);
    snprintf(r->decision, sizeof(r->decision), "%s", decision);
    snprintf(r->rule, sizeof(r->rule), "%s", strcmp(decision, "allow") == 0 ? "r-allow" : "");
    snprintf(r->secrets, sizeof(r->secrets), "%s", secrets);
    r->status = status;
    r->bytes_up = 100;
    r->bytes_down = 1000;
    return r;
}

static int
aud_t_setup(void **state)
{
    struct aud_t_env  *e = calloc(1, sizeof(*e));
    struct aud_conf    conf;
    struct al_errs     errs;
    struct aud_writer *w;
    int64_t            h = 3600LL * 1000000;

    snprintf(e->dir, sizeof(e->dir), "/tmp/aud_cli.XXXXXX");
    assert_non_null(mkdtemp(e->dir));
    snprintf(e->db, sizeof(e->db), "%s/audit.db", e->dir);
    memset(&conf, 0, sizeof(conf));
    conf.db_path = e->db;
    al_errs_init(&errs);
    w = aud_writer_start(&conf, &errs);
    al_errs_free(&errs);
    assert_non_null(w);
    /* ids 1..9, in this order */
    aud_submit(w,
               aud_t_rec(AUD_T_NOW_US - 48 * h, "dev", "t1", "old.example", "/", "allow", 200, ""));
    aud_submit(w, aud_t_rec(AUD_T_NOW_US - 2 * h, "dev", "t1", "api.github.com", "/repos", "allow",
                            200, "github_token"));
    aud_submit(w, aud_t_rec(AUD_T_NOW_US - h / 2, "dev", "t2", "api.github.com", "/user", "allow",
                            201, "github_token,npm_token"));
    aud_submit(w, aud_t_rec(AUD_T_NOW_US - h / 4, "ci", "", "evil.test", "/x", "deny", 403, ""));
    aud_submit(w, aud_t_rec(AUD_T_NOW_US - h / 4, "a'b", "", "x%y.com", "/q", "deny", 403, ""));
    aud_submit(w,
               aud_t_rec(AUD_T_NOW_US - h / 4, "a%b", "", "x_y.com", "/q", "would_deny", 200, ""));
    aud_submit(
        w, aud_t_rec(AUD_T_NOW_US - h / 4, "aXb", "", "xay.com", "/q", "error", 502, "npm_token"));
    aud_submit(w, aud_t_rec(AUD_T_NOW_US - h / 4, "a_b", "=cmd()", "esc\x1b[31m.test", "/a,b\"c\nd",
                            "deny", 403, ""));
    aud_submit(w, aud_t_rec(AUD_T_NOW_US - h / 8, "dev", "t3",
                            "a-very-long-host-name-that-will-not-fit.example.com",
                            "/a/very/long/path/that/will/be/cut", "allow", 200, ""));
    aud_writer_stop(w);
    *state = e;
    return 0;
}

static int
aud_t_teardown(void **state)
{
    struct aud_t_env *e = *state;

    nftw(e->dir, aud_t_rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    free(e);
    return 0;
}

struct aud_t_out {
    char *out, *err;
    int   code;
};

static void
aud_t_out_free(struct aud_t_out *o)
{
    free(o->out);
    free(o->err);
}

static char *
aud_t_slurp(FILE *f)
{
    long  n;
    char *buf;

    fflush(f);
    n = ftell(f);
    buf = calloc(1, (size_t)n + 1);
    rewind(f);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    return buf;
}

/* Runs the CLI with args (NULL-terminated, after "audit"), db inserted by `--db` when db != NULL.
 */
static struct aud_t_out
aud_t_cli(const char *db, ...)
{
    char            *argv[64];
    int              argc = 0;
    va_list          ap;
    const char      *a;
    FILE            *out = tmpfile(), *err = tmpfile();
    struct aud_t_out o;

    argv[argc++] = (char *)(uintptr_t) "audit";
    va_start(ap, db);
    a = va_arg(ap, const char *);
    argv[argc++] = (char *)(uintptr_t)a; /* subcommand */
    if (db != NULL) {
        argv[argc++] = (char *)(uintptr_t) "--db";
        argv[argc++] = (char *)(uintptr_t)db;
    }
    while ((a = va_arg(ap, const char *)) != NULL)
        argv[argc++] = (char *)(uintptr_t)a;
    va_end(ap);
    argv[argc] = NULL;
    o.code = aud_cli_run(argc, argv, out, err, AUD_T_NOW_US);
    o.out = aud_t_slurp(out);
    o.err = aud_t_slurp(err);
    return o;
}

static int
aud_t_count_lines(const char *s)
{
    int n = 0;

    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* Rows of a --format json answer (validated with cJSON). */
static int
aud_t_json_rows(const char *s)
{
    cJSON *j = cJSON_Parse(s);
    int    n;

    assert_non_null(j);
    assert_true(cJSON_IsArray(j));
    n = cJSON_GetArraySize(j);
    cJSON_Delete(j);
    return n;
}

static void
test_aud_parse_time(void **state)
{
    int64_t t;

    (void)state;
    assert_int_equal(aud_parse_time("15m", AUD_T_NOW_US, &t), AL_OK);
    assert_int_equal(t, AUD_T_NOW_US - 900LL * 1000000);
    assert_int_equal(aud_parse_time("7d", AUD_T_NOW_US, &t), AL_OK);
    assert_int_equal(t, AUD_T_NOW_US - 7LL * 86400 * 1000000);
    assert_int_equal(aud_parse_time("90s", AUD_T_NOW_US, &t), AL_OK);
    assert_int_equal(aud_parse_time("2024-05-01T12:00:00Z", 0, &t), AL_OK);
    assert_int_equal(t, AUD_T_NOW_US);
    assert_int_equal(aud_parse_time("2024-05-01t14:00:00.5+02:00", 0, &t), AL_OK);
    assert_int_equal(t, AUD_T_NOW_US + 500000);
    assert_int_equal(aud_parse_time("2024-05-01T11:00:00-01:00", 0, &t), AL_OK);
    assert_int_equal(t, AUD_T_NOW_US);
    assert_int_equal(aud_parse_time("2024-05-01", 0, &t), AL_OK);
    assert_int_equal(t, AUD_T_NOW_US - 12LL * 3600 * 1000000);
    assert_int_equal(aud_parse_time("2024-02-29T00:00:00Z", 0, &t), AL_OK);
    const char *bad[] = {"",
                         "15x",
                         "-5m",
                         "m",
                         "2023-02-29T00:00:00Z",
                         "2024-13-01T00:00:00Z",
                         "2024-05-01T12:00:00",
                         "2024-05-01T25:00:00Z",
                         "2024-05-01T12:00Z",
                         "2024-05-01T12:00:00Zjunk",
                         "2024-05-01T12:00:00.Z",
                         "24-05-01",
                         "99999999999999999999d"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(aud_parse_time(bad[i], AUD_T_NOW_US, &t), AL_ERROR);
}

static void
test_aud_cli_bad_flags(void **state)
{
    struct aud_t_env *e = *state;
    struct aud_t_out  o;

    o = aud_t_cli(e->db, "query", "--since", "yesterday", NULL);
    assert_int_equal(o.code, 2);
    assert_non_null(strstr(o.err, "--since"));
    assert_non_null(strstr(o.err, "\"yesterday\""));
    aud_t_out_free(&o);
    o = aud_t_cli(e->db, "query", "--until=2024-13-01T00:00:00Z", NULL);
    assert_int_equal(o.code, 2);
    assert_non_null(strstr(o.err, "--until"));
    aud_t_out_free(&o);
    o = aud_t_cli(e->db, "query", "--decision", "maybe", NULL);
    assert_int_equal(o.code, 2);
    assert_non_null(strstr(o.err, "--decision: invalid value \"maybe\""));
    aud_t_out_free(&o);
    o = aud_t_cli(e->db, "query", "--status", "abc", NULL);
    assert_int_equal(o.code, 2);
    aud_t_out_free(&o);
    o = aud_t_cli(e->db, "query", "--limit", "-1", NULL);
    assert_int_equal(o.code, 2);
    aud_t_out_free(&o);
    o = aud_t_cli(e->db, "query", "--format", "xml", NULL);
    assert_int_equal(o.code, 2);
    assert_non_null(strstr(o.err, "--format"));
    aud_t_out_free(&o);
    o = aud_t_cli(e->db, "query", "--bogus", NULL);
    assert_int_equal(o.code, 2);
    assert_non_null(strstr(o.err, "unknown flag --bogus"));
    aud_t_out_free(&o);
    o = aud_t_cli(e->db, "query", "--sandbox", NULL);
    assert_int_equal(o.code, 2);
    assert_non_null(strstr(o.err, "--sandbox needs a value"));
    aud_t_out_free(&o);
    o = aud_t_cli(e->db, "query", "--since", "1h", "--until", "2h", NULL);
    assert_int_equal(o.code, 2);
    aud_t_out_free(&o);
    o = aud_t_cli(e->db, "stats", "--by", "color", NULL);
    assert_int_equal(o.code, 2);
    aud_t_out_free(&o);
    o = aud_t_cli(e->db, "tail", "--limit", "5", NULL); /* tail takes -n */
    assert_int_equal(o.code, 2);
    aud_t_out_free(&o);
    o = aud_t_cli(NULL, "query", NULL);
    assert_int_equal(o.code, 2);
    assert_non_null(strstr(o.err, "--db"));
    aud_t_out_free(&o);
    o = aud_t_cli(e->db, "frobnicate", NULL);
    assert_int_equal(o.code, 2);
    aud_t_out_free(&o);
    /* a hostile value in a message is escaped too */
    o = aud_t_cli(e->db, "query", "--decision", "\x1b]0;pwned\x07", NULL);
    assert_int_equal(o.code, 2);
    assert_null(strchr(o.err, '\x1b'));
    assert_non_null(strstr(o.err, "\\x1b]0;pwned\\x07"));
    aud_t_out_free(&o);
    /* missing file: runtime failure, 1 */
    o = aud_t_cli("/nonexistent/dir/x.db", "query", NULL);
    assert_int_equal(o.code, 1);
    aud_t_out_free(&o);
}

static int
aud_t_query_n(const char *db, const char *flag, const char *value)
{
    struct aud_t_out o = aud_t_cli(db, "query", "--format", "json", flag, value, NULL);
    int              n;

    if (o.code != 0)
        fprintf(stderr, "%s", o.err);
    assert_int_equal(o.code, 0);
    n = aud_t_json_rows(o.out);
    aud_t_out_free(&o);
    return n;
}

static void
test_aud_cli_filters(void **state)
{
    struct aud_t_env *e = *state;

    assert_int_equal(aud_t_query_n(e->db, "--limit", "0"), 9);
    assert_int_equal(aud_t_query_n(e->db, "--since", "1h"), 7);
    assert_int_equal(aud_t_query_n(e->db, "--since", "3h"), 8);
    assert_int_equal(aud_t_query_n(e->db, "--until", "2024-05-01T11:00:00Z"), 2);
    assert_int_equal(aud_t_query_n(e->db, "--since", "2024-05-01T11:00:00+00:00"), 7);
    assert_int_equal(aud_t_query_n(e->db, "--sandbox", "dev"), 4);
    assert_int_equal(aud_t_query_n(e->db, "--tool-call", "t1"), 2);
    assert_int_equal(aud_t_query_n(e->db, "--decision", "deny"), 3);
    assert_int_equal(aud_t_query_n(e->db, "--status", "4xx"), 3);
    assert_int_equal(aud_t_query_n(e->db, "--status", "201"), 1);
    assert_int_equal(aud_t_query_n(e->db, "--rule", "r-allow"), 4);
    assert_int_equal(aud_t_query_n(e->db, "--secret", "github_token"), 2);
    assert_int_equal(aud_t_query_n(e->db, "--secret", "npm_token"), 2);
    assert_int_equal(aud_t_query_n(e->db, "--secret", "npm"), 0);
    assert_int_equal(aud_t_query_n(e->db, "--limit", "3"), 3);
    /* hostile values are data, not SQL or LIKE syntax */
    assert_int_equal(aud_t_query_n(e->db, "--sandbox", "a'b"), 1);
    assert_int_equal(aud_t_query_n(e->db, "--sandbox", "a%b"), 1);
    assert_int_equal(aud_t_query_n(e->db, "--sandbox", "a_b"), 1);
    assert_int_equal(aud_t_query_n(e->db, "--sandbox", "' OR 1=1 --"), 0);
    assert_int_equal(aud_t_query_n(e->db, "--sandbox", "dev\x01"), 0);
    assert_int_equal(aud_t_query_n(e->db, "--host", "x%y.com"), 1);
    assert_int_equal(aud_t_query_n(e->db, "--host", "x_y.com"), 1);
    assert_int_equal(aud_t_query_n(e->db, "--host", "x_y*"), 1);
    assert_int_equal(aud_t_query_n(e->db, "--host", "x%*"), 1);
    assert_int_equal(aud_t_query_n(e->db, "--host", "x?y.com"), 3);
    assert_int_equal(aud_t_query_n(e->db, "--host", "*.github.com"), 2);
    assert_int_equal(aud_t_query_n(e->db, "--host", "API.GITHUB.COM"), 2);
    assert_int_equal(aud_t_query_n(e->db, "--host", "*"), 9);
    assert_int_equal(aud_t_query_n(e->db, "--host", "[a]*"), 0);
}

static void
test_aud_cli_formats(void **state)
{
    struct aud_t_env *e = *state;
    struct aud_t_out  o;
    cJSON            *j, *row;
    char             *line, *save = NULL;

    /* json: valid, escapes the hostile host, secrets as an array */
    o = aud_t_cli(e->db, "query", "--format", "json", "--sandbox", "dev", "--tool-call", "t2",
                  NULL);
    assert_int_equal(o.code, 0);
    j = cJSON_Parse(o.out);
    assert_non_null(j);
    row = cJSON_GetArrayItem(j, 0);
    assert_string_equal(cJSON_GetObjectItem(row, "host")->valuestring, "api.github.com");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(row, "secrets")), 2);
    assert_string_equal(cJSON_GetObjectItem(row, "ts")->valuestring, "2024-05-01T11:30:00.000000Z");
    cJSON_Delete(j);
    aud_t_out_free(&o);

    o = aud_t_cli(e->db, "query", "--format", "json", "--sandbox", "a_b", NULL);
    assert_int_equal(o.code, 0);
    assert_null(strchr(o.out, '\x1b'));
    j = cJSON_Parse(o.out);
    assert_non_null(j);
    row = cJSON_GetArrayItem(j, 0);
    assert_string_equal(cJSON_GetObjectItem(row, "host")->valuestring, "esc\x1b[31m.test");
    cJSON_Delete(j);
    aud_t_out_free(&o);

    /* jsonl: one object per line */
    o = aud_t_cli(e->db, "query", "--format", "jsonl", NULL);
    assert_int_equal(o.code, 0);
    assert_int_equal(aud_t_count_lines(o.out), 9);
    for (line = strtok_r(o.out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        j = cJSON_Parse(line);
        assert_non_null(j);
        cJSON_Delete(j);
    }
    aud_t_out_free(&o);

    /* csv: header + rows; the hostile row is quoted and escaped */
    o = aud_t_cli(e->db, "query", "--format", "csv", "--sandbox", "a_b", NULL);
    assert_int_equal(o.code, 0);
    assert_int_equal(aud_t_count_lines(o.out), 2);
    assert_non_null(strstr(o.out, "id,ts,ts_us,"));
    assert_non_null(strstr(o.out, ",'=cmd(),"));
    assert_non_null(strstr(o.out, ",esc\\x1b[31m.test,"));
    assert_non_null(strstr(o.out, ",\"/a,b\"\"c\\x0ad\","));
    assert_null(strchr(o.out, '\x1b'));
    aud_t_out_free(&o);

    /* table: header + rows, no line wider than 120 columns, no raw escapes */
    o = aud_t_cli(e->db, "query", NULL);
    assert_int_equal(o.code, 0);
    assert_int_equal(aud_t_count_lines(o.out), 10);
    assert_null(strchr(o.out, '\x1b'));
    assert_non_null(strstr(o.out, "TIME(UTC)"));
    assert_non_null(strstr(o.out, "dev/t1"));
    assert_non_null(strstr(o.out, "a-very-long-host-n~"));
    assert_non_null(strstr(o.out, "RULE/REASON"));
    for (line = strtok_r(o.out, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
        assert_true(strlen(line) <= 120);
    aud_t_out_free(&o);
}

static void
test_aud_fmt(void **state)
{
    struct al_dbuf b;

    (void)state;
    al_dbuf_init(&b, 4096);
#define AUD_T_CSV(in, want)                                                                        \
    do {                                                                                           \
        al_dbuf_reset(&b);                                                                         \
        assert_int_equal(aud_fmt_csv(&b, (in)), AL_OK);                                            \
        assert_string_equal(b.data, (want));                                                       \
    } while (0)
    AUD_T_CSV("plain", "plain");
    AUD_T_CSV("", "");
    AUD_T_CSV("a,b", "\"a,b\"");
    AUD_T_CSV("say \"hi\"", "\"say \"\"hi\"\"\"");
    AUD_T_CSV("line\r\nbreak", "line\\x0d\\x0abreak");
    AUD_T_CSV(" lead", "\" lead\"");
    AUD_T_CSV("=1+1", "'=1+1");
    AUD_T_CSV("@SUM(A1)", "'@SUM(A1)");
    AUD_T_CSV("back\\slash", "back\\\\slash");
    AUD_T_CSV("caf\xc3\xa9", "caf\\xc3\\xa9");
#define AUD_T_JSON(in, want)                                                                       \
    do {                                                                                           \
        al_dbuf_reset(&b);                                                                         \
        assert_int_equal(aud_fmt_json_str(&b, (in)), AL_OK);                                       \
        assert_string_equal(b.data, (want));                                                       \
    } while (0)
    AUD_T_JSON("a\"b\\c", "\"a\\\"b\\\\c\"");
    AUD_T_JSON("\x1b[2J", "\"\\u001b[2J\"");
    AUD_T_JSON("caf\xc3\xa9", "\"caf\xc3\xa9\"");
    AUD_T_JSON("\xc2\x9b"
               "31m",
               "\"\\u009b31m\"");
    AUD_T_JSON("bad\xff", "\"bad\\\\xff\"");
    AUD_T_JSON("\xed\xa0\x80", "\"\\\\xed\\\\xa0\\\\x80\"");
    al_dbuf_reset(&b);
    assert_int_equal(aud_fmt_cell(&b, "abcdef", 4, 0), AL_OK);
    assert_string_equal(b.data, "abc~");
    al_dbuf_reset(&b);
    assert_int_equal(aud_fmt_cell(&b, "ab", 4, 1), AL_OK);
    assert_string_equal(b.data, "  ab");
    al_dbuf_free(&b);
}

static void
test_aud_cli_stats(void **state)
{
    struct aud_t_env *e = *state;
    struct aud_t_out  o;
    cJSON            *j, *a;

    o = aud_t_cli(e->db, "stats", "--format", "json", NULL);
    assert_int_equal(o.code, 0);
    j = cJSON_Parse(o.out);
    assert_non_null(j);
    assert_int_equal(cJSON_GetObjectItem(j, "total")->valueint, 9);
    assert_int_equal(cJSON_GetObjectItem(j, "bytes_up")->valueint, 900);
    a = cJSON_GetObjectItem(j, "decisions");
    assert_int_equal(cJSON_GetObjectItem(a, "allow")->valueint, 4);
    assert_int_equal(cJSON_GetObjectItem(a, "deny")->valueint, 3);
    a = cJSON_GetObjectItem(j, "top_hosts");
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(a, 0), "key")->valuestring,
                        "api.github.com");
    a = cJSON_GetObjectItem(j, "top_denied_hosts");
    assert_int_equal(cJSON_GetArraySize(a), 4);
    a = cJSON_GetObjectItem(j, "secrets");
    assert_int_equal(cJSON_GetArraySize(a), 2);
    cJSON_Delete(j);
    aud_t_out_free(&o);

    o = aud_t_cli(e->db, "stats", "--format", "json", "--by", "secret", "--since", "1h", NULL);
    assert_int_equal(o.code, 0);
    j = cJSON_Parse(o.out);
    assert_non_null(j);
    a = cJSON_GetObjectItem(j, "groups");
    assert_int_equal(cJSON_GetArraySize(a),
                     2); /* github_token (1 in the last hour), npm_token (2) */
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(a, 0), "key")->valuestring,
                        "npm_token");
    cJSON_Delete(j);
    aud_t_out_free(&o);

    o = aud_t_cli(e->db, "stats", "--by", "tool-call", NULL);
    assert_int_equal(o.code, 0);
    assert_non_null(strstr(o.out, "by tool-call"));
    assert_non_null(strstr(o.out, "t1"));
    assert_null(strchr(o.out, '\x1b'));
    aud_t_out_free(&o);

    o = aud_t_cli(e->db, "stats", NULL);
    assert_int_equal(o.code, 0);
    assert_non_null(strstr(o.out, "requests: 9"));
    assert_non_null(strstr(o.out, "top denied hosts"));
    assert_non_null(strstr(o.out, "esc\\x1b[31m.test"));
    aud_t_out_free(&o);
}

static void
test_aud_cli_tail(void **state)
{
    struct aud_t_env *e = *state;
    struct aud_t_out  o;

    o = aud_t_cli(e->db, "tail", "-n", "2", "--format", "jsonl", NULL);
    assert_int_equal(o.code, 0);
    assert_int_equal(aud_t_count_lines(o.out), 2);
    assert_non_null(strstr(o.out, "\"id\":8"));
    assert_non_null(strstr(o.out, "\"id\":9"));
    assert_true(strstr(o.out, "\"id\":8") < strstr(o.out, "\"id\":9"));
    aud_t_out_free(&o);
    o = aud_t_cli(e->db, "tail", "--format", "json", NULL);
    assert_int_equal(o.code, 0);
    assert_int_equal(aud_t_json_rows(o.out), 9);
    aud_t_out_free(&o);
}

/* ---- batched read side ------------------------------------------------ */

#ifndef AUD_QUERY_BATCH
#define AUD_QUERY_BATCH 1000
#endif
#define AUD_T_BIG (2 * AUD_QUERY_BATCH + 537)

struct aud_t_ids {
    int64_t *id, *ts;
    int      n, cap;
    sqlite3 *w;       /* a second, writing connection (NULL: none) */
    int      ckpt_ok; /* TRUNCATE checkpoints that emptied the WAL during callbacks */
    int      ckpt_busy;
    int64_t  inserted;
};

static int
aud_t_ids_cb(void *arg, const struct aud_record *r)
{
    struct aud_t_ids *x = arg;

    if (x->n == x->cap) {
        x->cap = x->cap ? 2 * x->cap : 1024;
        x->id = realloc(x->id, (size_t)x->cap * sizeof(*x->id));
        x->ts = realloc(x->ts, (size_t)x->cap * sizeof(*x->ts));
        assert_non_null(x->id);
        assert_non_null(x->ts);
    }
    x->id[x->n] = r->row_id;
    x->ts[x->n] = r->ts_us;
    x->n++;
    if (x->w != NULL && x->n % 500 == 1) {
        int nlog = -1, nckpt = -1, rc;

        /* While a reader's callback runs (the CLI writing to a blocked
         * stdout), the writer commits and a TRUNCATE checkpoint must get
         * through: no read transaction may be open here. */
        assert_int_equal(sqlite3_exec(x->w,
                                      "INSERT INTO requests (ts, host) VALUES (1, 'during.test')",
                                      NULL, NULL, NULL),
                         SQLITE_OK);
        x->inserted++;
        rc = sqlite3_wal_checkpoint_v2(x->w, NULL, SQLITE_CHECKPOINT_TRUNCATE, &nlog, &nckpt);
        if (rc == SQLITE_OK && nlog == 0)
            x->ckpt_ok++;
        else
            x->ckpt_busy++;
    }
    return AL_OK;
}

static void
aud_t_ids_free(struct aud_t_ids *x)
{
    free(x->id);
    free(x->ts);
    memset(x, 0, sizeof(*x));
}

/* The ids sqlite returns for `sql` (one statement, one snapshot). */
static struct aud_t_ids
aud_t_sql_ids(const char *db, const char *sql)
{
    struct aud_t_ids x;
    sqlite3         *c = NULL;
    sqlite3_stmt    *st = NULL;

    memset(&x, 0, sizeof(x));
    assert_int_equal(sqlite3_open_v2(db, &c, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(c, sql, -1, &st, NULL), SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW) {
        struct aud_record r;

        memset(&r, 0, sizeof(r));
        r.row_id = sqlite3_column_int64(st, 0);
        r.ts_us = sqlite3_column_int64(st, 1);
        aud_t_ids_cb(&x, &r);
    }
    sqlite3_finalize(st);
    sqlite3_close(c);
    return x;
}

static void
aud_t_ids_equal(const struct aud_t_ids *got, const struct aud_t_ids *want)
{
    assert_int_equal(got->n, want->n);
    for (int i = 0; i < got->n; i++) {
        if (got->id[i] != want->id[i])
            fail_msg("row %d: id %lld, want %lld", i, (long long)got->id[i],
                     (long long)want->id[i]);
    }
}

/* AUD_T_BIG rows whose ts order is not their id order, with runs of equal
 * ts longer than a batch (the batch cursor must not skip or repeat ties). */
static int
aud_t_big_setup(void **state)
{
    struct aud_t_env  *e = calloc(1, sizeof(*e));
    struct aud_conf    conf;
    struct al_errs     errs;
    struct aud_writer *w;

    snprintf(e->dir, sizeof(e->dir), "/tmp/aud_cli.XXXXXX");
    assert_non_null(mkdtemp(e->dir));
    snprintf(e->db, sizeof(e->db), "%s/audit.db", e->dir);
    memset(&conf, 0, sizeof(conf));
    conf.db_path = e->db;
    conf.queue_max = AUD_T_BIG;
    al_errs_init(&errs);
    w = aud_writer_start(&conf, &errs);
    al_errs_free(&errs);
    assert_non_null(w);
    for (int i = 0; i < AUD_T_BIG; i++) {
        /* 0..1499 share one ts; then ts descend in pairs; every 7th is on b.test */
        int64_t ts = i < 1500 ? AUD_T_NOW_US - 1000 : AUD_T_NOW_US - 10 * (int64_t)(i / 2);

        assert_int_equal(aud_submit(w, aud_t_rec(ts, "dev", "", i % 7 ? "a.test" : "b.test", "/",
                                                 "allow", 200, "")),
                         AL_OK);
    }
    aud_writer_stop(w);
    *state = e;
    return 0;
}

static void
test_aud_query_batches(void **state)
{
    struct aud_t_env *e = *state;
    struct aud_filter f;
    struct aud_t_ids  got, want;
    struct al_errs    errs;
    static const struct {
        int64_t     limit;
        int         by_id;
        const char *host;
        const char *sql;
    } cases[] = {
        {0, 0, NULL, "SELECT id, ts FROM requests ORDER BY ts, id"},
        {0, 1, NULL, "SELECT id, ts FROM requests ORDER BY id"},
        {1, 0, NULL,
         "SELECT * FROM (SELECT id, ts FROM requests ORDER BY ts DESC, id DESC LIMIT 1) "
         "ORDER BY ts, id"},
        {AUD_QUERY_BATCH, 0, NULL,
         "SELECT * FROM (SELECT id, ts FROM requests ORDER BY ts DESC, id DESC LIMIT 1000) "
         "ORDER BY ts, id"},
        {2100, 0, NULL,
         "SELECT * FROM (SELECT id, ts FROM requests ORDER BY ts DESC, id DESC LIMIT 2100) "
         "ORDER BY ts, id"},
        {1234, 1, NULL,
         "SELECT * FROM (SELECT id, ts FROM requests ORDER BY id DESC LIMIT 1234) ORDER BY id"},
        {100000000, 0, NULL, "SELECT id, ts FROM requests ORDER BY ts, id"},
        {250, 0, "b.test",
         "SELECT * FROM (SELECT id, ts FROM requests WHERE host = 'b.test' ORDER BY ts DESC, "
         "id DESC LIMIT 250) ORDER BY ts, id"},
        {0, 0, "b.test", "SELECT id, ts FROM requests WHERE host = 'b.test' ORDER BY ts, id"},
    };

    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        memset(&f, 0, sizeof(f));
        memset(&got, 0, sizeof(got));
        f.limit = cases[k].limit;
        f.by_id = cases[k].by_id;
        f.host = cases[k].host;
        al_errs_init(&errs);
        assert_int_equal(aud_query_each(e->db, &f, aud_t_ids_cb, &got, &errs), AL_OK);
        al_errs_free(&errs);
        want = aud_t_sql_ids(e->db, cases[k].sql);
        aud_t_ids_equal(&got, &want);
        aud_t_ids_free(&got);
        aud_t_ids_free(&want);
    }
}

/* No read transaction is open while a callback runs: a writer's TRUNCATE
 * checkpoint empties the WAL during the callbacks; the rows it commits
 * meanwhile are not part of the answer (the answer is the rows committed
 * when the query started). */
static void
test_aud_query_no_txn_in_callback(void **state)
{
    struct aud_t_env *e = *state;
    struct aud_filter f;
    struct aud_t_ids  got;
    struct al_errs    errs;

    memset(&f, 0, sizeof(f));
    memset(&got, 0, sizeof(got));
    assert_int_equal(sqlite3_open_v2(e->db, &got.w, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    sqlite3_busy_timeout(got.w, 0);
    al_errs_init(&errs);
    assert_int_equal(aud_query_each(e->db, &f, aud_t_ids_cb, &got, &errs), AL_OK);
    al_errs_free(&errs);
    assert_int_equal(got.n, AUD_T_BIG);
    assert_true(got.inserted >= 5);
    assert_int_equal(got.ckpt_busy, 0);
    assert_int_equal(got.ckpt_ok, got.inserted);
    sqlite3_close(got.w);
    aud_t_ids_free(&got);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_aud_parse_time),
        cmocka_unit_test(test_aud_fmt),
        cmocka_unit_test_setup_teardown(test_aud_cli_bad_flags, aud_t_setup, aud_t_teardown),
        cmocka_unit_test_setup_teardown(test_aud_cli_filters, aud_t_setup, aud_t_teardown),
        cmocka_unit_test_setup_teardown(test_aud_cli_formats, aud_t_setup, aud_t_teardown),
        cmocka_unit_test_setup_teardown(test_aud_cli_stats, aud_t_setup, aud_t_teardown),
        cmocka_unit_test_setup_teardown(test_aud_cli_tail, aud_t_setup, aud_t_teardown),
        cmocka_unit_test_setup_teardown(test_aud_query_batches, aud_t_big_setup, aud_t_teardown),
        cmocka_unit_test_setup_teardown(test_aud_query_no_txn_in_callback, aud_t_big_setup,
                                        aud_t_teardown),
    };

    al_log_set_level(AL_LOG_OFF);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
