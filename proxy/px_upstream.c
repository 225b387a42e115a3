/*
 * px_upstream.c - where an exchange's upstream comes from: the tunnel's
 * kept connection, this connection's kept plain one, the worker's
 * keep-alive pool, or a fresh connect to the addresses airlock resolved
 * itself (each through the address guard, px_decide_addrs); and where it
 * goes after a clean exchange: kept, parked in the pool, or closed. Every
 * function returns; the machine (px_conn.c) picks the states, arms the
 * watchers and answers refusals.
 */
#include "px_half.h"
#include "px_phase.h"

#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

/* A pooled upstream (plain, or TLS with `ssl`) for this request. Its peer
 * was checked under the policy of its time, so the guard runs again. */
static int
px_upstream_take(struct px_conn *c, int fd, const struct sockaddr_storage *peer, SSL *ssl)
{
    struct px_exch *x = c->x;

    PX_MINC(pool_hits);
    x->from_pool = 1;
    x->addrs.naddrs = 1;
    x->addrs.addrs[0] = *peer;
    x->addr_idx = 0;
    if (px_decide_addrs(c) != AL_OK) {
        if (ssl != NULL)
            SSL_free(ssl);
        close(fd);
        return AL_DECLINED;
    }
    px_half_attach(&c->up, fd);
    c->up.ssl = ssl;
    /* A held request keeps the hold's bound: at 64 KiB a body between that
     * and the hold's cap filled the queue, and the hold was either released
     * before the scan ended or, with no client bytes left to feed, never. */
    c->up.out.max = x->hold_up ? PX_HOLD_QUEUE_BYTES : PX_BUF_HIGH_BYTES;
    return AL_OK;
}

int
px_upstream_reuse(struct px_conn *c)
{
    struct px_exch *x = c->x;

    if (c->mitm && c->up_kept && c->up.fd >= 0 && !x->no_pool) {
        x->from_pool = 1; /* the tunnel's upstream, kept from the previous request */
        c->up_kept = 0;
        return AL_OK;
    }
    if (!c->mitm && c->up_kept) {
        /* The previous request's plain upstream, still on this connection:
         * the same destination takes it as it is (no pool round trip, no
         * watcher restarted); another one parks it for whoever wants it. */
        if (!x->is_connect && !x->want_upgrade && !x->no_pool && !x->target.tls && c->up.fd >= 0 &&
            strcmp(x->kept_key, x->pool_key) == 0) {
            c->up_kept = 0;
            PX_MINC(pool_hits);
            x->from_pool = 1;
            x->addrs.naddrs = 1;
            x->addrs.addrs[0] = x->kept_peer;
            x->addr_idx = 0;
            if (px_decide_addrs(c) != AL_OK) {
                px_half_close(c, &c->up);
                return AL_DECLINED;
            }
            return AL_OK;
        }
        px_upstream_park(c);
    }
    if (c->mitm && x->target.tls && !x->no_pool && c->up.fd < 0 && c->worker->rt.tls_up != NULL) {
        struct sockaddr_storage peer;
        SSL                    *ssl = NULL;
        int fd = px_pool_get_tls(c->worker, x->pool_key, c->worker->rt.tls_up, &peer, &ssl);

        if (fd >= 0) /* a verified upstream another tunnel to this host parked */
            return px_upstream_take(c, fd, &peer, ssl);
    }
    if (!x->is_connect && !x->want_upgrade && !x->no_pool && !x->target.tls) {
        struct sockaddr_storage peer;
        int                     fd = px_pool_get(c->worker, x->pool_key, &peer);

        if (fd >= 0)
            return px_upstream_take(c, fd, &peer, NULL);
    }
    return AL_AGAIN;
}

int
px_upstream_resolved(struct px_conn *c, const struct px_dns_result *res)
{
    struct px_exch *x = c->x;

    if (res != &x->addrs)
        x->addrs = *res;
    if (res->err == PX_DNS_TIMEOUT)
        return px_refuse_upstream(c, PX_UERR_DNS, 502, "dns_timeout", x->target.host);
    if (res->err == PX_DNS_NOTFOUND || (res->err == PX_DNS_OK && res->naddrs == 0))
        return px_refuse_upstream(c, PX_UERR_DNS, 502, "dns_not_found", x->target.host);
    if (res->err != PX_DNS_OK)
        return px_refuse_upstream(c, PX_UERR_DNS, 502, "dns_failed", x->target.host);
    /* Policy's address guard: only answers the decision may reach are kept. */
    if (px_decide_addrs(c) != AL_OK)
        return AL_DECLINED;
    x->addr_idx = 0;
    return AL_OK;
}

static int
px_upstream_failed(struct px_conn *c, int err)
{
    if (err == ECONNREFUSED)
        return px_refuse_upstream(c, PX_UERR_REFUSED, 502, "upstream_refused", NULL);
    return px_refuse_upstream(c, PX_UERR_OTHER, 502, "upstream_unreachable", strerror(err));
}

int
px_upstream_connect(struct px_conn *c)
{
    struct px_exch *x = c->x;
    int             last_err = ECONNREFUSED;

    while (x->addr_idx < x->addrs.naddrs) {
        struct sockaddr_storage *ss = &x->addrs.addrs[x->addr_idx];
        socklen_t                sl =
            ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
        int one = 1;
        int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

        if (fd < 0) {
            last_err = errno;
            al_log_warn("conn %llu: socket", (unsigned long long)c->id);
            break;
        }
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (connect(fd, (struct sockaddr *)ss, sl) == 0 || errno == EINPROGRESS) {
            px_half_attach(&c->up, fd);
            return AL_AGAIN;
        }
        last_err = errno;
        close(fd);
        x->addr_idx++;
    }
    return px_upstream_failed(c, last_err);
}

int
px_upstream_connected(struct px_conn *c)
{
    struct px_exch *x = c->x;
    int             err = 0, rc;
    socklen_t       el = sizeof(err);
    struct al_bufq  keep;

    if (getsockopt(c->up.fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0)
        err = errno;
    if (err == 0) {
        PX_MINC(pool_misses);
        return AL_OK;
    }
    al_log_debug("conn %llu: connect attempt %d failed: %s", (unsigned long long)c->id, x->addr_idx,
                 strerror(err));
    /* Keep the queued request head: it moves to the next attempt's socket. */
    keep = c->up.out;
    al_bufq_init(&c->up.out, PX_BUF_HIGH_BYTES);
    px_half_close(c, &c->up);
    x->addr_idx++;
    if (x->addr_idx >= x->addrs.naddrs) {
        al_bufq_free(&keep);
        return px_upstream_failed(c, err);
    }
    rc = px_upstream_connect(c);
    al_bufq_free(&c->up.out);
    c->up.out = keep;
    return rc;
}

void
px_upstream_kept_readable(struct px_conn *c)
{
    if (c->up.ssl != NULL) {
        char   buf[512];
        size_t got = 0;

        ERR_clear_error();
        if (SSL_read_ex(c->up.ssl, buf, sizeof(buf), &got) <= 0 &&
            SSL_get_error(c->up.ssl, 0) == SSL_ERROR_WANT_READ) {
            c->up.tls_want = EV_READ;
            return;
        }
        ERR_clear_error();
    }
    al_log_debug("conn %llu: kept upstream closed or spoke out of turn: dropped",
                 (unsigned long long)c->id);
    px_half_close(c, &c->up);
    c->up_kept = 0;
}

void
px_upstream_park(struct px_conn *c)
{
    struct px_half *h = &c->up;

    if (c->up_kept && h->fd >= 0 && !c->mitm && h->ssl == NULL && c->x != NULL) {
        /* bytes already in up.out are the next request's: they stay */
        ev_io_stop(c->worker->loop, &h->rio);
        ev_io_stop(c->worker->loop, &h->wio);
        px_pool_put(c->worker, c->x->kept_key, h->fd, &c->x->kept_peer);
        h->fd = -1;
    } else if (c->up_kept && h->fd >= 0 && c->mitm && h->ssl != NULL && al_bufq_len(&h->out) == 0 &&
               h->tls_want != EV_WRITE && !SSL_has_pending(h->ssl)) {
        struct sockaddr_storage peer;
        socklen_t               sl = sizeof(peer);
        char                    key[PX_HOST_MAX + 8];

        if (getpeername(h->fd, (struct sockaddr *)&peer, &sl) == 0) {
            px_h1_pool_key(&c->mitm_target, key, sizeof(key));
            ev_io_stop(c->worker->loop, &h->rio);
            ev_io_stop(c->worker->loop, &h->wio);
            px_pool_put_tls(c->worker, key, h->fd, h->ssl, &peer);
            h->fd = -1;
            h->ssl = NULL;
        }
    }
    if (c->up_kept && h->fd >= 0)
        px_half_close(c, h);
    c->up_kept = 0;
}
