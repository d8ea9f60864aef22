"""The calibration's replay pool: adversarial examples earlier checks found, tried first on every later one."""

import torch

from adasmooth.calibration import gate as gate_mod
from adasmooth.calibration.replay import AdversarialPool
from adasmooth.mixer import AdaptiveMixedClassifier, MixingNetwork


class _Sign(torch.nn.Module):
    """Class 1 where the first pixel is above 0.5, else class 0 (two logits, margin 10 · distance)."""

    def forward(self, x):
        z = 10 * (x.flatten(1)[:, :1] - 0.5)
        return torch.cat([-z, z], 1)


def test_pool_keeps_examples_inside_the_ball_replays_them_and_survives_a_restart(tmp_path):
    x = torch.full((4, 1, 2, 2), 0.45)
    y = torch.zeros(4, dtype=torch.long)  # all right on the clean points
    pool = AdversarialPool(x, eps=0.1, path=tmp_path / "pool")
    assert pool.robust_mask(_Sign(), y).all() and len(pool) == 0
    adv = x[[1, 3]].clone()
    adv[0, 0, 0, 0] = 0.55  # crosses, 0.1 away: kept
    adv[1, 0, 0, 0] = 0.75  # crosses, 0.3 away: outside the ball, refused
    assert pool.add(torch.tensor([1, 3]), adv, source="by hand") == 1 and pool.sources == ["by hand"]
    assert pool.robust_mask(_Sign(), y).tolist() == [True, False, True, True]
    again = AdversarialPool(x, eps=0.1, path=tmp_path / "pool")  # a resumed calibration reads it back
    assert again.robust_mask(_Sign(), y).tolist() == [True, False, True, True] and again.sources == ["by hand"]
    other = AdversarialPool(x + 0.01, eps=0.1, path=tmp_path / "pool")  # other points: not used
    assert len(other) == 0
    again.discard()
    assert not list(tmp_path.iterdir())


class _LinearWithStage(torch.nn.Module):
    """Linear logits, easy to break inside a small ball, and a conv stage for the gate to tap."""

    def __init__(self):
        super().__init__()
        self.stage1 = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.head = torch.nn.Linear(28 * 28, 10)
        with torch.no_grad():
            self.head.weight.mul_(1.4)

    def forward(self, x):
        return self.head(x.flatten(1)) + 0.0 * self.stage1(x).mean()


def _composite():
    torch.manual_seed(0)
    std, rob = _LinearWithStage().eval(), _LinearWithStage().eval()
    gate = MixingNetwork.from_models(std, rob, standard_layers=["stage1"], robust_layers=["stage1"],
                                     input_shape=(1, 28, 28), width=8, blocks=1)
    model = AdaptiveMixedClassifier(std, rob, gate, standard_layers=["stage1"], robust_layers=["stage1"]).eval()
    x = torch.rand(24, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)  # every point right on its clean image
    return model, x, y


def test_a_check_adds_what_its_attacks_find_and_a_later_check_replays_it_first(monkeypatch):
    model, x, y = _composite()
    attacks = []
    run = gate_mod.GateAPGDAttack.robust_mask
    monkeypatch.setattr(gate_mod.GateAPGDAttack, "robust_mask", lambda self, *a, **k: attacks.append(1) or run(self, *a, **k))
    opts = {"eps": 0.1, "n_iter": 5, "weights": (0.0,)}
    pool = AdversarialPool(x, eps=0.1)
    model.alpha_range = (0.0, 1.0)
    first = gate_mod.gate_attack_set_robust_mask(model, x, y, pool=pool, **opts)
    assert (~first).sum() >= 12 and len(pool) == int((~first).sum())  # every example that broke a point is kept
    assert ((pool.examples - x[pool.index]).abs().amax() <= 0.1 + 1e-6)
    assert set(pool.sources) <= {"gate-apgd-ce", "gate-apgd-t3", "transfer-from-standard"} and pool.sources[0]

    model.alpha_range = (0.1, 1.0)  # another candidate: the same examples are tried before any attack
    n_attacks = len(attacks)
    clean = float(gate_mod.correct_mask(model, x, y).float().mean())
    need = clean - 0.5 / len(y)  # fails only if some point right on its clean image is broken
    replayed = gate_mod.gate_attack_set_robust_mask(model, x, y, pool=pool, stop_below=need, **opts)
    assert len(attacks) == n_attacks  # the replay alone failed it
    assert replayed.float().mean() < need
    full = gate_mod.gate_attack_set_robust_mask(model, x, y, pool=pool, **opts)  # no early stop: every attack
    assert not (full & ~pool.robust_mask(model, y)).any()  # what the replay breaks stays broken


def test_a_failing_check_stops_inside_a_slow_attack_not_after_it(monkeypatch):
    """With ``stop_below``, an attack runs on pieces of ``stop_chunk`` examples and the check stops at the first
    piece after which the verdict cannot recover; without it, every example is attacked."""
    model, x, y = _composite()
    seen = []

    def break_first_of_each_call(self, model, xs, ys, **kwargs):  # stands in for a slow attack such as FAB-T
        seen.append(len(xs))
        robust = torch.ones(len(xs), dtype=torch.bool)
        robust[0] = False
        return type("Out", (), {"robust": robust, "x_adv": xs.clone()})()

    monkeypatch.setattr(gate_mod.GateAPGDAttack, "robust_mask", break_first_of_each_call)
    opts = {"eps": 0.1, "weights": (0.0,), "stop_chunk": 5}
    need = 1 - 1.5 / len(y)  # two broken points fail the check
    early = gate_mod.gate_attack_set_robust_mask(model, x, y, stop_below=need, **opts)
    assert seen == [5, 5] and int((~early).sum()) == 2  # stopped after the second piece of the first attack
    seen.clear()
    full = gate_mod.gate_attack_set_robust_mask(model, x, y, **opts)  # no early stop: whole attacks, every one
    assert seen == [24, 23] and int((~full).sum()) == 2


def test_an_interrupted_check_continues_after_its_last_finished_piece(monkeypatch):
    """A check saves its state after every piece; given that state back, it attacks only the pieces left and
    ends with the mask of a check that was never interrupted."""
    model, x, y = _composite()
    seen = []

    def break_first_of_each_call(self, model, xs, ys, **kwargs):
        seen.append(len(xs))
        robust = torch.ones(len(xs), dtype=torch.bool)
        robust[0] = False
        return type("Out", (), {"robust": robust, "x_adv": xs.clone()})()

    monkeypatch.setattr(gate_mod.GateAPGDAttack, "robust_mask", break_first_of_each_call)
    opts = {"eps": 0.1, "weights": (0.0,), "stop_chunk": 5, "stop_below": 0.0}  # pieces, never an early stop
    whole = gate_mod.gate_attack_set_robust_mask(model, x, y, **opts)
    assert seen == [5, 5, 5, 5, 4, 5, 5, 5, 4] and int((~whole).sum()) == 9

    saved = []

    def killed_at_the_seventh_piece(state):
        saved.append(state)
        if len(saved) == 7:
            raise KeyboardInterrupt
    seen.clear()
    try:
        gate_mod.gate_attack_set_robust_mask(model, x, y, on_piece=killed_at_the_seventh_piece, **opts)
    except KeyboardInterrupt:
        pass
    state = saved[-1]
    assert (state["attack"], state["pieces_done"], state["label"]) == (1, 2, "gate-apgd-t3")
    seen.clear()
    resumed = gate_mod.gate_attack_set_robust_mask(model, x, y, resume=state, **opts)
    assert seen == [5, 4]  # only the two pieces left of the second attack
    assert torch.equal(resumed, whole)
    seen.clear()
    misfit = gate_mod.gate_attack_set_robust_mask(model, x[:20], y[:20], resume=state, **opts)  # other points
    assert seen[0] == 5 and len(seen) == 8 and int((~misfit).sum()) == 8  # not used: the check starts afresh
