/*
 * aud_query.c - the read side: opening the file read-only next to a running
 * writer (WAL readers never block it), turning a struct aud_filter into a
 * WHERE clause whose every value is a bound parameter, reading rows back
 * into struct aud_record, and parsing --since/--until times.
 *
 * Invariants: no filter value is ever pasted into SQL text. Host globs are
 * translated to LIKE patterns with every LIKE metacharacter (% _ \) escaped
 * first, so only * and ? are wildcards. Files of an older schema are read
 * as they are (missing columns read as empty), never migrated here.
 */
#include "aud_int.h"
#include "aud_pg.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static const char aud_query_cols_v5[] =
    "id, ts, duration_us, conn_id, sandbox, session, tool_call, client, mode, method, scheme, "
    "host, port, path, upstream, orig_dst, decision, rule, reason, secrets, status, bytes_up, "
    "bytes_down, error, pending, sni, addr, detail";
static const char aud_query_cols_v4[] =
    "id, ts, duration_us, conn_id, sandbox, session, tool_call, client, mode, method, scheme, "
    "host, port, path, upstream, orig_dst, decision, rule, reason, secrets, status, bytes_up, "
    "bytes_down, error, pending, sni, addr, '' AS detail";
static const char aud_query_cols_v2[] =
    "id, ts, duration_us, conn_id, sandbox, session, tool_call, client, mode, method, scheme, "
    "host, port, path, upstream, orig_dst, decision, rule, reason, secrets, status, bytes_up, "
    "bytes_down, error, pending, '' AS sni, '' AS addr, '' AS detail";
static const char aud_query_cols_v1[] =
    "id, ts, duration_us, 0 AS conn_id, sandbox, session, tool_call, client, '' AS mode, "
    "method, scheme, host, port, path, upstream, '' AS orig_dst, decision, rule, reason, "
    "secrets, status, bytes_up, bytes_down, error, 0 AS pending, '' AS sni, '' AS addr, "
    "'' AS detail";

const char *
aud_query_columns(int version)
{
    return version <= 1   ? aud_query_cols_v1
           : version <= 3 ? aud_query_cols_v2
           : version == 4 ? aud_query_cols_v4
                          : aud_query_cols_v5;
}

sqlite3 *
aud_db_open_ro(const char *path, struct al_errs *errs)
{
    sqlite3 *db = NULL;
    int      rc;
    int      v;

    aud_sqlite_setup();
    /* NOMUTEX: a read connection is used by one thread only; serialized
     * mode took a mutex twice per column read (8 % of a replay). */
    rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        al_errs_add(errs, "%s: cannot open audit database: %s", path,
                    db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        goto fail;
    }
    sqlite3_busy_timeout(db, AUD_BUSY_TIMEOUT_MS);
    v = aud_db_schema_version(db);
    if (v <= 0) {
        al_errs_add(errs, "%s: not an airlock audit database%s%s", path, v < 0 ? ": " : "",
                    v < 0 ? sqlite3_errmsg(db) : " (no requests table)");
        goto fail;
    }
    if (v > AUD_SCHEMA_VERSION) {
        al_errs_add(errs, "%s: schema version %d is newer than this airlock knows (%d)", path, v,
                    AUD_SCHEMA_VERSION);
        goto fail;
    }
    return db;
fail:
    sqlite3_close(db);
    return NULL;
}

static void
aud_binds_text(struct aud_binds *b, const char *s)
{
    b->type[b->n] = 't';
    b->t[b->n] = s;
    b->n++;
}

static void
aud_binds_int(struct aud_binds *b, int64_t v)
{
    b->type[b->n] = 'i';
    b->i[b->n] = v;
    b->n++;
}

int
aud_query_where(struct al_dbuf *sql, struct aud_binds *b, const struct aud_filter *f)
{
    const char *and = " WHERE ";
    int rc = AL_OK;

    memset(b, 0, sizeof(*b));
#define AUD_Q_ADD(clause)                                                                          \
    do {                                                                                           \
        if (al_dbuf_adds(sql, and) != AL_OK || al_dbuf_adds(sql, (clause)) != AL_OK)               \
            rc = AL_ERROR;                                                                         \
        and = " AND ";                                                                             \
    } while (0)
    if (f->since_us != 0) {
        AUD_Q_ADD("ts >= ?");
        aud_binds_int(b, f->since_us);
    }
    if (f->until_us != 0) {
        AUD_Q_ADD("ts < ?");
        aud_binds_int(b, f->until_us);
    }
    if (f->sandbox != NULL) {
        AUD_Q_ADD("sandbox = ?");
        aud_binds_text(b, f->sandbox);
        if (f->sandbox[0] != '\0')
            AUD_Q_ADD(AUD_IDX_SANDBOX);
    }
    if (f->session != NULL) {
        AUD_Q_ADD("session = ?");
        aud_binds_text(b, f->session);
    }
    if (f->tool_call != NULL) {
        AUD_Q_ADD("tool_call = ?");
        aud_binds_text(b, f->tool_call);
        if (f->tool_call[0] != '\0')
            AUD_Q_ADD(AUD_IDX_TOOL_CALL);
    }
    if (f->host != NULL) {
        if (aud_glob_has_meta(f->host)) {
            if (aud_glob_to_like(f->host, b->glob, sizeof(b->glob)) != AL_OK)
                return AL_ERROR;
            AUD_Q_ADD("host LIKE ? ESCAPE '\\'");
        } else {
            size_t n = strlen(f->host);

            if (n >= sizeof(b->glob))
                return AL_ERROR;
            for (size_t i = 0; i <= n; i++)
                b->glob[i] = (char)tolower((unsigned char)f->host[i]);
            AUD_Q_ADD("host = ?");
        }
        aud_binds_text(b, b->glob);
    }
    if (f->decision != NULL) {
        AUD_Q_ADD("decision = ?");
        aud_binds_text(b, f->decision);
        if (strcmp(f->decision, "allow") != 0)
            AUD_Q_ADD(AUD_IDX_DECISION);
    }
    if (f->rule != NULL) {
        AUD_Q_ADD("rule = ?");
        aud_binds_text(b, f->rule);
    }
    if (f->secret != NULL) {
        /* injected, or refused: a refusal's row has error "<reason>: NAME" */
        AUD_Q_ADD("(instr(',' || secrets || ',', ',' || ? || ',') > 0 OR "
                  "error = reason || ': ' || ?)");
        aud_binds_text(b, f->secret);
        aud_binds_text(b, f->secret);
    }
    if (f->status_lo != 0 || f->status_hi != 0) {
        AUD_Q_ADD("status BETWEEN ? AND ?");
        aud_binds_int(b, f->status_lo);
        aud_binds_int(b, f->status_hi);
    }
    if (f->after_id != 0) {
        AUD_Q_ADD("id > ?");
        aud_binds_int(b, f->after_id);
    }
#undef AUD_Q_ADD
    return rc;
}

int
aud_query_bind(sqlite3_stmt *st, const struct aud_binds *b, int *idx)
{
    int rc;

    for (int k = 0; k < b->n; k++) {
        if (b->type[k] == 'i')
            rc = sqlite3_bind_int64(st, (*idx)++, b->i[k]);
        else
            rc = sqlite3_bind_text(st, (*idx)++, b->t[k], -1, SQLITE_STATIC);
        if (rc != SQLITE_OK)
            return AL_ERROR;
    }
    return AL_OK;
}

static void
aud_query_text(sqlite3_stmt *st, int col, char *dst, size_t n)
{
    const unsigned char *s = sqlite3_column_text(st, col);
    int                  len = sqlite3_column_bytes(st, col);

    if (s == NULL || len <= 0) {
        dst[0] = '\0';
        return;
    }
    if ((size_t)len >= n)
        len = (int)n - 1;
    memcpy(dst, s, (size_t)len);
    dst[len] = '\0';
}

#define AUD_Q_TEXT(st, col, field) aud_query_text((st), (col), (field), sizeof(field))

void
aud_query_row(sqlite3_stmt *st, struct aud_record *r)
{
    memset(r, 0, sizeof(*r));
    r->row_id = sqlite3_column_int64(st, 0);
    r->ts_us = sqlite3_column_int64(st, 1);
    r->duration_us = sqlite3_column_int64(st, 2);
    r->conn_id = (uint64_t)sqlite3_column_int64(st, 3);
    AUD_Q_TEXT(st, 4, r->sandbox);
    AUD_Q_TEXT(st, 5, r->session);
    AUD_Q_TEXT(st, 6, r->tool_call);
    AUD_Q_TEXT(st, 7, r->client);
    AUD_Q_TEXT(st, 8, r->mode);
    AUD_Q_TEXT(st, 9, r->method);
    AUD_Q_TEXT(st, 10, r->scheme);
    AUD_Q_TEXT(st, 11, r->host);
    r->port = (uint16_t)sqlite3_column_int(st, 12);
    AUD_Q_TEXT(st, 13, r->path);
    AUD_Q_TEXT(st, 14, r->upstream);
    AUD_Q_TEXT(st, 15, r->orig_dst);
    AUD_Q_TEXT(st, 16, r->decision);
    AUD_Q_TEXT(st, 17, r->rule);
    AUD_Q_TEXT(st, 18, r->reason);
    AUD_Q_TEXT(st, 19, r->secrets);
    r->status = sqlite3_column_int(st, 20);
    r->bytes_up = sqlite3_column_int64(st, 21);
    r->bytes_down = sqlite3_column_int64(st, 22);
    AUD_Q_TEXT(st, 23, r->error);
    r->pending = sqlite3_column_int(st, 24);
    AUD_Q_TEXT(st, 25, r->sni);
    AUD_Q_TEXT(st, 26, r->addr);
    AUD_Q_TEXT(st, 27, r->detail);
}

/* WHERE for f plus the snapshot bound and the batch cursor:
 *   ... AND id <= ?hi AND ts >= ?cts AND (ts > ?cts OR id > ?cid)   (by time)
 *   ... AND id <= ?hi AND id > ?cid                                 (by id)
 * The cursor is always bound (the first batch gets the smallest key). */
static int
aud_query_where_cursor(struct al_dbuf *sql, struct aud_binds *b, const struct aud_filter *f,
                       int cursor)
{
    if (aud_query_where(sql, b, f) != AL_OK)
        return AL_ERROR;
    al_dbuf_adds(sql, b->n > 0 ? " AND id <= ?" : " WHERE id <= ?");
    if (cursor)
        al_dbuf_adds(sql, f->by_id ? " AND id > ?" : " AND ts >= ? AND (ts > ? OR id > ?)");
    return sql->data != NULL ? AL_OK : AL_ERROR;
}

/* Reads one int64 pair (or one value) from a single-row statement. */
static int
aud_query_step_keys(sqlite3_stmt *st, int64_t *a, int64_t *b, int *found)
{
    int rc = sqlite3_step(st);

    *found = 0;
    if (rc == SQLITE_ROW) {
        *found = 1;
        *a = sqlite3_column_int64(st, 0);
        if (b != NULL)
            *b = sqlite3_column_int64(st, 1);
        rc = SQLITE_DONE;
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? AL_OK : AL_ERROR;
}

/*
 * The read side never keeps a read transaction open while a callback runs
 * (a callback writes to stdout, which may block for as long as the reader
 * of a pipe wants): an open read transaction pins the WAL, checkpoints
 * cannot pass it and the -wal file grows without bound under load. So:
 *   1. one short statement takes the snapshot bound hi = max(id) (rows
 *      committed later are not part of this answer, as with one snapshot);
 *   2. with a limit, one short statement finds the key (ts, id) of the
 *      `limit`-th newest matching row: the answer is every matching row at
 *      or above that key (exactly the newest `limit`, oldest first);
 *   3. rows are read in batches of AUD_QUERY_BATCH in key order, each
 *      batch copied out and its statement reset (ending the transaction)
 *      before the callbacks run; the next batch starts after the last key.
 * Rows deleted by retention meanwhile are skipped; a strict row completed
 * meanwhile is read as it is when its batch is read.
 */
int
aud_query_run(sqlite3 *db, const struct aud_filter                   *f,
              int (*cb)(void *arg, const struct aud_record *r), void *arg, struct al_errs *errs)
{
    sqlite3_stmt      *st = NULL, *lo = NULL;
    struct al_dbuf     sql;
    struct aud_binds   b;
    struct aud_record *recs = NULL;
    const char        *key = f->by_id ? "id" : "ts, id";
    const char        *rkey = f->by_id ? "id DESC" : "ts DESC, id DESC";
    int64_t            hi = 0, cts = INT64_MIN, cid = INT64_MIN, lts = 0, lid = 0;
    int                version, found, idx, n, rc = SQLITE_DONE;
    int                ret = AL_ERROR;

    al_dbuf_init(&sql, 64 * 1024);
    recs = al_calloc(AUD_QUERY_BATCH, sizeof(*recs));
    if (recs == NULL) {
        al_errs_add(errs, "audit: out of memory");
        goto out;
    }
    version = aud_db_schema_version(db);
    if (sqlite3_prepare_v2(db, "SELECT id FROM requests ORDER BY id DESC LIMIT 1", -1, &st, NULL) !=
            SQLITE_OK ||
        aud_query_step_keys(st, &hi, NULL, &found) != AL_OK)
        goto sqlerr;
    sqlite3_finalize(st);
    st = NULL;
    if (!found)
        goto done; /* no rows at all */
    if (f->limit > 0) {
        al_dbuf_addf(&sql, "SELECT ts, id FROM requests");
        if (aud_query_where_cursor(&sql, &b, f, 0) != AL_OK)
            goto toolong;
        al_dbuf_addf(&sql, " ORDER BY %s LIMIT 1 OFFSET ?", rkey);
        if (sql.data == NULL)
            goto toolong;
        idx = 1;
        if (sqlite3_prepare_v2(db, sql.data, -1, &lo, NULL) != SQLITE_OK ||
            aud_query_bind(lo, &b, &idx) != AL_OK || sqlite3_bind_int64(lo, idx, hi) != SQLITE_OK ||
            sqlite3_bind_int64(lo, idx + 1, f->limit - 1) != SQLITE_OK ||
            aud_query_step_keys(lo, &lts, &lid, &found) != AL_OK)
            goto sqlerr;
        if (found) { /* start at (lts, lid) inclusive */
            cts = f->by_id ? 0 : lts;
            cid = lid - 1;
        }
        al_dbuf_reset(&sql);
    }
    al_dbuf_addf(&sql, "SELECT %s FROM requests", aud_query_columns(version));
    if (aud_query_where_cursor(&sql, &b, f, 1) != AL_OK)
        goto toolong;
    al_dbuf_addf(&sql, " ORDER BY %s LIMIT %d", key, AUD_QUERY_BATCH);
    if (sql.data == NULL)
        goto toolong;
    if (sqlite3_prepare_v2(db, sql.data, -1, &st, NULL) != SQLITE_OK)
        goto sqlerr;
    for (;;) {
        idx = 1;
        if (aud_query_bind(st, &b, &idx) != AL_OK || sqlite3_bind_int64(st, idx++, hi) != SQLITE_OK)
            goto sqlerr;
        if (!f->by_id && (sqlite3_bind_int64(st, idx++, cts) != SQLITE_OK ||
                          sqlite3_bind_int64(st, idx++, cts) != SQLITE_OK))
            goto sqlerr;
        if (sqlite3_bind_int64(st, idx, cid) != SQLITE_OK)
            goto sqlerr;
        n = 0;
        while (n < AUD_QUERY_BATCH && (rc = sqlite3_step(st)) == SQLITE_ROW)
            aud_query_row(st, &recs[n++]);
        if (n < AUD_QUERY_BATCH && rc != SQLITE_DONE)
            goto sqlerr;
        sqlite3_reset(st); /* ends the read transaction before any output */
        for (int i = 0; i < n; i++) {
            ret = cb(arg, &recs[i]);
            if (ret != AL_OK)
                goto out;
        }
        ret = AL_ERROR;
        if (n < AUD_QUERY_BATCH)
            break;
        cts = recs[n - 1].ts_us;
        cid = recs[n - 1].row_id;
    }
done:
    ret = AL_OK;
    goto out;
toolong:
    al_errs_add(errs, "audit: filter too long");
    goto out;
sqlerr:
    al_errs_add(errs, "%s: query: %s", sqlite3_db_filename(db, "main"), sqlite3_errmsg(db));
out:
    sqlite3_finalize(st);
    sqlite3_finalize(lo);
    al_dbuf_free(&sql);
    al_free(recs);
    return ret;
}

int
aud_query_each(const char *db_path, const struct aud_filter           *f,
               int (*cb)(void *arg, const struct aud_record *r), void *arg, struct al_errs *errs)
{
    sqlite3 *db = NULL;
    int      ret = AL_ERROR;

    db = aud_db_open_ro(db_path, errs);
    if (db == NULL)
        goto out;
    ret = aud_query_run(db, f, cb, arg, errs);
out:
    sqlite3_close(db);
    return ret;
}

/* ---- bulk scan (policy replay) ----------------------------------------- */

/* The columns of struct aud_scan_row, in its order, per schema version. */
/* Only what a decision reads and what it decided: every column read costs
 * (a replay reads millions of rows). */
static const char aud_scan_cols_v4[] =
    "id, ts, sandbox, mode, method, scheme, host, port, path, upstream, decision, rule, reason, "
    "sni, addr";
static const char aud_scan_cols_v2[] =
    "id, ts, sandbox, mode, method, scheme, host, port, path, upstream, decision, rule, reason, "
    "'' AS sni, '' AS addr";
static const char aud_scan_cols_v1[] =
    "id, ts, sandbox, '' AS mode, method, scheme, host, port, path, upstream, decision, rule, "
    "reason, '' AS sni, '' AS addr";

static const char *
aud_scan_text(sqlite3_stmt *st, int col, size_t *len)
{
    const char *s = (const char *)sqlite3_column_text(st, col);

    if (len != NULL)
        *len = s != NULL ? (size_t)sqlite3_column_bytes(st, col) : 0;
    return s != NULL ? s : "";
}

/*
 * A rowid range scan (the table is read in id order, NOT INDEXED: the
 * filters are checked per row, which for a replay of most of the file is
 * far cheaper than an index walk plus a table lookup per row), in batches of
 * AUD_SCAN_BATCH keyed on id, bounded by max(id) at the start. The callback
 * runs while its batch's statement is stepping: no copy, but it must not
 * block (the read transaction lasts one batch).
 */
int
aud_query_id_range(const char *db_path, int64_t *lo, int64_t *hi, struct al_errs *errs)
{
    sqlite3      *db;
    sqlite3_stmt *st = NULL;
    int           ret = AL_ERROR;

    *lo = *hi = 0;
    if (aud_pg_is_uri(db_path)) /* the shared store: ids are per instance, one reader */
        return AL_OK;
    db = aud_db_open_ro(db_path, errs);
    if (db == NULL)
        return AL_ERROR;
    /* both ends are rowid seeks */
    if (sqlite3_prepare_v2(db,
                           "SELECT (SELECT min(id) FROM requests), (SELECT max(id) FROM requests)",
                           -1, &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW) {
        al_errs_add(errs, "%s: query: %s", db_path, sqlite3_errmsg(db));
        goto out;
    }
    *lo = sqlite3_column_int64(st, 0);
    *hi = sqlite3_column_int64(st, 1);
    ret = AL_OK;
out:
    sqlite3_finalize(st);
    sqlite3_close(db);
    return ret;
}

int
aud_query_scan(const char *db_path, const struct aud_filter             *f,
               int (*cb)(void *arg, const struct aud_scan_row *r), void *arg, int *version,
               struct al_errs *errs)
{
    return aud_query_scan_ids(db_path, f, 0, 0, cb, arg, version, errs);
}

int
aud_query_scan_ids(const char *db_path, const struct aud_filter *f, int64_t id_lo, int64_t id_hi,
                   int (*cb)(void *arg, const struct aud_scan_row *r), void *arg, int *version,
                   struct al_errs *errs)
{
    sqlite3            *db = NULL;
    sqlite3_stmt       *st = NULL;
    struct al_dbuf      sql;
    struct aud_binds    b;
    struct aud_filter   g = *f;
    struct aud_scan_row r;
    int64_t             hi = 0, cid = 0, lts = 0, lid = 0;
    int                 v, found, idx, n, rc, ret = AL_ERROR;
    const char         *cols;

    if (aud_pg_is_uri(db_path)) /* policy replay --db postgresql://... */
        return aud_pg_query_scan(db_path, f, cb, arg, version, errs);
    al_dbuf_init(&sql, 64 * 1024);
    db = aud_db_open_ro(db_path, errs);
    if (db == NULL)
        goto out;
    (void)sqlite3_exec(db, "PRAGMA cache_size=-16384", NULL, NULL, NULL);
    v = aud_db_schema_version(db);
    if (version != NULL)
        *version = v;
    cols = v <= 1 ? aud_scan_cols_v1 : v <= 3 ? aud_scan_cols_v2 : aud_scan_cols_v4;
    if (sqlite3_prepare_v2(db, "SELECT id FROM requests ORDER BY id DESC LIMIT 1", -1, &st, NULL) !=
            SQLITE_OK ||
        aud_query_step_keys(st, &hi, NULL, &found) != AL_OK)
        goto sqlerr;
    sqlite3_finalize(st);
    st = NULL;
    if (!found)
        goto done;
    if (id_hi > 0 && id_hi < hi)
        hi = id_hi;
    if (id_lo > 1)
        cid = id_lo - 1;
    g.by_id = 1;
    g.limit = 0;
    g.after_id = 0;
    if (f->limit > 0) { /* the newest `limit` matching rows: start at that key */
        al_dbuf_addf(&sql, "SELECT id, id FROM requests");
        if (aud_query_where(&sql, &b, &g) != AL_OK)
            goto toolong;
        al_dbuf_adds(&sql, b.n > 0 ? " AND id <= ?" : " WHERE id <= ?");
        al_dbuf_adds(&sql, " ORDER BY id DESC LIMIT 1 OFFSET ?");
        if (sql.data == NULL)
            goto toolong;
        idx = 1;
        if (sqlite3_prepare_v2(db, sql.data, -1, &st, NULL) != SQLITE_OK ||
            aud_query_bind(st, &b, &idx) != AL_OK || sqlite3_bind_int64(st, idx, hi) != SQLITE_OK ||
            sqlite3_bind_int64(st, idx + 1, f->limit - 1) != SQLITE_OK ||
            aud_query_step_keys(st, &lts, &lid, &found) != AL_OK)
            goto sqlerr;
        sqlite3_finalize(st);
        st = NULL;
        if (found && lid - 1 > cid)
            cid = lid - 1;
        al_dbuf_reset(&sql);
    }
    al_dbuf_addf(&sql, "SELECT %s FROM requests NOT INDEXED", cols);
    if (aud_query_where(&sql, &b, &g) != AL_OK)
        goto toolong;
    al_dbuf_adds(&sql, b.n > 0 ? " AND id <= ? AND id > ?" : " WHERE id <= ? AND id > ?");
    al_dbuf_addf(&sql, " ORDER BY id LIMIT %d", AUD_SCAN_BATCH);
    if (sql.data == NULL)
        goto toolong;
    if (sqlite3_prepare_v3(db, sql.data, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) != SQLITE_OK)
        goto sqlerr;
    for (;;) {
        idx = 1;
        if (aud_query_bind(st, &b, &idx) != AL_OK || sqlite3_bind_int64(st, idx, hi) != SQLITE_OK ||
            sqlite3_bind_int64(st, idx + 1, cid) != SQLITE_OK)
            goto sqlerr;
        n = 0;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            r.id = sqlite3_column_int64(st, 0);
            r.ts_us = sqlite3_column_int64(st, 1);
            r.sandbox = aud_scan_text(st, 2, NULL);
            r.mode = aud_scan_text(st, 3, NULL);
            r.method = aud_scan_text(st, 4, NULL);
            r.scheme = aud_scan_text(st, 5, NULL);
            r.host = aud_scan_text(st, 6, NULL);
            r.port = sqlite3_column_int(st, 7);
            r.path = aud_scan_text(st, 8, &r.path_len);
            r.upstream = aud_scan_text(st, 9, NULL);
            r.decision = aud_scan_text(st, 10, NULL);
            r.rule = aud_scan_text(st, 11, NULL);
            r.reason = aud_scan_text(st, 12, NULL);
            r.sni = aud_scan_text(st, 13, NULL);
            r.addr = aud_scan_text(st, 14, NULL);
            cid = r.id;
            n++;
            ret = cb(arg, &r);
            if (ret != AL_OK) {
                sqlite3_reset(st);
                goto out;
            }
        }
        ret = AL_ERROR;
        if (rc != SQLITE_DONE)
            goto sqlerr;
        sqlite3_reset(st); /* ends this batch's read transaction */
        if (n < AUD_SCAN_BATCH)
            break;
    }
done:
    ret = AL_OK;
    goto out;
toolong:
    al_errs_add(errs, "audit: filter too long");
    goto out;
sqlerr:
    al_errs_add(errs, "%s: scan: %s", db_path, sqlite3_errmsg(db));
out:
    sqlite3_finalize(st);
    al_dbuf_free(&sql);
    sqlite3_close(db);
    return ret;
}

/* ---- time parsing ------------------------------------------------------ */

/* Reads exactly n digits at *p into *v; advances *p. */
static int
aud_time_digits(const char **p, int n, int *v)
{
    int x = 0;

    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)(*p)[i]))
            return AL_ERROR;
        x = x * 10 + ((*p)[i] - '0');
    }
    *p += n;
    *v = x;
    return AL_OK;
}

static int
aud_time_mdays(int y, int m)
{
    static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};

    if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
        return 29;
    return days[m - 1];
}

/* RFC 3339 (or a bare date, UTC midnight) into unix µs. */
static int
aud_parse_rfc3339(const char *s, int64_t *out)
{
    const char *p = s;
    struct tm   tm;
    int         y, mo, d, h = 0, mi = 0, sec = 0, oh = 0, om = 0, sign = 0;
    int64_t     frac = 0, scale = 100000, t;

    if (aud_time_digits(&p, 4, &y) != AL_OK || *p++ != '-' ||
        aud_time_digits(&p, 2, &mo) != AL_OK || *p++ != '-' || aud_time_digits(&p, 2, &d) != AL_OK)
        return AL_ERROR;
    if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > aud_time_mdays(y, mo))
        return AL_ERROR;
    if (*p != '\0') {
        if (*p != 'T' && *p != 't' && *p != ' ')
            return AL_ERROR;
        p++;
        if (aud_time_digits(&p, 2, &h) != AL_OK || *p++ != ':' ||
            aud_time_digits(&p, 2, &mi) != AL_OK || *p++ != ':' ||
            aud_time_digits(&p, 2, &sec) != AL_OK)
            return AL_ERROR;
        if (h > 23 || mi > 59 || sec > 60)
            return AL_ERROR;
        if (*p == '.') {
            p++;
            if (!isdigit((unsigned char)*p))
                return AL_ERROR;
            for (; isdigit((unsigned char)*p); p++) {
                frac += (*p - '0') * scale;
                scale /= 10;
            }
        }
        if (*p == 'Z' || *p == 'z') {
            p++;
        } else if (*p == '+' || *p == '-') {
            sign = *p == '+' ? 1 : -1;
            p++;
            if (aud_time_digits(&p, 2, &oh) != AL_OK || *p++ != ':' ||
                aud_time_digits(&p, 2, &om) != AL_OK || oh > 23 || om > 59)
                return AL_ERROR;
        } else {
            return AL_ERROR; /* no zone: ambiguous, refuse */
        }
        if (*p != '\0')
            return AL_ERROR;
    }
    memset(&tm, 0, sizeof(tm));
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec;
    t = (int64_t)timegm(&tm);
    t -= (int64_t)sign * (oh * 3600 + om * 60);
    *out = t * 1000000 + frac;
    return AL_OK;
}

int
aud_parse_time(const char *s, int64_t now_us, int64_t *out_us)
{
    int64_t secs;

    if (s == NULL || *s == '\0')
        return AL_ERROR;
    if (strchr(s, '-') != NULL)
        return aud_parse_rfc3339(s, out_us);
    if (al_parse_duration(s, &secs) != AL_OK || secs > now_us / 1000000)
        return AL_ERROR;
    *out_us = now_us - secs * 1000000;
    return AL_OK;
}
