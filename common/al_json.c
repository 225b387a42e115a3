/*
 * al_json.c - JSON documents with error locations.
 *
 * cJSON does not record where a value came from, so al_json_locate()
 * re-walks the original text along a path ("rules[3].hosts[0]") with a tiny
 * skipping scanner and turns the byte offset into line:col. It only runs on
 * the error path, so its cost does not matter.
 */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define AL_JSON_MAX_FILE_BYTES (16u << 20)

static void
al_json_offset_to_linecol(const char *text, size_t off, unsigned *line, unsigned *col)
{
    unsigned l = 1, c = 1;

    for (size_t i = 0; i < off && text[i] != '\0'; i++) {
        if (text[i] == '\n') {
            l++;
            c = 1;
        } else {
            c++;
        }
    }
    *line = l;
    *col = c;
}

struct al_json *
al_json_parse(const char *name, const char *text, size_t len, struct al_errs *errs)
{
    struct al_json *doc = al_calloc(1, sizeof(*doc));
    const char     *end = NULL;

    if (doc == NULL)
        goto nomem;
    doc->path = al_strdup(name);
    doc->text = al_strndup(text, len);
    if (doc->path == NULL || doc->text == NULL)
        goto nomem;
    doc->len = len;
    if (strlen(doc->text) != len) {
        al_errs_add(errs, "%s: contains a NUL byte", name);
        goto fail;
    }
    doc->root = cJSON_ParseWithLengthOpts(doc->text, len + 1, &end, 1); /* + the NUL */
    if (doc->root == NULL) {
        unsigned line, col;
        size_t   off = end != NULL && end >= doc->text ? (size_t)(end - doc->text) : 0;

        if (off == 0) {
            const char *ep = cJSON_GetErrorPtr();

            if (ep != NULL && ep >= doc->text && ep <= doc->text + len)
                off = (size_t)(ep - doc->text);
        }
        al_json_offset_to_linecol(doc->text, off, &line, &col);
        al_errs_add(errs, "%s:%u:%u: invalid JSON", name, line, col);
        goto fail;
    }
    return doc;
nomem:
    al_errs_add(errs, "%s: out of memory", name);
fail:
    al_json_free(doc);
    return NULL;
}

struct al_json *
al_json_load(const char *path, struct al_errs *errs)
{
    struct al_json *doc = NULL;
    struct stat     st;
    char           *buf = NULL;
    size_t          got = 0;
    int             fd;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        al_errs_add(errs, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        al_errs_add(errs, "%s: not a regular file", path);
        goto out;
    }
    if ((size_t)st.st_size > AL_JSON_MAX_FILE_BYTES) {
        al_errs_add(errs, "%s: larger than %u bytes", path, AL_JSON_MAX_FILE_BYTES);
        goto out;
    }
    buf = al_malloc((size_t)st.st_size + 1);
    if (buf == NULL) {
        al_errs_add(errs, "%s: out of memory", path);
        goto out;
    }
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            al_errs_add(errs, "%s: read failed", path);
            goto out;
        }
        got += (size_t)n;
    }
    buf[got] = '\0';
    doc = al_json_parse(path, buf, got, errs);
out:
    al_free(buf);
    close(fd);
    return doc;
}

void
al_json_free(struct al_json *doc)
{
    if (doc == NULL)
        return;
    cJSON_Delete(doc->root);
    al_free(doc->path);
    al_free(doc->text);
    al_free(doc);
}

/* ---- the skipping scanner ---------------------------------------------- */

static size_t
js_ws(const char *t, size_t i, size_t n)
{
    while (i < n && (t[i] == ' ' || t[i] == '\t' || t[i] == '\n' || t[i] == '\r'))
        i++;
    return i;
}

/* i at '"'; returns index after the closing quote. */
static size_t
js_string_end(const char *t, size_t i, size_t n)
{
    i++;
    while (i < n && t[i] != '"') {
        if (t[i] == '\\' && i + 1 < n)
            i++;
        i++;
    }
    return i < n ? i + 1 : n;
}

static size_t
js_skip_value(const char *t, size_t i, size_t n)
{
    int depth = 0;

    i = js_ws(t, i, n);
    if (i >= n)
        return n;
    if (t[i] == '"')
        return js_string_end(t, i, n);
    if (t[i] != '{' && t[i] != '[') {
        while (i < n && t[i] != ',' && t[i] != '}' && t[i] != ']' && t[i] != ' ' && t[i] != '\n' &&
               t[i] != '\r' && t[i] != '\t')
            i++;
        return i;
    }
    while (i < n) {
        if (t[i] == '"') {
            i = js_string_end(t, i, n);
            continue;
        }
        if (t[i] == '{' || t[i] == '[')
            depth++;
        else if (t[i] == '}' || t[i] == ']') {
            depth--;
            if (depth == 0)
                return i + 1;
        }
        i++;
    }
    return n;
}

/* Finds the offset of the value at jpath; returns the deepest offset found. */
static size_t
js_locate(const char *t, size_t n, const char *jpath, int want_key)
{
    size_t      i = js_ws(t, 0, n);
    const char *p = jpath;

    while (*p != '\0') {
        char   key[256];
        size_t klen = 0;
        long   idx = -1;

        if (*p == '.')
            p++;
        if (*p == '[') {
            idx = strtol(p + 1, NULL, 10);
            p = strchr(p, ']');
            if (p == NULL)
                return i;
            p++;
        } else {
            while (*p != '\0' && *p != '.' && *p != '[' && klen < sizeof(key) - 1)
                key[klen++] = *p++;
            key[klen] = '\0';
        }
        i = js_ws(t, i, n);
        if (idx >= 0) {
            size_t j;

            if (i >= n || t[i] != '[')
                return i;
            j = js_ws(t, i + 1, n);
            for (long k = 0; k < idx; k++) {
                j = js_skip_value(t, j, n);
                j = js_ws(t, j, n);
                if (j >= n || t[j] != ',')
                    return i;
                j = js_ws(t, j + 1, n);
            }
            i = j;
        } else {
            size_t j;
            int    found = 0;

            if (i >= n || t[i] != '{')
                return i;
            j = js_ws(t, i + 1, n);
            while (j < n && t[j] == '"') {
                size_t kend = js_string_end(t, j, n);
                int    match = kend - j - 2 == klen && strncmp(t + j + 1, key, klen) == 0;

                if (match && *p == '\0' && want_key)
                    return j; /* the key itself: best for "unknown key" */
                j = js_ws(t, kend, n);
                if (j < n && t[j] == ':')
                    j = js_ws(t, j + 1, n);
                if (match) {
                    i = j;
                    found = 1;
                    break;
                }
                j = js_skip_value(t, j, n);
                j = js_ws(t, j, n);
                if (j < n && t[j] == ',')
                    j = js_ws(t, j + 1, n);
            }
            if (!found)
                return i;
        }
    }
    return i;
}

void
al_json_locate(const struct al_json *doc, const char *jpath, unsigned *line, unsigned *col)
{
    size_t off = js_locate(doc->text, doc->len, jpath, 0);

    al_json_offset_to_linecol(doc->text, off, line, col);
}

static void
al_json_locate_key(const struct al_json *doc, const char *jpath, unsigned *line, unsigned *col)
{
    size_t off = js_locate(doc->text, doc->len, jpath, 1);

    al_json_offset_to_linecol(doc->text, off, line, col);
}

static void
al_json_vreport(struct al_errs *errs, const struct al_json *doc, const char *jpath, int warn,
                int at_key, const char *fmt, va_list ap)
{
    char     msg[768];
    unsigned line, col;

    vsnprintf(msg, sizeof(msg), fmt, ap);
    if (at_key)
        al_json_locate_key(doc, jpath, &line, &col);
    else
        al_json_locate(doc, jpath, &line, &col);
    if (warn)
        al_errs_warn(errs, "%s:%u:%u: %s: %s", doc->path, line, col, jpath[0] ? jpath : "(top)",
                     msg);
    else
        al_errs_add(errs, "%s:%u:%u: %s: %s", doc->path, line, col, jpath[0] ? jpath : "(top)",
                    msg);
}

void
al_json_err(struct al_errs *errs, const struct al_json *doc, const char *jpath, const char *fmt,
            ...)
{
    va_list ap;

    va_start(ap, fmt);
    al_json_vreport(errs, doc, jpath, 0, 0, fmt, ap);
    va_end(ap);
}

void
al_json_warn(struct al_errs *errs, const struct al_json *doc, const char *jpath, const char *fmt,
             ...)
{
    va_list ap;

    va_start(ap, fmt);
    al_json_vreport(errs, doc, jpath, 1, 0, fmt, ap);
    va_end(ap);
}

static void AL_PRINTF(4, 5) al_json_key_err(struct al_errs *errs, const struct al_json *doc,
                                            const char *jpath, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    al_json_vreport(errs, doc, jpath, 0, 1, fmt, ap);
    va_end(ap);
}

void
al_json_check_keys(struct al_errs *errs, const struct al_json *doc, const cJSON *obj,
                   const char *jpath, const char *const *known)
{
    const cJSON *it;

    cJSON_ArrayForEach (it, obj) {
        int  ok = 0;
        char sub[512];

        for (size_t k = 0; known[k] != NULL; k++) {
            if (it->string != NULL && strcmp(it->string, known[k]) == 0) {
                ok = 1;
                break;
            }
        }
        if (ok)
            continue;
        snprintf(sub, sizeof(sub), "%s%s%s", jpath, jpath[0] ? "." : "",
                 it->string ? it->string : "?");
        al_json_key_err(errs, doc, sub, "unknown key \"%s\"", it->string ? it->string : "?");
    }
}
