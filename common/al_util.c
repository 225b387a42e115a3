/*
 * al_util.c - small helpers with no better home: range-checked integer and
 * duration parsing, path joining, clocks, constant-time compare.
 */
#include "common.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int
al_parse_long(const char *s, long min, long max, long *out)
{
    char *end = NULL;
    long  v;

    if (s == NULL || *s == '\0' || *s == ' ' || *s == '+')
        return AL_ERROR;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
        return AL_ERROR;
    *out = v;
    return AL_OK;
}

int
al_parse_duration(const char *s, int64_t *seconds)
{
    char   num[32];
    size_t n = s ? strlen(s) : 0;
    long   v, mult = 1;

    if (n == 0 || n >= sizeof(num))
        return AL_ERROR;
    memcpy(num, s, n + 1);
    switch (num[n - 1]) {
    case 's':
        mult = 1;
        break;
    case 'm':
        mult = 60;
        break;
    case 'h':
        mult = 3600;
        break;
    case 'd':
        mult = 86400;
        break;
    case 'w':
        mult = 7 * 86400;
        break;
    default:
        mult = 0;
        break;
    }
    if (mult != 0)
        num[n - 1] = '\0';
    else
        mult = 1;
    if (al_parse_long(num, 0, LONG_MAX / (7 * 86400), &v) != AL_OK)
        return AL_ERROR;
    *seconds = (int64_t)v * mult;
    return AL_OK;
}

char *
al_path_join_dir(const char *base_file, const char *rel)
{
    const char *slash;
    size_t      dlen;
    char       *out;

    if (rel[0] == '/' || base_file == NULL)
        return al_strdup(rel);
    slash = strrchr(base_file, '/');
    if (slash == NULL)
        return al_strdup(rel);
    dlen = (size_t)(slash - base_file);
    out = al_malloc(dlen + 1 + strlen(rel) + 1);
    if (out == NULL)
        return NULL;
    memcpy(out, base_file, dlen);
    out[dlen] = '/';
    memcpy(out + dlen + 1, rel, strlen(rel) + 1);
    return out;
}

int64_t
al_now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t
al_mono_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int
al_ct_equal(const void *a, const void *b, size_t n)
{
    const volatile unsigned char *x = a;
    const volatile unsigned char *y = b;
    unsigned char                 d = 0;

    for (size_t i = 0; i < n; i++)
        d |= (unsigned char)(x[i] ^ y[i]);
    return d == 0;
}

void
al_strlcpy(char *dst, size_t dstsz, const char *src)
{
    if (memccpy(dst, src, '\0', dstsz - 1) == NULL)
        dst[dstsz - 1] = '\0';
}

void
al_strlcpy_n(char *dst, size_t dstsz, const char *src, size_t n)
{
    size_t k = n < dstsz - 1 ? n : dstsz - 1;
    char  *end = memccpy(dst, src, '\0', k);

    if (end == NULL)
        dst[k] = '\0';
}

int
al_strcaseeq_n(const char *s, size_t n, const char *lit)
{
    size_t i;

    for (i = 0; i < n; i++) {
        unsigned char a = (unsigned char)s[i], b = (unsigned char)lit[i];

        if (b == '\0')
            return 0;
        if (a >= 'A' && a <= 'Z')
            a = (unsigned char)(a + 32);
        if (b >= 'A' && b <= 'Z')
            b = (unsigned char)(b + 32);
        if (a != b)
            return 0;
    }
    return lit[i] == '\0';
}

/* Shared by the policy and secrets loaders (neither may include the other). */
int
al_host_labels_ok(const char *s, size_t len, int *nlabels, const char **why)
{
    size_t start = 0;
    int    n = 0, numeric = 1;

    if (len == 0 || len > 253) {
        *why = len == 0 ? "empty host name" : "host name longer than 253 bytes";
        return AL_ERROR;
    }
    for (size_t i = 0; i <= len; i++) {
        if (i == len || s[i] == '.') {
            size_t ll = i - start;

            if (ll == 0) {
                *why = "empty label in host name";
                return AL_ERROR;
            }
            if (ll > 63) {
                *why = "label longer than 63 bytes in host name";
                return AL_ERROR;
            }
            if (s[start] == '-' || s[i - 1] == '-') {
                *why = "label starts or ends with '-' in host name";
                return AL_ERROR;
            }
            n++;
            if (i < len)
                numeric = 1;
            start = i + 1;
            continue;
        }
        if (s[i] >= '0' && s[i] <= '9')
            continue;
        numeric = 0;
        if ((s[i] >= 'a' && s[i] <= 'z') || s[i] == '-' || s[i] == '_')
            continue;
        if ((unsigned char)s[i] >= 0x80)
            *why = "non-ASCII host name: write it in punycode (xn--...)";
        else
            *why = "invalid character in host name (allowed: letters, digits, '-', '_', '.')";
        return AL_ERROR;
    }
    if (numeric) {
        *why = "last label is numeric: not a host name (write IPv4 addresses as a.b.c.d)";
        return AL_ERROR;
    }
    *nlabels = n;
    return AL_OK;
}
