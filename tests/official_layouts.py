"""State dicts in the released layouts of the paper's artifacts, built from our modules with random weights,
so that loading them needs nothing downloaded."""

from __future__ import annotations

import re

import numpy as np
import torch

_UNIT = re.compile(r"^body\.block(\d+)\.unit(\d+)\.(gn[123]|conv[123]|downsample)\.(weight|bias)$")
_TOP = {"root.conv.weight": "root_block/standardized_conv2d/kernel", "head.gn.weight": "group_norm/gamma",
        "head.gn.bias": "group_norm/beta", "head.conv.weight": "head/conv2d/kernel", "head.conv.bias": "head/conv2d/bias"}


def bit_as_tensorflow(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A BiT state dict as Google's TensorFlow release names it (HWIO kernels under ``resnet/``)."""
    out = {}
    for key, t in state.items():
        a = t.detach().numpy()
        a = a.transpose(2, 3, 1, 0) if a.ndim == 4 else a
        if key in _TOP:
            out["resnet/" + _TOP[key]] = a
            continue
        block, unit, layer, leaf = _UNIT.match(key).groups()
        stem = f"resnet/block{block}/unit{unit}/"
        if layer == "downsample":
            out[stem + "a/proj/standardized_conv2d/kernel"] = a
        elif layer.startswith("conv"):
            out[stem + "abc"[int(layer[-1]) - 1] + "/standardized_conv2d/kernel"] = a
        else:
            out[stem + "abc"[int(layer[-1]) - 1] + "/group_norm/" + ("gamma" if leaf == "weight" else "beta")] = a
    return out
