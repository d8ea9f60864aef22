"""The whole CIFAR path on synthetic CIFAR-shaped data with tiny variants of the paper's architectures (BiT
ResNet-v2 and a DeepMind-layout WRN), as a user with the real files would run it: train-base on the config's
bases, fit-mixer with gradient accumulation, calibration, evaluation, export, and fit-mixer on two torchrun ranks.
Nothing is downloaded."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from adasmooth.cli import main
from adasmooth.config import config_from_dict, load_config
from adasmooth.training.base import arch_args_for, model_config_for

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


def _write_cifar10(root, n_train=5200, n_test=100, seed=0):
    """torchvision's cifar-10-batches-py layout; classes differ in mean colour so a few steps learn something."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(n):
        labels = rng.integers(0, 10, n)
        base = (labels[:, None] * 23 % 256).astype(np.float32)
        data = np.clip(base + rng.normal(0, 40, (n, 3072)), 0, 255).astype(np.uint8)
        return {b"data": data, b"labels": labels.tolist()}

    per = n_train // 5
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch(per)))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(n_test)))
    return root


def _tiny_cifar_config(root, path):
    """The packaged CIFAR-10 config with tiny architectures, short schedules and a calibrated α range."""
    with open(os.path.join(CONFIGS, "cifar10.yaml")) as fh:
        raw = yaml.safe_load(fh)
    raw["data"]["root"] = str(root)
    raw["bases"]["standard"]["args"] = {"block_units": [1, 1, 1, 1], "width_factor": 1, "stem_width": 32,
                                        "num_classes": 10, "input_size": 32}
    raw["bases"]["robust"]["args"].update(depth=10, width=1)
    t = {"epochs": 1, "batch_size": 50, "lr": 0.05, "augment": True, "seed": 0}
    raw["train_standard"] = t
    raw["train_adversarial"] = {**t, "attack_steps": 2, "attack_step_size": 0.01}
    raw["evaluate"] = {"n": 16, "pgd_steps": 2, "batch_size": 500}
    raw["mixer"].update(width=8, blocks=1, stages=0, batch_size=16, accumulate=2, epochs=1, attack_copies=1,
                        attack_max_iters=2, attack_iters_df=2.0, alpha_range=[], eval_gamma_bias=None,
                        calibration_autoattack=[], tensorboard=False, separation_every=0, checkpoint_every=2,
                        amp=False, train_examples=64)
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory):
    root = _write_cifar10(tmp_path_factory.mktemp("data"))
    work = tmp_path_factory.mktemp("work")
    return {"root": root, "work": work, "config": _tiny_cifar_config(root, work / "config.yaml")}


def test_train_base_trains_the_architecture_the_bases_name():
    cfg = config_from_dict({"data": {"name": "cifar10"},
                            "bases": {"standard": {"architecture": "bit_resnetv2",
                                                   "args": {"block_units": [1, 1, 1, 1], "width_factor": 1}}}})
    model_cfg, from_bases = model_config_for(cfg, "standard")
    assert from_bases and model_cfg.architecture == "bit_resnetv2"
    assert arch_args_for(cfg, "standard", 3, 10) == {"num_classes": 10, "block_units": [1, 1, 1, 1], "width_factor": 1}
    assert model_config_for(cfg, "adversarial") == (cfg.model, False)  # no robust architecture named: model


@pytest.mark.slow
def test_the_cifar_path_end_to_end(cifar_run, capsys):
    work, cfg = cifar_run["work"], str(cifar_run["config"])
    for kind in ("standard", "adversarial"):
        assert main(["train-base", "--kind", kind, "--config", cfg, "--out", str(work / "bases")]) == 0
    side = json.loads((work / "bases" / "standard.json").read_text())
    assert side["architecture"] == "bit_resnetv2" and side["arch_args"]["input_size"] == 32
    raw = yaml.safe_load(cifar_run["config"].read_text())
    raw["bases"]["standard"]["weights"] = str(work / "bases" / "standard.safetensors")
    raw["bases"]["robust"]["weights"] = str(work / "bases" / "adversarial.safetensors")
    cifar_run["config"].write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["fit-mixer", "--config", cfg, "--out", str(work / "mixer"), "--n-calibrate", "8",
                 "--verify-iters", "2"]) == 0
    out = capsys.readouterr().out
    assert "trained 2 steps" in out and "calibrated on 8 validation points" in out  # 64 images / (16 x 2)
    assert len((work / "mixer" / "metrics.jsonl").read_text().splitlines()) == 2
    assert main(["evaluate", "--config", cfg, "--mixer", str(work / "mixer" / "mixer"), "--n-examples", "8",
                 "--separation-square-queries", "0", "--out", str(work / "eval")]) == 0
    report = json.loads(next((work / "eval").glob("*mixer*.json")).read_text())
    assert report["n"] == 8 and report["dataset"] == "cifar10"
    assert 0.0 <= report["robust_accuracy"] <= report["clean_accuracy"] <= 1.0
    assert main(["export", "--config", cfg, "--mixer", str(work / "mixer" / "mixer"), "--out", str(work / "bundle")]) == 0
    from adasmooth import load_bundle

    bundle = load_bundle(work / "bundle" / "model")
    x = torch.rand(2, 3, 32, 32)
    assert bundle(x).shape == (2, 10)


@pytest.mark.slow
def test_cifar_fit_mixer_on_two_torchrun_ranks(cifar_run, tmp_path):
    if not (cifar_run["work"] / "bases" / "standard.safetensors").exists():
        pytest.skip("needs the bases the end-to-end test trains")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    raw = yaml.safe_load(cifar_run["config"].read_text())
    raw["mixer"]["attack_chunk"] = 8
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "adasmooth",
           "fit-mixer", "--config", str(tmp_path / "c.yaml"), "--max-steps", "1", "--out", str(tmp_path / "two")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    if proc.returncode != 0 and "Address family not supported" in proc.stderr:
        pytest.skip("this platform cannot open the local sockets gloo needs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) == 1


def test_download_is_opt_in_and_says_what_it_needs(tmp_path, capsys):
    # an absent folder is an error that names it; it is fetched only with --download
    args = ["train-base", "--kind", "standard", "--config", "cifar10", "--data-root", str(tmp_path),
            "--out", str(tmp_path / "out")]
    assert main(args) == 2
    assert "cifar-10-batches-py" in capsys.readouterr().err
    if __import__("importlib").util.find_spec("torchvision") is None:
        assert main([*args, "--download"]) == 2
        assert "torchvision" in capsys.readouterr().err


def test_a_paper_gate_is_built_from_the_tapped_widths():
    from adasmooth.workflows import build_adaptive

    cfg = load_config(os.path.join(CONFIGS, "cifar10.yaml"))
    cfg = config_from_dict({**cfg.to_dict(), "mixer": {**cfg.to_dict()["mixer"], "gate": "paper",
                                                       "standard_layers": ["layer.0", "layer.1"],
                                                       "robust_layers": ["layer.0", "layer.1"]}})
    from adasmooth.models import build

    # WRN-10-4 taps 64 and 128 channels: the released table's ResNet-18 row, on both sides
    std, rob = build("wide_resnet", depth=10, width=4, num_classes=10), build("wide_resnet", depth=10, width=4, num_classes=10)
    model = build_adaptive(cfg, std, rob, input_shape=(3, 32, 32))
    assert type(model.gate).__name__ == "PaperMixingNetwork" and model.gate.in_planes == (64, 64)
    with torch.no_grad():
        assert model.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.slow
def test_reproduce_runs_a_row_on_a_synthetic_release(tmp_path, capsys):
    """`reproduce as-cifar10-edm` end to end on files in the release's layout (random weights, tiny WRN bases
    so that the released gate's table applies: 64 channels at the first tap), ending beside the published
    numbers."""
    from adasmooth.gates import PaperMixingNetwork
    from adasmooth.models import build

    data = _write_cifar10(tmp_path / "data", n_train=5010, n_test=40)
    release = tmp_path / "release"
    (release / "Base").mkdir(parents=True)
    (release / "CompModel").mkdir()
    torch.manual_seed(0)
    for name in ("cifar10_bit_rn152.tar", "cifar10_linf_edm_wrn70-16.pt"):
        net = build("wide_resnet", depth=10, width=4, num_classes=10)
        torch.save({"model_state_dict": {f"module.0.{k}": v for k, v in net.state_dict().items()}},
                   release / "Base" / name)
    torch.save({"model": PaperMixingNetwork((64, 64)).state_dict(),
                "bn": {"running_mean": torch.zeros(1), "running_var": torch.ones(1),
                       "num_batches_tracked": torch.tensor(0)}}, release / "CompModel" / "cifar10_edm_best.pt")
    with open(os.path.join(CONFIGS, "cifar10.yaml")) as fh:
        raw = yaml.safe_load(fh)
    raw["bases"]["standard"] = {"architecture": "wide_resnet", "args": {"depth": 10, "width": 4, "num_classes": 10}}
    raw["bases"]["robust"]["args"].update(depth=10, width=4)
    raw["mixer"]["standard_layers"] = ["layer.0", "layer.1"]
    raw["evaluate"].update(batch_size=50, separation_iters=2, separation_square_queries=20)  # the gate is 44M parameters
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(raw))
    args = ["reproduce", "as-cifar10-edm", "--root", str(release), "--data-root", str(data), "--config",
            str(tmp_path / "tiny.yaml"), "--n-examples", "4", "--device", "cpu", "--out", str(tmp_path / "out")]
    assert main([*args, "--dry-run"]) == 0 and "ready to run" in capsys.readouterr().out
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "measured" in out and "published     95.23       68.06" in out and "4 attacked (clean on 40)" in out
    mixer = json.loads((tmp_path / "out" / "as-cifar10-edm" / "mixer" / "mixer.json").read_text())
    assert mixer["gate"]["type"] == "PaperMixingNetwork" and mixer["composite"]["alpha_range"] == [0.96, 1.0]
    alpha, = [r["alpha"] for r in map(json.loads, map(Path.read_text, (tmp_path / "out" / "as-cifar10-edm" / "eval")
                                                          .glob("*.json"))) if "alpha" in r]
    assert alpha["settings"]["n_iter"] == 2 and alpha["square"]["queries"] == 20  # the config's separation settings
