/*
 * aud_pgq.c - the read side's PostgreSQL dialect: the same struct
 * aud_filter turned into a WHERE clause with $n parameters (never a value
 * pasted into SQL), rows read back into struct aud_record exactly as the
 * sqlite reader fills it (client "ip:port" rebuilt from inet + port, the
 * secrets jsonb array joined with commas, ts in µs) plus the instance,
 * and the grouped counts `audit stats` prints. aud_cli.c is the one CLI; it
 * calls these when --db is a postgresql:// URI.
 *
 * Order: by (ts, instance, id), the sqlite reader's (ts, id) with the
 * instance between; tail too (there is no store-wide arrival order:
 * --follow reads each instance's new ids up to sink_state's marks, see
 * struct aud_pg_cursor). Rows are read through a cursor in a read-only
 * REPEATABLE READ transaction, AUD_QUERY_BATCH at a time: one snapshot,
 * constant memory (PostgreSQL readers never block the shippers).
 */
#include "aud_pg.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

/* The columns aud_pg_row reads, in its order. */
static const char aud_pg_read_cols[] =
    "instance, id, (extract(epoch FROM ts) * 1000000)::bigint, duration_us, conn_id, sandbox, "
    "session, tool_call, CASE WHEN client IS NULL THEN '' WHEN family(client) = 6 THEN '[' || "
    "host(client) || ']:' || client_port ELSE host(client) || ':' || client_port END, mode, "
    "method, scheme, host, port, path, upstream, orig_dst, decision, rule, reason, "
    "array_to_string(ARRAY(SELECT jsonb_array_elements_text(secrets)), ','), status, bytes_up, "
    "bytes_down, error, pending::int, sni, addr, detail";

static void
aud_pg_param_text(struct aud_pg_params *p, const char *s)
{
    p->v[p->n++] = s;
}

static void
aud_pg_param_int(struct aud_pg_params *p, int64_t v)
{
    snprintf(p->buf[p->n], sizeof(p->buf[p->n]), "%lld", (long long)v);
    p->v[p->n] = p->buf[p->n];
    p->n++;
}

int
aud_pg_where(struct al_dbuf *sql, struct aud_pg_params *p, const struct aud_filter *f)
{
    const char *and = " WHERE ";
    int rc = AL_OK;

    memset(p, 0, sizeof(*p));
    /* the clause with its parameter number spliced in where "$" stands */
#define AUD_PG_ADD(clause)                                                                         \
    do {                                                                                           \
        const char *c_ = (clause);                                                                 \
        if (al_dbuf_adds(sql, and) != AL_OK)                                                       \
            rc = AL_ERROR;                                                                         \
        for (; *c_ != '\0'; c_++) {                                                                \
            if ((*c_ == '$' ? al_dbuf_addf(sql, "$%d", p->n + 1) : al_dbuf_add(sql, c_, 1)) !=     \
                AL_OK)                                                                             \
                rc = AL_ERROR;                                                                     \
        }                                                                                          \
        and = " AND ";                                                                             \
    } while (0)
    if (f->since_us != 0) {
        AUD_PG_ADD("ts >= 'epoch'::timestamptz + $::bigint * interval '1 microsecond'");
        aud_pg_param_int(p, f->since_us);
    }
    if (f->until_us != 0) {
        AUD_PG_ADD("ts < 'epoch'::timestamptz + $::bigint * interval '1 microsecond'");
        aud_pg_param_int(p, f->until_us);
    }
    if (f->instance != NULL) {
        AUD_PG_ADD("instance = $");
        aud_pg_param_text(p, f->instance);
    }
    if (f->sandbox != NULL) {
        AUD_PG_ADD("sandbox = $");
        aud_pg_param_text(p, f->sandbox);
        if (f->sandbox[0] != '\0')
            AUD_PG_ADD("sandbox <> ''");
    }
    if (f->session != NULL) {
        AUD_PG_ADD("session = $");
        aud_pg_param_text(p, f->session);
    }
    if (f->tool_call != NULL) {
        AUD_PG_ADD("tool_call = $");
        aud_pg_param_text(p, f->tool_call);
        if (f->tool_call[0] != '\0')
            AUD_PG_ADD("tool_call <> ''");
    }
    if (f->host != NULL) {
        if (aud_glob_has_meta(f->host)) {
            /* the sqlite LIKE pattern (ESCAPE '\') is valid PostgreSQL LIKE too;
             * host is stored lower-cased and ASCII LIKE in sqlite ignores case */
            if (aud_glob_to_like(f->host, p->like, sizeof(p->like)) != AL_OK)
                return AL_ERROR;
            for (char *q = p->like; *q != '\0'; q++)
                *q = (char)tolower((unsigned char)*q);
            AUD_PG_ADD("host LIKE $ ESCAPE '\\'");
        } else {
            size_t n = strlen(f->host);

            if (n >= sizeof(p->like))
                return AL_ERROR;
            for (size_t i = 0; i <= n; i++)
                p->like[i] = (char)tolower((unsigned char)f->host[i]);
            AUD_PG_ADD("host = $");
        }
        aud_pg_param_text(p, p->like);
    }
    if (f->decision != NULL) {
        AUD_PG_ADD("decision = $");
        aud_pg_param_text(p, f->decision);
        if (strcmp(f->decision, "allow") != 0)
            AUD_PG_ADD("decision <> 'allow'");
    }
    if (f->rule != NULL) {
        AUD_PG_ADD("rule = $");
        aud_pg_param_text(p, f->rule);
    }
    if (f->secret != NULL) { /* as the sqlite reader: injected, or refused */
        AUD_PG_ADD("(secrets ? $ OR error = reason || ': ' || $)");
        aud_pg_param_text(p, f->secret);
    }
    if (f->status_lo != 0 || f->status_hi != 0) {
        AUD_PG_ADD("status >= $::int");
        aud_pg_param_int(p, f->status_lo);
        AUD_PG_ADD("status <= $::int");
        aud_pg_param_int(p, f->status_hi);
    }
#undef AUD_PG_ADD
    return rc;
}

static void
aud_pg_text(const PGresult *res, int row, int col, char *dst, size_t n)
{
    al_strlcpy(dst, n, PQgetisnull(res, row, col) ? "" : PQgetvalue(res, row, col));
}

#define AUD_PG_TEXT(res, i, col, field) aud_pg_text((res), (i), (col), (field), sizeof(field))
#define AUD_PG_I64(res, i, col) strtoll(PQgetvalue((res), (i), (col)), NULL, 10)

static void
aud_pg_row(const PGresult *res, int i, struct aud_record *r)
{
    memset(r, 0, sizeof(*r));
    AUD_PG_TEXT(res, i, 0, r->instance);
    r->row_id = AUD_PG_I64(res, i, 1);
    r->ts_us = AUD_PG_I64(res, i, 2);
    r->duration_us = AUD_PG_I64(res, i, 3);
    r->conn_id = (uint64_t)AUD_PG_I64(res, i, 4);
    AUD_PG_TEXT(res, i, 5, r->sandbox);
    AUD_PG_TEXT(res, i, 6, r->session);
    AUD_PG_TEXT(res, i, 7, r->tool_call);
    AUD_PG_TEXT(res, i, 8, r->client);
    AUD_PG_TEXT(res, i, 9, r->mode);
    AUD_PG_TEXT(res, i, 10, r->method);
    AUD_PG_TEXT(res, i, 11, r->scheme);
    AUD_PG_TEXT(res, i, 12, r->host);
    r->port = (uint16_t)AUD_PG_I64(res, i, 13);
    AUD_PG_TEXT(res, i, 14, r->path);
    AUD_PG_TEXT(res, i, 15, r->upstream);
    AUD_PG_TEXT(res, i, 16, r->orig_dst);
    AUD_PG_TEXT(res, i, 17, r->decision);
    AUD_PG_TEXT(res, i, 18, r->rule);
    AUD_PG_TEXT(res, i, 19, r->reason);
    AUD_PG_TEXT(res, i, 20, r->secrets);
    r->status = (int)AUD_PG_I64(res, i, 21);
    r->bytes_up = AUD_PG_I64(res, i, 22);
    r->bytes_down = AUD_PG_I64(res, i, 23);
    AUD_PG_TEXT(res, i, 24, r->error);
    r->pending = (int)AUD_PG_I64(res, i, 25);
    AUD_PG_TEXT(res, i, 26, r->sni);
    AUD_PG_TEXT(res, i, 27, r->addr);
    AUD_PG_TEXT(res, i, 28, r->detail);
}

/* errs += what: libpq's message (no password can be in it: scrubbed anyway). */
static void
aud_pg_err(PGconn *pg, const char *what, struct al_errs *errs)
{
    char msg[512];

    if (errs == NULL)
        return;
    al_strlcpy(msg, sizeof(msg), PQerrorMessage(pg));
    al_errs_add(errs, "%s: %s", what, aud_pg_scrub(msg, NULL));
}

static int
aud_pg_cmd(PGconn *pg, const char *sql, struct al_errs *errs)
{
    PGresult *res = PQexec(pg, sql);
    int       ok = PQresultStatus(res) == PGRES_COMMAND_OK;

    PQclear(res);
    if (!ok)
        aud_pg_err(pg, sql, errs);
    return ok ? AL_OK : AL_ERROR;
}

void
aud_pg_cursor_free(struct aud_pg_cursor *c)
{
    al_safefree(c->m);
    c->n = c->cap = 0;
    c->ready = 0;
}

/* The marks of sink_state now (in the caller's snapshot) into *now. */
static int
aud_pg_marks(PGconn *pg, struct aud_pg_cursor *now, struct al_errs *errs)
{
    PGresult *res = PQexec(pg, "SELECT instance, shipped_id FROM sink_state ORDER BY 1");
    int       ret = AL_ERROR, n;

    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        aud_pg_err(pg, "reading sink_state", errs);
        goto out;
    }
    n = PQntuples(res);
    now->n = 0;
    if ((size_t)n > now->cap) {
        struct aud_pg_mark *m = al_realloc(now->m, (size_t)n * sizeof(*m));

        if (m == NULL) {
            al_errs_add(errs, "out of memory");
            goto out;
        }
        now->m = m;
        now->cap = (size_t)n;
    }
    for (int i = 0; i < n; i++) {
        al_strlcpy(now->m[i].instance, sizeof(now->m[i].instance), PQgetvalue(res, i, 0));
        now->m[i].id = AUD_PG_I64(res, i, 1);
    }
    now->n = (size_t)n;
    ret = AL_OK;
out:
    PQclear(res);
    return ret;
}

/* Appends s as one element of a PostgreSQL array literal ("..." quoted). */
static void
aud_pg_array_elem(struct al_dbuf *b, const char *s)
{
    al_dbuf_adds(b, b->len > 1 ? ",\"" : "\"");
    for (; *s != '\0'; s++) {
        if (*s == '"' || *s == '\\')
            al_dbuf_adds(b, "\\");
        al_dbuf_add(b, s, 1);
    }
    al_dbuf_adds(b, "\"");
}

int
aud_pg_query_run(PGconn *pg, const struct aud_filter *f, struct aud_pg_cursor *cur,
                 int (*cb)(void *arg, const struct aud_record *r), void *arg, struct al_errs *errs)
{
    struct al_dbuf       sql, where, ai, alo, ahi;
    struct aud_pg_params p;
    struct aud_pg_cursor now = {0};
    struct aud_record   *r = NULL;
    PGresult            *res = NULL;
    char                 fetch[64];
    int                  ret = AL_ERROR, n, follow = cur != NULL && cur->ready, moved = 0;

    al_dbuf_init(&sql, 64 * 1024);
    al_dbuf_init(&where, 64 * 1024);
    al_dbuf_init(&ai, 16 * 1024 * 1024);
    al_dbuf_init(&alo, 16 * 1024 * 1024);
    al_dbuf_init(&ahi, 16 * 1024 * 1024);
    r = al_malloc(sizeof(*r));
    if (r == NULL) {
        al_errs_add(errs, "out of memory");
        goto out;
    }
    if (aud_pg_cmd(pg, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", errs) != AL_OK)
        goto out;
    if (cur != NULL && aud_pg_marks(pg, &now, errs) != AL_OK)
        goto rollback;
    if (aud_pg_where(&where, &p, f) != AL_OK) {
        al_errs_add(errs, "audit: filter too long");
        goto rollback;
    }
    al_dbuf_addf(&sql, "DECLARE aud_rows NO SCROLL CURSOR FOR ");
    if (f->limit > 0 && !follow)
        al_dbuf_adds(&sql, "SELECT * FROM (");
    al_dbuf_addf(&sql, "SELECT %s FROM ", aud_pg_read_cols);
    if (follow) {
        /* the ids each instance committed since the last read: (recorded, now] */
        al_dbuf_adds(&ai, "{");
        al_dbuf_adds(&alo, "{");
        al_dbuf_adds(&ahi, "{");
        for (size_t i = 0; i < now.n; i++) {
            int64_t old = 0;

            for (size_t k = 0; k < cur->n; k++)
                if (strcmp(cur->m[k].instance, now.m[i].instance) == 0)
                    old = cur->m[k].id;
            if (now.m[i].id <= old)
                continue;
            aud_pg_array_elem(&ai, now.m[i].instance);
            al_dbuf_addf(&alo, "%s%lld", moved ? "," : "", (long long)old);
            al_dbuf_addf(&ahi, "%s%lld", moved ? "," : "", (long long)now.m[i].id);
            moved++;
        }
        al_dbuf_adds(&ai, "}");
        al_dbuf_adds(&alo, "}");
        al_dbuf_adds(&ahi, "}");
        if (moved == 0) {
            ret = aud_pg_cmd(pg, "COMMIT", errs);
            goto done;
        }
        if (ai.data == NULL || alo.data == NULL || ahi.data == NULL || p.n + 3 > 20) {
            al_errs_add(errs, "audit: too many instances");
            goto rollback;
        }
        /* driven from the few moved instances: index range scans on (instance, id) */
        al_dbuf_addf(&sql,
                     "unnest($%d::text[], $%d::bigint[], $%d::bigint[]) AS m(i, lo, hi) JOIN "
                     "requests ON requests.instance = m.i AND requests.id > m.lo AND "
                     "requests.id <= m.hi",
                     p.n + 1, p.n + 2, p.n + 3);
        p.v[p.n++] = ai.data;
        p.v[p.n++] = alo.data;
        p.v[p.n++] = ahi.data;
    } else {
        al_dbuf_adds(&sql, "requests");
    }
    if (where.len > 0)
        al_dbuf_add(&sql, where.data, where.len);
    if (f->limit > 0 && !follow)
        al_dbuf_addf(&sql, " ORDER BY ts DESC, instance DESC, id DESC LIMIT %lld) newest",
                     (long long)f->limit);
    al_dbuf_adds(&sql, " ORDER BY 3, 1, 2");
    if (sql.data == NULL) {
        al_errs_add(errs, "audit: filter too long");
        goto rollback;
    }
    res = PQexecParams(pg, sql.data, p.n, NULL, p.v, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        aud_pg_err(pg, "query", errs);
        goto rollback;
    }
    PQclear(res);
    snprintf(fetch, sizeof(fetch), "FETCH %d FROM aud_rows", AUD_QUERY_BATCH);
    for (;;) {
        res = PQexec(pg, fetch);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            aud_pg_err(pg, "fetch", errs);
            goto rollback;
        }
        n = PQntuples(res);
        for (int i = 0; i < n; i++) {
            aud_pg_row(res, i, r);
            ret = cb(arg, r);
            if (ret != AL_OK)
                goto rollback;
        }
        PQclear(res);
        res = NULL;
        if (n < AUD_QUERY_BATCH)
            break;
    }
    ret = aud_pg_cmd(pg, "COMMIT", errs);
done:
    if (ret == AL_OK && cur != NULL) { /* these rows are out: their marks are the cursor */
        struct aud_pg_cursor t = *cur;

        *cur = now;
        cur->ready = 1;
        now = t;
    }
    goto out;
rollback:
    PQclear(res);
    res = NULL;
    if (ret == AL_OK)
        ret = AL_ERROR;
    (void)aud_pg_cmd(pg, "ROLLBACK", NULL);
out:
    PQclear(res);
    aud_pg_cursor_free(&now);
    al_free(r);
    al_dbuf_free(&sql);
    al_dbuf_free(&where);
    al_dbuf_free(&ai);
    al_dbuf_free(&alo);
    al_dbuf_free(&ahi);
    return ret;
}

PGconn *
aud_pg_open_ro(const char *conninfo, struct al_errs *errs)
{
    PGconn   *pg;
    PGresult *res;
    int       v = -1;

    if (aud_pg_check(conninfo, NULL, 0, errs) != AL_OK)
        return NULL;
    pg = aud_pg_connect(conninfo, errs);
    if (pg == NULL)
        return NULL;
    res = PQexec(pg, "SELECT COALESCE(MAX(version), 0) FROM schema_version");
    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
        v = atoi(PQgetvalue(res, 0, 0));
    PQclear(res);
    if (v <= 0) {
        al_errs_add(errs, "not an airlock audit database (no schema_version; run `airlock audit "
                          "migrate --db URI` or start a replica with audit.sink)");
        PQfinish(pg);
        return NULL;
    }
    if (v > AUD_PG_SCHEMA_VERSION) {
        al_errs_add(errs, "schema version %d is newer than this airlock knows (%d)", v,
                    AUD_PG_SCHEMA_VERSION);
        PQfinish(pg);
        return NULL;
    }
    return pg;
}

int
aud_pg_query_each(const char *conninfo, const struct aud_filter          *f,
                  int (*cb)(void *arg, const struct aud_record *r), void *arg, struct al_errs *errs)
{
    PGconn *pg = aud_pg_open_ro(conninfo, errs);
    int     ret;

    if (pg == NULL)
        return AL_ERROR;
    ret = aud_pg_query_run(pg, f, NULL, cb, arg, errs);
    PQfinish(pg);
    return ret;
}

struct aud_pg_scan {
    int (*cb)(void *arg, const struct aud_scan_row *r);
    void *arg;
};

/* A read row as policy replay's struct aud_scan_row (borrowed pointers). */
static int
aud_pg_scan_row(void *arg, const struct aud_record *r)
{
    struct aud_pg_scan *x = arg;
    struct aud_scan_row s;

    memset(&s, 0, sizeof(s));
    s.id = r->row_id;
    s.ts_us = r->ts_us;
    s.sandbox = r->sandbox;
    s.mode = r->mode;
    s.method = r->method;
    s.scheme = r->scheme;
    s.host = r->host;
    s.path = r->path;
    s.path_len = strlen(r->path);
    s.upstream = r->upstream;
    s.decision = r->decision;
    s.rule = r->rule;
    s.reason = r->reason;
    s.sni = r->sni;
    s.addr = r->addr;
    s.port = r->port;
    return x->cb(x->arg, &s);
}

int
aud_pg_query_scan(const char *conninfo, const struct aud_filter            *f,
                  int (*cb)(void *arg, const struct aud_scan_row *r), void *arg, int *version,
                  struct al_errs *errs)
{
    struct aud_pg_scan x = {cb, arg};

    if (version != NULL)
        *version = AUD_SCHEMA_VERSION;
    return aud_pg_query_each(conninfo, f, aud_pg_scan_row, &x, errs);
}

int
aud_pg_groups(PGconn *pg, const struct aud_filter *f, const char *col, int denied_only,
              int64_t limit, int (*cb)(void *arg, const char *key, const int64_t v[7]), void *arg,
              struct al_errs *errs)
{
    struct al_dbuf       sql;
    struct aud_pg_params p;
    PGresult            *res = NULL;
    const char          *expr;
    int                  ret = AL_ERROR;
    int64_t              v[7];

    /* whitelisted keys only; secrets as the comma-joined text the sqlite file has */
    if (strcmp(col, "''") == 0)
        expr = "''::text";
    else if (strcmp(col, "secrets") == 0)
        expr = "array_to_string(ARRAY(SELECT jsonb_array_elements_text(secrets)), ',')";
    else if (strcmp(col, AUD_GROUP_SECRETS) == 0) /* and the one a refusal was about */
        expr = "(array_to_string(ARRAY(SELECT jsonb_array_elements_text(secrets)), ',') || "
               "CASE WHEN reason IN " AUD_SECRET_REFUSALS " AND substr(error, 1, "
               "length(reason) + 2) = reason || ': ' THEN ',' || substr(error, length(reason) + "
               "3) ELSE '' END)";
    else if (strcmp(col, "host") == 0 || strcmp(col, "sandbox") == 0 ||
             strcmp(col, "tool_call") == 0 || strcmp(col, "rule") == 0 ||
             strcmp(col, "decision") == 0 || strcmp(col, "instance") == 0)
        expr = col;
    else {
        al_errs_add(errs, "audit: cannot group by %s", col);
        return AL_ERROR;
    }
    al_dbuf_init(&sql, 64 * 1024);
    al_dbuf_addf(&sql,
                 "SELECT %s AS k, count(*), count(*) FILTER (WHERE decision = 'allow'), "
                 "count(*) FILTER (WHERE decision = 'deny'), count(*) FILTER (WHERE decision = "
                 "'would_deny'), count(*) FILTER (WHERE decision = 'error'), "
                 "COALESCE(sum(bytes_up), 0), COALESCE(sum(bytes_down), 0) FROM requests",
                 expr);
    if (aud_pg_where(&sql, &p, f) != AL_OK) {
        al_errs_add(errs, "audit: filter too long");
        goto out;
    }
    al_dbuf_adds(&sql, " GROUP BY 1");
    /* ties by key, bytewise like sqlite (the expression: an alias cannot take COLLATE) */
    if (denied_only)
        al_dbuf_addf(&sql,
                     " HAVING count(*) FILTER (WHERE decision IN ('deny', 'would_deny')) > 0 "
                     "ORDER BY count(*) FILTER (WHERE decision IN ('deny', 'would_deny')) DESC, "
                     "(%s) COLLATE \"C\"",
                     expr);
    else
        al_dbuf_addf(&sql, " ORDER BY 2 DESC, (%s) COLLATE \"C\"", expr);
    if (limit > 0)
        al_dbuf_addf(&sql, " LIMIT %lld", (long long)limit);
    if (sql.data == NULL) {
        al_errs_add(errs, "audit: filter too long");
        goto out;
    }
    res = PQexecParams(pg, sql.data, p.n, NULL, p.v, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        aud_pg_err(pg, "stats", errs);
        goto out;
    }
    for (int i = 0; i < PQntuples(res); i++) {
        for (int k = 0; k < 7; k++)
            v[k] = AUD_PG_I64(res, i, k + 1);
        if (cb(arg, PQgetisnull(res, i, 0) ? "" : PQgetvalue(res, i, 0), v) != AL_OK)
            goto out;
    }
    ret = AL_OK;
out:
    PQclear(res);
    al_dbuf_free(&sql);
    return ret;
}

int
aud_pg_cli_migrate(const char *conninfo, FILE *out, struct al_errs *errs)
{
    PGconn *pg;
    char    desc[256];
    int     created = 0, ret;

    if (aud_pg_check(conninfo, desc, sizeof(desc), errs) != AL_OK)
        return AL_ERROR;
    pg = aud_pg_connect(conninfo, errs);
    if (pg == NULL)
        return AL_ERROR;
    ret = aud_pg_migrate(pg, &created, errs);
    if (ret == AL_OK)
        ret = aud_pg_partition(pg, aud_pg_day(al_now_us()), errs);
    if (ret == AL_OK)
        fprintf(out, "%s: schema version %d (%s)\n", desc, AUD_PG_SCHEMA_VERSION,
                created ? "created" : "already current");
    PQfinish(pg);
    return ret;
}
