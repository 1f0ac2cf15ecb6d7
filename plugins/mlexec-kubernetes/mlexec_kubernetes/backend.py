"""The ``kubernetes`` backend: build and push the project image, run it as a Job, watch it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from attrs import frozen

from mlexec_core.errors import BackendError, PluginError, UsageError
from mlexec_core.plugin.interfaces import (
    Backend, ImageRef, PreparedEnvironment, RunPlan, RunRecord, SubmittedJob, redact,
)

from mlexec_kubernetes.cluster import (
    TRACKING_URI_VAR, Cluster, api_error, check_namespace, connect, context_namespace, is_connection_error,
)
from mlexec_kubernetes.config import KubernetesConfig, parse_config
from mlexec_kubernetes.job import (
    TAG_CONTAINER, TAG_CONTEXT, TAG_JOB, TAG_NAMESPACE, TAG_SERVICE, TAG_TIME_LIMIT, KubernetesJob, time_limit_from_tag,
    time_limit_tag,
)
from mlexec_kubernetes.distributed import shape
from mlexec_kubernetes.manifest import CHECKPOINT_PATH, build_job, build_service, dns_label, job_name, to_yaml
from mlexec_kubernetes.resources import check as check_resources, conflicts as resource_conflicts

#: The image builder the backend uses (from mlexec-docker).
IMAGE_BUILDER = "docker"


@frozen
class Prepared:
    """What :meth:`KubernetesBackend.prepare` made ready before the run exists."""

    cluster: Cluster
    namespace: str
    image: ImageRef

    @property
    def pinned_image(self) -> str:
        """The image by digest (``repo:tag@sha256:...``), so the pod runs exactly what was built."""
        return f"{self.image.uri}@{self.image.digest}" if self.image.digest else self.image.uri


def is_local_tracking_uri(uri: str | None) -> bool:
    """Whether a pod in a cluster cannot reach ``uri`` (a file or sqlite store on this machine)."""
    if not uri:
        return True
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme in ("", "file", "sqlite") or len(scheme) == 1:  # "" or a Windows drive: a path
        return True
    return any(host in uri for host in ("://localhost", "://127.", "://[::1]", "://0.0.0.0"))


class KubernetesBackend(Backend):
    """A Kubernetes Job per run (registered, as detachable, in :mod:`mlexec_kubernetes.plugin`)."""

    def attach(self, run: RunRecord, tags: Mapping[str, str]) -> SubmittedJob:
        """The Job recorded on ``run`` (tags ``mlexec.kubernetes.job`` and ``.namespace``)."""
        name, namespace = tags.get(TAG_JOB), tags.get(TAG_NAMESPACE)
        if not name or not namespace:
            raise BackendError(f"run {run.run_id} has no Kubernetes Job recorded (tags {TAG_JOB}, {TAG_NAMESPACE})",
                               hint="only runs started with -b kubernetes can be attached")
        cluster = connect(tags.get(TAG_CONTEXT))
        return KubernetesJob(cluster, namespace, name, tags.get("mlflow.docker.image.uri", ""),
                             tags.get(TAG_CONTAINER) or "", self.context.reporter, {}, output=run.output,
                             time_limit=time_limit_from_tag(tags.get(TAG_TIME_LIMIT)), attached=True,
                             service=tags.get(TAG_SERVICE))

    def parse_config(self, config: Mapping[str, Any], base_dir: Path) -> KubernetesConfig:
        return parse_config(config, base_dir)

    def uses_local_environment(self, plan: RunPlan) -> bool:
        return False  # the environment is the image

    def _config(self, plan: RunPlan) -> KubernetesConfig:
        config = plan.backend_config
        if not isinstance(config, KubernetesConfig):  # a plan made by hand (Python API, tests)
            config = parse_config(config or {}, Path.cwd())
        return config

    def _namespace(self, config: KubernetesConfig, cluster: Cluster | None) -> str:
        template_ns = ((config.job_template or {}).get("metadata") or {}).get("namespace")
        if config.namespace or template_ns:
            return config.namespace or template_ns
        return cluster.default_namespace if cluster else context_namespace(config.kube_context)

    def check(self, plan: RunPlan) -> None:
        """The resources the manifest cannot take are refused; those that override the config are said."""
        self._check_resources(plan, self._config(plan))

    def _check_resources(self, plan: RunPlan, config: KubernetesConfig) -> None:
        check_resources(plan.resources, config)
        for warning in resource_conflicts(plan.resources, config):
            self.context.reporter.warning(warning)
        if plan.restarts.asked:
            self._check_restarts(plan, config)

    def _check_restarts(self, plan: RunPlan, config: KubernetesConfig) -> None:
        """The Job's podFailurePolicy needs restartPolicy Never; checkpoints need a volume to survive a pod."""
        template = ((config.job_template or {}).get("spec") or {}).get("template") or {}
        policy = (template.get("spec") or {}).get("restartPolicy")
        if policy not in (None, "Never"):
            where = f"the Job template {config.job_template_path}" if config.job_template_path else "the Job template"
            raise UsageError(
                f"--restart-on-exit/--max-restarts need the Job's pods to have restartPolicy Never (a "
                f"podFailurePolicy decides what comes back), but {where} says restartPolicy: {policy}",
                hint="remove restartPolicy from spec.template.spec of the Job template")
        if not config.checkpoint_volume:
            self.context.reporter.warning(
                f"MLEXEC_CHECKPOINT_DIR ({CHECKPOINT_PATH}) is an emptyDir of the pod: checkpoints written there "
                "do not survive a pod that is replaced; set checkpoint-volume: <PersistentVolumeClaim> in the "
                "backend config to keep them across restarts")

    def checkpoint_dir(self, plan: RunPlan, run: RunRecord) -> str:
        """The folder in the pod: the run's own folder of the ``checkpoint-volume`` claim (else an emptyDir)."""
        return CHECKPOINT_PATH

    def prepare(self, plan: RunPlan, environment: PreparedEnvironment | None) -> Prepared:
        config = self._config(plan)
        reporter = self.context.reporter
        with reporter.status("Connecting to the Kubernetes cluster"):
            cluster = connect(config.kube_context)
            namespace = self._namespace(config, cluster)
            check_namespace(cluster, namespace, services=shape(plan)[0] > 1)
        reporter.info(f"Kubernetes: {cluster.where}, namespace {namespace}")
        plugins = self.context.plugins
        if plugins is None or IMAGE_BUILDER not in plugins.image_builders():
            raise PluginError("the kubernetes backend needs the docker image builder, which is not installed",
                              hint="pip install mlexec-docker")
        image = plugins.image_builder(IMAGE_BUILDER).build(plan, repository=config.repository_uri, push=True)
        if not image.digest:
            raise BackendError(f"the image {image.uri} was pushed but no registry digest came back",
                               hint=f"check that {config.repository_uri} is a registry the image was pushed to")
        return Prepared(cluster, namespace, image)

    def _pod_env(self, config: KubernetesConfig, run: RunRecord, warn: bool = True) -> dict[str, str]:
        """The pod's variables: the run's (``MLFLOW_RUN_ID`` ...), then the config's ``env``, with
        ``$KUBE_MLFLOW_TRACKING_URI`` (as in MLflow) over both for the tracking URI."""
        env = {**run.env, **config.env}
        override = os.environ.get(TRACKING_URI_VAR)
        if override:
            env["MLFLOW_TRACKING_URI"] = override
        uri = env.get("MLFLOW_TRACKING_URI") or run.tracking_uri
        if uri:
            env["MLFLOW_TRACKING_URI"] = uri
        if warn and uri and is_local_tracking_uri(uri):
            self.context.reporter.warning(
                f"the tracking store {uri} is on this machine: the pod cannot log to it. Set "
                f"{TRACKING_URI_VAR} or env: {{MLFLOW_TRACKING_URI: ...}} in the backend config to a tracking "
                "server the cluster can reach; the run's status is still recorded here")
        return env

    def submit(self, plan: RunPlan, run: RunRecord, prepared: Prepared) -> SubmittedJob:
        from kubernetes.client.rest import ApiException

        config = self._config(plan)
        nodes, _ = shape(plan)
        name = job_name(plan.project.display_name, run.run_id, nodes)
        manifest = build_job(plan, config, name=name, namespace=prepared.namespace, image=prepared.pinned_image,
                             env=self._pod_env(config, run), run_id=run.run_id)
        container = manifest["spec"]["template"]["spec"]["containers"][0]["name"]
        try:
            created = prepared.cluster.batch().create_namespaced_job(prepared.namespace, manifest)
            if nodes > 1:
                self._create_service(plan, run, prepared, name, getattr(created.metadata, "uid", None))
        except ApiException as exc:
            raise api_error(exc, f"creating Job {name}", prepared.cluster, prepared.namespace) from None
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            raise BackendError(f"creating Job {name}: cannot reach the cluster: {exc}",
                               context=prepared.cluster.where) from None
        what = f"Indexed Job {prepared.namespace}/{name} of {nodes} pods and its headless Service" if nodes > 1 \
            else f"Job {prepared.namespace}/{name}"
        self.context.reporter.info(f"Created {what} (image {prepared.pinned_image})")
        tags = {
            TAG_JOB: name,
            TAG_NAMESPACE: prepared.namespace,
            TAG_CONTAINER: container,
            "mlexec.job.backend": self.name,
            "mlexec.job.detachable": "true",
            "mlflow.docker.image.uri": prepared.image.uri,
            "mlflow.docker.image.id": prepared.image.digest or prepared.image.image_id or "",
        }
        if prepared.cluster.context:
            tags[TAG_CONTEXT] = prepared.cluster.context
        if plan.resources.time is not None:  # so that an attached mlexec enforces it too
            tags[TAG_TIME_LIMIT] = time_limit_tag(plan.resources.time)
        if nodes > 1:
            tags[TAG_SERVICE] = name
        return KubernetesJob(prepared.cluster, prepared.namespace, name, prepared.pinned_image, container,
                             self.context.reporter, tags, output=run.output, time_limit=plan.resources.time,
                             service=name if nodes > 1 else None)

    def _create_service(self, plan: RunPlan, run: RunRecord, prepared: Prepared, name: str,
                        uid: str | None) -> None:
        """The headless Service of an Indexed Job, owned by it; without it the Job is deleted again."""
        from kubernetes.client.rest import ApiException

        body = build_service(plan, name=name, namespace=prepared.namespace, run_id=run.run_id, owner_uid=uid)
        try:
            prepared.cluster.core().create_namespaced_service(prepared.namespace, body)
        except BaseException as exc:
            try:
                prepared.cluster.batch().delete_namespaced_job(name, prepared.namespace,
                                                               propagation_policy="Background")
            except Exception:
                pass
            if isinstance(exc, ApiException):
                raise api_error(exc, f"creating the headless Service {name} of Job {name}", prepared.cluster,
                                prepared.namespace) from None
            raise

    def dry_run(self, plan: RunPlan) -> dict[str, Any]:
        """The Job manifest, without contacting the cluster or building anything."""
        config = self._config(plan)
        self._check_resources(plan, config)
        namespace = self._namespace(config, None)
        placeholder = "<set when the run is created>"
        run = RunRecord(run_id=placeholder, env={"MLFLOW_RUN_ID": placeholder, "MLFLOW_EXPERIMENT_ID": placeholder,
                                                 "MLFLOW_TRACKING_URI": placeholder})
        fake_id = "dry-run"
        nodes, per_node = shape(plan)
        name = job_name(plan.project.display_name, fake_id, nodes)
        image = f"{config.repository_uri}:<content-tag>@sha256:<digest of the pushed image>"
        manifest = build_job(plan, config, name=name, namespace=namespace, image=image,
                             env={k: redact(v) for k, v in self._pod_env(config, run, warn=False).items()},
                             run_id=fake_id)
        text = (f"# Job manifest: the name ends in the run id; the image is built and pushed to\n"
                f"# {config.repository_uri} at run time\n{to_yaml(manifest)}")
        service = None
        if nodes > 1:
            service = build_service(plan, name=name, namespace=namespace, run_id=fake_id,
                                    owner_uid="<the Job's uid>")
            text += (f"---\n# The headless Service that names each pod <job>-<index>.{name} (MASTER_ADDR is "
                     f"index 0's); owned by the Job, deleted with it\n{to_yaml(service)}")
        if nodes * per_node > 1:
            text = (f"# {nodes} pod(s) x {per_node} process(es): WORLD_SIZE={nodes * per_node}, NODE_RANK from "
                    f"the pod's completion index, RANK = NODE_RANK x {per_node} + LOCAL_RANK\n") + text
        where = f"kube-context {config.kube_context}" if config.kube_context else "the kubeconfig's current context"
        return {
            "cluster": where + ("" if config.namespace else " (namespace from the template or the context)"),
            "namespace": namespace,
            "repository": config.repository_uri,
            "job_name": dns_label(plan.project.display_name, 50) + "-<first 12 characters of the run id>",
            "job_manifest": manifest,
            **({"service_manifest": service} if service is not None else {}),
            "text": text,
        }
