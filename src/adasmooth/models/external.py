"""Base models from where users keep them: state-dict files (safetensors, or ``.pt`` read with
``weights_only=True``), torchvision and timm architectures, and RobustBench's model zoo (optional extras,
imported only when asked for)."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .bit import bit_from_tensorflow, is_tensorflow_bit
from .resize import InputResize
from .small_resnet import Normalize

logger = logging.getLogger(__name__)

COMMON_PREFIXES = ("module.", "_orig_mod.", "model.", "net.")
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net", "ema")
NORMALISATION_BUFFERS = ("mean", "std")


class StateDictError(RuntimeError):
    """A weights file cannot be read safely, or its keys do not fit the architecture."""


class Normalized(nn.Module):
    """``model((x - mean) / std)``: lets a model trained on normalised inputs take images in [0, 1]."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside our input wrappers (resize, normalisation): where its own weights load."""
    while isinstance(model, (InputResize, Normalized)):
        model = model.model
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file. ``.safetensors`` and ``.npz`` (no pickles) are read directly; anything else with
    ``torch.load(weights_only=True)``, which refuses pickled objects other than tensors and plain containers.
    A training checkpoint's ``state_dict``/``model``/``ema`` entry is taken when the file holds one."""
    path = Path(path)
    if not path.is_file():
        raise StateDictError(f"weights file {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix == ".npz":  # numpy archives (Google's TensorFlow BiT releases); pickles are refused
        try:
            with np.load(path, allow_pickle=False) as arrays:
                return {k: torch.from_numpy(np.array(arrays[k])) for k in arrays.files}
        except ValueError as exc:
            raise StateDictError(f"{path} is not a numpy archive of plain arrays: {exc}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise StateDictError(
            f"{path} needs arbitrary objects unpickled, which adasmooth refuses (torch.load(..., weights_only=True) "
            "only accepts tensors and plain containers, because unpickling can run any code). If you trust the "
            "file, re-save its tensors alone (model.state_dict(), or safetensors) with the code that made it. "
            f"({str(exc).splitlines()[0]})"
        ) from None
    while isinstance(obj, dict) and not _is_state_dict(obj):
        inner = next((obj[k] for k in CONTAINER_KEYS if k in obj and isinstance(obj[k], dict)), None)
        if inner is None:
            raise StateDictError(f"{path} holds a dict without tensors or any of {CONTAINER_KEYS}")
        obj = inner
    if not isinstance(obj, dict):
        raise StateDictError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return {k: v for k, v in obj.items() if torch.is_tensor(v)}


def _is_state_dict(d: dict) -> bool:
    return bool(d) and all(torch.is_tensor(v) for v in d.values())


def match_keys(expected: set[str], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip common wrapper prefixes (``module.`` from DataParallel, ``_orig_mod.`` from torch.compile, ...)
    shared by every key, for as long as that brings the keys closer to ``expected``. A checkpoint of a
    ``Sequential`` around the network (``module.0.*`` beside other entries, as the robust bases of the
    adaptive-smoothing release are saved) gives its first entry where that fits."""
    for prefix in ("module.0.", "0."):
        inner = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if inner and len(expected & set(inner)) > len(expected & set(state)):
            state = inner
    while True:
        hits = len(expected & set(state))
        if hits == len(expected):
            return state
        for prefix in COMMON_PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                stripped = {k[len(prefix):]: v for k, v in state.items()}
                if len(expected & set(stripped)) > hits or hits == 0:
                    state = stripped
                    break
        else:
            return state


def load_weights(model: nn.Module, path: str | Path, *, source: str | None = None) -> nn.Module:
    """Load a weights file into ``model`` (into the network inside its input wrappers), strictly.

    Errors name the first missing and unexpected keys and the first shape mismatch.
    """
    net = unwrap(model)
    own = net.state_dict()
    state = read_state_dict(path)
    if is_tensorflow_bit(state):
        state = bit_from_tensorflow(state)
    state = match_keys(set(own), state)
    for name in NORMALISATION_BUFFERS:  # checkpoints of models that normalise with plain tensors lack these
        if name in own and name not in state and name not in dict(net.named_parameters()):
            logger.info("%s has no %r: keeping the configured normalisation", path, name)
            state[name] = own[name]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise StateDictError(
            f"{path} does not fit {type(net).__name__}: {len(missing)} missing keys (first {missing[:3]}), "
            f"{len(unexpected)} unexpected (first {unexpected[:3]})" + (f"; expected {source}" if source else "")
        )
    bad = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items() if state[k].shape != v.shape]
    if bad:
        k, got, want = bad[0]
        raise StateDictError(f"{path}: {len(bad)} tensors have the wrong shape; first {k}: file {got}, model {want}")
    net.load_state_dict(state)
    return model.eval()


def build_torchvision(name: str, **kwargs) -> nn.Module:
    try:
        import torchvision
    except ImportError:
        raise ImportError("torchvision architectures need the torchvision extra: pip install 'adasmooth[torchvision]'") from None
    return torchvision.models.get_model(name, weights=None, **kwargs)


def build_timm(name: str, **kwargs) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ImportError("timm architectures need the timm extra: pip install 'adasmooth[timm]'") from None
    return timm.create_model(name, pretrained=False, **kwargs)


def load_robustbench(model_name: str, *, dataset: str = "cifar10", threat_model: str = "Linf",
                     model_dir: str = "models") -> nn.Module:
    """A model of RobustBench's zoo. RobustBench downloads its weights into ``model_dir`` on first use:
    call this only when that is what you want."""
    try:
        import autoattack  # noqa: F401  (robustbench imports the GitHub package of this name)
    except ImportError:
        raise ImportError(
            "robustbench imports the GitHub 'autoattack' package, which is not the PyPI 'pyautoattack' adasmooth "
            "uses: pip install git+https://github.com/fra31/auto-attack and pip install 'adasmooth[robustbench]'"
        ) from None
    try:
        from robustbench.utils import load_model
    except ImportError:
        raise ImportError("the RobustBench zoo needs the robustbench extra: pip install 'adasmooth[robustbench]'") from None
    return load_model(model_name=model_name, dataset=dataset, threat_model=threat_model, model_dir=model_dir).eval()


def wrap_inputs(model: nn.Module, *, mean=None, std=None, input_size=None) -> nn.Module:
    """Add normalisation (for models trained on normalised inputs) and resizing in front of ``model``."""
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither")
    if mean is not None:
        model = Normalized(model, mean, std)
    if input_size is not None:
        model = InputResize(model, input_size)
    return model
