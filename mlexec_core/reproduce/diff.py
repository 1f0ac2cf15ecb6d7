"""``mlexec diff RUN_A RUN_B``: what differs between two runs of a tracking store.

Three steps, each usable on its own:

* :func:`load_run` reads one run into a :class:`RunData`: its status and times, params,
  latest metrics and tags, and, when it carries the ``mlexec.record`` tag, its record
  (``mlexec/run.json``) and the patch of its uncommitted changes (``mlexec/source.patch``).
  On a sqlite store the run's rows are read directly; artifacts on this machine are read in
  place, others downloaded through ``MlflowClient`` into a temporary folder that is removed.
* :func:`compare` (pure) turns two of them into :class:`Section` s of :class:`Row` s,
  holding only what differs.
* :func:`to_json` and :func:`text_lines` (pure) render that.

When both runs carry a record, the record is compared (parameters and metrics always come
from MLflow).  When one does not (made by ``mlflow run``, another tool, or an mlexec from
before records), only what MLflow keeps for both is compared: params, metrics, status,
duration and the tags ``mlflow run`` sets too (``mlflow.source.git.commit``,
``mlflow.project.entryPoint`` ...), and a note says which run has no record.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import attrs
from attrs import frozen

from mlexec_core.errors import TrackingError
from mlexec_core.reproduce import DIGEST_TAG, DIRTY_TAG, PATCH, RECORD_TAG, RUN_JSON

#: Two durations count as different when they differ by more than this many seconds and ...
DURATION_SLACK_S = 1.0
#: ... by more than this fraction of the longer one (a run's duration is never exact).
DURATION_SLACK_RATIO = 0.1
#: The tags ``mlflow run`` sets too, compared when a run has no record: section -> (key, tag).
MLFLOW_TAGS = {
    "code": (("source", "mlflow.source.name"), ("commit", "mlflow.source.git.commit"),
             ("repo_url", "mlflow.source.git.repoURL")),
    "environment": (("environment", "mlflow.project.env"), ("image_id", "mlflow.docker.image.id")),
    "backend": (("backend", "mlflow.project.backend"), ("entry_point", "mlflow.project.entryPoint")),
}
TITLES = {"run": "Run", "parameters": "Parameters", "metrics": "Metrics (latest values)", "code": "Code",
          "files": "Files", "environment": "Environment", "packages": "Packages", "backend": "Backend",
          "mlexec": "mlexec"}


@frozen
class RunData:
    """One run, as :func:`compare` needs it."""

    run_id: str
    status: str
    name: str | None = None
    experiment_id: str | None = None
    #: Milliseconds since the epoch (``end_ms`` is ``None`` while the run goes on).
    start_ms: int | None = None
    end_ms: int | None = None
    params: Mapping[str, str] = attrs.field(factory=dict)
    #: Each metric's latest value.
    metrics: Mapping[str, float] = attrs.field(factory=dict)
    tags: Mapping[str, str] = attrs.field(factory=dict)
    #: ``mlexec/run.json``; ``None``: the run has none (or it could not be read: ``problem`` says why).
    record: Mapping[str, Any] | None = None
    #: ``mlexec/source.patch``, when the record names one.
    patch: bytes | None = None
    problem: str | None = None

    @property
    def duration_s(self) -> float | None:
        if self.start_ms is None or self.end_ms is None:
            return None
        return round((self.end_ms - self.start_ms) / 1000, 3)


@frozen
class Row:
    """One difference: ``key``'s value in run A and in run B (``None``: that run has none)."""

    key: str
    a: Any
    b: Any
    #: Shown after the values (``s`` for a duration).
    unit: str | None = None


@frozen
class Section:
    name: str
    title: str
    #: What the key column holds (``parameter``, ``file`` ...).
    what: str
    rows: tuple[Row, ...]


@frozen
class Comparison:
    a: RunData
    b: RunData
    sections: tuple[Section, ...]
    #: Said once, before the differences (which run has no record ...).
    notes: tuple[str, ...] = ()

    @property
    def identical(self) -> bool:
        return not self.sections


# -- loading ------------------------------------------------------------------------------------


def load_run(store, run_id: str) -> RunData:
    """``run_id`` of ``store`` (a :class:`~mlexec_core.builtins.mlflow.store.TrackingStore`);
    a :class:`TrackingError` naming it when the store has no such run."""
    if getattr(store, "kind", "") == "sqlite":
        status, tags, info = store.run_info(run_id)
        data = _sqlite_run(store, run_id, status, tags)
    else:
        data, info = _client_run(store, run_id)
    if RECORD_TAG not in data.tags:
        return data
    uri = info.get("artifact_uri", "")
    try:
        record = json.loads(read_artifact(store, run_id, uri, RUN_JSON).decode())
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError, TrackingError) as exc:
        return attrs.evolve(data, problem=f"its record {RUN_JSON} could not be read ({_why(exc)})")
    patch = None
    if (record.get("source") or {}).get("patch"):
        try:
            patch = read_artifact(store, run_id, uri, PATCH)
        except (OSError, TrackingError) as exc:
            return attrs.evolve(data, record=record, problem=f"its {PATCH} could not be read ({_why(exc)}): "
                                                            "its uncommitted changes are not compared")
    return attrs.evolve(data, record=record, patch=patch)


def _why(exc: Exception) -> str:
    return exc.message if isinstance(exc, TrackingError) else (str(exc) or type(exc).__name__)


def _sqlite_run(store, run_id: str, status: str, tags: dict[str, str]) -> RunData:
    """The run's own rows, read from the sqlite file (read-only, no MLflow import)."""
    import contextlib
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{store.path}?mode=ro", uri=True, timeout=10)) as db:
            name, experiment, start, end = db.execute(
                "SELECT name, experiment_id, start_time, end_time FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
            params = dict(db.execute("SELECT key, value FROM params WHERE run_uuid = ?", (run_id,)).fetchall())
            metrics = {key: (math.nan if is_nan else float(value)) for key, value, is_nan in db.execute(
                "SELECT key, value, is_nan FROM latest_metrics WHERE run_uuid = ?", (run_id,)).fetchall()}
    except (sqlite3.Error, TypeError) as exc:
        raise TrackingError(f"tracking store {store.uri} refused: {exc}") from None
    return RunData(run_id=run_id, status=status, name=name or tags.get("mlflow.runName"),
                   experiment_id=None if experiment is None else str(experiment), start_ms=start, end_ms=end,
                   params=params, metrics=metrics, tags=tags)


def _client_run(store, run_id: str) -> tuple[RunData, dict[str, str]]:
    """The run through ``MlflowClient`` (one request); the store's own clear error when it fails."""
    from mlexec_core.builtins.mlflow.client import bounded_client, tracking_error

    try:
        with bounded_client():
            run = store.client.get_run(run_id)
    except TrackingError:
        raise
    except Exception as exc:  # noqa: BLE001  (the store says it: "no run with id ..." or why it refused)
        store.run_info(run_id)
        raise tracking_error(store.uri, exc) from None
    info = run.info
    data = RunData(run_id=run_id, status=info.status, name=getattr(info, "run_name", None),
                   experiment_id=info.experiment_id, start_ms=info.start_time, end_ms=info.end_time,
                   params=dict(run.data.params), metrics=dict(run.data.metrics), tags=dict(run.data.tags))
    return data, {"artifact_uri": info.artifact_uri or ""}


def local_artifacts(uri: str) -> Path | None:
    """The folder an artifact URI names on this machine, or ``None`` (a remote store)."""
    if uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        parsed = urlparse(uri)
        return Path(unquote(parsed.path)) if parsed.netloc in ("", "localhost") else None
    return Path(uri) if uri.startswith("/") else None


def read_artifact(store, run_id: str, artifact_uri: str, name: str) -> bytes:
    """The artifact ``name`` of the run: read in place when its artifacts are files on this
    machine, else downloaded through MLflow into a temporary folder that is removed."""
    root = local_artifacts(artifact_uri)
    if root is not None:
        return (root / name).read_bytes()
    import tempfile

    from mlexec_core.builtins.mlflow.client import bounded_client, tracking_error
    from mlexec_core.builtins.mlflow.store import client_store

    client = client_store(store.uri).client
    with tempfile.TemporaryDirectory(prefix="mlexec-diff-") as tmp:
        try:
            with bounded_client():
                path = client.download_artifacts(run_id, name, tmp)
            return Path(path).read_bytes()
        except OSError:
            raise
        except Exception as exc:  # noqa: BLE001  (MLflow's errors for a missing artifact vary by store)
            raise OSError(tracking_error(store.uri, exc).message) from None  # (credentials removed)


# -- comparing ----------------------------------------------------------------------------------


def compare(a: RunData, b: RunData) -> Comparison:
    """What differs between ``a`` and ``b``, in sections (none: the runs do not differ)."""
    notes = []
    for run in (a, b):
        if run.problem:
            notes.append(f"run {run.run_id}: {run.problem}")
    missing = [r.run_id for r in (a, b) if r.record is None]
    if missing:
        which = f"run {missing[0]} has" if len(set(missing)) == 1 else f"runs {missing[0]} and {missing[1]} have"
        notes.append(f"{which} no mlexec record (made by `mlflow run`, another tool, or before mlexec kept "
                     "records): only what MLflow keeps is compared")
    both = a.record is not None and b.record is not None
    sections = [
        _section("run", "", _run_rows(a, b)),
        _section("parameters", "parameter", _mapping_rows(a.params, b.params)),
        _section("metrics", "metric", _mapping_rows(a.metrics, b.metrics)),
    ]
    if both:
        ra, rb = a.record, b.record
        sections += [
            _section("code", "", _mapping_rows(_code_facts(ra, a.tags), _code_facts(rb, b.tags))),
            _section("files", "file", _file_rows(a, b)),
            _section("environment", "", _mapping_rows(_env_facts(ra), _env_facts(rb))),
            _section("packages", "package", _package_rows(ra, rb)),
            _section("backend", "", _mapping_rows(_backend_facts(ra), _backend_facts(rb))),
            _section("mlexec", "", _mapping_rows(_mlexec_facts(ra), _mlexec_facts(rb))),
        ]
    else:
        for name, pairs in MLFLOW_TAGS.items():
            sections.append(_section(name, "", _mapping_rows(_tag_facts(a.tags, pairs, b.tags),
                                                             _tag_facts(b.tags, pairs, a.tags))))
    return Comparison(a=a, b=b, sections=tuple(s for s in sections if s.rows), notes=tuple(notes))


def _section(name: str, what: str, rows: Iterable[Row]) -> Section:
    return Section(name=name, title=TITLES[name], what=what, rows=tuple(rows))


def _same(x: Any, y: Any) -> bool:
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    return x == y


def _mapping_rows(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[Row]:
    """A row for each key whose value differs (or that one side lacks), in key order."""
    return [Row(key, a.get(key), b.get(key)) for key in sorted(set(a) | set(b))
            if not _same(a.get(key), b.get(key))]


def _run_rows(a: RunData, b: RunData) -> list[Row]:
    rows = []
    if a.status != b.status:
        rows.append(Row("status", a.status, b.status))
    da, db = a.duration_s, b.duration_s
    if (da is None) != (db is None) or (da is not None and db is not None and abs(da - db) > max(
            DURATION_SLACK_S, DURATION_SLACK_RATIO * max(da, db))):
        rows.append(Row("duration", da, db, unit="s"))
    if a.experiment_id != b.experiment_id:
        rows.append(Row("experiment", a.experiment_id, b.experiment_id))
    return rows


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``; lists as JSON text (an empty mapping or list is nothing)."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, (list, tuple)):
        return {prefix: json.dumps(value)} if value else {}
    return {prefix: value} if value is not None else {}


def _tag_facts(tags: Mapping[str, str], pairs, other: Mapping[str, str]) -> dict[str, str]:
    """The tags of ``pairs`` that both runs carry (tools set different ones: ``mlflow run`` leaves
    ``mlflow.project.env`` out for a local environment), and the commit even when only one has
    it (one run from a git checkout, the other not); mlexec's own source tags when both have them."""
    if pairs is MLFLOW_TAGS["code"]:
        pairs = (*pairs, ("dirty", DIRTY_TAG), ("digest", DIGEST_TAG))
    return {key: tags[tag] for key, tag in pairs if tag in tags and (tag in other or key == "commit")}


def _code_facts(record: Mapping[str, Any], tags: Mapping[str, str]) -> dict[str, Any]:
    source = record.get("source") or {}
    facts = {"source": source.get("uri"), "kind": source.get("kind"), "version": source.get("version"),
             "commit": source.get("commit"), "repo_url": source.get("repo_url"),
             "subdirectory": source.get("subdirectory"), "dirty": source.get("dirty"),
             "digest": None if source.get("files") else source.get("digest")}  # (the files say more)
    return {k: v for k, v in facts.items() if v is not None}


def _file_rows(a: RunData, b: RunData) -> list[Row]:
    """The files whose uncommitted changes differ (git work trees), or that were added, removed
    or changed (plain directories)."""
    sa, sb = (a.record or {}).get("source") or {}, (b.record or {}).get("source") or {}
    rows: list[Row] = []
    readable = all(not s.get("dirty") or run.patch is not None for s, run in ((sa, a), (sb, b)))
    if (sa.get("dirty") or sb.get("dirty")) and readable:  # (a patch that could not be read: a note says so)
        blocks_a, blocks_b = patch_blocks(a.patch or b""), patch_blocks(b.patch or b"")
        for path in sorted(set(blocks_a) | set(blocks_b)):
            x, y = blocks_a.get(path), blocks_b.get(path)
            if x == y:
                continue
            ta, tb = describe_block(x), describe_block(y)
            if ta == tb:  # different changes that read alike: tell them apart
                ta, tb = f"{ta} {_short(x)}", f"{tb} {_short(y)}"
            rows.append(Row(path, ta, tb))
    files_a, files_b = sa.get("files"), sb.get("files")
    if isinstance(files_a, Mapping) and isinstance(files_b, Mapping):
        rows += [Row(path, _short_hash(files_a.get(path)), _short_hash(files_b.get(path)))
                 for path in sorted(set(files_a) | set(files_b)) if files_a.get(path) != files_b.get(path)]
    return rows


def _short(block: bytes | None) -> str:
    return hashlib.sha256(block or b"").hexdigest()[:8]


def _short_hash(sha: str | None) -> str | None:
    return sha[:12] if isinstance(sha, str) else None


def patch_blocks(patch: bytes) -> dict[str, bytes]:
    """A git patch (``git diff --binary``) split into its files: path -> the file's block,
    from its ``diff --git a/X b/X`` line to the next."""
    blocks: dict[str, bytes] = {}
    current: list[bytes] = []
    for line in patch.splitlines(keepends=True):
        if line.startswith(b"diff --git ") and current:
            blocks[_block_path(current)] = b"".join(current)
            current = []
        current.append(line)
    if current and current[0].startswith(b"diff --git "):
        blocks[_block_path(current)] = b"".join(current)
    return blocks


def _block_path(lines: list[bytes]) -> str:
    """The file a block changes: ``X`` of ``diff --git a/X b/X``, or where a rename goes."""
    for line in lines[1:]:
        if line.startswith(b"rename to "):
            return line[len(b"rename to "):].rstrip(b"\n").decode(errors="replace")
        if line.startswith(b"@@") or line.startswith(b"GIT binary patch"):
            break
    head = lines[0][len(b"diff --git "):].rstrip(b"\n").decode(errors="replace")
    if head.startswith('"'):  # git quotes a path with unusual characters: "a/x y" "b/x y"
        last = head.rfind(' "')
        quoted = head[last + 1:] if last > 0 else head
        try:
            text = quoted[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape").encode(
                "latin-1").decode("utf-8", errors="replace")
        except (UnicodeError, ValueError):
            text = quoted.strip('"')
        return text[2:] if text.startswith("b/") else text
    size = (len(head) - 5) // 2  # "a/" + X + " b/" + X
    if size > 0 and head == f"a/{head[2:2 + size]} b/{head[2:2 + size]}":
        return head[2:2 + size]
    return head.rsplit(" b/", 1)[-1]


def describe_block(block: bytes | None) -> str:
    """One patch block in a few words: ``edited (+2 -1)``, ``new file (+3)``, ``deleted (-4)``,
    ``binary change``; ``no uncommitted change`` for none."""
    if block is None:
        return "no uncommitted change"
    added = removed = 0
    kind = "edited"
    in_hunk = False
    for line in block.splitlines():
        if not in_hunk:
            if line.startswith(b"new file mode"):
                kind = "new file"
            elif line.startswith(b"deleted file mode"):
                kind = "deleted"
            elif line.startswith(b"rename from "):
                kind = "renamed from " + line[len(b"rename from "):].decode(errors="replace")
            elif line.startswith((b"GIT binary patch", b"Binary files")):
                return {"edited": "binary change"}.get(kind, f"{kind} (binary)")
            elif line.startswith(b"@@"):
                in_hunk = True
            continue
        if line.startswith(b"+"):
            added += 1
        elif line.startswith(b"-"):
            removed += 1
    counts = " ".join(c for c in (f"+{added}" if added else "", f"-{removed}" if removed else "") if c)
    if kind == "edited" and not counts:
        return "mode changed"
    return f"{kind} ({counts})" if counts else kind


def _env_facts(record: Mapping[str, Any]) -> dict[str, Any]:
    facts: dict[str, Any] = {"env_manager": record.get("env_manager")}
    env = record.get("environment") or {}
    if env:
        facts["environment"] = env.get("name")
        facts["lock"] = env.get("kind")
        for key, value in (env.get("details") or {}).items():
            facts.setdefault(str(key), value)
    return {k: v for k, v in facts.items() if v is not None}


def _package_rows(ra: Mapping[str, Any], rb: Mapping[str, Any]) -> list[Row]:
    """Packages added, removed or at another version, when both environments list theirs."""
    pa = (ra.get("environment") or {}).get("packages") or {}
    pb = (rb.get("environment") or {}).get("packages") or {}
    if not (isinstance(pa, Mapping) and isinstance(pb, Mapping) and pa and pb):
        return []
    return _mapping_rows(pa, pb)


def _backend_facts(record: Mapping[str, Any]) -> dict[str, Any]:
    facts: dict[str, Any] = {"backend": record.get("backend"), "entry_point": record.get("entry_point"),
                             "command": record.get("command")}
    facts.update(flatten(record.get("backend_config") or {}, "config"))
    facts.update(flatten(record.get("resources") or {}, "resources"))
    pairs = [pair for pair in record.get("docker_args") or [] if isinstance(pair, (list, tuple)) and pair]
    if pairs:  # as docker gets them: -A name=value is --name value
        facts["docker_args"] = " ".join(f"--{pair[0]}" + (f" {pair[1]}" if len(pair) > 1 and pair[1] not in
                                                          (None, "", True) else "") for pair in pairs)
    facts.update(flatten(record.get("restarts") or {}, "restarts"))
    return {k: v for k, v in facts.items() if v is not None}


def _mlexec_facts(record: Mapping[str, Any]) -> dict[str, Any]:
    mlexec = record.get("mlexec") or {}
    facts: dict[str, Any] = {"version": mlexec.get("version")}
    facts.update(flatten(mlexec.get("plugins") or {}, "plugins"))
    facts.update(flatten(record.get("python") or {}, "python"))
    facts.update(flatten(record.get("platform") or {}, "platform"))
    return {k: v for k, v in facts.items() if v is not None}


# -- rendering ----------------------------------------------------------------------------------


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _run_json(run: RunData) -> dict[str, Any]:
    return {"run_id": run.run_id, "name": run.name, "experiment_id": run.experiment_id, "status": run.status,
            "start_time": run.start_ms, "end_time": run.end_ms, "duration": run.duration_s,
            "record": run.record is not None}


def to_json(result: Comparison) -> dict[str, Any]:
    """The documented shape of ``mlexec diff --json`` (docs/reproducing.md)."""
    return {
        "a": _run_json(result.a),
        "b": _run_json(result.b),
        "identical": result.identical,
        "notes": list(result.notes),
        "sections": [{"name": s.name, "title": s.title,
                      "rows": [{"key": r.key, "a": _json_value(r.a), "b": _json_value(r.b)} for r in s.rows]}
                     for s in result.sections],
    }


def format_value(value: Any, unit: str | None = None) -> str:
    """A value as shown: ``true``/``false``, floats as Python writes them, ``—`` for none."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value) if math.isfinite(value) else str(value)
    else:
        text = str(value)
    text = text.replace("\n", " ")
    return f"{text} {unit}" if unit else text


def row_text(row: Row) -> str:
    """``key A -> B``; ``+ key B`` when only run B has it, ``- key A`` when only run A has it."""
    if row.a is None:
        return f"+ {row.key} {format_value(row.b, row.unit)}"
    if row.b is None:
        return f"- {row.key} {format_value(row.a, row.unit)}"
    return f"{row.key} {format_value(row.a, row.unit)} -> {format_value(row.b, row.unit)}"


def text_lines(result: Comparison) -> list[str]:
    """The plain form (output piped): a ``# Title`` line per section, then one line per difference."""
    if result.identical:
        return [f"no differences between {result.a.run_id} and {result.b.run_id}"]
    lines = []
    for section in result.sections:
        lines.append(f"# {section.title}")
        lines += [row_text(row) for row in section.rows]
    return lines
