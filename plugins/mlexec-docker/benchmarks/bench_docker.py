"""mlexec vs mlflow run on a docker_env project, and both against a bare ``docker run``.

Times, alternating so that machine noise hits every case alike, on one
project whose entry point is ``true`` in the same image:

* ``docker run --rm IMAGE true``                    (the floor: the Docker CLI and a container)
* ``mlexec run PROJECT``                            (project mounted; target: at most +0.2 s over the floor)
* ``mlflow run PROJECT``
* ``mlexec run PROJECT --build-image``              (cache hit: the content-addressed image exists; target +0.2 s)
* ``mlflow run PROJECT --build-image``              (MLflow rebuilds on every run)

with one MLflow sqlite store (created once, before timing, by MLflow itself).
Every case runs once untimed first (mlexec's first --build-image run builds;
Python writes its bytecode).  Prints medians, mlexec's overhead over the bare
``docker run``, and the ratios to mlflow.  A benchmark, not a test: it asserts
nothing.  Needs a Docker daemon and the test image (plugins/mlexec-docker/ci-setup.sh).

    python plugins/mlexec-docker/benchmarks/bench_docker.py [--repeat 5] [--image mlexec-test/busybox:1] [--no-mlflow]

``--no-mlflow`` leaves out the two ``mlflow run`` cases (seconds each), for a
quick look at mlexec's overhead alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from mlexec_core.testing.benchmarking import timed, tools

def remove_images(docker: str, repository: str) -> None:
    out = subprocess.run([docker, "images", "--format", "{{json .}}", repository],
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        image = json.loads(line)
        subprocess.run([docker, "rmi", "-f", f"{image['Repository']}:{image['Tag']}"], capture_output=True)


def dangling(docker: str) -> set[str]:
    out = subprocess.run([docker, "images", "-q", "--no-trunc", "--filter", "dangling=true"],
                         capture_output=True, text=True).stdout
    return set(out.split())


def remove_mlflow_leftovers(docker: str, before: set[str]) -> None:
    """MLflow's --build-image re-tags on every run, leaving the previous image dangling: remove those."""
    for image in dangling(docker) - before:
        workdir = subprocess.run([docker, "image", "inspect", "--format", "{{.Config.WorkingDir}}", image],
                                 capture_output=True, text=True).stdout.strip()
        if workdir.rstrip("/") == "/mlflow/projects/code":
            subprocess.run([docker, "rmi", image], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--image", default="mlexec-test/busybox:1")
    parser.add_argument("--no-mlflow", action="store_true", help="time mlexec and the bare docker run only")
    args = parser.parse_args()

    mlexec_bin, mlflow_bin = tools()
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "image", "inspect", args.image], capture_output=True).returncode:
        raise SystemExit(f"needs a Docker daemon and the image {args.image} (plugins/mlexec-docker/ci-setup.sh)")

    name = f"mlexec-bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="mlexec-bench-docker-") as tmp:
        tmp = Path(tmp)
        project = tmp / "project"
        project.mkdir()
        (project / "MLproject").write_text(
            f"name: {name}\ndocker_env:\n  image: {args.image}\nentry_points:\n  main:\n    command: \"true\"\n")
        (project / "train.py").write_text("print('training')\n")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MLFLOW_", "MLEXEC_")) and k != "PYTHONDONTWRITEBYTECODE"}
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        subprocess.run([sys.executable, "-c", "from mlflow.tracking import MlflowClient as C; "
                        f"C({env['MLFLOW_TRACKING_URI']!r}).search_experiments()"],
                       env=env, check=True, capture_output=True)

        cases = {
            "docker run --rm": [docker, "run", "--rm", args.image, "true"],
            "mlexec run": [mlexec_bin, "run", str(project)],
            "mlflow run": [mlflow_bin, "run", str(project)],
            "mlexec --build-image": [mlexec_bin, "run", str(project), "--build-image"],
            "mlflow --build-image": [mlflow_bin, "run", str(project), "--build-image"],
        }
        if args.no_mlflow:
            cases = {case: cmd for case, cmd in cases.items() if not case.startswith("mlflow")}
        before = dangling(docker)
        try:
            for cmd in cases.values():  # warm up: bytecode, OS caches, mlexec's one build
                timed(cmd, env, tmp)
            samples: dict[str, list[float]] = {case: [] for case in cases}
            for _ in range(args.repeat):
                for case, cmd in cases.items():
                    samples[case].append(timed(cmd, env, tmp))
        finally:
            remove_images(docker, name)
            remove_mlflow_leftovers(docker, before)

    med = {case: statistics.median(values) for case, values in samples.items()}
    print(f"image {args.image}")
    print(f"{'case':<22} {'median s':>9} {'min s':>7} {'max s':>7}   (n={args.repeat})")
    for case, values in samples.items():
        print(f"{case:<22} {med[case]:>9.3f} {min(values):>7.3f} {max(values):>7.3f}")
    floor = med["docker run --rm"]
    print()
    for case in ("mlexec run", "mlexec --build-image"):
        print(f"{case + ' over docker run':<36} = {med[case] - floor:+.3f} s   (target <= +0.2 s on a cache hit)")
    for mine, theirs in (("mlexec run", "mlflow run"), ("mlexec --build-image", "mlflow --build-image")):
        if theirs in med:
            print(f"{mine + ' / ' + theirs:<36} = {med[mine] / med[theirs]:.3f}")


if __name__ == "__main__":
    main()
