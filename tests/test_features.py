import pytest
import torch
from torch import nn

from adasmooth.features import FeatureTap
from adasmooth.models import SmallResNet


def test_tap_captures_the_right_tensors_and_leaves_output_unchanged():
    torch.manual_seed(0)
    model = SmallResNet(width=4).eval()
    x = torch.rand(3, 1, 28, 28)
    ref = model(x)
    with FeatureTap(model, ["stage1", "stage2"]) as tap:
        out = model(x)
        early, middle = tap.features()
    assert torch.equal(out, ref)
    stem = model.stem(model.normalize(x))
    assert torch.allclose(early, model.stage1(stem))
    assert torch.allclose(middle, model.stage2(model.stage1(stem)))
    assert early.shape == (3, 4, 28, 28) and middle.shape == (3, 8, 14, 14)
    assert not model.stage1._forward_hooks  # removed on exit


def test_gradients_flow_through_tapped_features():
    model = SmallResNet(width=4).eval()
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    tap = FeatureTap(model, ["stage2"])
    model(x)
    (feat,) = tap.features()
    (g,) = torch.autograd.grad(feat.square().sum(), x)
    assert g.abs().sum() > 0


def test_wrong_name_lists_close_matches():
    with pytest.raises(KeyError, match="close matches: stage2"):
        FeatureTap(SmallResNet(width=4), ["stage_2"])


def test_layer_that_does_not_run_is_reported():
    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(4, 4)
            self.unused = nn.Linear(4, 4)

        def forward(self, x):
            return self.used(x)

    m = Skips()
    tap = FeatureTap(m, ["used", "unused"])
    m(torch.rand(2, 4))
    with pytest.raises(RuntimeError, match="did not run"):
        tap.features()
