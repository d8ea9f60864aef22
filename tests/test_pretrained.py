import pytest
import torch
from conftest import needs_fmnist

from adasmooth import load_pretrained
from adasmooth.attacks import pgd
from adasmooth.data import load
from adasmooth.evaluation import accuracy, attack_batched
from adasmooth.io import CheckpointError


def _assert_recorded_accuracy(model, meta, x, y):
    recorded = meta["accuracies"]
    assert accuracy(model, x, y) == pytest.approx(recorded["test_clean"], abs=0.03)
    # the recorded PGD-20 number was measured on exactly these 1,000 points with this seed
    att = meta["attack"]
    x_adv = attack_batched(pgd, model, x[: att["n"]], y[: att["n"]], eps=att["eps"], norm=att["norm"],
                           steps=att["steps"], step_size=att["step_size"], batch_size=500,
                           generator=torch.Generator().manual_seed(att["seed"]))
    key = f"test_pgd{att['steps']}_first{att['n']}"
    assert accuracy(model, x_adv, y[: att["n"]]) == pytest.approx(recorded[key], abs=0.005)


@needs_fmnist
@pytest.mark.slow  # PGD-20 on 1,000 test points of both shipped models
def test_shipped_models_reach_their_recorded_accuracy():
    pair = load_pretrained("fashion-mnist")
    assert not pair.standard.training and not pair.robust.training
    x, y = load("fashion-mnist", "test")
    x, y = x[:1000], y[:1000]
    for model, meta in ((pair.standard, pair.metadata["standard"]), (pair.robust, pair.metadata["robust"])):
        _assert_recorded_accuracy(model, meta, x, y)
    # the shipped models' targets, so a retrained model that misses them fails loudly
    assert pair.metadata["standard"]["accuracies"]["test_clean"] >= 0.92
    assert pair.metadata["robust"]["accuracies"]["test_clean"] >= 0.80
    assert pair.metadata["robust"]["accuracies"]["test_pgd20_first1000"] >= 0.70


@needs_fmnist
@pytest.mark.slow
def test_the_width_16_base_reaches_its_record_and_the_pair_base_is_stronger():
    from adasmooth.io import load_model
    from adasmooth.pretrained import pretrained_dir

    folder = pretrained_dir() / "fashion-mnist"
    model, meta = load_model(folder / "adversarial-w16", expect_num_classes=10)  # the pair's earlier robust base
    assert not model.training and meta["arch_args"]["width"] == 16
    x, y = load("fashion-mnist", "test")
    _assert_recorded_accuracy(model, meta, x[:1000], y[:1000])
    # the pair's robust base is better on both axes, by records measured under the same attack on the same
    # points (test_shipped_models_reach_their_recorded_accuracy measures that record again)
    shipped = load_pretrained("fashion-mnist").metadata["robust"]
    assert shipped["attack"] == meta["attack"]
    for key in ("test_clean", "test_pgd20_first1000"):
        assert shipped["accuracies"][key] > meta["accuracies"][key] + 0.015, key


@needs_fmnist
@pytest.mark.slow
def test_the_wide_standard_base_reaches_95_percent_as_recorded():
    from adasmooth.io import load_model
    from adasmooth.pretrained import pretrained_dir

    model, meta = load_model(pretrained_dir() / "fashion-mnist" / "standard-wide", expect_num_classes=10)
    x, y = load("fashion-mnist", "test")
    measured = accuracy(model, x, y)
    assert measured >= 0.95 and measured == pytest.approx(meta["accuracies"]["test_clean"], abs=0.002)
    assert meta["arch_args"]["blocks"] == [2, 2, 2] and meta["weights"] == "ema"


def test_unknown_name_and_missing_folder(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="no pretrained models"):
        load_pretrained("imagenet")
    monkeypatch.setenv("ADASMOOTH_PRETRAINED", str(tmp_path))
    with pytest.raises(CheckpointError, match="pretrained/README.md"):
        load_pretrained("fashion-mnist")


def test_pair_json_names_which_shipped_checkpoints_form_the_pair(tmp_path, monkeypatch):
    import json

    from adasmooth.config import config_from_dict
    from adasmooth.io import save_model
    from adasmooth.models import SmallResNet
    from adasmooth.pretrained import shipped_pair_stem
    from adasmooth.workflows.export import base_architectures

    folder = tmp_path / "fashion-mnist"
    arch = {"in_channels": 1, "num_classes": 10, "width": 4, "blocks": [1, 1, 1]}
    for seed, stem, width in ((0, "standard", 4), (1, "adversarial", 4), (2, "standard-b", 8)):
        torch.manual_seed(seed)
        save_model(folder / stem, SmallResNet(**{**arch, "width": width}), architecture="small_resnet",
                   arch_args={**arch, "width": width})
    monkeypatch.setenv("ADASMOOTH_PRETRAINED", str(tmp_path))
    x = torch.rand(3, 1, 28, 28)

    def standard_out():
        return load_pretrained("fashion-mnist").standard(x)

    default = standard_out()  # no pair.json: standard and adversarial
    assert shipped_pair_stem("fashion-mnist", "robust") == folder / "adversarial"
    (folder / "pair.json").write_text(json.dumps({"kind": "shipped-pair", "standard": "standard-b",
                                                  "robust": "adversarial"}))
    assert shipped_pair_stem("fashion-mnist", "standard") == folder / "standard-b"
    assert not torch.allclose(standard_out(), default)
    cfg = config_from_dict({})
    assert base_architectures(cfg)["standard"]["arch_args"]["width"] == 8  # export rebuilds the named model
    assert base_architectures(cfg)["robust"]["arch_args"]["width"] == 4
    for bad, match in (({"kind": "shipped-pair", "standard": "../standard", "robust": "adversarial"}, "must name"),
                       ({"kind": "shipped-pair", "standard": "standard-b"}, "not a shipped-pair record"),
                       ({"kind": "sweep", "standard": "standard", "robust": "adversarial"}, "not a shipped-pair")):
        (folder / "pair.json").write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match=match):
            load_pretrained("fashion-mnist")
    with pytest.raises(ValueError, match="role must be"):
        shipped_pair_stem("fashion-mnist", "mixer")


@needs_fmnist
def test_shipped_mixer_reproduces_its_validation_calibration():
    pair = load_pretrained("fashion-mnist")
    if pair.adaptive is None:
        pytest.skip("no mixer shipped")
    cal = pair.metadata["adaptive"]["calibration"]
    lo, hi = pair.adaptive.alpha_range
    assert (lo, hi) == (cal["chosen"]["alpha_lo"], cal["chosen"]["alpha_hi"])
    assert pair.adaptive.gamma_bias == cal["chosen"]["gamma_bias"]
    x, y = load("fashion-mnist", "val")
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[: cal["n"]]
    clean_on = idx if cal.get("clean_n", cal["n"]) == cal["n"] else torch.arange(len(y))  # points, or the split
    assert accuracy(pair.adaptive, x[clean_on], y[clean_on]) == pytest.approx(cal["chosen"]["clean"], abs=1e-6)
    with torch.no_grad():
        a = pair.adaptive.alpha(x[idx[:200]])
    assert ((a >= lo) & (a <= hi)).all()
    assert cal["target_met"] and not pair.adaptive.training


@needs_fmnist
@pytest.mark.parametrize("sigma", [0.25, 0.5])
def test_shipped_noise_models_classify_noisy_images(sigma):
    from adasmooth.certify import Smooth
    from adasmooth.io import load_model
    from adasmooth.pretrained import pretrained_dir

    model, meta = load_model(pretrained_dir() / "fashion-mnist" / f"noise-sigma{sigma:g}")
    assert meta["kind"] == "noise" and meta["sigma"] == sigma
    x, y = load("fashion-mnist", "test")
    x, y = x[:300], y[:300]
    gen = torch.Generator().manual_seed(0)
    noisy = x + sigma * torch.randn(x.shape, generator=gen)
    acc = accuracy(model, noisy, y)
    assert abs(acc - meta["accuracies"]["test_under_noise_one_draw"]) < 0.06  # 300 points vs the full test set
    votes = Smooth(model, 10, sigma, batch_size=1000).probabilities(x[:50], 100, generator=gen).argmax(1)
    assert (votes == y[:50]).float().mean() > 0.6


@needs_fmnist
def test_shipped_nonlinear_map_keeps_the_robust_prediction_and_fills_an_uncalibrated_config():
    import dataclasses

    from adasmooth.config import Config
    from adasmooth.mixing import mix_log_probs, nonlinear_mixture
    from adasmooth.pretrained import with_shipped_nonlinear

    pair = load_pretrained("fashion-mnist")
    shipped = pair.nonlinear
    assert shipped["split"] == "val" and 0.5 <= shipped["alpha"] <= 1.0
    nc = with_shipped_nonlinear(Config().nonlinear)
    assert (nc.scale, nc.shift, nc.power, nc.k, nc.alpha) == (
        shipped["map"]["scale"], shipped["map"]["shift"], shipped["map"]["power"], shipped["map"]["k"], shipped["alpha"])
    mine = dataclasses.replace(Config().nonlinear, scale=1.0, shift=0.0, power=1.0, alpha=0.9)
    assert with_shipped_nonlinear(mine) == mine  # a calibrated config wins
    x, y = load("fashion-mnist", "val")
    x, y = x[:2000], y[:2000]
    mixed = nonlinear_mixture(pair.standard, pair.robust, nc).eval()
    with torch.no_grad():
        h = pair.robust(x)
        assert (mixed.robust_map(h).argmax(1) == h.argmax(1)).all()  # the map never changes the prediction
        # on validation the mixture gains clean accuracy over the robust model
        mix = mix_log_probs(pair.standard(x), mixed.robust_map(h), nc.alpha)
    assert (mix.argmax(1) == y).float().mean() > (h.argmax(1) == y).float().mean()


@needs_fmnist
def test_two_composites_on_the_same_bases_each_compute_what_they_compute_alone():
    from adasmooth.config import Config
    from adasmooth.mixer import load_adaptive
    from adasmooth.mixing import nonlinear_mixture
    from adasmooth.pretrained import pretrained_dir, with_shipped_nonlinear

    pair = load_pretrained("fashion-mnist")
    stem = pretrained_dir() / "fashion-mnist" / "mixer"
    # an adaptive + nonlinear composite: the shipped gate with the shipped map on the robust logits
    with_map = load_adaptive(stem, pair.standard, pair.robust).eval()
    with_map.robust_map = nonlinear_mixture(pair.standard, pair.robust, with_shipped_nonlinear(Config().nonlinear)).robust_map
    with_map.robust_scale = 1.0
    x, _ = load("fashion-mnist", "val")
    x = x[:64]
    with torch.no_grad():  # both tap the same base models through forward hooks
        both = pair.adaptive(x), with_map(x)
        alone = load_adaptive(stem, pair.standard, pair.robust).eval()(x)
    assert torch.allclose(both[0], alone, atol=1e-5)
    assert not torch.allclose(both[0], both[1], atol=1e-3)  # the map changes what the second one computes


@needs_fmnist
def test_the_shipped_sweep_record_is_the_sweep_the_demo_runs_at_its_defaults():
    from adasmooth import data as data_mod
    from adasmooth.config import load_config
    from adasmooth.pretrained import shipped_sweep
    from adasmooth.workflows.demo import sweep_record_key

    cfg, pair, record = load_config(), load_pretrained(), shipped_sweep("fashion-mnist")
    x_val, y_val = data_mod.load("fashion-mnist", "val")
    # a stale record (other weights or settings) would be ignored silently: keep it in step with the pair
    assert record["key"] == sweep_record_key(cfg, pair, x_val, y_val, n_sweep=cfg.sweep.n_robust, device="cpu")
    sweep = record["sweep"]
    assert [p["alpha"] for p in sweep["points"]] == list(cfg.sweep.alphas) and sweep["settings"]["n_robust"] == 200
    chosen = sweep["chosen"]
    assert chosen["robust_accuracy"] >= cfg.sweep.keep_robust * sweep["robust"]["robust_accuracy"] - 1e-9


def test_the_shipped_comparison_is_shown_only_for_the_weights_it_was_measured_on(tmp_path):
    import dataclasses

    import torch

    from adasmooth.plots import plot_test_points
    from adasmooth.pretrained import load_pretrained, shipped_comparison

    pair = load_pretrained("fashion-mnist")
    ref = shipped_comparison("fashion-mnist", pair)
    assert ref is not None and ref["n"] == 1000 and not ref["like_for_like"]
    a = ref["adaptive"]
    lo, hi = a["interval"]
    assert lo <= a["clean_above_fixed_curve"] <= hi
    # the curve runs from the standard base to at least the robust base's clean accuracy, on the same points
    assert max(ref["fixed_curve"])[0] == ref["bases"]["standard"]["clean"]
    assert min(ref["fixed_curve"])[0] >= ref["bases"]["robust"]["clean"]
    if a.get("margin_bound") == "lower":  # its envelope lies on or above the curve
        assert len(ref["fixed_envelope"]) <= len(ref["fixed_curve"]) and ref["plan_extras"]
    other = load_pretrained("fashion-mnist")
    with torch.no_grad():
        next(other.robust.parameters()).add_(1e-3)
    assert shipped_comparison("fashion-mnist", dataclasses.replace(pair, robust=other.robust)) is None
    png = plot_test_points({"standard": (0.92, 0.0), "robust": (0.87, 0.71)}, tmp_path / "t.png", reference=ref)
    assert png.stat().st_size > 10_000
    # a record whose fixed points met a part of the mixer's plan draws their envelope and says "at least"
    lower = {**ref, "fixed_envelope": ref["fixed_curve"], "adaptive": {**a, "margin_bound": "lower"}}
    png = plot_test_points({"standard": (0.92, 0.0), "robust": (0.87, 0.71)}, tmp_path / "l.png", reference=lower)
    assert png.stat().st_size > 10_000 and png.read_bytes() != (tmp_path / "t.png").read_bytes()
