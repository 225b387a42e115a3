/*
 * px_ws.c - the WebSocket codec (RFC 6455) for a socket airlock relays after
 * a 101: frames in, checked, their data pieces through the direction's body
 * chain (toward the origin: the placeholder substitute/scan filter; toward
 * the client: the redactor), and re-framed on the way out (the length may
 * change), so a value is never passed unscanned inside a frame.
 *
 * What it checks: client frames are masked and server frames are not (else
 * close 1002); reserved bits only with an extension the two sides agreed on
 * (airlock refuses any extension toward a host where secrets apply, so there
 * frames are never compressed); known opcodes only; control frames final and
 * at most 125 bytes; continuation only inside a message and a new message
 * only outside one; a frame or message above limits.ws_message_bytes closes
 * 1009. Pings, pongs and the close handshake are relayed both ways between
 * the fragments of a message.
 *
 * Every output frame toward the origin gets a fresh mask (a per-socket
 * xorshift stream seeded from the system's random generator); toward the
 * client frames are unmasked. A data message whose scanned output is empty
 * so far emits nothing until it has bytes or ends.
 */
#include "px_half.h"
#include "px_phase.h"

#include <string.h>

#include <openssl/rand.h>

enum {
    PX_WS_CONT = 0x0,
    PX_WS_TEXT = 0x1,
    PX_WS_BINARY = 0x2,
    PX_WS_CLOSE = 0x8,
    PX_WS_PING = 0x9,
    PX_WS_PONG = 0xA
};

struct px_ws *
px_ws_new(struct px_conn *c, int scan, int rsv_ok)
{
    struct px_ws *ws = al_calloc(1, sizeof(*ws));

    if (ws == NULL)
        return NULL;
    ws->up.from_client = 1;
    ws->up.hneed = ws->down.hneed = 2;
    ws->up.close_code = ws->down.close_code = -1;
    ws->scan = scan;
    ws->rsv_ok = rsv_ok;
    ws->max_msg = c->conf->limits.ws_message_bytes;
    if (RAND_bytes((unsigned char *)&ws->rng, sizeof(ws->rng)) != 1 || ws->rng == 0)
        ws->rng = (uint64_t)al_now_us() | 1;
    /* The client's TLS reads its socket itself from here on (px_ws_read
     * tries again while its memory BIO still holds bytes). */
    (void)px_half_tls_direct(&c->cl);
    /* No header of the request is read after its 101 (the row reads the
     * target, whose path stays in the head's buffer): the index goes. */
    al_safefree(c->x->req.hdrs);
    c->x->req.hdrs_cap = c->x->req.nhdrs = 0;
    return ws;
}

void
px_ws_free(struct px_ws *ws)
{
    al_free(ws);
}

static uint32_t
px_ws_rand(struct px_ws *ws)
{
    uint64_t x = ws->rng; /* xorshift64* */

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    ws->rng = x;
    return (uint32_t)((x * 0x2545F4914F6CDD1DULL) >> 32);
}

/* dst = src XOR the 4-byte key, starting at key offset `off`: eight bytes at
 * a time (the payload of every frame passes here, both ways). */
static void
px_ws_xor(char *dst, const char *src, size_t n, const unsigned char key[4], uint64_t off)
{
    unsigned char k8[8];
    uint64_t      m;
    size_t        i = 0;

    for (int j = 0; j < 8; j++)
        k8[j] = key[(off + (uint64_t)j) & 3];
    memcpy(&m, k8, 8);
    for (; i + 8 <= n; i += 8) { /* 8 is a multiple of 4: the key lines up again */
        uint64_t v;

        memcpy(&v, src + i, 8);
        v ^= m;
        memcpy(dst + i, &v, 8);
    }
    for (; i < n; i++)
        dst[i] = (char)(src[i] ^ k8[i & 7]);
}

/* One frame onto the queue toward `to_client` (masked toward the origin). */
static int
px_ws_emit(struct px_conn *c, int to_client, int fin, int rsv, int opcode, const char *p, size_t n)
{
    struct px_ws   *ws = c->x->ws;
    struct al_bufq *q = to_client ? &c->cl.out : &c->up.out;
    unsigned char   h[14];
    size_t          hl = 2;
    unsigned char   key[4];

    h[0] = (unsigned char)((fin ? 0x80 : 0) | (rsv & 0x70) | (opcode & 0x0F));
    if (n < 126) {
        h[1] = (unsigned char)n;
    } else if (n <= 0xFFFF) {
        h[1] = 126;
        h[2] = (unsigned char)(n >> 8);
        h[3] = (unsigned char)n;
        hl = 4;
    } else {
        h[1] = 127;
        for (int k = 0; k < 8; k++)
            h[2 + k] = (unsigned char)((uint64_t)n >> (56 - 8 * k));
        hl = 10;
    }
    if (to_client)
        return al_bufq_write(q, h, hl) == AL_OK && (n == 0 || al_bufq_write(q, p, n) == AL_OK)
                   ? AL_OK
                   : AL_ERROR;
    h[1] |= 0x80;
    {
        uint32_t r = px_ws_rand(ws);

        memcpy(key, &r, 4);
    }
    memcpy(h + hl, key, 4);
    hl += 4;
    if (al_bufq_write(q, h, hl) != AL_OK)
        return AL_ERROR;
    for (size_t off = 0; off < n;) { /* masked straight into the queue */
        size_t room;
        char  *dst = al_bufq_reserve(q, &room);

        if (dst == NULL)
            return AL_ERROR;
        if (room > n - off)
            room = n - off;
        px_ws_xor(dst, p + off, room, key, off);
        al_bufq_commit(q, room);
        off += room;
    }
    return AL_OK;
}

/* The last step of a websocket direction's chain: a piece of a message's
 * (scanned) data as one frame, the message's opcode on its first frame. */
static int
px_ws_framer(struct px_chain *ch, int i, const char *p, size_t n, int last)
{
    struct px_conn   *c = ch->conn;
    struct px_ws     *ws = c->x->ws;
    int               to_client = ch == &c->x->ws_down_chain;
    struct px_ws_dir *d = to_client ? &ws->down : &ws->up;
    int               opcode = d->out_started ? PX_WS_CONT : d->msg_opcode;

    (void)i;
    if (n == 0 && !last)
        return AL_OK;
    if (px_ws_emit(c, to_client, last, d->out_started ? 0 : d->msg_rsv, opcode, p, n) != AL_OK)
        return AL_ERROR;
    d->out_started = !last;
    if (to_client)
        c->x->bytes_down += n;
    else
        c->x->bytes_up += n;
    return AL_OK;
}

int
px_ws_chains(struct px_conn *c)
{
    struct px_exch *x = c->x;

    px_chain_init(&x->ws_up_chain, c);
    px_chain_init(&x->ws_down_chain, c);
    if (x->ws->scan && px_inject_ws_filters(c) != AL_OK)
        return AL_ERROR;
    if (px_chain_add(&x->ws_up_chain, px_ws_framer) != AL_OK ||
        px_chain_add(&x->ws_down_chain, px_ws_framer) != AL_OK)
        return AL_ERROR;
    return AL_OK;
}

/* A protocol violation by the side d reads from: close with code both ways. */
static int
px_ws_violation(struct px_ws *ws, int code, const char *why)
{
    if (ws->fail_code == 0) {
        ws->fail_code = code;
        ws->error = why;
    }
    return AL_DECLINED;
}

int
px_ws_close_frame(struct px_conn *c, int to_client, int code, const char *reason)
{
    struct px_ws *ws = c->x->ws;
    char          p[125];
    size_t        rl = reason != NULL ? strlen(reason) : 0;

    if (ws->sent_close[to_client])
        return AL_OK;
    ws->sent_close[to_client] = 1;
    if (rl > sizeof(p) - 2)
        rl = sizeof(p) - 2;
    p[0] = (char)(code >> 8);
    p[1] = (char)code;
    if (rl > 0)
        memcpy(p + 2, reason, rl);
    return px_ws_emit(c, to_client, 1, 0, PX_WS_CLOSE, p, rl + 2);
}

/* A complete control frame from side d: relayed (scanned), recorded. */
static int
px_ws_control(struct px_conn *c, struct px_ws_dir *d)
{
    struct px_ws  *ws = c->x->ws;
    int            to_client = !d->from_client;
    const char    *p = (const char *)d->ctl;
    size_t         n = d->ctl_len;
    struct al_dbuf out;
    int            rc;

    if (d->opcode == PX_WS_CLOSE) {
        if (n == 1)
            return px_ws_violation(ws, 1002, "ws_protocol_error: close frame of one byte");
        d->close_code = n >= 2 ? (int)((unsigned char)p[0] << 8 | (unsigned char)p[1]) : 1005;
        d->close_seen = 1;
    }
    if (ws->sent_close[to_client])
        return AL_OK; /* that side was closed already: nothing more goes there */
    al_dbuf_init(&out, 4096);
    rc = ws->scan ? px_inject_ws_control(c, d->from_client, p, n, &out) : al_dbuf_add(&out, p, n);
    if (rc == AL_OK) {
        size_t m = out.len > 125 ? 125 : out.len; /* a placeholder may be longer */

        rc = px_ws_emit(c, to_client, 1, 0, d->opcode, out.data, m);
        if (d->opcode == PX_WS_CLOSE)
            ws->sent_close[to_client] = 1;
    }
    sec_dbuf_wipe(&out);
    if (rc == AL_DECLINED)
        return px_ws_violation(ws, 1008, "secret_out_of_scope");
    return rc;
}

/* The header of the frame in d->hdr is complete: check it, start it. */
static int
px_ws_header(struct px_conn *c, struct px_ws_dir *d)
{
    struct px_ws        *ws = c->x->ws;
    const unsigned char *h = d->hdr;
    unsigned             plen = h[1] & 0x7F;
    uint64_t             len = plen;
    size_t               o = 2;

    if (plen == 126) {
        len = (uint64_t)h[2] << 8 | h[3];
        o = 4;
    } else if (plen == 127) {
        len = 0;
        for (int k = 0; k < 8; k++)
            len = len << 8 | h[2 + k];
        o = 10;
        if (len >> 63)
            return px_ws_violation(ws, 1002, "ws_protocol_error: 64-bit length with the top bit");
    }
    d->fin = (h[0] & 0x80) != 0;
    d->rsv = h[0] & 0x70;
    d->opcode = h[0] & 0x0F;
    d->masked = (h[1] & 0x80) != 0;
    if (d->masked)
        memcpy(d->key, h + o, 4);
    d->left = len;
    d->off = 0;
    if (d->from_client && !d->masked)
        return px_ws_violation(ws, 1002, "ws_protocol_error: unmasked client frame");
    if (!d->from_client && d->masked)
        return px_ws_violation(ws, 1002, "ws_protocol_error: masked server frame");
    if (d->opcode >= PX_WS_CLOSE) {
        if (d->opcode > PX_WS_PONG)
            return px_ws_violation(ws, 1002, "ws_protocol_error: unknown opcode");
        if (!d->fin || len > 125)
            return px_ws_violation(ws, 1002, "ws_protocol_error: bad control frame");
        if (d->rsv != 0)
            return px_ws_violation(ws, 1002, "ws_protocol_error: reserved bits");
        d->ctl_len = 0;
        return AL_OK;
    }
    if (d->opcode > PX_WS_BINARY)
        return px_ws_violation(ws, 1002, "ws_protocol_error: unknown opcode");
    if (d->rsv != 0 && (!ws->rsv_ok || d->opcode == PX_WS_CONT || (d->rsv & 0x30) != 0))
        return px_ws_violation(ws, 1002, "ws_protocol_error: reserved bits");
    if (d->opcode == PX_WS_CONT && !d->in_msg)
        return px_ws_violation(ws, 1002, "ws_protocol_error: continuation outside a message");
    if (d->opcode != PX_WS_CONT && d->in_msg)
        return px_ws_violation(ws, 1002, "ws_protocol_error: new message inside a message");
    if (d->opcode != PX_WS_CONT) {
        d->in_msg = 1;
        d->msg_opcode = d->opcode;
        d->msg_rsv = d->rsv;
        d->msg_bytes = 0;
        d->out_started = 0;
    }
    if (len > ws->max_msg || d->msg_bytes + len > ws->max_msg)
        return px_ws_violation(ws, 1009, "ws_message_too_big");
    d->msg_bytes += len;
    return AL_OK;
}

/* The data frame in d ended: the message too when it was final. */
static int
px_ws_data_end(struct px_conn *c, struct px_ws_dir *d)
{
    struct px_chain *ch = d->from_client ? &c->x->ws_up_chain : &c->x->ws_down_chain;
    int              rc;

    if (!d->fin)
        return AL_OK;
    d->in_msg = 0;
    d->msgs++;
    rc = px_chain_feed(ch, 0, NULL, 0, 1);
    return rc == AL_DECLINED ? px_ws_violation(c->x->ws, 1008, "secret_out_of_scope") : rc;
}

int
px_ws_feed(struct px_conn *c, int from_client, const char *p, size_t n)
{
    struct px_ws     *ws = c->x->ws;
    struct px_ws_dir *d = from_client ? &ws->up : &ws->down;
    struct px_chain  *ch = from_client ? &c->x->ws_up_chain : &c->x->ws_down_chain;
    char              buf[4096];

    d->bytes += n;
    for (;;) {
        if (ws->fail_code != 0)
            return AL_DECLINED;
        if (d->hneed > 0) { /* a header, byte by byte as it comes */
            if (n == 0)
                return AL_OK;
            d->hdr[d->hlen++] = (unsigned char)*p++;
            n--;
            if (d->hlen == 2)
                d->hneed = ((d->hdr[1] & 0x7F) == 126   ? 2
                            : (d->hdr[1] & 0x7F) == 127 ? 8
                                                        : 0) +
                           ((d->hdr[1] & 0x80) ? 4 : 0);
            else
                d->hneed--;
            if (d->hneed > 0)
                continue;
            d->hlen = 0;
            if (px_ws_header(c, d) != AL_OK)
                return AL_DECLINED;
        }
        if (d->left > 0) { /* payload: unmasked, then control buffer or chain */
            size_t      k = n < d->left ? n : (size_t)d->left;
            const char *q = p; /* the payload's plain bytes */

            if (k == 0)
                return AL_OK;
            if (d->masked) {
                if (k > sizeof(buf))
                    k = sizeof(buf);
                px_ws_xor(buf, p, k, d->key, d->off);
                q = buf;
            }
            p += k;
            n -= k;
            d->off += k;
            d->left -= k;
            if (d->opcode >= PX_WS_CLOSE) {
                memcpy(d->ctl + d->ctl_len, q, k);
                d->ctl_len += (unsigned)k;
            } else {
                /* The last piece of a message goes with the end, so a
                 * message that needs no hold-back leaves as one frame. */
                int end = d->left == 0 && d->fin;
                int rc = px_chain_feed(ch, 0, q, k, end);

                if (rc == AL_DECLINED)
                    return px_ws_violation(ws, 1008, "secret_out_of_scope");
                if (rc != AL_OK)
                    return AL_ERROR;
                if (end) {
                    d->in_msg = 0;
                    d->msgs++;
                }
            }
            if (d->left > 0)
                continue;
        } else if (d->opcode < PX_WS_CLOSE && px_ws_data_end(c, d) != AL_OK) {
            /* an empty frame: the message may end here */
            return ws->fail_code != 0 ? AL_DECLINED : AL_ERROR;
        }
        if (d->opcode >= PX_WS_CLOSE && px_ws_control(c, d) != AL_OK)
            return ws->fail_code != 0 ? AL_DECLINED : AL_ERROR;
        d->hneed = 2;
    }
}

int
px_ws_done(const struct px_ws *ws)
{
    return ws->sent_close[0] && ws->sent_close[1] && ws->up.close_seen && ws->down.close_seen;
}

/* The socket's log line and row (error: why, NULL after a clean close
 * handshake). */
void
px_ws_row(struct px_conn *c, const char *why)
{
    struct px_ws *ws = c->x->ws;

    al_log_info("conn %llu: websocket %s:%u closed: %llu/%llu messages up/down, close %d/%d%s%s",
                (unsigned long long)c->id, c->x->target.host, c->x->target.port,
                (unsigned long long)ws->up.msgs, (unsigned long long)ws->down.msgs,
                ws->up.close_code, ws->down.close_code, why != NULL ? ": " : "",
                why != NULL ? why : "");
    px_conn_audit(c, why);
}

/* A violation (or refusal) as the row will say it. */
void
px_ws_fail_row(struct px_conn *c)
{
    struct px_exch *x = c->x;

    if (x->ws->fail_code == 1008) { /* a placeholder that may not go there */
        PX_MINC(secrets_refused);
        x->decision.verdict = POL_DENY;
        x->decision.reason = x->body_refusal != NULL ? x->body_refusal : SEC_REFUSE_OUT_OF_SCOPE;
        x->err_reason = x->decision.reason;
    } else {
        x->err_reason = x->ws->error;
    }
}

/* px_ws_feed, then whether the close handshake went both ways. */
int
px_ws_take(struct px_conn *c, int from_client, const char *p, size_t n)
{
    int rc = px_ws_feed(c, from_client, p, n);

    if (rc == AL_OK && px_ws_done(c->x->ws))
        return PX_WS_DONE;
    return rc;
}

int
px_ws_read(struct px_conn *c, int from_client)
{
    struct px_half *h = from_client ? &c->cl : &c->up;
    struct al_bufq *q = from_client ? &c->up.out : &c->cl.out;
    char            buf[PX_READ_BYTES];
    int             rc = AL_OK;

    if (from_client) {
        c->cl.tls_more = 0; /* owed nothing once the read runs (see client_readable) */
        if (h->rbio != NULL && px_half_tls_direct(h) == AL_ERROR)
            return AL_ERROR;
    }
    do {
        ssize_t n = px_half_recv(c, h, buf, sizeof(buf));

        if (n == -1)
            return AL_OK;
        if (n <= 0) /* gone: cleanly after the handshake, or not */
            return c->x->ws->up.close_seen && c->x->ws->down.close_seen ? PX_WS_DONE : PX_WS_GONE;
        c->last_activity = ev_now(c->worker->loop);
        rc = px_ws_take(c, from_client, buf, (size_t)n);
    } while (rc == AL_OK && px_half_tls_buffered(h) && !al_bufq_full(q));
    /* Decrypted bytes held back by a full queue announce themselves to
     * nobody: px_conn_update_io resumes the read when there is room. */
    if (rc == AL_OK && from_client && px_half_tls_buffered(h) && al_bufq_full(q))
        c->cl.tls_more = 1;
    return rc;
}
