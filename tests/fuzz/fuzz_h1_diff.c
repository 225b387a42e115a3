/*
 * fuzz_h1_diff.c - differential check of airlock's HTTP/1.1 parse ->
 * re-serialise path against a strict reference parse (issue #14: request
 * smuggling and response splitting as a class), on the real codec (issue
 * #15: proxy/px_h1.c on a fake connection, tests/unit/px_fake.h).
 *
 * Input: byte 0 = mode and split: bit 0 = 0 a request stream from a client,
 * 1 a response stream from an upstream (answers to GET from an HTTP/1.1
 * keep-alive client); bits 1-2 = number of pieces (1 + v % 3); bits 3-7 seed
 * the cut points (hashed with the length). The rest = the stream, possibly
 * several pipelined messages.
 *
 * The airlock side is the codec driven the way px_conn drives it, with no
 * secrets and a policy allowing every host (encoded slashes too). Requests:
 * px_h1_request_parser's llhttp pauses at each head (bytes counted against
 * the head cap and through px_http_head_scan as px_conn_http_feed does);
 * the connection is a transparent listener on port 80 when the first head
 * has an origin-form target, else a forward proxy (pxf_transparent);
 * pxf_on_head_checked makes px_conn_http_on_head's checks in its order (505,
 * CONNECT stops, the target through px_url_parse_absolute or
 * px_conn_transparent_target, https 501, transfer codings 501, websocket-only
 * upgrades, px_decide with its path to forward, px_msg_connection_forbidden);
 * pxf_request_head writes the head (px_h1_request_prepare,
 * px_msg_write_headers, px_h1_request_head) into up.out; pxf_req_resume
 * resumes and runs llhttp on no bytes as px_conn_http_start does (an
 * error there drops the queued head with the upstream half, as
 * px_conn_http_parse_error does); body pieces go through x->req_chain (a tap
 * filter records them, the chain frames them into up.out); at the message's
 * end the exchange is reset and the parser resumed (pxf_next_request) unless
 * it was a websocket upgrade or the client did not keep alive. up.out is
 * taken as sent after each step that returned no error. Responses: per
 * exchange a GET goes through the same request steps, then
 * px_h1_response_parser's llhttp pauses at each head (x->resp_head_ready),
 * px_h1_response_head writes it into cl.out with the codec's framing, the
 * body goes through x->resp_chain (the tap added after the head, so the
 * codec sees no filter), interim answers go on in the same parser, an
 * upstream the codec does not keep (x->upstream_reusable) ends the stream,
 * and llhttp_finish runs at the end of input (close-delimited bodies). The
 * next response of the stream goes to a fresh parser after a fresh GET, as
 * if read from the kept upstream later. Anything px_conn answers with an
 * error, refuses or turns into a tunnel stops the stream: the accepted
 * prefix is compared. Not modelled: secrets, redaction, inflation.
 *
 * The output goes through a fresh llhttp (strict, default settings, no
 * lenient flag; 1xx/204/304 responses have no body, RFC 9112 6.3) and must
 * give: no parse error; one message per accepted input message, each ending
 * at the output offset where airlock ended it (no leftover, no partial
 * message besides the one airlock was still sending when the input stopped);
 * the same method and target / status and reason; the same header list
 * (Host first, kept headers in order); the same body bytes; at most one
 * framing header, equal to what the input's parsed framing calls for
 * (chunked, the parsed length, none; toward the client a close-delimited
 * body is chunked and a 304's length kept), never a peer's Content-Length /
 * Transfer-Encoding text, with llhttp's framing agreeing; no hop-by-hop
 * header, no X-Airlock-Session / X-Airlock-Tool-Call upstream, and none the
 * input's Connection named (besides airlock's own Host / framing / websocket
 * Upgrade); an upgrade only where airlock meant one; a Connection naming a
 * header airlock relies on was refused, with nothing emitted for that
 * message. The target sent upstream is the input's path and query ("/"
 * before a query without a path, "http://h?q"; dot segments resolved as
 * pol_path_normalize does). The same input in one piece must yield the same
 * messages (split invariance). FZ_DEBUG=1 prints both streams.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "tests/unit/px_fake.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FZ_HEAD_CAP 65536 /* header_bytes */

static int fz_debug;

static void
fz_dump(const char *what, const char *p, size_t n)
{
    fprintf(stderr, "%s (%zu bytes): \"", what, n);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];

        if (ch == '\r')
            fputs("\\r", stderr);
        else if (ch == '\n')
            fputs("\\n\"\n  \"", stderr);
        else if (ch == '"' || ch == '\\')
            fprintf(stderr, "\\%c", ch);
        else if (ch < 0x20 || ch >= 0x7f)
            fprintf(stderr, "\\x%02x\"\"", ch);
        else
            fputc(ch, stderr);
    }
    fputs("\"\n", stderr);
}

#define FZ_FAIL(...)                                                                               \
    do {                                                                                           \
        fprintf(stderr, "fuzz_h1_diff: ");                                                         \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fputc('\n', stderr);                                                                       \
        abort();                                                                                   \
    } while (0)

/* ---- growable byte buffer (aborts on no memory: the fuzzer's rss cap) ---- */

struct fz_buf {
    char  *p;
    size_t len, cap;
};

static void
fzb_add(struct fz_buf *b, const void *p, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        char  *np;

        while (cap < b->len + n + 1)
            cap *= 2;
        np = realloc(b->p, cap);
        if (np == NULL)
            abort();
        b->p = np;
        b->cap = cap;
    }
    if (n > 0)
        memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void
fzb_adds(struct fz_buf *b, const char *s)
{
    fzb_add(b, s, strlen(s));
}

static void
fzb_free(struct fz_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

static int
fz_ieq(const char *a, size_t n, const char *lit)
{
    return strlen(lit) == n && strncasecmp(a, lit, n) == 0;
}

/* ---- one message as seen on either side ---------------------------------- */

struct fz_span {
    size_t off, len;
};

/* The pieces of the message being parsed. */
struct fz_cur {
    struct fz_buf url;   /* request target (as written) or reason phrase */
    struct fz_buf hdrs;  /* "name\0value\0"...: airlock side without framing; reference: all */
    struct fz_buf frame; /* airlock side: what px_framing_write made ("Name: value\r\n") */
    struct fz_buf conn;  /* airlock side: the input's Connection tokens, lowercase, "\0"-ended */
    struct fz_buf body;
};

struct fz_rec {
    int            code;    /* method (request) or status (response) */
    int            upgrade; /* airlock: a websocket upgrade; reference: llhttp's upgrade */
    int            chunked; /* reference: F_CHUNKED at on_headers_complete */
    int            has_cl;  /* reference: F_CONTENT_LENGTH */
    uint64_t       cl;      /* reference: content_length at on_headers_complete */
    struct fz_span url, hdrs, frame, conn, body;
    size_t         end; /* output offset just past the message */
};

struct fz_log {
    struct fz_rec *r;
    int            n, cap;
    struct fz_buf  s; /* the spans' bytes */
};

static void
fz_cur_reset(struct fz_cur *c)
{
    c->url.len = c->hdrs.len = c->frame.len = c->conn.len = c->body.len = 0;
}

static void
fz_cur_free(struct fz_cur *c)
{
    fzb_free(&c->url);
    fzb_free(&c->hdrs);
    fzb_free(&c->frame);
    fzb_free(&c->conn);
    fzb_free(&c->body);
}

static struct fz_span
fz_keep(struct fz_log *l, const struct fz_buf *b)
{
    struct fz_span sp = {l->s.len, b->len};

    fzb_add(&l->s, b->p, b->len);
    return sp;
}

static struct fz_rec *
fz_log_push(struct fz_log *l, const struct fz_cur *c)
{
    struct fz_rec *r;

    if (l->n == l->cap) {
        int            ncap = l->cap ? l->cap * 2 : 8;
        struct fz_rec *nr = realloc(l->r, (size_t)ncap * sizeof(*nr));

        if (nr == NULL)
            abort();
        l->r = nr;
        l->cap = ncap;
    }
    r = &l->r[l->n++];
    memset(r, 0, sizeof(*r));
    r->url = fz_keep(l, &c->url);
    r->hdrs = fz_keep(l, &c->hdrs);
    r->frame = fz_keep(l, &c->frame);
    r->conn = fz_keep(l, &c->conn);
    r->body = fz_keep(l, &c->body);
    return r;
}

static void
fz_log_free(struct fz_log *l)
{
    free(l->r);
    fzb_free(&l->s);
    memset(l, 0, sizeof(*l));
}

static int
fz_span_eq(const struct fz_log *a, struct fz_span x, const struct fz_log *b, struct fz_span y)
{
    return x.len == y.len && (x.len == 0 || memcmp(a->s.p + x.off, b->s.p + y.off, x.len) == 0);
}

/* The Connection tokens of the head in m (own tokenizer), into c->conn. */
static void
fz_conn_tokens(const struct px_msg *m, struct fz_buf *out)
{
    for (int i = 0; i < m->nhdrs; i++) {
        const struct px_hdr *h = &m->hdrs[i];
        const char          *v, *e;

        if (!fz_ieq(px_msg_str(m, h->name), h->name_len, "connection") || h->val == UINT32_MAX)
            continue;
        v = px_msg_str(m, h->val);
        e = v + h->val_len;
        while (v < e) {
            const char *s, *t;

            while (v < e && (*v == ' ' || *v == '\t' || *v == ','))
                v++;
            s = v;
            while (v < e && *v != ',')
                v++;
            t = v;
            while (t > s && (t[-1] == ' ' || t[-1] == '\t'))
                t--;
            if (t > s) {
                for (const char *q = s; q < t; q++) {
                    char lc = (char)(*q >= 'A' && *q <= 'Z' ? *q + 32 : *q);

                    fzb_add(out, &lc, 1);
                }
                fzb_add(out, "", 1);
            }
        }
    }
}

static int
fz_has_token(const char *toks, size_t len, const char *name, size_t nlen)
{
    for (size_t i = 0; i < len;) {
        size_t tl = strlen(toks + i);

        if (tl == nlen && strncasecmp(toks + i, name, nlen) == 0)
            return 1;
        i += tl + 1;
    }
    return 0;
}

/* Headers airlock relies on: a Connection naming one must be refused. */
static void
fz_check_relied(const struct fz_buf *conn)
{
    static const char *const relied[] = {
        "host",   "content-length",    "transfer-encoding",   "content-encoding",
        "expect", "x-airlock-session", "x-airlock-tool-call", NULL};

    for (int k = 0; relied[k] != NULL; k++)
        if (fz_has_token(conn->p, conn->len, relied[k], strlen(relied[k])))
            FZ_FAIL("a head whose Connection names %s was forwarded", relied[k]);
}

/* The kept headers of m as "name\0value\0" pairs. */
static void
fz_kept_headers(const struct px_msg *m, struct fz_buf *out)
{
    for (int i = 0; i < m->nhdrs; i++) {
        const struct px_hdr *h = &m->hdrs[i];

        if (h->drop)
            continue;
        fzb_add(out, px_msg_str(m, h->name), h->name_len);
        fzb_add(out, "", 1);
        if (h->val != UINT32_MAX)
            fzb_add(out, px_msg_str(m, h->val), h->val_len);
        fzb_add(out, "", 1);
    }
}

/* ---- the airlock side: the codec on a fake connection --------------------- */

struct fz_px {
    struct px_conn *c;
    struct fz_buf   out; /* what left toward the other side */
    struct fz_log   log;
    struct fz_cur   cur;
    int             response;
    int             refused;   /* a Connection naming a relied-on header was refused */
    int             mode_set;  /* the first head chose the listener */
    int             rs_active; /* responses: an exchange waits for its response */
    int             exchanges; /* responses: GETs sent */
    const char     *stop;      /* why nothing more is processed */
};

/* The fake worker and snapshot every input's connection shares. */
static struct pxf    fz_f;
static struct fz_px *fz_tap_px; /* the run whose body pieces the tap records */

/* A body filter passing everything on: the bytes llhttp called the body. */
static int
fz_tap(struct px_chain *ch, int i, const char *p, size_t n, int last)
{
    if (n > 0)
        fzb_add(&fz_tap_px->cur.body, p, n);
    return px_chain_feed(ch, i + 1, p, n, last);
}

/* What q holds leaves (px_half_flush). */
static void
fz_flush(struct fz_px *x, struct al_bufq *q)
{
    const char *p;
    size_t      n;

    while ((p = al_bufq_peek(q, &n)) != NULL && n > 0) {
        fzb_add(&x->out, p, n);
        al_bufq_skip(q, n);
    }
}

/* What q holds never leaves (px_half_close). */
static void
fz_drop(struct al_bufq *q)
{
    al_bufq_free(q);
    al_bufq_init(q, PX_BUF_HIGH_BYTES);
}

/* The framing line the input's parsed framing calls for (not the codec's
 * px_framing_write: the oracle writes its own). */
static void
fz_frame_line(struct fz_buf *out, int chunked, int has_len, uint64_t len)
{
    char num[48];

    if (chunked) {
        fzb_adds(out, "Transfer-Encoding: chunked\r\n");
    } else if (has_len) {
        snprintf(num, sizeof(num), "Content-Length: %llu\r\n", (unsigned long long)len);
        fzb_adds(out, num);
    }
}

static int
fz_has_dot(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] == '.' ||
            (p[i] == '%' && i + 2 < n && p[i + 1] == '2' && (p[i + 2] == 'e' || p[i + 2] == 'E')))
            return 1;
    return 0;
}

/*
 * The target that must go upstream, from the input's request-target: its
 * path and query as sent ("/" first when a query has no path, "/" alone
 * when there is neither), dot segments resolved when it has some. Into
 * x->cur.url; aborts when the target px_conn would send differs.
 */
static void
fz_expect_target(struct fz_px *x)
{
    struct px_exch         *e = x->c->x;
    const struct px_msg    *m = &e->req;
    const struct px_target *t = &e->target;
    const char             *url = px_msg_str(m, m->url);
    const char             *sent = e->fwd_path;
    size_t                  slen = e->fwd_path_len;

    if (sent == NULL) { /* pxf_request_head's (px_conn_http_request_head's) fallback */
        sent = t->path_needs_slash ? "/" : t->path;
        slen = t->path_needs_slash ? 1 : t->path_len;
    }
    if (t->path < url || t->path >= url + m->url_len) {
        /* "http://host" without path or query: "/" */
        if (t->path_len != 1 || t->path[0] != '/' || memchr(url + 7, '/', m->url_len - 7) != NULL ||
            memchr(url, '?', m->url_len) != NULL)
            FZ_FAIL("request target \"%.*s\" not taken from the input", (int)t->path_len, t->path);
        fzb_add(&x->cur.url, "/", 1);
    } else if (t->path + t->path_len != url + m->url_len) {
        FZ_FAIL("request target is not the end of the input's");
    } else if (t->path_needs_slash) {
        if (t->path[0] != '?')
            FZ_FAIL("path_needs_slash for \"%.*s\"", (int)t->path_len, t->path);
        fzb_add(&x->cur.url, "/", 1);
        fzb_add(&x->cur.url, t->path, t->path_len);
    } else {
        const char *q = memchr(t->path, '?', t->path_len);
        size_t      plen = q != NULL ? (size_t)(q - t->path) : t->path_len;

        if (t->path[0] != '/')
            FZ_FAIL("request target \"%.*s\" does not start with /", (int)t->path_len, t->path);
        if (fz_has_dot(t->path, plen)) {
            char  *norm = malloc(plen + 1);
            size_t nlen = 0;
            int    enc = 0;

            if (norm == NULL)
                abort();
            if (pol_path_normalize(t->path, plen, norm, plen + 1, &nlen, &enc) != AL_OK)
                FZ_FAIL("\"%.*s\" allowed though it cannot be normalised", (int)plen, t->path);
            fzb_add(&x->cur.url, norm, nlen);
            free(norm);
        } else {
            fzb_add(&x->cur.url, t->path, plen);
        }
        fzb_add(&x->cur.url, t->path + plen, t->path_len - plen);
    }
    if (slen != x->cur.url.len || memcmp(sent, x->cur.url.p, slen) != 0)
        FZ_FAIL("\"%.*s\" goes upstream as \"%.*s\"", (int)m->url_len, url, (int)slen, sent);
}

/* A request head paused in the codec: px_conn_http_on_head's checks, then the
 * head written into up.out with the tap on the body's chain. */
static void
fz_rq_head(struct fz_px *x)
{
    struct px_conn         *c = x->c;
    struct px_exch         *e = c->x;
    struct px_msg          *m = &e->req;
    const struct px_target *t = &e->target;
    const char             *lb, *rb;
    char                    hv[PX_HOST_MAX + 16];
    int                     hn, chunked = (c->rq.flags & F_CHUNKED) != 0;
    int                     has_len = (c->rq.flags & F_CONTENT_LENGTH) != 0;
    uint64_t                len = c->rq.content_length;

    fz_cur_reset(&x->cur);
    if (!x->mode_set) {
        x->mode_set = 1;
        if (m->url_len > 0 && px_msg_str(m, m->url)[0] == '/')
            pxf_transparent(c, 80);
    }
    if (pxf_on_head_checked(c) != AL_OK) {
        x->stop = c->refusal.reason != NULL ? c->refusal.reason : "declined";
        x->refused = strcmp(x->stop, "bad_connection_header") == 0;
        return;
    }
    fz_conn_tokens(m, &x->cur.conn);
    fz_check_relied(&x->cur.conn);
    if (pxf_request_head(c) != AL_OK)
        FZ_FAIL("writing a request head failed");
    fz_expect_target(x);
    lb = t->kind == PX_HOST_IPV6 ? "[" : "";
    rb = t->kind == PX_HOST_IPV6 ? "]" : "";
    if (t->port == 80)
        hn = snprintf(hv, sizeof(hv), "%s%s%s", lb, t->host, rb);
    else
        hn = snprintf(hv, sizeof(hv), "%s%s%s:%u", lb, t->host, rb, (unsigned)t->port);
    fzb_add(&x->cur.hdrs, "Host", 5);
    fzb_add(&x->cur.hdrs, hv, (size_t)hn + 1);
    fz_kept_headers(m, &x->cur.hdrs);
    if (e->want_upgrade)
        fzb_add(&x->cur.hdrs, "Connection\0upgrade", 19);
    fz_frame_line(&x->cur.frame, chunked, has_len, len);
    if (px_chain_add(&e->req_chain, fz_tap) != AL_OK)
        abort();
}

/* A message's end on the airlock side: recorded with where it ended. */
static void
fz_push(struct fz_px *x, int code, int upgrade)
{
    struct fz_rec *r = fz_log_push(&x->log, &x->cur);

    r->code = code;
    r->upgrade = upgrade;
    r->end = x->out.len;
}

static int
fz_llhttp_err(llhttp_errno_t e)
{
    return e != HPE_OK && e != HPE_PAUSED && e != HPE_PAUSED_UPGRADE;
}

/* A request stream from a client, in pieces, as px_conn_http_feed reads it. */
static void
fz_rq_run(struct fz_px *x, const char *in, const size_t *cut, int npieces)
{
    struct px_conn     *c = x->c;
    struct px_head_scan hs = {0, 0};
    size_t              head_bytes = 0;
    int                 in_head = 1;

    for (int i = 0; i < npieces && x->stop == NULL; i++) {
        const char *at = in + cut[i];
        size_t      len = cut[i + 1] - cut[i];

        while (len > 0 && x->stop == NULL) {
            const char    *from = at;
            llhttp_errno_t e = pxf_req_exec(c, &at, &len);

            if (in_head) {
                const char *bad = px_http_head_scan(&hs, from, (size_t)(at - from));

                if (bad != NULL) {
                    x->stop = bad;
                    break;
                }
                head_bytes += (size_t)(at - from);
                if (head_bytes > c->conf->limits.header_bytes) {
                    x->stop = "header_too_large";
                    break;
                }
            }
            if (e == HPE_OK)
                continue;
            if (fz_llhttp_err(e)) {
                fz_drop(&c->up.out); /* px_conn_http_parse_error */
                x->stop = llhttp_errno_name(e);
                break;
            }
            if (in_head) {
                if (e != HPE_PAUSED)
                    FZ_FAIL("%s before the end of a head", llhttp_errno_name(e));
                in_head = 0;
                head_bytes = 0;
                memset(&hs, 0, sizeof(hs));
                fz_rq_head(x);
                if (x->stop != NULL)
                    break;
                e = pxf_req_resume(c);
                if (fz_llhttp_err(e)) {
                    fz_drop(&c->up.out); /* the head queued there never leaves */
                    x->stop = llhttp_errno_name(e);
                    break;
                }
                fz_flush(x, &c->up.out);
                if (!c->x->req_done)
                    continue;
            } else {
                if (e == HPE_PAUSED_UPGRADE)
                    c->x->req_done = 1;
                fz_flush(x, &c->up.out);
                if (!c->x->req_done)
                    FZ_FAIL("request parser paused (%s) mid-body", llhttp_errno_name(e));
            }
            fz_push(x, c->rq.method, c->x->want_upgrade);
            if (c->x->want_upgrade) {
                x->stop = "websocket: a tunnel follows";
                break;
            }
            if (!c->x->client_keepalive) {
                x->stop = "no keep-alive";
                break;
            }
            pxf_next_request(c);
            in_head = 1;
        }
    }
}

/* The GET each response answers: its head goes upstream (dropped here), the
 * request completes, a fresh response parser waits (px_conn_http_start). */
static void
fz_rs_exchange(struct fz_px *x)
{
    static const char get[] = "GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n";
    struct px_conn   *c = x->c;
    const char       *at = get;
    size_t            len = sizeof(get) - 1;

    if (x->exchanges++ > 0)
        pxf_next_request(c);
    if (pxf_req_exec(c, &at, &len) != HPE_PAUSED || len != 0 || pxf_on_head_checked(c) != AL_OK ||
        pxf_request_head(c) != AL_OK || pxf_req_resume(c) != HPE_PAUSED || !c->x->req_done)
        FZ_FAIL("the GET a response answers did not go through");
    fz_drop(&c->up.out);
    x->rs_active = 1;
}

/* A response head paused in the codec: written toward the client by
 * px_h1_response_head, the tap on the body's chain behind it. */
static void
fz_rs_head(struct fz_px *x)
{
    struct px_conn *c = x->c;
    struct px_exch *e = c->x;
    struct px_msg  *m = &e->resp;
    llhttp_t       *p = &c->rs;
    int             status = p->status_code;
    int             interim = status >= 100 && status < 200;
    int             nobody = interim || status == 204 || status == 304;

    fz_cur_reset(&x->cur);
    if (m->status_text_len)
        fzb_add(&x->cur.url, px_msg_str(m, m->status_text), m->status_text_len);
    fz_conn_tokens(m, &x->cur.conn);
    fz_check_relied(&x->cur.conn);
    fz_kept_headers(m, &x->cur.hdrs);
    if (!interim) {
        int chunked = !nobody && ((p->flags & F_CHUNKED) || !(p->flags & F_CONTENT_LENGTH));

        /* a 304's length describes the body it would have had; 204 has none */
        fz_frame_line(&x->cur.frame, chunked,
                      (p->flags & F_CONTENT_LENGTH) && status != 204 && !(p->flags & F_CHUNKED),
                      p->content_length);
    }
    if (px_h1_response_head(c) != AL_OK)
        FZ_FAIL("writing a response head failed");
    fz_flush(x, &c->cl.out);
    if (interim)
        fz_push(x, status, 0); /* ends with its head; the final answer follows */
    else if (px_chain_add(&e->resp_chain, fz_tap) != AL_OK)
        abort();
    llhttp_resume(p);
}

/* A final response ended: the exchange is done, the upstream kept or not. */
static void
fz_rs_done(struct fz_px *x)
{
    fz_flush(x, &x->c->cl.out);
    fz_push(x, x->c->rs.status_code, 0);
    x->rs_active = 0;
    if (!x->c->x->upstream_reusable)
        x->stop = "the upstream is not kept";
}

/* A response stream from an upstream, in pieces, as px_conn_http_upstream_readable
 * reads it. */
static void
fz_rs_run(struct fz_px *x, const char *in, const size_t *cut, int npieces)
{
    struct px_conn *c = x->c;

    for (int i = 0; i < npieces && x->stop == NULL; i++) {
        const char *at = in + cut[i];
        size_t      len = cut[i + 1] - cut[i];

        while (x->stop == NULL) {
            llhttp_errno_t e;
            size_t         used;

            if (!x->rs_active) {
                if (len == 0)
                    break;
                fz_rs_exchange(x);
            }
            e = llhttp_execute(&c->rs, at, len);
            used = e == HPE_OK ? len : (size_t)(llhttp_get_error_pos(&c->rs) - at);
            if (used > len)
                abort();
            at += used;
            len -= used;
            if (e == HPE_OK)
                break;
            if (e == HPE_PAUSED && c->x->resp_head_ready) {
                c->x->resp_head_ready = 0;
                fz_rs_head(x);
                continue; /* also with no bytes left: a 204 ends with its head */
            }
            if (e == HPE_PAUSED && c->x->resp_done) {
                fz_rs_done(x);
                continue;
            }
            fz_flush(x, &c->cl.out); /* cut off mid-message: the client sees that */
            if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) {
                x->stop = llhttp_errno_name(e);
                break;
            }
            x->refused = c->x->resp_refusal != NULL &&
                         strcmp(c->x->resp_refusal, "bad_connection_header") == 0;
            x->stop = c->x->resp_refusal != NULL ? c->x->resp_refusal : llhttp_errno_name(e);
        }
    }
    if (x->stop == NULL && x->rs_active) {
        /* The upstream closed: a close-delimited body ends here. */
        (void)llhttp_finish(&c->rs);
        fz_flush(x, &c->cl.out);
        if (c->x->resp_done)
            fz_rs_done(x);
    }
}

/* Runs the stream through the airlock side in the given pieces. */
static void
fz_px_run(struct fz_px *x, int response, const char *in, const size_t *cut, int npieces)
{
    memset(x, 0, sizeof(*x));
    x->response = response;
    x->c = pxf_conn_new(&fz_f);
    fz_tap_px = x;
    if (response)
        fz_rs_run(x, in, cut, npieces);
    else
        fz_rq_run(x, in, cut, npieces);
    pxf_conn_free(x->c);
    x->c = NULL;
}

static void
fz_px_free(struct fz_px *x)
{
    fzb_free(&x->out);
    fz_log_free(&x->log);
    fz_cur_free(&x->cur);
}

/* ---- the reference side: a fresh strict llhttp over airlock's output ---- */

static llhttp_settings_t fz_ref_settings_rq, fz_ref_settings_rs;

enum { FZ_H_NONE = 0, FZ_H_FIELD, FZ_H_VALUE };

struct fz_ref {
    llhttp_t      p;
    struct fz_log log;
    struct fz_cur cur;
    int           hstate; /* what the last header piece was */
    int           chunked, has_cl, upgrade;
    uint64_t      cl;
    int           done; /* on_message_complete ran */
};

static int
fz_ref_begin(llhttp_t *p)
{
    struct fz_ref *r = p->data;

    fz_cur_reset(&r->cur);
    r->hstate = FZ_H_NONE;
    r->chunked = r->has_cl = 0;
    r->cl = 0;
    return 0;
}
static int
fz_ref_url(llhttp_t *p, const char *at, size_t n)
{
    fzb_add(&((struct fz_ref *)p->data)->cur.url, at, n);
    return 0;
}
static int
fz_ref_field(llhttp_t *p, const char *at, size_t n)
{
    struct fz_ref *r = p->data;

    if (r->hstate == FZ_H_VALUE) /* a value without its _complete */
        fzb_add(&r->cur.hdrs, "", 1);
    r->hstate = FZ_H_FIELD;
    fzb_add(&r->cur.hdrs, at, n);
    return 0;
}
static int
fz_ref_field_end(llhttp_t *p)
{
    struct fz_ref *r = p->data;

    fzb_add(&r->cur.hdrs, "", 1);
    r->hstate = FZ_H_VALUE;
    return 0;
}
static int
fz_ref_value(llhttp_t *p, const char *at, size_t n)
{
    struct fz_ref *r = p->data;

    fzb_add(&r->cur.hdrs, at, n);
    return 0;
}
static int
fz_ref_value_end(llhttp_t *p)
{
    struct fz_ref *r = p->data;

    if (r->hstate == FZ_H_VALUE)
        fzb_add(&r->cur.hdrs, "", 1);
    r->hstate = FZ_H_NONE;
    return 0;
}
static int
fz_ref_head(llhttp_t *p)
{
    struct fz_ref *r = p->data;
    int            st = p->status_code;

    if (r->hstate == FZ_H_VALUE)
        fzb_add(&r->cur.hdrs, "", 1);
    r->hstate = FZ_H_NONE;
    r->chunked = (p->flags & F_CHUNKED) != 0;
    r->has_cl = (p->flags & F_CONTENT_LENGTH) != 0;
    r->cl = p->content_length;
    r->upgrade = p->upgrade;
    /* RFC 9112 6.3 rule 1: these end with their head (llhttp reads a 304's
     * Content-Length as a body unless told). */
    if (p->type == HTTP_RESPONSE && ((st >= 100 && st < 200) || st == 204 || st == 304))
        return 1;
    return 0;
}
static int
fz_ref_body(llhttp_t *p, const char *at, size_t n)
{
    fzb_add(&((struct fz_ref *)p->data)->cur.body, at, n);
    return 0;
}
static int
fz_ref_done(llhttp_t *p)
{
    struct fz_ref *r = p->data;
    struct fz_rec *rec = fz_log_push(&r->log, &r->cur);

    rec->code = p->type == HTTP_RESPONSE ? p->status_code : p->method;
    rec->chunked = r->chunked;
    rec->has_cl = r->has_cl;
    rec->cl = r->cl;
    rec->upgrade = r->upgrade;
    r->done = 1;
    return HPE_PAUSED; /* so the end offset is known */
}

static const char *const fz_hop[] = {"connection",
                                     "proxy-connection",
                                     "proxy-authorization",
                                     "proxy-authenticate",
                                     "keep-alive",
                                     "te",
                                     "trailer",
                                     "transfer-encoding",
                                     "upgrade",
                                     "http2-settings",
                                     NULL};

/* Compares one reference message with what airlock meant to send. */
static void
fz_check_msg(int response, int i, const struct fz_log *al, const struct fz_rec *a,
             const struct fz_log *rl, const struct fz_rec *r)
{
    const char   *h = rl->s.p + r->hdrs.off;
    const char   *he = h + r->hdrs.len;
    struct fz_buf rest = {0}, frame = {0};
    const char   *toks = al->s.p + a->conn.off;
    int           idx = 0, nhost = 0, nframe = 0, nhdrs = 0;

    if (r->end != a->end)
        FZ_FAIL("message %d ends at %zu on re-parse, airlock ended it at %zu", i, r->end, a->end);
    if (r->code != a->code)
        FZ_FAIL("message %d: %s %d on re-parse, %d in the input", i, response ? "status" : "method",
                r->code, a->code);
    if (!fz_span_eq(al, a->url, rl, r->url))
        FZ_FAIL("message %d: %s differs", i, response ? "reason phrase" : "request target");
    if (!fz_span_eq(al, a->body, rl, r->body))
        FZ_FAIL("message %d: body differs (%zu bytes in, %zu on re-parse)", i, a->body.len,
                r->body.len);
    if (r->upgrade != a->upgrade)
        FZ_FAIL("message %d: upgrade %d on re-parse, airlock meant %d", i, r->upgrade, a->upgrade);

    for (const char *q = h; q < he; nhdrs++) {
        q += strlen(q) + 1; /* name */
        q += strlen(q) + 1; /* value */
    }
    while (h < he) {
        const char *n = h, *v = h + strlen(h) + 1;
        size_t      nl = strlen(n), vl = strlen(v);
        int         generated = 0;

        h = v + vl + 1;
        if (fz_ieq(n, nl, "content-length") || fz_ieq(n, nl, "transfer-encoding")) {
            nframe++;
            fzb_add(&frame, n, nl);
            fzb_adds(&frame, ": ");
            fzb_add(&frame, v, vl);
            fzb_adds(&frame, "\r\n");
            if (fz_ieq(n, nl, "transfer-encoding") && strcmp(v, "chunked") != 0)
                FZ_FAIL("message %d: Transfer-Encoding \"%s\" on the wire", i, v);
            idx++;
            continue;
        }
        fzb_add(&rest, n, nl + 1);
        fzb_add(&rest, v, vl + 1);
        if (!response && fz_ieq(n, nl, "host")) {
            nhost++;
            if (idx != 0 || strcmp(n, "Host") != 0)
                FZ_FAIL("message %d: a Host header other than airlock's own", i);
            generated = 1;
        }
        if (!response && a->upgrade && idx == nhdrs - 1 && strcmp(n, "Connection") == 0 &&
            strcmp(v, "upgrade") == 0)
            generated = 1;
        if (!response &&
            (fz_ieq(n, nl, "x-airlock-session") || fz_ieq(n, nl, "x-airlock-tool-call")))
            FZ_FAIL("message %d: %s went upstream", i, n);
        if (!generated) {
            int upgrade_ok = a->upgrade && fz_ieq(n, nl, "upgrade");

            for (int k = 0; fz_hop[k] != NULL; k++)
                if (fz_ieq(n, nl, fz_hop[k]) && !upgrade_ok)
                    FZ_FAIL("message %d: hop-by-hop header %s forwarded", i, n);
            if (fz_has_token(toks, a->conn.len, n, nl) && !upgrade_ok)
                FZ_FAIL("message %d: %s forwarded though the input's Connection named it", i, n);
        }
        idx++;
    }
    if (!response && nhost != 1)
        FZ_FAIL("message %d: %d Host headers", i, nhost);
    if (nframe > 1)
        FZ_FAIL("message %d: %d framing headers", i, nframe);
    if (frame.len != a->frame.len ||
        (frame.len > 0 && memcmp(frame.p, al->s.p + a->frame.off, frame.len) != 0))
        FZ_FAIL("message %d: framing header differs from the input's framing", i);
    if (rest.len != a->hdrs.len ||
        (rest.len > 0 && memcmp(rest.p, al->s.p + a->hdrs.off, rest.len) != 0)) {
        if (fz_debug) {
            fz_dump("re-parsed headers", rest.p ? rest.p : "", rest.len);
            fz_dump("airlock's headers", al->s.p + a->hdrs.off, a->hdrs.len);
        }
        FZ_FAIL("message %d: header list differs", i);
    }
    /* llhttp's own reading of that framing agrees */
    if (a->frame.len > 0 && al->s.p[a->frame.off] == 'T' && !r->chunked)
        FZ_FAIL("message %d: chunked framing not parsed as chunked", i);
    if (r->chunked && !(a->frame.len > 0 && al->s.p[a->frame.off] == 'T'))
        FZ_FAIL("message %d: parsed as chunked", i);
    if (a->frame.len > 0 && al->s.p[a->frame.off] == 'C') {
        unsigned long long v = strtoull(al->s.p + a->frame.off + 16, NULL, 10);

        if (!r->has_cl || r->cl != v)
            FZ_FAIL("message %d: Content-Length not parsed as %llu", i, v);
    }
    fzb_free(&rest);
    fzb_free(&frame);
}

/* Re-parses airlock's output strictly and compares it with the input side. */
static void
fz_ref_check(const struct fz_px *x, const char *out, size_t outlen)
{
    struct fz_ref  r;
    size_t         pos = 0, prefix = x->log.n > 0 ? x->log.r[x->log.n - 1].end : 0;
    llhttp_errno_t e = HPE_OK;

    memset(&r, 0, sizeof(r));
    llhttp_init(&r.p, x->response ? HTTP_RESPONSE : HTTP_REQUEST,
                x->response ? &fz_ref_settings_rs : &fz_ref_settings_rq);
    r.p.data = &r;
    for (;;) { /* also runs with nothing left: llhttp finishes the message it paused in */
        size_t npos;

        r.done = 0;
        e = llhttp_execute(&r.p, out + pos, outlen - pos);
        if (e == HPE_OK)
            break;
        npos = (size_t)(llhttp_get_error_pos(&r.p) - out);
        if (e == HPE_PAUSED && r.done) {
            r.log.r[r.log.n - 1].end = npos;
            llhttp_resume(&r.p);
            pos = npos;
            continue;
        }
        if (e == HPE_PAUSED_UPGRADE) {
            if (npos != outlen)
                FZ_FAIL("%zu bytes after an upgrade request", outlen - npos);
            break;
        }
        if (fz_debug)
            fz_dump("output", out, outlen);
        FZ_FAIL("strict re-parse refused airlock's output at %zu: %s (%s)", npos,
                llhttp_errno_name(e), llhttp_get_error_reason(&r.p));
    }
    if (r.log.n != x->log.n)
        FZ_FAIL("%d messages on re-parse, %d accepted from the input", r.log.n, x->log.n);
    for (int i = 0; i < x->log.n; i++)
        fz_check_msg(x->response, i, &x->log, &x->log.r[i], &r.log, &r.log.r[i]);
    if (outlen < prefix)
        abort();
    if (outlen == prefix) {
        /* Nothing after the last message: the re-parse sits between messages. */
        if (e != HPE_PAUSED_UPGRADE && llhttp_finish(&r.p) != HPE_OK)
            FZ_FAIL("re-parse left a partial message");
    } else if (x->refused) {
        FZ_FAIL("a refused head left %zu bytes on the wire", outlen - prefix);
    }
    fz_log_free(&r.log);
    fz_cur_free(&r.cur);
}

/* The same messages whatever the read boundaries were. */
static void
fz_same_messages(const struct fz_px *a, const struct fz_px *b)
{
    if (a->log.n != b->log.n)
        FZ_FAIL("%d messages in pieces, %d in one read", a->log.n, b->log.n);
    if (a->refused != b->refused)
        FZ_FAIL("refused %d in pieces, %d in one read", a->refused, b->refused);
    for (int i = 0; i < a->log.n; i++) {
        const struct fz_rec *x = &a->log.r[i], *y = &b->log.r[i];

        if (x->code != y->code || x->upgrade != y->upgrade ||
            !fz_span_eq(&a->log, x->url, &b->log, y->url) ||
            !fz_span_eq(&a->log, x->hdrs, &b->log, y->hdrs) ||
            !fz_span_eq(&a->log, x->frame, &b->log, y->frame) ||
            !fz_span_eq(&a->log, x->conn, &b->log, y->conn) ||
            !fz_span_eq(&a->log, x->body, &b->log, y->body))
            FZ_FAIL("message %d differs between pieces and one read", i);
    }
}

static void
fz_settings_init(void)
{
    llhttp_settings_t *ref[2] = {&fz_ref_settings_rq, &fz_ref_settings_rs};

    for (int k = 0; k < 2; k++) {
        llhttp_settings_t *r = ref[k];

        llhttp_settings_init(r);
        r->on_message_begin = fz_ref_begin;
        r->on_url = fz_ref_url;
        r->on_status = fz_ref_url;
        r->on_header_field = fz_ref_field;
        r->on_header_field_complete = fz_ref_field_end;
        r->on_header_value = fz_ref_value;
        r->on_header_value_complete = fz_ref_value_end;
        r->on_headers_complete = fz_ref_head;
        r->on_body = fz_ref_body;
        r->on_message_complete = fz_ref_done;
    }
}

/* The worker and snapshot: no secrets, a policy allowing every host. */
static void
fz_fake_init(void)
{
    static const char policy[] = "{\"default\": \"deny\", \"rules\": [{\"name\": \"any\", "
                                 "\"hosts\": [\"*\"], \"allow_encoded_slash\": true}]}";

    pxf_init(&fz_f, pxf_policy(policy), NULL);
    fz_f.conf->limits.header_bytes = FZ_HEAD_CAP;
    pxf_conn_free(fz_f.c);
    fz_f.c = NULL;
}

static void
fz_one(struct fz_px *x, int response, const char *in, const size_t *cut, int npieces)
{
    fz_px_run(x, response, in, cut, npieces);
    if (fz_debug) {
        fprintf(stderr, "%s, %d piece(s), %d message(s) accepted, stop: %s\n",
                response ? "responses" : "requests", npieces, x->log.n,
                x->stop ? x->stop : "end of input");
        fz_dump("output", x->out.p ? x->out.p : "", x->out.len);
    }
    fz_ref_check(x, x->out.p ? x->out.p : "", x->out.len);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int   init;
    struct fz_px a, b;
    const char  *in;
    size_t       n, cut[4], one[2];
    int          response, npieces;
    uint32_t     h;

    if (size < 1)
        return 0;
    if (!init) {
        fz_settings_init();
        fz_fake_init();
        fz_debug = getenv("FZ_DEBUG") != NULL;
        init = 1;
    }
    response = data[0] & 1;
    npieces = 1 + ((data[0] >> 1) & 3) % 3;
    in = (const char *)data + 1;
    n = size - 1;
    h = ((uint32_t)(data[0] >> 3) + 1) * 2654435761u ^ (uint32_t)n * 40503u;
    cut[0] = 0;
    cut[1] = npieces > 1 ? h % (n + 1) : n;
    cut[2] = npieces > 2 ? (h >> 16) % (n + 1) : n;
    if (cut[2] < cut[1]) {
        size_t t = cut[1];

        cut[1] = cut[2];
        cut[2] = t;
    }
    cut[3] = n;
    if (npieces == 2)
        cut[2] = n;
    if (fz_debug)
        fz_dump("input", in, n);

    fz_one(&a, response, in, cut, npieces);
    if (npieces > 1) {
        one[0] = 0;
        one[1] = n;
        fz_one(&b, response, in, one, 1);
        fz_same_messages(&a, &b);
        fz_px_free(&b);
    }
    fz_px_free(&a);
    return 0;
}
