import itertools
import json

import pytest
from conftest import needs_fmnist

from adasmooth.cli import main


def test_config_error_is_one_clear_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("threat:\n  epsilon: 0.1\n")
    assert main(["train-base", "--config", str(cfg), "--kind", "standard", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'threat.epsilon'" in err and str(cfg) in err


def test_resume_with_nothing_to_resume_starts_afresh_and_half_a_state_is_a_clear_error(tmp_path, tiny_fmnist, capsys):
    # one command starts and restarts a long run: `nohup adasmooth train-base ... --resume`
    args = ["train-base", "--kind", "standard", "--out", str(tmp_path), "--resume", "--max-epochs", "1",
            "--data-root", str(tiny_fmnist)]
    assert main(args) == 0
    assert (tmp_path / "standard-last.safetensors").is_file()
    (tmp_path / "standard-last.safetensors").unlink()
    assert main(args) == 2
    assert "cannot resume" in capsys.readouterr().err


def test_demo_rows_default_to_the_adaptive_model_and_its_bases(tmp_path, monkeypatch):
    from adasmooth import workflows

    seen = []

    class _Done:
        seconds = 0.0

        def format(self):
            return "table"

    monkeypatch.setattr(workflows, "run_demo", lambda cfg, out, **kw: seen.append(kw["rows"]) or _Done())
    out = str(tmp_path / "d")
    assert main(["demo", "--out", out]) == 0
    assert main(["demo", "--rows", "robust,mixed", "--out", out]) == 0
    assert main(["demo", "--all-rows", "--out", out]) == 0
    assert seen == [("standard", "robust", "adaptive"), ("robust", "mixed"), workflows.ALL_ROWS]
    assert {"mixed", "nonlinear", "adaptive_nonlinear"} <= set(workflows.ALL_ROWS)
    with pytest.raises(SystemExit, match="do not go together"):
        main(["demo", "--all-rows", "--rows", "robust", "--out", out])


@needs_fmnist
@pytest.mark.slow  # evaluate, sweep and margins end to end on the shipped pair: minutes
def test_evaluate_sweep_and_margins_commands(tmp_path, capsys):
    assert main(["evaluate", "--n", "50", "--out", str(tmp_path / "ev")]) == 0
    printed = capsys.readouterr().out
    assert "standard" in printed and "adversarial" in printed and "pgd20-ce" in printed
    ev = json.loads((tmp_path / "ev" / "adversarial.json").read_text())
    assert ev["n"] == 50 and ev["n_full_split"] == 10000 and ev["attacks"][0]["steps"] == 20
    assert ev["robust_accuracy"] <= ev["clean_accuracy"]
    flags = ev["clean_per_example_full_split"]  # what compare resamples, paired across models
    assert len(flags) == 10000 and sum(flags) / 10000 == pytest.approx(ev["clean_accuracy_full_split"])

    assert main(["sweep", "--alphas", "0", "0.8", "1", "--n", "30", "--out", str(tmp_path / "sw")]) == 0
    sw = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [p["alpha"] for p in sw["points"]] == [0.0, 0.8, 1.0]
    assert sw["settings"]["n_clean"] == 5000  # validation split, never the test set
    assert (tmp_path / "sw" / "tradeoff.png").is_file()

    assert main(["margins", "--n", "100", "--alpha", "0.8", "--out", str(tmp_path / "mg")]) == 0
    mg = json.loads((tmp_path / "mg" / "margins.json").read_text())
    assert mg["setup"]["split"] == "val" and mg["threshold"]["margin"] == pytest.approx(0.25)
    # benign confidence: the robust model is more confident where it is right than where it is wrong
    assert mg["clean_correct"]["median"] > mg["clean_wrong"]["median"]
    assert mg["attacked_correct"]["median"] > mg["attacked_wrong"]["median"]


@pytest.mark.slow  # training, calibration with Square checks, and a recalibration: minutes
def test_fit_mixer_command_trains_calibrates_and_saves(tmp_path, tiny_fmnist, capsys):
    import torch

    from adasmooth.io import load_model, save_model
    from adasmooth.mixer import load_adaptive
    from adasmooth.models import SmallResNet

    for i, name in enumerate(("std", "rob")):
        torch.manual_seed(i)
        save_model(tmp_path / name, SmallResNet(width=4), architecture="small_resnet", arch_args={"width": 4})
    cfg = tmp_path / "c.yaml"
    cfg.write_text("mixer:\n  width: 8\n  blocks: 1\n  batch_size: 500\n  attack_max_iters: 2\n"
                   "  calibration_autoattack: [square]\n  calibration_square_queries: 50\n")
    args = ["fit-mixer", "--config", str(cfg), "--out", str(tmp_path / "mix"), "--data-root", str(tiny_fmnist),
            "--standard", str(tmp_path / "std"), "--robust", str(tmp_path / "rob"), "--n-calibrate", "40",
            "--verify-iters", "3"]
    assert main(args) == 0
    assert "calibrated on 40 validation points" in capsys.readouterr().out
    std, _ = load_model(tmp_path / "std")
    rob, _ = load_model(tmp_path / "rob")
    model = load_adaptive(tmp_path / "mix" / "mixer", std, rob)
    meta = json.loads((tmp_path / "mix" / "mixer.json").read_text())
    assert meta["training"]["steps"] == 3 and meta["calibration"]["n"] == 40
    recipe, command = meta["training"]["recipe"], meta["training"]["command"]  # the record a shipped mixer needs
    assert recipe["width"] == 8 and recipe["attack_max_iters"] == 2 and recipe["calibration_square_queries"] == 50
    assert command.startswith("adasmooth fit-mixer --config ") and "--n-calibrate 40" in command
    assert meta["calibration"]["checked"] and "robust_verified" in meta["calibration"]["chosen"]
    verify = meta["calibration"]["verify_attack"]
    assert "square (official)" in verify["name"] and verify["square_queries"] == 50
    lo, hi = model.alpha_range
    a = model.alpha(torch.rand(5, 1, 28, 28))
    assert ((a >= lo) & (a <= hi)).all()
    # re-calibration keeps the training record and writes a loadable mixer
    args = ["calibrate-mixer", "--config", str(cfg), "--mixer", str(tmp_path / "mix" / "mixer"), "--out",
            str(tmp_path / "mix" / "again"), "--data-root", str(tiny_fmnist), "--standard", str(tmp_path / "std"),
            "--robust", str(tmp_path / "rob"), "--n-calibrate", "30", "--verify-iters", "3"]
    assert main(args) == 0
    again = json.loads((tmp_path / "mix" / "again.json").read_text())
    assert again["training"] == meta["training"] and again["calibration"]["n"] == 30
    load_adaptive(tmp_path / "mix" / "again", std, rob)


def test_calibrate_command_writes_a_map_a_plot_and_a_config(tmp_path, tiny_fmnist, capsys):
    import torch

    from adasmooth.config import load_config
    from adasmooth.io import save_model
    from adasmooth.models import SmallResNet

    torch.manual_seed(0)
    save_model(tmp_path / "rob", SmallResNet(width=4), architecture="small_resnet", arch_args={"width": 4})
    cfg = tmp_path / "c.yaml"
    out = tmp_path / "cal"
    # an untrained robust model: wrong on most clean points, and many of its predictions survive a tiny attack
    cfg.write_text("threat:\n  eps: 0.001\nnonlinear:\n  attack_iters: 2\n  beta: 0.9\n")
    args = ["calibrate", "--config", str(cfg), "--n", "200", "--out", str(out), "--data-root", str(tiny_fmnist),
            "--robust", str(tmp_path / "rob"), "--write-config", str(tmp_path / "chosen.yaml")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "chosen map" in printed
    res = json.loads((out / "calibration.json").read_text())
    chosen = load_config(tmp_path / "chosen.yaml").nonlinear
    assert (chosen.scale, chosen.shift, chosen.power) == (res["scale"], res["shift"], res["power"])
    assert chosen.alpha == pytest.approx(res["alpha"]) and 0.5 <= chosen.alpha <= 1.0
    assert res["split"] == "val" and res["n"] == 200
    assert (out / "objective.png").stat().st_size > 10_000
    # the calibrated mixture is evaluated with the mixed plan; an uncalibrated config is a clear error
    save_model(tmp_path / "std", SmallResNet(width=4), architecture="small_resnet", arch_args={"width": 4})
    pair = ["--standard", str(tmp_path / "std"), "--robust", str(tmp_path / "rob"), "--data-root", str(tiny_fmnist)]
    assert main(["evaluate", "--config", str(tmp_path / "chosen.yaml"), "--nonlinear", "--n", "8",
                 "--out", str(tmp_path / "ev"), *pair]) == 0
    rep = json.loads((tmp_path / "ev" / "nonlinear.json").read_text())
    assert rep["model"]["robust_map"]["type"] == "mixednuts" and rep["model"]["alpha"] == pytest.approx(chosen.alpha)
    # the mixed plan plus PGD guided by the straight-through surrogate (no --autoattack here)
    assert [a["name"] for a in rep["attacks"]] == ["pgd20-ce", "transfer-from-standard", "transfer-from-robust",
                                                  "pgd20-ce-surrogate"]
    assert rep["attacks"][-1]["guided_by"] == "straight-through surrogate"
    assert rep["robust_accuracy"] <= min(a["accuracy"] for a in rep["attacks"])
    capsys.readouterr()
    assert main(["evaluate", "--config", str(cfg), "--nonlinear", "--n", "8", *pair]) == 2
    assert "not calibrated" in capsys.readouterr().err


def test_certify_command_writes_curves_a_plot_and_the_goal_check(tmp_path, tiny_fmnist, capsys):
    import torch

    from adasmooth.io import save_model
    from adasmooth.models import SmallResNet

    torch.manual_seed(0)
    save_model(tmp_path / "std", SmallResNet(width=4), architecture="small_resnet", arch_args={"width": 4})
    save_model(tmp_path / "noise-sigma0.5", SmallResNet(width=4), architecture="small_resnet",
               arch_args={"width": 4}, kind="noise", sigma=0.5)
    out = tmp_path / "cert"
    args = ["certify", "--standard", str(tmp_path / "std"), "--robust", str(tmp_path / "noise-sigma0.5"),
            "--n-points", "6", "--n0", "10", "--n", "100", "--alphas", "0.8", "1.0", "--out", str(out),
            "--data-root", str(tiny_fmnist)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "sigma=0.5" in printed and "alpha=0.8" in printed and "goal" in printed
    res = json.loads((out / "certify.json").read_text())
    (s,) = res["sigmas"]
    assert s["sigma"] == 0.5 and res["n_points"] == 6 and res["n"] == 100 and res["split"] == "test"
    assert set(s["certified_accuracy"]) == {"smoothed", "alpha=0.8", "alpha=1"}
    for name, curve in s["certified_accuracy"].items():
        assert curve[0] <= s["clean_accuracy"][name] + 1e-9 or name == "smoothed"
        assert all(a >= b for a, b in itertools.pairwise(curve))
    assert len(s["per_image"]["mixture_radius"]["alpha=0.8"]) == 6
    assert (out / "certified.png").stat().st_size > 10_000
    # a checkpoint without its sigma needs --sigma; alpha below 1/2 is refused with the reason
    save_model(tmp_path / "plain", SmallResNet(width=4), architecture="small_resnet", arch_args={"width": 4})
    assert main([*args[:3], "--robust", str(tmp_path / "plain"), *args[5:]]) == 2
    assert "--sigma" in capsys.readouterr().err
    bad = [*args]
    bad[bad.index("0.8")] = "0.4"
    assert main(bad) == 2
    assert "alpha >= 1/2" in capsys.readouterr().err
