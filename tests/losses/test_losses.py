from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from monai.engines import SupervisedTrainer
from torch import nn

from sarf_bundle.losses import SaRFLoss, saliency_distinctiveness, saliency_feature_consistency
from sarf_bundle.networks import SaliencyResNet, dtd_saliency, gradcam_saliency

SD_CASES = [  # saliency (B, K, D), expected L_sd
    (torch.eye(6)[None], 0.0),
    (torch.ones(2, 6, 5), 1.0),
    (torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]]), 1.0),
    (torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]]), math.sqrt(2) / 3),
    (torch.zeros(1, 3, 4), 0.0),
]

SF_CASES = [  # saliency (B, K, D), features (B, D), target (B,), expected L_sf
    (torch.eye(6)[None], torch.eye(6)[2:3], torch.tensor([2]), -1 / 6),
    (torch.eye(6)[None], torch.eye(6)[2:3], torch.tensor([0]), 1 / 6),
    (torch.eye(3)[None], torch.ones(1, 3), torch.tensor([1]), 1 / (3 * math.sqrt(3))),
    (torch.eye(3)[None], torch.zeros(1, 3), torch.tensor([1]), 0.0),
]

BAD_ARGUMENTS = [  # constructor arguments, exception, message
    ({"alpha": -1.0}, ValueError, r"alpha=-1.0"),
    ({"beta": -0.5}, ValueError, r"beta=-0.5"),
    ({"gamma": -2.0}, ValueError, r"gamma=-2.0"),
    ({"base": "bce"}, ValueError, r"'bce'; options are \('ce', 'focal'\)"),
    ({"saliency": "lrp"}, ValueError, r"'lrp'; options are \('dtd', 'gradcam'\)"),
    ({"network": nn.Linear(2, 2)}, TypeError, r"SaliencyResNet\), got Linear"),
]


def pairwise_reference(saliency: torch.Tensor) -> torch.Tensor:
    per_sample = [
        torch.stack([F.cosine_similarity(s[i], s[j], dim=0).abs() for i, j in itertools.combinations(range(len(s)), 2)])
        .mean()
        for s in saliency
    ]
    return torch.stack(per_sample).mean()


def consistency_reference(saliency: torch.Tensor, features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    per_sample = []
    for s, f, label in zip(saliency, features, target.tolist()):
        cos = [F.cosine_similarity(s[i], f, dim=0).abs() for i in range(len(s))]
        per_sample.append((sum(c for i, c in enumerate(cos) if i != label) - cos[label]) / len(s))
    return torch.stack(per_sample).mean()


@pytest.mark.parametrize("saliency, expected", SD_CASES)
def test_saliency_distinctiveness_known_values(saliency, expected):
    assert saliency_distinctiveness(saliency).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("saliency, features, target, expected", SF_CASES)
def test_saliency_feature_consistency_known_values(saliency, features, target, expected):
    assert saliency_feature_consistency(saliency, features, target).item() == pytest.approx(expected, abs=1e-6)


def test_terms_match_explicit_pair_loops():
    torch.manual_seed(0)
    saliency, features, target = torch.randn(5, 6, 32), torch.rand(5, 32), torch.randint(0, 6, (5,))
    torch.testing.assert_close(saliency_distinctiveness(saliency), pairwise_reference(saliency))
    torch.testing.assert_close(
        saliency_feature_consistency(saliency, features, target), consistency_reference(saliency, features, target)
    )


def test_zero_vectors_give_finite_gradients():
    saliency = torch.zeros(2, 6, 8, requires_grad=True)
    features = torch.zeros(2, 8, requires_grad=True)
    loss = saliency_distinctiveness(saliency) + saliency_feature_consistency(saliency, features, torch.tensor([0, 5]))
    loss.backward()
    assert torch.isfinite(saliency.grad).all() and torch.isfinite(features.grad).all()


@pytest.mark.parametrize(
    "target", [torch.tensor([0, 5, 2, 3]), torch.tensor([[0], [5], [2], [3]]), torch.tensor([0.0, 5.0, 2.0, 3.0])]
)
def test_zero_weights_are_exactly_cross_entropy(target):
    logits = torch.randn(4, 6)
    loss_function = SaRFLoss(alpha=0.0, beta=0.0)
    assert torch.equal(loss_function(logits, target), F.cross_entropy(logits, torch.tensor([0, 5, 2, 3])))
    assert math.isnan(loss_function.last_terms["sd"]) and math.isnan(loss_function.last_terms["sf"])


def test_total_combines_terms_and_records_them():
    torch.manual_seed(0)
    logits, target = torch.randn(3, 6), torch.tensor([1, 0, 4])
    saliency, features = torch.rand(3, 6, 16), torch.rand(3, 16)
    loss_function = SaRFLoss(alpha=5.0, beta=0.5)
    loss = loss_function(logits, target, saliency=saliency, features=features)
    sd = saliency_distinctiveness(saliency)
    sf = saliency_feature_consistency(saliency, features, target)
    torch.testing.assert_close(loss, F.cross_entropy(logits, target) + 5.0 * sd + 0.5 * sf)
    terms = loss_function.last_terms
    assert set(terms) == {"base", "sd", "sf", "total"}
    assert terms["sd"] == pytest.approx(sd.item()) and terms["total"] == pytest.approx(loss.item())


def test_focal_with_gamma_zero_is_cross_entropy():
    logits, target = torch.randn(4, 6), torch.tensor([0, 1, 2, 5])
    loss = SaRFLoss(alpha=0.0, beta=0.0, base="focal", gamma=0.0)(logits, target)
    torch.testing.assert_close(loss, F.cross_entropy(logits, target))


def test_focal_matches_hand_formula():
    logits, target = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]], dtype=torch.float64), torch.tensor([0, 2])
    expected = 0.0
    for row, label in zip(logits.tolist(), target.tolist()):
        p = math.exp(row[label]) / sum(math.exp(v) for v in row)
        expected += -((1 - p) ** 2) * math.log(p) / 2
    loss = SaRFLoss(alpha=0.0, beta=0.0, base="focal", gamma=2.0)(logits, target)
    assert loss.dtype == torch.float64 and loss.item() == pytest.approx(expected, rel=1e-12)  # float64 on both sides


@pytest.mark.parametrize("wrap", [False, True])
def test_saliency_terms_backpropagate_into_network(wrap):
    torch.manual_seed(0)
    net = SaliencyResNet()
    loss_function = SaRFLoss(alpha=5.0, beta=0.5, network=nn.DataParallel(net) if wrap else net)
    logits, target = net(torch.randn(2, 1, 16, 16)), torch.tensor([0, 3])
    (loss_function(logits, target) - F.cross_entropy(logits, target)).backward()
    assert net.fc.weight.grad.abs().sum() > 0
    assert net.conv1.weight.grad.abs().sum() > 0
    assert loss_function.last_terms["sd"] > 0


def test_network_is_not_registered_as_submodule():
    loss_function = SaRFLoss(network=SaliencyResNet())
    assert list(loss_function.parameters()) == [] and loss_function.state_dict() == {}


def test_runs_inside_monai_supervised_trainer():
    torch.manual_seed(0)
    net = SaliencyResNet()
    data = [{"image": torch.randn(1, 16, 16), "label": torch.tensor(i % 6)} for i in range(4)]
    loss_function = SaRFLoss(network=net)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=torch.utils.data.DataLoader(data, batch_size=2),
        network=net,
        optimizer=torch.optim.RMSprop(net.parameters(), lr=1e-5, momentum=0.9, weight_decay=1e-4),
        loss_function=loss_function,
    )
    trainer.run()
    assert all(math.isfinite(v) for v in loss_function.last_terms.values())


@pytest.mark.parametrize("kwargs, exception, message", BAD_ARGUMENTS)
def test_bad_argument_raises(kwargs, exception, message):
    with pytest.raises(exception, match=message):
        SaRFLoss(**kwargs)


def test_missing_saliency_source_raises():
    with pytest.raises(RuntimeError, match=r"alpha=5.0, beta=0.5 needs saliency and features"):
        SaRFLoss()(torch.randn(2, 6), torch.tensor([0, 1]))


def test_only_one_of_saliency_and_features_raises():
    with pytest.raises(ValueError, match="both saliency and features"):
        SaRFLoss()(torch.randn(2, 6), torch.tensor([0, 1]), saliency=torch.rand(2, 6, 8))


def test_features_from_another_batch_raise():
    net = SaliencyResNet()
    loss_function = SaRFLoss(network=net)
    net(torch.randn(3, 1, 16, 16))
    with pytest.raises(RuntimeError, match="batch size 3 / 3 but the logits for 2"):
        loss_function(torch.randn(2, 6), torch.tensor([0, 1]))


def test_recorder_without_a_forward_pass_raises():
    net = SaliencyResNet()
    net(torch.randn(2, 1, 16, 16))  # before the loss, hence before its recorder: not recorded
    loss_function = SaRFLoss(network=net)
    with pytest.raises(RuntimeError, match="recorded no forward pass of SaliencyResNet: run the network on the batch"):
        loss_function(torch.randn(2, 6), torch.tensor([0, 1]))


def test_removed_recorder_raises_instead_of_using_its_last_records():
    net = SaliencyResNet()
    loss_function = SaRFLoss(network=net)
    logits = net(torch.randn(2, 1, 16, 16))
    loss_function.recorder.remove()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    with pytest.raises(RuntimeError, match="hooks are not registered"):
        loss_function(logits, torch.tensor([0, 1]))


def test_the_loss_owns_the_only_hooks_on_the_network():
    net = SaliencyResNet()
    wrapped = nn.DataParallel(net)
    loss_function = SaRFLoss(network=wrapped)
    assert loss_function.recorder.network is net
    hooked = {name for name, m in net.named_modules() if m._forward_hooks or m._forward_pre_hooks}
    assert hooked == {"fc", "layer4"}
    loss_function.recorder.remove()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in wrapped.modules())


def backbone(net: SaliencyResNet, x: torch.Tensor) -> torch.Tensor:
    """The last block's activation by an explicit forward pass, written out as MONAI's ``ResNet.forward`` runs it."""
    h = net.maxpool(net.act(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(h))))


@pytest.mark.parametrize("method", ["dtd", "gradcam"])
def test_loss_and_gradients_equal_an_explicit_computation(method):
    """The recorder changes nothing: value and every parameter's gradient equal those of the written-out maths."""
    torch.manual_seed(0)
    net = SaliencyResNet().double()
    explicit = copy.deepcopy(net)
    x, target = torch.randn(4, 1, 32, 32, dtype=torch.float64), torch.tensor([0, 3, 5, 1])
    loss_function = SaRFLoss(alpha=5.0, beta=0.5, network=net, saliency=method)
    loss = loss_function(net(x), target)
    loss.backward()

    activation = backbone(explicit, x)
    features = torch.flatten(explicit.avgpool(activation), 1)
    logits = explicit.fc(features)
    if method == "dtd":
        saliency = dtd_saliency(features, explicit.fc.weight)
    else:
        saliency = gradcam_saliency(activation, lambda a: F.linear(torch.flatten(explicit.avgpool(a), 1), explicit.fc.weight, explicit.fc.bias))
    expected = F.cross_entropy(logits, target) + 5.0 * saliency_distinctiveness(saliency) + 0.5 * saliency_feature_consistency(saliency, features, target)
    expected.backward()

    assert torch.equal(loss, expected)
    for (name, p), q in zip(net.named_parameters(), explicit.parameters()):
        assert torch.equal(p.grad, q.grad), name


def test_bad_target_shape_raises():
    with pytest.raises(ValueError, match=r"shape \(2,\) or \(2, 1\), got \(2, 6\)"):
        SaRFLoss(alpha=0.0, beta=0.0)(torch.randn(2, 6), torch.rand(2, 6))
