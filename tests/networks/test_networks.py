from __future__ import annotations

import copy

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import ResNet

from sarf_bundle.networks import SaliencyResNet, dtd_saliency

TEST_CASES = [  # constructor arguments, input shape, expected logits shape
    ({}, (2, 1, 16, 16), (2, 6)),
    ({"in_channels": 3, "num_classes": 4}, (3, 3, 16, 16), (3, 4)),
    ({"spatial_dims": 3, "no_max_pool": True}, (2, 1, 8, 8, 8), (2, 6)),
]


def plain_resnet(**kwargs) -> ResNet:
    return ResNet("basic", [2, 2, 2, 2], [64, 128, 256, 512], **kwargs)


def zplus_lrp(features: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Layer-wise z+ relevance of a bias-free linear layer, one class at a time, by gradient x input."""
    positive = weight.clamp(min=0)
    relevances = []
    for i in range(weight.shape[0]):
        f = features.detach().requires_grad_(True)
        z = f @ positive.T
        start = torch.zeros_like(z)
        start[:, i] = 1.0
        (c,) = torch.autograd.grad(z, f, start / (z + eps))
        relevances.append(f * c)
    return torch.stack(relevances, dim=1)


def test_dtd_saliency_equals_layerwise_zplus_relevance():
    torch.manual_seed(0)
    features, weight = torch.rand(4, 512, dtype=torch.float64), torch.randn(6, 512, dtype=torch.float64)
    saliency = dtd_saliency(features, weight)
    assert saliency.shape == (4, 6, 512)
    torch.testing.assert_close(saliency, zplus_lrp(features, weight, eps=1e-9))
    torch.testing.assert_close(saliency.sum(-1), torch.ones(4, 6, dtype=torch.float64))


def test_dtd_saliency_is_zero_for_class_without_positive_weights():
    weight = torch.randn(3, 8).abs()
    weight[1] = -weight[1]
    saliency = dtd_saliency(torch.rand(2, 8), weight)
    assert torch.equal(saliency[:, 1], torch.zeros(2, 8))


def test_dtd_saliency_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"same D, got \(2, 8\) and \(3, 7\)"):
        dtd_saliency(torch.rand(2, 8), torch.randn(3, 7))


@pytest.mark.parametrize("kwargs, input_shape, expected_shape", TEST_CASES)
def test_outputs_equal_plain_monai_resnet(kwargs, input_shape, expected_shape):
    net = SaliencyResNet(**kwargs).eval()
    plain = plain_resnet(
        spatial_dims=kwargs.get("spatial_dims", 2),
        n_input_channels=kwargs.get("in_channels", 1),
        num_classes=kwargs.get("num_classes", 6),
        conv1_t_stride=2,
        no_max_pool=kwargs.get("no_max_pool", False),
    ).eval()
    plain.load_state_dict(net.state_dict())
    x = torch.randn(input_shape)
    with torch.no_grad():
        logits = net(x)
        assert logits.shape == expected_shape
        assert torch.equal(logits, plain(x))
    assert net.features.shape == (input_shape[0], 512)
    assert net.saliency().shape == (input_shape[0], expected_shape[1], 512)


def test_hook_records_pooled_penultimate_feature():
    torch.manual_seed(0)
    net = SaliencyResNet().eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        net(x)
        h = net.maxpool(net.act(net.bn1(net.conv1(x))))
        h = net.layer4(net.layer3(net.layer2(net.layer1(h))))
        expected = torch.flatten(net.avgpool(h), 1)
    assert torch.equal(net.features, expected)
    assert (net.features >= 0).all()


def test_saliency_gradients_reach_fc_and_conv1():
    torch.manual_seed(0)
    net = SaliencyResNet()
    net(torch.randn(2, 1, 16, 16))
    saliency, features = net.saliency_and_features()
    assert features.requires_grad
    (saliency[:, 0] * saliency[:, 1]).sum().backward()
    assert net.fc.weight.grad.abs().sum() > 0
    assert net.conv1.weight.grad.abs().sum() > 0


def test_saliency_before_forward_raises():
    with pytest.raises(RuntimeError, match="run a forward pass before saliency"):
        SaliencyResNet().saliency()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_trace_and_script_agree_with_eager():
    net = SaliencyResNet().eval()
    x = torch.randn(2, 1, 16, 16)
    traced = torch.jit.trace(net, x)
    scripted = torch.jit.script(net)
    with torch.no_grad():
        expected = net(x)
        torch.testing.assert_close(traced(x), expected)
        torch.testing.assert_close(scripted(x), expected)
    net.features = None
    net(x)
    assert net.features is not None, "scripting must leave the original network's hook in place"


def test_deepcopy_after_training_forward_drops_features():
    net = SaliencyResNet()
    net(torch.randn(2, 1, 16, 16))
    copied = copy.deepcopy(net)
    assert copied.features is None and net.features is not None
    copied(torch.randn(2, 1, 16, 16))
    assert copied.features is not None


def test_built_from_bundle_config():
    parser = ConfigParser({"network_def": {"_target_": "sarf_bundle.networks.SaliencyResNet", "num_classes": 6}})
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, SaliencyResNet)
    assert set(net.state_dict()) == set(plain_resnet(spatial_dims=2, n_input_channels=1, num_classes=6).state_dict())
