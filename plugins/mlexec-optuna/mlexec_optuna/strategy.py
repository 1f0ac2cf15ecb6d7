"""Optuna's TPE as an mlexec search strategy.

Each child is one Optuna trial: :meth:`OptunaSearch.ask` asks the study for the
next values, :meth:`OptunaSearch.tell` gives it the child's ``--metric`` value
(or marks the trial failed).  The study lives in memory; what makes a sweep
resumable is MLflow: on ``--resume`` the children that finished are added to a
new study (with their values), so TPE continues from what it had learnt and
the sweep runs only the trials still missing.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from mlexec_core.errors import UsageError
from mlexec_core.sweeps.strategy import Domain, SweepSpec
from mlexec_core.sweeps.strategy import SearchStrategy, TrialResult

#: ``strategy_options:`` keys of a sweep file, for this strategy.
OPTIONS = {"sampler": ("tpe", "random"), "n_startup_trials": int}


def _format(value: Any) -> str:
    if isinstance(value, float):
        return repr(float(f"{value:.6g}"))
    return str(value)


class OptunaSearch(SearchStrategy):
    """Optuna's TPE sampler (registered, as adaptive, in :mod:`mlexec_optuna.plugin`)."""

    def check(self, spec: SweepSpec) -> None:
        for key, value in spec.strategy_options.items():
            if key not in OPTIONS:
                raise UsageError(f"strategy_options: unknown key {key!r} for the optuna strategy",
                                 hint=f"keys: {', '.join(sorted(OPTIONS))}")
        sampler = spec.strategy_options.get("sampler", "tpe")
        if sampler not in OPTIONS["sampler"]:
            raise UsageError(f"strategy_options.sampler: {sampler!r} is not one of tpe, random")
        startup = spec.strategy_options.get("n_startup_trials", 0)
        if isinstance(startup, bool) or not isinstance(startup, int) or startup < 0:
            raise UsageError(f"strategy_options.n_startup_trials: expected a whole number, got {startup!r}")
        if not any(self._searched(d) for d in spec.parameters.values()):
            raise UsageError("the optuna strategy has nothing to search: every parameter has one value",
                             hint="give a range such as -P lr='loguniform(1e-4, 1e-1)' or a list")

    @staticmethod
    def _searched(domain: Domain) -> bool:
        return not (domain.kind == "values" and len(domain.values) == 1)

    def _distributions(self, spec: SweepSpec):
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        dists, fixed = {}, {}
        for name, d in spec.parameters.items():
            if not self._searched(d):
                fixed[name] = d.values[0]
            elif d.kind in ("values", "choice"):
                dists[name] = CategoricalDistribution(list(d.values))
            elif d.kind == "int":
                dists[name] = IntDistribution(int(d.low), int(d.high))
            else:
                dists[name] = FloatDistribution(d.low, d.high, log=d.kind == "loguniform")
        return dists, fixed

    def start(self, spec: SweepSpec, history: Sequence[TrialResult]) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        options = spec.strategy_options
        if options.get("sampler") == "random":
            sampler = optuna.samplers.RandomSampler(seed=spec.seed)
        else:
            startup = options.get("n_startup_trials")
            if startup is None:  # TPE's default is 10; a short sweep should still learn something
                startup = max(1, min(10, (spec.trials or 10) // 3))
            sampler = optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=startup)
        self.study = optuna.create_study(direction=spec.goal, sampler=sampler)
        self.dists, self.fixed = self._distributions(spec)
        finished = 0
        for result in history:
            if result.status != "FINISHED":
                continue
            finished += 1
            params = self._values(result.params)
            if params is None or result.value is None or math.isnan(result.value):
                continue
            self.study.add_trial(optuna.trial.create_trial(params=params, distributions=self.dists,
                                                           value=result.value))
        self.remaining = max(0, (spec.trials or 0) - finished)
        self.pending: list[tuple[dict[str, str], Any]] = []

    def _values(self, params: Mapping[str, str]) -> dict[str, Any] | None:
        """A finished child's values as Optuna's distributions hold them (``None`` if outside them)."""
        from optuna.distributions import CategoricalDistribution, IntDistribution

        out = {}
        for name, dist in self.dists.items():
            if name not in params:
                return None
            raw = params[name]
            try:
                if isinstance(dist, CategoricalDistribution):
                    value = raw
                    inside = raw in dist.choices
                elif isinstance(dist, IntDistribution):
                    value = int(raw)
                    inside = dist.low <= value <= dist.high
                else:
                    value = min(max(float(raw), dist.low), dist.high)
                    inside = True
            except ValueError:
                return None
            if not inside:
                return None
            out[name] = value
        return out

    def ask(self) -> Mapping[str, str] | None:
        if self.remaining <= 0:
            return None
        self.remaining -= 1
        trial = self.study.ask(self.dists)
        params = {name: _format(trial.params[name]) for name in self.dists}
        params.update(self.fixed)
        self.pending.append((params, trial))
        return params

    def tell(self, result: TrialResult) -> None:
        import optuna

        for i, (params, trial) in enumerate(self.pending):
            if params == dict(result.params):
                del self.pending[i]
                break
        else:
            return
        if result.status == "FINISHED" and result.value is not None and not math.isnan(result.value):
            self.study.tell(trial, result.value)
        else:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def describe(self, spec: SweepSpec) -> dict[str, Any]:
        space = {n: d.to_dict() for n, d in spec.parameters.items()}
        return {"sampler": spec.strategy_options.get("sampler", "tpe"), "direction": spec.goal,
                "metric": spec.metric, "trials": spec.trials, "parameters": space}
