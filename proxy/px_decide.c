/*
 * px_decide.c - where a request meets identity and policy.
 *
 * px_decide() runs once per request head, before anything is resolved:
 *   1. identify the sandbox: Proxy-Authorization Basic (user SANDBOX,
 *      SANDBOX+TOOL_CALL or SANDBOX+SESSION+TOOL_CALL; password checked in
 *      constant time against the sandbox's token_sha256), else the source
 *      address against sandboxes[].cidrs; the operator's admin API tags
 *      for the sandbox, then X-Airlock-Session and X-Airlock-Tool-Call
 *      headers fill the tags the credentials left empty (a header never
 *      overrides a trusted tag). All of these are stripped before
 *      forwarding.
 *   2. pol_decide() on sandbox, scheme, host, port, method, path.
 * px_decide_addrs() runs after DNS: the address guard (pol_filter_addrs_self)
 * keeps only answers the decision may reach; the connection only ever goes
 * to a kept address. airlock's own listeners are never reachable: a
 * listener bound to 0.0.0.0 / [::] counts as every address of the host on
 * its port (px_ifaddrs.c keeps that list current). Dry-run never relaxes either the guard or
 * protocol errors (the policy module guarantees that).
 */
#include "px_phase.h"
#include "px_ifaddrs.h"

#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>

#define PX_AUTH_CHALLENGE "Proxy-Authenticate: Basic realm=\"airlock\"\r\n"

static const char *
px_hdr_value(const struct px_msg *m, int i, size_t *len)
{
    if (m->hdrs[i].val == UINT32_MAX) {
        *len = 0;
        return "";
    }
    *len = m->hdrs[i].val_len;
    return px_msg_str(m, m->hdrs[i].val);
}

/* Identity from Proxy-Authorization. AL_OK (identified), AL_DECLINED (no
 * header), or AL_ERROR with c->refusal set (407). */
static int
px_decide_basic(struct px_conn *c)
{
    struct px_exch          *x = c->x;
    struct px_msg           *m = &x->req;
    int                      i = px_msg_find_id(m, PX_H_PROXY_AUTHORIZATION, 0);
    char                     user[POL_BASIC_MAX_BYTES + 1], pass[POL_BASIC_MAX_BYTES + 1];
    struct pol_ident         id;
    const struct px_sandbox *sb;
    const char              *v;
    size_t                   vl;
    int                      rc = AL_ERROR;

    if (i < 0 || c->conf->nsandboxes == 0)
        return AL_DECLINED; /* no sandboxes configured: clients are anonymous */
    if (px_msg_find_id(m, PX_H_PROXY_AUTHORIZATION, i + 1) >= 0) {
        px_refuse_deny(c, 407, "bad_credentials", "more than one Proxy-Authorization",
                       PX_AUTH_CHALLENGE);
        return AL_ERROR;
    }
    v = px_hdr_value(m, i, &vl);
    if (pol_ident_parse_basic(v, vl, user, sizeof(user), pass, sizeof(pass)) != AL_OK ||
        pol_ident_split_user(user, &id) != AL_OK) {
        px_refuse_deny(c, 407, "bad_credentials", "expected Basic SANDBOX[+SESSION]+TOOL_CALL",
                       PX_AUTH_CHALLENGE);
        goto out;
    }
    sb = px_conf_sandbox(c->conf, id.sandbox);
    if (sb == NULL) {
        px_refuse_deny(c, 407, "unknown_sandbox", NULL, PX_AUTH_CHALLENGE);
        goto out;
    }
    if (sb->token_sha256[0] != '\0') {
        if (!pol_ident_token_ok(pass, strlen(pass), sb->token_sha256)) {
            px_refuse_deny(c, 407, "bad_credentials", NULL, PX_AUTH_CHALLENGE);
            goto out;
        }
    } else if (!pol_ident_source_match(sb->cidrs, sb->ncidrs, (const struct sockaddr *)&c->peer)) {
        /* A CIDR-only sandbox can't be claimed from outside its CIDRs. */
        px_refuse_deny(c, 407, "bad_credentials", "source address outside the sandbox",
                       PX_AUTH_CHALLENGE);
        goto out;
    }
    al_strlcpy(x->sandbox, sizeof(x->sandbox), id.sandbox);
    al_strlcpy(x->session, sizeof(x->session), id.session);
    al_strlcpy(x->tool_call, sizeof(x->tool_call), id.tool_call);
    rc = AL_OK;
out:
    OPENSSL_cleanse(pass, sizeof(pass));
    return rc;
}

/*
 * X-Airlock-Session / X-Airlock-Tool-Call: validated, and never forwarded.
 * A header is the sandbox's own claim: it only fills a tag no trusted
 * source set (Proxy-Authorization, the operator's admin API tag, the
 * tunnel's identity). One that disagrees with a trusted tag is ignored, so a
 * sandbox cannot re-attribute its requests in the ledger.
 */
static int
px_decide_tags(struct px_conn *c)
{
    static const char *const names[] = {"x-airlock-session", "x-airlock-tool-call"};
    struct px_exch          *x = c->x;
    struct px_msg           *m = &x->req;

    for (int k = 0; k < 2; k++) {
        char       *dst = k == 0 ? x->session : x->tool_call;
        size_t      dsz = k == 0 ? sizeof(x->session) : sizeof(x->tool_call);
        const char *claim = NULL;
        size_t      claim_len = 0;

        for (int i = px_msg_find(m, names[k], 0); i >= 0; i = px_msg_find(m, names[k], i + 1)) {
            size_t      vl;
            const char *v = px_hdr_value(m, i, &vl);

            m->hdrs[i].drop = 1;
            if (!pol_ident_tag_valid(v, vl, POL_TAG_MAX_BYTES)) {
                px_refuse_deny(c, 400, "bad_tag", names[k], NULL);
                return AL_ERROR;
            }
            claim = v; /* the last one, as before */
            claim_len = vl;
        }
        if (claim == NULL)
            continue;
        if (dst[0] == '\0')
            al_strlcpy_n(dst, dsz, claim, claim_len);
        else if (strlen(dst) != claim_len || memcmp(dst, claim, claim_len) != 0)
            al_log_debug("conn %llu: %s \"%.*s\" ignored: tagged \"%s\" by a trusted source",
                         (unsigned long long)c->id, names[k], (int)claim_len, claim, dst);
    }
    return AL_OK;
}

void
px_decide_sandbox_by_source(const struct px_conn *c, char *out, size_t outsz)
{
    const struct px_conf *conf = c->conf;

    out[0] = '\0';
    for (int i = 0; i < conf->nsandboxes; i++) {
        const struct px_sandbox *sb = &conf->sandboxes[i];

        if (sb->ncidrs > 0 &&
            pol_ident_source_match(sb->cidrs, sb->ncidrs, (const struct sockaddr *)&c->peer)) {
            al_strlcpy(out, outsz, sb->name);
            return;
        }
    }
}

/*
 * Who sent the request, and its tags. Trust order: Proxy-Authorization
 * (SANDBOX+SESSION+TOOL_CALL), then the operator's tag for the sandbox
 * (admin API), then the X-Airlock-* headers, each filling only what the
 * ones before left empty. On a transparent listener the operator's current
 * tag is the only trusted source, also inside an intercepted flow.
 */
static int
px_decide_identity(struct px_conn *c)
{
    const struct px_conf *conf = c->conf;
    struct px_exch       *x = c->x;
    int                   rc;

    if (c->mitm) {
        /* Inside an intercepted tunnel: the identity the CONNECT (or the
         * transparent flow) established. */
        al_strlcpy(x->sandbox, sizeof(x->sandbox), c->tun_sandbox);
        if (c->mode != PX_LISTEN_TRANSPARENT) {
            al_strlcpy(x->session, sizeof(x->session), c->tun_session);
            al_strlcpy(x->tool_call, sizeof(x->tool_call), c->tun_tool_call);
        }
        if (x->sandbox[0] != '\0')
            px_tags_get(x->sandbox, x->session, sizeof(x->session), x->tool_call,
                        sizeof(x->tool_call));
        return px_decide_tags(c);
    }
    /* Transparent clients are known by their source address only. */
    rc = c->mode == PX_LISTEN_TRANSPARENT ? AL_DECLINED : px_decide_basic(c);

    if (rc == AL_ERROR)
        return AL_ERROR;
    if (rc == AL_DECLINED) {
        px_decide_sandbox_by_source(c, x->sandbox, sizeof(x->sandbox));
        if (x->sandbox[0] == '\0' && conf->nsandboxes > 0) {
            if (conf->any_token)
                px_refuse_deny(c, 407, "auth_required", NULL, PX_AUTH_CHALLENGE);
            else
                px_refuse_deny(c, 403, "unknown_sandbox", "source address matches no sandbox",
                               NULL);
            return AL_ERROR;
        }
    }
    if (x->sandbox[0] != '\0') /* the operator's tags (admin API) fill the gaps */
        px_tags_get(x->sandbox, x->session, sizeof(x->session), x->tool_call, sizeof(x->tool_call));
    return px_decide_tags(c);
}

/* The path to forward: normalised as the policy saw it, plus the query. */
static int
px_decide_fwd_path(struct px_conn *c)
{
    struct px_exch   *x = c->x;
    struct px_target *t = &x->target;
    const char       *q;
    size_t            plen, qlen, outlen = 0;
    int               enc = 0;
    char             *out;

    if (t->path_len == 0)
        return AL_OK;
    if (t->path_needs_slash) { /* "http://h?q": the path is "/", the query stays */
        out = al_malloc(t->path_len + 2);
        if (out == NULL)
            return AL_ERROR;
        out[0] = '/';
        memcpy(out + 1, t->path, t->path_len);
        out[t->path_len + 1] = '\0';
        x->fwd_path = out;
        x->fwd_path_len = t->path_len + 1;
        return AL_OK;
    }
    q = memchr(t->path, '?', t->path_len);
    plen = q != NULL ? (size_t)(q - t->path) : t->path_len;
    qlen = t->path_len - plen;
    out = al_malloc(t->path_len + 2);
    if (out == NULL)
        return AL_ERROR;
    if (pol_path_normalize(t->path, plen, out, plen + 1, &outlen, &enc) != AL_OK) {
        al_free(out);
        return AL_OK; /* the policy refused it already, or forward it as sent */
    }
    memcpy(out + outlen, t->path + plen, qlen);
    out[outlen + qlen] = '\0';
    x->fwd_path = out;
    x->fwd_path_len = outlen + qlen;
    return AL_OK;
}

int
px_decide(struct px_conn *c)
{
    struct px_exch      *x = c->x;
    struct pol_request   rq;
    struct pol_decision *d = &x->decision;
    int                  status;

    if (px_decide_identity(c) != AL_OK)
        return AL_DECLINED;
    if (c->conf->secrets != NULL) {
        /* Before any lookup: a placeholder in the destination's name would
         * leave in the DNS query and the SNI, whatever the policy says. */
        int i = sec_placeholder_in_host(c->conf->secrets, x->target.host, strlen(x->target.host));

        if (i >= 0) {
            x->decided = 1;
            x->secret_refused = sec_name(c->conf->secrets, i);
            d->verdict = POL_DENY;
            d->rule = ""; /* no rule was consulted */
            d->reason = SEC_REFUSE_OUT_OF_SCOPE;
            PX_MINC(secrets_refused);
            return px_refuse_deny(c, 403, SEC_REFUSE_OUT_OF_SCOPE, x->secret_refused, NULL);
        }
    }
    memset(&rq, 0, sizeof(rq));
    rq.sandbox = x->sandbox[0] ? x->sandbox : NULL;
    rq.scheme = x->is_connect ? "connect" : x->target.tls ? "https" : "http";
    rq.host = x->target.host;
    rq.host_is_ip = x->target.kind != PX_HOST_NAME;
    rq.port = x->target.port;
    rq.method = x->method_name != NULL ? "CONNECT" : llhttp_method_name(c->rq.method);
    if (!x->is_connect) {
        rq.path = x->target.path_needs_slash ? "/" : x->target.path;
        rq.path_len = x->target.path_needs_slash ? 1 : x->target.path_len;
        if (rq.path_len > POL_PATH_STACK_BYTES - 1) {
            rq.scratch = al_malloc(rq.path_len + 1);
            rq.scratch_len = rq.scratch != NULL ? rq.path_len + 1 : 0;
        }
    }
    pol_decide(c->conf->policy, &rq, d);
    al_free(rq.scratch);
    x->decided = 1;
    if (d->verdict == POL_DENY) {
        status = strcmp(d->reason, "bad_path") == 0 || strcmp(d->reason, "encoded_slash") == 0
                     ? 400
                     : 403;
        return px_refuse_deny(c, status, d->reason, d->rule, NULL);
    }
    if (d->verdict == POL_WOULD_DENY)
        al_log_info("conn %llu: would_deny %s:%u (%s, rule %s), let through (dry-run)",
                    (unsigned long long)c->id, x->target.host, x->target.port, d->reason,
                    d->staged_rule ? d->staged_rule : d->rule);
    if (!x->is_connect && px_decide_fwd_path(c) != AL_OK) {
        return px_refuse(c, 500, "internal", "out of memory");
    }
    return AL_OK;
}

int
px_decide_addrs(struct px_conn *c)
{
    struct px_exch          *x = c->x;
    const struct px_ifaddrs *host = px_ifaddrs_view();
    struct pol_self          self = {c->conf->self, c->conf->nself, host ? host->a : NULL,
                            host ? host->n : 0};
    int kept = pol_filter_addrs_self(c->conf->policy, &x->decision, x->addrs.addrs, x->addrs.naddrs,
                                     &self);

    x->addrs.naddrs = kept;
    if (kept <= 0) {
        return px_refuse_deny(c, 403, "address_not_allowed", x->target.host, NULL);
    }
    return AL_OK;
}
