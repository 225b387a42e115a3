/*
 * px_metrics.c - process-wide counters, rendered as Prometheus text by the
 * admin listener. Workers bump them with relaxed atomics; nothing locks.
 */
#include "px.h"
#include "px_ca.h"

struct px_metrics  px_metrics;
struct aud_writer *px_audit;
struct px_ca      *px_ca_g;
SSL_CTX           *px_tls_srv, *px_tls_up;

static const char *const px_uerr_names[PX_UERR_N] = {"dns", "refused", "timeout", "reset", "other"};

void
px_conn_count_status(int status)
{
    int cls = status / 100;

    if (cls < 0 || cls > 5)
        cls = 0;
    atomic_fetch_add_explicit(&px_metrics.requests[cls], 1, memory_order_relaxed);
}

const char *
px_uerr_name(enum px_uerr k)
{
    return k < PX_UERR_N ? px_uerr_names[k] : "other";
}

#define PX_LOAD(f) ((unsigned long long)atomic_load_explicit(&(f), memory_order_relaxed))

/* The fleet sink (audit.sink): unlabelled, never the connection string. */
static void
px_metrics_sink(struct al_dbuf *o)
{
    struct aud_sink_stats ss;

    aud_writer_sink_stats(px_audit, &ss);
    if (!ss.configured)
        return;
    al_dbuf_addf(o,
                 "# HELP airlock_audit_sink_rows_total Audit rows shipped to PostgreSQL.\n"
                 "# TYPE airlock_audit_sink_rows_total counter\n"
                 "airlock_audit_sink_rows_total %llu\n"
                 "# HELP airlock_audit_sink_lag_rows Local audit rows not shipped yet.\n"
                 "# TYPE airlock_audit_sink_lag_rows gauge\n"
                 "airlock_audit_sink_lag_rows %llu\n"
                 "# HELP airlock_audit_sink_errors_total Failed PostgreSQL connects, batches "
                 "and migrations of the audit sink.\n"
                 "# TYPE airlock_audit_sink_errors_total counter\n"
                 "airlock_audit_sink_errors_total %llu\n"
                 "# HELP airlock_audit_sink_up 1 while the audit sink is connected and "
                 "shipping.\n"
                 "# TYPE airlock_audit_sink_up gauge\n"
                 "airlock_audit_sink_up %d\n",
                 (unsigned long long)ss.rows, (unsigned long long)ss.lag,
                 (unsigned long long)ss.errors, ss.up);
}

void
px_metrics_render(struct al_dbuf *o)
{
    static const char *const cls[] = {"none", "1xx", "2xx", "3xx", "4xx", "5xx"};

    al_dbuf_addf(o, "# TYPE airlock_connections_open gauge\nairlock_connections_open %llu\n",
                 PX_LOAD(px_metrics.conns_open));
    al_dbuf_addf(o, "# TYPE airlock_connections_total counter\nairlock_connections_total %llu\n",
                 PX_LOAD(px_metrics.conns_total));
    al_dbuf_addf(o,
                 "# TYPE airlock_connections_refused_total counter\n"
                 "airlock_connections_refused_total %llu\n",
                 PX_LOAD(px_metrics.conns_refused));
    al_dbuf_addf(o,
                 "# TYPE airlock_accept_errors_total counter\n"
                 "airlock_accept_errors_total{reason=\"fd_exhausted\"} %llu\n"
                 "airlock_accept_errors_total{reason=\"no_memory\"} %llu\n"
                 "airlock_accept_errors_total{reason=\"other\"} %llu\n",
                 PX_LOAD(px_metrics.accept_errors[PX_AERR_FD]),
                 PX_LOAD(px_metrics.accept_errors[PX_AERR_MEM]),
                 PX_LOAD(px_metrics.accept_errors[PX_AERR_OTHER]));
    al_dbuf_adds(o, "# TYPE airlock_requests_total counter\n");
    for (int i = 0; i < 6; i++)
        al_dbuf_addf(o, "airlock_requests_total{class=\"%s\"} %llu\n", cls[i],
                     PX_LOAD(px_metrics.requests[i]));
    al_dbuf_addf(o,
                 "# TYPE airlock_bytes_total counter\nairlock_bytes_total{dir=\"up\"} %llu\n"
                 "airlock_bytes_total{dir=\"down\"} %llu\n",
                 PX_LOAD(px_metrics.bytes_up), PX_LOAD(px_metrics.bytes_down));
    al_dbuf_adds(o, "# TYPE airlock_upstream_errors_total counter\n");
    for (int i = 0; i < PX_UERR_N; i++)
        al_dbuf_addf(o, "airlock_upstream_errors_total{kind=\"%s\"} %llu\n", px_uerr_names[i],
                     PX_LOAD(px_metrics.upstream_errors[i]));
    al_dbuf_addf(o,
                 "# TYPE airlock_pool_hits_total counter\nairlock_pool_hits_total %llu\n"
                 "# TYPE airlock_pool_misses_total counter\nairlock_pool_misses_total %llu\n",
                 PX_LOAD(px_metrics.pool_hits), PX_LOAD(px_metrics.pool_misses));
    al_dbuf_addf(o,
                 "# TYPE airlock_tunnels_open gauge\nairlock_tunnels_open %llu\n"
                 "# TYPE airlock_tunnels_total counter\nairlock_tunnels_total %llu\n",
                 PX_LOAD(px_metrics.tunnels_open), PX_LOAD(px_metrics.tunnels_total));
    al_dbuf_addf(o,
                 "# TYPE airlock_reloads_total counter\n"
                 "airlock_reloads_total{result=\"ok\"} %llu\n"
                 "airlock_reloads_total{result=\"failed\"} %llu\n",
                 PX_LOAD(px_metrics.reloads_ok), PX_LOAD(px_metrics.reloads_failed));
    al_dbuf_addf(o,
                 "# TYPE airlock_decisions_total counter\n"
                 "airlock_decisions_total{decision=\"allow\"} %llu\n"
                 "airlock_decisions_total{decision=\"deny\"} %llu\n"
                 "airlock_decisions_total{decision=\"would_deny\"} %llu\n",
                 PX_LOAD(px_metrics.decisions[0]), PX_LOAD(px_metrics.decisions[1]),
                 PX_LOAD(px_metrics.decisions[2]));
    al_dbuf_addf(o,
                 "# TYPE airlock_tls_handshakes_total counter\n"
                 "airlock_tls_handshakes_total{side=\"client\"} %llu\n"
                 "airlock_tls_handshakes_total{side=\"upstream\"} %llu\n"
                 "# TYPE airlock_tls_failures_total counter\nairlock_tls_failures_total %llu\n",
                 PX_LOAD(px_metrics.tls_client_handshakes),
                 PX_LOAD(px_metrics.tls_upstream_handshakes), PX_LOAD(px_metrics.tls_failures));
    al_dbuf_addf(o,
                 "# TYPE airlock_secrets_injected_total counter\n"
                 "airlock_secrets_injected_total %llu\n"
                 "# TYPE airlock_secrets_refused_total counter\n"
                 "airlock_secrets_refused_total %llu\n"
                 "# TYPE airlock_responses_decoded_total counter\n"
                 "airlock_responses_decoded_total %llu\n",
                 PX_LOAD(px_metrics.secrets_injected), PX_LOAD(px_metrics.secrets_refused),
                 PX_LOAD(px_metrics.responses_decoded));
    if (px_ca_g != NULL) {
        uint64_t mints = 0, hits = 0;

        px_ca_stats(px_ca_g, &mints, &hits);
        al_dbuf_addf(o,
                     "# TYPE airlock_certs_minted_total counter\nairlock_certs_minted_total %llu\n"
                     "# TYPE airlock_cert_cache_hits_total counter\n"
                     "airlock_cert_cache_hits_total %llu\n",
                     (unsigned long long)mints, (unsigned long long)hits);
    }
    if (px_tls_up != NULL) {
        uint64_t vhits = 0, vfull = 0;

        px_tls_upstream_stats(px_tls_up, &vhits, &vfull);
        al_dbuf_addf(o,
                     "# TYPE airlock_upstream_verify_total counter\n"
                     "airlock_upstream_verify_total{result=\"full\"} %llu\n"
                     "airlock_upstream_verify_total{result=\"cached\"} %llu\n",
                     (unsigned long long)vfull, (unsigned long long)vhits);
    }
    if (px_audit != NULL) {
        struct aud_stats st;

        aud_writer_stats(px_audit, &st);
        al_dbuf_addf(o,
                     "# TYPE airlock_audit_queue_depth gauge\nairlock_audit_queue_depth %llu\n"
                     "# TYPE airlock_audit_rows_written_total counter\n"
                     "airlock_audit_rows_written_total %llu\n"
                     "# TYPE airlock_audit_refusals_total counter\n"
                     "airlock_audit_refusals_total %llu\n"
                     "# TYPE airlock_audit_rows_dropped_total counter\n"
                     "airlock_audit_rows_dropped_total %llu\n"
                     "# TYPE airlock_audit_errors_total counter\nairlock_audit_errors_total %llu\n"
                     "# TYPE airlock_audit_healthy gauge\nairlock_audit_healthy %d\n"
                     "# TYPE airlock_audit_commits_total counter\n"
                     "airlock_audit_commits_total %llu\n"
                     "# TYPE airlock_audit_rows_deleted_total counter\n"
                     "airlock_audit_rows_deleted_total %llu\n"
                     "# TYPE airlock_audit_wal_bytes gauge\nairlock_audit_wal_bytes %llu\n",
                     (unsigned long long)st.depth, (unsigned long long)st.written,
                     PX_LOAD(px_metrics.audit_refusals), (unsigned long long)st.dropped,
                     (unsigned long long)st.errors, aud_writer_healthy(px_audit),
                     (unsigned long long)st.batches, (unsigned long long)st.deleted,
                     (unsigned long long)st.wal_bytes);
        px_metrics_sink(o);
    }
}
