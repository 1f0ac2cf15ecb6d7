"""Hypothesis strategies for what a user may hand mlexec's loaders, and the loaders driven with it.

Shared by ``tests/test_fuzz_loaders.py`` (a few dozen examples per loader, in the
suite) and ``benchmarks/fuzz_loaders.py`` (thousands, as a script).  Each
``check_*`` function feeds one generated input to the real loader and returns
normally when the loader either accepted it or raised one
:class:`~mlexec_core.errors.MlexecError` with a short message; anything else
(a traceback, a message of megabytes) fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

from mlexec_core.errors import MlexecError

#: The longest error or warning message accepted (a 387-byte alias file once made 7.2 MB).
MAX_MESSAGE = 4000

# -- values -----------------------------------------------------------------------------

NASTY_TEXT = [
    "", " ", "\x00", "a\x00b", "\ud800", "x" * 300, "x" * 7000, "é", "{alpha}", "{{", "}}", "'", '"', "\\",
    "$(id)", "--flag", "../..", "/", "-r", "-r missing.txt", "None", "null", "~", "true", "1e-5", "0x10", "08",
    "list[str]", "type:float", "a" * 260 + ".py", "file:///", "s3://b/k", "\n", "\t", "=", "a=b",
]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=30),
    st.sampled_from(NASTY_TEXT),
)


def values(keys: list[str]) -> st.SearchStrategy[Any]:
    key = st.one_of(st.sampled_from(keys), st.text(max_size=12), st.sampled_from(NASTY_TEXT), st.integers())
    return st.recursive(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(key, inner, max_size=5)),
        max_leaves=25,
    )


#: Fragments of YAML that break naive loaders (constructor errors, aliases, depth, tags, bad characters).
NASTY_YAML = [
    "!!int 08", "!!bool maybe", "!!float x", "!!timestamp nope", "!!binary ===", "!!python/object:os.system x",
    "&a [*a]", "*undefined", "? [a, b]\n: c", "? {a: 1}\n: b", "a: 1\na: 2", "[" * 400 + "]" * 400,
    "- " * 200 + "x", "{" * 200, '"\\ud800"', '"\\0"', "\x00", "\x07", "\ufeffname: x", "---\n---\n", "...",
    "%YAML 1.1\n---\nx", "%TAG ! tag:x,2000:\n--- !a b", "a: !!set {x, y}", "a: !!omap [b: 1]", "a: !!pairs [b: 1]",
    "a: <<: *b", "<<: {a: 1}", "<<: [1]", "a: &b x\nc: *b", "2020-13-45", "a: 2001-12-14t21:59:43.10-05:00",
    "'unterminated", "a:\tb", "\ta: b", "- a\nb: c",
]

BOMB = "\n".join(
    ["a: &a [x, x, x, x, x, x, x, x, x]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(8)]
)


@st.composite
def yaml_texts(draw, keys: list[str], template: Any = None) -> str:
    """A YAML file's text: a generated value dumped (sometimes with a nasty fragment spliced in), or raw junk."""
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return draw(st.sampled_from(NASTY_YAML + [BOMB]))
    value = draw(values(keys)) if template is None or choice == 1 else _mutate(draw, template, keys)
    try:
        text = yaml.safe_dump(value, allow_unicode=draw(st.booleans()), default_flow_style=draw(st.booleans()))
    except Exception:  # a value safe_dump cannot write (a lone surrogate with allow_unicode ...)
        text = json.dumps(value, ensure_ascii=True, default=str)
    if choice == 5:
        lines = text.splitlines()
        at = draw(st.integers(0, len(lines)))
        lines.insert(at, draw(st.sampled_from(NASTY_YAML)))
        text = "\n".join(lines)
    return text


def _mutate(draw, template: Any, keys: list[str]) -> Any:
    """``template`` with one value somewhere replaced by a generated one (wrong types at every key)."""
    if isinstance(template, dict):
        out = dict(template)
        if out and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(out, key=str)))
            out[key] = _mutate(draw, out[key], keys)
        else:
            out[draw(st.sampled_from(keys))] = draw(values(keys))
        return out
    if isinstance(template, list) and template and draw(st.booleans()):
        out = list(template)
        index = draw(st.integers(0, len(out) - 1))
        out[index] = _mutate(draw, out[index], keys)
        return out
    return draw(values(keys))


@st.composite
def file_contents(draw, keys: list[str], template: Any = None) -> bytes | str:
    """What is at a path where a file is expected: YAML text, bytes that are not UTF-8, or a marker for
    something that is not a file (``"<dir>"``, ``"<fifo>"``, ``"<missing>"``)."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.sampled_from(["<dir>", "<fifo>", "<missing>"]))
    if kind == 1:
        return draw(st.binary(max_size=40)) + b"\xff\xfe\x80"
    return draw(yaml_texts(keys, template))


def put(path: Path, content: bytes | str) -> None:
    """Make ``path`` hold ``content`` (see :func:`file_contents`)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    if content == "<dir>":
        path.mkdir()
    elif content == "<fifo>":
        os.mkfifo(path)
    elif content == "<missing>":
        pass
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_bytes(content.encode("utf-8", "surrogatepass"))


# -- what each loader gets ----------------------------------------------------------------

MLPROJECT_KEYS = ["name", "entry_points", "main", "parameters", "command", "type", "default", "description",
                  "docker_env", "image", "volumes", "environment", "dockerfile", "args", "context", "python_env",
                  "conda_env", "databricks_spark_job", "alpha", "namespace", "registry", "type:float", "resources",
                  "cpus", "memory", "gpus", "gpu-type", "shm", "time"]
MLPROJECT = {
    "name": "fuzz",
    "entry_points": {
        "main": {"parameters": {"alpha": {"type": "float", "default": 0.5}, "data": {"type": "path", "default": "."},
                                "n": "int", "u": {"type": "uri", "default": "s3://b/k"}},
                 "command": "echo {alpha} {data} {n} {u}"},
        "other": {"command": "echo other", "resources": {"memory": "1G", "time": "1h"}},
    },
    "resources": {"cpus": 2, "gpus": 0, "time": "30m"},
}
PYTHON_ENV_KEYS = ["python", "build_dependencies", "dependencies"]
PYTHON_ENV = {"python": "3.11", "build_dependencies": ["pip"], "dependencies": ["-r requirements.txt", "six"]}
CONDA_KEYS = ["name", "channels", "dependencies", "pip", "variables", "prefix"]
CONDA = {"name": "x", "channels": ["conda-forge"], "dependencies": ["python=3.11", "numpy >=1", {"pip": ["six"]}],
         "variables": {"A": "1"}}
KUBE_KEYS = ["repository-uri", "kube-job-template-path", "namespace", "tolerations", "resources", "env",
             "node-selector", "image-pull-secrets", "backoff-limit", "key", "operator", "effect", "value",
             "tolerationSeconds", "requests", "limits", "cpu", "memory"]
KUBE_CONFIG = {"repository-uri": "r/x", "kube-job-template-path": "job.yaml", "tolerations": [{"key": "a", "operator": "Exists", "effect": "NoSchedule"}],
               "resources": {"requests": {"cpu": "1"}}, "env": {"A": "1"}, "node-selector": {"pool": "gpu"}}
TEMPLATE_KEYS = ["apiVersion", "kind", "metadata", "spec", "template", "containers", "name", "image", "env",
                 "labels", "restartPolicy", "tolerations", "resources", "backoffLimit", "namespace"]
TEMPLATE = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x", "labels": {"a": "b"}},
            "spec": {"backoffLimit": 1, "template": {"spec": {"restartPolicy": "Never", "containers": [
                {"name": "main", "image": "x", "env": [{"name": "A", "value": "1"}]}]}}}}

option_texts = st.one_of(st.text(max_size=40), st.sampled_from(NASTY_TEXT))


def _ok(exc: BaseException | None, caught) -> None:
    if exc is not None:
        message = str(exc)
        assert len(message) < MAX_MESSAGE, f"a message of {len(message)} characters: {message[:300]}..."
    for w in caught:
        assert len(str(w.message)) < MAX_MESSAGE, f"a warning of {len(str(w.message))} characters"


def _call(fn, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = fn(*args, **kwargs)
        except MlexecError as exc:
            _ok(exc, caught)
            return None
    _ok(None, caught)
    return result


def check_mlproject(root: Path, content, entry_point: str, params: dict[str, str]) -> None:
    """The MLproject through load_project and resolve_plan (what `mlexec run --dry-run` does before output)."""
    from mlexec_core.pipeline.options import RunOptions
    from mlexec_core.pipeline.resolve import resolve_plan
    from mlexec_core.plugin.manager import build_plugins

    project = root / "proj"
    if project.exists():
        shutil.rmtree(project)
    project.mkdir(parents=True)
    put(project / "MLproject", content)
    plugins = build_plugins(entry_points=False)
    _call(resolve_plan, plugins, RunOptions(uri=str(project), entry_point=entry_point, parameters=params,
                                            env_manager="local"), cwd=root)


def check_python_env(root: Path, content, requirements) -> None:
    from mlexec_core.project.loader import load_project
    from mlexec_virtualenv.spec import read_spec

    project = root / "penv"
    if project.exists():
        shutil.rmtree(project)
    project.mkdir(parents=True)
    (project / "MLproject").write_text("name: p\npython_env: python_env.yaml\n")
    put(project / "python_env.yaml", content if content != "<missing>" else "python: '3.11'\n")
    put(project / "requirements.txt", requirements)
    loaded = _call(load_project, project)
    if loaded is not None:
        _call(read_spec, loaded)


def check_conda(root: Path, content) -> None:
    from mlexec_conda.spec import parse_conda_yaml

    root.mkdir(parents=True, exist_ok=True)
    path = root / "conda.yaml"
    put(path, content)
    _call(parse_conda_yaml, path)


def check_backend_config(root: Path, content, inline: str | None, template) -> None:
    """--backend-config as a file or inline JSON, then the kubernetes backend's parse_config (and its template)."""
    from mlexec_core.pipeline.resolve import load_backend_config
    from mlexec_kubernetes.config import parse_config

    root.mkdir(parents=True, exist_ok=True)
    put(root / "job.yaml", template)
    if inline is not None:
        value = inline
    else:
        put(root / "config.yaml", content)
        value = "config.yaml"
    loaded = _call(load_backend_config, value, root)
    if loaded is not None:
        data, base = loaded
        _call(parse_config, data, base)


@contextlib.contextmanager
def fresh_root():
    """A fresh folder per input, removed afterwards (FIFOs and all)."""
    root = Path(tempfile.mkdtemp(prefix="mlexec-fuzz-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def in_fresh_root(check, *args) -> None:
    """Run ``check(root, *args)`` in a :func:`fresh_root`."""
    with fresh_root() as root:
        check(root, *args)
