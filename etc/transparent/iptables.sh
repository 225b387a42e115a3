#!/bin/sh
# iptables.sh - the iptables equivalent of airlock-transparent.sh, for hosts
# that manage their firewall with iptables (legacy or iptables-nft). Same
# model and options; everything lives in AIRLOCK_* chains jumped to from
# the built-in chains for the sandbox interface only, so `down` removes
# exactly what `up` added. The chains are shared: one sandbox subnet per
# host (the nftables script takes --table for several). See README.md.
#
#   iptables.sh up   --subnet 10.200.0.0/24 --iface IF [--proxy-port 3129]
#                    [--ports 80,443,...] [--dns 10.200.0.1]
#   iptables.sh down --iface IF
set -eu

subnet=
iface=
proxy_port=3129
ports=80,443
dns=

usage() {
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}
die() {
    echo "airlock iptables: $*" >&2
    exit 1
}

[ $# -ge 1 ] || usage
cmd=$1
shift
while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || usage
    case $1 in
    --subnet) subnet=$2 ;;
    --iface) iface=$2 ;;
    --proxy-port) proxy_port=$2 ;;
    --ports) ports=$2 ;;
    --dns) dns=$2 ;;
    *) usage ;;
    esac
    shift 2
done

is_port() {
    case $1 in '' | *[!0-9]*) return 1 ;; esac
    [ "$1" -ge 1 ] && [ "$1" -le 65535 ]
}

[ -n "$iface" ] || die "--iface is required"
echo "$iface" | grep -Eq '^[A-Za-z0-9_.-]{1,15}$' || die "bad --iface '$iface'"
command -v iptables >/dev/null 2>&1 || die "iptables not found"
command -v ip6tables >/dev/null 2>&1 || die "ip6tables not found"

# The jumps from built-in chains: "table chain target" per line.
jumps="nat PREROUTING AIRLOCK_PRE
filter INPUT AIRLOCK_IN
filter FORWARD AIRLOCK_FWD"
jumps6="filter INPUT AIRLOCK_DROP6
filter FORWARD AIRLOCK_DROP6"

remove() { # remove BIN JUMPS: jumps first, then the chains
    bin=$1
    echo "$2" | while read -r t c target; do
        while $bin -t "$t" -C "$c" -i "$iface" -j "$target" 2>/dev/null; do
            $bin -t "$t" -D "$c" -i "$iface" -j "$target"
        done
    done
    echo "$2" | while read -r t c target; do
        if $bin -t "$t" -n -L "$target" >/dev/null 2>&1; then
            $bin -t "$t" -F "$target"
            # other interfaces' jumps may still use it; then keep it
            $bin -t "$t" -X "$target" 2>/dev/null || true
        fi
    done
}

case $cmd in
up)
    [ -n "$subnet" ] || die "--subnet is required"
    echo "$subnet" | grep -Eq '^([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2}$' ||
        die "bad --subnet '$subnet' (want an IPv4 CIDR)"
    is_port "$proxy_port" || die "bad --proxy-port '$proxy_port'"
    n=0
    for p in $(echo "$ports" | tr ',' ' '); do
        is_port "$p" || die "bad port '$p' in --ports"
        n=$((n + 1))
    done
    if [ "$n" -lt 1 ] || [ "$n" -gt 15 ]; then
        die "--ports takes 1 to 15 ports (multiport limit)"
    fi
    if [ -n "$dns" ]; then
        echo "$dns" | grep -Eq '^([0-9]{1,3}\.){3}[0-9]{1,3}$' || die "bad --dns '$dns'"
    fi
    remove iptables "$jumps"
    remove ip6tables "$jumps6"
    iptables -t nat -N AIRLOCK_PRE 2>/dev/null || iptables -t nat -F AIRLOCK_PRE
    iptables -N AIRLOCK_IN 2>/dev/null || iptables -F AIRLOCK_IN
    iptables -N AIRLOCK_FWD 2>/dev/null || iptables -F AIRLOCK_FWD
    ip6tables -N AIRLOCK_DROP6 2>/dev/null || ip6tables -F AIRLOCK_DROP6

    # sandbox TCP to a listed port, any destination -> airlock
    iptables -t nat -A AIRLOCK_PRE -s "$subnet" -p tcp -m multiport --dports "$ports" \
        -j REDIRECT --to-ports "$proxy_port"
    iptables -A AIRLOCK_IN -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
    # only redirected connections reach airlock from the sandbox
    iptables -A AIRLOCK_IN -s "$subnet" -p tcp --dport "$proxy_port" \
        -m conntrack --ctstate DNAT -j ACCEPT
    if [ -n "$dns" ]; then
        for chain in AIRLOCK_IN AIRLOCK_FWD; do
            for proto in udp tcp; do
                iptables -A "$chain" -s "$subnet" -d "$dns" -p "$proto" --dport 53 -j ACCEPT
            done
        done
    fi
    iptables -A AIRLOCK_IN -j DROP
    iptables -A AIRLOCK_FWD -j DROP
    ip6tables -A AIRLOCK_DROP6 -j DROP

    # jumps go first in the built-in chains, for this interface only
    echo "$jumps" | while read -r t c target; do
        iptables -t "$t" -I "$c" 1 -i "$iface" -j "$target"
    done
    echo "$jumps6" | while read -r t c target; do
        ip6tables -t "$t" -I "$c" 1 -i "$iface" -j "$target"
    done
    echo "airlock iptables: $subnet on $iface, tcp {$ports} -> :$proxy_port${dns:+, dns to $dns}"
    ;;
down)
    remove iptables "$jumps"
    remove ip6tables "$jumps6"
    echo "airlock iptables: rules for $iface removed"
    ;;
*)
    usage
    ;;
esac
