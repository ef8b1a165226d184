"""Dice of each skull-stripping backend against ground truth, per sequence, with seconds per volume.

    python benchmarks/skull_strip_accuracy.py --datalist /work/data/sim80/datalist.json --subjects 3 \\
        --backends hd-bet-v1 deepbet --out docs/results/skull_strip

Ground truth: the simulator's true brain mask of each volume (the ``brain_mask`` of its datalist entry), for the
first ``--subjects`` subjects (0: all) of the datalist's ``--split`` (``testing`` by default), all their sequences; and Colin27 (Debian's
``mricron-data``): the mask of the whole-head ``ch2`` against the non-zero voxels of its stripped ``ch2bet``.
Each backend runs through :class:`sarf_bundle.skullstrip.SkullStripper`, so its masks are cached under
``--cache_dir`` (default ``<out>/cache``; the cache of ``python -m sarf_bundle skullstrip`` works too) and a second
run (or one cut short) computes only what is missing; the seconds are the backend's
own, from the cache note written when the mask was computed. Written: ``<out>/skull_strip_accuracy.csv`` (one
row per backend and volume) and ``<out>/skull_strip_accuracy.json`` (the table printed).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.metrics import compute_dice
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from sarf_bundle.data import load_datalist  # noqa: E402
from sarf_bundle.files import atomic_write_text  # noqa: E402
from sarf_bundle.skullstrip import SkullStripper, mask_note_path  # noqa: E402

COLIN27 = Path("/usr/share/mricron/templates")


def volumes(datalist: str, split: str, subjects: int, colin27: Path) -> list[dict]:
    """``{"name", "sequence", "image", "truth", "acquisition"}`` of the first subjects' volumes (0: all) and of Colin27."""
    entries = load_datalist(datalist, split)
    chosen = list(dict.fromkeys(e["subject"] for e in entries))[: subjects or None]
    items = [
        {"name": Path(e["image"]).name, "sequence": e["sequence"], "image": e["image"], "truth": e["brain_mask"],
         "acquisition": "{kind} {orientation} {field_t} T".format(**e["acquisition"])}
        for e in entries
        if e["subject"] in chosen
    ]
    if (colin27 / "ch2.nii.gz").is_file():
        items.append({"name": "ch2.nii.gz", "sequence": "Colin27 T1", "image": str(colin27 / "ch2.nii.gz"),
                      "truth": str(colin27 / "ch2bet.nii.gz"), "acquisition": "average of 27 T1 scans"})
    else:
        print(f"Colin27 not found in {colin27} (apt-get install mricron-data): left out")
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datalist", required=True, help="a simulated datalist (with brain_mask entries)")
    parser.add_argument("--split", default="testing", help="the datalist's split whose volumes are stripped")
    parser.add_argument("--subjects", type=int, default=3, help="subjects of the split to strip (0: all)")
    parser.add_argument("--cache_dir", type=Path, default=None, help="the mask cache (default: <out>/cache)")
    parser.add_argument("--backends", nargs="+", default=["hd-bet-v1", "deepbet"])
    parser.add_argument("--colin27", type=Path, default=COLIN27, help="folder of ch2.nii.gz and ch2bet.nii.gz")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/skull_strip_accuracy"))
    args = parser.parse_args()

    items = volumes(args.datalist, args.split, args.subjects, args.colin27)
    rows = []
    for backend in args.backends:
        stripper = SkullStripper(backend, args.cache_dir or args.out / "cache", device=args.device)
        for item in tqdm(items, desc=backend, unit="volume"):
            mask_file = stripper(item["image"])
            note = json.loads(mask_note_path(mask_file).read_text())
            mask = torch.as_tensor(np.asarray(nib.load(mask_file).dataobj) > 0)
            truth = torch.as_tensor(np.asarray(nib.load(item["truth"]).dataobj) > 0)
            rows.append({"backend": backend, "sequence": item["sequence"], "volume": item["name"],
                         "acquisition": item["acquisition"], "dice": round(float(compute_dice(mask[None, None], truth[None, None], include_background=True)), 4), "seconds": note["seconds"]})

    table: dict[str, dict[str, dict]] = {}
    for backend in args.backends:
        for sequence in dict.fromkeys(r["sequence"] for r in rows):
            chosen = [r for r in rows if r["backend"] == backend and r["sequence"] == sequence]
            table.setdefault(sequence, {})[backend] = {
                "dice_mean": round(statistics.mean(r["dice"] for r in chosen), 3),
                "dice_min": round(min(r["dice"] for r in chosen), 3),
                "volumes": len(chosen),
            }
    seconds = {b: round(statistics.mean(r["seconds"] for r in rows if r["backend"] == b), 1) for b in args.backends}

    print(f"\nDice against the true brain mask (mean, min over volumes); {machine()}")
    print("| sequence | volumes | " + " | ".join(args.backends) + " |")
    print("|---|---|" + "---|" * len(args.backends))
    for sequence, by_backend in table.items():
        cells = [f"{v['dice_mean']:.3f} (min {v['dice_min']:.3f})" for v in by_backend.values()]
        print(f"| {sequence} | {next(iter(by_backend.values()))['volumes']} | " + " | ".join(cells) + " |")
    print("| seconds per volume | | " + " | ".join(f"{seconds[b]:.1f}" for b in args.backends) + " |")

    args.out.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(args.out / "skull_strip_accuracy.csv", text.getvalue())
    summary = {"datalist": args.datalist, "split": args.split, "subjects": args.subjects, "machine": machine(), "dice": table,
               "seconds_per_volume": seconds}
    atomic_write_text(args.out / "skull_strip_accuracy.json", json.dumps(summary, indent=1))
    print(f"Written: {args.out / 'skull_strip_accuracy.csv'}, {args.out / 'skull_strip_accuracy.json'}")


if __name__ == "__main__":
    main()
