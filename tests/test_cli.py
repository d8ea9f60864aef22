import json

from conftest import needs_fmnist

from adasmooth.cli import main


def test_config_error_is_one_clear_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("threat:\n  epsilon: 0.1\n")
    assert main(["train-base", "--config", str(cfg), "--kind", "standard", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'threat.epsilon'" in err and str(cfg) in err


def test_resume_without_state_is_a_clear_error(tmp_path, tiny_fmnist, capsys):
    assert main(["train-base", "--kind", "standard", "--out", str(tmp_path), "--resume",
                 "--data-root", str(tiny_fmnist)]) == 2
    assert "cannot resume" in capsys.readouterr().err


@needs_fmnist
def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--n", "20", "--n-sweep", "40", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "AutoAttack" in printed and "gap closed" in printed
    res = json.loads((out / "results.json").read_text())
    assert (out / "tradeoff.png").stat().st_size > 10_000 and (out / "margins.png").stat().st_size > 10_000
    rob = res["test"]["robust"]
    for name in ("standard", "robust", "mixed"):
        r = rob[name]
        assert r["n"] == 20 and r["eps"] == 0.1 and r["norm"] == "Linf"
        assert r["robust_accuracy"] <= r["clean_accuracy"]
        assert r["sanity"]["eps_zero_equals_clean"]["ok"]
    assert [a["type"] for a in rob["mixed"]["attacks"]] == ["autoattack", "transfer", "transfer"]
    assert rob["standard"]["robust_accuracy"] <= 0.1  # an undefended model falls to AutoAttack
    assert res["test"]["clean_accuracy_full"]["n"] == 10000
    assert res["sweep_validation"]["settings"]["n_robust"] == 40
