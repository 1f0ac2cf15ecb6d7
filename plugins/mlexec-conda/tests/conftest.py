"""Fixtures for the conda plugin's tests: a real local conda channel and a stand-in conda executable.

No public conda channel is reachable from the test machines, so the session
builds its own ``file://`` channel of tiny noarch packages (made here with
tarfile, indexed by rattler), and the rattler engine solves and installs real
prefixes from it.  One of the packages is a stand-in ``python``: a venv-style
``pyvenv.cfg`` plus ``bin/python`` linking to the interpreter running the
tests, so the ``pip:`` part (uv) can be tested on rattler-built prefixes too.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from mlexec_core.testing import build_wheel

pytest_plugins = ["mlexec_core.testing"]


def make_conda_package(channel: Path, name: str, version: str, depends=(), files=None, symlinks=None,
                       build: str = "0") -> Path:
    """A noarch conda package (``.tar.bz2``); by default it ships ``bin/hello-<name>``."""
    if files is None:
        files = {f"bin/hello-{name}": f"#!/bin/sh\necho hello from {name} {version}\n"}
    symlinks = symlinks or {}
    subdir = channel / "noarch"
    subdir.mkdir(parents=True, exist_ok=True)
    index = {"name": name, "version": version, "build": build, "build_number": 0, "depends": list(depends),
             "noarch": "generic", "subdir": "noarch", "license": "MIT", "timestamp": 1700000000000}
    paths = []
    path = subdir / f"{name}-{version}-{build}.tar.bz2"
    with tarfile.open(path, "w:bz2") as tar:
        def add(arcname: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(arcname)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))

        for rel, text in files.items():
            data = text.encode()
            add(rel, data, 0o755 if rel.startswith("bin/") else 0o644)
            paths.append({"_path": rel, "path_type": "hardlink", "sha256": hashlib.sha256(data).hexdigest(),
                          "size_in_bytes": len(data)})
        for rel, target in symlinks.items():
            info = tarfile.TarInfo(rel)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
            paths.append({"_path": rel, "path_type": "softlink"})
        add("info/index.json", json.dumps(index).encode())
        add("info/paths.json", json.dumps({"paths_version": 1, "paths": paths}).encode())
        add("info/files", ("\n".join([*files, *symlinks]) + "\n").encode())
    return path


def make_python_package(channel: Path) -> Path:
    """A stand-in ``python`` package: a venv-style ``pyvenv.cfg`` and ``bin/python`` linking to this interpreter."""
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    version = ".".join(map(str, sys.version_info[:3]))
    return make_conda_package(channel, "python", version, files={
        "pyvenv.cfg": f"home = {os.path.dirname(base)}\ninclude-system-site-packages = false\nversion = {version}\n",
    }, symlinks={"bin/python": base})


def index_channel(channel: Path) -> None:
    from rattler.index import index_fs

    asyncio.run(index_fs(channel))


def make_wheel(dest: Path, name: str = "greet", version: str = "1.0") -> Path:
    """A pure-Python wheel with a ``<name>`` console script printing ``hello from pip <name> <version>``."""
    return build_wheel(dest, name, version, {f"{name}.py": f"def main():\n    print('hello from pip {name} {version}')\n"},
                       entry_points=f"[console_scripts]\n{name} = {name}:main\n")


@pytest.fixture(scope="session")
def channel(tmp_path_factory) -> str:
    """``file://`` URL of a local channel: leaf 1.0/2.0, mid -> leaf, top -> mid + leaf <2, python, activated,
    pymod (a Python package in site-packages, with one file that does not compile)."""
    root = tmp_path_factory.mktemp("channel")
    make_conda_package(root, "leaf", "1.0")
    make_conda_package(root, "leaf", "2.0")
    make_conda_package(root, "mid", "1.0", depends=["leaf"])
    make_conda_package(root, "top", "1.0", depends=["mid", "leaf <2"])
    make_conda_package(root, "activated", "1.0", files={
        "etc/conda/activate.d/activated.sh": "export ACTIVATED_BY_SCRIPT=yes\n",
    })
    make_python_package(root)
    site = f"lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"
    make_conda_package(root, "pymod", "1.0", depends=["python"], files={  # Python files, shipped uncompiled
        f"{site}/pymod/__init__.py": "VALUE = 42\n",
        f"{site}/pymod/tests/data/py2_only.py": "print 'this is Python 2'\n",  # does not compile
    })
    index_channel(root)
    return root.as_uri()


@pytest.fixture(scope="session")
def rattler_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rattler-cache")


@pytest.fixture
def env_root(tmp_path) -> Path:
    return tmp_path / "envs"


@pytest.fixture
def conda_env(env_root, rattler_cache) -> dict[str, str]:
    """Variables for the CLI: a private env cache, the rattler engine, a short network timeout."""
    return {
        "MLEXEC_ENV_ROOT": str(env_root),
        "RATTLER_CACHE_DIR": str(rattler_cache),
        "MLEXEC_CONDA_EXE": "rattler",
        "MLEXEC_CONDA_TIMEOUT": "5",
        "UV_CACHE_DIR": str(rattler_cache / "uv"),
        "UV_OFFLINE": "1",
    }


def conda_yaml(channels, dependencies, pip=None, extra: str = "") -> str:
    deps = "".join(f"  - {d}\n" for d in dependencies)
    if pip:
        deps += "  - pip:\n" + "".join(f"    - {p}\n" for p in pip)
    chans = "".join(f"  - {c}\n" for c in channels)
    return f"name: demo\nchannels:\n{chans}dependencies:\n{deps}{extra}"


@pytest.fixture
def conda_project(project):
    """A project with a conda.yaml and one ``main`` entry point running ``command``."""

    def make(channels, dependencies, command, pip=None, extra="", where="proj", files=None):
        mlproject = f"""\
            name: demo
            entry_points:
              main:
                command: {json.dumps(command)}
            """
        return project(mlproject, {"conda.yaml": conda_yaml(channels, dependencies, pip, extra), **(files or {})},
                       where=where)

    return make


STANDIN = textwrap.dedent('''\
    #!{python}
    """A stand-in for conda/mamba/micromamba: records its arguments, then creates the prefix."""
    import json, os, subprocess, sys, time
    args = sys.argv[1:]
    with open(os.environ["STANDIN_LOG"], "a") as log:
        log.write(json.dumps({{"exe": os.path.basename(sys.argv[0]), "args": args}}) + "\\n")
    prefix = args[args.index("--prefix") + 1]
    spec = open(args[args.index("--file") + 1]).read()
    if os.path.exists(prefix):
        sys.exit("CondaValueError: prefix already exists: " + prefix)
    if "nosuch" in spec:
        print("PackagesNotFoundError: The following packages are not available from current channels:",
              file=sys.stderr)
        print("  - nosuch", file=sys.stderr)
        sys.exit(1)
    if "python" in spec:
        subprocess.run([os.environ["STANDIN_UV"], "venv", "-q", prefix, "--python", sys.executable], check=True)
    os.makedirs(os.path.join(prefix, "conda-meta"), exist_ok=True)
    time.sleep(float(os.environ.get("STANDIN_SLEEP", "0")))  # half-way: the prefix exists, unfinished
    os.makedirs(os.path.join(prefix, "bin"), exist_ok=True)
    with open(os.path.join(prefix, "standin-environment.yml"), "w") as f:
        f.write(spec)
    hello = os.path.join(prefix, "bin", "hello-standin")
    with open(hello, "w") as f:
        f.write("#!/bin/sh\\necho hello from the stand-in\\n")
    os.chmod(hello, 0o755)
''')


class Standin:
    """A stand-in executable written by a test, and the calls it recorded."""

    def __init__(self, exe: Path, log: Path, env: dict[str, str]) -> None:
        self.exe, self.log, self.env = exe, log, env

    @property
    def folder(self) -> Path:
        return self.exe.parent

    def calls(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []

    def path_env(self) -> dict[str, str]:
        """``env`` plus ``PATH`` with the stand-in first (and no MLEXEC_CONDA_EXE or CONDA_EXE before it)."""
        return {**self.env, "MLEXEC_CONDA_EXE": "", "CONDA_EXE": "",  # a conda-activated shell's conda would win
                "PATH": f"{self.folder}{os.pathsep}{os.environ.get('PATH', '')}"}


@pytest.fixture
def standin(tmp_path):
    """``standin(name="conda", folder=None)`` writes a stand-in conda-compatible executable."""
    from uv import find_uv_bin

    def make(name: str = "conda", folder: Path | None = None) -> Standin:
        folder = folder or tmp_path / "standin-bin"
        folder.mkdir(parents=True, exist_ok=True)
        exe = folder / name
        exe.write_text(STANDIN.format(python=sys.executable))
        exe.chmod(0o755)
        return Standin(exe, tmp_path / "standin.log", {"STANDIN_LOG": str(tmp_path / "standin.log"),
                                                        "STANDIN_UV": find_uv_bin()})

    return make


@pytest.fixture
def wheel():
    """``wheel(folder, name="greet", version="1.0")``: write a tiny wheel with a console script."""
    return make_wheel


@pytest.fixture
def channel_tools():
    """The helpers above for a test that makes a channel of its own: ``.package``
    (:func:`make_conda_package`), ``.python``, ``.index`` and ``.wheel``."""
    from types import SimpleNamespace

    return SimpleNamespace(package=make_conda_package, python=make_python_package, index=index_channel,
                           wheel=make_wheel)
