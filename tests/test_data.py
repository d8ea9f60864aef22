import numpy as np
import pytest
import torch
from conftest import needs_fmnist, synthetic_images, write_idx

from adasmooth import data as data_mod
from adasmooth.data import DataError, load, read_idx, split_indices


def test_idx_reader_reads_what_was_written(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for gz in (True, False):
        path = write_idx(tmp_path / f"a{gz}", arr, gz=gz)
        np.testing.assert_array_equal(read_idx(path), arr)


def test_truncated_idx_file_names_the_path_and_the_fix(tmp_path):
    path = write_idx(tmp_path / "imgs", np.zeros((5, 28, 28), np.uint8), gz=False)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated") as info:
        read_idx(path)
    assert str(path) in str(info.value) and "apt-get install" in str(info.value)


def test_bad_magic_and_bad_gzip(tmp_path):
    p = tmp_path / "junk"
    p.write_bytes(b"\x12\x34\x56\x78" + b"\x00" * 20)
    with pytest.raises(DataError, match="not an idx file"):
        read_idx(p)
    q = tmp_path / "junk.gz"
    q.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read"):
        read_idx(q)


def test_missing_folder_says_which_package(tmp_path):
    with pytest.raises(DataError, match="dataset-fashion-mnist") as info:
        load("fashion-mnist", "test", root=tmp_path / "nope")
    assert "nope" in str(info.value)


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="unknown data set"):
        load("mnist", "test")
    with pytest.raises(ValueError, match="unknown split"):
        load("fashion-mnist", "validation")


def test_split_is_disjoint_deterministic_and_complete():
    v1, t1 = split_indices(6000)
    v2, t2 = split_indices(6000)
    assert torch.equal(v1, v2) and torch.equal(t1, t2)
    assert len(v1) == 5000 and len(t1) == 1000
    assert len(set(v1.tolist()) & set(t1.tolist())) == 0
    assert sorted(v1.tolist() + t1.tolist()) == list(range(6000))


def test_loader_shapes_ranges_and_env_override(tiny_fmnist, monkeypatch):
    monkeypatch.setenv("ADASMOOTH_DATA", str(tiny_fmnist))
    x, y = load("fashion-mnist", "train")
    xv, _ = load("fashion-mnist", "val")
    xt, _ = load("fashion-mnist", "test")
    assert x.shape == (1500, 1, 28, 28) and xv.shape == (5000, 1, 28, 28) and xt.shape == (500, 1, 28, 28)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    raw, labels = synthetic_images(6500, seed=1)
    val_idx, train_idx = split_indices(6500)
    assert torch.equal(y, torch.from_numpy(labels.astype(np.int64))[train_idx])
    assert torch.allclose(xv[0, 0], torch.from_numpy(raw[val_idx[0].item()]).float() / 255)


def test_cifar_missing_folder_is_clear(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load("cifar10", "test", root=tmp_path)


def test_cifar_reader_refuses_arbitrary_pickles(tmp_path):
    import os
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({"x": os.system}))
    with pytest.raises(DataError, match="refusing"):
        load("cifar10", "test", root=tmp_path)


def test_cifar_reader_reads_a_torchvision_style_batch(tmp_path):
    import pickle

    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    data = np.random.default_rng(0).integers(0, 256, (7, 3072)).astype(np.uint8)
    (folder / "test").write_bytes(pickle.dumps({b"data": data, b"fine_labels": list(range(7))}))
    x, y = load("cifar100", "test", root=tmp_path)
    assert x.shape == (7, 3, 32, 32) and y.tolist() == list(range(7))
    assert torch.allclose(x[3].flatten() * 255, torch.from_numpy(data[3]).float())


@needs_fmnist
def test_real_fashion_mnist_sizes():
    x, y = load("fashion-mnist", "test")
    assert x.shape == (10000, 1, 28, 28) and torch.bincount(y).tolist() == [1000] * 10
    assert data_mod.num_classes("fashion-mnist") == 10
