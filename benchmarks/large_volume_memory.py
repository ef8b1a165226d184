"""Peak memory of the inference preprocessing of one large volume, as a multiple of the volume's float32 size.

    python benchmarks/large_volume_memory.py                       # 1024 x 1024 x 400, stored float32 and int16
    python benchmarks/large_volume_memory.py --shape 512,512,200   # quicker

A volume of ``shape`` (an ellipsoid "head" with noise, stored LPS as DICOM converters write it, so that the
orientation to RAS flips two axes) is written once per storage type, uncompressed NIfTI:
``float32`` (the data as it will be classified) and ``int16`` with a ``scl_slope`` (a scanner's usual storage,
half the file size). Each file then goes through the preprocessing of ``configs/inference.json`` (read, checks,
orientation, crop, slice selection, normalisation) in a fresh process, and the kernel's peak resident set size of
that process (``ru_maxrss`` of ``os.wait4``) is reported next to a baseline process that imports the same libraries
and builds the same transforms without reading a volume. The ratio printed is

    (peak - baseline) / (voxels x 4 bytes)

the memory the volume costs in multiples of one float32 copy. Goal (issue "Hostile inputs"): at most 2.0, i.e.
the preprocessing never holds more than the float32 volume and one more full copy at once.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, verdict  # noqa: E402

GOAL = 2.0

CHILD = """
import resource, sys, warnings
warnings.simplefilter("ignore")
from common import bundle_parser
parser = bundle_parser("inference.json", bundle_root=sys.argv[1])
preprocessing = parser.get_parsed_content("preprocessing")
if sys.argv[2] != "-":
    out = preprocessing({"image": sys.argv[2]})
    assert tuple(out["image"].shape)[0] == parser.get_parsed_content("n_slices"), out["image"].shape
"""


def write_volume(path: Path, shape: tuple[int, int, int], storage: str) -> None:
    """A head-like ellipsoid with noise, written slab by slab so that this process never holds the whole volume."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32 if storage == "float32" else np.int16)
    header.set_zooms((0.25, 0.25, 0.5))  # 256 x 256 x 200 mm at the default shape
    affine = np.diag([-0.25, -0.25, 0.5, 1.0])  # LPS, as scanners store it: the RAS orientation flips two axes
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    if storage == "int16":
        header.set_slope_inter(0.05, 0.0)
    grid = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape[:2]]
    r2_plane = grid[0][:, None] ** 2 + grid[1][None, :] ** 2
    rng = np.random.default_rng(0)
    with path.open("wb") as f:
        header.write_to(f)
        f.seek(int(header["vox_offset"]))
        for z in range(shape[2]):
            zz = 2 * z / (shape[2] - 1) - 1
            inside = (r2_plane + zz**2) < 0.8
            plane = np.where(inside, 400.0 - 150.0 * ((r2_plane + zz**2) < 0.5), 0.0).astype(np.float32)
            plane += rng.random(shape[:2], dtype=np.float32) * 20
            stored = plane if storage == "float32" else np.round(plane / 0.05).astype(np.int16)
            f.write(stored.T.tobytes())  # NIfTI is Fortran order: x fastest, plane by plane


def peak_mib(bundle_root: str, path: str) -> float:
    """Peak RSS (MiB) of a fresh process running the inference preprocessing on ``path`` (``-``: none)."""
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD, bundle_root, path], cwd=Path(__file__).resolve().parent, env={**os.environ, "PYTHONWARNINGS": "ignore"}
    )
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise RuntimeError(f"preprocessing of {path} failed (wait status {status})")
    return usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="1024,1024,400", help="volume shape X,Y,Z")
    parser.add_argument("--storage", default="float32,int16", help="storage types to measure")
    parser.add_argument("--dir", default=None, help="folder for the volumes (default: a temporary folder)")
    args = parser.parse_args()
    shape = tuple(int(n) for n in args.shape.split(","))
    bundle_root = str(Path(__file__).resolve().parents[1])
    float32_mib = np.prod(shape) * 4 / 2**20
    print(f"{machine()}\nvolume {' x '.join(map(str, shape))}: {float32_mib:.0f} MiB as float32")
    baseline = peak_mib(bundle_root, "-")
    print(f"baseline process (libraries and transforms, no volume): {baseline:.0f} MiB")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for storage in args.storage.split(","):
            path = Path(tmp) / f"large_{storage}.nii"
            write_volume(path, shape, storage)
            peak = peak_mib(bundle_root, str(path))
            ratio = (peak - baseline) / float32_mib
            print(
                f"stored {storage:7s} ({path.stat().st_size / 2**20:.0f} MiB file): peak {peak:.0f} MiB, "
                f"volume's share {peak - baseline:.0f} MiB = {ratio:.2f} x float32 size   {verdict(ratio, GOAL)}"
            )
            path.unlink()


if __name__ == "__main__":
    main()
