"""``nodes`` and ``processes-per-node`` on Kubernetes (issue 22): an Indexed Job of N pods, a
headless Service naming them, and in each pod a launcher of P processes.

The manifests are validated strictly (kubernetes-validate); the runs go through the real CLI
against the API server double, whose pods really run as containers on the Docker engine of this
machine (the pod runner of mlexec_k8s_runner.py: test scaffolding, as INFRA.md says), on a
network where each container has its pod's DNS names.  The ranks are mlexec_core.testing.ranks'
WORKER, as in the local and Slurm tests: they record what they saw and all-reduce over TCP.
"""

from __future__ import annotations

import signal
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from mlexec_core.pipeline.options import RunOptions
from mlexec_core.pipeline.resolve import resolve_plan
from mlexec_core.plugin.manager import build_plugins
from mlexec_core.testing import assert_no_traceback
from mlexec_core.testing.ranks import WORKER, rank_records

from mlexec_kubernetes import plugin as kubernetes_plugin
from mlexec_kubernetes.distributed import MASTER_PORT, launcher, rank_failure
from mlexec_kubernetes.manifest import build_job, build_service, job_name

from test_kubernetes_manifests import IMAGE, VERSIONS, _kubernetes_validate

NS = "ml"


def _plan(project, resources, config=None, name="Demo"):
    root = project(f'name: {name}\nentry_points:\n  main:\n    command: "python train.py"\n')
    plugins = build_plugins(entry_points=False, extra=[("kubernetes", kubernetes_plugin)])
    return resolve_plan(plugins, RunOptions(uri=str(root), backend="kubernetes",
                                            backend_config={"repository-uri": "127.0.0.1:5000/demo", **(config or {})},
                                            resources=resources), cwd=root)


def _manifests(plan, run_id="f" * 32):
    name = job_name(plan.project.display_name, run_id, plan.resources.nodes or 1)
    job = build_job(plan, plan.backend_config, name=name, namespace=NS, image=IMAGE,
                    env={"MLFLOW_RUN_ID": run_id}, run_id=run_id)
    return name, job, build_service(plan, name=name, namespace=NS, run_id=run_id, owner_uid="0-1-2")


# -- the manifests ----------------------------------------------------------------------------


def test_nodes_are_an_indexed_job_and_a_headless_service_naming_its_pods(project):
    plan = _plan(project, {"nodes": "3", "processes-per-node": "2"})
    name, job, service = _manifests(plan)
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 3
    assert pod["subdomain"] == name == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["selector"] == {"job-name": name}
    assert service["spec"]["publishNotReadyAddresses"] is True  # rank 0's name resolves before it is ready
    assert service["metadata"]["ownerReferences"][0]["uid"] == "0-1-2"  # deleted with the Job
    command = pod["containers"][0]["command"]
    assert command[:2] == ["/bin/sh", "-c"] and command[3:] == ["mlexec-launcher", "python train.py"]
    assert f"MASTER_ADDR={name}-0.{name} MASTER_PORT={MASTER_PORT}" in command[2]
    assert "NNODES=3 LOCAL_WORLD_SIZE=2 WORLD_SIZE=6" in command[2]


def test_processes_of_one_pod_are_a_plain_job_with_the_launcher(project):
    plan = _plan(project, {"processes-per-node": "4"})
    _, job, _ = _manifests(plan)
    assert "completionMode" not in job["spec"] and "subdomain" not in job["spec"]["template"]["spec"]
    script = job["spec"]["template"]["spec"]["containers"][0]["command"][2]
    assert "MASTER_ADDR=127.0.0.1" in script and "WORLD_SIZE=4" in script


def test_one_process_is_the_job_it_always_was(project):
    _, job, _ = _manifests(_plan(project, {"nodes": "1", "processes-per-node": "1"}))
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["/bin/sh", "-c", "python train.py"]
    assert "completionMode" not in job["spec"]


def test_pod_host_names_fit_a_dns_label_and_the_service_starts_with_a_letter(project):
    plan = _plan(project, {"nodes": "12"}, name="9" + "x" * 80)
    name, job, _ = _manifests(plan)
    assert name[0].isalpha() and len(f"{name}-11") <= 63


@pytest.mark.parametrize("version", VERSIONS)
def test_the_indexed_job_and_the_service_validate_strictly(version, project):
    kubernetes_validate = _kubernetes_validate()
    for resources in ({"nodes": "2", "processes-per-node": "2", "gpus": "2", "shm": "1G"},
                      {"processes-per-node": "3"}):
        _, job, service = _manifests(_plan(project, resources))
        for manifest in (job, service):
            try:
                kubernetes_validate.validate(manifest, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{manifest['kind']} {resources} is invalid for Kubernetes {version}: {exc}")


def test_dry_run_shows_the_indexed_job_and_the_service(mlexec, k8s_env, k8s_project, fake_cluster, store):
    proj = k8s_project()
    proc = mlexec("run", proj, "-b", "kubernetes", "-c", "backend_config.yaml", "--dry-run",
                  "-R", "nodes=2", "-R", "processes-per-node=2", cwd=proj, env=k8s_env, check=0)
    assert_no_traceback(proc)
    text = proc.stdout[proc.stdout.index("# Job manifest"):]
    job, service = [d for d in yaml.safe_load_all(text) if d]
    assert job["kind"] == "Job" and job["spec"]["completionMode"] == "Indexed"
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    assert "WORLD_SIZE=4" in proc.stdout
    assert store.runs() == [] and not fake_cluster.created_jobs()


# -- the launcher, in this machine's sh --------------------------------------------------------


def _launch(tmp_path, command, index=0, nodes=1, per_node=2, env=None):
    script = launcher(nodes=nodes, per_node=per_node, master="127.0.0.1")
    return subprocess.run(["sh", "-c", script, "mlexec-launcher", command], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "JOB_COMPLETION_INDEX": str(index), **(env or {})})


def test_the_launcher_gives_each_process_its_ranks_and_its_share_of_the_gpus(tmp_path):
    proc = _launch(tmp_path, 'echo "$RANK $LOCAL_RANK $NODE_RANK $WORLD_SIZE $CUDA_VISIBLE_DEVICES"; printf end',
                   index=1, nodes=2, env={"CUDA_VISIBLE_DEVICES": "4,5,6,7"})
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.splitlines()) == ["[rank 2] 2 0 1 4 4,5", "[rank 2] end",
                                                "[rank 3] 3 1 1 4 6,7", "[rank 3] end"]


def test_the_launcher_stops_the_others_when_one_fails_and_exits_with_its_status(tmp_path):
    proc = _launch(tmp_path, "trap 'echo stopped $RANK; exit 0' TERM; echo started $RANK; "
                             "if [ $RANK = 1 ]; then sleep 0.5; exit 3; fi; while :; do sleep 0.1; done",
                   per_node=3)
    assert proc.returncode == 3
    for rank in (0, 2):
        assert f"[rank {rank}] stopped {rank}" in proc.stdout
    assert "mlexec: rank 1 exited with status 3; the other ranks were stopped" in proc.stderr
    assert rank_failure("mlexec: rank 1 status 3\n") == (1, 3)


# -- real pods: the pod runner on the Docker engine ----------------------------------------------


def _ranks_project(project, tmp_path, fail: int):
    """The WORKER as a project, and a backend config whose template mounts it into the pods (a hostPath,
    as kind's extraMounts would); the ranks write their records into its out/."""
    root = project(textwrap.dedent(f"""\
        name: Ranks
        entry_points:
          main:
            command: "python3 worker.py {fail} out"
        """), files={"worker.py": WORKER, "out/.keep": ""})
    (root / "job.yaml").write_text(yaml.safe_dump({"apiVersion": "batch/v1", "kind": "Job", "spec": {"template": {
        "spec": {"containers": [{"workingDir": "/project", "volumeMounts": [{"name": "project",
                                                                               "mountPath": "/project"}]}],
                 "volumes": [{"name": "project", "hostPath": {"path": str(root), "type": "Directory"}}]}}}}))
    (root / "k8s.yaml").write_text("repository-uri: 127.0.0.1:5000/team/ranks\nnamespace: ml\n"
                                   "kube-job-template-path: job.yaml\n")
    return root


def test_two_pods_of_two_processes_find_each_other_into_one_run(mlexec, k8s_real_env, pod_runner, fake_cluster,
                                                                 project, store, tmp_path):
    proj = _ranks_project(project, tmp_path, -1)
    proc = mlexec("run", proj, "-b", "kubernetes", "-c", "k8s.yaml", "-R", "nodes=2", "-R", "processes-per-node=2",
                  cwd=proj, env=k8s_real_env, check=0)
    assert_no_traceback(proc)
    run = store.only_run()
    assert run.info.status == "FINISHED", proc.stderr
    got = rank_records(proj / "out")
    assert sorted(got) == [0, 1, 2, 3]
    [job] = fake_cluster.created_jobs()
    name = job["metadata"]["name"]
    assert {r["host"] for r in got.values()} == {f"{name}-0", f"{name}-1"}  # two pods, by their index
    for rank, record in got.items():
        assert record["WORLD_SIZE"] == "4" and record["RANK"] == str(rank) and record["NNODES"] == "2"
        assert record["NODE_RANK"] == str(rank // 2) and record["LOCAL_RANK"] == str(rank % 2)
        assert record["LOCAL_WORLD_SIZE"] == "2"
        assert record["MASTER_ADDR"] == f"{name}-0.{name}" and record["MASTER_PORT"] == str(MASTER_PORT)
        assert record["MLFLOW_RUN_ID"] == run.info.run_id
        assert record["sum"] == 0 + 1 + 2 + 3  # the all-reduce went over the pods' network
        assert got[rank]["host"] == f"{name}-{rank // 2}"
    for rank in range(4):  # every pod's log, every rank's line, prefixed
        assert f"[rank {rank}] sum 6\n" in proc.stdout
    log = Path(store.client.download_artifacts(run.info.run_id, "mlexec/output.log", str(tmp_path))).read_text()
    assert all(f"[rank {rank}] sum 6" in log for rank in range(4)), log
    assert "Indexed Job ml/" in proc.stderr
    assert not fake_cluster.services  # the headless Service went with the run
    assert pod_runner.wait_stopped() == []


def test_a_failing_rank_fails_the_run_naming_it_and_stops_the_other_pod(mlexec, k8s_real_env, pod_runner,
                                                                         fake_cluster, project, store, tmp_path):
    proj = _ranks_project(project, tmp_path, 3)
    proc = mlexec("run", proj, "-b", "kubernetes", "-c", "k8s.yaml", "-R", "nodes=2", "-R", "processes-per-node=2",
                  cwd=proj, env=k8s_real_env)
    assert_no_traceback(proc)
    assert proc.returncode == 3, proc.stderr
    run = store.only_run()
    assert run.info.status == "FAILED"
    reason = run.data.tags["mlexec.failureReason"]
    assert reason.startswith("rank 3 exited with status 3; the other ranks were stopped (pod "), reason
    [job] = fake_cluster.created_jobs()
    assert f"(pod {job['metadata']['name']}-1-" in reason
    assert pod_runner.wait_stopped() == []  # the other pod, and rank 2 beside rank 3, were stopped
    assert not fake_cluster.services


def test_ctrl_c_deletes_the_job_its_pods_and_the_service(mlexec_background, k8s_real_env, pod_runner,
                                                          fake_cluster, project, store, tmp_path):
    proj = _ranks_project(project, tmp_path, -2)  # every rank waits to be stopped
    bg = mlexec_background("run", proj, "-b", "kubernetes", "-c", "k8s.yaml", "-R", "nodes=2",
                           "-R", "processes-per-node=2", cwd=proj, env=k8s_real_env)
    for rank in range(4):
        bg.wait_for(f"[rank {rank}] rank {rank} of 4 ready")
    assert len(fake_cluster.services) == 1
    bg.signal(signal.SIGINT)
    proc = bg.finish()
    assert_no_traceback(proc)
    assert proc.returncode == 130, proc.stderr
    assert store.only_run().info.status == "KILLED"
    assert not fake_cluster.jobs and not fake_cluster.pods and not fake_cluster.services
    assert pod_runner.wait_stopped() == []  # the deleted pods' containers were stopped


# -- the Service's life, scripted on the double -------------------------------------------------


def _two_pods_finish(c, ns, job):
    for index in range(2):
        pod = c.start_pod(ns, job)
        c.log(ns, pod, f"[rank {index}] hello\n")
        c.finish_pod(ns, pod, 0)
    c.job_condition(ns, job, "Complete")


def test_the_service_is_created_owned_by_the_job_and_deleted_when_the_run_ends(mlexec, k8s_env, k8s_project,
                                                                               fake_cluster, store):
    fake_cluster.scenario = _two_pods_finish
    proj = k8s_project()
    proc = mlexec("run", proj, "-b", "kubernetes", "-c", "backend_config.yaml", "-R", "nodes=2", cwd=proj,
                  env=k8s_env, check=0)
    assert_no_traceback(proc)
    [job] = fake_cluster.created_jobs()
    assert fake_cluster.wait_for(lambda c: not c.services, 10)  # deleted at the end of the run
    [service] = [body for method, path, _, body in fake_cluster.requests
                 if method == "POST" and path.endswith("/services")]
    assert service["metadata"]["name"] == job["metadata"]["name"]
    [owner] = service["metadata"]["ownerReferences"]
    assert owner["kind"] == "Job" and owner["name"] == job["metadata"]["name"] and owner["uid"]
    run = store.only_run()
    assert run.data.tags["mlexec.kubernetes.service"] == job["metadata"]["name"]
    assert "[rank 0] hello\n" in proc.stdout and "[rank 1] hello\n" in proc.stdout


def test_a_service_that_cannot_be_created_deletes_the_job_and_says_why(mlexec, k8s_env, k8s_project,
                                                                       fake_cluster, store):
    fake_cluster.forbidden.add(("create", "services"))
    proj = k8s_project()
    proc = mlexec("run", proj, "-b", "kubernetes", "-c", "backend_config.yaml", "-R", "nodes=2", cwd=proj,
                  env=k8s_env)
    assert proc.returncode != 0
    assert_no_traceback(proc)
    assert "creating the headless Service" in proc.stderr and "forbidden" in proc.stderr.lower()
    assert not fake_cluster.jobs  # the Job it was for is gone again
    assert [path for path, _ in fake_cluster.deleted_jobs()]


def test_rbac_without_services_is_one_error_before_any_run(mlexec, k8s_env, k8s_project, fake_cluster, store):
    fake_cluster.denied_services = True
    proj = k8s_project()
    proc = mlexec("run", proj, "-b", "kubernetes", "-c", "backend_config.yaml", "-R", "nodes=2", cwd=proj,
                  env=k8s_env, check=2)
    assert_no_traceback(proc)
    assert "RBAC forbids create on services" in proc.stderr
    assert store.runs() == [] and not fake_cluster.created_jobs()


def test_a_detached_run_keeps_its_service_until_it_is_cancelled(mlexec, k8s_env, k8s_project, fake_cluster,
                                                                store):
    fake_cluster.scenario = lambda c, ns, job: c.start_pod(ns, job)
    proj = k8s_project()
    proc = mlexec("run", proj, "-b", "kubernetes", "-c", "backend_config.yaml", "-R", "nodes=2", "--detach",
                  cwd=proj, env=k8s_env, check=0)
    assert_no_traceback(proc)
    run_id = store.only_run().info.run_id
    assert len(fake_cluster.services) == 1  # the pods still need their names
    mlexec("cancel", run_id, env=k8s_env, check=0)
    assert not fake_cluster.services and not fake_cluster.jobs
    assert store.client.get_run(run_id).info.status == "KILLED"
