"""Check adasmooth's loaders against the adaptive-smoothing release's own code (a checkout of
github.com/Bai-YT/AdaptiveSmoothing, given as --release). Random weights, CPU, about a minute:

1. the released mixing network (MixingNet V3 and V4) against ``PaperMixingNetwork`` on the same state dict;
2. the release's BiT ResNet-v2 against ``bit_resnetv2`` on the same state dict, and, where timm is installed,
   timm's ResNetV2 on the weights ``bit_to_timm`` renames;
3. the release's whole composite (BiT + WRN + gate, its evaluation settings) against
   ``load_released_mixer`` reading the trainer checkpoint and the composite state dict it saves.

    python scripts/check_against_release.py --release ../AdaptiveSmoothing

Prints the largest absolute difference of each comparison.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import types
from pathlib import Path

import torch


def _release_imports(release: Path) -> None:
    """Make the release's modules importable on a CPU machine: its ``models`` package on the path, its
    module-level ``torchvision.transforms`` import satisfied where torchvision is absent (unused by the
    parts compared), and its calls that move tensors to CUDA made no-ops (it hard-codes the GPU)."""
    sys.path.insert(0, str(release))
    try:
        import torchvision.transforms  # noqa: F401
    except ImportError:
        tv = types.ModuleType("torchvision")
        tv.transforms = types.ModuleType("torchvision.transforms")
        sys.modules.update({"torchvision": tv, "torchvision.transforms": tv.transforms})
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self


def _randomise(module: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif t.is_floating_point():
                t.normal_(0, 0.05)
    return module.eval().requires_grad_(False)


def check_gates() -> list[str]:
    from models.mixing_net import MixingNetV3, MixingNetV4

    from adasmooth.gates import PAPER_PLANES, PaperMixingNetwork

    lines = []
    for version, cls, planes in ((4, MixingNetV4, (512, 256)), (3, MixingNetV3, (64, 64))):
        theirs = _randomise(cls({"in_planes": planes}))
        ours = PaperMixingNetwork(planes, version=version).eval()
        ours.load_state_dict(theirs.state_dict(), strict=True)
        t = [PAPER_PLANES[p] for p in planes]
        second = [p[0] * 2 if version == 4 else p[1] for p in t]
        s0, r0 = torch.randn(3, t[0][0], 32, 32), torch.randn(3, t[1][0], 32, 32)
        s1, r1 = torch.randn(3, second[0], 16, 16), torch.randn(3, second[1], 16, 16)
        if version == 3:  # the release's V3 forward asserts with torch.all on a bool, which recent torch refuses
            a = theirs.layers[0](torch.cat([s0, r0], 1)) + torch.cat([s1, r1], 1)
            for layer in theirs.layers[1:]:
                a = layer(a)
            a = theirs.linear(theirs.global_avg_pool(a).flatten(1))
        else:
            a = theirs([s0, r0], [s1, r1])
        b = ours([s0, s1], [r0, r1])
        lines.append(f"MixingNet V{version} {planes}: {len(theirs.state_dict())} tensors, max |diff| "
                     f"{(a.view(-1) - b).abs().max().item():.3g}")
    return lines


def check_bit() -> list[str]:
    from models.base_models import bit_rn

    from adasmooth.models import bit_to_timm, build

    theirs = _randomise(bit_rn.ResNetV2([1, 2, 1, 1], 1, head_size=10))
    ours = build("bit_resnetv2", block_units=[1, 2, 1, 1], width_factor=1, num_classes=10).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.rand(4, 3, 64, 64)
    a = theirs(x)[0]
    lines = [f"BiT ResNet-v2: max |diff| {(a - ours(x)).abs().max().item():.3g}"]
    try:
        import functools

        from timm.layers import StdConv2d
        from timm.models.resnetv2 import ResNetV2
    except ImportError:
        return [*lines, "timm not installed: the renamed weights were not loaded into timm"]
    tm = ResNetV2(layers=[1, 2, 1, 1], width_factor=1, stem_type="fixed", num_classes=10,
                  conv_layer=functools.partial(StdConv2d, eps=1e-8)).eval()
    tm.load_state_dict(bit_to_timm(theirs.state_dict()), strict=True)
    return [*lines, f"timm ResNetV2 on bit_to_timm's weights: max |diff| {(a - tm((x - 0.5) / 0.5)).abs().max().item():.3g}"]


def check_composite(tmp: Path) -> list[str]:
    from models.base_models import bit_rn, dm_rn
    from models.comp_model import CompositeModel, CompositeModelWrapper

    from adasmooth.models import build, load_weights
    from adasmooth.released import load_released_mixer

    std = _randomise(bit_rn.ResNetV2([1, 1, 1, 1], 1, head_size=100))
    rob = _randomise(dm_rn.WideResNet(num_classes=100, activation_fn=torch.nn.SiLU, depth=10, width=16,
                                      mean=dm_rn.CIFAR100_MEAN, std=dm_rn.CIFAR100_STD))
    settings = {"policy_graph": True, "pn_version": 4, "in_planes": (256, 256), "parallel": 1,
                "std_model_type": "rn152", "use_policy": True, "gamma": 0}
    comp = CompositeModel([std, rob], settings)
    _randomise(comp.policy_net)
    comp.bn.running_mean.fill_(0.3)
    comp.bn.running_var.fill_(0.02)
    comp.set_gamma_scale_bias(2.0, 1.3)
    comp.set_alpha_scale_bias(0.15, 0.84)
    comp.set_base_model_scale(2.0, 1.0)
    comp.eval()
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        reference, _ = comp(x)
    torch.save({"model": comp.policy_net.state_dict(), "bn": comp.bn.state_dict()}, tmp / "trainer.pt")
    torch.save(CompositeModelWrapper(comp, parallel=True).state_dict(), tmp / "composite.pt")
    torch.save({"model_state_dict": {f"module.0.{k}": v for k, v in rob.state_dict().items()}}, tmp / "wrn.pt")
    torch.save({"model": {f"module.{k}": v for k, v in std.state_dict().items()}}, tmp / "bit.tar")
    our_std = load_weights(build("bit_resnetv2", block_units=[1, 1, 1, 1], width_factor=1, num_classes=100,
                                 input_size=128), tmp / "bit.tar")
    our_rob = load_weights(build("wide_resnet", depth=10, width=16, num_classes=100, activation="swish",
                                 mean=dm_rn.CIFAR100_MEAN, std=dm_rn.CIFAR100_STD), tmp / "wrn.pt")
    lines = []
    for name, kwargs in (("trainer.pt", {"settings": "cifar100-edm"}), ("composite.pt", {})):
        model = load_released_mixer(tmp / name, our_std, our_rob, in_planes=(256, 256), **kwargs)
        with torch.no_grad():
            diff = (model(x) - reference).abs().max().item()
        lines.append(f"composite from the release's {name}: max |diff| of log-probabilities {diff:.3g}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", required=True, help="a checkout of github.com/Bai-YT/AdaptiveSmoothing")
    args = parser.parse_args()
    _release_imports(Path(args.release).resolve())
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        for line in [*check_gates(), *check_bit(), *check_composite(Path(tmp))]:
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
