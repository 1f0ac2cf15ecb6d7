"""Typed parameter values and command rendering.

Two pure functions carry the rules MLflow documents but does not enforce:

* :func:`check_value` converts a raw value (a ``-P`` string or a YAML default)
  for a :class:`~mlexec_core.project.model.ParamType` into the plain string that
  goes into the command and the tracking store, or raises ``ValueError`` with
  the reason.
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
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def check_value(ptype: ParamType, raw: Any) -> str:
    """The plain string form of ``raw`` for ``ptype``; ``ValueError`` says why not.

    ``path`` values are only checked for being scalars here: whether they exist
    depends on where they resolve from, which the caller knows.
    """
    if isinstance(raw, (list, dict, tuple, set)) or raw is None:
        raise ValueError(f"expected a single {ptype.value} value, got {type(raw).__name__}")
    if ptype is ParamType.BOOL:
        if isinstance(raw, bool):
            return "true" if raw else "false"
        text = str(raw).strip().lower()
        if text in _TRUE:
            return "true"
        if text in _FALSE:
            return "false"
        raise ValueError(f"{raw!r} is not a bool (use true or false)")
    if isinstance(raw, bool):
        if ptype in (ParamType.INT, ParamType.FLOAT):
            raise ValueError(f"{raw!r} is not a{'n' if ptype is ParamType.INT else ''} {ptype.value}")
        raw = "true" if raw else "false"
    text = raw if isinstance(raw, str) else str(raw)
    if ptype is ParamType.INT:
        if isinstance(raw, float):
            raise ValueError(f"{raw!r} is not an int")
        if not _INT_RE.fullmatch(text.strip()):
            raise ValueError(f"{text!r} is not an int")
        return text.strip()
    if ptype is ParamType.FLOAT:
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a float") from None
        if math.isnan(number):
            raise ValueError(f"{text!r} is not a number")
        return text.strip()
    if ptype is ParamType.URI:
        if not urlparse(text).scheme:
            raise ValueError(f"{text!r} is not a URI: it needs a scheme such as file://, s3:// or https://")
        return text
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
