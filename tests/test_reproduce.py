"""`adasmooth reproduce`: every published row listed and planned offline, with nothing downloaded."""

import pytest

from adasmooth.cli import main
from adasmooth.published import ROWS


def test_list_names_every_row_with_its_published_numbers(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    for key, published in (("as-cifar100-edm", "85.21  38.72"), ("as-cifar100-trades", "80.18  35.15"),
                           ("as-cifar10-edm", "95.23  68.06"), ("mixednuts-cifar100", "83.08  41.80"),
                           ("mixednuts-cifar10", "95.19  69.71")):
        assert key in out and published in out


@pytest.mark.parametrize("key", sorted(ROWS))
def test_dry_run_of_every_row_prints_the_plan_and_what_is_missing(key, tmp_path, capsys):
    assert main(["reproduce", key, "--dry-run", "--root", str(tmp_path / "none"), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "MISSING" in out and "adasmooth evaluate" in out and "--autoattack standard" in out
    assert ("fit-mixer" in out) == (ROWS[key].method == "adaptive")
    assert "cannot run yet" in out
    assert not (tmp_path / key / "config.yaml").exists()  # a dry run writes nothing


def test_a_row_with_every_file_is_ready_and_a_row_without_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "cifar-10-batches-py").mkdir()
    for name in ("std.pt", "rob.pt"):
        (tmp_path / name).write_bytes(b"")
    args = ["reproduce", "mixednuts-cifar10", "--root", str(tmp_path), "--standard", str(tmp_path / "std.pt"),
            "--robust", str(tmp_path / "rob.pt"), "--out", str(tmp_path / "out")]
    assert main([*args, "--dry-run"]) == 0
    assert "ready to run" in capsys.readouterr().out
    assert main(["reproduce", "mixednuts-cifar10", "--root", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "(give --standard FILE)" in err
    assert main(["reproduce", "as-cifar100-edm", "--root", str(tmp_path)]) == 2
    assert "BiT checkpoint" in capsys.readouterr().err
    assert main(["reproduce", "nope"]) == 2 and "no reproducible row" in capsys.readouterr().err
