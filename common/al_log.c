/*
 * al_log.c - one line per event on stderr: "ts level message [key=value]..."
 * (log_format "text") or one JSON object {"time", "level", "message",
 * "fields"} (log_format "json"). Lines are built in a local buffer and
 * written with one write(2) so lines from several threads never interleave.
 * Control characters (C0, DEL, C1) and invalid UTF-8 are escaped, never
 * written raw nor replaced: a message with a newline stays one line.
 * Callers never pass header values or secret values (see DESIGN, "Secrets").
 */
#include "common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile int al_log_level_cur = AL_LOG_INFO;
static volatile int al_log_format_cur = AL_LOG_TEXT;

static const char *const al_log_names[] = {"debug", "info", "warn", "error", "off"};
static const char *const al_log_format_names[] = {"text", "json"};

void
al_log_set_level(enum al_log_level lvl)
{
    al_log_level_cur = (int)lvl;
}

enum al_log_level
al_log_get_level(void)
{
    return (enum al_log_level)al_log_level_cur;
}

int
al_log_level_parse(const char *s, enum al_log_level *out)
{
    for (int i = 0; i <= AL_LOG_OFF; i++) {
        if (strcmp(s, al_log_names[i]) == 0) {
            *out = (enum al_log_level)i;
            return AL_OK;
        }
    }
    return AL_ERROR;
}

void
al_log_set_format(enum al_log_format f)
{
    al_log_format_cur = (int)f;
}

enum al_log_format
al_log_get_format(void)
{
    return (enum al_log_format)al_log_format_cur;
}

int
al_log_format_parse(const char *s, enum al_log_format *out)
{
    for (int i = 0; i <= AL_LOG_JSON; i++) {
        if (strcmp(s, al_log_format_names[i]) == 0) {
            *out = (enum al_log_format)i;
            return AL_OK;
        }
    }
    return AL_ERROR;
}

/* Length of the valid UTF-8 sequence at s (1-4), or 0 when s[0] does not
 * start one (stray continuation byte, overlong form, surrogate, > U+10FFFF,
 * cut short). */
static size_t
al_utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t   k;
    unsigned cp;

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        k = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        k = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        k = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < k)
        return 0;
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((k == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (k == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return k;
}

/* How strings are escaped: a text line's message, a text field value (in
 * quotes: " and \ too), a JSON string's contents. */
enum al_esc { AL_ESC_TEXT = 0, AL_ESC_TEXT_QUOTED, AL_ESC_JSON };

static void
al_log_esc(enum al_esc mode, char *out, size_t cap, size_t *pos, const char *s, size_t len)
{
    static const char    hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    size_t               o = *pos;

    for (size_t i = 0; i < len;) {
        unsigned c = p[i];
        char     e[8];
        size_t   el = 0, k = 1;

        if (c == '\n' || c == '\r' || c == '\t') {
            e[el++] = '\\';
            e[el++] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
        } else if ((c == '"' || c == '\\') && mode != AL_ESC_TEXT) {
            e[el++] = '\\';
            e[el++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            e[el++] = '\\';
            if (mode == AL_ESC_JSON) {
                memcpy(e + el, "u00", 3);
                el += 3;
            } else {
                e[el++] = 'x';
            }
            e[el++] = hex[c >> 4];
            e[el++] = hex[c & 15];
        } else if (c >= 0x80) {
            k = al_utf8_len(p + i, len - i);
            /* C1 controls (U+0080..U+009F) are as dangerous on a terminal
             * as C0 ones; an invalid byte is shown as its value. */
            if (k == 0 || (k == 2 && c == 0xc2 && p[i + 1] < 0xa0)) {
                unsigned v = k == 0 ? c : p[i + 1];

                if (k == 0)
                    k = 1;
                e[el++] = '\\';
                if (mode == AL_ESC_JSON) {
                    memcpy(e + el, "u00", 3);
                    el += 3;
                } else {
                    e[el++] = 'x';
                }
                e[el++] = hex[v >> 4];
                e[el++] = hex[v & 15];
            } else {
                memcpy(e, p + i, k);
                el = k;
            }
        } else {
            e[el++] = (char)c;
        }
        if (o + el >= cap)
            break; /* never half an escape or half a character */
        memcpy(out + o, e, el);
        o += el;
        i += k;
    }
    *pos = o;
}

void
al_log_escape(enum al_log_format f, char *out, size_t cap, size_t *pos, const char *s, size_t len)
{
    al_log_esc(f == AL_LOG_JSON ? AL_ESC_JSON : AL_ESC_TEXT, out, cap, pos, s, len);
}

static void
al_log_put(char *out, size_t cap, size_t *pos, const char *s)
{
    size_t n = strlen(s);

    if (*pos + n >= cap)
        n = *pos < cap - 1 ? cap - 1 - *pos : 0;
    memcpy(out + *pos, s, n);
    *pos += n;
}

/* "2024-05-01T12:00:00.123Z" */
static void
al_log_time(char *out, size_t outsz)
{
    struct timespec ts;
    struct tm       tm;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    /* (a cut is fine: the buffers hold any real date; the check only sees ints) */
    if (snprintf(out, outsz, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 ts.tv_nsec / 1000000) < 0)
        out[0] = '\0';
}

/* A text value goes in quotes when it would not read back as one word. */
static int
al_log_needs_quotes(const char *s)
{
    if (*s == '\0')
        return 1;
    for (; *s != '\0'; s++) {
        if ((unsigned char)*s <= ' ' || *s == '"' || *s == '=' || *s == '\\' ||
            (unsigned char)*s >= 0x7f)
            return 1;
    }
    return 0;
}

/* Builds and writes one line: the message, then the fields. */
static void
al_log_line(enum al_log_level lvl, const char *msg, size_t msglen, const struct al_log_field *f,
            int n)
{
    char   line[AL_LOG_LINE_MAX];
    char   ts[40], num[32];
    size_t o = 0, cap = sizeof(line) - 4; /* room for the closing "}}\n" */
    int    json = al_log_format_cur == AL_LOG_JSON;

    al_log_time(ts, sizeof(ts));
    if (json) {
        al_log_put(line, cap, &o, "{\"time\":\"");
        al_log_put(line, cap, &o, ts);
        al_log_put(line, cap, &o, "\",\"level\":\"");
        al_log_put(line, cap, &o, al_log_names[lvl]);
        al_log_put(line, cap, &o, "\",\"message\":\"");
        al_log_esc(AL_ESC_JSON, line, cap - 16, &o, msg, msglen);
        al_log_put(line, cap, &o, "\",\"fields\":{");
        for (int i = 0; i < n; i++) {
            size_t save = o;

            al_log_put(line, cap, &o, i > 0 ? ",\"" : "\"");
            al_log_esc(AL_ESC_JSON, line, cap, &o, f[i].key, strlen(f[i].key));
            al_log_put(line, cap, &o, "\":");
            if (f[i].str != NULL) {
                al_log_put(line, cap, &o, "\"");
                al_log_esc(AL_ESC_JSON, line, cap - 1, &o, f[i].str, strlen(f[i].str));
                al_log_put(line, cap, &o, "\"");
            } else {
                snprintf(num, sizeof(num), "%lld", f[i].num);
                al_log_put(line, cap, &o, num);
            }
            if (o + 1 >= cap) { /* no room for the whole field: leave it out */
                o = save;
                break;
            }
        }
        memcpy(line + o, "}}\n", 3);
        o += 3;
    } else {
        snprintf(num, sizeof(num), " %-5s ", al_log_names[lvl]);
        al_log_put(line, cap, &o, ts);
        al_log_put(line, cap, &o, num);
        al_log_esc(AL_ESC_TEXT, line, cap, &o, msg, msglen);
        for (int i = 0; i < n; i++) {
            int q = f[i].str != NULL && al_log_needs_quotes(f[i].str);

            al_log_put(line, cap, &o, " ");
            al_log_put(line, cap, &o, f[i].key);
            al_log_put(line, cap, &o, q ? "=\"" : "=");
            if (f[i].str != NULL) {
                al_log_esc(q ? AL_ESC_TEXT_QUOTED : AL_ESC_TEXT, line, cap - 1, &o, f[i].str,
                           strlen(f[i].str));
            } else {
                snprintf(num, sizeof(num), "%lld", f[i].num);
                al_log_put(line, cap, &o, num);
            }
            if (q)
                al_log_put(line, cap, &o, "\"");
        }
        line[o++] = '\n';
    }
    (void)!write(STDERR_FILENO, line, o);
}

static void al_log_emit(enum al_log_level lvl, const char *suffix, const char *fmt, va_list ap)
    AL_PRINTF(3, 0);

static void
al_log_emit(enum al_log_level lvl, const char *suffix, const char *fmt, va_list ap)
{
    char msg[AL_LOG_LINE_MAX / 2];
    int  n, m;

    if ((int)lvl < al_log_level_cur)
        return;
    n = vsnprintf(msg, sizeof(msg), fmt, ap);
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof(msg))
        n = (int)sizeof(msg) - 1;
    if (suffix != NULL) {
        m = snprintf(msg + n, sizeof(msg) - (size_t)n, ": %s", suffix);
        if (m > 0)
            n += m;
        if ((size_t)n >= sizeof(msg))
            n = (int)sizeof(msg) - 1;
    }
    al_log_line(lvl, msg, (size_t)n, NULL, 0);
}

void
al_log_fields(enum al_log_level lvl, const char *message, const struct al_log_field *f, int n)
{
    if ((int)lvl < al_log_level_cur)
        return;
    al_log_line(lvl, message, strlen(message), f, n);
}

void
al_log_record(const char *message, const struct al_log_field *f, int n)
{
    if (al_log_level_cur == AL_LOG_OFF)
        return;
    al_log_line(AL_LOG_INFO, message, strlen(message), f, n);
}

void
al_vlog(enum al_log_level lvl, const char *fmt, va_list ap)
{
    al_log_emit(lvl, NULL, fmt, ap);
}

void
al_log(enum al_log_level lvl, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    al_log_emit(lvl, NULL, fmt, ap);
    va_end(ap);
}

void
al_log_warn(const char *fmt, ...)
{
    va_list ap;
    char    ebuf[128];
    int     saved = errno;

    va_start(ap, fmt);
    al_log_emit(AL_LOG_WARN, strerror_r(saved, ebuf, sizeof(ebuf)), fmt, ap);
    va_end(ap);
    errno = saved;
}

void
al_fatal(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    al_log_emit(AL_LOG_ERROR, NULL, fmt, ap);
    va_end(ap);
    exit(1);
}
