/*
 * aud_pg.h - the PostgreSQL side of the audit module (shared inside audit/
 * and with its unit tests): connection strings without their password,
 * connecting, the schema and its migrations, daily partitions, the COPY
 * encoding of a row, the shipper that moves rows from the sqlite outbox, and
 * the SQL dialect the read side uses on PostgreSQL.
 */
#ifndef AUD_PG_H
#define AUD_PG_H

#include <libpq-fe.h>

#include "aud_int.h"

/* Current PostgreSQL schema version (table schema_version there). */
#define AUD_PG_SCHEMA_VERSION 2
/* Rows per shipped batch (one COPY, one PostgreSQL transaction). */
#define AUD_SHIP_BATCH 5000
/* A pending row (a strict request under way, an open websocket or tunnel)
 * still pending this long after the shipper first saw it is shipped as it
 * is, and its completion follows as an update of the same PostgreSQL row. */
#define AUD_SHIP_PENDING_GRACE_US (50 * 1000LL)
/* The per-connection temporary table the completions are COPYed into. */
#define AUD_PG_DONE_TABLE "airlock_ship_done"

/* 1 when `db` names a PostgreSQL database (postgresql:// or postgres://). */
int aud_pg_is_uri(const char *db);

/*
 * Copies conninfo (URI or key=value) to out with the password replaced by
 * "***" (URI user info, URI ?password=, key=value password=). Never fails:
 * out is always NUL-terminated (cut if too small). Pure.
 */
void aud_pg_mask(const char *conninfo, char *out, size_t n);

/*
 * Checks conninfo with libpq's parser (no connection) and writes a
 * description without the password ("user@host:port/dbname") to desc.
 * AL_OK, or AL_ERROR + errs (libpq's message with quoted fragments cut out:
 * they may be pieces of the password).
 */
int aud_pg_check(const char *conninfo, char *desc, size_t n, struct al_errs *errs);

/* Replaces each occurrence of `secret` (when at least 1 byte) in msg with
 * "***", in place; also cuts trailing newlines. Returns msg. */
char *aud_pg_scrub(char *msg, const char *secret);

/*
 * Connects (connect_timeout 5 s, TCP keepalives, application_name
 * airlock-audit unless conninfo says otherwise), sets a statement timeout.
 * NULL + errs (scrubbed of the password) on failure.
 */
PGconn *aud_pg_connect(const char *conninfo, struct al_errs *errs);

/* Creates or migrates the schema (under an advisory lock, so replicas that
 * start together do not race). *created = 1 when it did something. */
int aud_pg_migrate(PGconn *pg, int *created, struct al_errs *errs);

/* Day number (days since 1970-01-01, UTC) of a unix µs time. */
int64_t aud_pg_day(int64_t ts_us);
/* Creates the partition of `day` if missing. AL_OK or AL_ERROR + errs. */
int aud_pg_partition(PGconn *pg, int64_t day, struct al_errs *errs);
/* Drops every daily partition wholly older than now - days. *n = dropped. */
int aud_pg_retention(PGconn *pg, int days, int64_t now_us, int *n, struct al_errs *errs);

/* The column list of a COPY line, in aud_pg_copy_row's order. */
extern const char aud_pg_copy_cols[];
/* Appends one COPY text-format line for r (as read back from sqlite) to b.
 * Strings are escaped; bytes that are not UTF-8 become the text \xNN.
 * AL_OK or AL_ERROR (buffer cap). Pure. */
int aud_pg_copy_row(struct al_dbuf *b, const char *instance, const struct aud_record *r);
/*
 * Appends the statement that moves the completed rows COPYed into
 * AUD_PG_DONE_TABLE over their PostgreSQL rows: INSERT ... ON CONFLICT
 * (instance, id, ts) DO UPDATE of every other column, only WHERE the row
 * there is still pending (a retry never regresses or duplicates a row), and
 * only for ids up to the instance's mark (never ahead of the batches). Pure.
 */
int aud_pg_complete_sql(struct al_dbuf *sql);

/* ---- the shipper (aud_ship.c) ------------------------------------------ */
struct aud_ship;
struct aud_ship_conf {
    const char *db_path;        /* the sqlite outbox */
    const char *conninfo;       /* libpq conninfo */
    const char *instance;       /* this replica's name (never NULL/"" here) */
    int         retention_days; /* 0: keep partitions forever */
};
/* Checks the conninfo, opens the outbox's high-water mark and starts the
 * thread. NULL + errs (a bad connection string fails here; an unreachable
 * or refusing database does not: the thread retries). */
struct aud_ship *aud_ship_start(const struct aud_ship_conf *conf, struct al_errs *errs);
/* Ships what it can for up to `grace_ms` more, then stops and frees. */
void aud_ship_stop(struct aud_ship *s, int grace_ms);
/* The writer committed completions of pending rows (any thread; NULL-safe):
 * the shipper ships those it shipped pending again, completed. */
void aud_ship_poke(struct aud_ship *s);
/* The highest local row id PostgreSQL has (retention keeps everything above). */
int64_t aud_ship_shipped(const struct aud_ship *s);
void    aud_ship_stats(const struct aud_ship *s, struct aud_sink_stats *out);

/* ---- read side on PostgreSQL (aud_pgq.c) -------------------------------- */
/* aud_query_each on a PostgreSQL database; `instance` filters when non-NULL.
 * Rows carry their instance in r->instance. */
int aud_pg_query_each(const char *conninfo, const struct aud_filter          *f,
                      int (*cb)(void *arg, const struct aud_record *r), void *arg,
                      struct al_errs *errs);
/* Connects for reading; checks the schema is there and not newer. NULL + errs. */
PGconn *aud_pg_open_ro(const char *conninfo, struct al_errs *errs);
/*
 * tail --follow on the shared store. Rows of one instance arrive in id
 * order and move sink_state's mark in the same transaction, so a snapshot
 * holds exactly the ids up to each instance's mark: the first read records
 * the marks with its rows, each later read returns the ids between the
 * recorded and the current marks (index range scans) and records the new
 * ones. Every row once, none passed, and the replicas never wait for each
 * other.
 */
struct aud_pg_mark {
    char    instance[64];
    int64_t id;
};
struct aud_pg_cursor {
    struct aud_pg_mark *m;
    size_t              n, cap;
    int                 ready; /* the first read was done */
};
void aud_pg_cursor_free(struct aud_pg_cursor *c);
/* aud_pg_query_each on an open connection; `cur` (tail --follow) or NULL.
 * f->by_id and f->after_id are ignored: the order is (ts, instance, id). */
int aud_pg_query_run(PGconn *pg, const struct aud_filter *f, struct aud_pg_cursor *cur,
                     int (*cb)(void *arg, const struct aud_record *r), void *arg,
                     struct al_errs *errs);
/* aud_query_scan on the shared store (policy replay): every row matching f
 * (f->limit: the newest) in (ts, instance, id) order; *version gets
 * AUD_SCHEMA_VERSION (the store has every column). */
int aud_pg_query_scan(const char *conninfo, const struct aud_filter            *f,
                      int (*cb)(void *arg, const struct aud_scan_row *r), void *arg, int *version,
                      struct al_errs *errs);
/* `audit stats` groups: per value of `col` (host, sandbox, tool_call, rule,
 * decision, instance, secrets as comma-joined text, or '' for all rows)
 * cb(key, {total, allow, deny, would_deny, error, bytes_up, bytes_down}),
 * ordered by total (or, denied_only, by deny + would_deny, those > 0 only). */
int aud_pg_groups(PGconn *pg, const struct aud_filter *f, const char *col, int denied_only,
                  int64_t limit, int (*cb)(void *arg, const char *key, const int64_t v[7]),
                  void *arg, struct al_errs *errs);
/* `airlock audit migrate --db URI`: creates or migrates the schema and
 * today's partition; one line on out. AL_OK or AL_ERROR + errs. */
int aud_pg_cli_migrate(const char *conninfo, FILE *out, struct al_errs *errs);
/* Appends the WHERE clause for f in PostgreSQL's dialect ($n parameters);
 * values go to vals (n at most 20). AL_OK or AL_ERROR (too long). Pure. */
struct aud_pg_params {
    int         n;
    const char *v[20];
    char        buf[20][32];       /* integer values */
    char        like[4 * 256 + 8]; /* host glob as a LIKE pattern */
};
int aud_pg_where(struct al_dbuf *sql, struct aud_pg_params *p, const struct aud_filter *f);

#endif
