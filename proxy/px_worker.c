/*
 * px_worker.c - worker threads and their listeners.
 *
 * Each worker owns one ev_loop, its own SO_REUSEPORT listening sockets (the
 * kernel spreads accepts across workers), its DNS channel and its upstream
 * pool; nothing on the data path is shared between workers except the
 * relaxed-atomic metrics. The main thread talks to a worker only through
 * ev_async (drain, reload), and sockets are bound in the main thread before
 * any worker starts, so a bad address fails startup with a clear message.
 *
 * Out of descriptors (EMFILE/ENFILE), a level-triggered listener would fire
 * again at once and every accept(2) fail again: a core at 100 % and a log
 * line per failure. As nginx and HAProxy do, the worker then stops its
 * listeners for PX_ACCEPT_PAUSE_S and starts them again from a timer (so a
 * descriptor freed meanwhile is used within that time), and it keeps one
 * spare descriptor (/dev/null) that it closes to accept one waiting client,
 * answer it 503 fd_exhausted (forward listeners; transparent ones just close)
 * and reopen: a client in the backlog learns why rather than waiting for a
 * timeout. The failure is logged at most once a second (process-wide, with
 * the count since the last line) and counted in
 * airlock_accept_errors_total{reason}.
 *
 * A listening address belongs to one airlock process. SO_REUSEPORT lets any
 * socket of the same user join a reuseport group, and the kernel then splits
 * new connections between every process in it: a second airlock started on
 * a busy address would serve part of the traffic under its own policy. So
 * px_listen_probe() first binds each address without SO_REUSEPORT (any
 * other listener there, with or without SO_REUSEPORT, makes that fail with
 * EADDRINUSE) before the workers bind their SO_REUSEPORT sockets, and
 * px_listen_verify() then lists the host's TCP listeners (sock_diag) and
 * refuses to start if one that is not ours covers one of our addresses:
 * that closes the window between the probe and the binds, e.g. two airlocks
 * started at the same instant (at least one of them then fails; neither
 * has accepted anything yet, as the workers start afterwards).
 */
#include "px_worker.h"

#include "px_conn.h"
#include "px_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void
px_listen_err(const char *what, const char *text, int e, char *err, size_t errsz)
{
    if (e == EADDRINUSE)
        snprintf(err, errsz, "%s %s: address already in use by another process", what, text);
    else
        snprintf(err, errsz, "%s %s: %s", what, text, strerror(e));
}

static int
px_listen_socket(const struct px_listen_conf *lc, char *err, size_t errsz)
{
    int one = 1;
    int fd = socket(lc->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0) {
        snprintf(err, errsz, "listen %s: socket: %s", lc->text, strerror(errno));
        return -1;
    }
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0 ||
        bind(fd, (const struct sockaddr *)&lc->addr, lc->addrlen) != 0 || listen(fd, 1024) != 0) {
        px_listen_err("listen", lc->text, errno, err, errsz);
        close(fd);
        return -1;
    }
    return fd;
}

/* A listening address reduced to what decides whether two of them overlap:
 * IPv4 (also an IPv6 socket's ::ffff:a.b.c.d) or IPv6, and v6only. */
struct px_laddr {
    int      v4;
    uint8_t  a[16];
    int      v6only;
    uint16_t port; /* host order */
};

static void
px_laddr_set(struct px_laddr *l, int family, const void *addr, uint16_t port, int v6only)
{
    memset(l, 0, sizeof(*l));
    l->port = port;
    l->v6only = v6only;
    if (family == AF_INET) {
        l->v4 = 1;
        memcpy(l->a, addr, 4);
    } else if (!v6only && IN6_IS_ADDR_V4MAPPED((const struct in6_addr *)addr)) {
        l->v4 = 1;
        memcpy(l->a, (const uint8_t *)addr + 12, 4);
    } else {
        memcpy(l->a, addr, 16);
    }
}

static void
px_laddr_from_sa(struct px_laddr *l, const struct sockaddr_storage *ss, int v6only)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;

        px_laddr_set(l, AF_INET, &sin->sin_addr, ntohs(sin->sin_port), 0);
    } else {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;

        px_laddr_set(l, AF_INET6, &sin6->sin6_addr, ntohs(sin6->sin6_port), v6only);
    }
}

static int
px_laddr_any(const struct px_laddr *l)
{
    static const uint8_t zero[16];

    return memcmp(l->a, zero, l->v4 ? 4 : 16) == 0;
}

/* Could the kernel hand a connection meant for one of them to the other? */
static int
px_laddr_overlap(const struct px_laddr *x, const struct px_laddr *y)
{
    const struct px_laddr *v6;

    if (x->port != y->port)
        return 0;
    if (x->v4 == y->v4)
        return px_laddr_any(x) || px_laddr_any(y) || memcmp(x->a, y->a, x->v4 ? 4 : 16) == 0;
    v6 = x->v4 ? y : x; /* [::] without v6only also takes IPv4 */
    return px_laddr_any(v6) && !v6->v6only;
}

static void
px_sa_text(const struct sockaddr_storage *ss, char *out, size_t outsz)
{
    char a[INET6_ADDRSTRLEN];

    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;

        inet_ntop(AF_INET, &sin->sin_addr, a, sizeof(a));
        snprintf(out, outsz, "%s:%u", a, ntohs(sin->sin_port));
    } else {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;

        inet_ntop(AF_INET6, &sin6->sin6_addr, a, sizeof(a));
        snprintf(out, outsz, "[%s]:%u", a, ntohs(sin6->sin6_port));
    }
}

/* Binds addr without SO_REUSEPORT and closes it again: fails if anyone
 * listens there (or on an address covering it), whatever their options. */
static int
px_listen_probe_one(const struct sockaddr_storage *ss, socklen_t len, const char *what,
                    const char *text, char *err, size_t errsz)
{
    int one = 1;
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0) {
        snprintf(err, errsz, "%s %s: socket: %s", what, text, strerror(errno));
        return AL_ERROR;
    }
    /* SO_REUSEADDR as the real sockets have it: TIME_WAIT leftovers of a
     * previous run do not count, listeners do */
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)ss, len) != 0) {
        px_listen_err(what, text, errno, err, errsz);
        close(fd);
        return AL_ERROR;
    }
    close(fd);
    return AL_OK;
}

int
px_listen_probe(const struct px_conf *c, char *err, size_t errsz)
{
    char admin[80];

    for (int i = 0; i < c->nlisten; i++) {
        for (int k = 0; k < i; k++) {
            if (c->listen[k].addrlen == c->listen[i].addrlen &&
                memcmp(&c->listen[k].addr, &c->listen[i].addr, c->listen[i].addrlen) == 0) {
                snprintf(err, errsz, "listen %s: listed twice (listen[%d] and listen[%d])",
                         c->listen[i].text, k, i);
                return AL_ERROR;
            }
        }
        if (px_listen_probe_one(&c->listen[i].addr, c->listen[i].addrlen, "listen",
                                c->listen[i].text, err, errsz) != AL_OK)
            return AL_ERROR;
    }
    if (!c->has_admin)
        return AL_OK;
    px_sa_text(&c->admin_addr, admin, sizeof(admin));
    for (int i = 0; i < c->nlisten; i++) {
        struct px_laddr a, l;

        px_laddr_from_sa(&a, &c->admin_addr, 0);
        px_laddr_from_sa(&l, &c->listen[i].addr, 0);
        if (px_laddr_overlap(&a, &l)) {
            snprintf(err, errsz, "admin %s: overlaps the proxy listener %s", admin,
                     c->listen[i].text);
            return AL_ERROR;
        }
    }
    return px_listen_probe_one(&c->admin_addr, c->admin_addrlen, "admin", admin, err, errsz);
}

/* sock_diag: every TCP listener of the family; for each one whose inode is
 * not in own[] and that overlaps a configured listener, err says which. */
static int
px_listen_diag(int family, const ino_t *own, size_t nown, const struct px_conf *c,
               const struct px_laddr *ours, int *found, char *err, size_t errsz)
{
    struct {
        struct nlmsghdr         nlh;
        struct inet_diag_req_v2 r;
    } req;
    struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
    char               buf[16384] __attribute__((aligned(NLMSG_ALIGNTO)));
    int                fd, done = 0, rc = AL_ERROR;

    fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (fd < 0) {
        snprintf(err, errsz, "sock_diag: %s", strerror(errno));
        return AL_ERROR;
    }
    memset(&req, 0, sizeof(req));
    req.nlh.nlmsg_len = sizeof(req);
    req.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    req.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.nlh.nlmsg_seq = 1;
    req.r.sdiag_family = (uint8_t)family;
    req.r.sdiag_protocol = IPPROTO_TCP;
    req.r.idiag_states = 1u << TCP_LISTEN;
    if (sendto(fd, &req, sizeof(req), 0, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        snprintf(err, errsz, "sock_diag: %s", strerror(errno));
        goto out;
    }
    while (!done) {
        ssize_t          n = recv(fd, buf, sizeof(buf), 0);
        struct nlmsghdr *h = (struct nlmsghdr *)buf;

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            snprintf(err, errsz, "sock_diag: %s", n < 0 ? strerror(errno) : "end of data");
            goto out;
        }
        for (; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
            const struct inet_diag_msg *m = NLMSG_DATA(h);
            const struct rtattr        *at;
            struct px_laddr             them;
            int                         alen, v6only = 0;
            size_t                      k;

            if (h->nlmsg_type == NLMSG_DONE) {
                done = 1;
                break;
            }
            if (h->nlmsg_type == NLMSG_ERROR) {
                const struct nlmsgerr *e = NLMSG_DATA(h);

                snprintf(err, errsz, "sock_diag: %s", strerror(-e->error));
                goto out;
            }
            if (h->nlmsg_len < NLMSG_LENGTH(sizeof(*m)) || m->idiag_family != family)
                continue;
            for (k = 0; k < nown && own[k] != (ino_t)m->idiag_inode; k++)
                ;
            if (k < nown)
                continue; /* one of ours */
            at = (const struct rtattr *)(m + 1);
            alen = (int)(h->nlmsg_len - NLMSG_LENGTH(sizeof(*m)));
            for (; RTA_OK(at, alen); at = RTA_NEXT(at, alen)) {
                if (at->rta_type == INET_DIAG_SKV6ONLY && RTA_PAYLOAD(at) >= 1)
                    v6only = *(const uint8_t *)RTA_DATA(at);
            }
            px_laddr_set(&them, family, m->id.idiag_src, ntohs(m->id.idiag_sport), v6only);
            for (int i = 0; i < c->nlisten; i++) {
                char a[INET6_ADDRSTRLEN];

                if (!px_laddr_overlap(&ours[i], &them))
                    continue;
                inet_ntop(family, m->id.idiag_src, a, sizeof(a));
                snprintf(err, errsz,
                         "listen %s: address already in use by another process (its "
                         "listening socket on %s%s%s:%u, uid %u, covers it)",
                         c->listen[i].text, family == AF_INET6 ? "[" : "", a,
                         family == AF_INET6 ? "]" : "", (unsigned)them.port,
                         (unsigned)m->idiag_uid);
                *found = 1;
                rc = AL_OK;
                goto out;
            }
        }
    }
    rc = AL_OK;
out:
    close(fd);
    return rc;
}

int
px_listen_verify(const struct px_worker *w, int nworkers, const struct px_conf *c, char *err,
                 size_t errsz)
{
    struct px_laddr ours[PX_MAX_LISTENERS];
    ino_t           own[PX_MAX_LISTENERS * 64];
    ino_t          *op = own;
    size_t          nown = 0, cap = sizeof(own) / sizeof(own[0]);
    int             found = 0, rc = AL_OK, fams[2] = {AF_INET, AF_INET6};

    if ((size_t)nworkers * PX_MAX_LISTENERS > cap) {
        cap = (size_t)nworkers * PX_MAX_LISTENERS;
        op = al_calloc(cap, sizeof(*op));
        if (op == NULL) {
            snprintf(err, errsz, "out of memory");
            return AL_ERROR;
        }
    }
    for (int i = 0; i < c->nlisten; i++) {
        int       v6only = 0;
        socklen_t sl = sizeof(v6only);

        if (c->listen[i].addr.ss_family == AF_INET6 && nworkers > 0 && i < w[0].nlisteners)
            (void)getsockopt(w[0].listeners[i].fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &sl);
        px_laddr_from_sa(&ours[i], &c->listen[i].addr, v6only);
    }
    for (int i = 0; i < nworkers; i++) {
        for (int k = 0; k < w[i].nlisteners; k++) {
            struct stat st;

            if (w[i].listeners[k].fd >= 0 && fstat(w[i].listeners[k].fd, &st) == 0)
                op[nown++] = st.st_ino;
        }
    }
    for (int f = 0; f < 2 && !found; f++) {
        if (px_listen_diag(fams[f], op, nown, c, ours, &found, err, errsz) != AL_OK) {
            /* the probe before the binds still stands; only a start at the
             * same instant as another listener's goes unchecked */
            al_log_warnx("cannot list the host's TCP listeners to check that no other process "
                         "shares airlock's addresses (%s)",
                         err);
            break;
        }
    }
    if (found)
        rc = AL_ERROR;
    if (op != own)
        al_free(op);
    return rc;
}

static int
px_spare_fd_open(void)
{
    return open("/dev/null", O_RDONLY | O_CLOEXEC);
}

/* Failed accepts: one log line a second at most, for the whole process. */
static _Atomic int64_t  px_accept_logged_ms = -1000000;
static _Atomic uint64_t px_accept_unlogged;

static void
px_accept_failed(struct px_worker *w, int err, enum px_aerr why, int paused)
{
    struct timespec ts;
    int64_t         now, last;
    uint64_t        n;

    PX_MINC(accept_errors[why]);
    atomic_fetch_add_explicit(&px_accept_unlogged, 1, memory_order_relaxed);
    clock_gettime(CLOCK_MONOTONIC, &ts);
    now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    last = atomic_load_explicit(&px_accept_logged_ms, memory_order_relaxed);
    if (now - last < 1000 || !atomic_compare_exchange_strong(&px_accept_logged_ms, &last, now))
        return;
    n = atomic_exchange(&px_accept_unlogged, 0);
    al_log_warnx("accept on worker %d: %s (%llu failed accepts since the last such line)%s",
                 w->index, strerror(err), (unsigned long long)n,
                 paused ? "; listeners paused 100 ms" : "");
}

/* Out of descriptors: give up the spare one to take one waiting client off
 * the backlog, tell it why (forward listeners), close it, take the spare back. */
static void
px_worker_shed_one(struct px_listener *l)
{
    static const char why[] = "out of file descriptors";
    struct px_worker *w = l->worker;
    int               fd;

    if (w->spare_fd < 0)
        return;
    close(w->spare_fd);
    w->spare_fd = -1;
    fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
        PX_MINC(conns_refused);
        if (l->mode == PX_LISTEN_FORWARD) {
            struct al_dbuf d;
            char           in[4096];

            px_conn_count_status(503);
            al_dbuf_init(&d, 1024);
            if (px_http_error(&d, 503, "fd_exhausted", why) == AL_OK)
                (void)!send(fd, d.data, d.len, MSG_NOSIGNAL | MSG_DONTWAIT);
            al_dbuf_free(&d);
            (void)shutdown(fd, SHUT_WR);
            /* a request head already here is read, so close() sends a FIN
             * rather than a reset that could destroy the answer */
            (void)!recv(fd, in, sizeof(in), MSG_DONTWAIT);
        }
        close(fd);
    }
    w->spare_fd = px_spare_fd_open(); /* -1 when another thread took the slot: retried */
}

static void
px_worker_accept_resume_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct px_worker *w = t->data;

    (void)revents;
    w->accept_paused = 0;
    if (w->spare_fd < 0)
        w->spare_fd = px_spare_fd_open();
    if (w->draining)
        return;
    for (int i = 0; i < w->nlisteners; i++) {
        if (w->listeners[i].fd >= 0)
            ev_io_start(loop, &w->listeners[i].w);
    }
}

static void
px_worker_accept_pause(struct px_worker *w)
{
    if (w->accept_paused)
        return;
    for (int i = 0; i < w->nlisteners; i++)
        ev_io_stop(w->loop, &w->listeners[i].w);
    w->accept_paused = 1;
    ev_timer_set(&w->accept_pause, PX_ACCEPT_PAUSE_S, 0.);
    ev_timer_start(w->loop, &w->accept_pause);
}

static void
px_worker_accept_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct px_listener *l = io->data;

    (void)loop;
    (void)revents;
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage peer;
        socklen_t               pl = sizeof(peer);
        int fd = accept4(l->fd, (struct sockaddr *)&peer, &pl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        int err = errno;

        if (fd >= 0) {
            px_conn_accept(l->worker, fd, &peer, l->mode);
            continue;
        }
        switch (err) {
        case EAGAIN:
#if EWOULDBLOCK != EAGAIN
        case EWOULDBLOCK:
#endif
        case EINTR:
        case ECONNABORTED:
            return;
        case EMFILE:
        case ENFILE:
            px_worker_shed_one(l);
            px_worker_accept_pause(l->worker);
            px_accept_failed(l->worker, err, PX_AERR_FD, 1);
            return;
        case ENOBUFS:
        case ENOMEM:
            px_worker_accept_pause(l->worker);
            px_accept_failed(l->worker, err, PX_AERR_MEM, 1);
            return;
        case EPERM: /* one connection's trouble (a firewall, a protocol error): next */
        case EPROTO:
            px_accept_failed(l->worker, err, PX_AERR_OTHER, 0);
            continue;
        default: /* unknown: rest rather than spin on a listener that stays readable */
            px_worker_accept_pause(l->worker);
            px_accept_failed(l->worker, err, PX_AERR_OTHER, 1);
            return;
        }
    }
}

static void
px_worker_stop_listening(struct px_worker *w)
{
    if (w->loop != NULL)
        ev_timer_stop(w->loop, &w->accept_pause);
    w->accept_paused = 0;
    for (int i = 0; i < w->nlisteners; i++) {
        ev_io_stop(w->loop, &w->listeners[i].w);
        if (w->listeners[i].fd >= 0)
            close(w->listeners[i].fd);
        w->listeners[i].fd = -1;
    }
}

static void
px_worker_drain_timeout_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct px_worker *w = t->data;

    (void)revents;
    al_log_info("worker %d: drain timeout, closing %u connections", w->index, w->nconns);
    px_conns_close_all(w);
    ev_break(loop, EVBREAK_ONE);
}

static void
px_worker_wake_cb(struct ev_loop *loop, ev_async *a, int revents)
{
    struct px_worker *w = a->data;

    (void)revents;
    px_conns_audit_committed(w);
    if (atomic_exchange(&w->want_reload, 0)) {
        struct px_conf *nc = px_conf_current();

        px_conf_unref(w->conf);
        w->conf = nc; /* new connections use it; live ones keep theirs */
    }
    if (atomic_exchange(&w->want_drain, 0) && !w->draining) {
        w->draining = 1;
        px_worker_stop_listening(w);
        px_pool_clear(w);
        px_conns_drain(w);
        if (w->nconns == 0) {
            ev_break(loop, EVBREAK_ONE);
            return;
        }
        ev_timer_init(&w->drain_timer, px_worker_drain_timeout_cb,
                      (double)w->conf->limits.drain_timeout_s, 0.);
        w->drain_timer.data = w;
        ev_timer_start(loop, &w->drain_timer);
    }
}

int
px_worker_init(struct px_worker *w, int index, struct px_conf *conf, char *err, size_t errsz)
{
    struct px_dns_conf dc;

    memset(w, 0, sizeof(*w));
    pthread_mutex_init(&w->done_lock, NULL);
    w->index = index;
    w->spare_fd = -1;
    w->conf = px_conf_ref(conf);
    w->loop = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
    if (w->loop == NULL) {
        snprintf(err, errsz, "ev_loop_new failed");
        return AL_ERROR;
    }
    memset(&dc, 0, sizeof(dc));
    dc.overrides = conf->overrides;
    dc.noverrides = conf->noverrides;
    dc.timeout_ms = conf->dns_timeout_ms;
    dc.servers = (const char *const *)conf->dns_servers;
    dc.nservers = conf->ndns_servers;
    w->dns = px_dns_new(w->loop, &dc);
    if (w->dns == NULL) {
        snprintf(err, errsz, "DNS resolver setup failed");
        return AL_ERROR;
    }
    for (int i = 0; i < conf->nlisten; i++) {
        struct px_listener *l = &w->listeners[i];

        l->fd = px_listen_socket(&conf->listen[i], err, errsz);
        if (l->fd < 0)
            return AL_ERROR;
        l->mode = conf->listen[i].mode;
        l->worker = w;
        ev_io_init(&l->w, px_worker_accept_cb, l->fd, EV_READ);
        l->w.data = l;
        ev_io_start(w->loop, &l->w);
        w->nlisteners++;
    }
    ev_timer_init(&w->accept_pause, px_worker_accept_resume_cb, PX_ACCEPT_PAUSE_S, 0.);
    w->accept_pause.data = w;
    w->spare_fd = px_spare_fd_open();
    if (w->spare_fd < 0) {
        snprintf(err, errsz, "cannot open /dev/null (spare descriptor): %s", strerror(errno));
        return AL_ERROR;
    }
    ev_async_init(&w->wake, px_worker_wake_cb);
    w->wake.data = w;
    ev_async_start(w->loop, &w->wake);
    ev_prepare_init(&w->aud_release, px_worker_audit_release);
    w->aud_release.data = w;
    ev_prepare_start(w->loop, &w->aud_release);
    return AL_OK;
}

static void *
px_worker_main(void *arg)
{
    struct px_worker *w = arg;

    ev_run(w->loop, 0);
    px_conns_close_all(w);
    px_pool_clear(w);
    return NULL;
}

int
px_worker_start(struct px_worker *w)
{
    char name[16];

    if (pthread_create(&w->thread, NULL, px_worker_main, w) != 0)
        return AL_ERROR;
    snprintf(name, sizeof(name), "airlock-w%d", w->index); /* visible in top -H, perf */
    (void)pthread_setname_np(w->thread, name);
    return AL_OK;
}

void
px_worker_signal(struct px_worker *w, int drain, int reload)
{
    if (drain)
        atomic_store(&w->want_drain, 1);
    if (reload)
        atomic_store(&w->want_reload, 1);
    ev_async_send(w->loop, &w->wake);
}

void
px_worker_destroy(struct px_worker *w)
{
    if (w->loop == NULL && w->conf == NULL)
        return;
    px_worker_stop_listening(w);
    if (w->spare_fd >= 0)
        close(w->spare_fd);
    w->spare_fd = -1;
    px_conns_audit_discard(w);
    px_dns_free(w->dns);
    w->dns = NULL;
    sec_dbuf_wipe(&w->filter_out);
    if (w->loop != NULL)
        ev_loop_destroy(w->loop);
    w->loop = NULL;
    px_conf_unref(w->conf);
    w->conf = NULL;
}
