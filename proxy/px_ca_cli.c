/*
 * px_ca_cli.c - `airlock ca init` (create the interception CA) and
 * `airlock ca env` (write the trust bundle and print the environment a
 * sandbox needs to trust the CA). The CA work itself is in px_ca.c; this
 * file parses arguments, maps results to exit codes (0 ok, 1 runtime
 * failure, 2 usage or invalid input) and prints.
 *
 * `ca env` prints POSIX shell lines (eval "$(airlock ca env ...)"), with
 * absolute, single-quoted paths, so the output works from any folder.
 */
#include "px.h"
#include "px_ca.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char px_ca_cli_usage_text[] =
    "usage: airlock ca init --dir DIR [--force]\n"
    "       airlock ca env  (--config FILE | --dir DIR) [--roots FILE]\n"
    "\n"
    "  init   create an ECDSA P-256 interception CA in DIR (ca.pem, ca.key 0600);\n"
    "         an existing CA is kept unless --force is given\n"
    "  env    write DIR/bundle.pem (system roots + ca.pem) and print the shell\n"
    "         exports a sandbox needs to trust the CA: eval \"$(airlock ca env ...)\"\n"
    "         --roots FILE: the system roots to start from (default " PX_CA_SYSTEM_ROOTS ")\n"
    "\n"
    "Exit codes: 0 ok, 1 runtime failure, 2 usage or invalid input.\n";

/* Variables pointed at the bundle (system roots + the airlock CA). */
static const char *const px_ca_cli_bundle_vars[] = {
    "SSL_CERT_FILE",  "REQUESTS_CA_BUNDLE", "GIT_SSL_CAINFO",
    "CURL_CA_BUNDLE", "PIP_CERT",           "CARGO_HTTP_CAINFO",
    "DENO_CERT",      "AWS_CA_BUNDLE",      NULL,
};

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
    const char     *dir = NULL, *config = NULL, *roots = NULL;
    struct px_conf *conf = NULL;
    struct al_errs  errs;
    char            abs[PATH_MAX];
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
    if (realpath(dir, abs) == NULL) {
        fprintf(stderr, "airlock ca env: %s: %s (create the CA with: airlock ca init --dir %s)\n",
                dir, strerror(errno), dir);
        rc = 2;
        goto out;
    }
    r = px_ca_write_bundle(abs, roots, &errs);
    px_ca_cli_print_errs(&errs);
    if (r != AL_OK) {
        rc = r == AL_DECLINED ? 2 : 1;
        goto out;
    }
    for (int i = 0; px_ca_cli_bundle_vars[i] != NULL; i++)
        px_ca_cli_export(px_ca_cli_bundle_vars[i], abs, PX_CA_BUNDLE_FILE);
    /* Node adds this file to its built-in roots: the CA alone. */
    px_ca_cli_export("NODE_EXTRA_CA_CERTS", abs, PX_CA_CERT_FILE);
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

int
px_ca_cli(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        fputs(px_ca_cli_usage_text, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "init") == 0)
        return px_ca_cli_init(argc, argv);
    if (strcmp(argv[1], "env") == 0)
        return px_ca_cli_env(argc, argv);
    return px_ca_cli_usage("unknown subcommand", argv[1]);
}
