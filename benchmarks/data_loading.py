"""Data loading during training after the first epoch: batches per second the loader alone delivers / the step consumes.

    python benchmarks/data_loading.py                 # 10 simulated subjects at half resolution
    python benchmarks/data_loading.py --data data/sim --rounds 5

``train#dataloader`` of ``configs/train.json`` is built as ``monai.bundle run training`` builds it: a
``CacheDataset`` holding the deterministic preprocessing of every training volume (skull stripping with the
datalist's brain masks, crop, z-score, the 7 slices), then, per item and epoch, the random augmentations
(``RandAffined``, ``RandFlipd``, ``RandScaleIntensityd``) and collation, in the config's DataLoader. The dataset
is ``--data``'s datalist (training split without fold 0, as the config trains); without it, 10 subjects are
simulated once at half resolution (``--voxel_scale 2``) into ``data/benchmarks/loading``: after the first
epoch, the loader's work does not depend on the volumes' size, since the cache holds 7 slices per volume.

One epoch runs first (the cache is filled when the dataset is built; the epoch warms everything else up) and
its batches are kept. Then ``rounds`` rounds alternate (order reversed every round): one epoch of the loader
alone, timing every batch it delivers, and ``steps`` training steps on the kept batches, each timed as in
``training_step.py`` (a MONAI ``SupervisedTrainer`` with the config's network, SaRF loss, optimizer and
``SliceBatch``). The ratio is the loader's rate over the step's rate, i.e. the median step time over the
median time per delivered batch. The goal (issue "Performance"): at least 10, so that the loader never
holds the training back.
"""

from __future__ import annotations

import time

import fire
from common import bundle_parser, machine, median, simulated, verdict
from monai.utils import set_determinism
from training_step import step_trainer

GOAL = 10.0


def main(data: str | None = None, rounds: int = 3, steps: int = 2, warmup_steps: int = 1, **overrides) -> None:
    """Measure and print the loader / training-step rate ratio.

    Args:
        data: a dataset folder with ``datalist.json`` (e.g. from ``python -m sarf_bundle synth``); None to
            simulate 10 subjects at half resolution into ``data/benchmarks/loading``.
        rounds: timed rounds; each runs one loader epoch and ``steps`` training steps.
        steps: training steps per round.
        warmup_steps: untimed training steps first.
        **overrides: keys of ``configs/train.json``, e.g. ``--batch_size 16`` or ``--num_workers 0``.
    """
    if overrides.keys() & {"help", "h"}:  # fire hands --help to **overrides: show the usage instead of running
        print(__doc__)
        return
    folder = simulated(data, "loading", subjects=10, voxel_scale=2.0)
    set_determinism(seed=0)
    parser = bundle_parser("train.json", dataset_dir=str(folder), **overrides)
    tick = time.perf_counter()
    loader = parser.get_parsed_content("train#dataloader")
    cache_s = time.perf_counter() - tick
    batches = list(loader)  # the first epoch; its batches feed the training steps
    times: dict[str, list[float]] = {"loader": [], "step": []}
    trainer = step_trainer(parser, parser.get_parsed_content("loss"), batches[0], steps, times["step"])
    trainer.data_loader = [batches[i % len(batches)] for i in range(steps)]
    for _ in range(warmup_steps):
        trainer.run()
    times["step"].clear()

    def loader_epoch() -> None:
        iterator = iter(loader)
        while True:
            tick = time.perf_counter()
            try:
                next(iterator)
            except StopIteration:
                return
            times["loader"].append(time.perf_counter() - tick)

    sides = {"loader": loader_epoch, "step": trainer.run}
    for r in range(rounds):
        for name in sides if r % 2 == 0 else reversed(sides):
            sides[name]()

    batch_size = parser.get_parsed_content("batch_size")
    loader_s, step_s = median(times["loader"]), median(times["step"])
    print(
        f"data loading: {len(loader.dataset)} training volumes cached in {cache_s:.1f} s, {len(batches)} batches of {batch_size} "
        f"volumes per epoch, {rounds} rounds; {machine()}"
    )
    print(f"  loader alone     median {loader_s * 1000:8.1f} ms/batch = {1 / loader_s:8.2f} batches/s  (n={len(times['loader'])})")
    print(f"  training step    median {step_s * 1000:8.1f} ms/batch = {1 / step_s:8.2f} batches/s  (n={len(times['step'])})")
    ratio = step_s / loader_s
    print(f"ratio loader rate / step rate = {ratio:.1f}   goal >= {GOAL:.0f}   {verdict(ratio, GOAL, at_most=False)}")


if __name__ == "__main__":
    fire.Fire(main)
