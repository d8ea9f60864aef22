"""Which attacks an honest evaluation runs, per kind of model. One place, so that the demo, the
``evaluate`` command and users' scripts attack a model of a given kind the same way."""

from __future__ import annotations

from torch import nn

from .attack_specs import AutoAttackSpec, GateAPGDAttack, PGDAttack, TransferAttack
from .surrogate import SurrogateAttack

KINDS = ("base", "mixed", "adaptive")


def attack_plan(
    kind: str,
    *,
    standard: nn.Module | None = None,
    robust: nn.Module | None = None,
    pgd_steps: int = 20,
    pgd_step_size: float | None = None,
    pgd_restarts: int = 1,
    autoattack: str | None = "standard",
    gate_weights: tuple[float, ...] = (0.5,),
    gate_apgd_iters: int = 100,
    gate_target_classes: int = 3,
    surrogate: bool = False,
    seed: int = 0,
    transfer_cache: dict | None = None,
) -> list:
    """The attacks for a model of ``kind``:

    - ``"base"``: PGD-CE, then AutoAttack (``autoattack``: ``standard``, ``plus``, ``rand``, or ``apgd`` for
      its APGD-CE + APGD-T only; ``None`` leaves it out);
    - ``"mixed"``: the same plus PGD transferred from the standard and from the robust model alone;
    - ``"adaptive"``: the mixed plan plus the official APGD-CE and APGD-T (``gate_target_classes`` targets)
      on ``(1-w)·loss + w·BCE(γ, 1)`` for each ``w`` in ``gate_weights`` (the paper's 0.5 by default; each
      extra w costs two more APGD runs), which also push the gate toward "clean".

    ``surrogate=True`` (for mixtures with logit maps, which may mask gradients) adds PGD and AutoAttack
    guided by the straight-through surrogate (:class:`~adasmooth.evaluation.surrogate.SurrogateAttack`:
    the true model's values, the smooth maps' gradients), each scored on the true model.

    ``transfer_cache`` (a dict shared between plans) lets the transfer attacks of several models on the same
    points craft their images once.

    Report the per-example worst case over all of them (:func:`evaluate_robustness` does).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    plan: list = [PGDAttack(steps=pgd_steps, step_size=pgd_step_size, restarts=pgd_restarts, seed=seed,
                            name=f"pgd{pgd_steps}-ce")]
    if kind in ("mixed", "adaptive"):
        if standard is None or robust is None:
            raise ValueError(f"a {kind} plan needs the standard and robust models for the transfer attacks")
        plan += [TransferAttack(standard, "standard", steps=pgd_steps, seed=seed, cache=transfer_cache),
                 TransferAttack(robust, "robust", steps=pgd_steps, seed=seed, cache=transfer_cache)]
    if kind == "adaptive":
        if not gate_weights or any(not 0.0 <= w <= 1.0 for w in gate_weights):
            raise ValueError(f"gate_weights must be a non-empty list of values in [0, 1], got {gate_weights}")
        for w in gate_weights:
            suffix = "" if len(gate_weights) == 1 else f"-w{w:g}"
            plan += [GateAPGDAttack(loss="ce", gate_weight=w, n_iter=gate_apgd_iters, seed=seed,
                                    name=f"gate-apgd-ce{suffix}"),
                     GateAPGDAttack(loss="dlr-targeted", gate_weight=w, n_iter=gate_apgd_iters,
                                    n_target_classes=gate_target_classes, seed=seed,
                                    name=f"gate-apgd-t{gate_target_classes}{suffix}")]
    if surrogate and kind == "base":
        raise ValueError("surrogate attacks are for mixtures with logit maps, not base models")
    if surrogate:

        plan.append(SurrogateAttack(PGDAttack(steps=pgd_steps, step_size=pgd_step_size, restarts=pgd_restarts,
                                              seed=seed, name=f"pgd{pgd_steps}-ce")))
    if autoattack is not None:
        plan.append(AutoAttackSpec.named(autoattack, seed=seed))
        if surrogate:
            plan.append(SurrogateAttack(AutoAttackSpec.named(autoattack, seed=seed)))
    return plan
