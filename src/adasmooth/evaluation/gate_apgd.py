"""Gate-aware APGD: the official APGD of ``pyautoattack`` run on the composite attack loss
``(1-w)·(CE or targeted DLR) + w·BCE(γ, 1)`` of an adaptive mixture (Bai et al., arXiv 2301.12554, Sec. 5).

APGD computes its loss from the model's output alone, but the gate term needs γ as well. APGD also
accepts an external model that returns ``(logits, per-example loss, input gradient)`` itself (its
``is_tf_model`` interface); :class:`~adasmooth.attacks.adaptive.CompositeLossModel` implements it, so APGD's own
step-size schedule, momentum and checkpoints run unchanged on our loss. Nothing of APGD is re-implemented.
"""

from __future__ import annotations

import torch

from ..attacks.adaptive import CompositeLossModel


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
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    if loss not in ("ce", "dlr-targeted"):
        raise ValueError(f"gate_apgd supports loss 'ce' or 'dlr-targeted', got {loss!r}")
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"the gate weight w must lie in [0, 1], got {w}")
    composite.eval()
    device = torch.device(device)
    wrapped = CompositeLossModel(composite, float(w), device)
    common = {"n_iter": n_iter, "norm": norm, "n_restarts": n_restarts, "eps": eps, "seed": seed,
              "device": device, "is_tf_model": True}
    if loss == "ce":
        attack = APGDAttack(wrapped, loss="ce", **common)
    else:
        attack = APGDAttack_targeted(wrapped, n_target_classes=n_target_classes, **common)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        x_adv = attack.perturb(x.to(device), y.to(device))
    return x_adv.detach()

