#!/usr/bin/env bash
# Reproduce the paper's Hippocampus experiment (Table 2, 4, 5) at CPU scale with the
# user-facing commands: nnUNetv2_train -tr nnUNetTrainerSTD / SAT / AMAT, amat calibrate,
# amat grid, amat eval. Writes docs/results/hippocampus.md at the end.
#
#   bash bench/reproduce_hippocampus.sh [OUT]        (default runs/reproduce/hippocampus)
#
# CPU-scale protocol: one clean nnU-Net run (PRE_EPOCHS x ITERS iterations) is the shared
# start; STD, each SAT eps and each AMAT Delta then train EPOCHS x ITERS more iterations from
# its weights (nnUNetv2_train -pretrained_weights), so every method gets the same budget.
# xi comes from that clean model (amat calibrate, the paper's section 2.2). The paper trains
# each model from scratch for 100 x 50 iterations at batch 366, which a 2-core CPU cannot.
#
# Budget (environment, defaults = the committed run): PRE_EPOCHS, EPOCHS, ITERS, BATCH,
# ADV_STEPS PGD steps for training noise, SAT_EPS, DELTAS (grid), PGD_STEPS/IFGSM_STEPS and
# MAX_CASES for evaluation. Rerun the same command to resume after an interruption.
source "$(dirname "$0")/reproduce_common.sh"
repro_init hippocampus "${1:-$REPO/runs/reproduce/hippocampus}"

PRE_EPOCHS="${PRE_EPOCHS:-12}"; EPOCHS="${EPOCHS:-6}"; ITERS="${ITERS:-25}"; ADV_STEPS="${ADV_STEPS:-2}"
BATCH="${BATCH:-32}"
SAT_EPS="${SAT_EPS:-1,5}"; DELTAS="${DELTAS:-0.5,1}"; LEVELS="${LEVELS:-hippocampus}"
PGD_STEPS="${PGD_STEPS:-20}"; IFGSM_STEPS="${IFGSM_STEPS:-10}"; MAX_CASES="${MAX_CASES:-8}"
XI_RULE="${XI_RULE:-mean}"; SPLIT="${SPLIT:-208,17,35}"; REPORT="${REPORT:-$REPO/docs/results}"
ID=4; FOLD=0; PLANS=nnUNetPlans
[ "$BATCH" != plans ] && PLANS="nnUNetPlans_b$BATCH"
export nnUNet_raw="$OUT/nnUNet_raw" nnUNet_preprocessed="$OUT/nnUNet_preprocessed"
export nnUNet_results="$OUT/results/STD" nnUNet_def_n_proc=2 nnUNet_n_proc_DA=0 nnUNet_compile=false
export AMAT_EPOCHS="$EPOCHS" AMAT_ITERS="$ITERS" AMAT_VAL_ITERS=1 AMAT_STEPS="$ADV_STEPS" AMAT_XI_RULE="$XI_RULE"
cases=(); [ "$MAX_CASES" -gt 0 ] && cases=(--max-cases "$MAX_CASES")
python "$REPO/bench/reproduce_report.py" budget "$OUT" PRE_EPOCHS="$PRE_EPOCHS" EPOCHS="$EPOCHS" ITERS="$ITERS" ADV_STEPS="$ADV_STEPS" \
    SAT_EPS="$SAT_EPS" DELTAS="$DELTAS" LEVELS="$LEVELS" PGD_STEPS="$PGD_STEPS" IFGSM_STEPS="$IFGSM_STEPS" \
    MAX_CASES="$MAX_CASES" XI_RULE="$XI_RULE" BATCH="$BATCH" PLANS="$PLANS" SPLIT="$SPLIT"

stage convert amat nnunet-hippocampus --src "$DATA_ROOT/msd_hippocampus" --id $ID --split "$SPLIT"
nnUNet_n_proc_DA=1 stage preprocess nnUNetv2_plan_and_preprocess -d $ID -c 2d -np 2
stage split amat nnunet-hippocampus --src "$DATA_ROOT/msd_hippocampus" --id $ID --split "$SPLIT"  # splits_final.json next to the plans
# nnU-Net plans 316 slices per 2d batch (the paper: 366) - seconds per iteration on 2 CPU cores. A plans
# copy with a smaller batch (same patch, network and preprocessed data) keeps the budget in reach.
if [ "$PLANS" != nnUNetPlans ]; then
    stage plans python "$REPO/bench/reproduce_report.py" plans "$nnUNet_preprocessed/Dataset004_Hippocampus" "$BATCH"
fi

nnUNet_results="$OUT/results/pretrain" AMAT_EPOCHS="$PRE_EPOCHS" \
    stage pretrain nnUNetv2_train $ID 2d $FOLD -tr nnUNetTrainerSTD -p "$PLANS" -device cpu
PRE="$OUT/results/pretrain/Dataset004_Hippocampus/nnUNetTrainerSTD__${PLANS}__2d/fold_$FOLD/checkpoint_final.pth"
nnUNet_results="$OUT/results/pretrain" stage calibrate amat calibrate nnunet $ID 2d $FOLD -tr nnUNetTrainerSTD -p "$PLANS"
stage train_STD nnUNetv2_train $ID 2d $FOLD -tr nnUNetTrainerSTD -p "$PLANS" -device cpu -pretrained_weights "$PRE"
models="STD=nnUNetTrainerSTD@$OUT/results/STD"
for eps in ${SAT_EPS//,/ }; do
    nnUNet_results="$OUT/results/SAT$eps" AMAT_EPS="$eps" \
        stage "train_SAT$eps" nnUNetv2_train $ID 2d $FOLD -tr nnUNetTrainerSAT -p "$PLANS" -device cpu \
        -pretrained_weights "$PRE"
    models="$models,SAT$eps=nnUNetTrainerSAT@$OUT/results/SAT$eps"
done
AMAT_XI_SOURCE=file stage grid amat grid nnunet $ID 2d $FOLD -p "$PLANS" --deltas "$DELTAS" --epochs "$EPOCHS" --iters "$ITERS" \
    --adv-steps "$ADV_STEPS" --pretrained-weights "$PRE" --levels "$LEVELS" --pgd-steps "$PGD_STEPS" "${cases[@]}" --out "$OUT/grid" --no-progress
best="$(python "$REPO/bench/reproduce_report.py" best-delta "$OUT/grid")"
models="$models,AMAT=nnUNetTrainerAMAT@$OUT/grid/delta_$best/results"
stage eval amat eval nnunet $ID 2d $FOLD -p "$PLANS" --split test --models "$models" --levels "$LEVELS" \
    --pgd-steps "$PGD_STEPS" --ifgsm-steps "$IFGSM_STEPS" "${cases[@]}" --out "$OUT/eval" --name hippocampus \
    --resume --no-progress
python "$REPO/bench/reproduce_report.py" write hippocampus "$OUT" "$REPORT"
