"""What walked around a gate? The adversarial examples a gate calibration kept (its replay pool), one by one.

For each kept example: the attack that found it, its ℓ∞ distance from its validation image, the gate's α on it
and on the clean image, and each base model's probability of the true class (the robust one at s_h). An
example with a small distance and α at the floor walked around the gate: no gate can tell an input that close
from its clean image, so such points are the floor mixture's own. The gate's settings are the mixer's unless
given. --mixer may be a saved mixer or a fit-mixer training state (with --config).

    .venv/bin/python scripts/replay_anatomy.py --mixer runs/mixer --pool runs/mixer-calibration-replay \
        --alpha-range 0.6 0.95 --gamma-scale 3 --robust-scale 1 --out runs/anatomy.json
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import median

import torch

from adasmooth.calibration.replay import AdversarialPool
from adasmooth.config import load_config, resolve_config_path
from adasmooth.io import atomic_write_json
from adasmooth.workflows import load_pair
from adasmooth.workflows.common import load_subset


def main() -> int:
    from gate_separation import _load_mixer, model_parser  # the sibling script's loader and arguments

    p = model_parser(__doc__.splitlines()[0])
    p.add_argument("--pool", required=True, help="the replay pool's stem (<mixer>-calibration-replay)")
    p.add_argument("--n-calibrate", type=int, default=300, help="the calibration's number of validation points")
    p.add_argument("--alpha-range", type=float, nargs=2, default=None)
    p.add_argument("--gamma-scale", type=float, default=None)
    p.add_argument("--gamma-bias", type=float, default=None)
    p.add_argument("--robust-scale", type=float, default=None)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    cfg = load_config(resolve_config_path(a.config))
    std, rob = load_pair(cfg, standard=a.standard, robust=a.robust)
    _, _, _, xv, yv = load_subset(cfg, "val", a.n_calibrate, cfg.mixer.seed)
    model = _load_mixer(a.mixer, cfg, std, rob, input_shape=tuple(xv.shape[1:])).eval()
    for name, value in (("alpha_range", a.alpha_range and tuple(a.alpha_range)), ("gamma_scale", a.gamma_scale),
                        ("gamma_bias", a.gamma_bias), ("robust_scale", a.robust_scale)):
        if value is not None:
            setattr(model, name, value)
    pool = AdversarialPool(xv, eps=cfg.threat.eps, path=a.pool)
    if not len(pool):
        raise SystemExit(f"{a.pool} holds no examples for these {a.n_calibrate} validation points and eps")
    with torch.no_grad():
        ex, clean, y = pool.examples, xv[pool.index], yv[pool.index]
        alpha_adv, alpha_clean = model.alpha(ex), model.alpha(clean)
        p_std = torch.softmax(model.standard_scale * std(ex), 1)
        p_rob = torch.softmax(model.robust_scale * rob(ex), 1)
        fooled = model(ex).argmax(1) != y
    rows = [{"point": int(i), "source": s, "linf": float((e - c).abs().max()), "alpha": float(aa),
             "alpha_clean": float(ac), "standard_p_true": float(ps[t]), "robust_p_true": float(pr[t]),
             "fools_this_setting": bool(f)}
            for i, s, e, c, aa, ac, ps, pr, t, f in zip(pool.index, pool.sources, ex, clean, alpha_adv, alpha_clean,
                                                        p_std, p_rob, y, fooled)]
    by_source = {}
    for s in dict.fromkeys(r["source"] for r in rows):
        mine = [r for r in rows if r["source"] == s]
        by_source[s or "unnamed"] = {k: median(r[k] for r in mine) for k in ("linf", "alpha", "robust_p_true")}
        by_source[s or "unnamed"]["n"] = len(mine)
    res = {"mixer": a.mixer, "pool": a.pool, "eps": cfg.threat.eps, "alpha_range": list(model.alpha_range),
           "gamma_scale": model.gamma_scale, "gamma_bias": model.gamma_bias, "robust_scale": model.robust_scale,
           "medians_by_source": by_source, "examples": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out, res)
    print(json.dumps(by_source, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
