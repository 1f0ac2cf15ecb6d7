"""Typed parameter values and command rendering.

Pure functions carry the rules MLflow documents but does not enforce:

* :func:`mlflow_str` is how a YAML default becomes text: Python's ``str()``
  of the value, exactly as MLflow renders it (``True``, ``0.1``, ``1e-05``).
* :func:`check_value` checks a value (a ``-P`` string as typed, or a default
  after :func:`mlflow_str`) against a
  :class:`~mlexec_core.project.model.ParamType` and raises ``ValueError`` with
  the reason.  It never changes the value: what the user typed is what the
  command receives and what is logged.
* :func:`render_command` substitutes ``{name}`` placeholders for declared
  parameters only, quoting each value for the shell context it lands in, so a
  value is always exactly one word and literal braces are left alone.
"""

from __future__ import annotations

import math
import re
import shlex
from typing import Any, Mapping
from urllib.parse import urlparse

from mlexec_core.project.model import ParamType

_INT_RE = re.compile(r"[+-]?\d+")
_BOOLS = {"true", "yes", "1", "on", "false", "no", "0", "off"}


def mlflow_str(value: Any) -> str:
    """``value`` (a YAML scalar, or whatever the Python API was given) as MLflow renders it: ``str(value)``."""
    return value if isinstance(value, str) else str(value)


def check_value(ptype: ParamType, raw: Any) -> str:
    """``raw`` itself when it is a valid ``ptype`` value; ``ValueError`` says why not.

    The value is returned unchanged (``-P flag=True`` stays ``True``, ``-P lr=1e-3``
    stays ``1e-3``).  ``path`` values are only checked for being scalars here:
    whether they exist depends on where they resolve from, which the caller knows.
    """
    if isinstance(raw, (list, dict, tuple, set)) or raw is None:
        raise ValueError(f"expected a single {ptype.value} value, got {type(raw).__name__}")
    text = mlflow_str(raw)
    if ptype is ParamType.BOOL:
        if text.strip().lower() not in _BOOLS:
            raise ValueError(f"{text!r} is not a bool (use true or false)")
    elif ptype is ParamType.INT:
        if isinstance(raw, bool) or not _INT_RE.fullmatch(text.strip()):
            raise ValueError(f"{text!r} is not an int")
    elif ptype is ParamType.FLOAT:
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a float") from None
        if isinstance(raw, bool) or math.isnan(number):
            raise ValueError(f"{text!r} is not a{' number' if not isinstance(raw, bool) else ' float'}")
    elif ptype is ParamType.URI:
        if not urlparse(text).scheme:
            raise ValueError(f"{text!r} is not a URI: it needs a scheme such as file://, s3:// or https://")
    return text


# -- command rendering ------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_.\-]*)\}")


def placeholders(command: str) -> list[str]:
    """The ``{name}`` placeholders of ``command`` (``{{``/``}}`` escapes skipped)."""
    return [m.group(1) for m in _PLACEHOLDER.finditer(command) if m.group(1)]


def _quote_for(state: str, value: str) -> str:
    if state == "'":  # inside '...': close, escape, reopen
        return value.replace("'", "'\\''")
    if state == '"':  # inside "...": only these four are special
        return re.sub(r'(["\\$`])', r"\\\1", value)
    return shlex.quote(value)


def render_command(command: str, values: Mapping[str, str], extra: Mapping[str, str] = {}) -> str:
    """Substitute declared values into ``command`` and append ``extra`` as ``--k v``.

    * ``{name}`` is replaced only when ``name`` is in ``values``; any other brace
      text is left as written, so ``python -c "print({'a': 1})"`` just works.
    * ``{{`` and ``}}`` still mean one literal brace, as in MLflow.
    * Each value is quoted for where it lands: bare, inside '...', or inside
      "...", so it stays one word with its characters intact.
    """
    out: list[str] = []
    state = ""  # "", "'", '"' : the shell quoting context at this point of the template
    pos = 0
    escaped = False

    def copy_literal(text: str) -> None:
        nonlocal state, escaped
        for ch in text:
            if escaped:
                escaped = False
            elif state == "'":
                if ch == "'":
                    state = ""
            elif ch == "\\":
                escaped = True
            elif state == '"':
                if ch == '"':
                    state = ""
            elif ch in "'\"":
                state = ch
            out.append(ch)

    for match in _PLACEHOLDER.finditer(command):
        copy_literal(command[pos : match.start()])
        pos = match.end()
        token = match.group(0)
        name = match.group(1)
        if token == "{{":
            out.append("{")
        elif token == "}}":
            out.append("}")
        elif name in values:
            out.append(_quote_for(state, values[name]))
        else:
            copy_literal(token)
    copy_literal(command[pos:])
    rendered = "".join(out)
    for key, value in extra.items():
        rendered += f" --{shlex.quote(key)} {shlex.quote(value)}"
    return rendered
