"""``--backend-config`` for the ``kubernetes`` backend: checked once, before anything runs.

The core has already read the file (JSON or YAML) or the inline JSON; this
module checks every key and its type, and returns a frozen
:class:`KubernetesConfig`.  A mistake is one :class:`UsageError` naming the key.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import attrs
from attrs import frozen

from mlexec_core.configmodel import NonEmpty, Style, Text, TextValue, keys, setting, structure
from mlexec_core.errors import UsageError
from mlexec_core.yamlfile import FileWarning, exists, is_file, load_yaml, shorten, text_problem

#: Kubernetes quantities ("500m", "2Gi", "1.5", "1e3").
_QUANTITY = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+|[numkMGTPE]|[KMGTPE]i)?$")
#: A label/annotation key (optional DNS prefix, then a name) and an env var name.
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

#: The node label a ``gpu-type`` resource selects on, unless the config's ``gpu-type-label`` names
#: another: the one NVIDIA GPU feature discovery (part of the NVIDIA GPU Operator) puts on every
#: GPU node, whose values are product names such as ``NVIDIA-A100-SXM4-80GB``.
DEFAULT_GPU_TYPE_LABEL = "nvidia.com/gpu.product"

_TOLERATION_OPERATORS = {"Exists", "Equal"}
_TOLERATION_EFFECTS = {"NoSchedule", "PreferNoSchedule", "NoExecute"}


@frozen
class KubernetesConfig:
    """The parsed backend configuration."""

    repository_uri: str
    kube_context: str | None = None
    #: The Job template (already read and checked), and where it came from.
    job_template: Mapping[str, Any] | None = None
    job_template_path: Path | None = None
    namespace: str | None = None
    service_account: str | None = None
    image_pull_secrets: tuple[str, ...] = ()
    env: Mapping[str, str] = attrs.field(factory=dict)
    #: ``{"requests": {...}, "limits": {...}}``
    resources: Mapping[str, Mapping[str, str]] = attrs.field(factory=dict)
    #: Whether ``resources`` was written as ``{requests: ..., limits: ...}`` (else one mapping for both).
    resources_split: bool = False
    #: The node label a ``gpu-type`` resource becomes a ``nodeSelector`` entry of.
    gpu_type_label: str = DEFAULT_GPU_TYPE_LABEL
    node_selector: Mapping[str, str] = attrs.field(factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    backoff_limit: int | None = None
    active_deadline_seconds: int | None = None
    ttl_seconds_after_finished: int | None = None
    #: A PersistentVolumeClaim whose per-run folder is MLEXEC_CHECKPOINT_DIR (restarts).
    checkpoint_volume: str | None = None


@frozen
class _Toleration:
    key: Text | None = setting()
    operator: Any = setting()
    value: Text | None = setting()
    effect: Any = setting()
    tolerationSeconds: int | None = setting()  # noqa: N815 (Kubernetes' name)


@frozen
class _KubernetesFile:
    """The backend config as written: the keys and their types (the formats are checked in :func:`parse_config`).

    The keys, in the order the README documents them.
    """

    kube_context: NonEmpty | None = setting("kube-context")
    repository_uri: NonEmpty | None = setting("repository-uri")
    kube_job_template_path: NonEmpty | None = setting("kube-job-template-path")
    namespace: NonEmpty | None = setting()
    service_account: NonEmpty | None = setting("service-account")
    image_pull_secrets: Any = setting("image-pull-secrets")
    env: Mapping[str, TextValue] = setting(factory=dict)
    resources: Any = setting()
    gpu_type_label: NonEmpty | None = setting("gpu-type-label")
    node_selector: Mapping[str, TextValue] = setting("node-selector", factory=dict)
    tolerations: tuple[_Toleration, ...] = setting(default=())
    backoff_limit: int | None = setting("backoff-limit")
    active_deadline_seconds: int | None = setting("active-deadline-seconds")
    ttl_seconds_after_finished: int | None = setting("ttl-seconds-after-finished")
    checkpoint_volume: NonEmpty | None = setting("checkpoint-volume")


_STYLE = Style(backend="kubernetes", words={"int": "an integer"})
#: The keys of ``--backend-config``.
KNOWN_KEYS = keys(_KubernetesFile)


def _where(key: str) -> str:
    return f"--backend-config key {key!r}"


def _dns(key: str, value: str | None, pattern: re.Pattern[str], what: str) -> str | None:
    if value is not None and (len(value) > 253 or not pattern.match(value)):
        raise UsageError(f"{_where(key)}: {shorten(repr(value))} is not a valid {what}",
                         hint="lower-case letters, digits and '-' only, starting and ending with a letter or digit")
    return value


def _at_least(key: str, value: int | None, minimum: int) -> int | None:
    if value is not None and value < minimum:
        raise UsageError(f"{_where(key)} must be at least {minimum}, got {value}")
    return value


def _scalar(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise UsageError(f"{key} must be a string or a number, got {type(value).__name__} {shorten(repr(value))}")


def _names(key: str, value: Mapping[str, str], name_pattern: re.Pattern[str], what: str) -> dict[str, str]:
    for name in value:
        if not name_pattern.match(name):
            raise UsageError(f"{_where(key)}: {shorten(repr(name))} is not a valid {what}")
    return dict(value)


def _quantities(key: str, value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise UsageError(f"{_where(key)} must be a mapping such as {{cpu: '2', memory: 4Gi}}, got {shorten(repr(value))}")
    out = {}
    for name, qty in value.items():
        if not isinstance(name, str) or not _LABEL_KEY.match(name):
            raise UsageError(f"{_where(key)}: {shorten(repr(name))} is not a resource name (cpu, memory, nvidia.com/gpu ...)")
        text = _scalar(f"{_where(key)}: {name}", qty)
        if isinstance(qty, bool) or not _QUANTITY.match(text):
            raise UsageError(f"{_where(key)}: {name}={shorten(repr(text))} is not a Kubernetes quantity",
                             hint="for example cpu: 500m, memory: 2Gi, nvidia.com/gpu: 1")
        out[name] = text
    return out


def _resources(value: Any) -> dict[str, dict[str, str]]:
    if value is None:
        return {}
    if _is_split(value):
        return {part: _quantities(f"resources.{part}", value[part]) for part in value}
    flat = _quantities("resources", value)
    # One set of numbers: request what the limit allows (GPUs must have requests == limits anyway).
    return {"requests": dict(flat), "limits": dict(flat)} if flat else {}


def _is_split(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and set(value) <= {"requests", "limits"}


def _label_key(key: str, value: str | None) -> str | None:
    prefix, _, name = (value or "").rpartition("/")
    if value is not None and (len(prefix) > 253 or len(name) > 63 or not _LABEL_KEY.match(value)):
        raise UsageError(f"{_where(key)}: {shorten(repr(value))} is not a node label key",
                         hint="for example nvidia.com/gpu.product or cloud.google.com/gke-accelerator")
    return value


def _tolerations(value: tuple[_Toleration, ...]) -> tuple[dict[str, Any], ...]:
    out = []
    for index, item in enumerate(value):
        key = f"tolerations[{index}]"
        tol: dict[str, Any] = {}
        for name in ("key", "operator", "value", "effect", "tolerationSeconds"):
            if getattr(item, name) is not None:
                tol[name] = getattr(item, name)
        if item.operator is not None and (not isinstance(item.operator, str)
                                          or item.operator not in _TOLERATION_OPERATORS):
            raise UsageError(f"{_where(key)}.operator must be Exists or Equal, got {shorten(item.operator)}")
        if item.effect is not None and (not isinstance(item.effect, str) or item.effect not in _TOLERATION_EFFECTS):
            raise UsageError(f"{_where(key)}.effect must be one of {', '.join(sorted(_TOLERATION_EFFECTS))}, "
                             f"got {shorten(item.effect)}")
        out.append(tol)
    return tuple(out)


def _pull_secrets(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise UsageError(f"{_where('image-pull-secrets')} must be a list of Secret names, got {shorten(repr(value))}")
    out = []
    for name in value:
        if not isinstance(name, str):
            raise UsageError(f"{_where('image-pull-secrets')}: {shorten(repr(name))} is not a Secret name")
        out.append(_dns("image-pull-secrets", name, _DNS_SUBDOMAIN, "Secret name"))
    return tuple(out)


def template_path(value: str, base_dir: Path, cwd: Path | None = None) -> Path:
    """Where ``kube-job-template-path`` is: beside the config file, or else (as MLflow reads it) from the cwd.

    The second is said with a :class:`~mlexec_core.yamlfile.FileWarning` naming the file used.
    """
    problem = text_problem(value)
    if problem:
        raise UsageError(f"{_where('kube-job-template-path')}: the path {problem}")
    beside = base_dir / value
    cwd = cwd or Path.cwd()
    if not is_file(beside) and not Path(value).is_absolute() and base_dir.resolve() != cwd.resolve():
        from_cwd = cwd / value
        if is_file(from_cwd):
            warnings.warn(f"--backend-config kube-job-template-path {shorten(value)!r} is not beside the config "
                          f"file (in {base_dir}): using {from_cwd.resolve()}, found from the current directory as "
                          "MLflow finds it", FileWarning, stacklevel=2)
            return from_cwd.resolve()
    try:
        return beside.resolve()
    except (OSError, RuntimeError):
        return beside


def load_template(path: Path) -> dict[str, Any]:
    """Read a Job template and check that it is one; any other YAML is an error naming the file."""
    if not exists(path):
        raise UsageError(f"{_where('kube-job-template-path')}: no such file {shorten(str(path), 300)}",
                         hint="the path is relative to the backend config file, then to the current directory; "
                              "remove the key to use mlexec's default Job")
    documents = [d for d in load_yaml(path, error=UsageError, what="Job template", all_documents=True,
                                      duplicates="error") if d is not None]
    if len(documents) != 1 or not isinstance(documents[0], dict):
        raise UsageError(f"expected one Kubernetes Job manifest, found {len(documents)} YAML documents"
                         if len(documents) != 1 else "expected a Kubernetes Job manifest (a mapping)",
                         context=str(path))
    template = documents[0]
    kind, api = template.get("kind"), template.get("apiVersion")
    if kind != "Job" or api != "batch/v1":
        raise UsageError(f"the Job template is a {shorten(kind) if kind else 'manifest without kind'} "
                         f"({shorten(api) if api else 'no apiVersion'}), not a Job (batch/v1)", context=str(path),
                         hint="the template must be `apiVersion: batch/v1` and `kind: Job`")
    check_template(template, str(path))
    return template


def _mapping_at(data: Any, key: str, context: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{key} must be a mapping, got {type(data).__name__}", context=context)
    return data


def check_template(template: Mapping[str, Any], context: str) -> None:
    """The parts of a Job template mlexec reads or changes have the types Kubernetes gives them."""
    metadata = _mapping_at(template.get("metadata"), "metadata", context)
    for key in ("labels", "annotations"):
        labels = _mapping_at(metadata.get(key), f"metadata.{key}", context)
        if not all(isinstance(k, str) for k in labels):
            raise UsageError(f"metadata.{key}: the keys must be strings", context=context)
    if metadata.get("namespace") is not None and not isinstance(metadata.get("namespace"), str):
        raise UsageError("metadata.namespace must be a string", context=context)
    spec = _mapping_at(template.get("spec"), "spec", context)
    pod_template = _mapping_at(spec.get("template"), "spec.template", context)
    pod_meta = _mapping_at(pod_template.get("metadata"), "spec.template.metadata", context)
    _mapping_at(pod_meta.get("labels"), "spec.template.metadata.labels", context)
    pod = _mapping_at(pod_template.get("spec"), "spec.template.spec", context)
    for key in ("containers", "imagePullSecrets", "tolerations", "initContainers", "volumes"):
        value = pod.get(key)
        if value is not None and not isinstance(value, list):
            raise UsageError(f"spec.template.spec.{key} must be a list, got {type(value).__name__}", context=context)
    for key in ("containers", "imagePullSecrets"):
        for index, item in enumerate(pod.get(key) or []):
            if not isinstance(item, dict):
                raise UsageError(f"spec.template.spec.{key}[{index}] must be a mapping", context=context)
    _mapping_at(pod.get("nodeSelector"), "spec.template.spec.nodeSelector", context)
    containers = pod.get("containers") or []
    if containers:
        main = containers[0]
        for key in ("env", "args", "command", "volumeMounts"):
            if main.get(key) is not None and not isinstance(main.get(key), list):
                raise UsageError(f"spec.template.spec.containers[0].{key} must be a list", context=context)
        for index, item in enumerate(main.get("env") or []):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise UsageError(f"spec.template.spec.containers[0].env[{index}] must be a mapping with a name",
                                 context=context)
        resources = _mapping_at(main.get("resources"), "spec.template.spec.containers[0].resources", context)
        for part in ("requests", "limits"):
            _mapping_at(resources.get(part), f"spec.template.spec.containers[0].resources.{part}", context)
    for key in ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"):
        value = spec.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise UsageError(f"spec.{key} must be an integer, got {shorten(value)}", context=context)
    policy = pod.get("restartPolicy")
    if policy not in (None, "Never", "OnFailure"):
        raise UsageError(f"spec.template.spec.restartPolicy is {shorten(policy)}; a Job needs Never or OnFailure",
                         context=context)


def parse_config(config: Mapping[str, Any], base_dir: Path) -> KubernetesConfig:
    raw = structure(config, _KubernetesFile, style=_STYLE)
    template = path = None
    if raw.kube_job_template_path is not None:
        path = template_path(raw.kube_job_template_path, base_dir)
        template = load_template(path)
    if raw.repository_uri is None:
        raise UsageError(f"{_where('repository-uri')} is required for the kubernetes backend",
                         hint="add repository-uri: ... to the backend config (the registry the cluster pulls from, "
                              "e.g. registry.example.com/team/proj)")
    return KubernetesConfig(
        repository_uri=_repository(raw.repository_uri),
        kube_context=raw.kube_context,
        job_template=template,
        job_template_path=path,
        namespace=_dns("namespace", raw.namespace, _DNS_LABEL, "namespace name"),
        service_account=_dns("service-account", raw.service_account, _DNS_SUBDOMAIN, "ServiceAccount name"),
        image_pull_secrets=_pull_secrets(raw.image_pull_secrets),
        env=_names("env", raw.env, _ENV_NAME, "environment variable name"),
        resources=_resources(raw.resources),
        resources_split=_is_split(raw.resources),
        gpu_type_label=_label_key("gpu-type-label", raw.gpu_type_label) or DEFAULT_GPU_TYPE_LABEL,
        node_selector=_names("node-selector", raw.node_selector, _LABEL_KEY, "label key"),
        tolerations=_tolerations(raw.tolerations),
        backoff_limit=_at_least("backoff-limit", raw.backoff_limit, 0),
        active_deadline_seconds=_at_least("active-deadline-seconds", raw.active_deadline_seconds, 1),
        ttl_seconds_after_finished=_at_least("ttl-seconds-after-finished", raw.ttl_seconds_after_finished, 0),
        checkpoint_volume=_dns("checkpoint-volume", raw.checkpoint_volume, _DNS_SUBDOMAIN,
                               "PersistentVolumeClaim name"),
    )


def _repository(value: str) -> str:
    name = value.rsplit("/", 1)[-1]
    if "@" in value or any(c.isspace() for c in value) or ":" in name:
        raise UsageError(f"{_where('repository-uri')}: {shorten(repr(value))} must be a repository without tag or digest",
                         hint="for example registry.example.com/team/project; mlexec adds the content tag")
    path = value.split("/", 1)[1] if "/" in value else value
    if path != path.lower():
        raise UsageError(f"{_where('repository-uri')}: {shorten(repr(value))}: repository paths must be lower-case")
    return value
