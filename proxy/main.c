/*
 * main.c - the one airlock binary: subcommand dispatch and usage.
 * Exit codes: 0 ok, 1 runtime failure, 2 usage or invalid input,
 * 3 a verdict worth gating on.
 */
#include "px.h"
#include "px_ca.h"

#include <stdio.h>
#include <string.h>

static const char px_usage[] =
    "usage: airlock <command> [options]\n"
    "\n"
    "  run    [--config FILE] [--dry-run]   start the proxy (embedded default config\n"
    "                                       when no --config is given)\n"
    "  check  --config FILE                 validate config and policy (errors, warnings)\n"
    "  policy check --config FILE [--sandbox S] [--json] [--no-resolve] METHOD URL\n"
    "                                       decide one request, explained (exit 3: deny)\n"
    "  policy replay --config FILE --policy NEW [--db DB] [--since T] [--until T]\n"
    "         [--sandbox S] [--host GLOB] [--limit N] [--dry-run] [--format table|json|csv]\n"
    "                                       NEW over recorded traffic (exit 3: changes)\n"
    "  policy lint --config FILE [--policy FILE] [--db DB [--since T]] [--format table|json]\n"
    "                                       rules that are wrong (exit 3: errors)\n"
    "  ca     init --dir DIR [--force]      create the interception CA (ECDSA P-256)\n"
    "  ca     env --config FILE | --dir DIR   trust variables for a sandbox\n"
    "  secrets env --config FILE [--sandbox S]  NAME=placeholder lines for a sandbox\n"
    "  sandbox env --config FILE --sandbox S [--tool-call T] [--format sh|json|dotenv]\n"
    "                                       proxy, CA trust and placeholder variables\n"
    "                                       for a sandbox, in one block\n"
    "  audit  query|stats|tail [--config FILE | --db FILE] [filters] [--format ...]\n"
    "                                       read the audit trail (airlock audit --help)\n"
    "  version                              print the version\n"
    "\n"
    "Every command takes --help. Exit codes: 0 ok, 1 runtime failure, 2 usage or invalid\n"
    "input, 3 a deny verdict or decisions a replayed policy changes.\n";

static const char px_usage_run[] =
    "usage: airlock run [--config FILE] [--dry-run]\n"
    "  Start the proxy on FILE (the embedded default config when none is given).\n"
    "  --dry-run: every deny is recorded as would_deny and let through.\n"
    "  SIGHUP reloads the config, policy and secrets; SIGTERM drains and stops.\n";

static const char px_usage_check[] =
    "usage: airlock check --config FILE\n"
    "  Validate the config, its policy and secrets file (every error as file:line:col),\n"
    "  check that the audit database can be written where the config puts it, and warn\n"
    "  about risky setups: a non-loopback listener without sandboxes, audit.db null,\n"
    "  a policy whose default is allow. Exit: 0 ok (warnings allowed), 2 errors.\n";

#define AIRLOCK_VERSION "0.1.0"

static int
px_usage_error(const char *what, const char *arg)
{
    fprintf(stderr, "airlock: %s \"%s\"\n\n%s", what, arg, px_usage);
    return 2;
}

/* Parses the options common to run and check; -1: --help printed. */
static int
px_parse_run_args(int argc, char **argv, const char **config, int *dry_run)
{
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(dry_run != NULL ? px_usage_run : px_usage_check, stdout);
            return -1;
        }
    }
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 || strcmp(argv[i], "-c") == 0) {
            if (i + 1 >= argc)
                return px_usage_error("this option needs a file:", argv[i]);
            *config = argv[++i];
        } else if (strncmp(argv[i], "--config=", 9) == 0) {
            *config = argv[i] + 9;
        } else if (strcmp(argv[i], "--dry-run") == 0 && dry_run != NULL) {
            *dry_run = 1;
        } else {
            return px_usage_error("unknown option", argv[i]);
        }
    }
    return 0;
}

int
main(int argc, char **argv)
{
    const char *config = NULL;
    int         dry_run = 0;
    int         rc;

    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "help") == 0) {
        fputs(px_usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "version") == 0 || strcmp(argv[1], "--version") == 0) {
        printf("airlock %s\n", AIRLOCK_VERSION);
        return 0;
    }
    if (strcmp(argv[1], "run") == 0) {
        rc = px_parse_run_args(argc, argv, &config, &dry_run);
        if (rc != 0)
            return rc < 0 ? 0 : rc;
        return px_main_run(config, dry_run);
    }
    if (strcmp(argv[1], "check") == 0) {
        rc = px_parse_run_args(argc, argv, &config, NULL);
        if (rc != 0)
            return rc < 0 ? 0 : rc;
        if (config == NULL)
            return px_usage_error("--config FILE is required for", "check");
        return px_cli_check(config);
    }
    if (strcmp(argv[1], "policy") == 0)
        return px_cli_policy(argc - 1, argv + 1);
    if (strcmp(argv[1], "audit") == 0)
        return px_cli_audit(argc - 1, argv + 1);
    if (strcmp(argv[1], "ca") == 0)
        return px_ca_cli(argc - 1, argv + 1);
    if (strcmp(argv[1], "secrets") == 0)
        return px_cli_secrets(argc - 1, argv + 1);
    if (strcmp(argv[1], "sandbox") == 0)
        return px_cli_sandbox(argc - 1, argv + 1);
    return px_usage_error("unknown command", argv[1]);
}
