/*
 * al_log.c - one line per event on stderr: "ts level message".
 * Lines are built in a local buffer and written with one write(2) so lines
 * from several threads never interleave. Callers never pass header values
 * or secret values (see DESIGN, "Secrets").
 */
#include "common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile int al_log_level_cur = AL_LOG_INFO;

static const char *const al_log_names[] = {"debug", "info", "warn", "error", "off"};

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

static void
al_log_emit(enum al_log_level lvl, const char *suffix, const char *fmt, va_list ap)
{
    char            line[2048];
    struct timespec ts;
    struct tm       tm;
    int             n, m;

    if ((int)lvl < al_log_level_cur)
        return;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s ",
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 ts.tv_nsec / 1000000, al_log_names[lvl]);
    if (n < 0)
        return;
    m = vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
    if (m < 0)
        m = 0;
    n += m;
    if ((size_t)n >= sizeof(line) - 2)
        n = (int)sizeof(line) - 2 - (suffix ? 0 : 0);
    if (suffix != NULL) {
        m = snprintf(line + n, sizeof(line) - (size_t)n - 1, ": %s", suffix);
        if (m > 0)
            n += m;
        if ((size_t)n >= sizeof(line) - 1)
            n = (int)sizeof(line) - 2;
    }
    /* Control bytes never reach the terminal or a log collector verbatim. */
    for (int i = 0; i < n; i++) {
        if ((unsigned char)line[i] < 0x20 || line[i] == 0x7f)
            line[i] = '?';
    }
    line[n++] = '\n';
    (void)!write(STDERR_FILENO, line, (size_t)n);
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
