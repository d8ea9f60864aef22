"""Functional attacks: keyword-only options, device-agnostic, seeded with a torch.Generator."""

from .losses import cross_entropy, dlr, ranked_target, targeted_dlr
from .pgd import pgd
from .transfer import transfer_attack

__all__ = ["cross_entropy", "dlr", "pgd", "ranked_target", "targeted_dlr", "transfer_attack"]

from .adaptive import composite_attack_loss, gate_bce, randomized_attack

__all__ += ["composite_attack_loss", "gate_bce", "randomized_attack"]
