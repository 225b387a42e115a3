#!/bin/sh
# demo-netns.sh - a demo sandbox: network namespace "alsbx" joined to the
# host by a veth pair (host side alsbx-host 10.200.0.1/24, sandbox side eth0
# 10.200.0.2/24, default route via the host side), confined to airlock by
# airlock-transparent.sh (or iptables.sh with --backend iptables).
#
#   demo-netns.sh up   [--proxy-port 3129] [--ports 80,443] [--backend nft|iptables]
#   demo-netns.sh down [--backend nft|iptables]
#
# Then run airlock with a listener {"addr": "10.200.0.1:3129", "mode":
# "transparent"} and try: ip netns exec alsbx curl -v https://example.com/
set -eu

here=$(cd "$(dirname "$0")" && pwd)
ns=alsbx
host_if=alsbx-host
host_addr=10.200.0.1
sbx_addr=10.200.0.2
subnet=10.200.0.0/24
proxy_port=3129
ports=80,443
backend=nft

usage() {
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}
die() {
    echo "demo-netns: $*" >&2
    exit 1
}

[ $# -ge 1 ] || usage
cmd=$1
shift
while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || usage
    case $1 in
    --proxy-port) proxy_port=$2 ;;
    --ports) ports=$2 ;;
    --backend) backend=$2 ;;
    *) usage ;;
    esac
    shift 2
done
case $backend in nft | iptables) ;; *) die "--backend is nft or iptables" ;; esac

rules() { # rules up|down
    if [ "$backend" = nft ]; then
        if [ "$1" = up ]; then
            "$here/airlock-transparent.sh" up --subnet "$subnet" --iface "$host_if" \
                --proxy-port "$proxy_port" --ports "$ports" --dns "$host_addr"
        else
            "$here/airlock-transparent.sh" down
        fi
    else
        if [ "$1" = up ]; then
            "$here/iptables.sh" up --subnet "$subnet" --iface "$host_if" \
                --proxy-port "$proxy_port" --ports "$ports" --dns "$host_addr"
        else
            "$here/iptables.sh" down --iface "$host_if"
        fi
    fi
}

case $cmd in
up)
    if ip netns list | grep -qw "^$ns"; then
        die "namespace $ns exists; run '$0 down' first"
    fi
    ip netns add "$ns"
    # from here on, undo everything if a step fails
    trap 'echo "demo-netns: setup failed, undoing" >&2; "$0" down --backend "$backend" >/dev/null 2>&1' EXIT
    ip link add "$host_if" type veth peer name alsbx-peer
    ip link set alsbx-peer netns "$ns"
    ip -n "$ns" link set alsbx-peer name eth0
    ip addr add "$host_addr/24" dev "$host_if"
    ip link set "$host_if" up
    ip -n "$ns" addr add "$sbx_addr/24" dev eth0
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via "$host_addr"
    # processes started with `ip netns exec alsbx` see this resolv.conf
    mkdir -p "/etc/netns/$ns"
    echo "nameserver $host_addr" >"/etc/netns/$ns/resolv.conf"
    rules up
    trap - EXIT
    echo "demo-netns: $ns up: sandbox $sbx_addr, host side $host_addr on $host_if"
    echo "demo-netns: run airlock with a transparent listener on $host_addr:$proxy_port,"
    echo "demo-netns: a resolver on $host_addr:53 if the sandbox needs names, then:"
    echo "demo-netns:   ip netns exec $ns curl -v https://example.com/"
    ;;
down)
    rules down || true
    if ip link show "$host_if" >/dev/null 2>&1; then
        ip link del "$host_if"
    fi
    if ip netns list | grep -qw "^$ns"; then
        ip netns del "$ns"
    fi
    rm -rf "/etc/netns/$ns"
    echo "demo-netns: $ns removed"
    ;;
*)
    usage
    ;;
esac
