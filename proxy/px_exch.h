/*
 * px_exch.h - the data of a connection: its halves, the exchange in progress
 * and a phase's refusal. Data only: no functions. Every file of the
 * connection code shares it; the machine (px_conn.c) is the only writer of
 * the state and the watchers, phases and codecs fill the rest.
 */
#ifndef PX_EXCH_H
#define PX_EXCH_H

#include <openssl/ssl.h>

#include "px.h"
#include "px_http.h"
#include "px_sni.h"

/*
 * A body filter chain (request bodies, response bodies; later websocket
 * messages and HTTP/2 DATA): filters in order, each taking a piece (last:
 * the body ends) and handing what it makes to the next (px_chain_feed); past
 * the last filter the bytes are framed onto `out` (chunked or as they are).
 * A filter may hold bytes back, and may refuse (AL_DECLINED, with the reason
 * left in the exchange). Every filter's state is the connection.
 */
struct px_chain;
typedef int (*px_filter_fn)(struct px_chain *ch, int i, const char *p, size_t n, int last);
#define PX_CHAIN_MAX 4
struct px_chain {
    px_filter_fn    fn[PX_CHAIN_MAX];
    int             n;
    struct px_conn *conn;
    struct al_bufq *out;     /* where framed bytes go (set with the head) */
    int             chunked; /* frame as chunks, "0\r\n\r\n" at the end */
};

/* One direction of a WebSocket (px_ws.c): the frame being read and the
 * message it belongs to. */
struct px_ws_dir {
    int           from_client; /* frames must be masked; output goes to the origin */
    unsigned char hdr[14];     /* the header being read */
    unsigned      hlen, hneed; /* bytes read, bytes still needed (0: in a payload) */
    int           fin, rsv, opcode, masked;
    unsigned char key[4];
    uint64_t      left, off; /* payload bytes to come, and read so far */
    unsigned char ctl[125];  /* a control frame's payload */
    unsigned      ctl_len;
    int           in_msg, msg_opcode, msg_rsv, out_started;
    uint64_t      msg_bytes;
    uint64_t      msgs, bytes; /* complete data messages, wire bytes read */
    int           close_code;  /* from this side's close frame: -1 none, 1005 none given */
    int           close_seen;
};

struct px_ws {
    struct px_ws_dir up, down;      /* up: client -> origin */
    uint64_t         max_msg;       /* limits.ws_message_bytes */
    uint64_t         rng;           /* masks toward the origin */
    int              scan;          /* secrets apply: data through the inject filters */
    int              rsv_ok;        /* an extension was agreed (only where nothing is scanned) */
    int              sent_close[2]; /* a close frame went [0] to the origin, [1] to the client */
    int              fail_code;     /* close code airlock sends for a violation, or 0 */
    const char      *error;         /* why, for the row */
};

/*
 * What a phase or codec returns when it says no (with AL_DECLINED): the
 * machine's finalize step turns it into the answer, the audit row and the
 * next state. A phase never answers the client itself.
 */
struct px_refusal {
    int          status;   /* HTTP status of the answer; 0: no answer, close */
    const char  *reason;   /* X-Airlock-Reason, and the row's reason */
    const char  *detail;   /* short text for the answer's body, or NULL */
    const char  *secret;   /* the secret the refusal is about, or NULL */
    const char  *extra;    /* extra header lines ending in CRLF (a challenge), or NULL */
    int          deny;     /* a verdict on identity, policy or scope (audited as deny) */
    int          upstream; /* an upstream failure: counted under uerr */
    enum px_uerr uerr;
};

#define PX_HOLD_BODY_BYTES (1024 * 1024)                 /* request bodies held until scanned */
#define PX_HOLD_QUEUE_BYTES (PX_HOLD_BODY_BYTES + 65536) /* up.out's bound while held */
#define PX_CIN_BYTES 16384                               /* client bytes buffered for the parser */

enum px_state {
    PX_ST_READ_HEAD = 0, /* waiting for / reading a request head */
    PX_ST_RESOLVE,       /* DNS query pending */
    PX_ST_CONNECT,       /* upstream connect in progress */
    PX_ST_EXCHANGE,      /* request body and response streaming */
    PX_ST_TUNNEL,        /* opaque relay (CONNECT, websocket) */
    PX_ST_FLUSH_CLOSE,   /* writing a final answer, then close */
    PX_ST_AUDIT,         /* strict audit: waiting for the row's commit */
    PX_ST_PEEK,          /* transparent: first bytes tell TLS, HTTP or raw TCP */
    PX_ST_TLS_CLIENT,    /* intercepting: TLS handshake with the client */
    PX_ST_TLS_UP,        /* TLS handshake with the upstream */
    PX_ST_SNI_PEEK,      /* opaque CONNECT tunnel: the ClientHello's SNI must name its host */
    PX_ST_WS,            /* a websocket: frames parsed, scanned, re-framed both ways */
};

struct px_half {
    int             fd;        /* -1 once closed */
    SSL            *ssl;       /* owned; NULL on plain TCP */
    BIO            *rbio;      /* client side: memory BIO the socket bytes are fed into */
    int             tls_want;  /* EV_READ / EV_WRITE an SSL call is waiting for, or 0 */
    size_t          plain_out; /* leading bytes of `out` to send before TLS starts */
    int             tls_more;  /* reading stopped on backpressure with TLS bytes buffered */
    int             rdrained;  /* a short recv emptied the socket in loop iteration rdrained_iter */
    unsigned int    rdrained_iter;
    ev_io           rio, wio;
    struct al_bufq  out;     /* bytes queued *to* this side */
    int             eof;     /* we read EOF from this side */
    int             shut;    /* we shut down writing to this side */
    int             pipe[2]; /* splice pipe carrying bytes read from this side */
    size_t          inpipe;
    struct px_conn *conn;
};

/* Per-request state; freed when a connection becomes a tunnel or idles. */
struct px_exch {
    struct pol_decision  decision;
    int                  decided; /* decision holds a verdict */
    char                 sandbox[POL_SANDBOX_MAX_BYTES + 1];
    char                 session[POL_TAG_MAX_BYTES + 1];
    char                 tool_call[POL_TAG_MAX_BYTES + 1];
    char                *fwd_path; /* normalised path + query to forward; owned */
    size_t               fwd_path_len;
    struct px_target     target;
    struct px_dns_query *dnsq;
    int                  addr_idx;
    char                 pool_key[PX_HOST_MAX + 8];
    char                 upstream_str[64];
    int                  from_pool, no_pool;
    int                  is_connect, is_head, want_upgrade, client_keepalive;
    int                  req_chunked, req_done, req_body_bytes_sent;
    int                  resp_started, resp_done, resp_chunked_out, resp_close_delim;
    int                  upstream_reusable, upstream_keepalive;
    struct px_framing    req_framing; /* the request body's framing, as llhttp parsed it */
    int                  status;
    int64_t              start_us;
    uint64_t             bytes_up, bytes_down;
    struct aud_record   *rec;            /* strict mode: the begun row */
    struct aud_row      *aud_row;        /* a websocket's row begun at its 101 (no wait) */
    int                  audited;        /* the row for this request is handed over */
    int                  head_done;      /* a complete head was parsed */
    int                  deny;           /* answered 403/407 by identity or policy */
    const char          *err_reason;     /* X-Airlock-Reason of airlock's own answer */
    const char          *method_name;    /* audit/policy method when not from llhttp ("TLS") */
    int                  silent_tunnel;  /* transparent tunnel: no "200 Connection established" */
    uint64_t             injected;       /* secrets whose values went out (audit: names) */
    uint64_t             redact_mask;    /* secrets scrubbed from the response */
    uint64_t             body_mask;      /* secrets substituted in the request body */
    const char          *secret_refused; /* name of the secret a refusal is about */
    struct sec_stream   *redactor;       /* response body scrubber; owned */
    struct sec_stream   *body_sub;       /* request body substitution; owned */
    const char          *resp_refusal;   /* why the response head was refused (502 reason) */
    const char          *resp_refusal_detail;
    struct px_inflate   *inflater;        /* its decoder (gzip/deflate), feeding the redactor */
    struct px_chain      req_chain;       /* request body: substitute or scan, frame */
    struct px_chain      resp_chain;      /* response body: inflate, redact, frame */
    int                  resp_head_ready; /* the codec paused at a response head */
    int                  resp_nobody;     /* that head's message has no body */
    int                  resp_scrub;      /* that head carries a form of a secret */
    int                  secret_host;     /* the destination is in some secret's scope */
    char                 sni[PX_SNI_HOST_BYTES]; /* a tunnel's ClientHello SNI (opaque flows) */
    /* A websocket after its 101 (px_ws.c): the codec, its two chains,
     * the substitute stream toward the origin, bytes the origin sent
     * right after the 101. */
    struct px_ws      *ws;
    struct px_chain    ws_up_chain, ws_down_chain;
    struct sec_stream *ws_sub;
    uint64_t           ws_mask; /* secrets substituted in frames toward the origin */
    int                ws_scan; /* the upgrade goes to a secret's host */
    struct al_dbuf     ws_early;
    const char        *resp_abort;   /* why the response was cut off mid-body */
    const char        *body_refusal; /* a placeholder in the body that may not go there */
    int                hold_up;      /* request held back until its body is scanned */
    uint64_t           inject_only;  /* the allowing rule's "inject" list, as a mask */
    /* Not cleared between keep-alive requests (px_exch_reset stops here):
     * the big buffers are reused, addrs is valid only up to naddrs. */
    struct px_dns_result addrs;
    struct px_msg        req, resp;
    /* A plain upstream kept on the connection between requests (up_kept,
     * not mitm): its pool key and peer, for reuse or for parking it. */
    char                    kept_key[PX_HOST_MAX + 8];
    struct sockaddr_storage kept_peer;
};

struct px_conn {
    struct px_refusal       refusal;   /* the last AL_DECLINED's, read by the machine */
    const char             *close_why; /* the last PX_NEXT_CLOSE's, read by the machine */
    uint64_t                id;        /* printed in every log line */
    struct px_worker       *worker;
    struct px_conf         *conf;
    struct px_conn         *prev, *next;
    enum px_state           state; /* written only by px_conn_set_state() */
    unsigned                refs;
    unsigned                closing : 1, draining : 1, close_after_flush : 1, head_started : 1;
    unsigned                aud_waiting : 1; /* a strict begin's commit notice is due */
    struct px_aud_done      aud_done;        /* that notice (filled on the writer thread) */
    struct px_head_scan     head_scan;       /* raw head checks across reads */
    enum px_listen_mode     mode;
    struct px_half          cl, up;
    ev_timer                timer;
    ev_tstamp               phase_start, last_activity;
    struct sockaddr_storage peer;
    char                   *cin; /* client bytes not yet consumed by the parser */
    size_t                  cin_len;
    size_t                  head_bytes;
    unsigned                nreqs; /* exchanges completed on this connection */
    llhttp_t                rq, rs;
    struct px_exch         *x;
    struct aud_record      *trec;     /* an open tunnel's row, completed at close */
    struct sockaddr_storage orig_dst; /* transparent: SO_ORIGINAL_DST */
    /* Interception: the tunnel's target and identity, for every inner request. */
    int              mitm, up_kept;
    int              ws_closing; /* close frames queued: flush both sides, then close */
    struct px_target mitm_target;
    char             tun_sandbox[POL_SANDBOX_MAX_BYTES + 1];
    char             tun_session[POL_TAG_MAX_BYTES + 1];
    char             tun_tool_call[POL_TAG_MAX_BYTES + 1];
    int              has_orig_dst;
    uint64_t         tun_up, tun_down;
    int64_t          tun_start_us;
};

#endif
