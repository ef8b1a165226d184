"""Deep Taylor decomposition (layer-wise relevance propagation) through a MONAI ResNet down to the input image.

Montavon et al., "Explaining nonlinear classification decisions with deep Taylor decomposition",
Pattern Recognition 65, 2017; Bach et al., "On pixel-wise explanations for non-linear classifier
decisions by layer-wise relevance propagation", PLoS ONE, 2015. The SaRF paper (section 2.2, Fig. 3)
shows these class-specific maps in image space; its loss uses the same propagation stopped at the
penultimate layer, in closed form (:func:`sarf_bundle.networks.dtd_saliency`).

Rules, from the output back to the image (``R`` is relevance, ``x`` a layer's input, ``s = R / z``):

- Start: relevance one-hot on the explained class, so every map sums to 1 (conservation).
- ``fc`` and every hidden convolution: z+ (``R_in = x * W+^T s`` with ``z = W+ x``), biases ignored.
  Their inputs are non-negative (ReLU, max- or average-pooling outputs), which the rule assumes.
- BatchNorm is folded into the convolution before it (:func:`fold_batch_norm`), so a rule sees one
  linear layer; the folded weight can change sign, hence the folding before taking ``W+``.
- Average pooling: the z rule, ``R_in = x * (s pooled back)``, i.e. each position gets the share it
  contributed to the mean (equal to z+ as its inputs are non-negative).
- Max pooling: winner takes all, the relevance of a pooled value goes to the position it came from
  (the gradient of max pooling).
- ReLU: relevance passes unchanged (it is zero where the ReLU output is, because the rule of the
  next layer multiplies by the activation).
- Residual addition ``y = a + b`` (convolution branch ``a``, shortcut ``b``): split in proportion to
  the two inputs, ``R_a = a / (a + b) * R``, ``R_b = b / (a + b) * R``, which conserves relevance.
- Input convolution: the bounded rule zB with the image's value range ``[l, h]``
  (``z = W x - W+ l - W- h``), so that relevance reaches pixels of any sign.

Every denominator ``z`` is stabilised as ``z + eps * sign(z)`` (``sign(0) = 1``). With this, the sum
of relevance is conserved from layer to layer wherever the denominators are not all zero; in a
network whose biases are zero (hence no neuron is active without input) it is conserved exactly up
to ``eps``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from monai.networks.nets.resnet import ResNet, ResNetBlock
from torch import nn

__all__ = ["Explanation", "ResNetRelevance", "fold_batch_norm", "relevance_maps"]


def fold_batch_norm(conv: nn.Module, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``norm(conv(x))`` as one convolution, with the normalisation's running statistics.

    Args:
        conv: a convolution (``nn.Conv1d/2d/3d``), with or without bias.
        norm: the batch normalisation that follows it, with running statistics (evaluation mode).

    Returns:
        ``(weight, bias)`` such that ``conv._conv_forward(x, weight, bias)`` equals ``norm(conv(x))`` in
        evaluation mode.

    Raises:
        ValueError: when ``norm`` keeps no running statistics or does not match the convolution's channels.
    """
    if getattr(norm, "running_var", None) is None or norm.running_var.shape[0] != conv.weight.shape[0]:
        raise ValueError(f"{type(norm).__name__} must keep running statistics for the {conv.weight.shape[0]} output channels of {conv}.")
    scale = norm.running_var.add(norm.eps).rsqrt()
    if norm.weight is not None:
        scale = scale * norm.weight
    bias = -norm.running_mean if conv.bias is None else conv.bias - norm.running_mean
    bias = bias * scale + (norm.bias if norm.bias is not None else 0.0)
    weight = conv.weight * scale.reshape(-1, *([1] * (conv.weight.ndim - 1)))
    return weight, bias


def _stabilise(z: torch.Tensor, eps: float) -> torch.Tensor:
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z)


def _backward(outputs: torch.Tensor, inputs: Sequence[torch.Tensor], cotangents: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Vector-Jacobian products for a stack of cotangents ``(B, T, ...)``, one per explained target ``T``."""
    grads = torch.autograd.grad(outputs, inputs, cotangents.transpose(0, 1), is_grads_batched=True)
    return tuple(g.transpose(0, 1) for g in grads)


def _zplus(x: torch.Tensor, relevance: torch.Tensor, layer: Callable[[torch.Tensor], torch.Tensor], eps: float) -> torch.Tensor:
    """z rule of a linear ``layer`` (z+ when it has non-negative weights): ``x * layer^T (R / layer(x))``."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        z = layer(x)
        (c,) = _backward(z, [x], relevance / _stabilise(z.detach(), eps).unsqueeze(1))
    return x.detach().unsqueeze(1) * c


def _zbox(x: torch.Tensor, relevance: torch.Tensor, conv: nn.Module, weight: torch.Tensor, eps: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """zB rule of the input convolution with bounds ``low <= x <= high``."""
    with torch.enable_grad():
        x, low, high = (t.detach().requires_grad_(True) for t in (x, low, high))
        z = (
            conv._conv_forward(x, weight, None)
            - conv._conv_forward(low, weight.clamp(min=0), None)
            - conv._conv_forward(high, weight.clamp(max=0), None)
        )
        grads = _backward(z, [x, low, high], relevance / _stabilise(z.detach(), eps).unsqueeze(1))
    return sum(t.detach().unsqueeze(1) * g for t, g in zip((x, low, high), grads))


def _winner_takes_all(x: torch.Tensor, relevance: torch.Tensor, pool: nn.Module) -> torch.Tensor:
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (r,) = _backward(pool(x), [x], relevance)
    return r


@dataclass
class Explanation:
    """Result of :meth:`ResNetRelevance.explain`.

    Attributes:
        logits: the network's output, ``(B, K)``.
        targets: the explained classes, ``(B, T)``.
        relevance: relevance at the input image, ``(B, T, C, *spatial)``; ``relevance[b, t]`` explains
            class ``targets[b, t]`` and sums to 1 (conservation, see the module notes).
        layers: relevance at the input of named layers (``"fc"``, ``"avgpool"``, ``"layer4.1"`` ...
            ``"layer1.0"``, ``"maxpool"``, ``"conv1"``), each ``(B, T, *input shape)``, when requested.
    """

    logits: torch.Tensor
    targets: torch.Tensor
    relevance: torch.Tensor
    layers: dict[str, torch.Tensor] = field(default_factory=dict)


class ResNetRelevance:
    """Class-specific relevance maps of a MONAI ``ResNet`` with basic blocks (e.g. ``SaliencyResNet``).

    Forward hooks record what the rules need (layer inputs, the two inputs of every residual
    addition) during the network's own forward pass, without changing any output; the relevance is
    then propagated with the rules of the module notes. Use it as a context manager: hooks are
    registered and the network put in evaluation mode on entry, and both are undone on exit, also
    after an error. Do not save checkpoints inside the context.

    Args:
        network: a ``monai.networks.nets.ResNet`` built from ``ResNetBlock`` (ResNet10/18/34),
            with average pooling and a final ``fc`` layer.
        eps: stabiliser of every rule's denominator.
        bounds: ``(low, high)`` input range of the zB rule; default: each image's own minimum and maximum.

    Raises:
        TypeError: when ``network`` is not such a ResNet.

    Example:
        >>> net = SaliencyResNet()
        >>> with ResNetRelevance(net) as lrp:
        ...     result = lrp.explain(torch.randn(2, 1, 64, 64))
        >>> result.relevance.shape  # one map per image and class
        torch.Size([2, 6, 1, 64, 64])
    """

    def __init__(self, network: nn.Module, eps: float = 1e-9, bounds: tuple[float, float] | None = None) -> None:
        blocks = [m for layer in (network.layer1, network.layer2, network.layer3, network.layer4) for m in layer] if isinstance(network, ResNet) else []
        supported = all(isinstance(b, ResNetBlock) and (b.downsample is None or isinstance(b.downsample, nn.Sequential)) for b in blocks)
        if not blocks or not supported or network.fc is None or network.avgpool is None:
            raise TypeError(
                f"ResNetRelevance needs a MONAI ResNet of basic blocks (shortcut type B) with average pooling and fc, got {type(network).__name__}."
            )
        if bounds is not None and not bounds[0] < bounds[1]:
            raise ValueError(f"bounds must be (low, high) with low < high, got {bounds}.")
        self.network = network
        self.eps = eps
        self.bounds = bounds
        self.blocks = {name: m for name, m in network.named_modules() if isinstance(m, ResNetBlock)}
        self.records: dict[str, torch.Tensor] = {}
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        self._was_training = False

    def register(self) -> list[torch.utils.hooks.RemovableHandle]:
        """Attach the recording hooks (and switch to evaluation mode); returns their handles."""
        if self.handles:
            raise RuntimeError("ResNetRelevance hooks are already registered.")
        net = self.network
        self._was_training = net.training
        net.eval()
        inputs = {"conv1": net.conv1, "avgpool": net.avgpool, "fc": net.fc}
        if not net.no_max_pool:
            inputs["maxpool"] = net.maxpool
        for name, block in self.blocks.items():
            inputs[name] = block
            inputs[f"{name}.conv2"] = block.conv2
        outputs = {f"{name}.bn2": block.bn2 for name, block in self.blocks.items()}
        outputs.update({f"{name}.downsample": b.downsample for name, b in self.blocks.items() if b.downsample is not None})
        for name, module in inputs.items():
            self.handles.append(module.register_forward_pre_hook(self._recorder(name, from_input=True)))
        for name, module in outputs.items():
            self.handles.append(module.register_forward_hook(self._recorder(name, from_input=False)))
        return self.handles

    def remove(self) -> None:
        """Remove every hook, forget the records and restore the network's training mode."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self.records = {}
        self.network.train(self._was_training)

    def __enter__(self) -> ResNetRelevance:
        self.register()
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def _recorder(self, name: str, from_input: bool) -> Callable:
        def record(module: nn.Module, args: tuple, output: torch.Tensor | None = None) -> None:
            # a copy: the residual addition and the ReLUs of MONAI's blocks work in place
            self.records[name] = (args[0] if from_input else output).detach().clone()

        return record

    def explain(self, images: torch.Tensor, targets: torch.Tensor | None = None, layers: bool = False) -> Explanation:
        """Forward ``images`` and propagate one-hot relevance of each target class back to them.

        Args:
            images: a batch ``(B, C, *spatial)``.
            targets: classes to explain, ``(B,)`` or ``(B, T)`` integers; default: every class (``T = K``).
            layers: also return the relevance at the input of every named layer (more memory).

        Returns:
            An :class:`Explanation`.

        Raises:
            RuntimeError: outside the context (no hooks registered).
            ValueError: when ``targets`` does not fit the batch or the classes.
        """
        if not self.handles:
            raise RuntimeError("ResNetRelevance.explain must run inside `with ResNetRelevance(net) as lrp:`.")
        net, eps = self.network, self.eps
        with torch.no_grad():
            logits = net(images)
        batch, classes = logits.shape
        if targets is None:
            targets = torch.arange(classes, device=logits.device).expand(batch, classes)
        targets = torch.as_tensor(targets, device=logits.device).long()
        targets = targets[:, None] if targets.ndim == 1 else targets
        if targets.ndim != 2 or targets.shape[0] != batch or targets.numel() and not 0 <= int(targets.min()) <= int(targets.max()) < classes:
            raise ValueError(f"targets must be (B,) or (B, T) class indices in [0, {classes}) for B={batch}, got {tuple(targets.shape)}.")
        rec, kept = self.records, {}

        relevance = torch.nn.functional.one_hot(targets, classes).to(logits.dtype)
        weight = net.fc.weight.clamp(min=0)
        relevance = kept["fc"] = _zplus(rec["fc"], relevance, lambda x: torch.nn.functional.linear(x, weight), eps)
        pooled = rec["avgpool"]
        relevance = relevance.reshape(*relevance.shape, *([1] * (pooled.ndim - 2)))
        relevance = kept["avgpool"] = _zplus(pooled, relevance, net.avgpool, eps)
        for name, block in reversed(self.blocks.items()):
            relevance = kept[name] = self._block(name, block, relevance)
        if not net.no_max_pool:
            relevance = _winner_takes_all(rec["maxpool"], relevance, net.maxpool)
            kept["maxpool"] = relevance
        image = rec["conv1"]
        if self.bounds is None:
            reduce = tuple(range(1, image.ndim))
            low, high = image.amin(dim=reduce, keepdim=True), image.amax(dim=reduce, keepdim=True)
        else:
            low, high = (torch.tensor(v, dtype=image.dtype, device=image.device) for v in self.bounds)
        low, high = low.expand_as(image), high.expand_as(image)
        weight, _ = fold_batch_norm(net.conv1, net.bn1)
        relevance = kept["conv1"] = _zbox(image, relevance, net.conv1, weight, eps, low, high)
        self.records = {}
        return Explanation(logits, targets, relevance, kept if layers else {})

    def _block(self, name: str, block: ResNetBlock, relevance: torch.Tensor) -> torch.Tensor:
        """Relevance at a residual block's input from the relevance at its output."""
        rec, eps = self.records, self.eps
        branch = rec[f"{name}.bn2"]
        shortcut = rec[f"{name}.downsample"] if block.downsample is not None else rec[name]
        total = _stabilise(branch + shortcut, eps).unsqueeze(1)
        to_branch, to_shortcut = branch.unsqueeze(1) / total * relevance, shortcut.unsqueeze(1) / total * relevance
        for conv, norm, x in ((block.conv2, block.bn2, rec[f"{name}.conv2"]), (block.conv1, block.bn1, rec[name])):
            weight = fold_batch_norm(conv, norm)[0].clamp(min=0)
            to_branch = _zplus(x, to_branch, lambda v, c=conv, w=weight: c._conv_forward(v, w, None), eps)
        if block.downsample is None:
            return to_branch + to_shortcut
        conv, norm = block.downsample
        weight = fold_batch_norm(conv, norm)[0].clamp(min=0)
        return to_branch + _zplus(rec[name], to_shortcut, lambda v: conv._conv_forward(v, weight, None), eps)


def relevance_maps(
    network: nn.Module, images: torch.Tensor, targets: torch.Tensor | None = None, eps: float = 1e-9, bounds: tuple[float, float] | None = None
) -> Explanation:
    """Class-specific relevance maps of ``images``, hooks attached only for the call; see :class:`ResNetRelevance`."""
    with ResNetRelevance(network, eps=eps, bounds=bounds) as lrp:
        return lrp.explain(images, targets)
