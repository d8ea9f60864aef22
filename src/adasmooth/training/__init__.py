"""Training: base models (standard, PGD adversarial) and the mixing network."""

from .base import KINDS, augment, lr_at, train_base
from .gate_fitting import fit_mixer, mixer_loss, state_fingerprint

__all__ = ["KINDS", "augment", "fit_mixer", "lr_at", "mixer_loss", "state_fingerprint", "train_base"]
