"""Bundles restore the whole composite without the config; RobustBench model info comes from real results."""

import json

import pytest
import torch

from adasmooth import load_bundle
from adasmooth.bundle import robustbench_model_info, save_bundle
from adasmooth.cli import main
from adasmooth.io import CheckpointError, save_model
from adasmooth.mixer import AdaptiveMixedClassifier, MixingNetwork
from adasmooth.mixing import MixedClassifier
from adasmooth.models import SmallResNet, build
from adasmooth.transforms import MixedNUTSMap

ARCH = {"architecture": "small_resnet", "arch_args": {"width": 4}}


def _bases():
    torch.manual_seed(0)
    return build("small_resnet", width=4).eval(), build("small_resnet", width=4).eval()


def test_fixed_and_nonlinear_mixtures_round_trip(tmp_path):
    std, rob = _bases()
    x = torch.rand(5, 1, 28, 28)
    model = MixedClassifier(std, rob, alpha=0.8, standard_scale=2.0, robust_map=MixedNUTSMap(scale=2.0, shift=0.5, power=2.0, k=4)).eval()
    save_bundle(tmp_path / "b", model, standard_arch=ARCH, robust_arch=ARCH)
    again = load_bundle(tmp_path / "b")
    assert isinstance(again, MixedClassifier) and again.alpha == 0.8
    assert torch.allclose(again(x), model(x), atol=1e-6)


def test_adaptive_round_trip_keeps_gate_and_batchnorm(tmp_path):
    std, rob = _bases()
    layers = ["stage1", "stage2"]
    gate = MixingNetwork.from_models(std, rob, standard_layers=layers, robust_layers=layers, input_shape=(1, 28, 28),
                                     width=8, blocks=1)
    ada = AdaptiveMixedClassifier(std, rob, gate, standard_layers=layers, robust_layers=layers, alpha_range=(0.6, 0.95))
    ada.train()
    ada(torch.rand(16, 1, 28, 28))  # move γ's BatchNorm statistics away from their initial values
    ada.eval()
    save_bundle(tmp_path / "a", ada, standard_arch=ARCH, robust_arch=ARCH)
    again = load_bundle(tmp_path / "a")
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(again(x), ada(x), atol=1e-6) and torch.allclose(again.alpha(x), ada.alpha(x), atol=1e-6)
    with pytest.raises(CheckpointError, match="not an adasmooth bundle"):
        save_model(tmp_path / "plain", SmallResNet(width=4), **ARCH)
        load_bundle(tmp_path / "plain")


def test_model_info_needs_autoattack_and_reports_the_worst_case():
    res = {"n": 100, "eps": 0.1, "norm": "Linf", "clean_accuracy": 0.9, "robust_accuracy": 0.61,
           "attacks": [{"name": "pgd", "type": "pgd", "accuracy": 0.7},
                       {"name": "autoattack-standard", "type": "autoattack", "accuracy": 0.62}]}
    info = robustbench_model_info(res, name="x", architecture="a + b", dataset="cifar10")
    assert info["autoattack_acc"] == 0.61 and info["clean_acc"] == 0.9 and info["eps"] == 0.1
    assert "100 cifar10 test points" in info["footnote"]
    with pytest.raises(ValueError, match="no AutoAttack"):
        robustbench_model_info({**res, "attacks": res["attacks"][:1]}, name="x", architecture="a", dataset="c")


def test_export_command(tmp_path, capsys):
    std, rob = _bases()
    save_model(tmp_path / "std", std, **ARCH)
    save_model(tmp_path / "rob", rob, **ARCH)
    res = {"n": 10, "eps": 0.1, "norm": "Linf", "clean_accuracy": 0.5, "robust_accuracy": 0.2,
           "attacks": [{"name": "autoattack-standard", "type": "autoattack", "accuracy": 0.2}]}
    (tmp_path / "r.json").write_text(json.dumps(res))
    assert main(["export", "--alpha", "0.7", "--standard", str(tmp_path / "std"), "--robust", str(tmp_path / "rob"),
                 "--results", str(tmp_path / "r.json"), "--out", str(tmp_path / "ex")]) == 0
    info = json.loads((tmp_path / "ex" / "model_info.json").read_text())
    assert info["autoattack_acc"] == 0.2 and info["architecture"] == "small_resnet + small_resnet"
    model = load_bundle(tmp_path / "ex" / "model")
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(model(x), MixedClassifier(std, rob, alpha=0.7)(x), atol=1e-6)
