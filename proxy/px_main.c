/*
 * px_main.c - `airlock run` and `airlock check`: load the configuration,
 * bind, start the workers, then serve signals and the admin listener on the
 * main thread's loop until SIGTERM/SIGINT has drained every worker.
 *
 * SIGHUP re-reads the config file: a file that fails validation changes
 * nothing (the errors are logged); a good one becomes the snapshot for new
 * connections. Listener addresses and the worker count need a restart: the
 * listening sockets are bound once, at start, and a reload never re-binds
 * (nor re-checks) them. A start whose addresses another process listens on
 * fails with exit 1 (px_listen_probe, px_listen_verify in px_worker.c).
 *
 * systemd (Type=notify): READY=1 once every worker listens, RELOADING=1 /
 * READY=1 around a reload, STOPPING=1 when the drain starts, and WATCHDOG=1
 * every WATCHDOG_USEC/2 from the main loop, sent as datagrams to
 * $NOTIFY_SOCKET (the sd_notify protocol, without libsystemd). While the
 * workers drain the main loop keeps running: the admin listener answers
 * /readyz 503 draining until the last worker has finished.
 *
 * Privileges: the start binds every listener and loads the CA and secrets
 * first, then gives up what it needed for that (px_main_privileges) before
 * any worker thread starts. When it gives something up, the audit database
 * is opened after that, so the writer's file belongs to the user that keeps
 * writing (and reopening) it (px_main_late_audit). Started
 * as root with "user": the supplementary groups, gid and uid become the
 * user's (setgroups, setresgid, setresuid), and the switch is verified
 * (every id, no capability left, setuid(0) refused) or the start fails.
 * Started as root without "user": a warning ("user": "root" keeps root on
 * purpose, silently). Not root: capabilities the service manager gave for
 * binding (CAP_NET_BIND_SERVICE) are cleared; a "user" naming someone else
 * is an error.
 */
#include "px_ca.h"
#include "px_worker.h"

#include <errno.h>
#include <grp.h>
#include <linux/capability.h>
#include <malloc.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <stdio.h>
#include <string.h>

struct px_main {
    struct px_worker *workers;
    int               nworkers;
    const char       *config_path;
    int               dry_run;
    ev_signal         sigterm, sigint, sighup;
    int               stopping;
    int              *joined;   /* workers whose thread has been joined */
    ev_timer          drain_w;  /* polls the draining workers */
    ev_timer          watchdog; /* WATCHDOG=1 to systemd */
};

/* ---- sd_notify: one datagram to $NOTIFY_SOCKET ------------------------------ */

static char   px_notify_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static size_t px_notify_len; /* 0: not under a service manager */

/* Reads NOTIFY_SOCKET once ("/path" or "@abstract"); others are ignored. */
static void
px_notify_init(void)
{
    const char *e = getenv("NOTIFY_SOCKET");
    size_t      n = e != NULL ? strlen(e) : 0;

    px_notify_len = 0;
    if (n == 0)
        return;
    if ((e[0] != '/' && e[0] != '@') || n >= sizeof(px_notify_path)) {
        al_log_warnx("NOTIFY_SOCKET=%s: not a unix socket path; systemd is not notified", e);
        return;
    }
    memcpy(px_notify_path, e, n);
    if (e[0] == '@')
        px_notify_path[0] = '\0'; /* abstract namespace */
    px_notify_len = n;
}

static int
px_sd_notify(const char *state)
{
    struct sockaddr_un sa;
    int                fd;
    ssize_t            rc;
    size_t             len = strlen(state);

    if (px_notify_len == 0)
        return AL_DECLINED;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, px_notify_path, px_notify_len);
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return AL_ERROR;
    rc = sendto(fd, state, len, MSG_NOSIGNAL, (const struct sockaddr *)&sa,
                (socklen_t)(offsetof(struct sockaddr_un, sun_path) + px_notify_len));
    if (rc != (ssize_t)len)
        al_log_warn("sd_notify %.*s", (int)strcspn(state, "\n"), state);
    close(fd);
    return rc == (ssize_t)len ? AL_OK : AL_ERROR;
}

static void
px_main_watchdog_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)t;
    (void)revents;
    (void)px_sd_notify("WATCHDOG=1");
}

/* WATCHDOG_USEC (and WATCHDOG_PID, when set, naming this process): ping at
 * half the interval. */
static void
px_main_watchdog_start(struct ev_loop *loop, struct px_main *m)
{
    const char *us = getenv("WATCHDOG_USEC"), *pid = getenv("WATCHDOG_PID");
    long        v = 0, p = 0;

    if (px_notify_len == 0 || us == NULL || al_parse_long(us, 1, 86400L * 1000000, &v) != AL_OK)
        return;
    if (pid != NULL && (al_parse_long(pid, 1, 1L << 30, &p) != AL_OK || p != (long)getpid()))
        return;
    ev_timer_init(&m->watchdog, px_main_watchdog_cb, 0., (double)v / 2e6);
    ev_timer_again(loop, &m->watchdog);
    (void)px_sd_notify("WATCHDOG=1");
}

/* ---- privileges --------------------------------------------------------- */

/* Capabilities of the calling thread: 1 when none is permitted or
 * effective, 0 when some is, -1 when capget fails. */
static int
px_caps_none(void)
{
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct   d[2];

    memset(d, 0, sizeof(d));
    if (syscall(SYS_capget, &h, d) != 0)
        return -1;
    return (d[0].permitted | d[1].permitted | d[0].effective | d[1].effective) == 0;
}

/* Drops every capability of the calling thread (threads started later
 * inherit the empty sets) and the ambient set. */
static int
px_caps_clear(void)
{
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct   d[2];

    memset(d, 0, sizeof(d));
    (void)prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    return syscall(SYS_capset, &h, d) == 0 ? AL_OK : AL_ERROR;
}

/* After the switch to uid/gid: every id is the user's, the only group is
 * gid, no capability is left and root cannot be had back. */
static int
px_priv_verify(uid_t uid, gid_t gid, char *err, size_t errsz)
{
    uid_t r, e, s;
    gid_t rg, eg, sg, groups[2];
    int   n;

    if (getresuid(&r, &e, &s) != 0 || r != uid || e != uid || s != uid) {
        snprintf(err, errsz, "user ids are not all %u after setresuid", (unsigned)uid);
        return AL_ERROR;
    }
    if (getresgid(&rg, &eg, &sg) != 0 || rg != gid || eg != gid || sg != gid) {
        snprintf(err, errsz, "group ids are not all %u after setresgid", (unsigned)gid);
        return AL_ERROR;
    }
    n = getgroups(2, groups);
    if (n < 0 || n > 1 || (n == 1 && groups[0] != gid)) {
        snprintf(err, errsz, "supplementary groups other than %u are left", (unsigned)gid);
        return AL_ERROR;
    }
    if (px_caps_none() != 1) {
        snprintf(err, errsz, "capabilities are left after the switch");
        return AL_ERROR;
    }
    if (uid != 0 && (setuid(0) == 0 || seteuid(0) == 0)) {
        snprintf(err, errsz, "the process could become root again");
        return AL_ERROR;
    }
    if (gid != 0 && (setgid(0) == 0 || setegid(0) == 0)) {
        snprintf(err, errsz, "the process could take group 0 again");
        return AL_ERROR;
    }
    return AL_OK;
}

/* Runs once the listeners are bound and keys loaded, before the audit
 * database is opened and any thread starts (the set*id calls of glibc reach
 * every thread anyway; capset reaches only the caller's). */
static int
px_main_privileges(const struct px_conf *c, char *err, size_t errsz)
{
    uid_t euid = geteuid(), uid;
    gid_t gid;

    if (c->user == NULL) {
        if (euid == 0)
            al_log_warnx("running as root: set \"user\" in %s (e.g. \"airlock\") to give up "
                         "root once the listeners are bound; \"user\": \"root\" keeps root "
                         "and silences this",
                         c->path != NULL ? c->path : "the config");
        else if (px_caps_none() == 0 && px_caps_clear() != AL_OK)
            al_log_warn("cannot clear capabilities");
        return AL_OK;
    }
    if (px_conf_user_lookup(c->user, &uid, &gid) != AL_OK) {
        snprintf(err, errsz, "user \"%s\": no such user on this system", c->user);
        return AL_ERROR;
    }
    if (uid == euid && getuid() == uid) {
        /* Already that user (systemd's User=, or "user": "root" as root). */
        if (uid == 0) {
            al_log_info("running as root (\"user\": \"root\")");
            return AL_OK;
        }
        if (px_caps_none() == 0 && px_caps_clear() != AL_OK) {
            snprintf(err, errsz, "cannot clear capabilities: %s", strerror(errno));
            return AL_ERROR;
        }
        (void)prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        if (px_caps_none() != 1 || setuid(0) == 0) {
            snprintf(err, errsz, "capabilities are left after clearing them");
            return AL_ERROR;
        }
        al_log_info("running as user %s (uid %u); no capability kept", c->user, (unsigned)uid);
        return AL_OK;
    }
    if (euid != 0) {
        snprintf(err, errsz,
                 "user \"%s\" (uid %u): airlock runs as uid %u, not root, and cannot switch "
                 "users; start it as root or as that user",
                 c->user, (unsigned)uid, (unsigned)euid);
        return AL_ERROR;
    }
    if (setgroups(1, &gid) != 0 || setresgid(gid, gid, gid) != 0 || setresuid(uid, uid, uid) != 0) {
        snprintf(err, errsz, "user \"%s\": cannot switch to uid %u gid %u: %s", c->user,
                 (unsigned)uid, (unsigned)gid, strerror(errno));
        return AL_ERROR;
    }
    if (px_priv_verify(uid, gid, err, errsz) != AL_OK)
        return AL_ERROR;
    (void)prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    al_log_info("running as user %s (uid %u, gid %u)", c->user, (unsigned)uid, (unsigned)gid);
    return AL_OK;
}

/* Opens the audit database and starts its writer (px_audit). */
static int
px_main_audit_start(const struct px_conf *c)
{
    struct al_errs errs;

    if (c->audit_db == NULL) {
        al_log_warnx("AUDIT DISABLED (audit.db is null): requests leave no trace");
    } else {
        struct aud_conf ac;

        memset(&ac, 0, sizeof(ac));
        ac.db_path = c->audit_db;
        ac.strict = c->audit_strict;
        ac.flush_ms = c->audit_flush_ms;
        ac.retention_days = c->audit_retention_days;
        ac.log_query = c->audit_log_query;
        ac.sink_postgres = c->audit_sink_postgres;
        ac.sink_instance = c->audit_sink_instance;
        al_errs_init(&errs);
        px_audit = aud_writer_start(&ac, &errs);
        if (px_audit == NULL) {
            al_log_err("cannot open the audit database%s%s%s:\n%s",
                       c->user != NULL ? " as user " : "", c->user != NULL ? c->user : "",
                       c->user != NULL ? " (its folder must be writable by that user)" : "",
                       errs.text.data ? errs.text.data : "");
            al_errs_free(&errs);
            return AL_ERROR;
        }
        al_errs_free(&errs);
        al_log_info("audit: %s (%s)", c->audit_db, c->audit_strict ? "strict" : "batched");
    }
    return AL_OK;
}

/* Whether the start gives something up after binding (a switch of user, or
 * capabilities to clear): then the audit database is opened afterwards, as
 * the user that keeps writing (and reopening) it, and its writer thread is
 * started without capabilities (capset reaches only the calling thread).
 * Otherwise it is opened before anything is bound, as it always was. */
static int
px_main_late_audit(const struct px_conf *c)
{
    uid_t uid;

    if (geteuid() != 0)
        return px_caps_none() == 0;
    return c->user != NULL && px_conf_user_lookup(c->user, &uid, NULL) == AL_OK && uid != 0;
}

/* While draining: every worker thread that has finished is joined; after
 * the last one the admin listener closes and the main loop ends. */
static void
px_main_drain_poll_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct px_main *m = t->data;
    int             left = 0;

    (void)revents;
    for (int i = 0; i < m->nworkers; i++) {
        if (!m->joined[i] && pthread_tryjoin_np(m->workers[i].thread, NULL) == 0)
            m->joined[i] = 1;
        left += !m->joined[i];
    }
    if (left > 0)
        return;
    ev_timer_stop(loop, t);
    ev_timer_stop(loop, &m->watchdog);
    px_admin_stop(loop);
    ev_break(loop, EVBREAK_ALL);
}

static void
px_main_stop_cb(struct ev_loop *loop, ev_signal *s, int revents)
{
    struct px_main *m = s->data;

    (void)revents;
    if (m->stopping)
        return;
    m->stopping = 1;
    al_log_info("signal %d: draining", s->signum);
    (void)px_sd_notify("STOPPING=1");
    px_admin_set_draining(1); /* /readyz: 503 draining from now on */
    for (int i = 0; i < m->nworkers; i++)
        px_worker_signal(&m->workers[i], 1, 0);
    ev_timer_init(&m->drain_w, px_main_drain_poll_cb, 0., 0.02);
    m->drain_w.data = m;
    ev_timer_again(loop, &m->drain_w);
}

/* Builds a new snapshot (config + policy); on any error nothing changes. */
static int
px_main_reload(void *arg, struct al_dbuf *msg)
{
    struct px_main *m = arg;
    struct al_errs  errs;
    struct px_conf *nc;
    int             rc = AL_OK;

    al_errs_init(&errs);
    {
        char            st[64];
        struct timespec ts;

        /* MONOTONIC_USEC: what Type=notify-reload (systemd 253) requires */
        clock_gettime(CLOCK_MONOTONIC, &ts);
        snprintf(st, sizeof(st), "RELOADING=1\nMONOTONIC_USEC=%llu",
                 (unsigned long long)ts.tv_sec * 1000000ULL +
                     (unsigned long long)ts.tv_nsec / 1000);
        (void)px_sd_notify(st);
    }
    nc = px_conf_load_all(m->config_path, m->dry_run, &errs);
    if (nc == NULL) {
        PX_MINC(reloads_failed);
        atomic_store(&px_metrics.reload_last_ok, 0);
        al_log_err("reload failed; keeping the running configuration:\n%s",
                   errs.text.data ? errs.text.data : "");
        if (msg != NULL) {
            al_dbuf_adds(msg, "reload failed; the running configuration is unchanged:\n");
            al_dbuf_adds(msg, errs.text.data ? errs.text.data : "");
        }
        rc = AL_ERROR;
    } else {
        struct px_conf *running = px_conf_current();
        char            fixed[256];
        size_t          nfixed = px_conf_restart_only(running, nc, fixed, sizeof(fixed));

        px_conf_unref(running);
        PX_MINC(reloads_ok);
        atomic_store(&px_metrics.reload_last_ok, 1);
        atomic_store(&px_metrics.reload_ok_us, al_now_us());
        if (nfixed > 0)
            al_log_warnx("reload: %s changed; that takes effect at the next start", fixed);
        al_log_set_level(nc->log_level);
        al_log_set_format(nc->log_format);
        px_conf_set_current(nc);
        for (int i = 0; i < m->nworkers; i++)
            px_worker_signal(&m->workers[i], 0, 1);
        al_log_info("reloaded %s", m->config_path ? m->config_path : "(embedded default)");
        if (msg != NULL) {
            al_dbuf_adds(msg, "reloaded\n");
            if (nfixed > 0) {
                al_dbuf_adds(msg, "warning: changed, takes effect at the next start: ");
                al_dbuf_adds(msg, fixed);
                al_dbuf_adds(msg, "\n");
            }
            if (errs.text.data != NULL)
                al_dbuf_adds(msg, errs.text.data); /* warnings */
        }
    }
    al_errs_free(&errs);
    (void)px_sd_notify("READY=1");
    return rc;
}

static void
px_main_reload_cb(struct ev_loop *loop, ev_signal *s, int revents)
{
    (void)loop;
    (void)revents;
    (void)px_main_reload(s->data, NULL);
}

static void
px_print_errs(const struct al_errs *errs)
{
    if (errs->text.data != NULL)
        fputs(errs->text.data, stderr);
}

/* Warnings of a configuration that loaded: one log line each (in the
 * configured log format), not raw text on stderr. */
static void
px_log_warnings(const struct al_errs *errs)
{
    const char *p = errs->text.data;

    while (p != NULL && *p != '\0') {
        size_t n = strcspn(p, "\n");

        if (n > 0)
            al_log_warnx("%.*s", (int)n, p);
        p += n + (p[n] == '\n');
    }
}

int
px_main_check(const char *config_path)
{
    struct al_errs  errs;
    struct px_conf *c;
    int             rc;

    al_errs_init(&errs);
    c = px_conf_load_all(config_path, 0, &errs);
    px_print_errs(&errs);
    rc = c != NULL ? 0 : 2;
    if (c != NULL)
        printf("%s: ok\n", config_path ? config_path : "(embedded default)");
    px_conf_unref(c);
    al_errs_free(&errs);
    return rc;
}

int
px_main_run(const char *config_path, int dry_run)
{
    struct px_main  m;
    struct al_errs  errs;
    struct px_conf *c;
    struct ev_loop *loop;
    char            err[256];
    int             rc = 1, late_audit;

    memset(&m, 0, sizeof(m));
    m.config_path = config_path;
    atomic_store(&px_metrics.start_us, al_now_us());
    px_notify_init();
    al_errs_init(&errs);
    c = px_conf_load_all(config_path, dry_run, &errs);
    if (c == NULL) {
        px_print_errs(&errs);
        al_errs_free(&errs);
        return 2;
    }
    al_log_set_level(c->log_level);
    al_log_set_format(c->log_format);
    px_log_warnings(&errs); /* the policy's warnings, a log line each */
    al_errs_free(&errs);
    m.dry_run = dry_run;
    if (pol_policy_dry_run(c->policy))
        al_log_info("policy in dry-run: denies are recorded as would_deny and let through");
    atomic_store(&px_metrics.reload_ok_us, al_now_us());
    atomic_store(&px_metrics.reload_last_ok, 1);
    signal(SIGPIPE, SIG_IGN);
    /* TLS record buffers (released between records, SSL_MODE_RELEASE_BUFFERS)
     * and queue chunks come and go at the top of the worker arenas; with the
     * default 128 KiB trim threshold glibc hands those pages back with
     * madvise(2) and faults them in again, request after request. */
    (void)mallopt(M_TRIM_THRESHOLD, PX_MALLOC_TRIM_BYTES);
    (void)mallopt(M_MMAP_THRESHOLD, PX_MALLOC_MMAP_BYTES);
    px_raise_nofile();
    if (c->secrets != NULL) {
        struct rlimit nocore = {0, 0};

        /* Secret values never end up in a core file or under ptrace. */
        (void)setrlimit(RLIMIT_CORE, &nocore);
        (void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
    px_conf_set_current(px_conf_ref(c));
    /* An address someone else listens on ends the start here, before the
     * audit database or the CA is touched. */
    if (px_listen_probe(c, err, sizeof(err)) != AL_OK) {
        al_log_err("%s", err);
        goto out;
    }
    late_audit = px_main_late_audit(c);
    if (!late_audit && px_main_audit_start(c) != AL_OK)
        goto out;

    if (c->ca_dir != NULL) {
        al_errs_init(&errs);
        px_ca_g = px_ca_load(c->ca_dir, &errs);
        if (px_ca_g != NULL)
            px_tls_srv = px_tls_server_ctx(px_ca_g);
        if (px_ca_g != NULL && px_tls_srv != NULL)
            px_tls_up = px_tls_upstream_ctx(c->upstream_ca, c->upstream_verify_cache_s, &errs);
        if (px_tls_up == NULL) {
            al_log_err("cannot set up TLS interception (ca.dir %s; create a CA with `airlock ca "
                       "init --dir %s`):\n%s",
                       c->ca_dir, c->ca_dir, errs.text.data ? errs.text.data : "");
            al_errs_free(&errs);
            goto out;
        }
        if (errs.text.data != NULL)
            al_log_warnx("%s", errs.text.data);
        al_errs_free(&errs);
        al_log_info("interception CA loaded from %s", c->ca_dir);
    }
    m.nworkers = c->workers;
    m.workers = al_calloc((size_t)m.nworkers, sizeof(*m.workers));
    m.joined = al_calloc((size_t)m.nworkers, sizeof(*m.joined));
    if (m.workers == NULL || m.joined == NULL)
        goto out;
    for (int i = 0; i < m.nworkers; i++) {
        if (px_worker_init(&m.workers[i], i, c, err, sizeof(err)) != AL_OK) {
            al_log_err("%s", err);
            goto out;
        }
    }
    if (px_listen_verify(m.workers, m.nworkers, c, err, sizeof(err)) != AL_OK) {
        al_log_err("%s", err);
        goto out;
    }
    loop = ev_default_loop(EVFLAG_AUTO);
    if (px_admin_start(loop, c, px_main_reload, &m) != AL_OK)
        goto out; /* px_admin_start said why */
    /* Everything that needed root is done: bound, keys loaded. */
    if (px_main_privileges(c, err, sizeof(err)) != AL_OK) {
        al_log_err("%s", err);
        goto out;
    }
    if (late_audit && px_main_audit_start(c) != AL_OK)
        goto out;
    for (int i = 0; i < m.nworkers; i++)
        m.workers[i].rt = (struct px_runtime){px_audit, px_tls_srv, px_tls_up, px_ca_g};
    for (int i = 0; i < m.nworkers; i++) {
        if (px_worker_start(&m.workers[i]) != AL_OK) {
            al_log_err("cannot start worker %d", i);
            m.nworkers = i;
            for (int k = 0; k < i; k++)
                px_worker_signal(&m.workers[k], 1, 0);
            for (int k = 0; k < i; k++)
                pthread_join(m.workers[k].thread, NULL);
            goto out;
        }
    }
    for (int i = 0; i < c->nlisten; i++)
        al_log_info("listening on %s (%s), %d workers", c->listen[i].text,
                    c->listen[i].mode == PX_LISTEN_FORWARD ? "forward" : "transparent", m.nworkers);
    ev_signal_init(&m.sigterm, px_main_stop_cb, SIGTERM);
    ev_signal_init(&m.sigint, px_main_stop_cb, SIGINT);
    ev_signal_init(&m.sighup, px_main_reload_cb, SIGHUP);
    m.sigterm.data = m.sigint.data = m.sighup.data = &m;
    ev_signal_start(loop, &m.sigterm);
    ev_signal_start(loop, &m.sigint);
    ev_signal_start(loop, &m.sighup);
    px_admin_set_workers(m.workers, m.nworkers);
    px_main_watchdog_start(loop, &m);
    (void)px_sd_notify("READY=1\nSTATUS=accepting connections");
    ev_run(loop, 0);
    for (int i = 0; i < m.nworkers; i++) {
        if (!m.joined[i])
            pthread_join(m.workers[i].thread, NULL);
    }
    rc = 0;
out:
    px_admin_set_workers(NULL, 0);
    /* Every row handed over is committed before exit (SIGTERM loses nothing). */
    aud_writer_stop(px_audit);
    px_audit = NULL;
    SSL_CTX_free(px_tls_srv);
    SSL_CTX_free(px_tls_up);
    px_tls_srv = px_tls_up = NULL;
    px_ca_free(px_ca_g);
    px_ca_g = NULL;
    if (rc == 0)
        al_log_info("stopped");
    if (m.workers != NULL) {
        for (int i = 0; i < m.nworkers; i++)
            px_worker_destroy(&m.workers[i]);
        al_free(m.workers);
    }
    al_free(m.joined);
    px_conf_set_current(NULL);
    px_conf_unref(c);
    px_tags_free_all();
    px_tls_libctx_free(); /* after the workers: pooled upstream SSLs live in it */
    return rc;
}
