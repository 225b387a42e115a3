/*
 * common.h - what every airlock module shares: status codes, logging,
 * allocation wrappers, byte buffers and JSON documents with error locations.
 * No policy, network or crypto logic lives here.
 */
#ifndef AL_COMMON_H
#define AL_COMMON_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

/* One status enum across the tree (nginx-style). */
enum al_status {
    AL_OK = 0,
    AL_ERROR = -1,
    AL_AGAIN = -2,    /* would block, or more bytes needed */
    AL_DECLINED = -3, /* does not apply; not an error */
    AL_DONE = -4,     /* the work continues elsewhere */
};

#define AL_PRINTF(a, b) __attribute__((format(printf, a, b)))

/* ---- logging: one line per event on stderr ---------------------------- */
enum al_log_level { AL_LOG_DEBUG = 0, AL_LOG_INFO, AL_LOG_WARN, AL_LOG_ERROR, AL_LOG_OFF };

/* text: "ts level message [key=value ...]"; json: one object per line,
 * {"time", "level", "message", "fields"}. Control characters are escaped
 * in both (\n, \t, \xHH / \u00HH), never dropped or replaced. */
enum al_log_format { AL_LOG_TEXT = 0, AL_LOG_JSON };
void               al_log_set_format(enum al_log_format f);
enum al_log_format al_log_get_format(void);
/* Parses "text|json"; AL_ERROR for anything else. */
int al_log_format_parse(const char *s, enum al_log_format *out);
/* One structured event: `message` and n key/value fields. A field with
 * str == NULL is the integer num. Values are escaped, never truncated
 * mid-character; the line is capped at AL_LOG_LINE_MAX bytes. */
#define AL_LOG_LINE_MAX 8192
struct al_log_field {
    const char *key;
    const char *str;
    long long   num;
};
void al_log_fields(enum al_log_level lvl, const char *message, const struct al_log_field *f, int n);
/* A record the operator asked for by name (access_log): written at level
 * info whatever log_level says, unless it is "off". */
void al_log_record(const char *message, const struct al_log_field *f, int n);
/* Appends s (len bytes) to out[*pos..cap) escaped for the current format's
 * string values (text: \n \t \r \\ \" \xHH; json: RFC 8259 escapes,
 * invalid UTF-8 as \u00HH). Stops before overflowing. Exposed for tests. */
void al_log_escape(enum al_log_format f, char *out, size_t cap, size_t *pos, const char *s,
                   size_t len);
void al_log_set_level(enum al_log_level lvl);
enum al_log_level al_log_get_level(void);
/* Parses "debug|info|warn|error|off"; returns AL_ERROR for anything else. */
int  al_log_level_parse(const char *s, enum al_log_level *out);
void al_log(enum al_log_level lvl, const char *fmt, ...) AL_PRINTF(2, 3);
void al_vlog(enum al_log_level lvl, const char *fmt, va_list ap) AL_PRINTF(2, 0);
#define al_log_debug(...)                                                                          \
    do {                                                                                           \
        if (al_log_get_level() <= AL_LOG_DEBUG)                                                    \
            al_log(AL_LOG_DEBUG, __VA_ARGS__);                                                     \
    } while (0)
#define al_log_info(...) al_log(AL_LOG_INFO, __VA_ARGS__)
#define al_log_warnx(...) al_log(AL_LOG_WARN, __VA_ARGS__)
#define al_log_err(...) al_log(AL_LOG_ERROR, __VA_ARGS__)
/* Like al_log_warnx, with ": strerror(errno)" appended. */
void al_log_warn(const char *fmt, ...) AL_PRINTF(1, 2);
/* Startup failures and broken invariants only. */
void al_fatal(const char *fmt, ...) AL_PRINTF(1, 2) __attribute__((noreturn));

/* ---- allocation: every allocation goes through these ------------------- */
void *al_malloc(size_t n);
void *al_calloc(size_t n, size_t size);
void *al_realloc(void *p, size_t n);
char *al_strdup(const char *s);
char *al_strndup(const char *s, size_t n);
void  al_free(void *p);
/* Copies NUL-terminated src into dst[dstsz] (dstsz > 0), truncating, always
 * terminated; al_strlcpy_n copies at most n bytes of src (a NUL ends it
 * early). Plain copies: these run per request, where printf costs. */
void al_strlcpy(char *dst, size_t dstsz, const char *src);
void al_strlcpy_n(char *dst, size_t dstsz, const char *src, size_t n);
/* Tests: make the Nth allocation from now fail (0 disables). */
void al_mem_fail_after(long n);
#define al_safefree(p)                                                                             \
    do {                                                                                           \
        al_free(p);                                                                                \
        (p) = NULL;                                                                                \
    } while (0)

/* ---- dynamic buffer with a hard cap (curl dynbuf) ---------------------- */
struct al_dbuf {
    char  *data; /* NUL-terminated when non-NULL */
    size_t len;
    size_t cap; /* allocated */
    size_t max; /* hard cap on len; appends beyond it fail with AL_DECLINED */
};
void al_dbuf_init(struct al_dbuf *b, size_t max);
int  al_dbuf_add(struct al_dbuf *b, const void *p, size_t n); /* AL_OK|AL_DECLINED|AL_ERROR */
int  al_dbuf_adds(struct al_dbuf *b, const char *s);
int  al_dbuf_addf(struct al_dbuf *b, const char *fmt, ...) AL_PRINTF(2, 3);
void al_dbuf_reset(struct al_dbuf *b); /* len = 0, keeps memory */
void al_dbuf_free(struct al_dbuf *b);

/* ---- buffer queue: chain of fixed-size chunks with a cap (curl bufq) ---- */
#define AL_BUFQ_CHUNK_BYTES 16384
struct al_chunk {
    struct al_chunk *next;
    size_t           r, w; /* read and write offsets into data */
    char             data[AL_BUFQ_CHUNK_BYTES];
};
struct al_bufq {
    struct al_chunk *head, *tail;
    size_t           len;       /* bytes queued */
    size_t           max;       /* high watermark: al_bufq_full() beyond it */
    int              sensitive; /* chunks' written bytes are wiped before they are freed */
};
void al_bufq_init(struct al_bufq *q, size_t max);
/* Appends n bytes (may exceed max by less than one write; callers stop
 * reading when al_bufq_full()). Returns AL_OK or AL_ERROR (no memory). */
int al_bufq_write(struct al_bufq *q, const void *p, size_t n);
/* Returns a pointer to the first contiguous readable span and its length. */
const char *al_bufq_peek(const struct al_bufq *q, size_t *n);
void        al_bufq_skip(struct al_bufq *q, size_t n);
int         al_bufq_full(const struct al_bufq *q);
size_t      al_bufq_len(const struct al_bufq *q);
/* Space for the caller to fill directly (e.g. read(2)); commit every byte
 * written: a sensitive queue wipes the committed bytes of a chunk only. */
char *al_bufq_reserve(struct al_bufq *q, size_t *n);
void  al_bufq_commit(struct al_bufq *q, size_t n);
void  al_bufq_free(struct al_bufq *q);

/* ---- error list: every problem is reported, then the caller fails ------ */
struct al_errs {
    struct al_dbuf text; /* "file:line:col: path: message\n" lines */
    unsigned       count;
    unsigned       warnings;
};
void al_errs_init(struct al_errs *e);
void al_errs_add(struct al_errs *e, const char *fmt, ...) AL_PRINTF(2, 3);
void al_errs_warn(struct al_errs *e, const char *fmt, ...) AL_PRINTF(2, 3);
void al_errs_free(struct al_errs *e);

/* ---- JSON documents that know where each value came from --------------- */
struct al_json {
    char  *path; /* file name as given, for messages */
    char  *text; /* file contents */
    size_t len;
    cJSON *root;
};
/* Reads and parses `path`. On a syntax error, adds "path:line:col: ..." to
 * errs and returns NULL. Returns a document owned by the caller. */
struct al_json *al_json_load(const char *path, struct al_errs *errs);
/* Same for an in-memory text (tests, embedded defaults); `name` is used in messages. */
struct al_json *al_json_parse(const char *name, const char *text, size_t len, struct al_errs *errs);
void            al_json_free(struct al_json *doc);
/* Line and column (1-based) of the value at `jpath` ("rules[3].hosts[0]",
 * "" for the root, keys with dots may not be addressed). Falls back to the
 * nearest ancestor found; 1:1 when nothing matches. */
void al_json_locate(const struct al_json *doc, const char *jpath, unsigned *line, unsigned *col);
/* Adds "file:line:col: jpath: message" to errs. */
void al_json_err(struct al_errs *errs, const struct al_json *doc, const char *jpath,
                 const char *fmt, ...) AL_PRINTF(4, 5);
void al_json_warn(struct al_errs *errs, const struct al_json *doc, const char *jpath,
                  const char *fmt, ...) AL_PRINTF(4, 5);

/* Table-driven object checking: every key of `obj` must be listed in
 * `known` (NULL-terminated); unknown keys are reported with their location. */
void al_json_check_keys(struct al_errs *errs, const struct al_json *doc, const cJSON *obj,
                        const char *jpath, const char *const *known);

/* ---- small helpers ------------------------------------------------------ */
/* Range-checked integer parse of the whole string; AL_OK or AL_ERROR. */
int al_parse_long(const char *s, long min, long max, long *out);
/* Duration "90s" "15m" "2h" "7d" (or bare seconds) into seconds. */
int al_parse_duration(const char *s, int64_t *seconds);
/* Joins `rel` onto the folder of `base_file` unless `rel` is absolute. Caller frees. */
char *al_path_join_dir(const char *base_file, const char *rel);
/* Wall clock in microseconds since the epoch; monotonic in microseconds. */
int64_t al_now_us(void);
int64_t al_mono_us(void);
/* Constant-time comparison of n bytes. */
int al_ct_equal(const void *a, const void *b, size_t n);
/* Checks a lowercased ASCII DNS name without trailing dot: 1..253 bytes,
 * labels 1..63 of [a-z0-9_-] not starting or ending with '-', last label not
 * all digits. AL_OK with *nlabels, or AL_ERROR with a static *why. */
int al_host_labels_ok(const char *s, size_t len, int *nlabels, const char **why);
/* Case-insensitive ASCII compare of s (length n) against NUL-terminated lit. */
int al_strcaseeq_n(const char *s, size_t n, const char *lit);

#endif
