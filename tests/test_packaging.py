"""A wheel built from the tree carries the embedded default (checkpoints, calibration, configs) and, installed
outside the tree, loads the shipped pair and runs a command with its default config from another folder."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import needs_fmnist

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ["adasmooth/assets/configs/fmnist.yaml", "adasmooth/assets/configs/cifar100.yaml",
           "adasmooth/assets/pretrained/fashion-mnist/standard.safetensors",
           "adasmooth/assets/pretrained/fashion-mnist/adversarial.json",
           "adasmooth/assets/pretrained/fashion-mnist/mixer.safetensors",
           "adasmooth/assets/pretrained/fashion-mnist/nonlinear.json"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel, installed with --target into a folder outside the source tree."""
    tmp = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "--disable-pip-version-check", "-w", str(tmp / "dist"), str(ROOT)],
                           capture_output=True, text=True, check=False)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp / "dist").glob("adasmooth-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [n for n in SHIPPED if n not in names]
    assert not missing, f"the wheel lacks {missing}"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--disable-pip-version-check",
                           "--target", str(tmp / "site"), str(wheel)], capture_output=True, text=True, check=False)
    assert inst.returncode == 0, inst.stderr[-2000:]
    return tmp


def _run(installed: Path, args: list[str]) -> subprocess.CompletedProcess:
    elsewhere = installed / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(installed / "site")}
    env.pop("ADASMOOTH_PRETRAINED", None)
    return subprocess.run([sys.executable, *args], cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=600, check=False)


@needs_fmnist
def test_installed_wheel_loads_the_shipped_pair_from_another_folder(installed):
    code = ("import adasmooth, json; from adasmooth import load_pretrained; from adasmooth.config import load_config; "
            "p = load_pretrained('fashion-mnist'); c = load_config(); "
            "print(json.dumps({'file': adasmooth.__file__, 'mixer': p.adaptive is not None, 'eps': c.threat.eps}))")
    proc = _run(installed, ["-c", code])
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["file"].startswith(str(installed / "site"))  # the installed copy, not the source tree
    assert out["mixer"] and out["eps"] == 0.1


@needs_fmnist
@pytest.mark.slow  # a subprocess evaluating from an installed wheel
def test_installed_wheel_runs_evaluate_with_its_default_config_from_another_folder(installed):
    proc = _run(installed, ["-m", "adasmooth", "evaluate", "--n", "8", "--out", "ev"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((installed / "elsewhere" / "ev" / "adversarial.json").read_text())
    assert report["n"] == 8 and report["eps"] == 0.1 and report["clean_accuracy"] > 0.8
