"""Data sets as CPU tensors: Fashion-MNIST from Debian's idx files, CIFAR-10/100 from local folders.

Every loader returns ``(x, y)`` with ``x`` float32 NCHW in [0, 1] and ``y`` int64. The ``val`` split is a
fixed, seeded slice of the training set, disjoint from ``train``; the ``test`` split is only for reporting.
"""

from __future__ import annotations

import gzip
import logging
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

DATASETS = ("fashion-mnist", "cifar10", "cifar100")
SPLITS = ("train", "val", "test")
VAL_SIZE = 5000
VAL_SEED = 20230130  # fixed forever: changing it would leak validation choices into training data
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
NUM_CLASSES = {"fashion-mnist": 10, "cifar10": 10, "cifar100": 100}
IMAGE_SHAPES = {"fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32)}  # C, H, W
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DataError(RuntimeError):
    """A data file is missing or unreadable; the message names the path and the fix."""


def load(
    name: str,
    split: str,
    *,
    root: str | os.PathLike | None = None,
    download: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split of a data set as CPU tensors.

    Parameters
    ----------
    name : {"fashion-mnist", "cifar10", "cifar100"}
    split : {"train", "val", "test"}
        ``val`` is a fixed, seeded ``VAL_SIZE``-image slice of the training set; ``train`` is the rest.
    root : path, optional
        Folder holding the files. Defaults to ``$ADASMOOTH_DATA`` or, for Fashion-MNIST, the Debian
        package's folder ``/usr/share/datasets/fashion-mnist``.
    download : bool
        CIFAR only: fetch the archive with torchvision if it is missing. Never done unless asked.

    Returns
    -------
    x : float32 tensor (N, C, H, W) in [0, 1]
    y : int64 tensor (N,)
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    base_split = "test" if split == "test" else "train"
    if name == "fashion-mnist":
        x, y = _load_fashion_mnist(_resolve_root(name, root), base_split)
    else:
        x, y = _load_cifar(name, _resolve_root(name, root), base_split, download=download)
    if split == "test":
        return x, y
    val_idx, train_idx = split_indices(len(y))
    idx = val_idx if split == "val" else train_idx
    return x[idx].contiguous(), y[idx].contiguous()


def fetch(name: str, root: str | os.PathLike | None = None) -> Path:
    """Download ``name`` into ``root`` with torchvision when its folder is missing (CIFAR only; the embedded
    Fashion-MNIST comes from the Debian package). Only ever called when the user asks (``--download``)."""
    if name not in _CIFAR_DIRS:
        raise ValueError(f"--download fetches cifar10 / cifar100; {name} comes from its package or folder")
    folder = _resolve_root(name, root)
    if not (folder / _CIFAR_DIRS[name]).is_dir():
        _download_cifar(name, folder)
    return folder / _CIFAR_DIRS[name]


def split_indices(n: int, *, val_size: int = VAL_SIZE, seed: int = VAL_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic disjoint (val, train) index tensors over ``n`` training examples."""
    if not 0 < val_size < n:
        raise ValueError(f"val_size must be in (0, {n}), got {val_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:val_size].sort().values, perm[val_size:].sort().values


def num_classes(name: str) -> int:
    if name not in NUM_CLASSES:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    return NUM_CLASSES[name]


def _resolve_root(name: str, root) -> Path:
    if root is not None:
        return Path(root)
    env = os.environ.get("ADASMOOTH_DATA")
    if env:
        return Path(env)
    if name == "fashion-mnist":
        return FASHION_MNIST_DIR
    raise DataError(
        f"no folder given for {name}: pass root=... (CLI: --data-root) or set ADASMOOTH_DATA to the folder "
        f"holding the torchvision-format '{_CIFAR_DIRS[name]}' directory"
    )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (optionally gzipped) into a numpy array, checking its header and length."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read {path}: {exc}. {_fmnist_fix()}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an idx file (bad magic number). {_fmnist_fix()}")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its header. {_fmnist_fix()}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path} holds {len(raw) - header} data bytes but its header {tuple(shape)} needs {expected}: "
            f"the file is truncated or corrupt. {_fmnist_fix()}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _fmnist_fix() -> str:
    return "Reinstall the data with: sudo apt-get install --reinstall dataset-fashion-mnist"


def _find_idx(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"Fashion-MNIST file {root / (stem + '.gz')} not found. Install it with: "
        f"sudo apt-get install dataset-fashion-mnist (or point ADASMOOTH_DATA / root= at a folder holding "
        f"the idx files)"
    )


def _load_fashion_mnist(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    img_stem, lbl_stem = _FMNIST_FILES[split]
    images = read_idx(_find_idx(root, img_stem))
    labels = read_idx(_find_idx(root, lbl_stem))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(
            f"Fashion-MNIST {split} files in {root} disagree: images {images.shape}, labels {labels.shape}. "
            f"{_fmnist_fix()}"
        )
    if labels.size and int(labels.max()) >= 10:
        raise DataError(f"Fashion-MNIST labels in {root} go up to {int(labels.max())}; expected 0..9")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    logger.debug("loaded fashion-mnist %s: %s", split, tuple(x.shape))
    return x, y


_CIFAR_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_CIFAR_FILES = {
    ("cifar10", "train"): [f"data_batch_{i}" for i in range(1, 6)],
    ("cifar10", "test"): ["test_batch"],
    ("cifar100", "train"): ["train"],
    ("cifar100", "test"): ["test"],
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR batch files that refuses every class except numpy's array reconstruction."""

    _ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    })

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _load_cifar(name: str, root: Path, split: str, *, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    folder = root / _CIFAR_DIRS[name]
    if not folder.is_dir() and download:
        _download_cifar(name, root)
    if not folder.is_dir():
        raise DataError(
            f"{name} folder {folder} not found. Point root= / --data-root / ADASMOOTH_DATA at the folder "
            f"that holds '{_CIFAR_DIRS[name]}' (torchvision's format), or pass download=True to fetch it"
        )
    label_key = b"labels" if name == "cifar10" else b"fine_labels"
    xs, ys = [], []
    for fname in _CIFAR_FILES[(name, split)]:
        path = folder / fname
        try:
            with open(path, "rb") as fh:
                entry = _ArrayOnlyUnpickler(fh, encoding="bytes").load()
            data = np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            labels = np.asarray(entry[label_key], dtype=np.int64)
        except (OSError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as exc:
            raise DataError(f"cannot read {name} batch {path}: {exc}. Re-extract the archive there") from None
        xs.append(data)
        ys.append(labels)
    x = torch.from_numpy(np.concatenate(xs).astype(np.float32) / 255.0)
    y = torch.from_numpy(np.concatenate(ys))
    return x, y


def _download_cifar(name: str, root: Path) -> None:
    try:
        import torchvision.datasets as tvd
    except ImportError as exc:  # pragma: no cover - depends on the user's environment
        raise DataError("download=True needs torchvision: pip install torchvision") from exc
    cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
    logger.info("downloading %s to %s", name, root)
    cls(str(root), train=True, download=True)
