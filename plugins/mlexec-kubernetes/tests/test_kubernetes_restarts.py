"""Restarts into the same run on Kubernetes (issue 22, item 7): the Job's podFailurePolicy replaces a
disrupted pod without counting it and counts the exit statuses of --restart-on-exit against
backoffLimit = --max-restarts; mlexec follows the new pod and counts each attempt into the one run
(SubmittedJob.report_restart), or deletes the Job when the restarts are used up.

The pods run for real on the Docker engine (mlexec_k8s_runner.PodRunner, test scaffolding); a
preemption is the runner's: the pod gets the DisruptionTarget condition and its container is
stopped, as the scheduler's preemption does.
"""

from __future__ import annotations

import textwrap

import pytest

from mlexec_core.pipeline.options import RunOptions
from mlexec_core.pipeline.resolve import resolve_plan
from mlexec_core.plugin.manager import build_plugins
from mlexec_core.testing import assert_no_traceback

from mlexec_kubernetes import plugin as kubernetes_plugin
from mlexec_kubernetes.manifest import CHECKPOINT_PATH, build_job, job_name

from test_kubernetes_manifests import IMAGE, VERSIONS, _kubernetes_validate

#: Attempt 1 says so and waits (to be preempted); a later attempt ends.
WAITS_ON_THE_FIRST = ('echo attempt $MLEXEC_ATTEMPT in $MLEXEC_CHECKPOINT_DIR; '
                      'if [ $MLEXEC_ATTEMPT = 1 ]; then echo waiting; exec sleep 300; fi; echo done')


def _project(project, command: str, config: str):
    root = project(textwrap.dedent(f"""\
        name: Resumes
        entry_points:
          main:
            command: "{command}"
        """))
    (root / "k8s.yaml").write_text("repository-uri: 127.0.0.1:5000/team/resumes\nnamespace: ml\n" + config)
    return root


def _plan(project, config, **restarts):
    root = project('name: Demo\nentry_points:\n  main:\n    command: "python train.py"\n')
    plugins = build_plugins(entry_points=False, extra=[("kubernetes", kubernetes_plugin)])
    return resolve_plan(plugins, RunOptions(uri=str(root), backend="kubernetes",
                                            backend_config={"repository-uri": "127.0.0.1:5000/demo", **config},
                                            **restarts), cwd=root)


def _job(plan):
    return build_job(plan, plan.backend_config, name=job_name("Demo", "f" * 32), namespace="ml", image=IMAGE,
                     env={"MLFLOW_RUN_ID": "f" * 32}, run_id="f" * 32)


def test_restarts_are_a_pod_failure_policy(project):
    job = _job(_plan(project, {"checkpoint-volume": "ckpt"}, restart_on_exit=(75, 76), max_restarts=5))
    spec = job["spec"]
    assert spec["backoffLimit"] == 5
    main = spec["template"]["spec"]["containers"][0]
    ignore, count, fail = spec["podFailurePolicy"]["rules"]
    assert ignore == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert count["action"] == "Count" and count["onExitCodes"]["values"] == [75, 76]
    assert fail["action"] == "FailJob" and fail["onExitCodes"] == {"containerName": main["name"],
                                                                    "operator": "NotIn", "values": [0]}
    [mount] = [m for m in main["volumeMounts"] if m["mountPath"] == CHECKPOINT_PATH]
    assert mount["subPath"] == "mlexec-runs/" + "f" * 32
    volumes = spec["template"]["spec"]["volumes"]
    assert {"name": mount["name"], "persistentVolumeClaim": {"claimName": "ckpt"}} in volumes
    assert "MLEXEC_ATTEMPT" in main["command"][2]  # counted in the pod, from the checkpoint folder


def test_without_restarts_the_job_is_as_it_was(project):
    job = _job(_plan(project, {"checkpoint-volume": "ckpt"}))
    assert "podFailurePolicy" not in job["spec"] and job["spec"]["backoffLimit"] == 0
    assert "volumes" not in job["spec"]["template"]["spec"]


@pytest.mark.parametrize("version", VERSIONS)
def test_the_restartable_job_validates_strictly(version, project):
    kubernetes_validate = _kubernetes_validate()
    for config in ({"checkpoint-volume": "ckpt"}, {}):
        for resources in ({}, {"nodes": "2", "processes-per-node": "2"}):
            plan = _plan(project, config, restart_on_exit=(75,), max_restarts=2, resources=resources)
            kubernetes_validate.validate(_job(plan), version, strict=True)


def test_a_template_whose_pods_restart_by_themselves_is_refused_before_the_run(mlexec, k8s_env, project, store,
                                                                               fake_cluster):
    proj = _project(project, "true", "kube-job-template-path: job.yaml\n")
    (proj / "job.yaml").write_text("apiVersion: batch/v1\nkind: Job\nspec: {template: {spec: "
                                   "{restartPolicy: OnFailure, containers: [{}]}}}\n")
    proc = mlexec("run", proj, "-b", "kubernetes", "-c", "k8s.yaml", "--restart-on-exit", "75", cwd=proj,
                  env=k8s_env, check=2)
    assert_no_traceback(proc)
    assert "need the Job's pods to have restartPolicy Never" in proc.stderr
    assert store.runs() == [] and not fake_cluster.created_jobs()


def _pod_saying(fake_cluster, text: str) -> str:
    assert fake_cluster.wait_for(lambda c: any(text.encode() in line for lines in c.logs.values()
                                               for _, line in lines))
    with fake_cluster.cond:
        return next(pod for (ns, pod), lines in fake_cluster.logs.items()
                    if any(text.encode() in line for _, line in lines))


def test_a_preempted_pod_comes_back_into_the_same_run(mlexec_background, k8s_real_env, pod_runner, fake_cluster,
                                                      project, store):
    proj = _project(project, WAITS_ON_THE_FIRST, "checkpoint-volume: checkpoints\n")
    bg = mlexec_background("run", proj, "-b", "kubernetes", "-c", "k8s.yaml", "--max-restarts", "2", cwd=proj,
                           env=k8s_real_env)
    pod_runner.preempt("ml", _pod_saying(fake_cluster, "waiting"))
    proc = bg.finish()
    assert_no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    run = store.only_run()
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlexec.attempt"] == "2"
    assert f"attempt 1 in {CHECKPOINT_PATH}\n" in proc.stdout and "attempt 2 in" in proc.stdout
    assert "done\n" in proc.stdout
    assert "mlexec: the job was preempted (pod " in proc.stderr and "attempt 2 of at most 3" in proc.stderr
    assert len(fake_cluster.pods) == 2 and not fake_cluster.deleted_jobs()


def test_a_retryable_exit_status_restarts_the_pod(mlexec, k8s_real_env, pod_runner, fake_cluster, project, store):
    proj = _project(project, 'echo attempt $MLEXEC_ATTEMPT; [ $MLEXEC_ATTEMPT -ge 2 ] || exit 75',
                    "checkpoint-volume: checkpoints\n")
    proc = mlexec("run", proj, "-b", "kubernetes", "-c", "k8s.yaml", "--restart-on-exit", "75", cwd=proj,
                  env=k8s_real_env, check=0)
    assert_no_traceback(proc)
    run = store.only_run()
    assert run.info.status == "FINISHED" and run.data.tags["mlexec.attempt"] == "2"
    assert "attempt 1\n" in proc.stdout and "attempt 2\n" in proc.stdout
    assert "exited with status 75 (--restart-on-exit; pod " in proc.stderr


def test_no_restarts_left_fails_the_run_and_deletes_the_job(mlexec_background, k8s_real_env, pod_runner,
                                                            fake_cluster, project, store):
    proj = _project(project, WAITS_ON_THE_FIRST, "")
    bg = mlexec_background("run", proj, "-b", "kubernetes", "-c", "k8s.yaml", "--max-restarts", "0", cwd=proj,
                           env=k8s_real_env)
    pod_runner.preempt("ml", _pod_saying(fake_cluster, "waiting"))
    proc = bg.finish()
    assert_no_traceback(proc)
    assert proc.returncode != 0
    assert "checkpoints written there do not survive a pod" in proc.stderr  # no checkpoint-volume
    run = store.only_run()
    assert run.info.status == "FAILED"
    assert run.data.tags["mlexec.failureReason"].startswith("was preempted (pod ")
    assert run.data.tags["mlexec.failureReason"].endswith("not started again (--max-restarts 0)")
    assert [path for path, _ in fake_cluster.deleted_jobs()]  # the Job is gone, and its pods
    assert not fake_cluster.jobs
    assert pod_runner.wait_stopped() == []  # (the runner stops a deleted pod's container in the background)
