"""A Kubernetes API server double for mlexec-kubernetes's tests.

No real Kubernetes API server can run on these machines, so the tests drive the
real ``kubernetes`` client against :class:`FakeCluster`: an HTTP server on
127.0.0.1 that implements exactly the endpoints the plugin uses (namespaces,
access reviews, Jobs and pods with list/watch, pod logs, delete), with Job
status, pods and logs scripted by each test.  It keeps a resourceVersion'd
event history, so watches resume like a real server's, and it can break a watch
mid-stream or answer 410 Gone.
"""

from __future__ import annotations

import copy
import json
import re
import textwrap
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlparse


# -- the API server double ----------------------------------------------------------------


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


class FakeCluster:
    """State and scripting for the API server double."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.rv = 1000
        self.namespaces = {"default", "ml"}
        self.jobs: dict[tuple[str, str], dict] = {}
        self.pods: dict[tuple[str, str], dict] = {}
        self.services: dict[tuple[str, str], dict] = {}
        #: called (in the server's thread, under no lock) with (namespace, pod) for every pod deleted
        self.pod_deleted_hooks: list = []
        #: (time, text) of each log line written, per pod
        self.logs: dict[tuple[str, str], list[tuple[float, bytes]]] = {}
        self.drop_logs = 0  # log streams to break after their first line
        self.logs_closed: set[tuple[str, str]] = set()
        self.history: list[tuple[int, str, str, dict]] = []  # (rv, resource, type, object)
        self.requests: list[tuple[str, str, dict, object]] = []
        self.forbidden: set[tuple[str, str]] = set()  # (verb, resource) answered 403
        self.denied_reviews: set[str] = set()  # verbs an access review says no to
        self.denied_services = False  # an access review says no to every verb on services
        self.drop_watches: dict[str, int] = {}  # resource -> watches to break after their first event
        self.expire_next_watch: set[str] = set()  # resource -> answer the next watch with 410
        self.scenario = None  # called in a thread as scenario(cluster, namespace, job_name)
        self.closing = False

    # -- scripting helpers (the "kubelet" and "job controller") --

    def _emit(self, resource: str, kind: str, obj: dict) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.history.append((self.rv, resource, kind, copy.deepcopy(obj)))
        self.cond.notify_all()

    def job(self, namespace: str, name: str) -> dict | None:
        with self.cond:
            return copy.deepcopy(self.jobs.get((namespace, name)))

    def set_job_status(self, namespace: str, name: str, **status) -> None:
        with self.cond:
            job = self.jobs.get((namespace, name))
            if job is None:
                return
            job["status"].update(status)
            self._emit("jobs", "MODIFIED", job)

    def job_condition(self, namespace: str, name: str, type_: str, reason: str = "", message: str = "") -> None:
        cond = {"type": type_, "status": "True", "reason": reason, "message": message,
                "lastTransitionTime": "2026-01-01T00:00:00Z"}
        status = {"conditions": [cond], "active": 0}
        status["succeeded" if type_ == "Complete" else "failed"] = 1
        self.set_job_status(namespace, name, **status)

    def start_pod(self, namespace: str, job_name: str, state: dict | None = None) -> str:
        """A pod of the Job, Pending, then with its first container in ``state`` (running by default)."""
        with self.cond:
            job = self.jobs[(namespace, job_name)]
            template = job["spec"]["template"]
            container = template["spec"]["containers"][0]["name"]
            name = f"{job_name}-{uuid.uuid4().hex[:5]}"
            labels = {**(template.get("metadata", {}).get("labels") or {}), "job-name": job_name,
                      "batch.kubernetes.io/job-name": job_name}
            pod = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": name, "namespace": namespace, "labels": labels, "uid": str(uuid.uuid4())},
                   "spec": copy.deepcopy(template["spec"]),
                   "status": {"phase": "Pending", "containerStatuses": [
                       {"name": container, "ready": False, "restartCount": 0, "image": "",
                        "imageID": "", "state": {"waiting": {"reason": "ContainerCreating"}}}]}}
            self.pods[(namespace, name)] = pod
            self.logs[(namespace, name)] = []
            self._emit("pods", "ADDED", pod)
            job["status"].update({"active": 1, "startTime": "2026-01-01T00:00:00Z"})
            self._emit("jobs", "MODIFIED", job)
        self.set_container(namespace, name, state or {"running": {"startedAt": "2026-01-01T00:00:01Z"}})
        return name

    def set_container(self, namespace: str, pod_name: str, state: dict, phase: str | None = None) -> None:
        with self.cond:
            pod = self.pods.get((namespace, pod_name))
            if pod is None:
                return
            cs = pod["status"]["containerStatuses"][0]
            cs["state"] = state
            if phase:
                pod["status"]["phase"] = phase
            elif "running" in state:
                pod["status"]["phase"] = "Running"
            elif "terminated" in state:
                pod["status"]["phase"] = "Succeeded" if state["terminated"].get("exitCode") == 0 else "Failed"
            if "terminated" in state:  # the container's log ends
                self.logs_closed.add((namespace, pod_name))
            self._emit("pods", "MODIFIED", pod)

    def log(self, namespace: str, pod_name: str, text: str) -> None:
        """Lines written by the container (``text`` may hold several; a last one without newline too)."""
        with self.cond:
            for line in text.encode().splitlines(keepends=True):
                self.logs[(namespace, pod_name)].append((time.time(), line))
            self.cond.notify_all()

    def log_requests(self) -> list[dict]:
        return [query for method, path, query, _ in self.requests if method == "GET" and path.endswith("/log")]

    def finish_pod(self, namespace: str, pod_name: str, exit_code: int = 0, reason: str | None = None) -> None:
        term = {"exitCode": exit_code, "reason": reason or ("Completed" if exit_code == 0 else "Error"),
                "startedAt": "2026-01-01T00:00:01Z", "finishedAt": "2026-01-01T00:00:02Z"}
        self.set_container(namespace, pod_name, {"terminated": term})

    def deleted_jobs(self) -> list[tuple[str, str | None]]:
        """(path, propagation policy) of every Job delete request (the policy as a query parameter or in
        the body's DeleteOptions, as a real server accepts it)."""
        return [(path, (query.get("propagationPolicy") or [None])[0] or (body or {}).get("propagationPolicy"))
                for method, path, query, body in self.requests if method == "DELETE" and "/jobs/" in path]

    def watch_requests(self, resource: str) -> list[dict]:
        return [query for method, path, query, _ in self.requests
                if method == "GET" and path.endswith("/" + resource) and query.get("watch") == ["true"]]

    def created_jobs(self) -> list[dict]:
        return [body for method, path, _, body in self.requests if method == "POST" and path.endswith("/jobs")]

    def wait_for(self, predicate, timeout: float = 60) -> bool:
        """Wait until ``predicate(cluster)`` holds (checked on every change)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.2))
        return True

    # -- the API --

    def create_job(self, namespace: str, body: dict) -> tuple[int, dict]:
        if ("create", "jobs") in self.forbidden:
            return 403, _status(403, "Forbidden", f'jobs.batch is forbidden: User "alice" cannot create '
                                                  f'resource "jobs" in API group "batch" in the namespace '
                                                  f'"{namespace}"')
        if namespace not in self.namespaces:
            return 404, _status(404, "NotFound", f'namespaces "{namespace}" not found')
        with self.cond:
            name = body["metadata"]["name"]
            if (namespace, name) in self.jobs:
                return 409, _status(409, "AlreadyExists", f'jobs.batch "{name}" already exists')
            job = copy.deepcopy(body)
            job["metadata"].update({"uid": str(uuid.uuid4()), "creationTimestamp": "2026-01-01T00:00:00Z"})
            job["status"] = {}
            self.jobs[(namespace, name)] = job
            self._emit("jobs", "ADDED", job)
            created = copy.deepcopy(job)
        if self.scenario is not None:
            threading.Thread(target=self.scenario, args=(self, namespace, name), daemon=True).start()
        return 201, created

    def delete_job(self, namespace: str, name: str, body: dict) -> tuple[int, dict]:
        with self.cond:
            job = self.jobs.pop((namespace, name), None)
            if job is None:
                return 404, _status(404, "NotFound", f'jobs.batch "{name}" not found')
            policy = (body or {}).get("propagationPolicy")
            deleted = []
            if policy in ("Foreground", "Background"):  # the garbage collector removes the pods
                for key in [k for k, p in self.pods.items()
                            if k[0] == namespace and p["metadata"]["labels"].get("job-name") == name]:
                    pod = self.pods.pop(key)
                    self.logs_closed.add(key)
                    self._emit("pods", "DELETED", pod)
                    deleted.append(key)
            # ... and what the Job owns (a headless Service), whatever the policy (Orphan aside)
            if policy != "Orphan":
                uid = job["metadata"]["uid"]
                for key in [k for k, svc in self.services.items()
                            if any(o.get("uid") == uid for o in svc["metadata"].get("ownerReferences") or ())]:
                    self._emit("services", "DELETED", self.services.pop(key))
            self._emit("jobs", "DELETED", job)
        for key in deleted:
            for hook in list(self.pod_deleted_hooks):
                hook(*key)
        return 200, _status(200, "", "") | {"status": "Success"}

    def delete_pod(self, namespace: str, name: str) -> None:
        with self.cond:
            pod = self.pods.pop((namespace, name), None)
            if pod is None:
                return
            self.logs_closed.add((namespace, name))
            self._emit("pods", "DELETED", pod)
        for hook in list(self.pod_deleted_hooks):
            hook(namespace, name)

    def create_service(self, namespace: str, body: dict) -> tuple[int, dict]:
        if ("create", "services") in self.forbidden:
            return 403, _status(403, "Forbidden", f'services is forbidden: User "alice" cannot create '
                                                  f'resource "services" in API group "" in the namespace '
                                                  f'"{namespace}"')
        with self.cond:
            name = body["metadata"]["name"]
            if (namespace, name) in self.services:
                return 409, _status(409, "AlreadyExists", f'services "{name}" already exists')
            svc = copy.deepcopy(body)
            svc["metadata"].update({"uid": str(uuid.uuid4()), "creationTimestamp": "2026-01-01T00:00:00Z"})
            self.services[(namespace, name)] = svc
            self._emit("services", "ADDED", svc)
            return 201, copy.deepcopy(svc)

    def delete_service(self, namespace: str, name: str) -> tuple[int, dict]:
        with self.cond:
            svc = self.services.pop((namespace, name), None)
            if svc is None:
                return 404, _status(404, "NotFound", f'services "{name}" not found')
            self._emit("services", "DELETED", svc)
            return 200, copy.deepcopy(svc)  # as a real server answers: the Service deleted


def _matches(obj: dict, query: dict) -> bool:
    field = (query.get("fieldSelector") or [""])[0]
    if field:
        key, _, value = field.partition("=")
        if key == "metadata.name" and obj["metadata"]["name"] != value:
            return False
    labels = (query.get("labelSelector") or [""])[0]
    for part in filter(None, labels.split(",")):
        key, _, value = part.partition("=")
        if (obj["metadata"].get("labels") or {}).get(key) != value:
            return False
    return True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    cluster: FakeCluster

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _body(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else None

    def _route(self, method: str) -> None:
        url = urlparse(self.path)
        query = parse_qs(url.query)
        body = self._body() if method in ("POST", "DELETE", "PUT", "PATCH") else None
        c = self.cluster
        with c.cond:
            c.requests.append((method, url.path, query, body))
        path = url.path
        m = re.fullmatch(r"/api/v1/namespaces/([^/]+)", path)
        if m and method == "GET":
            if ("get", "namespaces") in c.forbidden:
                return self._send(403, _status(403, "Forbidden", "namespaces is forbidden"))
            if m.group(1) in c.namespaces:
                return self._send(200, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": m.group(1)},
                                        "status": {"phase": "Active"}})
            return self._send(404, _status(404, "NotFound", f'namespaces "{m.group(1)}" not found'))
        if path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews" and method == "POST":
            verb = body["spec"]["resourceAttributes"]["verb"]
            allowed = verb not in c.denied_reviews and not (
                c.denied_services and body["spec"]["resourceAttributes"]["resource"] == "services")
            return self._send(201, {**body, "status": {"allowed": allowed, **(
                {} if allowed else {"reason": 'RBAC: no RoleBinding allows this for User "alice"'})}})
        m = re.fullmatch(r"/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/]+))?", path)
        if m:
            ns, name = m.groups()
            if method == "POST" and name is None:
                return self._send(*c.create_job(ns, body))
            if method == "DELETE" and name:
                policy = (query.get("propagationPolicy") or [None])[0] or (body or {}).get("propagationPolicy")
                return self._send(*c.delete_job(ns, name, {"propagationPolicy": policy}))
            if method == "GET" and name is None:
                return self._list_or_watch("jobs", c.jobs, ns, query)
            if method == "GET" and name:
                job = c.job(ns, name)
                return self._send(200, job) if job else self._send(404, _status(404, "NotFound", "not found"))
        m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/services(?:/([^/]+))?", path)
        if m:
            ns, name = m.groups()
            if method == "POST" and name is None:
                return self._send(*c.create_service(ns, body))
            if method == "DELETE" and name:
                return self._send(*c.delete_service(ns, name))
            if method == "GET" and name:
                with c.cond:
                    svc = copy.deepcopy(c.services.get((ns, name)))
                return self._send(200, svc) if svc else self._send(404, _status(404, "NotFound", "not found"))
        m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods(?:/([^/]+)(/log)?)?", path)
        if m and method == "GET":
            ns, pod, log = m.groups()
            if pod is None:
                return self._list_or_watch("pods", c.pods, ns, query)
            if log:
                return self._log(ns, pod, query)
            with c.cond:
                obj = copy.deepcopy(c.pods.get((ns, pod)))
            return self._send(200, obj) if obj else self._send(404, _status(404, "NotFound", "not found"))
        self._send(404, _status(404, "NotFound", f"the double does not serve {method} {path}"))

    def _list_or_watch(self, resource: str, table: dict, ns: str, query: dict) -> None:
        c = self.cluster
        if query.get("watch") != ["true"]:
            with c.cond:
                items = [copy.deepcopy(o) for (n, _), o in table.items() if n == ns and _matches(o, query)]
                version = str(c.rv)
            return self._send(200, {"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": version},
                                    "items": items})
        since = int((query.get("resourceVersion") or ["0"])[0] or 0)
        timeout = int((query.get("timeoutSeconds") or ["60"])[0])
        self._start_stream("application/json")
        with c.cond:
            if resource in c.expire_next_watch:
                c.expire_next_watch.discard(resource)
                event = {"type": "ERROR", "object": _status(410, "Expired", "too old resource version")}
                self._chunk(json.dumps(event).encode() + b"\n")
                return self._end_stream()
            drop = c.drop_watches.get(resource, 0) > 0
            if drop:
                c.drop_watches[resource] -= 1
        deadline = time.monotonic() + timeout
        sent = 0
        while True:
            with c.cond:
                pending = [(rv, kind, obj) for rv, res, kind, obj in c.history
                           if res == resource and rv > since and obj["metadata"].get("namespace") == ns
                           and _matches(obj, query)]
                if not pending:
                    left = deadline - time.monotonic()
                    if left <= 0 or c.closing:
                        break
                    c.cond.wait(min(left, 0.5))
                    continue
            for rv, kind, obj in pending:
                since = rv
                self._chunk(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
                sent += 1
                if drop:  # break the connection in the middle of the next chunk
                    self.wfile.write(b"400\r\n{\"type\": \"MODI")
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
        self._end_stream()

    def _log(self, ns: str, pod: str, query: dict) -> None:
        c = self.cluster
        key = (ns, pod)
        if key not in c.logs:
            return self._send(404, _status(404, "NotFound", f'pods "{pod}" not found'))
        follow = query.get("follow") == ["true"]
        stamps = query.get("timestamps") == ["true"]
        since = query.get("sinceSeconds")
        oldest = time.time() - int(since[0]) if since else 0
        self._start_stream("text/plain")
        with c.cond:
            drop = c.drop_logs > 0
            if drop:
                c.drop_logs -= 1
        sent = 0
        while True:
            with c.cond:
                lines = c.logs.get(key, [])[sent:]
                closed = key in c.logs_closed or key not in c.pods
                if not lines and (closed or not follow or c.closing):
                    break
                if not lines:
                    c.cond.wait(0.5)
                    continue
            for stamp, line in lines:
                sent += 1
                if stamp < oldest:
                    continue
                if stamps:
                    when = time.gmtime(stamp)
                    line = (time.strftime("%Y-%m-%dT%H:%M:%S", when)
                            + f".{int(stamp % 1 * 1e9):09d}Z ").encode() + line
                self._chunk(line)
                if drop:  # break the connection in the middle of the next chunk
                    self.wfile.write(b"100\r\npartial")
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
        self._end_stream()

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_DELETE(self) -> None:
        self._route("DELETE")


def write_kubeconfig(path: Path, server: str, contexts=("test",), namespace: str | None = None) -> Path:
    ctx = "\n".join(
        f"- name: {name}\n  context: {{cluster: fake, user: alice{', namespace: ' + namespace if namespace else ''}}}"
        for name in contexts)
    path.write_text(textwrap.dedent(f"""\
        apiVersion: v1
        kind: Config
        clusters:
        - name: fake
          cluster: {{server: "{server}"}}
        users:
        - name: alice
          user: {{token: not-a-secret}}
        contexts:
        """) + ctx + f"\ncurrent-context: {contexts[0]}\n")
    return path


def ci_unavailable(piece: str, reason: str, how: str) -> None:
    """Skip (or, under $CI, fail) a test whose infrastructure is missing."""
    from mlexec_core.testing import missing_infrastructure

    missing_infrastructure(piece, reason, how=how)


def failing(case: str):
    """A scenario that fails the Job (exit code, OOMKilled, deadline, image pull), and what the reason says."""

    def scenario(c, ns, job):
        if case == "pull":
            pod = c.start_pod(ns, job, {"waiting": {"reason": "ErrImagePull", "message": "connection refused"}})
            c.set_container(ns, pod, {"waiting": {"reason": "ImagePullBackOff",
                                                  "message": "Back-off pulling image"}}, phase="Pending")
            return
        pod = c.start_pod(ns, job)
        c.log(ns, pod, "starting\n")
        if case == "deadline":
            c.set_container(ns, pod, {"terminated": {"exitCode": 143, "reason": "Error"}})
            c.job_condition(ns, job, "Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
            return
        c.finish_pod(ns, pod, 137 if case == "oom" else 3, "OOMKilled" if case == "oom" else None)
        c.job_condition(ns, job, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")

    expected = {"exit": "exited with status 3", "oom": "OOMKilled", "deadline": "DeadlineExceeded",
                "pull": "ImagePullBackOff"}[case]
    return scenario, expected
