"""Adapter over the official AutoAttack (PyPI ``pyautoattack``): one call, a result object, nothing lost.

AutoAttack seeds the *global* torch RNG and logs its checks (randomness, gradient masking, output range)
to the ``auto-attack`` logger. This adapter restores the caller's RNG state afterwards, puts the model in
eval mode, keeps data on the CPU (AutoAttack moves each batch to ``device``), and captures every warning
and the accuracy after each sub-attack into the result.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import warnings
from dataclasses import dataclass, field

import torch
from pyautoattack import AutoAttack
from torch import nn

from ..config_checks import AUTOATTACK_SUB_ATTACKS
from .accuracy import correct_mask

logger = logging.getLogger(__name__)

VERSIONS = ("standard", "plus", "rand", "custom")
SUB_ATTACKS = AUTOATTACK_SUB_ATTACKS
_AFTER = re.compile(r"robust accuracy after (\S+): ([\d.]+)%")

# What makes each sub-attack what it is: (the AutoAttack attribute holding it, the attributes read from
# it, settings that AutoAttack forces when it runs that sub-attack). Two runs with equal entries ran the
# same sub-attack, whatever version or options produced it ("custom" with APGD-CE at AutoAttack's
# constructor default runs 5 restarts; "standard" runs 1).
_APGD = ("n_iter", "n_restarts", "eot_iter", "thr_decr", "use_largereps")
_FAB = ("n_iter", "alpha_max", "eta", "beta")
_SUB_ATTACK_FIELDS = {
    "apgd-ce": ("apgd", _APGD, {"loss": "ce"}),
    "apgd-dlr": ("apgd", _APGD, {"loss": "dlr"}),
    "apgd-t": ("apgd_targeted", (*_APGD, "n_target_classes"), {"loss": "dlr-targeted"}),
    "fab": ("fab", (*_FAB, "n_restarts"), {"targeted": False}),
    "fab-t": ("fab", (*_FAB, "n_target_classes"), {"targeted": True, "n_restarts": 1}),
    "square": ("square", ("n_queries", "n_restarts", "p_init", "rescale_schedule", "loss"), {}),
}


@dataclass
class AutoAttackResult:
    """What one AutoAttack run found.

    ``robust[i]`` is True when example ``i`` was classified correctly before and after every sub-attack.
    ``per_attack`` maps each sub-attack to the robust accuracy after it had run (cumulative, as AutoAttack
    reports). ``warnings`` holds AutoAttack's own checks that fired.
    """

    robust: torch.Tensor
    x_adv: torch.Tensor
    clean_correct: torch.Tensor
    settings: dict
    per_attack: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.float().mean()) if len(self.robust) else float("nan")


class _Collector(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def run_autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "Linf",
    version: str = "standard",
    attacks: list[str] | None = None,
    seed: int = 0,
    batch_size: int = 250,
    device: str | torch.device = "cpu",
    options: dict | None = None,
) -> AutoAttackResult:
    """Run the official AutoAttack on ``model`` (any module returning one logits tensor).

    Parameters
    ----------
    model : module mapping images in [0, 1] to logits; it is put in eval mode.
    x, y : CPU (or device) tensors; batches move to ``device``.
    eps, norm : the threat model ("Linf", "L2" or "L1").
    version : "standard" (APGD-CE, APGD-T, FAB-T, Square), "plus", "rand", or "custom" with ``attacks``.
    attacks : sub-attacks for ``version="custom"``, from ``SUB_ATTACKS``.
    seed : AutoAttack's seed; the caller's global RNG state is restored afterwards.
    options : attribute overrides on the sub-attack objects, e.g. ``{"apgd.n_iter": 20,
        "apgd_targeted.n_target_classes": 3}``.
    """
    _check_version(version, attacks)
    model.eval()
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    t0 = time.perf_counter()
    with _collected_autoattack_log() as collector, torch.random.fork_rng(devices=devices), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adversary = AutoAttack(model, attacks=attacks if version == "custom" else None, device=device,
                               eps=eps, norm=norm, seed=seed, version=version)
        _apply_options(adversary, options or {})
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    seconds = time.perf_counter() - t0
    # Score the returned images ourselves: an example is robust only if correct before and after.
    clean_ok = correct_mask(model, x, y, batch_size=batch_size, device=device)
    adv_ok = correct_mask(model, x_adv, y, batch_size=batch_size, device=device)
    per_attack = {}
    for rec in collector.records:
        m = _AFTER.search(rec.getMessage())
        if m:
            per_attack[m.group(1).lower()] = float(m.group(2)) / 100
    logged = [rec.getMessage() for rec in collector.records if rec.levelno >= logging.WARNING]
    settings = {
        "name": "autoattack", "version": version, "attacks": list(adversary.attacks_to_run), "eps": eps,
        "norm": norm, "seed": seed, "options": dict(options or {}), "package": _package_version(),
        "sub_attacks": sub_attack_settings(adversary),
    }
    return AutoAttackResult(
        robust=clean_ok & adv_ok, x_adv=x_adv.detach().cpu(), clean_correct=clean_ok, settings=settings,
        per_attack=per_attack, warnings=list(dict.fromkeys(logged + [str(w.message) for w in caught])),
        seconds=seconds,
    )


def sub_attack_settings(adversary: AutoAttack) -> dict[str, dict]:
    """The effective settings of every sub-attack ``adversary`` runs, keyed by sub-attack, in run order."""
    out = {}
    for name in adversary.attacks_to_run:
        holder, fields, forced = _SUB_ATTACK_FIELDS[name]
        obj = getattr(adversary, holder)
        row = {f: getattr(obj, f) for f in fields}
        row.update(forced)
        out[name] = {k: v.item() if hasattr(v, "item") else v for k, v in row.items()}
    return out


def planned_sub_attacks(*, version: str = "standard", attacks: list[str] | None = None,
                        options: dict | None = None, norm: str = "Linf") -> dict[str, dict]:
    """The sub-attacks, with their effective settings, that ``run_autoattack`` with these arguments runs
    (read from an AutoAttack built around a stand-in model; nothing is attacked)."""
    _check_version(version, attacks)
    adversary = AutoAttack(nn.Identity(), attacks=attacks if version == "custom" else None, eps=1.0, norm=norm,
                           seed=0, version=version)
    _apply_options(adversary, options or {})
    return sub_attack_settings(adversary)


def _check_version(version: str, attacks: list[str] | None) -> None:
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
    if version == "custom":
        if not attacks:
            raise ValueError("version='custom' needs a list of attacks, e.g. ['apgd-ce', 'apgd-t']")
        bad = [a for a in attacks if a not in SUB_ATTACKS]
        if bad:
            raise ValueError(f"unknown AutoAttack sub-attacks {bad}; known: {', '.join(SUB_ATTACKS)}")
    elif attacks is not None:
        raise ValueError(f"attacks=... only goes with version='custom' (got version={version!r})")


def _apply_options(adversary, options: dict) -> None:
    for key, value in options.items():
        obj_name, _, attr = key.partition(".")
        obj = getattr(adversary, obj_name, None)
        if obj is None or not attr or not hasattr(obj, attr):
            raise ValueError(f"unknown AutoAttack option {key!r}")
        setattr(obj, attr, value)


@contextlib.contextmanager
def _collected_autoattack_log():
    """AutoAttack's log messages, collected into the result; passed on only when our own logging asks."""
    aa_logger = logging.getLogger("auto-attack")
    collector = _Collector()
    old_level, old_propagate = aa_logger.level, aa_logger.propagate
    aa_logger.addHandler(collector)
    aa_logger.setLevel(logging.DEBUG)
    aa_logger.propagate = logger.isEnabledFor(logging.DEBUG)
    try:
        yield collector
    finally:
        aa_logger.removeHandler(collector)
        aa_logger.setLevel(old_level)
        aa_logger.propagate = old_propagate


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"pyautoattack {version('pyautoattack')}"
    except PackageNotFoundError:  # pragma: no cover
        return "pyautoattack (version unknown)"
