import pytest
import torch
from torch import nn

from adasmooth.mixer import AdaptiveMixedClassifier, MixingNetwork
from adasmooth.mixing import mix_log_probs
from adasmooth.models import SmallResNet

LAYERS = ("stage1", "stage2")


class CountingModel(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.num_classes = inner.num_classes

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def _composite(**kw):
    torch.manual_seed(0)
    std, rob = CountingModel(SmallResNet(width=4)), CountingModel(SmallResNet(width=4))
    layers = tuple(f"inner.{n}" for n in LAYERS)
    gate = MixingNetwork.from_models(std, rob, standard_layers=layers, robust_layers=layers,
                                     input_shape=(1, 28, 28), width=8, blocks=1)
    return AdaptiveMixedClassifier(std, rob, gate, standard_layers=layers, robust_layers=layers, **kw)


def test_gamma_batchnorm_is_built_on_the_gates_device():
    # a composite built around models already on a GPU must not leave gamma's BatchNorm on the CPU
    # (found on an H100); the meta device stands in for the GPU here
    torch.manual_seed(0)
    std, rob = SmallResNet(width=4), SmallResNet(width=4)
    gate = MixingNetwork.from_models(std, rob, standard_layers=LAYERS, robust_layers=LAYERS,
                                     input_shape=(1, 28, 28), width=8, blocks=1).to("meta")
    model = AdaptiveMixedClassifier(std.to("meta"), rob.to("meta"), gate, standard_layers=LAYERS,
                                    robust_layers=LAYERS)
    assert {b.device.type for b in model.gamma_bn.buffers()} == {"meta"}
    _, _, gamma = model.eval().components(torch.rand(3, 1, 28, 28, device="meta"))
    assert gamma.shape == (3,) and gamma.device.type == "meta"


def test_channels_are_inferred_from_a_dry_run():
    model = _composite()
    assert model.gate.depth_channels == (8, 16)  # 4 + 4 at stage1, 8 + 8 at stage2


def test_one_forward_pass_per_base_model_and_output_is_the_mixture():
    model = _composite(alpha_range=(0.2, 0.9)).eval()
    x = torch.rand(5, 1, 28, 28)
    model.standard.calls = model.robust.calls = 0
    out = model(x)
    assert model.standard.calls == 1 and model.robust.calls == 1
    g, h, gamma = model.components(x)
    a = model.alpha_from_gamma(gamma)
    assert torch.allclose(out, mix_log_probs(g, h, a), atol=1e-6)
    assert torch.allclose(out.exp().sum(1), torch.ones(5), atol=1e-5)


def test_alpha_stays_in_its_range_at_evaluation():
    model = _composite(alpha_range=(0.84, 0.99), gamma_scale=50.0)
    model.train()
    model(torch.rand(16, 1, 28, 28))  # BN statistics
    model.eval()
    a = model.alpha(torch.rand(64, 1, 28, 28) * torch.linspace(0, 1, 64).view(-1, 1, 1, 1))
    assert (a >= 0.84).all() and (a <= 0.99).all()


def test_gradients_reach_the_gate_and_the_input_but_not_the_base_models():
    model = _composite().train()
    x = torch.rand(4, 1, 28, 28, requires_grad=True)
    loss = model(x)[:, 0].sum()
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.gate.parameters())
    assert all(p.grad is None for p in model.standard.parameters())
    assert not model.standard.training and not model.robust.training  # base models stay frozen in eval mode


def test_bad_configuration():
    std, rob = SmallResNet(width=4), SmallResNet(width=4, num_classes=7)
    gate = MixingNetwork([8, 16], width=8)
    with pytest.raises(ValueError, match="number of classes"):
        AdaptiveMixedClassifier(std, rob, gate, standard_layers=LAYERS, robust_layers=LAYERS)
    with pytest.raises(ValueError, match="alpha_range"):
        AdaptiveMixedClassifier(std, SmallResNet(width=4), gate, standard_layers=LAYERS, robust_layers=LAYERS,
                                alpha_range=(0.9, 0.1))
    with pytest.raises(KeyError, match="close matches"):
        AdaptiveMixedClassifier(std, SmallResNet(width=4), gate, standard_layers=("stage9",), robust_layers=LAYERS)


def test_save_and_load_adaptive_roundtrip_and_refuse_other_bases(tmp_path):
    from adasmooth.io import CheckpointError
    from adasmooth.mixer import load_adaptive, save_adaptive

    model = _composite(alpha_range=(0.3, 0.95), gamma_bias=1.1).train()
    model(torch.rand(8, 1, 28, 28))  # move the BN statistics away from their initial values
    model.eval()
    save_adaptive(tmp_path / "mixer", model, note="t")
    loaded = load_adaptive(tmp_path / "mixer", model.standard, model.robust)
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(loaded(x), model(x), atol=1e-6) and torch.allclose(loaded.alpha(x), model.alpha(x))
    other = CountingModel(SmallResNet(width=4))
    with pytest.raises(CheckpointError, match="another standard model"):
        load_adaptive(tmp_path / "mixer", other, model.robust)


class _WideResNetLike(nn.Module):
    """A different architecture with WideResNet/torchvision-style nested names (``block1.layer.0``) and
    other widths and resolutions (3x32x32 input), to check that nothing is tied to SmallResNet."""

    def __init__(self, widths):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1)
        self.block1 = nn.Module()
        self.block1.layer = nn.Sequential(nn.Conv2d(widths[0], widths[1], 3, padding=1), nn.ReLU())
        self.block2 = nn.Module()
        self.block2.layer = nn.Sequential(nn.Conv2d(widths[1], widths[2], 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(widths[2], 10)
        self.num_classes = 10

    def forward(self, x):
        x = self.block2.layer(self.block1.layer(self.conv1(x)))
        return self.fc(x.mean((2, 3)))


def test_other_architectures_with_nested_layer_names_and_different_widths():
    torch.manual_seed(0)
    std, rob = _WideResNetLike((4, 6, 10)).eval(), _WideResNetLike((8, 12, 20)).eval()
    s_layers, r_layers = ("block1.layer.1", "block2.layer"), ("block1.layer", "block2.layer.1")
    gate = MixingNetwork.from_models(std, rob, standard_layers=s_layers, robust_layers=r_layers,
                                     input_shape=(3, 32, 32), width=8, blocks=1)
    assert gate.depth_channels == (6 + 12, 10 + 20)
    model = AdaptiveMixedClassifier(std, rob, gate, standard_layers=s_layers, robust_layers=r_layers,
                                    alpha_range=(0.3, 0.9)).eval()
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    out = model(x)
    assert out.shape == (4, 10) and torch.allclose(out.exp().sum(1), torch.ones(4), atol=1e-5)
    (grad,) = torch.autograd.grad(out[:, 0].sum(), x)
    assert grad.abs().sum() > 0
    a = model.alpha(x.detach())
    assert ((a >= 0.3) & (a <= 0.9)).all()
    with pytest.raises(KeyError, match="block1.layer"):
        MixingNetwork.from_models(std, rob, standard_layers=("block1.layers", "block2.layer"), robust_layers=r_layers,
                                  input_shape=(3, 32, 32))


def test_pooling_features_to_the_deepest_size_matches_adaptive_pooling_exactly():
    from adasmooth.mixer import _pool_to

    torch.manual_seed(0)
    for shape, size in (((3, 4, 28, 28), 14), ((3, 4, 28, 28), 7), ((2, 5, 15, 15), 7), ((2, 5, 14, 14), 14)):
        f = torch.randn(*shape, requires_grad=True)
        ref = torch.nn.functional.adaptive_avg_pool2d(f, size)
        out = _pool_to(f, size)
        assert out.shape == ref.shape and torch.equal(out, ref)
        w = torch.randn_like(ref)
        g_ref, = torch.autograd.grad((ref * w).sum(), f)
        g_out, = torch.autograd.grad((out * w).sum(), f)
        assert torch.equal(g_out, g_ref)
