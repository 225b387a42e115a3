/*
 * px_conn.c - the per-connection state machine of a forward listener.
 *
 * A connection is two halves, client (cl) and upstream (up), each with an fd,
 * embedded read/write watchers and an output queue of bytes going *to* that
 * side. Which watchers run is computed in one place, px_conn_update_io(),
 * from the state and the queue levels, so backpressure is a property of the
 * state, not of scattered start/stop calls: a side is read only while the
 * other side's queue is below PX_BUF_HIGH_BYTES.
 *
 * Requests are parsed with llhttp (strict). The parser pauses in
 * on_headers_complete (the head is decided, resolved and connected before
 * any body byte moves) and in on_message_complete (pipelined requests wait
 * until the current response is done). Heads are re-serialised from the
 * parsed form; bodies are re-framed (chunked in, chunked out), so no raw
 * framing byte of the client ever reaches the upstream.
 *
 * Lifetime: callbacks hold a reference (px_conn_ref/unref); px_conn_close()
 * stops everything at once and the memory goes when the last reference does.
 */
#include "px_conn.h"
#include "px_half.h"
#include "px_phase.h"
#include "px_inflate.h"
#include "px_origdst.h"
#include "px_sni.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "px_ca.h"

#define PX_HOLD_BODY_BYTES (1024 * 1024)                 /* request bodies held until scanned */
#define PX_HOLD_QUEUE_BYTES (PX_HOLD_BODY_BYTES + 65536) /* up.out's bound while held */
#define PX_FLUSH_CLOSE_S 10.0                            /* to write a final answer */
#define PX_LINGER_S 2.0                                  /* to drain input after it */

static _Atomic uint64_t px_conn_next_id = 1;

static void px_conn_ref(struct px_conn *c);
static void px_conn_unref(struct px_conn *c);
static void px_conn_set_state(struct px_conn *c, enum px_state st);
static void px_conn_fail(struct px_conn *c, int status, const char *reason, const char *detail);
static void px_conn_upstream_error(struct px_conn *c, enum px_uerr kind, int status,
                                   const char *reason, const char *detail);
static void px_conn_update_io(struct px_conn *c);
static void px_conn_close(struct px_conn *c, const char *why);
static void px_conn_upstream_ready(struct px_conn *c);
static void px_conn_resolve(struct px_conn *c);
static void px_conn_feed_client(struct px_conn *c);
static void px_conn_io_cb(struct ev_loop *loop, ev_io *w, int revents);
static void px_conn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void px_conn_finish_exchange(struct px_conn *c);
static void px_conn_parse_error(struct px_conn *c, llhttp_errno_t e);
static void px_conn_upstream_lost(struct px_conn *c, const char *detail);
static void px_conn_idle_trim(struct px_conn *c);
static void px_conn_close_refused(struct px_conn *c, const char *reason);
static void px_conn_finalize(struct px_conn *c);
static void px_conn_mitm_start(struct px_conn *c);
static void px_conn_route(struct px_conn *c);
static void px_conn_tls_client_step(struct px_conn *c);
static void px_conn_tls_up_step(struct px_conn *c);
static void px_conn_enter_tunnel(struct px_conn *c);
static void px_conn_enter_ws(struct px_conn *c);
static void px_conn_sni_peek(struct px_conn *c, int eof);

/* ---- small pieces ------------------------------------------------------- */

/* Indexed by enum px_state; the static assert keeps the two in step. */
static const char *const px_state_names[] = {"read_head",  "resolve",     "connect",  "exchange",
                                             "tunnel",     "flush_close", "audit",    "peek",
                                             "tls_client", "tls_up",      "sni_peek", "ws"};
_Static_assert(sizeof(px_state_names) / sizeof(px_state_names[0]) == PX_ST_WS + 1,
               "px_state_names must name every px_state");

static void
px_conn_ref(struct px_conn *c)
{
    c->refs++;
}

static void
px_conn_free(struct px_conn *c)
{
    px_exch_free(c->x);
    al_bufq_free(&c->cl.out);
    al_bufq_free(&c->up.out);
    al_free(c->cin);
    aud_record_free(c->trec);
    px_conf_unref(c->conf);
    al_free(c);
}

static void
px_conn_unref(struct px_conn *c)
{
    if (--c->refs == 0 && c->closing)
        px_conn_free(c);
}

static double
px_conn_deadline(const struct px_conn *c)
{
    const struct px_limits *l = &c->conf->limits;

    switch (c->state) {
    case PX_ST_READ_HEAD:
        /* A new connection must send its first head within header_timeout_s
         * (slowloris); between keep-alive requests the idle timeout applies
         * until the next head starts. */
        if (c->head_started || c->nreqs == 0)
            return c->phase_start + l->header_timeout_s;
        if ((c->x != NULL || c->up_kept) && PX_IDLE_TRIM_S < l->idle_timeout_s)
            return c->last_activity + PX_IDLE_TRIM_S; /* px_conn_idle_trim first */
        return c->last_activity + l->idle_timeout_s;
    case PX_ST_RESOLVE:
    case PX_ST_CONNECT:
    case PX_ST_AUDIT:
        return c->phase_start + l->connect_timeout_s;
    case PX_ST_EXCHANGE:
    case PX_ST_TUNNEL:
    case PX_ST_WS:
        return c->last_activity + l->idle_timeout_s;
    case PX_ST_PEEK:
    case PX_ST_SNI_PEEK:
        return c->phase_start + l->header_timeout_s;
    case PX_ST_TLS_CLIENT:
    case PX_ST_TLS_UP:
        return c->phase_start + l->tls_handshake_timeout_s;
    case PX_ST_FLUSH_CLOSE:
        if (c->cl.shut)
            return c->last_activity + PX_LINGER_S;
        return c->phase_start + PX_FLUSH_CLOSE_S;
    }
    return c->last_activity + l->idle_timeout_s;
}

static void
px_conn_arm_timer(struct px_conn *c)
{
    ev_tstamp now = ev_now(c->worker->loop);
    double    left = px_conn_deadline(c) - now;

    c->timer.repeat = left > 0.001 ? left : 0.001;
    ev_timer_again(c->worker->loop, &c->timer);
}

static void
px_conn_set_state(struct px_conn *c, enum px_state st)
{
    if (c->state != st)
        al_log_debug("conn %llu: %s -> %s", (unsigned long long)c->id, px_state_names[c->state],
                     px_state_names[st]);
    px_metrics_phase(c->state, st, c->phase_start, ev_now(c->worker->loop)); /* histograms */
    c->state = st;
    c->phase_start = ev_now(c->worker->loop);
    c->last_activity = c->phase_start;
    px_conn_arm_timer(c);
}

static int
px_dbuf_to_bufq(struct al_dbuf *d, struct al_bufq *q)
{
    int rc = al_bufq_write(q, d->data, d->len);

    al_dbuf_free(d);
    return rc;
}

/*
 * Answers the client with an error and closes after the answer is written.
 * When a response is already under way nothing can be said any more: the
 * connection is cut so the client sees a truncated message, never a forged one.
 */
static void
px_conn_fail_ex(struct px_conn *c, int status, const char *reason, const char *detail,
                const char *extra)
{
    struct al_dbuf d;

    if (c->x != NULL && c->x->resp_started) {
        al_log_info("conn %llu: aborted mid-response: %s", (unsigned long long)c->id, reason);
        px_conn_close(c, reason);
        return;
    }
    if (c->x != NULL && c->x->silent_tunnel) {
        /* Transparent TLS or raw TCP: there is no HTTP to answer in. The
         * row records the status airlock would have given. */
        c->x->status = status;
        c->x->err_reason = reason;
        px_conn_close_refused(c, reason);
        return;
    }
    al_log_info("conn %llu: %d %s%s%s", (unsigned long long)c->id, status, reason,
                detail ? ": " : "", detail ? detail : "");
    if (c->x == NULL) /* bytes that never became a request head still get a row */
        c->x = al_calloc(1, sizeof(*c->x));
    if (c->x != NULL && c->x->start_us == 0)
        c->x->start_us = al_now_us();
    if (c->x != NULL) {
        c->x->status = status;
        c->x->resp_started = 1;
        c->x->err_reason = reason;
        px_dns_cancel(c->x->dnsq);
        c->x->dnsq = NULL;
        px_conn_audit(c, NULL);
    }
    px_conn_count_status(status);
    px_half_close(c, &c->up);
    al_dbuf_init(&d, 4096);
    if (px_http_error_ex(&d, status, reason, detail, extra) != AL_OK ||
        px_dbuf_to_bufq(&d, &c->cl.out) != AL_OK) {
        px_conn_close(c, "no memory");
        return;
    }
    px_conn_set_state(c, PX_ST_FLUSH_CLOSE);
}

static void
px_conn_fail(struct px_conn *c, int status, const char *reason, const char *detail)
{
    px_conn_fail_ex(c, status, reason, detail, NULL);
}

static void
px_conn_upstream_error(struct px_conn *c, enum px_uerr kind, int status, const char *reason,
                       const char *detail)
{
    atomic_fetch_add_explicit(&px_metrics.upstream_errors[kind], 1, memory_order_relaxed);
    px_conn_fail(c, status, reason, detail);
}

/*
 * A flow with no protocol to answer in (transparent TLS or TCP, an
 * intercepted tunnel before its first request): a row saying why, then
 * close.
 */
static void
px_conn_close_refused(struct px_conn *c, const char *reason)
{
    if (c->mode == PX_LISTEN_TRANSPARENT)
        px_transparent_refusal_row(c, reason);
    if (c->x != NULL)
        px_conn_audit(c, reason);
    al_log_info("conn %llu: %s connection refused: %s", (unsigned long long)c->id,
                c->mitm ? "intercepted" : "transparent", reason);
    px_conn_close(c, reason);
}

/*
 * The one place a phase's refusal (c->refusal, with AL_DECLINED) becomes an
 * answer, a row and the next state, as nginx's phase handlers return and
 * ngx_http_finalize_request answers. Phases never answer themselves.
 */
static void
px_conn_finalize(struct px_conn *c)
{
    const struct px_refusal *r = &c->refusal;

    if (r->upstream)
        atomic_fetch_add_explicit(&px_metrics.upstream_errors[r->uerr], 1, memory_order_relaxed);
    if (r->status == 0) {
        px_conn_close_refused(c, r->reason);
        return;
    }
    if (r->deny && c->x != NULL)
        c->x->deny = 1;
    px_conn_fail_ex(c, r->status, r->reason, r->detail, r->extra);
}

/* Strict audit: the request's row is begun and must commit before anything
 * goes upstream. AL_OK: not strict, go on; AL_AGAIN: waiting in PX_ST_AUDIT
 * (px_conn_audit_committed resumes); AL_DECLINED: answered. */
static int
px_conn_strict_begin(struct px_conn *c)
{
    int rc;

    if (c->worker->rt.audit == NULL || !c->conf->audit_strict)
        return AL_OK;
    rc = px_conn_audit_begin(c);
    if (rc == AL_AGAIN) {
        px_conn_ref(c); /* held until the commit notice arrives */
        px_conn_set_state(c, PX_ST_AUDIT);
    } else {
        px_conn_finalize(c);
        rc = AL_DECLINED;
    }
    return rc;
}

/* ---- watcher bookkeeping ------------------------------------------------ */

/* Which watchers run follows from the state and the queue levels, and is
 * recomputed once at the end of every event (I/O, timer, DNS answer, strict
 * audit notice, accept): no path arms or stops a watcher by hand. */

static void
px_io_want(struct ev_loop *loop, ev_io *w, int fd, int want)
{
    if (fd < 0)
        want = 0;
    if (want && !ev_is_active(w))
        ev_io_start(loop, w);
    else if (!want && ev_is_active(w))
        ev_io_stop(loop, w);
}

static void
px_conn_update_io(struct px_conn *c)
{
    struct ev_loop *loop = c->worker->loop;
    struct px_exch *x = c->x;
    int             cr = 0, cw = 0, ur = 0, uw = 0;

    if (c->closing)
        return;
    cw = al_bufq_len(&c->cl.out) > 0;
    switch (c->state) {
    case PX_ST_READ_HEAD:
    case PX_ST_PEEK:
        cr = !c->cl.eof && c->cin_len < PX_CIN_BYTES;
        /* A kept upstream stays watched between requests: if it closes or
         * talks out of turn it is dropped at once, and the watcher is not
         * stopped and restarted around every request (epoll_ctl calls). */
        ur = c->up_kept && c->up.fd >= 0;
        break;
    case PX_ST_AUDIT:
        /* While the row commits the watchers stay as they were (stopping and
         * restarting them costs epoll_ctl calls on every request); one that
         * fires meanwhile is stopped by px_conn_io_cb until the commit. */
        cr = ev_is_active(&c->cl.rio);
        ur = ev_is_active(&c->up.rio);
        break;
    case PX_ST_RESOLVE:
        break;
    case PX_ST_CONNECT:
        uw = 1;
        break;
    case PX_ST_EXCHANGE:
        if (x != NULL && x->hold_up && al_bufq_full(&c->up.out)) {
            /* A body bigger than the hold (chunked, of no announced length):
             * stream the rest. Here, not only when client bytes are fed: a
             * full queue stops client reads, which would never come back. */
            x->hold_up = 0;
            c->up.out.max = PX_BUF_HIGH_BYTES;
        }
        /* After a complete request the client stays watched too (bytes it
         * pipelines wait in cin, bounded; EOF is noted for after the
         * response), so keep-alive does not stop and restart the watcher
         * around every response. Not before a possible 101: what follows an
         * upgrade request is not HTTP. */
        cr = !c->cl.eof && x != NULL && c->cin_len < PX_CIN_BYTES &&
             (x->req_done ? !x->want_upgrade : !al_bufq_full(&c->up.out));
        uw = al_bufq_len(&c->up.out) > 0 && (x == NULL || !x->hold_up);
        ur = x != NULL && !x->resp_done && !al_bufq_full(&c->cl.out);
        break;
    case PX_ST_TUNNEL:
        cr = !c->cl.eof && c->cl.inpipe == 0 && al_bufq_len(&c->up.out) == 0;
        ur = !c->up.eof && c->up.inpipe == 0 && al_bufq_len(&c->cl.out) == 0;
        uw = c->cl.inpipe > 0 || al_bufq_len(&c->up.out) > 0;
        cw = c->up.inpipe > 0 || al_bufq_len(&c->cl.out) > 0;
        break;
    case PX_ST_FLUSH_CLOSE:
        cr = c->cl.shut;
        break;
    case PX_ST_TLS_CLIENT:
        cr = c->cl.plain_out == 0 && c->cl.tls_want != EV_WRITE;
        cw = cw || c->cl.tls_want == EV_WRITE;
        break;
    case PX_ST_TLS_UP:
        ur = c->up.tls_want == EV_READ;
        uw = c->up.tls_want != EV_READ;
        break;
    case PX_ST_SNI_PEEK:
        cr = !c->cl.eof && c->cin_len < PX_CIN_BYTES;
        ur = c->cin_len == 0; /* an upstream that speaks first: no ClientHello to check */
        break;
    case PX_ST_WS:
        /* Each side is read while the other's queue has room; once close
         * frames are queued only the queues drain. */
        cr = !c->ws_closing && !c->cl.eof && !al_bufq_full(&c->up.out);
        ur = !c->ws_closing && !c->up.eof && !al_bufq_full(&c->cl.out);
        uw = al_bufq_len(&c->up.out) > 0;
        break;
    }
    /* An SSL call that needs the other direction (rare: key updates). */
    if (c->cl.ssl != NULL && c->cl.tls_want == EV_WRITE)
        cw = 1;
    if (c->up.ssl != NULL && c->up.tls_want == EV_WRITE)
        uw = 1;
    px_io_want(loop, &c->cl.rio, c->cl.fd, cr);
    px_io_want(loop, &c->cl.wio, c->cl.fd, cw);
    px_io_want(loop, &c->up.rio, c->up.fd, ur);
    px_io_want(loop, &c->up.wio, c->up.fd, uw);
    /* Decrypted bytes waiting inside OpenSSL announce themselves to nobody. */
    if (cr && c->cl.tls_more)
        ev_feed_event(loop, &c->cl.rio, EV_READ);
    if (ur && c->up.ssl != NULL && c->up.tls_want != EV_READ && SSL_has_pending(c->up.ssl))
        ev_feed_event(loop, &c->up.rio, EV_READ); /* not after "want read": a partial record */
}

/* ---- closing ------------------------------------------------------------ */

static void
px_conn_close(struct px_conn *c, const char *why)
{
    struct px_worker *w = c->worker;

    if (c->closing)
        return;
    c->closing = 1;
    al_log_debug("conn %llu: close (%s)", (unsigned long long)c->id, why);
    if (c->x != NULL) {
        px_dns_cancel(c->x->dnsq);
        c->x->dnsq = NULL;
        px_conn_audit(c, why); /* a request cut short still gets its row */
    }
    px_conn_tunnel_audit_close(c, why);
    if (c->state == PX_ST_TUNNEL || c->state == PX_ST_WS)
        PX_MDEC(tunnels_open);
    if (c->up_kept)
        px_upstream_park(c); /* the next connection to this host may use it */
    ev_timer_stop(w->loop, &c->timer);
    px_half_close(c, &c->cl);
    px_half_close(c, &c->up);
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    w->nconns--;
    PX_MDEC(conns_open);
    if (c->refs == 0)
        px_conn_free(c);
    if (w->draining && w->nconns == 0)
        ev_break(w->loop, EVBREAK_ONE);
}

/* ---- from head to upstream --------------------------------------------- */

/* Ends the hold on a scanned request: its bytes may go upstream now. */
static void
px_conn_release_hold(struct px_conn *c)
{
    c->x->hold_up = 0;
    c->up.out.max = PX_BUF_HIGH_BYTES;
}

/*
 * The upstream request head from the parsed request, into up.out: what
 * never goes upstream dropped (codec), placeholders replaced in scope and
 * the body's chain readied (inject), the head written with framing of
 * airlock's own (codec). AL_OK, AL_DECLINED (c->refusal), AL_ERROR.
 */
static int
px_conn_write_request_head(struct px_conn *c)
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
    return rc;
}

/*
 * The one way into PX_ST_TUNNEL (a CONNECT, a transparent TLS or TCP flow, a
 * websocket after its 101): the tunnel's row opens (written at close with
 * bytes and duration), client bytes already read go up first, and the
 * exchange is freed.
 */
static void
px_conn_enter_tunnel(struct px_conn *c)
{
    struct px_exch *x = c->x;

    if (c->cin_len > 0 && al_bufq_write(&c->up.out, c->cin, c->cin_len) != AL_OK) {
        px_conn_close(c, "no memory");
        return;
    }
    x->bytes_up += c->cin_len; /* they go up the tunnel too */
    px_conn_tunnel_audit_open(c);
    c->cin_len = 0;
    al_safefree(c->cin);
    px_exch_free(x);
    c->x = NULL;
    PX_MINC(tunnels_open);
    PX_MINC(tunnels_total);
    px_conn_set_state(c, PX_ST_TUNNEL);
}

/* PX_ST_SNI_PEEK: the client's first bytes of an opaque CONNECT tunnel. A
 * ClientHello naming another host (domain fronting) ends the tunnel before
 * any of its bytes go up: the 200 is out, so there is no answer, only the
 * row (deny, sni_mismatch) and the close. */
static void
px_conn_sni_peek(struct px_conn *c, int eof)
{
    struct px_exch *x = c->x;
    int             rc = px_tls_tunnel_sni_check(c, eof);

    if (rc == AL_AGAIN)
        return;
    if (rc != AL_OK) {
        x->decided = 0;
        x->deny = 1;
        x->status = c->refusal.status;
        x->err_reason = c->refusal.reason;
        px_conn_close_refused(c, c->refusal.reason);
        return;
    }
    px_conn_enter_tunnel(c);
}

static void
px_conn_upstream_ready(struct px_conn *c)
{
    struct px_exch *x = c->x;
    llhttp_errno_t  e;

    px_sockaddr_str((struct sockaddr *)&x->addrs.addrs[x->addr_idx], x->upstream_str,
                    sizeof(x->upstream_str));
    if (x->is_connect) {
        static const char ok[] = "HTTP/1.1 200 Connection established\r\n\r\n";

        if (!x->silent_tunnel && al_bufq_write(&c->cl.out, ok, sizeof(ok) - 1) != AL_OK) {
            px_conn_close(c, "no memory");
            return;
        }
        al_log_info("conn %llu: %s %s:%u via %s", (unsigned long long)c->id,
                    x->method_name ? x->method_name : "CONNECT", x->target.host, x->target.port,
                    x->upstream_str);
        px_conn_count_status(200);
        x->status = 200;
        if (!x->silent_tunnel) {
            /* An opaque CONNECT tunnel: no client byte goes up before its
             * ClientHello (if it speaks TLS) names the CONNECT host. A
             * transparent TLS flow was decided by its SNI already. */
            px_conn_set_state(c, PX_ST_SNI_PEEK);
            if (px_half_flush(c, &c->cl) == AL_ERROR) {
                px_conn_close(c, "client write error");
                return;
            }
            px_conn_sni_peek(c, c->cl.eof);
            return;
        }
        px_conn_enter_tunnel(c);
        return;
    }
    px_conn_set_state(c, PX_ST_EXCHANGE);
    px_h1_response_parser(c);
    llhttp_resume(&c->rq);
    /* A request without a body completes without another byte: let llhttp
     * reach on_message_complete now rather than when the next bytes arrive. */
    e = llhttp_execute(&c->rq, "", 0);
    if (e != HPE_OK && e != HPE_PAUSED && e != HPE_PAUSED_UPGRADE) {
        px_conn_parse_error(c, e);
        return;
    }
    if (e == HPE_PAUSED_UPGRADE)
        x->req_done = 1;
    if (x->hold_up && px_msg_find_id(&x->req, PX_H_EXPECT, 0) >= 0) {
        int i = px_msg_find_id(&x->req, PX_H_EXPECT, 0);

        /* The head waits for the scanned body, so the upstream can't say
         * "100 Continue": airlock does, or the client stalls for a second. */
        if (x->req.hdrs[i].val != UINT32_MAX &&
            al_strcaseeq_n(px_msg_str(&x->req, x->req.hdrs[i].val), x->req.hdrs[i].val_len,
                           "100-continue") &&
            al_bufq_write(&c->cl.out, "HTTP/1.1 100 Continue\r\n\r\n", 25) != AL_OK) {
            px_conn_close(c, "no memory");
            return;
        }
    }
    /* Write the head now: most requests never need the write watcher. */
    if (!x->hold_up && px_half_flush(c, &c->up) == AL_ERROR) {
        px_conn_upstream_lost(c, "write failed");
        return;
    }
    px_conn_feed_client(c);
}

/* After a connect attempt started (AL_AGAIN) or failed for good. */
static void
px_conn_connecting(struct px_conn *c, int rc)
{
    if (rc == AL_AGAIN) {
        if (c->state != PX_ST_CONNECT) /* the next address keeps the first's clock */
            px_conn_set_state(c, PX_ST_CONNECT);
    } else {
        px_conn_finalize(c);
    }
}

/* The upstream socket became writable while connecting. */
static void
px_conn_connect_done(struct px_conn *c)
{
    int rc = px_upstream_connected(c);

    if (rc != AL_OK) {
        px_conn_connecting(c, rc);
        return;
    }
    if (c->x->target.tls) {
        if (px_tls_up_start(c) != AL_OK) {
            px_conn_finalize(c);
            return;
        }
        px_conn_set_state(c, PX_ST_TLS_UP);
        px_conn_tls_up_step(c);
        return;
    }
    px_conn_upstream_ready(c);
}

static void
px_conn_dns_done(void *arg, const struct px_dns_result *res)
{
    struct px_conn *c = arg;
    int             rc;

    px_conn_ref(c);
    c->x->dnsq = NULL;
    rc = px_upstream_resolved(c, res);
    if (rc == AL_OK)
        rc = px_upstream_connect(c);
    px_conn_connecting(c, rc);
    if (!c->closing)
        px_conn_update_io(c);
    px_conn_unref(c);
}

/* An upstream for the exchange: reused when one is at hand, else resolved
 * (airlock's own resolution) and connected. */
static void
px_conn_resolve(struct px_conn *c)
{
    struct px_exch *x = c->x;
    int             rc = px_upstream_reuse(c);

    if (rc == AL_OK) {
        px_conn_upstream_ready(c);
        return;
    }
    if (rc != AL_AGAIN) {
        px_conn_finalize(c);
        return;
    }
    px_conn_set_state(c, PX_ST_RESOLVE);
    rc = px_dns_resolve(c->worker->dns, x->target.host, x->target.port, px_conn_dns_done, c,
                        &x->addrs, &x->dnsq);
    if (rc == AL_OK)
        px_conn_dns_done(c, &x->addrs);
    else if (rc != AL_AGAIN)
        px_conn_upstream_error(c, PX_UERR_DNS, 502, "dns_failed", "resolver error");
}

/* A complete request head is parsed: check it, decide, then resolve. */
static void
px_conn_on_head(struct px_conn *c)
{
    struct px_exch *x = c->x;
    struct px_msg  *m = &x->req;
    const char     *err;
    int             rc;

    c->head_started = 0;
    x->head_done = 1;
    rc = px_request_target(c);
    if (rc != AL_OK) {
        if (rc == AL_DECLINED)
            px_conn_finalize(c);
        else
            px_conn_fail(c, 500, "internal", "out of memory");
        return;
    }
    if (px_decide(c) != AL_OK) {
        px_conn_finalize(c);
        return;
    }
    if ((err = px_msg_connection_forbidden(m)) != NULL) {
        /* "Connection: content-length" would drop the body's framing as
         * hop-by-hop while the body still flows: a second request inside.
         * Checked once the sandbox is known, so the row names who tried;
         * recorded as the protocol error it is, like any malformed request. */
        x->decided = 0;
        px_conn_fail(c, 400, "bad_connection_header", err);
        return;
    }
    px_conn_route(c);
}

static void
px_conn_parse_error(struct px_conn *c, llhttp_errno_t e)
{
    struct px_exch *x = c->x;

    if (x != NULL && x->body_refusal != NULL) {
        /* A placeholder in the body that may not go there: the upstream got
         * a truncated request (never the whole placeholder); cut it off. */
        px_half_close(c, &c->up);
        px_inject_body_refusal(c);
        px_conn_finalize(c);
        return;
    }

    if (x != NULL && (x->req.too_big)) {
        px_conn_fail(c, 431, "header_too_large", NULL);
        return;
    }
    if (c->state == PX_ST_EXCHANGE && x != NULL && x->resp_started) {
        px_conn_close(c, "bad request body");
        return;
    }
    al_log_info("conn %llu: bad request: %s (%s)", (unsigned long long)c->id, llhttp_errno_name(e),
                llhttp_get_error_reason(&c->rq) ? llhttp_get_error_reason(&c->rq) : "");
    px_conn_fail(c, 400, "bad_request", llhttp_errno_name(e));
}

/* Feeds buffered client bytes to the request parser as far as the state allows. */
static void
px_conn_feed_client(struct px_conn *c)
{
    while (c->cin_len > 0 && !c->closing) {
        int            in_head = c->state == PX_ST_READ_HEAD;
        int            started;
        llhttp_errno_t e;
        size_t         used;

        if (!in_head && c->state == PX_ST_EXCHANGE && c->x != NULL && c->x->hold_up &&
            al_bufq_full(&c->up.out))
            px_conn_release_hold(c); /* bigger than the hold: stream the rest */
        if (!in_head && (c->state != PX_ST_EXCHANGE || c->x == NULL || c->x->req_done ||
                         al_bufq_full(&c->up.out)))
            break;
        started = c->head_started;
        e = llhttp_execute(&c->rq, c->cin, c->cin_len);
        if (in_head && !started && c->head_started)
            px_conn_arm_timer(c); /* a head began: its deadline runs */
        used = e == HPE_OK ? c->cin_len : (size_t)(llhttp_get_error_pos(&c->rq) - c->cin);
        if (used > c->cin_len)
            used = c->cin_len;
        if (in_head) {
            const char *bad = px_http_head_scan(&c->head_scan, c->cin, used);

            if (bad != NULL) {
                px_conn_fail(c, 400, "bad_request", bad);
                return;
            }
            c->head_bytes += used;
            if (c->head_bytes > c->conf->limits.header_bytes) {
                px_conn_fail(c, 431, "header_too_large", NULL);
                return;
            }
        }
        memmove(c->cin, c->cin + used, c->cin_len - used);
        c->cin_len -= used;
        if (e == HPE_OK)
            continue;
        if (e == HPE_PAUSED) {
            if (in_head) {
                c->head_bytes = 0;
                memset(&c->head_scan, 0, sizeof(c->head_scan));
                px_conn_on_head(c);
                continue; /* the state tells whether body bytes may flow now */
            }
            break; /* request complete; the rest waits for the response */
        }
        if (e == HPE_PAUSED_UPGRADE) {
            if (c->x != NULL)
                c->x->req_done = 1;
            break;
        }
        px_conn_parse_error(c, e);
        return;
    }
}

/* ---- TLS steps and transparent flows --------------------------------------- */

static void
px_conn_tls_up_step(struct px_conn *c)
{
    int rc = px_tls_up_step(c);

    if (rc == AL_OK)
        px_conn_upstream_ready(c);
    else if (rc != AL_AGAIN)
        px_conn_finalize(c);
}

/*
 * An allowed CONNECT that airlock intercepts: answer 200 in the clear, then
 * speak TLS to the client with a leaf minted for the CONNECT host (or its
 * SNI, which must name the same host). Every request inside is parsed,
 * decided, injected and audited on its own; the upstream connection is
 * opened (and verified) per the first inner request and kept while reusable.
 */
static void
px_conn_mitm_start(struct px_conn *c)
{
    int rc = px_tls_mitm_prepare(c);

    if (rc == AL_DECLINED) {
        px_conn_finalize(c);
        return;
    }
    if (rc != AL_OK) {
        px_conn_close(c, "no memory");
        return;
    }
    px_conn_set_state(c, PX_ST_TLS_CLIENT);
    if (px_half_flush(c, &c->cl) == AL_ERROR) {
        px_conn_close(c, "client write error");
        return;
    }
    /* A ClientHello already in the BIO (coalesced with the CONNECT head, or
     * peeked by a transparent listener) will not be announced by the socket. */
    if (c->cl.plain_out == 0)
        px_conn_tls_client_step(c);
}

/* Handshake with the client; then the inner requests start. */
static void
px_conn_tls_client_step(struct px_conn *c)
{
    int rc = px_tls_client_step(c);

    if (rc == AL_AGAIN)
        return;
    if (rc != AL_OK) {
        px_conn_finalize(c);
        return;
    }
    px_conn_set_state(c, PX_ST_READ_HEAD);
    if (px_half_tls_buffered(&c->cl))
        c->cl.tls_more = 1, ev_feed_event(c->worker->loop, &c->cl.rio, EV_READ);
}

/* A decided request or flow: intercepted, sent upstream, or refused. */
static void
px_conn_route(struct px_conn *c)
{
    int rc = px_route(c);

    if (rc == PX_ROUTE_MITM) {
        px_conn_mitm_start(c);
        return;
    }
    if (rc != PX_ROUTE_UPSTREAM) {
        px_conn_finalize(c);
        return;
    }
    if (!c->x->is_connect) {
        rc = px_conn_write_request_head(c);
        if (rc == AL_DECLINED) {
            px_conn_finalize(c); /* a placeholder that may not go there */
            return;
        }
        if (rc != AL_OK) {
            px_conn_fail(c, 500, "internal", "out of memory");
            return;
        }
    }
    if (px_conn_strict_begin(c) != AL_OK)
        return; /* resolving continues once the row is committed */
    px_conn_resolve(c);
}

/* PX_ST_PEEK: the first bytes say which protocol the sandbox speaks. */
static void
px_conn_peek(struct px_conn *c, int eof)
{
    char              sni[PX_SNI_HOST_BYTES];
    enum px_peek_kind kind = PX_PEEK_TCP;
    int               rc = px_transparent_peek(c, eof, &kind, sni, sizeof(sni));

    if (rc == AL_AGAIN)
        return;
    if (rc != AL_OK) {
        px_conn_finalize(c);
        return;
    }
    if (kind == PX_PEEK_HTTP) {
        c->state = PX_ST_READ_HEAD; /* same clock: the head must complete in time */
        px_conn_feed_client(c);
        return;
    }
    rc = px_transparent_tunnel_target(c, kind == PX_PEEK_TLS ? sni : NULL);
    if (rc == AL_OK)
        rc = px_decide(c);
    if (rc == AL_ERROR)
        px_conn_close(c, "no memory");
    else if (rc != AL_OK)
        px_conn_finalize(c);
    else
        px_conn_route(c);
}

/* ---- websockets -------------------------------------------------------------- */

/* The socket is over: its row, then the connection closes. */
static void
px_conn_ws_end(struct px_conn *c, const char *why)
{
    px_ws_row(c, why);
    px_conn_close(c, why != NULL ? why : "websocket closed");
}

/*
 * The socket ends on airlock's word (code: 1001 going away, 1002/1008/1009 a
 * violation): close frames toward both sides, the row now; the origin's
 * frame is flushed as far as it goes and that side closed, the client's
 * answer is written and its further input read and dropped for a while
 * (PX_ST_FLUSH_CLOSE): closing with unread input would reset the
 * connection and could destroy the close frame before the client reads it.
 */
static void
px_conn_ws_close(struct px_conn *c, int code, const char *why)
{
    struct px_exch *x = c->x;

    if (x->ws->error == NULL && code != 1000)
        x->ws->error = why;
    if (px_ws_close_frame(c, 1, code, why) != AL_OK ||
        px_ws_close_frame(c, 0, code, why) != AL_OK) {
        px_conn_close(c, "no memory");
        return;
    }
    c->ws_closing = 1;
    (void)px_half_flush(c, &c->up);
    px_ws_row(c, why);
    px_half_close(c, &c->up);
    PX_MDEC(tunnels_open); /* no longer PX_ST_WS when it closes */
    px_conn_set_state(c, PX_ST_FLUSH_CLOSE);
}

/* What the codec said about one side's bytes. AL_OK: the socket goes on. */
static int
px_conn_ws_after(struct px_conn *c, int rc, int from_client)
{
    switch (rc) {
    case AL_OK:
        return AL_OK;
    case PX_WS_DONE: /* the close handshake went both ways: end when drained */
        c->ws_closing = 1;
        if (px_half_flush(c, &c->cl) != AL_AGAIN && px_half_flush(c, &c->up) != AL_AGAIN)
            px_conn_ws_end(c, NULL);
        return AL_ERROR;
    case PX_WS_GONE: /* a side went away without its close frame */
        if (from_client) {
            /* Nobody to answer on the client's side: the origin is told
             * 1001 (best effort) and the socket ends now. */
            if (px_ws_close_frame(c, 0, 1001, "client closed websocket") == AL_OK)
                (void)px_half_flush(c, &c->up);
            c->x->ws->error = "client closed websocket";
            px_conn_ws_end(c, "client closed websocket");
        } else {
            px_conn_ws_close(c, 1001, "upstream closed websocket");
        }
        return AL_ERROR;
    case AL_DECLINED: /* a violation or a refused placeholder */
        px_ws_fail_row(c);
        px_conn_ws_close(c, c->x->ws->fail_code, c->x->ws->error);
        return AL_ERROR;
    default:
        px_conn_close(c, "no memory");
        return AL_ERROR;
    }
}

/*
 * After a 101: the socket is relayed frame by frame both ways (px_ws.c),
 * scanned where secrets apply; the exchange stays for the one row written
 * when the socket closes (duration, messages and bytes each way, close
 * codes).
 */
static void
px_conn_enter_ws(struct px_conn *c)
{
    struct px_exch *x = c->x;

    x->ws = px_ws_new(c, x->ws_scan, !x->ws_scan);
    if (x->ws == NULL || px_ws_chains(c) != AL_OK) {
        px_conn_close(c, "no memory");
        return;
    }
    x->bytes_up = x->bytes_down = 0; /* from here on: the frames' payload bytes */
    PX_MINC(tunnels_open);
    PX_MINC(tunnels_total);
    px_conn_set_state(c, PX_ST_WS);
    if (px_conn_ws_audit_begin(c) != AL_OK) { /* its row first: no frame moves unaudited */
        px_conn_ws_close(c, 1013, x->err_reason);
        return;
    }
    if (c->cin_len > 0) { /* frames the client sent right after the upgrade */
        size_t n = c->cin_len;

        c->cin_len = 0;
        if (px_conn_ws_after(c, px_ws_take(c, 1, c->cin, n), 1) != AL_OK)
            return;
    }
    if (x->ws_early.len > 0 &&
        px_conn_ws_after(c, px_ws_take(c, 0, x->ws_early.data, x->ws_early.len), 0) != AL_OK)
        return;
    al_dbuf_free(&x->ws_early);
    /* An idle socket keeps only what it needs: the parser's input buffer
     * (16 KiB) and the answer's head go; the request's head stays (the row
     * reads its target). */
    al_safefree(c->cin);
    px_msg_free(&x->resp);
    if (px_half_flush(c, &c->cl) == AL_ERROR || px_half_flush(c, &c->up) == AL_ERROR)
        px_conn_close(c, "write error");
}

static void
px_conn_ws_io(struct px_conn *c, int is_cl, int revents)
{
    if (revents & EV_WRITE) {
        if (px_half_flush(c, is_cl ? &c->cl : &c->up) == AL_ERROR) {
            px_conn_close(c, "websocket write error");
            return;
        }
    }
    if (c->ws_closing) {
        if (al_bufq_len(&c->cl.out) == 0 && al_bufq_len(&c->up.out) == 0)
            px_conn_ws_end(c, c->x->err_reason);
        return;
    }
    if ((revents & EV_READ) && px_conn_ws_after(c, px_ws_read(c, is_cl), is_cl) != AL_OK)
        return;
    if (px_half_flush(c, &c->cl) == AL_ERROR || px_half_flush(c, &c->up) == AL_ERROR)
        px_conn_close(c, "websocket write error");
}

/* ---- I/O handlers -------------------------------------------------------- */

static void
px_conn_client_readable(struct px_conn *c)
{
    int n;

    if (c->cin == NULL) {
        c->cin = al_malloc(PX_CIN_BYTES);
        if (c->cin == NULL) {
            px_conn_close(c, "no memory");
            return;
        }
    }
    n = px_half_read_into(c, &c->cl, c->cin, PX_CIN_BYTES, &c->cin_len);
    if (n == -1)
        return;
    if (n == -2) {
        px_conn_close(c, "client read error");
        return;
    }
    c->last_activity = ev_now(c->worker->loop);
    if (n == 0) {
        c->cl.eof = 1;
        if (c->state == PX_ST_PEEK && c->cin_len > 0)
            px_conn_peek(c, 1); /* the sandbox said all it will say: decide now */
        else if (c->state == PX_ST_SNI_PEEK && c->cin_len > 0)
            px_conn_sni_peek(c, 1);
        else if (c->state == PX_ST_PEEK ||
                 (c->state == PX_ST_READ_HEAD && !c->head_started && c->cin_len == 0))
            px_conn_close(c, "client closed");
        else if (c->state == PX_ST_READ_HEAD)
            px_conn_fail(c, 400, "bad_request", "incomplete request head");
        else if (c->state == PX_ST_EXCHANGE && c->x != NULL && c->x->req_done) {
            /* The response still goes out (a half-close may wait for it),
             * but a client gone before it began is recorded as such. */
            if (!c->x->resp_started && c->x->err_reason == NULL)
                c->x->err_reason = "client_closed";
            return; /* nothing more will come */
        } else
            px_conn_close(c, "client closed mid-request");
        return;
    }
    if (c->state == PX_ST_PEEK) {
        px_conn_peek(c, 0);
        return;
    }
    if (c->state == PX_ST_SNI_PEEK) {
        px_conn_sni_peek(c, 0);
        return;
    }
    px_conn_feed_client(c);
}

/*
 * The upstream went away before answering. A pooled connection can race
 * with the server's own idle close, so a request that has not sent any body
 * byte yet is replayed once on a fresh connection; anything else is a 502.
 */
static void
px_conn_upstream_lost(struct px_conn *c, const char *detail)
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
        switch (px_conn_write_request_head(c)) {
        case AL_OK:
            break;
        case AL_DECLINED:
            px_conn_finalize(c);
            return;
        default:
            px_conn_fail(c, 500, "internal", "out of memory");
            return;
        }
        px_conn_resolve(c);
        return;
    }
    if (!x->resp_started)
        px_conn_upstream_error(c, PX_UERR_RESET, 502, "upstream_reset", detail);
    else
        px_conn_close(c, "upstream closed mid-response");
}

static void
px_conn_upstream_readable(struct px_conn *c)
{
    char            buf[PX_READ_BYTES];
    ssize_t         n;
    llhttp_errno_t  e;
    struct px_exch *x = c->x;

    n = px_half_recv(c, &c->up, buf, sizeof(buf));
    if (n == -1)
        return;
    if (n < 0) {
        px_conn_upstream_lost(c, c->up.ssl != NULL ? "TLS read error" : strerror(errno));
        return;
    }
    c->last_activity = ev_now(c->worker->loop);
    if (n == 0) {
        e = llhttp_finish(&c->rs);
        if (x->resp_done) {
            x->upstream_reusable = 0;
        } else if (!x->resp_started) {
            px_conn_upstream_lost(c, "closed before responding");
            return;
        } else {
            (void)e;
            px_conn_close(c, "upstream closed mid-response");
            return;
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
            if (rc == AL_DECLINED) {
                px_conn_finalize(c);
                return;
            }
            if (rc != AL_OK) {
                px_conn_fail(c, 500, "internal", "out of memory");
                return;
            }
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
            if (pos < buf + n && al_dbuf_add(&x->ws_early, pos, (size_t)(buf + n - pos)) != AL_OK) {
                px_conn_close(c, "no memory");
                return;
            }
        } else if (e != HPE_OK) {
            if (x->resp_refusal != NULL)
                px_conn_upstream_error(c, PX_UERR_OTHER, 502, x->resp_refusal,
                                       x->resp_refusal_detail);
            else if (!x->resp_started)
                px_conn_upstream_error(c, PX_UERR_OTHER, 502, "upstream_bad_response",
                                       llhttp_errno_name(e));
            else /* the head is out: all that is left is cutting the response */
                px_conn_close(c, x->resp_abort != NULL ? x->resp_abort : "bad upstream response");
            return;
        }
    }
    if (px_half_flush(c, &c->cl) == AL_ERROR) {
        px_conn_close(c, "client write error");
        return;
    }
    if (x->resp_done && al_bufq_len(&c->cl.out) == 0)
        px_conn_finish_exchange(c);
}

/*
 * A keep-alive connection idle for PX_IDLE_TRIM_S between requests: the
 * request state is freed (the next request allocates it again) and a kept
 * TLS upstream is parked in the worker's pool, where any tunnel to the same
 * host may take it (PX_POOL_TLS_PER_HOST at most; the rest are closed). An
 * idle intercepted connection then holds its client TLS state only.
 */
static void
px_conn_idle_trim(struct px_conn *c)
{
    px_upstream_park(c);
    if (c->x != NULL) {
        px_dns_cancel(c->x->dnsq);
        c->x->dnsq = NULL;
        px_exch_free(c->x);
        c->x = NULL;
    }
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
px_conn_upstream_clean(const struct px_conn *c)
{
    const struct px_exch *x = c->x;

    return x != NULL && x->req_done && x->resp_done && x->upstream_reusable && !x->hold_up &&
           x->body_refusal == NULL && x->status != 101 && al_bufq_len(&c->up.out) == 0 &&
           c->up.fd >= 0;
}

/* Response fully written to the client. */
static void
px_conn_finish_exchange(struct px_conn *c)
{
    struct px_exch *x = c->x;
    int             keep;

    al_log_info("conn %llu: %s %s:%u%.*s -> %d up=%llu down=%llu %lldus", (unsigned long long)c->id,
                llhttp_method_name(c->rq.method), x->target.host, x->target.port,
                px_log_path_len(x->target.path, x->target.path_len), x->target.path, x->status,
                (unsigned long long)x->bytes_up, (unsigned long long)x->bytes_down,
                (long long)(al_now_us() - x->start_us));
    px_conn_count_status(x->status);
    if (x->status == 101 && x->want_upgrade) {
        px_conn_enter_ws(c);
        return;
    }
    if (c->mitm && px_conn_upstream_clean(c) && !c->draining) {
        c->up_kept = 1; /* the next inner request reuses it; watched while idle */
    } else if (px_conn_upstream_clean(c) && !c->draining) {
        /* Kept here, watched while idle: the next request to the same
         * destination reuses it (px_conn_resolve); anything else, the idle
         * trim or the close parks it in the worker's pool. */
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
    if (keep)
        px_exch_reset(x, c->conf->limits.header_bytes); /* reused by the next request */
    if (!keep) {
        px_conn_close(c, "exchange done, no keep-alive");
        return;
    }
    px_conn_set_state(c, PX_ST_READ_HEAD);
    llhttp_resume(&c->rq);
    if (c->cin_len == 0)
        al_safefree(c->cin); /* idle keep-alive connections hold no buffer */
    px_conn_feed_client(c);
    if (!c->closing && c->state == PX_ST_READ_HEAD && c->cl.eof) {
        /* The client closed while the response was on its way: what it
         * pipelined before is answered, then the connection ends. */
        if (c->head_started || c->cin_len > 0)
            px_conn_fail(c, 400, "bad_request", "incomplete request head");
        else
            px_conn_close(c, "client closed");
        return;
    }
}

/* Only the directions this event can move: bytes the source has to read, or
 * room the destination has to write. The other direction's splice would only
 * find EAGAIN. */
static void
px_conn_tunnel_io(struct px_conn *c, int is_cl, int revents)
{
    int up = revents & (is_cl ? EV_READ : EV_WRITE);
    int down = revents & (is_cl ? EV_WRITE : EV_READ);

    if ((up && px_half_pump(c, &c->cl, &c->up) != AL_OK) ||
        (down && px_half_pump(c, &c->up, &c->cl) != AL_OK)) {
        px_conn_close(c, "tunnel error");
        return;
    }
    if (c->cl.shut && c->up.shut) {
        px_conn_close(c, "tunnel done");
        return;
    }
}

/*
 * A final answer is being written. Once it is out, the write side is shut
 * and the client's remaining input is read and dropped until it closes (or
 * PX_LINGER_S passes): closing with unread input would make the kernel send
 * a reset that can destroy the answer before the client reads it.
 */
static void
px_conn_flush_close_io(struct px_conn *c, int revents)
{
    if ((revents & EV_WRITE) && !c->cl.shut) {
        int rc = px_half_flush(c, &c->cl);

        if (rc == AL_ERROR) {
            px_conn_close(c, "client write error");
            return;
        }
        if (rc == AL_OK) {
            if (c->cl.ssl != NULL) {
                ERR_clear_error();
                (void)SSL_shutdown(c->cl.ssl); /* close_notify, best effort */
            }
            (void)shutdown(c->cl.fd, SHUT_WR);
            c->cl.shut = 1;
            c->last_activity = ev_now(c->worker->loop);
            px_conn_arm_timer(c);
        }
    }
    if ((revents & EV_READ) && c->cl.shut) {
        char    sink[4096];
        ssize_t n = recv(c->cl.fd, sink, sizeof(sink), 0);

        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            px_conn_close(c, "error answered");
            return;
        }
    }
}

static void
px_conn_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct px_half *h = w->data;
    struct px_conn *c = h->conn;
    int             is_cl = h == &c->cl;

    px_conn_ref(c);
    if (c->closing)
        goto out;
    switch (c->state) {
    case PX_ST_TUNNEL:
        px_conn_tunnel_io(c, is_cl, revents);
        break;
    case PX_ST_WS:
        px_conn_ws_io(c, is_cl, revents);
        break;
    case PX_ST_CONNECT:
        if (!is_cl && (revents & EV_WRITE))
            px_conn_connect_done(c);
        break;
    case PX_ST_FLUSH_CLOSE:
        px_conn_flush_close_io(c, revents);
        break;
    case PX_ST_AUDIT:
        /* Nothing moves while the row commits: bytes wait in the socket.
         * A kept upstream that closes meanwhile is dropped. */
        if (!is_cl && c->up_kept && (revents & EV_READ))
            px_upstream_kept_readable(c);
        else
            ev_io_stop(loop, w);
        break;
    case PX_ST_PEEK:
        if (is_cl && (revents & EV_READ))
            px_conn_client_readable(c);
        break;
    case PX_ST_SNI_PEEK:
        if (is_cl && (revents & EV_WRITE) && px_half_flush(c, &c->cl) == AL_ERROR) {
            px_conn_close(c, "client write error");
            break;
        }
        if (is_cl && (revents & EV_READ))
            px_conn_client_readable(c);
        else if (!is_cl && (revents & EV_READ) && c->cin_len == 0)
            px_conn_enter_tunnel(c); /* the upstream speaks first (SSH, SMTP, ...) */
        break;
    case PX_ST_TLS_CLIENT:
        if (is_cl && (revents & EV_WRITE) && al_bufq_len(&c->cl.out) > 0 &&
            px_half_flush(c, &c->cl) == AL_ERROR) {
            px_conn_close(c, "client write error");
            break;
        }
        px_conn_tls_client_step(c);
        break;
    case PX_ST_TLS_UP:
        if (!is_cl)
            px_conn_tls_up_step(c);
        break;
    case PX_ST_READ_HEAD:
    case PX_ST_RESOLVE:
    case PX_ST_EXCHANGE:
        if (is_cl && (revents & EV_WRITE)) {
            if (px_half_flush(c, &c->cl) == AL_ERROR) {
                px_conn_close(c, "client write error");
                break;
            }
            if (c->x != NULL && c->x->resp_done && al_bufq_len(&c->cl.out) == 0) {
                px_conn_finish_exchange(c);
                break;
            }
        }
        if (!is_cl && (revents & EV_WRITE)) {
            if (px_half_flush(c, &c->up) == AL_ERROR) {
                if (c->x != NULL)
                    px_conn_upstream_lost(c, "write failed");
                else
                    px_conn_close(c, "upstream write error");
                break;
            }
            px_conn_feed_client(c); /* room again for buffered body bytes */
        }
        if (c->closing)
            break;
        if (is_cl && (revents & EV_READ))
            px_conn_client_readable(c);
        else if (!is_cl && (revents & EV_READ) && c->state == PX_ST_EXCHANGE)
            px_conn_upstream_readable(c);
        else if (!is_cl && (revents & EV_READ) && c->up_kept)
            px_upstream_kept_readable(c);
        break;
    }
out:
    if (!c->closing) /* once per event: the watchers follow the state */
        px_conn_update_io(c);
    px_conn_unref(c);
}

static void
px_conn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct px_conn *c = w->data;
    double          left;

    (void)revents;
    px_conn_ref(c);
    if (c->closing)
        goto out;
    left = px_conn_deadline(c) - ev_now(loop);
    if (left > 0.0005) {
        w->repeat = left;
        ev_timer_again(loop, w);
        goto out;
    }
    switch (c->state) {
    case PX_ST_READ_HEAD:
        if (!c->head_started && c->nreqs > 0 && (c->x != NULL || c->up_kept) &&
            PX_IDLE_TRIM_S < c->conf->limits.idle_timeout_s) {
            px_conn_idle_trim(c);
            px_conn_arm_timer(c); /* now the idle timeout proper */
        } else if (c->head_started)
            px_conn_fail(c, 408, "header_timeout", NULL);
        else if (c->nreqs == 0)
            px_conn_close(c, "no request within header_timeout_s");
        else
            px_conn_close(c, "idle timeout");
        break;
    case PX_ST_RESOLVE:
        px_conn_upstream_error(c, PX_UERR_DNS, 504, "dns_timeout", NULL);
        break;
    case PX_ST_AUDIT:
        px_conn_fail(c, 503, "audit_unavailable", "audit commit took too long");
        break;
    case PX_ST_PEEK:
        px_conn_close_refused(c, "header_timeout");
        break;
    case PX_ST_SNI_PEEK:
        if (c->cin_len == 0) { /* nothing said yet: nothing to check */
            px_conn_enter_tunnel(c);
            break;
        }
        c->x->decided = 0;
        c->x->deny = 1;
        c->x->status = 403;
        c->x->err_reason = "bad_client_hello";
        px_conn_close_refused(c, "bad_client_hello");
        break;
    case PX_ST_TLS_CLIENT:
        px_tls_refusal_row(c, "tls_handshake_timeout");
        px_conn_close_refused(c, "tls_handshake_timeout");
        break;
    case PX_ST_TLS_UP:
        px_conn_upstream_error(c, PX_UERR_TIMEOUT, 504, "upstream_tls_timeout", NULL);
        break;
    case PX_ST_CONNECT:
        px_conn_upstream_error(c, PX_UERR_TIMEOUT, 504, "connect_timeout", NULL);
        break;
    case PX_ST_EXCHANGE:
        if (c->x != NULL && !c->x->resp_started && !c->x->req_done && !al_bufq_full(&c->up.out))
            /* The request body stopped arriving while the upstream had room
             * for it: the client stalled, not the upstream. */
            px_conn_fail(c, 408, "body_timeout", "the request body stopped arriving");
        else if (c->x != NULL && !c->x->resp_started)
            px_conn_upstream_error(c, PX_UERR_TIMEOUT, 504, "upstream_timeout", NULL);
        else
            px_conn_close(c, "idle timeout");
        break;
    case PX_ST_WS:
        px_conn_ws_close(c, 1001, "idle timeout");
        break;
    case PX_ST_TUNNEL:
    case PX_ST_FLUSH_CLOSE:
        px_conn_close(c, "idle timeout");
        break;
    }
out:
    if (!c->closing) /* once per event: the watchers follow the state */
        px_conn_update_io(c);
    px_conn_unref(c);
}

/* ---- accept and drain ----------------------------------------------------- */

void
px_conn_accept(struct px_worker *w, int fd, const struct sockaddr_storage *peer,
               enum px_listen_mode mode)
{
    struct px_conn *c;
    int             one = 1;
    uint64_t        open = atomic_load_explicit(&px_metrics.conns_open, memory_order_relaxed);

    if (open >= (uint64_t)w->conf->limits.max_connections || w->draining) {
        struct al_dbuf d;

        PX_MINC(conns_refused);
        px_conn_count_status(503);
        al_dbuf_init(&d, 1024);
        if (px_http_error(&d, 503, w->draining ? "shutting_down" : "too_many_connections", NULL) ==
            AL_OK)
            (void)!send(fd, d.data, d.len, MSG_NOSIGNAL | MSG_DONTWAIT);
        al_dbuf_free(&d);
        (void)shutdown(fd, SHUT_WR);
        close(fd);
        return;
    }
    c = al_calloc(1, sizeof(*c));
    if (c == NULL) {
        close(fd);
        return;
    }
    c->id = atomic_fetch_add(&px_conn_next_id, 1);
    c->worker = w;
    c->conf = px_conf_ref(w->conf);
    c->mode = mode;
    c->peer = *peer;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    px_half_init(&c->cl, c, fd, px_conn_io_cb);
    px_half_init(&c->up, c, -1, px_conn_io_cb);
    al_bufq_init(&c->cl.out, PX_BUF_HIGH_BYTES);
    al_bufq_init(&c->up.out, PX_BUF_HIGH_BYTES);
    px_h1_request_parser(c);
    ev_init(&c->timer, px_conn_timer_cb);
    c->timer.data = c;
    c->next = w->conns;
    if (w->conns != NULL)
        w->conns->prev = c;
    w->conns = c;
    w->nconns++;
    PX_MINC(conns_open);
    PX_MINC(conns_total);
    if (al_log_get_level() <= AL_LOG_DEBUG) {
        char ps[64];

        px_sockaddr_str((const struct sockaddr *)peer, ps, sizeof(ps));
        al_log_debug("conn %llu: accepted from %s", (unsigned long long)c->id, ps);
    }
    c->state = PX_ST_READ_HEAD;
    if (mode == PX_LISTEN_TRANSPARENT) {
        px_conn_set_state(c, PX_ST_PEEK);
        if (px_transparent_accept(c) != AL_OK) {
            px_conn_finalize(c);
            return;
        }
    } else {
        px_conn_set_state(c, PX_ST_READ_HEAD);
    }
    px_conn_update_io(c);
}

void
px_conns_drain(struct px_worker *w)
{
    struct px_conn *c = w->conns;

    while (c != NULL) {
        struct px_conn *next = c->next;

        c->draining = 1;
        if (c->state == PX_ST_READ_HEAD && !c->head_started && c->cin_len == 0)
            px_conn_close(c, "draining");
        c = next;
    }
}

void
px_conns_close_all(struct px_worker *w)
{
    while (w->conns != NULL) {
        struct px_conn *c = w->conns;

        if (c->state == PX_ST_WS && c->x != NULL && c->x->ws != NULL) {
            /* Drain ran out: websockets are told 1001, best effort. */
            if (px_ws_close_frame(c, 1, 1001, "going away") == AL_OK &&
                px_ws_close_frame(c, 0, 1001, "going away") == AL_OK) {
                (void)px_half_flush(c, &c->cl);
                (void)px_half_flush(c, &c->up);
            }
            if (c->x->ws->error == NULL)
                c->x->ws->error = "going away";
        }
        px_conn_close(c, "shutdown");
    }
}

/* ---- strict audit notices ---------------------------------------------------- */

static void
px_conn_audit_committed(struct px_conn *c, int ok, int64_t row_id)
{
    c->aud_waiting = 0;
    if (!c->closing && c->state == PX_ST_AUDIT && c->x != NULL) {
        if (ok && c->x->rec != NULL) {
            c->x->rec->row_id = row_id;
            px_conn_resolve(c);
        } else {
            if (c->x->rec != NULL)
                c->x->rec->row_id = 0;
            px_conn_fail(c, 503, "audit_unavailable", "audit commit failed");
        }
        if (!c->closing)
            px_conn_update_io(c);
    }
    px_conn_unref(c); /* px_conn_strict_begin's */
}

/* The worker's ev_async: strict rows the writer committed (or failed). */
void
px_conns_audit_committed(struct px_worker *w)
{
    struct px_aud_done *d;

    pthread_mutex_lock(&w->done_lock);
    d = w->done_head;
    w->done_head = NULL;
    pthread_mutex_unlock(&w->done_lock);
    while (d != NULL) {
        struct px_aud_done *next = d->next;

        px_conn_audit_committed(d->conn, d->ok, d->row_id);
        d = next;
    }
}

void
px_conns_audit_discard(struct px_worker *w)
{
    px_conns_audit_committed(w); /* every conn is closing by now: only unrefs */
}
