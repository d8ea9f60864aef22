"""Workflows: one function per job, between the library and the command line. Each takes a config, models
and an output folder and returns a result that formats itself for the terminal (and has written its files).

| job | function |
| --- | --- |
| evaluate models | :func:`evaluation_targets`, :func:`build_mixture`, :func:`evaluate` |
| the demo | :func:`run_demo` |
| α sweep, comparison, margins | :func:`run_sweep`, :func:`run_compare`, :func:`run_margins` |
| MixedNUTS-style map | :func:`calibrate_map` |
| adaptive mixer | :func:`fit_and_calibrate`, :func:`recalibrate` |
| certification | :func:`run_certify` |
| export | :func:`export_composite` |
| base models | :func:`train` |
| published rows | :func:`list_rows`, :func:`reproduce_plan`, :func:`run_reproduce` |
| released checkpoints | :func:`convert_bit_checkpoint`, :func:`import_released_mixer`, :func:`import_mixednuts_map` |
"""

from .analysis import read_reports, run_compare, run_margins, run_sweep
from .artifacts import convert_bit_checkpoint, import_mixednuts_map, import_released_mixer
from .calibrate import calibrate_map, calibrate_mixer_and_save, write_config
from .certify import run_certify
from .common import (
           build_mixture,
           download_data,
           figure_of_merit,
           is_shipped_pair,
           load_pair,
           nonlinear_section,
           output_dir,
           with_data_root,
)
from .demo import ALL_ROWS, DEFAULT_ROWS, run_demo
from .evaluate import EvaluationTarget, evaluate, evaluation_targets
from .export import base_architectures, export_composite
from .mixer_jobs import build_adaptive, fit_and_calibrate, recalibrate
from .reproduce import list_rows, reproduce_plan, run_reproduce
from .train import train

__all__ = [
           "ALL_ROWS",
           "DEFAULT_ROWS",
           "EvaluationTarget",
           "base_architectures",
           "build_adaptive",
           "build_mixture",
           "calibrate_map",
           "calibrate_mixer_and_save",
           "convert_bit_checkpoint",
           "download_data",
           "evaluate",
           "evaluation_targets",
           "export_composite",
           "figure_of_merit",
           "fit_and_calibrate",
           "import_mixednuts_map",
           "import_released_mixer",
           "is_shipped_pair",
           "list_rows",
           "load_pair",
           "nonlinear_section",
           "output_dir",
           "read_reports",
           "recalibrate",
           "reproduce_plan",
           "run_certify",
           "run_compare",
           "run_demo",
           "run_margins",
           "run_reproduce",
           "run_sweep",
           "train",
           "with_data_root",
           "write_config",
]
