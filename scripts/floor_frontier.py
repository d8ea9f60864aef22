"""What can each α floor buy in clean accuracy? Clean validation accuracy of a gate at each floor α_lo.

For every floor and every robust logit scale s_h given, the most clean-accurate setting of the calibration's
grid (γ scale k, γ bias b, ceiling α_hi), beside the fixed mixture α = α_lo at the same s_h. No attack: this
is the clean side of the trade-off only, an upper bound of what calibration can choose at each floor (a floor
still has to hold under attack). Every image of the validation split; never the test set. --mixer may be a
saved mixer or a fit-mixer run's training state (OUT/mixer-last, rebuilt from --config).

    .venv/bin/python scripts/floor_frontier.py --mixer pretrained/fashion-mnist/mixer --out runs/frontier
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import torch

from adasmooth import data as data_mod
from adasmooth.calibration.gate import _cached
from adasmooth.config import load_config, resolve_config_path
from adasmooth.io import atomic_write_json
from adasmooth.mixing import mix_log_probs
from adasmooth.workflows import load_pair

GAMMA_SCALES, BIASES, ALPHA_HIS = (1.0, 2.0, 3.0), (0.0, 0.4, 0.8, 1.2, 1.6, 2.0, 2.5), (0.95, 1.0)


def _accuracy(g, h, alpha, y, standard_scale, robust_scale) -> float:
    mixed = mix_log_probs(g, h, alpha, standard_scale=standard_scale, robust_scale=robust_scale)
    return float((mixed.argmax(1) == y).float().mean())


def main() -> int:
    from gate_separation import _load_mixer, model_parser  # the sibling script's loader and arguments

    p = model_parser(__doc__.splitlines()[0])
    p.add_argument("--floors", type=float, nargs="+", default=[0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    p.add_argument("--robust-scales", type=float, nargs="+", default=[1.0, 2.0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    cfg = load_config(resolve_config_path(a.config))
    std, rob = load_pair(cfg, standard=a.standard, robust=a.robust, device=a.device)
    x, y = data_mod.load(cfg.data.name, "val", root=cfg.data.root)
    model = _load_mixer(a.mixer, cfg, std, rob, input_shape=tuple(x.shape[1:])).to(a.device).eval()
    g, h, bn_raw = _cached(model, x, a.device, cfg.evaluate.batch_size)
    sg = model.standard_scale
    rows = []
    for sh, lo in itertools.product(a.robust_scales, a.floors):
        best = max((_accuracy(g, h, lo + (hi - lo) * torch.sigmoid(k * bn_raw + b), y, sg, sh), k, b, hi)
                   for k, b, hi in itertools.product(GAMMA_SCALES, BIASES, ALPHA_HIS) if lo <= hi)
        fixed = _accuracy(g, h, torch.full((len(y),), lo), y, sg, sh)
        rows.append({"robust_scale": sh, "alpha_lo": lo, "gate_clean": best[0], "gamma_scale": best[1],
                     "gamma_bias": best[2], "alpha_hi": best[3], "fixed_alpha_clean": fixed})
        print(f"s_h {sh:g}, floor {lo:g}: gate {100 * best[0]:.2f}% (k {best[1]:g}, b {best[2]:g}, "
              f"alpha_hi {best[3]:g}); fixed alpha {lo:g}: {100 * fixed:.2f}%", flush=True)
    res = {"mixer": a.mixer, "split": "val", "n": len(y), "standard_clean": float((g.argmax(1) == y).float().mean()),
           "robust_clean": float((h.argmax(1) == y).float().mean()), "rows": rows}
    Path(a.out).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(a.out) / "frontier.json", res)
    print(json.dumps({k: v for k, v in res.items() if k != "rows"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
