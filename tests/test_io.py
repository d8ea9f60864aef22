import json

import pytest
import torch

from adasmooth.io import CheckpointError, load_model, save_model
from adasmooth.models import SmallResNet


def _tiny():
    torch.manual_seed(0)
    return SmallResNet(width=4, num_classes=10)


def test_roundtrip_is_exact_and_eval_mode(tmp_path):
    m = _tiny()
    save_model(tmp_path / "m", m, architecture="small_resnet", arch_args={"width": 4, "num_classes": 10}, note="x")
    m2, meta = load_model(tmp_path / "m")
    x = torch.rand(3, 1, 28, 28)
    m.eval()
    assert torch.equal(m(x), m2(x)) and not m2.training
    assert meta["note"] == "x" and len(meta["sha256"]) == 64 and "adasmooth_version" in meta
    assert not list(tmp_path.glob(".*tmp"))  # nothing half-written left behind


def test_wrong_architecture_or_classes_is_refused(tmp_path):
    save_model(tmp_path / "m", _tiny(), architecture="small_resnet", arch_args={"width": 4, "num_classes": 10})
    with pytest.raises(CheckpointError, match="expected 'wide_resnet'"):
        load_model(tmp_path / "m", expect_architecture="wide_resnet")
    with pytest.raises(CheckpointError, match="10 classes, expected 100"):
        load_model(tmp_path / "m", expect_num_classes=100)


def test_sidecar_that_lies_about_the_architecture(tmp_path):
    save_model(tmp_path / "m", _tiny(), architecture="small_resnet", arch_args={"width": 4, "num_classes": 10})
    meta = json.loads((tmp_path / "m.json").read_text())
    meta["arch_args"]["width"] = 8
    (tmp_path / "m.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(tmp_path / "m")


def test_corrupt_or_missing_files(tmp_path):
    save_model(tmp_path / "m", _tiny(), architecture="small_resnet", arch_args={"width": 4, "num_classes": 10})
    (tmp_path / "m.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_model(tmp_path / "m")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "other")
