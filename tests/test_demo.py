"""The demo workflow's choices, called directly, and the whole command end to end (slow)."""

import json
import shutil

import pytest
import torch
from conftest import needs_fmnist

from adasmooth.calibration.sweep import SweepPoint, SweepResult
from adasmooth.cli import main
from adasmooth.config import load_config
from adasmooth.io import CheckpointError
from adasmooth.pretrained import load_pretrained, pretrained_dir
from adasmooth.workflows import demo as demo_mod
from adasmooth.workflows import run_demo
from adasmooth.workflows.common import with_data_root


def _fake_sweep(alpha: float) -> SweepResult:
    point = SweepPoint(alpha, 1.0, 2.0, 0.9, 0.7)
    return SweepResult(points=[point], standard={"clean_accuracy": 0.93, "robust_accuracy": 0.0},
                       robust={"clean_accuracy": 0.86, "robust_accuracy": 0.72}, chosen=point,
                       target={"keep_robust": 0.97, "robust_reference": 0.72, "rule": "max clean"},
                       settings={"n_robust": 7})


def test_the_demo_reads_the_shipped_sweep_record_only_when_its_key_matches(tmp_path, monkeypatch, tiny_fmnist):
    shipped = tmp_path / "pretrained" / "fashion-mnist"
    shutil.copytree(pretrained_dir() / "fashion-mnist", shipped)
    (shipped / "sweep.json").unlink(missing_ok=True)
    monkeypatch.setenv("ADASMOOTH_PRETRAINED", str(tmp_path / "pretrained"))
    cfg, pair = with_data_root(load_config(), str(tiny_fmnist)), load_pretrained()
    calls = []
    monkeypatch.setattr(demo_mod, "sweep", lambda *a, **k: calls.append(k["n_robust"]) or _fake_sweep(0.8))

    chosen, result, record = demo_mod.choose_alpha(cfg, pair, n_sweep=7, device="cpu", progress=False)
    assert calls == [7] and record["source"] == "computed" and chosen["alpha"] == 0.8
    # ship a record of this very sweep (another α, to tell them apart): it is read, not recomputed
    (shipped / "sweep.json").write_text(json.dumps({**record, "sweep": _fake_sweep(0.6).to_dict()}))
    chosen, result, record2 = demo_mod.choose_alpha(cfg, pair, n_sweep=7, device="cpu", progress=False)
    assert calls == [7] and record2["source"].startswith("shipped") and record2["key"] == record["key"]
    assert chosen["alpha"] == 0.6 and chosen["robust_scale"] == 2.0 and result == _fake_sweep(0.6)
    # another setting, other weights or --fresh-sweep: recomputed
    demo_mod.choose_alpha(cfg, pair, n_sweep=8, device="cpu", progress=False)
    demo_mod.choose_alpha(cfg, pair, n_sweep=7, device="cpu", progress=False, reuse_shipped=False)
    with torch.no_grad():
        pair.robust.fc.bias.add_(1e-3)
    demo_mod.choose_alpha(cfg, pair, n_sweep=7, device="cpu", progress=False)
    assert calls == [7, 8, 7, 7]
    (shipped / "sweep.json").write_text(json.dumps({"kind": "nonlinear-map"}))
    with pytest.raises(CheckpointError, match="not a validation-sweep record"):
        demo_mod.choose_alpha(cfg, pair, n_sweep=7, device="cpu", progress=False)


def test_unknown_demo_rows_are_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(demo_mod, "load_pretrained", lambda *a, **k: pytest.fail("loaded models before checking rows"))
    with pytest.raises(ValueError, match="unknown demo rows \\['fixed'\\]"):
        run_demo(load_config(), tmp_path, rows=("robust", "fixed"))


def test_clean_flags_from_the_bases_logits_equal_each_models_own_pass():
    """The demo computes each base's clean logits once and scores the bases and every fixed-α mixture of them
    from those; the flags must be the ones each model's own forward pass gives, maps and scales included."""
    from types import SimpleNamespace

    from conftest import LinearModel

    from adasmooth import MixedClassifier
    from adasmooth.evaluation import correct_mask
    from adasmooth.transforms import HardOneHot, MixedNUTSMap

    gen = torch.Generator().manual_seed(0)
    std, rob = LinearModel(torch.randn(10, 16, generator=gen)), LinearModel(torch.randn(10, 16, generator=gen))
    pair = SimpleNamespace(standard=std, robust=rob)
    x = torch.rand(300, 1, 4, 4, generator=gen)
    y = torch.randint(0, 10, (300,), generator=gen)
    models = [std, rob, MixedClassifier(std, rob, alpha=0.7, robust_scale=2.0),
              MixedClassifier(std, rob, alpha=0.6, robust_map=MixedNUTSMap(scale=2.0, shift=0.1, power=1.5, k=3),
                              standard_map=HardOneHot(value=100.0))]
    cache: dict = {}
    for m in models:
        flags = demo_mod.clean_flags_from_bases(m, pair, x, y, cache, batch_size=128, device="cpu")
        assert torch.equal(flags, correct_mask(m, x, y, batch_size=128))
    assert set(cache) == {"standard", "robust"}
    assert 0.05 < float(flags.float().mean()) < 0.95  # flags of both values: the equality says something
    other = LinearModel(torch.randn(10, 16, generator=gen))
    assert demo_mod.clean_flags_from_bases(MixedClassifier(other, rob, alpha=0.7), pair, x, y, cache,
                                           batch_size=128, device="cpu") is None
    assert demo_mod.clean_flags_from_bases(other, pair, x, y, cache, batch_size=128, device="cpu") is None


@needs_fmnist
@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    """The one end-to-end demo: every kind of row under its plan, the files it writes, the table it prints.
    AutoAttack runs its APGD-CE alone here: APGD-T's nine targets took half of this test's time, and FAB-T and
    Square's 5,000 queries on every row would take most of the suite's. The standard set's four sub-attacks run
    through the adapter in test_evaluation."""
    out = tmp_path / "demo"
    rows = "standard,robust,mixed,adaptive,nonlinear"
    cfg = tmp_path / "demo.yaml"
    # three sweep points instead of ten: the sweep itself runs in test_evaluate_sweep_and_margins_commands
    cfg.write_text("demo:\n  autoattack_version: apgd-ce\nsweep:\n  alphas: [0.8, 0.9, 1.0]\n")
    assert main(["demo", "--config", str(cfg), "--n", "6", "--n-sweep", "10", "--rows", rows, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "AutoAttack" in printed and "gap closed" in printed and "Mixed, α=" in printed
    assert "worst case over AutoAttack-apgd-ce, PGD" in printed  # the quick look is named beside every row's merit
    assert "shipped comparison on 1,000 test points" in printed  # the shipped curve, keyed to the shipped weights
    res = json.loads((out / "results.json").read_text())
    for png in ("tradeoff.png", "margins.png", "alpha.png", "alpha-usefulness.png"):
        assert (out / png).stat().st_size > 10_000
    assert res["alpha"]["adaptive"]["usefulness"]["n"] == 10000  # every clean test image
    rob = res["test"]["robust"]
    assert set(rob) == set(rows.split(","))
    for r in rob.values():
        assert r["n"] == 6 and r["eps"] == 0.1 and r["norm"] == "Linf"
        assert r["robust_accuracy"] <= r["clean_accuracy"]
        assert r["robust_accuracy"] <= min(a["accuracy"] for a in r["attacks"])  # the worst case over the plan
        assert r["sanity"]["eps_zero_equals_clean"]["ok"]
    assert [a["type"] for a in rob["mixed"]["attacks"]] == ["pgd", "transfer", "transfer", "autoattack"]
    assert {"gate-apgd", "autoattack"} <= {a["type"] for a in rob["adaptive"]["attacks"]}
    names = {a["name"] for a in rob["nonlinear"]["attacks"]}  # a logit map is also attacked through its surrogate
    aa = "autoattack-apgd-ce"
    assert {aa, f"{aa}-surrogate", "pgd20-ce-surrogate"} <= names
    assert rob["standard"]["robust_accuracy"] <= 1 / 6  # an undefended model falls to AutoAttack
    full = res["test"]["clean_accuracy_full"]
    assert full["n"] == 10000 and "nonlinear" in full
    assert res["sweep_validation"]["settings"]["n_robust"] == 10
    assert res["sweep_source"] == "computed"  # 10 sweep points: not the shipped record's settings
    record = json.loads((out / "sweep.json").read_text())
    assert record["kind"] == "validation-sweep" and record["sweep"] == res["sweep_validation"]
    assert res["figure_of_merit"] is not None
