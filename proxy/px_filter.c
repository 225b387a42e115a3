/*
 * px_filter.c - body filter chains (see struct px_chain in px_exch.h): the
 * runner and the last step, framing onto the destination queue. The
 * filters themselves live with what they know: inflate, redact and
 * substitute in px_inject.c.
 */
#include "px_phase.h"

void
px_chain_init(struct px_chain *ch, struct px_conn *c)
{
    ch->n = 0;
    ch->conn = c;
    ch->out = NULL;
    ch->chunked = 0;
}

int
px_chain_add(struct px_chain *ch, px_filter_fn fn)
{
    if (ch->n >= PX_CHAIN_MAX)
        return AL_ERROR;
    ch->fn[ch->n++] = fn;
    return AL_OK;
}

int
px_chain_feed(struct px_chain *ch, int i, const char *p, size_t n, int last)
{
    if (i < ch->n)
        return ch->fn[i](ch, i, p, n, last);
    if (ch->out == NULL)
        return AL_ERROR; /* a body before its head was written: a bug */
    if (n > 0 && px_body_frame(ch->out, ch->chunked, p, n) != AL_OK)
        return AL_ERROR;
    if (last && ch->chunked)
        return al_bufq_write(ch->out, "0\r\n\r\n", 5);
    return AL_OK;
}
