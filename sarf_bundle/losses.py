"""SaRF loss: cross-entropy (or focal) plus saliency distinctiveness and saliency-feature consistency.

You, Wiest, Reyes, "SaRF: Saliency regularized feature learning improves MRI sequence
classification", Computer Methods and Programs in Biomedicine, 2023, equations 1-3.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.loss import _Loss

from .networks import SALIENCY_METHODS, SaliencyRecorder

__all__ = ["SaRFLoss", "saliency_distinctiveness", "saliency_feature_consistency"]

BASE_LOSSES = ("ce", "focal")


def saliency_distinctiveness(saliency: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Saliency distinctiveness loss L_sd (SaRF paper, eq. 2).

    Per sample, the mean over the ``K(K-1)/2`` class pairs ``i < j`` of ``|cos(S_i, S_j)|``;
    then the mean over the batch. 0 when the class saliencies are mutually orthogonal, 1 when
    they are all parallel.

    Args:
        saliency: class-specific saliency vectors, shape ``(B, K, D)`` with ``K >= 2``.
        eps: lower bound on the vector norms, so that a zero vector has cosine 0, not NaN.

    Returns:
        Scalar loss.

    Example:
        >>> saliency_distinctiveness(torch.eye(3)[None])
        tensor(0.)
    """
    unit = F.normalize(saliency, dim=-1, eps=eps)
    cosines = unit @ unit.transpose(1, 2)
    rows, cols = torch.triu_indices(saliency.shape[1], saliency.shape[1], offset=1, device=saliency.device)
    return cosines[:, rows, cols].abs().mean()


def saliency_feature_consistency(
    saliency: torch.Tensor, features: torch.Tensor, target: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """Saliency-feature consistency loss L_sf (SaRF paper, eq. 3).

    Per sample with label ``l``: ``(sum_{i != l} |cos(S_i, f)| - |cos(S_l, f)|) / K``; then the
    mean over the batch. It ranges from ``-1/K`` (feature parallel to the saliency of its own class
    and orthogonal to the others) to ``(K - 1)/K``.

    Args:
        saliency: class-specific saliency vectors, shape ``(B, K, D)``.
        features: penultimate features ``f``, shape ``(B, D)``.
        target: class indices, shape ``(B,)``.
        eps: lower bound on the vector norms, so that a zero vector has cosine 0, not NaN.

    Returns:
        Scalar loss.

    Example:
        >>> saliency_feature_consistency(torch.eye(3)[None], torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([0]))
        tensor(-0.3333)
    """
    cosines = torch.einsum("bkd,bd->bk", F.normalize(saliency, dim=-1, eps=eps), F.normalize(features, dim=-1, eps=eps))
    signs = 1 - 2 * F.one_hot(target, saliency.shape[1]).to(cosines.dtype)
    return (signs * cosines.abs()).sum(dim=1).mean() / saliency.shape[1]


def focal_loss(input: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """Multi-class focal loss ``-(1 - p_t)^gamma log p_t`` on softmax probabilities, mean over the batch.

    Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017. MONAI's ``FocalLoss`` is not
    used because for ``(B, K)`` logits its reductions average over classes as well as samples.
    """
    log_p = F.log_softmax(input, dim=1).gather(1, target[:, None]).squeeze(1)
    return (-((1 - log_p.exp()) ** gamma) * log_p).mean()


class SaRFLoss(_Loss):
    """SaRF loss ``L = L_base + alpha * L_sd + beta * L_sf`` (SaRF paper, eq. 1).

    You, Wiest, Reyes, "SaRF: Saliency regularized feature learning improves MRI sequence
    classification", CMPB 2023. ``L_base`` is the cross-entropy (or, as a variant, the focal loss),
    ``L_sd`` is :func:`saliency_distinctiveness` (eq. 2) and ``L_sf`` is
    :func:`saliency_feature_consistency` (eq. 3), on the class-specific saliency vectors ``S_i`` and
    the penultimate feature ``f`` of the network. The saliency is the paper's DTD
    (:func:`sarf_bundle.networks.dtd_saliency`) or, as in its ablation (section 3.4), GradCAM at the
    last residual block (:func:`sarf_bundle.networks.gradcam_saliency`): the block's features pooled
    under each class's GradCAM map, a ``(B, K, 512)`` vector like DTD's, so that ``L_sd`` is the mean
    ``|cos(S_i, S_j)|`` over class pairs and ``L_sf`` compares each ``S_i`` with ``f`` exactly as for DTD.

    How the loss reaches the network: MONAI's ``SupervisedTrainer`` (and the evaluator's ignite
    ``Loss`` metric) call ``loss_function(y_pred, y)`` with the logits and labels only, so the
    saliency and feature of the batch cannot be passed in. The loss therefore owns ``recorder``, a
    :class:`sarf_bundle.networks.SaliencyRecorder` that it builds on ``network`` and registers: its
    hooks on ``network.fc`` and ``network.layer4`` keep the pooled feature and the last block's
    activation of the network's latest forward pass, from which it computes the saliency. The
    network must have computed ``input`` on the same batch just before the call; a recorder that has
    seen no forward pass, or one of another batch size, raises. Saliency and features passed to
    ``forward`` are used instead. The recorder is a plain attribute, not a submodule, so
    ``state_dict``, ``to`` and ``train`` of the loss leave the network alone;
    ``loss.recorder.remove()`` detaches its hooks. With ``alpha = beta = 0`` the loss is exactly the
    base loss and no network is needed; the regularisers are then still computed for logging when a
    network is given.

    Args:
        alpha: weight of the saliency distinctiveness loss; the paper uses 5.
        beta: weight of the saliency-feature consistency loss; the paper uses 0.5.
        base: ``"ce"`` for cross-entropy, ``"focal"`` for the multi-class focal loss.
        gamma: focusing parameter of the focal loss (``gamma = 0`` gives cross-entropy).
        network: the network whose latest forward pass provides saliency and features, a MONAI
            ``ResNet`` such as :class:`sarf_bundle.networks.SaliencyResNet`, possibly wrapped in
            ``DistributedDataParallel``.
        saliency: saliency method computed by ``recorder``: ``"dtd"`` (Deep Taylor Decomposition at the
            last layer) or ``"gradcam"`` (GradCAM at the last residual block). Saliency passed to
            ``forward`` is used as given.

    Attributes:
        recorder: the :class:`sarf_bundle.networks.SaliencyRecorder` on ``network``, registered; None
            without a network.
        last_terms: after each call, the detached terms ``{"base", "sd", "sf", "total"}`` as floats
            (``nan`` for a term that could not be computed).

    Raises:
        ValueError: when ``alpha``, ``beta`` or ``gamma`` is negative, or ``base`` or ``saliency`` is unknown.
        TypeError: when ``network`` is not a MONAI ``ResNet`` with a final ``fc`` layer.

    Example:
        >>> from sarf_bundle.networks import SaliencyResNet
        >>> net = SaliencyResNet()
        >>> loss_function = SaRFLoss(alpha=5.0, beta=0.5, network=net)
        >>> loss = loss_function(net(torch.randn(2, 1, 64, 64)), torch.tensor([0, 3]))
        >>> sorted(loss_function.last_terms)
        ['base', 'sd', 'sf', 'total']
    """

    def __init__(
        self,
        alpha: float = 5.0,
        beta: float = 0.5,
        base: Literal["ce", "focal"] = "ce",
        gamma: float = 2.0,
        network: nn.Module | None = None,
        saliency: Literal["dtd", "gradcam"] = "dtd",
    ) -> None:
        super().__init__()
        for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
            if value < 0:
                raise ValueError(f"{name} must be non-negative, got {name}={value}.")
        if base not in BASE_LOSSES:
            raise ValueError(f"Unknown base loss {base!r}; options are {BASE_LOSSES}.")
        if saliency not in SALIENCY_METHODS:
            raise ValueError(f"Unknown saliency method {saliency!r}; options are {SALIENCY_METHODS}.")
        self.alpha = alpha
        self.beta = beta
        self.base = base
        self.gamma = gamma
        self.saliency_method = saliency
        self.recorder = None if network is None else SaliencyRecorder(network)
        if self.recorder is not None:
            self.recorder.register()
        self.last_terms: dict[str, float] = {}

    def forward(
        self,
        input: torch.Tensor,
        target: torch.Tensor,
        saliency: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Compute the SaRF loss.

        Args:
            input: logits, shape ``(B, K)``.
            target: class indices, shape ``(B,)`` or ``(B, 1)``, integer or float with integer values.
            saliency: saliency vectors ``(B, K, D)``; computed by ``recorder`` when omitted.
            features: penultimate features ``(B, D)``; taken from ``recorder`` when omitted.

        Returns:
            Scalar loss.

        Raises:
            ValueError: when ``target`` is not ``(B,)`` or ``(B, 1)``, or only one of ``saliency``
                and ``features`` is given.
            RuntimeError: when ``alpha`` or ``beta`` is positive and saliency and features are
                neither given nor recorded, or they belong to another batch.
        """
        target = self._class_indices(input, target)
        base = F.cross_entropy(input, target) if self.base == "ce" else focal_loss(input, target, self.gamma)
        saliency, features = self._saliency_and_features(input, saliency, features)
        nan = torch.full_like(base, float("nan")).detach()
        sd = nan if saliency is None else saliency_distinctiveness(saliency)
        sf = nan if saliency is None else saliency_feature_consistency(saliency, features, target)
        total = base
        if self.alpha > 0:
            total = total + self.alpha * sd
        if self.beta > 0:
            total = total + self.beta * sf
        values = torch.stack([base, sd, sf, total]).detach().tolist()
        self.last_terms = dict(zip(("base", "sd", "sf", "total"), values))
        return total

    @staticmethod
    def _class_indices(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == 2 and target.shape[1] == 1:
            target = target[:, 0]
        if target.ndim != 1 or target.shape[0] != input.shape[0]:
            raise ValueError(
                f"target must hold one class index per sample, shape ({input.shape[0]},) or ({input.shape[0]}, 1), "
                f"got {tuple(target.shape)}."
            )
        return target.long()

    def _saliency_and_features(
        self, input: torch.Tensor, saliency: torch.Tensor | None, features: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if (saliency is None) != (features is None):
            raise ValueError("Pass both saliency and features to SaRFLoss, or neither.")
        required = self.alpha > 0 or self.beta > 0
        if saliency is None and self.recorder is not None:
            saliency, features = self.recorder.saliency_and_features(self.saliency_method)
        if saliency is None:
            if required:
                raise RuntimeError(
                    f"SaRFLoss with alpha={self.alpha}, beta={self.beta} needs saliency and features: "
                    "build it with network=<SaliencyResNet> or pass saliency= and features= to forward."
                )
            return None, None
        if saliency.shape[0] != input.shape[0] or features.shape[0] != input.shape[0]:
            raise RuntimeError(
                f"saliency and features are for batch size {saliency.shape[0]} / {features.shape[0]} but the logits "
                f"for {input.shape[0]}: run the network on the same batch just before the loss "
                "(DataParallel is not supported; use DistributedDataParallel)."
            )
        return saliency, features
