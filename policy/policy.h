/*
 * policy.h - the public face of the policy module (prefix pol_).
 *
 * A policy file is loaded, validated and compiled once into an immutable,
 * reference-counted struct pol_policy. pol_decide() is a pure function of
 * (policy, request): no I/O, no allocation, safe to call from any thread on a
 * snapshot the caller holds a reference to. After DNS, pol_filter_addrs()
 * applies the address guard (SSRF), which dry-run never relaxes.
 *
 * Also here: SSRF address classes, CIDR lists, path normalisation, and the
 * sandbox identity helpers (Proxy-Authorization: Basic, user tags, token
 * hashes). Everything a decision returns is borrowed from the policy and valid
 * while the caller holds its reference.
 */
#ifndef POL_POLICY_H
#define POL_POLICY_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#include "common.h"

/* ---- limits -------------------------------------------------------------- */
#define POL_NAME_MAX_BYTES 128    /* rule names */
#define POL_HOST_MAX_BYTES 253    /* DNS name, without trailing dot */
#define POL_PATH_STACK_BYTES 8192 /* pol_decide's own path scratch */
#define POL_SANDBOX_MAX_BYTES 63  /* sandbox names */
#define POL_TAG_MAX_BYTES 128     /* session and tool-call ids */
#define POL_BASIC_MAX_BYTES 1024  /* decoded Proxy-Authorization credentials */

/* ---- policy snapshot ----------------------------------------------------- */
struct pol_policy; /* immutable after load, refcounted */

/*
 * Loads, validates and compiles a policy file. Every error is added to errs
 * ("file:line:col: json.path: message"), warnings too (al_errs_warn lines are
 * prefixed "warning: " and counted in errs->warnings, separately from
 * errs->count): a rule shadowed by an earlier rule, a rule naming a sandbox
 * not in known_sandboxes (skipped when known_sandboxes is NULL).
 * force_dry_run (airlock run --dry-run) acts as top-level "mode": "dry-run".
 * Returns a policy with one reference owned by the caller, or NULL when any
 * error was found.
 */
struct pol_policy *pol_load(const char *path, const char *const *known_sandboxes, int nknown,
                            int force_dry_run, struct al_errs *errs);
/* Same, from memory; `name` is the file name used in messages. */
struct pol_policy *pol_load_text(const char *name, const char *text, size_t len,
                                 const char *const *known_sandboxes, int nknown, int force_dry_run,
                                 struct al_errs *errs);
/* Takes another reference; returns p. NULL-safe. */
struct pol_policy *pol_policy_ref(struct pol_policy *p);
/* Drops a reference; the last one frees. NULL-safe. */
void pol_policy_unref(struct pol_policy *p);

/* Introspection (CLI, config cross-checks). Strings are borrowed. */
int         pol_policy_dry_run(const struct pol_policy *p); /* top-level dry-run in force */
int         pol_policy_default_allow(const struct pol_policy *p);
int         pol_policy_rule_count(const struct pol_policy *p);
const char *pol_policy_rule_name(const struct pol_policy *p, int i);
/* Secret names rule i injects; returns the count, *names borrowed. */
int pol_policy_rule_inject(const struct pol_policy *p, int i, const char *const **names);

/* ---- decisions ----------------------------------------------------------- */
struct pol_request {
    const char *sandbox;    /* may be NULL (unidentified client) */
    const char *scheme;     /* "http", "https", "connect" */
    const char *host;       /* normalised (px_host_normalize); IPv6 without brackets */
    int         host_is_ip; /* host is an IP literal: wildcard patterns never match it */
    uint16_t    port;
    const char *method; /* "CONNECT" for tunnels */
    const char *path;   /* raw request path incl. query; NULL for CONNECT */
    size_t      path_len;
    int         want_explain; /* fill decision.explain (policy check); costs time */
    char       *scratch;      /* optional buffer >= path_len + 1 for path normalisation; */
    size_t      scratch_len;  /* when NULL a POL_PATH_STACK_BYTES stack buffer is used */
};

enum pol_verdict { POL_ALLOW = 0, POL_DENY, POL_WOULD_DENY };

struct pol_decision {
    enum pol_verdict   verdict;
    const char        *rule;        /* deciding rule name, or "default" */
    const char        *reason;      /* short code, see below */
    const char        *staged_rule; /* first matching rule with "mode": "dry-run", or NULL */
    int                intercept;   /* from the allowing rule */
    const char *const *inject;      /* secret names from the allowing rule */
    int                ninject;
    const void        *rule_ref; /* allowing rule, for pol_filter_addrs (cidrs) */
    /* address_not_allowed by pol_filter_addrs: the first address it refused
     * (ss_family 0 = none), recorded in the audit row for `policy replay` */
    struct sockaddr_storage refused_addr;
    char                    explain[512];
};
/*
 * Reason codes: allowed_by_rule, default_allow, denied_by_rule, default_deny
 * is never used - a default deny names why the nearest rule missed:
 * host_not_allowed, port_not_allowed, method_not_allowed, path_not_allowed,
 * sandbox_not_allowed; protocol: bad_path (400), encoded_slash (400);
 * address guard: address_not_allowed.
 *
 * Verdicts: POL_DENY for bad_path/encoded_slash/address_not_allowed always;
 * a policy deny under top-level dry-run is POL_WOULD_DENY (let through); a
 * matching staged deny rule turns an allow into POL_WOULD_DENY (staged_rule
 * names it) and evaluation continues as if it were absent.
 *
 * CONNECT (method "CONNECT" or scheme "connect"): methods/paths cannot be
 * seen yet, so an allow rule with such limits matches a tunnel only when it
 * intercepts (the inner requests are decided again) or lists "CONNECT" in
 * methods; a deny rule with such limits does not match a tunnel.
 */
void pol_decide(const struct pol_policy *p, const struct pol_request *rq, struct pol_decision *out);
/* "allow", "deny", "would_deny" */
const char *pol_verdict_name(enum pol_verdict v);

/* ---- replay (`airlock policy replay`) ------------------------------------ */

#define POL_REPLAY_EXAMPLES 3     /* example requests listed per group */
#define POL_REPLAY_MAX_THREADS 16 /* pol_replay_opts.threads cap */
enum pol_replay_format { POL_REPLAY_TABLE = 0, POL_REPLAY_JSON, POL_REPLAY_CSV };

struct pol_replay_opts {
    const char *db;                 /* audit database (read-only) */
    const char *policy_name;        /* for the report */
    int64_t     since_us, until_us; /* window; 0 = open */
    const char *sandbox, *host;     /* filters (host: glob); NULL = any */
    int64_t     limit;              /* only the newest `limit` rows; 0 = all */
    /* airlock's own listening addresses, for the address guard */
    const struct sockaddr_storage *self;
    int                            nself;
    enum pol_replay_format         format;
    FILE                          *out;     /* report; NULL = none (tests) */
    int                            threads; /* readers over id ranges; 0/1 = one */
    int64_t part_rows; /* fewer ids per reader than this: one reader (0 = 100,000) */
};

struct pol_replay_stats {
    uint64_t rows;          /* rows read in the window */
    uint64_t replayed;      /* rows the policy had decided, decided again */
    uint64_t unchanged;     /* same decision */
    uint64_t rule_changed;  /* of those, decided by another rule */
    uint64_t changed;       /* another decision */
    uint64_t unlisted;      /* changed rows beyond the group cap (counted, not listed) */
    uint64_t before_policy; /* refused before the policy (identity, protocol) or errors */
    uint64_t after_policy;  /* allowed by the policy, refused after (secret scope) */
    uint64_t lacked;        /* replayed rows that lacked an input */
    uint64_t lacked_addr;   /* ... the address the guard would check */
    uint64_t lacked_path;   /* ... the whole path (stored cut) */
    uint64_t opaque;        /* intercepted requests whose tunnel would not be intercepted */
    uint64_t groups;        /* (transition, host, rules, reason) groups listed */
    int64_t  first_us, last_us;
    int      schema_version; /* of the audit file */
};

/*
 * Decides every recorded request in the window again under p with
 * pol_decide() and the address guard, as the daemon does, and reports the
 * changed ones grouped by transition, host and rule (format o->format on
 * o->out). Memory is bounded whatever the row count. Returns the exit code:
 * 0 no decision changes, 3 some do, 1 the database could not be read
 * (message in errs).
 */
int pol_replay(const struct pol_policy *p, const struct pol_replay_opts *o,
               struct pol_replay_stats *st, struct al_errs *errs);

/* ---- lint (`airlock policy lint`) ---------------------------------------- */
struct pol_lint_opts {
    const char        *policy_name;     /* for messages */
    const char        *policy_path;     /* parsed again for rule locations; may be NULL */
    const char *const *known_sandboxes; /* NULL: sandboxes not checked */
    int                nknown;
    /* Secret scopes as written in the secrets file ("host[:port][/path]",
     * host "api.x.com", "*.x.com" or "*"), read by the caller (policy/ does
     * not use the secrets module; no secret value is needed): nsecrets
     * names, each with a NULL-terminated list. secrets_given 0: inject and
     * the secret warnings are not checked (no secrets file). */
    int                       secrets_given;
    int                       nsecrets;
    const char *const        *secret_names;
    const char *const *const *secret_hosts;
    /* --db: which rules the window's recorded requests reach under p */
    const char *db; /* NULL: no usage findings */
    int64_t     since_us, until_us;
    int         json;
    FILE       *out; /* findings and a summary line; NULL = none */
};
struct pol_lint_stats {
    uint64_t errors, warnings;
    uint64_t rows; /* --db: requests decided again */
};
/*
 * Finds the rules that are wrong before a request meets them: errors
 * (never reached, duplicates, methods/paths on a rule HTTPS reaches only as
 * a CONNECT it does not intercept, unknown sandboxes, inject outside the
 * secret's scope) and warnings (allow rules with host "*" or no ports;
 * secrets no allow rule reaches; wildcard allow rules wider than a secret
 * scoped under them; with
 * a db: rules no request of the window matched, the most denied hosts,
 * staged rules recording would_deny since before the window).
 * Returns the exit code: 0 no errors, 3 errors, 1 the db could not be read.
 */
int pol_lint(const struct pol_policy *p, const struct pol_lint_opts *o, struct pol_lint_stats *st,
             struct al_errs *errs);

/* ---- addresses (SSRF guard) ---------------------------------------------- */
enum pol_addr_class {
    POL_ADDR_PUBLIC = 0,
    POL_ADDR_LOOPBACK,
    POL_ADDR_PRIVATE,    /* RFC 1918, fec0::/10 */
    POL_ADDR_CGNAT,      /* 100.64.0.0/10 */
    POL_ADDR_LINK_LOCAL, /* 169.254/16, fe80::/10 */
    POL_ADDR_METADATA,   /* cloud instance metadata endpoints */
    POL_ADDR_MULTICAST,
    POL_ADDR_BROADCAST,
    POL_ADDR_UNSPECIFIED, /* 0.0.0.0, :: */
    POL_ADDR_ULA,         /* fc00::/7 */
    POL_ADDR_DOCUMENTATION,
    POL_ADDR_BENCHMARKING, /* 198.18.0.0/15, 2001:2::/48 */
    POL_ADDR_RESERVED,     /* 0/8, 240/4, 192.0.0/24, 100::/64, ORCHID, ... */
    POL_ADDR_INVALID,      /* not AF_INET/AF_INET6 */
};
/* IPv6 forms embedding IPv4 are judged by the embedded address. */
enum pol_addr_class pol_addr_classify(const struct sockaddr *sa);
const char         *pol_addr_class_name(enum pol_addr_class c);
/*
 * Parses an IP literal in any spelling a resolver accepts: IPv4 per
 * inet_aton (2130706433, 0x7f.1, 0177.0.0.1, 127.1), IPv6 with or without
 * brackets. Zone ids ("fe80::1%eth0") are rejected. Port is set to 0.
 * Returns AL_OK, or AL_DECLINED when s is not an IP literal.
 */
int pol_addr_parse_literal(const char *s, size_t len, struct sockaddr_storage *out);

struct pol_cidr {
    int     family; /* AF_INET or AF_INET6 */
    int     prefix;
    uint8_t addr[16];
};
/* "10.0.0.0/8", "fd00::/8", a bare address = /32 or /128. Host bits set,
 * non-canonical IPv4 spellings and zone ids are errors. AL_OK or AL_ERROR. */
int pol_cidr_parse(const char *s, struct pol_cidr *out);
/* Family must match: an IPv4 CIDR never contains an IPv6 address (mapped
 * included) and ::ffff:0:0/96 never contains an IPv4 address. */
int pol_cidr_contains(const struct pol_cidr *c, const struct sockaddr *sa);
int pol_cidr_list_match(const struct pol_cidr *list, int n, const struct sockaddr *sa);

/*
 * What counts as airlock itself for the address guard. `listen`: its own
 * listening addresses (proxy listeners and admin); port 0 = any port. A
 * listener bound to one address means that address (any spelling: mapped,
 * or an IPv6 form embedding it). A listener bound to the unspecified
 * address (0.0.0.0, ::) means every address of the host on its port: any
 * non-public address, and every address in `host`, the addresses of all the
 * host's interfaces (ports ignored), public ones included. `host` may be
 * empty (not known); it is a snapshot the caller keeps alive meanwhile.
 */
struct pol_self {
    const struct sockaddr_storage *listen;
    int                            nlisten;
    const struct sockaddr_storage *host;
    int                            nhost;
};
/* 1 when sa (with its port; 0 = any) is one of airlock's own listeners. */
int pol_addr_is_self(const struct sockaddr *sa, const struct pol_self *self);

/*
 * Address guard, after DNS: keeps (compacting in place) the addresses this
 * decision may connect to. Airlock's own listeners (pol_addr_is_self) are
 * dropped first, always: no rule's cidrs and no allow_addresses entry
 * exempts them. Then non-public classes are dropped unless the allowing
 * rule's cidrs or the policy's allow_addresses contain them. Returns the
 * count kept; when none survive sets verdict POL_DENY and reason
 * "address_not_allowed" (also under dry-run). A decision already POL_DENY
 * keeps nothing. self may be NULL.
 */
int pol_filter_addrs_self(const struct pol_policy *p, struct pol_decision *d,
                          struct sockaddr_storage *addrs, int naddrs, const struct pol_self *self);
/* The same with only listening addresses known (no host interface list):
 * a wildcard listener then covers only non-public addresses on its port. */
int pol_filter_addrs(const struct pol_policy *p, struct pol_decision *d,
                     struct sockaddr_storage *addrs, int naddrs,
                     const struct sockaddr_storage *self_addrs, int nself);

/* ---- paths --------------------------------------------------------------- */
/*
 * Normalises a request path for matching (and forwarding): the query is cut,
 * %2e/%2E decoded, dot segments resolved (RFC 3986 5.2.4, ".." stops at the
 * root), nothing else decoded or collapsed. Sets *encoded_slash when the path
 * holds %2F or %5C (either case). Returns AL_ERROR (bad_path) for a path not
 * starting with '/', bad percent-escapes, %00, control bytes, spaces,
 * backslashes or '#', and when out is too small (outsz >= len + 1 always
 * suffices). On AL_OK out is NUL-terminated and *outlen set.
 */
int pol_path_normalize(const char *in, size_t len, char *out, size_t outsz, size_t *outlen,
                       int *encoded_slash);

/* ---- sandbox identity ---------------------------------------------------- */
/*
 * Parses a Proxy-Authorization value "Basic <base64(user:password)>" (scheme
 * case-insensitive, strict base64). user/pass are NUL-terminated copies.
 * Returns AL_OK, AL_DECLINED (another scheme) or AL_ERROR (malformed, too
 * long, control bytes, no ':').
 */
int pol_ident_parse_basic(const char *value, size_t len, char *user, size_t usz, char *pass,
                          size_t psz);

struct pol_ident {
    char sandbox[POL_SANDBOX_MAX_BYTES + 1];
    char session[POL_TAG_MAX_BYTES + 1];   /* "" when absent */
    char tool_call[POL_TAG_MAX_BYTES + 1]; /* "" when absent */
};
/* Splits "SANDBOX", "SANDBOX+TOOL_CALL" or "SANDBOX+SESSION+TOOL_CALL";
 * every part non-empty, [A-Za-z0-9._:-], within the limits. AL_OK/AL_ERROR. */
int pol_ident_split_user(const char *user, struct pol_ident *out);
/* Checks one X-Airlock-Session / X-Airlock-Tool-Call value. 1 valid, 0 not. */
int pol_ident_tag_valid(const char *s, size_t len, size_t max);
/* SHA-256(token) == hex digest (64 hex digits, either case), compared in
 * constant time. 1 match, 0 otherwise (also for a malformed digest). */
int pol_ident_token_ok(const char *token, size_t len, const char *hex_sha256);
/* Source-address match for CIDR-identified sandboxes: an IPv4-mapped IPv6
 * peer (dual-stack listener) is matched as IPv4. 1 match, 0 not. */
int pol_ident_source_match(const struct pol_cidr *list, int n, const struct sockaddr *peer);

#endif
