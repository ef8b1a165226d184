"""Clinical protocols of the six sequences and their signal equations.

A :class:`Protocol` holds everything one acquisition needs (pulse-sequence timing, geometry, SNR and
artefacts), drawn per volume from clinical ranges by :func:`sample_protocol`.
:func:`tissue_signals` turns a protocol and the subject's tissue properties into the steady-state
magnitude of each tissue, from the sequence's signal equation:

- T1 and T1Gd: 3D MPRAGE (inversion-prepared gradient-echo train, steady state solved exactly),
  3D spoiled gradient echo (FLASH/SPGR) or 2D spin echo. T1Gd is the same with T1 and T2 shortened
  by the gadolinium each tissue takes up (``1/T1' = 1/T1 + r1*C``); brain behind an intact
  blood-brain barrier takes up none, so the two differ only where contrast reaches.
- T2: turbo spin echo; fat stays bright (J-coupling).
- FLAIR: inversion recovery TSE with the inversion time that nulls CSF.
- DWI: b = 1000 s/mm^2 trace, spin-echo EPI with fat saturation.
- SWI: flow-compensated spoiled gradient echo with long TE; the phase mask is applied in
  :mod:`sarf_bundle.simulation.acquisition`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .tissues import PROPERTIES, Flow, Tissue, TissueProperties

__all__ = ["Protocol", "sample_protocol", "tissue_signals", "GAMMA_MHZ_PER_T"]

GAMMA_MHZ_PER_T = 42.577
"""Proton gyromagnetic ratio / 2 pi."""

SNR_SPREAD = (0.6, 6.0)
"""Log-uniform factor on each sequence's clinical SNR range: from noisier than usual to almost noise-free (an
average of several scans, like the Colin27 template), so that a model does not learn one noise level."""

Kind = Literal["mprage", "spgr", "se", "tse", "flair", "epi", "swi"]
Orientation = Literal["axial", "sagittal", "coronal"]


@dataclass(frozen=True)
class Protocol:
    """One acquisition: sequence timing, geometry and image-quality settings.

    Times are in ms, lengths in mm, angles in degrees.
    """

    sequence: str
    kind: Kind
    field_t: float
    tr: float
    te: float
    ti: float = 0.0
    flip: float = 90.0
    echo_spacing: float = 0.0
    b_value: float = 0.0
    contrast: bool = False
    orientation: Orientation = "axial"
    three_d: bool = False
    pixel_mm: float = 1.0
    recon_factor: int = 1
    slice_mm: float = 1.0
    gap_mm: float = 0.0
    fov_mm: float = 240.0
    coverage_mm: float = 150.0
    oblique_deg: float = 0.0
    snr: float = 20.0
    bias: float = 0.1
    ringing: float = 0.0
    ghost: float = 0.0
    pe_bandwidth_hz: float = 0.0
    storage: Literal["int16", "int16_scaled", "float32"] = "int16"


def _choice(rng: np.random.Generator, options: dict):
    keys = list(options)
    return keys[rng.choice(len(keys), p=np.array(list(options.values()), float) / sum(options.values()))]


def sample_protocol(
    sequence: str, field_t: float, rng: np.random.Generator, t1_kind: Kind | None = None, voxel_scale: float = 1.0
) -> Protocol:
    """Draw one acquisition of a sequence from clinical ranges.

    Args:
        sequence: one of DWI, FLAIR, SWI, T1, T1Gd, T2.
        field_t: 1.5 or 3.0.
        rng: the volume's random generator.
        t1_kind: for T1/T1Gd, the pulse sequence to use (the subject's T1 and T1Gd usually share one);
            drawn when None.
        voxel_scale: factor on every voxel size (1 for clinical resolution; larger gives smaller volumes
            for quick tests and demos, through the same code).

    Returns:
        The :class:`Protocol`.

    Raises:
        ValueError: for an unknown sequence.
    """
    u = rng.uniform
    common = dict(
        sequence=sequence,
        field_t=field_t,
        snr=u(15, 40),
        bias=u(0.05, 0.25) if field_t > 2 else u(0.03, 0.12),
        ringing=u(0.6, 0.8) if rng.random() < 0.2 else 0.0,
        ghost=u(0.05, 0.4) if rng.random() < 0.15 else 0.0,
        oblique_deg=float(rng.normal(0, 4)),
        fov_mm=u(220, 256),
        recon_factor=int(rng.choice([1, 2], p=[0.6, 0.4])),
        storage=_choice(rng, {"int16": 0.6, "int16_scaled": 0.2, "float32": 0.2}),
    )
    two_d = dict(three_d=False, slice_mm=u(3.0, 6.0), gap_mm=u(0.0, 1.5) if rng.random() < 0.7 else 0.0)
    if sequence in ("T1", "T1Gd"):
        kind = t1_kind or _choice(rng, {"mprage": 0.5, "spgr": 0.2, "se": 0.3} if field_t > 2 else {"mprage": 0.35, "spgr": 0.2, "se": 0.45})
        if kind == "se":
            timing = dict(tr=u(400, 700), te=u(8, 15))
            geometry = dict(two_d, orientation=_choice(rng, {"axial": 0.85, "sagittal": 0.1, "coronal": 0.05}), pixel_mm=u(0.7, 1.0), coverage_mm=u(135, 165))
        else:
            if kind == "mprage":
                timing = dict(tr=u(1800, 2300), ti=u(850, 1100), te=u(2.2, 4.0), flip=u(7, 10), echo_spacing=u(6.5, 9.5))
            else:
                timing = dict(tr=u(8, 25), te=u(2.5, 5.0), flip=u(15, 30))
            geometry = dict(
                three_d=True,
                orientation=_choice(rng, {"sagittal": 0.45, "axial": 0.4, "coronal": 0.15}),
                pixel_mm=u(0.9, 1.1),
                slice_mm=u(0.9, 1.3),
                coverage_mm=u(165, 200),
                recon_factor=1,
            )
        protocol = dict(kind=kind, contrast=sequence == "T1Gd", **timing, **geometry)
    elif sequence == "T2":
        protocol = dict(kind="tse", tr=u(3000, 6500), te=u(80, 120), orientation=_choice(rng, {"axial": 0.85, "coronal": 0.15}), pixel_mm=u(0.45, 0.9), coverage_mm=u(135, 165), **two_d)
    elif sequence == "FLAIR":
        if rng.random() < 0.3:
            geometry = dict(three_d=True, orientation="sagittal", pixel_mm=u(0.9, 1.1), slice_mm=u(0.9, 1.3), coverage_mm=u(165, 200), recon_factor=1)
            timing = dict(tr=u(5000, 6500), te=u(130, 170))
        else:
            geometry = dict(two_d, orientation="axial", pixel_mm=u(0.7, 1.0), coverage_mm=u(135, 165))
            timing = dict(tr=u(7000, 11000), te=u(80, 140))
        csf = PROPERTIES[Tissue.CSF]
        csf_t1 = csf.t1_3 if field_t > 2 else csf.t1_15
        timing["ti"] = csf_t1 * np.log(2.0 / (1.0 + np.exp(-timing["tr"] / csf_t1))) * u(0.97, 1.03)
        protocol = dict(kind="flair", **timing, **geometry)
    elif sequence == "DWI":
        protocol = dict(
            kind="epi", tr=u(3000, 8000), te=u(60, 100), b_value=1000.0, orientation="axial", pixel_mm=u(1.5, 2.2),
            pe_bandwidth_hz=u(15, 40), coverage_mm=u(130, 160), **dict(two_d, slice_mm=u(4.0, 5.5)),
        )
        common.update(snr=u(6, 18), ghost=u(0.03, 0.15) if rng.random() < 0.5 else 0.0)
    elif sequence == "SWI":
        protocol = dict(
            kind="swi", tr=u(27, 50), te=u(18, 25) if field_t > 2 else u(35, 45), flip=u(12, 20), three_d=True,
            orientation="axial", pixel_mm=u(0.7, 1.0), slice_mm=u(1.2, 3.0), coverage_mm=u(100, 140), recon_factor=1,
        )
        common.update(snr=u(10, 30))
    else:
        raise ValueError(f"Unknown sequence {sequence!r}; expected one of DWI, FLAIR, SWI, T1, T1Gd, T2.")
    merged = {**common, **protocol}
    merged["snr"] *= float(np.exp(u(np.log(SNR_SPREAD[0]), np.log(SNR_SPREAD[1]))))
    for key in ("pixel_mm", "slice_mm", "gap_mm"):
        merged[key] = merged.get(key, 0.0) * voxel_scale
    return Protocol(**merged)


_R1_GD, _R2_GD = 4.0, 5.0  # relaxivities of a gadolinium chelate, 1/(mM s)


def _relaxation(p: TissueProperties, field_t: float, contrast: bool) -> tuple[float, float, float]:
    """T1, T2 and T2* in ms, after gadolinium when ``contrast``."""
    t1 = p.t1_3 if field_t > 2 else p.t1_15
    t2 = p.t2
    if contrast and p.gd > 0:
        t1 = 1000.0 / (1000.0 / t1 + _R1_GD * p.gd)
        t2 = 1000.0 / (1000.0 / t2 + _R2_GD * p.gd)
    t2s = 1000.0 / (1000.0 / t2 + p.r2prime * field_t / 1.5)
    return t1, t2, t2s


def _mprage(t1: np.ndarray, protocol: Protocol, n_readouts: int = 176) -> np.ndarray:
    """Longitudinal magnetisation at the centre of k-space of an MPRAGE train, in steady state."""
    cos_a = np.cos(np.deg2rad(protocol.flip))
    esp = protocol.echo_spacing
    before = protocol.ti - esp * n_readouts / 2
    after = protocol.tr - protocol.ti - esp * n_readouts / 2

    def relax(mz: np.ndarray, t: float) -> np.ndarray:
        return 1.0 - (1.0 - mz) * np.exp(-t / t1)

    mz = np.ones_like(t1)
    for _ in range(8):
        centre = None
        m = relax(-mz, max(before, 0.0))
        for i in range(n_readouts):
            if i == n_readouts // 2:
                centre = m.copy()
            m = relax(m * cos_a, esp)
        mz = relax(m, max(after, 0.0))
    return np.abs(centre) * np.sin(np.deg2rad(protocol.flip))


def tissue_signals(protocol: Protocol, props: dict[Tissue, TissueProperties]) -> dict[Tissue, float]:
    """Steady-state magnitude of every tissue for a protocol (proton density times weighting).

    Args:
        protocol: the acquisition.
        props: the subject's tissue properties.

    Returns:
        Signal per tissue, in arbitrary units shared by all tissues of this volume.
    """
    tissues = list(props)
    rel = np.array([_relaxation(props[t], protocol.field_t, protocol.contrast) for t in tissues])
    t1, t2, t2s = rel.T
    pd = np.array([props[t].pd for t in tissues])
    fat = np.array([props[t].fat for t in tissues])
    adc = np.array([props[t].adc for t in tissues])
    tr, te, kind = protocol.tr, protocol.te, protocol.kind
    flow_factor = {
        "se": (0.45, 0.08), "tse": (0.35, 0.05), "flair": (0.35, 0.05), "epi": (0.1, 0.02),
        "mprage": (1.0, 0.7), "spgr": (1.2, 1.8), "swi": (1.0, 1.5),
    }[kind]
    if kind == "se":
        s = pd * (1 - 2 * np.exp(-(tr - te / 2) / t1) + np.exp(-tr / t1)) * np.exp(-te / t2)
    elif kind == "tse":
        s = pd * (1 - np.exp(-tr / t1)) * np.exp(-te / (t2 * (1 + 0.8 * fat)))
    elif kind == "flair":
        s = pd * np.abs(1 - 2 * np.exp(-protocol.ti / t1) + np.exp(-tr / t1)) * np.exp(-te / (t2 * (1 + 0.8 * fat)))
    elif kind == "epi":
        s = pd * (1 - np.exp(-tr / t1)) * np.exp(-te / t2) * np.exp(-protocol.b_value * adc * 1e-3) * (1 - 0.95 * fat)
    elif kind == "mprage":
        s = pd * _mprage(t1, protocol) * np.exp(-te / t2s)
    else:
        e1, a = np.exp(-tr / t1), np.deg2rad(protocol.flip)
        s = pd * np.sin(a) * (1 - e1) / (1 - np.cos(a) * e1) * np.exp(-te / t2s)
    flow = np.array([props[t].flow for t in tissues])
    s = np.where(flow == Flow.VENOUS, s * flow_factor[0], np.where(flow == Flow.ARTERIAL, s * flow_factor[1], s))
    return {t: float(v) for t, v in zip(tissues, s)}
