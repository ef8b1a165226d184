"""The SaRF classifier: a MONAI ResNet18 that exposes its penultimate feature and its DTD saliency.

You, Wiest, Reyes, "SaRF: Saliency regularized feature learning improves MRI sequence
classification", Computer Methods and Programs in Biomedicine, 2023, section 2.2.
"""

from __future__ import annotations

import copy

import torch
from monai.networks.nets import ResNet
from torch import nn

__all__ = ["SaliencyResNet", "dtd_saliency"]


def dtd_saliency(features: torch.Tensor, weight: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Class-specific Deep Taylor Decomposition saliency of the last linear layer, for all classes at once.

    The z+ rule applied to the final linear layer with a starting relevance that is one-hot on
    class ``i`` gives, in closed form (no extra forward or backward pass),
    ``S[b, i, j] = f[b, j] * max(W[i, j], 0) / (sum_j' f[b, j'] * max(W[i, j'], 0) + eps)``.
    The layer bias is ignored, as is standard for the z+ rule. The rule assumes non-negative
    features (the output of ReLU and average pooling); each ``S[b, i]`` then sums to 1 wherever
    its denominator is positive (relevance conservation). The result is differentiable with
    respect to both ``features`` and ``weight``.

    Args:
        features: penultimate features ``f``, shape ``(B, D)``, non-negative.
        weight: weight ``W`` of the final linear layer, shape ``(K, D)``.
        eps: stabiliser added to the denominator, so that a class with no positive
            contribution gets zero saliency instead of NaN.

    Returns:
        Saliency vectors, shape ``(B, K, D)``: ``S[b, i]`` is the saliency of class ``i`` for sample ``b``.

    Raises:
        ValueError: when the shapes of ``features`` and ``weight`` do not fit ``(B, D)`` and ``(K, D)``.

    Example:
        >>> f = torch.rand(4, 512)
        >>> w = torch.randn(6, 512)
        >>> dtd_saliency(f, w).shape
        torch.Size([4, 6, 512])
    """
    if features.ndim != 2 or weight.ndim != 2 or features.shape[1] != weight.shape[1]:
        raise ValueError(
            f"features must be (B, D) and weight (K, D) with the same D, got {tuple(features.shape)} "
            f"and {tuple(weight.shape)}."
        )
    contributions = features[:, None, :] * weight.clamp(min=0)[None]
    return contributions / (contributions.sum(dim=-1, keepdim=True) + eps)


class SaliencyResNet(ResNet):
    """ResNet18 (MONAI ``ResNet``, basic blocks, layers 2-2-2-2) that records its penultimate feature.

    A forward pre-hook on ``fc`` stores the average-pooled feature ``f`` (``(B, 512)``,
    non-negative) of the latest forward pass in ``self.features``, with its autograd graph, so that
    losses such as :class:`sarf_bundle.losses.SaRFLoss` can backpropagate through it. ``forward``
    returns only the logits, and the state dict keys are MONAI's own (``conv1``, ``bn1``,
    ``layer1`` ... ``layer4``, ``fc``), so MONAI trainers, evaluators, checkpoints and exporters
    work unchanged. ``torch.jit.trace`` keeps the hook out of the trace; ``torch.jit.script``
    scripts a copy without the hook (see ``__prepare_scriptable__``). Neither exported module
    records features. Under ``DataParallel`` the replicas overwrite each other's features, so
    use ``DistributedDataParallel`` for SaRF training.

    Args:
        spatial_dims: number of spatial dimensions of the input (2 for slices).
        in_channels: number of input channels.
        num_classes: number of output classes.
        conv1_t_size: kernel size of the first convolution.
        conv1_t_stride: stride of the first convolution (2 as in the standard ResNet18).
        no_max_pool: whether to skip the max pooling after the first convolution.

    Example:
        >>> net = SaliencyResNet()
        >>> logits = net(torch.randn(2, 1, 64, 64))
        >>> net.features.shape, net.saliency().shape
        (torch.Size([2, 512]), torch.Size([2, 6, 512]))

        In a bundle config: ``{"_target_": "sarf_bundle.networks.SaliencyResNet", "num_classes": 6}``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 6,
        conv1_t_size: int = 7,
        conv1_t_stride: int = 2,
        no_max_pool: bool = False,
    ) -> None:
        super().__init__(
            block="basic",
            layers=[2, 2, 2, 2],
            block_inplanes=[64, 128, 256, 512],
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_size=conv1_t_size,
            conv1_t_stride=conv1_t_stride,
            no_max_pool=no_max_pool,
            num_classes=num_classes,
        )
        self.features: torch.Tensor | None = None
        self.feature_hook = self.fc.register_forward_pre_hook(self._record_features)

    def _record_features(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self.features = args[0]

    def saliency_and_features(self, eps: float = 1e-9) -> tuple[torch.Tensor, torch.Tensor]:
        """DTD saliency and penultimate feature of the latest forward pass, both differentiable.

        Args:
            eps: stabiliser of :func:`dtd_saliency`.

        Returns:
            ``(S, f)``: saliency ``(B, num_classes, 512)`` and feature ``(B, 512)``.

        Raises:
            RuntimeError: when no forward pass has run yet.
        """
        if self.features is None:
            raise RuntimeError("SaliencyResNet has no recorded features: run a forward pass before saliency.")
        return dtd_saliency(self.features, self.fc.weight, eps), self.features

    def saliency(self, eps: float = 1e-9) -> torch.Tensor:
        """DTD saliency ``(B, num_classes, 512)`` of the latest forward pass; see :meth:`saliency_and_features`."""
        return self.saliency_and_features(eps)[0]

    def __getstate__(self) -> dict:
        """Drop the recorded features when copied or pickled: a non-leaf tensor cannot be deep-copied."""
        return {**super().__getstate__(), "features": None}

    def __prepare_scriptable__(self) -> SaliencyResNet:
        """Return a copy without the feature hook for ``torch.jit.script``, which cannot compile it."""
        scriptable = copy.deepcopy(self)
        scriptable.feature_hook.remove()
        return scriptable
