/*
 * pol_decide.c - the decision: (compiled policy, request) -> verdict.
 *
 * Pure: no I/O, no allocation (the path is normalised into the caller's
 * scratch or a stack buffer), no shared mutable state; any number of threads
 * may decide on one snapshot at once.
 *
 * Candidates are gathered from the indexes - the exact-host entry, the
 * suffix entry of every proper label suffix of the host (not for IP
 * literals), the "*" list - each an ascending list of rule indexes, and
 * merged in rule order, so the work grows with the number of labels of the
 * host and the rules that name it, not with the size of the policy. The first
 * candidate whose ports, sandboxes, methods and paths also match wins; a
 * staged ("mode": "dry-run") rule that matches is recorded and skipped.
 *
 * Hard denials that dry-run never relaxes: bad_path, encoded_slash here,
 * address_not_allowed in pol_filter_addrs().
 */
#include "pol_int.h"

#include <stdio.h>
#include <string.h>

#define POL_MAX_LISTS (POL_MAX_LABELS + 2)

struct pol_list {
    const int *v;
    int        n;
};

struct pol_ctx {
    const struct pol_request *rq;
    int                       tunnel;
    const char               *path; /* normalised, or NULL */
    size_t                    path_len;
    int                       encoded_slash;
    char                     *ex; /* explain buffer or NULL */
    size_t                    exlen, excap;
};

AL_PRINTF(2, 3)
static void
pol_explain(struct pol_ctx *c, const char *fmt, ...)
{
    va_list ap;
    int     n;

    if (c->ex == NULL || c->exlen + 1 >= c->excap)
        return;
    va_start(ap, fmt);
    n = vsnprintf(c->ex + c->exlen, c->excap - c->exlen, fmt, ap);
    va_end(ap);
    if (n > 0)
        c->exlen = c->exlen + (size_t)n < c->excap ? c->exlen + (size_t)n : c->excap - 1;
}

static int
pol_str_in(char *const *list, int n, const char *s)
{
    for (int i = 0; i < n; i++) {
        if (strcmp(list[i], s) == 0)
            return 1;
    }
    return 0;
}

/* NULL when r matches (its host already does), else the reason it misses. */
static const char *
pol_rule_miss(const struct pol_rule *r, const struct pol_ctx *c)
{
    const struct pol_request *rq = c->rq;
    int                       ok;

    if (r->sandboxes != NULL &&
        (rq->sandbox == NULL || !pol_str_in(r->sandboxes, r->nsandboxes, rq->sandbox)))
        return "sandbox_not_allowed";
    if (r->ports != NULL) {
        ok = 0;
        for (int i = 0; i < r->nports && !ok; i++)
            ok = r->ports[i] == rq->port;
        if (!ok)
            return "port_not_allowed";
    }
    if (r->methods != NULL) {
        if (pol_str_in(r->methods, r->nmethods, c->tunnel ? "CONNECT" : rq->method))
            ok = 1;
        else /* a tunnel: the inner requests are decided again if intercepted */
            ok = c->tunnel && r->action == POL_ACT_ALLOW && r->intercept;
        if (!ok)
            return "method_not_allowed";
    }
    if (r->paths != NULL) {
        ok = 0;
        if (c->tunnel || c->path == NULL)
            ok = r->action == POL_ACT_ALLOW && r->intercept;
        else
            for (int i = 0; i < r->npaths && !ok; i++)
                ok = pol_pathpat_match(&r->paths[i], c->path, c->path_len);
        if (!ok)
            return "path_not_allowed";
    }
    return NULL;
}

static void
pol_decision_reset(struct pol_decision *out)
{
    out->verdict = POL_DENY;
    out->rule = "default";
    out->reason = "host_not_allowed";
    out->staged_rule = NULL;
    out->intercept = 0;
    out->inject = NULL;
    out->ninject = 0;
    out->rule_ref = NULL;
    out->refused_addr.ss_family = 0;
    out->explain[0] = '\0';
}

static void
pol_add_list(struct pol_list *ls, int *nls, const struct pol_hent *e)
{
    if (e != NULL && e->nrules > 0 && *nls < POL_MAX_LISTS) {
        ls[*nls].v = e->rules;
        ls[*nls].n = e->nrules;
        (*nls)++;
    }
}

void
pol_decide(const struct pol_policy *p, const struct pol_request *rq, struct pol_decision *out)
{
    char                   stackbuf[POL_PATH_STACK_BYTES];
    struct pol_list        ls[POL_MAX_LISTS];
    struct pol_ctx         c;
    const struct pol_rule *win = NULL, *staged = NULL;
    const char            *miss0 = NULL, *host = rq->host != NULL ? rq->host : "";
    size_t                 hlen = strlen(host);
    int                    nls = 0, last = -1, hard = 0;

    pol_decision_reset(out);
    memset(&c, 0, sizeof(c));
    c.rq = rq;
    c.tunnel = (rq->method != NULL && strcmp(rq->method, "CONNECT") == 0) ||
               (rq->scheme != NULL && strcmp(rq->scheme, "connect") == 0);
    if (rq->want_explain) {
        c.ex = out->explain;
        c.excap = sizeof(out->explain);
    }
    if (!c.tunnel) {
        char  *buf = rq->scratch != NULL ? rq->scratch : stackbuf;
        size_t bsz = rq->scratch != NULL ? rq->scratch_len : sizeof(stackbuf);

        if (rq->path == NULL) {
            c.path = "/";
            c.path_len = 1;
        } else if (pol_path_normalize(rq->path, rq->path_len, buf, bsz, &c.path_len,
                                      &c.encoded_slash) != AL_OK) {
            out->reason = "bad_path";
            pol_explain(&c, "path cannot be normalised");
            return;
        } else {
            c.path = buf;
        }
    }

    /* gather the candidate lists */
    pol_add_list(ls, &nls, pol_htab_get(&p->exact, host, hlen));
    if (!rq->host_is_ip) {
        for (size_t i = 0; i < hlen; i++) {
            if (host[i] == '.')
                pol_add_list(ls, &nls, pol_htab_get(&p->suffix, host + i + 1, hlen - i - 1));
        }
    }
    if (p->nstar > 0 && nls < POL_MAX_LISTS) {
        ls[nls].v = p->star;
        ls[nls].n = p->nstar;
        nls++;
    }

    /* merge in rule order; first match wins */
    for (;;) {
        int                    best = -1, bi = -1;
        const struct pol_rule *r;
        const char            *miss;

        for (int i = 0; i < nls; i++) {
            while (ls[i].n > 0 && ls[i].v[0] <= last) {
                ls[i].v++;
                ls[i].n--;
            }
            if (ls[i].n > 0 && (best < 0 || ls[i].v[0] < best)) {
                best = ls[i].v[0];
                bi = i;
            }
        }
        if (bi < 0)
            break;
        last = best;
        r = &p->rules[best];
        miss = pol_rule_miss(r, &c);
        if (miss != NULL) {
            if (miss0 == NULL && r->action == POL_ACT_ALLOW && !r->staged)
                miss0 = miss;
            pol_explain(&c, "%s: %s; ", r->name, miss);
            continue;
        }
        if (r->staged) {
            if (staged == NULL)
                staged = r;
            pol_explain(&c, "%s: matches, staged (dry-run) %s, skipped; ", r->name,
                        r->action == POL_ACT_ALLOW ? "allow" : "deny");
            continue;
        }
        win = r;
        break;
    }

    if (win != NULL && win->action == POL_ACT_DENY) {
        out->rule = win->name;
        out->reason = "denied_by_rule";
        out->rule_ref = win;
    } else if (win != NULL || p->default_allow) {
        out->verdict = POL_ALLOW;
        out->rule = win != NULL ? win->name : "default";
        out->reason = win != NULL ? "allowed_by_rule" : "default_allow";
        if (win != NULL) {
            out->intercept = win->intercept;
            out->inject = (const char *const *)win->inject;
            out->ninject = win->ninject;
            out->rule_ref = win;
        }
        if (c.encoded_slash && (win == NULL || !win->allow_encoded_slash)) {
            out->verdict = POL_DENY;
            out->reason = "encoded_slash";
            out->intercept = 0;
            out->inject = NULL;
            out->ninject = 0;
            hard = 1;
        }
    } else {
        out->reason = miss0 != NULL ? miss0 : "host_not_allowed";
    }

    if (staged != NULL) {
        out->staged_rule = staged->name;
        if (staged->action == POL_ACT_DENY && out->verdict == POL_ALLOW)
            out->verdict = POL_WOULD_DENY;
    }
    if (p->dry_run && out->verdict == POL_DENY && !hard) {
        /* A request dry-run would let through is still held to the protocol
         * rules: an encoded slash is refused whichever rule (or none) missed. */
        if (c.encoded_slash) {
            out->reason = "encoded_slash";
            out->rule_ref = NULL;
            hard = 1;
        } else {
            out->verdict = POL_WOULD_DENY;
        }
    }
    pol_explain(&c, "-> %s by %s (%s)%s%s", pol_verdict_name(out->verdict), out->rule, out->reason,
                staged != NULL ? ", staged rule " : "", staged != NULL ? staged->name : "");
}

const char *
pol_verdict_name(enum pol_verdict v)
{
    switch (v) {
    case POL_ALLOW:
        return "allow";
    case POL_DENY:
        return "deny";
    case POL_WOULD_DENY:
        return "would_deny";
    }
    return "deny";
}
