"""Command line of sarf_bundle: ``python -m sarf_bundle <command> --help``.

- ``demo``: simulate data, train baseline and SaRF, evaluate both, infer a folder, print a report.
- ``synth``: simulate whole-head brain MRI in six sequences, with brain masks and a datalist.
- ``montage``: a PNG of an axial slice per subject and sequence of a datalist.
- ``skullstrip``: skull-strip the training volumes of a datalist ahead of training (HD-BET or deepbet, cached).
"""

from __future__ import annotations

__all__ = ["main"]


def main() -> None:
    import fire

    from .demo import run_demo
    from .simulation.dataset import synthesize
    from .skullstrip import strip_datalist
    from .visualize import datalist_montage

    commands = {"demo": run_demo, "synth": synthesize, "montage": datalist_montage, "skullstrip": strip_datalist}
    fire.Fire(commands, name="python -m sarf_bundle")


if __name__ == "__main__":
    main()
