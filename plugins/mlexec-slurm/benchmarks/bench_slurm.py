"""``mlexec run -b slurm`` against a plain ``sbatch --wait`` of the same batch script.

One project whose entry point records when it starts, prints a line, sleeps
``--sleep`` s, and records when it ends (timestamps from the job itself, on
the node: here the same machine, so one clock).  Alternately, so that machine
noise hits both alike:

* ``sbatch --wait -o OUT job.sh``: the same commands in a plain batch script
  (no environment, no tracking, no working copy); its "first output" is when
  the line appears in the output file (read every 10 ms, faster than a user
  tailing it would);
* ``mlexec run PROJECT -b slurm --env-manager local``: its first output is when
  the line appears on mlexec's stdout.

Reported (medians): launch → job start, launch → first output, job end →
command exit, and mlexec's / sbatch's ratio for each.  A benchmark, not a test:
it asserts nothing.  Needs the test cluster (plugins/mlexec-slurm/ci-setup.sh).

    python plugins/mlexec-slurm/benchmarks/bench_slurm.py [--repeat 5] [--sleep 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from mlexec_core.testing.benchmarking import BIN

SCRIPT = """#!/bin/bash
date +%s.%N >{stamps}/start
echo first
sleep {sleep}
echo last
date +%s.%N >{stamps}/end
"""


def stamp(path: Path) -> float:
    return float(path.read_text().strip())


def sbatch_wait(work: Path, stamps: Path, sleep: float) -> dict[str, float]:
    script = work / "plain.sh"
    script.write_text(SCRIPT.format(stamps=stamps, sleep=sleep))
    out = work / "plain.out"
    out.unlink(missing_ok=True)
    first: list[float] = []

    def watch():
        while not first:
            try:
                if b"first" in out.read_bytes():
                    first.append(time.time())
                    return
            except FileNotFoundError:
                pass
            time.sleep(0.01)

    launched = time.time()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    proc = subprocess.run(["sbatch", "--wait", "--parsable", f"--output={out}", str(script)],
                          capture_output=True, text=True)
    exited = time.time()
    watcher.join(5)
    if proc.returncode != 0:
        raise SystemExit(f"sbatch --wait failed: {proc.stderr}")
    return {"start": stamp(stamps / "start") - launched, "first": first[0] - launched,
            "end_to_exit": exited - stamp(stamps / "end")}


def mlexec_run(mlexec: str, project: Path, config: Path, env: dict[str, str], stamps: Path) -> dict[str, float]:
    launched = time.time()
    proc = subprocess.Popen([mlexec, "run", str(project), "-b", "slurm", "-c", str(config), "--env-manager", "local"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = None
    for line in proc.stdout:
        if first is None and line.strip() == "first":
            first = time.time()
    proc.wait()
    exited = time.time()
    err = proc.stderr.read()
    if proc.returncode != 0 or first is None:
        raise SystemExit(f"mlexec run failed ({proc.returncode}):\n{err}")
    return {"start": stamp(stamps / "start") - launched, "first": first - launched,
            "end_to_exit": exited - stamp(stamps / "end")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sleep", type=float, default=2.0)
    args = parser.parse_args()
    mlexec = shutil.which("mlexec", path=str(BIN)) or shutil.which("mlexec")
    if not mlexec or not shutil.which("sbatch"):
        raise SystemExit("needs mlexec (run with its environment's interpreter) and Slurm's sbatch")
    work = Path(tempfile.mkdtemp(prefix="bench-slurm-"))
    try:
        stamps = work / "stamps"
        stamps.mkdir()
        project = work / "project"
        project.mkdir()
        (project / "MLproject").write_text(
            "name: bench\nentry_points:\n  main:\n    command: \"date +%s.%N >{stamps}/start; echo first; "
            "sleep {sleep}; echo last; date +%s.%N >{stamps}/end\"\n".format(stamps=stamps, sleep=args.sleep)
        )
        config = work / "slurm.yaml"
        config.write_text(f"shared-dir: {work / 'shared'}\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLEXEC_"))}
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
        from mlflow.tracking import MlflowClient

        MlflowClient(env["MLFLOW_TRACKING_URI"]).search_experiments()  # the store exists before timing
        mlexec_run(mlexec, project, config, env, stamps)  # untimed: bytecode, caches
        results: dict[str, list[dict[str, float]]] = {"sbatch --wait": [], "mlexec run": []}
        for _ in range(args.repeat):
            results["sbatch --wait"].append(sbatch_wait(work, stamps, args.sleep))
            results["mlexec run"].append(mlexec_run(mlexec, project, config, env, stamps))
        med = {name: {k: statistics.median(r[k] for r in runs) for k in ("start", "first", "end_to_exit")}
               for name, runs in results.items()}
        print(f"{args.repeat} runs each, job sleeps {args.sleep} s; medians in seconds")
        print(f"{'':16} {'launch->start':>14} {'launch->first output':>21} {'job end->exit':>14}")
        for name, m in med.items():
            print(f"{name:16} {m['start']:14.2f} {m['first']:21.2f} {m['end_to_exit']:14.2f}")
        ratio = {k: med["mlexec run"][k] / med["sbatch --wait"][k] for k in ("start", "first", "end_to_exit")}
        print(f"{'mlexec/sbatch':16} {ratio['start']:13.2f}x {ratio['first']:20.2f}x {ratio['end_to_exit']:13.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
