/*
 * pol_lint.c - `airlock policy lint`: the rules that are wrong before any
 * request meets them.
 *
 * Errors (exit 3):
 *   shadowed      an earlier enforced rule matches every request this one
 *                 matches (hosts incl. wildcards, ports, methods, paths with
 *                 * and **, sandboxes: pol_rule_shadowed, the same check
 *                 pol_load warns with); both rules named
 *   duplicate     the same, both ways: the two rules match the same requests
 *   tls_unseen    methods or paths on a rule that does not intercept while
 *                 its ports take HTTPS (443, or no ports): the daemon sees
 *                 only `CONNECT host:port` there, so the rule never matches
 *                 TLS traffic (an allow rule refuses it, a deny rule lets it
 *                 through)
 *   unknown_sandbox  a rule naming a sandbox the config does not define
 *   inject_unknown / inject_out_of_scope
 *                 `inject` naming a secret that does not exist, or whose
 *                 scope ("host[:port][/path]" as the secrets file has it,
 *                 passed in by the caller: policy/ does not use the secrets
 *                 module) does not cover one of the rule's host patterns on
 *                 every port the rule allows (443 when it lists none); a
 *                 path-limited scope counts as covering its host
 * Warnings (exit 0 unless errors):
 *   allow_any_host  an allow rule with host "*"
 *   allow_any_port  an allow rule without ports
 *   secret_unreachable  a secret no enforced allow rule can inject: none
 *                 whose hosts overlap its scope lets it (inject names it, or
 *                 the rule has no inject list), and the default is deny
 *   wildcard_wider  a wildcard allow rule ("*.x", "*") strictly wider than a
 *                 secret scoped under it: every other host it allows gets
 *                 the sandbox's traffic next to that secret's
 *   staged_old (--db) a staged ("mode": "dry-run") rule that already
 *                 recorded would_deny before the window: staged for longer
 *                 than the window, still not enforced
 *   unused (--db)   a rule that matched no request of the window
 *   top_denied (--db) the hosts the policy denies most often in the window
 *
 * Findings carry file:line:col of the rule (the policy file is parsed again
 * for locations) and the rule's name, as `policy check` explains.
 */
#include "pol_int.h"

#include "audit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define POL_LINT_TOP_DENIED 10
#define POL_LINT_MAX_HOSTS 16384 /* distinct denied hosts counted (bounded memory) */

struct pol_finding {
    int  error;
    char code[24];
    int  rule;
    char msg[600];
};

struct pol_lint {
    const struct pol_policy    *p;
    const struct pol_lint_opts *o;
    struct pol_lint_stats      *st;
    struct pol_finding         *f;
    size_t                      nf, capf;
    struct al_json             *doc;
    /* --db */
    uint64_t *hits; /* per rule */
    struct pol_dhost {
        char     host[256];
        uint64_t n;
    } * dh;
    size_t   dmask, ndh;
    int64_t *staged_since; /* per rule: first would_deny before the window, 0 none */
};

AL_PRINTF(5, 6)
static void
pol_lint_add(struct pol_lint *l, int error, const char *code, int rule, const char *fmt, ...)
{
    struct pol_finding *f;
    va_list             ap;

    if (l->nf == l->capf) {
        size_t              cap = l->capf ? 2 * l->capf : 16;
        struct pol_finding *n = al_realloc(l->f, cap * sizeof(*n));

        if (n == NULL)
            return;
        l->f = n;
        l->capf = cap;
    }
    f = &l->f[l->nf++];
    f->error = error;
    al_strlcpy(f->code, sizeof(f->code), code);
    f->rule = rule;
    va_start(ap, fmt);
    vsnprintf(f->msg, sizeof(f->msg), fmt, ap);
    va_end(ap);
    if (error)
        l->st->errors++;
    else
        l->st->warnings++;
}

static int
pol_lint_https_port(const struct pol_rule *r)
{
    if (r->ports == NULL)
        return 1;
    for (int i = 0; i < r->nports; i++) {
        if (r->ports[i] == 443)
            return 1;
    }
    return 0;
}

static int
pol_lint_has(char *const *list, int n, const char *s)
{
    for (int i = 0; i < n; i++) {
        if (strcmp(list[i], s) == 0)
            return 1;
    }
    return 0;
}

static int
pol_lint_secret(const struct pol_lint_opts *o, const char *name)
{
    for (int i = 0; i < o->nsecrets; i++) {
        if (strcmp(o->secret_names[i], name) == 0)
            return i;
    }
    return -1;
}

/* Splits a scope "host[:port][/path]" ("[v6]:port" too) into its host
 * pattern and port (0 = any). AL_OK or AL_ERROR. */
static int
pol_lint_scope(const char *scope, struct pol_hostpat *hp, uint16_t *port)
{
    char        host[POL_HOST_MAX_BYTES + 3];
    const char *why, *p;
    size_t      n;

    if (scope[0] == '[') {
        p = strchr(scope, ']');
        n = p != NULL ? (size_t)(p - scope) + 1 : strlen(scope);
    } else {
        n = strcspn(scope, ":/");
    }
    if (n >= sizeof(host))
        return AL_ERROR;
    memcpy(host, scope, n);
    host[n] = '\0';
    *port = scope[n] == ':' ? (uint16_t)strtoul(scope + n + 1, NULL, 10) : 0;
    return pol_hostpat_parse(host, hp, &why);
}

/* Does one of the scopes cover every host of pattern h on port? */
static int
pol_lint_scope_covers(const char *const *scopes, const struct pol_hostpat *h, uint16_t port)
{
    for (int k = 0; scopes != NULL && scopes[k] != NULL; k++) {
        struct pol_hostpat sp;
        uint16_t           sport;
        int                ok;

        if (pol_lint_scope(scopes[k], &sp, &sport) != AL_OK)
            continue;
        ok = pol_hostpat_covers(&sp, h) && (sport == 0 || sport == port);
        al_free(sp.name);
        if (ok)
            return 1;
    }
    return 0;
}

static void
pol_lint_rules(struct pol_lint *l)
{
    const struct pol_policy    *p = l->p;
    const struct pol_lint_opts *o = l->o;

    for (int j = 0; j < p->nrules; j++) {
        const struct pol_rule *r = &p->rules[j];
        int                    s = pol_rule_shadowed(p, j);

        if (s >= 0) {
            const struct pol_rule *a = &p->rules[s];

            if (pol_rule_covers_rule(r, a) && r->action == a->action && !r->staged)
                pol_lint_add(l, 1, "duplicate", j,
                             "rule \"%s\" duplicates earlier rule \"%s\" (rules[%d]): they match "
                             "the same requests, so it is never reached",
                             r->name, a->name, s);
            else
                pol_lint_add(l, 1, "shadowed", j,
                             "rule \"%s\" is never reached: earlier rule \"%s\" (rules[%d]) "
                             "matches every request it matches (first match wins)",
                             r->name, a->name, s);
        }
        if (!r->intercept && pol_lint_https_port(r) &&
            ((r->methods != NULL && !pol_lint_has(r->methods, r->nmethods, "CONNECT")) ||
             r->paths != NULL))
            pol_lint_add(l, 1, "tls_unseen", j,
                         "rule \"%s\" limits %s but does not intercept: for HTTPS the daemon "
                         "sees only `CONNECT host:%s`, so the rule never matches TLS traffic "
                         "(%s); add \"intercept\": true, or \"ports\" without 443",
                         r->name,
                         r->methods != NULL && r->paths != NULL ? "methods and paths"
                         : r->methods != NULL                   ? "methods"
                                                                : "paths",
                         r->ports == NULL ? "port" : "443",
                         r->action == POL_ACT_ALLOW ? "such a CONNECT is refused"
                                                    : "such a CONNECT is not denied by it");
        if (o->known_sandboxes != NULL) {
            for (int i = 0; i < r->nsandboxes; i++) {
                int known = 0;

                for (int k = 0; k < o->nknown && !known; k++)
                    known = strcmp(o->known_sandboxes[k], r->sandboxes[i]) == 0;
                if (!known)
                    pol_lint_add(l, 1, "unknown_sandbox", j,
                                 "rule \"%s\" names sandbox \"%s\", which the config does not "
                                 "define: it never applies to it",
                                 r->name, r->sandboxes[i]);
            }
        }
        if (o->secrets_given) {
            for (int i = 0; i < r->ninject; i++) {
                int k = pol_lint_secret(o, r->inject[i]);

                if (k < 0) {
                    pol_lint_add(l, 1, "inject_unknown", j,
                                 "rule \"%s\" injects secret \"%s\", which the secrets file "
                                 "does not define",
                                 r->name, r->inject[i]);
                    continue;
                }
                for (int h = 0; h < r->nhosts; h++) {
                    uint16_t port = 443;
                    int      ok = 1;

                    /* every port the rule allows (no ports: HTTPS) */
                    for (int pt = 0; pt < (r->ports != NULL ? r->nports : 1) && ok; pt++) {
                        port = r->ports != NULL ? r->ports[pt] : 443;
                        ok = pol_lint_scope_covers(o->secret_hosts[k], &r->hosts[h], port);
                    }
                    if (!ok)
                        pol_lint_add(l, 1, "inject_out_of_scope", j,
                                     "rule \"%s\" injects secret \"%s\", whose scope does not "
                                     "cover host %s%s (port %u): it would be refused there",
                                     r->name, r->inject[i],
                                     r->hosts[h].kind == POL_HP_SUFFIX ? "*." : "",
                                     r->hosts[h].kind == POL_HP_ANY ? "*" : r->hosts[h].name, port);
                }
            }
        }
        if (r->action == POL_ACT_ALLOW && !r->staged) {
            for (int h = 0; h < r->nhosts; h++) {
                if (r->hosts[h].kind == POL_HP_ANY)
                    pol_lint_add(l, 0, "allow_any_host", j,
                                 "allow rule \"%s\" has host \"*\": every destination its "
                                 "other limits let through is allowed",
                                 r->name);
            }
            if (r->ports == NULL)
                pol_lint_add(l, 0, "allow_any_port", j,
                             "allow rule \"%s\" has no \"ports\": every port of its hosts is "
                             "allowed",
                             r->name);
        }
    }
}

/* ---- secret scopes ------------------------------------------------------ */

static int
pol_lint_overlap(const struct pol_hostpat *a, const struct pol_hostpat *b)
{
    return pol_hostpat_covers(a, b) || pol_hostpat_covers(b, a);
}

static void
pol_lint_secrets(struct pol_lint *l)
{
    const struct pol_policy    *p = l->p;
    const struct pol_lint_opts *o = l->o;

    for (int i = 0; i < o->nsecrets; i++) {
        const char *const *hosts = o->secret_hosts[i];
        int                reached = p->default_allow;

        for (int j = 0; j < p->nrules; j++) {
            const struct pol_rule *r = &p->rules[j];
            int                    names = r->ninject == 0;

            if (r->action != POL_ACT_ALLOW || r->staged)
                continue;
            for (int k = 0; k < r->ninject && !names; k++)
                names = strcmp(r->inject[k], o->secret_names[i]) == 0;
            for (int k = 0; hosts != NULL && hosts[k] != NULL; k++) {
                struct pol_hostpat sp;
                uint16_t           sport;

                if (pol_lint_scope(hosts[k], &sp, &sport) != AL_OK)
                    continue;
                for (int h = 0; h < r->nhosts; h++) {
                    const struct pol_hostpat *rp = &r->hosts[h];

                    if (names && pol_lint_overlap(rp, &sp))
                        reached = 1;
                    if (rp->kind != POL_HP_EXACT && pol_hostpat_covers(rp, &sp) &&
                        !pol_hostpat_covers(&sp, rp))
                        pol_lint_add(l, 0, "wildcard_wider", j,
                                     "allow rule \"%s\" (%s%s) is wider than secret \"%s\" "
                                     "scoped under it (%s): it allows every other host there "
                                     "too",
                                     r->name, rp->kind == POL_HP_SUFFIX ? "*." : "",
                                     rp->kind == POL_HP_ANY ? "*" : rp->name, o->secret_names[i],
                                     hosts[k]);
                }
                al_free(sp.name);
            }
        }
        if (!reached)
            pol_lint_add(l, 0, "secret_unreachable", -1,
                         "secret \"%s\": no allow rule reaches its scope and injects it",
                         o->secret_names[i]);
    }
}

/* ---- --db: usage in the window ----------------------------------------- */

static void
pol_lint_deny_host(struct pol_lint *l, const char *host)
{
    uint64_t h = pol_hash(host, strlen(host));
    size_t   i;

    for (i = h & l->dmask; l->dh[i].host[0] != '\0'; i = (i + 1) & l->dmask) {
        if (strcmp(l->dh[i].host, host) == 0) {
            l->dh[i].n++;
            return;
        }
    }
    if (l->ndh >= POL_LINT_MAX_HOSTS)
        return;
    al_strlcpy(l->dh[i].host, sizeof(l->dh[i].host), host);
    l->dh[i].n = 1;
    l->ndh++;
}

static int
pol_lint_row(void *arg, const struct aud_scan_row *r)
{
    struct pol_lint    *l = arg;
    struct pol_request  rq;
    struct pol_decision d;

    if (strcmp(r->decision, "allow") != 0 && strcmp(r->decision, "deny") != 0 &&
        strcmp(r->decision, "would_deny") != 0)
        return AL_OK;
    l->st->rows++;
    memset(&rq, 0, sizeof(rq));
    rq.sandbox = r->sandbox[0] != '\0' ? r->sandbox : NULL;
    rq.scheme = r->scheme;
    rq.host = r->host;
    rq.host_is_ip = strchr(r->host, ':') != NULL ||
                    (r->host[0] != '\0' && strspn(r->host, "0123456789.") == strlen(r->host));
    rq.port = (uint16_t)r->port;
    rq.method = r->method;
    if (r->path[0] != '\0' && strcmp(r->scheme, "connect") != 0) {
        rq.path = r->path;
        rq.path_len = r->path_len;
    }
    pol_decide(l->p, &rq, &d);
    if (d.rule_ref != NULL)
        l->hits[((const struct pol_rule *)d.rule_ref)->idx]++;
    if (d.staged_rule != NULL) {
        for (int i = 0; i < l->p->nrules; i++) {
            if (l->p->rules[i].name == d.staged_rule) {
                l->hits[i]++;
                break;
            }
        }
    }
    if (d.verdict == POL_DENY)
        pol_lint_deny_host(l, r->host);
    return AL_OK;
}

/* Rows from before the window: since when has each staged rule been
 * recording would_deny? */
static int
pol_lint_old_row(void *arg, const struct aud_scan_row *r)
{
    struct pol_lint *l = arg;

    if (strcmp(r->decision, "would_deny") != 0 || r->rule[0] == '\0')
        return AL_OK;
    for (int i = 0; i < l->p->nrules; i++) {
        const struct pol_rule *x = &l->p->rules[i];

        if (x->staged && strcmp(x->name, r->rule) == 0) {
            if (l->staged_since[i] == 0 || r->ts_us < l->staged_since[i])
                l->staged_since[i] = r->ts_us;
            break;
        }
    }
    return AL_OK;
}

static int
pol_dh_cmp(const void *a, const void *b)
{
    const struct pol_dhost *x = a, *y = b;

    if (x->n != y->n)
        return x->n < y->n ? 1 : -1;
    return strcmp(x->host, y->host);
}

static int
pol_lint_db(struct pol_lint *l, struct al_errs *errs)
{
    struct aud_filter f;
    size_t            slots = 1;
    int               n = 0;

    while (slots < 2 * POL_LINT_MAX_HOSTS)
        slots <<= 1;
    l->hits = al_calloc((size_t)l->p->nrules + 1, sizeof(*l->hits));
    l->dh = al_calloc(slots, sizeof(*l->dh));
    if (l->hits == NULL || l->dh == NULL) {
        al_errs_add(errs, "policy lint: out of memory");
        return AL_ERROR;
    }
    l->dmask = slots - 1;
    memset(&f, 0, sizeof(f));
    f.since_us = l->o->since_us;
    f.until_us = l->o->until_us;
    if (aud_query_scan(l->o->db, &f, pol_lint_row, l, NULL, errs) != AL_OK)
        return AL_ERROR;
    /* staged rules still staged after a whole window of evidence */
    l->staged_since = al_calloc((size_t)l->p->nrules + 1, sizeof(*l->staged_since));
    if (l->staged_since == NULL) {
        al_errs_add(errs, "policy lint: out of memory");
        return AL_ERROR;
    }
    for (int j = 0; j < l->p->nrules && l->o->since_us > 0; j++) {
        if (l->p->rules[j].staged) {
            memset(&f, 0, sizeof(f));
            f.until_us = l->o->since_us;
            if (aud_query_scan(l->o->db, &f, pol_lint_old_row, l, NULL, errs) != AL_OK)
                return AL_ERROR;
            break;
        }
    }
    for (int j = 0; j < l->p->nrules; j++) {
        if (l->staged_since[j] != 0) {
            time_t    t = (time_t)(l->staged_since[j] / 1000000);
            struct tm tm;
            char      when[32] = "?";

            if (gmtime_r(&t, &tm) != NULL)
                strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
            pol_lint_add(l, 0, "staged_old", j,
                         "staged (dry-run) rule \"%s\" has recorded would_deny since %s, "
                         "before the window: enforce it or drop it",
                         l->p->rules[j].name, when);
        }
        if (l->hits[j] == 0)
            pol_lint_add(l, 0, "unused", j,
                         "rule \"%s\" matched none of the %llu requests recorded in the window",
                         l->p->rules[j].name, (unsigned long long)l->st->rows);
    }
    /* compact and sort the denied hosts */
    for (size_t i = 0; i < slots; i++) {
        if (l->dh[i].host[0] != '\0')
            l->dh[n++] = l->dh[i];
    }
    qsort(l->dh, (size_t)n, sizeof(*l->dh), pol_dh_cmp);
    for (int i = 0; i < n && i < POL_LINT_TOP_DENIED; i++)
        pol_lint_add(l, 0, "top_denied", -1, "host %s: %llu requests in the window denied",
                     l->dh[i].host, (unsigned long long)l->dh[i].n);
    return AL_OK;
}

/* ---- output ------------------------------------------------------------ */

static void
pol_lint_json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s != '\0'; s++) {
        unsigned char ch = (unsigned char)*s;

        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20 || ch >= 0x7f)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

static void
pol_lint_print(struct pol_lint *l)
{
    FILE       *f = l->o->out;
    const char *name = l->o->policy_name ? l->o->policy_name : "policy";

    if (l->o->json) {
        fprintf(f, "{\"policy\":");
        pol_lint_json_str(f, name);
        fprintf(f, ",\"rules\":%d,\"errors\":%llu,\"warnings\":%llu,\"findings\":[", l->p->nrules,
                (unsigned long long)l->st->errors, (unsigned long long)l->st->warnings);
    }
    for (size_t i = 0; i < l->nf; i++) {
        const struct pol_finding *x = &l->f[i];
        unsigned                  line = 0, col = 0;
        char                      jp[32] = "";

        if (x->rule >= 0) {
            snprintf(jp, sizeof(jp), "rules[%d]", x->rule);
            if (l->doc != NULL)
                al_json_locate(l->doc, jp, &line, &col);
        }
        if (l->o->json) {
            fprintf(f, "%s{\"severity\":\"%s\",\"code\":\"%s\",", i ? "," : "",
                    x->error ? "error" : "warning", x->code);
            if (x->rule >= 0) {
                fprintf(f, "\"rule\":");
                pol_lint_json_str(f, l->p->rules[x->rule].name);
                fprintf(f, ",\"index\":%d,\"line\":%u,\"col\":%u,", x->rule, line, col);
            }
            fprintf(f, "\"message\":");
            pol_lint_json_str(f, x->msg);
            fputc('}', f);
        } else if (x->rule >= 0) {
            fprintf(f, "%s:%u:%u: %s: %s: %s [%s]\n", name, line, col,
                    x->error ? "error" : "warning", jp, x->msg, x->code);
        } else {
            fprintf(f, "%s: %s: %s [%s]\n", name, x->error ? "error" : "warning", x->msg, x->code);
        }
    }
    if (l->o->json) {
        fprintf(f, "]}\n");
        return;
    }
    if (l->st->errors == 0 && l->st->warnings == 0)
        fprintf(f, "%s: %d rules, no findings\n", name, l->p->nrules);
    else
        fprintf(f, "%s: %d rules, %llu errors, %llu warnings\n", name, l->p->nrules,
                (unsigned long long)l->st->errors, (unsigned long long)l->st->warnings);
}

int
pol_lint(const struct pol_policy *p, const struct pol_lint_opts *o, struct pol_lint_stats *st,
         struct al_errs *errs)
{
    struct pol_lint l;
    struct al_errs  jerrs;
    int             rc = 1;

    memset(st, 0, sizeof(*st));
    memset(&l, 0, sizeof(l));
    l.p = p;
    l.o = o;
    l.st = st;
    al_errs_init(&jerrs);
    if (o->policy_path != NULL)
        l.doc = al_json_load(o->policy_path, &jerrs); /* locations only */
    pol_lint_rules(&l);
    pol_lint_secrets(&l);
    if (o->db != NULL && pol_lint_db(&l, errs) != AL_OK)
        goto out;
    if (o->out != NULL)
        pol_lint_print(&l);
    rc = st->errors > 0 ? 3 : 0;
out:
    al_json_free(l.doc);
    al_errs_free(&jerrs);
    al_free(l.f);
    al_free(l.hits);
    al_free(l.dh);
    al_free(l.staged_since);
    return rc;
}
