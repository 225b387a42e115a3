/*
 * px_conn_tls.c - TLS on a connection's halves and interception.
 *
 * Client halves read the socket into a memory BIO (so bytes that arrived with
 * the CONNECT head, or a ClientHello a transparent listener peeked, go into
 * the TLS engine the same way); upstream halves use a socket BIO. An allowed
 * CONNECT that airlock intercepts is answered in the clear, then served over
 * TLS with a leaf minted for its host (the SNI must name the same host);
 * every request inside is parsed, decided and audited on its own, and the
 * upstream TLS connection (always verified) is opened per the first inner
 * request and kept while reusable.
 */
#include "px_ca.h"
#include "px_conn.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

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

/* ---- interception -------------------------------------------------------- */

/* TCP to the upstream is up; start TLS (verified: CA, name, TLS >= 1.2). */
void
px_conn_tls_up_start(struct px_conn *c)
{
    struct px_exch *x = c->x;

    c->up.ssl = px_tls_up != NULL ? SSL_new(px_tls_up) : NULL;
    if (c->up.ssl == NULL || SSL_set_fd(c->up.ssl, c->up.fd) != 1 ||
        px_tls_upstream_prepare(c->up.ssl, x->target.host, x->target.port,
                                x->target.kind != PX_HOST_NAME) != AL_OK) {
        px_conn_upstream_error(c, PX_UERR_OTHER, 502, "upstream_tls_failed", "TLS setup");
        return;
    }
    SSL_set_mode(c->up.ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_set_options(c->up.ssl, SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_set_connect_state(c->up.ssl);
    px_conn_set_state(c, PX_ST_TLS_UP);
    px_conn_tls_up_step(c);
}

void
px_conn_tls_up_step(struct px_conn *c)
{
    int rc = px_half_handshake(c, &c->up);

    if (rc == AL_AGAIN) {
        px_conn_update_io(c);
        return;
    }
    if (rc != AL_OK) {
        const char *why = px_tls_verify_error(c->up.ssl);

        PX_MINC(tls_failures);
        px_conn_upstream_error(c, PX_UERR_OTHER, 502, why != NULL ? why : "upstream_tls_failed",
                               c->x->target.host);
        return;
    }
    PX_MINC(tls_upstream_handshakes);
    px_conn_upstream_ready(c);
}

/*
 * An allowed CONNECT that airlock intercepts: answer 200 in the clear, then
 * speak TLS to the client with a leaf minted for the CONNECT host (or its
 * SNI, which must name the same host). Every request inside is parsed,
 * decided, injected and audited on its own; the upstream connection is
 * opened (and verified) per the first inner request and kept while reusable.
 */
void
px_conn_mitm_start(struct px_conn *c)
{
    struct px_exch   *x = c->x;
    static const char ok[] = "HTTP/1.1 200 Connection established\r\n\r\n";
    BIO              *wbio = NULL;

    if (px_tls_srv == NULL) {
        px_conn_deny(c, 403, "interception_unavailable", "no CA configured (ca.dir)", NULL);
        return;
    }
    c->mitm = 1;
    c->mitm_target = x->target;
    c->mitm_target.path = "";
    c->mitm_target.path_len = 0;
    c->mitm_target.tls = 1;
    snprintf(c->tun_sandbox, sizeof(c->tun_sandbox), "%s", x->sandbox);
    snprintf(c->tun_session, sizeof(c->tun_session), "%s", x->session);
    snprintf(c->tun_tool_call, sizeof(c->tun_tool_call), "%s", x->tool_call);
    c->cl.ssl = SSL_new(px_tls_srv);
    c->cl.rbio = BIO_new(BIO_s_mem());
    wbio = BIO_new_socket(c->cl.fd, BIO_NOCLOSE);
    if (c->cl.ssl == NULL || c->cl.rbio == NULL || wbio == NULL ||
        px_tls_set_default_host(c->cl.ssl, x->target.host, x->target.kind != PX_HOST_NAME, 1) !=
            AL_OK) {
        BIO_free(c->cl.rbio);
        BIO_free(wbio);
        c->cl.rbio = NULL;
        SSL_free(c->cl.ssl);
        c->cl.ssl = NULL;
        px_conn_fail(c, 500, "internal", "TLS setup");
        return;
    }
    SSL_set_bio(c->cl.ssl, c->cl.rbio, wbio); /* the SSL owns both now */
    SSL_set_mode(c->cl.ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_set_options(c->cl.ssl, SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_set_accept_state(c->cl.ssl);
    /* A ClientHello that came with the CONNECT head goes into the BIO. */
    if (c->cin_len > 0 && BIO_write(c->cl.rbio, c->cin, (int)c->cin_len) != (int)c->cin_len) {
        px_conn_close(c, "no memory");
        return;
    }
    c->cin_len = 0;
    al_safefree(c->cin); /* the inner requests get a buffer when they come */
    if (!x->silent_tunnel) {
        if (al_bufq_write(&c->cl.out, ok, sizeof(ok) - 1) != AL_OK) {
            px_conn_close(c, "no memory");
            return;
        }
        c->cl.plain_out = sizeof(ok) - 1;
    }
    al_log_info("conn %llu: CONNECT %s:%u intercepted", (unsigned long long)c->id, x->target.host,
                x->target.port);
    px_conn_count_status(200);
    x->status = 200;
    px_conn_audit(c, NULL); /* the CONNECT's own row; inner requests get theirs */
    px_exch_reset(x, c->conf->limits.header_bytes);
    px_conn_parser_reset(c); /* the inner stream starts a new HTTP/1.1 parse */
    c->nreqs = 0;
    px_conn_set_state(c, PX_ST_TLS_CLIENT);
    if (px_half_flush(c, &c->cl) == AL_ERROR) {
        px_conn_close(c, "client write error");
        return;
    }
    /* A ClientHello already in the BIO (coalesced with the CONNECT head, or
     * peeked by a transparent listener) will not be announced by the socket. */
    if (c->cl.plain_out == 0)
        px_conn_tls_client_step(c);
    else
        px_conn_update_io(c);
}

/* Handshake with the client; then the inner requests start. */
void
px_conn_tls_client_step(struct px_conn *c)
{
    int         rc;
    const char *sni;

    if (c->cl.plain_out > 0)
        return; /* the 200 is still on its way */
    rc = px_half_handshake(c, &c->cl);
    if (rc == AL_AGAIN) {
        px_conn_update_io(c);
        return;
    }
    if (rc != AL_OK) {
        const char *why = "client_tls_failed";

        sni = px_tls_sni(c->cl.ssl);
        if (px_tls_alpn_refused(c->cl.ssl))
            why = "h2_not_supported";
        else if (px_tls_sni_refused(c->cl.ssl))
            why = "bad_sni";
        else if (px_tls_sni_mismatch(c->cl.ssl) ||
                 (sni != NULL && strcasecmp(sni, c->mitm_target.host) != 0))
            why = "sni_mismatch";
        PX_MINC(tls_failures);
        px_conn_mitm_refuse(c, why);
        return;
    }
    sni = px_tls_sni(c->cl.ssl);
    if (sni != NULL && sni[0] != '\0') {
        char              host[PX_HOST_MAX + 1];
        enum px_host_kind kind;
        const char       *err = NULL;

        if (px_host_normalize(sni, strlen(sni), host, sizeof(host), &kind, &err) != AL_OK ||
            strcmp(host, c->mitm_target.host) != 0) {
            PX_MINC(tls_failures);
            px_conn_mitm_refuse(c, "sni_mismatch");
            return;
        }
    }
    PX_MINC(tls_client_handshakes);
    px_conn_set_state(c, PX_ST_READ_HEAD);
    px_conn_update_io(c);
    if (px_half_tls_buffered(&c->cl))
        c->cl.tls_more = 1, ev_feed_event(c->worker->loop, &c->cl.rio, EV_READ);
}

/* A tunnel that fails before any inner request: a row saying why, then close. */
void
px_conn_mitm_refuse(struct px_conn *c, const char *reason)
{
    struct px_exch *x = c->x;

    if (x != NULL) {
        px_exch_reset(x, c->conf->limits.header_bytes);
        x->start_us = al_now_us();
        x->target = c->mitm_target;
        x->method_name = "TLS";
        x->is_connect = 1;
        x->err_reason = reason;
        snprintf(x->sandbox, sizeof(x->sandbox), "%s", c->tun_sandbox);
        px_conn_audit(c, reason);
    }
    al_log_info("conn %llu: intercepted tunnel to %s refused: %s", (unsigned long long)c->id,
                c->mitm_target.host, reason);
    px_conn_close(c, reason);
}

/* An inner request's target is the tunnel's; its Host must name the same host. */
int
px_conn_mitm_target(struct px_conn *c, const char **err)
{
    struct px_exch  *x = c->x;
    struct px_msg   *m = &x->req;
    const char      *url = px_msg_str(m, m->url);
    int              h = px_msg_find(m, "host", 0);
    struct px_target ht;

    x->target = c->mitm_target;
    if (m->url_len > 0 && url[0] == '/') {
        x->target.path = url;
        x->target.path_len = m->url_len;
    } else {
        struct px_target at;

        if (px_url_parse_absolute(url, m->url_len, &at, err) != AL_OK)
            return AL_ERROR;
        if (strcmp(at.host, c->mitm_target.host) != 0 || at.port != c->mitm_target.port) {
            *err = "misdirected";
            return AL_DECLINED;
        }
        x->target.path = at.path;
        x->target.path_len = at.path_len;
        x->target.path_needs_slash = at.path_needs_slash;
    }
    if (h >= 0 && (m->hdrs[h].val == UINT32_MAX || px_msg_find(m, "host", h + 1) >= 0)) {
        *err = "bad_host";
        return AL_ERROR;
    }
    if (h >= 0) {
        if (px_authority_parse(px_msg_str(m, m->hdrs[h].val), m->hdrs[h].val_len,
                               c->mitm_target.port, &ht, err) != AL_OK)
            return AL_ERROR;
        if (strcmp(ht.host, c->mitm_target.host) != 0 || ht.port != c->mitm_target.port) {
            *err = "misdirected";
            return AL_DECLINED;
        }
    }
    return AL_OK;
}
