/*
 * px_inflate.h - streaming gzip/deflate decompression for responses that
 * are scanned for secrets (px_conn.c). See px_inflate.c.
 */
#ifndef PX_INFLATE_H
#define PX_INFLATE_H

#include <stddef.h>
#include <stdint.h>

#define PX_INFLATE_GZIP 1
#define PX_INFLATE_DEFLATE 2
/* One read may inflate to at most this many times its size (and at least
 * PX_INFLATE_BURST_MIN bytes): beyond, the response is cut off. */
#define PX_INFLATE_RATIO_MAX 256
#define PX_INFLATE_BURST_MIN (1u << 20)

struct px_inflate;
typedef int (*px_inflate_sink)(void *arg, const char *p, size_t n);

/* PX_INFLATE_GZIP / _DEFLATE for a Content-Encoding value airlock can
 * decode (one coding, no list), else 0. */
int                px_inflate_coding(const char *v, size_t n);
struct px_inflate *px_inflate_new(int coding);
void               px_inflate_free(struct px_inflate *f);
/* Inflates in[0..n) and hands the output to sink in pieces. AL_OK, or
 * AL_ERROR with *why (corrupt data, inflation limit, sink failure). */
int px_inflate_feed(struct px_inflate *f, const char *in, size_t n, px_inflate_sink sink, void *arg,
                    const char **why);
/* At the end of the body: AL_ERROR (*why) when the stream stopped short. */
int px_inflate_finish(struct px_inflate *f, const char **why);

#endif
