#!/usr/bin/env bash
# The new pair's fixed-alpha curve, exactly as scripts/compare_mixer.sh runs it (AA_FIXED=apgd, CHUNK=125).
cd "$(dirname "$0")/../.."
while [ ! -f experiments/w32-pair/cmp/bases/done ]; do sleep 30; done
for a in 0.9 0.8 0.95 0.7 0.6; do
  [ -f experiments/w32-pair/cmp/alpha$a/done ] && continue
  .venv/bin/adasmooth evaluate --config fmnist --n-examples 1000 --autoattack apgd --chunk-size 125 \
    --out experiments/w32-pair/cmp/alpha$a --alpha $a --robust-scale 2 --robust pretrained/fashion-mnist/adversarial-w32 \
    && touch experiments/w32-pair/cmp/alpha$a/done
done
