/*
 * aud_db.c - the audit store: the writer's sqlite connection, schema
 * creation and in-place migrations, and the prepared statements the writer
 * thread runs.
 *
 * Invariants: the file is created by us with mode 0600 before sqlite opens
 * it (sqlite gives -wal/-shm the same mode); the connection is WAL with
 * synchronous=NORMAL (batched) or FULL (strict); the schema version is the
 * highest row of `schema_version`. One struct aud_db belongs to one thread
 * at a time (opened by aud_writer_start, then used only by the writer).
 *
 * Schema history:
 *   v1  requests without mode/orig_dst/conn_id/pending; single-column
 *       indexes on ts, sandbox, host, decision.
 *   v2  + mode, orig_dst, conn_id, pending; indexes (x, ts) for sandbox,
 *       host, decision, tool_call so "exact filter + --since" is one range
 *       scan; plain ts index kept.
 *   v3  the sandbox, tool_call and decision indexes are partial: they hold
 *       only the rows worth finding by that column (tagged rows; decisions
 *       other than allow). Every index entry is a B-tree insert on the
 *       writer thread, so an untagged allowed request now costs two (ts,
 *       host) instead of five; the read side adds the matching term
 *       (`sandbox != ''`, ...) so the planner can use them.
 *   v4  + sni (the client's TLS server name, where there was one) and addr
 *       (the resolved address the address guard checked: the one connected
 *       to, or for an address_not_allowed refusal the first one refused),
 *       so `policy replay` has every input a decision used. Rows from
 *       before read both as ''.
 *   v5  + detail: a JSON object of what a kind of flow adds to its row (a
 *       websocket: {"ws": {messages_up, messages_down, close_client,
 *       close_upstream}}), '' for the rest and for rows from before.
 */
#include "aud_int.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define AUD_COLS_V1                                                                                \
    "id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, duration_us INTEGER NOT NULL DEFAULT 0, "        \
    "sandbox TEXT NOT NULL DEFAULT '', session TEXT NOT NULL DEFAULT '', "                         \
    "tool_call TEXT NOT NULL DEFAULT '', client TEXT NOT NULL DEFAULT '', "                        \
    "method TEXT NOT NULL DEFAULT '', scheme TEXT NOT NULL DEFAULT '', "                           \
    "host TEXT NOT NULL DEFAULT '', port INTEGER NOT NULL DEFAULT 0, "                             \
    "path TEXT NOT NULL DEFAULT '', upstream TEXT NOT NULL DEFAULT '', "                           \
    "decision TEXT NOT NULL DEFAULT '', rule TEXT NOT NULL DEFAULT '', "                           \
    "reason TEXT NOT NULL DEFAULT '', secrets TEXT NOT NULL DEFAULT '', "                          \
    "status INTEGER NOT NULL DEFAULT 0, bytes_up INTEGER NOT NULL DEFAULT 0, "                     \
    "bytes_down INTEGER NOT NULL DEFAULT 0, error TEXT NOT NULL DEFAULT ''"

static const char aud_db_schema_v1[] =
    "CREATE TABLE schema_version (version INTEGER NOT NULL, applied_us INTEGER NOT NULL);"
    "CREATE TABLE requests (" AUD_COLS_V1 ");"
    "CREATE INDEX requests_ts ON requests(ts);"
    "CREATE INDEX requests_sandbox ON requests(sandbox);"
    "CREATE INDEX requests_host ON requests(host);"
    "CREATE INDEX requests_decision ON requests(decision);";

/* The partial indexes' WHERE terms are repeated by aud_query_where(): keep
 * them the same text. */
static const char aud_db_indexes_v3[] =
    "CREATE INDEX IF NOT EXISTS requests_ts ON requests(ts);"
    "CREATE INDEX IF NOT EXISTS requests_host_ts ON requests(host, ts);"
    "CREATE INDEX IF NOT EXISTS requests_sandbox_ts ON requests(sandbox, ts) "
    "WHERE " AUD_IDX_SANDBOX ";"
    "CREATE INDEX IF NOT EXISTS requests_tool_call_ts ON requests(tool_call, ts) "
    "WHERE " AUD_IDX_TOOL_CALL ";"
    "CREATE INDEX IF NOT EXISTS requests_decision_ts ON requests(decision, ts) "
    "WHERE " AUD_IDX_DECISION ";";

static const char aud_db_schema_v5[] =
    "CREATE TABLE schema_version (version INTEGER NOT NULL, applied_us INTEGER NOT NULL);"
    "CREATE TABLE requests (" AUD_COLS_V1 ", mode TEXT NOT NULL DEFAULT '', "
    "orig_dst TEXT NOT NULL DEFAULT '', conn_id INTEGER NOT NULL DEFAULT 0, "
    "pending INTEGER NOT NULL DEFAULT 0, sni TEXT NOT NULL DEFAULT '', "
    "addr TEXT NOT NULL DEFAULT '', detail TEXT NOT NULL DEFAULT '');";

static const char aud_db_migrate_v1_v2[] =
    "ALTER TABLE requests ADD COLUMN mode TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE requests ADD COLUMN orig_dst TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE requests ADD COLUMN conn_id INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE requests ADD COLUMN pending INTEGER NOT NULL DEFAULT 0;"
    "DROP INDEX IF EXISTS requests_sandbox;"
    "DROP INDEX IF EXISTS requests_host;"
    "DROP INDEX IF EXISTS requests_decision;";

/* v2 -> v3: the full-table tag and decision indexes become partial ones
 * (created by aud_db_indexes_v3 right after). */
static const char aud_db_migrate_v2_v3[] = "DROP INDEX IF EXISTS requests_sandbox_ts;"
                                           "DROP INDEX IF EXISTS requests_tool_call_ts;"
                                           "DROP INDEX IF EXISTS requests_decision_ts;";

/* v3 -> v4: the replay inputs (ADD COLUMN with a constant default rewrites
 * nothing: old rows read the default). */
static const char aud_db_migrate_v3_v4[] =
    "ALTER TABLE requests ADD COLUMN sni TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE requests ADD COLUMN addr TEXT NOT NULL DEFAULT '';";

/* v4 -> v5: a JSON object of what a kind of flow adds to its row (a
 * websocket: messages each way and both sides' close codes). */
static const char aud_db_migrate_v4_v5[] =
    "ALTER TABLE requests ADD COLUMN detail TEXT NOT NULL DEFAULT '';";

static const char aud_db_sql_insert[] =
    "INSERT INTO requests (ts, duration_us, conn_id, sandbox, session, tool_call, client, mode, "
    "method, scheme, host, port, path, upstream, orig_dst, decision, rule, reason, secrets, "
    "status, bytes_up, bytes_down, error, pending, sni, addr, detail) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)";

static const char aud_db_sql_update[] =
    "UPDATE requests SET status = ?1, bytes_up = ?2, bytes_down = ?3, duration_us = ?4, "
    "error = ?5, decision = COALESCE(NULLIF(?6, ''), decision), "
    "upstream = COALESCE(NULLIF(?7, ''), upstream), rule = COALESCE(NULLIF(?8, ''), rule), "
    "reason = COALESCE(NULLIF(?9, ''), reason), secrets = COALESCE(NULLIF(?10, ''), secrets), "
    "sni = COALESCE(NULLIF(?12, ''), sni), addr = COALESCE(NULLIF(?13, ''), addr), "
    "detail = COALESCE(NULLIF(?14, ''), detail), pending = 0 "
    "WHERE id = ?11 AND ts = ?15 AND pending = 1";

#define AUD_DB_STR2(x) #x
#define AUD_DB_STR(x) AUD_DB_STR2(x)
/* Rows the fleet sink shipped pending and has still to ship completed
 * (aud_ship.c); empty without a sink. Not part of the versioned schema: an
 * older airlock ignores it. Retention keeps the rows it names. */
static const char aud_db_sql_sink_pending[] =
    "CREATE TABLE IF NOT EXISTS sink_pending (instance TEXT NOT NULL, id INTEGER NOT NULL, "
    "PRIMARY KEY (instance, id)) WITHOUT ROWID";

static const char aud_db_sql_retention[] =
    "DELETE FROM requests WHERE id IN (SELECT id FROM requests WHERE ts < ?1 AND id <= ?2 "
    "AND id NOT IN (SELECT id FROM sink_pending) ORDER BY ts "
    "LIMIT " AUD_DB_STR(AUD_RETENTION_CHUNK_ROWS) ")";

const char *
aud_db_errmsg(const struct aud_db *d)
{
    return d && d->db ? sqlite3_errmsg(d->db) : "database not open";
}

int
aud_db_errcode(const struct aud_db *d)
{
    return d && d->db ? sqlite3_extended_errcode(d->db) : SQLITE_CANTOPEN;
}

int
aud_db_schema_version(sqlite3 *db)
{
    sqlite3_stmt *st = NULL;
    int           v = -1;
    int           rc;

    rc = sqlite3_prepare_v2(db,
                            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND "
                            "name IN ('schema_version', 'requests')",
                            -1, &st, NULL);
    if (rc != SQLITE_OK)
        goto out;
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW)
        goto out;
    if (sqlite3_column_int(st, 0) == 0) {
        v = 0;
        goto out;
    }
    sqlite3_finalize(st);
    st = NULL;
    rc = sqlite3_prepare_v2(db, "SELECT COALESCE(MAX(version), -1) FROM schema_version", -1, &st,
                            NULL);
    if (rc != SQLITE_OK)
        goto out;
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW)
        goto out;
    v = sqlite3_column_int(st, 0);
out:
    sqlite3_finalize(st);
    return v;
}

/* Runs `sql`; on failure adds "path: what: sqlite message" to errs. */
static int
aud_db_exec(sqlite3 *db, const char *sql, const char *path, const char *what, struct al_errs *errs)
{
    char *msg = NULL;
    int   rc;

    rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        al_errs_add(errs, "%s: %s: %s", path, what, msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
        return AL_ERROR;
    }
    return AL_OK;
}

static int
aud_db_mark_version(sqlite3 *db, int version, const char *path, struct al_errs *errs)
{
    char sql[128];

    snprintf(sql, sizeof(sql), "INSERT INTO schema_version VALUES (%d, %lld)", version,
             (long long)al_now_us());
    return aud_db_exec(db, sql, path, "recording schema version", errs);
}

int
aud_db_migrate(sqlite3 *db, const char *path, struct al_errs *errs)
{
    int v;
    int ret = AL_ERROR;

    if (aud_db_exec(db, "BEGIN IMMEDIATE", path, "starting schema transaction", errs) != AL_OK)
        return AL_ERROR;
    v = aud_db_schema_version(db);
    if (v < 0) {
        al_errs_add(errs, "%s: not an airlock audit database (no readable schema_version): %s",
                    path, sqlite3_errmsg(db));
        goto out;
    }
    if (v > AUD_SCHEMA_VERSION) {
        al_errs_add(errs,
                    "%s: schema version %d was written by a newer airlock (this one knows %d)",
                    path, v, AUD_SCHEMA_VERSION);
        goto out;
    }
    if (v == 0) {
        if (aud_db_exec(db, aud_db_schema_v5, path, "creating schema", errs) != AL_OK)
            goto out;
        if (aud_db_mark_version(db, AUD_SCHEMA_VERSION, path, errs) != AL_OK)
            goto out;
        v = AUD_SCHEMA_VERSION;
    }
    if (v == 1) {
        al_log_info("audit: %s: migrating schema v1 -> v2", path);
        if (aud_db_exec(db, aud_db_migrate_v1_v2, path, "migrating v1 -> v2", errs) != AL_OK)
            goto out;
        if (aud_db_mark_version(db, 2, path, errs) != AL_OK)
            goto out;
        v = 2;
    }
    if (v == 2) {
        al_log_info("audit: %s: migrating schema v2 -> v3 (partial tag and decision indexes; "
                    "a large file takes a while)",
                    path);
        if (aud_db_exec(db, aud_db_migrate_v2_v3, path, "migrating v2 -> v3", errs) != AL_OK)
            goto out;
        if (aud_db_mark_version(db, 3, path, errs) != AL_OK)
            goto out;
        v = 3;
    }
    if (v == 3) {
        al_log_info("audit: %s: migrating schema v3 -> v4 (sni, addr)", path);
        if (aud_db_exec(db, aud_db_migrate_v3_v4, path, "migrating v3 -> v4", errs) != AL_OK)
            goto out;
        if (aud_db_mark_version(db, 4, path, errs) != AL_OK)
            goto out;
        v = 4;
    }
    if (v == 4) {
        al_log_info("audit: %s: migrating schema v4 -> v5 (detail)", path);
        if (aud_db_exec(db, aud_db_migrate_v4_v5, path, "migrating v4 -> v5", errs) != AL_OK)
            goto out;
        if (aud_db_mark_version(db, 5, path, errs) != AL_OK)
            goto out;
        v = 5;
    }
    if (aud_db_exec(db, aud_db_indexes_v3, path, "creating indexes", errs) != AL_OK)
        goto out;
    ret = AL_OK;
out:
    if (ret == AL_OK) {
        if (aud_db_exec(db, "COMMIT", path, "committing schema", errs) != AL_OK)
            ret = AL_ERROR;
    }
    if (ret != AL_OK)
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return ret;
}

/*
 * Creates the file with mode 0600 if it does not exist (sqlite would use
 * 0644 & ~umask), checks it is a regular file, and records its identity.
 */
static int
aud_db_create_file(const char *path, dev_t *dev, ino_t *ino, struct al_errs *errs)
{
    struct stat st;
    int         fd = -1;
    int         ret = AL_ERROR;

    fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 && errno == EEXIST)
        fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        al_errs_add(errs, "%s: cannot open audit database: %s", path, strerror(errno));
        goto out;
    }
    if (fstat(fd, &st) != 0) {
        al_errs_add(errs, "%s: fstat: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        al_errs_add(errs, "%s: audit database is not a regular file", path);
        goto out;
    }
    if ((st.st_mode & 077) != 0)
        al_log_warnx("audit: %s: mode %03o lets other users read the audit trail (want 0600)", path,
                     (unsigned)(st.st_mode & 0777));
    *dev = st.st_dev;
    *ino = st.st_ino;
    ret = AL_OK;
out:
    if (fd >= 0)
        close(fd);
    return ret;
}

static int
aud_db_prepare(struct aud_db *d, const char *sql, sqlite3_stmt **st, struct al_errs *errs)
{
    int rc;

    rc = sqlite3_prepare_v3(d->db, sql, -1, SQLITE_PREPARE_PERSISTENT, st, NULL);
    if (rc != SQLITE_OK) {
        al_errs_add(errs, "%s: preparing statement: %s", d->path, sqlite3_errmsg(d->db));
        return AL_ERROR;
    }
    return AL_OK;
}

static void
aud_sqlite_config(void)
{
    /* sqlite's memory statistics take a global mutex on every allocation;
     * nothing here reads them. Only possible before sqlite initialises. */
    (void)sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
}

void
aud_sqlite_setup(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;

    pthread_once(&once, aud_sqlite_config);
}

struct aud_db *
aud_db_open(const char *path, int strict, int log_query, struct al_errs *errs)
{
    struct aud_db *d = NULL;
    char           pragmas[256];
    char          *msg = NULL;
    int            rc;

    d = al_calloc(1, sizeof(*d));
    if (d == NULL) {
        al_errs_add(errs, "%s: out of memory", path);
        goto fail;
    }
    d->strict = strict;
    d->log_query = log_query;
    d->path = al_strdup(path);
    if (d->path == NULL) {
        al_errs_add(errs, "%s: out of memory", path);
        goto fail;
    }
    d->wal_path = al_malloc(strlen(path) + 5);
    if (d->wal_path == NULL) {
        al_errs_add(errs, "%s: out of memory", path);
        goto fail;
    }
    memcpy(d->wal_path, path, strlen(path));
    memcpy(d->wal_path + strlen(path), "-wal", 5);
    if (aud_db_create_file(path, &d->dev, &d->ino, errs) != AL_OK)
        goto fail;
    aud_sqlite_setup();
    rc = sqlite3_open_v2(path, &d->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        al_errs_add(errs, "%s: cannot open audit database: %s", path,
                    d->db ? sqlite3_errmsg(d->db) : sqlite3_errstr(rc));
        goto fail;
    }
    sqlite3_extended_result_codes(d->db, 1);
    sqlite3_busy_timeout(d->db, AUD_BUSY_TIMEOUT_MS);
    snprintf(pragmas, sizeof(pragmas),
             "PRAGMA journal_mode=WAL; PRAGMA synchronous=%s; PRAGMA temp_store=MEMORY; "
             "PRAGMA cache_size=-8192; PRAGMA wal_autocheckpoint=8192; "
             "PRAGMA journal_size_limit=%lld;",
             strict ? "FULL" : "NORMAL", (long long)AUD_WAL_SIZE_LIMIT);
    rc = sqlite3_exec(d->db, pragmas, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        al_errs_add(errs, "%s: setting WAL mode: %s", path, msg ? msg : sqlite3_errstr(rc));
        goto fail;
    }
    if (aud_db_migrate(d->db, path, errs) != AL_OK ||
        aud_db_exec(d->db, aud_db_sql_sink_pending, path, "sink_pending", errs) != AL_OK)
        goto fail;
    if (aud_db_prepare(d, aud_db_sql_insert, &d->ins, errs) != AL_OK ||
        aud_db_prepare(d, aud_db_sql_update, &d->upd, errs) != AL_OK ||
        aud_db_prepare(d, "BEGIN", &d->begin, errs) != AL_OK ||
        aud_db_prepare(d, "COMMIT", &d->commit, errs) != AL_OK ||
        aud_db_prepare(d, "ROLLBACK", &d->rollback, errs) != AL_OK ||
        aud_db_prepare(d, aud_db_sql_retention, &d->retention, errs) != AL_OK)
        goto fail;
    sqlite3_free(msg);
    return d;
fail:
    sqlite3_free(msg);
    aud_db_close(d);
    return NULL;
}

void
aud_db_close(struct aud_db *d)
{
    if (d == NULL)
        return;
    sqlite3_finalize(d->ins);
    sqlite3_finalize(d->upd);
    sqlite3_finalize(d->begin);
    sqlite3_finalize(d->commit);
    sqlite3_finalize(d->rollback);
    sqlite3_finalize(d->retention);
    if (d->db != NULL && sqlite3_close(d->db) != SQLITE_OK)
        al_log_warnx("audit: %s: close: %s", d->path, sqlite3_errmsg(d->db));
    al_free(d->path);
    al_free(d->wal_path);
    al_free(d);
}

int64_t
aud_db_wal_bytes(const struct aud_db *d)
{
    struct stat st;

    if (d == NULL || d->wal_path == NULL || stat(d->wal_path, &st) != 0)
        return 0;
    return (int64_t)st.st_size;
}

int
aud_db_checkpoint(struct aud_db *d, int *done)
{
    int nlog = -1, nckpt = -1;
    int rc;

    *done = 0;
    if (d == NULL || d->db == NULL || sqlite3_get_autocommit(d->db) == 0)
        return AL_ERROR;
    /* No busy handler: a reader in the WAL makes it return SQLITE_BUSY at
     * once (after copying what it could) instead of stalling the writer. */
    sqlite3_busy_timeout(d->db, 0);
    rc = sqlite3_wal_checkpoint_v2(d->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, &nlog, &nckpt);
    sqlite3_busy_timeout(d->db, AUD_BUSY_TIMEOUT_MS);
    if (rc == SQLITE_OK && nlog == 0)
        *done = 1;
    return rc == SQLITE_OK || (rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED ? AL_OK
                                                                                         : AL_ERROR;
}

int
aud_db_moved(const struct aud_db *d)
{
    struct stat st;

    if (stat(d->path, &st) != 0)
        return 1;
    return st.st_dev != d->dev || st.st_ino != d->ino;
}

static int
aud_db_step_reset(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);

    sqlite3_reset(st);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? AL_OK : AL_ERROR;
}

int
aud_db_begin(struct aud_db *d)
{
    return aud_db_step_reset(d->begin);
}

int
aud_db_commit(struct aud_db *d)
{
    return aud_db_step_reset(d->commit);
}

void
aud_db_rollback(struct aud_db *d)
{
    if (sqlite3_get_autocommit(d->db) == 0)
        (void)aud_db_step_reset(d->rollback);
}

/* Binds a fixed-size field, never reading past its end. */
#define AUD_BIND_FIELD(st, i, field)                                                               \
    sqlite3_bind_text((st), (i), (field), (int)strnlen((field), sizeof(field)), SQLITE_STATIC)

/* Length of the path to store: up to "?" or "#" unless log_query. */
static int
aud_db_path_len(const struct aud_db *d, const char *path, size_t max)
{
    size_t n = strnlen(path, max);

    if (!d->log_query) {
        for (size_t i = 0; i < n; i++) {
            if (path[i] == '?' || path[i] == '#') {
                n = i;
                break;
            }
        }
    }
    return (int)n;
}

int
aud_db_insert(struct aud_db *d, const struct aud_record *r, int complete, int64_t *id)
{
    sqlite3_stmt *st = d->ins;
    char          host[sizeof(r->host)];
    size_t        hl = strnlen(r->host, sizeof(r->host));
    int           rc;

    for (size_t i = 0; i < hl; i++)
        host[i] = (char)tolower((unsigned char)r->host[i]);
    sqlite3_bind_int64(st, 1, r->ts_us);
    sqlite3_bind_int64(st, 2, r->duration_us);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)r->conn_id);
    AUD_BIND_FIELD(st, 4, r->sandbox);
    AUD_BIND_FIELD(st, 5, r->session);
    AUD_BIND_FIELD(st, 6, r->tool_call);
    AUD_BIND_FIELD(st, 7, r->client);
    AUD_BIND_FIELD(st, 8, r->mode);
    AUD_BIND_FIELD(st, 9, r->method);
    AUD_BIND_FIELD(st, 10, r->scheme);
    sqlite3_bind_text(st, 11, host, (int)hl, SQLITE_STATIC);
    sqlite3_bind_int(st, 12, r->port);
    sqlite3_bind_text(st, 13, r->path, aud_db_path_len(d, r->path, sizeof(r->path)), SQLITE_STATIC);
    AUD_BIND_FIELD(st, 14, r->upstream);
    AUD_BIND_FIELD(st, 15, r->orig_dst);
    AUD_BIND_FIELD(st, 16, r->decision);
    AUD_BIND_FIELD(st, 17, r->rule);
    AUD_BIND_FIELD(st, 18, r->reason);
    AUD_BIND_FIELD(st, 19, r->secrets);
    sqlite3_bind_int(st, 20, r->status);
    sqlite3_bind_int64(st, 21, r->bytes_up);
    sqlite3_bind_int64(st, 22, r->bytes_down);
    AUD_BIND_FIELD(st, 23, r->error);
    sqlite3_bind_int(st, 24, complete ? 0 : 1);
    AUD_BIND_FIELD(st, 25, r->sni);
    AUD_BIND_FIELD(st, 26, r->addr);
    AUD_BIND_FIELD(st, 27, r->detail);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc != SQLITE_DONE)
        return AL_ERROR;
    *id = sqlite3_last_insert_rowid(d->db);
    return AL_OK;
}

int
aud_db_update(struct aud_db *d, const struct aud_record *r)
{
    sqlite3_stmt *st = d->upd;
    int           rc;

    sqlite3_bind_int(st, 1, r->status);
    sqlite3_bind_int64(st, 2, r->bytes_up);
    sqlite3_bind_int64(st, 3, r->bytes_down);
    sqlite3_bind_int64(st, 4, r->duration_us);
    AUD_BIND_FIELD(st, 5, r->error);
    AUD_BIND_FIELD(st, 6, r->decision);
    AUD_BIND_FIELD(st, 7, r->upstream);
    AUD_BIND_FIELD(st, 8, r->rule);
    AUD_BIND_FIELD(st, 9, r->reason);
    AUD_BIND_FIELD(st, 10, r->secrets);
    sqlite3_bind_int64(st, 11, r->row_id);
    AUD_BIND_FIELD(st, 12, r->sni);
    AUD_BIND_FIELD(st, 13, r->addr);
    AUD_BIND_FIELD(st, 14, r->detail);
    sqlite3_bind_int64(st, 15, r->ts_us);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc != SQLITE_DONE)
        return AL_ERROR;
    return sqlite3_changes(d->db) == 1 ? AL_OK : AL_DECLINED;
}

int
aud_db_retention(struct aud_db *d, int64_t cutoff_us, int64_t max_id, int *n)
{
    int rc;

    sqlite3_bind_int64(d->retention, 1, cutoff_us);
    sqlite3_bind_int64(d->retention, 2, max_id);
    rc = sqlite3_step(d->retention);
    sqlite3_reset(d->retention);
    if (rc != SQLITE_DONE)
        return AL_ERROR;
    *n = sqlite3_changes(d->db);
    return AL_OK;
}

int
aud_db_create_v1(const char *path, struct al_errs *errs)
{
    sqlite3 *db = NULL;
    dev_t    dev;
    ino_t    ino;
    int      ret = AL_ERROR;

    if (aud_db_create_file(path, &dev, &ino, errs) != AL_OK)
        goto out;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
        al_errs_add(errs, "%s: open: %s", path, db ? sqlite3_errmsg(db) : "no memory");
        goto out;
    }
    if (aud_db_exec(db, "PRAGMA journal_mode=WAL", path, "WAL", errs) != AL_OK ||
        aud_db_exec(db, aud_db_schema_v1, path, "creating v1 schema", errs) != AL_OK ||
        aud_db_mark_version(db, 1, path, errs) != AL_OK)
        goto out;
    ret = AL_OK;
out:
    sqlite3_close(db);
    return ret;
}
