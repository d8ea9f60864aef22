"""How robust is a fixed mixture at a radius too small for a gate to see? Robust accuracy of α-mixtures at small ε.

A gate keeps α at its floor on inputs it cannot tell from clean ones, so within a small radius an adaptive mixture
is only as robust as the fixed mixture α = floor. This measures that: the official APGD-CE (one restart) on
fixed mixtures for each α, s_h and ε given, on the calibration's validation points (--n, the config's mixer
seed). Validation only.

    .venv/bin/python scripts/small_radius.py --standard pretrained/fashion-mnist/standard-wide --out runs/small-radius.json
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch

from adasmooth.attacks.gate_apgd import official_apgd
from adasmooth.config import load_config, resolve_config_path
from adasmooth.evaluation.accuracy import correct_mask
from adasmooth.io import atomic_write_json
from adasmooth.mixing import MixedClassifier
from adasmooth.workflows import load_pair
from adasmooth.workflows.common import load_subset


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None)
    p.add_argument("--standard", default=None)
    p.add_argument("--robust", default=None)
    p.add_argument("--alphas", type=float, nargs="+", default=[0.6, 0.7, 0.8])
    p.add_argument("--robust-scales", type=float, nargs="+", default=[1.0, 2.0])
    p.add_argument("--eps", type=float, nargs="+", default=[0.02])
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    cfg = load_config(resolve_config_path(a.config))
    std, rob = load_pair(cfg, standard=a.standard, robust=a.robust)
    _, _, _, x, y = load_subset(cfg, "val", a.n, cfg.mixer.seed)
    rows = []
    for sh, alpha, eps in itertools.product(a.robust_scales, a.alphas, a.eps):
        model = MixedClassifier(std, rob, alpha=alpha, robust_scale=sh).eval()
        ok = correct_mask(model, x, y)
        idx = ok.nonzero().squeeze(1)
        attack = official_apgd(model, loss="ce", n_iter=a.iters, eps=eps, seed=cfg.mixer.seed)
        adv = torch.cat([attack.perturb(x[idx[i:i + a.batch_size]], y[idx[i:i + a.batch_size]])
                         for i in range(0, len(idx), a.batch_size)]) if len(idx) else x[:0]
        ok[idx[~correct_mask(model, adv, y[idx])]] = False
        rows.append({"robust_scale": sh, "alpha": alpha, "eps": eps, "clean": float(idx.numel() / len(y)),
                     "robust": float(ok.float().mean())})
        print(json.dumps(rows[-1]), flush=True)
    atomic_write_json(a.out, {"standard": a.standard, "robust": a.robust, "n": len(y), "split": "val",
                              "attack": {"name": "apgd-ce (official)", "n_iter": a.iters, "restarts": 1}, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
