"""Peak memory of folder inference over 100 volumes versus over 10: it must not grow with the number of volumes.

    python benchmarks/inference_memory.py                      # 10 and 100 volumes
    python benchmarks/inference_memory.py --sizes 10,100,300 --repeats 2

Each folder size runs the bundle's whole folder inference, exactly as a user starts it, in its own process:
``python -m monai.bundle run --config_file configs/inference.json --dataset_dir <folder> --output_dir <tmp>``
(DataLoader with the config's worker processes, network, ``PredictionWriter`` rewriting the CSV after every
batch). The folders hold symbolic links, under distinct names, to simulated clinical-size volumes of
``data/benchmarks/clinical`` (24 files, made by ``inference_vs_loading.py`` or here). A DataLoader worker takes
every ``num_workers``-th batch, so every folder cycles over the same ``batch_size * num_workers`` volumes (8 with
the config's 4 and 2: the 8 largest files, dealt to the workers in turn): at every size each worker sees the same
distinct volumes, and only their number differs (a folder of 100 holds each of the 8 files 12 or 13 times). The
bundle does not know: each file is read and classified anew.

Three peaks are measured per run:

- **largest process**: the kernel's peak resident set size of the bundle process or of any one of its
  DataLoader workers (``ru_maxrss`` of ``os.wait4``), exact;
- **sum of the processes' peaks**: the peak resident set sizes (``VmHWM``) of the bundle process and of each
  worker, read from ``/proc`` every 0.1 s, added up: a bound on the memory the run needs that does not depend
  on when the workers happen to hold their largest volumes at the same time (pages shared after ``fork`` count
  in every process that shares them);
- for information, the peak over those samples of the summed proportional set size (PSS, shared pages divided
  among the processes), which does depend on such coincidences.

The ratio is the peak at the largest size over the peak at the smallest; the goal (issue "Performance"):
memory does not grow with the number of volumes, taken here as a ratio of at most 1.10 for both the largest
process and the sum of the processes' peaks.
Sizes alternate between repeats (10, 100, then 100, 10, ...); the printed peak of a size is its largest.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fire
import torch
from common import (
    BUNDLE_ROOT,
    CONFIG_DIR,
    bundle_parser,
    machine,
    simulated,
    verdict,
    volume_files,
)

GOAL = 1.10


def _children(root: int) -> list[int]:
    """``root`` and all its descendants, from ``/proc``."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def _memory_kib(pid: int) -> tuple[int, int]:
    """``(peak RSS, current PSS)`` of a process in KiB from ``/proc`` (``(0, 0)`` if it has ended)."""
    try:
        hwm = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM:"))
        pss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines() if line.startswith("Pss:"))
    except (OSError, StopIteration):
        return 0, 0
    return hwm, pss


def run_folder(folder: Path, output_dir: Path, ckpt_dir: Path, config: Path, overrides: dict) -> dict:
    """Run the bundle's folder inference on ``folder`` in a new process; its peaks, wall time and CSV rows."""
    command = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(config), "--dataset_dir", str(folder), "--output_dir", str(output_dir), "--ckpt_dir", str(ckpt_dir),
    ]  # fmt: skip
    for key, value in overrides.items():
        command += [f"--{key}", str(value)]
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "run.log", "w") as log:
        tick = time.perf_counter()
        process = subprocess.Popen(command, cwd=BUNDLE_ROOT, stdout=log, stderr=subprocess.STDOUT)
        peak_pss, peaks = 0, {}
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)  # usage: the process and its reaped workers
            if pid:
                break
            memory = {child: _memory_kib(child) for child in _children(process.pid)}
            peaks.update({child: max(peaks.get(child, 0), hwm) for child, (hwm, _) in memory.items()})
            peak_pss = max(peak_pss, sum(pss for _, pss in memory.values()))
            time.sleep(0.1)
        wall = time.perf_counter() - tick
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"folder inference failed ({process.returncode}):\n{(output_dir / 'run.log').read_text()[-3000:]}")
    with open(output_dir / "sequence_predictions.csv", newline="") as table:
        statuses = [row["status"] for row in csv.DictReader(table)]
    return {
        "max_rss_mib": usage.ru_maxrss / 1024,
        "sum_of_peaks_mib": sum(peaks.values()) / 1024,
        "processes": len(peaks),
        "peak_pss_mib": peak_pss / 1024,
        "wall_s": wall,
        "rows": len(statuses),
        "ok": sum(s != "error" for s in statuses),
    }


def main(
    data: str | None = None,
    sizes: tuple[int, ...] | str = (10, 100),
    repeats: int = 1,
    config: str = "inference.json",
    model: str | None = None,
    work_dir: str | None = None,
    **overrides,
) -> None:
    """Measure and print the peak-memory ratio of folder inference at the largest over the smallest size.

    Args:
        data: folder of source volumes; None to simulate 24 clinical-size volumes into ``data/benchmarks/clinical``.
        sizes: numbers of volumes per folder, e.g. ``10,100``.
        repeats: runs per size, alternating the order of the sizes.
        config: the inference config: ``inference.json`` of ``configs/`` or a path.
        model: checkpoint of the network; None for ``models/model.pt`` if present (else untrained weights).
        work_dir: where the folders of links, checkpoint and outputs go; None for a temporary folder (removed).
        **overrides: config keys for the bundle run, e.g. ``--num_workers 0`` or ``--batch_size 8``.
    """
    if overrides.keys() & {"help", "h"}:  # fire hands --help to **overrides: show the usage instead of running
        print(__doc__)
        return
    sizes = sorted(int(s) for s in (sizes.split(",") if isinstance(sizes, str) else sizes))
    sources = volume_files(simulated(data, "clinical", subjects=4, folds=2, test_fraction=0.25))
    config_path = CONFIG_DIR / config if (CONFIG_DIR / config).is_file() else Path(config).resolve()
    with tempfile.TemporaryDirectory(prefix="sarf_memory_") as scratch:
        root = Path(work_dir or scratch)
        ckpt_dir = root / "models"
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        model = model or (BUNDLE_ROOT / "models" / "model.pt" if (BUNDLE_ROOT / "models" / "model.pt").is_file() else None)
        if model is not None:
            shutil.copyfile(model, ckpt_dir / "model.pt")
        else:
            torch.save(bundle_parser(str(config_path)).get_parsed_content("network_def").state_dict(), ckpt_dir / "model.pt")
        # The same distinct volumes at every size, and the same ones in each DataLoader worker: a worker takes every
        # num_workers-th batch, so a cycle of batch_size * num_workers volumes gives each worker the same volumes
        # at every size. The cycle holds the largest sources, dealt to the workers in turn (largest first).
        parsed = bundle_parser(str(config_path), **overrides)
        batch_size, workers = parsed.get_parsed_content("batch_size"), max(1, parsed.get_parsed_content("num_workers"))
        largest = sorted(sources, key=lambda f: f.stat().st_size, reverse=True)[: batch_size * workers]
        chosen = [largest[rank] for w in range(workers) for rank in range(w, len(largest), workers)]
        folders = {}
        for n in sizes:
            folders[n] = root / f"volumes_{n}"
            folders[n].mkdir(exist_ok=True)
            for i in range(n):
                source = chosen[i % len(chosen)]
                link = folders[n] / f"v{i:04d}_{source.name}"
                if not link.exists():
                    link.symlink_to(source)
        results: dict[int, list[dict]] = {n: [] for n in sizes}
        for r in range(repeats):
            for n in sizes if r % 2 == 0 else reversed(sizes):
                output_dir = root / f"out_{n}_{r}"
                shutil.rmtree(output_dir, ignore_errors=True)
                results[n].append(run_folder(folders[n], output_dir, ckpt_dir, config_path, overrides))

    print(
        f"folder inference memory: sizes {sizes}, {repeats} run(s) each, {len(chosen)} distinct volumes "
        f"({', '.join(f.name for f in chosen)}), config {config_path.name} {overrides or ''}; {machine()}"
    )
    peaks = {}
    for n in sizes:
        rss, total, pss = (max(x[k] for x in results[n]) for k in ("max_rss_mib", "sum_of_peaks_mib", "peak_pss_mib"))
        peaks[n] = (rss, total, pss)
        last = results[n][-1]
        print(
            f"  {n:4d} volumes: peak RSS of the largest process {rss:6.0f} MiB, sum of the {last['processes']} processes' peaks "
            f"{total:6.0f} MiB, peak PSS of all at once {pss:6.0f} MiB, wall {min(x['wall_s'] for x in results[n]):6.1f} s, "
            f"CSV rows {last['rows']} ({last['ok']} classified)"
        )
    small, large = sizes[0], sizes[-1]
    ratios = [peaks[large][k] / peaks[small][k] for k in range(3)]
    print(
        f"  ratio {large} / {small} volumes: largest process {ratios[0]:.3f}, sum of the processes' peaks {ratios[1]:.3f}, "
        f"(information) PSS of all at once {ratios[2]:.3f}"
    )
    worst = max(ratios[:2])
    print(f"ratio peak memory {large} / {small} volumes = {worst:.3f}   goal <= {GOAL:.2f}   {verdict(worst, GOAL)}")


if __name__ == "__main__":
    fire.Fire(main)
