"""mlexec vs mlflow run, side by side in one process of measurement.

Times, alternating so that machine noise hits both alike:

* ``python -c pass``                          (the floor: starting Python)
* ``mlexec --help``                           (target: under 0.25 s)
* ``mlexec run NOOP --env-manager local``     (target: at most 1/3 of mlflow's time)
* ``mlflow run NOOP --env-manager local``

on a no-op project and one shared MLflow sqlite store (created once, before
timing, by MLflow itself).  Prints medians and the ratios.  This is a
benchmark, not a test: it asserts nothing.

    python benchmarks/bench_run.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from mlexec_core.benchmarking import timed, tools

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    mlexec_bin, mlflow_bin = tools()

    with tempfile.TemporaryDirectory(prefix="mlexec-bench-") as tmp:
        tmp = Path(tmp)
        project = tmp / "noop"
        project.mkdir()
        (project / "MLproject").write_text("name: noop\nentry_points:\n  main:\n    command: \"true\"\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLEXEC_"))}
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        # MLflow creates the store (and migrates it) once, outside the timings.
        subprocess.run([sys.executable, "-c", "from mlflow.tracking import MlflowClient as C; "
                        f"C({env['MLFLOW_TRACKING_URI']!r}).search_experiments()"],
                       env=env, check=True, capture_output=True)

        cases = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "mlexec --help": [mlexec_bin, "--help"],
            "mlexec run": [mlexec_bin, "run", str(project), "--env-manager", "local"],
            "mlflow run": [mlflow_bin, "run", str(project), "--env-manager", "local"],
        }
        for cmd in cases.values():  # warm the OS caches and bytecode once
            timed(cmd, env, tmp)
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.repeat):
            for name, cmd in cases.items():
                samples[name].append(timed(cmd, env, tmp))

    med = {name: statistics.median(values) for name, values in samples.items()}
    print(f"{'case':<18} {'median s':>9} {'min s':>7} {'max s':>7}   (n={args.repeat})")
    for name, values in samples.items():
        print(f"{name:<18} {med[name]:>9.3f} {min(values):>7.3f} {max(values):>7.3f}")
    ratio = med["mlexec run"] / med["mlflow run"]
    print()
    print(f"mlexec run / mlflow run          = {ratio:.3f}   (target <= 0.333)")
    print(f"mlexec --help / python -c pass   = {med['mlexec --help'] / med['python -c pass']:.1f}x"
          f"   (--help {med['mlexec --help']:.3f} s; target < 0.25 s)")
    print(f"mlexec run overhead over python  = {med['mlexec run'] - med['python -c pass']:.3f} s")


if __name__ == "__main__":
    main()
