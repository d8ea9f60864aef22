import json

import pytest

from adasmooth.cli import main
from adasmooth.evaluation.compare import compare_reports, fixed_curve_clean_at


def _report(model, clean, flags, indices=None, **kw):
    indices = list(range(len(flags))) if indices is None else indices
    return {"model": model, "dataset": "fashion-mnist", "split": "test", "eps": 0.1, "norm": "Linf",
            "indices": indices, "robust_per_example": flags, "clean_accuracy": 0.5,
            "clean_accuracy_full_split": clean, "attacks": [{"name": "pgd20-ce"}], **kw}


def _reports():
    return {
        "standard": _report({"checkpoint": "standard"}, 0.92, [0] * 10),
        # 10 points; only the first 4 are shared with every report: 3 of them robust
        "robust": _report({"checkpoint": "adversarial"}, 0.85, [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]),
        "fixed-0.8": _report({"type": "MixedClassifier", "alpha": 0.8}, 0.87, [1, 1, 0, 0, 1, 1]),
        "nonlinear": _report({"type": "MixedClassifier", "alpha": 0.95, "robust_map": {"type": "mixednuts"}},
                             0.88, [1, 1, 0, 1]),
    }


def test_compare_uses_shared_examples_and_measures_the_gap_to_the_fixed_curve():
    res = compare_reports(_reports(), standard="standard", robust="robust")
    assert res["n_shared"] == 4
    m = {x["name"]: x for x in res["models"]}
    assert m["robust"]["robust"] == pytest.approx(0.75) and m["fixed-0.8"]["robust"] == pytest.approx(0.5)
    assert m["nonlinear"]["robust"] == pytest.approx(0.75)
    assert m["fixed-0.8"]["kind"] == "fixed" and m["nonlinear"]["kind"] == "other"
    # figures of merit against the base models: gap (0.88-0.85)/(0.92-0.85), kept 0.75/0.75
    assert m["nonlinear"]["gap_closed"] == pytest.approx(3 / 7) and m["nonlinear"]["robust_kept"] == pytest.approx(1)
    # at robust 0.75 the curve is the robust model itself (clean 0.85): the nonlinear mixture is 3 points above
    assert m["nonlinear"]["clean_above_fixed_curve"] == pytest.approx(0.03)
    assert m["fixed-0.8"]["clean_above_fixed_curve"] is None
    assert res["fixed_curve"] == [(0.92, 0.0), (0.87, 0.5), (0.85, 0.75)]


def test_fixed_curve_interpolates_linearly_and_stays_inside_its_range():
    curve = [(0.92, 0.0), (0.87, 0.5), (0.85, 0.75)]
    assert fixed_curve_clean_at(curve, 0.25) == pytest.approx(0.895)
    assert fixed_curve_clean_at(curve, 0.6) == pytest.approx(0.87 - 0.02 * 0.4)
    assert fixed_curve_clean_at(curve, 0.8) is None


def test_compare_refuses_reports_of_different_threat_models():
    r = _reports()
    r["robust"]["eps"] = 0.2
    with pytest.raises(ValueError, match="differ in eps"):
        compare_reports(r)
    r = _reports()
    r["nonlinear"]["indices"] = [100, 101, 102, 103]
    with pytest.raises(ValueError, match="share no test examples"):
        compare_reports(r)
    with pytest.raises(ValueError, match="not among"):
        compare_reports(_reports(), robust="adversarial")


def test_compare_command_writes_json_and_plot(tmp_path, capsys):
    args = []
    for name, rep in _reports().items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(rep))
        args.append(f"{name}={path}")
    out = tmp_path / "cmp"
    assert main(["compare", *args, "--standard", "standard", "--robust", "robust", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "+3.00 pts" in printed and "4 examples" in printed
    assert json.loads((out / "compare.json").read_text())["n_shared"] == 4
    assert (out / "tradeoff.png").stat().st_size > 10_000
    assert main(["compare", str(tmp_path / "robust.json"), str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
