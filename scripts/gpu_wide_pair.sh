#!/usr/bin/env bash
# One GPU run for the (standard-wide, adversarial) pair: the like-for-like comparison on N seeded test points.
#   lane 0: fit-mixer --resume on MIXER_DIR's state (training to its end, then the calibration, which resumes
#           from its journal and replay pool), then the mixer under the full plan (compare_mixer.sh's "adaptive");
#   lanes 1..JOBS: the bases and the fixed mixtures (ALPHAS x S_H) under the same plan, shared round-robin;
#   then `adasmooth compare` once everything is done (scripts/compare_mixer.sh). Every step is bounded so that the
#   whole fits BUDGET_S seconds; what is cut short resumes from its chunk caches on a rerun (here or on a CPU).
# MIXER_DIR and OUT are packed into RESULTS as .tar.gz at the end (and MIXER_DIR again after fit-mixer).
#   bash scripts/gpu_wide_pair.sh [OUT]   (default experiments/wide-compare)
# Environment (defaults): PY (python3), DEVICE (cuda), BUDGET_S (570), RESULTS (runs/gpu-wide; on a device
# machine, its $OUT), N (1000), JOBS (4), ALPHAS ("0.9 0.8 0.95 0.7"), S_H ("1 2"), MIXER_DIR
# (experiments/wide-mixer), N_CAL (300), FIT_S (BUDGET_S / 2), AA (standard), MAX_STEPS (none; a dry run on a
# CPU stops training early with it, and then nothing is calibrated).
set -u
cd "$(dirname "$0")/.."
out=${1:-experiments/wide-compare}; results=${RESULTS:-runs/gpu-wide}; budget=${BUDGET_S:-570}; start=$(date +%s)
mixer_dir=${MIXER_DIR:-experiments/wide-mixer}
export PY=${PY:-python3} DEVICE=${DEVICE:-cuda} N=${N:-1000} AA=${AA:-standard} ALPHAS=${ALPHAS:-"0.9 0.8 0.95 0.7"}
export S_H=${S_H:-"1 2"} STANDARD=pretrained/fashion-mnist/standard-wide ROBUST=pretrained/fashion-mnist/adversarial
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=${TQDM_MININTERVAL:-15} OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
left() { echo $(( budget - ($(date +%s) - start) )); }
stamp() { echo "== $(date -u +%T) ($(left) s left): $*"; }
pack() { tar czf "$results/$1.tar.gz" "${@:2}" 2>/dev/null; }
mkdir -p "$out" "$results"
command -v nvidia-smi >/dev/null && nvidia-smi -L
fixed=(bases)
for s_h in $S_H; do for a in $ALPHAS; do fixed+=("alpha$a-sh$s_h"); done; done
lane_mixer() {
  stamp "fit-mixer --resume in $mixer_dir"
  timeout "${FIT_S:-$(( budget / 2 ))}" "$PY" -m adasmooth fit-mixer --config "$mixer_dir/config.yaml" \
    --standard "$STANDARD" --robust "$ROBUST" --out "$mixer_dir" --n-calibrate "${N_CAL:-300}" --resume \
    --device "$DEVICE" ${MAX_STEPS:+--max-steps "$MAX_STEPS"}
  echo "fit-mixer exit $?"
  pack mixer "$mixer_dir"
  if [ -f "$mixer_dir/mixer.safetensors" ]; then
    stamp "the mixer under the full plan"
    MODELS=adaptive timeout $(( $(left) - 20 )) bash scripts/compare_mixer.sh "$out" "$mixer_dir/mixer"
    echo "adaptive exit $?"
  fi
}
lane_mixer > "$results/mixer.log" 2>&1 &
MODELS="${fixed[*]}" JOBS=${JOBS:-4} timeout $(( $(left) - 20 )) bash scripts/compare_mixer.sh "$out" "$mixer_dir/mixer" \
  > "$results/fixed.log" 2>&1 &
wait
stamp "compare (when every model is done)"
[ -f "$mixer_dir/mixer.safetensors" ] && MODELS=" " bash scripts/compare_mixer.sh "$out" "$mixer_dir/mixer" \
  > "$results/compare.log" 2>&1
grep -a -h "^==\|exit\|calibrated\|worst case\|not compared\|margin\|Error" "$results"/{mixer,fixed,compare}.log
pack mixer "$mixer_dir"
pack compare "$out"
stamp done
