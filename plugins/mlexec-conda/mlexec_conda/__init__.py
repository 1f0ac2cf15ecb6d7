"""mlexec plugin for conda.yaml environments (``--env-manager conda``)."""
