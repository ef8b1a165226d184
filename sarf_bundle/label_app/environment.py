"""Create the virtual environment of the MONAI Label server: ``python -m sarf_bundle.label_app.environment``.

MONAI Label 0.8.5 cannot share this project's environment: its dependency numpymaxflow 0.0.7
requires ``numpy<2`` (the project runs on numpy 2), and its dependency pydicom-seg 0.4.1 imports
``pydicom._storage_sopclass_uids``, which pydicom 3 removed. The server therefore gets its own virtual
environment, made from scratch with the Python that runs this command:

1. ``torch==2.13.0`` (``--torch``), installed first and pinned by a constraints file for every later install;
2. ``monailabel==0.8.5``, ``numpy<2``, ``pydicom<3`` and this repository (editable, with its runtime
   dependencies), in one pip resolution, so that everything is at versions MONAI Label accepts. MONAI Label
   asks for ``monai>=1.4``, so the environment has the same MONAI 1.6 as the project.

A finished environment holds ``sarf-label-env.json`` (what it was made from and the versions installed).
Running the command again reuses the environment when that record matches the current requirements (Python,
torch, the list above, this repository's path and runtime dependencies), after checking that the app's
modules and the bundle's inference config load in it. A missing, unfinished or outdated environment is made
again; one whose check fails although it is current is reported, not rebuilt (``--rebuild`` forces that). A
lock file beside it (``<venv>.lock``) keeps two processes from building it at once.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from venv import EnvBuilder

__all__ = [
    "MONAILABEL_VERSION",
    "REQUIREMENTS",
    "TORCH_VERSION",
    "LabelEnvironmentError",
    "OutdatedEnvironmentError",
    "check_environment",
    "create_environment",
    "ensure_environment",
    "environment_python",
    "main",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The repository (bundle root with ``pyproject.toml``) installed, editable, into the environment."""

MONAILABEL_VERSION = "0.8.5"
TORCH_VERSION = "2.13.0"
REQUIREMENTS = (f"monailabel=={MONAILABEL_VERSION}", "numpy<2", "pydicom<3")
"""Installed together with this repository, after torch."""

MARKER = "sarf-label-env.json"
CONSTRAINTS = "sarf-constraints.txt"

# Imports what the server needs (MONAI Label, the app's task, and everything the bundle's inference config builds:
# its preprocessing and network) and reports the versions and where sarf_bundle was imported from.
PROBE = """
import json, platform
import monai, monailabel, numpy, pydicom, torch
import sarf_bundle, sarf_bundle.label_app.task
from sarf_bundle.bundle import read_config
parser = read_config("inference.json")
parser.get_parsed_content("preprocessing"), parser.get_parsed_content("network_def")
print(json.dumps({
    "python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
    "monailabel": monailabel.__version__, "numpy": numpy.__version__, "pydicom": pydicom.__version__,
    "sarf_bundle": sarf_bundle.__file__,
}))
"""


class LabelEnvironmentError(RuntimeError):
    """The label environment is missing, out of date, broken, or could not be made."""


class OutdatedEnvironmentError(LabelEnvironmentError):
    """The label environment is missing, unfinished, or made for other requirements: making it again fixes it."""


def environment_python(venv: str | Path) -> Path:
    """The Python interpreter of a virtual environment."""
    venv = Path(venv)
    return venv / "Scripts" / "python.exe" if os.name == "nt" else venv / "bin" / "python"


def _bundle_dependencies() -> list[str]:
    """The runtime dependencies in ``pyproject.toml`` (a hash of the file where ``tomllib`` is missing)."""
    pyproject = REPO_ROOT / "pyproject.toml"
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        return [hashlib.sha256(pyproject.read_bytes()).hexdigest()]
    return sorted(tomllib.loads(pyproject.read_text())["project"]["dependencies"])


def _specification(torch_version: str) -> dict:
    """What an environment is made from; a recorded one that differs means it must be made again."""
    return {
        "python": platform.python_version(),
        "torch": f"torch=={torch_version}",
        "requirements": list(REQUIREMENTS),
        "bundle": str(REPO_ROOT),
        "bundle_dependencies": _bundle_dependencies(),
    }


def _probe(venv: Path) -> dict[str, str]:
    """Import the server's modules in the environment and return the versions it reports.

    Raises:
        LabelEnvironmentError: naming the environment and the import error.
    """
    # Run outside the repository, so that ``sarf_bundle`` comes from the installation, not the working directory.
    result = subprocess.run([str(environment_python(venv)), "-c", PROBE], check=False, cwd=venv, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise LabelEnvironmentError(
            f"{venv}: the server's modules or the inference config do not load there (run with --rebuild if the "
            f"environment itself is broken):\n{tail}"
        )
    return json.loads(result.stdout.strip().splitlines()[-1])


def check_environment(venv: str | Path, torch_version: str = TORCH_VERSION) -> dict[str, str]:
    """Check that a label environment is complete and current, and return its versions.

    Args:
        venv: the environment's folder.
        torch_version: the torch version it must have been made with.

    Returns:
        The versions of Python, torch, MONAI, MONAI Label, numpy and pydicom in it, and the ``sarf_bundle`` it imports.

    Raises:
        OutdatedEnvironmentError: saying what is missing or out of date.
        LabelEnvironmentError: when the server's modules or the bundle's inference config do not load in it.
    """
    venv = Path(venv).absolute()
    marker = venv / MARKER
    if not environment_python(venv).exists():
        raise OutdatedEnvironmentError(f"{venv} is not a virtual environment (no {environment_python(venv).name}).")
    if not marker.is_file():
        raise OutdatedEnvironmentError(f"{venv} has no {MARKER}: it was not made by this command, or its making did not finish.")
    try:
        recorded = json.loads(marker.read_text()).get("specification")
    except (json.JSONDecodeError, AttributeError) as error:
        raise OutdatedEnvironmentError(f"{marker} is not a record of this command ({error}).") from error
    wanted = _specification(torch_version)
    if recorded != wanted:
        changed = sorted(k for k in wanted if (recorded or {}).get(k) != wanted[k])
        raise OutdatedEnvironmentError(f"{venv} was made for other requirements (changed: {', '.join(changed)}).")
    versions = _probe(venv)
    package = Path(versions["sarf_bundle"]).resolve().parent
    if package != REPO_ROOT / "sarf_bundle":
        raise OutdatedEnvironmentError(f"{venv} imports sarf_bundle from {package}, not from {REPO_ROOT}.")
    return versions


def _pip(venv: Path, args: Sequence[str], log: Callable[[str], None]) -> None:
    """``pip install`` into the environment, with its torch pin added to any constraints the caller set.

    Raises:
        LabelEnvironmentError: when pip fails, with the command.
    """
    env = dict(os.environ)
    env["PIP_CONSTRAINT"] = " ".join(c for c in (os.environ.get("PIP_CONSTRAINT", ""), str(venv / CONSTRAINTS)) if c)
    command = [str(environment_python(venv)), "-m", "pip", "install", "--progress-bar", "off", *args]
    log(f"$ {' '.join(command)}")
    if subprocess.run(command, check=False, env=env).returncode != 0:
        raise LabelEnvironmentError(f"`{' '.join(command)}` failed; pip's output above says why.")


def create_environment(venv: str | Path, torch_version: str = TORCH_VERSION, log: Callable[[str], None] = print) -> dict[str, str]:
    """Make the label environment from scratch (an existing one in the folder is cleared first).

    Args:
        venv: the environment's folder; it must not exist, be empty, or be a virtual environment.
        torch_version: the torch version to install and pin.
        log: where progress messages go.

    Returns:
        The versions installed (see :func:`check_environment`).

    Raises:
        LabelEnvironmentError: when the folder is something else, or an installation step fails.
    """
    venv = Path(venv).absolute()
    if venv.exists() and not (venv / "pyvenv.cfg").is_file() and (not venv.is_dir() or any(venv.iterdir())):
        raise LabelEnvironmentError(f"{venv} exists and is not a virtual environment; remove it or choose another --venv.")
    start = time.monotonic()
    log(f"Creating {venv} with Python {platform.python_version()} ({sys.executable})")
    EnvBuilder(clear=True, with_pip=True).create(venv)
    (venv / CONSTRAINTS).write_text(f"torch=={torch_version}\n")
    _pip(venv, [f"torch=={torch_version}"], log)
    _pip(venv, [*REQUIREMENTS, "-e", str(REPO_ROOT)], log)
    versions = _probe(venv)
    record = {"specification": _specification(torch_version), "versions": versions, "seconds": round(time.monotonic() - start, 1)}
    (venv / MARKER).write_text(json.dumps(record, indent=2) + "\n")  # last: its presence marks a finished environment
    log(f"Created {venv} in {record['seconds']} s")
    return versions


@contextlib.contextmanager
def _locked(venv: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<venv>.lock`` (where ``fcntl`` exists), so that one process builds at a time."""
    lock_path = venv.with_name(venv.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        try:
            import fcntl
        except ImportError:  # Windows: no lock
            yield
            return
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_environment(
    venv: str | Path, torch_version: str = TORCH_VERSION, rebuild: bool = False, log: Callable[[str], None] = print
) -> dict[str, str]:
    """Reuse the label environment when it is complete and current, or make it when it is missing or out of date.

    Args:
        venv: the environment's folder.
        torch_version: the torch version to install and pin.
        rebuild: make it again even when it is current.
        log: where progress messages go.

    Returns:
        The versions in the environment (see :func:`check_environment`).

    Raises:
        LabelEnvironmentError: when it has to be made and that fails, or when it is current but the server's
            modules or the inference config do not load in it (a problem of the code, which making it again would not fix).
    """
    venv = Path(venv).absolute()
    with _locked(venv):
        if not rebuild:
            try:
                versions = check_environment(venv, torch_version)
            except OutdatedEnvironmentError as problem:
                log(f"{problem} Making it.")
            else:
                log(f"{venv} is up to date.")
                return versions
        return create_environment(venv, torch_version, log)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (0: the environment is ready, 1: it is not)."""
    parser = argparse.ArgumentParser(
        prog="python -m sarf_bundle.label_app.environment",
        description="Create (or reuse) the virtual environment that runs this bundle's MONAI Label server.",
    )
    parser.add_argument("--venv", default=str(REPO_ROOT / ".venv-label"), help="its folder (default: .venv-label in the repository)")
    parser.add_argument("--torch", default=TORCH_VERSION, help=f"torch version to install and pin (default: {TORCH_VERSION})")
    parser.add_argument("--rebuild", action="store_true", help="make it again even when it is up to date")
    parser.add_argument("--check", action="store_true", help="only check it; exit status 1 when it is missing or out of date")
    args = parser.parse_args(argv)
    try:
        if args.check:
            versions = check_environment(args.venv, args.torch)
        else:
            versions = ensure_environment(args.venv, args.torch, rebuild=args.rebuild)
    except LabelEnvironmentError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(versions, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
