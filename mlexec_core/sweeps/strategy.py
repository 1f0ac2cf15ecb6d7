"""Search strategies: the interface plugins implement, and the built-in ``grid`` and ``random``.

A strategy is asked for one child's parameters at a time (:meth:`SearchStrategy.ask`)
and told how each child ended (:meth:`SearchStrategy.tell`), so adaptive ones
(Optuna's TPE) can use the results while the sweep runs.  The sweep calls
both from one thread.  Strategies register through the
:func:`~mlexec_core.plugin.hookspecs.mlexec_search_strategies` hook, the built-in
ones included (from :mod:`mlexec_core.builtins.sweep_plugin`, as records; this module holds no hook).
"""

from __future__ import annotations

import abc
import itertools
import math
import random
from typing import Any, Mapping, Sequence

from attrs import frozen

from mlexec_core.errors import UsageError
from mlexec_core.plugin.interfaces import Registered
from mlexec_core.sweeps.spec import Domain, SweepSpec


@frozen
class TrialResult:
    """A child that has ended, as a strategy is told about it."""

    #: The child's parameter values (strings, as the command received them).
    params: Mapping[str, str]
    #: FINISHED, FAILED or KILLED.
    status: str
    #: The objective metric read from the child's run (``None``: no ``--metric``, or not logged).
    value: float | None = None
    run_id: str | None = None


class SearchStrategy(Registered, abc.ABC):
    """Chooses the children of a sweep.

    Its ``--strategy`` name, description and capabilities are written in its
    :class:`~mlexec_core.plugin.Registration` (``kind="search-strategy"``):
    ``"adaptive"`` if it learns from results (then ``--metric`` is required),
    ``"finite"`` if it knows all its children (then ``--trials N`` is not required).
    """

    def check(self, spec: SweepSpec) -> None:
        """Refuse a spec this strategy cannot search (raise :class:`~mlexec_core.errors.UsageError`)."""

    @abc.abstractmethod
    def start(self, spec: SweepSpec, history: Sequence[TrialResult]) -> None:
        """Begin (or, with ``history`` of an earlier attempt at this sweep, continue) the search.

        On ``--resume``, ``history`` holds the children that already ended; an
        adaptive strategy learns from them, and ``spec.trials`` still counts them.
        """

    @abc.abstractmethod
    def ask(self) -> Mapping[str, str] | None:
        """The next child's parameter values, or ``None`` when there are no more."""

    def tell(self, result: TrialResult) -> None:
        """A child asked for earlier has ended."""

    def size(self) -> int | None:
        """How many children the whole sweep has, if known in advance."""
        return None

    def describe(self, spec: SweepSpec) -> dict[str, Any]:
        """For ``--dry-run`` of a strategy whose children are not known in advance: the search space."""
        return {n: d.to_dict() for n, d in spec.parameters.items()}


class GridSearch(SearchStrategy):
    """Every combination of the values."""

    def check(self, spec: SweepSpec) -> None:
        sampled = spec.sampled
        if sampled:
            d = spec.parameters[sampled[0]]
            raise UsageError(f"grid search takes lists and ranges; {sampled[0]}={d.text} is drawn at random",
                             hint="use --strategy random --trials N (or optuna), or give a list of values")
        if spec.trials is not None:
            raise UsageError("--trials does not go with the grid strategy: it runs every combination",
                             hint="use --strategy random to draw N of them")
        total = math.prod(len(d.values) for d in spec.parameters.values())
        from mlexec_core.sweeps.spec import MAX_GRID

        if total > MAX_GRID:
            raise UsageError(f"the grid has {total} combinations, more than {MAX_GRID}",
                             hint="use --strategy random --trials N to sample it")

    def start(self, spec: SweepSpec, history: Sequence[TrialResult]) -> None:
        names = list(spec.parameters)
        self._total = math.prod(len(spec.parameters[n].values) for n in names)
        self._combos = (dict(zip(names, combo)) for combo in itertools.product(*(spec.parameters[n].values
                                                                                   for n in names)))

    def ask(self) -> Mapping[str, str] | None:
        return next(self._combos, None)

    def size(self) -> int | None:
        return self._total


def draw(domain: Domain, rng: random.Random) -> str:
    """One value of ``domain``, as the command receives it."""
    if domain.kind in ("values", "choice"):
        return domain.values[0] if len(domain.values) == 1 else rng.choice(domain.values)
    if domain.kind == "int":
        return str(rng.randint(int(domain.low), int(domain.high)))
    if domain.kind == "loguniform":
        value = math.exp(rng.uniform(math.log(domain.low), math.log(domain.high)))
    else:
        value = rng.uniform(domain.low, domain.high)
    return repr(float(f"{value:.6g}"))


class RandomSearch(SearchStrategy):
    """``--trials N`` children with values drawn at random."""

    def check(self, spec: SweepSpec) -> None:
        if spec.trials is None:
            raise UsageError("the random strategy needs --trials N (how many children to run)")

    def start(self, spec: SweepSpec, history: Sequence[TrialResult]) -> None:
        rng = random.Random(spec.seed)
        names = list(spec.parameters)
        self._trials = [{n: draw(spec.parameters[n], rng) for n in names} for _ in range(spec.trials or 0)]
        self._next = 0

    def ask(self) -> Mapping[str, str] | None:
        if self._next >= len(self._trials):
            return None
        self._next += 1
        return self._trials[self._next - 1]

    def size(self) -> int | None:
        return len(self._trials)
