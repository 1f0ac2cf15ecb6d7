"""Typed values and command rendering, checked against a real shell."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mlexec_core.project.model import ParamType
from mlexec_core.project.params import check_value, render_command


@pytest.mark.parametrize(
    "ptype, raw, expected",
    [
        (ParamType.INT, "3", "3"), (ParamType.INT, 3, "3"), (ParamType.INT, "-7", "-7"),
        (ParamType.FLOAT, "0.5", "0.5"), (ParamType.FLOAT, "1e-3", "1e-3"), (ParamType.FLOAT, 2, "2"),
        (ParamType.BOOL, "True", "True"), (ParamType.BOOL, "no", "no"), (ParamType.BOOL, False, "False"),
        (ParamType.INT, " 4", " 4"), (ParamType.FLOAT, 1e-05, "1e-05"), (ParamType.FLOAT, "1E3", "1E3"),
        (ParamType.URI, "s3://b/k", "s3://b/k"), (ParamType.URI, "file:///x", "file:///x"),
        (ParamType.STRING, "x; rm -rf /", "x; rm -rf /"), (ParamType.STRING, 1.5, "1.5"),
    ],
)
def test_valid_values(ptype, raw, expected):
    """Checking never changes a value: the text is what the command receives (MLflow's str() for non-strings)."""
    assert check_value(ptype, raw) == expected


@pytest.mark.parametrize(
    "ptype, raw, reason",
    [
        (ParamType.INT, "2.5", "'2.5' is not an int"), (ParamType.INT, 2.5, "2.5. is not an int"),
        (ParamType.INT, "abc", "is not an int"), (ParamType.INT, True, "is not an int"),
        (ParamType.FLOAT, "abc", "'abc' is not a float"), (ParamType.FLOAT, "nan", "is not a number"),
        (ParamType.BOOL, "maybe", "is not a bool"),
        (ParamType.URI, "relative/path", "needs a scheme"),
        (ParamType.STRING, [1, 2], "expected a single string value"),
    ],
)
def test_invalid_values(ptype, raw, reason):
    with pytest.raises(ValueError, match=reason.replace("(", r"\(")):
        check_value(ptype, raw)


def argv_of(command: str) -> list[str]:
    """What a program receives when bash runs ``command`` (the program prints its argv as JSON)."""
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


PRINT_ARGV = f"{sys.executable} -c 'import json,sys; print(json.dumps(sys.argv[1:]))'"
NASTY = ["a b", "x; rm -rf /", "it's", 'say "hi"', "$HOME `id` \\n", "", "{alpha}", "--flag"]


@pytest.mark.parametrize("value", NASTY)
def test_bare_value_is_one_argument(value):
    assert argv_of(render_command(PRINT_ARGV + " {v}", {"v": value})) == [value]


@pytest.mark.parametrize("value", NASTY)
def test_value_inside_single_quotes_stays_intact(value):
    # MLflow splits this: sh -c 'echo x={x}' with x="a b" printed x=a
    command = render_command(PRINT_ARGV + " 'x={v}'", {"v": value})
    assert argv_of(command) == [f"x={value}"]


@pytest.mark.parametrize("value", NASTY)
def test_value_inside_double_quotes_stays_intact(value):
    command = render_command(PRINT_ARGV + ' "x={v}"', {"v": value})
    assert argv_of(command) == [f"x={value}"]


def test_literal_braces_and_escapes():
    command = render_command("""python -c "print({'a': 1})" {{alpha}} {alpha} {undeclared}""", {"alpha": "0.5"})
    assert command == """python -c "print({'a': 1})" {alpha} 0.5 {undeclared}"""


def test_extras_are_appended_quoted_in_order():
    command = render_command("run", {}, {"b": "1", "a": "x y"})
    assert command == "run --b 1 --a 'x y'"
    assert argv_of(render_command(PRINT_ARGV, {}, {"we ird": "v;v"})) == ["--we ird", "v;v"]
