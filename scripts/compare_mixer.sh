#!/usr/bin/env bash
# Is an adaptive mixer above the fixed-alpha curve, like for like?
# Evaluates, on the same N seeded test points (evaluate.seed), the two shipped bases, the fixed mixtures
# alpha in ALPHAS at every robust scale in S_H (both scales the validation sweep considers), and the mixer, each under its kind's full plan
# plus AutoAttack (AA: "standard" = all four, the default; "apgd" = its APGD-CE + APGD-T only, which missed a
# gate that masks gradients: only Square found it), then runs `adasmooth compare`.
#   bash scripts/compare_mixer.sh OUT MIXER_STEM [CONFIG]
# A finished model leaves OUT/<model>/done and is skipped on a rerun; an interrupted one resumes from its
# cached chunks. Environment: N (1000), AA (standard), ALPHAS ("0.9 0.8 0.95 0.7 0.6"), S_H ("1 2"),
# ROBUST (a robust checkpoint stem in place of the shipped one: the bases, the fixed mixtures and the mixer all
# use it), AA_FIXED (the AutoAttack set of the fixed mixtures, default AA; anything else makes the plans differ, and
# compare then needs --allow-different-plans, which COMPARE_ARGS passes on).
# STANDARD (the standard stem that goes with ROBUST; default the shipped Fashion-MNIST one), PY (the Python with
# adasmooth installed; default .venv/bin/python), LAUNCH (default "$PY -m adasmooth";
# ".venv/bin/torchrun --nproc-per-node 2 -m adasmooth" splits each model's chunks over two
# ranks), CHUNK (examples per chunk; default evaluate.batch_size), DEVICE (cpu; cuda on a GPU).
# AA_FIXED=apgd-ce (or apgd) evaluates the fixed mixtures with a part of the standard set only, at a tenth (a
# quarter) of its cost: compare then reports the mixer's margin as a lower bound.
# Reports already measured on the same points can be reused: copy them to OUT/bases/ and touch OUT/bases/done.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1; mixer=$2; config=${3:-fmnist}
n=${N:-1000}; aa=${AA:-standard}; alphas=${ALPHAS:-"0.9 0.8 0.95 0.7 0.6"}; s_hs=${S_H:-"1 2"}
aa_fixed=${AA_FIXED:-$aa}; robust=${ROBUST:-}; py=${PY:-.venv/bin/python}; launch=${LAUNCH:-$py -m adasmooth}
pair=(); bases=(); chunk=()
[ -n "${CHUNK:-}" ] && chunk=(--chunk-size "$CHUNK")
if [ -n "$robust" ]; then
  shipped=$($py -c 'from adasmooth.pretrained import pretrained_dir; print(pretrained_dir())')
  pair=(--robust "$robust")
  [ -n "${STANDARD:-}" ] && pair+=(--standard "$STANDARD")
  bases=(--checkpoint "${STANDARD:-$shipped/fashion-mnist/standard}" --checkpoint "$robust")
fi
run() {  # run NAME AA ARGS...: one evaluate call, skipped when done
  local name=$1 set=$2; shift 2
  [ -f "$out/$name/done" ] && return 0
  $launch evaluate --config "$config" --device "${DEVICE:-cpu}" --n-examples "$n" --autoattack "$set" "${chunk[@]}" \
    --out "$out/$name" "$@"
  touch "$out/$name/done"
}
run bases "$aa" "${bases[@]}"
run adaptive "$aa" --mixer "$mixer" --separation-fab-targets 9 "${pair[@]}"
for s_h in $s_hs; do
  for a in $alphas; do run "alpha$a-sh$s_h" "$aa_fixed" --alpha "$a" --robust-scale "$s_h" "${pair[@]}"; done
done
robust_report=$(ls "$out/bases"/*.json | grep -v -- '/standard\.json$' | head -1)
reports=(standard="$out/bases/standard.json" robust="$robust_report")
for s_h in $s_hs; do
  for a in $alphas; do reports+=("alpha$a-sh$s_h=$(ls "$out/alpha$a-sh$s_h"/*.json | head -1)"); done
done
reports+=("adaptive=$(ls "$out/adaptive"/*.json | grep -v -- '-alpha\.json$' | head -1)")
# shellcheck disable=SC2086
$py -m adasmooth compare --standard standard --robust robust --out "$out/compare" ${COMPARE_ARGS:-} "${reports[@]}"
