"""Kill a run, resume it, get the uninterrupted result bit for bit.

Each job (train-base, fit-mixer with its calibration, evaluate) runs once uninterrupted, then again killed
at chosen moments: after a training step, inside a save (between the pending sidecar and the weights, and
between the weights and the sidecar), after a calibration journal entry or an evaluation chunk
(``$ADASMOOTH_FAULT_AT``, which ends the process like SIGKILL: no clean-up), and by a real SIGKILL at a
seeded random time. Every killed run is resumed with the same command, and its final artifacts must equal
the uninterrupted run's.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from adasmooth.io import load_tensors, save_model
from adasmooth.models import SmallResNet

pytestmark = pytest.mark.slow


def _run(args, *, fault=None, kill_after=None, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("ADASMOOTH_FAULT_AT", None)
    if fault:
        env["ADASMOOTH_FAULT_AT"] = fault
    proc = subprocess.Popen([sys.executable, "-m", "adasmooth", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _same_tensors(a, b):
    ta, tb = load_tensors(a)[0], load_tensors(b)[0]
    assert sorted(ta) == sorted(tb)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def _kill_then_resume(args_for, out_root, reference, faults, *, timed_kills, ref_seconds, check):
    rng = random.Random(0)
    cases = [(f, None) for f in faults] + [(None, rng.uniform(2.0, max(3.0, ref_seconds))) for _ in range(timed_kills)]
    for i, (fault, delay) in enumerate(cases):
        out = out_root / f"case{i}"
        code, _, err = _run(args_for(out), fault=fault, kill_after=delay)
        if fault:
            assert code == 137, f"{fault}: the fault point was never reached (exit {code}): {err[-400:]}"
        code, _, err = _run(args_for(out))
        assert code == 0, f"{fault or f'SIGKILL after {delay:.1f} s'}: resume failed: {err[-600:]}"
        check(out, reference)


def test_train_base_resumes_to_the_uninterrupted_weights(tmp_path, tiny_fmnist):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "model:\n  architecture: small_resnet\n  args: {width: 4, blocks: [1, 1, 1]}\n"
        "evaluate: {n: 50, pgd_steps: 2, batch_size: 250}\n"
        "train_standard: {epochs: 2, batch_size: 200, lr: 0.1, augment: true, ema_decay: 0.99, label_smoothing: 0.1,"
        " random_erasing: 0.5, seed: 0}\n")

    def args(out):
        return ["train-base", "--config", str(cfg), "--kind", "standard", "--data-root", str(tiny_fmnist), "--out",
                str(out), "--resume"]

    t0 = time.perf_counter()
    assert _run(args(tmp_path / "ref"))[0] == 0
    seconds = time.perf_counter() - t0

    def check(out, ref):
        _same_tensors(out / "standard", ref / "standard")
        assert not list(out.glob(".*.pending"))

    faults = ["train-step:5", "train-step:12", "save-before-weights:1", "save-before-sidecar:1",
              "save-before-sidecar:3"]
    _kill_then_resume(args, tmp_path, tmp_path / "ref", faults, timed_kills=2, ref_seconds=seconds, check=check)


def test_fit_mixer_and_its_calibration_resume_to_the_uninterrupted_mixer(tmp_path, tiny_fmnist):
    for i, name in enumerate(("std", "rob")):
        torch.manual_seed(i)
        save_model(tmp_path / name, SmallResNet(width=4), architecture="small_resnet", arch_args={"width": 4})
    cfg = tmp_path / "c.yaml"
    cfg.write_text("mixer:\n  width: 8\n  blocks: 1\n  batch_size: 100\n  train_examples: 300\n  attack_max_iters: 2\n"
                   "  checkpoint_every: 1\n"
                   "  separation_every: 0\n  tensorboard: false\n"
                   "  calibration_autoattack: [square]\n  calibration_square_queries: 30\n")

    def args(out):
        return ["fit-mixer", "--config", str(cfg), "--out", str(out), "--data-root", str(tiny_fmnist), "--standard",
                str(tmp_path / "std"), "--robust", str(tmp_path / "rob"), "--n-calibrate", "30", "--verify-iters",
                "2", "--resume"]

    t0 = time.perf_counter()
    code, _, err = _run(args(tmp_path / "ref"))
    assert code == 0, err[-600:]
    seconds = time.perf_counter() - t0
    ref_meta = json.loads((tmp_path / "ref" / "mixer.json").read_text())
    assert ref_meta["training"]["steps"] == 3 and ref_meta["training"]["last"]

    def check(out, ref):
        _same_tensors(out / "mixer", ref / "mixer")
        meta = json.loads((out / "mixer.json").read_text())
        assert meta["calibration"]["chosen"] == ref_meta["calibration"]["chosen"]
        assert meta["training"]["steps"] == 3 and meta["training"]["last"] == ref_meta["training"]["last"]
        assert not (out / "mixer-calibration-journal.json").exists()

    faults = ["train-step:2", "save-before-sidecar:2", "journal-saved:1", "journal-saved:2"]
    _kill_then_resume(args, tmp_path, tmp_path / "ref", faults, timed_kills=1, ref_seconds=seconds, check=check)


def test_evaluate_resumes_to_the_uninterrupted_report(tmp_path, tiny_fmnist):
    torch.manual_seed(0)
    save_model(tmp_path / "m", SmallResNet(width=4), architecture="small_resnet", arch_args={"width": 4})

    def args(out):
        return ["evaluate", "--checkpoint", str(tmp_path / "m"), "--data-root", str(tiny_fmnist), "--n", "60",
                "--chunk-size", "10", "--out", str(out)]

    t0 = time.perf_counter()
    assert _run(args(tmp_path / "ref"))[0] == 0
    seconds = time.perf_counter() - t0

    def strip(report):
        report = dict(report)
        for key in ("seconds", "environment"):
            report.pop(key, None)
        report["attacks"] = [{k: v for k, v in a.items() if k != "seconds"} for a in report["attacks"]]
        return report

    def check(out, ref):
        assert strip(json.loads((out / "m.json").read_text())) == strip(json.loads((ref / "m.json").read_text()))

    _kill_then_resume(args, tmp_path, tmp_path / "ref", ["chunk-saved:2", "chunk-saved:5"], timed_kills=1,
                      ref_seconds=seconds, check=check)
