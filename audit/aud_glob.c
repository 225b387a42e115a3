/*
 * aud_glob.c - the CLI's host globs (`*`, `?`) as SQL LIKE patterns, for
 * both stores' query layers (aud_query.c, aud_pgq.c).
 */
#include "aud_int.h"

#include <string.h>

int
aud_glob_has_meta(const char *s)
{
    return strpbrk(s, "*?") != NULL;
}

int
aud_glob_to_like(const char *glob, char *out, size_t outlen)
{
    size_t o = 0;

    for (const char *p = glob; *p != '\0'; p++) {
        if (o + 3 >= outlen)
            return AL_ERROR;
        switch (*p) {
        case '*':
            out[o++] = '%';
            break;
        case '?':
            out[o++] = '_';
            break;
        case '%':
        case '_':
        case '\\':
            out[o++] = '\\';
            out[o++] = *p;
            break;
        default:
            out[o++] = *p;
            break;
        }
    }
    out[o] = '\0';
    return AL_OK;
}
