"""The allowed values of every setting: a range per numeric key and the rules that tie keys together,
checked when a config loads, with the key, the file and the allowed range in the message."""

from __future__ import annotations

AUTOATTACK_SUB_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")  # the official package's names


class ConfigError(ValueError):
    """A config file has an unknown key, a wrong type or an impossible value."""


_TRAIN_RANGES = {"epochs": "int>=1", "batch_size": "int>=1", "lr": ">0", "momentum": "[0,1)", "weight_decay": ">=0",
                 "attack_steps": "int>=1", "attack_step_size": ">0", "trades_beta": ">0", "ema_decay": "(0,1)",
                 "width_multiplier": ">0", "label_smoothing": "[0,1)", "random_erasing": "[0,1]", "seed": "int>=0",
                 "blocks": "int>=1"}
# every numeric setting and the range it must lie in (a tuple's elements each); null stays allowed where typed so
RANGES: dict[str, str] = {
    "threat.eps": ">0",
    **{f"{kind}.{k}": r for kind in ("train_standard", "train_adversarial", "train_noise", "train_trades")
       for k, r in _TRAIN_RANGES.items()},
    "evaluate.n": "int>=1", "evaluate.pgd_steps": "int>=1", "evaluate.pgd_step_size": ">0",
    "evaluate.pgd_restarts": "int>=1", "evaluate.batch_size": "int>=1", "evaluate.seed": "int>=0",
    "evaluate.separation_iters": "int>=1", "evaluate.separation_square_queries": "int>=0",
    "evaluate.separation_n": "int>=1",
    "sweep.alphas": "[0,1]", "sweep.standard_scales": ">0", "sweep.robust_scales": ">0", "sweep.n_robust": "int>=1",
    "sweep.attack_steps": "int>=1", "sweep.keep_robust": "(0,1]", "sweep.seed": "int>=0",
    "demo.n_autoattack": "int>=1", "demo.seed": "int>=0",
    "mixer.width": "int>=1", "mixer.blocks": "int>=0", "mixer.stages": "int>=0", "mixer.gamma_scale": ">0",
    "mixer.gamma_clamp": ">0", "mixer.bn_momentum": "(0,1]", "mixer.standard_scale": ">0",
    "mixer.robust_scale": ">0", "mixer.epochs": "int>=1", "mixer.batch_size": "int>=1", "mixer.lr": ">0",
    "mixer.accumulate": "int>=1",
    "mixer.weight_decay": ">=0", "mixer.warmup_fraction": "[0,1)", "mixer.grad_clip": ">0", "mixer.c_bce": ">=0",
    "mixer.c_ce": ">=0", "mixer.c_prod": ">=0", "mixer.attack_copies": "int>=1", "mixer.attack_max_iters": "int>=1",
    "mixer.attack_iters_df": ">0", "mixer.attack_eps_low": ">0", "mixer.attack_eps_high": ">0",
    "mixer.attack_w_max": "[0,1]", "mixer.attack_n_targets": "int>=1", "mixer.attack_square_copies": "int>=0",
    "mixer.attack_square_queries": "int>=1", "mixer.attack_fab_copies": "int>=0", "mixer.attack_fab_iters": "int>=1", "mixer.attack_untargeted_share": "[0,1]", "mixer.clean_weight": ">0", "mixer.standard_alone_weight": ">0",
    "mixer.attack_chunk": "int>=0", "mixer.checkpoint_every": "int>=1", "mixer.train_examples": "int>=1",
    "mixer.separation_every": "int>=0", "mixer.calibration_square_queries": "int>=1",
    "mixer.calibration_robust_scales": ">0", "mixer.separation_n": "int>=1",
    "mixer.alpha_range": "[0,1]", "mixer.seed": "int>=0",
    "nonlinear.n_calibrate": "int>=1", "nonlinear.beta": "(0,1]", "nonlinear.k": "int>=1",
    "nonlinear.attack_iters": "int>=1", "nonlinear.scale": ">0", "nonlinear.power": ">0", "nonlinear.alpha": "[0,1]",
    "nonlinear.seed": "int>=0",
    "certify.sigmas": ">0", "certify.alphas": "[0.5,1]", "certify.radii": ">=0", "certify.n_points": "int>=1",
    "certify.n0": "int>=1", "certify.n": "int>=1", "certify.delta": "(0,1)", "certify.batch_size": "int>=1",
    "certify.seed": "int>=0",
}


def _in_range(value: float, rule: str) -> bool:
    rule = rule.removeprefix("int")
    if rule.startswith(">="):
        return value >= float(rule[2:])
    if rule.startswith(">"):
        return value > float(rule[1:])
    lo, hi = (float(v) for v in rule[1:-1].split(","))
    return (lo <= value if rule[0] == "[" else lo < value) and (value <= hi if rule[-1] == "]" else value < hi)


def _check_ranges(cfg, source: str) -> None:
    for key, rule in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if v is not None and not _in_range(v, rule):
                shown = list(value) if isinstance(value, tuple) else value
                raise ConfigError(f"{source}: '{key}' must be {_describe(rule)}, got {shown}")


def _describe(rule: str) -> str:
    kind, bound = ("an integer ", rule[3:]) if rule.startswith("int") else ("", rule)
    if bound.startswith(">="):
        return f"{kind}at least {bound[2:]}"
    if bound.startswith(">"):
        return f"{kind}greater than {bound[1:]}"
    return f"{kind}in {bound}"


def check_values(cfg, source: str) -> None:
    """Raise :class:`ConfigError` for the first value out of its range or rule (``cfg`` a ``Config``)."""
    _check_ranges(cfg, source)
    if cfg.threat.norm not in ("Linf", "L2"):
        raise ConfigError(f"{source}: 'threat.norm' must be Linf or L2, got {cfg.threat.norm!r}")
    if cfg.sweep.attack not in ("apgd", "pgd"):
        raise ConfigError(f"{source}: 'sweep.attack' must be apgd or pgd, got {cfg.sweep.attack!r}")
    m = cfg.mixer
    if m.alpha_range and (len(m.alpha_range) != 2 or not 0.0 <= m.alpha_range[0] <= m.alpha_range[1] <= 1.0):
        raise ConfigError(f"{source}: 'mixer.alpha_range' must be empty or [lo, hi] with 0 <= lo <= hi <= 1, "
                          f"got {list(m.alpha_range)}")
    if (m.eval_gamma_bias is None) != (not m.alpha_range):
        raise ConfigError(f"{source}: 'mixer.alpha_range' and 'mixer.eval_gamma_bias' go together: give both "
                          "(used as given) or neither (calibrated on validation)")
    if len(m.standard_layers) != len(m.robust_layers) or not m.standard_layers:
        raise ConfigError(f"{source}: 'mixer.standard_layers' and 'robust_layers' must name the same number (>= 1) "
                          "of layers")
    if m.attack_method not in ("apgd", "pgd"):
        raise ConfigError(f"{source}: 'mixer.attack_method' must be apgd or pgd, got {m.attack_method!r}")
    if not 0 < m.attack_eps_low <= m.attack_eps_high:
        raise ConfigError(f"{source}: 'mixer.attack_eps_low' and 'attack_eps_high' need 0 < low <= high, got "
                          f"{m.attack_eps_low}, {m.attack_eps_high}")
    if m.attack_method == "pgd" and m.attack_max_iters is None:
        raise ConfigError(f"{source}: 'mixer.attack_max_iters' is needed by attack_method pgd")
    for key in ("attack_square_copies", "attack_fab_copies"):
        if getattr(m, key) and m.attack_method != "apgd":
            raise ConfigError(f"{source}: 'mixer.{key}' needs attack_method apgd")
    bad = [a for a in m.calibration_autoattack if a not in AUTOATTACK_SUB_ATTACKS]
    if bad:
        raise ConfigError(f"{source}: 'mixer.calibration_autoattack' takes AutoAttack sub-attacks "
                          f"({', '.join(AUTOATTACK_SUB_ATTACKS)}), got {bad}")
    if m.train_split not in ("train", "train+val"):
        raise ConfigError(f"{source}: 'mixer.train_split' must be train or train+val, got {m.train_split!r}")
    if m.train_split == "train+val" and not m.alpha_range:
        raise ConfigError(f"{source}: 'mixer.train_split: train+val' trains on the validation images that calibration "
                          "would choose on: give mixer.alpha_range and eval_gamma_bias (used as given), or train on train")
    if m.gate_target not in ("attacked", "useful"):
        raise ConfigError(f"{source}: 'mixer.gate_target' must be attacked or useful, got {m.gate_target!r}")
    if m.gate not in ("adasmooth", "paper"):
        raise ConfigError(f"{source}: 'mixer.gate' must be adasmooth or paper, got {m.gate!r}")
    if m.calibration_clean not in ("split", "points"):
        raise ConfigError(f"{source}: 'mixer.calibration_clean' must be split or points, got {m.calibration_clean!r}")
    if m.calibration_strategy not in ("floor", "scan", "bisect"):
        raise ConfigError(f"{source}: 'mixer.calibration_strategy' must be floor, scan or bisect, got "
                          f"{m.calibration_strategy!r}")
    if cfg.nonlinear.standard_map not in ("identity", "hard-one-hot"):
        raise ConfigError(f"{source}: 'nonlinear.standard_map' must be identity or hard-one-hot, got "
                          f"{cfg.nonlinear.standard_map!r}")
    if cfg.demo.autoattack_version not in ("standard", "plus", "rand", "apgd", "apgd-ce"):
        raise ConfigError(f"{source}: 'demo.autoattack_version' must be standard, plus, rand, apgd (APGD-CE + "
                          f"APGD-T only) or apgd-ce (APGD-CE only), got {cfg.demo.autoattack_version!r}")
