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
 */
#include "px_worker.h"

#include "px_conn.h"
#include "px_http.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int
px_listen_socket(const struct px_listen_conf *lc, char *err, size_t errsz)
{
    int one = 1;
    int fd = socket(lc->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0) {
        snprintf(err, errsz, "socket: %s", strerror(errno));
        return -1;
    }
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0 ||
        bind(fd, (const struct sockaddr *)&lc->addr, lc->addrlen) != 0 || listen(fd, 1024) != 0) {
        snprintf(err, errsz, "cannot listen on %s: %s", lc->text, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
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
    if (w->loop != NULL)
        ev_loop_destroy(w->loop);
    w->loop = NULL;
    px_conf_unref(w->conf);
    w->conf = NULL;
}
