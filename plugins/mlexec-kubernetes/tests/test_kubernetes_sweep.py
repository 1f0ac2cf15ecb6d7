"""`mlexec sweep -b kubernetes` through the real CLI and the real kubernetes client, against the API
server double (the one thing here that cannot be real): one image build and push, one Job per child,
never more than --max-parallel Jobs alive, every child tracked in a real MLflow store."""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import pytest

from mlexec_core.testing import MLEXEC, assert_no_traceback

NS = "ml"


def test_a_sweep_runs_one_job_per_child_within_the_bound(mlexec, k8s_env, k8s_project, fake_cluster, store):
    lock = threading.Lock()
    alive = {"now": 0, "most": 0}

    def scenario(c, ns, job):
        with lock:
            alive["now"] += 1
            alive["most"] = max(alive["most"], alive["now"])
        pod = c.start_pod(ns, job)
        c.log(ns, pod, "epoch 1\n")
        time.sleep(0.5)
        failed = "0.4" in " ".join(c.job(ns, job)["spec"]["template"]["spec"]["containers"][0]["command"])
        c.finish_pod(ns, pod, 2 if failed else 0)
        with lock:
            alive["now"] -= 1
        c.job_condition(ns, job, "Failed" if failed else "Complete", reason="BackoffLimitExceeded" if failed else "")

    fake_cluster.scenario = scenario
    proj = k8s_project()
    proc = mlexec("sweep", proj, "-b", "kubernetes", "-c", "backend_config.yaml",
                  "-P", "lr=0.1,0.2,0.3,0.4,0.5,0.6,0.7", "--max-parallel", "3", cwd=proj, env=k8s_env, timeout=300)
    assert proc.returncode == 1, proc.stderr  # lr=0.4 fails on purpose
    assert_no_traceback(proc)
    assert proc.stderr.count("(stand-in)") == 1  # the image is built and pushed once
    assert "child 3 failed (lr=0.4)" in proc.stderr
    assert alive["most"] <= 3
    assert alive["most"] >= 2
    jobs = fake_cluster.created_jobs()
    assert len(jobs) == 7
    assert len({j["spec"]["template"]["spec"]["containers"][0]["image"] for j in jobs}) == 1
    runs = store.runs()
    [parent] = [r for r in runs if r.data.tags.get("mlexec.sweep") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FAILED"
    assert sorted((c.data.params["lr"], c.info.status) for c in children) == [
        (lr, "FAILED" if lr == "0.4" else "FINISHED") for lr in ("0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7")]
    assert {c.data.tags["mlflow.project.backend"] for c in children} == {"kubernetes"}
    assert len({c.data.tags["mlexec.kubernetes.job"] for c in children}) == 7


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_deletes_every_job_and_starts_no_queued_child(cli_env, k8s_env, k8s_project, fake_cluster, store,
                                                               signum):
    def scenario(c, ns, job):  # every child trains until it is stopped
        pod = c.start_pod(ns, job)
        c.log(ns, pod, "training forever\n")

    fake_cluster.scenario = scenario
    proj = k8s_project()
    proc = subprocess.Popen([*MLEXEC, "sweep", ".", "-b", "kubernetes", "-c", "backend_config.yaml",
                             "-P", "lr=0.1,0.2,0.3,0.4,0.5,0.6", "--max-parallel", "3"], cwd=proj,
                            env={**cli_env, **k8s_env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert fake_cluster.wait_for(lambda c: len(c.pods) == 3 or proc.poll() is not None, timeout=120)
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    assert len(fake_cluster.created_jobs()) == 3  # no queued child started
    assert len(fake_cluster.deleted_jobs()) == 3
    assert not fake_cluster.jobs and not fake_cluster.pods  # no Job (and no pod) left on the cluster
    runs = store.runs()
    [parent] = [r for r in runs if r.data.tags.get("mlexec.sweep") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "KILLED"
    assert len(children) == 3 and {c.info.status for c in children} == {"KILLED"}
    assert [r for r in runs if r.info.status == "RUNNING"] == []
