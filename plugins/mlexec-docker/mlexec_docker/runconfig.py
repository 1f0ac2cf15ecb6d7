"""What the container gets: ``-A`` options, volumes, variables, the tracking store.

Everything here is checked in :meth:`DockerEnvironment.check`/``prepare``,
before the run exists, and turned into the Engine API's container
configuration (the JSON body of ``POST /containers/create``).
"""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import unquote, urlparse

from mlexec_core.errors import EnvironmentBuildError, UsageError
from mlexec_core.project.model import DockerEnv, Project

#: Where a local tracking store (sqlite file's folder, or file store) is mounted.
TRACKING_DIR = "/mlflow/tracking"

#: Host variables passed on when set, as MLflow does: artifact-store and tracking-server credentials.
PASSTHROUGH_VARS = (
    "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_S3_ENDPOINT_URL", "MLFLOW_S3_IGNORE_TLS", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCESS_KEY",
)

_INT64 = 2**63 - 1
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_bytes(value: str, option: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)b?\s*", value.lower())
    if not m:
        raise UsageError(f"-A {option}={value}: expected a size such as 512m or 2g")
    size = int(float(m.group(1)) * _UNITS[m.group(2)])
    if size > _INT64:
        raise UsageError(f"-A {option}={value}: more than the engine accepts (8 EiB)")
    return size


def _gpus(value: str | None, option: str) -> list[dict[str, Any]]:
    value = (value or "all").strip().strip("\"'")
    request: dict[str, Any] = {"Driver": "", "Capabilities": [["gpu"]], "Count": 0, "DeviceIDs": None}
    if value == "all":
        request["Count"] = -1
    elif value.isdigit():
        request["Count"] = int(value)
    elif value.startswith("device="):
        request["DeviceIDs"] = [d for d in value[len("device="):].split(",") if d]
    else:
        raise UsageError(f"-A {option}={value}: expected all, a count, or device=ID[,ID]", hint="for example -A gpus=all")
    return [request]


def _ulimit(value: str, option: str) -> dict[str, Any]:
    m = re.fullmatch(r"([a-z]+)=(-?\d+)(?::(-?\d+))?", value or "")
    if not m:
        raise UsageError(f"-A {option}={value}: expected NAME=SOFT[:HARD]", hint="for example -A ulimit=nofile=1024:2048")
    soft = int(m.group(2))
    return {"Name": m.group(1), "Soft": soft, "Hard": int(m.group(3)) if m.group(3) else soft}


# name -> (aliases, needs a value, how it applies to (config, host_config, value))
Apply = Callable[[dict, dict, "str | None", str], None]


def _host(key: str, convert: Callable[[str, str], Any] = lambda v, o: v) -> Apply:
    def apply(cfg: dict, host: dict, value: str | None, option: str) -> None:
        host[key] = convert(value or "", option)
    return apply


def _host_list(key: str, convert: Callable[[str, str], Any] = lambda v, o: v) -> Apply:
    def apply(cfg: dict, host: dict, value: str | None, option: str) -> None:
        host.setdefault(key, []).append(convert(value or "", option))
    return apply


def _flag(key: str, where: str = "host") -> Apply:
    def apply(cfg: dict, host: dict, value: str | None, option: str) -> None:
        on = value is None or value.lower() in ("1", "true", "yes", "")
        (host if where == "host" else cfg)[key] = on
    return apply


def _cfg(key: str) -> Apply:
    def apply(cfg: dict, host: dict, value: str | None, option: str) -> None:
        cfg[key] = value
    return apply


def _env(cfg: dict, host: dict, value: str | None, option: str) -> None:
    if not value or "=" not in value:
        raise UsageError(f"-A {option}={value}: expected NAME=VALUE", hint="for example -A env=DEBUG=1")
    cfg.setdefault("Env", []).append(value)


def _device(value: str, option: str) -> dict[str, str]:
    parts = value.split(":")
    return {"PathOnHost": parts[0], "PathInContainer": parts[1] if len(parts) > 1 else parts[0],
            "CgroupPermissions": parts[2] if len(parts) > 2 else "rwm"}


def _tmpfs(cfg: dict, host: dict, value: str | None, option: str) -> None:
    path, _, opts = (value or "").partition(":")
    host.setdefault("Tmpfs", {})[path] = opts


def _label(cfg: dict, host: dict, value: str | None, option: str) -> None:
    key, _, val = (value or "").partition("=")
    cfg.setdefault("Labels", {})[key] = val


def _entrypoint(cfg: dict, host: dict, value: str | None, option: str) -> None:
    cfg["Entrypoint"] = [value] if value else [""]


def _gpu_apply(cfg: dict, host: dict, value: str | None, option: str) -> None:
    host["DeviceRequests"] = _gpus(value, option)


def _mount_apply(cfg: dict, host: dict, value: str | None, option: str) -> None:
    host.setdefault("Binds", []).append(value or "")


def _cpus(value: str, option: str) -> int:
    try:
        nano = int(float(value) * 1e9)
    except (ValueError, OverflowError):  # "x", "inf", "1e400", "nan"
        raise UsageError(f"-A {option}={value}: expected a number of CPUs such as 1.5") from None
    if not 0 < nano <= _INT64:
        raise UsageError(f"-A {option}={value}: expected a number of CPUs such as 1.5")
    return nano


def _int(value: str, option: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise UsageError(f"-A {option}={value}: expected an integer") from None
    if abs(number) > _INT64:
        raise UsageError(f"-A {option}={value}: more than the engine accepts")
    return number


def _bytes(value: str, option: str) -> int:
    return parse_bytes(value, option)


DOCKER_ARGS: dict[str, Apply] = {
    "gpus": _gpu_apply,
    "shm-size": _host("ShmSize", _bytes),
    "memory": _host("Memory", _bytes), "m": _host("Memory", _bytes),
    "memory-swap": _host("MemorySwap", lambda v, o: -1 if v == "-1" else parse_bytes(v, o)),
    "memory-reservation": _host("MemoryReservation", _bytes),
    "cpus": _host("NanoCpus", _cpus),
    "cpu-shares": _host("CpuShares", _int), "c": _host("CpuShares", _int),
    "cpuset-cpus": _host("CpusetCpus"),
    "pids-limit": _host("PidsLimit", _int),
    "network": _host("NetworkMode"), "net": _host("NetworkMode"),
    "ipc": _host("IpcMode"), "pid": _host("PidMode"), "uts": _host("UTSMode"),
    "runtime": _host("Runtime"),
    "privileged": _flag("Privileged"),
    "read-only": _flag("ReadonlyRootfs"),
    "init": _flag("Init"),
    "tty": _flag("Tty", "cfg"), "t": _flag("Tty", "cfg"),
    "ulimit": _host_list("Ulimits", _ulimit),
    "add-host": _host_list("ExtraHosts"),
    "cap-add": _host_list("CapAdd"), "cap-drop": _host_list("CapDrop"),
    "security-opt": _host_list("SecurityOpt"),
    "device": _host_list("Devices", _device),
    "dns": _host_list("Dns"),
    "group-add": _host_list("GroupAdd"),
    "volume": _mount_apply, "v": _mount_apply,
    "tmpfs": _tmpfs,
    "env": _env, "e": _env,
    "label": _label, "l": _label,
    "user": _cfg("User"), "u": _cfg("User"),
    "workdir": _cfg("WorkingDir"), "w": _cfg("WorkingDir"),
    "hostname": _cfg("Hostname"), "h": _cfg("Hostname"),
    "entrypoint": _entrypoint,
    "rm": lambda cfg, host, value, option: None,  # the container is always removed
}
_FLAGS = {"privileged", "read-only", "init", "tty", "t", "rm"}


def apply_docker_args(docker_args: tuple[tuple[str, str | None], ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``-A`` options as (container config, host config) fragments; :class:`UsageError` for unknown ones."""
    cfg: dict[str, Any] = {}
    host: dict[str, Any] = {}
    for name, value in docker_args:
        key = name.lstrip("-")
        apply = DOCKER_ARGS.get(key)
        if apply is None:
            if key in ("i", "interactive", "d", "detach", "name"):
                raise UsageError(f"-A {name}: mlexec manages the container itself; this option is not supported")
            known = ", ".join(sorted(k for k in DOCKER_ARGS if len(k) > 1))
            raise UsageError(f"-A {name}: not a `docker run` option mlexec knows", hint=f"supported: {known}")
        if value is None and key not in _FLAGS and key != "gpus":
            raise UsageError(f"-A {name} needs a value", hint=f"for example -A {name}=VALUE")
        apply(cfg, host, value, key)
    return cfg, host


def resolve_environment(docker_env: DockerEnv, project: Project,
                        environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``docker_env.environment`` as NAME -> value; a host variable that is not set is an error."""
    environ = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for item in docker_env.environment:
        if item.value is not None:
            out[item.name] = item.value
        elif item.name in environ:
            out[item.name] = environ[item.name]
        else:
            raise EnvironmentBuildError(
                f"docker_env.environment: {item.name} is to be copied from this machine, but it is not set",
                context=str(project.mlproject or project.directory),
                hint=f"export {item.name}=... before the run, or give its value in the MLproject: "
                     f"[\"{item.name}\", \"value\"]",
            )
    return out


def resolve_volumes(docker_env: DockerEnv, project: Project) -> list[str]:
    """``docker_env.volumes`` as bind strings; host paths made absolute (relative to the project) and checked."""
    binds = []
    for spec in docker_env.volumes:
        parts = spec.split(":")
        source = parts[0]
        if len(parts) < 2 or not parts[1]:
            raise EnvironmentBuildError(
                f"docker_env.volumes: {spec!r} should be HOST_PATH:CONTAINER_PATH[:ro]",
                context=str(project.mlproject or project.directory),
            )
        if source.startswith(("/", ".", "~")):
            host_path = (project.directory / os.path.expanduser(source)).resolve()
            if not host_path.exists():
                raise EnvironmentBuildError(
                    f"docker_env.volumes: the host path {source!r} of {spec!r} does not exist"
                    + (f" ({host_path})" if str(host_path) != source else ""),
                    context=str(project.mlproject or project.directory),
                    hint="create it, or fix the path (relative paths are relative to the project)",
                )
            parts[0] = str(host_path)
        binds.append(":".join(parts))
    return binds


def tracking_for_container(uri: str | None, run_id: str | None) -> tuple[str | None, list[str], bool]:
    """The tracking URI as the container sees it, the binds that make it work, and
    whether the container needs the host's network (a server on this machine).
    """
    if not uri:
        return uri, [], False
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite" and uri.startswith("sqlite:////"):
        db = Path(unquote(uri[len("sqlite:///"):]))
        binds = [f"{db.parent}:{TRACKING_DIR}"]
        binds += _artifact_binds(db, run_id)
        return f"sqlite:///{TRACKING_DIR}/{db.name}", binds, False
    if parsed.scheme == "file" and not parsed.netloc:
        path = unquote(parsed.path)
        return f"file://{TRACKING_DIR}/mlruns", [f"{path}:{TRACKING_DIR}/mlruns"], False
    if parsed.scheme in ("http", "https") and parsed.hostname in ("localhost", "127.0.0.1", "::1", "0.0.0.0"):
        return uri, [], True
    return uri, [], False


def _artifact_binds(db: Path, run_id: str | None) -> list[str]:
    """The run's local artifact folder, mounted at the same path (as MLflow does)."""
    if not run_id or not db.is_file():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute("SELECT artifact_uri FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
    except sqlite3.Error:
        return []
    if not row or not row[0]:
        return []
    parsed = urlparse(row[0])
    if parsed.scheme not in ("", "file") or parsed.netloc:
        return []
    path = Path(unquote(parsed.path))
    if not path.is_absolute():
        return []
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return []
    return [f"{path}:{path}"]
