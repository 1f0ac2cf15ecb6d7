"""Where mlexec keeps its files: ``$XDG_CACHE_HOME/mlexec``, else ``~/.cache/mlexec``;
and what must survive a cache clean-up (the local backend's leases, a run's checkpoints)
under ``$XDG_STATE_HOME/mlexec``, else ``~/.local/state/mlexec``.

A leaf module (``os`` and ``pathlib`` only): the environment cache, the source
cache, the parse cache and the final statuses kept locally all start here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping


def cache_home(environ: Mapping[str, str] | None = None) -> Path:
    """mlexec's folder in the user's cache: ``$XDG_CACHE_HOME/mlexec`` (``~/.cache/mlexec``)."""
    environ = os.environ if environ is None else environ
    return Path(environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "mlexec")


def state_home(environ: Mapping[str, str] | None = None) -> Path:
    """mlexec's folder in the user's state: ``$XDG_STATE_HOME/mlexec`` (``~/.local/state/mlexec``)."""
    environ = os.environ if environ is None else environ
    return Path(environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state"),
                "mlexec")
