"""TRADES (Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness and Accuracy").

Inner maximisation: from ``x + 0.001·N(0, I)``, signed-gradient ascent on ``KL(p(x) ‖ p(x'))`` inside
the ε-ball and [0, 1], with the model's clean prediction ``p(x)`` held fixed. Outer loss:
``CE(f(x), y) + β · KL(p(x) ‖ p(x'))`` averaged over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

START_NOISE = 0.001  # standard deviation of the random start, as in the reference implementation


def kl_to_clean(clean_logits: torch.Tensor, adv_logits: torch.Tensor) -> torch.Tensor:
    """Per-example ``KL(softmax(clean) ‖ softmax(adv))``, shape (N,)."""
    clean_log_p = F.log_softmax(clean_logits, dim=1)
    return (clean_log_p.exp() * (clean_log_p - F.log_softmax(adv_logits, dim=1))).sum(dim=1)


def trades_adversarial(
    model: nn.Module,
    x: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """TRADES' inner maximisation (ℓ∞): the input in the ε-ball around ``x`` whose prediction is
    farthest (in KL) from the prediction on ``x``. The model's mode is left as it is; returns detached
    images in [0, 1]."""
    with torch.no_grad():
        clean_logits = model(x)
    noise = torch.randn(x.shape, generator=generator, device=generator.device if generator else x.device)
    x_adv = (x + START_NOISE * noise.to(x.device)).clamp(0.0, 1.0)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = kl_to_clean(clean_logits, model(x_adv)).sum()
        (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv = x_adv + step_size * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    return x_adv.detach()


def trades_loss(clean_logits: torch.Tensor, adv_logits: torch.Tensor, y: torch.Tensor, *, beta: float) -> torch.Tensor:
    """``CE(clean, y) + β · KL(p(clean) ‖ p(adv))``, batch means; β = 0 is plain cross-entropy."""
    return F.cross_entropy(clean_logits, y) + beta * kl_to_clean(clean_logits, adv_logits).mean()
