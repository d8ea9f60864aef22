"""The published rows this package can reproduce: what each reports, what it needs, and the plan that
re-makes it with ``adasmooth`` commands (a config with the user's files, then fit, calibrate, evaluate).

Published numbers are ℓ∞ at ε = 8/255 on the whole CIFAR test set under standard AutoAttack, as the papers
report them: adaptive smoothing (Bai, Anderson, Kim, Sojoudi, arXiv 2301.12554) and MixedNUTS (Bai, Zhou,
Patel, Sojoudi, arXiv 2402.02263). Robust bases are named by their RobustBench ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .config import packaged_config_path

DATA_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


@dataclass(frozen=True)
class PublishedRow:
    key: str
    title: str
    dataset: str  # the packaged config of the same name holds the paper's settings
    method: str  # "adaptive" (train + calibrate a mixing network) or "nonlinear" (MixedNUTS, training-free)
    clean: float  # published, %
    autoattack: float  # published, %
    robust_base: str  # RobustBench id of the robust base
    files: dict[str, str] = field(default_factory=dict)  # role -> file name as the paper's release names it
    gpu_hours: str = ""  # a rough estimate of the plan's cost on one recent GPU
    unavailable: tuple[str, ...] = ()  # what this version cannot yet do for the row
    released_settings: str = ""  # key of released.RELEASED_SETTINGS: the release's evaluation settings
    robust_id: str = ""  # the robust base's RobustBench id, which keys MixedNUTS' published maps


ROWS = {row.key: row for row in (
    PublishedRow("as-cifar100-edm", "Adaptive smoothing, CIFAR-100: BiT-M ResNet-152x2 + WRN-70-16 (EDM data)",
                 "cifar100", "adaptive", 85.21, 38.72, "Wang2023Better_WRN-70-16 (75.22 / 42.67)",
                 {"standard": "Base/cifar100_bit_rn152.tar", "robust": "Base/cifar100_linf_edm_wrn70-16.pt",
                  "released mixer": "CompModel/cifar100_edm_best.pt"},
                 "about 5 for AutoAttack on 10,000 points; with --train, about 35 more for 3 epochs of the paper's "
                 "training attack (estimates: attack steps over the 900 images/s per step "
                 "benchmarks/paper_composite.py measured on an H200)", released_settings="cifar100-edm"),
    PublishedRow("as-cifar100-trades", "Adaptive smoothing, CIFAR-100: BiT-M ResNet-152x2 + WRN-70-16 (TRADES, "
                 "extra data)", "cifar100", "adaptive", 80.18, 35.15, "Gowal2020Uncovering_extra",
                 {"standard": "Base/cifar100_bit_rn152.tar", "robust": "Base/cifar100_linf_trades_wrn70-16.pt",
                  "released mixer": "CompModel/cifar100_trades_best.pt"},
                 "as as-cifar100-edm", released_settings="cifar100-trades"),
    PublishedRow("as-cifar10-edm", "Adaptive smoothing, CIFAR-10: BiT-M ResNet-152x2 + WRN-70-16 (EDM data)",
                 "cifar10", "adaptive", 95.23, 68.06, "Wang2023Better_WRN-70-16 (93.25 / 70.69)",
                 {"standard": "Base/cifar10_bit_rn152.tar", "robust": "Base/cifar10_linf_edm_wrn70-16.pt",
                  "released mixer": "CompModel/cifar10_edm_best.pt"},
                 "as as-cifar100-edm", released_settings="cifar10-edm"),
    PublishedRow("mixednuts-cifar100", "MixedNUTS, CIFAR-100: BiT-M ResNet-152x2 votes one-hot, WRN-70-16's "
                 "logits through the published map, fixed α", "cifar100", "nonlinear", 83.08, 41.80,
                 "Wang2023Better_WRN-70-16",
                 {"standard": "cifar100/cifar100_std_rn152.pt", "robust": "Base/cifar100_linf_edm_wrn70-16.pt"},
                 "about 5 for AutoAttack on 10,000 points", robust_id="Wang2023Better_WRN-70-16"),
    PublishedRow("mixednuts-cifar10", "MixedNUTS, CIFAR-10: BiT-M ResNet-152x2 votes one-hot, Peng2023Robust's "
                 "logits through the published map, fixed α", "cifar10", "nonlinear", 95.19, 69.71, "Peng2023Robust",
                 {"standard": "cifar10/cifar10_std_rn152.pt",
                  "robust": "your copy of RobustBench's Peng2023Robust (a RaWideResNet-70-16; set bases.robust to "
                            "robustbench: Peng2023Robust with the robustbench extra)"},
                 "about 5 for AutoAttack on 10,000 points", robust_id="Peng2023Robust"),
)}


# MixedNUTS' tuned maps (its configs/optimal_spca.yaml, "gelu" at the default β): the robust logits go through
# s·sign(u)·|u|^p, u = GELU(LN(z) + c) over all logits; the standard model votes one-hot; one α.
MIXEDNUTS_SETTINGS = {
    ("cifar10", "Peng2023Robust"): {"beta": 98.5, "s": 5.0, "c": -1.1, "p": 4.0, "alpha": 0.9987500602493457},
    ("cifar100", "Wang2023Better_WRN-70-16"): {"beta": 98.5, "s": 0.6115753843212784, "c": -2.142857142857143,
                                               "p": 3.571428571428571, "alpha": 0.9860300534207915},
}
MIXEDNUTS_LN_K = 250  # MixedNUTS' default top-k of the layer norm: every logit on CIFAR


def read_mixednuts_settings(path: str | Path | None, dataset: str, robust_id: str, *, beta: float | None = None) -> dict:
    """One tuned map of a MixedNUTS ``optimal_spca.yaml`` (``path``; None: the values above), as
    ``{beta, s, c, p, alpha}``: the ``gelu`` entry at ``beta`` (default: the file's ``default_beta``)."""
    if path is None:
        if (dataset, robust_id) not in MIXEDNUTS_SETTINGS or beta not in (None, MIXEDNUTS_SETTINGS[(dataset, robust_id)]["beta"]):
            raise ValueError(f"no packaged MixedNUTS map for {dataset} / {robust_id}" + (f" at beta {beta}" if beta else "")
                             + f"; packaged: {sorted(MIXEDNUTS_SETTINGS)}; give their optimal_spca.yaml")
        return dict(MIXEDNUTS_SETTINGS[(dataset, robust_id)])
    table = yaml.safe_load(Path(path).read_text())
    try:
        gelu = table[dataset][robust_id]["gelu"]
    except (KeyError, TypeError):
        raise ValueError(f"{path} has no gelu map for {dataset} / {robust_id}") from None
    beta = gelu.get("default_beta") if beta is None else beta
    entry = gelu.get(beta) if beta is not None else None
    if not isinstance(entry, dict) or not all(k in entry for k in ("s", "c", "p", "alpha")):
        raise ValueError(f"{path}: {dataset} / {robust_id} has no complete gelu map at beta {beta}")
    return {"beta": float(beta), **{k: float(entry[k]) for k in ("s", "c", "p", "alpha")}}


def nonlinear_section(settings: dict) -> dict:
    """The config's ``nonlinear`` section that builds MixedNUTS' tuned mixture from ``settings``."""
    return {"scale": settings["s"], "shift": settings["c"], "power": settings["p"], "alpha": settings["alpha"],
            "k": MIXEDNUTS_LN_K, "standard_map": "hard-one-hot"}


@dataclass
class Step:
    name: str
    command: list[str]
    needs: list[Path]
    note: str = ""

    def missing(self) -> list[Path]:
        return [p for p in self.needs if not p.exists()]


def row(key: str) -> PublishedRow:
    if key not in ROWS:
        raise ValueError(f"no reproducible row named {key!r}; `adasmooth reproduce --list` shows them: "
                         f"{', '.join(ROWS)}")
    return ROWS[key]


def plan(r: PublishedRow, *, root: Path, data_root: Path, out: Path, device: str = "cuda",
         standard: Path | None = None, robust: Path | None = None, train: bool = False,
         n_examples: int = 10_000) -> list[Step]:
    """The steps that re-make row ``r`` from the user's files: ``root`` holds the release layout (``Base/...``,
    ``CompModel/...``), ``standard`` / ``robust`` name other files, ``data_root`` the data set's folder.
    Adaptive rows evaluate the released mixing network as it is, or train a new one (``train``)."""
    std = standard or _release_file(root, r.files["standard"], "--standard")
    rob = robust or _release_file(root, r.files["robust"], "--robust")
    cfg = out / "config.yaml"
    data = data_root / DATA_FOLDERS[r.dataset]
    what = " and MixedNUTS' published map (nonlinear section)" if r.method == "nonlinear" else ""
    write = Step(f"write the run's config: the packaged one with your data and weights{what}",
                 ["(written by adasmooth reproduce)", str(cfg)], [data, std, rob])
    dev = ["--device", device]
    evaluate = ["adasmooth", "evaluate", "--config", str(cfg), "--n-examples", str(n_examples), "--autoattack", "standard",
                "--chunk-size", "500", "--out", str(out / "eval"), *dev]
    mixer = out / "mixer" / "mixer"
    if r.method == "nonlinear":
        return [write, Step("evaluate the nonlinear mixture on the whole test set", [*evaluate, "--nonlinear"], [cfg])]
    if train or "released mixer" not in r.files:
        first = Step("train and calibrate a new mixing network (resumable)",
                     ["adasmooth", "fit-mixer", "--config", str(cfg), "--out", str(mixer.parent), "--resume", *dev], [cfg])
    else:
        released = root / r.files["released mixer"]
        first = Step("load the released mixing network strictly, with the release's evaluation settings",
                     ["adasmooth", "import-mixer", str(released), "--config", str(cfg), "--settings",
                      r.released_settings, "--out", str(mixer), *dev], [released, cfg])
    return [write, first, Step("evaluate it on the whole test set", [*evaluate, "--mixer", str(mixer)],
                               [mixer.with_suffix(".safetensors")])]


def _release_file(root: Path, name: str, option: str) -> Path:
    """A file of the paper's release under ``root``; where the release has none, a placeholder that names the
    option to give (it never exists, so the plan reports it missing)."""
    return Path(f"(give {option} FILE)") if name.startswith("your ") else root / name


def run_config(r: PublishedRow, *, data_root: Path, standard: Path, robust: Path, base_config: Path | None = None) -> dict:
    """The packaged config of the row's data set (or ``base_config``) with the user's data folder and base
    weights set (and, for MixedNUTS rows, its published map in the nonlinear section)."""
    raw = yaml.safe_load((base_config or packaged_config_path(r.dataset)).read_text())
    raw.setdefault("data", {})["root"] = str(data_root)
    raw["bases"]["standard"]["weights"] = str(standard)
    raw["bases"]["robust"]["weights"] = str(robust)
    if r.method == "nonlinear":
        raw["nonlinear"] = {**(raw.get("nonlinear") or {}),
                            **nonlinear_section(read_mixednuts_settings(None, r.dataset, r.robust_id))}
    return raw


__all__ = ["MIXEDNUTS_SETTINGS", "ROWS", "PublishedRow", "Step", "nonlinear_section", "plan", "read_mixednuts_settings",
           "row", "run_config"]
