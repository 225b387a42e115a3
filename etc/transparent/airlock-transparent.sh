#!/bin/sh
# airlock-transparent.sh - load or remove the nftables ruleset that sends a
# sandbox subnet's TCP to airlock's transparent listener and drops the rest
# of its egress (DNS to one resolver excepted). See README.md.
#
#   airlock-transparent.sh up   --subnet 10.200.0.0/24 --iface IF [--proxy-port 3129]
#                               [--ports 80,443,...] [--dns 10.200.0.1] [--table airlock]
#   airlock-transparent.sh down [--table airlock]
#   airlock-transparent.sh print ...same options as up...   (show, do not load)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
tmpl="$here/nftables.conf.tmpl"
table=airlock
subnet=
iface=
proxy_port=3129
ports=80,443
dns=

usage() {
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}
die() {
    echo "airlock-transparent: $*" >&2
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
    --table) table=$2 ;;
    *) usage ;;
    esac
    shift 2
done

is_port() {
    case $1 in '' | *[!0-9]*) return 1 ;; esac
    [ "$1" -ge 1 ] && [ "$1" -le 65535 ]
}
is_ipv4() {
    echo "$1" | grep -Eq '^([0-9]{1,3}\.){3}[0-9]{1,3}$'
}

echo "$table" | grep -Eq '^[A-Za-z][A-Za-z0-9_]{0,31}$' || die "bad --table '$table'"
command -v nft >/dev/null 2>&1 || die "nft not found (install nftables)"

render() {
    [ -n "$subnet" ] || die "--subnet is required"
    [ -n "$iface" ] || die "--iface is required"
    echo "$subnet" | grep -Eq '^([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2}$' ||
        die "bad --subnet '$subnet' (want an IPv4 CIDR)"
    echo "$iface" | grep -Eq '^[A-Za-z0-9_.-]{1,15}$' || die "bad --iface '$iface'"
    is_port "$proxy_port" || die "bad --proxy-port '$proxy_port'"
    plist=
    for p in $(echo "$ports" | tr ',' ' '); do
        is_port "$p" || die "bad port '$p' in --ports"
        plist="${plist:+$plist, }$p"
    done
    [ -n "$plist" ] || die "--ports is empty"
    if [ -n "$dns" ]; then
        is_ipv4 "$dns" || die "bad --dns '$dns' (want an IPv4 address)"
        drop_dns=
    else
        drop_dns='/#dns$/d'
    fi
    sed -e "${drop_dns}" -e 's/ *#dns$//' \
        -e "s|@TABLE@|$table|g" -e "s|@IFACE@|$iface|g" -e "s|@SUBNET@|$subnet|g" \
        -e "s|@PROXY_PORT@|$proxy_port|g" -e "s|@PORTS@|$plist|g" -e "s|@DNS@|$dns|g" \
        "$tmpl"
}

case $cmd in
up)
    ruleset=$(render) || exit 1
    printf '%s\n' "$ruleset" | nft -f - || die "nft refused the ruleset (run '$0 print ...' to see it)"
    echo "airlock-transparent: table inet $table loaded: $subnet on $iface, tcp {$ports} -> :$proxy_port${dns:+, dns to $dns}"
    ;;
print)
    render
    ;;
down)
    if nft list table inet "$table" >/dev/null 2>&1; then
        nft delete table inet "$table"
        echo "airlock-transparent: table inet $table removed"
    else
        echo "airlock-transparent: table inet $table not present"
    fi
    ;;
*)
    usage
    ;;
esac
