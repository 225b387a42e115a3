/*
 * fuzz_policy.c - pol_decide on a fixed policy, plus the policy module's
 * string parsers (paths, IP literals, Basic credentials, CIDRs, user tags).
 *
 * Input: byte 0 = flags (bit 0 want_explain, bit 1 caller scratch, bits 2-3
 * sandbox NULL/ci/dev/other, bits 4-5 scheme http/https/connect/NULL, bit 6
 * method from the input instead of the fixed list, bit 7 the dry-run copy of
 * the policy); bytes 1-2 = port; byte 3 = method index; the rest =
 * "host\nmethod\npath" (missing fields empty; the host goes through
 * px_host_normalize first, as the proxy does). The parsers get the rest too.
 *
 * Oracles for pol_decide (the fixed policy below): hosts under
 * *.evil.example are never allowed; an allow by a rule honours that rule's
 * ports / methods / paths (after pol_path_normalize: no "/repos/../user"
 * escape) and sandboxes; an encoded slash is allowed only by "slash"; a
 * tunnel never matches a rule with paths or methods unless it intercepts
 * or lists CONNECT. pol_addr_parse_literal accepts only literal bytes
 * (no junk after a tab or NUL). For pol_path_normalize: output starts with '/', has no
 * dot segments, and normalising it again changes nothing.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "policy/policy.h"
#include "proxy/px_url.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static const char fz_policy_text[] =
    "{\"rules\": [\n"
    " {\"name\": \"github\", \"hosts\": [\"api.github.com\", \"*.githubusercontent.com\"],\n"
    "  \"ports\": [443], \"methods\": [\"GET\", \"POST\"], \"paths\": [\"/repos/**\"],\n"
    "  \"sandboxes\": [\"ci\", \"dev\"], \"action\": \"allow\", \"intercept\": true,\n"
    "  \"inject\": [\"github_token\"]},\n"
    " {\"name\": \"pypi\", \"hosts\": [\"pypi.org\", \"files.pythonhosted.org\"]},\n"
    " {\"name\": \"stage-block-uploads\", \"hosts\": [\"*\"], \"methods\": [\"PUT\"],\n"
    "  \"action\": \"deny\", \"mode\": \"dry-run\"},\n"
    " {\"name\": \"deny-evil\", \"hosts\": [\"*.evil.example\"], \"action\": \"deny\"},\n"
    " {\"name\": \"wild\", \"hosts\": [\"*.example.org\"], \"methods\": [\"GET\"],\n"
    "  \"paths\": [\"/a/*/c\", \"/files/*.txt\", \"/\"]},\n"
    " {\"name\": \"slash\", \"hosts\": [\"enc.example.net\"], \"paths\": [\"/x/**\"],\n"
    "  \"allow_encoded_slash\": true},\n"
    " {\"name\": \"tunnel-only\", \"hosts\": [\"ssh.example.net\"], \"ports\": [22],\n"
    "  \"methods\": [\"CONNECT\"]},\n"
    " {\"name\": \"opaque-paths\", \"hosts\": [\"opaque.example.net\"], \"paths\": [\"/v1/**\"]},\n"
    " {\"name\": \"ip\", \"hosts\": [\"127.0.0.1\", \"[::1]\"], \"cidrs\": [\"127.0.0.1/32\"]}\n"
    "]}\n";

static struct pol_policy *fz_pol[2];

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    al_log_set_level(AL_LOG_OFF);
    for (int dry = 0; dry < 2; dry++) {
        struct al_errs errs;

        al_errs_init(&errs);
        fz_pol[dry] =
            pol_load_text("fuzz.json", fz_policy_text, strlen(fz_policy_text), NULL, 0, dry, &errs);
        al_errs_free(&errs);
        if (fz_pol[dry] == NULL)
            abort();
    }
    return 0;
}

static int
fz_has_suffix(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);

    return n > m && strcmp(s + n - m, suf) == 0;
}

/* Normalises in[0..len) into a fresh exact-size buffer; checks the result. */
static char *
fz_normalize(const char *in, size_t len, size_t *outlen, int *enc)
{
    char  *out = malloc(len + 1);
    size_t n2;
    int    e2;
    char  *again;

    if (out == NULL)
        return NULL;
    *enc = 0;
    if (pol_path_normalize(in, len, out, len + 1, outlen, enc) != AL_OK) {
        free(out);
        return NULL;
    }
    if (*outlen > len || out[*outlen] != '\0' || strlen(out) != *outlen || out[0] != '/')
        abort();
    if (strstr(out, "/./") || strstr(out, "/../") || fz_has_suffix(out, "/.") ||
        fz_has_suffix(out, "/..") || strcmp(out, "/.") == 0 || strcmp(out, "/..") == 0)
        abort(); /* a dot segment survived */
    again = malloc(*outlen + 1);
    if (again == NULL)
        abort();
    if (pol_path_normalize(out, *outlen, again, *outlen + 1, &n2, &e2) != AL_OK)
        abort(); /* a normalised path must stay acceptable */
    if (n2 != *outlen || memcmp(again, out, n2) != 0)
        abort(); /* normalisation is idempotent */
    free(again);
    return out;
}

static int
fz_in(const char *s, const char *const *list)
{
    for (; *list != NULL; list++)
        if (strcmp(s, *list) == 0)
            return 1;
    return 0;
}

static void
fz_decide(const uint8_t *data, size_t size)
{
    static const char *const methods[] = {"GET",  "POST",    "PUT",     "DELETE",
                                          "HEAD", "CONNECT", "OPTIONS", "PATCH"};
    static const char *const sandboxes[] = {NULL, "ci", "dev", "other"};
    static const char *const schemes[] = {"http", "https", "connect", NULL};
    const char              *rest = (const char *)data + 4, *end = (const char *)data + size;
    const char              *nl1, *nl2, *path;
    char                     host[PX_HOST_MAX + 1], method[64];
    enum px_host_kind        kind;
    struct pol_request       rq;
    struct pol_decision      d;
    const struct pol_policy *p = fz_pol[data[0] >> 7];
    size_t                   path_len, np = 0;
    char                    *scratch = NULL, *norm = NULL;
    int                      tunnel, enc = 0;

    nl1 = memchr(rest, '\n', (size_t)(end - rest));
    if (nl1 == NULL)
        nl1 = end;
    if (px_host_normalize(rest, (size_t)(nl1 - rest), host, sizeof(host), &kind, NULL) != AL_OK)
        return; /* the proxy answers 400 before asking the policy */
    path = nl1 < end ? nl1 + 1 : end;
    nl2 = memchr(path, '\n', (size_t)(end - path));
    snprintf(method, sizeof(method), "%s", methods[data[3] % 8]);
    if (nl2 != NULL) {
        if (data[0] & 0x40) {
            size_t ml = (size_t)(nl2 - path);

            if (ml >= sizeof(method) || memchr(path, '\0', ml) != NULL)
                return;
            memcpy(method, path, ml);
            method[ml] = '\0';
        }
        path = nl2 + 1;
    }
    path_len = (size_t)(end - path);

    memset(&rq, 0, sizeof(rq));
    rq.sandbox = sandboxes[(data[0] >> 2) & 3];
    rq.scheme = schemes[(data[0] >> 4) & 3];
    rq.host = host;
    rq.host_is_ip = kind != PX_HOST_NAME;
    rq.port = (uint16_t)(data[1] << 8 | data[2]);
    rq.method = method;
    tunnel = strcmp(method, "CONNECT") == 0 || (rq.scheme && strcmp(rq.scheme, "connect") == 0);
    rq.path = tunnel ? NULL : path;
    rq.path_len = tunnel ? 0 : path_len;
    rq.want_explain = data[0] & 1;
    if ((data[0] & 2) && !tunnel) {
        /* policy.h says ">= path_len", but pol_path_normalize needs room for
         * the NUL (px_decide.c passes path_len + 1): a scratch of exactly
         * path_len fails every query-less path as bad_path. */
        scratch = malloc(path_len + 1);
        rq.scratch = scratch;
        rq.scratch_len = path_len + 1;
    }
    memset(&d, 0x5a, sizeof(d));
    pol_decide(p, &rq, &d);
    if (d.rule == NULL || d.reason == NULL || (unsigned)d.verdict > POL_WOULD_DENY)
        abort();
    if (strnlen(d.explain, sizeof(d.explain)) >= sizeof(d.explain))
        abort();
    (void)pol_verdict_name(d.verdict);
    if (scratch != NULL && path_len < POL_PATH_STACK_BYTES - 1) {
        struct pol_decision d2;

        rq.scratch = NULL;
        rq.scratch_len = 0;
        pol_decide(p, &rq, &d2);
        if (d2.verdict != d.verdict || strcmp(d2.rule, d.rule) != 0 ||
            strcmp(d2.reason, d.reason) != 0)
            abort(); /* the caller's scratch changes nothing */
    }
    if (d.ninject < 0 || (d.ninject > 0 && d.inject == NULL))
        abort();

    if (!tunnel)
        norm = fz_normalize(path, path_len, &np, &enc);

    if (d.verdict == POL_ALLOW) {
        if (fz_has_suffix(host, ".evil.example"))
            abort();
        if (!tunnel && norm == NULL)
            abort(); /* allowed a path that does not normalise */
        if (!tunnel && enc && strcmp(d.rule, "slash") != 0)
            abort();
        if (strcmp(d.rule, "github") == 0) {
            static const char *const gm[] = {"GET", "POST", NULL};

            if (rq.port != 443 || rq.sandbox == NULL || strcmp(rq.sandbox, "other") == 0)
                abort();
            if (!tunnel && (!fz_in(method, gm) ||
                            !(strcmp(norm, "/repos") == 0 || strncmp(norm, "/repos/", 7) == 0)))
                abort();
        } else if (strcmp(d.rule, "wild") == 0) {
            if (tunnel || strcmp(method, "GET") != 0)
                abort();
        } else if (strcmp(d.rule, "opaque-paths") == 0) {
            if (tunnel || strncmp(norm, "/v1/", 4) != 0)
                abort();
        } else if (strcmp(d.rule, "tunnel-only") == 0) {
            if (!tunnel || rq.port != 22)
                abort();
        } else if (strcmp(d.rule, "slash") == 0) {
            if (!tunnel && strcmp(norm, "/x") != 0 && strncmp(norm, "/x/", 3) != 0)
                abort();
        }
    }
    free(norm);
    free(scratch);
}

static void
fz_parsers(const char *s, size_t n)
{
    struct sockaddr_storage ss;
    char                    user[POL_BASIC_MAX_BYTES + 1], pass[POL_BASIC_MAX_BYTES + 1];
    char                    small_u[8], small_p[8];
    char                   *z;
    struct pol_cidr         c;
    struct pol_ident        id;
    size_t                  np;
    int                     enc;

    free(fz_normalize(s, n, &np, &enc));

    if (pol_addr_parse_literal(s, n, &ss) == AL_OK) {
        char              host[PX_HOST_MAX + 1];
        enum px_host_kind kind;
        unsigned char     a[16];

        if (ss.ss_family != AF_INET && ss.ss_family != AF_INET6)
            abort();
        /* An IP literal is made of these bytes only: no trailing junk after
         * a tab/newline/NUL that inet_aton would skip. */
        for (size_t i = 0; i < n; i++)
            if (strchr("0123456789abcdefABCDEFxX.:[]", s[i]) == NULL || s[i] == '\0')
                abort();
        (void)pol_addr_class_name(pol_addr_classify((const struct sockaddr *)&ss));
        /* What the policy reads as an IP literal, the proxy must read as the
         * same literal (never as a DNS name). */
        if (n > 0 && s[0] != '[') {
            if (px_host_normalize(s, n, host, sizeof(host), &kind, NULL) == AL_OK) {
                if (kind == PX_HOST_NAME)
                    abort();
                if (ss.ss_family == AF_INET
                        ? inet_pton(AF_INET, host, a) != 1 ||
                              memcmp(a, &((struct sockaddr_in *)&ss)->sin_addr, 4) != 0
                        : inet_pton(AF_INET6, host, a) != 1 ||
                              memcmp(a, &((struct sockaddr_in6 *)&ss)->sin6_addr, 16) != 0)
                    abort();
            }
        }
    }

    if (pol_ident_parse_basic(s, n, user, sizeof(user), pass, sizeof(pass)) == AL_OK) {
        if (strnlen(user, sizeof(user)) >= sizeof(user) ||
            strnlen(pass, sizeof(pass)) >= sizeof(pass))
            abort();
        (void)pol_ident_split_user(user, &id);
    }
    if (pol_ident_parse_basic(s, n, small_u, sizeof(small_u), small_p, sizeof(small_p)) == AL_OK) {
        if (strnlen(small_u, sizeof(small_u)) >= sizeof(small_u) ||
            strnlen(small_p, sizeof(small_p)) >= sizeof(small_p))
            abort();
    }
    (void)pol_ident_tag_valid(s, n, POL_TAG_MAX_BYTES);
    (void)pol_ident_token_ok(s, n,
                             "0000000000000000000000000000000000000000000000000000000000000000");

    z = malloc(n + 1);
    if (z == NULL)
        return;
    memcpy(z, s, n);
    z[n] = '\0';
    if (pol_cidr_parse(z, &c) == AL_OK) {
        if ((c.family != AF_INET && c.family != AF_INET6) || c.prefix < 0 ||
            c.prefix > (c.family == AF_INET ? 32 : 128))
            abort();
        if (pol_addr_parse_literal(z, strcspn(z, "/"), &ss) == AL_OK)
            (void)pol_cidr_contains(&c, (const struct sockaddr *)&ss);
    }
    if (strlen(z) == n)
        (void)pol_ident_split_user(z, &id);
    free(z);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s;

    if (size < 4)
        return 0;
    fz_decide(data, size);
    /* exact-size heap copy so over-reads trip ASan */
    s = malloc(size - 4 ? size - 4 : 1);
    if (s == NULL)
        return 0;
    memcpy(s, data + 4, size - 4);
    fz_parsers(s, size - 4);
    free(s);
    return 0;
}
