/*
 * sec_load.c - secrets.json into an immutable, refcounted struct sec_store.
 *
 * Loading reports every problem (file:line:col + JSON path) and names the
 * secret, never its value. Values are gathered first (env, file or inline),
 * then copied into one vault region (mlock'ed, not dumped, wiped on the last
 * unref); every temporary that held one - the file text, the cJSON strings,
 * file contents - is wiped before it is freed. getenv() memory belongs to
 * the process environment and is not touched.
 *
 * With SEC_LOAD_NO_VALUES (`secrets env`, `sandbox env`) no value is
 * gathered at all: the store has names, scopes and placeholders only.
 *
 * Placeholders: "auto" = "al_ph_" + 32 lowercase hex of
 * HMAC-SHA256(key, "airlock-placeholder-v1:" NAME), with the 32-byte key in
 * key_dir/placeholder.key (created 0600 when missing): stable across
 * restarts, all the same length, none a substring of another. Explicit
 * placeholders are 8..256 bytes of [A-Za-z0-9._~-]. A placeholder that
 * contains, or is contained in, a value or another placeholder is refused.
 */
#include "sec_int.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A value before it goes into the vault. */
struct sec_tmpval {
    const char *p; /* env memory, file buffer or cJSON string */
    size_t      len;
    char       *owned; /* file buffer to wipe */
    size_t      owned_cap;
};

static const char *const sec_top_keys[] = {"secrets", NULL};
static const char *const sec_keys[] = {
    "from", "hosts", "header", "placeholder", "passthrough", "in", "allow_plaintext", "env", NULL};
static const char *const sec_from_keys[] = {"env", "file", "value", NULL};
static const char *const sec_hdr_keys[] = {"name", "format", NULL};

/* ---- wiping of parsed text ------------------------------------------------ */

static void
sec_json_wipe(cJSON *it)
{
    for (; it != NULL; it = it->next) {
        if (it->valuestring != NULL)
            OPENSSL_cleanse(it->valuestring, strlen(it->valuestring));
        sec_json_wipe(it->child);
    }
}

static void
sec_doc_free(struct al_json *doc)
{
    if (doc == NULL)
        return;
    sec_json_wipe(doc->root);
    if (doc->text != NULL)
        OPENSSL_cleanse(doc->text, doc->len);
    al_json_free(doc);
}

/* Reads a whole file (at most max bytes) into a fresh buffer; *err = errno
 * text or a reason. Caller wipes and frees. */
static char *
sec_read_file(const char *path, size_t max, size_t *len, size_t *cap, const char **err)
{
    struct stat st;
    char       *buf = NULL;
    size_t      got = 0;
    int         fd;

    *err = NULL;
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        *err = strerror(errno);
        return NULL;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        *err = "not a regular file";
        goto fail;
    }
    if ((size_t)st.st_size > max) {
        *err = "file too large";
        goto fail;
    }
    *cap = (size_t)st.st_size + 1;
    buf = al_malloc(*cap);
    if (buf == NULL) {
        *err = "out of memory";
        goto fail;
    }
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            *err = n < 0 ? strerror(errno) : "short read";
            goto fail;
        }
        got += (size_t)n;
    }
    buf[got] = '\0';
    close(fd);
    *len = got;
    return buf;
fail:
    if (buf != NULL)
        sec_wipe_free(buf, *cap);
    close(fd);
    return NULL;
}

/* ---- small validators ----------------------------------------------------- */

static int
sec_name_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > SEC_NAME_MAX_BYTES)
        return 0;
    return strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") == n;
}

static int
sec_env_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > 255 || (s[0] >= '0' && s[0] <= '9'))
        return 0;
    return strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_") == n;
}

static int
sec_token_ok(const char *s)
{
    size_t n = strlen(s);

    return n > 0 && strspn(s, "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                              "abcdefghijklmnopqrstuvwxyz") == n;
}

static int
sec_ph_ok(const char *s)
{
    size_t n = strlen(s);

    return n >= SEC_MIN_PH_BYTES && n <= SEC_MAX_PH_BYTES &&
           strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-") == n;
}

/* Header names a template may not set. */
static int
sec_hdr_forbidden(const char *n)
{
    static const char *const bad[] = {"host",
                                      "content-length",
                                      "transfer-encoding",
                                      "connection",
                                      "proxy-connection",
                                      "keep-alive",
                                      "upgrade",
                                      "te",
                                      "trailer",
                                      "proxy-authorization",
                                      NULL};

    for (int i = 0; bad[i] != NULL; i++) {
        if (al_strcaseeq_n(n, strlen(n), bad[i]))
            return 1;
    }
    return 0;
}

/* Printable ASCII or UTF-8 continuation bytes only: no CTL, no DEL. */
static int
sec_value_clean(const char *v, size_t n)
{
    unsigned bad = 0;

    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];

        bad |= (unsigned)(c < 0x20 || c == 0x7f);
    }
    return bad == 0;
}

/* ---- one secret ----------------------------------------------------------- */

static int
sec_parse_scopes(struct al_errs *errs, const struct al_json *doc, const cJSON *arr, const char *jp,
                 struct sec_scope **out, int *nout, int required)
{
    char path[512];
    int  i = 0, ok = 1;

    if (arr == NULL) {
        if (required) {
            al_json_err(errs, doc, jp, "missing (list the hosts this secret may go to)");
            return AL_ERROR;
        }
        return AL_OK;
    }
    if (!cJSON_IsArray(arr) || (required && cJSON_GetArraySize(arr) == 0)) {
        al_json_err(errs, doc, jp, "expected a non-empty array of \"host[:port][/path]\"");
        return AL_ERROR;
    }
    *out = al_calloc((size_t)cJSON_GetArraySize(arr) + 1, sizeof(**out));
    if (*out == NULL) {
        al_json_err(errs, doc, jp, "out of memory");
        return AL_ERROR;
    }
    {
        const cJSON *it;

        cJSON_ArrayForEach (it, arr) {
            const char *why = NULL;

            snprintf(path, sizeof(path), "%s[%d]", jp, i);
            if (!cJSON_IsString(it)) {
                al_json_err(errs, doc, path, "expected a string \"host[:port][/path]\"");
                ok = 0;
            } else if (sec_scope_parse(it->valuestring, &(*out)[*nout], &why) != AL_OK) {
                al_json_err(errs, doc, path, "%s", why);
                ok = 0;
            } else {
                (*nout)++;
            }
            i++;
        }
    }
    return ok ? AL_OK : AL_ERROR;
}

static void
sec_secret_clear(struct sec_secret *x)
{
    al_safefree(x->name);
    al_safefree(x->env_name);
    al_safefree(x->placeholder);
    for (int i = 0; i < x->nscopes; i++)
        sec_scope_clear(&x->scopes[i]);
    al_safefree(x->scopes);
    for (int i = 0; i < x->npass; i++)
        sec_scope_clear(&x->pass[i]);
    al_safefree(x->pass);
    al_safefree(x->hdr_name);
    al_safefree(x->hdr_pre);
    al_safefree(x->hdr_post);
}

/*
 * Parses secret `it` into x and its value reference into tv. *auto_ph is set
 * when the placeholder is to be derived. Errors go to errs; returns AL_OK
 * when this secret is fine.
 */
static int
sec_parse_one(struct al_errs *errs, const struct al_json *doc, const cJSON *it,
              struct sec_secret *x, struct sec_tmpval *tv, int *auto_ph, unsigned flags)
{
    char         jp[256], sub[320];
    const char  *nm = it->string;
    const cJSON *from, *hosts, *hdr, *ph, *pass, *in, *ap, *env;
    unsigned     before = errs->count;

    snprintf(jp, sizeof(jp), "secrets.%s", nm);
    *auto_ph = 0;
    if (!sec_name_ok(nm)) {
        al_json_err(errs, doc, jp,
                    "secret names are 1..64 characters of letters, digits, '_' and '-'");
    }
    x->name = al_strdup(nm);
    if (x->name == NULL)
        goto nomem;
    if (!cJSON_IsObject(it)) {
        al_json_err(errs, doc, jp, "expected an object");
        goto out;
    }
    al_json_check_keys(errs, doc, it, jp, sec_keys);

    /* from */
    from = cJSON_GetObjectItemCaseSensitive(it, "from");
    snprintf(sub, sizeof(sub), "%s.from", jp);
    if (from == NULL) {
        al_json_err(errs, doc, sub,
                    "missing (one of {\"env\": VAR}, {\"file\": PATH}, "
                    "{\"value\": TEXT})");
    } else if (!cJSON_IsObject(from) || cJSON_GetArraySize(from) != 1) {
        al_json_err(errs, doc, sub,
                    "expected exactly one of {\"env\": VAR}, {\"file\": PATH}, "
                    "{\"value\": TEXT}");
        if (cJSON_IsObject(from))
            al_json_check_keys(errs, doc, from, sub, sec_from_keys);
    } else {
        const cJSON *f = from->child;
        char         fp[384];

        snprintf(fp, sizeof(fp), "%s.%s", sub, f->string);
        al_json_check_keys(errs, doc, from, sub, sec_from_keys);
        if (!cJSON_IsString(f)) {
            al_json_err(errs, doc, fp, "expected a string");
        } else if (flags & SEC_LOAD_NO_VALUES) {
            /* names and placeholders only: no value is looked up or read */
            if (strcmp(f->string, "env") == 0 && !sec_env_ok(f->valuestring))
                al_json_err(errs, doc, fp, "not a valid environment variable name");
        } else if (strcmp(f->string, "env") == 0) {
            const char *v = getenv(f->valuestring);

            if (!sec_env_ok(f->valuestring))
                al_json_err(errs, doc, fp, "not a valid environment variable name");
            else if (v == NULL)
                al_json_err(errs, doc, fp, "secret \"%s\": environment variable %s is not set", nm,
                            f->valuestring);
            else {
                tv->p = v;
                tv->len = strlen(v);
            }
        } else if (strcmp(f->string, "file") == 0) {
            const char *err = NULL;

            tv->owned = sec_read_file(f->valuestring, SEC_MAX_VALUE_BYTES + 2, &tv->len,
                                      &tv->owned_cap, &err);
            if (tv->owned == NULL) {
                al_json_err(errs, doc, fp, "secret \"%s\": cannot read %s: %s", nm, f->valuestring,
                            err);
            } else {
                tv->p = tv->owned;
                if (tv->len > 0 && tv->p[tv->len - 1] == '\n') {
                    tv->len--;
                    if (tv->len > 0 && tv->p[tv->len - 1] == '\r')
                        tv->len--;
                }
            }
        } else if (strcmp(f->string, "value") == 0) {
            tv->p = f->valuestring;
            tv->len = strlen(f->valuestring);
        }
        if (tv->p != NULL) {
            if (tv->len == 0)
                al_json_err(errs, doc, fp, "secret \"%s\": the value is empty", nm);
            else if (tv->len < SEC_MIN_VALUE_BYTES)
                al_json_err(errs, doc, fp,
                            "secret \"%s\": the value is shorter than %d bytes (too short to "
                            "inject and redact safely)",
                            nm, SEC_MIN_VALUE_BYTES);
            else if (tv->len > SEC_MAX_VALUE_BYTES)
                al_json_err(errs, doc, fp, "secret \"%s\": the value is longer than %d bytes", nm,
                            SEC_MAX_VALUE_BYTES);
            else if (!sec_value_clean(tv->p, tv->len))
                al_json_err(errs, doc, fp,
                            "secret \"%s\": the value contains control characters (CR, LF, "
                            "NUL, TAB, ...) and cannot go into a header or URL",
                            nm);
        }
    }

    /* hosts, passthrough */
    hosts = cJSON_GetObjectItemCaseSensitive(it, "hosts");
    snprintf(sub, sizeof(sub), "%s.hosts", jp);
    sec_parse_scopes(errs, doc, hosts, sub, &x->scopes, &x->nscopes, 1);
    pass = cJSON_GetObjectItemCaseSensitive(it, "passthrough");
    snprintf(sub, sizeof(sub), "%s.passthrough", jp);
    sec_parse_scopes(errs, doc, pass, sub, &x->pass, &x->npass, 0);

    /* header template */
    hdr = cJSON_GetObjectItemCaseSensitive(it, "header");
    if (hdr != NULL) {
        const cJSON *hn, *hf;

        snprintf(sub, sizeof(sub), "%s.header", jp);
        if (!cJSON_IsObject(hdr)) {
            al_json_err(errs, doc, sub, "expected {\"name\": ..., \"format\": \"... {} ...\"}");
        } else {
            char hp[384];

            al_json_check_keys(errs, doc, hdr, sub, sec_hdr_keys);
            hn = cJSON_GetObjectItemCaseSensitive(hdr, "name");
            hf = cJSON_GetObjectItemCaseSensitive(hdr, "format");
            snprintf(hp, sizeof(hp), "%s.name", sub);
            if (!cJSON_IsString(hn) || !sec_token_ok(hn->valuestring))
                al_json_err(errs, doc, hn ? hp : sub, "expected a header name (HTTP token)");
            else if (sec_hdr_forbidden(hn->valuestring))
                al_json_err(errs, doc, hp, "header %s cannot carry a secret", hn->valuestring);
            else if ((x->hdr_name = al_strdup(hn->valuestring)) == NULL)
                goto nomem;
            else
                x->hdr_name_len = strlen(x->hdr_name);
            snprintf(hp, sizeof(hp), "%s.format", sub);
            if (hf == NULL) {
                x->hdr_pre = al_strdup("");
                x->hdr_post = al_strdup("");
                if (x->hdr_pre == NULL || x->hdr_post == NULL)
                    goto nomem;
            } else if (!cJSON_IsString(hf)) {
                al_json_err(errs, doc, hp, "expected a string holding \"{}\"");
            } else {
                const char *br = strstr(hf->valuestring, "{}");

                if (br == NULL || strstr(br + 2, "{}") != NULL)
                    al_json_err(errs, doc, hp,
                                "must contain \"{}\" exactly once (where the value goes)");
                else if (!sec_value_clean(hf->valuestring, strlen(hf->valuestring)))
                    al_json_err(errs, doc, hp, "control characters are not allowed");
                else {
                    x->hdr_pre_len = (size_t)(br - hf->valuestring);
                    x->hdr_pre = al_strndup(hf->valuestring, x->hdr_pre_len);
                    x->hdr_post = al_strdup(br + 2);
                    if (x->hdr_pre == NULL || x->hdr_post == NULL)
                        goto nomem;
                    x->hdr_post_len = strlen(x->hdr_post);
                }
            }
            if (x->hdr_name != NULL && (x->hdr_pre == NULL || x->hdr_post == NULL))
                al_safefree(x->hdr_name);
        }
    }

    /* placeholder */
    ph = cJSON_GetObjectItemCaseSensitive(it, "placeholder");
    snprintf(sub, sizeof(sub), "%s.placeholder", jp);
    if (ph == NULL || (cJSON_IsString(ph) && strcmp(ph->valuestring, "auto") == 0)) {
        *auto_ph = 1;
    } else if (!cJSON_IsString(ph) || !sec_ph_ok(ph->valuestring)) {
        al_json_err(errs, doc, sub,
                    "expected \"auto\" or 8..256 characters of letters, digits, '.', '_', "
                    "'~', '-'");
    } else if ((x->placeholder = al_strdup(ph->valuestring)) == NULL) {
        goto nomem;
    } else {
        x->ph_len = strlen(x->placeholder);
    }

    /* in */
    in = cJSON_GetObjectItemCaseSensitive(it, "in");
    snprintf(sub, sizeof(sub), "%s.in", jp);
    if (in == NULL) {
        x->in = SEC_IN_HEADER;
    } else if (!cJSON_IsArray(in) || cJSON_GetArraySize(in) == 0) {
        al_json_err(errs, doc, sub,
                    "expected a non-empty array of \"header\", \"query\", \"path\", \"body\", "
                    "\"ws\"");
    } else {
        const cJSON *e;
        int          k = 0;

        cJSON_ArrayForEach (e, in) {
            char ep[384];

            snprintf(ep, sizeof(ep), "%s[%d]", sub, k++);
            if (cJSON_IsString(e) && strcmp(e->valuestring, "header") == 0)
                x->in |= SEC_IN_HEADER;
            else if (cJSON_IsString(e) && strcmp(e->valuestring, "query") == 0)
                x->in |= SEC_IN_QUERY;
            else if (cJSON_IsString(e) && strcmp(e->valuestring, "path") == 0)
                x->in |= SEC_IN_PATH;
            else if (cJSON_IsString(e) && strcmp(e->valuestring, "body") == 0)
                x->in |= SEC_IN_BODY;
            else if (cJSON_IsString(e) && strcmp(e->valuestring, "ws") == 0)
                x->in |= SEC_IN_WS;
            else
                al_json_err(errs, doc, ep,
                            "expected one of \"header\", \"query\", \"path\", \"body\", "
                            "\"ws\"");
        }
    }

    ap = cJSON_GetObjectItemCaseSensitive(it, "allow_plaintext");
    snprintf(sub, sizeof(sub), "%s.allow_plaintext", jp);
    if (ap != NULL && !cJSON_IsBool(ap))
        al_json_err(errs, doc, sub, "expected true or false");
    x->allow_plaintext = cJSON_IsTrue(ap);

    env = cJSON_GetObjectItemCaseSensitive(it, "env");
    snprintf(sub, sizeof(sub), "%s.env", jp);
    if (env != NULL) {
        if (!cJSON_IsString(env) || !sec_env_ok(env->valuestring))
            al_json_err(errs, doc, sub,
                        "expected an environment variable name ([A-Za-z_][A-Za-z0-9_]*)");
        else if ((x->env_name = al_strdup(env->valuestring)) == NULL)
            goto nomem;
    } else {
        x->env_name = al_strdup(nm);
        if (x->env_name == NULL)
            goto nomem;
        for (char *c = x->env_name; *c != '\0'; c++) {
            if (*c >= 'a' && *c <= 'z')
                *c = (char)(*c - 32);
            else if (*c == '-')
                *c = '_';
        }
        if (!sec_env_ok(x->env_name))
            al_json_err(errs, doc, jp,
                        "the name does not make an environment variable name: set \"env\"");
    }
    goto out;
nomem:
    al_json_err(errs, doc, jp, "out of memory");
out:
    return errs->count == before ? AL_OK : AL_ERROR;
}

/* ---- placeholder key ------------------------------------------------------ */

/* Reads or creates key_dir/placeholder.key into key[32]. */
static int
sec_key_load(const char *key_dir, unsigned char *key, const char *cfg, struct al_errs *errs)
{
    char        path[4096];
    char       *buf = NULL;
    size_t      len = 0, cap = 0;
    const char *err = NULL;
    struct stat st;
    int         fd = -1, rc = AL_ERROR;

    if (snprintf(path, sizeof(path), "%s/%s", key_dir, SEC_KEY_FILE) >= (int)sizeof(path)) {
        al_errs_add(errs, "%s: placeholder key path too long", cfg);
        goto out;
    }
    if (stat(path, &st) != 0 && errno == ENOENT) {
        size_t off = 0;

        if (RAND_bytes(key, SEC_KEY_BYTES) != 1) {
            al_errs_add(errs, "%s: cannot generate the placeholder key", cfg);
            goto out;
        }
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0 && errno == EEXIST)
            goto read; /* lost a race with another loader: use theirs */
        if (fd < 0) {
            al_errs_add(errs, "%s: cannot create %s: %s", cfg, path, strerror(errno));
            goto out;
        }
        while (off < SEC_KEY_BYTES) {
            ssize_t n = write(fd, key + off, SEC_KEY_BYTES - off);

            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                al_errs_add(errs, "%s: cannot write %s: %s", cfg, path, strerror(errno));
                (void)unlink(path);
                goto out;
            }
            off += (size_t)n;
        }
        if (fsync(fd) != 0) {
            al_errs_add(errs, "%s: cannot write %s: %s", cfg, path, strerror(errno));
            (void)unlink(path);
            goto out;
        }
        rc = AL_OK;
        goto out;
    }
read:
    buf = sec_read_file(path, 4096, &len, &cap, &err);
    if (buf == NULL) {
        al_errs_add(errs, "%s: cannot read %s: %s", cfg, path, err);
        goto out;
    }
    if (len != SEC_KEY_BYTES) {
        al_errs_add(errs, "%s: %s must hold exactly %d bytes", cfg, path, SEC_KEY_BYTES);
        goto out;
    }
    if (stat(path, &st) == 0 && (st.st_mode & 077) != 0)
        al_errs_warn(errs, "%s: %s is readable by group or others (chmod 600)", cfg, path);
    memcpy(key, buf, SEC_KEY_BYTES);
    rc = AL_OK;
out:
    if (buf != NULL)
        sec_wipe_free(buf, cap);
    if (fd >= 0)
        close(fd);
    return rc;
}

static int
sec_ph_derive(const unsigned char *key, const char *name, char **out)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char     md[EVP_MAX_MD_SIZE];
    unsigned int      mdlen = 0;
    char              msg[SEC_NAME_MAX_BYTES + 64];
    char             *ph;
    size_t            pl = strlen(SEC_PH_PREFIX);
    int               n;

    n = snprintf(msg, sizeof(msg), "airlock-placeholder-v1:%s", name);
    if (n < 0 || (size_t)n >= sizeof(msg))
        return AL_ERROR;
    if (HMAC(EVP_sha256(), key, SEC_KEY_BYTES, (const unsigned char *)msg, (size_t)n, md, &mdlen) ==
        NULL)
        return AL_ERROR;
    ph = al_malloc(pl + SEC_PH_HEX_CHARS + 1);
    if (ph == NULL)
        return AL_ERROR;
    memcpy(ph, SEC_PH_PREFIX, pl);
    for (int i = 0; i < SEC_PH_HEX_CHARS / 2; i++) {
        ph[pl + 2 * (size_t)i] = hex[md[i] >> 4];
        ph[pl + 2 * (size_t)i + 1] = hex[md[i] & 15];
    }
    ph[pl + SEC_PH_HEX_CHARS] = '\0';
    OPENSSL_cleanse(md, sizeof(md));
    *out = ph;
    return AL_OK;
}

/* ---- store ----------------------------------------------------------------- */

static void
sec_store_free(struct sec_store *s)
{
    if (s == NULL)
        return;
    for (int i = 0; i < s->ncache; i++)
        sec_ac_free(s->cache[i].ac);
    sec_ac_free(s->ph_ac);
    for (int i = 0; i < s->n; i++)
        sec_secret_clear(&s->secs[i]);
    al_free(s->secs);
    sec_vault_free(s->vault, s->vault_len);
    pthread_mutex_destroy(&s->lock);
    al_free(s);
}

struct sec_store *
sec_store_ref(struct sec_store *s)
{
    if (s != NULL)
        atomic_fetch_add(&s->refs, 1);
    return s;
}

void
sec_store_unref(struct sec_store *s)
{
    if (s != NULL && atomic_fetch_sub(&s->refs, 1) == 1)
        sec_store_free(s);
}

/* Cross checks: placeholders unique and no placeholder/value containment. */
static void
sec_cross_check(struct sec_store *s, const struct sec_tmpval *tv, const char *cfg,
                struct al_errs *errs)
{
    for (int a = 0; a < s->n; a++) {
        const struct sec_secret *x = &s->secs[a];

        if (x->placeholder == NULL)
            continue;
        for (int b = 0; b < s->n; b++) {
            const struct sec_secret *y = &s->secs[b];

            if (tv[b].p != NULL && (memmem(tv[b].p, tv[b].len, x->placeholder, x->ph_len) ||
                                    memmem(x->placeholder, x->ph_len, tv[b].p, tv[b].len)))
                al_errs_add(errs,
                            "%s: secrets.%s.placeholder: the placeholder and the value of "
                            "secret \"%s\" contain one another",
                            cfg, x->name, y->name);
            if (b <= a || y->placeholder == NULL)
                continue;
            if (x->ph_len == y->ph_len && memcmp(x->placeholder, y->placeholder, x->ph_len) == 0)
                al_errs_add(errs, "%s: secrets.%s.placeholder: same placeholder as secret \"%s\"",
                            cfg, x->name, y->name);
            else if (memmem(x->placeholder, x->ph_len, y->placeholder, y->ph_len) ||
                     memmem(y->placeholder, y->ph_len, x->placeholder, x->ph_len))
                al_errs_add(errs,
                            "%s: secrets.%s.placeholder: contains or is contained in the "
                            "placeholder of secret \"%s\"",
                            cfg, x->name, y->name);
        }
    }
}

static struct sec_store *
sec_load_doc(struct al_json *doc, const char *key_dir, unsigned flags, struct al_errs *errs)
{
    struct sec_store  *s = NULL, *ret = NULL;
    struct sec_tmpval *tv = NULL;
    const cJSON       *root = doc->root, *secs, *it;
    unsigned char      key[SEC_KEY_BYTES];
    unsigned           before = errs->count;
    int                nsec = 0, need_key = 0, have_key = 0, i;

    OPENSSL_cleanse(key, sizeof(key));
    s = al_calloc(1, sizeof(*s));
    if (s == NULL)
        goto nomem;
    atomic_init(&s->refs, 1);
    pthread_mutex_init(&s->lock, NULL);
    if (!cJSON_IsObject(root)) {
        al_json_err(errs, doc, "", "expected an object {\"secrets\": {...}}");
        goto out;
    }
    al_json_check_keys(errs, doc, root, "", sec_top_keys);
    secs = cJSON_GetObjectItemCaseSensitive(root, "secrets");
    if (secs == NULL) {
        secs = NULL;
    } else if (!cJSON_IsObject(secs)) {
        al_json_err(errs, doc, "secrets", "expected an object NAME -> secret");
        goto out;
    }
    nsec = secs ? cJSON_GetArraySize(secs) : 0;
    if (nsec > SEC_MAX_SECRETS) {
        al_json_err(errs, doc, "secrets", "at most %d secrets per file", SEC_MAX_SECRETS);
        goto out;
    }
    s->secs = al_calloc((size_t)nsec + 1, sizeof(*s->secs));
    tv = al_calloc((size_t)nsec + 1, sizeof(*tv));
    if (s->secs == NULL || tv == NULL)
        goto nomem;
    i = 0;
    if (secs != NULL) {
        cJSON_ArrayForEach (it, secs) {
            int auto_ph = 0;

            for (int j = 0; j < i; j++) {
                if (strcmp(s->secs[j].name, it->string) == 0) {
                    char jp[256];

                    snprintf(jp, sizeof(jp), "secrets.%s", it->string);
                    al_json_err(errs, doc, jp, "duplicate secret name");
                }
            }
            sec_parse_one(errs, doc, it, &s->secs[i], &tv[i], &auto_ph, flags);
            if (auto_ph)
                need_key = 1;
            i++;
        }
    }
    s->n = i;
    if (need_key && key_dir == NULL) {
        for (int j = 0; j < s->n; j++) {
            char jp[256];

            if (s->secs[j].placeholder != NULL)
                continue;
            snprintf(jp, sizeof(jp), "secrets.%s.placeholder", s->secs[j].name);
            al_json_err(errs, doc, jp,
                        "an \"auto\" placeholder needs ca.dir to derive stable placeholders "
                        "(or give an explicit placeholder)");
        }
    } else if (need_key) {
        if (sec_key_load(key_dir, key, doc->path, errs) == AL_OK)
            have_key = 1;
    }
    if (errs->count != before)
        goto out;
    for (int j = 0; j < s->n; j++) {
        if (s->secs[j].placeholder != NULL)
            continue;
        if (!have_key || sec_ph_derive(key, s->secs[j].name, &s->secs[j].placeholder) != AL_OK)
            goto nomem;
        s->secs[j].ph_len = strlen(s->secs[j].placeholder);
    }
    sec_cross_check(s, tv, doc->path, errs);
    if (errs->count != before)
        goto out;
    /* vault */
    {
        size_t total = 0, off = 0;
        int    locked = 0;

        for (int j = 0; j < s->n; j++)
            total += tv[j].len + 1;
        s->vault = sec_vault_alloc(total, &s->vault_len, &locked);
        if (s->vault == NULL)
            goto nomem;
        if (!locked && !(flags & SEC_LOAD_NO_VALUES))
            al_errs_warn(errs,
                         "%s: could not mlock secret values (raise RLIMIT_MEMLOCK); they are "
                         "still wiped and excluded from core dumps",
                         doc->path);
        for (int j = 0; j < s->n; j++) {
            if (tv[j].len > 0)
                memcpy(s->vault + off, tv[j].p, tv[j].len);
            s->vault[off + tv[j].len] = '\0';
            s->secs[j].value = s->vault + off;
            s->secs[j].value_len = tv[j].len;
            off += tv[j].len + 1;
        }
    }
    /* placeholder automaton */
    {
        struct sec_ac_in *ins = al_calloc((size_t)s->n + 1, sizeof(*ins));

        if (ins == NULL)
            goto nomem;
        for (int j = 0; j < s->n; j++) {
            ins[j].p = s->secs[j].placeholder;
            ins[j].len = (uint32_t)s->secs[j].ph_len;
            ins[j].secret = j;
            if (s->secs[j].ph_len > s->max_ph_len)
                s->max_ph_len = s->secs[j].ph_len;
        }
        s->ph_ac = sec_ac_build(ins, s->n);
        al_free(ins);
        if (s->ph_ac == NULL)
            goto nomem;
    }
    ret = s;
    s = NULL;
    goto out;
nomem:
    al_errs_add(errs, "%s: out of memory", doc->path);
out:
    OPENSSL_cleanse(key, sizeof(key));
    if (tv != NULL) {
        for (int j = 0; j < nsec; j++) {
            if (tv[j].owned != NULL)
                sec_wipe_free(tv[j].owned, tv[j].owned_cap);
        }
        al_free(tv);
    }
    sec_store_unref(s);
    return ret;
}

static struct sec_store *
sec_load_text_flags(const char *name, const char *text, size_t len, const char *key_dir,
                    unsigned flags, struct al_errs *errs)
{
    struct al_json   *doc;
    struct sec_store *s = NULL;

    doc = al_json_parse(name, text, len, errs);
    if (doc != NULL)
        s = sec_load_doc(doc, key_dir, flags, errs);
    sec_doc_free(doc);
    return s;
}

struct sec_store *
sec_load_text(const char *name, const char *text, size_t len, const char *key_dir,
              struct al_errs *errs)
{
    return sec_load_text_flags(name, text, len, key_dir, 0, errs);
}

struct sec_store *
sec_load(const char *path, const char *key_dir, struct al_errs *errs)
{
    return sec_load_flags(path, key_dir, 0, errs);
}

struct sec_store *
sec_load_flags(const char *path, const char *key_dir, unsigned flags, struct al_errs *errs)
{
    struct sec_store *s = NULL;
    char             *buf;
    size_t            len = 0, cap = 0;
    const char       *err = NULL;

    buf = sec_read_file(path, SEC_MAX_FILE_BYTES, &len, &cap, &err);
    if (buf == NULL) {
        al_errs_add(errs, "%s: cannot read: %s", path, err);
        return NULL;
    }
    s = sec_load_text_flags(path, buf, len, key_dir, flags, errs);
    sec_wipe_free(buf, cap);
    return s;
}

/* ---- accessors -------------------------------------------------------------- */

int
sec_count(const struct sec_store *s)
{
    return s != NULL ? s->n : 0;
}

const char *
sec_name(const struct sec_store *s, int i)
{
    return s->secs[i].name;
}

const char *
sec_env_name(const struct sec_store *s, int i)
{
    return s->secs[i].env_name;
}

const char *
sec_placeholder(const struct sec_store *s, int i)
{
    return s->secs[i].placeholder;
}

int
sec_find(const struct sec_store *s, const char *name)
{
    for (int i = 0; s != NULL && i < s->n; i++) {
        if (strcmp(s->secs[i].name, name) == 0)
            return i;
    }
    return -1;
}

int
sec_print_env(const struct sec_store *s, FILE *out)
{
    int order[SEC_MAX_SECRETS];
    int n = sec_count(s);

    for (int i = 0; i < n; i++)
        order[i] = i;
    for (int i = 1; i < n; i++) { /* insertion sort: n <= 64 */
        int k = order[i], j = i;

        while (j > 0 && strcmp(s->secs[order[j - 1]].env_name, s->secs[k].env_name) > 0) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = k;
    }
    for (int i = 0; i < n; i++) {
        if (fprintf(out, "%s=%s\n", s->secs[order[i]].env_name, s->secs[order[i]].placeholder) < 0)
            return AL_ERROR;
    }
    return fflush(out) == 0 ? AL_OK : AL_ERROR;
}
