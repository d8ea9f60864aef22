"""Gaussian randomized smoothing of a base classifier (Cohen, Rosenfeld and Kolter, ICML 2019).

The smoothed classifier is ``h(x) = argmax_c P(f(x + ε) = c)``, ε ~ N(0, σ²I); its vote frequencies are
probabilities and can stand in for the robust model of a mixture (:mod:`adasmooth.certify.mixture`).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from .bounds import check_delta, clopper_pearson_lower, smallest_useful_n

logger = logging.getLogger(__name__)

ABSTAIN = -1


class Smooth:
    """A base network ``f`` smoothed with isotropic Gaussian noise of standard deviation ``sigma``.

    Parameters
    ----------
    base : module mapping images (N, C, H, W) to logits over ``num_classes`` classes.
    num_classes : number of classes of ``base``.
    sigma : noise level, in the units of the inputs (images in [0, 1]); noisy inputs are not clipped.
    batch_size : noisy inputs per forward pass; samples of several images share a batch when n is small.
    device : where the noise is drawn and ``base`` runs (``base`` is not moved).
    """

    def __init__(self, base: nn.Module, num_classes: int, sigma: float, *, batch_size: int = 1000,
                 device: str | torch.device = "cpu"):
        if not float(sigma) > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.base = base
        self.num_classes = int(num_classes)
        self.sigma = float(sigma)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)

    @torch.no_grad()
    def sample_counts(self, x: torch.Tensor, n: int, *, generator: torch.Generator) -> torch.Tensor:
        """Votes of ``base`` on ``n`` noisy copies of each image: a (N, num_classes) int64 tensor.

        Noise for image i comes from ``generator`` in order, so a seeded generator gives the same counts
        for the same inputs and batch size.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if x.dim() != 4:
            raise ValueError(f"x must be NCHW, got shape {tuple(x.shape)}")
        x = x.to(self.device)
        counts = torch.zeros(len(x), self.num_classes, dtype=torch.int64, device=self.device)
        total = len(x) * n
        for start in range(0, total, self.batch_size):
            stop = min(total, start + self.batch_size)
            owner = torch.arange(start, stop, device=self.device) // n
            noisy = x[owner] + self.sigma * torch.randn(
                (stop - start, *x.shape[1:]), generator=generator, device=self.device, dtype=x.dtype
            )
            logits = self.base(noisy)
            if logits.shape[-1] != self.num_classes:
                raise ValueError(f"the base model gives {logits.shape[-1]} classes, Smooth was told {self.num_classes}")
            flat = owner * self.num_classes + logits.argmax(1)
            counts.view(-1).index_add_(0, flat, torch.ones_like(flat))
        return counts.cpu()

    def probabilities(self, x: torch.Tensor, n: int, *, generator: torch.Generator) -> torch.Tensor:
        """Vote frequencies, an estimate of the smoothed class probabilities: (N, num_classes) float."""
        return self.sample_counts(x, n, generator=generator).double() / n

    def predict(self, x: torch.Tensor, n: int, alpha: float, *, generator: torch.Generator) -> torch.Tensor:
        """Prediction of the smoothed classifier with abstention (Cohen et al., PREDICT).

        With probability at least 1 − ``alpha`` over the noise, a returned class is the smoothed
        classifier's top class; otherwise the image gets ``ABSTAIN`` (a two-sided binomial test of the top
        two counts against 1/2 fails to reject at level ``alpha``).
        """
        check_delta(alpha)
        counts = self.sample_counts(x, n, generator=generator)
        top2 = counts.topk(2, dim=1)
        out = top2.indices[:, 0].clone()
        from scipy.stats import binomtest  # scipy.stats takes seconds to import: only where it is used

        for i, (c1, c2) in enumerate(top2.values.tolist()):
            if c1 + c2 == 0 or binomtest(c1, c1 + c2, 0.5).pvalue > alpha:
                out[i] = ABSTAIN
        return out

    def certify(self, x: torch.Tensor, n0: int, n: int, delta: float, *,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Certified prediction and ℓ2 radius per image (Cohen et al., CERTIFY).

        The class is chosen from ``n0`` selection samples; ``n`` separate estimation samples give a
        Clopper–Pearson lower bound p_A on its probability at confidence 1 − ``delta``. With probability at
        least 1 − ``delta`` over the noise, a returned class c is the smoothed classifier's prediction on
        the whole ℓ2 ball of radius σ·Φ⁻¹(p_A). Images with p_A <= 1/2 get ``ABSTAIN`` and radius 0.
        Returns (classes int64, radii float64).
        """
        self.check_sample_sizes(n0, n, delta)
        chosen = self.sample_counts(x, n0, generator=generator).argmax(1)
        counts = self.sample_counts(x, n, generator=generator)
        p_a = np.asarray(clopper_pearson_lower(counts.gather(1, chosen[:, None])[:, 0].numpy(), n, delta))
        from scipy.stats import norm

        radius = np.where(p_a > 0.5, self.sigma * norm.ppf(np.clip(p_a, 0.5, 1.0)), 0.0)
        pred = torch.where(torch.as_tensor(p_a > 0.5), chosen, torch.full_like(chosen, ABSTAIN))
        return pred, torch.as_tensor(radius, dtype=torch.float64)

    @staticmethod
    def check_sample_sizes(n0: int, n: int, delta: float, *, alpha: float = 1.0, num_classes: int = 2) -> None:
        """Errors for impossible sizes; a warning when ``n`` is too small to ever certify."""
        check_delta(delta)
        if n0 < 1 or n < 1:
            raise ValueError(f"n0 (selection) and n (estimation) must be >= 1, got n0={n0}, n={n}")
        need = smallest_useful_n(delta, alpha=alpha, num_classes=num_classes)
        if n < need:
            logger.warning("n=%d estimation samples can never certify at delta=%g%s: use n >= %d", n, delta,
                           "" if alpha >= 1 else f" and alpha={alpha:g}", need)
