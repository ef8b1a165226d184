"""Fixtures of the skull-stripping tests: a tiny random HD-BET checkpoint, generated heads, Colin27."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

TINY_UNET = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 3,
        "features_per_stage": [4, 8, 16],
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * 3,
        "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
        "n_conv_per_stage": [1, 1, 1],
        "n_conv_per_stage_decoder": [1, 1],
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    },
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}


def _tiny_plans(spacing_mm: float = 6.0, patch: int = 32) -> dict:
    """nnU-Net v2 plans with one ``3d_fullres`` configuration: 3 stages of 4-16 features on a 32^3 patch."""
    resampling = {"order": 3, "order_z": 0, "force_separate_z": None}
    configuration = {
        "data_identifier": "tiny_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 1,
        "patch_size": [patch] * 3,
        "median_image_size_in_voxels": [patch] * 3,
        "spacing": [spacing_mm] * 3,
        "normalization_schemes": ["ZScoreNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, **resampling},
        "resampling_fn_seg_kwargs": {"is_seg": True, **resampling, "order": 1},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, **resampling, "order": 1},
        "architecture": TINY_UNET,
    }
    return {
        "dataset_name": "Dataset999_TinyRandomBrain",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [spacing_mm] * 3,
        "original_median_shape_after_transp": [patch] * 3,
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": configuration},
        "experiment_planner_used": "written by tests/skullstrip/conftest.py",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 1.0, "mean": 0.5, "median": 0.5, "min": 0.0, "percentile_00_5": 0.0, "percentile_99_5": 1.0, "std": 0.2}
        },
    }


def write_tiny_hd_bet_weights(folder: Path, seed: int = 0) -> Path:
    """A randomly initialised nnU-Net model in the layout HD-BET loads: dataset.json, plans.json, fold_all/checkpoint_final.pth."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = _tiny_plans()
    dataset = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "brain": 1}, "numTraining": 1, "file_ending": ".nii.gz"}
    (folder / "fold_all").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    manager = PlansManager(plans)
    torch.manual_seed(seed)
    network = nnUNetTrainer.build_network_architecture(
        manager, manager.get_configuration("3d_fullres"), 1, 2, enable_deep_supervision=False
    )
    checkpoint = {
        "network_weights": network.state_dict(),
        "trainer_name": "nnUNetTrainer",
        "init_args": {"configuration": "3d_fullres"},
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }
    torch.save(checkpoint, folder / "fold_all" / "checkpoint_final.pth")
    return folder


def oblique_affine(spacing: tuple[float, float, float], angle_deg: float = 8.0) -> np.ndarray:
    """Stored as L-I-P (a permuted, flipped axis order), rotated by ``angle_deg`` about the cranio-caudal axis."""
    a = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    axes = np.array([[-1.0, 0, 0], [0, 0, -1.0], [0, -1.0, 0]]).T  # voxel axes point L, I, P
    affine = np.eye(4)
    affine[:3, :3] = rotation @ axes @ np.diag(spacing)
    affine[:3, 3] = [70.0, 80.0, 90.0]
    return affine


def write_head(path: Path, shape: tuple[int, int, int] = (40, 44, 48), spacing=(4.0, 4.5, 4.0), seed: int = 0) -> Path:
    """A whole-head phantom: scalp, dark skull, bright brain, in noise; int16 with a scale factor, oblique axes."""
    grid = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    radius = np.sqrt(sum(g**2 for g in grid))
    rng = np.random.default_rng(seed)
    image = np.select([radius < 0.6, radius < 0.7, radius < 0.85], [300.0, 20.0, 180.0], 0.0) + rng.normal(0, 5, shape)
    nifti = nib.Nifti1Image(np.abs(image).astype(np.float32), oblique_affine(spacing))
    nifti.set_data_dtype(np.int16)
    nib.save(nifti, path)
    return path


@pytest.fixture
def head_file(tmp_path):
    """``head_file(name, seed)``: write a whole-head phantom (:func:`write_head`) into the test's folder."""
    return lambda name, seed=0: write_head(tmp_path / name, seed=seed)


@pytest.fixture(scope="session")
def tiny_hd_bet_weights(tmp_path_factory) -> Path:
    return write_tiny_hd_bet_weights(tmp_path_factory.mktemp("hd_bet_weights"))


@pytest.fixture(scope="session")
def colin27(mricron_templates) -> tuple[Path, Path]:
    """Colin27 whole-head T1 and its skull-stripped brain, from Debian's mricron-data (see ``mricron_templates``)."""
    return mricron_templates / "ch2.nii.gz", mricron_templates / "ch2bet.nii.gz"


def _strip_colin27(backend: str, colin27: tuple[Path, Path], tmp_path_factory) -> tuple[Path, Path]:
    """Colin27's whole head stripped by ``backend`` on CPU into a fresh cache folder: (cache folder, mask file)."""
    from sarf_bundle.skullstrip import SkullStripper

    cache = tmp_path_factory.mktemp("cache")
    return cache, SkullStripper(backend, cache, device="cpu")(colin27[0])


@pytest.fixture(scope="session")
def colin27_deepbet(colin27, tmp_path_factory) -> tuple[Path, Path]:
    """Colin27 stripped once by deepbet: (cache folder, mask file)."""
    return _strip_colin27("deepbet", colin27, tmp_path_factory)


@pytest.fixture(scope="session")
def colin27_hd_bet_v1(colin27, tmp_path_factory) -> tuple[Path, Path]:
    """Colin27 stripped once by HD-BET v1: (cache folder, mask file)."""
    return _strip_colin27("hd-bet-v1", colin27, tmp_path_factory)
