"""Cross-validation report: the paper's Tables 2-5 and Figs. 2, 4 and 5b for any set of methods.

The input of a report is files only: the methods' folders ``RUN_DIR/<method>/``, read by
:mod:`sarf_bundle.crossval_results` (every metric recomputed from the folds' ``predictions.csv``, so all
methods are measured by the same code). Per method and fold: accuracy, ROC AUC and F1 per sequence and their mean
(``ALL``) in both families of :mod:`sarf_bundle.metrics`, then mean ± std over folds; the confusion
matrix normalised per ground-truth class and the reliability diagram, pooled over folds; the top-label
expected calibration error per fold.

``python -m sarf_bundle report RUN_DIR/baseline RUN_DIR/sarf --out report`` (or ``report RUN_DIR``, the
folder of all methods) writes ``report.md``, a self-contained ``report.html`` (figures embedded),
``report.json`` and the PNG figures into ``--out``.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from .crossval_results import MethodRun, find_method_dirs, load_method  # noqa: E402
from .experiments import FOLD_EVALUATIONS  # noqa: E402
from .files import atomic_write_text, save_figure  # noqa: E402
from .metrics import FAMILIES, reliability_bins, summary_value  # noqa: E402

__all__ = ["plot_confusion_matrix", "plot_f1_violins", "plot_reliability", "report", "write_report"]

_DIGITS = {"accuracy": 3, "f1": 3, "auc": 4, "ece": 3}
_LABELS = {"accuracy": "ACC", "auc": "AUC", "f1": "F1"}
_SUMMARY = [
    ("accuracy (argmax)", ("accuracy",)),
    ("mean F1 (argmax)", ("multiclass", "mean", "f1")),
    ("mean AUC", ("multiclass", "mean", "auc")),
    ("mean ACC (OvR at 0.5)", ("ovr_threshold", "mean", "accuracy")),
    ("mean F1 (OvR at 0.5)", ("ovr_threshold", "mean", "f1")),
    ("ECE", ("ece",)),
]


def _over_folds(values: Sequence[float]) -> dict:
    """``{"mean", "std", "n"}`` of per-fold numbers (std with ddof=0), as in :func:`~sarf_bundle.metrics.aggregate_folds`."""
    return {"mean": float(np.mean(values)) if values else math.nan, "std": float(np.std(values)) if values else math.nan, "n": len(values)}


def _format(stats: dict, digits: int) -> str:
    if stats["n"] == 0:
        return "n/a"
    if math.isnan(stats["std"]):
        return f"{stats['mean']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def _slug(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)


def _colours(methods: Sequence[MethodRun]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {m.name: cmap(i % 10) for i, m in enumerate(methods)}


def plot_confusion_matrix(method: MethodRun, path: Path) -> Path:
    """Fig. 2: the confusion matrix of all folds' predictions, normalised per ground-truth class (rows sum to 1)."""
    names = method.class_names
    counts = np.sum([f.metrics["confusion_matrix"] for f in method.folds], axis=0)
    totals = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    fig, ax = plt.subplots(figsize=(6.4, 5.4), layout="constrained")
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            colour = "white" if normalised[i, j] > 0.5 else "black"
            ax.text(j, i, f"{normalised[i, j]:.3f}", ha="center", va="center", fontsize=8, color=colour)
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), [f"{n} ({int(t)})" for n, t in zip(names, totals[:, 0])])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("ground-truth class (volumes)")
    ax.set_title(f"{method.name}: {len(method.folds)} folds pooled, normalised per ground-truth class", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    return save_figure(fig, path, dpi=120, bbox_inches="tight")


def plot_reliability(methods: Sequence[MethodRun], n_bins: int, path: Path) -> Path:
    """Fig. 5b: top-label reliability diagrams of all methods on one plot, each pooled over its folds."""
    colours = _colours(methods)
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(6, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]}, layout="constrained")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    for m in methods:
        bins = reliability_bins(m.probs, m.labels, n_bins)
        used = bins.count > 0
        label = f"{m.name}: ECE {_format(m.summary['ece'], 3)}"
        ax.plot(bins.confidence[used], bins.accuracy[used], "o-", color=colours[m.name], label=label)
        hist.stairs(bins.count / bins.count.sum(), bins.edges, color=colours[m.name])
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"Reliability diagram: top-label confidence, {n_bins} equal-width bins, folds pooled", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    hist.set_xlabel("top-label confidence")
    hist.set_ylabel("fraction of volumes")
    return save_figure(fig, path, dpi=120, bbox_inches="tight")


def plot_f1_violins(methods: Sequence[MethodRun], path: Path) -> Path:
    """Fig. 4: violins of the per-fold F1 per sequence and method, one panel per metric family."""
    colours = _colours(methods)
    rows = [*methods[0].class_names, "mean"]
    width = 0.8 / len(methods)
    size = (max(7, 1.3 * len(rows) * max(1, len(methods) / 3)), 4.2 * len(FAMILIES))
    fig, axes = plt.subplots(len(FAMILIES), 1, figsize=size, squeeze=False, layout="constrained")
    for ax, (family, title) in zip(axes[:, 0], FAMILIES.items()):
        for g, row in enumerate(rows):
            for j, m in enumerate(methods):
                values = np.array(m.summary[family][row]["f1"]["values"])
                x = g - 0.4 + width * (j + 0.5)
                if len(values) > 1 and np.ptp(values) > 0:
                    parts = ax.violinplot([values], positions=[x], widths=width * 0.9, showextrema=False)
                    for body in parts["bodies"]:
                        body.set_facecolor(colours[m.name])
                        body.set_alpha(0.45)
                ax.scatter(np.full(len(values), x), values, s=10, color=colours[m.name], zorder=3)
                ax.hlines(values.mean(), x - width * 0.35, x + width * 0.35, color="black", linewidth=1)
        ax.set_xticks(range(len(rows)), [*rows[:-1], "ALL"])
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("F1 per fold")
        ax.set_title(f"F1, {title} (dots: folds, bar: mean)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    handles = [Patch(color=colours[m.name], label=m.name) for m in methods]
    fig.legend(handles=handles, fontsize=8, ncol=min(len(methods), 6), loc="outside upper center")
    return save_figure(fig, path, dpi=120, bbox_inches="tight")


def _inline_html(text: str) -> str:
    """Escape text and turn Markdown ``code`` and ``**bold**`` spans into HTML."""
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)


def _render(blocks: list[tuple], out: Path) -> tuple[str, str]:
    """The same document as Markdown and as self-contained HTML (figures embedded as PNG data)."""
    md: list[str] = []
    body: list[str] = []
    for kind, *args in blocks:
        if kind == "h":
            level, text = args
            md.append(f"{'#' * level} {text}\n")
            body.append(f"<h{level}>{_inline_html(text)}</h{level}>")
        elif kind == "p":
            md.append(f"{args[0]}\n")
            body.append(f"<p>{_inline_html(args[0])}</p>")
        elif kind == "code":
            md.append(f"```bash\n{args[0]}\n```\n")
            body.append(f"<pre><code>{html.escape(args[0])}</code></pre>")
        elif kind == "list":
            md.append("\n".join(f"- {item}" for item in args[0]) + "\n")
            body.append("<ul>" + "".join(f"<li>{_inline_html(item)}</li>" for item in args[0]) + "</ul>")
        elif kind == "table":
            caption, header, rows = args
            cells = lambda row: "| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |"  # noqa: E731
            md.append(f"{caption}\n\n" + "\n".join([cells(header), "|" + "---|" * len(header), *map(cells, rows)]) + "\n")
            head = "".join(f"<th>{_inline_html(str(c))}</th>" for c in header)
            trs = "".join("<tr>" + "".join(f"<td>{_inline_html(str(c))}</td>" for c in row) + "</tr>" for row in rows)
            body.append(f"<table><caption>{_inline_html(caption)}</caption><tr>{head}</tr>{trs}</table>")
        elif kind == "figure":
            name, caption = args
            md.append(f"![{caption}]({name})\n\n{caption}\n")
            data = base64.b64encode((out / name).read_bytes()).decode()
            image = f'<img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            body.append(f"<figure>{image}<figcaption>{_inline_html(caption)}</figcaption></figure>")
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}caption{text-align:left;padding:4px 0}"
        "img{max-width:100%}pre{background:#f4f4f4;padding:8px;overflow-x:auto}"
    )
    head = f'<head><meta charset="utf-8"><title>SaRF cross-validation report</title><style>{style}</style></head>'
    return "\n".join(md), f"<!DOCTYPE html>\n<html>{head}<body>\n" + "\n".join(body) + "\n</body></html>\n"


def _family_tables(methods: Sequence[MethodRun]) -> list[tuple]:
    """Table 2 (one per family) and Tables 3, 4, 5 in the paper's layouts."""
    names = [m.name for m in methods]
    rows = [*methods[0].class_names, "mean"]
    label = {row: row for row in rows} | {"mean": "ALL"}
    spread = "mean ± std over folds (std with ddof=0); ALL: each fold's mean over the sequences, then mean ± std over folds"
    cell = lambda m, family, row, metric: _format(m.summary[family][row][metric], _DIGITS[metric])  # noqa: E731
    blocks: list[tuple] = [("h", 2, "Table 2: per sequence and method")]
    for letter, (family, title) in zip("ab", FAMILIES.items()):
        table = [
            [label[row] if j == 0 else "", m.name, *(cell(m, family, row, k) for k in ("accuracy", "auc", "f1"))]
            for row in rows
            for j, m in enumerate(methods)
        ]
        caption = f"Table 2{letter}. ACC, AUC and F1, **{title}**: {spread}. AUC is threshold-free, the same in both families."
        blocks.append(("table", caption, ["Sequence", "Method", "ACC", "AUC", "F1"], table))
    for number, metric in (("3", "f1"), ("4", "accuracy")):
        blocks.append(("h", 2, f"Table {number}: {_LABELS[metric]} per sequence and method"))
        for letter, (family, title) in zip("ab", FAMILIES.items()):
            table = [[label[row], *(cell(m, family, row, metric) for m in methods)] for row in rows]
            caption = f"Table {number}{letter}. {_LABELS[metric]}, **{title}**: {spread}."
            blocks.append(("table", caption, ["Sequence", *names], table))
    blocks.append(("h", 2, "Table 5: AUC per sequence and method"))
    table = [[label[row], *(cell(m, "multiclass", row, "auc") for m in methods)] for row in rows]
    caption = f"Table 5. ROC AUC of each class probability, one class against the rest: {spread}."
    blocks.append(("table", caption, ["Sequence", *names], table))
    return blocks


def _overview(methods: Sequence[MethodRun], flags: list[str], command: str, n_bins: int) -> list[tuple]:
    """The command, the runs with their folds and flags, and the summary table."""
    runs = [
        [m.name, f"`{m.root}`", f"{len(m.folds)} ({', '.join(str(f.fold) for f in m.folds)})", ", ".join(str(len(f.files)) for f in m.folds)]
        for m in methods
    ]
    runs = [
        [*row, _format(_over_folds([f.training["seconds"] / 60 for f in m.folds if f.training.get("seconds")]), 1),
         _format(_over_folds([f.training["slices_per_second"] for f in m.folds if f.training.get("slices_per_second")]), 1)]
        for row, m in zip(runs, methods)
    ]
    validation = [name for name in FOLD_EVALUATIONS if name != "test"]
    summary = [
        [m.name, *(_format(_over_folds([f.validation[v] for f in m.folds if v in f.validation]), 3) for v in validation),
         *(_format(summary_value(m.summary, keys), _DIGITS[keys[-1]]) for _, keys in _SUMMARY)]
        for m in methods
    ]
    header = ["Method", "val. accuracy, stripped", "val. accuracy, whole head",
              *(f"test {name}".replace("ECE", f"ECE ({n_bins} bins)") for name, _ in _SUMMARY)]
    return [
        ("h", 1, "SaRF cross-validation report"),
        ("p", "Produced by:"),
        ("code", command),
        ("p", f"Methods: {', '.join(f'`{m.name}`' for m in methods)}. Every number is recomputed from the folds' "
              "`eval/predictions.csv` (volume level: mean of the 7 slice probability vectors, then argmax). Two metric "
              "families, each named where used: **multiclass (argmax)**, the usual definitions from the argmax decision, and "
              "**one-vs-rest at 0.5**, each class decided on its own by probability > 0.5, the definition that the paper's "
              "numbers fit."),
        ("h", 2, "Runs"),
        ("table", "Folds and test volumes per method; training time and training slices per second of wall time (caching and "
                  "validation included), mean ± std over folds.",
         ["Method", "Folder", "Folds used", "Test volumes per fold", "Training (min)", "Slices/s"], runs),
        ("p", "Missing or partial folds and other warnings:"),
        ("list", flags or ["none"]),
        ("h", 2, "Summary"),
        ("table", f"Mean ± std over folds. Validation: each fold's model on its own validation volumes, skull-stripped (the "
                  f"training domain of the paper's protocol) and whole head; test: the held-out test split, whole head. ECE: "
                  f"top-label expected calibration error, {n_bins} equal-width bins.", header, summary),
    ]


def _figures(methods: Sequence[MethodRun], out: Path, n_bins: int) -> list[tuple]:
    """Draw Figs. 2, 4 and 5b into ``out`` and return their report sections."""
    blocks: list[tuple] = [("h", 2, "Fig. 2: confusion matrices")]
    for m in methods:
        path = plot_confusion_matrix(m, out / f"confusion_{_slug(m.name)}.png")
        caption = (
            f"Confusion matrix of `{m.name}`, the predictions of its {len(m.folds)} folds pooled, normalised per ground-truth "
            "class (rows: ground truth, sum to 1; columns: predicted; in brackets: volumes)."
        )
        blocks.append(("figure", path.name, caption))
    plot_f1_violins(methods, out / "f1_violin.png")
    plot_reliability(methods, n_bins, out / "reliability.png")
    return blocks + [
        ("h", 2, "Fig. 4: F1 per fold"),
        ("figure", "f1_violin.png", "Violin plot of the per-fold F1 per sequence and method, multiclass (argmax) above, one-vs-rest "
                                    "at 0.5 below; dots are folds, bars their mean (no violin where the folds agree exactly or there "
                                    "is one fold)."),
        ("h", 2, "Fig. 5b: calibration"),
        ("figure", "reliability.png", f"Reliability diagram: accuracy against mean top-label confidence in {n_bins} equal-width "
                                      "bins (b/n, (b+1)/n], the predictions of all folds pooled; below, the fraction of volumes per "
                                      "bin. The ECE in the legend is the mean ± std over folds of each fold's ECE."),
    ]


def _clean_json(value):
    """NaN to None, recursively, so that ``report.json`` is standard JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_json(v) for v in value]
    return value


def write_report(
    run_dirs: str | Path | Sequence[str | Path], out: str | Path, n_bins: int = 15, command: str | None = None
) -> Path:
    """Write the cross-validation report of one or more methods.

    Writes into ``out``: ``report.md``, ``report.html`` (self-contained), ``report.json`` (every number of
    the tables, per fold and aggregated), ``confusion_<method>.png`` (Fig. 2), ``f1_violin.png`` (Fig. 4)
    and ``reliability.png`` (Fig. 5b).

    Args:
        run_dirs: method folders ``RUN_DIR/<method>`` and/or folders holding several of them.
        out: output folder (created).
        n_bins: equal-width confidence bins of the expected calibration error and the reliability diagram.
        command: the command line to print in the report; by default the ``python -m sarf_bundle report``
            command equivalent to this call.

    Returns:
        The path of ``report.md``.

    Raises:
        FileNotFoundError: if a run directory does not exist or has no fold predictions.
        ValueError: if a predictions CSV is malformed, or the methods disagree on the classes.

    Example:
        >>> write_report(["runs/baseline", "runs/sarf"], "runs/report")  # doctest: +SKIP
    """
    run_dirs = [run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs)
    methods = [load_method(d, n_bins) for d in find_method_dirs(run_dirs)]
    for m in methods[1:]:
        if m.class_names != methods[0].class_names:
            raise ValueError(f"{m.root} has the classes {m.class_names}, {methods[0].root} has {methods[0].class_names}.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if command is None:
        bins = ["--n_bins", str(n_bins)] if n_bins != 15 else []
        command = shlex.join(["python", "-m", "sarf_bundle", "report", *map(str, run_dirs), "--out", str(out), *bins])
    flags = [f"`{m.name}` {flag}" for m in methods for flag in m.flags]
    test_sets = {m.name: frozenset().union(*(f.files for f in m.folds)) for m in methods}
    if len(set(test_sets.values())) > 1:
        sizes = ", ".join(f"{name} {len(files)}" for name, files in test_sets.items())
        flags.append(f"The methods were not tested on the same volumes (distinct test files: {sizes}).")
    blocks = [*_overview(methods, flags, command, n_bins), *_family_tables(methods), *_figures(methods, out, n_bins)]
    markdown, page = _render(blocks, out)
    atomic_write_text(out / "report.md", markdown)
    atomic_write_text(out / "report.html", page)
    data = {
        "command": command,
        "n_bins": n_bins,
        "families": FAMILIES,
        "flags": flags,
        "methods": {
            m.name: {
                "root": str(m.root),
                "folds": {
                    f"fold{f.fold}": {"predictions": str(f.path), **f.metrics, "validation_accuracy": f.validation, "training": f.training}
                    for f in m.folds
                },
                "summary": m.summary,
                "reliability_pooled": reliability_bins(m.probs, m.labels, n_bins).to_dict(),
            }
            for m in methods
        },
    }
    atomic_write_text(out / "report.json", json.dumps(_clean_json(data), indent=1))
    return out / "report.md"


def report(*run_dirs: str, out: str = "report", n_bins: int = 15) -> str:
    """Report any set of cross-validated methods: the paper's Tables 2-5 and Figs. 2, 4, 5b, as Markdown and HTML.

    ``python -m sarf_bundle report RUN_DIR/baseline RUN_DIR/sarf --out report`` reads
    ``<method>/fold<k>/eval/predictions.csv`` and writes ``report.md``, ``report.html``, ``report.json`` and
    the figures (see :func:`write_report`).

    Args:
        run_dirs: method folders ``RUN_DIR/<method>`` and/or folders holding several of them.
        out: output folder.
        n_bins: equal-width bins of the expected calibration error and the reliability diagram.

    Returns:
        The path of ``report.md``.
    """
    command = "python -m sarf_bundle " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["report"] else None
    return str(write_report([str(d) for d in run_dirs], out, n_bins, command))
