"""Attacks aimed at an adaptive mixture: losses that also push the gate toward "clean", and the
randomized attack used to train the mixer (Bai et al., arXiv 2301.12554, Sec. 4.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .losses import targeted_dlr
from .pgd import pgd


def gate_bce(gamma: torch.Tensor, target: float | torch.Tensor) -> torch.Tensor:
    """Per-example binary cross-entropy of the gate logit γ against ``target`` (1 = attacked)."""
    t = torch.as_tensor(target, dtype=gamma.dtype, device=gamma.device).expand_as(gamma)
    return F.binary_cross_entropy_with_logits(gamma, t, reduction="none")


def composite_attack_loss(
    log_probs: torch.Tensor,
    gamma: torch.Tensor,
    labels: torch.Tensor,
    *,
    w: float | torch.Tensor,
    targets: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(1 - w)·(CE or targeted DLR) + w·BCE(γ, 1)``, per example, for the attacker to maximise.

    Maximising ``BCE(γ, 1) = -log σ(γ)`` drives γ down, i.e. makes the gate call the input clean and
    trust the standard model. ``targets`` switches the classification term to targeted DLR; where a
    target equals the label (``-1`` is also accepted) that example uses untargeted CE.
    """
    ce = F.nll_loss(log_probs, labels, reduction="none")
    cls = ce
    if targets is not None:
        use_t = (targets >= 0) & (targets != labels)
        safe = torch.where(use_t, targets, (labels + 1) % log_probs.shape[1])
        cls = torch.where(use_t, targeted_dlr(log_probs, labels, safe), ce)
    w = torch.as_tensor(w, dtype=log_probs.dtype, device=log_probs.device)
    return (1 - w) * cls + w * gate_bce(gamma, 1.0)


def randomized_attack(
    composite,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    generator: torch.Generator,
    eps_range: tuple[float, float] = (0.4, 1.1),
    iters_df: float = 75.0,
    max_iters: int = 10,
    momentum_max: float = 0.9,
    w_max: float = 0.4,
    n_targets: int = 9,
    untargeted_share: float = 0.5,
) -> torch.Tensor:
    """The mixer's training attack, drawn per example (l-inf):

    ε_i = ε·U(eps_range); iterations K_i ~ χ²(iters_df) scaled so that its mean is ``max_iters / 2``,
    clipped to [1, max_iters] (the paper draws χ²(75) with no cap; we cap it for CPU budgets); momentum
    μ_i ~ U(0, momentum_max); step 5·ε_i/K_i; loss ``(1-w_i)·(CE or targeted DLR) + w_i·BCE(γ, 1)`` with
    w_i ~ U(0, w_max); untargeted with probability ``untargeted_share``, else targeted at a class drawn
    from the ``n_targets`` most likely wrong ones. ``composite.components(x)`` must return
    ``(standard logits, robust logits, γ)``, ``composite.mix(g, h, γ)`` and ``composite(x)`` log-probabilities.
    Returns detached adversarial images; the composite's mode is left as it is.
    """
    n = x.shape[0]
    dev = x.device

    def u(lo, hi):
        return (lo + (hi - lo) * torch.rand(n, generator=generator, device=generator.device)).to(dev)

    eps_i = eps * u(*eps_range)
    chi2 = torch.distributions.Chi2(torch.tensor(float(iters_df)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        k_raw = chi2.sample((n,))
    iters = (k_raw * (max_iters / 2) / iters_df).round().clamp(1, max_iters).to(dev)
    mu = u(0.0, momentum_max)
    w = u(0.0, w_max)
    step = 5 * eps_i / iters
    with torch.no_grad():
        log_p0 = composite(x)
    rank = torch.randint(1, max(2, min(n_targets, log_p0.shape[1] - 1) + 1), (n,), generator=generator,
                         device=generator.device).to(dev)
    wrong_ranked = log_p0.scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True)
    targets = wrong_ranked.gather(1, (rank - 1)[:, None]).squeeze(1)
    untargeted = u(0.0, 1.0) < untargeted_share
    targets = torch.where(untargeted, torch.full_like(y, -1), targets)

    view = (n,) + (1,) * (x.dim() - 1)
    x_adv = x.clone()
    velocity = torch.zeros_like(x)
    for t in range(int(iters.max().item()) if n else 0):
        active = (t < iters).view(view).to(x.dtype)
        x_adv.requires_grad_(True)
        g, h, gamma = composite.components(x_adv)
        log_p = composite.mix(g, h, gamma)
        loss = composite_attack_loss(log_p, gamma, y, w=w, targets=targets)
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        if not bool(torch.isfinite(grad).all()):
            raise FloatingPointError("the composite attack loss has a non-finite input gradient")
        with torch.no_grad():
            grad = grad / grad.abs().flatten(1).mean(1).clamp_min(1e-12).view(view)
            velocity = mu.view(view) * velocity + grad
            x_new = x_adv + active * step.view(view) * velocity.sign()
            x_new = torch.min(torch.max(x_new, x - eps_i.view(view)), x + eps_i.view(view)).clamp(0, 1)
        x_adv = x_new.detach()
    return x_adv.detach()


def gate_pgd(
    composite,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    w: float = 0.5,
    loss: str = "ce",
    targets: torch.Tensor | None = None,
    **pgd_options,
) -> torch.Tensor:
    """PGD on ``(1-w)·(CE or targeted DLR) + w·BCE(γ, 1)`` against an adaptive composite: besides
    misclassifying, it pushes the gate toward calling the input clean (trusting the standard model).
    ``pgd_options`` go to :func:`adasmooth.attacks.pgd` (norm, steps, step_size, restarts, generator)."""

    if loss not in ("ce", "dlr-targeted"):
        raise ValueError(f"gate_pgd supports loss 'ce' or 'dlr-targeted', got {loss!r}")
    if loss == "dlr-targeted" and targets is None:
        raise ValueError("loss='dlr-targeted' needs targets")
    targets = targets if loss == "dlr-targeted" else None

    def objective(x_adv):
        g, h, gamma = composite.components(x_adv)
        log_p = composite.mix(g, h, gamma)
        return log_p, composite_attack_loss(log_p, gamma, y, w=w, targets=targets)

    return pgd(composite, x, y, eps=eps, objective=objective, **pgd_options)


class CompositeLossModel:
    """An adaptive composite seen through the official APGD's external-model interface (its
    ``is_tf_model`` path): APGD asks for ``(log-probs, per-example loss, input gradient)`` and gets those of
    ``(1-w)·(CE or targeted DLR) + w·BCE(γ, 1)``, so its own step sizes, momentum and checkpoints run
    unchanged on the gate-aware loss. ``w`` is a float or a per-example tensor."""

    def __init__(self, composite, w: float | torch.Tensor, device):
        self.composite, self.w, self.device = composite, w, torch.device(device)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.composite(x)

    __call__ = predict

    def _loss_grad(self, x, y, targets):
        x = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            g, h, gamma = self.composite.components(x)
            log_p = self.composite.mix(g, h, gamma)
            loss = composite_attack_loss(log_p, gamma, y, w=self.w, targets=targets)
            (grad,) = torch.autograd.grad(loss.sum(), x)
        if not bool(torch.isfinite(grad).all()):
            raise FloatingPointError("the composite attack loss has a non-finite input gradient")
        return log_p.detach(), loss.detach(), grad.detach()

    def get_logits_loss_grad_xent(self, x, y):
        return self._loss_grad(x, y, None)

    def get_logits_loss_grad_target(self, x, y, y_target):
        return self._loss_grad(x, y, y_target)
