/*
 * px_ca.h - the interception CA and minted leaf certificates (px_ca.c), the
 * TLS contexts built on them (px_ca_tls.c), and `airlock ca ...`
 * (px_ca_cli.c).
 *
 * Ownership in one paragraph: a struct px_ca is reference counted
 * (px_ca_load returns one reference; px_tls_server_ctx takes its own, dropped
 * when the SSL_CTX is freed), so the caller may px_ca_free() its reference as
 * soon as the contexts are built. Everything here is safe to call from any
 * worker thread: the leaf cache is guarded by a mutex and the counters are
 * atomics. SSL_CTXs are shared by all workers; per-connection state lives in
 * the SSL's ex_data and is freed with the SSL.
 */
#ifndef PX_CA_H
#define PX_CA_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "common.h"

/* ---- limits and defaults ----------------------------------------------- */
#define PX_CA_CACHE_ENTRIES 1024           /* minted leaves kept (LRU) */
#define PX_CA_VALID_DAYS 3650              /* CA certificate lifetime */
#define PX_CA_LEAF_VALID_S (7 * 24 * 3600) /* leaf notAfter = now + this */
#define PX_CA_LEAF_BACKDATE_S 3600         /* leaf notBefore = now - this */
#define PX_CA_LEAF_REUSE_MARGIN_S                                                                  \
    (24 * 3600)                 /* a cached leaf is dropped this long before notAfter */
#define PX_CA_HOST_MAX 253      /* longest DNS name accepted */
#define PX_CA_CN_MAX 64         /* ub-common-name; longer names are cut in the CN */
#define PX_TLS_SESS_ENTRIES 256 /* upstream sessions kept (host:port, LRU) */
#ifndef PX_TLS_TICKETS
#define PX_TLS_TICKETS 1 /* TLS 1.3 session tickets sent to each intercepted client */
#endif
#define PX_CA_SYSTEM_ROOTS "/etc/ssl/certs/ca-certificates.crt"
#define PX_CA_CERT_FILE "ca.pem"
#define PX_CA_KEY_FILE "ca.key"
#define PX_CA_BUNDLE_FILE "bundle.pem"

struct px_ca;

/* ---- the CA on disk ------------------------------------------------------ */
/*
 * Creates DIR (0700, parents too) and writes a new ECDSA P-256 CA: ca.key
 * (0600, PKCS#8 PEM) and ca.pem (self-signed, CN "airlock interception CA
 * <random>", CA:TRUE pathlen:0, keyCertSign+cRLSign, SKI, 10 years).
 * Without `force`, an existing ca.key or ca.pem is never touched: returns
 * AL_DECLINED with the reason in errs. With `force`, both are replaced
 * atomically (temporary file + rename). Returns AL_OK or AL_ERROR.
 */
int px_ca_init_dir(const char *dir, int force, struct al_errs *errs);

/*
 * Writes DIR/bundle.pem = the system roots (`roots`, NULL for
 * PX_CA_SYSTEM_ROOTS; skipped with a warning when unreadable) followed by
 * DIR/ca.pem. Returns AL_OK, AL_DECLINED (no ca.pem in DIR) or AL_ERROR.
 */
int px_ca_write_bundle(const char *dir, const char *roots, struct al_errs *errs);

/*
 * Loads DIR/ca.pem and DIR/ca.key, checks that the certificate is a CA, is
 * within its validity and matches the key, and generates the shared leaf key
 * (EC P-256, memory only). A key file readable by group or others is a
 * warning (errs->warnings). Returns one reference owned by the caller, or
 * NULL with the reasons in errs. px_ca_load_ex sets the cache capacity
 * (tests); px_ca_load uses PX_CA_CACHE_ENTRIES.
 */
struct px_ca *px_ca_load(const char *dir, struct al_errs *errs);
struct px_ca *px_ca_load_ex(const char *dir, size_t cache_entries, struct al_errs *errs);
/* Takes one more reference. */
struct px_ca *px_ca_ref(struct px_ca *ca);
/* Drops one reference (NULL is fine); the last one frees the CA, the cache
 * and the keys (wiped by OpenSSL's free). */
void px_ca_free(struct px_ca *ca);

/* Borrowed pointers valid while the caller holds a reference. */
X509     *px_ca_cert(const struct px_ca *ca);
EVP_PKEY *px_ca_leaf_key(const struct px_ca *ca);

/*
 * Checks and normalises a host for a certificate: IP literals (v4, v6, with
 * or without [brackets]) become their canonical text and *is_ip = 1; names
 * are lowercased, a trailing dot is dropped, and they must be 1..253 bytes
 * of LDH labels (underscore allowed, 1..63 per label). `is_ip` on input is a
 * hint only: a literal is recognised either way. Returns AL_OK or AL_ERROR.
 */
int px_ca_host_normalize(const char *in, char *out, size_t outsz, int *is_ip);

/*
 * A leaf certificate for `host` (normalised as above), signed by the CA:
 * CN=host (cut at 64), SAN DNS:host or IP:addr, serverAuth, CA:FALSE,
 * digitalSignature, AKI = CA SKI, notBefore now-1h, notAfter now+7d, random
 * 128-bit serial, SHA-256, public key = the shared leaf key. Served from
 * the LRU cache when a fresh one is there; signing happens outside the cache
 * lock. Returns a new reference the caller X509_free()s, or NULL (bad host,
 * no memory; logged).
 */
X509 *px_ca_leaf(struct px_ca *ca, const char *host, int is_ip);

/* Leaves minted and cache hits since load (relaxed atomics). */
void px_ca_stats(const struct px_ca *ca, uint64_t *mints, uint64_t *hits);
/* Entries in the leaf cache right now. */
size_t px_ca_cache_count(struct px_ca *ca);

/* ---- TLS toward the client (interception) -------------------------------- */
/*
 * A server SSL_CTX for intercepted connections, shared by all workers: TLS
 * >= 1.2, the shared leaf key, the certificate chosen per handshake from the
 * SNI (or the default host, below) and minted through px_ca_leaf, ALPN
 * "http/1.1" only (a client offering ALPN without http/1.1 is refused with
 * no_application_protocol; one offering no ALPN is fine), session tickets
 * and a server session cache. Takes its own reference on `ca`. Returns a
 * context owned by the caller (SSL_CTX_free), or NULL (logged).
 */
SSL_CTX *px_tls_server_ctx(struct px_ca *ca);
/*
 * The CONNECT host (copied): the host minted for when the client sends no
 * SNI, and the host an SNI is compared with (after normalisation, so
 * "API.Test." matches "api.test"). With `strict`, an SNI naming another host
 * fails the handshake (unrecognized_name) before anything is minted;
 * without, the handshake goes on with a leaf for the SNI and
 * px_tls_sni_mismatch() tells the caller to answer 421. Call before the
 * handshake. Returns AL_OK or AL_ERROR (no memory).
 */
int px_tls_set_default_host(SSL *ssl, const char *host, int is_ip, int strict);
/* The SNI the client sent, or NULL. Borrowed, valid while the SSL lives. */
const char *px_tls_sni(SSL *ssl);
/* 1 when the handshake failed because the client offered ALPN without
 * http/1.1 (audit reason h2_not_supported). */
int px_tls_alpn_refused(SSL *ssl);
/* 1 when the handshake failed because the SNI was not a valid host name. */
int px_tls_sni_refused(SSL *ssl);
/* 1 when the client's SNI named a host other than the default host (the
 * handshake failed if strict; otherwise the leaf is for the SNI's host). */
int px_tls_sni_mismatch(SSL *ssl);

/* ---- TLS toward the upstream --------------------------------------------- */
/*
 * A client SSL_CTX: peer verification always on, against `ca_file` (a PEM
 * bundle) or the system default paths when NULL; TLS >= 1.2; ALPN
 * "http/1.1"; a client session cache keyed by host:port (bounded, shared by
 * all SSLs made from this context). With verify_cache_s > 0, a chain that
 * passed verification for a host:port passes again without a chain build
 * when the peer sends the same certificates within that many seconds (and
 * before any of them expires); 0 verifies every chain in full. Returns a
 * context owned by the caller, or NULL with the reason in errs.
 */
SSL_CTX *px_tls_upstream_ctx(const char *ca_file, int verify_cache_s, struct al_errs *errs);
/* Chains that passed from the verdict cache, and full verifications. */
void px_tls_upstream_stats(SSL_CTX *ctx, uint64_t *verify_hits, uint64_t *verify_full);
/*
 * Per connection, before the handshake: SNI (names only), the name or IP
 * address the certificate must carry, and a cached session for host:port
 * if one is there. Returns AL_OK or AL_ERROR.
 */
int px_tls_upstream_prepare(SSL *ssl, const char *host, uint16_t port, int is_ip);
/*
 * After a failed upstream handshake: the short reason code for the
 * certificate verdict, or NULL when verification did not fail:
 * upstream_cert_untrusted, upstream_cert_expired (or not yet valid),
 * upstream_cert_name_mismatch, upstream_cert_invalid (anything else).
 */
const char *px_tls_verify_error(SSL *ssl);

/*
 * The library context upstream TLS runs in (px_tls_libctx.c): the default
 * provider's algorithms with only the SubjectPublicKeyInfo decoders, which
 * makes parsing a peer certificate several times cheaper on OpenSSL 3.0.
 * Built on first call (call before threads start); NULL when it cannot be
 * built (logged), and callers then use the default context.
 * px_tls_libctx_free() releases it once nothing made from it is alive.
 */
OSSL_LIB_CTX *px_tls_libctx(void);
void          px_tls_libctx_free(void);

/* Drains the OpenSSL error queue into one log line prefixed by `what`. */
void px_tls_log_errors(const char *what);

/* ---- CLI ------------------------------------------------------------------ */
/* `airlock ca init|env ...`; argv[0] is "ca". Returns the exit code (0, 1, 2). */
int px_ca_cli(int argc, char **argv);
/*
 * The public trust files of `ca env` and `sandbox env`: ca.pem (the CA
 * certificate alone, parsed and re-encoded: nothing else of the file, never
 * a key) and bundle.pem (`roots`, NULL for PX_CA_SYSTEM_ROOTS, then the CA),
 * both 0644, written atomically into out_dir, or by default into the folder
 * "ca-public" next to ca_dir (created 0755); never into ca_dir itself. The
 * absolute folder goes to pub. Returns AL_OK, AL_DECLINED (no CA, or a
 * folder inside the CA's) or AL_ERROR; reasons and warnings (a folder other
 * users cannot enter) in errs.
 */
int px_ca_write_public(const char *ca_dir, const char *out_dir, const char *roots, char *pub,
                       size_t pubsz, struct al_errs *errs);
/* The i-th CA trust variable and the public file it points at
 * (PX_CA_BUNDLE_FILE or PX_CA_CERT_FILE); NULL past the last. */
const char *px_ca_trust_var(int i, const char **file);

#endif
