"""Distributed runs and restarts on Slurm: mlexec against the hand-written Slurm way, side by side.

Two measurements, each in alternating pairs so that machine noise hits both alike, on the
test cluster of ``plugins/mlexec-slurm/ci-setup.sh`` (nodes ``vm`` and ``node2``, partition
``multi``; ``urgent`` preempts ``debug`` with PreemptMode=REQUEUE, GraceTime=5):

(a) **start**: from launch to *all four ranks started* for ``nodes: 2, processes-per-node: 2``.
    Each process writes the time it started (``date +%s.%N``; the nodes share this machine's
    clock).  mlexec: ``mlexec run PROJECT -b slurm -R nodes=2 -R processes-per-node=2`` (checks,
    working copy, tracked run, batch script, srun of rank.sh); the peer: a hand-written batch
    script whose ``srun --nodes=2 --ntasks-per-node=2`` starts the same command, submitted with
    ``sbatch --wait``.

(b) **restart**: from preemption (an ``urgent`` job submitted over the running one) to the
    requeued job running again.  mlexec: a run whose job writes the time each attempt starts;
    the peer: a plain ``sbatch --requeue`` script doing the same.  Slurm holds a requeued job
    until its credential has expired (AuthInfo=cred_expire + 1 s: 11 s on the test cluster,
    121 s by default) before it may start again, the same for both; what differs is, for
    mlexec, noticing the requeue and telling the run.

Prints medians, min and max, and mlexec's / the peer's ratio.  A benchmark, not a test: it
asserts nothing.

    python benchmarks/bench_distributed.py [--repeat 3] [--only start|restart]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlexec_core.testing.benchmarking import tools

RANKS_PROJECT = """name: ranks
entry_points:
  main:
    parameters:
      out: string
    command: "date +%s.%N >{out}/rank-$RANK"
"""

RANKS_SCRIPT = """#!/bin/bash
srun --nodes=2 --ntasks-per-node=2 --ntasks=4 --kill-on-bad-exit=1 bash -c 'date +%s.%N >{out}/rank-$SLURM_PROCID'
"""

#: Each attempt writes when it started; the first waits to be preempted, a later one ends.
ATTEMPT = 'date +%s.%N >{out}/attempt-{n}; [ {n} -gt 1 ] || sleep 600'

RESTART_PROJECT = """name: restart
entry_points:
  main:
    parameters:
      out: string
    command: "{command}"
"""

RESTART_SCRIPT = """#!/bin/bash
{command}
"""


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def wait_for(predicate, timeout: float, what: str, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out waiting for {what}")


def stamps(folder: Path, prefix: str, count: int) -> list[float] | None:
    found = sorted(folder.glob(f"{prefix}*"))
    try:
        values = [float(p.read_text().strip()) for p in found]
    except ValueError:  # being written
        return None
    return values if len(values) >= count else None


def job_field(job: str, field: str) -> str:
    found = re.search(rf"\b{field}=(\S+)", run("scontrol", "show", "job", "-o", job, check=False).stdout)
    return found.group(1) if found else ""


def hurry(job: str) -> None:
    """Wait until Slurm has requeued ``job``; it starts again after Slurm's hold (starting it sooner
    on the same node fails: "Job credential revoked")."""
    wait_for(lambda: job_field(job, "JobState") == "PENDING" and job_field(job, "Restarts") == "1", 120,
             f"job {job} to be requeued", interval=0.05)


def preempt() -> tuple[float, str]:
    """Submit a job to ``urgent`` that needs the whole node; return when (wall clock) and its id."""
    at = time.time()
    job = run("sbatch", "--parsable", "-p", "urgent", "--exclusive", "--output=/dev/null",
              "--job-name=bench-urgent", "--wrap", "sleep 1").stdout.strip()
    return at, job


def fresh(folder: Path) -> Path:
    if folder.exists():
        for p in folder.iterdir():
            p.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# -- (a) start ------------------------------------------------------------------------------


def start_mlexec(mlexec: str, tmp: Path, env: dict[str, str], config: Path) -> float:
    out = fresh(tmp / "ranks-out")
    project = tmp / "ranks"
    launched = time.time()
    proc = subprocess.run([mlexec, "run", str(project), "-b", "slurm", "-c", str(config), "--env-manager", "local",
                           "-R", "nodes=2", "-R", "processes-per-node=2", "-P", f"out={out}"],
                          env=env, cwd=tmp, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise SystemExit(f"mlexec run failed:\n{proc.stderr}")
    return max(stamps(out, "rank-", 4)) - launched


def start_sbatch(tmp: Path) -> float:
    out = fresh(tmp / "ranks-out")
    script = tmp / "ranks.sh"
    script.write_text(RANKS_SCRIPT.format(out=out))
    launched = time.time()
    run("sbatch", "--wait", "-p", "multi", "--nodes=2", "--ntasks-per-node=2", f"--output={tmp / 'ranks.out'}",
        str(script))
    return max(stamps(out, "rank-", 4)) - launched


# -- (b) restart ----------------------------------------------------------------------------


def restart_mlexec(mlexec: str, tmp: Path, env: dict[str, str], config: Path) -> float:
    out = fresh(tmp / "restart-out")
    project = tmp / "restart"
    proc = subprocess.Popen([mlexec, "run", str(project), "-b", "slurm", "-c", str(config), "--env-manager", "local",
                             "--max-restarts", "1", "-P", f"out={out}"],
                            env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    urgent = None
    try:
        wait_for(lambda: stamps(out, "attempt-1", 1), 120, "mlexec's first attempt")
        job = run("squeue", "-h", "-p", "debug", "-n", "mlexec-restart", "-o", "%i").stdout.split()[0]
        at, urgent = preempt()
        hurry(job)
        _, err = proc.communicate(timeout=180)
        if proc.returncode != 0:
            raise SystemExit(f"mlexec run failed:\n{err}")
        return stamps(out, "attempt-2", 1)[0] - at
    finally:
        if proc.poll() is None:
            proc.kill()
        if urgent:
            run("scancel", urgent, check=False)


def restart_sbatch(tmp: Path) -> float:
    out = fresh(tmp / "restart-out")
    script = tmp / "restart.sh"
    n = "$(( ${SLURM_RESTART_COUNT:-0} + 1 ))"
    script.write_text(RESTART_SCRIPT.format(command=ATTEMPT.format(out=out, n=n)))
    job = run("sbatch", "--parsable", "--requeue", "-p", "debug", "--job-name=bench-requeue",
              f"--output={tmp / 'restart.out'}", str(script)).stdout.strip()
    urgent = None
    try:
        wait_for(lambda: stamps(out, "attempt-1", 1), 120, "the plain job's first attempt")
        at, urgent = preempt()
        hurry(job)
        wait_for(lambda: stamps(out, "attempt-2", 1), 120, "the plain job's second attempt")
        return stamps(out, "attempt-2", 1)[0] - at
    finally:
        run("scancel", job, check=False)
        if urgent:
            run("scancel", urgent, check=False)
        wait_for(lambda: not run("squeue", "-h", "-j", job, "-o", "%i", check=False).stdout.strip(), 60,
                 f"job {job} to leave the queue", interval=0.2)


def report(title: str, samples: dict[str, list[float]], repeat: int) -> None:
    print(f"\n{title} (n={repeat})")
    print(f"{'':<10} {'median s':>9} {'min s':>7} {'max s':>7}")
    for name, values in samples.items():
        print(f"{name:<10} {statistics.median(values):>9.2f} {min(values):>7.2f} {max(values):>7.2f}")
    mlexec, peer = (statistics.median(v) for v in samples.values())
    print(f"mlexec / {list(samples)[1]} = {mlexec / peer:.2f}   (mlexec {mlexec - peer:+.2f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=["start", "restart"])
    args = parser.parse_args()
    mlexec, _ = tools()
    with tempfile.TemporaryDirectory(prefix="mlexec-bench-dist-") as tmp:
        tmp = Path(tmp)
        (tmp / "ranks").mkdir()
        (tmp / "ranks" / "MLproject").write_text(RANKS_PROJECT)
        (tmp / "restart").mkdir()
        attempt = ATTEMPT.format(out="{out}", n="$MLEXEC_ATTEMPT")
        (tmp / "restart" / "MLproject").write_text(RESTART_PROJECT.format(command=attempt))
        (tmp / "shared").mkdir()
        multi = tmp / "multi.yaml"
        multi.write_text(f"shared-dir: {tmp / 'shared'}\npartition: multi\n")
        debug = tmp / "debug.yaml"
        debug.write_text(f"shared-dir: {tmp / 'shared'}\npartition: debug\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLEXEC_"))}
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        subprocess.run([sys.executable, "-c", "from mlflow.tracking import MlflowClient as C; "
                        f"C({env['MLFLOW_TRACKING_URI']!r}).search_experiments()"],
                       env=env, check=True, capture_output=True)
        if args.only in (None, "start"):
            start_mlexec(mlexec, tmp, env, multi)  # once untimed: caches, bytecode
            samples = {"mlexec": [], "sbatch": []}
            for _ in range(args.repeat):
                samples["mlexec"].append(start_mlexec(mlexec, tmp, env, multi))
                samples["sbatch"].append(start_sbatch(tmp))
            report("(a) launch -> all 4 ranks started (nodes 2 x processes-per-node 2)", samples, args.repeat)
        if args.only in (None, "restart"):
            samples = {"mlexec": [], "sbatch": []}
            for _ in range(args.repeat):
                samples["mlexec"].append(restart_mlexec(mlexec, tmp, env, debug))
                samples["sbatch"].append(restart_sbatch(tmp))
            report("(b) preemption -> the requeued job running again (Slurm's two-minute hold skipped for both)",
                   samples, args.repeat)


if __name__ == "__main__":
    main()
