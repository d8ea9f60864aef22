"""Does the gate separate? α(x) of an adaptive model on clean inputs against α on the final iterates of
attacks aimed at the gate, for several gate weights w, summarised by the AUROC.

Every example counts, whether or not the attack broke the model: a gate that only looks right on the
examples an attack failed on (or on AutoAttack's output, which is the clean image wherever it failed) says
nothing. The attack is the official APGD-CE on ``(1-w)·CE + w·BCE(γ, 1)`` from a random start, run to
its highest-loss iterate; w > 1 makes the attacker fight the gate even at the cost of the classifier's loss.
With ``square_queries`` the official Square attack (a search on the composite's margin, no gradient) is
scored too, on its final iterates: a gate that only gradient attacks fail to walk around shows here. With
``fab_targets`` the official targeted FAB is scored on the adversarial examples it finds within ε (FAB keeps
no iterate where it fails, so only its successes are scored, and their number is reported).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..attacks.apgd_training import square_training_copies
from ..attacks.gate_apgd import apgd_composite_run
from ..state import ChunkStore, chunk_slices, run_chunks, settings_key

DEFAULT_WEIGHTS = (0.0, 0.5, 1.0, 2.0)


def auroc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """P(score of a positive > score of a negative), ties counting one half (the Mann-Whitney statistic)."""
    if not len(positive) or not len(negative):
        raise ValueError("the AUROC needs at least one positive and one negative score")
    pos, neg = positive.double().flatten(), negative.double().flatten()
    ranks = torch.cat([pos, neg]).argsort().argsort().double() + 1  # ranks 1..N, ties resolved below
    scores = torch.cat([pos, neg])
    for v in scores.unique():  # average ranks over ties
        tie = scores == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


@torch.no_grad()
@torch.no_grad()
def usefulness_scores(model, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 500,
                      device: str | torch.device = "cpu", progress: bool = False,
                      desc: str = "gate usefulness") -> dict[str, torch.Tensor]:
    """Per clean input (on the CPU): the gate's γ and α, whether each base model and the mixture are right
    (``mixed_right``: the composite's own clean flags, from the same pass), and the robust model's top
    softmax probability."""
    parts: dict[str, list] = {"gamma": [], "alpha": [], "standard_right": [], "robust_right": [], "mixed_right": [],
                              "robust_confidence": []}
    for i in tqdm(range(0, len(y), batch_size), desc=desc, disable=not progress, leave=False):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        g, h, gamma = model.components(xb)
        parts["mixed_right"].append((model.mix(g, h, gamma).argmax(1) == yb).cpu())
        parts["gamma"].append(gamma.float().cpu())
        parts["alpha"].append(model.alpha_from_gamma(gamma).float().cpu())
        parts["standard_right"].append((g.argmax(1) == yb).cpu())
        parts["robust_right"].append((h.argmax(1) == yb).cpu())
        parts["robust_confidence"].append(torch.softmax(h.float(), 1).max(1).values.cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


def usefulness_auroc(model, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 500,
                     device: str | torch.device = "cpu", shares: tuple[float, ...] = (0.1, 0.2, 0.3),
                     scores: dict[str, torch.Tensor] | None = None) -> dict:
    """Does the gate lower α where that helps? On clean inputs, the AUROC of α between the inputs where the
    standard model alone is right (where a low α gains accuracy) and all the others: P(α elsewhere > α
    there), 0.5 for a gate that ignores usefulness, 1 for one that ranks every such input lowest. Beside it,
    the same AUROC for the robust model's top softmax probability, the training-free ranking a nonlinear map
    (MixedNUTS) relies on. In accuracy terms, ``switch_clean_accuracy``: the clean accuracy of the hard switch
    that takes the standard model's answer on the ``share`` of inputs ranked lowest and the robust model's
    elsewhere, for both rankings (no attack: what a ranking could gain if nothing pushed inputs across it).
    ``scores``: :func:`usefulness_scores` of these inputs, when already computed."""
    if scores is None:
        scores = usefulness_scores(model, x, y, batch_size=batch_size, device=device)
    a = scores["gamma"]  # α rises with γ; γ keeps the order where α saturates at a bound
    s, r, c = scores["standard_right"], scores["robust_right"], scores["robust_confidence"]

    def switch(score: torch.Tensor, share: float) -> float:
        lowest = torch.zeros(len(score), dtype=torch.bool)
        lowest[score.argsort()[: round(share * len(score))]] = True
        return float(torch.where(lowest, s, r).float().mean())

    only_std = s & ~r
    if not only_std.any() or only_std.all():
        raise ValueError("the usefulness AUROC needs inputs where the standard model alone is right and others")
    return {"n": len(s), "standard_only_right": int(only_std.sum()), "robust_only_right": int((r & ~s).sum()),
            "auroc_alpha": auroc(a[~only_std], a[only_std]),
            "auroc_robust_confidence": auroc(c[~only_std], c[only_std]),
            "switch_clean_accuracy": {f"{q:g}": {"alpha": switch(a, q), "robust_confidence": switch(c, q)}
                                      for q in shares}}


@dataclass
class Separation:
    """α on clean inputs and on the attacked ones per gate weight w, with the AUROC (attacked = positive)."""

    alpha_clean: torch.Tensor
    alpha_attacked: dict[float, torch.Tensor]
    auroc: dict[float, float]
    settings: dict = field(default_factory=dict)
    alpha_square: torch.Tensor | None = None  # α on the official Square attack's final iterates
    auroc_square: float | None = None
    alpha_fab: torch.Tensor | None = None  # α on the adversarial examples FAB-T found within ε
    auroc_fab: float | None = None

    def to_dict(self) -> dict:
        q = torch.tensor([0.1, 0.5, 0.9])
        out = {"auroc": {f"w={w:g}": v for w, v in self.auroc.items()}, "settings": self.settings,
               "alpha_clean_quantiles_10_50_90": self.alpha_clean.quantile(q).tolist(),
               "alpha_attacked_quantiles_10_50_90": {f"w={w:g}": a.quantile(q).tolist()
                                                     for w, a in self.alpha_attacked.items()}}
        if self.alpha_square is not None:
            out["square"] = {"auroc": self.auroc_square, "queries": self.settings.get("square_queries"),
                             "alpha_quantiles_10_50_90": self.alpha_square.quantile(q).tolist()}
        if self.alpha_fab is not None:
            out["fab_t"] = {"auroc": self.auroc_fab, "found": len(self.alpha_fab),
                            "target_classes": self.settings.get("fab_targets"),
                            "alpha_quantiles_10_50_90": (self.alpha_fab.quantile(q).tolist() if len(self.alpha_fab)
                                                         else None)}
        return out


def gate_separation(composite, x: torch.Tensor, y: torch.Tensor, *, eps: float, weights=DEFAULT_WEIGHTS,
                    n_iter: int = 40, norm: str = "Linf", seed: int = 0, batch_size: int = 250,
                    device: str | torch.device = "cpu", square_queries: int = 0, fab_targets: int = 0,
                    cache_dir: str | Path | None = None, progress: bool = False,
                    distributed: bool = False) -> Separation:
    """α(x) on ``x`` and on gate-aware APGD-CE final iterates for each w in ``weights``, and the AUROCs;
    with ``square_queries`` > 0 also on the official Square attack's final iterates (that many queries); with
    ``fab_targets`` > 0 also on what the official FAB-T (that many target classes, 100 iterations) finds.
    The work goes batch by batch (``batch_size`` examples; Square seeded per batch); with ``cache_dir`` each
    finished batch is kept there, so an interrupted run (FAB-T on a large gate is hours on a CPU) resumes.
    ``distributed``: the torchrun ranks share the batches (rank r takes batches r, r + W, ...; every rank must
    call this) and each gets the whole result; otherwise this process does every batch."""
    composite.eval()
    settings = {"attack": "apgd-ce on (1-w)·CE + w·BCE(gamma, 1), highest-loss iterate of every example",
                "n_iter": n_iter, "eps": eps, "norm": norm, "n": len(y), "seed": seed}
    if square_queries:
        settings["square_queries"] = int(square_queries)
    if fab_targets:
        settings["fab_targets"] = int(fab_targets)
    weights = [float(w) for w in weights]
    slices = chunk_slices(len(y), batch_size) if len(y) else []
    store = None
    if cache_dir is not None:
        base = settings_key({"separation": settings, "weights": weights, "batch": batch_size}, model=composite)
        store = ChunkStore(cache_dir, lambda c: settings_key({"base": base, "chunk": c},
                                                             data=(x[slices[c]], y[slices[c]])))
    bar = tqdm(total=len(y), desc="gate separation", unit="ex", disable=not progress, leave=False)

    def alphas(images) -> list[float]:
        with torch.no_grad():
            return composite.alpha(images.to(device)).cpu().tolist() if len(images) else []

    def compute(c: int, sl: slice) -> dict:
        xb, yb = x[sl].to(device), y[sl].to(device)
        out = {"clean": alphas(xb)}
        for w in weights:
            out[f"w={w:g}"] = alphas(apgd_composite_run(composite, xb, yb, eps=eps, w=w, n_iter=n_iter, seed=seed,
                                                        norm=norm))
        if square_queries:
            gen = torch.Generator().manual_seed(seed + 1_000_003 * c)
            out["square"] = alphas(square_training_copies(composite, xb, yb, eps=eps, generator=gen,
                                                          queries=square_queries, norm=norm).x)
        if fab_targets:
            out["fab"] = alphas(fab_t_found(composite, xb, yb, eps=eps, norm=norm, seed=seed,
                                            n_target_classes=fab_targets))
        bar.update(sl.stop - sl.start)
        return out

    chunks = run_chunks(slices, compute, store=store, local=not distributed, strict=False, what="separation batches",
                        on_cached=lambda c, sl: bar.update(sl.stop - sl.start))
    bar.close()

    def joined(name: str) -> torch.Tensor:
        return torch.tensor([v for ch in chunks for v in ch[name]], dtype=torch.float32)

    a_clean = joined("clean")
    attacked = {w: joined(f"w={w:g}") for w in weights}
    sep = Separation(a_clean, attacked, {w: auroc(a, a_clean) for w, a in attacked.items()}, settings)
    if square_queries:
        sep.alpha_square = joined("square")
        sep.auroc_square = auroc(sep.alpha_square, a_clean)
    if fab_targets:
        sep.alpha_fab = joined("fab")
        sep.auroc_fab = auroc(sep.alpha_fab, a_clean) if len(sep.alpha_fab) else None
    return sep


def fab_t_found(composite, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "Linf", seed: int = 0,
                n_target_classes: int = 9, n_iter: int = 100) -> torch.Tensor:
    """The adversarial examples the official targeted FAB (AutoAttack's FAB-T settings) finds within ``eps``
    for the examples ``composite`` classifies correctly; those it fails on are left out."""
    from pyautoattack.fab_pt import FABAttack_PT

    fab = FABAttack_PT(composite, norm=norm, n_restarts=1, n_iter=n_iter, eps=float(eps), seed=seed, targeted=True,
                       n_target_classes=n_target_classes, device=x.device)
    x_adv = fab.perturb(x, y)
    with torch.no_grad():
        fooled = composite(x_adv).argmax(1) != y
    dist = (x_adv - x).flatten(1).abs().amax(1) if norm == "Linf" else (x_adv - x).flatten(1).norm(dim=1)
    return x_adv[fooled & (dist <= eps + 1e-6) & (dist > 0)]
