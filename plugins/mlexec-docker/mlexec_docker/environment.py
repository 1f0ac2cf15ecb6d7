"""The ``docker`` environment manager: ``docker_env`` projects run in a container.

:meth:`DockerEnvironment.prepare` runs before the tracking run exists, so
every mistake it can find (no daemon, an unknown image, an unreachable
registry, a failing Dockerfile, an unset variable, a missing volume path, an
unknown ``-A`` option) ends the command with one message and leaves no run.
It returns a :class:`PreparedEnvironment` whose launcher starts the command
in a container; the core's local backend supervises it like a process.

The run's resources (``-R``, ``resources:``) become container limits here too
(:mod:`mlexec_docker.resources`), so a ``-A`` option they replace is reported,
and a limit the engine would refuse is refused, before the run exists.
"""

from __future__ import annotations

from typing import Any, Iterable

from mlexec_core.errors import EnvironmentBuildError
from mlexec_core.plugin.interfaces import (EnvironmentInfo, EnvironmentLock, EnvironmentManager, PreparedEnvironment,
                                         RunPlan)
from mlexec_core.project.model import DockerEnv, EnvKind, Project

from mlexec_docker.engine import Engine, EngineError
from mlexec_docker.images import CODE_DIR, LABEL_KEY, LABEL_KIND, LABEL_PROJECT, ImageInfo, Images, repository_name
from mlexec_docker.launcher import ContainerLauncher
from mlexec_docker.resources import apply_resources, check_limits, docker_run_options
from mlexec_docker.runconfig import apply_docker_args, resolve_environment, resolve_volumes

TAG_IMAGE_URI = "mlflow.docker.image.uri"
TAG_IMAGE_ID = "mlflow.docker.image.id"


def docker_env_of(project: Project) -> DockerEnv:
    docker = project.environment.docker
    if project.environment.kind is not EnvKind.DOCKER or docker is None:
        raise EnvironmentBuildError(f"{project.display_name} has no docker_env",
                                    context=str(project.mlproject or project.directory),
                                    hint="add a docker_env section (image: or dockerfile:) to the MLproject")
    return docker


def project_image(images: Images, project: Project, *, with_code: bool, repository: str | None = None) -> ImageInfo:
    """The image a run of ``project`` uses: the declared or Dockerfile-built one, plus the code when asked."""
    docker = docker_env_of(project)
    base = images.environment_image(project, docker) if docker.dockerfile else images.ensure(docker.image or "")
    if not with_code:
        return base
    return images.code_image(project, base, repository=repository)


LOCK_KIND = "docker-image"


def image_lock(image: ImageInfo) -> EnvironmentLock:
    """The image a run used: its ID, and its repo digests when it came from (or went to) a registry."""
    lines = [f"image-id {image.image_id}", f"image {image.uri}"]
    lines += [f"repo-digest {digest}" for digest in image.repo_digests]
    details = {"image_id": image.image_id, "image": image.uri}
    if image.repo_digests:
        details["repo_digest"] = image.repo_digests[0]
    return EnvironmentLock(kind=LOCK_KIND, text="\n".join(lines) + "\n", details=details)


def read_image_lock(lock: EnvironmentLock) -> tuple[str, str, tuple[str, ...]]:
    """``(image_id, image, repo_digests)`` of a recorded ``docker-image`` lock."""
    if lock.kind != LOCK_KIND:
        raise EnvironmentBuildError(f"the recorded environment is a {lock.kind} lock; the docker manager runs "
                                    f"the image of a {LOCK_KIND} lock", hint="rerun with the manager the run used")
    image_id, uri, digests = "", "", []
    for line in lock.text.splitlines():
        word, _, value = line.strip().partition(" ")
        if word == "image-id":
            image_id = value.strip()
        elif word == "image":
            uri = value.strip()
        elif word == "repo-digest" and value.strip():
            digests.append(value.strip())
    if not image_id.startswith("sha256:"):
        raise EnvironmentBuildError("the recorded docker-image lock names no image ID",
                                    context="the run's mlexec/environment.lock")
    return image_id, uri or image_id, tuple(digests)


def recorded_image(images: Images, lock: EnvironmentLock) -> ImageInfo:
    """The image a recorded run ran (``mlexec rerun``), never rebuilt: by its ID when the engine
    still has it, else pulled back by its repo digest, else one error saying why not."""
    image_id, uri, digests = read_image_lock(lock)
    engine, reporter = images.engine, images.reporter
    found = engine.image(image_id)
    if found is None:
        if not digests:
            raise EnvironmentBuildError(
                f"image {image_id} ({uri}) is no longer on this machine and was never pushed to a registry, so "
                "the run's environment cannot be had again", context="the run's mlexec/environment.lock",
                hint="load or rebuild that very image (`docker load`), or run the project afresh with `mlexec run`")
        failures = []
        for digest in digests:
            reporter.info(f"the recorded image {image_id[:19]} is no longer on this machine: pulling {digest}")
            try:
                images.pull(digest, what="the recorded image")
            except EnvironmentBuildError as exc:
                failures.append(exc.message)
                continue
            found = engine.image(image_id)
            if found is None:
                pulled = (engine.image(digest) or {}).get("Id", "another image")
                failures.append(f"{digest} is {pulled}, not the recorded {image_id}")
                continue
            break
        if found is None:
            raise EnvironmentBuildError(
                f"image {image_id} ({uri}) is no longer on this machine, and pulling it back failed:\n  "
                + "\n  ".join(failures), context="the run's mlexec/environment.lock",
                hint="start the registry again or `docker login` to it, or run the project afresh with `mlexec run`")
    return ImageInfo(uri, image_id, repo_digests=tuple(found.get("RepoDigests") or ()) or digests)


def is_code_image(engine: Engine, image_id: str) -> bool:
    """Whether the image holds the project's code (``--build-image``): then nothing is mounted over it."""
    labels = ((engine.image(image_id) or {}).get("Config") or {}).get("Labels") or {}
    return labels.get(LABEL_KIND) == "code"


class DockerEnvironment(EnvironmentManager):
    """docker_env projects in a container (registered, with what it handles, in :mod:`mlexec_docker.plugin`)."""

    def check(self, project: Project, requested_as: str) -> None:
        docker = docker_env_of(project)
        resolve_environment(docker, project)
        resolve_volumes(docker, project)

    def prepare(self, plan: RunPlan) -> PreparedEnvironment:
        project = plan.project
        docker = docker_env_of(project)
        environment = resolve_environment(docker, project)
        binds = resolve_volumes(docker, project)
        config, host_config = apply_docker_args(plan.docker_args)
        host_config, warnings = apply_resources(plan.resources, plan.docker_args, host_config)
        for warning in warnings:
            self.context.reporter.warning(warning)

        engine = Engine()
        engine.ping()
        check_limits(plan.resources, plan.docker_args, host_config,
                     engine_cpus=engine.cpus() if plan.resources.cpus is not None else None)
        images = Images(engine, self.context.reporter, plan.options.get("docker_auth"))
        if plan.environment_lock is not None:  # mlexec rerun: the very image the run ran, never rebuilt
            image = recorded_image(images, plan.environment_lock)
            with_code = plan.build_image or is_code_image(engine, image.image_id)
            self.context.reporter.info(f"Using the recorded image {image.image_id[:19]} ({image.uri})"
                                       + (", the project's code in it" if with_code else ""))
            run_image = image.image_id
        else:
            image = project_image(images, project, with_code=plan.build_image)
            with_code = plan.build_image
            if not image.built:
                what = "built image, unchanged project" if plan.build_image or docker.dockerfile else "image"
                self.context.reporter.info(f"Using {what} {image.uri}")
            run_image = image.uri
        launcher = ContainerLauncher(
            engine, run_image, project=repository_name(project),
            mount_code=None if with_code else str(project.directory),
            binds=binds, environment=environment, config=config, host_config=host_config,
            resources=plan.resources, reporter=self.context.reporter,
        )
        return PreparedEnvironment(
            name="docker",
            tags={TAG_IMAGE_URI: image.uri, TAG_IMAGE_ID: image.image_id},
            launcher=launcher,
            location=image.uri,
            lock=image_lock(image),
        )

    def describe(self, project: Project) -> str:
        docker = docker_env_of(project)
        source = f"built from {docker.dockerfile}" if docker.dockerfile else f"image {docker.image}"
        return f"a container ({source}), the project at {CODE_DIR}"

    def dry_run(self, plan: RunPlan) -> dict[str, Any]:
        """What :meth:`prepare` would start, contacting nothing: the image and the ``docker run``
        options (the resources', then the ``-A`` options they leave), with the same warnings
        for the ``-A`` options a resource replaces."""
        docker = docker_env_of(plan.project)
        config, host_config = apply_docker_args(plan.docker_args)
        host_config, warnings = apply_resources(plan.resources, plan.docker_args, host_config)
        for warning in warnings:
            self.context.reporter.warning(warning)
        check_limits(plan.resources, plan.docker_args, host_config)
        out: dict[str, Any] = {
            "image": docker.image or f"built from {docker.dockerfile}",
            "docker_run": docker_run_options(plan.resources, plan.docker_args),
        }
        if plan.environment_lock is not None:
            out["image"] = out["from_lock"] = self._dry_run_lock(plan.environment_lock)
        per_node = plan.resources.processes_per_node or 1
        if per_node > 1:  # the ranks in one container (mlexec_docker.ranks)
            from mlexec_core.distributed import node_ranks

            from mlexec_docker.ranks import IDLE

            out["container"] = f"one for the run, idle ({' '.join(IDLE)}); each process a `docker exec` into it"
            out["processes"] = [" ".join(f"{k}={v if k != 'MASTER_PORT' else '<free port>'}"
                                         for k, v in rank.env.items())
                                for rank in node_ranks(per_node, master_addr="127.0.0.1", master_port=0)]
        return out

    def _dry_run_lock(self, lock: EnvironmentLock) -> str:
        """Which way the recorded image would be had, asking the engine only whether it has it."""
        try:
            image_id, uri, digests = read_image_lock(lock)
        except EnvironmentBuildError as exc:
            return exc.message
        try:
            here = Engine().image(image_id) is not None
        except (EnvironmentBuildError, EngineError):
            here = None
        what = f"the recorded image {image_id} ({uri}), never rebuilt"
        if here:
            return f"{what}: on this machine, run by its ID"
        if digests:
            return f"{what}: {'not on this machine' if here is False else 'if the engine no longer has it'}, " \
                   f"pulled back as {digests[0]}"
        if here is False:
            return f"{what}: NOT on this machine and never pushed to a registry: the rerun will fail"
        return f"{what}: by its ID (never pushed: the engine must still have it)"

    # -- mlexec env list / prune -----------------------------------------------------------

    def list_environments(self) -> Iterable[EnvironmentInfo]:
        from pathlib import Path

        engine = Engine()
        try:
            found = engine.images(LABEL_KEY)
            used = {c.get("ImageID") for c in engine.containers("mlexec.run-id")}
        except (EnvironmentBuildError, EngineError):
            return []
        out = []
        for image in found:
            labels = image.get("Labels") or {}
            tags = [t for t in image.get("RepoTags") or () if t != "<none>:<none>"]
            out.append(EnvironmentInfo(
                manager=self.name,
                name=tags[0] if tags else image["Id"][7:19],
                path=Path(image["Id"]),
                summary=f"{labels.get(LABEL_KIND, 'image')} image of {labels.get(LABEL_PROJECT, '?')}",
                size_bytes=image.get("Size"),
                last_used=image.get("Created"),
                in_use=image["Id"] in used,
            ))
        return out

    def remove_environment(self, info: EnvironmentInfo) -> bool:
        if info.in_use:
            return False
        try:
            Engine().remove_image(str(info.path))
        except EngineError as exc:
            if exc.status == 409:
                return False
            if exc.status != 404:
                raise
        return True
