"""Command line of sarf_bundle: ``python -m sarf_bundle <command> --help``.

- ``demo``: simulate data, train baseline and SaRF, evaluate both, infer a folder, print a report.
- ``synth``: simulate whole-head brain MRI in six sequences, with brain masks and a datalist.
- ``montage``: a PNG of an axial slice per subject and sequence of a datalist.
"""

from __future__ import annotations

__all__ = ["main"]


def main() -> None:
    import fire

    from .demo import run_demo
    from .simulation.dataset import synthesize
    from .visualize import datalist_montage

    fire.Fire({"demo": run_demo, "synth": synthesize, "montage": datalist_montage}, name="python -m sarf_bundle")


if __name__ == "__main__":
    main()
