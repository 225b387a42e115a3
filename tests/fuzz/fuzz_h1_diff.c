/*
 * fuzz_h1_diff.c - differential check of airlock's HTTP/1.1 parse ->
 * re-serialise path against a strict reference parse (issue #14: request
 * smuggling and response splitting as a class).
 *
 * Input: byte 0 = mode and split: bit 0 = 0 a request stream from a client,
 * 1 a response stream from an upstream (answers to GET from an HTTP/1.1
 * keep-alive client); bits 1-2 = number of pieces (1 + v % 3); bits 3-7 seed
 * the cut points (hashed with the length). The rest = the stream, possibly
 * several pipelined messages.
 *
 * The airlock side runs the real functions the way px_conn does: llhttp
 * (strict, as built) with callbacks into a px_msg (px_msg_add /
 * px_msg_end_piece); a request pauses at on_headers_complete (framing from
 * px_framing_parsed(p, 0)), passes px_http_head_scan, the target checks
 * (absolute-form through px_url_parse_absolute, https refused; origin-form
 * through the Host header and px_authority_parse, as a transparent listener
 * on port 80), px_msg_te_chunked_only, the websocket-only upgrade rule and
 * px_msg_connection_forbidden, then is written as px_conn_write_request_head
 * writes it without secrets (request line from method + target, Host from the
 * target, px_msg_drop_hop_by_hop + px_msg_drop_framing + Host dropped,
 * px_msg_write_headers, px_framing_write, "Connection: upgrade" for a
 * websocket). That head is queued and goes out only if the zero-byte
 * llhttp_execute after the resume (px_conn_upstream_ready) accepts the rest
 * of the head: llhttp refuses some framing only there (a request with
 * "Transfer-Encoding: chunked<HTAB>"), and px_conn_fail then drops the
 * queued head with the upstream half. A response head is written inside on_headers_complete as
 * px_rs_headers_complete does (1xx/204/304 have no body; chunked toward the
 * client when the upstream was chunked or close-delimited, else the parsed
 * Content-Length; llhttp_finish at the end of input). Bodies go through
 * px_body_frame into an al_bufq, "0\r\n\r\n" ends a chunked one. Not modelled:
 * policy (px_decide, so no path normalisation), secrets, redaction, inflation.
 * Anything px_conn answers with an error (4xx/5xx) or turns into a tunnel
 * (CONNECT, websocket) stops the stream: the accepted prefix is compared.
 *
 * The output goes through a fresh llhttp (strict, default settings, no
 * lenient flag; 1xx/204/304 responses have no body, RFC 9112 6.3) and must
 * give: no parse error; one message per accepted input message, each ending
 * at the output offset where airlock ended it (no leftover, no partial
 * message besides the one airlock was still sending when the input stopped);
 * the same method and target / status and reason; the same header list
 * (Host first, kept headers in order); the same body bytes; at most one
 * framing header, equal to what px_framing_write made from the parsed state
 * (never a peer's Content-Length / Transfer-Encoding text), with llhttp's
 * framing agreeing; no hop-by-hop header and none the input's Connection
 * named (besides airlock's own Host / framing / websocket Upgrade); an
 * upgrade only where airlock meant one; a Connection naming a header airlock
 * relies on was refused, with nothing emitted for that message. The same
 * input in one piece must yield the same messages (split invariance).
 *
 * Known divergence (kept out of the abort path unless FZ_STRICT_TARGET is
 * set): an absolute-form target with a query and no path ("http://h?q")
 * goes upstream as "/" without its query (px_conn_write_request_head uses
 * "/" when path_needs_slash). FZ_DEBUG=1 prints both streams.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proxy/px_http.h"
#include "proxy/px_url.h"

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

/* ---- the airlock side ---------------------------------------------------- */

enum { FZ_P_NONE = 0, FZ_P_HEAD, FZ_P_DONE };

struct fz_px {
    llhttp_t          p;
    struct px_msg     m;
    struct al_bufq    out;
    struct fz_buf     pending; /* a request head not yet flushed upstream */
    struct fz_log     log;
    struct fz_cur     cur;
    int               response;
    int               pause;        /* why llhttp paused */
    int               chunked;      /* this message's body goes out chunked */
    int               want_upgrade; /* a websocket request: the stream is a tunnel after it */
    int               keepalive;    /* llhttp_should_keep_alive at the request head */
    int               refused;      /* px_msg_connection_forbidden refused a head */
    struct px_framing f;            /* request: px_framing_parsed at on_headers_complete */
    const char       *stop;         /* why nothing more is processed */
};

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

static void
fz_emit(struct fz_px *x, const struct al_dbuf *d)
{
    if (al_bufq_write(&x->out, d->data, d->len) != AL_OK)
        abort();
}

/* The request head goes upstream once llhttp took the rest of it. */
static void
fz_commit_head(struct fz_px *x)
{
    if (x->pending.len > 0 && al_bufq_write(&x->out, x->pending.p, x->pending.len) != AL_OK)
        abort();
    x->pending.len = 0;
}

static int
fz_px_begin(llhttp_t *p)
{
    struct fz_px *x = p->data;

    px_msg_reset(&x->m);
    fz_cur_reset(&x->cur);
    x->chunked = 0;
    x->want_upgrade = 0;
    return 0;
}
static int
fz_px_url(llhttp_t *p, const char *at, size_t n)
{
    return px_msg_add(&((struct fz_px *)p->data)->m, PX_PIECE_URL, at, n);
}
static int
fz_px_status(llhttp_t *p, const char *at, size_t n)
{
    return px_msg_add(&((struct fz_px *)p->data)->m, PX_PIECE_STATUS, at, n);
}
static int
fz_px_field(llhttp_t *p, const char *at, size_t n)
{
    return px_msg_add(&((struct fz_px *)p->data)->m, PX_PIECE_FIELD, at, n);
}
static int
fz_px_value(llhttp_t *p, const char *at, size_t n)
{
    return px_msg_add(&((struct fz_px *)p->data)->m, PX_PIECE_VALUE, at, n);
}
static int
fz_px_end(llhttp_t *p)
{
    return px_msg_end_piece(&((struct fz_px *)p->data)->m);
}

/* px_rq_headers_complete: record the framing, pause before any body byte. */
static int
fz_px_rq_head(llhttp_t *p)
{
    struct fz_px *x = p->data;

    if (px_msg_end_piece(&x->m) != 0)
        return -1;
    x->keepalive = llhttp_should_keep_alive(p);
    x->f = px_framing_parsed(p, 0);
    x->pause = FZ_P_HEAD;
    return HPE_PAUSED;
}

/* px_conn_on_head + px_conn_write_request_head (no policy, no secrets). */
static void
fz_px_request_head(struct fz_px *x)
{
    struct px_msg   *m = &x->m;
    llhttp_t        *p = &x->p;
    struct px_target t;
    const char      *err = NULL;
    const char      *url = px_msg_str(m, m->url);
    const char      *target;
    size_t           tlen;
    struct al_dbuf   d;
    int              rc;

    if (p->http_major != 1) {
        x->stop = "505 http_version";
        return;
    }
    if (p->method == HTTP_CONNECT) {
        x->stop = "CONNECT: a tunnel follows";
        return;
    }
    memset(&t, 0, sizeof(t));
    if (m->buf.data == NULL || m->url_len == 0) {
        x->stop = "400 no target";
        return;
    }
    if (url[0] == '/') { /* transparent listener, original port 80 */
        int h = px_msg_find(m, "host", 0);

        if (h < 0 || m->hdrs[h].val == UINT32_MAX || px_msg_find(m, "host", h + 1) >= 0) {
            x->stop = "400 bad_host";
            return;
        }
        if (px_authority_parse(px_msg_str(m, m->hdrs[h].val), m->hdrs[h].val_len, 80, &t, &err) !=
            AL_OK) {
            x->stop = "400 bad Host";
            return;
        }
        t.port = 80;
        t.tls = 0;
        t.path = url;
        t.path_len = m->url_len;
        t.path_needs_slash = 0;
    } else {
        if (px_url_parse_absolute(url, m->url_len, &t, &err) != AL_OK) {
            x->stop = "400 bad_target";
            return;
        }
        if (t.tls) {
            x->stop = "501 https_without_connect";
            return;
        }
    }
    if (!px_msg_te_chunked_only(m)) {
        x->stop = "501 unsupported_transfer_coding";
        return;
    }
    if (p->upgrade) {
        int u = px_msg_find(m, "upgrade", 0);

        x->want_upgrade = u >= 0 && m->hdrs[u].val != UINT32_MAX &&
                          fz_ieq(px_msg_str(m, m->hdrs[u].val), m->hdrs[u].val_len, "websocket");
        if (!x->want_upgrade)
            p->upgrade = 0; /* h2c and the like: stripped, the connection goes on */
    }
    if (px_msg_connection_forbidden(m) != NULL) {
        x->refused = 1;
        x->stop = "400 bad_connection_header";
        return;
    }
    fz_conn_tokens(m, &x->cur.conn);
    fz_check_relied(&x->cur.conn);

    px_msg_drop_hop_by_hop(m, x->want_upgrade);
    px_msg_drop_framing(m);
    for (int i = px_msg_find(m, "host", 0); i >= 0; i = px_msg_find(m, "host", i + 1))
        m->hdrs[i].drop = 1;
    target = t.path_needs_slash ? "/" : t.path;
    tlen = t.path_needs_slash ? 1 : t.path_len;
    /* The target sent on is the input's origin-form path and query. */
    if (t.path_needs_slash) {
        if (getenv("FZ_STRICT_TARGET") != NULL)
            FZ_FAIL("\"%s\" goes upstream as \"/\": the query is lost", url);
    } else if (t.path >= url && t.path < url + m->url_len) {
        if (t.path + t.path_len != url + m->url_len || t.path[0] != '/')
            FZ_FAIL("request target is not the end of the input's");
    } else if (tlen != 1 || target[0] != '/' || memchr(url + 7, '/', m->url_len - 7) != NULL) {
        FZ_FAIL("request target \"%.*s\" not taken from the input", (int)tlen, target);
    }
    x->chunked = x->f.kind == PX_BODY_CHUNKED;

    al_dbuf_init(&d, 4 * FZ_HEAD_CAP);
    {
        const char *lb = t.kind == PX_HOST_IPV6 ? "[" : "";
        const char *rb = t.kind == PX_HOST_IPV6 ? "]" : "";
        char        hv[PX_HOST_MAX + 16];
        int         hn;

        if (t.port == 80)
            hn = snprintf(hv, sizeof(hv), "%s%s%s", lb, t.host, rb);
        else
            hn = snprintf(hv, sizeof(hv), "%s%s%s:%u", lb, t.host, rb, (unsigned)t.port);
        rc = al_dbuf_adds(&d, llhttp_method_name((llhttp_method_t)p->method));
        if (rc == AL_OK)
            rc = al_dbuf_add(&d, " ", 1);
        if (rc == AL_OK)
            rc = al_dbuf_add(&d, target, tlen);
        if (rc == AL_OK)
            rc = al_dbuf_adds(&d, " HTTP/1.1\r\nHost: ");
        if (rc == AL_OK)
            rc = al_dbuf_add(&d, hv, (size_t)hn);
        if (rc == AL_OK)
            rc = al_dbuf_add(&d, "\r\n", 2);
        fzb_add(&x->cur.url, target, tlen);
        fzb_add(&x->cur.hdrs, "Host", 5);
        fzb_add(&x->cur.hdrs, hv, (size_t)hn + 1);
    }
    if (rc == AL_OK)
        rc = px_msg_write_headers(m, &d);
    fz_kept_headers(m, &x->cur.hdrs);
    if (rc == AL_OK) {
        struct al_dbuf fb;

        rc = px_framing_write(&x->f, &d);
        al_dbuf_init(&fb, 256);
        if (px_framing_write(&x->f, &fb) != AL_OK)
            abort();
        fzb_add(&x->cur.frame, fb.data, fb.len);
        al_dbuf_free(&fb);
    }
    if (rc == AL_OK && x->want_upgrade) {
        rc = al_dbuf_adds(&d, "Connection: upgrade\r\n");
        fzb_add(&x->cur.hdrs, "Connection\0upgrade", 19);
    }
    if (rc == AL_OK)
        rc = al_dbuf_add(&d, "\r\n", 2);
    if (rc != AL_OK)
        FZ_FAIL("re-serialising a request head failed");
    fzb_add(&x->pending, d.data, d.len); /* px_conn queues it in up.out */
    al_dbuf_free(&d);
}

/* px_rs_headers_complete for a GET from an HTTP/1.1 keep-alive client. */
static int
fz_px_rs_head(llhttp_t *p)
{
    struct fz_px  *x = p->data;
    struct px_msg *m = &x->m;
    int            status = p->status_code;
    int            interim = status >= 100 && status < 200 && status != 101;
    int            nobody = interim || status == 204 || status == 304;
    struct al_dbuf d;
    int            rc;

    if (px_msg_end_piece(m) != 0)
        return -1;
    if (status == 101)
        return -1; /* a switch nobody asked for */
    if (status < 100 || status > 999)
        return -1;
    if (!px_msg_te_chunked_only(m))
        return -1;
    if (px_msg_connection_forbidden(m) != NULL) {
        x->refused = 1;
        return -1;
    }
    fz_conn_tokens(m, &x->cur.conn);
    fz_check_relied(&x->cur.conn);
    px_msg_drop_hop_by_hop(m, 0);
    px_msg_drop_framing(m);
    al_dbuf_init(&d, 4 * FZ_HEAD_CAP);
    {
        char sl[13] = "HTTP/1.1 000 ";

        sl[9] = (char)('0' + status / 100);
        sl[10] = (char)('0' + status / 10 % 10);
        sl[11] = (char)('0' + status % 10);
        rc = al_dbuf_add(&d, sl, sizeof(sl));
    }
    if (rc == AL_OK && m->status_text_len)
        rc = al_dbuf_add(&d, px_msg_str(m, m->status_text), m->status_text_len);
    if (m->status_text_len)
        fzb_add(&x->cur.url, px_msg_str(m, m->status_text), m->status_text_len);
    if (rc == AL_OK)
        rc = al_dbuf_add(&d, "\r\n", 2);
    if (rc == AL_OK)
        rc = px_msg_write_headers(m, &d);
    fz_kept_headers(m, &x->cur.hdrs);
    x->chunked = 0;
    if (!interim) {
        struct px_framing f = px_framing_parsed(p, nobody);
        struct px_framing g = {PX_BODY_NONE, 0};
        struct al_dbuf    fb;

        if (f.kind == PX_BODY_CHUNKED || f.kind == PX_BODY_CLOSE) {
            x->chunked = 1;
            g.kind = PX_BODY_CHUNKED;
        } else if (f.kind == PX_BODY_LENGTH ||
                   ((p->flags & F_CONTENT_LENGTH) && nobody && status != 204)) {
            struct px_framing len = {PX_BODY_LENGTH, p->content_length};

            g = len;
            if (rc == AL_OK)
                rc = px_framing_write(&len, &d);
        }
        if (rc == AL_OK && x->chunked)
            rc = al_dbuf_adds(&d, "Transfer-Encoding: chunked\r\n");
        al_dbuf_init(&fb, 256);
        if (px_framing_write(&g, &fb) != AL_OK)
            abort();
        fzb_add(&x->cur.frame, fb.data, fb.len);
        al_dbuf_free(&fb);
    }
    if (rc == AL_OK)
        rc = al_dbuf_add(&d, "\r\n", 2);
    if (rc != AL_OK)
        FZ_FAIL("re-serialising a response head failed");
    fz_emit(x, &d);
    al_dbuf_free(&d);
    return nobody ? 1 : 0;
}

static int
fz_px_body(llhttp_t *p, const char *at, size_t n)
{
    struct fz_px *x = p->data;

    fz_commit_head(x);
    fzb_add(&x->cur.body, at, n);
    return px_body_frame(&x->out, x->chunked, at, n) == AL_OK ? 0 : -1;
}

static int
fz_px_done(llhttp_t *p)
{
    struct fz_px  *x = p->data;
    struct fz_rec *r;
    int            interim = 0;

    fz_commit_head(x);
    if (x->chunked && al_bufq_write(&x->out, "0\r\n\r\n", 5) != AL_OK)
        return -1;
    r = fz_log_push(&x->log, &x->cur);
    r->code = x->response ? p->status_code : p->method;
    r->upgrade = x->want_upgrade;
    r->end = al_bufq_len(&x->out);
    if (x->response) {
        interim = p->status_code >= 100 && p->status_code < 200;
        if (interim) { /* forwarded; the final answer follows on the same parser */
            px_msg_reset(&x->m);
            return 0;
        }
    }
    x->pause = FZ_P_DONE;
    return HPE_PAUSED;
}

static llhttp_settings_t fz_px_rq_settings, fz_px_rs_settings;
static llhttp_settings_t fz_ref_settings_rq, fz_ref_settings_rs;

/* Runs the stream through the airlock side in the given pieces. */
static void
fz_px_run(struct fz_px *x, int response, const char *in, const size_t *cut, int npieces)
{
    struct px_head_scan hs = {0, 0};
    size_t              head_bytes = 0;
    int                 in_head = 1, zero = 0;

    memset(x, 0, sizeof(*x));
    x->response = response;
    px_msg_init(&x->m, FZ_HEAD_CAP);
    al_bufq_init(&x->out, (size_t)1 << 30);
    llhttp_init(&x->p, response ? HTTP_RESPONSE : HTTP_REQUEST,
                response ? &fz_px_rs_settings : &fz_px_rq_settings);
    x->p.data = x;
    for (int i = 0; i < npieces && x->stop == NULL; i++) {
        const char *at = in + cut[i];
        size_t      len = cut[i + 1] - cut[i];

        for (;;) {
            llhttp_errno_t e;
            size_t         used, feed = zero ? 0 : len;
            int            was_zero = zero;

            zero = 0;
            x->pause = FZ_P_NONE;
            e = llhttp_execute(&x->p, at, feed);
            used = e == HPE_OK ? feed : (size_t)(llhttp_get_error_pos(&x->p) - at);
            if (used > feed)
                abort();
            if (!response && in_head) {
                const char *bad = px_http_head_scan(&hs, at, used);

                if (bad != NULL) {
                    x->stop = bad;
                    break;
                }
                head_bytes += used;
                if (head_bytes > FZ_HEAD_CAP) {
                    x->stop = "431 header_too_large";
                    break;
                }
            }
            at += used;
            len -= used;
            if (e != HPE_OK && e != HPE_PAUSED && e != HPE_PAUSED_UPGRADE) {
                /* px_conn_fail closes the upstream half: a head still
                 * queued there never leaves. */
                x->pending.len = 0;
                x->stop = llhttp_errno_name(e);
                break;
            }
            fz_commit_head(x);
            if (e == HPE_OK) {
                if (was_zero && len > 0)
                    continue;
                break;
            }
            if (e == HPE_PAUSED && x->pause == FZ_P_HEAD) {
                in_head = 0;
                fz_px_request_head(x);
                if (x->stop != NULL)
                    break;
                llhttp_resume(&x->p);
                /* px_conn_upstream_ready: llhttp_execute(&c->rq, "", 0)
                 * before the queued head is flushed */
                zero = 1;
                continue;
            }
            if (e == HPE_PAUSED && x->pause == FZ_P_DONE) {
                if (!response && x->want_upgrade) {
                    x->stop = "websocket: a tunnel follows";
                    break;
                }
                if (!response && !x->keepalive) {
                    x->stop = "no keep-alive";
                    break;
                }
                in_head = 1;
                head_bytes = 0;
                memset(&hs, 0, sizeof(hs));
                llhttp_resume(&x->p);
                continue;
            }
            x->stop = "upgrade";
            break;
        }
    }
    if (x->stop == NULL && response) {
        /* The upstream closed: a close-delimited body ends here. */
        x->pause = FZ_P_NONE;
        (void)llhttp_finish(&x->p);
    }
}

static void
fz_px_free(struct fz_px *x)
{
    px_msg_free(&x->m);
    al_bufq_free(&x->out);
    fzb_free(&x->pending);
    fz_log_free(&x->log);
    fz_cur_free(&x->cur);
}

/* ---- the reference side: a fresh strict llhttp over airlock's output ---- */

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
        FZ_FAIL("message %d: framing header differs from px_framing_write's", i);
    if (rest.len != a->hdrs.len ||
        (rest.len > 0 && memcmp(rest.p, al->s.p + a->hdrs.off, rest.len) != 0))
        FZ_FAIL("message %d: header list differs", i);
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
fz_flatten(struct al_bufq *q, struct fz_buf *out)
{
    const char *p;
    size_t      n;

    while ((p = al_bufq_peek(q, &n)) != NULL && n > 0) {
        fzb_add(out, p, n);
        al_bufq_skip(q, n);
    }
}

static void
fz_settings_init(void)
{
    llhttp_settings_t *px[2] = {&fz_px_rq_settings, &fz_px_rs_settings};
    llhttp_settings_t *ref[2] = {&fz_ref_settings_rq, &fz_ref_settings_rs};

    for (int k = 0; k < 2; k++) {
        llhttp_settings_t *s = px[k], *r = ref[k];

        llhttp_settings_init(s);
        s->on_message_begin = fz_px_begin;
        s->on_url = fz_px_url;
        s->on_url_complete = fz_px_end;
        s->on_status = fz_px_status;
        s->on_status_complete = fz_px_end;
        s->on_header_field = fz_px_field;
        s->on_header_field_complete = fz_px_end;
        s->on_header_value = fz_px_value;
        s->on_header_value_complete = fz_px_end;
        s->on_headers_complete = k == 0 ? fz_px_rq_head : fz_px_rs_head;
        s->on_body = fz_px_body;
        s->on_message_complete = fz_px_done;

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

static void
fz_one(struct fz_px *x, int response, const char *in, const size_t *cut, int npieces)
{
    struct fz_buf out = {0};

    fz_px_run(x, response, in, cut, npieces);
    fz_flatten(&x->out, &out);
    if (fz_debug) {
        fprintf(stderr, "%s, %d piece(s), %d message(s) accepted, stop: %s\n",
                response ? "responses" : "requests", npieces, x->log.n,
                x->stop ? x->stop : "end of input");
        fz_dump("output", out.p ? out.p : "", out.len);
    }
    fz_ref_check(x, out.p ? out.p : "", out.len);
    fzb_free(&out);
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
