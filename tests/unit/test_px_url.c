/*
 * test_px_url.c - host normalisation, authority and absolute-form parsing
 * (proxy/px_url.c). Table-driven: every row names an input, what it must
 * become, or why it must be refused. Inputs are copied into a buffer with
 * trailing junk and passed with an explicit length, so a parser that reads
 * past `len` (or relies on a NUL) fails here.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "common/common.h"
#include "proxy/px_url.h"

#define T_JUNK "Z:9@#/ x"

/* Copies `s` into buf followed by junk that would change the answer if it
 * were read, and returns its length. */
static size_t
t_unterminated(char *buf, size_t bufsz, const char *s)
{
    size_t n = strlen(s);

    assert_true(n + sizeof(T_JUNK) <= bufsz);
    memcpy(buf, s, n);
    memcpy(buf + n, T_JUNK, sizeof(T_JUNK));
    return n;
}

/* ---- px_host_normalize -------------------------------------------------- */

struct t_host {
    const char       *in;
    const char       *out; /* NULL: must be refused with `err` */
    enum px_host_kind kind;
    const char       *err;
};

static const struct t_host t_hosts[] = {
    /* names */
    {"example.com", "example.com", PX_HOST_NAME, NULL},
    {"EXAMPLE.Com", "example.com", PX_HOST_NAME, NULL},
    {"example.com.", "example.com", PX_HOST_NAME, NULL},
    {"localhost", "localhost", PX_HOST_NAME, NULL},
    {"a", "a", PX_HOST_NAME, NULL},
    {"_dmarc.example.com", "_dmarc.example.com", PX_HOST_NAME, NULL},
    {"my_host.example_.com", "my_host.example_.com", PX_HOST_NAME, NULL},
    {"a-b.c--d.example", "a-b.c--d.example", PX_HOST_NAME, NULL},
    {"xn--jv8h.example.com", "xn--jv8h.example.com", PX_HOST_NAME, NULL},
    {"169-254-169-254.nip.io", "169-254-169-254.nip.io", PX_HOST_NAME, NULL},
    {"1.2.3.example", "1.2.3.example", PX_HOST_NAME, NULL},
    {"0x.example", "0x.example", PX_HOST_NAME, NULL},
    {"123abc", "123abc", PX_HOST_NAME, NULL},
    {"example.0x1", "example.0x1", PX_HOST_NAME, NULL},
    /* bad names */
    {"", NULL, 0, "bad_host"},
    {".", NULL, 0, "bad_host"},
    {"example.com..", NULL, 0, "bad_host"},
    {"a..b", NULL, 0, "bad_host"},
    {".a", NULL, 0, "bad_host"},
    {"-a.example", NULL, 0, "bad_host"},
    {"a-.example", NULL, 0, "bad_host"},
    {"a.-.example", NULL, 0, "bad_host"},
    {"exa mple.com", NULL, 0, "bad_host"},
    {" example.com", NULL, 0, "bad_host"},
    {"example.com ", NULL, 0, "bad_host"},
    {"ex\tample.com", NULL, 0, "bad_host"},
    {"example.com\r\n", NULL, 0, "bad_host"},
    {"exam\x7fple.com", NULL, 0, "bad_host"},
    {"a/b", NULL, 0, "bad_host"},
    {"a\\b.com", NULL, 0, "bad_host"},
    {"a@b.com", NULL, 0, "bad_host"},
    {"a*b.com", NULL, 0, "bad_host"},
    {"*.example.com", NULL, 0, "bad_host"},
    {"127%2e0%2e0%2e1", NULL, 0, "bad_host"},
    {"[::1]", NULL, 0, "bad_host"},
    {"[example.net]", NULL, 0, "bad_host"},
    {"a.1", NULL, 0, "bad_host"},
    {"example.123", NULL, 0, "bad_host"},
    /* IPv4 in every spelling inet_aton takes */
    {"127.0.0.1", "127.0.0.1", PX_HOST_IPV4, NULL},
    {"127.0.0.1.", "127.0.0.1", PX_HOST_IPV4, NULL},
    {"2130706433", "127.0.0.1", PX_HOST_IPV4, NULL},
    {"0x7f000001", "127.0.0.1", PX_HOST_IPV4, NULL},
    {"0X7F000001", "127.0.0.1", PX_HOST_IPV4, NULL},
    {"0x7f.1", "127.0.0.1", PX_HOST_IPV4, NULL},
    {"0177.0.0.1", "127.0.0.1", PX_HOST_IPV4, NULL},
    {"0177.0.0.01", "127.0.0.1", PX_HOST_IPV4, NULL},
    {"127.1", "127.0.0.1", PX_HOST_IPV4, NULL},
    {"127.0.1", "127.0.0.1", PX_HOST_IPV4, NULL},
    {"0x7f.0x0.0x0.0x1", "127.0.0.1", PX_HOST_IPV4, NULL},
    {"0", "0.0.0.0", PX_HOST_IPV4, NULL},
    {"169.254.169.254", "169.254.169.254", PX_HOST_IPV4, NULL},
    {"10.200.0.255", "10.200.0.255", PX_HOST_IPV4, NULL},
    {"0.0.0.0", "0.0.0.0", PX_HOST_IPV4, NULL},
    {"1.2.3.04", "1.2.3.4", PX_HOST_IPV4, NULL},     /* octal, not canonical */
    {"1.2.3.010", "1.2.3.8", PX_HOST_IPV4, NULL},    /* octal 010 */
    {"1.2.3.0255", "1.2.3.173", PX_HOST_IPV4, NULL}, /* four digits */
    {"1.2.3.09", NULL, 0, "bad_host"},               /* no octal 9 */
    {"1.2.3.4444", NULL, 0, "bad_host"},
    {"0xa9fea9fe", "169.254.169.254", PX_HOST_IPV4, NULL},
    {"4294967295", "255.255.255.255", PX_HOST_IPV4, NULL},
    /* numeric-looking but not a literal: never sent to DNS */
    {"1.2.3.4.5", NULL, 0, "bad_host"},
    {"999.1.1.1", NULL, 0, "bad_host"},
    {"256.0.0.1", NULL, 0, "bad_host"},
    {"4294967296", NULL, 0, "bad_host"},
    {"08", NULL, 0, "bad_host"},
    {"0x", NULL, 0, "bad_host"},
    {"0x1g", "0x1g", PX_HOST_NAME, NULL},
    {"1.2.3.0x", NULL, 0, "bad_host"},
    {"example.com.1", NULL, 0, "bad_host"},
    {"127.0.0.1..", NULL, 0, "bad_host"},
    {"1..1", NULL, 0, "bad_host"},
    /* IPv6 (bracket contents) */
    {"::1", "::1", PX_HOST_IPV6, NULL},
    {"::", "::", PX_HOST_IPV6, NULL},
    {"2001:DB8:0:0:0:0:0:1", "2001:db8::1", PX_HOST_IPV6, NULL},
    {"2001:db8::1", "2001:db8::1", PX_HOST_IPV6, NULL},
    {"0:0:0:0:0:0:0:1", "::1", PX_HOST_IPV6, NULL},
    {"::ffff:169.254.169.254", "::ffff:169.254.169.254", PX_HOST_IPV6, NULL},
    {"::FFFF:A9FE:A9FE", "::ffff:169.254.169.254", PX_HOST_IPV6, NULL},
    {"fe80::1", "fe80::1", PX_HOST_IPV6, NULL},
    {"fe80::1%eth0", NULL, 0, "bad_host"},
    {"fe80::1%25eth0", NULL, 0, "bad_host"},
    {"fe80::1%", NULL, 0, "bad_host"},
    {":::", NULL, 0, "bad_host"},
    {"1:2:3:4:5:6:7:8:9", NULL, 0, "bad_host"},
    {"2001:db8::g", NULL, 0, "bad_host"},
    {"::1 ", NULL, 0, "bad_host"},
    {"example.com:80", NULL, 0, "bad_host"},
    {"::127.1", NULL, 0, "bad_host"},
    /* IDN */
    {"b\xc3\xbc"
     "cher.example",
     "xn--bcher-kva.example", PX_HOST_NAME, NULL},
    {"B\xc3\x9c"
     "CHER.example",
     "xn--bcher-kva.example", PX_HOST_NAME, NULL},
    {"b\xc3\xbc"
     "cher.example.",
     "xn--bcher-kva.example", PX_HOST_NAME, NULL},
    {"\xe4\xbe\x8b\xe5\xad\x90.\xe6\xb5\x8b\xe8\xaf\x95", "xn--fsqu00a.xn--0zwm56d", PX_HOST_NAME,
     NULL},
    /* fullwidth "１２７.０.０.１" maps to an address under UTS#46 */
    {"\xef\xbc\x91\xef\xbc\x92\xef\xbc\x97.\xef\xbc\x90.\xef\xbc\x90.\xef\xbc\x91", "127.0.0.1",
     PX_HOST_IPV4, NULL},
    /* IDNA2008 non-transitional: sharp s is kept, not folded to "ss" */
    {"stra\xc3\x9f"
     "e.de",
     "xn--strae-oqa.de", PX_HOST_NAME, NULL},
    {"_dmarc.b\xc3\xbc"
     "cher.example",
     "_dmarc.xn--bcher-kva.example", PX_HOST_NAME, NULL},
    /* ideographic full stop is a label separator after mapping */
    {"a\xe3\x80\x82"
     "b\xc3\xbc.example",
     "a.xn--b-eha.example", PX_HOST_NAME, NULL},
    /* fullwidth "０ｘ７ｆ.1" maps to a hex IPv4 spelling */
    {"\xef\xbc\x90\xef\xbd\x98\xef\xbc\x97\xef\xbd\x86.1", "127.0.0.1", PX_HOST_IPV4, NULL},
    /* soft hyphen maps to nothing: one spelling, the one DNS will see */
    {"\xc2\xad"
     "abc.example",
     "abc.example", PX_HOST_NAME, NULL},
    {"b\xc3\xbc"
     "cher\xef\xbc\x9a"
     "80",
     NULL, 0, NULL}, /* fullwidth colon */
    {"b\xc3\xbc-.example", NULL, 0, NULL},
    {"b\xc3\xbc.1", NULL, 0, "bad_host"},
    {"\xf0\x9f\x94\x90.example.com", NULL, 0, "bad_idn"}, /* emoji: disallowed in IDNA2008 */
    {"\xff\xfe.example", NULL, 0, "bad_idn"},
    {"b\xc3.example", NULL, 0, "bad_idn"},            /* truncated sequence */
    {"\xc0\xae.example", NULL, 0, "bad_idn"},         /* overlong '.' */
    {"\xed\xa0\x80.example", NULL, 0, "bad_idn"},     /* surrogate */
    {"\xf4\x90\x80\x80.example", NULL, 0, "bad_idn"}, /* above U+10FFFF */
    {"b\xc3\xbc"
     "cher..example",
     NULL, 0, NULL}, /* empty label: refused either way */
};

static void
t_host_check(const char *in, size_t len, const struct t_host *t)
{
    char              out[PX_HOST_MAX + 1];
    enum px_host_kind kind = (enum px_host_kind) - 1;
    const char       *err = NULL;
    int               rc;

    memset(out, 'Q', sizeof(out));
    rc = px_host_normalize(in, len, out, sizeof(out), &kind, &err);
    if (t->out != NULL) {
        if (rc != AL_OK)
            fail_msg("\"%s\": expected \"%s\", got error %s", t->in, t->out, err ? err : "?");
        assert_string_equal(out, t->out);
        assert_int_equal(kind, t->kind);
        assert_null(err);
    } else {
        if (rc != AL_ERROR)
            fail_msg("\"%s\": expected %s, got \"%s\"", t->in, t->err ? t->err : "error", out);
        assert_non_null(err);
        if (t->err != NULL && strcmp(err, t->err) != 0)
            fail_msg("\"%s\": expected %s, got %s", t->in, t->err, err);
        assert_int_equal(kind, (enum px_host_kind) - 1); /* untouched */
    }
}

static void
test_host_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(t_hosts) / sizeof(t_hosts[0]); i++) {
        char   buf[512];
        size_t n = t_unterminated(buf, sizeof(buf), t_hosts[i].in);

        t_host_check(buf, n, &t_hosts[i]);
    }
}

static void
test_host_lengths(void **state)
{
    char              name[600], out[PX_HOST_MAX + 1];
    char              l63[64], l64[65];
    enum px_host_kind kind;
    const char       *err = NULL;

    (void)state;
    memset(l63, 'a', 63);
    l63[63] = '\0';
    memset(l64, 'b', 64);
    l64[64] = '\0';

    snprintf(name, sizeof(name), "%s.example", l63);
    assert_int_equal(px_host_normalize(name, strlen(name), out, sizeof(out), &kind, &err), AL_OK);
    assert_string_equal(out, name);
    snprintf(name, sizeof(name), "%s.example", l64);
    assert_int_equal(px_host_normalize(name, strlen(name), out, sizeof(out), &kind, &err),
                     AL_ERROR);
    assert_string_equal(err, "bad_host");

    /* 63+1+63+1+63+1+61 = 253: the longest name; 254 is one too many. */
    snprintf(name, sizeof(name), "%s.%s.%s.%.61s", l63, l63, l63, l63);
    assert_int_equal(strlen(name), 253);
    assert_int_equal(px_host_normalize(name, strlen(name), out, sizeof(out), &kind, &err), AL_OK);
    assert_string_equal(out, name);
    assert_int_equal(kind, PX_HOST_NAME);
    /* with its trailing dot it is 254 bytes and still fine */
    strcat(name, ".");
    assert_int_equal(px_host_normalize(name, strlen(name), out, sizeof(out), &kind, &err), AL_OK);
    assert_int_equal(strlen(out), 253);
    snprintf(name, sizeof(name), "%s.%s.%s.%.62s", l63, l63, l63, l63);
    assert_int_equal(strlen(name), 254);
    err = NULL;
    assert_int_equal(px_host_normalize(name, strlen(name), out, sizeof(out), &kind, &err),
                     AL_ERROR);
    assert_string_equal(err, "bad_host");

    /* a huge input is refused without reading it all into a buffer */
    memset(name, 'a', sizeof(name));
    err = NULL;
    assert_int_equal(px_host_normalize(name, sizeof(name), out, sizeof(out), &kind, &err),
                     AL_ERROR);
    assert_string_equal(err, "bad_host");

    /* an IDN label whose punycode is longer than 63 bytes */
    name[0] = '\0';
    for (int i = 0; i < 70; i++)
        strcat(name, "\xc3\xbc"); /* ü */
    strcat(name, "x.example");
    err = NULL;
    assert_int_equal(px_host_normalize(name, strlen(name), out, sizeof(out), &kind, &err),
                     AL_ERROR);
    assert_non_null(err);
}

static void
test_host_embedded_nul_and_small_out(void **state)
{
    char              out[PX_HOST_MAX + 1];
    enum px_host_kind kind;
    const char       *err = NULL;
    static const char nul[] = "evil.com\0.allowed.com";
    char              tiny[8];

    (void)state;
    assert_int_equal(px_host_normalize(nul, sizeof(nul) - 1, out, sizeof(out), &kind, &err),
                     AL_ERROR);
    assert_string_equal(err, "bad_host");
    err = NULL;
    assert_int_equal(px_host_normalize("::1\0", 4, out, sizeof(out), &kind, &err), AL_ERROR);
    assert_string_equal(err, "bad_host");

    /* len shorter than the string: only the prefix counts */
    assert_int_equal(px_host_normalize("example.com.evil", 11, out, sizeof(out), &kind, &err),
                     AL_OK);
    assert_string_equal(out, "example.com");

    /* out too small is an error, never a truncated host */
    err = NULL;
    assert_int_equal(px_host_normalize("example.com", 11, tiny, sizeof(tiny), &kind, &err),
                     AL_ERROR);
    assert_non_null(err);
    assert_int_equal(px_host_normalize("1.2.3.4", 7, tiny, sizeof(tiny), &kind, &err), AL_OK);
    assert_string_equal(tiny, "1.2.3.4");
    err = NULL;
    assert_int_equal(px_host_normalize("10.20.30.40", 11, tiny, sizeof(tiny), &kind, &err),
                     AL_ERROR);
    assert_non_null(err);
    err = NULL;
    assert_int_equal(px_host_normalize("2001:db8::1", 11, tiny, sizeof(tiny), &kind, &err),
                     AL_ERROR);
    assert_non_null(err);
    /* err may be NULL */
    assert_int_equal(px_host_normalize("a..b", 4, out, sizeof(out), &kind, NULL), AL_ERROR);
}

/* ---- px_authority_parse ------------------------------------------------- */

struct t_auth {
    const char       *in;
    uint16_t          defport;
    const char       *host; /* NULL: refused with err */
    enum px_host_kind kind;
    uint16_t          port;
    int               port_given;
    const char       *err;
};

static const struct t_auth t_auths[] = {
    {"example.com:443", 0, "example.com", PX_HOST_NAME, 443, 1, NULL},
    {"EXAMPLE.com.:8080", 0, "example.com", PX_HOST_NAME, 8080, 1, NULL},
    {"example.com", 80, "example.com", PX_HOST_NAME, 80, 0, NULL},
    {"example.com:1", 0, "example.com", PX_HOST_NAME, 1, 1, NULL},
    {"example.com:65535", 0, "example.com", PX_HOST_NAME, 65535, 1, NULL},
    {"_acme.example.com:443", 0, "_acme.example.com", PX_HOST_NAME, 443, 1, NULL},
    {"127.0.0.1:80", 0, "127.0.0.1", PX_HOST_IPV4, 80, 1, NULL},
    {"2130706433:443", 0, "127.0.0.1", PX_HOST_IPV4, 443, 1, NULL},
    {"0x7f.1:443", 0, "127.0.0.1", PX_HOST_IPV4, 443, 1, NULL},
    {"0:80", 0, "0.0.0.0", PX_HOST_IPV4, 80, 1, NULL},
    {"[::1]:443", 0, "::1", PX_HOST_IPV6, 443, 1, NULL},
    {"[::1]", 443, "::1", PX_HOST_IPV6, 443, 0, NULL},
    {"[2001:DB8::1]:8443", 0, "2001:db8::1", PX_HOST_IPV6, 8443, 1, NULL},
    {"[::ffff:169.254.169.254]:80", 0, "::ffff:169.254.169.254", PX_HOST_IPV6, 80, 1, NULL},
    {"[::ffff:169.254.169.254]", 80, "::ffff:169.254.169.254", PX_HOST_IPV6, 80, 0, NULL},
    {"b\xc3\xbc"
     "cher.example:443",
     0, "xn--bcher-kva.example", PX_HOST_NAME, 443, 1, NULL},
    /* smokescreen hostport cases */
    {"[example.net]:1337", 0, NULL, 0, 0, 0, "bad_authority"},
    {"[[x]]:1", 0, NULL, 0, 0, 0, "bad_authority"},
    {"::", 0, NULL, 0, 0, 0, "bad_authority"},
    {"::", 443, NULL, 0, 0, 0, "bad_authority"},
    {"2001:db8::1", 0, NULL, 0, 0, 0, "bad_authority"},
    {"2001:db8::1", 443, NULL, 0, 0, 0, "bad_authority"},
    {"::1:443", 0, NULL, 0, 0, 0, "bad_authority"},
    {"example.com:0", 0, NULL, 0, 0, 0, "bad_port"},
    {"example.com:-1", 0, NULL, 0, 0, 0, "bad_port"},
    {"example.com:65536", 0, NULL, 0, 0, 0, "bad_port"},
    {"example.com:99999", 0, NULL, 0, 0, 0, "bad_port"},
    {"example.com:100000", 0, NULL, 0, 0, 0, "bad_port"},
    {"example.com:007", 0, NULL, 0, 0, 0, "bad_port"},
    {"example.com:00", 0, NULL, 0, 0, 0, "bad_port"},
    {"example.com:https", 0, NULL, 0, 0, 0, "bad_port"},
    {"example.com:+80", 0, NULL, 0, 0, 0, "bad_port"},
    {"example.com:0x50", 0, NULL, 0, 0, 0, "bad_port"},
    {"example.com:", 0, NULL, 0, 0, 0, "bad_port"},
    {"example.com:", 80, NULL, 0, 0, 0, "bad_port"},
    {"example.com", 0, NULL, 0, 0, 0, "bad_port"},
    {"[::1]", 0, NULL, 0, 0, 0, "bad_port"},
    {"[::1]:", 0, NULL, 0, 0, 0, "bad_port"},
    {"[::1]:0", 0, NULL, 0, 0, 0, "bad_port"},
    {"example.com:80/x", 0, NULL, 0, 0, 0, "bad_port"},
    {"example.com.:443", 0, "example.com", PX_HOST_NAME, 443, 1, NULL},
    {"example.com..:443", 0, NULL, 0, 0, 0, "bad_host"},
    /* userinfo, whitespace, empty host, stray brackets */
    {"user@example.com:443", 0, NULL, 0, 0, 0, "bad_authority"},
    {"user:pw@example.com:443", 0, NULL, 0, 0, 0, "bad_authority"},
    {"allowed.com:443@evil.com:443", 0, NULL, 0, 0, 0, "bad_authority"},
    {"@example.com:443", 0, NULL, 0, 0, 0, "bad_authority"},
    {"example.com :443", 0, NULL, 0, 0, 0, "bad_authority"},
    {"example.com: 443", 0, NULL, 0, 0, 0, "bad_authority"},
    {" example.com:443", 0, NULL, 0, 0, 0, "bad_authority"},
    {"example.com:443 ", 0, NULL, 0, 0, 0, "bad_authority"},
    {"example.com:443\r\n", 0, NULL, 0, 0, 0, "bad_authority"},
    {"exa\tmple.com:443", 0, NULL, 0, 0, 0, "bad_authority"},
    {"", 0, NULL, 0, 0, 0, "bad_authority"},
    {"", 80, NULL, 0, 0, 0, "bad_authority"},
    {":443", 0, NULL, 0, 0, 0, "bad_authority"},
    {"[]:443", 0, NULL, 0, 0, 0, "bad_authority"},
    {"[::1", 0, NULL, 0, 0, 0, "bad_authority"},
    {"[::1]443", 0, NULL, 0, 0, 0, "bad_authority"},
    {"[::1]]:443", 0, NULL, 0, 0, 0, "bad_authority"},
    {"[::1]:443]", 0, NULL, 0, 0, 0, "bad_port"},
    {"::1]:443", 0, NULL, 0, 0, 0, "bad_authority"},
    {"a[b:443", 0, NULL, 0, 0, 0, "bad_authority"},
    {"[1.2.3.4]:80", 0, NULL, 0, 0, 0, "bad_authority"},
    {"[fe80::1%eth0]:443", 0, NULL, 0, 0, 0, "bad_host"},
    {"[fe80::1%25eth0]:443", 0, NULL, 0, 0, 0, "bad_host"},
    {"1.2.3.4.5:443", 0, NULL, 0, 0, 0, "bad_host"},
    {"999.1.1.1:443", 0, NULL, 0, 0, 0, "bad_host"},
    {"a..b:443", 0, NULL, 0, 0, 0, "bad_host"},
    {"\xf0\x9f\x94\x90.example.com:443", 0, NULL, 0, 0, 0, "bad_idn"},
};

static void
test_authority_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(t_auths) / sizeof(t_auths[0]); i++) {
        const struct t_auth *t = &t_auths[i];
        struct px_target     tg;
        const char          *err = NULL;
        char                 buf[512];
        size_t               n = t_unterminated(buf, sizeof(buf), t->in);
        int                  rc;

        memset(&tg, 0x5a, sizeof(tg));
        rc = px_authority_parse(buf, n, t->defport, &tg, &err);
        if (t->host != NULL) {
            if (rc != AL_OK)
                fail_msg("\"%s\": expected %s, got %s", t->in, t->host, err ? err : "?");
            assert_string_equal(tg.host, t->host);
            assert_int_equal(tg.kind, t->kind);
            assert_int_equal(tg.port, t->port);
            assert_int_equal(tg.port_given, t->port_given);
            assert_int_equal(tg.tls, 0);
            assert_int_equal(tg.path_len, 0);
            assert_non_null(tg.path);
            assert_int_equal(tg.path_needs_slash, 0);
        } else {
            if (rc != AL_ERROR)
                fail_msg("\"%s\": expected %s, got \"%s\"", t->in, t->err, tg.host);
            assert_non_null(err);
            if (strcmp(err, t->err) != 0)
                fail_msg("\"%s\": expected %s, got %s", t->in, t->err, err);
            assert_int_equal(tg.port, 0x5a5a); /* untouched on failure */
        }
    }
}

static void
test_authority_embedded_nul(void **state)
{
    struct px_target  tg;
    const char       *err = NULL;
    static const char in[] = "allowed.com\0evil.com:443";

    (void)state;
    assert_int_equal(px_authority_parse(in, sizeof(in) - 1, 0, &tg, &err), AL_ERROR);
    assert_string_equal(err, "bad_authority");
    /* a length that stops before the port means no port */
    err = NULL;
    assert_int_equal(px_authority_parse("example.com:443", 11, 0, &tg, &err), AL_ERROR);
    assert_string_equal(err, "bad_port");
    assert_int_equal(px_authority_parse("example.com:443", 11, 8443, &tg, &err), AL_OK);
    assert_int_equal(tg.port, 8443);
    assert_int_equal(tg.port_given, 0);
    assert_int_equal(px_authority_parse("example.com:4431", 15, 0, &tg, &err), AL_OK);
    assert_int_equal(tg.port, 443);
    assert_int_equal(px_authority_parse("[::1]:8080", 5, 0, &tg, &err), AL_ERROR);
    assert_int_equal(px_authority_parse("[::1]:8080", 5, 1, &tg, &err), AL_OK);
    assert_string_equal(tg.host, "::1");
    assert_int_equal(px_authority_parse("[::1]:8080", 4, 1, &tg, &err), AL_ERROR);
}

/* ---- px_url_parse_absolute ---------------------------------------------- */

struct t_url {
    const char       *in;
    const char       *host; /* NULL: refused with err */
    enum px_host_kind kind;
    uint16_t          port;
    int               port_given;
    int               tls;
    const char       *path;
    int               needs_slash;
    const char       *err;
};

static const struct t_url t_urls[] = {
    {"http://example.com/", "example.com", PX_HOST_NAME, 80, 0, 0, "/", 0, NULL},
    {"http://example.com", "example.com", PX_HOST_NAME, 80, 0, 0, "/", 0, NULL},
    {"http://example.com/a/b?c=d&e", "example.com", PX_HOST_NAME, 80, 0, 0, "/a/b?c=d&e", 0, NULL},
    {"http://example.com?q=1", "example.com", PX_HOST_NAME, 80, 0, 0, "?q=1", 1, NULL},
    {"http://example.com:8080?q", "example.com", PX_HOST_NAME, 8080, 1, 0, "?q", 1, NULL},
    {"http://example.com?q/x", "example.com", PX_HOST_NAME, 80, 0, 0, "?q/x", 1, NULL},
    {"http://example.com/?q", "example.com", PX_HOST_NAME, 80, 0, 0, "/?q", 0, NULL},
    {"HTTP://EXAMPLE.COM:8080/X", "example.com", PX_HOST_NAME, 8080, 1, 0, "/X", 0, NULL},
    {"hTtP://example.com./", "example.com", PX_HOST_NAME, 80, 0, 0, "/", 0, NULL},
    {"https://example.com/", "example.com", PX_HOST_NAME, 443, 0, 1, "/", 0, NULL},
    {"https://example.com", "example.com", PX_HOST_NAME, 443, 0, 1, "/", 0, NULL},
    {"HTTPS://example.com:8443/p", "example.com", PX_HOST_NAME, 8443, 1, 1, "/p", 0, NULL},
    {"http://example.com:80/", "example.com", PX_HOST_NAME, 80, 1, 0, "/", 0, NULL},
    {"http://127.1/", "127.0.0.1", PX_HOST_IPV4, 80, 0, 0, "/", 0, NULL},
    {"http://0x7f000001:8080/x", "127.0.0.1", PX_HOST_IPV4, 8080, 1, 0, "/x", 0, NULL},
    {"http://[::1]/", "::1", PX_HOST_IPV6, 80, 0, 0, "/", 0, NULL},
    {"http://[::1]:8080", "::1", PX_HOST_IPV6, 8080, 1, 0, "/", 0, NULL},
    {"http://[::ffff:169.254.169.254]/latest/meta-data", "::ffff:169.254.169.254", PX_HOST_IPV6, 80,
     0, 0, "/latest/meta-data", 0, NULL},
    {"http://example.com/a@b", "example.com", PX_HOST_NAME, 80, 0, 0, "/a@b", 0, NULL},
    {"http://example.com/a:b//c", "example.com", PX_HOST_NAME, 80, 0, 0, "/a:b//c", 0, NULL},
    {"http://example.com?x@evil.com", "example.com", PX_HOST_NAME, 80, 0, 0, "?x@evil.com", 1,
     NULL},
    {"http://b\xc3\xbc"
     "cher.example/",
     "xn--bcher-kva.example", PX_HOST_NAME, 80, 0, 0, "/", 0, NULL},
    {"http://_svc.example.com/", "_svc.example.com", PX_HOST_NAME, 80, 0, 0, "/", 0, NULL},
    /* schemes */
    {"ftp://example.com/", NULL, 0, 0, 0, 0, NULL, 0, "bad_scheme"},
    {"http:/example.com/", NULL, 0, 0, 0, 0, NULL, 0, "bad_scheme"},
    {"http:example.com", NULL, 0, 0, 0, 0, NULL, 0, "bad_scheme"},
    {"//example.com/", NULL, 0, 0, 0, 0, NULL, 0, "bad_scheme"},
    {"/path", NULL, 0, 0, 0, 0, NULL, 0, "bad_scheme"},
    {"example.com:80", NULL, 0, 0, 0, 0, NULL, 0, "bad_scheme"},
    {"httpx://example.com/", NULL, 0, 0, 0, 0, NULL, 0, "bad_scheme"},
    {"ws://example.com/", NULL, 0, 0, 0, 0, NULL, 0, "bad_scheme"},
    {"http", NULL, 0, 0, 0, 0, NULL, 0, "bad_scheme"},
    {"http:\\\\example.com/", NULL, 0, 0, 0, 0, NULL, 0, "bad_scheme"},
    {"*", NULL, 0, 0, 0, 0, NULL, 0, "bad_scheme"},
    /* fragments, whitespace, controls */
    {"http://example.com/#frag", NULL, 0, 0, 0, 0, NULL, 0, "bad_target"},
    {"http://example.com#@evil.com/", NULL, 0, 0, 0, 0, NULL, 0, "bad_target"},
    {"http://evil.com#.example.com/", NULL, 0, 0, 0, 0, NULL, 0, "bad_target"},
    {"http://example.com/a b", NULL, 0, 0, 0, 0, NULL, 0, "bad_target"},
    {"http://example.com/\t", NULL, 0, 0, 0, 0, NULL, 0, "bad_target"},
    {"http://example.com/\x7f", NULL, 0, 0, 0, 0, NULL, 0, "bad_target"},
    {"", NULL, 0, 0, 0, 0, NULL, 0, "bad_target"},
    /* authority problems */
    {"http://", NULL, 0, 0, 0, 0, NULL, 0, "bad_authority"},
    {"http:///path", NULL, 0, 0, 0, 0, NULL, 0, "bad_authority"},
    {"https://?q", NULL, 0, 0, 0, 0, NULL, 0, "bad_authority"},
    {"http://user@example.com/", NULL, 0, 0, 0, 0, NULL, 0, "bad_authority"},
    {"http://user:pw@example.com/", NULL, 0, 0, 0, 0, NULL, 0, "bad_authority"},
    {"http://allowed.com@evil.com/", NULL, 0, 0, 0, 0, NULL, 0, "bad_authority"},
    {"http://evil.com\\@allowed.com/", NULL, 0, 0, 0, 0, NULL, 0, "bad_authority"},
    {"http://:80/", NULL, 0, 0, 0, 0, NULL, 0, "bad_authority"},
    {"http://2001:db8::1/", NULL, 0, 0, 0, 0, NULL, 0, "bad_authority"},
    {"http://[example.net]:1337/", NULL, 0, 0, 0, 0, NULL, 0, "bad_authority"},
    {"http://example.com:0/", NULL, 0, 0, 0, 0, NULL, 0, "bad_port"},
    {"http://example.com:/", NULL, 0, 0, 0, 0, NULL, 0, "bad_port"},
    {"http://example.com:65536/", NULL, 0, 0, 0, 0, NULL, 0, "bad_port"},
    {"http://example.com:007/", NULL, 0, 0, 0, 0, NULL, 0, "bad_port"},
    {"http://example.com:http/", NULL, 0, 0, 0, 0, NULL, 0, "bad_port"},
    {"http://good.com\\evil.com/", NULL, 0, 0, 0, 0, NULL, 0, "bad_host"},
    {"http://a..b/", NULL, 0, 0, 0, 0, NULL, 0, "bad_host"},
    {"http://1.2.3.4.5/", NULL, 0, 0, 0, 0, NULL, 0, "bad_host"},
    {"http://[fe80::1%25eth0]/", NULL, 0, 0, 0, 0, NULL, 0, "bad_host"},
    {"http://127%2e0%2e0%2e1/", NULL, 0, 0, 0, 0, NULL, 0, "bad_host"},
    {"http://\xf0\x9f\x94\x90.example.com/", NULL, 0, 0, 0, 0, NULL, 0, "bad_idn"},
};

static void
test_url_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(t_urls) / sizeof(t_urls[0]); i++) {
        const struct t_url *t = &t_urls[i];
        struct px_target    tg;
        const char         *err = NULL;
        char                buf[512];
        size_t              n = t_unterminated(buf, sizeof(buf), t->in);
        int                 rc;

        memset(&tg, 0x5a, sizeof(tg));
        rc = px_url_parse_absolute(buf, n, &tg, &err);
        if (t->host != NULL) {
            if (rc != AL_OK)
                fail_msg("\"%s\": expected %s, got %s", t->in, t->host, err ? err : "?");
            assert_string_equal(tg.host, t->host);
            assert_int_equal(tg.kind, t->kind);
            assert_int_equal(tg.port, t->port);
            assert_int_equal(tg.port_given, t->port_given);
            assert_int_equal(tg.tls, t->tls);
            assert_int_equal(tg.path_needs_slash, t->needs_slash);
            assert_int_equal(tg.path_len, strlen(t->path));
            assert_memory_equal(tg.path, t->path, tg.path_len);
            /* the path lies inside the input unless it is the static "/" */
            if (tg.path < buf || tg.path >= buf + n) {
                assert_string_equal(t->path, "/");
                assert_null(memchr(t->in + 8, '/', strlen(t->in) - 8)); /* none given */
            } else {
                assert_true(tg.path + tg.path_len == buf + n);
            }
        } else {
            if (rc != AL_ERROR)
                fail_msg("\"%s\": expected %s, got \"%s\"", t->in, t->err, tg.host);
            assert_non_null(err);
            if (strcmp(err, t->err) != 0)
                fail_msg("\"%s\": expected %s, got %s", t->in, t->err, err);
            assert_int_equal(tg.port, 0x5a5a); /* untouched on failure */
        }
    }
}

static void
test_url_length_cap_and_prefixes(void **state)
{
    static char      big[PX_URL_MAX_BYTES + 2];
    struct px_target tg;
    const char      *err = NULL;
    size_t           pre = strlen("http://example.com/");

    (void)state;
    memcpy(big, "http://example.com/", pre);
    memset(big + pre, 'a', sizeof(big) - pre);
    assert_int_equal(px_url_parse_absolute(big, PX_URL_MAX_BYTES, &tg, &err), AL_OK);
    assert_int_equal(tg.path_len, PX_URL_MAX_BYTES - pre + 1);
    assert_ptr_equal(tg.path, big + pre - 1);
    assert_int_equal(px_url_parse_absolute(big, PX_URL_MAX_BYTES + 1, &tg, &err), AL_ERROR);
    assert_string_equal(err, "bad_target");

    /* len stops inside the scheme, the host, or before a '#' past the end */
    err = NULL;
    assert_int_equal(px_url_parse_absolute("https://x", 6, &tg, &err), AL_ERROR);
    assert_string_equal(err, "bad_scheme");
    assert_int_equal(px_url_parse_absolute("http://example.com.evil/", 18, &tg, &err), AL_OK);
    assert_string_equal(tg.host, "example.com");
    assert_string_equal(tg.path, "/");
    assert_int_equal(px_url_parse_absolute("http://a.com/x#y", 14, &tg, &err), AL_OK);
    assert_int_equal(tg.path_len, 2);
    assert_memory_equal(tg.path, "/x", 2);
    /* an embedded NUL is never silently accepted */
    err = NULL;
    assert_int_equal(px_url_parse_absolute("http://a.com\0.evil/", 19, &tg, &err), AL_ERROR);
    assert_string_equal(err, "bad_target");
    assert_int_equal(px_url_parse_absolute(NULL, 0, &tg, NULL), AL_ERROR);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_host_table),
        cmocka_unit_test(test_host_lengths),
        cmocka_unit_test(test_host_embedded_nul_and_small_out),
        cmocka_unit_test(test_authority_table),
        cmocka_unit_test(test_authority_embedded_nul),
        cmocka_unit_test(test_url_table),
        cmocka_unit_test(test_url_length_cap_and_prefixes),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
