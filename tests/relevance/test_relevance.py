from __future__ import annotations

import copy

import pytest
import torch
from monai.networks.nets import ResNet
from monai.networks.nets.resnet import ResNetBlock
from torch import nn

from sarf_bundle.networks import SaliencyRecorder, SaliencyResNet
from sarf_bundle.relevance import ResNetRelevance, fold_batch_norm, relevance_maps

LAYERS = ["fc", "avgpool"] + [f"layer{i}.{j}" for i in (4, 3, 2, 1) for j in (1, 0)] + ["maxpool", "conv1"]
FLOAT64_TOLERANCE = 1e4 * torch.finfo(torch.float64).eps
"""Two orders of the same float64 arithmetic: rounding (unit 1.1e-16) over sums of a few thousand terms (a 3x3
convolution of 512 channels) stays below 1e4 units of the largest value compared. Used as ``rtol``, and times that
largest value as ``atol``: about 2e-12, far below a difference of the formulas (zennit's BatchNorm eps, see
:func:`test_agrees_with_zennit`, moves the maps by 3e-4 of their largest value)."""


def assert_same_arithmetic(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """``actual`` equals ``expected`` (both float64) up to the rounding of :data:`FLOAT64_TOLERANCE`."""
    assert actual.dtype == expected.dtype == torch.float64
    scale = expected.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(actual, expected, atol=FLOAT64_TOLERANCE * scale, rtol=FLOAT64_TOLERANCE)


def trained_like(net: nn.Module, seed: int = 0, biases: bool = True) -> nn.Module:
    """Give every normalisation non-trivial statistics and affine parameters, as after training."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.running_mean.copy_(torch.rand(m.num_features, generator=generator) - 0.5 if biases else 0.0)
                m.bias.copy_((torch.rand(m.num_features, generator=generator) - 0.5) * 0.4 if biases else 0.0)
            elif isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear)) and m.bias is not None and not biases:
                m.bias.zero_()
    return net.eval()


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return trained_like(SaliencyResNet())


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 1, 48, 40, generator=torch.Generator().manual_seed(1))


def test_outputs_identical_before_during_and_after(network, images):
    network.train()
    with torch.no_grad():
        network.eval()
        before = network(images)
        network.train()
        hooks = [(m._forward_hooks.copy(), m._forward_pre_hooks.copy()) for m in network.modules()]
        with ResNetRelevance(network) as lrp:
            assert not network.training
            with torch.no_grad():
                during = network(images)
            explanation = lrp.explain(images)
        assert network.training
        assert [(m._forward_hooks, m._forward_pre_hooks) for m in network.modules()] == hooks
        network.eval()
        after = network(images)
    assert torch.equal(before, during) and torch.equal(before, after) and torch.equal(before, explanation.logits)


def test_hooks_removed_after_an_error(network, images):
    counts = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in network.modules())
    with pytest.raises(ValueError, match="targets"), ResNetRelevance(network) as lrp:
        lrp.explain(images, targets=torch.tensor([0, 9, 1]))
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in network.modules()) == counts


@pytest.mark.parametrize("biases", [False, True])
def test_relevance_conserved_layer_by_layer(images, biases):
    """Every layer's relevance sums to the starting 1, within 1e-5 (float32, eps 1e-9)."""
    torch.manual_seed(2)
    net = trained_like(SaliencyResNet(), seed=2, biases=biases)
    with ResNetRelevance(net) as lrp:
        explanation = lrp.explain(images, layers=True)
    assert list(explanation.layers) == LAYERS
    for name, relevance in explanation.layers.items():
        assert relevance.shape[:2] == (3, 6)
        torch.testing.assert_close(relevance.flatten(2).sum(-1), torch.ones(3, 6), atol=1e-5, rtol=0, msg=name)
    assert torch.equal(explanation.relevance, explanation.layers["conv1"])
    assert explanation.relevance.shape == (3, 6, 1, 48, 40)


def test_conservation_3d_without_max_pool():
    torch.manual_seed(3)
    net = trained_like(SaliencyResNet(spatial_dims=3, no_max_pool=True), biases=False)
    explanation = relevance_maps(net, torch.randn(2, 1, 12, 16, 8))
    assert explanation.relevance.shape == (2, 6, 1, 12, 16, 8)
    torch.testing.assert_close(explanation.relevance.flatten(2).sum(-1), torch.ones(2, 6), atol=1e-5, rtol=0)


def test_penultimate_relevance_is_the_closed_form_saliency_of_the_loss(network, images):
    network, images = copy.deepcopy(network).double(), images.double()  # float64: only rounding may differ
    with ResNetRelevance(network) as lrp:
        explanation = lrp.explain(images, layers=True)
    with torch.no_grad(), SaliencyRecorder(network) as recorder:
        network(images)
        closed_form = recorder.saliency()
    assert_same_arithmetic(explanation.layers["fc"], closed_form)


def test_agrees_with_zennit(zennit, network, images):
    """zennit's rules (ZPlus, ZBox, Norm on pooling and the residual sum) on the same network give the same maps.

    Both run in float64 on a copy whose normalisations have ``eps = 0``: zennit's MergeBatchNorm folds each BatchNorm
    into its convolution but leaves ``eps`` in the BatchNorm it resets to the identity, which then scales by
    ``1 / sqrt(1 + eps)`` (a relative 5e-6 at the default 1e-5) and shifts the maps by about 3e-4 of their
    largest value. Without that, the two differ only by rounding, about 3e-15 of the largest value.
    """
    network, images = copy.deepcopy(network).double(), images.double()
    for m in network.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eps = 0.0  # running_var is at least 0.5 (trained_like)
    from zennit.canonizers import AttributeCanonizer, NamedMergeBatchNorm
    from zennit.composites import SpecialFirstLayerMapComposite, layer_map_base
    from zennit.layer import Sum
    from zennit.rules import ZBox, ZPlus
    from zennit.types import Convolution

    def block_forward(self, x):  # MONAI's ResNetBlock.forward with the addition as zennit's Sum module
        branch = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act(self.canonizer_sum(torch.stack([shortcut, branch], dim=-1)))

    pairs = [(["conv1"], "bn1")]
    for name, block in network.named_modules():
        if isinstance(block, ResNetBlock):
            pairs += [([f"{name}.conv1"], f"{name}.bn1"), ([f"{name}.conv2"], f"{name}.bn2")]
            pairs += [([f"{name}.downsample.0"], f"{name}.downsample.1")] if block.downsample is not None else []
    canonizers = [
        NamedMergeBatchNorm(pairs),
        AttributeCanonizer(lambda n, m: {"forward": block_forward.__get__(m), "canonizer_sum": Sum()} if isinstance(m, ResNetBlock) else None),
    ]
    eps = 1e-6
    low = images.amin(dim=(1, 2, 3), keepdim=True).expand_as(images)
    high = images.amax(dim=(1, 2, 3), keepdim=True).expand_as(images)
    composite = SpecialFirstLayerMapComposite(
        layer_map=layer_map_base(eps) + [(Convolution, ZPlus(eps, zero_params="bias")), (nn.Linear, ZPlus(eps, zero_params="bias"))],
        first_map=[(Convolution, ZBox(low, high, eps, zero_params="bias"))],
        canonizers=canonizers,
    )
    theirs = []
    for k in range(6):
        x = images.clone().requires_grad_(True)
        with composite.context(network) as modified:
            (relevance,) = torch.autograd.grad(modified(x), x, nn.functional.one_hot(torch.full((3,), k), 6).double())
        theirs.append(relevance)
    theirs = torch.stack(theirs, dim=1)
    assert_same_arithmetic(relevance_maps(network, images, eps=eps).relevance, theirs)


def test_targets_select_class_maps(network, images):
    every = relevance_maps(network, images)
    assert torch.equal(every.targets, torch.arange(6).expand(3, 6))
    chosen = relevance_maps(network, images, targets=torch.tensor([2, 0, 5]))
    assert chosen.relevance.shape == (3, 1, 1, 48, 40)
    torch.testing.assert_close(chosen.relevance[:, 0], every.relevance[torch.arange(3), torch.tensor([2, 0, 5])])


def test_fixed_bounds_change_only_the_input_layer(network, images):
    explanations = []
    for bounds in (None, (-100.0, 100.0)):
        with ResNetRelevance(network, bounds=bounds) as lrp:
            explanations.append(lrp.explain(images, layers=True))
    default, wide = explanations
    assert list(default.layers) == list(wide.layers) == LAYERS
    assert torch.equal(default.logits, wide.logits)
    for name in LAYERS[:-1]:  # every layer above the input convolution: the very same relevance
        assert torch.equal(default.layers[name], wide.layers[name]), name
    assert torch.equal(wide.relevance, wide.layers["conv1"])
    assert not torch.allclose(default.relevance, wide.relevance)
    torch.testing.assert_close(wide.relevance.flatten(2).sum(-1), torch.ones(3, 6), atol=1e-5, rtol=0)


def test_fold_batch_norm_matches_conv_then_norm(network):
    block = copy.deepcopy(network.layer2[0]).double()  # float64: only rounding may differ
    x = torch.rand(2, 64, 9, 9, dtype=torch.float64)
    for conv, norm in ((block.conv1, block.bn1), block.downsample):
        weight, bias = fold_batch_norm(conv, norm)
        with torch.no_grad():
            assert_same_arithmetic(conv._conv_forward(x, weight, bias), norm(conv(x)))
    with pytest.raises(ValueError, match="running statistics"):
        fold_batch_norm(block.conv1, nn.BatchNorm2d(64, track_running_stats=False))


def test_bad_use(network, images):
    with pytest.raises(TypeError, match="MONAI ResNet"):
        ResNetRelevance(nn.Sequential(nn.Conv2d(1, 2, 3)))
    with pytest.raises(TypeError, match="MONAI ResNet"):
        ResNetRelevance(ResNet("bottleneck", [1, 1, 1, 1], [8, 8, 8, 8], spatial_dims=2, n_input_channels=1, num_classes=6))
    with pytest.raises(ValueError, match="bounds"):
        ResNetRelevance(network, bounds=(1.0, -1.0))
    lrp = ResNetRelevance(network)
    with pytest.raises(RuntimeError, match="inside"):
        lrp.explain(images)
    with lrp, pytest.raises(RuntimeError, match="already registered"):
        lrp.register()
    with ResNetRelevance(network) as lrp, pytest.raises(ValueError, match="targets"):
        lrp.explain(images, targets=torch.zeros(2, dtype=torch.long))
