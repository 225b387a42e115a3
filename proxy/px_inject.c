/*
 * px_inject.c - the secrets seam of the proxy, the twin of px_decide.c:
 * what secrets do to an exchange. On the way up, placeholders in the head
 * are replaced in scope (or the request refused), and the body passes a
 * substitute-or-scan filter; on the way down, a head that may carry an
 * echoed value is redacted in place, and the body passes inflate (when a
 * secret's host answered compressed anyway) and redact filters. These
 * filters plug into the body chains of px_filter.c; the codec feeds the
 * chains without knowing which filters run.
 */
#include "px_inflate.h"
#include "px_phase.h"

#include <string.h>

#include <openssl/crypto.h>

/* The secrets the allowing rule's "inject" list names (0: no list). */
static uint64_t
px_inject_mask(const struct px_conn *c)
{
    const struct pol_decision *d = &c->x->decision;
    uint64_t                   mask = 0;

    for (int k = 0; k < d->ninject; k++) {
        int i = sec_find(c->conf->secrets, d->inject[k]);

        if (i >= 0 && i < 64)
            mask |= 1ULL << i;
    }
    return mask;
}

/* Status for a secret refusal (X-Airlock-Reason is the refusal itself). */
static int
px_inject_refusal_status(const char *refusal)
{
    if (strcmp(refusal, SEC_REFUSE_COMPRESSED) == 0)
        return 415;
    if (strcmp(refusal, SEC_REFUSE_TRACE) == 0)
        return 405;
    return 403;
}

/* A secret refusal: audited as a deny with the refusal as its reason. */
static int
px_inject_refuse(struct px_conn *c, int status, const char *reason, const char *secret)
{
    struct px_exch *x = c->x;

    x->secret_refused = secret;
    x->decision.verdict = POL_DENY;
    x->decision.reason = reason;
    PX_MINC(secrets_refused);
    px_refuse_deny(c, status, reason, secret, NULL);
    c->refusal.secret = secret;
    return AL_DECLINED;
}

static void
px_inject_dest(const struct px_conn *c, const char *path, size_t path_len, struct sec_dest *d)
{
    const struct px_exch *x = c->x;

    memset(d, 0, sizeof(*d));
    d->host = x->target.host;
    d->port = x->target.port;
    d->path = path;
    d->path_len = path_len;
    d->tls = x->target.tls;
}

static int px_inject_redact(struct px_chain *ch, int i, const char *at, size_t len, int last);

/*
 * Where a filter writes what it passes on: the worker's buffer, reused
 * piece after piece (a websocket message or a body piece costs no
 * allocation once it has grown), or, should a filter run inside another
 * one's output, a buffer of its own. The output is handed to the next step
 * before the filter returns.
 */
#define PX_FILTER_OUT_KEEP (256 * 1024) /* larger is given back after use */

static struct al_dbuf *
px_inject_out_get(struct px_conn *c, struct al_dbuf *own, size_t len)
{
    struct px_worker *w = c->worker;

    if (w->filter_out_busy) {
        al_dbuf_init(own, len + 65536);
        return own;
    }
    w->filter_out_busy = 1;
    w->filter_out.len = 0;
    w->filter_out.max = len + 65536;
    return &w->filter_out;
}

/* wipe: the output may hold a value (substitution): its bytes are wiped. */
static void
px_inject_out_put(struct px_conn *c, struct al_dbuf *d, int wipe)
{
    struct px_worker *w = c->worker;

    if (d != &w->filter_out) {
        sec_dbuf_wipe(d);
        return;
    }
    if (wipe && d->len > 0)
        OPENSSL_cleanse(d->data, d->len);
    if (d->cap > PX_FILTER_OUT_KEEP)
        sec_dbuf_wipe(d);
    else
        al_dbuf_reset(d);
    w->filter_out_busy = 0;
}

/* ---- request ---------------------------------------------------------------- */

typedef int (*px_inject_verdict_fn)(const struct sec_store *s, const struct sec_dest *d,
                                    uint64_t seen, struct sec_result *res);

/*
 * A stream toward the origin (a request body, or websocket frames) through
 * the placeholder stream st: placeholders of the secrets in `mask` become
 * values; any other placeholder is judged (verdict: the location's rules)
 * before the bytes that complete it are forwarded (the stream holds back a
 * possible prefix), so an out-of-scope placeholder stops the flow instead of
 * leaving: AL_DECLINED with x->body_refusal and x->secret_refused.
 */
static int
px_inject_scan(struct px_chain *ch, int i, const char *at, size_t len, int last,
               struct sec_stream *st, uint64_t mask, px_inject_verdict_fn verdict)
{
    struct px_conn *c = ch->conn;
    struct px_exch *x = c->x;
    struct al_dbuf  own, *d = px_inject_out_get(c, &own, len);
    uint64_t        seen;
    int             rc;

    if (last)
        rc = sec_stream_feed_last(st, at, len, d);
    else
        rc = len > 0 ? sec_stream_feed(st, at, len, d) : AL_OK;
    if ((sec_stream_replaced(st) & ~x->injected) != 0) {
        /* A value went out: the row and the metric say so like for a
         * header (the queue is already marked for wiping: mask set it). */
        if (x->injected == 0)
            PX_MINC(secrets_injected);
        x->injected |= sec_stream_replaced(st);
    }
    seen = sec_stream_seen(st) & ~mask;
    if (rc == AL_OK && seen != 0) {
        struct sec_dest   dest;
        struct sec_result res;

        px_inject_dest(c, x->fwd_path != NULL ? x->fwd_path : x->target.path,
                       x->fwd_path != NULL ? x->fwd_path_len : x->target.path_len, &dest);
        dest.only = x->inject_only;
        memset(&res, 0, sizeof(res));
        if (verdict(c->conf->secrets, &dest, seen, &res) != AL_OK) {
            x->body_refusal = res.refusal != NULL ? res.refusal : SEC_REFUSE_OUT_OF_SCOPE;
            x->secret_refused =
                res.refusal_secret >= 0 ? sec_name(c->conf->secrets, res.refusal_secret) : NULL;
            rc = AL_DECLINED;
        }
    }
    if (rc == AL_OK)
        rc = px_chain_feed(ch, i + 1, d->data, d->len, last);
    px_inject_out_put(c, d, mask != 0);
    return rc;
}

/* A request body: the "body" location. */
static int
px_inject_substitute(struct px_chain *ch, int i, const char *at, size_t len, int last)
{
    struct px_exch *x = ch->conn->x;

    return px_inject_scan(ch, i, at, len, last, x->body_sub, x->body_mask, sec_body_verdict);
}

int
px_inject_request(struct px_conn *c, const char *target, size_t tlen, struct al_dbuf *hb,
                  struct al_dbuf *tb)
{
    struct px_exch   *x = c->x;
    struct px_msg    *m = &x->req;
    struct sec_hdr    hdrs[PX_HTTP_MAX_HEADERS];
    struct sec_dest   d;
    struct sec_result res;
    int               n = 0, rc;

    x->secret_host = sec_any_scope_host(c->conf->secrets, x->target.host, x->target.port);
    if (x->secret_host) /* bodies from such hosts must stay scannable */
        for (int i = px_msg_find(m, "accept-encoding", 0); i >= 0;
             i = px_msg_find(m, "accept-encoding", i + 1))
            m->hdrs[i].drop = 1;
    if (x->secret_host && x->want_upgrade) {
        /* Frames from such hosts must stay readable: no permessage-deflate
         * (or any extension) is offered; one the origin picks anyway is
         * refused with its 101. */
        for (int i = px_msg_find(m, "sec-websocket-extensions", 0); i >= 0;
             i = px_msg_find(m, "sec-websocket-extensions", i + 1))
            m->hdrs[i].drop = 1;
        x->ws_scan = 1;
    }
    for (int i = 0; i < m->nhdrs; i++) {
        if (m->hdrs[i].drop)
            continue;
        hdrs[n].name = px_msg_str(m, m->hdrs[i].name);
        hdrs[n].name_len = m->hdrs[i].name_len;
        hdrs[n].value = m->hdrs[i].val == UINT32_MAX ? "" : px_msg_str(m, m->hdrs[i].val);
        hdrs[n].value_len = m->hdrs[i].val == UINT32_MAX ? 0 : m->hdrs[i].val_len;
        n++;
    }
    px_inject_dest(c, target, tlen, &d);
    d.only = x->inject_only = px_inject_mask(c);
    memset(&res, 0, sizeof(res));
    rc = sec_apply_head(c->conf->secrets, &d, llhttp_method_name(c->rq.method), hdrs, n, target,
                        tlen, hb, tb, &res);
    if (rc == AL_DECLINED)
        return px_inject_refuse(
            c, px_inject_refusal_status(res.refusal), res.refusal,
            res.refusal_secret >= 0 ? sec_name(c->conf->secrets, res.refusal_secret) : NULL);
    if (rc != AL_OK)
        return AL_ERROR;
    x->injected = res.injected;
    x->redact_mask = res.redact_mask;
    x->body_mask = res.body_mask;
    x->ws_mask = res.ws_mask;
    if (x->want_upgrade && x->redact_mask != 0)
        x->ws_scan = 1; /* every frame both ways is scanned (px_ws.c) */
    if (x->body_mask != 0 && x->req_framing.kind == PX_BODY_LENGTH && x->req_framing.len > 0)
        x->req_chunked = 1; /* substitution changes the body's length */
    if (x->req_framing.kind != PX_BODY_NONE &&
        (x->req_framing.kind != PX_BODY_LENGTH || x->req_framing.len > 0)) {
        /* Every body is scanned: substituted where a secret opts in,
         * judged for placeholders that may not go here. */
        if (x->body_sub == NULL) /* a retried head keeps its unfed stream */
            x->body_sub = sec_body_new(c->conf->secrets, x->body_mask);
        if (x->body_sub == NULL)
            return AL_ERROR;
        if (x->req_chain.n == 0 && px_chain_add(&x->req_chain, px_inject_substitute) != AL_OK)
            return AL_ERROR;
        if (x->body_mask != 0) /* values may go into the body: wipe its chunks */
            c->up.out.sensitive = 1;
        /* Hold the head and body until the body is scanned (up to a cap),
         * so a refused placeholder means the upstream saw nothing. */
        if (x->req_framing.kind != PX_BODY_LENGTH || x->req_framing.len <= PX_HOLD_BODY_BYTES) {
            x->hold_up = 1;
            c->up.out.max = PX_HOLD_QUEUE_BYTES;
        }
    }
    if (x->injected != 0) {
        c->up.out.sensitive = 1; /* chunks holding values are wiped when freed */
        PX_MINC(secrets_injected);
    }
    return AL_OK;
}

/* ---- websockets --------------------------------------------------------------- */

/*
 * Websocket frames toward the origin, one stream per message: the "ws"
 * location. Each direction's stream is made with the first data frame that
 * goes its way, not at the 101 (a socket that carries nothing costs none),
 * and between messages holds no buffer (sec_stream_finish frees them).
 */
static int
px_inject_ws_substitute(struct px_chain *ch, int i, const char *at, size_t len, int last)
{
    struct px_conn *c = ch->conn;
    struct px_exch *x = c->x;

    if (x->ws_sub == NULL && (x->ws_sub = sec_body_new(c->conf->secrets, x->ws_mask)) == NULL)
        return AL_ERROR;
    return px_inject_scan(ch, i, at, len, last, x->ws_sub, x->ws_mask, sec_ws_verdict);
}

/* Websocket frames toward the client: the response redactor, one stream
 * per message. */
static int
px_inject_ws_redact(struct px_chain *ch, int i, const char *at, size_t len, int last)
{
    struct px_conn *c = ch->conn;
    struct px_exch *x = c->x;

    if (x->redactor == NULL &&
        (x->redactor = sec_redactor_new(c->conf->secrets, x->redact_mask)) == NULL)
        return AL_ERROR;
    return px_inject_redact(ch, i, at, len, last);
}

int
px_inject_ws_filters(struct px_conn *c)
{
    struct px_exch *x = c->x;

    if (x->ws_mask != 0)
        c->up.out.sensitive = 1; /* values may go into frames: wipe their chunks */
    if (px_chain_add(&x->ws_up_chain, px_inject_ws_substitute) != AL_OK ||
        px_chain_add(&x->ws_down_chain, px_inject_ws_redact) != AL_OK)
        return AL_ERROR;
    return AL_OK;
}

int
px_inject_ws_control(struct px_conn *c, int from_client, const char *p, size_t n,
                     struct al_dbuf *out)
{
    struct px_exch    *x = c->x;
    struct sec_stream *st;
    uint64_t           seen;
    int                rc;

    if (!from_client)
        return sec_redact_value(c->conf->secrets, x->redact_mask, p, n, out);
    st = sec_body_new(c->conf->secrets, x->ws_mask);
    if (st == NULL)
        return AL_ERROR;
    rc = sec_stream_feed_last(st, p, n, out);
    seen = sec_stream_seen(st) & ~x->ws_mask;
    x->injected |= sec_stream_replaced(st);
    sec_stream_free(st);
    if (rc == AL_OK && seen != 0) {
        struct sec_dest   dest;
        struct sec_result res;

        px_inject_dest(c, x->target.path, x->target.path_len, &dest);
        dest.only = x->inject_only;
        memset(&res, 0, sizeof(res));
        if (sec_ws_verdict(c->conf->secrets, &dest, seen, &res) != AL_OK) {
            x->body_refusal = res.refusal != NULL ? res.refusal : SEC_REFUSE_OUT_OF_SCOPE;
            x->secret_refused =
                res.refusal_secret >= 0 ? sec_name(c->conf->secrets, res.refusal_secret) : NULL;
            return AL_DECLINED;
        }
    }
    return rc;
}

void
px_inject_body_refusal(struct px_conn *c)
{
    struct px_exch *x = c->x;

    (void)px_inject_refuse(c, px_inject_refusal_status(x->body_refusal), x->body_refusal,
                           x->secret_refused);
}

/* ---- response --------------------------------------------------------------- */

/* Response body through the redactor (the length changes: the codec
 * frames the client side chunked, or close-delimited). Its output is what
 * the client may see, queued unwiped right after: not wiped here either. */
static int
px_inject_redact(struct px_chain *ch, int i, const char *at, size_t len, int last)
{
    struct px_conn *c = ch->conn;
    struct px_exch *x = c->x;
    struct al_dbuf  own, *d = px_inject_out_get(c, &own, len);
    int             rc;

    if (last)
        rc = sec_stream_feed_last(x->redactor, at, len, d);
    else
        rc = len > 0 ? sec_stream_feed(x->redactor, at, len, d) : AL_OK;
    if (rc == AL_OK)
        rc = px_chain_feed(ch, i + 1, d->data, d->len, last);
    px_inject_out_put(c, d, 0);
    return rc;
}

struct px_inflate_sink {
    struct px_chain *ch;
    int              next;
};

static int
px_inject_inflate_sink(void *arg, const char *p, size_t n)
{
    struct px_inflate_sink *s = arg;

    return px_chain_feed(s->ch, s->next, p, n, 0);
}

/* A gzip or deflate body from a secret's host: decoded, then redacted. */
static int
px_inject_inflate(struct px_chain *ch, int i, const char *at, size_t len, int last)
{
    struct px_exch        *x = ch->conn->x;
    struct px_inflate_sink s = {ch, i + 1};

    if (len > 0 &&
        px_inflate_feed(x->inflater, at, len, px_inject_inflate_sink, &s, &x->resp_abort) != AL_OK)
        return AL_ERROR;
    if (!last)
        return AL_OK;
    if (px_inflate_finish(x->inflater, &x->resp_abort) != AL_OK)
        return AL_ERROR;
    return px_chain_feed(ch, i + 1, NULL, 0, 1);
}

/* The parsed head redacted in place: the reason phrase and every kept
 * header's name and value go through the redactor; a name that no longer
 * reads as a token after redaction is dropped with its value. */
static int
px_inject_redact_head(struct px_conn *c)
{
    const struct sec_store *s = c->conf->secrets;
    struct px_exch         *x = c->x;
    struct px_msg          *m = &x->resp;
    struct px_msg           r;
    struct al_dbuf          t;
    int                     rc = AL_OK;

    px_msg_init(&r, m->buf.max * 2 + 4096); /* placeholders may be longer than values */
    al_dbuf_init(&t, 4096);
    if (m->status_text_len > 0) {
        rc = sec_redact_value(s, x->redact_mask, px_msg_str(m, m->status_text), m->status_text_len,
                              &t);
        if (rc == AL_OK && t.len > 0 && px_msg_add(&r, PX_PIECE_STATUS, t.data, t.len) != 0)
            rc = AL_ERROR;
    }
    for (int i = 0; rc == AL_OK && i < m->nhdrs; i++) {
        const struct px_hdr *h = &m->hdrs[i];

        if (h->drop)
            continue;
        t.len = 0;
        if (sec_redact_value(s, x->redact_mask, px_msg_str(m, h->name), h->name_len, &t) != AL_OK) {
            rc = AL_ERROR;
            break;
        }
        if (t.len == 0 || !px_http_is_token(t.data, t.len))
            continue;
        if (px_msg_add(&r, PX_PIECE_FIELD, t.data, t.len) != 0) {
            rc = AL_ERROR;
            break;
        }
        t.len = 0;
        if (h->val != UINT32_MAX &&
            sec_redact_value(s, x->redact_mask, px_msg_str(m, h->val), h->val_len, &t) != AL_OK) {
            rc = AL_ERROR;
            break;
        }
        if (px_msg_add(&r, PX_PIECE_VALUE, t.data != NULL ? t.data : "", t.len) != 0)
            rc = AL_ERROR;
    }
    if (rc == AL_OK && px_msg_end_piece(&r) != 0)
        rc = AL_ERROR;
    sec_dbuf_wipe(&t);
    if (rc != AL_OK) {
        px_msg_free(&r);
        return AL_ERROR;
    }
    r.buf.max = m->buf.max;
    px_msg_free(m);
    *m = r;
    return AL_OK;
}

int
px_inject_response(struct px_conn *c)
{
    struct px_exch *x = c->x;
    struct px_msg  *m = &x->resp;
    int             scrub, coding;

    if (x->redact_mask == 0)
        return AL_OK;
    if (c->rs.status_code == 101) {
        /* No extension was offered toward this host: one in the answer
         * would leave frames compressed past the scanners. */
        if (x->ws_scan && px_msg_find(m, "sec-websocket-extensions", 0) >= 0)
            return px_refuse_upstream(c, PX_UERR_OTHER, 502, "ws_extension_not_offered",
                                      "the origin picked a websocket extension nobody offered");
        if (sec_redact_any(c->conf->secrets, x->redact_mask, m->buf.data, m->buf.len) > 0 &&
            px_inject_redact_head(c) != AL_OK)
            return AL_ERROR;
        return AL_OK;
    }
    /* One pass over the whole head (status text, names, values) decides
     * whether any piece carries a form of a secret this origin may hold. */
    scrub = sec_redact_any(c->conf->secrets, x->redact_mask, m->buf.data, m->buf.len);
    if (scrub < 0 || (scrub && px_inject_redact_head(c) != AL_OK))
        return AL_ERROR;
    if (x->resp_nobody)
        return AL_OK;
    /* We asked for identity. A gzip or deflate body is decoded, scanned and
     * passed on decoded (Content-Encoding dropped); any other coding, or
     * more than one over all Content-Encoding headers, can't be scanned,
     * so it is refused rather than passed on. */
    coding = px_msg_content_coding(m);
    if (coding < 0) {
        x->resp_refusal = "compressed_response";
        x->resp_refusal_detail = "a host that received a secret answered compressed";
        return px_refuse_upstream(c, PX_UERR_OTHER, 502, x->resp_refusal, x->resp_refusal_detail);
    }
    if (coding > 0) {
        x->inflater = px_inflate_new(coding);
        if (x->inflater == NULL || px_chain_add(&x->resp_chain, px_inject_inflate) != AL_OK)
            return AL_ERROR;
        for (int i = px_msg_find_id(m, PX_H_CONTENT_ENCODING, 0); i >= 0;
             i = px_msg_find_id(m, PX_H_CONTENT_ENCODING, i + 1))
            m->hdrs[i].drop = 1;
        PX_MINC(responses_decoded);
    }
    x->redactor = sec_redactor_new(c->conf->secrets, x->redact_mask);
    if (x->redactor == NULL || px_chain_add(&x->resp_chain, px_inject_redact) != AL_OK)
        return AL_ERROR;
    return AL_OK;
}
