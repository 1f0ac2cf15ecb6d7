"""The ``docker`` image builder: an image holding the project and its environment, for remote backends.

Backends that run elsewhere (Kubernetes ...) get it with
``context.plugins.image_builder("docker").build(plan, repository=..., push=True)``.
The image is always a code image (the project copied in at
:data:`~mlexec_docker.images.CODE_DIR`), tagged by content in ``repository``;
pushing is skipped when the registry already has that tag at the same digest.
"""

from __future__ import annotations

from mlexec_core.plugin.interfaces import ImageBuilder, ImageRef, RunPlan

from mlexec_docker.engine import Engine
from mlexec_docker.environment import project_image
from mlexec_docker.images import Images


class DockerImageBuilder(ImageBuilder):
    """Builds and pushes images with the local Docker engine (registered in :mod:`mlexec_docker.plugin`)."""

    def build(self, plan: RunPlan, *, repository: str | None = None, push: bool = False) -> ImageRef:
        engine = Engine()
        engine.ping()
        images = Images(engine, self.context.reporter, plan.options.get("docker_auth"))
        image = project_image(images, plan.project, with_code=True, repository=repository)
        digest = images.push(image) if push else None
        return ImageRef(uri=image.uri, image_id=image.image_id, digest=digest)
