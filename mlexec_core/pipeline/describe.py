"""Plain-data summaries of projects and plans (``describe``, ``--dry-run``)."""

from __future__ import annotations

from typing import Any

from mlexec_core.pipeline.plan import RunPlan
from mlexec_core.plugin.manager import Plugins
from mlexec_core.project.model import EnvKind, Project


def environment_summary(project: Project) -> dict[str, Any]:
    env = project.environment
    out: dict[str, Any] = {"kind": env.kind.value, "origin": env.origin}
    if env.file is not None:
        out["file"] = str(env.file)
        out["description"] = f"{env.kind.value} ({env.file.name})"
    elif env.kind is EnvKind.DOCKER and env.docker is not None:
        d = env.docker
        out.update({"image": d.image, "dockerfile": d.dockerfile, "volumes": list(d.volumes),
                    "environment": [e.name for e in d.environment]})
        out["description"] = f"docker ({d.image or d.dockerfile})"
    else:
        out["description"] = "none declared"
    return out


def project_summary(project: Project) -> dict[str, Any]:
    return {
        "name": project.display_name,
        "directory": str(project.directory),
        "mlproject": str(project.mlproject) if project.mlproject else None,
        "environment": environment_summary(project),
        "entry_points": [
            {
                "name": ep.name,
                "command": ep.command,
                "description": ep.description,
                "resources": ep.resources.shown(),
                "parameters": [
                    {"name": p.name, "type": p.type_name, "default": p.default, "required": p.required,
                     "description": p.description}
                    for p in ep.parameters.values()
                ],
            }
            for ep in project.entry_points.values()
        ],
    }


def plan_summary(plugins: Plugins, plan: RunPlan) -> dict[str, Any]:
    from mlexec_core.pipeline.resolve import honoured_resources
    from mlexec_core.resources import KEYS

    backend = plugins.backend(plan.backend)
    env_text = None
    env_plan: dict[str, Any] = {}
    if backend.uses_local_environment(plan):
        manager = plugins.environment_manager(plan.env_manager)
        env_text = manager.describe(plan.project)
        env_plan = dict(manager.dry_run(plan))
    return {
        "project": plan.project.display_name,
        "directory": str(plan.work_dir),
        "entry_point": plan.entry_point.name,
        "command": plan.command,
        "parameters": [
            {"name": p.name, "type": plan.entry_point.parameters[p.name].type_name, "value": p.value,
             "source": p.source}
            for p in plan.parameters.values()
        ] + [{"name": k, "type": "string", "value": v, "source": "extra"} for k, v in plan.extra_parameters.items()],
        "environment": environment_summary(plan.project)["description"],
        "env_manager": plan.env_manager_requested,
        "env_action": env_text,
        **({"env_plan": env_plan} if env_plan else {}),
        "resources": plan.resources.shown(),
        "honoured_resources": [k for k in KEYS if k in honoured_resources(
            plugins, plan, backend.uses_local_environment(plan))[0]],
        "backend": plan.backend,
        "backend_plan": dict(backend.dry_run(plan)),
        "docker_args": [[k, v] for k, v in plan.docker_args],
        "source": plan.source.uri,
        "git_commit": plan.source.git_commit,
    }
