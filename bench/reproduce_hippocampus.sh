#!/usr/bin/env bash
# Reproduce the paper's Hippocampus experiment (Table 2, 4, 5) at CPU scale with the
# user-facing commands: nnUNetv2_train -tr nnUNetTrainerSTD / SAT / AMAT, amat calibrate,
# amat grid, amat eval. Writes docs/results/hippocampus.md at the end.
#
#   bash bench/reproduce_hippocampus.sh [OUT]        (default runs/reproduce/hippocampus)
#
# Round 2 protocol, per seed (SEEDS, default "0 1"; nnU-Net has no seed option, the amat-hooks
# trainers take AMAT_SEED): one clean nnU-Net run (PRE_EPOCHS x ITERS iterations) is the
# start; xi comes from it (amat calibrate nnunet, the mean clean loss as in the paper); STD,
# each SAT eps, AMAT (Algorithm 1) and AMAT-stop (AMAT_BOUNDARY=stop) then train EPOCHS x
# ITERS more iterations from its weights (-pretrained_weights). Delta is chosen once by amat
# grid on the validation cases (ADI) from the first seed's clean model and xi. Each seed's
# models are evaluated on test cases (MAX_CASES of the 35; 0 = all) under PGD, IFGSM, masked
# CE and the per-sample worst case of the three. The paper trains each model from scratch for
# 100 x 50 iterations at batch 366, which a 2-core CPU cannot.
#
# Budget (environment, defaults = the committed run, docs/results/hippocampus.md, ~105 min per
# seed on 2 cores): PRE_EPOCHS, EPOCHS, ITERS, BATCH, ADV_STEPS, SAT_EPS, DELTAS,
# PGD_STEPS/IFGSM_STEPS, MAX_CASES, SEEDS. Rerun to resume.
# GRID_FROM (default docs/results/hippocampus_short/hippocampus/runs) takes the Delta grid of
# that committed run instead of running one (two adversarial fine-tunes and a validation
# evaluation); the page names it. GRID_FROM= (empty) runs this budget's own grid.
# The committed short budget, where AMAT's margins stayed at Delta (docs/results/hippocampus_short):
#   PRE_EPOCHS=12 EPOCHS=6 GRID_FROM= REPORT=docs/results/hippocampus_short bash bench/reproduce_hippocampus.sh
source "$(dirname "$0")/reproduce_common.sh"
repro_init hippocampus "${1:-$REPO/runs/reproduce/hippocampus}"

PRE_EPOCHS="${PRE_EPOCHS:-40}"; EPOCHS="${EPOCHS:-20}"; ITERS="${ITERS:-25}"; ADV_STEPS="${ADV_STEPS:-2}"
BATCH="${BATCH:-32}"; SEEDS="$(seed_list "0 1")"
SAT_EPS="${SAT_EPS:-1,5}"; DELTAS="${DELTAS:-0.5,1}"; LEVELS="${LEVELS:-hippocampus}"
PGD_STEPS="${PGD_STEPS:-20}"; IFGSM_STEPS="${IFGSM_STEPS:-10}"; MAX_CASES="${MAX_CASES:-8}"
ATTACKS="${ATTACKS:-pgd,ifgsm,mce,worst}"
GRID_FROM="${GRID_FROM-docs/results/hippocampus_short/hippocampus/runs}"   # set but empty: own grid
XI_RULE="${XI_RULE:-mean}"; SPLIT="${SPLIT:-208,17,35}"; REPORT="${REPORT:-$REPO/docs/results}"
ID=4; FOLD=0; PLANS=nnUNetPlans
[ "$BATCH" != plans ] && PLANS="nnUNetPlans_b$BATCH"
export nnUNet_raw="$OUT/nnUNet_raw" nnUNet_preprocessed="$OUT/nnUNet_preprocessed"
export nnUNet_def_n_proc=2 nnUNet_n_proc_DA=0 nnUNet_compile=false
export AMAT_EPOCHS="$EPOCHS" AMAT_ITERS="$ITERS" AMAT_VAL_ITERS=1 AMAT_STEPS="$ADV_STEPS" AMAT_XI_RULE="$XI_RULE"
cases=(); [ "$MAX_CASES" -gt 0 ] && cases=(--max-cases "$MAX_CASES")
python "$REPO/bench/reproduce_report.py" budget "$OUT" PRE_EPOCHS="$PRE_EPOCHS" EPOCHS="$EPOCHS" ITERS="$ITERS" ADV_STEPS="$ADV_STEPS" \
    SAT_EPS="$SAT_EPS" DELTAS="$DELTAS" LEVELS="$LEVELS" PGD_STEPS="$PGD_STEPS" IFGSM_STEPS="$IFGSM_STEPS" \
    MAX_CASES="$MAX_CASES" ATTACKS="$ATTACKS" XI_RULE="$XI_RULE" BATCH="$BATCH" PLANS="$PLANS" SPLIT="$SPLIT" SEEDS="$SEEDS" \
    ${GRID_FROM:+"GRID_FROM=$GRID_FROM"}

stage convert amat nnunet-hippocampus --src "$DATA_ROOT/msd_hippocampus" --id $ID --split "$SPLIT"
nnUNet_n_proc_DA=1 stage preprocess nnUNetv2_plan_and_preprocess -d $ID -c 2d -np 2
stage split amat nnunet-hippocampus --src "$DATA_ROOT/msd_hippocampus" --id $ID --split "$SPLIT"  # splits_final.json next to the plans
# nnU-Net plans 316 slices per 2d batch (the paper: 366) - seconds per iteration on 2 CPU cores. A plans
# copy with a smaller batch (same patch, network and preprocessed data) keeps the budget in reach.
if [ "$PLANS" != nnUNetPlans ]; then
    stage plans python "$REPO/bench/reproduce_report.py" plans "$nnUNet_preprocessed/Dataset004_Hippocampus" "$BATCH"
fi
fold_dir() { echo "$1/Dataset004_Hippocampus/$2__${PLANS}__2d/fold_$FOLD"; }
pretrain() {     # pretrain SEED: the clean start of a seed and its xi
    local S="$1" D="$OUT/seed$1"
    nnUNet_results="$D/results/pretrain" AMAT_EPOCHS="$PRE_EPOCHS" AMAT_SEED="$S" \
        stage "s${S}_pretrain" nnUNetv2_train $ID 2d $FOLD -tr nnUNetTrainerSTD -p "$PLANS" -device cpu
    nnUNet_results="$D/results/pretrain" stage "s${S}_calibrate" amat calibrate nnunet $ID 2d $FOLD \
        -tr nnUNetTrainerSTD -p "$PLANS" -o "$D/xi.json"
}

first="${SEEDS%% *}"
pretrain "$first"
FIRST_PRE="$(fold_dir "$OUT/seed$first/results/pretrain" nnUNetTrainerSTD)/checkpoint_final.pth"
if [ -n "${GRID_FROM:-}" ]; then
    grid_src="$GRID_FROM"; [ -e "$grid_src" ] || grid_src="$REPO/$GRID_FROM"   # the default is repo-relative
    stage grid python "$REPO/bench/reproduce_report.py" take-grid "$grid_src" "$OUT/grid"
else AMAT_XI_FILE="$OUT/seed$first/xi.json" AMAT_SEED="$first" stage grid amat grid nnunet $ID 2d $FOLD -p "$PLANS" \
    --deltas "$DELTAS" --epochs "$EPOCHS" --iters "$ITERS" --adv-steps "$ADV_STEPS" --pretrained-weights "$FIRST_PRE" \
    --levels "$LEVELS" --pgd-steps "$PGD_STEPS" "${cases[@]}" --out "$OUT/grid" --no-progress
fi
best="$(python "$REPO/bench/reproduce_report.py" best-delta "$OUT/grid")"

for S in $SEEDS; do
    D="$OUT/seed$S"
    pretrain "$S"
    PRE="$(fold_dir "$D/results/pretrain" nnUNetTrainerSTD)/checkpoint_final.pth"
    train=(nnUNetv2_train $ID 2d $FOLD -p "$PLANS" -device cpu -pretrained_weights "$PRE")
    nnUNet_results="$D/results/STD" AMAT_SEED="$S" stage "s${S}_train_STD" "${train[@]}" -tr nnUNetTrainerSTD
    models="STD=nnUNetTrainerSTD@$D/results/STD"
    for eps in ${SAT_EPS//,/ }; do
        nnUNet_results="$D/results/SAT$eps" AMAT_EPS="$eps" AMAT_SEED="$S" \
            stage "s${S}_train_SAT$eps" "${train[@]}" -tr nnUNetTrainerSAT
        models="$models,SAT$eps=nnUNetTrainerSAT@$D/results/SAT$eps"
    done
    nnUNet_results="$D/results/AMAT" AMAT_STEP="$best" AMAT_XI_FILE="$D/xi.json" AMAT_SEED="$S" \
        stage "s${S}_train_AMAT" "${train[@]}" -tr nnUNetTrainerAMAT
    nnUNet_results="$D/results/AMAT-stop" AMAT_STEP="$best" AMAT_XI_FILE="$D/xi.json" AMAT_SEED="$S" \
        AMAT_BOUNDARY=stop stage "s${S}_train_AMAT-stop" "${train[@]}" -tr nnUNetTrainerAMAT
    models="$models,AMAT=nnUNetTrainerAMAT@$D/results/AMAT,AMAT-stop=nnUNetTrainerAMAT@$D/results/AMAT-stop"
    stage "s${S}_eval" amat eval nnunet $ID 2d $FOLD -p "$PLANS" --split test --models "$models" --levels "$LEVELS" \
        --attacks "$ATTACKS" --pgd-steps "$PGD_STEPS" --ifgsm-steps "$IFGSM_STEPS" "${cases[@]}" --seed "$S" \
        --out "$D/eval" --name hippocampus --resume --no-progress
done
python "$REPO/bench/reproduce_report.py" write hippocampus "$RUNS" "$REPORT"
