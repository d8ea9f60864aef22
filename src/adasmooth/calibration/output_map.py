"""Calibrate a MixedNUTS logit map and its α on validation data, training-free (Bai, Zhou, Patel, Sojoudi,
arXiv 2402.02263).

By the margin lemma, a mixture with α >= 1/2 answers as the robust model wherever the robust model's
probability margin is at least ``(1-α)/α``. So: take the robust model's logits on attacked inputs it still
classifies correctly (those margins should stay high) and on clean inputs it gets wrong (those should be
low, so that the standard model decides). For each map (s, c, p) in a grid, let ``q`` be the margin that a
share ``beta`` of the attacked-correct inputs keep; the objective is the share of clean-wrong inputs
whose margin still reaches ``q`` (they stay with the robust model's wrong answer). The best map minimises
it, and ``α = 1/(1 + q)``. The base logits are computed once; the grid only reuses them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from ..attacks.gate_apgd import apgd_best_loss
from ..evaluation.accuracy import batched_logits
from ..transforms import MixedNUTSMap


def signed_margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``p_y - max_{j != y} p_j`` per row: positive where the prediction is right (then it equals the
    top-1 minus top-2 probability margin), negative where it is wrong."""
    p = torch.softmax(logits.float(), dim=-1)
    p_y = p.gather(1, y.view(-1, 1)).squeeze(1)
    others = p.scatter(1, y.view(-1, 1), float("-inf"))
    return p_y - others.max(1).values


def minimum_margin_inputs(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "Linf",
    n_iter: int = 50,
    seed: int = 0,
    batch_size: int = 250,
    device="cpu",
    candidates: tuple[torch.Tensor, ...] = (),
) -> torch.Tensor:
    """Per example, the attacked input with the lowest margin under ``model`` (MixedNUTS calibrates on
    these, not on the clean input that an attack hands back where it fails).

    Runs the official APGD-CE and APGD-DLR of ``pyautoattack`` with ``best_loss=True`` (the highest-loss
    iterate of each example, misclassified or not) and keeps, per example, the input among those and
    ``candidates`` (e.g. AutoAttack's adversarial examples) whose :func:`signed_margins` is lowest.
    """
    model.eval()
    pool = list(candidates)
    for loss in ("ce", "dlr"):
        pool.append(apgd_best_loss(model, x, y, loss=loss, eps=eps, n_iter=n_iter, seed=seed, norm=norm,
                                   batch_size=batch_size, device=device))
    best, best_margin = None, None
    for cand in pool:
        m = signed_margins(batched_logits(model, cand, batch_size=batch_size, device=device), y)
        if best is None:
            best, best_margin = cand.clone(), m
        else:
            lower = m < best_margin
            best[lower], best_margin = cand[lower], torch.where(lower, m, best_margin)
    return best


def probability_margins(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 softmax probability per row."""
    top2 = torch.softmax(logits, dim=-1).topk(2, dim=-1).values
    return top2[:, 0] - top2[:, 1]


@dataclass
class MapCalibration:
    """The chosen map parameters, its α, and the objective over the whole grid."""

    scale: float
    shift: float
    power: float
    k: int | None
    alpha: float
    threshold: float
    objective: float
    beta: float
    n_attacked_correct: int
    n_clean_wrong: int
    grid: list = field(default_factory=list)

    def make_map(self) -> MixedNUTSMap:
        return MixedNUTSMap(scale=self.scale, shift=self.shift, power=self.power, k=self.k)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def calibrate_logit_map(
    attacked_correct_logits: torch.Tensor,
    clean_wrong_logits: torch.Tensor,
    *,
    beta: float = 0.98,
    scales=(0.5, 1.0, 2.0, 4.0, 8.0, 16.0),
    shifts=(-1.0, -0.5, 0.0, 0.5, 1.0, 2.0),
    powers=(0.5, 1.0, 2.0, 3.0, 4.0),
    k: int | None = 4,
) -> MapCalibration:
    """Grid-search the MixedNUTS map on the robust model's logits (see the module docstring).

    ``attacked_correct_logits``: robust-model logits on attacked validation inputs it still gets right;
    ``clean_wrong_logits``: its logits on clean validation inputs it gets wrong. Ties in the objective go
    to the larger α (the more robust mixture). Maps that change the robust model's prediction on any of
    these inputs are left out (``argmax_changed`` in the grid rows).
    """
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta must lie in (0, 1), got {beta}")
    if len(attacked_correct_logits) < 10 or len(clean_wrong_logits) < 10:
        raise ValueError(f"need at least 10 attacked-correct and 10 clean-wrong examples, got "
                         f"{len(attacked_correct_logits)} and {len(clean_wrong_logits)}: use more validation points")
    ac = attacked_correct_logits.detach().float()
    cw = clean_wrong_logits.detach().float()
    rows = []
    for s, c, p in itertools.product(scales, shifts, powers):
        m = MixedNUTSMap(scale=s, shift=c, power=p, k=k)
        with torch.no_grad():
            mapped_ac, mapped_cw = m(ac), m(cw)
            m_ac, m_cw = probability_margins(mapped_ac), probability_margins(mapped_cw)
            # a negative shift can push the top logit below GELU's zero while far-below logits map to ~0:
            # the robust model's prediction would change, so such maps are not candidates
            changed = float(torch.cat([mapped_ac.argmax(1) != ac.argmax(1), mapped_cw.argmax(1) != cw.argmax(1)])
                            .float().mean())
        q = float(torch.quantile(m_ac, 1.0 - beta))
        q = min(max(q, 0.0), 1.0)
        rows.append({"scale": s, "shift": c, "power": p, "threshold": q, "alpha": 1.0 / (1.0 + q),
                     "objective": float((m_cw >= q).float().mean()), "argmax_changed": changed})
    kept = [r for r in rows if r["argmax_changed"] == 0.0]
    if not kept:
        raise ValueError("every map in the grid changes the robust model's prediction on some calibration inputs; "
                         "use shifts >= 0")
    best = min(kept, key=lambda r: (r["objective"], -r["alpha"]))
    return MapCalibration(scale=best["scale"], shift=best["shift"], power=best["power"], k=k, alpha=best["alpha"],
                          threshold=best["threshold"], objective=best["objective"], beta=beta,
                          n_attacked_correct=len(ac), n_clean_wrong=len(cw), grid=rows)
