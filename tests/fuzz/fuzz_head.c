/*
 * fuzz_head.c - request heads through the real HTTP/1.1 codec (proxy/px_h1.c:
 * px_h1_request_parser on a fake connection, its llhttp callbacks filling
 * the exchange's px_msg and pausing at the end of the head), the raw-byte
 * smuggling checks, hop-by-hop stripping and re-serialisation, and the
 * request head the codec writes toward the upstream (px_h1_request_prepare
 * + px_h1_request_head).
 *
 * Input: byte 0 = number of pieces (1..3, low 2 bits), keep_upgrade (bit 2)
 * and the head cap (bits 3-4: 64 KiB, 64 KiB, 1 KiB, 128 B); bytes 1 and 2 =
 * split points (scaled over the rest); the rest = the bytes a client sends.
 *
 * Oracles: when the head is accepted (llhttp paused at the head, !bad,
 * !too_big, raw scan clean) the re-serialised headers are well-formed
 * "token: value\r\n" lines without CR/LF/NUL inside and without hop-by-hop
 * names; a raw scan fed in pieces flags whatever the one-shot scan flags.
 * For an accepted absolute-form http:// target, the head written into
 * up.out is "METHOD target HTTP/1.1", one Host, well-formed lines whose
 * only framing header is the codec's own, and a fresh strict llhttp reads
 * it back as one complete head with the same method and the framing the
 * client's request had.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proxy/px_phase.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const fz_hop[] = {"connection",
                                     "proxy-connection",
                                     "proxy-authorization",
                                     "proxy-authenticate",
                                     "keep-alive",
                                     "te",
                                     "trailer",
                                     "transfer-encoding",
                                     NULL};

/*
 * Checks header lines p..end ("Name: value\r\n" each); aborts on a
 * malformed line. written: lines of the upstream head, where the codec's
 * own framing line and "Connection: upgrade" (keep_upgrade) may appear
 * once, and Host is not allowed (it was written before these).
 */
static void
fz_check_lines(const char *p, const char *end, int keep_upgrade, int written)
{
    int framing = 0, conn = 0;

    if (memchr(p, '\0', (size_t)(end - p)) != NULL)
        abort();
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *colon;
        size_t      nlen;

        if (eol == NULL || eol == p || eol[-1] != '\r')
            abort(); /* every line ends in CRLF */
        colon = memchr(p, ':', (size_t)(eol - p));
        if (colon == NULL || colon == p || colon + 1 >= eol || colon[1] != ' ')
            abort();
        nlen = (size_t)(colon - p);
        if (!px_http_is_token(p, nlen))
            abort();
        if (memchr(p, '\r', (size_t)(eol - 1 - p)) != NULL)
            abort(); /* bare CR inside a line */
        if (written && ((nlen == 17 && strncmp(p, "Transfer-Encoding", 17) == 0 &&
                         strncmp(colon, ": chunked\r\n", 11) == 0) ||
                        (nlen == 14 && strncmp(p, "Content-Length", 14) == 0))) {
            if (framing++ > 0)
                abort(); /* one framing header, the codec's */
        } else if (written && keep_upgrade && nlen == 10 && strncmp(p, "Connection", 10) == 0 &&
                   strncmp(colon, ": upgrade\r\n", 11) == 0) {
            if (conn++ > 0)
                abort();
        } else {
            for (int k = 0; fz_hop[k] != NULL; k++)
                if (strlen(fz_hop[k]) == nlen && strncasecmp(p, fz_hop[k], nlen) == 0)
                    abort();
            if (!keep_upgrade && nlen == 7 && strncasecmp(p, "upgrade", 7) == 0)
                abort();
            if (written && nlen == 14 && strncasecmp(p, "content-length", 14) == 0)
                abort(); /* a client's length never passes */
            if (written && nlen == 4 && strncasecmp(p, "host", 4) == 0)
                abort(); /* the target's authority is the one Host */
        }
        p = eol + 1;
    }
}

/* A fresh strict parser that stops at the end of the head. */
static int
fz_reparse_head_done(llhttp_t *p)
{
    (void)p;
    return HPE_PAUSED;
}

/* The head the codec wrote toward the upstream, checked and read back. */
static void
fz_check_upstream_head(struct px_conn *c, const char *out, size_t n, int keep_upgrade)
{
    static llhttp_settings_t s;
    static int               s_init;
    struct px_exch          *x = c->x;
    const char              *eol, *host, *end = out + n;
    const char              *meth = llhttp_method_name(c->rq.method);
    size_t                   ml = strlen(meth);
    llhttp_t                 p;
    llhttp_errno_t           e;

    if (!s_init) {
        llhttp_settings_init(&s);
        s.on_headers_complete = fz_reparse_head_done;
        s_init = 1;
    }
    if (n < 4 || memcmp(end - 4, "\r\n\r\n", 4) != 0)
        abort();
    eol = memchr(out, '\n', n);
    if (eol == NULL || (size_t)(eol - out) < ml + 12 || memcmp(out, meth, ml) != 0 ||
        out[ml] != ' ' || memcmp(eol - 10, " HTTP/1.1\r", 10) != 0)
        abort();
    host = eol + 1;
    if ((size_t)(end - host) < 8 || memcmp(host, "Host: ", 6) != 0)
        abort();
    eol = memchr(host, '\n', (size_t)(end - host));
    if (eol == NULL)
        abort();
    fz_check_lines(eol + 1, end - 2, keep_upgrade, 1);

    llhttp_init(&p, HTTP_REQUEST, &s);
    e = llhttp_execute(&p, out, n);
    if (e != HPE_PAUSED || llhttp_get_error_pos(&p) != end) {
        if (getenv("FZ_DEBUG") != NULL)
            fprintf(stderr, "reparse: %s (%s) out=[%.*s]\n", llhttp_errno_name(e),
                    llhttp_get_error_reason(&p), (int)n, out);
        abort(); /* one complete head, nothing after it */
    }
    if (p.method != c->rq.method)
        abort();
    /* The body ends upstream where it ended on the client side. */
    if ((x->req_framing.kind == PX_BODY_CHUNKED) != ((p.flags & F_CHUNKED) != 0))
        abort();
    if (x->req_framing.kind == PX_BODY_LENGTH &&
        (!(p.flags & F_CONTENT_LENGTH) || p.content_length != x->req_framing.len))
        abort();
    if (x->req_framing.kind == PX_BODY_NONE && (p.flags & (F_CONTENT_LENGTH | F_CHUNKED)))
        abort();
}

/* The fake worker and snapshot the connections of every input share. */
static struct px_worker fz_w;
static struct px_conf  *fz_conf;

static struct px_conn *
fz_conn_new(size_t cap)
{
    struct px_conn *c;

    if (fz_conf == NULL) {
        fz_w.loop = ev_loop_new(0);
        fz_conf = al_calloc(1, sizeof(*fz_conf));
        if (fz_w.loop == NULL || fz_conf == NULL)
            abort();
        fz_conf->refs = 1;
        fz_w.conf = fz_conf;
    }
    fz_conf->limits.header_bytes = cap;
    c = al_calloc(1, sizeof(*c));
    if (c == NULL)
        abort();
    c->worker = &fz_w;
    c->conf = px_conf_ref(fz_conf);
    c->cl.fd = c->up.fd = -1;
    c->cl.conn = c->up.conn = c;
    al_bufq_init(&c->cl.out, PX_BUF_HIGH_BYTES);
    al_bufq_init(&c->up.out, PX_BUF_HIGH_BYTES);
    px_h1_request_parser(c);
    return c;
}

static void
fz_conn_free(struct px_conn *c)
{
    px_exch_free(c->x);
    al_bufq_free(&c->cl.out);
    al_bufq_free(&c->up.out);
    px_conf_unref(c->conf);
    al_free(c);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const size_t caps[4] = {65536, 65536, 1024, 128};
    struct px_conn     *c;
    struct px_msg      *m;
    llhttp_errno_t      e = HPE_OK;
    struct px_head_scan hs = {0, 0}, hs1 = {0, 0};
    const char         *bad = NULL, *bad1;
    const char         *req;
    size_t              n, cut[4], npieces, head_len = 0;
    int                 keep_upgrade, accepted;
    struct al_dbuf      out;

    if (size < 3)
        return 0;
    npieces = 1 + (data[0] & 3) % 3;
    keep_upgrade = (data[0] >> 2) & 1;
    req = (const char *)data + 3;
    n = size - 3;
    cut[0] = 0;
    cut[1] = npieces > 1 ? (size_t)data[1] * n / 255 : n;
    cut[2] = npieces > 2 ? (size_t)data[2] * n / 255 : n;
    if (cut[2] < cut[1]) {
        size_t t = cut[1];
        cut[1] = cut[2];
        cut[2] = t;
    }
    cut[3] = n;

    c = fz_conn_new(caps[(data[0] >> 3) & 3]);
    for (size_t i = 0; i < 3 && e == HPE_OK && bad == NULL; i++) {
        const char *at = req + cut[i];
        size_t      len = cut[i + 1] - cut[i], used;

        if (i > 0 && i >= npieces)
            break;
        if (i == npieces - 1)
            len = n - cut[i];
        e = llhttp_execute(&c->rq, at, len);
        used = e == HPE_OK ? len : (size_t)(llhttp_get_error_pos(&c->rq) - at);
        if (used > len)
            abort();
        bad = px_http_head_scan(&hs, at, used);
        head_len = (size_t)(at - req) + used;
    }
    /* The same head bytes in one piece: a split must not hide a problem. */
    bad1 = px_http_head_scan(&hs1, req, head_len);
    if (bad1 != NULL && bad == NULL && e == HPE_OK)
        abort();
    if (bad1 != NULL && bad == NULL && e == HPE_PAUSED)
        abort();
    if (c->x == NULL) { /* no message began */
        if (e == HPE_PAUSED)
            abort();
        fz_conn_free(c);
        return 0;
    }
    m = &c->x->req;
    /* The codec pauses exactly at the end of a head (and nowhere else
     * before the body: no resume here). */
    if (e == HPE_PAUSED && llhttp_get_error_pos(&c->rq) != req + head_len)
        abort();

    (void)px_msg_find(m, "host", 0);
    (void)px_msg_connection_has(m, "close");
    px_msg_drop_hop_by_hop(m, keep_upgrade);
    al_dbuf_init(&out, 1 << 20);
    accepted = e == HPE_PAUSED && !m->bad && !m->too_big && bad == NULL;
    if (px_msg_write_headers(m, &out) == AL_OK && accepted) {
        if (m->url_len != strlen(px_msg_str(m, m->url)))
            abort();
        if (getenv("FZ_DEBUG") != NULL)
            fprintf(stderr, "url=[%s] nhdrs=%d out=[%.*s]\n", px_msg_str(m, m->url), m->nhdrs,
                    (int)out.len, out.data ? out.data : "");
        if (out.len > 0)
            fz_check_lines(out.data, out.data + out.len, keep_upgrade, 0);
    }
    al_dbuf_free(&out);

    /* The head toward the upstream, as the machine writes it for an
     * absolute-form http:// request (no secrets: the kept headers as
     * they are). */
    if (accepted && c->rq.http_major == 1 && c->rq.method != HTTP_CONNECT &&
        px_msg_te_chunked_only(m) && px_msg_connection_forbidden(m) == NULL) {
        struct px_exch *x = c->x;
        const char     *err = NULL;

        if (px_url_parse_absolute(px_msg_str(m, m->url), m->url_len, &x->target, &err) == AL_OK &&
            !x->target.tls) {
            const char    *target = x->target.path_needs_slash ? "/" : x->target.path;
            size_t         tlen = x->target.path_needs_slash ? 1 : x->target.path_len;
            struct al_dbuf hb;

            x->want_upgrade = keep_upgrade;
            px_h1_request_prepare(c);
            al_dbuf_init(&hb, c->conf->limits.header_bytes * 2 + 4096);
            if (px_msg_write_headers(m, &hb) == AL_OK &&
                px_h1_request_head(c, target, tlen, &hb) == AL_OK) {
                struct al_dbuf up;
                const char    *p;
                size_t         k;

                al_dbuf_init(&up, 4 << 20);
                while ((p = al_bufq_peek(&c->up.out, &k)) != NULL && k > 0) {
                    if (al_dbuf_add(&up, p, k) != AL_OK)
                        abort();
                    al_bufq_skip(&c->up.out, k);
                }
                fz_check_upstream_head(c, up.data, up.len, keep_upgrade);
                al_dbuf_free(&up);
            }
            al_dbuf_free(&hb);
        }
    }
    fz_conn_free(c);
    return 0;
}
