"""`adasmooth <command>`: a thin command-line layer over the workflows. Output to the terminal lives here."""

from __future__ import annotations

import logging
import sys
import traceback

from ..config import ConfigError
from ..data import DataError
from ..distributed import shutdown
from ..io import CheckpointError, unverified_loading
from ..models.external import StateDictError
from .parsers import build_parser

# failures a user can fix (bad files, settings, data, a diverged run, a missing extra): one line, exit 2
EXPECTED_ERRORS = (ConfigError, DataError, CheckpointError, StateDictError, ValueError, OSError, FloatingPointError,
                   ImportError)

__all__ = ["build_parser", "main"]


DESCRIPTION = ("adaptive smoothing: mix a standard and a robust classifier for accuracy and robustness "
               "(Bai, Anderson, Kim, Sojoudi, arXiv 2301.12554)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser(DESCRIPTION).parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what a saved record quotes as its command
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if args.no_verify:
            with unverified_loading():
                return args.func(args)
        return args.func(args)
    except EXPECTED_ERRORS as exc:
        if args.verbose:
            traceback.print_exc()
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"adasmooth {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"adasmooth {args.command}: interrupted. {_resume_hint(args)}", file=sys.stderr)
        return 130
    finally:  # a torchrun rank leaves its process group before exiting (gloo's threads may abort at exit otherwise)
        shutdown()


def _resume_hint(args) -> str:
    if hasattr(args, "resume"):
        return "What was saved is intact: run the same command with --resume to continue from the last checkpoint."
    if args.command in ("evaluate", "certify"):
        return "Finished chunks are kept: run the same command with the same --out to continue."
    if args.command in ("fit-mixer", "calibrate-mixer"):
        return "Verified calibration steps are journalled: run the same command to continue."
    return "Nothing was written past the last finished output."


if __name__ == "__main__":
    sys.exit(main())
