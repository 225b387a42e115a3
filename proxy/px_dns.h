/*
 * px_dns.h - asynchronous name resolution for one worker loop.
 *
 * One struct px_dns per worker thread: a c-ares channel driven by the
 * worker's ev_loop (ev_io per c-ares socket + one ev_timer), a small TTL
 * cache, and the config's `resolve` overrides. Nothing here blocks.
 */
#ifndef PX_DNS_H
#define PX_DNS_H

#include <stdint.h>
#include <sys/socket.h>

#include <ev.h>

#define PX_DNS_MAX_ADDRS 8
#define PX_DNS_CACHE_ENTRIES 1024
#define PX_DNS_MIN_TTL_S 1
#define PX_DNS_MAX_TTL_S 300
#define PX_DNS_NEG_TTL_S 5
#define PX_DNS_TIMEOUT_MS 5000

enum px_dns_err {
    PX_DNS_OK = 0,
    PX_DNS_NOTFOUND, /* NXDOMAIN or no A/AAAA records */
    PX_DNS_TIMEOUT,  /* servers did not answer */
    PX_DNS_FAIL,     /* anything else (SERVFAIL, refused, no memory, cancelled) */
};

struct px_dns_result {
    enum px_dns_err         err;
    int                     naddrs;
    struct sockaddr_storage addrs[PX_DNS_MAX_ADDRS]; /* sin_port/sin6_port set to the query port */
};

/* One `resolve` override: name (lowercase, no trailing dot) -> literal address. */
struct px_dns_override {
    const char *name;
    const char *addr; /* IPv4 or IPv6 literal */
};

struct px_dns_conf {
    const struct px_dns_override *overrides;
    int                           noverrides;
    /* Budget for one lookup against one server: the first try gets a third of
     * it and the retry (c-ares doubles it) the rest. With n servers a dead set
     * fails after about n * timeout_ms. 0 = PX_DNS_TIMEOUT_MS. */
    int timeout_ms;
    /* Optional resolvers, "ip", "ip:port" or "[v6]:port" (loopback stubs in
     * tests, pinned resolvers in production). None: /etc/resolv.conf. */
    const char *const *servers;
    int                nservers;
};

struct px_dns;
struct px_dns_query;

/* Called exactly once per pending query (never after px_dns_cancel). */
typedef void (*px_dns_cb)(void *arg, const struct px_dns_result *res);

/* Creates the resolver for `loop`. Copies what it needs from conf.
 * Returns NULL on failure (logged). */
struct px_dns *px_dns_new(struct ev_loop *loop, const struct px_dns_conf *conf);
/* NULL-safe; cancels pending queries silently. May be called from inside a
 * px_dns_cb: the channel is then torn down when c-ares returns. Every
 * struct px_dns_query handle dies with it: do not px_dns_cancel() after. */
void px_dns_free(struct px_dns *d);

/*
 * Resolves `host` (already normalised: lowercase, punycode, no trailing dot;
 * may be an IPv4/IPv6 literal without brackets) for `port`, A and AAAA.
 * - Returns AL_OK with *res filled when the answer is known now (literal,
 *   override, cache hit, cached negative answer); cb is not called.
 * - Returns AL_AGAIN with *q set when a query is pending; cb(arg, res) runs
 *   later on the loop thread.
 * - Returns AL_ERROR on local failure (no memory) or a NULL argument.
 * *q is NULL unless AL_AGAIN is returned. A name longer than 253 bytes or
 * one c-ares rejects is answered at once with PX_DNS_FAIL.
 * IPv4 answers come first in res->addrs, then IPv6.
 * The handle in *q stays valid until cb runs or px_dns_cancel(*q).
 */
int  px_dns_resolve(struct px_dns *d, const char *host, uint16_t port, px_dns_cb cb, void *arg,
                    struct px_dns_result *res, struct px_dns_query **q);
void px_dns_cancel(struct px_dns_query *q); /* NULL-safe; cb will not be called */

/* Counters for /metrics (read from any thread; approximate).
 * queries:    lookups sent to c-ares (coalesced waiters share one)
 * cache_hits: answers served from the cache, positive or negative
 * failures:   lookups that ended in NOTFOUND, TIMEOUT or FAIL */
struct px_dns_stats {
    uint64_t queries, cache_hits, failures;
};
void px_dns_get_stats(const struct px_dns *d, struct px_dns_stats *out);

#endif
