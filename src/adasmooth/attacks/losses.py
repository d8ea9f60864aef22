"""Per-example attack losses over logits; every loss here is one the attacker *maximises*."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Untargeted cross-entropy, per example."""
    return F.cross_entropy(logits, labels, reduction="none")


def dlr(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Untargeted difference-of-logits-ratio loss (Croce & Hein 2020), per example.

    ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)``; needs at least 3 classes.
    """
    sorted_z, _ = logits.sort(dim=1, descending=True)
    z_y = logits.gather(1, labels[:, None]).squeeze(1)
    top_is_y = logits.argmax(1) == labels
    z_other = torch.where(top_is_y, sorted_z[:, 1], sorted_z[:, 0])
    return -(z_y - z_other) / (sorted_z[:, 0] - sorted_z[:, 2] + 1e-12)


def targeted_dlr(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Targeted DLR loss (Croce & Hein 2020), per example: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4)/2)``.

    Needs at least 4 classes.
    """
    sorted_z, _ = logits.sort(dim=1, descending=True)
    z_y = logits.gather(1, labels[:, None]).squeeze(1)
    z_t = logits.gather(1, targets[:, None]).squeeze(1)
    return -(z_y - z_t) / (sorted_z[:, 0] - 0.5 * (sorted_z[:, 2] + sorted_z[:, 3]) + 1e-12)


def ranked_target(logits: torch.Tensor, labels: torch.Tensor, rank: int) -> torch.Tensor:
    """The class ranked ``rank``-th among the wrong classes (1 = the most likely wrong class)."""
    masked = logits.detach().clone()
    masked.scatter_(1, labels[:, None], float("-inf"))
    return masked.topk(rank, dim=1).indices[:, rank - 1]
