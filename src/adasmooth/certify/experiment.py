"""One certification run: smoothed robust bases at several σ and their mixtures with a standard model,
on seeded test points; a results dict (JSON-ready) with the curves, clean accuracies and the goal check."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..distributed import rank_and_world
from ..seeding import chunk_seed
from ..state import ChunkStore, chunk_slices, my_chunks, run_chunks, settings_key
from .mixture import Votes, certify_from_votes, sample_votes
from .radii import check_alpha_for_certificate
from .smoothing import Smooth

logger = logging.getLogger(__name__)


def certification_report(standard: nn.Module, robust_by_sigma: dict[float, nn.Module], x: torch.Tensor,
                         y: torch.Tensor, *, num_classes: int, alphas: Sequence[float], radii: Sequence[float],
                         n0: int, n: int, delta: float, batch_size: int = 1000, seed: int = 0,
                         device: str | torch.device = "cpu", goal_radius: float = 0.25, goal_clean_gain: float = 0.03,
                         goal_keep: float = 0.8, progress: bool = True, chunk_points: int = 20,
                         cache_dir: str | Path | None = None) -> dict:
    """Certify each smoothed base alone and mixed with ``standard`` at each α on the images ``x``.

    Images go in chunks of ``chunk_points``, each with its own generator seeded by (``seed``, σ, chunk), so
    a chunk's votes do not depend on who computed them: ranks of a ``torchrun`` launch share the chunks
    (rank r takes r, r + W, ...) and the gathered report equals a single-process one. With ``cache_dir``
    each chunk's votes are saved as they finish and a rerun computes only the missing ones.

    Per σ it reports clean accuracy (standard model, smoothed model by vote argmax and with Cohen's
    abstention, each mixture), certified accuracy at each radius, per-image radii, the seconds spent, and
    the goal check: an α whose clean accuracy is ``goal_clean_gain`` above the smoothed model's while its
    certified accuracy at ``goal_radius`` keeps ``goal_keep`` of the smoothed model's.
    """
    radii = [float(r) for r in radii]
    out = {"n_points": len(y), "n0": n0, "n": n, "delta": delta, "seed": seed, "norm": "L2", "radii": radii,
           "alphas": [float(a) for a in alphas],
           "certificate": "smoothed alone: Cohen et al. (Clopper-Pearson lower bound on p_A at 1 - delta); "
                          "mixtures: r = sigma/2 [Phi^-1(alpha p_A) - Phi^-1(alpha p_B + 1 - alpha)] with p_A "
                          "lower and every other class's p upper Clopper-Pearson bounds (delta split in two)",
           "goal": {"radius": goal_radius, "clean_gain": goal_clean_gain, "keep": goal_keep}, "sigmas": []}
    standard = standard.eval()
    a = check_alpha_for_certificate(list(alphas))
    rank, world = rank_and_world()
    slices = chunk_slices(len(y), chunk_points)
    my_chunks(len(slices), what=f"chunks of {chunk_points} points")  # fail before any work
    for sigma, robust in robust_by_sigma.items():
        smooth = Smooth(robust.eval(), num_classes, sigma, batch_size=batch_size, device=device)
        smooth.check_sample_sizes(n0, n, delta, alpha=float(a.min()), num_classes=num_classes)
        t0 = time.perf_counter()
        store = None
        if cache_dir is not None:
            key = settings_key({"seed": seed, "sigma": sigma, "n0": n0, "n": n, "chunk": chunk_points, "n_points": len(y)},
                               model=nn.ModuleList([standard, robust]), data=(x, y))
            store = ChunkStore(Path(cache_dir) / f"sigma{sigma:g}", key, fmt="npz")
        bar = tqdm(total=len(slices[rank::world]), desc=f"certify sigma={sigma:g}" + (f" (rank {rank})" if world > 1 else ""),
                   unit="chunk", disable=not progress)

        def compute(c: int, sl: slice, smooth=smooth, sigma=sigma, bar=bar) -> Votes:
            gen = torch.Generator(device=device).manual_seed(chunk_seed(seed, c, sigma=sigma))
            votes = sample_votes(standard, smooth, x[sl], n0=n0, n=n, generator=gen, progress=False)
            bar.update(1)
            return votes

        parts = run_chunks(slices, compute, store=store, encode=dataclasses.asdict, decode=lambda d: Votes(**d),
                           on_cached=lambda c, sl, bar=bar: bar.update(1), what=f"chunks of {chunk_points} points")
        bar.close()
        votes = Votes.concatenate(parts)
        res = certify_from_votes(votes, y, alphas=alphas, sigma=sigma, n0=n0, n=n, delta=delta)
        seconds = time.perf_counter() - t0
        curves = res.certified_accuracy(radii)
        clean = res.clean_accuracy()
        out["sigmas"].append({
            "sigma": float(sigma), "seconds": round(seconds, 1), "world_size": world,
            "noise_samples_per_second": round(len(y) * (n0 + n) / seconds, 1),
            "clean_accuracy": clean, "certified_accuracy": curves,
            "goal_check": _goal_check(curves, clean, radii, goal_radius, goal_clean_gain, goal_keep),
            "per_image": {"label": res.labels.tolist(), "smoothed_radius": np.round(res.smooth_radius, 5).tolist(),
                          "smoothed_class": res.smooth_class.tolist(),
                          "mixture_radius": {f"alpha={a:g}": np.round(r, 5).tolist()
                                             for a, r in zip(res.alphas, res.mixture_radius)}},
        })
        logger.info("sigma=%g certified in %.0f s", sigma, seconds)
    return out


def _goal_check(curves: dict, clean: dict, radii: list[float], radius: float, gain: float, keep: float) -> dict:
    if radius not in radii:
        return {"note": f"radius {radius} is not among the reported radii"}
    i = radii.index(radius)
    ref_cert, ref_clean = curves["smoothed"][i], clean["smoothed"]
    rows = {}
    for name, curve in curves.items():
        if name == "smoothed":
            continue
        kept = curve[i] / ref_cert if ref_cert > 0 else float("nan")
        rows[name] = {"clean_gain": clean[name] - ref_clean, "certified_kept": kept,
                      "meets_goal": bool(clean[name] - ref_clean >= gain and kept >= keep)}
    return {"reference": {"clean": ref_clean, f"certified_at_{radius:g}": ref_cert}, "mixtures": rows,
            "any_alpha_meets_goal": any(r["meets_goal"] for r in rows.values())}
