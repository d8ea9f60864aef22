"""Plan the paper's full mixer recipe on the embedded default for a time budget (meant for a GPU).

The paper's training attack (Bai et al., arXiv 2301.12554, released configs): 10 attacked copies per clean
image (1 APGD-CE + 9 APGD-T), round(chi2(75)) iterations per attack, uncapped. Everything else stays as
configs/fmnist.yaml has it. This script times one official-APGD iteration through the shipped composite at
a few batch sizes on ``--device``, predicts the time of a training step (copies x df iterations), and
writes a config whose batch size is the smallest that fits one epoch of the training split into
``--train-seconds`` (the learning rate scaled by sqrt(batch / 128), capped at 3x). ``--robust STEM`` puts
another robust base (a saved checkpoint: STEM.safetensors + STEM.json) into the config's ``bases`` section, so
that every command reading OUT/config.yaml works on that pair. Then run

    python -m adasmooth fit-mixer --config OUT/config.yaml --out OUT/run --device cuda --n-calibrate 1000

The probe's timings and the choice go to OUT/plan.json.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import yaml

from adasmooth.attacks.apgd_training import apgd_composite_run
from adasmooth.config import config_from_dict, resolve_config_path
from adasmooth.data import load
from adasmooth.workflows import load_pair
from adasmooth.workflows.mixer_jobs import build_adaptive

PAPER_ATTACK = {"attack_method": "apgd", "attack_copies": 10, "attack_iters_df": 75.0, "attack_max_iters": None}
BATCHES = (128, 192, 256, 384, 512, 768, 1024, 1536, 2048)


def time_per_iteration(model, x, y, *, eps: float, n_iter: int, device: torch.device) -> float:
    """Seconds per official-APGD iteration (CE, w = 0.2) on ``(x, y)``, after one warm-up run."""
    def run():
        apgd_composite_run(model, x, y, eps=eps, w=0.2, n_iter=n_iter, seed=0)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    run()
    t = time.perf_counter()
    run()
    return (time.perf_counter() - t) / n_iter


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", required=True)
    p.add_argument("--train-seconds", type=float, required=True, help="time budget for the whole epoch")
    p.add_argument("--probe", type=int, nargs="+", default=[256, 1024], help="batch sizes timed")
    p.add_argument("--probe-iters", type=int, default=10)
    p.add_argument("--data-root", default=None)
    p.add_argument("--robust", default=None,
                   help="robust base checkpoint stem (default: the shipped pair's); written into the config's bases")
    p.add_argument("--train-examples", type=int, default=None,
                   help="train on a seeded subset of this many training images (default: all)")
    p.add_argument("--max-batch", type=int, default=BATCHES[-1])
    p.add_argument("--copies", type=int, default=PAPER_ATTACK["attack_copies"], help="attacked copies per image")
    p.add_argument("--iters-df", type=float, default=PAPER_ATTACK["attack_iters_df"], help="chi2 df of the iterations")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)

    raw = yaml.safe_load(resolve_config_path("fmnist").read_text())
    attack = {**PAPER_ATTACK, "attack_copies": args.copies, "attack_iters_df": args.iters_df}
    raw["mixer"].update(attack)
    if args.data_root:
        raw["data"]["root"] = args.data_root
    if args.robust:
        meta = json.loads(Path(args.robust + ".json").read_text())
        raw["bases"] = {"robust": {"architecture": meta["architecture"], "args": meta["arch_args"],
                                   "weights": str(Path(args.robust + ".safetensors").resolve())}}
    if args.train_examples:
        raw["mixer"]["train_examples"] = args.train_examples
    cfg = config_from_dict(raw, source="paper recipe")
    std, rob = load_pair(cfg, device=device)
    x, y = load(cfg.data.name, "train", root=cfg.data.root)
    model = build_adaptive(cfg, std, rob, input_shape=tuple(x.shape[1:]), device=device).eval()

    probes = {}
    for b in args.probe:
        probes[b] = time_per_iteration(model, x[:b].to(device), y[:b].to(device), eps=cfg.threat.eps,
                                       n_iter=args.probe_iters, device=device)
    # t(B) = a + c*B through the probes (a single probe: constant)
    bs = sorted(probes)
    if len(bs) > 1:
        c = max(0.0, (probes[bs[-1]] - probes[bs[0]]) / (bs[-1] - bs[0]))
        a = max(1e-6, probes[bs[0]] - c * bs[0])
    else:
        c, a = 0.0, probes[bs[0]]
    iters_per_step = args.copies * args.iters_df
    n_train = min(len(y), args.train_examples or len(y))
    predicted = {b: math.ceil(n_train / b) * iters_per_step * (a + c * b) * 1.1 for b in BATCHES if b <= args.max_batch}
    fits = [b for b in predicted if predicted[b] <= args.train_seconds]
    batch = min(fits) if fits else max(predicted)
    lr = raw["mixer"]["lr"] * min(3.0, math.sqrt(batch / 128))
    raw["mixer"].update(batch_size=batch, lr=lr, separation_every=0, tensorboard=False,
                        checkpoint_every=max(1, math.ceil(n_train / batch) // 4))
    (out / "config.yaml").write_text(
        "# configs/fmnist.yaml with the paper's training attack (10 copies, df 75 uncapped), batch and lr\n"
        "# chosen by scripts/paper_mixer_recipe.py for its time budget (see plan.json)\n"
        + yaml.safe_dump(raw, sort_keys=False))
    plan = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
            "seconds_per_apgd_iteration": {str(b): probes[b] for b in bs},
            "predicted_epoch_seconds": {str(b): round(v, 1) for b, v in predicted.items()},
            "train_seconds_budget": args.train_seconds, "batch_size": batch, "lr": lr,
            "steps": math.ceil(n_train / batch), "fits_budget": bool(fits), **attack}
    (out / "plan.json").write_text(json.dumps(plan, indent=1) + "\n")
    print(json.dumps(plan))


if __name__ == "__main__":
    main()
