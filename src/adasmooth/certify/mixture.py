"""Certification of α-mixtures whose robust member is a Gaussian-smoothed classifier.

For each image: the class A is chosen by the smoothed model's votes on ``n0`` selection samples; ``n``
separate estimation samples give its vote frequencies (the smoothed probabilities that enter the mixture)
and exact bounds p_A (lower, class A) and p_B (upper, every other class) that hold together with
probability 1 − δ. The mixture at α predicts argmax((1−α)·softmax(g(x)) + α·votes/n) and is certified to
predict A on the ℓ2 ball of radius (σ/2)·[Φ⁻¹(α·p_A) − Φ⁻¹(α·p_B + 1 − α)] whatever g does.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..mixer import AdaptiveMixedClassifier
from ..mixing import MixedClassifier
from .bounds import clopper_pearson_lower, mixture_bounds
from .radii import check_alpha_for_certificate, smoothing_radius
from .smoothing import ABSTAIN, Smooth

logger = logging.getLogger(__name__)


def certificate_alpha(model: nn.Module) -> tuple[float, str]:
    """The α with which a mixed model is certified, and a note saying where it came from.

    A fixed-α :class:`~adasmooth.MixedClassifier` gives its α. An
    :class:`~adasmooth.AdaptiveMixedClassifier` picks α(x) in ``[α_lo, α_hi]`` per input; the radii hold
    for every α(x) >= α_lo, so it is certified with α_lo.
    """

    if isinstance(model, AdaptiveMixedClassifier):
        lo = model.alpha_range[0]
        return lo, f"adaptive model: certified with the lower end alpha_lo={lo:g} of its alpha range"
    if isinstance(model, MixedClassifier):
        if torch.is_tensor(model.alpha):
            raise ValueError("a per-example alpha tensor has no single certificate alpha; pass its minimum")
        return float(model.alpha), f"fixed alpha={model.alpha:g}"
    raise TypeError(f"expected a MixedClassifier or AdaptiveMixedClassifier, got {type(model).__name__}")


@dataclasses.dataclass
class CertificationResult:
    """Per-image outcomes. Radii are ℓ2, 0 where nothing is certified."""
    labels: np.ndarray
    sigma: float
    n0: int
    n: int
    delta: float
    smooth_class: np.ndarray  # Cohen's CERTIFY: chosen class or ABSTAIN
    smooth_radius: np.ndarray
    smooth_vote_class: np.ndarray  # argmax of the vote frequencies (no abstention)
    standard_class: np.ndarray
    alphas: tuple[float, ...]
    mixture_class: np.ndarray  # (A, N) argmax of the mixture at x
    mixture_certified_class: np.ndarray  # (N,) the selection-chosen class A
    mixture_radius: np.ndarray  # (A, N)

    def certified_accuracy(self, radii: Sequence[float]) -> dict:
        """Certified accuracy at each radius: the smoothed model alone and the mixture at each α."""
        y = self.labels
        out = {"smoothed": [float(np.mean((self.smooth_class == y) & (self.smooth_radius >= r))) for r in radii]}
        ok = self.mixture_certified_class == y
        for a, rad in zip(self.alphas, self.mixture_radius):
            out[f"alpha={a:g}"] = [float(np.mean(ok & (rad > 0) & (rad >= r))) for r in radii]
        return out

    def clean_accuracy(self) -> dict:
        y = self.labels
        out = {"standard": float(np.mean(self.standard_class == y)),
               "smoothed": float(np.mean(self.smooth_vote_class == y)),
               "smoothed_with_abstention": float(np.mean(self.smooth_class == y))}
        for a, pred in zip(self.alphas, self.mixture_class):
            out[f"alpha={a:g}"] = float(np.mean(pred == y))
        return out


@dataclasses.dataclass
class Votes:
    """What the noise samples of a set of images gave: the class chosen from the ``n0`` selection samples,
    the vote counts of the ``n`` estimation samples, and the standard model's clean probabilities."""

    chosen: np.ndarray  # (N,) int
    counts: np.ndarray  # (N, K) int
    standard_probs: np.ndarray  # (N, K) float64

    @staticmethod
    def concatenate(parts: Sequence[Votes]) -> Votes:
        return Votes(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(Votes)))


def sample_votes(standard: nn.Module, smooth: Smooth, x: torch.Tensor, *, n0: int, n: int,
                 generator: torch.Generator, chunk: int = 10, progress: bool = True) -> Votes:
    """Selection and estimation votes of the smoothed model, and the standard model's probabilities."""
    k = smooth.num_classes
    chosen, counts, probs = [], [], []
    bar = tqdm(total=len(x), desc=f"certify sigma={smooth.sigma:g}", unit="img", disable=not progress)
    with torch.no_grad():
        for s in range(0, len(x), chunk):
            xb = x[s:s + chunk]
            logits = standard(xb.to(smooth.device))
            if logits.shape[-1] != k:
                raise ValueError(f"the standard model gives {logits.shape[-1]} classes, the smoothed model {k}")
            probs.append(torch.softmax(logits.double(), -1).cpu())
            chosen.append(smooth.sample_counts(xb, n0, generator=generator).argmax(1))
            counts.append(smooth.sample_counts(xb, n, generator=generator))
            bar.update(len(xb))
    bar.close()
    return Votes(torch.cat(chosen).numpy(), torch.cat(counts).numpy(), torch.cat(probs).numpy())


def certify_from_votes(votes: Votes, y: torch.Tensor | np.ndarray, *, alphas: Sequence[float], sigma: float, n0: int,
                       n: int, delta: float) -> CertificationResult:
    """Certificates of the smoothed model alone (Cohen et al.) and of each α-mixture from the votes."""
    a = check_alpha_for_certificate(list(alphas))
    chosen, counts, std_probs = votes.chosen, votes.counts, votes.standard_probs
    k = counts.shape[1]
    rows = np.arange(len(chosen))
    count_a = counts[rows, chosen]
    p_cohen = np.asarray(clopper_pearson_lower(count_a, n, delta), dtype=np.float64)
    smooth_class = np.where(p_cohen > 0.5, chosen, ABSTAIN)
    from scipy.stats import norm  # scipy.stats takes seconds to import: only where it is used

    smooth_radius = np.where(p_cohen > 0.5, sigma * norm.ppf(np.clip(p_cohen, 0.5, 1.0)), 0.0)

    others = counts.copy()
    others[rows, chosen] = -1
    p_a, p_b = mixture_bounds(count_a, others.max(1), n, delta, num_classes=k)
    freqs = counts / n
    mix_class = np.stack([((1 - al) * std_probs + al * freqs).argmax(1) for al in a])
    mix_radius = np.stack([np.asarray(smoothing_radius(p_a, p_b, al, sigma), dtype=np.float64) for al in a])
    labels = y.cpu().numpy() if torch.is_tensor(y) else np.asarray(y)
    return CertificationResult(
        labels=labels, sigma=float(sigma), n0=n0, n=n, delta=delta, smooth_class=smooth_class,
        smooth_radius=smooth_radius, smooth_vote_class=freqs.argmax(1), standard_class=std_probs.argmax(1),
        alphas=tuple(float(v) for v in a), mixture_class=mix_class, mixture_certified_class=chosen,
        mixture_radius=mix_radius,
    )


def certify_mixture(standard: nn.Module, smooth: Smooth, x: torch.Tensor, y: torch.Tensor, *,
                    alphas: Sequence[float], n0: int = 100, n: int = 10_000, delta: float = 0.001,
                    generator: torch.Generator, chunk: int = 10, progress: bool = True) -> CertificationResult:
    """Certify the smoothed model alone and its mixtures with ``standard`` at each α in ``alphas``.

    Each image's noise comes from ``generator`` in order (a seeded generator reproduces the run). Images go
    through in chunks of ``chunk``; a progress bar counts images.
    """
    a = check_alpha_for_certificate(list(alphas))
    smooth.check_sample_sizes(n0, n, delta, alpha=float(a.min()), num_classes=smooth.num_classes)
    if len(x) != len(y):
        raise ValueError(f"got {len(x)} images and {len(y)} labels")
    votes = sample_votes(standard, smooth, x, n0=n0, n=n, generator=generator, chunk=chunk, progress=progress)
    return certify_from_votes(votes, y, alphas=alphas, sigma=smooth.sigma, n0=n0, n=n, delta=delta)
