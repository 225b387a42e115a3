/*
 * test_pol_addr.c - the address guard: every ANCHORS section 4 SSRF vector
 * through pol_addr_classify (denied classes and the public controls), IP
 * literal spellings, CIDR parsing by family, and pol_filter_addrs with rule
 * cidrs, allow_addresses, mixed answer sets, dry-run and the self-address
 * loop guard (listening addresses, and every host address on a wildcard
 * listener's port).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "policy/pol_int.h"

static struct sockaddr_storage
pol_t_sa(const char *s, uint16_t port)
{
    struct sockaddr_storage ss;

    memset(&ss, 0, sizeof(ss));
    if (inet_pton(AF_INET, s, &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
        ((struct sockaddr_in *)&ss)->sin_family = AF_INET;
        ((struct sockaddr_in *)&ss)->sin_port = htons(port);
    } else if (inet_pton(AF_INET6, s, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
        ((struct sockaddr_in6 *)&ss)->sin6_family = AF_INET6;
        ((struct sockaddr_in6 *)&ss)->sin6_port = htons(port);
    } else {
        fail_msg("bad test address %s", s);
    }
    return ss;
}

struct pol_t_cls {
    const char         *addr;
    enum pol_addr_class cls;
};

static const struct pol_t_cls pol_t_vectors[] = {
    /* ANCHORS 4: deny */
    {"127.0.0.1", POL_ADDR_LOOPBACK},
    {"127.255.255.255", POL_ADDR_LOOPBACK},
    {"::1", POL_ADDR_LOOPBACK},
    {"0.0.0.0", POL_ADDR_UNSPECIFIED},
    {"0.1.2.3", POL_ADDR_RESERVED},
    {"0.255.255.255", POL_ADDR_RESERVED},
    {"::", POL_ADDR_UNSPECIFIED},
    {"10.0.0.1", POL_ADDR_PRIVATE},
    {"10.255.255.255", POL_ADDR_PRIVATE},
    {"172.16.0.1", POL_ADDR_PRIVATE},
    {"172.31.255.255", POL_ADDR_PRIVATE},
    {"192.168.0.1", POL_ADDR_PRIVATE},
    {"100.64.0.1", POL_ADDR_CGNAT},
    {"100.127.255.254", POL_ADDR_CGNAT},
    {"169.254.169.254", POL_ADDR_METADATA},
    {"169.254.0.1", POL_ADDR_LINK_LOCAL},
    {"255.255.255.255", POL_ADDR_BROADCAST},
    {"ff02::2", POL_ADDR_MULTICAST},
    {"fe80::1", POL_ADDR_LINK_LOCAL},
    {"fc00::1", POL_ADDR_ULA},
    {"fdff:ffff:ffff::1", POL_ADDR_ULA},
    {"224.0.0.1", POL_ADDR_MULTICAST},
    {"239.255.255.255", POL_ADDR_MULTICAST},
    {"240.0.0.1", POL_ADDR_RESERVED},
    {"255.255.255.254", POL_ADDR_RESERVED},
    /* metadata outside link-local */
    {"100.100.100.200", POL_ADDR_METADATA},
    {"168.63.129.16", POL_ADDR_METADATA},
    {"192.0.0.192", POL_ADDR_METADATA},
    {"fd00:ec2::254", POL_ADDR_METADATA},
    {"fd20:ce::254", POL_ADDR_METADATA},
    {"fd00:c1::a9fe:a9fe", POL_ADDR_METADATA},
    {"fd00:42::42", POL_ADDR_METADATA},
    /* documentation, benchmarking, other reserved */
    {"192.0.2.1", POL_ADDR_DOCUMENTATION},
    {"198.51.100.7", POL_ADDR_DOCUMENTATION},
    {"203.0.113.255", POL_ADDR_DOCUMENTATION},
    {"2001:db8::1", POL_ADDR_DOCUMENTATION},
    {"198.18.0.1", POL_ADDR_BENCHMARKING},
    {"198.19.255.255", POL_ADDR_BENCHMARKING},
    {"192.0.0.8", POL_ADDR_RESERVED},
    {"100::1", POL_ADDR_RESERVED},
    /* embedded IPv4, judged by the embedded address */
    {"::ffff:127.0.0.1", POL_ADDR_LOOPBACK},
    {"::ffff:a9fe:a9fe", POL_ADDR_METADATA},
    {"::ffff:10.0.0.1", POL_ADDR_PRIVATE},
    {"::127.0.0.1", POL_ADDR_LOOPBACK},
    {"::ffff:0:7f00:1", POL_ADDR_LOOPBACK},
    {"64:ff9b::a00:1", POL_ADDR_PRIVATE},
    {"64:ff9b::7f00:1", POL_ADDR_LOOPBACK},
    {"64:ff9b:1::a9fe:a9fe", POL_ADDR_METADATA},
    {"64:ff9b:1:a00:0:100:808:808", POL_ADDR_PRIVATE}, /* /48 layout: 10.0.0.1 */
    {"2002:a00:1::1", POL_ADDR_PRIVATE},
    {"2002:7f00:1::", POL_ADDR_LOOPBACK},
    {"2002:a9fe:a9fe::1", POL_ADDR_METADATA},
    /* Teredo: client = ~last 32 bits */
    {"2001:0:4136:e378:8000:63bf:80ff:fffe", POL_ADDR_LOOPBACK},      /* client 127.0.0.1 */
    {"2001:0:4136:e378:8000:63bf:3fff:fdd2", POL_ADDR_DOCUMENTATION}, /* client 192.0.2.45 */
    {"2001:0:a00:1::f7f7:f7f7", POL_ADDR_PRIVATE},                    /* server 10.0.0.1 */
    /* public controls */
    {"8.8.8.8", POL_ADDR_PUBLIC},
    {"1.1.1.1", POL_ADDR_PUBLIC},
    {"100.63.255.254", POL_ADDR_PUBLIC},
    {"100.128.0.1", POL_ADDR_PUBLIC},
    {"172.15.255.255", POL_ADDR_PUBLIC},
    {"172.32.0.1", POL_ADDR_PUBLIC},
    {"192.169.0.1", POL_ADDR_PUBLIC},
    {"198.20.0.1", POL_ADDR_PUBLIC},
    {"169.255.0.1", POL_ADDR_PUBLIC},
    {"2001:4860:4860::8888", POL_ADDR_PUBLIC},
    {"2606:4700:4700::1111", POL_ADDR_PUBLIC},
    {"64:ff9c::1", POL_ADDR_PUBLIC},
    {"64:ff9b::808:808", POL_ADDR_PUBLIC},
    {"::ffff:8.8.8.8", POL_ADDR_PUBLIC},
    {"2002:808:808::1", POL_ADDR_PUBLIC},
    {"2001:0:4136:e378:8000:63bf:f7f7:f7f7", POL_ADDR_PUBLIC}, /* client 8.8.8.8 */
};

static void
test_classify_vectors(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(pol_t_vectors) / sizeof(pol_t_vectors[0]); i++) {
        struct sockaddr_storage ss = pol_t_sa(pol_t_vectors[i].addr, 443);
        enum pol_addr_class     got = pol_addr_classify((struct sockaddr *)&ss);

        if (got != pol_t_vectors[i].cls)
            fail_msg("%s: got %s, want %s", pol_t_vectors[i].addr, pol_addr_class_name(got),
                     pol_addr_class_name(pol_t_vectors[i].cls));
    }
}

struct pol_t_lit {
    const char         *lit;
    int                 rc;
    enum pol_addr_class cls;
};

static void
test_literal_spellings(void **state)
{
    static const struct pol_t_lit v[] = {
        {"2130706433", AL_OK, POL_ADDR_LOOPBACK},
        {"0x7f000001", AL_OK, POL_ADDR_LOOPBACK},
        {"0x7f.1", AL_OK, POL_ADDR_LOOPBACK},
        {"0177.0.0.1", AL_OK, POL_ADDR_LOOPBACK},
        {"127.1", AL_OK, POL_ADDR_LOOPBACK},
        {"0", AL_OK, POL_ADDR_UNSPECIFIED},
        {"0xa9fea9fe", AL_OK, POL_ADDR_METADATA},
        {"[::ffff:169.254.169.254]", AL_OK, POL_ADDR_METADATA},
        {"::ffff:169.254.169.254", AL_OK, POL_ADDR_METADATA},
        {"[::1]", AL_OK, POL_ADDR_LOOPBACK},
        {"fe80::1%eth0", AL_DECLINED, POL_ADDR_INVALID},
        {"[fe80::1%25eth0]", AL_DECLINED, POL_ADDR_INVALID},
        {"127.0.0.1 x", AL_DECLINED, POL_ADDR_INVALID},
        {"example.com", AL_DECLINED, POL_ADDR_INVALID},
        {"1.2.3.4.5", AL_DECLINED, POL_ADDR_INVALID},
        {"", AL_DECLINED, POL_ADDR_INVALID},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        struct sockaddr_storage ss;
        int                     rc = pol_addr_parse_literal(v[i].lit, strlen(v[i].lit), &ss);

        if (rc != v[i].rc)
            fail_msg("%s: rc %d want %d", v[i].lit, rc, v[i].rc);
        if (rc == AL_OK && pol_addr_classify((struct sockaddr *)&ss) != v[i].cls)
            fail_msg("%s: class %s", v[i].lit,
                     pol_addr_class_name(pol_addr_classify((struct sockaddr *)&ss)));
    }
}

static void
test_cidr_parse_and_family(void **state)
{
    struct pol_cidr         c;
    struct sockaddr_storage a;

    (void)state;
    assert_int_equal(pol_cidr_parse("10.0.0.0/8", &c), AL_OK);
    assert_int_equal(c.prefix, 8);
    assert_int_equal(pol_cidr_parse("127.0.0.1", &c), AL_OK);
    assert_int_equal(c.prefix, 32);
    assert_int_equal(pol_cidr_parse("10.0.0.1/8", &c), AL_ERROR); /* host bits */
    assert_int_equal(pol_cidr_parse("127.1/8", &c), AL_ERROR);
    assert_int_equal(pol_cidr_parse("10.0.0.0/33", &c), AL_ERROR);
    assert_int_equal(pol_cidr_parse("10.0.0.0/08", &c), AL_ERROR);
    assert_int_equal(pol_cidr_parse("10.0.0.0/", &c), AL_ERROR);
    assert_int_equal(pol_cidr_parse("fe80::1%eth0/128", &c), AL_ERROR);
    assert_int_equal(pol_cidr_parse("nonsense", &c), AL_ERROR);

    /* ::ffff:0:0/96 is an IPv6 range: it must not swallow all of IPv4 */
    assert_int_equal(pol_cidr_parse("::ffff:0:0/96", &c), AL_OK);
    a = pol_t_sa("1.2.3.4", 0);
    assert_false(pol_cidr_contains(&c, (struct sockaddr *)&a));
    a = pol_t_sa("::ffff:1.2.3.4", 0);
    assert_true(pol_cidr_contains(&c, (struct sockaddr *)&a));
    assert_int_equal(pol_cidr_parse("0.0.0.0/0", &c), AL_OK);
    a = pol_t_sa("2001:4860:4860::8888", 0);
    assert_false(pol_cidr_contains(&c, (struct sockaddr *)&a));
    a = pol_t_sa("9.9.9.9", 0);
    assert_true(pol_cidr_contains(&c, (struct sockaddr *)&a));
    assert_int_equal(pol_cidr_parse("172.16.0.0/12", &c), AL_OK);
    a = pol_t_sa("172.31.255.255", 0);
    assert_true(pol_cidr_contains(&c, (struct sockaddr *)&a));
    a = pol_t_sa("172.32.0.0", 0);
    assert_false(pol_cidr_contains(&c, (struct sockaddr *)&a));
}

static const char pol_t_guard_policy[] =
    "{\"allow_addresses\": [\"10.1.2.0/24\"],\n"
    " \"rules\": [\n"
    "  {\"name\": \"local\", \"hosts\": [\"local.test\"], \"cidrs\": [\"127.0.0.1/32\"]},\n"
    "  {\"name\": \"blocked\", \"hosts\": [\"blocked.test\"], \"action\": \"deny\"},\n"
    "  {\"name\": \"any\", \"hosts\": [\"*\"]}\n"
    " ]}\n";

static struct pol_policy *
pol_t_load(const char *text, int dry)
{
    struct al_errs     errs;
    struct pol_policy *p;

    al_errs_init(&errs);
    p = pol_load_text("g.json", text, strlen(text), NULL, 0, dry, &errs);
    if (p == NULL)
        fail_msg("load: %s", errs.text.data);
    al_errs_free(&errs);
    return p;
}

static void
pol_t_decide(const struct pol_policy *p, const char *host, struct pol_decision *d)
{
    struct pol_request rq = {0};

    rq.scheme = "https";
    rq.host = host;
    rq.port = 443;
    rq.method = "GET";
    rq.path = "/";
    rq.path_len = 1;
    pol_decide(p, &rq, d);
}

static void
test_filter_mixed_and_exemptions(void **state)
{
    struct pol_policy      *p = pol_t_load(pol_t_guard_policy, 0);
    struct pol_decision     d;
    struct sockaddr_storage a[8];
    char                    buf[64];
    int                     n;

    (void)state;
    /* mixed public + private answer set keeps only the public ones, in order */
    pol_t_decide(p, "www.example.com", &d);
    assert_int_equal(d.verdict, POL_ALLOW);
    a[0] = pol_t_sa("10.0.0.1", 443);
    a[1] = pol_t_sa("8.8.8.8", 443);
    a[2] = pol_t_sa("127.0.0.1", 443);
    a[3] = pol_t_sa("::ffff:169.254.169.254", 443);
    a[4] = pol_t_sa("2001:4860:4860::8888", 443);
    a[5] = pol_t_sa("fd00:ec2::254", 443);
    n = pol_filter_addrs(p, &d, a, 6, NULL, 0);
    assert_int_equal(n, 2);
    assert_int_equal(d.verdict, POL_ALLOW);
    inet_ntop(AF_INET, &((struct sockaddr_in *)&a[0])->sin_addr, buf, sizeof(buf));
    assert_string_equal(buf, "8.8.8.8");
    inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&a[1])->sin6_addr, buf, sizeof(buf));
    assert_string_equal(buf, "2001:4860:4860::8888");

    /* only internal answers: deny address_not_allowed (AAAA-only private too) */
    a[0] = pol_t_sa("127.0.0.1", 443);
    n = pol_filter_addrs(p, &d, a, 1, NULL, 0);
    assert_int_equal(n, 0);
    assert_int_equal(d.verdict, POL_DENY);
    assert_string_equal(d.reason, "address_not_allowed");
    pol_t_decide(p, "www.example.com", &d);
    a[0] = pol_t_sa("fd12::1", 443);
    assert_int_equal(pol_filter_addrs(p, &d, a, 1, NULL, 0), 0);

    /* allow_addresses exempts 10.1.2.0/24 for any rule, not 10.1.3.0 */
    pol_t_decide(p, "www.example.com", &d);
    a[0] = pol_t_sa("10.1.3.5", 443);
    a[1] = pol_t_sa("10.1.2.5", 443);
    assert_int_equal(pol_filter_addrs(p, &d, a, 2, NULL, 0), 1);
    assert_int_equal(((struct sockaddr_in *)&a[0])->sin_addr.s_addr, inet_addr("10.1.2.5"));

    /* the rule's cidrs exempt exactly 127.0.0.1, by family */
    pol_t_decide(p, "local.test", &d);
    assert_string_equal(d.rule, "local");
    a[0] = pol_t_sa("127.0.0.2", 80);
    a[1] = pol_t_sa("::ffff:127.0.0.1", 80);
    a[2] = pol_t_sa("127.0.0.1", 80);
    a[3] = pol_t_sa("169.254.169.254", 80);
    assert_int_equal(pol_filter_addrs(p, &d, a, 4, NULL, 0), 1);
    assert_int_equal(((struct sockaddr_in *)&a[0])->sin_addr.s_addr, inet_addr("127.0.0.1"));

    /* ...but another rule's decision does not get that exemption */
    pol_t_decide(p, "other.test", &d);
    a[0] = pol_t_sa("127.0.0.1", 80);
    assert_int_equal(pol_filter_addrs(p, &d, a, 1, NULL, 0), 0);

    /* a decision already denied keeps nothing */
    pol_t_decide(p, "blocked.test", &d);
    assert_int_equal(d.verdict, POL_DENY);
    a[0] = pol_t_sa("8.8.8.8", 80);
    assert_int_equal(pol_filter_addrs(p, &d, a, 1, NULL, 0), 0);
    assert_string_equal(d.reason, "denied_by_rule");
    pol_policy_unref(p);
}

static void
test_filter_self_loop_guard(void **state)
{
    struct pol_policy      *p = pol_t_load(pol_t_guard_policy, 0);
    struct pol_decision     d;
    struct sockaddr_storage a[4], self[2];

    (void)state;
    self[0] = pol_t_sa("127.0.0.1", 3128);
    self[1] = pol_t_sa("203.0.113.9", 0); /* port 0: every port of that address */

    /* exempted by cidrs, yet the proxy's own listener is never a target */
    pol_t_decide(p, "local.test", &d);
    a[0] = pol_t_sa("127.0.0.1", 3128);
    assert_int_equal(pol_filter_addrs(p, &d, a, 1, self, 2), 0);
    assert_string_equal(d.reason, "address_not_allowed");
    pol_t_decide(p, "local.test", &d);
    a[0] = pol_t_sa("127.0.0.1", 8080);
    assert_int_equal(pol_filter_addrs(p, &d, a, 1, self, 2), 1);
    /* mapped spelling of the listener is the listener too */
    pol_t_decide(p, "local.test", &d);
    a[0] = pol_t_sa("::ffff:127.0.0.1", 3128);
    a[1] = pol_t_sa("127.0.0.1", 3128);
    assert_int_equal(pol_filter_addrs(p, &d, a, 2, self, 2), 0);

    /* a public self address (port 0 = any port) */
    pol_t_decide(p, "www.example.com", &d);
    a[0] = pol_t_sa("203.0.113.9", 443);
    a[1] = pol_t_sa("8.8.4.4", 443);
    assert_int_equal(pol_filter_addrs(p, &d, a, 2, self, 2), 1);

    /* wildcard listener 0.0.0.0:3128 covers local addresses on that port */
    self[0] = pol_t_sa("0.0.0.0", 3128);
    pol_t_decide(p, "local.test", &d);
    a[0] = pol_t_sa("127.0.0.1", 3128);
    assert_int_equal(pol_filter_addrs(p, &d, a, 1, self, 1), 0);
    pol_t_decide(p, "www.example.com", &d);
    a[0] = pol_t_sa("8.8.8.8", 3128);
    assert_int_equal(pol_filter_addrs(p, &d, a, 1, self, 1), 1);
    pol_policy_unref(p);
}

static int
pol_t_self(const char *addr, uint16_t port, const struct pol_self *self)
{
    struct sockaddr_storage a = pol_t_sa(addr, port);

    return pol_addr_is_self((const struct sockaddr *)&a, self);
}

/* Issue #20: a wildcard listener answers on every address of the host,
 * public ones included, on its port; a specifically bound one on its own
 * address only. */
static void
test_self_host_addresses(void **state)
{
    struct sockaddr_storage listen[3], host[4];
    struct pol_self         self = {listen, 2, host, 4};

    (void)state;
    listen[0] = pol_t_sa("0.0.0.0", 3128); /* proxy, wildcard */
    listen[1] = pol_t_sa("0.0.0.0", 9180); /* admin, wildcard */
    host[0] = pol_t_sa("127.0.0.1", 0);
    host[1] = pol_t_sa("93.184.216.34", 0); /* the host's public address */
    host[2] = pol_t_sa("2606:4700::7", 0);
    host[3] = pol_t_sa("203.0.113.7", 0);

    /* every host address on every listening port; not on other ports */
    assert_true(pol_t_self("93.184.216.34", 3128, &self));
    assert_true(pol_t_self("93.184.216.34", 9180, &self));
    assert_false(pol_t_self("93.184.216.34", 443, &self));
    assert_true(pol_t_self("2606:4700::7", 9180, &self)); /* 0.0.0.0 or [::]: either family */
    assert_false(pol_t_self("2606:4700::8", 9180, &self));
    assert_false(pol_t_self("8.8.8.8", 3128, &self)); /* not the host's */
    /* spellings that reach the same host: mapped, NAT64, 6to4 */
    assert_true(pol_t_self("::ffff:93.184.216.34", 9180, &self));
    assert_true(pol_t_self("64:ff9b::5db8:d822", 9180, &self));
    assert_true(pol_t_self("2002:5db8:d822::1", 3128, &self));
    assert_false(pol_t_self("64:ff9b::808:808", 9180, &self));
    /* port 0 on the target (unknown) matches any listener */
    assert_true(pol_t_self("93.184.216.34", 0, &self));
    /* non-public addresses on a wildcard port stay self without a host list */
    self.nhost = 0;
    assert_true(pol_t_self("10.9.9.9", 3128, &self));
    assert_false(pol_t_self("93.184.216.34", 3128, &self));
    self.host = NULL;
    assert_false(pol_t_self("93.184.216.34", 3128, &self));
    self.host = host;
    self.nhost = 4;

    /* a listener bound to one address means that address only */
    listen[0] = pol_t_sa("10.0.0.5", 3128);
    listen[1] = pol_t_sa("127.0.0.1", 9180);
    assert_true(pol_t_self("10.0.0.5", 3128, &self));
    assert_true(pol_t_self("::ffff:10.0.0.5", 3128, &self));
    assert_false(pol_t_self("93.184.216.34", 3128, &self));
    assert_false(pol_t_self("93.184.216.34", 9180, &self));
    assert_false(pol_t_self("10.0.0.6", 3128, &self));
    /* [::] covers v4 host addresses too; a specific v6 listener its own */
    listen[2] = pol_t_sa("::", 8443);
    self.nlisten = 3;
    assert_true(pol_t_self("203.0.113.7", 8443, &self));
    assert_true(pol_t_self("2606:4700::7", 8443, &self));
    listen[2] = pol_t_sa("2606:4700::7", 8443);
    assert_true(pol_t_self("2606:4700::7", 8443, &self));
    assert_false(pol_t_self("93.184.216.34", 8443, &self));
    assert_false(pol_t_self("2606:4700::7", 8444, &self));
    assert_false(pol_addr_is_self((const struct sockaddr *)&host[1], NULL));
}

/* The guard refuses a host address on a wildcard listener's port even when
 * a rule's cidrs and allow_addresses would open it. */
static void
test_filter_self_host_beats_exemptions(void **state)
{
    struct pol_policy *p =
        pol_t_load("{\"allow_addresses\": [\"203.0.113.0/24\", \"2001:db8::/32\"],\n"
                   " \"rules\": [{\"name\": \"any\", \"hosts\": [\"*\"],\n"
                   "   \"cidrs\": [\"203.0.113.7/32\", \"2001:db8::7/128\"]}]}\n",
                   0);
    struct pol_decision     d;
    struct sockaddr_storage a[3], listen[2], host[3];
    struct pol_self         self = {listen, 2, host, 3};

    (void)state;
    listen[0] = pol_t_sa("0.0.0.0", 3128);
    listen[1] = pol_t_sa("::", 9180);
    host[0] = pol_t_sa("203.0.113.7", 0);
    host[1] = pol_t_sa("2001:db8::7", 0);
    host[2] = pol_t_sa("93.184.216.34", 0);

    /* control: the exemptions open these addresses on other ports */
    pol_t_decide(p, "www.example.com", &d);
    a[0] = pol_t_sa("203.0.113.7", 443);
    a[1] = pol_t_sa("2001:db8::7", 443);
    assert_int_equal(pol_filter_addrs_self(p, &d, a, 2, &self), 2);
    assert_int_equal(d.verdict, POL_ALLOW);

    /* the same addresses on the listeners' ports are airlock itself */
    pol_t_decide(p, "www.example.com", &d);
    a[0] = pol_t_sa("203.0.113.7", 3128);
    a[1] = pol_t_sa("2001:db8::7", 9180);
    a[2] = pol_t_sa("93.184.216.34", 9180);
    assert_int_equal(pol_filter_addrs_self(p, &d, a, 3, &self), 0);
    assert_int_equal(d.verdict, POL_DENY);
    assert_string_equal(d.reason, "address_not_allowed");

    /* mixed: only the foreign public answer survives */
    pol_t_decide(p, "www.example.com", &d);
    a[0] = pol_t_sa("93.184.216.34", 3128);
    a[1] = pol_t_sa("8.8.8.8", 3128);
    assert_int_equal(pol_filter_addrs_self(p, &d, a, 2, &self), 1);
    assert_int_equal(((struct sockaddr_in *)&a[0])->sin_addr.s_addr, inet_addr("8.8.8.8"));

    /* without the host list (pol_filter_addrs) the public address passed:
     * the hole issue #20 describes */
    pol_t_decide(p, "www.example.com", &d);
    a[0] = pol_t_sa("93.184.216.34", 9180);
    assert_int_equal(pol_filter_addrs(p, &d, a, 1, listen, 2), 1);
    pol_policy_unref(p);
}

static void
test_filter_dry_run_never_relaxes(void **state)
{
    struct pol_policy      *p = pol_t_load("{\"mode\": \"dry-run\", \"rules\": []}", 0);
    struct pol_policy      *q = pol_t_load(pol_t_guard_policy, 1);
    struct pol_decision     d;
    struct sockaddr_storage a[2];

    (void)state;
    pol_t_decide(p, "www.example.com", &d);
    assert_int_equal(d.verdict, POL_WOULD_DENY);
    a[0] = pol_t_sa("169.254.169.254", 80);
    assert_int_equal(pol_filter_addrs(p, &d, a, 1, NULL, 0), 0);
    assert_int_equal(d.verdict, POL_DENY);
    assert_string_equal(d.reason, "address_not_allowed");
    /* would_deny with a public answer goes through */
    pol_t_decide(p, "www.example.com", &d);
    a[0] = pol_t_sa("8.8.8.8", 80);
    assert_int_equal(pol_filter_addrs(p, &d, a, 1, NULL, 0), 1);
    assert_int_equal(d.verdict, POL_WOULD_DENY);
    /* force_dry_run: a deny rule becomes would_deny, its cidrs stay unused */
    pol_t_decide(q, "blocked.test", &d);
    assert_int_equal(d.verdict, POL_WOULD_DENY);
    a[0] = pol_t_sa("127.0.0.1", 80);
    assert_int_equal(pol_filter_addrs(q, &d, a, 1, NULL, 0), 0);
    assert_int_equal(d.verdict, POL_DENY);
    pol_policy_unref(p);
    pol_policy_unref(q);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_classify_vectors),
        cmocka_unit_test(test_literal_spellings),
        cmocka_unit_test(test_cidr_parse_and_family),
        cmocka_unit_test(test_filter_mixed_and_exemptions),
        cmocka_unit_test(test_filter_self_loop_guard),
        cmocka_unit_test(test_self_host_addresses),
        cmocka_unit_test(test_filter_self_host_beats_exemptions),
        cmocka_unit_test(test_filter_dry_run_never_relaxes),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
