# extra_lib.sh - helpers shared by bench/run_tls.sh, run_transparent.sh and
# run_audit.sh (sourced; same conventions as bench/run.sh: every process is
# started in the background and tracked by PID, an EXIT trap stops them by
# PID and removes the temp directory).
# The sourcing script sets TMP (a mktemp -d directory) before calling
# start_bg, and T_START.

export PATH="$PATH:/usr/sbin:/sbin"
PIDS=()
CLEANUP_HOOKS=()

log() { printf '[%s %3ds] %s\n' "${LOG_TAG:-bench}" "$(($(date +%s) - T_START))" "$*" >&2; }

# All PIDs descending from $1 (itself included), from /proc/*/stat.
descendants() {
    local root=$1 line pid rest ppid
    local -A kids=()
    for s in /proc/[0-9]*/stat; do
        { read -r line <"$s"; } 2>/dev/null || continue
        pid=${line%% *}
        rest=${line##*) }
        ppid=${rest#* }
        ppid=${ppid%% *}
        kids[$ppid]+=" $pid"
    done
    local queue=("$root") out=()
    while [ ${#queue[@]} -gt 0 ]; do
        local p=${queue[0]}
        queue=("${queue[@]:1}")
        out+=("$p")
        for c in ${kids[$p]:-}; do queue+=("$c"); done
    done
    echo "${out[@]}"
}

# CPU time (user + system, clock ticks) of $1 and its descendants.
cpu_tree() {
    local t=0 p v
    for p in $(descendants "$1"); do
        v=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null)
        t=$((t + ${v:-0}))
    done
    echo "$t"
}

# Runs a command and prints its CPU (user + system of it and its children,
# clock ticks) on the last line of its output.
with_cpu() {
    local f rc
    f=$(mktemp)
    # `times` in the same shell: a pipe or $(...) would run it in a child
    # that has no children of its own
    ( "$@"; rc=$?; times >"$f"; exit $rc )
    rc=$?
    awk -v tck="$(getconf CLK_TCK)" 'NR == 2 { split($1, u, /[ms]/); split($2, s, /[ms]/);
        printf "cpu_ticks %d\n", (u[1] * 60 + u[2] + s[1] * 60 + s[2]) * tck + 0.5 }' "$f"
    rm -f "$f"
    return $rc
}

# Sum of VmRSS (KiB) over $1 and its descendants.
rss_tree() {
    local total=0 v
    for p in $(descendants "$1"); do
        v=$(awk '/^VmRSS:/{print $2}' "/proc/$p/status" 2>/dev/null)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

fds_tree() {
    local total=0
    for p in $(descendants "$1"); do
        total=$((total + $(ls "/proc/$p/fd" 2>/dev/null | wc -l)))
    done
    echo "$total"
}

stop_pid() { # pid: TERM the process (and its descendants), KILL after 5 s
    local pid=$1 all i
    kill -0 "$pid" 2>/dev/null || return 0
    all=$(descendants "$pid")
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    for p in $all; do kill -KILL "$p" 2>/dev/null; done
    wait "$pid" 2>/dev/null
}

cleanup() {
    local i
    trap - EXIT INT TERM
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${PIDS[$i]}"
    done
    for h in "${CLEANUP_HOOKS[@]}"; do eval "$h"; done
    [ -n "${TMP:-}" ] && [ -z "${KEEP_TMP:-}" ] && rm -rf "$TMP"
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT TERM

# start_bg NAME CMD...: output in $TMP/NAME.out; sets LAST_PID.
start_bg() {
    local name=$1
    shift
    "$@" >"$TMP/$name.out" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# wait_port PID PORT [SECS] [ADDR]: until ADDR:PORT accepts and PID is alive.
wait_port() {
    local pid=$1 port=$2 secs=${3:-10} a=${4:-127.0.0.1} i
    for ((i = 0; i < secs * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || return 1
        if (exec 3<>"/dev/tcp/$a/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

PICKED=" "
pick_port() { # a port in 20000-32767 nobody listens on (below the ephemeral range)
    local used p
    used=" $(ss -Htan 2>/dev/null | awk '{n=split($4,a,":"); print a[n]}' | tr '\n' ' ') "
    for _ in $(seq 500); do
        p=$((20000 + RANDOM % 12768))
        case "$used$PICKED" in *" $p "*) continue ;; esac
        if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then continue; fi
        PICKED="$PICKED$p "
        echo "$p"
        return 0
    done
    log "fatal: no free port"
    exit 1
}

raise_nofile() {
    local hard
    hard=$(ulimit -Hn)
    if [ "$hard" = unlimited ] || [ "$hard" -ge 65536 ]; then ulimit -n 65536; else ulimit -n "$hard"; fi
    NOFILE=$(ulimit -n)
}

ratio() { # a b -> a/b with 2 decimals, or n/a
    awk -v a="${1:-}" -v b="${2:-}" 'BEGIN{ if (a == "" || b == "" || a+0 <= 0 || b+0 <= 0) print "n/a"; else printf "%.2f", a/b }'
}
verdict() { # value op target
    awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN{ if (v == "n/a" || v == "") { print "n/a"; exit }
        ok = (op == ">=") ? (v+0 >= t+0) : (v+0 <= t+0); print ok ? "PASS" : "FAIL" }'
}
# paired KIND A B DIR ROUNDS -> "median (r1 r2 ...)" of per-round A/B ratios read
# from DIR/tb-KIND-NAME-rN.txt (tls_bench output), or n/a. A and B run back to
# back in each round, so their ratio is not moved by the machine getting
# faster or slower between rounds the way a ratio of two bests is.
paired() {
    local kind=$1 a=$2 b=$3 dir=$4 n=$5 r va vb list=""
    for ((r = 1; r <= n; r++)); do
        va=$(awk '/^requests/{print $6}' "$dir/tb-$kind-$a-r$r.txt" 2>/dev/null)
        vb=$(awk '/^requests/{print $6}' "$dir/tb-$kind-$b-r$r.txt" 2>/dev/null)
        list="$list $(ratio "$va" "$vb")"
    done
    echo "$list" | tr ' ' '\n' | grep -v '^$' | awk '
        $1 == "n/a" { bad = 1 } { v[NR] = $1; s = s (NR > 1 ? " " : "") $1 }
        END { if (NR == 0 || bad) { print "n/a"; exit }
              for (i = 1; i <= NR; i++) for (j = i + 1; j <= NR; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
              m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
              printf "%.2f (%s)\n", m, s }'
}
better() { awk -v a="${1:-0}" -v b="${2:-}" 'BEGIN{ exit !(b == "" || a+0 > b+0) }'; }
fmt_num() { awk -v v="${1:-}" 'BEGIN{ if (v == "") print "-"; else printf "%.0f", v }'; }

nginx_common() { # dir
    cat <<EOT
worker_processes 1;
worker_rlimit_nofile $NOFILE;
daemon off;
master_process on;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections $((NOFILE / 2)); }
EOT
}
nginx_http_common() { # dir
    cat <<EOT
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
EOT
}

# hey_parse FILE -> "RPS BAD" (BAD = non-200 statuses + transport errors, or "all")
hey_parse() {
    awk '
        /Requests\/sec:/ {rps = $2}
        /Status code distribution/ {s = 1; e = 0; next}
        /Error distribution/ {s = 0; e = 1; next}
        s && /\[[0-9]+\]/ { if ($1 == "[200]") ok += $2; else bad += $2 }
        e && /\[[0-9]+\]/ { c = $1; gsub(/[][]/, "", c); bad += c }
        END { if (ok + 0 == 0) print 0, "all"; else printf "%s %d\n", rps, bad }' "$1"
}

# CPU per request of the client, the origin and the proxy during one
# measurement (PID_ORIGIN, PID_OF[name]), kept per round ("KIND:name" -> "client origin proxy" in µs):
# on a machine where the three share the cores, throughput follows their sum,
# so these say what a ratio can reach, whatever the noise of one round.
declare -A CPU_ROUNDS=()
cpu_before() {
    CPU_O0=$(cpu_tree "$PID_ORIGIN")
    CPU_P0=0
    [ -n "${PID_OF[$1]:-}" ] && CPU_P0=$(cpu_tree "${PID_OF[$1]}")
}
cpu_after() { # KIND NAME REQUESTS CLIENT_TICKS
    local o p=0 tck
    [ -n "${3:-}" ] && [ "${3:-0}" -gt 0 ] && [ -n "${4:-}" ] || return 0
    tck=$(getconf CLK_TCK)
    o=$(( $(cpu_tree "$PID_ORIGIN") - CPU_O0 ))
    [ -n "${PID_OF[$2]:-}" ] && p=$(( $(cpu_tree "${PID_OF[$2]}") - CPU_P0 ))
    CPU_ROUNDS[$1:$2]+="$(awk -v c="$4" -v o="$o" -v p="$p" -v n="$3" -v t="$tck" \
        'BEGIN{ printf "%.1f %.1f %.1f;", c*1e6/t/n, o*1e6/t/n, p*1e6/t/n }')"
}
# cpu_line KIND NAME: median over rounds of client, origin, proxy, total µs
cpu_median() {
    local rows col out=""
    rows=$(echo "${CPU_ROUNDS[$1:$2]:-}" | tr ';' '\n' | awk 'NF == 3 { print $1, $2, $3, $1 + $2 + $3 }')
    [ -n "$rows" ] || return 0
    for col in 1 2 3 4; do
        out="$out $(echo "$rows" | awk -v k=$col '{ print $k }' | sort -g |
            awk '{ v[NR] = $1 } END { printf "%.1f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')"
    done
    echo $out
}

# cpu_table KIND TITLE NAME...: the CPU per request of each target (median over the
# rounds) and the ratio it allows: direct's client + origin CPU over the
# target's client + origin + proxy CPU (medians of the sums) (the throughput ratio when the three
# are CPU-bound on shared cores, as here).
cpu_table() {
    local kind=$1 title=$2 d n m
    shift 2
    echo "   CPU per request, µs (median of $ROUNDS rounds; user + system): $title"
    printf '   %-10s %8s %8s %8s %8s %12s\n' target client origin proxy total "CPU-bound"
    d=$(cpu_median "$kind" direct)
    for n in "$@"; do
        m=$(cpu_median "$kind" "$n")
        [ -n "$m" ] || continue
        printf '   %-10s %8s %8s %8s %8s %12s\n' "$n" $m \
            "$(echo "$d $m" | awk 'NF == 8 && $8 > 0 { printf "%.2f", $4 / $8 }')"
    done
    echo
}
