# Shared shell helpers for bench/reproduce_*.sh (sourced, not run).
#
# Every step of a reproduction is a *stage*: its command line is appended to
# OUT/commands.txt, its output goes to OUT/logs/NAME.log as it runs (tail -f it), and
# OUT/stages/NAME.json records start, end and exit status. A finished stage is skipped
# on the next run, so an interrupted reproduction continues where it stopped. After each
# stage the small result files are collected into RUNS (docs/results/<dataset>/runs), which
# is committed: the page is generated from there, so a later session can go on from it. A
# fresh OUT (the run folder of an earlier session is gone) takes over from RUNS the Delta grid
# and every seed that finished its evaluation, with the same budget; other seeds run again.

set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA_ROOT="${AMAT_DATA:-$REPO/../shared/data}"
export MPLBACKEND=Agg YOLO_OFFLINE=1 PYTHONUNBUFFERED=1

repro_init() {   # repro_init DATASET OUT
    DATASET="$1"
    OUT="$(mkdir -p "$2" && cd "$2" && pwd)"
    mkdir -p "$OUT/logs" "$OUT/stages"
    if [ ! -x "$REPO/.venv/bin/amat" ]; then
        bash "$REPO/scripts/setup.sh"
    fi
    # shellcheck disable=SC1091
    source "$REPO/.venv/bin/activate"
    if [ ! -f "$OUT/machine.json" ]; then
        python "$REPO/bench/reproduce_report.py" machine > "$OUT/machine.json"
    fi
    RUNS="${RUNS:-${REPORT:-$REPO/docs/results}/$DATASET/runs}"
    echo "[$DATASET] output: $OUT (logs in $OUT/logs; rerun the same command to resume); results: $RUNS"
}

seed_list() {    # the seeds to run: SEEDS="0 1 2" (default $1)
    echo "${SEEDS:-$1}"
}

stage() {        # stage NAME COMMAND... : run once, logged and timed
    local name="$1"; shift
    if [ -z "${REPRO_RESTORED:-}" ]; then   # before the first stage: continue from committed state
        REPRO_RESTORED=1
        python "$REPO/bench/reproduce_report.py" restore "$DATASET" "$OUT" "$RUNS"
    fi
    local done="$OUT/stages/$name.json"
    if [ -f "$done" ] && grep -q '"status": 0' "$done"; then
        echo "[$DATASET] $name: done earlier, skipped"
        [ "${STOP_AFTER:-}" = "$name" ] && exit 0
        return 0
    fi
    local log="$OUT/logs/$name.log"
    local line; line="$(printf '%q ' "$@")"
    echo "$name: $line" >> "$OUT/commands.txt"
    echo "[$DATASET] $name: started $(date -u +%H:%M:%S) (log: $log)"
    local t0; t0=$(date +%s.%N)
    local rc=0
    echo "\$ $line" > "$log"
    "$@" >> "$log" 2>&1 || rc=$?
    local t1; t1=$(date +%s.%N)
    printf '{"stage": "%s", "command": %s, "start": %s, "end": %s, "seconds": %s, "status": %d}\n' \
        "$name" "$(python -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$line")" \
        "$t0" "$t1" "$(python -c "print(round($t1-$t0, 1))")" "$rc" > "$done"
    if [ "$rc" -ne 0 ]; then
        echo "[$DATASET] $name FAILED (exit $rc); last lines of $log:" >&2
        tail -n 30 "$log" >&2
        exit "$rc"
    fi
    echo "[$DATASET] $name: finished in $(python -c "print(round($t1-$t0))") s"
    python "$REPO/bench/reproduce_report.py" collect "$DATASET" "$OUT" "$RUNS"
    if [ "${STOP_AFTER:-}" = "$name" ]; then
        echo "[$DATASET] stopping after $name (STOP_AFTER)"
        exit 0
    fi
}
