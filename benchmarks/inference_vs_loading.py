"""Folder inference time per volume / the time to just load that volume with nibabel, side by side in one run.

    python benchmarks/inference_vs_loading.py                     # 24 simulated whole-head volumes, 3 repeats
    python benchmarks/inference_vs_loading.py --data /my/folder --repeats 5

The volumes are the ``.nii``/``.nii.gz`` files of ``--data``; without it, 4 subjects (24 volumes) are
simulated once at clinical resolution into ``data/benchmarks/clinical`` (whole-head volumes in random
protocols: 3D near-isotropic ones of about 250 x 250 x 150 voxels, 2D stacks of up to 900 x 900 x 20).
Every file is read once first, so that both sides find it in the page cache: the comparison is of
decoding and computing, not of the disk.

For each volume, in alternating order, the run times:

- **load** (the baseline): ``nibabel.load(path).get_fdata()``, decoding the whole array (to float64); also,
  for information, ``np.asarray(nibabel.load(path).dataobj)`` (decoding in the stored type);
- **inference**: what folder inference does with that file, built from ``configs/inference.json``: the
  bundle's ``InferenceDataset`` with the config's preprocessing (reading, checks, orientation, cranio-caudal
  crop, the 7 slices, their central z-score), then ``SliceBatch``, the network's forward pass on the 7 slices
  and the volume's class probabilities. As in the bundle, where the preprocessing runs in DataLoader worker
  processes (one torch thread each), the preprocessing runs with ``--preprocessing_threads`` (1) torch
  threads; the network runs with ``--network_threads`` (1: the baseline uses one core too, so the ratio
  compares the work per volume, which is what bounds a folder's throughput when workers and network share
  the cores; 0 for torch's default).

The ratio is the sum of the inference times over the sum of the load times (the time a folder takes); the
median of the per-volume ratios is printed too. The goal (issue "Performance"): at most 1.5. Then, once,
each preprocessing transform and the network are timed on their own, in the same units (share of the load
time), to show what costs.
"""

from __future__ import annotations

import time

import fire
import nibabel as nib
import numpy as np
import torch
from common import inference_parts, machine, median, simulated, verdict, volume_files

from sarf_bundle.data import InferenceDataset, SliceBatch, volume_probabilities

GOAL = 1.5


class _Threads:
    """``with _Threads(n):`` runs torch with ``n`` intra-op threads, then restores the previous number."""

    def __init__(self, n: int) -> None:
        self.n, self.previous = n, torch.get_num_threads()

    def __enter__(self) -> None:
        self.previous = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *args) -> None:
        torch.set_num_threads(self.previous)


def main(
    data: str | None = None,
    config: str = "inference.json",
    model: str | None = None,
    repeats: int = 3,
    preprocessing_threads: int = 1,
    network_threads: int = 1,
    breakdown: bool = True,
) -> None:
    """Measure and print the inference / load ratio.

    Args:
        data: folder of NIfTI volumes; None to simulate 24 clinical-size volumes into ``data/benchmarks/clinical``.
        config: the inference config: ``inference.json`` of ``configs/`` or a path.
        model: checkpoint of the network; None for ``models/model.pt`` if present (else untrained weights).
        repeats: passes over the folder; each volume is timed once per pass and side.
        preprocessing_threads: torch threads of the preprocessing (1, as in the bundle's DataLoader workers).
        network_threads: torch threads of the network (1, so that both sides use one core and the ratio compares
            the work; several threads stall when other jobs share the cores); 0 for torch's default.
        breakdown: also time each preprocessing transform and the network on their own, once per volume.
    """
    files = volume_files(simulated(data, "clinical", subjects=4, folds=2, test_fraction=0.25))
    parser, network, preprocessing = inference_parts(config, model)
    network_threads = network_threads or torch.get_num_threads()
    n_slices, size = parser.get_parsed_content("n_slices"), parser.get_parsed_content("image_size")
    dataset = InferenceDataset([{"image": str(f)} for f in files], preprocessing, placeholder_shape=(n_slices, size, size))
    prepare = SliceBatch()
    device = parser.get_parsed_content("device")
    for f in files:
        f.read_bytes()  # into the page cache, for both sides alike

    def load(i: int) -> None:
        nib.load(files[i]).get_fdata()

    def load_raw(i: int) -> None:
        np.asarray(nib.load(files[i]).dataobj)

    def infer(i: int) -> None:
        with _Threads(preprocessing_threads):
            item = dataset[i]
        if item["status"] != "ok":
            raise RuntimeError(f"{files[i]}: {item['message']}")
        images, _ = prepare({"image": item["image"][None]}, device)
        with _Threads(network_threads), torch.inference_mode():
            volume_probabilities(network(images), n_slices).cpu()

    sides = {"load": load, "load_raw": load_raw, "inference": infer}
    infer(0), load(0), load_raw(0)  # warm-up: imports, network initialisation
    times = {name: np.zeros((repeats, len(files))) for name in sides}
    for r in range(repeats):
        for i in range(len(files)):
            order = list(sides) if (r + i) % 2 == 0 else list(reversed(sides))
            for name in order:
                tick = time.perf_counter()
                sides[name](i)
                times[name][r, i] = time.perf_counter() - tick

    shapes = [nib.load(f).shape for f in files]
    voxels = np.array([np.prod(s) for s in shapes], dtype=float)
    print(
        f"inference vs loading: {len(files)} volumes ({voxels.min() / 1e6:.1f} to {voxels.max() / 1e6:.1f} million voxels, "
        f"median {np.median(voxels) / 1e6:.1f}), {repeats} repeats, torch threads: preprocessing {preprocessing_threads}, "
        f"network {network_threads}; {machine()}"
    )
    load_s, raw_s, infer_s = (times[k].sum() / repeats for k in ("load", "load_raw", "inference"))
    per_volume = np.median(times["inference"] / times["load"], axis=0)
    print(f"  load (nibabel get_fdata)      {load_s:7.2f} s per pass   median {np.median(times['load']) * 1000:7.1f} ms/volume")
    print(f"  load (nibabel dataobj)        {raw_s:7.2f} s per pass   median {np.median(times['load_raw']) * 1000:7.1f} ms/volume")
    print(f"  inference (bundle, 7 slices)  {infer_s:7.2f} s per pass   median {np.median(times['inference']) * 1000:7.1f} ms/volume")
    ratio = infer_s / load_s
    print(f"  median of the per-volume ratios inference / load: {median(list(per_volume)):.2f}")
    print(f"  (information) inference / load with np.asarray(dataobj): {infer_s / raw_s:.2f}")
    print(f"ratio inference / load = {ratio:.2f}   goal <= {GOAL:.2f}   {verdict(ratio, GOAL)}")

    if breakdown:
        costs: dict[str, float] = {}
        for f in files:
            d = {"image": str(f)}
            with _Threads(preprocessing_threads):
                for transform in preprocessing.transforms:
                    tick = time.perf_counter()
                    d = transform(d)
                    costs[type(transform).__name__] = costs.get(type(transform).__name__, 0.0) + time.perf_counter() - tick
            images, _ = prepare({"image": torch.as_tensor(d["image"]).as_subclass(torch.Tensor).float()[None]}, device)
            tick = time.perf_counter()
            with _Threads(network_threads), torch.inference_mode():
                volume_probabilities(network(images), n_slices).cpu()
            costs["network (7 slices)"] = costs.get("network (7 slices)", 0.0) + time.perf_counter() - tick
        print("  breakdown, one pass, as a share of the load time (get_fdata) of the folder:")
        for name, seconds in costs.items():
            print(f"    {name:28s} {seconds:6.2f} s  {seconds / load_s:5.2f}")
        print(f"    {'total':28s} {sum(costs.values()):6.2f} s  {sum(costs.values()) / load_s:5.2f}")


if __name__ == "__main__":
    fire.Fire(main)
