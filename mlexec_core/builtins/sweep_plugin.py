"""The built-in ``sweep`` plugin's hook: the ``grid`` and ``random`` search strategies.

The strategies live in :mod:`mlexec_core.sweeps.strategy`, imported when the
hook is called (by ``mlexec sweep`` and ``mlexec plugins``), so that ``mlexec run``
does not pay for the sweep modules."""

from __future__ import annotations

from mlexec_core.plugin import hookimpl


@hookimpl
def mlexec_search_strategies():
    from mlexec_core.sweeps.strategy import GridSearch, RandomSearch

    return [GridSearch, RandomSearch]
