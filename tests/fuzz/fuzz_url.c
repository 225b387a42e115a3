/*
 * fuzz_url.c - px_url_parse_absolute, px_authority_parse, px_host_normalize.
 *
 * Input: byte 0 picks the authority default port (bit 0: 0 or 443); the rest
 * is the string under test. Oracles: outputs are NUL-terminated and within
 * their bounds; path points inside the input and starts with '/' (or '?'
 * with path_needs_slash); a port is never 0; a normalised host normalises
 * to itself (same kind); IPv4 output is a dotted quad.
 */
#include <arpa/inet.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "proxy/px_url.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
fz_check_host(const char *host, enum px_host_kind kind)
{
    char              again[PX_HOST_MAX + 1];
    enum px_host_kind k2;
    const char       *err = NULL;
    size_t            n = strnlen(host, PX_HOST_MAX + 1);
    unsigned char     a[16];

    if (n == 0 || n > PX_HOST_MAX)
        abort();
    if (px_host_normalize(host, n, again, sizeof(again), &k2, &err) != AL_OK)
        abort(); /* a normalised host must stay acceptable */
    if (k2 != kind || strcmp(again, host) != 0)
        abort(); /* normalisation is idempotent */
    if (kind == PX_HOST_IPV4 && inet_pton(AF_INET, host, a) != 1)
        abort();
    if (kind == PX_HOST_IPV6 && inet_pton(AF_INET6, host, a) != 1)
        abort();
    if (kind == PX_HOST_NAME && (inet_pton(AF_INET, host, a) == 1 || strchr(host, ':') != NULL))
        abort(); /* a literal must never be classed as a name */
}

static void
fz_check_target(const struct px_target *t, const char *in, size_t len, int absolute)
{
    if (t->port == 0)
        abort();
    fz_check_host(t->host, t->kind);
    if (!absolute)
        return;
    if (t->path == NULL || t->path_len == 0)
        abort();
    if (t->path < in || t->path + t->path_len > in + len) {
        if (t->path_len != 1 || t->path[0] != '/')
            abort(); /* outside the input only as the static "/" */
    }
    if (t->path_needs_slash ? t->path[0] != '?' : t->path[0] != '/')
        abort();
    if (memchr(t->path, '#', t->path_len) != NULL || memchr(t->path, ' ', t->path_len) != NULL)
        abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct px_target  t;
    const char       *err = NULL;
    char             *s;
    char              host[PX_HOST_MAX + 1];
    enum px_host_kind kind;
    size_t            n;
    uint16_t          defport;

    if (size < 1)
        return 0;
    defport = (data[0] & 1) ? 443 : 0;
    n = size - 1;
    /* Exact-size heap copy, not NUL-terminated: reads past n trip ASan. */
    s = malloc(n ? n : 1);
    if (s == NULL)
        return 0;
    memcpy(s, data + 1, n);

    if (px_url_parse_absolute(s, n, &t, &err) == AL_OK)
        fz_check_target(&t, s, n, 1);
    else if (err == NULL)
        abort();

    err = NULL;
    if (px_authority_parse(s, n, defport, &t, &err) == AL_OK) {
        fz_check_target(&t, s, n, 0);
        if (defport == 0 && !t.port_given)
            abort();
    } else if (err == NULL) {
        abort();
    }

    err = NULL;
    memset(host, 'X', sizeof(host));
    if (px_host_normalize(s, n, host, sizeof(host), &kind, &err) == AL_OK)
        fz_check_host(host, kind);
    else if (err == NULL)
        abort();

    free(s);
    return 0;
}
