"""sarf_bundle: MRI sequence classification trained with SaRF (You, Wiest, Reyes, CMPB 2023)."""

from __future__ import annotations

SEQUENCES: tuple[str, ...] = ("DWI", "FLAIR", "SWI", "T1", "T1Gd", "T2")
"""Class names in class-index order (alphabetical, as in the paper)."""

__all__ = ["SEQUENCES"]
