/*
 * px_origdst.c - original destination of a redirected connection.
 *
 * DESIGN
 *
 * When nftables/iptables redirects a sandbox's connection to airlock, the
 * socket's local address is airlock's listener; conntrack still holds the
 * original tuple, and the kernel hands it back through getsockopt():
 * SOL_IP/SO_ORIGINAL_DST for IPv4, SOL_IPV6/IP6T_SO_ORIGINAL_DST for IPv6.
 * The family is taken from getsockname(), because an AF_INET6 listener
 * bound to :: also accepts IPv4 connections (v4-mapped), and those are
 * IPv4 conntrack entries. Stateless; nothing here allocates or logs.
 */
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6/ip6_tables.h>

#include "common.h"
#include "px_origdst.h"

int
px_orig_dst(int fd, struct sockaddr_storage *out)
{
    struct sockaddr_storage local, orig;
    socklen_t               slen = sizeof(local);
    int                     rc = AL_ERROR, v4 = 0;

    memset(&local, 0, sizeof(local));
    memset(&orig, 0, sizeof(orig));
    if (out == NULL) {
        errno = EINVAL;
        goto out;
    }
    if (getsockname(fd, (struct sockaddr *)&local, &slen) == -1)
        goto out;
    if (local.ss_family == AF_INET) {
        v4 = 1;
    } else if (local.ss_family == AF_INET6) {
        v4 = IN6_IS_ADDR_V4MAPPED(&((struct sockaddr_in6 *)&local)->sin6_addr);
    } else {
        errno = EAFNOSUPPORT;
        goto out;
    }
    if (v4) {
        slen = sizeof(struct sockaddr_in);
        if (getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &orig, &slen) == -1)
            goto out;
        orig.ss_family = AF_INET;
    } else {
        slen = sizeof(struct sockaddr_in6);
        if (getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, &orig, &slen) == -1)
            goto out;
        orig.ss_family = AF_INET6;
    }
    memcpy(out, &orig, sizeof(orig));
    rc = AL_OK;
out:
    return rc;
}
