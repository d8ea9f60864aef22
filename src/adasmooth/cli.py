"""`adasmooth <command>`: a thin command-line layer over the library. Output to the terminal lives here."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from .config import Config, ConfigError, load_config, resolve_config_path
from .pretrained import pretrained_dir

logger = logging.getLogger("adasmooth.cli")


def _load_cfg(path: str | None) -> tuple[Config, str | None]:
    """The config a command runs with: the user's file, a packaged config by name, or (None) the packaged
    embedded default."""
    resolved = resolve_config_path(path)
    return load_config(resolved), str(path if path is not None else f"{resolved.name} (packaged)")


def cmd_train_base(args) -> int:
    from .training import train_base
    from .training.base import checkpoint_name

    cfg, source = _load_cfg(args.config)
    if args.data_root:
        cfg = _with_data_root(cfg, args.data_root)
    if args.beta is not None:
        if args.kind != "trades":
            raise ValueError(f"--beta applies to --kind trades only, not {args.kind!r}")
        if not args.beta > 0:
            raise ValueError(f"--beta (TRADES' KL weight) must be > 0, got {args.beta}")
        cfg = dataclasses.replace(cfg, train_trades=dataclasses.replace(cfg.train_trades, trades_beta=args.beta))
    out = Path(args.out)
    _, meta = train_base(cfg, args.kind, out, resume=args.resume, device=args.device, config_source=source,
                         max_epochs=args.max_epochs, sigma=args.sigma)
    if "accuracies" in meta:
        print(f"saved {out / checkpoint_name(args.kind, args.sigma)}.safetensors (+ .json), trained in {meta['train_seconds']:.0f} s")
        for k, v in meta["accuracies"].items():
            print(f"  {k:>24s}: {100 * v:6.2f}%")
    else:
        print(f"stopped after {meta['epochs_done']} epochs; continue with --resume")
    return 0


def _timestamped(base: str | None, prefix: str) -> Path:
    import datetime

    if base:
        return Path(base)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("results") / f"{prefix}-{stamp}" if prefix else Path("results") / stamp


def _pair(args, device, cfg: Config | None = None):
    """--standard / --robust checkpoints when given, else the config's ``bases``, else the shipped pair."""
    from .io import load_model

    std = rob = None
    if getattr(args, "standard", None):
        std, _ = load_model(args.standard, map_location=device)
    if getattr(args, "robust", None):
        rob, _ = load_model(args.robust, map_location=device)
    if std is None or rob is None:
        from .bases import load_bases

        cfg_std, cfg_rob = load_bases(cfg or Config(), device=device)
        std = std or cfg_std
        rob = rob or cfg_rob
    return std, rob


def _nonlinear_section(args, cfg):
    """The config's nonlinear section; for the shipped pair (no --standard/--robust, no ``bases``) an
    uncalibrated one takes the shipped calibration (pretrained/<dataset>/nonlinear.json)."""
    from .config import BasesConfig

    if getattr(args, "standard", None) or getattr(args, "robust", None) or cfg.bases != BasesConfig():
        return cfg.nonlinear
    from .pretrained import PRETRAINED_NAMES, with_shipped_nonlinear

    return with_shipped_nonlinear(cfg.nonlinear, cfg.data.name) if cfg.data.name in PRETRAINED_NAMES else cfg.nonlinear


def _evaluation_targets(args, cfg):
    """(name, model, plan kind, model info) for each model that ``evaluate`` was asked to attack."""
    from .io import load_model

    if args.mixer or args.alpha is not None or args.nonlinear:
        if args.checkpoint:
            raise ValueError("--checkpoint evaluates base models; it does not go with --mixer, --alpha or --nonlinear")
        std, rob = _pair(args, args.device, cfg)
        if args.nonlinear:
            from .mixing import nonlinear_mixture

            model = nonlinear_mixture(std, rob, _nonlinear_section(args, cfg), alpha=args.alpha).eval()
            return [("nonlinear", model, "mixed", model.describe())], std, rob
        if args.mixer:
            from .mixer import load_adaptive

            model = load_adaptive(args.mixer, std, rob).to(args.device)
            return [(Path(args.mixer).name, model, "adaptive", {"mixer": str(args.mixer), **model.describe()})], std, rob
        from .mixing import MixedClassifier

        model = MixedClassifier(std, rob, alpha=args.alpha, standard_scale=args.standard_scale,
                                robust_scale=args.robust_scale).eval()
        return [(f"mixed-alpha{args.alpha:g}", model, "mixed", model.describe())], std, rob
    targets = []
    for ckpt in args.checkpoint or [str(pretrained_dir() / "fashion-mnist" / "standard"),
                                        str(pretrained_dir() / "fashion-mnist" / "adversarial")]:
        model, meta = load_model(ckpt, map_location=args.device)
        targets.append((Path(ckpt).name, model, "base",
                        {"checkpoint": str(ckpt), "architecture": meta.get("architecture"),
                         "arch_args": meta.get("arch_args"), "kind": meta.get("kind")}))
    return targets, None, None


def cmd_evaluate(args) -> int:
    import torch

    from . import data as data_mod
    from .distributed import init_distributed, is_main
    from .evaluation import accuracy
    from .evaluation.plans import attack_plan
    from .evaluation.sharded import evaluate_in_chunks
    from .evaluation.surrogate import has_logit_maps
    from .io import write_json

    _, world, device = init_distributed(args.device)
    args.device = device
    cfg, _ = _load_cfg(args.config)
    ev = cfg.evaluate
    n = args.n if args.n is not None else ev.n
    x, y = data_mod.load(cfg.data.name, args.split, root=args.data_root or cfg.data.root)
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(ev.seed))[: min(n, len(y))]
    out = _timestamped(args.out, "evaluate")
    targets, std, rob = _evaluation_targets(args, cfg)
    rows = []
    for name, model, kind, info in targets:
        plain = model  # α(x) and other named methods live on the unwrapped model
        if args.bf16 or args.compile or args.channels_last:
            from .speed import fast_inference

            info = {**info, "inference": {"bf16_autocast": args.bf16, "torch_compile": args.compile,
                                          "channels_last": args.channels_last}}
            model = fast_inference(model, compile=args.compile, bf16=args.bf16, channels_last=args.channels_last,
                                   device=device)
        attacks = attack_plan(kind, standard=std, robust=rob, pgd_steps=ev.pgd_steps, pgd_step_size=ev.pgd_step_size,
                              pgd_restarts=ev.pgd_restarts, autoattack=args.autoattack,
                              surrogate=has_logit_maps(plain), seed=ev.seed)
        clean_full = accuracy(model, x, y, device=device, batch_size=ev.batch_size, progress=is_main())
        rep, kept = evaluate_in_chunks(
            model, x[idx], y[idx], attacks, eps=cfg.threat.eps, norm=cfg.threat.norm, chunk_size=args.chunk_size or ev.batch_size,
            device=device, batch_size=ev.batch_size, dataset=cfg.data.name, split=args.split, indices=idx,
            model_info=info, cache_dir=out / f".chunks-{name}", keep_adversarials=kind == "adaptive",
            progress=is_main())
        result = {**rep.to_dict(), "clean_accuracy_full_split": clean_full, "n_full_split": len(y)}
        if kind == "adaptive" and is_main():
            result["alpha"] = _alpha_report(plain, x[idx], kept, rep, out / f"{name}-alpha.png", cfg, device,
                                            ev.batch_size)
        if is_main():
            write_json(out / f"{name}.json", result)
        rows.append((name, clean_full, rep))
    if not is_main():
        return 0
    print(f"{cfg.data.name} {args.split}: clean on {len(y)} images; robust on {len(idx)} seeded images, "
          f"{cfg.threat.norm} eps={cfg.threat.eps:g}" + (f"; {world} ranks" if world > 1 else ""))
    for name, clean_full, rep in rows:
        print(f"{name}: clean {100 * clean_full:.2f}%, worst case {100 * rep.robust_accuracy:.2f}% "
              f"(clean on the subset {100 * rep.clean_accuracy:.2f}%)")
        for a in rep.attacks:
            print(f"  {a['name']:<28s} {100 * a['accuracy']:6.2f}%  ({a['seconds']:.0f} s)")
    print(f"results in {out}/")
    return 0


def _alpha_report(model, x, kept: dict, rep, png, cfg, device, batch_size) -> dict:
    """α(x) on the clean subset and on the examples of the attack that broke the most (plot + quantiles)."""
    import torch

    from .plots import plot_alpha_hist

    def alphas(images):
        with torch.no_grad():
            return torch.cat([model.alpha(images[i:i + batch_size].to(device)).cpu()
                              for i in range(0, len(images), batch_size)])

    strongest = min(rep.attacks, key=lambda a: a["accuracy"])["name"]
    a_clean, a_adv = alphas(x), alphas(kept[strongest])
    plot_alpha_hist(a_clean, a_adv, png, title=f"α(x), n={len(x)}: clean vs {strongest} "
                                                f"({cfg.threat.norm} eps={cfg.threat.eps:g})")
    q = torch.tensor([0.1, 0.5, 0.9])
    return {"attack": strongest, "clean_mean": float(a_clean.mean()), "attacked_mean": float(a_adv.mean()),
            "clean_quantiles_10_50_90": a_clean.quantile(q).tolist(),
            "attacked_quantiles_10_50_90": a_adv.quantile(q).tolist(), "plot": str(png)}


def cmd_sweep(args) -> int:
    from . import data as data_mod
    from .evaluation.sweep import fast_attacks, sweep
    from .io import write_json
    from .plots import plot_tradeoff

    cfg, _ = _load_cfg(args.config)
    sw = cfg.sweep
    std, rob = _pair(args, args.device, cfg)
    x, y = data_mod.load(cfg.data.name, "val", root=args.data_root or cfg.data.root)
    alphas = tuple(args.alphas) if args.alphas else sw.alphas
    res = sweep(std, rob, x, y, alphas=alphas, eps=cfg.threat.eps, norm=cfg.threat.norm,
                standard_scales=tuple(args.standard_scales or sw.standard_scales),
                robust_scales=tuple(args.robust_scales or sw.robust_scales),
                n_robust=args.n or sw.n_robust, attacks=fast_attacks(sw.attack, steps=sw.attack_steps, seed=sw.seed),
                keep_robust=sw.keep_robust, seed=sw.seed, device=args.device, batch_size=cfg.evaluate.batch_size)
    out = _timestamped(args.out, "sweep")
    write_json(out / "sweep.json", res.to_dict())
    plot_tradeoff(res, out / "tradeoff.png")
    print(f"validation split: clean on {res.settings['n_clean']}, robust on {res.settings['n_robust']} "
          f"({cfg.threat.norm} eps={cfg.threat.eps:g}, {sw.attack} {sw.attack_steps} steps)")
    print(f"{'alpha':>6s} {'s_g':>5s} {'s_h':>5s} {'clean':>8s} {'robust':>8s}")
    for p in res.points:
        mark = "  <- chosen" if p == res.chosen else ""
        print(f"{p.alpha:6.3f} {p.standard_scale:5g} {p.robust_scale:5g} {100 * p.clean_accuracy:7.2f}% "
              f"{100 * p.robust_accuracy:7.2f}%{mark}")
    print(f"results in {out}/")
    return 0


def cmd_compare(args) -> int:
    import json

    from .evaluation.compare import compare_reports
    from .io import write_json
    from .plots import plot_comparison

    named = {}
    for item in args.reports:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).stem, item
        if name in named:
            raise ValueError(f"two reports are named {name!r}; name them NAME=FILE")
        try:
            named[name] = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read the report {path}: {exc}") from None
    res = compare_reports(named, standard=args.standard, robust=args.robust)
    out = _timestamped(args.out, "compare")
    write_json(out / "compare.json", res)
    plot_comparison(res, out / "tradeoff.png")
    print(f"{res['dataset']} {res['split']}, {res['norm']} eps={res['eps']:g}: clean on the whole split, worst-case "
          f"robust on the {res['n_shared']} examples every report shares")
    print(f"{'model':<28s} {'clean':>8s} {'robust':>8s} {'gap closed':>11s} {'kept':>7s} {'vs fixed-α curve':>17s}")
    for m in res["models"]:
        pct = (lambda v: "" if v is None else f"{100 * v:.1f}%")
        above = "" if m["clean_above_fixed_curve"] is None else f"{100 * m['clean_above_fixed_curve']:+.2f} pts"
        print(f"{m['name']:<28s} {100 * m['clean']:7.2f}% {100 * m['robust']:7.2f}% {pct(m['gap_closed']):>11s} "
              f"{pct(m['robust_kept']):>7s} {above:>17s}")
    print(f"results in {out}/")
    return 0


def cmd_margins(args) -> int:
    import torch

    from . import data as data_mod
    from .evaluation import PGDAttack, batched_logits, evaluate_robustness
    from .evaluation.margins import margin_groups, margin_summary
    from .io import write_json
    from .plots import plot_margins

    cfg, _ = _load_cfg(args.config)
    _, rob = _pair(args, args.device, cfg)
    x, y = data_mod.load(cfg.data.name, args.split, root=args.data_root or cfg.data.root)
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(cfg.evaluate.seed))[: min(args.n, len(y))]
    xs, ys = x[idx], y[idx]
    kept = {}
    attack = PGDAttack(steps=cfg.evaluate.pgd_steps, step_size=cfg.evaluate.pgd_step_size, seed=cfg.evaluate.seed)
    evaluate_robustness(rob, xs, ys, [attack], eps=cfg.threat.eps, norm=cfg.threat.norm, device=args.device,
                        sanity_checks=False, on_outcome=lambda n, o: kept.__setitem__(n, o.x_adv))
    groups = margin_groups(batched_logits(rob, xs, device=args.device), batched_logits(rob, kept[attack.name], device=args.device), ys)
    summary = margin_summary(groups, alpha=args.alpha)
    summary["setup"] = {"split": args.split, "n": len(ys), "attack": attack.settings(), "eps": cfg.threat.eps,
                        "norm": cfg.threat.norm}
    out = _timestamped(args.out, "margins")
    write_json(out / "margins.json", summary)
    plot_margins(groups, out / "margins.png", alpha=args.alpha,
                 title=f"robust model's margins ({args.split}, n={len(ys)}, PGD-{attack.steps} eps={cfg.threat.eps:g})")
    for g in ("clean_correct", "clean_wrong", "attacked_correct", "attacked_wrong"):
        s = summary[g]
        extra = f", {100 * s['share_above_threshold']:.1f}% above (1-a)/a" if "share_above_threshold" in s else ""
        print(f"{g:<17s} n={s['count']:5d}  median margin {s.get('median', float('nan')):.3f}{extra}")
    print(f"results in {out}/")
    return 0


def cmd_demo(args) -> int:
    from .demo import format_table, run_demo
    from .distributed import init_distributed, is_main

    _, _, args.device = init_distributed(args.device)
    cfg, _ = _load_cfg(args.config)
    if args.data_root:
        cfg = _with_data_root(cfg, args.data_root)
    out = _timestamped(args.out, "")
    results = run_demo(cfg, out, n=args.n, n_sweep=args.n_sweep, device=args.device, progress=is_main())
    if not is_main():
        return 0
    print(format_table(results))
    print(f"results, trade-off and margin plots in {out}/  ({results['seconds']:.0f} s)")
    return 0


def cmd_fit_mixer(args) -> int:
    import torch

    from . import data as data_mod
    from .distributed import init_distributed, is_main
    from .mixer import AdaptiveMixedClassifier, MixingNetwork
    from .training import fit_mixer

    _, _, args.device = init_distributed(args.device)
    cfg, source = _load_cfg(args.config)
    mc = cfg.mixer
    std, rob = _pair(args, args.device, cfg)
    x, y = data_mod.load(cfg.data.name, "train", root=args.data_root or cfg.data.root)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(mc.seed)
        gate = MixingNetwork.from_models(std, rob, standard_layers=mc.standard_layers, robust_layers=mc.robust_layers,
                                         input_shape=tuple(x.shape[1:]), width=mc.width, blocks=mc.blocks).to(args.device)
    model = AdaptiveMixedClassifier(std, rob, gate, standard_layers=mc.standard_layers, robust_layers=mc.robust_layers,
                                    gamma_scale=mc.gamma_scale, gamma_bias=mc.gamma_bias,
                                    standard_scale=mc.standard_scale, robust_scale=mc.robust_scale)
    out = Path(args.out)
    summary = fit_mixer(model, x, y, mc, out, eps=cfg.threat.eps, resume=args.resume, device=args.device,
                        max_steps=args.max_steps, progress=is_main())
    if not is_main():
        return 0  # rank 0 reports, calibrates and saves
    if summary["steps"] < summary["total_steps"]:
        print(f"stopped at step {summary['steps']}/{summary['total_steps']}; continue with --resume")
        return 0
    print(f"trained {summary['steps']} steps in {summary['seconds']:.0f} s")
    _calibrate_and_save(model, cfg, args, rob, out / "mixer", {"training": summary, "config": source})
    return 0


def _calibrate_and_save(model, cfg, args, rob, stem: Path, metadata: dict) -> None:
    """Calibrate the gate's γ bias and α range on validation points (never test), save the mixer."""
    import torch

    from . import data as data_mod
    from .evaluation.calibrate import calibrate_gate, robust_reference
    from .io import write_json
    from .mixer import save_adaptive

    if cfg.mixer.alpha_range:  # the config fixes them (e.g. the paper's released values): no calibration
        model.alpha_range = tuple(cfg.mixer.alpha_range)
        model.gamma_bias = float(cfg.mixer.eval_gamma_bias)
        save_adaptive(stem, model, calibration={"source": "config", "alpha_range": list(model.alpha_range),
                                                "gamma_bias": model.gamma_bias}, dataset=cfg.data.name, **metadata)
        print(f"saved {stem}.safetensors (+ .json) with the config's alpha range {list(model.alpha_range)} and "
              f"gamma bias {model.gamma_bias:g} (not calibrated)")
        return
    seed = cfg.mixer.seed
    xv, yv = data_mod.load(cfg.data.name, "val", root=args.data_root or cfg.data.root)
    idx = torch.randperm(len(yv), generator=torch.Generator().manual_seed(seed))[: args.n_calibrate]
    ref = robust_reference(rob, xv[idx], yv[idx], eps=cfg.threat.eps, device=args.device, seed=seed,
                           n_iter=args.verify_iters)
    cal = calibrate_gate(model, xv[idx], yv[idx], eps=cfg.threat.eps, robust_reference=ref,
                         keep_robust=cfg.sweep.keep_robust, device=args.device, seed=seed,
                         verify_iters=args.verify_iters)
    save_adaptive(stem, model, calibration=cal, dataset=cfg.data.name, **metadata)
    write_json(stem.parent / "calibration.json", cal)
    ch = cal["chosen"]
    print(f"saved {stem}.safetensors (+ .json)")
    print(f"calibrated on {cal['n']} validation points: gamma_bias={ch['gamma_bias']:g}, alpha range "
          f"[{ch['alpha_lo']:g}, {ch['alpha_hi']:g}]: clean {100 * ch['clean']:.2f}%, robust "
          f"{100 * cal['robust_verified']:.2f}% under gate-aware APGD-CE/APGD-T "
          f"(robust model alone, APGD-CE/APGD-T: {100 * ref:.2f}%; target {100 * cfg.sweep.keep_robust:g}% of it"
          f"{'' if cal['target_met'] else ', NOT met'})")


def cmd_calibrate_mixer(args) -> int:
    from .io import load_tensors
    from .mixer import load_adaptive

    cfg, _ = _load_cfg(args.config)
    std, rob = _pair(args, args.device, cfg)
    model = load_adaptive(args.mixer, std, rob).to(args.device)
    _, meta = load_tensors(args.mixer)
    out = Path(args.out) if args.out else Path(args.mixer)
    if args.nonlinear:  # adaptive + nonlinear: the calibrated MixedNUTS map on the robust side, its own scale
        from .mixing import nonlinear_mixture

        model.robust_map = nonlinear_mixture(std, rob, _nonlinear_section(args, cfg)).robust_map
        model.robust_scale = 1.0
    _calibrate_and_save(model, cfg, args, rob, out, {"training": meta.get("training"), "config": meta.get("config")})
    return 0


def cmd_calibrate(args) -> int:
    import dataclasses

    import torch
    import yaml

    from . import data as data_mod
    from .evaluation import batched_logits
    from .evaluation.autoattack import run_autoattack
    from .evaluation.calibrate_map import calibrate_logit_map, minimum_margin_inputs
    from .io import write_json
    from .plots import plot_map_objective

    cfg, _ = _load_cfg(args.config)
    nc = cfg.nonlinear
    _, rob = _pair(args, args.device, cfg)
    x, y = data_mod.load(cfg.data.name, "val", root=args.data_root or cfg.data.root)
    n = args.n or nc.n_calibrate
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(nc.seed))[: min(n, len(y))]
    xs, ys = x[idx], y[idx]
    bs = cfg.evaluate.batch_size
    h_clean = batched_logits(rob, xs, batch_size=bs, device=args.device, progress=True, desc="robust logits")
    res = run_autoattack(rob, xs, ys, eps=cfg.threat.eps, norm=cfg.threat.norm, version="custom",
                         attacks=["apgd-ce", "apgd-t"], seed=nc.seed, batch_size=bs, device=args.device,
                         options={"apgd.n_iter": nc.attack_iters, "apgd_targeted.n_iter": nc.attack_iters,
                                  "apgd_targeted.n_target_classes": 3})
    # per example the lowest-margin input found (AutoAttack hands back the clean image where it fails)
    x_low = minimum_margin_inputs(rob, xs, ys, eps=cfg.threat.eps, norm=cfg.threat.norm, n_iter=nc.attack_iters,
                                  seed=nc.seed, batch_size=bs, device=args.device, candidates=(res.x_adv,))
    h_adv = batched_logits(rob, x_low, batch_size=bs, device=args.device)
    attacked_correct = (h_adv.argmax(1) == ys) & (h_clean.argmax(1) == ys)
    clean_wrong = h_clean.argmax(1) != ys
    cal = calibrate_logit_map(h_adv[attacked_correct], h_clean[clean_wrong], beta=nc.beta, k=nc.k)
    out = _timestamped(args.out, "calibrate")
    chosen = {"scale": cal.scale, "shift": cal.shift, "power": cal.power}
    plot_map_objective(cal.grid, out / "objective.png", chosen=chosen,
                       title=f"{cfg.data.name} val n={len(ys)}, beta={nc.beta:g}: objective, best scale per cell")
    write_json(out / "calibration.json", {
        **cal.to_dict(), "split": "val", "n": len(ys), "indices_seed": nc.seed,
        "attack": {"name": "apgd-ce + apgd-t3 (official), then per example the lowest margin of those and of "
                           "apgd-ce / apgd-dlr highest-loss iterates (best_loss=True)",
                   "n_iter": nc.attack_iters, "eps": cfg.threat.eps, "norm": cfg.threat.norm,
                   "robust_accuracy_autoattack": res.robust_accuracy,
                   "robust_accuracy": float(attacked_correct.float().mean())}})
    print(f"validation: {len(ys)} points; robust model {int(clean_wrong.sum())} clean-wrong, "
          f"{int(attacked_correct.sum())} correct after APGD-CE/APGD-T ({cfg.threat.norm} eps={cfg.threat.eps:g})")
    print(f"chosen map: scale={cal.scale:g} shift={cal.shift:g} power={cal.power:g} (k={cal.k}); alpha={cal.alpha:.4f} "
          f"keeps {100 * nc.beta:g}% of attacked-correct margins above {cal.threshold:.4f}; "
          f"{100 * cal.objective:.1f}% of clean-wrong inputs stay above it")
    if args.write_config:
        new = dataclasses.replace(cfg, nonlinear=dataclasses.replace(nc, scale=cal.scale, shift=cal.shift,
                                                                     power=cal.power, alpha=cal.alpha))
        Path(args.write_config).write_text(yaml.safe_dump(_plain(new.to_dict()), sort_keys=False))
        print(f"wrote {args.write_config}")
    print(f"results in {out}/")
    return 0


def cmd_certify(args) -> int:
    import torch

    from . import data as data_mod
    from .certify.experiment import certification_report
    from .distributed import init_distributed, is_main
    from .io import load_model, write_json
    from .plots import plot_certified_accuracy
    from .speed import fast_inference

    _, _, args.device = init_distributed(args.device)
    cfg, _ = _load_cfg(args.config)
    c = cfg.certify
    if args.standard:
        standard, _ = load_model(args.standard, map_location=args.device)
    else:
        from .pretrained import load_pretrained

        standard = load_pretrained(cfg.data.name, device=args.device).standard
    robust_by_sigma = {}
    stems = args.robust or [str(pretrained_dir() / cfg.data.name / f"noise-sigma{s:g}") for s in c.sigmas]
    for stem in stems:
        model, meta = load_model(stem, map_location=args.device)
        sigma = args.sigma if args.sigma is not None else meta.get("sigma")
        if sigma is None:
            raise ValueError(f"{stem} does not record its noise level: pass --sigma")
        if meta.get("kind") not in (None, "noise"):
            logger.warning("%s was trained as %r, not with Gaussian noise: its smoothed model will be weak",
                           stem, meta.get("kind"))
        robust_by_sigma[float(sigma)] = fast_inference(model, compile=args.compile, bf16=args.bf16, device=args.device)
    x, y = data_mod.load(cfg.data.name, args.split, root=args.data_root or cfg.data.root)
    n_points = args.n_points or c.n_points
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(c.seed))[: min(n_points, len(y))]
    alphas = args.alphas or list(c.alphas)
    out = _timestamped(args.out, "certify")
    report = certification_report(standard, robust_by_sigma, x[idx], y[idx], num_classes=data_mod.num_classes(cfg.data.name),
                                  alphas=alphas, radii=c.radii, n0=args.n0 or c.n0, n=args.n or c.n, delta=c.delta,
                                  batch_size=c.batch_size, seed=c.seed, device=args.device, progress=is_main(),
                                  cache_dir=out / ".votes", chunk_points=args.chunk_points)
    if not is_main():
        return 0
    report.update({"dataset": cfg.data.name, "split": args.split, "indices_seed": c.seed, "robust": stems,
                   "robust_inference": {"torch_compile": args.compile, "bf16_autocast": args.bf16},
                   "standard": args.standard or str(pretrained_dir() / cfg.data.name / "standard")})
    write_json(out / "certify.json", report)
    panels = [{"sigma": s["sigma"], "curves": s["certified_accuracy"], "clean": s["clean_accuracy"]}
              for s in report["sigmas"]]
    plot_certified_accuracy(panels, c.radii, out / "certified.png",
                            title=f"{cfg.data.name} {args.split}, {len(idx)} points, n={report['n']}, "
                                  f"delta={c.delta:g}: smoothed robust model and its mixtures with the standard model")
    print(f"{cfg.data.name} {args.split}: {len(idx)} seeded points; n0={report['n0']}, n={report['n']}, "
          f"delta={c.delta:g}; certified accuracy (%) at l2 radius")
    for s in report["sigmas"]:
        print(f"sigma={s['sigma']:g} ({s['seconds']:.0f} s, {s['noise_samples_per_second']:.0f} noisy images/s)")
        print(f"  {'model':<12s} {'clean':>6s} " + " ".join(f"{r:>6g}" for r in c.radii))
        for name, curve in s["certified_accuracy"].items():
            print(f"  {name:<12s} {100 * s['clean_accuracy'][name]:6.2f} " + " ".join(f"{100 * v:6.2f}" for v in curve))
        g = s["goal_check"]
        if "mixtures" in g:
            hits = [k for k, v in g["mixtures"].items() if v["meets_goal"]]
            print(f"  goal (clean +{100 * report['goal']['clean_gain']:g} pts, keep {100 * report['goal']['keep']:g}% at "
                  f"r={report['goal']['radius']:g}): {'met by ' + ', '.join(hits) if hits else 'not met'}")
    print(f"results in {out}/")
    return 0


def cmd_export(args) -> int:
    import json

    from .bundle import robustbench_model_info, save_bundle
    from .io import load_tensors, write_json

    cfg, _ = _load_cfg(args.config)
    std, rob = _pair(args, args.device, cfg)
    archs = {}
    for role, given in (("standard", args.standard), ("robust", args.robust)):
        spec = getattr(cfg.bases, role)
        if given:
            meta = load_tensors(given)[1]
            archs[role] = {"architecture": meta["architecture"], "arch_args": meta.get("arch_args", {})}
        elif spec.architecture is not None:
            archs[role] = {"architecture": spec.architecture, "arch_args": spec.args}
        else:

            meta = load_tensors(pretrained_dir() / cfg.data.name / ("standard" if role == "standard" else "adversarial"))[1]
            archs[role] = {"architecture": meta["architecture"], "arch_args": meta.get("arch_args", {})}
    if args.mixer:
        from .mixer import load_adaptive

        model = load_adaptive(args.mixer, std, rob)
    elif args.alpha is not None:
        from .mixing import MixedClassifier

        model = MixedClassifier(std, rob, alpha=args.alpha, standard_scale=args.standard_scale,
                                robust_scale=args.robust_scale).eval()
    else:
        raise ValueError("export needs --mixer STEM or --alpha A")
    out = Path(args.out)
    save_bundle(out / "model", model, standard_arch=archs["standard"], robust_arch=archs["robust"],
                dataset=cfg.data.name, threat={"norm": cfg.threat.norm, "eps": cfg.threat.eps})
    print(f"wrote {out / 'model'}.safetensors (+ .json); restore with adasmooth.load('{out / 'model'}')")
    if args.results:
        results = json.loads(Path(args.results).read_text())
        info = robustbench_model_info(results, name=args.name, architecture=args.architecture or
                                      f"{archs['standard']['architecture']} + {archs['robust']['architecture']}",
                                      dataset=cfg.data.name)
        write_json(out / "model_info.json", info)
        print(f"wrote {out / 'model_info.json'}: clean {100 * info['clean_acc']:.2f}%, AutoAttack (worst case) "
              f"{100 * info['autoattack_acc']:.2f}%")
    return 0


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _with_data_root(cfg: Config, root: str) -> Config:
    import dataclasses

    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=root))


CONFIG_HELP = "YAML config file, or a packaged one by name (fmnist, cifar10, cifar100); default: fmnist"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adasmooth", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train-base", help="train a standard, PGD-adversarial, TRADES or Gaussian-noise base model")
    t.add_argument("--config", default=None, help=CONFIG_HELP)
    t.add_argument("--kind", choices=("standard", "adversarial", "trades", "noise"), required=True)
    t.add_argument("--beta", type=float, default=None, help="TRADES' KL weight (default: train_trades.trades_beta)")
    t.add_argument("--sigma", type=float, default=None,
                   help="noise level of --kind noise (on the [0, 1] scale), e.g. 0.25 or 0.5")
    t.add_argument("--out", default="runs/base", help="folder for checkpoints (default: runs/base)")
    t.add_argument("--resume", action="store_true", help="continue from <out>/<kind>-last")
    t.add_argument("--device", default="cpu")
    t.add_argument("--data-root", default=None)
    t.add_argument("--max-epochs", type=int, default=None, help="stop after this many epochs (resume later)")
    t.set_defaults(func=cmd_train_base)

    c = sub.add_parser("certify", help="certified l2 accuracy of smoothed robust bases and their mixtures")
    c.add_argument("--config", default=None, help=CONFIG_HELP)
    c.add_argument("--robust", action="append",
                   help="noise-trained checkpoint stem (repeatable); default: the shipped noise-sigma<S> models")
    c.add_argument("--sigma", type=float, default=None, help="noise level, when the checkpoint does not record it")
    c.add_argument("--standard", default=None, help="standard model checkpoint (default: shipped)")
    c.add_argument("--alphas", type=float, nargs="+", default=None, help="mixture weights (>= 0.5) to certify")
    c.add_argument("--n-points", type=int, default=None, help="test points (default: certify.n_points)")
    c.add_argument("--n0", type=int, default=None, help="selection samples per point")
    c.add_argument("--n", "--n-samples", dest="n", type=int, default=None,
                   help="estimation samples per point (under torchrun write --n-samples)")
    c.add_argument("--chunk-points", type=int, default=20,
                   help="points per chunk: the unit of caching (<out>/.votes) and of sharding over torchrun ranks")
    c.add_argument("--split", choices=("train", "val", "test"), default="test")
    c.add_argument("--compile", action="store_true", help="torch.compile the smoothed networks (same function, ~2x on CPU)")
    c.add_argument("--bf16", action="store_true",
                   help="run the smoothed networks under bfloat16 autocast (certifies the bf16 network)")
    c.add_argument("--out", default=None, help="results folder (default: results/certify-<time>)")
    c.add_argument("--device", default="cpu")
    c.add_argument("--data-root", default=None)
    c.set_defaults(func=cmd_certify)

    x = sub.add_parser("export", help="bundle a mixed or adaptive classifier whole (+ RobustBench model info)")
    x.add_argument("--config", default=None, help=CONFIG_HELP)
    x.add_argument("--mixer", default=None, help="adaptive mixer stem")
    x.add_argument("--alpha", type=float, default=None, help="fixed-alpha mixture instead of a mixer")
    x.add_argument("--standard-scale", type=float, default=1.0)
    x.add_argument("--robust-scale", type=float, default=1.0)
    x.add_argument("--standard", default=None, help="standard model checkpoint (default: config bases or shipped)")
    x.add_argument("--robust", default=None, help="robust model checkpoint (default: config bases or shipped)")
    x.add_argument("--results", default=None, help="an `adasmooth evaluate` JSON with AutoAttack, for model_info.json")
    x.add_argument("--name", default="adasmooth composite", help="model name in model_info.json")
    x.add_argument("--architecture", default=None, help="architecture text in model_info.json")
    x.add_argument("--out", required=True, help="folder for model.safetensors, model.json, model_info.json")
    x.add_argument("--device", default="cpu")
    x.set_defaults(func=cmd_export)

    e = sub.add_parser("evaluate", help="clean accuracy and PGD (optionally AutoAttack) robust accuracy of checkpoints")
    e.add_argument("--config", default=None, help=CONFIG_HELP)
    e.add_argument("--checkpoint", action="append", help="checkpoint stem (repeatable); default: both shipped models")
    e.add_argument("--n", "--n-examples", dest="n", type=int, default=None,
                   help="points attacked (default: evaluate.n in the config); under torchrun write --n-examples, "
                        "since torchrun's own parser mistakes --n for one of its options")
    e.add_argument("--split", default="test", choices=("train", "val", "test"))
    e.add_argument("--autoattack", choices=("standard", "plus", "rand"), default=None, help="add AutoAttack")
    e.add_argument("--mixer", default=None, help="evaluate this adaptive mixer (stem) on the standard/robust pair")
    e.add_argument("--alpha", type=float, default=None, help="evaluate the fixed-alpha mixture of the pair")
    e.add_argument("--nonlinear", action="store_true",
                   help="evaluate the MixedNUTS-style mixture of the config's nonlinear section (adasmooth calibrate)")
    e.add_argument("--standard-scale", type=float, default=1.0, help="s_g of the fixed-alpha mixture")
    e.add_argument("--robust-scale", type=float, default=1.0, help="s_h of the fixed-alpha mixture")
    e.add_argument("--standard", default=None, help="standard model checkpoint for --mixer/--alpha (default: shipped)")
    e.add_argument("--robust", default=None, help="robust model checkpoint for --mixer/--alpha (default: shipped)")
    e.add_argument("--bf16", action="store_true", help="bfloat16 autocast (off for reported numbers unless you ask)")
    e.add_argument("--compile", action="store_true", help="torch.compile the evaluated model")
    e.add_argument("--channels-last", action="store_true", help="channels-last memory format (GPUs)")
    e.add_argument("--chunk-size", type=int, default=None,
                   help="examples per independent chunk (default: evaluate.batch_size); finished chunks are kept "
                        "in <out>/.chunks-<model> so a rerun resumes, and torchrun ranks share the chunks")
    e.add_argument("--out", default=None, help="results folder (default: results/evaluate-<time>)")
    e.add_argument("--device", default="cpu")
    e.add_argument("--data-root", default=None)
    e.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("sweep", help="trade-off sweep over alpha (and logit scales) on the validation split")
    s.add_argument("--config", default=None, help=CONFIG_HELP)
    s.add_argument("--alphas", type=float, nargs="+", default=None)
    s.add_argument("--standard-scales", type=float, nargs="+", default=None)
    s.add_argument("--robust-scales", type=float, nargs="+", default=None)
    s.add_argument("--n", type=int, default=None, help="validation points attacked per grid point")
    s.add_argument("--standard", default=None, help="standard model checkpoint (default: shipped)")
    s.add_argument("--robust", default=None, help="robust model checkpoint (default: shipped)")
    s.add_argument("--out", default=None)
    s.add_argument("--device", default="cpu")
    s.add_argument("--data-root", default=None)
    s.set_defaults(func=cmd_sweep)

    k = sub.add_parser("compare", help="compare evaluate reports on their shared examples: fixed-alpha curve, "
                                       "other mixtures, figures of merit, plot")
    k.add_argument("reports", nargs="+", help="evaluate JSONs, each FILE or NAME=FILE")
    k.add_argument("--standard", default=None, help="name of the standard model's report (alpha = 0)")
    k.add_argument("--robust", default=None, help="name of the robust model's report (alpha = 1)")
    k.add_argument("--out", default=None, help="results folder (default: results/compare-<time>)")
    k.set_defaults(func=cmd_compare)
    m = sub.add_parser("margins", help="histograms of the robust model's probability margin (benign confidence)")
    m.add_argument("--config", default=None, help=CONFIG_HELP)
    m.add_argument("--alpha", type=float, default=None, help="draw the (1-alpha)/alpha threshold")
    m.add_argument("--n", type=int, default=1000)
    m.add_argument("--split", default="val", choices=("train", "val", "test"))
    m.add_argument("--robust", default=None)
    m.add_argument("--out", default=None)
    m.add_argument("--device", default="cpu")
    m.add_argument("--data-root", default=None)
    m.set_defaults(func=cmd_margins)

    d = sub.add_parser("demo", help="the main job: choose alpha on validation, AutoAttack on test, plots")
    d.add_argument("--config", default=None, help="default: the built-in Fashion-MNIST settings")
    d.add_argument("--n", type=int, default=None, help="test points under AutoAttack (default 100)")
    d.add_argument("--n-sweep", type=int, default=None, help="validation points attacked per sweep point")
    d.add_argument("--out", default=None, help="results folder (default: results/<time>)")
    d.add_argument("--device", default="cpu")
    d.add_argument("--data-root", default=None)
    d.set_defaults(func=cmd_demo)

    f = sub.add_parser("fit-mixer", help="train the mixing network (adaptive smoothing) and calibrate it on validation")
    f.add_argument("--config", default=None, help=CONFIG_HELP)
    f.add_argument("--out", default="runs/mixer")
    f.add_argument("--resume", action="store_true", help="continue from <out>/mixer-last")
    f.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps in total")
    f.add_argument("--n-calibrate", type=int, default=500, help="validation points for calibration")
    f.add_argument("--verify-iters", type=int, default=50, help="APGD iterations of the calibration's check")
    f.add_argument("--standard", default=None)
    f.add_argument("--robust", default=None)
    f.add_argument("--device", default="cpu")
    f.add_argument("--data-root", default=None)
    f.set_defaults(func=cmd_fit_mixer)

    n = sub.add_parser("calibrate", help="choose a MixedNUTS map of the robust logits and its alpha on validation")
    n.add_argument("--config", default=None, help=CONFIG_HELP)
    n.add_argument("--n", type=int, default=None, help="validation points (default: nonlinear.n_calibrate)")
    n.add_argument("--out", default=None, help="results folder (default: results/calibrate-<time>)")
    n.add_argument("--write-config", default=None, help="write the config with the chosen parameters to this YAML")
    n.add_argument("--robust", default=None, help="robust model checkpoint (default: shipped)")
    n.add_argument("--device", default="cpu")
    n.add_argument("--data-root", default=None)
    n.set_defaults(func=cmd_calibrate)

    c = sub.add_parser("calibrate-mixer", help="re-choose a trained mixer's gamma bias and alpha range on validation")
    c.add_argument("--config", default=None, help=CONFIG_HELP)
    c.add_argument("--mixer", required=True, help="mixer checkpoint stem (e.g. runs/mixer/mixer)")
    c.add_argument("--out", default=None, help="stem to save the calibrated mixer to (default: overwrite --mixer)")
    c.add_argument("--n-calibrate", type=int, default=500, help="validation points for calibration")
    c.add_argument("--verify-iters", type=int, default=50, help="APGD iterations of the calibration's check")
    c.add_argument("--nonlinear", action="store_true",
                   help="put the config's calibrated MixedNUTS map on the robust side first (adaptive + nonlinear)")
    c.add_argument("--standard", default=None)
    c.add_argument("--robust", default=None)
    c.add_argument("--device", default="cpu")
    c.add_argument("--data-root", default=None)
    c.set_defaults(func=cmd_calibrate_mixer)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from .data import DataError
    from .io import CheckpointError

    try:
        return args.func(args)
    except (ConfigError, DataError, CheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"adasmooth {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; checkpoints written so far are intact (use --resume where offered)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
