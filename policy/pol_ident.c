/*
 * pol_ident.c - sandbox identity helpers, all pure: Proxy-Authorization
 * Basic parsing (strict base64), the "SANDBOX[+SESSION]+TOOL_CALL" user
 * split, tag validation, token check against a SHA-256 hex digest in constant
 * time, and source-address matching.
 *
 * The proxy keeps the sandbox list (config) and calls these; nothing here
 * holds state or allocates. Decoded credentials live in the caller's buffers;
 * the intermediate decode buffer is wiped before returning.
 */
#include "pol_int.h"

#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <string.h>

static int
pol_b64_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Strict RFC 4648 base64 (padding required, no whitespace). Returns the
 * decoded length or -1. */
static long
pol_b64_decode(const char *in, size_t len, unsigned char *out, size_t outsz)
{
    size_t w = 0;

    if (len == 0 || len % 4 != 0)
        return -1;
    for (size_t i = 0; i < len; i += 4) {
        int      v[4], pad = 0;
        uint32_t q = 0;

        for (int k = 0; k < 4; k++) {
            unsigned char c = (unsigned char)in[i + (size_t)k];

            if (c == '=' && i + 4 == len && k >= 2) {
                v[k] = 0;
                pad++;
                continue;
            }
            if (pad > 0)
                return -1; /* data after '=' */
            v[k] = pol_b64_val(c);
            if (v[k] < 0)
                return -1;
        }
        q = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        if ((pad == 1 && (v[2] & 0x3)) || (pad == 2 && (v[1] & 0xf)))
            return -1; /* non-canonical trailing bits */
        if (w + 3 - (size_t)pad > outsz)
            return -1;
        out[w++] = (unsigned char)(q >> 16);
        if (pad < 2)
            out[w++] = (unsigned char)(q >> 8);
        if (pad < 1)
            out[w++] = (unsigned char)q;
    }
    return (long)w;
}

int
pol_ident_parse_basic(const char *value, size_t len, char *user, size_t usz, char *pass, size_t psz)
{
    unsigned char dec[POL_BASIC_MAX_BYTES];
    size_t        i = 0, colon;
    long          n = -1;
    int           rc = AL_ERROR;

    while (i < len && (value[i] == ' ' || value[i] == '\t'))
        i++;
    if (len - i < 6 || !al_strcaseeq_n(value + i, 5, "basic") ||
        (value[i + 5] != ' ' && value[i + 5] != '\t')) {
        rc = AL_DECLINED;
        goto out;
    }
    i += 6;
    while (i < len && (value[i] == ' ' || value[i] == '\t'))
        i++;
    while (len > i && (value[len - 1] == ' ' || value[len - 1] == '\t'))
        len--;
    n = pol_b64_decode(value + i, len - i, dec, sizeof(dec));
    if (n < 0)
        goto out;
    for (colon = 0; colon < (size_t)n && dec[colon] != ':'; colon++)
        ;
    if (colon == (size_t)n)
        goto out;
    for (long k = 0; k < n; k++) {
        if (dec[k] < 0x20 || dec[k] == 0x7f)
            goto out;
    }
    if (colon + 1 > usz || (size_t)n - colon - 1 + 1 > psz)
        goto out;
    memcpy(user, dec, colon);
    user[colon] = '\0';
    memcpy(pass, dec + colon + 1, (size_t)n - colon - 1);
    pass[(size_t)n - colon - 1] = '\0';
    rc = AL_OK;
out:
    OPENSSL_cleanse(dec, sizeof(dec));
    return rc;
}

int
pol_ident_tag_valid(const char *s, size_t len, size_t max)
{
    return len <= max && pol_ident_charset_ok(s, len);
}

int
pol_ident_split_user(const char *user, struct pol_ident *out)
{
    const char *part[3];
    size_t      plen[3];
    int         n = 0;
    const char *s = user;

    memset(out, 0, sizeof(*out));
    for (;;) {
        const char *plus = strchr(s, '+');
        size_t      l = plus ? (size_t)(plus - s) : strlen(s);

        if (n == 3)
            return AL_ERROR;
        part[n] = s;
        plen[n] = l;
        n++;
        if (plus == NULL)
            break;
        s = plus + 1;
    }
    if (!pol_ident_tag_valid(part[0], plen[0], POL_SANDBOX_MAX_BYTES))
        return AL_ERROR;
    for (int i = 1; i < n; i++) {
        if (!pol_ident_tag_valid(part[i], plen[i], POL_TAG_MAX_BYTES))
            return AL_ERROR;
    }
    memcpy(out->sandbox, part[0], plen[0]);
    if (n == 2) {
        memcpy(out->tool_call, part[1], plen[1]);
    } else if (n == 3) {
        memcpy(out->session, part[1], plen[1]);
        memcpy(out->tool_call, part[2], plen[2]);
    }
    return AL_OK;
}

static int
pol_hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int
pol_ident_token_ok(const char *token, size_t len, const char *hex_sha256)
{
    unsigned char want[SHA256_DIGEST_LENGTH], got[SHA256_DIGEST_LENGTH];
    int           ok = 0;

    if (hex_sha256 == NULL || strlen(hex_sha256) != 2 * SHA256_DIGEST_LENGTH)
        return 0;
    for (int i = 0; i < SHA256_DIGEST_LENGTH; i++) {
        int hi = pol_hexval(hex_sha256[2 * i]), lo = pol_hexval(hex_sha256[2 * i + 1]);

        if (hi < 0 || lo < 0)
            return 0;
        want[i] = (unsigned char)(hi << 4 | lo);
    }
    SHA256((const unsigned char *)token, len, got);
    ok = al_ct_equal(want, got, sizeof(got));
    OPENSSL_cleanse(got, sizeof(got));
    return ok;
}

int
pol_ident_source_match(const struct pol_cidr *list, int n, const struct sockaddr *peer)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    struct sockaddr_in   v4;

    if (peer->sa_family == AF_INET6) {
        const uint8_t *a = ((const struct sockaddr_in6 *)(const void *)peer)->sin6_addr.s6_addr;

        if (memcmp(a, mapped, 12) == 0) {
            memset(&v4, 0, sizeof(v4));
            v4.sin_family = AF_INET;
            memcpy(&v4.sin_addr, a + 12, 4);
            return pol_cidr_list_match(list, n, (const struct sockaddr *)&v4);
        }
    }
    return pol_cidr_list_match(list, n, peer);
}
