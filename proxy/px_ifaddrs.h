/*
 * px_ifaddrs.h - the host's own addresses (every interface, IPv4 and IPv6),
 * for the address guard: a listener bound to 0.0.0.0 or [::] answers on all
 * of them, so each is airlock itself on that listener's port.
 *
 * The list is an immutable, refcounted snapshot. The main thread reads it
 * (getifaddrs) at start, again when the kernel announces an address change
 * (netlink RTMGRP_IPV4_IFADDR / RTMGRP_IPV6_IFADDR), and every
 * PX_IFADDRS_REFRESH_S seconds in case a notification was lost; a changed
 * list replaces the current one. Workers never call getifaddrs: each thread
 * keeps a reference to the snapshot it last saw and compares one atomic
 * generation counter per look, taking a lock only when the list changed.
 */
#ifndef PX_IFADDRS_H
#define PX_IFADDRS_H

#include <stdatomic.h>
#include <sys/socket.h>

#include <ev.h>

#define PX_IFADDRS_REFRESH_S 2.0 /* safety-net re-read; netlink is the fast path */

struct px_ifaddrs {
    _Atomic int             refs;
    int                     n;
    struct sockaddr_storage a[]; /* port 0, sorted, no duplicates */
};

/* Reads the list and starts the netlink watcher and the periodic re-read on
 * `loop` (the main thread's). AL_OK, or AL_ERROR when the first read fails
 * (the guard would not know the host's public addresses). */
int  px_ifaddrs_start(struct ev_loop *loop);
void px_ifaddrs_stop(struct ev_loop *loop); /* the last snapshot stays in force */
/* Re-reads now; 1 when the list changed, 0 when not, -1 on error. */
int px_ifaddrs_refresh(void);
/* The calling thread's view of the current snapshot, or NULL before the
 * first read. Valid until this thread's next call (lock-free unless the
 * list changed since). */
const struct px_ifaddrs *px_ifaddrs_view(void);

#endif
