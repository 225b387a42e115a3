/*
 * aud_writer.c - the bounded audit queue and the one writer thread that
 * owns the sqlite connection.
 *
 * Design: callers (proxy workers, any thread) push jobs into a ring under a
 * mutex and return; they never touch sqlite. The writer thread takes up to
 * max_batch jobs, drops the lock, and runs them in one transaction with
 * prepared statements (aud_db.c). A batched-mode batch goes out when it is
 * full or when its oldest record has waited flush_ms; any strict aud_begin()
 * job makes the writer go at once, and every begin that arrived meanwhile
 * joins the same commit (group commit, synchronous=FULL). A nowait begin
 * (aud_begin_nowait: a websocket's row at its 101) is an ordinary batched
 * job that inserts the row pending and puts its id in a small handle
 * (struct aud_row); the completion, queued later by the same caller, reads
 * the id there when it runs: the ring is FIFO and a batch runs (and is
 * retried) in order, so the begin has run by then.
 *
 * Bounds: admission (aud_writer_admit, aud_begin) stops at queue_max jobs;
 * finished records (aud_submit, aud_complete) may use a reserve of another
 * queue_max slots so that the row of a request refused with 503 is still
 * written. Beyond 2 x queue_max a record is dropped, counted and logged.
 * Memory bound: 2 x queue_max x sizeof(struct aud_record) (~3.5 KiB each).
 *
 * Failures: a failed batch is rolled back, the writer turns unhealthy, logs
 * at error level (rate-limited), keeps the batch (minus strict begins, which
 * are answered done(ok=0) so their requests fail closed) and retries with
 * backoff. Before each batch it checks that the file at db_path is still
 * the one it opened (removed or replaced -> reopen, which recreates it).
 * The first successful commit makes it healthy again.
 *
 * Retention: between batches, one small DELETE of up to
 * AUD_RETENTION_CHUNK_ROWS rows older than retention_days, repeated while
 * there is more to delete, otherwise checked once a minute.
 *
 * WAL: sqlite's automatic checkpoint (PASSIVE, after a commit once the WAL
 * holds 8192 pages) keeps it bounded while no reader pins it, and
 * journal_size_limit cuts a restarted WAL back. On top, the writer runs
 * wal_checkpoint(TRUNCATE) without a busy handler (a reader in the way
 * makes it return at once): when it has been idle AUD_CKPT_IDLE_US after
 * writing, and every AUD_CKPT_PERIOD_US under load while the queue is
 * short. The -wal size is published in the stats (wal_bytes).
 *
 * Logs on failure paths are per interval, never per record: a dropped
 * record (queue hard limit) is counted and reported at most once per
 * AUD_DROPLOG_INTERVAL_US with the number dropped since the last report;
 * commit failures at most once per AUD_ERRLOG_INTERVAL_US, and so is the
 * "recovered" line (a database that fails and recovers in a loop).
 *
 * Lifecycle: aud_writer_start opens the database on the caller's thread
 * (errors reported there), then hands the connection to the thread.
 * aud_writer_stop drains everything, commits and closes.
 */
#include "aud_int.h"
#include "aud_pg.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define AUD_RETRY_MIN_MS 50
/* At stop, the sink ships what it can for this long after the writer drained. */
#define AUD_SINK_STOP_GRACE_MS 2000
#define AUD_RETRY_MAX_MS 2000
#define AUD_ERRLOG_INTERVAL_US (5 * 1000000LL)
#define AUD_RETENTION_IDLE_US (60 * 1000000LL)
#define AUD_DROPLOG_INTERVAL_US (1000000LL)
/* TRUNCATE checkpoint: after this long without a batch, ... */
#define AUD_CKPT_IDLE_US (200 * 1000LL)
/* ... or this often under load (queue below a quarter of queue_max) ... */
#define AUD_CKPT_PERIOD_US (10 * 1000000LL)
/* ... and not again sooner than this after one a reader kept from finishing. */
#define AUD_CKPT_RETRY_US (1000000LL)
/* After a checkpoint I/O error (disk full): wait, log at most this often. */
#define AUD_CKPT_ERR_US (5 * 1000000LL)
#define AUD_WALSTAT_US (100 * 1000LL)
/* A held strict begin goes by itself after this long once the writer looks
 * (aud_release() is the normal way: the caller's event-loop iteration ends
 * microseconds later; a held begin does not wake a sleeping writer, whose
 * idle probe, AUD_PROBE_MS, bounds a release that never comes). */
#define AUD_HOLD_MAX_US 2000

enum aud_job_kind { AUD_JOB_INSERT = 0, AUD_JOB_BEGIN, AUD_JOB_OPEN, AUD_JOB_COMPLETE };

/*
 * The handle of a row begun with aud_begin_nowait(): one reference for the
 * begin's job, one for the caller (handed to the completion's job or dropped
 * with aud_row_put). `id` is the writer thread's alone: set when the begin's
 * insert runs (0 again if that transaction rolled back), read when the
 * completion runs. The queue is FIFO and a batch runs in order, so the begin
 * has always run (or been dropped: id 0, the completion inserts a whole row)
 * when its completion runs.
 */
struct aud_row {
    _Atomic int refs;
    int64_t     id;
};

struct aud_job {
    enum aud_job_kind  kind;
    struct aud_record *r;   /* owned by the job */
    struct aud_row    *row; /* AUD_JOB_OPEN, or a COMPLETE of such a row: a reference */
    void (*done)(void *arg, int ok, int64_t row_id);
    void *arg;
};

struct aud_writer {
    /* configuration (immutable after start) */
    char  *db_path;
    int    strict, flush_ms, max_batch, retention_days, log_query;
    size_t queue_max, cap; /* cap = 2 x queue_max: ring size */

    /* queue, under mu */
    pthread_mutex_t mu;
    pthread_cond_t  cv; /* writer waits for work */
    struct aud_job *ring;
    size_t          head, count;
    size_t          nbegin;    /* begin jobs in the ring */
    int             begin_go;  /* a begin was released: commit them now */
    int64_t         begin_us;  /* monotonic time the oldest queued begin arrived */
    int64_t         oldest_us; /* monotonic time the oldest queued job arrived */
    int             stopping;
    int64_t         stop_us; /* monotonic time stop was asked */

    /* counters, any thread */
    _Atomic int      healthy;
    _Atomic uint64_t queued, written, refused, errors, batches, depth, dropped, deleted;
    _Atomic uint64_t wal_bytes;
    /* dropped records not reported in the log yet, and the last report */
    _Atomic uint64_t drops_unlogged, drop_last_conn;
    _Atomic int64_t  droplog_us;

    /* writer thread only */
    pthread_t       thread;
    int             thread_started;
    struct aud_db  *db;
    struct aud_job *batch; /* max_batch slots */
    size_t          nbatch;
    int64_t         retry_us; /* monotonic; 0 = not failing */
    int             retry_ms;
    int64_t         retention_us;
    int64_t         errlog_us;
    uint64_t        errs_since_log;
    int64_t         recovlog_us;
    int64_t         active_us;  /* monotonic time of the last batch */
    int64_t         ckpt_us;    /* earliest next checkpoint attempt */
    int64_t         ckpt_last;  /* monotonic time of the last attempt */
    int64_t         walstat_us; /* last stat of the -wal file */
    int             wal_dirty;  /* committed since the WAL was last emptied */
    int64_t         ckpt_errlog_us;

    struct aud_ship *ship; /* fleet sink (aud_ship.c); NULL when none */
};

/*
 * Records are recycled through a small free list instead of going back to
 * malloc: a record (~3.5 KiB) is allocated on a worker and freed on the
 * writer thread, and glibc answers that pattern by trimming the worker's
 * heap and faulting the pages back in, thousands of page faults a second
 * on the request path. Sanitizer builds skip the list so use-after-free
 * stays visible.
 */
#if defined(__SANITIZE_ADDRESS__)
#define AUD_RECORD_CACHE_MAX 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define AUD_RECORD_CACHE_MAX 0
#endif
#endif
#ifndef AUD_RECORD_CACHE_MAX
#define AUD_RECORD_CACHE_MAX 4096
#endif

struct aud_record_node {
    struct aud_record_node *next;
};

static pthread_mutex_t         aud_record_mu = PTHREAD_MUTEX_INITIALIZER;
static struct aud_record_node *aud_record_cache;
static size_t                  aud_record_ncache;
static const size_t            aud_record_cache_max = AUD_RECORD_CACHE_MAX;

/* Keeps r for reuse if the list has room. aud_record_mu held. 1: kept. */
static int
aud_record_cache_put(struct aud_record *r)
{
    struct aud_record_node *n = (struct aud_record_node *)(void *)r;

    if (aud_record_ncache >= aud_record_cache_max)
        return 0;
    n->next = aud_record_cache;
    aud_record_cache = n;
    aud_record_ncache++;
    return 1;
}

struct aud_record *
aud_record_new(void)
{
    struct aud_record_node *n;

    pthread_mutex_lock(&aud_record_mu);
    n = aud_record_cache;
    if (n != NULL) {
        aud_record_cache = n->next;
        aud_record_ncache--;
    }
    pthread_mutex_unlock(&aud_record_mu);
    if (n == NULL)
        return al_calloc(1, sizeof(struct aud_record));
    memset(n, 0, sizeof(struct aud_record));
    return (struct aud_record *)(void *)n;
}

void
aud_record_free(struct aud_record *r)
{
    int kept;

    if (r == NULL)
        return;
    pthread_mutex_lock(&aud_record_mu);
    kept = aud_record_cache_put(r);
    pthread_mutex_unlock(&aud_record_mu);
    if (!kept)
        al_free(r);
}

void
aud_row_put(struct aud_row *row)
{
    if (row != NULL && atomic_fetch_sub(&row->refs, 1) == 1)
        al_free(row);
}

/* aud_record_free for a whole batch of jobs, under one lock. */
static void
aud_records_free_jobs(struct aud_job *jobs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        aud_row_put(jobs[i].row);
        jobs[i].row = NULL;
    }
    pthread_mutex_lock(&aud_record_mu);
    for (size_t i = 0; i < n; i++) {
        if (jobs[i].r != NULL && aud_record_cache_put(jobs[i].r))
            jobs[i].r = NULL;
    }
    pthread_mutex_unlock(&aud_record_mu);
    for (size_t i = 0; i < n; i++) {
        al_free(jobs[i].r);
        jobs[i].r = NULL;
    }
}

static void
aud_writer_timespec(int64_t mono_us, struct timespec *ts)
{
    ts->tv_sec = (time_t)(mono_us / 1000000);
    ts->tv_nsec = (long)(mono_us % 1000000) * 1000;
}

/* Logs a failure loudly, at most once per AUD_ERRLOG_INTERVAL_US. */
static void
aud_writer_log_failure(struct aud_writer *w, const char *what, const char *detail)
{
    int64_t now = al_mono_us();

    w->errs_since_log++;
    if (w->errlog_us != 0 && now - w->errlog_us < AUD_ERRLOG_INTERVAL_US)
        return;
    al_log_err("audit: %s: %s: %s (%llu failure(s); requests fail closed until a commit "
               "succeeds; %llu record(s) queued)",
               w->db_path, what, detail, (unsigned long long)w->errs_since_log,
               (unsigned long long)(atomic_load(&w->depth) + w->nbatch));
    w->errlog_us = now;
    w->errs_since_log = 0;
}

/* Tells a strict begin's request whether its row committed. */
static void
aud_writer_job_answer(const struct aud_job *j, int ok)
{
    if (j->kind == AUD_JOB_BEGIN && j->done != NULL)
        j->done(j->arg, ok, ok ? j->r->row_id : 0);
}

/* Answers and frees the job at batch index i (success or failure). */
static void
aud_writer_job_finish(struct aud_job *j, int ok)
{
    aud_writer_job_answer(j, ok);
    aud_record_free(j->r);
    j->r = NULL;
    aud_row_put(j->row);
    j->row = NULL;
}

static int
aud_writer_run_job(struct aud_writer *w, struct aud_job *j)
{
    int64_t id = 0;

    switch (j->kind) {
    case AUD_JOB_INSERT:
        return aud_db_insert(w->db, j->r, 1, &id);
    case AUD_JOB_BEGIN:
    case AUD_JOB_OPEN:
        if (aud_db_insert(w->db, j->r, 0, &id) != AL_OK)
            return AL_ERROR;
        j->r->row_id = id;
        if (j->row != NULL)
            j->row->id = id;
        return AL_OK;
    case AUD_JOB_COMPLETE:
        if (j->row != NULL) /* its begin ran before it (FIFO), or was dropped (0) */
            j->r->row_id = j->row->id;
        if (j->r->row_id != 0) {
            int rc = aud_db_update(w->db, j->r);

            if (rc != AL_DECLINED)
                return rc;
            /* No such pending row (a replaced file, retention): the whole
             * row instead, never an update of someone else's. */
        }
        return aud_db_insert(w->db, j->r, 1, &id);
    }
    return AL_ERROR;
}

/* Makes sure w->db is open on the file at db_path. AL_OK or AL_ERROR (logged). */
static int
aud_writer_ensure_db(struct aud_writer *w)
{
    struct al_errs errs;
    int            ret = AL_OK;

    if (w->db != NULL && aud_db_moved(w->db)) {
        al_log_err("audit: %s: database file was removed or replaced; reopening (rows "
                   "committed to the old file stay in the old file)",
                   w->db_path);
        aud_db_close(w->db);
        w->db = NULL;
    }
    if (w->db != NULL)
        return AL_OK;
    al_errs_init(&errs);
    w->db = aud_db_open(w->db_path, w->strict, w->log_query, &errs);
    if (w->db == NULL) {
        size_t n = errs.text.len;

        while (n > 0 && errs.text.data[n - 1] == '\n')
            n--;
        if (errs.text.data != NULL)
            errs.text.data[n] = '\0';
        aud_writer_log_failure(w, "reopen", errs.text.data ? errs.text.data : "failed");
        ret = AL_ERROR;
    }
    al_errs_free(&errs);
    return ret;
}

/* Idle check of the database file (writer thread, no lock held). */
static void
aud_writer_probe(struct aud_writer *w)
{
    if (w->db != NULL && !aud_db_moved(w->db))
        return;
    if (aud_writer_ensure_db(w) != AL_OK)
        atomic_store(&w->healthy, 0);
}

/* Publishes the -wal file's size; at most every AUD_WALSTAT_US unless `force`. */
static void
aud_writer_walstat(struct aud_writer *w, int64_t now, int force)
{
    if (!force && now - w->walstat_us < AUD_WALSTAT_US)
        return;
    w->walstat_us = now;
    atomic_store(&w->wal_bytes, w->db != NULL ? (uint64_t)aud_db_wal_bytes(w->db) : 0);
}

/*
 * wal_checkpoint(TRUNCATE) when it is due: idle for AUD_CKPT_IDLE_US after
 * writing, or (`busy`, between batches) AUD_CKPT_PERIOD_US since the last
 * attempt. Never waits for a reader. Writer thread, no lock held.
 */
static void
aud_writer_checkpoint(struct aud_writer *w, int64_t now, int busy)
{
    int done = 0;

    if (!w->wal_dirty || w->db == NULL || w->retry_us != 0 || now < w->ckpt_us)
        return;
    if (busy ? now - w->ckpt_last < AUD_CKPT_PERIOD_US : now - w->active_us < AUD_CKPT_IDLE_US)
        return;
    w->ckpt_last = now;
    if (aud_db_checkpoint(w->db, &done) != AL_OK) {
        if (w->ckpt_errlog_us == 0 || now - w->ckpt_errlog_us >= AUD_ERRLOG_INTERVAL_US) {
            al_log_warnx("audit: %s: WAL checkpoint: %s", w->db_path, aud_db_errmsg(w->db));
            w->ckpt_errlog_us = now;
        }
        w->ckpt_us = now + AUD_CKPT_ERR_US;
    } else if (done) {
        w->wal_dirty = 0;
    } else {
        w->ckpt_us = now + AUD_CKPT_RETRY_US; /* a reader was in the way */
    }
    aud_writer_walstat(w, al_mono_us(), 1);
}

/* Reports dropped records: one line for all dropped since the last report,
 * at most once per AUD_DROPLOG_INTERVAL_US (any thread; `force` at stop). */
static void
aud_writer_droplog(struct aud_writer *w, int force)
{
    int64_t  now, last;
    uint64_t n;

    if (atomic_load(&w->drops_unlogged) == 0)
        return;
    now = al_mono_us();
    last = atomic_load(&w->droplog_us);
    if (!force && last != 0 && now - last < AUD_DROPLOG_INTERVAL_US)
        return;
    if (!atomic_compare_exchange_strong(&w->droplog_us, &last, now))
        return; /* another thread reports */
    n = atomic_exchange(&w->drops_unlogged, 0);
    if (n == 0)
        return;
    al_log_err("audit: %s: queue hard limit (%zu) reached: %llu audit record(s) DROPPED since "
               "the last report (last of conn %llu; %llu dropped in all)",
               w->db_path, w->cap, (unsigned long long)n,
               (unsigned long long)atomic_load(&w->drop_last_conn),
               (unsigned long long)atomic_load(&w->dropped));
}

/*
 * A record was filled on a worker's core and its fields sit on ~16 cache
 * lines of a 3.5 KiB struct; binding them one by one stalls on each line
 * in turn. Fetching the next record's lines while sqlite works on the
 * current row hides that latency.
 */
static void
aud_record_prefetch(const struct aud_record *r)
{
    __builtin_prefetch(r);
    __builtin_prefetch(r->sandbox);
    __builtin_prefetch(r->session);
    __builtin_prefetch(r->tool_call);
    __builtin_prefetch(r->client);
    __builtin_prefetch(r->mode);
    __builtin_prefetch(r->method);
    __builtin_prefetch(r->host);
    __builtin_prefetch(r->path);
    __builtin_prefetch(r->upstream);
    __builtin_prefetch(r->orig_dst);
    __builtin_prefetch(r->decision);
    __builtin_prefetch(r->rule);
    __builtin_prefetch(r->reason);
    __builtin_prefetch(r->secrets);
    __builtin_prefetch(r->error);
}

/* Runs the batch in one transaction. Writer thread, no lock held. */
static int
aud_writer_flush(struct aud_writer *w)
{
    const char *what = "begin";
    size_t      i, k;
    int         code;

    if (aud_writer_ensure_db(w) != AL_OK)
        goto fail_noclose;
    if (aud_db_begin(w->db) != AL_OK)
        goto fail;
    what = "insert";
    if (w->nbatch > 0)
        aud_record_prefetch(w->batch[0].r);
    for (i = 0; i < w->nbatch; i++) {
        if (i + 1 < w->nbatch)
            aud_record_prefetch(w->batch[i + 1].r);
        if (aud_writer_run_job(w, &w->batch[i]) != AL_OK)
            goto fail;
    }
    what = "commit";
    if (aud_db_commit(w->db) != AL_OK)
        goto fail;
    if (atomic_load(&w->healthy) == 0) {
        /* Failures keep their own rate limit across a recovery (errlog_us is
         * not reset), so a database that fails and recovers in a loop logs
         * a line per interval, not two per cycle. */
        int64_t now = al_mono_us();

        if (w->recovlog_us == 0 || now - w->recovlog_us >= AUD_ERRLOG_INTERVAL_US) {
            al_log_info("audit: %s: writer recovered; commits succeed again", w->db_path);
            w->recovlog_us = now;
        }
    }
    atomic_store(&w->healthy, 1);
    w->retry_us = 0;
    w->retry_ms = 0;
    w->wal_dirty = 1;
    atomic_fetch_add(&w->written, w->nbatch);
    atomic_fetch_add(&w->batches, 1);
    w->active_us = al_mono_us();
    aud_writer_walstat(w, w->active_us, 0);
    for (i = 0, k = 0; i < w->nbatch; i++) {
        aud_writer_job_answer(&w->batch[i], 1);
        k |= w->batch[i].kind == AUD_JOB_COMPLETE;
    }
    if (k) /* a row the sink shipped pending may be complete now */
        aud_ship_poke(w->ship);
    aud_records_free_jobs(w->batch, w->nbatch);
    w->nbatch = 0;
    return AL_OK;

fail:
    code = aud_db_errcode(w->db);
    aud_writer_log_failure(w, what, aud_db_errmsg(w->db));
    aud_db_rollback(w->db);
    /* Anything but a transient lock or a full disk: start over with a fresh connection. */
    if (code != SQLITE_BUSY && (code & 0xff) != SQLITE_BUSY && code != SQLITE_FULL &&
        (code & 0xff) != SQLITE_LOCKED) {
        aud_db_close(w->db);
        w->db = NULL;
    }
fail_noclose:
    atomic_fetch_add(&w->errors, 1);
    atomic_store(&w->healthy, 0);
    /* Strict begins fail now (their requests are refused); the rest is
     * retried, a nowait begin's id forgotten (it was rolled back). */
    for (i = 0, k = 0; i < w->nbatch; i++) {
        if (w->batch[i].kind == AUD_JOB_BEGIN) {
            aud_writer_job_finish(&w->batch[i], 0);
            continue;
        }
        if (w->batch[i].kind == AUD_JOB_OPEN)
            w->batch[i].row->id = 0;
        w->batch[k++] = w->batch[i];
    }
    w->nbatch = k;
    w->retry_ms = w->retry_ms == 0 ? AUD_RETRY_MIN_MS : w->retry_ms * 2;
    if (w->retry_ms > AUD_RETRY_MAX_MS)
        w->retry_ms = AUD_RETRY_MAX_MS;
    w->retry_us = al_mono_us() + (int64_t)w->retry_ms * 1000;
    return AL_ERROR;
}

/* One retention chunk in its own small transaction. Writer thread, no lock. */
static void
aud_writer_retention(struct aud_writer *w)
{
    int64_t cutoff = al_now_us() - (int64_t)w->retention_days * 86400 * 1000000;
    int     n = 0;

    w->retention_us = al_mono_us() + AUD_RETENTION_IDLE_US;
    if (w->db == NULL)
        return;
    /* Rows the sink has not shipped yet stay (aud_ship_shipped: all when no sink). */
    if (aud_db_begin(w->db) != AL_OK ||
        aud_db_retention(w->db, cutoff, aud_ship_shipped(w->ship), &n) != AL_OK ||
        aud_db_commit(w->db) != AL_OK) {
        al_log_warnx("audit: %s: retention: %s", w->db_path, aud_db_errmsg(w->db));
        aud_db_rollback(w->db);
        atomic_fetch_add(&w->errors, 1);
        return;
    }
    atomic_fetch_add(&w->deleted, (uint64_t)n);
    w->wal_dirty = 1;
    if (n >= AUD_RETENTION_CHUNK_ROWS)
        w->retention_us = al_mono_us(); /* more to do: next round, after any inserts */
}

/* Moves up to max_batch jobs from the ring into the batch. Lock held. */
static void
aud_writer_take(struct aud_writer *w)
{
    while (w->count > 0 && w->nbatch < (size_t)w->max_batch) {
        struct aud_job *j = &w->ring[w->head];

        w->batch[w->nbatch++] = *j;
        if (j->kind == AUD_JOB_BEGIN)
            w->nbegin--;
        j->r = NULL;
        j->row = NULL;
        w->head = (w->head + 1) % w->cap;
        w->count--;
    }
    w->oldest_us = w->count > 0 ? al_mono_us() : 0;
    if (w->nbegin == 0)
        w->begin_go = 0; /* what is left waits for its own release */
    else
        w->begin_us = w->oldest_us;
    atomic_store(&w->depth, w->count);
}

/* Gives up on everything still held (stop could not commit). Lock held. */
static void
aud_writer_drop_all(struct aud_writer *w)
{
    uint64_t n = w->nbatch + w->count;

    aud_writer_take(w);
    while (w->nbatch > 0) {
        for (size_t i = 0; i < w->nbatch; i++)
            aud_writer_job_finish(&w->batch[i], 0);
        w->nbatch = 0;
        aud_writer_take(w);
    }
    if (n > 0) {
        al_log_err("audit: %s: shutting down with the database unwritable: %llu audit "
                   "record(s) LOST",
                   w->db_path, (unsigned long long)n);
        atomic_fetch_add(&w->dropped, n);
    }
}

/* 1 when the writer has something to do now; else *deadline (0 = none). Lock held. */
static int
aud_writer_ready(struct aud_writer *w, int64_t now, int64_t *deadline)
{
    int64_t d = 0;

    *deadline = 0;
    if (w->retry_us != 0) {
        /* failing: only the retry timer (or stop) wakes us */
        if (now >= w->retry_us)
            return 1;
        *deadline = w->retry_us;
        return w->stopping && now - w->stop_us >= (int64_t)AUD_STOP_RETRY_MS * 1000;
    }
    if (w->count > 0) {
        if (w->stopping || (w->nbegin > 0 && w->begin_go) || w->count >= (size_t)w->max_batch)
            return 1;
        d = w->oldest_us + (int64_t)w->flush_ms * 1000;
        if (w->nbegin > 0 && w->begin_us + AUD_HOLD_MAX_US < d)
            d = w->begin_us + AUD_HOLD_MAX_US; /* a release that never came */
        if (now >= d)
            return 1;
    }
    if (w->retention_days > 0 && !w->stopping) {
        if (now >= w->retention_us)
            return 1;
        if (d == 0 || w->retention_us < d)
            d = w->retention_us;
    }
    *deadline = d;
    return 0;
}

#define AUD_PROBE_MS 100

static void *
aud_writer_main(void *arg)
{
    struct aud_writer *w = arg;
    struct timespec    ts;
    int64_t            now, deadline;
    int                short_queue;

    if (!w->strict) {
        /* Batched rows wait flush_ms anyway: as SCHED_BATCH the writer never
         * preempts a worker on wake-up (it woke to run a whole batch), so
         * request threads keep their core; it still gets its fair CPU share
         * and a full queue still fails requests closed. Strict mode keeps
         * the normal policy: requests wait for its commits. */
        struct sched_param sp;

        memset(&sp, 0, sizeof(sp));
        if (pthread_setschedparam(pthread_self(), SCHED_BATCH, &sp) != 0)
            al_log_debug("audit: writer thread stays SCHED_OTHER");
    }
    pthread_mutex_lock(&w->mu);
    for (;;) {
        now = al_mono_us();
        if (w->stopping && w->count == 0 && w->nbatch == 0)
            break;
        if (w->stopping && w->retry_us != 0 &&
            now - w->stop_us >= (int64_t)AUD_STOP_RETRY_MS * 1000) {
            aud_writer_drop_all(w);
            break;
        }
        if (!aud_writer_ready(w, now, &deadline)) {
            /* Idle: wake at least every AUD_PROBE_MS to look at the file, so
             * a removed or replaced database fails admission closed before
             * the next request slips through, not only at the next batch. */
            if (deadline == 0 || deadline > now + AUD_PROBE_MS * 1000)
                deadline = now + AUD_PROBE_MS * 1000;
            aud_writer_timespec(deadline, &ts);
            if (pthread_cond_timedwait(&w->cv, &w->mu, &ts) == ETIMEDOUT && !w->stopping &&
                w->count == 0) {
                pthread_mutex_unlock(&w->mu);
                aud_writer_probe(w);
                now = al_mono_us();
                aud_writer_checkpoint(w, now, 0);
                aud_writer_walstat(w, now, 0);
                aud_writer_droplog(w, 0);
                pthread_mutex_lock(&w->mu);
            }
            continue;
        }
        aud_writer_take(w);
        short_queue = w->count < w->queue_max / 4 && !w->stopping;
        pthread_mutex_unlock(&w->mu);
        if (w->nbatch > 0)
            (void)aud_writer_flush(w);
        if (w->retention_days > 0 && w->retry_us == 0 && al_mono_us() >= w->retention_us)
            aud_writer_retention(w);
        if (short_queue)
            aud_writer_checkpoint(w, al_mono_us(), 1);
        aud_writer_droplog(w, 0);
        pthread_mutex_lock(&w->mu);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* Instance names: what a metric label or a file name can hold as it is. */
static int
aud_writer_instance_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > 63)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && strchr("._:-", s[i]) == NULL)
            return 0;
    return 1;
}

/* Starts the fleet sink's shipper (conf->sink_postgres set). */
static int
aud_writer_sink_start(struct aud_writer *w, const struct aud_conf *conf, struct al_errs *errs)
{
    struct aud_ship_conf sc;
    char                 host[256];

    memset(&sc, 0, sizeof(sc));
    sc.instance = conf->sink_instance;
    if (sc.instance == NULL || sc.instance[0] == '\0') {
        if (gethostname(host, sizeof(host)) != 0)
            al_strlcpy(host, sizeof(host), "localhost");
        host[sizeof(host) - 1] = '\0';
        sc.instance = host;
    }
    if (!aud_writer_instance_ok(sc.instance)) {
        al_errs_add(errs,
                    "audit.sink.instance: \"%.64s\" is not a valid instance name (1-63 of "
                    "A-Z a-z 0-9 . _ : -)",
                    sc.instance);
        return AL_ERROR;
    }
    sc.db_path = conf->db_path;
    sc.conninfo = conf->sink_postgres;
    sc.retention_days = w->retention_days;
    w->ship = aud_ship_start(&sc, errs);
    return w->ship != NULL ? AL_OK : AL_ERROR;
}

void
aud_writer_sink_stats(const struct aud_writer *w, struct aud_sink_stats *out)
{
    aud_ship_stats(w != NULL ? w->ship : NULL, out);
}

struct aud_writer *
aud_writer_start(const struct aud_conf *conf, struct al_errs *errs)
{
    struct aud_writer *w = NULL;
    pthread_condattr_t ca;
    int                rc;

    if (conf == NULL || conf->db_path == NULL || conf->db_path[0] == '\0') {
        al_errs_add(errs, "audit: no database path");
        goto fail;
    }
    w = al_calloc(1, sizeof(*w));
    if (w == NULL)
        goto nomem;
    pthread_mutex_init(&w->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    w->db_path = al_strdup(conf->db_path);
    if (w->db_path == NULL)
        goto nomem;
    w->strict = conf->strict != 0;
    w->log_query = conf->log_query != 0;
    w->flush_ms = conf->flush_ms > 0 ? conf->flush_ms : AUD_DEFAULT_FLUSH_MS;
    w->max_batch = conf->max_batch > 0 ? conf->max_batch : AUD_DEFAULT_MAX_BATCH;
    w->queue_max = conf->queue_max > 0 ? (size_t)conf->queue_max : AUD_DEFAULT_QUEUE_MAX;
    w->retention_days = conf->retention_days > 0 ? conf->retention_days : 0;
    w->cap = 2 * w->queue_max;
    w->ring = al_calloc(w->cap, sizeof(*w->ring));
    w->batch = al_calloc((size_t)w->max_batch, sizeof(*w->batch));
    if (w->ring == NULL || w->batch == NULL)
        goto nomem;
    w->db = aud_db_open(w->db_path, w->strict, w->log_query, errs);
    if (w->db == NULL)
        goto fail;
    if (conf->sink_postgres != NULL && aud_writer_sink_start(w, conf, errs) != AL_OK)
        goto fail;
    atomic_store(&w->healthy, 1);
    w->retention_us = al_mono_us();
    w->active_us = w->ckpt_last = al_mono_us();
    w->wal_dirty = 1; /* a WAL left by an earlier run is emptied when idle */
    rc = pthread_create(&w->thread, NULL, aud_writer_main, w);
    if (rc == 0)
        (void)pthread_setname_np(w->thread, "airlock-audit");
    if (rc != 0) {
        al_errs_add(errs, "audit: cannot start the writer thread: %s", strerror(rc));
        goto fail;
    }
    w->thread_started = 1;
    return w;
nomem:
    al_errs_add(errs, "audit: out of memory");
fail:
    aud_writer_stop(w);
    return NULL;
}

void
aud_writer_stop(struct aud_writer *w)
{
    if (w == NULL)
        return;
    if (w->thread_started) {
        pthread_mutex_lock(&w->mu);
        w->stopping = 1;
        w->stop_us = al_mono_us();
        pthread_cond_signal(&w->cv);
        pthread_mutex_unlock(&w->mu);
        pthread_join(w->thread, NULL);
        aud_writer_droplog(w, 1);
    }
    aud_ship_stop(w->ship, AUD_SINK_STOP_GRACE_MS); /* after the drain: its rows go too */
    /* Nothing can be queued now; free anything left (start failure paths). */
    if (w->ring != NULL) {
        for (size_t i = 0; i < w->count; i++) {
            aud_record_free(w->ring[(w->head + i) % w->cap].r);
            aud_row_put(w->ring[(w->head + i) % w->cap].row);
        }
    }
    aud_db_close(w->db);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    al_free(w->ring);
    al_free(w->batch);
    al_free(w->db_path);
    al_free(w);
}

/*
 * Pushes a job. `limit` is the count at or above which the push is refused
 * (queue_max for admission, cap for finished records). Returns AL_OK,
 * AL_DECLINED (queued, but the backlog is at or over queue_max) or AL_ERROR
 * (not queued: limit reached). Never blocks on I/O.
 */
static int
aud_writer_push(struct aud_writer *w, enum aud_job_kind kind, struct aud_record *r,
                struct aud_row *row, void (*done)(void *arg, int ok, int64_t row_id), void *arg,
                size_t limit, int held)
{
    struct aud_job *j;
    int             ret = AL_OK;
    int             wake;

    pthread_mutex_lock(&w->mu);
    if (w->count >= limit || w->stopping) {
        ret = AL_ERROR;
        goto out;
    }
    if (w->count >= w->queue_max)
        ret = AL_DECLINED;
    j = &w->ring[(w->head + w->count) % w->cap];
    j->kind = kind;
    j->r = r;
    j->row = row;
    j->done = done;
    j->arg = arg;
    w->count++;
    if (w->count == 1)
        w->oldest_us = al_mono_us();
    if (kind == AUD_JOB_BEGIN && w->nbegin++ == 0)
        w->begin_us = w->count == 1 ? w->oldest_us : al_mono_us();
    atomic_store(&w->depth, w->count);
    atomic_fetch_add(&w->queued, 1);
    /* Wake the writer for what changes its plan, not for every job: strict
     * begins that arrive while a commit runs join the next group anyway (it
     * looks at the queue before it sleeps). A held begin wakes nobody: its
     * aud_release() does, once the caller has queued all it had. */
    if (kind == AUD_JOB_BEGIN && !held && !w->begin_go) {
        w->begin_go = 1;
        wake = 1;
    } else {
        wake = !held && (w->count == 1 || w->count == (size_t)w->max_batch);
    }
    if (wake)
        pthread_cond_signal(&w->cv);
out:
    pthread_mutex_unlock(&w->mu);
    return ret;
}

/* Shared by aud_submit and aud_complete(_row): takes ownership of r and
 * of the reference `row`. */
static int
aud_writer_hand_over(struct aud_writer *w, enum aud_job_kind kind, struct aud_record *r,
                     struct aud_row *row)
{
    int rc;

    if (r == NULL || w == NULL) {
        aud_record_free(r);
        aud_row_put(row);
        return AL_ERROR;
    }
    rc = aud_writer_push(w, kind, r, row, NULL, NULL, w->cap, 0);
    if (rc == AL_ERROR) {
        aud_row_put(row);
        atomic_fetch_add(&w->dropped, 1);
        atomic_fetch_add(&w->refused, 1);
        atomic_store(&w->drop_last_conn, r->conn_id);
        atomic_fetch_add(&w->drops_unlogged, 1);
        aud_record_free(r);
        aud_writer_droplog(w, 0);
        return AL_DECLINED;
    }
    if (rc == AL_DECLINED)
        atomic_fetch_add(&w->refused, 1);
    if (atomic_load(&w->healthy) == 0)
        return AL_ERROR;
    return rc;
}

int
aud_submit(struct aud_writer *w, struct aud_record *r)
{
    return aud_writer_hand_over(w, AUD_JOB_INSERT, r, NULL);
}

int
aud_complete(struct aud_writer *w, struct aud_record *r)
{
    return aud_writer_hand_over(w, AUD_JOB_COMPLETE, r, NULL);
}

int
aud_begin_nowait(struct aud_writer *w, struct aud_record *r, struct aud_row **row)
{
    struct aud_row *h;

    *row = NULL;
    if (r == NULL)
        return AL_ERROR;
    h = w != NULL && atomic_load(&w->healthy) != 0 ? al_calloc(1, sizeof(*h)) : NULL;
    if (h == NULL) {
        aud_record_free(r);
        return AL_ERROR;
    }
    atomic_init(&h->refs, 2); /* the begin's job and the caller */
    r->row_id = 0;
    /* An admission, as aud_begin: refused (not queued) at queue_max. */
    if (aud_writer_push(w, AUD_JOB_OPEN, r, h, NULL, NULL, w->queue_max, 0) != AL_OK) {
        atomic_fetch_add(&w->refused, 1);
        aud_record_free(r);
        al_free(h);
        return AL_DECLINED;
    }
    *row = h;
    return AL_OK;
}

int
aud_complete_row(struct aud_writer *w, struct aud_record *r, struct aud_row *row)
{
    if (r != NULL)
        r->row_id = 0; /* the writer takes it from `row` */
    return aud_writer_hand_over(w, AUD_JOB_COMPLETE, r, row);
}

static int
aud_writer_begin(struct aud_writer *w, const struct aud_record         *r,
                 void (*done)(void *arg, int ok, int64_t row_id), void *arg, int held)
{
    struct aud_record *copy = NULL;
    int                rc;

    if (w == NULL || r == NULL || atomic_load(&w->healthy) == 0)
        return AL_ERROR;
    copy = aud_record_new();
    if (copy == NULL)
        return AL_ERROR;
    memcpy(copy, r, sizeof(*copy));
    copy->row_id = 0;
    rc = aud_writer_push(w, AUD_JOB_BEGIN, copy, NULL, done, arg, w->queue_max, held);
    if (rc != AL_OK) {
        atomic_fetch_add(&w->refused, 1);
        aud_record_free(copy);
        return AL_DECLINED;
    }
    return AL_OK;
}

int
aud_begin(struct aud_writer *w, const struct aud_record         *r,
          void (*done)(void *arg, int ok, int64_t row_id), void *arg)
{
    return aud_writer_begin(w, r, done, arg, 0);
}

int
aud_begin_held(struct aud_writer *w, const struct aud_record         *r,
               void (*done)(void *arg, int ok, int64_t row_id), void *arg)
{
    return aud_writer_begin(w, r, done, arg, 1);
}

void
aud_release(struct aud_writer *w)
{
    if (w == NULL)
        return;
    pthread_mutex_lock(&w->mu);
    if (w->nbegin > 0 && !w->begin_go) {
        w->begin_go = 1;
        pthread_cond_signal(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
}

int
aud_writer_admit(struct aud_writer *w)
{
    if (w == NULL || atomic_load(&w->healthy) == 0)
        return AL_ERROR;
    if (atomic_load(&w->depth) >= w->queue_max) {
        atomic_fetch_add(&w->refused, 1);
        return AL_DECLINED;
    }
    return AL_OK;
}

int
aud_writer_healthy(const struct aud_writer *w)
{
    return w != NULL && atomic_load(&w->healthy) != 0;
}

void
aud_writer_stats(const struct aud_writer *w, struct aud_stats *out)
{
    const struct aud_writer *m = w;

    memset(out, 0, sizeof(*out));
    if (m == NULL)
        return;
    out->queued = atomic_load(&m->queued);
    out->written = atomic_load(&m->written);
    out->refused = atomic_load(&m->refused);
    out->errors = atomic_load(&m->errors);
    out->batches = atomic_load(&m->batches);
    out->depth = atomic_load(&m->depth);
    out->dropped = atomic_load(&m->dropped);
    out->deleted = atomic_load(&m->deleted);
    out->wal_bytes = atomic_load(&m->wal_bytes);
}
