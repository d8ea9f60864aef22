"""Transfer attacks: craft adversarial examples on one model, score them on another."""

from __future__ import annotations

import torch
from torch import nn

from .pgd import pgd


def transfer_attack(source: nn.Module, x: torch.Tensor, y: torch.Tensor, **pgd_options) -> torch.Tensor:
    """Craft PGD examples against ``source`` (e.g. the standard or robust base model alone).

    The returned images are meant to be scored on another model: an example breaks the target if the
    target misclassifies them. ``pgd_options`` are passed to :func:`adasmooth.attacks.pgd`.
    """
    return pgd(source, x, y, **pgd_options)
