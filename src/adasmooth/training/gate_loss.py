"""The gate's training loss: the paper's BCE + CE + product loss, its targets (clean versus attacked, or
where the standard model alone is right) and the loss weights of the inputs where only the standard model is right."""

import torch
import torch.nn.functional as F

from ..attacks.adaptive import gate_bce


def useful_gate_target(standard_logits: torch.Tensor, robust_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The ``gate_target: useful`` label of each input: 0 (trust the standard model) where the standard model
    is right and the robust one wrong, 1 (trust the robust model) everywhere else, clean or attacked."""
    standard_right = standard_logits.argmax(1) == labels
    robust_right = robust_logits.argmax(1) == labels
    return (~(standard_right & ~robust_right)).float()


def standard_alone_weights(standard_logits, robust_logits, labels, is_adv, weights, factor: float):
    """``weights`` (ones where None) multiplied by ``factor`` on the clean inputs where the standard model is
    right and the robust one wrong; unchanged (None stays None) at ``factor == 1``."""
    if factor == 1.0:
        return weights
    alone = (1 - useful_gate_target(standard_logits, robust_logits, labels)).bool() & (is_adv == 0)
    base = weights if weights is not None else torch.ones_like(is_adv, dtype=torch.float32)
    return base * (1.0 + (factor - 1.0) * alone.to(base.dtype))


def mixer_loss(log_probs, gamma, labels, target, *, c_bce: float, c_ce: float, c_prod: float,
               weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over examples (weighted by ``weights`` when given) of ``c_bce·BCE(γ, t) + c_ce·CE(f(x), y) +
    c_prod·BCE·CE``; ``target`` is t (the paper's: 1 for an attacked input, 0 for a clean one)."""
    bce = gate_bce(gamma, target.to(gamma.dtype))
    ce = F.nll_loss(log_probs, labels, reduction="none")
    per_example = c_bce * bce + c_ce * ce + c_prod * bce * ce
    if weights is None:
        return per_example.mean()
    return (weights * per_example).sum() / weights.sum()
