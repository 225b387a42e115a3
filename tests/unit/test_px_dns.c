/*
 * test_px_dns.c - px_dns against a stub DNS server on 127.0.0.1.
 *
 * The stub is a UDP socket on the test's own ev_loop (so no threads and no
 * locking): it answers from a small table of names, counts what it was asked,
 * and stays silent for one name so timeouts can be tested. Every resolver in
 * these tests is pinned to the stub; nothing leaves loopback. Every loop run
 * is bounded by a guard timer so a bug fails a test instead of hanging it.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/common.h"
#include "proxy/px_dns.h"

#define PX_TDNS_MAX_A 10
#define PX_TDNS_GUARD_S 5.0
#define PX_TDNS_BULK ".bulk.test"
#define PX_TDNS_BATCH 64 /* lookups in flight at once: stays well inside the UDP buffer */

enum px_tdns_mode { PX_TDNS_ANSWER, PX_TDNS_NXDOMAIN, PX_TDNS_SERVFAIL, PX_TDNS_SILENT };

struct px_tdns_name {
    const char       *name;
    enum px_tdns_mode mode;
    uint32_t          ttl;
    const char       *a[PX_TDNS_MAX_A]; /* NULL-terminated */
    const char       *aaaa;             /* NULL: NOERROR, no AAAA records */
    unsigned          seen_a, seen_aaaa;
};

static const struct px_tdns_name px_tdns_names[] = {
    {"good.test", PX_TDNS_ANSWER, 60, {"192.0.2.10", "192.0.2.11"}, "2001:db8::10", 0, 0},
    {"v4only.test", PX_TDNS_ANSWER, 60, {"192.0.2.30"}, NULL, 0, 0},
    {"nodata.test", PX_TDNS_ANSWER, 60, {NULL}, NULL, 0, 0},
    {"ttl0.test", PX_TDNS_ANSWER, 0, {"192.0.2.20"}, NULL, 0, 0},
    {"many.test",
     PX_TDNS_ANSWER,
     60,
     {"192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4", "192.0.2.5", "192.0.2.6", "192.0.2.7",
      "192.0.2.8", "192.0.2.9", "192.0.2.99"},
     "2001:db8::1",
     0,
     0},
    {"nx.test", PX_TDNS_NXDOMAIN, 0, {NULL}, NULL, 0, 0},
    {"servfail.test", PX_TDNS_SERVFAIL, 0, {NULL}, NULL, 0, 0},
    {"silent.test", PX_TDNS_SILENT, 0, {NULL}, NULL, 0, 0},
    {"bulk.test", PX_TDNS_ANSWER, 60, {"192.0.2.77"}, NULL, 0, 0},
};
#define PX_TDNS_NNAMES (sizeof(px_tdns_names) / sizeof(px_tdns_names[0]))

struct px_tdns_stub {
    int                 fd;
    uint16_t            port;
    ev_io               io;
    unsigned            packets, unknown, bulk;
    struct px_tdns_name names[PX_TDNS_NNAMES];
};

/* What one callback saw. */
struct px_tdns_cb {
    int                  calls;
    struct px_dns_result res;
    struct px_dns      **free_dns; /* when set, the callback frees the resolver */
};

struct px_tdns {
    struct ev_loop     *loop;
    struct px_tdns_stub stub;
    struct px_dns      *dns;
    char                server[32];
    const char         *servers[1];
};

/* ---- stub server ---------------------------------------------------------- */

static struct px_tdns_name *
px_tdns_stub_find(struct px_tdns_stub *s, const char *name)
{
    for (size_t i = 0; i < PX_TDNS_NNAMES; i++) {
        if (strcmp(s->names[i].name, name) == 0)
            return &s->names[i];
    }
    return NULL;
}

static size_t
px_tdns_put_rr(unsigned char *p, int type, uint32_t ttl, const void *rdata, uint16_t rdlen)
{
    p[0] = 0xc0; /* name: pointer to the question */
    p[1] = 12;
    p[2] = 0;
    p[3] = (unsigned char)type;
    p[4] = 0;
    p[5] = 1; /* IN */
    p[6] = (unsigned char)(ttl >> 24);
    p[7] = (unsigned char)(ttl >> 16);
    p[8] = (unsigned char)(ttl >> 8);
    p[9] = (unsigned char)ttl;
    p[10] = (unsigned char)(rdlen >> 8);
    p[11] = (unsigned char)rdlen;
    memcpy(p + 12, rdata, rdlen);
    return 12u + rdlen;
}

static void
px_tdns_stub_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct px_tdns_stub    *s = w->data;
    unsigned char           q[512], r[1024];
    char                    name[256];
    struct sockaddr_storage peer;
    socklen_t               plen = sizeof(peer);
    ssize_t                 n;
    size_t                  off = 12, nlen = 0, rlen;
    unsigned                qtype, ancount = 0, rcode = 0;
    struct px_tdns_name    *e;

    (void)loop;
    (void)revents;
    n = recvfrom(s->fd, q, sizeof(q), 0, (struct sockaddr *)&peer, &plen);
    if (n < 12 + 5)
        return;
    s->packets++;
    while (off < (size_t)n && q[off] != 0) { /* question name, labels only */
        size_t l = q[off];

        if (l > 63 || off + 1 + l >= (size_t)n || nlen + l + 1 >= sizeof(name))
            return;
        if (nlen > 0)
            name[nlen++] = '.';
        for (size_t i = 0; i < l; i++) {
            char c = (char)q[off + 1 + i];

            name[nlen++] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
        }
        off += 1 + l;
    }
    name[nlen] = '\0';
    if (off + 5 > (size_t)n)
        return;
    qtype = (unsigned)q[off + 1] << 8 | q[off + 2];
    off += 5; /* root label, type, class */

    e = px_tdns_stub_find(s, name);
    if (e == NULL && nlen > sizeof(PX_TDNS_BULK) - 1 &&
        strcmp(name + nlen - (sizeof(PX_TDNS_BULK) - 1), PX_TDNS_BULK) == 0) {
        e = px_tdns_stub_find(s, PX_TDNS_BULK + 1); /* any *.bulk.test: one A */
        s->bulk++;
    }
    if (e == NULL) {
        s->unknown++;
        rcode = 3; /* NXDOMAIN: search-list variants end up here */
    } else {
        if (qtype == 1)
            e->seen_a++;
        else if (qtype == 28)
            e->seen_aaaa++;
        if (e->mode == PX_TDNS_SILENT)
            return;
        rcode = e->mode == PX_TDNS_NXDOMAIN ? 3 : e->mode == PX_TDNS_SERVFAIL ? 2 : 0;
    }

    memcpy(r, q, off);                            /* header and question */
    r[2] = (unsigned char)(0x80 | (q[2] & 0x01)); /* QR, keep RD */
    r[3] = (unsigned char)(0x80 | rcode);         /* RA */
    r[6] = r[7] = r[8] = r[9] = r[10] = r[11] = 0;
    rlen = off;
    if (e != NULL && rcode == 0 && qtype == 1) {
        for (int i = 0; i < PX_TDNS_MAX_A && e->a[i] != NULL; i++) {
            struct in_addr a4;

            assert_int_equal(inet_pton(AF_INET, e->a[i], &a4), 1);
            rlen += px_tdns_put_rr(r + rlen, 1, e->ttl, &a4, 4);
            ancount++;
        }
    } else if (e != NULL && rcode == 0 && qtype == 28 && e->aaaa != NULL) {
        struct in6_addr a6;

        assert_int_equal(inet_pton(AF_INET6, e->aaaa, &a6), 1);
        rlen += px_tdns_put_rr(r + rlen, 28, e->ttl, &a6, 16);
        ancount++;
    }
    r[7] = (unsigned char)ancount;
    (void)sendto(s->fd, r, rlen, 0, (struct sockaddr *)&peer, plen);
}

static void
px_tdns_stub_start(struct ev_loop *loop, struct px_tdns_stub *s)
{
    struct sockaddr_in sin;
    socklen_t          sl = sizeof(sin);

    memset(s, 0, sizeof(*s));
    memcpy(s->names, px_tdns_names, sizeof(px_tdns_names));
    s->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    assert_true(s->fd >= 0);
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(s->fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(getsockname(s->fd, (struct sockaddr *)&sin, &sl), 0);
    s->port = ntohs(sin.sin_port);
    ev_io_init(&s->io, px_tdns_stub_cb, s->fd, EV_READ);
    s->io.data = s;
    ev_io_start(loop, &s->io);
}

static void
px_tdns_stub_stop(struct ev_loop *loop, struct px_tdns_stub *s)
{
    ev_io_stop(loop, &s->io);
    close(s->fd);
    s->fd = -1;
}

/* ---- fixtures and helpers -------------------------------------------------- */

static struct px_dns *
px_tdns_new_dns(struct px_tdns *t, int timeout_ms, const struct px_dns_override *ovr, int novr)
{
    struct px_dns_conf conf;

    memset(&conf, 0, sizeof(conf));
    conf.overrides = ovr;
    conf.noverrides = novr;
    conf.timeout_ms = timeout_ms;
    conf.servers = t->servers;
    conf.nservers = 1;
    return px_dns_new(t->loop, &conf);
}

static int
px_tdns_setup(void **state)
{
    struct px_tdns *t = al_calloc(1, sizeof(*t));

    assert_non_null(t);
    t->loop = ev_loop_new(EVFLAG_AUTO);
    assert_non_null(t->loop);
    px_tdns_stub_start(t->loop, &t->stub);
    snprintf(t->server, sizeof(t->server), "127.0.0.1:%u", (unsigned)t->stub.port);
    t->servers[0] = t->server;
    t->dns = px_tdns_new_dns(t, 2000, NULL, 0);
    assert_non_null(t->dns);
    *state = t;
    return 0;
}

static int
px_tdns_teardown(void **state)
{
    struct px_tdns *t = *state;

    px_dns_free(t->dns);
    px_tdns_stub_stop(t->loop, &t->stub);
    ev_loop_destroy(t->loop);
    al_free(t);
    return 0;
}

static void
px_tdns_cb(void *arg, const struct px_dns_result *res)
{
    struct px_tdns_cb *c = arg;

    c->calls++;
    c->res = *res;
    if (c->free_dns != NULL) {
        px_dns_free(*c->free_dns);
        *c->free_dns = NULL;
    }
}

static void
px_tdns_guard_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    *(int *)w->data = 1;
}

/* Runs the loop until *a (and *b when given) has been called, or the guard
 * fires. Returns the elapsed loop time in seconds. */
static double
px_tdns_run(struct ev_loop *loop, const int *a, const int *b, double max_s)
{
    ev_timer guard;
    int      expired = 0;
    double   t0;

    ev_now_update(loop);
    t0 = ev_now(loop);
    ev_timer_init(&guard, px_tdns_guard_cb, max_s, 0.);
    guard.data = &expired;
    ev_timer_start(loop, &guard);
    while (!expired && (*a == 0 || (b != NULL && *b == 0)))
        ev_run(loop, EVRUN_ONCE);
    ev_timer_stop(loop, &guard);
    ev_now_update(loop);
    return ev_now(loop) - t0;
}

/* Runs the loop until *n reaches `want` or the guard fires. */
static void
px_tdns_run_count(struct ev_loop *loop, const int *n, int want, double max_s)
{
    ev_timer guard;
    int      expired = 0;

    ev_timer_init(&guard, px_tdns_guard_cb, max_s, 0.);
    guard.data = &expired;
    ev_timer_start(loop, &guard);
    while (!expired && *n < want)
        ev_run(loop, EVRUN_ONCE);
    ev_timer_stop(loop, &guard);
}

/* Runs the loop for `s` seconds (lets orphaned lookups land). */
static void
px_tdns_spin(struct ev_loop *loop, double s)
{
    int never = 0;

    (void)px_tdns_run(loop, &never, NULL, s);
}

static void
px_tdns_assert_addr(const struct sockaddr_storage *ss, const char *ip, uint16_t port)
{
    char buf[INET6_ADDRSTRLEN];

    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;

        assert_non_null(inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof(buf)));
        assert_int_equal(ntohs(sin->sin_port), port);
    } else {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;

        assert_int_equal(ss->ss_family, AF_INET6);
        assert_non_null(inet_ntop(AF_INET6, &sin6->sin6_addr, buf, sizeof(buf)));
        assert_int_equal(ntohs(sin6->sin6_port), port);
    }
    assert_string_equal(buf, ip);
}

static struct px_dns_stats
px_tdns_stats(const struct px_dns *d)
{
    struct px_dns_stats st;

    px_dns_get_stats(d, &st);
    return st;
}

static int
px_tdns_resolve(struct px_tdns *t, const char *host, uint16_t port, struct px_tdns_cb *c,
                struct px_dns_result *res, struct px_dns_query **q)
{
    return px_dns_resolve(t->dns, host, port, px_tdns_cb, c, res, q);
}

/* ---- immediate answers ------------------------------------------------------ */

static void
test_px_dns_literals(void **state)
{
    struct px_tdns      *t = *state;
    struct px_tdns_cb    c = {0};
    struct px_dns_result res;
    struct px_dns_query *q = (struct px_dns_query *)&c; /* must be reset to NULL */

    assert_int_equal(px_tdns_resolve(t, "192.0.2.1", 443, &c, &res, &q), AL_OK);
    assert_null(q);
    assert_int_equal(res.err, PX_DNS_OK);
    assert_int_equal(res.naddrs, 1);
    px_tdns_assert_addr(&res.addrs[0], "192.0.2.1", 443);

    assert_int_equal(px_tdns_resolve(t, "2001:db8::1", 80, &c, &res, &q), AL_OK);
    assert_int_equal(res.err, PX_DNS_OK);
    assert_int_equal(res.naddrs, 1);
    px_tdns_assert_addr(&res.addrs[0], "2001:db8::1", 80);

    assert_int_equal(c.calls, 0);
    assert_int_equal(t->stub.packets, 0);
    assert_int_equal(px_tdns_stats(t->dns).queries, 0);
}

static void
test_px_dns_localhost(void **state)
{
    struct px_tdns      *t = *state;
    struct px_tdns_cb    c = {0};
    struct px_dns_result res;
    struct px_dns_query *q;

    assert_int_equal(px_tdns_resolve(t, "localhost", 8080, &c, &res, &q), AL_OK);
    assert_int_equal(res.err, PX_DNS_OK);
    assert_int_equal(res.naddrs, 2);
    px_tdns_assert_addr(&res.addrs[0], "127.0.0.1", 8080);
    px_tdns_assert_addr(&res.addrs[1], "::1", 8080);

    assert_int_equal(px_tdns_resolve(t, "app.localhost", 1, &c, &res, &q), AL_OK);
    assert_int_equal(res.naddrs, 2);
    px_tdns_assert_addr(&res.addrs[0], "127.0.0.1", 1);
    assert_int_equal(t->stub.packets, 0);
}

static void
test_px_dns_overrides(void **state)
{
    static const struct px_dns_override ovr[] = {
        {"api.internal", "fd00::7"},
        {"api.internal", "10.1.2.3"},
        {"good.test", "198.51.100.1"}, /* beats DNS */
    };
    static const struct px_dns_override bad[] = {{"x.test", "not-an-ip"}};
    struct px_tdns                     *t = *state;
    struct px_tdns_cb                   c = {0};
    struct px_dns_result                res;
    struct px_dns_query                *q;

    px_dns_free(t->dns);
    t->dns = px_tdns_new_dns(t, 2000, ovr, 3);
    assert_non_null(t->dns);

    assert_int_equal(px_tdns_resolve(t, "api.internal", 443, &c, &res, &q), AL_OK);
    assert_int_equal(res.err, PX_DNS_OK);
    assert_int_equal(res.naddrs, 2);
    px_tdns_assert_addr(&res.addrs[0], "10.1.2.3", 443); /* IPv4 first */
    px_tdns_assert_addr(&res.addrs[1], "fd00::7", 443);

    assert_int_equal(px_tdns_resolve(t, "good.test", 80, &c, &res, &q), AL_OK);
    assert_int_equal(res.naddrs, 1);
    px_tdns_assert_addr(&res.addrs[0], "198.51.100.1", 80);
    assert_int_equal(t->stub.packets, 0);

    assert_null(px_tdns_new_dns(t, 2000, bad, 1));
}

static void
test_px_dns_bad_conf(void **state)
{
    static const char *const bad_servers[] = {"127.0.0.1:53,127.0.0.2:53"};
    static const char *const junk[] = {"nonsense:port"};
    struct px_tdns          *t = *state;
    struct px_dns_conf       conf;

    memset(&conf, 0, sizeof(conf));
    conf.servers = bad_servers;
    conf.nservers = 1;
    assert_null(px_dns_new(t->loop, &conf));
    conf.servers = junk;
    assert_null(px_dns_new(t->loop, &conf));
}

static void
test_px_dns_bad_names(void **state)
{
    struct px_tdns      *t = *state;
    struct px_tdns_cb    c = {0};
    struct px_dns_result res;
    struct px_dns_query *q;
    char                 name[300];

    assert_int_equal(px_tdns_resolve(t, "", 80, &c, &res, &q), AL_OK);
    assert_int_equal(res.err, PX_DNS_FAIL);

    memset(name, 'a', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    assert_int_equal(px_tdns_resolve(t, name, 80, &c, &res, &q), AL_OK);
    assert_int_equal(res.err, PX_DNS_FAIL);

    /* A 64-byte label: c-ares refuses it inside ares_getaddrinfo() and calls
     * back synchronously; that must surface as AL_OK, not as a callback. */
    memset(name, 'b', 64);
    memcpy(name + 64, ".test", 6);
    assert_int_equal(px_tdns_resolve(t, name, 80, &c, &res, &q), AL_OK);
    assert_null(q);
    assert_int_equal(res.err, PX_DNS_FAIL);
    px_tdns_spin(t->loop, 0.05);
    assert_int_equal(c.calls, 0);

    assert_int_equal(px_dns_resolve(t->dns, NULL, 80, px_tdns_cb, &c, &res, &q), AL_ERROR);
    assert_int_equal(px_dns_resolve(t->dns, "x.test", 80, px_tdns_cb, &c, &res, NULL), AL_ERROR);
    px_dns_cancel(NULL);
    px_dns_free(NULL);
}

/* ---- lookups through the stub ------------------------------------------------ */

static void
test_px_dns_answer_and_cache(void **state)
{
    struct px_tdns      *t = *state;
    struct px_tdns_cb    c = {0};
    struct px_dns_result res;
    struct px_dns_query *q;
    struct px_dns_stats  st;

    assert_int_equal(px_tdns_resolve(t, "good.test", 443, &c, &res, &q), AL_AGAIN);
    assert_non_null(q);
    px_tdns_run(t->loop, &c.calls, NULL, PX_TDNS_GUARD_S);
    assert_int_equal(c.calls, 1);
    assert_int_equal(c.res.err, PX_DNS_OK);
    assert_int_equal(c.res.naddrs, 3);
    px_tdns_assert_addr(&c.res.addrs[0], "192.0.2.10", 443);
    px_tdns_assert_addr(&c.res.addrs[1], "192.0.2.11", 443);
    px_tdns_assert_addr(&c.res.addrs[2], "2001:db8::10", 443);

    /* Second lookup, other port: from the cache, port applied. */
    assert_int_equal(px_tdns_resolve(t, "good.test", 8443, &c, &res, &q), AL_OK);
    assert_null(q);
    assert_int_equal(res.err, PX_DNS_OK);
    assert_int_equal(res.naddrs, 3);
    px_tdns_assert_addr(&res.addrs[0], "192.0.2.10", 8443);
    px_tdns_assert_addr(&res.addrs[2], "2001:db8::10", 8443);

    st = px_tdns_stats(t->dns);
    assert_int_equal(st.queries, 1);
    assert_int_equal(st.cache_hits, 1);
    assert_int_equal(st.failures, 0);
    assert_int_equal(px_tdns_stub_find(&t->stub, "good.test")->seen_a, 1);
    assert_int_equal(px_tdns_stub_find(&t->stub, "good.test")->seen_aaaa, 1);
    assert_int_equal(c.calls, 1);
}

static void
test_px_dns_v4only_and_max_addrs(void **state)
{
    struct px_tdns      *t = *state;
    struct px_tdns_cb    c = {0}, m = {0};
    struct px_dns_result res;
    struct px_dns_query *q;

    assert_int_equal(px_tdns_resolve(t, "v4only.test", 80, &c, &res, &q), AL_AGAIN);
    assert_int_equal(px_tdns_resolve(t, "many.test", 80, &m, &res, &q), AL_AGAIN);
    px_tdns_run(t->loop, &c.calls, &m.calls, PX_TDNS_GUARD_S);
    assert_int_equal(c.res.err, PX_DNS_OK);
    assert_int_equal(c.res.naddrs, 1);
    px_tdns_assert_addr(&c.res.addrs[0], "192.0.2.30", 80);

    /* Ten A and one AAAA: capped at PX_DNS_MAX_ADDRS, all of them IPv4. */
    assert_int_equal(m.res.err, PX_DNS_OK);
    assert_int_equal(m.res.naddrs, PX_DNS_MAX_ADDRS);
    for (int i = 0; i < PX_DNS_MAX_ADDRS; i++)
        assert_int_equal(m.res.addrs[i].ss_family, AF_INET);
}

static void
test_px_dns_negative_cache(void **state)
{
    struct px_tdns      *t = *state;
    struct px_tdns_cb    c = {0}, n = {0};
    struct px_dns_result res;
    struct px_dns_query *q;
    struct px_dns_stats  st;

    assert_int_equal(px_tdns_resolve(t, "nx.test", 443, &c, &res, &q), AL_AGAIN);
    assert_int_equal(px_tdns_resolve(t, "nodata.test", 443, &n, &res, &q), AL_AGAIN);
    px_tdns_run(t->loop, &c.calls, &n.calls, PX_TDNS_GUARD_S);
    assert_int_equal(c.calls, 1);
    assert_int_equal(c.res.err, PX_DNS_NOTFOUND);
    assert_int_equal(c.res.naddrs, 0);
    assert_int_equal(n.calls, 1);
    assert_int_equal(n.res.err, PX_DNS_NOTFOUND);

    assert_int_equal(px_tdns_resolve(t, "nx.test", 443, &c, &res, &q), AL_OK);
    assert_int_equal(res.err, PX_DNS_NOTFOUND);
    assert_int_equal(px_tdns_resolve(t, "nodata.test", 443, &c, &res, &q), AL_OK);
    assert_int_equal(res.err, PX_DNS_NOTFOUND);

    st = px_tdns_stats(t->dns);
    assert_int_equal(st.queries, 2);
    assert_int_equal(st.cache_hits, 2);
    assert_int_equal(st.failures, 2);
    assert_int_equal(px_tdns_stub_find(&t->stub, "nx.test")->seen_a, 1);
}

static void
test_px_dns_servfail_not_cached(void **state)
{
    struct px_tdns      *t = *state;
    struct px_tdns_cb    c = {0};
    struct px_dns_result res;
    struct px_dns_query *q;

    assert_int_equal(px_tdns_resolve(t, "servfail.test", 443, &c, &res, &q), AL_AGAIN);
    px_tdns_run(t->loop, &c.calls, NULL, PX_TDNS_GUARD_S);
    assert_int_equal(c.calls, 1);
    assert_int_equal(c.res.err, PX_DNS_FAIL);

    c.calls = 0;
    assert_int_equal(px_tdns_resolve(t, "servfail.test", 443, &c, &res, &q), AL_AGAIN);
    px_tdns_run(t->loop, &c.calls, NULL, PX_TDNS_GUARD_S);
    assert_int_equal(c.res.err, PX_DNS_FAIL);
    assert_int_equal(px_tdns_stats(t->dns).queries, 2);
}

static void
test_px_dns_timeout(void **state)
{
    struct px_tdns      *t = *state;
    struct px_tdns_cb    c = {0};
    struct px_dns_result res;
    struct px_dns_query *q;
    double               took;

    px_dns_free(t->dns);
    t->dns = px_tdns_new_dns(t, 300, NULL, 0);
    assert_non_null(t->dns);

    assert_int_equal(px_tdns_resolve(t, "silent.test", 443, &c, &res, &q), AL_AGAIN);
    took = px_tdns_run(t->loop, &c.calls, NULL, PX_TDNS_GUARD_S);
    assert_int_equal(c.calls, 1);
    assert_int_equal(c.res.err, PX_DNS_TIMEOUT);
    /* Two tries: 100 ms then 200 ms. Generous upper bound for slow CI. */
    assert_true(took >= 0.25);
    assert_true(took < 2.0);
    assert_int_equal(px_tdns_stub_find(&t->stub, "silent.test")->seen_a, 2);
    assert_int_equal(px_tdns_stats(t->dns).failures, 1);

    /* Timeouts are not cached. */
    c.calls = 0;
    assert_int_equal(px_tdns_resolve(t, "silent.test", 443, &c, &res, &q), AL_AGAIN);
    px_dns_cancel(q);
}

static void
test_px_dns_coalesce(void **state)
{
    struct px_tdns      *t = *state;
    struct px_tdns_cb    a = {0}, b = {0};
    struct px_dns_result res;
    struct px_dns_query *qa, *qb;

    assert_int_equal(px_tdns_resolve(t, "good.test", 443, &a, &res, &qa), AL_AGAIN);
    assert_int_equal(px_tdns_resolve(t, "good.test", 80, &b, &res, &qb), AL_AGAIN);
    assert_ptr_not_equal(qa, qb);
    px_tdns_run(t->loop, &a.calls, &b.calls, PX_TDNS_GUARD_S);
    assert_int_equal(a.calls, 1);
    assert_int_equal(b.calls, 1);
    px_tdns_assert_addr(&a.res.addrs[0], "192.0.2.10", 443);
    px_tdns_assert_addr(&b.res.addrs[0], "192.0.2.10", 80);

    /* One lookup: one A and one AAAA question reached the stub. */
    assert_int_equal(px_tdns_stub_find(&t->stub, "good.test")->seen_a, 1);
    assert_int_equal(px_tdns_stub_find(&t->stub, "good.test")->seen_aaaa, 1);
    assert_int_equal(px_tdns_stats(t->dns).queries, 1);
}

static void
test_px_dns_cancel(void **state)
{
    struct px_tdns      *t = *state;
    struct px_tdns_cb    a = {0}, b = {0}, lone = {0}, nx = {0};
    struct px_dns_result res;
    struct px_dns_query *qa, *qb, *ql;

    /* Cancel one of two waiters: the other still gets its answer. */
    assert_int_equal(px_tdns_resolve(t, "good.test", 443, &a, &res, &qa), AL_AGAIN);
    assert_int_equal(px_tdns_resolve(t, "good.test", 443, &b, &res, &qb), AL_AGAIN);
    px_dns_cancel(qa);
    px_tdns_run(t->loop, &b.calls, NULL, PX_TDNS_GUARD_S);
    assert_int_equal(a.calls, 0);
    assert_int_equal(b.calls, 1);
    assert_int_equal(b.res.err, PX_DNS_OK);

    /* Cancel the only waiter: the answer still fills the cache. The stub
     * answers in order, so once nx.test is answered v4only.test was too. */
    assert_int_equal(px_tdns_resolve(t, "v4only.test", 443, &lone, &res, &ql), AL_AGAIN);
    px_dns_cancel(ql);
    assert_int_equal(px_tdns_resolve(t, "nx.test", 443, &nx, &res, &qa), AL_AGAIN);
    px_tdns_run(t->loop, &nx.calls, NULL, PX_TDNS_GUARD_S);
    px_tdns_spin(t->loop, 0.05);
    assert_int_equal(lone.calls, 0);
    assert_int_equal(px_tdns_resolve(t, "v4only.test", 443, &lone, &res, &ql), AL_OK);
    px_tdns_assert_addr(&res.addrs[0], "192.0.2.30", 443);
    assert_int_equal(lone.calls, 0);
}

static void
test_px_dns_ttl_clamp_and_expiry(void **state)
{
    struct px_tdns      *t = *state;
    struct px_tdns_cb    c = {0};
    struct px_dns_result res;
    struct px_dns_query *q;

    /* TTL 0 is clamped up to PX_DNS_MIN_TTL_S: an immediate repeat hits. */
    assert_int_equal(px_tdns_resolve(t, "ttl0.test", 443, &c, &res, &q), AL_AGAIN);
    px_tdns_run(t->loop, &c.calls, NULL, PX_TDNS_GUARD_S);
    assert_int_equal(c.res.err, PX_DNS_OK);
    assert_int_equal(px_tdns_resolve(t, "ttl0.test", 443, &c, &res, &q), AL_OK);

    /* And it expires after that second. */
    ev_sleep(PX_DNS_MIN_TTL_S + 0.1);
    ev_now_update(t->loop);
    c.calls = 0;
    assert_int_equal(px_tdns_resolve(t, "ttl0.test", 443, &c, &res, &q), AL_AGAIN);
    px_tdns_run(t->loop, &c.calls, NULL, PX_TDNS_GUARD_S);
    assert_int_equal(c.calls, 1);
    assert_int_equal(px_tdns_stub_find(&t->stub, "ttl0.test")->seen_a, 2);
}

/* Looks up n<from>.bulk.test .. n<to-1>.bulk.test, PX_TDNS_BATCH at a time. */
static void
px_tdns_bulk(struct px_tdns *t, int from, int to)
{
    struct px_tdns_cb    c = {0};
    struct px_dns_result res;
    struct px_dns_query *q;
    char                 name[64];

    for (int i = from; i < to; i += PX_TDNS_BATCH) {
        int n = to - i < PX_TDNS_BATCH ? to - i : PX_TDNS_BATCH;

        c.calls = 0;
        for (int j = 0; j < n; j++) {
            snprintf(name, sizeof(name), "n%d%s", i + j, PX_TDNS_BULK);
            assert_int_equal(px_tdns_resolve(t, name, 80, &c, &res, &q), AL_AGAIN);
        }
        px_tdns_run_count(t->loop, &c.calls, n, PX_TDNS_GUARD_S);
        assert_int_equal(c.calls, n);
        assert_int_equal(c.res.err, PX_DNS_OK);
    }
}

static void
test_px_dns_cache_lru(void **state)
{
    struct px_tdns      *t = *state;
    struct px_tdns_cb    c = {0};
    struct px_dns_result res;
    struct px_dns_query *q;

    /* Fill the cache, touch the oldest entry, then add one more name: the
     * least recently used entry (n1) goes, n0 stays. */
    px_tdns_bulk(t, 0, PX_DNS_CACHE_ENTRIES);
    assert_int_equal(px_tdns_resolve(t, "n0" PX_TDNS_BULK, 80, &c, &res, &q), AL_OK);
    px_tdns_bulk(t, PX_DNS_CACHE_ENTRIES, PX_DNS_CACHE_ENTRIES + 1);
    assert_int_equal(px_tdns_resolve(t, "n0" PX_TDNS_BULK, 80, &c, &res, &q), AL_OK);
    assert_int_equal(px_tdns_resolve(t, "n2" PX_TDNS_BULK, 80, &c, &res, &q), AL_OK);
    assert_int_equal(px_tdns_resolve(t, "n1" PX_TDNS_BULK, 80, &c, &res, &q), AL_AGAIN);
    px_dns_cancel(q);
    assert_int_equal(t->stub.bulk, 2 * (PX_DNS_CACHE_ENTRIES + 1)); /* A + AAAA each */
}

static void
test_px_dns_free_with_pending(void **state)
{
    struct px_tdns      *t = *state;
    struct px_tdns_cb    a = {0}, b = {0};
    struct px_dns_result res;
    struct px_dns_query *q;

    assert_int_equal(px_tdns_resolve(t, "good.test", 443, &a, &res, &q), AL_AGAIN);
    assert_int_equal(px_tdns_resolve(t, "silent.test", 443, &b, &res, &q), AL_AGAIN);
    px_dns_free(t->dns);
    t->dns = NULL;
    px_tdns_spin(t->loop, 0.1); /* the stub's answer must reach no one */
    assert_int_equal(a.calls, 0);
    assert_int_equal(b.calls, 0);
}

static void
test_px_dns_free_from_callback(void **state)
{
    struct px_tdns      *t = *state;
    struct px_tdns_cb    c = {0}, other = {0};
    struct px_dns_result res;
    struct px_dns_query *q;

    /* Two waiters on one lookup, both freeing the resolver: whichever runs
     * first frees it, so the other waiter and the lookup of another name must
     * then stay silent. */
    c.free_dns = &t->dns;
    assert_int_equal(px_tdns_resolve(t, "good.test", 443, &c, &res, &q), AL_AGAIN);
    assert_int_equal(px_tdns_resolve(t, "good.test", 443, &c, &res, &q), AL_AGAIN);
    assert_int_equal(px_tdns_resolve(t, "silent.test", 443, &other, &res, &q), AL_AGAIN);
    px_tdns_run(t->loop, &c.calls, NULL, PX_TDNS_GUARD_S);
    assert_int_equal(c.calls, 1);
    assert_null(t->dns);
    px_tdns_spin(t->loop, 0.1);
    assert_int_equal(c.calls, 1);
    assert_int_equal(other.calls, 0);
}

/* A callback that resolves again: the cache is filled before waiters run. */
struct px_tdns_again {
    struct px_tdns      *t;
    int                  calls, rc;
    struct px_dns_result res;
};

static void
px_tdns_again_cb(void *arg, const struct px_dns_result *res)
{
    struct px_tdns_again *g = arg;
    struct px_dns_query  *q;

    (void)res;
    g->calls++;
    g->rc = px_dns_resolve(g->t->dns, "good.test", 25, px_tdns_again_cb, g, &g->res, &q);
}

static void
test_px_dns_resolve_from_callback(void **state)
{
    struct px_tdns      *t = *state;
    struct px_tdns_again g = {t, 0, 0, {0}};
    struct px_dns_result res;
    struct px_dns_query *q;

    assert_int_equal(px_dns_resolve(t->dns, "good.test", 443, px_tdns_again_cb, &g, &res, &q),
                     AL_AGAIN);
    px_tdns_run(t->loop, &g.calls, NULL, PX_TDNS_GUARD_S);
    assert_int_equal(g.calls, 1);
    assert_int_equal(g.rc, AL_OK);
    px_tdns_assert_addr(&g.res.addrs[0], "192.0.2.10", 25);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_px_dns_literals, px_tdns_setup, px_tdns_teardown),
        cmocka_unit_test_setup_teardown(test_px_dns_localhost, px_tdns_setup, px_tdns_teardown),
        cmocka_unit_test_setup_teardown(test_px_dns_overrides, px_tdns_setup, px_tdns_teardown),
        cmocka_unit_test_setup_teardown(test_px_dns_bad_conf, px_tdns_setup, px_tdns_teardown),
        cmocka_unit_test_setup_teardown(test_px_dns_bad_names, px_tdns_setup, px_tdns_teardown),
        cmocka_unit_test_setup_teardown(test_px_dns_answer_and_cache, px_tdns_setup,
                                        px_tdns_teardown),
        cmocka_unit_test_setup_teardown(test_px_dns_v4only_and_max_addrs, px_tdns_setup,
                                        px_tdns_teardown),
        cmocka_unit_test_setup_teardown(test_px_dns_negative_cache, px_tdns_setup,
                                        px_tdns_teardown),
        cmocka_unit_test_setup_teardown(test_px_dns_servfail_not_cached, px_tdns_setup,
                                        px_tdns_teardown),
        cmocka_unit_test_setup_teardown(test_px_dns_timeout, px_tdns_setup, px_tdns_teardown),
        cmocka_unit_test_setup_teardown(test_px_dns_coalesce, px_tdns_setup, px_tdns_teardown),
        cmocka_unit_test_setup_teardown(test_px_dns_cancel, px_tdns_setup, px_tdns_teardown),
        cmocka_unit_test_setup_teardown(test_px_dns_ttl_clamp_and_expiry, px_tdns_setup,
                                        px_tdns_teardown),
        cmocka_unit_test_setup_teardown(test_px_dns_cache_lru, px_tdns_setup, px_tdns_teardown),
        cmocka_unit_test_setup_teardown(test_px_dns_free_with_pending, px_tdns_setup,
                                        px_tdns_teardown),
        cmocka_unit_test_setup_teardown(test_px_dns_free_from_callback, px_tdns_setup,
                                        px_tdns_teardown),
        cmocka_unit_test_setup_teardown(test_px_dns_resolve_from_callback, px_tdns_setup,
                                        px_tdns_teardown),
    };

    al_log_set_level(AL_LOG_OFF);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
