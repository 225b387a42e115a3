/*
 * sec_vault.c - memory for secret values: page-backed, mlock'ed, excluded
 * from core dumps and from forked children, wiped before it is returned.
 * Also the wipe-on-grow append used for every buffer that may receive a
 * value (al_dbuf_add would realloc and leave the old copy in freed memory).
 *
 * mlock can fail (RLIMIT_MEMLOCK); that is reported to the caller, which
 * turns it into a warning: the memory is still wiped and not dumped.
 */
#include "sec_int.h"

#include <openssl/crypto.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

void *
sec_vault_alloc(size_t n, size_t *mapped, int *locked)
{
    long   pg = sysconf(_SC_PAGESIZE);
    size_t psz = pg > 0 ? (size_t)pg : 4096;
    size_t len = ((n == 0 ? 1 : n) + psz - 1) / psz * psz;
    void  *p;

    *locked = 0;
    *mapped = 0;
    p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
#ifdef MADV_DONTDUMP
    (void)madvise(p, len, MADV_DONTDUMP);
#endif
#ifdef MADV_WIPEONFORK
    (void)madvise(p, len, MADV_WIPEONFORK);
#endif
    if (mlock(p, len) == 0)
        *locked = 1;
    *mapped = len;
    return p;
}

void
sec_vault_free(void *p, size_t mapped)
{
    if (p == NULL || mapped == 0)
        return;
    OPENSSL_cleanse(p, mapped);
    (void)munlock(p, mapped);
    (void)munmap(p, mapped);
}

void
sec_wipe_free(void *p, size_t n)
{
    if (p == NULL)
        return;
    OPENSSL_cleanse(p, n);
    al_free(p);
}

int
sec_dbuf_add(struct al_dbuf *b, const void *p, size_t n)
{
    if (n > b->max - b->len)
        return AL_DECLINED;
    if (b->len + n + 1 > b->cap) {
        size_t ncap = b->cap ? b->cap : 256;
        char  *nd;

        while (ncap < b->len + n + 1)
            ncap *= 2;
        if (ncap > b->max + 1)
            ncap = b->max + 1;
        nd = al_malloc(ncap);
        if (nd == NULL)
            return AL_ERROR;
        if (b->data != NULL) {
            memcpy(nd, b->data, b->len);
            sec_wipe_free(b->data, b->cap);
        }
        b->data = nd;
        b->cap = ncap;
    }
    if (n > 0)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return AL_OK;
}

int
sec_dbuf_adds(struct al_dbuf *b, const char *s)
{
    return sec_dbuf_add(b, s, strlen(s));
}

void
sec_dbuf_wipe(struct al_dbuf *b)
{
    if (b == NULL)
        return;
    if (b->data != NULL)
        sec_wipe_free(b->data, b->cap);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}
