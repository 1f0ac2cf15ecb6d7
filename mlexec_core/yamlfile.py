"""Reading the files and text a user gives mlexec, safely: one reader every loader uses.

Every loader of a user's file (the MLproject, ``python_env.yaml``,
``conda.yaml``, ``-r`` requirements files, ``--backend-config`` files and
inline JSON, Kubernetes Job templates, in the core and in plugins) reads it
through here, so that *any* content ends in one clear
:class:`~mlexec_core.errors.MlexecError` naming the file and the place, never
a traceback:

* the path: a directory, a FIFO or a device where a file is expected, a name
  too long for the file system, an unreadable file, a file too big to be a
  configuration file;
* the bytes: text that is not UTF-8, NUL bytes;
* the YAML: syntax errors, constructor errors that PyYAML does not raise as
  ``YAMLError`` (``!!int 08``, ``!!bool maybe``), alias "bombs" (the document
  may expand to at most :data:`MAX_NODES` values), nesting deeper than
  :data:`MAX_DEPTH`, duplicate keys (a warning, or an error for files only
  mlexec reads), keys that are not strings;
* the values: strings holding NUL or lone surrogates (which no command line,
  file name or tracking store accepts);
* the messages themselves: every value quoted in an error is cut to a few
  hundred characters (:func:`shorten`).

The caller says which error class to raise (``error=``), so a problem in a
conda.yaml stays an :class:`~mlexec_core.errors.EnvironmentBuildError` and one
in ``--backend-config`` a :class:`~mlexec_core.errors.UsageError`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

from mlexec_core.errors import MlexecError, ProjectError

#: Deepest nesting of lists and mappings accepted in any file.
MAX_DEPTH = 64
#: Most values (after expanding aliases) one document may hold.
MAX_NODES = 200_000
#: Largest file read as configuration (10 MiB).
MAX_BYTES = 10 * 1024 * 1024
#: Longest piece of user text quoted in a message.
MAX_SHOWN = 200


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class FileWarning(UserWarning):
    """Something in a user's file that mlexec tolerates, with where it is (duplicate keys ...)."""


@contextlib.contextmanager
def quiet_file_warnings() -> Iterator[None]:
    """Read a file again without saying its :class:`FileWarning` again (they were said the first time)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FileWarning)
        yield


def shorten(value: Any, limit: int = MAX_SHOWN) -> str:
    """``repr``-like text of ``value`` for a message, at most about ``limit`` characters."""
    text = value if isinstance(value, str) else _safe_repr(value)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)
    if len(text) > limit:
        text = f"{text[: limit // 2]}...({len(text) - limit} more characters)...{text[-limit // 4:]}"
    return text


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)[: MAX_SHOWN * 4]
    except Exception:  # a pathological value: recursion, a broken __repr__
        return f"<{type(value).__name__}>"


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot go on a command line, into a file name or a tracking store, or ``None``."""
    if "\x00" in text:
        return "contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"is not valid text (character {exc.start + 1} is {text[exc.start]!r}, a lone surrogate)"
    return None


# -- reading a file --------------------------------------------------------------------


def read_text(path: str | os.PathLike[str], *, error: type[MlexecError] = ProjectError, what: str = "file",
              hint: str | None = None, max_bytes: int = MAX_BYTES) -> str:
    """The UTF-8 text of ``path``; anything else is one ``error`` naming the file."""
    shown = _shown_path(path)
    if isinstance(path, str):
        problem = text_problem(path)
        if problem:
            raise error(f"the {what} name {problem}", context=shown, hint=hint)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise error(f"no such {what}", context=shown, hint=hint) from None
    except (OSError, ValueError) as exc:
        raise error(f"cannot read the {what}: {_os_reason(exc)}", context=shown, hint=hint) from None
    if stat.S_ISDIR(info.st_mode):
        raise error(f"is a directory, not a {what}", context=shown, hint=hint)
    if not stat.S_ISREG(info.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "a socket" if stat.S_ISSOCK(info.st_mode) \
            else "a device" if (stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)) else "not a regular file"
        raise error(f"is {kind}, not a regular {what}", context=shown, hint=hint)
    if info.st_size > max_bytes:
        raise error(f"the {what} is {info.st_size} bytes; mlexec reads at most {max_bytes} here", context=shown,
                    hint=hint)
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except (OSError, ValueError) as exc:
        raise error(f"cannot read the {what}: {_os_reason(exc)}", context=shown, hint=hint) from None
    if len(data) > max_bytes:
        raise error(f"the {what} is more than {max_bytes} bytes; mlexec reads at most that here", context=shown)
    return decode(data, shown, error=error, what=what)


def decode(data: bytes, shown: str, *, error: type[MlexecError] = ProjectError, what: str = "file") -> str:
    """``data`` as UTF-8 text (a BOM is dropped); invalid bytes are an ``error`` saying where."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise error(f"the {what} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line})", context=shown,
                    hint="save it as UTF-8") from None
    return text


def _shown_path(path: str | os.PathLike[str]) -> str:
    return shorten(os.fspath(path), 300)


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        if exc.errno == errno.ENAMETOOLONG:
            return "the name is too long for the file system"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return "permission denied"
        return exc.strerror or type(exc).__name__
    return str(exc) or type(exc).__name__


def is_file(path: str | os.PathLike[str]) -> bool:
    """``Path.is_file`` that is ``False`` (never an exception) for names too long, NUL bytes, surrogates."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def exists(path: str | os.PathLike[str]) -> bool:
    """``Path.exists`` that is ``False`` (never an exception) for names too long, NUL bytes, surrogates."""
    try:
        os.stat(path)
    except (OSError, ValueError):
        return False
    return True


# -- YAML -------------------------------------------------------------------------------


def _loader_class():
    import yaml

    class SafeLoader(yaml.SafeLoader):
        """PyYAML's safe loader with limits on depth and size, and duplicate keys reported."""

        def __init__(self, stream, duplicates: Callable[[str, Any], None]):
            super().__init__(stream)
            self._depth = 0
            self._duplicates = duplicates

        def compose_node(self, parent, index):
            self._depth += 1
            try:
                if self._depth > MAX_DEPTH:
                    raise yaml.composer.ComposerError(
                        None, None, f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark)
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

        def construct_object(self, node, deep=False):
            try:
                return super().construct_object(node, deep=deep)
            except yaml.YAMLError:
                raise
            except RecursionError:
                raise yaml.constructor.ConstructorError(None, None, "nested too deeply", node.start_mark) from None
            except Exception as exc:  # !!int 08 (ValueError), !!bool maybe (KeyError), !!timestamp x ...
                tag = node.tag.rsplit(":", 1)[-1] if isinstance(node.tag, str) else "?"
                value = node.value if isinstance(node.value, str) else ""
                raise yaml.constructor.ConstructorError(
                    None, None, f"{shorten(value, 60)!s} is not a valid !!{tag} value"
                    + (f" ({shorten(str(exc), 80)})" if str(exc) and not isinstance(exc, KeyError) else ""),
                    node.start_mark) from None

        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                self.flatten_mapping(node)
                seen: dict[Any, Any] = {}
                for key_node, _ in node.value:
                    key = self.construct_object(key_node, deep=True)
                    try:
                        hash(key)
                    except TypeError:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"a key must be a plain value, not {_kind(key)}", key_node.start_mark) from None
                    if key in seen:
                        self._duplicates(f"{shorten(str(key), 80)!r} (line {key_node.start_mark.line + 1}) is "
                                         f"also on line {seen[key].line + 1}", key_node.start_mark)
                    else:
                        seen[key] = key_node.start_mark
            return super().construct_mapping(node, deep=deep)

    return SafeLoader


_LOADER = None


def parse_yaml(text: str, shown: str, *, error: type[MlexecError] = ProjectError, all_documents: bool = False,
               duplicates: str = "warn", hint: str | None = None) -> Any:
    """The YAML value of ``text`` (a list of documents with ``all_documents``); anything wrong is an ``error``.

    ``duplicates``: ``"warn"`` (a :class:`FileWarning`, the last value is kept as
    PyYAML and MLflow keep it) or ``"error"`` (files only mlexec reads).
    Strings holding NUL or lone surrogates are refused, with their key path.
    """
    return _parse_yaml(text, shown, error, all_documents, duplicates, hint, [])


def _parse_yaml(text: str, shown: str, error: type[MlexecError], all_documents: bool, duplicates: str,
                hint: str | None, warned: list[str]) -> Any:
    """:func:`parse_yaml`; the duplicate keys it warned about are appended to ``warned``."""
    import yaml

    global _LOADER
    if _LOADER is None:
        _LOADER = _loader_class()

    def on_duplicate(message: str, mark) -> None:
        if duplicates == "error":
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {message}", mark)
        warned.append(message)
        warnings.warn(f"{shown}:{mark.line + 1}: duplicate key {message}; the last one is used",
                      FileWarning, stacklevel=2)

    loader = None
    try:
        loader = _LOADER(text, on_duplicate)
        documents: list[Any] = []
        while loader.check_node():
            node = loader.get_node()
            _check_size(node)
            documents.append(loader.construct_document(node))
            if not all_documents:
                if loader.check_node():
                    node = loader.get_node()
                    raise yaml.composer.ComposerError(
                        "expected a single document in the stream", None, "but found another document",
                        node.start_mark)
                break
    except yaml.YAMLError as exc:
        raise error(f"invalid YAML: {_yaml_problem(exc)}", context=f"{shown}{_yaml_position(exc, text)}",
                    hint=hint) from None
    except RecursionError:
        raise error(f"invalid YAML: nested too deeply (at most {MAX_DEPTH} levels)", context=shown) from None
    finally:
        if loader is not None:
            loader.dispose()
    result: Any = documents if all_documents else (documents[0] if documents else None)
    check_values(result, shown, error=error)
    return result


def load_yaml(path: str | os.PathLike[str], *, error: type[MlexecError] = ProjectError, what: str = "file",
              all_documents: bool = False, duplicates: str = "warn", hint: str | None = None) -> Any:
    """:func:`read_text` then :func:`parse_yaml`: ``path``'s YAML value, or one ``error``.

    The value of a file read before with the same text comes from the parse cache
    (:func:`cached_parse`), so a run of an unchanged project does not import PyYAML.
    """
    text = read_text(path, error=error, what=what, hint=hint)
    shown = _shown_path(path)
    key = (all_documents, duplicates)
    found = cached_parse(text, key)
    if found is not _MISS:
        check_values(found, shown, error=error)
        return found
    warned: list[str] = []
    result = _parse_yaml(text, shown, error, all_documents, duplicates, hint, warned)
    if not warned:  # a file with a warning is parsed (and warned about) every time
        _store_parse(text, key, result)
    return result


# -- the parse cache --------------------------------------------------------------------------
#
# Reading an MLproject on every run would import PyYAML (about 12 ms) and parse
# it in pure Python.  The value of a file whose text was parsed before is kept
# in one of PARSE_SLOTS small files under $XDG_CACHE_HOME/mlexec/parsed (the
# slot is a checksum of the text), marshalled with the text itself, which a
# hit must match exactly.  Only plain values are kept (no dates), only for
# files that parsed without a warning; errors are never kept.  Anything wrong
# with the cache (missing, unreadable, another Python) is a miss.

PARSE_SLOTS = 256
_PARSE_FORMAT = 1
_MISS: Any = object()


def parse_cache_dir() -> Path:
    from mlexec_core.xdg import cache_home

    return cache_home() / "parsed"


def _slot(text: str) -> Path:
    import binascii

    return parse_cache_dir() / f"{binascii.crc32(text.encode('utf-8', 'surrogatepass')) % PARSE_SLOTS:02x}"


def _stamp() -> tuple:
    import sys

    from mlexec_core.version import __version__

    return (_PARSE_FORMAT, __version__, sys.version)


def cached_parse(text: str, key: tuple) -> Any:
    """The kept value of ``text`` parsed with ``key``'s options, or ``_MISS``."""
    import marshal

    try:
        with open(_slot(text), "rb") as f:
            entry = marshal.loads(f.read())
    except (OSError, ValueError, EOFError, TypeError):
        return _MISS
    if not (isinstance(entry, tuple) and len(entry) == 4 and entry[0] == _stamp() and entry[1] == key
            and entry[2] == text):
        return _MISS
    return entry[3]


def _store_parse(text: str, key: tuple, value: Any) -> None:
    import marshal

    try:
        data = marshal.dumps((_stamp(), key, text, value))
    except ValueError:  # a date, or another value marshal does not keep
        return
    slot = _slot(text)
    tmp = slot.with_name(f".{slot.name}.{os.getpid()}")
    try:
        slot.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, slot)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _check_size(root) -> None:
    """Refuse a document whose aliases expand to more than :data:`MAX_NODES` values (a "billion laughs")."""
    import yaml

    sizes: dict[int, int] = {}
    visiting: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if id(node) in sizes:
            continue
        children = [] if isinstance(node, yaml.ScalarNode) else (
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else list(node.value))
        if not done:
            if id(node) in visiting:
                raise yaml.composer.ComposerError(None, None, "an alias refers to the value that holds it",
                                                  node.start_mark)
            visiting.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
            continue
        visiting.discard(id(node))
        total = 1 + sum(sizes.get(id(c), 1) for c in children)
        if total > MAX_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"the document expands to more than {MAX_NODES} values (through aliases)", node.start_mark)
        sizes[id(node)] = total


def _yaml_problem(exc: Exception) -> str:
    problem = getattr(exc, "problem", None)
    context = getattr(exc, "context", None)
    if getattr(exc, "reason", None) and isinstance(getattr(exc, "character", None), int):  # ReaderError
        return f"character #x{exc.character:04x} is not allowed in YAML ({exc.reason})"
    text = problem or str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if context and problem and "expected a single document" in context:
        text = f"{context}, {problem}"
    return shorten(str(text), 300)


def _yaml_position(exc: Exception, text: str = "") -> str:
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        return f":{mark.line + 1}:{mark.column + 1}"
    position = getattr(exc, "position", None)  # ReaderError: a character YAML does not allow
    if isinstance(position, int):
        return f":{text.count(chr(10), 0, position) + 1}"
    return ""


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list"}.get(type(value), type(value).__name__)


# -- JSON -------------------------------------------------------------------------------


def parse_json(text: str, shown: str, *, error: type[MlexecError] = ProjectError, hint: str | None = None) -> Any:
    """The JSON value of ``text``; invalid JSON, deep nesting or bad strings are one ``error``."""
    import json

    try:
        data = json.loads(text)
    except RecursionError:
        raise error(f"not valid JSON: nested too deeply (at most {MAX_DEPTH} levels)", context=shown,
                    hint=hint) from None
    except ValueError as exc:
        raise error(f"not valid JSON: {shorten(str(exc).splitlines()[0] if str(exc) else 'empty', 300)}",
                    context=shown, hint=hint) from None
    check_values(data, shown, error=error)
    return data


# -- the values -------------------------------------------------------------------------


def walk(data: Any) -> Iterator[tuple[str, Any, int]]:
    """Every value of ``data`` with its key path (``a.b[0]``) and depth, without recursion."""
    stack: list[tuple[str, Any, int]] = [("", data, 0)]
    seen: set[int] = set()
    while stack:
        path, value, depth = stack.pop()
        yield path, value, depth
        if isinstance(value, (dict, list)):
            if id(value) in seen:  # shared by an alias: already checked
                continue
            seen.add(id(value))
            items = value.items() if isinstance(value, dict) else enumerate(value)
            children = []
            for key, item in items:
                if isinstance(value, list):
                    child = f"{path}[{key}]"
                else:
                    child = f"{path}.{key}" if path else str(key)
                children.append((child, item, depth + 1))
            stack.extend(reversed(children))


def check_values(data: Any, shown: str, *, error: type[MlexecError] = ProjectError) -> None:
    """Refuse nesting deeper than :data:`MAX_DEPTH` and strings that are not text (NUL, lone surrogates)."""
    count = 0
    for path, value, depth in walk(data):
        count += 1
        if count > MAX_NODES:
            raise error(f"holds more than {MAX_NODES} values", context=shown)
        if depth > MAX_DEPTH:
            raise error(f"{shorten(path, 120)}: nested more than {MAX_DEPTH} levels deep", context=shown)
        if isinstance(value, str):
            problem = text_problem(value)
            if problem:
                raise error(f"{shorten(path, 120) or 'the value'}: the value {problem}", context=shown)
        if isinstance(value, dict):
            for key in value:
                if isinstance(key, str):
                    problem = text_problem(key)
                    if problem:
                        where = f"{shorten(path, 120)}: " if path else ""
                        raise error(f"{where}the key {shorten(key, 60)!r} {problem}", context=shown)
