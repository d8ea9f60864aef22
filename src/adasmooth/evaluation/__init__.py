"""Evaluation: accuracies, attacks over data sets, AutoAttack, worst case over attacks."""

from .accuracy import accuracy, attack_batched, batched_logits, correct_mask
from .autoattack import AutoAttackResult, run_autoattack
from .compare import compare_reports
from .harness import (
    AttackOutcome,
    AutoAttackSpec,
    GateAPGDAttack,
    PGDAttack,
    RobustnessReport,
    TransferAttack,
    evaluate_robustness,
)
from .plans import attack_plan

__all__ = [
    "AttackOutcome", "AutoAttackResult", "AutoAttackSpec", "GateAPGDAttack", "PGDAttack", "RobustnessReport", "TransferAttack",
    "accuracy", "attack_batched", "attack_plan", "batched_logits", "compare_reports", "correct_mask",
    "evaluate_robustness", "run_autoattack",
]
