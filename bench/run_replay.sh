#!/usr/bin/env bash
# bench/run_replay.sh - `airlock policy replay` speed and memory (issue 17).
#
# Builds (or reuses, REPLAY_DIR) a synthetic 10,000,000-row audit database
# with bench/replay_gen.py (schema v4, its indexes, 1,000-rule policy), then
# replays it under the same policy (nothing changes) and under a stricter one
# (~8 % of the rows change allow -> deny), RUNS times each, and prints the
# best wall time, user+sys CPU, rows/s (by wall and by CPU) and peak RSS
# (/usr/bin/time -f %M). Knobs: AIRLOCK [build-release/proxy/airlock],
# ROWS [10000000], RUNS [3], REPLAY_DIR (keep/reuse the generated files),
# THREADS (--threads; default airlock's: one reader per CPU, up to 4).
set -u
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
AIRLOCK=${AIRLOCK:-$ROOT/build-release/proxy/airlock}
case $AIRLOCK in /*) ;; *) AIRLOCK=$ROOT/$AIRLOCK ;; esac
ROWS=${ROWS:-10000000}
RUNS=${RUNS:-3}
[ -x "$AIRLOCK" ] || { echo "fatal: no airlock binary at $AIRLOCK" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "fatal: /usr/bin/time is required (apt-get install time)" >&2; exit 1; }
DIR=${REPLAY_DIR:-$(mktemp -d /tmp/airlock-bench-replay.XXXXXX)}
if [ ! -f "$DIR/audit.db" ]; then
    python3 "$BENCH_DIR/replay_gen.py" "$DIR" "$ROWS" || exit 1
fi
echo "airlock: $AIRLOCK, threads: ${THREADS:-default}"
echo "cpus: $(nproc), load: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-14s %9s %9s %12s %12s %10s %5s\n' policy wall_s cpu_s rows/s_wall rows/s_cpu rss_KiB exit
for pol in policy.json stricter.json; do
    best=""
    for _ in $(seq "$RUNS"); do
        out=$( cd "$DIR" && /usr/bin/time -f "TIME %e %U %S %M" "$AIRLOCK" policy replay \
               --config airlock.json --policy "$pol" --since 30d --format json ${THREADS:+--threads $THREADS} 2>&1 >"$DIR/replay.json" )
        rc=$?
        read -r _ wall usr sys rss <<<"$(grep '^TIME' <<<"$out")"
        if [ -z "$best" ] || awk "BEGIN{exit !($wall < ${best%% *})}"; then
            best="$wall $usr $sys $rss $rc"
        fi
    done
    read -r wall usr sys rss rc <<<"$best"
    rows=$(python3 -c "import json;print(json.load(open('$DIR/replay.json'))['rows'])")
    awk -v p="$pol" -v w="$wall" -v u="$usr" -v s="$sys" -v m="$rss" -v n="$rows" -v rc="$rc" \
        'BEGIN{printf "%-14s %9.2f %9.2f %12.0f %12.0f %10d %5d\n", p, w, u+s, n/w, n/(u+s), m, rc}'
done
[ -n "${REPLAY_DIR:-}" ] || rm -rf "$DIR"
