import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from adasmooth import data as data_mod

# Under pytest-xdist (-n N) each worker takes its share of the cores, and so do the commands it launches:
# N workers at full thread count would fight over them.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

FMNIST = data_mod.FASHION_MNIST_DIR
needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist; scripts/setup.sh does it)",
)


def write_idx(path: Path, array: np.ndarray, *, gz: bool = True) -> Path:
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.tobytes()
    path = Path(str(path) + ".gz") if gz else Path(path)
    if gz:
        with gzip.open(path, "wb") as fh:
            fh.write(raw)
    else:
        path.write_bytes(raw)
    return path


def synthetic_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Separable 28x28 images: class k draws stripes (period 2 + k // 2; rows for even k, columns for
    odd k) over noise, a local texture that a small convolutional net picks up in a few steps."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.uint8)
    x = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    idx = np.arange(28)
    for k in range(10):
        on = idx % (2 + k // 2) == 0
        sel = y == k
        if k % 2 == 0:
            x[np.ix_(sel, on, idx)] = 220
        else:
            x[np.ix_(sel, idx, on)] = 220
    return x, y


@pytest.fixture(scope="session")
def tiny_fmnist(tmp_path_factory) -> Path:
    """A Fashion-MNIST-shaped idx folder with 6,500 training and 500 test synthetic images."""
    root = tmp_path_factory.mktemp("tiny-fmnist")
    xtr, ytr = synthetic_images(6500, seed=1)
    xte, yte = synthetic_images(500, seed=2)
    write_idx(root / "train-images-idx3-ubyte", xtr)
    write_idx(root / "train-labels-idx1-ubyte", ytr)
    write_idx(root / "t10k-images-idx3-ubyte", xte)
    write_idx(root / "t10k-labels-idx1-ubyte", yte)
    return root


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module, atol: float = 1e-6) -> None:
    """Both modules hold the same tensors under the same names (a resumed run against an uninterrupted one)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.allclose(sa[k].float(), sb[k].float(), atol=atol), k


class LinearModel(torch.nn.Module):
    """logits = W x + b on flattened images: worst cases are known in closed form."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.weight = torch.nn.Parameter(weight, requires_grad=False)
        self.bias = torch.nn.Parameter(bias if bias is not None else torch.zeros(weight.shape[0]), requires_grad=False)
        self.num_classes = weight.shape[0]

    def forward(self, x):
        return x.flatten(1) @ self.weight.T + self.bias
