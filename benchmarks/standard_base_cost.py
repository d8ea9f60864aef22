"""What a candidate standard base costs against the shipped pair: parameters and forward FLOPs of each
standard model relative to the robust base, and the time of one attack step (forward and backward to the
input) through the fixed-α composite with the candidate over the same with the shipped standard model,
measured in this one run, interleaved, median over repeats.

    .venv/bin/python benchmarks/standard_base_cost.py --standard STEM [--batch 256] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from adasmooth import MixedClassifier, load_pretrained
from adasmooth.io import load_model
from adasmooth.models.cost import count_parameters, forward_flops


def attack_step(model, x, y) -> float:
    t = time.perf_counter()
    xx = x.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model(xx), y)
    torch.autograd.grad(loss, xx)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--standard", required=True, help="checkpoint stem of the candidate standard base")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    pair = load_pretrained("fashion-mnist")
    candidate, _ = load_model(args.standard)
    x1 = torch.zeros(1, 1, 28, 28)
    cost = {name: (count_parameters(m), forward_flops(m, lambda m=m: m(x1)))
            for name, m in (("robust", pair.robust), ("shipped standard", pair.standard), ("candidate", candidate))}
    rp, rf = cost["robust"]
    for name, (params, flops) in cost.items():
        print(f"{name:>16s}: {params:>9,} parameters ({params / rp:.2f}x the robust base), "
              f"{flops / 1e6:7.1f} MFLOPs per image ({flops / rf:.2f}x)")
    composites = {"shipped": MixedClassifier(pair.standard, pair.robust, alpha=0.9, robust_scale=2.0).eval(),
                  "candidate": MixedClassifier(candidate, pair.robust, alpha=0.9, robust_scale=2.0).eval()}
    x = torch.rand(args.batch, 1, 28, 28)
    y = torch.randint(0, 10, (args.batch,))
    for m in composites.values():  # warm-up
        attack_step(m, x, y)
    times = {k: [] for k in composites}
    for _ in range(args.repeats):
        for k, m in composites.items():
            times[k].append(attack_step(m, x, y))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"attack step through the fixed-alpha composite, batch {args.batch}: shipped {1000 * med['shipped']:.1f} ms, "
          f"candidate {1000 * med['candidate']:.1f} ms, ratio {med['candidate'] / med['shipped']:.2f}")


if __name__ == "__main__":
    main()
