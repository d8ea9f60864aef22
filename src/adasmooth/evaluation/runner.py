"""Run several attacks on one model and report the per-example worst case.

An example counts as robust only if the model classifies it correctly on the clean input *and* after
every attack. Each attack's own accuracy is reported beside the worst case, with its settings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ..attacks.gradients import input_gradients_only
from .accuracy import correct_mask
from .attack_specs import Attack, AttackOutcome, AutoAttackSpec, GateAPGDAttack, PGDAttack, TransferAttack
from .checks import check_evaluation_inputs
from .report import RobustnessReport, assemble_report, environment

logger = logging.getLogger(__name__)

__all__ = ["Attack", "AttackOutcome", "AutoAttackSpec", "GateAPGDAttack", "PGDAttack", "RobustnessReport",
           "TransferAttack", "assemble_report", "environment", "evaluate_robustness"]


def run_attacks(model, x, y, attacks, clean: torch.Tensor, *, eps, norm, device, batch_size, progress=False,
                on_start: Callable[[object], None] | None = None) -> Iterator[tuple]:
    """Run each attack in turn; yields ``(attack, robust, outcome, seconds)`` where ``robust`` is the
    per-example mask of examples correct clean *and* after the attack (on the CPU)."""
    for attack in attacks:
        if on_start is not None:
            on_start(attack)
        t = time.perf_counter()
        with input_gradients_only(model):
            out = attack.robust_mask(model, x, y, eps=eps, norm=norm, device=device, batch_size=batch_size,
                                     progress=progress)
        yield attack, out.robust.cpu() & clean, out, time.perf_counter() - t


def evaluate_robustness(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: list,
    *,
    eps: float,
    norm: str = "Linf",
    device: str | torch.device = "cpu",
    batch_size: int = 250,
    model_info: dict | None = None,
    dataset: str = "",
    split: str = "test",
    indices: torch.Tensor | None = None,
    sanity_checks: bool = True,
    progress: bool = True,
    on_outcome: Callable[[str, AttackOutcome], None] | None = None,
) -> RobustnessReport:
    """Apply every attack in ``attacks`` to ``model`` on ``(x, y)`` and report the per-example worst case.

    Sanity checks (reported in ``sanity``, never silently dropped): robust <= clean for each attack and for
    the worst case; PGD with eps = 0 reproduces clean accuracy; PGD with a very large eps drives accuracy
    to about 0. ``on_outcome(name, outcome)`` sees each attack's outcome (e.g. to keep adversarial images).
    """
    check_evaluation_inputs(model, x, y, device)
    model.eval()
    t0 = time.perf_counter()
    clean_ok = correct_mask(model, x, y, device=device, batch_size=batch_size)
    worst = clean_ok.clone()
    rows = []
    for attack, robust, out, seconds in run_attacks(model, x, y, attacks, clean_ok, eps=eps, norm=norm, device=device,
                                                    batch_size=batch_size, progress=progress):
        worst &= robust
        rows.append({**attack.settings(), "accuracy": float(robust.float().mean()), "seconds": round(seconds, 2),
                     **out.extra})
        logger.info("%s: %.2f%%", attack.name, 100 * rows[-1]["accuracy"])
        if on_outcome is not None:
            on_outcome(attack.name, out)
    return assemble_report(model, x, y, rows, clean_ok, worst, eps=eps, norm=norm, device=device, batch_size=batch_size,
                           model_info=model_info, dataset=dataset, split=split, indices=indices,
                           sanity_checks=sanity_checks, seconds=time.perf_counter() - t0)
