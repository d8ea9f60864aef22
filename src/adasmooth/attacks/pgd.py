"""Projected gradient descent (Madry et al. 2018) in the l-inf and l2 norms."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .losses import cross_entropy, dlr, targeted_dlr

LOSSES = ("ce", "dlr", "dlr-targeted")


def pgd(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    norm: str = "Linf",
    steps: int = 20,
    step_size: float | torch.Tensor | None = None,
    loss: str = "ce",
    targets: torch.Tensor | None = None,
    random_start: bool = True,
    restarts: int = 1,
    generator: torch.Generator | None = None,
    objective: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """PGD attack: maximise ``loss`` within the ``norm`` ball of radius ``eps`` around ``x``, inside [0, 1].

    Per example it returns the first iterate that ``model`` misclassifies (over all steps and restarts),
    else the last iterate of the last restart.

    Parameters
    ----------
    model : callable mapping images (N, C, H, W) in [0, 1] to logits (N, K). Its mode is left as it is.
    x, y : images in [0, 1] and int64 labels.
    eps : radius, a float or a per-example tensor of shape (N,).
    norm : "Linf" or "L2".
    steps : gradient steps per restart.
    step_size : absolute step (float or per-example tensor); default ``2.5 * eps / steps``.
    loss : "ce" (untargeted), "dlr" (untargeted) or "dlr-targeted" (needs ``targets``).
    targets : target classes for "dlr-targeted", shape (N,).
    random_start : start from a uniform point in the ball (l-inf) or a random point in it (l2).
    restarts : independent random restarts; an example counts as broken if any restart breaks it.
    generator : torch.Generator for the random starts (on ``x``'s device or the CPU).
    objective : optional ``objective(x_adv) -> (logits, per-example loss)`` replacing ``model`` and
        ``loss`` (e.g. a loss that also reads an adaptive model's gate); the logits decide success.

    Returns
    -------
    Adversarial images, same shape and device as ``x``, detached.

    Example
    -------
    >>> x_adv = pgd(model, x, y, eps=0.1, steps=20, generator=torch.Generator().manual_seed(0))
    """
    _check_options(norm, loss, targets, steps, restarts)
    x = x.detach()
    n = x.shape[0]
    view = (n,) + (1,) * (x.dim() - 1)
    eps_t = _per_example(eps, n, x).view(view)
    step_t = 2.5 * eps_t / max(steps, 1) if step_size is None else _per_example(step_size, n, x).view(view)
    if objective is None:
        objective = _model_objective(model, loss, y, targets)
    best = x.clone()
    found = torch.zeros(n, dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        delta = _random_start(x, eps_t, norm, generator) if random_start else torch.zeros_like(x)
        x_adv = _one_restart(objective, x, y, (x + delta).clamp(0, 1), best, found, eps_t, step_t, norm, steps)
        best = torch.where((~found).view(view), x_adv, best)
        if bool(found.all()):
            break
    return best.detach()


def _check_options(norm: str, loss: str, targets, steps: int, restarts: int) -> None:
    if norm not in ("Linf", "L2"):
        raise ValueError(f"norm must be 'Linf' or 'L2', got {norm!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if loss == "dlr-targeted" and targets is None:
        raise ValueError("loss='dlr-targeted' needs targets")
    if steps < 0 or restarts < 1:
        raise ValueError(f"need steps >= 0 and restarts >= 1, got {steps}, {restarts}")


def _model_objective(model, loss: str, y: torch.Tensor, targets):
    """``x_adv -> (logits, per-example loss)`` for one of :data:`LOSSES` on ``model``'s output."""
    def objective(x_adv):
        logits = model(x_adv)
        if loss == "ce":
            return logits, cross_entropy(logits, y)
        if loss == "dlr":
            return logits, dlr(logits, y)
        return logits, targeted_dlr(logits, y, targets)
    return objective


def _one_restart(objective, x, y, x_adv, best, found, eps_t, step_t, norm: str, steps: int) -> torch.Tensor:
    """``steps`` PGD steps from ``x_adv``; ``best`` takes each example's first misclassified iterate and
    ``found`` marks it (both in place). Returns the last iterate (detached). No host-device synchronisation
    inside the step loop: masks select with torch.where, gradients are checked for finiteness once."""
    view = (len(x),) + (1,) * (x.dim() - 1)
    finite = torch.ones((), dtype=torch.bool, device=x.device)
    for step in range(steps + 1):
        x_adv.requires_grad_(True)
        logits, value = objective(x_adv)
        wrong = logits.detach().argmax(1) != y
        best.copy_(torch.where((wrong & ~found).view(view), x_adv.detach(), best))
        found |= wrong
        if step == steps:
            break
        (grad,) = torch.autograd.grad(value.sum(), x_adv)
        finite &= torch.isfinite(grad).all()
        with torch.no_grad():
            x_adv = _project(_step(x_adv.detach(), grad, step_t, norm), x, eps_t, norm)
    if not bool(finite):
        raise FloatingPointError(
            "the attack loss has a non-finite input gradient; PGD cannot be trusted on this model "
            "(check the model for log(0) or division by zero in its forward pass)")
    return x_adv.detach()


def _per_example(value, n: int, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.dim() == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ValueError(f"per-example values must have shape ({n},), got {tuple(t.shape)}")
    if (t < 0).any():
        raise ValueError("eps and step_size must be >= 0")
    return t


def _random_start(x, eps_t, norm, generator):
    gen_device = generator.device if generator is not None else x.device
    if norm == "Linf":
        u = torch.rand(x.shape, generator=generator, device=gen_device, dtype=x.dtype).to(x.device)
        return (2 * u - 1) * eps_t
    d = torch.randn(x.shape, generator=generator, device=gen_device, dtype=x.dtype).to(x.device)
    r = torch.rand((x.shape[0],), generator=generator, device=gen_device, dtype=x.dtype).to(x.device)
    d = d / d.flatten(1).norm(dim=1).clamp_min(1e-12).view_as(eps_t)
    return d * eps_t * r.view_as(eps_t)


def _step(x_adv, grad, step_t, norm):
    if norm == "Linf":
        return x_adv + step_t * grad.sign()
    g_norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view_as(step_t)
    return x_adv + step_t * grad / g_norm


def _project(x_adv, x, eps_t, norm):
    delta = x_adv - x
    if norm == "Linf":
        delta = torch.maximum(torch.minimum(delta, eps_t), -eps_t)
    else:
        d_norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view_as(eps_t)
        delta = delta * torch.clamp(eps_t / d_norm, max=1.0)
    return (x + delta).clamp(0, 1)
