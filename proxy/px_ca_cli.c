/*
 * px_ca_cli.c - `airlock ca init` (create the interception CA) and
 * `airlock ca env` (write the public trust files - the CA certificate and a
 * bundle with the system roots, 0644, in a folder outside the 0700 key
 * folder - and print the environment a sandbox needs to trust the CA). The CA work itself is in
 * px_ca.c; this file parses arguments, maps results to exit codes (0 ok, 1 runtime failure, 2 usage
 * or invalid input) and prints.
 *
 * `ca env` prints POSIX shell lines (eval "$(airlock ca env ...)"), with
 * absolute, single-quoted paths, so the output works from any folder.
 */
#include "px.h"
#include "px_ca.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/pem.h>

static const char px_ca_cli_usage_text[] =
    "usage: airlock ca init --dir DIR [--force]\n"
    "       airlock ca env  (--config FILE | --dir DIR) [--roots FILE] [--out DIR]\n"
    "\n"
    "  init   create an ECDSA P-256 interception CA in DIR (ca.pem, ca.key 0600);\n"
    "         an existing CA is kept unless --force is given\n"
    "  env    write the public trust files a sandbox user can read - ca.pem (the CA\n"
    "         certificate only, never the key) and bundle.pem (system roots + ca.pem),\n"
    "         both 0644 - into the folder next to the CA's, DIR/../ca-public (0755), or\n"
    "         --out DIR, and print the shell exports that point every runtime at them:\n"
    "         eval \"$(airlock ca env ...)\"\n"
    "         --roots FILE: the system roots to start from (default " PX_CA_SYSTEM_ROOTS ")\n"
    "  (airlock sandbox env prints these together with the proxy variables)\n"
    "\n"
    "Exit codes: 0 ok, 1 runtime failure, 2 usage or invalid input.\n";

/* Variables pointed at the public files: the bundle (system roots + the
 * airlock CA) for those that replace the default trust, the CA alone for
 * those that add to it. */
static const struct {
    const char *var, *file;
} px_ca_cli_vars[] = {
    {"SSL_CERT_FILE", PX_CA_BUNDLE_FILE},
    {"REQUESTS_CA_BUNDLE", PX_CA_BUNDLE_FILE},
    {"CURL_CA_BUNDLE", PX_CA_BUNDLE_FILE},
    {"GIT_SSL_CAINFO", PX_CA_BUNDLE_FILE},
    {"PIP_CERT", PX_CA_BUNDLE_FILE},
    {"AWS_CA_BUNDLE", PX_CA_BUNDLE_FILE},
    {"CARGO_HTTP_CAINFO", PX_CA_BUNDLE_FILE},
    {"DENO_CERT", PX_CA_BUNDLE_FILE},
    {"GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", PX_CA_BUNDLE_FILE},
    {"npm_config_cafile", PX_CA_BUNDLE_FILE},
    {"NODE_EXTRA_CA_CERTS", PX_CA_CERT_FILE}, /* node adds it to its built-in roots */
};

const char *
px_ca_trust_var(int i, const char **file)
{
    if (i < 0 || (size_t)i >= sizeof(px_ca_cli_vars) / sizeof(px_ca_cli_vars[0]))
        return NULL;
    *file = px_ca_cli_vars[i].file;
    return px_ca_cli_vars[i].var;
}

static int
px_ca_cli_usage(const char *what, const char *arg)
{
    fprintf(stderr, "airlock ca: %s%s%s%s\n\n%s", what, arg ? " \"" : "", arg ? arg : "",
            arg ? "\"" : "", px_ca_cli_usage_text);
    return 2;
}

static void
px_ca_cli_print_errs(const struct al_errs *errs)
{
    if (errs->text.data != NULL && errs->text.len > 0)
        fputs(errs->text.data, stderr);
}

/* Prints s as one single-quoted shell word. */
static void
px_ca_cli_shell_quote(FILE *out, const char *s)
{
    fputc('\'', out);
    for (; *s != '\0'; s++) {
        if (*s == '\'')
            fputs("'\\''", out);
        else
            fputc(*s, out);
    }
    fputc('\'', out);
}

/* Prints "export VAR='dir/file'". */
static void
px_ca_cli_export(const char *var, const char *dir, const char *file)
{
    char path[PATH_MAX + 64];

    snprintf(path, sizeof(path), "%s/%s", dir, file);
    printf("export %s=", var);
    px_ca_cli_shell_quote(stdout, path);
    putchar('\n');
}

/* Writes data to dir/name atomically (temporary file, fsync, rename), mode 0644. */
static int
px_ca_pub_write(const char *dir, const char *name, const void *data, size_t len,
                struct al_errs *errs)
{
    char   tmp[PATH_MAX], dst[PATH_MAX];
    size_t off = 0;
    int    fd;

    if (snprintf(dst, sizeof(dst), "%s/%s", dir, name) >= (int)sizeof(dst) ||
        snprintf(tmp, sizeof(tmp), "%s/.%s.XXXXXX", dir, name) >= (int)sizeof(tmp)) {
        al_errs_add(errs, "%s: path too long", dir);
        return AL_ERROR;
    }
    fd = mkstemp(tmp);
    if (fd < 0) {
        al_errs_add(errs, "%s: cannot write there: %s", dir, strerror(errno));
        return AL_ERROR;
    }
    if (fchmod(fd, 0644) != 0)
        goto fail;
    while (off < len) {
        ssize_t n = write(fd, (const char *)data + off, len - off);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto fail;
        off += (size_t)n;
    }
    if (fsync(fd) != 0)
        goto fail;
    if (close(fd) != 0) {
        fd = -1;
        goto fail;
    }
    fd = -1;
    if (rename(tmp, dst) != 0)
        goto fail;
    return AL_OK;
fail:
    al_errs_add(errs, "%s: cannot write: %s", dst, strerror(errno));
    if (fd >= 0)
        close(fd);
    (void)unlink(tmp);
    return AL_ERROR;
}

/* A warning when some folder on the way to dir keeps other users out. */
static void
px_ca_pub_reachable(const char *dir, struct al_errs *errs)
{
    char        p[PATH_MAX];
    struct stat st;

    al_strlcpy(p, sizeof(p), dir);
    for (;;) {
        char *slash;

        if (stat(p, &st) == 0 && (st.st_mode & S_IXOTH) == 0) {
            al_errs_warn(errs,
                         "%s: other users cannot enter this folder (mode %03o): a sandbox user "
                         "other than its owner cannot read the trust files in %s",
                         p, (unsigned)(st.st_mode & 0777), dir);
            return;
        }
        slash = strrchr(p, '/');
        if (slash == NULL || slash == p)
            return;
        *slash = '\0';
    }
}

int
px_ca_write_public(const char *ca_dir, const char *out_dir, const char *roots, char *pub,
                   size_t pubsz, struct al_errs *errs)
{
    char        abs[PATH_MAX], want[PATH_MAX], cpath[PATH_MAX + 16];
    BIO        *in = NULL, *mem = NULL;
    X509       *x = NULL;
    char       *certpem = NULL, *bundle = NULL, *rootbuf = NULL;
    long        certlen;
    size_t      rootlen = 0;
    struct stat st;
    FILE       *f;
    int         rc = AL_ERROR;

    if (realpath(ca_dir, abs) == NULL) {
        al_errs_add(errs, "%s: %s (create the CA with: airlock ca init --dir %s)", ca_dir,
                    strerror(errno), ca_dir);
        return AL_DECLINED;
    }
    snprintf(cpath, sizeof(cpath), "%s/%s", abs, PX_CA_CERT_FILE);
    /* The certificate is parsed and written out again: whatever else the
     * file holds (a key pasted by mistake) never reaches the public copy. */
    in = BIO_new_file(cpath, "r");
    x = in != NULL ? PEM_read_bio_X509(in, NULL, NULL, NULL) : NULL;
    if (x == NULL) {
        al_errs_add(errs, "%s: %s (create the CA with: airlock ca init --dir %s)", cpath,
                    in == NULL ? strerror(errno) : "not a PEM certificate", ca_dir);
        rc = AL_DECLINED;
        goto out;
    }
    mem = BIO_new(BIO_s_mem());
    if (mem == NULL || PEM_write_bio_X509(mem, x) != 1)
        goto nomem;
    certlen = BIO_get_mem_data(mem, &certpem);
    if (certlen <= 0)
        goto nomem;
    if (out_dir != NULL) {
        if (mkdir(out_dir, 0755) != 0 && errno != EEXIST) {
            al_errs_add(errs, "%s: cannot create: %s", out_dir, strerror(errno));
            goto out;
        }
        if (realpath(out_dir, want) == NULL) {
            al_errs_add(errs, "%s: %s", out_dir, strerror(errno));
            goto out;
        }
    } else {
        char *slash = strrchr(abs, '/');
        int   n;

        if (slash == abs) /* a CA in a top-level folder: /ca-public */
            n = snprintf(want, sizeof(want), "/ca-public");
        else
            n = snprintf(want, sizeof(want), "%.*s/ca-public", (int)(slash - abs), abs);
        if (n < 0 || (size_t)n >= sizeof(want)) {
            al_errs_add(errs, "%s: path too long", abs);
            goto out;
        }
        if (mkdir(want, 0755) != 0 && errno != EEXIST) {
            al_errs_add(errs, "%s: cannot create: %s", want, strerror(errno));
            goto out;
        }
    }
    {
        size_t n = strlen(abs);

        if (strcmp(want, abs) == 0 || (strncmp(want, abs, n) == 0 && want[n] == '/')) {
            al_errs_add(errs,
                        "%s: the public trust files must not go into the CA's own folder %s "
                        "(it holds the key and stays 0700)",
                        want, abs);
            rc = AL_DECLINED;
            goto out;
        }
    }
    if (stat(want, &st) != 0 || !S_ISDIR(st.st_mode)) {
        al_errs_add(errs, "%s: not a folder", want);
        goto out;
    }
    if ((st.st_mode & 0005) != 0005)
        al_errs_warn(errs, "%s: mode %03o: other users cannot read it (chmod 755)", want,
                     (unsigned)(st.st_mode & 0777));
    px_ca_pub_reachable(want, errs);
    f = fopen(roots != NULL ? roots : PX_CA_SYSTEM_ROOTS, "r");
    if (f != NULL) {
        size_t cap = 0;

        for (;;) {
            size_t got;

            if (rootlen + 65536 + 2 > cap) {
                char *nb;

                cap = cap ? cap * 2 : 1 << 20;
                if (cap > (64u << 20) || (nb = al_realloc(rootbuf, cap)) == NULL) {
                    fclose(f);
                    goto nomem;
                }
                rootbuf = nb;
            }
            got = fread(rootbuf + rootlen, 1, 65536, f);
            rootlen += got;
            if (got < 65536)
                break;
        }
        fclose(f);
        if (rootlen > 0 && rootbuf[rootlen - 1] != '\n')
            rootbuf[rootlen++] = '\n';
    } else {
        al_errs_warn(errs, "%s: %s; the bundle holds only the airlock CA",
                     roots != NULL ? roots : PX_CA_SYSTEM_ROOTS, strerror(errno));
    }
    bundle = al_malloc(rootlen + (size_t)certlen + 1);
    if (bundle == NULL)
        goto nomem;
    if (rootlen > 0)
        memcpy(bundle, rootbuf, rootlen);
    memcpy(bundle + rootlen, certpem, (size_t)certlen);
    if (px_ca_pub_write(want, PX_CA_CERT_FILE, certpem, (size_t)certlen, errs) != AL_OK ||
        px_ca_pub_write(want, PX_CA_BUNDLE_FILE, bundle, rootlen + (size_t)certlen, errs) != AL_OK)
        goto out;
    al_strlcpy(pub, pubsz, want);
    rc = AL_OK;
    goto out;
nomem:
    al_errs_add(errs, "%s: out of memory (or roots too large)", cpath);
out:
    al_free(bundle);
    al_free(rootbuf);
    X509_free(x);
    BIO_free(in);
    BIO_free(mem);
    return rc;
}

static int
px_ca_cli_init(int argc, char **argv)
{
    const char    *dir = NULL;
    int            force = 0, rc = 1, r;
    struct al_errs errs;

    al_errs_init(&errs);
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc) {
            dir = argv[++i];
        } else if (strncmp(argv[i], "--dir=", 6) == 0) {
            dir = argv[i] + 6;
        } else if (strcmp(argv[i], "--force") == 0) {
            force = 1;
        } else {
            rc = px_ca_cli_usage("unknown option or missing value", argv[i]);
            goto out;
        }
    }
    if (dir == NULL || dir[0] == '\0') {
        rc = px_ca_cli_usage("ca init needs --dir DIR", NULL);
        goto out;
    }
    r = px_ca_init_dir(dir, force, &errs);
    px_ca_cli_print_errs(&errs);
    if (r == AL_DECLINED) {
        rc = 2;
        goto out;
    }
    if (r != AL_OK) {
        fprintf(stderr, "airlock ca init: failed\n");
        rc = 1;
        goto out;
    }
    printf("airlock: wrote %s/%s and %s/%s (ECDSA P-256; keep the key private)\n", dir,
           PX_CA_CERT_FILE, dir, PX_CA_KEY_FILE);
    printf("next: airlock ca env --dir %s\n", dir);
    rc = 0;
out:
    al_errs_free(&errs);
    return rc;
}

static int
px_ca_cli_env(int argc, char **argv)
{
    const char     *dir = NULL, *config = NULL, *roots = NULL, *outdir = NULL, *file;
    struct px_conf *conf = NULL;
    struct al_errs  errs;
    char            pub[PATH_MAX];
    const char     *var;
    int             rc = 1, r;

    al_errs_init(&errs);
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc) {
            dir = argv[++i];
        } else if (strncmp(argv[i], "--dir=", 6) == 0) {
            dir = argv[i] + 6;
        } else if ((strcmp(argv[i], "--config") == 0 || strcmp(argv[i], "-c") == 0) &&
                   i + 1 < argc) {
            config = argv[++i];
        } else if (strncmp(argv[i], "--config=", 9) == 0) {
            config = argv[i] + 9;
        } else if (strcmp(argv[i], "--roots") == 0 && i + 1 < argc) {
            roots = argv[++i];
        } else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc) {
            outdir = argv[++i];
        } else {
            rc = px_ca_cli_usage("unknown option or missing value", argv[i]);
            goto out;
        }
    }
    if ((dir == NULL) == (config == NULL)) {
        rc = px_ca_cli_usage("ca env needs exactly one of --config FILE or --dir DIR", NULL);
        goto out;
    }
    if (config != NULL) {
        conf = px_conf_load(config, &errs);
        if (conf == NULL) {
            px_ca_cli_print_errs(&errs);
            rc = 2;
            goto out;
        }
        if (conf->ca_dir == NULL) {
            fprintf(stderr, "airlock ca env: %s has no \"ca\": {\"dir\": ...}\n", config);
            rc = 2;
            goto out;
        }
        dir = conf->ca_dir;
    }
    r = px_ca_write_public(dir, outdir, roots, pub, sizeof(pub), &errs);
    px_ca_cli_print_errs(&errs);
    if (r != AL_OK) {
        rc = r == AL_DECLINED ? 2 : 1;
        goto out;
    }
    for (int i = 0; (var = px_ca_trust_var(i, &file)) != NULL; i++)
        px_ca_cli_export(var, pub, file);
    if (fflush(stdout) != 0) {
        rc = 1;
        goto out;
    }
    rc = 0;
out:
    px_conf_unref(conf);
    al_errs_free(&errs);
    return rc;
}

/* --help / -h anywhere after the subcommand. */
static int
px_ca_cli_wants_help(int argc, char **argv)
{
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return 1;
    }
    return 0;
}

int
px_ca_cli(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        fputs(px_ca_cli_usage_text, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if ((strcmp(argv[1], "init") == 0 || strcmp(argv[1], "env") == 0) &&
        px_ca_cli_wants_help(argc, argv)) {
        fputs(px_ca_cli_usage_text, stdout);
        return 0;
    }
    if (strcmp(argv[1], "init") == 0)
        return px_ca_cli_init(argc, argv);
    if (strcmp(argv[1], "env") == 0)
        return px_ca_cli_env(argc, argv);
    return px_ca_cli_usage("unknown subcommand", argv[1]);
}
