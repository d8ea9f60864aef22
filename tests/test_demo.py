"""The demo workflow on a few points, called directly (the whole command runs in the slow test_cli test)."""

import json

import pytest
from conftest import needs_fmnist

from adasmooth.config import load_config
from adasmooth.workflows import run_demo


@pytest.mark.slow  # AutoAttack on three models: about a minute
@needs_fmnist
def test_demo_workflow_reports_each_row_under_its_plan(tmp_path):
    res = run_demo(load_config(), tmp_path, n=6, n_sweep=10, rows=("standard", "robust", "mixed"))
    assert [r.key for r in res.rows] == ["standard", "robust", "mixed"]
    mixed = res.row("mixed")
    assert [a["type"] for a in mixed.evaluation.report.attacks] == ["pgd", "transfer", "transfer", "autoattack"]
    assert mixed.merit is not None and res.row("robust").merit is None
    for r in res.rows:
        rep = r.evaluation.report
        assert rep.n == 6 and rep.robust_accuracy <= rep.clean_accuracy
        assert rep.robust_accuracy <= min(a["accuracy"] for a in rep.attacks)
    assert res.row("standard").evaluation.report.robust_accuracy <= 1 / 6  # an undefended model falls
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["test"]["clean_accuracy_full"]["n"] == 10000 and saved["sweep_validation"]["settings"]["n_robust"] == 10
    assert saved["figure_of_merit"] == mixed.merit
    table = res.format()
    assert "Mixed, α=" in table and "gap closed" in table and "AutoAttack" in table
    assert (tmp_path / "tradeoff.png").is_file() and (tmp_path / "margins.png").is_file()
