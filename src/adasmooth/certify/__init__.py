"""Certified robustness: randomized smoothing, exact binomial bounds and the radii of α-mixtures."""

from .bounds import clopper_pearson_lower, clopper_pearson_upper, mixture_bounds, smallest_useful_n
from .mixture import certificate_alpha, certify_mixture
from .radii import lipschitz_radius, smoothing_radius
from .smoothing import ABSTAIN, Smooth

__all__ = ["ABSTAIN", "Smooth", "certificate_alpha", "certify_mixture", "clopper_pearson_lower",
           "clopper_pearson_upper", "lipschitz_radius", "mixture_bounds", "smallest_useful_n",
           "smoothing_radius"]
