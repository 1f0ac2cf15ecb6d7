"""mlexec_core.configmodel: the one model for the files only mlexec reads (a backend config, a sweep file).

The shared rules are checked here on a small class; that both backends apply them the same way is
checked in each plugin's tests (test_kubernetes_manifests.py, test_slurm_config.py)."""

from __future__ import annotations

from typing import Any, Mapping

import pytest
from attrs import frozen

from mlexec_core.configmodel import FILE, NonEmpty, Style, Text, TextValue, keys, setting, structure
from mlexec_core.errors import ProjectError, UsageError


@frozen
class Item:
    name: Text | None = setting()
    seconds: int | None = setting("itemSeconds")


@frozen
class Example:
    count: int | None = setting()
    flag: bool = setting(default=False)
    label: Text | None = setting()
    uri: NonEmpty | None = setting("the-uri")
    env: Mapping[str, TextValue] = setting(factory=dict)
    items: tuple[Item, ...] = setting(default=())
    free: Any = setting()


BACKEND = Style(backend="demo")


def fails(data, style=FILE, **kw) -> UsageError:
    with pytest.raises(UsageError) as info:
        structure(data, Example, style=style, context="demo.yaml", **kw)
    return info.value


def test_values_as_written_and_keys_as_named():
    got = structure({"count": 3, "flag": True, "label": 4, "the-uri": "  x  ", "env": {"A": True, "B": 1.5},
                     "items": [{"name": "a", "itemSeconds": 5}], "free": {"any": ["thing"]}}, Example)
    assert got == Example(count=3, flag=True, label="4", uri="x", env={"A": "true", "B": "1.5"},
                          items=(Item("a", 5),), free={"any": ["thing"]})
    assert keys(Example) == ("count", "flag", "label", "the-uri", "env", "items", "free")


def test_a_key_without_a_value_is_absent():
    assert structure({"count": None, "env": None, "items": None}, Example) == Example()


@pytest.mark.parametrize("data, message", [
    ({"count": "4"}, "$.count: expected a whole number, got '4'"),
    ({"count": True}, "$.count: expected a whole number, got True"),
    ({"count": 4.0}, "$.count: expected a whole number, got 4.0"),
    ({"flag": "yes"}, "$.flag: expected bool, got 'yes'"),
    ({"label": True}, "$.label: expected a string or a number, got True"),
    ({"label": ["a"]}, "$.label: expected a string or a number, got ['a']"),
    ({"the-uri": " "}, "$.the-uri: expected a non-empty string, got ' '"),
    ({"env": ["A=1"]}, "$.env: expected a mapping, got ['A=1']"),
    ({"env": {"A": {"b": 1}}}, "$.env.A: expected a string or a number, got {'b': 1}"),
    ({"items": {"name": "a"}}, "$.items: expected a list, got {'name': 'a'}"),
    ({"items": [{"name": "a"}, {"itemSeconds": "5"}]}, "$.items[1].itemSeconds: expected a whole number, got '5'"),
    ({"items": ["a"]}, "$.items[0]: expected a mapping, got 'a'"),
])
def test_every_mistake_names_the_path_and_the_file(data, message):
    error = fails(data)
    assert error.message == message and error.context == "demo.yaml"


@pytest.mark.parametrize("data, message", [
    ({"count": "4"}, "--backend-config key 'count' must be a whole number, got '4'"),
    ({"env": {"A": {"b": 1}}}, "--backend-config key 'env': A must be a string or a number, got {'b': 1}"),
    ({"items": [{"itemSeconds": "5"}]}, "--backend-config key 'items[0]'.itemSeconds must be a whole number, got '5'"),
    ({"cuont": 1}, "unknown --backend-config key 'cuont' for the demo backend"),
    (["count"], "--backend-config must be a mapping, got ['count']"),
    ({"items": [{"nmae": 1}]}, "--backend-config key 'items[0]': unknown key 'nmae'"),
])
def test_the_backend_config_wording(data, message):
    assert fails(data, BACKEND).message == message


def test_an_unknown_key_is_refused_with_a_did_you_mean():
    error = fails({"the_uri": "x"})
    assert error.message == "unknown key 'the_uri'"
    assert error.hint.startswith("did you mean 'the-uri'? keys: count, env, flag, free, items, label, the-uri")
    assert fails({1: "x"}).message == "unknown key 1"


def test_a_boolean_for_text_says_to_quote_it():
    assert "quote the value" in fails({"label": True}).hint


def test_the_error_class_is_the_callers():
    with pytest.raises(ProjectError):
        structure({"count": "x"}, Example, error=ProjectError)


def test_a_plain_run_does_not_import_cattrs(mlexec, project, store):
    proc = mlexec("run", project("entry_points:\n  main:\n    command: 'echo quiet'\n"), "--env-manager", "local",
                  env={"PYTHONPROFILEIMPORTTIME": "1"}, check=0)
    assert "quiet" in proc.stdout and "import time:" in proc.stderr
    assert "cattrs" not in proc.stderr and "mlexec_core.configmodel" not in proc.stderr
    help_ = mlexec("--help", env={"PYTHONPROFILEIMPORTTIME": "1"}, check=0)
    assert "cattrs" not in help_.stderr
