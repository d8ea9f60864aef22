"""A whole composite classifier in one safetensors file plus a JSON sidecar: both base models, the
gate, and every setting needed to rebuild it without the original config (``adasmooth.load_bundle``), and a
model-info JSON in RobustBench's format (``adasmooth export``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .io import CheckpointError, load_tensors, save_tensors
from .mixer import AdaptiveMixedClassifier, adaptive_from_state, mixer_state
from .mixing import MixedClassifier
from .models import build
from .transforms import map_from_description

BUNDLE_KIND = "adasmooth-bundle"


def _arch(arch: dict, role: str) -> dict:
    if not isinstance(arch, dict) or "architecture" not in arch:
        raise ValueError(f"the {role} model's architecture must be given as {{'architecture': name, 'arch_args': {{...}}}}")
    return {"architecture": arch["architecture"], "arch_args": dict(arch.get("arch_args") or {})}


def save_bundle(stem: str | Path, model: nn.Module, *, standard_arch: dict, robust_arch: dict, **metadata) -> None:
    """Save a :class:`~adasmooth.MixedClassifier` or :class:`~adasmooth.AdaptiveMixedClassifier` whole.

    ``standard_arch`` / ``robust_arch`` say how to rebuild each base model with
    :func:`adasmooth.models.build` (the ``architecture`` and ``arch_args`` of its checkpoint sidecar).
    """

    if not isinstance(model, (MixedClassifier, AdaptiveMixedClassifier)):
        raise TypeError(f"save_bundle takes a MixedClassifier or AdaptiveMixedClassifier, got {type(model).__name__}")
    tensors = {f"standard.{k}": v for k, v in model.standard.state_dict().items()}
    tensors.update({f"robust.{k}": v for k, v in model.robust.state_dict().items()})
    meta = {"kind": BUNDLE_KIND, "composite": model.describe(),
            "standard": _arch(standard_arch, "standard"), "robust": _arch(robust_arch, "robust"), **metadata}
    if isinstance(model, AdaptiveMixedClassifier):
        gate_tensors, meta["gate"] = mixer_state(model)
        tensors.update(gate_tensors)
    elif torch.is_tensor(model.alpha):
        raise ValueError("a per-example alpha tensor cannot be bundled; bundle a fixed alpha or an adaptive model")
    save_tensors(stem, {k: v.contiguous() for k, v in tensors.items()}, meta)


def load_bundle(stem: str | Path, *, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a composite saved by :func:`save_bundle` (eval mode). Reads safetensors only."""
    tensors, meta = load_tensors(stem)
    if meta.get("kind") != BUNDLE_KIND:
        raise CheckpointError(f"{stem} is not an adasmooth bundle (kind={meta.get('kind')!r}); base checkpoints "
                              "load with adasmooth.io.load_model, mixers with adasmooth.mixer.load_adaptive")
    bases = {}
    for role in ("standard", "robust"):
        spec = meta[role]
        net = build(spec["architecture"], **spec["arch_args"])
        own = {k[len(role) + 1:]: v for k, v in tensors.items() if k.startswith(role + ".")}
        missing, unexpected = sorted(set(net.state_dict()) - set(own)), sorted(set(own) - set(net.state_dict()))
        if missing or unexpected:
            raise CheckpointError(f"{stem}: the {role} weights do not fit {spec['architecture']}: missing "
                                  f"{missing[:3]}, unexpected {unexpected[:3]}")
        net.load_state_dict(own)
        bases[role] = net.eval()
    c = meta["composite"]
    maps = {"standard_map": map_from_description(c.get("standard_map")),
            "robust_map": map_from_description(c.get("robust_map"))}
    if c["type"] == "MixedClassifier":
        model = MixedClassifier(bases["standard"], bases["robust"], alpha=c["alpha"], standard_scale=c["standard_scale"],
                                robust_scale=c["robust_scale"], **maps)
    elif c["type"] == "AdaptiveMixedClassifier":
        model = adaptive_from_state(bases["standard"], bases["robust"], c, meta["gate"], tensors)
    else:
        raise CheckpointError(f"{stem}: unknown composite type {c['type']!r}")
    return model.to(map_location).eval()


def robustbench_model_info(results: dict, *, name: str, architecture: str, dataset: str, link: str | None = None,
                           authors: str = "", venue: str = "", additional_data: bool = False,
                           footnote: str | None = None) -> dict:
    """Model info in RobustBench's JSON layout (accuracies as fractions) from an ``adasmooth evaluate``
    result that includes AutoAttack.

    ``autoattack_acc`` is the per-example worst case over every attack that was run, so it is never above
    AutoAttack's own number; the footnote says how many test points and which attacks.
    """
    if not any(a.get("type") == "autoattack" for a in results.get("attacks", [])):
        raise ValueError("these results hold no AutoAttack run: evaluate with --autoattack standard first")
    clean_n = results.get("n_full_split", results["n"])
    note = (f"adasmooth evaluation: clean accuracy on {clean_n} {dataset} test points, robust accuracy on "
            f"{results['n']} ({results['norm']}, eps={results['eps']:.6g}); "
            f"worst case over {', '.join(a['name'] for a in results['attacks'])}")
    return {
        "link": link, "name": name, "authors": authors, "additional_data": str(bool(additional_data)),
        "number_forward_passes": 1, "dataset": dataset, "venue": venue, "architecture": architecture,
        # clean accuracy of the whole split where the evaluation measured it, not of the attacked subset
        "eps": results["eps"], "clean_acc": round(results.get("clean_accuracy_full_split", results["clean_accuracy"]), 4),
        "reported": None,
        "corruptions_acc": None, "autoattack_acc": round(results["robust_accuracy"], 4),
        "footnote": f"{footnote} {note}" if footnote else note,
    }
