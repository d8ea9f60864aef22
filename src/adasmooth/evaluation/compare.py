"""Compare finished evaluations on the examples they share: the fixed-α trade-off curve against other
mixtures (nonlinear, adaptive, both), with the figures of merit.

Every ``adasmooth evaluate`` JSON holds its test indices and a per-example worst-case flag, so reports
measured on different numbers of points are compared on the intersection only (the same seeded
permutation makes the first n points shared). Clean accuracy is each report's full-split accuracy.

A model lies *above* the fixed-α curve when it has more clean accuracy than the curve at its robust
accuracy (the curve interpolated linearly between measured α, with the robust model as α = 1 and the
standard model as α = 0).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field


@dataclass
class ComparedModel:
    name: str
    clean: float  # on the full split
    robust: float  # worst case on the shared examples
    kind: str  # "standard", "robust", "fixed", or "other"
    alpha: float | None = None
    robust_scale: float | None = None  # s_h of a fixed mixture
    attacks: list = field(default_factory=list)
    gap_closed: float | None = None
    robust_kept: float | None = None
    clean_above_fixed_curve: float | None = None  # clean minus the curve's clean at the same robust accuracy

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _kind(report: dict, role: str | None) -> tuple[str, float | None]:
    if role is not None:
        return role, None
    m = report.get("model", {})
    if m.get("type") == "MixedClassifier" and isinstance(m.get("alpha"), (int, float)) and "robust_map" not in m:
        return "fixed", float(m["alpha"])
    return "other", None


def fixed_curve_clean_at(curve: list[tuple[float, float]], robust: float) -> float | None:
    """Clean accuracy of the piecewise-linear curve through ``(clean, robust)`` points at ``robust``;
    None outside the robust accuracies the curve spans."""
    pts = sorted(curve, key=lambda p: p[1])
    for (c0, r0), (c1, r1) in itertools.pairwise(pts):
        if r0 <= robust <= r1:
            return c0 if r1 == r0 else c0 + (c1 - c0) * (robust - r0) / (r1 - r0)
    return None


def compare_reports(reports: dict[str, dict], *, standard: str | None = None, robust: str | None = None) -> dict:
    """``reports`` maps a name to a loaded ``evaluate`` JSON. ``standard`` / ``robust`` name the base
    models' reports (the robust one is also the α = 1 end of the fixed-α curve)."""
    if len(reports) < 2:
        raise ValueError("compare needs at least two evaluation reports")
    first = next(iter(reports.values()))
    for name, r in reports.items():
        missing = [k for k in ("indices", "robust_per_example", "eps", "norm", "split") if k not in r]
        if missing:
            raise ValueError(f"report {name!r} lacks {missing}: use the JSON that `adasmooth evaluate` writes per model")
        for k in ("eps", "norm", "split", "dataset"):
            if r.get(k) != first.get(k):
                raise ValueError(f"reports differ in {k}: {name!r} has {r.get(k)!r}, another {first.get(k)!r}; "
                                 f"only evaluations of one threat model on one split compare")
    for role in (standard, robust):
        if role is not None and role not in reports:
            raise ValueError(f"{role!r} is not among the reports ({', '.join(reports)})")
    shared = set(first["indices"])
    for r in reports.values():
        shared &= set(r["indices"])
    if not shared:
        raise ValueError("the reports share no test examples: evaluate them with the same seed")
    models = []
    for name, r in reports.items():
        flags = [f for i, f in zip(r["indices"], r["robust_per_example"]) if i in shared]
        kind, alpha = _kind(r, "standard" if name == standard else "robust" if name == robust else None)
        models.append(ComparedModel(name=name, clean=float(r.get("clean_accuracy_full_split", r["clean_accuracy"])),
                                    robust=sum(flags) / len(flags), kind=kind, alpha={"robust": 1.0, "standard": 0.0}.get(kind, alpha),
                                    robust_scale=r.get("model", {}).get("robust_scale") if kind == "fixed" else None,
                                    attacks=[a["name"] for a in r.get("attacks", [])]))
    by = {m.name: m for m in models}
    curve = [(m.clean, m.robust) for m in models if m.kind in ("fixed", "robust", "standard")]
    for m in models:
        if standard and robust and m.kind not in ("standard", "robust"):
            s, b = by[standard], by[robust]
            gap = s.clean - b.clean
            m.gap_closed = (m.clean - b.clean) / gap if gap > 0 else None
            m.robust_kept = m.robust / b.robust if b.robust > 0 else None
        if m.kind == "other" and len(curve) >= 2:
            at = fixed_curve_clean_at(curve, m.robust)
            m.clean_above_fixed_curve = None if at is None else m.clean - at
    return {"n_shared": len(shared), "eps": first["eps"], "norm": first["norm"], "split": first["split"],
            "dataset": first.get("dataset"), "models": [m.to_dict() for m in models],
            "fixed_curve": sorted(curve, key=lambda p: p[1])}


__all__ = ["ComparedModel", "compare_reports", "fixed_curve_clean_at"]
