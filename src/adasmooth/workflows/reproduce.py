"""The reproduce workflow: list the published rows, print a row's plan with what is missing, or run it
(each step a resumable ``adasmooth`` command, so a rerun continues where it stopped)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..io import atomic_write_bytes
from ..published import ROWS, PublishedRow, Step, plan, row, run_config


def list_rows() -> str:
    lines = [f"{'row':<20s} {'clean':>6s} {'AA':>6s}  what (published: l-inf 8/255, whole test set, AutoAttack)"]
    for r in ROWS.values():
        lines.append(f"{r.key:<20s} {r.clean:6.2f} {r.autoattack:6.2f}  {r.title}")
        lines.append(f"{'':<35s}robust base: {r.robust_base}; needs: {', '.join(r.files.values())}, the "
                     f"{r.dataset} data; GPU-hours: {r.gpu_hours}")
    return "\n".join(lines)


@dataclass
class ReproducePlan:
    row: PublishedRow
    steps: list[Step]
    out: Path
    base_config: Path | None = None  # the config the run's config starts from (default: the packaged one)

    def missing(self) -> list[Path]:
        """Files the plan needs that no step of it makes."""
        return sorted({p for s in self.steps for p in s.missing() if not p.is_relative_to(self.out)})

    def format(self) -> str:
        r = self.row
        published = (f"published: {r.clean:.2f}% clean, {r.autoattack:.2f}% AutoAttack (l-inf 8/255, whole test "
                     f"set); robust base {r.robust_base}")
        lines = [f"{r.key}: {r.title}", published]
        for i, step in enumerate(self.steps, 1):
            lines.append(f"{i}. {step.name}\n   {' '.join(step.command)}")
            for p in step.needs:
                state = "found" if p.exists() else ("made by an earlier step" if p.is_relative_to(self.out)
                                                     else "MISSING")
                lines.append(f"   needs {p}: {state}")
        for note in r.unavailable:
            lines.append(f"not available in this version: {note}")
        missing = self.missing()
        lines.append("ready to run" if not missing and not r.unavailable else
                     f"cannot run yet: {len(missing)} file(s) missing" + (", and see above" if r.unavailable else ""))
        return "\n".join(lines)


def reproduce_plan(key: str, *, root: str | Path = ".", data_root: str | Path | None = None,
                   out: str | Path = "runs/reproduce", device: str = "cuda", standard: str | None = None,
                   robust: str | None = None, train: bool = False, n_examples: int = 10_000,
                   base_config: str | Path | None = None) -> ReproducePlan:
    r = row(key)
    out = Path(out) / r.key
    steps = plan(r, root=Path(root), data_root=Path(data_root or root), out=out, device=device,
                 standard=Path(standard) if standard else None, robust=Path(robust) if robust else None, train=train,
                 n_examples=n_examples)
    return ReproducePlan(r, steps, out, Path(base_config) if base_config else None)


def run_reproduce(p: ReproducePlan) -> str:
    """Run every step of ``p`` in turn; refuses before any work when a file is missing or the row needs what
    this version cannot do."""
    if p.missing() or p.row.unavailable:
        raise ValueError(f"{p.row.key} cannot run: " + "; ".join(
            [f"missing {m}" for m in p.missing()] + list(p.row.unavailable)) + " (see --dry-run)")
    write, *steps = p.steps
    std, rob = write.needs[1], write.needs[2]
    cfg = run_config(p.row, data_root=write.needs[0].parent, standard=std, robust=rob, base_config=p.base_config)
    atomic_write_bytes(Path(write.command[-1]), yaml.safe_dump(cfg, sort_keys=False).encode())
    for step in steps:
        subprocess.run([sys.executable, "-m", "adasmooth", *step.command[1:]], check=True)
    return beside_published(p)


def beside_published(p: ReproducePlan) -> str:
    """The run's evaluation next to the row's published numbers."""
    reports = sorted(f for f in (p.out / "eval").glob("*.json") if f.name.startswith(("mixer", "nonlinear")))
    if not reports:
        return f"{p.row.key}: done, but no report in {p.out / 'eval'}/"
    rep = json.loads(reports[0].read_text())
    aa = next((a for a in rep["attacks"] if a.get("type") == "autoattack"), None)
    clean = rep.get("clean_accuracy_full_split", rep["clean_accuracy"])
    return "\n".join([
        f"{p.row.key}: {p.row.title}",
        f"{'':<10s} {'clean':>8s} {'AutoAttack':>11s} {'worst case':>11s}  points",
        (f"{'measured':<10s} {100 * clean:8.2f} {100 * aa['accuracy'] if aa else float('nan'):11.2f} "
        f"{100 * rep['robust_accuracy']:11.2f}  {rep['n']} attacked (clean on {rep.get('n_full_split', rep['n'])})"),
        f"{'published':<10s} {p.row.clean:8.2f} {p.row.autoattack:11.2f} {'':>11s}  10000",
        f"report: {reports[0]}"])
