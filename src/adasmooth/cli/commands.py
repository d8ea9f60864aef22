"""One function per command: parse → call a workflow → print. No logic that a library user would need."""

from __future__ import annotations

import shlex
from pathlib import Path

from .. import workflows as wf
from ..config import Config, load_config, resolve_config_path
from ..distributed import init_distributed, is_main


def load_cfg(args) -> tuple[Config, str]:
    """The config a command runs with (the user's file, a packaged one by name, or the packaged default),
    with ``--data-root`` applied, and where it came from."""
    resolved = resolve_config_path(args.config)
    source = str(args.config if args.config is not None else f"{resolved.name} (packaged)")
    cfg = wf.with_data_root(load_config(resolved), getattr(args, "data_root", None))
    if getattr(args, "download", False):
        wf.download_data(cfg)
    return cfg, source


def _pair(args, cfg):
    return wf.load_pair(cfg, standard=getattr(args, "standard", None), robust=getattr(args, "robust", None),
                        device=args.device)


def _shipped(args, cfg) -> bool:
    return wf.is_shipped_pair(cfg, standard=getattr(args, "standard", None), robust=getattr(args, "robust", None))


def train_base(args) -> int:
    cfg, source = load_cfg(args)
    print(wf.train(cfg, args.kind, Path(args.out), beta=args.beta, sigma=args.sigma, resume=args.resume,
                   max_epochs=args.max_epochs, device=args.device, config_source=source))
    return 0


def evaluate(args) -> int:
    _, _, args.device = init_distributed(args.device)
    cfg, _ = load_cfg(args)
    targets, std, rob = wf.evaluation_targets(
        cfg, checkpoints=args.checkpoint, mixer=args.mixer, alpha=args.alpha, nonlinear=args.nonlinear,
        standard_scale=args.standard_scale, robust_scale=args.robust_scale, standard=args.standard,
        robust=args.robust, device=args.device)
    res = wf.evaluate(cfg, targets, wf.output_dir(args.out, "evaluate"), standard=std, robust=rob, n=args.n,
                      split=args.split, autoattack=args.autoattack, chunk_size=args.chunk_size, device=args.device,
                      bf16=args.bf16, compile=args.compile, channels_last=args.channels_last,
                      separation_square_queries=args.separation_square_queries,
                      separation_fab_targets=args.separation_fab_targets)
    if is_main():
        print(res.format())
    return 0


def sweep(args) -> int:
    cfg, _ = load_cfg(args)
    std, rob = _pair(args, cfg)
    print(wf.run_sweep(cfg, std, rob, wf.output_dir(args.out, "sweep"), alphas=args.alphas,
                       standard_scales=args.standard_scales, robust_scales=args.robust_scales, n=args.n,
                       device=args.device).format())
    return 0


def compare(args) -> int:
    print(wf.run_compare(wf.read_reports(args.reports), wf.output_dir(args.out, "compare"), standard=args.standard,
                         robust=args.robust, allow_plan_mismatch=args.allow_different_plans,
                         n_bootstrap=args.bootstrap).format())
    return 0


def margins(args) -> int:
    cfg, _ = load_cfg(args)
    _, rob = _pair(args, cfg)
    print(wf.run_margins(cfg, rob, wf.output_dir(args.out, "margins"), n=args.n, split=args.split, alpha=args.alpha,
                         device=args.device).format())
    return 0


def demo(args) -> int:
    _, _, args.device = init_distributed(args.device)
    cfg, _ = load_cfg(args)
    out = wf.output_dir(args.out, "")
    if args.all_rows and args.rows:
        raise SystemExit("error: --all-rows and --rows do not go together")
    rows = wf.ALL_ROWS if args.all_rows else tuple(args.rows.split(",")) if args.rows else wf.DEFAULT_ROWS
    res = wf.run_demo(cfg, out, n=args.n, n_sweep=args.n_sweep, rows=rows, device=args.device, progress=is_main(),
                      fresh_sweep=args.fresh_sweep)
    if is_main():
        print(res.format())
        print(f"results, trade-off and margin plots in {out}/  ({res.seconds:.0f} s)")
    return 0


def fit_mixer(args) -> int:
    _, _, args.device = init_distributed(args.device)
    cfg, source = load_cfg(args)
    std, rob = _pair(args, cfg)
    done = wf.fit_and_calibrate(cfg, std, rob, Path(args.out), resume=args.resume, max_steps=args.max_steps,
                                n_calibrate=args.n_calibrate, verify_iters=args.verify_iters, device=args.device,
                                config_source=source, command=shlex.join(["adasmooth", *args.argv]))
    if is_main():
        print(done)
    return 0


def calibrate_mixer(args) -> int:
    cfg, _ = load_cfg(args)
    std, rob = _pair(args, cfg)
    print(wf.recalibrate(cfg, std, rob, args.mixer, out=args.out, overwrite=args.overwrite, nonlinear=args.nonlinear,
                         shipped_pair=_shipped(args, cfg), n_calibrate=args.n_calibrate,
                         verify_iters=args.verify_iters, device=args.device))
    return 0


def calibrate(args) -> int:
    cfg, _ = load_cfg(args)
    _, rob = _pair(args, cfg)
    out = wf.output_dir(args.out, "calibrate")
    run = wf.calibrate_map(cfg, rob, out, n=args.n, device=args.device)
    print(run.format())
    if args.write_config:
        wf.write_config(run.config_with_map(cfg), args.write_config)
        print(f"wrote {args.write_config}")
    print(f"results in {out}/")
    return 0


def certify(args) -> int:
    _, _, args.device = init_distributed(args.device)
    cfg, _ = load_cfg(args)
    run = wf.run_certify(cfg, wf.output_dir(args.out, "certify"), standard=args.standard, robust=args.robust,
                         sigma=args.sigma, alphas=args.alphas, n_points=args.n_points, n0=args.n0, n=args.n,
                         chunk_points=args.chunk_points, split=args.split, compile=args.compile, bf16=args.bf16,
                         device=args.device)
    if is_main():
        print(run.format())
    return 0


def export(args) -> int:
    cfg, _ = load_cfg(args)
    if not args.mixer and args.alpha is None:
        raise ValueError("export needs --mixer STEM or --alpha A")
    std, rob = _pair(args, cfg)
    model, _ = wf.build_mixture(cfg, std, rob, mixer=args.mixer, alpha=args.alpha, standard_scale=args.standard_scale,
                                robust_scale=args.robust_scale, device=args.device)
    archs = wf.base_architectures(cfg, standard=args.standard, robust=args.robust)
    for line in wf.export_composite(cfg, model, Path(args.out), archs=archs, results=args.results, name=args.name,
                                    architecture=args.architecture):
        print(line)
    return 0


def convert_bit(args) -> int:
    print(wf.convert_bit_checkpoint(args.source, args.out, layout=args.layout).format())
    return 0


def import_mixer(args) -> int:
    cfg, _ = load_cfg(args)
    print(wf.import_released_mixer(cfg, args.source, args.out, settings=args.settings, in_planes=args.in_planes,
                                   standard=args.standard, robust=args.robust, device=args.device).format())
    return 0


def import_map(args) -> int:
    cfg, _ = load_cfg(args)
    print(wf.import_mixednuts_map(cfg, args.write_config, dataset=args.dataset, robust_id=args.robust_id,
                                  source=args.source, beta=args.beta).format())
    return 0


def reproduce(args) -> int:
    if args.list:
        print(wf.list_rows())
        return 0
    if args.row is None:
        raise ValueError("name a row (adasmooth reproduce --list shows them), or pass --list")
    plan = wf.reproduce_plan(args.row, root=args.root, data_root=args.data_root, out=args.out, device=args.device,
                             standard=args.standard, robust=args.robust, train=args.train, n_examples=args.n,
                             base_config=args.config)
    print(plan.format() if args.dry_run else wf.run_reproduce(plan))
    return 0


__all__ = [
    "calibrate",
    "calibrate_mixer",
    "certify",
    "compare",
    "convert_bit",
    "demo",
    "evaluate",
    "export",
    "fit_mixer",
    "import_map",
    "import_mixer",
    "margins",
    "reproduce",
    "sweep",
    "train_base",
]
