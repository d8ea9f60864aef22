"""The attacks an evaluation runs, as small specs: each knows its settings and returns, per example,
whether the model survived it (``robust_mask``), with the adversarial images it found."""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from ..attacks import gate_pgd, pgd, ranked_target
from ..attacks.gate_apgd import gate_apgd
from .accuracy import attack_batched, correct_mask
from .autoattack import run_autoattack

logger = logging.getLogger(__name__)


class Attack(Protocol):
    """An attack the harness can apply: ``name``, ``settings()``, and ``robust_mask``."""
    name: str

    def settings(self) -> dict: ...

    def robust_mask(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str,
                    device, batch_size: int, progress: bool) -> AttackOutcome: ...


@dataclass
class AttackOutcome:
    robust: torch.Tensor  # bool per example: still correct after this attack
    x_adv: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)  # e.g. AutoAttack's per-sub-attack accuracies, warnings


@dataclass
class PGDAttack:
    """PGD with CE, or targeted DLR on the ``targets_top`` most likely wrong classes (one run each)."""
    steps: int = 20
    step_size: float | None = None
    loss: str = "ce"  # "ce", "dlr" or "dlr-targeted"
    targets_top: int = 1
    restarts: int = 1
    seed: int = 0
    name: str = "pgd"
    gate_weight: float | None = None  # adaptive models: add w·BCE(γ, 1), pushing the gate toward "clean"

    def settings(self) -> dict:
        return {"name": self.name, "type": "pgd" if self.gate_weight is None else "gate-pgd", "steps": self.steps,
                "step_size": self.step_size, "loss": self.loss,
                "targets_top": self.targets_top if self.loss == "dlr-targeted" else None,
                "gate_weight": self.gate_weight, "restarts": self.restarts, "random_start": True, "seed": self.seed}

    def robust_mask(self, model, x, y, *, eps, norm, device, batch_size, progress):
        attack = pgd if self.gate_weight is None else functools.partial(gate_pgd, w=self.gate_weight)
        gen = torch.Generator().manual_seed(self.seed)
        opts = {"eps": eps, "norm": norm, "steps": self.steps, "step_size": self.step_size, "restarts": self.restarts,
                "generator": gen, "batch_size": batch_size, "device": device, "progress": progress, "desc": self.name}
        if self.loss != "dlr-targeted":
            x_adv = attack_batched(attack, model, x, y, loss=self.loss, **opts)
            return AttackOutcome(robust=correct_mask(model, x_adv, y, device=device, batch_size=batch_size), x_adv=x_adv)
        robust = torch.ones(len(y), dtype=torch.bool)
        x_worst = x.clone()
        logits = torch.cat([model(x[i:i + batch_size].to(device)).detach().cpu() for i in range(0, len(x), batch_size)])
        for rank in range(1, self.targets_top + 1):
            targets = ranked_target(logits, y, rank)
            idx = robust.nonzero().squeeze(1)
            if len(idx) == 0:
                break
            x_adv = attack_batched(functools.partial(_targeted, attack), model, x[idx],
                                   torch.stack([y[idx], targets[idx]], 1), loss="dlr-targeted", **opts)
            ok = correct_mask(model, x_adv, y[idx], device=device, batch_size=batch_size)
            x_worst[idx[~ok]] = x_adv[~ok]
            robust[idx[~ok]] = False
        return AttackOutcome(robust=robust, x_adv=x_worst)


def _targeted(attack, model, x, yt, **kw):
    return attack(model, x, yt[:, 0], targets=yt[:, 1], **kw)


@dataclass
class TransferAttack:
    """PGD crafted on ``source`` (e.g. one base model alone), scored on the evaluated model."""
    source: nn.Module
    source_name: str
    steps: int = 20
    step_size: float | None = None
    seed: int = 0
    cache: dict | None = field(default=None, repr=False, compare=False)  # shared across models: craft once

    @property
    def name(self) -> str:
        return f"transfer-from-{self.source_name}"

    def settings(self) -> dict:
        return {"name": self.name, "type": "transfer", "crafted_on": self.source_name, "inner": "pgd-ce",
                "steps": self.steps, "step_size": self.step_size, "seed": self.seed}

    def robust_mask(self, model, x, y, *, eps, norm, device, batch_size, progress):
        key = None
        if self.cache is not None:  # the crafted images depend on the source, settings and inputs only
            key = (id(self.source), self.steps, self.step_size, self.seed, eps, norm, batch_size,
                   hashlib.sha256(x.cpu().contiguous().numpy().tobytes() + y.cpu().numpy().tobytes()).hexdigest())
        x_adv = self.cache.get(key) if key is not None else None
        if x_adv is None:
            x_adv = attack_batched(pgd, self.source, x, y, eps=eps, norm=norm, steps=self.steps,
                                   step_size=self.step_size, generator=torch.Generator().manual_seed(self.seed),
                                   batch_size=batch_size, device=device, progress=progress, desc=self.name)
            if key is not None:
                self.cache[key] = x_adv
        return AttackOutcome(robust=correct_mask(model, x_adv, y, device=device, batch_size=batch_size), x_adv=x_adv)


@dataclass
class GateAPGDAttack:
    """The official APGD (CE) or APGD-T (targeted DLR) on ``(1-w)·loss + w·BCE(γ, 1)``: the attack aimed at
    an adaptive mixture's gate (see :func:`adasmooth.attacks.gate_apgd.gate_apgd`)."""

    loss: str = "ce"
    gate_weight: float = 0.5
    n_iter: int = 100
    n_target_classes: int = 9
    restarts: int = 1
    seed: int = 0
    name: str = ""

    def __post_init__(self):
        if not self.name:
            self.name = "gate-apgd-ce" if self.loss == "ce" else f"gate-apgd-t{self.n_target_classes}"

    def settings(self) -> dict:
        return {"name": self.name, "type": "gate-apgd", "loss": self.loss, "gate_weight": self.gate_weight,
                "n_iter": self.n_iter, "restarts": self.restarts, "seed": self.seed,
                "n_target_classes": self.n_target_classes if self.loss == "dlr-targeted" else None}

    def robust_mask(self, model, x, y, *, eps, norm, device, batch_size, progress):
        parts = []
        for i in tqdm(range(0, len(x), batch_size), desc=self.name, disable=not progress, leave=False):
            parts.append(gate_apgd(model, x[i:i + batch_size], y[i:i + batch_size], eps=eps, norm=norm,
                                   w=self.gate_weight, loss=self.loss, n_iter=self.n_iter, n_restarts=self.restarts,
                                   n_target_classes=self.n_target_classes, seed=self.seed, device=device).cpu())
        x_adv = torch.cat(parts) if parts else x.clone()
        return AttackOutcome(robust=correct_mask(model, x_adv, y, device=device, batch_size=batch_size), x_adv=x_adv)


@dataclass
class AutoAttackSpec:
    """The official AutoAttack (see :func:`adasmooth.evaluation.autoattack.run_autoattack`)."""
    @classmethod
    def named(cls, choice: str, *, seed: int = 0) -> AutoAttackSpec:
        """The spec behind a command-line choice: a version (``standard``, ``plus``, ``rand``), ``apgd-ce``
        (the standard set's APGD-CE alone, a tenth of its cost), or ``apgd``,
        the white-box half of the standard set (APGD-CE and APGD-T with the standard settings: 100 iterations,
        one restart, 9 target classes), about a quarter of its cost where FAB-T and Square find little more.
        AutoAttack's "custom" version would otherwise give APGD-CE its constructor's 5 restarts: a stronger
        attack than the standard set's, so a plan of it would not be a part of the standard plan."""
        if choice == "apgd":
            return cls(version="custom", attacks=["apgd-ce", "apgd-t"], seed=seed, options={"apgd.n_restarts": 1})
        if choice == "apgd-ce":  # the standard set's first sub-attack alone: a part of any standard plan
            return cls(version="custom", attacks=["apgd-ce"], seed=seed, options={"apgd.n_restarts": 1})
        return cls(version=choice, seed=seed)

    version: str = "standard"
    attacks: list | None = None
    seed: int = 0
    options: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"autoattack-{self.version}" if self.version != "custom" else "autoattack-" + "+".join(self.attacks)

    def settings(self) -> dict:
        return {"name": self.name, "type": "autoattack", "version": self.version, "attacks": self.attacks,
                "seed": self.seed, "options": self.options}

    def robust_mask(self, model, x, y, *, eps, norm, device, batch_size, progress):
        res = run_autoattack(model, x, y, eps=eps, norm=norm, version=self.version, attacks=self.attacks,
                             seed=self.seed, batch_size=batch_size, device=device, options=self.options)
        return AttackOutcome(robust=res.robust, x_adv=res.x_adv,
                             extra={"after_each_subattack": res.per_attack, "warnings": res.warnings,
                                    "attacks_run": res.settings["attacks"], "sub_attacks": res.settings["sub_attacks"]})
