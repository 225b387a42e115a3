/*
 * aud_cli.c - `airlock audit query|stats|tail`.
 *
 * Opens the database read-only (WAL: works while the daemon writes, never
 * blocks it). Every flag value is validated before the file is touched; a
 * bad flag or value exits 2 with a message naming both. Every filter value
 * reaches sqlite as a bound parameter; only whitelisted column names are
 * pasted into SQL. Every value printed goes through aud_fmt.c so a hostile
 * host name or tool call cannot write terminal escapes.
 *
 * Table layout (120 columns, wider terminals give the extra to host/path):
 *   TIME(UTC) SANDBOX/CALL DECISION METHOD HOST PATH ST BYTES DUR RULE/REASON
 * A cell cut to fit ends with '~'; BYTES is up + down; METHOD holds CONNECT
 * and OPTIONS whole; RULE/REASON is "rule/reason" (the rule alone when it
 * allowed by rule), then ": error" when the row has one.
 * tail -n 0 prints no old row (with --follow: only rows that come later).
 *
 * --db postgresql://... (or postgres://) reads the fleet's shared store
 * through aud_pgq.c: the same filters, formats and output, plus --instance
 * and an instance field (JSON, CSV, a table column); tail --follow there
 * goes by each instance's shipped mark (struct aud_pg_cursor) and, as on a
 * file, prints a row once: pending if it was shipped pending. `migrate`
 * creates or migrates that schema.
 *
 * tail --follow polls for id > last every AUD_CLI_POLL_MS and stops cleanly on
 * SIGINT/SIGTERM (closing a JSON array if one was open). Strict-mode rows
 * show up when begun (status "-" until aud_complete updates them).
 */
#include "aud_int.h"
#include "aud_pg.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define AUD_CLI_POLL_MS 200
#define AUD_CLI_DEFAULT_LIMIT 1000
#define AUD_CLI_DEFAULT_TAIL 20
#define AUD_CLI_DEFAULT_TOP 10
#define AUD_CLI_MAX_LIMIT 100000000L
#define AUD_CLI_TABLE_COLS 120
#define AUD_CLI_MAX_GROUPS 100000

enum aud_cli_fmt { AUD_FMT_TABLE = 0, AUD_FMT_JSON, AUD_FMT_JSONL, AUD_FMT_CSV };

struct aud_cli {
    FILE             *out, *err;
    const char       *cmd; /* "query", "stats", "tail" */
    int64_t           now_us;
    const char       *db;
    enum aud_cli_fmt  fmt;
    struct aud_filter f;
    const char       *by;
    int               follow;
    int               tail_none; /* tail -n 0: no old rows */
    int               silent;    /* rows move the tail cursor only */
    int64_t           top;
    /* output state */
    struct al_dbuf line;
    int            nrows;
    int            header_done;
    int            host_w, path_w;
    int64_t        last_id;
    PGconn        *pg; /* --db postgresql://...: the shared store */

    struct aud_pg_cursor pgcur; /* its tail --follow position: each instance's last id */
};

static volatile sig_atomic_t aud_cli_stop_flag;

static void
aud_cli_on_signal(int sig)
{
    (void)sig;
    aud_cli_stop_flag = 1;
}

/* Prints "airlock audit CMD: " + message to err. Values are escaped by callers. */
static void AL_PRINTF(2, 3) aud_cli_msg(struct aud_cli *c, const char *fmt, ...)
{
    va_list ap;

    fprintf(c->err, "airlock audit%s%s: ", c->cmd ? " " : "", c->cmd ? c->cmd : "");
    va_start(ap, fmt);
    vfprintf(c->err, fmt, ap);
    va_end(ap);
    fputc('\n', c->err);
}

/* "flag value is invalid" message with the value escaped; returns 2. */
static int
aud_cli_bad(struct aud_cli *c, const char *flag, const char *value, const char *want)
{
    struct al_dbuf b;

    al_dbuf_init(&b, 4096);
    if (al_dbuf_adds(&b, "") != AL_OK || aud_fmt_escape(&b, value) != AL_OK)
        al_dbuf_free(&b);
    aud_cli_msg(c, "%s: invalid value \"%s\" (%s)", flag, b.data ? b.data : "?", want);
    al_dbuf_free(&b);
    return 2;
}

static void
aud_cli_usage(FILE *f)
{
    fputs("usage: airlock audit query --db FILE [filters] [--limit N] "
          "[--format table|json|jsonl|csv]\n"
          "       airlock audit stats --db FILE [filters] [--by host|sandbox|tool-call|rule|"
          "secret] [--top N] [--format table|json|csv]\n"
          "       airlock audit tail  --db FILE [filters] [-n N] [--follow] "
          "[--format table|json|jsonl|csv]\n"
          "         (-n 0: no earlier row; with --follow only the rows that come next)\n"
          "filters: --since T --until T (duration 90s 15m 2h 7d, or RFC 3339 time)\n"
          "         --sandbox S --session S --tool-call S --host GLOB (* and ?)\n"
          "         --decision allow|deny|would_deny|error --status N|Nxx --rule R --secret NAME\n"
          "         --instance NAME (PostgreSQL only)\n"
          "       airlock audit migrate --db postgresql://...\n"
          "--db is a sqlite file or a PostgreSQL URI (postgresql://user@host/db; the password\n"
          "from PGPASSWORD, ~/.pgpass or PGPASSFILE is better kept out of the command line)\n",
          f);
}

/* ---- flag parsing ------------------------------------------------------- */

enum aud_cli_opt_id {
    AUD_OPT_DB,
    AUD_OPT_SINCE,
    AUD_OPT_UNTIL,
    AUD_OPT_SANDBOX,
    AUD_OPT_SESSION,
    AUD_OPT_TOOL_CALL,
    AUD_OPT_HOST,
    AUD_OPT_DECISION,
    AUD_OPT_STATUS,
    AUD_OPT_RULE,
    AUD_OPT_SECRET,
    AUD_OPT_LIMIT,
    AUD_OPT_FORMAT,
    AUD_OPT_BY,
    AUD_OPT_TOP,
    AUD_OPT_N,
    AUD_OPT_FOLLOW,
    AUD_OPT_HELP,
    AUD_OPT_INSTANCE,
};

struct aud_cli_opt {
    const char         *name;
    enum aud_cli_opt_id id;
    int                 has_value;
    const char         *cmds; /* subcommands that accept it: q s t */
};

static const struct aud_cli_opt aud_cli_opts[] = {
    {"--db", AUD_OPT_DB, 1, "qstm"},          {"--since", AUD_OPT_SINCE, 1, "qst"},
    {"--until", AUD_OPT_UNTIL, 1, "qst"},     {"--sandbox", AUD_OPT_SANDBOX, 1, "qst"},
    {"--session", AUD_OPT_SESSION, 1, "qst"}, {"--tool-call", AUD_OPT_TOOL_CALL, 1, "qst"},
    {"--host", AUD_OPT_HOST, 1, "qst"},       {"--decision", AUD_OPT_DECISION, 1, "qst"},
    {"--status", AUD_OPT_STATUS, 1, "qst"},   {"--rule", AUD_OPT_RULE, 1, "qst"},
    {"--secret", AUD_OPT_SECRET, 1, "qst"},   {"--limit", AUD_OPT_LIMIT, 1, "q"},
    {"--format", AUD_OPT_FORMAT, 1, "qst"},   {"--by", AUD_OPT_BY, 1, "s"},
    {"--top", AUD_OPT_TOP, 1, "s"},           {"-n", AUD_OPT_N, 1, "t"},
    {"--lines", AUD_OPT_N, 1, "t"},           {"--follow", AUD_OPT_FOLLOW, 0, "t"},
    {"-f", AUD_OPT_FOLLOW, 0, "t"},           {"--help", AUD_OPT_HELP, 0, "qstm"},
    {"-h", AUD_OPT_HELP, 0, "qstm"},          {"--instance", AUD_OPT_INSTANCE, 1, "qst"},
};

static int
aud_cli_status(struct aud_cli *c, const char *v)
{
    long n;

    if (strlen(v) == 3 && v[0] >= '1' && v[0] <= '5' && (v[1] == 'x' || v[1] == 'X') &&
        (v[2] == 'x' || v[2] == 'X')) {
        c->f.status_lo = (v[0] - '0') * 100;
        c->f.status_hi = c->f.status_lo + 99;
        return 0;
    }
    if (al_parse_long(v, 0, 999, &n) != AL_OK)
        return aud_cli_bad(c, "--status", v, "want an HTTP status like 403 or a class like 5xx");
    c->f.status_lo = (int)n;
    c->f.status_hi = (int)n;
    return 0;
}

static int
aud_cli_format(struct aud_cli *c, const char *v)
{
    int stats = strcmp(c->cmd, "stats") == 0;

    if (strcmp(v, "table") == 0)
        c->fmt = AUD_FMT_TABLE;
    else if (strcmp(v, "json") == 0)
        c->fmt = AUD_FMT_JSON;
    else if (!stats && strcmp(v, "jsonl") == 0)
        c->fmt = AUD_FMT_JSONL;
    else if (strcmp(v, "csv") == 0)
        c->fmt = AUD_FMT_CSV;
    else
        return aud_cli_bad(c, "--format", v,
                           stats ? "want table, json or csv" : "want table, json, jsonl or csv");
    return 0;
}

/* Applies one flag; returns 0, or the exit code (2) after a message. */
static int
aud_cli_apply(struct aud_cli *c, const struct aud_cli_opt *o, const char *v)
{
    long n;

    switch (o->id) {
    case AUD_OPT_DB:
        if (*v == '\0')
            return aud_cli_bad(c, o->name, v, "want a file name");
        c->db = v;
        break;
    case AUD_OPT_SINCE:
    case AUD_OPT_UNTIL:
        if (aud_parse_time(v, c->now_us,
                           o->id == AUD_OPT_SINCE ? &c->f.since_us : &c->f.until_us) != AL_OK)
            return aud_cli_bad(c, o->name, v,
                               "want a duration like 90s, 15m, 2h, 7d or an RFC 3339 time "
                               "like 2024-05-01T12:00:00Z");
        break;
    case AUD_OPT_SANDBOX:
        c->f.sandbox = v;
        break;
    case AUD_OPT_INSTANCE:
        if (*v == '\0')
            return aud_cli_bad(c, o->name, v, "want an instance name");
        c->f.instance = v;
        break;
    case AUD_OPT_SESSION:
        c->f.session = v;
        break;
    case AUD_OPT_TOOL_CALL:
        c->f.tool_call = v;
        break;
    case AUD_OPT_HOST:
        if (*v == '\0' || strlen(v) > 255)
            return aud_cli_bad(c, o->name, v, "want a host name or glob of 1-255 characters");
        c->f.host = v;
        break;
    case AUD_OPT_DECISION:
        if (strcmp(v, "allow") != 0 && strcmp(v, "deny") != 0 && strcmp(v, "would_deny") != 0 &&
            strcmp(v, "error") != 0)
            return aud_cli_bad(c, o->name, v, "want allow, deny, would_deny or error");
        c->f.decision = v;
        break;
    case AUD_OPT_STATUS:
        return aud_cli_status(c, v);
    case AUD_OPT_RULE:
        c->f.rule = v;
        break;
    case AUD_OPT_SECRET:
        if (*v == '\0' || strchr(v, ',') != NULL)
            return aud_cli_bad(c, o->name, v, "want one secret name");
        c->f.secret = v;
        break;
    case AUD_OPT_LIMIT:
    case AUD_OPT_N:
        if (al_parse_long(v, 0, AUD_CLI_MAX_LIMIT, &n) != AL_OK)
            return aud_cli_bad(c, o->name, v, "want a whole number, 0 for no limit");
        c->f.limit = n;
        c->tail_none = o->id == AUD_OPT_N && n == 0;
        break;
    case AUD_OPT_TOP:
        if (al_parse_long(v, 1, 100000, &n) != AL_OK)
            return aud_cli_bad(c, o->name, v, "want a number from 1 to 100000");
        c->top = n;
        break;
    case AUD_OPT_FORMAT:
        return aud_cli_format(c, v);
    case AUD_OPT_BY:
        if (strcmp(v, "host") != 0 && strcmp(v, "sandbox") != 0 && strcmp(v, "tool-call") != 0 &&
            strcmp(v, "rule") != 0 && strcmp(v, "secret") != 0 && strcmp(v, "instance") != 0)
            return aud_cli_bad(c, o->name, v,
                               "want host, sandbox, tool-call, rule, secret or instance");
        c->by = v;
        break;
    case AUD_OPT_FOLLOW:
        c->follow = 1;
        break;
    case AUD_OPT_HELP:
        aud_cli_usage(c->out);
        return -1;
    }
    return 0;
}

/* Parses argv[2..]; returns 0, -1 (help printed: exit 0) or 2. */
static int
aud_cli_parse(struct aud_cli *c, int argc, char **argv)
{
    char cmdch = c->cmd[0];

    for (int i = 2; i < argc; i++) {
        const char               *arg = argv[i];
        const char               *eq = NULL, *v = NULL;
        const struct aud_cli_opt *o = NULL;
        size_t                    nl;
        int                       rc;

        if (arg[0] != '-' || arg[1] == '\0') {
            struct al_dbuf b;

            al_dbuf_init(&b, 4096);
            if (al_dbuf_adds(&b, "") != AL_OK || aud_fmt_escape(&b, arg) != AL_OK)
                al_dbuf_free(&b);
            aud_cli_msg(c, "unexpected argument \"%s\" (filters are flags, see --help)",
                        b.data ? b.data : "?");
            al_dbuf_free(&b);
            return 2;
        }
        eq = arg[1] == '-' ? strchr(arg, '=') : NULL;
        nl = eq ? (size_t)(eq - arg) : strlen(arg);
        for (size_t k = 0; k < sizeof(aud_cli_opts) / sizeof(aud_cli_opts[0]); k++) {
            if (strlen(aud_cli_opts[k].name) == nl && strncmp(aud_cli_opts[k].name, arg, nl) == 0)
                o = &aud_cli_opts[k];
        }
        if (o == NULL || strchr(o->cmds, cmdch) == NULL) {
            struct al_dbuf b;

            al_dbuf_init(&b, 4096);
            if (al_dbuf_add(&b, arg, nl) != AL_OK)
                al_dbuf_free(&b);
            if (b.data != NULL) {
                char *raw = al_strdup(b.data);

                al_dbuf_reset(&b);
                if (raw == NULL || aud_fmt_escape(&b, raw) != AL_OK)
                    al_dbuf_free(&b);
                al_free(raw);
            }
            aud_cli_msg(c, "unknown flag %s (see --help)", b.data ? b.data : "?");
            al_dbuf_free(&b);
            return 2;
        }
        if (o->has_value) {
            if (eq != NULL) {
                v = eq + 1;
            } else if (i + 1 < argc) {
                v = argv[++i];
            } else {
                aud_cli_msg(c, "%s needs a value", o->name);
                return 2;
            }
        } else if (eq != NULL) {
            aud_cli_msg(c, "%s takes no value", o->name);
            return 2;
        }
        rc = aud_cli_apply(c, o, v);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* ---- row output --------------------------------------------------------- */

static void
aud_cli_human_bytes(int64_t v, char *buf, size_t n)
{
    static const char units[] = "KMGTP";
    double            d = (double)v;
    int               u = -1;

    if (v < 1000) {
        snprintf(buf, n, "%lld", (long long)v);
        return;
    }
    while (d >= 999.95 && u < 4) {
        d /= 1000.0;
        u++;
    }
    snprintf(buf, n, d < 9.995 ? "%.1f%c" : "%.0f%c", d, units[u]);
}

static void
aud_cli_human_dur(int64_t us, char *buf, size_t n)
{
    if (us < 1000)
        snprintf(buf, n, "%lldus", (long long)us);
    else if (us < 1000000)
        snprintf(buf, n, "%lldms", (long long)(us / 1000));
    else if (us < 100000000)
        snprintf(buf, n, "%.1fs", (double)us / 1e6);
    else
        snprintf(buf, n, "%llds", (long long)(us / 1000000));
}

static void
aud_cli_widths(struct aud_cli *c)
{
    struct winsize ws;
    int            extra = 0;

    c->host_w = c->pg != NULL ? 13 : 19; /* the shared store's INSTANCE column (12 + 1) */
    c->path_w = c->pg != NULL ? 5 : 12;
    if (isatty(fileno(c->out)) && ioctl(fileno(c->out), TIOCGWINSZ, &ws) == 0 &&
        ws.ws_col > AUD_CLI_TABLE_COLS)
        extra = ws.ws_col - AUD_CLI_TABLE_COLS;
    if (extra > 120)
        extra = 120;
    c->host_w += extra / 3;
    c->path_w += extra - extra / 3;
}

static int
aud_cli_table_row(struct aud_cli *c, const struct aud_record *r)
{
    struct al_dbuf *b = &c->line;
    char            tbuf[40], who[256], st[8], by[32], du[32], why[1024];
    struct tm       tm;
    time_t          t = (time_t)(r->ts_us / 1000000);
    int             ok = 1;

    gmtime_r(&t, &tm);
    strftime(tbuf, sizeof(tbuf), "%m-%d %H:%M:%S", &tm);
    if (r->tool_call[0] != '\0')
        snprintf(who, sizeof(who), "%s/%s", r->sandbox, r->tool_call);
    else
        snprintf(who, sizeof(who), "%s", r->sandbox);
    if (r->pending || r->status == 0)
        snprintf(st, sizeof(st), "-");
    else
        snprintf(st, sizeof(st), "%d", r->status);
    aud_cli_human_bytes(r->bytes_up + r->bytes_down, by, sizeof(by));
    if (r->pending)
        snprintf(du, sizeof(du), "-");
    else
        aud_cli_human_dur(r->duration_us, du, sizeof(du));
    if (r->rule[0] != '\0' && strcmp(r->reason, "allowed_by_rule") == 0)
        snprintf(why, sizeof(why), "%s", r->rule);
    else
        snprintf(why, sizeof(why), "%s%s%s", r->rule, r->rule[0] ? "/" : "", r->reason);
    if (r->error[0] != '\0' && strcmp(r->error, r->reason) != 0)
        snprintf(why + strlen(why), sizeof(why) - strlen(why), "%s%s", why[0] ? ": " : "",
                 r->error);
    if (c->pg != NULL)
        ok &= aud_fmt_cell(b, r->instance, 12, 0) == AL_OK && al_dbuf_adds(b, " ") == AL_OK;
    ok &= aud_fmt_cell(b, tbuf, 14, 0) == AL_OK && al_dbuf_adds(b, " ") == AL_OK;
    ok &= aud_fmt_cell(b, who, 15, 0) == AL_OK && al_dbuf_adds(b, " ") == AL_OK;
    ok &= aud_fmt_cell(b, r->decision, 10, 0) == AL_OK && al_dbuf_adds(b, " ") == AL_OK;
    ok &= aud_fmt_cell(b, r->method, 7, 0) == AL_OK && al_dbuf_adds(b, " ") == AL_OK;
    ok &= aud_fmt_cell(b, r->host, c->host_w, 0) == AL_OK && al_dbuf_adds(b, " ") == AL_OK;
    ok &= aud_fmt_cell(b, r->path, c->path_w, 0) == AL_OK && al_dbuf_adds(b, " ") == AL_OK;
    ok &= aud_fmt_cell(b, st, 3, 1) == AL_OK && al_dbuf_adds(b, " ") == AL_OK;
    ok &= aud_fmt_cell(b, by, 5, 1) == AL_OK && al_dbuf_adds(b, " ") == AL_OK;
    ok &= aud_fmt_cell(b, du, 6, 1) == AL_OK && al_dbuf_adds(b, " ") == AL_OK;
    ok &= aud_fmt_cell(b, why, 20, 0) == AL_OK && al_dbuf_adds(b, "\n") == AL_OK;
    return ok ? AL_OK : AL_ERROR;
}

static int
aud_cli_table_header(struct aud_cli *c)
{
    struct al_dbuf *b = &c->line;
    int             ok = 1;

    aud_cli_widths(c);
    if (c->pg != NULL)
        ok &= aud_fmt_cell(b, "INSTANCE", 12, 0) == AL_OK && al_dbuf_adds(b, " ") == AL_OK;
    ok &= aud_fmt_cell(b, "TIME(UTC)", 14, 0) == AL_OK && al_dbuf_adds(b, " ") == AL_OK;
    ok &= aud_fmt_cell(b, "SANDBOX/CALL", 15, 0) == AL_OK && al_dbuf_adds(b, " ") == AL_OK;
    ok &= aud_fmt_cell(b, "DECISION", 10, 0) == AL_OK && al_dbuf_adds(b, " ") == AL_OK;
    ok &= aud_fmt_cell(b, "METHOD", 7, 0) == AL_OK && al_dbuf_adds(b, " ") == AL_OK;
    ok &= aud_fmt_cell(b, "HOST", c->host_w, 0) == AL_OK && al_dbuf_adds(b, " ") == AL_OK;
    ok &= aud_fmt_cell(b, "PATH", c->path_w, 0) == AL_OK && al_dbuf_adds(b, " ") == AL_OK;
    ok &= aud_fmt_cell(b, "ST", 3, 1) == AL_OK && al_dbuf_adds(b, " ") == AL_OK;
    ok &= aud_fmt_cell(b, "BYTES", 5, 1) == AL_OK && al_dbuf_adds(b, " ") == AL_OK;
    ok &= aud_fmt_cell(b, "DUR", 6, 1) == AL_OK && al_dbuf_adds(b, " ") == AL_OK;
    ok &= aud_fmt_cell(b, "RULE/REASON", 20, 0) == AL_OK && al_dbuf_adds(b, "\n") == AL_OK;
    return ok ? AL_OK : AL_ERROR;
}

static const char *const aud_cli_csv_cols[] = {
    "id",       "ts",       "ts_us",  "duration_us", "conn_id", "sandbox", "session",  "tool_call",
    "client",   "mode",     "method", "scheme",      "host",    "port",    "path",     "upstream",
    "orig_dst", "decision", "rule",   "reason",      "secrets", "status",  "bytes_up", "bytes_down",
    "error",    "pending",  "sni",    "addr",        "detail",
};

static int
aud_cli_csv_header(struct aud_cli *c)
{
    for (size_t i = 0; i < sizeof(aud_cli_csv_cols) / sizeof(aud_cli_csv_cols[0]); i++) {
        if (al_dbuf_adds(&c->line, i ? "," : "") != AL_OK ||
            al_dbuf_adds(&c->line, aud_cli_csv_cols[i]) != AL_OK)
            return AL_ERROR;
        if (i == 0 && c->pg != NULL && al_dbuf_adds(&c->line, ",instance") != AL_OK)
            return AL_ERROR;
    }
    return al_dbuf_adds(&c->line, "\n");
}

static int
aud_cli_csv_row(struct aud_cli *c, const struct aud_record *r)
{
    struct al_dbuf *b = &c->line;
    char            ts[40];
    int             ok = 1;

    aud_fmt_rfc3339(r->ts_us, ts, sizeof(ts));
    ok &= al_dbuf_addf(b, "%lld,", (long long)r->row_id) == AL_OK;
#define AUD_CSV_T(field) ok &= aud_fmt_csv(b, (field)) == AL_OK && al_dbuf_adds(b, ",") == AL_OK
    if (c->pg != NULL)
        AUD_CSV_T(r->instance);
    ok &= al_dbuf_addf(b, "%s,%lld,%lld,%llu,", ts, (long long)r->ts_us, (long long)r->duration_us,
                       (unsigned long long)r->conn_id) == AL_OK;
    AUD_CSV_T(r->sandbox);
    AUD_CSV_T(r->session);
    AUD_CSV_T(r->tool_call);
    AUD_CSV_T(r->client);
    AUD_CSV_T(r->mode);
    AUD_CSV_T(r->method);
    AUD_CSV_T(r->scheme);
    AUD_CSV_T(r->host);
    ok &= al_dbuf_addf(b, "%u,", (unsigned)r->port) == AL_OK;
    AUD_CSV_T(r->path);
    AUD_CSV_T(r->upstream);
    AUD_CSV_T(r->orig_dst);
    AUD_CSV_T(r->decision);
    AUD_CSV_T(r->rule);
    AUD_CSV_T(r->reason);
    AUD_CSV_T(r->secrets);
    ok &= al_dbuf_addf(b, "%d,%lld,%lld,", r->status, (long long)r->bytes_up,
                       (long long)r->bytes_down) == AL_OK;
    AUD_CSV_T(r->error);
    ok &= al_dbuf_addf(b, "%d,", r->pending ? 1 : 0) == AL_OK;
    AUD_CSV_T(r->sni);
    AUD_CSV_T(r->addr);
    ok &= aud_fmt_csv(b, r->detail) == AL_OK && al_dbuf_adds(b, "\n") == AL_OK;
#undef AUD_CSV_T
    return ok ? AL_OK : AL_ERROR;
}

static int
aud_cli_json_row(struct al_dbuf *b, const struct aud_record *r, int instance)
{
    char ts[40];
    int  ok = 1;

    aud_fmt_rfc3339(r->ts_us, ts, sizeof(ts));
    ok &= al_dbuf_addf(b, "{\"id\":%lld", (long long)r->row_id) == AL_OK;
    if (instance)
        ok &=
            al_dbuf_adds(b, ",\"instance\":") == AL_OK && aud_fmt_json_str(b, r->instance) == AL_OK;
    ok &= al_dbuf_addf(b, ",\"ts\":\"%s\",\"ts_us\":%lld,\"duration_us\":%lld,\"conn_id\":%llu", ts,
                       (long long)r->ts_us, (long long)r->duration_us,
                       (unsigned long long)r->conn_id) == AL_OK;
#define AUD_JSON_T(name, field)                                                                    \
    ok &= al_dbuf_adds(b, ",\"" name "\":") == AL_OK && aud_fmt_json_str(b, (field)) == AL_OK
    AUD_JSON_T("sandbox", r->sandbox);
    AUD_JSON_T("session", r->session);
    AUD_JSON_T("tool_call", r->tool_call);
    AUD_JSON_T("client", r->client);
    AUD_JSON_T("mode", r->mode);
    AUD_JSON_T("method", r->method);
    AUD_JSON_T("scheme", r->scheme);
    AUD_JSON_T("host", r->host);
    ok &= al_dbuf_addf(b, ",\"port\":%u", (unsigned)r->port) == AL_OK;
    AUD_JSON_T("path", r->path);
    AUD_JSON_T("upstream", r->upstream);
    AUD_JSON_T("orig_dst", r->orig_dst);
    AUD_JSON_T("decision", r->decision);
    AUD_JSON_T("rule", r->rule);
    AUD_JSON_T("reason", r->reason);
#undef AUD_JSON_T
    /* secrets as an array of names */
    ok &= al_dbuf_adds(b, ",\"secrets\":[") == AL_OK;
    {
        const char *p = r->secrets;
        int         first = 1;

        while (*p != '\0') {
            const char *e = strchr(p, ',');
            size_t      n = e ? (size_t)(e - p) : strlen(p);
            char        name[sizeof(r->secrets)];

            memcpy(name, p, n);
            name[n] = '\0';
            if (n > 0) {
                ok &= al_dbuf_adds(b, first ? "" : ",") == AL_OK &&
                      aud_fmt_json_str(b, name) == AL_OK;
                first = 0;
            }
            p += n;
            if (*p == ',')
                p++;
        }
    }
    ok &= al_dbuf_addf(b, "],\"status\":%d,\"bytes_up\":%lld,\"bytes_down\":%lld,\"error\":",
                       r->status, (long long)r->bytes_up, (long long)r->bytes_down) == AL_OK;
    ok &= aud_fmt_json_str(b, r->error) == AL_OK;
    ok &= al_dbuf_addf(b, ",\"pending\":%s,\"sni\":", r->pending ? "true" : "false") == AL_OK;
    ok &= aud_fmt_json_str(b, r->sni) == AL_OK && al_dbuf_adds(b, ",\"addr\":") == AL_OK;
    ok &= aud_fmt_json_str(b, r->addr) == AL_OK;
    {
        size_t dl = strnlen(r->detail, sizeof(r->detail));

        /* airlock's own JSON object as one; anything else only as a string */
        if (dl >= 2 && r->detail[0] == '{' && r->detail[dl - 1] == '}')
            ok &=
                al_dbuf_adds(b, ",\"detail\":") == AL_OK && al_dbuf_add(b, r->detail, dl) == AL_OK;
        else if (dl > 0)
            ok &=
                al_dbuf_adds(b, ",\"detail\":") == AL_OK && aud_fmt_json_str(b, r->detail) == AL_OK;
    }
    ok &= al_dbuf_adds(b, "}") == AL_OK;
    return ok ? AL_OK : AL_ERROR;
}

/* Emits the format's preamble once. */
static int
aud_cli_begin_rows(struct aud_cli *c)
{
    int rc = AL_OK;

    if (c->header_done)
        return AL_OK;
    c->header_done = 1;
    if (c->fmt == AUD_FMT_TABLE)
        rc = aud_cli_table_header(c);
    else if (c->fmt == AUD_FMT_CSV)
        rc = aud_cli_csv_header(c);
    else if (c->fmt == AUD_FMT_JSON)
        rc = al_dbuf_adds(&c->line, "[");
    return rc;
}

static int
aud_cli_end_rows(struct aud_cli *c)
{
    al_dbuf_reset(&c->line);
    if (aud_cli_begin_rows(c) != AL_OK)
        return AL_ERROR;
    if (c->fmt == AUD_FMT_JSON && al_dbuf_adds(&c->line, c->nrows ? "\n]\n" : "]\n") != AL_OK)
        return AL_ERROR;
    if (c->line.len > 0 && fwrite(c->line.data, 1, c->line.len, c->out) != c->line.len)
        return AL_ERROR;
    return fflush(c->out) == 0 ? AL_OK : AL_ERROR;
}

/* aud_query_run callback: one row out. */
static int
aud_cli_emit(void *arg, const struct aud_record *r)
{
    struct aud_cli *c = arg;
    int             rc = AL_OK;

    if (c->silent) /* tail -n 0: where to follow from, nothing printed */
        goto cursor;
    al_dbuf_reset(&c->line);
    if (aud_cli_begin_rows(c) != AL_OK)
        return AL_ERROR;
    switch (c->fmt) {
    case AUD_FMT_TABLE:
        rc = aud_cli_table_row(c, r);
        break;
    case AUD_FMT_CSV:
        rc = aud_cli_csv_row(c, r);
        break;
    case AUD_FMT_JSON:
        rc = al_dbuf_adds(&c->line, c->nrows ? ",\n  " : "\n  ");
        if (rc == AL_OK)
            rc = aud_cli_json_row(&c->line, r, c->pg != NULL);
        break;
    case AUD_FMT_JSONL:
        rc = aud_cli_json_row(&c->line, r, c->pg != NULL);
        if (rc == AL_OK)
            rc = al_dbuf_adds(&c->line, "\n");
        break;
    }
    if (rc != AL_OK)
        return AL_ERROR;
    if (fwrite(c->line.data, 1, c->line.len, c->out) != c->line.len)
        return AL_ERROR;
    c->nrows++;
cursor:
    if (r->row_id > c->last_id)
        c->last_id = r->row_id;
    return AL_OK;
}

/* Opens the db read-only; reports errors; NULL means exit 1. */
static sqlite3 *
aud_cli_open(struct aud_cli *c)
{
    struct al_errs errs;
    sqlite3       *db;

    al_errs_init(&errs);
    if (aud_pg_is_uri(c->db)) { /* the shared store: c->pg, and NULL here */
        c->pg = aud_pg_open_ro(c->db, &errs);
        if (c->pg == NULL)
            fprintf(c->err, "airlock audit %s: %s", c->cmd,
                    errs.text.data ? errs.text.data : "?\n");
        al_errs_free(&errs);
        return NULL;
    }
    db = aud_db_open_ro(c->db, &errs);
    if (db == NULL)
        fprintf(c->err, "airlock audit %s: %s", c->cmd, errs.text.data ? errs.text.data : "?\n");
    al_errs_free(&errs);
    return db;
}

static int
aud_cli_run_rows(struct aud_cli *c, sqlite3 *db)
{
    struct al_errs errs;
    int            rc;

    al_errs_init(&errs);
    if (c->pg != NULL)
        rc = aud_pg_query_run(c->pg, &c->f, c->cmd[0] == 't' && c->follow ? &c->pgcur : NULL,
                              aud_cli_emit, c, &errs);
    else
        rc = aud_query_run(db, &c->f, aud_cli_emit, c, &errs);
    if (rc != AL_OK) {
        if (errs.count > 0)
            fprintf(c->err, "airlock audit %s: %s", c->cmd, errs.text.data);
        else
            aud_cli_msg(c, "writing output failed: %s", strerror(errno));
    }
    al_errs_free(&errs);
    return rc;
}

static int
aud_cli_query(struct aud_cli *c)
{
    sqlite3 *db = NULL;
    int      code = 1;

    db = aud_cli_open(c);
    if (db == NULL && c->pg == NULL)
        goto out;
    if (aud_cli_run_rows(c, db) != AL_OK)
        goto out;
    if (aud_cli_end_rows(c) != AL_OK)
        goto out;
    code = 0;
out:
    sqlite3_close(db);
    return code;
}

static void
aud_cli_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

    (void)nanosleep(&ts, NULL); /* EINTR on a signal: the caller checks the flag */
}

static int
aud_cli_tail(struct aud_cli *c)
{
    struct sigaction sa, old_int, old_term;
    sqlite3         *db = NULL;
    int              code = 1;
    int              handlers = 0;

    db = aud_cli_open(c);
    if (db == NULL && c->pg == NULL)
        goto out;
    c->f.by_id = 1;
    if (c->tail_none) { /* -n 0: only the newest row's id, to follow from */
        c->f.limit = 1;
        c->silent = 1;
    }
    if (aud_cli_run_rows(c, db) != AL_OK)
        goto out;
    c->silent = 0;
    if (c->follow) {
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = aud_cli_on_signal;
        sigemptyset(&sa.sa_mask);
        aud_cli_stop_flag = 0;
        sigaction(SIGINT, &sa, &old_int);
        sigaction(SIGTERM, &sa, &old_term);
        handlers = 1;
        al_dbuf_reset(&c->line);
        if (aud_cli_begin_rows(c) != AL_OK)
            goto out;
        if (c->line.len > 0 && c->nrows == 0)
            fwrite(c->line.data, 1, c->line.len, c->out);
        fflush(c->out);
        c->f.limit = 0;
        while (!aud_cli_stop_flag) {
            aud_cli_sleep_ms(AUD_CLI_POLL_MS);
            if (aud_cli_stop_flag)
                break;
            c->f.after_id = c->last_id;
            if (aud_cli_run_rows(c, db) != AL_OK)
                goto out;
            fflush(c->out);
        }
    }
    /* -n 0 without --follow prints nothing (json: an empty array) */
    if (!(c->tail_none && !c->follow && c->fmt != AUD_FMT_JSON) && aud_cli_end_rows(c) != AL_OK)
        goto out;
    code = 0;
out:
    if (handlers) {
        sigaction(SIGINT, &old_int, NULL);
        sigaction(SIGTERM, &old_term, NULL);
    }
    sqlite3_close(db);
    return code;
}

/* ---- stats -------------------------------------------------------------- */

struct aud_cli_group {
    char    key[256];
    int64_t total, allow, deny, would_deny, error, bytes_up, bytes_down;
};

struct aud_cli_groups {
    struct aud_cli_group *g;
    size_t                n, cap;
};

static struct aud_cli_group *
aud_cli_group_get(struct aud_cli_groups *gs, const char *key, size_t klen)
{
    struct aud_cli_group *ng;

    if (klen >= sizeof(gs->g[0].key))
        klen = sizeof(gs->g[0].key) - 1;
    for (size_t i = 0; i < gs->n; i++) {
        if (strncmp(gs->g[i].key, key, klen) == 0 && gs->g[i].key[klen] == '\0')
            return &gs->g[i];
    }
    if (gs->n >= AUD_CLI_MAX_GROUPS)
        return NULL;
    if (gs->n == gs->cap) {
        size_t ncap = gs->cap ? gs->cap * 2 : 32;

        ng = al_realloc(gs->g, ncap * sizeof(*ng));
        if (ng == NULL)
            return NULL;
        gs->g = ng;
        gs->cap = ncap;
    }
    ng = &gs->g[gs->n++];
    memset(ng, 0, sizeof(*ng));
    memcpy(ng->key, key, klen);
    return ng;
}

static int
aud_cli_group_cmp(const void *a, const void *b)
{
    const struct aud_cli_group *x = a, *y = b;

    if (x->total != y->total)
        return x->total < y->total ? 1 : -1;
    return strcmp(x->key, y->key);
}

/* aud_pg_groups' rows folded like the sqlite ones below (secrets split). */
struct aud_cli_pgfold {
    struct aud_cli        *c;
    struct aud_cli_groups *gs;
    int                    split;
};

static int
aud_cli_pgfold_row(void *arg, const char *key, const int64_t v[7])
{
    struct aud_cli_pgfold *x = arg;
    const char            *p = key;

    do {
        const char           *e = x->split ? strchr(p, ',') : NULL;
        size_t                n = e ? (size_t)(e - p) : strlen(p);
        struct aud_cli_group *g;

        if (!x->split || n > 0) {
            g = aud_cli_group_get(x->gs, p, n);
            if (g == NULL) {
                aud_cli_msg(x->c, "too many groups (or out of memory)");
                return AL_ERROR;
            }
            g->total += v[0];
            g->allow += v[1];
            g->deny += v[2];
            g->would_deny += v[3];
            g->error += v[4];
            g->bytes_up += v[5];
            g->bytes_down += v[6];
        }
        p = e ? e + 1 : NULL;
    } while (p != NULL);
    return AL_OK;
}

/* aud_cli_groups_load on the shared store. */
static int
aud_cli_groups_load_pg(struct aud_cli *c, const char *col, int split, int denied_only,
                       int64_t limit, struct aud_cli_groups *gs)
{
    struct aud_cli_pgfold x = {c, gs, split};
    struct al_errs        errs;
    int                   rc;

    al_errs_init(&errs);
    rc = aud_pg_groups(c->pg, &c->f, col, denied_only, split ? 0 : limit, aud_cli_pgfold_row, &x,
                       &errs);
    if (rc != AL_OK && errs.count > 0)
        fprintf(c->err, "airlock audit %s: %s", c->cmd, errs.text.data);
    al_errs_free(&errs);
    if (rc == AL_OK && split && gs->n > 0) {
        qsort(gs->g, gs->n, sizeof(*gs->g), aud_cli_group_cmp);
        if (limit > 0 && gs->n > (size_t)limit)
            gs->n = (size_t)limit;
    }
    return rc;
}

/*
 * Aggregates rows matching the filter by `col` (a whitelisted column
 * name). `split` splits comma-separated keys (secrets). `denied_only`
 * keeps groups with deny or would_deny rows, ordered by those.
 */
static int
aud_cli_groups_load(struct aud_cli *c, sqlite3 *db, const char *col, int split, int denied_only,
                    int64_t limit, struct aud_cli_groups *gs)
{
    sqlite3_stmt    *st = NULL;
    struct al_dbuf   sql;
    struct aud_binds b;
    int              idx = 1, rc, ret = AL_ERROR;

    if (c->pg != NULL)
        return aud_cli_groups_load_pg(c, col, split, denied_only, limit, gs);
    if (strcmp(col, AUD_GROUP_SECRETS) == 0)
        col = AUD_GROUP_SECRETS_SQL;
    al_dbuf_init(&sql, 64 * 1024);
    al_dbuf_addf(&sql,
                 "SELECT %s, COUNT(*), SUM(decision = 'allow'), SUM(decision = 'deny'), "
                 "SUM(decision = 'would_deny'), SUM(decision = 'error'), SUM(bytes_up), "
                 "SUM(bytes_down) FROM requests",
                 col);
    if (aud_query_where(&sql, &b, &c->f) != AL_OK)
        goto out;
    al_dbuf_addf(&sql, " GROUP BY %s", col);
    if (denied_only)
        al_dbuf_adds(&sql, " HAVING SUM(decision IN ('deny', 'would_deny')) > 0 "
                           "ORDER BY SUM(decision IN ('deny', 'would_deny')) DESC, 1");
    else
        al_dbuf_adds(&sql, " ORDER BY 2 DESC, 1"); /* ties by key: the same on PostgreSQL */
    if (!split && limit > 0)
        al_dbuf_adds(&sql, " LIMIT ?");
    if (sql.data == NULL)
        goto out;
    if (sqlite3_prepare_v2(db, sql.data, -1, &st, NULL) != SQLITE_OK ||
        aud_query_bind(st, &b, &idx) != AL_OK ||
        (!split && limit > 0 && sqlite3_bind_int64(st, idx, limit) != SQLITE_OK)) {
        aud_cli_msg(c, "%s", sqlite3_errmsg(db));
        goto out;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *k = (const char *)sqlite3_column_text(st, 0);
        const char *p = k ? k : "";

        do {
            const char           *e = split ? strchr(p, ',') : NULL;
            size_t                n = e ? (size_t)(e - p) : strlen(p);
            struct aud_cli_group *g;

            if (split && n == 0)
                goto next;
            g = aud_cli_group_get(gs, p, n);
            if (g == NULL) {
                aud_cli_msg(c, "too many groups (or out of memory)");
                goto out;
            }
            g->total += sqlite3_column_int64(st, 1);
            g->allow += sqlite3_column_int64(st, 2);
            g->deny += sqlite3_column_int64(st, 3);
            g->would_deny += sqlite3_column_int64(st, 4);
            g->error += sqlite3_column_int64(st, 5);
            g->bytes_up += sqlite3_column_int64(st, 6);
            g->bytes_down += sqlite3_column_int64(st, 7);
        next:
            p = e ? e + 1 : NULL;
        } while (p != NULL);
    }
    if (rc != SQLITE_DONE) {
        aud_cli_msg(c, "%s", sqlite3_errmsg(db));
        goto out;
    }
    if (split && gs->n > 0) {
        qsort(gs->g, gs->n, sizeof(*gs->g), aud_cli_group_cmp);
        if (limit > 0 && gs->n > (size_t)limit)
            gs->n = (size_t)limit;
    }
    ret = AL_OK;
out:
    sqlite3_finalize(st);
    al_dbuf_free(&sql);
    return ret;
}

static void
aud_cli_groups_free(struct aud_cli_groups *gs)
{
    al_safefree(gs->g);
    gs->n = gs->cap = 0;
}

static int
aud_cli_groups_json(struct al_dbuf *b, const char *name, const struct aud_cli_groups *gs)
{
    int ok = al_dbuf_addf(b, ",\n  \"%s\": [", name) == AL_OK;

    for (size_t i = 0; i < gs->n && ok; i++) {
        const struct aud_cli_group *g = &gs->g[i];

        ok &= al_dbuf_adds(b, i ? ",\n    {\"key\":" : "\n    {\"key\":") == AL_OK &&
              aud_fmt_json_str(b, g->key) == AL_OK;
        ok &= al_dbuf_addf(b,
                           ",\"total\":%lld,\"allow\":%lld,\"deny\":%lld,\"would_deny\":%lld,"
                           "\"error\":%lld,\"bytes_up\":%lld,\"bytes_down\":%lld}",
                           (long long)g->total, (long long)g->allow, (long long)g->deny,
                           (long long)g->would_deny, (long long)g->error, (long long)g->bytes_up,
                           (long long)g->bytes_down) == AL_OK;
    }
    ok &= al_dbuf_adds(b, gs->n ? "\n  ]" : "]") == AL_OK;
    return ok ? AL_OK : AL_ERROR;
}

static int
aud_cli_groups_table(struct al_dbuf *b, const char *title, const char *keyname,
                     const struct aud_cli_groups *gs)
{
    char bu[32], bd[32];
    int  ok = al_dbuf_addf(b, "\n%s\n", title) == AL_OK;

    ok &= aud_fmt_cell(b, keyname, 36, 0) == AL_OK &&
          al_dbuf_addf(b, " %8s %8s %8s %10s %6s %8s %8s\n", "TOTAL", "ALLOW", "DENY", "WOULD_DENY",
                       "ERROR", "UP", "DOWN") == AL_OK;
    if (gs->n == 0)
        ok &= al_dbuf_adds(b, "(none)\n") == AL_OK;
    for (size_t i = 0; i < gs->n && ok; i++) {
        const struct aud_cli_group *g = &gs->g[i];

        aud_cli_human_bytes(g->bytes_up, bu, sizeof(bu));
        aud_cli_human_bytes(g->bytes_down, bd, sizeof(bd));
        ok &= aud_fmt_cell(b, g->key[0] ? g->key : "(none)", 36, 0) == AL_OK;
        ok &= al_dbuf_addf(b, " %8lld %8lld %8lld %10lld %6lld %8s %8s\n", (long long)g->total,
                           (long long)g->allow, (long long)g->deny, (long long)g->would_deny,
                           (long long)g->error, bu, bd) == AL_OK;
    }
    return ok ? AL_OK : AL_ERROR;
}

/* One stats csv line: section,key,total,allow,deny,would_deny,error,up,down. */
static int
aud_cli_groups_csv_row(struct al_dbuf *b, const char *section, const char *key,
                       const struct aud_cli_group *g)
{
    int ok = aud_fmt_csv(b, section) == AL_OK && al_dbuf_adds(b, ",") == AL_OK &&
             aud_fmt_csv(b, key) == AL_OK;

    ok &= al_dbuf_addf(b, ",%lld,%lld,%lld,%lld,%lld,%lld,%lld\n", (long long)g->total,
                       (long long)g->allow, (long long)g->deny, (long long)g->would_deny,
                       (long long)g->error, (long long)g->bytes_up,
                       (long long)g->bytes_down) == AL_OK;
    return ok ? AL_OK : AL_ERROR;
}

static int
aud_cli_stats(struct aud_cli *c)
{
    struct aud_cli_groups all = {0}, dec = {0}, hosts = {0}, denied = {0}, secrets = {0}, by = {0};
    struct aud_cli_group  tot;
    struct al_dbuf        b;
    sqlite3              *db = NULL;
    const char           *bycol = NULL;
    int                   code = 1, ok = 1;
    char                  since[40], until[40], bu[32], bd[32];

    al_dbuf_init(&b, 64 * 1024 * 1024);
    if (c->by != NULL) {
        bycol = strcmp(c->by, "tool-call") == 0 ? "tool_call"
                : strcmp(c->by, "secret") == 0  ? AUD_GROUP_SECRETS
                                                : c->by; /* host, sandbox, rule: whitelisted */
    }
    db = aud_cli_open(c);
    if (db == NULL && c->pg == NULL)
        goto out;
    if (aud_cli_groups_load(c, db, "''", 0, 0, 0, &all) != AL_OK ||
        aud_cli_groups_load(c, db, "decision", 0, 0, 0, &dec) != AL_OK)
        goto out;
    if (bycol != NULL) {
        if (aud_cli_groups_load(c, db, bycol, strcmp(bycol, AUD_GROUP_SECRETS) == 0, 0, c->top,
                                &by) != AL_OK)
            goto out;
    } else if (aud_cli_groups_load(c, db, "host", 0, 0, c->top, &hosts) != AL_OK ||
               aud_cli_groups_load(c, db, "host", 0, 1, c->top, &denied) != AL_OK ||
               aud_cli_groups_load(c, db, AUD_GROUP_SECRETS, 1, 0, c->top, &secrets) != AL_OK) {
        goto out;
    }
    memset(&tot, 0, sizeof(tot));
    if (all.n > 0)
        tot = all.g[0];
    since[0] = until[0] = '\0';
    if (c->f.since_us != 0)
        aud_fmt_rfc3339(c->f.since_us, since, sizeof(since));
    if (c->f.until_us != 0)
        aud_fmt_rfc3339(c->f.until_us, until, sizeof(until));
    if (c->fmt == AUD_FMT_JSON) {
        ok &= al_dbuf_adds(&b, "{\n  \"since\": ") == AL_OK;
        ok &= (since[0] ? al_dbuf_addf(&b, "\"%s\"", since) : al_dbuf_adds(&b, "null")) == AL_OK;
        ok &= al_dbuf_adds(&b, ",\n  \"until\": ") == AL_OK;
        ok &= (until[0] ? al_dbuf_addf(&b, "\"%s\"", until) : al_dbuf_adds(&b, "null")) == AL_OK;
        ok &= al_dbuf_addf(&b,
                           ",\n  \"total\": %lld,\n  \"bytes_up\": %lld,\n  \"bytes_down\": %lld,"
                           "\n  \"decisions\": {",
                           (long long)tot.total, (long long)tot.bytes_up,
                           (long long)tot.bytes_down) == AL_OK;
        for (size_t i = 0; i < dec.n; i++) {
            ok &= al_dbuf_adds(&b, i ? ", " : "") == AL_OK &&
                  aud_fmt_json_str(&b, dec.g[i].key) == AL_OK &&
                  al_dbuf_addf(&b, ": %lld", (long long)dec.g[i].total) == AL_OK;
        }
        ok &= al_dbuf_adds(&b, "}") == AL_OK;
        if (bycol != NULL) {
            ok &= al_dbuf_addf(&b, ",\n  \"by\": \"%s\"", c->by) == AL_OK;
            ok &= aud_cli_groups_json(&b, "groups", &by) == AL_OK;
        } else {
            ok &= aud_cli_groups_json(&b, "top_hosts", &hosts) == AL_OK;
            ok &= aud_cli_groups_json(&b, "top_denied_hosts", &denied) == AL_OK;
            ok &= aud_cli_groups_json(&b, "secrets", &secrets) == AL_OK;
        }
        ok &= al_dbuf_adds(&b, "\n}\n") == AL_OK;
    } else if (c->fmt == AUD_FMT_CSV) {
        /* one table: the totals row, then each group with its section */
        ok &= al_dbuf_adds(&b, "section,key,total,allow,deny,would_deny,error,bytes_up,"
                               "bytes_down\n") == AL_OK;
        ok &= aud_cli_groups_csv_row(&b, "total", "", &tot) == AL_OK;
        if (bycol != NULL) {
            for (size_t i = 0; i < by.n; i++)
                ok &= aud_cli_groups_csv_row(&b, c->by, by.g[i].key, &by.g[i]) == AL_OK;
        } else {
            for (size_t i = 0; i < hosts.n; i++)
                ok &= aud_cli_groups_csv_row(&b, "host", hosts.g[i].key, &hosts.g[i]) == AL_OK;
            for (size_t i = 0; i < denied.n; i++)
                ok &= aud_cli_groups_csv_row(&b, "denied_host", denied.g[i].key, &denied.g[i]) ==
                      AL_OK;
            for (size_t i = 0; i < secrets.n; i++)
                ok &=
                    aud_cli_groups_csv_row(&b, "secret", secrets.g[i].key, &secrets.g[i]) == AL_OK;
        }
    } else {
        aud_cli_human_bytes(tot.bytes_up, bu, sizeof(bu));
        aud_cli_human_bytes(tot.bytes_down, bd, sizeof(bd));
        ok &= al_dbuf_addf(&b, "requests: %lld   from %s   until %s\n", (long long)tot.total,
                           since[0] ? since : "the start", until[0] ? until : "now") == AL_OK;
        ok &= al_dbuf_addf(&b, "bytes:    up %s   down %s\n", bu, bd) == AL_OK;
        ok &= al_dbuf_adds(&b, "decision:") == AL_OK;
        for (size_t i = 0; i < dec.n; i++) {
            ok &= al_dbuf_adds(&b, "  ") == AL_OK &&
                  aud_fmt_escape(&b, dec.g[i].key[0] ? dec.g[i].key : "(none)") == AL_OK &&
                  al_dbuf_addf(&b, " %lld", (long long)dec.g[i].total) == AL_OK;
        }
        ok &= al_dbuf_adds(&b, dec.n ? "\n" : "  (none)\n") == AL_OK;
        if (bycol != NULL) {
            char title[64];

            snprintf(title, sizeof(title), "by %s", c->by);
            ok &= aud_cli_groups_table(&b, title, c->by, &by) == AL_OK;
        } else {
            ok &= aud_cli_groups_table(&b, "top hosts", "HOST", &hosts) == AL_OK;
            ok &= aud_cli_groups_table(&b, "top denied hosts", "HOST", &denied) == AL_OK;
            ok &= aud_cli_groups_table(&b, "secrets used", "SECRET", &secrets) == AL_OK;
        }
    }
    if (!ok || b.data == NULL) {
        aud_cli_msg(c, "out of memory");
        goto out;
    }
    if (fwrite(b.data, 1, b.len, c->out) != b.len || fflush(c->out) != 0) {
        aud_cli_msg(c, "writing output failed: %s", strerror(errno));
        goto out;
    }
    code = 0;
out:
    aud_cli_groups_free(&all);
    aud_cli_groups_free(&dec);
    aud_cli_groups_free(&hosts);
    aud_cli_groups_free(&denied);
    aud_cli_groups_free(&secrets);
    aud_cli_groups_free(&by);
    al_dbuf_free(&b);
    sqlite3_close(db);
    return code;
}

/* ---- migrate ------------------------------------------------------------ */

/* Creates or migrates the schema of --db (PostgreSQL, or a sqlite file). */
static int
aud_cli_migrate(struct aud_cli *c)
{
    struct al_errs errs;
    struct aud_db *d;
    int            rc;

    al_errs_init(&errs);
    if (aud_pg_is_uri(c->db)) {
        rc = aud_pg_cli_migrate(c->db, c->out, &errs);
    } else {
        d = aud_db_open(c->db, 0, 0, &errs);
        rc = d != NULL ? AL_OK : AL_ERROR;
        if (d != NULL)
            fprintf(c->out, "%s: schema version %d\n", c->db, AUD_SCHEMA_VERSION);
        aud_db_close(d);
    }
    if (rc != AL_OK)
        fprintf(c->err, "airlock audit migrate: %s%s", errs.text.data ? errs.text.data : "failed",
                errs.text.data != NULL && errs.text.len > 0 &&
                        errs.text.data[errs.text.len - 1] == '\n'
                    ? ""
                    : "\n");
    al_errs_free(&errs);
    return rc == AL_OK ? 0 : 1;
}

/* ---- entry -------------------------------------------------------------- */

int
aud_cli_run(int argc, char **argv, FILE *out, FILE *err, int64_t now_us)
{
    struct aud_cli c;
    int            code = 2;

    memset(&c, 0, sizeof(c));
    c.out = out;
    c.err = err;
    c.now_us = now_us ? now_us : al_now_us();
    c.top = AUD_CLI_DEFAULT_TOP;
    al_dbuf_init(&c.line, 1 << 20);
    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "help") == 0) {
        aud_cli_usage(argc < 2 ? err : out);
        code = argc < 2 ? 2 : 0;
        goto out;
    }
    if (strcmp(argv[1], "query") != 0 && strcmp(argv[1], "stats") != 0 &&
        strcmp(argv[1], "tail") != 0 && strcmp(argv[1], "migrate") != 0) {
        struct al_dbuf b;

        al_dbuf_init(&b, 4096);
        if (al_dbuf_adds(&b, "") != AL_OK || aud_fmt_escape(&b, argv[1]) != AL_OK)
            al_dbuf_free(&b);
        fprintf(err,
                "airlock audit: unknown subcommand \"%s\" (want query, stats, tail or migrate)\n",
                b.data ? b.data : "?");
        al_dbuf_free(&b);
        aud_cli_usage(err);
        goto out;
    }
    c.cmd = argv[1];
    c.f.limit = c.cmd[0] == 't' ? AUD_CLI_DEFAULT_TAIL : AUD_CLI_DEFAULT_LIMIT;
    code = aud_cli_parse(&c, argc, argv);
    if (code == -1) {
        code = 0;
        goto out;
    }
    if (code != 0)
        goto out;
    if (c.db == NULL) {
        aud_cli_msg(&c, "--db FILE is required");
        code = 2;
        goto out;
    }
    if (c.f.since_us != 0 && c.f.until_us != 0 && c.f.since_us >= c.f.until_us) {
        aud_cli_msg(&c, "--since must be before --until");
        code = 2;
        goto out;
    }
    if ((c.f.instance != NULL || (c.by != NULL && strcmp(c.by, "instance") == 0)) &&
        !aud_pg_is_uri(c.db)) {
        aud_cli_msg(&c, "--instance and --by instance need a PostgreSQL --db (postgresql://...)");
        code = 2;
        goto out;
    }
    if (c.cmd[0] == 'm')
        code = aud_cli_migrate(&c);
    else if (c.cmd[0] == 'q')
        code = aud_cli_query(&c);
    else if (c.cmd[0] == 's')
        code = aud_cli_stats(&c);
    else
        code = aud_cli_tail(&c);
out:
    if (c.pg != NULL)
        PQfinish(c.pg);
    aud_pg_cursor_free(&c.pgcur);
    al_dbuf_free(&c.line);
    return code;
}

int
aud_cli_main(int argc, char **argv)
{
    return aud_cli_run(argc, argv, stdout, stderr, 0);
}
