"""Throughput of one attack step through the paper's CIFAR-100 composite (random weights), fp32 and bf16.

Builds configs/cifar100.yaml's pair (BiT ResNet-152x2 at 128x128 via timm, WRN-70-16 SiLU) and its mixing
network, finds the largest batch that fits (doubling until out of memory), and prints for fp32 and bf16
autocast: images per second of forward+backward to the input through the composite, and the composite's
time divided by the sum of the two base models' (goal <= 1.10), all measured in this one run.

    python benchmarks/paper_composite.py --device cuda [--channels-last] [--compile]
    python benchmarks/paper_composite.py --tiny          # CPU smoke run: WRN-10-1 pair, no timm needed
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import time
from pathlib import Path

import torch

from adasmooth.bases import build_base
from adasmooth.config import load_config
from adasmooth.mixer import AdaptiveMixedClassifier, MixingNetwork

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cifar100.yaml"


def step(model, x, y, dtype):
    xx = x.clone().requires_grad_(True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
        out = model(xx)
    loss = torch.nn.functional.cross_entropy(out.float(), y)
    (g,) = torch.autograd.grad(loss, xx)
    return g


def timed(fn, device, repeats):
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def largest_batch(model, device, dtype, start, limit):
    b, best = start, None
    while b <= limit:
        try:
            x = torch.rand(b, 3, 32, 32, device=device)
            step(model, x, torch.zeros(b, dtype=torch.long, device=device), dtype)
            best = b
            b *= 2
        except torch.OutOfMemoryError:
            break
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return best


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--tiny", action="store_true", help="WRN-10-1 bases (CPU smoke run)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-batch", type=int, default=4096)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the composite")
    args = p.parse_args()
    device = torch.device(args.device)
    cfg = load_config(CONFIG)
    m = cfg.mixer
    std_spec, rob_spec = cfg.bases.standard, cfg.bases.robust
    std_layers = list(m.standard_layers)
    if args.tiny:
        rob_spec = dataclasses.replace(rob_spec, args={**rob_spec.args, "depth": 10, "width": 1})
        std_spec = dataclasses.replace(rob_spec, args={**rob_spec.args, "input_size": 64})
        std_layers = ["model.layer.0", "model.layer.1"]
    torch.manual_seed(0)
    std = build_base(std_spec, random_weights=True, device=device, role="standard")
    rob = build_base(rob_spec, random_weights=True, device=device, role="robust")
    gate = MixingNetwork.from_models(std, rob, standard_layers=std_layers, robust_layers=list(m.robust_layers),
                                     input_shape=(3, 32, 32), width=m.width, blocks=m.blocks).to(device)
    ada = AdaptiveMixedClassifier(std, rob, gate, standard_layers=std_layers, robust_layers=list(m.robust_layers),
                                  gamma_scale=m.gamma_scale, gamma_bias=m.eval_gamma_bias or 0.0,
                                  alpha_range=tuple(m.alpha_range) or (0.0, 1.0), standard_scale=m.standard_scale,
                                  robust_scale=m.robust_scale).eval()
    if args.channels_last:
        ada = ada.to(memory_format=torch.channels_last)
    composite = torch.compile(ada) if args.compile else ada
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}; bases {std_spec.architecture} + {rob_spec.architecture}; compile={args.compile}, "
          f"channels_last={args.channels_last}")
    for dtype in ("fp32", "bf16"):
        b = largest_batch(composite, device, dtype, 8 if not args.tiny else 32, args.max_batch)
        if b is None:
            print(f"{dtype}: not even a batch of 8 fits")
            continue
        x = torch.rand(b, 3, 32, 32, device=device)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 100, (b,), device=device)
        t_comp, t_std, t_rob = (timed(functools.partial(step, net, x, y, dtype), device, args.repeats)
                                for net in (composite, std, rob))
        print(f"{dtype}: batch {b}: composite {b / t_comp:8.1f} images/s per attack step; "
              f"overhead ratio composite / (standard + robust) = {t_comp / (t_std + t_rob):.3f} (goal <= 1.10)")


if __name__ == "__main__":
    main()
