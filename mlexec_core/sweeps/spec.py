"""What a sweep searches: parameter domains, the strategy, the objective, the limits.

A sweep is written as ``-P`` options (``-P lr=0.001,0.01 -P epochs=range(5, 20, 5)``)
or as a ``--sweep-file`` (YAML, strict: an unknown key is an error).  This module
turns either into a frozen :class:`SweepSpec` and checks every value it can
against the entry point's declared types, before anything runs.  No I/O here
apart from reading the sweep file.

Value syntax, per parameter:

* ``5`` one value, the same for every child;
* ``a,b,c`` a list (grid: each value; random: one drawn per trial);
* ``range(start, stop[, step])`` numbers from start up to, not including, stop;
* ``uniform(lo, hi)``, ``loguniform(lo, hi)`` a float drawn from [lo, hi];
* ``int(lo, hi)`` an integer drawn from lo..hi, both included;
* ``choice(a, b, ...)`` one of the values, drawn.

A backslash makes the next character literal: ``a\\,b`` is the one value ``a,b``,
and ``\\range(1, 2)`` is the text ``range(1, 2)``.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Iterable, Mapping

import attrs
from attrs import frozen

from mlexec_core.errors import ParameterError, UsageError
from mlexec_core.project.model import EntryPoint, ParamType
from mlexec_core.project.params import check_value

GOALS = ("minimize", "maximize")
#: The most children a grid may have (a typo such as range(0, 1e9) should not queue a billion).
MAX_GRID = 100_000

_FUNCTION = re.compile(r"^\s*(range|uniform|loguniform|int|choice)\s*\((.*)\)\s*$", re.S)


# -- domains ------------------------------------------------------------------------------


@frozen
class Domain:
    """Where one parameter's values come from.

    ``kind`` is ``values`` (a fixed value or a list: grid takes each, random
    draws one), ``uniform``, ``loguniform``, ``int`` (drawn) or ``choice`` (drawn
    from ``values``).  ``values`` are strings, exactly what the command receives.
    """

    kind: str
    values: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    #: As the user wrote it (for messages, the parent run's params, resume).
    text: str = ""

    @property
    def sampled(self) -> bool:
        return self.kind in ("uniform", "loguniform", "int", "choice")

    @property
    def fixed(self) -> bool:
        return self.kind == "values" and len(self.values) == 1

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind}
        if self.kind in ("values", "choice"):
            data["values"] = list(self.values)
        else:
            data["low"], data["high"] = self.low, self.high
        return data


def _split(text: str, sep: str = ",") -> list[str]:
    """Split on unescaped ``sep``; backslash escapes are removed."""
    items, current, escaped = [], [], False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == sep:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    if escaped:
        current.append("\\")
    items.append("".join(current))
    return items


def _number(name: str, text: str, what: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ParameterError(f"-P {name}: {what} {text.strip()!r} is not a number") from None
    if not value.is_finite():
        raise ParameterError(f"-P {name}: {what} {text.strip()!r} is not a finite number")
    return value


def _format(value: Decimal) -> str:
    if value == value.to_integral_value() and "." not in str(value) and "E" not in str(value).upper():
        return str(int(value))
    text = format(value.normalize(), "f")
    return text


def parse_domain(name: str, raw: Any) -> Domain:
    """One parameter's domain from a ``-P`` value (or a sweep file value)."""
    if isinstance(raw, bool):
        return Domain("values", ("true" if raw else "false",), text=str(raw).lower())
    if isinstance(raw, (int, float)):
        return Domain("values", (str(raw),), text=str(raw))
    if isinstance(raw, (list, tuple)):
        values = []
        for item in raw:
            if isinstance(item, (list, dict, tuple)) or item is None:
                raise ParameterError(f"parameter {name}: list items must be single values, got {item!r}")
            values.append(_scalar(item))
        if not values:
            raise ParameterError(f"parameter {name}: the list of values is empty")
        return Domain("values", tuple(values), text=",".join(v.replace("\\", "\\\\").replace(",", "\\,")
                                                                for v in values))
    if not isinstance(raw, str):
        raise ParameterError(f"parameter {name}: expected a value, a list or a string such as 'range(1, 5)', "
                             f"got {type(raw).__name__}")
    text = raw
    match = _FUNCTION.match(text)
    if match is None:
        return Domain("values", tuple(_split(text)), text=text)
    func, inner = match.group(1), match.group(2)
    args = [a.strip() for a in _split(inner)] if inner.strip() else []
    usage = {"range": "range(start, stop[, step])", "uniform": "uniform(low, high)",
             "loguniform": "loguniform(low, high)", "int": "int(low, high)", "choice": "choice(a, b, ...)"}[func]
    if func == "choice":
        if not args or any(a == "" for a in args):
            raise ParameterError(f"-P {name}={text}: {usage} needs one or more values")
        return Domain("choice", tuple(args), text=text)
    if func == "range":
        if len(args) not in (2, 3):
            raise ParameterError(f"-P {name}={text}: expected {usage}")
        start, stop = _number(name, args[0], "start"), _number(name, args[1], "stop")
        step = _number(name, args[2], "step") if len(args) == 3 else Decimal(1)
        if step == 0:
            raise ParameterError(f"-P {name}={text}: the step of range() cannot be 0")
        count = math.ceil((stop - start) / step)
        if count <= 0:
            raise ParameterError(f"-P {name}={text}: the range is empty",
                                 hint="range(start, stop) goes up to, not including, stop")
        if count > MAX_GRID:
            raise ParameterError(f"-P {name}={text}: the range has {count} values, more than {MAX_GRID}")
        return Domain("values", tuple(_format(start + i * step) for i in range(count)), text=text)
    if len(args) != 2:
        raise ParameterError(f"-P {name}={text}: expected {usage}")
    low, high = _number(name, args[0], "low"), _number(name, args[1], "high")
    if func == "int":
        if low != low.to_integral_value() or high != high.to_integral_value():
            raise ParameterError(f"-P {name}={text}: int(low, high) takes whole numbers",
                                 hint="use uniform(low, high) for floats")
    if low > high or (low == high and func != "int"):
        raise ParameterError(f"-P {name}={text}: low must be below high")
    if func == "loguniform" and low <= 0:
        raise ParameterError(f"-P {name}={text}: loguniform needs low > 0")
    return Domain(func, low=float(low), high=float(high), text=text)


def _scalar(item: Any) -> str:
    if isinstance(item, bool):
        return "true" if item else "false"
    return str(item)


def check_domain(name: str, domain: Domain, entry_point: EntryPoint) -> None:
    """Every value (or bound) of ``domain`` against ``name``'s declared type; ``ParameterError`` names both."""
    param = entry_point.parameters.get(name)
    if param is None:
        return  # an extra parameter, appended as --name value: any text goes
    ptype = param.type
    hint = f"{name} is declared as {ptype.value} in entry point {entry_point.name!r}"
    if domain.kind in ("values", "choice"):
        for value in domain.values:
            try:
                check_value(ptype, value)
            except ValueError as exc:
                raise ParameterError(f"-P {name}: {exc}", hint=hint) from None
        return
    if domain.kind in ("uniform", "loguniform") and ptype not in (ParamType.FLOAT, ParamType.STRING):
        raise ParameterError(f"-P {name}={domain.text}: {domain.kind}() draws floats, but {name} is a "
                             f"{ptype.value}", hint=hint + ("; use int(low, high)" if ptype is ParamType.INT else ""))
    if domain.kind == "int" and ptype not in (ParamType.INT, ParamType.FLOAT, ParamType.STRING):
        raise ParameterError(f"-P {name}={domain.text}: int() draws integers, but {name} is a {ptype.value}",
                             hint=hint)


# -- the sweep ----------------------------------------------------------------------------


@frozen
class SweepSpec:
    """A sweep as the user wrote it (command line and sweep file merged)."""

    parameters: Mapping[str, Domain]
    strategy: str | None = None
    trials: int | None = None
    seed: int | None = None
    metric: str | None = None
    goal: str = "minimize"
    max_parallel: int | None = None
    max_failures: int | None = None
    fail_fast: bool = False
    retries: int = 0
    entry_point: str = "main"
    #: Options a strategy plugin reads (``strategy_options:`` in the sweep file).
    strategy_options: Mapping[str, Any] = attrs.field(factory=dict)
    #: ``resources:`` in the sweep file, as written (checked): every child's, under ``-R``.
    resources: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def sampled(self) -> list[str]:
        return [n for n, d in self.parameters.items() if d.sampled]

    def search_key(self) -> dict[str, Any]:
        """What defines the children: compared on ``--resume``."""
        return {
            "entry_point": self.entry_point,
            "strategy": self.strategy,
            "trials": self.trials,
            "seed": self.seed,
            "metric": self.metric,
            "goal": self.goal,
            "parameters": {n: d.to_dict() for n, d in sorted(self.parameters.items())},
            "strategy_options": dict(self.strategy_options),
        }

    def to_json(self) -> str:
        """The spec as recorded on the parent run (parameters as written, so it stays short)."""
        data = {
            "entry_point": self.entry_point, "strategy": self.strategy, "trials": self.trials, "seed": self.seed,
            "metric": self.metric, "goal": self.goal, "strategy_options": dict(self.strategy_options),
            "parameters": {n: d.text for n, d in self.parameters.items()},
            "max_parallel": self.max_parallel, "max_failures": self.max_failures, "fail_fast": self.fail_fast,
            "retries": self.retries, "resources": dict(self.resources),
            # the order the parameters were given in: it decides the draws of a seed and the grid's
            # numbering, which --resume must repeat (sort_keys sorts the mapping above)
            "order": list(self.parameters),
        }
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SweepSpec":
        data = json.loads(text)
        names = data.get("order") or list(data["parameters"])
        return cls(parameters={n: parse_domain(n, data["parameters"][n]) for n in names},
                   strategy=data["strategy"], trials=data["trials"], seed=data["seed"],
                   metric=data["metric"], goal=data["goal"], max_parallel=data.get("max_parallel"),
                   max_failures=data.get("max_failures"), fail_fast=bool(data.get("fail_fast")),
                   retries=int(data.get("retries") or 0), entry_point=data["entry_point"],
                   strategy_options=data.get("strategy_options") or {}, resources=data.get("resources") or {})


@frozen
class _SweepFile:
    """A sweep file as written: its keys and their types, structured by :mod:`mlexec_core.configmodel`.

    The parameters' values are domains with a syntax of their own (``range(1, 4)``), which
    :func:`parse_domain` reads; here they are only a mapping of names to values.
    """

    entry_point: str | None = None
    strategy: str | None = None
    trials: int | None = None
    seed: int | None = None
    metric: str | None = None
    goal: str | None = None
    max_parallel: int | None = None
    max_failures: int | None = None
    fail_fast: bool | None = None
    retries: int | None = None
    parameters: Mapping[str, Any] = attrs.field(factory=dict)
    strategy_options: Mapping[str, Any] = attrs.field(factory=dict)
    resources: Mapping[str, Any] = attrs.field(factory=dict)


def load_sweep_file(path: Path) -> dict[str, Any]:
    """A sweep file's keys, checked: an unknown key or a wrong type is an error naming it and the file."""
    import yaml

    from mlexec_core.configmodel import structure  # imports cattrs: only when a sweep file is read

    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read it: {exc}", context=where, hint="--sweep-file takes a YAML file") from None
    try:
        data = yaml.safe_load(text)
    except Exception as exc:  # YAMLError and the constructor errors PyYAML raises for odd tags
        first = str(exc).strip().splitlines()
        raise UsageError(f"not valid YAML: {first[0] if first else type(exc).__name__}", context=where) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError("expected a mapping of keys (parameters, strategy, metric ...)", context=where)
    raw = structure(data, _SweepFile, context=where)
    for name in raw.parameters:
        if not name:
            raise UsageError(f"parameters: {name!r} is not a parameter name", context=where)
    if raw.resources:
        from mlexec_core.resources import parse_resources

        parse_resources(raw.resources, lambda message, hint: UsageError(message, context=where, hint=hint),
                        prefix="resources.")
    return {k: v for k, v in attrs.asdict(raw, recurse=False).items() if v is not None}


def build_spec(
    parameters: Iterable[str] | Mapping[str, Any] = (),
    *,
    sweep_file: Path | None = None,
    strategy: str | None = None,
    trials: int | None = None,
    seed: int | None = None,
    metric: str | None = None,
    goal: str | None = None,
    max_parallel: int | None = None,
    max_failures: int | None = None,
    fail_fast: bool | None = None,
    retries: int | None = None,
    entry_point: str | None = None,
    strategy_options: Mapping[str, Any] | None = None,
) -> SweepSpec:
    """Merge the sweep file (if any) and the options; options win over the file."""
    file = load_sweep_file(sweep_file) if sweep_file is not None else {}
    domains: dict[str, Domain] = {}
    context = str(sweep_file) if sweep_file is not None else None
    for name, raw in (file.get("parameters") or {}).items():
        try:
            domains[name] = parse_domain(name, raw)
        except ParameterError as exc:
            exc.context = context
            raise
    if isinstance(parameters, Mapping):
        items = list(parameters.items())
    else:
        items = []
        seen = set()
        for item in parameters:
            if "=" not in item:
                raise UsageError(f"-P {item!r} must be NAME=VALUES", hint="for example -P lr=0.001,0.01,0.1")
            name, value = item.split("=", 1)
            name = name.strip()
            if not name:
                raise UsageError(f"-P {item!r} has no name before '='")
            if name in seen:
                raise UsageError(f"-P {name} is given twice", hint="give every value in one -P: -P lr=0.1,0.2")
            seen.add(name)
            items.append((name, value))
    for name, raw in items:
        domains[name] = parse_domain(name, raw)

    def pick(value, key, default=None):
        return value if value is not None else file.get(key, default)

    for label, value in (("--trials", pick(trials, "trials")), ("--max-parallel", pick(max_parallel, "max_parallel"))):
        if value is not None and value < 1:
            raise UsageError(f"{label} must be at least 1, not {value}")
    for label, value in (("--max-failures", pick(max_failures, "max_failures")), ("--retries", pick(retries, "retries"))):
        if value is not None and value < 0:
            raise UsageError(f"{label} cannot be negative ({value})")
    chosen_goal = pick(goal, "goal", "minimize")
    if chosen_goal not in GOALS:
        raise UsageError(f"goal {chosen_goal!r}: expected minimize or maximize", context=context if goal is None else None)
    return SweepSpec(
        parameters=domains,
        strategy=pick(strategy, "strategy"),
        trials=pick(trials, "trials"),
        seed=pick(seed, "seed"),
        metric=pick(metric, "metric"),
        goal=chosen_goal,
        max_parallel=pick(max_parallel, "max_parallel"),
        max_failures=pick(max_failures, "max_failures"),
        fail_fast=bool(pick(fail_fast or None, "fail_fast", False)),
        retries=int(pick(retries, "retries", 0) or 0),
        entry_point=pick(entry_point, "entry_point", "main"),
        strategy_options=dict(pick(strategy_options, "strategy_options", {}) or {}),
        resources=dict(file.get("resources") or {}),
    )
