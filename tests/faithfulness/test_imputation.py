"""ROAD's noisy linear imputation and MoRF order: against Quantus, hand-checkable cases, noise, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from sarf_bundle.faithfulness import (
    IMPUTATION_STENCIL,
    most_relevant_first,
    noisy_linear_imputation,
)

SHAPE = (32, 40)


def _removal_mask(rng: np.random.Generator, fraction: float, n: int = 3, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """MoRF mask of random maps, plus the 4 corners and a stretch of every border of each slice."""
    removed = most_relevant_first(rng.random((n, *shape)), fraction)
    removed[:, [0, 0, -1, -1], [0, -1, 0, -1]] = True
    removed[:, 0, 5:9] = removed[:, -1, 11:14] = True
    removed[:, 7:10, 0] = removed[:, 20:23, -1] = True
    return removed


def _reference_imputation(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Dense solve of ``x_i * sum_n w_n = sum_n w_n x_n`` built pixel by pixel, for small images."""
    height, width = image.shape
    pixels = list(zip(*np.nonzero(removed), strict=True))
    index = {p: k for k, p in enumerate(pixels)}
    a, b = np.zeros((len(pixels), len(pixels))), np.zeros(len(pixels))
    for k, (i, j) in enumerate(pixels):
        for di, dj, w in IMPUTATION_STENCIL:
            ni, nj = i + di, j + dj
            if 0 <= ni < height and 0 <= nj < width:
                a[k, k] += w
                if removed[ni, nj]:
                    a[k, index[ni, nj]] -= w
                else:
                    b[k] += w * image[ni, nj]
    out = image.copy()
    out[removed] = np.linalg.solve(a, b)
    return out


# --------------------------------------------------------------------------------------------------------------
# Agreement with Quantus 0.6.0
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_imputation_matches_quantus(quantus, fraction):
    rng = np.random.default_rng(int(fraction * 10))
    images = rng.normal(size=(3, *SHAPE)) * 5.0 + 2.0
    removed = _removal_mask(rng, fraction)
    ours = noisy_linear_imputation(images, removed, noise=0)
    for image, mask, result in zip(images, removed, ours, strict=True):
        expected = quantus.functions.perturb_func.noisy_linear_imputation(
            arr=image[None], indices=np.flatnonzero(mask), noise=0.0
        )[0]
        np.testing.assert_allclose(result, expected, rtol=1e-8, atol=1e-10)
        np.testing.assert_array_equal(result[~mask], image[~mask])


def test_imputation_matches_dense_reference_and_slices_are_independent():
    rng = np.random.default_rng(3)
    images = rng.normal(size=(4, 9, 11))
    removed = _removal_mask(rng, 0.6, n=4, shape=(9, 11))
    stacked = noisy_linear_imputation(images, removed, noise=0)
    for image, mask, result in zip(images, removed, stacked, strict=True):
        np.testing.assert_allclose(result, _reference_imputation(image, mask), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(result, noisy_linear_imputation(image, mask, noise=0), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shape", [(10, 10), SHAPE])
def test_most_relevant_first_matches_quantus_road_order(quantus, shape):
    """The pixels Quantus's ``ROAD.evaluate_batch`` hands its perturbation function, at every percentage."""
    rng = np.random.default_rng(sum(shape))
    relevance = rng.random((2, 1, *shape))  # continuous: no ties
    percentages = list(range(101))
    recorded = []

    def record_indices(arr, indices, **kwargs):
        recorded.append(np.asarray(indices))
        return arr + 1.0

    class ConstantModel:  # the two methods of quantus's ModelInterface that ROAD calls
        def shape_input(self, x, shape, channel_first=None, batched=False):
            return x

        def predict(self, x, **kwargs):
            return np.zeros((len(x), 2))

    road = quantus.ROAD(percentages=percentages, perturb_func=record_indices, normalise=False, disable_warnings=True)
    road.a_size = shape[0] * shape[1]
    road.evaluate_batch(
        model=ConstantModel(), x_batch=np.zeros_like(relevance), y_batch=np.zeros(2, dtype=int), a_batch=relevance
    )
    assert len(recorded) == 2 * len(percentages)
    for k, p in enumerate(percentages):
        mask = most_relevant_first(relevance[:, 0], p / 100)
        for sample in range(2):
            indices = recorded[2 * k + sample]
            assert mask[sample].sum() == len(indices) == int(road.a_size * p / 100)
            assert set(np.flatnonzero(mask[sample])) == set(indices.tolist()), f"p={p}, sample {sample}"


# --------------------------------------------------------------------------------------------------------------
# Hand-checkable cases
# --------------------------------------------------------------------------------------------------------------


def test_centre_of_3x3_is_weighted_mean_of_its_8_neighbours():
    image = np.arange(9.0).reshape(3, 3) ** 2
    removed = np.zeros((3, 3), dtype=bool)
    removed[1, 1] = True
    direct = image[0, 1] + image[1, 0] + image[1, 2] + image[2, 1]
    diagonal = image[0, 0] + image[0, 2] + image[2, 0] + image[2, 2]
    result = noisy_linear_imputation(image, removed, noise=0)
    assert result[1, 1] == pytest.approx(direct / 6 + diagonal / 12, rel=1e-14)
    np.testing.assert_array_equal(result[~removed], image[~removed])


def test_corner_pixel_renormalises_over_its_3_neighbours():
    image = np.arange(12.0).reshape(3, 4) ** 2
    removed = np.zeros((3, 4), dtype=bool)
    removed[0, 0] = True
    expected = (image[0, 1] / 6 + image[1, 0] / 6 + image[1, 1] / 12) / (1 / 6 + 1 / 6 + 1 / 12)
    assert noisy_linear_imputation(image, removed, noise=0)[0, 0] == pytest.approx(expected, rel=1e-14)


def test_linear_ramp_is_reproduced_exactly():
    rows, cols = np.mgrid[0:20, 0:24].astype(float)
    ramp = 0.7 * rows - 1.3 * cols + 4.0
    removed = np.zeros(ramp.shape, dtype=bool)
    removed[4:15, 6:19] = True  # interior: the stencil is symmetric there, so linear functions are harmonic
    np.testing.assert_allclose(noisy_linear_imputation(ramp, removed, noise=0), ramp, rtol=0, atol=1e-10)


def test_constant_image_stays_constant():
    image = np.full((2, 16, 16), 3.25)
    removed = _removal_mask(np.random.default_rng(5), 0.8, n=2, shape=(16, 16))
    np.testing.assert_allclose(noisy_linear_imputation(image, removed, noise=0), image, rtol=1e-13)


def test_no_removed_pixel_returns_a_copy():
    image = np.random.default_rng(0).normal(size=(2, 5, 6)).astype(np.float32)
    result = noisy_linear_imputation(image, np.zeros(image.shape, dtype=bool))
    np.testing.assert_array_equal(result, image)
    assert result is not image and not np.shares_memory(result, image)
    assert result.dtype == np.float32


def test_two_dimensional_input_returns_two_dimensional_output():
    rng = np.random.default_rng(1)
    image = rng.normal(size=SHAPE)
    removed = _removal_mask(rng, 0.3, n=1)[0]
    result = noisy_linear_imputation(image, removed, noise=0)
    assert result.shape == SHAPE
    np.testing.assert_array_equal(result, noisy_linear_imputation(image[None], removed[None], noise=0)[0])
    mask = most_relevant_first(rng.random(SHAPE), 0.25)
    assert mask.shape == SHAPE and mask.dtype == bool and mask.sum() == SHAPE[0] * SHAPE[1] // 4


def test_integer_images_are_imputed_in_float64():
    image = np.arange(16).reshape(4, 4)
    removed = np.zeros((4, 4), dtype=bool)
    removed[1:3, 1:3] = True
    result = noisy_linear_imputation(image, removed, noise=0)
    assert result.dtype == np.float64
    np.testing.assert_allclose(result, image, atol=1e-12)  # a ramp


def test_most_relevant_first_breaks_ties_in_c_order():
    relevance = np.array([[[1.0, 2.0, 2.0], [0.0, 2.0, 1.0]]])
    np.testing.assert_array_equal(most_relevant_first(relevance, 2 / 6), [[[False, True, True], [False, False, False]]])
    np.testing.assert_array_equal(most_relevant_first(relevance, 4 / 6), [[[True, True, True], [False, True, False]]])
    assert not most_relevant_first(relevance, 0.0).any()
    assert most_relevant_first(relevance, 1.0).all()


# --------------------------------------------------------------------------------------------------------------
# Noise
# --------------------------------------------------------------------------------------------------------------


def test_noise_is_added_to_imputed_pixels_only_and_is_reproducible():
    rng = np.random.default_rng(11)
    images = rng.normal(size=(2, 64, 64))
    removed = _removal_mask(rng, 0.5, n=2, shape=(64, 64))
    clean = noisy_linear_imputation(images, removed, noise=0)
    noisy = noisy_linear_imputation(images, removed, noise=0.5, rng=np.random.default_rng(42))
    np.testing.assert_array_equal(noisy[~removed], images[~removed])
    difference = (noisy - clean)[removed]
    assert difference.size > 4000
    assert difference.std() == pytest.approx(0.5, rel=0.05)
    assert abs(difference.mean()) < 0.05
    np.testing.assert_array_equal(noisy, noisy_linear_imputation(images, removed, noise=0.5, rng=np.random.default_rng(42)))
    assert not np.array_equal(noisy, noisy_linear_imputation(images, removed, noise=0.5, rng=np.random.default_rng(43)))


def test_default_noise_draws_from_a_fresh_generator():
    rng = np.random.default_rng(2)
    image = rng.normal(size=(16, 16))
    removed = most_relevant_first(rng.random((16, 16)), 0.5)
    first, second = noisy_linear_imputation(image, removed), noisy_linear_imputation(image, removed)
    assert not np.array_equal(first[removed], second[removed])
    np.testing.assert_allclose(first, second, atol=0.1)  # noise of std 0.01


# --------------------------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------------------------


def test_shape_mismatch_raises_naming_both_shapes():
    with pytest.raises(ValueError, match=r"same shape.*\(2, 8, 8\).*\(2, 8, 9\)"):
        noisy_linear_imputation(np.zeros((2, 8, 8)), np.zeros((2, 8, 9), dtype=bool))


def test_wrong_rank_raises():
    with pytest.raises(ValueError, match=r"\(N, H, W\) or \(H, W\)"):
        noisy_linear_imputation(np.zeros((1, 2, 8, 8)), np.zeros((1, 2, 8, 8), dtype=bool))
    with pytest.raises(ValueError, match=r"\(N, H, W\) or \(H, W\)"):
        most_relevant_first(np.zeros(8), 0.5)


@pytest.mark.parametrize("mask", [np.zeros((8, 8)), np.zeros((8, 8), dtype=int), [[0, 1], [1, 0]]])
def test_non_boolean_mask_raises(mask):
    with pytest.raises(TypeError, match="removed must be a boolean array"):
        noisy_linear_imputation(np.zeros(np.shape(mask)), mask)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_image_raises(bad):
    image = np.zeros((2, 8, 8))
    image[1, 3, 4] = bad
    with pytest.raises(ValueError, match="images must be finite"):
        noisy_linear_imputation(image, np.ones((2, 8, 8), dtype=bool))
    with pytest.raises(ValueError, match="relevance must be finite"):
        most_relevant_first(image, 0.5)


def test_all_pixels_removed_raises_naming_the_slice():
    removed = np.zeros((3, 8, 8), dtype=bool)
    removed[1] = True
    with pytest.raises(ValueError, match=r"all its pixels removed \(slices \[1\] of 3\).*singular"):
        noisy_linear_imputation(np.zeros((3, 8, 8)), removed)
    with pytest.raises(ValueError, match="all its pixels removed"):
        noisy_linear_imputation(np.zeros((1, 1)), np.ones((1, 1), dtype=bool))


@pytest.mark.parametrize("noise", [-0.1, np.nan, np.inf])
def test_bad_noise_raises(noise):
    with pytest.raises(ValueError, match="noise must be a finite standard deviation"):
        noisy_linear_imputation(np.zeros((4, 4)), np.eye(4, dtype=bool), noise=noise)


@pytest.mark.parametrize("fraction", [-0.01, 1.01, np.nan, "0.5"])
def test_fraction_outside_unit_interval_raises(fraction):
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\]"):
        most_relevant_first(np.zeros((4, 4)), fraction)


def test_non_numeric_arrays_raise():
    with pytest.raises(TypeError, match="images must be a real numeric array"):
        noisy_linear_imputation(np.zeros((4, 4), dtype=complex), np.eye(4, dtype=bool))
    with pytest.raises(TypeError, match="relevance must be a real numeric array"):
        most_relevant_first(np.array([["a", "b"]]), 0.5)
