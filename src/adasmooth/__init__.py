"""adasmooth: adaptive smoothing of a standard and a robust classifier (Bai et al., arXiv 2301.12554)."""

from __future__ import annotations

import logging

from ._version import __version__

logging.getLogger(__name__).addHandler(logging.NullHandler())

from .bundle import load_bundle
from .features import FeatureTap
from .mixer import AdaptiveMixedClassifier, MixingNetwork
from .mixing import MixedClassifier
from .pretrained import load_pretrained

__all__ = ["AdaptiveMixedClassifier", "FeatureTap", "MixedClassifier", "MixingNetwork", "__version__",
           "load_bundle", "load_pretrained"]
