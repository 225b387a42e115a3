/*
 * sec_stream.c - streams: the walks over an automaton (sec_ac.c) that
 * replace what they find.
 *
 * Every match [start, end) is merged with overlapping pending matches into
 * a cluster (union of their bytes); a cluster is written out (as the
 * replacement of its leftmost-longest match) once no future match can
 * overlap it, i.e. when the frontier F = pos - depth(state) has passed its
 * end. Bytes before F and outside clusters are final and written as they
 * are. The hold-back is therefore at most the longest pattern, and
 * overlapping / adjacent / repeated occurrences need no special cases.
 * Adjacent matches stay separate clusters (two placeholders).
 *
 * A stream made by sec_body_new / sec_redactor_new holds a reference on its
 * store (sec_load.c).
 */
#include "sec_int.h"

#include <openssl/crypto.h>
#include <string.h>

/* ---- streams --------------------------------------------------------------- */

int
sec_stream_init(struct sec_stream *st, const struct sec_store *s, const struct sec_ac *ac,
                enum sec_stream_mode mode, uint64_t repl_mask)
{
    memset(st, 0, sizeof(*st));
    st->store = (struct sec_store *)(uintptr_t)s;
    st->ac = ac;
    st->mode = mode;
    st->repl_mask = repl_mask;
    /* Both buffers come when first needed and go when the stream is
     * finished: a stream between messages (an idle websocket's, a header
     * value's that held nothing) costs its struct only. */
    st->hold_cap = ac->max_len + 1;
    st->clmax = (int)ac->max_len + 2;
    return AL_OK;
}

void
sec_stream_fini(struct sec_stream *st)
{
    if (st->hold != NULL)
        sec_wipe_free(st->hold, st->hold_cap);
    st->hold = NULL;
    al_safefree(st->cl);
}

static int
sec_stream_raw(struct sec_stream *st, const char *in, uint64_t base, uint64_t a, uint64_t b,
               struct al_dbuf *out)
{
    int rc = AL_OK;

    if (a >= b)
        return AL_OK;
    if (a < base) {
        uint64_t e = b < base ? b : base;

        rc = sec_dbuf_add(out, st->hold + (a - st->hold_pos), (size_t)(e - a));
        a = e;
    }
    if (rc == AL_OK && a < b)
        rc = sec_dbuf_add(out, in + (a - base), (size_t)(b - a));
    return rc;
}

static int
sec_stream_repl(struct sec_stream *st, int pat, struct al_dbuf *out)
{
    const struct sec_secret *sec = &st->store->secs[st->ac->pats[pat].secret];

    if (st->mode == SEC_MODE_REDACT)
        return sec_dbuf_add(out, sec->placeholder, sec->ph_len);
    if (st->mode == SEC_MODE_SUBST_PCT)
        return sec_form_hex(out, (const unsigned char *)sec->value, sec->value_len, SEC_HEX_UC, "%",
                            1);
    return sec_dbuf_add(out, sec->value, sec->value_len);
}

/* Writes out everything final before frontier f. */
static int
sec_stream_advance(struct sec_stream *st, const char *in, uint64_t base, uint64_t f,
                   struct al_dbuf *out)
{
    int      rc = AL_OK, done = 0;
    uint64_t lim;

    while (done < st->ncl && st->cl[done].end <= f && rc == AL_OK) {
        rc = sec_stream_raw(st, in, base, st->emitted, st->cl[done].start, out);
        if (rc == AL_OK)
            rc = sec_stream_repl(st, st->cl[done].pat, out);
        st->emitted = st->cl[done].end;
        done++;
    }
    if (done > 0) {
        memmove(st->cl, st->cl + done, (size_t)(st->ncl - done) * sizeof(*st->cl));
        st->ncl -= done;
    }
    lim = st->ncl > 0 && st->cl[0].start < f ? st->cl[0].start : f;
    if (rc == AL_OK && st->emitted < lim) {
        rc = sec_stream_raw(st, in, base, st->emitted, lim, out);
        st->emitted = lim;
    }
    return rc;
}

/* No match can start before pos - depth (depth may exceed pos with eol). */
static inline uint64_t
sec_frontier(uint64_t pos, uint32_t depth)
{
    return pos > depth ? pos - depth : 0;
}

/*
 * Raw bytes around a match: [lo, base) from hold (which starts at hold_pos),
 * [base, ...) from in. Bytes before lo are gone or already written out.
 */
struct sec_raw {
    const char *hold, *in;
    uint64_t    hold_pos, base, lo;
};

static inline unsigned char
sec_raw_at(const struct sec_raw *r, uint64_t x)
{
    return (unsigned char)(x >= r->base ? r->in[x - r->base] : r->hold[x - r->hold_pos]);
}

/*
 * eol automata: whether pattern pat, found in the text without its line
 * breaks, ends at raw offset end in a form that counts: without a line
 * break, or (a wrap pattern) MIME-wrapped as described in sec_int.h. Walks
 * back from end; *start = where it begins. Stops at the first line break
 * that cannot belong to a wrapped form, so a text full of wrong breaks costs
 * a line or two per candidate.
 */
static int
sec_ac_check_wrapped(const struct sec_ac *ac, int pat, const struct sec_raw *r, uint64_t end,
                     uint64_t *start)
{
    uint32_t L = ac->pats[pat].len, c = 0, cprev = 0, clast = 0, gap = 0, nb = 0;
    uint64_t x = end;
    int      kind = 0;

    while (c < L) {
        unsigned char b;

        if (x <= r->lo)
            return 0;
        b = sec_raw_at(r, x - 1);
        if (b != '\n' && b != '\r') {
            c++;
            x--;
            continue;
        }
        /* a line break with c pattern characters after it */
        if (!ac->pats[pat].wrap || b == '\r' || c == 0 || (nb > 0 && c == cprev))
            return 0; /* not wrappable, lone CR, two breaks in a row */
        {
            int k = x - 1 > r->lo && sec_raw_at(r, x - 2) == '\r' ? 2 : 1;

            if (kind != 0 && k != kind)
                return 0; /* LF and CRLF mixed */
            kind = k;
            x -= (uint64_t)k;
        }
        if (nb == 0) {
            /* the last line: after the last break no further one fits */
            if (c > SEC_WRAP_MAX)
                return 0;
            clast = c;
        } else if (nb == 1) {
            gap = c - cprev;
            if ((gap != 60 && gap != 64 && gap != 76) || clast > gap)
                return 0;
        } else if (c - cprev != gap) {
            return 0;
        }
        cprev = c;
        nb++;
    }
    *start = x;
    return 1;
}

/* The line rules of a wrapped form, walking back: a break with c pattern
 * characters after it, the nb-th found (0: the last one). */
struct sec_wrap_walk {
    uint32_t cprev, clast, gap, nb;
    int      kind;
};

static int
sec_wrap_break(struct sec_wrap_walk *w, uint32_t c, int kind)
{
    if (c == 0 || (w->nb > 0 && c == w->cprev))
        return 0; /* at the end, two breaks in a row */
    if (w->kind != 0 && kind != w->kind)
        return 0; /* kinds mixed */
    if (w->nb == 0) {
        /* the last line: after the last break no further one fits */
        if (c > SEC_WRAP_MAX)
            return 0;
        w->clast = c;
    } else if (w->nb == 1) {
        w->gap = c - w->cprev;
        if ((w->gap != 60 && w->gap != 64 && w->gap != 76) || w->clast > w->gap)
            return 0;
    } else if (c - w->cprev != w->gap) {
        return 0;
    }
    w->kind = kind;
    w->cprev = c;
    w->nb++;
    return 1;
}

/*
 * Like sec_ac_check_wrapped, for a match of the walk that drops JSON
 * escapes: a wrap pattern whose line breaks are all "\n" (kind 2) or all
 * "\r\n" (kind 4) escapes, any '/' possibly "\/"; no real line break and
 * no other backslash inside. Before the first character, an escape is a
 * break after it when the byte before is that first character (c0) and the
 * break fits; else the n or r is the first character itself, after a
 * literal backslash (the longer reading wins: both may be true).
 */
static int
sec_ac_check_esc(const struct sec_ac *ac, int pat, const struct sec_raw *r, uint64_t end,
                 uint64_t *start)
{
    uint32_t             L = ac->pats[pat].len, c = 0;
    uint64_t             x = end;
    struct sec_wrap_walk w = {0, 0, 0, 0, 0};

    if (!ac->pats[pat].wrap)
        return 0;
    while (c < L) {
        unsigned char b;
        int           k;

        if (x <= r->lo)
            return 0;
        b = sec_raw_at(r, x - 1);
        if (b == '\r' || b == '\n' || b == '\\')
            return 0;
        if (x - 1 <= r->lo || sec_raw_at(r, x - 2) != '\\' || (b != 'n' && b != 'r' && b != '/')) {
            c++;
            x--;
            continue;
        }
        if (b == '/') { /* "\/": the character, escaped */
            c++;
            x -= 2;
            continue;
        }
        if (b == 'r') { /* "\r" without "\n": only the first character after a backslash */
            if (c + 1 == L && b == ac->pats[pat].c0) {
                *start = x - 1;
                return 1;
            }
            return 0;
        }
        /* "\n", or "\r\n" (unless the r stands after an escaped backslash) */
        k = x - 3 > r->lo && sec_raw_at(r, x - 3) == 'r' && sec_raw_at(r, x - 4) == '\\' ? 4 : 2;
        if (c + 1 == L) {
            /* one character left: before this escape (a break after the
             * first character), or this n after a literal backslash */
            for (int kk = k; kk >= 2; kk -= 2) {
                struct sec_wrap_walk t = w;

                if (x - (uint64_t)kk > r->lo && sec_wrap_break(&t, c, kk) &&
                    sec_raw_at(r, x - (uint64_t)kk - 1) == ac->pats[pat].c0) {
                    *start = x - (uint64_t)kk - 1;
                    return 1;
                }
            }
            if (b != ac->pats[pat].c0)
                return 0;
            *start = x - 1;
            return 1;
        }
        if (!sec_wrap_break(&w, c, k))
            return 0; /* not as an encoder wraps */
        x -= (uint64_t)k;
    }
    *start = x;
    return 1;
}

/* The raw bytes of the stream (its hold and the piece being fed) since the
 * last byte already searched for a line break: remember the last one. */
static void
sec_stream_eol_scan(struct sec_stream *st, const struct sec_raw *r, uint64_t end)
{
    uint64_t from = st->eol_hi > r->lo ? st->eol_hi : r->lo;

    while (end > from) {
        uint64_t    seg = end > r->base && from < r->base ? r->base : from;
        const char *p = seg >= r->base ? r->in + (seg - r->base) : r->hold + (seg - r->hold_pos);
        size_t      len = (size_t)(end - seg);
        const char *a = memrchr(p, '\n', len), *b = memrchr(p, '\r', len);

        if (a == NULL || (b != NULL && b > a))
            a = b;
        if (a != NULL) {
            st->last_eol = seg + (uint64_t)(a - p) + 1;
            break;
        }
        end = seg;
    }
}

/* How far back from pos a match in progress may start: the main walk in
 * state s, the escape-dropping one, a backslash just read (eol automata). */
static inline uint32_t
sec_stream_depth(const struct sec_stream *st, uint32_t s)
{
    const struct sec_ac *ac = st->ac;
    uint32_t             d = ac->depth[s / ac->ncls];

    if (st->wst != 0 && ac->depth[st->wst / ac->ncls] > d)
        d = ac->depth[st->wst / ac->ncls];
    if (st->warm && ac->depth[st->wcand / ac->ncls] + 1 > d)
        d = ac->depth[st->wcand / ac->ncls] + 1;
    return d;
}

/* A match ending at end in state `state` of the main walk (esc = 0) or of
 * the one dropping JSON escapes (esc = 1); the main walk is in smain. */
static int
sec_stream_match(struct sec_stream *st, const char *in, uint64_t base, uint64_t end, uint32_t state,
                 int esc, uint32_t smain, struct al_dbuf *out)
{
    const struct sec_ac *ac = st->ac;
    uint32_t             sid = state / ac->ncls;
    int                  pat = ac->out[sid];
    int                  sec;
    uint64_t             start = end - ac->pats[pat].len;
    uint32_t             plen;

    if (ac->eol) {
        struct sec_raw r = {st->hold, in, st->hold_pos, base, st->emitted};
        uint32_t       t = sid;

        if (r.lo < st->hold_pos)
            r.lo = st->hold_pos;
        if (!esc && st->eol_hi < end) {
            sec_stream_eol_scan(st, &r, end);
            st->eol_hi = end;
        }
        /* the longest pattern ending here that counts */
        for (;;) {
            start = end - ac->pats[pat].len;
            if (esc) {
                if (sec_ac_check_esc(ac, pat, &r, end, &start))
                    break;
            } else if (start >= r.lo && st->last_eol <= start) {
                break; /* no line break inside: as it is */
            } else if (ac->pats[pat].wrap && sec_ac_check_wrapped(ac, pat, &r, end, &start)) {
                break;
            }
            t = ac->olink[t];
            pat = ac->out[t];
            if (t == 0 || pat < 0)
                return AL_OK;
        }
    }
    plen = (uint32_t)(end - start);
    sec = ac->pats[pat].secret;
    st->seen |= (uint64_t)1 << sec;
    if (!(st->repl_mask >> sec & 1))
        return AL_OK;
    st->replaced |= (uint64_t)1 << sec;
    while (st->ncl > 0 && st->cl[st->ncl - 1].end > start) {
        struct sec_cluster *c = &st->cl[st->ncl - 1];

        if (c->start <= start) {
            /* keep the earlier-starting (then longer) match's replacement */
            if (c->start == start && c->plen < plen) {
                c->pat = pat;
                c->plen = plen;
            }
            start = c->start;
            pat = c->pat;
            plen = c->plen;
        }
        if (c->end > end)
            end = c->end;
        st->ncl--;
    }
    if (st->ncl == st->clcap) { /* a few clusters at a time, up to clmax */
        int                 ncap = st->clcap == 0 ? 4 : st->clcap * 2;
        struct sec_cluster *ncl;

        if (st->clcap >= st->clmax)
            return AL_ERROR;
        if (ncap > st->clmax)
            ncap = st->clmax;
        ncl = al_realloc(st->cl, (size_t)ncap * sizeof(*st->cl));
        if (ncl == NULL)
            return AL_ERROR;
        st->cl = ncl;
        st->clcap = ncap;
    }
    st->cl[st->ncl].start = start;
    st->cl[st->ncl].end = end;
    st->cl[st->ncl].pat = pat;
    st->cl[st->ncl].plen = plen;
    st->ncl++;
    /* st->pos is the end of this match: the frontier is pos - depth */
    return sec_stream_advance(st, in, base, sec_frontier(st->pos, sec_stream_depth(st, smain)),
                              out);
}

/* From the root state: skips (bad-character shifts on byte pairs) to the
 * first position where a pattern may end; returns where to resume. */
static inline size_t
sec_ac_skip(const uint8_t *shift, const unsigned char *u, size_t i, size_t n, size_t m1)
{
    size_t p = i + m1;

    while (p < n) {
        uint8_t sh = shift[u[p - 1] | (unsigned)u[p] << 8];

        if (sh == 0)
            break;
        p += sh;
    }
    return p - m1;
}

/*
 * eol automata, while the walk dropping JSON escapes runs or a backslash
 * was just read: both walks, byte by byte, until neither is pending.
 * After a backslash read from state q, "\\n" and "\\r" start that walk in q,
 * "\\/" in q's transition on '/'. It ends at the root or at a backslash not
 * followed by n, r or '/'. Escapes pair as in JSON: after "\\\\" the next
 * byte begins nothing (the n of "\\\\n" is a character).
 */
static int
sec_stream_slow(struct sec_stream *st, const char *in, uint64_t base, size_t n, size_t *ip,
                uint32_t *sp, struct al_dbuf *out)
{
    const struct sec_ac *ac = st->ac;
    const uint32_t      *tbl = ac->tbl;
    const unsigned char *u = (const unsigned char *)in;
    size_t               i = *ip;
    uint32_t             s = *sp;
    int                  rc = AL_OK;

    while (i < n && (st->wst != 0 || st->warm) && rc == AL_OK) {
        unsigned char b = u[i];
        uint32_t      prev = s, t = tbl[s + ac->cls[b]], wt = 0;
        int           wbefore = st->wst != 0, pair = st->warm && b == '\\';

        s = t & ~SEC_AC_FLAGS;
        i++;
        st->pos = base + i;
        if (st->warm) {
            st->warm = 0;
            if (b == 'n' || b == 'r') {
                st->wst = st->wcand;
            } else if (b == '/') {
                wt = tbl[st->wcand + ac->cls['/']];
                st->wst = wt & ~SEC_AC_FLAGS;
            }
            st->wbs = 0;
        } else if (st->wbs) {
            st->wbs = 0;
            if (b == '/') {
                wt = tbl[st->wst + ac->cls['/']];
                st->wst = wt & ~SEC_AC_FLAGS;
            } else if (b != 'n' && b != 'r') {
                st->wst = 0;
            }
        } else if (b == '\\') {
            st->wbs = 1;
        } else {
            wt = tbl[st->wst + ac->cls[b]];
            st->wst = wt & ~SEC_AC_FLAGS;
        }
        if ((t & SEC_AC_ESC) && !wbefore && !pair) { /* not the 2nd of "\\\\" */
            st->warm = 1;
            st->wcand = prev;
        }
        if (t & SEC_AC_FLAG)
            rc = sec_stream_match(st, in, base, base + i, s, 0, s, out);
        if ((wt & SEC_AC_FLAG) && rc == AL_OK)
            rc = sec_stream_match(st, in, base, base + i, st->wst, 1, s, out);
        if (st->wst == 0)
            st->wbs = 0;
    }
    *ip = i;
    *sp = s;
    return rc;
}

/* The stream's end: nothing held, no walk under way, the next byte starts
 * afresh (hold-back and cluster list freed until needed again). */
static void
sec_stream_reset(struct sec_stream *st)
{
    /* Only [0, hold_len) ever holds input: feed wipes what it drops. */
    if (st->hold != NULL)
        sec_wipe_free(st->hold, st->hold_len);
    st->hold = NULL;
    al_safefree(st->cl);
    st->clcap = 0;
    st->hold_len = 0;
    st->hold_pos = st->pos;
    st->ncl = 0;
    st->state = 0;
    st->wst = 0;
    st->wbs = 0;
    st->warm = 0;
    st->emitted = st->pos;
}

/* Feeds in[0..n); last: the end follows, so everything goes out now and
 * the tail is never copied into the hold-back. */
static int
sec_stream_scan(struct sec_stream *st, const char *in, size_t n, struct al_dbuf *out, int last)
{
    const struct sec_ac *ac = st->ac;
    const uint32_t      *tbl = ac->tbl;
    const uint8_t       *cls = ac->cls;
    const uint8_t       *shift = ac->shift;
    const unsigned char *u = (const unsigned char *)in;
    size_t               m1 = ac->min_len - 1, i = 0;
    uint64_t             base = st->pos;
    uint32_t             s = st->state;
    int                  rc = AL_OK;

    if (n == 0)
        return last ? sec_stream_finish(st, out) : AL_OK;
    while (i < n) {
        if (st->wst != 0 || st->warm) {
            rc = sec_stream_slow(st, in, base, n, &i, &s, out);
            if (rc != AL_OK)
                goto out;
            continue;
        }
        if (s == 0 && shift != NULL) {
            i = sec_ac_skip(shift, u, i, n, m1);
            if (i >= n)
                break;
        }
        do {
            uint32_t prev = s, t = tbl[s + cls[u[i]]];

            s = t & ~SEC_AC_FLAGS;
            i++;
            if (t & SEC_AC_FLAGS) {
                st->pos = base + i;
                if (t & SEC_AC_ESC) { /* eol: a JSON escape may begin */
                    st->warm = 1;
                    st->wcand = prev;
                }
                if (t & SEC_AC_FLAG) {
                    rc = sec_stream_match(st, in, base, base + i, s, 0, s, out);
                    if (rc != AL_OK)
                        goto out;
                }
                if (st->warm)
                    break;
            }
        } while (s != 0 && i < n);
    }
    st->pos = base + n;
    st->state = s;
    if (last) {
        rc = sec_stream_advance(st, in, base, st->pos, out);
        sec_stream_reset(st);
        return rc;
    }
    rc = sec_stream_advance(st, in, base, sec_frontier(st->pos, sec_stream_depth(st, s)), out);
    if (rc != AL_OK)
        goto out;
    /* keep [max(emitted, pos - max_len), pos) */
    {
        uint64_t keep = st->pos - (st->pos < ac->max_len ? st->pos : ac->max_len);
        size_t   klen, from_hold = 0;

        if (keep < st->emitted)
            keep = st->emitted;
        klen = (size_t)(st->pos - keep);
        if (klen > 0 && st->hold == NULL && (st->hold = al_malloc(st->hold_cap)) == NULL) {
            rc = AL_ERROR;
            goto out;
        }
        if (keep < base) {
            from_hold = (size_t)(base - keep);
            memmove(st->hold, st->hold + (keep - st->hold_pos), from_hold);
        }
        if (klen > from_hold)
            memcpy(st->hold + from_hold, in + (keep + from_hold - base), klen - from_hold);
        if (st->hold_len > klen)
            OPENSSL_cleanse(st->hold + klen, st->hold_len - klen);
        st->hold_len = klen;
        st->hold_pos = keep;
    }
out:
    if (rc != AL_OK)
        st->state = s;
    return rc;
}

int
sec_stream_finish(struct sec_stream *st, struct al_dbuf *out)
{
    int rc;

    rc = sec_stream_advance(st, NULL, st->pos, st->pos, out);
    sec_stream_reset(st);
    return rc;
}

int
sec_stream_feed(struct sec_stream *st, const char *in, size_t n, struct al_dbuf *out)
{
    return sec_stream_scan(st, in, n, out, 0);
}

int
sec_stream_feed_last(struct sec_stream *st, const char *in, size_t n, struct al_dbuf *out)
{
    return sec_stream_scan(st, in, n, out, 1);
}

uint64_t
sec_stream_seen(const struct sec_stream *st)
{
    return st->seen;
}

uint64_t
sec_stream_replaced(const struct sec_stream *st)
{
    return st->replaced;
}

int
sec_stream_oneshot(struct sec_stream *st, const char *buf, size_t n, struct al_dbuf *out)
{
    return sec_stream_feed_last(st, buf, n, out);
}

static struct sec_stream *
sec_stream_new(const struct sec_store *cs, uint64_t mask, enum sec_stream_mode mode)
{
    struct sec_store    *s = (struct sec_store *)(uintptr_t)cs;
    struct sec_stream   *st = NULL;
    const struct sec_ac *ac;
    struct sec_ac       *own = NULL;

    if (s == NULL)
        return NULL;
    st = al_calloc(1, sizeof(*st));
    if (st == NULL)
        goto fail;
    if (mode == SEC_MODE_SUBST) {
        ac = s->ph_ac;
    } else {
        ac = sec_redact_ac(s, mask, &own);
        if (ac == NULL)
            goto fail;
    }
    if (sec_stream_init(st, s, ac, mode, mask) != AL_OK)
        goto fail;
    st->ac_own = own;
    st->counted = 1;
    sec_store_ref(s);
    return st;
fail:
    sec_ac_free(own);
    al_free(st);
    return NULL;
}

struct sec_stream *
sec_body_new(const struct sec_store *s, uint64_t mask)
{
    return sec_stream_new(s, mask, SEC_MODE_SUBST);
}

struct sec_stream *
sec_redactor_new(const struct sec_store *s, uint64_t mask)
{
    return sec_stream_new(s, mask, SEC_MODE_REDACT);
}

void
sec_stream_free(struct sec_stream *st)
{
    if (st == NULL)
        return;
    sec_stream_fini(st);
    sec_ac_free(st->ac_own);
    if (st->counted)
        sec_store_unref(st->store);
    OPENSSL_cleanse(st, sizeof(*st));
    al_free(st);
}

/* Whether any of ac's patterns occurs in in[0..n): the scan of
 * sec_stream_feed() without the bookkeeping, for values that (almost
 * always) hold nothing to replace. With a backslash (a JSON escape may
 * hide a wrapped form), a stream that replaces nothing tells. */
static int
sec_ac_any(const struct sec_store *cs, const struct sec_ac *ac, const char *in, size_t n)
{
    const unsigned char *u = (const unsigned char *)in;
    size_t               m1 = ac->min_len - 1, i = 0;
    uint32_t             s = 0;
    int            eol = ac->eol && (memchr(in, '\n', n) != NULL || memchr(in, '\r', n) != NULL);
    struct sec_raw r = {in, in, 0, 0, 0};

    if (ac->eol && memchr(in, '\\', n) != NULL) {
        struct sec_stream st;
        struct al_dbuf    out;
        int               rc = 1;

        al_dbuf_init(&out, n + 1);
        if (sec_stream_init(&st, cs, ac, SEC_MODE_REDACT, 0) == AL_OK) {
            if (sec_stream_oneshot(&st, in, n, &out) == AL_OK)
                rc = st.seen != 0;
            sec_stream_fini(&st);
        }
        sec_dbuf_wipe(&out);
        return rc;
    }

    while (i < n) {
        if (s == 0 && ac->shift != NULL) {
            i = sec_ac_skip(ac->shift, u, i, n, m1);
            if (i >= n)
                break;
        }
        do {
            uint32_t t = ac->tbl[s + ac->cls[u[i]]];

            s = t & ~SEC_AC_FLAGS;
            i++;
            if ((t & SEC_AC_FLAG) && !eol)
                return 1;
            if (t & SEC_AC_FLAG) {
                /* text with line breaks: does any pattern ending here count? */
                for (uint32_t q = s / ac->ncls; q != 0 && ac->out[q] >= 0; q = ac->olink[q]) {
                    uint64_t start;

                    if (sec_ac_check_wrapped(ac, ac->out[q], &r, i, &start))
                        return 1;
                }
            }
        } while (s != 0 && i < n);
    }
    return 0;
}

int
sec_redact_any(const struct sec_store *cs, uint64_t mask, const char *in, size_t n)
{
    struct sec_store    *s = (struct sec_store *)(uintptr_t)cs;
    const struct sec_ac *ac;
    struct sec_ac       *own = NULL;
    int                  rc;

    if (mask == 0)
        return 0;
    ac = sec_redact_ac(s, mask, &own);
    if (ac == NULL)
        return -1;
    rc = sec_ac_any(s, ac, in, n);
    sec_ac_free(own);
    return rc;
}

int
sec_redact_value(const struct sec_store *cs, uint64_t mask, const char *in, size_t n,
                 struct al_dbuf *out)
{
    struct sec_store    *s = (struct sec_store *)(uintptr_t)cs;
    struct sec_stream    st;
    const struct sec_ac *ac;
    struct sec_ac       *own = NULL;
    int                  rc = AL_ERROR;

    if (mask == 0)
        return sec_dbuf_add(out, in, n);
    ac = sec_redact_ac(s, mask, &own);
    if (ac == NULL)
        goto out;
    if (!sec_ac_any(s, ac, in, n)) {
        rc = sec_dbuf_add(out, in, n);
        goto out;
    }
    if (sec_stream_init(&st, s, ac, SEC_MODE_REDACT, mask) != AL_OK)
        goto out;
    rc = sec_stream_oneshot(&st, in, n, out);
    sec_stream_fini(&st);
out:
    sec_ac_free(own);
    return rc;
}
