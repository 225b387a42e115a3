/*
 * test_aud_writer.c - the audit writer: record -> row round trip, query
 * dropping, strict begin/done/complete, backlog (AL_DECLINED, reserve,
 * drops), v1 -> v2 migration, recovery from a removed or replaced file,
 * retention, and that nothing but what callers put in records is stored.
 * Each test works in its own temp dir, removed at the end.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "audit/aud_int.h"

struct aud_t_env {
    char dir[64];
    char db[128];
};

static int
aud_t_rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static int
aud_t_setup(void **state)
{
    struct aud_t_env *e = calloc(1, sizeof(*e));

    snprintf(e->dir, sizeof(e->dir), "/tmp/aud_test.XXXXXX");
    assert_non_null(mkdtemp(e->dir));
    snprintf(e->db, sizeof(e->db), "%s/audit.db", e->dir);
    *state = e;
    return 0;
}

static int
aud_t_teardown(void **state)
{
    struct aud_t_env *e = *state;

    nftw(e->dir, aud_t_rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    free(e);
    return 0;
}

static void
aud_t_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

    nanosleep(&ts, NULL);
}

static struct aud_record *
aud_t_rec(const char *sandbox, const char *host, const char *path, const char *decision)
{
    struct aud_record *r = aud_record_new();

    assert_non_null(r);
    r->ts_us = al_now_us();
    r->duration_us = 1234;
    r->conn_id = 77;
    snprintf(r->sandbox, sizeof(r->sandbox), "%s", sandbox);
    snprintf(r->session, sizeof(r->session), "sess-1");
    snprintf(r->tool_call, sizeof(r->tool_call), "toolu_01");
    snprintf(r->client, sizeof(r->client), "127.0.0.1:5555");
    snprintf(r->mode, sizeof(r->mode), "forward");
    snprintf(r->method, sizeof(r->method), "GET");
    snprintf(r->scheme, sizeof(r->scheme), "https");
    snprintf(r->host, sizeof(r->host), "%s", host);
    r->port = 443;
    snprintf(r->path, sizeof(r->path), "%s", path);
    snprintf(r->upstream, sizeof(r->upstream), "127.0.0.1:8443");
    snprintf(r->decision, sizeof(r->decision), "%s", decision);
    snprintf(r->rule, sizeof(r->rule), "github");
    snprintf(r->reason, sizeof(r->reason), "rule matched");
    snprintf(r->secrets, sizeof(r->secrets), "github_token");
    r->status = 200;
    r->bytes_up = 10;
    r->bytes_down = 2000;
    return r;
}

struct aud_t_rows {
    struct aud_record rows[64];
    int               n;
};

static int
aud_t_collect(void *arg, const struct aud_record *r)
{
    struct aud_t_rows *rs = arg;

    if (rs->n < 64)
        rs->rows[rs->n] = *r;
    rs->n++;
    return AL_OK;
}

static void
aud_t_read(const char *db, const struct aud_filter *f, struct aud_t_rows *rs)
{
    struct aud_filter all;
    struct al_errs    errs;

    memset(&all, 0, sizeof(all));
    memset(rs, 0, sizeof(*rs));
    al_errs_init(&errs);
    assert_int_equal(aud_query_each(db, f ? f : &all, aud_t_collect, rs, &errs), AL_OK);
    al_errs_free(&errs);
}

static struct aud_writer *
aud_t_start(const char *db, int strict, int queue_max, int flush_ms, int retention_days)
{
    struct aud_conf    conf;
    struct al_errs     errs;
    struct aud_writer *w;

    memset(&conf, 0, sizeof(conf));
    conf.db_path = db;
    conf.strict = strict;
    conf.queue_max = queue_max;
    conf.flush_ms = flush_ms;
    conf.retention_days = retention_days;
    al_errs_init(&errs);
    w = aud_writer_start(&conf, &errs);
    if (w == NULL)
        fprintf(stderr, "%s", errs.text.data ? errs.text.data : "?");
    al_errs_free(&errs);
    assert_non_null(w);
    return w;
}

static void
test_aud_round_trip(void **state)
{
    struct aud_t_env  *e = *state;
    struct aud_writer *w = aud_t_start(e->db, 0, 0, 5, 0);
    struct aud_record *r = aud_t_rec("dev", "API.GitHub.COM", "/repos/x?token=abc#frag", "allow");
    struct aud_record  want = *r;
    struct aud_t_rows  rs;
    struct aud_stats   st;
    struct stat        sb;

    snprintf(r->orig_dst, sizeof(r->orig_dst), "10.0.0.1:443");
    snprintf(r->error, sizeof(r->error), "none");
    want = *r;
    assert_int_equal(aud_submit(w, r), AL_OK);
    aud_writer_stop(w);

    assert_int_equal(stat(e->db, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    aud_t_read(e->db, NULL, &rs);
    assert_int_equal(rs.n, 1);
    assert_true(rs.rows[0].row_id > 0);
    assert_int_equal(rs.rows[0].ts_us, want.ts_us);
    assert_int_equal(rs.rows[0].duration_us, 1234);
    assert_int_equal(rs.rows[0].conn_id, 77);
    assert_string_equal(rs.rows[0].sandbox, "dev");
    assert_string_equal(rs.rows[0].session, "sess-1");
    assert_string_equal(rs.rows[0].tool_call, "toolu_01");
    assert_string_equal(rs.rows[0].client, "127.0.0.1:5555");
    assert_string_equal(rs.rows[0].mode, "forward");
    assert_string_equal(rs.rows[0].method, "GET");
    assert_string_equal(rs.rows[0].scheme, "https");
    assert_string_equal(rs.rows[0].host, "api.github.com");
    assert_int_equal(rs.rows[0].port, 443);
    assert_string_equal(rs.rows[0].path, "/repos/x");
    assert_string_equal(rs.rows[0].upstream, "127.0.0.1:8443");
    assert_string_equal(rs.rows[0].orig_dst, "10.0.0.1:443");
    assert_string_equal(rs.rows[0].decision, "allow");
    assert_string_equal(rs.rows[0].rule, "github");
    assert_string_equal(rs.rows[0].reason, "rule matched");
    assert_string_equal(rs.rows[0].secrets, "github_token");
    assert_int_equal(rs.rows[0].status, 200);
    assert_int_equal(rs.rows[0].bytes_up, 10);
    assert_int_equal(rs.rows[0].bytes_down, 2000);
    assert_string_equal(rs.rows[0].error, "none");
    assert_int_equal(rs.rows[0].pending, 0);

    /* log_query keeps the query; a second writer on the same file appends */
    {
        struct aud_conf conf;
        struct al_errs  errs;

        memset(&conf, 0, sizeof(conf));
        conf.db_path = e->db;
        conf.log_query = 1;
        al_errs_init(&errs);
        w = aud_writer_start(&conf, &errs);
        al_errs_free(&errs);
        assert_non_null(w);
        assert_int_equal(aud_submit(w, aud_t_rec("dev", "h", "/p?q=1", "deny")), AL_OK);
        aud_writer_stats(w, &st);
        aud_writer_stop(w);
        aud_t_read(e->db, NULL, &rs);
        assert_int_equal(rs.n, 2);
        assert_string_equal(rs.rows[1].path, "/p?q=1");
    }
}

struct aud_t_done {
    pthread_mutex_t mu;
    int             calls, ok;
    int64_t         row_id;
};

static void
aud_t_done_cb(void *arg, int ok, int64_t row_id)
{
    struct aud_t_done *d = arg;

    pthread_mutex_lock(&d->mu);
    d->calls++;
    d->ok = ok;
    d->row_id = row_id;
    pthread_mutex_unlock(&d->mu);
}

static int
aud_t_done_calls(struct aud_t_done *d)
{
    int n;

    pthread_mutex_lock(&d->mu);
    n = d->calls;
    pthread_mutex_unlock(&d->mu);
    return n;
}

/* Queues one strict begin for "example.com" answered into d (reset here). */
static void
aud_t_begin(struct aud_writer *w, struct aud_t_done *d, int held)
{
    struct aud_record *r = aud_t_rec("ci", "example.com", "/", "allow");

    memset(d, 0, sizeof(*d));
    pthread_mutex_init(&d->mu, NULL);
    assert_int_equal((held ? aud_begin_held : aud_begin)(w, r, aud_t_done_cb, d), AL_OK);
    aud_record_free(r);
}

/* Waits (bounded) until every one of d[0..n) was answered, then checks
 * each was answered once, ok, with rows in queue order. */
static void
aud_t_expect_answered(struct aud_t_done *d, int n)
{
    int i, k, all;

    for (i = 0, all = 0; i < 400 && !all; i++) {
        for (k = 0, all = 1; k < n; k++)
            all &= aud_t_done_calls(&d[k]) == 1;
        if (!all)
            aud_t_sleep_ms(5);
    }
    for (k = 0; k < n; k++) {
        assert_int_equal(d[k].calls, 1);
        assert_int_equal(d[k].ok, 1);
        assert_true(k == 0 || d[k].row_id > d[k - 1].row_id);
    }
}

static void
test_aud_strict(void **state)
{
    struct aud_t_env  *e = *state;
    struct aud_writer *w = aud_t_start(e->db, 1, 0, 1000, 0);
    struct aud_record *r = aud_t_rec("ci", "example.com", "/", "allow");
    struct aud_record *r2 = aud_t_rec("ci", "example.org", "/", "allow");
    struct aud_t_done  d = {PTHREAD_MUTEX_INITIALIZER, 0, 0, 0};
    struct aud_t_done  d2 = {PTHREAD_MUTEX_INITIALIZER, 0, 0, 0};
    struct aud_t_rows  rs;
    int                i;

    r->status = 0;
    r->bytes_up = r->bytes_down = 0;
    assert_int_equal(aud_begin(w, r, aud_t_done_cb, &d), AL_OK);
    assert_int_equal(aud_begin(w, r2, aud_t_done_cb, &d2), AL_OK);
    aud_record_free(r2);
    /* flush_ms is 1 s, but a begin is committed at once */
    for (i = 0; i < 200 && (aud_t_done_calls(&d) == 0 || aud_t_done_calls(&d2) == 0); i++)
        aud_t_sleep_ms(5);
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.ok, 1);
    assert_true(d.row_id > 0);
    assert_true(d2.row_id > d.row_id);
    /* committed: a reader sees the pending row already */
    aud_t_read(e->db, NULL, &rs);
    assert_int_equal(rs.n, 2);
    assert_int_equal(rs.rows[0].pending, 1);
    assert_int_equal(rs.rows[0].status, 0);

    r->row_id = d.row_id;
    r->status = 201;
    r->bytes_up = 5;
    r->bytes_down = 6;
    r->duration_us = 999;
    snprintf(r->decision, sizeof(r->decision), "allow");
    assert_int_equal(aud_complete(w, r), AL_OK);
    aud_writer_stop(w);
    aud_t_read(e->db, NULL, &rs);
    assert_int_equal(rs.n, 2);
    assert_int_equal(rs.rows[0].row_id, d.row_id);
    assert_int_equal(rs.rows[0].status, 201);
    assert_int_equal(rs.rows[0].bytes_up, 5);
    assert_int_equal(rs.rows[0].bytes_down, 6);
    assert_int_equal(rs.rows[0].duration_us, 999);
    assert_int_equal(rs.rows[0].pending, 0);
    assert_int_equal(rs.rows[1].pending, 1); /* never completed: visible as such */
}

/* Strict begins that arrive together share commits (one fsync per group),
 * and every one is answered ok with its own row. */
static void
test_aud_strict_group_commit(void **state)
{
    struct aud_t_env  *e = *state;
    struct aud_writer *w = aud_t_start(e->db, 1, 0, 1000, 0);
    struct aud_t_done  d[40];
    struct aud_stats   st;
    struct aud_t_rows  rs;
    int                i, k;

    for (k = 0; k < 40; k++) {
        aud_t_begin(w, &d[k], 0);
        if (k == 0) /* a first lone begin goes at once; the rest arrive as a crowd */
            for (i = 0; i < 200 && aud_t_done_calls(&d[0]) == 0; i++)
                aud_t_sleep_ms(5);
    }
    aud_t_expect_answered(d, 40);
    aud_writer_stats(w, &st);
    assert_true(st.batches < 20); /* 40 begins, grouped */
    aud_writer_stop(w);
    aud_t_read(e->db, NULL, &rs);
    assert_int_equal(rs.n, 40);
    for (k = 0; k < 40; k++)
        pthread_mutex_destroy(&d[k].mu);
}

/* Held begins (an event loop's burst) wait for aud_release() and then go
 * in one commit; a release that never comes delays them by the writer's
 * idle probe (100 ms) at most, not by flush_ms; a plain begin takes the held
 * ones along. */
static void
test_aud_strict_held(void **state)
{
    struct aud_t_env  *e = *state;
    struct aud_writer *w = aud_t_start(e->db, 1, 0, 60000, 0);
    struct aud_t_done  d[30];
    struct aud_stats   st0, st1;
    struct aud_t_rows  rs;
    int                i, k;

    aud_writer_stats(w, &st0);
    for (k = 0; k < 30; k++)
        aud_t_begin(w, &d[k], 1);
    aud_release(w);
    aud_t_expect_answered(d, 30);
    aud_writer_stats(w, &st1);
    assert_int_equal(st1.batches - st0.batches, 1); /* the whole burst, one fsync */

    /* never released: goes by itself, long before flush_ms (60 s) */
    {
        struct aud_record *r = aud_t_rec("ci", "lost.example", "/", "allow");
        struct aud_t_done  lone = {PTHREAD_MUTEX_INITIALIZER, 0, 0, 0};

        assert_int_equal(aud_begin_held(w, r, aud_t_done_cb, &lone), AL_OK);
        aud_record_free(r);
        for (i = 0; i < 400 && aud_t_done_calls(&lone) == 0; i++)
            aud_t_sleep_ms(5);
        assert_int_equal(lone.calls, 1);
        assert_int_equal(lone.ok, 1);
    }
    /* held, then a plain begin: both answered without any release */
    {
        struct aud_record *r = aud_t_rec("ci", "pair.example", "/", "allow");
        struct aud_t_done  a = {PTHREAD_MUTEX_INITIALIZER, 0, 0, 0};
        struct aud_t_done  b = {PTHREAD_MUTEX_INITIALIZER, 0, 0, 0};

        assert_int_equal(aud_begin_held(w, r, aud_t_done_cb, &a), AL_OK);
        assert_int_equal(aud_begin(w, r, aud_t_done_cb, &b), AL_OK);
        aud_record_free(r);
        for (i = 0; i < 400 && (aud_t_done_calls(&a) == 0 || aud_t_done_calls(&b) == 0); i++)
            aud_t_sleep_ms(5);
        assert_int_equal(a.calls, 1);
        assert_int_equal(b.calls, 1);
        assert_true(b.row_id > a.row_id);
    }
    aud_writer_stop(w);
    aud_t_read(e->db, NULL, &rs);
    assert_int_equal(rs.n, 33);
    for (k = 0; k < 30; k++)
        pthread_mutex_destroy(&d[k].mu);
}

/* Strict: a completion waits at most flush_ms for its own commit, even while
 * begins keep the writer busy with commits that requests wait for. */
static void
test_aud_strict_completion_due(void **state)
{
    struct aud_t_env  *e = *state;
    struct aud_writer *w = aud_t_start(e->db, 1, 0, 100, 0);
    struct aud_record *r = aud_t_rec("ci", "example.com", "/", "allow");
    struct aud_t_done  d = {PTHREAD_MUTEX_INITIALIZER, 0, 0, 0};
    struct aud_t_done  more = {PTHREAD_MUTEX_INITIALIZER, 0, 0, 0};
    struct aud_t_rows  rs;
    int                i, completed = 0;

    assert_int_equal(aud_begin(w, r, aud_t_done_cb, &d), AL_OK);
    for (i = 0; i < 200 && aud_t_done_calls(&d) == 0; i++)
        aud_t_sleep_ms(5);
    assert_int_equal(d.ok, 1);
    r->row_id = d.row_id;
    r->status = 204;
    assert_int_equal(aud_complete(w, r), AL_OK); /* takes r */
    for (i = 0; i < 60 && !completed; i++) {     /* a begin every 10 ms for up to 600 ms */
        struct aud_record *b = aud_t_rec("ci", "example.org", "/", "allow");

        assert_int_equal(aud_begin(w, b, aud_t_done_cb, &more), AL_OK);
        aud_record_free(b);
        aud_t_sleep_ms(10);
        aud_t_read(e->db, NULL, &rs);
        completed = rs.n > 0 && rs.rows[0].pending == 0;
    }
    assert_true(completed);
    assert_int_equal(rs.rows[0].status, 204);
    assert_true(i <= 40); /* well within flush_ms (100) plus scheduling */
    aud_writer_stop(w);
}

/* A row begun without waiting (batched: a websocket at its 101): pending in
 * the next batch, completed in place through the handle, whether the
 * completion lands in a later batch or the same one; one never completed
 * stays pending; a begin at queue_max is refused and queues nothing; a
 * completion that finds no such pending row inserts a whole row instead of
 * updating another. */
static void
test_aud_begin_nowait(void **state)
{
    struct aud_t_env  *e = *state;
    struct aud_writer *w = aud_t_start(e->db, 0, 4, 20, 0);
    struct aud_record *ra = aud_t_rec("ci", "ws.example", "/a", "allow");
    struct aud_record *rb = aud_t_rec("ci", "ws.example", "/b", "allow");
    struct aud_record *ro = aud_t_rec("ci", "ws.example", "/open", "allow");
    struct aud_record *r;
    struct aud_row    *a = NULL, *b = NULL, *open = NULL, *x = NULL;
    struct aud_stats   st;
    struct aud_t_rows  rs;
    int                i;

    ra->status = rb->status = ro->status = 101;
    r = aud_record_new();
    *r = *ra;
    assert_int_equal(aud_begin_nowait(w, r, &a), AL_OK); /* takes r */
    assert_non_null(a);
    for (i = 0, rs.n = 0; i < 400 && rs.n == 0; i++) { /* the next batch, nobody waits */
        aud_t_sleep_ms(5);
        aud_t_read(e->db, NULL, &rs);
    }
    assert_int_equal(rs.n, 1);
    assert_int_equal(rs.rows[0].pending, 1);
    assert_int_equal(rs.rows[0].status, 101);
    assert_string_equal(rs.rows[0].sandbox, "ci");

    /* b: begun and completed back to back (as a rule one batch); open: never
     * completed */
    r = aud_record_new();
    *r = *rb;
    assert_int_equal(aud_begin_nowait(w, r, &b), AL_OK);
    r = aud_record_new();
    *r = *ro;
    assert_int_equal(aud_begin_nowait(w, r, &open), AL_OK);
    rb->bytes_up = 7;
    snprintf(rb->detail, sizeof(rb->detail), "{\"ws\":{\"messages_up\":1}}");
    assert_int_equal(aud_complete_row(w, rb, b), AL_OK); /* takes rb and b */
    /* a: completed after its row committed */
    ra->bytes_down = 9;
    ra->duration_us = 5555;
    snprintf(ra->error, sizeof(ra->error), "going away");
    assert_int_equal(aud_complete_row(w, ra, a), AL_OK);
    aud_row_put(open); /* the socket's owner gone without a completion */
    aud_record_free(ro);

    aud_writer_stop(w); /* drains */

    aud_t_read(e->db, NULL, &rs);
    {
        int na = 0, nb = 0, no = 0;

        for (i = 0; i < rs.n && i < 64; i++) {
            const struct aud_record *g = &rs.rows[i];

            if (strcmp(g->path, "/a") == 0) {
                na++;
                assert_int_equal(g->pending, 0);
                assert_int_equal(g->bytes_down, 9);
                assert_int_equal(g->duration_us, 5555);
                assert_string_equal(g->error, "going away");
            } else if (strcmp(g->path, "/b") == 0) {
                nb++;
                assert_int_equal(g->pending, 0);
                assert_int_equal(g->bytes_up, 7);
                assert_string_equal(g->detail, "{\"ws\":{\"messages_up\":1}}");
            } else if (strcmp(g->path, "/open") == 0) {
                no++;
                assert_int_equal(g->pending, 1);
            }
        }
        assert_int_equal(na, 1); /* completed in place: one row, not two */
        assert_int_equal(nb, 1);
        assert_int_equal(no, 1);
        assert_int_equal(rs.n, 3);
    }

    /* backlog (flush_ms 60 s: nothing leaves): refused, nothing queued */
    w = aud_t_start(e->db, 0, 4, 60000, 0);
    for (i = 0; i < 4; i++)
        assert_int_equal(aud_submit(w, aud_t_rec("dev", "q.example", "/", "allow")), AL_OK);
    r = aud_t_rec("ci", "ws.example", "/refused", "allow");
    assert_int_equal(aud_begin_nowait(w, r, &x), AL_DECLINED); /* takes r */
    assert_null(x);
    aud_writer_stats(w, &st);
    assert_int_equal(st.depth, 4);
    assert_int_equal(st.refused, 1);
    aud_writer_stop(w);

    /* a completion whose row is not there as its pending row (another file):
     * a whole row, and the row with that id is left alone */
    w = aud_t_start(e->db, 1, 0, 20, 0);
    r = aud_t_rec("ci", "ws.example", "/stray", "allow");
    r->row_id = 1; /* /a's id: completed already, and another ts */
    assert_int_equal(aud_complete(w, r), AL_OK);
    aud_writer_stop(w);
    aud_t_read(e->db, NULL, &rs);
    assert_string_equal(rs.rows[0].path, "/a");
    assert_string_equal(rs.rows[0].error, "going away");
    assert_string_equal(rs.rows[rs.n - 1].path, "/stray");
    assert_int_equal(rs.rows[rs.n - 1].pending, 0);
}

static void
test_aud_queue_full(void **state)
{
    struct aud_t_env  *e = *state;
    struct aud_writer *w = aud_t_start(e->db, 0, 4, 60000, 0);
    struct aud_stats   st;
    struct aud_t_rows  rs;
    struct aud_t_done  d = {PTHREAD_MUTEX_INITIALIZER, 0, 0, 0};
    struct aud_record *r;
    int                i;

    /* max_batch is 4096 and flush_ms 60 s: nothing leaves the queue meanwhile */
    for (i = 0; i < 4; i++)
        assert_int_equal(aud_submit(w, aud_t_rec("dev", "a.com", "/", "allow")), AL_OK);
    assert_int_equal(aud_writer_admit(w), AL_DECLINED);
    r = aud_t_rec("dev", "a.com", "/", "allow");
    assert_int_equal(aud_begin(w, r, aud_t_done_cb, &d), AL_DECLINED);
    aud_record_free(r);
    /* reserve: still queued, but the caller is told about the backlog */
    for (i = 0; i < 4; i++)
        assert_int_equal(aud_submit(w, aud_t_rec("dev", "b.com", "/", "deny")), AL_DECLINED);
    /* beyond 2 x queue_max: dropped (loudly) */
    assert_int_equal(aud_submit(w, aud_t_rec("dev", "c.com", "/", "deny")), AL_DECLINED);
    aud_writer_stats(w, &st);
    assert_int_equal(st.depth, 8);
    assert_int_equal(st.queued, 8);
    assert_int_equal(st.dropped, 1);
    assert_int_equal(st.refused, 1 + 1 + 4 + 1);
    aud_writer_stop(w); /* drains */
    assert_int_equal(d.calls, 0);
    aud_t_read(e->db, NULL, &rs);
    assert_int_equal(rs.n, 8);
}

static void
test_aud_migrate_v1(void **state)
{
    struct aud_t_env  *e = *state;
    struct al_errs     errs;
    struct aud_writer *w;
    struct aud_t_rows  rs;
    sqlite3           *db = NULL;

    al_errs_init(&errs);
    assert_int_equal(aud_db_create_v1(e->db, &errs), AL_OK);
    al_errs_free(&errs);
    assert_int_equal(sqlite3_open(e->db, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "INSERT INTO requests (ts, sandbox, host, decision, status) "
                                  "VALUES (1000000, 'old', 'old.example', 'deny', 403)",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(aud_db_schema_version(db), 1);
    sqlite3_close(db);

    /* the read side copes with a v1 file as it is */
    aud_t_read(e->db, NULL, &rs);
    assert_int_equal(rs.n, 1);
    assert_string_equal(rs.rows[0].sandbox, "old");
    assert_string_equal(rs.rows[0].mode, "");

    w = aud_t_start(e->db, 0, 0, 5, 0);
    assert_int_equal(aud_submit(w, aud_t_rec("new", "new.example", "/", "allow")), AL_OK);
    aud_writer_stop(w);

    assert_int_equal(sqlite3_open(e->db, &db), SQLITE_OK);
    assert_int_equal(aud_db_schema_version(db), AUD_SCHEMA_VERSION);
    {
        /* v3: the tag and decision indexes are partial, host and ts full */
        static const char *const partial[] = {"requests_tool_call_ts", "requests_sandbox_ts",
                                              "requests_decision_ts"};
        sqlite3_stmt            *st = NULL;

        assert_int_equal(sqlite3_prepare_v2(db,
                                            "SELECT name, sql FROM sqlite_master WHERE type = "
                                            "'index' AND name LIKE 'requests_%' ORDER BY name",
                                            -1, &st, NULL),
                         SQLITE_OK);
        for (int k = 0; k < 5; k++) {
            const char *name, *sql;
            int         is_partial = 0;

            assert_int_equal(sqlite3_step(st), SQLITE_ROW);
            name = (const char *)sqlite3_column_text(st, 0);
            sql = (const char *)sqlite3_column_text(st, 1);
            for (size_t i = 0; i < sizeof(partial) / sizeof(partial[0]); i++)
                is_partial |= strcmp(name, partial[i]) == 0;
            assert_true((strstr(sql, " WHERE ") != NULL) == is_partial);
        }
        assert_int_equal(sqlite3_step(st), SQLITE_DONE);
        sqlite3_finalize(st);
    }
    sqlite3_close(db);
    aud_t_read(e->db, NULL, &rs);
    assert_int_equal(rs.n, 2);
    assert_string_equal(rs.rows[0].host, "old.example");
    assert_int_equal(rs.rows[0].status, 403);
    assert_string_equal(rs.rows[1].mode, "forward");
    assert_int_equal(rs.rows[1].conn_id, 77);

    /* a file from the future is refused with a message */
    assert_int_equal(sqlite3_open(e->db, &db), SQLITE_OK);
    assert_int_equal(
        sqlite3_exec(db, "INSERT INTO schema_version VALUES (99, 0)", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    {
        struct aud_conf conf;

        memset(&conf, 0, sizeof(conf));
        conf.db_path = e->db;
        al_errs_init(&errs);
        assert_null(aud_writer_start(&conf, &errs));
        assert_non_null(strstr(errs.text.data, "newer airlock"));
        al_errs_free(&errs);
    }
}

static int
aud_t_wait_healthy(struct aud_writer *w, int want, int ms)
{
    for (int i = 0; i < ms / 10; i++) {
        if (aud_writer_healthy(w) == want)
            return 1;
        aud_t_sleep_ms(10);
    }
    return aud_writer_healthy(w) == want;
}

static void
aud_t_rm_db(const char *db)
{
    char p[160];

    unlink(db);
    snprintf(p, sizeof(p), "%s-wal", db);
    unlink(p);
    snprintf(p, sizeof(p), "%s-shm", db);
    unlink(p);
}

static void
test_aud_recovery(void **state)
{
    struct aud_t_env  *e = *state;
    struct aud_writer *w = aud_t_start(e->db, 0, 0, 5, 0);
    struct aud_stats   st;
    struct aud_t_rows  rs;
    int                rc;

    assert_int_equal(aud_submit(w, aud_t_rec("a", "one.test", "/", "allow")), AL_OK);
    aud_t_sleep_ms(100);

    /* 1. file removed: the writer notices and recreates it (rows go to the new file) */
    aud_t_rm_db(e->db);
    assert_int_equal(aud_submit(w, aud_t_rec("a", "two.test", "/", "allow")), AL_OK);
    aud_t_sleep_ms(200);
    assert_true(aud_t_wait_healthy(w, 1, 2000));
    aud_t_read(e->db, NULL, &rs);
    assert_int_equal(rs.n, 1);
    assert_string_equal(rs.rows[0].host, "two.test");

    /* 2. file replaced by something sqlite cannot open (root ignores chmod, so a
     * directory takes the file's place): unhealthy, requests fail closed */
    aud_t_rm_db(e->db);
    assert_int_equal(mkdir(e->db, 0700), 0);
    rc = aud_submit(w, aud_t_rec("a", "three.test", "/", "allow"));
    assert_true(rc == AL_OK || rc == AL_ERROR);
    assert_true(aud_t_wait_healthy(w, 0, 3000));
    assert_int_equal(aud_writer_admit(w), AL_ERROR);
    assert_int_equal(aud_submit(w, aud_t_rec("a", "four.test", "/", "allow")), AL_ERROR);
    {
        struct aud_record *r = aud_t_rec("a", "five.test", "/", "allow");
        struct aud_t_done  d = {PTHREAD_MUTEX_INITIALIZER, 0, 0, 0};

        assert_int_equal(aud_begin(w, r, aud_t_done_cb, &d), AL_ERROR);
        aud_record_free(r);
    }
    aud_writer_stats(w, &st);
    assert_true(st.errors > 0);

    /* 3. fixed: the writer recovers by itself and nothing queued is lost */
    assert_int_equal(rmdir(e->db), 0);
    assert_true(aud_t_wait_healthy(w, 1, 5000));
    assert_int_equal(aud_writer_admit(w), AL_OK);
    aud_writer_stop(w);
    aud_t_read(e->db, NULL, &rs);
    assert_int_equal(rs.n, 2);
    assert_string_equal(rs.rows[0].host, "three.test");
    assert_string_equal(rs.rows[1].host, "four.test");
}

static void
test_aud_retention(void **state)
{
    struct aud_t_env  *e = *state;
    struct aud_writer *w = aud_t_start(e->db, 0, 0, 5, 0);
    struct aud_stats   st;
    struct aud_t_rows  rs;
    int                i;

    for (i = 0; i < 2500; i++) {
        struct aud_record *r = aud_t_rec("old", "old.test", "/", "allow");

        r->ts_us -= (int64_t)3 * 86400 * 1000000;
        assert_int_equal(aud_submit(w, r), AL_OK);
    }
    assert_int_equal(aud_submit(w, aud_t_rec("new", "new.test", "/", "allow")), AL_OK);
    aud_writer_stop(w);
    {
        /* rows the fleet sink shipped pending and has still to ship completed stay */
        sqlite3 *db = NULL;

        assert_int_equal(sqlite3_open(e->db, &db), SQLITE_OK);
        assert_int_equal(sqlite3_exec(db,
                                      "INSERT INTO sink_pending (instance, id) VALUES ('i', 5), "
                                      "('i', 7)",
                                      NULL, NULL, NULL),
                         SQLITE_OK);
        sqlite3_close(db);
    }

    w = aud_t_start(e->db, 0, 0, 5, 2);
    for (i = 0; i < 500; i++) {
        aud_writer_stats(w, &st);
        if (st.deleted >= 2498)
            break;
        aud_t_sleep_ms(10);
    }
    aud_writer_stop(w);
    assert_int_equal(st.deleted, 2498);
    aud_t_read(e->db, NULL, &rs);
    assert_int_equal(rs.n, 3);
    assert_int_equal(rs.rows[0].row_id, 5);
    assert_int_equal(rs.rows[1].row_id, 7);
    assert_string_equal(rs.rows[2].sandbox, "new");
}

/* A secret value the caller never copies into a record never reaches the file. */
static void
test_aud_no_secret_values(void **state)
{
    struct aud_t_env  *e = *state;
    const char        *value = "ghp_AIRLOCKSECRETVALUE0123456789";
    struct aud_writer *w = aud_t_start(e->db, 0, 0, 5, 0);
    const char        *sfx[] = {"", "-wal"};
    int                found_name = 0;

    for (int i = 0; i < 50; i++)
        assert_int_equal(aud_submit(w, aud_t_rec("dev", "api.github.com", "/repos?x=1", "allow")),
                         AL_OK);
    aud_t_sleep_ms(100);
    for (size_t k = 0; k < 2; k++) {
        char  p[160], *buf;
        FILE *f;
        long  n;

        snprintf(p, sizeof(p), "%s%s", e->db, sfx[k]);
        f = fopen(p, "rb");
        if (f == NULL)
            continue;
        fseek(f, 0, SEEK_END);
        n = ftell(f);
        fseek(f, 0, SEEK_SET);
        buf = malloc((size_t)n + 1);
        assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
        fclose(f);
        assert_null(memmem(buf, (size_t)n, value, strlen(value)));
        assert_null(memmem(buf, (size_t)n, "x=1", 3)); /* query dropped */
        if (memmem(buf, (size_t)n, "github_token", 12) != NULL)
            found_name = 1;
        free(buf);
    }
    assert_true(found_name);
    aud_writer_stop(w);
}

static off_t
aud_t_wal_size(const char *db)
{
    char        p[256];
    struct stat st;

    snprintf(p, sizeof(p), "%s-wal", db);
    return stat(p, &st) == 0 ? st.st_size : 0;
}

/* Waits up to ms for `written` to reach n; returns the ms it took, or -1. */
static int
aud_t_wait_written(struct aud_writer *w, uint64_t n, int ms)
{
    struct aud_stats st;

    for (int i = 0; i <= ms; i += 5) {
        aud_writer_stats(w, &st);
        if (st.written >= n)
            return i;
        aud_t_sleep_ms(5);
    }
    return -1;
}

/* An idle writer empties the WAL (wal_checkpoint(TRUNCATE)); a reader in
 * the WAL keeps it from doing so without slowing commits down (no busy
 * wait), and once the reader is gone the WAL is emptied again. */
static void
test_aud_wal_idle_truncate(void **state)
{
    struct aud_t_env  *e = *state;
    struct aud_writer *w = aud_t_start(e->db, 0, 0, 10, 0);
    struct aud_stats   st;
    sqlite3           *rd = NULL;
    sqlite3_stmt      *q = NULL;
    int                i, n = 0;

    for (i = 0; i < 200; i++)
        assert_int_equal(aud_submit(w, aud_t_rec("dev", "wal.test", "/w", "allow")), AL_OK);
    n += 200;
    assert_true(aud_t_wait_written(w, (uint64_t)n, 3000) >= 0);
    assert_true(aud_t_wal_size(e->db) > 0);
    for (i = 0; i < 300 && aud_t_wal_size(e->db) > 0; i++)
        aud_t_sleep_ms(10);
    assert_int_equal(aud_t_wal_size(e->db), 0);
    for (i = 0; i < 100; i++) { /* the stats follow (sampled every ~100 ms) */
        aud_writer_stats(w, &st);
        if (st.wal_bytes == 0)
            break;
        aud_t_sleep_ms(10);
    }
    assert_int_equal(st.wal_bytes, 0);

    /* a reader holding a snapshot in the WAL */
    assert_int_equal(aud_submit(w, aud_t_rec("dev", "wal.test", "/w", "allow")), AL_OK);
    n++;
    assert_true(aud_t_wait_written(w, (uint64_t)n, 3000) >= 0);
    assert_int_equal(sqlite3_open_v2(e->db, &rd, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(rd, "SELECT id FROM requests", -1, &q, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW); /* read transaction open */
    for (int round = 0; round < 4; round++) {
        int took;

        assert_int_equal(aud_submit(w, aud_t_rec("dev", "wal.test", "/w", "allow")), AL_OK);
        n++;
        took = aud_t_wait_written(w, (uint64_t)n, 3000);
        assert_true(took >= 0 && took < 1000); /* no 2 s busy wait behind the reader */
        aud_t_sleep_ms(400);                   /* idle: checkpoint attempts */
    }
    assert_true(aud_t_wal_size(e->db) > 0);
    sqlite3_finalize(q);
    sqlite3_close(rd);
    for (i = 0; i < 300 && aud_t_wal_size(e->db) > 0; i++)
        aud_t_sleep_ms(10);
    assert_int_equal(aud_t_wal_size(e->db), 0);
    aud_writer_stop(w);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_aud_round_trip, aud_t_setup, aud_t_teardown),
        cmocka_unit_test_setup_teardown(test_aud_strict, aud_t_setup, aud_t_teardown),
        cmocka_unit_test_setup_teardown(test_aud_strict_group_commit, aud_t_setup, aud_t_teardown),
        cmocka_unit_test_setup_teardown(test_aud_strict_held, aud_t_setup, aud_t_teardown),
        cmocka_unit_test_setup_teardown(test_aud_strict_completion_due, aud_t_setup,
                                        aud_t_teardown),
        cmocka_unit_test_setup_teardown(test_aud_begin_nowait, aud_t_setup, aud_t_teardown),
        cmocka_unit_test_setup_teardown(test_aud_queue_full, aud_t_setup, aud_t_teardown),
        cmocka_unit_test_setup_teardown(test_aud_migrate_v1, aud_t_setup, aud_t_teardown),
        cmocka_unit_test_setup_teardown(test_aud_recovery, aud_t_setup, aud_t_teardown),
        cmocka_unit_test_setup_teardown(test_aud_retention, aud_t_setup, aud_t_teardown),
        cmocka_unit_test_setup_teardown(test_aud_no_secret_values, aud_t_setup, aud_t_teardown),
        cmocka_unit_test_setup_teardown(test_aud_wal_idle_truncate, aud_t_setup, aud_t_teardown),
    };

    al_log_set_level(AL_LOG_OFF);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
