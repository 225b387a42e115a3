/*
 * px_http.h - parsed HTTP/1.1 message heads and their re-serialisation.
 *
 * A head is collected from llhttp callbacks into one capped buffer (the
 * header_bytes limit) as NUL-terminated strings addressed by offsets, so a
 * token split across reads costs nothing special. What goes on the wire is
 * always re-built from this parsed form, never the raw bytes.
 */
#ifndef PX_HTTP_H
#define PX_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include <llhttp.h>

#include "common.h"

#define PX_HTTP_MAX_HEADERS 256
#define PX_HTTP_FIRST_HEADERS 24 /* slots allocated on the first header */

/* The header names airlock itself acts on, told apart once as each name
 * ends (px_msg_end_piece), so the per-message passes over the headers
 * (hop-by-hop, framing, lookups) compare a byte, not strings. */
enum px_hdr_id {
    PX_H_OTHER = 0,
    /* hop-by-hop: PX_H_CONNECTION .. PX_H_HTTP2_SETTINGS */
    PX_H_CONNECTION,
    PX_H_PROXY_CONNECTION,
    PX_H_PROXY_AUTHORIZATION,
    PX_H_PROXY_AUTHENTICATE,
    PX_H_KEEP_ALIVE,
    PX_H_TE,
    PX_H_TRAILER,
    PX_H_TRANSFER_ENCODING,
    PX_H_UPGRADE,
    PX_H_HTTP2_SETTINGS,
    PX_H_CONTENT_LENGTH,
    PX_H_CONTENT_ENCODING,
    PX_H_HOST,
    PX_H_EXPECT,
};
/* PX_H_OTHER for any other name; case-insensitive. */
enum px_hdr_id px_hdr_classify(const char *name, size_t len);

struct px_hdr {
    uint32_t name, name_len; /* offsets into px_msg.buf */
    uint32_t val, val_len;
    uint8_t  id;       /* enum px_hdr_id of the name */
    unsigned drop : 1; /* not forwarded (hop-by-hop or replaced) */
};

enum px_msg_piece {
    PX_PIECE_NONE = 0,
    PX_PIECE_URL,
    PX_PIECE_STATUS,
    PX_PIECE_FIELD,
    PX_PIECE_VALUE
};

struct px_msg {
    struct al_dbuf    buf; /* capped at header_bytes */
    uint32_t          url, url_len;
    uint32_t          status_text, status_text_len;
    struct px_hdr    *hdrs; /* grown on demand up to PX_HTTP_MAX_HEADERS */
    int               hdrs_cap;
    int               nhdrs;
    enum px_msg_piece piece;   /* what the last data callback appended to */
    int               too_big; /* the head went over the cap */
    int               bad;     /* a header carried a forbidden byte */
};

void px_msg_init(struct px_msg *m, size_t cap);
void px_msg_reset(struct px_msg *m);
void px_msg_free(struct px_msg *m);
/* llhttp data callbacks land here; they return 0 or -1 (sets too_big/bad). */
int px_msg_add(struct px_msg *m, enum px_msg_piece piece, const char *at, size_t len);
/* Terminates the piece in progress (call from the *_complete callbacks). */
int px_msg_end_piece(struct px_msg *m);

/* al_dbuf_add, inline when the piece fits: a head is built from dozens of
 * short pieces a request; growing (and the cap) is al_dbuf_add's. */
static inline int
px_dbuf_put(struct al_dbuf *b, const void *p, size_t n)
{
    if (n <= b->max - b->len && b->len + n < b->cap) {
        __builtin_memcpy(b->data + b->len, p, n);
        b->len += n;
        b->data[b->len] = '\0';
        return AL_OK;
    }
    return al_dbuf_add(b, p, n);
}

static inline const char *
px_msg_str(const struct px_msg *m, uint32_t off)
{
    return m->buf.data + off;
}

/* Index of the first header called `name` (case-insensitive) from `from`, or -1. */
int px_msg_find(const struct px_msg *m, const char *name, int from);
/* The same for a name told apart at parse time (enum px_hdr_id, not OTHER). */
int px_msg_find_id(const struct px_msg *m, enum px_hdr_id id, int from);
/* Marks hop-by-hop headers as dropped: the fixed list and every name the
 * Connection headers list. keep_upgrade keeps Upgrade + "Connection: upgrade"
 * (websocket). Returns AL_OK. */
void px_msg_drop_hop_by_hop(struct px_msg *m, int keep_upgrade);
/* 1 when the message has no Transfer-Encoding or its only coding is one
 * "chunked" (over all Transfer-Encoding headers), else 0: gzip, deflate,
 * compress, chunked twice, anything unknown. A proxy that re-frames the
 * body must not pass on what it cannot undo. */
int px_msg_te_chunked_only(const struct px_msg *m);
/* Does any Connection header list `token`? */
int px_msg_connection_has(const struct px_msg *m, const char *token);

/*
 * Message framing. What airlock writes is always generated from the parser's
 * state (llhttp's flags and parsed length), never copied from a peer's
 * Content-Length or Transfer-Encoding header: those are dropped from every
 * head (px_msg_drop_framing) and px_framing_write adds airlock's own. A body
 * framed one way by the peer and another way by airlock can't become a
 * second message (request smuggling, response splitting).
 */
enum px_body_kind {
    PX_BODY_NONE = 0, /* the message ends with its head */
    PX_BODY_LENGTH,   /* Content-Length: len */
    PX_BODY_CHUNKED,  /* Transfer-Encoding: chunked */
    PX_BODY_CLOSE     /* read until the connection closes (responses only) */
};

struct px_framing {
    enum px_body_kind kind;
    uint64_t          len; /* PX_BODY_LENGTH */
};

/* The framing llhttp parsed for a head it just completed (call from or right
 * after on_headers_complete: content_length counts down as the body is
 * read). nobody: the message has no body whatever its head says (HEAD
 * responses, 1xx, 204, 304). */
struct px_framing px_framing_parsed(const llhttp_t *p, int nobody);
/* Appends "Content-Length: N\r\n" or "Transfer-Encoding: chunked\r\n"
 * (nothing for NONE and CLOSE). */
int px_framing_write(const struct px_framing *f, struct al_dbuf *out);
/* One piece of body on the wire: as is, or as one chunk. */
int px_body_frame(struct al_bufq *q, int chunked, const char *at, size_t len);
/* Marks every Content-Length and Transfer-Encoding header as dropped. */
void px_msg_drop_framing(struct px_msg *m);
/*
 * The first header name the Connection headers nominate that airlock itself
 * relies on (Host, Content-Length, Transfer-Encoding, Content-Encoding,
 * Expect, the X-Airlock-* tags), or NULL. Dropping such a header as
 * hop-by-hop would change how the message is framed, routed or scanned.
 */
const char *px_msg_connection_forbidden(const struct px_msg *m);
/* The content coding of a message over every Content-Encoding header and
 * list element (identity ignored): 0 none, PX_INFLATE_GZIP / _DEFLATE when
 * exactly one coding airlock can decode, -1 anything else (unknown, or more
 * than one coding, e.g. "identity" then "gzip, br" in two headers). */
int px_msg_content_coding(const struct px_msg *m);

/* Appends "NAME: VALUE\r\n" for every kept header to out. */
int px_msg_write_headers(const struct px_msg *m, struct al_dbuf *out);

/*
 * Raw-byte checks on a request head that llhttp 8 lets through even in
 * strict mode: obs-fold lines (LF followed by SP or HT, a classic smuggling
 * shape) and a sloppy request line (leading, doubled or tab whitespace).
 * Feed the head bytes in order; st starts zeroed for each head. Returns NULL
 * when fine so far, or a short description of the problem.
 */
struct px_head_scan {
    int line; /* 0 while in the request line */
    int prev; /* previous byte, -1 at the start */
};
const char *px_http_head_scan(struct px_head_scan *st, const char *p, size_t n);

/* Is every byte a header-name token character (RFC 9110 tchar)? */
int px_http_is_token(const char *p, size_t n);
/* 1 when p[0..n) holds a CR, LF or NUL. */
int px_http_has_crlfnul(const char *p, size_t n);

/* A complete error answer with X-Airlock-Reason, a short text body and
 * Connection: close. */
int px_http_error(struct al_dbuf *out, int status, const char *reason, const char *detail);
/* Same, with extra header lines (each ending in CRLF) or NULL. */
int px_http_error_ex(struct al_dbuf *out, int status, const char *reason, const char *detail,
                     const char *extra_headers);
const char *px_http_status_text(int status);

#endif
