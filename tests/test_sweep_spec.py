"""The sweep syntax: -P values, the sweep file, type checks against the entry point."""

from __future__ import annotations

import pytest

from mlexec_core.errors import MlexecError, ParameterError, UsageError
from mlexec_core.project.model import EntryPoint, Parameter, ParamType
from mlexec_core.sweeps.spec import SweepSpec, build_spec, check_domain, parse_domain
from mlexec_core.sweeps.strategy import GridSearch, RandomSearch

EP = EntryPoint("main", "train {lr} {epochs} {name}", {
    "lr": Parameter("lr", ParamType.FLOAT, 0.1),
    "epochs": Parameter("epochs", ParamType.INT, 1),
    "name": Parameter("name", ParamType.STRING, "x"),
    "flag": Parameter("flag", ParamType.BOOL, False),
})


@pytest.mark.parametrize("text, values", [
    ("5", ("5",)),
    ("0.001,0.01,0.1", ("0.001", "0.01", "0.1")),
    ("range(1, 4)", ("1", "2", "3")),
    ("range(0, 1, 0.25)", ("0", "0.25", "0.5", "0.75")),
    ("range(10, 0, -5)", ("10", "5")),
    (r"a\,b,c", ("a,b", "c")),
    (r"\range(1, 2)", ("range(1", " 2)")),
    (r"\range(1\, 2)", ("range(1, 2)",)),
    ("", ("",)),
])
def test_values(text, values):
    domain = parse_domain("p", text)
    assert domain.kind == "values" and domain.values == values


def test_sampled_domains():
    assert parse_domain("p", "uniform(0, 1)").kind == "uniform"
    d = parse_domain("p", "loguniform(1e-4, 1e-1)")
    assert (d.kind, d.low, d.high) == ("loguniform", 1e-4, 1e-1)
    assert parse_domain("p", "int(1, 10)").kind == "int"
    assert parse_domain("p", "choice(adam, sgd)").values == ("adam", "sgd")


@pytest.mark.parametrize("text, message", [
    ("range(1)", "expected range(start, stop[, step])"),
    ("range(1, 5, 0)", "step of range() cannot be 0"),
    ("range(5, 1)", "the range is empty"),
    ("range(a, 2)", "start 'a' is not a number"),
    ("uniform(1, 0)", "low must be below high"),
    ("loguniform(0, 1)", "loguniform needs low > 0"),
    ("int(1.5, 3)", "int(low, high) takes whole numbers"),
    ("choice()", "needs one or more values"),
])
def test_bad_expressions(text, message):
    with pytest.raises(ParameterError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        parse_domain("p", text)


@pytest.mark.parametrize("name, text, message", [
    ("epochs", "5,7.5", "-P epochs: '7.5' is not an int"),
    ("lr", "0.1,fast", "-P lr: 'fast' is not a float"),
    ("flag", "true,maybe", "'maybe' is not a bool"),
    ("epochs", "uniform(1, 5)", "uniform() draws floats, but epochs is a int"),
    ("flag", "int(0, 1)", "int() draws integers"),
    ("epochs", "choice(1, two)", "'two' is not an int"),
])
def test_values_checked_against_declared_types(name, text, message):
    with pytest.raises(ParameterError) as info:
        check_domain(name, parse_domain(name, text), EP)
    assert message in str(info.value)
    assert "declared as" in info.value.hint


def test_extra_parameters_take_any_text():
    check_domain("other", parse_domain("other", "a,b"), EP)


def test_grid_is_the_cross_product():
    spec = build_spec(["lr=0.1,0.2", "epochs=range(1, 4)", "name=x"])
    grid = GridSearch(None)
    grid.check(spec)
    grid.start(spec, ())
    combos = []
    while (c := grid.ask()) is not None:
        combos.append(dict(c))
    assert grid.size() == 6 and len(combos) == 6
    assert combos[0] == {"lr": "0.1", "epochs": "1", "name": "x"}
    assert combos[-1] == {"lr": "0.2", "epochs": "3", "name": "x"}


def test_grid_refuses_drawn_values_and_trials():
    with pytest.raises(UsageError, match="grid search takes lists and ranges; lr=uniform"):
        GridSearch(None).check(build_spec(["lr=uniform(0, 1)"]))
    with pytest.raises(UsageError, match="--trials does not go with the grid"):
        GridSearch(None).check(build_spec(["lr=1,2"], trials=3))


def test_random_is_repeatable_with_a_seed_and_within_bounds():
    spec = build_spec(["lr=loguniform(1e-4, 1e-1)", "epochs=int(1, 3)", "name=choice(a, b)", "x=1,2"],
                      trials=20, seed=7)

    def draws():
        r = RandomSearch(None)
        r.check(spec)
        r.start(spec, ())
        return [dict(r.ask()) for _ in range(20)]

    first = draws()
    assert first == draws()
    for d in first:
        assert 1e-4 <= float(d["lr"]) <= 1e-1
        assert d["epochs"] in {"1", "2", "3"} and d["name"] in {"a", "b"} and d["x"] in {"1", "2"}
    with pytest.raises(UsageError, match="needs --trials N"):
        RandomSearch(None).check(build_spec(["lr=uniform(0, 1)"]))


def test_sweep_file(tmp_path):
    f = tmp_path / "sweep.yaml"
    f.write_text("strategy: random\ntrials: 4\nseed: 1\nmetric: loss\ngoal: maximize\nmax_parallel: 2\n"
                 "parameters:\n  lr: [0.1, 0.2]\n  epochs: 'range(1, 3)'\n  flag: true\n  name: 'a\\,b'\n")
    spec = build_spec(["epochs=5"], sweep_file=f, trials=6)
    assert spec.strategy == "random" and spec.trials == 6 and spec.goal == "maximize" and spec.max_parallel == 2
    assert spec.parameters["lr"].values == ("0.1", "0.2")
    assert spec.parameters["epochs"].values == ("5",)  # the option wins
    assert spec.parameters["flag"].values == ("true",)
    assert spec.parameters["name"].values == ("a,b",)
    assert SweepSpec.from_json(spec.to_json()).search_key() == spec.search_key()


@pytest.mark.parametrize("text, message", [
    ("strategy: grid\nparamters: {lr: [1]}\n", "unknown key 'paramters'"),
    ("trials: many\n", "trials: expected a whole number"),
    ("fail_fast: 1\n", "fail_fast: expected bool"),
    ("- a\n", "expected a mapping"),
    ("parameters: [a]\n", "parameters: expected a mapping"),
    ("parameters: {lr: {low: 1}}\n", "parameter lr: expected a value, a list or a string"),
    ("a: [\n", "not valid YAML"),
    ("goal: up\n", "goal 'up': expected minimize or maximize"),
])
def test_sweep_file_errors_name_the_file_and_key(tmp_path, text, message):
    f = tmp_path / "sweep.yaml"
    f.write_text(text)
    with pytest.raises(MlexecError) as info:
        build_spec([], sweep_file=f)
    assert message in str(info.value)
    assert str(f) in str(info.value)


def test_sweep_file_hint_suggests_the_key(tmp_path):
    f = tmp_path / "sweep.yaml"
    f.write_text("paramters: {}\n")
    with pytest.raises(UsageError) as info:
        build_spec([], sweep_file=f)
    assert "did you mean 'parameters'" in info.value.hint


def test_option_errors():
    with pytest.raises(UsageError, match="-P lr is given twice"):
        build_spec(["lr=1", "lr=2"])
    with pytest.raises(UsageError, match="must be NAME=VALUES"):
        build_spec(["lr"])
    with pytest.raises(UsageError, match="--max-parallel must be at least 1"):
        build_spec(["lr=1"], max_parallel=0)
    with pytest.raises(UsageError, match="--retries cannot be negative"):
        build_spec(["lr=1"], retries=-1)


def test_the_built_in_strategies_are_registered_once_by_the_sweep_plugin():
    import mlexec_core.sweeps.strategy as strategy
    from mlexec_core.plugin.manager import build_plugins

    assert not hasattr(strategy, "mlexec_search_strategies")  # no stray hook left beside the classes
    found = build_plugins(entry_points=False).search_strategies()
    assert found["grid"] is strategy.GridSearch and found["random"] is strategy.RandomSearch
