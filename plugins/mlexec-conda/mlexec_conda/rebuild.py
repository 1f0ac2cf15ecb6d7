"""A conda prefix built again from a run's recorded explicit list (``mlexec rerun``).

No solver runs and no channel index is read: every package file is fetched from the very URL
the list names, its sha256 (or md5) is checked against the list, and rattler installs exactly
those files.  A package published to the channel since is never taken; a file that is no
longer where the list says, or whose contents changed, is one error naming every such package
before anything is installed.  The ``# pip:`` lines are installed again with uv, pinned,
without their dependencies (the list has them all).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from mlexec_core.errors import EnvironmentBuildError
from mlexec_core.installer import run_installer

from mlexec_conda.engines import tail_lines, network_timeout
from mlexec_conda.lock import Entry, entries, pip_requirements, platform_of

CONTEXT = "the run's mlexec/environment.lock"
HINT = ("the environment cannot be had again exactly: make the package files available at those URLs again, "
        "or run the project afresh with `mlexec run`")


def check_lock(text: str) -> list[Entry]:
    """The lock's packages, after the checks that need no network: a readable list, made for this platform."""
    from mlexec_conda.manager import conda_platform

    try:
        found = entries(text)
    except ValueError as exc:
        raise EnvironmentBuildError(f"the recorded explicit list is not readable: {exc}", context=CONTEXT) from None
    if not found:
        raise EnvironmentBuildError("the recorded explicit list names no packages", context=CONTEXT, hint=HINT)
    made_on, here = platform_of(text), conda_platform()
    foreign = [e.file_name for e in found if e.subdir not in ("noarch", here)]
    if foreign:
        raise EnvironmentBuildError(
            f"the recorded environment was made for {made_on or 'another platform'}; this machine is {here} "
            f"and cannot install {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}", context=CONTEXT,
            hint=f"rerun on a {made_on or 'matching'} machine")
    return found


async def _fetch(entry: Entry, dest: Path, client) -> str | None:
    """Put ``entry``'s file at ``dest``; ``None``, or why it could not be had."""
    from rattler.package_streaming import download_to_path

    parsed = urlparse(entry.url)
    try:
        if parsed.scheme == "file":
            shutil.copyfile(unquote(parsed.path), dest)
        else:
            await download_to_path(client, entry.url, dest)
    except FileNotFoundError:
        return "no such file"
    except Exception as exc:  # rattler's download errors (404, unreachable host ...)
        return tail_lines(str(exc), 2).replace("\n", " ") or type(exc).__name__
    digest = hashlib.sha256() if entry.sha256 else hashlib.md5() if entry.md5 else None
    if digest is not None:
        with open(dest, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        expected = entry.sha256 or entry.md5
        if digest.hexdigest() != expected:
            kind = "sha256" if entry.sha256 else "md5"
            return f"its contents changed since the run ({kind} {digest.hexdigest()[:16]}..., recorded " \
                   f"{expected[:16]}...)"
    return None


async def _build(found: list[Entry], prefix: Path, work: Path, reporter) -> None:
    import rattler
    from rattler import Client, RepoDataRecord

    client = Client(timeout=network_timeout())
    files = work / "packages"
    files.mkdir()
    with reporter.status(f"conda: fetching the {len(found)} recorded package file(s)"):
        problems = await asyncio.gather(*(_fetch(e, files / e.file_name, client) for e in found))
    missing = [f"{e.file_name} ({e.url}): {why}" for e, why in zip(found, problems) if why]
    if missing:
        raise EnvironmentBuildError(
            f"{len(missing)} recorded conda package(s) can no longer be had as the run had them:\n  "
            + "\n  ".join(missing), context=CONTEXT, hint=HINT)
    records = []
    for entry in found:
        record = await RepoDataRecord.from_package_archive(files / entry.file_name)
        records.append(record)  # its URL: the verified copy, so exactly those bytes are installed
    with reporter.status(f"conda: installing the {len(records)} recorded package(s) into {prefix.name}"):
        try:
            await rattler.install(records, target_prefix=prefix, cache_dir=work / "cache", show_progress=False,
                                  client=client)
        except Exception as exc:
            raise EnvironmentBuildError(f"installing the recorded packages failed: {tail_lines(str(exc), 10)}",
                                        context=CONTEXT) from None
    _restore_origins(prefix, found)


def _restore_origins(prefix: Path, found: list[Entry]) -> None:
    """conda-meta says where each package came from (its channel URL), not the verified copy it was
    installed from: what ``conda list`` shows, and what the prefix's own lock is made of."""
    by_file = {e.file_name: e for e in found}
    for meta in (prefix / "conda-meta").glob("*.json"):
        try:
            record = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        entry = by_file.get(record.get("fn", ""))
        if entry is None:
            continue
        record.update(url=entry.url, channel=entry.channel)
        if entry.sha256:
            record["sha256"] = entry.sha256
        if entry.md5:
            record["md5"] = entry.md5
        record.pop("extracted_package_dir", None)  # the copy is gone once the prefix is made
        (record.get("link") or {}).pop("source", None)
        tmp = meta.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, meta)


def _install_pip(requirements: list[str], prefix: Path, reporter) -> None:
    python = prefix / "bin" / "python"
    if not python.exists():
        raise EnvironmentBuildError("the recorded environment had pip packages but no python", context=CONTEXT)
    from uv import find_uv_bin

    file = prefix / ".mlexec-pip-recorded.txt"
    file.write_text("\n".join(requirements) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX")}
    env["UV_PYTHON_DOWNLOADS"] = "never"
    with reporter.status(f"conda: installing the {len(requirements)} recorded pip package(s) with uv"):
        proc = run_installer([find_uv_bin(), "pip", "install", "--python", str(python), "--no-deps", "-r",
                              str(file)], cwd=prefix, env=env, separate_stderr=True)
    if proc.returncode != 0:
        raise EnvironmentBuildError(
            f"installing the recorded pip packages again failed:\n{tail_lines(proc.stderr + proc.stdout)}",
            context=CONTEXT, hint="a pip package the run had is no longer on the index (uv's own message is "
                                  "above); make it available again, or run the project afresh with `mlexec run`")


def build_from_lock(text: str, prefix: Path, reporter) -> None:
    """Make ``prefix`` hold exactly what the explicit list ``text`` names (see the module)."""
    from mlexec_conda.engines import compile_bytecode

    found = check_lock(text)
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{prefix.name}-packages-", dir=prefix.parent))
    try:
        asyncio.run(_build(found, prefix, work, reporter))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    pip = pip_requirements(text)
    if pip:
        _install_pip(pip, prefix, reporter)
    compile_bytecode(prefix, reporter, CONTEXT)
    (prefix / ".mlexec-recorded.txt").write_text(text)
