"""The mixer's training attack as the paper's released configs run it (Bai et al., arXiv 2301.12554):
the official APGD of ``pyautoattack`` on the gate-aware composite loss, randomized per attack and per example.

For every clean image, ``copies`` attacked copies: one untargeted APGD-CE and ``copies - 1`` APGD-T
(targeted DLR) aimed at the composite's 2nd, 3rd, ... ranked classes. Each attack draws its number of
iterations as round(χ²(df)) (at least 1, optionally capped), and each example its radius ε·U(eps_range)
and its gate weight w ~ U(0, w_max) in ``(1-w)·loss + w·BCE(γ, 1)``. APGD starts at a random point of the
ball and returns its best-loss iterate. Nothing of APGD is re-implemented: its single run is called with a
per-example radius, which its ℓ∞/ℓ2 steps and projections broadcast.

Beside them (our addition, not the paper's), :func:`square_training_copies` makes copies by the official
Square attack: a random search on the composite's margin that needs no gradient. A gate trained only on
gradient attacks can mask its gradients; Square then walks to inputs the gate reads as clean.
:func:`fab_training_copies` makes copies by the official FAB-T: the smallest step across the composite's
boundary towards a ranked class. Its inputs sit close to the clean ones, which is how FAB-T walks around a
gate that only learned to flag large, loss-maximising perturbations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .gate_apgd import apgd_composite_run


@dataclass
class AttackedCopies:
    """Adversarial copies, copy-major (rows ``k·N .. (k+1)·N - 1`` are copy k of the N clean images),
    with their labels and what was drawn for each row."""

    x: torch.Tensor
    y: torch.Tensor
    eps: torch.Tensor
    w: torch.Tensor
    iters: list[int]  # per copy
    targeted: torch.Tensor  # per row

    def to(self, device) -> AttackedCopies:
        return AttackedCopies(self.x.detach().to(device), self.y.to(device), self.eps.to(device), self.w.to(device),
                              self.iters, self.targeted.to(device))

    @staticmethod
    def concatenate(parts: list[AttackedCopies]) -> AttackedCopies:
        return AttackedCopies(*(torch.cat([getattr(p, f) for p in parts]) for f in ("x", "y", "eps", "w")),
                              [i for p in parts for i in p.iters], torch.cat([p.targeted for p in parts]))


def draw_iterations(df: float, *, generator: torch.Generator, max_iters: int | None = None) -> int:
    """round(χ²(df)) from ``generator`` (a χ²(df) is Gamma(df/2, scale 2)), at least 1, at most ``max_iters``."""
    if not df > 0:
        raise ValueError(f"the chi-square degrees of freedom must be > 0, got {df}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        k = int(torch.distributions.Chi2(torch.tensor(float(df))).sample().round())
    return max(1, k if max_iters is None else min(k, max_iters))


def apgd_training_attack(
    composite,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    generator: torch.Generator,
    copies: int = 10,
    iters_df: float = 75.0,
    max_iters: int | None = None,
    eps_range: tuple[float, float] = (0.4, 1.1),
    w_max: float = 0.4,
    norm: str = "Linf",
) -> AttackedCopies:
    """``copies`` attacked copies of ``(x, y)`` against ``composite`` (an adaptive mixture: ``components``,
    ``mix`` and a forward returning log-probabilities), drawn from ``generator``. The composite's mode is
    left as it is; the caller's global RNG state is restored."""
    if copies < 1:
        raise ValueError(f"copies must be >= 1 (one untargeted attack, then targeted ones), got {copies}")
    lo, hi = eps_range
    if not 0 < lo <= hi:
        raise ValueError(f"eps_range must satisfy 0 < low <= high, got {eps_range}")
    if norm not in ("Linf", "L2"):
        raise ValueError(f"norm must be Linf or L2, got {norm!r}")
    if not iters_df > 0:
        raise ValueError(f"the chi-square degrees of freedom must be > 0, got {iters_df}")
    n, device = len(x), x.device
    with torch.no_grad():
        ranked = composite(x).argsort(dim=1, descending=True)
    if copies > ranked.shape[1]:
        raise ValueError(f"{copies} copies need {copies - 1} target classes; the model has {ranked.shape[1]} classes")
    parts = []
    for k in range(copies):
        draw = torch.rand(2, n, generator=generator, device=generator.device).to(device)
        eps_i, w_i = eps * (lo + (hi - lo) * draw[0]), w_max * draw[1]
        iters = draw_iterations(iters_df, generator=generator, max_iters=max_iters)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        x_best = apgd_composite_run(composite, x, y, eps=eps_i, w=w_i, n_iter=iters, seed=seed, norm=norm,
                                    targets=ranked[:, k] if k > 0 else None)
        parts.append(AttackedCopies(x_best, y, eps_i, w_i, [iters], torch.full((n,), k > 0, device=device)))
    return AttackedCopies.concatenate(parts)


def square_training_copies(composite, x: torch.Tensor, y: torch.Tensor, *, eps: float, generator: torch.Generator,
                           copies: int = 1, queries: int = 300, norm: str = "Linf", p_init: float = 0.8
                           ) -> AttackedCopies:
    """``copies`` copies of ``(x, y)`` made by single runs of the official Square attack (margin loss on
    ``composite``'s output, ``queries`` queries, its square-size schedule rescaled to them) at the full
    radius ``eps``, each seeded from ``generator``. An example Square fools is returned where it was fooled;
    the others at their lowest margin. Rows carry w = 0 and count as untargeted; ``iters`` holds the queries."""
    from pyautoattack.square import SquareAttack

    if copies < 1 or queries < 1:
        raise ValueError(f"Square copies need copies >= 1 and queries >= 1, got {copies}, {queries}")
    n, device = len(x), x.device
    parts = []
    for _ in range(copies):
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        attack = SquareAttack(composite, p_init=p_init, n_queries=int(queries), eps=float(eps), norm=norm,
                              n_restarts=1, seed=seed, device=device, resc_schedule=True)
        attack.init_hyperparam(x)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(seed)
            x_adv = attack.attack_single_run(x, y)[1].detach()
        parts.append(AttackedCopies(x_adv, y, torch.full((n,), float(eps), device=device),
                                    torch.zeros(n, device=device), [int(queries)],
                                    torch.zeros(n, dtype=torch.bool, device=device)))
    return AttackedCopies.concatenate(parts)


def fab_training_copies(composite, x: torch.Tensor, y: torch.Tensor, *, eps: float, generator: torch.Generator,
                        copies: int = 1, n_iter: int = 20, norm: str = "Linf",
                        fallback: torch.Tensor | None = None) -> AttackedCopies:
    """``copies`` copies of ``(x, y)`` made by single runs of the official targeted FAB (FAB-T) on
    ``composite``'s output, copy k aimed at the composite's (k+2)-th ranked class, ``n_iter`` iterations,
    seeded from ``generator``. FAB returns the smallest boundary crossing it found; it is projected onto the
    radius-``eps`` ball (a crossing beyond ``eps`` becomes the nearest point inside it). Where FAB finds no
    crossing it hands the clean image back: those rows take ``fallback``'s rows (e.g. an APGD copy of the
    same images) when given, so that no clean image is trained as an attacked one. Rows carry w = 0 and
    count as targeted; ``iters`` holds the iterations."""
    from pyautoattack.fab_pt import FABAttack_PT

    if copies < 1 or n_iter < 1:
        raise ValueError(f"FAB copies need copies >= 1 and n_iter >= 1, got {copies}, {n_iter}")
    if fallback is not None and fallback.shape != x.shape:
        raise ValueError(f"fallback must have the images' shape {tuple(x.shape)}, got {tuple(fallback.shape)}")
    n, device = len(x), x.device
    parts = []
    for k in range(copies):
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        attack = FABAttack_PT(composite, norm=norm, n_restarts=1, n_iter=int(n_iter), eps=float(eps), seed=seed,
                              targeted=True, device=device, n_target_classes=1)
        attack.target_class = k + 2
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            x_fab = attack.attack_single_run(x, y, use_rand_start=False, is_targeted=True).detach()
        delta = x_fab - x
        delta = delta.clamp(-eps, eps) if norm == "Linf" else delta * (
            eps / delta.flatten(1).norm(dim=1).clamp_min(eps)).view(-1, *[1] * (x.dim() - 1))
        x_adv = (x + delta).clamp(0, 1)
        if fallback is not None:
            unmoved = (x_fab == x).flatten(1).all(dim=1)
            x_adv[unmoved] = fallback[unmoved].to(x_adv.dtype)
        parts.append(AttackedCopies(x_adv, y, torch.full((n,), float(eps), device=device),
                                    torch.zeros(n, device=device), [int(n_iter)],
                                    torch.ones(n, dtype=torch.bool, device=device)))
    return AttackedCopies.concatenate(parts)
