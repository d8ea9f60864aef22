"""Base models from users' files: DeepMind-layout WideResNet keys, safe state-dict reading, prefixes,
clear key-mismatch errors, the input-resize wrapper and the optional architecture libraries."""

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from adasmooth.models import InputResize, WideResNet, build, load_weights, read_state_dict
from adasmooth.models.external import StateDictError


def dm_wrn_state_dict(depth: int, width: int, num_classes: int, prefix: str = "") -> dict:
    """The key names and shapes of DeepMind's public WideResNet checkpoints, written out from the naming
    scheme (not from our module), with random values."""
    g = torch.Generator().manual_seed(0)
    ch = [16, 16 * width, 32 * width, 64 * width]
    n = (depth - 4) // 6
    sd = {"mean": torch.rand(3, 1, 1, generator=g), "std": 0.2 + torch.rand(3, 1, 1, generator=g),
          "init_conv.weight": torch.randn(ch[0], 3, 3, 3, generator=g)}

    def bn(name, c):
        sd.update({f"{name}.weight": torch.rand(c, generator=g) + 0.5, f"{name}.bias": torch.randn(c, generator=g),
                   f"{name}.running_mean": torch.randn(c, generator=g), f"{name}.running_var": torch.rand(c, generator=g) + 0.5,
                   f"{name}.num_batches_tracked": torch.tensor(7)})

    for grp in range(3):
        for i in range(n):
            cin = ch[grp] if i == 0 else ch[grp + 1]
            cout = ch[grp + 1]
            b = f"layer.{grp}.block.{i}"
            bn(f"{b}.batchnorm_0", cin)
            sd[f"{b}.conv_0.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * 0.1
            bn(f"{b}.batchnorm_1", cout)
            sd[f"{b}.conv_1.weight"] = torch.randn(cout, cout, 3, 3, generator=g) * 0.1
            if cin != cout:
                sd[f"{b}.shortcut.weight"] = torch.randn(cout, cin, 1, 1, generator=g) * 0.1
    bn("batchnorm", ch[3])
    sd["logits.weight"] = torch.randn(num_classes, ch[3], generator=g)
    sd["logits.bias"] = torch.randn(num_classes, generator=g)
    return {prefix + k: v for k, v in sd.items()}


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_deepmind_layout_checkpoint_loads_with_prefix_stripped(tmp_path, fmt):
    sd = dm_wrn_state_dict(16, 2, 100, prefix="module.")
    path = tmp_path / f"wrn.{fmt}"
    if fmt == "pt":
        torch.save({"state_dict": sd, "epoch": 3}, path)  # a training checkpoint: weights under 'state_dict'
    else:
        from safetensors.torch import save_file

        save_file(sd, str(path))
    model = load_weights(WideResNet(16, 2, num_classes=100, activation="swish"), path)
    assert torch.equal(model.logits.weight, sd["module.logits.weight"])
    assert torch.equal(model.layer[2].block[1].conv_1.weight, sd["module.layer.2.block.1.conv_1.weight"])
    x = torch.rand(4, 3, 32, 32)
    out = model(x)
    assert out.shape == (4, 100) and torch.isfinite(out).all()
    # normalisation comes from the checkpoint's own mean/std buffers
    assert torch.equal(model.mean, sd["module.mean"])


def test_key_and_shape_mismatches_are_reported(tmp_path):
    sd = dm_wrn_state_dict(10, 1, 10)
    sd.pop("logits.bias")
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "w.pt")
    with pytest.raises(StateDictError, match=r"1 missing keys \(first \['logits.bias'\]\).*unexpected \(first \['extra.weight'\]\)"):
        load_weights(WideResNet(10, 1), tmp_path / "w.pt")
    torch.save(dm_wrn_state_dict(10, 1, 10), tmp_path / "w10.pt")
    with pytest.raises(StateDictError, match="wrong shape; first logits"):
        load_weights(WideResNet(10, 1, num_classes=100), tmp_path / "w10.pt")


class Opaque:
    """An arbitrary Python object: loading it would need unpickling of code."""

    def __init__(self):
        self.w = torch.zeros(2)


def test_pickled_objects_are_refused_with_an_explanation(tmp_path):
    torch.save({"model": Opaque()}, tmp_path / "bad.pt")
    with pytest.raises(StateDictError, match="weights_only"):
        read_state_dict(tmp_path / "bad.pt")
    with pytest.raises(StateDictError, match="not found"):
        read_state_dict(tmp_path / "missing.pt")


def test_input_resize_is_differentiable_and_matches_interpolate():
    inner = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3, padding=1), torch.nn.Flatten(), torch.nn.LazyLinear(5))
    model = InputResize(inner, 64)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    out = model(x)
    assert torch.allclose(out, inner(F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)))
    out.sum().backward()
    assert x.grad.shape == x.shape and x.grad.abs().sum() > 0
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 5)  # already at size: no resize


def test_build_wraps_inputs_and_names_missing_extras():
    m = build("wide_resnet", depth=10, width=1, num_classes=10, input_size=64)
    assert isinstance(m, InputResize) and m(torch.rand(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(ValueError, match="unknown architecture library"):
        build("keras:resnet")
    with pytest.raises(ValueError, match="6n \\+ 4"):
        build("wide_resnet", depth=27)
    for lib, name in (("timm", "resnet18"), ("torchvision", "resnet18")):
        if importlib.util.find_spec(lib) is None:
            with pytest.raises(ImportError, match="pip install"):
                build(f"{lib}:{name}")
        else:
            assert build(f"{lib}:{name}", num_classes=7, mean=(0.5,) * 3, std=(0.25,) * 3)(torch.rand(1, 3, 32, 32)).shape == (1, 7)
