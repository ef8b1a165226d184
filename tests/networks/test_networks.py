from __future__ import annotations

import copy
import pickle

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import ResNet

from sarf_bundle.networks import SaliencyRecorder, SaliencyResNet, dtd_saliency

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
    with torch.no_grad(), SaliencyRecorder(net) as recorder:
        logits = net(x)
        assert logits.shape == expected_shape
        assert torch.equal(logits, plain(x))
        assert recorder.features.shape == (input_shape[0], 512)
        assert recorder.saliency().shape == (input_shape[0], expected_shape[1], 512)


def test_recorder_leaves_outputs_unchanged_and_removes_its_hooks():
    """zennit's check: the same outputs before, during and after the hooks, and no hook left behind."""
    net = SaliencyResNet().eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        before = net(x)
        with SaliencyRecorder(net) as recorder:
            assert len(net.fc._forward_pre_hooks) == 1 and len(net.layer4._forward_hooks) == 1
            during = net(x)
        after = net(x)
    assert torch.equal(before, during) and torch.equal(before, after)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    assert recorder.features is None and recorder.activation is None, "remove() forgets the records"


def test_hooks_removed_after_an_error():
    net = SaliencyResNet()
    with pytest.raises(RuntimeError, match="wrong input"):
        with SaliencyRecorder(net):
            raise RuntimeError("wrong input")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_register_twice_raises_and_register_after_remove_records_again():
    net = SaliencyResNet()
    recorder = SaliencyRecorder(net)
    assert len(recorder.register()) == 2
    with pytest.raises(RuntimeError, match="already registered"):
        recorder.register()
    recorder.remove()
    recorder.register()
    net(torch.randn(2, 1, 16, 16))
    assert recorder.features.shape == (2, 512)


def test_hook_records_pooled_penultimate_feature():
    torch.manual_seed(0)
    net = SaliencyResNet().eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad(), SaliencyRecorder(net) as recorder:
        net(x)
        h = net.maxpool(net.act(net.bn1(net.conv1(x))))
        h = net.layer4(net.layer3(net.layer2(net.layer1(h))))
        expected = torch.flatten(net.avgpool(h), 1)
        assert torch.equal(recorder.features, expected)
        assert (recorder.features >= 0).all()


def test_saliency_gradients_reach_fc_and_conv1():
    torch.manual_seed(0)
    net = SaliencyResNet()
    with SaliencyRecorder(net) as recorder:
        net(torch.randn(2, 1, 16, 16))
        saliency, features = recorder.saliency_and_features()
    assert features.requires_grad
    (saliency[:, 0] * saliency[:, 1]).sum().backward()
    assert net.fc.weight.grad.abs().sum() > 0
    assert net.conv1.weight.grad.abs().sum() > 0


def test_saliency_before_forward_raises():
    with SaliencyRecorder(SaliencyResNet()) as recorder:
        with pytest.raises(RuntimeError, match="recorded no forward pass of SaliencyResNet: run the network"):
            recorder.saliency()


def test_saliency_without_registered_hooks_raises():
    net = SaliencyResNet()
    recorder = SaliencyRecorder(net)
    net(torch.randn(2, 1, 16, 16))
    with pytest.raises(RuntimeError, match=r"hooks are not registered: call register\(\)"):
        recorder.saliency()


@pytest.mark.parametrize("network", [torch.nn.Linear(2, 2), ResNet("basic", [1, 1, 1, 1], [8, 8, 8, 8], feed_forward=False)])
def test_recorder_needs_a_resnet_with_fc(network):
    with pytest.raises(TypeError, match=r"MONAI ResNet with a final fc layer .*got (Linear|ResNet)\."):
        SaliencyRecorder(network)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_trace_and_script_agree_with_eager():
    net = SaliencyResNet().eval()
    x = torch.randn(2, 1, 16, 16)
    with SaliencyRecorder(net) as recorder:  # a recorder attached before (e.g. by a training loss) leaves nothing behind
        net(x)
    traced = torch.jit.trace(net, x)
    scripted = torch.jit.script(net)
    with torch.no_grad():
        expected = net(x)
        torch.testing.assert_close(traced(x), expected)
        torch.testing.assert_close(scripted(x), expected)
    with recorder:
        net(x)
        assert recorder.features is not None, "scripting must leave the network recordable"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_trace_with_a_recorder_attached_keeps_it_out_of_the_trace():
    net = SaliencyResNet().eval()
    x = torch.randn(2, 1, 16, 16)
    with SaliencyRecorder(net) as recorder:
        traced = torch.jit.trace(net, x)
        recorder.remove()
        recorder.register()
        traced(x)
        assert recorder.features is None, "the trace holds no hook"
        net(x)
        assert recorder.features is not None


def test_deepcopy_and_pickle_after_training_forward():
    net = SaliencyResNet()
    with SaliencyRecorder(net) as recorder:
        net(torch.randn(2, 1, 16, 16))
        assert recorder.features.grad_fn is not None
    for copied in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in copied.modules())
        torch.testing.assert_close(copied.state_dict(), net.state_dict())
        with SaliencyRecorder(copied) as recorder:
            copied(torch.randn(2, 1, 16, 16))
            assert recorder.features is not None


def test_built_from_bundle_config():
    parser = ConfigParser({"network_def": {"_target_": "sarf_bundle.networks.SaliencyResNet", "num_classes": 6}})
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, SaliencyResNet)
    assert set(net.state_dict()) == set(plain_resnet(spatial_dims=2, n_input_channels=1, num_classes=6).state_dict())
