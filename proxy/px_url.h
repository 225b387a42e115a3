/*
 * px_url.h - request-target and authority parsing, host normalisation.
 * Pure functions: no I/O, no allocation.
 */
#ifndef PX_URL_H
#define PX_URL_H

#include <stddef.h>
#include <stdint.h>

#define PX_HOST_MAX 255

enum px_host_kind { PX_HOST_NAME = 0, PX_HOST_IPV4 = 4, PX_HOST_IPV6 = 6 };

struct px_target {
    char              host[PX_HOST_MAX + 1]; /* normalised; IPv6 without brackets */
    enum px_host_kind kind;
    uint16_t          port;
    int               tls;       /* scheme https (absolute-form) */
    const char       *path;      /* origin-form "/p?q" inside the parsed input; "/" if empty */
    size_t            path_len;
    int               port_given; /* the authority carried an explicit port */
};

/*
 * Normalises a host: lowercase; trailing dot removed; IDN (UTF-8) converted
 * to punycode (IDNA2008 via libidn2) or rejected; labels checked (LDH and
 * underscore, 1..63 bytes, total <= 253); IPv4 literals in any spelling
 * inet_aton accepts (2130706433, 0x7f.1, 0177.0.0.1, 127.1) rewritten to
 * dotted quad; IPv6 literals (input without brackets, optional %zone which
 * is rejected) rewritten to canonical inet_ntop form.
 * Returns AL_OK or AL_ERROR with *err set to a short reason code
 * ("bad_host", "bad_idn").
 */
int px_host_normalize(const char *in, size_t len, char *out, size_t outsz,
                      enum px_host_kind *kind, const char **err);

/*
 * Parses "host[:port]" / "[v6][:port]" (CONNECT authority, Host header).
 * default_port applies when no port is given (0 = port required).
 * Rejects userinfo, empty host, port 0 or > 65535, leading zeros in port
 * ("007"), non-digits, unbracketed IPv6. err: "bad_authority" | "bad_port" |
 * reasons of px_host_normalize.
 */
int px_authority_parse(const char *s, size_t len, uint16_t default_port, struct px_target *out,
                       const char **err);

/*
 * Parses an absolute-form request target "http://host[:port]/path?query"
 * (scheme http or https, case-insensitive). Rejects userinfo ("user@"),
 * fragments, other schemes ("bad_scheme"), and a missing host. path/path_len
 * point into `url` (origin-form, "/" when the URL has no path).
 */
int px_url_parse_absolute(const char *url, size_t len, struct px_target *out, const char **err);

#endif
