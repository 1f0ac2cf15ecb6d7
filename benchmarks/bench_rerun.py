"""What reproducibility costs, and what a rerun saves (issue 23).

Times, alternating so that machine noise hits every case alike:

1. **The record's cost per run**: a no-op ``mlexec run --env-manager local`` with the
   record (the default) and without it (``MLEXEC_RECORD=off``), on a folder project and on
   a git work tree with uncommitted changes (the patch is made), beside the bare command
   (``bash -c 'python -c pass'``).  Target: the run within +0.10 s of the bare command.
2. **A sweep's overhead per child** with and without the record (a 40-child grid of the
   no-op entry point, ``--max-parallel 4``).  Target: within 30 ms per child.
3. **``mlexec rerun`` of a run whose environment was built from its lock before** (a
   cached environment) against **a first ``mlexec run``** of the same virtualenv project
   (its environment built from nothing), on a package index of our own (a ``--find-links``
   folder of wheels this script writes, so nothing is downloaded).

Prints medians and ratios.  A benchmark, not a test: it asserts nothing.

    python benchmarks/bench_rerun.py [--repeat 7] [--children 40]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from mlexec_core.testing import build_wheel
from mlexec_core.testing.benchmarking import timed, tools

NOOP = "name: noop\nentry_points:\n  main:\n    parameters: {x: {type: int, default: 0}}\n    command: \"python -c pass\"\n"
DEMO = ("name: demo\npython_env: python_env.yaml\nentry_points:\n  main:\n"
        "    command: \"python -c 'import demo_pkg'\"\n")


def git(folder: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(folder), "-c", "user.email=b@b", "-c", "user.name=b", *args], check=True,
                   capture_output=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--children", type=int, default=40)
    args = parser.parse_args()
    mlexec, _ = tools()
    with tempfile.TemporaryDirectory(prefix="bench-rerun-") as tmp:
        root = Path(tmp)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update({"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "XDG_STATE_HOME": str(root / "state"),
                    "XDG_CACHE_HOME": str(root / "cache"), "MLEXEC_ENV_ROOT": str(root / "envs"), "NO_COLOR": "1"})
        off = {**env, "MLEXEC_RECORD": "off"}
        folder = root / "folder"
        folder.mkdir()
        (folder / "MLproject").write_text(NOOP)
        (folder / "train.py").write_text("print('x')\n" * 200)
        tree = root / "tree"
        tree.mkdir()
        (tree / "MLproject").write_text(NOOP)
        (tree / "train.py").write_text("print('x')\n" * 200)
        git(tree, "init", "-q")
        git(tree, "add", "-A")
        git(tree, "commit", "-qm", "first")
        (tree / "train.py").write_text("print('edited')\n" * 200)  # dirty: the patch is made every run
        run = [mlexec, "run", "--env-manager", "local"]
        bare = ["bash", "-c", f"{sys.executable} -c pass"]
        cases = {
            "bare command": (bare, env),
            "folder, recorded": ([*run[:2], str(folder), *run[2:]], env),
            "folder, MLEXEC_RECORD=off": ([*run[:2], str(folder), *run[2:]], off),
            "dirty git tree, recorded": ([*run[:2], str(tree), *run[2:]], env),
            "dirty git tree, MLEXEC_RECORD=off": ([*run[:2], str(tree), *run[2:]], off),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for name, (cmd, e) in cases.items():  # once untimed: bytecode, the store, the digest cache
            timed(cmd, e, root)
        for _ in range(args.repeat):
            for name, (cmd, e) in cases.items():
                times[name].append(timed(cmd, e, root))
        print(f"{'case':38} {'median s':>9} {'min s':>7}   (n={args.repeat})")
        for name, values in times.items():
            print(f"{name:38} {median(values):9.3f} {min(values):7.3f}")
        base = median(times["bare command"])
        for what in ("folder", "dirty git tree"):
            on, no = median(times[f"{what}, recorded"]), median(times[f"{what}, MLEXEC_RECORD=off"])
            print(f"{what}: the record costs {1000 * (on - no):+.1f} ms a run (ratio {on / no:.3f}); "
                  f"the run is +{on - base:.3f} s over the bare command (target +0.10 s)")

        # 2. a sweep's overhead per child
        values = ",".join(str(i) for i in range(args.children))
        sweep = [mlexec, "sweep", str(folder), "--env-manager", "local", "-P", f"x={values}", "--max-parallel", "4"]
        per = {"recorded": [], "MLEXEC_RECORD=off": []}
        timed(sweep, env, root)
        for _ in range(max(2, args.repeat // 3)):
            per["recorded"].append(timed(sweep, env, root) / args.children)
            per["MLEXEC_RECORD=off"].append(timed(sweep, off, root) / args.children)
        on, no = median(per["recorded"]), median(per["MLEXEC_RECORD=off"])
        print(f"sweep of {args.children} children: {1000 * on:.1f} ms a child recorded, {1000 * no:.1f} ms without "
              f"(the record: {1000 * (on - no):+.1f} ms a child; target: the whole overhead within 30 ms)")

        # 3. rerun of a cached environment vs a first run
        index = root / "index"
        build_wheel(index, "demo_pkg", "1.0", {"demo_pkg/__init__.py": "VERSION = '1.0'\n"})
        uv_env = {**env, "UV_FIND_LINKS": str(index), "UV_NO_INDEX": "1"}
        project = root / "demo"
        project.mkdir()
        (project / "MLproject").write_text(DEMO)
        (project / "python_env.yaml").write_text("dependencies:\n  - demo-pkg\n")
        first, again = [], []
        proc = subprocess.run([mlexec, "run", str(project), "--env-manager", "uv"], env=uv_env, cwd=root,
                              capture_output=True, text=True, check=True)
        run_id = re.search(r"=== Run ([0-9a-f]{32})", proc.stderr).group(1)
        timed([mlexec, "rerun", run_id], uv_env, root)  # builds the environment from the lock once
        for _ in range(args.repeat):
            shutil.rmtree(root / "envs", ignore_errors=True)
            timed([mlexec, "rerun", run_id], uv_env, root)  # (rebuild the lock's environment, untimed)
            first.append(timed([mlexec, "run", str(project), "--env-manager", "uv"], uv_env, root))
            again.append(timed([mlexec, "rerun", run_id], uv_env, root))
        print(f"first mlexec run (environment built) {median(first):.3f} s; mlexec rerun (environment from the "
              f"lock, cached) {median(again):.3f} s; ratio {median(again) / median(first):.3f}")


if __name__ == "__main__":
    main()
