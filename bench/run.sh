#!/usr/bin/env bash
# bench/run.sh - airlock performance benchmark (`make bench`).
#
# Starts, on 127.0.0.1 only, on free ports, inside a temporary directory with
# its own config and pid files:
#   origin    nginx serving /100b and /64k over http and https (self-signed)
#   nginx-rp  nginx reverse proxy to the origin with an upstream keep-alive pool
#   squid     forward proxy (no cache, no access log)
#   tinyproxy forward proxy
#   airlock   $AIRLOCK run --config cfg.json (forward mode)
# then measures:
#   1. HTTP 100 B keep-alive, 50 connections (wrk; absolute-form via proxy.lua)
#   2. CONNECT tunnel, 64 KiB responses (hey -x over https; and connect_bench
#      doing plain keep-alive GETs inside the tunnel)
#   3. RSS per idle CONNECT tunnel, 2000 tunnels (connect_bench idle; run
#      first, on freshly started proxies)
# and prints a table with ratios and the targets from the issue. The table is
# also written to bench/results/latest.txt.
#
# Environment knobs (defaults in brackets):
#   AIRLOCK   path of the airlock binary [build-release/proxy/airlock]
#   DURATION  seconds per measurement round [5]  WARMUP  warm-up seconds [1]
#   ROUNDS    rounds, interleaved over the targets; the best round is kept [2]
#   CONNS     concurrent connections [50]      TUNNELS  idle tunnels [2000]
#   TUNNEL_GET  1: each idle tunnel carries one 100 B GET before idling [1]
#   ONLY      space-separated subset of "direct nginx-rp airlock squid tinyproxy"
#   AUDIT=0   airlock without its audit file ("db": null), to see what the rows cost
#   SKIP_INSTALL=1  never run apt-get
set -u

export PATH="$PATH:/usr/sbin:/sbin"
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
AIRLOCK=${AIRLOCK:-$ROOT/build-release/proxy/airlock}
case $AIRLOCK in /*) ;; *) AIRLOCK=$ROOT/$AIRLOCK ;; esac
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-2}
WARMUP=${WARMUP:-1}
CONNS=${CONNS:-50}
TUNNELS=${TUNNELS:-2000}
TUNNEL_GET=${TUNNEL_GET:-1}
ONLY=${ONLY:-direct nginx-rp airlock squid tinyproxy}
RESULTS_DIR=$BENCH_DIR/results
T_START=$(date +%s)

log() { printf '[bench %3ds] %s\n' "$(($(date +%s) - T_START))" "$*" >&2; }
want() { case " $ONLY " in *" $1 "*) return 0 ;; esac; return 1; }

# ---------------------------------------------------------------- tools
APT_PKGS="wrk hey squid tinyproxy nginx"
missing=()
for t in wrk hey squid tinyproxy nginx openssl cc; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && [ "${SKIP_INSTALL:-0}" != 1 ]; then
        log "installing: $APT_PKGS (missing: ${missing[*]})"
        export DEBIAN_FRONTEND=noninteractive
        if ! apt-get install -y $APT_PKGS openssl gcc >/dev/null 2>&1; then
            apt-get update -qq >/dev/null 2>&1
            apt-get install -y $APT_PKGS openssl gcc >/dev/null || log "apt-get install failed"
        fi
    else
        log "missing tools: ${missing[*]}; install them with:"
        log "  sudo apt-get install -y $APT_PKGS"
    fi
fi
for t in wrk nginx openssl cc; do
    command -v "$t" >/dev/null 2>&1 || { log "fatal: $t is required"; exit 1; }
done
HAVE_HEY=0; command -v hey >/dev/null 2>&1 && HAVE_HEY=1
HAVE_SQUID=0; command -v squid >/dev/null 2>&1 && HAVE_SQUID=1
HAVE_TINY=0; command -v tinyproxy >/dev/null 2>&1 && HAVE_TINY=1

# ---------------------------------------------------------------- sandbox
TMP=$(mktemp -d /tmp/airlock-bench.XXXXXX) || exit 1
chmod 755 "$TMP" # nginx workers / squid / tinyproxy may drop to nobody/proxy
# Shared with run_tls.sh, run_transparent.py and run_audit.sh: process
# tracking, cleanup, ports, RSS, ratios.
# shellcheck source=extra_lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/extra_lib.sh"
PIDS=()          # every background process we started, by PID
NAMES=()

trap cleanup EXIT
trap 'log interrupted; exit 130' INT TERM

# Start "$@" in the background with output in $TMP/$name.out; sets LAST_PID.
start_bg() {
    local name=$1
    shift
    "$@" >"$TMP/$name.out" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    NAMES+=("$name")
}

# Wait until 127.0.0.1:$2 accepts and pid $1 is alive (up to $3 s).
wait_port() {
    local pid=$1 port=$2 secs=${3:-10} i
    for ((i = 0; i < secs * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || return 1
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

# Raise the fd limit for everything started from here on (2000 tunnels need
# ~4000 descriptors in the proxy).
hard=$(ulimit -Hn)
if [ "$hard" = unlimited ] || [ "$hard" -ge 65536 ]; then ulimit -n 65536; else ulimit -n "$hard"; fi
NOFILE=$(ulimit -n)
if [ "$NOFILE" -lt $((TUNNELS * 2 + 200)) ]; then
    log "warning: fd limit $NOFILE is low for $TUNNELS tunnels"
fi

P_ORIGIN=$(pick_port)
P_ORIGIN_TLS=$(pick_port)
P_RP=$(pick_port)
P_SQUID=$(pick_port)
P_TINY=$(pick_port)
P_AIRLOCK=$(pick_port)

# ---------------------------------------------------------------- helper client
CB=$TMP/connect_bench
if ! cc -O2 -o "$CB" "$BENCH_DIR/connect_bench.c" 2>"$TMP/cc.err"; then
    cat "$TMP/cc.err" >&2
    log "fatal: cannot compile connect_bench.c"
    exit 1
fi

# ---------------------------------------------------------------- origin
mkdir -p "$TMP/www" "$TMP/origin/tmp"
head -c 100 /dev/zero | tr '\0' 'a' >"$TMP/www/100b"
head -c 65536 /dev/zero | tr '\0' 'b' >"$TMP/www/64k"
chmod -R a+rX "$TMP/www"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj /CN=127.0.0.1 -days 2 -keyout "$TMP/origin/key.pem" -out "$TMP/origin/cert.pem" \
    >/dev/null 2>&1 || { log "fatal: openssl could not make a certificate"; exit 1; }

nginx_common() { # dir
    cat <<EOF
worker_processes 1;
worker_rlimit_nofile $NOFILE;
daemon off;
master_process on;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections $((NOFILE / 2)); }
EOF
}
nginx_http_common() { # dir
    cat <<EOF
    access_log off;
    default_type application/octet-stream;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
    client_header_timeout 300s;
    tcp_nodelay on;
    client_body_temp_path $1/tmp/body;
    proxy_temp_path $1/tmp/proxy;
    fastcgi_temp_path $1/tmp/fastcgi;
    uwsgi_temp_path $1/tmp/uwsgi;
    scgi_temp_path $1/tmp/scgi;
EOF
}

{
    nginx_common "$TMP/origin"
    echo "http {"
    nginx_http_common "$TMP/origin"
    cat <<EOF
    sendfile on;
    server {
        listen 127.0.0.1:$P_ORIGIN;
        root $TMP/www;
    }
    server {
        listen 127.0.0.1:$P_ORIGIN_TLS ssl;
        ssl_certificate $TMP/origin/cert.pem;
        ssl_certificate_key $TMP/origin/key.pem;
        root $TMP/www;
    }
}
EOF
} >"$TMP/origin/nginx.conf"
start_bg origin nginx -e "$TMP/origin/error.log" -p "$TMP/origin" -c "$TMP/origin/nginx.conf"
PID_ORIGIN=$LAST_PID
if ! wait_port "$PID_ORIGIN" "$P_ORIGIN" || ! wait_port "$PID_ORIGIN" "$P_ORIGIN_TLS"; then
    cat "$TMP/origin.out" "$TMP/origin/error.log" >&2 2>/dev/null
    log "fatal: origin nginx did not start"
    exit 1
fi
log "origin nginx pid $PID_ORIGIN on :$P_ORIGIN (http) :$P_ORIGIN_TLS (https)"

# ---------------------------------------------------------------- nginx reverse proxy
declare -A UP=() PID_OF=() PORT_OF=()
if want nginx-rp; then
    mkdir -p "$TMP/rp/tmp"
    {
        nginx_common "$TMP/rp"
        echo "http {"
        nginx_http_common "$TMP/rp"
        cat <<EOF
    upstream origin {
        server 127.0.0.1:$P_ORIGIN;
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$P_RP;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    } >"$TMP/rp/nginx.conf"
    start_bg nginx-rp nginx -e "$TMP/rp/error.log" -p "$TMP/rp" -c "$TMP/rp/nginx.conf"
    if wait_port "$LAST_PID" "$P_RP"; then
        UP[nginx-rp]=1; PID_OF[nginx-rp]=$LAST_PID; PORT_OF[nginx-rp]=$P_RP
        log "nginx-rp pid $LAST_PID on :$P_RP"
    else
        log "nginx-rp did not start: $(tail -3 "$TMP/rp/error.log" 2>/dev/null)"
    fi
fi

# ---------------------------------------------------------------- squid
if want squid && [ $HAVE_SQUID = 1 ]; then
    mkdir -p "$TMP/squid"
    chmod 1777 "$TMP/squid"
    cat >"$TMP/squid/squid.conf" <<EOF
http_port 127.0.0.1:$P_SQUID
pid_filename $TMP/squid/squid.pid
cache_log $TMP/squid/cache.log
access_log none
cache_store_log none
logfile_rotate 0
netdb_filename none
coredump_dir $TMP/squid
cache deny all
http_access allow localhost
http_access deny all
max_filedescriptors $NOFILE
shutdown_lifetime 0 seconds
visible_hostname airlock-bench
pinger_enable off
dns_nameservers 127.0.0.1
EOF
    start_bg squid squid -N -f "$TMP/squid/squid.conf"
    if wait_port "$LAST_PID" "$P_SQUID" 20; then
        UP[squid]=1; PID_OF[squid]=$LAST_PID; PORT_OF[squid]=$P_SQUID
        log "squid pid $LAST_PID on :$P_SQUID"
    else
        log "squid did not start: $(tail -3 "$TMP/squid/cache.log" "$TMP/squid.out" 2>/dev/null)"
    fi
fi

# ---------------------------------------------------------------- tinyproxy
if want tinyproxy && [ $HAVE_TINY = 1 ]; then
    mkdir -p "$TMP/tinyproxy"
    chmod 1777 "$TMP/tinyproxy"
    {
        if [ "$(id -u)" = 0 ]; then
            echo "User nobody"
            echo "Group $(id -gn nobody 2>/dev/null || echo nogroup)"
        fi
        cat <<EOF
Port $P_TINY
Listen 127.0.0.1
Timeout 600
MaxClients $((TUNNELS + 500))
LogFile "$TMP/tinyproxy/tinyproxy.log"
LogLevel Critical
PidFile "$TMP/tinyproxy/tinyproxy.pid"
Allow 127.0.0.1
ConnectPort $P_ORIGIN
ConnectPort $P_ORIGIN_TLS
DisableViaHeader Yes
EOF
    } >"$TMP/tinyproxy/tinyproxy.conf"
    start_bg tinyproxy tinyproxy -d -c "$TMP/tinyproxy/tinyproxy.conf"
    if wait_port "$LAST_PID" "$P_TINY"; then
        UP[tinyproxy]=1; PID_OF[tinyproxy]=$LAST_PID; PORT_OF[tinyproxy]=$P_TINY
        log "tinyproxy pid $LAST_PID on :$P_TINY"
    else
        log "tinyproxy did not start: $(tail -3 "$TMP/tinyproxy.out" 2>/dev/null)"
    fi
fi

# ---------------------------------------------------------------- airlock
AIRLOCK_NOTE=""
if want airlock; then
    if [ -x "$AIRLOCK" ]; then
        mkdir -p "$TMP/airlock"
        cat >"$TMP/airlock/cfg.json" <<EOF
{"listen":[{"addr":"127.0.0.1:$P_AIRLOCK","mode":"forward"}],"workers":1,"policy":"policy.json","audit":{"db":$([ "${AUDIT:-1}" = 0 ] && echo null || echo '"audit.db"')},"log_level":"warn"}
EOF
        cat >"$TMP/airlock/policy.json" <<EOF
{"default":"allow","allow_addresses":["127.0.0.0/8"],"rules":[]}
EOF
        (cd "$TMP/airlock" && exec "$AIRLOCK" run --config cfg.json) >"$TMP/airlock.out" 2>&1 &
        LAST_PID=$!
        PIDS+=("$LAST_PID"); NAMES+=(airlock)
        if wait_port "$LAST_PID" "$P_AIRLOCK"; then
            UP[airlock]=1; PID_OF[airlock]=$LAST_PID; PORT_OF[airlock]=$P_AIRLOCK
            log "airlock pid $LAST_PID on :$P_AIRLOCK ($AIRLOCK)"
        else
            if kill -0 "$LAST_PID" 2>/dev/null; then
                AIRLOCK_NOTE="not listening on :$P_AIRLOCK after 10 s"
            else
                wait "$LAST_PID"
                AIRLOCK_NOTE="exited with status $?"
            fi
            AIRLOCK_NOTE="$AIRLOCK_NOTE: $(tail -c 300 "$TMP/airlock.out" 2>/dev/null | tr '\n' ' ')"
            log "airlock $AIRLOCK_NOTE"
        fi
    else
        AIRLOCK_NOTE="no binary at $AIRLOCK"
        [ -x "$ROOT/build/proxy/airlock" ] &&
            AIRLOCK_NOTE="$AIRLOCK_NOTE (a debug build exists: AIRLOCK=build/proxy/airlock)"
        log "airlock: n/a ($AIRLOCK_NOTE)"
    fi
fi

# ---------------------------------------------------------------- measurements
declare -A HTTP_RPS=() HTTP_ERR=() HTTP_CLOSE=() HEY_RPS=() HEY_ERR=() CB_RPS=() CB_MBPS=() CB_ERR=()
declare -A RSS_BASE=() RSS_LOADED=() RSS_FDS=() RSS_PER=() RSS_ERR=()
ORIGIN_URL_100=http://127.0.0.1:$P_ORIGIN/100b

ROUND=1
better() { awk -v a="${1:-0}" -v b="${2:-}" 'BEGIN{ exit !(b == "" || a+0 > b+0) }'; }

# wrk_run NAME URL [proxy-target]: keeps the best round in HTTP_RPS, sums errors
wrk_run() {
    local name=$1 url=$2 target=${3:-} out args=() rps non2xx sock closes
    args=(-t1 -c"$CONNS")
    if [ -n "$target" ]; then
        args+=(-s "$BENCH_DIR/proxy.lua")
    fi
    BENCH_TARGET=$target wrk "${args[@]}" -d"${WARMUP}s" "$url" >/dev/null 2>&1
    cpu_before "$name"
    out=$(BENCH_TARGET=$target with_cpu wrk "${args[@]}" -d"${DURATION}s" "$url" 2>&1)
    echo "$out" >"$TMP/wrk-$name-r$ROUND.txt"
    rps=$(echo "$out" | awk '/^Requests\/sec:/{print $2}')
    cpu_after HTTP "$name" "$(echo "$out" | awk '/requests in/{print $1}')" \
        "$(echo "$out" | awk '/^cpu_ticks/{print $2}')"
    non2xx=$(echo "$out" | awk -F: '/Non-2xx/{gsub(/ /,"",$2); print $2}')
    # "Socket errors: connect A, read B, write C, timeout D"; read errors are
    # mostly the server closing the connection (tinyproxy has no client
    # keep-alive), so they are shown apart as "closes".
    sock=$(echo "$out" | awk '/Socket errors/{gsub(/,/,""); print $4 + $8 + $10}')
    closes=$(echo "$out" | awk '/Socket errors/{gsub(/,/,""); print $6}')
    better "${rps:-0}" "${HTTP_RPS[$name]:-}" && HTTP_RPS[$name]=${rps:-0}
    HTTP_ERR[$name]=$(( ${HTTP_ERR[$name]:-0} + ${non2xx:-0} + ${sock:-0} ))
    HTTP_CLOSE[$name]=$(( ${HTTP_CLOSE[$name]:-0} + ${closes:-0} ))
    log "http100 r$ROUND $name: ${rps:-0} req/s, errors $(( ${non2xx:-0} + ${sock:-0} )), closes ${closes:-0}"
}

# hey_run NAME [proxy-port]
hey_run() {
    local name=$1 port=${2:-} out px=() rps bad
    [ -n "$port" ] && px=(-x "http://127.0.0.1:$port")
    local url=https://127.0.0.1:$P_ORIGIN_TLS/64k
    hey -z "${WARMUP}s" -c "$CONNS" -disable-compression "${px[@]}" "$url" >/dev/null 2>&1
    out=$(hey -z "${DURATION}s" -c "$CONNS" -disable-compression "${px[@]}" "$url" 2>&1)
    echo "$out" >"$TMP/hey-$name-r$ROUND.txt"
    rps=$(echo "$out" | awk '/Requests\/sec:/{print $2}')
    # non-200 = other status codes + transport errors ("Error distribution")
    bad=$(echo "$out" | awk '
        /Status code distribution/ {s = 1; e = 0; next}
        /Error distribution/ {s = 0; e = 1; next}
        s && /\[[0-9]+\]/ { if ($1 == "[200]") ok += $2; else bad += $2 }
        e && /\[[0-9]+\]/ { c = $1; gsub(/[][]/, "", c); bad += c }
        END { if (ok + 0 == 0) print "all"; else printf "%d", bad }')
    if [ "$bad" = all ]; then
        rps=0
        HEY_ERR[$name]=all
    elif [ "${HEY_ERR[$name]:-0}" != all ]; then
        HEY_ERR[$name]=$(( ${HEY_ERR[$name]:-0} + bad ))
    fi
    better "${rps:-0}" "${HEY_RPS[$name]:-}" && HEY_RPS[$name]=${rps:-0}
    log "connect-hey r$ROUND $name: ${rps:-0} req/s, non-200 $bad"
}

# cb_run NAME [proxy-port]
cb_run() {
    local name=$1 port=${2:-} out rps mbps err
    cpu_before "$name" # (connect_bench's warm-up is inside the window)
    if [ -n "$port" ]; then
        out=$(with_cpu "$CB" load -a "127.0.0.1:$port" -T "127.0.0.1:$P_ORIGIN" -c "$CONNS" \
            -d "$DURATION" -w "$WARMUP" -P /64k 2>&1)
    else
        out=$(with_cpu "$CB" load -a "127.0.0.1:$P_ORIGIN" -c "$CONNS" -d "$DURATION" -w "$WARMUP" -P /64k 2>&1)
    fi
    echo "$out" >"$TMP/cb-$name-r$ROUND.txt"
    cpu_after CB "$name" "$(echo "$out" | awk '/^requests/{printf "%d", $2 * ($4 + '"$WARMUP"') / $4}')" \
        "$(echo "$out" | awk '/^cpu_ticks/{print $2}')"
    rps=$(echo "$out" | awk '/^requests/{print $6}')
    mbps=$(echo "$out" | awk '/^requests/{print $8}')
    err=$(echo "$out" | awk '/^requests/{print $10}')
    [ -n "$rps" ] || { rps=0; mbps=0; err=1; }
    if better "$rps" "${CB_RPS[$name]:-}"; then
        CB_RPS[$name]=$rps
        CB_MBPS[$name]=$mbps
    fi
    CB_ERR[$name]=$(( ${CB_ERR[$name]:-0} + err ))
    log "connect-relay r$ROUND $name: $rps req/s $mbps MB/s, errors $err"
}

# rss_run NAME: 2000 idle tunnels through NAME
rss_run() {
    local name=$1 pid=${PID_OF[$1]} port=${PORT_OF[$1]} base loaded i st get=()
    [ "$TUNNEL_GET" = 1 ] && get=(-P /100b)
    # Warm-up: a few tunnels opened and closed, so one-time lazy
    # initialisation is in the baseline and not counted per tunnel.
    "$CB" idle -a "127.0.0.1:$port" -T "127.0.0.1:$P_ORIGIN" -c "$CONNS" "${get[@]}" -s 0 \
        </dev/null >/dev/null 2>&1
    sleep 1
    base=$(rss_tree "$pid")
    "$CB" idle -a "127.0.0.1:$port" -T "127.0.0.1:$P_ORIGIN" -c "$TUNNELS" "${get[@]}" -s 120 \
        </dev/null >"$TMP/idle-$name.txt" 2>&1 &
    local cbpid=$!
    PIDS+=("$cbpid")
    st=""
    for ((i = 0; i < 700; i++)); do
        if grep -q '^ready' "$TMP/idle-$name.txt"; then st=ready; break; fi
        if grep -q '^failed' "$TMP/idle-$name.txt" || ! kill -0 "$cbpid" 2>/dev/null; then st=failed; break; fi
        sleep 0.1
    done
    if [ "$st" = ready ]; then
        sleep 2 # let the proxy settle (lazy frees, timers)
        loaded=$(rss_tree "$pid")
        if grep -q '^lost' "$TMP/idle-$name.txt" || ! kill -0 "$cbpid" 2>/dev/null; then
            st=lost
        fi
    fi
    if [ "$st" = ready ]; then
        RSS_FDS[$name]=0
        for p in $(descendants "$pid"); do
            RSS_FDS[$name]=$((RSS_FDS[$name] + $(ls "/proc/$p/fd" 2>/dev/null | wc -l)))
        done
        RSS_BASE[$name]=$base
        RSS_LOADED[$name]=$loaded
        RSS_PER[$name]=$(awk -v a="$base" -v b="$loaded" -v n="$TUNNELS" 'BEGIN{printf "%.1f", (b-a)/n}')
        RSS_ERR[$name]=""
        log "rss $name: base ${base} KiB, with $TUNNELS tunnels ${loaded} KiB -> ${RSS_PER[$name]} KiB/tunnel, ${RSS_FDS[$name]} fds"
    else
        RSS_ERR[$name]="$(head -c 200 "$TMP/idle-$name.txt" | tr '\n' ' ')"
        log "rss $name: tunnels not established: ${RSS_ERR[$name]}"
    fi
    stop_pid "$cbpid"
    kill -0 "$pid" 2>/dev/null || { RSS_ERR[$name]="proxy died"; UP[$name]=""; }
    sleep 1
}

FWD=()
for n in airlock squid tinyproxy; do [ -n "${UP[$n]:-}" ] && FWD+=("$n"); done

# The RSS measurement runs first, on freshly started proxies, so that buffers
# kept from the load runs don't hide the per-tunnel cost.
log "RSS with $TUNNELS idle CONNECT tunnels (reported as 3.)"
for n in "${FWD[@]}"; do [ -n "${UP[$n]:-}" ] && rss_run "$n"; done
FWD=()
for n in airlock squid tinyproxy; do [ -n "${UP[$n]:-}" ] && FWD+=("$n"); done

for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    log "round $ROUND/$ROUNDS: HTTP 100 B keep-alive, $CONNS conns, ${DURATION}s each"
    want direct && wrk_run direct "$ORIGIN_URL_100"
    [ -n "${UP[nginx-rp]:-}" ] && wrk_run nginx-rp "http://127.0.0.1:$P_RP/100b"
    for n in "${FWD[@]}"; do wrk_run "$n" "http://127.0.0.1:${PORT_OF[$n]}/" "$ORIGIN_URL_100"; done
done

for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    log "round $ROUND/$ROUNDS: CONNECT tunnel, 64 KiB responses"
    if [ $HAVE_HEY = 1 ]; then
        want direct && hey_run direct
        for n in "${FWD[@]}"; do hey_run "$n" "${PORT_OF[$n]}"; done
    fi
    want direct && cb_run direct
    for n in "${FWD[@]}"; do cb_run "$n" "${PORT_OF[$n]}"; done
done

fmt_num() { awk -v v="${1:-}" 'BEGIN{ if (v == "") print "-"; else printf "%.0f", v }'; }

REPORT=$TMP/report.txt
{
    echo "airlock benchmark  $(date -u '+%Y-%m-%d %H:%M UTC')  $(nproc) cores  $(uname -r)"
    echo "tools: $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'), hey, $(nginx -v 2>&1 | sed 's/.*: //')," \
        "$(squid -v 2>/dev/null | head -1 | awk '{print "squid", $4}'), $(tinyproxy -v 2>/dev/null)"
    echo "airlock: $([ -n "${UP[airlock]:-}" ] && echo "$AIRLOCK" || echo "n/a ${AIRLOCK_NOTE}")"
    echo "settings: ROUNDS=$ROUNDS (best kept) DURATION=${DURATION}s WARMUP=${WARMUP}s CONNS=$CONNS TUNNELS=$TUNNELS TUNNEL_GET=$TUNNEL_GET"
    echo
    echo "Throughput figures are the best of $ROUNDS rounds of ${DURATION} s (rounds interleave the targets);"
    echo "errors are summed over the rounds."
    echo
    echo "1. HTTP 100 B keep-alive, $CONNS connections (wrk -t1 -c$CONNS; proxies get absolute-form)"
    echo "   (errors: non-2xx + connect/write/timeout; closes: server closed the connection, i.e. no keep-alive)"
    printf '   %-10s %12s %10s %8s %8s\n' target "req/s" "vs direct" errors closes
    for n in direct nginx-rp airlock squid tinyproxy; do
        if [ -n "${HTTP_RPS[$n]:-}" ]; then
            printf '   %-10s %12s %10s %8s %8s\n' "$n" "$(fmt_num "${HTTP_RPS[$n]}")" \
                "$(ratio "${HTTP_RPS[$n]}" "${HTTP_RPS[direct]:-}")" "${HTTP_ERR[$n]}" "${HTTP_CLOSE[$n]}"
        else
            printf '   %-10s %12s\n' "$n" "n/a"
        fi
    done
    echo
    cpu_table HTTP "client = wrk" direct nginx-rp airlock squid tinyproxy
    if [ $HAVE_HEY = 1 ]; then
        echo "2a. CONNECT tunnel, 64 KiB responses over TLS (hey -c$CONNS -x http://proxy https://origin/64k)"
        printf '   %-10s %12s %10s %10s %8s\n' target "req/s" "MB/s" "vs direct" non-200
        for n in direct airlock squid tinyproxy; do
            if [ -n "${HEY_RPS[$n]:-}" ]; then
                printf '   %-10s %12s %10s %10s %8s\n' "$n" "$(fmt_num "${HEY_RPS[$n]}")" \
                    "$(awk -v r="${HEY_RPS[$n]}" 'BEGIN{printf "%.1f", r*65536/1e6}')" \
                    "$(ratio "${HEY_RPS[$n]}" "${HEY_RPS[direct]:-}")" "${HEY_ERR[$n]}"
            else
                printf '   %-10s %12s\n' "$n" "n/a"
            fi
        done
        echo
    fi
    echo "2b. CONNECT tunnel relay, 64 KiB responses, plain HTTP keep-alive inside the tunnel (connect_bench -c$CONNS)"
    printf '   %-10s %12s %10s %10s %8s\n' target "req/s" "MB/s" "vs direct" errors
    for n in direct airlock squid tinyproxy; do
        if [ -n "${CB_RPS[$n]:-}" ]; then
            printf '   %-10s %12s %10s %10s %8s\n' "$n" "$(fmt_num "${CB_RPS[$n]}")" "${CB_MBPS[$n]}" \
                "$(ratio "${CB_RPS[$n]}" "${CB_RPS[direct]:-}")" "${CB_ERR[$n]}"
        else
            printf '   %-10s %12s\n' "$n" "n/a"
        fi
    done
    echo
    cpu_table CB "client = connect_bench, per 64 KiB response" direct airlock squid tinyproxy
    echo "3. RSS with $TUNNELS idle CONNECT tunnels$([ "$TUNNEL_GET" = 1 ] && echo ' (each carried one 100 B GET first)') (VmRSS, process + children)"
    printf '   %-10s %12s %14s %12s %8s\n' proxy "base KiB" "loaded KiB" "KiB/tunnel" "fds"
    for n in airlock squid tinyproxy; do
        if [ -n "${RSS_PER[$n]:-}" ]; then
            printf '   %-10s %12s %14s %12s %8s\n' "$n" "${RSS_BASE[$n]}" "${RSS_LOADED[$n]}" "${RSS_PER[$n]}" \
                "${RSS_FDS[$n]}"
        elif [ -n "${RSS_ERR[$n]:-}" ]; then
            printf '   %-10s %12s  (%s)\n' "$n" "failed" "${RSS_ERR[$n]}"
        else
            printf '   %-10s %12s\n' "$n" "n/a"
        fi
    done
    echo
    echo "Targets (issue #15; issue #2 asked 0.8x nginx-rp and 0.9x direct)"
    r1=$(ratio "${HTTP_RPS[airlock]:-}" "${HTTP_RPS[squid]:-}")
    r2=$(ratio "${HTTP_RPS[airlock]:-}" "${HTTP_RPS[nginx-rp]:-}")
    r3=$(ratio "${HTTP_RPS[airlock]:-}" "${HTTP_RPS[direct]:-}")
    r4=$(ratio "${HEY_RPS[airlock]:-}" "${HEY_RPS[direct]:-}")
    r5=$(ratio "${CB_RPS[airlock]:-}" "${CB_RPS[direct]:-}")
    r6=${RSS_PER[airlock]:-n/a}
    printf '   %-44s %8s  %-8s %s\n' "HTTP 100 B airlock / squid" "$r1" ">= 3" "$(verdict "$r1" '>=' 3)"
    printf '   %-44s %8s  %-8s %s\n' "HTTP 100 B airlock / nginx-rp" "$r2" ">= 1.0" "$(verdict "$r2" '>=' 1.0)"
    printf '   %-44s %8s  %-8s %s\n' "HTTP 100 B airlock / direct" "$r3" "" "(info)"
    [ $HAVE_HEY = 1 ] &&
        printf '   %-44s %8s  %-8s %s\n' "CONNECT 64 KiB airlock / direct (hey, TLS)" "$r4" ">= 0.75" "$(verdict "$r4" '>=' 0.75)"
    printf '   %-44s %8s  %-8s %s\n' "CONNECT 64 KiB airlock / direct (relay)" "$r5" ">= 0.75" "$(verdict "$r5" '>=' 0.75)"
    printf '   %-44s %8s  %-8s %s\n' "KiB per idle tunnel, airlock" "$r6" "<= 8" "$(verdict "$r6" '<=' 8)"
    echo "   peers for reference: squid/direct $(ratio "${HTTP_RPS[squid]:-}" "${HTTP_RPS[direct]:-}")," \
        "nginx-rp/direct $(ratio "${HTTP_RPS[nginx-rp]:-}" "${HTTP_RPS[direct]:-}")," \
        "squid KiB/tunnel ${RSS_PER[squid]:-n/a}"
    echo
    echo "run took $(($(date +%s) - T_START)) s"
} >"$REPORT"

mkdir -p "$RESULTS_DIR"
cp "$REPORT" "$RESULTS_DIR/latest.txt"
rm -rf "$RESULTS_DIR/raw"
mkdir -p "$RESULTS_DIR/raw"
cp "$TMP"/wrk-*.txt "$TMP"/hey-*.txt "$TMP"/cb-*.txt "$TMP"/idle-*.txt "$RESULTS_DIR/raw/" 2>/dev/null
echo
cat "$REPORT"
echo "(written to $RESULTS_DIR/latest.txt; raw tool output in $RESULTS_DIR/raw/)"
