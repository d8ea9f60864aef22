"""The certify workflow: certified ℓ2 accuracy of each smoothed noise-trained robust model and of its
mixtures with the standard model, on a seeded subset; JSON and plot."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .. import data as data_mod
from ..certify.experiment import certification_report
from ..config import Config
from ..distributed import init_distributed, is_main
from ..io import load_model, write_json
from ..plots import plot_certified_accuracy
from ..pretrained import load_pretrained, pretrained_dir, shipped_pair_stem
from ..speed import fast_inference
from .common import load_subset

logger = logging.getLogger(__name__)


@dataclass
class CertifyRun:
    report: dict
    radii: list
    out: Path

    def format(self) -> str:
        r = self.report
        lines = [(f"{r['dataset']} {r['split']}: {r['n_points']} seeded points; n0={r['n0']}, n={r['n']}, "
                 f"delta={r['delta']:g}; certified accuracy (%) at l2 radius")]
        for s in r["sigmas"]:
            lines.append(f"sigma={s['sigma']:g} ({s['seconds']:.0f} s, {s['noise_samples_per_second']:.0f} noisy images/s)")
            lines.append(f"  {'model':<12s} {'clean':>6s} " + " ".join(f"{x:>6g}" for x in self.radii))
            for name, curve in s["certified_accuracy"].items():
                lines.append(f"  {name:<12s} {100 * s['clean_accuracy'][name]:6.2f} "
                             + " ".join(f"{100 * v:6.2f}" for v in curve))
            g = s["goal_check"]
            if "mixtures" in g:
                hits = [k for k, v in g["mixtures"].items() if v["meets_goal"]]
                lines.append(f"  goal (clean +{100 * r['goal']['clean_gain']:g} pts, keep {100 * r['goal']['keep']:g}% "
                             f"at r={r['goal']['radius']:g}): {'met by ' + ', '.join(hits) if hits else 'not met'}")
        lines.append(f"results in {self.out}/")
        return "\n".join(lines)


def load_noise_models(cfg: Config, stems: list[str] | None, *, sigma: float | None = None, compile: bool = False,
                      bf16: bool = False, device: str = "cpu") -> tuple[dict[float, nn.Module], list[str]]:
    """Noise-trained robust models by their σ (recorded in each sidecar, or ``sigma``); default: the
    shipped ``noise-sigma<S>`` models of the config's σ list."""
    stems = stems or [str(pretrained_dir() / cfg.data.name / f"noise-sigma{s:g}") for s in cfg.certify.sigmas]
    by_sigma = {}
    for stem in stems:
        model, meta = load_model(stem, map_location=device)
        s = sigma if sigma is not None else meta.get("sigma")
        if s is None:
            raise ValueError(f"{stem} does not record its noise level: pass --sigma")
        if meta.get("kind") not in (None, "noise"):
            logger.warning("%s was trained as %r, not with Gaussian noise: its smoothed model will be weak",
                           stem, meta.get("kind"))
        by_sigma[float(s)] = fast_inference(model, compile=compile, bf16=bf16, device=device)
    return by_sigma, stems


def run_certify(cfg: Config, out: Path, *, standard: str | None = None, robust: list[str] | None = None,
                sigma: float | None = None, alphas: list[float] | None = None, n_points: int | None = None,
                n0: int | None = None, n: int | None = None, chunk_points: int = 20, split: str = "test",
                compile: bool = False, bf16: bool = False, device: str = "cpu") -> CertifyRun:
    """Certify on ``n_points`` seeded points of ``split``; votes are cached in ``out/.votes`` (a rerun
    resumes) and shared by torchrun ranks; rank 0 writes ``certify.json`` and ``certified.png``."""
    _, _, device = init_distributed(device)
    c = cfg.certify
    std = load_model(standard, map_location=device)[0] if standard else load_pretrained(cfg.data.name, device=device).standard
    robust_by_sigma, stems = load_noise_models(cfg, robust, sigma=sigma, compile=compile, bf16=bf16, device=device)
    _, _, idx, xs, ys = load_subset(cfg, split, n_points or c.n_points, c.seed)
    report = certification_report(std, robust_by_sigma, xs, ys, num_classes=data_mod.num_classes(cfg.data.name),
                                  alphas=alphas or list(c.alphas), radii=c.radii, n0=n0 or c.n0, n=n or c.n,
                                  delta=c.delta, batch_size=c.batch_size, seed=c.seed, device=device,
                                  progress=is_main(), cache_dir=out / ".votes", chunk_points=chunk_points)
    run = CertifyRun(report, list(c.radii), out)
    if not is_main():
        return run
    report.update({"dataset": cfg.data.name, "split": split, "indices_seed": c.seed, "robust": stems,
                   "robust_inference": {"torch_compile": compile, "bf16_autocast": bf16},
                   "standard": standard or str(shipped_pair_stem(cfg.data.name, "standard"))})
    write_json(out / "certify.json", report)
    panels = [{"sigma": s["sigma"], "curves": s["certified_accuracy"], "clean": s["clean_accuracy"]}
              for s in report["sigmas"]]
    plot_certified_accuracy(panels, c.radii, out / "certified.png",
                            title=f"{cfg.data.name} {split}, {len(idx)} points, n={report['n']}, "
                                  f"delta={c.delta:g}: smoothed robust model and its mixtures with the standard model")
    return run
