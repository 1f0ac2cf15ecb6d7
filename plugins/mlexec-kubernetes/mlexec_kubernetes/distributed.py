"""A run over many processes on Kubernetes (``nodes``, ``processes-per-node``), as plain data (no I/O).

``nodes: N`` is an Indexed Job (``completionMode: Indexed``, ``completions =
parallelism = N``): one pod per node, each with its completion index (the pod's
``JOB_COMPLETION_INDEX``), which is its ``NODE_RANK``.  A headless Service (no
cluster IP, selecting the Job's pods, ``publishNotReadyAddresses``) named like
the Job, and the pods' ``subdomain`` set to it, give every pod the DNS name
``<job>-<index>.<service>``: ``MASTER_ADDR`` is index 0's, ``MASTER_PORT`` is
:data:`MASTER_PORT` (each pod has its own network namespace, so a fixed port
cannot collide).

``processes-per-node: P`` is :func:`launcher`: a small POSIX ``sh`` program in
the container's command that starts the command P times, each with its rank's
variables (and its share of ``CUDA_VISIBLE_DEVICES``), prefixes every line of
their output ``[rank R] ``, and when one process fails stops the others and
exits with its status, writing ``mlexec: rank R status C`` to the container's
termination message, from which :func:`rank_failure` reads it back.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from mlexec_core.plugin.interfaces import RunPlan

#: Where rank 0 listens, in every pod.
MASTER_PORT = 29500
#: The pod annotation (and variable) of an Indexed Job's pod with its index.
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
COMPLETION_INDEX_VAR = "JOB_COMPLETION_INDEX"
#: The container's termination message file (Kubernetes' default ``terminationMessagePath``).
TERMINATION_LOG = "/dev/termination-log"

_FAILURE = re.compile(r"mlexec: rank (\d+) status (\d+)")


def shape(plan: RunPlan) -> tuple[int, int]:
    """``(nodes, processes per node)`` of the run, 1 for what is not asked."""
    resources = plan.resources
    return resources.nodes or 1, resources.processes_per_node or 1


def is_distributed(plan: RunPlan) -> bool:
    nodes, per_node = shape(plan)
    return nodes * per_node > 1


def master_addr(job: str, nodes: int) -> str:
    """Where rank 0 listens: index 0's DNS name (``<job>-0.<service>``), or the pod itself for one node."""
    return f"{job}-0.{job}" if nodes > 1 else "127.0.0.1"


def attempt_counter(folder: str) -> list[str]:
    """Lines of sh that set ``MLEXEC_ATTEMPT`` from a counter in ``folder`` (the run's checkpoint folder,
    which outlives the pods): Kubernetes gives a pod no retry count, so each pod counts the starts of
    its index (``NODE_RANK``, 0 for a Job of one pod) there."""
    return [
        "# MLEXEC_ATTEMPT: this pod's index has started that many times (a counter in the checkpoint folder)",
        f'__f={_quote(folder)}/.mlexec-attempts."${{{COMPLETION_INDEX_VAR}:-0}}"',
        '__n=$(cat "$__f" 2>/dev/null); __n=$((${__n:-0} + 1))',
        'echo "$__n" >"$__f.tmp" 2>/dev/null && mv "$__f.tmp" "$__f" && export MLEXEC_ATTEMPT="$__n"',
    ]


def single(attempt_folder: str) -> str:
    """The container's program for one process whose attempts are counted (:func:`attempt_counter`)."""
    return "\n".join([*attempt_counter(attempt_folder), 'exec /bin/sh -c "$1"']) + "\n"


def launcher(*, nodes: int, per_node: int, master: str, port: int = MASTER_PORT,
             attempt_folder: str | None = None) -> str:
    """The container's program (``sh -c <this> mlexec-launcher <command>``): P processes of the command.

    ``attempt_folder``: the run's checkpoint folder, where :func:`attempt_counter` counts the pod's starts.
    """
    attempt = attempt_counter(attempt_folder) if attempt_folder else []
    return "\n".join([
        "# mlexec: this pod's processes of a distributed run, each with its rank's variables.",
        f"export NNODES={nodes} LOCAL_WORLD_SIZE={per_node} WORLD_SIZE={nodes * per_node}",
        f'export NODE_RANK="${{{COMPLETION_INDEX_VAR}:-0}}" MASTER_ADDR={master} MASTER_PORT={port}',
        *attempt,
        '__d=$(mktemp -d 2>/dev/null || { mkdir -p "/tmp/mlexec.$$" && echo "/tmp/mlexec.$$"; })',
        "__cmd=$1",
        "__main=$$",
        "__pids=",
        "# a signal to every process (its process group when setsid made one: the command's children too)",
        "__each() {",
        "    for __q in \"$__d\"/pid.*; do",
        "        [ -f \"$__q\" ] || continue",
        "        kill -s \"$1\" -- \"-$(cat \"$__q\")\" 2>/dev/null || kill -s \"$1\" \"$(cat \"$__q\")\" 2>/dev/null",
        "    done",
        "}",
        "__setsid=; command -v setsid >/dev/null 2>&1 && __setsid=setsid",
        "# stop the others: SIGTERM, then SIGKILL after MLEXEC_STOP_TIMEOUT (10 s)",
        "__stop() {",
        "    __each TERM",
        "    if [ -z \"${__timer:-}\" ]; then",
        "        (sleep \"${MLEXEC_STOP_TIMEOUT:-10}\"; __each KILL) >/dev/null 2>&1 &",
        "        __timer=$!",
        "    fi",
        "}",
        "trap 'touch \"$__d/stopping\"; __stop' TERM INT",
        "trap '__stop' USR1",
        "__i=0",
        f"while [ $__i -lt {per_node} ]; do",
        f"    __r=$((NODE_RANK * {per_node} + __i))",
        '    mkfifo "$__d/out.$__i"',
        "    # its output, every line prefixed with its rank, kept whole",
        '    (while IFS= read -r __l || [ -n "$__l" ]; do printf \'[rank %s] %s\\n\' "$__r" "$__l"; done'
        ' <"$__d/out.$__i") &',
        '    __pids="$__pids $!"',
        "    (",
        '        export LOCAL_RANK=$__i RANK=$__r',
        '        if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then  # its own share when the devices divide evenly',
        "            __n=$(echo \"$CUDA_VISIBLE_DEVICES\" | tr ',' '\\n' | grep -c .)",
        "            if [ $((__n % LOCAL_WORLD_SIZE)) = 0 ]; then",
        "                __s=$((__n / LOCAL_WORLD_SIZE))",
        "                CUDA_VISIBLE_DEVICES=$(echo \"$CUDA_VISIBLE_DEVICES\" | tr ',' '\\n' | grep . |"
        " sed -n \"$((__i * __s + 1)),$((__i * __s + __s))p\" | tr '\\n' ',' | sed 's/,$//')",
        "            fi",
        "        fi",
        '        $__setsid /bin/sh -c "$__cmd" >"$__d/out.$__i" 2>&1 &',
        '        echo $! >"$__d/pid.$__i"',
        '        wait $! 2>/dev/null',
        "        __c=$?",
        '        if [ "$__c" != 0 ] && [ ! -e "$__d/stopping" ] && mkdir "$__d/failed" 2>/dev/null; then',
        '            echo "$RANK $__c" >"$__d/failed/rank"',
        '            kill -USR1 "$__main"',
        "        fi",
        "    ) &",
        '    __pids="$__pids $!"',
        "    __i=$((__i + 1))",
        "done",
        "# wait for every process and its output (a signal's trap interrupts wait: wait again)",
        "for __p in $__pids; do",
        '    while :; do wait "$__p" 2>/dev/null; [ $? -le 128 ] && break; done',
        "done",
        '[ -n "${__timer:-}" ] && kill "$__timer" 2>/dev/null',
        'if [ -f "$__d/failed/rank" ]; then',
        '    read -r __rank __code <"$__d/failed/rank"',
        f'    echo "mlexec: rank $__rank status $__code" >{TERMINATION_LOG} 2>/dev/null',
        '    echo "mlexec: rank $__rank exited with status $__code; the other ranks were stopped" >&2',
        '    exit "$__code"',
        "fi",
        '[ -e "$__d/stopping" ] && exit 143',
        "exit 0",
    ]) + "\n"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def rank_failure(message: Any) -> tuple[int, int] | None:
    """The rank that failed first and its status, from a container's termination message."""
    match = _FAILURE.search(str(message or ""))
    return (int(match.group(1)), int(match.group(2))) if match else None


def service(*, name: str, namespace: str, labels: Mapping[str, str], selector: Mapping[str, str],
            owner: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The headless Service that gives each pod of the Job its DNS name (``<job>-<index>.<name>``).

    ``owner``: the Job (``name``, ``uid``), so that deleting the Job deletes the Service too."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if owner is not None:
        metadata["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job", "name": owner["name"],
                                        "uid": owner["uid"], "controller": False,
                                        "blockOwnerDeletion": True}]
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": metadata,
        "spec": {"clusterIP": "None", "selector": dict(selector), "publishNotReadyAddresses": True,
                 "ports": [{"name": "master", "port": MASTER_PORT, "targetPort": MASTER_PORT,
                            "protocol": "TCP"}]},
    }
