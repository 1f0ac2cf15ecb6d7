"""Loaders never crash: generated files and options for every loader, through the real loader functions.

Each loader gets generated content (valid files with a wrong type somewhere,
constructor errors PyYAML does not raise as YAMLError, alias bombs, deep
nesting, NUL bytes and lone surrogates, bytes that are not UTF-8, a directory
or a FIFO where a file is expected) and must either accept it or raise one
MlexecError with a short message.  A few real CLI invocations check the same
end to end (exit 0 or 2, never a traceback).  ``benchmarks/fuzz_loaders.py``
runs the same strategies for much longer.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import loader_strategies as ls
from mlexec_core.testing import assert_no_traceback

FAST = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@FAST
@given(content=ls.file_contents(ls.MLPROJECT_KEYS, ls.MLPROJECT),
       entry_point=st.one_of(st.sampled_from(["main", "other", "x.py", "missing"]), ls.option_texts),
       params=st.dictionaries(st.one_of(st.sampled_from(["alpha", "data", "n", "u"]), ls.option_texts),
                              ls.option_texts, max_size=3))
def test_mlproject_and_options(content, entry_point, params):
    ls.in_fresh_root(ls.check_mlproject, content, entry_point, params)


@FAST
@given(content=ls.file_contents(ls.PYTHON_ENV_KEYS, ls.PYTHON_ENV),
       requirements=st.one_of(ls.file_contents(["-r", "-c"]), st.sampled_from(
           ["-r requirements.txt\n", "-r /\n", "-c missing\n", "-r " + "x" * 300 + "\n", "six\\\n"])))
def test_python_env_and_requirements(content, requirements):
    ls.in_fresh_root(ls.check_python_env, content, requirements)


@FAST
@given(content=ls.file_contents(ls.CONDA_KEYS, ls.CONDA))
def test_conda_yaml(content):
    ls.in_fresh_root(ls.check_conda, content)


@FAST
@given(content=ls.file_contents(ls.KUBE_KEYS, ls.KUBE_CONFIG),
       inline=st.one_of(st.none(), ls.option_texts, ls.values(ls.KUBE_KEYS).map(json.dumps),
                        st.sampled_from(["[" * 5000, '{"a": "\\u0000"}', '{"a": 1, "a": 2}'])),
       template=ls.file_contents(ls.TEMPLATE_KEYS, ls.TEMPLATE))
def test_backend_config_and_job_template(content, inline, template):
    ls.in_fresh_root(ls.check_backend_config, content, inline, template)


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(content=ls.file_contents(ls.MLPROJECT_KEYS, ls.MLPROJECT),
       option=st.sampled_from(["-P", "-A", "-e", "-c", "-v"]), value=ls.option_texts.filter(lambda t: "\x00" not in t))
def test_cli_dry_run_never_shows_a_traceback(mlexec, tmp_path, content, option, value):
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    project = root / "proj"
    project.mkdir()
    ls.put(project / "MLproject", content)
    proc = mlexec("run", project, "--env-manager", "local", option, value, "--dry-run", cwd=root)
    assert proc.returncode in (0, 2), proc.stderr
    assert_no_traceback(proc)
    assert len(proc.stderr) < 4 * ls.MAX_MESSAGE
