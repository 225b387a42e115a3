/*
 * fuzz_head.c - request heads through llhttp into a px_msg, the raw-byte
 * smuggling checks, hop-by-hop stripping and re-serialisation.
 *
 * Input: byte 0 = number of pieces (1..3, low 2 bits), keep_upgrade (bit 2)
 * and the head cap (bits 3-4: 64 KiB, 64 KiB, 1 KiB, 128 B); bytes 1 and 2 =
 * split points (scaled over the rest); the rest = the bytes a client sends.
 * Callbacks are those of tests/unit/test_px_http.c; on_headers_complete also
 * pauses the parser, as px_conn does, so the raw scan sees exactly the head.
 *
 * Oracles: when the head is accepted (llhttp OK/paused, !bad, !too_big, raw
 * scan clean) the re-serialised headers are well-formed "token: value\r\n"
 * lines without CR/LF/NUL inside and without hop-by-hop names; a raw scan
 * fed in pieces flags whatever the one-shot scan flags.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proxy/px_http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct fz_ctx {
    struct px_msg m;
    int           head_done;
};

static int
fz_url(llhttp_t *p, const char *at, size_t n)
{
    return px_msg_add(&((struct fz_ctx *)p->data)->m, PX_PIECE_URL, at, n);
}
static int
fz_field(llhttp_t *p, const char *at, size_t n)
{
    return px_msg_add(&((struct fz_ctx *)p->data)->m, PX_PIECE_FIELD, at, n);
}
static int
fz_value(llhttp_t *p, const char *at, size_t n)
{
    return px_msg_add(&((struct fz_ctx *)p->data)->m, PX_PIECE_VALUE, at, n);
}
static int
fz_end(llhttp_t *p)
{
    return px_msg_end_piece(&((struct fz_ctx *)p->data)->m);
}
static int
fz_head_end(llhttp_t *p)
{
    struct fz_ctx *t = p->data;

    if (px_msg_end_piece(&t->m) != 0)
        return -1;
    t->head_done = 1;
    return HPE_PAUSED;
}

static const char *const fz_hop[] = {"connection",
                                     "proxy-connection",
                                     "proxy-authorization",
                                     "proxy-authenticate",
                                     "keep-alive",
                                     "te",
                                     "trailer",
                                     "transfer-encoding",
                                     NULL};

/* Checks one re-serialised header block; aborts on a malformed line. */
static void
fz_check_out(const struct al_dbuf *out, int keep_upgrade)
{
    const char *p, *end;

    if (out->len == 0 || out->data == NULL)
        return;
    p = out->data;
    end = out->data + out->len;
    if (memchr(p, '\0', out->len) != NULL)
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
        for (int k = 0; fz_hop[k] != NULL; k++)
            if (strlen(fz_hop[k]) == nlen && strncasecmp(p, fz_hop[k], nlen) == 0)
                abort();
        if (!keep_upgrade && nlen == 7 && strncasecmp(p, "upgrade", 7) == 0)
            abort();
        p = eol + 1;
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static llhttp_settings_t s;
    static int               s_init;
    static const size_t      caps[4] = {65536, 65536, 1024, 128};
    struct fz_ctx            t;
    llhttp_t                 p;
    llhttp_errno_t           e = HPE_OK;
    struct px_head_scan      hs = {0, 0}, hs1 = {0, 0};
    const char              *bad = NULL, *bad1;
    const char              *req;
    size_t                   n, cut[4], npieces, head_len = 0;
    int                      keep_upgrade;
    struct al_dbuf           out;

    if (size < 3)
        return 0;
    if (!s_init) {
        llhttp_settings_init(&s);
        s.on_url = fz_url;
        s.on_url_complete = fz_end;
        s.on_header_field = fz_field;
        s.on_header_field_complete = fz_end;
        s.on_header_value = fz_value;
        s.on_header_value_complete = fz_end;
        s.on_headers_complete = fz_head_end;
        s_init = 1;
    }
    npieces = 1 + (data[0] & 3) % 3;
    keep_upgrade = (data[0] >> 2) & 1;
    req = (const char *)data + 3;
    n = size - 3;
    cut[0] = 0;
    cut[1] = npieces > 1 ? (size_t)data[1] * n / 255 : n;
    cut[2] = npieces > 2 ? (size_t)data[2] * n / 255 : n;
    if (cut[2] < cut[1]) {
        size_t x = cut[1];
        cut[1] = cut[2];
        cut[2] = x;
    }
    cut[3] = n;

    memset(&t, 0, sizeof(t));
    px_msg_init(&t.m, caps[(data[0] >> 3) & 3]);
    llhttp_init(&p, HTTP_REQUEST, &s);
    p.data = &t;
    for (size_t i = 0; i < 3 && e == HPE_OK && bad == NULL; i++) {
        const char *at = req + cut[i];
        size_t      len = cut[i + 1] - cut[i], used;

        if (i > 0 && i >= npieces)
            break;
        if (i == npieces - 1)
            len = n - cut[i];
        e = llhttp_execute(&p, at, len);
        used = e == HPE_OK ? len : (size_t)(llhttp_get_error_pos(&p) - at);
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

    (void)px_msg_find(&t.m, "host", 0);
    (void)px_msg_connection_has(&t.m, "close");
    px_msg_drop_hop_by_hop(&t.m, keep_upgrade);
    al_dbuf_init(&out, 1 << 20);
    if (px_msg_write_headers(&t.m, &out) == AL_OK && t.head_done && e == HPE_PAUSED && !t.m.bad &&
        !t.m.too_big && bad == NULL) {
        if (t.m.url_len != strlen(px_msg_str(&t.m, t.m.url)))
            abort();
        if (getenv("FZ_DEBUG") != NULL)
            fprintf(stderr, "url=[%s] nhdrs=%d out=[%.*s]\n", px_msg_str(&t.m, t.m.url), t.m.nhdrs,
                    (int)out.len, out.data ? out.data : "");
        fz_check_out(&out, keep_upgrade);
    }
    al_dbuf_free(&out);
    px_msg_free(&t.m);
    return 0;
}
