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
    "  audit  query|stats|tail [--config FILE | --db FILE] [filters] [--format ...]\n"
    "                                       read the audit trail (airlock audit --help)\n"
    "  version                              print the version\n"
    "\n"
    "Exit codes: 0 ok, 1 runtime failure, 2 usage or invalid input, 3 a deny verdict\n"
    "or decisions a replayed policy changes.\n";

#define AIRLOCK_VERSION "0.1.0"

static int
px_usage_error(const char *what, const char *arg)
{
    fprintf(stderr, "airlock: %s \"%s\"\n\n%s", what, arg, px_usage);
    return 2;
}

/* Parses the options common to run and check. */
static int
px_parse_run_args(int argc, char **argv, const char **config, int *dry_run)
{
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
            return rc;
        return px_main_run(config, dry_run);
    }
    if (strcmp(argv[1], "check") == 0) {
        rc = px_parse_run_args(argc, argv, &config, NULL);
        if (rc != 0)
            return rc;
        if (config == NULL)
            return px_usage_error("--config FILE is required for", "check");
        return px_main_check(config);
    }
    if (strcmp(argv[1], "policy") == 0)
        return px_cli_policy(argc - 1, argv + 1);
    if (strcmp(argv[1], "audit") == 0)
        return px_cli_audit(argc - 1, argv + 1);
    if (strcmp(argv[1], "ca") == 0)
        return px_ca_cli(argc - 1, argv + 1);
    if (strcmp(argv[1], "secrets") == 0)
        return px_cli_secrets(argc - 1, argv + 1);
    return px_usage_error("unknown command", argv[1]);
}
