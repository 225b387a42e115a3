/*
 * aud_pg.c - PostgreSQL through libpq: connection strings (checked, masked,
 * never logged with their password), connecting, the schema and its
 * migrations, daily range partitions and their retention, and the COPY
 * text encoding of one row.
 *
 * Schema (version 1, table schema_version like the sqlite file's):
 *   requests   one row per local row of every replica: (instance, id) is the
 *              replica's name and its sqlite row id; native types (ts
 *              timestamptz, client inet + client_port, secrets jsonb array,
 *              pending boolean). Partitioned by RANGE (ts), one partition a
 *              day (requests_pYYYYMMDD), created on demand; retention drops
 *              whole partitions. requests_default takes a row dated before
 *              1970 or after 9999 (a broken clock) so it cannot wedge a batch. A unique key on a
 * partitioned table must hold the partition key, so it is UNIQUE (instance, id, ts): a row's ts
 * never changes, so no (instance, id) is there twice; it is also the conflict target of a
 * completion (aud_pg_complete_sql). sink_state one row per instance: the last
 * local id committed here, updated in the same transaction as the rows (the shipper's exactly-once
 * guard, see aud_ship.c). Indexes follow the CLI's filters: BRIN on ts (cheap to keep up: a btree
 * on ts cost a fifth of the shipper's throughput), (host, ts), and partial
 * (sandbox, ts), (tool_call, ts), (decision, ts) like the sqlite file's.
 * There is no global arrival order: `tail --follow` reads each instance's
 * new ids from sink_state (aud_pgq.c), so replicas never serialise.
 *
 * Password hygiene: nothing here prints a conninfo. Descriptions are built
 * from libpq's parsed options without the password; libpq's messages are
 * scrubbed of the password, and conninfo parse errors lose their quoted
 * fragments (they can be pieces of it).
 */
#include "aud_pg.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Advisory lock key for schema and partition DDL ("airlock" in ASCII, cut). */
#define AUD_PG_DDL_LOCK 0x6169726c6f636bLL

int
aud_pg_is_uri(const char *db)
{
    return db != NULL &&
           (strncmp(db, "postgresql://", 13) == 0 || strncmp(db, "postgres://", 11) == 0);
}

/* Appends s[0..n) to out (cut at the end). */
static void
aud_pg_put(char *out, size_t cap, size_t *pos, const char *s, size_t n)
{
    while (n > 0 && *pos + 1 < cap) {
        out[(*pos)++] = *s++;
        n--;
    }
    out[*pos < cap ? *pos : cap - 1] = '\0';
}

/* Masks the value of every "password=" in a URI query string s[0..n). */
static void
aud_pg_mask_query(const char *s, size_t n, char *out, size_t cap, size_t *pos)
{
    size_t i = 0;

    while (i < n) {
        size_t j = i, eq;

        while (j < n && s[j] != '&')
            j++;
        eq = i;
        while (eq < j && s[eq] != '=')
            eq++;
        if (eq - i == 8 && strncmp(s + i, "password", 8) == 0 && eq < j) {
            aud_pg_put(out, cap, pos, s + i, eq - i + 1);
            aud_pg_put(out, cap, pos, "***", 3);
        } else {
            aud_pg_put(out, cap, pos, s + i, j - i);
        }
        if (j < n)
            aud_pg_put(out, cap, pos, "&", 1);
        i = j + 1;
    }
}

void
aud_pg_mask(const char *conninfo, char *out, size_t cap)
{
    size_t      pos = 0, n;
    const char *s = conninfo != NULL ? conninfo : "";

    if (cap == 0)
        return;
    out[0] = '\0';
    n = strlen(s);
    if (aud_pg_is_uri(s)) {
        const char *p = strstr(s, "://") + 3;
        const char *end = p, *at = NULL, *q;

        /* authority: up to the first '/' or '?' ; user info before the last '@' */
        while (*end != '\0' && *end != '/' && *end != '?')
            end++;
        for (q = p; q < end; q++)
            if (*q == '@')
                at = q;
        aud_pg_put(out, cap, &pos, s, (size_t)(p - s));
        if (at != NULL) {
            const char *colon = memchr(p, ':', (size_t)(at - p));

            if (colon != NULL) {
                aud_pg_put(out, cap, &pos, p, (size_t)(colon - p) + 1);
                aud_pg_put(out, cap, &pos, "***", 3);
                p = at;
            }
        }
        q = strchr(end, '?');
        if (q == NULL) {
            aud_pg_put(out, cap, &pos, p, strlen(p));
            return;
        }
        aud_pg_put(out, cap, &pos, p, (size_t)(q - p) + 1);
        aud_pg_mask_query(q + 1, strlen(q + 1), out, cap, &pos);
        return;
    }
    /* key = value pairs; values may be 'quoted' with \ escapes */
    for (size_t i = 0; i < n;) {
        size_t k0, k1, v0, v1;
        int    pw;

        while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
            aud_pg_put(out, cap, &pos, s + i++, 1);
        k0 = i;
        while (i < n && s[i] != '=' && s[i] != ' ' && s[i] != '\t')
            i++;
        k1 = i;
        while (i < n && (s[i] == ' ' || s[i] == '\t'))
            i++;
        aud_pg_put(out, cap, &pos, s + k0, i - k0);
        if (i >= n || s[i] != '=')
            continue;
        aud_pg_put(out, cap, &pos, "=", 1);
        i++;
        while (i < n && (s[i] == ' ' || s[i] == '\t'))
            aud_pg_put(out, cap, &pos, s + i++, 1);
        v0 = i;
        if (i < n && s[i] == '\'') {
            i++;
            while (i < n && s[i] != '\'') {
                if (s[i] == '\\' && i + 1 < n)
                    i++;
                i++;
            }
            if (i < n)
                i++;
        } else {
            while (i < n && s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r')
                i++;
        }
        v1 = i;
        pw = k1 - k0 == 8 && strncmp(s + k0, "password", 8) == 0;
        if (pw)
            aud_pg_put(out, cap, &pos, "***", 3);
        else
            aud_pg_put(out, cap, &pos, s + v0, v1 - v0);
    }
}

char *
aud_pg_scrub(char *msg, const char *secret)
{
    size_t sl, ml;
    char  *p;

    if (msg == NULL)
        return msg;
    sl = secret != NULL ? strlen(secret) : 0;
    if (sl > 0) {
        while ((p = strstr(msg, secret)) != NULL) {
            size_t rest = strlen(p + sl);

            if (sl >= 3) {
                memcpy(p, "***", 3);
                memmove(p + 3, p + sl, rest + 1);
            } else { /* a 1-2 byte password: replace in place, same length */
                memset(p, '*', sl);
            }
        }
    }
    ml = strlen(msg);
    while (ml > 0 && (msg[ml - 1] == '\n' || msg[ml - 1] == '\r' || msg[ml - 1] == ' '))
        msg[--ml] = '\0';
    return msg;
}

/* Cuts every "..." fragment out of a libpq conninfo parse error. */
static void
aud_pg_unquote(const char *in, char *out, size_t cap)
{
    size_t pos = 0;
    int    q = 0;

    out[0] = '\0';
    for (; *in != '\0'; in++) {
        if (*in == '"') {
            if (!q)
                aud_pg_put(out, cap, &pos, "\"...\"", 5);
            q = !q;
        } else if (!q && *in != '\n') {
            aud_pg_put(out, cap, &pos, in, 1);
        }
    }
}

/* The parsed value of keyword `kw` in opts, or NULL. */
static const char *
aud_pg_opt(const PQconninfoOption *opts, const char *kw)
{
    for (const PQconninfoOption *o = opts; o != NULL && o->keyword != NULL; o++)
        if (strcmp(o->keyword, kw) == 0)
            return o->val != NULL && o->val[0] != '\0' ? o->val : NULL;
    return NULL;
}

int
aud_pg_check(const char *conninfo, char *desc, size_t n, struct al_errs *errs)
{
    PQconninfoOption *opts;
    char             *err = NULL;
    const char       *user, *host, *port, *db, *hostaddr;

    if (conninfo == NULL || conninfo[0] == '\0') {
        al_errs_add(errs, "audit.sink.postgres: empty connection string");
        return AL_ERROR;
    }
    opts = PQconninfoParse(conninfo, &err);
    if (opts == NULL) {
        char clean[256];

        aud_pg_unquote(err != NULL ? err : "out of memory", clean, sizeof(clean));
        al_errs_add(errs, "audit.sink.postgres: invalid connection string: %s", clean);
        PQfreemem(err);
        return AL_ERROR;
    }
    user = aud_pg_opt(opts, "user");
    host = aud_pg_opt(opts, "host");
    hostaddr = aud_pg_opt(opts, "hostaddr");
    port = aud_pg_opt(opts, "port");
    db = aud_pg_opt(opts, "dbname");
    if (desc != NULL && n > 0)
        snprintf(desc, n, "%s%s%s:%s/%s", user ? user : "", user ? "@" : "",
                 host       ? host
                 : hostaddr ? hostaddr
                            : "(default host)",
                 port ? port : "5432", db ? db : (user ? user : "(default db)"));
    PQconninfoFree(opts);
    return AL_OK;
}

/* The password libpq would use from the conninfo itself (for scrubbing), or "". */
static void
aud_pg_password(const char *conninfo, char *out, size_t n)
{
    PQconninfoOption *opts = PQconninfoParse(conninfo, NULL);
    const char       *pw = aud_pg_opt(opts, "password");

    al_strlcpy(out, n, pw != NULL ? pw : "");
    PQconninfoFree(opts);
}

/* Server NOTICEs ("already exists, skipping") go to the debug log, not stderr. */
static void
aud_pg_notice(void *arg, const char *msg)
{
    char buf[512];

    (void)arg;
    al_strlcpy(buf, sizeof(buf), msg);
    al_log_debug("audit sink: server notice: %s", aud_pg_scrub(buf, NULL));
}

PGconn *
aud_pg_connect(const char *conninfo, struct al_errs *errs)
{
    /* Ours first: with expand_dbname the conninfo's own keywords override them. */
    static const char *const kw[] = {"connect_timeout",
                                     "application_name",
                                     "keepalives_idle",
                                     "keepalives_interval",
                                     "keepalives_count",
                                     "dbname",
                                     NULL};
    const char              *vals[] = {"5", "airlock-audit", "10", "5", "3", conninfo, NULL};
    PGconn                  *pg;
    PGresult                *res;
    char                     pw[256], msg[1024];

    pg = PQconnectdbParams(kw, vals, 1);
    if (pg == NULL) {
        al_errs_add(errs, "out of memory");
        return NULL;
    }
    if (PQstatus(pg) != CONNECTION_OK)
        goto fail;
    PQsetNoticeProcessor(pg, aud_pg_notice, NULL);
    res = PQexec(pg, "SET statement_timeout = '30s'; SET lock_timeout = '10s'; "
                     "SET TIME ZONE 'UTC'");
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        PQclear(res);
        goto fail;
    }
    PQclear(res);
    return pg;
fail:
    aud_pg_password(conninfo, pw, sizeof(pw));
    al_strlcpy(msg, sizeof(msg), PQerrorMessage(pg));
    al_errs_add(errs, "%s", aud_pg_scrub(msg, pw));
    explicit_bzero(pw, sizeof(pw));
    PQfinish(pg);
    return NULL;
}

/* Runs sql (no parameters); AL_OK when it returned `want`, else errs. */
static int
aud_pg_exec(PGconn *pg, const char *sql, ExecStatusType want, const char *what,
            struct al_errs *errs)
{
    PGresult *res = PQexec(pg, sql);
    int       ok = PQresultStatus(res) == want;

    if (!ok) {
        char msg[512];

        al_strlcpy(msg, sizeof(msg), PQerrorMessage(pg));
        al_errs_add(errs, "%s: %s", what, aud_pg_scrub(msg, NULL));
    }
    PQclear(res);
    return ok ? AL_OK : AL_ERROR;
}

static const char aud_pg_schema_v1[] =
    "CREATE TABLE requests ("
    "instance text NOT NULL, id bigint NOT NULL, ts timestamptz NOT NULL, "
    "duration_us bigint NOT NULL DEFAULT 0, conn_id bigint NOT NULL DEFAULT 0, "
    "sandbox text NOT NULL DEFAULT '', session text NOT NULL DEFAULT '', "
    "tool_call text NOT NULL DEFAULT '', client inet, client_port integer NOT NULL DEFAULT 0, "
    "mode text NOT NULL DEFAULT '', method text NOT NULL DEFAULT '', "
    "scheme text NOT NULL DEFAULT '', host text NOT NULL DEFAULT '', "
    "port integer NOT NULL DEFAULT 0, path text NOT NULL DEFAULT '', "
    "upstream text NOT NULL DEFAULT '', orig_dst text NOT NULL DEFAULT '', "
    "decision text NOT NULL DEFAULT '', rule text NOT NULL DEFAULT '', "
    "reason text NOT NULL DEFAULT '', secrets jsonb NOT NULL DEFAULT '[]', "
    "status integer NOT NULL DEFAULT 0, bytes_up bigint NOT NULL DEFAULT 0, "
    "bytes_down bigint NOT NULL DEFAULT 0, error text NOT NULL DEFAULT '', "
    "pending boolean NOT NULL DEFAULT false, sni text NOT NULL DEFAULT '', "
    "addr text NOT NULL DEFAULT '', detail text NOT NULL DEFAULT '', "
    "CONSTRAINT requests_instance_id UNIQUE (instance, id, ts)) PARTITION BY RANGE (ts);"
    "CREATE TABLE requests_default PARTITION OF requests DEFAULT;"
    "CREATE INDEX requests_ts ON requests USING brin (ts);"
    "CREATE INDEX requests_host_ts ON requests (host, ts);"
    "CREATE INDEX requests_sandbox_ts ON requests (sandbox, ts) WHERE sandbox <> '';"
    "CREATE INDEX requests_tool_call_ts ON requests (tool_call, ts) WHERE tool_call <> '';"
    "CREATE INDEX requests_decision_ts ON requests (decision, ts) WHERE decision <> 'allow';"
    "CREATE TABLE sink_state (instance text PRIMARY KEY, shipped_id bigint NOT NULL, "
    "updated timestamptz NOT NULL DEFAULT now());"
    "INSERT INTO schema_version (version) VALUES (2);";

/* v1 -> v2: the sqlite file's v5 detail column (partitions follow). */
static const char aud_pg_migrate_v1_v2[] =
    "ALTER TABLE requests ADD COLUMN IF NOT EXISTS detail text NOT NULL DEFAULT '';"
    "INSERT INTO schema_version (version) VALUES (2);";

int
aud_pg_migrate(PGconn *pg, int *created, struct al_errs *errs)
{
    PGresult *res;
    char      sql[128];
    int       v, ret = AL_ERROR;

    *created = 0;
    if (aud_pg_exec(pg, "BEGIN", PGRES_COMMAND_OK, "schema", errs) != AL_OK)
        return AL_ERROR;
    snprintf(sql, sizeof(sql), "SELECT pg_advisory_xact_lock(%lld)", (long long)AUD_PG_DDL_LOCK);
    if (aud_pg_exec(pg, sql, PGRES_TUPLES_OK, "schema lock", errs) != AL_OK ||
        aud_pg_exec(pg,
                    "CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL, "
                    "applied timestamptz NOT NULL DEFAULT now())",
                    PGRES_COMMAND_OK, "schema_version", errs) != AL_OK)
        goto out;
    res = PQexec(pg, "SELECT COALESCE(MAX(version), 0) FROM schema_version");
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        char msg[512];

        al_strlcpy(msg, sizeof(msg), PQerrorMessage(pg));
        al_errs_add(errs, "reading schema_version: %s", aud_pg_scrub(msg, NULL));
        PQclear(res);
        goto out;
    }
    v = atoi(PQgetvalue(res, 0, 0));
    PQclear(res);
    if (v > AUD_PG_SCHEMA_VERSION) {
        al_errs_add(errs, "schema version %d was written by a newer airlock (this one knows %d)", v,
                    AUD_PG_SCHEMA_VERSION);
        goto out;
    }
    if (v == 0) {
        if (aud_pg_exec(pg, aud_pg_schema_v1, PGRES_COMMAND_OK, "creating the schema", errs) !=
            AL_OK)
            goto out;
        *created = 1;
    } else if (v == 1 && aud_pg_exec(pg, aud_pg_migrate_v1_v2, PGRES_COMMAND_OK,
                                     "migrating the schema v1 -> v2", errs) != AL_OK) {
        goto out;
    }
    ret = AL_OK;
out:
    if (aud_pg_exec(pg, ret == AL_OK ? "COMMIT" : "ROLLBACK", PGRES_COMMAND_OK, "schema",
                    ret == AL_OK ? errs : NULL) != AL_OK)
        ret = AL_ERROR;
    return ret;
}

int64_t
aud_pg_day(int64_t ts_us)
{
    int64_t s = ts_us >= 0 ? ts_us / 1000000 : -((-ts_us + 999999) / 1000000);

    return s >= 0 ? s / 86400 : -((-s + 86399) / 86400);
}

/* "YYYY-MM-DD" of a day number; also "YYYYMMDD" in compact. */
static void
aud_pg_day_str(int64_t day, char *iso, size_t n, char *compact, size_t m)
{
    time_t    t = (time_t)(day * 86400);
    struct tm tm;

    gmtime_r(&t, &tm);
    if (iso != NULL)
        snprintf(iso, n, "%04d-%02d-%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
    if (compact != NULL)
        snprintf(compact, m, "%04d%02d%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
}

int
aud_pg_partition(PGconn *pg, int64_t day, struct al_errs *errs)
{
    char lo[48], hi[48], name[48], sql[512];
    int  ret;

    if (day < 0 || day > 2932896) /* before 1970 or after 9999: requests_default */
        return AL_OK;
    aud_pg_day_str(day, lo, sizeof(lo), name, sizeof(name));
    aud_pg_day_str(day + 1, hi, sizeof(hi), NULL, 0);
    if (aud_pg_exec(pg, "BEGIN", PGRES_COMMAND_OK, "partition", errs) != AL_OK)
        return AL_ERROR;
    snprintf(sql, sizeof(sql), "SELECT pg_advisory_xact_lock(%lld)", (long long)AUD_PG_DDL_LOCK);
    ret = aud_pg_exec(pg, sql, PGRES_TUPLES_OK, "partition lock", errs);
    if (ret == AL_OK) {
        snprintf(sql, sizeof(sql),
                 "CREATE TABLE IF NOT EXISTS requests_p%s PARTITION OF requests FOR VALUES FROM "
                 "('%s 00:00:00+00') TO ('%s 00:00:00+00')",
                 name, lo, hi);
        ret = aud_pg_exec(pg, sql, PGRES_COMMAND_OK, "creating a partition", errs);
    }
    if (aud_pg_exec(pg, ret == AL_OK ? "COMMIT" : "ROLLBACK", PGRES_COMMAND_OK, "partition",
                    ret == AL_OK ? errs : NULL) != AL_OK)
        ret = AL_ERROR;
    return ret;
}

int
aud_pg_retention(PGconn *pg, int days, int64_t now_us, int *n, struct al_errs *errs)
{
    PGresult *res;
    int64_t   cutoff = aud_pg_day(now_us) - days; /* partitions of days < cutoff go */
    char      sql[256];
    int       ret = AL_OK;

    *n = 0;
    if (days <= 0)
        return AL_OK;
    res = PQexec(pg, "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                     "WHERE i.inhparent = 'requests'::regclass ORDER BY 1");
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        char msg[512];

        al_strlcpy(msg, sizeof(msg), PQerrorMessage(pg));
        al_errs_add(errs, "listing partitions: %s", aud_pg_scrub(msg, NULL));
        PQclear(res);
        return AL_ERROR;
    }
    for (int i = 0; i < PQntuples(res) && ret == AL_OK; i++) {
        const char *name = PQgetvalue(res, i, 0);
        struct tm   tm;
        int         y, m, d;

        if (sscanf(name, "requests_p%4d%2d%2d", &y, &m, &d) != 3)
            continue;
        memset(&tm, 0, sizeof(tm));
        tm.tm_year = y - 1900;
        tm.tm_mon = m - 1;
        tm.tm_mday = d;
        if ((int64_t)timegm(&tm) / 86400 >= cutoff)
            continue;
        snprintf(sql, sizeof(sql), "DROP TABLE IF EXISTS %s", name);
        ret = aud_pg_exec(pg, sql, PGRES_COMMAND_OK, "dropping a partition", errs);
        if (ret == AL_OK) {
            al_log_info("audit sink: retention dropped partition %s", name);
            (*n)++;
        }
    }
    PQclear(res);
    return ret;
}

const char aud_pg_copy_cols[] =
    "instance, id, ts, duration_us, conn_id, sandbox, session, tool_call, client, client_port, "
    "mode, method, scheme, host, port, path, upstream, orig_dst, decision, rule, reason, secrets, "
    "status, bytes_up, bytes_down, error, pending, sni, addr, detail";

int
aud_pg_complete_sql(struct al_dbuf *b)
{
    const char *p = aud_pg_copy_cols;
    int         first = 1;

    al_dbuf_addf(b,
                 "INSERT INTO requests (%s) SELECT %s FROM " AUD_PG_DONE_TABLE " d WHERE d.id <= "
                 "(SELECT s.shipped_id FROM sink_state s WHERE s.instance = d.instance) ON "
                 "CONFLICT (instance, id, ts) DO UPDATE SET ",
                 aud_pg_copy_cols, aud_pg_copy_cols);
    while (*p != '\0') {
        size_t n;

        while (*p == ' ' || *p == ',')
            p++;
        n = strcspn(p, ", ");
        if (n == 0)
            break;
        /* the key: (instance, id) names the row, and its ts never changes */
        if (!((n == 8 && strncmp(p, "instance", 8) == 0) || (n == 2 && strncmp(p, "id", 2) == 0) ||
              (n == 2 && strncmp(p, "ts", 2) == 0))) {
            al_dbuf_addf(b, "%s%.*s = excluded.%.*s", first ? "" : ", ", (int)n, p, (int)n, p);
            first = 0;
        }
        p += n;
    }
    return al_dbuf_adds(b, " WHERE requests.pending");
}

/* Length of the valid UTF-8 sequence at p (n bytes left), 0 if invalid. */
static size_t
aud_pg_utf8(const unsigned char *p, size_t n)
{
    size_t   len, i;
    unsigned cp;

    if (p[0] < 0x80)
        return 1;
    if ((p[0] & 0xe0) == 0xc0) {
        len = 2;
        cp = p[0] & 0x1f;
    } else if ((p[0] & 0xf0) == 0xe0) {
        len = 3;
        cp = p[0] & 0x0f;
    } else if ((p[0] & 0xf8) == 0xf0) {
        len = 4;
        cp = p[0] & 0x07;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

/* Appends s[0..n) as a COPY text field: \\ \t \n \r escaped, NUL and
 * invalid UTF-8 as the text \xNN (a literal backslash). Plain ASCII (the
 * common case) goes in one copy. */
static void
aud_pg_copy_str(struct al_dbuf *b, const char *s, size_t n)
{
    static const char    hex[] = "0123456789ABCDEF";
    const unsigned char *p = (const unsigned char *)s;
    size_t               i = 0, run = 0;

    for (i = 0; i < n; i++)
        if (p[i] < 0x20 || p[i] >= 0x80 || p[i] == '\\')
            break;
    if (i == n) {
        al_dbuf_add(b, s, n);
        return;
    }
    run = i;
    while (i < n) {
        size_t l = aud_pg_utf8(p + i, n - i);
        char   esc[6];

        if (l > 0 && p[i] != '\\' && p[i] != '\t' && p[i] != '\n' && p[i] != '\r' && p[i] != 0) {
            i += l;
            run += l;
            continue;
        }
        if (run > 0)
            al_dbuf_add(b, s + i - run, run);
        run = 0;
        if (l == 0 || p[i] == 0) {
            memcpy(esc, "\\\\x", 3);
            esc[3] = hex[p[i] >> 4];
            esc[4] = hex[p[i] & 15];
            al_dbuf_add(b, esc, 5);
        } else {
            esc[0] = '\\';
            esc[1] = p[i] == '\\' ? '\\' : p[i] == '\t' ? 't' : p[i] == '\n' ? 'n' : 'r';
            al_dbuf_add(b, esc, 2);
        }
        i++;
    }
    if (run > 0)
        al_dbuf_add(b, s + i - run, run);
}

/* Appends v in decimal (no printf: this runs per field of every shipped row). */
static void
aud_pg_put_i64(struct al_dbuf *b, int64_t v)
{
    char     d[24];
    int      k = (int)sizeof(d);
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;

    do {
        d[--k] = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    if (v < 0)
        d[--k] = '-';
    al_dbuf_add(b, d + k, sizeof(d) - (size_t)k);
}

/* n digits of v, zero-padded, at out. */
static void
aud_pg_digits(char *out, int n, long v)
{
    while (n-- > 0) {
        out[n] = (char)('0' + v % 10);
        v /= 10;
    }
}

#define AUD_PG_FIELD(b, f) aud_pg_copy_str((b), (f), strnlen((f), sizeof(f)))

/* "ip:port" or "[v6]:port" -> the inet text and the port; 0 when not an address. */
static int
aud_pg_split_client(const char *c, char *ip, size_t n, int *port)
{
    const char     *colon;
    size_t          il;
    unsigned char   bin[16];
    struct in6_addr a6;
    long            p;
    char           *end;

    *port = 0;
    if (c[0] == '[') {
        const char *rb = strchr(c, ']');

        if (rb == NULL || rb[1] != ':')
            return 0;
        il = (size_t)(rb - c - 1);
        colon = rb + 1;
        c++;
    } else {
        colon = strrchr(c, ':');
        if (colon == NULL)
            return 0;
        il = (size_t)(colon - c);
    }
    if (il == 0 || il >= n)
        return 0;
    memcpy(ip, c, il);
    ip[il] = '\0';
    if (inet_pton(AF_INET, ip, bin) != 1 && inet_pton(AF_INET6, ip, &a6) != 1)
        return 0;
    p = strtol(colon + 1, &end, 10);
    if (*end != '\0' || p < 0 || p > 65535)
        return 0;
    *port = (int)p;
    return 1;
}

int
aud_pg_copy_row(struct al_dbuf *b, const char *instance, const struct aud_record *r)
{
    /* the date and time of the last second formatted, per thread */
    static _Thread_local time_t last_t;
    static _Thread_local int    last_ok;
    static _Thread_local char   last_s[40];
    static _Thread_local size_t last_n;
    char                        ts[64], ip[64];
    time_t    t = (time_t)(r->ts_us >= 0 ? r->ts_us / 1000000 : (r->ts_us - 999999) / 1000000);
    long      frac = (long)(r->ts_us - (int64_t)t * 1000000);
    int       port, k;
    struct tm tm;

    if (!last_ok || t != last_t) { /* "YYYY-MM-DD HH:MM:SS." once a second */
        gmtime_r(&t, &tm);
        k = snprintf(last_s, sizeof(last_s), "%04d-%02d-%02d %02d:%02d:%02d.", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        last_n = k > 0 && (size_t)k < sizeof(last_s) ? (size_t)k : 0;
        last_t = t;
        last_ok = 1;
    }
    memcpy(ts, last_s, last_n);
    aud_pg_digits(ts + last_n, 6, frac);
    memcpy(ts + last_n + 6, "+00", 4);
    aud_pg_copy_str(b, instance, strlen(instance));
    al_dbuf_add(b, "\t", 1);
    aud_pg_put_i64(b, r->row_id);
    al_dbuf_add(b, "\t", 1);
    al_dbuf_add(b, ts, last_n + 9);
    al_dbuf_add(b, "\t", 1);
    aud_pg_put_i64(b, r->duration_us);
    al_dbuf_add(b, "\t", 1);
    aud_pg_put_i64(b, (int64_t)(r->conn_id & 0x7fffffffffffffffULL));
    al_dbuf_add(b, "\t", 1);
    AUD_PG_FIELD(b, r->sandbox);
    al_dbuf_adds(b, "\t");
    AUD_PG_FIELD(b, r->session);
    al_dbuf_adds(b, "\t");
    AUD_PG_FIELD(b, r->tool_call);
    if (aud_pg_split_client(r->client, ip, sizeof(ip), &port)) {
        al_dbuf_add(b, "\t", 1);
        al_dbuf_adds(b, ip);
        al_dbuf_add(b, "\t", 1);
        aud_pg_put_i64(b, port);
        al_dbuf_add(b, "\t", 1);
    } else
        al_dbuf_adds(b, "\t\\N\t0\t");
    AUD_PG_FIELD(b, r->mode);
    al_dbuf_adds(b, "\t");
    AUD_PG_FIELD(b, r->method);
    al_dbuf_adds(b, "\t");
    AUD_PG_FIELD(b, r->scheme);
    al_dbuf_adds(b, "\t");
    AUD_PG_FIELD(b, r->host);
    al_dbuf_add(b, "\t", 1);
    aud_pg_put_i64(b, r->port);
    al_dbuf_add(b, "\t", 1);
    AUD_PG_FIELD(b, r->path);
    al_dbuf_adds(b, "\t");
    AUD_PG_FIELD(b, r->upstream);
    al_dbuf_adds(b, "\t");
    AUD_PG_FIELD(b, r->orig_dst);
    al_dbuf_adds(b, "\t");
    AUD_PG_FIELD(b, r->decision);
    al_dbuf_adds(b, "\t");
    AUD_PG_FIELD(b, r->rule);
    al_dbuf_adds(b, "\t");
    AUD_PG_FIELD(b, r->reason);
    al_dbuf_adds(b, "\t");
    {
        /* "a,b" -> ["a","b"]: a JSON array, then COPY-escaped */
        struct al_dbuf j;
        const char    *s = r->secrets;
        size_t         n = strnlen(r->secrets, sizeof(r->secrets));
        size_t         i = 0;

        if (n == 0) { /* most rows: no secret, no allocation */
            al_dbuf_add(b, "[]", 2);
            goto secrets_done;
        }
        al_dbuf_init(&j, 4096);
        al_dbuf_adds(&j, "[");
        while (i < n) {
            size_t e = i;

            while (e < n && s[e] != ',')
                e++;
            if (e > i) {
                char one[sizeof(r->secrets) + 1];

                if (j.len > 1)
                    al_dbuf_adds(&j, ",");
                memcpy(one, s + i, e - i);
                one[e - i] = '\0';
                aud_fmt_json_str(&j, one);
            }
            i = e + 1;
        }
        al_dbuf_adds(&j, "]");
        if (j.data != NULL)
            aud_pg_copy_str(b, j.data, j.len);
        else
            al_dbuf_adds(b, "[]");
        al_dbuf_free(&j);
    }
secrets_done:
    al_dbuf_add(b, "\t", 1);
    aud_pg_put_i64(b, r->status);
    al_dbuf_add(b, "\t", 1);
    aud_pg_put_i64(b, r->bytes_up);
    al_dbuf_add(b, "\t", 1);
    aud_pg_put_i64(b, r->bytes_down);
    al_dbuf_add(b, "\t", 1);
    AUD_PG_FIELD(b, r->error);
    al_dbuf_add(b, r->pending ? "\tt\t" : "\tf\t", 3);
    AUD_PG_FIELD(b, r->sni);
    al_dbuf_adds(b, "\t");
    AUD_PG_FIELD(b, r->addr);
    al_dbuf_adds(b, "\t");
    AUD_PG_FIELD(b, r->detail);
    return al_dbuf_adds(b, "\n") == AL_OK ? AL_OK : AL_ERROR;
}
