"""Every run records what it ran, so that it can be run again the same way and compared.

The record is a few artifacts under ``mlexec/`` (docs/reproducing.md):

* ``mlexec/run.json``: the source, entry point, typed parameters, rendered command, backend
  and its config (secrets redacted), environment manager, resources, docker args,
  experiment, mlexec's and every plugin's version, Python and platform;
* ``mlexec/environment.lock``: what the environment really contained
  (:class:`~mlexec_core.plugin.interfaces.EnvironmentLock`), when its manager knows;
* ``mlexec/source.patch``: the uncommitted changes of a git work tree, or
  ``mlexec/source.tar.gz``: the files of a directory that is not one (under the cap).

:func:`record_files` builds them; the core hands them to trackers through
``mlexec_run_record`` once the run exists, before the job starts.
"""

from __future__ import annotations

import json
import platform
import re
import sys
from typing import Any, Mapping

from mlexec_core.pipeline.plan import RunPlan

FORMAT = 1
RUN_JSON = "mlexec/run.json"
LOCK = "mlexec/environment.lock"
PATCH = "mlexec/source.patch"
SNAPSHOT = "mlexec/source.tar.gz"
DIRTY_TAG = "mlexec.source.dirty"
DIGEST_TAG = "mlexec.source.digest"
RECORD_TAG = "mlexec.record"
#: Config keys whose values are never recorded.
SECRET = re.compile(r"token|passw|secret|credential|api[-_]?key|private[-_]?key|auth", re.IGNORECASE)
REDACTED = "<redacted>"


RECORD_VAR = "MLEXEC_RECORD"


def recording() -> bool:
    """``MLEXEC_RECORD=off`` (or ``0``, ``false``, ``no``) turns the record off: runs are not
    reproducible then (``mlexec rerun`` says the run has no record)."""
    import os

    return os.environ.get(RECORD_VAR, "").strip().lower() not in ("0", "off", "false", "no")


def redact_config(value: Any, key: str = "") -> Any:
    """``value`` with every value under a key that looks secret replaced by ``<redacted>``."""
    if key and SECRET.search(key) and value not in (None, "", {}, []):
        return REDACTED
    if isinstance(value, Mapping):
        return {k: redact_config(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_config(v) for v in value]
    return value


def record_files(plan: RunPlan, environment: Any, plugin_versions: Mapping[str, str],
                 experiment_id: str | None) -> tuple[dict[str, bytes], dict[str, str], list[str]]:
    """``(artifacts, tags, warnings)`` recording what ``plan`` runs, in ``environment``
    (a :class:`~mlexec_core.plugin.interfaces.PreparedEnvironment` or ``None``)."""
    from mlexec_core.reproduce.source import capture
    from mlexec_core.version import __version__

    warnings: list[str] = []
    files: dict[str, bytes] = {}
    tags: dict[str, str] = {RECORD_TAG: str(FORMAT)}
    code = capture(plan)
    source: dict[str, Any] = {"uri": plan.source.uri, "kind": plan.source.kind, "version": plan.source.version,
                              "commit": code.commit, "repo_url": plan.source.git_repo_url,
                              "subdirectory": code.subdirectory or None, "dirty": code.dirty}
    if code.kind == "git":
        source["root"] = code.root
        tags[DIRTY_TAG] = "true" if code.dirty else "false"
        if code.patch is not None:
            files[PATCH] = code.patch
            source["patch"] = PATCH
    elif code.kind == "directory":
        tags[DIGEST_TAG] = code.digest or ""
        source["digest"] = code.digest
        source["files"] = dict(code.files)
        if code.snapshot is not None:
            files[SNAPSHOT] = code.snapshot
            source["snapshot"] = SNAPSHOT
        elif code.snapshot_skipped:
            warnings.append(code.snapshot_skipped)
    env_record: dict[str, Any] | None = None
    lock = getattr(environment, "lock", None)
    if environment is not None:
        env_record = {"name": environment.name, "location": environment.location}
        if lock is not None:
            files[LOCK] = lock.text.encode()
            env_record.update({"kind": lock.kind, "file": LOCK, "packages": dict(lock.packages),
                               "details": dict(lock.details)})
    tracking = plan.tracking
    record = {
        "format": FORMAT,
        "source": source,
        "entry_point": plan.entry_point.name,
        "parameters": {name: {"value": p.value, "type": p.type.value if hasattr(p.type, "value") else str(p.type),
                              "source": p.source} for name, p in plan.parameters.items()},
        "extra_parameters": dict(plan.extra_parameters),
        "command": plan.command,
        "backend": plan.backend,
        "backend_config": redact_config(dict(plan.backend_config_values)),
        "env_manager": plan.env_manager_requested or plan.env_manager,
        "environment": env_record,
        "resources": plan.resources.shown(),
        "docker_args": [list(pair) for pair in plan.docker_args],
        "restarts": {"exit_codes": sorted(plan.restarts.exit_codes), "max_restarts": plan.restarts.max_restarts}
        if plan.restarts.asked else None,
        "experiment": {"id": experiment_id or tracking.experiment_id, "name": tracking.experiment_name},
        "rerun_of": plan.options.get("rerun_of"),
        "mlexec": {"version": __version__, "plugins": dict(sorted(plugin_versions.items()))},
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(),
                   "executable": sys.executable},
        "platform": {"system": platform.system(), "machine": platform.machine(), "release": platform.release()},
    }
    files[RUN_JSON] = json.dumps(record, indent=2, sort_keys=False, default=str).encode() + b"\n"
    return files, tags, warnings
