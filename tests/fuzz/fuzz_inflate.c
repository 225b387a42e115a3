/*
 * fuzz_inflate.c - px_inflate (gzip/deflate decoding of responses that are
 * scanned for secrets), fed in pieces as upstream reads would.
 *
 * Input: byte 0 = coding (even: gzip, odd: deflate); byte 1 = piece size
 * (1 + b % 64, or the whole input in one piece when b >= 192); the rest =
 * the response body.
 *
 * Oracle: no crash, no hang; the sink only sees non-empty pieces; one feed
 * never yields more than its inflation limit (plus one output buffer)
 * before it is refused; after an error nothing more is fed (as in the proxy).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "common/common.h"
#include "proxy/px_inflate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct fz_sink {
    uint64_t got;
};

static int
fz_sink(void *arg, const char *p, size_t n)
{
    struct fz_sink *s = arg;

    (void)p;
    if (n == 0)
        abort();
    s->got += n;
    return AL_OK;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct px_inflate *f;
    const char        *why = NULL;
    size_t             piece, off = 2;
    int                rc = AL_OK;

    if (size < 2)
        return 0;
    f = px_inflate_new(data[0] & 1 ? PX_INFLATE_DEFLATE : PX_INFLATE_GZIP);
    if (f == NULL)
        return 0;
    piece = data[1] >= 192 ? size : 1 + data[1] % 64;
    while (off < size && rc == AL_OK) {
        size_t         n = size - off < piece ? size - off : piece;
        struct fz_sink s = {0};
        uint64_t       limit = (uint64_t)n * PX_INFLATE_RATIO_MAX;

        if (limit < PX_INFLATE_BURST_MIN)
            limit = PX_INFLATE_BURST_MIN;
        rc = px_inflate_feed(f, (const char *)data + off, n, fz_sink, &s, &why);
        if (s.got > limit + 16384)
            abort();
        if (rc != AL_OK && why == NULL)
            abort();
        off += n;
    }
    if (rc == AL_OK && px_inflate_finish(f, &why) != AL_OK && why == NULL)
        abort();
    px_inflate_free(f);
    return 0;
}
