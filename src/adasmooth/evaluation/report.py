"""The result of one model's evaluation: clean and per-example worst-case robust accuracy, each attack's
row, the sanity checks and the environment; JSON-ready."""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..io import atomic_write_json
from .checks import epsilon_checks


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
        return {**dataclasses.asdict(self), "gradient_free_gap": self.gradient_free_gap()}

    def gradient_free_gap(self) -> float | None:
        """AutoAttack's accuracy after APGD-T minus after Square: what only the gradient-free search finds (a
        gate or map that masks gradients shows here). None unless a run recorded both."""
        for row in self.attacks:
            after = row.get("after_each_subattack") or {}
            if "apgd-t" in after and "square" in after:
                return float(after["apgd-t"] - after["square"])
        return None

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    def summary(self) -> str:
        parts = [f"clean {100 * self.clean_accuracy:.2f}%"]
        parts += [f"{a['name']} {100 * a['accuracy']:.2f}%" for a in self.attacks]
        parts.append(f"worst case {100 * self.robust_accuracy:.2f}% ({self.norm} eps={self.eps:g}, n={self.n})")
        gap = self.gradient_free_gap()
        if gap is not None:
            parts.append(f"gradient-free gap {100 * gap:.1f} pts")
        return ", ".join(parts)


def assemble_report(model, x, y, rows: list, clean: torch.Tensor, worst: torch.Tensor, *, eps, norm, device,
                    batch_size, model_info, dataset, split, indices, sanity_checks, seconds,
                    environment_extra: dict | None = None) -> RobustnessReport:
    """The report from per-attack rows and per-example masks: accuracies, sanity checks, AutoAttack's warnings."""
    clean_acc = float(clean.float().mean())
    robust_acc = float(worst.float().mean())
    sanity = {"robust_le_clean": all(r["accuracy"] <= clean_acc + 1e-12 for r in rows) and robust_acc <= clean_acc}
    if sanity_checks:
        sanity.update(epsilon_checks(model, x, y, eps=eps, norm=norm, device=device, batch_size=batch_size))
    warnings_seen = [w for r in rows for w in r.get("warnings", [])]
    if warnings_seen:
        sanity["autoattack_warnings"] = warnings_seen
    return RobustnessReport(
        model=model_info or {"type": type(model).__name__}, dataset=dataset, split=split, n=len(y), eps=eps,
        norm=norm, clean_accuracy=clean_acc, robust_accuracy=robust_acc, attacks=rows, sanity=sanity,
        seconds=round(seconds, 2), indices=indices.tolist() if indices is not None else None,
        robust_per_example=worst.int().tolist(), environment={**environment(device), **(environment_extra or {})},
    )


def environment(device) -> dict:
    return {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads()}
