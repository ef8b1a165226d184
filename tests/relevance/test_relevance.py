from __future__ import annotations

import pytest
import torch
from monai.networks.nets import ResNet
from monai.networks.nets.resnet import ResNetBlock
from torch import nn

from sarf_bundle.networks import SaliencyResNet, dtd_saliency
from sarf_bundle.relevance import ResNetRelevance, fold_batch_norm, relevance_maps

LAYERS = ["fc", "avgpool"] + [f"layer{i}.{j}" for i in (4, 3, 2, 1) for j in (1, 0)] + ["maxpool", "conv1"]


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
    with ResNetRelevance(network) as lrp:
        explanation = lrp.explain(images, layers=True)
    with torch.no_grad():
        network(images)
        closed_form = dtd_saliency(network.features, network.fc.weight)
    torch.testing.assert_close(explanation.layers["fc"], closed_form, atol=1e-6, rtol=1e-5)


def test_agrees_with_zennit(zennit, network, images):
    """zennit's rules (ZPlus, ZBox, Norm on pooling and the residual sum) on the same network give the same maps."""
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
            (relevance,) = torch.autograd.grad(modified(x), x, nn.functional.one_hot(torch.full((3,), k), 6).float())
        theirs.append(relevance)
    theirs = torch.stack(theirs, dim=1)
    ours = relevance_maps(network, images, eps=eps).relevance
    scale = theirs.abs().max()
    assert scale > 0
    torch.testing.assert_close(ours, theirs, atol=1e-4 * scale.item(), rtol=1e-3)


def test_targets_select_class_maps(network, images):
    every = relevance_maps(network, images)
    assert torch.equal(every.targets, torch.arange(6).expand(3, 6))
    chosen = relevance_maps(network, images, targets=torch.tensor([2, 0, 5]))
    assert chosen.relevance.shape == (3, 1, 1, 48, 40)
    torch.testing.assert_close(chosen.relevance[:, 0], every.relevance[torch.arange(3), torch.tensor([2, 0, 5])])


def test_fixed_bounds_change_only_the_input_layer(network, images):
    default = relevance_maps(network, images)
    wide = relevance_maps(network, images, bounds=(-100.0, 100.0))
    assert not torch.allclose(default.relevance, wide.relevance)
    torch.testing.assert_close(wide.relevance.flatten(2).sum(-1), torch.ones(3, 6), atol=1e-5, rtol=0)


def test_fold_batch_norm_matches_conv_then_norm(network):
    block = network.layer2[0]
    x = torch.rand(2, 64, 9, 9)
    for conv, norm in ((block.conv1, block.bn1), block.downsample):
        weight, bias = fold_batch_norm(conv, norm)
        with torch.no_grad():
            torch.testing.assert_close(conv._conv_forward(x, weight, bias), norm(conv(x)), atol=1e-5, rtol=1e-5)
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
