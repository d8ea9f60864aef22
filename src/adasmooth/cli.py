"""`adasmooth <command>`: a thin command-line layer over the library. Output to the terminal lives here."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .config import Config, ConfigError, load_config

logger = logging.getLogger("adasmooth.cli")


def _load_cfg(path: str | None) -> tuple[Config, str | None]:
    if path is None:
        return Config(), None
    return load_config(path), str(path)


def cmd_train_base(args) -> int:
    from .training import train_base

    cfg, source = _load_cfg(args.config)
    if args.data_root:
        cfg = _with_data_root(cfg, args.data_root)
    out = Path(args.out)
    _, meta = train_base(cfg, args.kind, out, resume=args.resume, device=args.device, config_source=source,
                         max_epochs=args.max_epochs)
    if "accuracies" in meta:
        print(f"saved {out / args.kind}.safetensors (+ .json), trained in {meta['train_seconds']:.0f} s")
        for k, v in meta["accuracies"].items():
            print(f"  {k:>24s}: {100 * v:6.2f}%")
    else:
        print(f"stopped after {meta['epochs_done']} epochs; continue with --resume")
    return 0


def _with_data_root(cfg: Config, root: str) -> Config:
    import dataclasses

    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=root))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adasmooth", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train-base", help="train a standard or PGD-adversarial base model")
    t.add_argument("--config", default="configs/fmnist.yaml")
    t.add_argument("--kind", choices=("standard", "adversarial"), required=True)
    t.add_argument("--out", default="runs/base", help="folder for checkpoints (default: runs/base)")
    t.add_argument("--resume", action="store_true", help="continue from <out>/<kind>-last")
    t.add_argument("--device", default="cpu")
    t.add_argument("--data-root", default=None)
    t.add_argument("--max-epochs", type=int, default=None, help="stop after this many epochs (resume later)")
    t.set_defaults(func=cmd_train_base)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
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
