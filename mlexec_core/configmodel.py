"""One model for the files only mlexec reads: a backend's ``--backend-config``, a sweep file.

A file is described by a frozen attrs class; :func:`structure` turns the data
read from the file (by :mod:`mlexec_core.yamlfile`) into an instance with one
cattrs converter, configured here and nowhere else.  The rules are the same
for every file:

* an unknown key is an error, with a did-you-mean (these files are mlexec's
  own, so a typo must stop the run, not be ignored);
* a key with no value (YAML ``key:``, JSON ``null``) is as if it were absent;
* ``int``: a whole number; a boolean, a float or a quoted ``"4"`` is refused;
* ``bool``: ``true`` or ``false``;
* ``str``: a string, as written; :data:`NonEmpty`: a string with something in
  it, stripped;
* :data:`Text`: a string or a number, as text (``4`` becomes ``"4"``); a
  boolean is refused, because YAML has already turned ``yes``, ``on`` or
  ``true`` into one and the text the user meant is lost: quote it;
* ``Mapping[str, TextValue]`` (environment variables, labels): each value a
  string or a number, as text, and a boolean as ``"true"`` / ``"false"``;
* ``tuple[X, ...]``: a list; ``Mapping[str, X]``: a mapping with string keys;
  ``Any``: the value as written (for a value with a format of its own, which
  the owner of the file checks after structuring).

Any mistake is one :class:`~mlexec_core.errors.MlexecError` (``UsageError``
unless told otherwise) naming the key and the place inside it, and the file.
What a key *means* (is ``2Gi`` a Kubernetes quantity, is ``1-12`` a Slurm
time) is the owner's to check, after :func:`structure` returns.

This module imports cattrs, so it is imported only when a file it describes is
read (``-b kubernetes``, ``-b slurm``, ``mlexec sweep``), never on a plain local run.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping as AbcMapping
from typing import Any, Mapping, NewType, TypeVar, get_args, get_origin

import attrs
import cattrs
from cattrs.errors import AttributeValidationNote, BaseValidationError, IterableValidationNote
from cattrs.gen import make_dict_structure_fn, override

from mlexec_core.errors import MlexecError, UsageError
from mlexec_core.yamlfile import shorten

__all__ = ["NonEmpty", "Text", "TextValue", "setting", "keys", "structure", "Style", "FILE"]

T = TypeVar("T")

#: A string or a number, as text; a boolean is refused.
Text = NewType("Text", str)
#: A string or a number, as text, and a boolean as ``"true"`` / ``"false"`` (values of env and label mappings).
TextValue = NewType("TextValue", str)
#: A string with something in it, surrounding whitespace dropped.
NonEmpty = NewType("NonEmpty", str)

_KEY = "mlexec.key"
_ABSENT = object()


def setting(key: str | None = None, **kwargs: Any) -> Any:
    """An attrs field read from the file's key ``key`` (default: the field's name)."""
    if "factory" not in kwargs:
        kwargs.setdefault("default", None)
    metadata = dict(kwargs.pop("metadata", {}) or {})
    if key is not None:
        metadata[_KEY] = key
    return attrs.field(metadata=metadata, **kwargs)


def keys(cls: type) -> tuple[str, ...]:
    """The keys a file described by ``cls`` may have, in the order its fields are declared."""
    return tuple(f.metadata.get(_KEY, f.name) for f in attrs.fields(cls))


@attrs.frozen
class Style:
    """How a file's mistakes are worded (each file keeps the wording its users know).

    ``backend``: the backend's name for a ``--backend-config`` (``None`` for a file
    of mlexec's own, such as a sweep file).  ``words`` names what a type expects,
    for the types whose word differs between files (``int``, ``bool``, ``str``).
    ``known_hint``: said after the list of known keys when a key is unknown.
    """

    backend: str | None = None
    words: Mapping[str, str] = attrs.field(factory=dict)
    known_hint: str = ""

    def word(self, kind: str) -> str:
        return self.words.get(kind) or _WORDS[kind]


#: The wording of mlexec's own files ("trials: expected a whole number, got 'many'").
FILE = Style(words={"bool": "bool", "str": "str"})

_WORDS = {
    "int": "a whole number", "bool": "true or false", "str": "a string", "nonempty": "a non-empty string",
    "text": "a string or a number", "mapping": "a mapping", "list": "a list",
}


class _Problem(Exception):
    """A value that does not fit its type: what was expected (a kind of :data:`_WORDS`) and the value."""

    def __init__(self, kind: str, value: Any = _ABSENT, *, unknown: str | None = None,
                 known: tuple[str, ...] = ()):
        super().__init__(kind)
        self.kind, self.value, self.unknown, self.known = kind, value, unknown, known


class _Entry(str):
    """A key of a mapping value (``env: {A: ...}``), as opposed to a key the class declares."""


# -- the converter ------------------------------------------------------------------------

def _int(value: Any, _: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Problem("int", value)
    return value


def _bool(value: Any, _: Any) -> bool:
    if not isinstance(value, bool):
        raise _Problem("bool", value)
    return value


def _str(value: Any, _: Any) -> str:
    if not isinstance(value, str):
        raise _Problem("str", value)
    return value


def _nonempty(value: Any, _: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Problem("nonempty", value)
    return value.strip()


def _text(value: Any, _: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _Problem("text", value)
    return str(value)


def _text_value(value: Any, _: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return _text(value, _)


def _any(value: Any, _: Any) -> Any:
    return value


def _is_mapping_type(t: Any) -> bool:
    return get_origin(t) in (dict, Mapping, AbcMapping)


def _is_list_type(t: Any) -> bool:
    origin = get_origin(t)
    return origin in (list,) or (origin is tuple and len(get_args(t)) == 2 and get_args(t)[1] is Ellipsis)


def _mapping_factory(t: Any, converter: cattrs.Converter):
    key_type, value_type = get_args(t) or (str, Any)
    handler = converter.get_structure_hook(value_type)

    def structure_mapping(value: Any, _: Any) -> dict:
        if not isinstance(value, AbcMapping):
            raise _Problem("mapping", value)
        out, errors = {}, []
        for name, item in value.items():
            if not isinstance(name, str):
                exc = _Problem("str", name)
                shown = _Entry(shorten(repr(name)))
                exc.__notes__ = [IterableValidationNote(f"mapping key {name!r}", shown, key_type)]
                errors.append(exc)
                continue
            try:
                out[name] = handler(item, value_type)
            except Exception as exc:
                exc.__notes__ = [*getattr(exc, "__notes__", []),
                                 IterableValidationNote(f"mapping value @ key {name!r}", name, value_type)]
                errors.append(exc)
        if errors:
            raise cattrs.IterableValidationError("while structuring a mapping", errors, t)
        return out

    return structure_mapping


def _list_factory(t: Any, converter: cattrs.Converter):
    (item_type, *_rest) = get_args(t) or (Any,)
    handler = converter.get_structure_hook(item_type)
    as_tuple = get_origin(t) is tuple

    def structure_list(value: Any, _: Any):
        if not isinstance(value, (list, tuple)):
            raise _Problem("list", value)
        out, errors = [], []
        for index, item in enumerate(value):
            try:
                out.append(handler(item, item_type))
            except Exception as exc:
                exc.__notes__ = [*getattr(exc, "__notes__", []),
                                 IterableValidationNote(f"item @ index {index}", index, item_type)]
                errors.append(exc)
        if errors:
            raise cattrs.IterableValidationError("while structuring a list", errors, t)
        return tuple(out) if as_tuple else out

    return structure_list


def _class_factory(cls: type, converter: cattrs.Converter):
    known = keys(cls)
    generated = make_dict_structure_fn(cls, converter, _cattrs_detailed_validation=True,
                                       **{f.name: override(rename=key) for f, key in zip(attrs.fields(cls), known)})

    def structure_class(value: Any, _: Any):
        if not isinstance(value, AbcMapping):
            raise _Problem("mapping", value)
        for key in value:
            if key not in known:
                raise _Problem("unknown", unknown=key, known=known)
        return generated({k: v for k, v in value.items() if v is not None}, cls)

    return structure_class


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(detailed_validation=True)
    for kind, hook in ((int, _int), (bool, _bool), (str, _str), (NonEmpty, _nonempty), (Text, _text),
                       (TextValue, _text_value), (Any, _any)):
        converter.register_structure_hook(kind, hook)
    converter.register_structure_hook_factory(_is_mapping_type, lambda t: _mapping_factory(t, converter))
    converter.register_structure_hook_factory(_is_list_type, lambda t: _list_factory(t, converter))
    converter.register_structure_hook_factory(attrs.has, lambda cls: _class_factory(cls, converter))
    return converter


_converter = _make_converter()


# -- errors -------------------------------------------------------------------------------

def _first_problem(exc: BaseException, path: tuple) -> tuple[tuple, BaseException]:
    """The first leaf of cattrs' exception group, and the path of keys (and list indices) to it."""
    while isinstance(exc, BaseValidationError):
        with_notes, without = exc.group_exceptions()
        if with_notes:
            exc, note = with_notes[0]
            if isinstance(note, AttributeValidationNote):
                path = (*path, note.name)
            elif isinstance(note, IterableValidationNote):
                index = note.index
                path = (*path, index if isinstance(index, (int, _Entry)) else _Entry(index))
        else:
            exc = without[0]
    return path, exc


def _where(path: tuple, style: Style) -> str:
    """The place, as each file words it: ``--backend-config key 'tolerations[0]'.operator`` or ``$.a.b[0]``."""
    if style.backend is None:
        text = "$"
        for part in path:
            text += f"[{part}]" if isinstance(part, int) else f".{part}"
        return text
    if not path:
        return "--backend-config"
    head, rest = path[0], path[1:]
    while rest and isinstance(rest[0], int):
        head, rest = f"{head}[{rest[0]}]", rest[1:]
    text = f"--backend-config key {shorten(repr(str(head)))}"
    for part in rest:
        text += f"[{part}]" if isinstance(part, int) else f": {shorten(str(part))}" if isinstance(part, _Entry) \
            else f".{part}"
    return text


def structure(data: Any, cls: type[T], *, style: Style = FILE, context: str | None = None,
              error: type[MlexecError] = UsageError) -> T:
    """``data`` (as read from a file) as a ``cls``; any mistake is one ``error`` naming the key and ``context``."""
    try:
        return _converter.structure(data, cls)
    except (BaseValidationError, _Problem) as exc:
        path, problem = _first_problem(exc, ())
        # the class's own fields are named in the file by their keys
        path = tuple(_rename(path, cls))
        if not isinstance(problem, _Problem):  # a validator or __init__ of the class: a bug in its owner
            raise
        raise _error(problem, path, style, context, error) from None


def _rename(path: tuple, cls: type) -> Any:
    current: Any = cls
    for part in path:
        if isinstance(part, str) and not isinstance(part, _Entry) and attrs.has(current):
            fields = {f.name: f for f in attrs.fields(attrs.resolve_types(current))}
            field = fields.get(part)
            if field is not None:
                yield field.metadata.get(_KEY, part)
                current = _inner(field.type)
                continue
        if isinstance(part, int) and current is not None:
            current = _inner(current)
        yield part


def _inner(t: Any) -> Any:
    """The attrs class inside ``t`` (``tuple[X, ...]``, ``X | None``), if any."""
    if attrs.has(t):
        return t
    for arg in get_args(t):
        if attrs.has(arg):
            return arg
    return None


def _error(problem: _Problem, path: tuple, style: Style, context: str | None,
           error: type[MlexecError]) -> MlexecError:
    if problem.kind == "unknown":
        key = problem.unknown
        close = difflib.get_close_matches(str(key).replace("_", "-"), [k.replace("_", "-") for k in problem.known],
                                          n=1)
        if close:
            close = [k for k in problem.known if k.replace("_", "-") == close[0]]
        known = ", ".join(problem.known if style.backend is not None else sorted(problem.known))
        hint = (f"did you mean {close[0]!r}? " if close else "") + \
            (f"known keys: {known}" if style.backend is not None else f"keys: {known}") + style.known_hint
        if not path and style.backend:
            message = f"unknown --backend-config key {shorten(repr(key))} for the {style.backend} backend"
        elif not path:
            message = f"unknown key {shorten(repr(key))}"
        else:
            message = f"{_where(path, style)}: unknown key {shorten(repr(str(key)))}"
        return error(message, context=context, hint=hint)
    shown = shorten(repr(problem.value))
    if style.backend is None:
        message = f"{_where(path, style)}: expected {style.word(problem.kind)}, got {shown}"
    else:
        message = f"{_where(path, style)} must be {style.word(problem.kind)}, got {shown}"
    hint = None
    if isinstance(problem.value, bool) and problem.kind in ("text", "str", "nonempty"):
        hint = "YAML reads an unquoted true, yes or on as a boolean: quote the value ('true')"
    return error(message, context=context, hint=hint)
