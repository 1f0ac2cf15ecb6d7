"""A large `mlexec sweep -b kubernetes` against the API server double (tests/mlexec_k8s_double.py).

Runs ``--children`` (default 1000) children with ``--max-parallel`` (default 8)
through the real CLI and the real kubernetes client, with the stand-in image
builder of the tests.  Reports: image builds (target: one), the most Jobs alive
at once (target: never above --max-parallel), children tracked in the sqlite
store (target: all), mlexec's peak memory, and the wall time.  A benchmark, not
a test: it asserts nothing.

    .venv/bin/python plugins/mlexec-kubernetes/benchmarks/bench_kubernetes_sweep.py [--children 1000]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

from conftest import FAKE_BUILDER  # noqa: E402
from mlexec_k8s_double import FakeCluster, _Handler, write_kubeconfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--children", type=int, default=1000)
    parser.add_argument("--max-parallel", type=int, default=8)
    args = parser.parse_args()

    cluster = FakeCluster()
    lock = threading.Lock()
    alive = {"now": 0, "most": 0}

    def scenario(c, ns, job):
        with lock:
            alive["now"] += 1
            alive["most"] = max(alive["most"], alive["now"])
        pod = c.start_pod(ns, job)
        c.log(ns, pod, "ok\n")
        time.sleep(0.2)  # a short job, so that several are alive at once
        c.finish_pod(ns, pod, 0)
        with lock:
            alive["now"] -= 1
        c.job_condition(ns, job, "Complete")

    cluster.scenario = scenario
    handler = type("Handler", (_Handler,), {"cluster": cluster})
    class QuietServer(ThreadingHTTPServer):
        def handle_error(self, request, client_address):  # a client closing a watch is not news
            if not isinstance(sys.exc_info()[1], ConnectionError):
                super().handle_error(request, client_address)

    server = QuietServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()

    with tempfile.TemporaryDirectory(prefix="mlexec-bench-k8s-sweep-") as tmp:
        tmp = Path(tmp)
        site = tmp / "site"
        site.mkdir()
        (site / "mlexec_k8s_fake_builder.py").write_text(FAKE_BUILDER)
        dist = site / "mlexec_k8s_fake_builder-1.0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mlexec-k8s-fake-builder\nVersion: 1.0\n")
        (dist / "entry_points.txt").write_text("[mlexec]\nfakedocker = mlexec_k8s_fake_builder\n")
        project = tmp / "proj"
        project.mkdir()
        (project / "MLproject").write_text("name: demo\nentry_points:\n  main:\n    parameters: {i: int}\n"
                                           "    command: \"echo {i}\"\n")
        (project / "backend_config.yaml").write_text("repository-uri: registry.example.test/team/demo\n"
                                                     "namespace: ml\n")
        db = tmp / "mlflow.db"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLEXEC_"))}
        env.update(MLFLOW_TRACKING_URI=f"sqlite:///{db}", MLEXEC_DISABLE_PLUGINS="docker",
                   KUBECONFIG=str(write_kubeconfig(tmp / "kubeconfig", f"http://127.0.0.1:{server.server_address[1]}")),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")])))
        subprocess.run([sys.executable, "-c", "from mlflow.tracking import MlflowClient as C; "
                        f"C({env['MLFLOW_TRACKING_URI']!r}).search_experiments()"], env=env, check=True,
                       capture_output=True)
        start = time.perf_counter()
        argv = ["mlexec", "sweep", str(project), "-b", "kubernetes", "-c", "backend_config.yaml",
                "-P", f"i=range(0, {args.children})", "--max-parallel", str(args.max_parallel)]
        wrapper = ("import resource, runpy, sys\n"
                   f"sys.argv = {argv!r}\n"
                   "try:\n    runpy.run_module('mlexec_core', run_name='__main__')\n"
                   "finally:\n    print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
                   " file=sys.stderr)\n")
        proc = subprocess.run([sys.executable, "-c", wrapper], cwd=project, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        peak = [line.split()[1] for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB")]
        peak_mb = int(peak[-1]) / 1024 if peak else float("nan")
        with sqlite3.connect(db) as con:
            tracked = con.execute("SELECT count(*) FROM tags WHERE key = 'mlflow.parentRunId'").fetchone()[0]
            finished = con.execute("SELECT count(*) FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                                   "WHERE t.key = 'mlflow.parentRunId' AND r.status = 'FINISHED'").fetchone()[0]
    server.shutdown()
    print(f"{args.children} children, --max-parallel {args.max_parallel}, exit {proc.returncode}")
    print(f"  image builds               {proc.stderr.count('(stand-in)')}   (target 1)")
    print(f"  Jobs created               {len(cluster.created_jobs())}")
    print(f"  most Jobs alive at once    {alive['most']}   (target <= {args.max_parallel})")
    print(f"  children tracked/finished  {tracked}/{finished}")
    print(f"  mlexec peak RSS            {peak_mb:.0f} MB")
    print(f"  wall                       {wall:.1f} s ({wall / args.children * 1000:.0f} ms per child)")
    if proc.returncode:
        print(proc.stderr[-2000:])


if __name__ == "__main__":
    main()
