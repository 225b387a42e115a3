/*
 * aud_bench.c - audit writer throughput: P producer threads submit N
 * realistic records in batched mode (queue backpressure: a producer that
 * sees AL_DECLINED backs off briefly); the figure is N / (time from the
 * first submit until aud_writer_stop() returned, i.e. everything committed).
 *
 * usage: aud_bench DB [ROWS] [PRODUCERS] [strict]
 * Build (from the repo root, after building al_audit and al_common):
 *   cc -O2 -I. -Icommon -Iaudit bench/aud_bench.c BUILD/audit/libal_audit.a \
 *      BUILD/common/libal_common.a -lsqlite3 -lcjson -lpthread -o aud_bench
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "audit.h"

struct aud_bench {
    struct aud_writer *w;
    long               rows;
    int                id;
    long               declined;
};

static void
aud_bench_pause(void)
{
    struct timespec ts = {0, 200000};

    nanosleep(&ts, NULL);
}

static void *
aud_bench_producer(void *arg)
{
    struct aud_bench  *b = arg;
    static const char *hosts[] = {"api.github.com", "pypi.org",           "files.pythonhosted.org",
                                  "api.openai.com", "registry.npmjs.org", "evil.example"};

    for (long i = 0; i < b->rows; i++) {
        struct aud_record *r;
        struct aud_stats   st;

        for (;;) {
            aud_writer_stats(b->w, &st);
            if (st.depth < AUD_DEFAULT_QUEUE_MAX - 64)
                break;
            b->declined++;
            aud_bench_pause();
        }
        r = aud_record_new();
        if (r == NULL)
            abort();
        r->ts_us = al_now_us();
        r->duration_us = 1000 + i % 5000;
        r->conn_id = (uint64_t)(b->id * 1000000000L + i);
        snprintf(r->sandbox, sizeof(r->sandbox), "sb-%d", (int)(i % 16));
        snprintf(r->session, sizeof(r->session), "sess-%ld", i / 100);
        snprintf(r->tool_call, sizeof(r->tool_call), "toolu_%08ld", i / 10);
        snprintf(r->client, sizeof(r->client), "10.0.%d.%d:%d", b->id, (int)(i % 250),
                 (int)(20000 + i % 40000));
        snprintf(r->mode, sizeof(r->mode), "forward");
        snprintf(r->method, sizeof(r->method), i % 7 ? "GET" : "POST");
        snprintf(r->scheme, sizeof(r->scheme), "https");
        snprintf(r->host, sizeof(r->host), "%s", hosts[i % 6]);
        r->port = 443;
        snprintf(r->path, sizeof(r->path), "/repos/org/project-%ld/pulls?page=%ld", i % 1000,
                 i % 10);
        snprintf(r->upstream, sizeof(r->upstream), "140.82.112.%d:443", (int)(i % 200));
        snprintf(r->decision, sizeof(r->decision), i % 6 == 5 ? "deny" : "allow");
        snprintf(r->rule, sizeof(r->rule), "rule-%d", (int)(i % 6));
        snprintf(r->reason, sizeof(r->reason), "matched");
        if (i % 6 == 0)
            snprintf(r->secrets, sizeof(r->secrets), "github_token");
        r->status = i % 6 == 5 ? 403 : 200;
        r->bytes_up = 300 + i % 1000;
        r->bytes_down = 2000 + i % 50000;
        if (aud_submit(b->w, r) == AL_DECLINED)
            b->declined++;
    }
    return NULL;
}

int
main(int argc, char **argv)
{
    struct aud_conf  conf;
    struct al_errs   errs;
    struct aud_stats st;
    struct aud_bench b[16];
    pthread_t        th[16];
    long             rows = argc > 2 ? atol(argv[2]) : 1000000;
    int              np = argc > 3 ? atoi(argv[3]) : 4;
    int64_t          t0, t1;

    if (argc < 2 || np < 1 || np > 16 || rows < 1) {
        fprintf(stderr, "usage: aud_bench DB [ROWS] [PRODUCERS 1-16] [strict]\n");
        return 2;
    }
    memset(&conf, 0, sizeof(conf));
    conf.db_path = argv[1];
    conf.strict = argc > 4 && strcmp(argv[4], "strict") == 0;
    al_errs_init(&errs);
    t0 = al_mono_us();
    memset(b, 0, sizeof(b));
    b[0].w = aud_writer_start(&conf, &errs);
    if (b[0].w == NULL) {
        fprintf(stderr, "%s", errs.text.data);
        return 1;
    }
    t0 = al_mono_us();
    for (int i = 0; i < np; i++) {
        b[i].w = b[0].w;
        b[i].rows = rows / np;
        b[i].id = i;
        pthread_create(&th[i], NULL, aud_bench_producer, &b[i]);
    }
    for (int i = 0; i < np; i++)
        pthread_join(th[i], NULL);
    aud_writer_stats(b[0].w, &st);
    aud_writer_stop(b[0].w);
    t1 = al_mono_us();
    printf("rows=%llu batches=%llu dropped=%llu errors=%llu producers=%d mode=%s\n",
           (unsigned long long)st.queued, (unsigned long long)st.batches,
           (unsigned long long)st.dropped, (unsigned long long)st.errors, np,
           conf.strict ? "strict" : "batched");
    printf("elapsed=%.3fs  throughput=%.0f rows/s\n", (double)(t1 - t0) / 1e6,
           (double)st.queued / ((double)(t1 - t0) / 1e6));
    al_errs_free(&errs);
    return 0;
}
