/*
 * px.h - the proxy module's internal interface: configuration snapshot,
 * workers, connections, metrics. Only proxy/ includes it; the binary's
 * main.c uses the px_main_* entry points at the bottom.
 */
#ifndef PX_H
#define PX_H

#include <stdatomic.h>
#include <stdint.h>
#include <pthread.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <ev.h>
#include <openssl/types.h>
#include <llhttp.h>

#include "audit.h"
#include "common.h"
#include "policy.h"
#include "secrets.h"
#include "px_dns.h"
#include "px_url.h"

/* ---- limits and defaults ----------------------------------------------- */
#define PX_MAX_LISTENERS 16
#define PX_MAX_HEADERS 256
#define PX_DEFAULT_HEADER_BYTES 65536
#define PX_DEFAULT_MAX_CONNECTIONS 10000
#define PX_DEFAULT_HEADER_TIMEOUT_S 10
#define PX_DEFAULT_IDLE_TIMEOUT_S 60
#define PX_DEFAULT_CONNECT_TIMEOUT_S 10
#define PX_DEFAULT_TLS_TIMEOUT_S 10
#define PX_DEFAULT_DRAIN_TIMEOUT_S 30
#define PX_DEFAULT_VERIFY_CACHE_S 300 /* upstream chain verdicts (0 = off) */
#define PX_BUF_HIGH_BYTES (64 * 1024) /* stop reading the source above this */
#define PX_READ_BYTES 16384           /* one read(2) */
#define PX_POOL_IDLE_S 30             /* idle upstream keep-alive lifetime */
#define PX_POOL_MAX_PER_WORKER 512
#define PX_POOL_TLS_PER_HOST 8 /* parked TLS upstreams per host:port and worker */
#define PX_IDLE_TRIM_S 1.0     /* idle keep-alive: request state freed, TLS upstream parked */
#define PX_MALLOC_TRIM_BYTES (32 << 20) /* free heap top kept before trimming */
#define PX_MALLOC_MMAP_BYTES (1 << 20)  /* allocations from mmap(2) above this */
#define PX_ACCEPT_PAUSE_S 0.1           /* listeners rest after accept(2) ran out of descriptors */

enum px_listen_mode { PX_LISTEN_FORWARD = 0, PX_LISTEN_TRANSPARENT };

struct px_listen_conf {
    struct sockaddr_storage addr;
    socklen_t               addrlen;
    enum px_listen_mode     mode;
    char                    text[64]; /* as written in the config */
};

struct px_limits {
    int    max_connections;
    size_t header_bytes;
    int    header_timeout_s, idle_timeout_s, connect_timeout_s, tls_handshake_timeout_s;
    int    drain_timeout_s;
    size_t ws_message_bytes; /* largest websocket frame or message (close 1009 beyond) */
};

/* A sandbox identity from the config: by source CIDR and/or by token. */
struct px_sandbox {
    char            *name;
    struct pol_cidr *cidrs;
    int              ncidrs;
    char             token_sha256[65]; /* lowercase hex; "" when none */
};

/*
 * One immutable configuration snapshot. Workers and connections hold a
 * counted reference (px_conf_ref/px_conf_unref); SIGHUP builds a new one and
 * swaps the current pointer, so a connection keeps the snapshot it started with.
 */
struct px_conf {
    _Atomic int             refs;
    char                   *path; /* config file */
    struct px_listen_conf   listen[PX_MAX_LISTENERS];
    int                     nlisten;
    struct sockaddr_storage admin_addr;
    socklen_t               admin_addrlen;
    int                     has_admin;
    char                    admin_token_sha256[65]; /* "" = no bearer token required */
    int                     workers;
    char                   *policy_path, *secrets_path, *ca_dir, *upstream_ca;
    int                     upstream_verify_cache_s; /* 0 = verify every chain in full */
    char                   *audit_db;
    char                   *audit_sink_postgres, *audit_sink_instance; /* fleet sink; NULL = none */
    int                     audit_strict, audit_flush_ms, audit_retention_days, audit_log_query;
    struct px_dns_override *overrides;
    int                     noverrides;
    char                  **dns_servers;
    int                     ndns_servers;
    int                     dns_timeout_ms;
    struct px_limits        limits;
    enum al_log_level       log_level;
    enum al_log_format      log_format; /* "log_format": text | json */
    int                     access_log; /* "access_log": a line per finished request */
    char                   *user;       /* "user": switch to it after binding (started as root) */
    struct px_sandbox      *sandboxes;
    int                     nsandboxes;
    int                     any_token; /* some sandbox authenticates by token */
    struct pol_policy      *policy;    /* set by px_conf_load_all */
    struct sec_store       *secrets;   /* set by px_conf_load_all when "secrets" is given */
    int                     dry_run;   /* airlock run --dry-run */
    struct sockaddr_storage self[PX_MAX_LISTENERS + 1]; /* own listening addresses */
    int                     nself;
};

/* Loads and validates `path`; reports every problem into errs (file:line:col
 * and JSON path). Returns a snapshot with refs = 1 or NULL. */
struct px_conf *px_conf_load(const char *path, struct al_errs *errs);
/* px_conf_load plus the files it names (policy, later secrets), validated
 * together: what `airlock run` and `airlock check` use. Warnings land in
 * errs too (errs->warnings). */
struct px_conf *px_conf_load_all(const char *path, int dry_run, struct al_errs *errs);
/* Finds a sandbox by name; NULL when unknown. */
const struct px_sandbox *px_conf_sandbox(const struct px_conf *c, const char *name);
/* The uid and primary gid of a user name (either pointer may be NULL);
 * AL_ERROR when the system knows no such user. */
int px_conf_user_lookup(const char *name, uid_t *uid, gid_t *gid);
/* The embedded default (make run without a config file). */
extern const char px_conf_default_json[];
struct px_conf   *px_conf_ref(struct px_conf *c);
void              px_conf_unref(struct px_conf *c);
/* The current snapshot with a reference taken (never NULL after startup). */
/* Settings that only take effect at start (listeners, workers, CA, upstream
 * TLS, audit, resolver) and differ between two snapshots: their names,
 * comma-separated, in out; returns how many. */
size_t px_conf_restart_only(const struct px_conf *running, const struct px_conf *next, char *out,
                            size_t outsz);
struct px_conf *px_conf_current(void);
void            px_conf_set_current(struct px_conf *c); /* takes ownership of one ref */
int             px_parse_sockaddr(const char *s, struct sockaddr_storage *ss, socklen_t *len);
void            px_sockaddr_str(const struct sockaddr *sa, char *out,
                                size_t outsz); /* "ip:port" / "[ip]:port" */

/* ---- metrics: process-wide counters, relaxed atomics ------------------- */
enum px_uerr {
    PX_UERR_DNS = 0,
    PX_UERR_REFUSED,
    PX_UERR_TIMEOUT,
    PX_UERR_RESET,
    PX_UERR_OTHER,
    PX_UERR_N
};
/* Why accept(2) failed: EMFILE/ENFILE, ENOBUFS/ENOMEM, anything else. */
enum px_aerr { PX_AERR_FD = 0, PX_AERR_MEM, PX_AERR_OTHER, PX_AERR_N };
/* A latency histogram: fixed buckets (PX_HIST_BOUNDS_US in px_metrics.c),
 * non-cumulative counts (the last one is +Inf), relaxed atomic adds only. */
#define PX_HIST_NB 16
struct px_hist {
    _Atomic uint64_t b[PX_HIST_NB + 1];
    _Atomic uint64_t sum_us;
};
void px_hist_observe(struct px_hist *h, int64_t us);
struct px_metrics {
    _Atomic uint64_t conns_open, conns_total, conns_refused;
    _Atomic uint64_t requests[6]; /* index = status / 100 (0 = none) */
    _Atomic uint64_t bytes_up, bytes_down;
    _Atomic uint64_t upstream_errors[PX_UERR_N];
    _Atomic uint64_t pool_hits, pool_misses;
    _Atomic uint64_t tunnels_open, tunnels_total;
    _Atomic uint64_t reloads_ok, reloads_failed;
    _Atomic uint64_t decisions[3]; /* allow, deny, would_deny */
    _Atomic uint64_t audit_refusals;
    _Atomic uint64_t tls_client_handshakes, tls_upstream_handshakes, tls_failures;
    _Atomic uint64_t secrets_injected, secrets_refused;
    _Atomic uint64_t responses_decoded;           /* gzip/deflate answers decoded to be scanned */
    _Atomic uint64_t accept_errors[PX_AERR_N];    /* failed accept(2) calls, by reason */
    struct px_hist   h_request, h_connect, h_dns; /* request duration, upstream connect, DNS */
    struct px_hist   h_tls[2];                    /* TLS handshake: [0] client, [1] upstream */
    _Atomic int64_t  start_us, reload_ok_us;      /* process start, last successful (re)load */
    _Atomic int      reload_last_ok;              /* the last reload attempt succeeded */
};
extern struct px_metrics px_metrics;
#define PX_MINC(f) atomic_fetch_add_explicit(&px_metrics.f, 1, memory_order_relaxed)
#define PX_MADD(f, n) atomic_fetch_add_explicit(&px_metrics.f, (uint64_t)(n), memory_order_relaxed)
#define PX_MDEC(f) atomic_fetch_sub_explicit(&px_metrics.f, 1, memory_order_relaxed)
/* ready: what /readyz says now (the admin API decides it; metrics only show it). */
void        px_metrics_render(struct al_dbuf *out, int ready);
const char *px_uerr_name(enum px_uerr k);
/* Counts an answer under airlock_responses_total{class="Nxx"}. */
void px_conn_count_status(int status);
/* One finished request (an audit row): airlock_requests_total{decision,
 * reason, class} and airlock_rule_requests_total{rule, decision}.
 * decision: 0 allow, 1 deny, 2 would_deny, 3 error. reason is a code from
 * a fixed list (anything else counts as "other"); rule a policy rule name
 * (NULL or "" when none; at most PX_METRICS_MAX_RULES distinct names). */
#define PX_METRICS_MAX_RULES 256
void px_metrics_request(int decision, const char *reason, const char *rule, int status,
                        int64_t duration_us);
/* Hook in px_conn_set_state: a connection leaves state `from` (enum
 * px_state) for `to` at `now`, having entered it at `since` (both ev_now
 * times of its loop: no clock read here, and a DNS cache hit measures 0).
 * Leaving RESOLVE, CONNECT, TLS_CLIENT or TLS_UP other than for FLUSH_CLOSE
 * observes the DNS, connect and handshake histograms. */
void px_metrics_phase(int from, int to, double since, double now);
/* Build information for airlock_build_info. */
#define PX_BUILD_VERSION "0.1.0"
#ifndef AIRLOCK_COMMIT
#define AIRLOCK_COMMIT "unknown"
#endif

/* ---- workers ------------------------------------------------------------ */
struct px_pool_entry;
struct px_conn;

struct px_listener {
    int                 fd;
    ev_io               w;
    enum px_listen_mode mode;
    struct px_worker   *worker;
};

/* What connection code needs of the process, handed down through its worker
 * (never read from globals there): set once before the workers start. */
struct px_runtime {
    struct aud_writer *audit;   /* NULL: no audit (unit tests) */
    struct ssl_ctx_st *tls_srv; /* interception: the client side's server (NULL: no CA) */
    struct ssl_ctx_st *tls_up;  /* verified upstream TLS */
    struct px_ca      *ca;
};

struct px_worker {
    int                   index;
    struct px_runtime     rt;
    pthread_t             thread;
    struct ev_loop       *loop;
    struct px_dns        *dns;
    struct px_listener    listeners[PX_MAX_LISTENERS];
    int                   nlisteners;
    ev_async              wake; /* drain / reload notifications */
    _Atomic int           want_drain, want_reload;
    ev_timer              drain_timer;
    int                   draining;
    struct px_conn       *conns; /* all live connections (doubly linked) */
    unsigned              nconns;
    struct px_pool_entry *pool; /* idle upstream connections */
    unsigned              npool;
    struct px_conf       *conf;      /* snapshot for new connections */
    pthread_mutex_t       done_lock; /* strict audit commits, from the writer thread */
    struct px_aud_done   *done_head;
    ev_prepare            aud_release;   /* lets this iteration's strict begins go together */
    int                   aud_held;      /* begins queued since the last release */
    ev_timer              accept_pause;  /* listeners stopped after accept hit a resource limit */
    _Atomic int           accept_paused; /* read by /readyz on the main thread */
    int                   spare_fd; /* /dev/null, given up to shed one client when out of fds */
    /* A body filter's output, reused piece after piece (px_inject.c). */
    struct al_dbuf filter_out;
    int            filter_out_busy;
};

/* One strict-mode audit commit handed from the writer thread to a worker. */
struct px_aud_done {
    struct px_aud_done *next;
    struct px_conn     *conn;
    int                 ok;
    int64_t             row_id;
};
/* Runs on the worker: delivers the commits queued by the writer thread. */
void px_conns_audit_committed(struct px_worker *w);
/* ev_prepare callback: releases the strict begins of this loop iteration. */
void px_worker_audit_release(struct ev_loop *loop, ev_prepare *p, int revents);
/* Drops what is still queued (after the writer stopped), freeing conns. */
void px_conns_audit_discard(struct px_worker *w);

/* The process-wide audit writer (NULL in unit tests); px_main.c owns it. */
extern struct aud_writer *px_audit;
/* Interception (NULL when no ca.dir is configured); px_main.c owns them. */
struct ssl_ctx_st;
struct px_ca;
extern struct px_ca      *px_ca_g;
extern struct ssl_ctx_st *px_tls_srv, *px_tls_up;

/* Accept path, in px_conn.c. */
void px_conn_accept(struct px_worker *w, int fd, const struct sockaddr_storage *peer,
                    enum px_listen_mode mode);
/* Closes idle keep-alive client connections and marks the rest to close
 * after the current exchange (drain). */
void px_conns_drain(struct px_worker *w);
void px_conns_close_all(struct px_worker *w);

/* Upstream keep-alive pool, per worker, in px_pool.c. Keys are "host:port". */
int  px_pool_get(struct px_worker *w, const char *key, struct sockaddr_storage *peer);
void px_pool_put(struct px_worker *w, const char *key, int fd, const struct sockaddr_storage *peer);
/* Verified TLS upstreams (intercepted tunnels): the SSL travels with the fd;
 * get takes only one made from ctx. */
int  px_pool_get_tls(struct px_worker *w, const char *key, SSL_CTX *ctx,
                     struct sockaddr_storage *peer, SSL **ssl);
void px_pool_put_tls(struct px_worker *w, const char *key, int fd, SSL *ssl,
                     const struct sockaddr_storage *peer);
void px_pool_clear(struct px_worker *w);

/* ---- the daemon and CLI entry points (main.c) --------------------------- */
int px_main_run(const char *config_path, int dry_run);
int px_main_check(const char *config_path);
/* `airlock policy ...`; argv[0] is "policy". Returns the exit code. */
int px_cli_policy(int argc, char **argv);
/* `airlock audit ...`: maps --config FILE to the config's --db, then runs
 * aud_cli_main. argv[0] is "audit". */
int px_cli_audit(int argc, char **argv);
/* `airlock secrets env --config FILE [--sandbox S]`. argv[0] is "secrets". */
int px_cli_secrets(int argc, char **argv);
/* `airlock sandbox env`: the proxy, CA trust and placeholder variables of a sandbox. */
int px_cli_sandbox(int argc, char **argv);
/* `airlock check`: px_main_check plus the setup checks (audit path writable,
 * risky setups warned about). */
int px_cli_check(const char *config_path);
/* Admin listener on the main loop; px_admin.c. `reload` (POST /reload)
 * rebuilds the snapshot; it returns AL_OK, or AL_ERROR with the reasons in msg. */
typedef int (*px_reload_fn)(void *arg, struct al_dbuf *msg);
int  px_admin_start(struct ev_loop *loop, const struct px_conf *conf, px_reload_fn reload,
                    void *arg);
void px_admin_stop(struct ev_loop *loop);
/* What GET /readyz looks at besides the audit writer: the workers (their
 * listeners paused after accept(2) failures) and whether the process drains. */
void px_admin_set_workers(struct px_worker *w, int n);
void px_admin_set_draining(int on);
/* Readiness: AL_OK, or AL_DECLINED with a static reason code and a detail
 * line in detail[]; GET /readyz answers 503 with both as JSON. */
int px_admin_ready(const char **reason, char *detail, size_t detailsz);

/* Live per-sandbox tags and counters (px_tags.c); thread-safe. */
int px_tags_set(const char *sandbox, const char *session, const char *tool_call);
/* Fills session/tool_call from the sandbox's admin tag where they are "". */
void px_tags_get(const char *sandbox, char *session, size_t ssz, char *tool_call, size_t tsz);
void px_tags_count(const char *sandbox, int denied, uint64_t up, uint64_t down);
void px_tags_render(const struct px_conf *c, struct al_dbuf *out); /* GET /v1/sandboxes */
void px_tags_free_all(void);

/* Raise RLIMIT_NOFILE soft limit to the hard limit. */
void px_raise_nofile(void);

#endif
