"""The options ``mlexec run`` and ``mlexec sweep`` share, declared once.

Each becomes a field of :class:`~mlexec_core.pipeline.options.RunOptions`
(:func:`take_run_options`), so a new option that applies to every run is one
entry in :data:`RUN_OPTIONS` and one field of the record.  Imports click only.
"""

from __future__ import annotations

from typing import Any, Callable

import click

#: ``(field, command -> click.option)`` for every shared option, in the order ``--help`` lists them.
#: ``command`` is ``"run"`` or ``"sweep"``: a few defaults and help texts differ.
RUN_OPTIONS: list[tuple[str, Callable[[str], Callable]]] = [
    ("version", lambda cmd: click.option("-v", "--version", "version", metavar="VERSION",
                                         help="Git commit, branch or tag to run.")),
    ("docker_args", lambda cmd: click.option(
        "-A", "--docker-args", multiple=True, metavar="NAME[=VALUE]",
        help="A `docker run` option (-A gpus=all, -A shm-size=1g); repeatable.")),
    ("resources", lambda cmd: click.option(
        "-R", "--resource", "resources", multiple=True, metavar="NAME=VALUE",
        help="What " + ("the run" if cmd == "run" else "each child") + " needs, over the MLproject's "
             "resources: cpus, memory, gpus, gpu-type, shm, time (-R gpus=1 -R time=2h; NAME=none drops one); "
             "repeatable.")),
    ("experiment_name", lambda cmd: click.option("--experiment-name", envvar="MLFLOW_EXPERIMENT_NAME",
                                                 help="Experiment to log to (created if new).")),
    ("experiment_id", lambda cmd: click.option("--experiment-id", envvar="MLFLOW_EXPERIMENT_ID",
                                               help="Experiment id to log to.")),
    ("backend", lambda cmd: click.option(
        "-b", "--backend", default="local" if cmd == "run" else None, show_default=cmd == "run",
        help="Where to run: local, or a plugin's." if cmd == "run"
        else "Where the children run: local (default), or a plugin's.")),
    ("backend_config", lambda cmd: click.option(
        "-c", "--backend-config", metavar="FILE|JSON",
        help="Backend configuration: a JSON or YAML file, or inline JSON.")),
    ("env_manager", lambda cmd: click.option(
        "--env-manager", metavar="NAME",
        help="Environment manager: local, or a plugin's (virtualenv, uv, conda ...). Default: chosen from the "
             "project.")),
    ("storage_dir", lambda cmd: click.option(
        "--storage-dir", envvar="MLFLOW_TMP_DIR", type=click.Path(file_okay=False),
        help="Directory for temporary files of the run" + ("." if cmd == "run" else "s."))),
    ("run_name", lambda cmd: click.option(
        "--run-name", help="Name of the new run." if cmd == "run"
        else "Name of the parent run (children are named after it).")),
    ("restart_on_exit", lambda cmd: click.option(
        "--restart-on-exit", metavar="CODES",
        help="Exit statuses after which the job is started again into the same run (75,143); "
             "each attempt gets MLEXEC_ATTEMPT and MLEXEC_CHECKPOINT_DIR.")),
    ("max_restarts", lambda cmd: click.option(
        "--max-restarts", type=int, metavar="K", help="Start the job again at most K times (default 3).")),
    ("build_image", lambda cmd: click.option(
        "--build-image", is_flag=True, default=False if cmd == "run" else None,
        help="docker_env projects: build an image holding the project code"
             + ("." if cmd == "run" else " (once, for every child)."))),
]


def run_options(command: str) -> Callable:
    """A decorator adding every shared option to ``command`` (``"run"`` or ``"sweep"``)."""
    def decorate(function: Callable) -> Callable:
        for _, make in reversed(RUN_OPTIONS):
            function = make(command)(function)
        return function

    return decorate


def take_run_options(kwargs: dict[str, Any], **more: Any):
    """Remove the shared options from a command's ``kwargs``; return them (and ``more``) as a
    :class:`~mlexec_core.pipeline.options.RunOptions`."""
    from mlexec_core.pipeline.options import RunOptions

    values = {name: kwargs.pop(name) for name, _ in RUN_OPTIONS}
    values["build_image"] = bool(values["build_image"])
    return RunOptions(**values, **more)
