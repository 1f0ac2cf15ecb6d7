"""mlexec-docker: run MLflow ``docker_env`` projects with mlexec, and build images for remote backends."""

__version__ = "0.1.0"
