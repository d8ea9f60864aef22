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
    # adaptive rows evaluate the released mixing network as it is; --train trains a new one instead
    assert ("import-mixer" in out) == (ROWS[key].method == "adaptive") and "fit-mixer" not in out
    assert "cannot run yet" in out
    assert not (tmp_path / key / "config.yaml").exists()  # a dry run writes nothing
    if ROWS[key].method == "adaptive":
        assert main(["reproduce", key, "--dry-run", "--train", "--root", str(tmp_path), "--out", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert "fit-mixer" in out and "import-mixer" not in out


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
    assert "missing" in err and "(give --robust FILE)" in err and "cifar10_std_rn152.pt" in err
    assert main(["reproduce", "as-cifar100-edm", "--root", str(tmp_path)]) == 2
    assert "missing" in capsys.readouterr().err and "cifar100_edm_best.pt" in err_of(capsys, tmp_path)
    assert main(["reproduce", "nope"]) == 2 and "no reproducible row" in capsys.readouterr().err


def err_of(capsys, root) -> str:
    """The dry run's list of what is missing for as-cifar100-edm under ``root``."""
    main(["reproduce", "as-cifar100-edm", "--dry-run", "--root", str(root)])
    return "\n".join(line for line in capsys.readouterr().out.splitlines() if "MISSING" in line)


def test_mixednuts_rows_write_the_published_map_into_the_config():
    from pathlib import Path

    from adasmooth.published import run_config

    raw = run_config(ROWS["mixednuts-cifar100"], data_root=Path("d"), standard=Path("s"), robust=Path("r"))
    nl = raw["nonlinear"]
    assert (nl["scale"], nl["shift"], nl["power"], nl["alpha"]) == pytest.approx(
        (0.6115753843212784, -2.142857142857143, 3.571428571428571, 0.9860300534207915))
    assert nl["standard_map"] == "hard-one-hot" and nl["k"] >= 100
