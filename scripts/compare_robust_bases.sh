#!/usr/bin/env bash
# Compare robust base models on the same seeded test points:
# clean accuracy on all 10,000 test images, PGD-20 + standard AutoAttack (l-inf, eps 0.1) on N seeded test
# points, and the robust model's margins (benign confidence) on those points under PGD-20.
#   bash scripts/compare_robust_bases.sh OUT STEM [STEM ...]     (N defaults to 1000; set N=... to change)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1; shift
n=${N:-1000}
for stem in "$@"; do
  name=$(basename "$stem")
  .venv/bin/adasmooth evaluate --checkpoint "$stem" --n "$n" --autoattack standard --out "$out/eval-$name"
  .venv/bin/adasmooth margins --robust "$stem" --split test --n "$n" --out "$out/margins-$name"
done
