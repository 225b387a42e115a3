/*
 * sec_ac.c - the automata for injection and redaction.
 *
 * Automaton: Aho-Corasick compiled to a dense DFA over byte classes (bytes
 * that occur in no pattern share class 0), transitions premultiplied by the
 * class count and flagged when the target state has an output, so the inner
 * loop is one load per byte. While the DFA is at its root, a Wu-Manber
 * 2-byte-block shift table skips ahead over text where no pattern can
 * start; on random data most bytes are never looked at by the DFA. The
 * worst case stays linear (a failed skip costs one lookup before a DFA step).
 * The walks over it are in sec_stream.c.
 *
 * Redactor automata contain the secret values' encoded forms, so they live
 * in vault memory; they are built once per (store, mask) and cached in the
 * store (bounded; past the bound a stream owns a private one).
 */
#include "sec_int.h"

#include <openssl/crypto.h>
#include <string.h>

#define SEC_AC_NONE 0xffffffffu

/* ---- building ------------------------------------------------------------ */

struct sec_ac *
sec_ac_build(const struct sec_ac_in *in, int n)
{
    struct sec_ac *ac = NULL, *ret = NULL;
    uint32_t      *tbl, *depth, *fail = NULL, *queue = NULL, *olink = NULL, *nsl = NULL;
    int32_t       *out;
    uint8_t       *shift = NULL;
    size_t         maxst = 1, off, sz_tbl, sz_st, sz_shift = 0, sz_pats, sz_olink = 0;
    uint32_t       ncls = 1, nst = 1, minl = UINT32_MAX, maxl = 0, ce = 0, cb = 0, rawl = 0;
    int            locked, eol = 0;
    char          *base;
    uint8_t        used[256];

    ac = al_calloc(1, sizeof(*ac));
    if (ac == NULL)
        goto out;
    memset(used, 0, sizeof(used));
    for (int k = 0; k < n; k++) {
        maxst += in[k].len;
        if (in[k].len < minl)
            minl = in[k].len;
        if (in[k].len > maxl)
            maxl = in[k].len;
        for (uint32_t j = 0; j < in[k].len; j++)
            used[(uint8_t)in[k].p[j]] = 1;
        eol |= in[k].wrap;
    }
    if (n == 0)
        minl = maxl = 1;
    /* line breaks are skipped only if no pattern holds one (values cannot) */
    if (used['\r'] || used['\n'])
        eol = 0;
    for (int b = 0; b < 256; b++)
        ac->cls[b] = used[b] ? (uint8_t)ncls++ : 0;
    if (eol) {
        ce = ncls++;
        ac->cls['\r'] = ac->cls['\n'] = (uint8_t)ce;
        /* a backslash has a class of its own: its transitions carry SEC_AC_ESC */
        if (!used['\\'])
            ac->cls['\\'] = (uint8_t)ncls++;
        cb = ac->cls['\\'];
    }
    if (maxst * ncls >= (size_t)SEC_AC_ESC)
        goto out;
    sz_tbl = maxst * ncls * sizeof(uint32_t);
    sz_st = maxst * sizeof(uint32_t);
    sz_pats = (size_t)(n > 0 ? n : 1) * sizeof(struct sec_pat);
    if (eol)
        sz_olink = sz_st;
    if (minl >= 3)
        sz_shift = 65536;
    ac->map =
        sec_vault_alloc(sz_tbl + 2 * sz_st + sz_olink + sz_pats + sz_shift, &ac->map_len, &locked);
    if (ac->map == NULL)
        goto out;
    if (!locked)
        al_log_warnx("secrets: could not mlock %zu bytes for a redaction automaton "
                     "(raise RLIMIT_MEMLOCK); it is still wiped and excluded from core dumps",
                     ac->map_len);
    base = ac->map;
    tbl = (uint32_t *)(void *)base;
    off = sz_tbl;
    depth = (uint32_t *)(void *)(base + off);
    off += sz_st;
    out = (int32_t *)(void *)(base + off);
    off += sz_st;
    ac->pats = (struct sec_pat *)(void *)(base + off);
    off += sz_pats;
    if (sz_olink) {
        olink = (uint32_t *)(void *)(base + off);
        off += sz_olink;
        olink[0] = 0;
    }
    if (sz_shift)
        shift = (uint8_t *)(base + off);
    fail = al_calloc(maxst, sizeof(*fail));
    queue = al_calloc(maxst, sizeof(*queue));
    if (eol)
        nsl = al_calloc(maxst, sizeof(*nsl)); /* '/' on the way to a state */
    if (fail == NULL || queue == NULL || (eol && nsl == NULL))
        goto out;
    memset(tbl, 0xff, ncls * sizeof(uint32_t));
    out[0] = -1;
    depth[0] = 0;
    /* trie */
    for (int k = 0; k < n; k++) {
        uint32_t s = 0;

        ac->pats[k].secret = in[k].secret;
        ac->pats[k].len = in[k].len;
        ac->pats[k].wrap = eol && in[k].wrap;
        ac->pats[k].c0 = in[k].len > 0 ? (uint8_t)in[k].p[0] : 0;
        for (uint32_t j = 0; j < in[k].len; j++) {
            uint32_t c = ac->cls[(uint8_t)in[k].p[j]];

            if (tbl[s * ncls + c] == SEC_AC_NONE) {
                memset(tbl + (size_t)nst * ncls, 0xff, ncls * sizeof(uint32_t));
                out[nst] = -1;
                depth[nst] = depth[s] + 1;
                if (nsl != NULL)
                    nsl[nst] = nsl[s] + (in[k].p[j] == '/');
                tbl[s * ncls + c] = nst++;
            }
            s = tbl[s * ncls + c];
        }
        if (nsl != NULL && SEC_WRAP_RAW(in[k].len) + nsl[s] > rawl)
            rawl = SEC_WRAP_RAW(in[k].len) + nsl[s];
        if (out[s] < 0)
            out[s] = k;
        else if (ac->pats[k].wrap) /* the same text: it may be wrapped */
            ac->pats[out[s]].wrap = 1;
    }
    ac->npats = n;
    /* breadth-first: failure links, outputs, full transitions */
    {
        size_t qh = 0, qt = 0;

        for (uint32_t c = 0; c < ncls; c++) {
            uint32_t v = tbl[c];

            if (v == SEC_AC_NONE) {
                tbl[c] = 0;
            } else {
                fail[v] = 0;
                queue[qt++] = v;
            }
        }
        while (qh < qt) {
            uint32_t u = queue[qh++];

            if (olink != NULL) /* past u's own pattern, the shorter ones */
                olink[u] = out[u] >= 0 ? fail[u] : olink[fail[u]];
            if (out[u] < 0)
                out[u] = out[fail[u]];
            for (uint32_t c = 0; c < ncls; c++) {
                uint32_t v = tbl[(size_t)u * ncls + c];

                if (v == SEC_AC_NONE) {
                    tbl[(size_t)u * ncls + c] = tbl[(size_t)fail[u] * ncls + c];
                } else {
                    fail[v] = tbl[(size_t)fail[u] * ncls + c];
                    queue[qt++] = v;
                }
            }
        }
    }
    /* premultiply and flag */
    for (size_t i = 0; i < (size_t)nst * ncls; i++) {
        uint32_t v = tbl[i];

        tbl[i] = v * ncls | (out[v] >= 0 ? SEC_AC_FLAG : 0);
    }
    if (eol) {
        /* a line break leaves the state as it is (the match goes on, and
         * was reported when its last character came); a backslash may
         * begin a JSON escape */
        for (uint32_t st = 0; st < nst; st++) {
            tbl[(size_t)st * ncls + ce] = st * ncls;
            tbl[(size_t)st * ncls + cb] |= SEC_AC_ESC;
        }
        /* a match in progress of depth d started at most this far back
         * (line breaks or escapes, escaped slashes, the bytes before it) */
        for (uint32_t st = 1; st < nst; st++)
            depth[st] = SEC_WRAP_RAW(depth[st]) + nsl[st] + SEC_WRAP_SLACK;
        maxl = rawl + SEC_WRAP_SLACK + 1;
    }
    if (shift != NULL) {
        uint32_t m = minl;

        memset(shift, (int)(m - 1 > 255 ? 255 : m - 1), 65536);
        for (int k = 0; k < n; k++) {
            uint32_t sl = in[k].p[0] == '/'; /* '/' in p[0, q) */

            for (uint32_t q = 1; q < m; sl += in[k].p[q] == '/', q++) {
                unsigned blk = (uint8_t)in[k].p[q - 1] | (unsigned)(uint8_t)in[k].p[q] << 8;
                uint32_t sh = m - 1 - q;

                /* wrapped, the pair sits up to 4 bytes further per line
                 * break before it (breaks start at 1, then every >= 60)
                 * and 1 more per escaped '/' before it */
                if (eol && in[k].wrap) {
                    uint32_t more = 4 * ((q - 1 + SEC_WRAP_MIN - 1) / SEC_WRAP_MIN) + sl;
                    unsigned nblk = 'n' | (blk >> 8) << 8;
                    uint32_t nsh;

                    sh = sh > more ? sh - more : 0;
                    /* 'n' then p[q]: right after an escaped line break */
                    more = 4 * ((q + SEC_WRAP_MIN - 1) / SEC_WRAP_MIN) + sl;
                    nsh = m - 1 - q > more ? m - 1 - q - more : 0;
                    if (nsh < shift[nblk])
                        shift[nblk] = (uint8_t)nsh;
                }
                if (sh < shift[blk])
                    shift[blk] = (uint8_t)sh;
            }
        }
        /* a line break or an escape may sit anywhere inside a wrapped match */
        if (eol) {
            for (unsigned b = 0; b < 256; b++) {
                shift[b | '\r' << 8] = shift[b | '\n' << 8] = shift[b | '\\' << 8] = 0;
                shift['\r' | b << 8] = shift['\n' | b << 8] = shift['\\' | b << 8] = 0;
            }
        }
    }
    ac->tbl = tbl;
    ac->depth = depth;
    ac->out = out;
    ac->olink = olink;
    ac->eol = eol;
    ac->shift = shift;
    ac->ncls = ncls;
    ac->nstates = nst;
    ac->min_len = minl;
    ac->max_len = maxl;
    ret = ac;
    ac = NULL;
out:
    if (fail != NULL)
        sec_wipe_free(fail, maxst * sizeof(*fail));
    al_free(nsl);
    al_free(queue);
    sec_ac_free(ac);
    return ret;
}

void
sec_ac_free(struct sec_ac *ac)
{
    if (ac == NULL)
        return;
    sec_vault_free(ac->map, ac->map_len);
    al_free(ac);
}

/* ---- encoded forms ----------------------------------------------------- */

static const char sec_b64_std[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char sec_b64_url[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* Base64 of (k zero bytes + v); mode 0: with padding, 1: without, 2: only
 * the characters determined by v's bytes alone (v inside a longer text). */
static int
sec_form_b64(struct al_dbuf *b, const unsigned char *v, size_t n, const char *alpha, size_t k,
             int mode)
{
    size_t   total = n + k, nbits = total * 8, first, last, i;
    uint32_t acc = 0;
    int      accb = 0, rc = AL_OK;
    size_t   outc = 0;

    /* characters j in [first, last) are fully inside v's bits [8k, 8k+8n) */
    first = (8 * k + 5) / 6;
    last = (8 * k + 8 * n) / 6;
    if (mode != 2) {
        first = 0;
        last = (nbits + 5) / 6;
    }
    for (i = 0; i < total || accb > 0;) {
        if (accb < 6 && i < total) {
            acc = (acc << 8) | (i < k ? 0 : v[i - k]);
            accb += 8;
            i++;
            continue;
        }
        {
            unsigned idx;

            if (accb >= 6) {
                idx = (acc >> (accb - 6)) & 63;
                accb -= 6;
            } else {
                idx = (acc << (6 - accb)) & 63;
                accb = 0;
            }
            if (outc >= first && outc < last && rc == AL_OK)
                rc = sec_dbuf_add(b, &alpha[idx], 1);
            outc++;
        }
    }
    if (mode == 0) {
        while (outc % 4 != 0 && rc == AL_OK) {
            rc = sec_dbuf_add(b, "=", 1);
            outc++;
        }
    }
    return rc;
}

int
sec_form_hex(struct al_dbuf *b, const unsigned char *v, size_t n, const char *digits,
             const char *prefix, int only_reserved)
{
    int rc = AL_OK;

    for (size_t i = 0; i < n && rc == AL_OK; i++) {
        char t[8];
        int  unres = (v[i] >= 'A' && v[i] <= 'Z') || (v[i] >= 'a' && v[i] <= 'z') ||
                    (v[i] >= '0' && v[i] <= '9') || v[i] == '-' || v[i] == '.' || v[i] == '_' ||
                    v[i] == '~';
        size_t pl = strlen(prefix);

        if (only_reserved && unres) {
            rc = sec_dbuf_add(b, &v[i], 1);
            continue;
        }
        memcpy(t, prefix, pl);
        t[pl] = digits[v[i] >> 4];
        t[pl + 1] = digits[v[i] & 15];
        rc = sec_dbuf_add(b, t, pl + 2);
        OPENSSL_cleanse(t, sizeof(t));
    }
    return rc;
}

#define SEC_JS_SLASH 1
#define SEC_JS_NONASCII 2
#define SEC_JS_ALL 4
#define SEC_JS_UPPER 8

static int
sec_js_u(struct al_dbuf *b, unsigned cp, const char *digits)
{
    char t[6] = {'\\',
                 'u',
                 digits[(cp >> 12) & 15],
                 digits[(cp >> 8) & 15],
                 digits[(cp >> 4) & 15],
                 digits[cp & 15]};
    int  rc = sec_dbuf_add(b, t, 6);

    OPENSSL_cleanse(t, sizeof(t));
    return rc;
}

/* JSON string escaping of v; AL_DECLINED when v is not valid UTF-8 and the
 * form needs code points. */
static int
sec_form_json(struct al_dbuf *b, const unsigned char *v, size_t n, int fl)
{
    const char *digits = (fl & SEC_JS_UPPER) ? SEC_HEX_UC : SEC_HEX_LC;
    int         rc = AL_OK;

    for (size_t i = 0; i < n && rc == AL_OK;) {
        unsigned c = v[i], cp;
        size_t   len;

        if (c < 0x80) {
            i++;
            if (fl & SEC_JS_ALL)
                rc = sec_js_u(b, c, digits);
            else if (c == '"')
                rc = sec_dbuf_add(b, "\\\"", 2);
            else if (c == '\\')
                rc = sec_dbuf_add(b, "\\\\", 2);
            else if (c == '/' && (fl & SEC_JS_SLASH))
                rc = sec_dbuf_add(b, "\\/", 2);
            else if (c < 0x20)
                rc = sec_js_u(b, c, digits);
            else
                rc = sec_dbuf_add(b, &v[i - 1], 1);
            continue;
        }
        if (!(fl & (SEC_JS_ALL | SEC_JS_NONASCII))) {
            rc = sec_dbuf_add(b, &v[i], 1);
            i++;
            continue;
        }
        if ((c & 0xe0) == 0xc0) {
            len = 2;
            cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3;
            cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4;
            cp = c & 0x07;
        } else {
            return AL_DECLINED;
        }
        if (i + len > n)
            return AL_DECLINED;
        for (size_t j = 1; j < len; j++) {
            if ((v[i + j] & 0xc0) != 0x80)
                return AL_DECLINED;
            cp = (cp << 6) | (v[i + j] & 0x3f);
        }
        i += len;
        if (cp >= 0x10000) {
            cp -= 0x10000;
            rc = sec_js_u(b, 0xd800 | (cp >> 10), digits);
            if (rc == AL_OK)
                rc = sec_js_u(b, 0xdc00 | (cp & 0x3ff), digits);
        } else {
            rc = sec_js_u(b, cp, digits);
        }
        cp = 0;
    }
    return rc;
}

/* v with its ASCII letters lower- (upper) cased. */
static int
sec_form_case(struct al_dbuf *b, const unsigned char *v, size_t n, int upper)
{
    int rc = AL_OK;

    for (size_t i = 0; i < n && rc == AL_OK; i++) {
        char c = (char)v[i];

        if (upper && c >= 'a' && c <= 'z')
            c = (char)(c - 'a' + 'A');
        else if (!upper && c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        rc = sec_dbuf_add(b, &c, 1);
    }
    return rc;
}

int
sec_b64_encode(struct al_dbuf *b, const void *v, size_t n)
{
    return sec_form_b64(b, v, n, sec_b64_std, 0, 0);
}

/*
 * Appends every encoded form of v (raw included) to buf and one entry per
 * form to *ins (offsets into buf are stored in .p as integers until the
 * caller rebases them: buf may move while growing). A form equal to one
 * already added for v is left out. The standard base64 forms are wrap
 * patterns (MIME line-wrapped too, see sec_int.h).
 */
int
sec_forms_add(const char *val, size_t n, int secret, struct al_dbuf *buf, struct sec_ac_in **ins,
              int *nins, int *cap)
{
    const unsigned char *v = (const unsigned char *)val;
    static const int     js[] = {0,
                                 SEC_JS_SLASH,
                                 SEC_JS_NONASCII,
                                 SEC_JS_NONASCII | SEC_JS_SLASH,
                                 SEC_JS_NONASCII | SEC_JS_UPPER,
                                 SEC_JS_NONASCII | SEC_JS_SLASH | SEC_JS_UPPER,
                                 SEC_JS_ALL,
                                 SEC_JS_ALL | SEC_JS_UPPER};
    int                  rc = AL_OK, first = *nins;

    for (int f = 0; rc == AL_OK; f++) {
        size_t before = buf->len;
        int    r, dup = 0, wrap = f >= 1 && f <= 5;

        if (f == 0)
            r = sec_dbuf_add(buf, v, n);
        else if (f <= 10) /* 1..5 std, 6..10 url: pad, nopad, inner k=0,1,2 */
            r = sec_form_b64(buf, v, n, f <= 5 ? sec_b64_std : sec_b64_url,
                             (size_t)((f - 1) % 5 >= 2 ? (f - 1) % 5 - 2 : 0),
                             (f - 1) % 5 >= 2 ? 2 : (f - 1) % 5);
        else if (f == 11)
            r = sec_form_hex(buf, v, n, SEC_HEX_LC, "", 0);
        else if (f == 12)
            r = sec_form_hex(buf, v, n, SEC_HEX_UC, "", 0);
        else if (f == 13)
            r = sec_form_hex(buf, v, n, SEC_HEX_UC, "%", 0);
        else if (f == 14)
            r = sec_form_hex(buf, v, n, SEC_HEX_LC, "%", 0);
        else if (f == 15)
            r = sec_form_hex(buf, v, n, SEC_HEX_UC, "%", 1);
        else if (f == 16)
            r = sec_form_hex(buf, v, n, SEC_HEX_LC, "%", 1);
        else if (f - 17 < (int)(sizeof(js) / sizeof(js[0])))
            r = sec_form_json(buf, v, n, js[f - 17]);
        else if (f - 25 < 2) /* case-folded: echoed lower- or upper-cased */
            r = sec_form_case(buf, v, n, f == 26);
        else
            break;
        if (r == AL_DECLINED) {
            buf->len = before;
            continue;
        }
        if (r != AL_OK) {
            rc = r;
            break;
        }
        if (buf->len == before)
            continue;
        for (int j = first; j < *nins && !dup; j++) {
            struct sec_ac_in *o = &(*ins)[j];

            if (o->len == buf->len - before &&
                memcmp(buf->data + (uintptr_t)o->p, buf->data + before, o->len) == 0) {
                o->wrap |= wrap;
                dup = 1;
            }
        }
        if (dup) {
            OPENSSL_cleanse(buf->data + before, buf->len - before);
            buf->len = before;
            continue;
        }
        if (*nins == *cap) {
            int               ncap = *cap ? *cap * 2 : 32;
            struct sec_ac_in *ni = al_realloc(*ins, (size_t)ncap * sizeof(*ni));

            if (ni == NULL) {
                rc = AL_ERROR;
                break;
            }
            *ins = ni;
            *cap = ncap;
        }
        (*ins)[*nins].p = (const char *)(uintptr_t)before;
        (*ins)[*nins].len = (uint32_t)(buf->len - before);
        (*ins)[*nins].secret = secret;
        (*ins)[*nins].wrap = wrap;
        (*nins)++;
    }
    return rc;
}

static struct sec_ac *
sec_redact_ac_build(const struct sec_store *s, uint64_t mask)
{
    struct al_dbuf    buf;
    struct sec_ac_in *ins = NULL;
    struct sec_ac    *ac = NULL;
    int               nins = 0, cap = 0;

    al_dbuf_init(&buf, (size_t)1 << 30);
    for (int i = 0; i < s->n; i++) {
        if (!(mask >> i & 1))
            continue;
        if (sec_forms_add(s->secs[i].value, s->secs[i].value_len, i, &buf, &ins, &nins, &cap) !=
            AL_OK)
            goto out;
    }
    for (int k = 0; k < nins; k++)
        ins[k].p = buf.data + (uintptr_t)ins[k].p;
    ac = sec_ac_build(ins, nins);
out:
    sec_dbuf_wipe(&buf);
    al_free(ins);
    return ac;
}

/* Returns the cached automaton for mask, or builds one: cached when there is
 * room (borrowed from the store), else returned in *own for the caller. */
const struct sec_ac *
sec_redact_ac(struct sec_store *s, uint64_t mask, struct sec_ac **own)
{
    const struct sec_ac *ret = NULL;
    struct sec_ac       *ac;

    *own = NULL;
    pthread_mutex_lock(&s->lock);
    for (int i = 0; i < s->ncache; i++) {
        if (s->cache[i].mask == mask) {
            ret = s->cache[i].ac;
            goto out;
        }
    }
    ac = sec_redact_ac_build(s, mask);
    if (ac == NULL)
        goto out;
    if (s->ncache < SEC_AC_CACHE_MAX) {
        s->cache[s->ncache].mask = mask;
        s->cache[s->ncache].ac = ac;
        s->ncache++;
    } else {
        *own = ac;
    }
    ret = ac;
out:
    pthread_mutex_unlock(&s->lock);
    return ret;
}
