"""Would this gate setting hold? One calibration check of a chosen (α range, γ scale, γ bias, s_h).

The calibration's own check: the validation points it attacks (--n-calibrate, the config's mixer seed), the
attack set of `adasmooth calibrate-mixer` (gate-aware APGD-CE for w = 0, 0.5, 1, APGD-T, transfer from the
standard model, then the config's `mixer.calibration_autoattack` at `calibration_square_queries`), with an
optional replay pool (tried first, and added to). Clean accuracy on every validation image. Appends one JSON
line to --out. Validation only. --mixer may be a saved mixer or a fit-mixer training state (with --config).

    .venv/bin/python scripts/check_gate_setting.py --mixer runs/mixer --alpha-range 0.6 0.95 --gamma-scale 3 \
        --gamma-bias 0 --robust-scale 1 --pool runs/mixer-calibration-replay --out runs/checks.jsonl
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from adasmooth.calibration.gate import gate_attack_set_robust_mask
from adasmooth.calibration.replay import AdversarialPool
from adasmooth.config import load_config, resolve_config_path
from adasmooth.evaluation.accuracy import correct_mask
from adasmooth.workflows import load_pair
from adasmooth.workflows.common import load_subset


def main() -> int:
    from gate_separation import _load_mixer, model_parser  # the sibling script's loader and arguments

    p = model_parser(__doc__.splitlines()[0])
    p.add_argument("--alpha-range", type=float, nargs=2, required=True)
    p.add_argument("--gamma-scale", type=float, required=True)
    p.add_argument("--gamma-bias", type=float, required=True)
    p.add_argument("--robust-scale", type=float, default=None, help="s_h at test time (default: the mixer's)")
    p.add_argument("--n-calibrate", type=int, default=300)
    p.add_argument("--verify-iters", type=int, default=50)
    p.add_argument("--stop-below", type=float, default=None, help="stop once the robust share falls below this")
    p.add_argument("--pool", default=None, help="a replay pool's stem (e.g. <mixer>-calibration-replay)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    cfg = load_config(resolve_config_path(a.config))
    std, rob = load_pair(cfg, standard=a.standard, robust=a.robust, device=a.device)
    x_all, y_all, _, xv, yv = load_subset(cfg, "val", a.n_calibrate, cfg.mixer.seed)
    model = _load_mixer(a.mixer, cfg, std, rob, input_shape=tuple(xv.shape[1:])).to(a.device).eval()
    model.alpha_range, model.gamma_scale, model.gamma_bias = tuple(a.alpha_range), a.gamma_scale, a.gamma_bias
    if a.robust_scale is not None:
        model.robust_scale = a.robust_scale
    pool = None if a.pool is None else AdversarialPool(xv, eps=cfg.threat.eps, path=a.pool)
    mc, t0 = cfg.mixer, time.perf_counter()
    robust = gate_attack_set_robust_mask(model, xv, yv, eps=cfg.threat.eps, standard=model.standard, device=a.device,
                                         n_iter=a.verify_iters, seed=mc.seed, autoattack=tuple(mc.calibration_autoattack),
                                         square_queries=mc.calibration_square_queries, stop_below=a.stop_below,
                                         progress=True, desc="check", pool=pool)
    row = {"mixer": a.mixer, "alpha_range": list(a.alpha_range), "gamma_scale": a.gamma_scale,
           "gamma_bias": a.gamma_bias, "robust_scale": model.robust_scale, "eps": cfg.threat.eps,
           "clean_val": float(correct_mask(model, x_all, y_all, device=a.device).float().mean()),
           "clean_val_n": len(y_all), "robust": float(robust.float().mean()), "n": len(yv),
           "stopped_below": a.stop_below, "attacks": ["gate-apgd-ce (w 0, 0.5, 1)", "gate-apgd-t3", "transfer",
                                                       *mc.calibration_autoattack],
           "replayed": 0 if pool is None else len(pool), "seconds": time.perf_counter() - t0}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
