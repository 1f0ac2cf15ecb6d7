"""Getting the image a run needs: use it, pull it, or build it (content-addressed), and push it.

Three kinds of image:

* the project's ``docker_env.image``: used when present locally, pulled (with
  progress) when not;
* an *environment image* built from the project's ``docker_env.dockerfile``;
* a *code image* (``--build-image``, and always for remote backends): the
  environment image plus the project's files at :data:`CODE_DIR`.

Built images are tagged with a hash of everything that decides their content
(the base image's id, the Dockerfile, the build args and the files of the
context after ``.dockerignore``), so when nothing changed the tag already
exists and no build happens at all; when something did, the daemon's layer
cache rebuilds only the steps after the change.

Only builds, pulls and pushes load the ``docker`` SDK; checking that an
image exists goes through :class:`~mlexec_docker.engine.Engine`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

from attrs import frozen

from mlexec_core.errors import EnvironmentBuildError
from mlexec_core.plugin.interfaces import Reporter
from mlexec_core.project.model import DockerEnv, Project

from mlexec_docker import context as ctx
from mlexec_docker.engine import START_HINT, Engine

#: Where the project's files are in the container (mounted or copied), as in MLflow.
CODE_DIR = "/mlflow/projects/code"
#: Labels put on every image mlexec builds.
LABEL_KEY = "mlexec.content-key"
LABEL_PROJECT = "mlexec.project"
LABEL_KIND = "mlexec.image-kind"

_GENERATED_DOCKERFILE = ".mlexec.Dockerfile"


@frozen
class ImageInfo:
    uri: str
    image_id: str
    built: bool = False
    #: The image's repo digests (``repo@sha256:...``), for push decisions.
    repo_digests: tuple[str, ...] = ()


def repository_name(project: Project) -> str:
    """A valid image repository name from the project's name."""
    name = re.sub(r"[^a-z0-9._-]+", "-", project.display_name.lower()).strip("._-")
    return name or "mlexec-project"


def split_tag(ref: str) -> tuple[str, str]:
    """``repo[:tag]`` (with a registry port allowed in repo) -> (repo, tag)."""
    if "@" in ref:
        return ref, ""
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = ref.rsplit(":", 1)
        return repo, tag
    return ref, "latest"


def _docker_sdk():
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - a dependency of this package
        raise EnvironmentBuildError(f"the docker SDK is missing ({exc})",
                                    hint="reinstall mlexec-docker: pip install mlexec-docker") from None
    return docker


def api_client():
    """A low-level SDK client for builds, pulls and pushes (no read timeout: builds can be silent for long)."""
    docker = _docker_sdk()
    try:
        kwargs = docker.utils.kwargs_from_env()
        return docker.APIClient(version="auto", timeout=None, **kwargs)
    except docker.errors.DockerException as exc:
        raise EnvironmentBuildError(f"cannot reach the Docker daemon: {exc}", hint=START_HINT) from None


class Images:
    """Image operations for one run, reporting progress through ``reporter``."""

    def __init__(self, engine: Engine, reporter: Reporter, auth: Mapping[str, Any] | None = None) -> None:
        self.engine = engine
        self.reporter = reporter
        #: Registry credentials (``docker_auth`` of the Python API: username, password, registry ...);
        #: ``None`` uses the daemon's own ``docker login``.
        self.auth = dict(auth) if auth else None
        self._api = None

    @property
    def api(self):
        if self._api is None:
            self._api = api_client()
        return self._api

    # -- base images ---------------------------------------------------------------------

    def ensure(self, name: str, *, what: str = "docker_env.image") -> ImageInfo:
        """The image ``name``, pulled first when it is not here."""
        found = self.engine.image(name)
        if found is None:
            self.pull(name, what=what)
            found = self.engine.image(name)
            if found is None:
                raise EnvironmentBuildError(f"{what}: {name!r} was pulled but is not there")
        return ImageInfo(name, found["Id"], repo_digests=tuple(found.get("RepoDigests") or ()))

    def pull(self, name: str, *, what: str = "docker_env.image") -> None:
        repo, tag = split_tag(name)
        layers: dict[str, int] = {}
        done: set[str] = set()
        with self.reporter.status(f"Pulling {name}"):
            try:
                for event in self.api.pull(repo, tag=tag or None, stream=True, decode=True, auth_config=self.auth):
                    if "error" in event:
                        raise _PullFailed(event["error"])
                    layer, status = event.get("id"), event.get("status", "")
                    total = (event.get("progressDetail") or {}).get("total")
                    if layer and total:
                        layers[layer] = total
                    if layer and status in ("Pull complete", "Already exists") and layer not in done:
                        done.add(layer)
                        size = f" ({layers[layer] / 1e6:.1f} MB)" if layer in layers else ""
                        self.reporter.info(f"  {name}: layer {layer} {status.lower()}{size}")
            except _PullFailed as exc:
                raise _pull_error(name, what, str(exc)) from None
            except Exception as exc:
                docker = _docker_sdk()
                if isinstance(exc, docker.errors.APIError):
                    raise _pull_error(name, what, exc.explanation or str(exc)) from None
                if isinstance(exc, docker.errors.DockerException):
                    raise EnvironmentBuildError(f"cannot reach the Docker daemon: {exc}", hint=START_HINT) from None
                raise
        self.reporter.info(f"Pulled {name}")

    # -- builds --------------------------------------------------------------------------

    def environment_image(self, project: Project, docker_env: DockerEnv) -> ImageInfo:
        """The image built from ``docker_env.dockerfile`` (reused when its content key exists)."""
        assert docker_env.dockerfile
        where = str(project.mlproject or project.directory)
        context_dir = (project.directory / (docker_env.context or ".")).resolve()
        if not context_dir.is_dir():
            raise EnvironmentBuildError(f"docker_env.context: {docker_env.context!r} is not a directory "
                                        f"in {project.directory}", context=where)
        dockerfile_path = (project.directory / docker_env.dockerfile).resolve()
        text = dockerfile_path.read_text(encoding="utf-8")
        try:
            dockerfile_in_context = dockerfile_path.relative_to(context_dir).as_posix()
        except ValueError:
            dockerfile_in_context = None  # outside the context: sent as an extra file
        files = ctx.context_files(context_dir, always=[dockerfile_in_context] if dockerfile_in_context else [])
        bases = {base: self._base_id(base) for base in dockerfile_bases(text, docker_env.args)}
        key = content_key({
            "kind": "environment",
            "dockerfile": text,
            "args": dict(docker_env.args),
            "bases": bases,
            "files": ctx.digest_files(context_dir, files),
        })
        repo = split_tag(docker_env.image)[0] if docker_env.image else f"{repository_name(project)}-env"
        tag = f"{repo}:{key}"
        found = self.engine.image(tag)
        if found is not None:  # pushed since it was built (a remote backend's run): its digests are recorded too
            return ImageInfo(tag, found["Id"], built=False, repo_digests=tuple(found.get("RepoDigests") or ()))
        extra = {}
        if dockerfile_in_context is None:
            dockerfile_in_context = _GENERATED_DOCKERFILE
            extra[_GENERATED_DOCKERFILE] = text.encode()
        labels = {LABEL_KEY: key, LABEL_PROJECT: project.display_name, LABEL_KIND: "environment"}
        image_id = self._build(tag, context_dir, files, dockerfile_in_context, extra=extra,
                               buildargs=dict(docker_env.args), labels=labels,
                               what=f"docker_env.dockerfile ({docker_env.dockerfile})", where=where)
        return ImageInfo(tag, image_id, built=True)

    def code_image(self, project: Project, base: ImageInfo, repository: str | None = None) -> ImageInfo:
        """``base`` plus the project's files at :data:`CODE_DIR`, tagged by content."""
        directory = project.directory
        files = ctx.context_files(directory)
        store = ctx.tracking_store_files(directory, files, os.environ.get("MLFLOW_TRACKING_URI"))
        files = [f for f in files if f not in store]
        dockerfile = (
            f"FROM {base.uri}\n"
            f"COPY code/ {CODE_DIR}/\n"
            f"WORKDIR {CODE_DIR}\n"
        )
        key = content_key({"kind": "code", "base": base.image_id, "dockerfile": dockerfile,
                           "files": ctx.digest_files(directory, files)})
        repo = repository or repository_name(project)
        tag = f"{repo}:{key}"
        found = self.engine.image(tag)
        if found is not None:
            return ImageInfo(tag, found["Id"], built=False, repo_digests=tuple(found.get("RepoDigests") or ()))
        labels = {LABEL_KEY: key, LABEL_PROJECT: project.display_name, LABEL_KIND: "code"}
        image_id = self._build(tag, directory, files, _GENERATED_DOCKERFILE, prefix="code/",
                               extra={_GENERATED_DOCKERFILE: dockerfile.encode()}, labels=labels,
                               what="--build-image", where=str(project.mlproject or directory))
        return ImageInfo(tag, image_id, built=True)

    def _base_id(self, name: str) -> str:
        found = self.engine.image(name)
        return found["Id"] if found else name

    def _build(self, tag: str, directory: Path, files: list[str], dockerfile: str, *, what: str, where: str,
               prefix: str = "", extra: Mapping[str, bytes] | None = None, buildargs: Mapping[str, str] | None = None,
               labels: Mapping[str, str] | None = None) -> str:
        docker = _docker_sdk()
        steps: list[tuple[str, list[str]]] = []  # (step line, its output)
        image_id = None
        import tempfile  # a build only

        with tempfile.TemporaryFile() as archive:
            ctx.write_tar(archive, directory, files, prefix=prefix, extra=extra)
            archive.seek(0)
            with self.reporter.status(f"Building image {tag}"):
                try:
                    stream = self.api.build(fileobj=archive, custom_context=True, tag=tag, dockerfile=dockerfile,
                                            buildargs=dict(buildargs or {}), labels=dict(labels or {}),
                                            rm=True, forcerm=True, decode=True)
                    for event in stream:
                        if "error" in event:
                            raise _BuildFailed(event["error"].strip())
                        line = event.get("stream")
                        if line:
                            for piece in line.splitlines():
                                if piece.startswith("Step "):
                                    steps.append((piece, []))
                                    self.reporter.info(f"  {piece}")
                                elif piece.strip() and steps:
                                    steps[-1][1].append(piece)
                        aux = event.get("aux") or {}
                        if aux.get("ID"):
                            image_id = aux["ID"]
                except _BuildFailed as exc:
                    raise _build_error(what, where, str(exc), steps) from None
                except docker.errors.APIError as exc:
                    raise _build_error(what, where, exc.explanation or str(exc), steps) from None
                except docker.errors.DockerException as exc:
                    raise EnvironmentBuildError(f"cannot reach the Docker daemon: {exc}", hint=START_HINT) from None
        found = self.engine.image(tag)
        if found is None:
            raise _build_error(what, where, "the build ended without an image", steps)
        cached = sum(1 for _, output in steps if any("Using cache" in o for o in output))
        self.reporter.info(f"Built {tag} ({cached} of {len(steps)} steps from the cache)")
        return image_id or found["Id"]

    # -- push ----------------------------------------------------------------------------

    def push(self, image: ImageInfo) -> str:
        """Push ``image.uri``; skip when the registry already has this image. Returns the digest."""
        docker = _docker_sdk()
        repo, tag = split_tag(image.uri)
        local = self.engine.image(image.uri) or {}
        local_digests = {d.split("@", 1)[1] for d in local.get("RepoDigests") or () if d.startswith(repo + "@")}
        remote = self._registry_digest(image.uri)
        if remote is not None and remote in local_digests:
            self.reporter.info(f"{image.uri} is already in the registry ({remote[:19]}...): not pushed")
            return remote
        digest = None
        with self.reporter.status(f"Pushing {image.uri}"):
            try:
                for event in self.api.push(repo, tag=tag, stream=True, decode=True, auth_config=self.auth):
                    if "error" in event:
                        raise _PushFailed(event["error"])
                    aux = event.get("aux") or {}
                    if aux.get("Digest"):
                        digest = aux["Digest"]
            except _PushFailed as exc:
                raise _push_error(image.uri, str(exc)) from None
            except docker.errors.APIError as exc:
                raise _push_error(image.uri, exc.explanation or str(exc)) from None
        digest = digest or self._registry_digest(image.uri)
        if not digest:
            raise _push_error(image.uri, "the registry did not report a digest")
        self.reporter.info(f"Pushed {image.uri} ({digest[:19]}...)")
        return digest

    def _registry_digest(self, ref: str) -> str | None:
        docker = _docker_sdk()
        try:
            data = self.api.inspect_distribution(ref)
        except docker.errors.APIError:
            return None
        return (data.get("Descriptor") or {}).get("digest")


class _PullFailed(Exception):
    pass


class _BuildFailed(Exception):
    pass


class _PushFailed(Exception):
    pass


def content_key(spec: Mapping[str, Any], length: int = 16) -> str:
    from mlexec_core.envcache import spec_key

    return spec_key(spec, length)


def dockerfile_bases(text: str, args: Mapping[str, str] | None = None) -> list[str]:
    """The external images a Dockerfile starts ``FROM`` (stage names and ``scratch`` left out)."""
    joined = re.sub(r"\\\r?\n", " ", text)
    stages: set[str] = set()
    bases: list[str] = []
    defaults: dict[str, str] = {}
    for raw in joined.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        instr = words[0].upper()
        if instr == "ARG" and not bases and len(words) > 1 and "=" in words[1]:
            name, value = words[1].split("=", 1)
            defaults[name] = value.strip("\"'")
        if instr != "FROM":
            continue
        rest = [w for w in words[1:] if not w.startswith("--")]
        if not rest:
            continue
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: {**defaults, **(args or {})}.get(m.group(1), m.group(0)), rest[0])
        if len(rest) >= 3 and rest[1].upper() == "AS":
            stages.add(rest[2].lower())
        if image.lower() in stages or image == "scratch":
            continue
        bases.append(image)
    return bases


def _pull_error(name: str, what: str, message: str) -> EnvironmentBuildError:
    lower = message.lower()
    if any(s in lower for s in ("no such host", "connection refused", "i/o timeout", "dial tcp", "tls:",
                                "server misbehaving", "network is unreachable", "connect: ")):
        return EnvironmentBuildError(
            f"{what}: {name!r} is not on this machine, and its registry is unreachable: {message}",
            hint=f"check the registry address and your network, or build/load the image first "
                 f"(`docker pull {name}` / `docker load`)",
        )
    if any(s in lower for s in ("not found", "manifest unknown", "pull access denied", "does not exist")):
        return EnvironmentBuildError(
            f"{what}: image {name!r} was not found, locally or in its registry: {message}",
            hint="check the image name and tag (`docker images` lists local ones); "
                 "for a private registry, `docker login` first",
        )
    return EnvironmentBuildError(f"{what}: could not pull {name!r}: {message}",
                                 hint=f"try `docker pull {name}` to see the registry's answer")


def _build_error(what: str, where: str, message: str, steps: list[tuple[str, list[str]]]) -> EnvironmentBuildError:
    lines = [f"{what}: the image build failed"]
    if steps:
        step, output = steps[-1]
        lines[0] += f" at {step}"
        if output:
            tail = output[-25:]
            lines.append("  output of that step:" + (" (last 25 lines)" if len(output) > 25 else ""))
            lines.extend(f"    {o}" for o in tail)
    lines.append(f"  {message}")
    return EnvironmentBuildError("\n".join(lines), context=where,
                                 hint="fix the Dockerfile (or the files it uses) and run again; "
                                      "steps that succeeded are cached")


def _push_error(uri: str, message: str) -> EnvironmentBuildError:
    return EnvironmentBuildError(
        f"could not push {uri}: {message}",
        hint="check the repository address and that the registry is running; "
             "for a private registry, `docker login` first",
    )
