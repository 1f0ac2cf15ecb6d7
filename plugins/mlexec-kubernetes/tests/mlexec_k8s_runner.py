"""Test scaffolding, not a product feature: a pod runner that turns the API server double's
scripted pods into real executions on the Docker engine of this machine, as kind runs nodes
in Docker (no real Kubernetes API server can run here: /work/shared/INFRA.md).

:class:`PodRunner` plays the Job controller and the kubelet for each Job created on the
double (it is the double's ``scenario``):

* the controller: one pod per index for an Indexed Job (``completionMode: Indexed``,
  ``completions`` pods, each with the ``batch.kubernetes.io/job-completion-index``
  annotation, ``JOB_COMPLETION_INDEX``, hostname ``<job>-<index>`` and the template's
  ``subdomain``), else one pod; a pod that fails is judged by the Job's ``podFailurePolicy``
  (``Ignore``, ``Count``, ``FailJob``; no rule matched: ``Count``) and ``backoffLimit``, and
  replaced by a new pod of the same index, or the Job gets its ``Failed`` condition (the
  other pods are stopped first, as a Job's failure deletes its active pods); every index
  succeeded: ``Complete``.
* the kubelet: each pod's first container runs on the real engine (the image pulled by
  digest from the loopback registry; the pod's command, args, env, workingDir; ``hostPath``
  volumes as binds; a termination-message file at ``/dev/termination-log``) on a network of
  the test's own where it has the aliases of its pod DNS names
  (``<hostname>.<subdomain>``, ``<hostname>.<subdomain>.<ns>.svc.cluster.local``); its output
  goes to the double's log endpoint line by line, its exit code, OOMKilled and termination
  message to the pod's status.  Deleting the pod (or its Job) stops and removes the container.
* :meth:`PodRunner.preempt` does what a preemption does: the pod gets the ``DisruptionTarget``
  condition, its container is stopped, the pod is Failed.

Every container it started is removed by :meth:`PodRunner.close` (the fixture's teardown),
which also says whether any was left running.
"""

from __future__ import annotations

import copy
import queue
import tempfile
import threading
import time
import uuid
from pathlib import Path

#: The label on every container the runner starts (value: the runner's id).
LABEL = "mlexec.test.k8s-runner"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class PodRunner:
    def __init__(self, cluster, engine, workdir: Path) -> None:
        self.cluster = cluster
        self.engine = engine
        self.id = uuid.uuid4().hex[:10]
        self.network = f"mlexec-k8s-{self.id}"
        self.workdir = Path(tempfile.mkdtemp(prefix="pods-", dir=workdir))
        engine._call("POST", "/networks/create", body={"Name": self.network, "CheckDuplicate": True,
                                                       "Labels": {LABEL: self.id}})
        #: (namespace, pod) -> container id, for every container started
        self.containers: dict[tuple[str, str], str] = {}
        self.pulled: list[str] = []
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str], queue.Queue] = {}
        cluster.scenario = self.run_job
        cluster.pod_deleted_hooks.append(self._pod_deleted)

    # -- the Job controller ---------------------------------------------------------------

    def run_job(self, c, ns: str, job_name: str) -> None:
        job = c.job(ns, job_name)
        spec = job["spec"]
        indexed = spec.get("completionMode") == "Indexed"
        completions = spec.get("completions") or 1
        backoff = spec.get("backoffLimit", 6)
        events: queue.Queue = queue.Queue()
        with self._lock:
            self._jobs[(ns, job_name)] = events
        active: dict[int, str] = {}
        for index in range(completions):
            active[index] = self._start_pod(ns, job, index, indexed, events)
        succeeded: set[int] = set()
        failed = 0
        while True:
            event = events.get()
            if event is None or c.job(ns, job_name) is None:  # the Job was deleted
                return
            index, pod, terminated, disrupted = event
            if active.get(index) != pod:
                continue
            code = terminated.get("exitCode")
            if code == 0:
                succeeded.add(index)
                del active[index]
                if len(succeeded) == completions:
                    c.set_job_status(ns, job_name, active=0, succeeded=len(succeeded), conditions=[
                        self._condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods")])
                    return
                continue
            action = self._judge(spec.get("podFailurePolicy"), terminated, disrupted)
            if action != "Ignore":
                failed += 1
            if action == "FailJob" or (action == "Count" and failed > backoff):
                del active[index]
                for other in list(active.values()):  # a failed Job's active pods are deleted
                    self._stop_container(ns, other)
                reason, message = (("PodFailurePolicy", f"Container failed with exit code {code} matching "
                                    "FailJob rule") if action == "FailJob"
                                   else ("BackoffLimitExceeded", "Job has reached the specified backoff limit"))
                c.set_job_status(ns, job_name, active=0, failed=failed,
                                 conditions=[self._condition("Failed", reason, message)])
                return
            c.set_job_status(ns, job_name, failed=failed)
            if c.job(ns, job_name) is None:
                return
            active[index] = self._start_pod(ns, c.job(ns, job_name) or job, index, indexed, events)

    @staticmethod
    def _condition(type_: str, reason: str, message: str) -> dict:
        return {"type": type_, "status": "True", "reason": reason, "message": message,
                "lastTransitionTime": _now()}

    @staticmethod
    def _judge(policy: dict | None, terminated: dict, disrupted: bool) -> str:
        """A pod failure under the Job's podFailurePolicy: the first rule that matches, else Count."""
        for rule in (policy or {}).get("rules") or ():
            conditions = rule.get("onPodConditions")
            if conditions:
                if disrupted and any(c.get("type") == "DisruptionTarget" for c in conditions):
                    return rule["action"]
                continue
            codes = rule.get("onExitCodes") or {}
            code = terminated.get("exitCode")
            values = set(codes.get("values") or ())
            if code is not None and ((codes.get("operator") == "In" and code in values)
                                     or (codes.get("operator") == "NotIn" and code not in values)):
                return rule["action"]
        return "Count"

    # -- the kubelet ----------------------------------------------------------------------

    def _start_pod(self, ns: str, job: dict, key: int, indexed: bool, events: queue.Queue) -> str:
        index = key if indexed else None
        c = self.cluster
        job_name = job["metadata"]["name"]
        template = job["spec"]["template"]
        pod_spec = copy.deepcopy(template["spec"])
        suffix = uuid.uuid4().hex[:5]
        name = f"{job_name}-{index}-{suffix}" if index is not None else f"{job_name}-{suffix}"
        labels = {**(template.get("metadata", {}).get("labels") or {}), "job-name": job_name,
                  "batch.kubernetes.io/job-name": job_name}
        annotations = {}
        if index is not None:
            annotations[INDEX_ANNOTATION] = str(index)
            labels["batch.kubernetes.io/job-completion-index"] = str(index)
            pod_spec["hostname"] = f"{job_name}-{index}"
            for container in pod_spec["containers"]:
                container["env"] = list(container.get("env") or []) + [
                    {"name": "JOB_COMPLETION_INDEX", "value": str(index)}]
        main = pod_spec["containers"][0]
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": annotations,
                            "uid": str(uuid.uuid4())},
               "spec": pod_spec,
               "status": {"phase": "Pending", "conditions": [], "containerStatuses": [
                   {"name": main["name"], "ready": False, "restartCount": 0, "image": main["image"], "imageID": "",
                    "state": {"waiting": {"reason": "ContainerCreating"}}}]}}
        with c.cond:
            c.pods[(ns, name)] = pod
            c.logs[(ns, name)] = []
            c._emit("pods", "ADDED", pod)
        threading.Thread(target=self._run_pod, args=(ns, name, key, pod_spec, events), daemon=True,
                         name=f"k8s-runner-{name}").start()
        return name

    def _pull(self, image: str) -> str:
        """The image by digest from the registry (``repo:tag@sha256:...`` is pulled as ``repo@sha256:...``)."""
        if "@" in image:
            repo, digest = image.split("@", 1)
            if ":" in repo.rsplit("/", 1)[-1]:
                repo = repo.rsplit(":", 1)[0]
            image = f"{repo}@{digest}"
        conn, resp = self.engine._open("POST", "/images/create", params={"fromImage": image}, timeout=300)
        try:
            body = resp.read()
        finally:
            conn.close()
        if b'"error"' in body:
            raise RuntimeError(f"pulling {image}: {body[-300:]!r}")
        self.pulled.append(image)
        return image

    def _run_pod(self, ns: str, name: str, key: int, spec: dict, events: queue.Queue) -> None:
        c = self.cluster
        main = spec["containers"][0]
        term_log = self.workdir / f"{name}.termination-log"
        term_log.write_text("")
        binds = [f"{term_log}:/dev/termination-log"]
        volumes = {v["name"]: v for v in spec.get("volumes") or ()}
        for mount in main.get("volumeMounts") or ():
            volume = volumes.get(mount["name"]) or {}
            if "hostPath" in volume:
                source = Path(volume["hostPath"]["path"])
            elif "persistentVolumeClaim" in volume:  # a claim is a folder of the runner's, by claim name
                source = self.workdir / "claims" / volume["persistentVolumeClaim"]["claimName"]
            elif "emptyDir" in volume:
                if volume["emptyDir"].get("medium") == "Memory":
                    continue  # /dev/shm: the engine's own
                source = self.workdir / f"{name}.{mount['name']}"
            else:
                continue
            if mount.get("subPath"):
                source = source / mount["subPath"]
            source.mkdir(parents=True, exist_ok=True)
            binds.append(f"{source}:{mount['mountPath']}")
        hostname = spec.get("hostname") or name
        aliases = [hostname]
        if spec.get("subdomain"):
            aliases += [f"{hostname}.{spec['subdomain']}", f"{hostname}.{spec['subdomain']}.{ns}.svc.cluster.local"]
        body = {
            "Image": self._pull(main["image"]),
            "Entrypoint": main.get("command"),
            "Cmd": main.get("args"),
            "Env": [f"{e['name']}={e.get('value', '')}" for e in main.get("env") or () if "value" in e],
            "WorkingDir": main.get("workingDir") or "",
            "Hostname": hostname[:63],
            "Labels": {LABEL: self.id, "mlexec.test.pod": name},
            "HostConfig": {"NetworkMode": self.network, "Binds": binds, "Init": False},
            "NetworkingConfig": {"EndpointsConfig": {self.network: {"Aliases": aliases}}},
        }
        with self._lock:
            if (ns, name) not in c.pods:  # deleted before it started
                return
            cid = self.engine.create(body, name=f"mlexec-k8s-{self.id}-{name}"[:120])
            self.containers[(ns, name)] = cid
        conn, resp = self.engine.attach(cid)
        logger = threading.Thread(target=self._copy_log, args=(ns, name, conn, resp), daemon=True)
        logger.start()
        self.engine.start(cid)
        with c.cond:
            gone = (ns, name) not in c.pods
        if gone:  # deleted between create and start: its stop found nothing running yet
            self._stop_and_remove(ns, name, cid)
        c.set_container(ns, name, {"running": {"startedAt": _now()}})
        code = self.engine.wait(cid)
        logger.join(30)
        info = self.engine.inspect(cid) or {}
        state = info.get("State") or {}
        disrupted = False
        with c.cond:
            pod = c.pods.get((ns, name))
            if pod is not None:
                disrupted = any(cond.get("type") == "DisruptionTarget" for cond in pod["status"]["conditions"])
        message = term_log.read_text()[-4096:] if term_log.exists() else ""
        reason = "OOMKilled" if state.get("OOMKilled") else ("Completed" if code == 0 else "Error")
        terminated = {"exitCode": code, "reason": reason, "startedAt": state.get("StartedAt", _now())[:19] + "Z",
                      "finishedAt": _now()}
        if message:
            terminated["message"] = message
        c.set_container(ns, name, {"terminated": terminated}, phase="Succeeded" if code == 0 else "Failed")
        events.put((key, name, terminated, disrupted))

    def _copy_log(self, ns: str, name: str, conn, resp) -> None:
        partial = b""
        try:
            for _, data in self.engine.frames(resp):
                text = partial + data
                *lines, partial = text.split(b"\n")
                if lines:
                    self.cluster.log(ns, name, b"".join(line + b"\n" for line in lines).decode(errors="replace"))
        except Exception:
            pass
        finally:
            conn.close()
        if partial:
            self.cluster.log(ns, name, partial.decode(errors="replace"))

    def _stop_container(self, ns: str, name: str, grace: int = 5) -> None:
        cid = self.containers.get((ns, name))
        if cid is None:
            return
        try:
            self.engine._call("POST", f"/containers/{cid}/stop", params={"t": grace}, timeout=grace + 30)
        except Exception:
            pass

    def _pod_deleted(self, ns: str, name: str) -> None:
        """A deleted pod's container is stopped (SIGTERM, then SIGKILL) and removed, in the background."""
        with self._lock:
            cid = self.containers.get((ns, name))
            jobs = list(self._jobs.items())
        for (job_ns, job_name), events in jobs:  # wake the controller of a Job that is gone
            if self.cluster.job(job_ns, job_name) is None:
                events.put(None)
        if cid is not None:
            threading.Thread(target=self._stop_and_remove, args=(ns, name, cid), daemon=True).start()

    def _stop_and_remove(self, ns: str, name: str, cid: str) -> None:
        self._stop_container(ns, name)
        try:
            self.engine.remove(cid)
        except Exception:
            pass

    # -- what tests do --------------------------------------------------------------------

    def preempt(self, ns: str, pod: str) -> None:
        """A preemption: the pod gets the DisruptionTarget condition, its container is stopped (Failed)."""
        c = self.cluster
        with c.cond:
            obj = c.pods[(ns, pod)]
            obj["status"]["conditions"].append({"type": "DisruptionTarget", "status": "True",
                                                "reason": "PreemptionByScheduler",
                                                "message": "Kubernetes Scheduler: preempting to accommodate a "
                                                           "higher priority pod", "lastTransitionTime": _now()})
            c._emit("pods", "MODIFIED", obj)
        self._stop_container(ns, pod, grace=2)

    def running(self) -> list[str]:
        """The pods whose container still runs."""
        out = []
        for (ns, name), cid in list(self.containers.items()):
            info = self.engine.inspect(cid)
            if info and (info.get("State") or {}).get("Running"):
                out.append(name)
        return out

    def wait_stopped(self, timeout: float = 30) -> list[str]:
        """The pods whose container still runs once they have had ``timeout`` seconds to stop."""
        deadline = time.monotonic() + timeout
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.running()

    def close(self) -> list[str]:
        """Remove every container started and the network; return the pods whose container was still running."""
        left = self.running()
        for cid in self.containers.values():
            try:
                self.engine.remove(cid)
            except Exception:
                pass
        for container in self.engine.containers(f"{LABEL}={self.id}"):
            self.engine.remove(container["Id"])
        try:
            self.engine._call("DELETE", f"/networks/{self.network}")
        except Exception:
            pass
        return left
