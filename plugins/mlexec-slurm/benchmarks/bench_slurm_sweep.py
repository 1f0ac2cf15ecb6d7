"""A sweep on Slurm as one job array against the same number of separate jobs.

N children of a no-op entry point (``echo {x}``), at most P running at once:

* ``mlexec sweep PROJECT -b slurm -P x=range(0,N) --max-parallel P``: one
  ``sbatch --array=0-N%P``, N child runs tracked in a sqlite store;
* N plain ``sbatch --wait`` jobs of the same command, submitted at once by a
  shell loop as people write them (no tracking, no environment), the bound left
  to the scheduler (the node has as many CPUs as it has).

Alternately, ``--repeat`` times; reported: median wall time of each and their
ratio.  A benchmark, not a test: it asserts nothing.  Needs the test cluster
(plugins/mlexec-slurm/ci-setup.sh).

    python plugins/mlexec-slurm/benchmarks/bench_slurm_sweep.py [--tasks 100] [--parallel 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from mlexec_core.testing.benchmarking import BIN

PROJECT = """name: bench-array
entry_points:
  main:
    parameters: {x: {type: int, default: 0}}
    command: "echo {x}"
"""


def plain_jobs(work: Path, tasks: int) -> float:
    out = work / "plain"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    loop = (f"for i in $(seq 0 {tasks - 1}); do sbatch --wait --quiet -o {out}/$i.out --wrap \"echo $i\" & done; "
            "wait")
    start = time.perf_counter()
    subprocess.run(["bash", "-c", loop], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def mlexec_sweep(mlexec: str, project: Path, config: Path, env: dict[str, str], tasks: int, parallel: int,
                 work: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run([mlexec, "sweep", str(project), "-b", "slurm", "-c", str(config), "--env-manager",
                           "local", "-P", f"x=range(0,{tasks})", "--max-parallel", str(parallel)],
                          env=env, cwd=work, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"mlexec sweep failed:\n{proc.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--parallel", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    mlexec = shutil.which("mlexec", path=str(BIN))
    if mlexec is None or shutil.which("sbatch") is None:
        raise SystemExit("needs mlexec (run with its environment's interpreter) and Slurm's sbatch")
    with tempfile.TemporaryDirectory(prefix="mlexec-bench-array-") as tmp:
        work = Path(tmp)
        project = work / "project"
        project.mkdir()
        (project / "MLproject").write_text(PROJECT)
        config = work / "slurm.yaml"
        config.write_text(f"shared-dir: {work / 'shared'}\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLEXEC_"))}
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
        mlexec_sweep(mlexec, project, config, env, 2, args.parallel, work)  # untimed: the store, bytecode
        sweep, plain = [], []
        for _ in range(args.repeat):
            sweep.append(mlexec_sweep(mlexec, project, config, env, args.tasks, args.parallel, work))
            plain.append(plain_jobs(work, args.tasks))
        s, p = statistics.median(sweep), statistics.median(plain)
        print(f"{args.tasks} children, at most {args.parallel} at once, median of {args.repeat}:")
        print(f"  mlexec sweep (one job array, tracked)   {s:7.2f} s")
        print(f"  {args.tasks} separate sbatch --wait jobs      {p:7.2f} s")
        print(f"  ratio mlexec / separate jobs            {s / p:7.2f}")


if __name__ == "__main__":
    main()
