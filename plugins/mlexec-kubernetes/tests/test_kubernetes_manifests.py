"""The backend config, and every manifest the plugin can generate, validated offline and
strictly against the Kubernetes OpenAPI schemas (``kubernetes-validate``) of several versions.
No cluster is involved here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from mlexec_core.errors import UsageError
from mlexec_core.pipeline.options import RunOptions
from mlexec_core.pipeline.resolve import resolve_plan
from mlexec_core.plugin.manager import build_plugins

from mlexec_kubernetes import plugin as kubernetes_plugin
from mlexec_kubernetes.config import KNOWN_KEYS, parse_config
from mlexec_kubernetes.manifest import build_job, job_name

#: Oldest and newest schema versions checked (kubernetes-validate ships 1.25 ... 1.37).
VERSIONS = ["1.27", "1.30", "1.33"]
IMAGE = "127.0.0.1:5000/team/demo:0123456789ab@sha256:" + "a" * 64
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

FULL = {
    "kube-context": "test",
    "repository-uri": "127.0.0.1:5000/team/demo",
    "namespace": "ml",
    "service-account": "trainer",
    "image-pull-secrets": ["regcred", "other-cred"],
    "env": {"MLFLOW_TRACKING_URI": "http://mlflow.ml.svc:5000", "SEED": 42, "DEBUG": True},
    "resources": {"cpu": "500m", "memory": "2Gi", "nvidia.com/gpu": 1},
    "node-selector": {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4", "pool": "gpu"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                    {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoExecute",
                     "tolerationSeconds": 60}],
    "backoff-limit": 2,
    "active-deadline-seconds": 3600,
    "ttl-seconds-after-finished": 600,
}

TEMPLATE = """\
apiVersion: batch/v1
kind: Job
metadata:
  name: ignored
  namespace: from-template
  labels: {team: vision}
  annotations: {owner: alice}
spec:
  backoffLimit: 4
  template:
    metadata:
      annotations: {sidecar.istio.io/inject: "false"}
    spec:
      restartPolicy: OnFailure
      volumes:
      - name: data
        persistentVolumeClaim: {claimName: datasets}
      initContainers:
      - name: fetch
        image: busybox:1.36
        command: [sh, -c, "echo fetching"]
      containers:
      - name: trainer
        image: placeholder
        args: ["--ignored"]
        env:
        - {name: FROM_TEMPLATE, value: "1"}
        - {name: SEED, value: "0"}
        - name: TOKEN
          valueFrom: {secretKeyRef: {name: tokens, key: api}}
        resources:
          limits: {memory: 8Gi}
        volumeMounts:
        - {name: data, mountPath: /data}
      - name: sidecar
        image: busybox:1.36
        command: [sleep, "3600"]
"""


@pytest.fixture
def plan_for(project):
    """A resolved plan for a small project, with the backend config ``config``."""
    def make(config, name="My Project: ResNet-50 (v2)", where="proj"):
        root = project(f"""\
            name: "{name}"
            entry_points:
              main:
                parameters:
                  lr: {{type: float, default: 0.1}}
                  note: {{type: string, default: "it's a b"}}
                command: "python -c 'import sys; print(sys.argv)' {{lr}} {{note}}"
            """, where=where)
        plugins = build_plugins(entry_points=False, extra=[("kubernetes", kubernetes_plugin)])
        return resolve_plan(plugins, RunOptions(uri=str(root), backend="kubernetes", backend_config=config,
                                                parameters={"lr": "0.5", "extra": "x y"}), cwd=root)

    return make


def _kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError:
        from mlexec_k8s_double import ci_unavailable

        ci_unavailable("kubernetes-validate", "kubernetes-validate is not installed",
                       "bash scripts/setup.sh (it installs the test extra)")
    return kubernetes_validate


def manifests(plan_for, tmp_path) -> dict[str, dict]:
    """Every kind of manifest the plugin makes: the default Job, minimal and full configs, a template."""
    template = tmp_path / "job.yaml"
    template.write_text(TEMPLATE)
    out = {}
    env = {"MLFLOW_RUN_ID": "0" * 32, "MLFLOW_EXPERIMENT_ID": "1", "MLFLOW_TRACKING_URI": "http://mlflow:5000"}
    for label, config in {
        "default": {"repository-uri": "127.0.0.1:5000/demo"},
        "full": FULL,
        "template": {"repository-uri": "127.0.0.1:5000/demo", "kube-job-template-path": str(template)},
        "template+full": {**FULL, "kube-job-template-path": str(template)},
        "resources-split": {"repository-uri": "r.example/x", "resources": {"requests": {"cpu": 1},
                                                                            "limits": {"cpu": 2, "memory": "1G"}}},
    }.items():
        plan = plan_for(config, where=label)
        out[label] = build_job(plan, plan.backend_config, name=job_name(plan.project.display_name, "f" * 32),
                               namespace=plan.backend_config.namespace or (
                                   (plan.backend_config.job_template or {}).get("metadata", {}).get("namespace")
                                   or "default"), image=IMAGE,
                               env={**env, **plan.backend_config.env}, run_id="f" * 32)
    return out


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_validates_strictly(version, plan_for, tmp_path):
    kubernetes_validate = _kubernetes_validate()
    for label, manifest in manifests(plan_for, tmp_path).items():
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{label} manifest is invalid for Kubernetes {version}: {exc}")
        # what the schemas do not check: names and label values
        assert DNS_LABEL.match(manifest["metadata"]["name"]) and len(manifest["metadata"]["name"]) <= 63
        for labels in (manifest["metadata"]["labels"], manifest["spec"]["template"]["metadata"]["labels"]):
            for value in labels.values():
                assert len(value) <= 63 and re.match(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$", value)
        for container in manifest["spec"]["template"]["spec"]["containers"]:
            assert DNS_LABEL.match(container["name"])
        assert manifest["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")


def test_strict_validation_catches_a_misspelt_field(plan_for, tmp_path):
    kubernetes_validate = _kubernetes_validate()
    manifest = manifests(plan_for, tmp_path)["default"]
    manifest["spec"]["template"]["spec"]["containers"][0]["imagee"] = "x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, VERSIONS[-1], strict=True)


def test_command_is_the_local_shell_command(plan_for, tmp_path):
    manifest = manifests(plan_for, tmp_path)["default"]
    command = manifest["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["/bin/sh", "-c"]
    # run it as the container would: the quotes are removed by the shell, as locally
    out = subprocess.run([*command[:2], command[2].replace("python", sys.executable, 1)],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['-c', '0.5', \"it's a b\", '--extra', 'x y']"


def test_template_is_kept_and_overridden(plan_for, tmp_path):
    ms = manifests(plan_for, tmp_path)
    job = ms["template"]
    pod = job["spec"]["template"]["spec"]
    assert job["metadata"]["namespace"] == "from-template" and job["metadata"]["name"] != "ignored"
    assert job["metadata"]["labels"]["team"] == "vision" and job["metadata"]["annotations"] == {"owner": "alice"}
    assert job["spec"]["backoffLimit"] == 4 and pod["restartPolicy"] == "OnFailure"
    assert pod["volumes"] and pod["initContainers"][0]["name"] == "fetch"
    main, sidecar = pod["containers"]
    # the template's "trainer" becomes the project's name, as MLflow names the first container
    assert main["name"] == "my-project-resnet-50-v2" and main["image"] == IMAGE and "args" not in main
    assert main["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    env = {e["name"]: e for e in main["env"]}
    assert env["FROM_TEMPLATE"]["value"] == "1" and "valueFrom" in env["TOKEN"]
    assert env["MLFLOW_RUN_ID"]["value"] == "0" * 32
    assert sidecar["image"] == "busybox:1.36"
    full = ms["template+full"]
    pod = full["spec"]["template"]["spec"]
    assert full["metadata"]["namespace"] == "ml" and full["spec"]["backoffLimit"] == 2
    main = pod["containers"][0]
    assert main["resources"]["limits"] == {"memory": "2Gi", "cpu": "500m", "nvidia.com/gpu": "1"}
    assert {e["name"]: e.get("value") for e in main["env"]}["SEED"] == "42"
    assert pod["serviceAccountName"] == "trainer"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "other-cred"}]
    assert len(pod["tolerations"]) == 2 and pod["nodeSelector"]["pool"] == "gpu"
    assert full["spec"]["activeDeadlineSeconds"] == 3600 and full["spec"]["ttlSecondsAfterFinished"] == 600


def test_job_names_are_dns_labels():
    for project in ("My Project", "x" * 200, "ÄÖÜ", "---", "a.b_c", "Demo"):
        name = job_name(project, "0123456789abcdef0123456789abcdef")
        assert DNS_LABEL.match(name) and len(name) <= 63, name
        assert name.endswith("-0123456789ab")


@pytest.mark.parametrize("config, message", [
    ({}, "'repository-uri' is required"),
    ({"repository-uri": "r/x", "kube-contxt": "a"}, "unknown --backend-config key 'kube-contxt'"),
    ({"repository-uri": 5}, "'repository-uri' must be a non-empty string"),
    ({"repository-uri": "r/x:tag"}, "without tag or digest"),
    ({"repository-uri": "r/x", "namespace": "Bad_NS"}, "'namespace': 'Bad_NS' is not a valid namespace"),
    ({"repository-uri": "r/x", "backoff-limit": "3"}, "'backoff-limit' must be an integer"),
    ({"repository-uri": "r/x", "backoff-limit": True}, "'backoff-limit' must be an integer"),
    ({"repository-uri": "r/x", "active-deadline-seconds": 0}, "'active-deadline-seconds' must be at least 1"),
    ({"repository-uri": "r/x", "env": ["A=1"]}, "'env' must be a mapping"),
    ({"repository-uri": "r/x", "env": {"A": {"b": 1}}}, "'env': A must be a string or a number"),
    ({"repository-uri": "r/x", "env": {"1 A": "x"}}, "is not a valid environment variable name"),
    ({"repository-uri": "r/x", "resources": {"memory": "lots"}}, "memory='lots' is not a Kubernetes quantity"),
    ({"repository-uri": "r/x", "resources": "2 cpus"}, "'resources' must be a mapping"),
    ({"repository-uri": "r/x", "node-selector": {"pool": ["a"]}}, "'node-selector': pool must be a string"),
    ({"repository-uri": "r/x", "tolerations": {"key": "a"}}, "'tolerations' must be a list"),
    ({"repository-uri": "r/x", "tolerations": [{"key": "a", "operater": "Exists"}]}, "unknown key 'operater'"),
    ({"repository-uri": "r/x", "tolerations": [{"effect": "NoSchedul"}]}, "effect must be one of"),
    ({"repository-uri": "r/x", "image-pull-secrets": [3]}, "is not a Secret name"),
    ({"repository-uri": "r/x", "kube-job-template-path": "missing.yaml"}, "no such file"),
])
def test_config_errors_name_the_key(config, message, tmp_path):
    with pytest.raises(UsageError) as info:
        parse_config(config, tmp_path)
    assert message in str(info.value)


@pytest.mark.parametrize("text, message", [
    ("apiVersion: v1\nkind: Pod\n", "is a Pod (v1), not a Job"),
    ("apiVersion: batch/v1\nkind: CronJob\n", "is a CronJob"),
    ("- a\n- b\n", "expected a Kubernetes Job manifest"),
    ("kind: Job\napiVersion: batch/v1\n---\nkind: Job\napiVersion: batch/v1\n", "found 2 YAML documents"),
    ("kind: [\n", "t.yaml:2:1: invalid YAML"),
    ("kind: Job\napiVersion: batch/v1\nspec: {template: {spec: {restartPolicy: Always}}}\n", "Never or OnFailure"),
])
def test_template_must_be_a_job(text, message, tmp_path):
    (tmp_path / "t.yaml").write_text(text)
    with pytest.raises(UsageError) as info:
        parse_config({"repository-uri": "r/x", "kube-job-template-path": "t.yaml"}, tmp_path)
    assert message in str(info.value) and "t.yaml" in str(info.value)


def test_relative_template_not_beside_the_config_is_found_from_the_cwd(tmp_path, monkeypatch):
    """As MLflow reads kube-job-template-path (from the current directory), saying which file was used."""
    import warnings

    from mlexec_core.yamlfile import FileWarning

    configs = tmp_path / "configs"
    configs.mkdir()
    (tmp_path / "job.yaml").write_text(TEMPLATE)
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = parse_config({"repository-uri": "r/x", "kube-job-template-path": "job.yaml"}, configs)
    assert config.job_template_path == tmp_path / "job.yaml"
    assert config.job_template["metadata"]["namespace"] == "from-template"
    (message,) = [str(w.message) for w in caught if issubclass(w.category, FileWarning)]
    assert message == (f"--backend-config kube-job-template-path 'job.yaml' is not beside the config file (in "
                       f"{configs}): using {tmp_path / 'job.yaml'}, found from the current directory as MLflow "
                       "finds it")
    # beside the config file wins, silently
    (configs / "job.yaml").write_text(TEMPLATE.replace("from-template", "beside"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = parse_config({"repository-uri": "r/x", "kube-job-template-path": "job.yaml"}, configs)
    assert config.job_template_path == configs / "job.yaml" and not caught


@pytest.mark.parametrize("text, message", [
    ("apiVersion: batch/v1\nkind: Job\nspec: {template: {spec: {containers: [5]}}}\n",
     "spec.template.spec.containers[0] must be a mapping"),
    ("apiVersion: batch/v1\nkind: Job\nspec: {template: {spec: {containers: [{env: {A: 1}}]}}}\n",
     "spec.template.spec.containers[0].env must be a list"),
    ("apiVersion: batch/v1\nkind: Job\nspec: {template: {spec: {tolerations: {a: 1}}}}\n",
     "spec.template.spec.tolerations must be a list"),
    ("apiVersion: batch/v1\nkind: Job\nmetadata: [a]\n", "metadata must be a mapping"),
    ("apiVersion: batch/v1\nkind: Job\nspec: {backoffLimit: many}\n", "spec.backoffLimit must be an integer"),
    ("apiVersion: batch/v1\nkind: Job\nmetadata: {name: a, name: b}\n", "duplicate key 'name'"),
    ("apiVersion: batch/v1\nkind: !!bool maybe\n", "maybe is not a valid !!bool value"),
])
def test_template_with_wrong_types_is_one_error(text, message, tmp_path):
    (tmp_path / "t.yaml").write_text(text)
    with pytest.raises(UsageError) as info:
        parse_config({"repository-uri": "r/x", "kube-job-template-path": "t.yaml"}, tmp_path)
    assert message in str(info.value) and "t.yaml" in str(info.value)


@pytest.mark.parametrize("toleration, message", [
    ({"operator": ["Exists"]}, "operator must be Exists or Equal, got ['Exists']"),
    ({"effect": {"a": 1}}, "effect must be one of"),
    ({"key": ["a"]}, "key must be a string or a number"),
    ({"tolerationSeconds": "5"}, "tolerationSeconds must be an integer"),
    ({1: "x"}, "unknown key '1'"),
])
def test_tolerations_with_wrong_types_are_one_error(toleration, message, tmp_path):
    with pytest.raises(UsageError) as info:
        parse_config({"repository-uri": "r/x", "tolerations": [toleration]}, tmp_path)
    assert message in str(info.value)


def test_every_documented_key_is_known():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for key in KNOWN_KEYS:
        assert f"`{key}`" in readme, key


@pytest.mark.parametrize("config, message", [
    # the rules mlexec_core.configmodel gives both backends (test_slurm_config.py has the same cases)
    ({"backoff-limit": "4"}, "--backend-config key 'backoff-limit' must be an integer, got '4'"),
    ({"tolerations": [{"value": True}]},
     "--backend-config key 'tolerations[0]'.value must be a string or a number, got True"),
    ({"env": {"A": [1]}}, "--backend-config key 'env': A must be a string or a number, got [1]"),
    ({"namspace": "ml"}, "unknown --backend-config key 'namspace' for the kubernetes backend"),
])
def test_config_rules_are_the_same_as_slurms(config, message, tmp_path):
    with pytest.raises(UsageError) as info:
        parse_config({"repository-uri": "r/x", **config}, tmp_path)
    assert info.value.message == message


def test_config_values_taken_as_slurm_takes_them(tmp_path):
    config = parse_config({"repository-uri": "r/x", "env": {"DEBUG": True, "SEED": 4}, "backoff-limit": None,
                           "tolerations": [{"key": 5, "operator": "Equal", "value": "true"}]}, tmp_path)
    assert config.env == {"DEBUG": "true", "SEED": "4"} and config.backoff_limit is None
    assert config.tolerations == ({"key": "5", "operator": "Equal", "value": "true"},)


def test_a_config_file_mistake_names_the_file(tmp_path):
    (tmp_path / "MLproject").write_text("entry_points:\n  main:\n    command: 'echo hi'\n")
    (tmp_path / "k8s.yaml").write_text("repository-uri: r/x\nbackoff-limit: '4'\n")
    plugins = build_plugins(entry_points=False, extra=[("kubernetes", kubernetes_plugin)])
    with pytest.raises(UsageError) as info:
        resolve_plan(plugins, RunOptions(uri=str(tmp_path), backend="kubernetes", backend_config="k8s.yaml"),
                     cwd=tmp_path)
    assert info.value.context == "k8s.yaml" and "'backoff-limit' must be an integer" in info.value.message
