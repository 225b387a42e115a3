/*
 * px_conn_http.c - the HTTP exchange driver: the handlers of the states in
 * which a connection speaks HTTP/1.1 (the read and write handlers of
 * PX_ST_READ_HEAD, PX_ST_RESOLVE and PX_ST_EXCHANGE, the deadlines of the
 * first and the last) and the steps of an exchange the machine hands to it.
 *
 * Client bytes go to the request parser (px_h1.c) as far as the state
 * allows; a complete head is checked and decided (px_request_target,
 * px_decide); the request head is written toward the upstream (injection
 * through px_inject.c); once an upstream is ready the request's bytes flow
 * and the response is read, its heads redacted and re-framed and its body
 * relayed; when it is written the exchange ends: the upstream kept, parked
 * or closed, the row, then the next request on a kept connection.
 *
 * Nothing here calls the machine (px_conn.c). Every handler returns what
 * happens next (px_phase.h): AL_OK, AL_DECLINED with c->refusal, or a
 * PX_NEXT_* step, and the machine does it: it answers, closes, routes,
 * resolves, changes the state and arms the timer.
 */
#include "px_half.h"
#include "px_phase.h"

#include <errno.h>
#include <string.h>

/* Ends the hold on a scanned request: its bytes may go upstream now. */
static void
px_conn_http_release_hold(struct px_conn *c)
{
    c->x->hold_up = 0;
    c->up.out.max = PX_BUF_HIGH_BYTES;
}

/*
 * The upstream request head from the parsed request, into up.out: what
 * never goes upstream dropped (codec), placeholders replaced in scope and
 * the body's chain readied (inject), the head written with framing of
 * airlock's own (codec). AL_OK, or AL_DECLINED (c->refusal: a placeholder
 * that may not go there; no memory: 500).
 */
int
px_conn_http_request_head(struct px_conn *c)
{
    struct px_exch   *x = c->x;
    struct px_target *t = &x->target;
    const char       *target = x->fwd_path;
    size_t            tlen = x->fwd_path_len;
    struct al_dbuf    hb, tb;
    int               rc;

    if (target == NULL) {
        target = t->path_needs_slash ? "/" : t->path;
        tlen = t->path_needs_slash ? 1 : t->path_len;
    }
    px_h1_request_prepare(c);
    al_dbuf_init(&hb, c->conf->limits.header_bytes * 2 + 4096);
    al_dbuf_init(&tb, tlen * 3 + 4096);
    if (c->conf->secrets != NULL) {
        rc = px_inject_request(c, target, tlen, &hb, &tb);
        target = tb.data;
        tlen = tb.len;
    } else {
        rc = px_msg_write_headers(&x->req, &hb);
    }
    if (rc == AL_OK)
        rc = px_h1_request_head(c, target, tlen, &hb);
    if (x->injected != 0 || rc != AL_OK) { /* values went into them (a refusal: partly) */
        sec_dbuf_wipe(&hb);
        sec_dbuf_wipe(&tb);
    } else {
        al_dbuf_free(&hb);
        al_dbuf_free(&tb);
    }
    if (rc != AL_OK && rc != AL_DECLINED)
        return px_refuse(c, 500, "internal", "out of memory");
    return rc;
}

/* A complete request head is parsed: check it and decide; the machine
 * routes it (PX_NEXT_ROUTE). */
static int
px_conn_http_on_head(struct px_conn *c)
{
    struct px_exch *x = c->x;
    const char     *err;
    int             rc;

    c->head_started = 0;
    x->head_done = 1;
    rc = px_request_target(c);
    if (rc == AL_DECLINED)
        return AL_DECLINED;
    if (rc != AL_OK)
        return px_refuse(c, 500, "internal", "out of memory");
    if (px_decide(c) != AL_OK)
        return AL_DECLINED; /* c->refusal (an AL_ERROR too: 407) */
    if ((err = px_msg_connection_forbidden(&x->req)) != NULL) {
        /* "Connection: content-length" would drop the body's framing as
         * hop-by-hop while the body still flows: a second request inside.
         * Checked once the sandbox is known, so the row names who tried;
         * recorded as the protocol error it is, like any malformed request. */
        x->decided = 0;
        return px_refuse(c, 400, "bad_connection_header", err);
    }
    return PX_NEXT_ROUTE;
}

static int
px_conn_http_parse_error(struct px_conn *c, llhttp_errno_t e)
{
    struct px_exch *x = c->x;

    if (x != NULL && x->body_refusal != NULL) {
        /* A placeholder in the body that may not go there: the upstream got
         * a truncated request (never the whole placeholder); cut it off. */
        px_half_close(c, &c->up);
        px_inject_body_refusal(c);
        return AL_DECLINED;
    }

    if (x != NULL && (x->req.too_big))
        return px_refuse(c, 431, "header_too_large", NULL);
    if (c->state == PX_ST_EXCHANGE && x != NULL && x->resp_started)
        return px_next_close(c, "bad request body");
    al_log_info("conn %llu: bad request: %s (%s)", (unsigned long long)c->id, llhttp_errno_name(e),
                llhttp_get_error_reason(&c->rq) ? llhttp_get_error_reason(&c->rq) : "");
    return px_refuse(c, 400, "bad_request", llhttp_errno_name(e));
}

/*
 * Feeds buffered client bytes to the request parser as far as the state
 * allows. A complete head is decided and returned as PX_NEXT_ROUTE: the
 * machine routes it and calls here again (the state then tells whether
 * body bytes may flow). A head that began asks for the timer (its deadline
 * runs).
 */
int
px_conn_http_feed(struct px_conn *c)
{
    int began = 0;

    while (c->cin_len > 0 && !c->closing) {
        int            in_head = c->state == PX_ST_READ_HEAD;
        int            started;
        llhttp_errno_t e;
        size_t         used;

        if (!in_head && c->state == PX_ST_EXCHANGE && c->x != NULL && c->x->hold_up &&
            al_bufq_full(&c->up.out))
            px_conn_http_release_hold(c); /* bigger than the hold: stream the rest */
        if (!in_head && (c->state != PX_ST_EXCHANGE || c->x == NULL || c->x->req_done ||
                         al_bufq_full(&c->up.out)))
            break;
        started = c->head_started;
        e = llhttp_execute(&c->rq, c->cin, c->cin_len);
        if (in_head && !started && c->head_started)
            began = 1; /* a head began: its deadline runs */
        used = e == HPE_OK ? c->cin_len : (size_t)(llhttp_get_error_pos(&c->rq) - c->cin);
        if (used > c->cin_len)
            used = c->cin_len;
        if (in_head) {
            const char *bad = px_http_head_scan(&c->head_scan, c->cin, used);

            if (bad != NULL)
                return px_refuse(c, 400, "bad_request", bad);
            c->head_bytes += used;
            if (c->head_bytes > c->conf->limits.header_bytes)
                return px_refuse(c, 431, "header_too_large", NULL);
        }
        memmove(c->cin, c->cin + used, c->cin_len - used);
        c->cin_len -= used;
        if (e == HPE_OK)
            continue;
        if (e == HPE_PAUSED) {
            if (in_head) {
                c->head_bytes = 0;
                memset(&c->head_scan, 0, sizeof(c->head_scan));
                return px_conn_http_on_head(c);
            }
            break; /* request complete; the rest waits for the response */
        }
        if (e == HPE_PAUSED_UPGRADE) {
            if (c->x != NULL)
                c->x->req_done = 1;
            break;
        }
        return px_conn_http_parse_error(c, e);
    }
    return began ? PX_NEXT_TIMER : AL_OK;
}

/*
 * The upstream went away before answering. A pooled connection can race
 * with the server's own idle close, so a request that has not sent any body
 * byte yet is replayed once on a fresh connection; anything else is a 502.
 */
static int
px_conn_http_upstream_lost(struct px_conn *c, const char *detail)
{
    struct px_exch *x = c->x;

    if (x->from_pool && !x->req_body_bytes_sent && !x->resp_started) {
        al_log_debug("conn %llu: pooled upstream closed (%s), retrying on a fresh connection",
                     (unsigned long long)c->id, detail);
        px_half_close(c, &c->up);
        al_bufq_init(&c->up.out, PX_BUF_HIGH_BYTES);
        x->from_pool = 0;
        x->no_pool = 1;
        x->upstream_reusable = 0;
        if (px_conn_http_request_head(c) != AL_OK)
            return AL_DECLINED;
        return PX_NEXT_RESOLVE;
    }
    if (!x->resp_started)
        return px_refuse_upstream(c, PX_UERR_RESET, 502, "upstream_reset", detail);
    return px_next_close(c, "upstream closed mid-response");
}

/* An upstream is ready and the machine is in PX_ST_EXCHANGE: the response
 * parser, then the request's head and the body bytes at hand go. */
int
px_conn_http_start(struct px_conn *c)
{
    struct px_exch *x = c->x;
    llhttp_errno_t  e;

    px_h1_response_parser(c);
    llhttp_resume(&c->rq);
    /* A request without a body completes without another byte: let llhttp
     * reach on_message_complete now rather than when the next bytes arrive. */
    e = llhttp_execute(&c->rq, "", 0);
    if (e != HPE_OK && e != HPE_PAUSED && e != HPE_PAUSED_UPGRADE)
        return px_conn_http_parse_error(c, e);
    if (e == HPE_PAUSED_UPGRADE)
        x->req_done = 1;
    if (x->hold_up && px_msg_find_id(&x->req, PX_H_EXPECT, 0) >= 0) {
        int i = px_msg_find_id(&x->req, PX_H_EXPECT, 0);

        /* The head waits for the scanned body, so the upstream can't say
         * "100 Continue": airlock does, or the client stalls for a second. */
        if (x->req.hdrs[i].val != UINT32_MAX &&
            al_strcaseeq_n(px_msg_str(&x->req, x->req.hdrs[i].val), x->req.hdrs[i].val_len,
                           "100-continue") &&
            al_bufq_write(&c->cl.out, "HTTP/1.1 100 Continue\r\n\r\n", 25) != AL_OK)
            return px_next_close(c, "no memory");
    }
    /* Write the head now: most requests never need the write watcher. */
    if (!x->hold_up && px_half_flush(c, &c->up) == AL_ERROR)
        return px_conn_http_upstream_lost(c, "write failed");
    return px_conn_http_feed(c);
}

/* The client's stream ended (cl.eof) in an HTTP state. */
static int
px_conn_http_client_eof(struct px_conn *c)
{
    if (c->state == PX_ST_READ_HEAD && !c->head_started && c->cin_len == 0)
        return px_next_close(c, "client closed");
    if (c->state == PX_ST_READ_HEAD)
        return px_refuse(c, 400, "bad_request", "incomplete request head");
    if (c->state == PX_ST_EXCHANGE && c->x != NULL && c->x->req_done) {
        /* The response still goes out (a half-close may wait for it),
         * but a client gone before it began is recorded as such. */
        if (!c->x->resp_started && c->x->err_reason == NULL)
            c->x->err_reason = "client_closed";
        return AL_OK; /* nothing more will come */
    }
    return px_next_close(c, "client closed mid-request");
}

/* How much of a path may be logged: never the query (it may carry tokens). */
static int
px_log_path_len(const char *path, size_t len)
{
    const char *q = memchr(path, '?', len);

    if (q != NULL)
        len = (size_t)(q - path);
    return (int)(len > 200 ? 200 : len);
}

/*
 * The one test for handing an upstream connection to a next request (kept
 * on this connection, or parked in the worker's pool for any other): both
 * messages ended exactly where their framing said. The request went out
 * whole by the framing airlock wrote (its parser reached the end, nothing
 * queued or held back, no refusal cut it short), the response was read to
 * its end with no byte after it, and the upstream said keep-alive. Anything
 * else would let the next request, maybe another sandbox's, land inside
 * what the upstream still takes for this one. See docs/DESIGN.md.
 */
static int
px_conn_http_upstream_clean(const struct px_conn *c)
{
    const struct px_exch *x = c->x;

    return x != NULL && x->req_done && x->resp_done && x->upstream_reusable && !x->hold_up &&
           x->body_refusal == NULL && x->status != 101 && al_bufq_len(&c->up.out) == 0 &&
           c->up.fd >= 0;
}

/* Response fully written to the client: PX_NEXT_WS after a 101,
 * PX_NEXT_KEEP (the next request) or PX_NEXT_CLOSE. */
static int
px_conn_http_done(struct px_conn *c)
{
    struct px_exch *x = c->x;
    int             keep;

    al_log_info("conn %llu: %s %s:%u%.*s -> %d up=%llu down=%llu %lldus", (unsigned long long)c->id,
                llhttp_method_name(c->rq.method), x->target.host, x->target.port,
                px_log_path_len(x->target.path, x->target.path_len), x->target.path, x->status,
                (unsigned long long)x->bytes_up, (unsigned long long)x->bytes_down,
                (long long)(al_now_us() - x->start_us));
    px_conn_count_status(x->status);
    if (x->status == 101 && x->want_upgrade)
        return PX_NEXT_WS;
    if (c->mitm && px_conn_http_upstream_clean(c) && !c->draining) {
        c->up_kept = 1; /* the next inner request reuses it; watched while idle */
    } else if (px_conn_http_upstream_clean(c) && !c->draining) {
        /* Kept here, watched while idle: the next request to the same
         * destination reuses it (px_upstream_reuse); anything else, the
         * idle trim or the close parks it in the worker's pool. */
        memcpy(x->kept_key, x->pool_key, sizeof(x->kept_key));
        x->kept_peer = x->addrs.addrs[x->addr_idx];
        c->up_kept = 1;
    } else {
        px_half_close(c, &c->up);
    }
    px_conn_audit(c, NULL);
    keep = x->req_done && !c->close_after_flush && !c->draining && x->client_keepalive &&
           !(c->cl.eof && c->cin_len == 0);
    c->nreqs++;
    if (!keep)
        return px_next_close(c, "exchange done, no keep-alive");
    px_exch_reset(x, c->conf->limits.header_bytes); /* reused by the next request */
    llhttp_resume(&c->rq);
    if (c->cin_len == 0)
        al_safefree(c->cin); /* idle keep-alive connections hold no buffer */
    return PX_NEXT_KEEP;
}

/* PX_NEXT_KEEP, back in PX_ST_READ_HEAD: what the client pipelined is
 * parsed. A client that closed while the response was on its way has what
 * it pipelined before answered, then the connection ends. */
int
px_conn_http_next_head(struct px_conn *c)
{
    int rc = px_conn_http_feed(c);

    if ((rc == AL_OK || rc == PX_NEXT_TIMER) && c->state == PX_ST_READ_HEAD && c->cl.eof)
        return px_conn_http_client_eof(c);
    return rc;
}

static int
px_conn_http_upstream_readable(struct px_conn *c)
{
    char            buf[PX_READ_BYTES];
    ssize_t         n;
    llhttp_errno_t  e;
    struct px_exch *x = c->x;

    n = px_half_recv(c, &c->up, buf, sizeof(buf));
    if (n == -1)
        return AL_OK;
    if (n < 0)
        return px_conn_http_upstream_lost(c,
                                          c->up.ssl != NULL ? "TLS read error" : strerror(errno));
    c->last_activity = ev_now(c->worker->loop);
    if (n == 0) {
        e = llhttp_finish(&c->rs);
        if (x->resp_done) {
            x->upstream_reusable = 0;
        } else if (!x->resp_started) {
            return px_conn_http_upstream_lost(c, "closed before responding");
        } else {
            (void)e;
            return px_next_close(c, "upstream closed mid-response");
        }
    } else {
        const char *at = buf;
        size_t      left = (size_t)n;

        for (;;) {
            const char *pos;
            int         rc = AL_OK;

            e = llhttp_execute(&c->rs, at, left);
            if (e != HPE_PAUSED || !x->resp_head_ready)
                break;
            /* A response head: redacted and its body's chain readied
             * (inject), written with framing of airlock's own (codec). */
            pos = llhttp_get_error_pos(&c->rs);
            x->resp_head_ready = 0;
            if (c->conf->secrets != NULL)
                rc = px_inject_response(c);
            if (rc == AL_OK)
                rc = px_h1_response_head(c);
            if (rc == AL_DECLINED)
                return AL_DECLINED;
            if (rc != AL_OK)
                return px_refuse(c, 500, "internal", "out of memory");
            llhttp_resume(&c->rs);
            left -= (size_t)(pos - at);
            at = pos;
        }
        if (e == HPE_PAUSED) {
            if ((const char *)llhttp_get_error_pos(&c->rs) < buf + n)
                x->upstream_reusable = 0; /* bytes after the response: never reuse */
        } else if (e == HPE_PAUSED_UPGRADE) {
            const char *pos = llhttp_get_error_pos(&c->rs);

            /* The origin's first frames: they go through the websocket
             * codec once the 101 is out. */
            if (pos < buf + n && x->ws_early.max == 0)
                al_dbuf_init(&x->ws_early, PX_READ_BYTES);
            if (pos < buf + n && px_dbuf_put(&x->ws_early, pos, (size_t)(buf + n - pos)) != AL_OK)
                return px_next_close(c, "no memory");
        } else if (e != HPE_OK) {
            if (x->resp_refusal != NULL)
                return px_refuse_upstream(c, PX_UERR_OTHER, 502, x->resp_refusal,
                                          x->resp_refusal_detail);
            if (!x->resp_started)
                return px_refuse_upstream(c, PX_UERR_OTHER, 502, "upstream_bad_response",
                                          llhttp_errno_name(e));
            /* the head is out: all that is left is cutting the response */
            return px_next_close(c,
                                 x->resp_abort != NULL ? x->resp_abort : "bad upstream response");
        }
    }
    if (px_half_flush(c, &c->cl) == AL_ERROR)
        return px_next_close(c, "client write error");
    if (x->resp_done && al_bufq_len(&c->cl.out) == 0)
        return px_conn_http_done(c);
    return AL_OK;
}

/* ---- the HTTP states' handlers ------------------------------------------------- */

int
px_conn_http_on_read(struct px_conn *c, int is_cl)
{
    const char *why = NULL;
    int         rc;

    if (!is_cl) {
        if (c->state == PX_ST_EXCHANGE)
            return px_conn_http_upstream_readable(c);
        if (c->up_kept)
            px_upstream_kept_readable(c);
        return AL_OK;
    }
    rc = px_half_read_cin(c, &why);
    if (rc == AL_AGAIN)
        return AL_OK;
    if (rc == AL_ERROR)
        return px_next_close(c, why);
    if (rc == AL_DONE)
        return px_conn_http_client_eof(c);
    return px_conn_http_feed(c);
}

int
px_conn_http_on_write(struct px_conn *c, int is_cl)
{
    if (is_cl) {
        if (px_half_flush(c, &c->cl) == AL_ERROR)
            return px_next_close(c, "client write error");
        if (c->x != NULL && c->x->resp_done && al_bufq_len(&c->cl.out) == 0)
            return px_conn_http_done(c);
        return AL_OK;
    }
    if (px_half_flush(c, &c->up) == AL_ERROR) {
        if (c->x != NULL)
            return px_conn_http_upstream_lost(c, "write failed");
        return px_next_close(c, "upstream write error");
    }
    return px_conn_http_feed(c); /* room again for buffered body bytes */
}

/*
 * A keep-alive connection idle for PX_IDLE_TRIM_S between requests: the
 * request state is freed (the next request allocates it again) and a kept
 * TLS upstream is parked in the worker's pool, where any tunnel to the same
 * host may take it (PX_POOL_TLS_PER_HOST at most; the rest are closed). An
 * idle intercepted connection then holds its client TLS state only.
 */
static void
px_conn_http_idle_trim(struct px_conn *c)
{
    px_upstream_park(c);
    if (c->x != NULL) {
        px_dns_cancel(c->x->dnsq);
        c->x->dnsq = NULL;
        px_exch_free(c->x);
        c->x = NULL;
    }
}

int
px_conn_http_head_timeout(struct px_conn *c)
{
    if (!c->head_started && c->nreqs > 0 && (c->x != NULL || c->up_kept) &&
        PX_IDLE_TRIM_S < c->conf->limits.idle_timeout_s) {
        px_conn_http_idle_trim(c);
        return PX_NEXT_TIMER; /* now the idle timeout proper */
    }
    if (c->head_started)
        return px_refuse(c, 408, "header_timeout", NULL);
    if (c->nreqs == 0)
        return px_next_close(c, "no request within header_timeout_s");
    return px_next_close(c, "idle timeout");
}

int
px_conn_http_exchange_timeout(struct px_conn *c)
{
    if (c->x != NULL && !c->x->resp_started && !c->x->req_done && !al_bufq_full(&c->up.out))
        /* The request body stopped arriving while the upstream had room
         * for it: the client stalled, not the upstream. */
        return px_refuse(c, 408, "body_timeout", "the request body stopped arriving");
    if (c->x != NULL && !c->x->resp_started)
        return px_refuse_upstream(c, PX_UERR_TIMEOUT, 504, "upstream_timeout", NULL);
    return px_next_close(c, "idle timeout");
}
