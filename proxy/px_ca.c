/*
 * px_ca.c - the interception CA: creating it on disk, loading it, and
 * minting leaf certificates per host (with a shared LRU cache). The SSL_CTX
 * builders that use them are in px_ca_tls.c.
 *
 * DESIGN
 *
 * One struct px_ca per loaded CA, reference counted, shared by every worker.
 * It owns the CA certificate and key, one leaf key (EC P-256, generated at
 * load and never written anywhere: every minted leaf carries the same public
 * key, so a handshake costs one signature by the CA per new host and none
 * per connection), the extensions every leaf shares (built once), and the
 * leaf cache.
 *
 * The cache is a hash table of entries threaded on an LRU list, bounded in
 * entries, under one mutex. px_ca_leaf() looks up under the lock, mints with
 * the lock released (ECDSA signing is the expensive part and must not
 * serialise the workers), then inserts under the lock again. Two threads
 * minting the same host at once both sign; the second insert finds the first
 * and hands that one out, so the cache keeps one certificate per host. An
 * entry is dropped PX_CA_LEAF_REUSE_MARGIN_S before its notAfter, so a client
 * never gets a certificate about to expire.
 *
 * The leaf key is made through the (deprecated) EC_KEY API on purpose: an
 * EVP_PKEY backed by a legacy EC_KEY is encoded into a certificate by its
 * ASN.1 method in about 5 us, where a provider-native key goes through the
 * OSSL_ENCODER machinery on every X509_set_pubkey (about 180 us with OpenSSL
 * 3.0), which was 85% of a mint. Signing and TLS use it like any other key.
 *
 * The CA key stays in this file: nothing else can reach it, and OpenSSL
 * wipes it when the last reference goes.
 */
#define OPENSSL_SUPPRESS_DEPRECATED /* EC_KEY for the leaf key: see DESIGN above */
#include "px_ca.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#define PX_CA_SERIAL_BYTES 16
#define PX_CA_FILE_MAX_BYTES (1024 * 1024)
#define PX_CA_ROOTS_MAX_BYTES (16 * 1024 * 1024)
#define PX_CA_KEY_SZ (PX_CA_HOST_MAX + 3) /* "d:" + host + NUL */

struct px_ca_entry {
    struct px_ca_entry *hnext;       /* hash chain */
    struct px_ca_entry *prev, *next; /* LRU list; head is the most recent */
    uint64_t            hash;
    time_t              expires; /* drop after this (before notAfter) */
    X509               *cert;    /* one reference owned by the entry */
    char                key[];   /* "d:name" or "i:addr" */
};

struct px_ca {
    _Atomic int     refs;
    X509           *cert;
    EVP_PKEY       *key;
    EVP_PKEY       *leaf_key;
    X509_EXTENSION *ext_bc, *ext_ku, *ext_eku, *ext_aki; /* shared by every leaf; aki may be NULL */
    pthread_mutex_t lock;                                /* guards everything below */
    struct px_ca_entry **buckets;
    size_t               nbuckets; /* a power of two */
    struct px_ca_entry  *lru_head, *lru_tail;
    size_t               count, cap;
    _Atomic uint64_t     mints, hits;
};

/* ---- small helpers --------------------------------------------------------- */

/* The most recent OpenSSL error as text (queue cleared), for messages. */
static const char *
px_ca_ssl_reason(char *buf, size_t n)
{
    unsigned long e = ERR_peek_last_error();

    if (e == 0)
        snprintf(buf, n, "unknown OpenSSL error");
    else
        ERR_error_string_n(e, buf, n);
    ERR_clear_error();
    return buf;
}

void
px_tls_log_errors(const char *what)
{
    char          line[512], one[256];
    size_t        used = 0;
    unsigned long e;

    line[0] = '\0';
    while ((e = ERR_get_error()) != 0) {
        int n;

        ERR_error_string_n(e, one, sizeof(one));
        n = snprintf(line + used, sizeof(line) - used, "%s%s", used ? "; " : "", one);
        if (n < 0 || (size_t)n >= sizeof(line) - used) {
            used = sizeof(line) - 1;
            continue; /* keep draining */
        }
        used += (size_t)n;
    }
    al_log_err("%s: %s", what, used ? line : "no OpenSSL detail");
}

static uint64_t
px_ca_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */

    for (; *s != '\0'; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

/* Path "dir/name" in buf; AL_ERROR when it does not fit. */
static int
px_ca_path(char *buf, size_t n, const char *dir, const char *name)
{
    int r = snprintf(buf, n, "%s/%s", dir, name);

    return (r < 0 || (size_t)r >= n) ? AL_ERROR : AL_OK;
}

/* Never prompt for a passphrase (a daemon has no terminal): fail instead. */
static int
px_ca_nopass_cb(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return -1;
}

int
px_ca_host_normalize(const char *in, char *out, size_t outsz, int *is_ip)
{
    char          tmp[PX_CA_HOST_MAX + 2];
    unsigned char bin[16];
    size_t        len, label = 0;
    int           rc = AL_ERROR;

    if (in == NULL || out == NULL || outsz == 0)
        goto out;
    len = strlen(in);
    /* IP literals first: "[v6]", "v6", "v4". */
    if (len >= 2 && in[0] == '[' && in[len - 1] == ']' && len - 2 < sizeof(tmp)) {
        memcpy(tmp, in + 1, len - 2);
        tmp[len - 2] = '\0';
        if (inet_pton(AF_INET6, tmp, bin) == 1) {
            if (inet_ntop(AF_INET6, bin, out, (socklen_t)outsz) == NULL)
                goto out;
            *is_ip = 1;
            rc = AL_OK;
        }
        goto out;
    }
    if (inet_pton(AF_INET, in, bin) == 1) {
        if (inet_ntop(AF_INET, bin, out, (socklen_t)outsz) == NULL)
            goto out;
        *is_ip = 1;
        rc = AL_OK;
        goto out;
    }
    if (inet_pton(AF_INET6, in, bin) == 1) {
        if (inet_ntop(AF_INET6, bin, out, (socklen_t)outsz) == NULL)
            goto out;
        *is_ip = 1;
        rc = AL_OK;
        goto out;
    }
    if (len > 0 && in[len - 1] == '.')
        len--; /* absolute form */
    if (len == 0 || len > PX_CA_HOST_MAX || len >= outsz)
        goto out;
    for (size_t i = 0; i < len; i++) {
        char c = in[i];

        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c == '.') {
            if (label == 0 || out[i - 1] == '-')
                goto out; /* empty label or one ending in '-' */
            label = 0;
        } else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
                   (c == '-' && label > 0)) {
            if (++label > 63)
                goto out;
        } else {
            goto out; /* includes a leading '-', '*', NUL tricks, spaces, UTF-8 */
        }
        out[i] = c;
    }
    if (label == 0 || out[len - 1] == '-')
        goto out;
    out[len] = '\0';
    *is_ip = 0;
    rc = AL_OK;
out:
    if (rc != AL_OK && out != NULL && outsz > 0)
        out[0] = '\0';
    return rc;
}

/* A random positive 128-bit serial. */
static int
px_ca_set_serial(X509 *x)
{
    unsigned char b[PX_CA_SERIAL_BYTES];
    BIGNUM       *bn = NULL;
    int           rc = AL_ERROR;

    if (RAND_bytes(b, sizeof(b)) != 1)
        goto out;
    b[0] |= 0x01; /* never zero, always the full length in practice */
    bn = BN_bin2bn(b, sizeof(b), NULL);
    if (bn == NULL)
        goto out;
    if (BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) == NULL)
        goto out;
    rc = AL_OK;
out:
    BN_free(bn);
    return rc;
}

/* ---- creating the CA --------------------------------------------------------- */

/* mkdir -p with mode 0700 for every folder created. */
static int
px_ca_mkdirs(const char *dir, struct al_errs *errs)
{
    char       *p = al_strdup(dir);
    struct stat st;
    int         rc = AL_ERROR;

    if (p == NULL)
        goto out;
    for (char *s = p + 1; *s != '\0'; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(p, 0700) != 0 && errno != EEXIST) {
            al_errs_add(errs, "%s: cannot create folder: %s", p, strerror(errno));
            goto out;
        }
        *s = '/';
    }
    if (mkdir(p, 0700) != 0 && errno != EEXIST) {
        al_errs_add(errs, "%s: cannot create folder: %s", p, strerror(errno));
        goto out;
    }
    if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode)) {
        al_errs_add(errs, "%s: not a folder", p);
        goto out;
    }
    rc = AL_OK;
out:
    al_free(p);
    return rc;
}

/*
 * Writes data to path with `mode`. excl: create with O_EXCL (never replaces).
 * Otherwise: a temporary file next to it, fsync, rename over the target.
 */
static int
px_ca_write_file(const char *path, mode_t mode, int excl, const void *data, size_t len,
                 struct al_errs *errs)
{
    char        tmp[4096];
    const char *target = path;
    const char *p = data;
    int         fd = -1, rc = AL_ERROR, created = 0;

    if (!excl) {
        int r = snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());

        if (r < 0 || (size_t)r >= sizeof(tmp)) {
            al_errs_add(errs, "%s: path too long", path);
            goto out;
        }
        (void)unlink(tmp);
        target = tmp;
    }
    fd = open(target, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0) {
        al_errs_add(errs, "%s: cannot create: %s", target, strerror(errno));
        goto out;
    }
    created = 1;
    if (fchmod(fd, mode) != 0) {
        al_errs_add(errs, "%s: chmod: %s", target, strerror(errno));
        goto out;
    }
    while (len > 0) {
        ssize_t n = write(fd, p, len);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            al_errs_add(errs, "%s: write: %s", target, strerror(errno));
            goto out;
        }
        p += n;
        len -= (size_t)n;
    }
    if (fsync(fd) != 0) {
        al_errs_add(errs, "%s: fsync: %s", target, strerror(errno));
        goto out;
    }
    if (close(fd) != 0) {
        fd = -1;
        al_errs_add(errs, "%s: close: %s", target, strerror(errno));
        goto out;
    }
    fd = -1;
    if (!excl && rename(tmp, path) != 0) {
        al_errs_add(errs, "%s: rename: %s", path, strerror(errno));
        goto out;
    }
    rc = AL_OK;
out:
    if (fd >= 0)
        close(fd);
    if (rc != AL_OK && created)
        (void)unlink(target);
    return rc;
}

/* Adds one extension given in openssl.cnf syntax. */
static int
px_ca_add_ext(X509 *x, X509V3_CTX *v3, int nid, const char *value)
{
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, v3, nid, value);
    int             rc = AL_ERROR;

    if (ext == NULL)
        goto out;
    if (X509_add_ext(x, ext, -1) != 1)
        goto out;
    rc = AL_OK;
out:
    X509_EXTENSION_free(ext);
    return rc;
}

/* The self-signed CA certificate for `key`. */
static X509 *
px_ca_make_cert(EVP_PKEY *key)
{
    X509         *x = X509_new();
    X509_NAME    *name;
    X509V3_CTX    v3;
    unsigned char rnd[4];
    char          cn[64];
    X509         *ret = NULL;

    if (x == NULL || RAND_bytes(rnd, sizeof(rnd)) != 1)
        goto out;
    snprintf(cn, sizeof(cn), "airlock interception CA %02x%02x%02x%02x", rnd[0], rnd[1], rnd[2],
             rnd[3]);
    if (X509_set_version(x, X509_VERSION_3) != 1 || px_ca_set_serial(x) != AL_OK)
        goto out;
    name = X509_get_subject_name(x);
    if (X509_NAME_add_entry_by_NID(name, NID_organizationName, MBSTRING_ASC,
                                   (const unsigned char *)"airlock", -1, -1, 0) != 1 ||
        X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_ASC, (const unsigned char *)cn,
                                   -1, -1, 0) != 1)
        goto out;
    if (X509_set_issuer_name(x, name) != 1)
        goto out;
    if (X509_gmtime_adj(X509_getm_notBefore(x), -PX_CA_LEAF_BACKDATE_S) == NULL ||
        X509_time_adj_ex(X509_getm_notAfter(x), PX_CA_VALID_DAYS, 0, NULL) == NULL)
        goto out;
    if (X509_set_pubkey(x, key) != 1)
        goto out;
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    if (px_ca_add_ext(x, &v3, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") != AL_OK ||
        px_ca_add_ext(x, &v3, NID_key_usage, "critical,keyCertSign,cRLSign") != AL_OK ||
        px_ca_add_ext(x, &v3, NID_subject_key_identifier, "hash") != AL_OK ||
        px_ca_add_ext(x, &v3, NID_authority_key_identifier, "keyid:always") != AL_OK)
        goto out;
    if (X509_sign(x, key, EVP_sha256()) <= 0)
        goto out;
    ret = x;
    x = NULL;
out:
    X509_free(x);
    return ret;
}

int
px_ca_init_dir(const char *dir, int force, struct al_errs *errs)
{
    char        kpath[4096], cpath[4096], why[256];
    EVP_PKEY   *key = NULL;
    X509       *cert = NULL;
    BIO        *kbio = NULL, *cbio = NULL;
    char       *kdata, *cdata;
    long        klen, clen;
    struct stat st;
    int         rc = AL_ERROR, key_written = 0;

    if (px_ca_path(kpath, sizeof(kpath), dir, PX_CA_KEY_FILE) != AL_OK ||
        px_ca_path(cpath, sizeof(cpath), dir, PX_CA_CERT_FILE) != AL_OK) {
        al_errs_add(errs, "%s: path too long", dir);
        goto out;
    }
    if (px_ca_mkdirs(dir, errs) != AL_OK)
        goto out;
    if (!force) {
        const char *exists = lstat(kpath, &st) == 0 ? kpath : lstat(cpath, &st) == 0 ? cpath : NULL;
        if (exists != NULL) {
            al_errs_add(errs, "%s already exists; refusing to replace the CA (use --force)",
                        exists);
            rc = AL_DECLINED;
            goto out;
        }
    }
    ERR_clear_error();
    key = EVP_EC_gen("P-256");
    if (key == NULL) {
        al_errs_add(errs, "cannot generate the CA key: %s", px_ca_ssl_reason(why, sizeof(why)));
        goto out;
    }
    cert = px_ca_make_cert(key);
    if (cert == NULL) {
        al_errs_add(errs, "cannot build the CA certificate: %s",
                    px_ca_ssl_reason(why, sizeof(why)));
        goto out;
    }
    kbio = BIO_new(BIO_s_secmem()); /* cleared when freed */
    cbio = BIO_new(BIO_s_mem());
    if (kbio == NULL || cbio == NULL ||
        PEM_write_bio_PrivateKey(kbio, key, NULL, NULL, 0, NULL, NULL) != 1 ||
        PEM_write_bio_X509(cbio, cert) != 1) {
        al_errs_add(errs, "cannot encode the CA: %s", px_ca_ssl_reason(why, sizeof(why)));
        goto out;
    }
    klen = BIO_get_mem_data(kbio, &kdata);
    clen = BIO_get_mem_data(cbio, &cdata);
    if (px_ca_write_file(kpath, 0600, !force, kdata, (size_t)klen, errs) != AL_OK)
        goto out;
    key_written = 1;
    if (px_ca_write_file(cpath, 0644, !force, cdata, (size_t)clen, errs) != AL_OK)
        goto out;
    rc = AL_OK;
out:
    if (rc == AL_ERROR && key_written && !force)
        (void)unlink(kpath); /* do not leave a key without its certificate */
    BIO_free(kbio);
    BIO_free(cbio);
    X509_free(cert);
    EVP_PKEY_free(key);
    return rc;
}

/* Appends a whole file to b (whose cap bounds it). AL_OK, or AL_ERROR with errno. */
static int
px_ca_read_file(const char *path, struct al_dbuf *b)
{
    FILE  *f = fopen(path, "re");
    char   chunk[16384];
    size_t n;
    int    rc = AL_ERROR;

    if (f == NULL)
        goto out;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        if (al_dbuf_add(b, chunk, n) != AL_OK) {
            errno = EFBIG;
            goto out;
        }
    }
    if (ferror(f)) {
        errno = EIO;
        goto out;
    }
    rc = AL_OK;
out:
    if (f != NULL)
        fclose(f);
    return rc;
}

int
px_ca_write_bundle(const char *dir, const char *roots, struct al_errs *errs)
{
    char           cpath[4096], bpath[4096];
    struct al_dbuf ca, out;
    BIO           *bio = NULL;
    X509          *x = NULL;
    int            rc = AL_ERROR;

    al_dbuf_init(&ca, PX_CA_FILE_MAX_BYTES);
    al_dbuf_init(&out, PX_CA_ROOTS_MAX_BYTES + PX_CA_FILE_MAX_BYTES + 1);
    if (roots == NULL)
        roots = PX_CA_SYSTEM_ROOTS;
    if (px_ca_path(cpath, sizeof(cpath), dir, PX_CA_CERT_FILE) != AL_OK ||
        px_ca_path(bpath, sizeof(bpath), dir, PX_CA_BUNDLE_FILE) != AL_OK) {
        al_errs_add(errs, "%s: path too long", dir);
        goto out;
    }
    if (px_ca_read_file(cpath, &ca) != AL_OK) {
        al_errs_add(errs, "%s: %s (create the CA with: airlock ca init --dir %s)", cpath,
                    strerror(errno), dir);
        rc = errno == ENOENT ? AL_DECLINED : AL_ERROR;
        goto out;
    }
    ERR_clear_error();
    bio = BIO_new_mem_buf(ca.data, (int)ca.len);
    x = bio != NULL ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    if (x == NULL) {
        al_errs_add(errs, "%s: not a PEM certificate", cpath);
        rc = AL_DECLINED;
        goto out;
    }
    if (px_ca_read_file(roots, &out) != AL_OK) {
        al_errs_warn(errs, "%s: %s; the bundle holds only the airlock CA", roots, strerror(errno));
        al_dbuf_reset(&out);
    }
    if (out.len > 0 && out.data[out.len - 1] != '\n' && al_dbuf_add(&out, "\n", 1) != AL_OK)
        goto nomem;
    if (al_dbuf_add(&out, ca.data, ca.len) != AL_OK)
        goto nomem;
    if (px_ca_write_file(bpath, 0644, 0, out.data, out.len, errs) != AL_OK)
        goto out;
    rc = AL_OK;
    goto out;
nomem:
    al_errs_add(errs, "%s: bundle too large or out of memory", bpath);
out:
    X509_free(x);
    BIO_free(bio);
    al_dbuf_free(&ca);
    al_dbuf_free(&out);
    ERR_clear_error();
    return rc;
}

/* ---- loading the CA --------------------------------------------------------- */

/* The shared leaf key: EC P-256, legacy-backed for fast encoding (DESIGN). */
static EVP_PKEY *
px_ca_leaf_keygen(void)
{
    EC_KEY   *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
    EVP_PKEY *pk = EVP_PKEY_new();
    EVP_PKEY *ret = NULL;

    if (ec == NULL || pk == NULL || EC_KEY_generate_key(ec) != 1)
        goto out;
    if (EVP_PKEY_assign_EC_KEY(pk, ec) != 1)
        goto out;
    ec = NULL; /* owned by pk now */
    ret = pk;
    pk = NULL;
out:
    EC_KEY_free(ec);
    EVP_PKEY_free(pk);
    if (ret == NULL)
        ret = EVP_EC_gen("P-256"); /* slower to mint with, but correct */
    return ret;
}

/* Builds the extensions every leaf carries. */
static int
px_ca_build_exts(struct px_ca *ca)
{
    X509V3_CTX               v3;
    AUTHORITY_KEYID         *akid = NULL;
    const ASN1_OCTET_STRING *ski;
    int                      rc = AL_ERROR;

    X509V3_set_ctx(&v3, ca->cert, NULL, NULL, NULL, 0);
    ca->ext_bc = X509V3_EXT_conf_nid(NULL, &v3, NID_basic_constraints, "critical,CA:FALSE");
    ca->ext_ku = X509V3_EXT_conf_nid(NULL, &v3, NID_key_usage, "critical,digitalSignature");
    ca->ext_eku = X509V3_EXT_conf_nid(NULL, &v3, NID_ext_key_usage, "serverAuth");
    if (ca->ext_bc == NULL || ca->ext_ku == NULL || ca->ext_eku == NULL)
        goto out;
    ski = X509_get0_subject_key_id(ca->cert);
    if (ski != NULL) {
        akid = AUTHORITY_KEYID_new();
        if (akid == NULL)
            goto out;
        akid->keyid = ASN1_OCTET_STRING_dup(ski);
        if (akid->keyid == NULL)
            goto out;
        ca->ext_aki = X509V3_EXT_i2d(NID_authority_key_identifier, 0, akid);
        if (ca->ext_aki == NULL)
            goto out;
    }
    rc = AL_OK;
out:
    AUTHORITY_KEYID_free(akid);
    return rc;
}

struct px_ca *
px_ca_load_ex(const char *dir, size_t cache_entries, struct al_errs *errs)
{
    char          cpath[4096], kpath[4096], why[256];
    struct px_ca *ca = NULL;
    FILE         *f = NULL;
    struct stat   st;
    int           fd = -1, ok = 0, locked = 0;

    if (px_ca_path(kpath, sizeof(kpath), dir, PX_CA_KEY_FILE) != AL_OK ||
        px_ca_path(cpath, sizeof(cpath), dir, PX_CA_CERT_FILE) != AL_OK) {
        al_errs_add(errs, "%s: path too long", dir);
        goto out;
    }
    ca = al_calloc(1, sizeof(*ca));
    if (ca == NULL)
        goto nomem;
    atomic_init(&ca->refs, 1);
    atomic_init(&ca->mints, 0);
    atomic_init(&ca->hits, 0);
    if (pthread_mutex_init(&ca->lock, NULL) != 0)
        goto nomem;
    locked = 1;
    ca->cap = cache_entries > 0 ? cache_entries : 1;
    for (ca->nbuckets = 16; ca->nbuckets < ca->cap * 2; ca->nbuckets *= 2)
        ;
    ca->buckets = al_calloc(ca->nbuckets, sizeof(*ca->buckets));
    if (ca->buckets == NULL)
        goto nomem;

    ERR_clear_error();
    f = fopen(cpath, "re");
    if (f == NULL) {
        al_errs_add(errs, "%s: %s (create the CA with: airlock ca init --dir %s)", cpath,
                    strerror(errno), dir);
        goto out;
    }
    ca->cert = PEM_read_X509(f, NULL, px_ca_nopass_cb, NULL);
    fclose(f);
    f = NULL;
    if (ca->cert == NULL) {
        al_errs_add(errs, "%s: not a PEM certificate: %s", cpath,
                    px_ca_ssl_reason(why, sizeof(why)));
        goto out;
    }
    fd = open(kpath, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0 || fstat(fd, &st) != 0) {
        al_errs_add(errs, "%s: %s", kpath, strerror(errno));
        goto out;
    }
    if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0)
        al_errs_warn(errs, "%s: mode %04o lets group or others read the CA key (chmod 600 it)",
                     kpath, (unsigned)(st.st_mode & 07777));
    f = fdopen(fd, "r");
    if (f == NULL) {
        al_errs_add(errs, "%s: %s", kpath, strerror(errno));
        goto out;
    }
    fd = -1;
    ca->key = PEM_read_PrivateKey(f, NULL, px_ca_nopass_cb, NULL);
    if (ca->key == NULL) {
        al_errs_add(errs, "%s: not an unencrypted PEM private key: %s", kpath,
                    px_ca_ssl_reason(why, sizeof(why)));
        goto out;
    }
    if (X509_check_ca(ca->cert) != 1) {
        al_errs_add(errs, "%s: not a CA certificate (basicConstraints CA:TRUE missing)", cpath);
        goto out;
    }
    if ((X509_get_extension_flags(ca->cert) & EXFLAG_KUSAGE) != 0 &&
        (X509_get_key_usage(ca->cert) & KU_KEY_CERT_SIGN) == 0) {
        al_errs_add(errs, "%s: the CA certificate may not sign certificates (keyUsage)", cpath);
        goto out;
    }
    if (X509_check_private_key(ca->cert, ca->key) != 1) {
        ERR_clear_error();
        al_errs_add(errs, "%s does not match %s", kpath, cpath);
        goto out;
    }
    if (X509_cmp_current_time(X509_get0_notAfter(ca->cert)) <= 0) {
        al_errs_add(errs, "%s: the CA certificate has expired", cpath);
        goto out;
    }
    if (X509_cmp_current_time(X509_get0_notBefore(ca->cert)) >= 0) {
        al_errs_add(errs, "%s: the CA certificate is not valid yet", cpath);
        goto out;
    }
    ca->leaf_key = px_ca_leaf_keygen();
    if (ca->leaf_key == NULL) {
        al_errs_add(errs, "cannot generate the leaf key: %s", px_ca_ssl_reason(why, sizeof(why)));
        goto out;
    }
    if (px_ca_build_exts(ca) != AL_OK) {
        al_errs_add(errs, "cannot build leaf extensions: %s", px_ca_ssl_reason(why, sizeof(why)));
        goto out;
    }
    ok = 1;
    goto out;
nomem:
    al_errs_add(errs, "out of memory loading the CA");
out:
    if (f != NULL)
        fclose(f);
    if (fd >= 0)
        close(fd);
    if (!ok && ca != NULL) {
        if (!locked) {
            al_free(ca);
        } else {
            px_ca_free(ca);
        }
        ca = NULL;
    }
    ERR_clear_error();
    return ca;
}

struct px_ca *
px_ca_load(const char *dir, struct al_errs *errs)
{
    return px_ca_load_ex(dir, PX_CA_CACHE_ENTRIES, errs);
}

struct px_ca *
px_ca_ref(struct px_ca *ca)
{
    if (ca != NULL)
        atomic_fetch_add_explicit(&ca->refs, 1, memory_order_relaxed);
    return ca;
}

void
px_ca_free(struct px_ca *ca)
{
    struct px_ca_entry *e, *next;

    if (ca == NULL)
        return;
    if (atomic_fetch_sub_explicit(&ca->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (e = ca->lru_head; e != NULL; e = next) {
        next = e->next;
        X509_free(e->cert);
        al_free(e);
    }
    al_free(ca->buckets);
    X509_EXTENSION_free(ca->ext_bc);
    X509_EXTENSION_free(ca->ext_ku);
    X509_EXTENSION_free(ca->ext_eku);
    X509_EXTENSION_free(ca->ext_aki);
    EVP_PKEY_free(ca->leaf_key);
    EVP_PKEY_free(ca->key);
    X509_free(ca->cert);
    pthread_mutex_destroy(&ca->lock);
    al_free(ca);
}

X509 *
px_ca_cert(const struct px_ca *ca)
{
    return ca->cert;
}

EVP_PKEY *
px_ca_leaf_key(const struct px_ca *ca)
{
    return ca->leaf_key;
}

void
px_ca_stats(const struct px_ca *ca, uint64_t *mints, uint64_t *hits)
{
    if (mints != NULL)
        *mints = atomic_load_explicit(&ca->mints, memory_order_relaxed);
    if (hits != NULL)
        *hits = atomic_load_explicit(&ca->hits, memory_order_relaxed);
}

size_t
px_ca_cache_count(struct px_ca *ca)
{
    size_t n;

    pthread_mutex_lock(&ca->lock);
    n = ca->count;
    pthread_mutex_unlock(&ca->lock);
    return n;
}

/* ---- leaf minting ----------------------------------------------------------- */

/* The leaf for a normalised host. Returns a new certificate or NULL. */
static X509 *
px_ca_mint(struct px_ca *ca, const char *host, int is_ip)
{
    X509              *x = X509_new();
    GENERAL_NAMES     *gens = NULL;
    GENERAL_NAME      *gn = NULL;
    ASN1_IA5STRING    *ia5 = NULL;
    ASN1_OCTET_STRING *ip = NULL;
    X509              *ret = NULL;
    size_t             len = strlen(host);

    if (x == NULL)
        goto out;
    if (X509_set_version(x, X509_VERSION_3) != 1 || px_ca_set_serial(x) != AL_OK)
        goto out;
    if (X509_NAME_add_entry_by_NID(X509_get_subject_name(x), NID_commonName, MBSTRING_ASC,
                                   (const unsigned char *)host,
                                   (int)(len > PX_CA_CN_MAX ? PX_CA_CN_MAX : len), -1, 0) != 1)
        goto out;
    if (X509_set_issuer_name(x, X509_get_subject_name(ca->cert)) != 1)
        goto out;
    if (X509_gmtime_adj(X509_getm_notBefore(x), -PX_CA_LEAF_BACKDATE_S) == NULL ||
        X509_gmtime_adj(X509_getm_notAfter(x), PX_CA_LEAF_VALID_S) == NULL)
        goto out;
    if (X509_set_pubkey(x, ca->leaf_key) != 1)
        goto out;
    gens = sk_GENERAL_NAME_new_null();
    gn = GENERAL_NAME_new();
    if (gens == NULL || gn == NULL)
        goto out;
    if (is_ip) {
        ip = a2i_IPADDRESS(host);
        if (ip == NULL)
            goto out;
        GENERAL_NAME_set0_value(gn, GEN_IPADD, ip);
        ip = NULL;
    } else {
        ia5 = ASN1_IA5STRING_new();
        if (ia5 == NULL || ASN1_STRING_set(ia5, host, (int)len) != 1)
            goto out;
        GENERAL_NAME_set0_value(gn, GEN_DNS, ia5);
        ia5 = NULL;
    }
    if (sk_GENERAL_NAME_push(gens, gn) <= 0)
        goto out;
    gn = NULL;
    if (X509_add_ext(x, ca->ext_bc, -1) != 1 || X509_add_ext(x, ca->ext_ku, -1) != 1 ||
        X509_add_ext(x, ca->ext_eku, -1) != 1 ||
        (ca->ext_aki != NULL && X509_add_ext(x, ca->ext_aki, -1) != 1))
        goto out;
    if (X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 0, X509V3_ADD_DEFAULT) != 1)
        goto out;
    if (X509_sign(x, ca->key, EVP_sha256()) <= 0)
        goto out;
    ret = x;
    x = NULL;
out:
    ASN1_IA5STRING_free(ia5);
    ASN1_OCTET_STRING_free(ip);
    GENERAL_NAME_free(gn);
    GENERAL_NAMES_free(gens);
    X509_free(x);
    return ret;
}

/* Cache internals: the caller holds ca->lock. */
static struct px_ca_entry *
px_ca_cache_find(struct px_ca *ca, const char *key, uint64_t hash)
{
    struct px_ca_entry *e = ca->buckets[hash & (ca->nbuckets - 1)];

    for (; e != NULL; e = e->hnext) {
        if (e->hash == hash && strcmp(e->key, key) == 0)
            return e;
    }
    return NULL;
}

static void
px_ca_lru_unlink(struct px_ca *ca, struct px_ca_entry *e)
{
    if (e->prev != NULL)
        e->prev->next = e->next;
    else
        ca->lru_head = e->next;
    if (e->next != NULL)
        e->next->prev = e->prev;
    else
        ca->lru_tail = e->prev;
    e->prev = e->next = NULL;
}

static void
px_ca_lru_push(struct px_ca *ca, struct px_ca_entry *e)
{
    e->prev = NULL;
    e->next = ca->lru_head;
    if (ca->lru_head != NULL)
        ca->lru_head->prev = e;
    ca->lru_head = e;
    if (ca->lru_tail == NULL)
        ca->lru_tail = e;
}

/* Unlinks and frees e (hash chain and LRU list). */
static void
px_ca_cache_drop(struct px_ca *ca, struct px_ca_entry *e)
{
    struct px_ca_entry **pp = &ca->buckets[e->hash & (ca->nbuckets - 1)];

    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    px_ca_lru_unlink(ca, e);
    ca->count--;
    X509_free(e->cert);
    al_free(e);
}

/* A fresh cached leaf with a reference taken, or NULL (stale ones dropped). */
static X509 *
px_ca_cache_get(struct px_ca *ca, const char *key, uint64_t hash, time_t now)
{
    struct px_ca_entry *e = px_ca_cache_find(ca, key, hash);

    if (e == NULL)
        return NULL;
    if (e->expires <= now) {
        px_ca_cache_drop(ca, e);
        return NULL;
    }
    if (ca->lru_head != e) {
        px_ca_lru_unlink(ca, e);
        px_ca_lru_push(ca, e);
    }
    X509_up_ref(e->cert);
    return e->cert;
}

X509 *
px_ca_leaf(struct px_ca *ca, const char *host, int is_ip)
{
    char                host_n[PX_CA_HOST_MAX + 1], key[PX_CA_KEY_SZ];
    struct px_ca_entry *e = NULL;
    X509               *cert = NULL, *cached;
    uint64_t            hash;
    time_t              now = time(NULL);
    size_t              klen;

    if (ca == NULL || px_ca_host_normalize(host, host_n, sizeof(host_n), &is_ip) != AL_OK)
        goto out;
    snprintf(key, sizeof(key), "%c:%s", is_ip ? 'i' : 'd', host_n);
    hash = px_ca_hash(key);

    pthread_mutex_lock(&ca->lock);
    cert = px_ca_cache_get(ca, key, hash, now);
    pthread_mutex_unlock(&ca->lock);
    if (cert != NULL) {
        atomic_fetch_add_explicit(&ca->hits, 1, memory_order_relaxed);
        goto out;
    }

    ERR_clear_error();
    cert = px_ca_mint(ca, host_n, is_ip); /* no lock held while signing */
    if (cert == NULL) {
        px_tls_log_errors("minting a leaf certificate");
        goto out;
    }
    atomic_fetch_add_explicit(&ca->mints, 1, memory_order_relaxed);
    klen = strlen(key);
    e = al_malloc(sizeof(*e) + klen + 1);
    if (e == NULL)
        goto out; /* serve it uncached */
    memset(e, 0, sizeof(*e));
    memcpy(e->key, key, klen + 1);
    e->hash = hash;
    e->expires = now + PX_CA_LEAF_VALID_S - PX_CA_LEAF_REUSE_MARGIN_S;

    pthread_mutex_lock(&ca->lock);
    cached = px_ca_cache_get(ca, key, hash, now);
    if (cached != NULL) {
        X509_free(cert); /* another thread won the race: hand out its leaf */
        cert = cached;
    } else {
        X509_up_ref(cert);
        e->cert = cert;
        e->hnext = ca->buckets[hash & (ca->nbuckets - 1)];
        ca->buckets[hash & (ca->nbuckets - 1)] = e;
        px_ca_lru_push(ca, e);
        ca->count++;
        e = NULL;
        while (ca->count > ca->cap)
            px_ca_cache_drop(ca, ca->lru_tail);
    }
    pthread_mutex_unlock(&ca->lock);
out:
    al_free(e);
    return cert;
}
