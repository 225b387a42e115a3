#!/usr/bin/env bash
# bench/run_audit.sh - audit trail cost and audit query speed (issue #4).
#
# (a) Proxy HTTP GET /100b keep-alive through airlock (forward listener,
#     absolute-form requests as bench/proxy.lua sends them, wrk -t1 -c50,
#     workers 1) with "audit": {"db": null} (off), batched and strict, each
#     in its own airlock started side by side; rounds interleave the three,
#     best round kept.
# (b) A 10,000,000-row audit database in airlock's real schema (airlock run
#     creates it; rows are added with the sqlite3 CLI in one transaction from
#     a recursive CTE, the schema's indexes dropped for the load and
#     re-created from their own SQL afterwards). Rows span the last 7 days
#     (about 16 rows/s, i.e. ~60k in the last hour); 300 sandboxes; ~1M tool
#     calls of ~10 rows each; 18 named hosts with a skewed mix (api.github.com
#     25%) plus a long tail of 5000 hosts. Then times, as the median of 5 runs:
#       airlock audit query --db F --host api.github.com --since 1h --limit 100
#       airlock audit query --db F --sandbox sb-42 --since 1h
#       airlock audit query --db F --tool-call <a tool call of the last hour> --since 1h
#       airlock audit query --db F --host '*github*' --since 1h
#
# Knobs: AIRLOCK [build-release/proxy/airlock], DURATION [5], WARMUP [1],
# ROUNDS [2], CONNS [50], ROWS [10000000], RUNS [5], PART [ab] (a, b or ab),
# AUDIT_DB (reuse/keep this 10M-row file instead of a temp one).
# Report: bench/results/audit-latest.txt.
set -u
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
T_START=$(date +%s)
LOG_TAG=audit
. "$BENCH_DIR/extra_lib.sh"

AIRLOCK=${AIRLOCK:-$ROOT/build-release/proxy/airlock}
case $AIRLOCK in /*) ;; *) AIRLOCK=$ROOT/$AIRLOCK ;; esac
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
ROUNDS=${ROUNDS:-2}
CONNS=${CONNS:-50}
ROWS=${ROWS:-10000000}
RUNS=${RUNS:-5}
PART=${PART:-ab}
for t in wrk nginx sqlite3; do
    command -v "$t" >/dev/null 2>&1 || { log "fatal: $t is required"; exit 1; }
done
[ -x "$AIRLOCK" ] || { log "fatal: no airlock binary at $AIRLOCK"; exit 1; }

TMP=$(mktemp -d /tmp/airlock-bench-audit.XXXXXX) || exit 1
chmod 755 "$TMP"
raise_nofile
REPORT=$TMP/report.txt
: >"$REPORT"
out() { echo "$*" >>"$REPORT"; }
out "airlock audit benchmark  $(date -u '+%Y-%m-%d %H:%M UTC')  $(nproc) cores  $(uname -r)"
out "airlock: $AIRLOCK; sqlite3 $(sqlite3 --version | awk '{print $1}')"
out

# ================================================================ (a)
if [[ $PART == *a* ]]; then
    P_ORIGIN=$(pick_port)
    mkdir -p "$TMP/www" "$TMP/origin/tmp"
    head -c 100 /dev/zero | tr '\0' 'a' >"$TMP/www/100b"
    chmod -R a+rX "$TMP/www"
    {
        nginx_common "$TMP/origin"
        echo "http {"
        nginx_http_common "$TMP/origin"
        echo "    server { listen 127.0.0.1:$P_ORIGIN; root $TMP/www; }"
        echo "}"
    } >"$TMP/origin/nginx.conf"
    start_bg origin nginx -e "$TMP/origin/error.log" -p "$TMP/origin" -c "$TMP/origin/nginx.conf"
    wait_port "$LAST_PID" "$P_ORIGIN" || { log "fatal: origin nginx did not start"; exit 1; }

    declare -A PORT=() RPS=() ERR=() CLOSES=() UPN=() APID=() CPU_T=() CPU_N=()
    # utime + stime of a process, in clock ticks
    proc_cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
    HZ=$(getconf CLK_TCK)
    MODES="off batched strict"
    for m in $MODES; do
        d=$TMP/al-$m
        mkdir -p "$d"
        PORT[$m]=$(pick_port)
        case $m in
            off) audit='{"db": null}' ;;
            batched) audit='{"db": "audit.db", "durability": "batched"}' ;;
            strict) audit='{"db": "audit.db", "durability": "strict"}' ;;
        esac
        echo '{"default":"allow","allow_addresses":["127.0.0.0/8"],"rules":[]}' >"$d/policy.json"
        echo "{\"listen\":[{\"addr\":\"127.0.0.1:${PORT[$m]}\",\"mode\":\"forward\"}],\"workers\":1,\"policy\":\"policy.json\",\"audit\":$audit,\"log_level\":\"warn\"}" >"$d/cfg.json"
        (cd "$d" && exec "$AIRLOCK" run --config cfg.json) >"$TMP/al-$m.out" 2>&1 &
        LAST_PID=$!; PIDS+=("$LAST_PID"); APID[$m]=$LAST_PID
        if wait_port "$LAST_PID" "${PORT[$m]}"; then
            UPN[$m]=1
            log "airlock audit=$m pid $LAST_PID on :${PORT[$m]}"
        else
            log "airlock audit=$m did not start: $(tail -c 300 "$TMP/al-$m.out")"
        fi
    done
    TARGET=http://127.0.0.1:$P_ORIGIN/100b
    for ((r = 1; r <= ROUNDS; r++)); do
        for m in $MODES; do
            [ -n "${UPN[$m]:-}" ] || continue
            url=http://127.0.0.1:${PORT[$m]}/
            BENCH_TARGET=$TARGET wrk -t1 -c"$CONNS" -s "$BENCH_DIR/proxy.lua" -d"${WARMUP}s" "$url" >/dev/null 2>&1
            pid=${APID[$m]}
            c0=$(proc_cpu_ticks "$pid")
            o=$(BENCH_TARGET=$TARGET wrk -t1 -c"$CONNS" -s "$BENCH_DIR/proxy.lua" -d"${DURATION}s" "$url" 2>&1)
            c1=$(proc_cpu_ticks "$pid")
            echo "$o" >"$TMP/wrk-$m-r$r.txt"
            nreq=$(echo "$o" | awk '/requests in/{print $1}')
            # CPU the whole airlock process (workers + audit writer) spent per
            # request: unlike req/s, this does not move with other load
            CPU_T[$m]=$(( ${CPU_T[$m]:-0} + c1 - c0 ))
            CPU_N[$m]=$(( ${CPU_N[$m]:-0} + ${nreq:-0} ))
            rps=$(echo "$o" | awk '/^Requests\/sec:/{print $2}')
            non2xx=$(echo "$o" | awk -F: '/Non-2xx/{gsub(/ /,"",$2); print $2}')
            sock=$(echo "$o" | awk '/Socket errors/{gsub(/,/,""); print $4 + $8 + $10}')
            cl=$(echo "$o" | awk '/Socket errors/{gsub(/,/,""); print $6}')
            better "${rps:-0}" "${RPS[$m]:-}" && RPS[$m]=${rps:-0}
            ERR[$m]=$(( ${ERR[$m]:-0} + ${non2xx:-0} + ${sock:-0} ))
            CLOSES[$m]=$(( ${CLOSES[$m]:-0} + ${cl:-0} ))
            log "r$r audit=$m: ${rps:-0} req/s, errors $(( ${non2xx:-0} + ${sock:-0} )), closes ${cl:-0}"
        done
    done
    rows_b=$(sqlite3 "$TMP/al-batched/audit.db" 'select count(*) from requests' 2>/dev/null)
    rows_s=$(sqlite3 "$TMP/al-strict/audit.db" 'select count(*) from requests' 2>/dev/null)
    out "(a) Proxy HTTP GET /100b keep-alive, $CONNS connections, workers 1 (wrk -t1 -c$CONNS -s bench/proxy.lua; best of $ROUNDS x ${DURATION}s)"
    out "$(printf '   %-10s %12s %10s %8s %8s %14s' audit "req/s" "vs off" errors closes "cpu us/req")"
    for m in $MODES; do
        cpu=$(awk -v t="${CPU_T[$m]:-0}" -v n="${CPU_N[$m]:-0}" -v hz="$HZ" 'BEGIN{ if (n > 0) printf "%.1f", t * 1e6 / hz / n; else print "-" }')
        out "$(printf '   %-10s %12s %10s %8s %8s %14s' "$m" "$(fmt_num "${RPS[$m]:-}")" "$(ratio "${RPS[$m]:-}" "${RPS[off]:-}")" "${ERR[$m]:--}" "${CLOSES[$m]:--}" "$cpu")"
    done
    out "   (cpu us/req: user+sys of the whole airlock process over all measured rounds / requests;"
    out "    on a shared machine this moves less than req/s; its off/batched ratio is the audit's cost)"
    out "   rows written: batched ${rows_b:-?}, strict ${rows_s:-?}"
    rb=$(ratio "${RPS[batched]:-}" "${RPS[off]:-}")
    rs=$(ratio "${RPS[strict]:-}" "${RPS[batched]:-}")
    out "$(printf '   %-36s %8s  %-8s %s' "batched / off" "$rb" ">= 0.9" "$(verdict "$rb" '>=' 0.9)")"
    out "$(printf '   %-36s %8s  %-8s %s' "strict / batched" "$rs" ">= 0.7" "$(verdict "$rs" '>=' 0.7)")"
    out
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[$i]}"; done
    PIDS=()
fi

# ================================================================ (b)
median() { sort -n | awk '{a[NR]=$1} END{ if (NR == 0) print "n/a"; else if (NR % 2) print a[(NR+1)/2]; else printf "%.1f\n", (a[NR/2]+a[NR/2+1])/2 }'; }

if [[ $PART == *b* ]]; then
    DB=${AUDIT_DB:-$TMP/aud10m.db}
    have=0
    if [ -f "$DB" ]; then
        have=$(sqlite3 "$DB" 'select count(*) from requests' 2>/dev/null || echo 0)
        last=$(sqlite3 "$DB" 'select max(ts) from requests' 2>/dev/null || echo 0)
        # reuse only if it has the rows and still ends within the last 10 minutes
        if [ "${have:-0}" -lt "$ROWS" ] || [ $(( $(date +%s) * 1000000 - ${last:-0} )) -gt 600000000 ]; then
            log "existing $DB not reusable (rows ${have:-0}); rebuilding"
            rm -f "$DB" "$DB-wal" "$DB-shm"
            have=0
        fi
    fi
    if [ "${have:-0}" -lt "$ROWS" ]; then
        # 1. the real schema, made by airlock itself
        d=$TMP/al-schema
        mkdir -p "$d"
        p=$(pick_port)
        echo '{"default":"deny","rules":[]}' >"$d/policy.json"
        echo "{\"listen\":[{\"addr\":\"127.0.0.1:$p\",\"mode\":\"forward\"}],\"workers\":1,\"policy\":\"policy.json\",\"audit\":{\"db\":\"$DB\"},\"log_level\":\"warn\"}" >"$d/cfg.json"
        (cd "$d" && exec "$AIRLOCK" run --config cfg.json) >"$TMP/al-schema.out" 2>&1 &
        spid=$!; PIDS+=("$spid")
        wait_port "$spid" "$p" || { log "fatal: airlock did not start to create the schema: $(cat "$TMP/al-schema.out")"; exit 1; }
        stop_pid "$spid"
        sqlite3 "$DB" .schema >"$TMP/schema.sql"
        sqlite3 "$DB" "select sql || ';' from sqlite_master where type = 'index' and sql is not null" >"$TMP/indexes.sql"
        log "schema from airlock: $(grep -c 'CREATE INDEX' "$TMP/indexes.sql") indexes; loading $ROWS rows"
        # 2. rows, in time order (as the writer appends them), last one ~now
        now_us=$(( $(date +%s) * 1000000 ))
        span_us=$(( 7 * 86400 * 1000000 ))
        step=$(( span_us / ROWS ))
        t0=$(( now_us - step * ROWS ))
        t_load=$(date +%s)
        {
            echo "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-1000000; PRAGMA temp_store=MEMORY;"
            sqlite3 "$DB" "select 'DROP INDEX ' || name || ';' from sqlite_master where type = 'index' and sql is not null"
            cat <<EOF
BEGIN;
WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < $ROWS - 1),
r(i, a, b) AS MATERIALIZED (SELECT i, abs(random()), abs(random()) FROM c),
s(i, a, b, sb, hk) AS (SELECT i, a, b, (b / 7) % 300, a % 1000 FROM r)
INSERT INTO requests (ts, duration_us, conn_id, sandbox, session, tool_call, client, mode, method,
    scheme, host, port, path, upstream, orig_dst, decision, rule, reason, secrets, status,
    bytes_up, bytes_down, error, pending)
SELECT $t0 + i * $step,
    1000 + a % 900000,
    i / 3,
    'sb-' || sb,
    'sess-' || sb || '-' || (i / 200000),
    printf('toolu_%02d%07d', sb % 100, sb * 4000 + i / 3000),
    '10.8.' || (sb / 250) || '.' || (sb % 250 + 2),
    CASE WHEN a % 50 = 0 THEN 'transparent' ELSE 'forward' END,
    CASE WHEN b % 10 < 7 THEN 'GET' WHEN b % 10 < 9 THEN 'POST' ELSE 'CONNECT' END,
    CASE WHEN b % 10 = 9 THEN '' ELSE 'https' END,
    CASE WHEN hk < 250 THEN 'api.github.com'
         WHEN hk < 300 THEN 'github.com'
         WHEN hk < 340 THEN 'raw.githubusercontent.com'
         WHEN hk < 370 THEN 'objects.githubusercontent.com'
         WHEN hk < 380 THEN 'codeload.github.com'
         WHEN hk < 480 THEN 'pypi.org'
         WHEN hk < 580 THEN 'files.pythonhosted.org'
         WHEN hk < 680 THEN 'registry.npmjs.org'
         WHEN hk < 740 THEN 'api.openai.com'
         WHEN hk < 800 THEN 'api.anthropic.com'
         WHEN hk < 830 THEN 'proxy.golang.org'
         WHEN hk < 850 THEN 'crates.io'
         WHEN hk < 870 THEN 'static.crates.io'
         WHEN hk < 890 THEN 'deb.debian.org'
         WHEN hk < 900 THEN 'security.debian.org'
         WHEN hk < 910 THEN 'huggingface.co'
         WHEN hk < 920 THEN 'storage.googleapis.com'
         WHEN hk < 930 THEN 'evil.example'
         ELSE 'h' || ((a / 1000) % 5000) || '.tail.example.net' END,
    443,
    '/v1/items/' || (a % 100000),
    '140.82.' || (a % 256) || '.' || (b % 256) || ':443',
    '',
    CASE WHEN b % 100 < 95 THEN 'allow' WHEN b % 100 < 99 THEN 'deny' ELSE 'error' END,
    CASE WHEN b % 100 < 95 THEN 'public-web' ELSE '' END,
    CASE WHEN b % 100 < 95 THEN '' WHEN b % 100 < 99 THEN 'host_not_allowed' ELSE 'upstream_reset' END,
    CASE WHEN hk < 250 THEN 'github_token' ELSE '' END,
    CASE WHEN b % 100 < 95 THEN 200 WHEN b % 100 < 99 THEN 403 ELSE 502 END,
    200 + a % 4000, 500 + b % 200000, '', 0
FROM s;
COMMIT;
EOF
            cat "$TMP/indexes.sql"
            echo "ANALYZE; PRAGMA journal_mode=WAL;"
        } >"$TMP/load.sql"
        if ! sqlite3 "$DB" <"$TMP/load.sql" >"$TMP/load.out" 2>&1; then
            log "fatal: loading rows failed: $(tail -c 300 "$TMP/load.out")"
            exit 1
        fi
        # the indexes are exactly the ones airlock made
        sqlite3 "$DB" "select sql || ';' from sqlite_master where type = 'index' and sql is not null" >"$TMP/indexes2.sql"
        cmp -s "$TMP/indexes.sql" "$TMP/indexes2.sql" || log "warning: index set differs after the load"
        have=$(sqlite3 "$DB" 'select count(*) from requests')
        log "loaded $have rows in $(( $(date +%s) - t_load )) s ($(du -h "$DB" | cut -f1))"
        LOAD_S=$(( $(date +%s) - t_load ))
    fi
    TOOL=$(sqlite3 "$DB" "select tool_call from requests where id = (select max(id) from requests) - 5000")
    last_h=$(sqlite3 "$DB" "select count(*) from requests where ts >= (strftime('%s','now') - 3600) * 1000000")
    n_gh=$(sqlite3 "$DB" "select count(*) from requests where ts >= (strftime('%s','now') - 3600) * 1000000 and host = 'api.github.com'")
    n_sb=$(sqlite3 "$DB" "select count(*) from requests where ts >= (strftime('%s','now') - 3600) * 1000000 and sandbox = 'sb-42'")
    n_tc=$(sqlite3 "$DB" "select count(*) from requests where ts >= (strftime('%s','now') - 3600) * 1000000 and tool_call = '$TOOL'")
    n_glob=$(sqlite3 "$DB" "select count(*) from requests where ts >= (strftime('%s','now') - 3600) * 1000000 and host like '%github%'")
    card=$(sqlite3 "$DB" "select count(distinct sandbox) || ' sandboxes, ' || (select count(*) from (select distinct tool_call from requests)) || ' tool calls, ' || (select count(*) from (select distinct host from requests)) || ' hosts' from requests")
    out "(b) audit query over $have rows ($(du -h "$DB" | cut -f1) on disk${LOAD_S:+, built in ${LOAD_S} s}; $card; $last_h rows in the last hour)"
    out "   wall time of the whole command (process start, open, query, print to /dev/null); median of $RUNS runs"
    out "$(printf '   %-72s %9s %9s %10s  %-8s %s' query "rows 1h" "median ms" "runs ms" target verdict)"
    # drop the page cache? no: the file was just written; the first run is
    # kept in the list so a cold-ish run shows up.
    qrun() { # LABEL MATCHING TARGET_MS ARGS...
        local label=$1 nmatch=$2 tgt=$3 i t0 t1 ms list="" med rc nout
        shift 3
        for ((i = 0; i < RUNS; i++)); do
            t0=$(date +%s%N)
            "$AIRLOCK" audit query --db "$DB" "$@" >"$TMP/q.out" 2>&1
            rc=$?
            t1=$(date +%s%N)
            ms=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", (b-a)/1e6}')
            list="$list $ms"
        done
        nout=$(wc -l <"$TMP/q.out")
        med=$(echo "$list" | tr ' ' '\n' | grep . | median)
        out "$(printf '   %-72s %9s %9s %10s  %-8s %s' "airlock audit query --db F $*" "$nmatch" "$med" "$(echo $list | tr ' ' ',')" "< $tgt" \
            "$( [ $rc = 0 ] && awk -v m="$med" -v t="$tgt" 'BEGIN{print (m+0 < t+0) ? "PASS" : "FAIL"}' || echo "FAIL(rc=$rc)")")"
        log "query $*: median $med ms (runs$list), rc $rc, $nout output lines"
    }
    qrun "host" "$n_gh" 100 --host api.github.com --since 1h --limit 100
    qrun "sandbox" "$n_sb" 100 --sandbox sb-42 --since 1h
    qrun "tool" "$n_tc" 100 --tool-call "$TOOL" --since 1h
    qrun "glob" "$n_glob" 3000 --host '*github*' --since 1h
    out "   (default --limit is 1000 where none is given)"
    out
fi
out "run took $(($(date +%s) - T_START)) s"
mkdir -p "$BENCH_DIR/results/raw-audit"
cp "$REPORT" "$BENCH_DIR/results/audit-latest.txt"
cp "$TMP"/wrk-*.txt "$BENCH_DIR/results/raw-audit/" 2>/dev/null
echo
cat "$REPORT"
