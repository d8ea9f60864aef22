#!/usr/bin/env bash
# One GPU run: two pipelines side by side on one GPU (both are launch-bound), then the
# CIFAR-100 composite benchmark alone. Every step is bounded so that the whole fits BUDGET_S seconds.
#   A. fine-tune the shipped gate with official-Square copies beside its two APGD copies (mixer.init_from,
#      attack_square_copies 1), then fit-mixer's calibration, whose checks include FAB-T and Square;
#      evaluate it on the seeded test points under standard AutoAttack plus our gate-aware set.
#   B. the control: re-calibrate the shipped gate, untouched, with the same checks; evaluate it the same way.
#      RECAL_MIXER names another saved mixer to re-calibrate (e.g. runs/gpu-square/mixer/mixer, the gate
#      fine-tuned with Square copies); SKIP_A=1 runs B (and C) without A.
#   C. (with BASE_RUN=runs/pgdat-ema) resume that robust-base training to its end, then clean accuracy,
#      standard AutoAttack and the margins on the same seeded test points (scripts/compare_robust_bases.sh's steps).
#   D. benchmarks/paper_composite.py (the paper's composite's attack-step throughput), skipped with COMPOSITE_S=0.
# Each step's folder is packed into RESULTS as a .tar.gz as soon as it ends (the evaluations' chunk caches
# too: run the same evaluate command again, here or on a CPU, and it goes on from them).
#   bash scripts/gpu_square_gate.sh RUN_DIR
# Environment (defaults): PYTHON (python3), DEVICE (cuda), BUDGET_S (580), RESULTS (RUN_DIR), EVAL_N (1000),
# TRAIN_EXAMPLES (15360), BATCH (512), LR (0.001), SQUARE_QUERIES (200), N_CAL (300), CAL_SQUARE (1000),
# FIT_S (280), RECAL_S (FIT_S), RECAL_MIXER (pretrained/fashion-mnist/mixer), SKIP_A (0), COMPOSITE_S (0), COMPOSITE_ARGS ("--max-batch 512 --repeats 3"), CHUNK (250).
set -u
cd "$(dirname "$0")/.."
run=${1:-runs/gpu-square}; py=${PYTHON:-python3}; dev=${DEVICE:-cuda}; results=${RESULTS:-$run}
budget=${BUDGET_S:-580}; start=$(date +%s); composite_s=${COMPOSITE_S:-0}
left() { echo $(( budget - ($(date +%s) - start) )); }
pack() { tar czf "$results/$1.tar.gz" -C "$run" "${@:2}" 2>/dev/null; }
stamp() { echo "== $(date -u +%T) ($(left) s left): $*"; }
export TQDM_MININTERVAL=${TQDM_MININTERVAL:-15} PYTHONUNBUFFERED=1
mkdir -p "$run" "$results"
command -v nvidia-smi >/dev/null && nvidia-smi -L
$py - "$run/config.yaml" <<EOF || exit 1
import sys, yaml
from adasmooth.config import resolve_config_path
cfg = yaml.safe_load(open(resolve_config_path(None)))
cfg["mixer"].update(init_from="pretrained/fashion-mnist/mixer", train_examples=${TRAIN_EXAMPLES:-15360},
                    batch_size=${BATCH:-512}, lr=${LR:-0.001}, epochs=1, attack_square_copies=1,
                    attack_square_queries=${SQUARE_QUERIES:-200}, calibration_square_queries=${CAL_SQUARE:-1000},
                    separation_every=0, checkpoint_every=10, tensorboard=False)
yaml.safe_dump(cfg, open(sys.argv[1], "w"), sort_keys=False)
EOF
evaluate() {  # evaluate MIXER_STEM OUT_NAME
  if [ -f "$1.safetensors" ]; then
    stamp "evaluate $1 under standard AutoAttack"
    timeout $(( $(left) - composite_s - 5 )) $py -m adasmooth evaluate --mixer "$1" --n "${EVAL_N:-1000}" \
      --autoattack standard --chunk-size "${CHUNK:-250}" --device "$dev" --out "$run/$2"
    echo "evaluate $2 exit $?"
    pack "$2" "$2"
  fi
}
pipeline_a() {
  stamp "A: fit-mixer (fine-tune with Square copies)"
  timeout "${FIT_S:-280}" $py -m adasmooth fit-mixer --config "$run/config.yaml" --out "$run/mixer" --device "$dev" \
    --n-calibrate "${N_CAL:-300}"
  echo "fit-mixer exit $?"
  pack mixer config.yaml mixer
  evaluate "$run/mixer/mixer" eval-aa
}
pipeline_b() {
  stamp "B: re-calibrate ${RECAL_MIXER:-the shipped gate} with FAB-T and Square in the checks"
  mkdir -p "$run/recal"
  timeout "${RECAL_S:-${FIT_S:-280}}" $py -m adasmooth calibrate-mixer --config "$run/config.yaml" \
    --mixer "${RECAL_MIXER:-pretrained/fashion-mnist/mixer}" --out "$run/recal/mixer" --device "$dev" --n-calibrate "${N_CAL:-300}"
  echo "calibrate-mixer exit $?"
  pack recal recal
  evaluate "$run/recal/mixer" eval-recal-aa
}
pipeline_c() {
  stamp "C: resume the robust base in $BASE_RUN"
  timeout "${BASE_S:-240}" $py -m adasmooth train-base --config "$BASE_RUN/config.yaml" --kind adversarial \
    --out "$BASE_RUN" --resume --device "$dev"
  echo "train-base exit $?"
  if [ -f "$BASE_RUN/adversarial.safetensors" ]; then
    timeout $(( $(left) - composite_s - 5 )) $py -m adasmooth evaluate --checkpoint "$BASE_RUN/adversarial" \
      --n "${EVAL_N:-1000}" --autoattack standard --device "$dev" --out "$run/eval-base"
    echo "evaluate base exit $?"
    timeout $(( $(left) - composite_s - 5 )) $py -m adasmooth margins --robust "$BASE_RUN/adversarial" --split test \
      --n "${EVAL_N:-1000}" --device "$dev" --out "$run/margins-base"
    echo "margins base exit $?"
  fi
  tar czf "$results/base.tar.gz" "$BASE_RUN" -C "$run" eval-base margins-base 2>/dev/null
}
[ "${SKIP_A:-0}" = 1 ] || pipeline_a > "$results/a.log" 2>&1 &
pipeline_b > "$results/b.log" 2>&1 &
[ -n "${BASE_RUN:-}" ] && pipeline_c > "$results/c.log" 2>&1 &
wait
grep -a -h "^==\|exit\|calibrated on\|worst case\|autoattack-standard\|Error\|clean\|benign" "$results"/[abc].log
if [ "$composite_s" -gt 0 ] && [ "$dev" != cpu ]; then
  stamp paper_composite
  timeout $(( $(left) > composite_s ? composite_s : $(left) )) $py benchmarks/paper_composite.py --device "$dev" \
    ${COMPOSITE_ARGS:---max-batch 512 --repeats 3} 2>&1 | tee "$results/paper_composite.txt"
fi
stamp done
