"""Evaluation: accuracies, attacks over data sets, AutoAttack, worst case over attacks."""

from .accuracy import accuracy, attack_batched, batched_logits, correct_mask

__all__ = ["accuracy", "attack_batched", "batched_logits", "correct_mask"]
