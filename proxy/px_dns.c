/*
 * px_dns.c - asynchronous A/AAAA resolution for one worker loop.
 *
 * DESIGN
 *
 * Each worker owns one struct px_dns: a c-ares channel whose sockets are
 * watched by the worker's own ev_loop, so nothing here blocks and nothing is
 * shared between threads except the statistics counters.
 *
 * - c-ares tells us which sockets it wants through the sock_state callback;
 *   we keep one ev_io per socket (struct px_dns_sock) and one ev_timer that is
 *   re-armed from ares_timeout() after every call into c-ares.
 * - px_dns_resolve() answers at once, in this order, from: an IP literal, a
 *   `resolve` override, "localhost" (and *.localhost, RFC 6761), the cache.
 *   Only then does it start an ares_getaddrinfo() lookup.
 * - Concurrent lookups of the same name share one struct px_dns_pending; each
 *   caller gets a struct px_dns_query (a waiter) that px_dns_cancel() unlinks.
 *   A pending lookup is never cancelled in c-ares (ares_cancel() would hit
 *   every query): when its last waiter leaves, the answer still lands in the
 *   cache, where the next caller will probably want it.
 * - The cache is keyed by name only; the port is applied when a result is
 *   handed out. It holds up to PX_DNS_CACHE_ENTRIES names in a hash table with
 *   an LRU list; expired entries are dropped when looked up, the least
 *   recently used one when the table is full. NXDOMAIN/NODATA is cached for
 *   PX_DNS_NEG_TTL_S; timeouts and other failures are not cached.
 * - c-ares may call our completion callback synchronously from inside
 *   ares_getaddrinfo() (an /etc/hosts hit, a name it refuses, no memory). The
 *   pending lookup is then marked `starting`, and px_dns_resolve() returns
 *   the answer itself with AL_OK, so a px_dns_cb never runs before
 *   px_dns_resolve() has returned.
 * - Waiter callbacks run from inside ares_process_fd(). A callback may call
 *   px_dns_resolve(), px_dns_cancel() or even px_dns_free(); the last is
 *   deferred until ares_process_fd() returns (`depth` counts the nesting).
 */
#include "px_dns.h"

#include "common.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include <ares.h>

#define PX_DNS_CACHE_BUCKETS 2048  /* power of two, twice the entries */
#define PX_DNS_PENDING_BUCKETS 256 /* power of two */
#define PX_DNS_NAME_MAX_BYTES 253  /* longest name DNS can carry (RFC 1035) */
#define PX_DNS_TRIES 2

/* An address without a port: what the cache and overrides store. */
struct px_dns_addr {
    sa_family_t   family; /* AF_INET or AF_INET6 */
    unsigned char bytes[16];
};

struct px_dns_answer {
    enum px_dns_err    err;
    int                naddrs;
    struct px_dns_addr addrs[PX_DNS_MAX_ADDRS]; /* IPv4 first, then IPv6 */
};

struct px_dns_entry {
    struct px_dns_entry *hnext;               /* hash chain */
    struct px_dns_entry *lru_prev, *lru_next; /* lru_prev toward most recent */
    uint32_t             hash;
    ev_tstamp            expires; /* loop time */
    struct px_dns_answer ans;
    char                 name[]; /* NUL-terminated */
};

struct px_dns_query {
    struct px_dns_pending *pending;
    struct px_dns_query   *prev, *next; /* pending->waiters list */
    px_dns_cb              cb;
    void                  *arg;
    uint16_t               port;
};

struct px_dns_pending {
    struct px_dns         *dns;
    struct px_dns_pending *hnext; /* hash chain; unlinked once answered */
    struct px_dns_query   *waiters;
    uint32_t               hash;
    unsigned               starting : 1; /* inside ares_getaddrinfo() */
    unsigned               done : 1;     /* answered; ans is valid */
    struct px_dns_answer   ans;
    char                   name[];
};

struct px_dns_sock {
    struct px_dns_sock *next;
    struct px_dns      *dns;
    ares_socket_t       fd;
    ev_io               io; /* io.data = this */
};

struct px_dns_ovr {
    char              *name;
    struct px_dns_addr addr;
};

struct px_dns {
    struct ev_loop        *loop;
    ares_channel           channel;
    int                    channel_ok;
    ev_timer               timer; /* c-ares retransmits and timeouts */
    struct px_dns_sock    *socks;
    struct px_dns_ovr     *ovr;
    int                    novr;
    struct px_dns_entry   *cache[PX_DNS_CACHE_BUCKETS];
    struct px_dns_entry   *lru_head, *lru_tail; /* head = most recently used */
    unsigned               ncache;
    struct px_dns_pending *pending[PX_DNS_PENDING_BUCKETS];
    unsigned               depth;             /* nesting of ares_process_fd() */
    unsigned               closing : 1;       /* waiters are dropped, not called */
    unsigned               free_deferred : 1; /* px_dns_free() ran inside a callback */
    /* Written only on the loop thread; relaxed atomics so px_dns_get_stats()
     * may read them from the metrics thread without tearing. */
    _Atomic uint64_t queries, cache_hits, failures;
};

static pthread_once_t px_dns_lib_once = PTHREAD_ONCE_INIT;
static int            px_dns_lib_rc = ARES_ENOTINITIALIZED;
/* ares_options.lookups is a non-const char *: files (/etc/hosts), then DNS,
 * whatever nsswitch.conf says, so pinned servers are always asked. */
static char px_dns_lookups[] = "fb";

static void
px_dns_lib_init(void)
{
    /* Not thread-safe in c-ares 1.18, and workers start in parallel. */
    px_dns_lib_rc = ares_library_init(ARES_LIB_INIT_ALL);
}

static void
px_dns_stat_inc(_Atomic uint64_t *c)
{
    /* Single writer: a load and a store avoid a locked read-modify-write. */
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

static uint32_t
px_dns_hash(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */

    while (*s != '\0') {
        h ^= (unsigned char)*s++;
        h *= 16777619u;
    }
    return h;
}

/* ---- answers ------------------------------------------------------------ */

static void
px_dns_answer_add(struct px_dns_answer *a, int family, const void *bytes)
{
    if (a->naddrs >= PX_DNS_MAX_ADDRS)
        return;
    a->addrs[a->naddrs].family = (sa_family_t)family;
    memcpy(a->addrs[a->naddrs].bytes, bytes, family == AF_INET ? 4 : 16);
    a->naddrs++;
}

static void
px_dns_result_fill(const struct px_dns_answer *a, uint16_t port, struct px_dns_result *res)
{
    memset(res, 0, sizeof(*res));
    res->err = a->err;
    for (int i = 0; i < a->naddrs; i++) {
        if (a->addrs[i].family == AF_INET) {
            struct sockaddr_in *sin = (struct sockaddr_in *)&res->addrs[i];

            sin->sin_family = AF_INET;
            sin->sin_port = htons(port);
            memcpy(&sin->sin_addr, a->addrs[i].bytes, 4);
        } else {
            struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&res->addrs[i];

            sin6->sin6_family = AF_INET6;
            sin6->sin6_port = htons(port);
            memcpy(&sin6->sin6_addr, a->addrs[i].bytes, 16);
        }
    }
    res->naddrs = a->naddrs;
}

/* Fills `a` when `s` is an IPv4 or IPv6 literal; returns 1 then, else 0. */
static int
px_dns_literal(const char *s, struct px_dns_addr *a)
{
    memset(a, 0, sizeof(*a));
    if (inet_pton(AF_INET, s, a->bytes) == 1) {
        a->family = AF_INET;
        return 1;
    }
    if (inet_pton(AF_INET6, s, a->bytes) == 1) {
        a->family = AF_INET6;
        return 1;
    }
    return 0;
}

/* Collects every override for `host`, IPv4 first; returns 1 if any matched. */
static int
px_dns_override_find(const struct px_dns *d, const char *host, struct px_dns_answer *a)
{
    static const int fams[2] = {AF_INET, AF_INET6};
    int              found = 0;

    memset(a, 0, sizeof(*a));
    for (int f = 0; f < 2; f++) {
        for (int i = 0; i < d->novr; i++) {
            if (d->ovr[i].addr.family != fams[f] || strcmp(d->ovr[i].name, host) != 0)
                continue;
            px_dns_answer_add(a, fams[f], d->ovr[i].addr.bytes);
            found = 1;
        }
    }
    return found;
}

/* "localhost" and its subdomains never leave the host (RFC 6761 6.3). */
static int
px_dns_localhost(const char *host, struct px_dns_answer *a)
{
    static const char suffix[] = ".localhost";
    size_t            n = strlen(host), sn = sizeof(suffix) - 1;

    if (strcmp(host, "localhost") != 0 && (n <= sn || strcmp(host + n - sn, suffix) != 0))
        return 0;
    memset(a, 0, sizeof(*a));
    px_dns_answer_add(a, AF_INET, &(struct in_addr){htonl(INADDR_LOOPBACK)});
    px_dns_answer_add(a, AF_INET6, &in6addr_loopback);
    return 1;
}

/* Turns a c-ares answer into ours: IPv4 then IPv6, and the smallest TTL seen
 * on an address or CNAME record (a chain is only as fresh as its weakest
 * link). */
static void
px_dns_answer_from_ai(const struct ares_addrinfo *ai, struct px_dns_answer *a, int *ttl)
{
    static const int                  fams[2] = {AF_INET, AF_INET6};
    const struct ares_addrinfo_node  *n;
    const struct ares_addrinfo_cname *c;
    int                               min = PX_DNS_MAX_TTL_S;

    memset(a, 0, sizeof(*a));
    for (int f = 0; f < 2; f++) {
        for (n = ai->nodes; n != NULL; n = n->ai_next) {
            if (n->ai_family != fams[f] || n->ai_addr == NULL)
                continue;
            if (n->ai_family == AF_INET)
                px_dns_answer_add(a, AF_INET, &((struct sockaddr_in *)n->ai_addr)->sin_addr);
            else
                px_dns_answer_add(a, AF_INET6, &((struct sockaddr_in6 *)n->ai_addr)->sin6_addr);
            if (n->ai_ttl < min)
                min = n->ai_ttl;
        }
    }
    for (c = ai->cnames; c != NULL; c = c->next) {
        if (c->ttl < min)
            min = c->ttl;
    }
    a->err = a->naddrs > 0 ? PX_DNS_OK : PX_DNS_NOTFOUND;
    *ttl = min;
}

static enum px_dns_err
px_dns_err_map(int status)
{
    switch (status) {
    case ARES_SUCCESS:
        return PX_DNS_OK;
    case ARES_ENOTFOUND:
    case ARES_ENODATA:
        return PX_DNS_NOTFOUND;
    case ARES_ETIMEOUT:
        return PX_DNS_TIMEOUT;
    default:
        return PX_DNS_FAIL;
    }
}

/* ---- cache -------------------------------------------------------------- */

static void
px_dns_lru_unlink(struct px_dns *d, struct px_dns_entry *e)
{
    if (e->lru_prev != NULL)
        e->lru_prev->lru_next = e->lru_next;
    else
        d->lru_head = e->lru_next;
    if (e->lru_next != NULL)
        e->lru_next->lru_prev = e->lru_prev;
    else
        d->lru_tail = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
}

static void
px_dns_lru_push(struct px_dns *d, struct px_dns_entry *e)
{
    e->lru_prev = NULL;
    e->lru_next = d->lru_head;
    if (d->lru_head != NULL)
        d->lru_head->lru_prev = e;
    else
        d->lru_tail = e;
    d->lru_head = e;
}

static void
px_dns_cache_remove(struct px_dns *d, struct px_dns_entry *e)
{
    struct px_dns_entry **pp = &d->cache[e->hash & (PX_DNS_CACHE_BUCKETS - 1)];

    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    px_dns_lru_unlink(d, e);
    d->ncache--;
    al_free(e);
}

static struct px_dns_entry *
px_dns_cache_find(const struct px_dns *d, const char *name, uint32_t hash)
{
    struct px_dns_entry *e = d->cache[hash & (PX_DNS_CACHE_BUCKETS - 1)];

    while (e != NULL && (e->hash != hash || strcmp(e->name, name) != 0))
        e = e->hnext;
    return e;
}

/* Returns 1 with `a` filled on a live entry; an expired one is dropped. */
static int
px_dns_cache_get(struct px_dns *d, const char *name, uint32_t hash, struct px_dns_answer *a)
{
    struct px_dns_entry *e = px_dns_cache_find(d, name, hash);
    int                  hit = 0;

    if (e == NULL)
        goto out;
    if (ev_now(d->loop) >= e->expires) {
        px_dns_cache_remove(d, e);
        goto out;
    }
    px_dns_lru_unlink(d, e);
    px_dns_lru_push(d, e);
    *a = e->ans;
    hit = 1;
out:
    return hit;
}

/* Best effort: a cache that cannot grow only costs another lookup. */
static void
px_dns_cache_put(struct px_dns *d, const char *name, uint32_t hash, const struct px_dns_answer *a,
                 int ttl)
{
    struct px_dns_entry *e = px_dns_cache_find(d, name, hash);
    size_t               len = strlen(name);

    if (ttl < PX_DNS_MIN_TTL_S)
        ttl = PX_DNS_MIN_TTL_S;
    if (ttl > PX_DNS_MAX_TTL_S)
        ttl = PX_DNS_MAX_TTL_S;
    if (e == NULL) {
        if (d->ncache >= PX_DNS_CACHE_ENTRIES)
            px_dns_cache_remove(d, d->lru_tail);
        e = al_calloc(1, sizeof(*e) + len + 1);
        if (e == NULL) {
            al_log_warnx("dns: no memory to cache %s", name);
            return;
        }
        memcpy(e->name, name, len + 1);
        e->hash = hash;
        e->hnext = d->cache[hash & (PX_DNS_CACHE_BUCKETS - 1)];
        d->cache[hash & (PX_DNS_CACHE_BUCKETS - 1)] = e;
        d->ncache++;
    } else {
        px_dns_lru_unlink(d, e);
    }
    px_dns_lru_push(d, e);
    e->ans = *a;
    e->expires = ev_now(d->loop) + ttl;
}

static void
px_dns_cache_clear(struct px_dns *d)
{
    while (d->lru_head != NULL)
        px_dns_cache_remove(d, d->lru_head);
}

/* ---- pending lookups ---------------------------------------------------- */

static struct px_dns_pending *
px_dns_pending_find(const struct px_dns *d, const char *name, uint32_t hash)
{
    struct px_dns_pending *p = d->pending[hash & (PX_DNS_PENDING_BUCKETS - 1)];

    while (p != NULL && (p->hash != hash || strcmp(p->name, name) != 0))
        p = p->hnext;
    return p;
}

static void
px_dns_pending_link(struct px_dns *d, struct px_dns_pending *p)
{
    struct px_dns_pending **head = &d->pending[p->hash & (PX_DNS_PENDING_BUCKETS - 1)];

    p->hnext = *head;
    *head = p;
}

static void
px_dns_pending_unlink(struct px_dns *d, struct px_dns_pending *p)
{
    struct px_dns_pending **pp = &d->pending[p->hash & (PX_DNS_PENDING_BUCKETS - 1)];

    while (*pp != NULL && *pp != p)
        pp = &(*pp)->hnext;
    if (*pp == p)
        *pp = p->hnext;
    p->hnext = NULL;
}

static void
px_dns_waiter_link(struct px_dns_pending *p, struct px_dns_query *q)
{
    q->pending = p;
    q->prev = NULL;
    q->next = p->waiters;
    if (p->waiters != NULL)
        p->waiters->prev = q;
    p->waiters = q;
}

static void
px_dns_waiter_unlink(struct px_dns_query *q)
{
    struct px_dns_pending *p = q->pending;

    if (q->prev != NULL)
        q->prev->next = q->next;
    else
        p->waiters = q->next;
    if (q->next != NULL)
        q->next->prev = q->prev;
    q->prev = q->next = NULL;
    q->pending = NULL;
}

static void
px_dns_waiters_drop(struct px_dns_pending *p)
{
    while (p->waiters != NULL) {
        struct px_dns_query *q = p->waiters;

        px_dns_waiter_unlink(q);
        al_free(q);
    }
}

/* Hands the answer to every waiter. Each one is unlinked before its callback
 * runs, so the callback may cancel other waiters, start new lookups (the
 * cache is already filled) or free the resolver (`closing` then stops us). */
static void
px_dns_pending_deliver(struct px_dns *d, struct px_dns_pending *p)
{
    struct px_dns_result res;

    while (p->waiters != NULL && !d->closing) {
        struct px_dns_query *q = p->waiters;
        px_dns_cb            cb = q->cb;
        void                *arg = q->arg;

        px_dns_result_fill(&p->ans, q->port, &res);
        px_dns_waiter_unlink(q);
        al_free(q);
        cb(arg, &res);
    }
    px_dns_waiters_drop(p);
}

static void
px_dns_addrinfo_cb(void *arg, int status, int timeouts, struct ares_addrinfo *ai)
{
    struct px_dns_pending *p = arg;
    struct px_dns         *d = p->dns;
    int                    ttl = PX_DNS_NEG_TTL_S;

    (void)timeouts;
    px_dns_pending_unlink(d, p);
    if (d->closing || status == ARES_EDESTRUCTION) {
        px_dns_waiters_drop(p);
        if (p->starting) { /* px_dns_resolve() still holds p */
            memset(&p->ans, 0, sizeof(p->ans));
            p->ans.err = PX_DNS_FAIL;
            p->done = 1;
        } else {
            al_free(p);
        }
        goto out;
    }
    if (status == ARES_SUCCESS && ai != NULL) {
        px_dns_answer_from_ai(ai, &p->ans, &ttl);
        if (p->ans.err != PX_DNS_OK)
            ttl = PX_DNS_NEG_TTL_S;
    } else {
        memset(&p->ans, 0, sizeof(p->ans));
        p->ans.err = px_dns_err_map(status);
    }
    if (p->ans.err == PX_DNS_OK || p->ans.err == PX_DNS_NOTFOUND)
        px_dns_cache_put(d, p->name, p->hash, &p->ans, ttl);
    if (p->ans.err != PX_DNS_OK) {
        px_dns_stat_inc(&d->failures);
        al_log_debug("dns: %s: %s", p->name, ares_strerror(status));
    }
    p->done = 1;
    if (p->starting)
        goto out; /* px_dns_resolve() answers its caller and frees p */
    px_dns_pending_deliver(d, p);
    al_free(p);
out:
    if (ai != NULL)
        ares_freeaddrinfo(ai);
}

/* ---- event loop glue ---------------------------------------------------- */

static void
px_dns_timer_arm(struct px_dns *d)
{
    struct timeval tv, *tvp;

    if (d->closing || !d->channel_ok)
        return;
    ev_timer_stop(d->loop, &d->timer);
    tvp = ares_timeout(d->channel, NULL, &tv);
    if (tvp == NULL)
        return; /* nothing in flight */
    ev_timer_set(&d->timer, (ev_tstamp)tvp->tv_sec + (ev_tstamp)tvp->tv_usec / 1e6, 0.);
    ev_timer_start(d->loop, &d->timer);
}

static void px_dns_destroy(struct px_dns *d);

/* After any call into c-ares: finish a px_dns_free() made from a callback
 * once no c-ares frame is left on the stack, else re-arm the timer. */
static void
px_dns_settle(struct px_dns *d)
{
    if (d->free_deferred && d->depth == 0)
        px_dns_destroy(d);
    else
        px_dns_timer_arm(d);
}

/* Runs c-ares on `rfd`/`wfd` (ARES_SOCKET_BAD for timeouts only). */
static void
px_dns_process(struct px_dns *d, ares_socket_t rfd, ares_socket_t wfd)
{
    d->depth++;
    ares_process_fd(d->channel, rfd, wfd);
    d->depth--;
    px_dns_settle(d);
}

static void
px_dns_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct px_dns_sock *s = w->data;
    ares_socket_t       fd = s->fd; /* s may be freed while c-ares runs */

    (void)loop;
    px_dns_process(s->dns, (revents & EV_READ) ? fd : ARES_SOCKET_BAD,
                   (revents & EV_WRITE) ? fd : ARES_SOCKET_BAD);
}

static void
px_dns_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    px_dns_process(w->data, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
}

static void
px_dns_sock_state_cb(void *data, ares_socket_t fd, int readable, int writable)
{
    struct px_dns       *d = data;
    struct px_dns_sock **pp = &d->socks, *s;

    while (*pp != NULL && (*pp)->fd != fd)
        pp = &(*pp)->next;
    s = *pp;
    if (!readable && !writable) { /* c-ares is closing the socket */
        if (s != NULL) {
            ev_io_stop(d->loop, &s->io);
            *pp = s->next;
            al_free(s);
        }
        goto out;
    }
    if (s == NULL) {
        s = al_calloc(1, sizeof(*s));
        if (s == NULL) {
            /* The query on this socket will time out instead of hanging. */
            al_log_warnx("dns: no memory to watch socket %d", (int)fd);
            goto out;
        }
        s->dns = d;
        s->fd = fd;
        s->io.data = s;
        s->next = d->socks;
        d->socks = s;
        ev_init(&s->io, px_dns_io_cb);
    }
    ev_io_stop(d->loop, &s->io);
    ev_io_set(&s->io, fd, (readable ? EV_READ : 0) | (writable ? EV_WRITE : 0));
    ev_io_start(d->loop, &s->io);
out:
    return;
}

/* ---- lifecycle ---------------------------------------------------------- */

static int
px_dns_overrides_load(struct px_dns *d, const struct px_dns_conf *conf)
{
    int rc = AL_ERROR;

    if (conf->noverrides <= 0 || conf->overrides == NULL) {
        rc = AL_OK;
        goto out;
    }
    d->ovr = al_calloc((size_t)conf->noverrides, sizeof(*d->ovr));
    if (d->ovr == NULL)
        goto out;
    for (int i = 0; i < conf->noverrides; i++) {
        const struct px_dns_override *o = &conf->overrides[i];

        if (o->name == NULL || o->addr == NULL || !px_dns_literal(o->addr, &d->ovr[i].addr)) {
            al_log_err("dns: resolve override %s: \"%s\" is not an IP address",
                       o->name != NULL ? o->name : "(null)", o->addr != NULL ? o->addr : "");
            goto out;
        }
        d->ovr[i].name = al_strdup(o->name);
        if (d->ovr[i].name == NULL)
            goto out;
        d->novr = i + 1;
    }
    rc = AL_OK;
out:
    return rc; /* on failure px_dns_destroy() frees what was copied */
}

static int
px_dns_servers_set(struct px_dns *d, const struct px_dns_conf *conf)
{
    struct al_dbuf csv;
    int            rc = AL_ERROR, arc;

    al_dbuf_init(&csv, 64 * 1024);
    if (conf->servers == NULL)
        goto fail;
    for (int i = 0; i < conf->nservers; i++) {
        const char *s = conf->servers[i];

        /* One entry is one server: a comma inside would silently add more. */
        if (s == NULL || *s == '\0' || strchr(s, ',') != NULL) {
            al_log_err("dns: bad server \"%s\"", s != NULL ? s : "");
            goto fail;
        }
        if ((i > 0 && al_dbuf_adds(&csv, ",") != AL_OK) || al_dbuf_adds(&csv, s) != AL_OK)
            goto fail;
    }
    arc = ares_set_servers_ports_csv(d->channel, csv.data);
    if (arc != ARES_SUCCESS) {
        al_log_err("dns: servers \"%s\": %s", csv.data, ares_strerror(arc));
        goto fail;
    }
    rc = AL_OK;
fail:
    al_dbuf_free(&csv);
    return rc;
}

struct px_dns *
px_dns_new(struct ev_loop *loop, const struct px_dns_conf *conf)
{
    static const struct px_dns_conf none = {0};
    struct px_dns                  *d = NULL;
    struct ares_options             opts;
    int                             timeout_ms, rc;

    if (conf == NULL)
        conf = &none;
    pthread_once(&px_dns_lib_once, px_dns_lib_init);
    if (px_dns_lib_rc != ARES_SUCCESS) {
        al_log_err("dns: ares_library_init: %s", ares_strerror(px_dns_lib_rc));
        goto fail;
    }
    d = al_calloc(1, sizeof(*d));
    if (d == NULL)
        goto fail;
    d->loop = loop;
    ev_init(&d->timer, px_dns_timer_cb);
    d->timer.data = d;
    if (px_dns_overrides_load(d, conf) != AL_OK)
        goto fail;

    /* c-ares doubles the timeout on each round through the servers, so with
     * two tries the first gets a third of the budget and the retry the rest. */
    timeout_ms = conf->timeout_ms > 0 ? conf->timeout_ms : PX_DNS_TIMEOUT_MS;
    memset(&opts, 0, sizeof(opts));
    opts.sock_state_cb = px_dns_sock_state_cb;
    opts.sock_state_cb_data = d;
    opts.timeout = timeout_ms / 3 > 0 ? timeout_ms / 3 : 1;
    opts.tries = PX_DNS_TRIES;
    opts.lookups = px_dns_lookups;
    rc = ares_init_options(&d->channel, &opts,
                           ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES |
                               ARES_OPT_LOOKUPS);
    if (rc != ARES_SUCCESS) {
        al_log_err("dns: ares_init_options: %s", ares_strerror(rc));
        goto fail;
    }
    d->channel_ok = 1;
    /* Never fall back to resolv.conf when pinned servers are unusable. */
    if (conf->nservers > 0 && px_dns_servers_set(d, conf) != AL_OK)
        goto fail;
    return d;
fail:
    px_dns_destroy(d);
    return NULL;
}

static void
px_dns_destroy(struct px_dns *d)
{
    if (d == NULL)
        return;
    d->closing = 1;
    for (int i = 0; i < PX_DNS_PENDING_BUCKETS; i++) {
        for (struct px_dns_pending *p = d->pending[i]; p != NULL; p = p->hnext)
            px_dns_waiters_drop(p);
    }
    /* Completes every lookup with ARES_EDESTRUCTION (px_dns_addrinfo_cb frees
     * the pending state) and closes the sockets through sock_state_cb. */
    if (d->channel_ok)
        ares_destroy(d->channel);
    d->channel_ok = 0;
    for (int i = 0; i < PX_DNS_PENDING_BUCKETS; i++) {
        while (d->pending[i] != NULL) { /* not expected; c-ares answered all */
            struct px_dns_pending *p = d->pending[i];

            d->pending[i] = p->hnext;
            al_free(p);
        }
    }
    while (d->socks != NULL) {
        struct px_dns_sock *s = d->socks;

        ev_io_stop(d->loop, &s->io);
        d->socks = s->next;
        al_free(s);
    }
    ev_timer_stop(d->loop, &d->timer);
    px_dns_cache_clear(d);
    for (int i = 0; i < d->novr; i++)
        al_free(d->ovr[i].name);
    al_free(d->ovr);
    al_free(d);
}

void
px_dns_free(struct px_dns *d)
{
    if (d == NULL)
        return;
    if (d->depth > 0) {
        /* Inside ares_process_fd(): destroying the channel now would pull it
         * out from under c-ares. Silence every waiter and finish later. */
        d->closing = 1;
        d->free_deferred = 1;
        for (int i = 0; i < PX_DNS_PENDING_BUCKETS; i++) {
            for (struct px_dns_pending *p = d->pending[i]; p != NULL; p = p->hnext)
                px_dns_waiters_drop(p);
        }
        return;
    }
    px_dns_destroy(d);
}

/* ---- public API ----------------------------------------------------------- */

/* Starts the c-ares lookup for `host`. Returns the pending lookup, already
 * answered (done) if c-ares called back synchronously, or NULL without
 * memory. c-ares may run other callbacks in here too, so the caller checks
 * for a px_dns_free() made from one of them. */
static struct px_dns_pending *
px_dns_lookup_start(struct px_dns *d, const char *host, size_t len, uint32_t hash)
{
    struct ares_addrinfo_hints hints;
    struct px_dns_pending     *p;

    p = al_calloc(1, sizeof(*p) + len + 1);
    if (p == NULL)
        goto out;
    p->dns = d;
    p->hash = hash;
    memcpy(p->name, host, len + 1);
    px_dns_pending_link(d, p);
    px_dns_stat_inc(&d->queries);
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC; /* A and AAAA in parallel */
    /* We put IPv4 first ourselves; RFC 6724 sorting would connect() a probe
     * socket per address for nothing. */
    hints.ai_flags = ARES_AI_NOSORT;
    p->starting = 1;
    d->depth++;
    ares_getaddrinfo(d->channel, p->name, NULL, &hints, px_dns_addrinfo_cb, p);
    d->depth--;
    p->starting = 0;
out:
    return p;
}

int
px_dns_resolve(struct px_dns *d, const char *host, uint16_t port, px_dns_cb cb, void *arg,
               struct px_dns_result *res, struct px_dns_query **q)
{
    struct px_dns_answer   ans;
    struct px_dns_pending *p = NULL;
    struct px_dns_query   *w = NULL;
    uint32_t               hash;
    size_t                 len;
    int                    rc = AL_ERROR, closing;

    if (q != NULL)
        *q = NULL;
    if (d == NULL || host == NULL || cb == NULL || res == NULL || q == NULL || d->closing)
        goto out;
    memset(&ans, 0, sizeof(ans));
    len = strlen(host);
    if (len == 0 || len > PX_DNS_NAME_MAX_BYTES) {
        ans.err = PX_DNS_FAIL;
        goto answer;
    }
    if (px_dns_literal(host, &ans.addrs[0])) {
        ans.naddrs = 1;
        goto answer;
    }
    if (px_dns_override_find(d, host, &ans) || px_dns_localhost(host, &ans))
        goto answer;
    hash = px_dns_hash(host);
    if (px_dns_cache_get(d, host, hash, &ans)) {
        px_dns_stat_inc(&d->cache_hits);
        goto answer;
    }

    w = al_calloc(1, sizeof(*w));
    if (w == NULL)
        goto out;
    w->cb = cb;
    w->arg = arg;
    w->port = port;
    p = px_dns_pending_find(d, host, hash); /* coalesce onto a lookup in flight */
    if (p == NULL) {
        p = px_dns_lookup_start(d, host, len, hash);
        if (p == NULL)
            goto out;
        if (p->done) { /* answered synchronously: hosts file, bad name, ... */
            ans = p->ans;
            al_safefree(p); /* already unlinked by px_dns_addrinfo_cb */
        }
        closing = d->closing;
        px_dns_settle(d); /* may free d */
        if (p == NULL)
            goto answer;
        if (closing)
            goto out; /* px_dns_free() ran from a callback in c-ares */
    }
    px_dns_waiter_link(p, w);
    *q = w;
    w = NULL;
    rc = AL_AGAIN;
    goto out;

answer:
    px_dns_result_fill(&ans, port, res);
    rc = AL_OK;
out:
    al_free(w);
    return rc;
}

void
px_dns_cancel(struct px_dns_query *q)
{
    if (q == NULL)
        return;
    /* The lookup itself goes on for the other waiters and the cache. */
    px_dns_waiter_unlink(q);
    al_free(q);
}

void
px_dns_get_stats(const struct px_dns *d, struct px_dns_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (d == NULL)
        return;
    out->queries = atomic_load_explicit(&d->queries, memory_order_relaxed);
    out->cache_hits = atomic_load_explicit(&d->cache_hits, memory_order_relaxed);
    out->failures = atomic_load_explicit(&d->failures, memory_order_relaxed);
}
