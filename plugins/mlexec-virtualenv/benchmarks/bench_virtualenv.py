"""mlexec's virtualenv manager vs ``mlflow run --env-manager virtualenv``, side by side.

On one small project (python_env.yaml: Python 3.X.Y of this interpreter, pip,
six==1.16.0; the command imports six), alternating the tools so machine noise
hits both alike:

* cold: a new, empty environment root for every run of each tool (the
  package caches of uv and pip stay warm, as on a developer's machine);
* warm: the environment already exists;
* ``mlexec run --env-manager local``: the core's local run, the floor for warm.

Then, unless ``--no-real``, a real project (issue 19): MLflow's own example
``sklearn_logistic_regression`` (python_env: this Python, scikit-learn and
mlflow at the versions installed here; the command imports them, fits, logs a
metric and the model), warm, mlexec vs ``mlflow run --env-manager virtualenv``,
and the import of ``mlflow, mlflow.sklearn, sklearn.linear_model`` alone in
each tool's environment.  Everything runs with ``PYTHONDONTWRITEBYTECODE=1``
(as on these machines and many CI runners), so an environment that was not
compiled when it was built is never compiled.  Last, what compiling adds to a
cold build: the same uv steps mlexec runs for that project (venv, venv's seed,
the requirements; warm uv cache), with and without ``--compile-bytecode``,
alternating.

Targets (issue 3): cold at most a third of MLflow's time; warm within 50 ms of
the core's local run.  MLflow's virtualenv manager needs pyenv with the exact
Python version installed; if it cannot run here, this says so and compares
against ``mlflow run --env-manager uv`` instead.  A benchmark, not a test: it
asserts nothing.

    python plugins/mlexec-virtualenv/benchmarks/bench_virtualenv.py [--repeat 3] [--no-real]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlexec_core.testing.benchmarking import BIN, tools

VERSION = "%d.%d.%d" % sys.version_info[:3]


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return time.perf_counter() - start, proc


def must(result: tuple[float, subprocess.CompletedProcess], cmd: list[str]) -> float:
    elapsed, proc = result
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warm-repeat", type=int, default=15,
                        help="extra alternating warm/local mlexec runs, for the 50 ms comparison")
    parser.add_argument("--no-real", action="store_true",
                        help="skip the real project (scikit-learn + mlflow; its first MLflow build takes minutes)")
    parser.add_argument("--real-only", action="store_true", help="only the real project")
    args = parser.parse_args()
    if args.real_only:
        real_project(args.repeat)
        return

    mlexec_bin, mlflow_bin = tools()

    with tempfile.TemporaryDirectory(prefix="mlexec-bench-venv-") as tmp:
        tmp = Path(tmp)
        project, env = _python_env_project(tmp, "project", "python -c 'import six'", ["six==1.16.0"])
        subprocess.run([sys.executable, "-c", "from mlflow.tracking import MlflowClient as C; "
                        f"C({env['MLFLOW_TRACKING_URI']!r}).search_experiments()"],
                       env=env, check=True, capture_output=True)

        roots = iter(range(10_000))

        def mlexec_env(root: Path | None = None) -> dict[str, str]:
            return {**env, "MLEXEC_ENV_ROOT": str(root or tmp / f"mlexec-{next(roots)}")}

        def mlflow_env(root: Path | None = None) -> dict[str, str]:
            return {**env, "MLFLOW_ENV_ROOT": str(root or tmp / f"mlflow-{next(roots)}")}

        mlexec_cmd = [mlexec_bin, "run", str(project)]
        local_cmd = [mlexec_bin, "run", str(project), "--env-manager", "local"]
        manager = "virtualenv"
        mlflow_cmd = [mlflow_bin, "run", str(project), "--env-manager", manager]
        warm_mlexec, warm_mlflow = tmp / "warm-mlexec", tmp / "warm-mlflow"

        # First runs: warm the OS caches, uv's and pip's caches, and make the warm environments.
        print(f"project: python {VERSION}, pip, six==1.16.0; repeat {args.repeat}", flush=True)
        must(timed(mlexec_cmd, mlexec_env(warm_mlexec), tmp), mlexec_cmd)
        must(timed(local_cmd, env, tmp), local_cmd)
        _, proc = timed(mlflow_cmd, mlflow_env(warm_mlflow), tmp)
        if proc.returncode != 0:
            last = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1:]
            print(f"note: `mlflow run --env-manager virtualenv` cannot run here ({' '.join(last)}); "
                  "comparing with `mlflow run --env-manager uv` instead", flush=True)
            manager = "uv"
            mlflow_cmd = [mlflow_bin, "run", str(project), "--env-manager", manager]
            shutil.rmtree(warm_mlflow, ignore_errors=True)
            must(timed(mlflow_cmd, mlflow_env(warm_mlflow), tmp), mlflow_cmd)

        names = ["mlexec cold", f"mlflow {manager} cold", "mlexec warm", f"mlflow {manager} warm", "mlexec local"]
        samples: dict[str, list[float]] = {name: [] for name in names}
        for i in range(args.repeat):
            samples["mlexec cold"].append(must(timed(mlexec_cmd, mlexec_env(), tmp), mlexec_cmd))
            samples[f"mlflow {manager} cold"].append(must(timed(mlflow_cmd, mlflow_env(), tmp), mlflow_cmd))
            samples["mlexec warm"].append(must(timed(mlexec_cmd, mlexec_env(warm_mlexec), tmp), mlexec_cmd))
            samples[f"mlflow {manager} warm"].append(must(timed(mlflow_cmd, mlflow_env(warm_mlflow), tmp),
                                                          mlflow_cmd))
            samples["mlexec local"].append(must(timed(local_cmd, env, tmp), local_cmd))
            print(f"  round {i + 1}/{args.repeat} done", flush=True)

        # mlexec runs are quick: more of them, alternating, to compare warm with local under the noise
        pairs: dict[str, list[float]] = {"mlexec warm": [], "mlexec local": []}
        for _ in range(args.warm_repeat):
            pairs["mlexec warm"].append(must(timed(mlexec_cmd, mlexec_env(warm_mlexec), tmp), mlexec_cmd))
            pairs["mlexec local"].append(must(timed(local_cmd, env, tmp), local_cmd))
        inprocess = warm_prepare_ms(project, warm_mlexec, max(20, args.repeat))

    med = {name: statistics.median(values) for name, values in samples.items()}
    print()
    print(f"{'case':<24} {'median s':>9} {'min s':>7} {'max s':>7}   (n={args.repeat})")
    for name, values in samples.items():
        print(f"{name:<24} {med[name]:>9.3f} {min(values):>7.3f} {max(values):>7.3f}")
    print()
    cold = med["mlexec cold"] / med[f"mlflow {manager} cold"]
    warm = med["mlexec warm"] / med[f"mlflow {manager} warm"]
    pair_med = {name: statistics.median(values) for name, values in pairs.items()}
    delta = (pair_med["mlexec warm"] - pair_med["mlexec local"]) * 1000
    print(f"cold: mlexec / mlflow --env-manager {manager}  = {cold:.3f}   (target <= 0.333)")
    print(f"warm: mlexec / mlflow --env-manager {manager}  = {warm:.3f}")
    print(f"warm: mlexec virtualenv - mlexec local     = {delta:+.0f} ms   (target <= 50 ms; medians of "
          f"{args.warm_repeat} alternating runs each: {pair_med['mlexec warm']:.3f} s vs "
          f"{pair_med['mlexec local']:.3f} s)")
    print(f"environment creation (mlexec cold - warm)  = {med['mlexec cold'] - med['mlexec warm']:.3f} s")
    print(f"warm: check() + prepare() in process       = {statistics.median(inprocess):.1f} ms median, "
          f"{min(inprocess):.1f} ms min (n={len(inprocess)}; what the manager adds to a local run)")
    if not args.no_real:
        print()
        real_project(args.repeat)


#: MLflow's examples/sklearn_logistic_regression/train.py (mlflow 3.x).
SKLEARN_TRAIN = """\
import numpy as np
from sklearn.linear_model import LogisticRegression

import mlflow
import mlflow.sklearn
from mlflow.models import infer_signature

if __name__ == "__main__":
    X = np.array([-2, -1, 0, 1, 2, 1]).reshape(-1, 1)
    y = np.array([0, 0, 1, 1, 1, 0])
    lr = LogisticRegression()
    lr.fit(X, y)
    score = lr.score(X, y)
    print(f"Score: {score}")
    mlflow.log_metric("score", score)
    predictions = lr.predict(X)
    signature = infer_signature(X, predictions)
    mlflow.sklearn.log_model(lr, name="model", signature=signature)
    print(f"Model saved in run {mlflow.active_run().info.run_id}")
"""
IMPORTS = "import mlflow, mlflow.sklearn, sklearn.linear_model"


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def _python_env_project(tmp: Path, name: str, command: str, deps: list[str]) -> tuple[Path, dict[str, str]]:
    """A project in ``tmp/name`` whose python_env.yaml asks for this Python, pip and ``deps``; and the
    environment both tools run with (no MLFLOW_/MLEXEC_ settings, uv on PATH, a store in ``tmp``)."""
    project = tmp / name
    project.mkdir()
    (project / "MLproject").write_text(
        f"name: {name}\npython_env: python_env.yaml\nentry_points:\n  main:\n    command: \"{command}\"\n")
    (project / "python_env.yaml").write_text(
        f'python: "{VERSION}"\nbuild_dependencies:\n  - pip\ndependencies:\n' + "".join(f"  - {d}\n" for d in deps))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLEXEC_"))}
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])  # mlflow's uv manager wants uv on PATH
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    return project, env


def real_project(repeat: int) -> None:
    """The warm real project, mlexec vs `mlflow run --env-manager virtualenv`, and what compiling costs."""
    mlexec_bin, mlflow_bin = tools()
    deps = [f"scikit-learn=={_version('scikit-learn')}", f"mlflow=={_version('mlflow')}"]
    with tempfile.TemporaryDirectory(prefix="mlexec-bench-real-") as tmp:
        tmp = Path(tmp)
        project, env = _python_env_project(tmp, "sklearn_logistic_regression", "python train.py", deps)
        (project / "train.py").write_text(SKLEARN_TRAIN)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        mlexec_env = {**env, "MLEXEC_ENV_ROOT": str(tmp / "mlexec-envs")}
        mlflow_env = {**env, "MLFLOW_ENV_ROOT": str(tmp / "mlflow-envs")}
        mlexec_cmd = [mlexec_bin, "run", str(project), "--env-manager", "virtualenv"]
        mlflow_cmd = [mlflow_bin, "run", str(project), "--env-manager", "virtualenv"]
        print(f"real project: MLflow's sklearn_logistic_regression; python {VERSION}, pip, {', '.join(deps)}; "
              f"PYTHONDONTWRITEBYTECODE=1; repeat {repeat}", flush=True)
        first = {}
        for name, cmd, cenv in (("mlexec", mlexec_cmd, mlexec_env), ("mlflow", mlflow_cmd, mlflow_env)):
            first[name] = must(timed(cmd, cenv, tmp), cmd)  # builds the environment (MLflow's: minutes)
            print(f"  {name}: environment built and first run in {first[name]:.1f} s", flush=True)
        pythons = {"mlexec": next((tmp / "mlexec-envs").glob("virtualenv-*/bin/python")),
                   "mlflow": next((tmp / "mlflow-envs").glob("*/bin/python"))}
        samples: dict[str, list[float]] = {n: [] for n in ("mlexec warm", "mlflow virtualenv warm",
                                                           "mlexec env: import", "mlflow env: import")}
        for i in range(repeat):
            samples["mlexec warm"].append(must(timed(mlexec_cmd, mlexec_env, tmp), mlexec_cmd))
            samples["mlflow virtualenv warm"].append(must(timed(mlflow_cmd, mlflow_env, tmp), mlflow_cmd))
            for name in ("mlexec", "mlflow"):
                cmd = [str(pythons[name]), "-c", IMPORTS]
                samples[f"{name} env: import"].append(must(timed(cmd, env, tmp), cmd))
            print(f"  round {i + 1}/{repeat} done", flush=True)
        compile_samples = compile_cost(project, deps, tmp, repeat)

    print()
    print(f"{'case (real project)':<28} {'median s':>9} {'min s':>7} {'max s':>7}   (n={repeat})")
    for name, values in samples.items():
        print(f"{name:<28} {statistics.median(values):>9.3f} {min(values):>7.3f} {max(values):>7.3f}")
    med = {name: statistics.median(values) for name, values in samples.items()}
    print()
    print(f"warm real project: mlexec / mlflow --env-manager virtualenv = "
          f"{med['mlexec warm'] / med['mlflow virtualenv warm']:.3f}")
    print(f"`{IMPORTS}`: mlexec's env / MLflow's = {med['mlexec env: import'] / med['mlflow env: import']:.3f}")
    print()
    print(f"{'cold build, uv steps only':<28} {'median s':>9} {'min s':>7} {'max s':>7}   (n={repeat})")
    for name, values in compile_samples.items():
        print(f"{name:<28} {statistics.median(values):>9.3f} {min(values):>7.3f} {max(values):>7.3f}")
    with_c, without = (statistics.median(compile_samples[n]) for n in ("compiled", "not compiled"))
    print(f"compiling adds {with_c - without:+.2f} s to a cold build of this environment "
          f"({with_c / without:.2f}x the uncompiled build; paid once, the environment is cached)")


def compile_cost(project: Path, deps: list[str], tmp: Path, repeat: int) -> dict[str, list[float]]:
    """The uv steps mlexec's build runs for ``deps`` (venv, venv's seed, the requirements), with and
    without ``--compile-bytecode``, alternating; uv's cache is warm (the real project was built)."""
    from mlexec_virtualenv.build import seed_wheels, uv_binary
    from mlexec_virtualenv.interpreters import choose, find_interpreters

    uv = uv_binary()
    interpreter = choose(find_interpreters(), VERSION)
    wheels = seed_wheels(interpreter)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX")}
    env["UV_PYTHON_DOWNLOADS"] = "never"
    env.pop("UV_COMPILE_BYTECODE", None)
    samples: dict[str, list[float]] = {"compiled": [], "not compiled": []}
    for i in range(repeat):
        for name, flags in (("compiled", ["--compile-bytecode"]), ("not compiled", [])):
            target = tmp / f"compile-{name.replace(' ', '-')}-{i}"
            start = time.perf_counter()
            for cmd in ([uv, "venv", "-q", str(target), "--relocatable", "--no-project", "--python",
                         interpreter.path],
                        [uv, "pip", "install", "-q", "--python", str(target / "bin" / "python"), *flags,
                         "--no-index", "--no-deps", *wheels],
                        [uv, "pip", "install", "-q", "--python", str(target / "bin" / "python"), *flags, *deps]):
                must(timed(cmd, env, project), cmd)
            samples[name].append(time.perf_counter() - start)
            shutil.rmtree(target, ignore_errors=True)
    return samples


def warm_prepare_ms(project: Path, root: Path, n: int) -> list[float]:
    """The manager's own cost on a warm environment, measured in this process (less noisy than
    comparing two whole `mlexec run` processes on a busy machine)."""
    os.environ["MLEXEC_ENV_ROOT"] = str(root)
    from mlexec_core.pipeline.plan import RunPlan, Source
    from mlexec_core.plugin.interfaces import Context
    from mlexec_core.project.loader import load_project
    from mlexec_virtualenv.manager import VirtualenvManager

    times = []
    for _ in range(n):
        loaded = load_project(project)  # a new Project each time: nothing remembered between runs
        plan = RunPlan(project=loaded, source=Source(uri=str(project)), entry_point=loaded.entry_points["main"],
                       parameters={}, extra_parameters={}, command="true", env_manager="virtualenv",
                       env_manager_requested="virtualenv", backend="local", backend_config={})
        start = time.perf_counter()
        manager = VirtualenvManager(Context())
        manager.check(loaded, "virtualenv")
        manager.prepare(plan)
        times.append((time.perf_counter() - start) * 1000)
    return times


if __name__ == "__main__":
    main()
