/*
 * px_h1.c - the HTTP/1.1 codec on llhttp (strict): bytes into exchange
 * events, and the exchange back into bytes with framing of airlock's own.
 *
 * Requests: the parser pauses at the end of the head (the machine decides,
 * injects, resolves and connects before a body byte moves) and at the end
 * of the message (a pipelined request waits for this response). Responses:
 * the parser pauses at the end of each head (x->resp_head_ready: the
 * machine lets px_inject_response redact it and ready the body's chain,
 * then px_h1_response_head writes it) and at the end of the message. Body
 * pieces go into the exchange's chains (px_filter.c); the codec never knows
 * which filters run. Heads are re-serialised from the parsed form; the
 * framing written is generated from the parser's state, never copied from a
 * peer's Content-Length or Transfer-Encoding (px_http.c).
 */
#include "px_phase.h"

#include <pthread.h>
#include <string.h>

static llhttp_settings_t px_h1_req_settings, px_h1_resp_settings;
static pthread_once_t    px_h1_once = PTHREAD_ONCE_INIT;

/* ---- requests ------------------------------------------------------------------ */

static int
px_h1_rq_begin(llhttp_t *p)
{
    struct px_conn *c = p->data;

    if (c->nreqs > 0) /* the first head's clock runs from accept */
        c->phase_start = ev_now(c->worker->loop);
    if (c->conf != c->worker->conf) {
        /* A reload happened: the next request on a keep-alive connection is
         * decided by the new snapshot (the one in progress kept the old). */
        px_conf_unref(c->conf);
        c->conf = px_conf_ref(c->worker->conf);
    }
    c->head_started = 1; /* the machine re-arms the head's deadline */
    if (c->x == NULL) {
        c->x = px_exch_new(c->conf->limits.header_bytes);
        if (c->x == NULL)
            return -1;
    } else {
        px_exch_reset(c->x, c->conf->limits.header_bytes);
    }
    px_chain_init(&c->x->req_chain, c);
    px_chain_init(&c->x->resp_chain, c);
    c->x->start_us = al_now_us();
    return 0;
}

static int
px_h1_rq_url(llhttp_t *p, const char *at, size_t len)
{
    return px_msg_add(&((struct px_conn *)p->data)->x->req, PX_PIECE_URL, at, len);
}

static int
px_h1_rq_field(llhttp_t *p, const char *at, size_t len)
{
    return px_msg_add(&((struct px_conn *)p->data)->x->req, PX_PIECE_FIELD, at, len);
}

static int
px_h1_rq_value(llhttp_t *p, const char *at, size_t len)
{
    return px_msg_add(&((struct px_conn *)p->data)->x->req, PX_PIECE_VALUE, at, len);
}

static int
px_h1_rq_piece_end(llhttp_t *p)
{
    return px_msg_end_piece(&((struct px_conn *)p->data)->x->req);
}

static int
px_h1_rq_head_done(llhttp_t *p)
{
    struct px_conn *c = p->data;

    if (px_msg_end_piece(&c->x->req) != 0)
        return -1;
    c->x->client_keepalive = llhttp_should_keep_alive(p);
    c->x->req_framing = px_framing_parsed(p, 0);
    return HPE_PAUSED; /* decide, resolve and connect before any body byte moves */
}

static int
px_h1_rq_body(llhttp_t *p, const char *at, size_t len)
{
    struct px_conn *c = p->data;
    struct px_exch *x = c->x;

    if (px_chain_feed(&x->req_chain, 0, at, len, 0) != AL_OK)
        return -1;
    x->bytes_up += len;
    x->req_body_bytes_sent = 1;
    return 0;
}

static int
px_h1_rq_done(llhttp_t *p)
{
    struct px_conn *c = p->data;
    struct px_exch *x = c->x;

    if (px_chain_feed(&x->req_chain, 0, NULL, 0, 1) != AL_OK)
        return -1;
    x->req_done = 1;
    if (x->hold_up) { /* the whole body was scanned: it may go now */
        x->hold_up = 0;
        c->up.out.max = PX_BUF_HIGH_BYTES;
    }
    return HPE_PAUSED; /* the next pipelined request waits for this response */
}

/* ":port" into buf (8 bytes), no printf; returns its length. */
static size_t
px_h1_port_str(char *buf, unsigned port)
{
    char   tmp[6];
    size_t n = 0, k = 0;

    do {
        tmp[n++] = (char)('0' + port % 10);
        port /= 10;
    } while (port != 0 && n < sizeof(tmp));
    buf[k++] = ':';
    while (n > 0)
        buf[k++] = tmp[--n];
    return k;
}

void
px_h1_pool_key(const struct px_target *t, char *key, size_t keysz)
{
    size_t hl = strnlen(t->host, keysz - 7);

    memcpy(key, t->host, hl); /* "host:port", no printf */
    key[hl + px_h1_port_str(key + hl, t->port)] = '\0';
}

void
px_h1_request_prepare(struct px_conn *c)
{
    struct px_exch *x = c->x;
    struct px_msg  *m = &x->req;

    px_msg_drop_hop_by_hop(m, x->want_upgrade);
    px_msg_drop_framing(m); /* ours is written from the parser's state */
    for (int i = px_msg_find_id(m, PX_H_HOST, 0); i >= 0; i = px_msg_find_id(m, PX_H_HOST, i + 1))
        m->hdrs[i].drop = 1; /* the request-target's authority wins (RFC 9112 3.2.2) */
    x->req_chunked = x->req_framing.kind == PX_BODY_CHUNKED;
}

int
px_h1_request_head(struct px_conn *c, const char *target, size_t tlen, const struct al_dbuf *hb)
{
    struct px_exch         *x = c->x;
    const struct px_target *t = &x->target;
    const char             *lb = t->kind == PX_HOST_IPV6 ? "[" : "";
    const char             *rb = t->kind == PX_HOST_IPV6 ? "]" : "";
    const char             *meth = llhttp_method_name(c->rq.method);
    struct px_framing       f = x->req_framing;
    struct al_dbuf          d;
    char                    port[8];
    size_t                  pl = t->port == (t->tls ? 443 : 80) ? 0 : px_h1_port_str(port, t->port);
    int                     rc = AL_OK;

    al_dbuf_init(&d, hb->len + tlen + PX_HOST_MAX + 256);
    /* no printf: this runs for every request */
    if (al_dbuf_adds(&d, meth) != AL_OK || px_dbuf_put(&d, " ", 1) != AL_OK ||
        px_dbuf_put(&d, target, tlen) != AL_OK ||
        al_dbuf_adds(&d, " HTTP/1.1\r\nHost: ") != AL_OK || al_dbuf_adds(&d, lb) != AL_OK ||
        al_dbuf_adds(&d, t->host) != AL_OK || al_dbuf_adds(&d, rb) != AL_OK ||
        px_dbuf_put(&d, port, pl) != AL_OK || px_dbuf_put(&d, "\r\n", 2) != AL_OK ||
        (hb->len > 0 && px_dbuf_put(&d, hb->data, hb->len) != AL_OK))
        rc = AL_ERROR;
    if (rc == AL_OK && x->secret_host)
        rc = al_dbuf_adds(&d, "Accept-Encoding: identity\r\n");
    /* Framing from the parser, never a forwarded header: the body ends
     * upstream exactly where it ended on the client side. */
    if (x->req_chunked)
        f.kind = PX_BODY_CHUNKED;
    if (rc == AL_OK)
        rc = px_framing_write(&f, &d);
    if (rc == AL_OK && x->want_upgrade)
        rc = al_dbuf_adds(&d, "Connection: upgrade\r\n");
    if (rc == AL_OK)
        rc = px_dbuf_put(&d, "\r\n", 2);
    if (rc == AL_OK)
        rc = al_bufq_write(&c->up.out, d.data, d.len);
    if (x->injected != 0) /* a value went into the head: wipe the copy */
        sec_dbuf_wipe(&d);
    else
        al_dbuf_free(&d);
    x->req_chain.out = &c->up.out;
    x->req_chain.chunked = x->req_chunked;
    return rc == AL_OK ? AL_OK : AL_ERROR;
}

/* ---- responses ----------------------------------------------------------------- */

static int
px_h1_rs_status(llhttp_t *p, const char *at, size_t len)
{
    return px_msg_add(&((struct px_conn *)p->data)->x->resp, PX_PIECE_STATUS, at, len);
}

static int
px_h1_rs_field(llhttp_t *p, const char *at, size_t len)
{
    return px_msg_add(&((struct px_conn *)p->data)->x->resp, PX_PIECE_FIELD, at, len);
}

static int
px_h1_rs_value(llhttp_t *p, const char *at, size_t len)
{
    return px_msg_add(&((struct px_conn *)p->data)->x->resp, PX_PIECE_VALUE, at, len);
}

static int
px_h1_rs_piece_end(llhttp_t *p)
{
    return px_msg_end_piece(&((struct px_conn *)p->data)->x->resp);
}

/* The end of a response head: checked, hop-by-hop and framing headers
 * dropped, then the parser pauses for the machine (x->resp_head_ready). */
static int
px_h1_rs_head_done(llhttp_t *p)
{
    struct px_conn *c = p->data;
    struct px_exch *x = c->x;
    struct px_msg  *m = &x->resp;
    int             status = p->status_code;
    int             interim = status >= 100 && status < 200 && status != 101;
    int             upgrade = status == 101 && x->want_upgrade;

    if (px_msg_end_piece(m) != 0)
        return -1;
    if (status == 101 && !upgrade)
        return -1; /* a switch nobody asked for */
    if (status < 100 || status > 999)
        return -1; /* llhttp allows three digits only */
    if (!px_msg_te_chunked_only(m) ||
        ((p->flags & F_TRANSFER_ENCODING) && !(p->flags & F_CHUNKED))) {
        /* Transfer-Encoding is hop-by-hop and re-framed here: a gzip (or any
         * other) transfer coding would reach the client undecoded, and past
         * the redactor as compressed bytes. We never send TE, so no
         * conforming origin uses one. llhttp's own reading counts too:
         * "chunked<TAB>" is not chunked to it (it would read to the close). */
        x->resp_refusal = "upstream_transfer_coding";
        x->resp_refusal_detail = "a transfer coding other than chunked";
        return -1;
    }
    if ((x->resp_refusal_detail = px_msg_connection_forbidden(m)) != NULL) {
        /* Dropping it as hop-by-hop would change how the body is framed or
         * scanned: refuse the response rather than guess. */
        x->resp_refusal = "bad_connection_header";
        return -1;
    }
    px_msg_drop_hop_by_hop(m, upgrade);
    px_msg_drop_framing(m); /* ours is written from the parser's state */
    /* No body whatever the head says: a 1xx, 204, 304 or HEAD response ends
     * with its head (RFC 9112 6.3); llhttp would otherwise read one by
     * Content-Length or chunked, and pass it on unscanned, as a smuggled
     * message, or wait for bytes that never come. */
    x->resp_nobody = interim || status == 204 || status == 304 || x->is_head;
    if (x->resp_nobody)
        p->flags |= F_SKIPBODY; /* what returning 1 would do, with the pause */
    if (!interim)
        px_chain_init(&x->resp_chain, c);
    x->resp_head_ready = 1;
    return HPE_PAUSED;
}

int
px_h1_response_head(struct px_conn *c)
{
    struct px_exch *x = c->x;
    struct px_msg  *m = &x->resp;
    llhttp_t       *p = &c->rs;
    int             status = p->status_code;
    int             interim = status >= 100 && status < 200 && status != 101;
    int             upgrade = status == 101 && x->want_upgrade;
    int             client11 = c->rq.http_major == 1 && c->rq.http_minor >= 1;
    int             nobody = x->resp_nobody;
    struct al_dbuf  d;
    char            sl[13] = "HTTP/1.1 000 ";
    int             rc;

    if (interim && !client11)
        return AL_OK; /* no 1xx to an HTTP/1.0 client (RFC 9110 15.2): only the final answer */
    al_dbuf_init(&d, m->buf.len + 1024);
    sl[9] = (char)('0' + status / 100);
    sl[10] = (char)('0' + status / 10 % 10);
    sl[11] = (char)('0' + status % 10);
    rc = px_dbuf_put(&d, sl, sizeof(sl));
    if (rc == AL_OK && m->status_text_len)
        rc = px_dbuf_put(&d, px_msg_str(m, m->status_text), m->status_text_len);
    if (rc == AL_OK)
        rc = px_dbuf_put(&d, "\r\n", 2);
    if (rc == AL_OK)
        rc = px_msg_write_headers(m, &d);
    if (!interim) {
        /* The framing toward the client comes from the parser's state: the
         * upstream's own Content-Length / Transfer-Encoding never pass. */
        struct px_framing f = px_framing_parsed(p, nobody || upgrade);

        x->status = status;
        x->upstream_keepalive = llhttp_should_keep_alive(p);
        x->resp_chunked_out = 0;
        x->resp_close_delim = 0;
        if (upgrade) {
            if (rc == AL_OK)
                rc = al_dbuf_adds(&d, "Connection: upgrade\r\n");
        } else if (f.kind == PX_BODY_CHUNKED || f.kind == PX_BODY_CLOSE ||
                   (f.kind == PX_BODY_LENGTH && x->resp_chain.n > 0)) {
            /* Chunked toward an HTTP/1.1 client whenever the upstream's
             * length is not passed on as is (a filter may change it): a
             * close-delimited body re-framed keeps the client connection,
             * and an upstream that fails mid-body leaves the last chunk out,
             * which the client sees, where a close would read as the end. */
            if (client11)
                x->resp_chunked_out = 1;
            else
                x->resp_close_delim = 1;
        } else if (f.kind == PX_BODY_LENGTH ||
                   ((p->flags & F_CONTENT_LENGTH) && nobody && status != 204)) {
            /* A HEAD or 304 answer's length describes the body it would
             * have had (RFC 9110 8.6); still the parsed number, not the
             * header. 1xx and 204 carry none. */
            struct px_framing len = {PX_BODY_LENGTH, p->content_length};

            if (rc == AL_OK)
                rc = px_framing_write(&len, &d);
        }
        if (x->want_upgrade && !upgrade)
            c->close_after_flush = 1; /* the upgrade asked for is not happening */
        if (rc == AL_OK && x->resp_chunked_out)
            rc = al_dbuf_adds(&d, "Transfer-Encoding: chunked\r\n");
        if (rc == AL_OK && !upgrade &&
            (x->resp_close_delim || c->draining || !x->client_keepalive || c->close_after_flush))
            rc = al_dbuf_adds(&d, "Connection: close\r\n");
        if (x->resp_close_delim || c->draining)
            c->close_after_flush = 1;
        x->resp_chain.out = &c->cl.out;
        x->resp_chain.chunked = x->resp_chunked_out;
    }
    if (rc == AL_OK)
        rc = px_dbuf_put(&d, "\r\n", 2);
    if (rc == AL_OK)
        rc = al_bufq_write(&c->cl.out, d.data, d.len);
    if (x->redact_mask != 0) /* the head came from a host that may hold a value */
        sec_dbuf_wipe(&d);
    else
        al_dbuf_free(&d);
    if (rc != AL_OK)
        return AL_ERROR;
    /* After an interim (1xx) head the final answer is still ahead: an
     * upstream failure can still be answered with a 502 or 504. */
    if (!interim)
        x->resp_started = 1;
    return AL_OK;
}

static int
px_h1_rs_body(llhttp_t *p, const char *at, size_t len)
{
    struct px_conn *c = p->data;
    struct px_exch *x = c->x;

    if (px_chain_feed(&x->resp_chain, 0, at, len, 0) != AL_OK)
        return -1;
    x->bytes_down += len;
    return 0;
}

static int
px_h1_rs_done(llhttp_t *p)
{
    struct px_conn *c = p->data;
    struct px_exch *x = c->x;
    int             status = p->status_code;

    if (status >= 100 && status < 200 && status != 101) {
        px_msg_reset(&x->resp); /* interim answer forwarded; the final one follows */
        return 0;
    }
    if (px_chain_feed(&x->resp_chain, 0, NULL, 0, 1) != AL_OK)
        return -1;
    x->resp_done = 1;
    x->upstream_reusable = x->upstream_keepalive && status != 101;
    /* After a 101 llhttp stops on its own (HPE_PAUSED_UPGRADE, the error
     * position at the first byte of the new protocol): a pause here would
     * hide that, and the origin's first frame read with the 101 was lost. */
    return status == 101 ? 0 : HPE_PAUSED;
}

/* ---- parsers -------------------------------------------------------------------- */

static void
px_h1_settings_init(void)
{
    llhttp_settings_t *s = &px_h1_req_settings;

    llhttp_settings_init(s);
    s->on_message_begin = px_h1_rq_begin;
    s->on_url = px_h1_rq_url;
    s->on_url_complete = px_h1_rq_piece_end;
    s->on_header_field = px_h1_rq_field;
    s->on_header_field_complete = px_h1_rq_piece_end;
    s->on_header_value = px_h1_rq_value;
    s->on_header_value_complete = px_h1_rq_piece_end;
    s->on_headers_complete = px_h1_rq_head_done;
    s->on_body = px_h1_rq_body;
    s->on_message_complete = px_h1_rq_done;

    s = &px_h1_resp_settings;
    llhttp_settings_init(s);
    s->on_status = px_h1_rs_status;
    s->on_status_complete = px_h1_rs_piece_end;
    s->on_header_field = px_h1_rs_field;
    s->on_header_field_complete = px_h1_rs_piece_end;
    s->on_header_value = px_h1_rs_value;
    s->on_header_value_complete = px_h1_rs_piece_end;
    s->on_headers_complete = px_h1_rs_head_done;
    s->on_body = px_h1_rs_body;
    s->on_message_complete = px_h1_rs_done;
}

void
px_h1_request_parser(struct px_conn *c)
{
    pthread_once(&px_h1_once, px_h1_settings_init);
    llhttp_init(&c->rq, HTTP_REQUEST, &px_h1_req_settings);
    c->rq.data = c;
}

void
px_h1_response_parser(struct px_conn *c)
{
    pthread_once(&px_h1_once, px_h1_settings_init);
    llhttp_init(&c->rs, HTTP_RESPONSE, &px_h1_resp_settings);
    c->rs.data = c;
}
