/*
 * aud_ship.c - the fleet sink's shipper: one thread that copies committed
 * rows from the local sqlite file (the outbox) to PostgreSQL, in id order,
 * in batches of AUD_SHIP_BATCH rows (one COPY, one transaction each).
 *
 * Exactly once: PostgreSQL's sink_state holds, per instance, the last local
 * id it has; each batch's transaction first locks that row (an upsert with
 * RETURNING), checks it is the id the batch follows, COPYs the rows and
 * moves the mark, and commits. A crash or a lost acknowledgement between
 * the commit and the local save of the mark is harmless: after a reconnect
 * the shipper takes PostgreSQL's mark (ahead of the local one) and goes on
 * from there. The unique key (instance, id, ts) backs this up. The local
 * mark (table sink_state in the sqlite file, one row per instance) is what
 * retention uses while PostgreSQL is away: no local row above it is deleted.
 *
 * Order: sqlite ids of one file only grow and a row is visible only once
 * committed, so "id > mark" never skips a row.
 *
 * Pending rows (a strict request under way, a websocket from its 101 until
 * its close, a strict tunnel) are completed in place locally, later. A
 * batch stops before one only while it is younger (since the shipper first
 * saw it) than AUD_SHIP_PENDING_GRACE_US, so a short strict request still
 * ships once, completed; after that it is shipped pending like any row and
 * the rows after it follow. Its id goes into the local table sink_pending
 * in the same sqlite transaction that saves the mark. When the writer
 * commits a completion it pokes the shipper (aud_ship_poke), which then
 * reads the sink_pending rows completed since (and always after adding
 * ids, and after a connect) and ships them as an update of the same
 * PostgreSQL row (aud_pg_complete_sql: INSERT ... ON CONFLICT (instance,
 * id, ts) DO UPDATE ... WHERE requests.pending; idempotent), then drops
 * their ids. So PostgreSQL ends with what the local file says; a row cut by
 * a crash stays pending in both.
 *
 * sink_pending survives restarts. Its gaps are closed from PostgreSQL: when
 * its mark is ahead of the local one (a crash or a lost acknowledgement
 * after a commit, a failed local save), the ids in between that are pending
 * there and are the same rows here (same ts) are added; when it is behind
 * (restored from a backup), the ids above it are dropped (those rows ship
 * again as they are now). At start, ids whose local row is still pending
 * (cut by the crash or stop of the previous run: nobody can complete them
 * now) or gone are dropped. Retention (aud_db.c) keeps the rows it names.
 *
 * Outages: any PostgreSQL error drops the connection, is counted, logged at
 * most every AUD_SHIP_ERRLOG_US with the number of failures since, and the
 * shipper reconnects with backoff (100 ms doubling to 5 s). The proxy never
 * waits for any of this: rows are durable in the local file.
 *
 * The password is never logged: messages use the target description
 * (aud_pg_check) and libpq's scrubbed messages.
 */
#include "aud_pg.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define AUD_SHIP_IDLE_MS 100
#define AUD_SHIP_BACKOFF_MIN_MS 100
#define AUD_SHIP_BACKOFF_MAX_MS 5000
#define AUD_SHIP_ERRLOG_US (5 * 1000000LL)
#define AUD_SHIP_RETENTION_US (3600 * 1000000LL)
#define AUD_SHIP_DAYS 64

struct aud_ship {
    char *db_path, *conninfo, *instance;
    char  target[256];
    int   retention_days;

    pthread_t       thread;
    int             started;
    pthread_mutex_t mu;
    pthread_cond_t  cv;
    int             stopping;
    int64_t         stop_deadline; /* monotonic */

    _Atomic int64_t  shipped;
    _Atomic uint64_t rows, errors, lag, completed;
    _Atomic int      up;
    pthread_mutex_t  err_mu;
    char             last_error[256];

    _Atomic uint64_t completions; /* aud_ship_poke: the writer committed completions */

    /* thread only */
    sqlite3       *db;
    sqlite3_stmt  *sel, *save, *maxid, *pend_add, *pend_del, *pend_cut, *done_sel, *ts_sel;
    int64_t        saved; /* the mark in the local file */
    dev_t          dev;
    ino_t          ino;
    PGconn        *pg;
    int            backoff_ms;
    int64_t        retry_us, errlog_us, retention_us;
    uint64_t       errs_unlogged;
    int64_t        days[AUD_SHIP_DAYS];
    int            ndays;
    struct al_dbuf buf;
    struct al_dbuf next; /* the batch after buf, formatted while the COPY of buf runs */
    int64_t        next_from, next_last;
    int            next_n, next_ok;
    int64_t       *pend, *next_pend; /* ids of the rows in buf / next shipped pending */
    int            npend, next_npend;
    int64_t        young_wait; /* a batch stopped at a young pending row: its grace
                                  ends then (monotonic), 0 when none */
    int            no_grace;   /* stopping: ship pending rows as they are */
    uint64_t       polled;     /* `completions` when sink_pending was last read */
    int            poll_due;   /* read sink_pending at the next chance */
    struct al_dbuf done;       /* completed rows to ship */
    int64_t       *done_ids;
    struct al_dbuf upsert;     /* aud_pg_complete_sql */
    long           kill_after; /* tests: SIGKILL itself after this many commits, before the save */
    long           commits;
};

static void
aud_ship_set_error(struct aud_ship *s, const char *msg)
{
    pthread_mutex_lock(&s->err_mu);
    al_strlcpy(s->last_error, sizeof(s->last_error), msg);
    pthread_mutex_unlock(&s->err_mu);
}

/* A PostgreSQL (or outbox) failure: counted, logged per interval, connection dropped. */
static void
aud_ship_fail(struct aud_ship *s, const char *what, const char *msg)
{
    int64_t now = al_mono_us();
    char    line[512];

    snprintf(line, sizeof(line), "%s: %s", what, msg);
    aud_ship_set_error(s, line);
    atomic_fetch_add(&s->errors, 1);
    atomic_store(&s->up, 0);
    s->errs_unlogged++;
    if (s->pg != NULL) {
        PQfinish(s->pg);
        s->pg = NULL;
    }
    s->ndays = 0;
    s->backoff_ms = s->backoff_ms == 0 ? AUD_SHIP_BACKOFF_MIN_MS : s->backoff_ms * 2;
    if (s->backoff_ms > AUD_SHIP_BACKOFF_MAX_MS)
        s->backoff_ms = AUD_SHIP_BACKOFF_MAX_MS;
    s->retry_us = now + (int64_t)s->backoff_ms * 1000;
    if (s->errlog_us != 0 && now - s->errlog_us < AUD_SHIP_ERRLOG_US)
        return;
    al_log_err("audit sink: %s: %s (%llu failure(s) since the last report; retrying in %d ms; "
               "%llu row(s) waiting in the local file; requests are not affected)",
               s->target, line, (unsigned long long)s->errs_unlogged, s->backoff_ms,
               (unsigned long long)atomic_load(&s->lag));
    s->errlog_us = now;
    s->errs_unlogged = 0;
}

/* libpq's last message, scrubbed. */
static const char *
aud_ship_pgerr(struct aud_ship *s, char *buf, size_t n)
{
    al_strlcpy(buf, n, s->pg != NULL ? PQerrorMessage(s->pg) : "not connected");
    return aud_pg_scrub(buf, NULL);
}

static void
aud_ship_local_close(struct aud_ship *s)
{
    sqlite3_stmt **st[] = {&s->sel,      &s->save,     &s->maxid,    &s->pend_add,
                           &s->pend_del, &s->pend_cut, &s->done_sel, &s->ts_sel};

    for (size_t i = 0; i < sizeof(st) / sizeof(st[0]); i++) {
        sqlite3_finalize(*st[i]);
        *st[i] = NULL;
    }
    sqlite3_close(s->db);
    s->db = NULL;
}

/* Opens the outbox, creates its sink_state table, reads the local mark. */
static int
aud_ship_local_open(struct aud_ship *s, struct al_errs *errs)
{
    sqlite3_stmt *st = NULL;
    struct stat   sb;
    char          sql[1024];
    int           v;

    aud_sqlite_setup();
    if (sqlite3_open_v2(s->db_path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK)
        goto sqlerr;
    sqlite3_busy_timeout(s->db, AUD_BUSY_TIMEOUT_MS);
    if (stat(s->db_path, &sb) != 0) {
        al_errs_add(errs, "%s: %s", s->db_path, strerror(errno));
        goto fail;
    }
    s->dev = sb.st_dev;
    s->ino = sb.st_ino;
    v = aud_db_schema_version(s->db);
    if (v <= 0) {
        al_errs_add(errs, "%s: not an airlock audit database", s->db_path);
        goto fail;
    }
    /* sink_pending: the writer creates it too (its retention reads it) */
    if (sqlite3_exec(s->db,
                     "CREATE TABLE IF NOT EXISTS sink_state (instance TEXT PRIMARY KEY, "
                     "shipped_id INTEGER NOT NULL, updated_us INTEGER NOT NULL);"
                     "CREATE TABLE IF NOT EXISTS sink_pending (instance TEXT NOT NULL, id INTEGER "
                     "NOT NULL, PRIMARY KEY (instance, id)) WITHOUT ROWID",
                     NULL, NULL, NULL) != SQLITE_OK)
        goto sqlerr;
    snprintf(sql, sizeof(sql), "SELECT %s FROM requests WHERE id > ?1 ORDER BY id LIMIT %d",
             aud_query_columns(v), AUD_SHIP_BATCH);
    if (sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s->sel, NULL) != SQLITE_OK)
        goto sqlerr;
    snprintf(sql, sizeof(sql),
             "SELECT %s FROM requests WHERE id IN (SELECT id FROM sink_pending WHERE instance = "
             "?1 AND id <= ?2) AND pending = 0 ORDER BY id LIMIT %d",
             aud_query_columns(v), AUD_SHIP_BATCH);
    if (sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s->done_sel, NULL) !=
            SQLITE_OK ||
        sqlite3_prepare_v3(s->db,
                           "INSERT OR IGNORE INTO sink_pending (instance, id) VALUES (?1, ?2)", -1,
                           SQLITE_PREPARE_PERSISTENT, &s->pend_add, NULL) != SQLITE_OK ||
        sqlite3_prepare_v3(s->db, "DELETE FROM sink_pending WHERE instance = ?1 AND id = ?2", -1,
                           SQLITE_PREPARE_PERSISTENT, &s->pend_del, NULL) != SQLITE_OK ||
        sqlite3_prepare_v3(s->db, "DELETE FROM sink_pending WHERE instance = ?1 AND id > ?2", -1,
                           SQLITE_PREPARE_PERSISTENT, &s->pend_cut, NULL) != SQLITE_OK ||
        sqlite3_prepare_v3(s->db, "SELECT ts FROM requests WHERE id = ?1", -1,
                           SQLITE_PREPARE_PERSISTENT, &s->ts_sel, NULL) != SQLITE_OK ||
        sqlite3_prepare_v3(s->db,
                           "INSERT INTO sink_state (instance, shipped_id, updated_us) VALUES "
                           "(?1, ?2, ?3) ON CONFLICT (instance) DO UPDATE SET shipped_id = "
                           "excluded.shipped_id, updated_us = excluded.updated_us",
                           -1, SQLITE_PREPARE_PERSISTENT, &s->save, NULL) != SQLITE_OK ||
        sqlite3_prepare_v3(s->db, "SELECT COALESCE(MAX(id), 0) FROM requests", -1,
                           SQLITE_PREPARE_PERSISTENT, &s->maxid, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(s->db, "SELECT shipped_id FROM sink_state WHERE instance = ?1", -1, &st,
                           NULL) != SQLITE_OK)
        goto sqlerr;
    sqlite3_bind_text(st, 1, s->instance, -1, SQLITE_STATIC);
    s->saved = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    atomic_store(&s->shipped, s->saved);
    sqlite3_finalize(st);
    s->poll_due = 1;
    return AL_OK;
sqlerr:
    al_errs_add(errs, "%s: sink state: %s", s->db_path,
                s->db != NULL ? sqlite3_errmsg(s->db) : "cannot open");
fail:
    sqlite3_finalize(st);
    aud_ship_local_close(s);
    return AL_ERROR;
}

/* Steps a write statement on (instance, id). 1 when done. */
static int
aud_ship_step_id(struct aud_ship *s, sqlite3_stmt *st, int64_t id)
{
    int rc;

    sqlite3_bind_text(st, 1, s->instance, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, id);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE;
}

/*
 * Saves the local mark, and in the same sqlite transaction adds the ids in
 * add[0..nadd) to sink_pending and drops those above `cut` (>= 0). AL_OK,
 * or AL_ERROR (logged; nothing changed). A lost mark alone is harmless
 * (PostgreSQL's mark is the truth), lost ids are not: the caller then
 * reconnects, and the connect adds them again from PostgreSQL.
 */
static int
aud_ship_local_save_ids(struct aud_ship *s, int64_t id, const int64_t *add, int nadd, int64_t cut)
{
    int tx = nadd > 0 || cut >= 0, ok;

    if (tx && sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        goto fail;
    sqlite3_bind_text(s->save, 1, s->instance, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s->save, 2, id);
    sqlite3_bind_int64(s->save, 3, al_now_us());
    ok = sqlite3_step(s->save) == SQLITE_DONE;
    sqlite3_reset(s->save);
    for (int i = 0; i < nadd && ok; i++)
        ok = aud_ship_step_id(s, s->pend_add, add[i]);
    if (ok && cut >= 0)
        ok = aud_ship_step_id(s, s->pend_cut, cut);
    if (ok && tx && sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        ok = 0;
    if (!ok) {
        if (tx)
            (void)sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        goto fail;
    }
    s->saved = id;
    return AL_OK;
fail:
    al_log_warnx("audit sink: %s: saving the high-water mark: %s", s->db_path,
                 sqlite3_errmsg(s->db));
    return AL_ERROR;
}

/*
 * At start (nobody can complete a row of the previous run now): drops the
 * ids whose local row is still pending or gone, and those of other
 * instance names (their rows ship again under this one).
 */
static void
aud_ship_local_prune(struct aud_ship *s)
{
    sqlite3_stmt *st = NULL;

    if (sqlite3_prepare_v2(s->db,
                           "DELETE FROM sink_pending WHERE instance <> ?1 OR NOT EXISTS (SELECT 1 "
                           "FROM requests r WHERE r.id = sink_pending.id AND r.pending = 0)",
                           -1, &st, NULL) != SQLITE_OK) {
        al_log_warnx("audit sink: %s: sink_pending: %s", s->db_path, sqlite3_errmsg(s->db));
        return;
    }
    sqlite3_bind_text(st, 1, s->instance, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        al_log_warnx("audit sink: %s: sink_pending: %s", s->db_path, sqlite3_errmsg(s->db));
    else if (sqlite3_changes(s->db) > 0)
        al_log_info("audit sink: %s: forgot %d id(s) in sink_pending: rows the previous run "
                    "left pending (they stay pending, here and in PostgreSQL)",
                    s->db_path, sqlite3_changes(s->db));
    sqlite3_finalize(st);
}

/* The outbox file was removed or replaced (the writer reopens it): follow it. */
static int
aud_ship_local_check(struct aud_ship *s)
{
    struct stat    sb;
    struct al_errs errs;

    if (s->db != NULL && stat(s->db_path, &sb) == 0 && sb.st_dev == s->dev && sb.st_ino == s->ino)
        return AL_OK;
    if (s->db != NULL)
        al_log_warnx("audit sink: %s was replaced; shipping from the new file", s->db_path);
    aud_ship_local_close(s);
    al_errs_init(&errs);
    if (aud_ship_local_open(s, &errs) != AL_OK) {
        aud_ship_set_error(s, errs.text.data ? errs.text.data : "outbox");
        al_errs_free(&errs);
        return AL_ERROR;
    }
    al_errs_free(&errs);
    if (s->pg != NULL) { /* take PostgreSQL's mark for the new file at the next connect */
        PQfinish(s->pg);
        s->pg = NULL;
    }
    return AL_OK;
}

static void
aud_ship_lag(struct aud_ship *s)
{
    int64_t max = 0, sh = atomic_load(&s->shipped);

    if (s->maxid != NULL && sqlite3_step(s->maxid) == SQLITE_ROW)
        max = sqlite3_column_int64(s->maxid, 0);
    if (s->maxid != NULL)
        sqlite3_reset(s->maxid);
    atomic_store(&s->lag, max > sh ? (uint64_t)(max - sh) : 0);
}

/* Runs a one-parameter statement returning one bigint; -1 on error. */
static int64_t
aud_ship_mark(struct aud_ship *s, const char *sql)
{
    const char *p[1] = {s->instance};
    PGresult   *res = PQexecParams(s->pg, sql, 1, NULL, p, NULL, NULL, 0);
    int64_t     v = -1;

    if (PQresultStatus(res) == PGRES_TUPLES_OK) {
        v = 0;
        if (PQntuples(res) == 1)
            v = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    }
    PQclear(res);
    return v;
}

/* Runs a statement without parameters or rows. AL_OK or AL_ERROR (failed, handled). */
static int
aud_ship_exec(struct aud_ship *s, const char *sql, const char *what)
{
    PGresult *res = PQexec(s->pg, sql);
    int       ok = PQresultStatus(res) == PGRES_COMMAND_OK;

    PQclear(res);
    if (!ok) {
        char msg[512];

        aud_ship_fail(s, what, aud_ship_pgerr(s, msg, sizeof(msg)));
        return AL_ERROR;
    }
    return AL_OK;
}

/*
 * Takes PostgreSQL's mark as the shipped one (at connect, or when it moved
 * under a batch) and brings sink_pending along. Ahead of the local mark: the
 * rows in between went in some earlier transaction whose end we did not see
 * (a crash, a lost acknowledgement, a failed local save), so the ids there
 * that PostgreSQL holds pending and that are the same rows here (same ts)
 * are added. Behind it (a restored backup): the ids above are dropped, as
 * their rows ship again as they are now. AL_OK or AL_ERROR (failed, handled).
 */
static int
aud_ship_follow(struct aud_ship *s, int64_t mark)
{
    int64_t *ids = NULL, cut = -1;
    int      n = 0, rc;
    char     msg[512];

    if (mark > s->saved) {
        char        lo[32], hi[32];
        const char *p[3] = {s->instance, lo, hi};
        PGresult   *res;
        int         nt;

        snprintf(lo, sizeof(lo), "%lld", (long long)s->saved);
        snprintf(hi, sizeof(hi), "%lld", (long long)mark);
        res = PQexecParams(s->pg,
                           "SELECT id, (extract(epoch FROM ts) * 1000000)::bigint FROM requests "
                           "WHERE instance = $1 AND id > $2 AND id <= $3 AND pending ORDER BY id",
                           3, NULL, p, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            PQclear(res);
            aud_ship_fail(s, "reading pending rows", aud_ship_pgerr(s, msg, sizeof(msg)));
            return AL_ERROR;
        }
        nt = PQntuples(res);
        ids = nt > 0 ? al_calloc((size_t)nt, sizeof(*ids)) : NULL;
        if (nt > 0 && ids == NULL) {
            PQclear(res);
            aud_ship_fail(s, "reading pending rows", "out of memory");
            return AL_ERROR;
        }
        for (int i = 0; i < nt; i++) {
            int64_t id = strtoll(PQgetvalue(res, i, 0), NULL, 10);
            int64_t ts = strtoll(PQgetvalue(res, i, 1), NULL, 10);

            sqlite3_bind_int64(s->ts_sel, 1, id);
            if (sqlite3_step(s->ts_sel) == SQLITE_ROW && sqlite3_column_int64(s->ts_sel, 0) == ts)
                ids[n++] = id;
            sqlite3_reset(s->ts_sel);
        }
        PQclear(res);
    } else if (mark < s->saved) {
        cut = mark;
    }
    rc = aud_ship_local_save_ids(s, mark, ids, n, cut);
    al_free(ids);
    if (rc != AL_OK) {
        snprintf(msg, sizeof(msg), "%s: %s", s->db_path, sqlite3_errmsg(s->db));
        aud_ship_fail(s, "saving the mark locally", msg);
        return AL_ERROR;
    }
    atomic_store(&s->shipped, mark);
    if (n > 0)
        s->poll_due = 1;
    return AL_OK;
}

/* Connects, migrates, takes PostgreSQL's mark. AL_OK or AL_ERROR (failed, counted). */
static int
aud_ship_connect(struct aud_ship *s)
{
    struct al_errs errs;
    char           msg[512];
    int            created = 0;
    int64_t        mark;

    al_errs_init(&errs);
    s->pg = aud_pg_connect(s->conninfo, &errs);
    if (s->pg == NULL || aud_pg_migrate(s->pg, &created, &errs) != AL_OK) {
        al_strlcpy(msg, sizeof(msg), errs.text.data ? errs.text.data : "connect failed");
        al_errs_free(&errs);
        aud_ship_fail(s, "connect", aud_pg_scrub(msg, NULL));
        return AL_ERROR;
    }
    al_errs_free(&errs);
    if (created)
        al_log_info("audit sink: %s: created the schema (version %d)", s->target,
                    AUD_PG_SCHEMA_VERSION);
    mark = aud_ship_mark(s, "SELECT shipped_id FROM sink_state WHERE instance = $1");
    if (mark < 0) {
        aud_ship_fail(s, "reading sink_state", aud_ship_pgerr(s, msg, sizeof(msg)));
        return AL_ERROR;
    }
    if (mark != atomic_load(&s->shipped)) {
        if (mark > atomic_load(&s->shipped))
            al_log_info("audit sink: %s: PostgreSQL already has rows up to id %lld of instance "
                        "%s (local mark %lld): going on from there",
                        s->target, (long long)mark, s->instance,
                        (long long)atomic_load(&s->shipped));
        else
            al_log_warnx("audit sink: %s: PostgreSQL has rows up to id %lld of instance %s, the "
                         "local mark says %lld: shipping again from %lld",
                         s->target, (long long)mark, s->instance,
                         (long long)atomic_load(&s->shipped), (long long)mark);
    }
    if ((mark != atomic_load(&s->shipped) || mark != s->saved) && aud_ship_follow(s, mark) != AL_OK)
        return AL_ERROR;
    if (aud_ship_exec(s,
                      "CREATE TEMP TABLE IF NOT EXISTS " AUD_PG_DONE_TABLE
                      " (LIKE requests) ON COMMIT DELETE ROWS",
                      "completions table") != AL_OK)
        return AL_ERROR;
    s->poll_due = 1; /* completions that came while away */
    if (s->errs_unlogged > 0 || s->errlog_us != 0)
        al_log_info("audit sink: %s: connected (instance %s); resuming after id %lld", s->target,
                    s->instance, (long long)mark);
    s->errlog_us = 0;
    s->errs_unlogged = 0;
    s->backoff_ms = 0;
    s->retry_us = 0;
    atomic_store(&s->up, 1);
    aud_ship_set_error(s, "");
    return AL_OK;
}

/* Makes sure the partition of `day` exists (cached per connection). */
static int
aud_ship_partition(struct aud_ship *s, int64_t day)
{
    struct al_errs errs;
    char           msg[512];

    for (int i = 0; i < s->ndays; i++)
        if (s->days[i] == day)
            return AL_OK;
    al_errs_init(&errs);
    if (aud_pg_partition(s->pg, day, &errs) != AL_OK) {
        al_strlcpy(msg, sizeof(msg), errs.text.data ? errs.text.data : "partition");
        al_errs_free(&errs);
        aud_ship_fail(s, "partition", aud_pg_scrub(msg, NULL));
        return AL_ERROR;
    }
    al_errs_free(&errs);
    if (s->ndays == AUD_SHIP_DAYS)
        s->ndays = 0;
    s->days[s->ndays++] = day;
    return AL_OK;
}

/* Rolls back after a failure inside the batch transaction. */
static void
aud_ship_abort(struct aud_ship *s, const char *what)
{
    char msg[512];

    aud_ship_pgerr(s, msg, sizeof(msg));
    aud_ship_fail(s, what, msg);
}

/*
 * 1 when a batch waits before this pending row: it began less than the
 * grace ago, so it may still ship once, completed. Each row's age is its
 * own (rows begun together wait together, not one grace after another);
 * a row dated in the future (a clock stepped back) is not young: a clock
 * cannot wedge the shipper.
 */
static int
aud_ship_young(struct aud_ship *s, const struct aud_record *r)
{
    int64_t age = al_now_us() - r->ts_us;

    if (s->no_grace || age < 0 || age >= AUD_SHIP_PENDING_GRACE_US)
        return 0;
    s->young_wait = al_mono_us() + (AUD_SHIP_PENDING_GRACE_US - age);
    return 1;
}

/*
 * Reads the rows after `from` into b as COPY lines: *n rows, the last id in
 * *last, the ids of those shipped pending in pend[0..*npend). With `ddl` 0
 * (the next batch, formatted while PostgreSQL works on the current COPY: no
 * other statement can run then) it stops before a row whose partition is
 * not known to exist. 0, or -1 on failure (handled).
 */
static int
aud_ship_fill(struct aud_ship *s, int64_t from, struct al_dbuf *b, int64_t *last, int *n,
              int64_t *pend, int *npend, int ddl)
{
    struct aud_record r;
    int64_t           day;
    int               rc, known;

    al_dbuf_reset(b);
    *last = from;
    *n = 0;
    *npend = 0;
    sqlite3_bind_int64(s->sel, 1, from);
    while ((rc = sqlite3_step(s->sel)) == SQLITE_ROW) {
        aud_query_row(s->sel, &r);
        if (r.pending && aud_ship_young(s, &r))
            break; /* it may still ship completed; the rows after it wait a moment */
        day = aud_pg_day(r.ts_us);
        known = 0;
        for (int i = 0; i < s->ndays && !known; i++)
            known = s->days[i] == day;
        if (!known && !ddl)
            break;
        if (!known && aud_ship_partition(s, day) != AL_OK) {
            sqlite3_reset(s->sel);
            return -1;
        }
        if (aud_pg_copy_row(b, s->instance, &r) != AL_OK) {
            sqlite3_reset(s->sel);
            aud_ship_fail(s, "batch", "out of memory");
            return -1;
        }
        *last = r.row_id;
        (*n)++;
        if (r.pending)
            pend[(*npend)++] = r.row_id;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        char msg[256];

        snprintf(msg, sizeof(msg), "%s: %s", s->db_path, sqlite3_errmsg(s->db));
        sqlite3_reset(s->sel);
        aud_ship_set_error(s, msg);
        atomic_fetch_add(&s->errors, 1);
        return -1;
    }
    sqlite3_reset(s->sel); /* ends the read transaction before the network */
    return 0;
}

/*
 * Ships the next batch (s->next when it was formatted ahead for this mark,
 * else read now). Returns 1 when rows went, 0 when there was nothing to
 * ship, -1 on failure (handled).
 */
static int
aud_ship_batch(struct aud_ship *s)
{
    int64_t        from = atomic_load(&s->shipped), last, mark;
    int            n, rc;
    PGresult      *res;
    char           sql[1024], lastid[32];
    const char    *p[2];
    struct al_dbuf tmp;
    int64_t       *tp;

    if (s->next_ok && s->next_from == from && s->next_n > 0) {
        tmp = s->buf; /* the batch formatted during the previous COPY */
        s->buf = s->next;
        s->next = tmp;
        tp = s->pend;
        s->pend = s->next_pend;
        s->next_pend = tp;
        s->npend = s->next_npend;
        last = s->next_last;
        n = s->next_n;
    } else if (aud_ship_fill(s, from, &s->buf, &last, &n, s->pend, &s->npend, 1) != 0) {
        return -1;
    }
    s->next_ok = 0;
    if (n == 0)
        return 0;

    res = PQexec(s->pg, "BEGIN");
    rc = PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    if (!rc) {
        aud_ship_abort(s, "begin");
        return -1;
    }
    mark = aud_ship_mark(s, "INSERT INTO sink_state (instance, shipped_id) VALUES ($1, 0) ON "
                            "CONFLICT (instance) DO UPDATE SET instance = excluded.instance "
                            "RETURNING shipped_id");
    if (mark < 0) {
        aud_ship_abort(s, "locking sink_state");
        return -1;
    }
    if (mark != from) {
        /* Someone (an earlier run of this replica) moved the mark: follow it. */
        res = PQexec(s->pg, "ROLLBACK");
        PQclear(res);
        al_log_warnx("audit sink: %s: instance %s: PostgreSQL's mark is %lld, expected %lld; "
                     "following it (is another replica using the same instance name?)",
                     s->target, s->instance, (long long)mark, (long long)from);
        return aud_ship_follow(s, mark) == AL_OK ? 1 : -1;
    }
    snprintf(sql, sizeof(sql), "COPY requests (%s) FROM STDIN", aud_pg_copy_cols);
    res = PQexec(s->pg, sql);
    rc = PQresultStatus(res) == PGRES_COPY_IN;
    PQclear(res);
    if (!rc) {
        aud_ship_abort(s, "COPY");
        return -1;
    }
    if (PQputCopyData(s->pg, s->buf.data, (int)s->buf.len) != 1 || PQputCopyEnd(s->pg, NULL) != 1) {
        aud_ship_abort(s, "COPY data");
        return -1;
    }
    /* PostgreSQL parses and indexes the batch now: format the next one meanwhile */
    s->next_from = last;
    s->next_ok = aud_ship_fill(s, last, &s->next, &s->next_last, &s->next_n, s->next_pend,
                               &s->next_npend, 0) == 0;
    rc = 1;
    while ((res = PQgetResult(s->pg)) != NULL) {
        if (PQresultStatus(res) != PGRES_COMMAND_OK)
            rc = 0;
        PQclear(res);
    }
    if (!rc) {
        aud_ship_abort(s, "COPY");
        return -1;
    }
    snprintf(lastid, sizeof(lastid), "%lld", (long long)last);
    p[0] = s->instance;
    p[1] = lastid;
    res = PQexecParams(s->pg,
                       "UPDATE sink_state SET shipped_id = $2, updated = now() WHERE instance = $1",
                       2, NULL, p, NULL, NULL, 0);
    rc = PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    if (!rc) {
        aud_ship_abort(s, "moving the mark");
        return -1;
    }
    res = PQexec(s->pg, "COMMIT");
    rc = PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    if (!rc) {
        /* Committed or not, we cannot tell: the next connect reads the mark. */
        aud_ship_abort(s, "commit");
        return -1;
    }
    s->commits++;
    if (s->kill_after > 0 && s->commits >= s->kill_after) {
        al_log_warnx("audit sink: test hook: SIGKILL after commit %ld, before the local save",
                     s->commits);
        raise(SIGKILL);
    }
    atomic_store(&s->shipped, last);
    atomic_fetch_add(&s->rows, (uint64_t)n);
    if (aud_ship_local_save_ids(s, last, s->pend, s->npend, -1) != AL_OK && s->npend > 0) {
        /* the ids shipped pending must be remembered: the reconnect takes
         * them from PostgreSQL (aud_ship_follow) */
        snprintf(sql, sizeof(sql), "%s: %s", s->db_path, sqlite3_errmsg(s->db));
        aud_ship_fail(s, "saving the mark locally", sql);
        return -1;
    }
    if (s->npend > 0)
        s->poll_due = 1; /* one may have been completed since it was read */
    return 1;
}

/* One transaction: COPY s->done into the temp table, move it over the
 * pending rows. AL_OK or AL_ERROR (failed, handled). */
static int
aud_ship_done_pg(struct aud_ship *s)
{
    PGresult *res;
    char      sql[1024];
    int       ok;

    if (aud_ship_exec(s, "BEGIN", "begin") != AL_OK)
        return AL_ERROR;
    snprintf(sql, sizeof(sql), "COPY " AUD_PG_DONE_TABLE " (%s) FROM STDIN", aud_pg_copy_cols);
    res = PQexec(s->pg, sql);
    ok = PQresultStatus(res) == PGRES_COPY_IN;
    PQclear(res);
    if (ok && (PQputCopyData(s->pg, s->done.data, (int)s->done.len) != 1 ||
               PQputCopyEnd(s->pg, NULL) != 1))
        ok = 0;
    while (ok && (res = PQgetResult(s->pg)) != NULL) {
        if (PQresultStatus(res) != PGRES_COMMAND_OK)
            ok = 0;
        PQclear(res);
    }
    if (!ok) {
        aud_ship_abort(s, "COPY completions");
        return AL_ERROR;
    }
    /* committed or not when COMMIT fails: shipped again, which changes nothing twice */
    if (aud_ship_exec(s, s->upsert.data, "completing rows") != AL_OK ||
        aud_ship_exec(s, "COMMIT", "commit") != AL_OK)
        return AL_ERROR;
    return AL_OK;
}

/*
 * Ships the completed versions of rows shipped pending (sink_pending rows
 * no longer pending here), when the writer committed a completion since the
 * last look, or after ids were added, or after a connect. 1 when some went,
 * 0 when there was nothing to do, -1 on failure (handled).
 */
static int
aud_ship_done(struct aud_ship *s)
{
    uint64_t          c = atomic_load(&s->completions); /* before the read: none is missed */
    struct aud_record r;
    int64_t           day, cutoff = aud_pg_day(al_now_us()) - s->retention_days;
    int               n = 0, m = 0, rc;
    char              msg[512];

    if (!s->poll_due && c == s->polled)
        return 0;
    al_dbuf_reset(&s->done);
    sqlite3_bind_text(s->done_sel, 1, s->instance, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s->done_sel, 2, atomic_load(&s->shipped));
    while ((rc = sqlite3_step(s->done_sel)) == SQLITE_ROW) {
        aud_query_row(s->done_sel, &r);
        s->done_ids[n++] = r.row_id;
        day = aud_pg_day(r.ts_us);
        if (s->retention_days > 0 && day < cutoff)
            continue; /* its partition is dropped (aud_pg_retention's rule): not made again */
        if (aud_ship_partition(s, day) != AL_OK) {
            sqlite3_reset(s->done_sel);
            return -1;
        }
        if (aud_pg_copy_row(&s->done, s->instance, &r) != AL_OK) {
            sqlite3_reset(s->done_sel);
            aud_ship_fail(s, "completions", "out of memory");
            return -1;
        }
        m++;
    }
    sqlite3_reset(s->done_sel);
    if (rc != SQLITE_DONE) {
        snprintf(msg, sizeof(msg), "%s: %s", s->db_path, sqlite3_errmsg(s->db));
        aud_ship_set_error(s, msg);
        atomic_fetch_add(&s->errors, 1);
        return -1;
    }
    if (n == 0) {
        s->polled = c;
        s->poll_due = 0;
        return 0;
    }
    if (m > 0 && aud_ship_done_pg(s) != AL_OK)
        return -1;
    atomic_fetch_add(&s->completed, (uint64_t)m);
    rc = sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK;
    for (int i = 0; i < n && rc; i++)
        rc = aud_ship_step_id(s, s->pend_del, s->done_ids[i]);
    if (rc && sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        rc = 0;
    if (!rc) { /* they are looked at again with the next completion: harmless */
        al_log_warnx("audit sink: %s: sink_pending: %s", s->db_path, sqlite3_errmsg(s->db));
        (void)sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    }
    s->polled = c;
    s->poll_due = n == AUD_SHIP_BATCH; /* more may wait */
    return 1;
}

static void
aud_ship_retention(struct aud_ship *s)
{
    struct al_errs errs;
    int            n = 0;

    s->retention_us = al_mono_us() + AUD_SHIP_RETENTION_US;
    if (s->retention_days <= 0 || s->pg == NULL)
        return;
    al_errs_init(&errs);
    if (aud_pg_retention(s->pg, s->retention_days, al_now_us(), &n, &errs) != AL_OK) {
        char msg[512];

        al_strlcpy(msg, sizeof(msg), errs.text.data ? errs.text.data : "retention");
        al_log_warnx("audit sink: %s: retention: %s", s->target, aud_pg_scrub(msg, NULL));
        atomic_fetch_add(&s->errors, 1);
    }
    al_errs_free(&errs);
    s->ndays = 0; /* a dropped partition may be one we cached */
}

/* Waits until `deadline` (monotonic µs) or a stop. Lock not held. */
static void
aud_ship_wait(struct aud_ship *s, int64_t deadline)
{
    struct timespec ts;

    ts.tv_sec = (time_t)(deadline / 1000000);
    ts.tv_nsec = (long)(deadline % 1000000) * 1000;
    pthread_mutex_lock(&s->mu);
    if (!s->stopping)
        (void)pthread_cond_timedwait(&s->cv, &s->mu, &ts);
    pthread_mutex_unlock(&s->mu);
}

static int
aud_ship_stopping(struct aud_ship *s, int64_t *deadline)
{
    int st;

    pthread_mutex_lock(&s->mu);
    st = s->stopping;
    *deadline = s->stop_deadline;
    pthread_mutex_unlock(&s->mu);
    return st;
}

static void *
aud_ship_main(void *arg)
{
    struct aud_ship   *s = arg;
    int64_t            now, deadline;
    int                rc;
    struct sched_param sp;

    /* Rows are durable in the local file: shipping them is background work.
     * SCHED_BATCH (never preempts a worker on wake-up) and nice 10 (a small
     * share of a core whose workers are busy, all of an idle one): under
     * saturation the lag grows and is caught up afterwards, instead of the
     * shipper taking request throughput. */
    memset(&sp, 0, sizeof(sp));
    if (pthread_setschedparam(pthread_self(), SCHED_BATCH, &sp) != 0 ||
        setpriority(PRIO_PROCESS, (id_t)gettid(), 10) != 0)
        al_log_debug("audit sink: shipper thread keeps its scheduling priority");

    for (;;) {
        int stopping = aud_ship_stopping(s, &deadline);

        now = al_mono_us();
        if (stopping && (s->pg == NULL || now >= deadline))
            break;
        if (aud_ship_local_check(s) != AL_OK) {
            if (stopping)
                break;
            aud_ship_wait(s, now + 1000000);
            continue;
        }
        aud_ship_lag(s);
        if (s->pg == NULL) {
            if (now < s->retry_us) { /* wake twice a second: the lag gauge stays fresh */
                aud_ship_wait(s, s->retry_us < now + 500000 ? s->retry_us : now + 500000);
                continue;
            }
            if (aud_ship_connect(s) != AL_OK)
                continue;
        }
        if (now >= s->retention_us)
            aud_ship_retention(s);
        s->no_grace = stopping; /* the writer has drained: no completion comes now */
        s->young_wait = 0;
        rc = aud_ship_batch(s);
        if (rc >= 0 && s->pg != NULL) {
            int rd = aud_ship_done(s);

            rc = rd != 0 ? rd : rc;
        }
        if (rc == 0) {
            int64_t wake = al_mono_us() + AUD_SHIP_IDLE_MS * 1000;

            aud_ship_lag(s);
            if (stopping)
                break;
            if (s->young_wait != 0 && s->young_wait < wake) /* a pending row's grace ends */
                wake = s->young_wait;
            aud_ship_wait(s, wake);
        } else if (rc < 0 && s->pg != NULL) {
            aud_ship_wait(s, al_mono_us() + 1000000); /* an outbox error */
        }
    }
    return NULL;
}

struct aud_ship *
aud_ship_start(const struct aud_ship_conf *conf, struct al_errs *errs)
{
    struct aud_ship   *s;
    pthread_condattr_t ca;
    const char        *k;
    int                rc;

    s = al_calloc(1, sizeof(*s));
    if (s == NULL) {
        al_errs_add(errs, "audit sink: out of memory");
        return NULL;
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->err_mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cv, &ca);
    pthread_condattr_destroy(&ca);
    al_dbuf_init(&s->buf, (size_t)AUD_SHIP_BATCH * 12 * 1024);
    al_dbuf_init(&s->next, (size_t)AUD_SHIP_BATCH * 12 * 1024);
    al_dbuf_init(&s->done, (size_t)AUD_SHIP_BATCH * 12 * 1024);
    al_dbuf_init(&s->upsert, 8192);
    s->db_path = al_strdup(conf->db_path);
    s->conninfo = al_strdup(conf->conninfo);
    s->instance = al_strdup(conf->instance);
    s->retention_days = conf->retention_days;
    s->pend = al_calloc(AUD_SHIP_BATCH, sizeof(*s->pend));
    s->next_pend = al_calloc(AUD_SHIP_BATCH, sizeof(*s->next_pend));
    s->done_ids = al_calloc(AUD_SHIP_BATCH, sizeof(*s->done_ids));
    if (s->db_path == NULL || s->conninfo == NULL || s->instance == NULL || s->pend == NULL ||
        s->next_pend == NULL || s->done_ids == NULL || aud_pg_complete_sql(&s->upsert) != AL_OK ||
        s->upsert.data == NULL) {
        al_errs_add(errs, "audit sink: out of memory");
        goto fail;
    }
    if (aud_pg_check(s->conninfo, s->target, sizeof(s->target), errs) != AL_OK)
        goto fail;
    if (aud_ship_local_open(s, errs) != AL_OK)
        goto fail;
    aud_ship_local_prune(s); /* before the writer thread runs: no completion yet */
    k = getenv("AIRLOCK_TEST_SINK_KILL_AFTER_COMMITS");
    if (k != NULL)
        s->kill_after = strtol(k, NULL, 10);
    s->retention_us = al_mono_us();
    rc = pthread_create(&s->thread, NULL, aud_ship_main, s);
    if (rc != 0) {
        al_errs_add(errs, "audit sink: cannot start the shipper thread: %s", strerror(rc));
        goto fail;
    }
    (void)pthread_setname_np(s->thread, "airlock-ship");
    s->started = 1;
    al_log_info("audit sink: shipping %s to %s as instance %s (from id %lld)", s->db_path,
                s->target, s->instance, (long long)atomic_load(&s->shipped));
    return s;
fail:
    aud_ship_stop(s, 0);
    return NULL;
}

void
aud_ship_stop(struct aud_ship *s, int grace_ms)
{
    if (s == NULL)
        return;
    if (s->started) {
        pthread_mutex_lock(&s->mu);
        s->stopping = 1;
        s->stop_deadline = al_mono_us() + (int64_t)grace_ms * 1000;
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
    }
    if (s->pg != NULL)
        PQfinish(s->pg);
    aud_ship_local_close(s);
    al_dbuf_free(&s->buf);
    al_dbuf_free(&s->next);
    al_dbuf_free(&s->done);
    al_dbuf_free(&s->upsert);
    al_free(s->pend);
    al_free(s->next_pend);
    al_free(s->done_ids);
    if (s->conninfo != NULL)
        explicit_bzero(s->conninfo, strlen(s->conninfo));
    al_free(s->conninfo);
    al_free(s->db_path);
    al_free(s->instance);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->err_mu);
    al_free(s);
}

void
aud_ship_poke(struct aud_ship *s)
{
    if (s != NULL)
        atomic_fetch_add(&s->completions, 1);
}

int64_t
aud_ship_shipped(const struct aud_ship *s)
{
    return s != NULL ? atomic_load(&s->shipped) : INT64_MAX;
}

void
aud_ship_stats(const struct aud_ship *s, struct aud_sink_stats *out)
{
    struct aud_ship *m = (struct aud_ship *)(uintptr_t)s;

    memset(out, 0, sizeof(*out));
    if (s == NULL)
        return;
    out->configured = 1;
    out->up = atomic_load(&s->up);
    out->rows = atomic_load(&s->rows);
    out->completions = atomic_load(&s->completed);
    out->errors = atomic_load(&s->errors);
    out->lag = atomic_load(&s->lag);
    out->shipped_id = atomic_load(&s->shipped);
    al_strlcpy(out->instance, sizeof(out->instance), s->instance);
    al_strlcpy(out->target, sizeof(out->target), s->target);
    pthread_mutex_lock(&m->err_mu);
    al_strlcpy(out->last_error, sizeof(out->last_error), s->last_error);
    pthread_mutex_unlock(&m->err_mu);
}
