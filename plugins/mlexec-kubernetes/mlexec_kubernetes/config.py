"""``--backend-config`` for the ``kubernetes`` backend: checked once, before anything runs.

The core has already read the file (JSON or YAML) or the inline JSON; this
module checks every key and its type, and returns a frozen
:class:`KubernetesConfig`.  A mistake is one :class:`UsageError` naming the key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import attrs
from attrs import frozen

from mlexec_core.errors import UsageError

#: Kubernetes quantities ("500m", "2Gi", "1.5", "1e3").
_QUANTITY = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+|[numkMGTPE]|[KMGTPE]i)?$")
#: A label/annotation key (optional DNS prefix, then a name) and an env var name.
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}
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
    node_selector: Mapping[str, str] = attrs.field(factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    backoff_limit: int | None = None
    active_deadline_seconds: int | None = None
    ttl_seconds_after_finished: int | None = None


def _where(key: str) -> str:
    return f"--backend-config key {key!r}"


def _string(config: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
    if key not in config or config[key] is None:
        if required:
            raise UsageError(f"{_where(key)} is required for the kubernetes backend",
                             hint=f"add {key}: ... to the backend config"
                             + (" (the registry the cluster pulls from, e.g. registry.example.com/team/proj)"
                                if key == "repository-uri" else ""))
        return None
    value = config[key]
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{_where(key)} must be a non-empty string, got {value!r}")
    return value.strip()


def _dns(key: str, value: str | None, pattern: re.Pattern[str], what: str) -> str | None:
    if value is not None and (len(value) > 253 or not pattern.match(value)):
        raise UsageError(f"{_where(key)}: {value!r} is not a valid {what}",
                         hint="lower-case letters, digits and '-' only, starting and ending with a letter or digit")
    return value


def _int(config: Mapping[str, Any], key: str, minimum: int) -> int | None:
    value = config.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{_where(key)} must be an integer, got {value!r}")
    if value < minimum:
        raise UsageError(f"{_where(key)} must be at least {minimum}, got {value}")
    return value


def _scalar(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise UsageError(f"{key} must be a string or a number, got {type(value).__name__} {value!r}")


def _string_map(config: Mapping[str, Any], key: str, name_pattern: re.Pattern[str], what: str) -> dict[str, str]:
    value = config.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise UsageError(f"{_where(key)} must be a mapping of {what} to values, got {value!r}")
    out = {}
    for name, item in value.items():
        if not isinstance(name, str) or not name_pattern.match(name):
            raise UsageError(f"{_where(key)}: {name!r} is not a valid {what}")
        out[name] = _scalar(f"{_where(key)}: {name}", item)
    return out


def _quantities(key: str, value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise UsageError(f"{_where(key)} must be a mapping such as {{cpu: '2', memory: 4Gi}}, got {value!r}")
    out = {}
    for name, qty in value.items():
        if not isinstance(name, str) or not _LABEL_KEY.match(name):
            raise UsageError(f"{_where(key)}: {name!r} is not a resource name (cpu, memory, nvidia.com/gpu ...)")
        text = _scalar(f"{_where(key)}: {name}", qty)
        if isinstance(qty, bool) or not _QUANTITY.match(text):
            raise UsageError(f"{_where(key)}: {name}={text!r} is not a Kubernetes quantity",
                             hint="for example cpu: 500m, memory: 2Gi, nvidia.com/gpu: 1")
        out[name] = text
    return out


def _resources(config: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    value = config.get("resources")
    if value is None:
        return {}
    if isinstance(value, Mapping) and value and set(value) <= {"requests", "limits"}:
        return {part: _quantities(f"resources.{part}", value[part]) for part in value}
    flat = _quantities("resources", value)
    # One set of numbers: request what the limit allows (GPUs must have requests == limits anyway).
    return {"requests": dict(flat), "limits": dict(flat)} if flat else {}


def _tolerations(config: Mapping[str, Any]) -> tuple[dict[str, Any], ...]:
    value = config.get("tolerations")
    if value is None:
        return ()
    if not isinstance(value, list):
        raise UsageError(f"{_where('tolerations')} must be a list of mappings (key, operator, value, effect)")
    out = []
    for index, item in enumerate(value):
        key = f"tolerations[{index}]"
        if not isinstance(item, Mapping):
            raise UsageError(f"{_where(key)} must be a mapping, got {item!r}")
        unknown = set(item) - _TOLERATION_KEYS
        if unknown:
            raise UsageError(f"{_where(key)}: unknown key {sorted(unknown)[0]!r}",
                             hint=f"a toleration has {', '.join(sorted(_TOLERATION_KEYS))}")
        tol: dict[str, Any] = {}
        for name in ("key", "value"):
            if name in item:
                tol[name] = _scalar(f"{_where(key)}.{name}", item[name])
        if "operator" in item:
            if item["operator"] not in _TOLERATION_OPERATORS:
                raise UsageError(f"{_where(key)}.operator must be Exists or Equal, got {item['operator']!r}")
            tol["operator"] = item["operator"]
        if "effect" in item:
            if item["effect"] not in _TOLERATION_EFFECTS:
                raise UsageError(f"{_where(key)}.effect must be one of {', '.join(sorted(_TOLERATION_EFFECTS))}, "
                                 f"got {item['effect']!r}")
            tol["effect"] = item["effect"]
        if "tolerationSeconds" in item:
            seconds = item["tolerationSeconds"]
            if isinstance(seconds, bool) or not isinstance(seconds, int):
                raise UsageError(f"{_where(key)}.tolerationSeconds must be an integer, got {seconds!r}")
            tol["tolerationSeconds"] = seconds
        out.append(tol)
    return tuple(out)


def _pull_secrets(config: Mapping[str, Any]) -> tuple[str, ...]:
    value = config.get("image-pull-secrets")
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise UsageError(f"{_where('image-pull-secrets')} must be a list of Secret names, got {value!r}")
    out = []
    for name in value:
        if not isinstance(name, str):
            raise UsageError(f"{_where('image-pull-secrets')}: {name!r} is not a Secret name")
        out.append(_dns("image-pull-secrets", name, _DNS_SUBDOMAIN, "Secret name"))
    return tuple(out)


def load_template(path: Path) -> dict[str, Any]:
    """Read a Job template and check that it is one; any other YAML is an error naming the file."""
    import yaml

    if not path.is_file():
        raise UsageError(f"{_where('kube-job-template-path')}: no such file {path}",
                         hint="the path is relative to the backend config file (or the current directory for "
                              "inline JSON); remove the key to use mlexec's default Job")
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    except yaml.YAMLError as exc:
        raise UsageError(f"not valid YAML: {str(exc).splitlines()[0]}", context=str(path)) from None
    if len(documents) != 1 or not isinstance(documents[0], dict):
        raise UsageError(f"expected one Kubernetes Job manifest, found {len(documents)} YAML documents"
                         if len(documents) != 1 else "expected a Kubernetes Job manifest (a mapping)",
                         context=str(path))
    template = documents[0]
    kind, api = template.get("kind"), template.get("apiVersion")
    if kind != "Job" or api != "batch/v1":
        raise UsageError(f"the Job template is a {kind or 'manifest without kind'} ({api or 'no apiVersion'}), "
                         "not a Job (batch/v1)", context=str(path),
                         hint="the template must be `apiVersion: batch/v1` and `kind: Job`")
    spec = template.get("spec") or {}
    pod = ((spec.get("template") or {}).get("spec")) or {}
    if not isinstance(spec, dict) or not isinstance(pod, dict) or not isinstance(pod.get("containers", []), list):
        raise UsageError("spec.template.spec.containers must be a list", context=str(path))
    policy = pod.get("restartPolicy")
    if policy not in (None, "Never", "OnFailure"):
        raise UsageError(f"spec.template.spec.restartPolicy is {policy!r}; a Job needs Never or OnFailure",
                         context=str(path))
    return template


KNOWN_KEYS = (
    "kube-context", "repository-uri", "kube-job-template-path", "namespace", "service-account",
    "image-pull-secrets", "env", "resources", "node-selector", "tolerations", "backoff-limit",
    "active-deadline-seconds", "ttl-seconds-after-finished",
)


def parse_config(config: Mapping[str, Any], base_dir: Path) -> KubernetesConfig:
    import difflib

    for key in config:
        if key not in KNOWN_KEYS:
            close = difflib.get_close_matches(str(key), KNOWN_KEYS, n=1)
            raise UsageError(f"unknown --backend-config key {key!r} for the kubernetes backend",
                             hint=(f"did you mean {close[0]!r}? " if close else "")
                             + f"known keys: {', '.join(KNOWN_KEYS)}")
    template_path = _string(config, "kube-job-template-path")
    template = path = None
    if template_path is not None:
        path = (base_dir / template_path).resolve()
        template = load_template(path)
    return KubernetesConfig(
        repository_uri=_repository(_string(config, "repository-uri", required=True)),
        kube_context=_string(config, "kube-context"),
        job_template=template,
        job_template_path=path,
        namespace=_dns("namespace", _string(config, "namespace"), _DNS_LABEL, "namespace name"),
        service_account=_dns("service-account", _string(config, "service-account"), _DNS_SUBDOMAIN,
                             "ServiceAccount name"),
        image_pull_secrets=_pull_secrets(config),
        env=_string_map(config, "env", _ENV_NAME, "environment variable name"),
        resources=_resources(config),
        node_selector=_string_map(config, "node-selector", _LABEL_KEY, "label key"),
        tolerations=_tolerations(config),
        backoff_limit=_int(config, "backoff-limit", 0),
        active_deadline_seconds=_int(config, "active-deadline-seconds", 1),
        ttl_seconds_after_finished=_int(config, "ttl-seconds-after-finished", 0),
    )


def _repository(value: str | None) -> str:
    assert value is not None
    name = value.rsplit("/", 1)[-1]
    if "@" in value or any(c.isspace() for c in value) or ":" in name:
        raise UsageError(f"{_where('repository-uri')}: {value!r} must be a repository without tag or digest",
                         hint="for example registry.example.com/team/project; mlexec adds the content tag")
    path = value.split("/", 1)[1] if "/" in value else value
    if path != path.lower():
        raise UsageError(f"{_where('repository-uri')}: {value!r}: repository paths must be lower-case")
    return value
