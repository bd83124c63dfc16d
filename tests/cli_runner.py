"""Run the ``meterlake`` command as a user does: a fresh process, a plain environment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m meterlake ARGS`` with captured text output (wide, so tables do not wrap)."""
    return subprocess.run(
        [sys.executable, "-m", "meterlake", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )
