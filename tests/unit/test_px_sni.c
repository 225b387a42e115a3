/*
 * test_px_sni.c - ClientHello parsing and first-bytes classification
 * (proxy/px_sni.c).
 *
 * The ClientHellos are real: OpenSSL's client writes them into a memory BIO
 * when the test runs (with and without SNI, with ALPN, TLS 1.2 only, padded).
 * Each is then fed as every prefix (a byte-at-a-time arrival must read as
 * AL_AGAIN until the last byte), re-framed into two and three TLS records
 * at every cut, corrupted by hand in the ways a hostile client would, and
 * put through 100k random mutations. Every input is copied into a heap
 * block of exactly its length, so under ASan any read past `len` fails.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/bio.h>
#include <openssl/ssl.h>

#include "common/common.h"
#include "proxy/px_sni.h"

#define T_MAX_HELLO 8192
#define T_MUTATIONS 100000

struct t_hello {
    unsigned char b[T_MAX_HELLO];
    size_t        len;
};

/* Lets OpenSSL's client write its first flight and captures it. */
static void
t_make_hello(struct t_hello *h, const char *sni, const char *alpn, size_t alpnlen, int tls12,
             int pad)
{
    SSL_CTX *ctx;
    SSL     *ssl;
    BIO     *rbio, *wbio;
    char    *data;
    long     n;

    ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(ctx);
    if (tls12)
        assert_int_equal(SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION), 1);
    if (pad)
        SSL_CTX_set_options(ctx, SSL_OP_TLSEXT_PADDING);
    ssl = SSL_new(ctx);
    assert_non_null(ssl);
    rbio = BIO_new(BIO_s_mem());
    wbio = BIO_new(BIO_s_mem());
    assert_non_null(rbio);
    assert_non_null(wbio);
    SSL_set_bio(ssl, rbio, wbio);
    if (sni != NULL)
        assert_int_equal(SSL_set_tlsext_host_name(ssl, sni), 1);
    if (alpn != NULL)
        assert_int_equal(SSL_set_alpn_protos(ssl, (const unsigned char *)alpn, (unsigned)alpnlen),
                         0);
    assert_int_equal(SSL_connect(ssl), -1);
    assert_int_equal(SSL_get_error(ssl, -1), SSL_ERROR_WANT_READ);
    n = BIO_get_mem_data(wbio, &data);
    assert_true(n > 0 && (size_t)n <= sizeof(h->b));
    memcpy(h->b, data, (size_t)n);
    h->len = (size_t)n;
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    /* OpenSSL writes the hello as one record; the re-framing relies on it */
    assert_int_equal(h->b[0], 0x16);
    assert_int_equal(((size_t)h->b[3] << 8 | h->b[4]) + 5, h->len);
}

/* Parses an exact-size heap copy of buf[0..len). */
static int
t_parse(const unsigned char *buf, size_t len, char *host, size_t hostsz, int *h2)
{
    unsigned char *copy = malloc(len > 0 ? len : 1);
    int            rc;

    assert_non_null(copy);
    if (len > 0)
        memcpy(copy, buf, len);
    rc = px_sni_parse(copy, len, host, hostsz, h2);
    free(copy);
    return rc;
}

/* Re-frames a one-record hello into records cut at handshake offsets
 * cuts[0] < cuts[1] < ... (each inside the handshake payload). */
static void
t_reframe(const struct t_hello *in, const size_t *cuts, size_t ncuts, struct t_hello *out)
{
    const unsigned char *hs = in->b + 5;
    size_t               hslen = in->len - 5, from = 0, i, to, n;

    out->len = 0;
    for (i = 0; i <= ncuts; i++) {
        to = i < ncuts ? cuts[i] : hslen;
        assert_true(to > from && to <= hslen);
        n = to - from;
        assert_true(out->len + 5 + n <= sizeof(out->b));
        out->b[out->len++] = 0x16;
        out->b[out->len++] = in->b[1];
        out->b[out->len++] = in->b[2];
        out->b[out->len++] = (unsigned char)(n >> 8);
        out->b[out->len++] = (unsigned char)n;
        memcpy(out->b + out->len, hs + from, n);
        out->len += n;
        from = to;
    }
}

/* Every strict prefix is AL_AGAIN, the whole is AL_OK with `want`. */
static void
t_check_prefixes(const struct t_hello *h, const char *want, int want_h2)
{
    char   host[PX_SNI_HOST_BYTES];
    size_t k;
    int    h2 = -1;

    for (k = 0; k < h->len; k++) {
        if (t_parse(h->b, k, host, sizeof(host), &h2) != AL_AGAIN)
            fail_msg("prefix of %zu/%zu bytes: want AL_AGAIN", k, h->len);
    }
    memset(host, 'X', sizeof(host));
    assert_int_equal(t_parse(h->b, h->len, host, sizeof(host), &h2), AL_OK);
    assert_string_equal(host, want);
    assert_int_equal(h2, want_h2);
}

static void
t_check_ok(const struct t_hello *h, const char *want, int want_h2)
{
    char host[PX_SNI_HOST_BYTES];
    int  h2 = -1;

    assert_int_equal(t_parse(h->b, h->len, host, sizeof(host), &h2), AL_OK);
    assert_string_equal(host, want);
    assert_int_equal(h2, want_h2);
}

static int
t_rc(const struct t_hello *h)
{
    char host[PX_SNI_HOST_BYTES];
    int  h2;

    return t_parse(h->b, h->len, host, sizeof(host), &h2);
}

/* Writes v big-endian into `width` bytes. */
static void
t_put(unsigned char *p, size_t width, size_t v)
{
    while (width-- > 0) {
        p[width] = (unsigned char)v;
        v >>= 8;
    }
}

/* Offset of `name` inside the hello (it occurs once). */
static size_t
t_find(const struct t_hello *h, const char *name)
{
    size_t n = strlen(name), i;

    for (i = 0; i + n <= h->len; i++) {
        if (memcmp(h->b + i, name, n) == 0)
            return i;
    }
    fail_msg("%s not in hello", name);
    return 0;
}

static const char t_alpn_h2[] = "\x02h2";
static const char t_alpn_both[] = "\x02h2\x08http/1.1";
static const char t_alpn_h1[] = "\x08http/1.1";

/* ---- real ClientHellos --------------------------------------------------- */

static void
test_sni_variants(void **state)
{
    struct t_hello h;
    char           host[PX_SNI_HOST_BYTES];
    char           longname[254];
    size_t         i;

    (void)state;
    t_make_hello(&h, "api.example.test", NULL, 0, 0, 0);
    t_check_ok(&h, "api.example.test", 0);
    t_make_hello(&h, NULL, NULL, 0, 0, 0);
    t_check_ok(&h, "", 0);
    t_make_hello(&h, "api.example.test", t_alpn_h2, sizeof(t_alpn_h2) - 1, 0, 0);
    t_check_ok(&h, "api.example.test", 1);
    t_make_hello(&h, "api.example.test", t_alpn_both, sizeof(t_alpn_both) - 1, 0, 0);
    t_check_ok(&h, "api.example.test", 0);
    t_make_hello(&h, "api.example.test", t_alpn_h1, sizeof(t_alpn_h1) - 1, 0, 0);
    t_check_ok(&h, "api.example.test", 0);
    t_make_hello(&h, NULL, t_alpn_h2, sizeof(t_alpn_h2) - 1, 0, 0);
    t_check_ok(&h, "", 1);
    t_make_hello(&h, "Mixed.Case.Example", NULL, 0, 1, 0);
    t_check_ok(&h, "Mixed.Case.Example", 0); /* as sent; normalising is px_url's job */
    t_make_hello(&h, "padded.example", t_alpn_h2, sizeof(t_alpn_h2) - 1, 1, 1);
    t_check_ok(&h, "padded.example", 1);

    /* 253-byte name: four labels of 63 */
    for (i = 0; i < 253; i++)
        longname[i] = (i % 64 == 63) ? '.' : 'a';
    longname[253] = '\0';
    t_make_hello(&h, longname, NULL, 0, 0, 0);
    t_check_ok(&h, longname, 0);
    /* host buffer one byte too small, then exactly big enough */
    assert_int_equal(t_parse(h.b, h.len, host, 253, NULL), AL_ERROR);
    assert_int_equal(t_parse(h.b, h.len, host, 254, NULL), AL_OK);
    assert_string_equal(host, longname);

    /* bytes after the hello (a second flight, early data) are ignored */
    t_make_hello(&h, "api.example.test", NULL, 0, 0, 0);
    memcpy(h.b + h.len, "\x17\x03\x03\x00\x02zz", 7);
    h.len += 7;
    t_check_ok(&h, "api.example.test", 0);
}

static void
test_every_prefix(void **state)
{
    struct t_hello h;

    (void)state;
    t_make_hello(&h, "api.example.test", NULL, 0, 0, 0);
    t_check_prefixes(&h, "api.example.test", 0);
    t_make_hello(&h, NULL, NULL, 0, 0, 0);
    t_check_prefixes(&h, "", 0);
    t_make_hello(&h, "h2.example.test", t_alpn_h2, sizeof(t_alpn_h2) - 1, 0, 0);
    t_check_prefixes(&h, "h2.example.test", 1);
    t_make_hello(&h, "tls12.example.test", t_alpn_both, sizeof(t_alpn_both) - 1, 1, 1);
    t_check_prefixes(&h, "tls12.example.test", 0);
}

static void
test_multi_record(void **state)
{
    struct t_hello h, r;
    size_t         hslen, c, cuts[3];
    char           host[PX_SNI_HOST_BYTES];

    (void)state;
    t_make_hello(&h, "split.example.test", t_alpn_h2, sizeof(t_alpn_h2) - 1, 0, 0);
    hslen = h.len - 5;

    /* two records, cut at every handshake offset (inside the 4-byte
     * handshake header, inside the name, inside extension headers) */
    for (c = 1; c < hslen; c++) {
        t_reframe(&h, &c, 1, &r);
        t_check_ok(&r, "split.example.test", 1);
        /* the first record alone is never enough */
        assert_int_equal(t_parse(r.b, 5 + c, host, sizeof(host), NULL), AL_AGAIN);
    }
    /* every prefix of a few two- and three-record framings */
    cuts[0] = 1;
    t_reframe(&h, cuts, 1, &r);
    t_check_prefixes(&r, "split.example.test", 1);
    cuts[0] = 2;
    cuts[1] = t_find(&h, "split.example") - 5 + 3;
    t_reframe(&h, cuts, 2, &r);
    t_check_prefixes(&r, "split.example.test", 1);
    cuts[0] = 3;
    cuts[1] = hslen / 2;
    cuts[2] = hslen - 1;
    t_reframe(&h, cuts, 3, &r);
    t_check_prefixes(&r, "split.example.test", 1);

    /* a record of another content type in the middle of the hello */
    cuts[0] = hslen / 2;
    t_reframe(&h, cuts, 1, &r);
    r.b[5 + hslen / 2] = 0x17;
    assert_int_equal(t_rc(&r), AL_ERROR);
    r.b[5 + hslen / 2] = 0x15; /* alert */
    assert_int_equal(t_rc(&r), AL_ERROR);
    /* a zero-length record in the middle */
    t_reframe(&h, cuts, 1, &r);
    memmove(r.b + 5 + hslen / 2 + 5, r.b + 5 + hslen / 2, r.len - (5 + hslen / 2));
    memcpy(r.b + 5 + hslen / 2, "\x16\x03\x01\x00\x00", 5);
    r.len += 5;
    assert_int_equal(t_rc(&r), AL_ERROR);
}

/* ---- hand-made damage ------------------------------------------------------ */

static void
test_malformed(void **state)
{
    struct t_hello h, m;
    char           host[PX_SNI_HOST_BYTES];
    size_t         at, hslen, i;
    unsigned char  big[PX_SNI_MAX_PEEK_BYTES + 64];
    int            h2;

    (void)state;
    t_make_hello(&h, "evil.example.test", t_alpn_h2, sizeof(t_alpn_h2) - 1, 0, 0);
    hslen = h.len - 5;

    /* not TLS */
    assert_int_equal(
        t_parse((const unsigned char *)"GET / HTTP/1.1\r\n", 16, host, sizeof(host), NULL),
        AL_DECLINED);
    assert_int_equal(
        t_parse((const unsigned char *)"\x80\x2e\x01\x03\x01", 5, host, sizeof(host), NULL),
        AL_DECLINED); /* SSLv2-compatible hello */
    assert_int_equal(t_parse((const unsigned char *)"\x16\x02", 2, host, sizeof(host), NULL),
                     AL_DECLINED);
    assert_int_equal(t_parse((const unsigned char *)"\x16\x03\x07", 3, host, sizeof(host), NULL),
                     AL_DECLINED);
    m = h;
    m.b[5] = 0x02; /* ServerHello */
    assert_int_equal(t_rc(&m), AL_DECLINED);
    assert_int_equal(t_parse((const unsigned char *)"", 0, host, sizeof(host), NULL), AL_AGAIN);
    assert_int_equal(t_parse((const unsigned char *)"\x16", 1, host, sizeof(host), NULL), AL_AGAIN);

    /* record lengths: zero, over 2^14, and a handshake length over the cap */
    assert_int_equal(
        t_parse((const unsigned char *)"\x16\x03\x01\x00\x00\x01", 6, host, sizeof(host), NULL),
        AL_ERROR);
    assert_int_equal(
        t_parse((const unsigned char *)"\x16\x03\x01\x40\x01\x01", 6, host, sizeof(host), NULL),
        AL_ERROR);
    assert_int_equal(
        t_parse((const unsigned char *)"\x16\x03\x01\xff\xff\x01", 6, host, sizeof(host), NULL),
        AL_ERROR);
    assert_int_equal(t_parse((const unsigned char *)"\x16\x03\x01\x00\x04\x01\xff\xff\xff", 9, host,
                             sizeof(host), NULL),
                     AL_ERROR);
    assert_int_equal(t_parse((const unsigned char *)"\x16\x03\x01\x00\x04\x01\x00\x40\x00", 9, host,
                             sizeof(host), NULL),
                     AL_ERROR);

    /* handshake length one short / one long of where the extensions end:
     * refused as soon as the extensions length is read, without waiting */
    m = h;
    t_put(m.b + 6, 3, hslen - 4 - 1);
    assert_int_equal(t_rc(&m), AL_ERROR);
    m = h;
    t_put(m.b + 6, 3, hslen - 4 + 1);
    assert_int_equal(t_rc(&m), AL_ERROR);
    assert_int_equal(t_parse(m.b, 5 + 4 + 40, host, sizeof(host), NULL), AL_AGAIN);
    /* extensions (and message) length one past the record */
    m = h;
    t_put(m.b + 6, 3, hslen - 4 + 1);
    at = t_find(&h, "evil.example.test");
    for (i = 5 + 4 + 34; i < at; i++) {
        /* find the extensions length: the 2 bytes that, read as a
         * length, end exactly at the end of the message */
        if (((size_t)h.b[i] << 8 | h.b[i + 1]) == h.len - i - 2)
            break;
    }
    assert_true(i < at);
    t_put(m.b + i, 2, h.len - i - 2 + 1);
    /* one byte left cannot hold an extension header: refused before
     * waiting for it, and also once it has arrived */
    assert_int_equal(t_rc(&m), AL_ERROR);
    t_put(m.b + 3, 2, hslen + 1);
    m.b[m.len++] = 0;
    assert_int_equal(t_rc(&m), AL_ERROR);

    /* the name: NUL, space, DEL and 8-bit bytes are refused */
    at = t_find(&h, "evil.example.test");
    for (i = 0; i < 4; i++) {
        static const unsigned char bad[] = {0x00, ' ', 0x7f, 0xc3};
        m = h;
        m.b[at + 4] = bad[i];
        assert_int_equal(t_rc(&m), AL_ERROR);
    }
    /* server_name entry length pointing past the list, and short of it */
    m = h;
    m.b[at - 1]++;
    assert_int_equal(t_rc(&m), AL_ERROR);
    m = h;
    m.b[at - 1]--;
    assert_int_equal(t_rc(&m), AL_ERROR);
    /* zero-length name */
    m = h;
    m.b[at - 2] = 0;
    m.b[at - 1] = 0;
    assert_int_equal(t_rc(&m), AL_ERROR);
    /* an unknown name type is skipped: no host_name left, so "" */
    m = h;
    m.b[at - 3] = 0x07;
    t_check_ok(&m, "", 1);
    /* server_name list length off by one */
    m = h;
    m.b[at - 4]++;
    assert_int_equal(t_rc(&m), AL_ERROR);

    /* a second server_name extension: rename ALPN (0x0010) to 0x0000 */
    for (i = 5 + 38; i + 1 < h.len; i++) {
        if (h.b[i] == 0x00 && h.b[i + 1] == 0x10 && h.b[i + 4] == 0x00 && h.b[i + 5] == 0x03 &&
            h.b[i + 6] == 0x02 && h.b[i + 7] == 'h')
            break;
    }
    assert_true(i + 1 < h.len);
    m = h;
    m.b[i + 1] = 0x00;
    assert_int_equal(t_rc(&m), AL_ERROR);
    /* ALPN with a zero-length protocol */
    m = h;
    m.b[i + 6] = 0x00;
    assert_int_equal(t_rc(&m), AL_ERROR);

    /* session id longer than 32 */
    m = h;
    m.b[5 + 4 + 34] = 33;
    assert_int_equal(t_rc(&m), AL_ERROR);

    /* AL_AGAIN turns into AL_ERROR at the peek cap: a hello whose cipher
     * suites run long, delivered one handshake byte per record */
    {
        unsigned char hs[64];
        size_t        hn = 0, k = 0;

        hs[hn++] = 0x01;
        hs[hn++] = 0x00;
        hs[hn++] = 0x2e;
        hs[hn++] = 0xe0; /* 12000 */
        hs[hn++] = 0x03;
        hs[hn++] = 0x03;
        memset(hs + hn, 0xab, 32);
        hn += 32;
        hs[hn++] = 0x00;
        hs[hn++] = 0x2a;
        hs[hn++] = 0xf8; /* 11000 bytes of suites */
        while (k + 6 <= sizeof(big)) {
            memcpy(big + k, "\x16\x03\x01\x00\x01", 5);
            big[k + 5] = k / 6 < hn ? hs[k / 6] : 0x13;
            k += 6;
        }
        assert_int_equal(t_parse(big, PX_SNI_MAX_PEEK_BYTES - 1, host, sizeof(host), NULL),
                         AL_AGAIN);
        assert_int_equal(t_parse(big, PX_SNI_MAX_PEEK_BYTES, host, sizeof(host), NULL), AL_ERROR);
    }

    /* out-parameters untouched unless AL_OK */
    memset(host, 'Q', sizeof(host));
    h2 = 77;
    assert_int_equal(t_parse(h.b, h.len - 1, host, sizeof(host), &h2), AL_AGAIN);
    assert_int_equal(host[0], 'Q');
    assert_int_equal(h2, 77);
}

/* ---- random mutation ----------------------------------------------------- */

static uint64_t t_rng_state = 0x9e3779b97f4a7c15ULL;

static uint32_t
t_rng(void)
{
    uint64_t x = t_rng_state;

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    t_rng_state = x;
    return (uint32_t)(x >> 16);
}

static void
test_mutations(void **state)
{
    struct t_hello seeds[4], m;
    char           host[PX_SNI_HOST_BYTES];
    size_t         cuts[2], i, j, n, at, counts[5] = {0};
    int            rc, h2;

    (void)state;
    t_make_hello(&seeds[0], "mut.example.test", t_alpn_both, sizeof(t_alpn_both) - 1, 0, 0);
    t_make_hello(&seeds[1], NULL, t_alpn_h2, sizeof(t_alpn_h2) - 1, 1, 0);
    cuts[0] = 3;
    cuts[1] = 60;
    t_reframe(&seeds[0], cuts, 2, &seeds[2]);
    t_make_hello(&seeds[3], "p.example", NULL, 0, 0, 1);
    fprintf(stderr, "# mutation seed 0x%llx, %d rounds\n", (unsigned long long)t_rng_state,
            T_MUTATIONS);
    for (i = 0; i < T_MUTATIONS; i++) {
        m = seeds[t_rng() % 4];
        n = 1 + t_rng() % 4;
        for (j = 0; j < n && m.len > 0; j++) {
            at = t_rng() % m.len;
            switch (t_rng() % 6) {
            case 0: /* random byte */
                m.b[at] = (unsigned char)t_rng();
                break;
            case 1: /* bit flip */
                m.b[at] ^= (unsigned char)(1u << (t_rng() % 8));
                break;
            case 2: /* truncate */
                m.len = at;
                break;
            case 3: /* extreme length-ish values */
                m.b[at] = (t_rng() & 1) ? 0xff : 0x00;
                if (at + 1 < m.len)
                    m.b[at + 1] = (t_rng() & 1) ? 0xff : 0x00;
                break;
            case 4: /* delete a run */
                n = 1 + t_rng() % 16;
                if (at + n <= m.len) {
                    memmove(m.b + at, m.b + at + n, m.len - at - n);
                    m.len -= n;
                }
                break;
            default: /* insert random bytes */
                n = 1 + t_rng() % 16;
                if (m.len + n <= sizeof(m.b)) {
                    memmove(m.b + at + n, m.b + at, m.len - at);
                    for (size_t k = 0; k < n; k++)
                        m.b[at + k] = (unsigned char)t_rng();
                    m.len += n;
                }
                break;
            }
        }
        h2 = -1;
        rc = t_parse(m.b, m.len, host, sizeof(host), &h2);
        switch (rc) {
        case AL_OK:
            counts[0]++;
            assert_true(strlen(host) < sizeof(host));
            for (j = 0; host[j] != '\0'; j++)
                assert_true(host[j] > 0x20 && host[j] < 0x7f);
            assert_true(h2 == 0 || h2 == 1);
            break;
        case AL_AGAIN:
            counts[1]++;
            break;
        case AL_DECLINED:
            counts[2]++;
            break;
        case AL_ERROR:
            counts[3]++;
            break;
        default:
            fail_msg("unexpected rc %d", rc);
        }
    }
    fprintf(stderr, "# ok=%zu again=%zu declined=%zu error=%zu\n", counts[0], counts[1], counts[2],
            counts[3]);
    assert_true(counts[0] > 0 && counts[1] > 0 && counts[3] > 0);
}

/* ---- first-bytes classification ----------------------------------------- */

static void
test_looks_tls(void **state)
{
    (void)state;
    assert_int_equal(px_sni_looks_tls((const unsigned char *)"", 0), AL_AGAIN);
    assert_int_equal(px_sni_looks_tls((const unsigned char *)"\x16", 1), AL_AGAIN);
    assert_int_equal(px_sni_looks_tls((const unsigned char *)"\x16\x03\x01\x02", 4), AL_AGAIN);
    assert_int_equal(px_sni_looks_tls((const unsigned char *)"\x16\x03\x01\x02\x00\x01", 6), AL_OK);
    assert_int_equal(px_sni_looks_tls((const unsigned char *)"\x16\x03\x03\x02\x00\x02", 6),
                     AL_DECLINED);
    assert_int_equal(px_sni_looks_tls((const unsigned char *)"\x17\x03", 2), AL_DECLINED);
    assert_int_equal(px_sni_looks_tls((const unsigned char *)"\x16\x04", 2), AL_DECLINED);
    assert_int_equal(px_sni_looks_tls((const unsigned char *)"\x16\x03\x05", 3), AL_DECLINED);
    assert_int_equal(px_sni_looks_tls((const unsigned char *)"GET ", 4), AL_DECLINED);
    assert_int_equal(px_sni_looks_tls(NULL, 0), AL_AGAIN);
}

static void
test_looks_http(void **state)
{
    static const struct {
        const char *in;
        int         rc;
    } rows[] = {
        {"", AL_AGAIN},
        {"G", AL_AGAIN},
        {"GET", AL_AGAIN},
        {"GET ", AL_OK},
        {"GET / HTTP/1.1\r\n", AL_OK},
        {"POST /x HTTP/1.0", AL_OK},
        {"M-SEARCH * HTTP/1.1", AL_OK},
        {"OPTIONS * HTTP/1.1", AL_OK},
        {"get / HTTP/1.1", AL_OK}, /* tokens are case-sensitive; llhttp decides */
        {" GET /", AL_DECLINED},
        {"GE(T /", AL_DECLINED},
        {"GET\t/", AL_DECLINED},
        {"\x16\x03\x01", AL_DECLINED},
        {"SSH-2.0-OpenSSH_9.6\r\n", AL_DECLINED},
        {"\r\nGET /", AL_DECLINED},
        {"ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEF ", AL_OK},        /* 32 + space */
        {"ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEF", AL_AGAIN},      /* 32, space may follow */
        {"ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFG ", AL_DECLINED}, /* 33 */
        {"ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFG", AL_DECLINED},
    };
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        size_t         n = strlen(rows[i].in);
        unsigned char *copy = malloc(n > 0 ? n : 1);
        int            rc;

        assert_non_null(copy);
        memcpy(copy, rows[i].in, n);
        rc = px_http_looks_like_request(copy, n);
        free(copy);
        if (rc != rows[i].rc)
            fail_msg("%zu %s: got %d want %d", i, rows[i].in, rc, rows[i].rc);
    }
    assert_int_equal(px_http_looks_like_request((const unsigned char *)"GET /", 0), AL_AGAIN);
    assert_int_equal(px_http_looks_like_request(NULL, 0), AL_AGAIN);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sni_variants), cmocka_unit_test(test_every_prefix),
        cmocka_unit_test(test_multi_record), cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_mutations),    cmocka_unit_test(test_looks_tls),
        cmocka_unit_test(test_looks_http),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
