/*
 * px_tls_libctx.c - the OpenSSL library context of upstream TLS: the default
 * provider's algorithms, unchanged, with its decoder list cut down to the
 * SubjectPublicKeyInfo decoders that certificate parsing uses.
 *
 * DESIGN
 *
 * OpenSSL 3.0 decodes the public key of every certificate it parses through
 * OSSL_DECODER_CTX_new_for_pkey(), which walks every key manager and every
 * decoder of the library context on each call and then adds every decoder
 * that could feed those (PEM, PKCS#8, MSBLOB, PVK...). OpenSSL 3.1 caches
 * the result; Debian 12 ships 3.0. Parsing the origin's certificate was
 * about 1.1 million instructions, 15 % of a new intercepted connection, and
 * almost all of it was that walk.
 *
 * The upstream SSL_CTX therefore lives in its own library context whose only
 * provider is a view of the default one (the pattern of OpenSSL's
 * test/filterprov.c): query_operation forwards to the default provider
 * except for decoders, where it answers the default provider's
 * "structure=SubjectPublicKeyInfo" decoders only, and for key managers,
 * where it answers those of the key types TLS uses (the walk visits every
 * key manager too); capabilities (the TLS groups) are forwarded; the
 * provider context is the default provider's own, so every algorithm runs
 * exactly as it does under "default". A certificate holds its public key as
 * DER SubjectPublicKeyInfo, so nothing the upstream handshake parses needs
 * the decoders left out. The key managers left out (DHX, SM2, SipHash,
 * Poly1305, CMAC, and the KDF bridges TLS1-PRF, HKDF, scrypt) serve no TLS
 * group, signature or record MAC in OpenSSL 3.0's libssl, which reaches
 * its KDFs through EVP_KDF. Trust stores are read by the PEM reader, which
 * does not use decoders at all.
 *
 * Built once, before the workers start; read-only afterwards. When any step
 * fails, or OpenSSL is configured with providers other than "default" (FIPS,
 * legacy: OPENSSL_CONF), px_tls_libctx() answers NULL and the caller uses
 * the default library context as configured (same behaviour, slower).
 */
#include "px_ca.h"

#include <string.h>

#include <openssl/core.h>
#include <openssl/core_dispatch.h>
#include <openssl/provider.h>

#define PX_TLS_LEAN_NAME "airlock-upstream"

static OSSL_LIB_CTX   *px_lean_ctx;
static OSSL_PROVIDER  *px_lean_deflt; /* the default provider, default library context */
static OSSL_PROVIDER  *px_lean_prov;  /* ours, in px_lean_ctx */
static OSSL_ALGORITHM *px_lean_decoders, *px_lean_keymgmt;

/* Key types TLS uses: groups (DH, EC, X25519, X448), certificate and
 * handshake signatures (RSA, RSA-PSS, DSA, EC, Ed25519, Ed448), and the
 * HMAC keys of TLS 1.2 CBC records and session tickets. */
static const char *const px_lean_types[] = {"DH",   "DSA",     "RSA",   "RSA-PSS", "EC", "X25519",
                                            "X448", "ED25519", "ED448", "HMAC",    NULL};

/* 1 when the first of an algorithm's ':'-separated names is in `types`. */
static int
px_lean_named(const char *names, const char *const *types)
{
    size_t n = strcspn(names, ":");

    for (size_t i = 0; types[i] != NULL; i++) {
        if (strlen(types[i]) == n && strncmp(names, types[i], n) == 0)
            return 1;
    }
    return 0;
}

static const OSSL_ALGORITHM *
px_lean_query(void *provctx, int op, int *no_cache)
{
    (void)provctx;
    if (op == OSSL_OP_DECODER || op == OSSL_OP_KEYMGMT) {
        *no_cache = 0;
        return op == OSSL_OP_DECODER ? px_lean_decoders : px_lean_keymgmt;
    }
    return OSSL_PROVIDER_query_operation(px_lean_deflt, op, no_cache);
}

static void
px_lean_unquery(void *provctx, int op, const OSSL_ALGORITHM *algs)
{
    (void)provctx;
    if (op != OSSL_OP_DECODER && op != OSSL_OP_KEYMGMT)
        OSSL_PROVIDER_unquery_operation(px_lean_deflt, op, algs);
}

static int
px_lean_capabilities(void *provctx, const char *capability, OSSL_CALLBACK *cb, void *arg)
{
    (void)provctx;
    return OSSL_PROVIDER_get_capabilities(px_lean_deflt, capability, cb, arg);
}

static void
px_lean_teardown(void *provctx)
{
    (void)provctx; /* the context is the default provider's: it stays */
}

static const OSSL_DISPATCH px_lean_dispatch[] = {
    {OSSL_FUNC_PROVIDER_TEARDOWN, (void (*)(void))px_lean_teardown},
    {OSSL_FUNC_PROVIDER_QUERY_OPERATION, (void (*)(void))px_lean_query},
    {OSSL_FUNC_PROVIDER_UNQUERY_OPERATION, (void (*)(void))px_lean_unquery},
    {OSSL_FUNC_PROVIDER_GET_CAPABILITIES, (void (*)(void))px_lean_capabilities},
    {0, NULL}};

static int
px_lean_init(const OSSL_CORE_HANDLE *handle, const OSSL_DISPATCH *in, const OSSL_DISPATCH **out,
             void **provctx)
{
    (void)handle;
    (void)in;
    *provctx = OSSL_PROVIDER_get0_provider_ctx(px_lean_deflt);
    *out = px_lean_dispatch;
    return *provctx != NULL;
}

/*
 * A copy of the default provider's algorithms for `op` that pass the
 * filter, in its order: decoders of DER SubjectPublicKeyInfo for the key
 * types above (plus the generic "DER" one that finds the type), or key
 * managers of those types.
 */
static OSSL_ALGORITHM *
px_lean_filter(int op)
{
    const OSSL_ALGORITHM *all;
    OSSL_ALGORITHM       *keep;
    int                   no_cache = 0;
    size_t                n = 0, k = 0;

    all = OSSL_PROVIDER_query_operation(px_lean_deflt, op, &no_cache);
    if (all == NULL)
        return NULL;
    while (all[n].algorithm_names != NULL)
        n++;
    keep = al_calloc(n + 1, sizeof(*keep));
    if (keep == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        static const char *const der[] = {"DER", NULL};
        const char              *pd = all[i].property_definition;
        int                      ok;

        if (op == OSSL_OP_DECODER)
            ok = pd != NULL && strstr(pd, "structure=SubjectPublicKeyInfo") != NULL &&
                 (px_lean_named(all[i].algorithm_names, px_lean_types) ||
                  px_lean_named(all[i].algorithm_names, der));
        else
            ok = px_lean_named(all[i].algorithm_names, px_lean_types);
        if (ok)
            keep[k++] = all[i];
    }
    OSSL_PROVIDER_unquery_operation(px_lean_deflt, op, all);
    if (k == 0) {
        al_free(keep);
        return NULL;
    }
    return keep;
}

/* Sets *arg when a provider other than "default" and "base" is loaded. */
static int
px_lean_other_provider(OSSL_PROVIDER *prov, void *arg)
{
    const char *n = OSSL_PROVIDER_get0_name(prov);

    if (n == NULL || (strcmp(n, "default") != 0 && strcmp(n, "base") != 0))
        *(int *)arg = 1;
    return 1;
}

OSSL_LIB_CTX *
px_tls_libctx(void)
{
    static int tried;
    int        other = 0;

    if (tried)
        return px_lean_ctx;
    tried = 1;
    /* Only a view of what the operator's OpenSSL would use anyway: with the
     * FIPS provider, the legacy one or any other configured (OPENSSL_CONF),
     * upstream TLS keeps the default library context as configured. */
    OSSL_PROVIDER_do_all(NULL, px_lean_other_provider, &other);
    if (other || !OSSL_PROVIDER_available(NULL, "default")) {
        al_log_info("upstream TLS: OpenSSL is configured with providers other than "
                    "\"default\"; using them as configured (certificate parsing not "
                    "shortened)");
        return NULL;
    }
    px_lean_deflt = OSSL_PROVIDER_load(NULL, "default");
    if (px_lean_deflt == NULL)
        goto fail;
    px_lean_decoders = px_lean_filter(OSSL_OP_DECODER);
    px_lean_keymgmt = px_lean_filter(OSSL_OP_KEYMGMT);
    if (px_lean_decoders == NULL || px_lean_keymgmt == NULL)
        goto fail;
    px_lean_ctx = OSSL_LIB_CTX_new();
    if (px_lean_ctx == NULL ||
        OSSL_PROVIDER_add_builtin(px_lean_ctx, PX_TLS_LEAN_NAME, px_lean_init) != 1)
        goto fail;
    px_lean_prov = OSSL_PROVIDER_load(px_lean_ctx, PX_TLS_LEAN_NAME);
    if (px_lean_prov == NULL)
        goto fail;
    return px_lean_ctx;
fail:
    px_tls_log_errors("building the upstream TLS library context (using the default)");
    px_tls_libctx_free();
    return NULL;
}

void
px_tls_libctx_free(void)
{
    if (px_lean_prov != NULL)
        OSSL_PROVIDER_unload(px_lean_prov);
    OSSL_LIB_CTX_free(px_lean_ctx);
    if (px_lean_deflt != NULL)
        OSSL_PROVIDER_unload(px_lean_deflt);
    al_free(px_lean_decoders);
    al_free(px_lean_keymgmt);
    px_lean_keymgmt = NULL;
    px_lean_prov = NULL;
    px_lean_ctx = NULL;
    px_lean_deflt = NULL;
    px_lean_decoders = NULL;
}
