/*
 * px_url.c - request-target and authority parsing, host normalisation.
 *
 * DESIGN
 *
 * Every policy decision is made on the string px_host_normalize() returns,
 * and the same string is what the resolver is later asked about. So the one
 * rule here is: a host has exactly one spelling by the time it leaves this
 * file. Everything that a resolver or a browser would read differently from
 * a plain string compare is either rewritten into its canonical form or
 * refused:
 *
 *   - IPv4 literals in any spelling inet_aton(3) accepts (2130706433,
 *     0x7f.1, 0177.0.0.1, 127.1, 0) become a dotted quad. getaddrinfo() uses
 *     the same grammar, so "0x7f.1" could otherwise dodge a 127.0.0.0/8 rule.
 *     Names that end in an all-digit label but are not valid literals
 *     ("1.2.3.4.5", "999.1.1.1") are refused rather than sent to DNS.
 *   - IPv6 literals go through inet_pton/inet_ntop; zone ids are refused
 *     since they name an interface of this machine, not a destination.
 *   - Unicode names are converted with libidn2 (IDNA2008, UTS#46
 *     non-transitional mapping). The mapped result is checked again exactly
 *     like ASCII input, because mapping can produce an address: fullwidth
 *     "１２７.０.０.１" maps to "127.0.0.1".
 *   - ASCII names are lowercased, lose one trailing dot, and are held to
 *     LDH plus underscore with the usual label and total lengths.
 *
 * Inputs are (pointer, length) pairs straight out of the HTTP parser and are
 * never NUL-terminated. They are copied into a bounded stack buffer before
 * any libc call that wants a C string. Nothing here allocates except libidn2
 * internally (released before returning) and nothing keeps state, so all
 * functions are thread-safe.
 */
#include "px_url.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include <idn2.h>

#include "common/common.h"

/* A host longer than this is never valid: 253 ASCII bytes after IDNA is at
 * most about four times as many UTF-8 bytes going in. */
#define PX_HOST_IN_MAX_BYTES 1024
#define PX_HOST_NAME_MAX_BYTES 253
#define PX_HOST_LABEL_MAX_BYTES 63
#define PX_URL_PORT_MAX_DIGITS 5

static void
px_url_set_err(const char **err, const char *reason)
{
    if (err != NULL)
        *err = reason;
}

static int
px_url_is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static int
px_url_is_hex(unsigned char c)
{
    return px_url_is_digit(c) || (c >= 'a' && c <= 'f');
}

/*
 * Strict UTF-8 check (RFC 3629): no overlong forms, no surrogates, nothing
 * above U+10FFFF. Done here rather than trusting libidn2's error path so that
 * "not UTF-8" is always reported the same way.
 */
static int
px_url_utf8_valid(const unsigned char *s, size_t len)
{
    size_t i = 0;
    int    ok = 1;

    while (ok && i < len) {
        unsigned char c = s[i];
        size_t        n;
        unsigned char lo = 0x80, hi = 0xbf; /* allowed range of the 2nd byte */

        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf) {
            n = 1;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            if (c == 0xe0)
                lo = 0xa0; /* overlong */
            else if (c == 0xed)
                hi = 0x9f; /* surrogates */
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            if (c == 0xf0)
                lo = 0x90; /* overlong */
            else if (c == 0xf4)
                hi = 0x8f; /* above U+10FFFF */
        } else {
            ok = 0;
            break;
        }
        if (len - i - 1 < n || s[i + 1] < lo || s[i + 1] > hi) {
            ok = 0;
            break;
        }
        for (size_t k = 2; k <= n; k++) {
            if (s[i + k] < 0x80 || s[i + k] > 0xbf)
                ok = 0;
        }
        i += n + 1;
    }
    return ok;
}

/*
 * A label inet_aton might read as a number: decimal/octal digits, or "0x"
 * with hex digits (possibly none; inet_aton then rejects it, and so do we).
 */
static int
px_url_label_numeric(const char *s, size_t n)
{
    size_t i = 0;
    int    hex = n >= 2 && s[0] == '0' && s[1] == 'x';
    int    ok = n > 0;

    for (i = hex ? 2 : 0; ok && i < n; i++)
        ok = hex ? px_url_is_hex((unsigned char)s[i]) : px_url_is_digit((unsigned char)s[i]);
    return ok;
}

static int
px_url_label_digits(const char *s, size_t n)
{
    int ok = n > 0;

    for (size_t i = 0; ok && i < n; i++)
        ok = px_url_is_digit((unsigned char)s[i]);
    return ok;
}

/* "a.b.c.d" with four decimal parts 0..255 and no leading zero: what
 * inet_ntop would write for the address inet_aton reads from it. */
static int
px_url_quad_canonical(const char *s, size_t len)
{
    int parts = 0;

    for (size_t i = 0; i < len;) {
        unsigned v = 0;
        size_t   start = i;

        while (i < len && s[i] >= '0' && s[i] <= '9' && i - start < 3)
            v = v * 10 + (unsigned)(s[i++] - '0');
        if (i == start || v > 255 || (s[start] == '0' && i - start > 1))
            return 0;
        parts++;
        if (i == len)
            break;
        if (s[i] != '.' || parts == 4)
            return 0;
        i++;
        if (i == len)
            return 0;
    }
    return parts == 4;
}

/*
 * Classifies the lowercased ASCII name `s` (NUL-terminated, trailing dot
 * already gone) and writes its canonical form. Shared by the ASCII path and
 * the output of IDNA, which must pass the very same checks.
 */
static int
px_url_ascii_host(const char *s, size_t len, char *out, size_t outsz, enum px_host_kind *kind,
                  const char **err)
{
    const char    *reason = "bad_host";
    const char    *lab;
    size_t         lablen;
    int            all_numeric = 1, rc = AL_ERROR;
    char           quad[INET_ADDRSTRLEN];
    struct in_addr a;

    if (len == 0 || len > PX_HOST_NAME_MAX_BYTES)
        goto out;
    /* Labels: 1..63 bytes of [a-z0-9_-], no hyphen at either end. */
    lab = s;
    for (size_t i = 0; i <= len; i++) {
        unsigned char c = (unsigned char)s[i];

        if (i < len && c != '.') {
            if (!(px_url_is_digit(c) || (c >= 'a' && c <= 'z') || c == '-' || c == '_'))
                goto out;
            continue;
        }
        lablen = (size_t)(s + i - lab);
        if (lablen == 0 || lablen > PX_HOST_LABEL_MAX_BYTES || lab[0] == '-' ||
            lab[lablen - 1] == '-')
            goto out;
        if (!px_url_label_numeric(lab, lablen))
            all_numeric = 0;
        if (i == len && !all_numeric && px_url_label_digits(lab, lablen))
            goto out; /* "a.1", "1.2.3.x.5": DNS names never end in a number */
        lab = s + i + 1;
    }
    if (all_numeric) {
        size_t qlen;

        /* The resolver would read this as an address; so do we, or refuse.
         * Already canonical (the usual case) is its own answer. */
        if (px_url_quad_canonical(s, len)) {
            memcpy(quad, s, len + 1);
            qlen = len;
        } else {
            if (inet_aton(s, &a) == 0 || inet_ntop(AF_INET, &a, quad, sizeof(quad)) == NULL)
                goto out;
            qlen = strlen(quad);
        }
        if (qlen >= outsz)
            goto out;
        memcpy(out, quad, qlen + 1);
        *kind = PX_HOST_IPV4;
    } else {
        if (len >= outsz)
            goto out;
        memcpy(out, s, len + 1);
        *kind = PX_HOST_NAME;
    }
    rc = AL_OK;
out:
    if (rc != AL_OK)
        px_url_set_err(err, reason);
    return rc;
}

static int
px_url_ipv6_host(const char *s, char *out, size_t outsz, enum px_host_kind *kind, const char **err)
{
    struct in6_addr a;
    char            buf[INET6_ADDRSTRLEN];
    int             rc = AL_ERROR;

    /* A zone id selects an interface here; it is no destination to police. */
    if (strchr(s, '%') != NULL)
        goto out;
    if (inet_pton(AF_INET6, s, &a) != 1)
        goto out;
    if (inet_ntop(AF_INET6, &a, buf, sizeof(buf)) == NULL || strlen(buf) >= outsz)
        goto out;
    memcpy(out, buf, strlen(buf) + 1);
    *kind = PX_HOST_IPV6;
    rc = AL_OK;
out:
    if (rc != AL_OK)
        px_url_set_err(err, "bad_host");
    return rc;
}

int
px_host_normalize(const char *in, size_t len, char *out, size_t outsz, enum px_host_kind *kind,
                  const char **err)
{
    char        buf[PX_HOST_IN_MAX_BYTES + 1];
    char       *idn = NULL;
    const char *ascii = buf;
    const char *reason = "bad_host";
    size_t      alen;
    int         colon = 0, nonascii = 0, rc = AL_ERROR;

    if (in == NULL || out == NULL || outsz == 0 || kind == NULL || len == 0 ||
        len > PX_HOST_IN_MAX_BYTES)
        goto out;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];

        if (c < 0x20 || c == 0x7f)
            goto out; /* NUL would truncate what libc sees; CTLs never belong */
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c - 'A' + 'a');
        colon |= c == ':';
        nonascii |= c >= 0x80;
        buf[i] = (char)c;
    }
    buf[len] = '\0';

    if (colon) {
        rc = px_url_ipv6_host(buf, out, outsz, kind, err);
        reason = NULL; /* already reported */
        goto out;
    }
    if (nonascii) {
        reason = "bad_idn";
        if (!px_url_utf8_valid((const unsigned char *)buf, len))
            goto out;
        if (idn2_to_ascii_8z(buf, &idn, IDN2_NONTRANSITIONAL) != IDN2_OK)
            goto out;
        ascii = idn;
        reason = "bad_host";
    }
    alen = strlen(ascii);
    if (alen > 0 && ascii[alen - 1] == '.')
        alen--; /* "example.com." is the same name; only one dot goes */
    if (alen > PX_HOST_NAME_MAX_BYTES)
        goto out;
    if (ascii == idn) {
        /* Re-lowercase for safety: idn2 output is lowercase, but the checks
         * below assume it and must not depend on libidn2's version. */
        for (size_t i = 0; i < alen; i++)
            buf[i] = (char)(idn[i] >= 'A' && idn[i] <= 'Z' ? idn[i] - 'A' + 'a' : idn[i]);
        ascii = buf;
    }
    buf[alen] = '\0';
    rc = px_url_ascii_host(buf, alen, out, outsz, kind, err);
    reason = NULL;
out:
    if (rc != AL_OK && reason != NULL)
        px_url_set_err(err, reason);
    idn2_free(idn);
    return rc;
}

/* Port: 1..65535 in plain decimal, no sign, no leading zero ("007"). */
static int
px_url_port_parse(const char *s, size_t n, uint16_t *port)
{
    unsigned long v = 0;
    int           ok = n > 0 && n <= PX_URL_PORT_MAX_DIGITS && s[0] != '0';

    for (size_t i = 0; ok && i < n; i++) {
        ok = px_url_is_digit((unsigned char)s[i]);
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    ok = ok && v <= 65535;
    if (ok)
        *port = (uint16_t)v;
    return ok ? AL_OK : AL_ERROR;
}

int
px_authority_parse(const char *s, size_t len, uint16_t default_port, struct px_target *out,
                   const char **err)
{
    struct px_target t;
    const char      *host, *port = NULL, *colon, *rb;
    size_t           hostlen, portlen = 0;
    const char      *reason = "bad_authority";
    int              rc = AL_ERROR;

    memset(&t, 0, sizeof(t));
    if (s == NULL || out == NULL || len == 0)
        goto out;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];

        /* Userinfo is how "allowed.com@evil.com" tricks are spelled. */
        if (c <= 0x20 || c == 0x7f || c == '@')
            goto out;
    }
    if (s[0] == '[') {
        rb = memchr(s, ']', len);
        if (rb == NULL)
            goto out;
        host = s + 1;
        hostlen = (size_t)(rb - host);
        /* Brackets hold exactly one IPv6 literal: no "[[x]]", no "[name]". */
        if (hostlen == 0 || memchr(host, '[', hostlen) != NULL ||
            memchr(host, ':', hostlen) == NULL)
            goto out;
        if (rb + 1 < s + len) {
            if (rb[1] != ':')
                goto out;
            port = rb + 2;
            portlen = (size_t)(s + len - port);
        }
    } else {
        host = s;
        colon = memchr(s, ':', len);
        hostlen = colon != NULL ? (size_t)(colon - s) : len;
        if (colon != NULL) {
            port = colon + 1;
            portlen = (size_t)(s + len - port);
            /* A second colon means bare IPv6 ("::1", "2001:db8::1:80"):
             * where the port starts is a guess, so refuse. */
            if (memchr(port, ':', portlen) != NULL)
                goto out;
        }
        if (hostlen == 0 || memchr(host, '[', hostlen) != NULL ||
            memchr(host, ']', hostlen) != NULL)
            goto out;
    }
    reason = "bad_port";
    if (port != NULL) {
        if (px_url_port_parse(port, portlen, &t.port) != AL_OK)
            goto out;
        t.port_given = 1;
    } else if (default_port == 0) {
        goto out; /* CONNECT must name its port */
    } else {
        t.port = default_port;
    }
    reason = NULL; /* px_host_normalize reports its own */
    if (px_host_normalize(host, hostlen, t.host, sizeof(t.host), &t.kind, err) != AL_OK)
        goto out;
    t.path = "";
    t.path_len = 0;
    *out = t;
    rc = AL_OK;
out:
    if (rc != AL_OK && reason != NULL)
        px_url_set_err(err, reason);
    return rc;
}

int
px_url_parse_absolute(const char *url, size_t len, struct px_target *out, const char **err)
{
    struct px_target t;
    const char      *auth, *end, *p;
    const char      *reason = "bad_target";
    size_t           skip;
    int              tls, rc = AL_ERROR;

    if (url == NULL || out == NULL || len == 0 || len > PX_URL_MAX_BYTES)
        goto out;
    end = url + len; /* after the NULL check: no arithmetic on NULL */
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)url[i];

        /* Fragments are never sent on the wire; one here means a confused
         * or hostile client, and "#" has tricked authority parsers before. */
        if (c <= 0x20 || c == 0x7f || c == '#')
            goto out;
    }
    reason = "bad_scheme";
    if (len >= 7 && al_strcaseeq_n(url, 7, "http://")) {
        tls = 0;
        skip = 7;
    } else if (len >= 8 && al_strcaseeq_n(url, 8, "https://")) {
        tls = 1;
        skip = 8;
    } else {
        goto out;
    }
    auth = url + skip;
    for (p = auth; p < end && *p != '/' && *p != '?'; p++)
        ;
    reason = "bad_authority";
    if (p == auth)
        goto out;
    reason = NULL;
    if (px_authority_parse(auth, (size_t)(p - auth), tls ? 443 : 80, &t, err) != AL_OK)
        goto out;
    t.tls = tls;
    if (p == end) {
        t.path = "/";
        t.path_len = 1;
    } else {
        t.path = p;
        t.path_len = (size_t)(end - p);
        t.path_needs_slash = *p == '?';
    }
    *out = t;
    rc = AL_OK;
out:
    if (rc != AL_OK && reason != NULL)
        px_url_set_err(err, reason);
    return rc;
}
