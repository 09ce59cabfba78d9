#!/usr/bin/env bash
# nnU-Net v2 (3d_fullres, CPU) on the hippocampus 160/40 split at segfuse's time budget (issue 5 §1).
#
#   bash benchmarks/nnunet_hippocampus.sh --quick          # smoke run: 2 training iterations in all
#   bash benchmarks/nnunet_hippocampus.sh --minutes 30     # full run (about 110 iterations at ~16 s each)
#
# Steps (each skipped when its output already exists, except training/prediction/evaluation):
#   1. venv      its own virtual environment (never segfuse's): torch==2.14.1 / torchvision==0.29.1 first,
#                then nnunetv2 under a constraints file that pins them, then a check that torch did not move;
#                benchmarks/nnunet/nnUNetTrainer_Budget.py is copied into nnunetv2's trainer folder.
#   2. convert   the 160 training cases -> nnUNet_raw/Dataset004_Hippocampus/{imagesTr,labelsTr},
#                the 40 evaluation cases -> imagesTs (split: segfuse.data.layouts.split_cases(cases, 40, seed=0)).
#   3. plan      nnUNetv2_plan_and_preprocess -d 4 -c 3d_fullres --verify_dataset_integrity -np 2
#   4. train     nnUNetv2_train 4 3d_fullres all -tr nnUNetTrainer_Budget -device cpu (fold 'all' = all 160);
#                the trainer stops at the iteration count or at the optimisation-time budget, whichever first,
#                and skips nnU-Net's final validation (the 40 are scored below instead).
#   5. predict   the 40 with mirroring (nnU-Net's default TTA) and without (--disable_tta), timed.
#   6. evaluate  segfuse.evaluation.evaluate on both, results.json + results.md.
#
# Options: --minutes M (budget, default 30), --quick, --iterations N (default: minutes*60/16),
#          --iters-per-epoch K (default 10), --venv DIR, --work DIR, --data DIR.
# The venv defaults to /tmp/segfuse-nnunet-venv because .venv-nnunet/ is not git-ignored in this repo.
set -euo pipefail

ARGS="$*"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SEGFUSE_PY="${SEGFUSE_PY:-$REPO/.venv/bin/python}"
VENV=/tmp/segfuse-nnunet-venv
DATA="$REPO/../shared/data/hippocampus"
MINUTES=30
QUICK=0
ITERATIONS=""
ITERS_PER_EPOCH=10
WORK=""
SECONDS_PER_ITERATION=16   # the project brief's figure for nnU-Net 3d_fullres on this 2-core CPU

while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1; shift ;;
    --minutes) MINUTES="$2"; shift 2 ;;
    --iterations) ITERATIONS="$2"; shift 2 ;;
    --iters-per-epoch) ITERS_PER_EPOCH="$2"; shift 2 ;;
    --venv) VENV="$2"; shift 2 ;;
    --work) WORK="$2"; shift 2 ;;
    --data) DATA="$2"; shift 2 ;;
    --setup-only) SETUP_ONLY=1; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [[ "$QUICK" == 1 ]]; then
  MINUTES=2; ITERATIONS=2; ITERS_PER_EPOCH=1
fi
if [[ -z "$ITERATIONS" ]]; then
  ITERATIONS=$(python3 -c "print(max(1, round($MINUTES * 60 / $SECONDS_PER_ITERATION)))")
fi
EPOCHS=$(( (ITERATIONS + ITERS_PER_EPOCH - 1) / ITERS_PER_EPOCH ))
MODE=$([[ "$QUICK" == 1 ]] && echo quick || echo "${MINUTES}min")
WORK="${WORK:-$REPO/runs/bench_nnunet_hippocampus_$MODE}"

log() { echo "[nnunet_hippocampus $(date +%H:%M:%S)] $*"; }

# ---------------------------------------------------------------- 1. venv
TORCH_PIN="torch==2.14.1"
TV_PIN="torchvision==0.29.1"
if [[ ! -x "$VENV/bin/nnUNetv2_train" ]]; then
  log "creating $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --upgrade pip
  # torch first, from the local wheel store; a plain torch pin must not pull GBs from the registry
  "$VENV/bin/python" -m pip install "$TORCH_PIN" "$TV_PIN"
  CONSTRAINTS="$VENV/segfuse-constraints.txt"
  printf '%s\n%s\n' "$TORCH_PIN" "$TV_PIN" > "$CONSTRAINTS"
  "$VENV/bin/python" -m pip install --retries 10 -c "$CONSTRAINTS" nnunetv2
fi
"$VENV/bin/python" - <<PY
import torch, torchvision, importlib.metadata as md
assert torch.__version__.split("+")[0] == "2.14.1", f"nnunetv2 moved torch to {torch.__version__}"
assert torchvision.__version__.split("+")[0] == "0.29.1", f"torchvision is {torchvision.__version__}"
print("torch", torch.__version__, "torchvision", torchvision.__version__, "nnunetv2", md.version("nnunetv2"))
PY
NNUNET_VERSION=$("$VENV/bin/python" -c "import importlib.metadata as md; print(md.version('nnunetv2'))")
TRAINER_DIR=$("$VENV/bin/python" -c "import nnunetv2.training.nnUNetTrainer as m, os; print(os.path.dirname(m.__file__))")
mkdir -p "$TRAINER_DIR/variants/segfuse_benchmark"
touch "$TRAINER_DIR/variants/segfuse_benchmark/__init__.py"
# the budget of this run goes into the installed copy's BUDGET line
sed "s/^BUDGET = .*/BUDGET = {\"iterations\": $ITERATIONS, \"iterations_per_epoch\": $ITERS_PER_EPOCH, \"minutes\": $MINUTES}/" \
  "$REPO/benchmarks/nnunet/nnUNetTrainer_Budget.py" > "$TRAINER_DIR/variants/segfuse_benchmark/nnUNetTrainer_Budget.py"
grep -q "^BUDGET = {\"iterations\": $ITERATIONS," "$TRAINER_DIR/variants/segfuse_benchmark/nnUNetTrainer_Budget.py"
if [[ "${SETUP_ONLY:-0}" == 1 ]]; then log "setup done (nnunetv2 $NNUNET_VERSION)"; exit 0; fi

# nnU-Net reads its folders from these variables; they all live under this run's work folder
export nnUNet_raw="$WORK/nnUNet_raw" nnUNet_preprocessed="$WORK/nnUNet_preprocessed" nnUNet_results="$WORK/nnUNet_results"
export nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-2}"   # 2 cores: two augmentation workers
export nnUNet_compile="${nnUNet_compile:-f}"       # no torch.compile on CPU
log "mode $MODE: budget $MINUTES min, iteration cap $ITERATIONS ($EPOCHS epochs x $ITERS_PER_EPOCH), work $WORK"

# ---------------------------------------------------------------- 2. convert
rm -rf "$WORK"
mkdir -p "$WORK"
"$SEGFUSE_PY" "$REPO/benchmarks/nnunet/hippocampus.py" convert --data "$DATA" --raw "$nnUNet_raw" \
  --references "$WORK/references"

# ---------------------------------------------------------------- 3. plan and preprocess
t0=$(date +%s)
"$VENV/bin/nnUNetv2_plan_and_preprocess" -d 4 -c 3d_fullres --verify_dataset_integrity -np 2
log "plan_and_preprocess: $(( $(date +%s) - t0 )) s"

# ---------------------------------------------------------------- 4. train (fold 'all' = all 160 cases)
t0=$(date +%s)
"$VENV/bin/nnUNetv2_train" 4 3d_fullres all -tr nnUNetTrainer_Budget -device cpu
TRAIN_WALL=$(( $(date +%s) - t0 ))
log "training wall time (incl. start-up, per-epoch validation batch, checkpoints): $TRAIN_WALL s"

# ---------------------------------------------------------------- 5. predict the 40, mirroring on and off
predict() {  # $1 = name, rest = extra flags; the seconds go to $WORK/predict_<name>.seconds
  local name="$1"; shift
  local t0; t0=$(date +%s.%N)
  "$VENV/bin/nnUNetv2_predict" -i "$nnUNet_raw/Dataset004_Hippocampus/imagesTs" -o "$WORK/predictions_$name" \
    -d 4 -c 3d_fullres -f all -tr nnUNetTrainer_Budget -chk checkpoint_final.pth -device cpu -npp 1 -nps 1 "$@" \
    > "$WORK/predict_$name.log" 2>&1 || { tail -30 "$WORK/predict_$name.log"; return 1; }
  python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$t0" "$(date +%s.%N)" \
    > "$WORK/predict_$name.seconds"
}
predict mirroring
predict no_mirroring --disable_tta
SEC_TTA=$(cat "$WORK/predict_mirroring.seconds")
SEC_NOTTA=$(cat "$WORK/predict_no_mirroring.seconds")
log "predict 40 cases: mirroring $SEC_TTA s, no mirroring $SEC_NOTTA s"

# ---------------------------------------------------------------- 6. evaluate with segfuse's evaluate
"$SEGFUSE_PY" "$REPO/benchmarks/nnunet/hippocampus.py" evaluate --work "$WORK" --budget-minutes "$MINUTES" \
  --predict-seconds "mirroring=$SEC_TTA" "no_mirroring=$SEC_NOTTA" --nnunet-version "$NNUNET_VERSION" \
  --command "bash benchmarks/nnunet_hippocampus.sh $ARGS"
log "results: $WORK/results.json, $WORK/results.md"
