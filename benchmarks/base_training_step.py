"""Time of one adversarial-training step (PGD attack + update) of the robust base, fp32 against bf16 autocast.

    python benchmarks/base_training_step.py [--widths 16 24 32] [--steps 5] [--attack-steps 10] [--device cpu]

For each width it times ``--steps`` steps of ``train_base``'s inner loop (PGD-``attack-steps`` on a batch of
128, then one SGD step) in float32 and under bfloat16 autocast (the ``amp`` training setting), both in this
one run, and prints seconds per step, the projected minutes per Fashion-MNIST epoch (430 steps) and the
fp32/bf16 ratio. bf16 pays off where the hardware has bf16 matrix units (AMX on recent Xeons, GPUs).
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
import torch.nn.functional as F

from adasmooth.attacks import pgd
from adasmooth.models import build
from adasmooth.speed import Autocast


def time_steps(width: int, amp: bool, *, steps: int, attack_steps: int, batch: int, device: str) -> float:
    torch.manual_seed(0)
    model = build("small_resnet", in_channels=1, num_classes=10, width=width).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    attack_model = Autocast(model, torch.device(device).type) if amp else model
    autocast = functools.partial(torch.autocast, device_type=torch.device(device).type, dtype=torch.bfloat16,
                                 enabled=amp)
    x = torch.rand(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        model.eval()
        xa = pgd(attack_model, x, y, eps=0.1, steps=attack_steps, step_size=0.025,
                 generator=torch.Generator().manual_seed(0))
        model.train()
        with autocast():
            loss = F.cross_entropy(model(xa).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 24, 32])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--attack-steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"device {args.device}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"PGD-{args.attack_steps} + update, {args.steps} timed steps")
    for width in args.widths:
        fp32 = time_steps(width, False, steps=args.steps, attack_steps=args.attack_steps, batch=args.batch,
                          device=args.device)
        bf16 = time_steps(width, True, steps=args.steps, attack_steps=args.attack_steps, batch=args.batch,
                          device=args.device)
        print(f"width {width:3d}: fp32 {fp32:.3f} s/step ({fp32 * 430 / 60:.1f} min/epoch), "
              f"bf16 {bf16:.3f} s/step ({bf16 * 430 / 60:.1f} min/epoch), fp32/bf16 {fp32 / bf16:.2f}x")


if __name__ == "__main__":
    main()
