"""Run several attacks on one model and report the per-example worst case.

An example counts as robust only if the model classifies it correctly on the clean input *and* after
every attack. Each attack's own accuracy is reported beside the worst case, with its settings.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from ..attacks import gate_pgd, pgd, ranked_target
from ..io import atomic_write_json
from .accuracy import attack_batched, correct_mask

logger = logging.getLogger(__name__)


class Attack(Protocol):
    """An attack the runner can apply: ``name``, ``settings()``, and ``robust_mask``."""

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

    @property
    def name(self) -> str:
        return f"transfer-from-{self.source_name}"

    def settings(self) -> dict:
        return {"name": self.name, "type": "transfer", "crafted_on": self.source_name, "inner": "pgd-ce",
                "steps": self.steps, "step_size": self.step_size, "seed": self.seed}

    def robust_mask(self, model, x, y, *, eps, norm, device, batch_size, progress):
        x_adv = attack_batched(pgd, self.source, x, y, eps=eps, norm=norm, steps=self.steps,
                               step_size=self.step_size, generator=torch.Generator().manual_seed(self.seed),
                               batch_size=batch_size, device=device, progress=progress, desc=self.name)
        return AttackOutcome(robust=correct_mask(model, x_adv, y, device=device, batch_size=batch_size), x_adv=x_adv)


@dataclass
class GateAPGDAttack:
    """The official APGD (CE) or APGD-T (targeted DLR) on ``(1-w)·loss + w·BCE(γ, 1)``: the attack aimed at
    an adaptive mixture's gate (see :func:`adasmooth.evaluation.gate_apgd.gate_apgd`)."""

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
        from .gate_apgd import gate_apgd

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
        from .autoattack import run_autoattack

        res = run_autoattack(model, x, y, eps=eps, norm=norm, version=self.version, attacks=self.attacks,
                             seed=self.seed, batch_size=batch_size, device=device, options=self.options)
        return AttackOutcome(robust=res.robust, x_adv=res.x_adv,
                             extra={"after_each_subattack": res.per_attack, "warnings": res.warnings,
                                    "attacks_run": res.settings["attacks"]})


@dataclass
class RobustnessReport:
    """Clean and robust accuracy of one model; JSON-ready via :meth:`to_dict`."""

    model: dict
    dataset: str
    split: str
    n: int
    eps: float
    norm: str
    clean_accuracy: float
    robust_accuracy: float  # per-example worst case over all attacks
    attacks: list  # one dict per attack: settings, accuracy, seconds, extra
    sanity: dict
    seconds: float
    indices: list | None = None
    robust_per_example: list | None = None
    environment: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    def summary(self) -> str:
        parts = [f"clean {100 * self.clean_accuracy:.2f}%"]
        parts += [f"{a['name']} {100 * a['accuracy']:.2f}%" for a in self.attacks]
        parts.append(f"worst case {100 * self.robust_accuracy:.2f}% ({self.norm} eps={self.eps:g}, n={self.n})")
        return ", ".join(parts)


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
    n_classes = _probe_classes(model, x[:2], device)
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


def assemble_report(model, x, y, rows: list, clean: torch.Tensor, worst: torch.Tensor, *, eps, norm, device,
                    batch_size, model_info, dataset, split, indices, sanity_checks, seconds,
                    environment_extra: dict | None = None) -> RobustnessReport:
    """The report from per-attack rows and per-example masks: accuracies, sanity checks, AutoAttack's warnings."""
    clean_acc = float(clean.float().mean())
    robust_acc = float(worst.float().mean())
    sanity = {"robust_le_clean": all(r["accuracy"] <= clean_acc + 1e-12 for r in rows) and robust_acc <= clean_acc}
    if sanity_checks:
        sanity.update(_epsilon_checks(model, x, y, eps=eps, norm=norm, device=device, batch_size=batch_size))
    warnings_seen = [w for r in rows for w in r.get("warnings", [])]
    if warnings_seen:
        sanity["autoattack_warnings"] = warnings_seen
    return RobustnessReport(
        model=model_info or {"type": type(model).__name__}, dataset=dataset, split=split, n=len(y), eps=eps,
        norm=norm, clean_accuracy=clean_acc, robust_accuracy=robust_acc, attacks=rows, sanity=sanity,
        seconds=round(seconds, 2), indices=indices.tolist() if indices is not None else None,
        robust_per_example=worst.int().tolist(), environment={**environment(device), **(environment_extra or {})},
    )


def _probe_classes(model, x, device) -> int:
    """Run the model on two images to learn its class count; a shape it cannot take is a clear error."""
    try:
        with torch.no_grad():
            out = model(x.to(device))
    except RuntimeError as exc:
        raise ValueError(f"the model cannot take images of shape {tuple(x.shape[1:])} (C, H, W): {exc}") from None
    if out.dim() != 2:
        raise ValueError(f"the model must return logits of shape (N, classes), got {tuple(out.shape)}")
    return int(out.shape[1])


def _epsilon_checks(model, x, y, *, eps, norm, device, batch_size, n: int = 100) -> dict:
    """eps = 0 must give clean accuracy; a huge eps must break almost everything."""
    xs, ys = x[:n], y[:n]
    clean = float(correct_mask(model, xs, ys, device=device, batch_size=batch_size).float().mean())
    gen = torch.Generator().manual_seed(0)
    x0 = attack_batched(pgd, model, xs, ys, eps=0.0, norm=norm, steps=5, generator=gen, device=device,
                        batch_size=batch_size)
    at_zero = float(correct_mask(model, x0, ys, device=device, batch_size=batch_size).float().mean())
    big = 1.0 if norm == "Linf" else 50.0
    xb = attack_batched(pgd, model, xs, ys, eps=big, norm=norm, steps=20, step_size=big / 8, generator=gen,
                        device=device, batch_size=batch_size)
    at_big = float(correct_mask(model, xb, ys, device=device, batch_size=batch_size).float().mean())
    return {
        "eps_zero_equals_clean": {"clean": clean, "accuracy": at_zero, "ok": abs(at_zero - clean) < 1e-9, "n": len(ys)},
        "huge_eps_breaks_model": {"eps": big, "accuracy": at_big, "ok": at_big <= 0.2, "n": len(ys)},
    }


def environment(device) -> dict:
    return {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads()}


def write_json(path: str | Path, obj) -> None:
    atomic_write_json(path, json.loads(json.dumps(obj, default=_json_default)))


def _json_default(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    return str(o)
