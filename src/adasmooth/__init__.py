"""adasmooth: adaptive smoothing of a standard and a robust classifier (Bai et al., arXiv 2301.12554)."""

from __future__ import annotations

import logging

from ._version import __version__

logging.getLogger(__name__).addHandler(logging.NullHandler())

from .bundle import load_bundle
from .features import FeatureTap
from .gates import PaperMixingNetwork
from .mixer import AdaptiveMixedClassifier, MixingNetwork
from .mixing import MixedClassifier
from .pretrained import load_pretrained
from .released import load_released_mixer

__all__ = ["AdaptiveMixedClassifier", "FeatureTap", "MixedClassifier", "MixingNetwork", "PaperMixingNetwork",
           "__version__", "load_bundle", "load_pretrained", "load_released_mixer"]
