/*
 * px_half.c - one side of a connection: a socket, or TLS over it. Reads,
 * writes its output queue, runs handshake steps and splices an opaque
 * tunnel; the only place SSL_read/SSL_write run for a connection. Client
 * halves read the socket into a memory BIO (so bytes that arrived with the
 * CONNECT head, or a ClientHello a transparent listener peeked, go into the
 * TLS engine the same way) until a websocket's 101 switches them to a socket
 * BIO (px_half_tls_direct); upstream halves use a socket BIO. A half knows
 * nothing of states: the machine (px_conn.c) decides what to call when.
 */
#include "px_half.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

void
px_half_init(struct px_half *h, struct px_conn *c, int fd,
             void (*cb)(struct ev_loop *, ev_io *, int))
{
    h->fd = fd;
    h->conn = c;
    h->pipe[0] = h->pipe[1] = -1;
    ev_io_init(&h->rio, cb, fd, EV_READ);
    ev_io_init(&h->wio, cb, fd, EV_WRITE);
    h->rio.data = h;
    h->wio.data = h;
}

void
px_half_attach(struct px_half *h, int fd)
{
    h->fd = fd;
    h->pipe[0] = h->pipe[1] = -1;
    ev_io_set(&h->rio, fd, EV_READ);
    ev_io_set(&h->wio, fd, EV_WRITE);
}

void
px_half_close(struct px_conn *c, struct px_half *h)
{
    ev_io_stop(c->worker->loop, &h->rio);
    ev_io_stop(c->worker->loop, &h->wio);
    if (h->ssl != NULL) {
        /* A connection whose handshake completed ends without a fatal
         * alert here (one sent or received already removed its session):
         * mark it shut down so SSL_free keeps the session in the server
         * cache. Freed unmarked, OpenSSL drops it, and a TLS 1.2 client's
         * session id never resumes once the tunnel it came from closed. */
        if (SSL_is_init_finished(h->ssl))
            SSL_set_shutdown(h->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
        SSL_free(h->ssl); /* frees its BIOs */
    }
    h->ssl = NULL;
    h->rbio = NULL;
    h->tls_want = 0;
    h->plain_out = 0;
    if (h->fd >= 0)
        close(h->fd);
    h->fd = -1;
    for (int i = 0; i < 2; i++) {
        if (h->pipe[i] >= 0)
            close(h->pipe[i]);
        h->pipe[i] = -1;
    }
    h->inpipe = 0;
    h->eof = h->shut = 0;
    al_bufq_free(&h->out);
}

/* Writes as much of h->out as the socket takes. AL_OK when empty, AL_AGAIN
 * when bytes remain, AL_ERROR when the peer is gone. */
int
px_half_flush(struct px_conn *c, struct px_half *h)
{
    while (al_bufq_len(&h->out) > 0) {
        size_t      n;
        const char *p = al_bufq_peek(&h->out, &n);
        ssize_t     w;

        if (p == NULL)
            break;
        if (h->ssl != NULL && h->plain_out == 0) {
            size_t done = 0;
            int    err;

            px_tls_clear_errors();
            if (SSL_write_ex(h->ssl, p, n, &done) <= 0) {
                err = SSL_get_error(h->ssl, 0);
                if (err == SSL_ERROR_WANT_WRITE || err == SSL_ERROR_WANT_READ) {
                    h->tls_want = err == SSL_ERROR_WANT_WRITE ? EV_WRITE : EV_READ;
                    return AL_AGAIN;
                }
                return AL_ERROR;
            }
            h->tls_want = 0;
            w = (ssize_t)done;
        } else {
            if (h->plain_out > 0 && n > h->plain_out)
                n = h->plain_out; /* e.g. "200 Connection established" before TLS */
            w = send(h->fd, p, n, MSG_NOSIGNAL);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    return AL_AGAIN;
                return AL_ERROR;
            }
            h->plain_out -= h->plain_out > 0 ? (size_t)w : 0;
        }
        al_bufq_skip(&h->out, (size_t)w);
        c->last_activity = ev_now(c->worker->loop);
        if (h == &c->cl)
            PX_MADD(bytes_down, w);
        else
            PX_MADD(bytes_up, w);
    }
    return AL_OK;
}

/*
 * Memory BIO: pulls more ciphertext from the socket into h->rbio. Returns 1
 * (bytes fed), 0 at EOF, -1 when it would block, -2 on error. A read shorter
 * than the buffer emptied the socket's queue: until the loop polls again the
 * next attempt answers "would block" without a recv(2) that can only say
 * EAGAIN (level-triggered polling reports bytes that arrive meanwhile).
 */
static int
px_half_fill_rbio(struct px_conn *c, struct px_half *h)
{
    char         raw[PX_READ_BYTES];
    unsigned int iter = ev_iteration(c->worker->loop);
    ssize_t      r;

    if (h->rdrained && h->rdrained_iter == iter)
        return -1;
    h->rdrained = 0;
    r = recv(h->fd, raw, sizeof(raw), 0);
    if (r < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? -1 : -2;
    if (r == 0)
        return 0;
    c->last_activity = ev_now(c->worker->loop);
    if ((size_t)r < sizeof(raw)) {
        h->rdrained = 1;
        h->rdrained_iter = iter;
    }
    return BIO_write(h->rbio, raw, (int)r) == (int)r ? 1 : -2;
}

/*
 * Reads decrypted bytes from a half. Client halves read the socket into a
 * memory BIO first (bytes that arrived with the CONNECT head are fed in the
 * same way); upstream halves use a socket BIO. Returns >0 bytes, 0 at EOF,
 * -1 when it would block (h->tls_want says on what), -2 on error.
 */
ssize_t
px_half_recv(struct px_conn *c, struct px_half *h, char *buf, size_t n)
{
    int need_fill;

    if (h->ssl == NULL) {
        ssize_t r = recv(h->fd, buf, n, 0);

        if (r < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? -1 : -2;
        return r;
    }
    /* Nothing to decrypt yet: read the socket first rather than let a
     * failing SSL_read find that out (it costs a record buffer). */
    need_fill = h->rbio != NULL && BIO_ctrl_pending(h->rbio) == 0 && !SSL_has_pending(h->ssl);
    for (;;) {
        size_t got = 0;
        int    err;

        if (need_fill) {
            h->tls_want = EV_READ;
            switch (px_half_fill_rbio(c, h)) {
            case -1:
                return -1;
            case -2:
                return -2;
            case 0:
                BIO_set_mem_eof_return(h->rbio, 0);
                break;
            }
        }
        px_tls_clear_errors();
        errno = 0;
        if (SSL_read_ex(h->ssl, buf, n, &got) > 0) {
            h->tls_want = 0;
            return (ssize_t)got;
        }
        err = SSL_get_error(h->ssl, 0);
        if (err == SSL_ERROR_ZERO_RETURN)
            return 0;
        if (err == SSL_ERROR_WANT_WRITE) {
            h->tls_want = EV_WRITE;
            return -1;
        }
        if (err != SSL_ERROR_WANT_READ) {
            /* With SSL_OP_IGNORE_UNEXPECTED_EOF a plain close is
             * ZERO_RETURN; a socket error (a reset) on the upstream's socket
             * BIO is an error, not an end: a close-delimited body cut by a
             * reset must not look complete. */
            if (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)
                return h->rbio == NULL && errno != 0 ? -2 : 0;
            return -2;
        }
        h->tls_want = EV_READ;
        if (h->rbio == NULL)
            return -1;
        need_fill = 1;
    }
}

/*
 * A client half's TLS reads its socket itself from now on, as an upstream
 * half's does: a socket BIO with read-ahead (one read(2) per record, or
 * several) in place of the memory BIO the handshake and the head were fed
 * through. Each read then skips a copy, and the memory BIO's buffer (~1.4
 * KiB) is not kept for the connection's life. Only once the memory BIO is
 * empty (AL_AGAIN until then); AL_OK when done or nothing to do.
 */
int
px_half_tls_direct(struct px_half *h)
{
    BIO *b;

    if (h->ssl == NULL || h->rbio == NULL)
        return AL_OK;
    if (BIO_ctrl_pending(h->rbio) > 0)
        return AL_AGAIN;
    b = BIO_new_socket(h->fd, BIO_NOCLOSE);
    if (b == NULL)
        return AL_ERROR;
    SSL_set0_rbio(h->ssl, b); /* frees the memory BIO */
    SSL_set_read_ahead(h->ssl, 1);
    h->rbio = NULL;
    h->rdrained = 0;
    return AL_OK;
}

/* Does the half hold decrypted or undecrypted bytes no socket event will announce? */
int
px_half_tls_buffered(const struct px_half *h)
{
    return h->ssl != NULL &&
           (SSL_has_pending(h->ssl) || (h->rbio != NULL && BIO_ctrl_pending(h->rbio) > 0));
}

/* One step of a TLS handshake. AL_OK done, AL_AGAIN waiting, AL_ERROR failed. */
int
px_half_handshake(struct px_conn *c, struct px_half *h)
{
    for (;;) {
        int err;

        px_tls_clear_errors();
        if (SSL_do_handshake(h->ssl) == 1) {
            h->tls_want = 0;
            return AL_OK;
        }
        err = SSL_get_error(h->ssl, 0);
        if (err == SSL_ERROR_WANT_WRITE) {
            h->tls_want = EV_WRITE;
            return AL_AGAIN;
        }
        if (err != SSL_ERROR_WANT_READ)
            return AL_ERROR;
        h->tls_want = EV_READ;
        if (h->rbio == NULL)
            return AL_AGAIN;
        switch (px_half_fill_rbio(c, h)) {
        case -1:
            return AL_AGAIN;
        case -2:
        case 0:
            return AL_ERROR;
        }
    }
}

#define PX_SPLICE_BYTES 65536 /* asked of each splice from a socket (a pipe's default size) */

/* One direction of an opaque tunnel: src's bytes go through src's pipe to dst. */
int
px_half_pump(struct px_conn *c, struct px_half *src, struct px_half *dst)
{
    int rc = px_half_flush(c, dst); /* bytes queued before the tunnel started */
    int drained = 0;

    if (rc == AL_ERROR)
        return AL_ERROR;
    if (rc == AL_AGAIN)
        return AL_OK;
    for (;;) {
        ssize_t n;

        if (src->inpipe > 0) {
            n = splice(src->pipe[0], NULL, dst->fd, NULL, src->inpipe,
                       SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
            if (n < 0) {
                if (errno == EAGAIN || errno == EINTR)
                    return AL_OK;
                return AL_ERROR;
            }
            src->inpipe -= (size_t)n;
            if (dst == &c->cl) {
                PX_MADD(bytes_down, n);
                c->tun_down += (uint64_t)n;
            } else {
                PX_MADD(bytes_up, n);
                c->tun_up += (uint64_t)n;
            }
            c->last_activity = ev_now(c->worker->loop);
            continue;
        }
        if (src->eof) {
            if (!dst->shut) {
                (void)shutdown(dst->fd, SHUT_WR);
                dst->shut = 1;
            }
            return AL_OK;
        }
        if (drained)
            return AL_OK;
        if (src->pipe[0] < 0 && pipe2(src->pipe, O_NONBLOCK | O_CLOEXEC) != 0) {
            al_log_warn("conn %llu: pipe2", (unsigned long long)c->id);
            return AL_ERROR;
        }
        n = splice(src->fd, NULL, src->pipe[1], NULL, PX_SPLICE_BYTES,
                   SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return AL_OK;
            return AL_ERROR;
        }
        if (n == 0)
            src->eof = 1;
        /* Less than asked for: the socket had no more. Once it is passed on,
         * the level-triggered watcher says when there is more, instead of a
         * further splice that would only find EAGAIN (as nginx's ready flag). */
        drained = n < PX_SPLICE_BYTES;
        src->inpipe += (size_t)n;
        c->last_activity = ev_now(c->worker->loop);
    }
}

/* Reads into buf[*len..cap), *len grows; TLS is drained of what it holds
 * (a full buffer with bytes still held sets tls_more). 1 bytes added, 0 EOF,
 * -1 nothing now, -2 error. */
static int
px_half_read_into(struct px_conn *c, struct px_half *h, char *buf, size_t cap, size_t *len)
{
    ssize_t n;

    /* A read that was resumed because TLS bytes were held (tls_more) is owed
     * nothing more once it runs: if it finds none (the socket was drained in
     * this loop iteration), a flag left set would have the machine feed this
     * event again in the same iteration, forever. It is set again below when
     * the buffer fills with bytes still held. */
    h->tls_more = 0;
    n = px_half_recv(c, h, buf + *len, cap - *len);
    if (n <= 0)
        return (int)n;
    *len += (size_t)n;
    /* TLS: drain what the memory BIO holds, or no socket event will say so. */
    while (h->ssl != NULL) {
        if (*len >= cap) {
            h->tls_more = 1; /* resumed by the machine when there is room */
            break;
        }
        /* Nothing decrypted or undecrypted held: a further read would only
         * find the socket empty (and cost OpenSSL a record buffer); the
         * level-triggered watcher reports new bytes. */
        if (!px_half_tls_buffered(h))
            break;
        n = px_half_recv(c, h, buf + *len, cap - *len);
        if (n <= 0)
            break; /* EOF or an error shows again on the next event */
        *len += (size_t)n;
    }
    return 1;
}

int
px_half_read_cin(struct px_conn *c, const char **why)
{
    int n;

    if (c->cin == NULL) {
        c->cin = al_malloc(PX_CIN_BYTES);
        if (c->cin == NULL) {
            *why = "no memory";
            return AL_ERROR;
        }
    }
    n = px_half_read_into(c, &c->cl, c->cin, PX_CIN_BYTES, &c->cin_len);
    if (n == -1)
        return AL_AGAIN;
    if (n == -2) {
        *why = "client read error";
        return AL_ERROR;
    }
    c->last_activity = ev_now(c->worker->loop);
    if (n == 0) {
        c->cl.eof = 1;
        return AL_DONE;
    }
    return AL_OK;
}
