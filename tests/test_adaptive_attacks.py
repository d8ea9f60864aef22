import math

import torch
import torch.nn.functional as F

from adasmooth.attacks import composite_attack_loss, gate_bce, randomized_attack
from adasmooth.mixer import AdaptiveMixedClassifier, MixingNetwork
from adasmooth.models import SmallResNet


def test_composite_loss_matches_a_hand_computation():
    log_p = torch.log_softmax(torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 3.0, -2.0]]), 1)
    gamma = torch.tensor([0.3, -1.2])
    y = torch.tensor([0, 2])
    w = torch.tensor([0.25, 0.0])
    got = composite_attack_loss(log_p, gamma, y, w=w)
    ce = -log_p[torch.arange(2), y]
    bce = torch.tensor([math.log1p(math.exp(-0.3)), math.log1p(math.exp(1.2))])
    assert torch.allclose(got, (1 - w) * ce + w * bce, atol=1e-6)
    assert torch.allclose(gate_bce(gamma, 0.0), F.softplus(gamma), atol=1e-6)
    # targeted rows use targeted DLR, rows with target -1 keep CE
    t = composite_attack_loss(log_p, gamma, y, w=0.0, targets=torch.tensor([1, -1]))
    z = log_p[0]
    s = z.sort(descending=True).values
    dlr = -(z[0] - z[1]) / (s[0] - 0.5 * (s[2] + s[3]) + 1e-12)
    assert torch.allclose(t, torch.stack([dlr, ce[1]]), atol=1e-5)


def test_randomized_attack_stays_in_the_ball_and_is_seeded():
    torch.manual_seed(0)
    std, rob = SmallResNet(width=4).eval(), SmallResNet(width=4).eval()
    layers = ("stage1", "stage2")
    gate = MixingNetwork.from_models(std, rob, standard_layers=layers, robust_layers=layers, input_shape=(1, 28, 28), width=8)
    model = AdaptiveMixedClassifier(std, rob, gate, standard_layers=layers, robust_layers=layers).eval()
    x = torch.rand(6, 1, 28, 28)
    y = torch.randint(0, 10, (6,))
    a = randomized_attack(model, x, y, eps=0.1, generator=torch.Generator().manual_seed(1), max_iters=4)
    b = randomized_attack(model, x, y, eps=0.1, generator=torch.Generator().manual_seed(1), max_iters=4)
    assert torch.equal(a, b)
    assert (a - x).abs().max() <= 0.11 + 1e-6 and a.min() >= 0 and a.max() <= 1
    assert (a != x).any()


def test_gate_pgd_lowers_gamma_and_the_runner_reports_it():
    from adasmooth.attacks import gate_pgd
    from adasmooth.evaluation import PGDAttack, evaluate_robustness

    torch.manual_seed(0)
    std, rob = SmallResNet(width=4).eval(), SmallResNet(width=4).eval()
    layers = ("stage1", "stage2")
    gate = MixingNetwork.from_models(std, rob, standard_layers=layers, robust_layers=layers, input_shape=(1, 28, 28), width=8)
    model = AdaptiveMixedClassifier(std, rob, gate, standard_layers=layers, robust_layers=layers).eval()
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)
        gamma0 = model.gamma(x)
    # with w = 1 the attack only pushes the gate toward "clean": γ must go down
    x_adv = gate_pgd(model, x, (y + 1) % 10, eps=0.1, w=1.0, steps=10, step_size=0.02,
                     generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert model.gamma(x_adv).mean() < gamma0.mean()
    rep = evaluate_robustness(model, x, y, [PGDAttack(steps=3, gate_weight=0.5, name="gate-pgd"),
                                            PGDAttack(steps=3, gate_weight=0.5, loss="dlr-targeted", name="gate-pgd-t")],
                              eps=0.1, sanity_checks=False, progress=False)
    assert [a["type"] for a in rep.attacks] == ["gate-pgd", "gate-pgd"] and rep.attacks[0]["gate_weight"] == 0.5
