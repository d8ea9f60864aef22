"""Functional attacks: keyword-only options, device-agnostic, seeded with a torch.Generator."""

from .adaptive import composite_attack_loss, gate_bce, gate_pgd, randomized_attack
from .losses import cross_entropy, dlr, ranked_target, targeted_dlr
from .pgd import pgd
from .transfer import transfer_attack

__all__ = [
    "composite_attack_loss", "cross_entropy", "dlr", "gate_bce", "gate_pgd", "pgd", "randomized_attack",
    "ranked_target", "targeted_dlr", "transfer_attack",
]
