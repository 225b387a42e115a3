/*
 * pol_host.c - host patterns: validation and normalisation at load time,
 * matching and coverage, and the string hash table the compiled policy uses.
 *
 * Patterns: an exact name or IP literal, "*.example.com" (one or more labels
 * in front of a name of at least two labels), or "*" (anything, IP literals
 * included). Names are lowercased, IDN converted to punycode (libidn2,
 * UTS #46 non-transitional, falling back to transitional so that symbols such
 * as U+1F510 still map), one trailing dot dropped; labels are 1..63 bytes of
 * [a-z0-9_-] not starting or ending with '-', 253 bytes in all, and the last
 * label must not be numeric. IPv4 literals in any inet_aton spelling become a
 * dotted quad, IPv6 literals their inet_ntop form - the same forms the proxy
 * produces for request hosts.
 *
 * The hash table maps a key (exact host or suffix) to the ascending list of
 * rule indexes carrying it. It is built once and only read afterwards.
 */
#include "pol_int.h"

#include <arpa/inet.h>
#include <idn2.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

uint64_t
pol_hash(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL;

    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

/*
 * Normalises a DNS name into out (NUL-terminated). Returns AL_OK or AL_ERROR
 * with *why.
 */
static int
pol_host_name_norm(const char *in, char *out, size_t outsz, int *nlabels, const char **why)
{
    char   buf[1024];
    char  *idn = NULL;
    size_t len = strlen(in);
    int    ascii = 1, xn = 0, rc = AL_ERROR;

    if (len >= sizeof(buf)) {
        *why = "host name too long";
        goto out;
    }
    memcpy(buf, in, len + 1);
    if (len > 0 && buf[len - 1] == '.')
        buf[--len] = '\0';
    if (len == 0 || buf[len - 1] == '.') {
        *why = "empty label in host name";
        goto out;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)buf[i];

        if (c >= 0x80)
            ascii = 0;
        else if (c < 0x21 || c == 0x7f) {
            *why = "control character or space in host name";
            goto out;
        } else if (c >= 'A' && c <= 'Z')
            buf[i] = (char)(c + 32);
    }
    if (ascii) {
        for (size_t i = 0; i + 4 <= len; i++) {
            if ((i == 0 || buf[i - 1] == '.') && memcmp(buf + i, "xn--", 4) == 0)
                xn = 1;
        }
    }
    if (!ascii || xn) {
        if (strstr(buf, "..") != NULL) {
            *why = "empty label in host name";
            goto out;
        }
        if (idn2_to_ascii_8z(buf, &idn, IDN2_NONTRANSITIONAL) != IDN2_OK &&
            idn2_to_ascii_8z(buf, &idn, IDN2_TRANSITIONAL) != IDN2_OK) {
            idn = NULL;
            *why = "not a valid internationalised (IDNA) host name";
            goto out;
        }
        len = strlen(idn);
        if (len >= sizeof(buf)) {
            *why = "host name too long";
            goto out;
        }
        memcpy(buf, idn, len + 1);
    }
    if (al_host_labels_ok(buf, len, nlabels, why) != AL_OK)
        goto out;
    if (len + 1 > outsz) {
        *why = "host name too long";
        goto out;
    }
    memcpy(out, buf, len + 1);
    rc = AL_OK;
out:
    if (idn != NULL)
        idn2_free(idn);
    return rc;
}

int
pol_hostpat_parse(const char *in, struct pol_hostpat *out, const char **why)
{
    char                    norm[POL_HOST_MAX_BYTES + 1];
    const char             *rest = in;
    struct sockaddr_storage ss;
    int                     suffix = 0, nlabels = 0, rc = AL_ERROR;

    memset(out, 0, sizeof(*out));
    if (in[0] == '\0') {
        *why = "empty host pattern";
        goto out;
    }
    if (strcmp(in, "*") == 0) {
        out->kind = POL_HP_ANY;
        snprintf(norm, sizeof(norm), "*");
        goto done;
    }
    if (strncmp(in, "*.", 2) == 0) {
        suffix = 1;
        rest = in + 2;
    }
    if (strchr(rest, '*') != NULL) {
        *why = "'*' is allowed only alone or as the whole first label (\"*.example.com\")";
        goto out;
    }
    if (pol_addr_parse_literal(rest, strlen(rest), &ss) == AL_OK) {
        const void *a = ss.ss_family == AF_INET
                            ? (const void *)&((struct sockaddr_in *)&ss)->sin_addr
                            : (const void *)&((struct sockaddr_in6 *)&ss)->sin6_addr;

        if (suffix) {
            *why = "a wildcard cannot cover an IP address";
            goto out;
        }
        if (inet_ntop(ss.ss_family, a, norm, sizeof(norm)) == NULL) {
            *why = "bad IP address";
            goto out;
        }
        out->kind = POL_HP_EXACT;
        goto done;
    }
    if (strchr(rest, ':') != NULL || strchr(rest, '[') != NULL || strchr(rest, '%') != NULL) {
        *why = "not a host name or IP address (no ports, brackets or zone ids here)";
        goto out;
    }
    if (pol_host_name_norm(rest, norm, sizeof(norm), &nlabels, why) != AL_OK)
        goto out;
    if (suffix && nlabels < 2) {
        *why = "wildcard over a top-level domain (\"*.com\") is not allowed";
        goto out;
    }
    out->kind = suffix ? POL_HP_SUFFIX : POL_HP_EXACT;
done:
    out->len = strlen(norm);
    out->name = al_strndup(norm, out->len);
    if (out->name == NULL) {
        *why = "out of memory";
        goto out;
    }
    rc = AL_OK;
out:
    return rc;
}

int
pol_hostpat_match(const struct pol_hostpat *hp, const char *host, size_t hlen, int is_ip)
{
    switch (hp->kind) {
    case POL_HP_ANY:
        return 1;
    case POL_HP_EXACT:
        return hlen == hp->len && memcmp(host, hp->name, hlen) == 0;
    case POL_HP_SUFFIX:
        return !is_ip && hlen > hp->len + 1 && host[hlen - hp->len - 1] == '.' &&
               memcmp(host + hlen - hp->len, hp->name, hp->len) == 0;
    }
    return 0;
}

int
pol_hostpat_covers(const struct pol_hostpat *a, const struct pol_hostpat *b)
{
    if (a->kind == POL_HP_ANY)
        return 1;
    if (b->kind == POL_HP_ANY)
        return 0;
    if (a->kind == POL_HP_EXACT)
        return b->kind == POL_HP_EXACT && a->len == b->len && memcmp(a->name, b->name, a->len) == 0;
    /* a is a suffix pattern */
    if (b->kind == POL_HP_EXACT)
        return pol_hostpat_match(a, b->name, b->len, 0);
    return (b->len == a->len && memcmp(a->name, b->name, a->len) == 0) ||
           pol_hostpat_match(a, b->name, b->len, 0);
}

/* ---- hash table ------------------------------------------------------------ */

int
pol_htab_init(struct pol_htab *t, size_t nkeys)
{
    size_t cap = 16;

    while (cap < nkeys * 2)
        cap <<= 1;
    t->ents = al_calloc(cap, sizeof(*t->ents));
    if (t->ents == NULL)
        return AL_ERROR;
    t->mask = cap - 1;
    t->used = 0;
    return AL_OK;
}

static struct pol_hent *
pol_htab_slot(const struct pol_htab *t, const char *key, size_t klen, uint64_t h)
{
    size_t i = (size_t)h & t->mask;

    for (;;) {
        struct pol_hent *e = &t->ents[i];

        if (e->key == NULL)
            return e;
        if (e->hash == h && e->klen == klen && memcmp(e->key, key, klen) == 0)
            return e;
        i = (i + 1) & t->mask;
    }
}

/* The table was sized for all keys up front (pol_htab_init), so it never
 * fills; rules are added in ascending order. */
int
pol_htab_add(struct pol_htab *t, const char *key, size_t klen, int rule)
{
    uint64_t         h = pol_hash(key, klen);
    struct pol_hent *e = pol_htab_slot(t, key, klen, h);

    if (e->key == NULL) {
        if ((t->used + 1) * 2 > t->mask + 1)
            return AL_ERROR;
        e->key = key;
        e->klen = klen;
        e->hash = h;
        t->used++;
    }
    if (e->nrules > 0 && e->rules[e->nrules - 1] == rule)
        return AL_OK;
    if (e->nrules == e->cap) {
        int  ncap = e->cap ? e->cap * 2 : 2;
        int *nr = al_realloc(e->rules, (size_t)ncap * sizeof(*nr));

        if (nr == NULL)
            return AL_ERROR;
        e->rules = nr;
        e->cap = ncap;
    }
    e->rules[e->nrules++] = rule;
    return AL_OK;
}

const struct pol_hent *
pol_htab_get(const struct pol_htab *t, const char *key, size_t klen)
{
    const struct pol_hent *e;

    if (t->ents == NULL)
        return NULL;
    e = pol_htab_slot(t, key, klen, pol_hash(key, klen));
    return e->key != NULL ? e : NULL;
}

void
pol_htab_free(struct pol_htab *t)
{
    if (t->ents == NULL)
        return;
    for (size_t i = 0; i <= t->mask; i++)
        al_free(t->ents[i].rules);
    al_safefree(t->ents);
}
