"""Explicit randomness in one place: the seeded test/validation subsets every command attacks, and the
seeds derived for epochs, steps and chunks (so that a resumed or sharded run draws what an uninterrupted
one-process run draws)."""

from __future__ import annotations

import torch

_EPOCH_PRIME = 1_000_003
_STEP_PRIME = 1_000_000_007
_PART_PRIME = 4099
_SIGMA_PRIME = 7919


def seeded_subset(n_total: int, n: int, seed: int) -> torch.Tensor:
    """Indices of the first ``min(n, n_total)`` entries of a permutation seeded by ``seed``: the same
    examples for every model and every run with that seed (and a larger ``n`` extends a smaller one)."""
    if n < 0:
        raise ValueError(f"the subset size must be >= 0, got {n}")
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[: min(n, n_total)]


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of an epoch's data order and augmentation."""
    return seed * _EPOCH_PRIME + epoch


def step_seed(seed: int, step: int, part: int | None = None) -> int:
    """Seed of an optimiser step's attack; ``part`` numbers its independently seeded pieces."""
    base = seed * _STEP_PRIME
    return base + step if part is None else base + step * _PART_PRIME + part + 1


def chunk_seed(seed: int, chunk: int, *, sigma: float = 0.0) -> int:
    """Seed of one chunk of examples (and noise level, for certification)."""
    return seed * _EPOCH_PRIME + round(sigma * 1e6) * _SIGMA_PRIME + chunk


def generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)
