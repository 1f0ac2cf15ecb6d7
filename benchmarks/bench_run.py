"""mlexec vs mlflow run, side by side in one process of measurement.

Times, alternating so that machine noise hits both alike:

* ``bash -c 'python -c pass'``                 (the bare command: a shell starting Python)
* ``python -c pass``                           (starting Python)
* ``mlexec --help``                            (target: at most 0.10 s)
* ``mlexec run NOOP --env-manager local``      (target: at most +0.10 s over the bare command,
                                                and at most 1/3 of mlflow's time)
* ``mlflow run NOOP --env-manager local``

on a no-op project (its command is ``python -c pass``, so the run does what the
bare command does) and one shared MLflow sqlite store (created once, before
timing, by MLflow itself), with every installed plugin loaded.  Bytecode is
cached (``PYTHONDONTWRITEBYTECODE`` is dropped and every case runs once
untimed).  Prints medians and the ratios.  This is a benchmark, not a test: it
asserts nothing.

    python benchmarks/bench_run.py [--repeat 5] [--importtime]

``--importtime`` also prints the slowest imports of one ``mlexec run``
(``python -X importtime``, cumulative, best of three).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from mlexec_core.testing.benchmarking import timed, tools

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--importtime", action="store_true", help="print the slowest imports of mlexec run")
    args = parser.parse_args()

    mlexec_bin, mlflow_bin = tools()

    with tempfile.TemporaryDirectory(prefix="mlexec-bench-") as tmp:
        tmp = Path(tmp)
        project = tmp / "noop"
        project.mkdir()
        (project / "MLproject").write_text(
            f"name: noop\nentry_points:\n  main:\n    command: \"{sys.executable} -c pass\"\n")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MLFLOW_", "MLEXEC_")) and k != "PYTHONDONTWRITEBYTECODE"}
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        # MLflow creates the store (and migrates it) once, outside the timings.
        subprocess.run([sys.executable, "-c", "from mlflow.tracking import MlflowClient as C; "
                        f"C({env['MLFLOW_TRACKING_URI']!r}).search_experiments()"],
                       env=env, check=True, capture_output=True)

        cases = {
            "bare command": ["bash", "-c", f"{sys.executable} -c pass"],
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
        if args.importtime:
            print_importtime(["run", str(project), "--env-manager", "local"], env, tmp)

    med = {name: statistics.median(values) for name, values in samples.items()}
    print(f"{'case':<18} {'median s':>9} {'min s':>7} {'max s':>7}   (n={args.repeat})")
    for name, values in samples.items():
        print(f"{name:<18} {med[name]:>9.3f} {min(values):>7.3f} {max(values):>7.3f}")
    ratio = med["mlexec run"] / med["mlflow run"]
    overhead = med["mlexec run"] - med["bare command"]
    print()
    print(f"mlexec run over the bare command = {overhead:+.3f} s   (target <= +0.10 s)")
    print(f"mlexec --help                    = {med['mlexec --help']:.3f} s   (target <= 0.10 s;"
          f" {med['mlexec --help'] / med['python -c pass']:.1f}x python -c pass)")
    print(f"mlexec run / mlflow run          = {ratio:.3f}   (target <= 0.333)")


def print_importtime(args: list[str], env: dict[str, str], cwd: Path, top: int = 25) -> None:
    """The slowest imports (cumulative, best of three runs) of ``mlexec ARGS`` under ``python -X importtime``."""
    best: dict[str, int] = {}
    for _ in range(3):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "mlexec_core", *args],
                              env=env, cwd=cwd, capture_output=True, text=True)
        for line in proc.stderr.splitlines():
            found = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
            if found:
                name = found[3] + found[4]
                best[name] = min(best.get(name, 1 << 60), int(found[2]))
    print()
    print("slowest imports of `mlexec run` (cumulative ms, best of 3):")
    for name, micros in sorted(best.items(), key=lambda item: -item[1])[:top]:
        print(f"{micros / 1000:8.1f}  {name}")


if __name__ == "__main__":
    main()
