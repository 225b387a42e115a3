/*
 * audit.h - the audit module's one public header: the plain-data request
 * record, the writer thread that commits records to sqlite (batched or
 * strict group commit), the read-side query API (used by `policy replay`)
 * and the `airlock audit` CLI entry point.
 *
 * Threads: aud_record_new/free, aud_submit, aud_begin, aud_complete,
 * aud_begin_nowait, aud_complete_row, aud_row_put, aud_writer_admit,
 * aud_writer_healthy and aud_writer_stats may be called from any thread.
 * aud_writer_start/stop from one controlling thread. No sqlite call ever
 * runs on a caller's thread except in start (open + schema) and in the
 * read-side functions.
 */
#ifndef AUD_AUDIT_H
#define AUD_AUDIT_H

#include <stdint.h>

#include "common.h"

/* Defaults applied when a struct aud_conf field is 0 (or negative). */
#define AUD_DEFAULT_FLUSH_MS 50
#define AUD_DEFAULT_MAX_BATCH 4096
#define AUD_DEFAULT_QUEUE_MAX 8192
/* Rows deleted per retention step (one small transaction between batches). */
#define AUD_RETENTION_CHUNK_ROWS 1000
/* Current on-disk schema version (table schema_version). */
#define AUD_SCHEMA_VERSION 5
/* aud_writer_stop() keeps retrying a failing database this long before it drops. */
#define AUD_STOP_RETRY_MS 5000

/*
 * One request, as the proxy saw it. Plain data: fixed-size, NUL-terminated
 * strings (a longer value is truncated by the caller's snprintf), no
 * pointers. Heap-allocated by aud_record_new(); owned by the queue after
 * aud_submit()/aud_complete(). There is deliberately no field for header
 * values: a secret value can only reach the audit file if a caller copies
 * it into one of these fields.
 */
struct aud_record {
    int64_t  ts_us, duration_us; /* request start (unix µs), duration */
    uint64_t conn_id;
    char     sandbox[64], session[129], tool_call[129]; /* tags: up to 128 bytes */
    char     client[64];                                /* "ip:port" */
    char     mode[16];                                  /* listener mode: forward | transparent */
    char     method[24], scheme[8];
    char     host[256]; /* stored lower-cased */
    uint16_t port;
    char     path[2048];   /* full path; "?query" and "#frag" dropped unless conf.log_query */
    char     upstream[64]; /* "ip:port" actually connected */
    char     orig_dst[64]; /* transparent SO_ORIGINAL_DST, else "" */
    char     decision[16]; /* allow | deny | would_deny | error */
    char     rule[64], reason[64];
    char     secrets[256]; /* comma-separated secret NAMES */
    int      status;       /* HTTP status sent to the client, 0 if none */
    int64_t  bytes_up, bytes_down;
    char     error[128];
    int64_t  row_id;   /* strict mode: the row aud_begin() created; read side: id */
    int      pending;  /* read side only: row begun (strict, or nowait), never completed */
    char     sni[256]; /* the client's TLS server name where there was one (v4) */
    char     addr[64]; /* "ip:port" the address guard checked: the one connected to, or
                          the first refused (address_not_allowed); "" when none (v4) */
    char instance[64]; /* read side on PostgreSQL only: the replica that wrote the row */
    char detail[256];  /* a JSON object of what a kind of flow adds (a websocket: messages
                          each way, close codes of both sides), or "" (v5) */
    int64_t seq;       /* read side on PostgreSQL only: arrival order in the shared store */
};

struct aud_conf {
    const char *db_path;        /* required; created with mode 0600 */
    int         strict;         /* 1: synchronous=FULL, aud_begin/aud_complete in use */
    int         flush_ms;       /* batched mode: longest a record waits before its commit */
    int         max_batch;      /* records per transaction */
    int         queue_max;      /* admission bound; see aud_submit() */
    int         retention_days; /* 0 keeps rows forever */
    int         log_query;      /* 1 keeps "?query" in path */
    /* Fleet sink (docs/FLEET.md): a libpq conninfo (URI or key=value); NULL =
     * none. A shipper thread copies committed rows there; retention keeps
     * every row it has not shipped. */
    const char *sink_postgres;
    const char *sink_instance; /* unique per replica; NULL or "" = the host name */
};

struct aud_stats {
    uint64_t queued;    /* records accepted into the queue */
    uint64_t written;   /* rows inserted or completed and committed */
    uint64_t refused;   /* aud_submit/aud_begin/aud_writer_admit answers of AL_DECLINED */
    uint64_t errors;    /* failed sqlite operations (each failed batch counts once) */
    uint64_t batches;   /* committed transactions */
    uint64_t depth;     /* records waiting in the queue now */
    uint64_t dropped;   /* records lost: queue hard cap reached, or stop gave up */
    uint64_t deleted;   /* rows removed by retention */
    uint64_t wal_bytes; /* size of the -wal file (sampled by the writer, ~100 ms) */
};

/* The fleet sink's state (all 0 when none is configured). */
struct aud_sink_stats {
    int      configured;  /* 1 when audit.sink.postgres is set */
    int      up;          /* 1 while connected and the last batch went through */
    uint64_t rows;        /* rows shipped (committed in PostgreSQL) */
    uint64_t completions; /* rows shipped pending, then shipped again completed */
    uint64_t errors;      /* failed connects, batches, migrations */
    uint64_t lag;         /* local rows not shipped yet */
    int64_t  shipped_id;  /* the high-water mark: the last local id shipped */
    char     instance[64];
    char     target[256];     /* "user@host:port/dbname": never the password */
    char     last_error[256]; /* scrubbed of the password; "" after a success */
};
struct aud_writer;
/* Snapshot of the sink's state; any thread. */
void aud_writer_sink_stats(const struct aud_writer *w, struct aud_sink_stats *out);

struct aud_writer;

/*
 * Opens (or creates, mode 0600) the database, sets WAL, creates or migrates
 * the schema, prepares statements, then starts the writer thread which owns
 * the connection from then on. Returns a writer owned by the caller (release
 * with aud_writer_stop()), or NULL with a message in errs.
 */
struct aud_writer *aud_writer_start(const struct aud_conf *conf, struct al_errs *errs);

/* Drains the queue, commits, closes and frees. NULL-safe. If the database
 * cannot be written it retries for up to AUD_STOP_RETRY_MS, then counts and
 * logs what it had to drop. */
void aud_writer_stop(struct aud_writer *w);

/* Returns a zeroed record owned by the caller, or NULL (no memory). */
struct aud_record *aud_record_new(void);
void               aud_record_free(struct aud_record *r); /* NULL-safe */

/*
 * Admission check for a new request (call before forwarding it): AL_OK,
 * AL_DECLINED when the backlog reached queue_max (answer 503 audit_backlog;
 * counted in `refused`), AL_ERROR while the writer cannot commit (answer
 * 503 audit_unavailable).
 */
int aud_writer_admit(struct aud_writer *w);

/*
 * Batched mode: hands a finished record over. Takes ownership of `r` always.
 *   AL_OK        queued.
 *   AL_DECLINED  the backlog is at or above queue_max. The record IS still
 *                queued (a reserve of another queue_max slots exists so the
 *                row of a request answered 503 audit_backlog is not lost);
 *                counted in `refused`. Only beyond 2 x queue_max is the
 *                record dropped (counted in `dropped`, logged loudly).
 *   AL_ERROR     the writer is failing (sqlite errors): the record is queued
 *                when there is room and retried, but the caller must fail
 *                closed (503 audit_unavailable) for new requests.
 */
int aud_submit(struct aud_writer *w, struct aud_record *r);

/*
 * Strict mode: inserts a copy of `r` (not taken over) with the next group
 * commit (synchronous=FULL). `done(arg, ok, row_id)` is called ON THE WRITER
 * THREAD exactly once when AL_OK was returned: ok=1 after the transaction
 * holding the row committed, ok=0 if that commit failed (fail closed; then
 * submit the request's row with aud_submit()). Returns AL_DECLINED (backlog)
 * or AL_ERROR (writer unhealthy, or no memory) without calling `done`.
 */
int aud_begin(struct aud_writer *w, const struct aud_record         *r,
              void (*done)(void *arg, int ok, int64_t row_id), void *arg);

/*
 * aud_begin() for a caller that queues several begins in a row (an event
 * loop answering a burst of readable connections): the row waits for
 * aud_release() (or for any aud_begin()) so all of them join one group
 * commit instead of the first going alone and the rest waiting a whole fsync
 * for the next. Call aud_release() before the thread sleeps (an ev_prepare
 * watcher). Without a release the rows still go: 2 ms after they arrive if
 * the writer is awake, else at its next idle probe (100 ms).
 */
int  aud_begin_held(struct aud_writer *w, const struct aud_record         *r,
                    void (*done)(void *arg, int ok, int64_t row_id), void *arg);
void aud_release(struct aud_writer *w);

/*
 * Strict mode, at request end: updates the row r->row_id with status, bytes,
 * duration, error and decision (and upstream, rule, reason, secrets, sni,
 * addr, detail when non-empty). Takes ownership of `r` always. r->row_id ==
 * 0, or a row that is not that request's pending row any more (same id and
 * ts_us, pending), inserts a new complete row instead. Return values as
 * aud_submit().
 */
int aud_complete(struct aud_writer *w, struct aud_record *r);

/*
 * A row begun without waiting, for a flow that lasts (batched mode: a
 * websocket from its 101): the row is inserted pending with the next
 * batch (within flush_ms; nobody waits for it) and completed later, so a
 * crash while the flow is open leaves it pending. The caller never learns
 * the row's id: it holds a handle instead, which the writer fills when the
 * begin runs and reads when the completion runs. Jobs run in the order they
 * were queued (FIFO), so a begin has always run before its completion.
 *
 * aud_begin_nowait takes ownership of `r` always. AL_OK: queued, *row set
 * (the caller owns that reference: hand it to aud_complete_row, or drop it
 * with aud_row_put and the row stays pending). AL_DECLINED: the backlog is
 * at queue_max (an admission, as aud_begin: not queued, counted in
 * `refused`); AL_ERROR: the writer is failing, or no memory. *row is NULL
 * then.
 *
 * aud_complete_row completes that row with r (fields as aud_complete()),
 * taking ownership of `r` and of the reference `row` always. A begin that
 * never reached the file (dropped at stop) makes it insert r as a complete
 * row instead; so does a row that is gone or no longer pending (a replaced
 * file), never an update of another row. Return values as aud_submit().
 */
struct aud_row;
int  aud_begin_nowait(struct aud_writer *w, struct aud_record *r, struct aud_row **row);
int  aud_complete_row(struct aud_writer *w, struct aud_record *r, struct aud_row *row);
void aud_row_put(struct aud_row *row); /* NULL-safe */

/* 0 while the writer cannot commit; 1 again after a commit succeeds. Any thread. */
int aud_writer_healthy(const struct aud_writer *w);
/* Snapshot of the counters; any thread. */
void aud_writer_stats(const struct aud_writer *w, struct aud_stats *out);

/* ---- read side --------------------------------------------------------- */

/* Row filter; zero / NULL fields do not filter. Strings are matched exactly
 * (bound parameters), except `host`, which is a glob (* and ?, case-
 * insensitive; every other character literal). */
struct aud_filter {
    int64_t     since_us, until_us; /* ts >= since, ts < until; 0 = open */
    const char *sandbox, *session, *tool_call, *host, *decision, *rule, *secret;
    int         status_lo, status_hi; /* inclusive; 0,0 = any */
    int64_t     after_id;             /* id > after_id */
    int64_t     limit;                /* the newest `limit` rows; 0 = all */
    int         by_id;                /* order (and pick the newest) by id, not ts */
    const char *instance;             /* PostgreSQL only: the replica's name */
};

/*
 * Calls cb for every matching row of the database at `db_path` (opened read-
 * only; works while the writer runs), oldest first. `r` is borrowed for the
 * call only (r->row_id is the row id). The rows are those committed when the
 * call starts (later ones are left out); they are read in short batches and
 * no read transaction is open while cb runs, so a slow cb (a blocked stdout)
 * never keeps the writer from checkpointing. cb returns AL_OK to go on, anything
 * else stops and is returned. Returns AL_OK, or AL_ERROR with a message in
 * errs.
 */
int aud_query_each(const char *db_path, const struct aud_filter           *f,
                   int (*cb)(void *arg, const struct aud_record *r), void *arg,
                   struct al_errs *errs);

/*
 * Bulk reader for `policy replay`: the decision inputs and the recorded
 * decision of one row. Every string is NUL-terminated, never NULL ("" when
 * the file's schema lacks the column: mode before v2, sni and addr before
 * v4), and borrowed for the callback only.
 */
struct aud_scan_row {
    int64_t     id, ts_us;
    const char *sandbox, *mode, *method, *scheme, *host, *path, *upstream;
    const char *decision, *rule, *reason, *sni, *addr;
    size_t      path_len;
    int         port;
};
/* Rows per read transaction of aud_query_scan. */
#define AUD_SCAN_BATCH 8192
/*
 * Calls cb for every row matching f, in id order (f->by_id is implied;
 * f->limit keeps the newest `limit` matching rows by id). Rows committed
 * after the call starts are left out. Unlike aud_query_each the rows are not
 * copied: cb runs inside a read transaction of at most AUD_SCAN_BATCH rows,
 * so it must not block (no output, no I/O: collect, print afterwards).
 * Memory is constant whatever the row count. *version (may be NULL) gets the
 * file's schema version. cb returns AL_OK to go on. AL_OK, or AL_ERROR with
 * a message in errs (or what cb returned).
 */
int aud_query_scan(const char *db_path, const struct aud_filter             *f,
                   int (*cb)(void *arg, const struct aud_scan_row *r), void *arg, int *version,
                   struct al_errs *errs);
/* The same over ids in [id_lo, id_hi] only (0 = open): one part of a file
 * for one thread of a parallel reader (each call opens its own
 * connection). */
int aud_query_scan_ids(const char *db_path, const struct aud_filter *f, int64_t id_lo,
                       int64_t id_hi, int (*cb)(void *arg, const struct aud_scan_row *r), void *arg,
                       int *version, struct al_errs *errs);
/* Smallest and largest row id (0, 0 when empty). AL_OK or AL_ERROR + errs. */
int aud_query_id_range(const char *db_path, int64_t *lo, int64_t *hi, struct al_errs *errs);

/* Parses a --since/--until value: a duration ("90s", "15m", "2h", "7d": that
 * long before `now_us`) or an RFC 3339 time ("2024-05-01T12:00:00Z",
 * "...+02:00", fractional seconds) or a date ("2024-05-01", UTC midnight).
 * AL_OK or AL_ERROR. */
int aud_parse_time(const char *s, int64_t now_us, int64_t *out_us);

/*
 * CLI entry: argv[0] is "audit"; subcommands query | stats | tail. Output on
 * stdout, messages on stderr. Returns the exit code: 0 ok, 1 runtime failure,
 * 2 usage or invalid input.
 */
int aud_cli_main(int argc, char **argv);

#endif
