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
# use it), AA_FIXED (the AutoAttack set of the fixed mixtures, default AA; a part of it leaves the mixer and the
# bases with every attack the curve met and more, which compare accepts and reports as a lower bound of the
# margin), COMPARE_ARGS (more compare arguments, e.g. --allow-different-plans for any other difference).
# STANDARD (the standard stem that goes with ROBUST; default the shipped Fashion-MNIST one), PY (the Python with
# adasmooth installed; default .venv/bin/python), LAUNCH (default "$PY -m adasmooth";
# ".venv/bin/torchrun --nproc-per-node 2 -m adasmooth" splits each model's chunks over two
# ranks), CHUNK (examples per chunk; default evaluate.batch_size), DEVICE (cpu; cuda on a GPU).
# AA_FIXED=apgd-ce (or apgd) evaluates the fixed mixtures with a part of the standard set only, at a tenth (a
# quarter) of its cost: compare then reports the mixer's margin as a lower bound.
# Reports already measured on the same points can be reused: copy them to OUT/bases/ and touch OUT/bases/done.
# MODELS (a space-separated subset of bases, adaptive and alpha<A>-sh<S>; default all of them) and JOBS (how many
# processes share the list round-robin; default 1: one after another; several suit a GPU, which the small models
# leave launch-bound). `adasmooth compare` runs once every model of the full list is done; until then the script
# names what is missing, and a rerun goes on from there.
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
job() {  # job NAME: the evaluate call of one model of the plan
  case $1 in
    bases) run bases "$aa" "${bases[@]}" ;;
    adaptive) run adaptive "$aa" --mixer "$mixer" --separation-fab-targets 9 "${pair[@]}" ;;
    alpha*) local a=${1#alpha}; run "$1" "$aa_fixed" --alpha "${a%-sh*}" --robust-scale "${1##*-sh}" "${pair[@]}" ;;
    *) echo "unknown model $1" >&2; return 2 ;;
  esac
}
all=(bases adaptive)
for s_h in $s_hs; do for a in $alphas; do all+=("alpha$a-sh$s_h"); done; done
read -r -a todo <<< "${MODELS:-${all[*]}}"
jobs_n=${JOBS:-1}
for ((lane = 0; lane < jobs_n; lane++)); do
  ( for ((i = lane; i < ${#todo[@]}; i += jobs_n)); do job "${todo[$i]}"; done ) &
done
failed=0
for pid in $(jobs -p); do wait "$pid" || failed=1; done
missing=()
for name in "${all[@]}"; do [ -f "$out/$name/done" ] || missing+=("$name"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "not compared yet; still to evaluate: ${missing[*]}"
  exit $failed
fi
standard_report="$out/bases/$(basename "${STANDARD:-standard}").json"
robust_report=$(ls "$out/bases"/*.json | grep -v -- "^$standard_report\$" | head -1)
reports=(standard="$standard_report" robust="$robust_report")
for s_h in $s_hs; do
  for a in $alphas; do reports+=("alpha$a-sh$s_h=$(ls "$out/alpha$a-sh$s_h"/*.json | head -1)"); done
done
reports+=("adaptive=$(ls "$out/adaptive"/*.json | grep -v -- '-alpha\.json$' | head -1)")
# shellcheck disable=SC2086
$py -m adasmooth compare --standard standard --robust robust --out "$out/compare" ${COMPARE_ARGS:-} "${reports[@]}"
