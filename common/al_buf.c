/*
 * al_buf.c - the two buffer types of the tree.
 *
 * al_dbuf: one contiguous, NUL-terminated buffer with a hard cap chosen at
 * init; going over the cap is AL_DECLINED so callers map it to 413/431.
 *
 * al_bufq: a chain of fixed 16 KiB chunks used on the data path. `max` is a
 * high watermark, not a hard limit: the producer checks al_bufq_full() before
 * reading more from its socket, so memory per direction stays bounded by
 * max + one read.
 */
#include "common.h"

#include <stdio.h>
#include <string.h>

void
al_dbuf_init(struct al_dbuf *b, size_t max)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max;
}

int
al_dbuf_add(struct al_dbuf *b, const void *p, size_t n)
{
    if (n > b->max - b->len)
        return AL_DECLINED;
    if (b->len + n + 1 > b->cap) {
        size_t ncap = b->cap ? b->cap : 256;
        char  *nd;

        while (ncap < b->len + n + 1)
            ncap *= 2;
        if (ncap > b->max + 1)
            ncap = b->max + 1;
        nd = al_realloc(b->data, ncap);
        if (nd == NULL)
            return AL_ERROR;
        b->data = nd;
        b->cap = ncap;
    }
    if (n > 0)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return AL_OK;
}

int
al_dbuf_adds(struct al_dbuf *b, const char *s)
{
    return al_dbuf_add(b, s, strlen(s));
}

int
al_dbuf_addf(struct al_dbuf *b, const char *fmt, ...)
{
    char    tmp[1024];
    char   *big = NULL;
    va_list ap;
    int     n, rc;

    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0)
        return AL_ERROR;
    if ((size_t)n < sizeof(tmp))
        return al_dbuf_add(b, tmp, (size_t)n);
    big = al_malloc((size_t)n + 1);
    if (big == NULL)
        return AL_ERROR;
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    rc = al_dbuf_add(b, big, (size_t)n);
    al_free(big);
    return rc;
}

void
al_dbuf_reset(struct al_dbuf *b)
{
    b->len = 0;
    if (b->data != NULL)
        b->data[0] = '\0';
}

void
al_dbuf_free(struct al_dbuf *b)
{
    al_safefree(b->data);
    b->len = 0;
    b->cap = 0;
}

void
al_bufq_init(struct al_bufq *q, size_t max)
{
    q->head = q->tail = NULL;
    q->len = 0;
    q->max = max;
    q->sensitive = 0;
}

static struct al_chunk *
al_bufq_add_chunk(struct al_bufq *q)
{
    struct al_chunk *c = al_malloc(sizeof(*c));

    if (c == NULL)
        return NULL;
    c->next = NULL;
    c->r = c->w = 0;
    if (q->tail != NULL)
        q->tail->next = c;
    else
        q->head = c;
    q->tail = c;
    return c;
}

char *
al_bufq_reserve(struct al_bufq *q, size_t *n)
{
    struct al_chunk *c = q->tail;

    if (c == NULL || c->w == AL_BUFQ_CHUNK_BYTES) {
        c = al_bufq_add_chunk(q);
        if (c == NULL) {
            *n = 0;
            return NULL;
        }
    }
    *n = AL_BUFQ_CHUNK_BYTES - c->w;
    return c->data + c->w;
}

void
al_bufq_commit(struct al_bufq *q, size_t n)
{
    if (n == 0 || q->tail == NULL)
        return;
    q->tail->w += n;
    q->len += n;
}

int
al_bufq_write(struct al_bufq *q, const void *p, size_t n)
{
    const char *s = p;

    while (n > 0) {
        size_t room;
        char  *dst = al_bufq_reserve(q, &room);

        if (dst == NULL)
            return AL_ERROR;
        if (room > n)
            room = n;
        memcpy(dst, s, room);
        al_bufq_commit(q, room);
        s += room;
        n -= room;
    }
    return AL_OK;
}

const char *
al_bufq_peek(const struct al_bufq *q, size_t *n)
{
    const struct al_chunk *c = q->head;

    while (c != NULL && c->r == c->w)
        c = c->next;
    if (c == NULL) {
        *n = 0;
        return NULL;
    }
    *n = c->w - c->r;
    return c->data + c->r;
}

void
al_bufq_skip(struct al_bufq *q, size_t n)
{
    while (n > 0 && q->head != NULL) {
        struct al_chunk *c = q->head;
        size_t           avail = c->w - c->r;
        size_t           take = avail < n ? avail : n;

        c->r += take;
        q->len -= take;
        n -= take;
        if (c->r == c->w) {
            /* An empty queue holds no memory: idle connections and tunnels
             * cost their struct only. */
            q->head = c->next;
            if (c == q->tail)
                q->tail = NULL;
            if (q->sensitive) /* bytes are only ever written below w */
                explicit_bzero(c->data, c->w);
            al_free(c);
        }
    }
}

int
al_bufq_full(const struct al_bufq *q)
{
    return q->len >= q->max;
}

size_t
al_bufq_len(const struct al_bufq *q)
{
    return q->len;
}

void
al_bufq_free(struct al_bufq *q)
{
    struct al_chunk *c = q->head;

    while (c != NULL) {
        struct al_chunk *next = c->next;

        if (q->sensitive)
            explicit_bzero(c->data, c->w);
        al_free(c);
        c = next;
    }
    q->head = q->tail = NULL;
    q->len = 0;
}

void
al_errs_init(struct al_errs *e)
{
    al_dbuf_init(&e->text, 1 << 20);
    e->count = 0;
    e->warnings = 0;
}

static void
al_errs_vadd(struct al_errs *e, const char *prefix, const char *fmt, va_list ap)
{
    char line[1024];

    vsnprintf(line, sizeof(line), fmt, ap);
    (void)al_dbuf_adds(&e->text, prefix);
    (void)al_dbuf_adds(&e->text, line);
    (void)al_dbuf_adds(&e->text, "\n");
}

void
al_errs_add(struct al_errs *e, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    al_errs_vadd(e, "", fmt, ap);
    va_end(ap);
    e->count++;
}

void
al_errs_warn(struct al_errs *e, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    al_errs_vadd(e, "warning: ", fmt, ap);
    va_end(ap);
    e->warnings++;
}

void
al_errs_free(struct al_errs *e)
{
    al_dbuf_free(&e->text);
    e->count = 0;
    e->warnings = 0;
}
