"""Multi-process training and sharded inference with torchrun on CPU (gloo), through the bundle's configs."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sarf_bundle import SEQUENCES
from sarf_bundle.bundle import BUNDLE_ROOT, run_bundle, save_checkpoint
from sarf_bundle.handlers import read_prediction_csv
from sarf_bundle.networks import SaliencyResNet

CONFIGS = BUNDLE_ROOT / "configs"
SMALL = ["--image_size", "32", "--batch_size", "2", "--num_workers", "0"]


def torchrun(configs: list[str], *args: str, timeout: int = 600) -> str:
    """Run ``python -m monai.bundle run`` on 2 CPU processes; return the combined output, failing with it."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", "--meta_file", str(CONFIGS / "metadata.json"),
        "--config_file", str(configs), "--logging_file", str(CONFIGS / "logging.conf"), *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=BUNDLE_ROOT)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    return output


def test_two_process_training_saves_one_consistent_model(simulated_dataset, tmp_path):
    root = tmp_path / "bundle"
    # as the last step of each rank, keep its own copy of the weights to compare the ranks
    keep_ranks = tmp_path / "keep_ranks.json"
    keep_ranks.write_text(json.dumps({"finalize": [
        "$torch.save(@network_def.state_dict(), @ckpt_dir + f'/rank{dist.get_rank()}.pt')",
        "$dist.is_initialized() and dist.destroy_process_group()",
    ]}))  # fmt: skip
    configs = [str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json"), str(keep_ranks)]
    output = torchrun(configs, "--bundle_root", str(root), "--dataset_dir", str(simulated_dataset.parent), "--epochs", "1", *SMALL)

    models = root / "models"
    assert sorted(p.name for p in models.glob("*.pt")) == ["latest_checkpoint_epoch=1.pt", "model.pt", "rank0.pt", "rank1.pt"]
    assert output.count("train_total") == 1 and output.count("val_accuracy") == 1  # only rank 0 logs
    best = torch.load(models / "model.pt", weights_only=True)["model"]
    latest = torch.load(models / "latest_checkpoint_epoch=1.pt", weights_only=True)
    assert set(latest) == {"model", "optimizer", "lr_scheduler", "trainer", "best", "preprocessing"}
    ranks = [torch.load(models / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    net = SaliencyResNet()
    net.load_state_dict(best)  # plain keys, no DistributedDataParallel "module." prefix
    for name, _ in net.named_parameters():
        assert torch.equal(ranks[0][name], ranks[1][name]), name  # gradients were averaged: one model
        assert torch.equal(latest["model"][name], ranks[0][name]), name
        assert torch.equal(best[name], ranks[0][name]), name  # one epoch: the best is the last


@pytest.fixture(scope="module")
def volume_folder(simulated_dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("volumes")
    for path in sorted(simulated_dataset.parent.glob("*_T*.nii.gz"))[:5]:
        if "_brainmask" not in path.name:
            shutil.copy(path, folder / path.name)
    (folder / "corrupt.nii.gz").write_bytes(b"\x1f\x8b not a volume")
    return folder


def classified_now(output: str) -> list[int]:
    """The count of inputs each rank classified, from the summary line each rank that ran logs."""
    return [int(n) for n in re.findall(r"\d+ inputs \((\d+) classified now", output)]


def test_sharded_inference_writes_every_volume_once(volume_folder, tmp_path):
    root = tmp_path / "bundle"
    (root / "models").mkdir(parents=True)
    torch.manual_seed(0)
    save_checkpoint(SaliencyResNet(), root / "models" / "model.pt", image_size=32)
    files = sorted(str(p) for p in volume_folder.iterdir())
    args = ["--bundle_root", str(root), "--dataset_dir", str(volume_folder), "--image_size", "32", "--batch_size", "2", "--num_workers", "0"]
    configs = [str(CONFIGS / "inference.json"), str(CONFIGS / "multi_gpu_inference.json")]
    output = torchrun(configs, *args)
    assert sorted(classified_now(output)) == sorted([len(files[0::2]), len(files[1::2])]), output[-6000:]  # each rank its half

    output_csv = root / "eval" / "sequence_predictions.csv"
    rows = read_prediction_csv(output_csv)
    assert [r["file"] for r in rows] == files  # every volume exactly once, in one CSV, sorted
    assert not list(output_csv.parent.glob("*.rank*.csv"))  # the parts were merged and removed
    for row in rows:
        if row["file"].endswith("corrupt.nii.gz"):
            assert row["status"] == "error" and row["sequence"] == "" and not any(row[f"p_{c}"] for c in SEQUENCES)
            assert row["message"].startswith("ImageFileError: Cannot work out file type of"), row
        else:  # every real volume is classified
            assert row["status"] in ("ok", "uncertain"), row
            probs = [float(row[f"p_{c}"]) for c in SEQUENCES]
            assert abs(sum(probs) - 1) < 1e-4 and row["sequence"] == SEQUENCES[probs.index(max(probs))], row

    single = tmp_path / "single.csv"
    run_bundle("run", ["inference.json"], bundle_root=str(root), dataset_dir=str(volume_folder), output_csv=str(single), image_size=32, num_workers=0)
    expected = {r["file"]: r for r in read_prediction_csv(single)}
    assert sorted(expected) == files
    for row in rows:
        assert row["status"] == expected[row["file"]]["status"] and row["sequence"] == expected[row["file"]]["sequence"]
        assert row["message"] == expected[row["file"]]["message"]
        for c in SEQUENCES:
            assert (row[f"p_{c}"] == "") == (expected[row["file"]][f"p_{c}"] == "")
            if row[f"p_{c}"]:
                assert float(row[f"p_{c}"]) == pytest.approx(float(expected[row["file"]][f"p_{c}"]), abs=1e-5)

    before = output_csv.read_bytes()
    output = torchrun(configs, *args)  # a rerun finds every file done: both shards are empty, the CSV stays
    assert classified_now(output) == [] and output_csv.read_bytes() == before
    # Without one row (an interrupted run), a rerun classifies that input alone and keeps every other row as it was.
    lines = before.decode().splitlines(keepends=True)
    target = next(r for r in rows if r["status"] != "error")
    dropped = next(i for i, line in enumerate(lines) if line.startswith(target["file"] + ","))
    output_csv.write_bytes("".join(lines[:dropped] + lines[dropped + 1 :]).encode())
    output = torchrun(configs, *args)
    assert classified_now(output) == [1], output[-6000:]
    after = output_csv.read_bytes().decode().splitlines(keepends=True)
    assert after[:dropped] + after[dropped + 1 :] == lines[:dropped] + lines[dropped + 1 :]
    (again,) = csv.DictReader([lines[0], after[dropped]])
    assert again["file"] == target["file"] and again["status"] == target["status"]
    for c in SEQUENCES:
        assert float(again[f"p_{c}"]) == pytest.approx(float(target[f"p_{c}"]), abs=1e-5)


def test_merge_keeps_rows_of_earlier_runs(tmp_path):
    from sarf_bundle.handlers import merge_shards, predicted_files, shard_csv

    output_csv = tmp_path / "predictions.csv"
    header = "file,sequence,status\n"
    output_csv.write_text(header + "b.nii.gz,T1,ok\n")
    shard_csv(output_csv, 0).write_text(header + "c.nii.gz,T2,ok\n")
    shard_csv(output_csv, 1).write_text(header + "a.nii.gz,,error\n")
    assert sorted(predicted_files(output_csv)) == ["a.nii.gz", "b.nii.gz", "c.nii.gz"]
    merge_shards(output_csv)
    assert output_csv.read_text() == header + "a.nii.gz,,error\nb.nii.gz,T1,ok\nc.nii.gz,T2,ok\n"
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.csv"]
    assert Path(merge_shards(tmp_path / "none.csv")).exists() is False  # nothing to merge: nothing written
