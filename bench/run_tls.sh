#!/usr/bin/env bash
# bench/run_tls.sh - intercepted + injected HTTPS benchmark (issue #5).
#
# Starts, on 127.0.0.1 only, on free ports, in a temp directory:
#   origin    nginx, https with a leaf for "api.test" from a test CA made at
#             run time; :P_KA keep-alive, :P_NK no keep-alive (for the
#             new-connection case); both without session tickets or cache.
#             /100b (100 B), /auth (echoes the Authorization header).
#   airlock   forward listener, "ca" (airlock ca init), "upstream_ca" = test CA,
#             a header-template secret for api.test (resolve -> 127.0.0.1,
#             policy rule with cidrs ["127.0.0.1/32"]), audit.db, workers 1.
#   squid     squid-openssl, ssl-bump (bump all) with its own CA, verifies the
#             origin against the test CA, request_header_add Authorization.
#   mitmproxy mitmdump with an addon that sets Authorization; upstream
#             verified against the test CA.
# Measures (client: bench/tls_bench.c, compiled at run time; and hey):
#   1. keep-alive HTTPS GET /100b, 50 connections: direct, airlock, squid, mitmproxy
#   2. new connection per request (TCP + CONNECT + full TLS handshakes on
#      both sides: the origin port used here closes after every response)
#   3. RSS with 2000 idle intercepted connections (each did one GET), airlock
#      and squid: KiB per connection
# and prints ratios against the issue's targets. Report: bench/results/tls-latest.txt.
#
# Knobs: AIRLOCK [build-release/proxy/airlock], DURATION [5], WARMUP [1],
# ROUNDS [2] (tls_bench rounds; best kept, and the median of the per-round
# airlock/peer ratios, each round running the targets back to back), HEY [1] (also one hey round),
# CONNS [50], IDLE [2000], ONLY [direct airlock squid mitmproxy]
set -u
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
T_START=$(date +%s)
LOG_TAG=tls
. "$BENCH_DIR/extra_lib.sh"

AIRLOCK=${AIRLOCK:-$ROOT/build-release/proxy/airlock}
case $AIRLOCK in /*) ;; *) AIRLOCK=$ROOT/$AIRLOCK ;; esac
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
ROUNDS=${ROUNDS:-2}
HEY=${HEY:-1}
CONNS=${CONNS:-50}
IDLE=${IDLE:-2000}
ONLY=${ONLY:-direct airlock squid mitmproxy}
want() { case " $ONLY " in *" $1 "*) return 0 ;; esac; return 1; }
SECRET_VALUE=s3cr3t-bench-token-0123456789abcdef

for t in nginx openssl cc curl; do
    command -v "$t" >/dev/null 2>&1 || { log "fatal: $t is required"; exit 1; }
done
HAVE_SQUID=0
if command -v squid >/dev/null && squid -v | grep -q -- --with-openssl; then HAVE_SQUID=1
else log "squid with OpenSSL missing (Debian: apt-get install squid-openssl); squid is n/a"; fi
HAVE_MITM=0
if command -v mitmdump >/dev/null; then HAVE_MITM=1
else log "mitmdump missing (Debian: apt-get install mitmproxy); mitmproxy is n/a"; fi
command -v hey >/dev/null || HEY=0

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
TMP=$(mktemp -d /tmp/airlock-bench-tls.XXXXXX) || exit 1
chmod 755 "$TMP"
raise_nofile

TB=$TMP/tls_bench
cc -O2 -o "$TB" "$BENCH_DIR/tls_bench.c" -lssl -lcrypto 2>"$TMP/cc.err" ||
    { cat "$TMP/cc.err" >&2; log "fatal: cannot compile tls_bench.c (libssl-dev?)"; exit 1; }

P_KA=$(pick_port); P_NK=$(pick_port); P_AL=$(pick_port); P_SQ=$(pick_port); P_MI=$(pick_port)

# ---------------------------------------------------------------- test CA + origin
mkdir -p "$TMP/pki" "$TMP/www" "$TMP/origin/tmp"
cd "$TMP/pki" || exit 1
{
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=airlock bench test CA" -keyout ca.key -out ca.pem \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj /CN=api.test -keyout origin.key -out origin.csr
    printf 'subjectAltName=DNS:api.test,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' >ext.cnf
    openssl x509 -req -in origin.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -extfile ext.cnf -out origin.pem
    # squid's bump CA
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=squid bench bump CA" -keyout bump.key -out bump.pem \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
} >"$TMP/openssl.out" 2>&1 || { cat "$TMP/openssl.out" >&2; log "fatal: openssl"; exit 1; }
chmod 644 "$TMP"/pki/*
cd "$ROOT" || exit 1
head -c 100 /dev/zero | tr '\0' 'a' >"$TMP/www/100b"
chmod -R a+rX "$TMP/www"
echo "127.0.0.1 api.test" >"$TMP/hosts"
chmod 644 "$TMP/hosts"

{
    nginx_common "$TMP/origin"
    echo "http {"
    nginx_http_common "$TMP/origin"
    cat <<EOF
    ssl_certificate $TMP/pki/origin.pem;
    ssl_certificate_key $TMP/pki/origin.key;
    ssl_session_tickets off;
    ssl_session_cache off;
    # /auth answers whether the injected header is right without echoing the
    # value (airlock would redact an echoed secret in the response).
    map \$http_authorization \$auth_ok { "Bearer $SECRET_VALUE" injected; "" none; default other; }
    server {
        listen 127.0.0.1:$P_KA ssl;
        root $TMP/www;
        location = /auth { return 200 "auth=\$auth_ok\n"; }
    }
    server {
        listen 127.0.0.1:$P_NK ssl;
        keepalive_timeout 0;
        root $TMP/www;
    }
}
EOF
} >"$TMP/origin/nginx.conf"
start_bg origin nginx -e "$TMP/origin/error.log" -p "$TMP/origin" -c "$TMP/origin/nginx.conf"
PID_ORIGIN=$LAST_PID
if ! wait_port "$PID_ORIGIN" "$P_KA" || ! wait_port "$PID_ORIGIN" "$P_NK"; then
    cat "$TMP/origin.out" "$TMP/origin/error.log" >&2 2>/dev/null
    log "fatal: origin nginx did not start"; exit 1
fi
log "origin nginx pid $PID_ORIGIN on :$P_KA (keep-alive) :$P_NK (close) https"

declare -A UP=() PID_OF=() PORT_OF=() CAF=() NOTE=()
CAF[direct]=$TMP/pki/ca.pem

# launch_airlock / launch_squid: (re)start with the config written below.
launch_airlock() {
    UP[airlock]=""
    (cd "$TMP/airlock" && exec "$AIRLOCK" run --config cfg.json) >>"$TMP/airlock.out" 2>&1 &
    LAST_PID=$!; PIDS+=("$LAST_PID")
    if wait_port "$LAST_PID" "$P_AL"; then
        UP[airlock]=1; PID_OF[airlock]=$LAST_PID; PORT_OF[airlock]=$P_AL
        CAF[airlock]=$TMP/airlock/ca/ca.pem
        log "airlock pid $LAST_PID on :$P_AL ($AIRLOCK)"
    else
        NOTE[airlock]="did not start: $(tail -c 300 "$TMP/airlock.out" | tr '\n' ' ')"
        log "airlock ${NOTE[airlock]}"
    fi
}
launch_squid() {
    UP[squid]=""
    squid -N -f "$S/squid.conf" >>"$TMP/squid.out" 2>&1 &
    LAST_PID=$!; PIDS+=("$LAST_PID")
    if wait_port "$LAST_PID" "$P_SQ" 20; then
        UP[squid]=1; PID_OF[squid]=$LAST_PID; PORT_OF[squid]=$P_SQ; CAF[squid]=$TMP/pki/bump.pem
        log "squid pid $LAST_PID on :$P_SQ (ssl_bump)"
    else
        NOTE[squid]="did not start: $(tail -3 "$S/cache.log" "$TMP/squid.out" 2>/dev/null | tr '\n' ' ')"
        log "squid ${NOTE[squid]}"
    fi
}
restart() { # NAME: a fresh process (for an RSS measurement without memory kept from earlier load)
    stop_pid "${PID_OF[$1]}"
    sleep 0.5
    "launch_$1"
}

# ---------------------------------------------------------------- airlock
if want airlock; then
    if [ -x "$AIRLOCK" ]; then
        mkdir -p "$TMP/airlock"
        "$AIRLOCK" ca init --dir "$TMP/airlock/ca" >"$TMP/airlock-ca.out" 2>&1 ||
            log "airlock ca init failed: $(cat "$TMP/airlock-ca.out")"
        cat >"$TMP/airlock/secrets.json" <<EOF
{"secrets": {"bench_token": {"from": {"value": "$SECRET_VALUE"}, "hosts": ["api.test"],
  "header": {"name": "Authorization", "format": "Bearer {}"}}}}
EOF
        cat >"$TMP/airlock/policy.json" <<EOF
{"default": "deny", "rules": [
  {"name": "origin", "hosts": ["api.test"], "cidrs": ["127.0.0.1/32"], "action": "allow"}]}
EOF
        cat >"$TMP/airlock/cfg.json" <<EOF
{"listen": [{"addr": "127.0.0.1:$P_AL", "mode": "forward"}], "workers": 1,
 "policy": "policy.json", "secrets": "secrets.json", "ca": {"dir": "ca"},
 "upstream_ca": "$TMP/pki/ca.pem", "resolve": {"api.test": "127.0.0.1"},
 "audit": {"db": "audit.db"}, "log_level": "warn"}
EOF
        launch_airlock
    else
        NOTE[airlock]="no binary at $AIRLOCK"
    fi
fi

# ---------------------------------------------------------------- squid ssl_bump
if want squid && [ $HAVE_SQUID = 1 ]; then
    S=$TMP/squid
    mkdir -p "$S"
    chmod 1777 "$S"
    CERTGEN=/usr/lib/squid/security_file_certgen
    "$CERTGEN" -c -s "$S/ssl_db" -M 16MB >"$TMP/certgen.out" 2>&1 || log "certgen init: $(cat "$TMP/certgen.out")"
    chown -R proxy:proxy "$S/ssl_db" 2>/dev/null
    cat >"$S/squid.conf" <<EOF
http_port 127.0.0.1:$P_SQ ssl-bump tls-cert=$TMP/pki/bump.pem tls-key=$TMP/pki/bump.key generate-host-certificates=on dynamic_cert_mem_cache_size=16MB
sslcrtd_program $CERTGEN -s $S/ssl_db -M 16MB
sslcrtd_children 5 startup=1 idle=1
ssl_bump bump all
tls_outgoing_options cafile=$TMP/pki/ca.pem
request_header_add Authorization "Bearer $SECRET_VALUE" all
hosts_file $TMP/hosts
pid_filename $S/squid.pid
cache_log $S/cache.log
access_log none
cache_store_log none
logfile_rotate 0
netdb_filename none
coredump_dir $S
cache deny all
http_access allow localhost
http_access deny all
max_filedescriptors $NOFILE
shutdown_lifetime 0 seconds
visible_hostname airlock-bench
pinger_enable off
dns_nameservers 127.0.0.1
EOF
    launch_squid
fi

# ---------------------------------------------------------------- mitmproxy
if want mitmproxy && [ $HAVE_MITM = 1 ]; then
    M=$TMP/mitm
    mkdir -p "$M"
    cat >"$M/addon.py" <<EOF
class Inject:
    def request(self, flow):
        flow.request.headers["Authorization"] = "Bearer $SECRET_VALUE"


addons = [Inject()]
EOF
    # mitmproxy resolves the CONNECT host with the system resolver: give it a
    # private mount namespace whose /etc/hosts maps api.test to 127.0.0.1.
    start_bg mitmproxy unshare -m sh -c "mount --bind '$TMP/hosts' /etc/hosts && exec mitmdump -q \
        --listen-host 127.0.0.1 --listen-port $P_MI --set confdir='$M' -s '$M/addon.py' \
        --set ssl_insecure=false --set ssl_verify_upstream_trusted_ca='$TMP/pki/ca.pem'"
    if wait_port "$LAST_PID" "$P_MI" 30; then
        UP[mitmproxy]=1; PID_OF[mitmproxy]=$LAST_PID; PORT_OF[mitmproxy]=$P_MI
        CAF[mitmproxy]=$M/mitmproxy-ca-cert.pem
        log "mitmproxy pid $LAST_PID on :$P_MI"
    else
        NOTE[mitmproxy]="did not start: $(tail -c 300 "$TMP/mitmproxy.out" | tr '\n' ' ')"
        log "mitmproxy ${NOTE[mitmproxy]}"
    fi
fi

cat "$TMP/pki/ca.pem" "${CAF[airlock]:-/dev/null}" "${CAF[squid]:-/dev/null}" \
    "${CAF[mitmproxy]:-/dev/null}" >"$TMP/all-ca.pem" 2>/dev/null

# ---------------------------------------------------------------- sanity: interception + injection
TARGETS=()
want direct && TARGETS+=(direct)
for n in airlock squid mitmproxy; do
    [ -n "${UP[$n]:-}" ] || continue
    out=$(curl -q -sS --max-time 10 --proxy "http://127.0.0.1:${PORT_OF[$n]}" --cacert "${CAF[$n]}" \
        "https://api.test:$P_KA/auth" 2>&1)
    issuer=$(curl -q -sS -v --max-time 10 --proxy "http://127.0.0.1:${PORT_OF[$n]}" --cacert "${CAF[$n]}" \
        -o /dev/null "https://api.test:$P_KA/100b" 2>&1 | awk -F'issuer: ' '/issuer:/{print $2; exit}')
    if [ "$out" = "auth=injected" ]; then
        log "check $n: intercepted (issuer: $issuer), Authorization injected"
        TARGETS+=("$n")
    else
        NOTE[$n]="sanity check failed: $(echo "$out" | head -c 200 | tr '\n' ' ')"
        log "check $n: ${NOTE[$n]}"
    fi
done

# ---------------------------------------------------------------- measurements
declare -A KA=() KA_E=() NC=() NC_E=() HKA=() HKA_E=() HNC=() HNC_E=()
declare -A RSS_BASE=() RSS_LOADED=() RSS_PER=() RSS_FDS=() RSS_ERR=()

tb_run() { # NAME keepalive|new ROUND
    local name=$1 kind=$2 r=$3 port args=() out rps e
    if [ "$kind" = keepalive ]; then port=$P_KA; else port=$P_NK; args+=(-n); fi
    if [ "$name" = direct ]; then
        args+=(-a "127.0.0.1:$port")
    else
        args+=(-a "127.0.0.1:${PORT_OF[$name]}" -T "api.test:$port")
    fi
    cpu_before "$name"
    out=$(with_cpu "$TB" load "${args[@]}" -S api.test -c "$CONNS" -d "$DURATION" -w "$WARMUP" -P /100b 2>&1)
    echo "$out" >"$TMP/tb-$kind-$name-r$r.txt"
    cpu_after "TB$kind" "$name" "$(echo "$out" | awk '/^requests/{printf "%d", $2 * ($4 + '"$WARMUP"') / $4}')" \
        "$(echo "$out" | awk '/^cpu_ticks/{print $2}')"
    rps=$(echo "$out" | awk '/^requests/{print $6}')
    e=$(echo "$out" | awk '/^requests/{print $10}')
    [ -n "$rps" ] || { rps=0; e=all; }
    if [ "$kind" = keepalive ]; then
        better "$rps" "${KA[$name]:-}" && KA[$name]=$rps
        KA_E[$name]=$(( ${KA_E[$name]:-0} + ${e/all/1} ))
    else
        better "$rps" "${NC[$name]:-}" && NC[$name]=$rps
        NC_E[$name]=$(( ${NC_E[$name]:-0} + ${e/all/1} ))
    fi
    log "tls_bench $kind r$r $name: $rps req/s, errors $e"
}

hey_run() { # NAME keepalive|new
    local name=$1 kind=$2 port args=(-z "${DURATION}s" -c "$CONNS" -disable-compression) url res
    if [ "$kind" = keepalive ]; then port=$P_KA; else port=$P_NK; args+=(-disable-keepalive); fi
    if [ "$name" = direct ]; then
        url=https://127.0.0.1:$port/100b
    else
        # hey uses the request's Host, "api.test:PORT" (with the port), as the
        # TLS server name, which is not a valid SNI host name: airlock answers
        # unrecognized_name (squid and mitmproxy accept it). -host api.test
        # fixes the SNI but also drops the port from Host:, which squid then
        # follows (to :443), so -host is given to airlock only.
        [ "$name" = airlock ] && args+=(-host api.test)
        args+=(-x "http://127.0.0.1:${PORT_OF[$name]}"); url=https://api.test:$port/100b
    fi
    hey -z "${WARMUP}s" -c "$CONNS" "${args[@]:4}" "$url" >/dev/null 2>&1
    hey "${args[@]}" "$url" >"$TMP/hey-$kind-$name.txt" 2>&1
    res=$(hey_parse "$TMP/hey-$kind-$name.txt")
    if [ "$kind" = keepalive ]; then HKA[$name]=${res% *}; HKA_E[$name]=${res#* }
    else HNC[$name]=${res% *}; HNC_E[$name]=${res#* }; fi
    log "hey $kind $name: ${res% *} req/s, non-200 ${res#* }"
}

rss_run() { # NAME VARIANT(get|hs)
    local name=$1 v=$2 pid=${PID_OF[$1]} port=${PORT_OF[$1]} base loaded st i cbpid get=()
    [ "$v" = get ] && get=(-P /100b)
    "$TB" idle -a "127.0.0.1:$port" -T "api.test:$P_KA" -S api.test -C "${CAF[$name]}" -c 50 "${get[@]}" -s 0 \
        </dev/null >"$TMP/idle-warm-$name-$v.txt" 2>&1
    sleep 1
    base=$(rss_tree "$pid")
    "$TB" idle -a "127.0.0.1:$port" -T "api.test:$P_KA" -S api.test -C "${CAF[$name]}" -c "$IDLE" "${get[@]}" -s 120 \
        </dev/null >"$TMP/idle-$name.txt" 2>&1 &
    cbpid=$!; PIDS+=("$cbpid")
    st=""
    for ((i = 0; i < 900; i++)); do
        if grep -q '^ready' "$TMP/idle-$name.txt"; then st=ready; break; fi
        if grep -q '^failed' "$TMP/idle-$name.txt" || ! kill -0 "$cbpid" 2>/dev/null; then st=failed; break; fi
        sleep 0.1
    done
    if [ "$st" = ready ]; then
        sleep 2
        loaded=$(rss_tree "$pid")
        grep -q '^lost' "$TMP/idle-$name.txt" && st=lost
        kill -0 "$cbpid" 2>/dev/null || st=lost
    fi
    if [ "$st" = ready ]; then
        RSS_FDS[$name-$v]=$(fds_tree "$pid")
        RSS_BASE[$name-$v]=$base; RSS_LOADED[$name-$v]=$loaded
        RSS_PER[$name-$v]=$(awk -v a="$base" -v b="$loaded" -v n="$IDLE" 'BEGIN{printf "%.1f", (b-a)/n}')
        log "rss $name ($v): base $base KiB, with $IDLE idle intercepted conns $loaded KiB -> ${RSS_PER[$name-$v]} KiB/conn, ${RSS_FDS[$name-$v]} fds"
    else
        RSS_ERR[$name-$v]="$st: $(head -c 200 "$TMP/idle-$name.txt" | tr '\n' ' ')"
        log "rss $name ($v): ${RSS_ERR[$name-$v]}"
    fi
    cp "$TMP/idle-$name.txt" "$TMP/idle-$name-$v.txt"
    stop_pid "$cbpid"
    sleep 1
}

# RSS first, on freshly started proxies (as bench/run.sh does).
# Each variant on freshly started airlock and squid (memory a process
# keeps after 2000 connections closed would hide the next variant's cost).
for v in get hs; do
    for n in airlock squid; do
        case " ${TARGETS[*]} " in *" $n "*)
            [ "$v" = hs ] && restart "$n"
            [ -n "${UP[$n]:-}" ] && rss_run "$n" "$v" ;;
        esac
    done
done

for ((r = 1; r <= ROUNDS; r++)); do
    log "round $r/$ROUNDS (tls_bench, ${DURATION}s each)"
    for n in "${TARGETS[@]}"; do tb_run "$n" keepalive "$r"; done
    for n in "${TARGETS[@]}"; do tb_run "$n" new "$r"; done
done
if [ "$HEY" = 1 ]; then
    log "hey round (${DURATION}s each)"
    for n in "${TARGETS[@]}"; do hey_run "$n" keepalive; done
    for n in "${TARGETS[@]}"; do hey_run "$n" new; done
fi

# ---------------------------------------------------------------- report
REPORT=$TMP/report.txt
{
    echo "airlock TLS interception benchmark  $(date -u '+%Y-%m-%d %H:%M UTC')  $(nproc) cores  $(uname -r)"
    echo "airlock: $AIRLOCK; $(squid -v 2>/dev/null | head -1 | awk '{print "squid", $4}') (openssl, ssl_bump bump all);" \
        "mitmproxy $(mitmdump --version 2>/dev/null | awk '/Mitmproxy/{print $2}'); $(nginx -v 2>&1 | sed 's/.*: //')"
    echo "load average at start: $LOAD_START; at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "settings: ROUNDS=$ROUNDS (best kept) DURATION=${DURATION}s WARMUP=${WARMUP}s CONNS=$CONNS IDLE=$IDLE"
    for n in airlock squid mitmproxy; do [ -n "${NOTE[$n]:-}" ] && echo "note: $n ${NOTE[$n]}"; done
    echo
    echo "1. HTTPS GET /100b keep-alive, $CONNS connections (all proxies intercept and inject Authorization)"
    printf '   %-10s %12s %10s %8s   %12s %10s %8s\n' target "tls_bench" "vs direct" errors "hey req/s" "vs direct" non-200
    for n in direct airlock squid mitmproxy; do
        printf '   %-10s %12s %10s %8s   %12s %10s %8s\n' "$n" "$(fmt_num "${KA[$n]:-}")" \
            "$(ratio "${KA[$n]:-}" "${KA[direct]:-}")" "${KA_E[$n]:--}" "$(fmt_num "${HKA[$n]:-}")" \
            "$(ratio "${HKA[$n]:-}" "${HKA[direct]:-}")" "${HKA_E[$n]:--}"
    done
    echo
    cpu_table TBkeepalive "keep-alive, client = tls_bench" direct airlock squid mitmproxy
    echo "2. New connection per request (TCP + CONNECT + full TLS handshake client side and upstream; origin closes), $CONNS concurrent"
    printf '   %-10s %12s %10s %8s   %12s %10s %8s\n' target "tls_bench" "vs direct" errors "hey req/s" "vs direct" non-200
    for n in direct airlock squid mitmproxy; do
        printf '   %-10s %12s %10s %8s   %12s %10s %8s\n' "$n" "$(fmt_num "${NC[$n]:-}")" \
            "$(ratio "${NC[$n]:-}" "${NC[direct]:-}")" "${NC_E[$n]:--}" "$(fmt_num "${HNC[$n]:-}")" \
            "$(ratio "${HNC[$n]:-}" "${HNC[direct]:-}")" "${HNC_E[$n]:--}"
    done
    echo
    echo "3. RSS with $IDLE idle intercepted connections (CONNECT + TLS handshake verified against the proxy's CA;"
    echo "   'get': then one GET /100b each, so the upstream TLS connection was opened too (airlock parks it in"
    echo "   its pool after 1 s idle, at most 8 per host; squid closes it); 'hs': handshake only)"
    printf '   %-16s %12s %14s %12s %8s\n' proxy "base KiB" "loaded KiB" "KiB/conn" fds
    for v in get hs; do
        for n in airlock squid; do
            if [ -n "${RSS_PER[$n-$v]:-}" ]; then
                printf '   %-16s %12s %14s %12s %8s\n' "$n ($v)" "${RSS_BASE[$n-$v]}" "${RSS_LOADED[$n-$v]}" "${RSS_PER[$n-$v]}" "${RSS_FDS[$n-$v]}"
            else
                printf '   %-16s %12s  %s\n' "$n ($v)" "n/a" "${RSS_ERR[$n-$v]:-}"
            fi
        done
    done
    echo
    echo "Targets (issue #5)"
    r1=$(ratio "${KA[airlock]:-}" "${KA[squid]:-}"); r2=$(ratio "${KA[airlock]:-}" "${KA[direct]:-}")
    r3=$(ratio "${NC[airlock]:-}" "${NC[squid]:-}"); r4=${RSS_PER[airlock-get]:-n/a}; r5=${RSS_PER[airlock-hs]:-n/a}
    h1=$(ratio "${HKA[airlock]:-}" "${HKA[squid]:-}"); h2=$(ratio "${HKA[airlock]:-}" "${HKA[direct]:-}")
    h3=$(ratio "${HNC[airlock]:-}" "${HNC[squid]:-}")
    printf '   %-46s %8s  %-8s %s\n' "keep-alive airlock / squid-bump (tls_bench)" "$r1" ">= 2" "$(verdict "$r1" '>=' 2)"
    printf '   %-46s %8s  %-8s %s\n' "keep-alive airlock / direct (tls_bench)" "$r2" ">= 0.5" "$(verdict "$r2" '>=' 0.5)"
    printf '   %-46s %8s  %-8s %s\n' "new conn airlock / squid-bump (tls_bench)" "$r3" ">= 1.5" "$(verdict "$r3" '>=' 1.5)"
    if [ "$HEY" = 1 ]; then
        printf '   %-46s %8s  %-8s %s\n' "keep-alive airlock / squid-bump (hey)" "$h1" ">= 2" "$(verdict "$h1" '>=' 2)"
        printf '   %-46s %8s  %-8s %s\n' "keep-alive airlock / direct (hey)" "$h2" ">= 0.5" "$(verdict "$h2" '>=' 0.5)"
        printf '   %-46s %8s  %-8s %s\n' "new conn airlock / squid-bump (hey)" "$h3" ">= 1.5" "$(verdict "$h3" '>=' 1.5)"
    fi
    p1=$(paired keepalive airlock squid "$TMP" "$ROUNDS"); p2=$(paired keepalive airlock direct "$TMP" "$ROUNDS")
    p3=$(paired new airlock squid "$TMP" "$ROUNDS")
    printf '   %-46s %8s  %-8s %-4s %s\n' "keep-alive airlock / squid-bump (paired median)" "${p1%% *}" ">= 2" \
        "$(verdict "${p1%% *}" '>=' 2)" "per round ${p1#* }"
    printf '   %-46s %8s  %-8s %-4s %s\n' "keep-alive airlock / direct (paired median)" "${p2%% *}" ">= 0.5" \
        "$(verdict "${p2%% *}" '>=' 0.5)" "per round ${p2#* }"
    printf '   %-46s %8s  %-8s %-4s %s\n' "new conn airlock / squid-bump (paired median)" "${p3%% *}" ">= 1.5" \
        "$(verdict "${p3%% *}" '>=' 1.5)" "per round ${p3#* }"
    printf '   %-46s %8s  %-8s %s\n' "KiB per idle intercepted conn, airlock (get)" "$r4" "<= 40" "$(verdict "$r4" '<=' 40)"
    printf '   %-46s %8s  %-8s %s\n' "KiB per idle intercepted conn, airlock (hs)" "$r5" "<= 40" "$(verdict "$r5" '<=' 40)"
    echo "   peers: squid KiB/conn ${RSS_PER[squid-get]:-n/a} (get), ${RSS_PER[squid-hs]:-n/a} (hs) (issue: ~185);" \
        "airlock/mitmproxy keep-alive $(ratio "${KA[airlock]:-}" "${KA[mitmproxy]:-}")," \
        "new conn $(ratio "${NC[airlock]:-}" "${NC[mitmproxy]:-}")"
    echo
    echo "run took $(($(date +%s) - T_START)) s"
} >"$REPORT"
mkdir -p "$BENCH_DIR/results/raw-tls"
cp "$REPORT" "$BENCH_DIR/results/tls-latest.txt"
cp "$TMP"/tb-*.txt "$TMP"/hey-*.txt "$TMP"/idle-*.txt "$BENCH_DIR/results/raw-tls/" 2>/dev/null
echo
cat "$REPORT"
