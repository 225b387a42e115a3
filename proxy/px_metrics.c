/*
 * px_metrics.c - process-wide counters and latency histograms, rendered as
 * Prometheus text (version 0.0.4, every family with # HELP and # TYPE) by
 * the admin listener. Workers bump them with relaxed atomics into fixed
 * slots; nothing on the request path locks, allocates or prints.
 *
 * Label values come from airlock's own vocabulary (decisions, reason codes
 * from a fixed list, status classes) or from the policy (rule names, at most
 * PX_METRICS_MAX_RULES of them), never from request data: a host, path or
 * header cannot mint a series.
 */
#include "px.h"
#include "px_ca.h"
#include "px_exch.h"

#include <dirent.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <unistd.h>

struct px_metrics  px_metrics;
struct aud_writer *px_audit;
struct px_ca      *px_ca_g;
SSL_CTX           *px_tls_srv, *px_tls_up;

static const char *const px_uerr_names[PX_UERR_N] = {"dns", "refused", "timeout", "reset", "other"};
static const char *const px_cls_names[] = {"none", "1xx", "2xx", "3xx", "4xx", "5xx"};
static const char *const px_dec_names[] = {"allow", "deny", "would_deny", "error"};
#define PX_NDEC 4
#define PX_NCLS 6

/* Upper bounds of the histogram buckets, microseconds (le="..." seconds). */
static const int64_t px_hist_bounds_us[PX_HIST_NB] = {
    500,    1000,   2500,    5000,    10000,   25000,    50000,    100000,
    250000, 500000, 1000000, 2500000, 5000000, 10000000, 30000000, 60000000,
};

void
px_hist_observe(struct px_hist *h, int64_t us)
{
    int i = 0;

    if (us < 0)
        us = 0;
    while (i < PX_HIST_NB && us > px_hist_bounds_us[i])
        i++;
    atomic_fetch_add_explicit(&h->b[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_us, (uint64_t)us, memory_order_relaxed);
}

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

/* ---- requests by decision, reason and class -------------------------------- */

/* Every reason code airlock writes (policy reasons, refusals, errors); ""
 * is a row without one. Anything else is counted as "other". */
static const char *const px_reasons[] = {
    "",
    "other",
    "allowed_by_rule",
    "default_allow",
    "denied_by_rule",
    "host_not_allowed",
    "port_not_allowed",
    "method_not_allowed",
    "path_not_allowed",
    "sandbox_not_allowed",
    "address_not_allowed",
    "unknown_sandbox",
    "auth_required",
    "bad_credentials",
    "bad_request",
    "bad_target",
    "bad_host",
    "bad_port",
    "bad_authority",
    "bad_scheme",
    "bad_idn",
    "bad_path",
    "encoded_slash",
    "bad_tag",
    "bad_connection_header",
    "bad_client_hello",
    "bad_sni",
    "sni_mismatch",
    "h2_not_supported",
    "client_tls_failed",
    "misdirected",
    "header_timeout",
    "header_too_large",
    "body_timeout",
    "http_version",
    "https_without_connect",
    "unsupported_transfer_coding",
    "secret_out_of_scope",
    "secret_plaintext",
    "secret_location_not_allowed",
    "secret_in_compressed_body",
    "interception_unavailable",
    "opaque_tunnel_to_secret_host",
    "upgrade_with_secret",
    "trace_to_secret_host",
    "not_redirected",
    "dns_not_found",
    "dns_timeout",
    "dns_failed",
    "connect_timeout",
    "upstream_refused",
    "upstream_unreachable",
    "upstream_reset",
    "upstream_timeout",
    "upstream_bad_response",
    "upstream_transfer_coding",
    "upstream_tls_failed",
    "upstream_tls_timeout",
    "tls_handshake_timeout",
    "upstream_cert_untrusted",
    "upstream_cert_expired",
    "upstream_cert_name_mismatch",
    "upstream_cert_invalid",
    "compressed_response",
    "too_many_connections",
    "shutting_down",
    "fd_exhausted",
    "audit_unavailable",
    "audit_backlog",
    "internal",
};
#define PX_NREASONS ((int)(sizeof(px_reasons) / sizeof(px_reasons[0])))
#define PX_REASON_SLOTS 256 /* open addressing, > 2 x PX_NREASONS */

static _Atomic uint64_t px_req_counts[PX_NREASONS][PX_NDEC][PX_NCLS];
static unsigned char    px_reason_slot[PX_REASON_SLOTS]; /* index + 1; 0 = empty */
static pthread_once_t   px_reason_once = PTHREAD_ONCE_INIT;

static uint32_t
px_fnv1a(const char *s)
{
    uint32_t h = 2166136261u;

    for (; *s != '\0'; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static void
px_reason_init(void)
{
    for (int i = 0; i < PX_NREASONS; i++) {
        uint32_t k = px_fnv1a(px_reasons[i]) % PX_REASON_SLOTS;

        while (px_reason_slot[k] != 0)
            k = (k + 1) % PX_REASON_SLOTS;
        px_reason_slot[k] = (unsigned char)(i + 1);
    }
}

static int
px_reason_index(const char *r)
{
    uint32_t k;

    if (r == NULL)
        return 0;
    pthread_once(&px_reason_once, px_reason_init);
    for (k = px_fnv1a(r) % PX_REASON_SLOTS; px_reason_slot[k] != 0; k = (k + 1) % PX_REASON_SLOTS) {
        if (strcmp(px_reasons[px_reason_slot[k] - 1], r) == 0)
            return px_reason_slot[k] - 1;
    }
    return 1; /* "other" */
}

/* ---- requests by policy rule ----------------------------------------------- */

#define PX_RULE_NAME_BYTES 64
#define PX_RULE_SLOTS (2 * PX_METRICS_MAX_RULES)
struct px_rule_slot {
    _Atomic int      used; /* 1 once name is written (release) */
    char             name[PX_RULE_NAME_BYTES];
    _Atomic uint64_t n[PX_NDEC];
};
static struct px_rule_slot px_rules[PX_RULE_SLOTS];
static _Atomic uint64_t    px_rules_other[PX_NDEC]; /* names beyond the cap */
static int                 px_nrules;               /* under px_rules_lock */
static pthread_mutex_t     px_rules_lock = PTHREAD_MUTEX_INITIALIZER;

/* The slot of a rule name, added on first sight (names come from policy
 * snapshots and outlive them here); NULL beyond PX_METRICS_MAX_RULES. */
static struct px_rule_slot *
px_rule_slot(const char *name)
{
    char                 key[PX_RULE_NAME_BYTES];
    uint32_t             h;
    struct px_rule_slot *s = NULL;

    al_strlcpy(key, sizeof(key), name);
    h = px_fnv1a(key);
    for (uint32_t k = h % PX_RULE_SLOTS;; k = (k + 1) % PX_RULE_SLOTS) {
        if (!atomic_load_explicit(&px_rules[k].used, memory_order_acquire))
            break;
        if (strcmp(px_rules[k].name, key) == 0)
            return &px_rules[k];
    }
    pthread_mutex_lock(&px_rules_lock);
    for (uint32_t k = h % PX_RULE_SLOTS;; k = (k + 1) % PX_RULE_SLOTS) {
        if (!atomic_load_explicit(&px_rules[k].used, memory_order_acquire)) {
            if (px_nrules < PX_METRICS_MAX_RULES) {
                s = &px_rules[k];
                memcpy(s->name, key, sizeof(key));
                atomic_store_explicit(&s->used, 1, memory_order_release);
                px_nrules++;
            }
            break;
        }
        if (strcmp(px_rules[k].name, key) == 0) {
            s = &px_rules[k];
            break;
        }
    }
    pthread_mutex_unlock(&px_rules_lock);
    return s;
}

void
px_metrics_request(int decision, const char *reason, const char *rule, int status,
                   int64_t duration_us)
{
    int cls = status / 100;

    if (decision < 0 || decision >= PX_NDEC)
        decision = 3;
    if (cls < 0 || cls >= PX_NCLS)
        cls = 0;
    atomic_fetch_add_explicit(&px_req_counts[px_reason_index(reason)][decision][cls], 1,
                              memory_order_relaxed);
    if (rule != NULL && rule[0] != '\0') {
        struct px_rule_slot *s = px_rule_slot(rule);

        atomic_fetch_add_explicit(s != NULL ? &s->n[decision] : &px_rules_other[decision], 1,
                                  memory_order_relaxed);
    }
    if (duration_us >= 0)
        px_hist_observe(&px_metrics.h_request, duration_us);
}

void
px_metrics_phase(int from, int to, double since, double now)
{
    struct px_hist *h;

    if (to == PX_ST_FLUSH_CLOSE || from == to)
        return;
    switch (from) {
    case PX_ST_RESOLVE:
        h = &px_metrics.h_dns;
        break;
    case PX_ST_CONNECT:
        h = &px_metrics.h_connect;
        break;
    case PX_ST_TLS_CLIENT:
        h = &px_metrics.h_tls[0];
        break;
    case PX_ST_TLS_UP:
        h = &px_metrics.h_tls[1];
        break;
    default:
        return;
    }
    px_hist_observe(h, (int64_t)((now - since) * 1e6));
}

/* ---- rendering --------------------------------------------------------------- */

#define PX_LOAD(f) ((unsigned long long)atomic_load_explicit(&(f), memory_order_relaxed))

static void
px_fam(struct al_dbuf *o, const char *name, const char *type, const char *help)
{
    al_dbuf_addf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A family with one unlabelled sample. */
static void
px_one(struct al_dbuf *o, const char *name, const char *type, const char *help,
       unsigned long long v)
{
    px_fam(o, name, type, help);
    al_dbuf_addf(o, "%s %llu\n", name, v);
}

/* A label value in the exposition format: \\, \" and \n escaped. */
static void
px_label_value(struct al_dbuf *o, const char *s)
{
    for (; *s != '\0'; s++) {
        if (*s == '\\')
            al_dbuf_adds(o, "\\\\");
        else if (*s == '"')
            al_dbuf_adds(o, "\\\"");
        else if (*s == '\n')
            al_dbuf_adds(o, "\\n");
        else
            al_dbuf_add(o, s, 1);
    }
}

static void
px_hist_render(struct al_dbuf *o, const char *name, const char *label, const struct px_hist *h)
{
    unsigned long long cum = 0;
    const char        *sep = label[0] != '\0' ? "," : "";

    for (int i = 0; i <= PX_HIST_NB; i++) {
        cum += PX_LOAD(h->b[i]);
        if (i < PX_HIST_NB)
            al_dbuf_addf(o, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, label, sep,
                         (double)px_hist_bounds_us[i] / 1e6, cum);
        else
            al_dbuf_addf(o, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, label, sep, cum);
    }
    al_dbuf_addf(o, "%s_sum%s%s%s %.6f\n", name, label[0] ? "{" : "", label, label[0] ? "}" : "",
                 (double)PX_LOAD(h->sum_us) / 1e6);
    al_dbuf_addf(o, "%s_count%s%s%s %llu\n", name, label[0] ? "{" : "", label, label[0] ? "}" : "",
                 cum);
}

static void
px_render_requests(struct al_dbuf *o)
{
    px_fam(o, "airlock_requests_total", "counter",
           "Finished requests (one per audit row, tunnels included) by decision (allow, deny, "
           "would_deny, error), reason code and status class of the answer (none: no answer).");
    for (int r = 0; r < PX_NREASONS; r++) {
        for (int d = 0; d < PX_NDEC; d++) {
            for (int k = 0; k < PX_NCLS; k++) {
                unsigned long long v = PX_LOAD(px_req_counts[r][d][k]);

                if (v == 0)
                    continue;
                al_dbuf_addf(o,
                             "airlock_requests_total{decision=\"%s\",reason=\"%s\",class=\"%s\"} "
                             "%llu\n",
                             px_dec_names[d], px_reasons[r], px_cls_names[k], v);
            }
        }
    }
    px_fam(o, "airlock_rule_requests_total", "counter",
           "Finished requests by the policy rule that decided them (\"default\" when none "
           "matched; \"other\" beyond "
           "256"
           " distinct names) and decision.");
    for (int k = 0; k < PX_RULE_SLOTS; k++) {
        const struct px_rule_slot *s = &px_rules[k];

        if (!atomic_load_explicit(&s->used, memory_order_acquire))
            continue;
        for (int d = 0; d < PX_NDEC; d++) {
            unsigned long long v = PX_LOAD(s->n[d]);

            if (v == 0)
                continue;
            al_dbuf_adds(o, "airlock_rule_requests_total{rule=\"");
            px_label_value(o, s->name);
            al_dbuf_addf(o, "\",decision=\"%s\"} %llu\n", px_dec_names[d], v);
        }
    }
    for (int d = 0; d < PX_NDEC; d++) {
        unsigned long long v = PX_LOAD(px_rules_other[d]);

        if (v != 0)
            al_dbuf_addf(o, "airlock_rule_requests_total{rule=\"other\",decision=\"%s\"} %llu\n",
                         px_dec_names[d], v);
    }
}

/* Process metrics, as the Prometheus client libraries name them. */
static void
px_render_process(struct al_dbuf *o)
{
    struct rusage      rus;
    struct rlimit      rl;
    DIR               *dir;
    FILE              *f;
    long               page = sysconf(_SC_PAGESIZE);
    unsigned long long vsz = 0, rss = 0, nfd = 0;

    if (getrusage(RUSAGE_SELF, &rus) == 0) {
        px_fam(o, "process_cpu_seconds_total", "counter", "User and system CPU time, seconds.");
        al_dbuf_addf(o, "process_cpu_seconds_total %.6f\n",
                     (double)rus.ru_utime.tv_sec + (double)rus.ru_utime.tv_usec / 1e6 +
                         (double)rus.ru_stime.tv_sec + (double)rus.ru_stime.tv_usec / 1e6);
    }
    dir = opendir("/proc/self/fd");
    if (dir != NULL) {
        struct dirent *e;

        while ((e = readdir(dir)) != NULL) {
            if (e->d_name[0] != '.')
                nfd++;
        }
        closedir(dir);
        px_one(o, "process_open_fds", "gauge", "Open file descriptors.", nfd > 0 ? nfd - 1 : 0);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        px_one(o, "process_max_fds", "gauge", "Limit on open file descriptors (RLIMIT_NOFILE).",
               (unsigned long long)rl.rlim_cur);
    f = fopen("/proc/self/statm", "re");
    if (f != NULL) {
        if (fscanf(f, "%llu %llu", &vsz, &rss) == 2 && page > 0) {
            px_one(o, "process_virtual_memory_bytes", "gauge", "Virtual memory size, bytes.",
                   vsz * (unsigned long long)page);
            px_one(o, "process_resident_memory_bytes", "gauge", "Resident memory size, bytes.",
                   rss * (unsigned long long)page);
        }
        fclose(f);
    }
    px_fam(o, "process_start_time_seconds", "gauge", "Start time of the process, unix seconds.");
    al_dbuf_addf(o, "process_start_time_seconds %.3f\n",
                 (double)atomic_load_explicit(&px_metrics.start_us, memory_order_relaxed) / 1e6);
}

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
                 "# HELP airlock_audit_sink_completions_total Audit rows shipped pending "
                 "whose completion was then shipped as an update of the same row.\n"
                 "# TYPE airlock_audit_sink_completions_total counter\n"
                 "airlock_audit_sink_completions_total %llu\n"
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
                 (unsigned long long)ss.rows, (unsigned long long)ss.completions,
                 (unsigned long long)ss.lag, (unsigned long long)ss.errors, ss.up);
}

void
px_metrics_render(struct al_dbuf *o, int ready)
{
    px_fam(o, "airlock_build_info", "gauge",
           "Always 1; the labels say which airlock and which OpenSSL run.");
    al_dbuf_addf(o, "airlock_build_info{version=\"%s\",commit=\"%s\",openssl=\"", PX_BUILD_VERSION,
                 AIRLOCK_COMMIT);
    px_label_value(o, OpenSSL_version(OPENSSL_VERSION_STRING));
    al_dbuf_adds(o, "\"} 1\n");
    px_render_process(o);
    px_fam(o, "airlock_config_last_reload_success_timestamp_seconds", "gauge",
           "When the running configuration and policy were loaded (start or reload), unix "
           "seconds.");
    al_dbuf_addf(o, "airlock_config_last_reload_success_timestamp_seconds %.3f\n",
                 (double)atomic_load_explicit(&px_metrics.reload_ok_us, memory_order_relaxed) /
                     1e6);
    px_one(
        o, "airlock_config_last_reload_successful", "gauge",
        "1 when the last reload attempt succeeded (or none was made), else 0.",
        (unsigned long long)atomic_load_explicit(&px_metrics.reload_last_ok, memory_order_relaxed));
    px_one(o, "airlock_ready", "gauge", "1 while GET /readyz answers 200, else 0.",
           (unsigned long long)(ready != 0));
    px_one(o, "airlock_connections_open", "gauge", "Client connections open now.",
           PX_LOAD(px_metrics.conns_open));
    px_one(o, "airlock_connections_total", "counter", "Client connections accepted.",
           PX_LOAD(px_metrics.conns_total));
    px_one(o, "airlock_connections_refused_total", "counter",
           "Client connections refused at accept (connection limit, draining, out of "
           "descriptors).",
           PX_LOAD(px_metrics.conns_refused));
    px_fam(o, "airlock_accept_errors_total", "counter", "Failed accept(2) calls by reason.");
    al_dbuf_addf(o,
                 "airlock_accept_errors_total{reason=\"fd_exhausted\"} %llu\n"
                 "airlock_accept_errors_total{reason=\"no_memory\"} %llu\n"
                 "airlock_accept_errors_total{reason=\"other\"} %llu\n",
                 PX_LOAD(px_metrics.accept_errors[PX_AERR_FD]),
                 PX_LOAD(px_metrics.accept_errors[PX_AERR_MEM]),
                 PX_LOAD(px_metrics.accept_errors[PX_AERR_OTHER]));
    px_render_requests(o);
    px_fam(o, "airlock_responses_total", "counter",
           "Answers airlock wrote to clients by status class, refusals at accept included "
           "(none: a request that ended without one).");
    for (int i = 0; i < PX_NCLS; i++)
        al_dbuf_addf(o, "airlock_responses_total{class=\"%s\"} %llu\n", px_cls_names[i],
                     PX_LOAD(px_metrics.requests[i]));
    px_fam(o, "airlock_request_duration_seconds", "histogram",
           "Request duration from the first byte of the head to the end of the answer (a "
           "tunnel: to the CONNECT's answer).");
    px_hist_render(o, "airlock_request_duration_seconds", "", &px_metrics.h_request);
    px_fam(o, "airlock_dns_duration_seconds", "histogram",
           "Time requests waited for name resolution (cache hits and pinned names included).");
    px_hist_render(o, "airlock_dns_duration_seconds", "", &px_metrics.h_dns);
    px_fam(o, "airlock_upstream_connect_duration_seconds", "histogram",
           "TCP connect to the upstream, all addresses tried (pooled connections not counted).");
    px_hist_render(o, "airlock_upstream_connect_duration_seconds", "", &px_metrics.h_connect);
    px_fam(o, "airlock_tls_handshake_duration_seconds", "histogram",
           "Completed TLS handshakes: side=client (interception, from the CONNECT answer) and "
           "side=upstream.");
    px_hist_render(o, "airlock_tls_handshake_duration_seconds", "side=\"client\"",
                   &px_metrics.h_tls[0]);
    px_hist_render(o, "airlock_tls_handshake_duration_seconds", "side=\"upstream\"",
                   &px_metrics.h_tls[1]);
    px_fam(o, "airlock_bytes_total", "counter",
           "Payload bytes relayed: dir=up to upstreams, "
           "dir=down to clients.");
    al_dbuf_addf(o,
                 "airlock_bytes_total{dir=\"up\"} %llu\nairlock_bytes_total{dir=\"down\"} %llu\n",
                 PX_LOAD(px_metrics.bytes_up), PX_LOAD(px_metrics.bytes_down));
    px_fam(o, "airlock_upstream_errors_total", "counter", "Upstream failures by kind.");
    for (int i = 0; i < PX_UERR_N; i++)
        al_dbuf_addf(o, "airlock_upstream_errors_total{kind=\"%s\"} %llu\n", px_uerr_names[i],
                     PX_LOAD(px_metrics.upstream_errors[i]));
    px_one(o, "airlock_pool_hits_total", "counter", "Requests served on a kept or pooled upstream.",
           PX_LOAD(px_metrics.pool_hits));
    px_one(o, "airlock_pool_misses_total", "counter", "Requests that opened a new upstream.",
           PX_LOAD(px_metrics.pool_misses));
    px_one(o, "airlock_tunnels_open", "gauge", "Opaque tunnels open now.",
           PX_LOAD(px_metrics.tunnels_open));
    px_one(o, "airlock_tunnels_total", "counter", "Opaque tunnels opened.",
           PX_LOAD(px_metrics.tunnels_total));
    px_fam(o, "airlock_reloads_total", "counter", "Configuration reloads by result.");
    al_dbuf_addf(o,
                 "airlock_reloads_total{result=\"ok\"} %llu\n"
                 "airlock_reloads_total{result=\"failed\"} %llu\n",
                 PX_LOAD(px_metrics.reloads_ok), PX_LOAD(px_metrics.reloads_failed));
    px_fam(o, "airlock_decisions_total", "counter", "Policy decisions by verdict.");
    al_dbuf_addf(o,
                 "airlock_decisions_total{decision=\"allow\"} %llu\n"
                 "airlock_decisions_total{decision=\"deny\"} %llu\n"
                 "airlock_decisions_total{decision=\"would_deny\"} %llu\n",
                 PX_LOAD(px_metrics.decisions[0]), PX_LOAD(px_metrics.decisions[1]),
                 PX_LOAD(px_metrics.decisions[2]));
    px_fam(o, "airlock_tls_handshakes_total", "counter", "Completed TLS handshakes by side.");
    al_dbuf_addf(o,
                 "airlock_tls_handshakes_total{side=\"client\"} %llu\n"
                 "airlock_tls_handshakes_total{side=\"upstream\"} %llu\n",
                 PX_LOAD(px_metrics.tls_client_handshakes),
                 PX_LOAD(px_metrics.tls_upstream_handshakes));
    px_one(o, "airlock_tls_failures_total", "counter",
           "Failed TLS handshakes and ClientHellos refused (SNI mismatch).",
           PX_LOAD(px_metrics.tls_failures));
    px_one(o, "airlock_secrets_injected_total", "counter", "Requests that carried secrets.",
           PX_LOAD(px_metrics.secrets_injected));
    px_one(o, "airlock_secrets_refused_total", "counter",
           "Requests refused for a placeholder going where its secret may not.",
           PX_LOAD(px_metrics.secrets_refused));
    px_one(o, "airlock_responses_decoded_total", "counter",
           "gzip/deflate answers decoded to be scanned for secrets.",
           PX_LOAD(px_metrics.responses_decoded));
    if (px_ca_g != NULL) {
        uint64_t mints = 0, hits = 0;

        px_ca_stats(px_ca_g, &mints, &hits);
        px_one(o, "airlock_certs_minted_total", "counter", "Interception leaf certificates minted.",
               (unsigned long long)mints);
        px_one(o, "airlock_cert_cache_hits_total", "counter",
               "Interception leaves served from the cache.", (unsigned long long)hits);
    }
    if (px_tls_up != NULL) {
        uint64_t vhits = 0, vfull = 0;

        px_tls_upstream_stats(px_tls_up, &vhits, &vfull);
        px_fam(o, "airlock_upstream_verify_total", "counter",
               "Upstream certificate chains verified in full or from the verdict cache.");
        al_dbuf_addf(o,
                     "airlock_upstream_verify_total{result=\"full\"} %llu\n"
                     "airlock_upstream_verify_total{result=\"cached\"} %llu\n",
                     (unsigned long long)vfull, (unsigned long long)vhits);
    }
    if (px_audit != NULL) {
        struct aud_stats st;

        aud_writer_stats(px_audit, &st);
        px_one(o, "airlock_audit_queue_depth", "gauge", "Audit rows waiting for their commit.",
               (unsigned long long)st.depth);
        px_one(o, "airlock_audit_rows_written_total", "counter", "Audit rows committed.",
               (unsigned long long)st.written);
        px_one(o, "airlock_audit_refusals_total", "counter",
               "Requests refused because the audit trail could not take their row.",
               PX_LOAD(px_metrics.audit_refusals));
        px_one(o, "airlock_audit_rows_dropped_total", "counter",
               "Audit rows lost (queue hard cap, or given up at stop).",
               (unsigned long long)st.dropped);
        px_one(o, "airlock_audit_errors_total", "counter", "Failed audit database operations.",
               (unsigned long long)st.errors);
        px_one(o, "airlock_audit_healthy", "gauge", "1 while the audit writer can commit.",
               (unsigned long long)aud_writer_healthy(px_audit));
        px_one(o, "airlock_audit_commits_total", "counter", "Audit transactions committed.",
               (unsigned long long)st.batches);
        px_one(o, "airlock_audit_rows_deleted_total", "counter", "Audit rows removed by retention.",
               (unsigned long long)st.deleted);
        px_one(o, "airlock_audit_wal_bytes", "gauge", "Size of the audit database's -wal file.",
               (unsigned long long)st.wal_bytes);
        px_metrics_sink(o);
    }
}
