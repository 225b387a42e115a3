/*
 * px_exch.c - the lifecycle of an exchange (one request and its answer):
 * made on the first head of a connection, reset between keep-alive
 * requests (the big buffers are kept), freed when the connection becomes a
 * tunnel, idles or closes.
 */
#include "px_inflate.h"
#include "px_phase.h"

#include <stddef.h>
#include <string.h>

struct px_exch *
px_exch_new(size_t header_bytes)
{
    struct px_exch *x = al_calloc(1, sizeof(*x));

    if (x == NULL)
        return NULL;
    px_msg_init(&x->req, header_bytes);
    px_msg_init(&x->resp, header_bytes);
    return x;
}

/* Frees what one request owns (not the head buffers, kept for the next). */
static void
px_exch_drop_owned(struct px_exch *x)
{
    al_safefree(x->fwd_path);
    aud_record_free(x->rec);
    aud_row_put(x->aud_row); /* never completed: the row stays pending */
    sec_stream_free(x->redactor);
    sec_stream_free(x->body_sub);
    px_inflate_free(x->inflater);
    sec_stream_free(x->ws_sub);
    px_ws_free(x->ws);
    al_dbuf_free(&x->ws_early);
}

void
px_exch_free(struct px_exch *x)
{
    if (x == NULL)
        return;
    px_exch_drop_owned(x);
    px_msg_free(&x->req);
    px_msg_free(&x->resp);
    al_free(x);
}

void
px_exch_reset(struct px_exch *x, size_t header_bytes)
{
    px_exch_drop_owned(x);
    memset(x, 0, offsetof(struct px_exch, addrs));
    x->addrs.naddrs = 0;
    px_msg_reset(&x->req);
    px_msg_reset(&x->resp);
    x->req.buf.max = header_bytes;
    x->resp.buf.max = header_bytes;
}
