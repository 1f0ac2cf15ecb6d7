"""Helpers the benchmark scripts share (``benchmarks/``, ``plugins/*/benchmarks/``).

They time whole commands, mlexec and ``mlflow run`` alternately, and report
ratios; nothing here asserts a duration.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

#: The bin directory of the interpreter running the benchmark (its venv).
BIN = Path(sys.executable).parent


def tools() -> tuple[str, str]:
    """``(mlexec, mlflow)`` executables, preferring the benchmark interpreter's environment."""
    mlexec = shutil.which("mlexec", path=str(BIN)) or shutil.which("mlexec")
    mlflow = shutil.which("mlflow", path=str(BIN)) or shutil.which("mlflow")
    if not (mlexec and mlflow):
        raise SystemExit("run with the interpreter of the environment where mlexec and mlflow are installed")
    return mlexec, mlflow


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    """Wall seconds of ``cmd``; a failing command stops the benchmark with its stderr."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return elapsed
