#!/usr/bin/env bash
# Reproduce the paper's ISBI 2015 landmark experiment (Table 6, Table 5 column 4) at CPU scale
# with the user-facing commands: the unmodified script examples/landmark/train.py run through
# `amat run --adv none|sat|amat`, amat calibrate landmark, amat grid landmark, amat eval
# landmark. Writes docs/results/isbi.md at the end.
#
#   bash bench/reproduce_isbi.sh [OUT]              (default runs/reproduce/isbi)
#
# CPU-scale protocol: one clean run from scratch (PRE_EPOCHS) is the shared start; STD, each
# SAT eps and each AMAT Delta then train EPOCHS more epochs from its weights (the script's
# --init), so every method gets the same budget; xi comes from that clean model (amat
# calibrate landmark, mean + 2 std as in the paper). The paper trains from scratch for 500
# epochs, which a 2-core CPU cannot.
#
# Budget (environment, defaults = the committed run): H W (input size), PRE_EPOCHS, EPOCHS, ADV_STEPS,
# SAT_EPS, DELTAS, LEVELS, PGD_STEPS/IFGSM_STEPS, MAX_IMAGES (test/val images evaluated).
# The paper trains at 200x160 with noise levels 0.5,1,2 and SAT eps 1,3,5; at a smaller
# input the L2 levels are scaled by H/200 (same noise per pixel). MRE is always in mm at the
# original resolution. Rerun the same command to resume after an interruption.
source "$(dirname "$0")/reproduce_common.sh"
repro_init isbi "${1:-$REPO/runs/reproduce/isbi}"

H="${H:-100}"; W="${W:-80}"; PRE_EPOCHS="${PRE_EPOCHS:-12}"; EPOCHS="${EPOCHS:-2}"; ADV_STEPS="${ADV_STEPS:-2}"; SEED="${SEED:-0}"
scale() { python -c "import sys; print(','.join(f'{float(v)*$H/200:g}' for v in sys.argv[1].split(',')))" "$1"; }
SAT_EPS="${SAT_EPS:-$(scale 1,3)}"; DELTAS="${DELTAS:-$(scale 0.5,1)}"; LEVELS="${LEVELS:-$(scale 0.5,1,2)}"
PGD_STEPS="${PGD_STEPS:-10}"; IFGSM_STEPS="${IFGSM_STEPS:-5}"; MAX_IMAGES="${MAX_IMAGES:-12}"
XI_RULE="${XI_RULE:-mean+2std}"; REPORT="${REPORT:-$REPO/docs/results}"
TRAIN_IDS="${TRAIN_IDS:-1-150}"; VAL_IDS="${VAL_IDS:-151-200}"; CAL_IMAGES="${CAL_IMAGES:-0}"   # the paper's split
python "$REPO/bench/reproduce_report.py" budget "$OUT" H="$H" W="$W" PRE_EPOCHS="$PRE_EPOCHS" EPOCHS="$EPOCHS" ADV_STEPS="$ADV_STEPS" \
    SAT_EPS="$SAT_EPS" DELTAS="$DELTAS" LEVELS="$LEVELS" PGD_STEPS="$PGD_STEPS" IFGSM_STEPS="$IFGSM_STEPS" \
    MAX_IMAGES="$MAX_IMAGES" XI_RULE="$XI_RULE" SEED="$SEED" TRAIN_IDS="$TRAIN_IDS" VAL_IDS="$VAL_IDS"

DATA="$DATA_ROOT/isbi2015_ceph"
base=(python "$REPO/examples/landmark/train.py" --data "$DATA" --heatmap-loss dice --size "$H" "$W"
      --seed "$SEED" --device cpu --train-ids "$TRAIN_IDS" --val-ids "$VAL_IDS")
PRE="$OUT/train/pretrain/model_epoch_$((PRE_EPOCHS - 1)).pth"
script=("${base[@]}" --epochs "$EPOCHS" --save-every "$EPOCHS" --init "$PRE")
last="model_epoch_$((EPOCHS - 1)).pth"
data_args=(--data "$DATA" --size "$H" "$W" --heatmap-loss dice --max-images "$MAX_IMAGES")
cal=(); [ "$CAL_IMAGES" -gt 0 ] && cal=(--max-images "$CAL_IMAGES")

stage pretrain amat run --adv none --heatmap-loss dice -- "${base[@]}" --epochs "$PRE_EPOCHS" \
    --save-every "$PRE_EPOCHS" --out "$OUT/train/pretrain"
stage train_STD amat run --adv none --heatmap-loss dice -- "${script[@]}" --out "$OUT/train/STD"
stage calibrate amat calibrate landmark --checkpoint "$PRE" --data "$DATA" --size "$H" "$W" \
    --heatmap-loss dice --rule "$XI_RULE" "${cal[@]}" --out "$OUT/xi.json"
xi="$(python -c "import json,sys; print(','.join(f'{v:.6g}' for v in json.load(open(sys.argv[1]))['xi']))" "$OUT/xi.json")"
models="STD=$OUT/train/STD/$last"
for eps in ${SAT_EPS//,/ }; do
    stage "train_SAT$eps" amat run --adv sat --adv-eps "$eps" --adv-steps "$ADV_STEPS" --heatmap-loss dice -- \
        "${script[@]}" --out "$OUT/train/SAT$eps"
    models="$models,SAT$eps=$OUT/train/SAT$eps/$last"
done
stage grid amat grid landmark --deltas "$DELTAS" --adv-xi "$xi" --adv-steps "$ADV_STEPS" "${data_args[@]}" \
    --levels "$LEVELS" --pgd-steps "$PGD_STEPS" --seed "$SEED" --out "$OUT/grid" --no-progress -- \
    "${script[@]}" --out "{out}"
best="$(python "$REPO/bench/reproduce_report.py" best-delta "$OUT/grid")"
models="$models,AMAT=$OUT/grid/delta_$best/run/$last"
eval_args=("${data_args[@]}" --split test --levels "$LEVELS" --pgd-steps "$PGD_STEPS" --ifgsm-steps "$IFGSM_STEPS"
           --seed "$SEED" --out "$OUT/eval" --name isbi --resume --no-progress)
stage eval amat eval landmark --models "$models" "${eval_args[@]}"

python "$REPO/bench/reproduce_report.py" write isbi "$OUT" "$REPORT"
