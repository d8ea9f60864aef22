"""The base models shipped with the package for the embedded default (Fashion-MNIST)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from .io import CheckpointError, load_model, load_tensors, state_fingerprint
from .mixer import load_adaptive

logger = logging.getLogger(__name__)

PRETRAINED_NAMES = ("fashion-mnist",)
DEFAULT_PAIR_STEMS = {"standard": "standard", "robust": "adversarial"}  # when no pair.json names others


def pretrained_dir() -> Path:
    """Folder of the shipped checkpoints: ``$ADASMOOTH_PRETRAINED``, else the package's own
    ``assets/pretrained`` (package data, found through ``importlib.resources``, so an installed wheel has it)."""
    from importlib import resources

    env = os.environ.get("ADASMOOTH_PRETRAINED")
    if env:
        return Path(env)
    return Path(str(resources.files("adasmooth").joinpath("assets", "pretrained")))


@dataclass
class PretrainedPair:
    """A standard and a robust model (eval mode), the adaptive mixture when a mixer is shipped, metadata.

    ``adaptive_nonlinear`` is the same mixer with the calibrated MixedNUTS map on the robust logits (its γ
    bias and α range re-calibrated for the map) when ``mixer-nonlinear`` is shipped.
    """

    standard: nn.Module
    robust: nn.Module
    metadata: dict = field(default_factory=dict)
    adaptive: nn.Module | None = None
    adaptive_nonlinear: nn.Module | None = None
    nonlinear: dict | None = None  # the calibrated MixedNUTS map and α of nonlinear.json, when shipped


def shipped_pair_stem(name: str, role: str) -> Path:
    """The checkpoint stem (a path without suffix) of the shipped model that plays ``role`` (``standard`` or
    ``robust``) in ``name``'s pair: the one ``pair.json`` beside the models names, else ``standard`` /
    ``adversarial``. The other shipped checkpoints of the folder stay loadable by their own stems."""
    if role not in DEFAULT_PAIR_STEMS:
        raise ValueError(f"role must be one of {', '.join(DEFAULT_PAIR_STEMS)}, got {role!r}")
    record = _shipped_record(name, "pair.json", "shipped-pair", needs=tuple(DEFAULT_PAIR_STEMS))
    stem = record[role] if record is not None else DEFAULT_PAIR_STEMS[role]
    if not isinstance(stem, str) or not stem or "/" in stem or "\\" in stem:
        raise CheckpointError(f"{pretrained_dir() / name / 'pair.json'}: {role} must name a checkpoint of that folder, "
                              f"got {stem!r}")
    return pretrained_dir() / name / stem


def load_pretrained(name: str = "fashion-mnist", *, device: str = "cpu") -> PretrainedPair:
    """Load the shipped pair for ``name`` (only ``"fashion-mnist"`` today)."""
    if name not in PRETRAINED_NAMES:
        raise ValueError(f"no pretrained models for {name!r}; available: {', '.join(PRETRAINED_NAMES)}")
    folder = pretrained_dir() / name
    try:
        standard, meta_s = load_model(shipped_pair_stem(name, "standard"), expect_num_classes=10, map_location=device)
        robust, meta_r = load_model(shipped_pair_stem(name, "robust"), expect_num_classes=10, map_location=device)
    except CheckpointError as exc:
        raise CheckpointError(
            f"{exc}. The shipped models travel inside the package (adasmooth/assets/pretrained; "
            f"ADASMOOTH_PRETRAINED overrides); see adasmooth/assets/pretrained/README.md for the commands that make them"
        ) from None
    meta = {"standard": meta_s, "robust": meta_r}
    composites = {}
    for key, stem in (("adaptive", "mixer"), ("adaptive_nonlinear", "mixer-nonlinear")):
        if (folder / f"{stem}.safetensors").is_file():
            composites[key] = load_adaptive(folder / stem, standard, robust).to(device)
            meta[key] = load_tensors(folder / stem)[1]
    adaptive, adaptive_nonlinear = composites.get("adaptive"), composites.get("adaptive_nonlinear")
    return PretrainedPair(standard=standard, robust=robust, metadata=meta, adaptive=adaptive,
                          adaptive_nonlinear=adaptive_nonlinear, nonlinear=shipped_nonlinear(name))


def _shipped_record(name: str, filename: str, kind: str, *, needs: tuple[str, ...] = ()) -> dict | None:
    """A JSON record shipped beside the pair (``pretrained/<name>/<filename>``), checked to be of ``kind`` and
    to hold ``needs``; None when none is shipped."""
    path = pretrained_dir() / name / filename
    if not path.is_file():
        return None
    d = json.loads(path.read_text())
    if d.get("kind") != kind or any(k not in d for k in needs):
        raise CheckpointError(f"{path} is not a {kind} record (kind={d.get('kind')!r})")
    return d


def shipped_nonlinear(name: str = "fashion-mnist") -> dict | None:
    """The shipped pair's calibrated MixedNUTS map (``nonlinear.json``, written from ``adasmooth calibrate``
    on validation data), or None when none is shipped."""
    return _shipped_record(name, "nonlinear.json", "nonlinear-map")


def shipped_sweep(name: str = "fashion-mnist") -> dict | None:
    """The shipped pair's validation sweep (``sweep.json``, the ``sweep.json`` a fresh ``adasmooth demo``
    writes), or None when none is shipped. Its ``key`` covers the pair's weights and every sweep setting; the
    demo uses it only when the key matches its own settings."""
    return _shipped_record(name, "sweep.json", "validation-sweep", needs=("key", "sweep"))


def shipped_comparison(name: str, pair: PretrainedPair) -> dict | None:
    """The shipped test-set comparison (``comparison.json``: the fixed-α curve and the mixer's margin to it on
    1,000 seeded test points, written by ``scripts/ship_comparison.py``), when it was measured on exactly the
    weights of ``pair`` (fingerprints of both bases and the mixer's sha256); else None."""
    d = _shipped_record(name, "comparison.json", "test-comparison")
    if d is None:
        return None
    fp = d.get("fingerprints", {})
    mixer = pretrained_dir() / name / "mixer.json"
    mixer_sha = json.loads(mixer.read_text()).get("sha256") if mixer.is_file() else None
    if (fp.get("standard"), fp.get("robust"), fp.get("mixer_sha256")) != (
            state_fingerprint(pair.standard), state_fingerprint(pair.robust), mixer_sha):
        logger.info("comparison.json was measured on other weights than the shipped pair and mixer: not shown")
        return None
    return d


def with_shipped_nonlinear(nonlinear_cfg, name: str = "fashion-mnist"):
    """``nonlinear_cfg`` with the shipped calibration filled in where the config leaves it null (the config
    wins when it is calibrated; unchanged when nothing is shipped)."""
    import dataclasses

    nc = nonlinear_cfg
    shipped = shipped_nonlinear(name)
    if shipped is None or None not in (nc.scale, nc.shift, nc.power, nc.alpha):
        return nc
    m = shipped["map"]
    return dataclasses.replace(nc, scale=m["scale"], shift=m["shift"], power=m["power"], k=m["k"],
                               alpha=shipped["alpha"])
