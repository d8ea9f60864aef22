"""Sharded evaluation: two gloo ranks launched by torchrun give exactly the single-process per-example
results; finished chunks make a rerun resume; more ranks than chunks is a clear error."""

import json
import os
import subprocess
import sys

import pytest
import torch

from adasmooth.cli import main


@pytest.fixture(scope="module")
def trained_pair(tiny_fmnist, tmp_path_factory):
    """Two small models trained for seconds on the synthetic set (clean and PGD-trained), so the attacks
    have correct predictions to break."""
    from adasmooth.config import config_from_dict
    from adasmooth.training import train_base

    folder = tmp_path_factory.mktemp("pair")
    t = {"epochs": 1, "batch_size": 100, "lr": 0.1, "augment": False, "seed": 0}
    cfg = config_from_dict({"data": {"name": "fashion-mnist", "root": str(tiny_fmnist)},
                            "model": {"architecture": "small_resnet", "args": {"width": 4, "blocks": [1, 1, 1]}},
                            "evaluate": {"n": 20, "pgd_steps": 2, "batch_size": 250}, "train_standard": t,
                            "train_adversarial": {**t, "attack_steps": 2, "attack_step_size": 0.02}})
    train_base(cfg, "standard", folder, progress=False)
    train_base(cfg, "adversarial", folder, progress=False)
    return ["--standard", str(folder / "standard"), "--robust", str(folder / "adversarial")]


def _evaluate_args(tmp_path, tiny_fmnist, out, pair):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("threat:\n  eps: 0.15\nevaluate:\n  pgd_steps: 5\n  batch_size: 8\n")
    return ["evaluate", "--config", str(cfg), "--alpha", "0.8", *pair, "--n-examples", "36", "--chunk-size", "8",
            "--data-root", str(tiny_fmnist), "--out", str(out)]


def _torchrun(args, nproc):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "adasmooth", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)


def _one_process_and_two_ranks(args, tmp_path):
    """``args`` with ``--out tmp_path/one`` on one torchrun process (the same launcher and thread count as the
    ranks) and ``--out tmp_path/two`` on two gloo ranks; both must succeed. Returns both processes."""
    one = _torchrun([*args, "--out", str(tmp_path / "one")], 1)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun([*args, "--out", str(tmp_path / "two")], 2)
    if two.returncode != 0 and "Address family not supported" in two.stderr:
        pytest.skip("this platform cannot open the local sockets gloo needs")
    assert two.returncode == 0, two.stderr[-3000:]
    return one, two


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(tmp_path, tiny_fmnist, trained_pair, capsys):
    single = tmp_path / "single"
    one = _torchrun(_evaluate_args(tmp_path, tiny_fmnist, single, trained_pair), 1)  # same thread count as the ranks
    assert one.returncode == 0, one.stderr[-3000:]
    multi = tmp_path / "multi"
    proc = _torchrun(_evaluate_args(tmp_path, tiny_fmnist, multi, trained_pair), 2)
    if proc.returncode != 0 and "Address family not supported" in proc.stderr:
        pytest.skip("this platform cannot open the local sockets gloo needs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 ranks" in proc.stdout
    a = json.loads((single / "mixed-alpha0.8.json").read_text())
    b = json.loads((multi / "mixed-alpha0.8.json").read_text())
    assert a["robust_per_example"] == b["robust_per_example"] and a["indices"] == b["indices"]
    assert a["clean_accuracy"] == b["clean_accuracy"] and a["robust_accuracy"] == b["robust_accuracy"]
    assert [r["accuracy"] for r in a["attacks"]] == [r["accuracy"] for r in b["attacks"]]
    assert b["environment"]["world_size"] == 2 and a["environment"]["world_size"] == 1
    # the attacks must have done something for the comparison to mean anything
    assert a["clean_accuracy"] > 0.5 and a["robust_accuracy"] < a["clean_accuracy"]


def test_rerun_resumes_from_finished_chunks(tmp_path, tiny_fmnist, trained_pair, capsys):
    out = tmp_path / "ev"
    assert main(_evaluate_args(tmp_path, tiny_fmnist, out, trained_pair)) == 0
    chunks = sorted((out / ".chunks-mixed-alpha0.8").glob("chunk-*.json"))
    assert len(chunks) == 5  # 36 examples in chunks of 8
    first = json.loads((out / "mixed-alpha0.8.json").read_text())
    # tamper with a cached chunk: a resumed run must read it rather than recompute it
    saved = json.loads(chunks[0].read_text())
    saved["result"]["attacks"][0]["robust"] = [False] * 8
    chunks[0].write_text(json.dumps(saved))
    assert main(_evaluate_args(tmp_path, tiny_fmnist, out, trained_pair)) == 0
    again = json.loads((out / "mixed-alpha0.8.json").read_text())
    assert again["robust_per_example"][:8] == [0] * 8
    assert again["robust_per_example"][8:] == first["robust_per_example"][8:]


@pytest.mark.slow
def test_more_ranks_than_chunks_is_an_error(tmp_path, tiny_fmnist, trained_pair):
    args = _evaluate_args(tmp_path, tiny_fmnist, tmp_path / "x", trained_pair)
    args[args.index("--n-examples") + 1] = "8"  # one chunk for two ranks
    proc = _torchrun(args, 2)
    if "Address family not supported" in proc.stderr:
        pytest.skip("this platform cannot open the local sockets gloo needs")
    assert proc.returncode != 0
    assert "some ranks would get no data" in proc.stderr


@pytest.mark.slow
def test_certify_on_two_ranks_equals_one_process(tmp_path, tiny_fmnist, trained_pair, capsys):
    std = trained_pair[1]
    rob = trained_pair[3]
    args = ["certify", "--standard", std, "--robust", rob, "--sigma", "0.25", "--n-points", "8", "--chunk-points", "2",
            "--n0", "10", "--n-samples", "200", "--alphas", "0.8", "1.0", "--data-root", str(tiny_fmnist)]
    one = _torchrun([*args, "--out", str(tmp_path / "one")], 1)  # same launcher and thread count as the ranks
    assert one.returncode == 0, one.stderr[-3000:]
    proc = _torchrun([*args, "--out", str(tmp_path / "two")], 2)
    if proc.returncode != 0 and "Address family not supported" in proc.stderr:
        pytest.skip("this platform cannot open the local sockets gloo needs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "certify.json").read_text())["sigmas"][0]
    b = json.loads((tmp_path / "two" / "certify.json").read_text())["sigmas"][0]
    assert a["per_image"] == b["per_image"] and a["certified_accuracy"] == b["certified_accuracy"]
    assert b["world_size"] == 2
    assert len(list((tmp_path / "one" / ".votes" / "sigma0.25").glob("chunk-*.npz"))) == 4


@pytest.mark.slow
def test_fit_mixer_on_two_ranks_equals_one_process(tmp_path, tiny_fmnist, trained_pair, capsys):
    from safetensors.torch import load_file

    cfg = tmp_path / "m.yaml"
    cfg.write_text("threat:\n  eps: 0.1\nmixer:\n  width: 8\n  blocks: 1\n  batch_size: 16\n  attack_chunk: 8\n"
                   "  attack_max_iters: 3\n  tensorboard: false\n  checkpoint_every: 100\n")
    args = ["fit-mixer", "--config", str(cfg), *trained_pair, "--max-steps", "3", "--data-root", str(tiny_fmnist)]
    # the one-process reference runs under the same launcher and thread count: attacks amplify the
    # last-bit differences that another number of BLAS threads would introduce
    _one_process_and_two_ranks(args, tmp_path)
    a = load_file(str(tmp_path / "one" / "mixer-last.safetensors"))
    b = load_file(str(tmp_path / "two" / "mixer-last.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("model.gate.") for k in a)
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k
    # the mixer did move: its weights differ from a run that took one step fewer
    assert main([*args[:-4], "--max-steps", "2", "--data-root", str(tiny_fmnist), "--out", str(tmp_path / "short")]) == 0
    c = load_file(str(tmp_path / "short" / "mixer-last.safetensors"))
    assert any(not torch.allclose(a[k].float(), c[k].float()) for k in a if k.startswith("model.gate."))
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3  # written once, by rank 0


def test_evaluate_with_bf16_autocast_is_recorded_and_close_to_fp32(tmp_path, tiny_fmnist, trained_pair, capsys):
    args = _evaluate_args(tmp_path, tiny_fmnist, tmp_path / "fp32", trained_pair)
    assert main(args) == 0
    args_bf16 = [*args[:-1], str(tmp_path / "bf16"), "--bf16"]
    assert main(args_bf16) == 0
    a = json.loads((tmp_path / "fp32" / "mixed-alpha0.8.json").read_text())
    b = json.loads((tmp_path / "bf16" / "mixed-alpha0.8.json").read_text())
    assert b["model"]["inference"]["bf16_autocast"] and "inference" not in a["model"]
    assert abs(a["clean_accuracy"] - b["clean_accuracy"]) <= 0.06  # at most 2 of 36 predictions flip


@pytest.mark.slow
def test_mixer_separation_batches_are_shared_by_two_ranks(tmp_path, tiny_fmnist, trained_pair, capsys):
    """A mixer's evaluation on two ranks: the attacks' chunks and the gate's separation batches (gate-aware
    APGD, Square) are split between the ranks, and the report equals the one-process one."""
    from adasmooth.config import config_from_dict
    from adasmooth.io import load_model
    from adasmooth.mixer import save_adaptive
    from adasmooth.workflows.mixer_jobs import build_adaptive

    std, rob = load_model(trained_pair[1])[0], load_model(trained_pair[3])[0]
    mixer = build_adaptive(config_from_dict({"mixer": {"width": 4, "blocks": 0, "stages": 1}}), std, rob,
                           input_shape=(1, 28, 28)).eval()
    save_adaptive(tmp_path / "mixer", mixer)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("threat:\n  eps: 0.15\nevaluate:\n  pgd_steps: 3\n  batch_size: 8\n  separation_iters: 3\n"
                   "  separation_square_queries: 10\n")
    args = ["-v", "evaluate", "--config", str(cfg), "--mixer", str(tmp_path / "mixer"), *trained_pair, "--n-examples", "16",
            "--chunk-size", "8", "--autoattack", "apgd-ce", "--data-root", str(tiny_fmnist)]
    one, proc = _one_process_and_two_ranks(args, tmp_path)
    a = json.loads((tmp_path / "one" / "mixer.json").read_text())
    b = json.loads((tmp_path / "two" / "mixer.json").read_text())
    assert a["robust_per_example"] == b["robust_per_example"]
    assert a["alpha"]["settings"]["n"] == 16 and a["alpha"]["square"]["auroc"] is not None
    assert a["alpha"] == {**b["alpha"], "plot": a["alpha"]["plot"], "usefulness": a["alpha"]["usefulness"]}
    assert "separation batches: chunk 0 computed on rank 0" in proc.stderr
    assert "separation batches: chunk 1 computed on rank 1" in proc.stderr
    assert "separation batches: chunk 0 computed on rank 1" not in proc.stderr  # each batch once, not on every rank
    assert "separation batches: chunk 1 computed on rank 0" in one.stderr
    for out in ("one", "two"):  # two batches of 8, each written once by the rank that computed it
        assert len(list((tmp_path / out / ".chunks-mixer" / "separation").glob("chunk-*.json"))) == 2
