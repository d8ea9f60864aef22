"""Run several attacks on one model and report the per-example worst case.

An example counts as robust only if the model classifies it correctly on the clean input *and* after
every attack. Each attack's own accuracy is reported beside the worst case, with its settings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
from torch import nn

from .accuracy import correct_mask
from .attack_specs import Attack, AttackOutcome, AutoAttackSpec, GateAPGDAttack, PGDAttack, TransferAttack
from .checks import probe_classes
from .report import RobustnessReport, assemble_report, environment

logger = logging.getLogger(__name__)

__all__ = ["Attack", "AttackOutcome", "AutoAttackSpec", "GateAPGDAttack", "PGDAttack", "RobustnessReport",
           "TransferAttack", "assemble_report", "environment", "evaluate_robustness"]


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
    from ..validation import check_images, check_labels

    check_images(x)
    n_classes = probe_classes(model, x[:2], device)
    check_labels(y, num_classes=n_classes, n=len(x))
    model.eval()
    t0 = time.perf_counter()
    clean_ok = correct_mask(model, x, y, device=device, batch_size=batch_size)
    worst = clean_ok.clone()
    rows = []
    for attack in attacks:
        t = time.perf_counter()
        out = attack.robust_mask(model, x, y, eps=eps, norm=norm, device=device, batch_size=batch_size,
                                 progress=progress)
        robust = out.robust.cpu() & clean_ok
        worst &= robust
        rows.append({**attack.settings(), "accuracy": float(robust.float().mean()),
                     "seconds": round(time.perf_counter() - t, 2), **out.extra})
        logger.info("%s: %.2f%%", attack.name, 100 * rows[-1]["accuracy"])
        if on_outcome is not None:
            on_outcome(attack.name, out)
    return assemble_report(model, x, y, rows, clean_ok, worst, eps=eps, norm=norm, device=device, batch_size=batch_size,
                           model_info=model_info, dataset=dataset, split=split, indices=indices,
                           sanity_checks=sanity_checks, seconds=time.perf_counter() - t0)
