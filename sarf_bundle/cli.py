"""Command line of sarf_bundle: ``python -m sarf_bundle <command> --help``.

- ``demo``: simulate data, train baseline and SaRF, evaluate both, infer a folder, print a report.
- ``pretrain``: simulate, train, calibrate, evaluate and export the model that ships with the bundle (``models/model.pt``).
- ``synth``: simulate whole-head brain MRI in six sequences, with brain masks and a datalist.
- ``montage``: a PNG of an axial slice per subject and sequence of a datalist.
- ``skullstrip``: skull-strip the training volumes of a datalist ahead of training (HD-BET or deepbet, cached).
- ``crossval``: cross-validate one of the paper's methods (train every fold, test each on the held-out split).
- ``sweep``: the paper's alpha x beta grid of cross-validations, in shards, and its heat maps.
- ``report``: the paper's tables and figures for any set of cross-validated methods (Markdown, HTML, JSON).
- ``explain``: class relevance maps (Deep Taylor decomposition) of one volume's slices, as a PNG grid and NumPy.
- ``invariance``: does a brain give the same slices through the training (stripped) and inference (whole-head) preprocessing?
- ``faithfulness``: the ROAD test of one or more models' relevance maps on a datalist split (F1 decrease per level).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Run a command; ``argv`` (default: the process's arguments) as on the command line, without the program."""
    import fire

    from .demo import run_demo
    from .experiments import crossval
    from .explain import explain
    from .faithfulness import faithfulness
    from .invariance import invariance
    from .pretrain import pretrain
    from .report import report
    from .simulation.dataset import synthesize
    from .skullstrip import strip_datalist
    from .sweep import sweep
    from .visualize import datalist_montage

    commands = {
        "demo": run_demo,
        "pretrain": pretrain,
        "synth": synthesize,
        "montage": datalist_montage,
        "skullstrip": strip_datalist,
        "crossval": crossval,
        "sweep": sweep,
        "report": report,
        "explain": explain,
        "faithfulness": faithfulness,
        "invariance": invariance,
    }
    args = sys.argv[1:] if argv is None else list(argv)
    if "--help" in args:  # fire would hand it to crossval's and sweep's config overrides
        args = [a for a in args if a != "--help"] + ["--", "--help"]
    fire.Fire(commands, command=args, name="python -m sarf_bundle")


if __name__ == "__main__":
    main()
