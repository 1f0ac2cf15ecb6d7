"""The built-in ``sweep`` plugin's hook: records for the ``grid`` and ``random`` search strategies.

The strategies live in :mod:`mlexec_core.sweeps.strategy`, imported when a sweep
selects one, so that ``mlexec run`` does not pay for the sweep modules."""

from __future__ import annotations

from mlexec_core.plugin import Registration, hookimpl


@hookimpl
def mlexec_search_strategies():
    return [
        Registration(kind="search-strategy", name="grid", path="mlexec_core.sweeps.strategy:GridSearch",
                     capabilities={"finite"},
                     description="every combination of the values (the default for lists and ranges)"),
        Registration(kind="search-strategy", name="random", path="mlexec_core.sweeps.strategy:RandomSearch",
                     description="--trials N children with values drawn at random (--seed S repeats a sweep)"),
    ]
