/*
 * px_ca_tls.c - the two SSL_CTX builders of the interception path and their
 * callbacks: toward the client, terminate TLS with a leaf minted by px_ca.c
 * for the SNI (or the CONNECT host); toward the upstream, verified TLS with
 * SNI, hostname checks, ALPN http/1.1 and a client session cache.
 *
 * DESIGN
 *
 * Contexts are built once and shared by every worker thread; nothing in
 * them changes after construction except the session caches, which have
 * their own locks. Per-connection state (the CONNECT host for clients
 * without SNI, refusal flags for the audit reason, the upstream session key)
 * is one small struct in the SSL's ex_data, allocated on first use and freed
 * by the ex_data free callback with the SSL. Per-context state (the CA
 * reference of the server context, the session cache of the upstream
 * context) lives in the SSL_CTX's ex_data the same way, so SSL_CTX_free
 * releases everything.
 *
 * Client sessions are bound to the host they were minted for: each server
 * SSL gets a session id context derived from its CONNECT host, so a TLS 1.2
 * session id or ticket minted for another host is a cache miss (OpenSSL
 * compares the context before resuming) and the client gets a full
 * handshake with the right certificate, as RFC 5246/6066 servers do. TLS 1.3
 * resumption does not compare the context, so the ticket callback
 * (px_tls_ticket_dec_cb) declines a ticket minted under another one, for
 * both versions. Without this, a TLS 1.2 client resuming a session of host A
 * in a tunnel to host B failed the handshake: OpenSSL reports the session's
 * name, A, as the SNI of a resumed TLS 1.2 handshake.
 *
 * Certificate selection happens in the servername callback, which OpenSSL
 * calls for every ClientHello (with or without SNI) before choosing a cipher
 * or signature algorithm. The server context holds the shared leaf key from
 * the start; each leaf carries its public key, so SSL_use_certificate keeps
 * key and certificate consistent.
 *
 * Upstream chain verdicts are cached (px_tls_verify_cb): a chain that is
 * byte for byte one that passed X509_verify_cert for the same host:port,
 * within the TTL and before any of its certificates expires, passes without
 * a second chain build. The handshake's own proof of key possession (TLS 1.3
 * CertificateVerify, the TLS 1.2 key exchange signature) is checked every
 * time by OpenSSL; only failures never enter the cache, so a bad certificate
 * is refused on every connection.
 *
 * Upstream sessions are cached per host:port as copies (SSL_SESSION_dup):
 * OpenSSL marks a connection's own session object not resumable when the
 * connection is freed without a clean shutdown, and that must not poison
 * the cache. TLS 1.3 tickets are handed out once (RFC 8446 C.4); TLS 1.2
 * sessions are reused until they expire.
 */
#include "px_ca.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>

/* The most recent OpenSSL error as text (queue cleared), for messages. */
static const char *
px_tls_ssl_reason(char *buf, size_t n)
{
    unsigned long e = ERR_peek_last_error();

    if (e == 0)
        snprintf(buf, n, "unknown OpenSSL error");
    else
        ERR_error_string_n(e, buf, n);
    ERR_clear_error();
    return buf;
}

/* ---- per-SSL and per-SSL_CTX state -------------------------------------------- */

struct px_tls_sslx {
    char         *host; /* default host (server side) */
    int           is_ip;
    unsigned char sid_ctx[32];    /* server side: SHA-256 of the default host (session binding) */
    char         *sess_key;       /* "host:port" (upstream side) */
    unsigned      strict_sni : 1; /* refuse an SNI other than the default host */
    unsigned      alpn_refused : 1;
    unsigned      sni_refused : 1;  /* not a host name */
    unsigned      sni_mismatch : 1; /* a host name, but not the default host */
};

struct px_tls_sess {
    struct px_tls_sess *prev, *next;
    SSL_SESSION        *sess; /* one reference */
    char                key[];
};

/*
 * Verdict cache for upstream chains: direct-mapped slots keyed by a SHA-256
 * over host:port and the digests of every certificate the peer sent. A slot
 * is overwritten by the next key that maps to it, so the size is fixed.
 */
#define PX_TLS_VC_SLOTS 1024

struct px_tls_vc_slot {
    unsigned char key[32];
    int64_t       verified_at, expires; /* wall-clock seconds; expires 0 = empty */
};

struct px_tls_vcache {
    pthread_mutex_t       lock;
    EVP_MD               *sha256;
    int                   ttl_s;
    _Atomic uint64_t      hits, misses;
    struct px_tls_vc_slot slot[PX_TLS_VC_SLOTS];
};

/* Upstream session cache: a short LRU list (linear search is fine at this
 * size); it also carries the verdict cache (NULL when disabled). */
struct px_tls_sesscache {
    pthread_mutex_t       lock;
    struct px_tls_sess   *head, *tail;
    size_t                count, cap;
    struct px_tls_vcache *vc;
};

static pthread_once_t px_tls_once = PTHREAD_ONCE_INIT;
static int            px_tls_ssl_idx = -1, px_tls_ca_idx = -1, px_tls_sc_idx = -1;

static void
px_tls_sslx_free_cb(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    struct px_tls_sslx *x = ptr;

    (void)parent;
    (void)ad;
    (void)idx;
    (void)argl;
    (void)argp;
    if (x == NULL)
        return;
    al_free(x->host);
    al_free(x->sess_key);
    al_free(x);
}

static void
px_tls_ca_free_cb(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    (void)parent;
    (void)ad;
    (void)idx;
    (void)argl;
    (void)argp;
    px_ca_free(ptr);
}

static void
px_tls_sc_free_cb(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    struct px_tls_sesscache *sc = ptr;
    struct px_tls_sess      *s, *next;

    (void)parent;
    (void)ad;
    (void)idx;
    (void)argl;
    (void)argp;
    if (sc == NULL)
        return;
    for (s = sc->head; s != NULL; s = next) {
        next = s->next;
        SSL_SESSION_free(s->sess);
        al_free(s);
    }
    if (sc->vc != NULL) {
        EVP_MD_free(sc->vc->sha256);
        pthread_mutex_destroy(&sc->vc->lock);
        al_free(sc->vc);
    }
    pthread_mutex_destroy(&sc->lock);
    al_free(sc);
}

static void
px_tls_init_once(void)
{
    px_tls_ssl_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, px_tls_sslx_free_cb);
    px_tls_ca_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, px_tls_ca_free_cb);
    px_tls_sc_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, px_tls_sc_free_cb);
}

static int
px_tls_init(void)
{
    pthread_once(&px_tls_once, px_tls_init_once);
    return (px_tls_ssl_idx < 0 || px_tls_ca_idx < 0 || px_tls_sc_idx < 0) ? AL_ERROR : AL_OK;
}

/* The SSL's state; created on demand when `create`. NULL when absent. */
static struct px_tls_sslx *
px_tls_sslx_get(SSL *ssl, int create)
{
    struct px_tls_sslx *x;

    if (px_tls_init() != AL_OK)
        return NULL;
    x = SSL_get_ex_data(ssl, px_tls_ssl_idx);
    if (x != NULL || !create)
        return x;
    x = al_calloc(1, sizeof(*x));
    if (x == NULL)
        return NULL;
    if (SSL_set_ex_data(ssl, px_tls_ssl_idx, x) != 1) {
        al_free(x);
        return NULL;
    }
    return x;
}

/* ---- TLS toward the client --------------------------------------------------- */

/*
 * ALPN: http/1.1 or nothing. Called only when the client sent ALPN. A client
 * that offers only h2 (or anything else) is refused now, with
 * no_application_protocol, rather than talking HTTP/1.1 to an h2 client.
 */
static int
px_tls_alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
               unsigned int inlen, void *arg)
{
    struct px_tls_sslx *x;
    unsigned int        i = 0;

    (void)arg;
    while (i < inlen) {
        unsigned int n = in[i];

        if (n == 0 || i + 1 + n > inlen)
            break;
        if (n == 8 && memcmp(in + i + 1, "http/1.1", 8) == 0) {
            *out = in + i + 1;
            *outlen = 8;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + n;
    }
    x = px_tls_sslx_get(ssl, 1);
    if (x != NULL)
        x->alpn_refused = 1;
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

/*
 * Certificate selection. OpenSSL calls this for every ClientHello, with or
 * without SNI, before it picks a cipher or a signature algorithm, so the
 * leaf set here is the one the handshake uses. The shared leaf key is
 * already in the SSL (copied from the context), and every leaf carries its
 * public key, so SSL_use_certificate keeps the pair consistent.
 */
static int
px_tls_servername_cb(SSL *ssl, int *al, void *arg)
{
    struct px_ca       *ca = arg;
    struct px_tls_sslx *x = px_tls_sslx_get(ssl, 0);
    const char         *sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    char                host[PX_CA_HOST_MAX + 1];
    int                 is_ip = 0;
    X509               *leaf = NULL;
    int                 rc = SSL_TLSEXT_ERR_ALERT_FATAL;

    *al = SSL_AD_UNRECOGNIZED_NAME;
    if (sni != NULL) {
        if (px_ca_host_normalize(sni, host, sizeof(host), &is_ip) != AL_OK) {
            x = px_tls_sslx_get(ssl, 1);
            if (x != NULL)
                x->sni_refused = 1;
            goto out;
        }
        if (x != NULL && x->host != NULL) {
            char want[PX_CA_HOST_MAX + 1];
            int  want_ip = x->is_ip;

            if (px_ca_host_normalize(x->host, want, sizeof(want), &want_ip) != AL_OK ||
                want_ip != is_ip || strcmp(want, host) != 0) {
                x->sni_mismatch = 1;
                if (x->strict_sni)
                    goto out; /* before minting anything for a name nobody allowed */
            }
        }
    } else if (x != NULL && x->host != NULL) {
        if (px_ca_host_normalize(x->host, host, sizeof(host), &is_ip) != AL_OK)
            goto out;
    } else {
        goto out; /* no SNI and no CONNECT host: nothing to mint for */
    }
    *al = SSL_AD_INTERNAL_ERROR;
    leaf = px_ca_leaf(ca, host, is_ip);
    if (leaf == NULL)
        goto out;
    ERR_clear_error();
    if (SSL_use_certificate(ssl, leaf) != 1) {
        px_tls_log_errors("installing the leaf certificate");
        goto out;
    }
    rc = SSL_TLSEXT_ERR_OK;
out:
    X509_free(leaf);
    return rc;
}

/*
 * The SNI as the ClientHello carries it, checked against the CONNECT host
 * before any session is looked up. The servername callback checks it too,
 * but in a resumed TLS 1.2 handshake OpenSSL reports the session's name
 * there, not the one this ClientHello sent: a client offering the CONNECT
 * host's session with another SNI would pass unseen.
 */
static int
px_tls_client_hello_cb(SSL *ssl, int *al, void *arg)
{
    struct px_tls_sslx  *x = px_tls_sslx_get(ssl, 0);
    const unsigned char *p;
    size_t               len, n;
    char                 raw[PX_CA_HOST_MAX + 2], sni[PX_CA_HOST_MAX + 1], want[PX_CA_HOST_MAX + 1];
    int                  sni_ip = 0, want_ip;

    (void)arg;
    if (x == NULL || x->host == NULL || !x->strict_sni ||
        SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &p, &len) != 1)
        return SSL_CLIENT_HELLO_SUCCESS;
    /* ServerNameList: length(2), then type(1) = host_name, length(2), name */
    if (len < 5 || (size_t)(p[0] << 8 | p[1]) != len - 2 || p[2] != TLSEXT_NAMETYPE_host_name)
        return SSL_CLIENT_HELLO_SUCCESS; /* malformed: OpenSSL's own parser refuses it */
    n = (size_t)(p[3] << 8 | p[4]);
    if (n == 0 || n > len - 5)
        return SSL_CLIENT_HELLO_SUCCESS;
    *al = SSL_AD_UNRECOGNIZED_NAME;
    if (n >= sizeof(raw) || memchr(p + 5, '\0', n) != NULL) {
        x->sni_refused = 1;
        return SSL_CLIENT_HELLO_ERROR;
    }
    memcpy(raw, p + 5, n);
    raw[n] = '\0';
    if (px_ca_host_normalize(raw, sni, sizeof(sni), &sni_ip) != AL_OK) {
        x->sni_refused = 1;
        return SSL_CLIENT_HELLO_ERROR;
    }
    want_ip = x->is_ip;
    if (px_ca_host_normalize(x->host, want, sizeof(want), &want_ip) != AL_OK || want_ip != sni_ip ||
        strcmp(want, sni) != 0) {
        x->sni_mismatch = 1;
        return SSL_CLIENT_HELLO_ERROR;
    }
    return SSL_CLIENT_HELLO_SUCCESS;
}

/*
 * Session tickets (TLS 1.2 and 1.3) presented by a client: a ticket that
 * decrypts but was minted under another session id context (another host)
 * is ignored, and a fresh ticket is issued after the full handshake. For
 * TLS 1.2 OpenSSL would refuse it anyway (after this callback); TLS 1.3
 * resumption never compares the context, so this check is the one that
 * keeps a TLS 1.3 session on the host it was made for.
 */
static SSL_TICKET_RETURN
px_tls_ticket_dec_cb(SSL *ssl, SSL_SESSION *ss, const unsigned char *keyname, size_t keyname_len,
                     SSL_TICKET_STATUS status, void *arg)
{
    struct px_tls_sslx  *x = px_tls_sslx_get(ssl, 0);
    const unsigned char *ctx;
    unsigned int         ctxlen = 0;

    (void)keyname;
    (void)keyname_len;
    (void)arg;
    switch (status) {
    case SSL_TICKET_SUCCESS:
    case SSL_TICKET_SUCCESS_RENEW:
        if (x != NULL && x->host != NULL) {
            ctx = SSL_SESSION_get0_id_context(ss, &ctxlen);
            if (ctx == NULL || ctxlen != sizeof(x->sid_ctx) ||
                memcmp(ctx, x->sid_ctx, sizeof(x->sid_ctx)) != 0)
                return SSL_TICKET_RETURN_IGNORE_RENEW; /* another host's: full handshake */
        }
        return status == SSL_TICKET_SUCCESS ? SSL_TICKET_RETURN_USE : SSL_TICKET_RETURN_USE_RENEW;
    case SSL_TICKET_EMPTY:
    case SSL_TICKET_NO_DECRYPT:
        return SSL_TICKET_RETURN_IGNORE_RENEW;
    default:
        return SSL_TICKET_RETURN_ABORT;
    }
}

SSL_CTX *
px_tls_server_ctx(struct px_ca *ca)
{
    static const unsigned char sid_ctx[] = "airlock";
    SSL_CTX                   *ctx = NULL;
    SSL_CTX                   *ret = NULL;

    if (ca == NULL || px_tls_init() != AL_OK)
        goto out;
    ERR_clear_error();
    ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL)
        goto out;
    if (SSL_CTX_set_ex_data(ctx, px_tls_ca_idx, px_ca_ref(ca)) != 1) {
        px_ca_free(ca);
        goto out;
    }
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1)
        goto out;
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_NO_COMPRESSION);
    /* The leaf goes out alone (clients trust the CA itself): without
     * NO_AUTO_CHAIN OpenSSL would try to build a chain from the context's
     * empty store, an X509_verify_cert() per handshake for nothing. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_NO_AUTO_CHAIN);
    /* One TLS 1.3 ticket per connection (OpenSSL's default is two): enough
     * for a client that resumes, half the ticket cost for the many that
     * never do. */
    if (SSL_CTX_set_num_tickets(ctx, PX_TLS_TICKETS) != 1)
        goto out;
    if (SSL_CTX_use_PrivateKey(ctx, px_ca_leaf_key(ca)) != 1)
        goto out;
    SSL_CTX_set_client_hello_cb(ctx, px_tls_client_hello_cb, NULL);
    SSL_CTX_set_tlsext_servername_callback(ctx, px_tls_servername_cb);
    SSL_CTX_set_tlsext_servername_arg(ctx, ca);
    SSL_CTX_set_alpn_select_cb(ctx, px_tls_alpn_cb, NULL);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    if (SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1) != 1)
        goto out;
    if (SSL_CTX_set_session_ticket_cb(ctx, NULL, px_tls_ticket_dec_cb, NULL) != 1)
        goto out;
    ret = ctx;
    ctx = NULL;
out:
    if (ret == NULL)
        px_tls_log_errors("building the interception TLS context");
    SSL_CTX_free(ctx);
    return ret;
}

int
px_tls_set_default_host(SSL *ssl, const char *host, int is_ip, int strict)
{
    struct px_tls_sslx *x = px_tls_sslx_get(ssl, 1);
    char               *copy;
    char                norm[PX_CA_HOST_MAX + 8];
    int                 norm_ip = is_ip;
    unsigned int        dlen = 0;

    if (x == NULL || host == NULL)
        return AL_ERROR;
    /* The session id context: SHA-256 over the normalised host (so
     * "API.Test." and "api.test" share sessions), tagged with its kind. */
    if (px_ca_host_normalize(host, norm + 4, sizeof(norm) - 4, &norm_ip) != AL_OK)
        snprintf(norm + 4, sizeof(norm) - 4, "%s", host);
    memcpy(norm, norm_ip ? "ip: " : "dns:", 4);
    ERR_clear_error();
    if (EVP_Digest(norm, strlen(norm), x->sid_ctx, &dlen, EVP_sha256(), NULL) != 1 ||
        dlen != sizeof(x->sid_ctx) ||
        SSL_set_session_id_context(ssl, x->sid_ctx, sizeof(x->sid_ctx)) != 1) {
        px_tls_log_errors("binding the session to its host");
        return AL_ERROR;
    }
    copy = al_strdup(host);
    if (copy == NULL)
        return AL_ERROR;
    al_free(x->host);
    x->host = copy;
    x->is_ip = is_ip;
    x->strict_sni = strict ? 1 : 0;
    return AL_OK;
}

const char *
px_tls_sni(SSL *ssl)
{
    return SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
}

int
px_tls_alpn_refused(SSL *ssl)
{
    struct px_tls_sslx *x = px_tls_sslx_get(ssl, 0);

    return x != NULL && x->alpn_refused;
}

int
px_tls_sni_refused(SSL *ssl)
{
    struct px_tls_sslx *x = px_tls_sslx_get(ssl, 0);

    return x != NULL && x->sni_refused;
}

int
px_tls_sni_mismatch(SSL *ssl)
{
    struct px_tls_sslx *x = px_tls_sslx_get(ssl, 0);

    return x != NULL && x->sni_mismatch;
}

/* ---- TLS toward the upstream ----------------------------------------------- */

/* Unlinks and frees s; the caller holds sc->lock. */
static void
px_tls_sess_drop(struct px_tls_sesscache *sc, struct px_tls_sess *s)
{
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        sc->head = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    else
        sc->tail = s->prev;
    sc->count--;
    SSL_SESSION_free(s->sess);
    al_free(s);
}

/*
 * OpenSSL hands us each new session (TLS 1.2 after the handshake, TLS 1.3 per
 * NewSessionTicket); keep the latest per host:port. The cache stores a copy:
 * the object OpenSSL passes is also the connection's current session, and
 * freeing a connection that was not shut down cleanly marks that object
 * not resumable, which must not poison the cache.
 */
static int
px_tls_new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
    struct px_tls_sslx      *x = px_tls_sslx_get(ssl, 0);
    struct px_tls_sesscache *sc = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), px_tls_sc_idx);
    struct px_tls_sess      *s;
    SSL_SESSION             *copy = NULL;
    size_t                   klen;

    if (x == NULL || x->sess_key == NULL || sc == NULL || !SSL_SESSION_is_resumable(sess))
        goto out;
    copy = SSL_SESSION_dup(sess);
    if (copy == NULL)
        goto out;
    pthread_mutex_lock(&sc->lock);
    for (s = sc->head; s != NULL; s = s->next) {
        if (strcmp(s->key, x->sess_key) == 0)
            break;
    }
    if (s != NULL) {
        SSL_SESSION_free(s->sess);
        s->sess = copy;
        copy = NULL;
        pthread_mutex_unlock(&sc->lock);
        goto out;
    }
    klen = strlen(x->sess_key);
    s = al_malloc(sizeof(*s) + klen + 1);
    if (s == NULL) {
        pthread_mutex_unlock(&sc->lock);
        goto out;
    }
    memcpy(s->key, x->sess_key, klen + 1);
    s->sess = copy;
    copy = NULL;
    s->prev = NULL;
    s->next = sc->head;
    if (sc->head != NULL)
        sc->head->prev = s;
    sc->head = s;
    if (sc->tail == NULL)
        sc->tail = s;
    if (++sc->count > sc->cap)
        px_tls_sess_drop(sc, sc->tail);
    pthread_mutex_unlock(&sc->lock);
out:
    SSL_SESSION_free(copy);
    return 0; /* OpenSSL keeps (and frees) its own reference */
}

/* The verdict-cache key: SHA-256 over "host:port\0", then the SHA-256 of
 * the leaf and of every certificate the peer sent, in order. */
static int
px_tls_vc_key(const struct px_tls_vcache *vc, const char *name, X509 *leaf, STACK_OF(X509) * sent,
              unsigned char out[32])
{
    EVP_MD_CTX   *m = EVP_MD_CTX_new();
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int  dl = 0;
    int           n = sent != NULL ? sk_X509_num(sent) : 0;
    int           ok;

    ok = m != NULL && EVP_DigestInit_ex(m, vc->sha256, NULL) == 1 &&
         EVP_DigestUpdate(m, name, strlen(name) + 1) == 1 &&
         X509_digest(leaf, vc->sha256, d, &dl) == 1 && EVP_DigestUpdate(m, d, dl) == 1;
    for (int i = 0; ok && i < n; i++)
        ok = X509_digest(sk_X509_value(sent, i), vc->sha256, d, &dl) == 1 &&
             EVP_DigestUpdate(m, d, dl) == 1;
    ok = ok && EVP_DigestFinal_ex(m, out, &dl) == 1 && dl == 32;
    EVP_MD_CTX_free(m);
    return ok;
}

/* The earliest notAfter of a verified chain, in seconds since the epoch, or
 * -1 when one cannot be read. */
static int64_t
px_tls_chain_not_after(STACK_OF(X509) * chain)
{
    int64_t min = -1;

    for (int i = 0; chain != NULL && i < sk_X509_num(chain); i++) {
        struct tm tm;
        int64_t   t;

        memset(&tm, 0, sizeof(tm));
        if (ASN1_TIME_to_tm(X509_get0_notAfter(sk_X509_value(chain, i)), &tm) != 1)
            return -1;
        t = (int64_t)timegm(&tm);
        if (min < 0 || t < min)
            min = t;
    }
    return min;
}

/*
 * OpenSSL's chain verification for upstream handshakes (the peer's chain is
 * parsed; the handshake signature is checked after this returns). A hit in
 * the verdict cache passes with X509_V_OK and no chain build; anything else
 * runs X509_verify_cert, and only a success is remembered: until the TTL or
 * the first notAfter in the verified chain, whichever comes first.
 */
static int
px_tls_verify_cb(X509_STORE_CTX *sctx, void *arg)
{
    struct px_tls_vcache *vc = arg;
    SSL *ssl = X509_STORE_CTX_get_ex_data(sctx, SSL_get_ex_data_X509_STORE_CTX_idx());
    struct px_tls_sslx    *x = ssl != NULL ? px_tls_sslx_get(ssl, 0) : NULL;
    X509                  *leaf = X509_STORE_CTX_get0_cert(sctx);
    unsigned char          key[32];
    struct px_tls_vc_slot *sl = NULL; /* the key's slot */
    int                    rc;
    int64_t                now = (int64_t)time(NULL), until;

    if (vc->ttl_s > 0 && x != NULL && x->sess_key != NULL && leaf != NULL &&
        px_tls_vc_key(vc, x->sess_key, leaf, X509_STORE_CTX_get0_untrusted(sctx), key))
        sl = &vc->slot[(key[0] | (unsigned)key[1] << 8) % PX_TLS_VC_SLOTS];
    if (sl != NULL) {
        int hit;

        pthread_mutex_lock(&vc->lock);
        hit = sl->expires != 0 && now >= sl->verified_at && now < sl->expires &&
              memcmp(sl->key, key, sizeof(key)) == 0;
        pthread_mutex_unlock(&vc->lock);
        if (hit) {
            atomic_fetch_add_explicit(&vc->hits, 1, memory_order_relaxed);
            X509_STORE_CTX_set_error(sctx, X509_V_OK);
            return 1;
        }
    }
    ERR_clear_error();
    rc = X509_verify_cert(sctx);
    atomic_fetch_add_explicit(&vc->misses, 1, memory_order_relaxed);
    if (rc != 1 || sl == NULL || X509_STORE_CTX_get_error(sctx) != X509_V_OK)
        return rc;
    until = px_tls_chain_not_after(X509_STORE_CTX_get0_chain(sctx));
    if (until > now + vc->ttl_s)
        until = now + vc->ttl_s;
    if (until > now) {
        pthread_mutex_lock(&vc->lock);
        memcpy(sl->key, key, sizeof(key));
        sl->verified_at = now;
        sl->expires = until;
        pthread_mutex_unlock(&vc->lock);
    }
    return rc;
}

void
px_tls_upstream_stats(SSL_CTX *ctx, uint64_t *verify_hits, uint64_t *verify_full)
{
    struct px_tls_sesscache *sc = ctx != NULL ? SSL_CTX_get_ex_data(ctx, px_tls_sc_idx) : NULL;

    *verify_hits = *verify_full = 0;
    if (sc != NULL && sc->vc != NULL) {
        *verify_hits = atomic_load_explicit(&sc->vc->hits, memory_order_relaxed);
        *verify_full = atomic_load_explicit(&sc->vc->misses, memory_order_relaxed);
    }
}

SSL_CTX *
px_tls_upstream_ctx(const char *ca_file, int verify_cache_s, struct al_errs *errs)
{
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_CTX                   *ctx = NULL, *ret = NULL;
    struct px_tls_sesscache   *sc = NULL;
    char                       why[256];

    if (px_tls_init() != AL_OK) {
        al_errs_add(errs, "OpenSSL ex_data indices unavailable");
        goto out;
    }
    ERR_clear_error();
    ctx = SSL_CTX_new_ex(px_tls_libctx(), NULL, TLS_client_method());
    if (ctx == NULL)
        goto ssl_fail;
    sc = al_calloc(1, sizeof(*sc));
    if (sc == NULL)
        goto ssl_fail;
    if (pthread_mutex_init(&sc->lock, NULL) != 0) {
        al_free(sc);
        sc = NULL;
        goto ssl_fail;
    }
    sc->cap = PX_TLS_SESS_ENTRIES;
    sc->vc = al_calloc(1, sizeof(*sc->vc));
    if (sc->vc == NULL || pthread_mutex_init(&sc->vc->lock, NULL) != 0) {
        al_free(sc->vc);
        sc->vc = NULL;
        goto ssl_fail;
    }
    sc->vc->ttl_s = verify_cache_s > 0 ? verify_cache_s : 0;
    sc->vc->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (sc->vc->sha256 == NULL)
        goto ssl_fail;
    SSL_CTX_set_cert_verify_callback(ctx, px_tls_verify_cb, sc->vc);
    if (SSL_CTX_set_ex_data(ctx, px_tls_sc_idx, sc) != 1)
        goto ssl_fail;
    sc = NULL; /* the context owns it now */
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1)
        goto ssl_fail;
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    /* Record buffers are released between records here too: keeping them
     * saved a malloc/free pair per read and write (~2 % of a keep-alive
     * request's instructions) but raised the memory of 2,000 tunnels that
     * had each made one request from 24 to 33 KiB apiece. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    /* One read(2) per record (or several), not one for the header and one
     * for the body; SSL_has_pending() tells when bytes wait in the buffer. */
    SSL_CTX_set_read_ahead(ctx, 1);
    if (ca_file != NULL) {
        if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
            al_errs_add(errs, "%s: cannot load CA certificates: %s", ca_file,
                        px_tls_ssl_reason(why, sizeof(why)));
            goto out;
        }
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        al_errs_add(errs, "cannot load the system trust store: %s",
                    px_tls_ssl_reason(why, sizeof(why)));
        goto out;
    }
    if (SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn) - 1) != 0) /* 0 is success here */
        goto ssl_fail;
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, px_tls_new_session_cb);
    ret = ctx;
    ctx = NULL;
    goto out;
ssl_fail:
    al_errs_add(errs, "cannot build the upstream TLS context: %s",
                px_tls_ssl_reason(why, sizeof(why)));
out:
    if (sc != NULL)
        px_tls_sc_free_cb(NULL, sc, NULL, 0, 0, NULL);
    SSL_CTX_free(ctx);
    return ret;
}

int
px_tls_upstream_prepare(SSL *ssl, const char *host, uint16_t port, int is_ip)
{
    char                     host_n[PX_CA_HOST_MAX + 1], key[PX_CA_HOST_MAX + 16];
    struct px_tls_sslx      *x = px_tls_sslx_get(ssl, 1);
    struct px_tls_sesscache *sc = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), px_tls_sc_idx);
    struct px_tls_sess      *s;
    SSL_SESSION             *sess = NULL;
    int                      rc = AL_ERROR;

    if (x == NULL || px_ca_host_normalize(host, host_n, sizeof(host_n), &is_ip) != AL_OK)
        goto out;
    snprintf(key, sizeof(key), strchr(host_n, ':') != NULL ? "[%s]:%u" : "%s:%u", host_n,
             (unsigned)port);
    al_free(x->sess_key);
    x->sess_key = al_strdup(key);
    if (x->sess_key == NULL)
        goto out;
    ERR_clear_error();
    if (is_ip) {
        if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host_n) != 1)
            goto out;
    } else {
        if (SSL_set_tlsext_host_name(ssl, host_n) != 1 || SSL_set1_host(ssl, host_n) != 1)
            goto out;
        SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    }
    if (sc != NULL) {
        pthread_mutex_lock(&sc->lock);
        for (s = sc->head; s != NULL; s = s->next) {
            if (strcmp(s->key, key) == 0)
                break;
        }
        if (s != NULL) {
            long now = (long)time(NULL);

            if (!SSL_SESSION_is_resumable(s->sess) ||
                now >= SSL_SESSION_get_time(s->sess) + SSL_SESSION_get_timeout(s->sess)) {
                px_tls_sess_drop(sc, s); /* stale */
            } else if (SSL_SESSION_get_protocol_version(s->sess) >= TLS1_3_VERSION) {
                /* TLS 1.3 tickets are single use (RFC 8446 C.4): take it out. */
                sess = s->sess;
                s->sess = NULL;
                px_tls_sess_drop(sc, s);
            } else {
                sess = SSL_SESSION_dup(s->sess); /* the cache keeps a clean copy */
            }
        }
        pthread_mutex_unlock(&sc->lock);
    }
    if (sess != NULL && SSL_set_session(ssl, sess) != 1)
        ERR_clear_error(); /* resumption is an optimisation: go on without it */
    rc = AL_OK;
out:
    SSL_SESSION_free(sess);
    if (rc != AL_OK)
        px_tls_log_errors("preparing upstream TLS");
    return rc;
}

const char *
px_tls_verify_error(SSL *ssl)
{
    long v = SSL_get_verify_result(ssl);

    switch (v) {
    case X509_V_OK:
        return NULL;
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_CERT_UNTRUSTED:
    case X509_V_ERR_CERT_REJECTED:
        return "upstream_cert_untrusted";
    case X509_V_ERR_CERT_HAS_EXPIRED:
    case X509_V_ERR_CERT_NOT_YET_VALID:
    case X509_V_ERR_ERROR_IN_CERT_NOT_BEFORE_FIELD:
    case X509_V_ERR_ERROR_IN_CERT_NOT_AFTER_FIELD:
        return "upstream_cert_expired";
    case X509_V_ERR_HOSTNAME_MISMATCH:
    case X509_V_ERR_IP_ADDRESS_MISMATCH:
    case X509_V_ERR_EMAIL_MISMATCH:
        return "upstream_cert_name_mismatch";
    default:
        return "upstream_cert_invalid";
    }
}
