"""The demo workflow's choices, called directly (the whole command runs end to end in the slow test_cli test)."""

import json
import shutil

import pytest
import torch

from adasmooth.calibration.sweep import SweepPoint, SweepResult
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
