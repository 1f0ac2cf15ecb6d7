"""The Job manifest: from the plan, the config and the image, as plain data (no I/O).

The command goes in as ``["/bin/sh", "-c", plan.command]``: ``plan.command``
is the shell command exactly as it runs locally (parameter values already
quoted for a shell), so the container's shell removes the quotes as the local
shell would.  MLflow instead splits the command and re-quotes every word into
an exec-form ``command``, where no shell ever removes the quotes, so values
arrive with literal quote characters.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Mapping

from mlexec_core.plugin.interfaces import RunPlan

from mlexec_kubernetes.config import KubernetesConfig
from mlexec_kubernetes.distributed import launcher, master_addr, service, shape, single
from mlexec_kubernetes.resources import apply as apply_resources

#: Labels on the Job and its pods.
RUN_LABEL = "mlexec.run-id"
PROJECT_LABEL = "mlexec.project"
MANAGED_BY = ("app.kubernetes.io/managed-by", "mlexec")

#: The shell that runs the command in the container (every image with a shell has it).
SHELL = ("/bin/sh", "-c")

#: Job names become the pods' ``job-name`` label value: at most 63 characters.
_MAX_JOB_NAME = 63


def dns_label(text: str, max_length: int = 63, fallback: str = "mlexec") -> str:
    """``text`` as an RFC 1123 label: lower-case letters, digits and '-', at most ``max_length``."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    slug = slug[:max_length].rstrip("-")
    return slug or fallback


def label_value(text: str) -> str:
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63].strip("-_.")
    return value or "unnamed"


def job_name(project_name: str, run_id: str, nodes: int = 1) -> str:
    """A DNS-valid Job name derived from the project, unique per run.

    For ``nodes`` above 1 it leaves room for the pods' host names (``<job>-<index>``, at most 63
    characters) and starts with a letter, as the headless Service of the same name must."""
    suffix = dns_label(run_id, 12, "run")[:12]
    room = _MAX_JOB_NAME - len(suffix) - 1 - (len(f"-{nodes - 1}") if nodes > 1 else 0)
    project = dns_label(project_name, room)
    if nodes > 1 and not project[0].isalpha():
        project = dns_label("r-" + project, room)
    return f"{project}-{suffix}"




def _merge_env(existing: list[Any], extra: list[dict[str, str]]) -> list[Any]:
    names = {e["name"] for e in extra}
    return [e for e in existing if not (isinstance(e, dict) and e.get("name") in names)] + extra


def build_job(plan: RunPlan, config: KubernetesConfig, *, name: str, namespace: str, image: str,
              env: Mapping[str, str], run_id: str) -> dict[str, Any]:
    """The Job to create: the template (or a default Job) with this run's name, image, command and settings.

    ``env`` is the container's complete set of variables from mlexec (the run's
    ``MLFLOW_*`` and the config's ``env``); they replace same-named ones of the template.

    What the run needs (name, namespace, image, command, variables) always wins
    over the template; settings from the config win over the template's, and the
    run's resources (``plan.resources``) over both
    (:mod:`mlexec_kubernetes.resources`); the rest of the template (volumes, init
    containers, annotations ...) is kept.
    """
    job = copy.deepcopy(dict(config.job_template)) if config.job_template else {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {}, "spec": {}}
    labels = {RUN_LABEL: label_value(run_id), PROJECT_LABEL: label_value(plan.project.display_name),
              MANAGED_BY[0]: MANAGED_BY[1]}

    metadata = job.setdefault("metadata", {}) or {}
    job["metadata"] = metadata
    metadata.pop("generateName", None)
    metadata["name"] = name
    metadata["namespace"] = namespace
    metadata["labels"] = {**(metadata.get("labels") or {}), **labels}

    spec = job.setdefault("spec", {}) or {}
    job["spec"] = spec
    spec.setdefault("backoffLimit", 0)  # a failed training run is reported, not silently retried
    if config.backoff_limit is not None:
        spec["backoffLimit"] = config.backoff_limit
    if config.active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = config.active_deadline_seconds
    if config.ttl_seconds_after_finished is not None:
        spec["ttlSecondsAfterFinished"] = config.ttl_seconds_after_finished

    template = spec.setdefault("template", {}) or {}
    spec["template"] = template
    pod_meta = template.setdefault("metadata", {}) or {}
    template["metadata"] = pod_meta
    pod_meta["labels"] = {**(pod_meta.get("labels") or {}), **labels}
    pod = template.setdefault("spec", {}) or {}
    template["spec"] = pod
    pod.setdefault("restartPolicy", "Never")
    if config.service_account:
        pod["serviceAccountName"] = config.service_account
    if config.image_pull_secrets:
        known = [s for s in pod.get("imagePullSecrets") or [] if s.get("name") not in config.image_pull_secrets]
        pod["imagePullSecrets"] = known + [{"name": s} for s in config.image_pull_secrets]
    if config.node_selector:
        pod["nodeSelector"] = {**(pod.get("nodeSelector") or {}), **config.node_selector}
    if config.tolerations:
        pod["tolerations"] = list(pod.get("tolerations") or []) + [dict(t) for t in config.tolerations]

    containers = pod.setdefault("containers", []) or []
    pod["containers"] = containers
    if not containers:
        containers.append({})
    main = containers[0]
    main["name"] = dns_label(plan.project.display_name, 63)  # the project's name, as MLflow names it
    main["image"] = image
    nodes, per_node = shape(plan)
    restarts = plan.restarts.asked
    counted = CHECKPOINT_PATH if restarts and config.checkpoint_volume else None
    if nodes * per_node > 1:  # the launcher starts the P processes of this pod
        script = launcher(nodes=nodes, per_node=per_node, master=master_addr(name, nodes), attempt_folder=counted)
        main["command"] = [*SHELL, script, "mlexec-launcher", plan.command]
    elif counted:
        main["command"] = [*SHELL, single(counted), "mlexec-launcher", plan.command]
    else:
        main["command"] = [*SHELL, plan.command]
    if restarts:
        _restarts(job, main, plan, config, run_id)
    main.pop("args", None)
    if nodes > 1:  # one pod per node, each with its index, its DNS name through the headless Service
        spec["completionMode"] = "Indexed"
        spec["completions"] = spec["parallelism"] = nodes
        pod["subdomain"] = name
    main["env"] = _merge_env(list(main.get("env") or []), [{"name": k, "value": v} for k, v in env.items()])
    if config.resources:
        resources = main.setdefault("resources", {}) or {}
        main["resources"] = resources
        for part, values in config.resources.items():
            resources[part] = {**(resources.get(part) or {}), **values}
    apply_resources(job, plan.resources, config)
    return job


#: Where the run's checkpoint folder is in the pod (MLEXEC_CHECKPOINT_DIR), and its volume.
CHECKPOINT_PATH = "/mlexec/checkpoints"
CHECKPOINT_VOLUME = "mlexec-checkpoints"


def _restarts(job: dict[str, Any], main: dict[str, Any], plan: RunPlan, config: KubernetesConfig,
              run_id: str) -> None:
    """A Job that comes back into the same run (``--restart-on-exit``, ``--max-restarts``).

    ``podFailurePolicy`` (it needs ``restartPolicy: Never``): a pod disrupted by the cluster
    (preempted, evicted, its node drained: the ``DisruptionTarget`` condition) is replaced without
    counting; an exit status of ``--restart-on-exit`` counts against ``backoffLimit`` =
    ``--max-restarts``; any other failure fails the Job at once.  The checkpoint folder is the
    config's ``checkpoint-volume`` (a PersistentVolumeClaim; the run's own ``subPath``), else an
    ``emptyDir`` (it does not outlive the pod).
    """
    spec = job["spec"]
    pod = spec["template"]["spec"]
    restarts = plan.restarts
    spec["backoffLimit"] = restarts.max_restarts
    rules: list[dict[str, Any]] = [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]
    # (an empty onPodConditions: Kubernetes 1.27's schema requires the field, and empty is "not given")
    if restarts.exit_codes:
        rules.append({"action": "Count", "onExitCodes": {"containerName": main["name"], "operator": "In",
                                                         "values": sorted(restarts.exit_codes)},
                      "onPodConditions": []})
    rules.append({"action": "FailJob", "onExitCodes": {"containerName": main["name"], "operator": "NotIn",
                                                       "values": [0]}, "onPodConditions": []})
    spec["podFailurePolicy"] = {"rules": rules}
    volume: dict[str, Any] = {"name": CHECKPOINT_VOLUME}
    mount: dict[str, Any] = {"name": CHECKPOINT_VOLUME, "mountPath": CHECKPOINT_PATH}
    if config.checkpoint_volume:
        volume["persistentVolumeClaim"] = {"claimName": config.checkpoint_volume}
        mount["subPath"] = f"mlexec-runs/{label_value(run_id)}"
    else:
        volume["emptyDir"] = {}
    pod["volumes"] = [v for v in pod.get("volumes") or [] if v.get("name") != CHECKPOINT_VOLUME] + [volume]
    main["volumeMounts"] = [m for m in main.get("volumeMounts") or []
                            if m.get("name") != CHECKPOINT_VOLUME and m.get("mountPath") != CHECKPOINT_PATH] + [mount]


def to_yaml(manifest: Mapping[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(dict(manifest), sort_keys=False, default_flow_style=False, width=1000)


def build_service(plan: RunPlan, *, name: str, namespace: str, run_id: str,
                  owner_uid: str | None = None) -> dict[str, Any]:
    """The headless Service of a Job of many pods (``nodes`` above 1): same name, selecting its pods,
    owned by the Job when its ``owner_uid`` is known (so that deleting the Job deletes it)."""
    labels = {RUN_LABEL: label_value(run_id), PROJECT_LABEL: label_value(plan.project.display_name),
              MANAGED_BY[0]: MANAGED_BY[1]}
    owner = {"name": name, "uid": owner_uid} if owner_uid else None
    return service(name=name, namespace=namespace, labels=labels, selector={"job-name": name}, owner=owner)
