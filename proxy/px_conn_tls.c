/*
 * px_conn_tls.c - the TLS steps of a connection: the verified upstream
 * client and interception (the halves' I/O is px_half.c). An allowed
 * CONNECT that airlock intercepts is answered in the clear, then served over
 * TLS with a leaf minted for its host (the SNI must name the same host);
 * every request inside is parsed, decided and audited on its own, and the
 * upstream TLS connection (always verified) is opened per the first inner
 * request and kept while reusable.
 */
#include "px_ca.h"
#include "px_half.h"
#include "px_phase.h"
#include "px_sni.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

/* ---- interception -------------------------------------------------------- */

/* TCP to the upstream is up; start TLS (verified: CA, name, TLS >= 1.2). */
int
px_tls_up_start(struct px_conn *c)
{
    struct px_exch *x = c->x;

    c->up.ssl = c->worker->rt.tls_up != NULL ? SSL_new(c->worker->rt.tls_up) : NULL;
    if (c->up.ssl == NULL || SSL_set_fd(c->up.ssl, c->up.fd) != 1 ||
        px_tls_upstream_prepare(c->up.ssl, x->target.host, x->target.port,
                                x->target.kind != PX_HOST_NAME) != AL_OK)
        return px_refuse_upstream(c, PX_UERR_OTHER, 502, "upstream_tls_failed", "TLS setup");
    SSL_set_mode(c->up.ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_set_options(c->up.ssl, SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_set_connect_state(c->up.ssl);
    return AL_OK;
}

int
px_tls_up_step(struct px_conn *c)
{
    int rc = px_half_handshake(c, &c->up);

    if (rc == AL_AGAIN)
        return AL_AGAIN;
    if (rc != AL_OK) {
        const char *why = px_tls_verify_error(c->up.ssl);

        PX_MINC(tls_failures);
        return px_refuse_upstream(c, PX_UERR_OTHER, 502, why != NULL ? why : "upstream_tls_failed",
                                  c->x->target.host);
    }
    PX_MINC(tls_upstream_handshakes);
    return AL_OK;
}

/*
 * An allowed CONNECT that airlock intercepts is served over TLS with a leaf
 * minted for the CONNECT host (or its SNI, which must name the same host).
 * This readies the client side's TLS server, feeds it a ClientHello that
 * came with the CONNECT head (or that a transparent listener peeked), queues
 * the 200 in the clear, writes the CONNECT's row and readies the exchange
 * and parser for the inner requests; the machine runs the handshake.
 */
int
px_tls_mitm_prepare(struct px_conn *c)
{
    struct px_exch *x = c->x;
    BIO            *wbio = NULL;

    if (c->worker->rt.tls_srv == NULL)
        return px_refuse_deny(c, 403, "interception_unavailable", "no CA configured (ca.dir)",
                              NULL);
    c->mitm = 1;
    c->mitm_target = x->target;
    c->mitm_target.path = "";
    c->mitm_target.path_len = 0;
    c->mitm_target.tls = 1;
    snprintf(c->tun_sandbox, sizeof(c->tun_sandbox), "%s", x->sandbox);
    snprintf(c->tun_session, sizeof(c->tun_session), "%s", x->session);
    snprintf(c->tun_tool_call, sizeof(c->tun_tool_call), "%s", x->tool_call);
    c->cl.ssl = SSL_new(c->worker->rt.tls_srv);
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
        return px_refuse(c, 500, "internal", "TLS setup");
    }
    SSL_set_bio(c->cl.ssl, c->cl.rbio, wbio); /* the SSL owns both now */
    SSL_set_mode(c->cl.ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_set_options(c->cl.ssl, SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_set_accept_state(c->cl.ssl);
    /* A ClientHello that came with the CONNECT head goes into the BIO. */
    if (c->cin_len > 0 && BIO_write(c->cl.rbio, c->cin, (int)c->cin_len) != (int)c->cin_len)
        return AL_ERROR;
    c->cin_len = 0;
    al_safefree(c->cin);     /* the inner requests get a buffer when they come */
    if (!x->silent_tunnel) { /* answered in the clear, before TLS starts */
        static const char ok[] = "HTTP/1.1 200 Connection established\r\n\r\n";

        if (al_bufq_write(&c->cl.out, ok, sizeof(ok) - 1) != AL_OK)
            return AL_ERROR;
        c->cl.plain_out = sizeof(ok) - 1;
    }
    al_log_info("conn %llu: CONNECT %s:%u intercepted", (unsigned long long)c->id, x->target.host,
                x->target.port);
    px_conn_count_status(200);
    x->status = 200;
    px_conn_audit(c, NULL); /* the CONNECT's own row; inner requests get theirs */
    px_exch_reset(x, c->conf->limits.header_bytes);
    px_h1_request_parser(c); /* the inner stream starts a new HTTP/1.1 parse */
    c->nreqs = 0;
    return AL_OK;
}

/* The client handshake; then the inner requests start. A failure is
 * refused with a row (px_tls_refusal_row) and a close: no HTTP yet. */
int
px_tls_client_step(struct px_conn *c)
{
    int         rc;
    const char *sni, *why = NULL;

    if (c->cl.plain_out > 0)
        return AL_AGAIN; /* the 200 is still on its way */
    rc = px_half_handshake(c, &c->cl);
    if (rc == AL_AGAIN)
        return AL_AGAIN;
    sni = px_tls_sni(c->cl.ssl);
    if (rc != AL_OK) {
        why = "client_tls_failed";
        if (px_tls_alpn_refused(c->cl.ssl))
            why = "h2_not_supported";
        else if (px_tls_sni_refused(c->cl.ssl))
            why = "bad_sni";
        else if (px_tls_sni_mismatch(c->cl.ssl) ||
                 (sni != NULL && strcasecmp(sni, c->mitm_target.host) != 0))
            why = "sni_mismatch";
    } else if (sni != NULL && sni[0] != '\0') {
        char              host[PX_HOST_MAX + 1];
        enum px_host_kind kind;
        const char       *err = NULL;

        if (px_host_normalize(sni, strlen(sni), host, sizeof(host), &kind, &err) != AL_OK ||
            strcmp(host, c->mitm_target.host) != 0)
            why = "sni_mismatch";
    }
    if (why != NULL) {
        PX_MINC(tls_failures);
        px_tls_refusal_row(c, why);
        return px_refuse_close(c, why);
    }
    PX_MINC(tls_client_handshakes);
    return AL_OK;
}

int
px_tls_tunnel_sni_check(struct px_conn *c, int eof)
{
    const unsigned char *b = (const unsigned char *)c->cin;
    char                 sni[PX_SNI_HOST_BYTES], host[PX_HOST_MAX + 1];
    enum px_host_kind    kind;
    const char          *err = NULL;
    int                  h2only = 0;
    int                  rc = px_sni_looks_tls(b, c->cin_len);

    if (rc == AL_AGAIN && !eof)
        return AL_AGAIN;
    if (rc != AL_OK)
        return AL_OK; /* not TLS: nothing names a host */
    rc = px_sni_parse(b, c->cin_len, sni, sizeof(sni), &h2only);
    if (rc == AL_AGAIN && c->cin_len < PX_CIN_BYTES && !eof)
        return AL_AGAIN; /* the ClientHello continues in the next segment */
    if (rc != AL_OK)
        return px_refuse_deny(c, 403, "bad_client_hello", c->x->target.host, NULL);
    if (sni[0] == '\0')
        return AL_OK; /* no SNI (an IP literal target): nothing to compare */
    {
        /* Some clients (Go's, through hey) send "host:port" as the name: the
         * CONNECT's own port after it is still the same destination. */
        char *colon = strrchr(sni, ':');

        if (colon != NULL && colon[1] != '\0' &&
            strspn(colon + 1, "0123456789") == strlen(colon + 1) &&
            (memchr(sni, ':', (size_t)(colon - sni)) == NULL || colon[-1] == ']') &&
            strtoul(colon + 1, NULL, 10) == c->x->target.port)
            *colon = '\0';
    }
    al_strlcpy(c->x->sni, sizeof(c->x->sni), sni); /* the row records it */
    if (px_host_normalize(sni, strlen(sni), host, sizeof(host), &kind, &err) != AL_OK ||
        strcmp(host, c->x->target.host) != 0) {
        PX_MINC(tls_failures);
        return px_refuse_deny(c, 403, "sni_mismatch", c->x->target.host, NULL);
    }
    return AL_OK;
}

/* The row of an intercepted tunnel that fails before any inner request. */
void
px_tls_refusal_row(struct px_conn *c, const char *reason)
{
    struct px_exch *x = c->x;

    if (x == NULL)
        return;
    px_exch_reset(x, c->conf->limits.header_bytes);
    x->start_us = al_now_us();
    x->target = c->mitm_target;
    x->method_name = "TLS";
    x->is_connect = 1;
    x->err_reason = reason;
    snprintf(x->sandbox, sizeof(x->sandbox), "%s", c->tun_sandbox);
}

/* An inner request's target is the tunnel's; its Host must name the same host. */
int
px_conn_mitm_target(struct px_conn *c, const char **err)
{
    struct px_exch  *x = c->x;
    struct px_msg   *m = &x->req;
    const char      *url = px_msg_str(m, m->url);
    int              h = px_msg_find_id(m, PX_H_HOST, 0);
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
    if (h >= 0 && (m->hdrs[h].val == UINT32_MAX || px_msg_find_id(m, PX_H_HOST, h + 1) >= 0)) {
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
