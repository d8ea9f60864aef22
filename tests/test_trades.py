"""TRADES training, weight averaging and the capacity setting."""

import pytest
import torch
import torch.nn.functional as F
from conftest import LinearModel, assert_same_state

from adasmooth.config import ConfigError, config_from_dict
from adasmooth.io import CheckpointError, load_model
from adasmooth.models import build
from adasmooth.training import train_base
from adasmooth.training.averaging import WeightAverage
from adasmooth.training.trades import kl_to_clean, trades_adversarial, trades_loss


def _cfg(root, **trades):
    t = {"epochs": 2, "batch_size": 100, "lr": 0.1, "augment": False, "seed": 0, "attack_steps": 2,
         "attack_step_size": 0.05, "ema_decay": 0.9, **trades}
    return config_from_dict({"data": {"name": "fashion-mnist", "root": str(root)},
                             "model": {"architecture": "small_resnet", "args": {"width": 4, "blocks": [1, 1, 1]}},
                             "evaluate": {"n": 100, "pgd_steps": 3, "batch_size": 250}, "train_trades": t})


def test_inner_maximisation_increases_the_kl_and_stays_in_the_ball():
    torch.manual_seed(0)
    model = LinearModel(torch.randn(10, 784) * 0.5)
    x = torch.rand(16, 1, 28, 28)
    x_adv = trades_adversarial(model, x, eps=0.1, steps=10, step_size=0.025, generator=torch.Generator().manual_seed(0))
    kl_start = kl_to_clean(model(x), model((x + 0.001 * torch.randn_like(x)).clamp(0, 1)))
    kl_adv = kl_to_clean(model(x), model(x_adv))
    assert (kl_adv > kl_start + 1e-3).all()
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1


def test_beta_zero_is_plain_cross_entropy_and_kl_of_identical_logits_is_zero():
    logits, other = torch.randn(8, 10), torch.randn(8, 10)
    y = torch.randint(0, 10, (8,))
    assert torch.allclose(trades_loss(logits, other, y, beta=0.0), F.cross_entropy(logits, y))
    assert torch.allclose(kl_to_clean(logits, logits), torch.zeros(8), atol=1e-6)
    expected = F.cross_entropy(logits, y) + 6.0 * F.kl_div(F.log_softmax(other, 1), F.log_softmax(logits, 1),
                                                           reduction="batchmean", log_target=True)
    assert torch.allclose(trades_loss(logits, other, y, beta=6.0), expected, atol=1e-6)


def test_average_of_a_constant_model_equals_its_weights_and_tracks_a_moving_one():
    model = build("small_resnet", in_channels=1, num_classes=10, width=4)
    average = WeightAverage(model, decay=0.99)
    for _ in range(50):
        average.update(model)
    for (k, a), b in zip(average.state_dict().items(), model.state_dict().values()):
        assert torch.allclose(a.float(), b.float()), k
    with torch.no_grad():
        model.fc.bias.add_(1.0)
    average.update(model)  # with warm-up the 51st update has decay min(0.99, 51/60) = 0.85
    assert torch.allclose(average.model.fc.bias, model.fc.bias - 0.85, atol=1e-5)
    with pytest.raises(ValueError, match="ema_decay"):
        WeightAverage(model, decay=1.0)


def test_trades_resume_equals_an_uninterrupted_run_and_saves_the_average(tiny_fmnist, tmp_path):
    cfg = _cfg(tiny_fmnist)
    full, meta = train_base(cfg, "trades", tmp_path / "full", progress=False)
    train_base(cfg, "trades", tmp_path / "split", progress=False, max_epochs=1)
    resumed, _ = train_base(cfg, "trades", tmp_path / "split", progress=False, resume=True)
    assert_same_state(full, resumed)
    assert meta["weights"] == "ema" and meta["accuracies"]["val_clean"] > 0.3
    loaded, _ = load_model(tmp_path / "full" / "trades")
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(loaded(x), full(x))  # the saved model is the average that was evaluated
    with pytest.raises(CheckpointError, match="other settings.*train"):
        train_base(_cfg(tiny_fmnist, trades_beta=3.0), "trades", tmp_path / "split", progress=False, resume=True)


def test_width_multiplier_scales_the_model(tiny_fmnist, tmp_path):
    model, meta = train_base(_cfg(tiny_fmnist, width_multiplier=2.0, epochs=1, ema_decay=None), "trades", tmp_path,
                             progress=False)
    assert model.stem.out_channels == 8 and meta.get("weights") is None


@pytest.mark.parametrize("key, value, message", [
    ("trades_beta", 0.0, "trades_beta' must be greater than 0"),
    ("width_multiplier", -1.0, "width_multiplier' must be greater than 0"),
    ("ema_decay", 1.5, r"ema_decay' must be in \(0,1\)"),
])
def test_bad_training_settings_are_errors_naming_the_setting(tmp_path, key, value, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(tmp_path, **{key: value})


def test_cli_beta_is_checked(tmp_path, capsys):
    from adasmooth.cli import main

    assert main(["train-base", "--kind", "standard", "--beta", "3", "--out", str(tmp_path)]) != 0
    assert "--beta applies to --kind trades only" in capsys.readouterr().err
    assert main(["train-base", "--kind", "trades", "--beta", "0", "--out", str(tmp_path)]) != 0
    assert "must be > 0" in capsys.readouterr().err
