/*
 * fuzz_config.c - the whole input as a configuration file: al_json_parse,
 * pol_load_text (policy) and sec_load_text (secrets), then a few calls on
 * whatever loaded, so compiled structures are walked too.
 *
 * key_dir for auto placeholders is a private temporary directory created
 * once (removed at exit). Secrets with "from": {"file": ...} may read local
 * files; nothing is written anywhere else.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/common.h"
#include "policy/policy.h"
#include "secrets/secrets.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static char  fz_key_dir[] = "/tmp/airlock-fuzz-keys-XXXXXX";
static FILE *fz_null;

static void
fz_cleanup(void)
{
    char path[sizeof(fz_key_dir) + 32];

    snprintf(path, sizeof(path), "%s/placeholder.key", fz_key_dir);
    (void)unlink(path);
    (void)rmdir(fz_key_dir);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    al_log_set_level(AL_LOG_OFF);
    if (mkdtemp(fz_key_dir) == NULL)
        abort();
    atexit(fz_cleanup);
    fz_null = fopen("/dev/null", "w");
    return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const known[] = {"ci", "dev"};
    const char              *text = (const char *)data;
    struct al_errs           errs;
    struct al_json          *doc;
    struct pol_policy       *p;
    struct sec_store        *s;

    al_errs_init(&errs);
    doc = al_json_parse("fuzz.json", text, size, &errs);
    if (doc != NULL) {
        unsigned line, col;

        al_json_locate(doc, "rules[0].hosts[0]", &line, &col);
        al_json_locate(doc, "secrets", &line, &col);
        al_json_locate(doc, "", &line, &col);
        al_json_free(doc);
    }
    al_errs_free(&errs);

    al_errs_init(&errs);
    p = pol_load_text("policy.json", text, size, known, 2, size & 1, &errs);
    if (p != NULL) {
        struct pol_request  rq;
        struct pol_decision d;
        int                 n = pol_policy_rule_count(p);

        if (errs.count != 0)
            abort(); /* NULL is returned when any error was found */
        for (int i = 0; i < n; i++) {
            const char *const *names;

            (void)pol_policy_rule_name(p, i);
            (void)pol_policy_rule_inject(p, i, &names);
        }
        memset(&rq, 0, sizeof(rq));
        rq.sandbox = "ci";
        rq.scheme = "https";
        rq.host = "api.github.com";
        rq.port = 443;
        rq.method = "GET";
        rq.path = "/repos/a/../b?x=%2e";
        rq.path_len = strlen(rq.path);
        rq.want_explain = 1;
        pol_decide(p, &rq, &d);
        rq.host = "127.0.0.1";
        rq.host_is_ip = 1;
        rq.method = "CONNECT";
        rq.scheme = "connect";
        rq.path = NULL;
        rq.path_len = 0;
        pol_decide(p, &rq, &d);
        pol_policy_unref(pol_policy_ref(p));
        pol_policy_unref(p);
    }
    al_errs_free(&errs);

    al_errs_init(&errs);
    s = sec_load_text("secrets.json", text, size, fz_key_dir, &errs);
    if (s != NULL) {
        struct sec_dest d = {"api.github.com", 443, "/v1/x", 5, 1};
        int             n = sec_count(s);

        if (errs.count != 0)
            abort();
        for (int i = 0; i < n; i++) {
            (void)sec_name(s, i);
            (void)sec_env_name(s, i);
            (void)sec_placeholder(s, i);
            (void)sec_in_scope(s, i, &d);
            (void)sec_is_passthrough(s, i, &d);
        }
        (void)sec_any_scope_host(s, "api.github.com", 443);
        if (fz_null != NULL)
            (void)sec_print_env(s, fz_null);
        sec_store_unref(s);
    }
    al_errs_free(&errs);
    return 0;
}
