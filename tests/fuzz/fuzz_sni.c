/*
 * fuzz_sni.c - px_sni_parse / px_sni_looks_tls / px_http_looks_like_request
 * on hostile peeked bytes.
 *
 * Oracles beyond the sanitizers: on AL_OK the host is NUL-terminated, fits
 * hostsz and holds only 0x21..0x7e; a prefix of a hello that parses AL_OK is
 * never AL_ERROR / AL_DECLINED (a peek that arrives in two segments must not
 * be refused); a small hostsz is honoured.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "proxy/px_sni.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
fz_check_host(const char *host, size_t hostsz)
{
    size_t n = strnlen(host, hostsz);

    if (n >= hostsz)
        abort(); /* not NUL-terminated inside hostsz */
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)host[i] < 0x21 || (unsigned char)host[i] > 0x7e)
            abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char host[PX_SNI_HOST_BYTES];
    char small[8];
    int  h2 = -1, rc;

    (void)px_sni_looks_tls(data, size);
    (void)px_http_looks_like_request(data, size);

    memset(host, 'X', sizeof(host));
    rc = px_sni_parse(data, size, host, sizeof(host), &h2);
    if (rc == AL_OK) {
        fz_check_host(host, sizeof(host));
        if (h2 != 0 && h2 != 1)
            abort();
        /* Every shorter prefix is AL_AGAIN or (bytes after the hello) AL_OK. */
        for (size_t cut = 1; cut < size && cut < 64; cut++) {
            int prc = px_sni_parse(data, size - cut, host, sizeof(host), NULL);

            if (prc != AL_OK && prc != AL_AGAIN)
                abort();
        }
        for (size_t n = 0; n < size; n += 1 + n / 2) {
            int prc = px_sni_parse(data, n, host, sizeof(host), NULL);

            if (prc != AL_OK && prc != AL_AGAIN)
                abort();
        }
    } else if (rc != AL_AGAIN && rc != AL_DECLINED && rc != AL_ERROR) {
        abort();
    }
    if (rc == AL_AGAIN && size >= PX_SNI_MAX_PEEK_BYTES)
        abort();

    /* A small host buffer: AL_OK only with a name that fits. */
    memset(small, 'X', sizeof(small));
    rc = px_sni_parse(data, size, small, sizeof(small), NULL);
    if (rc == AL_OK)
        fz_check_host(small, sizeof(small));
    return 0;
}
