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

#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

int
px_cli_secrets(int argc, char **argv)
{
    const char     *config = NULL, *sandbox = NULL;
    struct al_errs  errs;
    struct px_conf *c = NULL;
    int             rc = 2;

    al_errs_init(&errs);
    if (argc < 2 || strcmp(argv[1], "env") != 0) {
        fprintf(stderr, "usage: airlock secrets env --config FILE [--sandbox S]\n");
        goto out;
    }
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            config = argv[++i];
        else if (strcmp(argv[i], "--sandbox") == 0 && i + 1 < argc)
            sandbox = argv[++i];
        else {
            fprintf(stderr, "airlock secrets: unknown option \"%s\"\n", argv[i]);
            goto out;
        }
    }
    if (config == NULL) {
        fprintf(stderr, "airlock secrets: --config FILE is required\n");
        goto out;
    }
    c = px_conf_load_all(config, 0, &errs);
    if (c == NULL) {
        fputs(errs.text.data ? errs.text.data : "", stderr);
        goto out;
    }
    if (sandbox != NULL && px_conf_sandbox(c, sandbox) == NULL) {
        fprintf(stderr, "airlock secrets: unknown sandbox \"%s\"\n", sandbox);
        goto out;
    }
    if (c->secrets == NULL) {
        fprintf(stderr, "airlock secrets: %s has no \"secrets\" file\n", config);
        goto out;
    }
    /* Placeholders only: the same for every sandbox (they are inert outside
     * airlock); --sandbox checks the name so scripts fail early on typos. */
    rc = sec_print_env(c->secrets, stdout) == AL_OK ? 0 : 1;
out:
    px_conf_unref(c);
    al_errs_free(&errs);
    return rc;
}
