"""The export workflow: a whole composite as one bundle, and RobustBench's model info from an evaluation."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from ..bundle import robustbench_model_info, save_bundle
from ..config import Config
from ..io import load_tensors, write_json
from ..pretrained import shipped_pair_stem


def base_architectures(cfg: Config, *, standard: str | None = None, robust: str | None = None) -> dict[str, dict]:
    """How to rebuild each base model: from its checkpoint's sidecar, the config's ``bases``, or the
    shipped model's sidecar."""
    archs = {}
    for role, given in (("standard", standard), ("robust", robust)):
        spec = getattr(cfg.bases, role)
        if spec.architecture is not None and not given:
            archs[role] = {"architecture": spec.architecture, "arch_args": spec.args}
            continue
        meta = load_tensors(given or shipped_pair_stem(cfg.data.name, role))[1]
        archs[role] = {"architecture": meta["architecture"], "arch_args": meta.get("arch_args", {})}
    return archs


def export_composite(cfg: Config, model: nn.Module, out: Path, *, archs: dict[str, dict], results: str | None = None,
                     name: str = "adasmooth composite", architecture: str | None = None) -> list[str]:
    """Write ``out/model`` (+ ``model_info.json`` from an evaluate JSON with AutoAttack); returns what was
    written, for the terminal."""
    save_bundle(out / "model", model, standard_arch=archs["standard"], robust_arch=archs["robust"],
                dataset=cfg.data.name, threat={"norm": cfg.threat.norm, "eps": cfg.threat.eps})
    lines = [f"wrote {out / 'model'}.safetensors (+ .json); restore with adasmooth.load_bundle('{out / 'model'}')"]
    if results:
        info = robustbench_model_info(json.loads(Path(results).read_text()), name=name, dataset=cfg.data.name,
                                      architecture=architecture or
                                      f"{archs['standard']['architecture']} + {archs['robust']['architecture']}")
        write_json(out / "model_info.json", info)
        lines.append(f"wrote {out / 'model_info.json'}: clean {100 * info['clean_acc']:.2f}%, AutoAttack (worst case) "
                     f"{100 * info['autoattack_acc']:.2f}%")
    return lines
