"""A 200-child sweep of a no-op entry point into one sqlite store, three ways, in one measurement:

* ``mlexec sweep NOOP -P i=range(0, N) --max-parallel P``;
* a shell loop of ``mlflow run NOOP -P i=K --env-manager local`` (what MLflow users
  write).  It takes seconds per run, so by default it is **sampled** on
  ``--mlflow-sample`` runs and **extrapolated** to N (said in the output);
  ``--mlflow-sample N`` runs all of it;
* Hydra's multirun on the joblib launcher, ``python app.py --multirun
  hydra/launcher=joblib hydra.launcher.n_jobs=P i=range(0,N)``, of an equivalent
  no-op app, in the benchmark's own virtualenv (hydra-core and
  hydra-joblib-launcher installed there with uv, once, under
  ``~/.cache/mlexec-bench/hydra``).  Hydra does not track anything; mlexec and
  MLflow create N runs in the store.

Also ``mlexec sweep`` with ``--max-parallel 1``, to get mlexec's own overhead
per child: (its wall time - the same sweep's ``--dry-run``) / N - the child
command's own time (``bash -c true``).

Targets (issue 11): overhead per child at most 30 ms; the whole sweep at most
1/50 of the mlflow loop, and no slower than Hydra's joblib launcher at the same
parallelism.  A benchmark, not a test: it asserts nothing.

    .venv/bin/python benchmarks/bench_sweep.py [--children 200] [--parallel 2] [--mlflow-sample 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlexec_core.testing.benchmarking import timed, tools

HYDRA_APP = """\
import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path=".", config_name="config")
def main(cfg: DictConfig) -> None:
    pass  # the no-op, as the MLproject's `true`


if __name__ == "__main__":
    main()
"""


def hydra_python(cache: Path) -> Path:
    """The interpreter of a virtualenv with hydra-core and hydra-joblib-launcher (made once)."""
    venv = cache / "hydra"
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"making {venv} (hydra-core, hydra-joblib-launcher) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "uv", "venv", "--quiet", "--python", sys.executable, str(venv)],
                       check=True)
        subprocess.run([sys.executable, "-m", "uv", "pip", "install", "--quiet", "--python", str(python),
                        "hydra-core", "hydra-joblib-launcher"], check=True)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--children", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=os.cpu_count() or 1,
                        help="--max-parallel for mlexec and n_jobs for Hydra (default: the cores)")
    parser.add_argument("--mlflow-sample", type=int, default=10,
                        help="mlflow runs actually timed, extrapolated to --children")
    parser.add_argument("--no-hydra", action="store_true", help="skip Hydra (no PyPI access)")
    args = parser.parse_args()
    n, p = args.children, args.parallel
    mlexec_bin, mlflow_bin = tools()

    with tempfile.TemporaryDirectory(prefix="mlexec-bench-sweep-") as tmp:
        tmp = Path(tmp)
        project = tmp / "noop"
        project.mkdir()
        (project / "MLproject").write_text(
            "name: noop\nentry_points:\n  main:\n    parameters: {i: int}\n    command: \"true\"\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLEXEC_"))}
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        subprocess.run([sys.executable, "-c", "from mlflow.tracking import MlflowClient as C; "
                        f"C({env['MLFLOW_TRACKING_URI']!r}).search_experiments()"],
                       env=env, check=True, capture_output=True)

        sweep = [mlexec_bin, "sweep", str(project), "--env-manager", "local", "-P", f"i=range(0, {n})"]
        results: dict[str, float] = {}
        results["bash -c true (x1)"] = statistics.median(timed(["bash", "-c", "true"], env, tmp) for _ in range(20))
        results["mlexec sweep --dry-run"] = statistics.median(
            timed([*sweep, "--dry-run", "--max-parallel", "1"], env, tmp) for _ in range(3))
        results["mlexec sweep, 1 at once"] = timed([*sweep, "--max-parallel", "1"], env, tmp)
        results[f"mlexec sweep, {p} at once"] = timed([*sweep, "--max-parallel", str(p)], env, tmp)

        sample = min(args.mlflow_sample, n)
        start = time.perf_counter()
        for i in range(sample):
            timed([mlflow_bin, "run", str(project), "-P", f"i={i}", "--env-manager", "local"], env, tmp)
        mlflow_each = (time.perf_counter() - start) / sample
        results["mlflow run loop"] = mlflow_each * n

        if not args.no_hydra:
            python = hydra_python(Path.home() / ".cache" / "mlexec-bench")
            app = tmp / "hydra_app"
            app.mkdir()
            (app / "app.py").write_text(HYDRA_APP)
            (app / "config.yaml").write_text("i: 0\n")
            hydra_cmd = [str(python), "app.py", "--multirun", "hydra/launcher=joblib",
                         f"hydra.launcher.n_jobs={p}", f"i=range(0,{n})", f"hydra.sweep.dir={tmp / 'multirun'}"]
            timed(hydra_cmd, env, app)  # warm: bytecode of a fresh virtualenv
            results[f"hydra joblib, {p} at once"] = timed(hydra_cmd, env, app)

    print(f"{n} children of a no-op entry point, one sqlite store, parallelism {p}")
    for name, value in results.items():
        print(f"  {name:<28} {value:>8.2f} s")
    if sample < n:
        print(f"  (mlflow run: {sample} runs timed, {mlflow_each:.2f} s each, extrapolated to {n})")
    overhead = (results["mlexec sweep, 1 at once"] - results["mlexec sweep --dry-run"]) / n \
        - results["bash -c true (x1)"]
    print()
    print(f"mlexec overhead per child (1 at once)      = {overhead * 1000:.1f} ms   (target <= 30 ms)")
    whole = results[f"mlexec sweep, {p} at once"]
    print(f"mlexec sweep / mlflow run loop             = {whole / results['mlflow run loop']:.4f}   "
          f"(target <= {1 / 50:.3f})")
    if f"hydra joblib, {p} at once" in results:
        print(f"mlexec sweep / hydra joblib                = {whole / results[f'hydra joblib, {p} at once']:.3f}   "
              "(target <= 1)")


if __name__ == "__main__":
    main()
