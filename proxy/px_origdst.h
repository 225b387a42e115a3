/*
 * px_origdst.h - the destination a transparently redirected connection was
 * addressed to before netfilter NAT (nftables `redirect`/`dnat`, iptables
 * REDIRECT/DNAT) rewrote it to airlock's listener.
 */
#ifndef PX_ORIGDST_H
#define PX_ORIGDST_H

#include <sys/socket.h>

/*
 * Asks conntrack for the original destination of the accepted TCP socket
 * `fd` (SO_ORIGINAL_DST, or IP6T_SO_ORIGINAL_DST for IPv6). An IPv4
 * connection accepted on an AF_INET6 socket (v4-mapped) is returned as
 * AF_INET. Returns AL_OK with *out filled (address and port, network order
 * as usual), or AL_ERROR with errno set (ENOENT: no conntrack entry, i.e. the
 * connection was not NATed and conntrack is not tracking this netns).
 * A connection that reached the listener without NAT reports its own local
 * address: callers compare with getsockname() for the loop guard.
 */
int px_orig_dst(int fd, struct sockaddr_storage *out);

#endif
