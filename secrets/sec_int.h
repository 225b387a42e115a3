/*
 * sec_int.h - declarations shared inside secrets/ only.
 *
 * Memory classes: anything that holds a secret value or can reconstruct one
 * (the values, their encoded forms, the redaction automata whose transition
 * tables spell them out) lives in "vault" memory from sec_vault_alloc(): its
 * own mmap, mlock'ed, MADV_DONTDUMP, MADV_WIPEONFORK, wiped by
 * sec_vault_free(). Short-lived heap temporaries that held a value are
 * OPENSSL_cleanse'd before al_free.
 */
#ifndef SEC_INT_H
#define SEC_INT_H

#include "secrets.h"

#include <pthread.h>
#include <stdatomic.h>

#define SEC_MIN_VALUE_BYTES 8
#define SEC_MAX_VALUE_BYTES 16384
#define SEC_MIN_PH_BYTES 8
#define SEC_MAX_PH_BYTES 256
#define SEC_PH_PREFIX "al_ph_"
#define SEC_PH_HEX_CHARS 32
#define SEC_KEY_BYTES 32
#define SEC_KEY_FILE "placeholder.key"
#define SEC_NAME_MAX_BYTES 64
#define SEC_HOST_MAX_BYTES 253
#define SEC_AC_CACHE_MAX 32
#define SEC_MAX_FILE_BYTES (1u << 20)
#define SEC_HEX_LC "0123456789abcdef"
#define SEC_HEX_UC "0123456789ABCDEF"

enum sec_hp_kind { SEC_HP_EXACT = 0, SEC_HP_SUFFIX, SEC_HP_ANY };

/* One "hosts" / "passthrough" entry: host[:port][/path-prefix]. */
struct sec_scope {
    enum sec_hp_kind kind;
    char            *host; /* normalised; the suffix without "*." for SEC_HP_SUFFIX */
    size_t           host_len;
    uint16_t         port; /* 0: any */
    char            *path; /* NULL: any */
    size_t           path_len;
};

enum sec_in {
    SEC_IN_HEADER = 1,
    SEC_IN_QUERY = 2,
    SEC_IN_PATH = 4,
    SEC_IN_BODY = 8,
    SEC_IN_WS = 16 /* websocket frames toward the origin */
};

struct sec_secret {
    char             *name;
    char             *env_name;
    char             *placeholder;
    size_t            ph_len;
    const char       *value; /* in the store's vault, NUL-terminated */
    size_t            value_len;
    struct sec_scope *scopes;
    int               nscopes;
    struct sec_scope *pass;
    int               npass;
    char             *hdr_name; /* NULL: no template */
    size_t            hdr_name_len;
    char             *hdr_pre, *hdr_post; /* format split at "{}" */
    size_t            hdr_pre_len, hdr_post_len;
    unsigned          in; /* enum sec_in bits */
    int               allow_plaintext;
};

/* One pattern of an automaton: which secret, how long, and whether it may
 * also occur MIME line-wrapped (a standard base64 form); c0 is its first
 * character (tells an escape from that character after a backslash). */
struct sec_pat {
    int      secret;
    uint32_t len;
    int      wrap;
    uint8_t  c0;
};

/*
 * MIME line-wrapped base64 (issue #14): a wrap pattern of length L also
 * matches with one EOL inserted before characters p, p+W, p+2W, ... < L,
 * for any 1 <= p < L and W in {60, 64, 76}, the EOL being the same
 * throughout: "\n" or "\r\n" (real line breaks), or, inside a JSON string,
 * the escapes "\\n" (2 bytes) or "\\r\\n" (4 bytes); there each '/' may
 * also be escaped as "\\/" (PHP), wrapped or not. SEC_WRAP_MIN/MAX are
 * the smallest and largest W. SEC_WRAP_RAW(d) bounds the raw length of such
 * a text holding d pattern characters (at most ceil(d/60) EOLs of <= 4
 * bytes; escaped slashes come on top, counted per trie state).
 * SEC_WRAP_SLACK: a match in progress also keeps the bytes just before it
 * (an escape or that character after a backslash) and a pending escape.
 */
#define SEC_WRAP_MIN 60u
#define SEC_WRAP_MAX 76u
#define SEC_WRAP_RAW(d) ((d) + 4u * (((d) + SEC_WRAP_MIN - 1) / SEC_WRAP_MIN))
#define SEC_WRAP_SLACK 8u

/*
 * Aho-Corasick automaton compiled to a dense DFA over byte classes.
 * tbl[state * ncls + cls[byte]] = next state premultiplied by ncls, with
 * SEC_AC_FLAG set when the next state has an output. out[state] is the
 * longest pattern ending there (-1: none), depth[state] how far back from
 * the current position a match in progress may have started (the trie
 * depth; SEC_WRAP_RAW of it when eol). shift: 2-byte-block skip table
 * (Wu-Manber) used while at the root, NULL when the shortest pattern is
 * under 3 bytes. Immutable once built.
 *
 * eol (some pattern is a wrap pattern): CR and LF are one byte class whose
 * transitions stay in the current state, unflagged: the automaton matches
 * the text with its line breaks taken out, and every match is checked
 * against the raw bytes (sec_ac_check: no line break inside, or a wrap
 * pattern wrapped as above). olink[state] is where the next shorter
 * pattern ending at state is found (out[olink] < 0: none), for when the
 * longest fails that check. max_len is then the longest raw match.
 *
 * JSON escapes (eol too): the DFA reads a backslash literally (the raw,
 * JSON and other forms keep matching as they are), but every transition on
 * it carries SEC_AC_ESC. A stream then looks at the next byte: for "\\n",
 * "\\r" or "\\/" it starts a second walk of the same DFA, from the state
 * before the backslash, that drops those escapes ("\\/" reads as '/') and
 * ends at the root or at any other backslash (struct sec_stream: wst).
 * Its matches count only for wrap patterns checked against the escapes
 * (sec_ac_check_esc). depth[] covers the escapes' extra bytes.
 */
#define SEC_AC_FLAG 0x80000000u
#define SEC_AC_ESC 0x40000000u
#define SEC_AC_FLAGS (SEC_AC_FLAG | SEC_AC_ESC)
struct sec_ac {
    void           *map; /* vault region holding everything below */
    size_t          map_len;
    const uint32_t *tbl;
    const uint32_t *depth;
    const int32_t  *out;
    const uint32_t *olink; /* NULL unless eol */
    const uint8_t  *shift;
    struct sec_pat *pats;
    int             npats;
    uint32_t        ncls, nstates;
    uint32_t        min_len, max_len;
    int             eol;
    uint8_t         cls[256];
};

/* Build input. */
struct sec_ac_in {
    const char *p;
    uint32_t    len;
    int         secret;
    int         wrap; /* see struct sec_pat */
};

struct sec_ac_slot {
    uint64_t       mask;
    struct sec_ac *ac;
};

struct sec_store {
    atomic_int         refs;
    int                n;
    struct sec_secret *secs;
    char              *vault; /* values */
    size_t             vault_len;
    struct sec_ac     *ph_ac; /* every placeholder */
    size_t             max_ph_len;
    pthread_mutex_t    lock; /* guards the redactor cache */
    struct sec_ac_slot cache[SEC_AC_CACHE_MAX];
    int                ncache;
};

/* Streams (sec_stream.c). */
struct sec_cluster {
    uint64_t start, end;
    int      pat;
    uint32_t plen; /* raw length of pat's match */
};

/* SUBST_PCT: the value goes in percent-encoded (all but unreserved bytes), for paths and queries.
 */
enum sec_stream_mode { SEC_MODE_REDACT = 0, SEC_MODE_SUBST, SEC_MODE_SUBST_PCT };

struct sec_stream {
    struct sec_store    *store; /* replacement texts; a counted reference when `counted` */
    int                  counted;
    const struct sec_ac *ac;
    struct sec_ac       *ac_own; /* set when not cached */
    enum sec_stream_mode mode;
    uint64_t             repl_mask;
    uint32_t             state;
    uint64_t             pos;     /* absolute offset of the next input byte */
    uint64_t             emitted; /* everything before was written out or replaced */
    char                *hold;    /* bytes [hold_pos, pos) still needed */
    size_t               hold_len, hold_cap;
    uint64_t             hold_pos;
    struct sec_cluster  *cl; /* pending matches, grown on demand */
    int                  ncl, clcap, clmax;
    uint64_t             eol_hi;   /* eol automata: bytes before were searched for CR/LF, */
    uint64_t             last_eol; /* the last one found there + 1 (0: none) */
    uint32_t             wst;      /* the walk dropping JSON escapes (0: none), */
    int                  wbs;      /* which has just read a backslash */
    int                  warm;     /* the main walk has just read a backslash, */
    uint32_t             wcand;    /* coming from this state */
    uint64_t             seen, replaced;
};

/* sec_vault.c */
void *sec_vault_alloc(size_t n, size_t *mapped, int *locked);
void  sec_vault_free(void *p, size_t mapped);
/* Appends with wipe-on-grow (no stale copies in freed memory). */
int  sec_dbuf_add(struct al_dbuf *b, const void *p, size_t n);
int  sec_dbuf_adds(struct al_dbuf *b, const char *s);
void sec_wipe_free(void *p, size_t n);

/* sec_scope.c */
int  sec_scope_parse(const char *in, struct sec_scope *out, const char **why);
void sec_scope_clear(struct sec_scope *sc);
int  sec_scope_match(const struct sec_scope *sc, const char *host, size_t hlen, int is_ip,
                     uint16_t port, const char *path, size_t path_len, int check_path);
int  sec_host_is_ip(const char *host, size_t len);

/* sec_ac.c */
struct sec_ac *sec_ac_build(const struct sec_ac_in *in, int n);
void           sec_ac_free(struct sec_ac *ac);
/* Standard base64 with padding, appended with sec_dbuf_add. */
int sec_b64_encode(struct al_dbuf *b, const void *v, size_t n);
/* Each byte of v as prefix + 2 digits (SEC_HEX_LC/UC; only_reserved:
 * unreserved bytes as they are), appended with sec_dbuf_add: an encoded form,
 * and the percent-encoded value of a substitution (sec_stream.c). */
int sec_form_hex(struct al_dbuf *b, const unsigned char *v, size_t n, const char *digits,
                 const char *prefix, int only_reserved);
/* Encoded forms of a value for redaction, appended to *forms (vault memory
 * is not needed: the caller wipes the buffer). */
int sec_forms_add(const char *v, size_t n, int secret, struct al_dbuf *buf, struct sec_ac_in **ins,
                  int *nins, int *cap);
const struct sec_ac *sec_redact_ac(struct sec_store *s, uint64_t mask, struct sec_ac **own);

/* sec_stream.c */
int  sec_stream_init(struct sec_stream *st, const struct sec_store *s, const struct sec_ac *ac,
                     enum sec_stream_mode mode, uint64_t repl_mask);
void sec_stream_fini(struct sec_stream *st);
/* One-shot run of an initialised stream over buf (feed + finish). */
int sec_stream_oneshot(struct sec_stream *st, const char *buf, size_t n, struct al_dbuf *out);

#endif
