"""The paper's mixer recipe: the γ pipeline (training clamp, BatchNorm momentum), the official-APGD training
attack, and the gate's separation diagnostics."""

import math

import pytest
import torch
from torch import nn

from adasmooth.mixer import AdaptiveMixedClassifier
from adasmooth.models import build


class FixedGate(nn.Module):
    """A gate whose raw scores are given: the γ pipeline can then be checked by hand."""

    def __init__(self, raw):
        super().__init__()
        self.raw = raw

    def forward(self, standard_features, robust_features):
        return self.raw.clone()


def _bases():
    torch.manual_seed(0)
    return (build("small_resnet", in_channels=1, num_classes=10, width=4).eval(),
            build("small_resnet", in_channels=1, num_classes=10, width=4).eval())


def test_gamma_clamp_and_momentum_follow_the_papers_formula_on_a_hand_computed_batch():
    std, rob = _bases()
    model = AdaptiveMixedClassifier(std, rob, FixedGate(torch.tensor([0.0, 0.0, 0.0, 10.0])), standard_layers=["stage1"],
                                    robust_layers=["stage1"], gamma_scale=2.0, gamma_bias=0.4, gamma_clamp=0.6,
                                    bn_momentum=0.01).train()
    gamma = model.gamma(torch.rand(4, 1, 28, 28))
    # mean 2.5, unbiased std 5: clamped to [2.5 - 3, 2.5 + 3], so 10 -> 5.5
    clamped = torch.tensor([0.0, 0.0, 0.0, 5.5])
    mean, var = clamped.mean(), clamped.var(unbiased=False)  # 1.375, 5.671875
    expected = 2.0 * (clamped - mean) / torch.sqrt(var + 1e-5) + 0.4
    assert torch.allclose(gamma, expected, atol=1e-5)
    assert model.gamma_bn.running_mean.item() == pytest.approx(0.01 * 1.375)
    assert model.gamma_bn.running_var.item() == pytest.approx(0.99 + 0.01 * 5.671875 * 4 / 3)
    model.eval()  # evaluation never clamps: the raw 10 goes through the running statistics
    g_eval = model.gamma(torch.rand(4, 1, 28, 28))
    rm, rv = model.gamma_bn.running_mean, model.gamma_bn.running_var
    assert g_eval[3].item() == pytest.approx((2.0 * (10 - rm) / torch.sqrt(rv + 1e-5) + 0.4).item(), rel=1e-5)
    with pytest.raises(ValueError, match="gamma_clamp"):
        AdaptiveMixedClassifier(std, rob, FixedGate(torch.zeros(2)), standard_layers=["stage1"],
                                robust_layers=["stage1"], gamma_clamp=0.0)
    assert math.isclose(model.describe()["bn_momentum"], 0.01)
