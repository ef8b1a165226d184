"""Tissue classes of the simulated head and their MR properties.

Each tissue carries the quantities the signal equations need: proton density (PD, relative to
water), longitudinal relaxation T1 at 1.5 T and 3 T, transverse relaxation T2, the reversible
dephasing rate R2' (at 1.5 T; it scales with field strength, so ``1/T2* = 1/T2 + R2'``), the apparent
diffusion coefficient (ADC), the gadolinium concentration reached after a standard dose (0 where the
blood-brain barrier is intact), the magnetic susceptibility relative to water, and how moving blood
or fat behave in the sequences.

Values are typical literature figures for adult brain and head tissues (e.g. Stanisz et al.,
MRM 2005; Bojorquez et al., MRI 2017; Wansapura et al., JMRI 1999; Haacke et al., AJNR 2009 for
susceptibility); each subject jitters them a little (:func:`jitter_properties`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum

import numpy as np

__all__ = ["Flow", "Tissue", "TissueProperties", "PROPERTIES", "jitter_properties"]


class Flow(IntEnum):
    """How a tissue's spins move: static, venous (slow) or arterial (fast) blood."""

    STATIC = 0
    VENOUS = 1
    ARTERIAL = 2


class Tissue(IntEnum):
    """Tissue classes; the order is the index used by the per-subject fraction maps."""

    AIR = 0
    GM = 1
    WM = 2
    CSF = 3
    FAT = 4
    MUSCLE = 5
    SKIN = 6
    BONE = 7
    MARROW = 8
    DURA = 9
    VEIN = 10
    ARTERY = 11
    CHOROID_PLEXUS = 12
    CALCIFICATION = 13
    VITREOUS = 14
    LENS = 15
    EXTRAOCULAR_MUSCLE = 16
    OPTIC_NERVE = 17
    MUCOSA = 18
    PITUITARY = 19
    EDEMA = 20
    ENHANCING_TUMOUR = 21
    NECROSIS = 22
    WHITE_MATTER_HYPERINTENSITY = 23
    INFARCT = 24
    HAEMORRHAGE_ACUTE = 25
    HAEMORRHAGE_SUBACUTE = 26
    CORD = 27


@dataclass(frozen=True)
class TissueProperties:
    """MR properties of one tissue.

    Attributes:
        pd: proton density relative to water.
        t1_15: T1 in ms at 1.5 T.
        t1_3: T1 in ms at 3 T.
        t2: T2 in ms.
        r2prime: reversible dephasing rate R2' in 1/s at 1.5 T (scales linearly with B0).
        adc: apparent diffusion coefficient in 1e-3 mm^2/s.
        gd: gadolinium concentration in mmol/l after a standard dose.
        chi: susceptibility relative to water in ppm.
        flow: static tissue, venous or arterial blood.
        fat: fraction of the signal from fat (chemical-shift and fat-suppression behaviour).
    """

    pd: float
    t1_15: float
    t1_3: float
    t2: float
    r2prime: float
    adc: float
    gd: float = 0.0
    chi: float = 0.0
    flow: Flow = Flow.STATIC
    fat: float = 0.0


_T = TissueProperties
PROPERTIES: dict[Tissue, TissueProperties] = {
    Tissue.AIR: _T(0.0, 1000, 1000, 1, 0, 0, chi=9.4),
    Tissue.GM: _T(0.80, 1100, 1450, 95, 6, 0.85, chi=0.02),
    Tissue.WM: _T(0.69, 650, 850, 72, 8, 0.72, chi=-0.03),
    Tissue.CSF: _T(1.00, 4000, 4300, 1800, 0.3, 3.0),
    Tissue.FAT: _T(0.95, 270, 380, 85, 25, 0.01, fat=1.0),
    Tissue.MUSCLE: _T(0.75, 1000, 1400, 40, 15, 1.4, gd=0.15),
    Tissue.SKIN: _T(0.70, 900, 1150, 45, 15, 1.0, gd=0.10),
    Tissue.BONE: _T(0.05, 500, 600, 1, 1000, 0.1, chi=-2.0),
    Tissue.MARROW: _T(0.85, 380, 480, 70, 40, 0.3, gd=0.05, chi=-0.5, fat=0.6),
    Tissue.DURA: _T(0.60, 1000, 1300, 50, 20, 1.0, gd=0.35),
    Tissue.VEIN: _T(0.85, 1350, 1650, 150, 50, 10.0, gd=0.8, chi=0.35, flow=Flow.VENOUS),
    Tissue.ARTERY: _T(0.85, 1350, 1650, 250, 2, 10.0, gd=0.8, chi=0.05, flow=Flow.ARTERIAL),
    Tissue.CHOROID_PLEXUS: _T(0.80, 900, 1200, 80, 8, 1.5, gd=0.5),
    Tissue.CALCIFICATION: _T(0.20, 500, 600, 10, 300, 0.3, chi=-1.5),
    Tissue.VITREOUS: _T(0.98, 4000, 4200, 1500, 0.3, 2.9),
    Tissue.LENS: _T(0.60, 800, 1000, 25, 5, 0.5),
    Tissue.EXTRAOCULAR_MUSCLE: _T(0.75, 1000, 1400, 40, 15, 1.4, gd=0.35),
    Tissue.OPTIC_NERVE: _T(0.70, 700, 900, 80, 8, 1.0),
    Tissue.MUCOSA: _T(0.85, 1100, 1400, 120, 10, 1.5, gd=0.5),
    Tissue.PITUITARY: _T(0.75, 800, 1000, 70, 8, 1.0, gd=0.6),
    Tissue.EDEMA: _T(0.85, 1200, 1600, 150, 6, 1.4),
    Tissue.ENHANCING_TUMOUR: _T(0.85, 1100, 1450, 110, 8, 0.9, gd=0.5),
    Tissue.NECROSIS: _T(0.95, 2500, 3000, 400, 2, 2.2),
    Tissue.WHITE_MATTER_HYPERINTENSITY: _T(0.78, 900, 1150, 130, 6, 1.0),
    Tissue.INFARCT: _T(0.85, 1200, 1550, 120, 6, 0.35),
    Tissue.HAEMORRHAGE_ACUTE: _T(0.80, 1000, 1300, 40, 150, 0.6, chi=1.0),
    Tissue.HAEMORRHAGE_SUBACUTE: _T(0.85, 350, 450, 200, 60, 0.7, chi=0.6),
    Tissue.CORD: _T(0.70, 750, 950, 75, 8, 1.0),
}


def jitter_properties(rng: np.random.Generator, spread: float = 0.05) -> dict[Tissue, TissueProperties]:
    """Per-subject tissue properties: PD, T1, T2 and gadolinium uptake scaled by log-normal factors.

    Args:
        rng: the subject's random generator.
        spread: standard deviation of the log of each factor.

    Returns:
        A new property table with the same keys as :data:`PROPERTIES`.
    """
    out = {}
    for tissue, p in PROPERTIES.items():
        f_pd, f_t1, f_t2, f_gd = np.exp(rng.normal(0.0, spread, 4))
        out[tissue] = replace(
            p, pd=p.pd * f_pd, t1_15=p.t1_15 * f_t1, t1_3=p.t1_3 * f_t1, t2=p.t2 * f_t2, gd=p.gd * f_gd
        )
    return out
