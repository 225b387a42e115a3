/*
 * test_px_ca.c - the interception CA (px_ca.c, px_ca_cli.c): `airlock ca
 * init|env`, loading, leaf minting and its cache, and real TLS handshakes
 * between in-memory BIO pairs (no sockets): a client trusting the CA against
 * px_tls_server_ctx, and px_tls_upstream_ctx against test servers whose
 * certificates come from a throwaway test CA built here (trusted, expired,
 * wrong name, unknown issuer). Ends with a small benchmark (mints/s, cache
 * hits/s, full handshakes/s) printed to stdout.
 *
 * Everything lives under one mkdtemp folder removed at the end.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "common/common.h"
#include "proxy/px_ca.h"

#define PX_T_HS_ROUNDS 64

static char          px_t_root[256]; /* mkdtemp folder */
static char          px_t_cadir[512];
static struct px_ca *px_t_ca; /* loaded from px_t_cadir, default cache size */

/* ---- helpers --------------------------------------------------------------- */

static void
px_t_path(char *buf, size_t n, const char *rel)
{
    snprintf(buf, n, "%s/%s", px_t_root, rel);
}

static int
px_t_rm_cb(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static int
px_t_cli(int argc, const char **argv)
{
    return px_ca_cli(argc, (char **)(uintptr_t)argv);
}

/* Runs the CLI with stdout captured into `out` (NUL-terminated). */
static int
px_t_cli_capture(int argc, const char **argv, char *out, size_t outsz)
{
    char    path[512];
    int     saved, fd, rc;
    ssize_t n;

    px_t_path(path, sizeof(path), "stdout.txt");
    fflush(stdout);
    saved = dup(1);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(saved >= 0 && fd >= 0);
    dup2(fd, 1);
    close(fd);
    rc = px_t_cli(argc, argv);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    n = read(fd, out, outsz - 1);
    close(fd);
    out[n > 0 ? n : 0] = '\0';
    return rc;
}

static size_t
px_t_read(const char *path, char *buf, size_t n)
{
    FILE  *f = fopen(path, "r");
    size_t got;

    if (f == NULL)
        return 0;
    got = fread(buf, 1, n - 1, f);
    buf[got] = '\0';
    fclose(f);
    return got;
}

static void
px_t_write(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static mode_t
px_t_mode(const char *path)
{
    struct stat st;

    assert_int_equal(stat(path, &st), 0);
    return st.st_mode & 07777;
}

/* The first SAN entry of x: its type and text (DNS name or IP text). */
static int
px_t_san(X509 *x, char *out, size_t n)
{
    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    GENERAL_NAME  *gn;
    int            type = -1;

    out[0] = '\0';
    if (gens == NULL)
        return -1;
    assert_int_equal(sk_GENERAL_NAME_num(gens), 1);
    gn = sk_GENERAL_NAME_value(gens, 0);
    type = gn->type;
    if (type == GEN_DNS) {
        snprintf(out, n, "%.*s", ASN1_STRING_length(gn->d.dNSName),
                 (const char *)ASN1_STRING_get0_data(gn->d.dNSName));
    } else if (type == GEN_IPADD) {
        int len = ASN1_STRING_length(gn->d.iPAddress);

        assert_true(len == 4 || len == 16);
        assert_non_null(inet_ntop(len == 4 ? AF_INET : AF_INET6,
                                  ASN1_STRING_get0_data(gn->d.iPAddress), out, (socklen_t)n));
    }
    GENERAL_NAMES_free(gens);
    return type;
}

static void
px_t_cn(X509 *x, char *out, size_t n)
{
    out[0] = '\0';
    X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, out, (int)n);
}

/* Verifies leaf against the CA as a TLS server certificate for host/ip. */
static int
px_t_verify(X509 *leaf, X509 *cacert, const char *host, int is_ip)
{
    X509_STORE     *store = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    int             ok;

    assert_non_null(store);
    assert_non_null(ctx);
    assert_int_equal(X509_STORE_add_cert(store, cacert), 1);
    assert_int_equal(X509_STORE_CTX_init(ctx, store, leaf, NULL), 1);
    assert_int_equal(X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_SERVER), 1);
    if (is_ip)
        assert_int_equal(X509_VERIFY_PARAM_set1_ip_asc(X509_STORE_CTX_get0_param(ctx), host), 1);
    else
        assert_int_equal(X509_VERIFY_PARAM_set1_host(X509_STORE_CTX_get0_param(ctx), host, 0), 1);
    ok = X509_verify_cert(ctx);
    if (ok != 1)
        fprintf(stderr, "verify %s: %s\n", host,
                X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    return ok;
}

/* A certificate signed by issuer (self-signed when issuer is NULL). */
static X509 *
px_t_cert(X509 *issuer, EVP_PKEY *issuer_key, EVP_PKEY *key, const char *cn, const char *san,
          long nb_off, long na_off, int is_ca)
{
    X509      *x = X509_new();
    X509V3_CTX v3;

    assert_non_null(x);
    X509_set_version(x, X509_VERSION_3);
    ASN1_INTEGER_set(X509_get_serialNumber(x), (long)(random() & 0x7fffffff) + 1);
    X509_NAME_add_entry_by_NID(X509_get_subject_name(x), NID_commonName, MBSTRING_ASC,
                               (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(issuer != NULL ? issuer : x));
    X509_gmtime_adj(X509_getm_notBefore(x), nb_off);
    X509_gmtime_adj(X509_getm_notAfter(x), na_off);
    X509_set_pubkey(x, key);
    X509V3_set_ctx(&v3, issuer != NULL ? issuer : x, x, NULL, NULL, 0);
    if (is_ca) {
        X509_EXTENSION *e =
            X509V3_EXT_conf_nid(NULL, &v3, NID_basic_constraints, "critical,CA:TRUE");
        X509_add_ext(x, e, -1);
        X509_EXTENSION_free(e);
        e = X509V3_EXT_conf_nid(NULL, &v3, NID_key_usage, "critical,keyCertSign,cRLSign");
        X509_add_ext(x, e, -1);
        X509_EXTENSION_free(e);
    }
    if (san != NULL) {
        X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san);

        assert_non_null(e);
        X509_add_ext(x, e, -1);
        X509_EXTENSION_free(e);
    }
    assert_true(X509_sign(x, issuer_key, EVP_sha256()) > 0);
    return x;
}

/* A client SSL and a server SSL joined by an in-memory BIO pair. */
static void
px_t_pair(SSL_CTX *cctx, SSL_CTX *sctx, SSL **c, SSL **s)
{
    BIO *bc = NULL, *bs = NULL;

    assert_int_equal(BIO_new_bio_pair(&bc, 0, &bs, 0), 1);
    *c = SSL_new(cctx);
    *s = SSL_new(sctx);
    assert_non_null(*c);
    assert_non_null(*s);
    SSL_set_bio(*c, bc, bc);
    SSL_set_bio(*s, bs, bs);
    SSL_set_connect_state(*c);
    SSL_set_accept_state(*s);
}

/* Drives both handshakes. 0: both done; -1: client failed; -2: server failed. */
static int
px_t_handshake(SSL *c, SSL *s)
{
    int cdone = 0, sdone = 0;

    for (int i = 0; i < PX_T_HS_ROUNDS && !(cdone && sdone); i++) {
        if (!cdone) {
            int r, e;

            ERR_clear_error();
            r = SSL_do_handshake(c);
            e = SSL_get_error(c, r);
            if (r == 1)
                cdone = 1;
            else if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
                return -1;
        }
        if (!sdone) {
            int r, e;

            ERR_clear_error();
            r = SSL_do_handshake(s);
            e = SSL_get_error(s, r);
            if (r == 1)
                sdone = 1;
            else if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
                return -2;
        }
    }
    return (cdone && sdone) ? 0 : -3;
}

/* Sends one byte server -> client so a TLS 1.3 client reads its tickets. */
static void
px_t_pump_tickets(SSL *c, SSL *s)
{
    char b = 'x';

    assert_int_equal(SSL_write(s, &b, 1), 1);
    assert_int_equal(SSL_read(c, &b, 1), 1);
    assert_int_equal(b, 'x');
}

/* A client context trusting ca.pem. alpn: wire-format list or NULL. */
static SSL_CTX *
px_t_client_ctx(const unsigned char *alpn, unsigned alpnlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    char     capath[600];

    assert_non_null(ctx);
    snprintf(capath, sizeof(capath), "%s/ca.pem", px_t_cadir);
    assert_int_equal(SSL_CTX_load_verify_locations(ctx, capath, NULL), 1);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (alpn != NULL)
        assert_int_equal(SSL_CTX_set_alpn_protos(ctx, alpn, alpnlen), 0);
    return ctx;
}

/* ---- setup ------------------------------------------------------------------ */

static int
px_t_setup(void **state)
{
    struct al_errs errs;
    const char    *argv[] = {"ca", "init", "--dir", px_t_cadir};

    (void)state;
    snprintf(px_t_root, sizeof(px_t_root), "/tmp/px_ca_test.XXXXXX");
    if (mkdtemp(px_t_root) == NULL)
        return -1;
    snprintf(px_t_cadir, sizeof(px_t_cadir), "%s/main/ca", px_t_root);
    if (px_t_cli(4, argv) != 0)
        return -1;
    al_errs_init(&errs);
    px_t_ca = px_ca_load(px_t_cadir, &errs);
    if (px_t_ca == NULL)
        fprintf(stderr, "%s", errs.text.data ? errs.text.data : "?");
    al_errs_free(&errs);
    return px_t_ca == NULL ? -1 : 0;
}

static int
px_t_teardown(void **state)
{
    (void)state;
    px_ca_free(px_t_ca);
    px_t_ca = NULL;
    nftw(px_t_root, px_t_rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

/* ---- ca init / env ------------------------------------------------------------ */

static void
test_ca_init_modes_and_refusal(void **state)
{
    char        dir[512], key[600], pem[600], before[4096], after[4096], cn[256];
    const char *argv[] = {"ca", "init", "--dir", dir, "--force"};
    X509       *x;
    FILE       *f;
    EVP_PKEY   *pk;
    time_t      now = time(NULL), t;

    (void)state;
    px_t_path(dir, sizeof(dir), "init/deep/ca");
    snprintf(key, sizeof(key), "%s/ca.key", dir);
    snprintf(pem, sizeof(pem), "%s/ca.pem", dir);
    assert_int_equal(px_t_cli(4, argv), 0);
    assert_int_equal(px_t_mode(dir), 0700);
    assert_int_equal(px_t_mode(key), 0600);
    assert_true(px_t_read(key, before, sizeof(before)) > 0);
    assert_non_null(strstr(before, "BEGIN PRIVATE KEY"));

    /* Again without --force: refused, exit 2, nothing changed. */
    assert_int_equal(px_t_cli(4, argv), 2);
    px_t_read(key, after, sizeof(after));
    assert_string_equal(before, after);

    /* --force replaces both. */
    assert_int_equal(px_t_cli(5, argv), 0);
    px_t_read(key, after, sizeof(after));
    assert_string_not_equal(before, after);
    assert_int_equal(px_t_mode(key), 0600);

    /* The certificate: CA, pathlen 0, keyCertSign+cRLSign, SKI, EC P-256, 10 years. */
    f = fopen(pem, "r");
    assert_non_null(f);
    x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(x);
    px_t_cn(x, cn, sizeof(cn));
    assert_true(strncmp(cn, "airlock interception CA ", 24) == 0 && strlen(cn) == 32);
    assert_int_equal(X509_check_ca(x), 1);
    assert_int_equal(X509_get_pathlen(x), 0);
    assert_int_equal(X509_get_key_usage(x), KU_KEY_CERT_SIGN | KU_CRL_SIGN);
    assert_non_null(X509_get0_subject_key_id(x));
    assert_true(X509_get_ext_by_NID(x, NID_basic_constraints, -1) >= 0);
    assert_int_equal(X509_EXTENSION_get_critical(
                         X509_get_ext(x, X509_get_ext_by_NID(x, NID_basic_constraints, -1))),
                     1);
    assert_int_equal(
        X509_EXTENSION_get_critical(X509_get_ext(x, X509_get_ext_by_NID(x, NID_key_usage, -1))), 1);
    assert_int_equal(X509_get_signature_nid(x), NID_ecdsa_with_SHA256);
    pk = X509_get0_pubkey(x);
    assert_int_equal(EVP_PKEY_get_base_id(pk), EVP_PKEY_EC);
    assert_int_equal(EVP_PKEY_get_bits(pk), 256);
    t = now + 3649L * 86400;
    assert_true(X509_cmp_time(X509_get0_notAfter(x), &t) > 0);
    t = now + 3651L * 86400;
    assert_true(X509_cmp_time(X509_get0_notAfter(x), &t) < 0);
    assert_true(X509_cmp_time(X509_get0_notBefore(x), &now) < 0);
    {
        const ASN1_INTEGER *ser = X509_get0_serialNumber(x);
        BIGNUM             *bn = ASN1_INTEGER_to_BN(ser, NULL);

        assert_true(BN_num_bits(bn) > 96 && BN_num_bits(bn) <= 128);
        BN_free(bn);
    }
    X509_free(x);

    /* Usage errors. */
    {
        const char *bad[] = {"ca", "init"};
        const char *bad2[] = {"ca", "init", "--dir", dir, "--bogus"};
        const char *bad3[] = {"ca", "frobnicate"};

        assert_int_equal(px_t_cli(2, bad), 2);
        assert_int_equal(px_t_cli(5, bad2), 2);
        assert_int_equal(px_t_cli(2, bad3), 2);
    }
}

static void
test_ca_init_refuses_if_only_cert_exists(void **state)
{
    char        dir[512], key[600], pem[600];
    const char *argv[] = {"ca", "init", "--dir", dir};

    (void)state;
    px_t_path(dir, sizeof(dir), "onlycert");
    snprintf(key, sizeof(key), "%s/ca.key", dir);
    snprintf(pem, sizeof(pem), "%s/ca.pem", dir);
    assert_int_equal(px_t_cli(4, argv), 0);
    assert_int_equal(unlink(key), 0);
    assert_int_equal(px_t_cli(4, argv), 2);
    assert_int_equal(access(key, F_OK), -1); /* no orphan key written */
}

static void
test_ca_env(void **state)
{
    char        roots[512], cfg[512], cfg2[512], out[8192], bundle[4200], text[65536], want[8400];
    char        real[4096], pem[8192];
    const char *argv[] = {"ca", "env", "--dir", px_t_cadir, "--roots", roots};
    const char *argv_cfg[] = {"ca", "env", "--config", cfg, "--roots", roots};
    const char *argv_nocfg[] = {"ca", "env", "--config", cfg2};
    const char *argv_missing[] = {"ca", "env", "--dir", "/nonexistent/airlock-ca"};
    const char *argv_both[] = {"ca", "env"};
    static const char *const vars[] = {"SSL_CERT_FILE",  "REQUESTS_CA_BUNDLE", "GIT_SSL_CAINFO",
                                       "CURL_CA_BUNDLE", "PIP_CERT",           "CARGO_HTTP_CAINFO",
                                       "DENO_CERT",      "AWS_CA_BUNDLE",      NULL};

    (void)state;
    px_t_path(roots, sizeof(roots), "roots.pem");
    px_t_write(roots, "# fake system roots\n-----BEGIN CERTIFICATE-----\nAAAA\n"
                      "-----END CERTIFICATE-----"); /* no trailing newline on purpose */
    assert_int_equal(px_t_cli_capture(6, argv, out, sizeof(out)), 0);
    assert_non_null(realpath(px_t_cadir, real));
    /* the public files go next to the CA folder (0700, the key's), never into it */
    *strrchr(real, '/') = '\0';
    strcat(real, "/ca-public");
    snprintf(bundle, sizeof(bundle), "%s/bundle.pem", real);
    for (int i = 0; vars[i] != NULL; i++) {
        snprintf(want, sizeof(want), "export %s='%s'\n", vars[i], bundle);
        assert_non_null(strstr(out, want));
    }
    snprintf(want, sizeof(want), "export NODE_EXTRA_CA_CERTS='%s/ca.pem'\n", real);
    assert_non_null(strstr(out, want));
    {
        struct stat st;

        assert_int_equal(stat(bundle, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0644);
        snprintf(want, sizeof(want), "%s/ca.pem", real);
        assert_int_equal(stat(want, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0644);
        assert_int_equal(stat(real, &st), 0);
        assert_int_equal(st.st_mode & 0755, 0755);
        snprintf(want, sizeof(want), "%s/bundle.pem", px_t_cadir);
        assert_int_equal(access(want, F_OK), -1); /* nothing public in the key folder */
    }
    /* bundle = roots, a newline, ca.pem */
    assert_true(px_t_read(bundle, text, sizeof(text)) > 0);
    snprintf(want, sizeof(want), "%s/ca.pem", px_t_cadir);
    px_t_read(want, pem, sizeof(pem));
    assert_true(strncmp(text, "# fake system roots\n", 20) == 0);
    assert_non_null(strstr(text, "-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----"));
    assert_string_equal(text + strlen(text) - strlen(pem), pem);
    assert_null(strstr(text, "PRIVATE KEY"));

    /* Through a config file: ca.dir relative to the config's folder. */
    px_t_path(cfg, sizeof(cfg), "main/airlock.json");
    px_t_write(cfg, "{\"policy\": \"policy.json\", \"ca\": {\"dir\": \"ca\"}}\n");
    assert_int_equal(px_t_cli_capture(6, argv_cfg, out, sizeof(out)), 0);
    snprintf(want, sizeof(want), "export SSL_CERT_FILE='%s'\n", bundle);
    assert_non_null(strstr(out, want));
    px_t_path(cfg2, sizeof(cfg2), "main/noca.json");
    px_t_write(cfg2, "{\"policy\": \"policy.json\"}\n");
    assert_int_equal(px_t_cli_capture(4, argv_nocfg, out, sizeof(out)), 2);
    assert_int_equal(px_t_cli_capture(4, argv_missing, out, sizeof(out)), 2);
    assert_int_equal(px_t_cli_capture(2, argv_both, out, sizeof(out)), 2);
}

/* ---- load ------------------------------------------------------------------------ */

static void
test_load_checks(void **state)
{
    char           a[512], b[512], key[600], src[600], mixed[512];
    const char    *ia[] = {"ca", "init", "--dir", a};
    const char    *ib[] = {"ca", "init", "--dir", b};
    struct al_errs errs;
    struct px_ca  *ca;
    char           buf[4096];

    (void)state;
    px_t_path(a, sizeof(a), "load/a");
    px_t_path(b, sizeof(b), "load/b");
    assert_int_equal(px_t_cli(4, ia), 0);
    assert_int_equal(px_t_cli(4, ib), 0);

    /* A world-readable key loads, with a warning. */
    snprintf(key, sizeof(key), "%s/ca.key", a);
    assert_int_equal(chmod(key, 0644), 0);
    al_errs_init(&errs);
    ca = px_ca_load(a, &errs);
    assert_non_null(ca);
    assert_int_equal(errs.count, 0);
    assert_int_equal(errs.warnings, 1);
    assert_non_null(strstr(errs.text.data, "chmod 600"));
    px_ca_free(ca);
    al_errs_free(&errs);

    /* a's certificate with b's key: refused. */
    px_t_path(mixed, sizeof(mixed), "load/mixed");
    mkdir(mixed, 0700);
    snprintf(src, sizeof(src), "%s/ca.pem", a);
    px_t_read(src, buf, sizeof(buf));
    snprintf(src, sizeof(src), "%s/ca.pem", mixed);
    px_t_write(src, buf);
    snprintf(src, sizeof(src), "%s/ca.key", b);
    px_t_read(src, buf, sizeof(buf));
    snprintf(src, sizeof(src), "%s/ca.key", mixed);
    px_t_write(src, buf);
    chmod(src, 0600);
    al_errs_init(&errs);
    assert_null(px_ca_load(mixed, &errs));
    assert_non_null(strstr(errs.text.data, "does not match"));
    al_errs_free(&errs);

    /* A missing folder names the fix. */
    al_errs_init(&errs);
    assert_null(px_ca_load("/nonexistent/airlock", &errs));
    assert_non_null(strstr(errs.text.data, "airlock ca init"));
    al_errs_free(&errs);

    /* A leaf (not a CA) in ca.pem: refused. */
    {
        X509 *leaf = px_ca_leaf(px_t_ca, "notaca.test", 0);
        FILE *f;

        assert_non_null(leaf);
        snprintf(src, sizeof(src), "%s/ca.pem", mixed);
        f = fopen(src, "w");
        PEM_write_X509(f, leaf);
        fclose(f);
        X509_free(leaf);
        al_errs_init(&errs);
        assert_null(px_ca_load(mixed, &errs));
        assert_true(errs.count >= 1);
        al_errs_free(&errs);
    }
}

/* ---- leaves ------------------------------------------------------------------------ */

static void
px_t_check_leaf(X509 *x, const char *host, int is_ip, int want_type, const char *want_san)
{
    char   san[300], cn[300];
    time_t now = time(NULL), t;

    assert_non_null(x);
    assert_int_equal(px_t_verify(x, px_ca_cert(px_t_ca), host, is_ip), 1);
    assert_int_equal(px_t_san(x, san, sizeof(san)), want_type);
    assert_string_equal(san, want_san);
    px_t_cn(x, cn, sizeof(cn));
    assert_string_equal(cn, want_san);
    /* backdated about an hour, valid about seven days */
    t = now - 3500;
    assert_true(X509_cmp_time(X509_get0_notBefore(x), &t) < 0);
    t = now - 3700;
    assert_true(X509_cmp_time(X509_get0_notBefore(x), &t) > 0);
    t = now + 7 * 86400 - 100;
    assert_true(X509_cmp_time(X509_get0_notAfter(x), &t) > 0);
    t = now + 7 * 86400 + 100;
    assert_true(X509_cmp_time(X509_get0_notAfter(x), &t) < 0);
    assert_int_equal(X509_check_ca(x), 0);
    assert_true((X509_get_extended_key_usage(x) & XKU_SSL_SERVER) != 0);
    assert_int_equal(X509_get_signature_nid(x), NID_ecdsa_with_SHA256);
    /* AKI = the CA's SKI */
    assert_int_equal(ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(x),
                                           X509_get0_subject_key_id(px_ca_cert(px_t_ca))),
                     0);
    assert_int_equal(X509_check_private_key(x, px_ca_leaf_key(px_t_ca)), 1);
}

static void
test_leaf_name_v4_v6(void **state)
{
    X509 *x;

    (void)state;
    x = px_ca_leaf(px_t_ca, "api.example.test", 0);
    px_t_check_leaf(x, "api.example.test", 0, GEN_DNS, "api.example.test");
    X509_free(x);
    x = px_ca_leaf(px_t_ca, "192.0.2.7", 1);
    px_t_check_leaf(x, "192.0.2.7", 1, GEN_IPADD, "192.0.2.7");
    X509_free(x);
    x = px_ca_leaf(px_t_ca, "2001:db8::1", 1);
    px_t_check_leaf(x, "2001:db8::1", 1, GEN_IPADD, "2001:db8::1");
    /* DNS name does not verify as that host's IP and vice versa */
    assert_int_equal(px_t_verify(x, px_ca_cert(px_t_ca), "2001:db8::2", 1), 0);
    X509_free(x);
    /* bracketed v6 and an IP given as is_ip = 0 are still IP SANs */
    x = px_ca_leaf(px_t_ca, "[2001:db8::1]", 0);
    assert_non_null(x);
    assert_int_equal(px_t_verify(x, px_ca_cert(px_t_ca), "2001:db8::1", 1), 1);
    X509_free(x);
}

static void
test_leaf_long_name_and_bad_hosts(void **state)
{
    char        host[300], cn[300], san[300];
    X509       *x;
    const char *bad[] = {"",         "bad host", "a..b",     "-a.test", "a-.test",
                         "x*.test",  "*.test",   "a.test\n", ".",       "caf\xc3\xa9.test",
                         "a/b.test", "[::1",     NULL};

    (void)state;
    /* 4 labels of 40 + dots: 163 bytes; CN cut at 64, SAN complete. */
    snprintf(host, sizeof(host), "%s.%s.%s.%s", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
             "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "cccccccccccccccccccccccccccccccccccccccc",
             "dddddddddddddddddddddddddddddddddddddddd");
    x = px_ca_leaf(px_t_ca, host, 0);
    assert_non_null(x);
    px_t_cn(x, cn, sizeof(cn));
    assert_int_equal(strlen(cn), 64);
    assert_int_equal(px_t_san(x, san, sizeof(san)), GEN_DNS);
    assert_string_equal(san, host);
    assert_int_equal(px_t_verify(x, px_ca_cert(px_t_ca), host, 0), 1);
    X509_free(x);

    for (int i = 0; bad[i] != NULL; i++) {
        x = px_ca_leaf(px_t_ca, bad[i], 0);
        if (x != NULL)
            fprintf(stderr, "accepted bad host [%s]\n", bad[i]);
        assert_null(x);
    }
    /* 64-byte label, 254-byte name */
    memset(host, 'a', 64);
    memcpy(host + 64, ".test", 6);
    assert_null(px_ca_leaf(px_t_ca, host, 0));
    for (int i = 0; i < 254; i++)
        host[i] = (i % 50 == 49) ? '.' : 'a';
    host[254] = '\0';
    assert_null(px_ca_leaf(px_t_ca, host, 0));
}

static void
test_leaf_serials_unique(void **state)
{
    BIGNUM *seen[64];
    char    host[64];

    (void)state;
    for (int i = 0; i < 64; i++) {
        X509 *x;

        snprintf(host, sizeof(host), "serial%d.test", i);
        x = px_ca_leaf(px_t_ca, host, 0);
        assert_non_null(x);
        seen[i] = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
        assert_true(BN_num_bits(seen[i]) > 96 && BN_num_bits(seen[i]) <= 128);
        for (int j = 0; j < i; j++)
            assert_int_not_equal(BN_cmp(seen[i], seen[j]), 0);
        X509_free(x);
    }
    for (int i = 0; i < 64; i++)
        BN_free(seen[i]);
}

static void
test_cache_hit(void **state)
{
    uint64_t m0, h0, m1, h1;
    X509    *a, *b, *c;

    (void)state;
    px_ca_stats(px_t_ca, &m0, &h0);
    a = px_ca_leaf(px_t_ca, "cache.test", 0);
    b = px_ca_leaf(px_t_ca, "CACHE.Test.", 0); /* same host, normalised */
    c = px_ca_leaf(px_t_ca, "cache.test", 0);
    assert_non_null(a);
    assert_ptr_equal(a, b);
    assert_ptr_equal(a, c);
    px_ca_stats(px_t_ca, &m1, &h1);
    assert_int_equal(m1 - m0, 1);
    assert_int_equal(h1 - h0, 2);
    X509_free(a);
    X509_free(b);
    X509_free(c);
}

static void
test_cache_lru_bound(void **state)
{
    struct al_errs errs;
    struct px_ca  *ca;
    char           host[64];
    uint64_t       m, h, m2, h2;
    X509          *x;

    (void)state;
    al_errs_init(&errs);
    ca = px_ca_load_ex(px_t_cadir, 8, &errs);
    assert_non_null(ca);
    for (int i = 0; i < 10; i++) {
        snprintf(host, sizeof(host), "h%d.test", i);
        x = px_ca_leaf(ca, host, 0);
        assert_non_null(x);
        X509_free(x);
        if (i == 5) { /* touch h0 again: it is now recent and survives */
            X509_free(px_ca_leaf(ca, "h0.test", 0));
        }
    }
    assert_int_equal(px_ca_cache_count(ca), 8);
    px_ca_stats(ca, &m, &h);
    assert_int_equal(m, 10);
    assert_int_equal(h, 1);
    /* h1 and h2 were the least recently used: gone. h0 and h9 stay. */
    X509_free(px_ca_leaf(ca, "h0.test", 0));
    X509_free(px_ca_leaf(ca, "h9.test", 0));
    px_ca_stats(ca, &m2, &h2);
    assert_int_equal(m2, m);
    assert_int_equal(h2, h + 2);
    X509_free(px_ca_leaf(ca, "h1.test", 0));
    px_ca_stats(ca, &m2, &h2);
    assert_int_equal(m2, m + 1);
    px_ca_free(ca);

    /* The default bound with 1100 distinct hosts. */
    ca = px_ca_load(px_t_cadir, &errs);
    assert_non_null(ca);
    for (int i = 0; i < 1100; i++) {
        snprintf(host, sizeof(host), "bulk%d.test", i);
        x = px_ca_leaf(ca, host, 0);
        assert_non_null(x);
        X509_free(x);
    }
    assert_int_equal(px_ca_cache_count(ca), PX_CA_CACHE_ENTRIES);
    px_ca_stats(ca, &m, &h);
    assert_int_equal(m, 1100);
    X509_free(px_ca_leaf(ca, "bulk1099.test", 0)); /* recent: hit */
    X509_free(px_ca_leaf(ca, "bulk0.test", 0));    /* evicted: mint */
    px_ca_stats(ca, &m2, &h2);
    assert_int_equal(m2, 1101);
    assert_int_equal(h2, h + 1);
    px_ca_free(ca);
    al_errs_free(&errs);
}

struct px_t_thr {
    struct px_ca *ca;
    int           seed;
    int           failures;
};

static void *
px_t_thread(void *arg)
{
    struct px_t_thr *t = arg;
    char             host[64];

    for (int i = 0; i < 300; i++) {
        X509 *x;

        snprintf(host, sizeof(host), "t%d.test", (i * 7 + t->seed) % 40);
        x = px_ca_leaf(t->ca, host, 0);
        if (x == NULL)
            t->failures++;
        X509_free(x);
    }
    return NULL;
}

static void
test_cache_threads(void **state)
{
    struct al_errs  errs;
    struct px_t_thr t[4];
    pthread_t       th[4];
    uint64_t        m, h;

    (void)state;
    al_errs_init(&errs);
    t[0].ca = px_ca_load_ex(px_t_cadir, 32, &errs); /* smaller than the host set: churn */
    assert_non_null(t[0].ca);
    for (int i = 0; i < 4; i++) {
        t[i].ca = t[0].ca;
        t[i].seed = i * 13;
        t[i].failures = 0;
        assert_int_equal(pthread_create(&th[i], NULL, px_t_thread, &t[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(t[i].failures, 0);
    }
    px_ca_stats(t[0].ca, &m, &h);
    assert_int_equal(m + h, 1200);
    assert_int_equal(px_ca_cache_count(t[0].ca), 32);
    px_ca_free(t[0].ca);
    al_errs_free(&errs);
}

/* ---- the interception handshake ------------------------------------------------- */

static void
test_handshake_sni(void **state)
{
    static const unsigned char alpn[] = "\x02h2\x08http/1.1";
    SSL_CTX                   *sctx = px_tls_server_ctx(px_t_ca);
    SSL_CTX                   *cctx = px_t_client_ctx(alpn, sizeof(alpn) - 1);
    SSL                       *c, *s;
    X509                      *peer;
    const unsigned char       *sel;
    unsigned                   sellen;
    char                       cn[300], san[300];

    (void)state;
    assert_non_null(sctx);
    px_t_pair(cctx, sctx, &c, &s);
    assert_int_equal(SSL_set_tlsext_host_name(c, "api.test"), 1);
    assert_int_equal(SSL_set1_host(c, "api.test"), 1);
    assert_int_equal(px_tls_set_default_host(s, "connect-host.test", 0, 0), AL_OK);
    assert_int_equal(px_t_handshake(c, s), 0);
    assert_int_equal(SSL_get_verify_result(c), X509_V_OK);
    peer = SSL_get1_peer_certificate(c);
    assert_non_null(peer);
    px_t_cn(peer, cn, sizeof(cn));
    assert_string_equal(cn, "api.test");
    assert_int_equal(px_t_san(peer, san, sizeof(san)), GEN_DNS);
    assert_string_equal(san, "api.test"); /* SNI wins over the default host */
    X509_free(peer);
    SSL_get0_alpn_selected(c, &sel, &sellen);
    assert_int_equal(sellen, 8);
    assert_memory_equal(sel, "http/1.1", 8);
    assert_string_equal(px_tls_sni(s), "api.test");
    assert_true(px_tls_sni_mismatch(s)); /* not strict: reported, not refused */
    assert_false(px_tls_alpn_refused(s));
    assert_true(SSL_version(s) >= TLS1_2_VERSION);
    SSL_free(c);
    SSL_free(s);

    /* A client capped at TLS 1.2 works too; one capped at 1.1 does not. */
    SSL_CTX_set_max_proto_version(cctx, TLS1_2_VERSION);
    px_t_pair(cctx, sctx, &c, &s);
    SSL_set_tlsext_host_name(c, "api.test");
    assert_int_equal(px_t_handshake(c, s), 0);
    assert_int_equal(SSL_version(c), TLS1_2_VERSION);
    SSL_free(c);
    SSL_free(s);
    SSL_CTX_set_min_proto_version(cctx, TLS1_VERSION);
    SSL_CTX_set_max_proto_version(cctx, TLS1_1_VERSION);
    SSL_CTX_set_security_level(cctx, 0);
    px_t_pair(cctx, sctx, &c, &s);
    SSL_set_tlsext_host_name(c, "api.test");
    assert_true(px_t_handshake(c, s) < 0);
    SSL_free(c);
    SSL_free(s);

    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
}

static void
test_handshake_h2_only_refused(void **state)
{
    static const unsigned char alpn[] = "\x02h2";
    SSL_CTX                   *sctx = px_tls_server_ctx(px_t_ca);
    SSL_CTX                   *cctx = px_t_client_ctx(alpn, sizeof(alpn) - 1);
    SSL                       *c, *s;
    int                        r;

    (void)state;
    px_t_pair(cctx, sctx, &c, &s);
    SSL_set_tlsext_host_name(c, "api.test");
    r = px_t_handshake(c, s);
    assert_int_equal(r, -2); /* the server refuses */
    assert_true(px_tls_alpn_refused(s));
    assert_int_equal(ERR_GET_REASON(ERR_peek_last_error()), SSL_R_NO_APPLICATION_PROTOCOL);
    ERR_clear_error();
    /* the client then reads the alert */
    assert_int_equal(px_t_handshake(c, s), -1);
    ERR_clear_error();
    SSL_free(c);
    SSL_free(s);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
}

static void
test_handshake_no_alpn_no_sni(void **state)
{
    SSL_CTX             *sctx = px_tls_server_ctx(px_t_ca);
    SSL_CTX             *cctx = px_t_client_ctx(NULL, 0);
    SSL                 *c, *s;
    X509                *peer;
    char                 san[300];
    const unsigned char *sel;
    unsigned             sellen;

    (void)state;
    /* No SNI, default host an IP literal: the leaf carries that IP. */
    px_t_pair(cctx, sctx, &c, &s);
    assert_int_equal(X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c), "10.1.2.3"), 1);
    assert_int_equal(px_tls_set_default_host(s, "10.1.2.3", 1, 1), AL_OK);
    assert_int_equal(px_t_handshake(c, s), 0);
    assert_int_equal(SSL_get_verify_result(c), X509_V_OK);
    peer = SSL_get1_peer_certificate(c);
    assert_int_equal(px_t_san(peer, san, sizeof(san)), GEN_IPADD);
    assert_string_equal(san, "10.1.2.3");
    X509_free(peer);
    assert_null(px_tls_sni(s));
    SSL_get0_alpn_selected(c, &sel, &sellen);
    assert_int_equal(sellen, 0);
    SSL_free(c);
    SSL_free(s);

    /* No SNI, default host a name. */
    px_t_pair(cctx, sctx, &c, &s);
    SSL_set1_host(c, "connect.test");
    px_tls_set_default_host(s, "connect.test", 0, 1);
    assert_int_equal(px_t_handshake(c, s), 0);
    assert_int_equal(SSL_get_verify_result(c), X509_V_OK);
    SSL_free(c);
    SSL_free(s);

    /* No SNI and no default host: nothing to mint, refused. */
    px_t_pair(cctx, sctx, &c, &s);
    assert_int_equal(px_t_handshake(c, s), -2);
    ERR_clear_error();
    SSL_free(c);
    SSL_free(s);

    /* An SNI that is not a host name: unrecognized_name. */
    px_t_pair(cctx, sctx, &c, &s);
    SSL_set_tlsext_host_name(c, "bad host!");
    px_tls_set_default_host(s, "connect.test", 0, 1);
    assert_int_equal(px_t_handshake(c, s), -2);
    assert_true(px_tls_sni_refused(s));
    assert_false(px_tls_alpn_refused(s));
    ERR_clear_error();
    SSL_free(c);
    SSL_free(s);

    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
}

static void
test_handshake_strict_sni(void **state)
{
    SSL_CTX *sctx = px_tls_server_ctx(px_t_ca);
    SSL_CTX *cctx = px_t_client_ctx(NULL, 0);
    SSL     *c, *s;
    uint64_t m0, h0, m1, h1;

    (void)state;
    /* Same host, other spelling: fine. */
    px_t_pair(cctx, sctx, &c, &s);
    SSL_set_tlsext_host_name(c, "Strict.Test.");
    SSL_set1_host(c, "strict.test");
    px_tls_set_default_host(s, "strict.test", 0, 1);
    assert_int_equal(px_t_handshake(c, s), 0);
    assert_int_equal(SSL_get_verify_result(c), X509_V_OK);
    assert_false(px_tls_sni_mismatch(s));
    SSL_free(c);
    SSL_free(s);

    /* Another host: refused before anything is minted or looked up. */
    px_ca_stats(px_t_ca, &m0, &h0);
    px_t_pair(cctx, sctx, &c, &s);
    SSL_set_tlsext_host_name(c, "elsewhere.test");
    px_tls_set_default_host(s, "strict.test", 0, 1);
    assert_int_equal(px_t_handshake(c, s), -2);
    assert_true(px_tls_sni_mismatch(s));
    assert_false(px_tls_sni_refused(s));
    ERR_clear_error();
    px_ca_stats(px_t_ca, &m1, &h1);
    assert_int_equal(m1, m0);
    assert_int_equal(h1, h0);
    SSL_free(c);
    SSL_free(s);

    /* An IP CONNECT host with a name SNI: a mismatch too. */
    px_t_pair(cctx, sctx, &c, &s);
    SSL_set_tlsext_host_name(c, "strict.test");
    px_tls_set_default_host(s, "192.0.2.1", 1, 1);
    assert_int_equal(px_t_handshake(c, s), -2);
    assert_true(px_tls_sni_mismatch(s));
    ERR_clear_error();
    SSL_free(c);
    SSL_free(s);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
}

static void
test_handshake_server_resumption(void **state)
{
    SSL_CTX     *sctx = px_tls_server_ctx(px_t_ca);
    SSL_CTX     *cctx = px_t_client_ctx(NULL, 0);
    SSL         *c, *s;
    SSL_SESSION *sess;

    (void)state;
    for (int v = 0; v < 2; v++) {
        SSL_CTX_set_max_proto_version(cctx, v == 0 ? TLS1_3_VERSION : TLS1_2_VERSION);
        px_t_pair(cctx, sctx, &c, &s);
        SSL_set_tlsext_host_name(c, "resume.test");
        assert_int_equal(px_t_handshake(c, s), 0);
        px_t_pump_tickets(c, s);
        sess = SSL_get1_session(c);
        assert_non_null(sess);
        assert_true(SSL_SESSION_is_resumable(sess));
        /* A clean close: OpenSSL marks the session of a connection freed
         * without one as not resumable. */
        SSL_shutdown(c);
        SSL_free(c);
        SSL_free(s);

        px_t_pair(cctx, sctx, &c, &s);
        SSL_set_tlsext_host_name(c, "resume.test");
        assert_int_equal(SSL_set_session(c, sess), 1);
        assert_int_equal(px_t_handshake(c, s), 0);
        assert_true(SSL_session_reused(c));
        SSL_SESSION_free(sess);
        SSL_free(c);
        SSL_free(s);
    }
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
}

/* ---- upstream verification --------------------------------------------------------- */

struct px_t_up {
    EVP_PKEY *ca_key, *other_key, *key;
    X509     *ca, *other;
    char      ca_file[512];
    char      offered[64]; /* ALPN list the server saw */
    X509     *srv_cert[8]; /* one server context per certificate, kept so */
    SSL_CTX  *srv_ctx[8];  /* its ticket keys survive between connections */
    int       nsrv;
};

static int
px_t_up_alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                unsigned int inlen, void *arg)
{
    struct px_t_up *u = arg;

    (void)ssl;
    snprintf(u->offered, sizeof(u->offered), "%.*s", (int)inlen, (const char *)in);
    if (SSL_select_next_proto((unsigned char **)(uintptr_t)out, outlen,
                              (const unsigned char *)"\x08http/1.1", 9, in,
                              inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    return SSL_TLSEXT_ERR_OK;
}

static SSL_CTX *
px_t_up_server(struct px_t_up *u, X509 *cert)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

    assert_non_null(ctx);
    assert_int_equal(SSL_CTX_use_certificate(ctx, cert), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey(ctx, u->key), 1);
    SSL_CTX_set_alpn_select_cb(ctx, px_t_up_alpn_cb, u);
    return ctx;
}

/* One handshake from `up` to a server presenting `cert`; returns px_t_handshake's value. */
static int
px_t_up_try(struct px_t_up *u, SSL_CTX *up, X509 *cert, const char *host, int is_ip,
            const char **verr, int *reused, char *sni, size_t snisz)
{
    SSL_CTX *sctx = NULL;
    SSL     *c, *s;
    int      r;

    for (int i = 0; i < u->nsrv; i++) {
        if (u->srv_cert[i] == cert)
            sctx = u->srv_ctx[i];
    }
    if (sctx == NULL) {
        assert_true(u->nsrv < 8);
        sctx = px_t_up_server(u, cert);
        u->srv_cert[u->nsrv] = cert;
        u->srv_ctx[u->nsrv++] = sctx;
    }

    px_t_pair(up, sctx, &c, &s);
    assert_int_equal(px_tls_upstream_prepare(c, host, 443, is_ip), AL_OK);
    r = px_t_handshake(c, s);
    *verr = px_tls_verify_error(c);
    if (reused != NULL)
        *reused = SSL_session_reused(c);
    if (sni != NULL) {
        const char *n = SSL_get_servername(s, TLSEXT_NAMETYPE_host_name);

        snprintf(sni, snisz, "%s", n != NULL ? n : "");
    }
    if (r == 0)
        px_t_pump_tickets(c, s);
    ERR_clear_error();
    SSL_free(c);
    SSL_free(s);
    return r;
}

/* Writes the upstream test CA to u->ca_file, named rel in the test dir. */
static void
px_t_up_write_ca(struct px_t_up *u, const char *rel)
{
    FILE *f;

    px_t_path(u->ca_file, sizeof(u->ca_file), rel);
    f = fopen(u->ca_file, "w");
    assert_non_null(f);
    PEM_write_X509(f, u->ca);
    fclose(f);
}

/* A server for `cert` that never lets a client resume: every handshake is
 * a full one, so every one verifies the chain. */
static void
px_t_up_server_noresume(struct px_t_up *u, X509 *cert)
{
    SSL_CTX *sctx = px_t_up_server(u, cert);

    SSL_CTX_set_options(sctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_num_tickets(sctx, 0);
    SSL_CTX_set_session_cache_mode(sctx, SSL_SESS_CACHE_OFF);
    assert_true(u->nsrv < 8);
    u->srv_cert[u->nsrv] = cert;
    u->srv_ctx[u->nsrv++] = sctx;
}

/* Asserts the verdict counters moved by (full, cached) since *f, *c. */
static void
px_t_vc_moved(SSL_CTX *up, uint64_t *f, uint64_t *c, uint64_t dfull, uint64_t dcached)
{
    uint64_t nf, nc;

    px_tls_upstream_stats(up, &nc, &nf);
    assert_int_equal(nf - *f, dfull);
    assert_int_equal(nc - *c, dcached);
    *f = nf;
    *c = nc;
}

static void
test_upstream_verify_cache(void **state)
{
    struct px_t_up u;
    struct al_errs errs;
    SSL_CTX       *up, *up1, *up0;
    X509          *good, *shortlived;
    const char    *verr;
    int            reused;
    uint64_t       f = 0, c = 0;

    (void)state;
    memset(&u, 0, sizeof(u));
    u.ca_key = EVP_EC_gen("P-256");
    u.key = EVP_EC_gen("P-256");
    u.ca = px_t_cert(NULL, u.ca_key, u.ca_key, "test upstream CA", NULL, -3600, 86400, 1);
    good = px_t_cert(u.ca, u.ca_key, u.key, "upstream.test", "DNS:upstream.test", -3600, 86400, 0);
    shortlived = px_t_cert(u.ca, u.ca_key, u.key, "short.test", "DNS:short.test", -3600, 2, 0);
    px_t_up_server_noresume(&u, good);
    px_t_up_server_noresume(&u, shortlived);
    px_t_up_write_ca(&u, "upstream-vc-ca.pem");
    al_errs_init(&errs);
    up = px_tls_upstream_ctx(u.ca_file, 300, &errs);
    assert_non_null(up);

    /* Full once, then from the cache; the handshake is never a resumption. */
    assert_int_equal(px_t_up_try(&u, up, good, "upstream.test", 0, &verr, &reused, NULL, 0), 0);
    assert_false(reused);
    px_t_vc_moved(up, &f, &c, 1, 0);
    assert_int_equal(px_t_up_try(&u, up, good, "upstream.test", 0, &verr, &reused, NULL, 0), 0);
    assert_false(reused);
    assert_null(verr);
    px_t_vc_moved(up, &f, &c, 0, 1);

    /* The same certificate for a name it does not carry: full, refused,
     * and refused again (failures are not remembered). */
    for (int i = 0; i < 2; i++) {
        assert_true(px_t_up_try(&u, up, good, "other.test", 0, &verr, NULL, NULL, 0) < 0);
        assert_non_null(verr);
        assert_string_equal(verr, "upstream_cert_name_mismatch");
        px_t_vc_moved(up, &f, &c, 1, 0);
    }

    /* A verdict never outlives the chain: cached while valid, verified in
     * full (and refused) once the leaf has expired. */
    assert_int_equal(px_t_up_try(&u, up, shortlived, "short.test", 0, &verr, NULL, NULL, 0), 0);
    assert_int_equal(px_t_up_try(&u, up, shortlived, "short.test", 0, &verr, NULL, NULL, 0), 0);
    px_t_vc_moved(up, &f, &c, 1, 1);
    sleep(3);
    assert_true(px_t_up_try(&u, up, shortlived, "short.test", 0, &verr, NULL, NULL, 0) < 0);
    assert_non_null(verr);
    assert_string_equal(verr, "upstream_cert_expired");
    px_t_vc_moved(up, &f, &c, 1, 0);

    /* Nor its TTL. */
    up1 = px_tls_upstream_ctx(u.ca_file, 1, &errs);
    assert_non_null(up1);
    f = c = 0;
    assert_int_equal(px_t_up_try(&u, up1, good, "upstream.test", 0, &verr, NULL, NULL, 0), 0);
    assert_int_equal(px_t_up_try(&u, up1, good, "upstream.test", 0, &verr, NULL, NULL, 0), 0);
    px_t_vc_moved(up1, &f, &c, 1, 1);
    sleep(2);
    assert_int_equal(px_t_up_try(&u, up1, good, "upstream.test", 0, &verr, NULL, NULL, 0), 0);
    px_t_vc_moved(up1, &f, &c, 1, 0);

    /* 0: every chain in full. */
    up0 = px_tls_upstream_ctx(u.ca_file, 0, &errs);
    assert_non_null(up0);
    f = c = 0;
    for (int i = 0; i < 2; i++)
        assert_int_equal(px_t_up_try(&u, up0, good, "upstream.test", 0, &verr, NULL, NULL, 0), 0);
    px_t_vc_moved(up0, &f, &c, 2, 0);
    assert_int_equal(errs.count, 0);
    al_errs_free(&errs);

    SSL_CTX_free(up);
    SSL_CTX_free(up1);
    SSL_CTX_free(up0);
    for (int i = 0; i < u.nsrv; i++)
        SSL_CTX_free(u.srv_ctx[i]);
    X509_free(good);
    X509_free(shortlived);
    X509_free(u.ca);
    EVP_PKEY_free(u.ca_key);
    EVP_PKEY_free(u.key);
}

static void
test_upstream_verify(void **state)
{
    struct px_t_up u;
    struct al_errs errs;
    SSL_CTX       *up, *up2;
    X509          *good, *expired, *future, *wrong, *untrusted, *ipcert, *self;
    const char    *verr;
    char           sni[300];
    int            reused;

    (void)state;
    memset(&u, 0, sizeof(u));
    u.ca_key = EVP_EC_gen("P-256");
    u.other_key = EVP_EC_gen("P-256");
    u.key = EVP_EC_gen("P-256");
    u.ca = px_t_cert(NULL, u.ca_key, u.ca_key, "test upstream CA", NULL, -3600, 86400, 1);
    u.other = px_t_cert(NULL, u.other_key, u.other_key, "other CA", NULL, -3600, 86400, 1);
    good = px_t_cert(u.ca, u.ca_key, u.key, "upstream.test", "DNS:upstream.test", -3600, 86400, 0);
    expired =
        px_t_cert(u.ca, u.ca_key, u.key, "upstream.test", "DNS:upstream.test", -7200, -3600, 0);
    future = px_t_cert(u.ca, u.ca_key, u.key, "upstream.test", "DNS:upstream.test", 3600, 7200, 0);
    wrong = px_t_cert(u.ca, u.ca_key, u.key, "other.test", "DNS:other.test", -3600, 86400, 0);
    untrusted = px_t_cert(u.other, u.other_key, u.key, "upstream.test", "DNS:upstream.test", -3600,
                          86400, 0);
    self = px_t_cert(NULL, u.key, u.key, "upstream.test", "DNS:upstream.test", -3600, 86400, 0);
    ipcert = px_t_cert(u.ca, u.ca_key, u.key, "127.0.0.1", "IP:127.0.0.1", -3600, 86400, 0);
    px_t_up_write_ca(&u, "upstream-ca.pem");

    al_errs_init(&errs);
    up = px_tls_upstream_ctx(u.ca_file, 300, &errs);
    assert_non_null(up);

    assert_int_equal(
        px_t_up_try(&u, up, good, "upstream.test", 0, &verr, &reused, sni, sizeof(sni)), 0);
    assert_null(verr);
    assert_false(reused);
    assert_string_equal(sni, "upstream.test");
    assert_string_equal(u.offered, "\x08http/1.1");

    /* Second connection to the same host:port resumes. */
    assert_int_equal(px_t_up_try(&u, up, good, "upstream.test", 0, &verr, &reused, NULL, 0), 0);
    assert_true(reused);
    assert_int_equal(px_t_up_try(&u, up, good, "upstream.test", 0, &verr, &reused, NULL, 0), 0);
    assert_true(reused); /* the ticket used was replaced by the new one */

    assert_int_equal(px_t_up_try(&u, up, expired, "upstream.test", 0, &verr, NULL, NULL, 0), -1);
    assert_string_equal(verr, "upstream_cert_expired");
    assert_int_equal(px_t_up_try(&u, up, future, "upstream.test", 0, &verr, NULL, NULL, 0), -1);
    assert_string_equal(verr, "upstream_cert_expired");
    assert_int_equal(px_t_up_try(&u, up, wrong, "upstream.test", 0, &verr, NULL, NULL, 0), -1);
    assert_string_equal(verr, "upstream_cert_name_mismatch");
    assert_int_equal(px_t_up_try(&u, up, untrusted, "upstream.test", 0, &verr, NULL, NULL, 0), -1);
    assert_string_equal(verr, "upstream_cert_untrusted");
    assert_int_equal(px_t_up_try(&u, up, self, "upstream.test", 0, &verr, NULL, NULL, 0), -1);
    assert_string_equal(verr, "upstream_cert_untrusted");

    /* IP literals: no SNI, the IP SAN is checked. */
    assert_int_equal(px_t_up_try(&u, up, ipcert, "127.0.0.1", 1, &verr, NULL, sni, sizeof(sni)), 0);
    assert_null(verr);
    assert_string_equal(sni, "");
    assert_int_equal(px_t_up_try(&u, up, ipcert, "127.0.0.2", 1, &verr, NULL, NULL, 0), -1);
    assert_string_equal(verr, "upstream_cert_name_mismatch");
    assert_int_equal(px_t_up_try(&u, up, good, "127.0.0.1", 1, &verr, NULL, NULL, 0), -1);
    assert_string_equal(verr, "upstream_cert_name_mismatch");

    /* TLS 1.2 upstream: works and resumes too. */
    {
        SSL_CTX *sctx = px_t_up_server(&u, good);
        SSL     *c, *s;

        SSL_CTX_set_max_proto_version(sctx, TLS1_2_VERSION);
        for (int i = 0; i < 2; i++) {
            px_t_pair(up, sctx, &c, &s);
            assert_int_equal(px_tls_upstream_prepare(c, "v12.upstream.test", 8443, 0), AL_OK);
            SSL_set1_host(c, "upstream.test"); /* the cert names upstream.test */
            assert_int_equal(px_t_handshake(c, s), 0);
            assert_int_equal(SSL_version(c), TLS1_2_VERSION);
            assert_int_equal(SSL_session_reused(c), i == 1);
            SSL_free(c);
            SSL_free(s);
        }
        SSL_CTX_free(sctx);
    }
    /* An upstream capped at TLS 1.1 is refused. */
    {
        SSL_CTX *sctx = px_t_up_server(&u, good);
        SSL     *c, *s;

        SSL_CTX_set_security_level(sctx, 0);
        SSL_CTX_set_min_proto_version(sctx, TLS1_VERSION);
        SSL_CTX_set_max_proto_version(sctx, TLS1_1_VERSION);
        px_t_pair(up, sctx, &c, &s);
        px_tls_upstream_prepare(c, "upstream.test", 443, 0);
        assert_true(px_t_handshake(c, s) < 0);
        ERR_clear_error();
        SSL_free(c);
        SSL_free(s);
        SSL_CTX_free(sctx);
    }

    /* The system store loads; a missing bundle is an error. */
    up2 = px_tls_upstream_ctx(NULL, 300, &errs);
    assert_non_null(up2);
    SSL_CTX_free(up2);
    assert_null(px_tls_upstream_ctx("/nonexistent/bundle.pem", 0, &errs));
    assert_true(errs.count >= 1);
    al_errs_free(&errs);

    SSL_CTX_free(up);
    for (int i = 0; i < u.nsrv; i++)
        SSL_CTX_free(u.srv_ctx[i]);
    X509_free(good);
    X509_free(expired);
    X509_free(future);
    X509_free(wrong);
    X509_free(untrusted);
    X509_free(self);
    X509_free(ipcert);
    X509_free(u.ca);
    X509_free(u.other);
    EVP_PKEY_free(u.ca_key);
    EVP_PKEY_free(u.other_key);
    EVP_PKEY_free(u.key);
}

/* ---- benchmark ----------------------------------------------------------------------- */

static void
test_bench(void **state)
{
    struct al_errs errs;
    struct px_ca  *ca;
    char           host[64];
    int64_t        t0, t1;
    const int      nmint = 2000, nhit = 200000, nhs = 300;
    uint64_t       m, h;

    (void)state;
    al_errs_init(&errs);
    ca = px_ca_load_ex(px_t_cadir, 4096, &errs);
    assert_non_null(ca);
    t0 = al_mono_us();
    for (int i = 0; i < nmint; i++) {
        snprintf(host, sizeof(host), "bench%d.example.test", i);
        X509_free(px_ca_leaf(ca, host, 0));
    }
    t1 = al_mono_us();
    printf("bench: %d mints in %.1f ms: %.0f mints/s\n", nmint, (double)(t1 - t0) / 1000.0,
           nmint * 1e6 / (double)(t1 - t0));
    t0 = al_mono_us();
    for (int i = 0; i < nhit; i++) {
        snprintf(host, sizeof(host), "bench%d.example.test", i % 1000);
        X509_free(px_ca_leaf(ca, host, 0));
    }
    t1 = al_mono_us();
    printf("bench: %d cache hits in %.1f ms: %.0f lookups/s\n", nhit, (double)(t1 - t0) / 1000.0,
           nhit * 1e6 / (double)(t1 - t0));
    px_ca_stats(ca, &m, &h);
    assert_int_equal(m, (uint64_t)nmint);
    assert_int_equal(h, (uint64_t)nhit);

    /* Full handshakes (both sides in this thread, cached leaf, no resumption). */
    {
        SSL_CTX *sctx = px_tls_server_ctx(ca);
        SSL_CTX *cctx = px_t_client_ctx((const unsigned char *)"\x08http/1.1", 9);
        SSL     *c, *s;

        SSL_CTX_set_session_cache_mode(cctx, SSL_SESS_CACHE_OFF);
        t0 = al_mono_us();
        for (int i = 0; i < nhs; i++) {
            px_t_pair(cctx, sctx, &c, &s);
            SSL_set_tlsext_host_name(c, "bench1.example.test");
            assert_int_equal(px_t_handshake(c, s), 0);
            SSL_free(c);
            SSL_free(s);
        }
        t1 = al_mono_us();
        printf("bench: %d full TLS 1.3 handshakes (client+server in one thread) in %.1f ms: "
               "%.0f/s\n",
               nhs, (double)(t1 - t0) / 1000.0, nhs * 1e6 / (double)(t1 - t0));
        SSL_CTX_free(cctx);
        SSL_CTX_free(sctx);
    }
    px_ca_free(ca);
    al_errs_free(&errs);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ca_init_modes_and_refusal),
        cmocka_unit_test(test_ca_init_refuses_if_only_cert_exists),
        cmocka_unit_test(test_ca_env),
        cmocka_unit_test(test_load_checks),
        cmocka_unit_test(test_leaf_name_v4_v6),
        cmocka_unit_test(test_leaf_long_name_and_bad_hosts),
        cmocka_unit_test(test_leaf_serials_unique),
        cmocka_unit_test(test_cache_hit),
        cmocka_unit_test(test_cache_lru_bound),
        cmocka_unit_test(test_cache_threads),
        cmocka_unit_test(test_handshake_sni),
        cmocka_unit_test(test_handshake_h2_only_refused),
        cmocka_unit_test(test_handshake_no_alpn_no_sni),
        cmocka_unit_test(test_handshake_strict_sni),
        cmocka_unit_test(test_handshake_server_resumption),
        cmocka_unit_test(test_upstream_verify),
        cmocka_unit_test(test_upstream_verify_cache),
        cmocka_unit_test(test_bench),
    };

    al_log_set_level(AL_LOG_ERROR);
    return cmocka_run_group_tests(tests, px_t_setup, px_t_teardown);
}
