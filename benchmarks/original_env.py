"""The original fedmed 0.3.2 in a virtual environment of its own, for side-by-side runs.

``python benchmarks/original_env.py`` creates ``benchmarks/.venv-fedmed032``
(git-ignored) and installs ``fedmed==0.3.2 requests scipy`` into it (the
original imports ``requests`` and ``scipy`` without declaring them). The
runner calls :func:`ensure`; when the environment cannot be made (no network,
say) it gets ``None`` and a note saying why, and reports the original's
columns as not measured.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv-fedmed032"
REQUIREMENTS = ["fedmed==0.3.2", "requests", "scipy"]
CHECK = "import importlib.metadata as m, fedmed, requests, scipy, waitress; print(m.version('fedmed'))"
INSTALL_TIMEOUT = 900


def python_of(env: Path = VENV) -> Path:
    return env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def clean_environ() -> dict[str, str]:
    """The environment for the venv's interpreter: nothing that would put this checkout's fedmed first."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def installed_version(python: Path) -> str | None:
    """The fedmed version the venv imports (run from its own folder), or None."""
    if not python.exists():
        return None
    done = subprocess.run(
        [str(python), "-c", CHECK], capture_output=True, text=True, cwd=str(VENV), env=clean_environ(), timeout=120
    )
    return done.stdout.strip() if done.returncode == 0 else None


def ensure(verbose: bool = False) -> tuple[Path | None, str]:
    """``(python, note)``: the venv's interpreter once fedmed 0.3.2 imports there, else ``(None, why)``."""
    python = python_of()
    if installed_version(python) == "0.3.2":
        return python, "fedmed 0.3.2 in benchmarks/.venv-fedmed032"
    try:
        if not python.exists():
            venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *REQUIREMENTS],
            capture_output=not verbose, text=True, env=clean_environ(), timeout=INSTALL_TIMEOUT,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"could not create the venv: {type(exc).__name__}: {exc}"
    if done.returncode != 0:
        tail = " ".join((done.stderr or "").strip().splitlines()[-2:])[:300]
        return None, f"pip install {' '.join(REQUIREMENTS)} failed (no network?): {tail}"
    version = installed_version(python)
    if version != "0.3.2":
        return None, f"the venv imports fedmed {version!r}, not 0.3.2"
    return python, "fedmed 0.3.2 in benchmarks/.venv-fedmed032"


def main() -> int:
    python, note = ensure(verbose=True)
    print(note if python is None else f"{note}: {python}")
    return 0 if python is not None else 1


if __name__ == "__main__":
    sys.exit(main())
