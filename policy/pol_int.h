/*
 * pol_int.h - declarations shared only inside policy/: the compiled policy
 * layout, host pattern and path glob helpers, the host hash tables.
 *
 * Layout: rules[] in file order; three indexes point into it by rule index
 * (ascending): an exact-host hash table, a suffix hash table (key "a.b" for
 * pattern "*.a.b") and the list of "*" rules. pol_decide() collects the index
 * lists that apply to a host and merges them in rule order.
 */
#ifndef POL_INT_H
#define POL_INT_H

#include "policy.h"

#include <stdatomic.h>

#define POL_MAX_LABELS 128 /* a 253-byte name has at most 127 labels */

enum pol_act { POL_ACT_ALLOW = 0, POL_ACT_DENY };

enum pol_hostpat_kind { POL_HP_EXACT = 0, POL_HP_SUFFIX, POL_HP_ANY };

struct pol_hostpat {
    enum pol_hostpat_kind kind;
    char                 *name; /* EXACT: the host; SUFFIX: "a.b" of "*.a.b"; ANY: "*" */
    size_t                len;
};

/* A path pattern split into segments; "**" segments are marked. */
struct pol_pathseg {
    const char *s; /* into pol_pathpat.text */
    size_t      len;
    int         globstar;
};
struct pol_pathpat {
    char               *text; /* pattern as written, e.g. "/repos/" then "**" */
    struct pol_pathseg *segs;
    int                 nsegs;
};

struct pol_rule {
    char               *name;
    int                 idx;
    struct pol_hostpat *hosts;
    int                 nhosts;
    uint16_t           *ports; /* NULL = any */
    int                 nports;
    char              **methods; /* NULL = any */
    int                 nmethods;
    struct pol_pathpat *paths; /* NULL = any */
    int                 npaths;
    char              **sandboxes; /* NULL = any */
    int                 nsandboxes;
    struct pol_cidr    *cidrs;
    int                 ncidrs;
    char              **inject;
    int                 ninject;
    enum pol_act        action;
    int                 staged; /* "mode": "dry-run" */
    int                 intercept;
    int                 allow_encoded_slash;
};

struct pol_hent {
    const char *key; /* borrowed from a rule's pol_hostpat */
    size_t      klen;
    uint64_t    hash;
    int        *rules; /* ascending rule indexes */
    int         nrules, cap;
};
struct pol_htab {
    struct pol_hent *ents; /* open addressing, size a power of two */
    size_t           mask;
    size_t           used;
};

struct pol_policy {
    atomic_int       refs;
    int              dry_run;
    int              default_allow;
    struct pol_cidr *allow_addrs;
    int              nallow_addrs;
    struct pol_rule *rules;
    int              nrules;
    struct pol_htab  exact;
    struct pol_htab  suffix;
    int             *star; /* rules with a "*" host, ascending */
    int              nstar;
};

/* pol_host.c */
uint64_t pol_hash(const char *s, size_t n);
/* Validates and normalises a host pattern. On AL_OK fills *out (name owned by
 * out). On AL_ERROR sets *why to a static message. */
int                    pol_hostpat_parse(const char *in, struct pol_hostpat *out, const char **why);
int                    pol_htab_init(struct pol_htab *t, size_t nkeys);
int                    pol_htab_add(struct pol_htab *t, const char *key, size_t klen, int rule);
const struct pol_hent *pol_htab_get(const struct pol_htab *t, const char *key, size_t klen);
void                   pol_htab_free(struct pol_htab *t);
/* Does pattern a match every host pattern b matches? */
int pol_hostpat_covers(const struct pol_hostpat *a, const struct pol_hostpat *b);
int pol_hostpat_match(const struct pol_hostpat *hp, const char *host, size_t hlen, int is_ip);

/* pol_path.c */
/* Validates a path pattern and splits it; AL_OK or AL_ERROR with *why. */
int  pol_pathpat_parse(const char *in, struct pol_pathpat *out, const char **why);
void pol_pathpat_free(struct pol_pathpat *pp);
/* Matches a normalised path (no query) against a compiled pattern. */
int pol_pathpat_match(const struct pol_pathpat *pp, const char *path, size_t len);
/* Does pattern a match every path pattern b matches (conservative: 0 = unknown)? */
int pol_pathpat_covers(const struct pol_pathpat *a, const struct pol_pathpat *b);

/* pol_load.c */
void pol_policy_free(struct pol_policy *p);
/* Index of the first earlier enforced rule matching every request rule j
 * matches (rule j is never reached), or -1. Conservative. */
int pol_rule_shadowed(const struct pol_policy *p, int j);
/* Does rule a match every request rule b matches? (conservative) */
int pol_rule_covers_rule(const struct pol_rule *a, const struct pol_rule *b);

/* pol_ident.c */
int pol_ident_charset_ok(const char *s, size_t len);

#endif
