#!/usr/bin/env bash
# Reproduce the paper's BCCD experiment (Table 7, Table 5 column 5) at CPU scale with the
# user-facing commands: amat bccd, amat yolo --adv none|sat|amat, amat grid yolo, amat eval
# yolo. Writes docs/results/bccd.md at the end.
#
#   bash bench/reproduce_bccd.sh [OUT]              (default runs/reproduce/bccd)
#
# CPU-scale protocol: one clean run from scratch (PRE_EPOCHS) is the shared start; STD, each
# SAT eps and each AMAT Delta then train EPOCHS more epochs from its last.pt (Ultralytics'
# model=last.pt fine-tuning), so every method gets the same budget. The paper trains each
# model from scratch for 300 epochs, which a 2-core CPU cannot.
#
# Budget (environment, defaults = the committed run): MODEL, IMGSZ, PRE_EPOCHS, EPOCHS, BATCH, ADV_STEPS,
# SAT_EPS, DELTAS, LEVELS, PGD_STEPS/IFGSM_STEPS. The paper trains at imgsz 320 with noise
# levels 5,10,15 and SAT eps 1,10,15; at a smaller IMGSZ the L2 levels are scaled by
# IMGSZ/320 (same noise per pixel: an L2 norm grows with the square root of the pixel count).
# FOLLOWUP=1 adds the Appendix A variants (see the end). Rerun the same command to resume
# after an interruption.
source "$(dirname "$0")/reproduce_common.sh"
repro_init bccd "${1:-$REPO/runs/reproduce/bccd}"

MODEL="${MODEL:-yolov5n.yaml}"; IMGSZ="${IMGSZ:-160}"; PRE_EPOCHS="${PRE_EPOCHS:-30}"; EPOCHS="${EPOCHS:-6}"
BATCH="${BATCH:-16}"
ADV_STEPS="${ADV_STEPS:-3}"; SEED="${SEED:-0}"; XI_RULE="${XI_RULE:-mean+2std}"
scale() { python -c "import sys; print(','.join(f'{float(v)*$IMGSZ/320:g}' for v in sys.argv[1].split(',')))" "$1"; }
SAT_EPS="${SAT_EPS:-$(scale 1,10)}"; DELTAS="${DELTAS:-$(scale 2,3.5)}"; LEVELS="${LEVELS:-$(scale 5,10,15)}"
PGD_STEPS="${PGD_STEPS:-20}"; IFGSM_STEPS="${IFGSM_STEPS:-10}"; REPORT="${REPORT:-$REPO/docs/results}"
FRACTION="${FRACTION:-1.0}"
python "$REPO/bench/reproduce_report.py" budget "$OUT" MODEL="$MODEL" IMGSZ="$IMGSZ" PRE_EPOCHS="$PRE_EPOCHS" EPOCHS="$EPOCHS" BATCH="$BATCH" \
    ADV_STEPS="$ADV_STEPS" SAT_EPS="$SAT_EPS" DELTAS="$DELTAS" LEVELS="$LEVELS" PGD_STEPS="$PGD_STEPS" \
    IFGSM_STEPS="$IFGSM_STEPS" XI_RULE="$XI_RULE" SEED="$SEED" FRACTION="$FRACTION"

DATA="$OUT/data/bccd.yaml"
settings=(data="$DATA" imgsz="$IMGSZ" batch="$BATCH" seed="$SEED" deterministic=True workers=0 device=cpu
          plots=False fraction="$FRACTION")
PRE="$OUT/yolo/pretrain/weights/last.pt"
common=(model="$PRE" epochs="$EPOCHS" "${settings[@]}")
stage convert amat bccd "$DATA_ROOT/bccd" "$OUT/data" --split random --seed 0   # the paper's 294/33/37
stage pretrain amat yolo detect train model="$MODEL" epochs="$PRE_EPOCHS" pretrained=False "${settings[@]}" \
    project="$OUT/yolo" name=pretrain exist_ok=True --adv none
stage train_STD amat yolo detect train "${common[@]}" project="$OUT/yolo" name=STD exist_ok=True --adv none
models="STD=$OUT/yolo/STD/weights/last.pt"
for eps in ${SAT_EPS//,/ }; do
    stage "train_SAT$eps" amat yolo detect train "${common[@]}" project="$OUT/yolo" name="SAT$eps" exist_ok=True \
        --adv sat --adv-eps "$eps" --adv-steps "$ADV_STEPS"
    models="$models,SAT$eps=$OUT/yolo/SAT$eps/weights/last.pt"
done
stage grid amat grid yolo --deltas "$DELTAS" "${common[@]}" --adv-steps "$ADV_STEPS" --adv-xi-rule "$XI_RULE" \
    --levels "$LEVELS" --pgd-steps "$PGD_STEPS" --seed "$SEED" --out "$OUT/grid" --no-progress
best="$(python "$REPO/bench/reproduce_report.py" best-delta "$OUT/grid")"
models="$models,AMAT=$OUT/grid/delta_$best/train/weights/last.pt"
eval_args=(data="$DATA" split=test imgsz="$IMGSZ" batch="$BATCH" device=cpu workers=0 --levels "$LEVELS"
           --pgd-steps "$PGD_STEPS" --ifgsm-steps "$IFGSM_STEPS" --seed "$SEED" --out "$OUT/eval" --name bccd
           --resume --no-progress)
stage eval amat eval yolo --models "$models" "${eval_args[@]}"

# FOLLOWUP=1: the paper's Appendix A / section 2 knobs, one change each from the chosen AMAT:
# a larger Delta (twice the grid's largest) and the other xi rule. Models already evaluated
# are reused by amat eval; the page gets a follow-up section.
if [ "${FOLLOWUP:-0}" = 1 ]; then
    big="$(python -c "import sys; print(f'{2*max(float(v) for v in sys.argv[1].split(\",\")):g}')" "$DELTAS")"
    alt="$([ "$XI_RULE" = mean ] && echo mean+2std || echo mean)"
    grid_args=("${common[@]}" --adv-steps "$ADV_STEPS" --levels "$LEVELS" --pgd-steps "$PGD_STEPS" --seed "$SEED"
               --no-progress)
    stage "followup_D$big" amat grid yolo --deltas "$big" --adv-xi-rule "$XI_RULE" "${grid_args[@]}" \
        --out "$OUT/followup/D$big"
    stage "followup_xi-$alt" amat grid yolo --deltas "$best" --adv-xi-rule "$alt" "${grid_args[@]}" \
        --out "$OUT/followup/xi-$alt"
    models="$models,AMAT_D$big=$OUT/followup/D$big/delta_$big/train/weights/last.pt"
    models="$models,AMAT_xi-$alt=$OUT/followup/xi-$alt/delta_$best/train/weights/last.pt"
    stage eval_followup amat eval yolo --models "$models" "${eval_args[@]}"
fi
python "$REPO/bench/reproduce_report.py" write bccd "$OUT" "$REPORT"
