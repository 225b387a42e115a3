/*
 * px_cli.c - `airlock policy check`: one request through the same decision
 * path the daemon uses (pol_decide, then the address guard on the resolved
 * answers), explained rule by rule. An https:// URL is decided as the
 * daemon meets it: the client's CONNECT first, the request inside only when
 * the tunnel is intercepted. `airlock policy replay`: the same decisions
 * over recorded traffic (policy/pol_replay.c). Resolution honours the config's
 * `resolve` pins; other names go to the system resolver (this is a CLI, so a
 * blocking lookup is fine), or nowhere with --no-resolve.
 */
#include "px.h"
#include "px_ca.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char px_cli_policy_usage[] =
    "usage: airlock policy check --config FILE [--sandbox S] [--json] [--no-resolve] METHOD URL\n"
    "  URL is http://host[:port]/path, https://host[:port]/path, or host:port with CONNECT.\n"
    "  An https:// URL is decided as the daemon sees it: CONNECT host:port first, the\n"
    "  request itself only when the rule intercepts the tunnel.\n"
    "  Exit: 0 allow (also would_deny), 3 deny, 2 bad input.\n"
    "       airlock policy replay --config FILE --policy NEW [--db DB] [--since T] [--until T]\n"
    "                             [--sandbox S] [--host GLOB] [--limit N] [--dry-run]\n"
    "                             [--format table|json|csv] [--threads N]\n"
    "  Decides the recorded requests of the window (default --since 7d, DB from the config)\n"
    "  again under NEW and lists the changed ones. --limit N: the newest N rows only.\n"
    "  --dry-run: decide as `airlock run --dry-run` would. --threads N: readers over parts\n"
    "  of the file (default: one per CPU, up to 4). Exit: 0 nothing changes,\n"
    "  3 decisions change, 2 bad input (NEW's errors as file:line:col), 1 runtime failure.\n"
    "       airlock policy lint --config FILE [--policy FILE] [--db DB [--since T] [--until T]]\n"
    "                           [--format table|json]\n"
    "  Rules that are wrong before any request meets them (the config's policy unless\n"
    "  --policy). Exit: 0 no errors (warnings allowed), 3 errors, 2 bad input.\n";

static int
px_cli_usage(const char *what, const char *arg)
{
    fprintf(stderr, "airlock policy: %s%s%s%s\n\n%s", what, arg ? " \"" : "", arg ? arg : "",
            arg ? "\"" : "", px_cli_policy_usage);
    return 2;
}

/* --help or -h among argv[from..]. */
static int
px_cli_wants_help(int argc, char **argv, int from)
{
    for (int i = from; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return 1;
    }
    return 0;
}

/* Resolves host into addrs (port applied). Returns the count, 0 on failure. */
static int
px_cli_resolve(const struct px_conf *c, const struct px_target *t, struct sockaddr_storage *addrs,
               int max, char *err, size_t errsz)
{
    const char     *lit = t->host;
    struct addrinfo hints, *res = NULL, *ai;
    char            port[8];
    int             n = 0;

    for (int i = 0; i < c->noverrides; i++) {
        if (strcmp(c->overrides[i].name, t->host) == 0)
            lit = c->overrides[i].addr;
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    if (lit != t->host || t->kind != PX_HOST_NAME)
        hints.ai_flags = AI_NUMERICHOST;
    snprintf(port, sizeof(port), "%u", t->port);
    if (getaddrinfo(lit, port, &hints, &res) != 0) {
        snprintf(err, errsz, "cannot resolve %s", t->host);
        return 0;
    }
    for (ai = res; ai != NULL && n < max; ai = ai->ai_next) {
        if (ai->ai_addrlen <= sizeof(addrs[0])) {
            memset(&addrs[n], 0, sizeof(addrs[n]));
            memcpy(&addrs[n], ai->ai_addr, ai->ai_addrlen);
            n++;
        }
    }
    freeaddrinfo(res);
    return n;
}

static void
px_cli_json_str(const char *s)
{
    putchar('"');
    for (; s != NULL && *s != '\0'; s++) {
        unsigned char ch = (unsigned char)*s;

        if (ch == '"' || ch == '\\')
            printf("\\%c", ch);
        else if (ch < 0x20)
            printf("\\u%04x", ch);
        else
            putchar(ch);
    }
    putchar('"');
}

/* `airlock policy replay`: the daemon's pol_decide over recorded rows. */
static int
px_cli_replay(int argc, char **argv)
{
    const char             *config = NULL, *policy = NULL, *db = NULL, *since = "7d";
    const char             *until = NULL, *format = "table";
    struct pol_replay_opts  o;
    struct pol_replay_stats st;
    struct al_errs          errs;
    struct px_conf         *c = NULL;
    struct pol_policy      *p = NULL;
    const char            **names = NULL;
    int64_t                 now = al_now_us();
    int                     rc = 2, dry_run = 0;
    char                   *end;

    al_errs_init(&errs);
    memset(&o, 0, sizeof(o));
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];

        if (strcmp(a, "--dry-run") == 0) {
            dry_run = 1;
            continue;
        }
        if (a[0] != '-' || i + 1 >= argc) {
            rc = px_cli_usage(a[0] == '-' ? "missing value for" : "unexpected argument", a);
            goto out;
        }
        if (strcmp(a, "--config") == 0)
            config = argv[++i];
        else if (strcmp(a, "--policy") == 0)
            policy = argv[++i];
        else if (strcmp(a, "--db") == 0)
            db = argv[++i];
        else if (strcmp(a, "--since") == 0)
            since = argv[++i];
        else if (strcmp(a, "--until") == 0)
            until = argv[++i];
        else if (strcmp(a, "--sandbox") == 0)
            o.sandbox = argv[++i];
        else if (strcmp(a, "--host") == 0)
            o.host = argv[++i];
        else if (strcmp(a, "--format") == 0)
            format = argv[++i];
        else if (strcmp(a, "--threads") == 0) {
            o.threads = (int)strtol(argv[++i], &end, 10);
            if (*end != '\0' || o.threads < 1 || o.threads > POL_REPLAY_MAX_THREADS) {
                rc = px_cli_usage("bad --threads", argv[i]);
                goto out;
            }
        } else if (strcmp(a, "--limit") == 0) {
            o.limit = strtoll(argv[++i], &end, 10);
            if (*end != '\0' || o.limit <= 0) {
                rc = px_cli_usage("bad --limit", argv[i]);
                goto out;
            }
        } else {
            rc = px_cli_usage("unknown option", a);
            goto out;
        }
    }
    if (config == NULL || policy == NULL) {
        rc = px_cli_usage("--config and --policy are required", NULL);
        goto out;
    }
    if (strcmp(format, "table") == 0)
        o.format = POL_REPLAY_TABLE;
    else if (strcmp(format, "json") == 0)
        o.format = POL_REPLAY_JSON;
    else if (strcmp(format, "csv") == 0)
        o.format = POL_REPLAY_CSV;
    else {
        rc = px_cli_usage("bad --format", format);
        goto out;
    }
    if (aud_parse_time(since, now, &o.since_us) != AL_OK) {
        rc = px_cli_usage("bad --since", since);
        goto out;
    }
    if (until != NULL && aud_parse_time(until, now, &o.until_us) != AL_OK) {
        rc = px_cli_usage("bad --until", until);
        goto out;
    }
    c = px_conf_load(config, &errs);
    if (c == NULL) {
        fputs(errs.text.data ? errs.text.data : "", stderr);
        goto out;
    }
    names = al_calloc((size_t)c->nsandboxes + 1, sizeof(*names));
    if (names == NULL) {
        rc = 1;
        goto out;
    }
    for (int i = 0; i < c->nsandboxes; i++)
        names[i] = c->sandboxes[i].name;
    /* The candidate is checked as `airlock check` would (same messages). */
    p = pol_load(policy, names, c->nsandboxes, dry_run, &errs);
    if (p == NULL) {
        fputs(errs.text.data ? errs.text.data : "", stderr);
        goto out;
    }
    if (errs.warnings > 0)
        fputs(errs.text.data ? errs.text.data : "", stderr);
    if (db == NULL)
        db = c->audit_db;
    if (db == NULL) {
        rc = px_cli_usage("no audit database: the config has none and --db was not given", NULL);
        goto out;
    }
    o.db = db;
    o.policy_name = policy;
    if (o.threads == 0) { /* one reader per CPU, up to 4 */
        long n = sysconf(_SC_NPROCESSORS_ONLN);

        o.threads = n < 1 ? 1 : n > 4 ? 4 : (int)n;
    }
    o.self = c->self;
    o.nself = c->nself;
    o.out = stdout;
    al_errs_free(&errs);
    al_errs_init(&errs);
    rc = pol_replay(p, &o, &st, &errs);
    if (rc == 1)
        fprintf(stderr, "airlock policy replay: %s", errs.text.data ? errs.text.data : "failed\n");
out:
    pol_policy_unref(p);
    px_conf_unref(c);
    al_free(names);
    al_errs_free(&errs);
    return rc;
}

/* Secret scopes for the lint, read from the secrets file as written
 * ("host[:port][/path]"): names and "hosts" only, so no secret value (env,
 * file) is needed to lint. */
struct px_cli_scopes {
    struct al_json *doc;
    int             n;
    const char    **names;
    const char   ***hosts;
};

static void
px_cli_scopes_free(struct px_cli_scopes *sc)
{
    for (int i = 0; sc->hosts != NULL && i < sc->n; i++)
        al_free(sc->hosts[i]);
    al_free(sc->hosts);
    al_free(sc->names);
    al_json_free(sc->doc);
}

static int
px_cli_scopes_load(const char *path, struct px_cli_scopes *sc, struct al_errs *errs)
{
    const cJSON *secrets, *e, *h;

    memset(sc, 0, sizeof(*sc));
    sc->doc = al_json_load(path, errs);
    if (sc->doc == NULL)
        return AL_ERROR;
    secrets = cJSON_GetObjectItemCaseSensitive(sc->doc->root, "secrets");
    if (!cJSON_IsObject(secrets)) {
        al_errs_add(errs, "%s: no \"secrets\" object", path);
        return AL_ERROR;
    }
    sc->n = cJSON_GetArraySize(secrets);
    sc->names = al_calloc((size_t)sc->n + 1, sizeof(*sc->names));
    sc->hosts = al_calloc((size_t)sc->n + 1, sizeof(*sc->hosts));
    if (sc->names == NULL || sc->hosts == NULL)
        return AL_ERROR;
    sc->n = 0;
    cJSON_ArrayForEach (e, secrets) {
        const cJSON *hosts = cJSON_GetObjectItemCaseSensitive(e, "hosts");
        int          k = 0;

        sc->names[sc->n] = e->string;
        sc->hosts[sc->n] = al_calloc((size_t)cJSON_GetArraySize(hosts) + 1, sizeof(**sc->hosts));
        if (sc->hosts[sc->n] == NULL)
            return AL_ERROR;
        cJSON_ArrayForEach (h, hosts) {
            if (cJSON_IsString(h))
                sc->hosts[sc->n][k++] = h->valuestring;
        }
        sc->n++;
    }
    return AL_OK;
}

/* `airlock policy lint`. */
static int
px_cli_lint(int argc, char **argv)
{
    const char           *config = NULL, *policy = NULL, *db = NULL, *since = "7d";
    const char           *until = NULL, *format = "table";
    struct pol_lint_opts  o;
    struct pol_lint_stats st;
    struct al_errs        errs;
    struct px_conf       *c = NULL;
    struct pol_policy    *p = NULL;
    const char          **names = NULL;
    int64_t               now = al_now_us();
    int                   rc = 2;
    struct px_cli_scopes  sc;

    al_errs_init(&errs);
    memset(&o, 0, sizeof(o));
    memset(&sc, 0, sizeof(sc));
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];

        if (a[0] != '-' || i + 1 >= argc) {
            rc = px_cli_usage(a[0] == '-' ? "missing value for" : "unexpected argument", a);
            goto out;
        }
        if (strcmp(a, "--config") == 0)
            config = argv[++i];
        else if (strcmp(a, "--policy") == 0)
            policy = argv[++i];
        else if (strcmp(a, "--db") == 0)
            db = argv[++i];
        else if (strcmp(a, "--since") == 0)
            since = argv[++i];
        else if (strcmp(a, "--until") == 0)
            until = argv[++i];
        else if (strcmp(a, "--format") == 0)
            format = argv[++i];
        else {
            rc = px_cli_usage("unknown option", a);
            goto out;
        }
    }
    if (config == NULL) {
        rc = px_cli_usage("--config is required", NULL);
        goto out;
    }
    if (strcmp(format, "json") == 0)
        o.json = 1;
    else if (strcmp(format, "table") != 0) {
        rc = px_cli_usage("bad --format", format);
        goto out;
    }
    if (aud_parse_time(since, now, &o.since_us) != AL_OK) {
        rc = px_cli_usage("bad --since", since);
        goto out;
    }
    if (until != NULL && aud_parse_time(until, now, &o.until_us) != AL_OK) {
        rc = px_cli_usage("bad --until", until);
        goto out;
    }
    /* the config (its policy: the config's unless --policy; its secrets
     * file: names and scopes only) */
    c = px_conf_load(config, &errs);
    if (c == NULL) {
        fputs(errs.text.data ? errs.text.data : "", stderr);
        goto out;
    }
    if (policy == NULL)
        policy = c->policy_path;
    names = al_calloc((size_t)c->nsandboxes + 1, sizeof(*names));
    if (names == NULL) {
        rc = 1;
        goto out;
    }
    for (int i = 0; i < c->nsandboxes; i++)
        names[i] = c->sandboxes[i].name;
    al_errs_free(&errs);
    al_errs_init(&errs);
    p = pol_load(policy, NULL, 0, 0, &errs); /* lint reports what load would warn */
    if (p == NULL) {
        fputs(errs.text.data ? errs.text.data : "", stderr);
        goto out;
    }
    o.policy_name = policy;
    o.policy_path = policy;
    o.known_sandboxes = names;
    o.nknown = c->nsandboxes;
    if (c->secrets_path != NULL) {
        if (px_cli_scopes_load(c->secrets_path, &sc, &errs) != AL_OK) {
            fputs(errs.text.data ? errs.text.data : "airlock policy lint: out of memory\n", stderr);
            goto out; /* an unreadable secrets file is bad input */
        }
        o.secrets_given = 1;
        o.nsecrets = sc.n;
        o.secret_names = sc.names;
        o.secret_hosts = (const char *const *const *)sc.hosts;
    }
    o.db = db;
    o.out = stdout;
    al_errs_free(&errs);
    al_errs_init(&errs);
    rc = pol_lint(p, &o, &st, &errs);
    if (rc == 1)
        fprintf(stderr, "airlock policy lint: %s", errs.text.data ? errs.text.data : "failed\n");
out:
    px_cli_scopes_free(&sc);
    pol_policy_unref(p);
    px_conf_unref(c);
    al_free(names);
    al_errs_free(&errs);
    return rc;
}

int
px_cli_policy(int argc, char **argv)
{
    const char             *config = NULL, *sandbox = NULL, *method = NULL, *url = NULL;
    int                     json = 0, no_resolve = 0, rc = 2, naddrs = 0, kept = 0;
    struct al_errs          errs;
    struct px_conf         *c = NULL;
    struct px_target        t;
    const char             *perr = NULL;
    struct pol_request      rq;
    struct pol_decision     d;
    struct sockaddr_storage addrs[PX_DNS_MAX_ADDRS], all[PX_DNS_MAX_ADDRS];
    char                    rerr[320] = "";
    char                    mbuf[32];
    struct pol_decision     cd;
    int                     via_connect = 0;
    const char             *tunnel = NULL;

    al_errs_init(&errs);
    if (px_cli_wants_help(argc, argv, 1)) {
        fputs(px_cli_policy_usage, stdout);
        rc = 0;
        goto out;
    }
    if (argc >= 2 && strcmp(argv[1], "replay") == 0) {
        rc = px_cli_replay(argc, argv);
        goto out;
    }
    if (argc >= 2 && strcmp(argv[1], "lint") == 0) {
        rc = px_cli_lint(argc, argv);
        goto out;
    }
    if (argc < 2 || strcmp(argv[1], "check") != 0) {
        rc = px_cli_usage("unknown policy command", argc >= 2 ? argv[1] : NULL);
        goto out;
    }
    for (int i = 2; i < argc; i++) {
        if ((strcmp(argv[i], "--config") == 0 || strcmp(argv[i], "--sandbox") == 0) &&
            i + 1 < argc) {
            if (argv[i][2] == 'c')
                config = argv[++i];
            else
                sandbox = argv[++i];
        } else if (strcmp(argv[i], "--json") == 0) {
            json = 1;
        } else if (strcmp(argv[i], "--no-resolve") == 0) {
            no_resolve = 1;
        } else if (argv[i][0] == '-') {
            rc = px_cli_usage("unknown option", argv[i]);
            goto out;
        } else if (method == NULL) {
            method = argv[i];
        } else if (url == NULL) {
            url = argv[i];
        } else {
            rc = px_cli_usage("unexpected argument", argv[i]);
            goto out;
        }
    }
    if (config == NULL || method == NULL || url == NULL) {
        rc = px_cli_usage("--config, METHOD and URL are required", NULL);
        goto out;
    }
    snprintf(mbuf, sizeof(mbuf), "%s", method);
    for (char *p = mbuf; *p != '\0'; p++) {
        if (*p >= 'a' && *p <= 'z')
            *p = (char)(*p - 32);
        else if (!((*p >= 'A' && *p <= 'Z') || *p == '-' || *p == '_')) {
            rc = px_cli_usage("bad method", method);
            goto out;
        }
    }
    c = px_conf_load_all(config, 0, &errs);
    if (c == NULL) {
        fputs(errs.text.data ? errs.text.data : "", stderr);
        goto out;
    }
    if (sandbox != NULL && px_conf_sandbox(c, sandbox) == NULL) {
        rc = px_cli_usage("unknown sandbox", sandbox);
        goto out;
    }
    memset(&t, 0, sizeof(t));
    if (strcmp(mbuf, "CONNECT") == 0) {
        if (px_authority_parse(url, strlen(url), 0, &t, &perr) != AL_OK) {
            fprintf(stderr, "airlock policy: %s: %s\n", url, perr);
            goto out;
        }
    } else if (px_url_parse_absolute(url, strlen(url), &t, &perr) != AL_OK) {
        fprintf(stderr, "airlock policy: %s: %s\n", url, perr);
        goto out;
    }
    memset(&rq, 0, sizeof(rq));
    rq.sandbox = sandbox;
    rq.scheme = strcmp(mbuf, "CONNECT") == 0 ? "connect" : t.tls ? "https" : "http";
    rq.host = t.host;
    rq.host_is_ip = t.kind != PX_HOST_NAME;
    rq.port = t.port;
    rq.method = mbuf;
    if (strcmp(mbuf, "CONNECT") != 0) {
        rq.path = t.path_needs_slash ? "/" : t.path;
        rq.path_len = t.path_needs_slash ? 1 : t.path_len;
    }
    rq.want_explain = 1;
    /* An https:// URL reaches the daemon as `CONNECT host:port` first: that
     * is decided on its own (methods and paths are not visible yet), and
     * the request itself only where the tunnel is intercepted. An opaque
     * tunnel carries it unseen, so the CONNECT's decision is the answer. */
    if (t.tls && strcmp(mbuf, "CONNECT") != 0) {
        struct pol_request crq = rq;

        crq.scheme = "connect";
        crq.method = "CONNECT";
        crq.path = NULL;
        crq.path_len = 0;
        pol_decide(c->policy, &crq, &cd);
        via_connect = 1;
        tunnel = cd.verdict == POL_DENY ? "refused" : cd.intercept ? "intercepted" : "opaque";
    }
    if (via_connect && strcmp(tunnel, "intercepted") != 0)
        d = cd;
    else
        pol_decide(c->policy, &rq, &d);
    if (d.verdict != POL_DENY && !no_resolve) {
        naddrs = px_cli_resolve(c, &t, all, PX_DNS_MAX_ADDRS, rerr, sizeof(rerr));
        memcpy(addrs, all, sizeof(all));
        kept = pol_filter_addrs(c->policy, &d, addrs, naddrs, c->self, c->nself);
        if (naddrs == 0) {
            d.verdict = POL_DENY;
            d.reason = "dns_failed";
        }
    }
    if (json) {
        printf("{\"decision\":");
        px_cli_json_str(pol_verdict_name(d.verdict));
        printf(",\"rule\":");
        px_cli_json_str(d.rule);
        printf(",\"reason\":");
        px_cli_json_str(d.reason);
        printf(",\"staged_rule\":");
        if (d.staged_rule != NULL)
            px_cli_json_str(d.staged_rule);
        else
            printf("null");
        printf(",\"intercept\":%s,\"explain\":", d.intercept ? "true" : "false");
        px_cli_json_str(d.explain);
        if (via_connect) {
            printf(",\"connect\":{\"decision\":");
            px_cli_json_str(pol_verdict_name(cd.verdict));
            printf(",\"rule\":");
            px_cli_json_str(cd.rule);
            printf(",\"reason\":");
            px_cli_json_str(cd.reason);
            printf(",\"explain\":");
            px_cli_json_str(cd.explain);
            printf("},\"tunnel\":");
            px_cli_json_str(tunnel);
        }
        printf(",\"addresses\":[");
        for (int i = 0; i < naddrs; i++) {
            char s[80];
            int  ok = 0;

            px_sockaddr_str((struct sockaddr *)&all[i], s, sizeof(s));
            for (int k = 0; k < kept; k++)
                ok |= memcmp(&addrs[k], &all[i], sizeof(all[i])) == 0;
            printf("%s{\"addr\":", i ? "," : "");
            px_cli_json_str(s);
            printf(",\"class\":");
            px_cli_json_str(pol_addr_class_name(pol_addr_classify((struct sockaddr *)&all[i])));
            printf(",\"allowed\":%s}", ok ? "true" : "false");
        }
        printf("]}\n");
    } else {
        printf("decision:  %s\nrule:      %s\nreason:    %s\n", pol_verdict_name(d.verdict), d.rule,
               d.reason);
        if (d.staged_rule != NULL)
            printf("staged:    %s (dry-run rule matched)\n", d.staged_rule);
        if (via_connect) {
            printf("connect:   CONNECT %s:%u -> %s by %s (%s)\n", t.host, t.port,
                   pol_verdict_name(cd.verdict), cd.rule, cd.reason);
            if (strcmp(tunnel, "refused") == 0)
                printf("tunnel:    refused: the client's CONNECT is denied, the request never "
                       "gets sent\n");
            else if (strcmp(tunnel, "opaque") == 0)
                printf("tunnel:    opaque (not intercepted): airlock sees only the CONNECT; "
                       "the request's method and path are not checked\n");
            else
                printf("tunnel:    intercepted: the request inside is decided on its own\n");
        }
        printf("explain:   %s\n", d.explain);
        if (rerr[0] != '\0')
            printf("resolve:   %s\n", rerr);
        for (int i = 0; i < naddrs; i++) {
            char s[80];
            int  ok = 0;

            px_sockaddr_str((struct sockaddr *)&all[i], s, sizeof(s));
            for (int k = 0; k < kept; k++)
                ok |= memcmp(&addrs[k], &all[i], sizeof(all[i])) == 0;
            printf("address:   %s (%s) %s\n", s,
                   pol_addr_class_name(pol_addr_classify((struct sockaddr *)&all[i])),
                   ok ? "allowed" : "dropped by the address guard");
        }
    }
    rc = d.verdict == POL_DENY ? 3 : 0;
out:
    px_conf_unref(c);
    al_errs_free(&errs);
    return rc;
}

int
px_cli_audit(int argc, char **argv)
{
    char          **av = NULL;
    const char     *config = NULL;
    struct px_conf *c = NULL;
    struct al_errs  errs;
    int             ac = 0, has_db = 0, rc = 2;

    al_errs_init(&errs);
    av = al_calloc((size_t)argc + 3, sizeof(*av));
    if (av == NULL)
        goto out;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
            config = argv[++i];
            continue;
        }
        if (strcmp(argv[i], "--db") == 0 || strncmp(argv[i], "--db=", 5) == 0)
            has_db = 1;
        av[ac++] = argv[i];
    }
    if (config != NULL && !has_db) {
        c = px_conf_load(config, &errs);
        if (c == NULL) {
            fputs(errs.text.data ? errs.text.data : "", stderr);
            goto out;
        }
        av[ac++] = (char *)(uintptr_t) "--db";
        av[ac++] = c->audit_db;
    }
    rc = aud_cli_main(ac, av);
out:
    px_conf_unref(c);
    al_errs_free(&errs);
    al_free(av);
    return rc;
}

static const char px_cli_secrets_usage[] =
    "usage: airlock secrets env --config FILE [--sandbox S]\n"
    "  NAME=placeholder lines, one per secret, sorted by NAME. Placeholders come from\n"
    "  the secrets' names and the placeholder key next to the CA: no secret value is\n"
    "  read (its environment variable or file need not exist here).\n"
    "  --sandbox S checks that the config knows S (placeholders are the same for all).\n";

/* The secrets file with names, scopes and placeholders only. */
static struct sec_store *
px_cli_secrets_names(const struct px_conf *c, struct al_errs *errs)
{
    return sec_load_flags(c->secrets_path, c->ca_dir, SEC_LOAD_NO_VALUES, errs);
}

int
px_cli_secrets(int argc, char **argv)
{
    const char       *config = NULL, *sandbox = NULL;
    struct al_errs    errs;
    struct px_conf   *c = NULL;
    struct sec_store *st = NULL;
    int               rc = 2;

    al_errs_init(&errs);
    if (px_cli_wants_help(argc, argv, 1)) {
        fputs(px_cli_secrets_usage, stdout);
        rc = 0;
        goto out;
    }
    if (argc < 2 || strcmp(argv[1], "env") != 0) {
        fputs(px_cli_secrets_usage, stderr);
        goto out;
    }
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            config = argv[++i];
        else if (strcmp(argv[i], "--sandbox") == 0 && i + 1 < argc)
            sandbox = argv[++i];
        else {
            fprintf(stderr, "airlock secrets: unknown option \"%s\"\n\n%s", argv[i],
                    px_cli_secrets_usage);
            goto out;
        }
    }
    if (config == NULL) {
        fprintf(stderr, "airlock secrets: --config FILE is required\n");
        goto out;
    }
    c = px_conf_load(config, &errs);
    if (c == NULL) {
        fputs(errs.text.data ? errs.text.data : "", stderr);
        goto out;
    }
    if (sandbox != NULL && px_conf_sandbox(c, sandbox) == NULL) {
        fprintf(stderr, "airlock secrets: unknown sandbox \"%s\"\n", sandbox);
        goto out;
    }
    if (c->secrets_path == NULL) {
        fprintf(stderr, "airlock secrets: %s has no \"secrets\" file\n", config);
        goto out;
    }
    st = px_cli_secrets_names(c, &errs);
    if (st == NULL) {
        fputs(errs.text.data ? errs.text.data : "", stderr);
        goto out;
    }
    /* Placeholders only: the same for every sandbox (they are inert outside
     * airlock); --sandbox checks the name so scripts fail early on typos. */
    rc = sec_print_env(st, stdout) == AL_OK ? 0 : 1;
out:
    sec_store_unref(st);
    px_conf_unref(c);
    al_errs_free(&errs);
    return rc;
}

/* ---- airlock sandbox env ------------------------------------------------- */

static const char px_cli_sandbox_usage[] =
    "usage: airlock sandbox env --config FILE [--sandbox S] [--tool-call T] [--session S]\n"
    "                           [--token-env VAR | --token-file FILE] [--proxy-host HOST]\n"
    "                           [--no-proxy LIST] [--ca-out DIR] [--roots FILE]\n"
    "                           [--format sh|json|dotenv]\n"
    "  Everything a sandbox needs, in one block: HTTP_PROXY/http_proxy/HTTPS_PROXY/\n"
    "  https_proxy (the first forward listener; with the sandbox's credentials, user\n"
    "  SANDBOX[+SESSION]+TOOL_CALL; GIT_HTTP_PROXY_AUTHMETHOD=basic so git sends them at\n"
    "  once), NO_PROXY/no_proxy (loopback only), NODE_USE_ENV_PROXY and GLOBAL_AGENT_*\n"
    "  for node, every runtime's CA trust variable (pointing at the\n"
    "  public ca.pem / bundle.pem that are written, 0644, next to the CA folder or into\n"
    "  --ca-out DIR) and every secret's placeholder (no secret value is read).\n"
    "  The token: the config keeps only its sha256, so give it with --token-env VAR or\n"
    "  --token-file FILE (checked against token_sha256); without either, the sh format\n"
    "  refers to ${AIRLOCK_TOKEN} (expanded when the output is sourced; the token must\n"
    "  then be URL-safe, e.g. hex) and json/dotenv refuse.\n"
    "  --proxy-host HOST: the address the sandbox reaches airlock at (default: the\n"
    "  listener's; a wildcard listener gives 127.0.0.1 or ::1).\n"
    "  sh: eval \"$(airlock sandbox env ...)\"; dotenv: NAME=value lines (docker --env-file);\n"
    "  json: one object. Exit: 0 ok, 2 bad input, 1 runtime failure.\n";

#define PX_CLI_ENV_MAX 64 /* fixed variables (secrets come on top) */
#define PX_CLI_TOKEN_REF "${AIRLOCK_TOKEN:?set AIRLOCK_TOKEN to the sandbox token}"

struct px_cli_env {
    const char *names[PX_CLI_ENV_MAX + SEC_MAX_SECRETS];
    char       *values[PX_CLI_ENV_MAX + SEC_MAX_SECRETS];
    int         raw[PX_CLI_ENV_MAX + SEC_MAX_SECRETS]; /* sh: double-quoted (token reference) */
    int         n;
};

static int
px_cli_env_add(struct px_cli_env *e, const char *name, const char *value, int raw)
{
    for (int i = 0; i < e->n; i++) {
        if (strcmp(e->names[i], name) == 0) {
            fprintf(stderr,
                    "airlock sandbox env: %s would be set twice (a secret's \"env\" "
                    "name collides with a variable airlock sets)\n",
                    name);
            return AL_ERROR;
        }
    }
    if (e->n >= (int)(sizeof(e->names) / sizeof(e->names[0])))
        return AL_ERROR;
    e->values[e->n] = al_strdup(value);
    if (e->values[e->n] == NULL)
        return AL_ERROR;
    e->names[e->n] = name;
    e->raw[e->n] = raw;
    e->n++;
    return AL_OK;
}

/* Percent-encodes s for the user or password part of a URL. */
static int
px_cli_userinfo_enc(struct al_dbuf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";

    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        int           keep = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                   (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' || ch == '_' || ch == '~' ||
                   ch == '+';
        char esc[3] = {'%', hex[ch >> 4], hex[ch & 15]};

        if ((keep ? al_dbuf_add(b, s + i, 1) : al_dbuf_add(b, esc, 3)) != AL_OK)
            return AL_ERROR;
    }
    return AL_OK;
}

/* Reads the sandbox token: --token-env or --token-file (one line). */
static char *
px_cli_token_read(const char *env, const char *file)
{
    char   buf[1024 + 2];
    FILE  *f;
    char  *tok;
    size_t n;

    if (env != NULL) {
        const char *v = getenv(env);

        if (v == NULL || *v == '\0') {
            fprintf(stderr, "airlock sandbox env: --token-env: %s is not set\n", env);
            return NULL;
        }
        return al_strdup(v);
    }
    f = fopen(file, "r");
    if (f == NULL) {
        fprintf(stderr, "airlock sandbox env: --token-file %s: %s\n", file, strerror(errno));
        return NULL;
    }
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    n = strcspn(buf, "\r\n");
    buf[n] = '\0';
    tok = n > 0 && n <= 1024 ? al_strdup(buf) : NULL;
    if (tok == NULL)
        fprintf(stderr, "airlock sandbox env: --token-file %s: empty or too long\n", file);
    OPENSSL_cleanse(buf, sizeof(buf));
    return tok;
}

/* host[:port] of the proxy as the sandbox reaches it. */
static int
px_cli_proxy_authority(const struct px_conf *c, const char *host, char *out, size_t outsz)
{
    const struct px_listen_conf *l = NULL;
    char                         ip[INET6_ADDRSTRLEN];
    unsigned                     port;

    for (int i = 0; i < c->nlisten && l == NULL; i++) {
        if (c->listen[i].mode == PX_LISTEN_FORWARD)
            l = &c->listen[i];
    }
    if (l == NULL) {
        fprintf(stderr, "airlock sandbox env: the config has no forward listener (a sandbox "
                        "behind a transparent listener needs no proxy variables)\n");
        return AL_ERROR;
    }
    if (l->addr.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&l->addr;

        port = ntohs(a->sin6_port);
        if (IN6_IS_ADDR_UNSPECIFIED(&a->sin6_addr))
            snprintf(ip, sizeof(ip), "::1");
        else
            inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
    } else {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&l->addr;

        port = ntohs(a->sin_port);
        if (a->sin_addr.s_addr == htonl(INADDR_ANY))
            snprintf(ip, sizeof(ip), "127.0.0.1");
        else
            inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
    }
    if (host != NULL) {
        size_t n = strlen(host);

        if (n == 0 || n > 253 ||
            strspn(host, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-:[]") !=
                n) {
            fprintf(stderr,
                    "airlock sandbox env: --proxy-host \"%s\": expected a host name or "
                    "an IP address\n",
                    host);
            return AL_ERROR;
        }
        if (host[0] != '[' && strchr(host, ':') != NULL)
            snprintf(out, outsz, "[%s]:%u", host, port);
        else
            snprintf(out, outsz, "%s:%u", host, port);
        return AL_OK;
    }
    if (strchr(ip, ':') != NULL)
        snprintf(out, outsz, "[%s]:%u", ip, port);
    else
        snprintf(out, outsz, "%s:%u", ip, port);
    return AL_OK;
}

static int
px_cli_env_print(const struct px_cli_env *e, const char *format)
{
    if (strcmp(format, "json") == 0) {
        putchar('{');
        for (int i = 0; i < e->n; i++) {
            printf("%s\n  ", i ? "," : "");
            px_cli_json_str(e->names[i]);
            printf(": ");
            px_cli_json_str(e->values[i]);
        }
        printf("\n}\n");
    } else if (strcmp(format, "dotenv") == 0) {
        for (int i = 0; i < e->n; i++) {
            if (strpbrk(e->values[i], " \t\r\n\"'#\\$`") != NULL) {
                fprintf(stderr,
                        "airlock sandbox env: %s=%s cannot be written as a dotenv line "
                        "(quotes, spaces, '#' or '$'): use --format sh or json\n",
                        e->names[i], e->values[i]);
                return 2;
            }
        }
        for (int i = 0; i < e->n; i++)
            printf("%s=%s\n", e->names[i], e->values[i]);
    } else {
        for (int i = 0; i < e->n; i++) {
            const char *v = e->values[i];

            printf("export %s=", e->names[i]);
            if (e->raw[i]) { /* checked: no " \ ` inside, only the ${...} reference */
                printf("\"%s\"\n", v);
                continue;
            }
            putchar('\'');
            for (; *v != '\0'; v++) {
                if (*v == '\'')
                    fputs("'\\''", stdout);
                else
                    putchar(*v);
            }
            fputs("'\n", stdout);
        }
    }
    return fflush(stdout) == 0 ? 0 : 1;
}

static int
px_cli_sandbox_env(int argc, char **argv)
{
    const char              *config = NULL, *sandbox = NULL, *tool_call = NULL, *session = NULL;
    const char              *token_env = NULL, *token_file = NULL, *proxy_host = NULL;
    const char              *no_proxy = NULL, *ca_out = NULL, *roots = NULL, *format = "sh";
    const struct px_sandbox *sb = NULL;
    struct px_conf          *c = NULL;
    struct sec_store        *st = NULL;
    struct al_errs           errs;
    struct px_cli_env        e;
    struct al_dbuf           url, np;
    char                     auth[300], pub[PATH_MAX], path[PATH_MAX + 32];
    char                    *token = NULL;
    const char              *var, *file;
    int                      rc = 2, order[SEC_MAX_SECRETS], ns;

    al_errs_init(&errs);
    memset(&e, 0, sizeof(e));
    al_dbuf_init(&url, 8192);
    al_dbuf_init(&np, 8192);
    for (int i = 2; i < argc; i++) {
        const char  *a = argv[i];
        const char **dst = NULL;

        if (strcmp(a, "--config") == 0 || strcmp(a, "-c") == 0)
            dst = &config;
        else if (strcmp(a, "--sandbox") == 0)
            dst = &sandbox;
        else if (strcmp(a, "--tool-call") == 0)
            dst = &tool_call;
        else if (strcmp(a, "--session") == 0)
            dst = &session;
        else if (strcmp(a, "--token-env") == 0)
            dst = &token_env;
        else if (strcmp(a, "--token-file") == 0)
            dst = &token_file;
        else if (strcmp(a, "--proxy-host") == 0)
            dst = &proxy_host;
        else if (strcmp(a, "--no-proxy") == 0)
            dst = &no_proxy;
        else if (strcmp(a, "--ca-out") == 0)
            dst = &ca_out;
        else if (strcmp(a, "--roots") == 0)
            dst = &roots;
        else if (strcmp(a, "--format") == 0)
            dst = &format;
        if (dst == NULL || i + 1 >= argc) {
            fprintf(stderr, "airlock sandbox env: %s \"%s\"\n\n%s",
                    dst == NULL ? "unknown option" : "missing value for", a, px_cli_sandbox_usage);
            goto out;
        }
        *dst = argv[++i];
    }
    if (config == NULL) {
        fprintf(stderr, "airlock sandbox env: --config FILE is required\n");
        goto out;
    }
    if (strcmp(format, "sh") != 0 && strcmp(format, "json") != 0 && strcmp(format, "dotenv") != 0) {
        fprintf(stderr, "airlock sandbox env: --format \"%s\": expected sh, json or dotenv\n",
                format);
        goto out;
    }
    if (token_env != NULL && token_file != NULL) {
        fprintf(stderr, "airlock sandbox env: --token-env and --token-file exclude each other\n");
        goto out;
    }
    if (tool_call != NULL &&
        !pol_ident_tag_valid(tool_call, strlen(tool_call), POL_TAG_MAX_BYTES)) {
        fprintf(stderr, "airlock sandbox env: --tool-call \"%s\": 1-%d of [A-Za-z0-9._:-]\n",
                tool_call, POL_TAG_MAX_BYTES);
        goto out;
    }
    if (session != NULL && !pol_ident_tag_valid(session, strlen(session), POL_TAG_MAX_BYTES)) {
        fprintf(stderr, "airlock sandbox env: --session \"%s\": 1-%d of [A-Za-z0-9._:-]\n", session,
                POL_TAG_MAX_BYTES);
        goto out;
    }
    if (session != NULL && tool_call == NULL) {
        fprintf(stderr, "airlock sandbox env: --session needs --tool-call (the user is "
                        "SANDBOX+SESSION+TOOL_CALL)\n");
        goto out;
    }
    c = px_conf_load(config, &errs);
    if (c == NULL) {
        fputs(errs.text.data ? errs.text.data : "", stderr);
        goto out;
    }
    if (sandbox == NULL && c->nsandboxes > 0) {
        fprintf(stderr, "airlock sandbox env: --sandbox S is required (%s defines sandboxes)\n",
                config);
        goto out;
    }
    if (sandbox != NULL && (sb = px_conf_sandbox(c, sandbox)) == NULL) {
        fprintf(stderr, "airlock sandbox env: unknown sandbox \"%s\"\n", sandbox);
        goto out;
    }
    if (sb == NULL && tool_call != NULL) {
        fprintf(stderr, "airlock sandbox env: --tool-call needs --sandbox (the tag travels as "
                        "the proxy user SANDBOX+TOOL_CALL)\n");
        goto out;
    }
    if ((token_env != NULL || token_file != NULL) && (sb == NULL || sb->token_sha256[0] == '\0')) {
        fprintf(stderr,
                "airlock sandbox env: sandbox \"%s\" has no token_sha256: it is known by "
                "its address, drop --token-env/--token-file\n",
                sandbox ? sandbox : "");
        goto out;
    }
    if (sb != NULL && sb->token_sha256[0] != '\0') {
        if (token_env != NULL || token_file != NULL) {
            token = px_cli_token_read(token_env, token_file);
            if (token == NULL)
                goto out;
            if (!pol_ident_token_ok(token, strlen(token), sb->token_sha256)) {
                fprintf(stderr,
                        "airlock sandbox env: the token does not match sandbox \"%s\"'s "
                        "token_sha256\n",
                        sandbox);
                goto out;
            }
        } else if (strcmp(format, "sh") != 0) {
            fprintf(stderr,
                    "airlock sandbox env: sandbox \"%s\" authenticates with a token: give "
                    "--token-env VAR or --token-file FILE (only --format sh can refer to "
                    "${AIRLOCK_TOKEN})\n",
                    sandbox);
            goto out;
        }
    }
    if (px_cli_proxy_authority(c, proxy_host, auth, sizeof(auth)) != AL_OK)
        goto out;
    /* http://[user[:password]@]host:port */
    al_dbuf_adds(&url, "http://");
    if (sb != NULL && (sb->token_sha256[0] != '\0' || tool_call != NULL)) {
        px_cli_userinfo_enc(&url, sb->name, strlen(sb->name));
        if (session != NULL) {
            al_dbuf_adds(&url, "+");
            px_cli_userinfo_enc(&url, session, strlen(session));
        }
        if (tool_call != NULL) {
            al_dbuf_adds(&url, "+");
            px_cli_userinfo_enc(&url, tool_call, strlen(tool_call));
        }
        al_dbuf_adds(&url, ":");
        if (token != NULL)
            px_cli_userinfo_enc(&url, token, strlen(token));
        else if (sb->token_sha256[0] != '\0')
            al_dbuf_adds(&url, PX_CLI_TOKEN_REF);
        al_dbuf_adds(&url, "@");
    }
    al_dbuf_adds(&url, auth);
    /* Loopback is the sandbox's own: never through airlock (which refuses it). */
    al_dbuf_adds(&np, "localhost,127.0.0.1,::1");
    if (no_proxy != NULL && *no_proxy != '\0') {
        if (strpbrk(no_proxy, " \t\r\n\"'\\$`") != NULL) {
            fprintf(stderr, "airlock sandbox env: --no-proxy: a comma-separated list of hosts\n");
            goto out;
        }
        al_dbuf_adds(&np, ",");
        al_dbuf_adds(&np, no_proxy);
    }
    if (url.data == NULL || np.data == NULL) {
        rc = 1;
        goto out;
    }
    {
        int                      raw = token == NULL && sb != NULL && sb->token_sha256[0] != '\0';
        static const char *const pv[] = {"HTTP_PROXY",
                                         "http_proxy",
                                         "HTTPS_PROXY",
                                         "https_proxy",
                                         "GLOBAL_AGENT_HTTP_PROXY",
                                         "GLOBAL_AGENT_HTTPS_PROXY"};

        for (size_t i = 0; i < sizeof(pv) / sizeof(pv[0]); i++) {
            if (px_cli_env_add(&e, pv[i], url.data, raw) != AL_OK)
                goto fail;
        }
        /* git (libcurl) defaults to "anyauth": a first request without
         * credentials that a CIDR sandbox could claim. Basic up front. */
        if (strchr(url.data, '@') != NULL &&
            px_cli_env_add(&e, "GIT_HTTP_PROXY_AUTHMETHOD", "basic", 0) != AL_OK)
            goto fail;
        if (px_cli_env_add(&e, "NO_PROXY", np.data, 0) != AL_OK ||
            px_cli_env_add(&e, "no_proxy", np.data, 0) != AL_OK ||
            px_cli_env_add(&e, "GLOBAL_AGENT_NO_PROXY", np.data, 0) != AL_OK ||
            px_cli_env_add(&e, "NODE_USE_ENV_PROXY", "1", 0) != AL_OK)
            goto fail;
    }
    if (c->ca_dir != NULL) {
        int r = px_ca_write_public(c->ca_dir, ca_out, roots, pub, sizeof(pub), &errs);

        fputs(errs.text.data ? errs.text.data : "", stderr);
        al_errs_free(&errs);
        al_errs_init(&errs);
        if (r != AL_OK) {
            rc = r == AL_DECLINED ? 2 : 1;
            goto out;
        }
        for (int i = 0; (var = px_ca_trust_var(i, &file)) != NULL; i++) {
            snprintf(path, sizeof(path), "%s/%s", pub, file);
            if (px_cli_env_add(&e, var, path, 0) != AL_OK)
                goto fail;
        }
    }
    if (c->secrets_path != NULL) {
        st = px_cli_secrets_names(c, &errs);
        if (st == NULL) {
            fputs(errs.text.data ? errs.text.data : "", stderr);
            goto out;
        }
        ns = sec_count(st);
        for (int i = 0; i < ns; i++)
            order[i] = i;
        for (int i = 1; i < ns; i++) { /* by env name, as `secrets env` */
            int k = order[i], j = i;

            while (j > 0 && strcmp(sec_env_name(st, order[j - 1]), sec_env_name(st, k)) > 0) {
                order[j] = order[j - 1];
                j--;
            }
            order[j] = k;
        }
        for (int i = 0; i < ns; i++) {
            if (px_cli_env_add(&e, sec_env_name(st, order[i]), sec_placeholder(st, order[i]), 0) !=
                AL_OK)
                goto fail;
        }
    }
    rc = px_cli_env_print(&e, format);
    goto out;
fail:
    rc = 1;
out:
    for (int i = 0; i < e.n; i++) {
        if (e.values[i] != NULL)
            OPENSSL_cleanse(e.values[i], strlen(e.values[i]));
        al_free(e.values[i]);
    }
    if (token != NULL) {
        OPENSSL_cleanse(token, strlen(token));
        al_free(token);
    }
    if (url.data != NULL)
        OPENSSL_cleanse(url.data, url.len);
    al_dbuf_free(&url);
    al_dbuf_free(&np);
    sec_store_unref(st);
    px_conf_unref(c);
    al_errs_free(&errs);
    return rc;
}

int
px_cli_sandbox(int argc, char **argv)
{
    if (px_cli_wants_help(argc, argv, 1)) {
        fputs(px_cli_sandbox_usage, stdout);
        return 0;
    }
    if (argc < 2 || strcmp(argv[1], "env") != 0) {
        fprintf(stderr, "airlock sandbox: unknown command%s%s\n\n%s", argc >= 2 ? " " : "",
                argc >= 2 ? argv[1] : "", px_cli_sandbox_usage);
        return 2;
    }
    return px_cli_sandbox_env(argc, argv);
}

/* ---- airlock check: the setup around the config ------------------------- */

static int
px_cli_is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr) >> 24) == 127;
    if (ss->ss_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;

        return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
    }
    return 0;
}

/* The audit database's folder (and the file, when it exists) must be
 * writable: sqlite adds -wal and -shm files next to it. */
static void
px_cli_check_audit(const struct px_conf *c, struct al_errs *errs)
{
    char        dir[PATH_MAX];
    const char *slash;
    struct stat st;

    if (c->audit_db == NULL) {
        al_errs_warn(errs,
                     "%s: audit.db is null: the audit trail is off, requests leave no "
                     "trace (benchmarks only)",
                     c->path);
        return;
    }
    slash = strrchr(c->audit_db, '/');
    if (slash == NULL)
        al_strlcpy(dir, sizeof(dir), ".");
    else if (slash == c->audit_db)
        al_strlcpy(dir, sizeof(dir), "/");
    else
        snprintf(dir, sizeof(dir), "%.*s", (int)(slash - c->audit_db), c->audit_db);
    if (stat(c->audit_db, &st) == 0) {
        if (!S_ISREG(st.st_mode))
            al_errs_add(errs, "%s: audit.db %s is not a regular file", c->path, c->audit_db);
        else if (access(c->audit_db, R_OK | W_OK) != 0)
            al_errs_add(errs, "%s: audit.db %s is not writable by uid %u: %s", c->path, c->audit_db,
                        (unsigned)getuid(), strerror(errno));
    } else if (errno != ENOENT) {
        al_errs_add(errs, "%s: audit.db %s: %s", c->path, c->audit_db, strerror(errno));
        return;
    }
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        al_errs_add(errs, "%s: audit.db %s: its folder %s does not exist (create it)", c->path,
                    c->audit_db, dir);
    else if (access(dir, W_OK | X_OK) != 0)
        al_errs_add(errs,
                    "%s: audit.db %s: its folder %s is not writable by uid %u (%s): the "
                    "database and its -wal/-shm files are created there",
                    c->path, c->audit_db, dir, (unsigned)getuid(), strerror(errno));
}

int
px_cli_check(const char *config_path)
{
    struct al_errs  errs, quiet;
    struct px_conf *c;
    int             rc = 2;

    al_errs_init(&errs);
    al_errs_init(&quiet);
    c = px_conf_load_all(config_path, 0, &quiet);
    if (c == NULL) { /* px_main_check reports why */
        al_errs_free(&quiet);
        return px_main_check(config_path);
    }
    px_cli_check_audit(c, &errs);
    for (int i = 0; c->nsandboxes == 0 && i < c->nlisten; i++) {
        if (!px_cli_is_loopback(&c->listen[i].addr))
            al_errs_warn(&errs,
                         "%s: listen %s is not a loopback address and no sandboxes are "
                         "defined: anyone who reaches it uses the policy anonymously (define "
                         "\"sandboxes\" with cidrs or token_sha256)",
                         c->path, c->listen[i].text);
    }
    if (c->policy != NULL && pol_policy_default_allow(c->policy))
        al_errs_warn(&errs,
                     "%s: \"default\": \"allow\": every destination no rule names is "
                     "reachable (use \"deny\" and allow rules)",
                     c->policy_path);
    if (errs.count > 0) {
        fputs(quiet.text.data ? quiet.text.data : "", stderr);
        fputs(errs.text.data ? errs.text.data : "", stderr);
        goto out;
    }
    fputs(errs.text.data ? errs.text.data : "", stderr);
    rc = px_main_check(config_path);
out:
    px_conf_unref(c);
    al_errs_free(&quiet);
    al_errs_free(&errs);
    return rc;
}
