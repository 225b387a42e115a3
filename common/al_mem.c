/*
 * al_mem.c - allocation wrappers. Everything allocates through these so a
 * test can make the Nth allocation fail (al_mem_fail_after) and check that
 * each caller reports the failure instead of crashing.
 */
#include "common.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static _Atomic long al_mem_countdown = 0;

void
al_mem_fail_after(long n)
{
    atomic_store(&al_mem_countdown, n);
}

static int
al_mem_should_fail(void)
{
    long v = atomic_load_explicit(&al_mem_countdown, memory_order_relaxed);

    if (v <= 0)
        return 0;
    return atomic_fetch_sub(&al_mem_countdown, 1) == 1;
}

void *
al_malloc(size_t n)
{
    if (al_mem_should_fail())
        return NULL;
    return malloc(n == 0 ? 1 : n);
}

void *
al_calloc(size_t n, size_t size)
{
    if (al_mem_should_fail())
        return NULL;
    return calloc(n == 0 ? 1 : n, size == 0 ? 1 : size);
}

void *
al_realloc(void *p, size_t n)
{
    if (al_mem_should_fail())
        return NULL;
    return realloc(p, n == 0 ? 1 : n);
}

char *
al_strndup(const char *s, size_t n)
{
    char *d = al_malloc(n + 1);

    if (d == NULL)
        return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *
al_strdup(const char *s)
{
    return al_strndup(s, strlen(s));
}

void
al_free(void *p)
{
    free(p);
}
