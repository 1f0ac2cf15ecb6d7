"""A second run of the same remote commit: mlexec (clone cache) vs mlflow run (clones every time).

A repository is made here (``--commits`` commits, ``--mb`` MB of files, a
submodule) and served by ``git daemon`` on 127.0.0.1.  After one warm-up run
each (which fills mlexec's cache), times, alternating so machine noise hits
both alike:

* ``mlexec run git://.../repo.git -v v1``      (one ls-remote, no fetch)
* ``mlexec run git://.../repo.git -v <sha>``   (no network at all)
* ``mlflow run git://.../repo.git -v v1``      (a fresh clone into a new temporary directory)

Prints medians and the ratios.  A benchmark, not a test: it asserts nothing.

    python benchmarks/bench_sources.py [--repeat 5] [--commits 200] [--mb 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlexec_core.testing.benchmarking import timed, tools
from mlexec_core.testing.servers import git, git_daemon

def make_repos(base: Path, work_root: Path, commits: int, mb: int) -> str:
    git("init", "-q", "--bare", "-b", "main", str(base / "sub.git"))
    sub = work_root / "sub"
    git("clone", "-q", str(base / "sub.git"), str(sub))
    (sub / "SUB").write_text("sub\n")
    git("add", ".", cwd=sub)
    git("commit", "-qm", "sub", cwd=sub)
    git("push", "-q", "origin", "HEAD:main", cwd=sub)
    git("init", "-q", "--bare", "-b", "main", str(base / "repo.git"))
    work = work_root / "repo"
    git("clone", "-q", str(base / "repo.git"), str(work))
    git("checkout", "-q", "-b", "main", cwd=work)
    (work / "MLproject").write_text("name: bench\nentry_points:\n  main:\n    command: \"true\"\n")
    (work / "data").mkdir()
    for i in range(max(mb, 1)):
        (work / "data" / f"blob{i}.bin").write_bytes(os.urandom(1 << 20))
    git("submodule", "add", "-q", "../sub.git", "lib", cwd=work)
    git("add", ".", cwd=work)
    git("commit", "-qm", "start", cwd=work)
    for i in range(commits):
        (work / "VERSION").write_text(f"{i}\n")
        git("add", "VERSION", cwd=work)
        git("commit", "-qm", str(i), cwd=work)
        if i == commits // 2:
            git("tag", "v1", cwd=work)
    git("push", "-q", "origin", "main", "--tags", cwd=work)
    return git("rev-parse", "v1^{commit}", cwd=work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--commits", type=int, default=200)
    parser.add_argument("--mb", type=int, default=20, help="MB of (incompressible) files in the repository")
    args = parser.parse_args()

    mlexec_bin, mlflow_bin = tools()

    with tempfile.TemporaryDirectory(prefix="mlexec-bench-") as tmp:
        tmp = Path(tmp)
        (tmp / "base").mkdir()
        (tmp / "work").mkdir()
        (tmp / "mlflow-tmp").mkdir()
        sha = make_repos(tmp / "base", tmp / "work", args.commits, args.mb)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLEXEC_"))}
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        env["MLEXEC_CACHE_DIR"] = str(tmp / "cache")
        env["TMPDIR"] = str(tmp / "mlflow-tmp")  # where mlflow's clones land (and stay)
        subprocess.run([sys.executable, "-c", "from mlflow.tracking import MlflowClient as C; "
                        f"C({env['MLFLOW_TRACKING_URI']!r}).search_experiments()"],
                       env=env, check=True, capture_output=True)
        with git_daemon(tmp / "base") as url:
            uri = f"{url}/repo.git"
            cases = {
                "mlexec run -v tag": [mlexec_bin, "run", uri, "-v", "v1", "--env-manager", "local"],
                "mlexec run -v sha": [mlexec_bin, "run", uri, "-v", sha, "--env-manager", "local"],
                "mlflow run -v tag": [mlflow_bin, "run", uri, "-v", "v1", "--env-manager", "local"],
            }
            first = {name: timed(cmd, env, tmp) for name, cmd in cases.items()}  # fills mlexec's cache
            samples: dict[str, list[float]] = {name: [] for name in cases}
            for _ in range(args.repeat):
                for name, cmd in cases.items():
                    samples[name].append(timed(cmd, env, tmp))
        leaked = len(list((tmp / "mlflow-tmp").iterdir()))

    med = {name: statistics.median(values) for name, values in samples.items()}
    print(f"repository: {args.commits} commits, {args.mb} MB, one submodule; served by git daemon on loopback")
    print(f"{'case':<20} {'first s':>8} {'median s':>9} {'min s':>7} {'max s':>7}   (n={args.repeat})")
    for name, values in samples.items():
        print(f"{name:<20} {first[name]:>8.3f} {med[name]:>9.3f} {min(values):>7.3f} {max(values):>7.3f}")
    print()
    print(f"second run, tag:    mlexec / mlflow = {med['mlexec run -v tag'] / med['mlflow run -v tag']:.3f}")
    print(f"second run, commit: mlexec / mlflow = {med['mlexec run -v sha'] / med['mlflow run -v tag']:.3f}")
    print(f"temporary directories left behind by mlflow run: {leaked}; by mlexec: 0")


if __name__ == "__main__":
    main()
