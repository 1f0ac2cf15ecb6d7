"""A submitted Job: watched (not polled), its pod's logs streamed live, cancelled with its pods.

Two watches run in background threads once :meth:`KubernetesJob.wait` is
called: one on the Job (its conditions decide the run's status), one on its
pods (to stream each pod's log as soon as its container starts, and to see
why a pod fails: an image that cannot be pulled, OOMKilled, an exit code).
A watch that ends or drops is resumed from the last resourceVersion it saw;
when the server says that version is gone (410), the state is listed again.

A run's ``time`` resource is the Job's ``activeDeadlineSeconds`` (the cluster's
limit, which also holds while no mlexec watches), and mlexec keeps it too while it
watches: from the moment the pod runs (for an attached Job, from its container's
``startedAt``), to the second; at the limit the Job is deleted as Ctrl-C deletes
it and the run ends FAILED with :func:`~mlexec_core.resources.time_limit_reason`,
the words the Job's ``DeadlineExceeded`` also ends with.
"""

from __future__ import annotations

import codecs
import signal
import sys
import threading
import time
from datetime import datetime
from typing import Any, Callable, Mapping, TextIO

from mlexec_core.distributed import rank_failure_reason
from mlexec_core.plugin.interfaces import Reporter, RunStatus, SubmittedJob
from mlexec_core.resources import time_limit_reason

from mlexec_kubernetes.cluster import Cluster, api_message
from mlexec_kubernetes.distributed import COMPLETION_INDEX_ANNOTATION, rank_failure

#: Seconds a single watch request lasts before it is renewed (the server ends it).
WATCH_SECONDS = 60
#: Seconds without any answer from the cluster before the run is given up as FAILED.
GIVE_UP_SECONDS = 300
#: Seconds of log asked for again, before the last line printed, when a log stream is resumed.
LOG_OVERLAP_SECONDS = 5
#: Failed attempts in a row to read a log stream again, before giving up on it.
LOG_RETRIES = 5
#: Waiting reasons of a container that will not go away by themselves: the run fails at once.
FATAL_WAITING = {
    "ImagePullBackOff": "the image could not be pulled",
    "ErrImageNeverPull": "the image is not on the node and imagePullPolicy is Never",
    "InvalidImageName": "the image name is invalid",
    "CreateContainerConfigError": "the container's configuration is invalid (a missing Secret or ConfigMap?)",
}

#: Tags on the run.
TAG_JOB = "mlexec.kubernetes.job"
TAG_NAMESPACE = "mlexec.kubernetes.namespace"
TAG_CONTEXT = "mlexec.kubernetes.context"
TAG_CONTAINER = "mlexec.kubernetes.container"
TAG_FAILURE = "mlexec.kubernetes.failure-reason"
#: The headless Service of a run over many pods (named like the Job).
TAG_SERVICE = "mlexec.kubernetes.service"
#: The run's ``time`` resource in seconds, for an mlexec that attaches to the Job later.
TAG_TIME_LIMIT = "mlexec.kubernetes.time-limit"


def time_limit_tag(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))


def time_limit_from_tag(text: str | None) -> float | None:
    """The time limit :func:`time_limit_tag` wrote, or ``None`` (no tag, or not a number of seconds)."""
    try:
        seconds = float(text) if text else None
    except ValueError:
        return None
    return seconds if seconds is not None and seconds > 0 and seconds != float("inf") else None


def _timestamp(text: Any) -> float | None:
    """An RFC 3339 time of the API (``2026-01-01T00:00:01Z``) as seconds since the epoch."""
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _raw(response: Any) -> dict[str, Any]:
    import json

    try:
        return json.loads(response.data)
    finally:
        response.release_conn()


class KubernetesJob(SubmittedJob):
    """One Job in one namespace, as the run sees it."""

    def __init__(self, cluster: Cluster, namespace: str, name: str, image: str, container: str,
                 reporter: Reporter, tags: Mapping[str, str], out: TextIO | None = None,
                 output: Any = None, time_limit: float | None = None, attached: bool = False,
                 service: str | None = None) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.name = name
        self.image = image
        self.container = container
        self.reporter = reporter
        self.out = out
        #: The run's output (``run.output``): the pod's log goes there when set, else to ``out``.
        self.output = output
        self.tags: dict[str, str] = dict(tags)
        #: The Job's headless Service (``nodes`` above 1), deleted when the run ends.
        self.service = service
        self.failure_reason: str | None = None
        self.exit_code: int | None = None
        self.cancelled = False
        #: The run's ``time`` resource (seconds), kept while :meth:`wait` watches; ``None``: no limit.
        self.time_limit = time_limit
        #: Whether the time limit stopped the Job.
        self.timed_out = False
        #: Picked up again (``mlexec attach``): the pod may have run long before this mlexec saw it.
        self.attached = attached
        self._enforce = True
        self._timer: threading.Timer | None = None
        self._deleting = False
        #: SCHEDULED, then RUNNING once a pod runs; the end is :attr:`settled`.
        self._status = RunStatus.SCHEDULED
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._watching = False
        self._log_threads: dict[str, threading.Thread] = {}
        self._pods: dict[str, dict[str, Any]] = {}
        self._warned: set[str] = set()
        #: Pods the Job replaced with a new one (a restart), and whether one was.
        self._replaced: set[str] = set()
        self._restarted = False
        self._out_lock = threading.Lock()

    # -- SubmittedJob -------------------------------------------------------------------

    def wait(self) -> RunStatus:
        self._start_watching()
        while not self._done.wait(0.5):
            pass
        if self.settled is not RunStatus.KILLED and not self.timed_out:
            # A quick Job can end before the pod watch saw its container start: its log is still there.
            for pod in self._list_pods():
                self._remember_pod(pod)
                state = (self._main_status(pod) or {}).get("state") or {}
                if state.get("running") or state.get("terminated"):
                    self._stream_logs(pod["metadata"]["name"])
        self._finish_logs()
        self._delete_service()
        return self.settled

    def _delete_service(self) -> None:
        """The run has ended: its pods need their DNS names no more (the Job owns the Service too, so
        deleting the Job, or its ``ttlSecondsAfterFinished``, would delete it anyway)."""
        from kubernetes.client.rest import ApiException

        if not self.service:
            return
        try:
            _raw(self.cluster.core().delete_namespaced_service(self.service, self.namespace,
                                                               _preload_content=False))
        except ApiException as exc:
            if exc.status != 404:
                self.reporter.warning(f"could not delete Service {self.namespace}/{self.service}: "
                                      f"{api_message(exc)}; it goes when Job {self.name} is deleted")
        except Exception as exc:
            self.reporter.warning(f"could not delete Service {self.namespace}/{self.service}: {_short(exc)}; "
                                  f"it goes when Job {self.name} is deleted")

    def get_status(self) -> RunStatus:
        if not self._watching and self.settled is None:
            try:
                data = _raw(self.cluster.batch().list_namespaced_job(
                    self.namespace, field_selector=f"metadata.name={self.name}", _preload_content=False))
            except Exception as exc:
                self.reporter.warning(f"could not read Job {self.namespace}/{self.name}: {_short(exc)}")
                return self.settled or self._status
            items = data.get("items") or ()
            for item in items:
                self._on_job(item)
            if not items:
                self._on_no_job()
        return self.settled or self._status

    def print_logs(self, follow: bool = False) -> None:
        """The Job's pod logs so far into the output (``mlexec logs``); with ``follow``, until the Job ends.

        The run is not ended, nor is its time limit kept: whoever supervises it does that.
        """
        if follow:
            self._enforce = False
            self.wait()
            return
        for pod in self._list_pods():
            name = (pod.get("metadata") or {}).get("name")
            if not name:
                continue
            try:
                response = self.cluster.core().read_namespaced_pod_log(
                    name, self.namespace, container=self.container or None, _preload_content=False)
                data = response.data
                response.release_conn()
            except Exception as exc:
                self.reporter.warning(f"could not read the log of pod {name}: {_short(exc)}")
                continue
            if self.output is not None:
                self.output.write(data, "stdout")
            else:
                (self.out or sys.stdout).write(data.decode(errors="replace"))

    def cancel(self, signum: int | None = None) -> None:
        with self._lock:
            if self.settled is not None and not self.cancelled:
                return
            self.cancelled = True
        # SIGKILL (a second Ctrl-C) asks for no grace period.
        self._stop(0 if signum == signal.SIGKILL else None)
        self._delete_service()
        self._settle(RunStatus.KILLED, "stopped by the user")

    def _stop(self, grace: int | None) -> None:
        """Delete the Job in the foreground: the Job object goes only once its pods are gone."""
        from kubernetes.client.rest import ApiException

        try:
            self.cluster.batch().delete_namespaced_job(
                self.name, self.namespace, propagation_policy="Foreground", grace_period_seconds=grace)
        except ApiException as exc:
            if exc.status != 404:
                self.reporter.warning(f"could not delete Job {self.namespace}/{self.name}: {api_message(exc)}; "
                                      f"delete it with: kubectl delete job -n {self.namespace} {self.name}")
        except Exception as exc:
            self.reporter.warning(f"could not delete Job {self.namespace}/{self.name}: {_short(exc)}; "
                                  f"delete it with: kubectl delete job -n {self.namespace} {self.name}")
        else:
            self.reporter.info(f"Deleted Job {self.namespace}/{self.name}; its pods are deleted with it")

    # -- the time limit -----------------------------------------------------------------

    def _start_clock(self, running: Mapping[str, Any]) -> None:
        """Keep the time limit from now on: the pod runs (``running``: its container's running state)."""
        if self.time_limit is None or not self._enforce or self.settled is not None:
            return
        elapsed = 0.0
        if self.attached:  # it may have run for a while without us: count from the container's start
            started = _timestamp(running.get("startedAt"))
            if started is not None:
                elapsed = max(0.0, time.time() - started)
        with self._lock:
            if self._timer is not None:
                return
            self._timer = threading.Timer(max(0.0, self.time_limit - elapsed), self._time_is_up)
            self._timer.name = f"mlexec-k8s-time-limit-{self.name}"
            self._timer.daemon = True
            self._timer.start()

    def _time_is_up(self) -> None:
        """The time limit has passed while the Job runs: stop it as a cancel does, and fail the run."""
        with self._lock:
            if self.settled is not None or self.cancelled or self.time_limit is None:
                return
            self.timed_out = True
            self._deleting = True
        reason = time_limit_reason(self.time_limit)
        self.reporter.warning(f"{reason}: stopping Job {self.namespace}/{self.name}")
        self._stop(None)
        self._settle(RunStatus.FAILED, reason, exact=True)

    # -- state --------------------------------------------------------------------------

    def _settle(self, status: RunStatus, reason: str | None = None, exit_code: int | None = None,
                exact: bool = False) -> None:
        """:meth:`settle`, with a failure's reason naming the Job (unless ``exact``: a reason worded the
        same on every backend) and tagged; then wake :meth:`wait`."""
        if status is RunStatus.FAILED and not exact:
            reason = f"{reason or 'the Job failed'} [Job {self.namespace}/{self.name}, image {self.image}]"
        if self.settle(status, reason, exit_code):
            if status is RunStatus.FAILED:
                self.tags[TAG_FAILURE] = reason
            timer = self._timer
            if timer is not None:
                timer.cancel()
            self._done.set()

    def _on_job(self, job: Mapping[str, Any]) -> None:
        if self.timed_out:  # mlexec is stopping it: the run ends with the time limit's reason
            return
        status = job.get("status") or {}
        for condition in status.get("conditions") or ():
            if condition.get("status") != "True":
                continue
            if condition.get("type") == "Complete":
                self._settle(RunStatus.FINISHED, exit_code=0)
                return
            if condition.get("type") == "Failed" and condition.get("reason") == "DeadlineExceeded" \
                    and self.time_limit is not None:  # the cluster kept the run's time limit
                self._settle(RunStatus.FAILED, time_limit_reason(self.time_limit), exact=True)
                return
            if condition.get("type") == "Failed":
                reason, code = self._explain_failure(job, condition)
                self._settle(RunStatus.FAILED, reason, code)
                return
        if self._status is RunStatus.SCHEDULED and (status.get("active") or status.get("ready")):
            with self._lock:
                if self._status is RunStatus.SCHEDULED:
                    self._status = RunStatus.RUNNING

    def _on_job_deleted(self, job: Mapping[str, Any]) -> None:
        if not (self.cancelled or self._deleting):
            self._settle(RunStatus.FAILED, "the Job was deleted while it ran (by someone else?)")

    def _explain_failure(self, job: Mapping[str, Any], condition: Mapping[str, Any]) -> tuple[str, int | None]:
        """Why the Job failed, from its condition and its pods' last states."""
        cond_reason = condition.get("reason") or "Failed"
        message = condition.get("message") or ""
        if cond_reason == "DeadlineExceeded":
            deadline = (job.get("spec") or {}).get("activeDeadlineSeconds")
            limit = f" ({deadline} s)" if deadline else ""
            return f"the Job ran longer than its activeDeadlineSeconds{limit} and was stopped (DeadlineExceeded)", None
        pods = self._list_pods()
        for pod in pods:
            self._remember_pod(pod)
        explained = self._pod_failure()
        if explained:
            return explained
        return f"{cond_reason}: {message}".rstrip(": "), None

    def _list_pods(self) -> list[dict[str, Any]]:
        try:
            data = _raw(self.cluster.core().list_namespaced_pod(
                self.namespace, label_selector=f"job-name={self.name}", _preload_content=False))
        except Exception:
            return []
        return list(data.get("items") or ())

    def _remember_pod(self, pod: Mapping[str, Any]) -> None:
        name = (pod.get("metadata") or {}).get("name")
        if name:
            self._pods[name] = dict(pod)

    def _main_status(self, pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
        statuses = (pod.get("status") or {}).get("containerStatuses") or ()
        for cs in statuses:
            if cs.get("name") == self.container:
                return cs
        return statuses[0] if statuses else None

    def _rank_failure(self) -> tuple[str, int | None] | None:
        """In a run over many processes, the first rank that failed on its own (the launcher wrote it in
        its container's termination message), and its pod."""
        first = None
        for name, pod in self._pods.items():
            if name in self._replaced:
                continue
            terminated = ((self._main_status(pod) or {}).get("state") or {}).get("terminated") or {}
            failed = rank_failure(terminated.get("message"))
            if failed is None:
                continue
            when = _timestamp(terminated.get("finishedAt")) or float("inf")
            if first is None or when < first[0]:
                first = (when, name, failed)
        if first is None:
            return None
        _, name, (rank, code) = first
        return f"{rank_failure_reason(rank, code)} (pod {name})", code

    def _pod_failure(self) -> tuple[str, int | None] | None:
        """The most telling failure among the pods seen: OOMKilled, then a rank that failed, then an exit
        code, then a pull error."""
        found = None
        pods = [pod for name, pod in self._pods.items() if name not in self._replaced]
        for pod in pods:
            terminated = ((self._main_status(pod) or {}).get("state") or {}).get("terminated") or {}
            if terminated.get("reason") == "OOMKilled":
                break
        else:
            found = self._rank_failure()
            if found is not None:
                return found
        for pod in pods:
            cs = self._main_status(pod) or {}
            state = cs.get("state") or {}
            last = cs.get("lastState") or {}
            terminated = state.get("terminated") or last.get("terminated")
            if terminated:
                code = terminated.get("exitCode")
                reason = terminated.get("reason") or ""
                if reason == "OOMKilled":
                    return (f"the container ran out of memory (OOMKilled, exit code {code}); raise its memory "
                            "(-R memory=..., or resources.memory in the backend config)", code)
                if code not in (None, 0):
                    extra = f" ({reason})" if reason and reason not in ("Error", "Completed") else ""
                    msg = terminated.get("message")
                    found = (f"the command exited with status {code}{extra}" + (f": {msg}" if msg else ""), code)
            waiting = state.get("waiting") or {}
            if found is None and waiting.get("reason") in FATAL_WAITING | {"ErrImagePull": ""}:
                found = (self._waiting_text(waiting), None)
            if found is None and (pod.get("status") or {}).get("reason") == "Evicted":
                found = (f"the pod was evicted: {(pod.get('status') or {}).get('message', '')}".rstrip(": "), None)
        return found

    def _waiting_text(self, waiting: Mapping[str, Any]) -> str:
        reason = waiting.get("reason", "")
        what = FATAL_WAITING.get(reason, "the image could not be pulled")
        message = waiting.get("message")
        hint = ""
        if reason in ("ImagePullBackOff", "ErrImagePull"):
            hint = "; can the cluster reach the registry, and does it need image-pull-secrets or a service-account?"
        return f"{what} ({reason}{': ' + message if message else ''}){hint}"

    def _on_pod(self, pod: Mapping[str, Any]) -> None:
        name = (pod.get("metadata") or {}).get("name", "?")
        new = name not in self._pods
        self._remember_pod(pod)
        if new and self._replacement(pod):
            return
        status = pod.get("status") or {}
        cs = self._main_status(pod) or {}
        state = cs.get("state") or {}
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in FATAL_WAITING:
            text = self._waiting_text(waiting)
            self.reporter.warning(f"pod {name}: {text}")
            self._fail_fast(text)
            return
        if status.get("phase") == "Pending" and name not in self._warned:
            for cond in status.get("conditions") or ():
                if cond.get("type") == "PodScheduled" and cond.get("status") == "False" \
                        and cond.get("reason") == "Unschedulable":
                    self._warned.add(name)
                    self.reporter.warning(f"pod {name} cannot be scheduled yet: {cond.get('message', '')} "
                                          "(waiting; Ctrl-C to give up)")
        if state.get("running") or state.get("terminated"):
            again = False
            with self._lock:
                if self._status is RunStatus.SCHEDULED:
                    self._status = RunStatus.RUNNING
                    again = self._restarted
            if again:  # the new attempt runs
                self.report_status(RunStatus.RUNNING)
            if state.get("running"):
                self._start_clock(state["running"])
            self._stream_logs(name)

    # -- restarts: a new pod in place of a failed one ---------------------------------------

    def _replacement(self, pod: Mapping[str, Any]) -> bool:
        """A new pod of an index whose earlier pod failed: the Job started it again (its
        podFailurePolicy ignored a disruption, or counted an exit status of --restart-on-exit).
        mlexec counts the attempt (:meth:`report_restart`); when it may not go on, the Job is
        deleted and the run ends FAILED.  Returns whether the run ended."""
        name = pod["metadata"]["name"]
        index = _index(pod)
        for other, earlier in list(self._pods.items()):
            if other == name or other in self._replaced or _index(earlier) != index:
                continue
            why = _failed(earlier, self._main_status(earlier))
            if why is None:
                continue
            self._replaced.add(other)
            if self.restart_listener is None:  # attached (mlexec attach, logs -f): follow, the Job decides
                self.reporter.info(f"Job {self.namespace}/{self.name}: pod {other} {why.split(' (')[0]}; "
                                   f"following its replacement {name}")
                return False
            if self.report_restart(why):
                self.reporter.info(f"Job {self.namespace}/{self.name} replaced pod {other} with {name}")
                with self._lock:
                    self._restarted = True
                    self._status = RunStatus.SCHEDULED
                return False
            self._fail_fast(why)
            return True
        return False

    def _fail_fast(self, reason: str) -> None:
        """A pod that cannot start: stop the Job (it would wait forever) and fail the run."""
        from kubernetes.client.rest import ApiException

        if self.settled is not None:
            return
        self._deleting = True
        try:
            self.cluster.batch().delete_namespaced_job(self.name, self.namespace, propagation_policy="Background")
        except (ApiException, Exception):
            pass
        self._settle(RunStatus.FAILED, reason)

    # -- watching -----------------------------------------------------------------------

    def _start_watching(self) -> None:
        with self._lock:
            if self._watching:
                return
            self._watching = True
        batch, core = self.cluster.batch(), self.cluster.core()
        threading.Thread(target=self._follow, name=f"mlexec-k8s-job-{self.name}", daemon=True,
                         args=("Job", batch.list_namespaced_job, {"field_selector": f"metadata.name={self.name}"},
                               self._on_job, self._on_job_deleted, self._on_no_job)).start()
        threading.Thread(target=self._follow, name=f"mlexec-k8s-pods-{self.name}", daemon=True,
                         args=("pods", core.list_namespaced_pod, {"label_selector": f"job-name={self.name}"},
                               self._on_pod, lambda pod: None, None)).start()

    def _on_no_job(self) -> None:
        if not (self.cancelled or self._deleting):
            self._settle(RunStatus.FAILED, "the Job no longer exists (deleted by someone else?)")

    def _follow(self, what: str, list_func: Callable[..., Any], selector: Mapping[str, str],
                on_object: Callable[[Mapping[str, Any]], None], on_deleted: Callable[[Mapping[str, Any]], None],
                on_empty: Callable[[], None] | None) -> None:
        """List, then watch from the list's resourceVersion; resume after a drop, re-list after a 410."""
        from kubernetes import watch
        from kubernetes.client.rest import ApiException

        version: str | None = None
        last_contact = time.monotonic()
        failures = 0
        while not self._done.is_set():
            try:
                if version is None:
                    data = _raw(list_func(self.namespace, **selector, _preload_content=False))
                    items = data.get("items") or []
                    for item in items:
                        on_object(item)
                    if not items and on_empty is not None:
                        on_empty()
                    version = (data.get("metadata") or {}).get("resourceVersion")
                    last_contact, failures = time.monotonic(), 0
                    if self._done.is_set():
                        return
                stream = watch.Watch().stream(list_func, self.namespace, **selector, resource_version=version,
                                              timeout_seconds=WATCH_SECONDS, allow_watch_bookmarks=True)
                for event in stream:
                    last_contact, failures = time.monotonic(), 0
                    obj = event.get("raw_object") or {}
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    kind = event.get("type")
                    if kind == "DELETED":
                        on_deleted(obj)
                    elif kind in ("ADDED", "MODIFIED"):
                        on_object(obj)
                    if self._done.is_set():
                        return
                last_contact, failures = time.monotonic(), 0
            except ApiException as exc:
                if exc.status == 410:  # our resourceVersion is too old: list again
                    version = None
                    continue
                failures += 1
                problem = f"{exc.status} {api_message(exc)}"
            except Exception as exc:  # the connection dropped: resume from `version`
                failures += 1
                problem = _short(exc)
            else:
                continue
            if self._done.is_set():
                return
            if time.monotonic() - last_contact > GIVE_UP_SECONDS:
                self._settle(RunStatus.FAILED, f"lost contact with the cluster while watching the {what} "
                                               f"({problem}); the Job may still be running")
                return
            if failures == 3:
                self.reporter.warning(f"watching the {what} of Job {self.name} keeps failing ({problem}); retrying")
            time.sleep(min(5.0, 0.1 * 2 ** failures))

    # -- logs ---------------------------------------------------------------------------

    def _stream_logs(self, pod: str) -> None:
        with self._lock:
            if pod in self._log_threads:
                return
            thread = threading.Thread(target=self._copy_log, args=(pod,), name=f"mlexec-k8s-log-{pod}",
                                      daemon=True)
            thread.start()  # under the lock: _finish_logs never sees a thread not yet started
            self._log_threads[pod] = thread

    def _copy_log(self, pod: str) -> None:
        """Copy the pod's log to stdout as it comes; resume it when the connection drops."""
        from mlexec_kubernetes.logs import TimestampedLog

        out = self.out or sys.stdout
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

        def write(data: bytes) -> None:
            if self.output is not None:
                self.output.write(data, "stdout")
                return
            text = decoder.decode(data)
            if text:
                with self._out_lock:
                    out.write(text)
                    out.flush()

        parser = TimestampedLog(write)
        failures = 0
        while True:
            kwargs: dict[str, Any] = {}
            if parser.last is not None:  # from a little before the last line printed; repeats are skipped
                kwargs["since_seconds"] = max(1, int(time.time() - parser.last[0]) + LOG_OVERLAP_SECONDS)
            parser = TimestampedLog(write, after=parser.last)
            problem = None
            try:
                response = self.cluster.core().read_namespaced_pod_log(
                    pod, self.namespace, container=self.container or None, follow=True, timestamps=True,
                    _preload_content=False, **kwargs)
            except Exception as exc:
                response, problem = None, _short(exc)
            if response is not None:
                try:
                    for chunk in response.stream(4096, decode_content=True):
                        parser.feed(chunk)
                        failures = 0
                except Exception as exc:  # the connection dropped
                    problem = _short(exc)
                finally:
                    response.release_conn()
            if self.settled is RunStatus.KILLED or not self._container_running(pod, problem is None):
                break
            if problem is None:  # ended while the container runs (an idle connection closed): go on
                time.sleep(1.0)
                continue
            failures += 1
            if failures > LOG_RETRIES:
                self.reporter.warning(f"the log of pod {pod} was cut off ({problem}); "
                                      f"see: kubectl logs -n {self.namespace} {pod}")
                break
            time.sleep(min(5.0, 0.2 * 2 ** failures))
        tail = decoder.decode(b"", final=True)
        if tail:
            with self._out_lock:
                out.write(tail)
                out.flush()

    def _container_running(self, pod: str, ended_cleanly: bool) -> bool:
        """Whether the log can still grow (so a stream that ended must be resumed)."""
        if not ended_cleanly:
            return True  # a drop: ask again, the rest may be there even if the container has ended
        try:
            data = _raw(self.cluster.core().read_namespaced_pod(pod, self.namespace, _preload_content=False))
        except Exception:
            return False
        state = (self._main_status(data) or {}).get("state") or {}
        return bool(state.get("running"))

    def _finish_logs(self) -> None:
        """Let the log streams print what is left (a finished container's log ends by itself)."""
        deadline = time.monotonic() + (2 if self.settled is RunStatus.KILLED or self.timed_out else 15)
        for thread in list(self._log_threads.values()):
            thread.join(max(0.0, deadline - time.monotonic()))


def _index(pod: Mapping[str, Any]) -> str | None:
    """An Indexed Job's pod's completion index (``None`` for a Job of one pod)."""
    return ((pod.get("metadata") or {}).get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION)


#: What a pod's DisruptionTarget reasons mean, in the words of a restart.
_DISRUPTIONS = {"PreemptionByScheduler": "was preempted", "PreemptionByKubeScheduler": "was preempted",
                "DeletionByTaintManager": "lost its node", "EvictionByEvictionAPI": "was evicted",
                "DeletionByPodGC": "lost its node", "TerminationByKubelet": "was stopped by its node"}


def _failed(pod: Mapping[str, Any], main: Mapping[str, Any] | None) -> str | None:
    """Why a pod failed, as a restart says it (``was preempted (pod x: ...)``), or ``None`` if it did not."""
    name = (pod.get("metadata") or {}).get("name", "?")
    status = pod.get("status") or {}
    for cond in status.get("conditions") or ():
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            what = _DISRUPTIONS.get(cond.get("reason") or "", "was disrupted")
            return f"{what} (pod {name}: {cond.get('reason') or 'DisruptionTarget'})"
    terminated = ((main or {}).get("state") or {}).get("terminated") or {}
    code = terminated.get("exitCode")
    if code not in (None, 0):
        return f"exited with status {code} (--restart-on-exit; pod {name})"
    if status.get("phase") == "Failed":
        return f"failed (pod {name}: {status.get('reason') or 'Failed'})"
    return None


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    if "Connection refused" in text:
        return "connection refused"
    first = text.splitlines()[0][:200] if text else ""
    return f"{type(exc).__name__}: {first}".rstrip(": ")
