#!/usr/bin/env bash
# One GPU run, in order of value, each step bounded so that the whole fits BUDGET_S seconds:
#   1. the paper's full mixer recipe on the embedded default (scripts/paper_mixer_recipe.py plans the batch
#      for TRAIN_S seconds of training), then fit-mixer's calibration on 1,000 validation points;
#   2. benchmarks/paper_composite.py (the CIFAR-100 composite's attack-step throughput);
#   3. evaluate the new mixer on the 1,000 seeded test points (PGD-20 + transfer + gate-aware + AutoAttack EVAL_AA);
#   4. with ROBUST: the pair's fixed-alpha curve (ALPHAS, s_h 2, AutoAttack's APGD-CE + APGD-T) on the same
#      points; without: standard AutoAttack (with Square and FAB-T) on the shipped mixer's 1,000 test points.
# Each step's folder is packed into RESULTS as a .tar.gz as soon as it ends (chunk caches included, so an
# evaluation cut short resumes elsewhere).
#   bash scripts/gpu_paper_recipe.sh RUN_DIR
# Environment: PYTHON (python3), DEVICE (cuda), TRAIN_S (170), BUDGET_S (560), RESULTS (RUN_DIR),
# EVAL_N (1000), N_CAL (1000 validation points for the calibration), EVAL_AA (the new mixer's AutoAttack set:
# standard), ALPHAS ("0.9 0.8 0.95 0.7 0.6"), MAX_STEPS (none), PLAN_ARGS, COMPOSITE_ARGS ("--max-batch 512 --repeats 3"),
# ROBUST (a robust base checkpoint stem for the new mixer's pair, e.g. pretrained/fashion-mnist/adversarial-w16;
# default: the shipped pair's; with ROBUST set, step 4 draws that pair's fixed-alpha curve instead).
set -u
cd "$(dirname "$0")/.."
run=${1:-runs/gpu}; py=${PYTHON:-python3}; dev=${DEVICE:-cuda}; results=${RESULTS:-$run}
n=${EVAL_N:-1000}; budget=${BUDGET_S:-560}; start=$(date +%s)
left() { echo $(( budget - ($(date +%s) - start) )); }
pack() { tar czf "$results/$1.tar.gz" -C "$run" "${@:2}" 2>/dev/null; }
stamp() { echo "== $(date -u +%T) ($(left) s left): $*"; }
mkdir -p "$run" "$results"
command -v nvidia-smi >/dev/null && nvidia-smi -L
stamp plan
$py scripts/paper_mixer_recipe.py --device "$dev" --out "$run/plan" --train-seconds "${TRAIN_S:-170}" \
  ${ROBUST:+--robust "$ROBUST"} ${PLAN_ARGS:-} || exit 1
stamp fit-mixer
timeout $(( $(left) - 230 )) $py -m adasmooth fit-mixer --config "$run/plan/config.yaml" --out "$run/mixer" \
  --device "$dev" --n-calibrate "${N_CAL:-1000}" ${MAX_STEPS:+--max-steps $MAX_STEPS}
echo "fit-mixer exit $?"
rm -rf "$run/mixer/tensorboard"
pack gpu-mixer plan mixer
stamp paper_composite
timeout "${COMPOSITE_S:-100}" $py benchmarks/paper_composite.py --device "$dev" ${COMPOSITE_ARGS:---max-batch 512 --repeats 3} \
  2>&1 | tee "$results/paper_composite.txt"
if [ -f "$run/mixer/mixer.safetensors" ]; then
  stamp evaluate the new mixer
  timeout $(( $(left) - 15 )) $py -m adasmooth evaluate --config "$run/plan/config.yaml" --mixer "$run/mixer/mixer" \
    --n "$n" --autoattack "${EVAL_AA:-standard}" \
    --chunk-size 250 --device "$dev" --out "$run/eval-new"
  echo "evaluate exit $?"
  pack eval-new eval-new
fi
if [ -n "${ROBUST:-}" ]; then
  for a in ${ALPHAS:-0.9 0.8 0.95 0.7 0.6}; do
    [ "$(left)" -gt 20 ] || break
    stamp fixed alpha $a
    timeout $(( $(left) - 10 )) $py -m adasmooth evaluate --config "$run/plan/config.yaml" --alpha "$a" --robust-scale 2 \
      --n "$n" --autoattack apgd --chunk-size 250 --device "$dev" --out "$run/alpha$a"
    echo "evaluate exit $?"
  done
  pack fixed-alpha $(cd "$run" && ls -d alpha* 2>/dev/null)
elif [ "$(left)" -gt 60 ]; then
  stamp standard AutoAttack on the shipped mixer
  timeout $(( $(left) - 10 )) $py -m adasmooth evaluate --mixer pretrained/fashion-mnist/mixer --n "$n" \
    --autoattack standard --chunk-size 250 --device "$dev" --out "$run/eval-shipped-aa"
  echo "evaluate exit $?"
  pack eval-shipped-aa eval-shipped-aa
fi
stamp done
