"""Seconds per volume of the relevance maps (7 slices x 6 classes) and of a ROAD curve (9 levels), per slice size.

    python benchmarks/explanation_speed.py --datalist demo/data/datalist.json --model demo/sarf/models/model.pt

Times the first ``volumes`` test volumes after one warm-up call and prints medians; preprocessing
(reading and resampling the volume) is not included.
"""

from __future__ import annotations

import time

import fire
import numpy as np
import torch

from sarf_bundle.bundle import load_inference_bundle
from sarf_bundle.data import load_datalist
from sarf_bundle.explain import explain_slices
from sarf_bundle.faithfulness import road_volume


def main(datalist: str, model: str, sizes: tuple[int, ...] = (96, 128), volumes: int = 6) -> None:
    files = [e["image"] for e in load_datalist(datalist, "testing")[:volumes]]
    print(f"torch threads {torch.get_num_threads()}, device: CPU unless CUDA is available")
    for size in sizes:
        bundle = load_inference_bundle(model, image_size=size)
        stacks = [bundle.load(f) for f in files]
        explain_slices(bundle, stacks[0])
        maps, road = [], []
        for i, slices in enumerate(stacks):
            tick = time.perf_counter()
            explain_slices(bundle, slices)
            maps.append(time.perf_counter() - tick)
            tick = time.perf_counter()
            road_volume(bundle, slices, rng=i)
            road.append(time.perf_counter() - tick)
        print(f"{size} px: relevance maps {np.median(maps):.2f} s/volume, ROAD curve {np.median(road):.2f} s/volume (median of {len(files)})")


if __name__ == "__main__":
    fire.Fire(main)
