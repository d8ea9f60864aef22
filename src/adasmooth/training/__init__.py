"""Training: base models (standard, PGD adversarial)."""

from .base import KINDS, augment, lr_at, train_base

__all__ = ["KINDS", "augment", "lr_at", "train_base"]
