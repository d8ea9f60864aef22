"""Run configuration: frozen dataclasses loaded from YAML. Unknown keys and wrong types are errors that
name the key and the file."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config_checks import ConfigError, check_values


@dataclass(frozen=True)
class DataConfig:
    name: str = "fashion-mnist"
    root: str | None = None  # None: $ADASMOOTH_DATA or the data set's default folder


@dataclass(frozen=True)
class ModelConfig:
    architecture: str = "small_resnet"
    args: dict = field(default_factory=lambda: {"width": 16, "blocks": [1, 1, 1]})


@dataclass(frozen=True)
class BaseModelSpec:
    """One base model from the user's files. All null: the shipped model of the embedded default."""

    architecture: str | None = None  # small_resnet, wide_resnet, torchvision:<name>, timm:<name>
    args: dict = field(default_factory=dict)  # keyword arguments; input_size / mean / std wrap the model
    weights: str | None = None  # safetensors or .pt state dict (read with weights_only=True)
    robustbench: str | None = None  # a RobustBench zoo name instead (downloads on first use; optional extra)
    source: str = ""  # where the paper's weights came from, shown when the file is missing


@dataclass(frozen=True)
class BasesConfig:
    standard: BaseModelSpec = field(default_factory=BaseModelSpec)
    robust: BaseModelSpec = field(default_factory=BaseModelSpec)


@dataclass(frozen=True)
class ThreatConfig:
    norm: str = "Linf"  # "Linf" or "L2"
    eps: float = 0.1


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = True  # random 2-pixel shifts and horizontal flips
    seed: int = 0
    attack_steps: int = 10  # adversarial training only
    attack_step_size: float = 0.025  # adversarial and TRADES training; absolute, in the input's [0, 1] scale
    trades_beta: float = 6.0  # TRADES only: weight of the KL term
    ema_decay: float | None = None  # exponential moving average of the weights (e.g. 0.998); null: none
    width_multiplier: float = 1.0  # scales model.args.width (small_resnet) for this kind
    amp: bool = False  # bfloat16 autocast for the training attack and the update (AMX CPUs, GPUs); evaluation stays fp32
    blocks: tuple[int, ...] = ()  # residual blocks per stage for this kind, replacing model.args.blocks; (): keep
    label_smoothing: float = 0.0  # smoothing of the cross-entropy targets (every kind but TRADES)
    random_erasing: float = 0.0  # probability of erasing one random rectangle per training image (Zhong et al. 2020)


@dataclass(frozen=True)
class EvaluateConfig:
    n: int = 1000  # test points for the robust accuracy
    pgd_steps: int = 20
    pgd_step_size: float = 0.01
    pgd_restarts: int = 1
    batch_size: int = 500
    seed: int = 0
    separation_iters: int = 40  # a mixer's gate: gate-aware APGD iterations of its separation (AUROC) report
    separation_square_queries: int = 1000  # and the official Square's queries (0: skip)
    separation_n: int | None = None  # the first n attacked points for it (None: all of them)


@dataclass(frozen=True)
class SweepConfig:
    alphas: tuple[float, ...] = (0.0, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
    standard_scales: tuple[float, ...] = (1.0,)
    robust_scales: tuple[float, ...] = (1.0,)
    n_robust: int = 200  # validation points attacked for each grid point
    attack: str = "apgd"  # "apgd" (APGD-CE + APGD-T) or "pgd"
    attack_steps: int = 20
    keep_robust: float = 0.97  # keep at least this fraction of the robust model's robust accuracy
    seed: int = 0


@dataclass(frozen=True)
class DemoConfig:
    n_autoattack: int = 60  # test points under standard AutoAttack (the slow part: about 5 s per point for three rows on 2 CPU cores)
    autoattack_version: str = "standard"  # or plus, rand; apgd (APGD-CE + APGD-T) or apgd-ce: quick looks
    seed: int = 0


@dataclass(frozen=True)
class MixerConfig:
    """The mixing network and its training (paper values in comments where ours differ)."""

    standard_layers: tuple[str, ...] = ("stage1", "stage2")  # an early and a middle stage
    robust_layers: tuple[str, ...] = ("stage1", "stage2")
    width: int = 32
    blocks: int = 2
    stages: int = 2  # learned stride-2 stages of the gate after its blocks (paper: 3 for two ResNet-18s)
    gamma_scale: float = 2.0  # k in γ = k·BN(γ_raw) + b (paper: 2)
    gamma_bias: float = 0.4  # b (paper: 0.4 in training)
    gamma_clamp: float | None = 0.6  # training: γ_raw clamped to the batch mean ± 0.6·std (paper); null: none
    bn_momentum: float = 0.01  # γ's BatchNorm1d momentum (paper: 0.01)
    standard_scale: float = 1.0
    robust_scale: float = 2.0  # s_h; the val sweep of the fixed mixture favours a sharper robust softmax
    epochs: int = 1  # paper: a few epochs on GPUs; one is what a 2-core CPU affords for Fashion-MNIST
    batch_size: int = 128
    accumulate: int = 1  # mini-batches of batch_size per optimiser step (paper: 4, with 160 per mini-batch)
    lr: float = 1e-3  # paper: 5e-5 to 1e-4 for a few epochs on CIFAR; a fresh small mixer wants more
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    grad_clip: float = 1.0
    c_bce: float = 1.5
    c_ce: float = 0.0
    c_prod: float = 0.25  # paper: 0.2 to 0.3
    # what the gate's BCE asks for: "attacked" (the paper's: α → 1 on every attacked copy, → 0 on every clean
    # image) or "useful" (α → 0 only where the standard model is right and the robust one wrong, on clean and
    # attacked inputs alike; → 1 everywhere else), so that α stays low only where the robust model errs
    gate_target: str = "attacked"
    # loss weight multiplier of the clean inputs where the standard model alone is right: > 1 keeps the paper's
    # target but asks harder for a low α exactly where the standard model earns clean accuracy (1: the paper's)
    standard_alone_weight: float = 1.0
    attack_method: str = "apgd"  # "apgd": the paper's official APGD-CE + APGD-T copies; "pgd": our older sign-PGD
    attack_copies: int = 2  # apgd: attacked copies per clean image, 1 APGD-CE + (K-1) APGD-T (paper: 10)
    attack_max_iters: int | None = 30  # apgd: cap on the χ² draws (paper: none); pgd: the draws' mean is half of it
    attack_iters_df: float = 12.0  # iterations per attack ~ round(χ²(df)) (paper: 75)
    attack_eps_low: float = 0.4
    attack_eps_high: float = 1.1
    attack_w_max: float = 0.6  # paper: 0.4; ours covers the w = 0.5 of the evaluation attack
    attack_n_targets: int = 9  # pgd only: targets drawn from the 9 most likely wrong classes
    # apgd: copies per clean image made by the official Square (random search on the composite's margin, no
    # gradient) beside the APGD ones, so that the gate also sees what a search attack finds (0: none)
    attack_square_copies: int = 0
    attack_square_queries: int = 300  # queries of each Square copy (AutoAttack's evaluation: 5000)
    # apgd: copies per clean image made by the official FAB-T (the smallest crossing of the composite's
    # boundary towards its 2nd, 3rd, ... ranked class, projected onto the ε-ball) (0: none)
    attack_fab_copies: int = 0
    attack_fab_iters: int = 20  # iterations of each FAB-T copy (AutoAttack's evaluation: 100)
    attack_untargeted_share: float = 0.5  # pgd only
    clean_weight: float | None = None  # loss weight of a clean example (attacked ones: 1); null: attack_copies
    attack_chunk: int = 0  # examples per independently seeded attack piece; 0: the whole batch at once.
    # Set it (e.g. batch_size / number of processes) to make a run's result independent of the process count.
    checkpoint_every: int = 100  # optimiser steps
    init_from: str | None = None  # a saved mixer (stem) whose gate starts the training (fine-tuning); null: fresh
    train_examples: int | None = None  # a seeded subset of the training split of this size; null: all of it
    # "train+val": all training images, as the paper's trainer does; allowed only with alpha_range and
    # eval_gamma_bias given, since calibration would otherwise choose on images the gate was trained on
    train_split: str = "train"
    gate: str = "adasmooth"  # "adasmooth": MixingNetwork (width, blocks, stages); "paper": the released architecture
    separation_every: int = 100  # > 0: every so many steps, log the gate's AUROC on held-out validation points
    calibration_strategy: str = "floor"  # floor: bisect over α_lo; scan: candidates by clean accuracy (see calibrate_gate)
    # official AutoAttack sub-attacks added to every calibration check (floor, scan), after the gate-aware ones:
    # Square needs no gradient and finds what a gate that masks gradients hides; [] for the gradient set only
    calibration_autoattack: tuple[str, ...] = ("fab-t", "square")
    calibration_square_queries: int = 5000  # AutoAttack's standard budget
    # test-time s_h values searched beside γ and the α range (each checked like the rest); empty: the training s_h
    calibration_robust_scales: tuple[float, ...] = ()
    # where candidates' clean accuracy is measured: "split", every validation image (the checks still attack the
    # n_calibrate points); "points", the calibration points alone (a few examples decide between floors)
    calibration_clean: str = "split"
    separation_n: int = 200  # validation points of that check (gate-aware APGD-CE final iterates, 4 values of w)
    alpha_range: tuple[float, ...] = ()  # [lo, hi] used as given; empty: calibrated on validation after training
    eval_gamma_bias: float | None = None  # b at evaluation used as given; null: calibrated with the α range
    amp: bool = False  # bfloat16 autocast for the attack and the mixer step (meant for GPUs)
    tensorboard: bool = True  # also log to <out>/tensorboard when the tensorboard package is installed
    seed: int = 0


@dataclass(frozen=True)
class NonlinearConfig:
    """MixedNUTS-style nonlinear mixing: a map on the robust logits, then one α. ``adasmooth calibrate``
    chooses scale, shift, power and alpha on validation and can write them here."""

    n_calibrate: int = 1000  # validation points: clean-wrong and attacked-correct margins come from these
    beta: float = 0.98  # share of attacked-correct margins kept above (1-α)/α
    k: int = 4  # top-k logits that set the layer norm
    attack_iters: int = 50  # APGD-CE + APGD-T (3 targets) on the robust model, for the attacked margins
    scale: float | None = None
    shift: float | None = None
    power: float | None = None
    alpha: float | None = None
    seed: int = 0
    standard_map: str = "identity"  # or "hard-one-hot": the standard model's vote as one-hot (MixedNUTS' tuned rows)


@dataclass(frozen=True)
class CertifyConfig:
    """Certified ℓ2 robustness by randomized smoothing (Cohen et al.) and of α-mixtures (``adasmooth certify``)."""

    sigmas: tuple[float, ...] = (0.25, 0.5)  # noise levels of the shipped noise-trained bases
    alphas: tuple[float, ...] = (0.6, 0.7, 0.8, 0.9, 0.95, 1.0)  # mixtures certified (α >= 1/2)
    radii: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)  # ℓ2 radii of the reported curves
    n_points: int = 500  # test points
    n0: int = 100  # selection samples per point
    n: int = 10_000  # estimation samples per point
    delta: float = 0.001  # failure probability of each certificate
    batch_size: int = 1000  # noisy inputs per forward pass
    seed: int = 0


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    bases: BasesConfig = field(default_factory=BasesConfig)
    threat: ThreatConfig = field(default_factory=ThreatConfig)
    train_standard: TrainConfig = field(default_factory=TrainConfig)
    train_adversarial: TrainConfig = field(default_factory=lambda: TrainConfig(  # the shipped base's recipe
        epochs=12, ema_decay=0.998, width_multiplier=2.0, amp=True))
    train_noise: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10))  # Gaussian augmentation
    train_trades: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=10, attack_steps=7, attack_step_size=0.03, ema_decay=0.998, width_multiplier=1.5))
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    mixer: MixerConfig = field(default_factory=MixerConfig)
    nonlinear: NonlinearConfig = field(default_factory=NonlinearConfig)
    certify: CertifyConfig = field(default_factory=CertifyConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PACKAGED_CONFIGS = ("fmnist", "cifar10", "cifar100")
DEFAULT_CONFIG = "fmnist"


def packaged_config_path(name: str) -> Path:
    """The config file shipped inside the package (``fmnist``: the embedded default; ``cifar10``,
    ``cifar100``: the paper's settings), found through ``importlib.resources``."""
    from importlib import resources

    if name not in PACKAGED_CONFIGS:
        raise ConfigError(f"no packaged config named {name!r}; packaged: {', '.join(PACKAGED_CONFIGS)}")
    return Path(str(resources.files("adasmooth").joinpath("assets", "configs", f"{name}.yaml")))


def resolve_config_path(path_or_name: str | Path | None) -> Path:
    """A config file: an existing path as given, a packaged config by name (``fmnist``, ``cifar100``), and
    for None the packaged embedded default, so that commands run from any folder."""
    if path_or_name is None:
        return packaged_config_path(DEFAULT_CONFIG)
    if str(path_or_name) in PACKAGED_CONFIGS and not Path(path_or_name).exists():
        return packaged_config_path(str(path_or_name))
    return Path(path_or_name)


def load_config(path: str | Path | None = None) -> Config:
    """Read a YAML file into a :class:`Config`; missing keys take their defaults. ``path`` may also name a
    packaged config (``fmnist``, ``cifar10``, ``cifar100``); None reads the embedded default's."""
    path = resolve_config_path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return config_from_dict(raw or {}, source=str(path))


def config_from_dict(raw: dict, *, source: str = "<dict>") -> Config:
    cfg = _build(Config, raw, source, "")
    check_values(cfg, source)
    return cfg


def _build(cls, raw: Any, source: str, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: '{where or '<top>'}' must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"{source}: unknown key '{key}' (known here: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in raw.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(hints[name], value, source, key)
    return cls(**kwargs)


def _coerce(tp, value, source: str, key: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, source, key)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, source, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' must be a list, got {value!r}")
        (elem, _) = typing.get_args(tp)
        return tuple(_coerce(elem, v, source, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: '{key}' must be a string, got {value!r}")
        return value
    raise ConfigError(f"{source}: '{key}' has an unsupported type {tp}")  # pragma: no cover
