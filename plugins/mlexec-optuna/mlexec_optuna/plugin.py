"""Hook implementations only; the strategy lives in :mod:`mlexec_optuna.strategy`, imported when a sweep
selects it (optuna itself when the sweep starts)."""

from mlexec_core.plugin import Registration, hookimpl


@hookimpl
def mlexec_search_strategies():
    return [Registration(
        kind="search-strategy", name="optuna", path="mlexec_optuna.strategy:OptunaSearch",
        capabilities={"adaptive"},
        description="Bayesian optimisation with Optuna's TPE sampler (--metric, --trials)",
    )]
