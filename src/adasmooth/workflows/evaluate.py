"""The evaluate workflow: clean accuracy on a whole split and the honest attack plan of each model's kind
on a seeded subset, chunk by chunk (resumable, shared by torchrun ranks); a JSON per model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..config import Config
from ..distributed import init_distributed, is_main
from ..evaluation.accuracy import correct_mask
from ..evaluation.harness import evaluate_in_chunks
from ..evaluation.plans import attack_plan
from ..evaluation.report import RobustnessReport
from ..evaluation.separation import gate_separation, usefulness_auroc, usefulness_scores
from ..evaluation.surrogate import has_logit_maps
from ..io import load_model, write_json
from ..plots import plot_alpha_hist
from ..pretrained import shipped_pair_stem
from ..speed import fast_inference
from .common import build_mixture, is_shipped_pair, load_pair, load_subset


@dataclass
class EvaluationTarget:
    """One model to evaluate: its name (file stem of its JSON), the module, the kind of attack plan it
    gets (``base``, ``mixed`` or ``adaptive``) and what the report says about it."""

    name: str
    model: nn.Module
    kind: str
    info: dict = field(default_factory=dict)


@dataclass
class ModelEvaluation:
    name: str
    clean_full: float  # on the whole split
    report: RobustnessReport  # on the seeded subset
    alpha: dict | None = None  # an adaptive model's α(x) on clean and attacked inputs
    clean_flags: list[int] | None = None  # per example of the whole split, in its order: 1 where correct

    def to_dict(self, n_full: int) -> dict:
        out = {**self.report.to_dict(), "clean_accuracy_full_split": self.clean_full, "n_full_split": n_full}
        if self.clean_flags is not None:  # lets `compare` resample clean accuracy, paired across models
            out["clean_per_example_full_split"] = self.clean_flags
        if self.alpha is not None:
            out["alpha"] = self.alpha
        return out


@dataclass
class EvaluateResult:
    dataset: str
    split: str
    n_full: int
    n: int
    eps: float
    norm: str
    world: int
    out: Path
    models: list[ModelEvaluation] = field(default_factory=list)

    def format(self) -> str:
        lines = [f"{self.dataset} {self.split}: clean on {self.n_full} images; robust on {self.n} seeded images, "
                 f"{self.norm} eps={self.eps:g}" + (f"; {self.world} ranks" if self.world > 1 else "")]
        for m in self.models:
            rep = m.report
            lines.append(f"{m.name}: clean {100 * m.clean_full:.2f}%, worst case {100 * rep.robust_accuracy:.2f}% "
                         f"(clean on the subset {100 * rep.clean_accuracy:.2f}%)")
            lines += [f"  {a['name']:<28s} {100 * a['accuracy']:6.2f}%  ({a['seconds']:.0f} s)" for a in rep.attacks]
            if rep.gradient_free_gap() is not None:
                lines.append(f"  gradient-free gap (AutoAttack after APGD-T minus after Square): "
                             f"{100 * rep.gradient_free_gap():.1f} pts")
            if m.alpha is not None and "square" in m.alpha:
                lines.append(f"  gate AUROC on Square's final iterates: {m.alpha['square']['auroc']:.3f}")
            useful = (m.alpha or {}).get("usefulness", {})
            if useful.get("auroc_alpha") is not None:
                lines.append(f"  gate usefulness AUROC (is α lowest where the standard model alone is right?) over "
                             f"{useful['n']} clean images: {useful['auroc_alpha']:.3f}; the robust model's "
                             f"confidence: {useful['auroc_robust_confidence']:.3f}")
        lines.append(f"results in {self.out}/")
        return "\n".join(lines)


def fixed_mixture_name(alpha: float, standard_scale: float = 1.0, robust_scale: float = 1.0) -> str:
    """The report name of a fixed mixture: α and every logit scale that is not 1, so reports of two scales
    in one folder never overwrite each other (``mixed-alpha0.9-sh2``)."""
    return (f"mixed-alpha{alpha:g}" + (f"-sg{standard_scale:g}" if standard_scale != 1.0 else "")
            + (f"-sh{robust_scale:g}" if robust_scale != 1.0 else ""))


def evaluation_targets(cfg: Config, *, checkpoints: list[str] | None = None, mixer: str | None = None,
                       alpha: float | None = None, nonlinear: bool = False, standard_scale: float = 1.0,
                       robust_scale: float = 1.0, standard: str | None = None, robust: str | None = None,
                       device: str = "cpu") -> tuple[list[EvaluationTarget], nn.Module | None, nn.Module | None]:
    """The models to evaluate and the (standard, robust) pair that mixtures' transfer attacks start from:
    base checkpoints (default: both shipped models), or one mixture of the pair (``mixer``, ``alpha`` or
    ``nonlinear``)."""
    if mixer or alpha is not None or nonlinear:
        if checkpoints:
            raise ValueError("--checkpoint evaluates base models; it does not go with --mixer, --alpha or --nonlinear")
        std, rob = load_pair(cfg, standard=standard, robust=robust, device=device)
        model, kind = build_mixture(cfg, std, rob, mixer=mixer, alpha=alpha, nonlinear=nonlinear,
                                    standard_scale=standard_scale, robust_scale=robust_scale,
                                    shipped_pair=is_shipped_pair(cfg, standard=standard, robust=robust), device=device)
        if mixer:
            name, info = Path(mixer).name, {"mixer": str(mixer), **model.describe()}
        else:
            name = "nonlinear" if nonlinear else fixed_mixture_name(alpha, standard_scale, robust_scale)
            info = model.describe()
        return [EvaluationTarget(name, model, kind, info)], std, rob
    targets = []
    for ckpt in checkpoints or [str(shipped_pair_stem(cfg.data.name, r)) for r in ("standard", "robust")]:
        model, meta = load_model(ckpt, map_location=device)
        targets.append(EvaluationTarget(Path(ckpt).name, model, "base", {
            "checkpoint": str(ckpt), "architecture": meta.get("architecture"), "arch_args": meta.get("arch_args"),
            "kind": meta.get("kind")}))
    return targets, None, None


def evaluate_target(target: EvaluationTarget, attacks: list, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, *,
                    cfg: Config, split: str, device: str, chunk_size: int | None = None,
                    cache_dir: Path | None = None, alpha_png: Path | None = None, plain: nn.Module | None = None,
                    keep_adversarials: bool = False, progress: bool = True,
                    square_queries: int = 0, fab_targets: int = 0,
                    clean_correct: torch.Tensor | None = None) -> tuple[ModelEvaluation, dict | None]:
    """One model: clean accuracy on the whole split (``clean_correct``: its flags, when already known),
    ``attacks`` on ``idx`` (per-example worst case);
    for an adaptive model also how its gate separates clean inputs from attacks aimed at it (``alpha_png``) and,
    over the whole split, whether its α falls where the standard model alone is right. Returns the evaluation
    and, with ``keep_adversarials``, the adversarial images of each attack (else None)."""
    bs = cfg.evaluate.batch_size
    adaptive = target.kind == "adaptive"
    scores = None
    if adaptive and alpha_png is not None and is_main() and (plain is None or plain is target.model):
        # one pass gives the gate's scores and the composite's clean flags (a wrapped model gets its own pass)
        scores = usefulness_scores(target.model, x, y, batch_size=bs, device=device, progress=progress,
                                   desc=f"{target.name}: clean {split} and gate")
        correct = scores["mixed_right"]
    elif clean_correct is not None:
        correct = clean_correct
    else:
        correct = correct_mask(target.model, x, y, device=device, batch_size=bs, progress=progress,
                               desc=f"{target.name}: clean {split}")
    clean_full = float(correct.float().mean())
    rep, kept = evaluate_in_chunks(
        target.model, x[idx], y[idx], attacks, eps=cfg.threat.eps, norm=cfg.threat.norm, chunk_size=chunk_size or bs,
        device=device, batch_size=bs, dataset=cfg.data.name, split=split, indices=idx, model_info=target.info,
        cache_dir=cache_dir, keep_adversarials=keep_adversarials, progress=progress, label=target.name)
    alpha = None
    if adaptive and alpha_png is not None:  # every rank takes its share of the separation batches; rank 0 reports
        sep_idx = idx[: cfg.evaluate.separation_n]  # None: every attacked point
        alpha = alpha_report(plain or target.model, x[sep_idx], y[sep_idx], alpha_png, cfg=cfg, device=device,
                             square_queries=square_queries, fab_targets=fab_targets, progress=progress,
                             cache_dir=None if cache_dir is None else Path(cache_dir) / "separation")
    if alpha is not None:
        alpha["usefulness"] = gate_usefulness(plain or target.model, x, y, device=device, batch_size=bs,
                                              png=alpha_png.with_name(f"{alpha_png.stem}-usefulness.png"),
                                              scores=scores)
    return ModelEvaluation(target.name, clean_full, rep, alpha, correct.int().tolist()), kept


def alpha_report(model, x: torch.Tensor, y: torch.Tensor, png: Path, *, cfg: Config, device: str,
                 square_queries: int = 0, fab_targets: int = 0, cache_dir: Path | None = None,
                 progress: bool = False) -> dict | None:
    """Does the gate separate? α(x) on the clean subset and on the final iterates of gate-aware APGD for
    w in {0, 0.5, 1, 2} (every example, whether or not it was broken), with ``square_queries`` also of the
    official Square attack, the AUROCs, and the plot; finished batches are kept in ``cache_dir``. Under
    torchrun every rank calls it and computes its share of the batches; rank 0 gets the report, the others None."""
    sep = gate_separation(model, x, y, eps=cfg.threat.eps, norm=cfg.threat.norm, seed=cfg.evaluate.seed,
                          n_iter=cfg.evaluate.separation_iters, batch_size=cfg.evaluate.batch_size, device=device,
                          square_queries=square_queries, fab_targets=fab_targets, cache_dir=cache_dir,
                          progress=progress, distributed=True)
    if not is_main():
        return None
    shown = {f"w={w:g}, AUROC {sep.auroc[w]:.2f}": sep.alpha_attacked[w] for w in (0.5, 2.0) if w in sep.alpha_attacked}
    if sep.alpha_square is not None:
        shown[f"Square, AUROC {sep.auroc_square:.2f}"] = sep.alpha_square
    if sep.auroc_fab is not None:
        shown[f"FAB-T found ({len(sep.alpha_fab)}), AUROC {sep.auroc_fab:.2f}"] = sep.alpha_fab
    plot_alpha_hist(sep.alpha_clean, shown, png, title=f"α(x), n={len(x)}: clean vs gate-aware APGD final iterates "
                                                       f"({cfg.threat.norm} eps={cfg.threat.eps:g})")
    return {**sep.to_dict(), "clean_mean": float(sep.alpha_clean.mean()), "plot": str(png)}


def gate_usefulness(model, x: torch.Tensor, y: torch.Tensor, *, device: str, batch_size: int,
                    png: Path | None = None, scores: dict | None = None) -> dict:
    """``usefulness_auroc`` over every clean image given, with ``png`` the histograms of α where the standard
    model alone is right and elsewhere; or why it could not be measured (no input where the standard model
    alone is right, or no other). ``scores``: :func:`usefulness_scores` of these images, when already computed."""
    if scores is None:
        scores = usefulness_scores(model, x, y, batch_size=batch_size, device=device)
    try:
        result = usefulness_auroc(model, x, y, scores=scores)
    except ValueError as exc:
        return {"n": len(y), "auroc_alpha": None, "skipped": str(exc)}
    if png is not None:
        alone = scores["standard_right"] & ~scores["robust_right"]
        plot_alpha_hist(scores["alpha"][~alone], {f"standard model alone right, usefulness AUROC "
                                                  f"{result['auroc_alpha']:.2f}": scores["alpha"][alone]}, png,
                        clean_label="every other clean input",
                        title=f"α(x) on {len(y)} clean images, by where a low α helps")
        result["plot"] = str(png)
    return result


def evaluate(cfg: Config, targets: list[EvaluationTarget], out: Path, *, standard: nn.Module | None = None,
             robust: nn.Module | None = None, n: int | None = None, split: str = "test",
             autoattack: str | None = None, chunk_size: int | None = None, device: str = "cpu", bf16: bool = False,
             compile: bool = False, channels_last: bool = False, separation_square_queries: int | None = None,
             separation_fab_targets: int = 0) -> EvaluateResult:
    """Evaluate every target on ``n`` seeded points of ``split`` (default ``cfg.evaluate.n``), writing
    ``out/<name>.json`` as each finishes (rank 0); finished chunks are cached in ``out/.chunks-<name>``. An
    adaptive model's gate is also scored on the official Square attack's final iterates
    (``separation_square_queries`` queries, default ``evaluate.separation_square_queries``; 0 skips it) and, with
    ``separation_fab_targets``, on what FAB-T finds."""
    if separation_square_queries is None:
        separation_square_queries = cfg.evaluate.separation_square_queries
    if separation_square_queries < 0 or separation_fab_targets < 0:
        raise ValueError(f"--separation-square-queries and --separation-fab-targets must be >= 0, got "
                         f"{separation_square_queries}, {separation_fab_targets}")
    _, world, device = init_distributed(device)
    ev = cfg.evaluate
    x, y, idx, _, _ = load_subset(cfg, split, n if n is not None else ev.n, ev.seed)
    result = EvaluateResult(cfg.data.name, split, len(y), len(idx), cfg.threat.eps, cfg.threat.norm, world, out)
    for target in targets:
        plain = target.model  # α(x) and other named methods live on the unwrapped model
        if bf16 or compile or channels_last:
            target = EvaluationTarget(target.name, fast_inference(target.model, compile=compile, bf16=bf16,
                                                                  channels_last=channels_last, device=device),
                                      target.kind, {**target.info, "inference": {
                                          "bf16_autocast": bf16, "torch_compile": compile,
                                          "channels_last": channels_last}})
        attacks = attack_plan(target.kind, standard=standard, robust=robust, pgd_steps=ev.pgd_steps,
                              pgd_step_size=ev.pgd_step_size, pgd_restarts=ev.pgd_restarts, autoattack=autoattack,
                              surrogate=has_logit_maps(plain), seed=ev.seed)
        evaluation, _ = evaluate_target(target, attacks, x, y, idx, cfg=cfg, split=split, device=device,
                                        chunk_size=chunk_size, cache_dir=out / f".chunks-{target.name}",
                                        alpha_png=out / f"{target.name}-alpha.png", plain=plain, progress=is_main(),
                                        square_queries=separation_square_queries,
                                        fab_targets=separation_fab_targets)
        if is_main():
            write_json(out / f"{target.name}.json", evaluation.to_dict(len(y)))
        result.models.append(evaluation)
    return result
