/*
 * aud_int.h - declarations shared only inside audit/ (and with its unit
 * tests): the sqlite store, the query builder, output formatting and the CLI
 * runner with explicit streams.
 */
#ifndef AUD_INT_H
#define AUD_INT_H

#include <stdio.h>
#include <sys/types.h>

#include <sqlite3.h>

#include "audit.h"

#define AUD_BUSY_TIMEOUT_MS 2000
/* PRAGMA journal_size_limit of the writer: a WAL that sqlite restarts from
 * its start is cut back to this size (bytes) at the next commit. */
#define AUD_WAL_SIZE_LIMIT (16LL * 1024 * 1024)

/* WHERE terms of the partial indexes (schema v3). A query filtering on the
 * column adds the same term, which is what lets sqlite's planner use them. */
#define AUD_IDX_SANDBOX "sandbox != ''"
#define AUD_IDX_TOOL_CALL "tool_call != ''"
#define AUD_IDX_DECISION "decision != 'allow'"

/* ---- aud_db.c: the writer's connection -------------------------------- */
struct aud_db {
    sqlite3      *db;
    sqlite3_stmt *ins, *upd, *begin, *commit, *rollback, *retention;
    char         *path;
    char         *wal_path; /* path + "-wal" */
    dev_t         dev;      /* identity of the file we opened, to notice replacement */
    ino_t         ino;
    int           strict, log_query;
};

/* Process-wide sqlite settings, once, before the first connection. */
void aud_sqlite_setup(void);
/* Opens or creates `path` (0600), WAL, schema + migrations, statements.
 * Returns a handle owned by the caller (aud_db_close) or NULL + errs. */
struct aud_db *aud_db_open(const char *path, int strict, int log_query, struct al_errs *errs);
void           aud_db_close(struct aud_db *d); /* NULL-safe */
/* 1 when the file at d->path is gone or is not the file we opened. */
int  aud_db_moved(const struct aud_db *d);
int  aud_db_begin(struct aud_db *d);
int  aud_db_commit(struct aud_db *d);
void aud_db_rollback(struct aud_db *d);
/* Inserts r; `complete` = 0 for a strict begin row. Sets *id. AL_OK/AL_ERROR. */
int aud_db_insert(struct aud_db *d, const struct aud_record *r, int complete, int64_t *id);
/* Completes row r->row_id if it is still pending and began at r->ts_us: AL_OK,
 * AL_DECLINED when no such row (a replaced file, retention), AL_ERROR. */
int aud_db_update(struct aud_db *d, const struct aud_record *r);
/* Deletes up to AUD_RETENTION_CHUNK_ROWS rows with ts < cutoff and id <= max_id
 * (the fleet sink's high-water mark: unshipped rows stay), none named in
 * sink_pending (shipped pending, completion not shipped yet); *n = deleted. */
int aud_db_retention(struct aud_db *d, int64_t cutoff_us, int64_t max_id, int *n);
/* Size of the -wal file now (0 if none). Any thread that owns d. */
int64_t aud_db_wal_bytes(const struct aud_db *d);
/* wal_checkpoint(TRUNCATE) without waiting for readers (busy handler off
 * for the call): copies what it can, and empties the -wal file when no
 * reader is in it. *done = 1 when the WAL ended up empty. AL_OK (also when
 * a reader was in the way) or AL_ERROR (I/O error, disk full, ...). */
int aud_db_checkpoint(struct aud_db *d, int *done);
/* Last sqlite error text of d, for logs. */
const char *aud_db_errmsg(const struct aud_db *d);
int         aud_db_errcode(const struct aud_db *d);

/* Schema version of an open connection: 0 empty file, -1 on error. */
int aud_db_schema_version(sqlite3 *db);
/* Brings db to AUD_SCHEMA_VERSION (creating or migrating). AL_OK/AL_ERROR + errs. */
int aud_db_migrate(sqlite3 *db, const char *path, struct al_errs *errs);
/* Tests only: creates a version-1 file at path (the layout before mode,
 * orig_dst, conn_id and pending rows existed). */
int aud_db_create_v1(const char *path, struct al_errs *errs);

/* ---- aud_query.c: read side ------------------------------------------- */
/* Rows read per read transaction: aud_query_run copies a batch out and ends
 * the transaction before its callbacks run (a reader blocked on its output
 * must not pin the WAL). */
#define AUD_QUERY_BATCH 1000
/* Opens path read-only (busy timeout set); NULL + errs. */
sqlite3 *aud_db_open_ro(const char *path, struct al_errs *errs);
/* Appends " WHERE ..." for f to sql and records the bind values; binds
 * them into st starting at index *idx (advanced). */
struct aud_binds {
    int         n;
    int         type[16]; /* 'i' or 't' */
    int64_t     i[16];
    const char *t[16];
    char        glob[4 * 256 + 8]; /* LIKE pattern built from the host glob */
};
int aud_query_where(struct al_dbuf *sql, struct aud_binds *b, const struct aud_filter *f);
int aud_query_bind(sqlite3_stmt *st, const struct aud_binds *b, int *idx);
/* Column list matching aud_query_row() for a file of schema `version`. */
const char *aud_query_columns(int version);
void        aud_query_row(sqlite3_stmt *st, struct aud_record *r);
/* aud_query_each on an open connection; never holds a read transaction
 * while `cb` runs (batches of AUD_QUERY_BATCH, keyed on (ts, id) or id). */
int aud_query_run(sqlite3 *db, const struct aud_filter                   *f,
                  int (*cb)(void *arg, const struct aud_record *r), void *arg,
                  struct al_errs *errs);
/* Host glob (* ?) to a LIKE pattern with ESCAPE '\'; AL_ERROR if too long. */
int aud_glob_to_like(const char *glob, char *out, size_t outlen);
/* 1 when s contains a glob metacharacter (* or ?). */
int aud_glob_has_meta(const char *s);

/* ---- aud_fmt.c: output -------------------------------------------------- */
/* Appends s with control characters, DEL, bytes >= 0x80 and backslash
 * escaped (\xNN, \\): safe to print on a terminal. */
int aud_fmt_escape(struct al_dbuf *b, const char *s);
/* Appends one CSV field: escaped as above, quoted per RFC 4180 when needed,
 * a leading = + - @ neutralised with ' (spreadsheet formula injection). */
int aud_fmt_csv(struct al_dbuf *b, const char *s);
/* Appends a JSON string literal: valid UTF-8 kept, control characters and
 * U+0080..U+009F as \u00XX, invalid bytes as the text \xNN. */
int aud_fmt_json_str(struct al_dbuf *b, const char *s);
/* "2024-05-01T12:00:00.123456Z" */
void aud_fmt_rfc3339(int64_t ts_us, char *buf, size_t n);
/* Appends escape(s) cut or padded to exactly `width` columns; a cut cell
 * ends with '~'. */
int aud_fmt_cell(struct al_dbuf *b, const char *s, int width, int right);

/* ---- aud_cli.c ---------------------------------------------------------- */
/* aud_cli_main with explicit streams; `now_us` 0 = the clock (tests pin it). */
int aud_cli_run(int argc, char **argv, FILE *out, FILE *err, int64_t now_us);

/*
 * "By secret" groups every secret a row involved: the names that went out
 * (`secrets`) and the one a refusal was about (its error reads
 * "<reason>: NAME"), comma-joined for the CLI to split. The same on both
 * stores (aud_pgq.c has PostgreSQL's spelling).
 */
#define AUD_GROUP_SECRETS "secrets_used"
#define AUD_SECRET_REFUSALS                                                                        \
    "('secret_out_of_scope', 'secret_plaintext', 'secret_location_not_allowed', "                  \
    "'secret_in_compressed_body', 'trace_to_secret_host', 'upgrade_with_secret')"
#define AUD_GROUP_SECRETS_SQL                                                                      \
    "(secrets || CASE WHEN reason IN " AUD_SECRET_REFUSALS " AND substr(error, 1, "                \
    "length(reason) + 2) = reason || ': ' THEN ',' || substr(error, length(reason) + 3) "          \
    "ELSE '' END)"

#endif
