"""Helpers for mlexec-slurm's tests: Slurm's own commands, run as the tests' witnesses."""

from __future__ import annotations

import subprocess


def slurm_cmd(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, f"{args}: {proc.stderr}"
    return proc


def queued_jobs() -> set[str]:
    return set(slurm_cmd("squeue", "-h", "-o", "%i").stdout.split())
