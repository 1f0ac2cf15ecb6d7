"""Running the command in a container: the :class:`~mlexec_core.plugin.interfaces.Launcher`
the core's local backend starts jobs through.

The container runs ``sh -c <command>`` under Docker's init (so signals reach
the command, which is not PID 1), with only the variables that belong in it,
its output streamed live to mlexec's stdout/stderr.  Whatever happens (exit,
failure, Ctrl-C, SIGTERM, an error while starting) the container is stopped
and removed: :meth:`ContainerExecution.cleanup` is always called once by the
core, and a failure inside :meth:`ContainerLauncher.start` removes what it
created before re-raising.
"""

from __future__ import annotations

import os
import signal as signals
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Mapping

from mlexec_core import reaper
from mlexec_core.errors import BackendError
from mlexec_core.plugin.interfaces import CommandSpec, Execution, Launcher, Resources, echo_to_terminal, stop_timeout

from mlexec_docker.engine import Engine, EngineError
from mlexec_docker.images import CODE_DIR
from mlexec_docker.resources import allocation_options
from mlexec_docker.runconfig import PASSTHROUGH_VARS, tracking_for_container

if TYPE_CHECKING:
    from mlexec_core.plugin.interfaces import Reporter, RunOutput

#: Label on every container mlexec starts, with the run id as value.
RUN_LABEL = "mlexec.run-id"
PROJECT_LABEL = "mlexec.project"
#: Variables of the run that always go into the container.
RUN_VARS = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_TRACKING_URI")
#: Host variables never passed on, even when the run's environment changed them.
HOST_ONLY = frozenset({"PATH", "HOME", "PWD", "OLDPWD", "SHLVL", "_", "TERM", "USER", "LOGNAME", "SHELL",
                       "HOSTNAME", "LANG", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH"})


class ContainerExecution(Execution):
    """A started container, followed until it stops, then removed."""

    def __init__(self, engine: Engine, container: str, name: str, tty: bool, attached: tuple[Any, Any],
                 output: RunOutput | None = None) -> None:
        self.engine = engine
        self.output = output
        self.container = container
        self.name = name
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._cleaned = False
        self._exit: int | None = None
        self._logs = threading.Thread(target=self._stream, args=(attached, tty), name=f"logs-{name}", daemon=True)
        self._logs.start()

    def _stream(self, attached: tuple[Any, Any], tty: bool) -> None:
        conn, resp = attached
        # shown and kept by the run's output, else shown on mlexec's own stdout and stderr
        write = self.output.write if self.output is not None else echo_to_terminal
        try:
            for stream, data in self.engine.frames(resp, tty=tty):
                write(data, "stderr" if stream == 2 else "stdout")
        except Exception:  # the container went away while attached: nothing more to show
            pass
        finally:
            conn.close()

    def wait(self, timeout: float | None = None) -> int | None:
        if self._exit is not None:
            return self._exit
        if timeout is not None and timeout <= 0:
            state = (self.engine.inspect(self.container) or {}).get("State") or {}
            if state.get("Running") or state.get("Status") in ("created", "restarting"):
                return None
            code = int(state.get("ExitCode", 1)) if state else 1
        else:
            try:
                code = self.engine.wait(self.container, timeout)
            except EngineError as exc:
                if exc.status != 404:
                    raise
                code = 1  # removed under us (mlexec was told to stop at once)
            if code is None:
                return None
        self._logs.join(timeout=10)  # the last lines of output before the run's status
        self._exit = code
        return code

    def stop(self, signum: int, grace: float) -> None:
        """``signum`` to the command (through Docker's init); SIGKILL after ``grace`` s."""
        self._stopping.set()
        try:
            name = signals.Signals(signum).name
            if signum != signals.SIGKILL and self.engine.kill(self.container, name):
                if self.engine.wait(self.container, max(grace, 0.1)) is not None:
                    return
                if signum != signals.SIGTERM:  # SIGINT ignored (a shell's background job ...): ask again
                    self.engine.kill(self.container, "SIGTERM")
                    if self.engine.wait(self.container, 1.0) is not None:
                        return
            self.engine.kill(self.container, "SIGKILL")
            self.engine.wait(self.container, 10)
        except EngineError:
            pass
        finally:
            self._stopped.set()

    def cleanup(self) -> None:
        if self._cleaned:
            return
        if self._stopping.is_set():
            self._stopped.wait(60)
        elif self._exit is None:  # not seen to end: stop it before removing it
            try:
                state = ((self.engine.inspect(self.container) or {}).get("State") or {})
                if state.get("Running"):
                    self.stop(signals.SIGTERM, stop_timeout())
            except EngineError:
                pass
        self._cleaned = True
        remove_container(self.engine, self.container)
        reaper.forget_container(self.container)
        self._logs.join(timeout=5)


def remove_container(engine: Engine, container: str) -> None:
    for attempt in range(3):
        try:
            engine.remove(container)
            return
        except EngineError:
            time.sleep(0.2 * (attempt + 1))
        except Exception:
            return


#: The folder a run's attempts share (``--restart-on-exit``): mounted at the same path in the container.
CHECKPOINT_VAR = "MLEXEC_CHECKPOINT_DIR"


class ContainerLauncher(Launcher):
    """Starts a :class:`CommandSpec` in a new container of ``image``.

    ``host_config`` already holds the run's resources (:func:`~mlexec_docker.resources.apply_resources`);
    what the machine gave the job (``spec.allocation``: cores, GPUs) is added when it starts, with
    ``resources`` saying how many GPUs to request when nothing was allotted.
    """

    def __init__(self, engine: Engine, image: str, *, project: str, mount_code: str | None,
                 binds: list[str], environment: Mapping[str, str], config: Mapping[str, Any],
                 host_config: Mapping[str, Any], resources: Resources | None = None,
                 reporter: Reporter | None = None) -> None:
        self.engine = engine
        self.image = image
        self.project = project
        self.mount_code = mount_code
        self.binds = list(binds)
        self.environment = dict(environment)
        self.config = dict(config)
        self.host_config = dict(host_config)
        self.resources = resources or Resources()
        self.reporter = reporter

    def container_env(self, env: Mapping[str, str], added: Mapping[str, str] | None = None) -> dict[str, str]:
        """What of the job's complete environment belongs in the container."""
        out = {k: env[k] for k in PASSTHROUGH_VARS if k in env}
        # What the run and the prepared environment added on top of this process's own environment.
        if added is None:
            added = {k: v for k, v in env.items() if os.environ.get(k) != v}
        out.update({k: v for k, v in added.items() if k not in HOST_ONLY})
        out.update({k: env[k] for k in RUN_VARS if k in env})
        out.update(self.environment)
        return out

    def ranked(self, per_node: int) -> Launcher:
        """``processes-per-node``: the ranks in one container of this launcher's (:mod:`mlexec_docker.ranks`)."""
        from mlexec_docker.ranks import RankedContainerLauncher

        return RankedContainerLauncher(self, per_node)

    def body(self, spec: CommandSpec) -> dict[str, Any]:
        env = self.container_env(spec.env, spec.added or None)
        uri, tracking_binds, host_network = tracking_for_container(env.get("MLFLOW_TRACKING_URI"),
                                                                   env.get("MLFLOW_RUN_ID"))
        if uri:
            env["MLFLOW_TRACKING_URI"] = uri
        binds = list(self.binds) + tracking_binds
        if self.mount_code:
            binds.insert(0, f"{self.mount_code}:{CODE_DIR}")
        checkpoints = env.get(CHECKPOINT_VAR)
        if checkpoints and os.path.isabs(checkpoints):  # a run's attempts share it: the same path inside
            binds.append(f"{checkpoints}:{checkpoints}")
        host = {"Init": True, **self.host_config}
        allotted, allotted_env = allocation_options(self.resources, spec.allocation)
        if "CpusetCpus" in allotted and self.host_config.get("CpusetCpus") not in (None, allotted["CpusetCpus"]):
            if self.reporter is not None:
                self.reporter.warning(
                    f"-A cpuset-cpus={self.host_config['CpusetCpus']} is replaced by the cores this machine gave "
                    f"the job ({allotted['CpusetCpus']}): other jobs may be pinned to the others")
        host.update(allotted)
        env.update(allotted_env)
        host["Binds"] = binds + list(self.host_config.get("Binds", []))
        if host_network and "NetworkMode" not in self.host_config:
            host["NetworkMode"] = "host"
        config = dict(self.config)
        extra_env = config.pop("Env", [])
        labels = {**config.pop("Labels", {}), RUN_LABEL: env.get("MLFLOW_RUN_ID", ""), PROJECT_LABEL: self.project}
        return {
            "Image": self.image,
            "Cmd": ["sh", "-c", spec.command],
            "Env": [f"{k}={v}" for k, v in env.items()] + list(extra_env),
            "WorkingDir": CODE_DIR,
            "Labels": labels,
            "AttachStdout": True,
            "AttachStderr": True,
            "OpenStdin": False,
            **config,
            "HostConfig": host,
        }

    def start(self, spec: CommandSpec) -> Execution:
        body = self.body(spec)
        run_id = body["Labels"].get(RUN_LABEL) or "norun"
        name = f"mlexec-{self.project}-{run_id[:12]}-{uuid.uuid4().hex[:6]}"
        container = None
        attached = None
        try:
            container = self.engine.create(body, name=name)
            reaper.watch_container(container)  # stopped and removed even if mlexec is killed
            attached = self.engine.attach(container)
            self.engine.start(container)
            return ContainerExecution(self.engine, container, name, tty=bool(body.get("Tty")), attached=attached,
                                      output=spec.output)
        except BaseException as exc:
            if attached is not None:
                attached[0].close()
            if container is not None:
                remove_container(self.engine, container)
                reaper.forget_container(container)
            if isinstance(exc, EngineError):
                raise BackendError(f"the container could not start: {exc.message}",
                                   hint="check the -A options and docker_env.volumes") from None
            raise
