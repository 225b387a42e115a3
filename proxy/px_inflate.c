/*
 * px_inflate.c - streaming decompression of a response that must be
 * scanned for secrets (gzip, x-gzip, deflate) although identity was asked
 * for. The plain bytes go to a sink piece by piece; nothing is held beyond
 * one output buffer. A response that inflates far beyond its compressed
 * size in one read (a decompression bomb) is cut off: the client reads
 * slower than zlib writes, and the proxy must not hold the difference.
 */
#include "px_inflate.h"

#include <zlib.h>

#include "common.h"

struct px_inflate {
    z_stream z;
    int      members; /* gzip: another member may follow one that ended */
    int      ended;   /* the (last) member ended */
    uint64_t in_total;
};

/* "gzip", "x-gzip" or "deflate", alone (the codings airlock can scan). */
int
px_inflate_coding(const char *v, size_t n)
{
    while (n > 0 && (*v == ' ' || *v == '\t')) {
        v++;
        n--;
    }
    while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    if (al_strcaseeq_n(v, n, "gzip") || al_strcaseeq_n(v, n, "x-gzip"))
        return PX_INFLATE_GZIP;
    if (al_strcaseeq_n(v, n, "deflate"))
        return PX_INFLATE_DEFLATE;
    return 0;
}

struct px_inflate *
px_inflate_new(int coding)
{
    struct px_inflate *f = al_calloc(1, sizeof(*f));

    if (f == NULL)
        return NULL;
    /* gzip: 16 + 15; deflate is the zlib format (RFC 9110 8.4.1.2) */
    if (inflateInit2(&f->z, coding == PX_INFLATE_GZIP ? 16 + MAX_WBITS : MAX_WBITS) != Z_OK) {
        al_free(f);
        return NULL;
    }
    f->members = coding == PX_INFLATE_GZIP;
    return f;
}

void
px_inflate_free(struct px_inflate *f)
{
    if (f == NULL)
        return;
    inflateEnd(&f->z);
    al_free(f);
}

int
px_inflate_feed(struct px_inflate *f, const char *in, size_t n, px_inflate_sink sink, void *arg,
                const char **why)
{
    unsigned char out[16384];
    uint64_t      burst = 0, limit = (uint64_t)n * PX_INFLATE_RATIO_MAX;

    if (limit < PX_INFLATE_BURST_MIN)
        limit = PX_INFLATE_BURST_MIN;
    f->z.next_in = (unsigned char *)(uintptr_t)in;
    f->z.avail_in = (uInt)n;
    f->in_total += n;
    for (;;) {
        int    zr;
        size_t got;

        if (f->ended) {
            if (f->z.avail_in == 0)
                break;
            /* gzip allows several members back to back; after a zlib
             * stream (deflate) nothing may follow */
            if (!f->members || inflateReset(&f->z) != Z_OK)
                goto corrupt;
            f->ended = 0;
        }
        f->z.next_out = out;
        f->z.avail_out = sizeof(out);
        zr = inflate(&f->z, Z_NO_FLUSH);
        got = sizeof(out) - f->z.avail_out;
        if (zr != Z_OK && zr != Z_STREAM_END && zr != Z_BUF_ERROR)
            goto corrupt;
        burst += got;
        if (burst > limit) {
            *why = "compressed response inflates beyond the limit";
            return AL_ERROR;
        }
        if (got > 0 && sink(arg, (const char *)out, got) != AL_OK) {
            *why = "no memory";
            return AL_ERROR;
        }
        if (zr == Z_STREAM_END) {
            f->ended = 1;
            continue;
        }
        if (f->z.avail_out > 0) { /* all output for the input so far is out */
            if (f->z.avail_in > 0 && got == 0)
                goto corrupt; /* no progress */
            if (f->z.avail_in == 0)
                break;
        }
    }
    return AL_OK;
corrupt:
    *why = "corrupt compressed response";
    return AL_ERROR;
}

int
px_inflate_finish(struct px_inflate *f, const char **why)
{
    if (f->in_total == 0 || f->ended)
        return AL_OK; /* an empty body is a valid empty representation */
    *why = "truncated compressed response";
    return AL_ERROR;
}
