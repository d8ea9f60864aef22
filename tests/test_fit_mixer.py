import dataclasses
import json
import math

import pytest
import torch
from conftest import assert_same_state
from torch.optim.optimizer import register_optimizer_step_pre_hook

from adasmooth.config import MixerConfig
from adasmooth.io import CheckpointError
from adasmooth.mixer import AdaptiveMixedClassifier, MixingNetwork
from adasmooth.models import SmallResNet
from adasmooth.training import fit_mixer, mixer_loss
from adasmooth.training.gate_fitting import standard_alone_weights, useful_gate_target

LAYERS = ("stage1", "stage2")


def _composite(seed=0):
    torch.manual_seed(seed)
    std, rob = SmallResNet(width=4).eval(), SmallResNet(width=4).eval()
    gate = MixingNetwork.from_models(std, rob, standard_layers=LAYERS, robust_layers=LAYERS,
                                     input_shape=(1, 28, 28), width=8, blocks=1)
    return AdaptiveMixedClassifier(std, rob, gate, standard_layers=LAYERS, robust_layers=LAYERS)


def _marker_attack(model, x, y, gen):
    """'Attacked' inputs carry a bright corner: a detector that reads features can learn it."""
    out = x.clone()
    out[:, :, :6, :6] = 1.0
    return out


def _data(n=256):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 28, 28, generator=g) * 0.5, torch.randint(0, 10, (n,), generator=g)


CFG = MixerConfig(epochs=2, batch_size=32, lr=1e-2, warmup_fraction=0.1, checkpoint_every=5, c_prod=0.0)


def test_mixer_loss_matches_a_hand_computation():
    log_p = torch.log_softmax(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), 1)
    gamma = torch.tensor([0.5, -0.5])
    y = torch.tensor([0, 0])
    t = torch.tensor([0.0, 1.0])
    got = mixer_loss(log_p, gamma, y, t, c_bce=1.5, c_ce=0.5, c_prod=0.2)
    bce = torch.tensor([math.log1p(math.exp(0.5)), math.log1p(math.exp(0.5))])
    ce = -log_p[:, 0]
    assert got == pytest.approx(float((1.5 * bce + 0.5 * ce + 0.2 * bce * ce).mean()), rel=1e-6)


def test_mixer_learns_to_raise_alpha_on_attacked_inputs(tmp_path):
    model = _composite()
    x, y = _data()
    summary = fit_mixer(model, x, y, CFG, tmp_path, eps=0.1, attack=_marker_attack, progress=False)
    assert summary["steps"] == 16
    xt, yt = _data(64)
    with torch.no_grad():
        a_clean = model.alpha(xt)
        a_att = model.alpha(_marker_attack(model, xt, yt, None))
    assert float(a_att.min()) > float(a_clean.max())  # every attacked input gets more weight on h
    assert float(a_att.mean()) > float(a_clean.mean()) + 0.1
    lines = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines] == list(range(1, 17))


def test_resume_equals_uninterrupted_training(tmp_path):
    x, y = _data(128)
    full = _composite()
    fit_mixer(full, x, y, CFG, tmp_path / "full", eps=0.1, progress=False, attack=_marker_attack)
    part = _composite()
    fit_mixer(part, x, y, CFG, tmp_path / "part", eps=0.1, progress=False, attack=_marker_attack, max_steps=5)
    resumed = _composite()
    fit_mixer(resumed, x, y, CFG, tmp_path / "part", eps=0.1, progress=False, attack=_marker_attack, resume=True)
    assert_same_state(full.gate, resumed.gate)
    assert torch.allclose(full.gamma_bn.running_mean, resumed.gamma_bn.running_mean)


def test_resume_against_other_base_models_is_refused(tmp_path):
    x, y = _data(64)
    fit_mixer(_composite(), x, y, CFG, tmp_path, eps=0.1, progress=False, attack=_marker_attack, max_steps=5)
    with pytest.raises(CheckpointError, match="robust|standard"):
        fit_mixer(_composite(seed=1), x, y, CFG, tmp_path, eps=0.1, progress=False, attack=_marker_attack, resume=True)
    with pytest.raises(CheckpointError, match="mixer"):
        fit_mixer(_composite(), x, y, dataclasses.replace(CFG, lr=0.5), tmp_path, eps=0.1, progress=False,
                  attack=_marker_attack, resume=True)


def test_default_randomized_attack_runs_inside_training(tmp_path):
    x, y = _data(32)
    cfg = dataclasses.replace(CFG, epochs=1, attack_max_iters=2)
    summary = fit_mixer(_composite(), x, y, cfg, tmp_path, eps=0.1, progress=False)
    assert summary["steps"] == 1 and math.isfinite(summary["last"]["loss"])


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    x, y = _data(128)
    model = _composite()
    fit_mixer(model, x, y, CFG, tmp_path, eps=0.1, progress=False, attack=_marker_attack, max_steps=5)
    saved = (tmp_path / "mixer-last.safetensors").read_bytes()

    def poisoned(model, x, y, gen):
        return torch.full_like(x, float("nan"))

    with pytest.raises(FloatingPointError, match=r"step 6.*last good checkpoint.*step 5.*--resume"):
        fit_mixer(model, x, y, CFG, tmp_path, eps=0.1, progress=False, attack=poisoned, resume=True)
    assert (tmp_path / "mixer-last.safetensors").read_bytes() == saved
    # and the run continues from it with a sane attack
    summary = fit_mixer(_composite(), x, y, CFG, tmp_path, eps=0.1, progress=False, attack=_marker_attack, resume=True)
    assert summary["steps"] == 8 and math.isfinite(summary["last"]["loss"])


def test_bfloat16_autocast_option_trains(tmp_path):
    x, y = _data(64)
    cfg = dataclasses.replace(CFG, epochs=1, amp=True)
    summary = fit_mixer(_composite(), x, y, cfg, tmp_path, eps=0.1, progress=False, attack=_marker_attack)
    assert summary["steps"] == 2 and math.isfinite(summary["last"]["loss"])


def test_held_out_separation_is_logged_and_leaves_training_unchanged(tmp_path):
    x, y = _data(128)
    plain = _composite()
    fit_mixer(plain, x, y, CFG, tmp_path / "plain", eps=0.1, progress=False, attack=_marker_attack)
    watched = _composite()
    cfg = dataclasses.replace(CFG, separation_every=4)
    fit_mixer(watched, x, y, cfg, tmp_path / "watched", eps=0.1, progress=False, attack=_marker_attack,
              held_out=_data(16))
    lines = [json.loads(ln) for ln in (tmp_path / "watched" / "metrics.jsonl").read_text().splitlines()]
    checks = [ln for ln in lines if "held_out_auroc" in ln]
    assert [ln["step"] for ln in checks] == [4, 8]
    assert set(checks[0]["held_out_auroc"]) == {"0", "0.5", "1", "2"}
    # the logged numbers are what the separation check measures on the trained gate (step 8 is the last)
    from adasmooth.evaluation.separation import gate_separation

    again = gate_separation(watched.eval(), *_data(16), eps=0.1, seed=CFG.seed)
    assert checks[-1]["held_out_auroc"] == {f"{w:g}": v for w, v in again.auroc.items()}
    for (k, a), b in zip(plain.gate.state_dict().items(), watched.gate.state_dict().values()):
        assert torch.equal(a, b), k  # the check moves neither the weights nor the random state


def test_accumulated_steps_average_the_mini_batch_gradients(tmp_path):
    """accumulate 2 x batch 16: one optimiser step sees 32 examples, two attacks (seeded by mini-batch), and
    the mean of the two mini-batches' gradients, each taken with its own batch statistics."""
    cfg = dataclasses.replace(CFG, batch_size=16, accumulate=2, epochs=1, grad_clip=1e9)
    model = _composite(3)
    before = _composite(3)
    x, y = _data(96)
    calls, grads = [], []

    def recording_attack(m, xb, yb, gen):
        calls.append(len(xb))
        return _marker_attack(m, xb, yb, gen)

    params = [p for p in model.parameters() if p.requires_grad]
    opt_hook = register_optimizer_step_pre_hook(
        lambda opt, *a: grads.append([p.grad.clone() for p in params]))
    try:
        summary = fit_mixer(model, x, y, cfg, tmp_path, eps=0.1, attack=recording_attack, progress=False, max_steps=1)
    finally:
        opt_hook.remove()
    assert summary["total_steps"] == 3 and summary["steps"] == 1 and calls == [16, 16]
    # by hand: the first 32 examples of epoch 0's order, in two mini-batches, each loss halved
    from adasmooth.seeding import epoch_seed

    perm = torch.randperm(96, generator=torch.Generator().manual_seed(epoch_seed(cfg.seed, 0)))
    before.train()
    for part in (perm[:16], perm[16:32]):
        xb, yb = x[part], y[part]
        inputs = torch.cat([xb, _marker_attack(before, xb, yb, None)])
        labels, is_adv = torch.cat([yb, yb]), torch.cat([torch.zeros(16), torch.ones(16)])
        g, h, gamma = before.components(inputs)
        loss = mixer_loss(before.mix(g, h, gamma), gamma, labels, is_adv, c_bce=cfg.c_bce, c_ce=cfg.c_ce,
                          c_prod=cfg.c_prod)
        (0.5 * loss).backward()
    want = [p.grad for p in before.parameters() if p.requires_grad]
    assert len(grads) == 1 and all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(grads[0], want))


def test_useful_gate_target_asks_for_the_standard_model_only_where_it_alone_is_right():
    std = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    rob = torch.tensor([[0.0, 2.0], [2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([0, 0, 0, 0])  # std right/rob wrong, both right, std wrong/rob right, both wrong
    assert useful_gate_target(std, rob, y).tolist() == [0.0, 1.0, 1.0, 1.0]


def _standard_alone_task():
    """Inputs, labels and the "only the standard model is right" mask of a task where half the inputs carry a
    corner marker and are labelled with the standard model's class where the robust model predicts another; the
    rest with the robust model's class."""
    model = _composite(seed=1)
    x, _ = _data(256)
    x[:128, :, :6, :6] = 1.0
    with torch.no_grad():
        g, h = model.standard(x).argmax(1), model.robust(x).argmax(1)
    marked = torch.arange(256) < 128
    assert (g[marked] != h[marked]).float().mean() > 0.5  # the seed gives disagreeing bases on the marked half
    return x, torch.where(marked & (g != h), g, h), marked & (g != h)


def _unchanged(m, xb, yb, gen):
    return xb.clone()


def _alpha_gap(tmp_path, x, y, only_standard, **settings) -> float:
    """Mean α elsewhere minus mean α where only the standard model is right, after training with ``settings``."""
    trained = _composite(seed=1)
    cfg = dataclasses.replace(CFG, epochs=6, **settings)  # γ's BatchNorm (momentum 0.01) needs the steps
    fit_mixer(trained, x, y, cfg, tmp_path / ("-".join(f"{k}={v}" for k, v in settings.items()) or "paper"), eps=0.1, attack=_unchanged,
              progress=False)
    with torch.no_grad():
        a = trained.alpha(x)
    return float(a[~only_standard].mean() - a[only_standard].mean())


def test_useful_gate_target_lowers_alpha_where_only_the_standard_model_is_right(tmp_path):
    """The attack changes nothing, so the paper's target (clean vs attacked) has nothing to learn, while the
    useful target must teach α low where only the standard model is right."""
    x, y, only_standard = _standard_alone_task()
    gaps = {t: _alpha_gap(tmp_path, x, y, only_standard, gate_target=t) for t in ("attacked", "useful")}
    assert gaps["useful"] > 0.4 and gaps["useful"] > gaps["attacked"] + 0.3


def test_standard_alone_weights_multiply_only_clean_inputs_where_the_standard_model_alone_is_right():
    std = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    rob = torch.tensor([[0.0, 2.0], [2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([0, 0, 0, 0])  # standard alone right, both right, robust alone right, standard alone right
    is_adv = torch.tensor([0.0, 0.0, 0.0, 1.0])
    assert standard_alone_weights(std, rob, y, is_adv, None, 5.0).tolist() == [5.0, 1.0, 1.0, 1.0]
    assert standard_alone_weights(std, rob, y, is_adv, torch.full((4,), 2.0), 5.0).tolist() == [10.0, 2.0, 2.0, 2.0]
    assert standard_alone_weights(std, rob, y, is_adv, None, 1.0) is None


def test_standard_alone_weight_lowers_alpha_where_only_the_standard_model_is_right_under_the_papers_target(tmp_path):
    """With the paper's target and an attack that changes nothing, a clean input and its copy pull γ apart
    equally; weighing the clean inputs where only the standard model is right more must lower α there."""
    x, y, only_standard = _standard_alone_task()
    plain = _alpha_gap(tmp_path, x, y, only_standard)
    weighted = _alpha_gap(tmp_path, x, y, only_standard, standard_alone_weight=20.0)
    assert weighted > 0.4 and weighted > plain + 0.3
