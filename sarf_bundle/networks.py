"""The SaRF classifier, a MONAI ResNet18, and the recorder of its penultimate feature and class saliency.

You, Wiest, Reyes, "SaRF: Saliency regularized feature learning improves MRI sequence
classification", Computer Methods and Programs in Biomedicine, 2023, sections 2.2 and 3.4. The
saliency is the paper's Deep Taylor Decomposition (:func:`dtd_saliency`) or, as the paper's
ablation, GradCAM (:func:`gradcam_saliency`). :class:`SaliencyResNet` is a plain ResNet;
:class:`SaliencyRecorder` attaches the hooks that keep what the saliency needs from its forward
pass, and removes them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from monai.networks.nets import ResNet
from torch import nn

__all__ = ["SaliencyRecorder", "SaliencyResNet", "dtd_saliency", "gradcam_saliency", "SALIENCY_METHODS"]

SALIENCY_METHODS = ("dtd", "gradcam")
"""Saliency methods of :meth:`SaliencyRecorder.saliency_and_features` and :class:`sarf_bundle.losses.SaRFLoss`."""


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


def gradcam_saliency(activation: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Class-specific GradCAM saliency vectors at the last residual block, for all classes at once.

    Selvaraju et al., "Grad-CAM: Visual explanations from deep networks via gradient-based
    localization", ICCV 2017; used as the alternative saliency of SaRF in the SaRF paper, section 3.4.
    With ``A`` the activation of the last block (``(B, C, *spatial)``, ``N`` positions), ``Y_i`` the
    logit of class ``i`` computed from it by ``head``, and means taken over the ``N`` positions:

    1. GradCAM channel weights ``a_i[c] = mean_x dY_i/dA[c, x]``.
    2. GradCAM map ``M_i[x] = relu(sum_c a_i[c] * A[c, x])``.
    3. Saliency vector ``S_i[c] = mean_x M_i[x] * A[c, x]``: the last block's features pooled under
       the GradCAM map of class ``i``.

    ``S_i`` lives in the space of the pooled feature ``f[c] = mean_x A[c, x]`` (the same ``(B, K, C)``
    shape as :func:`dtd_saliency`, ``S_i = f`` for a map equal to one everywhere), so the SaRF terms
    (eqs. 2 and 3) apply unchanged: ``L_sd`` compares ``S_i`` and ``S_j`` by cosine, ``L_sf`` compares
    each ``S_i`` with ``f``. The channel-weight vector ``relu(a_i) * f`` is deliberately not used: for
    the ResNet's pooling-and-linear head ``a_i = W_i / N``, so it equals the DTD saliency up to a
    factor per class and sample, and the cosines, hence the loss, would be those of DTD.

    The gradients of step 1 come from ``torch.autograd.grad`` with ``create_graph=True``, so the
    loss backpropagates through the channel weights (into the head's weights) as well as through
    ``A`` (into every convolution). Under ``torch.no_grad`` (validation) the same values are
    computed without a graph. ``head`` is evaluated again on ``A``; it must treat samples
    independently (pooling and linear layers do, batch normalisation in training mode does not).

    Args:
        activation: activation ``A`` of the last block, shape ``(B, C, *spatial)``, e.g. ``(B, 512, 4, 4)``.
        head: the rest of the network, from ``A`` to the logits ``(B, K)``.

    Returns:
        Saliency vectors, shape ``(B, K, C)``: ``S[b, i]`` is the saliency of class ``i`` for sample ``b``.

    Raises:
        ValueError: when ``activation`` has no spatial axis or ``head`` does not give ``(B, K)`` logits.

    Example:
        >>> head = lambda a: F.linear(a.mean(dim=(2, 3)), torch.randn(6, 512))
        >>> gradcam_saliency(torch.rand(4, 512, 4, 4), head).shape
        torch.Size([4, 6, 512])
    """
    if activation.ndim < 3:
        raise ValueError(f"activation must be (B, C, *spatial), got {tuple(activation.shape)}.")
    differentiable = torch.is_grad_enabled()
    with torch.enable_grad():
        source = activation if activation.requires_grad else activation.detach().requires_grad_(True)
        logits = head(source)
        if logits.ndim != 2 or logits.shape[0] != activation.shape[0]:
            raise ValueError(f"head must map the activation to (B, K) logits with B={activation.shape[0]}, got {tuple(logits.shape)}.")
        gradients = [
            torch.autograd.grad(logits[:, i].sum(), source, create_graph=differentiable, retain_graph=True)[0]
            for i in range(logits.shape[1])
        ]
    with torch.set_grad_enabled(differentiable):
        flat = activation.flatten(2)
        channel_weights = torch.stack([g.flatten(2).mean(-1) for g in gradients], dim=1)
        maps = torch.einsum("bkc,bcn->bkn", channel_weights, flat).relu()
        return torch.einsum("bkn,bcn->bkc", maps, flat) / flat.shape[-1]


class SaliencyResNet(ResNet):
    """ResNet18 (MONAI ``ResNet``, basic blocks, layers 2-2-2-2): the SaRF classifier.

    A plain MONAI ``ResNet`` with the paper's settings: ``forward`` returns the logits, nothing is
    recorded, and the state dict keys are MONAI's own (``conv1``, ``bn1``, ``layer1`` ... ``layer4``,
    ``fc``), so MONAI trainers, evaluators, checkpoints, TorchScript and ONNX exporters work
    unchanged. Its saliency comes from a :class:`SaliencyRecorder` attached to it, which
    :class:`sarf_bundle.losses.SaRFLoss` owns.

    Args:
        spatial_dims: number of spatial dimensions of the input (2 for slices).
        in_channels: number of input channels.
        num_classes: number of output classes.
        conv1_t_size: kernel size of the first convolution.
        conv1_t_stride: stride of the first convolution (2 as in the standard ResNet18).
        no_max_pool: whether to skip the max pooling after the first convolution.

    Example:
        >>> net = SaliencyResNet()
        >>> net(torch.randn(2, 1, 64, 64)).shape
        torch.Size([2, 6])

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


class SaliencyRecorder:
    """Records what the SaRF saliency needs from a MONAI ``ResNet``'s forward passes, through hooks it owns.

    While registered, a forward pre-hook on ``fc`` keeps the average-pooled feature ``f``
    (``(B, 512)``, non-negative) of the network's latest forward pass in ``features``, and a forward
    hook on ``layer4`` keeps the activation of the last residual block (``(B, 512, *spatial)``) in
    ``activation``, both with their autograd graph, so that a loss can backpropagate through the
    saliency computed from them (:meth:`saliency_and_features`). Hooks are registered by
    :meth:`register` and removed, with the records, by :meth:`remove`; as a context manager it
    registers on entry and removes on exit, also after an error. :class:`sarf_bundle.losses.SaRFLoss`
    owns one for the whole training (its docstring says why MONAI's trainer needs it). The network
    is left unchanged: outputs and state dict are the same with or without the recorder. Remove it
    before scripting or deep-copying the network (the hooks belong to the recorder). Under
    ``DataParallel`` the replicas overwrite each other's records, so use ``DistributedDataParallel``
    for SaRF training.

    Args:
        network: a MONAI ``ResNet`` with a final ``fc`` layer, e.g. a
            :class:`SaliencyResNet`; the module inside a ``DistributedDataParallel`` or ``DataParallel``
            wrapper is used.

    Raises:
        TypeError: when ``network`` is not such a ResNet.

    Example:
        >>> net = SaliencyResNet()
        >>> with SaliencyRecorder(net) as recorder:
        ...     logits = net(torch.randn(2, 1, 64, 64))
        ...     saliency, features = recorder.saliency_and_features()
        >>> saliency.shape, features.shape
        (torch.Size([2, 6, 512]), torch.Size([2, 512]))
    """

    def __init__(self, network: nn.Module) -> None:
        network = getattr(network, "module", network)
        if not isinstance(network, ResNet) or network.fc is None:
            raise TypeError(
                f"SaliencyRecorder needs a MONAI ResNet with a final fc layer (e.g. sarf_bundle.networks.SaliencyResNet), "
                f"got {type(network).__name__}."
            )
        self.network = network
        self.features: torch.Tensor | None = None
        self.activation: torch.Tensor | None = None
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def register(self) -> list[torch.utils.hooks.RemovableHandle]:
        """Attach the recording hooks to ``fc`` and ``layer4``; returns their handles.

        Raises:
            RuntimeError: when the hooks are already registered.
        """
        if self.handles:
            raise RuntimeError("SaliencyRecorder hooks are already registered.")
        self.handles = [
            self.network.fc.register_forward_pre_hook(self._record_features),
            self.network.layer4.register_forward_hook(self._record_activation),
        ]
        return self.handles

    def remove(self) -> None:
        """Remove the hooks and forget the records."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self.features = self.activation = None

    def __enter__(self) -> SaliencyRecorder:
        self.register()
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def _record_features(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self.features = args[0]

    def _record_activation(self, module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self.activation = output

    def head(self, activation: torch.Tensor) -> torch.Tensor:
        """Logits from a last-block activation ``(B, 512, *spatial)``: the network's average pooling, then ``fc``.

        It computes what the network's ``forward`` does after ``layer4``, without calling ``fc``, so
        the recorded feature stays that of the forward pass.
        """
        fc = self.network.fc
        return F.linear(torch.flatten(self.network.avgpool(activation), 1), fc.weight, fc.bias)

    def saliency_and_features(
        self, method: Literal["dtd", "gradcam"] = "dtd", eps: float = 1e-9
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class saliency and penultimate feature of the latest recorded forward pass, both differentiable.

        Args:
            method: ``"dtd"`` for :func:`dtd_saliency` of the pooled feature and ``fc``, ``"gradcam"``
                for :func:`gradcam_saliency` of the ``layer4`` activation.
            eps: stabiliser of :func:`dtd_saliency`.

        Returns:
            ``(S, f)``: saliency ``(B, num_classes, 512)`` and feature ``(B, 512)``.

        Raises:
            ValueError: when ``method`` is unknown.
            RuntimeError: when no forward pass has been recorded since :meth:`register`.
        """
        if method not in SALIENCY_METHODS:
            raise ValueError(f"Unknown saliency method {method!r}; options are {SALIENCY_METHODS}.")
        if self.features is None or self.activation is None:
            state = "" if self.handles else " (its hooks are not registered: call register() or use it as a context manager)"
            raise RuntimeError(
                f"SaliencyRecorder has recorded no forward pass of {type(self.network).__name__}{state}: "
                "run the network on the batch before computing its saliency."
            )
        if method == "gradcam":
            return gradcam_saliency(self.activation, self.head), self.features
        return dtd_saliency(self.features, self.network.fc.weight, eps), self.features

    def saliency(self, method: Literal["dtd", "gradcam"] = "dtd", eps: float = 1e-9) -> torch.Tensor:
        """Saliency ``(B, num_classes, 512)`` of the latest recorded forward pass; see :meth:`saliency_and_features`."""
        return self.saliency_and_features(method, eps)[0]
