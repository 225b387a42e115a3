/*
 * px_pool.c - per-worker keep-alive pool of idle upstream connections,
 * keyed by "host:port" (the normalised request authority, so a pooled
 * connection is only ever reused for the same name it was opened for).
 *
 * Each idle entry watches its fd for readability: an idle upstream that
 * sends anything or closes is dropped at once, so a reused connection is
 * almost never stale. Entries expire after PX_POOL_IDLE_S; the pool holds at
 * most PX_POOL_MAX_PER_WORKER entries (the oldest goes first).
 *
 * Verified TLS upstreams of intercepted tunnels are parked here too (with
 * their SSL, after the tunnel idled PX_IDLE_TRIM_S): any tunnel to the same
 * host:port may take one, never a plain-HTTP request (and the reverse). At
 * most PX_POOL_TLS_PER_HOST of them per host:port, so a thousand idle
 * tunnels do not hold a thousand upstream TLS connections.
 */
#include "px.h"

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

struct px_pool_entry {
    struct px_pool_entry   *prev, *next; /* most recent first */
    struct px_worker       *worker;
    int                     fd;
    SSL                    *ssl; /* a parked TLS upstream (owned), or NULL */
    ev_io                   rio;
    ev_timer                idle;
    struct sockaddr_storage peer;
    char                    key[PX_HOST_MAX + 8];
};

static void
px_pool_unlink(struct px_worker *w, struct px_pool_entry *e)
{
    ev_io_stop(w->loop, &e->rio);
    ev_timer_stop(w->loop, &e->idle);
    if (e->prev != NULL)
        e->prev->next = e->next;
    else
        w->pool = e->next;
    if (e->next != NULL)
        e->next->prev = e->prev;
    w->npool--;
}

static void
px_pool_drop(struct px_worker *w, struct px_pool_entry *e)
{
    px_pool_unlink(w, e);
    SSL_free(e->ssl);
    close(e->fd);
    al_free(e);
}

static void
px_pool_readable_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct px_pool_entry *e = io->data;

    (void)loop;
    (void)revents;
    if (e->ssl != NULL) {
        char   buf[512];
        size_t got = 0;

        /* A record without data (a session ticket) leaves it reusable. */
        ERR_clear_error();
        if (SSL_read_ex(e->ssl, buf, sizeof(buf), &got) <= 0 &&
            SSL_get_error(e->ssl, 0) == SSL_ERROR_WANT_READ)
            return;
        ERR_clear_error();
    }
    px_pool_drop(e->worker, e); /* EOF or unsolicited bytes: not reusable */
}

static void
px_pool_idle_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct px_pool_entry *e = t->data;

    (void)loop;
    (void)revents;
    px_pool_drop(e->worker, e);
}

int
px_pool_get(struct px_worker *w, const char *key, struct sockaddr_storage *peer)
{
    return px_pool_get_tls(w, key, NULL, peer, NULL);
}

/* The pool's invariant, checked as a connection leaves it: nothing arrived
 * since its last message ended (the readable watcher drops such an entry,
 * but bytes can land in this very loop iteration). A plain socket with
 * unread bytes, or a TLS one with decrypted bytes held, would hand the next
 * request someone else's answer. */
static int
px_pool_entry_quiet(const struct px_pool_entry *e)
{
    int n = 0;

    if (e->ssl != NULL)
        return !SSL_has_pending(e->ssl);
    return ioctl(e->fd, FIONREAD, &n) == 0 && n == 0;
}

int
px_pool_get_tls(struct px_worker *w, const char *key, SSL_CTX *ctx, struct sockaddr_storage *peer,
                SSL **ssl)
{
    struct px_pool_entry *next;

    for (struct px_pool_entry *e = w->pool; e != NULL; e = next) {
        int fd = e->fd;

        next = e->next;
        if (strcmp(e->key, key) != 0 || (e->ssl != NULL) != (ssl != NULL))
            continue;
        if (e->ssl != NULL && SSL_get_SSL_CTX(e->ssl) != ctx)
            continue; /* verified under another trust store (before a reload) */
        if (!px_pool_entry_quiet(e)) {
            al_log_debug("pool: %s spoke while parked: dropped", e->key);
            px_pool_drop(w, e);
            continue;
        }
        *peer = e->peer;
        if (ssl != NULL)
            *ssl = e->ssl;
        px_pool_unlink(w, e);
        al_free(e);
        return fd;
    }
    return -1;
}

void
px_pool_put(struct px_worker *w, const char *key, int fd, const struct sockaddr_storage *peer)
{
    px_pool_put_tls(w, key, fd, NULL, peer);
}

void
px_pool_put_tls(struct px_worker *w, const char *key, int fd, SSL *ssl,
                const struct sockaddr_storage *peer)
{
    struct px_pool_entry *e;

    if (w->draining) {
        SSL_free(ssl);
        close(fd);
        return;
    }
    if (ssl != NULL) {
        struct px_pool_entry *oldest = NULL;
        int                   n = 0;

        for (e = w->pool; e != NULL; e = e->next) {
            if (e->ssl != NULL && strcmp(e->key, key) == 0) {
                n++;
                oldest = e;
            }
        }
        if (n >= PX_POOL_TLS_PER_HOST)
            px_pool_drop(w, oldest);
    }
    while (w->npool >= PX_POOL_MAX_PER_WORKER) {
        struct px_pool_entry *last = w->pool;

        while (last->next != NULL)
            last = last->next;
        px_pool_drop(w, last);
    }
    e = al_calloc(1, sizeof(*e));
    if (e == NULL) {
        SSL_free(ssl);
        close(fd);
        return;
    }
    e->worker = w;
    e->fd = fd;
    e->ssl = ssl;
    e->peer = *peer;
    snprintf(e->key, sizeof(e->key), "%s", key);
    ev_io_init(&e->rio, px_pool_readable_cb, fd, EV_READ);
    e->rio.data = e;
    ev_timer_init(&e->idle, px_pool_idle_cb, PX_POOL_IDLE_S, 0.);
    e->idle.data = e;
    ev_io_start(w->loop, &e->rio);
    ev_timer_start(w->loop, &e->idle);
    e->next = w->pool;
    if (w->pool != NULL)
        w->pool->prev = e;
    w->pool = e;
    w->npool++;
}

void
px_pool_clear(struct px_worker *w)
{
    while (w->pool != NULL)
        px_pool_drop(w, w->pool);
}
