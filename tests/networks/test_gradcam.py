"""GradCAM saliency at the last residual block (SaRF paper, section 3.4) and SaRF trained with it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sarf_bundle.losses import SaRFLoss
from sarf_bundle.networks import SaliencyRecorder, SaliencyResNet, dtd_saliency, gradcam_saliency


def linear_head(weight: torch.Tensor):
    return lambda a: F.linear(a.mean(dim=(2, 3)), weight)


def gradcam_reference(net: SaliencyResNet, activation: torch.Tensor) -> torch.Tensor:
    """GradCAM one sample and one class at a time, as in Selvaraju et al., then pooled under the map."""
    saliency = torch.zeros(activation.shape[0], net.fc.out_features, activation.shape[1], dtype=activation.dtype)
    for b in range(activation.shape[0]):
        for i in range(net.fc.out_features):
            a = activation[b : b + 1].detach().requires_grad_(True)
            (gradient,) = torch.autograd.grad(net.fc(torch.flatten(net.avgpool(a), 1))[0, i], a)
            weights = gradient.mean(dim=(2, 3))
            gradcam_map = (weights[:, :, None, None] * a).sum(dim=1).relu()
            saliency[b, i] = (gradcam_map[:, None] * a).mean(dim=(2, 3))[0].detach()
    return saliency


def test_hand_computed_two_classes_three_channels():
    # channels x positions: A[:, x0] = (1, 0, 1), A[:, x1] = (0, 2, 1); GradCAM weights of a mean-pool + linear head are W / 2.
    activation = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])[None, :, None, :]
    weight = torch.tensor([[2.0, 2.0, 0.0], [2.0, -2.0, 0.0]])
    # class 0: weights (1, 1, 0), map relu(1, 2) = (1, 2); class 1: weights (1, -1, 0), map relu(1, -2) = (1, 0)
    expected = torch.tensor([[[0.5, 2.0, 1.5], [0.5, 0.0, 0.5]]])
    torch.testing.assert_close(gradcam_saliency(activation, linear_head(weight)), expected)


def test_uniform_map_gives_the_pooled_feature():
    activation = torch.rand(2, 5, 3, 3)
    weight = torch.zeros(4, 5)
    weight[:, 0] = 9.0  # every class map is A[0] * 9 / 9 = A[0]; with A[0] = 1 the map is one everywhere
    activation[:, 0] = 1.0
    saliency = gradcam_saliency(activation, linear_head(weight))
    torch.testing.assert_close(saliency, activation.mean(dim=(2, 3))[:, None].expand(2, 4, 5))


def test_matches_per_sample_per_class_gradcam_of_the_network():
    torch.manual_seed(0)
    net = SaliencyResNet().double()
    with SaliencyRecorder(net) as recorder:
        net(torch.randn(3, 1, 32, 32, dtype=torch.float64))
        saliency, features = recorder.saliency_and_features("gradcam")
        activation = recorder.activation
    assert saliency.shape == (3, 6, 512) and features.shape == (3, 512)
    torch.testing.assert_close(saliency.detach(), gradcam_reference(net, activation))


def test_gradients_reach_convolutions_and_the_head_through_the_channel_weights():
    torch.manual_seed(0)
    net = SaliencyResNet()
    with SaliencyRecorder(net) as recorder:
        net(torch.randn(4, 1, 64, 64))
        saliency = recorder.saliency("gradcam")
    saliency.pow(2).sum().backward()
    assert net.conv1.weight.grad.abs().sum() > 0
    # The saliency depends on fc only through the GradCAM weights dY_i/dA: create_graph carries them to the loss.
    assert net.fc.weight.grad.abs().sum() > 0
    assert net.fc.bias.grad is None or net.fc.bias.grad.abs().sum() == 0


def test_no_grad_gives_the_same_values_without_a_graph():
    torch.manual_seed(0)
    net = SaliencyResNet().eval()
    x = torch.randn(2, 1, 32, 32)
    with SaliencyRecorder(net) as recorder:
        net(x)
        expected = recorder.saliency("gradcam").detach()
        with torch.no_grad():
            net(x)
            saliency = recorder.saliency("gradcam")
    assert not saliency.requires_grad
    torch.testing.assert_close(saliency, expected)


def test_records_activation_without_touching_features_and_3d():
    net = SaliencyResNet(spatial_dims=3, no_max_pool=True)
    with SaliencyRecorder(net) as recorder:
        net(torch.randn(2, 1, 8, 8, 8))
        features = recorder.features
        assert recorder.activation.shape[:2] == (2, 512)
        assert recorder.saliency("gradcam").shape == (2, 6, 512)
        assert recorder.features is features, "the GradCAM head pass must not overwrite the recorded feature"


def test_channel_weight_vector_would_repeat_dtd():
    """Why the saliency pools A under the map: relu(dY_i/dA averaged) * f is DTD up to a factor, so its cosines are DTD's."""
    torch.manual_seed(0)
    activation, weight = torch.rand(2, 8, 3, 3), torch.randn(4, 8)
    channel_weights = weight / 9
    naive = channel_weights.clamp(min=0)[None] * activation.mean(dim=(2, 3))[:, None]
    unit = lambda s: F.normalize(s, dim=-1)  # noqa: E731
    dtd = dtd_saliency(activation.mean(dim=(2, 3)), weight)
    torch.testing.assert_close(unit(naive), unit(dtd))
    assert not torch.allclose(unit(gradcam_saliency(activation, linear_head(weight))), unit(dtd))


def test_sarf_loss_with_gradcam_trains_and_validates():
    torch.manual_seed(0)
    net = SaliencyResNet()
    x, target = torch.randn(4, 1, 32, 32), torch.tensor([0, 3, 5, 1])
    gradcam, dtd = SaRFLoss(network=net, saliency="gradcam"), SaRFLoss(network=net)
    logits = net(x)
    loss = gradcam(logits, target)
    assert loss.item() != pytest.approx(dtd(logits, target).item())
    (loss - F.cross_entropy(logits, target)).backward()
    assert net.conv1.weight.grad.abs().sum() > 0 and net.fc.weight.grad.abs().sum() > 0
    net.eval()
    with torch.no_grad():  # the validation loss of the bundle (ignite's Loss metric) is computed like this
        value = gradcam(net(x), target)
    assert torch.isfinite(value) and not value.requires_grad


def test_unknown_method_raises():
    net = SaliencyResNet().eval()
    with SaliencyRecorder(net) as recorder:
        net(torch.randn(1, 1, 32, 32))
        with pytest.raises(ValueError, match=r"'lrp'; options are \('dtd', 'gradcam'\)"):
            recorder.saliency_and_features("lrp")


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"\(B, C, \*spatial\), got \(2, 8\)"):
        gradcam_saliency(torch.rand(2, 8), lambda a: a)
    with pytest.raises(ValueError, match=r"\(B, K\) logits with B=2, got \(2, 4, 3, 3\)"):
        gradcam_saliency(torch.rand(2, 4, 3, 3), lambda a: a * 2)
