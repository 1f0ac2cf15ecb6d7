"""GPUs shared by a sweep: device-seconds used over device-seconds available, mlexec against Hydra.

A pool of 4 devices (``CUDA_VISIBLE_DEVICES=0,1,2,3`` in the sweep's environment:
no GPU exists on these machines, so the allocation is real and the devices are
not; each child sleeps for its duration, as a training step would hold its
device) and a sweep of children with uneven durations, two ways, in one
measurement:

* ``mlexec sweep -R gpus=1``: each child gets a device of its own
  (``CUDA_VISIBLE_DEVICES`` set to it) and waits while none is free;
* Hydra's multirun on the joblib launcher at ``n_jobs=4``, which cannot pin
  devices: every job sees all four and a CUDA program would use the first.

Every child records its start (its process's start time, as the kernel keeps it:
its own start-up is the child's), its end (its own clock) and the device a CUDA
program in it would use (the first of its ``CUDA_VISIBLE_DEVICES``).  A device
is busy while at least one child uses it (two children on one device do not
make it busier), so

    utilisation = sum over devices of the time each is busy / (4 x the sweep's span)

and it is compared with the best the same order of children allows: the list
schedule of the recorded durations on 4 devices with no overhead at all
(target: mlexec at least 0.95 of it).  Also the overhead per child of asking for
a device: the same sweep of no-op children with and without ``-R gpus=1``
(``--max-parallel 4`` both), alternately, ``(with - without) / N`` (target: at
most 5 ms).  A benchmark, not a test: it asserts nothing.

    .venv/bin/python benchmarks/bench_resources.py [--children 16] [--noop 100] [--rounds 3] [--no-hydra]
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from mlexec_core.testing.benchmarking import timed, tools

DEVICES = ["0", "1", "2", "3"]

#: What each child does, for both tools: record, hold the device, record.
CHILD = """\
import json, os, sys, time
# the device is the child's from the moment its process exists (its own start-up included):
# the process's start time, from the kernel (clock ticks since boot, on CLOCK_BOOTTIME)
ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
start = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME) + ticks / os.sysconf("SC_CLK_TCK")
devices = os.environ.get("CUDA_VISIBLE_DEVICES", "")
i, out = int(sys.argv[1]), sys.argv[2]
duration = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "durations.json")))[i]
time.sleep(duration)
with open(os.path.join(out, f"child-{i}.json"), "w") as f:
    json.dump({"i": i, "start": start, "end": time.time(), "duration": duration,
               "device": devices.split(",")[0]}, f)
"""

HYDRA_APP = """\
import subprocess, sys
import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path=".", config_name="config")
def main(cfg: DictConfig) -> None:
    # the same child as mlexec's, so both pay one Python start per child
    subprocess.run([sys.executable, "CHILD_PY", str(cfg.i), "OUT"], check=True)


if __name__ == "__main__":
    main()
"""


def hydra_python(cache: Path) -> Path:
    from bench_sweep import hydra_python as make  # the same virtualenv as bench_sweep.py

    return make(cache)


def busy(records: list[dict]) -> tuple[float, float]:
    """(device-seconds busy, the span): per device, the union of its children's intervals."""
    span = max(r["end"] for r in records) - min(r["start"] for r in records)
    total = 0.0
    for device in {r["device"] for r in records}:
        intervals = sorted((r["start"], r["end"]) for r in records if r["device"] == device)
        end = float("-inf")
        for a, b in intervals:
            if b <= end:
                continue
            total += b - max(a, end)
            end = b
    return total, span


def list_schedule(durations: list[float], devices: int) -> float:
    """The span of the list schedule (each child, in order, on the first free device), no overhead."""
    free = [0.0] * devices
    for d in durations:
        t = heapq.heappop(free)
        heapq.heappush(free, t + d)
    return max(free)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--children", type=int, default=16, help="children with uneven durations")
    parser.add_argument("--noop", type=int, default=100, help="no-op children for the overhead per child")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the overhead measurement")
    parser.add_argument("--no-hydra", action="store_true", help="skip Hydra (no PyPI access)")
    args = parser.parse_args()
    mlexec_bin, _ = tools()
    rng = random.Random(7)
    durations = [round(rng.uniform(1.0, 5.0), 2) for _ in range(args.children)]
    n = len(durations)
    pool = len(DEVICES)

    with tempfile.TemporaryDirectory(prefix="mlexec-bench-resources-") as tmp:
        tmp = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLEXEC_"))}
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        env["CUDA_VISIBLE_DEVICES"] = ",".join(DEVICES)
        env["XDG_STATE_HOME"] = str(tmp / "state")  # the leases of this benchmark only
        project = tmp / "uneven"
        project.mkdir()
        (project / "child.py").write_text(CHILD)
        (project / "durations.json").write_text(json.dumps(durations))
        (project / "MLproject").write_text(
            "name: uneven\nresources: {gpus: 1}\nentry_points:\n  main:\n    parameters: {i: int, out: string}\n"
            "    command: \"python child.py {i} {out}\"\n"
            "  noop:\n    parameters: {i: int}\n    command: \"true\"\n")
        results: dict[str, dict] = {}

        out = tmp / "mlexec-out"
        out.mkdir()
        timed([mlexec_bin, "sweep", str(project), "--env-manager", "local", "-P", f"i=range(0, {n})",
               "-P", f"out={out}", "--max-parallel", str(n)], env, tmp)
        records = [json.loads(p.read_text()) for p in out.glob("child-*.json")]
        used, span = busy(records)
        results["mlexec sweep -R gpus=1"] = {"used": used, "span": span, "shared": _shared(records)}

        if not args.no_hydra:
            python = hydra_python(Path.home() / ".cache" / "mlexec-bench")
            app = tmp / "hydra_app"
            app.mkdir()
            hout = tmp / "hydra-out"
            hout.mkdir()
            (app / "child.py").write_text(CHILD)
            (app / "durations.json").write_text(json.dumps(durations))
            (app / "app.py").write_text(HYDRA_APP.replace("CHILD_PY", str(app / "child.py"))
                                        .replace("OUT", str(hout)))
            (app / "config.yaml").write_text("i: 0\n")
            cmd = [str(python), "app.py", "--multirun", "hydra/launcher=joblib", f"hydra.launcher.n_jobs={pool}",
                   f"i=range(0,{n})", f"hydra.sweep.dir={tmp / 'multirun'}"]
            timed(cmd, env, app)
            for p in hout.glob("child-*.json"):
                p.unlink()
            timed(cmd, env, app)
            records = [json.loads(p.read_text()) for p in hout.glob("child-*.json")]
            used, span = busy(records)
            results[f"hydra joblib n_jobs={pool}"] = {"used": used, "span": span, "shared": _shared(records)}

        noop = [mlexec_bin, "sweep", str(project), "-e", "noop", "--env-manager", "local",
                "-P", f"i=range(0, {args.noop})", "--max-parallel", str(pool)]
        with_r, without = [], []
        for _ in range(args.rounds):
            without.append(timed([*noop, "-R", "gpus=none"], env, tmp))
            with_r.append(timed([*noop, "-R", "gpus=1"], env, tmp))

    best_span = list_schedule(durations, pool)
    best = sum(durations) / (pool * best_span)
    lower = max(sum(durations) / pool, max(durations))
    print(f"{n} children of uneven durations ({min(durations)}-{max(durations)} s, {sum(durations):.1f} s in all), "
          f"a pool of {pool} devices (CUDA_VISIBLE_DEVICES; no GPU on this machine)")
    print(f"  best possible: list schedule span {best_span:.2f} s, utilisation {best:.3f} "
          f"(any order: span >= {lower:.2f} s)")
    for name, r in results.items():
        u = r["used"] / (pool * r["span"])
        print(f"  {name:<26} span {r['span']:6.2f} s  utilisation {u:.3f} = {u / best:.3f} of the best possible"
              f"  ({r['shared']} children overlapped another on its device)")
    overhead = (statistics.median(with_r) - statistics.median(without)) / args.noop
    print()
    print(f"{args.noop} no-op children, 4 at once: with -R gpus=1 {statistics.median(with_r):.2f} s, without "
          f"{statistics.median(without):.2f} s (medians of {args.rounds})")
    print(f"overhead per child of -R gpus=1                = {overhead * 1000:.1f} ms   (target <= 5 ms)")
    mlexec_u = results["mlexec sweep -R gpus=1"]
    print(f"mlexec utilisation / best possible             = "
          f"{mlexec_u['used'] / (pool * mlexec_u['span']) / best:.3f}   (target >= 0.95)")


def _shared(records: list[dict]) -> int:
    """How many children ran at the same time as another child on the same device."""
    count = 0
    for r in records:
        if any(o is not r and o["device"] == r["device"] and o["start"] < r["end"] and r["start"] < o["end"]
               for o in records):
            count += 1
    return count


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
