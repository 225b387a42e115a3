/*
 * pol_load.c - policy.json: load, validate, compile, warn; snapshot lifetime.
 *
 * Validation walks the whole document and reports every problem through
 * al_json_err (file:line:col + JSON path) before failing, so one run of
 * `airlock check` shows everything. Only when there are no errors is the
 * policy compiled: host patterns go into an exact-host hash table, a suffix
 * hash table ("*.a.b" under key "a.b") and the list of "*" rules, each
 * holding ascending rule indexes; pol_decide() merges what applies to a host.
 *
 * Warnings (al_json_warn, counted in errs->warnings): a rule that an earlier,
 * enforced rule covers entirely (found through the same indexes, so checking
 * stays near-linear for large policies), and sandbox names the config does
 * not define.
 *
 * Lifetime: the snapshot is immutable once pol_load returns; references are
 * counted atomically and the last pol_policy_unref frees it.
 */
#include "pol_int.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define POL_METHOD_MAX_BYTES 32
#define POL_JPATH_BYTES 64 /* "rules[N].allow_encoded_slash" */
#define POL_JPATH_EL_BYTES (POL_JPATH_BYTES + 16)

struct pol_loadctx {
    struct al_errs       *errs;
    const struct al_json *doc;
    const char *const    *known;
    int                   nknown;
    struct pol_policy    *p;
};

static const char *const pol_top_keys[] = {"mode", "default", "allow_addresses", "rules", NULL};
static const char *const pol_rule_keys[] = {"name",  "hosts",     "ports",  "methods",
                                            "paths", "sandboxes", "cidrs",  "action",
                                            "mode",  "intercept", "inject", "allow_encoded_slash",
                                            NULL};

/* ---- small validators -------------------------------------------------------- */

int
pol_ident_charset_ok(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        char c = s[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '-'))
            return 0;
    }
    return len > 0;
}

static int
pol_method_ok(const char *s)
{
    size_t n = strlen(s);
    int    letter = 0;

    if (n == 0 || n > POL_METHOD_MAX_BYTES)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] >= 'A' && s[i] <= 'Z')
            letter = 1;
        else if (!((s[i] >= '0' && s[i] <= '9') || s[i] == '-' || s[i] == '_'))
            return 0;
    }
    return letter;
}

/* A non-empty JSON array; returns its size or -1 after reporting. */
static int
pol_load_array(struct pol_loadctx *x, const cJSON *v, const char *jp)
{
    int n;

    if (!cJSON_IsArray(v)) {
        al_json_err(x->errs, x->doc, jp, "expected an array");
        return -1;
    }
    n = cJSON_GetArraySize(v);
    if (n == 0) {
        al_json_err(x->errs, x->doc, jp, "empty list (leave the key out to match anything)");
        return -1;
    }
    return n;
}

/* Returns the string value, or NULL after reporting "expected a string". */
static const char *
pol_load_str(struct pol_loadctx *x, const cJSON *v, const char *jp)
{
    if (!cJSON_IsString(v) || v->valuestring == NULL) {
        al_json_err(x->errs, x->doc, jp, "expected a string");
        return NULL;
    }
    return v->valuestring;
}

/* One of the words in `words` (NULL-terminated); returns its index or -1. */
static int
pol_load_enum(struct pol_loadctx *x, const cJSON *v, const char *jp, const char *const *words)
{
    const char *s = pol_load_str(x, v, jp);

    if (s == NULL)
        return -1;
    for (int i = 0; words[i] != NULL; i++) {
        if (strcmp(s, words[i]) == 0)
            return i;
    }
    al_json_err(x->errs, x->doc, jp, "expected \"%s\" or \"%s\", got \"%s\"", words[0], words[1],
                s);
    return -1;
}

static int
pol_load_bool(struct pol_loadctx *x, const cJSON *v, const char *jp, int *out)
{
    if (!cJSON_IsBool(v)) {
        al_json_err(x->errs, x->doc, jp, "expected true or false");
        return AL_ERROR;
    }
    *out = cJSON_IsTrue(v) ? 1 : 0;
    return AL_OK;
}

static int
pol_load_cidrs(struct pol_loadctx *x, const cJSON *v, const char *jp, struct pol_cidr **out,
               int *nout)
{
    const cJSON *it;
    int          n = pol_load_array(x, v, jp), i = 0, bad = 0;
    char         sub[POL_JPATH_EL_BYTES];

    if (n < 0)
        return AL_ERROR;
    *out = al_calloc((size_t)n, sizeof(**out));
    if (*out == NULL) {
        al_json_err(x->errs, x->doc, jp, "out of memory");
        return AL_ERROR;
    }
    cJSON_ArrayForEach (it, v) {
        const char *s;

        snprintf(sub, sizeof(sub), "%s[%d]", jp, i);
        s = pol_load_str(x, it, sub);
        if (s == NULL) {
            bad = 1;
        } else if (pol_cidr_parse(s, &(*out)[i]) != AL_OK) {
            al_json_err(x->errs, x->doc, sub,
                        "invalid CIDR \"%s\" (address/prefix, dotted-quad IPv4 or IPv6, "
                        "no host bits set)",
                        s);
            bad = 1;
        }
        i++;
    }
    *nout = n;
    return bad ? AL_ERROR : AL_OK;
}

/* A list of strings each checked by `ok`; copies into *out. */
static int
pol_load_strs(struct pol_loadctx *x, const cJSON *v, const char *jp, char ***out, int *nout,
              int (*ok)(const char *), const char *what, const char *hint)
{
    const cJSON *it;
    int          n = pol_load_array(x, v, jp), i = 0, bad = 0;
    char         sub[POL_JPATH_EL_BYTES];

    if (n < 0)
        return AL_ERROR;
    *out = al_calloc((size_t)n, sizeof(**out));
    if (*out == NULL) {
        al_json_err(x->errs, x->doc, jp, "out of memory");
        return AL_ERROR;
    }
    *nout = n;
    cJSON_ArrayForEach (it, v) {
        const char *s;

        snprintf(sub, sizeof(sub), "%s[%d]", jp, i);
        s = pol_load_str(x, it, sub);
        if (s == NULL) {
            bad = 1;
        } else if (!ok(s)) {
            al_json_err(x->errs, x->doc, sub, "invalid %s \"%s\" (%s)", what, s, hint);
            bad = 1;
        } else if (((*out)[i] = al_strdup(s)) == NULL) {
            al_json_err(x->errs, x->doc, sub, "out of memory");
            bad = 1;
        }
        i++;
    }
    return bad ? AL_ERROR : AL_OK;
}

static int
pol_sandbox_ok(const char *s)
{
    size_t n = strlen(s);

    return n <= POL_SANDBOX_MAX_BYTES && pol_ident_charset_ok(s, n);
}

static int
pol_secret_name_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > POL_NAME_MAX_BYTES)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* ---- one rule ---------------------------------------------------------------- */

static void
pol_rule_fini(struct pol_rule *r)
{
    for (int i = 0; r->hosts != NULL && i < r->nhosts; i++)
        al_free(r->hosts[i].name);
    for (int i = 0; r->methods != NULL && i < r->nmethods; i++)
        al_free(r->methods[i]);
    for (int i = 0; r->paths != NULL && i < r->npaths; i++)
        pol_pathpat_free(&r->paths[i]);
    for (int i = 0; r->sandboxes != NULL && i < r->nsandboxes; i++)
        al_free(r->sandboxes[i]);
    for (int i = 0; r->inject != NULL && i < r->ninject; i++)
        al_free(r->inject[i]);
    al_free(r->name);
    al_free(r->hosts);
    al_free(r->ports);
    al_free(r->methods);
    al_free(r->paths);
    al_free(r->sandboxes);
    al_free(r->cidrs);
    al_free(r->inject);
    memset(r, 0, sizeof(*r));
}

static void
pol_rule_hosts(struct pol_loadctx *x, struct pol_rule *r, const cJSON *v, const char *jp)
{
    const cJSON *it;
    int          n = pol_load_array(x, v, jp), i = 0;
    char         sub[POL_JPATH_EL_BYTES];

    if (n < 0)
        return;
    r->hosts = al_calloc((size_t)n, sizeof(*r->hosts));
    if (r->hosts == NULL) {
        al_json_err(x->errs, x->doc, jp, "out of memory");
        return;
    }
    r->nhosts = n;
    cJSON_ArrayForEach (it, v) {
        const char *s, *why = NULL;

        snprintf(sub, sizeof(sub), "%s[%d]", jp, i);
        s = pol_load_str(x, it, sub);
        if (s != NULL && pol_hostpat_parse(s, &r->hosts[i], &why) != AL_OK)
            al_json_err(x->errs, x->doc, sub, "invalid host pattern \"%s\": %s", s, why);
        i++;
    }
}

static void
pol_rule_ports(struct pol_loadctx *x, struct pol_rule *r, const cJSON *v, const char *jp)
{
    const cJSON *it;
    int          n = pol_load_array(x, v, jp), i = 0;
    char         sub[POL_JPATH_EL_BYTES];

    if (n < 0)
        return;
    r->ports = al_calloc((size_t)n, sizeof(*r->ports));
    if (r->ports == NULL) {
        al_json_err(x->errs, x->doc, jp, "out of memory");
        return;
    }
    r->nports = n;
    cJSON_ArrayForEach (it, v) {
        snprintf(sub, sizeof(sub), "%s[%d]", jp, i);
        if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) ||
            it->valuedouble < 1 || it->valuedouble > 65535)
            al_json_err(x->errs, x->doc, sub, "expected a port number 1..65535");
        else
            r->ports[i] = (uint16_t)it->valuedouble;
        i++;
    }
}

static void
pol_rule_paths(struct pol_loadctx *x, struct pol_rule *r, const cJSON *v, const char *jp)
{
    const cJSON *it;
    int          n = pol_load_array(x, v, jp), i = 0;
    char         sub[POL_JPATH_EL_BYTES];

    if (n < 0)
        return;
    r->paths = al_calloc((size_t)n, sizeof(*r->paths));
    if (r->paths == NULL) {
        al_json_err(x->errs, x->doc, jp, "out of memory");
        return;
    }
    r->npaths = n;
    cJSON_ArrayForEach (it, v) {
        const char *s, *why = NULL;

        snprintf(sub, sizeof(sub), "%s[%d]", jp, i);
        s = pol_load_str(x, it, sub);
        if (s != NULL && pol_pathpat_parse(s, &r->paths[i], &why) != AL_OK)
            al_json_err(x->errs, x->doc, sub, "invalid path pattern \"%s\": %s", s, why);
        i++;
    }
}

/* Parses rules[idx] into r; problems go to errs. names: duplicate check. */
static void
pol_rule_load(struct pol_loadctx *x, const cJSON *obj, int idx, struct pol_rule *r,
              struct pol_htab *names)
{
    static const char *const actions[] = {"allow", "deny", NULL};
    static const char *const modes[] = {"enforce", "dry-run", NULL};
    char                     jp[24], sub[POL_JPATH_BYTES];
    const cJSON             *v;
    int                      w;

    r->idx = idx;
    snprintf(jp, sizeof(jp), "rules[%d]", idx);
    if (!cJSON_IsObject(obj)) {
        al_json_err(x->errs, x->doc, jp, "expected an object");
        return;
    }
    al_json_check_keys(x->errs, x->doc, obj, jp, pol_rule_keys);

    snprintf(sub, sizeof(sub), "%s.name", jp);
    v = cJSON_GetObjectItemCaseSensitive(obj, "name");
    if (v == NULL) {
        al_json_err(x->errs, x->doc, jp, "missing \"name\"");
    } else if (pol_load_str(x, v, sub) != NULL) {
        const char            *s = v->valuestring;
        size_t                 n = strlen(s);
        const struct pol_hent *dup;

        if (n > POL_NAME_MAX_BYTES || !pol_ident_charset_ok(s, n))
            al_json_err(x->errs, x->doc, sub,
                        "invalid rule name \"%s\" (1..128 of A-Z a-z 0-9 . _ : -)", s);
        else if (strcmp(s, "default") == 0)
            al_json_err(x->errs, x->doc, sub, "\"default\" is reserved for the default verdict");
        else if ((r->name = al_strdup(s)) == NULL)
            al_json_err(x->errs, x->doc, sub, "out of memory");
        else if ((dup = pol_htab_get(names, r->name, n)) != NULL)
            al_json_err(x->errs, x->doc, sub, "duplicate rule name \"%s\" (first at rules[%d])", s,
                        dup->rules[0]);
        else if (pol_htab_add(names, r->name, n, idx) != AL_OK)
            al_json_err(x->errs, x->doc, sub, "out of memory");
    }

    snprintf(sub, sizeof(sub), "%s.hosts", jp);
    v = cJSON_GetObjectItemCaseSensitive(obj, "hosts");
    if (v == NULL)
        al_json_err(x->errs, x->doc, jp, "missing \"hosts\" (use [\"*\"] for any host)");
    else
        pol_rule_hosts(x, r, v, sub);

    snprintf(sub, sizeof(sub), "%s.ports", jp);
    if ((v = cJSON_GetObjectItemCaseSensitive(obj, "ports")) != NULL)
        pol_rule_ports(x, r, v, sub);

    snprintf(sub, sizeof(sub), "%s.methods", jp);
    if ((v = cJSON_GetObjectItemCaseSensitive(obj, "methods")) != NULL)
        (void)pol_load_strs(x, v, sub, &r->methods, &r->nmethods, pol_method_ok, "method",
                            "an uppercase token such as \"GET\"");

    snprintf(sub, sizeof(sub), "%s.paths", jp);
    if ((v = cJSON_GetObjectItemCaseSensitive(obj, "paths")) != NULL)
        pol_rule_paths(x, r, v, sub);

    snprintf(sub, sizeof(sub), "%s.sandboxes", jp);
    if ((v = cJSON_GetObjectItemCaseSensitive(obj, "sandboxes")) != NULL &&
        pol_load_strs(x, v, sub, &r->sandboxes, &r->nsandboxes, pol_sandbox_ok, "sandbox name",
                      "1..63 of A-Z a-z 0-9 . _ : -") == AL_OK &&
        x->known != NULL) {
        for (int i = 0; i < r->nsandboxes; i++) {
            int found = 0;

            for (int k = 0; k < x->nknown && !found; k++)
                found = strcmp(r->sandboxes[i], x->known[k]) == 0;
            if (!found) {
                char el[POL_JPATH_EL_BYTES];

                snprintf(el, sizeof(el), "%s[%d]", sub, i);
                al_json_warn(x->errs, x->doc, el,
                             "sandbox \"%s\" is not defined in the config; this rule "
                             "never applies to it",
                             r->sandboxes[i]);
            }
        }
    }

    snprintf(sub, sizeof(sub), "%s.cidrs", jp);
    if ((v = cJSON_GetObjectItemCaseSensitive(obj, "cidrs")) != NULL)
        (void)pol_load_cidrs(x, v, sub, &r->cidrs, &r->ncidrs);

    r->action = POL_ACT_ALLOW;
    snprintf(sub, sizeof(sub), "%s.action", jp);
    if ((v = cJSON_GetObjectItemCaseSensitive(obj, "action")) != NULL &&
        (w = pol_load_enum(x, v, sub, actions)) >= 0)
        r->action = w == 0 ? POL_ACT_ALLOW : POL_ACT_DENY;

    snprintf(sub, sizeof(sub), "%s.mode", jp);
    if ((v = cJSON_GetObjectItemCaseSensitive(obj, "mode")) != NULL &&
        (w = pol_load_enum(x, v, sub, modes)) >= 0)
        r->staged = w == 1;

    snprintf(sub, sizeof(sub), "%s.intercept", jp);
    if ((v = cJSON_GetObjectItemCaseSensitive(obj, "intercept")) != NULL)
        (void)pol_load_bool(x, v, sub, &r->intercept);

    snprintf(sub, sizeof(sub), "%s.allow_encoded_slash", jp);
    if ((v = cJSON_GetObjectItemCaseSensitive(obj, "allow_encoded_slash")) != NULL)
        (void)pol_load_bool(x, v, sub, &r->allow_encoded_slash);

    snprintf(sub, sizeof(sub), "%s.inject", jp);
    if ((v = cJSON_GetObjectItemCaseSensitive(obj, "inject")) != NULL &&
        pol_load_strs(x, v, sub, &r->inject, &r->ninject, pol_secret_name_ok, "secret name",
                      "1..128 of A-Z a-z 0-9 . _ -") == AL_OK &&
        r->action == POL_ACT_DENY)
        al_json_err(x->errs, x->doc, sub, "a deny rule cannot inject secrets");

    if (r->action == POL_ACT_DENY && (r->intercept || r->ncidrs > 0)) {
        snprintf(sub, sizeof(sub), "%s.%s", jp, r->intercept ? "intercept" : "cidrs");
        al_json_warn(x->errs, x->doc, sub, "has no effect on a deny rule");
    }
}

/* ---- compile ----------------------------------------------------------------- */

static int
pol_compile(struct pol_policy *p)
{
    size_t nkeys = 0;
    int    nstar = 0;

    for (int i = 0; i < p->nrules; i++)
        nkeys += (size_t)p->rules[i].nhosts;
    if (pol_htab_init(&p->exact, nkeys) != AL_OK || pol_htab_init(&p->suffix, nkeys) != AL_OK)
        return AL_ERROR;
    p->star = al_calloc((size_t)p->nrules, sizeof(*p->star));
    if (p->star == NULL)
        return AL_ERROR;
    for (int i = 0; i < p->nrules; i++) {
        const struct pol_rule *r = &p->rules[i];
        int                    any = 0;

        for (int h = 0; h < r->nhosts; h++) {
            const struct pol_hostpat *hp = &r->hosts[h];

            if (hp->kind == POL_HP_ANY)
                any = 1;
            else if (pol_htab_add(hp->kind == POL_HP_EXACT ? &p->exact : &p->suffix, hp->name,
                                  hp->len, i) != AL_OK)
                return AL_ERROR;
        }
        if (any)
            p->star[nstar++] = i;
    }
    p->nstar = nstar;
    return AL_OK;
}

static int
pol_in_list(char *const *list, int n, const char *s)
{
    for (int i = 0; i < n; i++) {
        if (strcmp(list[i], s) == 0)
            return 1;
    }
    return 0;
}

/* Does rule a match every request rule b matches? (conservative) */
static int
pol_rule_covers(const struct pol_rule *a, const struct pol_rule *b)
{
    for (int i = 0; i < b->nhosts; i++) {
        int ok = 0;

        for (int k = 0; k < a->nhosts && !ok; k++)
            ok = pol_hostpat_covers(&a->hosts[k], &b->hosts[i]);
        if (!ok)
            return 0;
    }
    if (a->ports != NULL) {
        if (b->ports == NULL)
            return 0;
        for (int i = 0; i < b->nports; i++) {
            int ok = 0;

            for (int k = 0; k < a->nports && !ok; k++)
                ok = a->ports[k] == b->ports[i];
            if (!ok)
                return 0;
        }
    }
    if (a->methods != NULL) {
        if (b->methods == NULL)
            return 0;
        for (int i = 0; i < b->nmethods; i++) {
            if (!pol_in_list(a->methods, a->nmethods, b->methods[i]))
                return 0;
        }
    }
    if (a->sandboxes != NULL) {
        if (b->sandboxes == NULL)
            return 0;
        for (int i = 0; i < b->nsandboxes; i++) {
            if (!pol_in_list(a->sandboxes, a->nsandboxes, b->sandboxes[i]))
                return 0;
        }
    }
    if (a->paths != NULL) {
        static struct pol_pathseg       all_seg = {"**", 2, 1};
        static char                     all_text[] = "/**";
        static const struct pol_pathpat all = {all_text, &all_seg, 1};

        for (int i = 0; i < (b->paths ? b->npaths : 1); i++) {
            const struct pol_pathpat *bp = b->paths ? &b->paths[i] : &all;
            int                       ok = 0;

            for (int k = 0; k < a->npaths && !ok; k++)
                ok = pol_pathpat_covers(&a->paths[k], bp);
            if (!ok)
                return 0;
        }
    }
    if (b->allow_encoded_slash && !a->allow_encoded_slash && b->action == POL_ACT_ALLOW)
        return 0;
    return 1;
}

/* Lowest index < b->idx of an enforced rule covering b found in e, or best. */
static int
pol_shadow_scan(const struct pol_policy *p, const int *list, int n, const struct pol_rule *b,
                int best)
{
    for (int i = 0; i < n && list[i] < b->idx && list[i] < best; i++) {
        const struct pol_rule *a = &p->rules[list[i]];

        if (!a->staged && pol_rule_covers(a, b))
            return list[i];
    }
    return best;
}

int
pol_rule_shadowed(const struct pol_policy *p, int j)
{
    const struct pol_rule    *b = &p->rules[j];
    const struct pol_hostpat *h = &b->hosts[0];
    const struct pol_hent    *e;
    int                       best = j;

    best = pol_shadow_scan(p, p->star, p->nstar, b, best);
    if (h->kind != POL_HP_ANY) {
        if (h->kind == POL_HP_EXACT && (e = pol_htab_get(&p->exact, h->name, h->len)) != NULL)
            best = pol_shadow_scan(p, e->rules, e->nrules, b, best);
        if (h->kind == POL_HP_SUFFIX && (e = pol_htab_get(&p->suffix, h->name, h->len)) != NULL)
            best = pol_shadow_scan(p, e->rules, e->nrules, b, best);
        for (size_t i = 0; i < h->len; i++) {
            if (h->name[i] != '.')
                continue;
            e = pol_htab_get(&p->suffix, h->name + i + 1, h->len - i - 1);
            if (e != NULL)
                best = pol_shadow_scan(p, e->rules, e->nrules, b, best);
        }
    }
    return best < j ? best : -1;
}

int
pol_rule_covers_rule(const struct pol_rule *a, const struct pol_rule *b)
{
    return pol_rule_covers(a, b);
}

static void
pol_shadow_warn(struct pol_loadctx *x)
{
    const struct pol_policy *p = x->p;

    for (int j = 0; j < p->nrules; j++) {
        int  best = pol_rule_shadowed(p, j);
        char jp[POL_JPATH_BYTES];

        if (best >= 0) {
            snprintf(jp, sizeof(jp), "rules[%d]", j);
            al_json_warn(x->errs, x->doc, jp,
                         "rule \"%s\" is never reached: earlier rule \"%s\" (rules[%d]) "
                         "matches every request it matches",
                         p->rules[j].name, p->rules[best].name, best);
        }
    }
}

/* ---- top level --------------------------------------------------------------- */

static struct pol_policy *
pol_load_doc(const struct al_json *doc, const char *const *known, int nknown, int force_dry_run,
             struct al_errs *errs)
{
    static const char *const modes[] = {"enforce", "dry-run", NULL};
    static const char *const defaults[] = {"deny", "allow", NULL};
    struct pol_loadctx       x = {errs, doc, known, nknown, NULL};
    struct pol_htab          names = {0};
    const cJSON             *root = doc->root, *v, *it;
    unsigned                 errs0 = errs->count;
    int                      w, i = 0;

    x.p = al_calloc(1, sizeof(*x.p));
    if (x.p == NULL) {
        al_errs_add(errs, "%s: out of memory", doc->path);
        goto fail;
    }
    atomic_init(&x.p->refs, 1);
    if (!cJSON_IsObject(root)) {
        al_json_err(errs, doc, "", "expected a JSON object");
        goto fail;
    }
    al_json_check_keys(errs, doc, root, "", pol_top_keys);
    if ((v = cJSON_GetObjectItemCaseSensitive(root, "mode")) != NULL &&
        (w = pol_load_enum(&x, v, "mode", modes)) >= 0)
        x.p->dry_run = w == 1;
    if (force_dry_run)
        x.p->dry_run = 1;
    if ((v = cJSON_GetObjectItemCaseSensitive(root, "default")) != NULL &&
        (w = pol_load_enum(&x, v, "default", defaults)) >= 0)
        x.p->default_allow = w == 1;
    if ((v = cJSON_GetObjectItemCaseSensitive(root, "allow_addresses")) != NULL)
        (void)pol_load_cidrs(&x, v, "allow_addresses", &x.p->allow_addrs, &x.p->nallow_addrs);
    v = cJSON_GetObjectItemCaseSensitive(root, "rules");
    if (v != NULL && !cJSON_IsArray(v)) {
        al_json_err(errs, doc, "rules", "expected an array");
    } else if (v != NULL) {
        int n = cJSON_GetArraySize(v);

        x.p->rules = al_calloc((size_t)n, sizeof(*x.p->rules));
        if (x.p->rules == NULL || pol_htab_init(&names, (size_t)n) != AL_OK) {
            al_errs_add(errs, "%s: out of memory", doc->path);
            goto fail;
        }
        x.p->nrules = n;
        cJSON_ArrayForEach (it, v) {
            pol_rule_load(&x, it, i, &x.p->rules[i], &names);
            i++;
        }
    }
    if (errs->count > errs0)
        goto fail;
    if (pol_compile(x.p) != AL_OK) {
        al_errs_add(errs, "%s: out of memory", doc->path);
        goto fail;
    }
    pol_shadow_warn(&x);
    pol_htab_free(&names);
    return x.p;
fail:
    pol_htab_free(&names);
    pol_policy_free(x.p);
    return NULL;
}

struct pol_policy *
pol_load_text(const char *name, const char *text, size_t len, const char *const *known_sandboxes,
              int nknown, int force_dry_run, struct al_errs *errs)
{
    struct al_json    *doc = al_json_parse(name, text, len, errs);
    struct pol_policy *p = NULL;

    if (doc != NULL)
        p = pol_load_doc(doc, known_sandboxes, nknown, force_dry_run, errs);
    al_json_free(doc);
    return p;
}

struct pol_policy *
pol_load(const char *path, const char *const *known_sandboxes, int nknown, int force_dry_run,
         struct al_errs *errs)
{
    struct al_json    *doc = al_json_load(path, errs);
    struct pol_policy *p = NULL;

    if (doc != NULL)
        p = pol_load_doc(doc, known_sandboxes, nknown, force_dry_run, errs);
    al_json_free(doc);
    return p;
}

void
pol_policy_free(struct pol_policy *p)
{
    if (p == NULL)
        return;
    for (int i = 0; p->rules != NULL && i < p->nrules; i++)
        pol_rule_fini(&p->rules[i]);
    al_free(p->rules);
    al_free(p->allow_addrs);
    al_free(p->star);
    pol_htab_free(&p->exact);
    pol_htab_free(&p->suffix);
    al_free(p);
}

struct pol_policy *
pol_policy_ref(struct pol_policy *p)
{
    if (p != NULL)
        atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
    return p;
}

void
pol_policy_unref(struct pol_policy *p)
{
    if (p == NULL)
        return;
    if (atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) == 1)
        pol_policy_free(p);
}

int
pol_policy_dry_run(const struct pol_policy *p)
{
    return p->dry_run;
}

int
pol_policy_default_allow(const struct pol_policy *p)
{
    return p->default_allow;
}

int
pol_policy_rule_count(const struct pol_policy *p)
{
    return p->nrules;
}

const char *
pol_policy_rule_name(const struct pol_policy *p, int i)
{
    return i >= 0 && i < p->nrules ? p->rules[i].name : NULL;
}

int
pol_policy_rule_inject(const struct pol_policy *p, int i, const char *const **names)
{
    if (i < 0 || i >= p->nrules) {
        *names = NULL;
        return 0;
    }
    *names = (const char *const *)p->rules[i].inject;
    return p->rules[i].ninject;
}
