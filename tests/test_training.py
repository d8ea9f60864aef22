import json

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_same_state

from adasmooth import data as data_mod
from adasmooth.config import config_from_dict
from adasmooth.io import CheckpointError, load_model
from adasmooth.training import augment, lr_at, train_base
from adasmooth.training.base import random_erase


def _cfg(root, **train):
    base = {"data": {"name": "fashion-mnist", "root": str(root)},
            "model": {"architecture": "small_resnet", "args": {"width": 4, "blocks": [1, 1, 1]}},
            "evaluate": {"n": 100, "pgd_steps": 3, "batch_size": 250}}
    t = {"epochs": 2, "batch_size": 100, "lr": 0.1, "augment": False, "seed": 0, **train}
    base["train_standard"] = t
    base["train_adversarial"] = {**t, "attack_steps": 2, "attack_step_size": 0.05}
    base["train_noise"] = t
    return config_from_dict(base)


def _ce(model, x, y):
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


def test_standard_training_lowers_the_loss_and_writes_a_checkpoint(tiny_fmnist, tmp_path):
    cfg = _cfg(tiny_fmnist)
    x, y = data_mod.load("fashion-mnist", "val", root=tiny_fmnist)
    before, _ = train_base(cfg, "standard", tmp_path / "a", progress=False, max_epochs=0)
    loss0 = _ce(before.eval(), x[:1000], y[:1000])
    model, meta = train_base(cfg, "standard", tmp_path / "b", progress=False)
    assert _ce(model, x[:1000], y[:1000]) < 0.7 * loss0
    assert meta["accuracies"]["val_clean"] > 0.5  # chance is 0.1 on this separable synthetic set
    loaded, meta2 = load_model(tmp_path / "b" / "standard")
    assert meta2["kind"] == "standard" and meta2["dataset"] == "fashion-mnist"
    assert torch.equal(loaded(x[:5]), model(x[:5]))


def test_resume_equals_an_uninterrupted_run(tiny_fmnist, tmp_path):
    cfg = _cfg(tiny_fmnist)
    full, _ = train_base(cfg, "adversarial", tmp_path / "full", progress=False)
    train_base(cfg, "adversarial", tmp_path / "split", progress=False, max_epochs=1)
    resumed, _ = train_base(cfg, "adversarial", tmp_path / "split", progress=False, resume=True)
    assert_same_state(full, resumed)


def test_resume_with_another_config_is_refused(tiny_fmnist, tmp_path):
    train_base(_cfg(tiny_fmnist), "standard", tmp_path, progress=False, max_epochs=1)
    with pytest.raises(CheckpointError, match="other settings.*train"):
        train_base(_cfg(tiny_fmnist, lr=0.2), "standard", tmp_path, progress=False, resume=True)


def test_bf16_autocast_training_learns_resumes_exactly_and_is_recorded(tiny_fmnist, tmp_path):
    cfg = _cfg(tiny_fmnist, amp=True)
    full, meta = train_base(cfg, "adversarial", tmp_path / "full", progress=False)
    assert meta["settings"]["train"]["amp"] is True
    assert meta["accuracies"]["val_clean"] > 0.5  # chance is 0.1
    one_epoch, _ = train_base(cfg, "adversarial", tmp_path / "split", progress=False, max_epochs=1)
    resumed, _ = train_base(cfg, "adversarial", tmp_path / "split", progress=False, resume=True)
    assert_same_state(full, resumed)
    # a float32 state is not continued in bf16; float32 states leave the key out, as states written before
    # the option existed do, so that those still resume
    fp32, _ = train_base(_cfg(tiny_fmnist), "adversarial", tmp_path / "fp32", progress=False, max_epochs=1)
    state = json.loads((tmp_path / "fp32" / "adversarial-last.json").read_text())
    assert "epochs" in state["settings"]["train"] and "amp" not in state["settings"]["train"]
    with pytest.raises(CheckpointError, match="other settings.*train"):
        train_base(cfg, "adversarial", tmp_path / "fp32", progress=False, resume=True)
    # the two precisions train different weights from the same seed: the setting is not ignored
    x, _ = data_mod.load("fashion-mnist", "val", root=tiny_fmnist)
    assert not torch.allclose(fp32(x[:8]), one_epoch(x[:8]))


def test_noise_training_learns_under_noise_and_resumes_by_sigma(tiny_fmnist, tmp_path):
    cfg = _cfg(tiny_fmnist)
    _, meta = train_base(cfg, "noise", tmp_path, progress=False, sigma=0.5)
    assert (tmp_path / "noise-sigma0.5.safetensors").is_file()
    assert meta["sigma"] == 0.5 and meta["settings"]["sigma"] == 0.5
    # trained on noisy images, it classifies noisy images far above chance (0.1)
    assert meta["accuracies"]["test_under_noise_one_draw"] > 0.4
    with pytest.raises(CheckpointError, match="other settings"):  # another sigma's state is not reused
        (tmp_path / "noise-sigma0.5-last.json").rename(tmp_path / "noise-sigma0.25-last.json")
        (tmp_path / "noise-sigma0.5-last.safetensors").rename(tmp_path / "noise-sigma0.25-last.safetensors")
        train_base(cfg, "noise", tmp_path, progress=False, sigma=0.25, resume=True)
    with pytest.raises(ValueError, match="sigma > 0"):
        train_base(cfg, "noise", tmp_path, progress=False)
    with pytest.raises(ValueError, match="noise training only"):
        train_base(cfg, "standard", tmp_path, progress=False, sigma=0.25)


def test_schedule_and_augmentation():
    assert lr_at(0, 100, 1.0) == pytest.approx(0.2)
    assert lr_at(99, 100, 1.0) < 0.01
    x = torch.rand(8, 1, 28, 28)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.equal(out, augment(x, torch.Generator().manual_seed(0)))
    # a shift by at most 2 pixels and a flip keeps the pixel mass of the central region
    assert torch.allclose(out[:, :, 4:-4, 4:-4].sum() / x[:, :, 4:-4, 4:-4].sum(), torch.tensor(1.0), atol=0.2)


def test_random_erasing_hits_about_p_of_the_images_with_one_box_each():
    x = torch.zeros(2000, 1, 28, 28)
    out = random_erase(x, torch.Generator().manual_seed(0), p=0.5)
    erased = out.flatten(1).ne(0)
    hit = erased.any(1)
    assert 0.45 < hit.float().mean() < 0.55
    share = erased[hit].float().mean(1)
    assert share.min() > 0.0 and share.max() < 0.4  # one box of 2-33% of the area, nothing outside it
    for img in out[hit][:50, 0].ne(0):  # one rectangle: its rows and columns are contiguous and fill it
        rows, cols = img.any(1).nonzero().flatten(), img.any(0).nonzero().flatten()
        assert rows[-1] - rows[0] + 1 == len(rows) and cols[-1] - cols[0] + 1 == len(cols)
        assert img.sum() == len(rows) * len(cols)
    assert torch.equal(random_erase(x, torch.Generator().manual_seed(0), p=0.5), out)
    assert torch.equal(random_erase(x, torch.Generator().manual_seed(0), p=0.0), x)


def test_wide_recipe_options_change_the_model_train_and_resume_exactly(tiny_fmnist, tmp_path):
    cfg = _cfg(tiny_fmnist, blocks=[2, 1, 1], label_smoothing=0.1, random_erasing=0.5)
    full, meta = train_base(cfg, "standard", tmp_path / "full", progress=False)
    assert load_model(tmp_path / "full" / "standard")[1]["arch_args"]["blocks"] == [2, 1, 1]
    assert len(full.stage1) == 2
    assert meta["settings"]["train"]["label_smoothing"] == 0.1 and meta["accuracies"]["val_clean"] > 0.5
    train_base(cfg, "standard", tmp_path / "split", progress=False, max_epochs=1)
    resumed, _ = train_base(cfg, "standard", tmp_path / "split", progress=False, resume=True)
    assert_same_state(full, resumed)
    train_base(_cfg(tiny_fmnist), "standard", tmp_path / "plain", progress=False)
    assert "label_smoothing" not in load_model(tmp_path / "plain" / "standard")[1]["settings"]["train"]


@pytest.mark.parametrize("key,value", [("blocks", [0, 1, 1]), ("label_smoothing", 1.0), ("random_erasing", 1.5)])
def test_wide_recipe_options_out_of_range_are_refused(tiny_fmnist, key, value):
    with pytest.raises(Exception, match=key):
        _cfg(tiny_fmnist, **{key: value})
