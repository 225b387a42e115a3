/*
 * px_conn_transparent.c - connections accepted on a transparent listener.
 * The kernel redirected them (nftables/iptables REDIRECT); SO_ORIGINAL_DST
 * says where the sandbox was going. The first bytes decide the protocol:
 * a TLS ClientHello is decided by its SNI, HTTP by its Host header, anything
 * else by the original destination IP; each at the original destination
 * port, through the same decision path as the forward listener, resolved by
 * airlock itself. A connection that can't be served has no protocol to
 * answer in: it is refused with a row (px_refuse_close) and the machine
 * closes it.
 */
#include "px_phase.h"
#include "px_origdst.h"
#include "px_sni.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include <openssl/ssl.h>

static uint16_t
px_sockaddr_port(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)(const void *)ss)->sin6_port);
    return ntohs(((const struct sockaddr_in *)(const void *)ss)->sin_port);
}

/* The original destination as an IP literal target (no name known). */
static void
px_conn_orig_target(struct px_conn *c, struct px_target *t)
{
    char ip[INET6_ADDRSTRLEN] = "";

    memset(t, 0, sizeof(*t));
    if (c->orig_dst.ss_family == AF_INET6) {
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)(void *)&c->orig_dst)->sin6_addr, ip,
                  sizeof(ip));
        t->kind = PX_HOST_IPV6;
    } else {
        inet_ntop(AF_INET, &((struct sockaddr_in *)(void *)&c->orig_dst)->sin_addr, ip, sizeof(ip));
        t->kind = PX_HOST_IPV4;
    }
    snprintf(t->host, sizeof(t->host), "%s", ip);
    t->port = px_sockaddr_port(&c->orig_dst);
    t->path = "";
}

/* An origin-form request on a transparent listener: the name comes from the
 * Host header, the port from the original destination. */
int
px_conn_transparent_target(struct px_conn *c, const char **err)
{
    struct px_exch *x = c->x;
    struct px_msg  *m = &x->req;
    const char     *url = px_msg_str(m, m->url);
    int             h = px_msg_find_id(m, PX_H_HOST, 0);
    uint16_t        port = px_sockaddr_port(&c->orig_dst);

    if (m->url_len == 0 || url[0] != '/') {
        *err = "bad_target";
        return AL_ERROR;
    }
    if (h < 0 || m->hdrs[h].val == UINT32_MAX || px_msg_find_id(m, PX_H_HOST, h + 1) >= 0) {
        *err = "bad_host";
        return AL_ERROR;
    }
    if (px_authority_parse(px_msg_str(m, m->hdrs[h].val), m->hdrs[h].val_len, port, &x->target,
                           err) != AL_OK)
        return AL_ERROR;
    x->target.port = port; /* where the sandbox was really going */
    x->target.tls = 0;
    x->target.path = url;
    x->target.path_len = m->url_len;
    x->target.path_needs_slash = 0;
    return AL_OK;
}

/* The row of a transparent flow that is refused: the exchange as far as it
 * got, its gaps filled from the connection (there is no protocol to answer
 * in: the machine audits and closes). */
void
px_transparent_refusal_row(struct px_conn *c, const char *reason)
{
    if (c->x == NULL)
        c->x = al_calloc(1, sizeof(*c->x));
    if (c->x == NULL)
        return;
    if (c->x->start_us == 0)
        c->x->start_us = al_now_us();
    if (c->x->target.host[0] == '\0' && c->has_orig_dst)
        px_conn_orig_target(c, &c->x->target);
    if (c->x->sandbox[0] == '\0')
        px_decide_sandbox_by_source(c, c->x->sandbox, sizeof(c->x->sandbox));
    if (c->x->err_reason == NULL)
        c->x->err_reason = reason;
    if (c->x->method_name == NULL && !c->x->head_done)
        c->x->method_name = "TCP";
}

/* TLS (by SNI) or raw TCP (by original destination) through a transparent
 * listener: an exchange like a CONNECT's, decided and relayed by the
 * machine. No SNI: the destination is the original IP literal; only a rule
 * naming it (and, for non-public space, its cidrs) lets it through. */
int
px_transparent_tunnel_target(struct px_conn *c, const char *sni)
{
    struct px_exch *x;
    const char     *err = NULL;

    x = c->x = al_calloc(1, sizeof(*c->x));
    if (x == NULL)
        return AL_ERROR;
    x->start_us = al_now_us();
    x->is_connect = 1;
    x->silent_tunnel = 1;
    x->method_name = sni != NULL ? "TLS" : "TCP";
    px_conn_orig_target(c, &x->target);
    if (sni != NULL && sni[0] != '\0') {
        uint16_t port = x->target.port;

        al_strlcpy(x->sni, sizeof(x->sni), sni);
        if (px_host_normalize(sni, strlen(sni), x->target.host, sizeof(x->target.host),
                              &x->target.kind, &err) != AL_OK)
            return px_refuse_close(c, "bad_sni");
        x->target.port = port;
    }
    return AL_OK;
}

/* PX_ST_PEEK: the first bytes say which protocol the sandbox speaks. */
int
px_transparent_peek(struct px_conn *c, int eof, enum px_peek_kind *kind, char *sni, size_t snisz)
{
    const unsigned char *b = (const unsigned char *)c->cin;
    int                  h2only = 0;
    int                  rc = px_sni_looks_tls(b, c->cin_len);

    if (rc == AL_OK) {
        rc = px_sni_parse(b, c->cin_len, sni, snisz, &h2only);
        if (rc == AL_AGAIN && c->cin_len < PX_CIN_BYTES && !eof)
            return AL_AGAIN; /* the ClientHello continues in the next segment */
        if (rc != AL_OK)
            return px_refuse_close(c, "bad_client_hello");
        *kind = PX_PEEK_TLS;
        return AL_OK;
    }
    if (rc == AL_AGAIN && !eof)
        return AL_AGAIN;
    rc = px_http_looks_like_request(b, c->cin_len);
    if (rc == AL_AGAIN && c->cin_len < PX_CIN_BYTES && !eof)
        return AL_AGAIN;
    *kind = rc == AL_OK ? PX_PEEK_HTTP : PX_PEEK_TCP;
    return AL_OK;
}

/* Accept-time checks of a transparent connection. AL_OK to go on. */
int
px_transparent_accept(struct px_conn *c)
{
    const struct px_conf *conf = c->conf;

    if (px_orig_dst(c->cl.fd, &c->orig_dst) != AL_OK)
        return px_refuse_close(c, "not_redirected");
    c->has_orig_dst = 1;
    /* Loop guard: a redirected connection to airlock's own listener. */
    for (int i = 0; i < conf->nself; i++) {
        const struct sockaddr_storage *s = &conf->self[i];
        int                            same = 0;

        if (s->ss_family != c->orig_dst.ss_family ||
            px_sockaddr_port(s) != px_sockaddr_port(&c->orig_dst))
            continue;
        if (s->ss_family == AF_INET) {
            const struct in_addr *a = &((const struct sockaddr_in *)(const void *)s)->sin_addr;
            const struct in_addr *o =
                &((const struct sockaddr_in *)(const void *)&c->orig_dst)->sin_addr;

            same = a->s_addr == INADDR_ANY || a->s_addr == o->s_addr;
        } else {
            const struct in6_addr *a = &((const struct sockaddr_in6 *)(const void *)s)->sin6_addr;
            const struct in6_addr *o =
                &((const struct sockaddr_in6 *)(const void *)&c->orig_dst)->sin6_addr;

            same = IN6_IS_ADDR_UNSPECIFIED(a) || memcmp(a, o, sizeof(*a)) == 0;
        }
        if (same)
            return px_refuse_close(c, "loop");
    }
    return AL_OK;
}
