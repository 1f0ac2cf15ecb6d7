"""``mlexec rerun RUN_ID``: a recorded run, run again as it was.

From the run's record (:mod:`mlexec_core.reproduce`): the code at the recorded commit with
the recorded patch applied (a work tree of mlexec's own, under its state folder), or the
directory when its digest still matches (else a refusal listing the changed files, unless
``--allow-changed-code``; ``--from-snapshot`` runs the recorded files), the environment built
**from the recorded lock** (``RunOptions.environment_lock``), the same parameters, entry point,
backend, config, resources, docker args and restart options.  ``-P``, ``-R``, ``-b``, ``-c``
override one thing each; the new run records what was overridden and which run it reruns
(tag ``mlexec.rerunOf``).

Everything that can be checked is checked before a run exists: a commit that is gone, a
changed directory, a secret the record left out; an environment that cannot be built again
(a version no longer on the index, an image no longer anywhere) fails while it is prepared,
which is before the run is created too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any, Mapping, Sequence

from attrs import frozen

from mlexec_core.errors import MlexecError, UsageError
from mlexec_core.pipeline.options import RunOptions
from mlexec_core.reproduce import LOCK, PATCH, REDACTED, RUN_JSON, SNAPSHOT

RERUN_TAG = "mlexec.rerunOf"
OVERRIDES_TAG = "mlexec.rerun.overrides"


@frozen
class Recorded:
    """A run's record as read back from the store."""

    run_id: str
    record: dict
    lock_text: str | None
    patch: bytes | None
    snapshot: bytes | None


def read_record(store: Any, run_id: str) -> Recorded:
    """The record of ``run_id``; one clear error when the run has none (made by ``mlflow run``,
    or before mlexec recorded runs), with the ``mlexec run`` command that comes closest."""
    status, tags, _ = store.run_info(run_id)  # no such run: TrackingError naming it
    data = store.read_artifact(run_id, RUN_JSON)
    if data is None:
        raise MlexecError(f"run {run_id} has no mlexec record ({RUN_JSON}): it was made by `mlflow run` or by "
                          "an mlexec from before runs recorded what they ran, so its code and environment "
                          "cannot be had again exactly",
                          hint="run it afresh with what the store knows:\n  " + closest_command(store, run_id, tags))
    try:
        record = json.loads(data)
    except ValueError:
        raise MlexecError(f"run {run_id}: {RUN_JSON} is not readable JSON") from None
    lock = store.read_artifact(run_id, LOCK) if (record.get("environment") or {}).get("file") else None
    patch = store.read_artifact(run_id, PATCH) if record["source"].get("patch") else None
    snapshot = store.read_artifact(run_id, SNAPSHOT) if record["source"].get("snapshot") else None
    return Recorded(run_id, record, lock.decode() if lock is not None else None, patch, snapshot)


def closest_command(store: Any, run_id: str, tags: Mapping[str, str]) -> str:
    """``mlexec run`` with what MLflow recorded of a run: its source, commit, entry point, params."""
    params = store.run_params(run_id)
    source = tags.get("mlflow.source.name") or "<project>"
    words = ["mlexec", "run", source]
    if tags.get("mlflow.project.entryPoint", "main") != "main":
        words += ["-e", tags["mlflow.project.entryPoint"]]
    commit = tags.get("mlflow.source.git.commit")
    if commit and not source.startswith(("/", "file:")):
        words += ["--version", commit]
    for key in sorted(params):
        words += ["-P", f"{key}={params[key]}"]
    if tags.get("mlflow.project.env"):
        words += ["--env-manager", tags["mlflow.project.env"]]
    line = " ".join(shlex.quote(w) for w in words)
    if commit and source.startswith(("/", "file:")):
        line += f"   # with the work tree at commit {commit}"
    return line


def rerun_options(recorded: Recorded, *, parameters: Sequence[str] = (), resources: Sequence[str] = (),
                  backend: str | None = None, backend_config: str | None = None,
                  allow_changed_code: bool = False, from_snapshot: bool = False,
                  experiment_name: str | None = None, experiment_id: str | None = None,
                  run_name: str | None = None) -> tuple[RunOptions, list[str]]:
    """The :class:`RunOptions` that run ``recorded`` again, and notes on what is reused."""
    from mlexec_core.plugin.interfaces import EnvironmentLock

    record = recorded.record
    notes: list[str] = []
    uri, version = _code(recorded, allow_changed_code, from_snapshot, notes)
    overrides = [f"-P {p}" for p in parameters] + [f"-R {r}" for r in resources]
    values = {name: p["value"] for name, p in record["parameters"].items()}
    values.update(record.get("extra_parameters") or {})
    for item in parameters:
        name, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"-P {item!r}: expected NAME=VALUE")
        values[name.strip()] = value
    asked = dict(record.get("resources") or {})
    for item in resources:
        name, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"-R {item!r}: expected NAME=VALUE")
        asked[name.strip()] = value
    config: Any = record.get("backend_config") or None
    if backend is not None and backend != record["backend"]:
        overrides.append(f"-b {backend}")
        config = None  # another backend's config would not fit
    if backend_config is not None:
        overrides.append("-c")
        config = backend_config
    elif config and REDACTED in json.dumps(config):
        secret = [k for k, v in _flat(config).items() if v == REDACTED]
        raise UsageError(f"the backend config of run {recorded.run_id} had secrets that were not recorded "
                         f"({', '.join(secret)})", hint="pass the config again with -c FILE")
    env = record.get("environment") or {}
    lock = None
    if recorded.lock_text is not None and env.get("kind"):
        lock = EnvironmentLock(kind=env["kind"], text=recorded.lock_text, packages=env.get("packages") or {},
                               details=env.get("details") or {})
        if lock.kind == "python":
            notes.append("environment: the local one, as the run had it (recorded, not enforced)")
        else:
            notes.append(f"environment: from the recorded {lock.kind} lock, not from the project's spec")
    elif record.get("env_manager") not in (None, "local"):
        notes.append("environment: the run recorded no lock; built from the project's spec")
    restarts = record.get("restarts") or None
    docker_args = []
    for name, value in record.get("docker_args") or []:
        docker_args.append(name if value is None else f"{name}={value}")
    experiment = record.get("experiment") or {}
    options = RunOptions(
        uri=uri, version=version, entry_point=record["entry_point"], parameters=values,
        docker_args=tuple(docker_args), resources=asked, backend=backend or record["backend"],
        backend_config=config, env_manager=record.get("env_manager"),
        experiment_name=experiment_name, run_name=run_name,
        experiment_id=experiment_id or (None if experiment_name else experiment.get("id")),
        restart_on_exit=tuple(restarts["exit_codes"]) if restarts and restarts.get("exit_codes") else None,
        max_restarts=restarts.get("max_restarts") if restarts else None,
        tags={RERUN_TAG: recorded.run_id, **({OVERRIDES_TAG: "; ".join(overrides)} if overrides else {})},
        extras={"rerun_of": {"run_id": recorded.run_id, "overrides": overrides}},
        environment_lock=lock,
    )
    return options, notes


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


# -- the code ---------------------------------------------------------------------------------


def _code(recorded: Recorded, allow_changed: bool, from_snapshot: bool, notes: list[str]) -> tuple[str, str | None]:
    """``(uri, version)`` of the code the run ran."""
    source = recorded.record["source"]
    kind = source.get("kind")
    if kind != "local":  # a git URI: the commit says it all
        notes.append(f"code: {source['uri']} at commit {source.get('commit')}")
        return source["uri"], source.get("commit") or source.get("version")
    if source.get("root") and source.get("commit"):
        tree = work_tree(Path(source["root"]), source["commit"], recorded.patch)
        where = tree / source["subdirectory"] if source.get("subdirectory") else tree
        notes.append(f"code: commit {source['commit'][:12]}" + (" with the recorded uncommitted changes"
                                                                if recorded.patch else "") + f", in {tree}")
        return str(where), None
    if source.get("digest"):
        return _directory(recorded, Path(source["uri"]), allow_changed, from_snapshot, notes), None
    notes.append(f"code: {source['uri']} (the run recorded neither a commit nor a digest)")
    return source["uri"], None


def _directory(recorded: Recorded, directory: Path, allow_changed: bool, from_snapshot: bool,
               notes: list[str]) -> str:
    from mlexec_core.reproduce.source import changed_files, digest_of, hashed_files

    source = recorded.record["source"]
    if from_snapshot or not directory.is_dir():
        if recorded.snapshot is None:
            raise MlexecError(f"the run's folder {directory} is gone" if not directory.is_dir() else
                              f"run {recorded.run_id} kept no snapshot of its files (they were over the cap)",
                              hint="the record has only the files' digest: the code cannot be had again")
        folder = _unpacked(recorded.snapshot, source["digest"])
        notes.append(f"code: the run's own files (its snapshot), in {folder}")
        return str(folder)
    if digest_of(hashed_files(directory)) == source["digest"]:
        notes.append(f"code: {directory}, unchanged since the run")
        return str(directory)
    changed = changed_files(directory, source.get("files") or {})
    if allow_changed:
        notes.append(f"code: {directory} AS IT IS NOW ({len(changed)} files changed since the run: "
                     "--allow-changed-code)")
        return str(directory)
    shown = "\n  ".join(changed[:20]) + (f"\n  ... and {len(changed) - 20} more" if len(changed) > 20 else "")
    hint = "--from-snapshot runs the files the run had; --allow-changed-code runs the folder as it is now" \
        if recorded.snapshot is not None else "--allow-changed-code runs the folder as it is now"
    raise MlexecError(f"the code in {directory} changed since run {recorded.run_id}:\n  {shown}", hint=hint)


def _state_folder(name: str) -> Path:
    from mlexec_core.xdg import state_home

    folder = state_home() / "reruns" / name
    folder.parent.mkdir(parents=True, exist_ok=True)
    return folder


def _unpacked(snapshot: bytes, digest: str) -> Path:
    """The snapshot's files in a folder of mlexec's own, named by their digest (made once)."""
    import io
    import tarfile
    import tempfile

    folder = _state_folder("snapshot-" + digest.split(":")[-1][:16])
    if (folder / ".mlexec-ready").exists():
        return folder
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    with tarfile.open(fileobj=io.BytesIO(snapshot), mode="r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and not m.name.startswith("/")
                   and ".." not in Path(m.name).parts]  # what mlexec wrote: plain files under the folder
        tar.extractall(tmp, members=members)
    (tmp / ".mlexec-ready").touch()
    try:
        os.rename(tmp, folder)
    except OSError:  # made meanwhile by another mlexec
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _git(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=300)


def work_tree(root: Path, commit: str, patch: bytes | None) -> Path:
    """A work tree of mlexec's own at ``commit`` of the repository at ``root``, with ``patch``
    applied: made once per (commit, patch) and reused."""
    import shutil
    import tempfile

    key = commit[:12] + ("-" + hashlib.sha256(patch).hexdigest()[:12] if patch else "")
    folder = _state_folder("git-" + key)
    if (folder / ".git" / "mlexec-ready").exists():
        return folder
    if not (root / ".git").exists() and _git(root, "rev-parse", "--git-dir").returncode != 0:
        raise MlexecError(f"the run's repository {root} is gone (the run was made from commit {commit})",
                          hint="clone the repository there again, or rerun from a copy that has the commit")
    if _git(root, "cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        raise MlexecError(f"commit {commit} is no longer in the repository {root}",
                          hint="fetch it back (git fetch origin ...) or check out a branch that has it")
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        for args in (("clone", "--quiet", "--no-checkout", "--shared", str(root), str(tmp)),):
            proc = subprocess.run(["git", *args], capture_output=True, text=True, timeout=300)
            if proc.returncode != 0:
                raise MlexecError(f"cannot make a work tree of {root}: {proc.stderr.strip()[:300]}")
        proc = _git(tmp, "-c", "advice.detachedHead=false", "checkout", "--quiet", commit)
        if proc.returncode != 0:
            raise MlexecError(f"cannot check out commit {commit}: {proc.stderr.strip()[:300]}")
        if patch:
            (tmp / ".git" / "mlexec-source.patch").write_bytes(patch)
            proc = _git(tmp, "apply", "--binary", "--whitespace=nowarn", ".git/mlexec-source.patch")
            if proc.returncode != 0:
                raise MlexecError(f"the recorded uncommitted changes do not apply to commit {commit}: "
                                  f"{proc.stderr.strip()[:300]}")
        (tmp / ".git" / "mlexec-ready").touch()
        try:
            os.rename(tmp, folder)
        except OSError:  # made meanwhile by another mlexec
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
