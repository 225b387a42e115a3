/*
 * px_http.c - head collection from llhttp callbacks, hop-by-hop handling,
 * re-serialisation and error answers.
 *
 * Invariants: every string in px_msg.buf is NUL-terminated once its piece
 * ends; header names and values never contain CR, LF or NUL (llhttp in
 * strict mode refuses them, and px_msg_add checks again, so a value can't
 * smuggle a second header line into what we re-serialise).
 */
#include "px_http.h"

#include "px_inflate.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

static enum px_hdr_id px_hdr_classify_token(const char *n, size_t len);

void
px_msg_init(struct px_msg *m, size_t cap)
{
    memset(m, 0, sizeof(*m));
    al_dbuf_init(&m->buf, cap);
}

void
px_msg_reset(struct px_msg *m)
{
    /* The header slots are not cleared: px_msg_add initialises each one it
     * hands out, so a reset costs nothing per slot. */
    m->url = m->url_len = 0;
    m->status_text = m->status_text_len = 0;
    m->nhdrs = 0;
    m->piece = PX_PIECE_NONE;
    m->too_big = m->bad = 0;
    al_dbuf_reset(&m->buf);
}

void
px_msg_free(struct px_msg *m)
{
    al_safefree(m->hdrs);
    m->hdrs_cap = 0;
    m->nhdrs = 0;
    al_dbuf_free(&m->buf);
}

int
px_msg_end_piece(struct px_msg *m)
{
    uint32_t end;

    if (m->piece == PX_PIECE_NONE)
        return 0;
    end = (uint32_t)m->buf.len;
    switch (m->piece) {
    case PX_PIECE_URL:
        m->url_len = end - m->url;
        break;
    case PX_PIECE_STATUS:
        m->status_text_len = end - m->status_text;
        break;
    case PX_PIECE_FIELD: {
        struct px_hdr *h = &m->hdrs[m->nhdrs - 1];

        h->name_len = end - h->name;
        if (h->name_len == 0) {
            m->bad = 1; /* ": x" would re-serialise as a nameless header */
            return -1;
        }
        /* px_msg_add let only token bytes into a name */
        h->id = (uint8_t)px_hdr_classify_token(px_msg_str(m, h->name), h->name_len);
        break;
    }
    case PX_PIECE_VALUE:
        m->hdrs[m->nhdrs - 1].val_len = end - m->hdrs[m->nhdrs - 1].val;
        break;
    case PX_PIECE_NONE:
        break;
    }
    m->piece = PX_PIECE_NONE;
    if (px_dbuf_put(&m->buf, "", 1) != AL_OK) { /* the NUL terminator */
        m->too_big = 1;
        return -1;
    }
    return 0;
}

int
px_msg_add(struct px_msg *m, enum px_msg_piece piece, const char *at, size_t len)
{
    /* A piece may be empty (llhttp flushes spans at read boundaries); an
     * empty *name* is caught when the piece ends. A name is a token (which
     * has no CR, LF or NUL); nothing else may hold CR, LF or NUL. */
    if (piece == PX_PIECE_FIELD ? !px_http_is_token(at, len) : px_http_has_crlfnul(at, len)) {
        m->bad = 1;
        return -1;
    }
    if (m->piece != piece) {
        if (px_msg_end_piece(m) != 0)
            return -1;
        switch (piece) {
        case PX_PIECE_URL:
            m->url = (uint32_t)m->buf.len;
            break;
        case PX_PIECE_STATUS:
            m->status_text = (uint32_t)m->buf.len;
            break;
        case PX_PIECE_FIELD:
            if (m->nhdrs >= PX_HTTP_MAX_HEADERS) {
                m->too_big = 1;
                return -1;
            }
            if (m->nhdrs == m->hdrs_cap) {
                /* Most heads have a dozen headers: start small, double. */
                int            ncap = m->hdrs_cap ? m->hdrs_cap * 2 : PX_HTTP_FIRST_HEADERS;
                struct px_hdr *nh;

                if (ncap > PX_HTTP_MAX_HEADERS)
                    ncap = PX_HTTP_MAX_HEADERS;
                nh = al_realloc(m->hdrs, (size_t)ncap * sizeof(*nh));
                if (nh == NULL) {
                    m->too_big = 1;
                    return -1;
                }
                m->hdrs = nh;
                m->hdrs_cap = ncap;
            }
            memset(&m->hdrs[m->nhdrs], 0, sizeof(m->hdrs[0]));
            m->hdrs[m->nhdrs].name = (uint32_t)m->buf.len;
            m->hdrs[m->nhdrs].val = UINT32_MAX;
            m->nhdrs++;
            break;
        case PX_PIECE_VALUE:
            if (m->nhdrs == 0) {
                m->bad = 1;
                return -1;
            }
            m->hdrs[m->nhdrs - 1].val = (uint32_t)m->buf.len;
            break;
        case PX_PIECE_NONE:
            break;
        }
        m->piece = piece;
    }
    if (px_dbuf_put(&m->buf, at, len) != AL_OK) {
        m->too_big = 1;
        return -1;
    }
    return 0;
}

/* n equals the lower-case literal lit (letters, digits, '-'), for a token n:
 * OR 0x20 folds A-Z onto a-z, and the only other bytes it maps onto a letter,
 * a digit or '-' are control bytes, which no token holds. 8 bytes a step. */
static int
px_hdr_lc_eq(const char *n, const char *lit, size_t len)
{
    size_t i = 0;

    for (; i + 8 <= len; i += 8) {
        uint64_t a, b;

        memcpy(&a, n + i, 8);
        memcpy(&b, lit + i, 8);
        if ((a | 0x2020202020202020ULL) != b)
            return 0;
    }
    for (; i < len; i++)
        if (((unsigned char)n[i] | 0x20) != (unsigned char)lit[i])
            return 0;
    return 1;
}

/* px_hdr_classify for a name known to be a token (a parsed one). */
static enum px_hdr_id
px_hdr_classify_token(const char *n, size_t len)
{
#define PX_IS(lit) px_hdr_lc_eq(n, lit, len)
    switch (len) {
    case 2:
        return PX_IS("te") ? PX_H_TE : PX_H_OTHER;
    case 4:
        return PX_IS("host") ? PX_H_HOST : PX_H_OTHER;
    case 6:
        return PX_IS("expect") ? PX_H_EXPECT : PX_H_OTHER;
    case 7:
        return PX_IS("upgrade") ? PX_H_UPGRADE : PX_IS("trailer") ? PX_H_TRAILER : PX_H_OTHER;
    case 10:
        return PX_IS("connection")   ? PX_H_CONNECTION
               : PX_IS("keep-alive") ? PX_H_KEEP_ALIVE
                                     : PX_H_OTHER;
    case 14:
        return PX_IS("content-length")   ? PX_H_CONTENT_LENGTH
               : PX_IS("http2-settings") ? PX_H_HTTP2_SETTINGS
                                         : PX_H_OTHER;
    case 16:
        return PX_IS("proxy-connection")   ? PX_H_PROXY_CONNECTION
               : PX_IS("content-encoding") ? PX_H_CONTENT_ENCODING
                                           : PX_H_OTHER;
    case 17:
        return PX_IS("transfer-encoding") ? PX_H_TRANSFER_ENCODING : PX_H_OTHER;
    case 18:
        return PX_IS("proxy-authenticate") ? PX_H_PROXY_AUTHENTICATE : PX_H_OTHER;
    case 19:
        return PX_IS("proxy-authorization") ? PX_H_PROXY_AUTHORIZATION : PX_H_OTHER;
    default:
        return PX_H_OTHER;
    }
#undef PX_IS
}

enum px_hdr_id
px_hdr_classify(const char *n, size_t len)
{
    return px_http_is_token(n, len) ? px_hdr_classify_token(n, len) : PX_H_OTHER;
}

int
px_msg_find_id(const struct px_msg *m, enum px_hdr_id id, int from)
{
    for (int i = from < 0 ? 0 : from; i < m->nhdrs; i++)
        if (m->hdrs[i].id == id)
            return i;
    return -1;
}

int
px_msg_find(const struct px_msg *m, const char *name, int from)
{
    size_t len = strlen(name);

    for (int i = from < 0 ? 0 : from; i < m->nhdrs; i++) {
        const struct px_hdr *h = &m->hdrs[i];

        if (h->name_len == len && al_strcaseeq_n(px_msg_str(m, h->name), len, name))
            return i;
    }
    return -1;
}

/* Calls fn for each comma-separated, trimmed element of every header of
 * that id (a list-valued header); stops at the first fn that returns nonzero. */
static int
px_msg_list_tokens(const struct px_msg *m, enum px_hdr_id               id,
                   int (*fn)(void *arg, const char *t, size_t n), void *arg)
{
    for (int i = px_msg_find_id(m, id, 0); i >= 0; i = px_msg_find_id(m, id, i + 1)) {
        const char *v = m->hdrs[i].val == UINT32_MAX ? "" : px_msg_str(m, m->hdrs[i].val);
        const char *p = v;

        while (*p != '\0') {
            const char *s, *e;

            while (*p == ' ' || *p == '\t' || *p == ',')
                p++;
            s = p;
            while (*p != '\0' && *p != ',')
                p++;
            e = p;
            while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
                e--;
            if (e > s && fn(arg, s, (size_t)(e - s)))
                return 1;
        }
    }
    return 0;
}

/* Transfer-Encoding elements: bit 0 set by "chunked", bit 1 by anything else
 * or by a second "chunked". */
static int
px_msg_te_element(void *arg, const char *t, size_t n)
{
    int *seen = arg;

    if (al_strcaseeq_n(t, n, "chunked") && !(*seen & 1))
        *seen |= 1;
    else
        *seen |= 2;
    return 0;
}

int
px_msg_te_chunked_only(const struct px_msg *m)
{
    int seen = 0;

    (void)px_msg_list_tokens(m, PX_H_TRANSFER_ENCODING, px_msg_te_element, &seen);
    return (seen & 2) == 0;
}

struct px_conn_tok_find {
    const char *want;
};

static int
px_msg_tok_eq(void *arg, const char *t, size_t n)
{
    const struct px_conn_tok_find *f = arg;

    return al_strcaseeq_n(t, n, f->want);
}

int
px_msg_connection_has(const struct px_msg *m, const char *token)
{
    struct px_conn_tok_find f = {token};

    return px_msg_list_tokens(m, PX_H_CONNECTION, px_msg_tok_eq, &f);
}

struct px_drop_ctx {
    struct px_msg *m;
    int            keep_upgrade;
};

static int
px_msg_drop_named(void *arg, const char *t, size_t n)
{
    struct px_drop_ctx *d = arg;
    struct px_msg      *m = d->m;

    if (d->keep_upgrade && al_strcaseeq_n(t, n, "upgrade"))
        return 0;
    for (int i = 0; i < m->nhdrs; i++) {
        const struct px_hdr *h = &m->hdrs[i];

        if (h->name_len == n && strncasecmp(px_msg_str(m, h->name), t, n) == 0)
            m->hdrs[i].drop = 1;
    }
    return 0;
}

void
px_msg_drop_hop_by_hop(struct px_msg *m, int keep_upgrade)
{
    struct px_drop_ctx d = {m, keep_upgrade};

    (void)px_msg_list_tokens(m, PX_H_CONNECTION, px_msg_drop_named, &d);
    /* Runs for every header of every request and response: the ids were
     * told apart as the names were parsed. */
    for (int i = 0; i < m->nhdrs; i++) {
        uint8_t id = m->hdrs[i].id;

        if (id >= PX_H_CONNECTION && id <= PX_H_HTTP2_SETTINGS &&
            !(keep_upgrade && id == PX_H_UPGRADE))
            m->hdrs[i].drop = 1;
    }
}

struct px_framing
px_framing_parsed(const llhttp_t *p, int nobody)
{
    struct px_framing f = {PX_BODY_NONE, 0};

    if (nobody)
        return f;
    if (p->flags & F_CHUNKED) {
        f.kind = PX_BODY_CHUNKED;
    } else if (p->flags & F_CONTENT_LENGTH) {
        f.kind = PX_BODY_LENGTH;
        f.len = p->content_length;
    } else if (p->type == HTTP_RESPONSE) {
        f.kind = PX_BODY_CLOSE; /* RFC 9112 6.3 rule 8 */
    }
    return f; /* a request without either has no body (rule 7) */
}

int
px_framing_write(const struct px_framing *f, struct al_dbuf *out)
{
    char     num[24];
    size_t   n = sizeof(num);
    uint64_t v = f->len;

    switch (f->kind) {
    case PX_BODY_CHUNKED:
        return al_dbuf_adds(out, "Transfer-Encoding: chunked\r\n");
    case PX_BODY_LENGTH:
        do { /* no printf: this runs for every message */
            num[--n] = (char)('0' + v % 10);
            v /= 10;
        } while (v != 0);
        if (al_dbuf_adds(out, "Content-Length: ") != AL_OK ||
            px_dbuf_put(out, num + n, sizeof(num) - n) != AL_OK)
            return AL_ERROR;
        return px_dbuf_put(out, "\r\n", 2);
    case PX_BODY_NONE:
    case PX_BODY_CLOSE:
        break;
    }
    return AL_OK;
}

int
px_body_frame(struct al_bufq *q, int chunked, const char *at, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    char              hdr[24];
    size_t            n = sizeof(hdr) - 2, v = len;

    if (len == 0) /* an empty chunk would end the body */
        return AL_OK;
    if (!chunked)
        return al_bufq_write(q, at, len);
    hdr[sizeof(hdr) - 2] = '\r';
    hdr[sizeof(hdr) - 1] = '\n';
    do {
        hdr[--n] = hex[v & 15];
        v >>= 4;
    } while (v != 0);
    if (al_bufq_write(q, hdr + n, sizeof(hdr) - n) != AL_OK || al_bufq_write(q, at, len) != AL_OK ||
        al_bufq_write(q, "\r\n", 2) != AL_OK)
        return AL_ERROR;
    return AL_OK;
}

void
px_msg_drop_framing(struct px_msg *m)
{
    for (int i = 0; i < m->nhdrs; i++) {
        if (m->hdrs[i].id == PX_H_CONTENT_LENGTH || m->hdrs[i].id == PX_H_TRANSFER_ENCODING)
            m->hdrs[i].drop = 1;
    }
}

static int
px_msg_forbidden_tok(void *arg, const char *t, size_t n)
{
    static const char *const relied[] = {
        "host",   "content-length",    "transfer-encoding",   "content-encoding",
        "expect", "x-airlock-session", "x-airlock-tool-call", NULL};
    const char **hit = arg;

    for (int k = 0; relied[k] != NULL; k++) {
        if (al_strcaseeq_n(t, n, relied[k])) {
            *hit = relied[k];
            return 1;
        }
    }
    return 0;
}

const char *
px_msg_connection_forbidden(const struct px_msg *m)
{
    const char *hit = NULL;

    (void)px_msg_list_tokens(m, PX_H_CONNECTION, px_msg_forbidden_tok, &hit);
    return hit;
}

struct px_coding_ctx {
    int coding; /* 0 none yet, >0 the one coding, -1 refused */
};

static int
px_msg_coding_tok(void *arg, const char *t, size_t n)
{
    struct px_coding_ctx *cc = arg;
    int                   k;

    if (al_strcaseeq_n(t, n, "identity"))
        return 0;
    k = px_inflate_coding(t, n);
    if (k == 0 || cc->coding != 0) { /* unknown, or a second coding */
        cc->coding = -1;
        return 1;
    }
    cc->coding = k;
    return 0;
}

int
px_msg_content_coding(const struct px_msg *m)
{
    struct px_coding_ctx cc = {0};

    (void)px_msg_list_tokens(m, PX_H_CONTENT_ENCODING, px_msg_coding_tok, &cc);
    return cc.coding;
}

int
px_msg_write_headers(const struct px_msg *m, struct al_dbuf *out)
{
    for (int i = 0; i < m->nhdrs; i++) {
        const struct px_hdr *h = &m->hdrs[i];

        if (h->drop)
            continue;
        if (px_dbuf_put(out, px_msg_str(m, h->name), h->name_len) != AL_OK ||
            px_dbuf_put(out, ": ", 2) != AL_OK ||
            (h->val != UINT32_MAX &&
             px_dbuf_put(out, px_msg_str(m, h->val), h->val_len) != AL_OK) ||
            px_dbuf_put(out, "\r\n", 2) != AL_OK)
            return AL_ERROR;
    }
    return AL_OK;
}

const char *
px_http_head_scan(struct px_head_scan *st, const char *p, size_t n)
{
    size_t i = 0;

    if (n > 0 && st->line == 0 && st->prev == 0)
        st->prev = -1;
    /* The request line, byte by byte. */
    for (; i < n && st->line == 0; i++) {
        int ch = (unsigned char)p[i];

        if (ch == '\t')
            return "tab in request line";
        if (ch == ' ' && (st->prev == ' ' || st->prev == -1))
            return "extra whitespace in request line";
        if (ch == '\n')
            st->line++;
        st->prev = ch;
    }
    /* Header lines: only the byte after each line feed matters, so the scan
     * jumps from one LF to the next (memchr) instead of looking at each. */
    while (i < n) {
        const char *nl;

        if (st->prev == '\n' && (p[i] == ' ' || p[i] == '\t'))
            return "obs-fold header line";
        nl = memchr(p + i, '\n', n - i);
        if (nl == NULL) {
            st->prev = (unsigned char)p[n - 1];
            break;
        }
        st->line++;
        st->prev = '\n';
        i = (size_t)(nl - p) + 1;
    }
    return NULL;
}

/* RFC 9110 tchar: ALPHA DIGIT and "!#$%&'*+-.^_`|~" (one table lookup a byte:
 * every header name of every head goes through here). */
static const unsigned char px_http_tchar[256] = {
    ['0' ... '9'] = 1, ['a' ... 'z'] = 1, ['A' ... 'Z'] = 1, ['!'] = 1, ['#'] = 1, ['$'] = 1,
    ['%'] = 1,         ['&'] = 1,         ['\''] = 1,        ['*'] = 1, ['+'] = 1, ['-'] = 1,
    ['.'] = 1,         ['^'] = 1,         ['_'] = 1,         ['`'] = 1, ['|'] = 1, ['~'] = 1,
};

int
px_http_is_token(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!px_http_tchar[(unsigned char)p[i]])
            return 0;
    return 1;
}

int
px_http_has_crlfnul(const char *p, size_t n)
{
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    size_t         i = 0;

    /* 8 bytes a step: a byte of x is zero iff (x - 1) & ~x has its high bit. */
    for (; i + 8 <= n; i += 8) {
        uint64_t w, r, l;

        memcpy(&w, p + i, 8);
        r = w ^ (ones * '\r');
        l = w ^ (ones * '\n');
        if ((((w - ones) & ~w) | ((r - ones) & ~r) | ((l - ones) & ~l)) & highs)
            return 1;
    }
    for (; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];

        if (ch == '\0' || ch == '\r' || ch == '\n')
            return 1;
    }
    return 0;
}

const char *
px_http_status_text(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 403:
        return "Forbidden";
    case 405:
        return "Method Not Allowed";
    case 407:
        return "Proxy Authentication Required";
    case 408:
        return "Request Timeout";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 421:
        return "Misdirected Request";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Error";
    }
}

int
px_http_error_ex(struct al_dbuf *out, int status, const char *reason, const char *detail,
                 const char *extra_headers)
{
    char body[256];
    int  n;

    n = snprintf(body, sizeof(body), "airlock: %s%s%s\n", reason, detail ? ": " : "",
                 detail ? detail : "");
    if (n < 0 || (size_t)n >= sizeof(body))
        n = (int)sizeof(body) - 1;
    return al_dbuf_addf(out,
                        "HTTP/1.1 %d %s\r\n"
                        "X-Airlock-Reason: %s\r\n"
                        "%s"
                        "Content-Type: text/plain\r\n"
                        "Content-Length: %d\r\n"
                        "Connection: close\r\n"
                        "\r\n"
                        "%.*s",
                        status, px_http_status_text(status), reason,
                        extra_headers ? extra_headers : "", n, n, body);
}

int
px_http_error(struct al_dbuf *out, int status, const char *reason, const char *detail)
{
    return px_http_error_ex(out, status, reason, detail, NULL);
}
