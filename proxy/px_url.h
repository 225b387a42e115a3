/*
 * px_url.h - request-target and authority parsing, host normalisation.
 * Pure functions: no I/O, no allocation.
 */
#ifndef PX_URL_H
#define PX_URL_H

#include <stddef.h>
#include <stdint.h>

#define PX_HOST_MAX 255
/* Longest absolute-form request target px_url_parse_absolute() accepts. */
#define PX_URL_MAX_BYTES 8192

enum px_host_kind { PX_HOST_NAME = 0, PX_HOST_IPV4 = 4, PX_HOST_IPV6 = 6 };

struct px_target {
    char              host[PX_HOST_MAX + 1]; /* normalised; IPv6 without brackets */
    enum px_host_kind kind;
    uint16_t          port;
    int               tls;  /* scheme https (absolute-form) */
    const char       *path; /* origin-form "/p?q" inside the parsed input; "/" if empty */
    size_t            path_len;
    int               port_given; /* the authority carried an explicit port */
    /*
     * Set by px_url_parse_absolute() when the target has a query but no path
     * ("http://h?q"): path then points at "?q" and the caller must emit "/"
     * in front of it, because "/?q" does not exist inside the input.
     */
    int path_needs_slash;
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
 * `in` need not be NUL-terminated; a NUL or other control byte inside it is
 * "bad_host". A name whose last label is all digits but which is not an
 * inet_aton literal ("1.2.3.4.5", "999.1.1.1", "a.1") is "bad_host", so
 * such a string can never reach DNS and be read as an address there.
 * Input longer than 1024 bytes is "bad_host"; bytes that are not valid
 * UTF-8, and names IDNA2008 disallows (emoji), are "bad_idn". `out`
 * receives a NUL-terminated string; PX_HOST_MAX + 1 bytes always suffice.
 * out and *kind are written only on success, *err only on failure (err may
 * be NULL). libidn2 allocates internally and is freed before returning;
 * nothing is left allocated.
 */
int px_host_normalize(const char *in, size_t len, char *out, size_t outsz, enum px_host_kind *kind,
                      const char **err);

/*
 * Parses "host[:port]" / "[v6][:port]" (CONNECT authority, Host header).
 * default_port applies when no port is given (0 = port required).
 * Rejects userinfo, empty host, port 0 or > 65535, leading zeros in port
 * ("007"), non-digits, unbracketed IPv6. err: "bad_authority" | "bad_port" |
 * reasons of px_host_normalize.
 * Brackets must hold an IPv6 literal ("[example.net]:1" is "bad_authority").
 * `s` need not be NUL-terminated. On success *out is filled with tls = 0,
 * path = "" and path_len = 0 (an authority has no path); *out is left
 * untouched on failure.
 */
int px_authority_parse(const char *s, size_t len, uint16_t default_port, struct px_target *out,
                       const char **err);

/*
 * Parses an absolute-form request target "http://host[:port]/path?query"
 * (scheme http or https, case-insensitive). Rejects userinfo ("user@"),
 * fragments, other schemes ("bad_scheme"), and a missing host. path/path_len
 * point into `url` (origin-form, "/" when the URL has no path; see
 * path_needs_slash for "http://h?q"). Default port 80 (http) or 443 (https,
 * tls = 1). Targets longer than PX_URL_MAX_BYTES, containing '#', spaces or
 * control bytes are "bad_target"; an empty authority is "bad_authority".
 * `url` need not be NUL-terminated; *out is left untouched on failure.
 */
int px_url_parse_absolute(const char *url, size_t len, struct px_target *out, const char **err);

#endif
