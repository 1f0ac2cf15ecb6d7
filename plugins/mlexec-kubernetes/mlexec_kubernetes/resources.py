"""The run's resources (the MLproject's ``resources:``, ``-R``) on the Job manifest, as plain data (no I/O).

* ``cpus``, ``memory``, ``gpus``: the first container's ``resources.requests`` and
  ``resources.limits``, equal (Kubernetes requires equal ones for an extended resource
  such as ``nvidia.com/gpu``, and equal ones for all three make the pod Guaranteed:
  it gets what it asked for and is not evicted first).
* ``time``: the Job's ``spec.activeDeadlineSeconds`` (whole seconds, rounded up).
* ``shm``: a memory-backed ``emptyDir`` with that ``sizeLimit``, mounted at ``/dev/shm``.
* ``gpu-type``: a ``nodeSelector`` entry on the node label the config's
  ``gpu-type-label`` names (default ``nvidia.com/gpu.product``).

A resource wins over the backend config and the Job template; :func:`conflicts`
words a warning for each place that said something else.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any, Mapping

from mlexec_core.errors import UsageError
from mlexec_core.plugin.interfaces import Resources

from mlexec_kubernetes.config import KubernetesConfig

#: The extended resource of NVIDIA's device plugin.
GPU = "nvidia.com/gpu"
#: Where ``shm`` is mounted, and the name of the volume mlexec adds for it.
SHM_PATH = "/dev/shm"
SHM_VOLUME = "mlexec-shm"

#: The container resources each key sets, in the order they are written.
_CONTAINER = (("cpus", "cpu"), ("memory", "memory"), ("gpus", GPU))
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:[eE]([+-]?\d+)|([numkMGTPE]|[KMGTPE]i))?$")
_SUFFIX = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
           "k": Decimal(10) ** 3, "M": Decimal(10) ** 6, "G": Decimal(10) ** 9, "T": Decimal(10) ** 12,
           "P": Decimal(10) ** 15, "E": Decimal(10) ** 18, "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20,
           "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40, "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60}


# -- quantities ---------------------------------------------------------------------------


def cpu_quantity(cpus: float) -> str:
    """Cores as a Kubernetes quantity: ``4``, ``500m`` for 0.5 (millicores, rounded up)."""
    if float(cpus).is_integer():
        return str(int(cpus))
    return f"{math.ceil(round(cpus * 1000, 6))}m"


def size_quantity(size: int) -> str:
    """Bytes as a Kubernetes quantity in the largest binary unit that is exact (``16Gi``, ``1536Mi``),
    else in bytes."""
    for suffix, power in (("Ei", 6), ("Pi", 5), ("Ti", 4), ("Gi", 3), ("Mi", 2), ("Ki", 1)):
        if size % 1024 ** power == 0:
            return f"{size // 1024 ** power}{suffix}"
    return str(size)


def quantity_value(text: Any) -> Decimal | None:
    """A Kubernetes quantity as a number (``"500m"`` is 0.5, ``"2Gi"`` 2147483648, ``"2G"`` 2000000000),
    or ``None`` if ``text`` is not one."""
    match = _QUANTITY.match(str(text).strip())
    if not match or isinstance(text, bool):
        return None
    number, exponent, suffix = match.groups()
    value = Decimal(number)
    return value * Decimal(10) ** int(exponent) if exponent else value * _SUFFIX[suffix or ""]


def same_quantity(a: Any, b: Any) -> bool:
    va, vb = quantity_value(a), quantity_value(b)
    return va == vb if va is not None and vb is not None else str(a) == str(b)


def deadline_seconds(time: float) -> int:
    """``time`` as ``activeDeadlineSeconds``: whole seconds, rounded up."""
    return max(1, math.ceil(time))


def container_quantities(resources: Resources) -> dict[str, str | None]:
    """``{"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}`` for the keys asked (``None``: ``gpus`` 0, no GPU)."""
    out: dict[str, str | None] = {}
    if resources.cpus is not None:
        out["cpu"] = cpu_quantity(resources.cpus)
    if resources.memory is not None:
        out["memory"] = size_quantity(resources.memory)
    if resources.gpus is not None:
        out[GPU] = str(resources.gpus) if resources.gpus else None
    return out


# -- checks and warnings --------------------------------------------------------------------


def check(resources: Resources, config: KubernetesConfig) -> None:
    """What the manifest cannot take, as one :class:`UsageError` before anything exists."""
    value = resources.gpu_type
    if value is not None and (len(value) > 63 or not _LABEL_VALUE.match(value)):
        raise UsageError(
            f"the resource gpu-type={value} cannot be the value of the node label {config.gpu_type_label}: a label "
            "value is at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit",
            hint=f"write the value the GPU nodes carry (kubectl get nodes -L {config.gpu_type_label}), "
                 "or set gpu-type-label in the backend config to the label your nodes use")


def conflicts(resources: Resources, config: KubernetesConfig) -> list[str]:
    """One warning for each setting of the backend config (or else of the Job template) that a
    resource overrides with something else; nothing when they say the same."""
    shown = resources.shown()
    template = _Template(config)
    out: list[str] = []

    wanted = container_quantities(resources)
    for key, name in _CONTAINER:
        if name not in wanted:
            continue
        new = wanted[name]
        said: set[str] = set()
        for part in ("requests", "limits"):
            configured = config.resources.get(part) or {}
            if name in configured:
                old = configured[name]
                where = (f"--backend-config key 'resources.{part}.{name}'" if config.resources_split
                         else f"--backend-config key 'resources.{name}'")
            elif name in template.container_resources(part):
                old = template.container_resources(part)[name]
                where = template.where(f"spec.template.spec.containers[0].resources.{part}.{name}")
            else:
                continue
            if where in said or (new is None and quantity_value(old) == 0) or (
                    new is not None and same_quantity(old, new)):
                continue
            said.add(where)
            result = f"the container gets {name} {new}" if new is not None else f"the container gets no {name}"
            out.append(_warning(where, old, key, shown[key], result))

    if resources.time is not None:
        new_deadline = deadline_seconds(resources.time)
        if config.active_deadline_seconds is not None:
            where, old = "--backend-config key 'active-deadline-seconds'", config.active_deadline_seconds
        else:
            where, old = template.where("spec.activeDeadlineSeconds"), template.spec.get("activeDeadlineSeconds")
        if old is not None and old != new_deadline:
            out.append(_warning(where, old, "time", shown["time"],
                                f"the Job's activeDeadlineSeconds is {new_deadline}"))

    if resources.gpu_type is not None:
        label = config.gpu_type_label
        if label in config.node_selector:
            where, old = f"--backend-config key 'node-selector' ({label})", config.node_selector[label]
        else:
            where, old = template.where(f"spec.template.spec.nodeSelector ({label})"), template.node_selector.get(label)
        if old is not None and str(old) != resources.gpu_type:
            out.append(_warning(where, old, "gpu-type", shown["gpu-type"],
                                f"the pod's nodeSelector has {label}: {resources.gpu_type}"))

    if resources.shm is not None:
        new_shm = size_quantity(resources.shm)
        for volume_name, volume in template.shm_volumes():
            empty_dir = volume.get("emptyDir") if isinstance(volume.get("emptyDir"), dict) else None
            if empty_dir is not None and empty_dir.get("medium") == "Memory" \
                    and same_quantity(empty_dir.get("sizeLimit"), new_shm):
                continue
            kind = next((k for k in volume if k != "name"), "no source") if volume else "a volume it does not define"
            size = f", sizeLimit {empty_dir['sizeLimit']}" if empty_dir and empty_dir.get("sizeLimit") else ""
            where = template.where(f"spec.template.spec.containers[0].volumeMounts ({SHM_PATH})")
            out.append(_warning(where, f"volume {volume_name!r} ({kind}{size})", "shm", shown["shm"],
                                f"{SHM_PATH} is a memory-backed emptyDir of {new_shm}"))
    return out


def _warning(where: str, old: Any, key: str, shown: str, result: str) -> str:
    return (f"{where} is {old}, but the resource {key}={shown} says otherwise and wins: {result}; "
            f"to keep {old}, run with -R {key}=none")


class _Template:
    """The parts of the Job template (if any) that resources override."""

    def __init__(self, config: KubernetesConfig) -> None:
        job = config.job_template or {}
        self.path = config.job_template_path
        self.spec = _mapping(job.get("spec"))
        self.pod = _mapping(_mapping(self.spec.get("template")).get("spec"))
        containers = self.pod.get("containers") or []
        self.main = _mapping(containers[0]) if containers else {}
        self.node_selector = _mapping(self.pod.get("nodeSelector"))

    def where(self, field: str) -> str:
        name = self.path.name if self.path else "the Job template"
        return f"the Job template {name}: {field}"

    def container_resources(self, part: str) -> Mapping[str, Any]:
        return _mapping(_mapping(self.main.get("resources")).get(part))

    def shm_volumes(self) -> list[tuple[str, Mapping[str, Any]]]:
        """``(name, volume)`` of each volume the first container mounts at /dev/shm."""
        volumes = {v.get("name"): v for v in self.pod.get("volumes") or [] if isinstance(v, dict)}
        return [(str(m.get("name")), volumes.get(m.get("name")) or {}) for m in self.main.get("volumeMounts") or []
                if isinstance(m, dict) and str(m.get("mountPath", "")).rstrip("/") == SHM_PATH]


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


# -- the manifest -------------------------------------------------------------------------


def apply(job: dict[str, Any], resources: Resources, config: KubernetesConfig) -> None:
    """Write ``resources`` into ``job`` (built from the config and the template), over what they said."""
    spec = job["spec"]
    pod = spec["template"]["spec"]
    main = pod["containers"][0]
    wanted = container_quantities(resources)
    if wanted:
        container = main.get("resources") or {}
        main["resources"] = container
        for part in ("requests", "limits"):
            values = dict(container.get(part) or {})
            for name, quantity in wanted.items():
                if quantity is None:
                    values.pop(name, None)
                else:
                    values[name] = quantity
            container[part] = values
    if resources.time is not None:
        spec["activeDeadlineSeconds"] = deadline_seconds(resources.time)
    if resources.gpu_type is not None:
        pod["nodeSelector"] = {**(pod.get("nodeSelector") or {}), config.gpu_type_label: resources.gpu_type}
    if resources.shm is not None:
        mounts = [m for m in main.get("volumeMounts") or []
                  if not (isinstance(m, dict) and str(m.get("mountPath", "")).rstrip("/") == SHM_PATH)]
        main["volumeMounts"] = [*mounts, {"name": SHM_VOLUME, "mountPath": SHM_PATH}]
        volumes = [v for v in pod.get("volumes") or [] if not (isinstance(v, dict) and v.get("name") == SHM_VOLUME)]
        pod["volumes"] = [*volumes, {"name": SHM_VOLUME,
                                     "emptyDir": {"medium": "Memory", "sizeLimit": size_quantity(resources.shm)}}]
