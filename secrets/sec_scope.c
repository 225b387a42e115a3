/*
 * sec_scope.c - scope entries "host[:port][/path-prefix]" and their matching.
 *
 * Host patterns follow policy/pol_host.c (this module may not include policy
 * headers, so the small matcher is repeated): an exact name or IP literal,
 * "*.example.com" (one or more labels in front of a name of at least two
 * labels; never an IP literal), or "*". Names are lowercased, one trailing
 * dot dropped, labels 1..63 bytes of [a-z0-9_-] not starting or ending with
 * '-', 253 bytes in all, last label not numeric. Non-ASCII names must be
 * written in punycode here (no libidn2 in this module). IPv4 literals in any
 * inet_aton spelling become a dotted quad, IPv6 literals (bracketed when a
 * port follows) their inet_ntop form, as the proxy normalises request hosts.
 *
 * Path prefixes: "/v1/" matches paths starting with it; "/v1" matches "/v1"
 * and "/v1/..." but not "/v10". A destination path containing a dot segment
 * or a percent-encoded '.' or '/' never matches a path-restricted entry, so
 * "/v1/../admin" cannot borrow the scope of "/v1/".
 */
#include "sec_int.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

/* Normalises host text h (length n) into out; sets *is_ip. */
static int
sec_host_norm(const char *h, size_t n, char *out, size_t outsz, int *is_ip, int *nlabels,
              const char **why)
{
    char            buf[SEC_HOST_MAX_BYTES + 8];
    struct in_addr  a4;
    struct in6_addr a6;

    *is_ip = 0;
    if (n == 0 || n >= sizeof(buf)) {
        *why = n == 0 ? "empty host name" : "host name longer than 253 bytes";
        return AL_ERROR;
    }
    memcpy(buf, h, n);
    buf[n] = '\0';
    if (buf[0] == '[') {
        if (n < 3 || buf[n - 1] != ']') {
            *why = "unbalanced '[' in host";
            return AL_ERROR;
        }
        buf[n - 1] = '\0';
        if (inet_pton(AF_INET6, buf + 1, &a6) != 1) {
            *why = "bad IPv6 address";
            return AL_ERROR;
        }
        *is_ip = 1;
        return inet_ntop(AF_INET6, &a6, out, (socklen_t)outsz) != NULL ? AL_OK : AL_ERROR;
    }
    if (strchr(buf, ':') != NULL) {
        if (inet_pton(AF_INET6, buf, &a6) == 1) {
            *is_ip = 1;
            return inet_ntop(AF_INET6, &a6, out, (socklen_t)outsz) != NULL ? AL_OK : AL_ERROR;
        }
        *why = "bad host (IPv6 addresses go in brackets when a port follows)";
        return AL_ERROR;
    }
    for (size_t i = 0; i < n; i++) {
        if (buf[i] >= 'A' && buf[i] <= 'Z')
            buf[i] = (char)(buf[i] + 32);
    }
    if (n > 1 && buf[n - 1] == '.')
        buf[--n] = '\0';
    if (strspn(buf, "0123456789abcdefx.") == n && inet_aton(buf, &a4) == 1) {
        *is_ip = 1;
        return inet_ntop(AF_INET, &a4, out, (socklen_t)outsz) != NULL ? AL_OK : AL_ERROR;
    }
    if (al_host_labels_ok(buf, n, nlabels, why) != AL_OK)
        return AL_ERROR;
    if (n + 1 > outsz) {
        *why = "host name too long";
        return AL_ERROR;
    }
    memcpy(out, buf, n + 1);
    return AL_OK;
}

int
sec_host_is_ip(const char *host, size_t len)
{
    char            buf[64];
    struct in6_addr a6;
    struct in_addr  a4;

    if (len == 0 || len >= sizeof(buf))
        return 0;
    memcpy(buf, host, len);
    buf[len] = '\0';
    return inet_pton(AF_INET, buf, &a4) == 1 || inet_pton(AF_INET6, buf, &a6) == 1;
}

static int
sec_path_ok(const char *p, const char **why)
{
    for (const char *c = p; *c != '\0'; c++) {
        unsigned char u = (unsigned char)*c;

        if (u <= 0x20 || u >= 0x7f || u == '?' || u == '#') {
            *why = "path prefix may not hold spaces, control or non-ASCII bytes, '?' or '#'";
            return AL_ERROR;
        }
    }
    return AL_OK;
}

int
sec_scope_parse(const char *in, struct sec_scope *out, const char **why)
{
    char        norm[SEC_HOST_MAX_BYTES + 8];
    const char *slash, *hend, *h = in;
    size_t      hlen;
    int         suffix = 0, is_ip = 0, nlabels = 0, rc = AL_ERROR;

    memset(out, 0, sizeof(*out));
    slash = strchr(in, '/');
    hend = slash != NULL ? slash : in + strlen(in);
    if (slash != NULL) {
        if (sec_path_ok(slash, why) != AL_OK)
            goto out;
        out->path_len = strlen(slash);
        out->path = al_strndup(slash, out->path_len);
        if (out->path == NULL) {
            *why = "out of memory";
            goto out;
        }
    }
    /* port: after a ']' or the only ':' */
    {
        const char *colon = NULL;

        if (h[0] == '[') {
            const char *rb = memchr(h, ']', (size_t)(hend - h));

            if (rb == NULL) {
                *why = "unbalanced '[' in host";
                goto out;
            }
            if (rb + 1 < hend) {
                if (rb[1] != ':') {
                    *why = "junk after ']' (expected :port)";
                    goto out;
                }
                colon = rb + 1;
            }
        } else {
            const char *c1 = memchr(h, ':', (size_t)(hend - h));

            if (c1 != NULL && memchr(c1 + 1, ':', (size_t)(hend - c1 - 1)) == NULL)
                colon = c1;
        }
        if (colon != NULL) {
            char   pbuf[8];
            long   port;
            size_t plen = (size_t)(hend - colon - 1);

            if (plen == 0 || plen >= sizeof(pbuf) || strspn(colon + 1, "0123456789") < plen) {
                *why = "bad port (expected 1..65535)";
                goto out;
            }
            memcpy(pbuf, colon + 1, plen);
            pbuf[plen] = '\0';
            if (al_parse_long(pbuf, 1, 65535, &port) != AL_OK) {
                *why = "bad port (expected 1..65535)";
                goto out;
            }
            out->port = (uint16_t)port;
            hend = colon;
        }
    }
    hlen = (size_t)(hend - h);
    if (hlen == 1 && h[0] == '*') {
        out->kind = SEC_HP_ANY;
        snprintf(norm, sizeof(norm), "*");
        goto done;
    }
    if (hlen >= 2 && h[0] == '*' && h[1] == '.') {
        suffix = 1;
        h += 2;
        hlen -= 2;
    }
    if (memchr(h, '*', hlen) != NULL) {
        *why = "'*' is allowed only alone or as the whole first label (\"*.example.com\")";
        goto out;
    }
    if (sec_host_norm(h, hlen, norm, sizeof(norm), &is_ip, &nlabels, why) != AL_OK)
        goto out;
    if (suffix && is_ip) {
        *why = "a wildcard cannot cover an IP address";
        goto out;
    }
    if (suffix && nlabels < 2) {
        *why = "wildcard over a top-level domain (\"*.com\") is not allowed";
        goto out;
    }
    out->kind = suffix ? SEC_HP_SUFFIX : SEC_HP_EXACT;
done:
    out->host_len = strlen(norm);
    out->host = al_strndup(norm, out->host_len);
    if (out->host == NULL) {
        *why = "out of memory";
        goto out;
    }
    rc = AL_OK;
out:
    if (rc != AL_OK)
        sec_scope_clear(out);
    return rc;
}

void
sec_scope_clear(struct sec_scope *sc)
{
    al_safefree(sc->host);
    al_safefree(sc->path);
    sc->host_len = sc->path_len = 0;
}

static int
sec_host_eq_ci(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char x = (unsigned char)a[i], y = (unsigned char)b[i];

        if (x >= 'A' && x <= 'Z')
            x = (unsigned char)(x + 32);
        if (x != y)
            return 0;
    }
    return 1;
}

/* A path that could be rewritten by the upstream into something else. */
static int
sec_path_suspicious(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '%' && i + 2 < n) {
            char a = p[i + 1], b = (char)(p[i + 2] | 0x20);

            if (a == '2' && (b == 'e' || b == 'f'))
                return 1;
            if (a == '5' && b == 'c')
                return 1;
        }
        if (p[i] == '\\')
            return 1;
        if (p[i] == '.' && (i == 0 || p[i - 1] == '/')) {
            size_t j = i + 1;

            if (j < n && p[j] == '.')
                j++;
            if (j == n || p[j] == '/')
                return 1;
        }
    }
    return 0;
}

int
sec_scope_match(const struct sec_scope *sc, const char *host, size_t hlen, int is_ip, uint16_t port,
                const char *path, size_t path_len, int check_path)
{
    if (hlen > 0 && host[hlen - 1] == '.')
        hlen--;
    switch (sc->kind) {
    case SEC_HP_ANY:
        break;
    case SEC_HP_EXACT:
        if (hlen != sc->host_len || !sec_host_eq_ci(host, sc->host, hlen))
            return 0;
        break;
    case SEC_HP_SUFFIX:
        if (is_ip || hlen <= sc->host_len + 1 || host[hlen - sc->host_len - 1] != '.' ||
            !sec_host_eq_ci(host + hlen - sc->host_len, sc->host, sc->host_len))
            return 0;
        break;
    }
    if (sc->port != 0 && sc->port != port)
        return 0;
    if (!check_path || sc->path == NULL)
        return 1;
    if (path == NULL)
        return 0;
    {
        const char *q = memchr(path, '?', path_len);

        if (q != NULL)
            path_len = (size_t)(q - path);
    }
    if (sec_path_suspicious(path, path_len))
        return 0;
    if (path_len < sc->path_len || memcmp(path, sc->path, sc->path_len) != 0)
        return 0;
    if (sc->path[sc->path_len - 1] == '/' || path_len == sc->path_len)
        return 1;
    return path[sc->path_len] == '/';
}
