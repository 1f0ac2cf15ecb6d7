"""The Python API against the API server double: ``synchronous=False`` returns at once,
``get_status()`` never blocks, ``cancel()`` deletes the Job and its pods."""

from __future__ import annotations

import socket
import threading

import mlexec_core
from mlexec_core.errors import BackendError, RunFailed
from mlexec_core.pipeline.execute import submit
from mlexec_core.pipeline.plan import RunStatus
from mlexec_core.pipeline.options import RunOptions
from mlexec_core.pipeline.resolve import resolve_plan

import pytest

NS = "ml"


def _join_watcher(run_id: str) -> None:
    for thread in threading.enumerate():
        if thread.name == f"mlexec-run-{run_id}":
            thread.join(60)
            assert not thread.is_alive()


def test_synchronous_run_prints_logs(in_process, k8s_project, fake_cluster, store, capsys):
    def scenario(c, ns, job):
        pod = c.start_pod(ns, job)
        c.log(ns, pod, "héllo from the pod\n")
        c.finish_pod(ns, pod, 0)
        c.job_condition(ns, job, "Complete")

    fake_cluster.scenario = scenario
    proj = k8s_project()
    submitted = mlexec_core.run(str(proj), backend="kubernetes", backend_config=str(proj / "backend_config.yaml"),
                                plugins=in_process())
    assert submitted.status is RunStatus.FINISHED
    assert "héllo from the pod\n" in capsys.readouterr().out
    run = store.only_run()
    assert run.info.status == "FINISHED" and run.data.tags["mlexec.kubernetes.namespace"] == NS


def test_synchronous_failure_raises_with_the_reason(in_process, k8s_project, fake_cluster, store):
    def scenario(c, ns, job):
        pod = c.start_pod(ns, job)
        c.finish_pod(ns, pod, 2)
        c.job_condition(ns, job, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")

    fake_cluster.scenario = scenario
    proj = k8s_project()
    with pytest.raises(RunFailed) as info:
        mlexec_core.run(str(proj), backend="kubernetes", backend_config=str(proj / "backend_config.yaml"),
                        plugins=in_process())
    assert "exited with status 2" in str(info.value)
    assert info.value.submitted.exit_code == 2
    assert store.only_run().info.status == "FAILED"


def test_asynchronous_run_returns_and_cancel_deletes_the_job(in_process, k8s_project, fake_cluster, store):
    running = threading.Event()

    def scenario(c, ns, job):
        pod = c.start_pod(ns, job)
        c.log(ns, pod, "step 1\n")
        running.set()

    fake_cluster.scenario = scenario
    proj = k8s_project()
    submitted = mlexec_core.run(str(proj), backend="kubernetes", backend_config=str(proj / "backend_config.yaml"),
                                synchronous=False, plugins=in_process())
    assert submitted.get_status() in (RunStatus.SCHEDULED, RunStatus.RUNNING)
    assert running.wait(60)
    assert fake_cluster.wait_for(lambda c: submitted.get_status() is RunStatus.RUNNING)
    # the tags are there while the Job runs
    assert store.only_run().data.tags["mlexec.kubernetes.job"].startswith("demo-project-")
    submitted.cancel()
    _join_watcher(submitted.run_id)
    assert submitted.get_status() is RunStatus.KILLED
    [(path, policy)] = fake_cluster.deleted_jobs()
    assert policy == "Foreground"
    assert not fake_cluster.jobs and not fake_cluster.pods
    assert store.only_run().info.status == "KILLED"
    submitted.cancel()  # safe twice


def test_get_status_without_wait_does_not_block(in_process, k8s_project, fake_cluster, store):
    """No one waits: get_status() reads the Job once per call."""
    proj = k8s_project()
    plugins = in_process()
    plan = resolve_plan(plugins, RunOptions(uri=str(proj), backend="kubernetes",
                                            backend_config=str(proj / "backend_config.yaml")))
    submitted = submit(plugins, plan)
    namespace, name = NS, fake_cluster.created_jobs()[0]["metadata"]["name"]
    assert submitted.get_status() is RunStatus.SCHEDULED
    pod = fake_cluster.start_pod(namespace, name)
    assert submitted.get_status() is RunStatus.RUNNING
    fake_cluster.finish_pod(namespace, pod, 0)
    fake_cluster.job_condition(namespace, name, "Complete")
    assert submitted.get_status() is RunStatus.FINISHED
    assert submitted.wait() is True
    assert store.only_run().info.status == "FINISHED"


def test_job_deleted_by_someone_else_fails_the_run(in_process, k8s_project, fake_cluster, store):
    def scenario(c, ns, job):
        c.start_pod(ns, job)
        c.delete_job(ns, job, {"propagationPolicy": "Background"})

    fake_cluster.scenario = scenario
    proj = k8s_project()
    with pytest.raises(RunFailed) as info:
        mlexec_core.run(str(proj), backend="kubernetes", backend_config=str(proj / "backend_config.yaml"),
                        plugins=in_process())
    assert "deleted" in str(info.value)
    assert store.only_run().info.status == "FAILED"


def _run(proj, plugins, config="backend_config.yaml", **kwargs):
    return mlexec_core.run(str(proj), backend="kubernetes", backend_config=str(proj / config), plugins=plugins,
                           **kwargs)


def test_tracking_uri_for_the_pod(in_process, k8s_project, fake_cluster, store, monkeypatch):
    """$KUBE_MLFLOW_TRACKING_URI, then the config's env, then the run's own URI."""

    def scenario(c, ns, job):
        c.job_condition(ns, job, "Complete")

    fake_cluster.scenario = scenario
    proj = k8s_project("repository-uri: registry.example.test/team/demo\nnamespace: ml\n"
                       "env: {EXTRA: 1, MLFLOW_TRACKING_URI: 'http://from-config:5000'}\n")
    (proj / "plain.yaml").write_text("repository-uri: registry.example.test/team/demo\nnamespace: ml\n")

    def pod_env(index):
        container = fake_cluster.created_jobs()[index]["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e["value"] for e in container["env"]}

    monkeypatch.setenv("KUBE_MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    _run(proj, in_process())
    assert pod_env(0)["MLFLOW_TRACKING_URI"] == "http://mlflow.internal:5000" and pod_env(0)["EXTRA"] == "1"
    monkeypatch.delenv("KUBE_MLFLOW_TRACKING_URI")
    _run(proj, in_process())
    assert pod_env(1)["MLFLOW_TRACKING_URI"] == "http://from-config:5000"
    _run(proj, in_process(), config="plain.yaml")
    assert pod_env(2)["MLFLOW_TRACKING_URI"] == store.uri


@pytest.mark.parametrize("case", ["exit", "deadline", "pull"])
def test_failure_reasons(case, in_process, k8s_project, fake_cluster, store):
    from mlexec_k8s_double import failing

    fake_cluster.scenario, expected = failing(case)
    proj = k8s_project("repository-uri: registry.example.test/team/demo\nnamespace: ml\n"
                       "active-deadline-seconds: 30\n")
    with pytest.raises(RunFailed) as info:
        _run(proj, in_process())
    job = fake_cluster.created_jobs()[0]["metadata"]["name"]
    assert expected in str(info.value) and f"Job {NS}/{job}" in str(info.value)
    run = store.only_run()
    assert run.info.status == "FAILED"
    reason = run.data.tags["mlexec.kubernetes.failure-reason"]
    assert expected in reason and "image registry.example.test/team/demo:" in reason
    if case == "exit":
        assert info.value.submitted.exit_code == 3
    if case == "deadline":
        assert "activeDeadlineSeconds (30 s)" in reason
    if case == "pull":  # the Job would wait forever: it is deleted
        assert [policy for _, policy in fake_cluster.deleted_jobs()] == ["Background"]


# -- errors before anything runs: one MlexecError naming what to fix, and no run -------------


@pytest.mark.parametrize("case, error, needles", [
    ("context", BackendError, ["unknown kube-context 'prod'", "contexts in the kubeconfig: test"]),
    ("namespace", BackendError, ["namespace 'nowhere' does not exist", "kubectl create namespace nowhere"]),
    ("review", BackendError, ["RBAC forbids create on jobs in namespace 'ml'", "Role"]),
    ("push", BackendError, ["denied", "docker login"]),
    ("unreachable", BackendError, ["cannot reach the cluster"]),
])
def test_errors_before_the_run(case, error, needles, in_process, k8s_project, fake_cluster, store, tmp_path,
                               monkeypatch):
    config = {"context": "repository-uri: r.example/x\nkube-context: prod\n",
              "namespace": "repository-uri: r.example/x\nnamespace: nowhere\n",
              "push": "repository-uri: r.example/refused/x\nnamespace: ml\n"}.get(case)
    proj = k8s_project(config) if config else k8s_project()
    if case == "review":
        fake_cluster.denied_reviews = {"create"}
    if case == "unreachable":
        from mlexec_k8s_double import write_kubeconfig

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "dead", f"http://127.0.0.1:{port}")))
    with pytest.raises(error) as info:
        _run(proj, in_process())
    for needle in needles:
        assert needle in str(info.value)
    assert store.runs() == []
    assert not fake_cluster.created_jobs()


def test_rbac_forbidden_at_create(in_process, k8s_project, fake_cluster, store):
    """Access reviews say nothing (reading the namespace is forbidden too): the create's 403 fails the run."""
    fake_cluster.forbidden = {("create", "jobs"), ("get", "namespaces")}
    fake_cluster.denied_reviews = set()
    proj = k8s_project()
    with pytest.raises(BackendError) as info:
        _run(proj, in_process())
    assert "forbidden by RBAC" in str(info.value) and 'cannot create resource "jobs"' in str(info.value)
    assert store.only_run().info.status == "FAILED"


def test_watch_drops_and_resumes(in_process, k8s_project, fake_cluster, store, capsys):
    """The double breaks the first Job watch and the first pod watch in the middle of a chunk."""
    fake_cluster.drop_watches = {"jobs": 1, "pods": 1}
    resumed = threading.Event()

    def scenario(c, ns, job):
        c.wait_for(lambda c: c.watch_requests("jobs") and c.watch_requests("pods"))
        pod = c.start_pod(ns, job)  # events on both watches: both break
        c.log(ns, pod, "working\n")
        if c.wait_for(lambda c: len(c.watch_requests("jobs")) >= 2 and len(c.watch_requests("pods")) >= 2):
            resumed.set()
        c.finish_pod(ns, pod, 0)
        c.job_condition(ns, job, "Complete")

    fake_cluster.scenario = scenario
    proj = k8s_project()
    _run(proj, in_process())
    out = capsys.readouterr().out
    assert resumed.is_set()
    assert "working\n" in out
    first, second = fake_cluster.watch_requests("jobs")[:2]
    # the second watch resumed from the event the first delivered before it broke, without listing again
    assert int(second["resourceVersion"][0]) > int(first["resourceVersion"][0])
    assert store.only_run().info.status == "FINISHED"


def test_expired_watch_lists_again(in_process, k8s_project, fake_cluster, store, capsys):
    """The first Job watch is answered 410 Gone: the plugin lists the Job again and watches on."""
    fake_cluster.expire_next_watch = {"jobs"}

    def job_lists(c):
        return [q for m, p, q, _ in c.requests if m == "GET" and p.endswith("/jobs") and "watch" not in q]

    def scenario(c, ns, job):
        c.wait_for(lambda c: len(job_lists(c)) >= 2 and len(c.watch_requests("jobs")) >= 2)
        pod = c.start_pod(ns, job)
        c.log(ns, pod, "ok\n")
        c.finish_pod(ns, pod, 0)
        c.job_condition(ns, job, "Complete")

    fake_cluster.scenario = scenario
    proj = k8s_project()
    _run(proj, in_process())
    out = capsys.readouterr().out
    assert len(job_lists(fake_cluster)) >= 2  # listed, watch expired (410), listed again
    assert out == "ok\n"
    assert store.only_run().info.status == "FINISHED"


def test_template_job_with_a_sidecar(in_process, k8s_project, fake_cluster, store, capsys):
    """The template's namespace is used, and the log followed is the first (mlexec's) container's."""
    def scenario(c, ns, job):
        pod = c.start_pod(ns, job)
        c.log(ns, pod, "from trainer\n")
        c.finish_pod(ns, pod, 0)
        c.job_condition(ns, job, "Complete")

    fake_cluster.scenario = scenario
    proj = k8s_project("repository-uri: registry.example.test/team/demo\nkube-job-template-path: job.yaml\n")
    (proj / "job.yaml").write_text(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {name: x, namespace: ml}\nspec:\n  template:\n    spec:\n"
        "      containers:\n      - {name: trainer, image: placeholder}\n"
        "      - {name: proxy, image: 'busybox:1.36', command: [sleep, '3600']}\n")
    _run(proj, in_process())
    assert capsys.readouterr().out == "from trainer\n"
    job = fake_cluster.created_jobs()[0]
    assert job["metadata"]["namespace"] == NS and job["metadata"]["name"] != "x"
    # the first container takes the project's name, as in MLflow
    assert job["spec"]["template"]["spec"]["containers"][0]["name"] == "demo-project"
    assert {q["container"][0] for q in fake_cluster.log_requests()} == {"demo-project"}
    assert store.only_run().info.status == "FINISHED"
