"""Trade-off sweeps over α and logit scales, and the choice of α for a robustness target.

Clean accuracy for every grid point costs one forward pass per base model over the data (the mixture
is recomputed from cached logits). Robust accuracy needs an attack per grid point, on a fixed subset.
Everything here is meant for the validation split: the test set is for reporting, never for choosing.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ..evaluation.accuracy import batched_logits
from ..evaluation.attack_specs import AutoAttackSpec, PGDAttack
from ..evaluation.harness import evaluate_robustness
from ..mixing import MixedClassifier, mix_log_probs
from ..seeding import seeded_subset

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepPoint:
    alpha: float
    standard_scale: float
    robust_scale: float
    clean_accuracy: float
    robust_accuracy: float | None = None


@dataclass
class SweepResult:
    points: list[SweepPoint]
    standard: dict  # {"clean_accuracy", "robust_accuracy"} of the standard model alone
    robust: dict  # same for the robust model alone
    chosen: SweepPoint | None
    target: dict
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SweepResult:
        """The inverse of :meth:`to_dict` (a saved sweep, e.g. the shipped pair's validation record)."""
        chosen = d.get("chosen")
        return cls(points=[SweepPoint(**p) for p in d["points"]], standard=dict(d["standard"]),
                   robust=dict(d["robust"]), chosen=SweepPoint(**chosen) if chosen else None,
                   target=dict(d["target"]), settings=dict(d.get("settings", {})))


def fast_attacks(kind: str = "apgd", *, steps: int = 20, n_targets: int = 3, seed: int = 0) -> list:
    """A cheap attack set for sweeps: APGD-CE + APGD-T (AutoAttack's code, fewer iterations and targets),
    or PGD-CE + targeted PGD-DLR on the top wrong classes."""
    if kind == "apgd":
        return [AutoAttackSpec(version="custom", attacks=["apgd-ce", "apgd-t"], seed=seed, options={
            "apgd.n_iter": steps, "apgd_targeted.n_iter": steps, "apgd_targeted.n_target_classes": n_targets})]
    if kind == "pgd":
        return [PGDAttack(steps=steps, seed=seed, name="pgd-ce"),
                PGDAttack(steps=steps, loss="dlr-targeted", targets_top=n_targets, seed=seed, name="pgd-dlr-t")]
    raise ValueError(f"attack kind must be 'apgd' or 'pgd', got {kind!r}")


def clean_accuracy_grid(
    standard_logits: torch.Tensor,
    robust_logits: torch.Tensor,
    y: torch.Tensor,
    alphas,
    standard_scales=(1.0,),
    robust_scales=(1.0,),
) -> torch.Tensor:
    """Clean accuracy for every (s_g, s_h, α) from cached logits; shape (S_g, S_h, A)."""
    a = torch.tensor(list(alphas), dtype=standard_logits.dtype).view(-1, 1, 1)
    out = torch.empty(len(standard_scales), len(robust_scales), len(alphas))
    for i, sg in enumerate(standard_scales):
        for j, sh in enumerate(robust_scales):
            mixed = mix_log_probs(standard_logits, robust_logits, a, standard_scale=sg, robust_scale=sh)
            out[i, j] = (mixed.argmax(-1) == y).float().mean(-1)
    return out


def choose_point(points: list[SweepPoint], robust_reference: float, keep_robust: float) -> SweepPoint | None:
    """The grid point with the largest clean accuracy whose robust accuracy is at least
    ``keep_robust * robust_reference`` (ties: more robust, then larger α). None if no point qualifies."""
    ok = [p for p in points if p.robust_accuracy is not None and p.robust_accuracy >= keep_robust * robust_reference - 1e-12]
    if not ok:
        return None
    return max(ok, key=lambda p: (p.clean_accuracy, p.robust_accuracy, p.alpha))


def sweep(
    standard: nn.Module,
    robust: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    alphas,
    eps: float,
    norm: str = "Linf",
    standard_scales=(1.0,),
    robust_scales=(1.0,),
    n_robust: int = 500,
    attacks: list | None = None,
    keep_robust: float = 0.97,
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int = 500,
    progress: bool = True,
) -> SweepResult:
    """Clean accuracy on all of ``(x, y)`` and robust accuracy on a seeded subset of ``n_robust`` points,
    for each grid point; then choose the point that keeps ``keep_robust`` of the robust model's robust
    accuracy with the most clean accuracy. Pass validation data only."""
    attacks = attacks if attacks is not None else fast_attacks("apgd", seed=seed)
    standard.eval()
    robust.eval()
    g = batched_logits(standard, x, batch_size=batch_size, device=device, progress=progress, desc="standard logits")
    h = batched_logits(robust, x, batch_size=batch_size, device=device, progress=progress, desc="robust logits")
    clean = clean_accuracy_grid(g, h, y, alphas, standard_scales, robust_scales)
    idx = seeded_subset(len(y), n_robust, seed)
    xs, ys = x[idx], y[idx]

    def robust_acc(model):
        rep = evaluate_robustness(model, xs, ys, attacks, eps=eps, norm=norm, device=device, batch_size=batch_size,
                                  sanity_checks=False, progress=False)
        return rep.robust_accuracy

    ref_std = {"clean_accuracy": float((g.argmax(1) == y).float().mean()), "robust_accuracy": robust_acc(standard)}
    ref_rob = {"clean_accuracy": float((h.argmax(1) == y).float().mean()), "robust_accuracy": robust_acc(robust)}
    points = []
    grid = list(itertools.product(enumerate(standard_scales), enumerate(robust_scales), enumerate(alphas)))
    for (i, sg), (j, sh), (k, a) in tqdm(grid, desc="sweep", disable=not progress):
        if a == 0.0 and sg == 1.0:
            r = ref_std["robust_accuracy"]
        elif a == 1.0 and sh == 1.0:
            r = ref_rob["robust_accuracy"]
        else:
            r = robust_acc(MixedClassifier(standard, robust, alpha=float(a), standard_scale=sg, robust_scale=sh))
        points.append(SweepPoint(float(a), float(sg), float(sh), float(clean[i, j, k]), r))
        logger.info("alpha=%.3f s_g=%g s_h=%g clean=%.4f robust=%.4f", a, sg, sh, clean[i, j, k], r)
    chosen = choose_point(points, ref_rob["robust_accuracy"], keep_robust)
    return SweepResult(
        points=points, standard=ref_std, robust=ref_rob, chosen=chosen,
        target={"keep_robust": keep_robust, "robust_reference": ref_rob["robust_accuracy"],
                "rule": "max clean accuracy s.t. robust >= keep_robust * robust model's robust accuracy"},
        settings={"n_clean": len(y), "n_robust": len(idx), "eps": eps, "norm": norm, "seed": seed,
                  "attacks": [a.settings() for a in attacks]},
    )
