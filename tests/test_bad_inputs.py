"""Bad input through the CLI, table-driven: damaged or cut checkpoints, wrong shapes, out-of-range settings,
contradictory options, missing extras, unreadable data. Each case must end in exit code 2, one line on
stderr that names the problem, and no traceback."""

import json
import shutil

import pytest
import torch
from conftest import synthetic_images, write_idx

from adasmooth.cli import main
from adasmooth.io import save_model
from adasmooth.mixer import save_adaptive
from adasmooth.models import SmallResNet
from adasmooth.pretrained import pretrained_dir

ARCH = {"in_channels": 1, "num_classes": 10, "width": 4, "blocks": [1, 1, 1]}


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_fmnist):
    """A tiny base checkpoint, a tiny mixer on a tiny pair, a tiny data folder, reports, configs."""
    root = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    for name in ("std", "rob", "other"):
        save_model(root / name, SmallResNet(**ARCH), architecture="small_resnet", arch_args=ARCH, kind="standard")
    from adasmooth.config import config_from_dict
    from adasmooth.io import load_model
    from adasmooth.workflows.mixer_jobs import build_adaptive

    std, rob = load_model(root / "std")[0], load_model(root / "rob")[0]
    cfg = config_from_dict({"mixer": {"width": 4, "blocks": 0, "stages": 1}})
    save_adaptive(root / "mixer", build_adaptive(cfg, std, rob, input_shape=(1, 28, 28)).eval())
    garbage = root / "garbage-data"
    garbage.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        (garbage / name).write_bytes(b"not an idx file")
    short = root / "short-labels"
    shutil.copytree(tiny_fmnist, short)
    write_idx(short / "t10k-labels-idx1-ubyte", synthetic_images(7, seed=3)[1])
    report = {"model": {"checkpoint": "x"}, "dataset": "fashion-mnist", "split": "test", "eps": 0.1, "norm": "Linf",
              "indices": [0, 1], "robust_per_example": [1, 0], "clean_accuracy": 0.5,
              "attacks": [{"name": "pgd20-ce", "type": "pgd", "steps": 20}]}
    (root / "a.json").write_text(json.dumps(report))
    (root / "b.json").write_text(json.dumps({**report, "attacks": [{"name": "pgd20-ce", "type": "pgd", "steps": 10}]}))
    (root / "eps.json").write_text(json.dumps({**report, "eps": 0.2}))
    (root / "torn.json").write_text(json.dumps(report)[:40])
    wrong_weights = root / "wrong.safetensors"
    from safetensors.torch import save_file

    save_file({"conv.weight": torch.zeros(3)}, str(wrong_weights))
    return {"root": root, "data": tiny_fmnist, "garbage": garbage, "short": short, "wrong": wrong_weights}


def _edit_sidecar(root, name, change):
    meta = json.loads((root / f"{name}.json").read_text())
    change(meta)
    (root / f"{name}.json").write_text(json.dumps(meta))


def _copy(root, src, dst):
    for ext in (".safetensors", ".json"):
        shutil.copy(root / f"{src}{ext}", root / f"{dst}{ext}")
    return root / dst


def _flip_byte(root, name):
    path = root / f"{name}.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x10
    path.write_bytes(bytes(data))


def _config(root, name, text):
    path = root / f"{name}.yaml"
    path.write_text(text)
    return str(path)


def _prepare(case, f):
    """Make the case's files; returns the CLI arguments."""
    root, data = f["root"], str(f["data"])
    ev = ["evaluate", "--data-root", data, "--n", "10", "--out", str(root / f"out-{case}")]
    mix = ["--standard", str(root / "std"), "--robust", str(root / "rob")]
    if case == "weights-bit-flipped":
        _flip_byte(root, _copy(root, "std", "flipped").name)
        return [*ev, "--checkpoint", str(root / "flipped")]
    if case == "weights-cut-short":
        c = _copy(root, "std", "cut")
        (root / "cut.safetensors").write_bytes((root / "cut.safetensors").read_bytes()[:100])
        return [*ev, "--checkpoint", str(c)]
    if case == "weights-cut-unverified":
        c = _copy(root, "std", "cut2")
        (root / "cut2.safetensors").write_bytes((root / "cut2.safetensors").read_bytes()[:100])
        return ["--no-verify", *ev, "--checkpoint", str(c)]
    if case == "weights-missing":
        c = _copy(root, "std", "noweights")
        (root / "noweights.safetensors").unlink()
        return [*ev, "--checkpoint", str(c)]
    if case == "sidecar-missing":
        c = _copy(root, "std", "nosidecar")
        (root / "nosidecar.json").unlink()
        return [*ev, "--checkpoint", str(c)]
    if case == "sidecar-cut":
        c = _copy(root, "std", "cutjson")
        (root / "cutjson.json").write_text((root / "cutjson.json").read_text()[:50])
        return [*ev, "--checkpoint", str(c)]
    if case == "sidecar-not-an-object":
        c = _copy(root, "std", "listjson")
        (root / "listjson.json").write_text("[1, 2]")
        return [*ev, "--checkpoint", str(c)]
    if case == "sidecar-no-architecture":
        c = _copy(root, "std", "noarch")
        _edit_sidecar(root, "noarch", lambda m: m.pop("architecture"))
        return [*ev, "--checkpoint", str(c)]
    if case == "sidecar-unknown-architecture":
        c = _copy(root, "std", "unknownarch")
        _edit_sidecar(root, "unknownarch", lambda m: m.update(architecture="resnet9000"))
        return [*ev, "--checkpoint", str(c)]
    if case == "weights-wrong-shape":
        c = _copy(root, "std", "wide")
        _edit_sidecar(root, "wide", lambda m: m["arch_args"].update(width=8))
        return [*ev, "--checkpoint", str(c)]
    if case == "mixer-sidecar-cut-fingerprints":
        c = _copy(root, "mixer", "mixer-nofp")
        _edit_sidecar(root, "mixer-nofp", lambda m: m.pop("base_fingerprints"))
        return [*ev, "--mixer", str(c), *mix]
    if case == "mixer-gate-wrong-shape":
        c = _copy(root, "mixer", "mixer-shape")
        _edit_sidecar(root, "mixer-shape", lambda m: m["gate"].update(width=8))
        return [*ev, "--mixer", str(c), *mix]
    if case == "mixer-is-a-base-model":
        return [*ev, "--mixer", str(root / "std"), *mix]
    if case == "mixer-other-bases":
        return [*ev, "--mixer", str(root / "mixer"), "--standard", str(root / "other"), "--robust", str(root / "rob")]
    if case == "mixer-with-alpha":
        return [*ev, "--mixer", str(root / "mixer"), "--alpha", "0.5", *mix]
    if case == "mixer-with-robust-scale":
        return [*ev, "--mixer", str(root / "mixer"), "--robust-scale", "2", *mix]
    if case == "checkpoint-with-alpha":
        return [*ev, "--checkpoint", str(root / "std"), "--alpha", "0.5", *mix]
    if case == "recalibrate-over-its-input":
        return ["calibrate-mixer", "--data-root", data, "--mixer", str(root / "mixer"), "--out", str(root / "mixer"),
                *mix]
    if case == "recalibrate-into-the-package":
        return ["calibrate-mixer", "--data-root", data, "--mixer", str(root / "mixer"), *mix, "--out",
                str(pretrained_dir() / "fashion-mnist" / "mixer-test")]
    settings = {
        "config-mixer-epochs-0": "mixer:\n  epochs: 0\n",
        "config-mixer-batch-size-0": "mixer:\n  batch_size: 0\n",
        "config-mixer-checkpoint-every-0": "mixer:\n  checkpoint_every: 0\n",
        "config-eps-negative": "threat:\n  eps: -0.1\n",
        "config-alpha-out-of-range": "sweep:\n  alphas: [0.5, 1.5]\n",
        "config-alpha-range-reversed": "mixer:\n  alpha_range: [0.9, 0.5]\n  eval_gamma_bias: 1.0\n",
        "config-delta-above-one": "certify:\n  delta: 1.5\n",
        "config-label-smoothing-one": "train_standard:\n  label_smoothing: 1.0\n",
        "config-wrong-type": "train_standard:\n  epochs: ten\n",
        "config-unknown-key": "mixer:\n  epoch: 3\n",
        "config-not-yaml": "mixer: [\n",
        "config-bases-weights-do-not-fit": f"bases:\n  standard:\n    architecture: small_resnet\n    args: {{width: 4}}\n"
                                           f"    weights: {f['wrong']}\n",
        "config-bases-missing-extra": "bases:\n  standard:\n    architecture: timm:resnet18\n    weights: x.pt\n",
    }
    if case in settings:
        cfg = _config(root, case, settings[case])
        if case.startswith("config-bases"):
            return ["evaluate", "--config", cfg, "--data-root", data, "--alpha", "0.5", "--n", "10", "--out",
                    str(root / f"out-{case}")]
        return ["fit-mixer", "--config", cfg, "--data-root", data, "--out", str(root / f"out-{case}")]
    if case == "config-missing":
        return ["fit-mixer", "--config", str(root / "nowhere.yaml"), "--out", str(root / "o")]
    if case == "data-folder-missing":
        return ["evaluate", "--data-root", str(root / "no-data"), "--n", "10", "--checkpoint", str(root / "std"),
                "--out", str(root / "o")]
    if case == "data-unreadable":
        return ["evaluate", "--data-root", str(f["garbage"]), "--n", "10", "--checkpoint", str(root / "std"),
                "--out", str(root / "o")]
    if case == "data-labels-do-not-match-images":
        return ["evaluate", "--data-root", str(f["short"]), "--n", "10", "--checkpoint", str(root / "std"),
                "--out", str(root / "o")]
    if case == "noise-training-without-sigma":
        return ["train-base", "--kind", "noise", "--data-root", data, "--out", str(root / "o")]
    if case == "compare-different-plans":
        return ["compare", str(root / "a.json"), str(root / "b.json"), "--out", str(root / "c")]
    if case == "compare-different-eps":
        return ["compare", str(root / "a.json"), str(root / "eps.json"), "--out", str(root / "c")]
    if case == "compare-torn-report":
        return ["compare", str(root / "a.json"), str(root / "torn.json"), "--out", str(root / "c")]
    if case == "compare-negative-bootstrap":
        return ["compare", str(root / "a.json"), f"again={root / 'a.json'}", "--bootstrap", "-1", "--out",
                str(root / "c")]
    raise AssertionError(case)


CASES = {  # case: what the one line must name
    "weights-bit-flipped": "do not match their sidecar",
    "weights-cut-short": "do not match their sidecar",
    "weights-cut-unverified": "unreadable",
    "weights-missing": "not found",
    "sidecar-missing": "not found",
    "sidecar-cut": "not valid JSON",
    "sidecar-not-an-object": "not a JSON object",
    "sidecar-no-architecture": "names no 'architecture'",
    "sidecar-unknown-architecture": "resnet9000",
    "weights-wrong-shape": "do not fit 'small_resnet' as described in",
    "mixer-sidecar-cut-fingerprints": "lacks base_fingerprints",
    "mixer-gate-wrong-shape": "does not fit the architecture its sidecar describes: size mismatch",
    "mixer-is-a-base-model": "not an adaptive mixer",
    "mixer-other-bases": "fit on another standard model",
    "mixer-with-alpha": "does not go with --alpha",
    "mixer-with-robust-scale": "does not go with --alpha, --nonlinear, --standard-scale or --robust-scale",
    "checkpoint-with-alpha": "does not go with --mixer, --alpha",
    "recalibrate-over-its-input": "write over its input",
    "recalibrate-into-the-package": "installed package",
    "config-mixer-epochs-0": "'mixer.epochs' must be an integer at least 1, got 0",
    "config-mixer-batch-size-0": "'mixer.batch_size' must be an integer at least 1",
    "config-mixer-checkpoint-every-0": "'mixer.checkpoint_every' must be an integer at least 1",
    "config-eps-negative": "'threat.eps' must be greater than 0",
    "config-alpha-out-of-range": "'sweep.alphas' must be in [0,1], got [0.5, 1.5]",
    "config-alpha-range-reversed": "'mixer.alpha_range' must be empty or [lo, hi]",
    "config-delta-above-one": "'certify.delta' must be in (0,1)",
    "config-label-smoothing-one": "'train_standard.label_smoothing' must be in [0,1)",
    "config-wrong-type": "'train_standard.epochs' must be an integer",
    "config-unknown-key": "unknown key 'mixer.epoch'",
    "config-not-yaml": "not valid YAML",
    "config-bases-weights-do-not-fit": "wrong.safetensors",
    "config-bases-missing-extra": "pip install",
    "config-missing": "not found",
    "data-folder-missing": "no-data",
    "data-unreadable": "garbage-data",
    "data-labels-do-not-match-images": "labels",
    "noise-training-without-sigma": "sigma",
    "compare-different-plans": "different attack plans",
    "compare-different-eps": "differ in eps",
    "compare-torn-report": "cannot read the report",
    "compare-negative-bootstrap": "bootstrap replicates must be >= 0",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_named(case, files, capsys):
    args = _prepare(case, files)
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, f"{case}: exit {code}, stderr {err!r}"
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("adasmooth ")]
    assert len(lines) == 1 and CASES[case] in lines[0], f"{case}: {err!r}"


def test_verbose_shows_the_traceback(files, capsys):
    assert main(["-v", *_prepare("mixer-with-alpha", files)]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_the_package_files_stay_untouched_by_a_refused_recalibration(files):
    assert not (pretrained_dir() / "fashion-mnist" / "mixer-test.json").exists()
