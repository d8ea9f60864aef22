"""The command-line grammar: one small function per command, sharing parent parsers for the common flags."""

from __future__ import annotations

import argparse

from . import commands

CONFIG_HELP = "YAML config file, or a packaged one by name (fmnist, cifar10, cifar100); default: fmnist"


def _parents() -> dict[str, argparse.ArgumentParser]:
    run = argparse.ArgumentParser(add_help=False)  # every command that reads a config and data
    run.add_argument("--config", default=None, help=CONFIG_HELP)
    run.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    run.add_argument("--data-root", default=None, help="folder of the data set's files (default: the config's)")
    run.add_argument("--download", action="store_true",
                     help="CIFAR: fetch the data set into --data-root with torchvision if it is missing (never "
                          "done unless asked; needs the torchvision extra)")
    pair = argparse.ArgumentParser(add_help=False)  # commands that work on a (standard, robust) pair
    pair.add_argument("--standard", default=None, help="standard model checkpoint (default: config bases or shipped)")
    pair.add_argument("--robust", default=None, help="robust model checkpoint (default: config bases or shipped)")
    calib = argparse.ArgumentParser(add_help=False)  # commands that calibrate a mixer
    calib.add_argument("--n-calibrate", type=int, default=500, help="validation points for calibration")
    calib.add_argument("--verify-iters", type=int, default=50, help="APGD iterations of the calibration's check")
    scales = argparse.ArgumentParser(add_help=False)  # a fixed-alpha mixture's logit scales
    scales.add_argument("--standard-scale", type=float, default=1.0, help="s_g of the fixed-alpha mixture")
    scales.add_argument("--robust-scale", type=float, default=1.0, help="s_h of the fixed-alpha mixture")
    return {"run": run, "pair": pair, "calib": calib, "scales": scales}


def _train_base(sub, p):
    t = sub.add_parser("train-base", parents=[p["run"]],
                       help="train a standard, PGD-adversarial, TRADES or Gaussian-noise base model")
    t.add_argument("--kind", choices=("standard", "adversarial", "trades", "noise"), required=True)
    t.add_argument("--beta", type=float, default=None, help="TRADES' KL weight (default: train_trades.trades_beta)")
    t.add_argument("--sigma", type=float, default=None,
                   help="noise level of --kind noise (on the [0, 1] scale), e.g. 0.25 or 0.5")
    t.add_argument("--out", default="runs/base", help="folder for checkpoints (default: runs/base)")
    t.add_argument("--resume", action="store_true", help="continue from <out>/<kind>-last")
    t.add_argument("--max-epochs", type=int, default=None, help="stop after this many epochs (resume later)")
    t.set_defaults(func=commands.train_base)


def _certify(sub, p):
    c = sub.add_parser("certify", parents=[p["run"]],
                       help="certified l2 accuracy of smoothed robust bases and their mixtures")
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
                   help="points per chunk: the unit of caching (<out>/.votes) and of splitting over torchrun ranks")
    c.add_argument("--split", choices=("train", "val", "test"), default="test")
    c.add_argument("--compile", action="store_true", help="torch.compile the smoothed networks (same function, ~2x on CPU)")
    c.add_argument("--bf16", action="store_true",
                   help="run the smoothed networks under bfloat16 autocast (certifies the bf16 network)")
    c.add_argument("--out", default=None, help="results folder (default: results/certify-<time>)")
    c.set_defaults(func=commands.certify)


def _export(sub, p):
    x = sub.add_parser("export", parents=[p["run"], p["pair"], p["scales"]],
                       help="bundle a mixed or adaptive classifier whole (+ RobustBench model info)")
    x.add_argument("--mixer", default=None, help="adaptive mixer stem")
    x.add_argument("--alpha", type=float, default=None, help="fixed-alpha mixture instead of a mixer")
    x.add_argument("--results", default=None, help="an `adasmooth evaluate` JSON with AutoAttack, for model_info.json")
    x.add_argument("--name", default="adasmooth composite", help="model name in model_info.json")
    x.add_argument("--architecture", default=None, help="architecture text in model_info.json")
    x.add_argument("--out", required=True, help="folder for model.safetensors, model.json, model_info.json")
    x.set_defaults(func=commands.export)


def _evaluate(sub, p):
    e = sub.add_parser("evaluate", parents=[p["run"], p["pair"], p["scales"]],
                       help="clean accuracy and PGD (optionally AutoAttack) robust accuracy of checkpoints")
    e.add_argument("--checkpoint", action="append", help="checkpoint stem (repeatable); default: both shipped models")
    e.add_argument("--n", "--n-examples", dest="n", type=int, default=None,
                   help="points attacked (default: evaluate.n in the config); under torchrun write --n-examples, "
                        "since torchrun's own parser mistakes --n for one of its options")
    e.add_argument("--split", default="test", choices=("train", "val", "test"))
    e.add_argument("--autoattack", choices=("standard", "plus", "rand", "apgd", "apgd-ce"), default=None,
                   help="add AutoAttack (apgd: the standard set's APGD-CE + APGD-T only, about a quarter of its time; "
                        "apgd-ce: its APGD-CE alone, a tenth; fixed-alpha points under either give a model evaluated "
                        "with the standard set a margin that `compare` reports as a lower bound)")
    e.add_argument("--mixer", default=None, help="evaluate this adaptive mixer (stem) on the standard/robust pair")
    e.add_argument("--alpha", type=float, default=None, help="evaluate the fixed-alpha mixture of the pair")
    e.add_argument("--nonlinear", action="store_true",
                   help="evaluate the MixedNUTS-style mixture of the config's nonlinear section (adasmooth calibrate)")
    e.add_argument("--bf16", action="store_true", help="bfloat16 autocast (off for reported numbers unless you ask)")
    e.add_argument("--compile", action="store_true", help="torch.compile the evaluated model")
    e.add_argument("--channels-last", action="store_true", help="channels-last memory format (GPUs)")
    e.add_argument("--chunk-size", type=int, default=None,
                   help="examples per independent chunk (default: evaluate.batch_size); finished chunks are kept "
                        "in <out>/.chunks-<model> so a rerun resumes, and torchrun ranks share the chunks")
    e.add_argument("--separation-square-queries", type=int, default=None,
                   help="a mixer's gate is also scored on the official Square attack's final iterates with this many "
                        "queries (0: skip; default: evaluate.separation_square_queries, 1000)")
    e.add_argument("--separation-fab-targets", type=int, default=0,
                   help="a mixer's gate is also scored on the adversarial examples the official FAB-T finds with this "
                        "many target classes (AutoAttack: 9; default 0: skip, it costs about AutoAttack's FAB-T)")
    e.add_argument("--out", default=None, help="results folder (default: results/evaluate-<time>)")
    e.set_defaults(func=commands.evaluate)


def _analysis(sub, p):
    s = sub.add_parser("sweep", parents=[p["run"], p["pair"]],
                       help="trade-off sweep over alpha (and logit scales) on the validation split")
    s.add_argument("--alphas", type=float, nargs="+", default=None)
    s.add_argument("--standard-scales", type=float, nargs="+", default=None)
    s.add_argument("--robust-scales", type=float, nargs="+", default=None)
    s.add_argument("--n", type=int, default=None, help="validation points attacked per grid point")
    s.add_argument("--out", default=None)
    s.set_defaults(func=commands.sweep)
    k = sub.add_parser("compare", help="compare evaluate reports on their shared examples: fixed-alpha curve, "
                                       "other mixtures, figures of merit, plot")
    k.add_argument("reports", nargs="+", help="evaluate JSONs, each FILE or NAME=FILE")
    k.add_argument("--standard", default=None, help="name of the standard model's report (alpha = 0)")
    k.add_argument("--robust", default=None, help="name of the robust model's report (alpha = 1)")
    k.add_argument("--allow-different-plans", action="store_true",
                   help="compare reports whose attack plans differ (the result lists the differences)")
    k.add_argument("--bootstrap", type=int, default=2000,
                   help="paired bootstrap replicates for the margin's 95%% interval (0: none; default 2000)")
    k.add_argument("--out", default=None, help="results folder (default: results/compare-<time>)")
    k.set_defaults(func=commands.compare)
    m = sub.add_parser("margins", parents=[p["run"]],
                       help="histograms of the robust model's probability margin (benign confidence)")
    m.add_argument("--alpha", type=float, default=None, help="draw the (1-alpha)/alpha threshold")
    m.add_argument("--n", type=int, default=1000)
    m.add_argument("--split", default="val", choices=("train", "val", "test"))
    m.add_argument("--robust", default=None)
    m.add_argument("--out", default=None)
    m.set_defaults(func=commands.margins)


def _demo(sub, p):
    d = sub.add_parser("demo", parents=[p["run"]],
                       help="the main job: choose alpha on validation, AutoAttack on test, plots")
    d.add_argument("--n", type=int, default=None, help="test points under AutoAttack (default: the config's demo.n_autoattack, 60 for fmnist)")
    d.add_argument("--n-sweep", type=int, default=None, help="validation points attacked per sweep point")
    d.add_argument("--rows", default=None,
                   help="comma-separated rows (default standard,robust,adaptive; also mixed, nonlinear, "
                        "adaptive_nonlinear)")
    d.add_argument("--all-rows", action="store_true",
                   help="every row: also the fixed-alpha, nonlinear and adaptive + nonlinear mixtures (about 3x the time)")
    d.add_argument("--fresh-sweep", action="store_true",
                   help="recompute the validation sweep even where the package ships its record (same key)")
    d.add_argument("--out", default=None, help="results folder (default: results/<time>)")
    d.set_defaults(func=commands.demo)


def _mixer(sub, p):
    f = sub.add_parser("fit-mixer", parents=[p["run"], p["pair"], p["calib"]],
                       help="train the mixing network (adaptive smoothing) and calibrate it on validation")
    f.add_argument("--out", default="runs/mixer")
    f.add_argument("--resume", action="store_true", help="continue from <out>/mixer-last")
    f.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps in total")
    f.set_defaults(func=commands.fit_mixer)
    c = sub.add_parser("calibrate-mixer", parents=[p["run"], p["pair"], p["calib"]],
                       help="re-choose a trained mixer's gamma bias and alpha range on validation")
    c.add_argument("--mixer", required=True, help="mixer checkpoint stem (e.g. runs/mixer/mixer)")
    c.add_argument("--out", default=None, help="stem to save the calibrated mixer to (default: <mixer>-recalibrated)")
    c.add_argument("--overwrite", action="store_true",
                   help="allow --out to be the input mixer itself or a file of the installed package")
    c.add_argument("--nonlinear", action="store_true",
                   help="put the config's calibrated MixedNUTS map on the robust side first (adaptive + nonlinear)")
    c.set_defaults(func=commands.calibrate_mixer)


def _calibrate(sub, p):
    n = sub.add_parser("calibrate-map", aliases=["calibrate"], parents=[p["run"]],
                       help="choose a MixedNUTS map of the robust logits and its alpha on validation")
    n.add_argument("--n", type=int, default=None, help="validation points (default: nonlinear.n_calibrate)")
    n.add_argument("--out", default=None, help="results folder (default: results/calibrate-<time>)")
    n.add_argument("--write-config", default=None, help="write the config with the chosen parameters to this YAML")
    n.add_argument("--robust", default=None, help="robust model checkpoint (default: shipped)")
    n.set_defaults(func=commands.calibrate)


def _reproduce(sub, p):
    r = sub.add_parser("reproduce", help="list the published rows this package reproduces, plan or run one")
    r.add_argument("row", nargs="?", default=None, help="a row from --list")
    r.add_argument("--list", action="store_true", help="print every reproducible row with its published numbers")
    r.add_argument("--dry-run", action="store_true", help="print the row's plan and what is missing; run nothing")
    r.add_argument("--root", default=".", help="folder holding the paper's release layout (Base/..., CompModel/...)")
    r.add_argument("--data-root", default=None, help="folder holding the data set's folder (default: --root)")
    r.add_argument("--standard", default=None, help="the accurate base's weights, in place of the release's file")
    r.add_argument("--robust", default=None, help="the robust base's weights, in place of the release's file")
    r.add_argument("--train", action="store_true",
                   help="adaptive rows: train a new mixing network instead of evaluating the released one")
    r.add_argument("--config", default=None,
                   help="start the run's config from this YAML instead of the packaged one of the row's data set")
    r.add_argument("--n", "--n-examples", dest="n", type=int, default=10_000,
                   help="test points attacked (default 10000, the whole test set, as published)")
    r.add_argument("--out", default="runs/reproduce", help="folder for the run (default: runs/reproduce)")
    r.add_argument("--device", default="cuda", help="device of the run's commands (default: cuda)")
    r.set_defaults(func=commands.reproduce)


def _released(sub, p):
    b = sub.add_parser("convert-bit", help="rename a BiT checkpoint (Google's .tar/.pt or TensorFlow .npz) to timm's "
                                          "layout (or Google's), as safetensors")
    b.add_argument("source", help="the BiT weights file")
    b.add_argument("out", help="output stem (writes <out>.safetensors and <out>.json)")
    b.add_argument("--layout", choices=("timm", "bit"), default="timm",
                   help="timm: for timm:resnetv2_*_bit (default); bit: Google's, for the bit_resnetv2 architecture")
    b.set_defaults(func=commands.convert_bit)
    m = sub.add_parser("import-mixer", parents=[p["run"], p["pair"]],
                       help="load a released mixing network (the paper's CompModel/*.pt) around the config's bases, "
                            "strictly, and save it as an adasmooth mixer")
    m.add_argument("source", help="the released file: a trainer checkpoint or a whole composite's state dict")
    m.add_argument("--settings", default=None,
                   help="the release's evaluation settings: cifar100-edm, cifar100-trades or cifar10-edm "
                        "(default: those the file carries; trainer checkpoints carry none)")
    m.add_argument("--in-planes", type=int, nargs=2, default=None, metavar=("STANDARD", "ROBUST"),
                   help="channels of the first tapped depth of each base (default: measured from the bases; "
                        "512 256 for BiT-152x2 + WRN-70-16)")
    m.add_argument("--out", required=True, help="mixer stem to write (e.g. runs/released/mixer)")
    m.set_defaults(func=commands.import_mixer)
    n = sub.add_parser("import-map", parents=[p["run"]],
                       help="write a config whose nonlinear section is MixedNUTS' tuned map for a robust base")
    n.add_argument("source", nargs="?", default=None,
                   help="MixedNUTS' configs/optimal_spca.yaml (default: the packaged published values)")
    n.add_argument("--dataset", required=True, help="cifar10, cifar100, ... as the file names it")
    n.add_argument("--robust-id", required=True, help="the robust base's RobustBench id, e.g. Wang2023Better_WRN-70-16")
    n.add_argument("--beta", type=float, default=None, help="the map's beta (default: the file's default_beta)")
    n.add_argument("--write-config", required=True, help="YAML to write (the --config with the map set)")
    n.set_defaults(func=commands.import_map)


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adasmooth", description=description)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details (and show tracebacks)")
    parser.add_argument("--no-verify", action="store_true",
                        help="load checkpoints whose weights no longer match the sha256 their sidecar recorded "
                             "(for files you changed on purpose)")
    sub = parser.add_subparsers(dest="command", required=True)
    parents = _parents()
    for add in (_train_base, _certify, _export, _evaluate, _analysis, _demo, _mixer, _calibrate, _reproduce, _released):
        add(sub, parents)
    return parser
