/*
 * pol_path.c - request path normalisation and path globs.
 *
 * Normalisation (pol_path_normalize) is deliberately small: cut the query,
 * decode only %2e (so "%2e%2e" cannot hide a "..") and resolve dot segments;
 * every other escape stays as sent, "//" stays. Encoded slashes (%2F, %5C)
 * are flagged for the caller: a rule must opt in (allow_encoded_slash) before
 * one is let through, and then matches it as ordinary bytes of one segment.
 * The output is never longer than the input, so the work happens in a buffer
 * the caller provides; nothing here allocates.
 *
 * Globs: '*' matches any bytes within one segment, a "**" segment matches
 * zero or more whole segments (the pattern "/repos" + "/" + "**" matches "/repos", "/repos/",
 * "/repos/a/b"). Matching is the two-level greedy algorithm with one
 * backtrack point per level, O(len(path) * len(pattern)), no recursion.
 */
#include "pol_int.h"

#include <string.h>

static int
pol_path_hex(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Resolves "." and ".." segments of s[0..n) (starts with '/') in place. */
static size_t
pol_path_dots(char *s, size_t n)
{
    size_t r = 0, w = 0;

    while (r < n) {
        size_t st = r + 1, e = st, sl;

        while (e < n && s[e] != '/')
            e++;
        sl = e - st;
        if (sl == 1 && s[st] == '.') {
            if (e == n)
                s[w++] = '/';
        } else if (sl == 2 && s[st] == '.' && s[st + 1] == '.') {
            while (w > 0 && s[w - 1] != '/')
                w--;
            if (w > 0)
                w--; /* drop the '/' that led into the popped segment */
            if (e == n)
                s[w++] = '/';
        } else {
            s[w++] = '/';
            memmove(s + w, s + st, sl);
            w += sl;
        }
        r = e;
    }
    if (w == 0)
        s[w++] = '/';
    return w;
}

int
pol_path_normalize(const char *in, size_t len, char *out, size_t outsz, size_t *outlen,
                   int *encoded_slash)
{
    size_t end = 0, w = 0;
    int    enc = 0;

    while (end < len && in[end] != '?')
        end++;
    if (end == 0 || in[0] != '/' || outsz < end + 1)
        return AL_ERROR;
    for (size_t i = 0; i < end; i++) {
        unsigned char c = (unsigned char)in[i];

        if (c < 0x21 || c == 0x7f || c == '\\' || c == '#')
            return AL_ERROR;
        if (c == '%') {
            int hi, lo, v;

            if (i + 2 >= end)
                return AL_ERROR;
            hi = pol_path_hex(in[i + 1]);
            lo = pol_path_hex(in[i + 2]);
            if (hi < 0 || lo < 0)
                return AL_ERROR;
            v = hi * 16 + lo;
            if (v == 0)
                return AL_ERROR;
            if (v == '.') {
                out[w++] = '.';
                i += 2;
                continue;
            }
            if (v == '/' || v == '\\')
                enc = 1;
            memcpy(out + w, in + i, 3);
            w += 3;
            i += 2;
            continue;
        }
        out[w++] = (char)c;
    }
    w = pol_path_dots(out, w);
    out[w] = '\0';
    *outlen = w;
    *encoded_slash = enc;
    return AL_OK;
}

/* ---- patterns ---------------------------------------------------------------- */

int
pol_pathpat_parse(const char *in, struct pol_pathpat *out, const char **why)
{
    size_t len = strlen(in), n = 0;
    int    rc = AL_ERROR;

    memset(out, 0, sizeof(*out));
    if (len == 0 || in[0] != '/') {
        *why = "path pattern must start with '/'";
        goto fail;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];

        if (c < 0x21 || c == 0x7f || c == '\\' || c == '#' || c == '?') {
            *why = "path pattern holds a space, control byte, '\\', '#' or '?' (queries are "
                   "not matched)";
            goto fail;
        }
        if (c == '%') {
            int v;

            if (i + 2 >= len || pol_path_hex(in[i + 1]) < 0 || pol_path_hex(in[i + 2]) < 0) {
                *why = "bad percent-escape in path pattern";
                goto fail;
            }
            v = pol_path_hex(in[i + 1]) * 16 + pol_path_hex(in[i + 2]);
            if (v == 0 || v == '.' || v == '/' || v == '\\') {
                *why = "path pattern may not escape '.', '/', '\\' or NUL (write them plainly)";
                goto fail;
            }
        }
        if (c == '/')
            n++;
    }
    out->text = al_strdup(in);
    out->segs = al_calloc(n, sizeof(*out->segs));
    if (out->text == NULL || out->segs == NULL) {
        *why = "out of memory";
        goto fail;
    }
    for (size_t i = 0; i < len;) {
        size_t              st = i + 1, e = st;
        struct pol_pathseg *sg = &out->segs[out->nsegs];

        while (e < len && out->text[e] != '/')
            e++;
        sg->s = out->text + st;
        sg->len = e - st;
        if ((sg->len == 1 && sg->s[0] == '.') ||
            (sg->len == 2 && sg->s[0] == '.' && sg->s[1] == '.')) {
            *why = "path pattern holds a '.' or '..' segment";
            goto fail;
        }
        if (sg->len == 2 && sg->s[0] == '*' && sg->s[1] == '*') {
            sg->globstar = 1;
        } else if (memmem(sg->s, sg->len, "**", 2) != NULL) {
            *why = "'**' must be a whole segment (\"/a/**\"); use '*' within a segment";
            goto fail;
        }
        out->nsegs++;
        i = e;
    }
    rc = AL_OK;
    return rc;
fail:
    pol_pathpat_free(out);
    return rc;
}

void
pol_pathpat_free(struct pol_pathpat *pp)
{
    if (pp == NULL)
        return;
    al_safefree(pp->text);
    al_safefree(pp->segs);
    pp->nsegs = 0;
}

static int
pol_seg_match(const char *p, size_t plen, const char *s, size_t slen)
{
    size_t pi = 0, si = 0, star = (size_t)-1, mark = 0;

    while (si < slen) {
        if (pi < plen && p[pi] == '*') {
            star = pi++;
            mark = si;
        } else if (pi < plen && p[pi] == s[si]) {
            pi++;
            si++;
        } else if (star != (size_t)-1) {
            pi = star + 1;
            si = ++mark;
        } else {
            return 0;
        }
    }
    while (pi < plen && p[pi] == '*')
        pi++;
    return pi == plen;
}

/* Segment at offset off (just after a '/'): its length and the next offset. */
static size_t
pol_seg_next(const char *path, size_t len, size_t off, size_t *slen)
{
    size_t e = off;

    while (e < len && path[e] != '/')
        e++;
    *slen = e - off;
    return e + 1; /* == len + 1 after the last segment */
}

int
pol_pathpat_match(const struct pol_pathpat *pp, const char *path, size_t len)
{
    size_t off = 1, star_off = 0, slen, nxt;
    int    pi = 0, star_pi = -1;

    if (len == 0 || path[0] != '/')
        return 0;
    while (off <= len) {
        nxt = pol_seg_next(path, len, off, &slen);
        if (pi < pp->nsegs && pp->segs[pi].globstar) {
            star_pi = pi++;
            star_off = off;
            continue;
        }
        if (pi < pp->nsegs && pol_seg_match(pp->segs[pi].s, pp->segs[pi].len, path + off, slen)) {
            pi++;
            off = nxt;
            continue;
        }
        if (star_pi >= 0) {
            pi = star_pi + 1;
            star_off = pol_seg_next(path, len, star_off, &slen);
            off = star_off;
            continue;
        }
        return 0;
    }
    while (pi < pp->nsegs && pp->segs[pi].globstar)
        pi++;
    return pi == pp->nsegs;
}

int
pol_pathpat_covers(const struct pol_pathpat *a, const struct pol_pathpat *b)
{
    int k = a->nsegs;

    if (strcmp(a->text, b->text) == 0)
        return 1;
    if (k == 0 || !a->segs[k - 1].globstar || b->nsegs < k - 1)
        return 0;
    for (int i = 0; i < k - 1; i++) {
        if (a->segs[i].globstar || memchr(a->segs[i].s, '*', a->segs[i].len) != NULL)
            return 0;
        if (a->segs[i].len != b->segs[i].len ||
            memcmp(a->segs[i].s, b->segs[i].s, a->segs[i].len) != 0)
            return 0;
    }
    return 1;
}
