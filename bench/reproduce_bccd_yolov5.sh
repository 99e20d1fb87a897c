#!/usr/bin/env bash
# Round 3 on BCCD with the paper's own detector: the classic ultralytics/yolov5 train.py
# (anchor-based head, box / obj / cls loss terms) run unmodified under `amat run`, the rows
# STD, SAT at two eps, AMAT (the paper's text) and AMAT-authors (--adv-protocol authors, with
# the authors' per-term maximum xi). Writes docs/results/round3/bccd_yolov5.md at the end.
#
#   AMAT_YOLOV5_DIR=/path/to/yolov5 bash bench/reproduce_bccd_yolov5.sh [OUT]
#                                      (default runs/reproduce/bccd_yolov5)
#
# The checkout: github.com/ultralytics/yolov5 at commit 5081342f0, best as a copy without .git
# (`git archive 5081342f0 | tar -x -C DIR`: no git-status network check). It is run, never copied
# into this repository (AGPL-3.0).
#
# Per seed (SEEDS, default "0 1 2"): one clean run from scratch (PRE_EPOCHS) is the start; xi
# comes from it (amat calibrate yolov5: mean + 2 std per term, the paper's rule, and the per-term
# maximum the authors' code uses, in one file); STD, each SAT eps, AMAT and AMAT-authors train
# EPOCHS more epochs from its last.pt (the same budget for every method, and every method of a
# seed starts from the same weights, so differences are paired). Delta comes from round 2's grid
# (GRID_FROM, the Ultralytics BCCD run at the same input size) instead of a grid of its own; the
# authors' row keeps ADV_STEPS PGD steps (their 20 do not fit the budget; the alpha, start,
# acceptance at every iterate, per-epoch updates and floor are theirs). Evaluation: the test split
# under PGD, IFGSM, the detection-aimed attacks (suppress, displace) and the per-sample worst case.
source "$(dirname "$0")/reproduce_common.sh"
REPORT="${REPORT:-$REPO/docs/results/round3}"
repro_init bccd_yolov5 "${1:-$REPO/runs/reproduce/bccd_yolov5}"

Y5="${AMAT_YOLOV5_DIR:?set AMAT_YOLOV5_DIR to a checkout of ultralytics/yolov5 at commit 5081342f0}"
Y5="$(cd "$Y5" && pwd)"
[ -f "$Y5/train.py" ] || { echo "AMAT_YOLOV5_DIR=$Y5 has no train.py: point it at the yolov5 checkout" >&2; exit 2; }
MODEL="${MODEL:-yolov5n.yaml}"; IMGSZ="${IMGSZ:-160}"; PRE_EPOCHS="${PRE_EPOCHS:-30}"; EPOCHS="${EPOCHS:-6}"
BATCH="${BATCH:-16}"; ADV_STEPS="${ADV_STEPS:-3}"; XI_RULE="${XI_RULE:-mean+2std}"
scale() { python -c "import sys; print(','.join(f'{float(v)*$IMGSZ/320:g}' for v in sys.argv[1].split(',')))" "$1"; }
SAT_EPS="${SAT_EPS:-$(scale 1,10)}"; LEVELS="${LEVELS:-$(scale 5,10,15)}"
PGD_STEPS="${PGD_STEPS:-20}"; IFGSM_STEPS="${IFGSM_STEPS:-10}"
SEEDS="$(seed_list "0 1 2")"; GRID_FROM="${GRID_FROM:-docs/results/bccd/runs}"
ATTACKS="${ATTACKS:-pgd,ifgsm,suppress,displace,worst}"
python "$REPO/bench/reproduce_report.py" budget "$OUT" MODEL="$MODEL" IMGSZ="$IMGSZ" PRE_EPOCHS="$PRE_EPOCHS" \
    EPOCHS="$EPOCHS" BATCH="$BATCH" ADV_STEPS="$ADV_STEPS" SAT_EPS="$SAT_EPS" LEVELS="$LEVELS" PGD_STEPS="$PGD_STEPS" \
    IFGSM_STEPS="$IFGSM_STEPS" XI_RULE="$XI_RULE" SEEDS="$SEEDS" GRID_FROM="$GRID_FROM" ATTACKS="$ATTACKS"

DATA="$OUT/data/bccd.yaml"
stage convert amat bccd "$DATA_ROOT/bccd" "$OUT/data" --split random --seed 0   # the paper's 294/33/37
grid_src="$GRID_FROM"; [ -e "$grid_src" ] || grid_src="$REPO/$GRID_FROM"
stage grid python "$REPO/bench/reproduce_report.py" take-grid "$grid_src" "$OUT/grid"
best="$(python "$REPO/bench/reproduce_report.py" best-delta "$OUT/grid")"

cd "$Y5"   # train.py is run from its checkout, as its README says
script() {  # script SEED NAME: the classic train.py command line of one run (weights and epochs follow)
    echo python train.py --data "$DATA" --cfg "$MODEL" --img "$IMGSZ" --batch "$BATCH" --workers 0 --device cpu \
        --seed "$1" --noplots --project "$OUT/seed$1/yolov5" --name "$2" --exist-ok
}
v5=(--yolov5 "$Y5" --data "$DATA" --img "$IMGSZ" --batch "$BATCH" --workers 0)

for S in $SEEDS; do
    D="$OUT/seed$S"
    # shellcheck disable=SC2046
    stage "s${S}_pretrain" amat run --adv none -- $(script "$S" pretrain) --weights "" --epochs "$PRE_EPOCHS"
    start="$D/yolov5/pretrain/weights/last.pt"
    fine=(--weights "$start" --epochs "$EPOCHS")
    stage "s${S}_calibrate" amat calibrate yolov5 "${v5[@]}" --weights "$start" -o "$D/xi.json"
    # shellcheck disable=SC2046
    stage "s${S}_train_STD" amat run --adv none -- $(script "$S" STD) "${fine[@]}"
    models="STD=$D/yolov5/STD/weights/last.pt"
    for eps in ${SAT_EPS//,/ }; do
        # shellcheck disable=SC2046
        stage "s${S}_train_SAT$eps" amat run --adv sat --adv-eps "$eps" --adv-steps "$ADV_STEPS" \
            -- $(script "$S" "SAT$eps") "${fine[@]}"
        models="$models,SAT$eps=$D/yolov5/SAT$eps/weights/last.pt"
    done
    # shellcheck disable=SC2046
    stage "s${S}_train_AMAT" amat run --adv amat --adv-step "$best" --adv-steps "$ADV_STEPS" \
        --adv-xi-file "$D/xi.json" --adv-xi-rule "$XI_RULE" -- $(script "$S" AMAT) "${fine[@]}"
    # shellcheck disable=SC2046
    stage "s${S}_train_AMAT-authors" amat run --adv amat --adv-step "$best" --adv-protocol authors \
        --adv-steps "$ADV_STEPS" --adv-xi-file "$D/xi.json" --adv-xi-rule max -- $(script "$S" AMAT-authors) "${fine[@]}"
    models="$models,AMAT=$D/yolov5/AMAT/weights/last.pt,AMAT-authors=$D/yolov5/AMAT-authors/weights/last.pt"
    stage "s${S}_eval" amat eval yolov5 "${v5[@]}" --models "$models" --split test --levels "$LEVELS" \
        --attacks "$ATTACKS" --pgd-steps "$PGD_STEPS" --ifgsm-steps "$IFGSM_STEPS" --seed "$S" --out "$D/eval" \
        --name bccd_yolov5 --resume --no-progress
done
python "$REPO/bench/reproduce_report.py" write bccd_yolov5 "$RUNS" "$REPORT"
