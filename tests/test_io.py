import json

import pytest
import torch

from adasmooth.io import CheckpointError, load_model, load_tensors, save_model, save_tensors, unverified_loading
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
    with pytest.raises(CheckpointError, match="do not match their sidecar"):
        load_model(tmp_path / "m")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_tensors(tmp_path / "m", verify=False)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "other")


def test_a_changed_byte_is_refused_with_both_digests_unless_loading_unverified(tmp_path):
    model = _tiny()
    save_model(tmp_path / "m", model, architecture="small_resnet", arch_args={"width": 4, "num_classes": 10})
    path = tmp_path / "m.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(data))
    recorded = json.loads((tmp_path / "m.json").read_text())["sha256"]
    with pytest.raises(CheckpointError, match=f"sha256 [0-9a-f]{{64}}, recorded {recorded}.*--no-verify"):
        load_model(tmp_path / "m")
    with unverified_loading():
        loaded, _ = load_model(tmp_path / "m")
    changed = [k for k, v in loaded.state_dict().items() if not torch.equal(v, model.state_dict()[k])]
    assert len(changed) == 1
    load_model(tmp_path / "m", verify=False)
    with pytest.raises(CheckpointError, match="do not match"):  # the block ends: checks are back on
        load_model(tmp_path / "m")


def test_an_interrupted_save_leaves_the_old_or_the_new_pair_never_a_mix(tmp_path):
    old = {"w": torch.zeros(3)}
    new = {"w": torch.ones(3)}
    save_tensors(tmp_path / "s", old, {"step": 1})
    # the crash came after the pending sidecar, before the weights: the old pair stands, the pending one goes
    fd_meta = {"format_version": 1, "step": 2, "sha256": "0" * 64}
    (tmp_path / ".s.json.pending").write_text(json.dumps(fd_meta))
    tensors, meta = load_tensors(tmp_path / "s")
    assert meta["step"] == 1 and torch.equal(tensors["w"], old["w"]) and not (tmp_path / ".s.json.pending").exists()
    # the crash came after the weights, before the sidecar: the next load finishes the commit
    save_tensors(tmp_path / "n", new, {"step": 2})
    pending = json.loads((tmp_path / "n.json").read_text())
    (tmp_path / "s.safetensors").write_bytes((tmp_path / "n.safetensors").read_bytes())
    (tmp_path / ".s.json.pending").write_text(json.dumps(pending))
    tensors, meta = load_tensors(tmp_path / "s")
    assert meta["step"] == 2 and torch.equal(tensors["w"], new["w"]) and not (tmp_path / ".s.json.pending").exists()
