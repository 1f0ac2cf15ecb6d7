"""mlexec-kubernetes: run MLflow projects as Kubernetes Jobs (backend ``kubernetes``)."""
