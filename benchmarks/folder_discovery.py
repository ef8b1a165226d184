"""Time and memory to discover the inputs of a folder of 10,000 small files, against a folder of 1,000.

    python benchmarks/folder_discovery.py                        # 1,000 and 10,000 files
    python benchmarks/folder_discovery.py --sizes 1000,30000

Folder inference starts by listing its inputs (:func:`sarf_bundle.data.list_volumes`): NIfTI files by name, DICOM
files by content (every other file's first 132 bytes are read), DICOM headers grouped into series. Each folder here
holds what a scanner export looks like: DICOM series of 16 x 16 single-frame slices (100 slices a series, 9 files
in 10) and small NIfTI volumes and text files (the 10th file), in one subfolder per 1,000 files. Each size is listed
in a fresh process, twice, alternating; the report gives the fastest wall time, the time per file, the peak
resident set size of that process above a process that only imported the bundle, and the numbers of series and
volumes found (checked against what was written).

Two verdicts: the time per file of the largest folder over that of the smallest (goal: at most 1.5, discovery grows
linearly with the folder), and the memory above the baseline per file of the largest folder (goal: at most 8 kB, so
that a million files are listed in 8 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, verdict  # noqa: E402

from sarf_bundle.simulation.dicom_writer import write_dicom_series  # noqa: E402

SLICES_PER_SERIES = 100
ACQUISITION = {"RepetitionTime": 500.0, "EchoTime": 10.0, "FlipAngle": 90.0, "PixelBandwidth": 150.0}  # a T1 spin echo
TIME_GOAL = 1.5
MEMORY_GOAL_KB = 8.0

CHILD = """
import json, resource, sys, time
from sarf_bundle.data import list_volumes
if sys.argv[1] != "-":
    start = time.perf_counter()
    items = list_volumes(sys.argv[1])
    seconds = time.perf_counter() - start
    kinds = [type(i["image"]).__name__ for i in items if "error" not in i]
    print(json.dumps({"seconds": seconds, "series": kinds.count("DicomSeries"), "volumes": kinds.count("str"),
                      "errors": sum("error" in i for i in items)}))
"""


def make_folder(folder: Path, n_files: int) -> dict[str, int]:
    """``n_files`` small files under ``folder``: DICOM series, NIfTI volumes and text; the counts of each input kind."""
    rng = np.random.default_rng(0)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    n_other = n_files // 10
    n_series, last = divmod(n_files - n_other, SLICES_PER_SERIES)
    for s in range(n_series + (last > 0)):
        slices = SLICES_PER_SERIES if s < n_series else last
        sub = folder / f"batch{s * SLICES_PER_SERIES // 900:03d}" / f"series{s:04d}"
        write_dicom_series(rng.integers(0, 1000, (16, 16, slices)).astype(np.uint16), affine, sub, {**ACQUISITION, "SeriesDescription": f"s{s}"},
                           series_number=s + 1)
    volumes = 0
    for i in range(n_other):
        sub = folder / f"batch{i // 100:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        if i % 2:
            (sub / f"notes{i:05d}.txt").write_text("not an input\n")
        else:
            nib.save(nib.Nifti1Image(rng.random((8, 8, 8), dtype=np.float32), affine), str(sub / f"v{i:05d}.nii.gz"))
            volumes += 1
    return {"series": n_series + (last > 0), "volumes": volumes}


def discover(folder: str) -> tuple[dict, float]:
    """The child's report and its peak RSS in MiB."""
    process = subprocess.Popen([sys.executable, "-c", CHILD, folder], stdout=subprocess.PIPE, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise RuntimeError(f"listing {folder} failed (wait status {status})")
    return (json.loads(output) if output.strip() else {}), usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000", help="numbers of files, smallest first")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dir", default=None, help="where to make the folders (default: a temporary folder)")
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    print(machine())
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folders, expected = {}, {}
        for n in sizes:
            start = time.perf_counter()
            folders[n] = Path(tmp) / f"files{n}"
            expected[n] = make_folder(folders[n], n)
            print(f"made {n} files in {time.perf_counter() - start:.0f} s: {expected[n]['series']} DICOM series, {expected[n]['volumes']} NIfTI")
        _, baseline = discover("-")
        best: dict[int, tuple[float, float]] = {}
        for r in range(args.repeats):
            for n in sizes if r % 2 == 0 else reversed(sizes):
                report, peak = discover(str(folders[n]))
                assert report["series"] == expected[n]["series"] and report["volumes"] == expected[n]["volumes"], report
                assert report["errors"] == 0, report
                seconds, mib = best.get(n, (float("inf"), 0.0))
                best[n] = (min(seconds, report["seconds"]), max(mib, peak))
    print(f"baseline process (imports only): {baseline:.0f} MiB")
    for n in sizes:
        seconds, peak = best[n]
        print(f"{n:6d} files: {seconds:6.2f} s ({seconds / n * 1e3:.2f} ms per file), peak {peak:.0f} MiB ({peak - baseline:.1f} MiB above baseline)")
    small, large = sizes[0], sizes[-1]
    time_ratio = (best[large][0] / large) / (best[small][0] / small)
    per_file_kb = (best[large][1] - baseline) * 1024 / large
    print(f"time per file, {large} over {small} files: {time_ratio:.2f}   {verdict(time_ratio, TIME_GOAL)}")
    print(f"memory above the baseline per file, {large} files: {per_file_kb:.2f} kB   {verdict(per_file_kb, MEMORY_GOAL_KB)}")

if __name__ == "__main__":
    main()
