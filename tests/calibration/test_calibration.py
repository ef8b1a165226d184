from __future__ import annotations

import json

import pytest
import torch

from sarf_bundle.calibration import fit_temperature, load_temperature, volume_nll


def overconfident(n_volumes: int, temperature: float, n_slices: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Slice logits whose probabilities are calibrated after dividing by ``temperature``, with labels drawn from them."""
    generator = torch.Generator().manual_seed(seed)
    calibrated = torch.randn(n_volumes, 6, generator=generator) * 1.5
    labels = torch.multinomial(torch.softmax(calibrated, dim=1), 1, generator=generator).squeeze(1)
    logits = (calibrated * temperature).repeat_interleave(n_slices, dim=0)
    return logits, labels


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_fit_recovers_the_temperature(temperature):
    logits, labels = overconfident(4000, temperature)
    fitted = fit_temperature(logits, labels, n_slices=7)
    assert fitted == pytest.approx(temperature, rel=0.1)
    assert volume_nll(logits, labels, 7, fitted) <= volume_nll(logits, labels, 7, 1.0) + 1e-9


def test_fit_rejects_shapes_that_do_not_fit():
    with pytest.raises(ValueError, match="slice logits"):
        fit_temperature(torch.zeros(10, 6), torch.zeros(2, dtype=torch.long), n_slices=7)
    with pytest.raises(ValueError, match="slice logits"):
        fit_temperature(torch.zeros(0, 6), torch.zeros(0, dtype=torch.long), n_slices=7)


def test_load_temperature(tmp_path):
    assert load_temperature(tmp_path / "missing.json") == 1.0
    (tmp_path / "calibration.json").write_text(json.dumps({"temperature": 2.5}))
    assert load_temperature(tmp_path / "calibration.json") == 2.5
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json"):
        load_temperature(tmp_path / "bad.json")
    (tmp_path / "negative.json").write_text(json.dumps({"temperature": -1}))
    with pytest.raises(ValueError, match="positive"):
        load_temperature(tmp_path / "negative.json")
