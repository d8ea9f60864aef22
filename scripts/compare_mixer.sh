#!/usr/bin/env bash
# Is an adaptive mixer above the fixed-alpha curve? (issue: adaptive smoothing that beats fixed alpha)
# Evaluates, on the same N seeded test points (evaluate.seed), the two shipped bases, the fixed mixtures
# alpha in ALPHAS (robust scale S_H, the validation sweep's), and the mixer, each under its kind's full plan
# plus AutoAttack (AA: "standard" = all four, the default; "apgd" = its APGD-CE + APGD-T only, which missed a
# gate that masks gradients: only Square found it), then runs `adasmooth compare`.
#   bash scripts/compare_mixer.sh OUT MIXER_STEM [CONFIG]
# A finished model leaves OUT/<model>/done and is skipped on a rerun; an interrupted one resumes from its
# cached chunks. Environment: N (1000), AA (standard), ALPHAS ("0.9 0.8 0.95 0.7 0.6"), S_H (2).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1; mixer=$2; config=${3:-fmnist}
n=${N:-1000}; aa=${AA:-standard}; alphas=${ALPHAS:-"0.9 0.8 0.95 0.7 0.6"}; s_h=${S_H:-2}
run() {  # run NAME ARGS...: one evaluate call, skipped when done
  local name=$1; shift
  [ -f "$out/$name/done" ] && return 0
  .venv/bin/adasmooth evaluate --config "$config" --n "$n" --autoattack "$aa" --out "$out/$name" "$@"
  touch "$out/$name/done"
}
run bases
run adaptive --mixer "$mixer"
for a in $alphas; do run "alpha$a" --alpha "$a" --robust-scale "$s_h"; done
reports=(standard="$out/bases/standard.json" robust="$out/bases/adversarial.json")
for a in $alphas; do reports+=("alpha$a=$(ls "$out/alpha$a"/*.json | grep -v -- '-alpha\.json$' | head -1)"); done
reports+=("adaptive=$(ls "$out/adaptive"/*.json | grep -v -- '-alpha\.json$' | head -1)")
.venv/bin/adasmooth compare --standard standard --robust robust --out "$out/compare" "${reports[@]}"
