"""The paper's released artifacts load as they are: mixing networks (trainer checkpoints and whole-composite
state dicts), BiT in Google's PyTorch and TensorFlow layouts, DeepMind-layout WRNs saved inside a Sequential,
and MixedNUTS' published maps. Every file here is built in the released key layout with random weights."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from official_layouts import bit_as_tensorflow

from adasmooth.cli import main
from adasmooth.gates import PaperMixingNetwork
from adasmooth.io import CheckpointError, load_tensors
from adasmooth.mixer import load_adaptive
from adasmooth.models import bit_to_timm, build, load_weights
from adasmooth.models.wide_resnet import CIFAR100_MEAN, CIFAR100_STD
from adasmooth.released import RELEASED_SETTINGS, load_released_mixer
from adasmooth.transforms import MixedNUTSMap


def _release_gate_keys(planes, version):
    """The released MixingNet's state-dict keys, enumerated from its description (three stride-2 stages of two
    pre-activation blocks; a 1x1 shortcut in each stage's first block; V4's conv1x1; a linear map, no bias)."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"linear.weight"} | ({"conv1x1.weight"} if version == 4 else set())
    for i in range(3):
        for j in range(2):
            p = f"layers.{i}.{j}."
            keys |= {p + f"{b}.{leaf}" for b in ("bn1", "bn2") for leaf in bn} | {p + "conv1.weight", p + "conv2.weight"}
            keys |= {p + "shortcut.0.weight"} if j == 0 else set()
    return keys


def _randomise(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif t.is_floating_point():
                t.copy_(0.05 * torch.randn(t.shape, generator=g))
    return module


def test_the_release_gate_has_the_released_keys_and_shapes():
    gate = PaperMixingNetwork((512, 256), version=4)
    sd = gate.state_dict()
    assert set(sd) == _release_gate_keys((768, 512, 768, 1024), 4) and len(sd) == 77
    assert sd["layers.0.0.conv1.weight"].shape == (512, 768, 3, 3)  # BiT block1 (512) + WRN layer.0 (256)
    assert sd["conv1x1.weight"].shape == (512, 1536, 1, 1)  # BiT block2 (1024) + WRN layer.1 (512)
    assert sd["layers.2.1.conv2.weight"].shape == (1024, 1024, 3, 3) and sd["linear.weight"].shape == (1, 1024)
    v3 = PaperMixingNetwork((64, 64), version=3).state_dict()
    assert set(v3) == _release_gate_keys((128, 256, 512, 1024), 3)


@pytest.fixture(scope="module")
def tiny_release(tmp_path_factory):
    """A tiny BiT (R?x1 at 128x128) and WRN-10-16 pair with a V4 gate on in_planes (256, 256), saved as the
    release saves them: BiT in a DataParallel .tar, the WRN in a Sequential's model_state_dict without its
    normalisation, the gate as a trainer checkpoint and inside a whole composite's state dict."""
    root = tmp_path_factory.mktemp("release")
    bit = _randomise(build("bit_resnetv2", block_units=[1, 1, 1, 1], width_factor=1, num_classes=100), 1)
    wrn = _randomise(build("wide_resnet", depth=10, width=16, num_classes=100, activation="swish",
                           mean=CIFAR100_MEAN, std=CIFAR100_STD), 2)
    gate = _randomise(PaperMixingNetwork((256, 256), version=4), 3)
    bn = {"running_mean": torch.tensor([0.3]), "running_var": torch.tensor([0.02]),
          "num_batches_tracked": torch.tensor(7)}
    torch.save({"model": {f"module.{k}": v for k, v in bit.state_dict().items()}, "step": 5}, root / "bit.tar")
    torch.save({"model_state_dict": {f"module.0.{k}": v for k, v in wrn.state_dict().items() if k not in ("mean", "std")}},
               root / "wrn.pt")
    torch.save({"model": gate.state_dict(), "bn": bn, "ep": 3, "optimizer": {"state": {}, "param_groups": []}},
               root / "trainer.pt")
    scalars = {"gamma_scale": 2.0, "gamma_bias": 1.3, "alpha_scale": 0.15, "alpha_bias": 0.84, "std_scale": 2.0,
               "rob_scale": 1.0, "gamma": 0.0}
    composite = {**{f"comp_model.module.models.0.{k}": v for k, v in bit.state_dict().items()},
                 **{f"comp_model.module.models.1.{k}": v for k, v in wrn.state_dict().items()},
                 **{f"comp_model.module.policy_net.{k}": v for k, v in gate.state_dict().items()},
                 **{f"comp_model.module.bn.{k}": v for k, v in bn.items()},
                 **{f"comp_model.module.{k}": torch.tensor(v) for k, v in scalars.items()}}
    torch.save(composite, root / "composite.pt")
    return {"root": root, "bit": bit, "wrn": wrn, "gate": gate, "bn": bn}


def _pair(release):
    std = build("bit_resnetv2", block_units=[1, 1, 1, 1], width_factor=1, num_classes=100, input_size=128)
    load_weights(std, release["root"] / "bit.tar")
    rob = build("wide_resnet", depth=10, width=16, num_classes=100, activation="swish", mean=CIFAR100_MEAN,
                std=CIFAR100_STD)
    load_weights(rob, release["root"] / "wrn.pt")
    return std, rob


def _published_formula(release, x):
    """log((1-α)·softmax(2g) + α·softmax(h)), α = 0.84 + 0.15·σ(2·BN(γ_raw) + 1.3), every piece by hand."""
    bit, wrn, gate, bn = release["bit"].eval(), release["wrn"].eval(), release["gate"].eval(), release["bn"]
    x128 = F.interpolate(x, size=(128, 128), mode="bilinear", align_corners=False)
    f1 = bit.body.block1(bit.root((x128 - 0.5) / 0.5))
    f2 = bit.body.block2(f1)
    w1 = wrn.layer[0](wrn.init_conv((x - wrn.mean) / wrn.std))
    w2 = wrn.layer[1](w1)
    # the release's forward: stage 1 on the first depths, plus the 1x1 projection of the second depths
    h = gate.layers[0](torch.cat([f1, w1], 1)) + gate.conv1x1(torch.cat([f2, w2], 1))
    raw = gate.linear(gate.layers[2](gate.layers[1](h)).mean(dim=(2, 3))).view(-1)
    gamma = 2.0 * (raw - bn["running_mean"]) / torch.sqrt(bn["running_var"] + 1e-5) + 1.3
    alpha = (0.84 + 0.15 * torch.sigmoid(gamma)).view(-1, 1)
    return torch.log((1 - alpha) * torch.softmax(2.0 * bit(x128), 1) + alpha * torch.softmax(wrn(x), 1)), alpha


def test_released_composite_equals_the_published_formula_from_either_file_layout(tiny_release):
    std, rob = _pair(tiny_release)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, want_alpha = _published_formula(tiny_release, x)
        trainer = load_released_mixer(tiny_release["root"] / "trainer.pt", std, rob, in_planes=(256, 256),
                                      settings="cifar100-edm")
        composite = load_released_mixer(tiny_release["root"] / "composite.pt", std, rob, in_planes=(256, 256))
        for model in (trainer, composite):
            assert torch.allclose(model(x), want, atol=1e-5)
            assert torch.allclose(model.alpha(x), want_alpha.view(-1), atol=1e-6)
    assert composite.alpha_range == pytest.approx((0.84, 0.99)) and trainer.standard_layers[0] == "model.body.block1"


def test_released_alpha_stays_in_its_range_and_each_example_is_independent_in_eval(tiny_release):
    std, rob = _pair(tiny_release)
    model = load_released_mixer(tiny_release["root"] / "trainer.pt", std, rob, in_planes=(256, 256),
                                settings="cifar10-edm")
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        alpha, out = model.alpha(x), model(x)
        single = torch.cat([model(x[i:i + 1]) for i in range(5)])
    lo, hi = RELEASED_SETTINGS["cifar10-edm"]["alpha_range"]
    assert ((alpha >= lo) & (alpha <= hi)).all() and alpha.std() > 0
    assert torch.allclose(out, single, atol=1e-5)


def test_release_files_that_do_not_fit_name_the_keys(tiny_release, tmp_path):
    std, rob = _pair(tiny_release)
    sd = dict(tiny_release["gate"].state_dict())
    sd.pop("conv1x1.weight")  # a V3 checkpoint read as V4 would lack it; here a cut file
    sd["extra.weight"] = torch.zeros(1)
    torch.save({"model": sd, "bn": tiny_release["bn"]}, tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match=r"missing keys \['layers.*unexpected \['extra.weight'\]|unexpected"):
        load_released_mixer(tmp_path / "cut.pt", std, rob, in_planes=(256, 256), settings="cifar100-edm")
    with pytest.raises(CheckpointError, match="wrong shape.*in_planes"):
        load_released_mixer(tiny_release["root"] / "trainer.pt", std, rob, in_planes=(512, 256), settings="cifar100-edm")
    with pytest.raises(ValueError, match="no evaluation settings.*cifar100-edm"):
        load_released_mixer(tiny_release["root"] / "trainer.pt", std, rob, in_planes=(256, 256))
    torch.save({"weights": [1, 2]}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="neither a trainer checkpoint"):
        load_released_mixer(tmp_path / "other.pt", std, rob, in_planes=(256, 256), settings="cifar100-edm")


def test_import_mixer_saves_a_fingerprinted_adasmooth_mixer(tiny_release, tmp_path, capsys):
    import yaml

    std, rob = _pair(tiny_release)
    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "cifar100.yaml").read_text())
    cfg["bases"]["standard"]["args"].update(block_units=[1, 1, 1, 1], width_factor=1)
    cfg["bases"]["standard"]["weights"] = str(tiny_release["root"] / "bit.tar")
    cfg["bases"]["robust"]["args"].update(depth=10, width=16)
    cfg["bases"]["robust"]["weights"] = str(tiny_release["root"] / "wrn.pt")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    args = ["import-mixer", str(tiny_release["root"] / "trainer.pt"), "--config", str(tmp_path / "cfg.yaml"),
            "--settings", "cifar100-edm", "--in-planes", "256", "256", "--out", str(tmp_path / "mixer")]
    assert main(args) == 0
    assert "PaperMixingNetwork v4" in capsys.readouterr().out
    saved = load_adaptive(tmp_path / "mixer", std, rob)
    direct = load_released_mixer(tiny_release["root"] / "trainer.pt", std, rob, in_planes=(256, 256),
                                 settings="cifar100-edm")
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(saved(x), direct(x))
    assert main([*args[:-2], "--out", str(tmp_path / "m2"), "--settings", "nope"]) == 2
    assert "no released settings named 'nope'" in capsys.readouterr().err


def test_bit_loads_from_tensorflow_npz_and_converts_to_timm_keys(tmp_path):
    bit = _randomise(build("bit_resnetv2", block_units=[1, 2, 1, 1], width_factor=1, num_classes=10), 4)
    np.savez(tmp_path / "bit.npz", **bit_as_tensorflow(bit.state_dict()))
    again = load_weights(build("bit_resnetv2", block_units=[1, 2, 1, 1], width_factor=1, num_classes=10),
                         tmp_path / "bit.npz")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(again(x), bit.eval()(x))
    timm_keys = bit_to_timm(bit.state_dict())
    # timm's resnetv2 with layers (1, 2, 1, 1): stem, stages.<i>.blocks.<j>.{norm1..3, conv1..3, downsample.conv}, norm, head.fc
    assert {"stem.conv.weight", "stages.1.blocks.1.norm3.bias", "stages.3.blocks.0.downsample.conv.weight",
            "norm.weight", "head.fc.weight", "head.fc.bias"} <= set(timm_keys)
    assert len(timm_keys) == 54 and not any(k.startswith(("root", "body", "head.gn", "head.conv")) for k in timm_keys)
    assert main(["convert-bit", str(tmp_path / "bit.npz"), str(tmp_path / "bit-timm")]) == 0
    tensors, meta = load_tensors(tmp_path / "bit-timm")
    assert set(tensors) == set(timm_keys) and meta["layout"] == "timm"
    assert torch.equal(tensors["stem.conv.weight"], bit.state_dict()["root.conv.weight"])


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="the timm extra is not installed")
def test_converted_bit_loads_strictly_into_timm_and_agrees():
    import functools

    from timm.layers import StdConv2d
    from timm.models.resnetv2 import ResNetV2

    bit = _randomise(build("bit_resnetv2", block_units=[1, 2, 1, 1], width_factor=1, num_classes=10), 5).eval()
    tm = ResNetV2(layers=[1, 2, 1, 1], width_factor=1, stem_type="fixed", num_classes=10,
                  conv_layer=functools.partial(StdConv2d, eps=1e-8)).eval()
    tm.load_state_dict(bit_to_timm(bit.state_dict()), strict=True)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(tm((x - 0.5) / 0.5), bit(x), atol=1e-4)


def test_mixednuts_map_equals_the_published_formula_and_import_map_writes_it(tmp_path, capsys):
    s, c, p = 0.6115753843212784, -2.142857142857143, 3.571428571428571
    z = torch.tensor([[3.0, 1.0, -0.5, 0.2, 2.5], [0.1, 0.0, -1.0, 4.0, 0.3]])
    ln = (z - z.mean(1, keepdim=True)) / (z.var(1, keepdim=True) + 1e-8).sqrt()
    u = F.gelu(ln + c)
    assert torch.allclose(MixedNUTSMap(scale=s, shift=c, power=p, k=250)(z), s * u.sign() * u.abs() ** p, atol=1e-6)
    out = tmp_path / "mixednuts.yaml"
    assert main(["import-map", "--config", "cifar100", "--dataset", "cifar100", "--robust-id",
                 "Wang2023Better_WRN-70-16", "--write-config", str(out)]) == 0
    from adasmooth.config import load_config

    nl = load_config(out).nonlinear
    assert (nl.scale, nl.shift, nl.power, nl.k, nl.standard_map) == (s, c, p, 250, "hard-one-hot")
    assert main(["import-map", "--config", "cifar100", "--dataset", "cifar100", "--robust-id", "Nobody2099",
                 "--write-config", str(out)]) == 2
    assert "no packaged MixedNUTS map" in capsys.readouterr().err
