"""`adasmooth <command>`: a thin command-line layer over the workflows. Output to the terminal lives here."""

from __future__ import annotations

import logging
import sys

from ..config import ConfigError
from ..data import DataError
from ..io import CheckpointError
from .parsers import build_parser

__all__ = ["build_parser", "main"]


DESCRIPTION = ("adaptive smoothing: mix a standard and a robust classifier for accuracy and robustness "
               "(Bai, Anderson, Kim, Sojoudi, arXiv 2301.12554)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser(DESCRIPTION).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
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
