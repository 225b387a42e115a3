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
 * Every state is a row of px_conn_states: the handlers called when a read
 * or a write watcher fires and when the deadline passes. A handler returns
 * what happens next (px_phase.h) and px_conn_next() does it, so the
 * handlers that live elsewhere, the HTTP states' (px_conn_http.c: heads,
 * bodies, responses, keep-alive), never call back in here.
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

#define PX_FLUSH_CLOSE_S 10.0 /* to write a final answer */
#define PX_LINGER_S 2.0       /* to drain input after it */

static _Atomic uint64_t px_conn_next_id = 1;

static void px_conn_ref(struct px_conn *c);
static void px_conn_unref(struct px_conn *c);
static void px_conn_set_state(struct px_conn *c, enum px_state st);
static void px_conn_update_io(struct px_conn *c);
static void px_conn_close(struct px_conn *c, const char *why);
static void px_conn_upstream_ready(struct px_conn *c);
static void px_conn_resolve(struct px_conn *c);
static void px_conn_io_cb(struct ev_loop *loop, ev_io *w, int revents);
static void px_conn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents);
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
px_conn_fail(struct px_conn *c, int status, const char *reason, const char *detail,
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
    px_conn_fail(c, r->status, r->reason, r->detail, r->extra);
}

/*
 * What a state's handler (or a step of the HTTP exchange driver) said
 * happens next, done: the driver asks, the machine acts, so no arrow runs
 * from px_conn_http.c back up here. A step whose action leads on to more of
 * the exchange loops.
 */
static void
px_conn_next(struct px_conn *c, int rc)
{
    for (;;) {
        switch (rc) {
        case AL_DECLINED:
            px_conn_finalize(c);
            return;
        case PX_NEXT_CLOSE:
            px_conn_close(c, c->close_why);
            return;
        case PX_NEXT_TIMER:
            px_conn_arm_timer(c);
            return;
        case PX_NEXT_ROUTE:
            px_conn_route(c);
            rc = px_conn_http_feed(c); /* the state tells whether body bytes may flow now */
            break;
        case PX_NEXT_RESOLVE:
            px_conn_resolve(c);
            return;
        case PX_NEXT_KEEP:
            px_conn_set_state(c, PX_ST_READ_HEAD);
            rc = px_conn_http_next_head(c);
            break;
        case PX_NEXT_WS:
            px_conn_enter_ws(c);
            return;
        default: /* AL_OK: the watchers follow the state */
            return;
        }
    }
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

/* An upstream for the exchange: a CONNECT's 200 (then the SNI peek or the
 * tunnel), or the HTTP request goes (px_conn_http_start). */
static void
px_conn_upstream_ready(struct px_conn *c)
{
    struct px_exch *x = c->x;

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
    px_conn_next(c, px_conn_http_start(c));
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
    else if (rc != AL_AGAIN) {
        px_refuse_upstream(c, PX_UERR_DNS, 502, "dns_failed", "resolver error");
        px_conn_finalize(c);
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
    if (!c->x->is_connect && px_conn_http_request_head(c) != AL_OK) {
        px_conn_finalize(c); /* a placeholder that may not go there, no memory */
        return;
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
        px_conn_next(c, px_conn_http_feed(c));
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

/* PX_ST_WS: a side's queue drained (its write watcher) or its bytes came
 * (its read watcher). */
static int
px_conn_ws_io(struct px_conn *c, int is_cl, int readable)
{
    if (c->ws_closing) {
        if (al_bufq_len(&c->cl.out) == 0 && al_bufq_len(&c->up.out) == 0)
            px_conn_ws_end(c, c->x->err_reason);
        return AL_OK;
    }
    if (readable && px_conn_ws_after(c, px_ws_read(c, is_cl), is_cl) != AL_OK)
        return AL_OK;
    if (px_half_flush(c, &c->cl) == AL_ERROR || px_half_flush(c, &c->up) == AL_ERROR)
        return px_next_close(c, "websocket write error");
    return AL_OK;
}

static int
px_conn_ws_on_read(struct px_conn *c, int is_cl)
{
    return px_conn_ws_io(c, is_cl, 1);
}

static int
px_conn_ws_on_write(struct px_conn *c, int is_cl)
{
    if (px_half_flush(c, is_cl ? &c->cl : &c->up) == AL_ERROR)
        return px_next_close(c, "websocket write error");
    return px_conn_ws_io(c, is_cl, 0);
}

static int
px_conn_ws_timeout(struct px_conn *c)
{
    px_conn_ws_close(c, 1001, "idle timeout");
    return AL_OK;
}

/* ---- the states' handlers ------------------------------------------------------ */

/* A watcher with nothing to do in its state. */
static int
px_conn_io_none(struct px_conn *c, int is_cl)
{
    (void)c;
    (void)is_cl;
    return AL_OK;
}

static int
px_conn_idle_timeout(struct px_conn *c)
{
    return px_next_close(c, "idle timeout");
}

/* PX_ST_RESOLVE, PX_ST_CONNECT, PX_ST_TLS_UP: the upstream's deadlines. */
static int
px_conn_resolve_timeout(struct px_conn *c)
{
    return px_refuse_upstream(c, PX_UERR_DNS, 504, "dns_timeout", NULL);
}

static int
px_conn_connect_on_write(struct px_conn *c, int is_cl)
{
    if (!is_cl)
        px_conn_connect_done(c);
    return AL_OK;
}

static int
px_conn_connect_timeout(struct px_conn *c)
{
    return px_refuse_upstream(c, PX_UERR_TIMEOUT, 504, "connect_timeout", NULL);
}

static int
px_conn_tls_up_io(struct px_conn *c, int is_cl)
{
    if (!is_cl)
        px_conn_tls_up_step(c);
    return AL_OK;
}

static int
px_conn_tls_up_timeout(struct px_conn *c)
{
    return px_refuse_upstream(c, PX_UERR_TIMEOUT, 504, "upstream_tls_timeout", NULL);
}

/* PX_ST_TLS_CLIENT: the client handshake, whichever way it waits. */
static int
px_conn_tls_client_on_read(struct px_conn *c, int is_cl)
{
    (void)is_cl;
    px_conn_tls_client_step(c);
    return AL_OK;
}

static int
px_conn_tls_client_on_write(struct px_conn *c, int is_cl)
{
    if (is_cl && al_bufq_len(&c->cl.out) > 0 && px_half_flush(c, &c->cl) == AL_ERROR)
        return px_next_close(c, "client write error");
    return px_conn_tls_client_on_read(c, is_cl);
}

static int
px_conn_tls_client_timeout(struct px_conn *c)
{
    px_tls_refusal_row(c, "tls_handshake_timeout");
    return px_refuse_close(c, "tls_handshake_timeout");
}

/* PX_ST_PEEK, PX_ST_SNI_PEEK: the client's first bytes, held until they say
 * enough (which protocol the sandbox speaks; an opaque tunnel's SNI). */
static int
px_conn_peek_on_read(struct px_conn *c, int is_cl)
{
    const char *why = NULL;
    int         peek = c->state == PX_ST_PEEK;
    int         rc;

    if (!is_cl) {
        if (!peek && c->cin_len == 0)
            px_conn_enter_tunnel(c); /* the upstream speaks first (SSH, SMTP, ...) */
        return AL_OK;
    }
    rc = px_half_read_cin(c, &why);
    if (rc == AL_AGAIN)
        return AL_OK;
    if (rc == AL_ERROR)
        return px_next_close(c, why);
    if (rc == AL_DONE && c->cin_len == 0)
        return px_next_close(c, peek ? "client closed" : "client closed mid-request");
    /* At the end of its stream the sandbox said all it will say: decide now. */
    if (peek)
        px_conn_peek(c, rc == AL_DONE);
    else
        px_conn_sni_peek(c, rc == AL_DONE);
    return AL_OK;
}

static int
px_conn_peek_timeout(struct px_conn *c)
{
    return px_refuse_close(c, "header_timeout");
}

static int
px_conn_sni_peek_on_write(struct px_conn *c, int is_cl)
{
    if (is_cl && px_half_flush(c, &c->cl) == AL_ERROR)
        return px_next_close(c, "client write error");
    return AL_OK;
}

static int
px_conn_sni_peek_timeout(struct px_conn *c)
{
    if (c->cin_len == 0) { /* nothing said yet: nothing to check */
        px_conn_enter_tunnel(c);
        return AL_OK;
    }
    c->x->decided = 0;
    c->x->deny = 1;
    c->x->status = 403;
    c->x->err_reason = "bad_client_hello";
    return px_refuse_close(c, "bad_client_hello");
}

/* PX_ST_TUNNEL: only the direction this event can move: bytes the source
 * has to read, or room the destination has to write. The other direction's
 * splice would only find EAGAIN. up: client to upstream. */
static int
px_conn_tunnel_pump(struct px_conn *c, int up)
{
    if (px_half_pump(c, up ? &c->cl : &c->up, up ? &c->up : &c->cl) != AL_OK)
        return px_next_close(c, "tunnel error");
    if (c->cl.shut && c->up.shut)
        return px_next_close(c, "tunnel done");
    return AL_OK;
}

static int
px_conn_tunnel_on_read(struct px_conn *c, int is_cl)
{
    return px_conn_tunnel_pump(c, is_cl); /* the client's bytes go up, the upstream's down */
}

static int
px_conn_tunnel_on_write(struct px_conn *c, int is_cl)
{
    return px_conn_tunnel_pump(c, !is_cl); /* room toward the upstream: up */
}

/*
 * PX_ST_FLUSH_CLOSE: a final answer is being written. Once it is out, the
 * write side is shut and the client's remaining input is read and dropped
 * until it closes (or PX_LINGER_S passes): closing with unread input would
 * make the kernel send a reset that can destroy the answer before the
 * client reads it.
 */
static int
px_conn_flush_close_on_write(struct px_conn *c, int is_cl)
{
    int rc;

    (void)is_cl;
    if (c->cl.shut)
        return AL_OK;
    rc = px_half_flush(c, &c->cl);
    if (rc == AL_ERROR)
        return px_next_close(c, "client write error");
    if (rc != AL_OK)
        return AL_OK;
    if (c->cl.ssl != NULL) {
        ERR_clear_error();
        (void)SSL_shutdown(c->cl.ssl); /* close_notify, best effort */
    }
    (void)shutdown(c->cl.fd, SHUT_WR);
    c->cl.shut = 1;
    c->last_activity = ev_now(c->worker->loop);
    return PX_NEXT_TIMER; /* now the linger */
}

static int
px_conn_flush_close_on_read(struct px_conn *c, int is_cl)
{
    char    sink[4096];
    ssize_t n;

    (void)is_cl;
    if (!c->cl.shut)
        return AL_OK;
    n = recv(c->cl.fd, sink, sizeof(sink), 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
        return px_next_close(c, "error answered");
    return AL_OK;
}

/* PX_ST_AUDIT: nothing moves while the row commits: bytes wait in the
 * socket and a watcher that fires is stopped until then. A kept upstream
 * that closes meanwhile is dropped. */
static int
px_conn_audit_on_read(struct px_conn *c, int is_cl)
{
    if (!is_cl && c->up_kept)
        px_upstream_kept_readable(c);
    else
        ev_io_stop(c->worker->loop, is_cl ? &c->cl.rio : &c->up.rio);
    return AL_OK;
}

static int
px_conn_audit_on_write(struct px_conn *c, int is_cl)
{
    ev_io_stop(c->worker->loop, is_cl ? &c->cl.wio : &c->up.wio);
    return AL_OK;
}

static int
px_conn_audit_timeout(struct px_conn *c)
{
    return px_refuse(c, 503, "audit_unavailable", "audit commit took too long");
}

/*
 * A state is a row: the handlers the machine calls through pointers when a
 * read watcher of either side fires, when a write watcher does, and when
 * the state's deadline passes (as nginx's read and write event handlers).
 * Each returns what happens next and px_conn_next does it. The HTTP states
 * are the exchange driver's (px_conn_http.c).
 */
static const struct px_conn_state {
    int (*on_read)(struct px_conn *c, int is_cl);
    int (*on_write)(struct px_conn *c, int is_cl);
    int (*on_timeout)(struct px_conn *c);
} px_conn_states[] = {
    [PX_ST_READ_HEAD] = {px_conn_http_on_read, px_conn_http_on_write, px_conn_http_head_timeout},
    [PX_ST_RESOLVE] = {px_conn_http_on_read, px_conn_http_on_write, px_conn_resolve_timeout},
    [PX_ST_CONNECT] = {px_conn_io_none, px_conn_connect_on_write, px_conn_connect_timeout},
    [PX_ST_EXCHANGE] = {px_conn_http_on_read, px_conn_http_on_write, px_conn_http_exchange_timeout},
    [PX_ST_TUNNEL] = {px_conn_tunnel_on_read, px_conn_tunnel_on_write, px_conn_idle_timeout},
    [PX_ST_FLUSH_CLOSE] = {px_conn_flush_close_on_read, px_conn_flush_close_on_write,
                           px_conn_idle_timeout},
    [PX_ST_AUDIT] = {px_conn_audit_on_read, px_conn_audit_on_write, px_conn_audit_timeout},
    [PX_ST_PEEK] = {px_conn_peek_on_read, px_conn_io_none, px_conn_peek_timeout},
    [PX_ST_TLS_CLIENT] = {px_conn_tls_client_on_read, px_conn_tls_client_on_write,
                          px_conn_tls_client_timeout},
    [PX_ST_TLS_UP] = {px_conn_tls_up_io, px_conn_tls_up_io, px_conn_tls_up_timeout},
    [PX_ST_SNI_PEEK] = {px_conn_peek_on_read, px_conn_sni_peek_on_write, px_conn_sni_peek_timeout},
    [PX_ST_WS] = {px_conn_ws_on_read, px_conn_ws_on_write, px_conn_ws_timeout},
};
_Static_assert(sizeof(px_conn_states) / sizeof(px_conn_states[0]) == PX_ST_WS + 1,
               "px_conn_states must have a row for every px_state");

/* A read watcher reports EV_READ, a write watcher EV_WRITE: which one fired
 * says which handler runs. */
static void
px_conn_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct px_half *h = w->data;
    struct px_conn *c = h->conn;
    int             is_cl = h == &c->cl;

    (void)loop;
    (void)revents;
    px_conn_ref(c);
    if (!c->closing) {
        const struct px_conn_state *s = &px_conn_states[c->state];

        px_conn_next(c, w == &h->wio ? s->on_write(c, is_cl) : s->on_read(c, is_cl));
    }
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
    px_conn_next(c, px_conn_states[c->state].on_timeout(c));
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
            px_refuse(c, 503, "audit_unavailable", "audit commit failed");
            px_conn_finalize(c);
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
