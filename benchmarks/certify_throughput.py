"""Throughput of randomized-smoothing certification against the plain network it smooths.

Prints  (noisy images per second through Smooth.sample_counts) / (images per second of a plain batched
forward pass of the same network at the same batch size), both measured in this one run, interleaved,
median over repeats. The smoothing path adds the noise draw, the argmax and the vote counting; goal >= 0.9.

    .venv/bin/python benchmarks/certify_throughput.py [--batch 1000] [--n 10000] [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from adasmooth.certify import Smooth
from adasmooth.models import SmallResNet


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--n", type=int, default=10_000, help="noise samples per image (one image per repeat)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.manual_seed(0)
    net = SmallResNet().to(args.device).eval()
    smooth = Smooth(net, 10, 0.25, batch_size=args.batch, device=args.device)
    x = torch.rand(1, 1, 28, 28, device=args.device)
    plain_in = torch.rand(args.batch, 1, 28, 28, device=args.device)
    gen = torch.Generator(device=args.device).manual_seed(0)
    batches = -(-args.n // args.batch)

    def plain():
        with torch.no_grad():
            for _ in range(batches):
                net(plain_in)
        _sync(args.device)

    def smoothed():
        smooth.sample_counts(x, args.n, generator=gen)
        _sync(args.device)

    plain()
    smoothed()  # warm-up
    t_plain, t_smooth = [], []
    for _ in range(args.repeats):
        for fn, store in ((plain, t_plain), (smoothed, t_smooth)):
            t0 = time.perf_counter()
            fn()
            store.append(time.perf_counter() - t0)
    plain_rate = batches * args.batch / statistics.median(t_plain)
    smooth_rate = args.n / statistics.median(t_smooth)
    print(f"device {args.device}, batch {args.batch}, n {args.n}, threads {torch.get_num_threads()}")
    print(f"plain forward:   {plain_rate:10.0f} images/s")
    print(f"smoothed counts: {smooth_rate:10.0f} noisy images/s")
    print(f"throughput ratio (goal >= 0.9): {smooth_rate / plain_rate:.3f}")


if __name__ == "__main__":
    main()
