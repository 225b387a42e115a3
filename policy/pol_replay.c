/*
 * pol_replay.c - `airlock policy replay`: every recorded request in a window
 * decided again under a candidate policy, with the same pol_decide() and
 * address guard (pol_filter_addrs) the daemon runs, and compared with the
 * decision the row recorded.
 *
 * Rows are read through audit's public bulk reader (aud_query_scan: id
 * order, constant memory). A row is replayed when its recorded decision came
 * from the policy: allow, would_deny, or a deny whose reason is a policy
 * reason (denied_by_rule, *_not_allowed, bad_path, encoded_slash,
 * address_not_allowed). Rows refused before the policy (identity, protocol,
 * errors) or after it allowed them (secret scope, body placeholders) are
 * counted, not replayed: the policy did not make their outcome.
 *
 * Inputs: sandbox, method, scheme, host, port and path from the row; the
 * guard's address from `addr` (schema v4) or else `upstream` (the address
 * connected to), or the host itself when it is an IP literal. A row whose
 * new decision needs the guard but has no address (a pre-v4
 * address_not_allowed refusal, or a request the old policy denied before any
 * lookup) is decided without it and counted as lacking an input; a
 * pre-v4 guard refusal keeps its refusal. A recorded guard refusal of a
 * public address stays refused: the guard refuses a public address only as
 * one of airlock's own interface addresses (the recording host's list is not
 * in the row), before any exemption.
 *
 * Unchanged requests are only counted. Changed ones are grouped by
 * (transition, host, old rule, new rule, new reason) in a hash table capped
 * at POL_REPLAY_MAX_GROUPS groups (rows beyond it are counted, not listed),
 * so memory is bounded whatever the row count.
 */
#include "pol_int.h"

#include "audit.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define POL_REPLAY_MAX_GROUPS 20000
#define POL_REPLAY_EXAMPLE_BYTES 160
#define POL_REPLAY_PATH_CUT 2000        /* the daemon stores at most this much of a path */
#define POL_REPLAY_PART_MIN_ROWS 100000 /* rows per thread below which one thread reads all */

enum { POL_TR_N = 3 }; /* verdicts: allow, deny, would_deny */

struct pol_rgroup {
    uint64_t hash;
    int      from, to;
    char     host[256];
    char     rule_was[64], rule[POL_NAME_MAX_BYTES + 1], reason[64];
    uint64_t count;
    int64_t  first_us, last_us;
    int      nex;
    char     ex[POL_REPLAY_EXAMPLES][POL_REPLAY_EXAMPLE_BYTES];
};

struct pol_replay {
    const struct pol_policy      *p;
    const struct pol_replay_opts *o;
    struct pol_replay_stats      *st;
    struct pol_rgroup           **tab; /* open addressing, POL_REPLAY_TAB slots */
    size_t                        mask;
    uint64_t                      trans[POL_TR_N][POL_TR_N];
};

static int
pol_verdict_of(const char *s)
{
    if (strcmp(s, "allow") == 0)
        return POL_ALLOW;
    if (strcmp(s, "deny") == 0)
        return POL_DENY;
    if (strcmp(s, "would_deny") == 0)
        return POL_WOULD_DENY;
    return -1;
}

/* Reasons only the policy (and its address guard) gives. */
static int
pol_reason_is_policy(const char *r)
{
    static const char *const reasons[] = {
        "denied_by_rule",      "host_not_allowed",    "port_not_allowed", "method_not_allowed",
        "path_not_allowed",    "sandbox_not_allowed", "bad_path",         "encoded_slash",
        "address_not_allowed", "allowed_by_rule",     "default_allow",
    };

    for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++) {
        if (strcmp(r, reasons[i]) == 0)
            return 1;
    }
    return 0;
}

/* "1.2.3.4:80", "[::1]:443" (px_sockaddr_str's forms) or a bare literal
 * with `port`. AL_OK or AL_ERROR. */
static int
pol_replay_addr(const char *s, uint16_t port, struct sockaddr_storage *out)
{
    char        buf[80];
    const char *colon;
    size_t      n;
    long        pt = port;

    memset(out, 0, sizeof(*out));
    /* fast path: the canonical "a.b.c.d:port" the daemon writes */
    colon = strchr(s, ':');
    if (colon != NULL && s[0] != '[' && strchr(colon + 1, ':') == NULL &&
        (size_t)(colon - s) < INET_ADDRSTRLEN) {
        struct sockaddr_in *sin = (struct sockaddr_in *)out;

        n = (size_t)(colon - s);
        memcpy(buf, s, n);
        buf[n] = '\0';
        if (inet_pton(AF_INET, buf, &sin->sin_addr) == 1) {
            sin->sin_family = AF_INET;
            sin->sin_port = htons((uint16_t)strtol(colon + 1, NULL, 10));
            return AL_OK;
        }
    }
    if (s[0] == '[') {
        const char *end = strchr(s, ']');

        if (end == NULL || (size_t)(end - s - 1) >= sizeof(buf))
            return AL_ERROR;
        n = (size_t)(end - s - 1);
        memcpy(buf, s + 1, n);
        buf[n] = '\0';
        if (end[1] == ':')
            pt = strtol(end + 2, NULL, 10);
    } else {
        colon = strrchr(s, ':');
        if (colon != NULL && strchr(s, ':') == colon) { /* v4:port */
            n = (size_t)(colon - s);
            pt = strtol(colon + 1, NULL, 10);
        } else {
            n = strlen(s);
        }
        if (n >= sizeof(buf))
            return AL_ERROR;
        memcpy(buf, s, n);
        buf[n] = '\0';
    }
    if (pol_addr_parse_literal(buf, strlen(buf), out) != AL_OK)
        return AL_ERROR;
    if (out->ss_family == AF_INET)
        ((struct sockaddr_in *)out)->sin_port = htons((uint16_t)pt);
    else
        ((struct sockaddr_in6 *)out)->sin6_port = htons((uint16_t)pt);
    return AL_OK;
}

/* Cheap pre-check before parsing: IP literals are stored canonical. */
static int
pol_replay_host_is_ip(const char *h, struct sockaddr_storage *ss)
{
    size_t n = strlen(h);

    if (n == 0 || (strchr(h, ':') == NULL && !(h[n - 1] >= '0' && h[n - 1] <= '9')))
        return 0;
    return pol_addr_parse_literal(h, n, ss) == AL_OK;
}

static struct pol_rgroup *
pol_replay_group(struct pol_replay *rp, int from, int to, const struct aud_scan_row *r,
                 const char *rule, const char *reason)
{
    uint64_t           h;
    size_t             i;
    struct pol_rgroup *g;
    char               key[512];
    int                kn;

    kn = snprintf(key, sizeof(key), "%d|%d|%s|%s|%s|%s", from, to, r->host, r->rule, rule, reason);
    h = pol_hash(key, kn > 0 && (size_t)kn < sizeof(key) ? (size_t)kn : sizeof(key) - 1);
    for (i = h & rp->mask; rp->tab[i] != NULL; i = (i + 1) & rp->mask) {
        g = rp->tab[i];
        if (g->hash == h && g->from == from && g->to == to && strcmp(g->host, r->host) == 0 &&
            strcmp(g->rule_was, r->rule) == 0 && strcmp(g->rule, rule) == 0 &&
            strcmp(g->reason, reason) == 0)
            return g;
    }
    if (rp->st->groups >= POL_REPLAY_MAX_GROUPS)
        return NULL;
    g = al_calloc(1, sizeof(*g));
    if (g == NULL)
        return NULL;
    g->hash = h;
    g->from = from;
    g->to = to;
    al_strlcpy(g->host, sizeof(g->host), r->host);
    al_strlcpy(g->rule_was, sizeof(g->rule_was), r->rule);
    al_strlcpy(g->rule, sizeof(g->rule), rule);
    al_strlcpy(g->reason, sizeof(g->reason), reason);
    g->first_us = r->ts_us;
    g->last_us = r->ts_us;
    rp->tab[i] = g;
    rp->st->groups++;
    return g;
}

static void
pol_replay_example(struct pol_rgroup *g, const struct aud_scan_row *r)
{
    char ex[POL_REPLAY_EXAMPLE_BYTES];

    snprintf(ex, sizeof(ex), "%s %s", r->method, r->path[0] != '\0' ? r->path : r->host);
    for (int i = 0; i < g->nex; i++) {
        if (strcmp(g->ex[i], ex) == 0)
            return;
    }
    if (g->nex < POL_REPLAY_EXAMPLES)
        memcpy(g->ex[g->nex++], ex, sizeof(ex));
}

/* The tunnel of an intercepted request, decided again: 1 when its decision
 * is the request's (denied, or not intercepted on a forward listener). */
static int
replay_tunnel_first(struct pol_replay *rp, const struct aud_scan_row *r,
                    const struct pol_request *rq, struct pol_decision *d)
{
    struct pol_request crq = *rq;

    crq.scheme = "connect";
    crq.method = "CONNECT";
    crq.path = NULL;
    crq.path_len = 0;
    pol_decide(rp->p, &crq, d);
    if (d->verdict == POL_DENY)
        return 1;
    if (!d->intercept && strcmp(r->mode, "forward") == 0) {
        rp->st->opaque++;
        return 1;
    }
    return 0;
}

static int
pol_replay_row(void *arg, const struct aud_scan_row *r)
{
    struct pol_replay       *rp = arg;
    struct pol_replay_stats *st = rp->st;
    struct pol_request       rq;
    struct pol_decision      d;
    struct sockaddr_storage  sa;
    int                      from, to, have_addr = 0, lacked = 0, tunnel;
    const char              *rule;
    struct pol_rgroup       *g;

    st->rows++;
    from = pol_verdict_of(r->decision);
    if (from < 0 || (from == POL_DENY && !pol_reason_is_policy(r->reason))) {
        if (from == POL_DENY && r->rule[0] != '\0')
            st->after_policy++; /* the policy allowed it; secrets etc. refused */
        else
            st->before_policy++;
        return AL_OK;
    }
    st->replayed++;
    if (st->first_us == 0 || r->ts_us < st->first_us)
        st->first_us = r->ts_us;
    if (r->ts_us > st->last_us)
        st->last_us = r->ts_us;

    memset(&rq, 0, sizeof(rq));
    rq.sandbox = r->sandbox[0] != '\0' ? r->sandbox : NULL;
    rq.scheme = r->scheme;
    rq.host = r->host;
    rq.host_is_ip = pol_replay_host_is_ip(r->host, &sa);
    rq.port = (uint16_t)r->port;
    rq.method = r->method;
    tunnel = strcmp(r->scheme, "connect") == 0 || strcmp(r->method, "CONNECT") == 0;
    if (!tunnel && r->path[0] != '\0') {
        rq.path = r->path;
        rq.path_len = r->path_len;
        if (r->path_len >= POL_REPLAY_PATH_CUT) {
            st->lacked_path++;
            lacked = 1;
        }
    }
    /* A request inside an intercepted tunnel exists only while the tunnel
     * does: the client's CONNECT (a transparent TLS flow likewise) is
     * decided first. Denied, the request never gets sent; allowed without
     * interception on a forward listener, it travels unseen in an opaque
     * tunnel (a transparent flow may still be intercepted for a secret's
     * scope, which the row does not tell: decided as recorded). */
    if (strcmp(r->scheme, "https") == 0 && replay_tunnel_first(rp, r, &rq, &d))
        goto guard;
    pol_decide(rp->p, &rq, &d);
guard:

    /* the address guard, on the address the daemon's guard checked */
    if (d.verdict != POL_DENY) {
        if (r->addr[0] != '\0' && pol_replay_addr(r->addr, (uint16_t)r->port, &sa) == AL_OK)
            have_addr = 1;
        else if (r->upstream[0] != '\0' &&
                 pol_replay_addr(r->upstream, (uint16_t)r->port, &sa) == AL_OK)
            have_addr = 1;
        else if (rq.host_is_ip && pol_replay_addr(r->host, (uint16_t)r->port, &sa) == AL_OK)
            have_addr = 1;
        if (have_addr) {
            (void)pol_filter_addrs(rp->p, &d, &sa, 1, rp->o->self, rp->o->nself);
            /* The guard refuses a public address only as one of airlock's
             * own (a host interface behind a wildcard listener: the
             * interface list of the recording host is not in the row), and
             * that refusal comes before any exemption a policy can grant. */
            if (d.verdict != POL_DENY && strcmp(r->reason, "address_not_allowed") == 0 &&
                pol_addr_classify((const struct sockaddr *)&sa) == POL_ADDR_PUBLIC) {
                d.verdict = POL_DENY;
                d.reason = "address_not_allowed";
            }
        } else if (strcmp(r->reason, "address_not_allowed") == 0) {
            /* a guard refusal recorded without its address (before schema
             * v4): kept as it was */
            d.verdict = POL_DENY;
            d.reason = "address_not_allowed";
            st->lacked_addr++;
            lacked = 1;
        } else if (from == POL_DENY) {
            /* denied before any lookup: the address is not known */
            st->lacked_addr++;
            lacked = 1;
        }
    }
    if (lacked)
        st->lacked++;
    to = (int)d.verdict;
    rule = d.verdict == POL_WOULD_DENY && d.staged_rule != NULL ? d.staged_rule : d.rule;
    if (from == to) {
        st->unchanged++;
        if (strcmp(rule, r->rule) != 0)
            st->rule_changed++;
        return AL_OK;
    }
    st->changed++;
    rp->trans[from][to]++;
    g = pol_replay_group(rp, from, to, r, rule, d.reason);
    if (g == NULL) {
        st->unlisted++;
        return AL_OK;
    }
    g->count++;
    if (r->ts_us < g->first_us)
        g->first_us = r->ts_us;
    if (r->ts_us > g->last_us)
        g->last_us = r->ts_us;
    pol_replay_example(g, r);
    return AL_OK;
}

/* ---- output ------------------------------------------------------------ */

static void
pol_fmt_time(int64_t us, char *buf, size_t n)
{
    time_t    t = (time_t)(us / 1000000);
    struct tm tm;

    if (us <= 0 || gmtime_r(&t, &tm) == NULL) {
        snprintf(buf, n, "-");
        return;
    }
    strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Terminal-safe: control bytes, DEL, bytes >= 0x80 and backslash as \xNN. */
static void
pol_put_esc(FILE *f, const char *s)
{
    for (; *s != '\0'; s++) {
        unsigned char ch = (unsigned char)*s;

        if (ch < 0x20 || ch >= 0x7f || ch == '\\')
            fprintf(f, "\\x%02x", ch);
        else
            fputc(ch, f);
    }
}

static void
pol_put_json(FILE *f, const char *s)
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

/* RFC 4180 field; a leading = + - @ is neutralised (spreadsheet formulas). */
static void
pol_put_csv(FILE *f, const char *s)
{
    fputc('"', f);
    if (*s == '=' || *s == '+' || *s == '-' || *s == '@')
        fputc('\'', f);
    for (; *s != '\0'; s++) {
        unsigned char ch = (unsigned char)*s;

        if (ch == '"')
            fputs("\"\"", f);
        else if (ch < 0x20 || ch == 0x7f)
            fprintf(f, "\\x%02x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

static int
pol_group_cmp(const void *a, const void *b)
{
    static const int order[POL_TR_N][POL_TR_N] = {
        /* from allow */ {9, 0, 1},
        /* from deny */ {3, 9, 4},
        /* from would_deny */ {5, 2, 9},
    };
    const struct pol_rgroup *x = *(const struct pol_rgroup *const *)a;
    const struct pol_rgroup *y = *(const struct pol_rgroup *const *)b;
    int                      c = order[x->from][x->to] - order[y->from][y->to];

    if (c == 0)
        c = strcmp(x->host, y->host);
    if (c == 0)
        c = strcmp(x->rule, y->rule);
    if (c == 0)
        c = strcmp(x->rule_was, y->rule_was);
    if (c == 0)
        c = strcmp(x->reason, y->reason);
    return c;
}

static void
pol_replay_print(struct pol_replay *rp, struct pol_rgroup **gs, size_t ng)
{
    const struct pol_replay_stats *st = rp->st;
    FILE                          *f = rp->o->out;
    char                           t1[32], t2[32];

    if (rp->o->format == POL_REPLAY_JSON) {
        fprintf(f, "{\"policy\":");
        pol_put_json(f, rp->o->policy_name ? rp->o->policy_name : "");
        fprintf(f, ",\"db\":");
        pol_put_json(f, rp->o->db);
        fprintf(f,
                ",\"schema_version\":%d,\"rows\":%llu,\"replayed\":%llu,\"unchanged\":%llu,"
                "\"rule_changed\":%llu,\"changed\":%llu,\"unlisted\":%llu,"
                "\"not_replayed\":{\"before_policy\":%llu,\"after_policy\":%llu},"
                "\"lacked_input\":{\"rows\":%llu,\"addr\":%llu,\"path\":%llu},\"opaque\":%llu,"
                "\"transitions\":[",
                st->schema_version, (unsigned long long)st->rows, (unsigned long long)st->replayed,
                (unsigned long long)st->unchanged, (unsigned long long)st->rule_changed,
                (unsigned long long)st->changed, (unsigned long long)st->unlisted,
                (unsigned long long)st->before_policy, (unsigned long long)st->after_policy,
                (unsigned long long)st->lacked, (unsigned long long)st->lacked_addr,
                (unsigned long long)st->lacked_path, (unsigned long long)st->opaque);
        for (size_t i = 0, first = 1; i < ng;) {
            int    from = gs[i]->from, to = gs[i]->to;
            size_t j;

            fprintf(f, "%s{\"from\":\"%s\",\"to\":\"%s\",\"count\":%llu,\"groups\":[",
                    first ? "" : ",", pol_verdict_name((enum pol_verdict)from),
                    pol_verdict_name((enum pol_verdict)to),
                    (unsigned long long)rp->trans[from][to]);
            first = 0;
            for (j = i; j < ng && gs[j]->from == from && gs[j]->to == to; j++) {
                const struct pol_rgroup *g = gs[j];

                pol_fmt_time(g->first_us, t1, sizeof(t1));
                pol_fmt_time(g->last_us, t2, sizeof(t2));
                fprintf(f, "%s{\"host\":", j == i ? "" : ",");
                pol_put_json(f, g->host);
                fprintf(f, ",\"rule_was\":");
                pol_put_json(f, g->rule_was);
                fprintf(f, ",\"rule\":");
                pol_put_json(f, g->rule);
                fprintf(f, ",\"reason\":");
                pol_put_json(f, g->reason);
                fprintf(f, ",\"count\":%llu,\"first\":\"%s\",\"last\":\"%s\",\"examples\":[",
                        (unsigned long long)g->count, t1, t2);
                for (int k = 0; k < g->nex; k++) {
                    if (k > 0)
                        fputc(',', f);
                    pol_put_json(f, g->ex[k]);
                }
                fprintf(f, "]}");
            }
            fprintf(f, "]}");
            i = j;
        }
        fprintf(f, "]}\n");
        return;
    }
    if (rp->o->format == POL_REPLAY_CSV) {
        fprintf(f, "from,to,host,rule_was,rule,reason,count,first,last,examples\n");
        for (size_t i = 0; i < ng; i++) {
            const struct pol_rgroup *g = gs[i];
            char                     ex[POL_REPLAY_EXAMPLES * (POL_REPLAY_EXAMPLE_BYTES + 3)];
            size_t                   n = 0;

            pol_fmt_time(g->first_us, t1, sizeof(t1));
            pol_fmt_time(g->last_us, t2, sizeof(t2));
            ex[0] = '\0';
            for (int k = 0; k < g->nex; k++)
                n += (size_t)snprintf(ex + n, sizeof(ex) - n, "%s%s", k ? " | " : "", g->ex[k]);
            fprintf(f, "%s,%s,", pol_verdict_name((enum pol_verdict)g->from),
                    pol_verdict_name((enum pol_verdict)g->to));
            pol_put_csv(f, g->host);
            fputc(',', f);
            pol_put_csv(f, g->rule_was);
            fputc(',', f);
            pol_put_csv(f, g->rule);
            fputc(',', f);
            pol_put_csv(f, g->reason);
            fprintf(f, ",%llu,%s,%s,", (unsigned long long)g->count, t1, t2);
            pol_put_csv(f, ex);
            fputc('\n', f);
        }
        return;
    }
    pol_fmt_time(st->first_us, t1, sizeof(t1));
    pol_fmt_time(st->last_us, t2, sizeof(t2));
    fprintf(f, "replayed %llu of %llu recorded requests (%s .. %s) under ",
            (unsigned long long)st->replayed, (unsigned long long)st->rows, t1, t2);
    pol_put_esc(f, rp->o->policy_name ? rp->o->policy_name : "the policy");
    fprintf(f, "\n  unchanged:  %llu", (unsigned long long)st->unchanged);
    if (st->rule_changed > 0)
        fprintf(f, " (%llu decided by another rule)", (unsigned long long)st->rule_changed);
    fprintf(f, "\n  changed:    %llu\n", (unsigned long long)st->changed);
    if (st->before_policy + st->after_policy > 0)
        fprintf(f,
                "  not replayed: %llu refused before the policy (identity, protocol, errors), "
                "%llu refused after it allowed them (secret scope)\n",
                (unsigned long long)st->before_policy, (unsigned long long)st->after_policy);
    if (st->lacked > 0)
        fprintf(f,
                "  lacked an input: %llu (no resolved address for the guard: %llu; path cut "
                "at %d bytes: %llu)%s\n",
                (unsigned long long)st->lacked, (unsigned long long)st->lacked_addr,
                POL_REPLAY_PATH_CUT, (unsigned long long)st->lacked_path,
                st->schema_version < AUD_SCHEMA_VERSION ? "; the file predates schema v4" : "");
    if (st->opaque > 0)
        fprintf(f,
                "  opaque:     %llu requests of intercepted tunnels would travel unseen (the "
                "tunnel is allowed but no longer intercepted): decided as their CONNECT\n",
                (unsigned long long)st->opaque);
    if (st->unlisted > 0)
        fprintf(f, "  unlisted:   %llu changed requests beyond %d groups (counted above)\n",
                (unsigned long long)st->unlisted, POL_REPLAY_MAX_GROUPS);
    for (size_t i = 0; i < ng;) {
        int    from = gs[i]->from, to = gs[i]->to;
        size_t j;

        fprintf(f, "\n%s \xe2\x86\x92 %s: %llu requests\n",
                pol_verdict_name((enum pol_verdict)from), pol_verdict_name((enum pol_verdict)to),
                (unsigned long long)rp->trans[from][to]);
        for (j = i; j < ng && gs[j]->from == from && gs[j]->to == to; j++) {
            const struct pol_rgroup *g = gs[j];

            pol_fmt_time(g->first_us, t1, sizeof(t1));
            pol_fmt_time(g->last_us, t2, sizeof(t2));
            fputs("  ", f);
            pol_put_esc(f, g->host);
            fprintf(f, "  rule ");
            pol_put_esc(f, g->rule_was);
            fprintf(f, " \xe2\x86\x92 ");
            pol_put_esc(f, g->rule);
            fprintf(f, " (");
            pol_put_esc(f, g->reason);
            fprintf(f, ")  %llu  %s .. %s\n", (unsigned long long)g->count, t1, t2);
            for (int k = 0; k < g->nex; k++) {
                fputs("      ", f);
                pol_put_esc(f, g->ex[k]);
                fputc('\n', f);
            }
        }
        i = j;
    }
}

/* ---- parallel parts ------------------------------------------------------ */

/* One thread's share: an id range of the file, its own connection, stats
 * and groups; merged into part 0 at the end. */
struct pol_rpart {
    struct pol_replay        rp;
    struct pol_replay_stats  st;
    struct al_errs           errs;
    const struct aud_filter *f;
    int64_t                  lo, hi;
    int                      rc, started;
    pthread_t                th;
};

static size_t
pol_replay_slots(void)
{
    size_t slots = 1;

    while (slots < 2 * POL_REPLAY_MAX_GROUPS)
        slots <<= 1;
    return slots;
}

static void *
pol_replay_thread(void *arg)
{
    struct pol_rpart *pt = arg;

    pt->rc = aud_query_scan_ids(pt->rp.o->db, pt->f, pt->lo, pt->hi, pol_replay_row, &pt->rp,
                                &pt->st.schema_version, &pt->errs);
    return NULL;
}

/* Folds part b into part a (a's table takes b's groups). */
static void
pol_replay_merge(struct pol_rpart *a, struct pol_rpart *b)
{
    struct pol_replay_stats *x = &a->st, *y = &b->st;
    size_t                   slots = a->rp.mask + 1;

    x->rows += y->rows;
    x->replayed += y->replayed;
    x->unchanged += y->unchanged;
    x->rule_changed += y->rule_changed;
    x->changed += y->changed;
    x->unlisted += y->unlisted;
    x->before_policy += y->before_policy;
    x->after_policy += y->after_policy;
    x->lacked += y->lacked;
    x->lacked_addr += y->lacked_addr;
    x->lacked_path += y->lacked_path;
    x->opaque += y->opaque;
    if (y->first_us != 0 && (x->first_us == 0 || y->first_us < x->first_us))
        x->first_us = y->first_us;
    if (y->last_us > x->last_us)
        x->last_us = y->last_us;
    for (int f = 0; f < POL_TR_N; f++)
        for (int t = 0; t < POL_TR_N; t++)
            a->rp.trans[f][t] += b->rp.trans[f][t];
    for (size_t k = 0; k < slots; k++) {
        struct pol_rgroup *g = b->rp.tab[k], *h = NULL;
        size_t             i;

        if (g == NULL)
            continue;
        b->rp.tab[k] = NULL;
        for (i = g->hash & a->rp.mask; a->rp.tab[i] != NULL; i = (i + 1) & a->rp.mask) {
            h = a->rp.tab[i];
            if (h->hash == g->hash && h->from == g->from && h->to == g->to &&
                strcmp(h->host, g->host) == 0 && strcmp(h->rule_was, g->rule_was) == 0 &&
                strcmp(h->rule, g->rule) == 0 && strcmp(h->reason, g->reason) == 0)
                break;
            h = NULL;
        }
        if (h != NULL) {
            h->count += g->count;
            if (g->first_us < h->first_us)
                h->first_us = g->first_us;
            if (g->last_us > h->last_us)
                h->last_us = g->last_us;
            for (int e = 0; e < g->nex && h->nex < POL_REPLAY_EXAMPLES; e++) {
                int dup = 0;

                for (int d = 0; d < h->nex && !dup; d++)
                    dup = strcmp(h->ex[d], g->ex[e]) == 0;
                if (!dup)
                    memcpy(h->ex[h->nex++], g->ex[e], sizeof(g->ex[e]));
            }
            al_free(g);
        } else if (x->groups < POL_REPLAY_MAX_GROUPS) {
            a->rp.tab[i] = g;
            x->groups++;
        } else {
            x->unlisted += g->count;
            al_free(g);
        }
    }
}

int
pol_replay(const struct pol_policy *p, const struct pol_replay_opts *o, struct pol_replay_stats *st,
           struct al_errs *errs)
{
    struct pol_rpart    parts[POL_REPLAY_MAX_THREADS];
    struct aud_filter   f;
    struct pol_rgroup **gs = NULL;
    size_t              ng = 0, slots = pol_replay_slots();
    int64_t             lo = 0, hi = 0;
    int                 rc = 1, nparts = o->threads > 0 ? o->threads : 1;

    memset(st, 0, sizeof(*st));
    memset(parts, 0, sizeof(parts));
    memset(&f, 0, sizeof(f));
    f.since_us = o->since_us;
    f.until_us = o->until_us;
    f.sandbox = o->sandbox;
    f.host = o->host;
    f.limit = o->limit;
    if (nparts > POL_REPLAY_MAX_THREADS)
        nparts = POL_REPLAY_MAX_THREADS;
    /* parts split the id range; --limit picks the newest rows: one part */
    if (nparts > 1 && o->limit > 0)
        nparts = 1;
    if (nparts > 1) {
        if (aud_query_id_range(o->db, &lo, &hi, errs) != AL_OK)
            return 1; /* the database could not be read */
        if (hi - lo < (o->part_rows > 0 ? o->part_rows : POL_REPLAY_PART_MIN_ROWS) * nparts)
            nparts = 1;
    }
    for (int k = 0; k < nparts; k++) {
        struct pol_rpart *pt = &parts[k];

        pt->rp.p = p;
        pt->rp.o = o;
        pt->rp.st = &pt->st;
        pt->rp.tab = al_calloc(slots, sizeof(*pt->rp.tab));
        pt->rp.mask = slots - 1;
        pt->f = &f;
        al_errs_init(&pt->errs);
        if (pt->rp.tab == NULL) {
            al_errs_add(errs, "policy replay: out of memory");
            nparts = k + 1;
            goto out;
        }
        if (nparts > 1) {
            pt->lo = lo + (hi - lo + 1) * k / nparts;
            pt->hi = lo + (hi - lo + 1) * (k + 1) / nparts - 1;
        }
    }
    for (int k = 1; k < nparts; k++) {
        if (pthread_create(&parts[k].th, NULL, pol_replay_thread, &parts[k]) == 0)
            parts[k].started = 1;
        else /* no thread: the part runs here */
            pol_replay_thread(&parts[k]);
    }
    pol_replay_thread(&parts[0]);
    for (int k = 1; k < nparts; k++) {
        if (parts[k].started)
            pthread_join(parts[k].th, NULL);
    }
    for (int k = 0; k < nparts; k++) {
        if (parts[k].rc != AL_OK) {
            al_errs_add(errs, "%s", parts[k].errs.text.data ? parts[k].errs.text.data : "failed");
            goto out;
        }
    }
    for (int k = 1; k < nparts; k++)
        pol_replay_merge(&parts[0], &parts[k]);
    *st = parts[0].st;
    parts[0].rp.st = st;
    if (st->groups > 0) {
        gs = al_calloc(st->groups, sizeof(*gs));
        if (gs == NULL) {
            al_errs_add(errs, "policy replay: out of memory");
            goto out;
        }
        for (size_t i = 0; i < slots; i++) {
            if (parts[0].rp.tab[i] != NULL)
                gs[ng++] = parts[0].rp.tab[i];
        }
        qsort(gs, ng, sizeof(*gs), pol_group_cmp);
    }
    if (o->out != NULL)
        pol_replay_print(&parts[0].rp, gs, ng);
    rc = st->changed > 0 ? 3 : 0;
out:
    for (int k = 0; k < nparts; k++) {
        for (size_t i = 0; parts[k].rp.tab != NULL && i < slots; i++)
            al_free(parts[k].rp.tab[i]);
        al_free(parts[k].rp.tab);
        al_errs_free(&parts[k].errs);
    }
    al_free(gs);
    return rc;
}
