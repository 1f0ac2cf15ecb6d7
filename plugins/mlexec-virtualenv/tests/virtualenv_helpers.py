"""Helpers shared by the virtualenv plugin's tests (a module name unique in the repository)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path


WRAPPER = """\
#!{python}
import json, os, sys, time
real = {real!r}
log = os.environ.get("UVWRAP_LOG")
if log:
    with open(log, "a") as f:
        f.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1:3] == ["pip", "install"]:
    if os.environ.get("UVWRAP_PAUSE"):  # say where we are, then hang until killed
        with open(os.environ["UVWRAP_PAUSE"], "w") as f:
            f.write(str(os.getpid()))
        time.sleep(300)
    time.sleep(float(os.environ.get("UVWRAP_DELAY", "0")))
os.execv(real, [real, *sys.argv[1:]])
"""


class UvWrapper:
    def __init__(self, path: Path, log: Path) -> None:
        self.path = path
        self.log = log

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def subcommands(self) -> list[str]:
        return [" ".join(c[:2]) if c and c[0] == "pip" else c[0] for c in self.calls()]


def env_dirs(root: Path) -> list[str]:
    """What is in the environment root, besides its lock and interpreter bookkeeping."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.name not in (".locks", ".interpreters.json"))


def need(condition: bool, piece: str, reason: str, how: str) -> None:
    """Skip when ``piece``, something the test needs, is missing; fail instead under CI."""
    if not condition:
        from mlexec_core.testing import missing_infrastructure

        missing_infrastructure(piece, reason, how=how)


#: A command that reports what the environment it runs in looks like.
REPORT = textwrap.dedent("""\
    import importlib, json, os, sys
    mods = {}
    for name in ("six", "idna", "numpy"):
        try:
            mods[name] = importlib.import_module(name).__version__
        except ImportError:
            mods[name] = None
    json.dump({"version": "%d.%d.%d" % sys.version_info[:3], "prefix": sys.prefix,
               "virtual_env": os.environ.get("VIRTUAL_ENV"), "modules": mods,
               "path0": os.environ["PATH"].split(os.pathsep)[0]}, open(os.environ["REPORT"], "w"))
""")
