#!/usr/bin/env bash
# bench/run_ws.sh - WebSockets through interception (issue 16).
#
# Starts, on 127.0.0.1 only, on free ports, in a temp directory:
#   origin    `ws_bench server` (bench/ws_bench.c, compiled at run time): a
#             single-threaded TLS WebSocket echo server with a leaf for
#             api.test and plain.test from a test CA made at run time; it
#             answers 403 to an upgrade without "Authorization: Bearer SECRET".
#   airlock   forward listener, workers 1, "ca" (airlock ca init),
#             "upstream_ca" = test CA, a header secret for api.test (so the
#             upgrade is injected and every frame toward the client goes
#             through the redactor), policy: api.test allow + intercept,
#             plain.test allow (an opaque tunnel), audit.db.
# Measures (client: `ws_bench load|idle`, one thread, epoll, OpenSSL):
#   1. echo of 1 KiB text messages, CONNS sockets, one message in flight per
#      socket: direct (client -> origin over TLS, the client sends the
#      Authorization header itself) and through airlock (CONNECT api.test,
#      TLS to airlock trusting only airlock's CA, upgrade injected). ROUNDS
#      rounds, direct and airlock back to back in each; messages/s min /
#      median / max, the per-round ratio, and CPU per message of each process
#      in the measurement window (from /proc/PID/stat).
#   2. RSS of a freshly started airlock before and after IDLE idle
#      intercepted WebSockets (each did one 1 KiB echo), and the same for
#      IDLE idle opaque CONNECT tunnels carrying a WebSocket to plain.test
#      (TLS end to end, verified against the test CA only). With gdb on
#      the PATH also the heap in use (glibc malloc_stats, called in airlock
#      through gdb at both points): what the sockets hold, without the
#      allocator's free pages that RSS counts too.
# Report: stdout and bench/results/ws-latest.txt.
#
# Knobs: AIRLOCK [build-release/proxy/airlock], DURATION [5], WARMUP [1],
# ROUNDS [3], CONNS [50], MSG [1024], IDLE [500], ONLY [load rss]
set -u
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
T_START=$(date +%s)
LOG_TAG=ws
. "$BENCH_DIR/extra_lib.sh"

AIRLOCK=${AIRLOCK:-$ROOT/build-release/proxy/airlock}
case $AIRLOCK in /*) ;; *) AIRLOCK=$ROOT/$AIRLOCK ;; esac
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
MSG=${MSG:-1024}
IDLE=${IDLE:-500}
ONLY=${ONLY:-load rss}
want() { case " $ONLY " in *" $1 "*) return 0 ;; esac; return 1; }
SECRET_VALUE=s3cr3t-ws-bench-token-0123456789abcdef

for t in openssl cc; do
    command -v "$t" >/dev/null 2>&1 || { log "fatal: $t is required"; exit 1; }
done
[ -x "$AIRLOCK" ] || { log "fatal: no airlock binary at $AIRLOCK"; exit 1; }

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
TMP=$(mktemp -d /tmp/airlock-bench-ws.XXXXXX) || exit 1
raise_nofile
mkdir -p "$ROOT/bench/results"
OUT=$ROOT/bench/results/ws-latest.txt

WB=$TMP/ws_bench
cc -O2 -o "$WB" "$BENCH_DIR/ws_bench.c" -lssl -lcrypto 2>"$TMP/cc.err" ||
    { cat "$TMP/cc.err" >&2; log "fatal: cannot compile ws_bench.c (libssl-dev?)"; exit 1; }

P_OR=$(pick_port); P_AL=$(pick_port)

# ---------------------------------------------------------------- test CA + origin
mkdir -p "$TMP/pki" "$TMP/airlock"
(
    cd "$TMP/pki" || exit 1
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=airlock ws bench test CA" -keyout ca.key -out ca.pem \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj /CN=api.test -keyout origin.key -out origin.csr
    printf 'subjectAltName=DNS:api.test,DNS:plain.test,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' >ext.cnf
    openssl x509 -req -in origin.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -extfile ext.cnf -out origin.pem
) >"$TMP/openssl.out" 2>&1 || { cat "$TMP/openssl.out" >&2; log "fatal: openssl"; exit 1; }

start_bg origin "$WB" server -l "127.0.0.1:$P_OR" -k "$TMP/pki/origin.pem" -K "$TMP/pki/origin.key" \
    -A "Bearer $SECRET_VALUE"
PID_OR=$LAST_PID
wait_port "$PID_OR" "$P_OR" || { cat "$TMP/origin.out" >&2; log "fatal: origin did not start"; exit 1; }
log "origin ws_bench server pid $PID_OR on :$P_OR"

# ---------------------------------------------------------------- airlock
"$AIRLOCK" ca init --dir "$TMP/airlock/ca" >"$TMP/airlock-ca.out" 2>&1 ||
    { cat "$TMP/airlock-ca.out" >&2; log "fatal: airlock ca init"; exit 1; }
cat >"$TMP/airlock/secrets.json" <<EOF
{"secrets": {"bench_token": {"from": {"value": "$SECRET_VALUE"}, "hosts": ["api.test"],
  "header": {"name": "Authorization", "format": "Bearer {}"}}}}
EOF
cat >"$TMP/airlock/policy.json" <<EOF
{"default": "deny", "rules": [
  {"name": "ws", "hosts": ["api.test"], "cidrs": ["127.0.0.1/32"], "action": "allow", "intercept": true},
  {"name": "opaque", "hosts": ["plain.test"], "cidrs": ["127.0.0.1/32"], "action": "allow"}]}
EOF
cat >"$TMP/airlock/cfg.json" <<EOF
{"listen": [{"addr": "127.0.0.1:$P_AL", "mode": "forward"}], "workers": 1,
 "policy": "policy.json", "secrets": "secrets.json", "ca": {"dir": "ca"},
 "upstream_ca": "$TMP/pki/ca.pem", "resolve": {"api.test": "127.0.0.1", "plain.test": "127.0.0.1"},
 "audit": {"db": "audit.db"}, "log_level": "warn",
 "limits": {"idle_timeout_s": 600, "max_connections": 20000}}
EOF
PID_AL=""
launch_airlock() {
    [ -n "$PID_AL" ] && stop_pid "$PID_AL"
    (cd "$TMP/airlock" && exec "$AIRLOCK" run --config cfg.json) >>"$TMP/airlock.out" 2>&1 &
    PID_AL=$!
    PIDS+=("$PID_AL")
    wait_port "$PID_AL" "$P_AL" ||
        { tail -c 600 "$TMP/airlock.out" >&2; log "fatal: airlock did not start"; exit 1; }
    log "airlock pid $PID_AL on :$P_AL ($AIRLOCK)"
}
launch_airlock

DIRECT=(-a "127.0.0.1:$P_OR" -S api.test -C "$TMP/pki/ca.pem" -H "Authorization: Bearer $SECRET_VALUE")
VIA_AL=(-a "127.0.0.1:$P_AL" -T "api.test:$P_OR" -S api.test -C "$TMP/airlock/ca/ca.pem")
OPAQUE=(-a "127.0.0.1:$P_AL" -T "plain.test:$P_OR" -S plain.test -C "$TMP/pki/ca.pem"
    -H "Authorization: Bearer $SECRET_VALUE")

rss() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
# heap PID: bytes in use by malloc in airlock (all arenas), "" without gdb.
# malloc_stats prints to airlock's stderr ($TMP/airlock.out).
heap() {
    command -v gdb >/dev/null 2>&1 || return 0
    local mark
    mark=$(wc -c <"$TMP/airlock.out")
    gdb -p "$1" -batch -ex "call (void)malloc_stats()" >/dev/null 2>&1
    tail -c +"$((mark + 1))" "$TMP/airlock.out" | awk '/^Total/{t=1} t && /in use bytes/{v=$NF} END{print v}'
}

# idle_rss NAME ARGS...: a fresh airlock, warm-up, baseline, IDLE sockets, RSS.
declare -A RSS_BASE=() RSS_LOAD=() RSS_PER=() RSS_NOTE=() HEAP_PER=()
idle_rss() {
    local name=$1 i base loaded
    shift
    launch_airlock
    local fd0
    fd0=$(ls "/proc/$PID_AL/fd" | wc -l)
    "$WB" idle "$@" -c 20 -s 0.2 >"$TMP/idle-$name-warm.out" 2>&1
    # airlock keeps a socket whose client left without a close frame for a
    # few seconds (it sends its close and lingers): wait until they are gone
    for ((i = 0; i < 300; i++)); do
        [ "$(ls "/proc/$PID_AL/fd" | wc -l)" -le "$fd0" ] && break
        sleep 0.1
    done
    sleep 1
    base=$(rss "$PID_AL")
    local hbase hload
    hbase=$(heap "$PID_AL")
    "$WB" idle "$@" -c "$IDLE" -s 600 >"$TMP/idle-$name.out" 2>&1 &
    local pid=$!
    for ((i = 0; i < 1200; i++)); do
        grep -q '^ready\|^failed' "$TMP/idle-$name.out" 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if ! grep -q '^ready' "$TMP/idle-$name.out"; then
        RSS_NOTE[$name]="$(head -c 200 "$TMP/idle-$name.out")"
        kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
        return
    fi
    sleep 2
    loaded=$(rss "$PID_AL")
    hload=$(heap "$PID_AL")
    [ -n "$hbase" ] && [ -n "$hload" ] &&
        HEAP_PER[$name]=$(awk -v a="$hbase" -v b="$hload" -v n="$IDLE" 'BEGIN{printf "%.1f", (b-a)/n/1024}')
    FDS[$name]=$(ls "/proc/$PID_AL/fd" | wc -l)
    kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    grep -q '^lost' "$TMP/idle-$name.out" && RSS_NOTE[$name]="$(grep '^lost' "$TMP/idle-$name.out")"
    RSS_BASE[$name]=$base; RSS_LOAD[$name]=$loaded
    RSS_PER[$name]=$(awk -v a="$base" -v b="$loaded" -v n="$IDLE" 'BEGIN{printf "%.1f", (b-a)/n}')
    log "$name: $IDLE idle, RSS $base -> $loaded KiB (${RSS_PER[$name]} KiB each)"
}
declare -A FDS=()
if want rss; then
    idle_rss intercepted "${VIA_AL[@]}"
    idle_rss opaque "${OPAQUE[@]}"
    launch_airlock
fi

# ---------------------------------------------------------------- echo load
# load_round R: direct then airlock; ws_bench output in $TMP/load-NAME-rR.txt
load_one() { # name round args...
    local name=$1 r=$2
    shift 2
    "$WB" load "$@" -c "$CONNS" -m "$MSG" -d "$DURATION" -w "$WARMUP" >"$TMP/load-$name-r$r.txt" 2>&1
    log "$name round $r: $(head -1 "$TMP/load-$name-r$r.txt")"
}
if want load; then
    for ((r = 1; r <= ROUNDS; r++)); do
        load_one direct "$r" "${DIRECT[@]}" -p "$PID_OR"
        load_one airlock "$r" "${VIA_AL[@]}" -p "$PID_AL,$PID_OR"
    done
fi
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- report
field() { awk -v k="$2" '{for (i = 1; i < NF; i++) if ($i == k) {print $(i+1); exit}}' "$1" 2>/dev/null; }
cpu_of() { awk -v p="$2" '$1 == "cpu" && $2 == p {print $3}' "$1" 2>/dev/null; }
stats() { # values... -> "min median max"
    printf '%s\n' "$@" | grep -v '^$' | sort -g | awk '{v[NR] = $1}
        END { if (NR == 0) { print "n/a n/a n/a"; exit }
              m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
              printf "%.0f %.0f %.0f\n", v[1], m, v[NR] }'
}
{
    echo "WebSockets through interception (issue 16): $(date -u +%FT%TZ), $(nproc) CPUs"
    echo "airlock: $AIRLOCK (workers 1); load average at start $LOAD_START, at end $LOAD_END"
    echo
    if want load; then
        echo "1. echo, $MSG B text messages, $CONNS sockets, one in flight each (ws_bench load -c $CONNS -d $DURATION -w $WARMUP)"
        echo "   per round: msg/s; CPU per message in us (and % of one CPU) of each process in the window;"
        echo "   other = CPU used by everything else on the machine in the window (% of one CPU)"
        printf '   %-7s %-8s %9s %6s %18s %18s %18s %8s %6s\n' round target msg/s errors \
            "airlock us (%)" "origin us (%)" "client us (%)" "other%" ratio
        declare -a DV=() AV=() RV=() CV=()
        for ((r = 1; r <= ROUNDS; r++)); do
            for t in direct airlock; do
                f=$TMP/load-$t-r$r.txt
                m=$(field "$f" messages); s=$(field "$f" seconds); mps=$(field "$f" mps)
                e=$(field "$f" errors); cc_=$(field "$f" client_cpu); busy=$(field "$f" busy)
                co=$(cpu_of "$f" "$PID_OR"); ca=""
                [ "$t" = airlock ] && ca=$(cpu_of "$f" "$PID_AL")
                per() { awk -v c="$1" -v m="$m" -v s="$s" 'BEGIN{ if (c == "" || m+0 <= 0) print "-";
                        else printf "%.1f (%3.0f%%)", c * 1e6 / m, 100 * c / s }'; }
                other=$(awk -v b="$busy" -v a="${ca:-0}" -v o="${co:-0}" -v c="${cc_:-0}" -v s="$s" \
                    'BEGIN{ if (b == "" || s+0 <= 0) print "-"; else printf "%.0f", 100 * (b - a - o - c) / s }')
                rat=""
                tot=$(awk -v a="${ca:-0}" -v o="${co:-0}" -v c="${cc_:-0}" -v m="$m" \
                    'BEGIN{ if (m+0 <= 0) print ""; else printf "%.2f", (a + o + c) * 1e6 / m }')
                if [ "$t" = direct ]; then DV+=("$mps"); dm=$mps; dtot=$tot; else
                    AV+=("$mps"); rat=$(ratio "$mps" "$dm"); RV+=("$rat")
                    CV+=("$(ratio "$dtot" "$tot")"); fi
                printf '   %-7s %-8s %9s %6s %18s %18s %18s %8s %6s\n' "$r" "$t" "${mps:-n/a}" \
                    "${e:-n/a}" "$(per "$ca")" "$(per "$co")" "$(per "$cc_")" "$other" "$rat"
            done
        done
        read -r dmin dmed dmax <<<"$(stats "${DV[@]}")"
        read -r amin amed amax <<<"$(stats "${AV[@]}")"
        rmed=$(printf '%s\n' "${RV[@]}" | grep -v n/a | sort -g | awk '{v[NR]=$1} END{ if (!NR) print "n/a";
            else printf "%.2f", (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2 }')
        rmin=$(printf '%s\n' "${RV[@]}" | grep -v n/a | sort -g | head -1)
        rmax=$(printf '%s\n' "${RV[@]}" | grep -v n/a | sort -g | tail -1)
        echo "   direct  msg/s min/median/max: $dmin / $dmed / $dmax"
        echo "   airlock msg/s min/median/max: $amin / $amed / $amax"
        echo "   airlock/direct per round min/median/max: ${rmin:-n/a} / $rmed / ${rmax:-n/a}  (target >= 0.5: $(verdict "$rmed" ">=" 0.5))"
        cmed=$(printf '%s\n' "${CV[@]}" | grep -v n/a | sort -g | awk '{v[NR]=$1} END{ if (!NR) print "n/a";
            else printf "%.2f", (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2 }')
        echo "   CPU-bound estimate (direct CPU per message, origin + client, / airlock + origin + client):"
        echo "     median $cmed over rounds ($(echo "${CV[@]}")): the msg/s ratio if the three processes"
        echo "     had the 2 CPUs to themselves and were all CPU-bound"
        echo
    fi
    if want rss; then
        echo "2. RSS of a fresh airlock with $IDLE idle sockets (each echoed one $MSG B message) (VmRSS)"
        printf '   %-34s %10s %12s %12s %7s %12s\n' kind "base KiB" "loaded KiB" "KiB/socket" fds \
            "heap KiB/s."
        for k in intercepted opaque; do
            label="intercepted WebSocket (api.test)"
            [ $k = opaque ] && label="opaque tunnel + WebSocket (plain)"
            printf '   %-34s %10s %12s %12s %7s %12s %s\n' "$label" "${RSS_BASE[$k]:-n/a}" \
                "${RSS_LOAD[$k]:-n/a}" "${RSS_PER[$k]:-n/a}" "${FDS[$k]:-n/a}" \
                "${HEAP_PER[$k]:-n/a}" "${RSS_NOTE[$k]:-}"
        done
        echo "   KiB per idle intercepted WebSocket: ${RSS_PER[intercepted]:-n/a} (target <= 32: $(verdict "${RSS_PER[intercepted]:-n/a}" "<=" 32))"
    fi
} | tee "$OUT"
log "report in $OUT ($(($(date +%s) - T_START)) s)"
