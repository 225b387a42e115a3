/*
 * px_phase.h - the contract between the connection machine (px_conn.c) and
 * the phases and codecs it calls.
 *
 * A phase (identify + decide, inject, a TLS step, the transparent peek, the
 * audit begin) returns AL_OK (go on), AL_AGAIN (wait for I/O or a notice;
 * the machine picks the state), AL_DECLINED (c->refusal says what to
 * answer) or AL_ERROR (out of memory and the like). It never answers the
 * client, changes the connection's state or touches I/O interest: the
 * machine's finalize step does, in one place. Nothing declared here may
 * call back into the machine.
 *
 * The handlers of a state (the machine's own, and the HTTP exchange
 * driver's for the states that speak HTTP) return what happens next:
 * AL_OK (nothing more: the watchers follow the state), AL_DECLINED
 * (c->refusal: finalize answers) or a PX_NEXT_* step, which the machine
 * does (px_conn_next). So the driver lives below the machine, not beside
 * it: it asks for a close, a route or the next request and never calls
 * them.
 */
#ifndef PX_PHASE_H
#define PX_PHASE_H

#include "px_exch.h"

/* A refusal answered with status and X-Airlock-Reason (a protocol error). */
static inline int
px_refuse(struct px_conn *c, int status, const char *reason, const char *detail)
{
    c->refusal = (struct px_refusal){status, reason, detail, NULL, NULL, 0, 0, PX_UERR_OTHER};
    return AL_DECLINED;
}

/* A verdict on identity, policy or a secret's scope (audited as deny when
 * 403/407), with extra header lines (a challenge) or NULL. */
static inline int
px_refuse_deny(struct px_conn *c, int status, const char *reason, const char *detail,
               const char *extra)
{
    c->refusal = (struct px_refusal){
        status, reason, detail, NULL, extra, status == 403 || status == 407, 0, PX_UERR_OTHER};
    return AL_DECLINED;
}

/* The upstream failed (counted by kind in airlock_upstream_errors_total). */
static inline int
px_refuse_upstream(struct px_conn *c, enum px_uerr kind, int status, const char *reason,
                   const char *detail)
{
    c->refusal = (struct px_refusal){status, reason, detail, NULL, NULL, 0, 1, kind};
    return AL_DECLINED;
}

/* No protocol to answer in (a TLS or raw TCP flow): a row, then close. */
static inline int
px_refuse_close(struct px_conn *c, const char *reason)
{
    c->refusal = (struct px_refusal){0, reason, NULL, NULL, NULL, 0, 0, PX_UERR_OTHER};
    return AL_DECLINED;
}

/* ---- what happens next (a state's handler to the machine) --------------------- */
#define PX_NEXT_CLOSE 30   /* close now, without an answer (c->close_why) */
#define PX_NEXT_TIMER 31   /* the deadline moved (a head began; the idle trim): re-arm */
#define PX_NEXT_ROUTE 32   /* a head is decided: route it, then px_conn_http_feed again */
#define PX_NEXT_RESOLVE 33 /* the request again, on a fresh upstream (a pooled one went away) */
#define PX_NEXT_KEEP                                                                               \
    34                /* the response is out, the connection kept: PX_ST_READ_HEAD, then           \
                       * px_conn_http_next_head */
#define PX_NEXT_WS 35 /* a 101 is out: the websocket begins */

/* The connection ends without an answer (a side failed or went away). */
static inline int
px_next_close(struct px_conn *c, const char *why)
{
    c->close_why = why;
    return PX_NEXT_CLOSE;
}

/* ---- exchange lifecycle (px_exch.c) ---------------------------------------- */
struct px_exch *px_exch_new(size_t header_bytes);
void            px_exch_free(struct px_exch *x);
/* Readies a finished exchange for the next request on the connection. */
void px_exch_reset(struct px_exch *x, size_t header_bytes);

/* ---- the HTTP/1.1 codec (px_h1.c) ------------------------------------------- */
/* A fresh request parser (a connection, or the inside of a tunnel). */
void px_h1_request_parser(struct px_conn *c);
/* A fresh response parser for the exchange's upstream. */
void px_h1_response_parser(struct px_conn *c);
/* "host:port" of a target into key (PX_HOST_MAX + 8 bytes). */
void px_h1_pool_key(const struct px_target *t, char *key, size_t keysz);
/* Drops what never goes upstream from the parsed request head: hop-by-hop
 * headers, the client's framing and Host (the target's authority wins). */
void px_h1_request_prepare(struct px_conn *c);
/* Writes the request head toward the upstream into up.out: request line,
 * Host, the header block hb (after injection), framing of airlock's own. */
int px_h1_request_head(struct px_conn *c, const char *target, size_t tlen,
                       const struct al_dbuf *hb);
/* Writes a response head (x->resp, after px_inject_response) toward the
 * client with framing of airlock's own. AL_OK or AL_ERROR. */
int px_h1_response_head(struct px_conn *c);

/* ---- the HTTP exchange driver (px_conn_http.c) ----------------------------------- */
/* The handlers of PX_ST_READ_HEAD, PX_ST_RESOLVE and PX_ST_EXCHANGE: a read
 * or a write watcher of one side fired (is_cl: the client's). */
int px_conn_http_on_read(struct px_conn *c, int is_cl);
int px_conn_http_on_write(struct px_conn *c, int is_cl);
/* Their deadlines: a head's (or an idle keep-alive's: first the idle trim,
 * then the close), an exchange's (408 body, 504 upstream, or the close). */
int px_conn_http_head_timeout(struct px_conn *c);
int px_conn_http_exchange_timeout(struct px_conn *c);
/* Client bytes buffered in c->cin to the request parser, as far as the
 * state allows: a complete head comes back decided, as PX_NEXT_ROUTE. */
int px_conn_http_feed(struct px_conn *c);
/* The request head toward the upstream into up.out, injected: AL_OK, or
 * AL_DECLINED (a placeholder that may not go there; no memory: 500). */
int px_conn_http_request_head(struct px_conn *c);
/* An upstream is ready (PX_ST_EXCHANGE): the response parser readied, the
 * request's head and the body bytes at hand go. */
int px_conn_http_start(struct px_conn *c);
/* After PX_NEXT_KEEP (PX_ST_READ_HEAD again): what the client pipelined. */
int px_conn_http_next_head(struct px_conn *c);

/* ---- the WebSocket codec (px_ws.c) ----------------------------------------------- */
/* After a 101: scan = secrets apply to this host (frames through the inject
 * filters); rsv_ok = an extension was agreed (never where scan is on). */
struct px_ws *px_ws_new(struct px_conn *c, int scan, int rsv_ok);
void          px_ws_free(struct px_ws *ws);
/* The two directions' chains: inject filters (when scanning), then the framer. */
int px_ws_chains(struct px_conn *c);
/* Bytes read from one side: frames checked, scanned and re-framed onto the
 * other side's queue. AL_OK, AL_DECLINED (ws->fail_code: close both sides
 * with it), AL_ERROR. */
int px_ws_feed(struct px_conn *c, int from_client, const char *p, size_t n);
/* Airlock's own close frame toward one side (once). */
int px_ws_close_frame(struct px_conn *c, int to_client, int code, const char *reason);
/* Both close frames went through: the socket ends when the queues drain. */
int px_ws_done(const struct px_ws *ws);
#define PX_WS_DONE 10 /* the close handshake went both ways */
#define PX_WS_GONE 11 /* the side read from went away without it */
/* px_ws_feed, then PX_WS_DONE when the close handshake is complete. */
int px_ws_take(struct px_conn *c, int from_client, const char *p, size_t n);
/* Reads one side (TLS: drained of what it holds while the other side's
 * queue has room) through the codec: AL_OK, PX_WS_DONE, PX_WS_GONE,
 * AL_DECLINED (ws->fail_code), AL_ERROR. */
int px_ws_read(struct px_conn *c, int from_client);
/* The socket's log line and row. */
void px_ws_row(struct px_conn *c, const char *why);
/* A violation (fail_code) or refusal (1008) as the row says it. */
void px_ws_fail_row(struct px_conn *c);

/* ---- body filter chains (px_filter.c) -------------------------------------- */
void px_chain_init(struct px_chain *ch, struct px_conn *c);
int  px_chain_add(struct px_chain *ch, px_filter_fn fn);
/* Feeds a piece to filter i and on (i == n: framed onto ch->out). AL_OK,
 * AL_DECLINED (a filter refused: its reason is in the exchange), AL_ERROR. */
int px_chain_feed(struct px_chain *ch, int i, const char *p, size_t n, int last);

/* ---- the secrets seam (px_inject.c) ------------------------------------------ */
/*
 * The request head toward the upstream: placeholders in headers and target
 * replaced in scope (hb: the header block, tb: the target; wipe both), a
 * refused placeholder as AL_DECLINED (403/405/415), Accept-Encoding dropped
 * toward a secret's host (x->secret_host), the body's chain readied
 * (substitute or scan; held until scanned up to a cap).
 */
int px_inject_request(struct px_conn *c, const char *target, size_t tlen, struct al_dbuf *hb,
                      struct al_dbuf *tb);
/* A websocket to a secret's host: the substitute/scan filter on frames
 * toward the origin (the "ws" location), the redactor toward the client. */
int px_inject_ws_filters(struct px_conn *c);
/* A control frame's payload (ping, pong, close reason) scanned into out:
 * redacted toward the client; toward the origin a placeholder is
 * substituted where allowed, else AL_DECLINED. */
int px_inject_ws_control(struct px_conn *c, int from_client, const char *p, size_t n,
                         struct al_dbuf *out);
/* A request body's placeholder that may not go there (x->body_refusal, set
 * by the substitute filter) as a refusal (403/405/415, audited deny). */
void px_inject_body_refusal(struct px_conn *c);
/* A response head from an upstream that may hold a secret: redacted in
 * place (status text, names, values), a compressed body decoded or refused
 * (AL_DECLINED: 502 compressed_response), the body's chain readied. */
int px_inject_response(struct px_conn *c);

/* ---- upstreams (px_upstream.c) ------------------------------------------------ */
/* An upstream without DNS: the tunnel's kept one, this connection's kept
 * plain one (same destination), or the worker's pool (guard checked again).
 * AL_OK (c->up is it), AL_AGAIN (none: resolve), AL_DECLINED. */
int px_upstream_reuse(struct px_conn *c);
/* The resolver's answer through the address guard: AL_OK, AL_DECLINED. */
int px_upstream_resolved(struct px_conn *c, const struct px_dns_result *res);
/* A non-blocking connect to the next address: AL_AGAIN (in progress on
 * c->up, the request head queued there stays), AL_DECLINED (none left). */
int px_upstream_connect(struct px_conn *c);
/* The connecting socket became writable: AL_OK connected, AL_AGAIN the next
 * address is being tried, AL_DECLINED. */
int px_upstream_connected(struct px_conn *c);
/* A kept upstream became readable between requests: a TLS record without
 * data keeps it, anything else drops it. */
void px_upstream_kept_readable(struct px_conn *c);
/* The kept upstream goes to the worker's pool (or is closed). */
void px_upstream_park(struct px_conn *c);

/* ---- a request head's target and protocol checks (px_target.c) ---------------- */
/* The target by the kind of connection, HTTP/1.x, re-frameable transfer
 * codings, which upgrade is performed, the pool key. AL_OK or AL_DECLINED. */
int px_request_target(struct px_conn *c);
/* Where a decided request or flow goes (the audit writer admitting it
 * first): PX_ROUTE_MITM (intercept: always toward a secret's host),
 * PX_ROUTE_UPSTREAM, or AL_DECLINED. */
#define PX_ROUTE_MITM 20
#define PX_ROUTE_UPSTREAM 21
int px_route(struct px_conn *c);

/* ---- identify + decide (px_decide.c) --------------------------------------- */
/* Once per request head, before anything is resolved. */
int px_decide(struct px_conn *c);
/* The address guard over the resolved answers, before any connect. */
int px_decide_addrs(struct px_conn *c);
/* The sandbox whose cidrs hold the client's address, into out ("" if none). */
void px_decide_sandbox_by_source(const struct px_conn *c, char *out, size_t outsz);

/* ---- audit rows (px_conn_audit.c) ------------------------------------------ */
void px_conn_audit_fill(const struct px_conn *c, struct aud_record *r);
void px_conn_audit(struct px_conn *c, const char *error); /* once per request */
void px_conn_tunnel_audit_open(struct px_conn *c);
void px_conn_tunnel_audit_close(struct px_conn *c, const char *why);
/* Strict mode: hands the begun row to the writer; AL_AGAIN while it commits
 * (notice: px_conn_audit_committed), or AL_DECLINED (503). */
int px_conn_audit_begin(struct px_conn *c);
/* A websocket at its 101: its row handed to the writer pending, completed
 * by px_conn_audit at close (no wait, any durability). AL_OK, or
 * AL_DECLINED with x->err_reason (audit_backlog / audit_unavailable): the
 * socket must close before a frame moves. */
int px_conn_ws_audit_begin(struct px_conn *c);

/* ---- TLS on a connection (px_conn_tls.c) ----------------------------------- */
/* TCP to the upstream is up: a verified TLS client on it. AL_OK or AL_DECLINED. */
int px_tls_up_start(struct px_conn *c);
/* One step of the upstream handshake: AL_OK done, AL_AGAIN, AL_DECLINED. */
int px_tls_up_step(struct px_conn *c);
/* An allowed CONNECT (or transparent TLS) is intercepted: the client side's
 * TLS server, a ClientHello already read fed in. AL_OK, AL_DECLINED, AL_ERROR. */
int px_tls_mitm_prepare(struct px_conn *c);
/* One step of the client handshake: AL_OK done (SNI checked), AL_AGAIN, or
 * AL_DECLINED (close with a row: px_refuse_close). */
int px_tls_client_step(struct px_conn *c);
/* An opaque (not intercepted) CONNECT tunnel: the client's first bytes, if
 * they are a TLS ClientHello, must name the CONNECT host in their SNI
 * (domain fronting otherwise). AL_AGAIN for more bytes, AL_OK (no TLS, no
 * SNI, or the same host), AL_DECLINED (sni_mismatch, bad_client_hello). */
int px_tls_tunnel_sni_check(struct px_conn *c, int eof);
/* The exchange readied for the row of an intercepted tunnel that fails. */
void px_tls_refusal_row(struct px_conn *c, const char *reason);
/* An inner request's target: AL_OK, AL_DECLINED (misdirected), AL_ERROR. */
int px_conn_mitm_target(struct px_conn *c, const char **err);

/* ---- transparent listeners (px_conn_transparent.c) ------------------------- */
enum px_peek_kind { PX_PEEK_HTTP, PX_PEEK_TLS, PX_PEEK_TCP };
/* Accept-time checks (original destination, loops): AL_OK or AL_DECLINED. */
int px_transparent_accept(struct px_conn *c);
/* PX_ST_PEEK: which protocol the first bytes speak. AL_AGAIN for more bytes,
 * AL_OK with *kind (and sni for TLS), AL_DECLINED. */
int px_transparent_peek(struct px_conn *c, int eof, enum px_peek_kind *kind, char *sni,
                        size_t snisz);
/* A TLS (by SNI) or raw TCP (by original destination) flow as a tunnel
 * exchange, decided like a CONNECT: AL_OK, AL_DECLINED, AL_ERROR. */
int px_transparent_tunnel_target(struct px_conn *c, const char *sni);
/* Origin-form target: name from Host, port from the original destination. */
int px_conn_transparent_target(struct px_conn *c, const char **err);
/* The exchange readied for the row of a transparent flow that is refused. */
void px_transparent_refusal_row(struct px_conn *c, const char *reason);

#endif
