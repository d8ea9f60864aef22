"""Sanity checks of an evaluation (after AutoAttack's own ``checks``): the model takes the images and
returns logits; PGD with ε = 0 reproduces clean accuracy; a huge ε breaks the model."""

from __future__ import annotations

import torch

from ..attacks import pgd
from ..validation import check_images, check_labels
from .accuracy import attack_batched, correct_mask


def check_evaluation_inputs(model, x: torch.Tensor, y: torch.Tensor, device) -> int:
    """Images in [0, 1] of a shape the model takes, labels in its class range; returns the class count."""
    check_images(x)
    n_classes = probe_classes(model, x[:2], device)
    check_labels(y, num_classes=n_classes, n=len(x))
    return n_classes


def probe_classes(model, x, device) -> int:
    """Run the model on two images to learn its class count; a shape it cannot take is a clear error."""
    try:
        with torch.no_grad():
            out = model(x.to(device))
    except RuntimeError as exc:
        raise ValueError(f"the model cannot take images of shape {tuple(x.shape[1:])} (C, H, W): {exc}") from None
    if out.dim() != 2:
        raise ValueError(f"the model must return logits of shape (N, classes), got {tuple(out.shape)}")
    return int(out.shape[1])


def epsilon_checks(model, x, y, *, eps, norm, device, batch_size, n: int = 100) -> dict:
    """eps = 0 must give clean accuracy; a huge eps must break almost everything."""
    xs, ys = x[:n], y[:n]
    clean = float(correct_mask(model, xs, ys, device=device, batch_size=batch_size).float().mean())
    gen = torch.Generator().manual_seed(0)
    x0 = attack_batched(pgd, model, xs, ys, eps=0.0, norm=norm, steps=5, generator=gen, device=device,
                        batch_size=batch_size)
    at_zero = float(correct_mask(model, x0, ys, device=device, batch_size=batch_size).float().mean())
    big = 1.0 if norm == "Linf" else 50.0
    xb = attack_batched(pgd, model, xs, ys, eps=big, norm=norm, steps=20, step_size=big / 8, generator=gen,
                        device=device, batch_size=batch_size)
    at_big = float(correct_mask(model, xb, ys, device=device, batch_size=batch_size).float().mean())
    return {
        "eps_zero_equals_clean": {"clean": clean, "accuracy": at_zero, "ok": abs(at_zero - clean) < 1e-9, "n": len(ys)},
        "huge_eps_breaks_model": {"eps": big, "accuracy": at_big, "ok": at_big <= 0.2, "n": len(ys)},
    }
