"""The run's resources (``-R``, the MLproject's ``resources:``) on Kubernetes.

The manifests are validated offline and strictly against the Kubernetes OpenAPI
schemas (``kubernetes-validate``), as in test_kubernetes_manifests.py; the time
limit runs through the real CLI and the real ``kubernetes`` client against the
API server double (mlexec_k8s_double.py), which enforces nothing by itself: the
pod goes Running because the test says so, and a ``DeadlineExceeded`` condition
appears only when a test sets it.  No real cluster is involved.
"""

from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from mlexec_core.errors import UsageError
from mlexec_core.pipeline.options import RunOptions
from mlexec_core.pipeline.resolve import resolve_plan
from mlexec_core.plugin.manager import build_plugins
from mlexec_core.resources import Resources, time_limit_reason
from mlexec_core.testing import MLEXEC, assert_no_traceback

from mlexec_kubernetes import plugin as kubernetes_plugin
from mlexec_kubernetes.config import DEFAULT_GPU_TYPE_LABEL, parse_config
from mlexec_kubernetes.manifest import build_job, job_name
from mlexec_kubernetes.resources import conflicts, cpu_quantity, quantity_value, size_quantity

from test_kubernetes_manifests import FULL, IMAGE, TEMPLATE, VERSIONS, _kubernetes_validate

NS = "ml"
GIB = 1024 ** 3
EVERY_KEY = {"cpus": 4, "memory": "16G", "gpus": 2, "gpu-type": "NVIDIA-A100-SXM4-80GB", "shm": "8G", "time": "2h"}


@pytest.fixture
def job_for(project, tmp_path):
    """The Job manifest for a small project run with ``resources`` (as ``-R`` gives them) and ``config``."""
    template = tmp_path / "job.yaml"
    template.write_text(TEMPLATE)
    made = 0

    def make(resources, config=None, mlproject_resources=None):
        nonlocal made
        made += 1
        top = f"resources: {json.dumps(mlproject_resources)}\n" if mlproject_resources else ""
        root = project(f"name: Demo\n{top}entry_points:\n  main:\n    command: \"python train.py\"\n",
                       where=f"proj{made}")
        config = {"repository-uri": "127.0.0.1:5000/demo", **(config or {})}
        if config.get("kube-job-template-path") == "TEMPLATE":
            config["kube-job-template-path"] = str(template)
        plugins = build_plugins(entry_points=False, extra=[("kubernetes", kubernetes_plugin)])
        plan = resolve_plan(plugins, RunOptions(uri=str(root), backend="kubernetes", backend_config=config,
                                                resources=resources), cwd=root)
        job = build_job(plan, plan.backend_config, name=job_name("Demo", "f" * 32), namespace=NS, image=IMAGE,
                        env={"MLFLOW_RUN_ID": "f" * 32}, run_id="f" * 32)
        return job, plan

    return make


def _main(job):
    return job["spec"]["template"]["spec"]["containers"][0]


# -- the mapping, key by key --------------------------------------------------------------


@pytest.mark.parametrize("cpus, quantity", [(4, "4"), (0.5, "500m"), (1.5, "1500m"), (0.1, "100m"),
                                            (0.0001, "1m"), (2.0, "2")])
def test_cpus_become_a_kubernetes_quantity(cpus, quantity):
    assert cpu_quantity(cpus) == quantity
    assert quantity_value(quantity) >= quantity_value(str(cpus))


@pytest.mark.parametrize("size, quantity", [(16 * GIB, "16Gi"), (512 * 1024 ** 2, "512Mi"),
                                            (1536 * 1024 ** 2, "1536Mi"), (1024 ** 4, "1Ti"), (1000, "1000")])
def test_sizes_become_binary_quantities(size, quantity):
    assert size_quantity(size) == quantity
    assert quantity_value(quantity) == size


def test_quantities_compare_by_value():
    assert quantity_value("500m") == quantity_value("0.5") and quantity_value("2") == quantity_value("2000m")
    assert quantity_value("8Gi") != quantity_value("8G")  # 8G is 8 * 10^9 bytes for Kubernetes
    assert quantity_value("1e3") == 1000 and quantity_value("lots") is None


def test_cpus_memory_and_gpus_are_requests_and_limits(job_for):
    job, _ = job_for(["cpus=0.5", "memory=16G", "gpus=1"])
    expected = {"cpu": "500m", "memory": "16Gi", "nvidia.com/gpu": "1"}
    assert _main(job)["resources"] == {"requests": expected, "limits": expected}


def test_time_is_the_jobs_deadline_rounded_up(job_for):
    assert job_for(["time=2h"])[0]["spec"]["activeDeadlineSeconds"] == 7200
    assert job_for(["time=90.5s"])[0]["spec"]["activeDeadlineSeconds"] == 91


def test_shm_is_a_memory_backed_empty_dir_at_dev_shm(job_for):
    job, _ = job_for(["shm=8G"])
    pod = job["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "mlexec-shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}]
    assert _main(job)["volumeMounts"] == [{"name": "mlexec-shm", "mountPath": "/dev/shm"}]


def test_gpu_type_is_a_node_selector_on_the_configured_label(job_for):
    job, _ = job_for(["gpu-type=NVIDIA-H100-80GB-HBM3", "gpus=1"])
    assert job["spec"]["template"]["spec"]["nodeSelector"] == {DEFAULT_GPU_TYPE_LABEL: "NVIDIA-H100-80GB-HBM3"}
    job, _ = job_for(["gpu-type=nvidia-tesla-a100"], {"gpu-type-label": "cloud.google.com/gke-accelerator",
                                                      "node-selector": {"pool": "gpu"}})
    assert job["spec"]["template"]["spec"]["nodeSelector"] == {
        "pool": "gpu", "cloud.google.com/gke-accelerator": "nvidia-tesla-a100"}


def test_the_mlprojects_resources_reach_the_manifest(job_for):
    job, plan = job_for(["time=30m"], mlproject_resources={"cpus": 2, "time": "1h"})
    assert plan.resources == Resources(cpus=2.0, time=1800.0)
    assert _main(job)["resources"]["limits"] == {"cpu": "2"} and job["spec"]["activeDeadlineSeconds"] == 1800


def test_no_resources_leave_the_manifest_as_it_was(job_for):
    job, _ = job_for(None)
    assert "resources" not in _main(job) and "activeDeadlineSeconds" not in job["spec"]
    assert "volumes" not in job["spec"]["template"]["spec"] and "nodeSelector" not in job["spec"]["template"]["spec"]


def test_resources_win_over_the_config_and_the_template(job_for):
    job, _ = job_for(["memory=16G", "gpus=0", "time=2h", "shm=1G", "gpu-type=NVIDIA-L4"],
                     {**FULL, "kube-job-template-path": "TEMPLATE",
                      "node-selector": {DEFAULT_GPU_TYPE_LABEL: "Tesla-T4", "pool": "gpu"}})
    main = _main(job)
    # the config's cpu stays; memory and the GPUs are the resources'; gpus=0 is no GPU at all
    assert main["resources"]["requests"] == {"cpu": "500m", "memory": "16Gi"}
    assert main["resources"]["limits"] == {"memory": "16Gi", "cpu": "500m"}
    assert job["spec"]["activeDeadlineSeconds"] == 7200
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {DEFAULT_GPU_TYPE_LABEL: "NVIDIA-L4", "pool": "gpu"}
    # the template's own volume and mount are kept beside /dev/shm
    assert main["volumeMounts"] == [{"name": "data", "mountPath": "/data"},
                                    {"name": "mlexec-shm", "mountPath": "/dev/shm"}]
    assert [v["name"] for v in pod["volumes"]] == ["data", "mlexec-shm"]


# -- every manifest validates strictly --------------------------------------------------------


COMBINATIONS = {
    **{f"only-{key}": {key: value} for key, value in EVERY_KEY.items()},
    "fractional": {"cpus": 0.25, "memory": "1.3G", "shm": "100M", "time": "90.5s"},
    "gpus-0": {"gpus": 0, "cpus": 1},
    "every-key": EVERY_KEY,
}
CONFIGS = {
    "default": {},
    "full": FULL,
    "template+full": {**FULL, "kube-job-template-path": "TEMPLATE"},
    "split": {"resources": {"requests": {"cpu": 1}, "limits": {"cpu": 2, "memory": "1G"}},
              "gpu-type-label": "cloud.google.com/gke-accelerator"},
}


def _manifests(job_for):
    for resources_label, resources in COMBINATIONS.items():
        for config_label, config in CONFIGS.items():
            yield f"{resources_label} with {config_label}", job_for(resources, config)[0]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_resource_manifest_validates_strictly(version, job_for):
    kubernetes_validate = _kubernetes_validate()
    for label, manifest in _manifests(job_for):
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{label}: the manifest is invalid for Kubernetes {version}: {exc}")
        resources = _main(manifest).get("resources") or {}
        # what the schemas do not check: an extended resource's request equals its limit
        gpu = [(resources.get(part) or {}).get("nvidia.com/gpu") for part in ("requests", "limits")]
        assert gpu[0] == gpu[1], label
        mounts = [m["mountPath"] for m in _main(manifest).get("volumeMounts") or []]
        assert len(mounts) == len(set(mounts)), label


def test_a_template_with_its_own_dev_shm_gets_one_mount(job_for, tmp_path):
    kubernetes_validate = _kubernetes_validate()
    (tmp_path / "shm.yaml").write_text(TEMPLATE.replace(
        "        - {name: data, mountPath: /data}\n",
        "        - {name: data, mountPath: /data}\n        - {name: dshm, mountPath: /dev/shm}\n").replace(
        "      - name: data\n", "      - name: dshm\n        emptyDir: {medium: Memory}\n      - name: data\n"))
    job, _ = job_for(["shm=2G"], {"kube-job-template-path": str(tmp_path / "shm.yaml")})
    assert _main(job)["volumeMounts"] == [{"name": "data", "mountPath": "/data"},
                                          {"name": "mlexec-shm", "mountPath": "/dev/shm"}]
    kubernetes_validate.validate(job, VERSIONS[-1], strict=True)
    assert _conflicts({"shm": 2 * GIB}, {"kube-job-template-path": "shm.yaml"}, tmp_path) == [
        "the Job template shm.yaml: spec.template.spec.containers[0].volumeMounts (/dev/shm) is volume 'dshm' "
        "(emptyDir), but the resource shm=2G says otherwise and wins: /dev/shm is a memory-backed emptyDir of 2Gi; "
        "to keep volume 'dshm' (emptyDir), run with -R shm=none"]


# -- conflicts with the config: the resource wins, and says so --------------------------------


def _conflicts(resources, config, tmp_path):
    return conflicts(Resources(**resources), parse_config({"repository-uri": "r/x", **config}, tmp_path))


@pytest.mark.parametrize("resources, config, warning", [
    ({"memory": 16 * GIB}, {"resources": {"memory": "8Gi"}},
     "--backend-config key 'resources.memory' is 8Gi, but the resource memory=16G says otherwise and wins: the "
     "container gets memory 16Gi; to keep 8Gi, run with -R memory=none"),
    ({"cpus": 0.5}, {"resources": {"requests": {"cpu": "500m"}, "limits": {"cpu": 2}}},
     "--backend-config key 'resources.limits.cpu' is 2, but the resource cpus=0.5 says otherwise and wins: the "
     "container gets cpu 500m; to keep 2, run with -R cpus=none"),
    ({"gpus": 2}, {"resources": {"nvidia.com/gpu": 1}},
     "--backend-config key 'resources.nvidia.com/gpu' is 1, but the resource gpus=2 says otherwise and wins: the "
     "container gets nvidia.com/gpu 2; to keep 1, run with -R gpus=none"),
    ({"gpus": 0}, {"resources": {"nvidia.com/gpu": 1}},
     "--backend-config key 'resources.nvidia.com/gpu' is 1, but the resource gpus=0 says otherwise and wins: the "
     "container gets no nvidia.com/gpu; to keep 1, run with -R gpus=none"),
    ({"time": 7200.0}, {"active-deadline-seconds": 3600},
     "--backend-config key 'active-deadline-seconds' is 3600, but the resource time=2h says otherwise and wins: "
     "the Job's activeDeadlineSeconds is 7200; to keep 3600, run with -R time=none"),
    ({"gpu_type": "NVIDIA-L4"}, {"node-selector": {"nvidia.com/gpu.product": "Tesla-T4"}},
     "--backend-config key 'node-selector' (nvidia.com/gpu.product) is Tesla-T4, but the resource "
     "gpu-type=NVIDIA-L4 says otherwise and wins: the pod's nodeSelector has nvidia.com/gpu.product: NVIDIA-L4; "
     "to keep Tesla-T4, run with -R gpu-type=none"),
])
def test_a_config_value_the_resource_overrides_is_named(resources, config, warning, tmp_path):
    assert _conflicts(resources, config, tmp_path) == [warning]


@pytest.mark.parametrize("resources, config", [
    ({"memory": 16 * GIB}, {"resources": {"memory": "16Gi"}}),
    ({"memory": 16 * GIB}, {"resources": {"memory": "16384Mi"}}),
    ({"cpus": 0.5}, {"resources": {"cpu": "500m"}}),
    ({"cpus": 2.0}, {"resources": {"cpu": "2000m"}}),
    ({"gpus": 1}, {"resources": {"nvidia.com/gpu": 1}}),
    ({"gpus": 0}, {"resources": {"nvidia.com/gpu": 0}}),
    ({"time": 3599.5}, {"active-deadline-seconds": 3600}),
    ({"gpu_type": "Tesla-T4"}, {"node-selector": {"nvidia.com/gpu.product": "Tesla-T4"}}),
    ({"gpu_type": "Tesla-T4"}, {"node-selector": {"pool": "a"}}),  # another label: nothing to override
    ({"cpus": 4.0, "memory": GIB, "gpus": 1, "gpu_type": "X", "shm": GIB, "time": 60.0}, {}),
])
def test_the_same_value_or_none_is_not_warned(resources, config, tmp_path):
    assert _conflicts(resources, config, tmp_path) == []


def test_template_values_the_resource_overrides_are_named(tmp_path):
    (tmp_path / "job.yaml").write_text(TEMPLATE.replace("  backoffLimit: 4\n", "  backoffLimit: 4\n"
                                                        "  activeDeadlineSeconds: 60\n"))
    warnings = _conflicts({"memory": 16 * GIB, "time": 120.0, "shm": GIB}, {"kube-job-template-path": "job.yaml"},
                          tmp_path)
    assert warnings == [
        "the Job template job.yaml: spec.template.spec.containers[0].resources.limits.memory is 8Gi, but the "
        "resource memory=16G says otherwise and wins: the container gets memory 16Gi; to keep 8Gi, run with "
        "-R memory=none",
        "the Job template job.yaml: spec.activeDeadlineSeconds is 60, but the resource time=2m says otherwise and "
        "wins: the Job's activeDeadlineSeconds is 120; to keep 60, run with -R time=none",
    ]


def test_warnings_come_before_the_manifest_in_the_dry_run(mlexec, k8s_env, k8s_project, fake_cluster, store):
    proj = k8s_project("repository-uri: registry.example.test/team/demo\nnamespace: ml\n"
                       "resources: {cpu: 2, memory: 8Gi}\n")
    proc = mlexec("run", proj, "-b", "kubernetes", "-c", "backend_config.yaml", "--dry-run", "-R", "memory=16G",
                  "-R", "cpus=2", cwd=proj, env=k8s_env, check=0)
    assert_no_traceback(proc)
    [warning] = [line for line in proc.stderr.splitlines() if line.startswith("warning: --backend-config")]
    assert warning == ("warning: --backend-config key 'resources.memory' is 8Gi, but the resource memory=16G says "
                       "otherwise and wins: the container gets memory 16Gi; to keep 8Gi, run with -R memory=none")
    manifest = yaml.safe_load(proc.stdout[proc.stdout.index("# Job manifest"):])
    assert _main(manifest)["resources"]["limits"] == {"cpu": "2", "memory": "16Gi"}
    # keeping the config's value as the warning says: no warning, the config's memory
    proc = mlexec("run", proj, "-b", "kubernetes", "-c", "backend_config.yaml", "--dry-run", "-R", "memory=none",
                  cwd=proj, env=k8s_env, check=0)
    assert "warning: --backend-config" not in proc.stderr
    manifest = yaml.safe_load(proc.stdout[proc.stdout.index("# Job manifest"):])
    assert _main(manifest)["resources"]["limits"] == {"cpu": "2", "memory": "8Gi"}
    assert not fake_cluster.requests and store.runs() == []


# -- what is refused, and what is not ---------------------------------------------------------


def test_kubernetes_honours_gpu_type_where_the_local_backend_refuses_it(mlexec, k8s_env, project, store):
    proj = project('name: Demo\nentry_points: {main: {command: "python train.py"}}\n')
    (proj / "k8s.yaml").write_text("repository-uri: registry.example.test/team/demo\nnamespace: ml\n")
    local = mlexec("run", proj, "-b", "local", "-R", "gpu-type=A100", cwd=proj, env=k8s_env)
    assert local.returncode == 2, local.stderr
    assert_no_traceback(local)
    assert "-b local cannot honour the resource -R gpu-type=A100" in local.stderr
    honour = [line for line in local.stderr.splitlines() if "backends that honour gpu-type:" in line]
    assert honour and "-b kubernetes" in honour[0]
    k8s = mlexec("run", proj, "-b", "kubernetes", "-c", "k8s.yaml", "--dry-run", "-R", "gpu-type=A100",
                 *[arg for key, value in EVERY_KEY.items() if key != "gpu-type" for arg in ("-R", f"{key}={value}")],
                 cwd=proj, env=k8s_env, check=0)
    manifest = yaml.safe_load(k8s.stdout[k8s.stdout.index("# Job manifest"):])
    assert manifest["spec"]["template"]["spec"]["nodeSelector"] == {DEFAULT_GPU_TYPE_LABEL: "A100"}
    assert store.runs() == []


def test_every_key_is_declared():
    """Every resource of issue 20, and nodes and processes-per-node (the Indexed Job of issue 22)."""
    from mlexec_core.resources import KEYS

    [record] = kubernetes_plugin.mlexec_backends()
    assert record.resources == frozenset(KEYS)


def test_a_gpu_type_no_node_label_can_hold_is_one_error_before_any_run(mlexec, k8s_env, k8s_project,
                                                                       fake_cluster, store):
    proj = k8s_project()
    proc = mlexec("run", proj, "-b", "kubernetes", "-c", "backend_config.yaml", "-R", "gpu-type=a100+nvlink",
                  cwd=proj, env=k8s_env)
    assert proc.returncode == 2, proc.stderr
    assert_no_traceback(proc)
    assert "the resource gpu-type=a100+nvlink cannot be the value of the node label nvidia.com/gpu.product" \
        in proc.stderr
    assert "kubectl get nodes -L nvidia.com/gpu.product" in proc.stderr
    assert store.runs() == [] and not fake_cluster.created_jobs()


@pytest.mark.parametrize("config, message", [
    ({"gpu-type-label": "not a label"}, "'gpu-type-label': 'not a label' is not a node label key"),
    ({"gpu-type-label": ""}, "'gpu-type-label' must be a non-empty string"),
    ({"gpu-type-label": ["a"]}, "'gpu-type-label' must be a non-empty string"),
])
def test_gpu_type_label_errors_name_the_key(config, message, tmp_path):
    with pytest.raises(UsageError) as info:
        parse_config({"repository-uri": "r/x", **config}, tmp_path)
    assert message in str(info.value)


def test_template_volume_mounts_must_be_a_list(tmp_path):
    (tmp_path / "t.yaml").write_text("apiVersion: batch/v1\nkind: Job\n"
                                     "spec: {template: {spec: {containers: [{volumeMounts: {a: 1}}]}}}\n")
    with pytest.raises(UsageError) as info:
        parse_config({"repository-uri": "r/x", "kube-job-template-path": "t.yaml"}, tmp_path)
    assert "spec.template.spec.containers[0].volumeMounts must be a list" in str(info.value)


# -- the time limit, through the API double ----------------------------------------------------


def _runs_forever(c, ns, job):
    pod = c.start_pod(ns, job)
    c.log(ns, pod, "training forever\n")


def test_the_time_limit_stops_the_job_and_fails_the_run(mlexec, k8s_env, k8s_project, fake_cluster, store):
    """The double enforces no deadline: mlexec's own timer, from the pod's Running, stops the Job."""
    fake_cluster.scenario = _runs_forever
    proj = k8s_project("repository-uri: registry.example.test/team/demo\nnamespace: ml\n"
                       "active-deadline-seconds: 3600\n")
    proc = mlexec("run", proj, "-b", "kubernetes", "-c", "backend_config.yaml", "-R", "time=2s", cwd=proj,
                  env=k8s_env)
    assert proc.returncode == 1, proc.stderr
    assert_no_traceback(proc)
    assert "training forever\n" in proc.stdout
    # the config's deadline is overridden, said before the Job exists
    err = proc.stderr
    assert err.index("--backend-config key 'active-deadline-seconds' is 3600") < err.index("Created Job")
    [job] = fake_cluster.created_jobs()
    assert job["spec"]["activeDeadlineSeconds"] == 2
    # stopped as Ctrl-C stops it: deleted in the foreground, its pods with it
    [(path, policy)] = fake_cluster.deleted_jobs()
    assert path.endswith("/" + job["metadata"]["name"]) and policy == "Foreground"
    assert not fake_cluster.jobs and not fake_cluster.pods
    run = store.only_run()
    assert run.info.status == "FAILED"
    assert err.strip().splitlines()[-1] == f"=== Run {run.info.run_id} failed: time limit 2s reached ==="
    assert run.data.tags["mlexec.kubernetes.failure-reason"] == time_limit_reason(2) == "time limit 2s reached"
    assert run.data.tags["mlexec.kubernetes.time-limit"] == "2"


def test_deadline_exceeded_ends_with_the_same_words(mlexec, k8s_env, k8s_project, fake_cluster, store):
    """The cluster kept the limit (activeDeadlineSeconds): its DeadlineExceeded says what the timer says."""
    def scenario(c, ns, job):
        pod = c.start_pod(ns, job)
        c.log(ns, pod, "starting\n")
        c.set_container(ns, pod, {"terminated": {"exitCode": 143, "reason": "Error"}})
        c.job_condition(ns, job, "Failed", "DeadlineExceeded", "Job was active longer than specified deadline")

    fake_cluster.scenario = scenario
    proj = k8s_project()
    proc = mlexec("run", proj, "-b", "kubernetes", "-c", "backend_config.yaml", "-R", "time=1h30m", cwd=proj,
                  env=k8s_env)
    assert proc.returncode == 1, proc.stderr
    assert_no_traceback(proc)
    run = store.only_run()
    last = proc.stderr.strip().splitlines()[-1]
    assert last == f"=== Run {run.info.run_id} failed: time limit 1h30m reached ==="
    assert run.info.status == "FAILED"
    assert run.data.tags["mlexec.kubernetes.failure-reason"] == time_limit_reason(5400)
    assert fake_cluster.deleted_jobs() == []  # the cluster ended it; nothing to stop


def test_deadline_exceeded_without_a_time_resource_names_the_config(mlexec, k8s_env, k8s_project, fake_cluster,
                                                                    store):
    from mlexec_k8s_double import failing

    fake_cluster.scenario, expected = failing("deadline")
    proj = k8s_project("repository-uri: registry.example.test/team/demo\nnamespace: ml\n"
                       "active-deadline-seconds: 600\n")
    proc = mlexec("run", proj, "-b", "kubernetes", "-c", "backend_config.yaml", cwd=proj, env=k8s_env)
    assert proc.returncode == 1, proc.stderr
    assert "ran longer than its activeDeadlineSeconds (600 s)" in proc.stderr and expected in proc.stderr


def _detach(mlexec, k8s_env, proj, store, *args):
    proc = mlexec("run", proj, "-b", "kubernetes", "-c", "backend_config.yaml", "--detach", *args, cwd=proj,
                  env=k8s_env)
    assert proc.returncode == 0, proc.stderr
    assert_no_traceback(proc)
    run = store.only_run()
    assert run.info.status == "RUNNING"
    return run.info.run_id


def test_an_attached_mlexec_keeps_the_time_limit_from_the_containers_start(mlexec, k8s_env, k8s_project,
                                                                           fake_cluster, store):
    def scenario(c, ns, job):
        started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        pod = c.start_pod(ns, job, {"running": {"startedAt": started}})
        c.log(ns, pod, "training forever\n")

    fake_cluster.scenario = scenario
    proj = k8s_project()
    run_id = _detach(mlexec, k8s_env, proj, store, "-R", "time=3s")
    assert store.client.get_run(run_id).data.tags["mlexec.kubernetes.time-limit"] == "3"
    assert fake_cluster.wait_for(lambda c: bool(c.pods), 30)
    attach = mlexec("attach", run_id, env=k8s_env)
    assert attach.returncode == 1, attach.stderr
    assert_no_traceback(attach)
    assert "time limit 3s reached" in attach.stderr
    [(path, policy)] = fake_cluster.deleted_jobs()
    assert policy == "Foreground" and not fake_cluster.jobs and not fake_cluster.pods
    run = store.client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["mlexec.failureReason"] == "time limit 3s reached"


def test_logs_follow_does_not_stop_a_job_at_its_time_limit(mlexec, k8s_env, cli_env, k8s_project, fake_cluster,
                                                           store):
    """`mlexec logs -f` only looks: the limit is kept by the cluster and by whoever supervises the run."""
    def scenario(c, ns, job):
        pod = c.start_pod(ns, job, {"running": {"startedAt": "2026-01-01T00:00:01Z"}})  # long past its limit
        c.log(ns, pod, "training forever\n")

    fake_cluster.scenario = scenario
    proj = k8s_project()
    run_id = _detach(mlexec, k8s_env, proj, store, "-R", "time=1s")
    assert fake_cluster.wait_for(lambda c: bool(c.pods), 30)
    logs = subprocess.Popen([*MLEXEC, "logs", "-f", run_id], env={**cli_env, **k8s_env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        # its pod watch has seen the container running once its log is asked for
        assert fake_cluster.wait_for(lambda c: c.log_requests(), 60)
        [(namespace, name)] = list(fake_cluster.jobs)
        [(_, pod)] = list(fake_cluster.pods)
        fake_cluster.finish_pod(namespace, pod, 0)
        fake_cluster.job_condition(namespace, name, "Complete")
        out, err = logs.communicate(timeout=120)
    finally:
        if logs.poll() is None:
            logs.kill()
    assert "Traceback" not in err and "time limit" not in err
    assert "training forever" in out
    assert fake_cluster.deleted_jobs() == []


def test_an_attached_job_reads_deadline_exceeded_as_its_time_limit(mlexec, k8s_env, k8s_project, fake_cluster,
                                                                   store, in_process):
    """What `mlexec attach`, `runs repair` and `cancel` pick up: the limit comes from the run's tag."""
    from mlexec_core.plugin.interfaces import RunRecord, RunStatus

    def scenario(c, ns, job):
        c.start_pod(ns, job)
        c.job_condition(ns, job, "Failed", "DeadlineExceeded", "Job was active longer than specified deadline")

    fake_cluster.scenario = scenario
    proj = k8s_project()
    run_id = _detach(mlexec, k8s_env, proj, store, "-R", "time=45m")
    assert fake_cluster.wait_for(
        lambda cluster: any(cond.get("reason") == "DeadlineExceeded" for j in cluster.jobs.values()
                            for cond in (j.get("status") or {}).get("conditions") or ()), 30)
    tags = store.client.get_run(run_id).data.tags
    job = in_process().backend("kubernetes").attach(RunRecord(run_id=run_id), tags)
    assert job.time_limit == 2700
    assert job.get_status() is RunStatus.FAILED
    assert job.failure_reason == "time limit 45m reached"
    # without the tag (a run from before it was written), the cluster's own words
    del tags["mlexec.kubernetes.time-limit"]
    job = in_process().backend("kubernetes").attach(RunRecord(run_id=run_id), tags)
    assert job.get_status() is RunStatus.FAILED and "DeadlineExceeded" in job.failure_reason


def test_readme_and_backends_doc_name_the_gpu_type_label():
    root = Path(__file__).resolve().parents[3]
    for doc in (root / "plugins" / "mlexec-kubernetes" / "README.md", root / "docs" / "backends.md"):
        text = doc.read_text()
        assert "gpu-type-label" in text and DEFAULT_GPU_TYPE_LABEL in text, doc
