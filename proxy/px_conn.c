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

static _Atomic uint64_t  px_conn_next_id = 1;
static llhttp_settings_t px_req_settings, px_resp_settings;
static pthread_once_t    px_settings_once = PTHREAD_ONCE_INIT;

static void px_conn_ref(struct px_conn *c);
static void px_conn_unref(struct px_conn *c);
static void px_conn_set_state(struct px_conn *c, enum px_state st);
static void px_conn_fail(struct px_conn *c, int status, const char *reason, const char *detail);
static void px_conn_deny(struct px_conn *c, int status, const char *reason, const char *detail,
                         const char *extra_headers);
static void px_conn_upstream_error(struct px_conn *c, enum px_uerr kind, int status,
                                   const char *reason, const char *detail);
static void px_conn_update_io(struct px_conn *c);
static void px_conn_close(struct px_conn *c, const char *why);
static void px_conn_parser_reset(struct px_conn *c);
static void px_conn_upstream_ready(struct px_conn *c);
static void px_conn_resolve(struct px_conn *c);
static void px_conn_feed_client(struct px_conn *c);
static void px_conn_io_cb(struct ev_loop *loop, ev_io *w, int revents);
static void px_conn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void px_conn_connect_next(struct px_conn *c);
static void px_conn_finish_exchange(struct px_conn *c);
static void px_conn_parse_error(struct px_conn *c, llhttp_errno_t e);
static void px_conn_upstream_lost(struct px_conn *c, const char *detail);
static void px_conn_idle_trim(struct px_conn *c);
static void px_conn_park_upstream(struct px_conn *c);
static void px_conn_close_refused(struct px_conn *c, const char *reason);
static void px_conn_finalize(struct px_conn *c);
static void px_conn_mitm_start(struct px_conn *c);
static void px_conn_tls_client_step(struct px_conn *c);
static void px_conn_tls_up_step(struct px_conn *c);
static void px_conn_enter_tunnel(struct px_conn *c);
static void px_conn_sni_peek(struct px_conn *c, int eof);

/* ---- small pieces ------------------------------------------------------- */

/* Indexed by enum px_state; the static assert keeps the two in step. */
static const char *const px_state_names[] = {"read_head",  "resolve",     "connect", "exchange",
                                             "tunnel",     "flush_close", "audit",   "peek",
                                             "tls_client", "tls_up",      "sni_peek"};
_Static_assert(sizeof(px_state_names) / sizeof(px_state_names[0]) == PX_ST_SNI_PEEK + 1,
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
    px_conn_update_io(c);
}

static void
px_conn_fail(struct px_conn *c, int status, const char *reason, const char *detail)
{
    px_conn_fail_ex(c, status, reason, detail, NULL);
}

static void
px_conn_deny(struct px_conn *c, int status, const char *reason, const char *detail,
             const char *extra_headers)
{
    if (c->x != NULL && (status == 403 || status == 407))
        c->x->deny = 1;
    px_conn_fail_ex(c, status, reason, detail, extra_headers);
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

    if (px_audit == NULL || !c->conf->audit_strict)
        return AL_OK;
    rc = px_conn_audit_begin(c);
    if (rc == AL_AGAIN) {
        px_conn_ref(c); /* held until the commit notice arrives */
        px_conn_set_state(c, PX_ST_AUDIT);
        px_conn_update_io(c);
    } else {
        px_conn_finalize(c);
        rc = AL_DECLINED;
    }
    return rc;
}

/* ---- watcher bookkeeping ------------------------------------------------ */

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
    if (c->state == PX_ST_TUNNEL)
        PX_MDEC(tunnels_open);
    if (c->up_kept)
        px_conn_park_upstream(c); /* the next connection to this host may use it */
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

/* ---- request parsing callbacks ----------------------------------------- */

static int
px_rq_message_begin(llhttp_t *p)
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
    c->head_started = 1;
    px_conn_arm_timer(c);
    if (c->x == NULL) {
        c->x = al_calloc(1, sizeof(*c->x));
        if (c->x == NULL)
            return -1;
        px_msg_init(&c->x->req, c->conf->limits.header_bytes);
        px_msg_init(&c->x->resp, c->conf->limits.header_bytes);
    } else {
        px_exch_reset(c->x, c->conf->limits.header_bytes);
    }
    c->x->start_us = al_now_us();
    return 0;
}

static int
px_rq_url(llhttp_t *p, const char *at, size_t len)
{
    struct px_conn *c = p->data;

    return px_msg_add(&c->x->req, PX_PIECE_URL, at, len);
}

static int
px_rq_field(llhttp_t *p, const char *at, size_t len)
{
    struct px_conn *c = p->data;

    return px_msg_add(&c->x->req, PX_PIECE_FIELD, at, len);
}

static int
px_rq_value(llhttp_t *p, const char *at, size_t len)
{
    struct px_conn *c = p->data;

    return px_msg_add(&c->x->req, PX_PIECE_VALUE, at, len);
}

static int
px_rq_piece_end(llhttp_t *p)
{
    struct px_conn *c = p->data;

    return px_msg_end_piece(&c->x->req);
}

static int
px_rq_headers_complete(llhttp_t *p)
{
    struct px_conn *c = p->data;

    if (px_msg_end_piece(&c->x->req) != 0)
        return -1;
    c->x->client_keepalive = llhttp_should_keep_alive(p);
    c->x->req_framing = px_framing_parsed(p, 0);
    return HPE_PAUSED; /* decide, resolve and connect before any body byte moves */
}

/* Ends the hold on a scanned request: its bytes may go upstream now. */
static void
px_conn_release_hold(struct px_conn *c)
{
    c->x->hold_up = 0;
    c->up.out.max = PX_BUF_HIGH_BYTES;
    if (!c->closing && c->state == PX_ST_EXCHANGE)
        px_conn_update_io(c);
}

/* ":port" into buf (8 bytes), no printf; returns its length. */
static size_t
px_port_str(char *buf, unsigned port)
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

/*
 * Request body through the secrets stream: placeholders of the secrets in
 * body_mask become values; any other placeholder is judged before the bytes
 * that complete it are forwarded (the stream holds back a possible prefix),
 * so an out-of-scope placeholder stops the request instead of leaving.
 * Returns AL_OK, AL_DECLINED (x->body_refusal set) or AL_ERROR.
 */
static int
px_rq_body_sub(struct px_conn *c, const char *at, size_t len, int last)
{
    struct px_exch *x = c->x;
    struct al_dbuf  d;
    uint64_t        seen;
    int             rc;

    al_dbuf_init(&d, len + 65536);
    rc = last ? sec_stream_finish(x->body_sub, &d) : sec_stream_feed(x->body_sub, at, len, &d);
    if ((sec_stream_replaced(x->body_sub) & ~x->injected) != 0) {
        /* A value went into the body: the row and the metric say so like
         * for a header (the queue is already wiped: body_mask set it). */
        if (x->injected == 0)
            PX_MINC(secrets_injected);
        x->injected |= sec_stream_replaced(x->body_sub);
    }
    seen = sec_stream_seen(x->body_sub) & ~x->body_mask;
    if (rc == AL_OK && seen != 0) {
        struct sec_dest   dest;
        struct sec_result res;

        memset(&dest, 0, sizeof(dest));
        dest.host = x->target.host;
        dest.port = x->target.port;
        dest.path = x->fwd_path != NULL ? x->fwd_path : x->target.path;
        dest.path_len = x->fwd_path != NULL ? x->fwd_path_len : x->target.path_len;
        dest.tls = x->target.tls;
        dest.only = x->inject_only;
        memset(&res, 0, sizeof(res));
        if (sec_body_verdict(c->conf->secrets, &dest, seen, &res) != AL_OK) {
            x->body_refusal = res.refusal != NULL ? res.refusal : SEC_REFUSE_OUT_OF_SCOPE;
            x->secret_refused =
                res.refusal_secret >= 0 ? sec_name(c->conf->secrets, res.refusal_secret) : NULL;
            rc = AL_DECLINED;
        }
    }
    if (rc == AL_OK)
        rc = px_body_frame(&c->up.out, x->req_chunked, d.data, d.len);
    sec_dbuf_wipe(&d);
    return rc;
}

static int
px_rq_body(llhttp_t *p, const char *at, size_t len)
{
    struct px_conn *c = p->data;
    struct px_exch *x = c->x;

    if (x->body_sub != NULL) {
        if (px_rq_body_sub(c, at, len, 0) != AL_OK)
            return -1;
        x->bytes_up += len;
        x->req_body_bytes_sent = 1;
        return 0;
    }
    if (px_body_frame(&c->up.out, x->req_chunked, at, len) != AL_OK)
        return -1;
    x->bytes_up += len;
    x->req_body_bytes_sent = 1;
    return 0;
}

static int
px_rq_message_complete(llhttp_t *p)
{
    struct px_conn *c = p->data;
    struct px_exch *x = c->x;

    if (x->body_sub != NULL && px_rq_body_sub(c, NULL, 0, 1) != AL_OK)
        return -1;
    if (x->req_chunked && al_bufq_write(&c->up.out, "0\r\n\r\n", 5) != AL_OK)
        return -1;
    x->req_done = 1;
    if (x->hold_up)
        px_conn_release_hold(c); /* the whole body was scanned: send it */
    return HPE_PAUSED;           /* the next pipelined request waits for this response */
}

/* ---- response parsing callbacks ---------------------------------------- */

static int
px_rs_status(llhttp_t *p, const char *at, size_t len)
{
    struct px_conn *c = p->data;

    return px_msg_add(&c->x->resp, PX_PIECE_STATUS, at, len);
}

static int
px_rs_field(llhttp_t *p, const char *at, size_t len)
{
    struct px_conn *c = p->data;

    return px_msg_add(&c->x->resp, PX_PIECE_FIELD, at, len);
}

static int
px_rs_value(llhttp_t *p, const char *at, size_t len)
{
    struct px_conn *c = p->data;

    return px_msg_add(&c->x->resp, PX_PIECE_VALUE, at, len);
}

static int
px_rs_piece_end(llhttp_t *p)
{
    struct px_conn *c = p->data;

    return px_msg_end_piece(&c->x->resp);
}

/* Response headers from a host that holds a secret, once the head is known
 * to carry some form of one: names and values go through the redactor
 * straight into out (no printf per header). A name that no longer reads as a
 * token after redaction is dropped with its value. */
static int
px_write_headers_redacted(struct px_conn *c, const struct px_msg *m, struct al_dbuf *out)
{
    const struct sec_store *s = c->conf->secrets;
    uint64_t                mask = c->x->redact_mask;

    for (int i = 0; i < m->nhdrs; i++) {
        const struct px_hdr *h = &m->hdrs[i];
        size_t               at = out->len;

        if (h->drop)
            continue;
        if (sec_redact_value(s, mask, px_msg_str(m, h->name), h->name_len, out) != AL_OK)
            return AL_ERROR;
        if (!px_http_is_token(out->data + at, out->len - at)) {
            out->len = at;
            continue;
        }
        if (al_dbuf_add(out, ": ", 2) != AL_OK ||
            (h->val != UINT32_MAX &&
             sec_redact_value(s, mask, px_msg_str(m, h->val), h->val_len, out) != AL_OK) ||
            al_dbuf_add(out, "\r\n", 2) != AL_OK)
            return AL_ERROR;
    }
    return AL_OK;
}

/* Re-serialises the response head toward the client and picks the framing. */
static int
px_rs_headers_complete(llhttp_t *p)
{
    struct px_conn *c = p->data;
    struct px_exch *x = c->x;
    struct px_msg  *m = &x->resp;
    int             status = p->status_code;
    int             interim = status >= 100 && status < 200 && status != 101;
    int             upgrade = status == 101 && x->want_upgrade;
    int             client11 = c->rq.http_major == 1 && c->rq.http_minor >= 1;
    int             nobody = interim || status == 204 || status == 304 || x->is_head;
    struct al_dbuf  d;
    int             scrub = 0;
    int             rc;

    if (px_msg_end_piece(m) != 0)
        return -1;
    if (status == 101 && !upgrade)
        return -1; /* a switch nobody asked for */
    if (status < 100 || status > 999)
        return -1; /* llhttp allows three digits only */
    if (!px_msg_te_chunked_only(m)) {
        /* Transfer-Encoding is hop-by-hop and re-framed here: a gzip (or any
         * other) transfer coding would reach the client undecoded, and past
         * the redactor as compressed bytes. We never send TE, so no
         * conforming origin uses one. */
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
    /* One pass over the whole head (status text, names, values) decides
     * whether any piece carries a form of a secret this origin may hold. */
    if (x->redact_mask != 0) {
        scrub = sec_redact_any(c->conf->secrets, x->redact_mask, m->buf.data, m->buf.len);
        if (scrub < 0)
            return -1;
    }
    px_msg_drop_hop_by_hop(m, upgrade);
    px_msg_drop_framing(m); /* ours is written below, from the parser's state */
    if (x->redact_mask != 0 && !interim && !nobody) {
        /* We asked for identity. A gzip or deflate body is decoded, scanned
         * and passed on decoded (Content-Encoding dropped); any other coding,
         * or more than one over all Content-Encoding headers, can't be
         * scanned, so it is refused rather than passed on. */
        int coding = px_msg_content_coding(m);

        if (coding < 0) {
            x->resp_refusal = "compressed_response";
            x->resp_refusal_detail = "a host that received a secret answered compressed";
            return -1;
        }
        if (coding > 0) {
            x->inflater = px_inflate_new(coding);
            if (x->inflater == NULL)
                return -1;
            for (int i = px_msg_find(m, "content-encoding", 0); i >= 0;
                 i = px_msg_find(m, "content-encoding", i + 1))
                m->hdrs[i].drop = 1;
            PX_MINC(responses_decoded);
        }
        x->redactor = sec_redactor_new(c->conf->secrets, x->redact_mask);
        if (x->redactor == NULL)
            return -1;
    }
    al_dbuf_init(&d, c->conf->limits.header_bytes + 1024);
    {
        char sl[13] = "HTTP/1.1 000 ";

        sl[9] = (char)('0' + status / 100);
        sl[10] = (char)('0' + status / 10 % 10);
        sl[11] = (char)('0' + status % 10);
        rc = al_dbuf_add(&d, sl, sizeof(sl));
    }
    if (rc == AL_OK && m->status_text_len) /* the reason phrase can carry an echo too */
        rc = scrub ? sec_redact_value(c->conf->secrets, x->redact_mask,
                                      px_msg_str(m, m->status_text), m->status_text_len, &d)
                   : al_dbuf_add(&d, px_msg_str(m, m->status_text), m->status_text_len);
    if (rc == AL_OK)
        rc = al_dbuf_add(&d, "\r\n", 2);
    if (rc == AL_OK)
        rc = scrub ? px_write_headers_redacted(c, m, &d) : px_msg_write_headers(m, &d);
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
                   (f.kind == PX_BODY_LENGTH && x->redactor != NULL)) {
            /* Chunked toward an HTTP/1.1 client whenever the upstream's
             * length is not passed on as is: a close-delimited body
             * re-framed keeps the client connection, and an upstream that
             * fails mid-body leaves the last chunk out, which the client
             * sees, where a close would read as the end. */
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
    }
    if (rc == AL_OK)
        rc = al_dbuf_add(&d, "\r\n", 2);
    if (rc == AL_OK)
        rc = px_dbuf_to_bufq(&d, &c->cl.out);
    else
        al_dbuf_free(&d);
    if (rc != AL_OK) {
        m->too_big = 1;
        return -1;
    }
    /* After an interim (1xx) head the final answer is still ahead: an
     * upstream failure can still be answered with a 502 or 504. */
    if (!interim)
        x->resp_started = 1;
    /* 1: no body whatever the head says. A 1xx, 204, 304 or HEAD response
     * ends with its head (RFC 9112 6.3); llhttp would otherwise read one by
     * Content-Length or chunked, and pass it on unscanned, as a smuggled
     * message, or wait for bytes that never come. */
    return nobody ? 1 : 0;
}

/* Response body through the redactor; the length changes, so the client
 * side is chunked (or close-delimited) whenever a redactor runs. */
static int
px_rs_body_redact(struct px_conn *c, const char *at, size_t len, int last)
{
    struct px_exch *x = c->x;
    struct al_dbuf  d;
    int             rc;

    al_dbuf_init(&d, len + 65536);
    rc = last ? sec_stream_finish(x->redactor, &d) : sec_stream_feed(x->redactor, at, len, &d);
    if (rc == AL_OK)
        rc = px_body_frame(&c->cl.out, x->resp_chunked_out, d.data, d.len);
    sec_dbuf_wipe(&d);
    return rc;
}

static int
px_rs_body_redact_sink(void *arg, const char *p, size_t n)
{
    return px_rs_body_redact(arg, p, n, 0);
}

static int
px_rs_body(llhttp_t *p, const char *at, size_t len)
{
    struct px_conn *c = p->data;
    struct px_exch *x = c->x;

    if (x->inflater != NULL) { /* decoded, then redacted like any body */
        if (px_inflate_feed(x->inflater, at, len, px_rs_body_redact_sink, c, &x->resp_abort) !=
            AL_OK)
            return -1;
        x->bytes_down += len;
        return 0;
    }
    if (x->redactor != NULL) {
        if (px_rs_body_redact(c, at, len, 0) != AL_OK)
            return -1;
        x->bytes_down += len;
        return 0;
    }
    if (px_body_frame(&c->cl.out, x->resp_chunked_out, at, len) != AL_OK)
        return -1;
    x->bytes_down += len;
    return 0;
}

static int
px_rs_message_complete(llhttp_t *p)
{
    struct px_conn *c = p->data;
    struct px_exch *x = c->x;
    int             status = p->status_code;

    if (status >= 100 && status < 200 && status != 101) {
        px_msg_reset(&x->resp); /* interim answer forwarded; the final one follows */
        return 0;
    }
    if (x->inflater != NULL && px_inflate_finish(x->inflater, &x->resp_abort) != AL_OK)
        return -1;
    if (x->redactor != NULL && px_rs_body_redact(c, NULL, 0, 1) != AL_OK)
        return -1;
    if (x->resp_chunked_out && al_bufq_write(&c->cl.out, "0\r\n\r\n", 5) != AL_OK)
        return -1;
    x->resp_done = 1;
    x->upstream_reusable = x->upstream_keepalive && status != 101;
    return HPE_PAUSED;
}

static void
px_settings_init(void)
{
    llhttp_settings_init(&px_req_settings);
    px_req_settings.on_message_begin = px_rq_message_begin;
    px_req_settings.on_url = px_rq_url;
    px_req_settings.on_url_complete = px_rq_piece_end;
    px_req_settings.on_header_field = px_rq_field;
    px_req_settings.on_header_field_complete = px_rq_piece_end;
    px_req_settings.on_header_value = px_rq_value;
    px_req_settings.on_header_value_complete = px_rq_piece_end;
    px_req_settings.on_headers_complete = px_rq_headers_complete;
    px_req_settings.on_body = px_rq_body;
    px_req_settings.on_message_complete = px_rq_message_complete;

    llhttp_settings_init(&px_resp_settings);
    px_resp_settings.on_status = px_rs_status;
    px_resp_settings.on_status_complete = px_rs_piece_end;
    px_resp_settings.on_header_field = px_rs_field;
    px_resp_settings.on_header_field_complete = px_rs_piece_end;
    px_resp_settings.on_header_value = px_rs_value;
    px_resp_settings.on_header_value_complete = px_rs_piece_end;
    px_resp_settings.on_headers_complete = px_rs_headers_complete;
    px_resp_settings.on_body = px_rs_body;
    px_resp_settings.on_message_complete = px_rs_message_complete;
}

static void
px_conn_parser_reset(struct px_conn *c)
{
    pthread_once(&px_settings_once, px_settings_init);
    llhttp_init(&c->rq, HTTP_REQUEST, &px_req_settings);
    c->rq.data = c;
}

/* ---- from head to upstream --------------------------------------------- */

/* The secrets the allowing rule's "inject" list names (0: no list). */
static uint64_t
px_conn_inject_mask(const struct px_conn *c)
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
px_secret_refusal_status(const char *refusal)
{
    if (strcmp(refusal, SEC_REFUSE_COMPRESSED) == 0)
        return 415;
    if (strcmp(refusal, SEC_REFUSE_TRACE) == 0)
        return 405;
    return 403;
}

/*
 * Header block and target after secret injection. Returns AL_OK (hb and tb
 * filled: wipe with sec_dbuf_wipe), AL_DECLINED after answering the client
 * (a placeholder that may not go there), or AL_ERROR.
 */
static int
px_conn_apply_secrets(struct px_conn *c, const char *target, size_t tlen, struct al_dbuf *hb,
                      struct al_dbuf *tb)
{
    struct px_exch   *x = c->x;
    struct px_msg    *m = &x->req;
    struct sec_hdr    hdrs[PX_HTTP_MAX_HEADERS];
    struct sec_dest   d;
    struct sec_result res;
    int               n = 0, rc;

    for (int i = 0; i < m->nhdrs; i++) {
        if (m->hdrs[i].drop)
            continue;
        hdrs[n].name = px_msg_str(m, m->hdrs[i].name);
        hdrs[n].name_len = m->hdrs[i].name_len;
        hdrs[n].value = m->hdrs[i].val == UINT32_MAX ? "" : px_msg_str(m, m->hdrs[i].val);
        hdrs[n].value_len = m->hdrs[i].val == UINT32_MAX ? 0 : m->hdrs[i].val_len;
        n++;
    }
    memset(&d, 0, sizeof(d));
    d.host = x->target.host;
    d.port = x->target.port;
    d.path = target;
    d.path_len = tlen;
    d.tls = x->target.tls;
    d.only = x->inject_only = px_conn_inject_mask(c);
    memset(&res, 0, sizeof(res));
    rc = sec_apply_head(c->conf->secrets, &d, llhttp_method_name(c->rq.method), hdrs, n, target,
                        tlen, hb, tb, &res);
    if (rc == AL_DECLINED) {
        x->secret_refused =
            res.refusal_secret >= 0 ? sec_name(c->conf->secrets, res.refusal_secret) : NULL;
        x->decision.verdict = POL_DENY; /* audited as a deny with the refusal as reason */
        x->decision.reason = res.refusal;
        PX_MINC(secrets_refused);
        px_conn_deny(c, px_secret_refusal_status(res.refusal), res.refusal, x->secret_refused,
                     NULL);
        return AL_DECLINED;
    }
    if (rc != AL_OK)
        return AL_ERROR;
    x->injected = res.injected;
    x->redact_mask = res.redact_mask;
    x->body_mask = res.body_mask;
    if (x->want_upgrade && x->redact_mask != 0) {
        /* After a 101 the connection is relayed as raw frames that nothing
         * scans: an echoed credential would reach the sandbox (also one the
         * origin kept from an earlier request). */
        x->secret_refused = sec_name(c->conf->secrets, __builtin_ctzll(x->redact_mask));
        x->decision.verdict = POL_DENY;
        x->decision.reason = "upgrade_with_secret";
        PX_MINC(secrets_refused);
        px_conn_deny(c, 403, "upgrade_with_secret", x->secret_refused, NULL);
        return AL_DECLINED;
    }
    return AL_OK;
}

/*
 * Builds the upstream request head from the parsed request into up.out.
 * Returns AL_OK, AL_DECLINED (a secret refusal was answered) or AL_ERROR.
 */
static int
px_conn_write_request_head(struct px_conn *c)
{
    struct px_exch   *x = c->x;
    struct px_msg    *m = &x->req;
    struct px_target *t = &x->target;
    struct al_dbuf    d, hb, tb;
    int               rc = AL_OK;
    int               default_port = t->port == (t->tls ? 443 : 80);
    const char       *lb = t->kind == PX_HOST_IPV6 ? "[" : "";
    const char       *rb = t->kind == PX_HOST_IPV6 ? "]" : "";
    const char       *target = x->fwd_path;
    char              slash[2] = "/";
    size_t            tlen = x->fwd_path_len;
    int               secret_host = 0;

    px_msg_drop_hop_by_hop(m, x->want_upgrade);
    px_msg_drop_framing(m); /* ours is written below, from the parser's state */
    for (int i = px_msg_find(m, "host", 0); i >= 0; i = px_msg_find(m, "host", i + 1))
        m->hdrs[i].drop = 1; /* the request-target's authority wins (RFC 9112 3.2.2) */
    if (target == NULL) {
        target = t->path_needs_slash ? slash : t->path;
        tlen = t->path_needs_slash ? 1 : t->path_len;
    }
    x->req_chunked = x->req_framing.kind == PX_BODY_CHUNKED;
    al_dbuf_init(&d, c->conf->limits.header_bytes * 2 + 4096);
    al_dbuf_init(&hb, c->conf->limits.header_bytes * 2 + 4096);
    al_dbuf_init(&tb, tlen * 3 + 4096);
    if (c->conf->secrets != NULL) {
        secret_host = sec_any_scope_host(c->conf->secrets, t->host, t->port);
        if (secret_host) /* bodies from such hosts must stay scannable */
            for (int i = px_msg_find(m, "accept-encoding", 0); i >= 0;
                 i = px_msg_find(m, "accept-encoding", i + 1))
                m->hdrs[i].drop = 1;
        rc = px_conn_apply_secrets(c, target, tlen, &hb, &tb);
        if (rc == AL_OK && x->body_mask != 0 && x->req_framing.kind == PX_BODY_LENGTH &&
            x->req_framing.len > 0)
            x->req_chunked = 1; /* substitution changes the body's length */
        if (rc == AL_OK && x->req_framing.kind != PX_BODY_NONE &&
            (x->req_framing.kind != PX_BODY_LENGTH || x->req_framing.len > 0)) {
            /* Every body is scanned: substituted where a secret opts in,
             * judged for placeholders that may not go here. */
            if (x->body_sub == NULL) /* a retried head keeps its unfed stream */
                x->body_sub = sec_body_new(c->conf->secrets, x->body_mask);
            if (x->body_sub == NULL)
                rc = AL_ERROR;
            if (x->body_mask != 0) /* values may go into the body: wipe its chunks */
                c->up.out.sensitive = 1;
            /* Hold the head and body until the body is scanned (up to a cap),
             * so a refused placeholder means the upstream saw nothing. */
            if (x->req_framing.kind != PX_BODY_LENGTH || x->req_framing.len <= PX_HOLD_BODY_BYTES) {
                x->hold_up = 1;
                c->up.out.max = PX_HOLD_QUEUE_BYTES;
            }
        }
        if (rc == AL_OK && x->injected != 0) {
            c->up.out.sensitive = 1; /* chunks holding values are wiped when freed */
            PX_MINC(secrets_injected);
        }
        target = tb.data;
        tlen = tb.len;
    } else {
        rc = px_msg_write_headers(m, &hb);
    }
    if (rc == AL_OK) { /* no printf: this runs for every request */
        const char *meth = llhttp_method_name(c->rq.method);
        char        port[8];
        size_t      pl = default_port ? 0 : px_port_str(port, t->port);

        if (al_dbuf_adds(&d, meth) != AL_OK || al_dbuf_add(&d, " ", 1) != AL_OK ||
            al_dbuf_add(&d, target, tlen) != AL_OK ||
            al_dbuf_adds(&d, " HTTP/1.1\r\nHost: ") != AL_OK || al_dbuf_adds(&d, lb) != AL_OK ||
            al_dbuf_adds(&d, t->host) != AL_OK || al_dbuf_adds(&d, rb) != AL_OK ||
            al_dbuf_add(&d, port, pl) != AL_OK || al_dbuf_add(&d, "\r\n", 2) != AL_OK)
            rc = AL_ERROR;
    }
    if (rc == AL_OK && hb.len > 0)
        rc = al_dbuf_add(&d, hb.data, hb.len);
    if (rc == AL_OK && secret_host)
        rc = al_dbuf_adds(&d, "Accept-Encoding: identity\r\n");
    if (rc == AL_OK) {
        /* Framing from the parser, never a forwarded header: the body ends
         * upstream exactly where it ended on the client side. */
        struct px_framing f = x->req_framing;

        if (x->req_chunked)
            f.kind = PX_BODY_CHUNKED;
        rc = px_framing_write(&f, &d);
    }
    if (rc == AL_OK && x->want_upgrade)
        rc = al_dbuf_adds(&d, "Connection: upgrade\r\n");
    if (rc == AL_OK)
        rc = al_dbuf_add(&d, "\r\n", 2);
    if (rc == AL_OK)
        rc = al_bufq_write(&c->up.out, d.data, d.len);
    sec_dbuf_wipe(&d);
    sec_dbuf_wipe(&hb);
    sec_dbuf_wipe(&tb);
    return rc == AL_DECLINED ? AL_DECLINED : rc;
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
    px_conn_update_io(c);
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

    if (rc == AL_AGAIN) {
        px_conn_update_io(c);
        return;
    }
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
    llhttp_init(&c->rs, HTTP_RESPONSE, &px_resp_settings);
    c->rs.data = c;
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
    if (x->hold_up && px_msg_find(&x->req, "expect", 0) >= 0) {
        int i = px_msg_find(&x->req, "expect", 0);

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
    if (!c->closing)
        px_conn_update_io(c);
}

static void
px_conn_connect_next(struct px_conn *c)
{
    struct px_exch *x = c->x;
    int             last_err = ECONNREFUSED;

    while (x->addr_idx < x->addrs.naddrs) {
        struct sockaddr_storage *ss = &x->addrs.addrs[x->addr_idx];
        socklen_t                sl =
            ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
        int one = 1;
        int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

        if (fd < 0) {
            last_err = errno;
            al_log_warn("conn %llu: socket", (unsigned long long)c->id);
            break;
        }
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (connect(fd, (struct sockaddr *)ss, sl) == 0 || errno == EINPROGRESS) {
            px_half_init(&c->up, c, fd, px_conn_io_cb);
            if (c->state != PX_ST_CONNECT)
                px_conn_set_state(c, PX_ST_CONNECT);
            px_conn_update_io(c);
            return;
        }
        last_err = errno;
        close(fd);
        x->addr_idx++;
    }
    if (last_err == ECONNREFUSED)
        px_conn_upstream_error(c, PX_UERR_REFUSED, 502, "upstream_refused", NULL);
    else
        px_conn_upstream_error(c, PX_UERR_OTHER, 502, "upstream_unreachable", strerror(last_err));
}

/* The upstream socket became writable while connecting. */
static void
px_conn_connect_done(struct px_conn *c)
{
    struct px_exch *x = c->x;
    int             err = 0;
    socklen_t       el = sizeof(err);

    if (getsockopt(c->up.fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0)
        err = errno;
    if (err == 0) {
        PX_MINC(pool_misses);
        if (x->target.tls) {
            if (px_tls_up_start(c) != AL_OK) {
                px_conn_finalize(c);
                return;
            }
            px_conn_set_state(c, PX_ST_TLS_UP);
            px_conn_tls_up_step(c);
            return;
        }
        px_conn_upstream_ready(c);
        return;
    }
    al_log_debug("conn %llu: connect attempt %d failed: %s", (unsigned long long)c->id, x->addr_idx,
                 strerror(err));
    /* Keep the queued request head: it moves to the next attempt's socket. */
    {
        struct al_bufq keep = c->up.out;

        al_bufq_init(&c->up.out, PX_BUF_HIGH_BYTES);
        px_half_close(c, &c->up);
        x->addr_idx++;
        if (x->addr_idx >= x->addrs.naddrs) {
            al_bufq_free(&keep);
            if (err == ECONNREFUSED)
                px_conn_upstream_error(c, PX_UERR_REFUSED, 502, "upstream_refused", NULL);
            else
                px_conn_upstream_error(c, PX_UERR_OTHER, 502, "upstream_unreachable",
                                       strerror(err));
            return;
        }
        px_conn_connect_next(c);
        if (!c->closing && c->state == PX_ST_CONNECT) {
            al_bufq_free(&c->up.out);
            c->up.out = keep;
        } else {
            al_bufq_free(&keep);
        }
    }
}

static void
px_conn_dns_done(void *arg, const struct px_dns_result *res)
{
    struct px_conn *c = arg;

    px_conn_ref(c);
    c->x->dnsq = NULL;
    if (res != &c->x->addrs)
        c->x->addrs = *res;
    if (res->err != PX_DNS_OK || res->naddrs == 0) {
        if (res->err == PX_DNS_TIMEOUT)
            px_conn_upstream_error(c, PX_UERR_DNS, 502, "dns_timeout", c->x->target.host);
        else if (res->err == PX_DNS_NOTFOUND || res->naddrs == 0)
            px_conn_upstream_error(c, PX_UERR_DNS, 502, "dns_not_found", c->x->target.host);
        else
            px_conn_upstream_error(c, PX_UERR_DNS, 502, "dns_failed", c->x->target.host);
    } else {
        /* Policy's address guard slots in here: px_decide_addrs() filters the
         * answers before any connect. */
        if (px_decide_addrs(c) == AL_OK) {
            c->x->addr_idx = 0;
            px_conn_connect_next(c);
        } else {
            px_conn_finalize(c);
        }
    }
    px_conn_unref(c);
}

/*
 * A pooled upstream (plain, or TLS with `ssl`) carries this request. Its
 * peer was checked under the policy of its time, so the address guard runs
 * again; a refusal there has answered the client and closes the socket.
 */
static void
px_conn_use_pooled(struct px_conn *c, int fd, const struct sockaddr_storage *peer, SSL *ssl)
{
    struct px_exch *x = c->x;

    PX_MINC(pool_hits);
    x->from_pool = 1;
    x->addrs.naddrs = 1;
    x->addrs.addrs[0] = *peer;
    x->addr_idx = 0;
    if (px_decide_addrs(c) != AL_OK) {
        if (ssl != NULL)
            SSL_free(ssl);
        close(fd);
        px_conn_finalize(c);
        return;
    }
    px_half_init(&c->up, c, fd, px_conn_io_cb);
    if (ssl != NULL)
        c->up.ssl = ssl;
    /* A held request keeps the hold's bound: at 64 KiB a body between that
     * and the hold's cap filled the queue, and the hold was either released
     * before the scan ended or, with no client bytes left to feed, never. */
    c->up.out.max = x->hold_up ? PX_HOLD_QUEUE_BYTES : PX_BUF_HIGH_BYTES;
    px_conn_upstream_ready(c);
}

static void
px_conn_resolve(struct px_conn *c)
{
    struct px_exch *x = c->x;
    int             rc;

    if (c->mitm && c->up_kept && c->up.fd >= 0 && !x->no_pool) {
        x->from_pool = 1; /* the tunnel's upstream, kept from the previous request */
        c->up_kept = 0;
        px_conn_upstream_ready(c);
        return;
    }
    if (!c->mitm && c->up_kept) {
        /* The previous request's plain upstream, still on this connection:
         * the same destination takes it as it is (no pool round trip, no
         * watcher restarted); another one parks it for whoever wants it. */
        if (!x->is_connect && !x->want_upgrade && !x->no_pool && !x->target.tls && c->up.fd >= 0 &&
            strcmp(x->kept_key, x->pool_key) == 0) {
            c->up_kept = 0;
            PX_MINC(pool_hits);
            x->from_pool = 1;
            x->addrs.naddrs = 1;
            x->addrs.addrs[0] = x->kept_peer;
            x->addr_idx = 0;
            if (px_decide_addrs(c) != AL_OK) {
                px_half_close(c, &c->up); /* refused now */
                px_conn_finalize(c);
                return;
            }
            px_conn_upstream_ready(c);
            return;
        }
        px_conn_park_upstream(c);
    }
    if (c->mitm && x->target.tls && !x->no_pool && c->up.fd < 0 && px_tls_up != NULL) {
        struct sockaddr_storage peer;
        SSL                    *ssl = NULL;
        int fd = px_pool_get_tls(c->worker, x->pool_key, px_tls_up, &peer, &ssl);

        if (fd >= 0) { /* a verified upstream another tunnel to this host parked */
            px_conn_use_pooled(c, fd, &peer, ssl);
            return;
        }
    }
    if (!x->is_connect && !x->want_upgrade && !x->no_pool && !x->target.tls) {
        struct sockaddr_storage peer;
        int                     fd = px_pool_get(c->worker, x->pool_key, &peer);

        if (fd >= 0) {
            px_conn_use_pooled(c, fd, &peer, NULL);
            return;
        }
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
    const char     *err = NULL;
    const char     *url = px_msg_str(m, m->url);
    int             rc;

    c->head_started = 0;
    x->head_done = 1;
    if (c->rq.http_major != 1) {
        px_conn_fail(c, 505, "http_version", NULL);
        return;
    }
    x->is_connect = c->rq.method == HTTP_CONNECT;
    x->is_head = c->rq.method == HTTP_HEAD;
    x->req_chunked = (c->rq.flags & F_CHUNKED) != 0;
    if (c->mitm && x->is_connect) {
        px_conn_fail(c, 400, "bad_request", "CONNECT inside an intercepted tunnel");
        return;
    } else if (c->mitm) {
        rc = px_conn_mitm_target(c, &err);
        if (rc == AL_DECLINED) {
            px_conn_fail(c, 421, "misdirected", "Host does not name the tunnel's host");
            return;
        }
    } else if (x->is_connect) {
        rc = px_authority_parse(url, m->url_len, 0, &x->target, &err);
        if (rc == AL_OK && c->mode == PX_LISTEN_TRANSPARENT) {
            px_conn_fail(c, 400, "bad_target", "CONNECT on a transparent listener");
            return;
        }
    } else if (c->mode == PX_LISTEN_TRANSPARENT) {
        rc = px_conn_transparent_target(c, &err);
    } else if (m->url_len > 0 && url[0] == '/') {
        px_conn_fail(c, 400, "bad_target", "origin-form request to a forward proxy");
        return;
    } else {
        rc = px_url_parse_absolute(url, m->url_len, &x->target, &err);
        if (rc == AL_OK && x->target.tls) {
            px_conn_fail(c, 501, "https_without_connect", "use CONNECT for https");
            return;
        }
    }
    if (rc != AL_OK) {
        px_conn_fail(c, 400, err != NULL ? err : "bad_target", NULL);
        return;
    }
    if (!px_msg_te_chunked_only(m)) {
        /* The body is re-framed here and Transfer-Encoding dropped: a gzip
         * transfer coding would go upstream undecoded, and past the body
         * scanner (a placeholder inside unseen). RFC 9112 6.1: 501. */
        px_conn_fail(c, 501, "unsupported_transfer_coding", "only chunked is supported");
        return;
    }
    if (c->rq.upgrade && !x->is_connect) {
        int u = px_msg_find(m, "upgrade", 0);

        x->want_upgrade =
            u >= 0 && m->hdrs[u].val != UINT32_MAX &&
            al_strcaseeq_n(px_msg_str(m, m->hdrs[u].val), m->hdrs[u].val_len, "websocket");
        /* Any other protocol (h2c, ...) is not performed: Upgrade and
         * HTTP2-Settings are dropped as hop-by-hop and the message stays a
         * plain request, so the connection goes on with the next one. */
        if (!x->want_upgrade)
            c->rq.upgrade = 0;
    }
    {
        size_t hl = strnlen(x->target.host, sizeof(x->pool_key) - 7);

        memcpy(x->pool_key, x->target.host, hl); /* "host:port", no printf */
        x->pool_key[hl + px_port_str(x->pool_key + hl, x->target.port)] = '\0';
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
    if (px_audit != NULL) {
        int adm = aud_writer_admit(px_audit);

        if (adm != AL_OK) { /* fail closed: nothing goes out unaudited */
            PX_MINC(audit_refusals);
            px_conn_fail(c, 503, adm == AL_DECLINED ? "audit_backlog" : "audit_unavailable", NULL);
            return;
        }
    }
    if (x->is_connect && (x->decision.intercept ||
                          (c->conf->secrets != NULL &&
                           sec_any_scope_host(c->conf->secrets, x->target.host, x->target.port)))) {
        /* A host some secret is scoped to is always intercepted: a
         * placeholder must never leave unseen inside an opaque tunnel. */
        if (x->silent_tunnel) {
            px_conn_close_refused(c, "opaque_tunnel_to_secret_host");
            return;
        }
        px_conn_mitm_start(c);
        return;
    }
    if (!x->is_connect) {
        rc = px_conn_write_request_head(c);
        if (rc == AL_DECLINED)
            return; /* a secret refusal was answered */
        if (rc != AL_OK) {
            px_conn_fail(c, 500, "internal", "out of memory");
            return;
        }
    }
    if (px_conn_strict_begin(c) != AL_OK)
        return; /* resolving continues once the row is committed */
    px_conn_resolve(c);
}

static void
px_conn_parse_error(struct px_conn *c, llhttp_errno_t e)
{
    struct px_exch *x = c->x;

    if (x != NULL && x->body_refusal != NULL) {
        /* A placeholder in the body that may not go there: the upstream got
         * a truncated request (never the whole placeholder); cut it off. */
        PX_MINC(secrets_refused);
        x->decision.verdict = POL_DENY;
        x->decision.reason = x->body_refusal;
        px_half_close(c, &c->up);
        px_conn_deny(c, px_secret_refusal_status(x->body_refusal), x->body_refusal,
                     x->secret_refused, NULL);
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
        llhttp_errno_t e;
        size_t         used;

        if (!in_head && c->state == PX_ST_EXCHANGE && c->x != NULL && c->x->hold_up &&
            al_bufq_full(&c->up.out))
            px_conn_release_hold(c); /* bigger than the hold: stream the rest */
        if (!in_head && (c->state != PX_ST_EXCHANGE || c->x == NULL || c->x->req_done ||
                         al_bufq_full(&c->up.out)))
            break;
        e = llhttp_execute(&c->rq, c->cin, c->cin_len);
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
    if (!c->closing && c->state == PX_ST_EXCHANGE)
        px_conn_update_io(c);
}

/* ---- TLS steps and transparent flows --------------------------------------- */

static void
px_conn_tls_up_step(struct px_conn *c)
{
    int rc = px_tls_up_step(c);

    if (rc == AL_AGAIN)
        px_conn_update_io(c);
    else if (rc == AL_OK)
        px_conn_upstream_ready(c);
    else
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
    static const char ok[] = "HTTP/1.1 200 Connection established\r\n\r\n";
    struct px_exch   *x = c->x;
    int               rc = px_tls_mitm_prepare(c);

    if (rc == AL_DECLINED) {
        px_conn_finalize(c);
        return;
    }
    if (rc != AL_OK) {
        px_conn_close(c, "no memory");
        return;
    }
    if (!x->silent_tunnel) {
        if (al_bufq_write(&c->cl.out, ok, sizeof(ok) - 1) != AL_OK) {
            px_conn_close(c, "no memory");
            return;
        }
        c->cl.plain_out = sizeof(ok) - 1;
    }
    al_log_info("conn %llu: CONNECT %s:%u intercepted", (unsigned long long)c->id, x->target.host,
                x->target.port);
    px_conn_count_status(200);
    x->status = 200;
    px_conn_audit(c, NULL); /* the CONNECT's own row; inner requests get theirs */
    px_exch_reset(x, c->conf->limits.header_bytes);
    px_conn_parser_reset(c); /* the inner stream starts a new HTTP/1.1 parse */
    c->nreqs = 0;
    px_conn_set_state(c, PX_ST_TLS_CLIENT);
    if (px_half_flush(c, &c->cl) == AL_ERROR) {
        px_conn_close(c, "client write error");
        return;
    }
    /* A ClientHello already in the BIO (coalesced with the CONNECT head, or
     * peeked by a transparent listener) will not be announced by the socket. */
    if (c->cl.plain_out == 0)
        px_conn_tls_client_step(c);
    else
        px_conn_update_io(c);
}

/* Handshake with the client; then the inner requests start. */
static void
px_conn_tls_client_step(struct px_conn *c)
{
    int rc = px_tls_client_step(c);

    if (rc == AL_AGAIN) {
        px_conn_update_io(c);
        return;
    }
    if (rc != AL_OK) {
        px_conn_finalize(c);
        return;
    }
    px_conn_set_state(c, PX_ST_READ_HEAD);
    px_conn_update_io(c);
    if (px_half_tls_buffered(&c->cl))
        c->cl.tls_more = 1, ev_feed_event(c->worker->loop, &c->cl.rio, EV_READ);
}

/* A transparent TLS or TCP flow, decided: intercepted, relayed or refused. */
static void
px_conn_transparent_route(struct px_conn *c, int tls)
{
    struct px_exch *x = c->x;
    int             secret_host = c->conf->secrets != NULL &&
                      sec_any_scope_host(c->conf->secrets, x->target.host, x->target.port);

    if (tls && (x->decision.intercept || secret_host)) {
        /* Intercepted exactly as through CONNECT, minus the 200: the peeked
         * ClientHello goes straight into the TLS engine. */
        if (px_tls_srv == NULL || x->target.kind != PX_HOST_NAME) {
            px_conn_close_refused(c, "interception_unavailable");
            return;
        }
        px_conn_mitm_start(c);
        return;
    }
    if (secret_host) { /* raw TCP to a secret's host would carry placeholders unseen */
        px_conn_close_refused(c, "opaque_tunnel_to_secret_host");
        return;
    }
    if (px_audit != NULL) {
        int adm = aud_writer_admit(px_audit);

        if (adm != AL_OK) {
            PX_MINC(audit_refusals);
            px_conn_close_refused(c, adm == AL_DECLINED ? "audit_backlog" : "audit_unavailable");
            return;
        }
    }
    if (px_conn_strict_begin(c) != AL_OK)
        return;
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
        px_conn_transparent_route(c, kind == PX_PEEK_TLS);
}

/* ---- I/O handlers -------------------------------------------------------- */

static void
px_conn_client_readable(struct px_conn *c)
{
    ssize_t n;

    if (c->cin == NULL) {
        c->cin = al_malloc(PX_CIN_BYTES);
        if (c->cin == NULL) {
            px_conn_close(c, "no memory");
            return;
        }
    }
    /* A read that was resumed because TLS bytes were held (tls_more) is owed
     * nothing more once it runs: if it finds none (the socket was drained in
     * this loop iteration), a flag left set would have px_conn_update_io
     * feed this event again in the same iteration, forever. The loop below
     * sets it again when the buffer fills with bytes still held. */
    c->cl.tls_more = 0;
    n = px_half_recv(c, &c->cl, c->cin + c->cin_len, PX_CIN_BYTES - c->cin_len);
    /* TLS: drain what the memory BIO holds, or no socket event will say so. */
    while (c->cl.ssl != NULL && n > 0) {
        ssize_t more;

        c->cin_len += (size_t)n;
        if (c->cin_len >= PX_CIN_BYTES) {
            c->cl.tls_more = 1; /* resumed by px_conn_update_io when there is room */
            n = -3;
            break;
        }
        if (!px_half_tls_buffered(&c->cl)) {
            /* Nothing decrypted or undecrypted is held: a further read
             * would only find the socket empty (and cost OpenSSL a record
             * buffer); the level-triggered watcher reports new bytes. */
            c->cl.tls_more = 0;
            n = -3;
            break;
        }
        more = px_half_recv(c, &c->cl, c->cin + c->cin_len, PX_CIN_BYTES - c->cin_len);
        if (more <= 0) {
            if (more == -1)
                c->cl.tls_more = 0;
            n = -3; /* EOF or an error shows again on the next event */
            break;
        }
        n = more;
    }
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
        else if (c->state == PX_ST_EXCHANGE && c->x != NULL && c->x->req_done)
            return; /* the response still goes out; nothing more will come */
        else
            px_conn_close(c, "client closed mid-request");
        return;
    }
    if (n > 0)
        c->cin_len += (size_t)n;
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
        if (px_conn_write_request_head(c) != AL_OK) {
            if (!c->closing && c->state != PX_ST_FLUSH_CLOSE)
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
        e = llhttp_execute(&c->rs, buf, (size_t)n);
        if (e == HPE_PAUSED) {
            if ((const char *)llhttp_get_error_pos(&c->rs) < buf + n)
                x->upstream_reusable = 0; /* bytes after the response: never reuse */
        } else if (e == HPE_PAUSED_UPGRADE) {
            const char *pos = llhttp_get_error_pos(&c->rs);

            if (pos < buf + n && al_bufq_write(&c->cl.out, pos, (size_t)(buf + n - pos)) != AL_OK) {
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
    else
        px_conn_update_io(c);
}

/*
 * A kept upstream (intercepted tunnel, between requests) became readable.
 * TLS records that carry no data (a session ticket, a key update) are taken
 * in stride; data nobody asked for, a close or an error drop it, and the
 * next request opens a new one.
 */
static void
px_conn_kept_upstream_readable(struct px_conn *c)
{
    if (c->up.ssl != NULL) {
        char   buf[512];
        size_t got = 0;

        ERR_clear_error();
        if (SSL_read_ex(c->up.ssl, buf, sizeof(buf), &got) <= 0 &&
            SSL_get_error(c->up.ssl, 0) == SSL_ERROR_WANT_READ) {
            c->up.tls_want = EV_READ;
            return;
        }
        ERR_clear_error();
    }
    al_log_debug("conn %llu: kept upstream closed or spoke out of turn: dropped",
                 (unsigned long long)c->id);
    px_half_close(c, &c->up);
    c->up_kept = 0;
}

/*
 * The upstream kept on the connection between requests goes to the worker's
 * pool (plain: keyed host:port; TLS of an intercepted tunnel: the tunnel's
 * host), where any connection to the same destination may take it; one
 * that cannot be parked cleanly is closed.
 */
static void
px_conn_park_upstream(struct px_conn *c)
{
    struct px_half *h = &c->up;

    if (c->up_kept && h->fd >= 0 && !c->mitm && h->ssl == NULL && c->x != NULL) {
        /* bytes already in up.out are the next request's: they stay */
        ev_io_stop(c->worker->loop, &h->rio);
        ev_io_stop(c->worker->loop, &h->wio);
        px_pool_put(c->worker, c->x->kept_key, h->fd, &c->x->kept_peer);
        h->fd = -1;
    } else if (c->up_kept && h->fd >= 0 && c->mitm && h->ssl != NULL && al_bufq_len(&h->out) == 0 &&
               h->tls_want != EV_WRITE && !SSL_has_pending(h->ssl)) {
        struct sockaddr_storage peer;
        socklen_t               sl = sizeof(peer);
        char                    key[PX_HOST_MAX + 8];

        if (getpeername(h->fd, (struct sockaddr *)&peer, &sl) == 0) {
            snprintf(key, sizeof(key), "%s:%u", c->mitm_target.host, c->mitm_target.port);
            ev_io_stop(c->worker->loop, &h->rio);
            ev_io_stop(c->worker->loop, &h->wio);
            px_pool_put_tls(c->worker, key, h->fd, h->ssl, &peer);
            h->fd = -1;
            h->ssl = NULL;
        }
    }
    if (c->up_kept && h->fd >= 0)
        px_half_close(c, h);
    c->up_kept = 0;
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
    px_conn_park_upstream(c);
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
        px_conn_enter_tunnel(c);
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
    px_conn_update_io(c);
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
    if (!c->closing)
        px_conn_update_io(c);
}

static void
px_conn_tunnel_io(struct px_conn *c)
{
    if (px_half_pump(c, &c->cl, &c->up) != AL_OK || px_half_pump(c, &c->up, &c->cl) != AL_OK) {
        px_conn_close(c, "tunnel error");
        return;
    }
    if (c->cl.shut && c->up.shut) {
        px_conn_close(c, "tunnel done");
        return;
    }
    px_conn_update_io(c);
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
    px_conn_update_io(c);
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
        px_conn_tunnel_io(c);
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
            px_conn_kept_upstream_readable(c);
        else
            ev_io_stop(loop, w);
        break;
    case PX_ST_PEEK:
        if (is_cl && (revents & EV_READ))
            px_conn_client_readable(c);
        if (!c->closing)
            px_conn_update_io(c);
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
        if (!c->closing && c->state == PX_ST_SNI_PEEK)
            px_conn_update_io(c);
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
            px_conn_kept_upstream_readable(c);
        if (!c->closing)
            px_conn_update_io(c);
        break;
    }
out:
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
            px_conn_update_io(c);
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
    case PX_ST_TUNNEL:
    case PX_ST_FLUSH_CLOSE:
        px_conn_close(c, "idle timeout");
        break;
    }
out:
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

    pthread_once(&px_settings_once, px_settings_init);
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
    llhttp_init(&c->rq, HTTP_REQUEST, &px_req_settings);
    c->rq.data = c;
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
    while (w->conns != NULL)
        px_conn_close(w->conns, "shutdown");
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
