"""The alpha x beta sweep: shards that partition the grid, job commands, a tiny real sweep and its heat maps."""

from __future__ import annotations

import csv
import json
import shlex

import pytest

import sarf_bundle.experiments as experiments
from sarf_bundle.cli import main
from sarf_bundle.experiments import HEATMAP_METRICS
from sarf_bundle.sweep import PAPER_GRID, shard_jobs, sweep, sweep_heatmaps, sweep_jobs

TINY = ["--epochs", "1", "--image_size", "32", "--batch_size", "4", "--num_workers", "0"]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 64, 100])
def test_shards_partition_the_paper_grid(n):
    jobs = sweep_jobs()
    assert len(jobs) == 64 and jobs[0] == (0.0, 0.0) and jobs[-1] == (20.0, 20.0)
    shards = [shard_jobs(jobs, f"{i}/{n}") for i in range(n)]
    assert sorted(job for shard in shards for job in shard) == sorted(jobs)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


@pytest.mark.parametrize("shard", ["2/2", "-1/2", "1", "a/b", "0/0"])
def test_bad_shard_raises(shard):
    with pytest.raises(ValueError, match=f"shard must be 'i/n'.*got '{shard}'"):
        shard_jobs(sweep_jobs(), shard)


def test_grid_values_from_the_command_line():
    assert sweep_jobs("0,5", 0.5) == [(0.0, 0.5), (5.0, 0.5)]
    assert sweep_jobs((20, 0.2), [1]) == [(0.2, 1.0), (20.0, 1.0)]
    with pytest.raises(ValueError, match="alphas must be non-negative numbers"):
        sweep_jobs("-1,2")
    assert PAPER_GRID == (0.0, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0)


def test_sweep_rejects_alpha_override_and_missing_datalist(tmp_path):
    with pytest.raises(ValueError, match="--alpha cannot be overridden in a sweep"):
        sweep(tmp_path / "datalist.json", out=tmp_path, alpha=1.0)
    with pytest.raises(ValueError, match="sweep needs --datalist"):
        sweep(out=tmp_path)
    with pytest.raises(ValueError, match="--learning_rat is not a key of configs/train.json"):
        sweep(tmp_path / "datalist.json", out=tmp_path, list=True, learning_rat=1e-4)


def test_listed_jobs_run_and_give_heat_maps(simulated_dataset, tmp_path, capsys, monkeypatch):
    """A 2 x 1 sweep, one fold per job: list the shards' commands, run each, then draw the heat maps."""
    common = ["--datalist", str(simulated_dataset), "--out", str(tmp_path), "--alphas", "0,5", "--betas", "0.5", "--folds", "1"]
    listed = []
    for shard in ("0/2", "1/2"):
        main(["sweep", *common, "--shard", shard, "--list", *TINY])
        listed.append(capsys.readouterr().out.strip().splitlines())
    assert [len(commands) for commands in listed] == [1, 1]
    calls, run_bundle = [], experiments.run_bundle
    monkeypatch.setattr(experiments, "run_bundle", lambda *args, **kwargs: calls.append(kwargs) or run_bundle(*args, **kwargs))
    for (command,) in listed:
        words = shlex.split(command)
        assert words[:4] == ["python", "-m", "sarf_bundle", "sweep"] and "--epochs" in words
        main(words[3:])
    capsys.readouterr()
    assert sorted((c["alpha"], c["beta"]) for c in calls) == [(0.0, 0.5)] * 4 + [(5.0, 0.5)] * 4  # training, 3 evaluations
    folder = tmp_path / "sweep"
    for job in ("a0_b0.5", "a5_b0.5"):
        assert json.loads((folder / job / "crossval.json").read_text())["folds"] == [0]
    table = sweep_heatmaps(tmp_path, alphas="0,5", betas="0.5,1")
    with open(table) as f:
        rows = list(csv.DictReader(f))
    assert [(r["alpha"], r["beta"], r["folds"]) for r in rows] == [("0", "0.5", "1"), ("0", "1", ""), ("5", "0.5", "1"), ("5", "1", "")]
    result = json.loads((folder / "a5_b0.5" / "crossval.json").read_text())
    assert float(rows[2]["mean_f1_mean"]) == pytest.approx(result["metrics"]["multiclass"]["mean"]["f1"]["mean"], abs=1e-6)
    assert rows[1]["mean_f1_mean"] == ""
    for key in HEATMAP_METRICS:
        png = folder / f"heatmap_{key}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
