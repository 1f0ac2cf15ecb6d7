"""Talking to the cluster: the kubeconfig, the namespace, permissions, and readable API errors.

The official ``kubernetes`` client is imported here, inside functions, never
when the plugin loads.
"""

from __future__ import annotations

import json
import os
from typing import Any

from attrs import frozen

from mlexec_core.errors import BackendError

#: MLflow's override of the tracking URI the pod gets.
TRACKING_URI_VAR = "KUBE_MLFLOW_TRACKING_URI"


@frozen
class Cluster:
    """A connection to one cluster (context) as the kubeconfig describes it."""

    api_client: Any
    #: The context used, or ``None`` for the in-cluster service account.
    context: str | None
    #: The context's default namespace.
    default_namespace: str
    server: str

    def batch(self) -> Any:
        from kubernetes import client

        return client.BatchV1Api(self.api_client)

    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api_client)

    @property
    def where(self) -> str:
        return f"context {self.context!r} ({self.server})" if self.context else f"the cluster at {self.server}"


def _kubeconfig_files() -> list[str]:
    raw = os.environ.get("KUBECONFIG")
    if raw:
        return [p for p in raw.split(os.pathsep) if p]
    return [os.path.expanduser("~/.kube/config")]


def connect(context: str | None) -> Cluster:
    """Load the kubeconfig (and ``context``); fall back to the in-cluster account as MLflow does."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    files = _kubeconfig_files()
    existing = [f for f in files if os.path.isfile(f)]
    if not existing:
        if context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            configuration = client.Configuration()
            try:
                config.load_incluster_config(client_configuration=configuration)
            except ConfigException as exc:
                raise BackendError(f"cannot use the in-cluster service account: {exc}") from None
            namespace = _incluster_namespace()
            return Cluster(client.ApiClient(configuration), None, namespace, configuration.host)
        raise BackendError(
            f"no kubeconfig found (looked for {', '.join(files)})",
            hint="point $KUBECONFIG at your cluster's kubeconfig, or create ~/.kube/config "
                 "(your cluster provider's CLI writes it, e.g. `gcloud container clusters get-credentials`)",
        )
    try:
        contexts, active = config.list_kube_config_contexts(config_file=existing[0] if len(existing) == 1 else None)
    except ConfigException as exc:
        raise BackendError(f"the kubeconfig cannot be read: {exc}", context=os.pathsep.join(existing),
                           hint="check the file with `kubectl config view`") from None
    except Exception as exc:  # YAML errors and the like
        raise BackendError(f"the kubeconfig cannot be read: {type(exc).__name__}: {exc}",
                           context=os.pathsep.join(existing)) from None
    names = [c.get("name") for c in contexts or ()]
    if context is not None and context not in names:
        raise BackendError(
            f"unknown kube-context {context!r}",
            context=os.pathsep.join(existing),
            hint=f"contexts in the kubeconfig: {', '.join(names) or 'none'} (`kubectl config get-contexts`)",
        )
    if context is None and not active:
        raise BackendError("the kubeconfig has no current context", context=os.pathsep.join(existing),
                           hint=f"set kube-context in the backend config (contexts: {', '.join(names) or 'none'})")
    chosen = next(c for c in contexts if c.get("name") == (context or active.get("name")))
    configuration = client.Configuration()
    try:
        config.load_kube_config(config_file=existing[0] if len(existing) == 1 else None,
                                context=chosen["name"], client_configuration=configuration,
                                persist_config=False)
    except ConfigException as exc:
        raise BackendError(f"kube-context {chosen['name']!r} cannot be used: {exc}",
                           context=os.pathsep.join(existing)) from None
    namespace = (chosen.get("context") or {}).get("namespace") or "default"
    return Cluster(client.ApiClient(configuration), chosen["name"], namespace, configuration.host)


def context_namespace(context: str | None) -> str:
    """The default namespace of ``context`` as the kubeconfig says, read offline; "default" when unknown."""
    try:
        from kubernetes import config

        files = [f for f in _kubeconfig_files() if os.path.isfile(f)]
        if not files:
            return "default"
        contexts, active = config.list_kube_config_contexts(config_file=files[0] if len(files) == 1 else None)
        chosen = next((c for c in contexts if c.get("name") == (context or (active or {}).get("name"))), None)
        return ((chosen or {}).get("context") or {}).get("namespace") or "default"
    except Exception:
        return "default"


def _incluster_namespace() -> str:
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace", encoding="utf-8") as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


def api_message(exc: Any) -> str:
    """The ``message`` of a Kubernetes Status in an ApiException, else its reason."""
    body = getattr(exc, "body", None)
    if body:
        try:
            data = json.loads(body)
            if isinstance(data, dict) and data.get("message"):
                return str(data["message"])
        except (TypeError, ValueError):
            pass
    return f"{getattr(exc, 'status', '')} {getattr(exc, 'reason', '')}".strip()


def api_error(exc: Any, doing: str, cluster: Cluster, namespace: str) -> BackendError:
    """A readable :class:`BackendError` for a failed API call."""
    status = getattr(exc, "status", None)
    message = api_message(exc)
    if status == 401:
        return BackendError(f"{doing}: the cluster did not accept the credentials ({message})",
                            context=cluster.where, hint="refresh them (log in again with your provider's CLI)")
    if status == 403:
        return BackendError(f"{doing}: forbidden by RBAC: {message}", context=cluster.where,
                            hint=f"ask an administrator for a Role in namespace {namespace!r} that allows "
                                 "create/get/watch/delete on jobs and get/list/watch on pods and pods/log, "
                                 "or use another namespace")
    if status == 404 and "namespace" in message.lower():
        return BackendError(f"{doing}: namespace {namespace!r} does not exist", context=cluster.where,
                            hint=f"create it (kubectl create namespace {namespace}) or set namespace in the "
                                 "backend config")
    if status is None or status == 0:
        return BackendError(f"{doing}: cannot reach the cluster: {exc}", context=cluster.where,
                            hint="check the server address in the kubeconfig and your network")
    return BackendError(f"{doing}: the API server answered {status}: {message}", context=cluster.where)


def is_connection_error(exc: BaseException) -> bool:
    import urllib3

    return isinstance(exc, (urllib3.exceptions.HTTPError, OSError))


def check_namespace(cluster: Cluster, namespace: str, services: bool = False) -> None:
    """The namespace exists and we may create and watch Jobs in it (and, with ``services``, create
    and delete Services: the headless Service of a run over many pods).

    Reading a namespace is itself often forbidden to namespaced users, so a 403
    there is not an error: the access review below (or the create itself) decides.
    """
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = cluster.core()
    try:
        core.read_namespace(namespace)
    except ApiException as exc:
        if exc.status == 404:
            raise BackendError(f"namespace {namespace!r} does not exist", context=cluster.where,
                               hint=f"create it (kubectl create namespace {namespace}) or set namespace in the "
                                    "backend config") from None
        if exc.status not in (403,):
            raise api_error(exc, f"checking namespace {namespace!r}", cluster, namespace) from None
    except Exception as exc:
        if is_connection_error(exc):
            raise BackendError(f"cannot reach the cluster: {_short(exc)}", context=cluster.where,
                               hint="check the server address in the kubeconfig, and that the cluster is up") \
                from None
        raise
    auth = client.AuthorizationV1Api(cluster.api_client)
    needed = [("create", "batch", "jobs"), ("watch", "batch", "jobs"), ("delete", "batch", "jobs")]
    if services:
        needed += [("create", "", "services"), ("delete", "", "services")]
    for verb, group, resource in needed:
        review = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=client.V1ResourceAttributes(namespace=namespace, verb=verb, group=group,
                                                            resource=resource)))
        try:
            result = auth.create_self_subject_access_review(review)
        except ApiException:
            return  # no access reviews on this server: the create will tell
        status = result.status
        if status is not None and status.allowed is False:
            why = f" ({status.reason})" if status.reason else ""
            raise BackendError(
                f"RBAC forbids {verb} on {resource} in namespace {namespace!r}{why}", context=cluster.where,
                hint=f"ask an administrator for a Role in {namespace!r} that allows create/get/watch/delete on "
                     "jobs and get/list/watch on pods and pods/log"
                     + (" and create/delete on services" if services else "") + ", or use another namespace")


def _short(exc: BaseException) -> str:
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    return text.splitlines()[0][:200] if text else type(exc).__name__
