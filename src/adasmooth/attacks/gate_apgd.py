"""The official APGD of ``pyautoattack``, set up in one place for every use in the package: on a plain model
(the output map's calibration), and gate-aware on an adaptive mixture, where the loss is
``(1-w)·(CE or targeted DLR) + w·BCE(γ, 1)`` (Bai et al., arXiv 2301.12554, Sec. 5) — for evaluation
(:func:`gate_apgd`: restarts, every target, the clean image where nothing was found), and for the training
attack, the calibration checks and the gate's separation (:func:`apgd_composite_run`: one run from a random
start, per-example radius and gate weight, the highest-loss iterate of every example).

APGD computes its loss from the model's output alone, but the gate term needs γ as well. APGD also
accepts an external model that returns ``(logits, per-example loss, input gradient)`` itself (its
``is_tf_model`` interface); :class:`~adasmooth.attacks.adaptive.CompositeLossModel` implements it, so APGD's own
step-size schedule, momentum and checkpoints run unchanged on our loss. Nothing of APGD is re-implemented.
"""

from __future__ import annotations

import torch
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

from .adaptive import CompositeLossModel
from .gradients import input_gradients_only


def official_apgd(model, *, loss: str = "ce", targeted: bool = False, gate_weight: float | torch.Tensor | None = None,
                  n_iter: int = 100, n_restarts: int = 1, n_target_classes: int = 9, eps: float = 1.0,
                  norm: str = "Linf", seed: int = 0, device: str | torch.device = "cpu"):
    """An official APGD (``targeted``: APGD-T) attack object on ``model``. With ``gate_weight`` the model is
    an adaptive mixture attacked on the gate-aware loss (a per-example tensor is allowed); without, APGD's
    own ``loss`` ("ce" or "dlr") on the model's output."""
    device = torch.device(device)
    common = {"n_iter": int(n_iter), "norm": norm, "n_restarts": n_restarts, "eps": eps, "seed": seed, "device": device}
    if gate_weight is not None:
        model = CompositeLossModel(model, gate_weight if torch.is_tensor(gate_weight) else float(gate_weight), device)
        common["is_tf_model"] = True
    if targeted:
        return APGDAttack_targeted(model, n_target_classes=n_target_classes, **common)
    return APGDAttack(model, loss=loss, **common)


def _rng_guard(device: torch.device):
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def gate_apgd(
    composite,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "Linf",
    w: float = 0.5,
    loss: str = "ce",
    n_iter: int = 100,
    n_restarts: int = 1,
    n_target_classes: int = 9,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """APGD (``loss="ce"``) or APGD-T (``loss="dlr-targeted"``, the ``n_target_classes`` most likely wrong
    classes in turn) on the gate-aware loss of ``composite`` (an :class:`~adasmooth.AdaptiveMixedClassifier`
    or anything with ``components`` and ``mix``). One batch; the caller's global RNG state is restored.
    Returns adversarial images (the clean image where nothing was found)."""
    if loss not in ("ce", "dlr-targeted"):
        raise ValueError(f"gate_apgd supports loss 'ce' or 'dlr-targeted', got {loss!r}")
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"the gate weight w must lie in [0, 1], got {w}")
    composite.eval()
    device = torch.device(device)
    attack = official_apgd(composite, targeted=loss != "ce", gate_weight=w, n_iter=n_iter, n_restarts=n_restarts,
                           n_target_classes=n_target_classes, eps=eps, norm=norm, seed=seed, device=device)
    with _rng_guard(device):
        x_adv = attack.perturb(x.to(device), y.to(device))
    return x_adv.detach()


def apgd_composite_run(composite, x: torch.Tensor, y: torch.Tensor, *, eps: float | torch.Tensor,
                       w: float | torch.Tensor, n_iter: int, seed: int, norm: str = "Linf",
                       targets: torch.Tensor | None = None) -> torch.Tensor:
    """One run of the official APGD (APGD-CE, or APGD-T towards ``targets``) on ``(1-w)·loss + w·BCE(γ, 1)``
    from a random start seeded by ``seed``; ``eps`` and ``w`` may be per-example tensors. Returns the
    highest-loss iterate of every example, whether or not it fools the model (detached)."""
    n, device = len(x), x.device
    attack = official_apgd(composite, targeted=targets is not None, gate_weight=w, n_iter=n_iter, eps=1.0, norm=norm,
                           seed=seed, device=device)
    attack.init_hyperparam(x)
    # APGD's steps and projections broadcast a per-example radius
    attack.eps = torch.as_tensor(eps, dtype=x.dtype, device=device).expand(n).reshape((n,) + (1,) * (x.dim() - 1))
    if targets is not None:
        attack.y_target = targets
    with _rng_guard(device), input_gradients_only(composite):
        torch.manual_seed(seed)
        return attack.attack_single_run(x, y)[0].detach()


def apgd_best_loss(model, x: torch.Tensor, y: torch.Tensor, *, loss: str, eps: float, n_iter: int, seed: int = 0,
                   norm: str = "Linf", batch_size: int = 250, device: str | torch.device = "cpu") -> torch.Tensor:
    """The official APGD with ``loss`` on a plain model, batch by batch: the highest-loss iterate of every
    example (misclassified or not), on the CPU."""
    device = torch.device(device)
    attack = official_apgd(model, loss=loss, n_iter=n_iter, eps=eps, norm=norm, seed=seed, device=device)
    outs = []
    with _rng_guard(device):
        for i in range(0, len(y), batch_size):
            outs.append(attack.perturb(x[i:i + batch_size].to(device), y[i:i + batch_size].to(device),
                                       best_loss=True).detach().cpu())
    return torch.cat(outs)
