"""The paper's alpha x beta sweep (section 3.4, Figs. 5c and 6): a grid of cross-validations, in shards.

You, Wiest, Reyes, "SaRF: Saliency regularized feature learning improves MRI sequence
classification", CMPB 2023, section 3.4.

Each job is :func:`sarf_bundle.experiments.run_crossval` of SaRF with one ``(alpha, beta)``; shard ``i/n``
runs every ``n``-th job, so that separate processes, GPUs or machines split the grid; :func:`sweep_heatmaps`
draws the heat maps of the finished jobs.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .experiments import (  # noqa: E402
    HEATMAP_METRICS,
    METHODS,
    SUMMARY_FILE,
    check_config_keys,
    run_crossval,
    with_default_cache,
)
from .files import atomic_write_text, save_figure  # noqa: E402
from .metrics import summary_value  # noqa: E402

__all__ = ["PAPER_GRID", "shard_jobs", "sweep", "sweep_heatmaps", "sweep_jobs"]

PAPER_GRID: tuple[float, ...] = (0.0, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0)
"""The values of alpha and of beta in the paper's sweep (section 3.4, Figs. 5c and 6)."""


def sweep_jobs(alphas: Sequence[float] = PAPER_GRID, betas: Sequence[float] = PAPER_GRID) -> list[tuple[float, float]]:
    """All ``(alpha, beta)`` pairs of the grid, alpha varying slowest."""
    return list(itertools.product(_values(alphas, "alphas"), _values(betas, "betas")))


def shard_jobs(jobs: Sequence[Any], shard: str) -> list[Any]:
    """The jobs of shard ``i`` of ``n`` (``shard="i/n"``, ``0 <= i < n``): every ``n``-th job from the ``i``-th.

    The ``n`` shards partition the jobs: each job is in exactly one of them, and their sizes differ by
    at most one.

    Raises:
        ValueError: when ``shard`` is not ``"i/n"`` with ``0 <= i < n``.
    """
    try:
        index, count = (int(part) for part in str(shard).split("/"))
    except ValueError:
        raise ValueError(f"shard must be 'i/n' with integers 0 <= i < n, e.g. '0/4', got {shard!r}.") from None
    if not 0 <= index < count:
        raise ValueError(f"shard must be 'i/n' with 0 <= i < n, e.g. '0/4', got {shard!r}.")
    return list(jobs[index::count])


def sweep(
    datalist: str | os.PathLike | None = None,
    out: str | os.PathLike = "runs",
    alphas: Sequence[float] | float | str = PAPER_GRID,
    betas: Sequence[float] | float | str = PAPER_GRID,
    shard: str = "0/1",
    folds: int | Sequence[int] | None = None,
    list: bool = False,  # noqa: A002 -- the command line's `--list`
    heatmaps: bool = False,
    **overrides: Any,
) -> str:
    """The paper's alpha x beta sweep (section 3.4; Figs. 5c and 6): run jobs, list them, or draw heat maps.

    Every job is the cross-validation (:func:`run_crossval`) of SaRF (:data:`METHODS` ``["sarf"]``) with
    one ``(alpha, beta)``, in ``<out>/sweep/a<alpha>_b<beta>/`` (e.g. ``a0.2_b5``), resumable fold by
    fold. Shard ``i/n`` runs every ``n``-th job from the ``i``-th, so ``n`` processes with the same
    arguments and ``--shard 0/n`` ... ``--shard n-1/n`` split the grid exactly; pick each one's GPU with
    ``CUDA_VISIBLE_DEVICES``. A shard draws the heat maps of what is finished when it ends.

    Args:
        datalist: the datalist JSON (not needed with ``heatmaps``).
        out: the folder of all runs; the sweep goes to ``<out>/sweep/``.
        alphas: the alpha values (a list, or a comma-separated string); default the paper's 8 values 0-20.
        betas: the beta values, likewise.
        shard: ``"i/n"``: run (or list) only shard ``i`` of ``n``.
        folds: as in :func:`sarf_bundle.experiments.crossval`.
        list: print the shard's jobs as commands, one per line, instead of running them.
        heatmaps: only draw the heat maps and the table of the finished jobs.
        **overrides: other keys of ``configs/train.json`` for every job, e.g. ``epochs=20``.

    Returns:
        The commands (with ``list``), else the path of the sweep's ``sweep.csv``.

    Raises:
        ValueError: when ``datalist`` is missing, an override sets alpha or beta, or ``shard`` is malformed.

    Example:
        ``python -m sarf_bundle sweep --datalist data/sim/datalist.json --out runs --shard 0/2 --epochs 50``
    """
    jobs = sweep_jobs(alphas, betas)
    out = Path(out).resolve()
    if heatmaps:
        return str(sweep_heatmaps(out, alphas, betas))
    if datalist is None:
        raise ValueError("sweep needs --datalist (only --heatmaps works without it).")
    fixed = sorted(set(overrides) & {"alpha", "beta"})
    if fixed:
        raise ValueError(f"--{fixed[0]} cannot be overridden in a sweep: give the grid with --alphas and --betas.")
    datalist = Path(datalist).resolve()
    mine = shard_jobs(jobs, shard)
    check_config_keys(overrides)
    if list:
        return "\n".join(_job_command(datalist, out, alpha, beta, folds, overrides) for alpha, beta in mine)
    common = with_default_cache(overrides)
    for position, (alpha, beta) in enumerate(mine, start=1):
        print(f"[sweep] job {position} of {len(mine)} in shard {shard}: alpha={alpha:g}, beta={beta:g}", flush=True)
        settings = {**METHODS["sarf"], **common, "alpha": alpha, "beta": beta}
        run_crossval(datalist, _job_dir(out, alpha, beta), settings, folds, name=f"sweep a={alpha:g} b={beta:g}")
    return str(sweep_heatmaps(out, alphas, betas))


def sweep_heatmaps(
    out: str | os.PathLike, alphas: Sequence[float] | float | str = PAPER_GRID, betas: Sequence[float] | float | str = PAPER_GRID
) -> Path:
    """Heat maps (PNG) and a table (CSV) of the finished sweep jobs: the paper's Fig. 5c (F1) and Fig. 6 (ACC, AUC).

    Reads ``<out>/sweep/a<alpha>_b<beta>/crossval.json`` for every pair of the grid and writes, into
    ``<out>/sweep/``, ``heatmap_<metric>.png`` for each of :data:`HEATMAP_METRICS` (rows alpha, columns
    beta, each cell the mean over folds, printed; a job not finished is a blank cell) and ``sweep.csv``
    (one row per pair: the number of folds and the mean and std of each metric, empty when not finished).

    Args:
        out: the folder of all runs (as given to :func:`sweep`).
        alphas: the alpha values of the grid.
        betas: the beta values of the grid.

    Returns:
        The path of ``sweep.csv``.
    """
    alphas, betas = _values(alphas, "alphas"), _values(betas, "betas")
    folder = Path(out) / "sweep"
    grids = {key: np.full((len(alphas), len(betas), 2), np.nan) for key in HEATMAP_METRICS}
    rows = [",".join(["alpha", "beta", "folds", *(f"{key}_{stat}" for key in HEATMAP_METRICS for stat in ("mean", "std"))])]
    for (i, alpha), (j, beta) in itertools.product(enumerate(alphas), enumerate(betas)):
        summary = _finished_job(_job_dir(folder.parent, alpha, beta))
        cells = [f"{alpha:g}", f"{beta:g}", str(len(summary["folds"])) if summary else ""]
        for key, (path, _) in HEATMAP_METRICS.items():
            if summary:
                stats = summary_value(summary["metrics"], path)
                grids[key][i, j] = stats["mean"], stats["std"]
            cells += ["" if math.isnan(v) else f"{v:.6f}" for v in grids[key][i, j]]
        rows.append(",".join(cells))
    folder.mkdir(parents=True, exist_ok=True)
    for key, (_, title) in HEATMAP_METRICS.items():
        _draw_heatmap(grids[key][..., 0], alphas, betas, title, folder / f"heatmap_{key}.png")
    table = folder / "sweep.csv"
    atomic_write_text(table, "\n".join(rows) + "\n")
    return table


def _values(values: Sequence[float] | float | str, name: str) -> list[float]:
    """Grid values from a list, a number or a comma-separated string; sorted, without repeats."""
    if isinstance(values, str):
        values = [v for v in values.split(",") if v.strip()]
    elif not isinstance(values, (Sequence, np.ndarray)):
        values = [values]
    try:
        result = sorted({float(v) for v in values})
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numbers, e.g. '0,0.5,5', got {values!r}.") from None
    if not result or min(result) < 0:
        raise ValueError(f"{name} must be non-negative numbers, e.g. '0,0.5,5', got {values!r}.")
    return result


def _job_dir(out: Path, alpha: float, beta: float) -> Path:
    return out / "sweep" / f"a{alpha:g}_b{beta:g}"


def _job_command(datalist: Path, out: Path, alpha: float, beta: float, folds: int | Sequence[int] | None, overrides: dict[str, Any]) -> str:
    """The command that runs one sweep job alone (a sweep over a 1 x 1 grid)."""
    words = ["python", "-m", "sarf_bundle", "sweep", "--datalist", str(datalist), "--out", str(out), "--alphas", f"{alpha:g}", "--betas", f"{beta:g}"]
    if folds is not None:
        words += ["--folds", _cli_value(folds)]
    for key, value in overrides.items():
        words += [f"--{key}", _cli_value(value)]
    return shlex.join(words)


def _cli_value(value: Any) -> str:
    """A value as the command line (``fire``) reads it back: strings as they are, other values as Python literals."""
    if isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, str):
        return repr(list(value))
    return value if isinstance(value, str) else repr(value)


def _finished_job(job_dir: Path) -> dict | None:
    path = job_dir / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _draw_heatmap(values: np.ndarray, alphas: Sequence[float], betas: Sequence[float], title: str, path: Path) -> None:
    """One annotated heat map, rows alpha and columns beta; NaN cells are left blank."""
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(betas), 0.8 + 0.6 * len(alphas)))
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("white")
    finite = values[np.isfinite(values)]
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=low, vmax=high if high > low else low + 1e-6, origin="lower")
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            shade = (v - low) / (high - low) if high > low else 0.5
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=8, color="black" if shade > 0.6 else "white")
    ax.set_xticks(range(len(betas)), [f"{b:g}" for b in betas])
    ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_xlabel("beta (saliency-feature consistency)")
    ax.set_ylabel("alpha (saliency distinctiveness)")
    ax.set_title(f"{title}\nmean over folds; blank: not run", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
