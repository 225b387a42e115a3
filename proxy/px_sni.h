/*
 * px_sni.h - classify the first bytes of a transparently redirected
 * connection: a TLS ClientHello (and the server name it carries) or an
 * HTTP/1.x request line. Pure functions over bytes peeked from the socket
 * (MSG_PEEK): no allocation, no I/O, nothing consumed, safe on hostile input.
 */
#ifndef PX_SNI_H
#define PX_SNI_H

#include <stddef.h>

/* Most bytes the caller peeks while waiting for a complete ClientHello.
 * px_sni_parse() turns AL_AGAIN into AL_ERROR once `len` reaches this. */
#define PX_SNI_MAX_PEEK_BYTES 16384
/* Largest TLSPlaintext fragment (RFC 8446 5.1); larger records are malformed. */
#define PX_SNI_MAX_RECORD_BYTES 16384
/* Room a caller should give `host`: a DNS name (253) plus NUL, rounded up. */
#define PX_SNI_HOST_BYTES 256
/* Longest method token px_http_looks_like_request() waits for. */
#define PX_HTTP_MAX_METHOD_BYTES 32

/*
 * Parses a TLS record stream prefix that starts with a ClientHello, also
 * when the handshake message is fragmented over several records or the
 * bytes arrived in several segments (call again with the longer prefix).
 * Returns
 *   AL_OK       the whole ClientHello is present and well formed; `host`
 *               holds the host_name server_name (NUL-terminated, as sent,
 *               not normalised), or "" when the hello has no SNI;
 *               *has_alpn_h2_only (may be NULL) is 1 when the hello offers
 *               ALPN with "h2" as its only protocol, else 0;
 *   AL_AGAIN    the prefix is consistent so far, more bytes are needed
 *               (never once len >= PX_SNI_MAX_PEEK_BYTES: then AL_ERROR);
 *   AL_DECLINED not a TLS handshake starting with a ClientHello (see
 *               px_sni_looks_tls());
 *   AL_ERROR    malformed (bad lengths, records over 16 KiB, a non-handshake
 *               record inside the hello, a name with bytes outside
 *               0x21..0x7e or longer than hostsz - 1, duplicate extensions).
 * Out-parameters are written only on AL_OK. Bytes after the ClientHello are
 * ignored. With ECH the name is the outer (public) one.
 */
int px_sni_parse(const unsigned char *buf, size_t len, char *host, size_t hostsz,
                 int *has_alpn_h2_only);

/*
 * Tells from as few bytes as are present whether the stream starts like a
 * TLS handshake record carrying a ClientHello (content type 0x16, record
 * version 3.x with x <= 4, handshake type 1). Returns AL_OK (it does),
 * AL_AGAIN (the bytes so far fit; fewer than 6 present) or AL_DECLINED.
 */
int px_sni_looks_tls(const unsigned char *buf, size_t len);

/*
 * Tells whether the stream starts like an HTTP/1.x request: a method token
 * (RFC 9110 tchar, 1..PX_HTTP_MAX_METHOD_BYTES bytes) followed by a space.
 * Returns AL_OK, AL_AGAIN (only token bytes so far, under the limit) or
 * AL_DECLINED. The full request head is left to the HTTP parser.
 */
int px_http_looks_like_request(const unsigned char *buf, size_t len);

#endif
