"""Hook implementations only; the strategy lives in :mod:`mlexec_optuna.strategy` (optuna is imported when a sweep starts)."""

from mlexec_core.plugin import hookimpl


@hookimpl
def mlexec_search_strategies():
    from mlexec_optuna.strategy import OptunaSearch

    return [OptunaSearch]
