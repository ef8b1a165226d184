"""Training step time with the SaRF loss / with cross-entropy only: same model, batch and data, one run.

    python benchmarks/training_step.py                  # 8 volumes = 56 slices of 128 px (configs/train.json: 96 px)
    python benchmarks/training_step.py --rounds 20 --batch_size 16

Everything comes from ``configs/train.json`` as ``monai.bundle run training`` builds it: the network
(``SaliencyResNet``), the optimizer (the config's, AdamW), ``SliceBatch``, the inferer and the SaRF loss (alpha 5,
beta 0.5, DTD saliency). One MONAI ``SupervisedTrainer`` per loss shares that network and optimizer, and
a step is its whole iteration (slicing the batch, forward, loss, backward, optimizer step), timed from
Ignite's ``ITERATION_STARTED`` to ``ITERATION_COMPLETED``; the trainer's logging, validation and
checkpoint handlers are left out. The batch is one fixed batch of z-scored random slices, the same for
every loss (the time of these operations does not depend on the pixel values).

After ``warmup`` untimed rounds, ``rounds`` rounds alternate the losses (the order reversed every round),
``steps`` steps each. The ratio is the median over the rounds of each round's ratio (SaRF's step time over
cross-entropy's, measured next to each other), so that load from other jobs, which changes between rounds,
cancels. The process's CPU time per step is printed too, and the one part of the step where the two losses
differ (``fc``, the loss and their backward on the pooled features) timed on its own, which bounds the
difference without the noise of whole steps. Torch runs with one thread by default (``--threads``). The goal (issue "Performance"): SaRF
costs at most 1.10 times cross-entropy alone. Also printed, for information: the configs' baseline
(``--alpha 0 --beta 0``, cross-entropy that still computes the saliency terms for the logs) and the GradCAM
variant (``--saliency gradcam``).
"""

from __future__ import annotations

import time

import fire
import torch
from common import bundle_parser, interleave, machine, median, verdict
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.engines import SupervisedTrainer
from monai.utils import set_determinism

GOAL = 1.10


def step_trainer(
    parser: ConfigParser, loss: torch.nn.Module, batch: dict, steps: int, wall: list[float], cpu: list[float] | None = None
) -> SupervisedTrainer:
    """A ``SupervisedTrainer`` of the config's parts with ``loss``, running ``steps`` iterations on ``batch``.

    Each iteration's wall time is appended to ``wall`` and the process's CPU time (all threads) to ``cpu``.
    """
    trainer = SupervisedTrainer(
        device=parser.get_parsed_content("device"),
        max_epochs=1,
        train_data_loader=[batch] * steps,
        network=parser.get_parsed_content("network"),
        optimizer=parser.get_parsed_content("optimizer"),
        loss_function=loss,
        prepare_batch=parser.get_parsed_content("prepare_batch"),
        inferer=parser.get_parsed_content("inferer"),
        decollate=False,
    )
    start: list[tuple[float, float]] = []

    def _synchronize() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    @trainer.on(Events.ITERATION_STARTED)
    def _start(_) -> None:
        _synchronize()
        start.append((time.perf_counter(), time.process_time()))

    @trainer.on(Events.ITERATION_COMPLETED)
    def _stop(_) -> None:
        _synchronize()
        wall_start, cpu_start = start.pop()
        wall.append(time.perf_counter() - wall_start)
        if cpu is not None:
            cpu.append(time.process_time() - cpu_start)

    return trainer


def config_loss(parser: ConfigParser, **overrides) -> torch.nn.Module:
    """The config's ``loss`` built on the config's (already built) network, with loss keys overridden, e.g. ``alpha=0``."""
    keys = {k: parser.get(k) for k in ("alpha", "beta", "base_loss", "saliency")}
    sub = ConfigParser({**keys, **overrides, "network": parser.get_parsed_content("network"), "loss": parser.get("loss")})
    return sub.get_parsed_content("loss")


def main(
    batch_size: int = 8, image_size: int = 128, rounds: int = 10, steps: int = 1, warmup: int = 1, threads: int = 1, seed: int = 0
) -> None:
    """Measure and print the step-time ratios.

    Args:
        batch_size: volumes per batch (each gives ``n_slices`` = 7 slices); configs/train.json uses 8.
        image_size: slice side in pixels; 128 as in the figures of docs/performance.md, configs/train.json uses 96.
        rounds: timed rounds; each runs every loss for ``steps`` steps.
        steps: steps per loss and round.
        warmup: untimed rounds first.
        threads: torch threads (1: on a machine shared with other jobs, several threads per process stall each
            other and make the times erratic; the ratio hardly depends on it); 0 for torch's default (one per core).
        seed: seed of the network's initialisation and of the batch.
    """
    if threads:
        torch.set_num_threads(threads)
    set_determinism(seed=seed)
    parser = bundle_parser("train.json", batch_size=batch_size, image_size=image_size)
    n_slices = parser.get_parsed_content("n_slices")
    generator = torch.Generator().manual_seed(seed)
    batch = {
        "image": torch.randn(batch_size, n_slices, image_size, image_size, generator=generator),
        "label": torch.randint(0, len(parser.get("class_names")), (batch_size,), generator=generator),
    }
    losses = {
        "cross-entropy": torch.nn.CrossEntropyLoss(),
        "SaRF (dtd)": parser.get_parsed_content("loss"),
        "baseline config (alpha=beta=0)": config_loss(parser, alpha=0.0, beta=0.0),
        "SaRF (gradcam)": config_loss(parser, saliency="gradcam"),
    }
    times: dict[str, list[float]] = {name: [] for name in losses}
    cpu_times: dict[str, list[float]] = {name: [] for name in losses}
    trainers = {name: step_trainer(parser, loss, batch, steps, times[name], cpu_times[name]) for name, loss in losses.items()}
    names = list(trainers)
    for _ in range(warmup):
        for name in names:
            trainers[name].run()
    for name in names:
        times[name].clear(), cpu_times[name].clear()
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            trainers[name].run()

    def paired(clock: dict[str, list[float]], name: str) -> float:
        """Median over the rounds of the round's median step time of ``name`` over that of cross-entropy."""
        rounds_of = [slice(r * steps, (r + 1) * steps) for r in range(rounds)]
        return median([median(clock[name][s]) / median(clock["cross-entropy"][s]) for s in rounds_of])

    print(f"training step: {batch_size} volumes x {n_slices} slices of {image_size} px, {rounds} rounds x {steps} steps, {machine()}")
    for name in names:
        print(
            f"  {name:31s} wall: median {median(times[name]) * 1000:7.1f} ms/step, min {min(times[name]) * 1000:7.1f}, "
            f"ratio {paired(times, name):.3f};  CPU: median {median(cpu_times[name]) * 1000:7.1f} ms/step, ratio {paired(cpu_times, name):.3f}"
        )
    head = loss_overhead(parser, batch_size * n_slices)
    ce_step = median(times["cross-entropy"])
    print(
        f"  the loss part alone (fc layer, loss, its backward; 400 alternations): cross-entropy {head['cross-entropy'] * 1000:.2f} ms, "
        f"SaRF (dtd) {head['SaRF (dtd)'] * 1000:.2f} ms: {(head['SaRF (dtd)'] - head['cross-entropy']) / ce_step * 100:.1f} % "
        "of the cross-entropy step"
    )
    ratio = paired(times, "SaRF (dtd)")
    print(f"ratio SaRF (dtd) / cross-entropy = {ratio:.3f}   goal <= {GOAL:.2f}   {verdict(ratio, GOAL)}")
    for name in ("baseline config (alpha=beta=0)", "SaRF (gradcam)"):
        print(f"  (information) {name} / cross-entropy = {paired(times, name):.3f}")


def loss_overhead(parser: ConfigParser, n: int, repeats: int = 400) -> dict[str, float]:
    """Median seconds of the part of a step where the losses differ: ``fc`` on ``n`` features, the loss, their backward.

    The network's forward and backward up to the pooled feature are the same for both losses (SaRF's terms only
    add to the gradient that reaches the feature), so this is the whole difference between the two steps.
    """
    from sarf_bundle.networks import dtd_saliency

    fc = torch.nn.Linear(512, len(parser.get("class_names")))
    features, target = torch.rand(n, 512), torch.randint(0, fc.out_features, (n,))
    sarf, ce = parser.get_parsed_content("loss"), torch.nn.CrossEntropyLoss()

    def part(name: str) -> None:
        f = features.clone().requires_grad_(True)
        logits = fc(f)
        loss = ce(logits, target) if name == "cross-entropy" else sarf(logits, target, saliency=dtd_saliency(f, fc.weight), features=f)
        loss.backward()

    times = interleave({"cross-entropy": lambda: part("cross-entropy"), "SaRF (dtd)": lambda: part("SaRF (dtd)")}, repeats)
    return {name: median(t) for name, t in times.items()}

if __name__ == "__main__":
    fire.Fire(main)
