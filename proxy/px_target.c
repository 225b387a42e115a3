/*
 * px_target.c - what a parsed request head asks for: its target by the kind
 * of connection it came on (absolute-form to a forward listener, CONNECT's
 * authority, an intercepted tunnel's inner request, a transparent listener's
 * origin-form with Host), and the protocol checks a head must pass before it
 * is decided (HTTP/1.x, transfer codings airlock can re-frame, which upgrades
 * are performed). A phase: it fills the exchange and returns AL_OK or
 * AL_DECLINED with c->refusal; the machine answers.
 */
#include "px_phase.h"

#include <string.h>

int
px_request_target(struct px_conn *c)
{
    struct px_exch *x = c->x;
    struct px_msg  *m = &x->req;
    const char     *err = NULL;
    const char     *url = px_msg_str(m, m->url);
    int             rc;

    if (c->rq.http_major != 1)
        return px_refuse(c, 505, "http_version", NULL);
    x->is_connect = c->rq.method == HTTP_CONNECT;
    x->is_head = c->rq.method == HTTP_HEAD;
    x->req_chunked = (c->rq.flags & F_CHUNKED) != 0;
    if (c->mitm && x->is_connect) {
        return px_refuse(c, 400, "bad_request", "CONNECT inside an intercepted tunnel");
    } else if (c->mitm) {
        rc = px_conn_mitm_target(c, &err);
        if (rc == AL_DECLINED)
            return px_refuse(c, 421, "misdirected", "Host does not name the tunnel's host");
    } else if (x->is_connect) {
        rc = px_authority_parse(url, m->url_len, 0, &x->target, &err);
        if (rc == AL_OK && c->mode == PX_LISTEN_TRANSPARENT)
            return px_refuse(c, 400, "bad_target", "CONNECT on a transparent listener");
    } else if (c->mode == PX_LISTEN_TRANSPARENT) {
        rc = px_conn_transparent_target(c, &err);
    } else if (m->url_len > 0 && url[0] == '/') {
        return px_refuse(c, 400, "bad_target", "origin-form request to a forward proxy");
    } else {
        rc = px_url_parse_absolute(url, m->url_len, &x->target, &err);
        if (rc == AL_OK && x->target.tls)
            return px_refuse(c, 501, "https_without_connect", "use CONNECT for https");
    }
    if (rc != AL_OK)
        return px_refuse(c, 400, err != NULL ? err : "bad_target", NULL);
    if (!px_msg_te_chunked_only(m) ||
        ((c->rq.flags & F_TRANSFER_ENCODING) && !(c->rq.flags & F_CHUNKED)))
        /* The body is re-framed here and Transfer-Encoding dropped: a gzip
         * transfer coding would go upstream undecoded, and past the body
         * scanner (a placeholder inside unseen). RFC 9112 6.1: 501. */
        return px_refuse(c, 501, "unsupported_transfer_coding", "only chunked is supported");
    if (c->rq.upgrade && !x->is_connect) {
        int u = px_msg_find_id(m, PX_H_UPGRADE, 0);

        x->want_upgrade =
            u >= 0 && m->hdrs[u].val != UINT32_MAX &&
            al_strcaseeq_n(px_msg_str(m, m->hdrs[u].val), m->hdrs[u].val_len, "websocket");
        /* Any other protocol (h2c, ...) is not performed: Upgrade and
         * HTTP2-Settings are dropped as hop-by-hop and the message stays a
         * plain request, so the connection goes on with the next one. */
        if (!x->want_upgrade)
            c->rq.upgrade = 0;
    }
    px_h1_pool_key(&x->target, x->pool_key, sizeof(x->pool_key));
    return AL_OK;
}

int
px_route(struct px_conn *c)
{
    struct px_exch *x = c->x;
    int             secret_host = c->conf->secrets != NULL &&
                      sec_any_scope_host(c->conf->secrets, x->target.host, x->target.port);
    int raw_tcp = x->silent_tunnel && x->method_name != NULL && strcmp(x->method_name, "TCP") == 0;

    if (c->worker->rt.audit != NULL) {
        int adm = aud_writer_admit(c->worker->rt.audit);

        if (adm != AL_OK) { /* fail closed: nothing goes out unaudited */
            PX_MINC(audit_refusals);
            return px_refuse(c, 503, adm == AL_DECLINED ? "audit_backlog" : "audit_unavailable",
                             NULL);
        }
    }
    if (!x->is_connect)
        return PX_ROUTE_UPSTREAM;
    if (!raw_tcp && (x->decision.intercept || secret_host)) {
        /* A host some secret is scoped to is always intercepted: a
         * placeholder must never leave unseen inside an opaque tunnel. A
         * transparent TLS flow is intercepted exactly as through CONNECT,
         * minus the 200: its peeked ClientHello goes into the TLS engine. */
        if (x->silent_tunnel && (c->worker->rt.tls_srv == NULL || x->target.kind != PX_HOST_NAME))
            return px_refuse_close(c, "interception_unavailable");
        return PX_ROUTE_MITM;
    }
    if (secret_host) /* raw TCP to a secret's host would carry placeholders unseen */
        return px_refuse_close(c, "opaque_tunnel_to_secret_host");
    return PX_ROUTE_UPSTREAM;
}
