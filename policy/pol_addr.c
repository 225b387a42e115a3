/*
 * pol_addr.c - the address guard: SSRF classes, CIDR lists, IP literals and
 * pol_filter_addrs().
 *
 * Classification is a fixed table walk, most specific entry first (the
 * metadata endpoints sit inside link-local, CGNAT, ULA and even public
 * space). IPv6 forms that carry an IPv4 address - mapped ::ffff:0:0/96,
 * compatible ::/96, translated ::ffff:0:0:0/96, NAT64 64:ff9b::/96 and the
 * local-use 64:ff9b:1::/48, 6to4 2002::/16, Teredo 2001::/32 (server and
 * bit-inverted client address) - are judged by the embedded address: the
 * first non-public verdict among the candidates wins.
 *
 * CIDRs match by family only: "::ffff:0:0/96" is an IPv6 range and never
 * matches an IPv4 address (smokescreen PR #289). Nothing here allocates.
 */
#include "pol_int.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

struct pol_range {
    uint8_t             a[16];
    int                 prefix;
    enum pol_addr_class cls;
};

#define V4(a, b, c, d)                                                                             \
    {                                                                                              \
        a, b, c, d                                                                                 \
    }

/* Most specific first; first hit wins. */
static const struct pol_range pol_v4_ranges[] = {
    {V4(169, 254, 169, 254), 32, POL_ADDR_METADATA}, /* AWS, GCP, Azure, OCI IMDS */
    {V4(169, 254, 170, 2), 32, POL_ADDR_METADATA},   /* AWS ECS task metadata */
    {V4(100, 100, 100, 200), 32, POL_ADDR_METADATA}, /* Alibaba Cloud */
    {V4(168, 63, 129, 16), 32, POL_ADDR_METADATA},   /* Azure wireserver */
    {V4(192, 0, 0, 192), 32, POL_ADDR_METADATA},     /* Oracle Cloud */
    {V4(0, 0, 0, 0), 32, POL_ADDR_UNSPECIFIED},
    {V4(255, 255, 255, 255), 32, POL_ADDR_BROADCAST},
    {V4(0, 0, 0, 0), 8, POL_ADDR_RESERVED}, /* "this network" */
    {V4(10, 0, 0, 0), 8, POL_ADDR_PRIVATE},
    {V4(100, 64, 0, 0), 10, POL_ADDR_CGNAT},
    {V4(127, 0, 0, 0), 8, POL_ADDR_LOOPBACK},
    {V4(169, 254, 0, 0), 16, POL_ADDR_LINK_LOCAL},
    {V4(172, 16, 0, 0), 12, POL_ADDR_PRIVATE},
    {V4(192, 0, 0, 0), 24, POL_ADDR_RESERVED}, /* IETF protocol assignments */
    {V4(192, 0, 2, 0), 24, POL_ADDR_DOCUMENTATION},
    {V4(192, 88, 99, 0), 24, POL_ADDR_RESERVED}, /* 6to4 relay anycast */
    {V4(192, 168, 0, 0), 16, POL_ADDR_PRIVATE},
    {V4(198, 18, 0, 0), 15, POL_ADDR_BENCHMARKING},
    {V4(198, 51, 100, 0), 24, POL_ADDR_DOCUMENTATION},
    {V4(203, 0, 113, 0), 24, POL_ADDR_DOCUMENTATION},
    {V4(224, 0, 0, 0), 4, POL_ADDR_MULTICAST},
    {V4(240, 0, 0, 0), 4, POL_ADDR_RESERVED},
};

/* Plain IPv6 ranges; the IPv4-embedding ones are handled in code first. */
static const struct pol_range pol_v6_ranges[] = {
    {{0xfd, 0x00, 0x0e, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x54},
     128,
     POL_ADDR_METADATA}, /* fd00:ec2::254 AWS */
    {{0xfd, 0x20, 0x00, 0xce, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x54},
     128,
     POL_ADDR_METADATA}, /* fd20:ce::254 GCP */
    {{0xfd, 0x00, 0x00, 0xc1, 0, 0, 0, 0, 0, 0, 0, 0, 0xa9, 0xfe, 0xa9, 0xfe},
     128,
     POL_ADDR_METADATA}, /* fd00:c1::a9fe:a9fe OCI */
    {{0xfd, 0x00, 0x00, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x42},
     128,
     POL_ADDR_METADATA}, /* fd00:42::42 */
    {{0}, 128, POL_ADDR_UNSPECIFIED},
    {{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, 128, POL_ADDR_LOOPBACK},
    {{0x01, 0x00, 0, 0, 0, 0, 0, 0}, 64, POL_ADDR_RESERVED},           /* 100::/64 discard */
    {{0x20, 0x01, 0x00, 0x02, 0x00, 0x00}, 48, POL_ADDR_BENCHMARKING}, /* 2001:2::/48 */
    {{0x20, 0x01, 0x0d, 0xb8}, 32, POL_ADDR_DOCUMENTATION},            /* 2001:db8::/32 */
    {{0x3f, 0xff, 0x00, 0x00}, 20, POL_ADDR_DOCUMENTATION},            /* 3fff::/20 */
    {{0x20, 0x01, 0x00, 0x00}, 23, POL_ADDR_RESERVED},                 /* IETF protocol */
    {{0x5f, 0x00}, 16, POL_ADDR_RESERVED},                             /* SRv6 SIDs */
    {{0xfe, 0x80}, 10, POL_ADDR_LINK_LOCAL},
    {{0xfe, 0xc0}, 10, POL_ADDR_PRIVATE}, /* deprecated site-local */
    {{0xfc, 0x00}, 7, POL_ADDR_ULA},
    {{0xff, 0x00}, 8, POL_ADDR_MULTICAST},
};

static int
pol_prefix_eq(const uint8_t *a, const uint8_t *b, int prefix)
{
    int full = prefix / 8, rem = prefix % 8;

    if (memcmp(a, b, (size_t)full) != 0)
        return 0;
    if (rem == 0)
        return 1;
    return ((a[full] ^ b[full]) & (uint8_t)(0xff << (8 - rem))) == 0;
}

/* Word compares, not pol_prefix_eq's memcmp: this runs for every address
 * the guard checks (and for every row `policy replay` re-checks). */
static enum pol_addr_class
pol_addr_classify_v4(const uint8_t *a)
{
    uint32_t x = (uint32_t)a[0] << 24 | (uint32_t)a[1] << 16 | (uint32_t)a[2] << 8 | a[3];

    for (size_t i = 0; i < sizeof(pol_v4_ranges) / sizeof(pol_v4_ranges[0]); i++) {
        const uint8_t *r = pol_v4_ranges[i].a;
        uint32_t       y = (uint32_t)r[0] << 24 | (uint32_t)r[1] << 16 | (uint32_t)r[2] << 8 | r[3];
        int            p = pol_v4_ranges[i].prefix;
        uint32_t       m = p == 0 ? 0 : 0xffffffffu << (32 - p);

        if (((x ^ y) & m) == 0)
            return pol_v4_ranges[i].cls;
    }
    return POL_ADDR_PUBLIC;
}

static int
pol_zero(const uint8_t *a, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (a[i] != 0)
            return 0;
    }
    return 1;
}

static int pol_v6_embedded_v4(const uint8_t *a, uint8_t out[3][4]);

static enum pol_addr_class
pol_addr_classify_v6(const uint8_t *a)
{
    uint8_t emb[3][4];
    int     nemb;

    for (size_t i = 0; i < sizeof(pol_v6_ranges) / sizeof(pol_v6_ranges[0]); i++) {
        if (pol_v6_ranges[i].prefix == 128 && pol_prefix_eq(a, pol_v6_ranges[i].a, 128))
            return pol_v6_ranges[i].cls; /* exact entries: metadata, ::, ::1 */
    }
    /* IPv4-carrying forms: the first non-public embedded verdict wins */
    nemb = pol_v6_embedded_v4(a, emb);
    if (nemb > 0) {
        for (int k = 0; k < nemb; k++) {
            enum pol_addr_class c = pol_addr_classify_v4(emb[k]);

            if (c != POL_ADDR_PUBLIC)
                return c;
        }
        return POL_ADDR_PUBLIC;
    }
    for (size_t i = 0; i < sizeof(pol_v6_ranges) / sizeof(pol_v6_ranges[0]); i++) {
        if (pol_prefix_eq(a, pol_v6_ranges[i].a, pol_v6_ranges[i].prefix))
            return pol_v6_ranges[i].cls;
    }
    return POL_ADDR_PUBLIC;
}

enum pol_addr_class
pol_addr_classify(const struct sockaddr *sa)
{
    if (sa == NULL)
        return POL_ADDR_INVALID;
    if (sa->sa_family == AF_INET)
        return pol_addr_classify_v4(
            (const uint8_t *)&((const struct sockaddr_in *)(const void *)sa)->sin_addr);
    if (sa->sa_family == AF_INET6)
        return pol_addr_classify_v6(
            ((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr.s6_addr);
    return POL_ADDR_INVALID;
}

const char *
pol_addr_class_name(enum pol_addr_class c)
{
    switch (c) {
    case POL_ADDR_PUBLIC:
        return "public";
    case POL_ADDR_LOOPBACK:
        return "loopback";
    case POL_ADDR_PRIVATE:
        return "private";
    case POL_ADDR_CGNAT:
        return "cgnat";
    case POL_ADDR_LINK_LOCAL:
        return "link_local";
    case POL_ADDR_METADATA:
        return "metadata";
    case POL_ADDR_MULTICAST:
        return "multicast";
    case POL_ADDR_BROADCAST:
        return "broadcast";
    case POL_ADDR_UNSPECIFIED:
        return "unspecified";
    case POL_ADDR_ULA:
        return "ula";
    case POL_ADDR_DOCUMENTATION:
        return "documentation";
    case POL_ADDR_BENCHMARKING:
        return "benchmarking";
    case POL_ADDR_RESERVED:
        return "reserved";
    case POL_ADDR_INVALID:
        break;
    }
    return "invalid";
}

int
pol_addr_parse_literal(const char *s, size_t len, struct sockaddr_storage *out)
{
    char buf[INET6_ADDRSTRLEN + 8];

    memset(out, 0, sizeof(*out));
    if (len >= 2 && s[0] == '[' && s[len - 1] == ']') {
        s++;
        len -= 2;
    } else if (len == 0 || memchr(s, ':', len) == NULL) {
        struct in_addr a4;

        if (len == 0 || len >= sizeof(buf))
            return AL_DECLINED;
        memcpy(buf, s, len);
        buf[len] = '\0';
        /* inet_aton stops at NUL or any whitespace and ignores what follows;
         * only the characters of a numeric literal may be there at all. */
        if (strspn(buf, "0123456789abcdefABCDEFxX.") != len || inet_aton(buf, &a4) == 0)
            return AL_DECLINED;
        ((struct sockaddr_in *)out)->sin_family = AF_INET;
        ((struct sockaddr_in *)out)->sin_addr = a4;
        return AL_OK;
    }
    if (len == 0 || len >= sizeof(buf) || memchr(s, '%', len) != NULL)
        return AL_DECLINED;
    memcpy(buf, s, len);
    buf[len] = '\0';
    /* inet_pton reads up to a NUL; nothing but literal characters may follow. */
    if (strspn(buf, "0123456789abcdefABCDEF:.") != len ||
        inet_pton(AF_INET6, buf, &((struct sockaddr_in6 *)out)->sin6_addr) != 1)
        return AL_DECLINED;
    ((struct sockaddr_in6 *)out)->sin6_family = AF_INET6;
    return AL_OK;
}

/* ---- CIDRs ------------------------------------------------------------------- */

int
pol_cidr_parse(const char *s, struct pol_cidr *out)
{
    char            buf[INET6_ADDRSTRLEN + 8];
    const char     *slash = strchr(s, '/');
    size_t          alen = slash ? (size_t)(slash - s) : strlen(s);
    long            pfx;
    int             max;
    struct pol_cidr c;

    memset(&c, 0, sizeof(c));
    if (alen == 0 || alen >= sizeof(buf))
        return AL_ERROR;
    memcpy(buf, s, alen);
    buf[alen] = '\0';
    if (inet_pton(AF_INET, buf, c.addr) == 1) {
        c.family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, buf, c.addr) == 1) {
        c.family = AF_INET6;
        max = 128;
    } else {
        return AL_ERROR;
    }
    if (slash == NULL)
        pfx = max;
    else if (slash[1] == '0' && slash[2] != '\0')
        return AL_ERROR; /* "/024" */
    else if (al_parse_long(slash + 1, 0, max, &pfx) != AL_OK)
        return AL_ERROR;
    c.prefix = (int)pfx;
    for (int bit = c.prefix; bit < max; bit++) {
        if (c.addr[bit / 8] & (0x80 >> (bit % 8)))
            return AL_ERROR; /* host bits set */
    }
    *out = c;
    return AL_OK;
}

int
pol_cidr_contains(const struct pol_cidr *c, const struct sockaddr *sa)
{
    const uint8_t *a;

    if (sa->sa_family != c->family)
        return 0;
    if (sa->sa_family == AF_INET)
        a = (const uint8_t *)&((const struct sockaddr_in *)(const void *)sa)->sin_addr;
    else
        a = ((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr.s6_addr;
    return pol_prefix_eq(a, c->addr, c->prefix);
}

int
pol_cidr_list_match(const struct pol_cidr *list, int n, const struct sockaddr *sa)
{
    for (int i = 0; i < n; i++) {
        if (pol_cidr_contains(&list[i], sa))
            return 1;
    }
    return 0;
}

/* ---- the guard -------------------------------------------------------------- */

static uint16_t
pol_sa_port(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)(const void *)sa)->sin_port);
    if (sa->sa_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)(const void *)sa)->sin6_port);
    return 0;
}

/* Address bytes as IPv4 when a is IPv4 or IPv4-mapped IPv6. */
static int
pol_sa_bytes(const struct sockaddr *sa, uint8_t out[16], int *family)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

    if (sa->sa_family == AF_INET) {
        memcpy(out, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
        *family = AF_INET;
        return 1;
    }
    if (sa->sa_family == AF_INET6) {
        const uint8_t *a = ((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr.s6_addr;

        if (memcmp(a, mapped, 12) == 0) {
            memcpy(out, a + 12, 4);
            *family = AF_INET;
        } else {
            memcpy(out, a, 16);
            *family = AF_INET6;
        }
        return 1;
    }
    return 0;
}

/*
 * The IPv4 addresses an IPv6 address carries (mapped, compatible,
 * translated, NAT64 in both local-use layouts, 6to4, Teredo server and
 * client), in the order the classifier judges them; at most 3. A packet to
 * such a form can reach the embedded IPv4 host through a translator or
 * relay, so the classifier and the self check both look at them. The
 * local-use NAT64 prefix length is unknown: both the /96 and the /48 layout
 * (a[8] is the RFC 6052 "u" octet) are candidates.
 */
static int
pol_v6_embedded_v4(const uint8_t *a, uint8_t out[3][4])
{
    static const uint8_t nat64[12] = {0x00, 0x64, 0xff, 0x9b};
    static const uint8_t nat64_local[6] = {0x00, 0x64, 0xff, 0x9b, 0x00, 0x01};
    int                  n = 0;

    if ((pol_zero(a, 10) && a[10] == 0xff && a[11] == 0xff) || pol_zero(a, 12) ||
        (pol_zero(a, 8) && a[8] == 0xff && a[9] == 0xff && a[10] == 0 && a[11] == 0) ||
        memcmp(a, nat64, 12) == 0) {
        memcpy(out[n++], a + 12, 4);
    } else if (memcmp(a, nat64_local, 6) == 0) {
        memcpy(out[n++], a + 12, 4);
        out[n][0] = a[6];
        out[n][1] = a[7];
        out[n][2] = a[9];
        out[n][3] = a[10];
        n++;
    } else if (a[0] == 0x20 && a[1] == 0x02) {
        memcpy(out[n++], a + 2, 4);
    } else if (a[0] == 0x20 && a[1] == 0x01 && a[2] == 0 && a[3] == 0) {
        for (int i = 0; i < 4; i++)
            out[n][i] = (uint8_t)~a[12 + i];
        n++;
        memcpy(out[n++], a + 4, 4);
    }
    return n;
}

/* Does one address (IPv4 as 4 bytes, IPv6 as 16; ports ignored) equal `sa`
 * or, for IPv6 `sa`, one of the IPv4 addresses it embeds? */
static int
pol_sa_same_host(const uint8_t *a, int fa, const uint8_t emb[3][4], int nemb,
                 const struct sockaddr *s)
{
    uint8_t b[16];
    int     fb;

    if (!pol_sa_bytes(s, b, &fb))
        return 0;
    if (fa == fb && memcmp(a, b, fa == AF_INET ? 4 : 16) == 0)
        return 1;
    for (int k = 0; fb == AF_INET && k < nemb; k++) {
        if (memcmp(emb[k], b, 4) == 0)
            return 1;
    }
    return 0;
}

int
pol_addr_is_self(const struct sockaddr *sa, const struct pol_self *self)
{
    uint8_t             a[16], b[16], emb[3][4];
    int                 fa, fb, nemb = 0;
    uint16_t            pa;
    enum pol_addr_class cls;

    if (self == NULL || !pol_sa_bytes(sa, a, &fa))
        return 0;
    pa = pol_sa_port(sa);
    cls = POL_ADDR_INVALID; /* classified when a wildcard listener needs it */
    if (fa == AF_INET6)
        nemb = pol_v6_embedded_v4(a, emb);
    for (int i = 0; i < self->nlisten; i++) {
        const struct sockaddr *s = (const struct sockaddr *)&self->listen[i];
        uint16_t               ps = pol_sa_port(s);

        if (!pol_sa_bytes(s, b, &fb))
            continue;
        if (ps != 0 && pa != 0 && ps != pa)
            continue;
        if (!pol_zero(b, fb == AF_INET ? 4 : 16)) {
            /* bound to one address: that address (in any spelling) only */
            if (pol_sa_same_host(a, fa, emb, nemb, s))
                return 1;
            continue;
        }
        /* A wildcard listener answers on every address of the host, on its
         * port: any non-public address (loopback and the like are ours even
         * when the interface list is unknown), and every interface address,
         * public ones included. Either family: [::] is usually dual-stack. */
        if (ps == 0)
            continue;
        if (cls == POL_ADDR_INVALID)
            cls = pol_addr_classify(sa);
        if (cls != POL_ADDR_PUBLIC)
            return 1;
        for (int k = 0; k < self->nhost; k++) {
            if (pol_sa_same_host(a, fa, emb, nemb, (const struct sockaddr *)&self->host[k]))
                return 1;
        }
    }
    return 0;
}

int
pol_filter_addrs(const struct pol_policy *p, struct pol_decision *d, struct sockaddr_storage *addrs,
                 int naddrs, const struct sockaddr_storage *self_addrs, int nself)
{
    struct pol_self self = {self_addrs, nself, NULL, 0};

    return pol_filter_addrs_self(p, d, addrs, naddrs, &self);
}

int
pol_filter_addrs_self(const struct pol_policy *p, struct pol_decision *d,
                      struct sockaddr_storage *addrs, int naddrs, const struct pol_self *self)
{
    const struct pol_rule *r = d->rule_ref;
    int                    kept = 0;

    if (d->verdict == POL_DENY)
        return 0;
    for (int i = 0; i < naddrs; i++) {
        const struct sockaddr *sa = (const struct sockaddr *)&addrs[i];
        enum pol_addr_class    cls = pol_addr_classify(sa);
        int                    ok;

        if (cls == POL_ADDR_INVALID)
            continue;
        /* before any exemption: no rule's cidrs and no allow_addresses
         * entry makes airlock's own listeners a destination */
        if (pol_addr_is_self(sa, self))
            continue;
        ok = cls == POL_ADDR_PUBLIC;
        if (!ok && r != NULL && r->action == POL_ACT_ALLOW)
            ok = pol_cidr_list_match(r->cidrs, r->ncidrs, sa);
        if (!ok && p != NULL)
            ok = pol_cidr_list_match(p->allow_addrs, p->nallow_addrs, sa);
        if (!ok)
            continue;
        if (kept != i)
            addrs[kept] = addrs[i];
        kept++;
    }
    if (kept == 0) {
        if (naddrs > 0)
            d->refused_addr = addrs[0]; /* untouched: nothing was kept */
        d->verdict = POL_DENY;
        d->reason = "address_not_allowed";
        d->intercept = 0;
        d->inject = NULL;
        d->ninject = 0;
    }
    return kept;
}
