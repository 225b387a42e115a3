/*
 * aud_fmt.c - output encodings for audit rows: terminal-safe escaping
 * (table, csv), RFC 4180 csv fields, JSON string literals, RFC 3339 times
 * and fixed-width table cells.
 *
 * Invariant: nothing a sandbox controls (host, path, tool call, ...) reaches
 * the output as a raw control byte. Table and csv escape every byte below
 * 0x20, DEL, every byte >= 0x80 (C1 controls such as 0x9b are CSI on some
 * terminals) and the backslash itself, as \xNN / \\, so the text is
 * unambiguous. JSON keeps valid UTF-8 but escapes C0 and C1 controls, and
 * writes an invalid byte as the text \xNN (JSON cannot carry raw bytes).
 */
#include "aud_int.h"

#include <string.h>
#include <time.h>

static const char aud_fmt_hex[] = "0123456789abcdef";

static int
aud_fmt_needs_escape(unsigned char c)
{
    return c < 0x20 || c >= 0x7f || c == '\\';
}

int
aud_fmt_escape(struct al_dbuf *b, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    const unsigned char *run = p;
    char                 esc[4];

    for (; *p != '\0'; p++) {
        if (!aud_fmt_needs_escape(*p))
            continue;
        if (p > run && al_dbuf_add(b, run, (size_t)(p - run)) != AL_OK)
            return AL_ERROR;
        if (*p == '\\') {
            esc[0] = '\\';
            esc[1] = '\\';
            if (al_dbuf_add(b, esc, 2) != AL_OK)
                return AL_ERROR;
        } else {
            esc[0] = '\\';
            esc[1] = 'x';
            esc[2] = aud_fmt_hex[*p >> 4];
            esc[3] = aud_fmt_hex[*p & 15];
            if (al_dbuf_add(b, esc, 4) != AL_OK)
                return AL_ERROR;
        }
        run = p + 1;
    }
    if (p > run && al_dbuf_add(b, run, (size_t)(p - run)) != AL_OK)
        return AL_ERROR;
    return AL_OK;
}

int
aud_fmt_csv(struct al_dbuf *b, const char *s)
{
    struct al_dbuf tmp;
    int            quote, ret = AL_ERROR;

    al_dbuf_init(&tmp, 1 << 20);
    if (al_dbuf_adds(&tmp, "") != AL_OK)
        goto out;
    /* Formula injection: a cell a spreadsheet would evaluate gets a leading '. */
    if ((s[0] == '=' || s[0] == '+' || s[0] == '-' || s[0] == '@') &&
        al_dbuf_add(&tmp, "'", 1) != AL_OK)
        goto out;
    if (aud_fmt_escape(&tmp, s) != AL_OK)
        goto out;
    quote = strpbrk(tmp.data, ",\"") != NULL || tmp.data[0] == ' ' ||
            (tmp.len > 0 && tmp.data[tmp.len - 1] == ' ');
    if (!quote) {
        ret = al_dbuf_add(b, tmp.data, tmp.len);
        goto out;
    }
    if (al_dbuf_add(b, "\"", 1) != AL_OK)
        goto out;
    for (size_t i = 0; i < tmp.len; i++) {
        if (tmp.data[i] == '"' && al_dbuf_add(b, "\"", 1) != AL_OK)
            goto out;
        if (al_dbuf_add(b, &tmp.data[i], 1) != AL_OK)
            goto out;
    }
    ret = al_dbuf_add(b, "\"", 1);
out:
    al_dbuf_free(&tmp);
    return ret;
}

/* Length of the valid UTF-8 sequence at p (1..4), or 0 if invalid. */
static int
aud_fmt_utf8_len(const unsigned char *p, unsigned *cp)
{
    unsigned c = p[0], v;
    int      n;

    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        v = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        v = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        v = c & 0x07;
    } else {
        return 0;
    }
    for (int i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        v = (v << 6) | (p[i] & 0x3f);
    }
    if ((n == 3 && v < 0x800) || (n == 4 && (v < 0x10000 || v > 0x10ffff)) ||
        (v >= 0xd800 && v <= 0xdfff))
        return 0;
    *cp = v;
    return n;
}

int
aud_fmt_json_str(struct al_dbuf *b, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    char                 esc[8];
    unsigned             cp;
    int                  n;

    if (al_dbuf_add(b, "\"", 1) != AL_OK)
        return AL_ERROR;
    while (*p != '\0') {
        n = aud_fmt_utf8_len(p, &cp);
        if (n == 0) {
            /* invalid byte: the text \xNN (escaped backslash in JSON) */
            esc[0] = '\\';
            esc[1] = '\\';
            esc[2] = 'x';
            esc[3] = aud_fmt_hex[*p >> 4];
            esc[4] = aud_fmt_hex[*p & 15];
            if (al_dbuf_add(b, esc, 5) != AL_OK)
                return AL_ERROR;
            p++;
            continue;
        }
        if (cp == '"' || cp == '\\') {
            esc[0] = '\\';
            esc[1] = (char)cp;
            if (al_dbuf_add(b, esc, 2) != AL_OK)
                return AL_ERROR;
        } else if (cp < 0x20 || (cp >= 0x7f && cp <= 0x9f)) {
            if (al_dbuf_addf(b, "\\u%04x", cp) != AL_OK)
                return AL_ERROR;
        } else if (al_dbuf_add(b, p, (size_t)n) != AL_OK) {
            return AL_ERROR;
        }
        p += n;
    }
    return al_dbuf_add(b, "\"", 1);
}

void
aud_fmt_rfc3339(int64_t ts_us, char *buf, size_t n)
{
    struct tm tm;
    time_t    t = (time_t)(ts_us / 1000000);
    long      us = (long)(ts_us % 1000000);

    if (us < 0) {
        us += 1000000;
        t -= 1;
    }
    gmtime_r(&t, &tm);
    snprintf(buf, n, "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, us);
}

int
aud_fmt_cell(struct al_dbuf *b, const char *s, int width, int right)
{
    struct al_dbuf tmp;
    size_t         w = (size_t)width;
    int            ret = AL_ERROR;

    al_dbuf_init(&tmp, 1 << 20);
    if (al_dbuf_adds(&tmp, "") != AL_OK || aud_fmt_escape(&tmp, s) != AL_OK)
        goto out;
    if (tmp.len > w) {
        if (al_dbuf_add(b, tmp.data, w - 1) != AL_OK || al_dbuf_add(b, "~", 1) != AL_OK)
            goto out;
    } else {
        if (!right && al_dbuf_add(b, tmp.data, tmp.len) != AL_OK)
            goto out;
        for (size_t i = tmp.len; i < w; i++) {
            if (al_dbuf_add(b, " ", 1) != AL_OK)
                goto out;
        }
        if (right && al_dbuf_add(b, tmp.data, tmp.len) != AL_OK)
            goto out;
    }
    ret = AL_OK;
out:
    al_dbuf_free(&tmp);
    return ret;
}
