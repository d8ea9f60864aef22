"""The paper's CIFAR configurations load, name what a user must set, and build a composite (tiny variant,
random weights) whose feature taps and class counts fit."""

import dataclasses
import importlib.util
from pathlib import Path

import pytest
import torch

from adasmooth.bases import build_base, load_bases
from adasmooth.config import load_config
from adasmooth.io import CheckpointError
from adasmooth.mixer import AdaptiveMixedClassifier, MixingNetwork

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _tiny(spec, **args):
    return dataclasses.replace(spec, args={**spec.args, **args})


@pytest.mark.parametrize("name,classes,scales", [("cifar10", 10, (1.2, 0.5)), ("cifar100", 100, (2.0, 1.0))])
def test_paper_config_builds_a_composite_with_random_weights(name, classes, scales):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.data.name == name and cfg.threat.eps == pytest.approx(8 / 255)
    m = cfg.mixer
    assert (m.standard_scale, m.robust_scale) == scales
    assert tuple(m.alpha_range) == (0.84, 0.99) and m.eval_gamma_bias == 1.3 and m.gamma_bias == 0.4
    assert (m.c_bce, m.attack_iters_df, m.attack_w_max, m.attack_eps_low, m.attack_eps_high) == (1.5, 75.0, 0.4, 0.4, 1.1)
    # the robust side as configured, shrunk from WRN-70-16 to WRN-10-1; the standard side likewise a small
    # WRN unless timm is installed (then the configured BiT family at its smallest width)
    rob = build_base(_tiny(cfg.bases.robust, depth=10, width=1), num_classes=classes, input_shape=(3, 32, 32),
                     random_weights=True, role="robust")
    assert rob.logits.out_features == classes
    if importlib.util.find_spec("timm") is not None:
        std_spec = dataclasses.replace(cfg.bases.standard, architecture="timm:resnetv2_50x1_bit", args={
            **cfg.bases.standard.args, "input_size": 64})
        std_layers = list(m.standard_layers)
    else:
        std_spec = dataclasses.replace(cfg.bases.robust, args={**cfg.bases.robust.args, "depth": 10, "width": 1,
                                                               "input_size": 64})
        std_layers = ["model.layer.0", "model.layer.1"]  # the same depth of the resize-wrapped network
    std = build_base(std_spec, num_classes=classes, input_shape=(3, 32, 32), random_weights=True, role="standard")
    gate = MixingNetwork.from_models(std, rob, standard_layers=std_layers, robust_layers=list(m.robust_layers),
                                     input_shape=(3, 32, 32), width=16, blocks=1)
    ada = AdaptiveMixedClassifier(std, rob, gate, standard_layers=std_layers, robust_layers=list(m.robust_layers),
                                  gamma_scale=m.gamma_scale, gamma_bias=m.eval_gamma_bias,
                                  alpha_range=tuple(m.alpha_range), standard_scale=m.standard_scale,
                                  robust_scale=m.robust_scale).eval()
    x = torch.rand(3, 3, 32, 32)
    out, alpha = ada(x), ada.alpha(x)
    assert out.shape == (3, classes) and torch.allclose(out.exp().sum(1), torch.ones(3), atol=1e-5)
    assert ((alpha >= 0.84) & (alpha <= 0.99)).all()


def test_missing_weights_name_the_papers_file(tmp_path):
    cfg = load_config(CONFIGS / "cifar100.yaml")
    with pytest.raises(CheckpointError, match="cifar100_linf_edm_wrn70-16.pt"):
        build_base(cfg.bases.robust, role="robust")
    spec = dataclasses.replace(cfg.bases.robust, weights=str(tmp_path / "nope.pt"))
    with pytest.raises(CheckpointError, match="not found.*Wang2023Better"):
        build_base(spec, role="robust")


def test_class_count_mismatch_between_base_and_data_is_an_error():
    cfg = load_config(CONFIGS / "cifar100.yaml")
    spec = _tiny(cfg.bases.robust, depth=10, width=1, num_classes=10)
    with pytest.raises(ValueError, match="10 classes, the data set has 100"):
        build_base(spec, num_classes=100, input_shape=(3, 32, 32), random_weights=True, role="robust")
    bad = dataclasses.replace(cfg, bases=dataclasses.replace(cfg.bases, robust=spec, standard=spec))
    with pytest.raises(ValueError, match="data set has 100"):
        load_bases(bad, random_weights=True)
