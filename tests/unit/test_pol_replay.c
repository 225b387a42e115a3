/*
 * test_pol_replay.c - pol_replay decides as the daemon did: rows written
 * through the real audit writer, each recorded with the decision the
 * daemon's own steps give (pol_decide, then pol_filter_addrs on the
 * resolved address, the row filled as px_conn_audit_fill fills it), over a
 * matrix of sandboxes, methods (CONNECT included), hosts (names, wildcards,
 * IP literals), ports, paths (dot segments, %2e, encoded slashes, bad
 * paths) and addresses (public, loopback, metadata, airlock's own
 * listener), under an enforcing and a dry-run policy. Replaying the same
 * policy changes nothing; another policy changes exactly the rows a direct
 * decision says; rows refused outside the policy are counted, not replayed;
 * a pre-v4 guard refusal (no addr) is replayed with what it has and counted
 * as lacking an input; a guard refusal of a public address (one of the
 * recording host's own) stays refused.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "audit/aud_int.h"
#include "policy/pol_int.h"

static const char pol_t_text[] =
    "{\"default\": \"deny\", \"allow_addresses\": [\"10.9.0.0/16\"], \"rules\": ["
    "{\"name\": \"stage\", \"hosts\": [\"*\"], \"methods\": [\"PUT\"], \"action\": \"deny\","
    " \"mode\": \"dry-run\"},"
    "{\"name\": \"gh\", \"hosts\": [\"api.gh.test\", \"*.gh.test\"], \"ports\": [80, 443],"
    " \"methods\": [\"GET\", \"POST\", \"PUT\"], \"paths\": [\"/repos/**\", \"/a/*/b\"],"
    " \"intercept\": true},"
    "{\"name\": \"only-a\", \"hosts\": [\"a.test\"], \"sandboxes\": [\"a\"]},"
    "{\"name\": \"loop\", \"hosts\": [\"loop.test\", \"127.0.0.1\"], \"cidrs\": "
    "[\"127.0.0.1/32\"]},"
    "{\"name\": \"slash\", \"hosts\": [\"slash.test\"], \"allow_encoded_slash\": true},"
    "{\"name\": \"conn\", \"hosts\": [\"conn.test\"], \"methods\": [\"CONNECT\"]},"
    "{\"name\": \"block\", \"hosts\": [\"*.bad.test\"], \"action\": \"deny\"},"
    "{\"name\": \"meta\", \"hosts\": [\"meta.test\"]},"
    "{\"name\": \"any\", \"hosts\": [\"open.test\"]}"
    "]}";

static const char *const pol_t_sandboxes[] = {"", "a", "b"};
static const char *const pol_t_methods[] = {"GET", "POST", "PUT", "CONNECT"};
static const char *const pol_t_hosts[] = {
    "api.gh.test", "x.y.gh.test", "gh.test",    "a.test",    "loop.test", "127.0.0.1",    "::1",
    "slash.test",  "conn.test",   "z.bad.test", "meta.test", "open.test", "nowhere.test",
};
static const uint16_t    pol_t_ports[] = {80, 443, 8080};
static const char *const pol_t_paths[] = {
    "/repos/x/y", "/a/q/b", "/a/%2e%2e/repos/z", "/x%2Fy", "/", "/a b", "/repos"};
static const char *const pol_t_addrs[] = {"93.184.216.34", "127.0.0.1", "169.254.169.254",
                                          "10.9.1.1", "192.0.2.7"};

struct pol_t_env {
    char                    dir[64];
    char                    db[96];
    struct pol_policy      *p, *pdry, *open;
    struct sockaddr_storage self[1];
};

static struct pol_policy *
pol_t_load(const char *text, int dry)
{
    struct al_errs     errs;
    struct pol_policy *p;

    al_errs_init(&errs);
    p = pol_load_text("r.json", text, strlen(text), NULL, 0, dry, &errs);
    if (p == NULL)
        fail_msg("load: %s", errs.text.data);
    al_errs_free(&errs);
    return p;
}

static void
pol_t_sa(const char *ip, uint16_t port, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    if (strchr(ip, ':') != NULL) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;

        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        assert_int_equal(inet_pton(AF_INET6, ip, &s6->sin6_addr), 1);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)ss;

        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
        assert_int_equal(inet_pton(AF_INET, ip, &s4->sin_addr), 1);
    }
}

static void
pol_t_sa_str(const struct sockaddr_storage *ss, char *out, size_t n)
{
    char ip[64];

    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;

        inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
        snprintf(out, n, "[%s]:%u", ip, ntohs(s6->sin6_port));
    } else {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;

        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
        snprintf(out, n, "%s:%u", ip, ntohs(s4->sin_port));
    }
}

static int
pol_t_setup(void **state)
{
    struct pol_t_env *e = calloc(1, sizeof(*e));

    assert_non_null(e);
    snprintf(e->dir, sizeof(e->dir), "/tmp/test_pol_replay.XXXXXX");
    assert_non_null(mkdtemp(e->dir));
    snprintf(e->db, sizeof(e->db), "%s/audit.db", e->dir);
    e->p = pol_t_load(pol_t_text, 0);
    e->pdry = pol_t_load(pol_t_text, 1);
    e->open = pol_t_load("{\"default\": \"allow\", \"allow_addresses\": [\"0.0.0.0/0\", \"::/0\"],"
                         " \"rules\": []}",
                         0);
    pol_t_sa("127.0.0.1", 3128, &e->self[0]); /* airlock's own listener */
    *state = e;
    return 0;
}

static int
pol_t_teardown(void **state)
{
    struct pol_t_env *e = *state;
    char              cmd[160];

    pol_policy_unref(e->p);
    pol_policy_unref(e->pdry);
    pol_policy_unref(e->open);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", e->dir);
    assert_int_equal(system(cmd), 0);
    free(e);
    return 0;
}

/*
 * One request as the daemon handles it: px_decide's pol_request, then the
 * guard on the resolved address, then the row as px_conn_audit_fill fills
 * it. Returns the verdict. known = 0: no address was looked up for this
 * request (decide without the guard, as a replay must, unless the host is
 * an IP literal).
 */
static int
pol_t_daemon_row(const struct pol_t_env *e, const struct pol_policy *p, const char *sb,
                 const char *method, const char *host, uint16_t port, const char *path,
                 const char *addr, int known, struct aud_record *r)
{
    struct pol_request      rq;
    struct pol_decision     d;
    struct sockaddr_storage sa, lit;
    int                     tunnel = strcmp(method, "CONNECT") == 0;

    memset(&rq, 0, sizeof(rq));
    rq.sandbox = sb[0] != '\0' ? sb : NULL;
    rq.scheme = tunnel ? "connect" : "http";
    rq.host = host;
    rq.host_is_ip = pol_addr_parse_literal(host, strlen(host), &lit) == AL_OK;
    rq.port = port;
    rq.method = method;
    if (!tunnel) {
        rq.path = path;
        rq.path_len = strlen(path);
    }
    pol_decide(p, &rq, &d);
    memset(r, 0, sizeof(*r));
    r->ts_us = al_now_us();
    al_strlcpy(r->sandbox, sizeof(r->sandbox), sb);
    al_strlcpy(r->mode, sizeof(r->mode), "forward");
    al_strlcpy(r->method, sizeof(r->method), method);
    al_strlcpy(r->scheme, sizeof(r->scheme), rq.scheme);
    al_strlcpy(r->host, sizeof(r->host), host);
    r->port = port;
    if (!tunnel)
        al_strlcpy(r->path, sizeof(r->path), path);
    if (d.verdict != POL_DENY && (known || rq.host_is_ip)) {
        int kept;

        /* an IP literal resolves to itself */
        pol_t_sa(rq.host_is_ip ? host : addr, port, &sa);
        kept = pol_filter_addrs(p, &d, &sa, 1, e->self, 1);
        if (kept > 0) {
            pol_t_sa_str(&sa, r->upstream, sizeof(r->upstream));
            al_strlcpy(r->addr, sizeof(r->addr), r->upstream);
            r->status = 200;
        } else {
            assert_int_not_equal(d.refused_addr.ss_family, 0);
            pol_t_sa_str(&d.refused_addr, r->addr, sizeof(r->addr));
            r->status = 403;
        }
    } else {
        r->status = 403;
    }
    al_strlcpy(r->decision, sizeof(r->decision), pol_verdict_name(d.verdict));
    al_strlcpy(r->rule, sizeof(r->rule),
               d.verdict == POL_WOULD_DENY && d.staged_rule ? d.staged_rule : d.rule);
    al_strlcpy(r->reason, sizeof(r->reason), d.reason);
    return (int)d.verdict;
}

/* Writes the whole matrix decided under p; counts verdicts under `other`. */
static int
pol_t_record(const struct pol_t_env *e, const struct pol_policy *p, const struct pol_policy *other,
             int *changed_vs_other)
{
    struct aud_conf    conf;
    struct al_errs     errs;
    struct aud_writer *w;
    int                n = 0;

    memset(&conf, 0, sizeof(conf));
    conf.db_path = e->db;
    conf.flush_ms = 5;
    conf.queue_max = 1 << 16;
    al_errs_init(&errs);
    w = aud_writer_start(&conf, &errs);
    if (w == NULL)
        fail_msg("writer: %s", errs.text.data);
    *changed_vs_other = 0;
    for (size_t s = 0; s < sizeof(pol_t_sandboxes) / sizeof(pol_t_sandboxes[0]); s++)
        for (size_t m = 0; m < sizeof(pol_t_methods) / sizeof(pol_t_methods[0]); m++)
            for (size_t h = 0; h < sizeof(pol_t_hosts) / sizeof(pol_t_hosts[0]); h++)
                for (size_t pt = 0; pt < sizeof(pol_t_ports) / sizeof(pol_t_ports[0]); pt++)
                    for (size_t pa = 0; pa < sizeof(pol_t_paths) / sizeof(pol_t_paths[0]); pa++)
                        for (size_t a = 0; a < sizeof(pol_t_addrs) / sizeof(pol_t_addrs[0]); a++) {
                            struct aud_record *r = aud_record_new();
                            struct aud_record  o;
                            int                v, vo;
                            uint16_t           port = pol_t_ports[pt];

                            assert_non_null(r);
                            /* airlock's own listener port for loopback */
                            if (a == 1 && pt == 2)
                                port = 3128;
                            v = pol_t_daemon_row(e, p, pol_t_sandboxes[s], pol_t_methods[m],
                                                 pol_t_hosts[h], port, pol_t_paths[pa],
                                                 pol_t_addrs[a], 1, r);
                            /* the same request under `other`, with the
                             * address only where the daemon looked it up */
                            vo = pol_t_daemon_row(e, other, pol_t_sandboxes[s], pol_t_methods[m],
                                                  pol_t_hosts[h], port, pol_t_paths[pa],
                                                  pol_t_addrs[a], r->addr[0] != '\0', &o);
                            if (v != vo)
                                (*changed_vs_other)++;
                            assert_int_not_equal(aud_submit(w, r), AL_ERROR);
                            n++;
                        }
    aud_writer_stop(w);
    al_errs_free(&errs);
    return n;
}

static void
test_replay_same_policy_changes_nothing(void **state)
{
    struct pol_t_env       *e = *state;
    struct pol_replay_opts  o;
    struct pol_replay_stats st;
    struct al_errs          errs;
    int                     changed, n;

    n = pol_t_record(e, e->p, e->open, &changed);
    assert_true(n > 10000);
    assert_true(changed > 0);
    memset(&o, 0, sizeof(o));
    o.db = e->db;
    o.self = e->self;
    o.nself = 1;
    al_errs_init(&errs);
    assert_int_equal(pol_replay(e->p, &o, &st, &errs), 0);
    assert_int_equal(st.rows, (uint64_t)n);
    assert_int_equal(st.replayed, (uint64_t)n);
    assert_int_equal(st.changed, 0);
    assert_int_equal(st.rule_changed, 0);
    assert_int_equal(st.lacked, 0);
    assert_int_equal(st.schema_version, AUD_SCHEMA_VERSION);
    /* another policy: exactly the rows a direct decision changes */
    assert_int_equal(pol_replay(e->open, &o, &st, &errs), 3);
    assert_int_equal(st.changed, (uint64_t)changed);
    assert_int_equal(st.replayed, (uint64_t)n);
    /* the same with three readers over parts of the file, merged */
    {
        struct pol_replay_stats st1 = st;
        char                    a[65536], b[65536];
        FILE                   *fa = fmemopen(a, sizeof(a), "w"), *fb = fmemopen(b, sizeof(b), "w");

        o.format = POL_REPLAY_CSV;
        o.out = fa;
        assert_int_equal(pol_replay(e->open, &o, &st1, &errs), 3);
        fclose(fa);
        o.threads = 3;
        o.part_rows = 1;
        o.out = fb;
        assert_int_equal(pol_replay(e->open, &o, &st, &errs), 3);
        fclose(fb);
        assert_int_equal(st.rows, st1.rows);
        assert_int_equal(st.changed, st1.changed);
        assert_int_equal(st.unchanged, st1.unchanged);
        assert_int_equal(st.rule_changed, st1.rule_changed);
        assert_int_equal(st.groups, st1.groups);
        assert_int_equal(st.first_us, st1.first_us);
        assert_int_equal(st.last_us, st1.last_us);
        /* the same groups, counts and times (examples may differ in order) */
        for (char *p = a, *q = b; *p != '\0' || *q != '\0';) {
            size_t lp = strcspn(p, "\n"), lq = strcspn(q, "\n");
            char  *ep = memrchr(p, ',', lp), *eq = memrchr(q, ',', lq);

            assert_non_null(ep);
            assert_non_null(eq);
            assert_int_equal(ep - p, eq - q);
            assert_memory_equal(p, q, (size_t)(ep - p));
            p += lp + (p[lp] != '\0');
            q += lq + (q[lq] != '\0');
        }
        o.threads = 0;
        o.part_rows = 0;
        o.out = NULL;
        o.format = POL_REPLAY_TABLE;
    }
    al_errs_free(&errs);
}

static void
test_replay_dry_run_recording(void **state)
{
    struct pol_t_env       *e = *state;
    struct pol_replay_opts  o;
    struct pol_replay_stats st;
    struct al_errs          errs;
    int                     changed, n;

    /* recorded under `airlock run --dry-run`: replayed the same way, no
     * change; replayed enforcing, every would_deny but the staged ones'
     * becomes a deny */
    n = pol_t_record(e, e->pdry, e->p, &changed);
    memset(&o, 0, sizeof(o));
    o.db = e->db;
    o.self = e->self;
    o.nself = 1;
    al_errs_init(&errs);
    assert_int_equal(pol_replay(e->pdry, &o, &st, &errs), 0);
    assert_int_equal(st.replayed, (uint64_t)n);
    assert_int_equal(st.changed, 0);
    assert_int_equal(pol_replay(e->p, &o, &st, &errs), 3);
    assert_int_equal(st.changed, (uint64_t)changed);
    al_errs_free(&errs);
}

/* Rows the policy did not decide are counted, not replayed; a guard
 * refusal without its address (a pre-v4 file) keeps its refusal. */
static void
test_replay_outside_policy_and_old_rows(void **state)
{
    struct pol_t_env        *e = *state;
    struct aud_conf          conf;
    struct al_errs           errs;
    struct aud_writer       *w;
    struct pol_replay_opts   o;
    struct pol_replay_stats  st;
    static const char *const rows[][6] = {
        /* decision, rule, reason, host, method, addr */
        {"deny", "", "bad_credentials", "open.test", "GET", ""},
        {"error", "", "bad_request", "open.test", "GET", ""},
        {"deny", "any", "secret_out_of_scope", "open.test", "GET", "93.184.216.34:80"},
        {"deny", "meta", "address_not_allowed", "meta.test", "GET", ""},
        {"allow", "any", "allowed_by_rule", "open.test", "GET", "93.184.216.34:80"},
        /* a public address refused: one of the recording host's own */
        {"deny", "any", "address_not_allowed", "open.test", "GET", "203.0.114.7:80"},
    };

    al_errs_init(&errs);
    assert_int_equal(aud_db_create_v1(e->db, &errs), AL_OK); /* migrated by the writer */
    memset(&conf, 0, sizeof(conf));
    conf.db_path = e->db;
    conf.flush_ms = 5;
    w = aud_writer_start(&conf, &errs);
    assert_non_null(w);
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        struct aud_record *r = aud_record_new();

        r->ts_us = al_now_us();
        al_strlcpy(r->decision, sizeof(r->decision), rows[i][0]);
        al_strlcpy(r->rule, sizeof(r->rule), rows[i][1]);
        al_strlcpy(r->reason, sizeof(r->reason), rows[i][2]);
        al_strlcpy(r->host, sizeof(r->host), rows[i][3]);
        al_strlcpy(r->method, sizeof(r->method), rows[i][4]);
        al_strlcpy(r->addr, sizeof(r->addr), rows[i][5]);
        al_strlcpy(r->scheme, sizeof(r->scheme), "http");
        al_strlcpy(r->path, sizeof(r->path), "/");
        r->port = 80;
        assert_int_equal(aud_submit(w, r), AL_OK);
    }
    aud_writer_stop(w);
    memset(&o, 0, sizeof(o));
    o.db = e->db;
    assert_int_equal(pol_replay(e->p, &o, &st, &errs), 0);
    assert_int_equal(st.rows, 6);
    assert_int_equal(st.before_policy, 2);
    assert_int_equal(st.after_policy, 1);
    assert_int_equal(st.replayed, 3);
    assert_int_equal(st.unchanged, 3);
    assert_int_equal(st.lacked, 1);
    assert_int_equal(st.lacked_addr, 1);
    /* a policy that would allow meta.test's address still keeps the
     * refusal it cannot re-check, and says so */
    assert_int_equal(pol_replay(e->open, &o, &st, &errs), 0);
    assert_int_equal(st.lacked_addr, 1);
    /* a missing file is a runtime failure */
    o.db = "/nonexistent/audit.db";
    assert_int_equal(pol_replay(e->p, &o, &st, &errs), 1);
    assert_true(errs.count > 0);
    al_errs_free(&errs);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_replay_same_policy_changes_nothing, pol_t_setup,
                                        pol_t_teardown),
        cmocka_unit_test_setup_teardown(test_replay_dry_run_recording, pol_t_setup, pol_t_teardown),
        cmocka_unit_test_setup_teardown(test_replay_outside_policy_and_old_rows, pol_t_setup,
                                        pol_t_teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
