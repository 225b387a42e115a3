/*
 * secrets.h - the secret store: load secrets.json, derive placeholders,
 * inject real values into request heads and bodies for in-scope
 * destinations, redact them from responses.
 *
 * Ownership in one paragraph: a struct sec_store is an immutable,
 * refcounted snapshot (sec_load returns it with one reference; every
 * sec_store_ref needs one sec_store_unref; the last unref wipes and unlocks
 * every value). Strings returned by accessors are borrowed from the store.
 * Streams hold their own reference on the store. Every al_dbuf this module
 * writes into may receive secret values: it grows them without leaving
 * copies behind, and the caller releases them with sec_dbuf_wipe().
 *
 * No function here writes a secret value to a log, an error list, or any
 * stream other than the output buffers named in its contract.
 */
#ifndef SEC_SECRETS_H
#define SEC_SECRETS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/common.h"

#define SEC_MAX_SECRETS 64 /* secrets per store: masks are uint64_t */

struct sec_store;

/*
 * Loads secrets.json (format: secrets/README.md). key_dir holds
 * "placeholder.key" (32 random bytes, created 0600 if missing) from which
 * auto placeholders are derived; NULL makes auto placeholders an error.
 * Returns a store with one reference owned by the caller, or NULL after
 * reporting every problem through errs ("file:line:col: path: message").
 * mlock failures are warnings (errs->warnings), not errors.
 */
struct sec_store *sec_load(const char *path, const char *key_dir, struct al_errs *errs);
/* Flags of sec_load_flags. SEC_LOAD_NO_VALUES: names, scopes and
 * placeholders only (`secrets env`, `sandbox env`): no "from" environment
 * variable is looked up and no file is read; every value is empty, so the
 * store is good for sec_print_env / sec_placeholder / scope checks only,
 * never for injection or redaction. */
#define SEC_LOAD_NO_VALUES 1u
struct sec_store *sec_load_flags(const char *path, const char *key_dir, unsigned flags,
                                 struct al_errs *errs);
/* Same from an in-memory text; `name` is used in messages. The caller
 * should wipe `text` if it held inline values. */
struct sec_store *sec_load_text(const char *name, const char *text, size_t len, const char *key_dir,
                                struct al_errs *errs);
/* Returns s (for chaining). NULL-safe. */
struct sec_store *sec_store_ref(struct sec_store *s);
/* Drops a reference; the last one wipes values and frees. NULL-safe. */
void sec_store_unref(struct sec_store *s);

int sec_count(const struct sec_store *s);
/* Borrowed strings, valid while the caller holds a reference. i in [0, sec_count). */
const char *sec_name(const struct sec_store *s, int i);
const char *sec_env_name(const struct sec_store *s, int i);
const char *sec_placeholder(const struct sec_store *s, int i);
/* Index of the secret called `name`, or -1. */
int sec_find(const struct sec_store *s, const char *name);

/* A destination. host is normalised by the proxy (lowercase, punycode, no
 * trailing dot, IPv6 without brackets); path is the request path (anything
 * from '?' on is ignored), already normalised. */
struct sec_dest {
    const char *host;
    uint16_t    port;
    const char *path;
    size_t      path_len;
    int         tls;
    /* Secrets the deciding policy rule names in "inject" (bit i = secret i);
     * 0 = no such list, every secret scoped here may be used. A secret not
     * in a non-zero mask counts as out of scope for this request. */
    uint64_t only;
};

/* 1 when destination d is in secret i's scope (host pattern, optional port,
 * optional path prefix), else 0. A path with dot segments or an encoded dot
 * never matches a path-restricted scope. */
int sec_in_scope(const struct sec_store *s, int i, const struct sec_dest *d);
/* 1 when d is one of secret i's passthrough destinations. */
int sec_is_passthrough(const struct sec_store *s, int i, const struct sec_dest *d);
/* Index of a secret whose placeholder occurs in host (case-insensitively: a
 * name is lowercased on its way), else -1. A destination name never carries
 * a placeholder legitimately; one would leave in DNS queries and SNI. */
int sec_placeholder_in_host(const struct sec_store *s, const char *host, size_t n);
/* 1 when any secret's scope covers host:port with some path: the proxy must
 * intercept (and refuse an opaque tunnel). */
int sec_any_scope_host(const struct sec_store *s, const char *host, uint16_t port);

struct sec_hdr {
    const char *name;
    size_t      name_len;
    const char *value;
    size_t      value_len;
};

/* Refusal reasons (also the audit / X-Airlock-Reason strings). */
#define SEC_REFUSE_OUT_OF_SCOPE "secret_out_of_scope"     /* 403 */
#define SEC_REFUSE_PLAINTEXT "secret_plaintext"           /* 403 */
#define SEC_REFUSE_COMPRESSED "secret_in_compressed_body" /* 415 */
#define SEC_REFUSE_TRACE "trace_to_secret_host"           /* 405 */
#define SEC_REFUSE_LOCATION "secret_location_not_allowed" /* 403: in scope, but not in "in" */

struct sec_result {
    uint64_t    injected;       /* secrets whose value went out (audit their names) */
    const char *refusal;        /* NULL or one of SEC_REFUSE_* (static string) */
    int         refusal_secret; /* index of the secret involved, -1 if none */
    uint64_t    body_mask;      /* secrets to substitute in the request body (sec_body_new) */
    uint64_t    ws_mask;        /* secrets to substitute in websocket frames toward the origin */
    uint64_t    redact_mask;    /* secrets to redact from the response: those injected and
                                 * every secret scoped to this host:port (on any path: it
                                 * may hold a value from an earlier request) */
};

/*
 * Rewrites one request head. hdrs are the client's headers (values not
 * NUL-terminated, hop-by-hop already removed by the caller); target is the
 * origin-form path+query. Appends the rewritten header block ("Name: value\r\n"
 * per header, no final blank line) to out_headers and the (possibly
 * rewritten) target to out_target; both may then hold secret values (release
 * with sec_dbuf_wipe). Returns AL_OK, AL_DECLINED with res->refusal set
 * (nothing must be forwarded; output buffers hold partial data to wipe), or
 * AL_ERROR (no memory / output cap). Order: TRACE/TRACK check; drop client
 * headers named by templates that will be added; substitute placeholders in
 * header values (also inside "Basic" credentials) and in path/query where the
 * secret opts in; add templates of in-scope secrets over TLS (or with
 * allow_plaintext); refuse on the first placeholder that may not go where it
 * is going (out of scope and not passthrough, cleartext, or a location the
 * secret did not opt into). A compressed request body ("Content-Encoding"
 * other than identity) toward a destination where body substitution applies
 * is refused (secret_in_compressed_body).
 */
int sec_apply_head(const struct sec_store *s, const struct sec_dest *d, const char *method,
                   const struct sec_hdr *hdrs, int nhdrs, const char *target, size_t target_len,
                   struct al_dbuf *out_headers, struct al_dbuf *out_target, struct sec_result *res);

/* Streams: used in both directions, each with its own reference on the store. */
struct sec_stream;
/* Request bodies: placeholder of a secret in mask -> value; placeholders of
 * other secrets are left as they are and reported by sec_stream_seen(). */
struct sec_stream *sec_body_new(const struct sec_store *s, uint64_t mask);
/* Responses: each secret in mask, raw and encoded (base64 std/url with and
 * without padding and at any alignment inside a longer base64 text, hex,
 * percent-encoded, JSON-escaped), is replaced by its placeholder. */
struct sec_stream *sec_redactor_new(const struct sec_store *s, uint64_t mask);
/* Appends output to out. AL_OK, or AL_ERROR (no memory / out's cap). */
int sec_stream_feed(struct sec_stream *st, const char *in, size_t n, struct al_dbuf *out);
/* Flushes the hold-back; the stream is then reset and may be fed again. */
int sec_stream_finish(struct sec_stream *st, struct al_dbuf *out);
/* sec_stream_feed then sec_stream_finish in one step, without copying the
 * tail into the hold-back first (a websocket message, a body, in one piece). */
int sec_stream_feed_last(struct sec_stream *st, const char *in, size_t n, struct al_dbuf *out);
/* Secrets whose pattern was seen so far (body: any placeholder, substituted or not). */
uint64_t sec_stream_seen(const struct sec_stream *st);
/* Secrets whose pattern was replaced so far. */
uint64_t sec_stream_replaced(const struct sec_stream *st);
/* Wipes buffers, drops the store reference. NULL-safe. */
void sec_stream_free(struct sec_stream *st);

/*
 * Verdict on placeholders found in a request body (seen = sec_stream_seen of
 * a body stream) toward d, with the same rules as sec_apply_head for the
 * "body" location. AL_OK or AL_DECLINED with res->refusal set.
 */
int sec_body_verdict(const struct sec_store *s, const struct sec_dest *d, uint64_t seen,
                     struct sec_result *res);

/* The same for placeholders found in websocket frames toward the origin
 * (the "ws" location). */
int sec_ws_verdict(const struct sec_store *s, const struct sec_dest *d, uint64_t seen,
                   struct sec_result *res);

/* 1 when any form of a secret in mask occurs in in[0..n), 0 when none does,
 * -1 when the matcher cannot be built (out of memory): one pass over a whole
 * response head decides whether its pieces need sec_redact_value. */
int sec_redact_any(const struct sec_store *s, uint64_t mask, const char *in, size_t n);
/* Redacts one piece of a response head (status text, header name or value).
 * Appends to out. */
int sec_redact_value(const struct sec_store *s, uint64_t mask, const char *in, size_t n,
                     struct al_dbuf *out);

/* `airlock secrets env`: "ENV_NAME=placeholder\n" lines sorted by env name.
 * AL_OK or AL_ERROR (write failure). */
int sec_print_env(const struct sec_store *s, FILE *out);

/* Wipes (OPENSSL_cleanse over the whole allocation) and frees a buffer
 * written by this module. */
void sec_dbuf_wipe(struct al_dbuf *b);

#endif
