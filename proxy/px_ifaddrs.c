/*
 * px_ifaddrs.c - the host's own addresses for the address guard (see
 * px_ifaddrs.h): getifaddrs on the main thread, netlink address
 * notifications plus a periodic re-read, and a per-thread view of the
 * current snapshot that costs one atomic load per look.
 */
#include "px.h"
#include "px_ifaddrs.h"

#include <errno.h>
#include <ifaddrs.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static pthread_mutex_t       px_if_lock = PTHREAD_MUTEX_INITIALIZER;
static struct px_ifaddrs    *px_if_cur; /* under px_if_lock */
static _Atomic unsigned long px_if_gen; /* bumped (under the lock) on every swap */

static _Thread_local struct px_ifaddrs *px_if_tl; /* this thread's reference */
static _Thread_local unsigned long      px_if_tl_gen;
static pthread_key_t                    px_if_key;
static pthread_once_t                   px_if_key_once = PTHREAD_ONCE_INIT;

static int      px_if_nl = -1;
static ev_io    px_if_nl_w;
static ev_timer px_if_timer;
static int      px_if_running;

static void
px_if_unref(struct px_ifaddrs *s)
{
    if (s != NULL && atomic_fetch_sub(&s->refs, 1) == 1)
        al_free(s);
}

/* A thread's reference goes when the thread does (workers are joined). */
static void
px_if_key_dtor(void *p)
{
    px_if_unref(p);
}

static void
px_if_key_init(void)
{
    (void)pthread_key_create(&px_if_key, px_if_key_dtor);
}

const struct px_ifaddrs *
px_ifaddrs_view(void)
{
    struct px_ifaddrs *old;

    if (atomic_load_explicit(&px_if_gen, memory_order_acquire) == px_if_tl_gen)
        return px_if_tl;
    (void)pthread_once(&px_if_key_once, px_if_key_init);
    pthread_mutex_lock(&px_if_lock);
    old = px_if_tl;
    px_if_tl = px_if_cur;
    if (px_if_tl != NULL)
        atomic_fetch_add(&px_if_tl->refs, 1);
    px_if_tl_gen = atomic_load_explicit(&px_if_gen, memory_order_relaxed);
    pthread_mutex_unlock(&px_if_lock);
    (void)pthread_setspecific(px_if_key, px_if_tl);
    px_if_unref(old);
    return px_if_tl;
}

static int
px_if_cmp(const void *x, const void *y)
{
    const struct sockaddr_storage *a = x, *b = y;

    if (a->ss_family != b->ss_family)
        return a->ss_family < b->ss_family ? -1 : 1;
    if (a->ss_family == AF_INET)
        return memcmp(&((const struct sockaddr_in *)(const void *)a)->sin_addr,
                      &((const struct sockaddr_in *)(const void *)b)->sin_addr, 4);
    return memcmp(&((const struct sockaddr_in6 *)(const void *)a)->sin6_addr,
                  &((const struct sockaddr_in6 *)(const void *)b)->sin6_addr, 16);
}

/* A fresh snapshot from getifaddrs, or NULL. */
static struct px_ifaddrs *
px_if_read(void)
{
    struct ifaddrs    *ifs, *it;
    struct px_ifaddrs *s;
    int                n = 0, k = 0;

    if (getifaddrs(&ifs) != 0)
        return NULL;
    for (it = ifs; it != NULL; it = it->ifa_next) {
        if (it->ifa_addr != NULL &&
            (it->ifa_addr->sa_family == AF_INET || it->ifa_addr->sa_family == AF_INET6))
            n++;
    }
    s = al_calloc(1, sizeof(*s) + (size_t)n * sizeof(s->a[0]));
    if (s == NULL) {
        freeifaddrs(ifs);
        return NULL;
    }
    atomic_store(&s->refs, 1);
    for (it = ifs; it != NULL && k < n; it = it->ifa_next) {
        struct sockaddr_storage *d = &s->a[k];

        if (it->ifa_addr == NULL)
            continue;
        if (it->ifa_addr->sa_family == AF_INET) {
            ((struct sockaddr_in *)d)->sin_family = AF_INET;
            ((struct sockaddr_in *)d)->sin_addr =
                ((const struct sockaddr_in *)(const void *)it->ifa_addr)->sin_addr;
            k++;
        } else if (it->ifa_addr->sa_family == AF_INET6) {
            ((struct sockaddr_in6 *)d)->sin6_family = AF_INET6;
            ((struct sockaddr_in6 *)d)->sin6_addr =
                ((const struct sockaddr_in6 *)(const void *)it->ifa_addr)->sin6_addr;
            k++;
        }
    }
    freeifaddrs(ifs);
    qsort(s->a, (size_t)k, sizeof(s->a[0]), px_if_cmp);
    s->n = 0;
    for (int i = 0; i < k; i++) {
        if (s->n == 0 || px_if_cmp(&s->a[s->n - 1], &s->a[i]) != 0)
            s->a[s->n++] = s->a[i];
    }
    return s;
}

int
px_ifaddrs_refresh(void)
{
    struct px_ifaddrs *s = px_if_read(), *old;
    int                same;

    if (s == NULL) {
        al_log_warn("host addresses: getifaddrs failed; keeping the last list");
        return -1;
    }
    pthread_mutex_lock(&px_if_lock);
    old = px_if_cur;
    same = old != NULL && old->n == s->n &&
           (s->n == 0 || memcmp(old->a, s->a, (size_t)s->n * sizeof(s->a[0])) == 0);
    if (!same) {
        px_if_cur = s;
        atomic_fetch_add_explicit(&px_if_gen, 1, memory_order_release);
    }
    pthread_mutex_unlock(&px_if_lock);
    if (same) {
        px_if_unref(s);
        return 0;
    }
    if (old == NULL)
        al_log_info("host addresses: %d (each is airlock itself on a wildcard listener's port)",
                    s->n);
    else
        al_log_debug("host addresses changed: now %d", s->n);
    px_if_unref(old);
    return 1;
}

static void
px_if_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)t;
    (void)revents;
    (void)px_ifaddrs_refresh();
}

/* RTM_NEWADDR / RTM_DELADDR: the messages only say "something changed";
 * drain them and read the whole list again (ENOBUFS, lost ones, too). */
static void
px_if_nl_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    char buf[8192];
    int  seen = 0;

    (void)loop;
    (void)revents;
    for (int i = 0; i < 64; i++) {
        ssize_t n = recv(w->fd, buf, sizeof(buf), MSG_DONTWAIT);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == ENOBUFS) { /* the socket overflowed: messages lost */
                seen = 1;
                continue;
            }
            break; /* EAGAIN: drained */
        }
        seen = 1;
    }
    if (seen)
        (void)px_ifaddrs_refresh();
}

int
px_ifaddrs_start(struct ev_loop *loop)
{
    struct sockaddr_nl sn;

    if (px_if_running)
        return AL_OK;
    if (px_ifaddrs_refresh() < 0)
        return AL_ERROR;
    px_if_nl = socket(AF_NETLINK, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (px_if_nl >= 0) {
        memset(&sn, 0, sizeof(sn));
        sn.nl_family = AF_NETLINK;
        sn.nl_groups = RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR;
        if (bind(px_if_nl, (struct sockaddr *)&sn, sizeof(sn)) != 0) {
            close(px_if_nl);
            px_if_nl = -1;
        }
    }
    if (px_if_nl < 0) {
        al_log_warnx("host addresses: no netlink notifications; re-reading every %.0f s",
                     PX_IFADDRS_REFRESH_S);
    } else {
        ev_io_init(&px_if_nl_w, px_if_nl_cb, px_if_nl, EV_READ);
        ev_io_start(loop, &px_if_nl_w);
    }
    ev_timer_init(&px_if_timer, px_if_timer_cb, PX_IFADDRS_REFRESH_S, PX_IFADDRS_REFRESH_S);
    ev_timer_start(loop, &px_if_timer);
    px_if_running = 1;
    return AL_OK;
}

void
px_ifaddrs_stop(struct ev_loop *loop)
{
    if (!px_if_running)
        return;
    ev_timer_stop(loop, &px_if_timer);
    if (px_if_nl >= 0) {
        ev_io_stop(loop, &px_if_nl_w);
        close(px_if_nl);
        px_if_nl = -1;
    }
    px_if_running = 0;
}
