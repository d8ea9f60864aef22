"""Overhead of the fixed-α mixed classifier and of the adaptive one (mixing network) over their two base models.

Prints  time(forward+backward through the composite) / (time(fwd+bwd standard) + time(fwd+bwd robust)),
all measured in this one run, interleaved, median over repeats (forward+backward to the input: the cost
of one attack step). Goal for the fixed mixture: <= 1.05. The adaptive model adds its mixing network,
which reads features captured in the same base-model passes (no extra base forward).

    .venv/bin/python benchmarks/mixed_overhead.py [--batch 256] [--repeats 30] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from adasmooth import MixedClassifier
from adasmooth.models import SmallResNet
from adasmooth.models.cost import format_gate_cost, gate_cost


def fwd_bwd(model, x, y, device):
    xx = x.clone().requires_grad_(True)
    out = model(xx)
    loss = torch.nn.functional.cross_entropy(out, y)
    (g,) = torch.autograd.grad(loss, xx)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return g


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--device", default="cpu")
    p.add_argument("--pretrained", action="store_true", help="use the shipped Fashion-MNIST pair")
    args = p.parse_args()
    if args.pretrained:
        from adasmooth import load_pretrained

        pair = load_pretrained("fashion-mnist", device=args.device)
        std, rob = pair.standard, pair.robust
    else:
        torch.manual_seed(0)
        std, rob = SmallResNet().to(args.device).eval(), SmallResNet().to(args.device).eval()
    mixed = MixedClassifier(std, rob, alpha=0.9, standard_scale=2.0, robust_scale=1.0).eval()
    adaptive = pair.adaptive if args.pretrained and pair.adaptive is not None else _fresh_adaptive(std, rob)
    adaptive = adaptive.to(args.device).eval()
    x = torch.rand(args.batch, 1, 28, 28, device=args.device)
    y = torch.randint(0, 10, (args.batch,), device=args.device)
    for m in (std, rob, mixed):  # warm-up
        for _ in range(3):
            fwd_bwd(m, x, y, args.device)
    models = (("standard", std), ("robust", rob), ("mixed", mixed), ("adaptive", adaptive))
    for _, m in models[3:]:  # warm-up
        for _ in range(3):
            fwd_bwd(m, x, y, args.device)
    times = {name: [] for name, _ in models}
    for _ in range(args.repeats):
        for name, m in models:
            t = time.perf_counter()
            fwd_bwd(m, x, y, args.device)
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["standard"] + med["robust"]
    print(f"device={args.device} batch={args.batch} repeats={args.repeats} threads={torch.get_num_threads()}")
    for k, v in med.items():
        print(f"  {k:>8s} fwd+bwd median {1000 * v:8.2f} ms")
    print(f"overhead ratio mixed / (standard + robust) = {med['mixed'] / base:.3f}  (goal <= 1.05)")
    print(f"overhead ratio adaptive / (standard + robust) = {med['adaptive'] / base:.3f}  "
          f"({'shipped' if args.pretrained and pair.adaptive is not None else 'fresh, configured'} "
          f"{format_gate_cost(gate_cost(adaptive, (1, 28, 28), device=args.device))})")


def _fresh_adaptive(std, rob):
    from adasmooth.config import MixerConfig
    from adasmooth.mixer import AdaptiveMixedClassifier, MixingNetwork

    mc = MixerConfig()
    gate = MixingNetwork.from_models(std, rob, standard_layers=mc.standard_layers, robust_layers=mc.robust_layers,
                                     input_shape=(1, 28, 28), width=mc.width, blocks=mc.blocks, stages=mc.stages)
    return AdaptiveMixedClassifier(std, rob, gate, standard_layers=mc.standard_layers, robust_layers=mc.robust_layers,
                                   robust_scale=mc.robust_scale, alpha_range=(0.5, 1.0))


if __name__ == "__main__":
    main()
