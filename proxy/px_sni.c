/*
 * px_sni.c - ClientHello server_name extraction for transparent mode.
 *
 * DESIGN
 *
 * The bytes a redirected client sent first are peeked, never
 * consumed, and handed here as one flat prefix. TLS lets a handshake
 * message span several records, so parsing goes through a cursor
 * (struct px_sni_rd) that yields the handshake byte stream and steps over
 * record headers as it reaches them, validating each one. Nothing is
 * copied except the name itself, into a bounded local buffer.
 *
 * Every read names the logical offset its enclosing structure ends at;
 * reading past that end is AL_ERROR (the hello lies about its lengths),
 * running out of input before it is AL_AGAIN (the caller peeks again with
 * a longer prefix, and the parse restarts from byte 0: the functions keep
 * no state). The parse continues to the end of the ClientHello even after
 * the name is found, so a truncated or inconsistent hello is never
 * reported as AL_OK.
 */
#include <stdint.h>
#include <string.h>

#include "common.h"
#include "px_sni.h"

#define PX_SNI_REC_HDR_BYTES 5
#define PX_SNI_HS_HDR_BYTES 4
#define PX_SNI_CT_HANDSHAKE 0x16
#define PX_SNI_HS_CLIENT_HELLO 0x01
#define PX_SNI_EXT_SERVER_NAME 0x0000
#define PX_SNI_EXT_ALPN 0x0010
#define PX_SNI_NAME_TYPE_HOST 0x00
#define PX_SNI_MAX_NAME_BYTES 255 /* DNS limit on a wire-format name */
#define PX_SNI_MAX_SESSION_ID_BYTES 32
/* A hello longer than this cannot arrive within PX_SNI_MAX_PEEK_BYTES. */
#define PX_SNI_MAX_HELLO_BYTES (PX_SNI_MAX_PEEK_BYTES - PX_SNI_REC_HDR_BYTES - PX_SNI_HS_HDR_BYTES)

/* Cursor over the handshake bytes of a record stream prefix. */
struct px_sni_rd {
    const unsigned char *buf;
    size_t               len;      /* bytes present */
    size_t               pos;      /* physical offset of the next byte */
    size_t               rec_left; /* payload bytes left in the current record */
    size_t               off;      /* handshake bytes consumed so far */
};

/* What the extension walk found. */
struct px_sni_found {
    char   name[PX_SNI_MAX_NAME_BYTES + 1];
    size_t namelen;
    int    have_name;
    int    have_sni_ext;
    int    have_alpn_ext;
    int    alpn_h2_only;
};

/* Steps over the next record header: AL_OK, AL_AGAIN, or AL_ERROR for a
 * record that cannot continue a ClientHello. */
static int
px_sni_rd_record(struct px_sni_rd *rd)
{
    const unsigned char *h;
    size_t               rlen;
    int                  rc = AL_AGAIN;

    if (rd->len < rd->pos || rd->len - rd->pos < PX_SNI_REC_HDR_BYTES)
        goto out;
    h = rd->buf + rd->pos;
    rlen = ((size_t)h[3] << 8) | h[4];
    rc = AL_ERROR;
    if (h[0] != PX_SNI_CT_HANDSHAKE || h[1] != 3 || rlen == 0 || rlen > PX_SNI_MAX_RECORD_BYTES)
        goto out;
    rd->pos += PX_SNI_REC_HDR_BYTES;
    rd->rec_left = rlen;
    rc = AL_OK;
out:
    return rc;
}

/* Consumes n handshake bytes into dst (NULL: skip them). `end` is the
 * logical offset the enclosing structure ends at. */
static int
px_sni_rd_take(struct px_sni_rd *rd, unsigned char *dst, size_t n, size_t end)
{
    size_t k;
    int    rc = AL_ERROR;

    if (rd->off > end || n > end - rd->off)
        goto out;
    rc = AL_OK;
    while (n > 0) {
        if (rd->rec_left == 0) {
            rc = px_sni_rd_record(rd);
            if (rc != AL_OK)
                goto out;
        }
        if (rd->pos >= rd->len) {
            rc = AL_AGAIN;
            goto out;
        }
        k = rd->len - rd->pos;
        if (k > rd->rec_left)
            k = rd->rec_left;
        if (k > n)
            k = n;
        if (dst != NULL) {
            memcpy(dst, rd->buf + rd->pos, k);
            dst += k;
        }
        rd->pos += k;
        rd->rec_left -= k;
        rd->off += k;
        n -= k;
    }
out:
    return rc;
}

/* Reads a big-endian integer of `width` bytes (1..3). */
static int
px_sni_rd_uint(struct px_sni_rd *rd, size_t width, size_t end, size_t *out)
{
    unsigned char b[3];
    size_t        i, v = 0;
    int           rc;

    rc = px_sni_rd_take(rd, b, width, end);
    if (rc != AL_OK)
        goto out;
    for (i = 0; i < width; i++)
        v = (v << 8) | b[i];
    *out = v;
out:
    return rc;
}

/* Reads a vector length prefix and checks the vector fits before `end`;
 * *vend receives the logical offset the vector ends at. */
static int
px_sni_rd_vec(struct px_sni_rd *rd, size_t width, size_t end, size_t *vlen, size_t *vend)
{
    size_t n;
    int    rc;

    rc = px_sni_rd_uint(rd, width, end, &n);
    if (rc != AL_OK)
        goto out;
    if (n > end - rd->off) {
        rc = AL_ERROR;
        goto out;
    }
    *vlen = n;
    *vend = rd->off + n;
out:
    return rc;
}

/* Checks one host_name: printable ASCII without spaces (NUL would truncate
 * what the policy sees; the normaliser does the finer checks). */
static int
px_sni_name_ok(const char *name, size_t n)
{
    size_t i;
    int    ok = 1;

    for (i = 0; i < n && ok; i++)
        ok = (unsigned char)name[i] >= 0x21 && (unsigned char)name[i] <= 0x7e;
    return ok;
}

/* server_name extension body (RFC 6066 3), ending at `end`. */
static int
px_sni_parse_server_name(struct px_sni_rd *rd, size_t end, struct px_sni_found *f)
{
    size_t type, nlen, listlen, listend;
    int    rc;

    rc = px_sni_rd_vec(rd, 2, end, &listlen, &listend);
    if (rc != AL_OK)
        goto out;
    rc = AL_ERROR;
    if (listlen == 0 || listend != end)
        goto out;
    rc = AL_OK;
    while (rd->off < listend) {
        rc = px_sni_rd_uint(rd, 1, listend, &type);
        if (rc != AL_OK)
            goto out;
        rc = px_sni_rd_uint(rd, 2, listend, &nlen);
        if (rc != AL_OK)
            goto out;
        if (type != PX_SNI_NAME_TYPE_HOST) {
            rc = px_sni_rd_take(rd, NULL, nlen, listend);
            if (rc != AL_OK)
                goto out;
            continue;
        }
        if (f->have_name || nlen == 0 || nlen > PX_SNI_MAX_NAME_BYTES) {
            rc = AL_ERROR; /* RFC 6066: at most one name per type */
            goto out;
        }
        rc = px_sni_rd_take(rd, (unsigned char *)f->name, nlen, listend);
        if (rc != AL_OK)
            goto out;
        if (!px_sni_name_ok(f->name, nlen)) {
            rc = AL_ERROR;
            goto out;
        }
        f->name[nlen] = '\0';
        f->namelen = nlen;
        f->have_name = 1;
    }
out:
    return rc;
}

/* application_layer_protocol_negotiation extension body (RFC 7301 3.1). */
static int
px_sni_parse_alpn(struct px_sni_rd *rd, size_t end, struct px_sni_found *f)
{
    unsigned char proto[2];
    size_t        listlen, listend, plen, nh2 = 0, nother = 0;
    int           rc;

    rc = px_sni_rd_vec(rd, 2, end, &listlen, &listend);
    if (rc != AL_OK)
        goto out;
    rc = AL_ERROR;
    if (listlen < 2 || listend != end)
        goto out;
    rc = AL_OK;
    while (rd->off < listend) {
        rc = px_sni_rd_uint(rd, 1, listend, &plen);
        if (rc != AL_OK)
            goto out;
        if (plen == 0) {
            rc = AL_ERROR;
            goto out;
        }
        if (plen == 2) {
            rc = px_sni_rd_take(rd, proto, 2, listend);
            if (rc == AL_OK && proto[0] == 'h' && proto[1] == '2')
                nh2++;
            else
                nother++;
        } else {
            rc = px_sni_rd_take(rd, NULL, plen, listend);
            nother++;
        }
        if (rc != AL_OK)
            goto out;
    }
    f->alpn_h2_only = nh2 > 0 && nother == 0;
out:
    return rc;
}

/* The extensions block, from its length prefix to `end` (the end of the
 * ClientHello, which it must reach exactly). Duplicate server_name or ALPN
 * extensions are refused (RFC 8446 4.2): two names could be read
 * differently by airlock and by the origin. */
static int
px_sni_parse_extensions(struct px_sni_rd *rd, size_t end, struct px_sni_found *f)
{
    size_t extlen, extend, type, dlen, dend;
    int    rc;

    rc = px_sni_rd_vec(rd, 2, end, &extlen, &extend);
    if (rc != AL_OK)
        goto out;
    if (extend != end) {
        rc = AL_ERROR;
        goto out;
    }
    while (rd->off < extend) {
        rc = px_sni_rd_uint(rd, 2, extend, &type);
        if (rc != AL_OK)
            goto out;
        rc = px_sni_rd_vec(rd, 2, extend, &dlen, &dend);
        if (rc != AL_OK)
            goto out;
        if (type == PX_SNI_EXT_SERVER_NAME) {
            rc = f->have_sni_ext ? AL_ERROR : px_sni_parse_server_name(rd, dend, f);
            f->have_sni_ext = 1;
        } else if (type == PX_SNI_EXT_ALPN) {
            rc = f->have_alpn_ext ? AL_ERROR : px_sni_parse_alpn(rd, dend, f);
            f->have_alpn_ext = 1;
        } else {
            rc = px_sni_rd_take(rd, NULL, dlen, dend);
        }
        if (rc == AL_OK && rd->off != dend)
            rc = AL_ERROR;
        if (rc != AL_OK)
            goto out;
    }
out:
    return rc;
}

/* Reads a vector with a length prefix of `width` bytes, holding between
 * min and max bytes, and skips its contents. */
static int
px_sni_rd_skipvec(struct px_sni_rd *rd, size_t width, size_t end, size_t min, size_t max)
{
    size_t n, vend;
    int    rc;

    rc = px_sni_rd_vec(rd, width, end, &n, &vend);
    if (rc != AL_OK)
        goto out;
    if (n < min || n > max) {
        rc = AL_ERROR;
        goto out;
    }
    rc = px_sni_rd_take(rd, NULL, n, vend);
out:
    return rc;
}

/* The ClientHello handshake message (RFC 8446 4.1.2, RFC 5246 7.4.1.2). */
static int
px_sni_parse_hello(struct px_sni_rd *rd, struct px_sni_found *f)
{
    size_t type, msglen, end, vstart;
    int    rc;

    rc = px_sni_rd_uint(rd, 1, SIZE_MAX, &type);
    if (rc != AL_OK)
        goto out;
    if (type != PX_SNI_HS_CLIENT_HELLO) {
        rc = AL_DECLINED;
        goto out;
    }
    rc = px_sni_rd_uint(rd, 3, SIZE_MAX, &msglen);
    if (rc != AL_OK)
        goto out;
    if (msglen > PX_SNI_MAX_HELLO_BYTES) {
        rc = AL_ERROR; /* could never arrive within the peek cap */
        goto out;
    }
    end = PX_SNI_HS_HDR_BYTES + msglen;
    /* legacy_version, random */
    rc = px_sni_rd_take(rd, NULL, 2 + 32, end);
    if (rc != AL_OK)
        goto out;
    /* legacy_session_id<0..32> */
    rc = px_sni_rd_skipvec(rd, 1, end, 0, PX_SNI_MAX_SESSION_ID_BYTES);
    if (rc != AL_OK)
        goto out;
    /* cipher_suites<2..2^16-2>, two bytes each */
    vstart = rd->off;
    rc = px_sni_rd_skipvec(rd, 2, end, 2, 0xfffe);
    if (rc != AL_OK)
        goto out;
    if ((rd->off - vstart) % 2 != 0) {
        rc = AL_ERROR;
        goto out;
    }
    /* legacy_compression_methods<1..2^8-1> */
    rc = px_sni_rd_skipvec(rd, 1, end, 1, 0xff);
    if (rc != AL_OK)
        goto out;
    /* extensions are optional before TLS 1.3 */
    if (rd->off != end)
        rc = px_sni_parse_extensions(rd, end, f);
out:
    return rc;
}

int
px_sni_parse(const unsigned char *buf, size_t len, char *host, size_t hostsz, int *has_alpn_h2_only)
{
    struct px_sni_rd    rd;
    struct px_sni_found f;
    int                 rc;

    memset(&f, 0, sizeof(f));
    rc = px_sni_looks_tls(buf, len);
    if (rc == AL_DECLINED || buf == NULL || host == NULL || hostsz == 0)
        goto out;
    rd.buf = buf;
    rd.len = len;
    rd.pos = 0;
    rd.rec_left = 0;
    rd.off = 0;
    rc = px_sni_parse_hello(&rd, &f);
    if (rc != AL_OK)
        goto out;
    if (f.have_name && f.namelen >= hostsz) {
        rc = AL_ERROR;
        goto out;
    }
    memcpy(host, f.name, f.have_name ? f.namelen : 0);
    host[f.have_name ? f.namelen : 0] = '\0';
    if (has_alpn_h2_only != NULL)
        *has_alpn_h2_only = f.alpn_h2_only;
out:
    if (rc == AL_AGAIN && len >= PX_SNI_MAX_PEEK_BYTES)
        rc = AL_ERROR;
    if (rc == AL_OK && (buf == NULL || host == NULL || hostsz == 0))
        rc = AL_ERROR;
    return rc;
}

int
px_sni_looks_tls(const unsigned char *buf, size_t len)
{
    int rc = AL_AGAIN;

    if (len == 0 || buf == NULL)
        goto out;
    if (buf[0] != PX_SNI_CT_HANDSHAKE || (len >= 2 && buf[1] != 3) || (len >= 3 && buf[2] > 4) ||
        (len >= 6 && buf[5] != PX_SNI_HS_CLIENT_HELLO))
        rc = AL_DECLINED;
    else if (len >= 6)
        rc = AL_OK;
out:
    return rc;
}

/* RFC 9110 5.6.2 tchar. */
static int
px_http_is_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

int
px_http_looks_like_request(const unsigned char *buf, size_t len)
{
    size_t i;
    int    rc = AL_AGAIN;

    for (i = 0; buf != NULL && i < len; i++) {
        if (buf[i] == ' ') {
            rc = i > 0 ? AL_OK : AL_DECLINED;
            break;
        }
        if (i == PX_HTTP_MAX_METHOD_BYTES || !px_http_is_tchar(buf[i])) {
            rc = AL_DECLINED;
            break;
        }
    }
    return rc;
}
