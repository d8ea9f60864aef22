"""How well does a mixer's gate separate clean test inputs from attacks, including the gradient-free ones?

Scores α(x) on the seeded test points `adasmooth evaluate` attacks (evaluate.seed, the first N) against α on
the final iterates of gate-aware APGD-CE (w in --weights), of the official Square attack (--square-queries),
and on what the official FAB-T finds (--fab-targets), in chunks that a rerun skips once written
(OUT/chunk-<i>.pt). Writes OUT/separation.json with the AUROCs over all points, and the usefulness AUROC
over every clean image of the split (does α fall where the standard model alone is right?). With
--usefulness-only, only the latter (seconds); --mixer may then also be a fit-mixer run's training state
(OUT/mixer-last, rebuilt from --config).

    .venv/bin/python scripts/gate_separation.py --mixer pretrained/fashion-mnist/mixer --n 1000 \\
        --square-queries 1000 --out results/separation
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from adasmooth import data as data_mod
from adasmooth.config import load_config, resolve_config_path
from adasmooth.evaluation.separation import auroc, gate_separation, usefulness_auroc
from adasmooth.io import atomic_write_json, load_tensors
from adasmooth.mixer import load_adaptive
from adasmooth.seeding import seeded_subset
from adasmooth.workflows import load_pair
from adasmooth.workflows.mixer_jobs import build_adaptive


def model_parser(description: str) -> argparse.ArgumentParser:
    """The arguments that name a mixer and its pair: --mixer (a saved mixer or a training state), --config,
    --standard, --robust."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--mixer", required=True)
    p.add_argument("--config", default=None)
    p.add_argument("--standard", default=None)
    p.add_argument("--robust", default=None)
    return p


def main() -> int:
    p = model_parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--chunk", type=int, default=100)
    p.add_argument("--weights", type=float, nargs="+", default=[0.5])
    p.add_argument("--square-queries", type=int, default=1000)
    p.add_argument("--fab-targets", type=int, default=0)
    p.add_argument("--split", default="test", choices=("val", "test"),
                   help="val: the held-out training images, for comparing gates without touching the test set")
    p.add_argument("--usefulness-only", action="store_true",
                   help="only the usefulness AUROC on the split's clean images (no attack)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    cfg = load_config(resolve_config_path(a.config))
    std, rob = load_pair(cfg, standard=a.standard, robust=a.robust, device=a.device)
    x, y = data_mod.load(cfg.data.name, a.split, root=cfg.data.root)
    model = _load_mixer(a.mixer, cfg, std, rob, input_shape=tuple(x.shape[1:])).to(a.device).eval()
    if a.usefulness_only:
        res = {"mixer": a.mixer, "split": a.split, **usefulness_auroc(model, x, y, device=a.device)}
        Path(a.out).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(a.out) / "usefulness.json", res)
        print(json.dumps(res, indent=1))
        return 0
    idx = seeded_subset(len(y), a.n, cfg.evaluate.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    parts = []
    for i in tqdm(range(0, a.n, a.chunk), desc="separation chunks"):
        path = out / f"chunk-{i // a.chunk}.pt"
        if not path.is_file():
            sl = idx[i:i + a.chunk]
            sep = gate_separation(model, x[sl], y[sl], eps=cfg.threat.eps, norm=cfg.threat.norm, weights=a.weights,
                                  seed=cfg.evaluate.seed + i, device=a.device, square_queries=a.square_queries,
                                  fab_targets=a.fab_targets)
            torch.save({"clean": sep.alpha_clean, "apgd": sep.alpha_attacked, "square": sep.alpha_square,
                        "fab": sep.alpha_fab}, path)
        parts.append(torch.load(path, weights_only=True))
    clean = torch.cat([q["clean"] for q in parts])
    res = {"mixer": a.mixer, "n": len(clean), "eps": cfg.threat.eps, "norm": cfg.threat.norm, "split": a.split,
           "points": "evaluate's seeded subset (evaluate.seed)", "seconds": round(time.perf_counter() - t0, 1),
           "alpha_clean_quantiles_10_50_90": clean.quantile(torch.tensor([0.1, 0.5, 0.9])).tolist(),
           "apgd_ce_n_iter": 40,
           "auroc_apgd": {f"w={w:g}": auroc(torch.cat([q["apgd"][float(w)] for q in parts]), clean) for w in a.weights}}
    if a.square_queries:
        res["square"] = {"queries": a.square_queries,
                         "auroc": auroc(torch.cat([q["square"] for q in parts]), clean)}
    if a.fab_targets:
        fab = torch.cat([q["fab"] for q in parts])
        res["fab_t"] = {"targets": a.fab_targets, "found": len(fab), "auroc": auroc(fab, clean) if len(fab) else None}
    res["usefulness_all_clean_images_of_split"] = usefulness_auroc(model, x, y, device=a.device)
    atomic_write_json(out / "separation.json", res)
    print(json.dumps(res, indent=1))
    return 0


def _load_mixer(stem, cfg, std, rob, *, input_shape):
    """A saved mixer, or a fit-mixer training state (``mixer-last``) rebuilt from the config's mixer section."""
    tensors, meta = load_tensors(stem)
    if meta.get("kind") != "mixer-state":
        return load_adaptive(stem, std, rob)
    model = build_adaptive(cfg, std, rob, input_shape=input_shape)
    result = model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")},
                                   strict=False)  # the bases come from --standard / --robust
    missing = [k for k in result.missing_keys if not k.startswith(("standard.", "robust."))]
    if missing or result.unexpected_keys:
        raise SystemExit(f"{stem} does not fit the config's mixer section: missing {missing[:3]}, "
                         f"unexpected {result.unexpected_keys[:3]}")
    return model


if __name__ == "__main__":
    raise SystemExit(main())
